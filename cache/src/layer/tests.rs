//! Cross-cutting tests of the layer module: the writer checked by independent readers (the
//! `tar` crate and GNU tar), extraction of hostile archives, whiteouts, and memory use.
//!
//! CI runs as root; tests that need root (devices, overlay whiteouts, chown, `trusted.*`
//! xattrs) say so and skip their privileged part otherwise.

use super::extract::extract_with;
use super::header::{Member, write_member_header, write_padding};
use super::resolve::Resolver;
use super::*;
use crate::digest::Digest;
use std::collections::BTreeMap;
use std::fs;
use std::io::{Cursor, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn write(entries: Vec<Entry>, options: LayerOptions) -> (Vec<u8>, LayerInfo) {
    let mut out = Vec::new();
    let info = write_layer(&mut out, options, entries).unwrap();
    (out, info)
}

fn plain(epoch: u64) -> LayerOptions {
    LayerOptions {
        compression: Compression::None,
        epoch,
    }
}

/// A member as the `tar` crate reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Read_ {
    path: Vec<u8>,
    typeflag: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: Option<Vec<u8>>,
    device: Option<(u32, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    data: Vec<u8>,
}

fn read_tar(bytes: &[u8]) -> Vec<Read_> {
    let mut archive = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().unwrap() {
            for ext in pax {
                let ext = ext.unwrap();
                if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
        let h = entry.header().clone();
        let path = entry.path_bytes().into_owned();
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.push(Read_ {
            path,
            typeflag: h.entry_type().as_byte(),
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            link,
            device: h
                .device_major()
                .unwrap()
                .map(|maj| (maj, h.device_minor().unwrap().unwrap())),
            xattrs,
            data,
        });
    }
    out
}

/// A deterministic shuffle (an LCG-driven Fisher–Yates), so no RNG crate is needed.
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        v.swap(i, (seed >> 33) as usize % (i + 1));
    }
}

fn sample_entries(dir: &Path) -> Vec<Entry> {
    let source = dir.join("source.bin");
    fs::write(&source, b"streamed from a file\n").unwrap();
    let long_dir = "d".repeat(120);
    let longer = format!("{long_dir}/{}", "n".repeat(140)); // > 255 bytes
    vec![
        Entry::dir("etc").with_mtime(1_700_000_000),
        Entry::file_bytes("etc/hosts", b"127.0.0.1 localhost\n".to_vec())
            .with_mode(0o644)
            .with_mtime(1_700_000_001),
        Entry::file_from("etc/from-file", &source)
            .with_owner(1000, 1000)
            .with_mtime(1_700_000_002),
        Entry::dir("bin").with_mode(0o755),
        Entry::file_bytes("bin/tool", b"#!/bin/sh\n".to_vec()).with_mode(0o4755),
        Entry::symlink("bin/sh", "/bin/busybox"),
        Entry::hardlink("bin/tool2", "bin/tool"),
        Entry::dir("tmp").with_mode(0o1777),
        Entry::new("dev-null", EntryKind::CharDevice { major: 1, minor: 3 }).with_mode(0o666),
        Entry::new("sda", EntryKind::BlockDevice { major: 8, minor: 0 }),
        Entry::new("fifo", EntryKind::Fifo),
        Entry::whiteout("etc/removed"),
        Entry::dir("var"),
        Entry::opaque_dir("var"),
        Entry::dir(&long_dir),
        Entry::file_bytes(&longer, b"deep".to_vec()).with_mtime(5),
        Entry::symlink("long-link", "t".repeat(300)),
        Entry::file_bytes("big-ids", b"x".to_vec()).with_owner(3_000_000, 4_000_000),
        Entry::file_bytes("caps", b"y".to_vec())
            .with_xattr("user.comment", b"hello".to_vec())
            .with_xattr(
                "security.capability",
                vec![1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0],
            ),
        Entry::file_bytes("été/ünïcode", b"z".to_vec()),
    ]
}

#[test]
fn layer_bytes_do_not_depend_on_insertion_order() {
    let tmp = tempfile::tempdir().unwrap();
    let entries = sample_entries(tmp.path());
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let options = LayerOptions {
            compression,
            epoch: 0,
        };
        let (bytes, info) = write(entries.clone(), options);
        for seed in 1..4 {
            let mut shuffled = entries.clone();
            shuffle(&mut shuffled, seed);
            let (again, info2) = write(shuffled, options);
            assert!(
                again == bytes,
                "{compression:?}: bytes differ with seed {seed}"
            );
            assert_eq!(info, info2);
        }
        assert_eq!(info.digest, Digest::of(&bytes));
        assert_eq!(info.size, bytes.len() as u64);
        assert_eq!(info.media_type, compression.media_type());
    }
}

