//! `ADD <git URL>`: refs resolved with `git ls-remote`, commits fetched into a bare repository
//! per URL under the store, and the tree at a commit stored as an uncompressed tar blob the
//! executor copies from.
//!
//! Store layout, one directory per URL (`<root>/git/<blake3(url)>/`):
//! - `url`: the URL (written before the directory is renamed into place);
//! - `repo/`: a bare repository holding the commits fetched so far, each kept by a ref
//!   `refs/imgbuild/commits/<commit>`; fetches are shallow when the server allows it;
//! - `lock`: flock held while fetching and checking out, so builds sharing a URL take turns;
//! - `trees/<blake3(commit, subdir, keep-git-dir)>.json`: `{digest, size}` of a tree's tar, so
//!   a second build at the same commit neither fetches nor checks out (a record whose blob is
//!   gone is not used).
//!
//! The tar's modes are git's (0644, 0755 for executables, 0755 directories), owners 0:0 and
//! mtimes 0, whatever the umask or the host's git configuration; `.git` is left out unless
//! `--keep-git-dir=true`, which adds a shallow repository at the commit (HEAD detached, remote
//! `origin` = the URL, an index without stat data).

use imgbuild_cache::layer::{
    Compression, DirOptions, EntryKind, LayerOptions, LayerWriter, Owner, entries_from_dir,
};
use imgbuild_cache::store::Store;
use imgbuild_planner::git::is_commit_hash;
use imgbuild_planner::{GitRef, GitTree};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// What `trees/<…>.json` remembers.
#[derive(Serialize, Deserialize)]
struct TreeRecord {
    digest: imgbuild_cache::Digest,
    size: u64,
}

pub struct GitFetcher<'a> {
    store: &'a Store,
    /// This build's resolutions, by `URL#REF` (each ref is listed once per build).
    resolved: Mutex<HashMap<String, Result<String, String>>>,
}

impl<'a> GitFetcher<'a> {
    pub fn new(store: &'a Store) -> Self {
        GitFetcher {
            store,
            resolved: Mutex::new(HashMap::new()),
        }
    }

    /// The commit `g`'s ref names now: a full commit hash as it is, else what
    /// `git ls-remote` lists for it (a tag before a branch of the same name, as git does).
    pub fn resolve(&self, g: &GitRef) -> Result<String, String> {
        if let Some(r) = &g.reference
            && is_commit_hash(r)
        {
            return Ok(r.clone());
        }
        let mut resolved = self.resolved.lock().unwrap();
        resolved
            .entry(g.repo_ref())
            .or_insert_with(|| ls_remote(g))
            .clone()
    }

    /// The tree of `g` at `commit` as a tar blob in the store: fetched and checked out unless
    /// an earlier build recorded it.
    pub fn tree(&self, g: &GitRef, commit: &str, keep_git_dir: bool) -> Result<GitTree, String> {
        let store_err = |e: imgbuild_cache::store::StoreError| e.to_string();
        let dir = self
            .store
            .root()
            .join("git")
            .join(blake3::hash(g.url.as_bytes()).to_hex().as_str());
        let mut h = blake3::Hasher::new();
        for part in [
            commit,
            g.subdir.as_deref().unwrap_or(""),
            if keep_git_dir { "1" } else { "0" },
        ] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        let record = dir
            .join("trees")
            .join(format!("{}.json", h.finalize().to_hex()));
        if let Some(t) = self.recorded(&record, commit) {
            return Ok(t);
        }
        self.ensure_repo(&dir, &g.url)?;
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .and_then(|f| f.lock().map(|()| f))
            .map_err(|e| format!("cannot lock the git cache of {}: {e}", g.url))?;
        // Another build may have made it while we waited.
        if let Some(t) = self.recorded(&record, commit) {
            return Ok(t);
        }
        let repo = dir.join("repo");
        fetch_commit(&repo, g, commit)?;
        let (digest, size) = self.materialise(&repo, g, commit, keep_git_dir)?;
        let json = serde_json::to_vec_pretty(&TreeRecord { digest, size }).expect("serialises");
        if let Some(parent) = record.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        self.store.write_atomic(&record, &json).map_err(store_err)?;
        drop(lock);
        Ok(GitTree {
            commit: commit.to_owned(),
            digest: digest.to_string(),
        })
    }

