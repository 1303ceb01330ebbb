//! Planning unikernel stages with fixed inputs: the module set and its reasons, the link
//! step's key, and the errors of bad stages.

use imgbuild_parser::instructions::typed;
use imgbuild_parser::parse;
use imgbuild_planner::{
    AppCrate, BaseImage, BuildOptions, ContextQuery, ContextSelection, ExposedPort, Inputs,
    ModuleSpec, ModuleWhy, Op, Plan, UnikernelOp, UnikernelRuntime, plan,
};

#[derive(Clone)]
struct Fixed {
    /// The app crates: (dir, declared modules, digest).
    apps: Vec<(&'static str, Vec<&'static str>, &'static str)>,
    toolchain: &'static str,
    runtime: &'static str,
}

fn graph() -> Vec<ModuleSpec> {
    let m = |name: &str, deps: &[&str]| ModuleSpec {
        name: name.into(),
        feature: name.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        description: String::new(),
    };
    vec![
        m("boot", &[]),
        m("console", &["boot"]),
        m("exit", &[]),
        m("panic", &["console", "exit"]),
        m("alloc", &["boot"]),
        m("args", &["alloc"]),
        m("fs", &["alloc"]),
        m("rng", &["boot"]),
        m("net", &["alloc", "rng"]),
        m("tcp", &["net"]),
        m("udp", &["net"]),
    ]
}

impl Inputs for Fixed {
    fn image(&self, r: &str) -> Result<BaseImage, String> {
        Err(format!("{r}: no images here"))
    }
    fn context(&self, q: &ContextQuery) -> Result<ContextSelection, String> {
        Ok(ContextSelection {
            digest: q.sources.join(","),
            files: Vec::new(),
        })
    }
    fn unikernel_runtime(&self) -> Result<UnikernelRuntime, String> {
        Ok(UnikernelRuntime {
            modules: graph(),
            digest: self.runtime.into(),
            toolchain: self.toolchain.into(),
        })
    }
    fn app(&self, dir: &str) -> Result<AppCrate, String> {
        let (_, modules, digest) = self
            .apps
            .iter()
            .find(|(d, _, _)| *d == dir)
            .ok_or("not a crate directory: it has no Cargo.toml")?;
        Ok(AppCrate {
            package: "hello".into(),
            bin: "hello".into(),
            modules: modules.iter().map(|m| m.to_string()).collect(),
            features: Vec::new(),
            digest: (*digest).into(),
        })
    }
}

fn inputs() -> Fixed {
    Fixed {
        apps: vec![("app", vec!["args"], "d1"), ("bare", vec![], "d2")],
        toolchain: "rustc 1.95.0\nhost: x86_64-unknown-linux-gnu",
        runtime: "r1",
    }
}

fn try_plan(src: &str, inputs: &Fixed) -> Result<Plan, String> {
    let parsed = parse(src, 0);
    let (t, d) = typed(&parsed.ast);
    assert!(d.iter().all(|d| !d.is_error()), "{d:?}");
    let (p, diags) = plan(&t, &BuildOptions::default(), inputs);
    p.ok_or_else(|| {
        diags
            .iter()
            .map(|d| format!("{} [{}]", d.message, d.help.clone().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

fn link(p: &Plan) -> (&imgbuild_planner::Step, &UnikernelOp) {
    let s = &p.steps[p.target_stage().last];
    match &s.op {
        Op::Unikernel(u) => (s, u),
        other => panic!("the target's last step is {other:?}"),
    }
}

const HELLO: &str = "FROM unikernel AS hello\nAPP app\nCOPY greeting.txt /greeting.txt\nMODULE rng\nENV A=1\nCMD [\"world\"]\n";

#[test]
fn module_set_with_reasons() {
    let p = try_plan(HELLO, &inputs()).unwrap();
    assert!(p.target_stage().unikernel);
    let (step, u) = link(&p);
    assert!(step.layer);
    assert_eq!(
        u.module_names(),
        ["boot", "console", "alloc", "args", "fs", "rng"]
    );
    let why = |n: &str| u.modules.iter().find(|m| m.name == n).unwrap().why.clone();
    assert_eq!(why("boot"), ModuleWhy::Base);
    assert_eq!(why("args"), ModuleWhy::App);
    assert!(matches!(why("rng"), ModuleWhy::Instruction(_)));
    assert!(
        matches!(why("fs"), ModuleWhy::Implied { ref instruction, .. } if instruction == "COPY")
    );
    assert_eq!(why("alloc"), ModuleWhy::Dependency("args".into()));
    // exit and panic are not needed by anything here.
    assert!(!u.module_names().contains(&"panic"));
    assert_eq!(u.cmd, ["world"]);
    assert_eq!(u.env, ["A=1"]);
    assert_eq!(u.app, "app");
    // The COPY is an ordinary layer below the link step.
    let parent = step.parent.unwrap();
    assert!(
        p.chain(parent)
            .iter()
            .any(|&s| matches!(p.steps[s].op, Op::Copy(_)))
    );
    // Without COPY (and without fs declared) there is no fs.
    let p = try_plan("FROM unikernel AS k\nAPP /bare/\n", &inputs()).unwrap();
    let (_, u) = link(&p);
    assert_eq!(u.module_names(), ["boot", "console"]);
    assert_eq!(u.app, "bare");
    // MODULE fs brings it in, with the line's reason.
    let p = try_plan("FROM unikernel AS k\nAPP bare\nMODULE fs\n", &inputs()).unwrap();
    let (_, u) = link(&p);
    assert!(u.module_names().contains(&"fs"));
}

#[test]
fn link_key_covers_every_input() {
    let base = link(&try_plan(HELLO, &inputs()).unwrap()).0.key;
    assert_eq!(base, link(&try_plan(HELLO, &inputs()).unwrap()).0.key);
    let mut changed = Vec::new();
    let mut i = inputs();
    i.apps[0].2 = "d9";
    changed.push(("app sources", i));
    let mut i = inputs();
    i.toolchain = "rustc 1.96.0\nhost: x86_64-unknown-linux-gnu";
    changed.push(("toolchain", i));
    let mut i = inputs();
    i.runtime = "r2";
    changed.push(("runtime", i));
    let mut i = inputs();
    i.apps[0].1 = vec!["args", "exit"];
    changed.push(("modules", i));
    // A module the set has anyway (fs, implied by the COPY) changes nothing.
    let mut same = inputs();
    same.apps[0].1 = vec!["args", "fs"];
    assert_eq!(link(&try_plan(HELLO, &same).unwrap()).0.key, base);
    for (what, i) in changed {
        let k = link(&try_plan(HELLO, &i).unwrap()).0.key;
        assert_ne!(k, base, "{what} must change the key");
    }
    for (what, df) in [
        ("CMD", HELLO.replace("[\"world\"]", "[\"earth\"]")),
        ("ENV", HELLO.replace("A=1", "A=2")),
        ("MODULE", HELLO.replace("MODULE rng", "MODULE exit")),
        ("files", HELLO.replace("/greeting.txt\n", "/other.txt\n")),
    ] {
        let k = link(&try_plan(&df, &inputs()).unwrap()).0.key;
        assert_ne!(k, base, "{what} must change the key");
    }
}

#[test]
fn bad_unikernel_stages() {
    let e = try_plan("FROM unikernel AS k\nAPP app\nMODULE network\n", &inputs()).unwrap_err();
    assert!(e.contains("unknown module \"network\""), "{e}");
    assert!(
        e.contains("boot, console, exit, panic, alloc, args, fs, rng, net, tcp, udp"),
        "{e}"
    );
    let e = try_plan("FROM unikernel AS k\nAPP app\nEXPOSE 132/sctp\n", &inputs()).unwrap_err();
    assert!(e.contains("no SCTP"), "{e}");
    let e = try_plan("FROM unikernel AS k\nAPP src\n", &inputs()).unwrap_err();
    assert!(e.contains("APP src: not a crate directory"), "{e}");
    let e = try_plan("FROM unikernel AS k\nCMD [\"x\"]\n", &inputs()).unwrap_err();
    assert!(e.contains("needs an APP"), "{e}");
    let mut i = inputs();
    i.apps[0].1 = vec!["nope"];
    let e = try_plan("FROM unikernel AS k\nAPP app\n", &i).unwrap_err();
    assert!(e.contains("unknown module \"nope\""), "{e}");
    let e = try_plan(
        "FROM unikernel AS k\nAPP app\nFROM scratch\nCOPY --from=k / /\n",
        &inputs(),
    )
    .unwrap_err();
    assert!(e.contains("is a unikernel"), "{e}");
}

#[test]
fn a_stage_from_a_unikernel_stage_inherits_it() {
    let p = try_plan(
        "FROM unikernel AS base\nAPP bare\nCOPY f /f\nFROM base AS k2\nMODULE rng\n",
        &inputs(),
    )
    .unwrap();
    let (step, u) = link(&p);
    assert_eq!(u.app, "bare");
    assert!(u.module_names().contains(&"fs"));
    assert!(u.module_names().contains(&"rng"));
    // Built on the base's files, not on its linked ELF.
    let chain = p.chain(step.parent.unwrap());
    assert!(
        chain
            .iter()
            .all(|&s| !matches!(p.steps[s].op, Op::Unikernel(_)))
    );
}

#[test]
fn expose_implies_the_network_modules_and_records_the_ports() {
    let df = "FROM unikernel AS k\nAPP bare\nEXPOSE 12345\nEXPOSE 53/udp 12345/tcp\n";
    let p = try_plan(df, &inputs()).unwrap();
    let (step, u) = link(&p);
    assert_eq!(
        u.module_names(),
        ["boot", "console", "alloc", "rng", "net", "tcp", "udp"]
    );
    let why = |n: &str| u.modules.iter().find(|m| m.name == n).unwrap().why.clone();
    assert!(
        matches!(why("net"), ModuleWhy::Implied { ref instruction, .. } if instruction == "EXPOSE 12345")
    );
    assert!(
        matches!(why("tcp"), ModuleWhy::Implied { ref instruction, .. } if instruction == "EXPOSE 12345")
    );
    assert!(
        matches!(why("udp"), ModuleWhy::Implied { ref instruction, .. } if instruction == "EXPOSE 53/udp")
    );
    assert_eq!(
        u.ports,
        [
            ExposedPort {
                port: 53,
                udp: true
            },
            ExposedPort {
                port: 12345,
                udp: false
            },
        ]
    );
    // The image config keeps its exposed ports too, and the ports are part of the key.
    assert!(p.target_stage().config.exposed_ports.contains("53/udp"));
    let other = try_plan(&df.replace("53/udp", "54/udp"), &inputs()).unwrap();
    assert_ne!(link(&other).0.key, step.key);
    // Without EXPOSE there is no network at all.
    let p = try_plan("FROM unikernel AS k\nAPP bare\n", &inputs()).unwrap();
    assert!(link(&p).1.ports.is_empty());
    assert!(!link(&p).1.module_names().contains(&"net"));
    // A stage FROM it inherits its ports.
    let p = try_plan(&format!("{df}FROM k AS k2\n"), &inputs()).unwrap();
    assert_eq!(link(&p).1.ports.len(), 2);
}