#[test]
fn layer_compressed_outputs_decompress_to_the_diff_id() {
    let tmp = tempfile::tempdir().unwrap();
    let (tar, plain_info) = write(sample_entries(tmp.path()), plain(0));
    assert_eq!(plain_info.diff_id, Digest::of(&tar));
    assert_eq!(plain_info.digest, plain_info.diff_id);
    assert_eq!(plain_info.uncompressed_size, tar.len() as u64);

    let (gz, gz_info) = write(
        sample_entries(tmp.path()),
        LayerOptions {
            compression: Compression::Gzip,
            epoch: 0,
        },
    );
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut out)
        .unwrap();
    assert!(out == tar);
    assert_eq!(gz_info.diff_id, plain_info.diff_id);
    assert_ne!(gz_info.digest, gz_info.diff_id);
    // Fixed gzip header: no name, mtime 0, OS 255.
    assert_eq!(&gz[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);

    let (zst, zst_info) = write(
        sample_entries(tmp.path()),
        LayerOptions {
            compression: Compression::Zstd,
            epoch: 0,
        },
    );
    assert!(zstd::decode_all(&zst[..]).unwrap() == tar);
    assert_eq!(zst_info.diff_id, plain_info.diff_id);

    // And through our own detection.
    for blob in [&gz, &zst, &tar] {
        let mut out = Vec::new();
        decompress(&blob[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert!(out == tar);
    }
}

#[test]
fn layer_epoch_changes_only_mtime_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let entries = sample_entries(tmp.path());
    let (at_zero, _) = write(entries.clone(), plain(0));
    let (at_epoch, _) = write(entries.clone(), plain(1_600_000_000));
    assert_eq!(at_zero.len(), at_epoch.len());
    assert_ne!(at_zero, at_epoch);

    // Header block offsets, from an independent reader.
    let mut headers = Vec::new();
    let mut archive = tar::Archive::new(&at_zero[..]);
    for e in archive.entries().unwrap().raw(true) {
        headers.push(e.unwrap().raw_header_position() as usize);
    }
    for (i, (a, b)) in at_zero.iter().zip(&at_epoch).enumerate() {
        if a != b {
            let in_field = headers.iter().any(|&h| (h + 136..h + 156).contains(&i)); // mtime and checksum
            assert!(in_field, "byte {i} differs outside an mtime/checksum field");
        }
    }
    // Clamping: min(mtime, epoch).
    let members = read_tar(&at_epoch);
    let hosts = members.iter().find(|m| m.path == b"etc/hosts").unwrap();
    assert_eq!(hosts.mtime, 1_600_000_000);
    let deep = members.iter().find(|m| m.data == b"deep").unwrap();
    assert_eq!(deep.mtime, 5);
    assert!(read_tar(&at_zero).iter().all(|m| m.mtime == 0));
}

#[test]
fn layer_members_round_trip_through_the_tar_crate() {
    let tmp = tempfile::tempdir().unwrap();
    let (tar, _) = write(sample_entries(tmp.path()), plain(u64::MAX));
    let members = read_tar(&tar);
    let names: Vec<String> = members
        .iter()
        .map(|m| String::from_utf8_lossy(&m.path).into_owned())
        .collect();
    let long_dir = "d".repeat(120);
    let longer = format!("{long_dir}/{}", "n".repeat(140));
    assert_eq!(
        names,
        [
            "big-ids",
            "bin/",
            "bin/sh",
            "bin/tool",
            "bin/tool2",
            "caps",
            &format!("{long_dir}/"),
            &longer,
            "dev-null",
            "etc/",
            "etc/.wh.removed",
            "etc/from-file",
            "etc/hosts",
            "fifo",
            "long-link",
            "sda",
            "tmp/",
            "var/",
            "var/.wh..wh..opq",
            "été/ünïcode",
        ]
    );
    let get = |p: &str| members.iter().find(|m| m.path == p.as_bytes()).unwrap();
    assert_eq!(get("etc/hosts").data, b"127.0.0.1 localhost\n");
    assert_eq!(get("etc/hosts").mtime, 1_700_000_001);
    assert_eq!(get("etc/from-file").data, b"streamed from a file\n");
    assert_eq!(
        (get("etc/from-file").uid, get("etc/from-file").gid),
        (1000, 1000)
    );
    assert_eq!(get("bin/tool").mode, 0o4755);
    assert_eq!(get("tmp/").mode, 0o1777);
    assert_eq!(get("tmp/").typeflag, b'5');
    assert_eq!(get("bin/sh").link.as_deref(), Some(&b"/bin/busybox"[..]));
    assert_eq!(get("bin/tool2").typeflag, b'1');
    assert_eq!(get("bin/tool2").link.as_deref(), Some(&b"bin/tool"[..]));
    assert_eq!(
        get("long-link").link.as_deref(),
        Some("t".repeat(300).as_bytes())
    );
    assert_eq!(get("dev-null").device, Some((1, 3)));
    assert_eq!(get("dev-null").typeflag, b'3');
    assert_eq!(get("sda").device, Some((8, 0)));
    assert_eq!(get("sda").typeflag, b'4');
    assert_eq!(get("fifo").typeflag, b'6');
    assert_eq!(get(&longer).data, b"deep");
    assert_eq!(
        (get("big-ids").uid, get("big-ids").gid),
        (3_000_000, 4_000_000)
    );
    let wh = get("etc/.wh.removed");
    assert_eq!(
        (wh.typeflag, wh.mode, wh.uid, wh.data.len()),
        (b'0', 0, 0, 0)
    );
    assert_eq!(get("var/.wh..wh..opq").typeflag, b'0');
    assert_eq!(
        get("caps").xattrs,
        vec![
            (
                b"security.capability".to_vec(),
                vec![1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0]
            ),
            (b"user.comment".to_vec(), b"hello".to_vec()),
        ]
    );
    // Devices only carry device numbers; no uname/gname anywhere.
    assert_eq!(get("etc/hosts").device, Some((0, 0)));
    let mut archive = tar::Archive::new(&tar[..]);
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        assert_eq!(e.header().username_bytes(), Some(&b""[..]));
        assert_eq!(e.header().groupname_bytes(), Some(&b""[..]));
        assert!(e.header().as_ustar().is_some(), "not a ustar header");
    }
    // Two zero blocks end the archive, and nothing follows.
    assert!(tar.len() % 512 == 0);
    assert!(tar[tar.len() - 1024..].iter().all(|&b| b == 0));
}

#[test]
fn layer_headers_use_pax_only_when_needed() {
    let (tar, _) = write(vec![Entry::file_bytes("short", b"a".to_vec())], plain(0));
    // One header, one data block, two zero blocks.
    assert_eq!(tar.len(), 4 * 512);
    assert_eq!(&tar[..6], b"short\0");
    assert_eq!(&tar[100..108], b"0000644\0");
    assert_eq!(&tar[124..136], b"00000000001\0");
    assert_eq!(&tar[257..265], b"ustar\x0000");
    assert_eq!(&tar[329..345], b"0000000\x000000000\x00");

    // A 150-byte name with a usable '/' goes in prefix + name, no PAX.
    let name = format!("{}/{}", "p".repeat(60), "n".repeat(89));
    let (tar, _) = write(vec![Entry::file_bytes(&name, b"a".to_vec())], plain(0));
    assert_eq!(tar.len(), 4 * 512);
    assert_eq!(read_tar(&tar)[0].path, name.as_bytes());

    // Non-ASCII names go in PAX, as do non-UTF-8 ones (with hdrcharset).
    let (tar, _) = write(vec![Entry::file_bytes("é", b"a".to_vec())], plain(0));
    assert_eq!(tar[156], b'x');
    let raw = PathBuf::from(std::ffi::OsStr::from_bytes(b"bad\xff"));
    let (tar, _) = write(vec![Entry::file_bytes(&raw, b"a".to_vec())], plain(0));
    assert!(contains(&tar, b" hdrcharset=BINARY\n"));
    assert_eq!(read_tar(&tar)[0].path, b"bad\xff");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn layer_same_path_last_wins() {
    let (tar, _) = write(
        vec![
            Entry::file_bytes("a", b"first".to_vec()),
            Entry::file_bytes("a", b"second".to_vec()),
            Entry::file_bytes("b", b"file".to_vec()),
            Entry::whiteout("b"),
            Entry::dir("c"),
            Entry::opaque_dir("c"),
        ],
        plain(0),
    );
    let got: Vec<(Vec<u8>, Vec<u8>)> = read_tar(&tar)
        .into_iter()
        .map(|m| (m.path, m.data))
        .collect();
    let want: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b".wh.b".to_vec(), vec![]),
        (b"a".to_vec(), b"second".to_vec()),
        (b"c/".to_vec(), vec![]),
        (b"c/.wh..wh..opq".to_vec(), vec![]),
    ];
    assert_eq!(got, want);
}

