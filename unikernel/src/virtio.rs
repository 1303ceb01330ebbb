//! virtio: the transport under the virtio device drivers (virtio 1.2 spec, §2 and §4).
//!
//! - virtio-mmio (§4.2), what qemu microvm has: the devices' windows come on the kernel command
//!   line as `virtio_mmio.device=SIZE@ADDR:IRQ` words (microvm's auto-kernel-cmdline); without
//!   such words the 24 microvm slots at 0xfeb00000 + n·0x200 are probed. Both register layouts
//!   are driven: version 2 ("modern") and version 1 ("legacy", microvm's default unless
//!   `-global virtio-mmio.force-legacy=false`).
//! - modern virtio-pci (§4.1), for `-M pc`/`q35`, with the pci module.
//!
//! Split virtqueues (§2.7) in one page-aligned heap block with the legacy layout (descriptors,
//! available ring, used ring on the next page boundary), which both transports accept. The heap
//! is identity-mapped, so an address is also what the device sees. Interrupts are off in this
//! runtime: drivers poll the used rings.

use alloc::vec::Vec;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{Ordering, fence};

/// Device types (§5).
pub const DEVICE_NET: u32 = 1;

/// Device status bits (§2.1).
const ACKNOWLEDGE: u8 = 1;
const DRIVER: u8 = 2;
const DRIVER_OK: u8 = 4;
const FEATURES_OK: u8 = 8;
/// VIRTIO_F_VERSION_1: the modern interface (required by modern transports).
pub const F_VERSION_1: u64 = 1 << 32;

const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
/// Where qemu microvm puts its virtio-mmio transports (used only without command-line words).
const MICROVM_MMIO_BASE: u64 = 0xfeb0_0000;
const MICROVM_MMIO_SLOTS: u64 = 24;
const MICROVM_MMIO_SIZE: u64 = 0x200;

fn r32(addr: u64) -> u32 {
    // SAFETY: addr is a device register inside an identity-mapped, uncached MMIO window.
    unsafe { read_volatile(addr as usize as *const u32) }
}
fn w32(addr: u64, v: u32) {
    // SAFETY: as for r32.
    unsafe { write_volatile(addr as usize as *mut u32, v) }
}
fn r8(addr: u64) -> u8 {
    // SAFETY: as for r32.
    unsafe { read_volatile(addr as usize as *const u8) }
}
#[cfg(feature = "pci")]
fn w8(addr: u64, v: u8) {
    // SAFETY: as for r32.
    unsafe { write_volatile(addr as usize as *mut u8, v) }
}
#[cfg(feature = "pci")]
fn r16(addr: u64) -> u16 {
    // SAFETY: as for r32.
    unsafe { read_volatile(addr as usize as *const u16) }
}
#[cfg(feature = "pci")]
fn w16(addr: u64, v: u16) {
    // SAFETY: as for r32.
    unsafe { write_volatile(addr as usize as *mut u16, v) }
}

/// How a device is reached.
#[derive(Clone, Copy, Debug)]
pub enum Transport {
    /// A virtio-mmio window; `version` 1 is the legacy register layout.
    Mmio { base: u64, version: u32 },
    /// Modern virtio-pci: the common, notify and device configuration structures (already
    /// translated to addresses) and the notify offset multiplier.
    #[cfg(feature = "pci")]
    Pci { common: u64, notify: u64, notify_mult: u32, device_cfg: u64 },
}

/// A found device: its type and transport.
#[derive(Clone, Copy, Debug)]
pub struct Found {
    pub device_type: u32,
    pub transport: Transport,
}

/// The `virtio_mmio.device=SIZE@ADDR:IRQ` words of the command line: window addresses.
fn cmdline_mmio_windows() -> Vec<u64> {
    let cmdline = crate::boot::start_info().map_or("", |si| si.cmdline());
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix("virtio_mmio.device="))
        .filter_map(|w| {
            let addr = w.split('@').nth(1)?.split(':').next()?;
            let addr = addr.strip_prefix("0x").or_else(|| addr.strip_prefix("0X"))?;
            u64::from_str_radix(addr, 16).ok()
        })
        .collect()
}

