//! The store under stress: builds killed at many moments, builds racing on one root, damaged
//! blobs and step records. Whatever happens, the next build trusts only what is sound, reuses
//! it, and produces the same image as an undisturbed build.

use crate::{scratch, stderr, stdout};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

/// Deterministic incompressible bytes (xorshift64), so layers cost real work to write.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `imgbuild build ARGS` on `root`, not yet run.
fn build_cmd(ctx: &Path, root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imgbuild"));
    c.arg("build")
        .args(args)
        .current_dir(ctx)
        .env("NO_COLOR", "1")
        .env("IMGBUILD_ROOT", root)
        .env_remove("SOURCE_DATE_EPOCH");
    c
}

fn digest_of(out: &Output) -> String {
    let s = stdout(out);
    let last = s.lines().last().unwrap_or("").to_owned();
    assert!(
        out.status.success() && last.starts_with("sha256:"),
        "build failed ({:?}):\n{s}\n{}",
        out.status,
        stderr(out)
    );
    last
}

/// A finished build's (digest, steps executed, steps cached) from its `--metadata-file`.
fn build_with_meta(ctx: &Path, root: &Path, meta: &Path, args: &[&str]) -> (String, u64, u64) {
    let mut all = vec![
        "--progress=plain",
        "--metadata-file",
        meta.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    all.push(".");
    let out = build_cmd(ctx, root, &all).output().unwrap();
    let digest = digest_of(&out);
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(meta).unwrap()).unwrap();
    assert_eq!(m["containerimage.digest"], digest.as_str());
    (
        digest,
        m["imgbuild.steps.executed"].as_u64().unwrap(),
        m["imgbuild.steps.cached"].as_u64().unwrap(),
    )
}

/// Nothing half-written under a real name: every blob hashes to its file name (checked with
/// coreutils' sha256sum), every step record is JSON naming a layer, every extracted layer is a
/// directory, and the root holds nothing but the store's own entries.
pub fn assert_store_sound(root: &Path, when: &str) {
    let blobs = root.join("blobs/sha256");
    let mut names = Vec::new();
    for e in std::fs::read_dir(&blobs).unwrap() {
        let e = e.unwrap();
        assert!(
            e.file_type().unwrap().is_file(),
            "{when}: {} is not a file",
            e.path().display()
        );
        names.push(e.file_name().into_string().unwrap());
    }
    if !names.is_empty() {
        let sums = Command::new("sha256sum")
            .arg("--")
            .args(&names)
            .current_dir(&blobs)
            .output()
            .expect("run sha256sum (coreutils)");
        assert!(sums.status.success(), "{}", stderr(&sums));
        let text = stdout(&sums);
        for line in text.lines() {
            let (hash, name) = line.split_once("  ").unwrap();
            assert_eq!(
                hash, name,
                "{when}: blob {name} holds content with digest {hash}"
            );
        }
        assert_eq!(text.lines().count(), names.len());
    }
    for e in std::fs::read_dir(root.join("steps")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap())
                .unwrap_or_else(|e| panic!("{when}: step record {} is damaged: {e}", p.display()));
            assert!(
                v["layer"]["digest"].is_string(),
                "{when}: {}: {v}",
                p.display()
            );
        }
    }
    for e in std::fs::read_dir(root.join("layers")).unwrap() {
        let e = e.unwrap();
        assert!(e.file_type().unwrap().is_dir(), "{when}: {:?}", e.path());
    }
    // The store's layout (cache/src/store.rs), plus what the binary keeps beside it.
    const LAYOUT: &[&str] = &[
        "VERSION",
        "lock",
        "tmp",
        "blobs",
        "steps",
        "layers",
        "context",
        "explain",
        "remote",
        "images.json",
        "images.lock",
        "cache-mounts",
    ];
    for e in std::fs::read_dir(root).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(
            LAYOUT.contains(&name.as_str()),
            "{when}: unexpected {name} in the store root"
        );
    }
}

