//! What we write, read by the real tools: skopeo, umoci and podman (Debian packages). A missing
//! tool fails the test with the package to install; nothing is skipped.
//!
//! And what the real tools write, read by us: skopeo copies our images into its own OCI and
//! Docker archives, which we import.

use super::*;
use serde_json::Value;
use std::process::Command;

/// The path of `tool`, or a failure naming the Debian package that has it.
fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed; this test needs it: install the Debian package \
                 `{package}` (apt-get install -y {package})"
            )
        })
}

/// Runs a command; on failure panics with its output.
fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn skopeo(tmp: &Path) -> Command {
    let mut cmd = Command::new(tool("skopeo", "skopeo"));
    // A policy of our own: the machine's /etc/containers/policy.json is not ours to rely on.
    let policy = tmp.join("policy.json");
    fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    cmd.arg("--policy").arg(policy).arg("--tmpdir").arg(tmp);
    cmd
}

fn inspect(tmp: &Path, reference: &str) -> Value {
    serde_json::from_slice(&run(skopeo(tmp).args(["inspect", reference]))).unwrap()
}

fn inspect_raw(tmp: &Path, reference: &str, config: bool) -> Vec<u8> {
    let mut cmd = skopeo(tmp);
    cmd.arg("inspect").arg("--raw");
    if config {
        cmd.arg("--config");
    }
    run(cmd.arg(reference))
}

fn digests(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect()
}

fn strings(list: &[Digest]) -> Vec<String> {
    list.iter().map(Digest::to_string).collect()
}

/// What skopeo reports for an image must be the fixture, exactly.
fn assert_inspect_is_fixture(report: &Value, f: &Fixture, layers: &[String]) {
    assert_eq!(report["Architecture"], "amd64", "{report}");
    assert_eq!(report["Os"], "linux", "{report}");
    assert_eq!(digests(&report["Layers"]), layers, "{report}");
    assert_eq!(
        report["Env"],
        serde_json::json!(f.config.config.env),
        "{report}"
    );
    assert_eq!(
        report["Labels"],
        serde_json::json!(f.config.config.labels),
        "{report}"
    );
    assert_eq!(report["Created"], "2024-01-02T03:04:05Z", "{report}");
}

#[test]
fn skopeo_reads_our_oci_layout() {
    let store = TestStore::new();
    let f = fixture(&store);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    write_oci_layout(&dir, &store, &f.image).unwrap();
    let reference = format!("oci:{}:v1", dir.display());

    let report = inspect(tmp.path(), &reference);
    assert_eq!(report["Digest"], f.image.manifest.to_string(), "{report}");
    let layer_digests: Vec<Digest> = f.layers.iter().map(|l| l.digest).collect();
    assert_inspect_is_fixture(&report, &f, &strings(&layer_digests));
    assert_eq!(inspect_raw(tmp.path(), &reference, false), f.manifest_bytes);
    assert_eq!(inspect_raw(tmp.path(), &reference, true), f.config_bytes);
}

#[test]
fn skopeo_reads_our_oci_archive() {
    let store = TestStore::new();
    let f = fixture(&store);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("image.tar");
    write_oci_archive(&file, &store, &f.image).unwrap();
    let reference = format!("oci-archive:{}:v1", file.display());

    let report = inspect(tmp.path(), &reference);
    assert_eq!(report["Digest"], f.image.manifest.to_string(), "{report}");
    let layer_digests: Vec<Digest> = f.layers.iter().map(|l| l.digest).collect();
    assert_inspect_is_fixture(&report, &f, &strings(&layer_digests));
    assert_eq!(inspect_raw(tmp.path(), &reference, false), f.manifest_bytes);
    assert_eq!(inspect_raw(tmp.path(), &reference, true), f.config_bytes);
}

#[test]
fn skopeo_reads_our_docker_archive() {
    let store = TestStore::new();
    let f = fixture(&store);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("docker.tar");
    write_docker_archive(
        &file,
        &store,
        &f.image,
        &["example/app:v1".to_owned()],
        &BuiltinDecompressor::new(&store),
    )
    .unwrap();

    // As a Docker archive: layers are the uncompressed tars, the config is ours byte for byte.
    let reference = format!("docker-archive:{}", file.display());
    let report = inspect(tmp.path(), &reference);
    assert_inspect_is_fixture(&report, &f, &strings(&f.diff_ids));
    assert_eq!(inspect_raw(tmp.path(), &reference, true), f.config_bytes);
    let named = format!("docker-archive:{}:example/app:v1", file.display());
    assert_eq!(inspect_raw(tmp.path(), &named, true), f.config_bytes);

    // As an OCI archive (the file is both).
    let reference = format!("oci-archive:{}:v1", file.display());
    let report = inspect(tmp.path(), &reference);
    assert_inspect_is_fixture(&report, &f, &strings(&f.diff_ids));
    assert_eq!(inspect_raw(tmp.path(), &reference, true), f.config_bytes);
}

