//! Rootless builds, and the no-overlayfs fallback.
//!
//! CI runs the tests as root, so these drop privileges themselves: they make two system users,
//! `imgbuild-rl` with ranges in /etc/subuid and /etc/subgid (the "ranges" mapping, through
//! newuidmap/newgidmap) and `imgbuild-rl1` with none (the "single" mapping), and run the debug
//! binary as them with `setpriv`. Every build gets a fresh temporary directory handed to the
//! user that runs it: the context, HOME, the store (`IMGBUILD_ROOT`) and the outputs.
//!
//! Layers are read from an OCI layout written with `compression=uncompressed`, with a small tar
//! reader below, so owners are checked as the image states them, not as a host tool maps them.

use crate::{require_tool, stderr, stdout};
use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The user with subordinate ranges.
const RANGED: &str = "imgbuild-rl";
/// The user without ranges (single-uid mapping).
const SINGLE: &str = "imgbuild-rl1";
/// The range given to [`RANGED`] when it has none.
const SUBID_LINE: &str = "imgbuild-rl:200000:65536";

struct Users {
    ranged_uid: u32,
    single_uid: u32,
    /// `(start, count)` of RANGED's /etc/subuid range.
    subuid: (u32, u32),
}

/// Makes sure both users and RANGED's ranges exist (once per test process; tolerant of another
/// process doing the same at the same time).
fn users() -> &'static Users {
    static USERS: OnceLock<Users> = OnceLock::new();
    USERS.get_or_init(|| {
        assert!(
            crate::is_root(),
            "the rootless tests create users and drop privileges: run them as root (CI does)"
        );
        require_tool("newuidmap", "uidmap");
        require_tool("newgidmap", "uidmap");
        require_tool("setpriv", "util-linux");
        require_tool("useradd", "passwd");
        for helper in ["/usr/bin/newuidmap", "/usr/bin/newgidmap"] {
            let mode = std::fs::metadata(helper)
                .unwrap_or_else(|e| panic!("{helper}: {e} (install the Debian package uidmap)"))
                .mode();
            assert!(
                mode & 0o4000 != 0,
                "{helper} is not setuid root (reinstall the Debian package uidmap)"
            );
        }
        let ranged_uid = ensure_user(RANGED);
        let single_uid = ensure_user(SINGLE);
        let subuid = ensure_range("/etc/subuid", ranged_uid, single_uid);
        let subgid = ensure_range("/etc/subgid", ranged_uid, single_uid);
        // 65534 (nobody) and 1000 must be inside the range: 0 is the user, 1.. the range.
        for (file, (_, count)) in [("/etc/subuid", subuid), ("/etc/subgid", subgid)] {
            assert!(
                count >= 65535,
                "{file}: the range of {RANGED} has {count} ids; the tests need at least 65535"
            );
        }
        exe();
        Users {
            ranged_uid,
            single_uid,
            subuid,
        }
    })
}

fn uid_of(name: &str) -> Option<u32> {
    let out = Command::new("id").args(["-u", name]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// A system user (and its group) without a home directory; idempotent.
fn ensure_user(name: &str) -> u32 {
    if let Some(uid) = uid_of(name) {
        return uid;
    }
    let out = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .output()
        .expect("run useradd (Debian package passwd)");
    // 9: the name exists (another test process made it in the meantime).
    assert!(
        out.status.success() || out.status.code() == Some(9),
        "useradd {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    uid_of(name).unwrap_or_else(|| panic!("user {name} does not exist after useradd"))
}

/// Gives RANGED a range in `file` unless it has one (under a lock on the file), makes sure
/// SINGLE has none, and returns RANGED's `(start, count)`.
fn ensure_range(file: &str, ranged_uid: u32, single_uid: u32) -> (u32, u32) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(file)
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    f.lock().unwrap_or_else(|e| panic!("locking {file}: {e}"));
    let mut text = String::new();
    f.rewind().unwrap();
    f.read_to_string(&mut text).unwrap();
    let owner_is = |line: &str, name: &str, uid: u32| {
        let who = line.trim().split(':').next().unwrap_or("");
        who == name || who == uid.to_string()
    };
    assert!(
        !text.lines().any(|l| owner_is(l, SINGLE, single_uid)),
        "{file} gives {SINGLE} a range; the single-mapping tests need a user without one: remove its line"
    );
    if !text.lines().any(|l| owner_is(l, RANGED, ranged_uid)) {
        let sep = if text.is_empty() || text.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        f.write_all(format!("{sep}{SUBID_LINE}\n").as_bytes())
            .unwrap_or_else(|e| panic!("appending to {file}: {e}"));
        text.push_str(&format!("{sep}{SUBID_LINE}\n"));
    }
    let range = text
        .lines()
        .find(|l| owner_is(l, RANGED, ranged_uid))
        .and_then(|l| {
            let mut p = l.trim().split(':').skip(1);
            Some((p.next()?.parse().ok()?, p.next()?.parse().ok()?))
        })
        .unwrap_or_else(|| panic!("{file}: malformed line for {RANGED}"));
    f.unlock().unwrap();
    range
}

/// The binary the users run: the test binary when every directory above it is searchable by
/// others; else (a checkout under a private home, say) a copy in a 0755 directory of the temp
/// dir, which runs the same code (the sandbox re-executes /proc/self/exe).
fn exe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let built = Path::new(env!("CARGO_BIN_EXE_imgbuild"));
        let reachable = built.ancestors().skip(1).all(|p| {
            p.as_os_str().is_empty()
                || std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
        }) && std::fs::metadata(built)
            .is_ok_and(|m| m.permissions().mode() & 0o001 != 0);
        if reachable {
            return built.to_owned();
        }
        let dir = std::env::temp_dir().join("imgbuild-rootless-tests");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tmp = dir.join(format!(".imgbuild.{}", std::process::id()));
        std::fs::copy(built, &tmp)
            .unwrap_or_else(|e| panic!("copying {} to {}: {e}", built.display(), tmp.display()));
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dest = dir.join("imgbuild");
        std::fs::rename(&tmp, &dest).unwrap();
        eprintln!(
            "{} is not reachable by other users: the rootless tests run a copy, {}",
            built.display(),
            dest.display()
        );
        dest
    })
}