fn tmp_entries(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root.join("tmp"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

/// A multi-stage build over 32 MB of incompressible files in seven COPY steps.
fn long_build_context() -> tempfile::TempDir {
    let dir = scratch(&[(
        "Dockerfile",
        b"FROM scratch AS one\n\
          COPY a/ /a/\n\
          COPY b/ /b/\n\
          FROM scratch AS two\n\
          COPY c/ /c/\n\
          COPY --from=one /a /from-one/\n\
          FROM scratch\n\
          COPY --from=one / /\n\
          COPY --from=two /c /c\n\
          COPY d/ /d/\n\
          ENV DONE=1\n",
    )]);
    for (i, d) in ["a", "b", "c", "d"].iter().enumerate() {
        std::fs::create_dir(dir.path().join(d)).unwrap();
        for j in 0..4 {
            let seed = (i * 4 + j) as u64 + 1;
            std::fs::write(
                dir.path().join(d).join(format!("f{j}")),
                noise(seed, 2 << 20),
            )
            .unwrap();
        }
    }
    dir
}

#[test]
fn builds_killed_at_twenty_moments_leave_a_store_the_next_build_trusts() {
    let ctx = long_build_context();
    let work = tempfile::tempdir().unwrap();
    let outputs = |tag: &str| {
        let o = work.path().join(tag);
        std::fs::create_dir_all(&o).unwrap();
        [
            format!("type=oci,dest={}", o.join("img.tar").display()),
            format!("type=local,dest={}", o.join("fs").display()),
        ]
    };
    let args = |o: &[String; 2]| -> Vec<String> {
        vec![
            "--progress=plain".into(),
            "-o".into(),
            o[0].clone(),
            "-o".into(),
            o[1].clone(),
            ".".into(),
        ]
    };

    let prune_all = |root: &Path, when: &str| {
        let pruned = Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .args(["prune", "--all"])
            .env("IMGBUILD_ROOT", root)
            .output()
            .unwrap();
        assert!(pruned.status.success(), "{when}: {}", stderr(&pruned));
    };

    // The reference: an undisturbed build in its own root, twice (the second time from a
    // pruned root, as every round below starts), to learn the digest and how long a build takes.
    let ref_root = work.path().join("ref-root");
    let o = outputs("ref");
    let mut took = std::time::Duration::MAX;
    let mut reference = String::new();
    for n in 0..2 {
        let start = Instant::now();
        let out = build_cmd(ctx.path(), &ref_root, &[])
            .args(args(&o))
            .output()
            .unwrap();
        took = took.min(start.elapsed());
        let digest = digest_of(&out);
        assert!(
            stderr(&out).contains("(7 steps run, 0 cached)"),
            "{}",
            stderr(&out)
        );
        assert!(n == 0 || digest == reference);
        reference = digest;
        prune_all(&ref_root, "reference");
    }

    let root = work.path().join("root");
    let meta = work.path().join("meta.json");
    let (mut killed, mut reused) = (0, 0);
    for i in 1..=20u32 {
        let o = outputs(&format!("round{i}"));
        let start = Instant::now();
        let mut child = build_cmd(ctx.path(), &root, &[])
            .args(args(&o))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let at = took * i / 21;
        std::thread::sleep(at.saturating_sub(start.elapsed()));
        let _ = child.kill(); // SIGKILL; it may have finished already
        let status = child.wait().unwrap();
        if std::os::unix::process::ExitStatusExt::signal(&status) == Some(9) {
            killed += 1;
        }
        let when = format!("round {i}, killed at {at:?}");
        assert_store_sound(&root, &when);

        // The next build finishes, reusing what the killed one completed.
        let (digest, executed, cached) =
            build_with_meta(ctx.path(), &root, &meta, &["-o", &o[0], "-o", &o[1]]);
        assert_eq!(digest, reference, "{when}");
        assert_eq!(executed + cached, 7, "{when}");
        if cached > 0 {
            reused += 1;
        }
        assert_store_sound(&root, &format!("{when}, then rebuilt"));
        // The killed build's temp entries are gone (its pid is dead), in the store and beside
        // the outputs, and the outputs are whole.
        assert_eq!(tmp_entries(&root), Vec::<PathBuf>::new(), "{when}");
        let dir = work.path().join(format!("round{i}"));
        let mut beside: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        beside.sort();
        assert_eq!(beside, ["fs", "img.tar"], "{when}");
        assert_eq!(
            std::fs::read(dir.join("fs/d/f3")).unwrap(),
            std::fs::read(ctx.path().join("d/f3")).unwrap(),
            "{when}"
        );

        // Empty the store (but keep the root) so that the next round has work to be killed in.
        prune_all(&root, &when);
        assert_store_sound(&root, &format!("{when}, then pruned"));
    }
    eprintln!(
        "reference build {took:?}: {killed} of 20 builds killed, {reused} rebuilds reused steps"
    );
    // Not vacuous: some builds were really interrupted, and some progress was kept.
    assert!(killed > 0, "no build was killed before it finished");
    assert!(
        reused > 0,
        "no rebuild reused a step the killed build completed"
    );
}

#[test]
fn four_builds_at_once_on_one_root() {
    let a = scratch(&[
        (
            "Dockerfile",
            b"FROM scratch AS base\nCOPY big /big\nCOPY small /small\nFROM scratch\nCOPY --from=base / /copy/\nCOPY small /top\n",
        ),
        (
            "Dockerfile.other",
            b"FROM scratch AS base\nCOPY big /big\nCOPY small /small\nFROM base\nCOPY small /other\nLABEL x=y\n",
        ),
        ("small", b"small"),
    ]);
    std::fs::write(a.path().join("big"), noise(7, 6 << 20)).unwrap();
    let b = scratch(&[
        (
            "Dockerfile",
            b"FROM scratch\nCOPY big /big\nCOPY . /ctx/\nWORKDIR /w\n",
        ),
        ("small", b"another small"),
    ]);
    std::fs::write(b.path().join("big"), noise(7, 6 << 20)).unwrap();
    let builds: [(&Path, &str); 4] = [
        (a.path(), "Dockerfile"),
        (a.path(), "Dockerfile"),
        (a.path(), "Dockerfile.other"),
        (b.path(), "Dockerfile"),
    ];
    let work = tempfile::tempdir().unwrap();

    // Each alone, in a root of its own.
    let expected: Vec<String> = builds
        .iter()
        .enumerate()
        .map(|(i, (ctx, file))| {
            let root = work.path().join(format!("alone{i}"));
            digest_of(
                &build_cmd(ctx, &root, &["--progress=plain", "-f", file, "."])
                    .output()
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(expected[0], expected[1]);
    assert_ne!(expected[0], expected[2]);

    // All four at once on one root, each writing an output.
    let root = work.path().join("shared");
    let children: Vec<_> = builds
        .iter()
        .enumerate()
        .map(|(i, (ctx, file))| {
            let dest = work.path().join(format!("out{i}.tar"));
            build_cmd(
                ctx,
                &root,
                &[
                    "--progress=plain",
                    "-f",
                    file,
                    "-o",
                    &format!("type=oci,dest={}", dest.display()),
                    ".",
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert_eq!(digest_of(&out), expected[i], "build {i}");
        assert!(work.path().join(format!("out{i}.tar")).is_file());
    }
    assert_store_sound(&root, "after four concurrent builds");
    assert_eq!(tmp_entries(&root), Vec::<PathBuf>::new());

    // Whatever they raced on, the store now holds every step.
    let meta = work.path().join("meta.json");
    for (i, (ctx, file)) in builds.iter().enumerate() {
        let (digest, executed, _) = build_with_meta(ctx, &root, &meta, &["-f", file]);
        assert_eq!((digest.as_str(), executed), (expected[i].as_str(), 0));
    }
}

/// The digests of the image's layers, bottom first, from the manifest in the store.
fn layer_blobs(root: &Path, manifest: &str) -> Vec<PathBuf> {
    let blobs = root.join("blobs/sha256");
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blobs.join(manifest.trim_start_matches("sha256:"))).unwrap(),
    )
    .unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| blobs.join(l["digest"].as_str().unwrap().trim_start_matches("sha256:")))
        .collect()
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at.min(bytes.len() - 1);
    bytes[at] ^= 0x55;
    // Written in place, as a disk or an editor would: same inode, same size.
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::File::options().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at as u64)).unwrap();
    f.write_all(&bytes[at..=at]).unwrap();
}

fn step_records(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root.join("steps"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_damaged_store_is_detected_and_healed() {
    let ctx = scratch(&[
        (
            "Dockerfile",
            b"FROM scratch\nCOPY a /a\nCOPY b /b\nCMD [\"/a\"]\n",
        ),
        ("a", &noise(1, 1 << 20)),
        ("b", &noise(2, 1 << 20)),
    ]);
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let meta = work.path().join("meta.json");
    let archive = work.path().join("img.tar");
    let out_arg = format!("type=oci,dest={}", archive.display());
    let build = || {
        let all = [
            "--progress=plain",
            "--metadata-file",
            meta.to_str().unwrap(),
            "-o",
            &out_arg,
            ".",
        ];
        let out = build_cmd(ctx.path(), &root, &all).output().unwrap();
        let digest = digest_of(&out);
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
        (
            digest,
            m["imgbuild.steps.executed"].as_u64().unwrap(),
            m["imgbuild.steps.cached"].as_u64().unwrap(),
            stderr(&out),
        )
    };
    let (reference, executed, _, _) = build();
    assert_eq!(executed, 2);
    let layers = layer_blobs(&root, &reference);
    assert_eq!(layers.len(), 2);
    let blob_name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_owned();

    // A flipped byte in the first layer's blob: that step is a miss and runs again (the step
    // above it is keyed by what it copies, not by the bytes below, so it stays cached).
    flip_byte(&layers[0], 1000);
    let (digest, executed, cached, err) = build();
    assert_eq!(
        (digest.as_str(), executed, cached),
        (reference.as_str(), 1, 1),
        "{err}"
    );
    assert!(err.contains(&blob_name(&layers[0])), "{err}");
    assert_store_sound(&root, "after healing a flipped byte");
    let (_, executed, cached, _) = build();
    assert_eq!((executed, cached), (0, 2));

    // A truncated blob, and a missing one: misses too.
    let len = std::fs::metadata(&layers[1]).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&layers[1])
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (digest, executed, _, err) = build();
    assert_eq!(
        (digest.as_str(), executed),
        (reference.as_str(), 1),
        "{err}"
    );
    std::fs::remove_file(&layers[1]).unwrap();
    let (digest, executed, _, err) = build();
    assert_eq!(
        (digest.as_str(), executed),
        (reference.as_str(), 1),
        "{err}"
    );
    assert_store_sound(&root, "after healing a truncated and a missing blob");

    // A truncated step record is a miss (with a warning), not an error; then it is replaced.
    let records = step_records(&root);
    assert_eq!(records.len(), 2);
    for r in &records {
        let bytes = std::fs::read(r).unwrap();
        std::fs::write(r, &bytes[..bytes.len() / 2]).unwrap();
    }
    let (digest, executed, cached, err) = build();
    assert_eq!(
        (digest.as_str(), executed, cached),
        (reference.as_str(), 2, 0),
        "{err}"
    );
    assert!(err.contains("damaged cache record"), "{err}");
    // An empty one too.
    std::fs::write(&records[0], b"").unwrap();
    let (digest, _, _, _) = build();
    assert_eq!(digest, reference);
    assert_store_sound(&root, "after replacing damaged step records");

    // The image's own manifest and config blobs, damaged: written again whole, and the output
    // (which reads them) succeeds.
    let blobs = root.join("blobs/sha256");
    let manifest = blobs.join(reference.trim_start_matches("sha256:"));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let config = blobs.join(
        m["config"]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    flip_byte(&config, 10);
    flip_byte(&manifest, 10);
    let (digest, executed, cached, err) = build();
    assert_eq!(
        (digest.as_str(), executed, cached),
        (reference.as_str(), 0, 2),
        "{err}"
    );
    assert_store_sound(&root, "after healing the manifest and config");
    assert!(archive.is_file());
}
