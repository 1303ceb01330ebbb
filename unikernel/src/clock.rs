//! clock: monotonic time since boot and sleeping, from the TSC. Its rate comes from kvmclock
//! under KVM (exact, free), else from the hypervisor's TSC-frequency CPUID leaf, else from
//! 10 ms measured against the PIT (channel 0, polled: interrupts stay off). The rate is found on
//! first use, so images that never ask for the time do not pay for it at boot.

use crate::arch::{cpuid, inb, outb, rdtsc};
use core::time::Duration;

static mut BOOT_TSC: u64 = 0;
/// Nanoseconds per TSC tick, 32.32 fixed point (0 until calibrated).
static mut NS_PER_TICK: u64 = 0;

/// Called first thing at boot: time 0.
pub(crate) fn mark_boot() {
    // SAFETY: single-threaded boot.
    unsafe { BOOT_TSC = rdtsc() };
}

/// kvmclock's `struct pvclock_vcpu_time_info`.
#[repr(C, align(32))]
struct PvClock {
    version: u32,
    pad0: u32,
    tsc_timestamp: u64,
    system_time: u64,
    tsc_to_system_mul: u32,
    tsc_shift: i8,
    flags: u8,
    pad: [u8; 2],
}

static mut PVCLOCK: PvClock =
    PvClock { version: 0, pad0: 0, tsc_timestamp: 0, system_time: 0, tsc_to_system_mul: 0, tsc_shift: 0, flags: 0, pad: [0; 2] };

fn hypervisor() -> Option<(u32, [u32; 3])> {
    // CPUID.1:ECX bit 31: running under a hypervisor, whose leaves start at 0x40000000.
    if cpuid(1, 0).2 & (1 << 31) == 0 {
        return None;
    }
    let (max, b, c, d) = cpuid(0x4000_0000, 0);
    Some((max, [b, c, d]))
}

/// The TSC rate from kvmclock, as nanoseconds per tick in 32.32 fixed point.
fn from_kvmclock() -> Option<u64> {
    let (max, sig) = hypervisor()?;
    // "KVMKVMKVM\0\0\0"
    if sig != [0x4b4d_564b, 0x564b_4d56, 0x0000_004d] || max < 0x4000_0001 {
        return None;
    }
    let features = cpuid(0x4000_0001, 0).0;
    let msr: u32 = if features & (1 << 3) != 0 {
        0x4b56_4d01 // MSR_KVM_SYSTEM_TIME_NEW
    } else if features & 1 != 0 {
        0x12 // MSR_KVM_SYSTEM_TIME
    } else {
        return None;
    };
    let pv = &raw mut PVCLOCK;
    let addr = pv as u64 | 1; // bit 0: enable
    // SAFETY: the MSR exists (KVM said so); the structure is ours and identity-mapped.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") addr as u32, in("edx") (addr >> 32) as u32, options(nostack));
        let (mul, shift) = loop {
            let v = core::ptr::read_volatile(&raw const (*pv).version);
            let mul = core::ptr::read_volatile(&raw const (*pv).tsc_to_system_mul);
            let shift = core::ptr::read_volatile(&raw const (*pv).tsc_shift);
            if v & 1 == 0 && v == core::ptr::read_volatile(&raw const (*pv).version) && mul != 0 {
                break (mul as u64, shift);
            }
            core::hint::spin_loop();
        };
        // Stop the host from writing into our memory: only the rate was needed.
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") 0u32, in("edx") 0u32, options(nostack));
        Some(if shift >= 0 { mul << shift } else { mul >> -shift })
    }
}

/// Hz -> nanoseconds per tick, 32.32 fixed point.
fn per_tick(hz: u64) -> u64 {
    ((1_000_000_000u128 << 32) / hz.max(1) as u128) as u64
}

/// The TSC rate from the hypervisor's timing leaf (TSC kHz in eax), when offered.
fn from_cpuid() -> Option<u64> {
    let (max, _) = hypervisor()?;
    if max < 0x4000_0010 {
        return None;
    }
    let khz = cpuid(0x4000_0010, 0).0 as u64;
    (khz != 0).then(|| per_tick(khz * 1000))
}

const PIT_HZ: u64 = 1_193_182;

fn pit_count() -> u16 {
    outb(0x43, 0x00); // latch channel 0
    let lo = inb(0x40);
    let hi = inb(0x40);
    u16::from_le_bytes([lo, hi])
}

/// The TSC rate measured over 10 ms of the PIT.
fn from_pit() -> Option<u64> {
    outb(0x43, 0x34); // channel 0, lo/hi byte, mode 2 (rate generator), binary
    outb(0x40, 0); // reload 65536: u16 wrapping differences are then exact
    outb(0x40, 0);
    // Wait for the counter to move (also: is there a PIT at all?).
    let start = pit_count();
    let mut spins = 0u32;
    let mut prev = loop {
        let c = pit_count();
        if c != start {
            break c;
        }
        spins += 1;
        if spins > 1_000_000 {
            return None;
        }
    };
    let t0 = rdtsc();
    let mut ticks = 0u64;
    while ticks < PIT_HZ / 100 {
        let c = pit_count();
        ticks += prev.wrapping_sub(c) as u64;
        prev = c;
    }
    let t1 = rdtsc();
    Some(per_tick(((t1 - t0) as u128 * PIT_HZ as u128 / ticks as u128) as u64))
}

#[inline(never)]
fn ns_per_tick() -> u64 {
    // SAFETY: single-threaded; written once.
    unsafe {
        if NS_PER_TICK == 0 {
            // Without any source, guess 1 GHz rather than fail.
            NS_PER_TICK = from_kvmclock().or_else(from_cpuid).or_else(from_pit).unwrap_or(1 << 32);
        }
        NS_PER_TICK
    }
}

/// Time since boot.
#[inline(never)]
pub fn now() -> Duration {
    let per = ns_per_tick();
    // SAFETY: BOOT_TSC is written once at boot.
    let ticks = rdtsc().wrapping_sub(unsafe { BOOT_TSC });
    Duration::from_nanos(((ticks as u128 * per as u128) >> 32) as u64)
}

/// Busy-waits for `d` (interrupts are off, so there is nothing to wake a halted CPU).
pub fn sleep(d: Duration) {
    let until = now() + d;
    while now() < until {
        core::hint::spin_loop();
    }
}

/// The TSC rate in Hz the clock uses.
pub fn tsc_hz() -> u64 {
    ((1_000_000_000u128 << 32) / ns_per_tick() as u128) as u64
}

impl crate::Runtime {
    /// Monotonic time since boot.
    pub fn now(&self) -> Duration {
        now()
    }

    /// Waits for `d`.
    pub fn sleep(&self, d: Duration) {
        sleep(d)
    }
}