    fn recorded(&self, record: &Path, commit: &str) -> Option<GitTree> {
        let r: TreeRecord = serde_json::from_slice(&fs::read(record).ok()?).ok()?;
        (self.store.blob_size(&r.digest) == Some(r.size)).then(|| GitTree {
            commit: commit.to_owned(),
            digest: r.digest.to_string(),
        })
    }

    /// Creates `<root>/git/<hash>/` (the bare repository, its URL and lock file) in a temp
    /// directory and renames it into place, so a half-made cache is never seen.
    fn ensure_repo(&self, dir: &Path, url: &str) -> Result<(), String> {
        if dir.join("repo").is_dir() {
            return Ok(());
        }
        let tmp = self.store.temp_dir().map_err(|e| e.to_string())?;
        fs::write(tmp.path().join("url"), url).map_err(|e| e.to_string())?;
        fs::write(tmp.path().join("lock"), b"").map_err(|e| e.to_string())?;
        let repo = tmp.path().join("repo");
        run(
            git_local()
                .arg("init")
                .arg("--quiet")
                .arg("--bare")
                .arg(&repo),
            "git init",
        )?;
        for (k, v) in [
            // The checkout for --keep-git-dir fetches a commit by its hash from here.
            ("uploadpack.allowAnySHA1InWant", "true"),
            // A gc must not outlive the build in the background.
            ("gc.autoDetach", "false"),
            ("core.logAllRefUpdates", "false"),
        ] {
            run(
                git_local()
                    .arg("--git-dir")
                    .arg(&repo)
                    .args(["config", k, v]),
                "git config",
            )?;
        }
        tmp.persist(dir).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Checks the tree out into a store temp dir and writes it as a tar blob.
    fn materialise(
        &self,
        repo: &Path,
        g: &GitRef,
        commit: &str,
        keep_git_dir: bool,
    ) -> Result<(imgbuild_cache::Digest, u64), String> {
        let tmp = self.store.temp_dir().map_err(|e| e.to_string())?;
        let work = tmp.path().join("tree");
        let index = tmp.path().join("index");
        fs::create_dir(&work).map_err(|e| e.to_string())?;
        let tree_ish = match &g.subdir {
            Some(s) => {
                let t = format!("{commit}:{s}");
                let kind = run(
                    git_local()
                        .arg("--git-dir")
                        .arg(repo)
                        .args(["cat-file", "-t", &t]),
                    "git cat-file",
                );
                if kind.as_deref().map(str::trim) != Ok("tree") {
                    return Err(format!(
                        "{s} is not a directory of {} at commit {commit}",
                        g.repo_ref()
                    ));
                }
                t
            }
            None => commit.to_owned(),
        };
        let checkout = |args: &[&str]| {
            run(
                git_local()
                    .env("GIT_INDEX_FILE", &index)
                    .arg("--git-dir")
                    .arg(repo)
                    .arg("--work-tree")
                    .arg(&work)
                    .args(args),
                "git checkout",
            )
            .map_err(|e| format!("checking out {} at {commit}: {e}", g.repo_ref()))
        };
        checkout(&["read-tree", &tree_ish])?;
        checkout(&["checkout-index", "--all"])?;
        // The .git of the repository's top only: a subdirectory never has one.
        if keep_git_dir && g.subdir.is_none() {
            keep_dot_git(repo, &work, &g.url, commit)
                .map_err(|e| format!("--keep-git-dir for {}: {e}", g.repo_ref()))?;
        }

        let mut entries = entries_from_dir(
            &work,
            &DirOptions {
                owner: Owner::Force { uid: 0, gid: 0 },
                skip_xattrs: true,
                ..DirOptions::default()
            },
        )
        .map_err(|e| e.to_string())?;
        for e in &mut entries {
            e.mtime = 0;
            e.mode = match e.kind {
                EntryKind::File(_) if e.mode & 0o111 != 0 => 0o755,
                EntryKind::File(_) => 0o644,
                EntryKind::Symlink { .. } => 0o777,
                _ => 0o755,
            };
        }
        let blob = self.store.blob_writer().map_err(|e| e.to_string())?;
        let mut w = LayerWriter::new(
            blob,
            LayerOptions {
                compression: Compression::None,
                epoch: 0,
            },
        );
        w.extend(entries).map_err(|e| e.to_string())?;
        let (_, blob) = w.finish_into_inner().map_err(|e| e.to_string())?;
        blob.finish().map_err(|e| e.to_string())
    }
}

/// `git` with what makes it safe in a build: no prompts (a build never waits for a password;
/// ssh in batch mode unless the user chose an ssh command), C messages.
fn git() -> Command {
    let mut c = Command::new("git");
    c.stdin(Stdio::null())
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C");
    if std::env::var_os("GIT_SSH_COMMAND").is_none() && std::env::var_os("GIT_SSH").is_none() {
        c.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
    c
}

/// `git` for work on the local cache: the host's git configuration (autocrlf, filters,
/// templates) is ignored, so a checkout is the same everywhere.
fn git_local() -> Command {
    let mut c = git();
    c.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args(["-c", "core.autocrlf=false", "-c", "core.symlinks=true"]);
    c
}

/// Runs a git command; its stdout, or its stderr (trimmed) as the error.
fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            "the `git` command is not installed (Debian package git); ADD of a git repository \
             needs it"
                .to_owned()
        } else {
            format!("{what}: {e}")
        }
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err.trim();
    Err(if err.is_empty() {
        format!("{what} failed ({})", out.status)
    } else {
        err.lines()
            .map(|l| l.trim_start_matches("fatal: "))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// The commit `g`'s ref (or the remote's HEAD) names, from `git ls-remote`.
fn ls_remote(g: &GitRef) -> Result<String, String> {
    let out = run(git().args(["ls-remote", "--"]).arg(&g.url), "git ls-remote")
        .map_err(|e| format!("cannot resolve {}: git ls-remote: {e}", g.repo_ref()))?;
    let refs: Vec<(&str, &str)> = out.lines().filter_map(|l| l.split_once('\t')).collect();
    let names: Vec<String> = match g.reference.as_deref() {
        None => vec!["HEAD".into()],
        Some(r) if r == "HEAD" || r.starts_with("refs/") => vec![r.into()],
        // git's order for a short name: a tag, then a branch.
        Some(r) => vec![format!("refs/tags/{r}"), format!("refs/heads/{r}")],
    };
    for name in &names {
        // An annotated tag's `^{}` line names the commit it points at.
        let peeled = format!("{name}^{{}}");
        for want in [&peeled, name] {
            if let Some((commit, _)) = refs.iter().find(|(_, n)| n == want) {
                return Ok(commit.to_string());
            }
        }
    }
    Err(match g.reference.as_deref() {
        None => format!("{} has no HEAD (is the repository empty?)", g.url),
        Some(r) => {
            let mut have: Vec<&str> = refs
                .iter()
                .filter_map(|(_, n)| {
                    n.strip_prefix("refs/heads/")
                        .or_else(|| n.strip_prefix("refs/tags/"))
                })
                .filter(|n| !n.ends_with("^{}"))
                .collect();
            have.truncate(10);
            let hint = if r.len() < 40 && r.bytes().all(|b| b.is_ascii_hexdigit()) {
                " (a commit must be given by its full hash)"
            } else {
                ""
            };
            format!(
                "{} has no branch or tag {r:?}{hint}; it has: {}",
                g.url,
                if have.is_empty() {
                    "none".to_owned()
                } else {
                    have.join(", ")
                }
            )
        }
    })
}

fn has_commit(repo: &Path, commit: &str) -> bool {
    run(
        git_local().arg("--git-dir").arg(repo).args([
            "cat-file",
            "-e",
            &format!("{commit}^{{commit}}"),
        ]),
        "git cat-file",
    )
    .is_ok()
}

/// Makes `commit` present in the cache: by its hash, shallow (servers speaking protocol v2
/// allow it), else the history of the ref (a pinned commit the branch has moved past).
fn fetch_commit(repo: &Path, g: &GitRef, commit: &str) -> Result<(), String> {
    let git_dir = |c: &mut Command| {
        c.arg("--git-dir").arg(repo);
    };
    if !has_commit(repo, commit) {
        let mut c = git();
        git_dir(&mut c);
        c.args(["fetch", "--quiet", "--no-tags", "--depth=1", "--"])
            .arg(&g.url)
            .arg(commit);
        let by_hash = run(&mut c, "git fetch");
        if !has_commit(repo, commit) {
            let src = match g.reference.as_deref() {
                Some(r) if !is_commit_hash(r) => r,
                _ => "HEAD",
            };
            let mut c = git();
            git_dir(&mut c);
            c.args(["fetch", "--quiet", "--no-tags"]);
            if repo.join("shallow").exists() {
                c.arg("--unshallow");
            }
            c.arg("--")
                .arg(&g.url)
                .arg(format!("+{src}:refs/imgbuild/fetched"));
            let by_ref = run(&mut c, "git fetch");
            if !has_commit(repo, commit) {
                let why = by_ref
                    .err()
                    .or(by_hash.err())
                    .unwrap_or_else(|| format!("the commit is not in the history of {src}"));
                return Err(format!(
                    "cannot fetch commit {commit} of {}: {why}",
                    g.repo_ref()
                ));
            }
        }
    }
    // A ref keeps the commit through any gc of the cache.
    run(
        git_local().arg("--git-dir").arg(repo).args([
            "update-ref",
            &format!("refs/imgbuild/commits/{commit}"),
            commit,
        ]),
        "git update-ref",
    )
    .map(drop)
}

/// `work/.git`: a shallow repository at `commit` fetched from the cache, HEAD detached there,
/// `origin` the URL, an index read from the tree without stat data, no reflogs, hooks or
/// samples (they would depend on the host's git and the clock).
fn keep_dot_git(repo: &Path, work: &Path, url: &str, commit: &str) -> Result<(), String> {
    let in_work = |args: &[&OsStr]| {
        run(
            git_local()
                .args(["-c", "core.logAllRefUpdates=false", "-C"])
                .arg(work)
                .args(args),
            "git",
        )
    };
    let s = |x: &'static str| OsStr::new(x);
    in_work(&[s("init"), s("--quiet"), s("--template=")])?;
    let from = PathBuf::from(format!("file://{}", repo.display()));
    in_work(&[
        s("fetch"),
        s("--quiet"),
        s("--no-tags"),
        s("--depth=1"),
        s("--"),
        from.as_os_str(),
        OsStr::new(commit),
    ])?;
    in_work(&[
        s("update-ref"),
        s("--no-deref"),
        s("HEAD"),
        OsStr::new(commit),
    ])?;
    in_work(&[s("remote"), s("add"), s("origin"), OsStr::new(url)])?;
    in_work(&[s("read-tree"), OsStr::new(commit)])?;
    let dot = work.join(".git");
    for leftover in ["FETCH_HEAD", "logs", "ORIG_HEAD"] {
        let p = dot.join(leftover);
        let _ = fs::remove_file(&p).or_else(|_| fs::remove_dir_all(&p));
    }
    Ok(())
}
