//! args: the app's arguments. The PVH command line (`qemu -append`, `imgbuild run -- ARGS`),
//! split on ASCII whitespace, replaces the baked CMD when it has any words; qemu microvm's own
//! `virtio_mmio.device=` words are not the app's and are left out, and so are the net module's
//! configuration words (`ip=`, `gw=`, `dns=`, `dhcp=`) in images with that module.

use alloc::{string::String, vec::Vec};

static mut ARGS: Vec<&'static str> = Vec::new();

/// Called once at boot, after the heap is up.
pub(crate) fn init() {
    let cmdline = crate::boot::start_info().map_or("", |si| si.cmdline());
    let is_app_word = |w: &&str| {
        #[cfg(feature = "net")]
        if crate::net::is_config_word(w) {
            return false;
        }
        !w.starts_with("virtio_mmio.device=")
    };
    let args: Vec<&'static str> = if cmdline.split_ascii_whitespace().any(|w| is_app_word(&w)) {
        // Copied: the loader's copy lives in memory nothing reserves for us.
        let cmdline: &'static str = String::from(cmdline).leak();
        cmdline.split_ascii_whitespace().filter(is_app_word).collect()
    } else {
        crate::config::args().collect()
    };
    // SAFETY: single-threaded boot; nothing has read ARGS yet.
    unsafe { ARGS = args };
}

impl crate::Runtime {
    /// The arguments: the command line's words if it has any, else the baked CMD.
    pub fn args(&self) -> &[&'static str] {
        // SAFETY: written once at boot, only read afterwards.
        unsafe { &*&raw const ARGS }
    }
}
