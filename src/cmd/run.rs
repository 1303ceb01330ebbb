//! `imgbuild run FILE.elf|NAME [--memory SIZE] [-p HOST:GUEST]… [-- ARGS]`: boots a unikernel
//! under qemu's microvm machine, serial console on stdio, its EXPOSEd ports forwarded to
//! 127.0.0.1, and exits with the guest's exit code.

use crate::build::open_store;
use imgbuild_cache::store::Access;
use imgbuild_planner::ExposedPort;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
    /// Forward 127.0.0.1:HOST to the guest's port GUEST (`8080:80`, `5353:53/udp`). Without
    /// it each EXPOSEd port is forwarded from the same host port when that is free, else from
    /// a free one; the addresses are printed before the guest boots.
    #[arg(long = "publish", short = 'p', value_name = "HOST:GUEST")]
    pub publish: Vec<String>,
    /// tcg, kvm, or auto (KVM when /dev/kvm opens read-write, else TCG).
    #[arg(long, default_value = "auto", value_parser = ["auto", "tcg", "kvm"])]
    pub accel: String,
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
    let publish = match a
        .publish
        .iter()
        .map(|p| parse_publish(p))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let exposed = match std::fs::read(&kernel)
        .map_err(|e| e.to_string())
        .and_then(|elf| imgbuild_executor::unikernel::read_ports(&elf))
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "error: {}: {e} (imgbuild run boots the ELF files imgbuild build writes)",
                kernel.display()
            );
            return Ok(ExitCode::from(RUN_FAILED));
        }
    };
    let forwards = match forwards(&exposed, &publish) {
        Ok(f) => f,
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
    let kvm = match a.accel.as_str() {
        "kvm" => true,
        "tcg" => false,
        _ => kvm_usable(),
    };
    if kvm {
        cmd.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        cmd.args(["-accel", "tcg"]);
    }
    // qemu's user network (no privileges needed), one virtio-net device on microvm's virtio-mmio
    // transport; nothing at all when no port is exposed.
    if !forwards.is_empty() {
        let mut netdev = String::from("user,id=n0");
        for (guest, host) in &forwards {
            netdev.push_str(&format!(
                ",hostfwd={}:127.0.0.1:{host}-:{}",
                guest.protocol(),
                guest.port
            ));
        }
        cmd.args(["-netdev", &netdev])
            .args(["-device", "virtio-net-device,netdev=n0"]);
    }
    if !a.args.is_empty() {
        cmd.arg("-append").arg(a.args.join(" "));
    }
    if a.verbose {
        eprintln!("{cmd:?}");
    }
    let name = display_name(&a.image);
    for (guest, host) in &forwards {
        let proto = if guest.udp { "/udp" } else { "" };
        eprintln!(
            "{name}: serving on 127.0.0.1:{host}{proto} (guest port {}{proto})",
            guest.port
        );
    }
    let status = match boot(cmd) {
        Ok(Boot::Exited(s)) => s,
        Ok(Boot::Signalled(sig)) => return Ok(ExitCode::from(128 + sig as u8)),
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

enum Boot {
    Exited(ExitStatus),
    /// imgbuild got SIGINT, SIGTERM or SIGHUP: qemu was stopped.
    Signalled(i32),
}

/// Runs qemu to its end. A signal to imgbuild stops qemu too (it would otherwise go on
/// serving the forwarded ports), and qemu dies with imgbuild even if imgbuild is killed.
fn boot(mut cmd: Command) -> std::io::Result<Boot> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let got = Arc::new(AtomicUsize::new(0));
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::flag::register_usize(sig, Arc::clone(&got), sig as usize)?;
    }
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Boot::Exited(st));
        }
        let sig = got.load(Ordering::Relaxed);
        if sig != 0 {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Boot::Signalled(sig as i32));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `-p HOST:GUEST[/tcp|/udp]` as (guest port, host port).
