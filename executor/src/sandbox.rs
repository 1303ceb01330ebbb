//! The RUN sandbox, child side: a re-exec of our own binary (`imgbuild __sandbox SPEC`) that
//! is single-threaded when it unshares, so namespaces apply to everything it does.
//!
//! Process layout:
//! ```text
//! imgbuild (build)            waits for the helper, reads its output
//!  └─ imgbuild __sandbox      unshare(mount, uts, ipc, pid[, net]); fork
//!      └─ init (pid 1)        mounts the overlay root, /proc, /dev, /sys, /etc files,
//!          │                  the RUN --mounts (mount points made without following links);
//!          │                  pivot_root; fork; reaps until the command exits
//!          └─ command         no_new_privs, Docker's capability set, USER; execve
//! ```
//! When the command exits, init exits with its status and the kernel kills whatever the command
//! left behind in the PID namespace: nothing outlives the step.

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::stat::{Mode, SFlag, mknod};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, execvpe, fork, pivot_root, sethostname};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Docker's default capability set for containers (and so for RUN).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The PATH a RUN gets when the image sets none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Network mode of a RUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetMode {
    /// The host's network (Docker's default for RUN).
    Host,
    /// A new network namespace with only loopback.
    None,
}

/// A bind mount into the sandbox (RUN --mount=type=bind/cache, the /etc files).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bind {
    pub source: PathBuf,
    /// Absolute path inside the sandbox.
    pub target: String,
    pub readonly: bool,
}

/// A `RUN --mount` inside the sandbox (made by `mounts::prepare`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MountSpec {
    /// Absolute, with symlinks resolved in the image below.
    pub target: String,
    /// The target is a directory (else a file or a socket).
    pub dir: bool,
    pub kind: MountKind,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MountKind {
    /// A host path.
    Bind {
        source: PathBuf,
        readonly: bool,
        /// nosuid and nodev (secrets, sockets).
        restricted: bool,
    },
    /// An overlay of `lower` (top first, at least two) mounted at `staging`, writable into
    /// `upper`/`work` when given (the writes are discarded with the scratch dir); its
    /// `subpath` (relative, resolved) is bound at the target.
    Overlay {
        lower: Vec<PathBuf>,
        upper: Option<(PathBuf, PathBuf)>,
        staging: PathBuf,
        subpath: String,
    },
    Tmpfs {
        size: Option<i64>,
        readonly: bool,
    },
}

/// Everything the helper needs, written as JSON by the parent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    /// Overlay lower dirs, top first (empty: an empty lower dir is used).
    pub lower: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub hostname: String,
    pub network: NetMode,
    pub binds: Vec<Bind>,
    /// Fed to the command's standard input (`RUN <<EOF cmd`), else /dev/null.
    pub stdin: Option<PathBuf>,
    /// Keep every capability (`--security=insecure`).
    pub privileged: bool,
    /// `RUN --mount`s, parents before children; mounted after `binds`.
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    /// `merged` already holds a copy of the image (no overlayfs here): use it as the root
    /// instead of mounting an overlay; the parent diffs it afterwards.
    #[serde(default)]
    pub copied: bool,
    /// Secrets for the command's environment: (variable, file holding the value). The values
    /// are read here, never written into the spec.
    #[serde(default)]
    pub secret_env: Vec<(String, PathBuf)>,
}

/// The file (beside the spec's upper dir) the helper leaves when overlayfs could not be
/// mounted: the parent then falls back to a copied root (and does so for the rest of the
/// build). A file, not an exit status, so no command's own status is mistaken for it.
pub fn no_overlay_marker(upper: &Path) -> PathBuf {
    upper.with_file_name("no-overlay")
}

/// Entry point of `imgbuild __sandbox SPEC`. Never returns.
pub fn helper_main(spec_path: &Path) -> ! {
    let code = match run_helper(spec_path) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imgbuild sandbox: {e}");
            125
        }
    };
    std::process::exit(code)
}

