//! Rootless builds. Without root, a command that uses the store first moves the whole process
//! into a user namespace of its own in which it is uid 0, and from then on everything works as
//! it does for root: layers are extracted with their owners applied (where the ids are mapped),
//! RUN's helper creates its namespaces and mounts overlayfs (with `userxattr`), and the store's
//! files stay owned by the user on the host.
//!
//! Two mappings, chosen when entering:
//! - **ranges**: `0 → the user`, `1… → the user's range in /etc/subuid and /etc/subgid`, written
//!   by the setuid helpers `newuidmap`/`newgidmap` (Debian package `uidmap`). Every id an image
//!   commonly uses (0–65535) is real: `USER nobody` works, files keep their owners.
//! - **single**: only `0 → the user` (no helpers or no ranges; or `IMGBUILD_USERNS=single`).
//!   Files whose owners cannot be applied keep them in an xattr (see
//!   `imgbuild_cache::layer::OWNER_XATTR`) so the layers made from them still carry them; a RUN
//!   can only run as root.
//!
//! Entering happens while the process is single-threaded (unshare(CLONE_NEWUSER) requires it),
//! at the start of `main`.

use nix::sched::{CloneFlags, unshare};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Gid, Pid, Uid, fork, getpid};
use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

/// How ids are mapped in the namespace we entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// Not in a user namespace of ours (root, or the namespace was made by someone else).
    None,
    /// Only uid/gid 0 exist.
    Single,
    /// 0 and `1..=count` (the subordinate range).
    Ranges { uids: u32, gids: u32 },
}

/// The mapping of the user namespace this process is in, read from /proc (so the sandbox
/// helper, a child, sees the same as the build).
pub fn mapping() -> Mapping {
    let ids = |file: &str| -> Option<u64> {
        let text = fs::read_to_string(Path::new("/proc/self").join(file)).ok()?;
        let mut total = 0u64;
        for line in text.lines() {
            let f: Vec<u64> = line
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            if f.len() != 3 {
                return None;
            }
            if f[0] == 0 && f[1] == 0 && f[2] == u64::from(u32::MAX) {
                return None; // the initial namespace
            }
            total += f[2];
        }
        Some(total)
    };
    match (ids("uid_map"), ids("gid_map")) {
        (Some(u), Some(g)) if u <= 1 && g <= 1 => Mapping::Single,
        (Some(u), Some(g)) => Mapping::Ranges {
            uids: u32::try_from(u - 1).unwrap_or(u32::MAX),
            gids: u32::try_from(g - 1).unwrap_or(u32::MAX),
        },
        _ => Mapping::None,
    }
}

/// Whether this process runs in a user namespace (rootless): overlay mounts then need
/// `userxattr`, device nodes cannot be made, and not every id can own a file.
pub fn rootless() -> bool {
    mapping() != Mapping::None
}

/// For a non-root user, enters a new user namespace as uid 0 (see the module doc); for root,
/// or when already inside one, does nothing. Must be called while single-threaded.
pub fn enter() -> Result<Mapping, String> {
    let (uid, gid) = (Uid::current(), Gid::current());
    if uid.is_root() {
        return Ok(mapping());
    }
    // The store's default place is the user's, not root's: fix it before we become "root".
    if std::env::var_os("IMGBUILD_ROOT").is_none()
        && let Ok(root) = imgbuild_cache::store::Store::default_root()
    {
        // SAFETY: single-threaded (the caller's contract).
        unsafe { std::env::set_var("IMGBUILD_ROOT", root) };
    }
    let single = std::env::var("IMGBUILD_USERNS").is_ok_and(|v| v == "single");
    let ranges = if single {
        None
    } else {
        subordinate_ranges(uid)
    };
    match ranges {
        None => {
            unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| {
                format!("cannot create a user namespace for a rootless build: {e} (is kernel.unprivileged_userns_clone or user.max_user_namespaces 0?)")
            })?;
            let write = |file: &str, text: String| {
                fs::write(Path::new("/proc/self").join(file), text)
                    .map_err(|e| format!("writing /proc/self/{file}: {e}"))
            };
            // Without this an unprivileged process may not write gid_map.
            write("setgroups", "deny".into())?;
            write("uid_map", format!("0 {uid} 1\n"))?;
            write("gid_map", format!("0 {gid} 1\n"))?;
        }
        Some((subuid, subgid)) => map_with_helpers(uid, gid, subuid, subgid)?,
    }
    Ok(mapping())
}

