//! RUN, parent side: prepares the overlay directories and the sandbox spec, runs the sandbox
//! helper, streams its output, and turns the overlay's upper dir into the step's layer entries.

use crate::Executor;
use crate::mounts;
use crate::rootfs::RootFs;
use crate::sandbox::{Bind, NetMode, Spec};
use crate::treediff;
use crate::userdb;
use imgbuild_cache::layer::{DirOptions, Entry, entries_from_dir};
use imgbuild_planner::{RunOp, Step};
use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};

/// Lines of a failed command's output shown in the error.
const TAIL_LINES: usize = 20;

/// Paths the sandbox creates as mount points; removed from the layer when the image below did
/// not have them, so mounts never leave stubs behind.
const MOUNT_POINTS: &[&str] = &[
    "dev",
    "proc",
    "sys",
    "etc/hosts",
    "etc/resolv.conf",
    "etc/hostname",
    "etc",
    ".imgbuild-old-root",
];

/// The program that runs sandboxes: our own binary (`imgbuild __sandbox`), or
/// `$IMGBUILD_SANDBOX_EXE` (tests of the library run from another binary).
fn sandbox_exe() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("IMGBUILD_SANDBOX_EXE") {
        return Ok(PathBuf::from(p));
    }
    // /proc/self/exe, not the path it points to: it still runs this very binary when the file
    // has been replaced (an upgrade, a rebuild) while the build was running.
    let exe = PathBuf::from("/proc/self/exe");
    if exe.exists() {
        return Ok(exe);
    }
    std::env::current_exe().map_err(|e| format!("cannot find our own executable: {e}"))
}

/// Set once overlayfs is found missing (or `IMGBUILD_ROOTFS=copy`): RUN then copies the image
/// into a directory and diffs it afterwards (see `treediff`).
static COPY_ROOTS: AtomicBool = AtomicBool::new(false);
static COPY_ROOTS_ENV: Once = Once::new();

/// Whether RUN (and its mounts of other stages) copy trees instead of mounting overlays.
pub(crate) fn copy_roots() -> bool {
    COPY_ROOTS_ENV.call_once(|| {
        if std::env::var("IMGBUILD_ROOTFS").is_ok_and(|v| v == "copy") {
            COPY_ROOTS.store(true, Ordering::Relaxed);
        }
    });
    COPY_ROOTS.load(Ordering::Relaxed)
}

/// Runs `op` over `layers` (extracted layer dirs, bottom first) in `scratch`; returns the
/// entries the command added, changed or deleted.
pub(crate) fn run(
    exec: &Executor,
    step: &Step,
    op: &RunOp,
    layers: &[PathBuf],
    below: &RootFs,
    scratch: &Path,
    output: &(dyn Fn(&str) + Sync),
) -> Result<Vec<Entry>, String> {
    if !rustix::process::geteuid().is_root() {
        return Err(
            "RUN needs root or a user namespace of its own: the imgbuild command \
                    enters one when run without root (imgbuild_executor::userns::enter)"
                .into(),
        );
    }
    let copied = copy_roots();
    match run_in(exec, step, op, layers, below, scratch, output, copied)? {
        Some(entries) => Ok(entries),
        None => {
            if !COPY_ROOTS.swap(true, Ordering::Relaxed) {
                exec.progress.note(
                    "overlayfs cannot be mounted here: RUN copies the image for each step \
                     instead (slower; the layers are the same)",
                );
            }
            let again = scratch.join("copied");
            run_in(exec, step, op, layers, below, &again, output, true)?
                .ok_or_else(|| "the sandbox could not set up its root".into())
        }
    }
}

