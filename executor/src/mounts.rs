//! `RUN --mount`, parent side: turns the planner's canonical mounts into what the sandbox
//! mounts ([`MountSpec`]s), and holds what must live as long as the step (cache-mount locks,
//! the private directory with secrets and ssh sockets, the ssh-agent proxies).
//!
//! - `bind` from the context: the selected subtree (what the `.dockerignore` left in) is
//!   materialised in the step's scratch dir as hard links (copies across file systems, and with
//!   `--security=insecure`, which could remount it writable) and bound read-only; from a stage
//!   or an image, that filesystem's extracted layers are overlay-mounted read-only and the
//!   source path bound. `rw` puts a scratch upper dir on the overlay: writes are discarded.
//! - `cache`: a directory in the store (`Store::cache_mount`), locked as `sharing` says,
//!   created with `mode`/`uid`/`gid` and seeded from `from`/`source` the first time.
//! - `tmpfs`: a tmpfs, `size` bytes at most.
//! - `secret`: the value is written to a private directory outside the store (on the tmpfs
//!   `/dev/shm` when there is one) that is removed when the step ends, and bound read-only; with
//!   `env=`, the sandbox reads it from there into the command's environment. The value never
//!   enters the spec, a key, a record, a log or the store.
//! - `ssh`: a socket in that private directory, owned and moded as the mount says, whose
//!   connections are forwarded to the agent `--ssh` named; `SSH_AUTH_SOCK` points at the first.

use crate::Executor;
use crate::rootfs::RootFs;
use crate::sandbox::{MountKind, MountSpec};
use imgbuild_cache::context::{ContextSnapshot, EntryKind as CtxKind};
use imgbuild_cache::store::{CacheMount, CacheSharing};
use imgbuild_parser::instructions::{Mount, MountType, Sharing, parse_mount};
use imgbuild_planner::{CopySource, RunOp, Step};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// BuildKit's limit on a secret's size.
pub const MAX_SECRET_SIZE: u64 = 500 * 1024;

/// Where a `--secret` takes its value from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    /// The name of an environment variable of the build.
    Env(String),
}

/// What the build was given for `RUN --mount=type=secret` and `type=ssh`: only where values
/// are, never the values (they are read when a step needs them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Session {
    pub secrets: BTreeMap<String, SecretSource>,
    /// ssh id -> agent socket.
    pub ssh: BTreeMap<String, PathBuf>,
}

impl Session {
    /// Adds a `--secret` in docker buildx syntax: `id=NAME[,src=PATH|,env=VAR][,type=file|env]`.
    /// Without `src` and `env`, the variable `NAME` is used when it is set, else the file NAME.
    pub fn add_secret(&mut self, spec: &str) -> Result<(), String> {
        let (mut id, mut src, mut env, mut kind) = (None, None, None, None);
        for field in spec.split(',') {
            let Some((k, v)) = field.split_once('=') else {
                return Err(format!(
                    "invalid field {field:?}: write id=NAME,src=PATH or id=NAME,env=VAR"
                ));
            };
            match k.to_ascii_lowercase().as_str() {
                "id" => id = Some(v.to_owned()),
                "src" | "source" => src = Some(v.to_owned()),
                "env" => env = Some(v.to_owned()),
                "type" if v == "file" || v == "env" => kind = Some(v.to_owned()),
                "type" => return Err(format!("unsupported secret type {v:?} (file or env)")),
                _ => {
                    return Err(format!(
                        "unexpected key {k:?} (id, src, env and type are known)"
                    ));
                }
            }
        }
        let id = id
            .filter(|i| !i.is_empty())
            .ok_or("the secret has no id: write id=NAME,src=PATH or id=NAME,env=VAR")?;
        if kind.as_deref() == Some("env") && env.is_none() {
            env = src.take().or_else(|| Some(id.clone()));
        }
        if env.is_none() && src.is_none() {
            if std::env::var_os(&id).is_some() {
                env = Some(id.clone());
            } else {
                src = Some(id.clone());
            }
        }
        let source = match (env, src) {
            (Some(var), _) => {
                if std::env::var_os(&var).is_none() {
                    return Err(format!(
                        "secret {id}: the environment variable {var} is not set"
                    ));
                }
                SecretSource::Env(var)
            }
            (None, Some(path)) => {
                let meta = fs::metadata(&path)
                    .map_err(|e| format!("secret {id}: cannot read {path}: {e}"))?;
                if !meta.is_file() {
                    return Err(format!("secret {id}: {path} is not a file"));
                }
                if meta.len() > MAX_SECRET_SIZE {
                    return Err(format!(
                        "secret {id}: {path} is too big ({} bytes; at most {MAX_SECRET_SIZE})",
                        meta.len()
                    ));
                }
                SecretSource::File(
                    std::path::absolute(&path).map_err(|e| format!("secret {id}: {e}"))?,
                )
            }
            (None, None) => unreachable!("one is set above"),
        };
        self.secrets.insert(id, source);
        Ok(())
    }

