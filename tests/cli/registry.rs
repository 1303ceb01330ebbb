//! Registries: Debian's docker-registry started on 127.0.0.1 (one open, one with htpasswd
//! auth), imgbuild pushing and pulling, skopeo reading back and writing, and a small
//! fault-injecting proxy in front of the real registry.

use crate::{imgbuild_env, require_tool, scratch, stderr, stdout};
use sha2::Digest as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A docker-registry process on 127.0.0.1, killed on drop.
pub(crate) struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub(crate) fn start(user: Option<(&str, &str)>) -> Registry {
        require_tool("/usr/bin/docker-registry", "docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((u, p)) = user {
            require_tool("htpasswd", "apache2-utils");
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .expect("run htpasswd");
            assert!(out.status.success(), "htpasswd failed");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: imgbuild-test\n    path: {}\n",
                file.display()
            ));
        }
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let r = Registry {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = http_status(port, "/v2/")
                && (status == 200 || status == 401)
            {
                break;
            }
            assert!(Instant::now() < deadline, "docker-registry did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    pub(crate) fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The status of a plain GET, or None when nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A test environment: a store root and an auth file of its own (so the host's credentials
/// are never read or written).
struct Env {
    root: tempfile::TempDir,
    auth: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            root: tempfile::tempdir().unwrap(),
            auth: tempfile::tempdir().unwrap(),
        }
    }

    fn auth_file(&self) -> PathBuf {
        self.auth.path().join("auth.json")
    }

    fn run(&self, dir: &Path, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let auth = self.auth_file();
        let mut env = vec![
            ("IMGBUILD_ROOT", self.root.path().to_str().unwrap()),
            ("REGISTRY_AUTH_FILE", auth.to_str().unwrap()),
        ];
        env.extend_from_slice(extra);
        imgbuild_env(dir, args, &env)
    }

    fn build(&self, ctx: &Path, args: &[&str]) -> Output {
        let mut all = vec!["build", "--progress=plain"];
        all.extend_from_slice(args);
        all.push(".");
        self.run(ctx, &all, &[])
    }

    fn blobs(&self) -> PathBuf {
        self.root.path().join("blobs/sha256")
    }

    /// Every stored blob hashes to its name, and no temp file is left in the store.
    fn assert_store_clean(&self) {
        if let Ok(dir) = std::fs::read_dir(self.blobs()) {
            for e in dir {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                let bytes = std::fs::read(e.path()).unwrap();
                assert_eq!(
                    hex(&sha2::Sha256::digest(&bytes)),
                    name,
                    "blob {name} in the store does not match its name"
                );
            }
        }
        let tmp = self.root.path().join("tmp");
        if let Ok(dir) = std::fs::read_dir(&tmp) {
            let left: Vec<_> = dir
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".lock"))
                .collect();
            assert!(left.is_empty(), "temp leftovers in the store: {left:?}");
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

fn digest_line(out: &Output) -> String {
    ok(out, "command");
    let s = stdout(out);
    let last = s.lines().last().unwrap_or("").to_owned();
    assert!(last.starts_with("sha256:"), "no digest on stdout:\n{s}");
    last
}

fn hello_context() -> tempfile::TempDir {
    let dir = scratch(&[
        (
            "Dockerfile",
            b"FROM scratch\nCOPY busybox /bin/busybox\nCOPY hello.txt /hello.txt\nENV PATH=/bin\n\
          CMD [\"/bin/busybox\", \"cat\", \"/hello.txt\"]\n",
        ),
        ("hello.txt", b"hello from a registry\n"),
    ]);
    let bb = std::fs::read("/bin/busybox")
        .expect("/bin/busybox not found: install the Debian package busybox-static");
    std::fs::write(dir.path().join("busybox"), bb).unwrap();
    dir
}

fn child_context(from: &str) -> tempfile::TempDir {
    let df = format!("FROM {from}\nCOPY child.txt /child.txt\n");
    scratch(&[
        ("Dockerfile", df.as_bytes()),
        ("child.txt", b"child layer\n"),
    ])
}

fn skopeo_digest(reference: &str, extra: &[&str]) -> String {
    require_tool("skopeo", "skopeo");
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .args(extra)
        .arg(format!("docker://{reference}"))
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        stderr(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Digest"].as_str().unwrap().to_owned()
}

#[test]
fn push_is_read_by_skopeo_and_a_second_push_uploads_nothing() {
    let reg = Registry::start(None);
    let env = Env::new();
    let ctx = hello_context();
    let name = format!("{}/hello:1", reg.host());
    let built = digest_line(&env.build(ctx.path(), &["-t", &name]));

    let out = env.run(ctx.path(), &["push", &name], &[]);
    assert_eq!(digest_line(&out), built);
    assert!(
        stderr(&out).contains("3 blobs uploaded"),
        "{}",
        stderr(&out)
    );
    assert_eq!(skopeo_digest(&name, &[]), built);

    let again = env.run(ctx.path(), &["push", &name], &[]);
    ok(&again, "second push");
    let err = stderr(&again);
    assert!(
        err.contains("0 blobs uploaded (0 bytes), 3 skipped"),
        "{err}"
    );

    // Another repository of the same registry: blobs are mounted from the first, not sent.
    let other = format!("{}/copy:2", reg.host());
    let out = env.run(ctx.path(), &["push", &name, &other], &[]);
    ok(&out, "push to another repository");
    assert!(
        stderr(&out).contains("0 blobs uploaded"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("3 mounted"), "{}", stderr(&out));
    assert_eq!(skopeo_digest(&other, &[]), built);

    // `-o type=registry` and `--push` from a build.
    let third = format!("{}/built:3", reg.host());
    let out = env.build(ctx.path(), &["-o", &format!("type=registry,name={third}")]);
    assert_eq!(digest_line(&out), built);
    assert_eq!(skopeo_digest(&third, &[]), built);
    let fourth = format!("{}/built:4", reg.host());
    let out = env.build(ctx.path(), &["-t", &fourth, "--push"]);
    assert_eq!(digest_line(&out), built);
    assert_eq!(skopeo_digest(&fourth, &[]), built);
}

#[test]
fn an_image_copied_in_by_skopeo_is_a_base() {
    require_tool("skopeo", "skopeo");
    let reg = Registry::start(None);
    let maker = Env::new();
    let ctx = hello_context();
    let layout = tempfile::tempdir().unwrap();
    let dest = layout.path().join("oci");
    let base = digest_line(&maker.build(
        ctx.path(),
        &[
            "-t",
            "base:v1",
            "-o",
            &format!(
                "type=oci,dest={},tar=false,compression=gzip",
                dest.display()
            ),
        ],
    ));
    let name = format!("{}/base:v1", reg.host());
    let out = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", dest.display()))
        .arg(format!("docker://{name}"))
        .output()
        .expect("run skopeo");
    assert!(out.status.success(), "skopeo copy: {}", stderr(&out));
    let remote = skopeo_digest(&name, &[]);
    assert_ne!(
        remote, base,
        "the gzip copy is a different manifest than the zstd build"
    );

    // A fresh store pulls it for FROM, and builds on it.
    let env = Env::new();
    let child = child_context(&name);
    let out = env.build(child.path(), &["-t", "child:1"]);
    let first = digest_line(&out);
    assert!(stderr(&out).contains("pulled"), "{}", stderr(&out));
    env.assert_store_clean();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.blobs().join(remote.trim_start_matches("sha256:"))).unwrap(),
    )
    .unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for l in layers {
        let d = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        assert!(env.blobs().join(d).is_file(), "layer {d} was not stored");
    }
    // The pulled image is tagged under its full name.
    let images = env.run(child.path(), &["images"], &[]);
    assert!(stdout(&images).contains(&name), "{}", stdout(&images));

    // Again: the tag is resolved (one manifest request), nothing is downloaded.
    let out = env.build(child.path(), &[]);
    assert_eq!(digest_line(&out), first);
    assert!(!stderr(&out).contains("pulled"), "{}", stderr(&out));

    // With the registry gone, --pull=missing and --pull=never use the local copy; a digest
    // reference the store has needs no network either; always fails clearly.
    drop(reg);
    assert_eq!(
        digest_line(&env.build(child.path(), &["--pull=never"])),
        first
    );
    assert_eq!(
        digest_line(&env.build(child.path(), &["--pull=missing"])),
        first
    );
    let by_digest = child_context(&format!("{name}@{remote}"));
    digest_line(&env.build(by_digest.path(), &["--pull=always"]));
    let out = env.build(child.path(), &["--pull=always"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot reach"), "{}", stderr(&out));
    // Never pulls nothing it does not have.
    let fresh = Env::new();
    let out = fresh.build(child.path(), &["--pull=never"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--pull=never"), "{}", stderr(&out));
}

#[test]
fn the_htpasswd_registry_wants_a_login() {
    let reg = Registry::start(Some(("tester", "s3cret")));
    let env = Env::new();
    let ctx = hello_context();
    let name = format!("{}/private:1", reg.host());
    let built = digest_line(&env.build(ctx.path(), &["-t", &name]));

    let out = env.run(ctx.path(), &["push", &name], &[]);
    assert!(!out.status.success());
    let hint = format!("run `imgbuild login {}`", reg.host());
    assert!(stderr(&out).contains(&hint), "{}", stderr(&out));

    // Wrong password: refused, nothing stored.
    let out = login(&env, &reg.host(), "tester", "wrong");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refused the credentials"),
        "{}",
        stderr(&out)
    );
    assert!(!env.auth_file().exists());

    ok(&login(&env, &reg.host(), "tester", "s3cret"), "login");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(env.auth_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let out = env.run(ctx.path(), &["push", &name], &[]);
    assert_eq!(digest_line(&out), built);
    let creds = "--creds=tester:s3cret";
    assert_eq!(skopeo_digest(&name, &[creds]), built);

    // Pull with the stored credentials into a fresh store (same auth file).
    let puller = Env {
        root: tempfile::tempdir().unwrap(),
        auth: tempfile::tempdir().unwrap(),
    };
    std::fs::copy(env.auth_file(), puller.auth_file()).unwrap();
    let child = child_context(&name);
    digest_line(&puller.build(child.path(), &[]));

    // Logged out: refused again, with the hint.
    ok(
        &puller.run(child.path(), &["logout", &reg.host()], &[]),
        "logout",
    );
    let fresh = Env {
        root: tempfile::tempdir().unwrap(),
        auth: puller.auth,
    };
    let out = fresh.build(child.path(), &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&hint), "{}", stderr(&out));
    let out = fresh.run(child.path(), &["logout", &reg.host()], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not logged in"), "{}", stderr(&out));
}

fn login(env: &Env, host: &str, user: &str, password: &str) -> Output {
    let auth = env.auth_file();
    let mut child = Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .args(["login", "--username", user, "--password-stdin", host])
        .env("REGISTRY_AUTH_FILE", &auth)
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run imgbuild login");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// What the proxy does to the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// Flip a byte of every blob body.
    CorruptBlob,
    /// Send half of every blob body, then close.
    TruncateBlob,
    /// Rewrite a manifest's mediaType (and drop its digest header).
    UnknownManifestType,
    /// Answer 500 to the second chunk of an upload.
    FailUpload,
}

/// A one-request-per-connection HTTP proxy on 127.0.0.1 in front of `upstream`.
struct Proxy {
    port: u16,
    fault: Arc<Mutex<Fault>>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fault = Arc::new(Mutex::new(Fault::None));
        let patches = Arc::new(Mutex::new(0u32));
        let f = fault.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (f, patches) = (f.clone(), patches.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream, &f, &patches);
                });
            }
        });
        Proxy { port, fault }
    }

    fn set(&self, f: Fault) {
        *self.fault.lock().unwrap() = f;
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

struct Message {
    head: Vec<String>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.iter().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn set_header(&mut self, name: &str, value: Option<&str>) {
        self.head.retain(|l| {
            !l.split_once(':')
                .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        });
        if let Some(v) = value {
            self.head.push(format!("{name}: {v}"));
        }
    }

    fn write(&self, w: &mut impl Write, body: &[u8]) -> std::io::Result<()> {
        let mut out = self.head.join("\r\n").into_bytes();
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
        w.write_all(&out)?;
        w.flush()
    }
}

/// Reads a message: head lines, then a Content-Length body (or a chunked one, or none for
/// HEAD answers and 1xx/204/304).
fn read_message(r: &mut BufReader<TcpStream>, no_body: bool) -> std::io::Result<Message> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let mut m = Message {
        head,
        body: Vec::new(),
    };
    if no_body {
        return Ok(m);
    }
    if m.header("Transfer-Encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            m.body.extend_from_slice(&chunk[..n]);
        }
        m.set_header("Transfer-Encoding", None);
        let len = m.body.len().to_string();
        m.set_header("Content-Length", Some(&len));
    } else if let Some(n) = m
        .header("Content-Length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        m.body = vec![0; n];
        r.read_exact(&mut m.body)?;
    }
    Ok(m)
}