fn probe_mmio(base: u64) -> Option<Found> {
    if r32(base) != MMIO_MAGIC {
        return None;
    }
    let version = r32(base + 0x004);
    let device_type = r32(base + 0x008);
    // Device type 0 marks an empty slot.
    (device_type != 0 && (version == 1 || version == 2)).then_some(Found { device_type, transport: Transport::Mmio { base, version } })
}

/// All virtio devices: the command line's virtio-mmio windows (else microvm's slots), then,
/// with the pci module, the modern virtio-pci functions.
#[inline(never)]
pub fn devices() -> Vec<Found> {
    let mut found = Vec::new();
    let windows = cmdline_mmio_windows();
    if !windows.is_empty() {
        found.extend(windows.iter().filter_map(|&b| probe_mmio(b)));
    } else if !is_pc() {
        // No words: microvm with auto-kernel-cmdline off. The slots are probed only where no
        // PCI host bridge answers (on pc/q35 that range could be something else).
        found.extend((0..MICROVM_MMIO_SLOTS).filter_map(|i| probe_mmio(MICROVM_MMIO_BASE + i * MICROVM_MMIO_SIZE)));
    }
    #[cfg(feature = "pci")]
    pci_devices(&mut found);
    found
}

/// Whether a PCI host bridge answers (pc/q35); microvm has none by default.
fn is_pc() -> bool {
    #[cfg(feature = "pci")]
    {
        crate::pci::present()
    }
    #[cfg(not(feature = "pci"))]
    false
}

/// The first device of a type.
pub fn find(device_type: u32) -> Option<Found> {
    devices().into_iter().find(|d| d.device_type == device_type)
}

#[cfg(feature = "pci")]
fn pci_devices(found: &mut Vec<Found>) {
    crate::pci::for_each(|dev| {
        // Vendor 0x1af4; 0x1040 + type for modern-only devices, 0x1000..0x103f transitional
        // ones (their type is the subsystem id).
        if dev.vendor != 0x1af4 || !(0x1000..=0x107f).contains(&dev.device) {
            return;
        }
        let device_type = if dev.device >= 0x1040 { (dev.device - 0x1040) as u32 } else { (dev.read32(0x2c) >> 16) as u32 };
        let (mut common, mut notify, mut notify_mult, mut device_cfg) = (0, 0, 0, 0);
        for cap in dev.capabilities() {
            // Vendor-specific capability: the virtio_pci_cap structure (§4.1.4).
            if dev.read8(cap) != 0x09 {
                continue;
            }
            let cfg_type = dev.read8(cap + 3);
            let bar = dev.read8(cap + 4);
            let offset = dev.read32(cap + 8) as u64;
            let Some(base) = dev.bar(bar) else { continue };
            match cfg_type {
                1 => common = base + offset,
                2 => {
                    notify = base + offset;
                    notify_mult = dev.read32(cap + 16);
                }
                4 => device_cfg = base + offset,
                _ => {}
            }
        }
        if common != 0 && notify != 0 {
            dev.enable_memory_and_bus_master();
            found.push(Found { device_type, transport: Transport::Pci { common, notify, notify_mult, device_cfg } });
        }
    });
}

impl Transport {
    fn set_status(&self, s: u8) {
        match *self {
            Transport::Mmio { base, .. } => w32(base + 0x070, s as u32),
            #[cfg(feature = "pci")]
            Transport::Pci { common, .. } => w8(common + 0x14, s),
        }
    }

    fn status(&self) -> u8 {
        match *self {
            Transport::Mmio { base, .. } => r32(base + 0x070) as u8,
            #[cfg(feature = "pci")]
            Transport::Pci { common, .. } => r8(common + 0x14),
        }
    }

    fn device_features(&self) -> u64 {
        let (sel, val) = self.feature_regs(false);
        let mut f = 0u64;
        for half in 0..2u32 {
            w32(sel, half);
            f |= (r32(val) as u64) << (32 * half);
        }
        f
    }