    /// Adds an `--ssh ID[=SOCKET]`: `default` alone is `$SSH_AUTH_SOCK`.
    pub fn add_ssh(&mut self, spec: &str) -> Result<(), String> {
        let (id, path) = match spec.split_once('=') {
            Some((id, p)) => (id.to_owned(), Some(p.to_owned())),
            None => (spec.to_owned(), None),
        };
        if id.is_empty() {
            return Err("write --ssh default or --ssh ID=SOCKET".into());
        }
        let path = match path {
            Some(p) if p.contains(',') => {
                return Err(format!(
                    "--ssh {id}: only one agent socket is supported (got {p:?})"
                ));
            }
            Some(p) => PathBuf::from(p),
            None => std::env::var_os("SSH_AUTH_SOCK")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .ok_or_else(|| {
                    format!(
                        "--ssh {id}: SSH_AUTH_SOCK is not set; start an ssh-agent or write \
                         --ssh {id}=SOCKET"
                    )
                })?,
        };
        use std::os::unix::fs::FileTypeExt;
        match fs::metadata(&path) {
            Ok(m) if m.file_type().is_socket() => {}
            Ok(_) => {
                return Err(format!(
                    "--ssh {id}: {} is not a socket (key files are not supported: load the key \
                     into an ssh-agent and pass its socket)",
                    path.display()
                ));
            }
            Err(e) => return Err(format!("--ssh {id}: {}: {e}", path.display())),
        }
        let path = std::path::absolute(&path).map_err(|e| format!("--ssh {id}: {e}"))?;
        self.ssh.insert(id, path);
        Ok(())
    }
}

/// What [`prepare`] made: the sandbox's mounts and what must outlive the command.
#[derive(Default)]
pub(crate) struct Prepared {
    pub mounts: Vec<MountSpec>,
    /// (variable, file holding its value): read by the sandbox, set for the command.
    pub secret_env: Vec<(String, PathBuf)>,
    /// `KEY=value` added to the command's environment (SSH_AUTH_SOCK).
    pub env: Vec<String>,
    /// Dropped once the command has ended.
    pub guards: Guards,
}

/// What must live while the command runs: cache-mount locks, ssh-agent proxies, and the
/// private directory with the secrets (removed on drop).
#[derive(Default)]
pub(crate) struct Guards {
    // Dropped in this order: the proxies must go before the directory holding their sockets.
    caches: Vec<CacheMount>,
    ssh: Vec<SshProxy>,
    private: Option<PrivateDir>,
}