fn run_helper(spec_path: &Path) -> Result<i32, String> {
    // If the build dies (even by SIGKILL), its sandboxes die with it.
    die_with_parent();
    let spec: Spec = serde_json::from_slice(
        &fs::read(spec_path).map_err(|e| format!("reading {}: {e}", spec_path.display()))?,
    )
    .map_err(|e| format!("bad sandbox spec: {e}"))?;
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID;
    if spec.network == NetMode::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(|e| {
        format!("unshare: {e} (RUN needs root or a user namespace, and namespace support)")
    })?;
    // SAFETY: single-threaded here (a fresh re-exec that has started no threads).
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { child } => Ok(wait_exit(child)),
        ForkResult::Child => {
            let code = match init(&spec) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("imgbuild sandbox: {e}");
                    125
                }
            };
            std::process::exit(code)
        }
    }
}

/// Waits for `pid` and turns its end into an exit status (128+signal when killed).
fn wait_exit(pid: Pid) -> i32 {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, c)) => return c,
            Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 125,
        }
    }
}

fn ctx<T>(r: nix::Result<T>, what: impl Fn() -> String) -> Result<T, String> {
    r.map_err(|e| format!("{}: {e}", what()))
}

/// PID 1 of the sandbox.
fn init(spec: &Spec) -> Result<i32, String> {
    // PID 1 dying tears the whole PID namespace down.
    die_with_parent();
    // Nothing we mount may propagate back to the host.
    ctx(
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
        || "making / private".into(),
    )?;
    let root = &spec.merged;
    let lower = if spec.lower.is_empty() {
        let empty = spec.work.with_extension("empty");
        fs::create_dir_all(&empty).map_err(|e| e.to_string())?;
        vec![empty]
    } else {
        spec.lower.clone()
    };
    if spec.copied {
        // No overlayfs: the parent copied the image into `merged`; it only has to be a mount
        // point for pivot_root.
        bind(root, root, false)?;
    } else {
        let opts = overlay_options(&lower, Some((&spec.upper, &spec.work)));
        if let Err(e) = mount(
            Some("overlay"),
            root,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        ) {
            let _ = fs::write(no_overlay_marker(&spec.upper), e.to_string());
            return Err(format!(
                "mounting the overlay root ({} layers): {e}",
                lower.len()
            ));
        }
    }

    // /proc for the new PID namespace, a read-only /sys, a minimal /dev.
    let proc_dir = ensure_dir(root, "proc")?;
    ctx(
        mount(
            Some("proc"),
            &proc_dir,
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        ),
        || "mounting /proc".into(),
    )?;
    let sys_dir = ensure_dir(root, "sys")?;
    let sys = mount(
        Some("sysfs"),
        &sys_dir,
        Some("sysfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        None::<&str>,
    );
    if sys.is_err() {
        // sysfs cannot be mounted in some network setups: fall back to a read-only bind.
        bind(Path::new("/sys"), &sys_dir, true)?;
    }
    setup_dev(root)?;
    for b in &spec.binds {
        let target = root.join(b.target.trim_start_matches('/'));
        if b.source.is_dir() {
            fs::create_dir_all(&target).map_err(|e| format!("{}: {e}", target.display()))?;
        } else {
            if let Some(p) = target.parent() {
                fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))?;
            }
            if !target.exists() {
                fs::write(&target, b"").map_err(|e| format!("{}: {e}", target.display()))?;
            }
        }
        bind(&b.source, &target, b.readonly)?;
    }
    for m in &spec.mounts {
        run_mount(root, m)?;
    }
    // Secret values go from their private files straight into the command's environment.
    let mut secret_env = Vec::new();
    for (name, path) in &spec.secret_env {
        let value = fs::read(path).map_err(|e| format!("reading the secret for ${name}: {e}"))?;
        secret_env.push((name.clone(), value));
    }
    ctx(sethostname(&spec.hostname), || "sethostname".into())?;
    if spec.network == NetMode::None {
        loopback_up()?;
    }
    // The working directory exists before the command starts (Docker creates it).
    let cwd = root.join(spec.cwd.trim_start_matches('/'));
    fs::create_dir_all(&cwd).map_err(|e| format!("creating {}: {e}", spec.cwd))?;

    // Swap roots and drop the old one.
    let old = root.join(".imgbuild-old-root");
    fs::create_dir_all(&old).map_err(|e| e.to_string())?;
    ctx(pivot_root(root, &old), || "pivot_root".into())?;
    std::env::set_current_dir("/").map_err(|e| e.to_string())?;
    ctx(umount2("/.imgbuild-old-root", MntFlags::MNT_DETACH), || {
        "detaching the old root".into()
    })?;
    let _ = fs::remove_dir("/.imgbuild-old-root");

    // SAFETY: still single-threaded.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { child } => Ok(reap_until(child)),
        ForkResult::Child => {
            let e = exec_command(spec, &secret_env);
            eprintln!("imgbuild sandbox: {e}");
            std::process::exit(127)
        }
    }
}

