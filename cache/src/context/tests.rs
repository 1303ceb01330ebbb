//! Context scanning, index and selection tests, each on its own temporary directory.

use super::*;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, File, FileTimes};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tempfile::TempDir;

/// A time well in the past, so the racy rule does not apply.
fn old_time(offset: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_600_000_000 + offset)
}

fn write(root: &Path, rel: &str, content: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, content).unwrap();
}

fn set_mtime(path: &Path, t: SystemTime) {
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_times(FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
}

/// Sets every regular file's mtime below `root` to an old time.
fn age_all(root: &Path) {
    for entry in fs::read_dir(root).unwrap() {
        let entry = entry.unwrap();
        let ft = entry.file_type().unwrap();
        if ft.is_dir() {
            age_all(&entry.path());
        } else if ft.is_file() {
            set_mtime(&entry.path(), old_time(0));
        }
    }
}

fn matcher(patterns: &[&str]) -> PatternMatcher {
    PatternMatcher::new(patterns).unwrap()
}

fn scan(root: &Path, patterns: Option<&[&str]>, index: &mut ContextIndex) -> ContextSnapshot {
    let m = patterns.map(matcher);
    ContextSnapshot::scan(root, m.as_ref(), index).unwrap()
}

fn scan_fresh(root: &Path, patterns: Option<&[&str]>) -> ContextSnapshot {
    scan(root, patterns, &mut ContextIndex::new())
}

fn paths(snap: &ContextSnapshot) -> Vec<&str> {
    snap.iter().map(|e| e.path.as_str()).collect()
}

fn selected<'a>(snap: &'a ContextSnapshot, source: &str) -> Vec<&'a str> {
    snap.select(source)
        .unwrap_or_else(|e| panic!("select {source:?}: {e}"))
        .entries()
        .map(|e| e.path.as_str())
        .collect()
}

fn digest(snap: &ContextSnapshot, source: &str) -> ContentHash {
    let sel = snap.select(source).unwrap();
    snap.digest_of(&sel, DigestOptions::default())
}

// ---------------------------------------------------------------------------------------------
// .dockerignore
// ---------------------------------------------------------------------------------------------

const TREE: &[&str] = &[
    "Dockerfile",
    ".dockerignore",
    "a.txt",
    "b.md",
    "src/main.rs",
    "src/lib.rs",
    "src/gen/x.rs",
    "docs/readme.md",
    "docs/img/logo.png",
    "node_modules/pkg/index.js",
    "node_modules/pkg/README.md",
    "keep/x.txt",
    "keep/sub/y.txt",
    "target/debug/app",
];

fn fixture_tree() -> TempDir {
    let dir = TempDir::new().unwrap();
    for rel in TREE {
        write(dir.path(), rel, rel.as_bytes());
    }
    fs::create_dir(dir.path().join("empty")).unwrap();
    dir
}

/// Every file and directory of the fixture, relative.
fn all_fixture_paths() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for rel in TREE {
        let mut acc = String::new();
        for part in rel.split('/') {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            out.insert(acc.clone());
        }
    }
    out.insert("empty".to_owned());
    out
}

/// The walk keeps exactly what fsutil's walk sends: a path whose chained verdict
/// (`PatternMatcher::is_excluded`) is "kept", plus the directories needed to reach kept
/// paths. Checked for a table of pattern lists against the parser's reference verdict.
#[test]
fn context_exclusions_follow_the_walkers_verdict() {
    let tree = fixture_tree();
    let table: &[(&[&str], &[&str])] = &[
        (&[], &[]),
        (
            &["*", "!keep/**"],
            &["keep", "keep/sub", "keep/sub/y.txt", "keep/x.txt"],
        ),
        (&["*"], &[]),
        (&["**/*.md"], &[]),
        (&["node_modules", "target"], &[]),
        (&["docs", "!docs/img"], &[]),
        (&["src/**", "!src/gen"], &[]),
        (&["**", "!**/*.rs"], &[]),
        (&["*.txt", "!a.txt"], &[]),
        (&["*/b", "!a"], &[]),
        (&["Dockerfile", ".dockerignore"], &[]),
        (&["empty"], &[]),
        (&["**/x.*"], &[]),
        (&["keep/*", "!keep/sub/*"], &[]),
    ];
    for (patterns, expected) in table {
        let m = matcher(patterns);
        let snap = ContextSnapshot::scan(tree.path(), Some(&m), &mut ContextIndex::new()).unwrap();
        let got: BTreeSet<String> = snap.iter().map(|e| e.path.clone()).collect();

        let all = all_fixture_paths();
        let kept_alone: BTreeSet<&String> =
            all.iter().filter(|p| !m.is_excluded(p).unwrap()).collect();
        let want: BTreeSet<String> = all
            .iter()
            .filter(|p| {
                kept_alone.contains(p)
                    || kept_alone.iter().any(|k| {
                        k.len() > p.len()
                            && k.starts_with(p.as_str())
                            && k.as_bytes()[p.len()] == b'/'
                    })
            })
            .cloned()
            .collect();
        assert_eq!(got, want, "patterns {patterns:?}");
        if !expected.is_empty() {
            assert_eq!(paths(&snap), *expected, "patterns {patterns:?}");
        }
        // Excluded paths are reported for error hints, and none of them is kept.
        for x in snap.excluded() {
            assert!(snap.get(x).is_none(), "{x} both kept and excluded");
        }
    }
}