/// The mounts of `op`, ready for the sandbox. `below` is the image the RUN starts from.
pub(crate) fn prepare(
    exec: &Executor,
    step: &Step,
    op: &RunOp,
    below: &RootFs,
    scratch: &Path,
    privileged: bool,
) -> Result<Prepared, String> {
    let mut out = Prepared::default();
    let mut ssh_targets = Vec::new();
    let mut parsed = Vec::with_capacity(op.mounts.len());
    for (i, raw) in op.mounts.iter().enumerate() {
        let mut identity = |v: &str| -> Result<String, String> { Ok(v.to_owned()) };
        let (m, errors) = parse_mount(raw, Some(&mut identity));
        if let Some(e) = errors.first() {
            return Err(format!("--mount={raw}: {e}"));
        }
        parsed.push((i, m));
    }
    // Cache mounts lock in the order of their ids, so steps running at once never wait on
    // each other in a cycle; the others keep their order (the first ssh mount is the
    // default socket).
    parsed.sort_by_key(|(_, m)| match m.kind {
        MountType::Cache => (0, m.id.clone().unwrap_or_default()),
        _ => (1, String::new()),
    });
    // A cache id mounted twice by one RUN: the second use shares the first's instance (a
    // second lock on it would wait for ourselves).
    let mut taken: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (i, m) in parsed {
        let from = op.mount_from.get(i).cloned().flatten();
        let dir = scratch.join(format!("mount-{i}"));
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let target = m.target.clone().unwrap_or_default();
        match m.kind {
            MountType::Bind => {
                let spec = bind_mount(exec, step, &m, from.as_ref(), below, &dir, privileged)?;
                out.mounts.push(spec);
            }
            MountType::Cache => {
                let id = m.id.clone().unwrap_or_default();
                let private = m.sharing == Some(Sharing::Private);
                let source = match taken.get(&id) {
                    Some(path) if !private => path.clone(),
                    _ => {
                        let cache = cache_mount(exec, step, &m, from.as_ref())?;
                        let path = cache.path().to_owned();
                        out.guards.caches.push(cache);
                        taken.entry(id).or_insert_with(|| path.clone());
                        path
                    }
                };
                out.mounts.push(MountSpec {
                    target: resolve_target(below, &target)?,
                    dir: true,
                    kind: MountKind::Bind {
                        source,
                        readonly: m.read_only,
                        restricted: false,
                    },
                });
            }
            MountType::Tmpfs => out.mounts.push(MountSpec {
                target: resolve_target(below, &target)?,
                dir: true,
                kind: MountKind::Tmpfs {
                    size: m.size_limit.filter(|n| *n > 0),
                    readonly: m.read_only,
                },
            }),
            MountType::Secret => {
                let id = m.id.clone().unwrap_or_default();
                let value = match exec.session.secrets.get(&id) {
                    Some(source) => read_secret(&id, source)?,
                    None if m.required => {
                        return Err(format!(
                            "secret {id:?} is required but was not given: pass --secret \
                             id={id},src=FILE (or id={id},env=VAR)"
                        ));
                    }
                    None => {
                        // Like BuildKit: an optional secret that is missing is not mounted,
                        // and its variable is set empty.
                        if let Some(var) = &m.env {
                            out.env.push(format!("{var}="));
                        }
                        continue;
                    }
                };
                let private = private_dir(&mut out.guards.private, exec.store.root())?;
                let file = private.join(format!("secret-{i}"));
                write_private(
                    &file,
                    &value,
                    m.mode.unwrap_or(0o400),
                    m.uid.unwrap_or(0),
                    m.gid.unwrap_or(0),
                )?;
                if let Some(var) = &m.env {
                    out.secret_env.push((var.clone(), file.clone()));
                }
                if !target.is_empty() {
                    out.mounts.push(MountSpec {
                        target: resolve_target(below, &target)?,
                        dir: false,
                        kind: MountKind::Bind {
                            source: file,
                            readonly: true,
                            restricted: true,
                        },
                    });
                }
            }
            MountType::Ssh => {
                let id = m.id.clone().unwrap_or_else(|| "default".into());
                let Some(agent) = exec.session.ssh.get(&id) else {
                    if m.required {
                        return Err(format!(
                            "ssh agent {id:?} is required but was not given: pass --ssh {id} \
                             (the agent at $SSH_AUTH_SOCK) or --ssh {id}=SOCKET"
                        ));
                    }
                    continue;
                };
                let private = private_dir(&mut out.guards.private, exec.store.root())?;
                let sock = private.join(format!("ssh-{i}.sock"));
                let proxy = SshProxy::start(agent.clone(), sock.clone())
                    .map_err(|e| format!("cannot forward the ssh agent: {e}"))?;
                set_owner_mode(
                    &sock,
                    m.mode.unwrap_or(0o600),
                    m.uid.unwrap_or(0),
                    m.gid.unwrap_or(0),
                )?;
                out.guards.ssh.push(proxy);
                ssh_targets.push(target.clone());
                out.mounts.push(MountSpec {
                    target: resolve_target(below, &target)?,
                    dir: false,
                    kind: MountKind::Bind {
                        source: sock,
                        readonly: false,
                        restricted: true,
                    },
                });
            }
        }
    }
    if let Some(first) = ssh_targets.first()
        && !op.env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK="))
    {
        out.env.push(format!("SSH_AUTH_SOCK={first}"));
    }
    // Parents before what is mounted inside them.
    out.mounts
        .sort_by_key(|m| m.target.split('/').filter(|c| !c.is_empty()).count());
    Ok(out)
}