/// One build's directory: `ctx/` (Dockerfile + files), `home/`, `root/` (the store), `out/`.
/// Owned by the user that builds in it.
struct Space {
    dir: tempfile::TempDir,
}

impl Space {
    fn new(dockerfile: &str, files: &[(&str, &[u8])], user: Option<&str>) -> Space {
        assert!(
            Path::new("/bin/busybox").exists(),
            "/bin/busybox not found: install the Debian package busybox-static"
        );
        let dir = tempfile::tempdir().unwrap();
        for sub in ["ctx", "home", "root", "out"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("ctx/Dockerfile"), dockerfile).unwrap();
        std::fs::copy("/bin/busybox", dir.path().join("ctx/busybox")).unwrap();
        for (name, data) in files {
            std::fs::write(dir.path().join("ctx").join(name), data).unwrap();
        }
        if let Some(user) = user {
            let out = Command::new("chown")
                .args([
                    "-R",
                    &format!("{user}:{user}"),
                    dir.path().to_str().unwrap(),
                ])
                .output()
                .unwrap();
            assert!(out.status.success(), "chown: {}", stderr(&out));
        }
        Space { dir }
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }
}

/// A Dockerfile whose target stage starts from a busybox stage built by imgbuild itself.
fn on_busybox(rest: &str) -> String {
    format!(
        "FROM scratch AS busybox\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nFROM busybox\n{rest}"
    )
}

/// Runs the binary in `space` (cwd: the context), as `user` through setpriv or as root, with a
/// clean environment plus `env`.
fn imgbuild_as(user: Option<&str>, space: &Space, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = match user {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={u}"),
                &format!("--regid={u}"),
                "--init-groups",
                "--",
            ]);
            c.arg(exe());
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_imgbuild")),
    };
    c.args(args)
        .current_dir(space.path("ctx"))
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", space.path("home"))
        .env("NO_COLOR", "1")
        .env("IMGBUILD_ROOT", space.path("root"));
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run imgbuild")
}

struct Built {
    space: Space,
    out: Output,
    user: Option<&'static str>,
}

impl Built {
    fn ok(self) -> Built {
        assert!(
            self.out.status.success(),
            "the build as {} failed ({}):\n{}\n{}",
            self.user.unwrap_or("root"),
            self.out.status,
            stdout(&self.out),
            stderr(&self.out)
        );
        self
    }

    /// The manifest digest the build printed last.
    fn digest(&self) -> String {
        let s = stdout(&self.out);
        let last = s.lines().last().unwrap_or("").to_owned();
        assert!(
            last.starts_with("sha256:"),
            "no digest on stdout:\n{s}\n{}",
            stderr(&self.out)
        );
        last
    }

    fn image(&self) -> Image {
        read_layout(&self.space.path("out/layout"))
    }

    fn fs(&self) -> PathBuf {
        self.space.path("out/fs")
    }
}