fn parse_publish(s: &str) -> Result<(ExposedPort, u16), String> {
    let bad = || {
        format!("--publish {s:?}: write HOST:GUEST, such as 8080:80 or 5353:53/udp (ports 1-65535)")
    };
    let (host, guest) = s.split_once(':').ok_or_else(bad)?;
    let (guest, proto) = guest.split_once('/').unwrap_or((guest, "tcp"));
    let port = |p: &str| p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(bad);
    let udp = match proto {
        "tcp" => false,
        "udp" => true,
        _ => return Err(bad()),
    };
    Ok((
        ExposedPort {
            port: port(guest)?,
            udp,
        },
        port(host)?,
    ))
}

/// Each exposed (or published) guest port with the host port forwarded to it: the one
/// --publish gives, else the same number when it is free on 127.0.0.1, else a free one.
fn forwards(
    exposed: &[ExposedPort],
    publish: &[(ExposedPort, u16)],
) -> Result<Vec<(ExposedPort, u16)>, String> {
    let mut out: Vec<(ExposedPort, u16)> = Vec::new();
    let mut taken: Vec<(bool, u16)> = Vec::new();
    for (guest, host) in publish {
        if out.iter().any(|(g, _)| g == guest) {
            return Err(format!("--publish names guest port {guest} twice"));
        }
        if taken.contains(&(guest.udp, *host)) {
            return Err(format!(
                "--publish uses host port {host}/{} twice",
                guest.protocol()
            ));
        }
        taken.push((guest.udp, *host));
        out.push((*guest, *host));
    }
    for guest in exposed {
        if out.iter().any(|(g, _)| g == guest) {
            continue;
        }
        let host = if !taken.contains(&(guest.udp, guest.port)) && free(guest.udp, guest.port) {
            guest.port
        } else {
            free_port(guest.udp)
                .map_err(|e| format!("no free host port for guest port {guest}: {e}"))?
        };
        taken.push((guest.udp, host));
        out.push((*guest, host));
    }
    Ok(out)
}

fn free(udp: bool, port: u16) -> bool {
    let addr = (Ipv4Addr::LOCALHOST, port);
    if udp {
        UdpSocket::bind(addr).is_ok()
    } else {
        TcpListener::bind(addr).is_ok()
    }
}

/// A port the kernel picks as free (released at once: qemu binds it moments later).
fn free_port(udp: bool) -> std::io::Result<u16> {
    let addr = (Ipv4Addr::LOCALHOST, 0);
    Ok(if udp {
        UdpSocket::bind(addr)?.local_addr()?.port()
    } else {
        TcpListener::bind(addr)?.local_addr()?.port()
    })
}

/// What the messages call the unikernel: a file's name without `.elf`, or the tag.
fn display_name(image: &str) -> String {
    let base = image.rsplit('/').next().unwrap_or(image);
    base.strip_suffix(".elf").unwrap_or(base).to_owned()
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
    fn publish_and_forwards() {
        let tcp = |port| ExposedPort { port, udp: false };
        assert_eq!(parse_publish("8080:80"), Ok((tcp(80), 8080)));
        assert_eq!(
            parse_publish("5353:53/udp"),
            Ok((
                ExposedPort {
                    port: 53,
                    udp: true
                },
                5353
            ))
        );
        for bad in ["80", "x:80", "0:80", "80:80/sctp", "8080:"] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
        // A busy port is replaced by a free one; --publish wins over the default.
        let busy = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let b = busy.local_addr().unwrap().port();
        let f = forwards(&[tcp(b), tcp(1)], &[(tcp(1), 40001)]).unwrap();
        assert_eq!(f[0], (tcp(1), 40001));
        assert_eq!(f[1].0, tcp(b));
        assert_ne!(f[1].1, b);
        assert!(forwards(&[], &[(tcp(1), 2), (tcp(1), 3)]).is_err());
        assert_eq!(display_name("out/pong.elf"), "pong");
        assert_eq!(display_name("web:1"), "web:1");
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
