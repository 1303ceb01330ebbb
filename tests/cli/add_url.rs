//! `ADD http://…`: downloads from a small HTTP server on 127.0.0.1 (no other network), with
//! `--checksum`, ETag revalidation, `--unpack`, and clear errors.

use crate::{imgbuild_env, is_root, require_tool, scratch, stderr, stdout};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// What the server answers for a path.
#[derive(Clone)]
enum Reply {
    /// 200 with this body and ETag (and a 304 to `If-None-Match: <etag>`).
    File { body: Vec<u8>, etag: String },
    /// A bare status (404, 500, …).
    Status(u16),
    /// 302 to another path.
    Redirect(String),
}

#[derive(Default)]
struct State {
    replies: HashMap<String, Reply>,
    /// Every request: (path, its If-None-Match, the status answered).
    log: Vec<(String, Option<String>, u16)>,
}

/// A one-connection-at-a-time HTTP/1.1 server on 127.0.0.1 that stops when dropped.
struct Server {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    // A client that goes away mid-request is its own problem.
                    let _ = serve(conn, &st);
                }
            }
        });
        Server {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn set(&self, path: &str, reply: Reply) {
        self.state
            .lock()
            .unwrap()
            .replies
            .insert(path.to_owned(), reply);
    }

    fn file(&self, path: &str, body: &[u8], etag: &str) {
        self.set(
            path,
            Reply::File {
                body: body.to_vec(),
                etag: format!("\"{etag}\""),
            },
        );
    }

    /// The requests for `path` so far: (If-None-Match, status).
    fn requests(&self, path: &str) -> Vec<(Option<String>, u16)> {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, inm, status)| (inm.clone(), *status))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let mut if_none_match = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("if-none-match")
        {
            if_none_match = Some(v.trim().to_owned());
        }
    }
    let reply = state.lock().unwrap().replies.get(&path).cloned();
    let (status, headers, body) = match reply {
        Some(Reply::File { body, etag }) => {
            if if_none_match.as_deref() == Some(etag.as_str()) {
                (304, vec![format!("ETag: {etag}")], Vec::new())
            } else {
                (200, vec![format!("ETag: {etag}")], body)
            }
        }
        Some(Reply::Redirect(to)) => (302, vec![format!("Location: {to}")], Vec::new()),
        Some(Reply::Status(code)) => (code, Vec::new(), b"no\n".to_vec()),
        None => (404, Vec::new(), b"not found\n".to_vec()),
    };
    state
        .lock()
        .unwrap()
        .log
        .push((path, if_none_match, status));
    let reason = match status {
        200 => "OK",
        302 => "Found",
        304 => "Not Modified",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Whatever",
    };
    let mut out = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
    for h in headers {
        out.push_str(&h);
        out.push_str("\r\n");
    }
    if status != 304 {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut conn = conn;
    conn.write_all(out.as_bytes())?;
    conn.write_all(&body)?;
    conn.flush()
}