#[test]
fn context_dockerfile_and_dockerignore_are_ordinary_files() {
    let tree = fixture_tree();
    let snap = scan_fresh(tree.path(), Some(&["node_modules"]));
    assert!(snap.get("Dockerfile").is_some());
    assert!(snap.get(".dockerignore").is_some());
    assert!(snap.get("node_modules").is_none());
    assert!(snap.is_excluded("node_modules/pkg/index.js"));
}

fn big_tree() -> TempDir {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "Dockerfile", b"FROM scratch\n");
    write(dir.path(), "keep/a.txt", b"a");
    for i in 0..1000 {
        write(dir.path(), &format!("big/f{i:04}.txt"), b"x");
    }
    write(dir.path(), "big/README.md", b"readme");
    dir
}

#[test]
fn context_excluded_directory_is_pruned_when_nothing_can_be_reincluded() {
    let tree = big_tree();
    for patterns in [
        &["big"][..],
        &["big/"][..],
        &["*", "!keep/**"][..],
        &["big", "!keep/a.txt"][..],
        &["**/big"][..],
    ] {
        let snap = scan_fresh(tree.path(), Some(patterns));
        let stats = snap.stats();
        assert!(
            stats.entries_stated < 10,
            "{patterns:?}: {} entries stated, the excluded directory was walked",
            stats.entries_stated
        );
        assert!(snap.get("big").is_none());
        assert!(snap.excluded().iter().any(|x| x == "big"), "{patterns:?}");
        assert_eq!(
            stats.files_hashed,
            snap.iter().filter(|e| e.kind == EntryKind::File).count() as u64
        );
    }
}

#[test]
fn context_excluded_directory_is_walked_when_an_exclusion_may_reinclude() {
    let tree = big_tree();
    // A prefix exception below the directory.
    let snap = scan_fresh(tree.path(), Some(&["big", "!big/README.md"]));
    assert!(snap.stats().entries_stated > 1000);
    assert_eq!(
        paths(&snap),
        ["Dockerfile", "big", "big/README.md", "keep", "keep/a.txt"]
    );
    // A non-prefix exception anywhere forbids pruning (fsutil's rule).
    let snap = scan_fresh(tree.path(), Some(&["big", "!**/*.md"]));
    assert!(snap.stats().entries_stated > 1000);
    assert_eq!(
        paths(&snap),
        ["Dockerfile", "big", "big/README.md", "keep", "keep/a.txt"]
    );
    // Walked, but nothing re-included: the directory is absent.
    let snap = scan_fresh(tree.path(), Some(&["big", "!**/*.nothing"]));
    assert!(snap.stats().entries_stated > 1000);
    assert!(snap.get("big").is_none());
}

