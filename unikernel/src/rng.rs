//! rng: random numbers from rdrand, else rdseed, else (CPUs or TCG models without either) a
//! splitmix64 stream that mixes in the TSC on every call. The fallback is not cryptographic.

use crate::arch::{cpuid, rdtsc};

#[derive(Clone, Copy, PartialEq)]
enum Source {
    Unknown,
    RdRand,
    RdSeed,
    Fallback,
}

static mut SOURCE: Source = Source::Unknown;
static mut STATE: u64 = 0;

fn source() -> Source {
    // SAFETY: single-threaded; a benign cache.
    unsafe {
        if SOURCE == Source::Unknown {
            SOURCE = if cpuid(1, 0).2 & (1 << 30) != 0 {
                Source::RdRand
            } else if cpuid(0, 0).0 >= 7 && cpuid(7, 0).1 & (1 << 18) != 0 {
                Source::RdSeed
            } else {
                Source::Fallback
            };
        }
        SOURCE
    }
}

fn hw(seed: bool) -> Option<u64> {
    // The instructions may fail transiently (carry clear): retry a few times.
    for _ in 0..16 {
        let value: u64;
        let ok: u8;
        // SAFETY: only executed when CPUID reports the instruction.
        unsafe {
            if seed {
                core::arch::asm!("rdseed {0}", "setc {1}", out(reg) value, out(reg_byte) ok, options(nomem, nostack));
            } else {
                core::arch::asm!("rdrand {0}", "setc {1}", out(reg) value, out(reg_byte) ok, options(nomem, nostack));
            }
        }
        if ok != 0 {
            return Some(value);
        }
    }
    None
}

fn fallback() -> u64 {
    // SAFETY: single-threaded.
    unsafe {
        STATE = STATE.wrapping_add(0x9e37_79b9_7f4a_7c15) ^ rdtsc().rotate_left(32);
        let mut z = STATE;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A random 64-bit number.
#[inline(never)]
pub fn random_u64() -> u64 {
    match source() {
        Source::RdRand => hw(false),
        Source::RdSeed => hw(true),
        _ => None,
    }
    .unwrap_or_else(fallback)
}

/// Whether the numbers come from the CPU's generator (rdrand/rdseed).
pub fn is_hardware() -> bool {
    matches!(source(), Source::RdRand | Source::RdSeed)
}

impl crate::Runtime {
    /// A random 64-bit number.
    pub fn random_u64(&self) -> u64 {
        random_u64()
    }
}