fn sha256(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A gzip'd tarball holding `inner/a.txt` ("from the tarball\n").
fn tarball() -> Vec<u8> {
    require_tool("tar", "tar");
    let dir = scratch(&[("inner/a.txt", b"from the tarball\n")]);
    let out = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-czf", "-"])
        .arg("-C")
        .arg(dir.path())
        .arg("inner")
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `imgbuild build` of `dockerfile` with the store at `root`, the image's files written to
/// `<root>/../out`; returns the output and the metadata file's step counts (run, cached).
fn build(root: &Path, dockerfile: &str) -> (Output, Option<(u64, u64)>) {
    let ctx = scratch(&[("Dockerfile", dockerfile.as_bytes())]);
    let out_dir = root.with_extension("out");
    let _ = std::fs::remove_dir_all(&out_dir);
    let meta = ctx.path().join("meta.json");
    let out = imgbuild_env(
        ctx.path(),
        &[
            "build",
            "--progress=plain",
            "--metadata-file",
            meta.to_str().unwrap(),
            "-o",
            &format!("type=local,dest={}", out_dir.display()),
            ".",
        ],
        &[
            ("IMGBUILD_ROOT", root.to_str().unwrap()),
            // Whatever proxy the environment names, 127.0.0.1 is reached directly.
            ("NO_PROXY", "127.0.0.1,localhost"),
            ("no_proxy", "127.0.0.1,localhost"),
        ],
    );
    let counts = std::fs::read(&meta).ok().map(|b| {
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        (
            v["imgbuild.steps.executed"].as_u64().unwrap(),
            v["imgbuild.steps.cached"].as_u64().unwrap(),
        )
    });
    (out, counts)
}

fn digest_of(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
    stdout(out).lines().last().unwrap_or("").to_owned()
}

struct Root {
    _dir: tempfile::TempDir,
    store: std::path::PathBuf,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        Root { _dir: dir, store }
    }

    fn out(&self) -> std::path::PathBuf {
        self.store.with_extension("out")
    }

    fn has_blob(&self, digest: &str) -> bool {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.store.join("blobs/sha256").join(hex).is_file()
    }
}

#[test]
fn add_url_with_checksum_archives_unpack_and_revalidation() {
    let server = Server::start();
    let text = b"hello remote\n";
    let tgz = tarball();
    server.file("/f.txt", text, "f1");
    server.file("/a.tar.gz", &tgz, "a1");
    server.file("/dir/g.txt", b"g\n", "g1");
    server.set("/old-name", Reply::Redirect("/dir/g.txt".into()));
    let dockerfile = format!(
        "FROM scratch\n\
         ADD --checksum={sum} {f} /f.txt\n\
         ADD {a} /x/\n\
         ADD --unpack=true {a} /y/\n\
         ADD --chown=7:8 --chmod=644 {g} /z\n\
         ADD {old} /r/\n",
        sum = sha256(text),
        f = server.url("/f.txt"),
        a = server.url("/a.tar.gz"),
        g = server.url("/dir/g.txt"),
        old = server.url("/old-name"),
    );
    let root = Root::new();
    let (out, counts) = build(&root.store, &dockerfile);
    let first = digest_of(&out);
    assert_eq!(counts, Some((5, 0)));
    let o = root.out();

    // The checksummed file, 0600 and root-owned, with the build epoch as mtime.
    assert_eq!(std::fs::read(o.join("f.txt")).unwrap(), text);
    let m = std::fs::metadata(o.join("f.txt")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600);
    assert_eq!(m.mtime(), 0);
    // A remote archive is not unpacked: it lands under its URL name in the directory.
    assert_eq!(std::fs::read(o.join("x/a.tar.gz")).unwrap(), tgz);
    assert_eq!(
        std::fs::metadata(o.join("x/a.tar.gz")).unwrap().mode() & 0o7777,
        0o600
    );
    // ...unless --unpack=true.
    assert_eq!(
        std::fs::read_to_string(o.join("y/inner/a.txt")).unwrap(),
        "from the tarball\n"
    );
    assert!(!o.join("y/a.tar.gz").exists());
    // --chmod replaces 0600; --chown sets the owner.
    let z = std::fs::metadata(o.join("z")).unwrap();
    assert_eq!(z.mode() & 0o7777, 0o644);
    if is_root() {
        assert_eq!((z.uid(), z.gid()), (7, 8));
        assert_eq!(m.uid(), 0);
    }
    // A redirect is followed; the file is named after the URL the Dockerfile gives.
    assert_eq!(std::fs::read(o.join("r/old-name")).unwrap(), b"g\n");

    // Each URL was fetched once, though a.tar.gz is used twice.
    assert_eq!(server.requests("/f.txt"), [(None, 200)]);
    assert_eq!(server.requests("/a.tar.gz"), [(None, 200)]);

    // Again: the checksummed file needs no request at all; the others are revalidated with
    // their ETag, answered 304, and every step is a cache hit.
    let (out, counts) = build(&root.store, &dockerfile);
    assert_eq!(digest_of(&out), first);
    assert_eq!(counts, Some((0, 5)));
    assert_eq!(server.requests("/f.txt").len(), 1);
    assert_eq!(
        server.requests("/a.tar.gz"),
        [(None, 200), (Some("\"a1\"".into()), 304)]
    );
    assert_eq!(
        server.requests("/dir/g.txt").last().unwrap(),
        &(Some("\"g1\"".into()), 304)
    );
}

#[test]
fn changed_remote_content_reruns_the_step() {
    let server = Server::start();
    server.file("/v.txt", b"one\n", "v1");
    let dockerfile = format!(
        "FROM scratch\nADD {} /data/\nENV X=1\n",
        server.url("/v.txt")
    );
    let root = Root::new();
    let (out, counts) = build(&root.store, &dockerfile);
    let one = digest_of(&out);
    assert_eq!(counts, Some((1, 0)));

    // New content under a new ETag: downloaded again, the step re-runs, the image changes.
    server.file("/v.txt", b"two\n", "v2");
    let (out, counts) = build(&root.store, &dockerfile);
    let two = digest_of(&out);
    assert_ne!(one, two);
    assert_eq!(counts, Some((1, 0)));
    assert_eq!(
        std::fs::read(root.out().join("data/v.txt")).unwrap(),
        b"two\n"
    );
    assert_eq!(
        server.requests("/v.txt"),
        [(None, 200), (Some("\"v1\"".into()), 200)]
    );

    // Unchanged: 304, cached.
    let (out, counts) = build(&root.store, &dockerfile);
    assert_eq!(digest_of(&out), two);
    assert_eq!(counts, Some((0, 1)));
    assert_eq!(
        server.requests("/v.txt").last().unwrap(),
        &(Some("\"v2\"".into()), 304)
    );

    // Back to the first content (another ETag): the key is the content, so it is a hit.
    server.file("/v.txt", b"one\n", "v3");
    let (out, counts) = build(&root.store, &dockerfile);
    assert_eq!(digest_of(&out), one);
    assert_eq!(counts, Some((0, 1)));
}

#[test]
fn wrong_checksum_fails_and_stores_nothing() {
    let server = Server::start();
    let body = b"the real content\n";
    server.file("/f.txt", body, "f1");
    let wrong = sha256(b"something else");
    let url = server.url("/f.txt");
    let root = Root::new();
    let (out, _) = build(
        &root.store,
        &format!("FROM scratch\nADD --checksum={wrong} {url} /f\n"),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(err.contains(&url), "{err}");
    assert!(err.contains(&wrong), "{err}");
    assert!(err.contains(&sha256(body)), "{err}");
    assert!(!root.has_blob(&sha256(body)));
    assert!(!root.has_blob(&wrong));

    // The right checksum then builds.
    let (out, _) = build(
        &root.store,
        &format!("FROM scratch\nADD --checksum={} {url} /f\n", sha256(body)),
    );
    digest_of(&out);
    assert!(root.has_blob(&sha256(body)));
    assert_eq!(std::fs::read(root.out().join("f")).unwrap(), body);
}

#[test]
fn http_errors_name_the_url_and_status() {
    let server = Server::start();
    server.set("/broken", Reply::Status(500));
    let root = Root::new();
    for (path, status) in [
        ("/missing.txt", "HTTP 404 Not Found"),
        ("/broken", "HTTP 500"),
    ] {
        let url = server.url(path);
        let (out, _) = build(&root.store, &format!("FROM scratch\nADD {url} /x\n"));
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(&format!("GET {url}: {status}")), "{err}");
    }

    // Nothing listening: the connection error names the URL.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/f");
    let (out, _) = build(&root.store, &format!("FROM scratch\nADD {url} /x\n"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("GET {url}")),
        "{}",
        stderr(&out)
    );

    // COPY refuses URLs, like BuildKit.
    let (out, _) = build(
        &root.store,
        &format!("FROM scratch\nCOPY {} /x\n", server.url("/missing.txt")),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("source can't be a URL for COPY"),
        "{}",
        stderr(&out)
    );
}