fn bind_mount(
    exec: &Executor,
    step: &Step,
    m: &Mount,
    from: Option<&CopySource>,
    below: &RootFs,
    dir: &Path,
    privileged: bool,
) -> Result<MountSpec, String> {
    let target = m.target.clone().unwrap_or_default();
    let source = m.source.clone().unwrap_or_default();
    let (lower, subpath, is_dir) = match from {
        None | Some(CopySource::Context) => {
            let snap = exec
                .context
                .ok_or("a bind mount from the context, but the build has no context")?;
            let tree = dir.join("context");
            let (subpath, is_dir) = materialise_context(snap, &source, &tree, !privileged)?;
            if m.read_only {
                return Ok(MountSpec {
                    target: resolve_target(below, &target)?,
                    dir: is_dir,
                    kind: MountKind::Bind {
                        source: if subpath.is_empty() {
                            tree
                        } else {
                            tree.join(&subpath)
                        },
                        readonly: true,
                        restricted: false,
                    },
                });
            }
            (vec![tree], subpath, is_dir)
        }
        Some(src) => {
            let layers = source_layers(exec, step, src)?;
            let fs = RootFs::new(layers.clone());
            let path = format!("/{}", source.trim_start_matches('/'));
            let missing = || format!("bind source {path} is not in {}", describe(exec, src));
            let resolved = fs
                .resolve(&path, true)
                .map_err(|e| format!("{path}: {e}"))?
                .ok_or_else(missing)?;
            let found = fs
                .lstat(&resolved)
                .map_err(|e| format!("{path}: {e}"))?
                .ok_or_else(missing)?;
            (
                layers.into_iter().rev().collect(),
                resolved.trim_start_matches('/').to_owned(),
                found.is_dir(),
            )
        }
    };
    if crate::run::copy_roots() {
        // No overlayfs: a copy of what the mount shows; writes to it (`rw`) are discarded
        // with the scratch dir all the same.
        let copy = dir.join("copy");
        fs::create_dir_all(&copy).map_err(|e| format!("{}: {e}", copy.display()))?;
        let bottom_first: Vec<PathBuf> = lower.iter().rev().cloned().collect();
        crate::treediff::materialize(&bottom_first, &copy)
            .map_err(|e| format!("copying the files for {target}: {e}"))?;
        return Ok(MountSpec {
            target: resolve_target(below, &target)?,
            dir: is_dir,
            kind: MountKind::Bind {
                source: if subpath.is_empty() {
                    copy
                } else {
                    copy.join(&subpath)
                },
                readonly: m.read_only,
                restricted: false,
            },
        });
    }
    let mut lower = lower;
    let mut n = 0;
    while lower.len() < 2 {
        // overlayfs needs two lower dirs when it has no upper one.
        let empty = dir.join(format!("empty-{n}"));
        fs::create_dir_all(&empty).map_err(|e| format!("{}: {e}", empty.display()))?;
        lower.push(empty);
        n += 1;
    }
    let upper = if m.read_only {
        None
    } else {
        let (u, w) = (dir.join("upper"), dir.join("work"));
        for d in [&u, &w] {
            fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        Some((u, w))
    };
    let staging = dir.join("merged");
    fs::create_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    Ok(MountSpec {
        target: resolve_target(below, &target)?,
        dir: is_dir,
        kind: MountKind::Overlay {
            lower,
            upper,
            staging,
            subpath,
        },
    })
}

/// The extracted layer dirs (bottom first) of a stage's or an image's filesystem.
fn source_layers(exec: &Executor, step: &Step, src: &CopySource) -> Result<Vec<PathBuf>, String> {
    let records = match src {
        CopySource::Stage(si) => {
            let last = exec.plan.stages[*si]
                .as_ref()
                .map(|s| s.last)
                .ok_or("the mount's stage was not planned")?;
            exec.chain_layers(last).map_err(|e| e.to_string())?
        }
        CopySource::Image { manifest, .. } => exec
            .image_layers(step, manifest)
            .map_err(|e| e.to_string())?,
        CopySource::Context => return Err("internal error: context has no layers".into()),
    };
    records
        .iter()
        .map(|l| exec.extracted(l).map_err(|e| e.to_string()))
        .collect()
}

fn describe(exec: &Executor, src: &CopySource) -> String {
    match src {
        CopySource::Stage(si) => {
            match exec.plan.stages[*si].as_ref().and_then(|s| s.name.clone()) {
                Some(name) => format!("stage {name}"),
                None => format!("stage {si}"),
            }
        }
        CopySource::Image { reference, .. } => format!("image {reference}"),
        CopySource::Context => "the build context".into(),
    }
}

/// Takes (creating and seeding it the first time) the cache mount `m` names.
fn cache_mount(
    exec: &Executor,
    step: &Step,
    m: &Mount,
    from: Option<&CopySource>,
) -> Result<CacheMount, String> {
    let id = m.id.clone().unwrap_or_default();
    let sharing = match m.sharing.unwrap_or(Sharing::Shared) {
        Sharing::Shared => CacheSharing::Shared,
        Sharing::Private => CacheSharing::Private,
        Sharing::Locked => CacheSharing::Locked,
    };
    let seed = match from {
        Some(src @ (CopySource::Stage(_) | CopySource::Image { .. })) => {
            Some(RootFs::new(source_layers(exec, step, src)?))
        }
        _ => None,
    };
    let source = format!(
        "/{}",
        m.source.as_deref().unwrap_or("").trim_start_matches('/')
    );
    let waiting = || {
        exec.progress.note(&format!(
            "waiting for cache mount {id:?}: another build holds it (sharing=locked)"
        ))
    };
    let mut init = |dir: &Path| -> io::Result<()> {
        if let Some(fs) = &seed {
            copy_tree(fs, &source, dir)?;
        }
        let meta = fs::metadata(dir)?;
        let mode = m
            .mode
            .unwrap_or(if seed.is_some() { meta.mode() } else { 0o755 });
        let uid = m.uid.unwrap_or(if seed.is_some() { meta.uid() } else { 0 });
        let gid = m.gid.unwrap_or(if seed.is_some() { meta.gid() } else { 0 });
        std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o7777))
    };
    exec.store
        .cache_mount(&id, sharing, &waiting, &mut init)
        .map_err(|e| format!("cache mount {id:?}: {e}"))
}

