//! exit: ends the VM through qemu's isa-debug-exit device at port 0xf4
//! (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`): qemu exits with status (code << 1) | 1.

use crate::arch;

/// The isa-debug-exit port.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Exits the VM with `code` (qemu's status is `(code << 1) | 1`, truncated to 8 bits by the
/// host). Without the device the CPU halts.
pub fn exit(code: i32) -> ! {
    arch::outl(DEBUG_EXIT_PORT, code as u32);
    arch::halt()
}