/// Builds `dockerfile` (with the busybox context) as `user` (None: root), writing an OCI layout
/// with uncompressed layers to `out/layout`, and with `local` the root filesystem to `out/fs`.
fn build(
    user: Option<&'static str>,
    dockerfile: &str,
    files: &[(&str, &[u8])],
    env: &[(&str, &str)],
    extra_args: &[&str],
    local: bool,
) -> Built {
    let space = Space::new(dockerfile, files, user);
    let layout = format!(
        "type=oci,dest={},tar=false,compression=uncompressed",
        space.path("out/layout").display()
    );
    let fs = format!("type=local,dest={}", space.path("out/fs").display());
    let mut args = vec!["build", "--progress=plain", "-o", &layout];
    if local {
        args.extend(["-o", &fs]);
    }
    args.extend(extra_args);
    args.push(".");
    let out = imgbuild_as(user, &space, &args, env);
    Built { space, out, user }
}

// ---------------------------------------------------------------------------------------------
// Reading an OCI layout and its (uncompressed) layers.

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    /// Absolute, without a trailing slash ("/" for the root).
    path: String,
    /// The tar type flag: b'0' file, b'1' hard link, b'2' symlink, b'5' directory, …
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: String,
    link: String,
    /// PAX records that are not applied to the fields above (xattrs, …).
    pax: BTreeMap<String, String>,
    data: Vec<u8>,
}

impl Entry {
    fn owner(&self) -> (u64, u64) {
        (self.uid, self.gid)
    }

    fn describe(&self) -> String {
        let kind = match self.kind {
            b'0' | 0 => "file".to_owned(),
            b'1' => format!("hardlink->{}", self.link),
            b'2' => format!("symlink->{}", self.link),
            b'3' => "char".to_owned(),
            b'5' => "dir".to_owned(),
            k => format!("type{}", k as char),
        };
        let mut s = format!(
            "{} {kind} {:o} {}:{} mtime={}",
            self.path, self.mode, self.uid, self.gid, self.mtime
        );
        if self.kind == b'0' || self.kind == 0 {
            s.push_str(&format!(
                " size={} data={:?}",
                self.data.len(),
                String::from_utf8_lossy(&self.data[..self.data.len().min(40)])
            ));
        }
        if !self.pax.is_empty() {
            s.push_str(&format!(" pax={:?}", self.pax));
        }
        s
    }
}

struct Layer {
    digest: String,
    entries: Vec<Entry>,
}

impl Layer {
    fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.path == path)
    }

    fn listing(&self) -> String {
        self.entries
            .iter()
            .map(|e| format!("  {}\n", e.describe()))
            .collect()
    }
}

struct Image {
    manifest_digest: String,
    layers: Vec<Layer>,
}

impl Image {
    fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.digest.clone()).collect()
    }

    fn listing(&self) -> String {
        self.layers
            .iter()
            .enumerate()
            .map(|(i, l)| format!("layer {i} {}:\n{}", l.digest, l.listing()))
            .collect()
    }
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
    std::fs::read(layout.join("blobs/sha256").join(hex))
        .unwrap_or_else(|e| panic!("blob {digest} in {}: {e}", layout.display()))
}

fn read_layout(layout: &Path) -> Image {
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.join("index.json"))
            .unwrap_or_else(|e| panic!("{}/index.json: {e}", layout.display())),
    )
    .unwrap();
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .expect("index.json names a manifest")
        .to_owned();
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(layout, &manifest_digest)).unwrap();
    let layers = manifest["layers"]
        .as_array()
        .expect("the manifest has layers")
        .iter()
        .map(|l| {
            let digest = l["digest"].as_str().unwrap().to_owned();
            assert_eq!(
                l["mediaType"].as_str(),
                Some("application/vnd.oci.image.layer.v1.tar"),
                "compression=uncompressed must give plain tar layers"
            );
            let entries = parse_tar(&blob(layout, &digest));
            Layer { digest, entries }
        })
        .collect();
    Image {
        manifest_digest,
        layers,
    }
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn number(b: &[u8]) -> u64 {
    if b[0] & 0x80 != 0 {
        // base-256
        return b[1..].iter().fold(0u64, |n, &c| (n << 8) | u64::from(c));
    }
    let s = cstr(b);
    let s = s.trim_matches(|c: char| c == ' ' || c == '\0');
    if s.is_empty() {
        0
    } else {
        u64::from_str_radix(s, 8).unwrap_or_else(|e| panic!("bad octal {s:?}: {e}"))
    }
}

fn pax_records(data: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let sp = rest
            .iter()
            .position(|&c| c == b' ')
            .expect("pax record length");
        let len: usize = cstr(&rest[..sp]).parse().expect("pax record length");
        let record = &rest[sp + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        let eq = record
            .iter()
            .position(|&c| c == b'=')
            .expect("pax key=value");
        out.push((
            String::from_utf8_lossy(&record[..eq]).into_owned(),
            String::from_utf8_lossy(&record[eq + 1..]).into_owned(),
        ));
        rest = &rest[len..];
    }
    out
}