/// Copies `path` of `fs` (a directory's contents, or a file) into directory `dest`, keeping
/// modes, owners and symlinks.
fn copy_tree(fs: &RootFs, path: &str, dest: &Path) -> io::Result<()> {
    let Some(top) = fs.stat(path)? else {
        return Err(io::Error::other(format!(
            "{path} is not there to seed from"
        )));
    };
    if !top.is_dir() {
        let name = path.rsplit('/').next().unwrap_or("file");
        return copy_entry(&top.real, &top.meta, &dest.join(name));
    }
    std::os::unix::fs::lchown(dest, Some(top.meta.uid()), Some(top.meta.gid()))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(top.mode()))?;
    let resolved = top.path.clone();
    for (rel, f) in fs.walk(&resolved)? {
        copy_entry(&f.real, &f.meta, &dest.join(rel))?;
    }
    Ok(())
}

/// Recreates one file, directory or symlink at `to` with `meta`'s mode and owner (special
/// files are skipped).
fn copy_entry(from: &Path, meta: &fs::Metadata, to: &Path) -> io::Result<()> {
    let ft = meta.file_type();
    if ft.is_dir() {
        fs::create_dir(to)?;
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)?;
    } else if ft.is_file() {
        fs::copy(from, to)?;
    } else {
        return Ok(());
    }
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    if !ft.is_symlink() {
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    Ok(())
}