    fn set_driver_features(&self, f: u64) {
        let (sel, val) = self.feature_regs(true);
        for half in 0..2u32 {
            w32(sel, half);
            w32(val, (f >> (32 * half)) as u32);
        }
    }

    /// (select, value) register addresses of the device's or the driver's feature bits.
    fn feature_regs(&self, driver: bool) -> (u64, u64) {
        match *self {
            Transport::Mmio { base, .. } => if driver { (base + 0x024, base + 0x020) } else { (base + 0x014, base + 0x010) },
            #[cfg(feature = "pci")]
            Transport::Pci { common, .. } => if driver { (common + 0x08, common + 0x0c) } else { (common, common + 0x04) },
        }
    }

    /// Whether the modern interface is in use (VERSION_1 must then be negotiated).
    pub fn is_modern(&self) -> bool {
        match *self {
            Transport::Mmio { version, .. } => version == 2,
            #[cfg(feature = "pci")]
            Transport::Pci { .. } => true,
        }
    }

    /// A byte of the device-specific configuration space.
    pub fn config_u8(&self, off: u64) -> u8 {
        match *self {
            Transport::Mmio { base, .. } => r8(base + 0x100 + off),
            #[cfg(feature = "pci")]
            Transport::Pci { device_cfg, .. } => if device_cfg == 0 { 0 } else { r8(device_cfg + off) },
        }
    }

    /// Resets the device and negotiates features (§3.1.1): the device's features ∩ `wanted`
    /// (VERSION_1 added on modern transports). Returns the accepted features.
    pub fn begin_init(&self, wanted: u64) -> Option<u64> {
        self.set_status(0);
        while self.status() != 0 {
            core::hint::spin_loop();
        }
        self.set_status(ACKNOWLEDGE);
        self.set_status(ACKNOWLEDGE | DRIVER);
        let wanted = if self.is_modern() { wanted | F_VERSION_1 } else { wanted & 0xffff_ffff };
        let features = self.device_features() & wanted;
        if self.is_modern() && features & F_VERSION_1 == 0 {
            return None;
        }
        self.set_driver_features(features);
        if self.is_modern() {
            self.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK);
            if self.status() & FEATURES_OK == 0 {
                return None;
            }
        }
        Some(features)
    }

    /// The device may run: queues are set up.
    pub fn finish_init(&self) {
        let s = self.status();
        self.set_status(s | DRIVER_OK);
    }

    /// Sets up queue `index` with at most `max` entries; None when the device lacks it.
    pub fn queue(&self, index: u16, max: u16) -> Option<Virtqueue> {
        let size = match *self {
            Transport::Mmio { base, .. } => {
                w32(base + 0x030, index as u32);
                r32(base + 0x034)
            }
            #[cfg(feature = "pci")]
            Transport::Pci { common, .. } => {
                w16(common + 0x16, index);
                r16(common + 0x18) as u32
            }
        };
        if size == 0 {
            return None;
        }
        // A power of two (legacy requires it; modern allows any size up to the maximum).
        let size = (size.min(max as u32) as u16).next_power_of_two().min(size as u16);
        let q = Virtqueue::new(size);
        let (desc, avail, used) = (q.desc as u64, q.avail as u64, q.used as u64);
        let notify = match *self {
            Transport::Mmio { base, version } => {
                w32(base + 0x038, size as u32);
                if version == 1 {
                    w32(base + 0x028, 4096); // GuestPageSize
                    w32(base + 0x03c, 4096); // QueueAlign: the used ring's page boundary
                    w32(base + 0x040, (desc >> 12) as u32); // QueuePFN
                } else {
                    for (reg, a) in [(0x080, desc), (0x090, avail), (0x0a0, used)] {
                        w32(base + reg, a as u32);
                        w32(base + reg + 4, (a >> 32) as u32);
                    }
                    w32(base + 0x044, 1); // QueueReady
                }
                Notify::Mmio(base + 0x050)
            }
            #[cfg(feature = "pci")]
            Transport::Pci { common, notify, notify_mult, .. } => {
                w16(common + 0x18, size);
                for (reg, a) in [(0x20, desc), (0x28, avail), (0x30, used)] {
                    w32(common + reg, a as u32);
                    w32(common + reg + 4, (a >> 32) as u32);
                }
                let off = r16(common + 0x1e) as u64;
                w16(common + 0x1c, 1); // queue_enable
                Notify::Pci(notify + off * notify_mult as u64)
            }
        };
        Some(Virtqueue { notify, index, ..q })
    }
}