#[test]
fn layer_hard_links_point_to_the_first_member_whatever_was_given() {
    // The content was given to "z", which sorts last: "a" takes it over.
    let (tar, _) = write(
        vec![
            Entry::file_bytes("z", b"data".to_vec()).with_mode(0o600),
            Entry::hardlink("a", "z"),
            Entry::hardlink("m", "a"), // a chain
        ],
        plain(0),
    );
    let m = read_tar(&tar);
    assert_eq!((m[0].path.as_slice(), m[0].typeflag), (&b"a"[..], b'0'));
    assert_eq!((m[0].data.as_slice(), m[0].mode), (&b"data"[..], 0o600));
    for link in &m[1..] {
        assert_eq!(link.typeflag, b'1');
        assert_eq!(link.link.as_deref(), Some(&b"a"[..]));
    }

    let mut w = LayerWriter::new(Vec::new(), plain(0));
    w.add(Entry::hardlink("x", "missing")).unwrap();
    assert!(matches!(w.finish(), Err(LayerError::Hardlink { .. })));
    let mut w = LayerWriter::new(Vec::new(), plain(0));
    w.extend([Entry::dir("d"), Entry::hardlink("x", "d")])
        .unwrap();
    assert!(matches!(w.finish(), Err(LayerError::Hardlink { .. })));
    let mut w = LayerWriter::new(Vec::new(), plain(0));
    w.extend([Entry::hardlink("x", "y"), Entry::hardlink("y", "x")])
        .unwrap();
    assert!(matches!(w.finish(), Err(LayerError::Hardlink { .. })));
}

#[test]
fn layer_writer_refuses_bad_entries() {
    let mut w = LayerWriter::new(Vec::new(), plain(0));
    for bad in [
        Entry::file_bytes("/abs", vec![]),
        Entry::file_bytes("a/../b", vec![]),
        Entry::file_bytes("dir/", vec![]),
        Entry::file_bytes("a/.wh.b", vec![]),
        Entry::hardlink("a", "../b"),
        Entry::symlink("a", ""),
        Entry::file_bytes("a", vec![]).with_xattr("user.a=b", vec![]),
    ] {
        assert!(w.add(bad.clone()).is_err(), "{bad:?} accepted");
    }
    assert!(w.is_empty());

    // A content file that is a symlink is refused (O_NOFOLLOW), a missing one is an error.
    let tmp = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/etc/hostname", tmp.path().join("link")).unwrap();
    for source in ["link", "missing"] {
        let mut w = LayerWriter::new(Vec::new(), plain(0));
        w.add(Entry::file_from("f", tmp.path().join(source)))
            .unwrap();
        assert!(matches!(w.finish(), Err(LayerError::Io { .. })), "{source}");
    }
}