/// One attempt: `None` when overlayfs turned out not to be available.
#[allow(clippy::too_many_arguments)]
fn run_in(
    exec: &Executor,
    step: &Step,
    op: &RunOp,
    layers: &[PathBuf],
    below: &RootFs,
    scratch: &Path,
    output: &(dyn Fn(&str) + Sync),
    copied: bool,
) -> Result<Option<Vec<Entry>>, String> {
    let dirs = ["upper", "work", "merged", "etc", "pipes"].map(|d| scratch.join(d));
    for d in &dirs {
        fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let [upper, work, merged, etc, pipes] = dirs;
    let snapshot = if copied {
        treediff::materialize(layers, &merged)
            .map_err(|e| format!("copying the image for the step: {e}"))?;
        Some(
            treediff::Snapshot::take(&merged)
                .map_err(|e| format!("reading the image before the step: {e}"))?,
        )
    } else {
        None
    };

    // USER: a name or number; named users get their passwd group.
    let (uid, gid) = if op.user.is_empty() {
        (0, 0)
    } else {
        let o = userdb::resolve(&op.user, below, true)?;
        (o.uid, o.gid)
    };
    let hostname = "imgbuild".to_owned();
    fs::write(
        etc.join("hosts"),
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    fs::write(etc.join("hostname"), format!("{hostname}\n")).map_err(|e| e.to_string())?;
    let resolv =
        fs::read("/etc/resolv.conf").unwrap_or_else(|_| b"nameserver 127.0.0.1\n".to_vec());
    fs::write(etc.join("resolv.conf"), resolv).map_err(|e| e.to_string())?;
    let mut binds: Vec<Bind> = ["hosts", "hostname", "resolv.conf"]
        .iter()
        .map(|f| Bind {
            source: etc.join(f),
            target: format!("/etc/{f}"),
            readonly: false,
        })
        .collect();
    for (name, data, _) in &op.files {
        let p = pipes.join(name);
        fs::write(&p, data).map_err(|e| e.to_string())?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        binds.push(Bind {
            source: p,
            target: format!("/dev/pipes/{name}"),
            readonly: true,
        });
    }
    let privileged = op.security == "insecure";
    // Held until the command has ended: cache-mount locks, the secrets, the ssh proxies.
    let mounted = mounts::prepare(exec, step, op, below, scratch, privileged)?;
    let mut env = op.env.clone();
    env.extend(op.proxy_env.iter().cloned());
    for kv in &mounted.env {
        let name = kv.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(name));
        env.push(kv.clone());
    }
    let network = match op.network.as_str() {
        "none" => NetMode::None,
        _ => NetMode::Host,
    };
    let spec = Spec {
        lower: layers.iter().rev().cloned().collect(),
        upper: upper.clone(),
        work,
        merged: merged.clone(),
        args: op.args.clone(),
        env,
        cwd: if op.workdir.is_empty() {
            "/".into()
        } else {
            op.workdir.clone()
        },
        uid,
        gid,
        groups: vec![gid],
        hostname,
        network,
        binds,
        stdin: None,
        privileged,
        mounts: mounted.mounts.clone(),
        secret_env: mounted.secret_env.clone(),
        copied,
    };
    let spec_path = scratch.join("spec.json");
    fs::write(
        &spec_path,
        serde_json::to_vec(&spec).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;

    // In a process group of its own, which a cancelled build kills (crate::cancel).
    let (mut child, group) = crate::cancel::spawn(
        Command::new(sandbox_exe()?)
            .arg("__sandbox")
            .arg(&spec_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .map_err(|e| format!("cannot start the sandbox: {e}"))?;
    let tail: Arc<Mutex<VecDeque<String>>> = Arc::new(Mutex::new(VecDeque::new()));
    let status = std::thread::scope(|s| {
        let streams: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().expect("piped")),
            Box::new(child.stderr.take().expect("piped")),
        ];
        for stream in streams {
            let tail = Arc::clone(&tail);
            s.spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    output(&line);
                    let mut t = tail.lock().unwrap();
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
        }
        child.wait()
    })
    .map_err(|e| format!("waiting for the sandbox: {e}"))?;
    drop(group);
    if !copied && crate::sandbox::no_overlay_marker(&upper).exists() {
        return Ok(None);
    }
    if !status.success() {
        let code = status.code().unwrap_or(-1);
        let lines: Vec<String> = tail.lock().unwrap().iter().cloned().collect();
        let mut msg = format!(
            "`{}` exited with code {code}",
            step.created_by.trim_start_matches("RUN ")
        );
        if !lines.is_empty() {
            msg.push_str(":\n");
            for l in lines {
                msg.push_str("  │ ");
                msg.push_str(&l);
                msg.push('\n');
            }
        }
        return Err(msg);
    }

    drop(mounted.guards);
    // Mount points the image did not have are not part of the result.
    let targets: Vec<String> = MOUNT_POINTS
        .iter()
        .map(|m| (*m).to_owned())
        .chain(
            mounted
                .mounts
                .iter()
                .map(|m| m.target.trim_start_matches('/').to_owned()),
        )
        .collect();
    if let Some(snapshot) = snapshot {
        treediff::remove_new_stubs(&merged, &snapshot, &targets);
        return snapshot.diff(&merged, &targets).map(Some);
    }
    mounts::remove_stubs(&upper, below, &targets);
    entries_from_dir(
        &upper,
        &DirOptions {
            overlay: true,
            ..DirOptions::default()
        },
    )
    .map(Some)
    .map_err(|e| format!("reading the step's changes: {e}"))
}