#[derive(Clone, Copy)]
enum Notify {
    None,
    Mmio(u64),
    #[cfg(feature = "pci")]
    Pci(u64),
}

/// A descriptor (§2.7.5).
#[repr(C)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// VIRTQ_DESC_F_WRITE: the device writes into the buffer.
const DESC_WRITE: u16 = 2;

/// A split virtqueue with one descriptor per buffer (no chains: the drivers here put header
/// and packet in one buffer).
pub struct Virtqueue {
    pub size: u16,
    index: u16,
    desc: *mut Desc,
    /// flags u16, idx u16, ring[size] u16, used_event u16
    avail: *mut u16,
    /// flags u16, idx u16, ring[size] {id u32, len u32}, avail_event u16
    used: *mut u16,
    avail_idx: u16,
    last_used: u16,
    notify: Notify,
}

impl Virtqueue {
    fn new(size: u16) -> Virtqueue {
        let n = size as usize;
        let used_off = (16 * n + 6 + 2 * n + 4095) & !4095;
        let bytes = used_off + ((6 + 8 * n + 4095) & !4095);
        let layout = core::alloc::Layout::from_size_align(bytes, 4096).expect("virtqueue layout");
        // SAFETY: a non-zero-sized layout; the memory is leaked on purpose (queues live forever).
        let mem = unsafe { alloc::alloc::alloc_zeroed(layout) };
        assert!(!mem.is_null(), "virtio: out of memory for a queue");
        Virtqueue {
            size,
            index: 0,
            desc: mem as *mut Desc,
            // SAFETY: both offsets are inside the block.
            avail: unsafe { mem.add(16 * n) } as *mut u16,
            used: unsafe { mem.add(used_off) } as *mut u16,
            avail_idx: 0,
            last_used: 0,
            notify: Notify::None,
        }
    }

    /// Hands buffer `addr`/`len` to the device in descriptor slot `id` (one slot per buffer,
    /// so the descriptor index is the buffer's identity). `device_writes` for receive buffers.
    pub fn push(&mut self, id: u16, addr: u64, len: u32, device_writes: bool) {
        let n = self.size;
        // SAFETY: id < size (callers own slots 0..size); the rings are ours and device-shared,
        // hence volatile accesses and fences around the index the device reads.
        unsafe {
            write_volatile(self.desc.add(id as usize), Desc { addr, len, flags: if device_writes { DESC_WRITE } else { 0 }, next: 0 });
            write_volatile(self.avail.add(2 + (self.avail_idx % n) as usize), id);
            fence(Ordering::SeqCst);
            self.avail_idx = self.avail_idx.wrapping_add(1);
            write_volatile(self.avail.add(1), self.avail_idx);
            fence(Ordering::SeqCst);
        }
    }

    /// Tells the device there are new buffers.
    pub fn kick(&self) {
        match self.notify {
            Notify::None => {}
            Notify::Mmio(reg) => w32(reg, self.index as u32),
            #[cfg(feature = "pci")]
            Notify::Pci(reg) => w16(reg, self.index),
        }
    }

    /// The next buffer the device is done with: (descriptor id, bytes written).
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        // SAFETY: as in push; the device writes the used ring, so volatile reads after a fence.
        unsafe {
            let idx = read_volatile(self.used.add(1));
            if idx == self.last_used {
                return None;
            }
            fence(Ordering::SeqCst);
            let elem = (self.used as *mut u32).add(1 + 2 * (self.last_used % self.size) as usize);
            let id = read_volatile(elem);
            let len = read_volatile(elem.add(1));
            self.last_used = self.last_used.wrapping_add(1);
            Some((id as u16, len))
        }
    }
}