/// `tar -tvf` of the layer, one line per member (GNU tar, Debian package `tar`).
fn gnu_tar_list(layer: &Path) -> Vec<String> {
    let out = Command::new("tar")
        .arg("-tvf")
        .arg(layer)
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .output()
        .expect("GNU tar is needed (Debian package `tar`)");
    assert!(
        out.status.success(),
        "tar -tvf failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "tar warned: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn layer_gnu_tar_reads_names_modes_owners_and_links() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = tmp.path().join("layer.tar");
    let file = fs::File::create(&layer).unwrap();
    write_layer(file, plain(1_000_000_000), sample_entries(tmp.path())).unwrap();
    let lines = gnu_tar_list(&layer);
    // perms owner size date time name...
    let fields: Vec<Vec<&str>> = lines
        .iter()
        .map(|l| {
            l.splitn(6, char::is_whitespace)
                .filter(|f| !f.is_empty())
                .collect()
        })
        .collect();
    let find = |name: &str| {
        lines
            .iter()
            .find(|l| l.split_whitespace().nth(5) == Some(name))
            .unwrap_or_else(|| panic!("{name} not listed in {lines:#?}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(fields.len(), 20, "{lines:#?}");
    assert_eq!(&find("etc/hosts")[..3], ["-rw-r--r--", "0/0", "20"]);
    assert_eq!(&find("etc/hosts")[3..5], ["2001-09-09", "01:46"]);
    assert_eq!(&find("etc/from-file")[..2], ["-rw-r--r--", "1000/1000"]);
    assert_eq!(find("bin/tool")[0], "-rwsr-xr-x");
    assert_eq!(find("tmp/")[0], "drwxrwxrwt");
    assert_eq!(&find("bin/sh")[5..], ["bin/sh", "->", "/bin/busybox"]);
    assert_eq!(find("bin/sh")[0], "lrwxrwxrwx");
    assert_eq!(
        &find("bin/tool2")[5..],
        ["bin/tool2", "link", "to", "bin/tool"]
    );
    let long_dir = "d".repeat(120);
    let longer = format!("{long_dir}/{}", "n".repeat(140));
    assert_eq!(find(&longer)[2], "4");
    assert_eq!(find(&format!("{long_dir}/"))[0], "drwxr-xr-x");
    let t300 = "t".repeat(300);
    assert_eq!(&find("long-link")[5..], ["long-link", "->", t300.as_str()]);
    assert_eq!(find("big-ids")[1], "3000000/4000000");
    assert_eq!(&find("dev-null")[..3], ["crw-rw-rw-", "0/0", "1,3"]);
    assert_eq!(find("sda")[0], "brw-r--r--");
    assert_eq!(find("fifo")[0], "prw-r--r--");
    assert_eq!(find("etc/.wh.removed")[0], "----------");
    assert_eq!(find("var/.wh..wh..opq")[0], "----------");
    // GNU tar escapes non-ASCII bytes when listing.
    assert!(find(r"\303\251t\303\251/\303\274n\303\257code")[0].starts_with('-'));
}

#[test]
fn layer_gnu_tar_extracts_xattrs_and_long_names() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = tmp.path().join("layer.tar");
    let long = format!("{}/{}", "d".repeat(120), "n".repeat(140));
    let entries = vec![
        Entry::dir("d".repeat(120)),
        Entry::file_bytes(&long, b"deep".to_vec()),
        Entry::file_bytes("x", b"x".to_vec()).with_xattr("user.comment", b"hi\0there".to_vec()),
    ];
    write_layer(fs::File::create(&layer).unwrap(), plain(0), entries).unwrap();
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let status = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=user.*", "-xf"])
        .arg(&layer)
        .arg("-C")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(fs::read(out.join(&long)).unwrap(), b"deep");
    let mut buf = [0u8; 64];
    let n = rustix::fs::lgetxattr(out.join("x"), "user.comment", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"hi\0there");
}

// ---- extraction ----

struct Raw<'a> {
    name: &'a [u8],
    typeflag: u8,
    link: &'a [u8],
    data: &'a [u8],
    device: Option<(u32, u32)>,
}

fn file<'a>(name: &'a [u8], data: &'a [u8]) -> Raw<'a> {
    Raw {
        name,
        typeflag: b'0',
        link: b"",
        data,
        device: None,
    }
}

fn dir(name: &[u8]) -> Raw<'_> {
    Raw {
        name,
        typeflag: b'5',
        link: b"",
        data: b"",
        device: None,
    }
}

fn symlink<'a>(name: &'a [u8], target: &'a [u8]) -> Raw<'a> {
    Raw {
        name,
        typeflag: b'2',
        link: target,
        data: b"",
        device: None,
    }
}

fn hardlink<'a>(name: &'a [u8], target: &'a [u8]) -> Raw<'a> {
    Raw {
        name,
        typeflag: b'1',
        link: target,
        data: b"",
        device: None,
    }
}

/// A tar stream with exactly these members, names unchecked (our writer refuses hostile ones).
fn raw_tar(members: &[Raw<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    let none = BTreeMap::new();
    for m in members {
        let member = Member {
            name: m.name,
            mode: if m.typeflag == b'5' { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            size: m.data.len() as u64,
            mtime: 0,
            typeflag: m.typeflag,
            linkname: m.link,
            device: m.device,
            xattrs: &none,
        };
        write_member_header(&mut out, &member).unwrap();
        out.extend_from_slice(m.data);
        write_padding(&mut out, m.data.len() as u64).unwrap();
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// A temp dir holding `dest/` and `outside/sentinel`: everything but `dest/` must stay as it is.
struct Jail {
    tmp: tempfile::TempDir,
}

impl Jail {
    fn new() -> Jail {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("dest")).unwrap();
        fs::create_dir(tmp.path().join("outside")).unwrap();
        fs::write(tmp.path().join("outside/sentinel"), b"keep me").unwrap();
        Jail { tmp }
    }

    fn dest(&self) -> PathBuf {
        self.tmp.path().join("dest")
    }

    fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }

    /// The jail's path without the leading '/', for names that aim at it from the root.
    fn outside_rel(&self) -> Vec<u8> {
        self.outside().as_os_str().as_bytes()[1..].to_vec()
    }

    /// Everything outside `dest/`: paths, kinds, modes and contents.
    fn outside_state(&self) -> Vec<(PathBuf, u32, Vec<u8>)> {
        let mut state = Vec::new();
        let mut pending = vec![self.tmp.path().to_owned()];
        while let Some(d) = pending.pop() {
            let mut names: Vec<_> = fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for p in names {
                if p == self.dest() {
                    continue;
                }
                let m = fs::symlink_metadata(&p).unwrap();
                let content = if m.is_file() {
                    fs::read(&p).unwrap()
                } else if m.is_symlink() {
                    fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec()
                } else {
                    pending.push(p.clone());
                    vec![]
                };
                state.push((p, m.mode(), content));
            }
        }
        state
    }

    fn extract(
        &self,
        tar: &[u8],
        options: &ExtractOptions,
        resolver: Resolver,
    ) -> Result<ExtractReport> {
        let before = self.outside_state();
        let passwd = fs::metadata("/etc/passwd").unwrap();
        let result = extract_with(tar, &self.dest(), options, resolver);
        assert_eq!(
            self.outside_state(),
            before,
            "something changed outside dest"
        );
        let after = fs::metadata("/etc/passwd").unwrap();
        assert_eq!(
            (passwd.ino(), passwd.mtime(), passwd.nlink()),
            (after.ino(), after.mtime(), after.nlink())
        );
        result
    }
}

const RESOLVERS: [Resolver; 2] = [Resolver::Kernel, Resolver::Userspace];

#[test]
fn layer_extract_cleans_dotdot_and_absolute_names() {
    for resolver in RESOLVERS {
        let jail = Jail::new();
        let abs = [jail.outside().as_os_str().as_bytes(), b"/abs"].concat();
        let tar = raw_tar(&[
            file(b"../outside/sentinel", b"pwned"),
            file(b"../../../x", b"x"),
            file(&abs, b"abs"),
            file(b"./ok/../fine", b"fine"),
        ]);
        let report = jail
            .extract(&tar, &ExtractOptions::default(), resolver)
            .unwrap();
        let dest = jail.dest();
        assert_eq!(fs::read(dest.join("outside/sentinel")).unwrap(), b"pwned");
        assert_eq!(fs::read(dest.join("x")).unwrap(), b"x");
        assert_eq!(
            fs::read(dest.join(std::ffi::OsStr::from_bytes(&abs[1..]))).unwrap(),
            b"abs"
        );
        assert_eq!(fs::read(dest.join("fine")).unwrap(), b"fine");
        assert_eq!(report.sanitized_paths.len(), 4, "{report:?}");
    }
}

#[test]
fn layer_extract_resolves_symlinks_inside_dest() {
    for resolver in RESOLVERS {
        let jail = Jail::new();
        let aimed = [&b"a/"[..], &jail.outside_rel(), b"/sentinel"].concat();
        let tar = raw_tar(&[
            // a -> / then a/<jail>/outside/sentinel: lands under dest.
            symlink(b"a", b"/"),
            file(&aimed, b"pwned"),
            // b -> ../.. then b/x: dest/x.
            symlink(b"b", b"../.."),
            file(b"b/x", b"x"),
            // c -> ../../outside with dest/outside made first: dest/outside/sentinel.
            dir(b"outside/"),
            symlink(b"c", b"../../outside"),
            file(b"c/sentinel", b"pwned too"),
            // etc -> /etc, the classic: writes dest/etc/...
            dir(b"etc/"),
            symlink(b"e", b"/etc"),
            file(b"e/imgbuild-layer-test-must-not-exist", b"pwned"),
            // A symlink to outside, then a file of the same name: the symlink is replaced.
            symlink(b"l", jail.outside().join("sentinel").as_os_str().as_bytes()),
            file(b"l", b"replaced"),
            // A symlink to a directory outside, then a directory of the same name.
            symlink(b"d", jail.outside().as_os_str().as_bytes()),
            dir(b"d/"),
            file(b"d/sentinel", b"inside"),
        ]);
        jail.extract(&tar, &ExtractOptions::default(), resolver)
            .unwrap();
        let dest = jail.dest();
        let under = |rel: &[u8]| dest.join(std::ffi::OsStr::from_bytes(rel));
        assert_eq!(fs::read(under(&aimed[2..])).unwrap(), b"pwned");
        assert_eq!(fs::read(dest.join("x")).unwrap(), b"x");
        assert_eq!(
            fs::read(dest.join("outside/sentinel")).unwrap(),
            b"pwned too"
        );
        assert!(!Path::new("/etc/imgbuild-layer-test-must-not-exist").exists());
        assert_eq!(
            fs::read(dest.join("etc/imgbuild-layer-test-must-not-exist")).unwrap(),
            b"pwned"
        );
        assert_eq!(fs::read(dest.join("l")).unwrap(), b"replaced");
        assert!(fs::symlink_metadata(dest.join("d")).unwrap().is_dir());
        assert_eq!(fs::read(dest.join("d/sentinel")).unwrap(), b"inside");
    }
}

#[test]
fn layer_extract_refuses_escaping_parents_that_do_not_exist() {
    // a -> <jail>/outside, which does not exist inside dest: a/sentinel cannot be written
    // (as with Docker) and nothing happens outside.
    for resolver in RESOLVERS {
        let jail = Jail::new();
        let tar = raw_tar(&[
            symlink(b"a", jail.outside().as_os_str().as_bytes()),
            file(b"a/sentinel", b"pwned"),
        ]);
        assert!(
            jail.extract(&tar, &ExtractOptions::default(), resolver)
                .is_err()
        );
        let tar = raw_tar(&[
            symlink(b"a", jail.outside().as_os_str().as_bytes()),
            file(b"a/.wh.sentinel", b""),
            symlink(b"loop", b"loop"),
            file(b"loop/x", b"x"),
        ]);
        assert!(
            jail.extract(&tar, &ExtractOptions::default(), resolver)
                .is_err()
        );
    }
}

#[test]
fn layer_extract_keeps_hard_links_inside() {
    for resolver in RESOLVERS {
        let jail = Jail::new();
        let dest = jail.dest();
        // A target that does not exist inside dest is an error, whatever exists outside.
        for target in [&b"/etc/passwd"[..], b"../outside/sentinel"] {
            let tar = raw_tar(&[hardlink(b"h", target)]);
            let err = jail
                .extract(&tar, &ExtractOptions::default(), resolver)
                .unwrap_err();
            assert!(matches!(err, LayerError::Hardlink { .. }), "{err}");
            assert!(fs::symlink_metadata(dest.join("h")).is_err());
        }
        // With dest/etc/passwd present, "/etc/passwd" means that one.
        let outside_link = jail.outside().join("sentinel");
        let tar = raw_tar(&[
            dir(b"etc/"),
            file(b"etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
            hardlink(b"h", b"/etc/passwd"),
            // A link to a symlink that points outside links the symlink itself.
            symlink(b"s", outside_link.as_os_str().as_bytes()),
            hardlink(b"hs", b"s"),
            file(b"hs", b"replaced, not written through"),
        ]);
        jail.extract(&tar, &ExtractOptions::default(), resolver)
            .unwrap();
        let h = fs::metadata(dest.join("h")).unwrap();
        assert_eq!(
            h.ino(),
            fs::metadata(dest.join("etc/passwd")).unwrap().ino()
        );
        assert_ne!(h.ino(), fs::metadata("/etc/passwd").unwrap().ino());
        assert_eq!(
            fs::read(dest.join("hs")).unwrap(),
            b"replaced, not written through"
        );
        assert!(fs::symlink_metadata(dest.join("s")).unwrap().is_symlink());
    }
}

#[test]
fn layer_extract_skips_devices_unless_allowed_and_root() {
    let jail = Jail::new();
    let null = Raw {
        name: b"dev/null",
        typeflag: b'3',
        link: b"",
        data: b"",
        device: Some((1, 3)),
    };
    let tar = raw_tar(&[null, file(b"after", b"still extracted")]);
    let report = jail
        .extract(&tar, &ExtractOptions::default(), Resolver::Kernel)
        .unwrap();
    assert_eq!(
        report.skipped,
        vec![Skipped {
            path: "dev/null".into(),
            reason: SkipReason::Device
        }]
    );
    assert!(fs::symlink_metadata(jail.dest().join("dev/null")).is_err());
    assert_eq!(
        fs::read(jail.dest().join("after")).unwrap(),
        b"still extracted"
    );

    let strict = ExtractOptions {
        fail_on_skipped_device: true,
        ..ExtractOptions::default()
    };
    assert!(matches!(
        jail.extract(&tar, &strict, Resolver::Kernel),
        Err(LayerError::DeviceSkipped { .. })
    ));

    let unprivileged = ExtractOptions {
        allow_devices: true,
        privileged: Some(false),
        ..ExtractOptions::default()
    };
    let report = jail.extract(&tar, &unprivileged, Resolver::Kernel).unwrap();
    assert_eq!(report.skipped.len(), 1);
    assert!(report.ownership_skipped);

    if !is_root() {
        eprintln!("not root: device creation not tested");
        return;
    }
    let allowed = ExtractOptions {
        allow_devices: true,
        ..ExtractOptions::default()
    };
    let report = jail.extract(&tar, &allowed, Resolver::Kernel).unwrap();
    assert!(report.skipped.is_empty(), "{report:?}");
    let m = fs::symlink_metadata(jail.dest().join("dev/null")).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(m.file_type().is_char_device());
    assert_eq!(
        (rustix::fs::major(m.rdev()), rustix::fs::minor(m.rdev())),
        (1, 3)
    );
    assert_eq!(m.mode() & 0o7777, 0o644);
}

/// A lower layer in `dest`: a/{keep,gone}, b/{x,sub/y}, c/file, e/old.
fn lower(dest: &Path) {
    for d in ["a", "b/sub", "c", "e"] {
        fs::create_dir_all(dest.join(d)).unwrap();
    }
    for f in ["a/keep", "a/gone", "b/x", "b/sub/y", "c/file", "e/old"] {
        fs::write(dest.join(f), f).unwrap();
    }
}

fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let rel = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                pending.push(rel.clone());
                out.push(format!("{}/", rel.display()));
            } else {
                out.push(rel.display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn layer_apply_mode_whiteouts_and_opaque_dirs() {
    for resolver in RESOLVERS {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path();
        lower(dest);
        let tar = raw_tar(&[
            file(b"a/.wh.gone", b""),
            dir(b"b/"),
            file(b"b/.wh..wh..opq", b""),
            file(b"b/new", b"new"),
            file(b".wh.c", b""),       // a whole directory
            file(b".wh.nothing", b""), // nothing to delete
            file(b"nope/.wh.x", b""),  // no parent
            file(b"d", b"same layer"),
            file(b".wh.d", b""), // does not hide the layer's own d
            dir(b"e/"),
            file(b"e/new", b"new"),
            file(b"e/.wh..wh..opq", b""), // after new content: that content stays
            file(b"f/.wh..wh.plnk", b""), // AUFS metadata
        ]);
        let report = extract_with(&tar[..], dest, &ExtractOptions::default(), resolver).unwrap();
        assert_eq!(
            tree(dest),
            ["a/", "a/keep", "b/", "b/new", "d", "e/", "e/new"]
        );
        let reasons: Vec<_> = report.skipped.iter().map(|s| s.reason.clone()).collect();
        assert_eq!(
            reasons,
            [SkipReason::SameLayerWhiteout, SkipReason::BadWhiteout]
        );
    }
}

#[test]
fn layer_apply_mode_with_our_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");
    fs::create_dir(&dest).unwrap();
    lower(&dest);
    let (tar, _) = write(
        vec![
            Entry::whiteout("a/gone"),
            Entry::dir("b"),
            Entry::opaque_dir("b"),
            Entry::dir("b/sub"),
            Entry::file_bytes("b/sub/new", b"n".to_vec()),
            Entry::whiteout("c"),
        ],
        plain(0),
    );
    extract(&tar[..], &dest, &ExtractOptions::default()).unwrap();
    // b/sub came back in this layer, but the lower b/sub/y is hidden with the rest of b.
    assert_eq!(
        tree(&dest),
        ["a/", "a/keep", "b/", "b/sub/", "b/sub/new", "e/", "e/old"]
    );
}

#[test]
fn layer_overlay_mode_makes_overlay_whiteouts() {
    let (tar, _) = write(
        vec![
            Entry::dir("a"),
            Entry::whiteout("a/gone"),
            Entry::dir("b"),
            Entry::opaque_dir("b"),
            Entry::file_bytes("b/new", b"n".to_vec()),
        ],
        plain(0),
    );
    let tmp = tempfile::tempdir().unwrap();
    let overlay = ExtractOptions {
        mode: ExtractMode::Overlay,
        ..ExtractOptions::default()
    };
    let unprivileged = ExtractOptions {
        privileged: Some(false),
        ..overlay.clone()
    };
    let report = extract(&tar[..], tmp.path(), &unprivileged).unwrap();
    assert_eq!(report.whiteouts, [PathBuf::from("a/gone")]);
    assert_eq!(report.opaque_dirs, [PathBuf::from("b")]);
    assert_eq!(tree(tmp.path()), ["a/", "b/", "b/new"]);

    if !is_root() {
        eprintln!("not root: overlay whiteout devices not tested");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let report = extract(&tar[..], tmp.path(), &overlay).unwrap();
    assert!(
        report.whiteouts.is_empty() && report.opaque_dirs.is_empty(),
        "{report:?}"
    );
    let m = fs::symlink_metadata(tmp.path().join("a/gone")).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), 0);
    let mut buf = [0u8; 4];
    let n = rustix::fs::lgetxattr(tmp.path().join("b"), "trusted.overlay.opaque", &mut buf[..])
        .unwrap();
    assert_eq!(&buf[..n], b"y");

    // Read back as an overlay upper dir, it is the same layer.
    let entries = entries_from_dir(
        tmp.path(),
        &DirOptions {
            overlay: true,
            ..DirOptions::default()
        },
    )
    .unwrap();
    let (again, _) = write(entries, plain(0));
    let names = |t: &[u8]| read_tar(t).into_iter().map(|m| m.path).collect::<Vec<_>>();
    assert_eq!(names(&again), names(&tar));
}

#[test]
fn layer_plain_mode_keeps_wh_names() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = raw_tar(&[file(b".wh.x", b"1"), file(b"d/.wh..wh..opq", b"2")]);
    let options = ExtractOptions {
        mode: ExtractMode::Plain,
        ..ExtractOptions::default()
    };
    extract(&tar[..], tmp.path(), &options).unwrap();
    assert_eq!(tree(tmp.path()), [".wh.x", "d/", "d/.wh..wh..opq"]);
}

fn set_mtime(path: &Path, secs: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// A source tree with every kind the walk reads (devices only as root).
fn source_tree(root: &Path) {
    fs::create_dir_all(root.join("d/sub")).unwrap();
    fs::write(root.join("d/f"), b"content").unwrap();
    fs::hard_link(root.join("d/f"), root.join("d/g")).unwrap();
    fs::hard_link(root.join("d/f"), root.join("a-link")).unwrap();
    std::os::unix::fs::symlink("d/f", root.join("s")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("p"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    fs::set_permissions(root.join("p"), fs::Permissions::from_mode(0o640)).unwrap();
    if is_root() {
        // Before the chmod below: a chown clears setuid.
        rustix::fs::chownat(
            rustix::fs::CWD,
            root.join("d/f"),
            Some(rustix::fs::Uid::from_raw(1234)),
            Some(rustix::fs::Gid::from_raw(5678)),
            rustix::fs::AtFlags::empty(),
        )
        .unwrap();
    }
    fs::set_permissions(root.join("d/f"), fs::Permissions::from_mode(0o4750)).unwrap();
    rustix::fs::lsetxattr(
        root.join("d/f"),
        "user.note",
        b"v",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::set_permissions(root.join("d/sub"), fs::Permissions::from_mode(0o555)).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    for (p, t) in [
        ("d/f", 1_000),
        ("s", 2_000),
        ("p", 3_000),
        ("d/sub", 4_000),
        ("d", 5_000),
    ] {
        set_mtime(&root.join(p), t);
    }
}

#[test]
fn layer_entries_from_dir_reads_every_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("src");
    fs::create_dir(&root).unwrap();
    source_tree(&root);
    let entries = entries_from_dir(&root, &DirOptions::default()).unwrap();
    let summary: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            let kind = match &e.kind {
                EntryKind::File(Content::Path(p)) => {
                    format!("file {}", p.strip_prefix(&root).unwrap().display())
                }
                EntryKind::Hardlink { target } => format!("link {}", target.display()),
                EntryKind::Symlink { target } => format!("symlink {}", target.display()),
                other => format!("{other:?}"),
            };
            (e.path.display().to_string(), kind)
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("a-link", "file a-link"),
        ("d", "Dir"),
        ("d/f", "link a-link"),
        ("d/g", "link a-link"),
        ("d/sub", "Dir"),
        ("p", "Fifo"),
        ("s", "symlink d/f"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(summary, want); // the socket is skipped
    let get = |p: &str| entries.iter().find(|e| e.path == Path::new(p)).unwrap();
    assert_eq!(get("a-link").mode, 0o4750);
    assert_eq!(get("a-link").mtime, 1_000);
    assert_eq!(
        get("a-link").xattrs.get("user.note").map(Vec::as_slice),
        Some(&b"v"[..])
    );
    assert_eq!(get("d/sub").mode, 0o555);
    assert_eq!(get("d").mtime, 5_000);
    assert_eq!(get("p").mode, 0o640);
    if is_root() {
        assert_eq!((get("a-link").uid, get("a-link").gid), (1234, 5678));
    }

    let forced = entries_from_dir(
        &root,
        &DirOptions {
            owner: Owner::Force { uid: 7, gid: 8 },
            prefix: Some("app/x".into()),
            skip_xattrs: true,
            ..DirOptions::default()
        },
    )
    .unwrap();
    assert!(forced.iter().all(|e| (e.uid, e.gid) == (7, 8)));
    assert!(forced.iter().all(|e| e.xattrs.is_empty()));
    assert_eq!(forced[0].path, Path::new("app/x/a-link"));
    assert!(
        matches!(&forced[2].kind, EntryKind::Hardlink { target } if target == Path::new("app/x/a-link"))
    );
    let mapped = entries_from_dir(
        &root,
        &DirOptions {
            owner: Owner::Map(std::sync::Arc::new(|u, g| (u + 1, g + 2))),
            ..DirOptions::default()
        },
    )
    .unwrap();
    let orig = fs::symlink_metadata(root.join("p")).unwrap();
    let p = mapped.iter().find(|e| e.path == Path::new("p")).unwrap();
    assert_eq!((p.uid, p.gid), (orig.uid() + 1, orig.gid() + 2));
}

#[test]
fn layer_entries_from_overlay_upper_dir() {
    if !is_root() {
        eprintln!("not root: overlay upper dir whiteouts not tested");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let upper = tmp.path();
    fs::create_dir_all(upper.join("o/inner")).unwrap();
    fs::write(upper.join("o/inner/f"), b"f").unwrap();
    let wh = |p: &Path| {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .unwrap()
    };
    wh(&upper.join("gone"));
    // overlayfs may make whiteouts links to one shared inode: still whiteouts.
    fs::hard_link(upper.join("gone"), upper.join("o/gone-too")).unwrap();
    let set = |p: &Path, name: &str, v: &[u8]| {
        rustix::fs::lsetxattr(p, name, v, rustix::fs::XattrFlags::empty()).unwrap()
    };
    set(&upper.join("o"), "trusted.overlay.opaque", b"y");
    set(&upper.join("o/inner"), "trusted.overlay.opaque", b"x"); // not opaque
    set(&upper.join("o/inner/f"), "trusted.overlay.origin", b"...");
    set(&upper.join("o/inner/f"), "user.kept", b"1");
    let overlay = DirOptions {
        overlay: true,
        ..DirOptions::default()
    };
    let entries = entries_from_dir(upper, &overlay).unwrap();
    let summary: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            let kind = match &e.kind {
                EntryKind::File(_) => "File".to_owned(),
                other => format!("{other:?}"),
            };
            (e.path.display().to_string(), kind)
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("gone", "Whiteout"),
        ("o", "Dir"),
        ("o", "OpaqueDir"),
        ("o/gone-too", "Whiteout"),
        ("o/inner", "Dir"),
        ("o/inner/f", "File"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(summary, want);
    for e in &entries {
        assert!(
            e.xattrs.keys().all(|k| !k.starts_with("trusted.overlay.")),
            "{e:?}"
        );
    }
    let f = entries
        .iter()
        .find(|e| e.path == Path::new("o/inner/f"))
        .unwrap();
    assert_eq!(f.xattrs.keys().collect::<Vec<_>>(), ["user.kept"]);

    // Data that lives in a lower dir is refused.
    set(&upper.join("o/inner/f"), "trusted.overlay.metacopy", b"");
    assert!(matches!(
        entries_from_dir(upper, &overlay),
        Err(LayerError::UnsupportedOverlay { .. })
    ));
}

#[test]
fn layer_round_trip_dir_to_layer_to_dir() {
    for resolver in RESOLVERS {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let out = tmp.path().join("out");
        fs::create_dir(&src).unwrap();
        fs::create_dir(&out).unwrap();
        source_tree(&src);
        let before = entries_from_dir(&src, &DirOptions::default()).unwrap();
        let (tar, info) = write(before.clone(), plain(u64::MAX));
        let report = extract_with(&tar[..], &out, &ExtractOptions::default(), resolver).unwrap();
        assert!(report.xattr_failures.is_empty(), "{report:?}");
        assert_eq!(report.file_bytes, 7);
        let after = entries_from_dir(&out, &DirOptions::default()).unwrap();
        // Same entries but for where content is read from.
        let strip = |v: Vec<Entry>, root: &Path| -> Vec<Entry> {
            v.into_iter()
                .map(|mut e| {
                    if let EntryKind::File(Content::Path(p)) = &e.kind {
                        e.kind = EntryKind::File(Content::Bytes(fs::read(root.join(p)).unwrap()));
                    }
                    if !is_root() {
                        (e.uid, e.gid) = (0, 0);
                    }
                    e
                })
                .collect()
        };
        assert_eq!(strip(after.clone(), &out), strip(before, &src));
        // ... and the same layer.
        let (again, info2) = write(after, plain(u64::MAX));
        assert!(again == tar);
        assert_eq!(info, info2);
        let linked = fs::metadata(out.join("d/g")).unwrap();
        assert_eq!(
            linked.ino(),
            fs::metadata(out.join("a-link")).unwrap().ino()
        );
        assert_eq!(linked.nlink(), 3);
        // Applying the same layer again over its own result changes nothing.
        extract_with(&tar[..], &out, &ExtractOptions::default(), resolver).unwrap();
        let (third, _) = write(
            entries_from_dir(&out, &DirOptions::default()).unwrap(),
            plain(u64::MAX),
        );
        assert!(third == tar);
    }
}

#[test]
fn layer_extract_applies_pax_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let long = format!("{}/{}", "d".repeat(120), "n".repeat(140));
    let (tar, _) = write(
        vec![
            Entry::dir("d".repeat(120)).with_mode(0o700).with_mtime(77),
            Entry::file_bytes(&long, b"deep".to_vec())
                .with_owner(3_000_000, 3_000_001)
                .with_mtime(10_000_000_000)
                .with_xattr("user.a", b"1".to_vec()),
            Entry::symlink("l", "x".repeat(200)).with_mtime(88),
        ],
        plain(u64::MAX),
    );
    let report = extract(&tar[..], tmp.path(), &ExtractOptions::default()).unwrap();
    assert!(report.xattr_failures.is_empty());
    let m = fs::metadata(tmp.path().join(&long)).unwrap();
    assert_eq!(m.mtime(), 10_000_000_000);
    if is_root() {
        assert_eq!((m.uid(), m.gid()), (3_000_000, 3_000_001));
    }
    let d = fs::metadata(tmp.path().join("d".repeat(120))).unwrap();
    assert_eq!((d.mode() & 0o7777, d.mtime()), (0o700, 77));
    let l = fs::symlink_metadata(tmp.path().join("l")).unwrap();
    assert_eq!(l.mtime(), 88);
    assert_eq!(
        fs::read_link(tmp.path().join("l")).unwrap(),
        Path::new(&"x".repeat(200))
    );
}

#[test]
fn layer_extract_rejects_corrupt_archives() {
    let (mut tar, _) = write(vec![Entry::file_bytes("f", vec![7u8; 2000])], plain(0));
    let tmp = tempfile::tempdir().unwrap();
    // Truncated inside the data.
    assert!(matches!(
        extract(&tar[..1024], tmp.path(), &ExtractOptions::default()),
        Err(LayerError::Archive(_))
    ));
    // A bad checksum.
    tar[0] = b'g';
    assert!(matches!(
        extract(&tar[..], tmp.path(), &ExtractOptions::default()),
        Err(LayerError::Archive(_))
    ));
}

// ---- memory ----

const PROBE_ENV: &str = "IMGBUILD_LAYER_MEMORY_PROBE_MIB";

/// Runs [`memory_probe`] in a child process of this test binary (so no other test's
/// allocations count) and returns how much its peak RSS grew while writing the layer.
fn peak_growth_kib(mib: u64, compression: &str) -> u64 {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "layer::tests::memory_probe",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE_ENV, format!("{mib}:{compression}"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.split_once("PEAK_GROWTH_KIB=").map(|(_, v)| v))
        .unwrap_or_else(|| panic!("no probe output in {stdout}"))
        .trim()
        .parse()
        .unwrap()
}

fn status_kib(field: &str) -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

#[test]
#[ignore = "a helper run in a child process by the memory tests"]
fn memory_probe() {
    let Ok(spec) = std::env::var(PROBE_ENV) else {
        return;
    };
    let (mib, compression) = spec.split_once(':').unwrap();
    let mib: u64 = mib.parse().unwrap();
    let compression = match compression {
        "none" => Compression::None,
        "zstd" => Compression::Zstd,
        _ => Compression::Gzip,
    };
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("sparse");
    fs::File::create(&big).unwrap().set_len(mib << 20).unwrap();
    // Reset the peak to the current RSS, then measure the peak of writing the layer.
    fs::write("/proc/self/clear_refs", "5").unwrap();
    let base = status_kib("VmRSS:");
    let mut sink = CountingSink(0);
    let info = write_layer(
        &mut sink,
        LayerOptions {
            compression,
            epoch: 0,
        },
        [
            Entry::file_from("big", &big),
            Entry::file_bytes("small", b"s".to_vec()),
        ],
    )
    .unwrap();
    let peak = status_kib("VmHWM:");
    assert_eq!(info.uncompressed_size, (mib << 20) + 3 * 512 + 1024);
    assert_eq!(info.size, sink.0);
    println!("PEAK_GROWTH_KIB={}", peak.saturating_sub(base));
}

struct CountingSink(u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn layer_memory_is_flat_for_a_64_mib_file() {
    let growth = peak_growth_kib(64, "zstd");
    // Buffers are 1 MiB (file chunks) + 64 KiB (tar) + the compressor's state: far below the
    // file size.
    assert!(
        growth < 16 * 1024,
        "peak RSS grew {growth} KiB writing a 64 MiB file"
    );
}

#[test]
#[ignore = "writes a 2 GiB (sparse) file through gzip: slow in debug builds"]
fn layer_memory_is_flat_for_a_2_gib_file() {
    let growth = peak_growth_kib(2048, "gzip");
    assert!(
        growth < 16 * 1024,
        "peak RSS grew {growth} KiB writing a 2 GiB file"
    );
}

#[test]
fn layer_extract_streams_large_files_into_holes() {
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big");
    fs::File::create(&big).unwrap().set_len(8 << 20).unwrap();
    let mut tar = Vec::new();
    write_layer(&mut tar, plain(0), [Entry::file_from("big", &big)]).unwrap();
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let report = extract(Cursor::new(tar), &out, &ExtractOptions::default()).unwrap();
    assert_eq!(report.file_bytes, 8 << 20);
    let m = fs::metadata(out.join("big")).unwrap();
    assert_eq!(m.len(), 8 << 20);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "zeros were written, not skipped"
    );
}

#[test]
fn layer_entries_from_path_with_a_hardlink_tracker() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("src");
    fs::create_dir(&root).unwrap();
    source_tree(&root);
    // COPY of chosen files, in an order of the caller's: links are found whatever the order,
    // and the layer does not depend on it.
    let pairs = [
        ("d/g", "app/g"),
        ("d/f", "app/f"),
        ("s", "app/s"),
        ("sock", "app/sock"),
    ];
    let copy = |pairs: &mut dyn Iterator<Item = &(&str, &str)>| {
        let mut links = HardlinkTracker::new();
        let mut entries = Vec::new();
        for (src, dst) in pairs {
            let options = DirOptions::default();
            entries.extend(entries_from_path(&root.join(src), dst, &options, &mut links).unwrap());
        }
        entries
    };
    let forward = copy(&mut pairs.iter());
    assert_eq!(forward.len(), 3); // no socket
    assert!(
        matches!(&forward[1].kind, EntryKind::Hardlink { target } if target == Path::new("app/g"))
    );
    let backward = copy(&mut pairs.iter().rev());
    let (tar, _) = write(forward, plain(0));
    let (again, _) = write(backward, plain(0));
    assert!(again == tar, "the order of the calls changed the layer");
    let m = read_tar(&tar);
    assert_eq!((m[0].path.as_slice(), m[0].typeflag), (&b"app/f"[..], b'0'));
    assert_eq!(m[0].data, b"content");
    assert_eq!(m[1].link.as_deref(), Some(&b"app/f"[..]));

    // The tracker on entries made by hand.
    let mut links = HardlinkTracker::new();
    let meta = fs::symlink_metadata(root.join("d/f")).unwrap();
    let mut a = Entry::file_from("x/a", root.join("d/f"));
    let mut b = Entry::file_from("x/b", root.join("d/g"));
    links.track(&mut a, &meta);
    links.track(&mut b, &fs::symlink_metadata(root.join("d/g")).unwrap());
    assert!(matches!(a.kind, EntryKind::File(_)));
    assert_eq!(
        b.kind,
        EntryKind::Hardlink {
            target: "x/a".into()
        }
    );
}

#[test]
fn layer_content_that_changes_size_is_an_error() {
    // procfs files report size 0 but have content: as a file that grew after its header.
    let mut w = LayerWriter::new(Vec::new(), plain(0));
    w.add(Entry::file_from("status", "/proc/self/status"))
        .unwrap();
    assert!(matches!(
        w.finish(),
        Err(LayerError::FileChanged { expected: 0, .. })
    ));
}