/// As PID 1: reaps every child until `main` exits, then returns its status.
fn reap_until(main: Pid) -> i32 {
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(p, c)) if p == main => return c,
            Ok(WaitStatus::Signaled(p, s, _)) if p == main => return 128 + s as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 125,
        }
    }
}

fn exec_command(spec: &Spec, secret_env: &[(String, Vec<u8>)]) -> String {
    if let Err(e) = std::env::set_current_dir(&spec.cwd) {
        return format!("cannot enter the working directory {}: {e}", spec.cwd);
    }
    if let Some(input) = &spec.stdin {
        match fs::File::open(input) {
            Ok(f) => {
                use std::os::fd::AsRawFd;
                unsafe extern "C" {
                    fn dup2(old: i32, new: i32) -> i32;
                }
                // SAFETY: both are valid descriptors; 0 is replaced atomically.
                if unsafe { dup2(f.as_raw_fd(), 0) } < 0 {
                    return "cannot set up standard input".into();
                }
            }
            Err(e) => return format!("cannot open the heredoc input: {e}"),
        }
    }
    let mapping = crate::userns::mapping();
    let groups: Vec<Gid> = spec.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    // A single-uid user namespace was made with setgroups denied: the list stays as it is.
    if mapping != crate::userns::Mapping::Single
        && let Err(e) = nix::unistd::setgroups(&groups)
    {
        return format!("setgroups: {e}");
    }
    if !spec.privileged
        && let Err(e) = drop_capabilities()
    {
        return e;
    }
    if let Err(e) = nix::unistd::setresgid(
        Gid::from_raw(spec.gid),
        Gid::from_raw(spec.gid),
        Gid::from_raw(spec.gid),
    ) {
        return format!("setgid {}: {e}{}", spec.gid, unmapped_hint(e, mapping));
    }
    if let Err(e) = nix::unistd::setresuid(
        Uid::from_raw(spec.uid),
        Uid::from_raw(spec.uid),
        Uid::from_raw(spec.uid),
    ) {
        return format!("setuid {}: {e}{}", spec.uid, unmapped_hint(e, mapping));
    }
    if !spec.privileged {
        // SAFETY: prctl with constant arguments.
        if unsafe { libc_prctl_no_new_privs() } != 0 {
            return "cannot set no_new_privs".into();
        }
    }
    let Some(prog) = spec.args.first() else {
        return "empty command".into();
    };
    let cargs: Vec<CString> = match spec
        .args
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect()
    {
        Ok(v) => v,
        Err(_) => return "a command argument holds a NUL byte".into(),
    };
    let secret_names: Vec<String> = secret_env.iter().map(|(k, _)| format!("{k}=")).collect();
    let mut cenv: Vec<CString> = spec
        .env
        .iter()
        .filter(|e| !secret_names.iter().any(|k| e.starts_with(k.as_str())))
        .filter_map(|e| CString::new(e.as_bytes()).ok())
        .collect();
    for (k, v) in secret_env {
        let mut kv = format!("{k}=").into_bytes();
        kv.extend_from_slice(v);
        match CString::new(kv) {
            Ok(c) => cenv.push(c),
            Err(_) => return format!("the secret for ${k} holds a NUL byte"),
        }
    }
    // PATH lookup uses the image's PATH (execvpe reads it from our own environment).
    if let Some(path) = spec.env.iter().find_map(|e| e.strip_prefix("PATH=")) {
        // SAFETY: single-threaded child just before exec.
        unsafe { std::env::set_var("PATH", path) };
    } else {
        // An image without PATH gets Docker's default, for the lookup and for the command.
        unsafe { std::env::set_var("PATH", DEFAULT_PATH) };
        if let Ok(c) = CString::new(format!("PATH={DEFAULT_PATH}")) {
            cenv.push(c);
        }
    }
    let cprog = match CString::new(prog.as_bytes()) {
        Ok(c) => c,
        Err(_) => return "the program name holds a NUL byte".into(),
    };
    match execvpe(&cprog, &cargs, &cenv) {
        Err(nix::errno::Errno::ENOENT) => format!("{prog}: not found in the image"),
        Err(e) => format!("cannot run {prog}: {e}"),
        Ok(_) => unreachable!(),
    }
}