fn serve(
    client: TcpStream,
    upstream: u16,
    fault: &Mutex<Fault>,
    patches: &Mutex<u32>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    let mut req = read_message(&mut reader, false)?;
    let line = req.head[0].clone();
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let f = *fault.lock().unwrap();
    if f == Fault::FailUpload && method == "PATCH" {
        let mut n = patches.lock().unwrap();
        *n += 1;
        if *n == 2 {
            let body = b"{\"errors\":[{\"code\":\"UNKNOWN\",\"message\":\"injected failure\"}]}";
            let head = format!(
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            client.write_all(head.as_bytes())?;
            client.write_all(body)?;
            return Ok(());
        }
    }
    req.set_header("Connection", Some("close"));
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    let body = std::mem::take(&mut req.body);
    req.write(&mut up, &body)?;
    let mut up_reader = BufReader::new(up);
    let mut res = read_message(&mut up_reader, method == "HEAD")?;
    let status: u16 = res.head[0]
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    res.set_header("Connection", Some("close"));
    let mut body = std::mem::take(&mut res.body);
    let is_blob = method == "GET" && path.contains("/blobs/sha256:") && status == 200;
    let is_manifest = method == "GET" && path.contains("/manifests/") && status == 200;
    match f {
        Fault::CorruptBlob if is_blob && !body.is_empty() => {
            let i = body.len() / 2;
            body[i] ^= 0x55;
        }
        Fault::TruncateBlob if is_blob => {
            // The original Content-Length, half the bytes, then the connection closes.
            res.write(&mut client, &body[..body.len() / 2])?;
            return Ok(());
        }
        Fault::UnknownManifestType if is_manifest => {
            let text = String::from_utf8_lossy(&body).into_owned();
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            v["mediaType"] = "application/vnd.example.unknown+json".into();
            body = serde_json::to_vec(&v).unwrap();
            res.set_header("Docker-Content-Digest", None);
            res.set_header("Content-Type", Some("application/vnd.example.unknown+json"));
            let len = body.len().to_string();
            res.set_header("Content-Length", Some(&len));
        }
        _ => {}
    }
    res.write(&mut client, &body)
}

#[test]
fn faults_are_clear_errors_and_leave_the_store_clean() {
    let reg = Registry::start(None);
    let proxy = Proxy::start(reg.port);
    let maker = Env::new();
    let ctx = hello_context();
    let direct = format!("{}/faulty:1", reg.host());
    let built = digest_line(&maker.build(ctx.path(), &["-t", &direct]));
    ok(&maker.run(ctx.path(), &["push", &direct], &[]), "push");

    let via = format!("{}/faulty:1", proxy.host());
    let child = child_context(&via);
    let env = Env::new();
    for (fault, want) in [
        (Fault::CorruptBlob, "does not match its digest"),
        (Fault::TruncateBlob, "truncated"),
        (
            Fault::UnknownManifestType,
            "application/vnd.example.unknown+json",
        ),
    ] {
        proxy.set(fault);
        let out = env.build(child.path(), &[]);
        assert!(!out.status.success(), "{fault:?}: the build succeeded");
        let err = stderr(&out);
        assert!(err.contains(want), "{fault:?}: {err}");
        assert!(
            err.contains(&proxy.host()),
            "{fault:?}: the error names no registry: {err}"
        );
        env.assert_store_clean();
        // The image's layers never made it in under a wrong name.
        let images = env.run(child.path(), &["images"], &[]);
        assert!(!stdout(&images).contains("faulty"), "{fault:?}");
    }
    proxy.set(Fault::None);
    digest_line(&env.build(child.path(), &[]));
    env.assert_store_clean();

    // A 500 in the middle of a chunked upload: a clear error, then a clean retry.
    let target = format!("{}/uploaded:1", proxy.host());
    let chunked = [("IMGBUILD_REGISTRY_CHUNK_SIZE", "65536")];
    proxy.set(Fault::FailUpload);
    let out = maker.run(ctx.path(), &["push", &direct, &target], &chunked);
    assert!(!out.status.success(), "the push succeeded");
    assert!(stderr(&out).contains("500"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("injected failure"),
        "{}",
        stderr(&out)
    );
    proxy.set(Fault::None);
    let out = maker.run(ctx.path(), &["push", &direct, &target], &chunked);
    assert_eq!(digest_line(&out), built);
    assert_eq!(skopeo_digest(&target, &[]), built);
}