/// `(start, count)` of the user's subordinate uid and gid ranges, when both exist and the
/// setuid helpers that apply them are installed.
fn subordinate_ranges(uid: Uid) -> Option<((u32, u32), (u32, u32))> {
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name);
    let find = |file: &str| -> Option<(u32, u32)> {
        let text = fs::read_to_string(file).ok()?;
        text.lines().find_map(|line| {
            let mut f = line.trim().split(':');
            let who = f.next()?;
            let start: u32 = f.next()?.parse().ok()?;
            let count: u32 = f.next()?.parse().ok()?;
            let mine = who == uid.to_string() || name.as_deref() == Some(who);
            (mine && count > 0).then_some((start, count))
        })
    };
    let on_path = |tool: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
    };
    if !on_path("newuidmap") || !on_path("newgidmap") {
        return None;
    }
    Some((find("/etc/subuid")?, find("/etc/subgid")?))
}

/// Unshares the user namespace and has a child, still outside it, write the maps with
/// `newuidmap`/`newgidmap` (only a process outside may use the subordinate ranges).
fn map_with_helpers(
    uid: Uid,
    gid: Gid,
    subuid: (u32, u32),
    subgid: (u32, u32),
) -> Result<(), String> {
    let (go_r, go_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (done_r, done_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let me = getpid();
    // SAFETY: single-threaded (the caller's contract); the child only reads, runs two helper
    // programs and exits.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(go_w);
            drop(done_r);
            let mut byte = [0u8; 1];
            let ok = fs::File::from(go_r).read_exact(&mut byte).is_ok()
                && byte[0] == b'1'
                && helper("newuidmap", me, uid.as_raw(), subuid)
                && helper("newgidmap", me, gid.as_raw(), subgid);
            let _ = fs::File::from(done_w).write_all(if ok { b"1" } else { b"0" });
            // SAFETY: ends the forked child without running the parent's exit handlers.
            unsafe { nix::libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(go_r);
            drop(done_w);
            let unshared = unshare(CloneFlags::CLONE_NEWUSER);
            let mut go = fs::File::from(go_w);
            let _ = go.write_all(if unshared.is_ok() { b"1" } else { b"0" });
            drop(go);
            let mut byte = [0u8; 1];
            let mapped = fs::File::from(done_r).read_exact(&mut byte).is_ok() && byte[0] == b'1';
            let _ = waitpid(child, None);
            unshared
                .map_err(|e| format!("cannot create a user namespace for a rootless build: {e}"))?;
            if !mapped {
                return Err(format!(
                    "newuidmap/newgidmap could not map the ranges of /etc/subuid and /etc/subgid \
                     for uid {uid}; fix the ranges, or set IMGBUILD_USERNS=single to map only \
                     your own uid"
                ));
            }
            Ok(())
        }
    }
}

/// Runs `newuidmap PID 0 ID 1 1 START COUNT` (or newgidmap); whether it succeeded. Its
/// complaints go to our stderr.
fn helper(tool: &str, pid: Pid, id: u32, (start, count): (u32, u32)) -> bool {
    Command::new(tool)
        .args([
            pid.to_string(),
            "0".into(),
            id.to_string(),
            "1".into(),
            "1".into(),
            start.to_string(),
            count.to_string(),
        ])
        .status()
        .is_ok_and(|s| s.success())
}