/// Why an id does not exist in a rootless build, and what to do about it.
fn unmapped_hint(e: nix::errno::Errno, mapping: crate::userns::Mapping) -> &'static str {
    match (e, mapping) {
        (nix::errno::Errno::EINVAL, crate::userns::Mapping::Single) => {
            " (this rootless build maps only your own uid, as root: give your user ranges in \
             /etc/subuid and /etc/subgid and install newuidmap (Debian package uidmap) to RUN \
             as other users)"
        }
        (nix::errno::Errno::EINVAL, crate::userns::Mapping::Ranges { .. }) => {
            " (the id is outside this rootless build's /etc/subuid or /etc/subgid range)"
        }
        _ => "",
    }
}

/// `prctl(PR_SET_PDEATHSIG, SIGKILL)`, and exit at once if the parent is already gone.
fn die_with_parent() {
    const PR_SET_PDEATHSIG: i32 = 1;
    const SIGKILL: u64 = 9;
    unsafe extern "C" {
        fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
        fn getppid() -> i32;
    }
    // SAFETY: prctl/getppid with plain integer arguments.
    unsafe {
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        if getppid() == 1 {
            std::process::exit(125);
        }
    }
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
unsafe fn libc_prctl_no_new_privs() -> i32 {
    const PR_SET_NO_NEW_PRIVS: i32 = 38;
    unsafe extern "C" {
        fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
    }
    unsafe { prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }
}

/// Drops every capability outside Docker's default set from the bounding set; the effective,
/// permitted and inheritable sets follow when the uid changes or at exec.
fn drop_capabilities() -> Result<(), String> {
    let last = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    let keep: Vec<u32> = DEFAULT_CAPS.iter().filter_map(|c| cap_number(c)).collect();
    const PR_CAPBSET_DROP: i32 = 24;
    unsafe extern "C" {
        fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
        fn capset(header: *mut CapHeader, data: *const CapData) -> i32;
    }
    for cap in 0..=last {
        if !keep.contains(&cap) {
            // SAFETY: prctl with plain integer arguments.
            unsafe { prctl(PR_CAPBSET_DROP, cap as u64, 0, 0, 0) };
        }
    }
    // Effective/permitted/inheritable: only the kept ones.
    let mut lo = 0u32;
    let mut hi = 0u32;
    for c in &keep {
        if *c < 32 {
            lo |= 1 << c;
        } else {
            hi |= 1 << (c - 32);
        }
    }
    let mut header = CapHeader {
        version: 0x2008_0522,
        pid: 0,
    };
    let data = [
        CapData {
            effective: lo,
            permitted: lo,
            inheritable: lo,
        },
        CapData {
            effective: hi,
            permitted: hi,
            inheritable: hi,
        },
    ];
    // SAFETY: header and two data structs as capset(2) expects for version 3.
    if unsafe { capset(&mut header, data.as_ptr()) } != 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn cap_number(name: &str) -> Option<u32> {
    Some(match name {
        "CAP_CHOWN" => 0,
        "CAP_DAC_OVERRIDE" => 1,
        "CAP_FOWNER" => 3,
        "CAP_FSETID" => 4,
        "CAP_KILL" => 5,
        "CAP_SETGID" => 6,
        "CAP_SETUID" => 7,
        "CAP_SETPCAP" => 8,
        "CAP_NET_BIND_SERVICE" => 10,
        "CAP_NET_RAW" => 13,
        "CAP_SYS_CHROOT" => 18,
        "CAP_MKNOD" => 27,
        "CAP_AUDIT_WRITE" => 29,
        "CAP_SETFCAP" => 31,
        _ => return None,
    })
}

fn ensure_dir(root: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = root.join(rel);
    fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(p)
}

/// One `RUN --mount`: its mount point is made inside `root` without following symlinks.
fn run_mount(root: &Path, m: &MountSpec) -> Result<(), String> {
    let target = mount_point(root, &m.target, m.dir)?;
    match &m.kind {
        MountKind::Bind {
            source,
            readonly,
            restricted,
        } => {
            if *restricted {
                let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
                if *readonly {
                    flags |= MsFlags::MS_RDONLY;
                }
                bind_with(source, &target, flags)
            } else {
                bind(source, &target, *readonly)
            }
        }
        MountKind::Overlay {
            lower,
            upper,
            staging,
            subpath,
        } => {
            let opts = overlay_options(
                lower,
                upper.as_ref().map(|(u, w)| (u.as_path(), w.as_path())),
            );
            ctx(
                mount(
                    Some("overlay"),
                    staging,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(opts.as_str()),
                ),
                || format!("mounting the files for {}", m.target),
            )?;
            let source = if subpath.is_empty() {
                staging.clone()
            } else {
                staging.join(subpath)
            };
            bind(&source, &target, upper.is_none())
        }
        MountKind::Tmpfs { size, readonly } => {
            let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            if *readonly {
                flags |= MsFlags::MS_RDONLY;
            }
            let opts = size.map(|n| format!("size={n}"));
            ctx(
                mount(
                    Some("tmpfs"),
                    &target,
                    Some("tmpfs"),
                    flags,
                    opts.as_deref(),
                ),
                || format!("mounting a tmpfs on {}", m.target),
            )
        }
    }
}

/// Mount options of an overlay. `userxattr`: whiteouts and opaque marks live in `user.overlay.*`
/// xattrs, which a rootless build's user namespace may set (and root may too), so the layer
/// trees in the store serve both.
fn overlay_options(lower: &[PathBuf], upper: Option<(&Path, &Path)>) -> String {
    let lowerdir: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    let mut opts = format!("lowerdir={}", lowerdir.join(":"));
    if let Some((u, w)) = upper {
        opts.push_str(&format!(
            ",upperdir={},workdir={}",
            u.display(),
            w.display()
        ));
    }
    opts.push_str(",userxattr");
    opts
}

/// Creates the mount point `target` (absolute in the sandbox) under `root`: missing
/// directories on the way, then a directory or an empty file. A symlink on the way is an error
/// (the parent resolved the image's symlinks already; one here would come from another mount
/// and could lead out of the root).
fn mount_point(root: &Path, target: &str, dir: bool) -> Result<PathBuf, String> {
    let comps: Vec<&str> = target.split('/').filter(|c| !c.is_empty()).collect();
    let mut cur = root.to_path_buf();
    for (i, c) in comps.iter().enumerate() {
        cur.push(c);
        let last = i + 1 == comps.len();
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "mount target {target}: {} is a symlink",
                    cur.strip_prefix(root).unwrap_or(&cur).display()
                ));
            }
            Ok(m) if !last && !m.is_dir() => {
                return Err(format!(
                    "mount target {target}: /{} is not a directory",
                    cur.strip_prefix(root).unwrap_or(&cur).display()
                ));
            }
            Ok(_) => {}
            Err(_) if !last || dir => {
                fs::create_dir(&cur).map_err(|e| format!("mount target {target}: {e}"))?
            }
            Err(_) => fs::write(&cur, b"").map_err(|e| format!("mount target {target}: {e}"))?,
        }
    }
    Ok(cur)
}

