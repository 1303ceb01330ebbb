//! Integration tests of the `imgbuild` binary. Each test works in its own temporary directory.

mod add_url;
mod bases;
mod build;
mod buildah_parity;
mod cache_export;
mod check;
mod examples;
mod hostile;
mod lock;
mod mounts;
mod parallel;
mod parse;
mod registry;
mod robust;
mod rootless;
mod run;
mod unikernel;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The shared reference-data directory: `$IMGBUILD_SHARED`, else `<repo>/../shared`.
pub fn shared_dir() -> PathBuf {
    let dir = std::env::var_os("IMGBUILD_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    assert!(
        dir.is_dir(),
        "reference data not found at {} (set IMGBUILD_SHARED)",
        dir.display()
    );
    dir
}

/// Runs the binary with `args` in `dir`.
pub fn imgbuild(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run imgbuild")
}

/// Runs the binary with extra environment variables.
pub fn imgbuild_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imgbuild"));
    c.args(args).current_dir(dir).env("NO_COLOR", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run imgbuild")
}

/// Fails (never skips) when a tool the test needs is missing, naming the Debian package.
pub fn require_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} not found: install the Debian package {package}"
    );
}

pub fn is_root() -> bool {
    rustix_uid() == 0
}

fn rustix_uid() -> u32 {
    // /proc/self/status "Uid:" line, so the tests need no extra crate.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|u| u.parse().ok()))
        })
        .unwrap_or(u32::MAX)
}

/// A scratch directory populated with `files` (path, bytes).
pub fn scratch(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, data) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    dir
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A tiny HTTP server on 127.0.0.1 answering every request with `hello` (for network tests of
/// RUN); returns its port. It lives as long as the test process.
pub fn serve_hello() -> u16 {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(&s);
            // Read the request head before answering, as a real server does.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let mut s = &s;
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        }
    });
    port
}
