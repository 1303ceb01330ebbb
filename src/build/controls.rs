//! Build controls around the executor: entitlements (`--allow`), Ctrl-C, and the `--trace` file.

use imgbuild_planner::{Op, Plan};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

/// The entitlements `--allow` grants (BuildKit's names).
#[derive(Clone, Debug, Default)]
pub struct Entitlements {
    /// `security.insecure`: `RUN --security=insecure` keeps every capability.
    pub insecure: bool,
}

/// Parses `--allow` values; an unknown one is a usage error.
pub fn parse_allow(values: &[String]) -> Result<Entitlements, String> {
    let mut e = Entitlements::default();
    for v in values.iter().flat_map(|v| v.split(',')) {
        match v.trim() {
            "security.insecure" => e.insecure = true,
            // Accepted as docker does; RUN uses the host's network by default here, so
            // `--network=host` needs no grant.
            "network.host" => {}
            other => {
                return Err(format!(
                    "--allow {other:?}: unknown entitlement (known: security.insecure, network.host)"
                ));
            }
        }
    }
    Ok(e)
}

/// Checks the plan against the entitlements before anything runs: each RUN that needs one
/// that was not granted is named in the error.
pub fn check_entitlements(plan: &Plan, granted: &Entitlements) -> Result<(), String> {
    let needing: Vec<&str> = plan
        .steps
        .iter()
        .filter(|s| matches!(&s.op, Op::Run(r) if r.security == "insecure"))
        .map(|s| s.created_by.lines().next().unwrap_or_default())
        .collect();
    if needing.is_empty() || granted.insecure {
        return Ok(());
    }
    let mut msg = String::from(
        "RUN --security=insecure needs the security.insecure entitlement: build with \
         `--allow security.insecure` to let it run with every capability. Steps that need it:",
    );
    for s in needing {
        msg.push_str("\n  ");
        msg.push_str(s);
    }
    Err(msg)
}

/// The first SIGINT/SIGTERM received, 0 for none.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Whether the executor is running (set by the build around `Executor::run`).
static EXECUTING: AtomicBool = AtomicBool::new(false);

/// How long a cancelled build may take to wind down (steps that are not RUNs finish what they
/// write) before the process exits anyway; the store is consistent at any point.
const GRACE: Duration = Duration::from_secs(3);

/// Marks the executor as running (or not): a signal while it runs lets it wind down and report;
/// at any other time (planning, writing outputs) the process exits at once.
pub fn executing(running: bool) {
    EXECUTING.store(running, Ordering::SeqCst);
}

/// Installs the handler for Ctrl-C (SIGINT) and SIGTERM: the first signal cancels the build
/// (no new step starts, running sandboxes are killed). While the executor runs, the build then
/// ends with status 128+signal by itself; if it has not after [`GRACE`], on a second signal, or
/// when the executor is not running, the process exits at once with that status.
pub fn handle_signals() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("imgbuild-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if let Err(first) =
                    SIGNAL.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
                {
                    std::process::exit(128 + first);
                }
                imgbuild_executor::cancel::cancel();
                if !EXECUTING.load(Ordering::SeqCst) {
                    std::process::exit(128 + sig);
                }
                std::thread::spawn(move || {
                    std::thread::sleep(GRACE);
                    std::process::exit(128 + sig);
                });
            }
        })?;
    Ok(())
}

/// The exit status for a build stopped by a signal (130 for Ctrl-C), if one came.
pub fn interrupted() -> Option<u8> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some((128 + s) as u8),
    }
}

/// Writes the trace JSON to `path` atomically (a temp name beside it, then rename).
pub fn write_trace(path: &Path, trace: &serde_json::Value) -> std::io::Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let result = serde_json::to_vec(trace)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_values() {
        let e = parse_allow(&["security.insecure".into()]).unwrap();
        assert!(e.insecure);
        let e = parse_allow(&["network.host,security.insecure".into()]).unwrap();
        assert!(e.insecure);
        assert!(!parse_allow(&["network.host".into()]).unwrap().insecure);
        let err = parse_allow(&["device".into()]).unwrap_err();
        assert!(err.contains("security.insecure"), "{err}");
    }
}
