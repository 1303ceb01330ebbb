//! `imgbuild run FILE.elf|NAME [--memory SIZE] [-- ARGS]`: boots a unikernel under qemu's
//! microvm machine, serial console on stdio, and exits with the guest's exit code.

use crate::build::open_store;
use imgbuild_cache::store::Access;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The platform the image store records for a unikernel tagged with `-t` (its "manifest" is
/// the ELF blob itself).
pub const UNIKERNEL_PLATFORM: &str = "unikernel/amd64";

/// The I/O port of qemu's isa-debug-exit device: the guest writes its exit code there.
const EXIT_PORT: &str = "0xf4";

/// What `run` exits with when the guest could not be booted at all (as `docker run` does), so
/// it is not mistaken for a guest's own code.
const RUN_FAILED: u8 = 125;

#[derive(clap::Args)]
pub struct Args {
    /// The unikernel: an ELF file (`imgbuild build` writes `./<stage>.elf`), or a name tagged
    /// with `imgbuild build -t NAME`.
    pub image: String,
    /// Guest memory, as qemu's -m takes it (`8M`, `512K`, `1G`).
    #[arg(long, short = 'm', default_value = "8M")]
    pub memory: String,
    /// The store, for a tagged name (default: $IMGBUILD_ROOT, …).
    #[arg(long, env = "IMGBUILD_ROOT")]
    pub root: Option<PathBuf>,
    /// Print the qemu command line before running it.
    #[arg(long)]
    pub verbose: bool,
    /// Arguments for the app (instead of its CMD), after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if !valid_memory(&a.memory) {
        eprintln!(
            "error: --memory {:?}: give a size such as 8M, 512K or 1G",
            a.memory
        );
        return Ok(ExitCode::from(2));
    }
    let kernel = match locate(&a) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(RUN_FAILED));
        }
    };
    let qemu = "qemu-system-x86_64";
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-M",
        "microvm",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
    ])
    .args(["-serial", "stdio"])
    .args([
        "-device",
        &format!("isa-debug-exit,iobase={EXIT_PORT},iosize=0x04"),
    ])
    .arg("-kernel")
    .arg(&kernel)
    .args(["-m", &a.memory]);
    if kvm_usable() {
        cmd.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        cmd.args(["-accel", "tcg"]);
    }
    if !a.args.is_empty() {
        cmd.arg("-append").arg(a.args.join(" "));
    }
    if a.verbose {
        eprintln!("{cmd:?}");
    }
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "error: {qemu} not found: install qemu (Debian package qemu-system-x86) to run \
                 unikernels"
            );
            return Ok(ExitCode::from(RUN_FAILED));
        }
        Err(e) => {
            eprintln!("error: cannot run {qemu}: {e}");
            return Ok(ExitCode::from(RUN_FAILED));
        }
    };
    match guest_code(status.code()) {
        Ok(code) => Ok(ExitCode::from(code)),
        Err(why) => {
            eprintln!("error: {qemu} {why}");
            Ok(ExitCode::from(RUN_FAILED))
        }
    }
}

/// The guest's exit code from qemu's status: isa-debug-exit makes qemu exit with 2n+1 for the
/// value n the guest wrote.
fn guest_code(status: Option<i32>) -> Result<u8, String> {
    match status {
        Some(s) if s % 2 == 1 && s > 0 => Ok(((s - 1) / 2) as u8),
        Some(s) => Err(format!(
            "exited with status {s}, which is not a guest exit code (the guest did not exit \
             through the isa-debug-exit port, or qemu itself failed: see its messages above)"
        )),
        None => Err("was killed by a signal".into()),
    }
}

/// The ELF to boot: a file, or a unikernel tagged in the store (its blob, verified first).
fn locate(a: &Args) -> Result<PathBuf, String> {
    let p = Path::new(&a.image);
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    let looks_like_file = a.image.contains('/') || a.image.ends_with(".elf");
    let store = open_store(a.root.as_deref(), Access::Shared).map_err(|e| e.to_string())?;
    let found = store.resolve(&a.image).ok().flatten();
    match found {
        Some((digest, meta)) if meta.platform == UNIKERNEL_PLATFORM => {
            store
                .verify_blob(&digest)
                .map_err(|e| format!("{}: the stored unikernel is damaged: {e}", a.image))?;
            Ok(store.blob_file(&digest))
        }
        Some(_) => Err(format!(
            "{} is a container image, not a unikernel: `imgbuild run` boots unikernels \
             (FROM unikernel stages)",
            a.image
        )),
        None if looks_like_file => Err(format!("{}: no such file", a.image)),
        None => Err(format!(
            "{}: no such file, and no unikernel of that name in the store (build one with \
             `imgbuild build -t {} DIR`)",
            a.image, a.image
        )),
    }
}

/// Whether KVM can be used: /dev/kvm opens read-write.
fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn valid_memory(m: &str) -> bool {
    let digits = m.trim_end_matches(['K', 'M', 'G', 'k', 'm', 'g']);
    !digits.is_empty()
        && digits.len() + 1 >= m.len()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits != "0"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(guest_code(Some(1)), Ok(0));
        assert_eq!(guest_code(Some(33)), Ok(16));
        assert_eq!(guest_code(Some(203)), Ok(101));
        assert!(guest_code(Some(0)).is_err());
        assert!(guest_code(Some(2)).unwrap_err().contains("status 2"));
        assert!(guest_code(None).is_err());
    }

    #[test]
    fn memory_sizes() {
        for ok in ["8M", "2M", "512K", "1G", "64"] {
            assert!(valid_memory(ok), "{ok}");
        }
        for bad in ["", "M", "8MB", "-1M", "0", "8 M"] {
            assert!(!valid_memory(bad), "{bad}");
        }
    }
}
