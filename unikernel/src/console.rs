//! console: the 16550 UART at COM1 (qemu's `-serial`). Output only; bytes go out as they are
//! (no "\n" to "\r\n" translation), so a captured console is exactly what the app printed.

use crate::arch::{inb, outb};
use core::fmt;

const COM1: u16 = 0x3f8;
const FIFO_DEPTH: usize = 16;

/// 115200 8N1 with the FIFOs on, the UART's interrupts off.
pub(crate) fn init() {
    outb(COM1 + 1, 0x00); // IER: no interrupts
    outb(COM1 + 3, 0x80); // LCR: DLAB to set the divisor
    outb(COM1, 0x01); // divisor 1: 115200 baud
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // LCR: 8 bits, no parity, 1 stop bit
    outb(COM1 + 2, 0xc7); // FCR: enable and clear the FIFOs
}

/// Writes bytes to the serial console. With the FIFO on, "transmitter empty" means 16 bytes may
/// follow without asking again: one status read per 16 bytes (each port access is a VM exit).
pub fn write_bytes(bytes: &[u8]) {
    for chunk in bytes.chunks(FIFO_DEPTH) {
        while inb(COM1 + 5) & 0x20 == 0 {
            core::hint::spin_loop();
        }
        for &b in chunk {
            outb(COM1, b);
        }
    }
}

/// The console as a `fmt::Write` sink.
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let _ = fmt::write(&mut Console, args);
}