/// Materialises what the context `source` selects into `tree` (created here): a directory's
/// contents as `tree` itself, a file as `tree/<name>`. Returns the path to mount relative to
/// `tree` ("" for a directory) and whether it is a directory. Files are hard links when `link`
/// (copies when that fails); ignored files are not in the snapshot, so they are not there.
fn materialise_context(
    snap: &ContextSnapshot,
    source: &str,
    tree: &Path,
    link: bool,
) -> Result<(String, bool), String> {
    let sel = snap
        .select(&escape_wildcards(source))
        .map_err(|e| format!("bind source {source:?}: {e}"))?;
    let item = sel
        .items()
        .first()
        .ok_or_else(|| format!("bind source {source:?} is not in the build context"))?;
    let err = |p: &Path, e: io::Error| format!("{}: {e}", p.display());
    fs::create_dir(tree).map_err(|e| err(tree, e))?;
    let make = |e: &imgbuild_cache::context::Entry, to: &Path| -> Result<(), String> {
        let from = snap.root().join(&e.path);
        match e.kind {
            CtxKind::Dir => {
                fs::create_dir(to).map_err(|x| err(to, x))?;
            }
            CtxKind::File => {
                // A hard link already has the file's owner and mode (and changing them would
                // change the context's file).
                if link && fs::hard_link(&from, to).is_ok() {
                    return Ok(());
                }
                fs::copy(&from, to).map_err(|x| err(&from, x))?;
            }
            CtxKind::Symlink => {
                std::os::unix::fs::symlink(e.link_target.clone().unwrap_or_default(), to)
                    .map_err(|x| err(to, x))?;
            }
            // Sockets, FIFOs and devices: not part of what a bind shows (BuildKit's context
            // transfer skips them too).
            _ => return Ok(()),
        }
        let _ = std::os::unix::fs::lchown(to, Some(e.stat.uid), Some(e.stat.gid));
        if e.kind != CtxKind::Symlink {
            fs::set_permissions(to, fs::Permissions::from_mode(e.mode)).map_err(|x| err(to, x))?;
        }
        Ok(())
    };
    match item.resolved {
        Some(e) if e.kind != CtxKind::Dir => {
            let name = item.path.rsplit('/').next().unwrap_or("file").to_owned();
            make(e, &tree.join(&name))?;
            Ok((name, false))
        }
        resolved => {
            let base = resolved.map(|e| e.path.as_str()).unwrap_or("");
            for e in item.entries {
                if e.path == base {
                    fs::set_permissions(tree, fs::Permissions::from_mode(e.mode))
                        .map_err(|x| err(tree, x))?;
                    continue;
                }
                let rel = if base.is_empty() {
                    e.path.as_str()
                } else {
                    &e.path[base.len() + 1..]
                };
                make(e, &tree.join(rel))?;
            }
            Ok((String::new(), true))
        }
    }
}

/// A path the context selection takes literally (see the planner's copy of this rule).
fn escape_wildcards(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, '*' | '?' | '[' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `target` with symlinks resolved inside the image below (so the sandbox never follows a
/// link out of the root), as far as the path exists; the rest is appended as written.
pub(crate) fn resolve_target(below: &RootFs, target: &str) -> Result<String, String> {
    let comps: Vec<&str> = target
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let mut cur = String::from("/");
    for (i, c) in comps.iter().enumerate() {
        let candidate = if cur == "/" {
            format!("/{c}")
        } else {
            format!("{cur}/{c}")
        };
        let resolved = below
            .resolve(&candidate, true)
            .map_err(|e| format!("mount target {target}: {e}"))?
            .ok_or_else(|| format!("mount target {target}: a symlink on the way leads nowhere"))?;
        match below
            .lstat(&resolved)
            .map_err(|e| format!("mount target {target}: {e}"))?
        {
            Some(f) if i + 1 < comps.len() && !f.is_dir() => {
                return Err(format!(
                    "mount target {target}: {resolved} is not a directory in the image"
                ));
            }
            Some(_) => cur = resolved,
            None => {
                let rest = comps[i + 1..].join("/");
                return Ok(if rest.is_empty() {
                    resolved
                } else {
                    format!("{}/{rest}", resolved.trim_end_matches('/'))
                });
            }
        }
    }
    Ok(cur)
}

fn read_secret(id: &str, source: &SecretSource) -> Result<Vec<u8>, String> {
    match source {
        SecretSource::File(p) => {
            let data = fs::read(p).map_err(|e| format!("secret {id}: {}: {e}", p.display()))?;
            if data.len() as u64 > MAX_SECRET_SIZE {
                return Err(format!("secret {id}: {} is too big", p.display()));
            }
            Ok(data)
        }
        SecretSource::Env(var) => std::env::var_os(var)
            .map(|v| v.into_encoded_bytes())
            .ok_or_else(|| format!("secret {id}: the environment variable {var} is not set")),
    }
}

/// Creates `path` (new, 0600 while written) with `data`, then gives it its owner and mode.
fn write_private(path: &Path, data: &[u8], mode: u32, uid: u32, gid: u32) -> Result<(), String> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(data)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    drop(f);
    set_owner_mode(path, mode, uid, gid)
}

fn set_owner_mode(path: &Path, mode: u32, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777)))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A directory outside the store for a step's secrets and ssh sockets: mode 0700, on the
/// tmpfs `/dev/shm` when there is one (so secrets never reach a disk), else in the temp dir;
/// removed with its content when dropped.
pub(crate) struct PrivateDir {
    path: PathBuf,
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

fn private_dir<'a>(
    slot: &'a mut Option<PrivateDir>,
    store_root: &Path,
) -> Result<&'a Path, String> {
    if slot.is_none() {
        *slot = Some(new_private_dir(store_root)?);
    }
    Ok(&slot.as_ref().expect("set above").path)
}