/// A bind mount, then (when `flags` are given) a remount with them (read-only, nosuid, …).
fn bind_with(source: &Path, target: &Path, flags: MsFlags) -> Result<(), String> {
    ctx(
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ),
        || format!("bind-mounting {} on {}", source.display(), target.display()),
    )?;
    if flags.is_empty() {
        return Ok(());
    }
    ctx(
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
            None::<&str>,
        ),
        || format!("restricting {}", target.display()),
    )
}

fn bind(source: &Path, target: &Path, readonly: bool) -> Result<(), String> {
    let flags = if readonly {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    bind_with(source, target, flags)
}

/// A tmpfs /dev with the usual nodes, a private devpts and /dev/shm.
fn setup_dev(root: &Path) -> Result<(), String> {
    let dev = ensure_dir(root, "dev")?;
    ctx(
        mount(
            Some("tmpfs"),
            &dev,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
        ),
        || "mounting /dev".into(),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = dev.join(name);
        let made = mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(major, minor),
        );
        if made.is_err() {
            // Without CAP_MKNOD (or on nodev mounts) bind the host's node instead.
            fs::write(&p, b"").map_err(|e| e.to_string())?;
            bind(&Path::new("/dev").join(name), &p, false)?;
        } else {
            let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o666));
        }
    }
    let pts = ensure_dir(&dev, "pts")?;
    ctx(
        mount(
            Some("devpts"),
            &pts,
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
        || "mounting /dev/pts".into(),
    )?;
    let _ = std::os::unix::fs::symlink("pts/ptmx", dev.join("ptmx"));
    let shm = ensure_dir(&dev, "shm")?;
    ctx(
        mount(
            Some("shm"),
            &shm,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        ),
        || "mounting /dev/shm".into(),
    )?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, dev.join(link));
    }
    Ok(())
}

/// Brings `lo` up in a fresh network namespace (`--network=none` still has loopback).
fn loopback_up() -> Result<(), String> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    use std::os::fd::AsRawFd;
    let sock = ctx(
        socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::empty(),
            None,
        ),
        || "socket".into(),
    )?;
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: i16,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    const SIOCGIFFLAGS: u64 = 0x8913;
    const SIOCSIFFLAGS: u64 = 0x8914;
    const IFF_UP: i16 = 0x1;
    unsafe extern "C" {
        fn ioctl(fd: i32, req: u64, ...) -> i32;
    }
    // SAFETY: ifreq-shaped buffer for the interface-flag ioctls.
    unsafe {
        if ioctl(sock.as_raw_fd(), SIOCGIFFLAGS, &mut req) != 0 {
            return Err("cannot read the loopback interface".into());
        }
        req.flags |= IFF_UP;
        if ioctl(sock.as_raw_fd(), SIOCSIFFLAGS, &mut req) != 0 {
            return Err("cannot bring the loopback interface up".into());
        }
    }
    Ok(())
}