fn normalize(path: &str) -> String {
    let p = path.trim_start_matches("./").trim_start_matches('/');
    let p = p.trim_end_matches('/');
    if p.is_empty() || p == "." {
        "/".to_owned()
    } else {
        format!("/{p}")
    }
}

/// A minimal reader for the tars imgbuild writes (ustar, PAX and GNU long names).
fn parse_tar(b: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut off = 0;
    let mut pax: BTreeMap<String, String> = BTreeMap::new();
    let mut long_name: Option<String> = None;
    let mut long_link: Option<String> = None;
    while off + 512 <= b.len() {
        let h = &b[off..off + 512];
        if h.iter().all(|&c| c == 0) {
            break;
        }
        let kind = h[156];
        let mut size = number(&h[124..136]) as usize;
        if !matches!(kind, b'x' | b'g' | b'L' | b'K')
            && let Some(s) = pax.get("size")
        {
            size = s.parse().unwrap();
        }
        let data = &b[off + 512..off + 512 + size];
        off += 512 + size.div_ceil(512) * 512;
        match kind {
            b'x' => {
                pax.extend(pax_records(data));
                continue;
            }
            b'g' => continue,
            b'L' => {
                long_name = Some(cstr(data));
                continue;
            }
            b'K' => {
                long_link = Some(cstr(data));
                continue;
            }
            _ => {}
        }
        let mut name = cstr(&h[0..100]);
        if &h[257..262] == b"ustar" {
            let prefix = cstr(&h[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        let mut e = Entry {
            path: long_name.take().unwrap_or(name),
            kind,
            mode: number(&h[100..108]) as u32,
            uid: number(&h[108..116]),
            gid: number(&h[116..124]),
            mtime: number(&h[136..148]).to_string(),
            link: long_link.take().unwrap_or_else(|| cstr(&h[157..257])),
            pax: BTreeMap::new(),
            data: if kind == b'0' || kind == 0 {
                data.to_vec()
            } else {
                Vec::new()
            },
        };
        for (k, v) in std::mem::take(&mut pax) {
            match k.as_str() {
                "path" => e.path = v,
                "linkpath" => e.link = v,
                "uid" => e.uid = v.parse().unwrap(),
                "gid" => e.gid = v.parse().unwrap(),
                "mtime" => e.mtime = v,
                "size" => {}
                _ => {
                    e.pax.insert(k, v);
                }
            }
        }
        e.path = normalize(&e.path);
        if e.kind == b'1' {
            e.link = normalize(&e.link);
        }
        out.push(e);
    }
    out
}

/// No layer may carry the bookkeeping of a rootless build or of overlayfs.
fn assert_no_bookkeeping(image: &Image) {
    for l in &image.layers {
        for e in &l.entries {
            for k in e.pax.keys() {
                assert!(
                    !k.contains("imgbuild") && !k.contains("overlay"),
                    "bookkeeping xattr {k} leaked into the layer:\n{}",
                    e.describe()
                );
            }
        }
    }
}

/// What the mapping of the user namespace looked like, as `cat /proc/self/uid_map` in a RUN
/// printed it: lines of three numbers.
fn id_map(text: &str) -> Vec<Vec<u64>> {
    text.lines()
        .map(|l| l.split_whitespace().map(|w| w.parse().unwrap()).collect())
        .filter(|v: &Vec<u64>| !v.is_empty())
        .collect()
}

fn layer_file<'a>(layer: &'a Layer, path: &str, listing: &dyn Fn() -> String) -> &'a Entry {
    layer
        .get(path)
        .unwrap_or_else(|| panic!("{path} is not in the layer:\n{}", listing()))
}

// ---------------------------------------------------------------------------------------------
// 1. Ranges mapping.

const PASSWD: &str = "RUN mkdir -p /tmp /etc && chmod 1777 /tmp && printf 'root:x:0:0::/root:/bin/sh\\nnobody:x:65534:65534::/nonexistent:/bin/sh\\n' > /etc/passwd && printf 'root:x:0:\\nnogroup:x:65534:\\n' > /etc/group\n";

#[test]
fn rootless_with_ranges_keeps_the_owners_the_dockerfile_gave() {
    let users = users();
    let df = on_busybox(&format!(
        "{PASSWD}RUN echo hi > /rootfile && mkdir /rootdir && touch /owned && chown 1000:1000 /owned && cat /proc/self/uid_map > /uid_map && id -u > /root-uid\nUSER nobody\nRUN touch /tmp/x; id -u > /tmp/uid\n"
    ));
    let built = build(Some(RANGED), &df, &[], &[], &[], false).ok();
    let image = built.image();
    let listing = || image.listing();
    // The build really ran in a user namespace with the ranges: 0 → the user, 1.. → the range.
    let top = image.layers.len() - 1;
    let run_root = &image.layers[top - 1];
    let map = id_map(&String::from_utf8_lossy(
        &layer_file(run_root, "/uid_map", &listing).data,
    ));
    assert_eq!(
        map,
        vec![
            vec![0, u64::from(users.ranged_uid), 1],
            vec![1, u64::from(users.subuid.0), u64::from(users.subuid.1)]
        ],
        "the RUN did not run in the ranges mapping:\n{}",
        listing()
    );
    assert_eq!(
        String::from_utf8_lossy(&layer_file(run_root, "/root-uid", &listing).data).trim(),
        "0"
    );
    // USER nobody ran as 65534 and could write /tmp.
    let run_nobody = &image.layers[top];
    assert_eq!(
        String::from_utf8_lossy(&layer_file(run_nobody, "/tmp/uid", &listing).data).trim(),
        "65534",
        "{}",
        listing()
    );
    layer_file(run_nobody, "/tmp/x", &listing);
    // Every entry of every layer has the owner the Dockerfile gave it, never the host user's.
    let special: BTreeMap<&str, (u64, u64)> = [
        ("/owned", (1000, 1000)),
        ("/tmp/x", (65534, 65534)),
        ("/tmp/uid", (65534, 65534)),
    ]
    .into();
    let mut seen = 0;
    for layer in &image.layers {
        for e in &layer.entries {
            let want = special.get(e.path.as_str()).copied().unwrap_or((0, 0));
            assert_eq!(
                e.owner(),
                want,
                "{} has the wrong owner:\n{}",
                e.path,
                listing()
            );
            seen += usize::from(special.contains_key(e.path.as_str()));
        }
    }
    assert_eq!(seen, 3, "{}", listing());
    assert_no_bookkeeping(&image);
}

// ---------------------------------------------------------------------------------------------
// 2. Single mapping.

#[test]
fn rootless_single_mapping_records_owners_and_refuses_other_users() {
    let users = users();
    let df = on_busybox(
        "COPY --chown=1000:1000 f /f\nRUN echo more >> /f && echo new > /new && cat /proc/self/uid_map > /uid_map\n",
    );
    // The user without ranges gets the single mapping by itself.
    let built = build(Some(SINGLE), &df, &[("f", b"f-content\n")], &[], &[], false).ok();
    let image = built.image();
    let listing = || image.listing();
    let run = image.layers.last().unwrap();
    let map = id_map(&String::from_utf8_lossy(
        &layer_file(run, "/uid_map", &listing).data,
    ));
    assert_eq!(
        map,
        vec![vec![0, u64::from(users.single_uid), 1]],
        "the RUN did not run in the single mapping:\n{}",
        listing()
    );
    let copied = &image.layers[image.layers.len() - 2];
    assert_eq!(
        layer_file(copied, "/f", &listing).owner(),
        (1000, 1000),
        "{}",
        listing()
    );
    // The RUN modified /f: the copy-up kept the recorded owner.
    let f = layer_file(run, "/f", &listing);
    assert_eq!(f.data, b"f-content\nmore\n", "{}", listing());
    assert_eq!(f.owner(), (1000, 1000), "{}", listing());
    let new = layer_file(run, "/new", &listing);
    assert_eq!(new.owner(), (0, 0), "{}", listing());
    assert_eq!(new.data, b"new\n");
    assert_no_bookkeeping(&image);

    // A RUN as another user cannot work with one uid; the error says what to do. Forced with
    // IMGBUILD_USERNS=single for the user that has ranges.
    let df = on_busybox(
        "RUN echo MAPLINES=$(wc -l < /proc/self/uid_map)\nUSER 1000\nRUN id -u > /tmp/u\n",
    );
    let failed = build(
        Some(RANGED),
        &df,
        &[],
        &[("IMGBUILD_USERNS", "single")],
        &[],
        false,
    );
    let err = stderr(&failed.out);
    assert!(
        !failed.out.status.success(),
        "a RUN as uid 1000 succeeded in a single mapping:\n{err}"
    );
    assert_eq!(failed.out.status.code(), Some(1), "{err}");
    assert!(err.contains("/etc/subuid"), "{err}");
    // It was the forced single mapping (the first RUN printed it), not a failure to enter one.
    assert!(
        err.contains("MAPLINES=1"),
        "the first RUN did not see a single mapping:\n{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Isolation.

#[test]
fn rootless_run_is_isolated() {
    let users = users();
    // A root-owned host directory the user could see on the host (0755) with a private file.
    let host = tempfile::tempdir().unwrap();
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(host.path().join("secret"), b"host-secret").unwrap();
    std::fs::set_permissions(
        host.path().join("secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let h = host.path().display().to_string();

    let port = crate::serve_hello();

    let df = on_busybox(&format!(
        "RUN (cat {h}/secret 2>&1 || echo unreadable) > /hostread && \\\n    (echo x > {h}/written 2>/dev/null && echo wrote || echo refused) > /hostwrite && \\\n    ls /proc | grep -c '^[0-9]' > /pids && hostname > /hostname.txt && id -u > /uid && cat /proc/self/uid_map > /uid_map\nRUN --network=none (wget -q -O - http://127.0.0.1:{port}/ 2>/dev/null || echo unreachable) > /none.txt && ls /sys/class/net > /ifaces\nRUN wget -q -O - http://127.0.0.1:{port}/ > /host.txt\n"
    ));
    let built = build(Some(RANGED), &df, &[], &[], &[], false).ok();
    let image = built.image();
    let listing = || image.listing();
    let file = |path: &str| -> String {
        let e = image
            .layers
            .iter()
            .rev()
            .find_map(|l| l.get(path))
            .unwrap_or_else(|| panic!("{path} is in no layer:\n{}", listing()));
        String::from_utf8_lossy(&e.data).into_owned()
    };
    assert_eq!(
        id_map(&file("/uid_map"))[0],
        vec![0, u64::from(users.ranged_uid), 1],
        "not rootless"
    );
    assert!(
        file("/hostread").contains("unreadable"),
        "{}",
        file("/hostread")
    );
    assert!(!file("/hostread").contains("host-secret"));
    assert_eq!(file("/hostwrite").trim(), "refused");
    assert!(
        !host.path().join("written").exists(),
        "a rootless RUN wrote to a root-owned host directory"
    );
    let pids: usize = file("/pids").trim().parse().unwrap();
    assert!(pids < 10, "the RUN saw {pids} processes");
    assert_eq!(file("/hostname.txt").trim(), "imgbuild");
    assert_eq!(file("/uid").trim(), "0");
    assert_eq!(file("/none.txt").trim(), "unreachable");
    assert_eq!(file("/ifaces").trim(), "lo");
    // The default network is the host's: the same server answers.
    assert_eq!(file("/host.txt"), "hello");
}

// ---------------------------------------------------------------------------------------------
// 4. Reproducibility across privilege.

/// Differences between two images, layer by layer, for a failure message.
fn image_diff(a: &Image, b: &Image) -> String {
    let mut s = format!("{} layers vs {} layers\n", a.layers.len(), b.layers.len());
    for (i, (la, lb)) in a.layers.iter().zip(&b.layers).enumerate() {
        if la.digest == lb.digest {
            continue;
        }
        s.push_str(&format!("layer {i}: {} vs {}\n", la.digest, lb.digest));
        let da: Vec<String> = la.entries.iter().map(Entry::describe).collect();
        let db: Vec<String> = lb.entries.iter().map(Entry::describe).collect();
        for x in da.iter().filter(|x| !db.contains(x)) {
            s.push_str(&format!("  - {x}\n"));
        }
        for x in db.iter().filter(|x| !da.contains(x)) {
            s.push_str(&format!("  + {x}\n"));
        }
        if da.iter().all(|x| db.contains(x)) && db.iter().all(|x| da.contains(x)) {
            s.push_str(&format!(
                "  same entries, different order:\n{da:#?}\n{db:#?}\n"
            ));
        }
    }
    if a.layers.len() != b.layers.len() {
        s.push_str(&format!("{}\nvs\n{}", a.listing(), b.listing()));
    }
    s
}

fn assert_same_image(what: &str, a: &Built, b: &Built) {
    let (ia, ib) = (a.image(), b.image());
    assert!(
        ia.layer_digests() == ib.layer_digests() && a.digest() == b.digest(),
        "{what}: the images differ ({} vs {}; uncompressed manifests {} vs {}):\n{}\nconfigs:\n{}\n{}",
        a.digest(),
        b.digest(),
        ia.manifest_digest,
        ib.manifest_digest,
        image_diff(&ia, &ib),
        config_of(a),
        config_of(b),
    );
    assert_eq!(ia.manifest_digest, ib.manifest_digest, "{what}");
}

fn config_of(b: &Built) -> String {
    let layout = b.space.path("out/layout");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&blob(
        &layout,
        index["manifests"][0]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    String::from_utf8_lossy(&blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ))
    .into_owned()
}

#[test]
fn rootless_and_root_builds_give_the_same_image() {
    users();
    let env = [("SOURCE_DATE_EPOCH", "1700000000")];
    let args = ["--build-arg", "GREETING=hello-rootless"];
    // Ranges: owners, USER nobody, links, a deletion.
    let df = on_busybox(&format!(
        "ARG GREETING=unset\n{PASSWD}RUN mkdir -p /app && echo \"$GREETING\" > /app/greeting && chown 1000:1000 /app/greeting && ln -s greeting /app/link && ln /app/greeting /app/hard && mkdir /app/d && chmod 750 /app/d && chown 1000:1000 /app/d\nUSER nobody\nRUN touch /tmp/by-nobody && echo \"$GREETING\" > /tmp/greeting\nUSER root\nRUN rm /app/link && echo done > /done\n"
    ));
    let root = build(None, &df, &[], &env, &args, false).ok();
    let ranged = build(Some(RANGED), &df, &[], &env, &args, false).ok();
    assert_same_image("root vs rootless (ranges)", &root, &ranged);
    let greeting = root.image();
    assert!(
        greeting.layers.iter().any(|l| l
            .get("/app/greeting")
            .is_some_and(|e| e.data == b"hello-rootless\n")),
        "the build argument did not reach the image:\n{}",
        greeting.listing()
    );

    // Single mapping: a file owned by 1000 from COPY --chown, modified by a RUN as root.
    let df = on_busybox(
        "ARG GREETING=unset\nCOPY --chown=1000:1000 f /f\nRUN echo \"$GREETING\" >> /f && mkdir -p /x/y && echo z > /x/y/z && rm /bin/tar\n",
    );
    let files: &[(&str, &[u8])] = &[("f", b"f-content\n")];
    let root = build(None, &df, files, &env, &args, false).ok();
    let single = build(Some(SINGLE), &df, files, &env, &args, false).ok();
    assert_same_image("root vs rootless (single)", &root, &single);
}

// ---------------------------------------------------------------------------------------------
// 5. The no-overlayfs fallback.

/// Adds, modifies and deletes in every way a layer can express.
const CHURN: &str = "\
RUN mkdir -p /d/sub /gone/inner /keep /deep/er /dir2file /chdir \\
 && echo a > /d/sub/a && echo b > /d/b && echo f > /file && echo m > /mod \\
 && echo c > /chm && chmod 600 /chm && chmod 700 /chdir \\
 && echo x > /gone/inner/x && echo r > /replaced && ln -s /file /link \\
 && echo h > /h1 && echo deep > /deep/er/file && echo o > /owned && touch /dir2file/inside
RUN rm -rf /d && mkdir -p /d/new && echo n > /d/new/n \\
 && echo more >> /mod && echo more >> /deep/er/file \\
 && chmod 755 /chm && chmod 750 /chdir \\
 && rm -rf /gone \\
 && rm /replaced && mkdir /replaced && echo in > /replaced/in \\
 && rm -rf /dir2file && echo now-a-file > /dir2file \\
 && ln /h1 /h2 \\
 && ln -sfn /mod /link \\
 && rm /file \\
 && chown 1000:1000 /owned
RUN rm -rf /keep && mkdir /keep && echo new > /n1 && ln /n1 /n2 && ln -s n1 /n3 \\
 && mkdir -p /e/f && rm /h2 && echo again >> /h1 && rm -rf /bin/vi
RUN awk '$5 == \"/\" { for (i = 7; i <= NF; i++) if ($i == \"-\") { print \"ROOTFS\" \"=\" $(i + 1); exit } }' /proc/self/mountinfo
";

/// The root filesystem under `root` as path → description (type, mode, owner, mtime, content
/// hash, link target, hard-link group).
fn tree(root: &Path) -> BTreeMap<String, String> {
    use sha2::Digest;
    fn walk(
        root: &Path,
        dir: &Path,
        inodes: &mut BTreeMap<(u64, u64), String>,
        out: &mut BTreeMap<String, String>,
    ) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            let p = dir.join(&name);
            let rel = format!("/{}", p.strip_prefix(root).unwrap().display());
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mut d = format!("{:o} {}:{} mtime={}", m.mode(), m.uid(), m.gid(), m.mtime());
            if m.file_type().is_symlink() {
                d.push_str(&format!(
                    " -> {}",
                    std::fs::read_link(&p).unwrap().display()
                ));
            } else if m.is_file() {
                let hash = sha2::Sha256::digest(std::fs::read(&p).unwrap());
                d.push_str(&format!(" sha256={hash:x}"));
                if m.nlink() > 1 {
                    let first = inodes.entry((m.dev(), m.ino())).or_insert(rel.clone());
                    d.push_str(&format!(" nlink={} group={first}", m.nlink()));
                }
            }
            out.insert(rel, d);
            if m.is_dir() {
                walk(root, &p, inodes, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut BTreeMap::new(), &mut out);
    out
}

fn rootfs_line(b: &Built) -> String {
    let err = stderr(&b.out);
    err.lines()
        .find_map(|l| {
            l.find("ROOTFS=")
                .map(|i| l[i + "ROOTFS=".len()..].trim().to_owned())
        })
        .unwrap_or_else(|| panic!("the mountinfo RUN printed no ROOTFS= line:\n{err}"))
}

#[test]
fn copied_rootfs_gives_the_same_layers_as_overlayfs() {
    users();
    let df = on_busybox(CHURN);
    let overlay = build(None, &df, &[], &[], &[], true).ok();
    let copied = build(None, &df, &[], &[("IMGBUILD_ROOTFS", "copy")], &[], true).ok();
    // Each build ran the way it was meant to.
    assert_eq!(rootfs_line(&overlay), "overlay", "{}", stderr(&overlay.out));
    let fs_type = rootfs_line(&copied);
    assert_ne!(
        fs_type,
        "overlay",
        "IMGBUILD_ROOTFS=copy still ran on overlayfs:\n{}",
        stderr(&copied.out)
    );

    // The layers say what the Dockerfile did (so the comparison below compares something).
    let image = overlay.image();
    let listing = || image.listing();
    let n = image.layers.len();
    let second = &image.layers[n - 3];
    for (path, kind) in [
        ("/d/.wh..wh..opq", b'0'),
        ("/d/new/n", b'0'),
        ("/gone/.wh..wh..opq", 0),
        ("/.wh.gone", b'0'),
        ("/.wh.file", b'0'),
        ("/replaced/in", b'0'),
        ("/dir2file", b'0'),
        ("/h2", b'1'),
        ("/link", b'2'),
        ("/chm", b'0'),
        ("/chdir", b'5'),
        ("/deep/er/file", b'0'),
        ("/owned", b'0'),
    ] {
        if kind == 0 {
            assert!(second.get(path).is_none(), "{path}:\n{}", listing());
            continue;
        }
        let e = layer_file(second, path, &listing);
        assert_eq!(e.kind, kind, "{}", e.describe());
    }
    assert_eq!(layer_file(second, "/chm", &listing).mode & 0o7777, 0o755);
    assert_eq!(layer_file(second, "/owned", &listing).owner(), (1000, 1000));
    let third = &image.layers[n - 2];
    for path in [
        "/keep/.wh..wh..opq",
        "/.wh.h2",
        "/n1",
        "/n2",
        "/n3",
        "/e/f",
        "/bin/.wh.vi",
    ] {
        layer_file(third, path, &listing);
    }

    assert_same_image(
        "overlayfs vs IMGBUILD_ROOTFS=copy (root)",
        &overlay,
        &copied,
    );
    let (a, b) = (tree(&overlay.fs()), tree(&copied.fs()));
    if a != b {
        let mut diff = String::new();
        for (k, v) in &a {
            if b.get(k) != Some(v) {
                diff.push_str(&format!("- {k} {v}\n+ {k} {:?}\n", b.get(k)));
            }
        }
        for (k, v) in &b {
            if !a.contains_key(k) {
                diff.push_str(&format!("+ {k} {v}\n"));
            }
        }
        panic!("the local outputs differ (overlay -, copy +):\n{diff}");
    }
    assert!(
        a.contains_key("/replaced/in") && a["/n2"].contains("nlink=2"),
        "{a:#?}"
    );

    // The same fallback in a rootless build (ranges mapping).
    let rootless = build(
        Some(RANGED),
        &df,
        &[],
        &[("IMGBUILD_ROOTFS", "copy")],
        &[],
        false,
    )
    .ok();
    assert_ne!(
        rootfs_line(&rootless),
        "overlay",
        "{}",
        stderr(&rootless.out)
    );
    assert_same_image(
        "overlayfs as root vs IMGBUILD_ROOTFS=copy rootless",
        &overlay,
        &rootless,
    );
}

/// A change of metadata to the value it already had (`chown` to the same owner, `chmod` to the
/// same mode, common in Dockerfiles: `chown -R app:app /app`) makes overlayfs copy the file up,
/// so the layer holds it; the copied root's diff must hold it too for the two to agree.
#[test]
fn copied_rootfs_keeps_metadata_only_no_op_changes_as_overlayfs_does() {
    let df = on_busybox(
        "RUN mkdir /dd && echo f > /f && chmod 644 /f\nRUN chown 0:0 /dd && chmod 644 /f\n",
    );
    let overlay = build(None, &df, &[], &[], &[], false).ok();
    let copied = build(None, &df, &[], &[("IMGBUILD_ROOTFS", "copy")], &[], false).ok();
    let image = overlay.image();
    let last = image.layers.last().unwrap();
    assert!(
        last.get("/dd").is_some() && last.get("/f").is_some(),
        "overlayfs no longer copies up on a no-op chown/chmod:\n{}",
        image.listing()
    );
    assert_same_image(
        "overlayfs vs IMGBUILD_ROOTFS=copy, no-op chown/chmod",
        &overlay,
        &copied,
    );
}
