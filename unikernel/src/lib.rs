//! imgbuild-unikernel: a small library OS an app links against to become a bootable x86_64
//! image (Xen PVH entry, qemu `-kernel`). Every module is a Cargo feature, so an image holds only
//! the modules its app needs; unikernel/modules.toml is the module graph imgbuild plans with.
//!
//! An app:
//! ```ignore
//! #![no_std]
//! #![no_main]
//! imgbuild_unikernel::main!(app_main);
//! fn app_main(rt: &mut imgbuild_unikernel::Runtime) -> i32 {
//!     imgbuild_unikernel::println!("hello");
//!     0
//! }
//! ```
#![no_std]

#[cfg(feature = "alloc")]
extern crate alloc;

#[allow(dead_code)] // which primitives are used depends on the modules
mod arch;
mod mem;

#[cfg(feature = "boot")]
mod boot;
#[cfg(feature = "console")]
pub mod console;
#[cfg(feature = "exit")]
pub mod exit;
#[cfg(feature = "panic")]
pub mod panic;
#[cfg(feature = "alloc")]
pub mod heap;
#[cfg(any(feature = "args", feature = "env"))]
mod config;
#[cfg(feature = "args")]
mod args;
#[cfg(feature = "env")]
mod env;
#[cfg(feature = "fs")]
pub mod fs;
#[cfg(feature = "clock")]
pub mod clock;
#[cfg(feature = "rng")]
pub mod rng;
#[cfg(feature = "pci")]
pub mod pci;
#[cfg(feature = "virtio")]
pub mod virtio;
#[cfg(feature = "net-virtio")]
pub mod net_virtio;
#[cfg(feature = "net")]
pub mod net;
#[cfg(feature = "tcp")]
pub mod tcp;
#[cfg(feature = "udp")]
pub mod udp;
#[cfg(feature = "dns")]
pub mod dns;
#[cfg(feature = "http")]
pub mod http;

/// What the app's entry point gets: the runtime's services, one method group per module.
pub struct Runtime {
    _private: (),
}

/// Declares the app's entry point: `main!(app_main)` with
/// `fn app_main(rt: &mut imgbuild_unikernel::Runtime) -> i32` (the exit code).
#[macro_export]
macro_rules! main {
    ($f:path) => {
        #[doc(hidden)]
        #[unsafe(no_mangle)]
        pub fn __imgbuild_unikernel_main(rt: &mut $crate::Runtime) -> i32 {
            $f(rt)
        }
    };
}

#[doc(hidden)]
pub fn _print(args: core::fmt::Arguments) {
    #[cfg(feature = "console")]
    console::_print(args);
    #[cfg(not(feature = "console"))]
    let _ = args;
}

/// Prints to the serial console (nothing without the console module).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::_print(format_args!($($arg)*)) };
}

/// Prints a line to the serial console (nothing without the console module).
#[macro_export]
macro_rules! println {
    () => { $crate::_print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
