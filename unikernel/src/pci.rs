//! pci: PCI configuration space through the legacy I/O ports 0xcf8/0xcfc (pc and q35; qemu
//! microvm has no PCI unless asked), enumeration from bus 0 down through the bridges, BARs and
//! capability lists. Only what drivers need to find and switch on a function.

use crate::arch::{inl, outl};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

/// A PCI function.
#[derive(Clone, Copy, Debug)]
pub struct Device {
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
    pub vendor: u16,
    pub device: u16,
    pub class: u8,
    pub subclass: u8,
}

fn address(bus: u8, dev: u8, func: u8, off: u8) -> u32 {
    0x8000_0000 | (bus as u32) << 16 | (dev as u32) << 11 | (func as u32) << 8 | (off as u32 & 0xfc)
}

/// A 32-bit configuration register (offset rounded down to 4).
pub fn read32(bus: u8, dev: u8, func: u8, off: u8) -> u32 {
    outl(CONFIG_ADDRESS, address(bus, dev, func, off));
    inl(CONFIG_DATA)
}

pub fn write32(bus: u8, dev: u8, func: u8, off: u8, value: u32) {
    outl(CONFIG_ADDRESS, address(bus, dev, func, off));
    outl(CONFIG_DATA, value);
}

/// Whether a host bridge answers at 00:00.0 (false on microvm without PCI).
pub fn present() -> bool {
    read32(0, 0, 0, 0) as u16 != 0xffff
}

/// Calls `f` for every function, bus 0 first, then the buses behind bridges.
#[inline(never)]
pub fn for_each(mut f: impl FnMut(&Device)) {
    if present() {
        scan_bus(0, &mut f, 0);
    }
}

fn scan_bus(bus: u8, f: &mut impl FnMut(&Device), depth: u32) {
    for dev in 0..32u8 {
        let id = read32(bus, dev, 0, 0);
        if id as u16 == 0xffff {
            continue;
        }
        // Header type bit 7: a multi-function device.
        let funcs = if read32(bus, dev, 0, 0x0c) >> 16 & 0x80 != 0 { 8 } else { 1 };
        for func in 0..funcs {
            let id = read32(bus, dev, func, 0);
            if id as u16 == 0xffff {
                continue;
            }
            let class = read32(bus, dev, func, 0x08);
            let d = Device { bus, dev, func, vendor: id as u16, device: (id >> 16) as u16, class: (class >> 24) as u8, subclass: (class >> 16) as u8 };
            f(&d);
            // A PCI-to-PCI bridge (header type 1): walk its secondary bus (depth-bounded
            // against a misprogrammed loop).
            let header = (read32(bus, dev, func, 0x0c) >> 16) as u8 & 0x7f;
            if header == 1 && depth < 8 {
                let secondary = (read32(bus, dev, func, 0x18) >> 8) as u8;
                if secondary > bus {
                    scan_bus(secondary, f, depth + 1);
                }
            }
        }
    }
}

impl Device {
    pub fn read32(&self, off: u8) -> u32 {
        read32(self.bus, self.dev, self.func, off)
    }

    pub fn read8(&self, off: u8) -> u8 {
        (self.read32(off) >> (8 * (off & 3))) as u8
    }

    pub fn write32(&self, off: u8, value: u32) {
        write32(self.bus, self.dev, self.func, off, value)
    }

    /// The address of memory BAR `i` as the firmware assigned it; None for I/O BARs, unassigned
    /// ones, or ones above 4 GiB (the runtime identity-maps only the first 4 GiB).
    pub fn bar(&self, i: u8) -> Option<u64> {
        if i > 5 {
            return None;
        }
        let lo = self.read32(0x10 + 4 * i);
        if lo & 1 != 0 {
            return None;
        }
        let mut addr = (lo & !0xf) as u64;
        if (lo >> 1) & 3 == 2 && i < 5 {
            addr |= (self.read32(0x14 + 4 * i) as u64) << 32;
        }
        (addr != 0 && addr < (4 << 30)).then_some(addr)
    }

    /// Offsets of the capability list's entries (when the status register says there is one).
    pub fn capabilities(&self) -> impl Iterator<Item = u8> + '_ {
        let mut next = if self.read32(0x04) >> 16 & 0x10 != 0 { self.read8(0x34) & 0xfc } else { 0 };
        let mut left = 48; // a list longer than config space allows is broken
        core::iter::from_fn(move || {
            if next < 0x40 || left == 0 {
                return None;
            }
            left -= 1;
            let cap = next;
            next = self.read8(cap + 1) & 0xfc;
            Some(cap)
        })
    }

    /// Command register: memory space and bus mastering on (DMA into our buffers).
    pub fn enable_memory_and_bus_master(&self) {
        let cmd = self.read32(0x04) & 0xffff;
        self.write32(0x04, cmd | 0x2 | 0x4);
    }
}