#[test]
fn umoci_unpacks_our_oci_layout() {
    let store = TestStore::new();
    let f = fixture(&store);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    write_oci_layout(&dir, &store, &f.image).unwrap();
    let bundle = tmp.path().join("bundle");
    run(Command::new(tool("umoci", "umoci"))
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:v1", dir.display()))
        .arg(&bundle));

    let rootfs = bundle.join("rootfs");
    assert_eq!(fs::read(rootfs.join("etc/hello")).unwrap(), HELLO);
    assert_eq!(
        fs::read(rootfs.join("etc/second")).unwrap(),
        SECOND,
        "gzip layer applied"
    );
    let mode = fs::metadata(rootfs.join("bin/tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "bin/tool is executable: {mode:o}");

    let runtime: Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    let process = &runtime["process"];
    assert_eq!(
        process["args"],
        serde_json::json!(["/bin/tool", "--flag"]),
        "{process}"
    );
    assert_eq!(process["cwd"], "/etc", "{process}");
    let env = digests(&process["env"]);
    assert!(env.contains(&"GREETING=hello world".to_owned()), "{env:?}");
    assert_eq!(
        runtime["annotations"]["org.example.kind"], "test",
        "{runtime}"
    );

    // umoci's own record of what it unpacked names our manifest.
    let record: Value =
        serde_json::from_slice(&fs::read(bundle.join("umoci.json")).unwrap()).unwrap();
    let walk = &record["from_descriptor_path"]["descriptor_walk"][0];
    assert_eq!(walk["digest"], f.image.manifest.to_string(), "{record}");
}

#[test]
fn podman_loads_our_docker_archive() {
    let store = TestStore::new();
    let f = fixture(&store);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("docker.tar");
    write_docker_archive(
        &file,
        &store,
        &f.image,
        &["example/app:v1".to_owned()],
        &BuiltinDecompressor::new(&store),
    )
    .unwrap();

    // A private store; see /work/shared/CONTAINERS.md for why the containers.conf.
    let conf = tmp.path().join("containers.conf");
    fs::write(&conf, "[containers]\ndefault_ulimits = []\n").unwrap();
    let podman = |args: &[&str]| -> Vec<u8> {
        let mut cmd = Command::new(tool("podman", "podman"));
        cmd.env("CONTAINERS_CONF", &conf)
            .arg("--root")
            .arg(tmp.path().join("root"))
            .arg("--runroot")
            .arg(tmp.path().join("runroot"))
            .args([
                "--storage-driver",
                "vfs",
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ])
            .arg("--tmpdir")
            .arg(tmp.path().join("tmp"))
            .args(args);
        run(&mut cmd)
    };
    podman(&["load", "-i", file.to_str().unwrap()]);
    let report: Value =
        serde_json::from_slice(&podman(&["image", "inspect", "example/app:v1"])).unwrap();
    let image = &report[0];
    assert_eq!(image["Id"], f.config_digest.hex(), "{image}");
    assert_eq!(
        digests(&image["RootFS"]["Layers"]),
        strings(&f.diff_ids),
        "{image}"
    );
    assert_eq!(image["Config"]["WorkingDir"], "/etc", "{image}");
    let names = digests(&image["RepoTags"]);
    assert!(
        names.iter().any(|n| n.ends_with("example/app:v1")),
        "{names:?}"
    );
}

/// skopeo writes OCI layouts, OCI archives and Docker archives of our image its own way; we
/// import each back to the same image.
#[test]
fn we_import_what_skopeo_writes() {
    let store = TestStore::new();
    let f = fixture(&store);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    write_oci_layout(&dir, &store, &f.image).unwrap();
    let source = format!("oci:{}:v1", dir.display());

    let copied = tmp.path().join("copied");
    run(skopeo(tmp.path()).args(["copy", &source, &format!("oci:{}:v9", copied.display())]));
    let imported = import_oci_layout(&copied, Some("v9"), &TestStore::new()).unwrap();
    // skopeo 1.9 gzips plain-tar layers on the way, so the manifest is its own; the config is
    // ours, byte for byte.
    assert_eq!(imported.config_digest, f.config_digest);
    assert_eq!(imported.config, f.config);
    assert_eq!(imported.layers[1], f.layers[1]);
    let skopeo_manifest = imported.manifest_digest;

    let archive = tmp.path().join("skopeo-oci.tar");
    run(skopeo(tmp.path()).args([
        "copy",
        &source,
        &format!("oci-archive:{}:v2", archive.display()),
    ]));
    let imported = import_oci_archive(&archive, Some("v2"), &TestStore::new()).unwrap();
    assert_eq!(imported.manifest_digest, skopeo_manifest);
    assert_eq!(imported.config_digest, f.config_digest);

    let docker = tmp.path().join("skopeo-docker.tar");
    run(skopeo(tmp.path()).args([
        "copy",
        &source,
        &format!(
            "docker-archive:{}:example.com/team/app:v3",
            docker.display()
        ),
    ]));
    let fresh = TestStore::new();
    let imported = import_docker_archive(&docker, Some("example.com/team/app:v3"), &fresh).unwrap();
    assert_eq!(imported.config_digest, f.config_digest);
    assert_eq!(imported.config.rootfs.diff_ids, f.diff_ids);
    for layer in &imported.layers {
        assert!(fresh.blob_path(&layer.digest).is_some());
    }
    // skopeo writes the layers uncompressed: stored as plain tars, digest = diffID.
    let stored: Vec<Digest> = imported.layers.iter().map(|l| l.digest).collect();
    assert_eq!(stored, f.diff_ids);
}