#[test]
fn context_bad_ignore_pattern_fails_the_scan_when_evaluated() {
    let tree = fixture_tree();
    // `[Local-Only]` is an invalid range in Go's regexp: accepted by New, fails when matched.
    let m = PatternMatcher::new(["[Local-Only]"]).unwrap();
    let err = ContextSnapshot::scan(tree.path(), Some(&m), &mut ContextIndex::new()).unwrap_err();
    assert!(matches!(err, ContextError::Ignore { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Entry kinds
// ---------------------------------------------------------------------------------------------

#[test]
fn context_symlinks_are_recorded_not_followed() {
    let outside = TempDir::new().unwrap();
    write(outside.path(), "secret", b"do not read");
    let tree = TempDir::new().unwrap();
    write(tree.path(), "a.txt", b"a");
    symlink("/etc/passwd", tree.path().join("abs")).unwrap();
    symlink(outside.path().join("secret"), tree.path().join("out_file")).unwrap();
    symlink(outside.path(), tree.path().join("out_dir")).unwrap();
    symlink("../../escape", tree.path().join("rel_escape")).unwrap();
    symlink("a.txt", tree.path().join("inside")).unwrap();
    symlink("nowhere", tree.path().join("dangling")).unwrap();

    let snap = scan_fresh(tree.path(), None);
    assert_eq!(
        paths(&snap),
        [
            "a.txt",
            "abs",
            "dangling",
            "inside",
            "out_dir",
            "out_file",
            "rel_escape"
        ]
    );
    let link = |p: &str| {
        let e = snap.get(p).unwrap();
        assert_eq!(e.kind, EntryKind::Symlink, "{p}");
        assert!(e.hash.is_none());
        e.link_target.clone().unwrap()
    };
    assert_eq!(link("abs"), "/etc/passwd");
    assert_eq!(
        link("out_file"),
        outside.path().join("secret").to_str().unwrap()
    );
    assert_eq!(link("out_dir"), outside.path().to_str().unwrap());
    assert_eq!(link("rel_escape"), "../../escape");
    assert_eq!(link("inside"), "a.txt");
    assert_eq!(snap.get("abs").unwrap().size, "/etc/passwd".len() as u64);
    // Only a.txt was read; nothing behind out_dir was listed.
    assert_eq!(snap.stats().files_hashed, 1);
    assert_eq!(snap.stats().bytes_hashed, 1);
    assert_eq!(snap.stats().dirs_read, 1);
}

#[test]
fn context_special_files_are_recorded_and_flagged() {
    let tree = TempDir::new().unwrap();
    write(tree.path(), "a.txt", b"a");
    let fifo = std::ffi::CString::new(tree.path().join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo has no other preconditions.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    let _listener = std::os::unix::net::UnixListener::bind(tree.path().join("sock")).unwrap();

    let snap = scan_fresh(tree.path(), None);
    let kinds: Vec<(&str, EntryKind)> = snap.iter().map(|e| (e.path.as_str(), e.kind)).collect();
    assert_eq!(
        kinds,
        [
            ("a.txt", EntryKind::File),
            ("fifo", EntryKind::Fifo),
            ("sock", EntryKind::Socket)
        ]
    );
    let specials: Vec<&str> = snap.specials().map(|e| e.path.as_str()).collect();
    assert_eq!(specials, ["fifo", "sock"]);
    assert_eq!(snap.get("fifo").unwrap().mode, 0o640);
    assert_eq!(snap.stats().files_hashed, 1);
}

#[test]
fn context_modes_sizes_and_hashes() {
    let tree = TempDir::new().unwrap();
    write(tree.path(), "run.sh", b"#!/bin/sh\n");
    write(tree.path(), "d/f", b"");
    fs::set_permissions(
        tree.path().join("run.sh"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    fs::set_permissions(tree.path().join("d"), fs::Permissions::from_mode(0o1750)).unwrap();
    let snap = scan_fresh(tree.path(), None);
    let run = snap.get("run.sh").unwrap();
    assert_eq!(run.mode, 0o4755);
    assert_eq!(run.size, 10);
    assert_eq!(run.hash, Some(blake3::hash(b"#!/bin/sh\n")));
    let d = snap.get("d").unwrap();
    assert_eq!(
        (d.kind, d.mode, d.size, d.hash),
        (EntryKind::Dir, 0o1750, 0, None)
    );
    assert_eq!(snap.get("d/f").unwrap().hash, Some(blake3::hash(b"")));
    // get() cleans its argument.
    assert_eq!(snap.get("/d/../run.sh").unwrap().path, "run.sh");
    assert_eq!(snap.get("./d/f/").unwrap().path, "d/f");
}

#[test]
fn context_large_files_are_streamed_with_the_same_hash() {
    let tree = TempDir::new().unwrap();
    let content: Vec<u8> = (0..(3 << 20) + 12345)
        .map(|i: u32| (i % 251) as u8)
        .collect();
    write(tree.path(), "big.bin", &content);
    let snap = scan_fresh(tree.path(), None);
    let e = snap.get("big.bin").unwrap();
    assert_eq!(e.hash, Some(blake3::hash(&content)));
    assert_eq!(e.size, content.len() as u64);
    assert_eq!(snap.stats().bytes_hashed, content.len() as u64);
}

#[test]
fn context_non_utf8_names_fail_unless_excluded() {
    let tree = TempDir::new().unwrap();
    write(tree.path(), "a.txt", b"a");
    fs::write(tree.path().join(OsStr::from_bytes(b"bad\xff.tmp")), b"x").unwrap();
    let err = ContextSnapshot::scan(tree.path(), None, &mut ContextIndex::new()).unwrap_err();
    assert!(matches!(err, ContextError::NonUtf8 { .. }), "{err}");
    assert!(err.to_string().contains(".dockerignore"), "{err}");
    let snap = scan_fresh(tree.path(), Some(&["*.tmp"]));
    assert_eq!(paths(&snap), ["a.txt"]);
}

#[test]
fn context_root_must_be_a_directory() {
    let tree = TempDir::new().unwrap();
    write(tree.path(), "f", b"");
    let err =
        ContextSnapshot::scan(&tree.path().join("f"), None, &mut ContextIndex::new()).unwrap_err();
    assert!(matches!(err, ContextError::NotADirectory { .. }));
    let err = ContextSnapshot::scan(&tree.path().join("missing"), None, &mut ContextIndex::new())
        .unwrap_err();
    assert!(matches!(err, ContextError::Io { .. }));
}

// ---------------------------------------------------------------------------------------------
// Index
// ---------------------------------------------------------------------------------------------

fn many_files(n: usize) -> TempDir {
    let dir = TempDir::new().unwrap();
    for i in 0..n {
        write(
            dir.path(),
            &format!("d{}/f{i}.txt", i % 7),
            format!("content {i}").as_bytes(),
        );
    }
    age_all(dir.path());
    dir
}

#[test]
fn context_unchanged_files_are_not_read_again() {
    let tree = many_files(50);
    let store = TempDir::new().unwrap();
    let idx_path = store.path().join(index_file_name(tree.path()));

    let mut index = ContextIndex::load(&idx_path);
    assert_eq!(index.load_status(), &LoadStatus::Missing);
    let first = scan(tree.path(), None, &mut index);
    assert_eq!(first.stats().files_hashed, 50);
    assert!(index.is_dirty());
    assert_eq!(index.len(), 50);
    index.save(&idx_path, store.path()).unwrap();

    // Same process, same index.
    let again = scan(tree.path(), None, &mut index);
    assert_eq!(again.stats().files_hashed, 0);
    assert_eq!(again.stats().index_hits, 50);

    // A new process: the index from disk.
    let mut loaded = ContextIndex::load(&idx_path);
    assert_eq!(loaded.load_status(), &LoadStatus::Loaded(50));
    let second = scan(tree.path(), None, &mut loaded);
    assert_eq!(
        second.stats().files_hashed,
        0,
        "no unchanged file may be read again"
    );
    assert_eq!(second.stats().bytes_hashed, 0);
    assert!(!loaded.is_dirty(), "a no-op rescan leaves nothing to save");
    assert_eq!(second.entries(), first.entries());
    assert_eq!(digest(&second, "."), digest(&first, "."));

    // Saving is deterministic.
    let other = store.path().join("copy.idx");
    loaded.save(&other, store.path()).unwrap();
    assert_eq!(fs::read(&other).unwrap(), fs::read(&idx_path).unwrap());
}

#[test]
fn context_changed_stat_data_causes_a_rehash() {
    let tree = many_files(20);
    let mut index = ContextIndex::new();
    let first = scan(tree.path(), None, &mut index);
    assert_eq!(first.stats().files_hashed, 20);

    // mtime only (content unchanged): read again, same digest.
    set_mtime(&tree.path().join("d0/f0.txt"), old_time(60));
    let touched = scan(tree.path(), None, &mut index);
    assert_eq!(touched.stats().files_hashed, 1);
    assert_eq!(digest(&touched, "."), digest(&first, "."));

    // New content of another size.
    fs::write(tree.path().join("d1/f1.txt"), b"longer content").unwrap();
    set_mtime(&tree.path().join("d1/f1.txt"), old_time(0));
    let changed = scan(tree.path(), None, &mut index);
    assert_eq!(changed.stats().files_hashed, 1);
    assert_eq!(
        changed.get("d1/f1.txt").unwrap().hash,
        Some(blake3::hash(b"longer content"))
    );
    assert_ne!(digest(&changed, "."), digest(&first, "."));

    // A removed file leaves the index; a new one is read.
    fs::remove_file(tree.path().join("d2/f2.txt")).unwrap();
    write(tree.path(), "new.txt", b"new");
    let moved = scan(tree.path(), None, &mut index);
    assert_eq!(moved.stats().files_hashed, 1);
    assert_eq!(index.len(), 20);
}

#[test]
fn context_racy_files_are_read_again() {
    let tree = TempDir::new().unwrap();
    // Written just now: its mtime is within the last second of the scan's start.
    write(tree.path(), "fresh.txt", b"version 1");
    write(tree.path(), "old.txt", b"old");
    set_mtime(&tree.path().join("old.txt"), old_time(0));
    let store = TempDir::new().unwrap();
    let idx_path = store.path().join("ctx.idx");

    let mut index = ContextIndex::new();
    let first = scan(tree.path(), None, &mut index);
    assert_eq!(first.stats().files_hashed, 2);
    index.save(&idx_path, store.path()).unwrap();

    // The racy flag survives a save and load: the fresh file is read again, the old one not.
    let mut loaded = ContextIndex::load(&idx_path);
    let second = scan(tree.path(), None, &mut loaded);
    assert_eq!(second.stats().files_hashed, 1);

    // Same size, new content, mtime forced back to the recorded value: caught.
    let recorded = first.get("fresh.txt").unwrap().stat.mtime;
    fs::write(tree.path().join("fresh.txt"), b"version 2").unwrap();
    set_mtime(
        &tree.path().join("fresh.txt"),
        UNIX_EPOCH + Duration::new(recorded.sec as u64, recorded.nsec),
    );
    let third = scan(tree.path(), None, &mut loaded);
    assert_eq!(
        third.get("fresh.txt").unwrap().hash,
        Some(blake3::hash(b"version 2"))
    );
}

/// The racy rule in isolation: a record whose stat data equals the file's exactly (as when a
/// rewrite lands in the same timestamp tick, so even ctime does not move) but whose hash is
/// stale. Trusted, it would be used unread; flagged racy, the file is read.
#[test]
fn context_racy_rule_is_what_catches_identical_stat_data() {
    let tree = TempDir::new().unwrap();
    write(tree.path(), "f.txt", b"new content");
    let meta = fs::symlink_metadata(tree.path().join("f.txt")).unwrap();
    let stale = |racy: bool| {
        let mut index = ContextIndex::new();
        index.records_mut().insert(
            Box::from("f.txt"),
            index::FileRecord {
                stat: index::StatKey::of(&meta),
                hash: *blake3::hash(b"old content").as_bytes(),
                racy,
            },
        );
        index
    };

    let mut trusted = stale(false);
    let snap = scan(tree.path(), None, &mut trusted);
    assert_eq!(snap.stats().files_hashed, 0);
    assert_eq!(
        snap.get("f.txt").unwrap().hash,
        Some(blake3::hash(b"old content"))
    );

    let mut racy = stale(true);
    let snap = scan(tree.path(), None, &mut racy);
    assert_eq!(snap.stats().files_hashed, 1);
    assert_eq!(
        snap.get("f.txt").unwrap().hash,
        Some(blake3::hash(b"new content"))
    );
    // The file was written just now, so the new record is racy again.
    assert!(racy.get("f.txt").unwrap().racy);
}

#[test]
fn context_unusable_index_files_start_empty() {
    let tree = many_files(10);
    let store = TempDir::new().unwrap();
    let good = store.path().join("good.idx");
    let mut index = ContextIndex::new();
    scan(tree.path(), None, &mut index);
    index.save(&good, store.path()).unwrap();
    let bytes = fs::read(&good).unwrap();

    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x40;
    let mut other_version = bytes.clone();
    other_version[8] = 99;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        (
            "garbage",
            b"this is not an index at all, not even close....................".to_vec(),
        ),
        ("truncated", bytes[..bytes.len() - 40].to_vec()),
        ("flipped", flipped),
        ("version", other_version),
        ("json", br#"{"version": 1, "entries": []}"#.to_vec()),
    ];
    for (name, content) in cases {
        let path = store.path().join(format!("{name}.idx"));
        fs::write(&path, &content).unwrap();
        let mut loaded = ContextIndex::load(&path);
        assert!(loaded.is_empty(), "{name}");
        assert!(
            matches!(loaded.load_status(), LoadStatus::Discarded(_)),
            "{name}"
        );
        assert!(
            loaded.is_dirty(),
            "{name}: an unusable file should be rewritten"
        );
        // And a scan with it works, reading everything.
        let snap = scan(tree.path(), None, &mut loaded);
        assert_eq!(snap.stats().files_hashed, 10, "{name}");
    }
    // A directory where the file should be: also empty, no error.
    let dir_path = store.path().join("dir.idx");
    fs::create_dir(&dir_path).unwrap();
    assert!(matches!(
        ContextIndex::load(&dir_path).load_status(),
        LoadStatus::Discarded(_)
    ));

    assert_eq!(
        ContextIndex::load(&good).load_status(),
        &LoadStatus::Loaded(10)
    );
}

#[test]
fn context_index_file_name_is_stable_hex() {
    let a = index_file_name(Path::new("/home/u/project"));
    assert_eq!(a, index_file_name(Path::new("/home/u/project")));
    assert_ne!(a, index_file_name(Path::new("/home/u/project2")));
    assert_eq!(a.len(), 64 + 4);
    assert!(a.ends_with(".idx"));
    assert!(
        a[..64]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
}

#[test]
fn context_parallel_and_serial_scans_agree() {
    let tree = TempDir::new().unwrap();
    for i in 0..2000 {
        let rel = format!("l{}/m{}/f{i}.dat", i % 5, i % 13);
        write(
            tree.path(),
            &rel,
            format!("{i}").repeat(i % 97 + 1).as_bytes(),
        );
    }
    age_all(tree.path());
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut index = ContextIndex::new();
            let snap = scan(tree.path(), None, &mut index);
            (snap, index)
        })
    };
    let (serial, serial_index) = run(1);
    let (parallel, parallel_index) = run(8);
    assert_eq!(serial.stats().files_hashed, 2000);
    assert_eq!(parallel.stats().files_hashed, 2000);
    assert_eq!(serial.entries(), parallel.entries());
    assert_eq!(digest(&serial, "."), digest(&parallel, "."));
    let store = TempDir::new().unwrap();
    serial_index
        .save(&store.path().join("s"), store.path())
        .unwrap();
    parallel_index
        .save(&store.path().join("p"), store.path())
        .unwrap();
    assert_eq!(
        fs::read(store.path().join("s")).unwrap(),
        fs::read(store.path().join("p")).unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// Selection
// ---------------------------------------------------------------------------------------------

fn selection_tree() -> TempDir {
    let dir = TempDir::new().unwrap();
    for rel in [
        "a.txt",
        "b.txt",
        "c.md",
        "abc",
        "axc",
        "a/c",
        "a*b",
        "axb",
        "ab",
        "dir/x",
        "dir/y.txt",
        "dir/sub/z",
        "dir/q.txt",
        "bdir/k",
        "other/q.txt",
    ] {
        write(dir.path(), rel, rel.as_bytes());
    }
    symlink("a.txt", dir.path().join("link.txt")).unwrap();
    symlink("dir", dir.path().join("dirlink")).unwrap();
    symlink("/dir/sub", dir.path().join("abslink")).unwrap();
    symlink("nowhere", dir.path().join("dangling")).unwrap();
    symlink("/etc/passwd", dir.path().join("hostlink")).unwrap();
    dir
}

#[test]
fn context_select_wildcards() {
    let tree = selection_tree();
    let snap = scan_fresh(tree.path(), Some(&["other"]));
    let cases: &[(&str, &[&str])] = &[
        // link.txt -> a.txt is matched and followed.
        ("*.txt", &["a.txt", "b.txt", "a.txt"]),
        (
            "dir/*",
            &["dir/q.txt", "dir/sub", "dir/sub/z", "dir/x", "dir/y.txt"],
        ),
        ("dir/*.txt", &["dir/q.txt", "dir/y.txt"]),
        ("a?c", &["abc", "axc"]),
        (
            "[ab]*",
            &[
                "a",
                "a/c",
                "a*b",
                "a.txt",
                "ab",
                "abc",
                "abslink-target",
                "axb",
                "axc",
                "b.txt",
                "bdir",
                "bdir/k",
            ],
        ),
        (r"a\*b", &["a*b"]),
        ("a*b", &["a*b", "ab", "axb"]),
        ("*/c", &["a/c"]),
        ("d*/s*", &["dir/sub", "dir/sub/z"]),
        ("dirlink/*.txt", &["dir/q.txt", "dir/y.txt"]),
        ("/../*.md", &["c.md"]),
        ("*.none", &[]),
    ];
    for (source, want) in cases {
        let got = selected(&snap, source);
        let want: Vec<&str> = want
            .iter()
            .flat_map(|w| match *w {
                // abslink -> /dir/sub, followed as a wildcard match.
                "abslink-target" => vec!["dir/sub", "dir/sub/z"],
                w => vec![w],
            })
            .collect();
        assert_eq!(got, want, "source {source:?}");
    }
    // Item names are the source-side paths; symlinks are resolved.
    let sel = snap.select("*.txt").unwrap();
    let names: Vec<(&str, &str)> = sel
        .items()
        .iter()
        .map(|i| (i.path.as_str(), i.resolved.unwrap().path.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("a.txt", "a.txt"),
            ("b.txt", "b.txt"),
            ("link.txt", "a.txt")
        ]
    );
    assert!(sel.is_wildcard());
    let sel = snap.select("dirlink/*.txt").unwrap();
    assert_eq!(sel.items()[0].path, "dirlink/q.txt");
}

#[test]
fn context_select_literal_paths() {
    let tree = selection_tree();
    let snap = scan_fresh(tree.path(), Some(&["other"]));
    assert_eq!(selected(&snap, "a.txt"), ["a.txt"]);
    assert_eq!(selected(&snap, "/a.txt"), ["a.txt"]);
    assert_eq!(selected(&snap, "../../a.txt"), ["a.txt"]);
    assert_eq!(selected(&snap, "./dir/../a.txt"), ["a.txt"]);
    assert_eq!(
        selected(&snap, "dir/"),
        [
            "dir",
            "dir/q.txt",
            "dir/sub",
            "dir/sub/z",
            "dir/x",
            "dir/y.txt"
        ]
    );
    assert_eq!(selected(&snap, "dirlink/sub"), ["dir/sub", "dir/sub/z"]);
    assert_eq!(selected(&snap, "link.txt"), ["a.txt"]);
    assert_eq!(selected(&snap, "abslink"), ["dir/sub", "dir/sub/z"]);
    assert_eq!(selected(&snap, "a/c"), ["a/c"]);
    assert_eq!(selected(&snap, "."), paths(&snap));
    assert_eq!(selected(&snap, "/"), paths(&snap));
    let sel = snap.select("link.txt").unwrap();
    assert_eq!(sel.items()[0].path, "link.txt");
    assert!(!sel.is_wildcard());
    assert!(snap.select(".").unwrap().items()[0].resolved.is_none());
}

#[test]
fn context_select_errors_are_helpful() {
    let tree = selection_tree();
    let snap = scan_fresh(tree.path(), Some(&["other"]));
    let err = |source: &str| snap.select(source).unwrap_err();

    let e = err("missing.txt");
    let text = e.to_string();
    assert!(
        text.starts_with("failed to compute cache key: \"/missing.txt\": not found"),
        "{text}"
    );
    assert!(text.contains("relative to the context root"), "{text}");

    let text = err("../missing.txt").to_string();
    assert!(text.contains("cannot leave the build context"), "{text}");
    assert!(text.contains("\"/missing.txt\""), "{text}");

    let text = err("other/q.txt").to_string();
    assert!(text.contains("excluded by .dockerignore"), "{text}");

    let text = err("dangling").to_string();
    assert!(text.contains("symbolic link to \"nowhere\""), "{text}");
    let text = err("hostlink").to_string();
    assert!(text.contains("symbolic link to \"/etc/passwd\""), "{text}");

    let text = err("a.txt/x").to_string();
    assert!(text.contains("is not a directory"), "{text}");

    // The directory part of a wildcard must exist (BuildKit fails there too)...
    let text = err("nodir/*.txt").to_string();
    assert!(text.contains("\"/nodir\": not found"), "{text}");
    assert!(text.contains("directory part"), "{text}");
    // ... but a wildcard matching nothing is empty, unless asked to fail.
    assert!(snap.select("*.none").unwrap().is_empty());
    let strict = SelectOptions {
        allow_empty_wildcard: false,
    };
    let text = snap.select_with("*.none", &strict).unwrap_err().to_string();
    assert!(text.starts_with("no source files were specified"), "{text}");

    assert!(matches!(err("[ab"), SelectError::BadPattern { .. }));
    assert!(matches!(err(r"a\*c"), SelectError::NotFound { .. }));

    // A symlink loop.
    let looped = TempDir::new().unwrap();
    symlink("b", looped.path().join("a")).unwrap();
    symlink("a", looped.path().join("b")).unwrap();
    let snap = scan_fresh(looped.path(), None);
    assert!(matches!(
        snap.select("a").unwrap_err(),
        SelectError::TooManySymlinks { .. }
    ));
}

// ---------------------------------------------------------------------------------------------
// Digests
// ---------------------------------------------------------------------------------------------

#[test]
fn context_digest_is_stable_and_ignores_mtime_and_owner() {
    let tree = fixture_tree();
    symlink("a.txt", tree.path().join("link")).unwrap();
    let first = scan_fresh(tree.path(), None);
    let d_all = digest(&first, ".");
    let d_src = digest(&first, "src");
    assert_eq!(digest(&scan_fresh(tree.path(), None), "."), d_all);

    // mtime and owner changes do not change any digest.
    set_mtime(&tree.path().join("src/main.rs"), old_time(1234));
    let owner_changed =
        std::os::unix::fs::chown(tree.path().join("src/lib.rs"), Some(4321), Some(4321)).is_ok();
    let rescanned = scan_fresh(tree.path(), None);
    if owner_changed {
        assert_eq!(rescanned.get("src/lib.rs").unwrap().stat.uid, 4321);
    }
    assert_ne!(
        rescanned.get("src/main.rs").unwrap().stat.mtime,
        first.get("src/main.rs").unwrap().stat.mtime
    );
    assert_eq!(digest(&rescanned, "."), d_all);
    assert_eq!(digest(&rescanned, "src"), d_src);

    // Permission bits count, unless left out (COPY --chmod).
    fs::set_permissions(
        tree.path().join("src/main.rs"),
        fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let chmodded = scan_fresh(tree.path(), None);
    assert_ne!(digest(&chmodded, "src"), d_src);
    let no_mode = DigestOptions {
        include_mode: false,
    };
    let sel_before = first.select("src").unwrap();
    let sel_after = chmodded.select("src").unwrap();
    assert_eq!(
        first.digest_of(&sel_before, no_mode),
        chmodded.digest_of(&sel_after, no_mode)
    );

    // Content, names and link targets count.
    fs::write(tree.path().join("src/lib.rs"), b"changed").unwrap();
    assert_ne!(
        digest(&scan_fresh(tree.path(), None), "src"),
        digest(&chmodded, "src")
    );
    fs::remove_file(tree.path().join("link")).unwrap();
    symlink("b.md", tree.path().join("link")).unwrap();
    let relinked = scan_fresh(tree.path(), Some(&["src"]));
    let before = scan_fresh(tree.path(), Some(&["src"]));
    assert_eq!(digest(&relinked, "."), digest(&before, "."));
    fs::rename(tree.path().join("b.md"), tree.path().join("c.md")).unwrap();
    assert_ne!(
        digest(&scan_fresh(tree.path(), Some(&["src", "link"])), "."),
        {
            fs::rename(tree.path().join("c.md"), tree.path().join("b.md")).unwrap();
            digest(&scan_fresh(tree.path(), Some(&["src", "link"])), ".")
        }
    );
}

#[test]
fn context_digest_distinguishes_selections() {
    let tree = TempDir::new().unwrap();
    write(tree.path(), "a.txt", b"same");
    write(tree.path(), "b.txt", b"same");
    write(tree.path(), "d/a.txt", b"same");
    let snap = scan_fresh(tree.path(), None);
    let all: std::collections::HashSet<ContentHash> =
        ["a.txt", "b.txt", "d", "d/a.txt", "*.txt", "."]
            .iter()
            .map(|s| digest(&snap, s))
            .collect();
    assert_eq!(all.len(), 6, "each selection has its own digest");
    // Equal selections, equal digests.
    assert_eq!(digest(&snap, "d/a.txt"), digest(&snap, "/d/./a.txt"));
    assert_eq!(digest(&snap, "[a]*.txt"), digest(&snap, "a*.txt"));
}

// ---------------------------------------------------------------------------------------------
// Go's path.Match against the shared patternmatcher table
// ---------------------------------------------------------------------------------------------

/// `patternmatcher/patternmatcher_tests.json` → `filepath_match`: Go's filepath.Match table,
/// run through patternmatcher's deprecated `Matches`, which also tries the parent directory
/// with as many components as the pattern. Our `path.Match` plus that parent rule must give
/// the same answers.
#[test]
fn context_glob_matches_the_go_table() {
    let shared = match std::env::var_os("IMGBUILD_SHARED") {
        Some(d) => std::path::PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    };
    let file = shared.join("conformance/buildkit/patternmatcher/patternmatcher_tests.json");
    let text = fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!(
            "reference data missing: {} ({e}); set IMGBUILD_SHARED",
            file.display()
        )
    });
    let data: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = data["filepath_match"]["cases"].as_array().unwrap();
    let mut ran = 0;
    for case in cases {
        let pattern = case["pattern"].as_str().unwrap();
        let text = case["text"].as_str().unwrap();
        let want_err = !case["error"].is_null();
        let want = case["match"].as_bool().unwrap();
        let got = glob::path_match(pattern, text);
        if want_err {
            assert!(got.is_err(), "{pattern:?} vs {text:?}: want an error");
        } else {
            let direct = got.unwrap();
            let dirs = pattern.split('/').count();
            let parts: Vec<&str> = text.split('/').collect();
            let parent =
                parts.len() > dirs && glob::path_match(pattern, &parts[..dirs].join("/")).unwrap();
            assert_eq!(direct || parent, want, "{pattern:?} vs {text:?}");
        }
        ran += 1;
    }
    assert_eq!(ran, 54, "the table should have 54 cases");
}

// ---------------------------------------------------------------------------------------------
// Timing (run by hand: cargo test --release -p imgbuild-cache context_timing -- --ignored
// --nocapture). Prints numbers; asserts nothing about time.
// ---------------------------------------------------------------------------------------------

#[test]
#[ignore]
fn context_timing_10k_files() {
    use std::time::Instant;
    let tree = TempDir::new().unwrap();
    for i in 0..10_000 {
        let rel = format!("pkg{}/mod{}/file{i}.rs", i % 20, i % 50);
        write(
            tree.path(),
            &rel,
            format!("fn f{i}() {{}}\n").repeat(8).as_bytes(),
        );
    }
    age_all(tree.path());
    let store = TempDir::new().unwrap();
    let idx = store.path().join("ctx.idx");
    let m = matcher(&["**/*.tmp", "target"]);

    let t = Instant::now();
    let mut index = ContextIndex::new();
    let cold = ContextSnapshot::scan(tree.path(), Some(&m), &mut index).unwrap();
    let cold_time = t.elapsed();
    let t = Instant::now();
    index.save(&idx, store.path()).unwrap();
    let save_time = t.elapsed();

    for round in 0..3 {
        let t = Instant::now();
        let mut loaded = ContextIndex::load(&idx);
        let load_time = t.elapsed();
        let warm = ContextSnapshot::scan(tree.path(), Some(&m), &mut loaded).unwrap();
        let total = t.elapsed();
        let t = Instant::now();
        let d = warm.digest_of(&warm.select(".").unwrap(), DigestOptions::default());
        let digest_time = t.elapsed();
        assert_eq!(warm.stats().files_hashed, 0);
        println!(
            "warm #{round}: index load {load_time:?}, load+scan {total:?}, digest of all {digest_time:?} ({})",
            &d.to_hex()[..12]
        );
    }
    println!(
        "cold scan of {} entries: {cold_time:?} ({} files read, {} bytes); index save {save_time:?}, {} bytes",
        cold.len(),
        cold.stats().files_hashed,
        cold.stats().bytes_hashed,
        fs::metadata(&idx).unwrap().len()
    );
}