fn new_private_dir(store_root: &Path) -> Result<PrivateDir, String> {
    use std::hash::{BuildHasher, RandomState};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let root = fs::canonicalize(store_root).unwrap_or_else(|_| store_root.to_owned());
    let mut last = String::from("no candidate directory");
    for base in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
        let Ok(base) = fs::canonicalize(&base) else {
            continue;
        };
        if !base.is_dir() || base.starts_with(&root) {
            continue;
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "imgbuild-run-{}-{:016x}",
            std::process::id(),
            RandomState::new().hash_one(n)
        );
        let path = base.join(name);
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok(PrivateDir { path }),
            Err(e) => last = format!("{}: {e}", path.display()),
        }
    }
    Err(format!(
        "cannot make a private directory for secrets outside the store ({last})"
    ))
}

/// Forwards connections on a socket of ours to an ssh agent, so the sandbox's socket has the
/// mount's owner and mode and the agent's own socket is never exposed.
pub(crate) struct SshProxy {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SshProxy {
    fn start(agent: PathBuf, path: PathBuf) -> io::Result<SshProxy> {
        let listener = UnixListener::bind(&path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let agent = agent.clone();
                std::thread::spawn(move || {
                    if let Ok(upstream) = UnixStream::connect(&agent) {
                        forward(client, upstream);
                    }
                });
            }
        });
        Ok(SshProxy {
            path,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for SshProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag (the socket is still there: `Guards` drops
        // the proxies before the private directory). Should the connection fail, the thread is
        // left blocked in accept rather than joined, so a step never hangs here.
        if UnixStream::connect(&self.path).is_ok()
            && let Some(t) = self.thread.take()
        {
            let _ = t.join();
        }
    }
}

/// Copies both ways until each side has closed.
fn forward(a: UnixStream, b: UnixStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let t = std::thread::spawn(move || {
        let (mut r, mut w) = (a2, b2);
        let _ = io::copy(&mut r, &mut w);
        let _ = w.shutdown(std::net::Shutdown::Write);
    });
    let (mut r, mut w) = (b, a);
    let _ = io::copy(&mut r, &mut w);
    let _ = w.shutdown(std::net::Shutdown::Write);
    let _ = t.join();
}

/// Removes what the sandbox created only as mount points from the upper dir: for every mount
/// target and its ancestors, deepest first, an empty directory (or an empty file at a target)
/// the image below did not have, and an empty directory the image has with the same mode and
/// owner that overlayfs only copied up to hold a mount point below it.
/// The mount targets (relative) and every directory on the way to them, deepest first, each
/// with whether it is a target itself.
pub(crate) fn stub_paths(targets: &[String]) -> Vec<(String, bool)> {
    let mut paths: BTreeMap<String, bool> = BTreeMap::new();
    for t in targets {
        let comps: Vec<&str> = t.split('/').filter(|c| !c.is_empty()).collect();
        for n in 1..=comps.len() {
            let p = comps[..n].join("/");
            let is_target = n == comps.len();
            *paths.entry(p).or_default() |= is_target;
        }
    }
    let mut ordered: Vec<(String, bool)> = paths.into_iter().collect();
    ordered.sort_by_key(|(p, _)| std::cmp::Reverse(p.split('/').count()));
    ordered
}

pub(crate) fn remove_stubs(upper: &Path, below: &RootFs, targets: &[String]) {
    for (rel, is_target) in stub_paths(targets) {
        let p = upper.join(&rel);
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        let in_image = below.lstat(&format!("/{rel}")).ok().flatten();
        let empty_dir = meta.is_dir() && fs::read_dir(&p).is_ok_and(|mut d| d.next().is_none());
        match in_image {
            None if empty_dir => {
                let _ = fs::remove_dir(&p);
            }
            None if is_target && meta.is_file() && meta.len() == 0 => {
                let _ = fs::remove_file(&p);
            }
            Some(f)
                if empty_dir
                    && f.is_dir()
                    && !crate::rootfs::has_opaque_xattr(&p)
                    && f.mode() == meta.mode() & 0o7777
                    && f.meta.uid() == meta.uid()
                    && f.meta.gid() == meta.gid() =>
            {
                let _ = fs::remove_dir(&p);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn secret_specs_follow_buildx() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tok");
        fs::write(&file, b"value").unwrap();
        let mut s = Session::default();
        s.add_secret(&format!("id=a,src={}", file.display()))
            .unwrap();
        s.add_secret(&format!("type=file,id=b,source={}", file.display()))
            .unwrap();
        // PATH is set in every test environment.
        s.add_secret("id=c,env=PATH").unwrap();
        s.add_secret("type=env,id=d,src=PATH").unwrap();
        s.add_secret("id=PATH").unwrap();
        assert_eq!(s.secrets["a"], SecretSource::File(file.clone()));
        assert_eq!(s.secrets["b"], SecretSource::File(file));
        for id in ["c", "d", "PATH"] {
            assert_eq!(s.secrets[id], SecretSource::Env("PATH".into()), "{id}");
        }
        for (bad, says) in [
            ("src=/x", "no id"),
            ("id=x,src=/nonexistent/imgbuild", "cannot read"),
            ("id=x,env=IMGBUILD_SURELY_UNSET_VARIABLE", "is not set"),
            ("id=x,type=ssh", "unsupported secret type"),
            ("id=x,colour=red", "unexpected key"),
            ("id", "invalid field"),
        ] {
            let e = Session::default().add_secret(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn ssh_specs_name_agent_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent");
        let _listener = UnixListener::bind(&sock).unwrap();
        let mut s = Session::default();
        s.add_ssh(&format!("work={}", sock.display())).unwrap();
        assert_eq!(s.ssh["work"], sock);
        let file = dir.path().join("id_ed25519");
        fs::write(&file, b"key").unwrap();
        let e = s.add_ssh(&format!("key={}", file.display())).unwrap_err();
        assert!(e.contains("not a socket"), "{e}");
        let e = s.add_ssh("two=/a,/b").unwrap_err();
        assert!(e.contains("only one agent socket"), "{e}");
    }

    #[test]
    fn the_ssh_proxy_forwards_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        let listener = UnixListener::bind(&agent).unwrap();
        // A stand-in agent that answers each request with it reversed.
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let mut s = s;
                let mut buf = [0u8; 5];
                if s.read_exact(&mut buf).is_ok() {
                    buf.reverse();
                    let _ = s.write_all(&buf);
                }
            }
        });
        let proxy_path = dir.path().join("proxy");
        let proxy = SshProxy::start(agent, proxy_path.clone()).unwrap();
        for _ in 0..2 {
            let mut c = UnixStream::connect(&proxy_path).unwrap();
            c.write_all(b"hello").unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let mut got = String::new();
            c.read_to_string(&mut got).unwrap();
            assert_eq!(got, "olleh");
        }
        // Dropping it stops the listener.
        drop(proxy);
        assert!(UnixStream::connect(&proxy_path).is_err());
    }

    #[test]
    fn targets_resolve_inside_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("l");
        fs::create_dir_all(layer.join("real/dir")).unwrap();
        std::os::unix::fs::symlink("/real", layer.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../real", layer.join("real/dir/up")).unwrap();
        fs::write(layer.join("file"), b"").unwrap();
        let below = RootFs::new(vec![layer]);
        let r = |t: &str| resolve_target(&below, t);
        assert_eq!(r("/abs/dir/x").unwrap(), "/real/dir/x");
        assert_eq!(r("/real/dir/up/new/deeper").unwrap(), "/real/new/deeper");
        assert_eq!(r("/missing/a/b").unwrap(), "/missing/a/b");
        assert_eq!(r("/real").unwrap(), "/real");
        assert!(r("/file/below").unwrap_err().contains("not a directory"));
    }
}
