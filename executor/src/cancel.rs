//! Ending a build early (Ctrl-C, SIGTERM): no new step starts, and the sandboxes of running RUN
//! steps are killed.
//!
//! Process-wide on purpose, as signals are: the binary's signal handler calls [`cancel`], the
//! scheduler polls [`is_cancelled`]. Each RUN's sandbox helper is started in a process group of
//! its own (so a terminal's Ctrl-C does not reach it behind our back) and registered here while
//! it runs; [`cancel`] kills every registered group with SIGKILL. The helper's child is PID 1
//! of the step's PID namespace, and when it dies the kernel kills everything else in that
//! namespace, so nothing the step started outlives the build. The store needs nothing: every
//! write to it is a temp name renamed into place, and the temp entries of a dead process are
//! removed when the store is next opened.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

static CANCELLED: AtomicBool = AtomicBool::new(false);

/// The process groups of running sandbox helpers. Spawning happens under this lock, so a
/// helper is either registered before [`cancel`] looks (and killed), or sees the flag and is
/// never started.
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn groups() -> MutexGuard<'static, Vec<i32>> {
    GROUPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Cancels the build this process runs: no step starts from now on, and every running sandbox
/// is killed. There is no undo: the process is expected to exit.
pub fn cancel() {
    let groups = groups();
    CANCELLED.store(true, Ordering::SeqCst);
    for &pg in groups.iter() {
        let _ = killpg(Pid::from_raw(pg), Signal::SIGKILL);
    }
}

/// Whether [`cancel`] was called.
pub fn is_cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

/// A running helper's process group; deregistered when dropped (drop it once the helper has
/// been waited for).
#[must_use]
pub(crate) struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        groups().retain(|&pg| pg != self.0);
    }
}

/// Spawns `cmd` as the leader of a new process group that [`cancel`] kills. Fails with
/// [`io::ErrorKind::Interrupted`] once the build is cancelled.
pub(crate) fn spawn(cmd: &mut Command) -> io::Result<(Child, Group)> {
    cmd.process_group(0);
    let mut groups = groups();
    if is_cancelled() {
        return Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "the build was cancelled",
        ));
    }
    let child = cmd.spawn()?;
    let pg = child.id() as i32;
    groups.push(pg);
    Ok((child, Group(pg)))
}
