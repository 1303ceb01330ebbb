//! Planning: stages are planned on demand (the target first asks for what it builds on), each
//! instruction expanded with the variables in scope and turned into a step or a config change.

use crate::config::{Healthcheck, History, ImageConfig};
use crate::git::is_git_source;
use crate::key::{Key, KeyHasher};
use crate::{
    BaseImage, BuildOptions, ContextQuery, CopyOp, CopySource, GitRef, GitSource, Inputs, Op, Plan,
    PlannedStage, RemoteSource, RunOp, Step,
};
use imgbuild_parser::ast::{Span, Word};
use imgbuild_parser::diag::Diagnostic;
use imgbuild_parser::instructions::{
    self, Add, Arg, CommandLine, Copy, Instruction, Mount, MountType, Run, RunCache, Sharing,
    Stage, TypedDockerfile,
};
use imgbuild_parser::shell::{Lexer, ShellError};
use std::collections::{BTreeMap, BTreeSet};

/// Proxy build args: usable by RUN without an ARG, never in history or keys (like BuildKit).
use imgbuild_parser::instructions::check::PROXY_ARGS;

/// The `comment` of the history entries we write.
const HISTORY_COMMENT: &str = "imgbuild.dockerfile.v1";

/// Plans the build of `opts.target` (or the last stage).
pub fn plan(
    typed: &TypedDockerfile,
    opts: &BuildOptions,
    inputs: &dyn Inputs,
) -> (Option<Plan>, Vec<Diagnostic>) {
    let mut p = Planner::new(typed, opts, inputs);
    let target = match p.target_index() {
        Ok(t) => t,
        Err(d) => return (None, vec![d]),
    };
    p.plan_stage(target);
    let mut unused: Vec<String> = opts
        .build_args
        .keys()
        .filter(|k| !p.used_args.contains(*k) && !PROXY_ARGS.contains(&k.as_str()))
        .cloned()
        .collect();
    unused.sort();
    let failed = p.diags.iter().any(Diagnostic::is_error);
    let Planner {
        steps,
        stages,
        diags,
        ..
    } = p;
    if failed {
        return (None, diags);
    }
    (
        Some(Plan {
            steps,
            stages,
            target,
            platform: opts.platform.clone(),
            unused_build_args: unused,
        }),
        diags,
    )
}

struct Planner<'a> {
    typed: &'a TypedDockerfile,
    opts: &'a BuildOptions,
    inputs: &'a dyn Inputs,
    lexer: Lexer,
    /// Global ARGs (before the first FROM) with their values, plus the platform args.
    globals: BTreeMap<String, Option<String>>,
    steps: Vec<Step>,
    stages: Vec<Option<PlannedStage>>,
    /// Stages being planned right now (a cycle through FROM/COPY --from is an error).
    in_progress: BTreeSet<usize>,
    used_args: BTreeSet<String>,
    diags: Vec<Diagnostic>,
    /// The unikernel stages planned so far: what a stage `FROM` them inherits.
    uk_stages: BTreeMap<usize, UkState>,
    /// The runtime, asked for once (by the first unikernel stage).
    runtime: Option<Result<crate::UnikernelRuntime, String>>,
}

/// The state of one stage while its instructions are dispatched.
struct StageState {
    index: usize,
    config: ImageConfig,
    history: Vec<History>,
    /// ARGs declared in the stage: name -> value (None: declared without a value).
    args: BTreeMap<String, Option<String>>,
    /// The last step of the stage so far.
    last: usize,
    /// Set by CMD in this stage (an ENTRYPOINT then keeps it).
    cmd_set: bool,
    /// What a unikernel stage says about its app (None in a container stage).
    uk: Option<UkState>,
}

/// APP, MODULE and what implies modules, gathered while a unikernel stage is dispatched.
#[derive(Clone, Debug, Default)]
struct UkState {
    /// The APP path (expanded) and the APP instruction's span.
    app: Option<(String, Span, Span)>,
    /// MODULE names with their spans.
    modules: Vec<(String, Span)>,
    /// The first COPY or ADD (it implies the fs module).
    copies: Option<(String, Span)>,
    /// EXPOSEd ports, each with its instruction's text and span (they imply net and tcp or
    /// udp).
    ports: Vec<(crate::ExposedPort, String, Span)>,
}

impl<'a> Planner<'a> {
    fn new(typed: &'a TypedDockerfile, opts: &'a BuildOptions, inputs: &'a dyn Inputs) -> Self {
        let lexer = Lexer::new(if opts.escape == '`' { '`' } else { '\\' });
        let mut p = Planner {
            typed,
            opts,
            inputs,
            lexer,
            globals: BTreeMap::new(),
            steps: Vec::new(),
            stages: vec![None; typed.stages.len()],
            in_progress: BTreeSet::new(),
            used_args: BTreeSet::new(),
            diags: Vec::new(),
            uk_stages: BTreeMap::new(),
            runtime: None,
        };
        let plat = &opts.platform;
        for (k, v) in [
            ("TARGETPLATFORM", plat.spec()),
            ("TARGETOS", plat.os.clone()),
            ("TARGETARCH", plat.architecture.clone()),
            ("TARGETVARIANT", plat.variant.clone().unwrap_or_default()),
            ("BUILDPLATFORM", plat.spec()),
            ("BUILDOS", plat.os.clone()),
            ("BUILDARCH", plat.architecture.clone()),
            ("BUILDVARIANT", plat.variant.clone().unwrap_or_default()),
        ] {
            p.globals.insert(k.to_owned(), Some(v));
        }
        for arg in &typed.meta_args {
            p.declare_args(arg, None);
        }
        p
    }

    fn error(&mut self, span: Span, msg: impl Into<String>, help: impl Into<String>) {
        self.diags
            .push(Diagnostic::error("plan", span, msg).with_help(help));
    }

    fn target_index(&self) -> Result<usize, Diagnostic> {
        let n = self.typed.stages.len();
        if n == 0 {
            return Err(Diagnostic::error(
                "plan",
                Span::default(),
                "the Dockerfile has no build stage",
            )
            .with_help("start the Dockerfile with a FROM instruction"));
        }
        match &self.opts.target {
            None => Ok(n - 1),
            Some(t) => self.typed.stage(t).map(|(i, _)| i).ok_or_else(|| {
                let names: Vec<&str> = self
                    .typed
                    .stages
                    .iter()
                    .filter_map(|s| s.name.as_deref())
                    .collect();
                Diagnostic::error(
                    "plan",
                    Span::default(),
                    format!("target stage {t:?} could not be found"),
                )
                .with_help(if names.is_empty() {
                    "name a stage with `FROM image AS name`".to_owned()
                } else {
                    format!("the stages are: {}", names.join(", "))
                })
            }),
        }
    }

    /// Declares ARGs in `stage` (or globally when `stage` is None).
    fn declare_args(&mut self, arg: &Arg, mut stage: Option<&mut StageState>) {
        for decl in &arg.args {
            let name = decl.key.value.clone();
            self.used_args.insert(name.clone());
            let given = self.opts.build_args.get(&name).cloned();
            let value = match (&given, &decl.value) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(default)) => {
                    let env = match &stage {
                        Some(s) => self.stage_env(s),
                        None => self.global_env(),
                    };
                    self.expand_word(&default.value, default.span, &env)
                }
                // `ARG NAME` in a stage takes the global's value, like BuildKit.
                (None, None) => match &stage {
                    Some(_) => self.globals.get(&name).cloned().flatten(),
                    None => None,
                },
            };
            match stage.as_deref_mut() {
                Some(s) => {
                    s.args.insert(name, value);
                }
                None => {
                    self.globals.insert(name, value);
                }
            }
        }
    }

    fn global_env(&self) -> BTreeMap<String, String> {
        self.globals
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect()
    }

    /// Variables for expansion inside a stage: the image's ENV, then the stage's ARGs.
    fn stage_env(&self, s: &StageState) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = s.config.env_pairs().into_iter().collect();
        for (k, v) in &s.args {
            if let Some(v) = v {
                // ENV set in the stage wins over ARG of the same name (Docker's rule).
                env.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        env
    }

    fn shell_error(&mut self, span: Span, e: ShellError) {
        self.error(
            span,
            format!("cannot expand variables: {e}"),
            "check the ${…} syntax; quote a literal $ as \\$",
        );
    }

    fn expand_word(
        &mut self,
        word: &str,
        span: Span,
        env: &BTreeMap<String, String>,
    ) -> Option<String> {
        match self.lexer.process_word(word, env) {
            Ok(e) => Some(e.value),
            Err(e) => {
                self.shell_error(span, e);
                None
            }
        }
    }

    fn expand(&mut self, w: &Word, env: &BTreeMap<String, String>) -> String {
        self.expand_word(&w.value, w.span, env).unwrap_or_default()
    }

    fn expand_words(&mut self, w: &Word, env: &BTreeMap<String, String>) -> Vec<String> {
        match self.lexer.process_words(&w.value, env) {
            Ok(e) => e.value,
            Err(e) => {
                self.shell_error(w.span, e);
                Vec::new()
            }
        }
    }

    fn push_step(&mut self, mut step: Step) -> usize {
        step.id = self.steps.len();
        // A --link layer's key leaves out what is below it (so the layer is reused on any
        // base); the image after it still depends on both.
        step.chain = match (&step.op, step.parent) {
            (Op::Copy(c), Some(p)) if c.link => KeyHasher::new("link-chain")
                .key(&self.steps[p].chain)
                .key(&step.key)
                .finish(),
            _ => step.key,
        };
        self.steps.push(step);
        self.steps.len() - 1
    }

    /// Plans stage `i` (once) and returns its last step.
    fn plan_stage(&mut self, i: usize) -> Option<usize> {
        if let Some(s) = &self.stages[i] {
            return Some(s.last);
        }
        let stage: &'a Stage = &self.typed.stages[i];
        if !self.in_progress.insert(i) {
            self.error(
                stage.span,
                format!(
                    "stage {} depends on itself",
                    stage.name.as_deref().unwrap_or(&i.to_string())
                ),
                "break the cycle of FROM / COPY --from references between stages",
            );
            return None;
        }
        let result = self.plan_stage_inner(i, stage);
        self.in_progress.remove(&i);
        result
    }

    fn plan_stage_inner(&mut self, i: usize, stage: &'a Stage) -> Option<usize> {
        let genv = self.global_env();
        let base_ref = self.expand(&stage.from.base, &genv);
        if let Some(p) = &stage.from.platform {
            let plat = self.expand(p, &genv);
            if !plat.is_empty() && plat != self.opts.platform.spec() {
                self.error(
                    p.span,
                    format!("platform {plat} is not supported: this build makes linux/amd64"),
                    "remove --platform or set it to linux/amd64 ($BUILDPLATFORM)",
                );
            }
        }
        let mut uk = stage.unikernel.then(UkState::default);
        // A unikernel stage starts empty, as scratch does: its COPY/ADD layers are the files
        // baked into the image.
        let (op, parent, config, history, base_key_input) = if base_ref == "scratch"
            || (stage.unikernel && base_ref == instructions::UNIKERNEL_BASE)
        {
            (
                Op::Scratch,
                None,
                ImageConfig::default(),
                Vec::new(),
                base_ref.clone(),
            )
        } else if let Some((si, _)) = self.typed.stage(&base_ref).filter(|(si, _)| *si < i) {
            let mut last = self.plan_stage(si)?;
            let base = self.stages[si].as_ref()?;
            if base.unikernel {
                // FROM another unikernel stage continues its files, APP and MODULEs (not its
                // linked ELF: this stage links its own).
                uk = self.uk_stages.get(&si).cloned();
                if matches!(self.steps[last].op, Op::Unikernel(_)) {
                    last = self.steps[last].parent?;
                }
            }
            (
                Op::Stage(si),
                Some(last),
                base.config.clone(),
                base.history.clone(),
                format!("stage {}", self.steps[last].chain),
            )
        } else {
            match self.inputs.image(&base_ref) {
                Ok(img) => {
                    let BaseImage {
                        manifest,
                        config,
                        history,
                        ..
                    } = img;
                    (
                        Op::Image {
                            reference: base_ref.clone(),
                            manifest: manifest.clone(),
                        },
                        None,
                        config,
                        history,
                        manifest,
                    )
                }
                Err(e) => {
                    self.error(
                        stage.from.base.span,
                        format!("base image {base_ref:?}: {e}"),
                        "build it first with -t, or use oci-layout://DIR, docker-archive://FILE \
                         or oci-archive://FILE",
                    );
                    return None;
                }
            }
        };
        let mut h = KeyHasher::new("from");
        h.str(&base_key_input).str(&self.opts.platform.spec());
        let key = h.finish();
        let first = self.push_step(Step {
            id: 0,
            key,
            chain: key,
            op,
            parent,
            deps: Vec::new(),
            stage: i,
            span: stage.span,
            created_by: format!("FROM {base_ref}"),
            layer: false,
            inputs: vec![("base".into(), base_key_input)],
        });
        let mut st = StageState {
            index: i,
            config,
            history,
            args: BTreeMap::new(),
            last: first,
            cmd_set: false,
            uk,
        };
        // The base's ONBUILD triggers run first, and are not inherited further.
        let triggers = std::mem::take(&mut st.config.onbuild);
        for t in triggers {
            self.run_trigger(&mut st, &t, stage.span);
        }
        for ins in &stage.instructions {
            self.dispatch(&mut st, ins);
        }
        if let Some(uk) = st.uk.clone() {
            self.uk_stages.insert(i, uk.clone());
            self.link_unikernel(&mut st, stage, &uk);
        }
        self.stages[i] = Some(PlannedStage {
            index: i,
            name: stage.name.clone(),
            first,
            last: st.last,
            config: st.config,
            history: st.history,
            unikernel: stage.unikernel,
        });
        Some(st.last)
    }

    fn run_trigger(&mut self, st: &mut StageState, expr: &str, span: Span) {
        let parsed = imgbuild_parser::parse(expr, span.file);
        let Some(node) = parsed.ast.children.first() else {
            self.error(
                span,
                format!("the base image's ONBUILD trigger {expr:?} does not parse"),
                "rebuild the base image with a valid ONBUILD instruction",
            );
            return;
        };
        let (ins, diags) = instructions::parse_instruction(node);
        if let Some(d) = diags.iter().find(|d| d.is_error()) {
            self.error(
                span,
                format!("the base image's ONBUILD trigger {expr:?}: {}", d.message),
                "rebuild the base image with a valid ONBUILD instruction",
            );
            return;
        }
        if let Some(mut ins) = ins {
            // Spans inside the trigger refer to its own text; point them at the FROM instead.
            relocate(&mut ins, span);
            self.dispatch(st, &ins);
        }
    }

    /// Mixes a metadata change into the chain: what follows gets a new key.
    fn meta(&mut self, st: &mut StageState, span: Span, created_by: String) {
        let parent = st.last;
        let key = KeyHasher::new("meta")
            .key(&self.steps[parent].chain)
            .str(&created_by)
            .finish();
        st.history.push(History {
            created_by: created_by.clone(),
            empty_layer: true,
            comment: HISTORY_COMMENT.into(),
        });
        st.last = self.push_step(Step {
            id: 0,
            key,
            chain: key,
            op: Op::Meta,
            parent: Some(parent),
            deps: Vec::new(),
            stage: st.index,
            span,
            created_by: created_by.clone(),
            layer: false,
            inputs: vec![("change".into(), created_by)],
        });
    }

    /// Appends a layer-producing step to the stage.
    fn layer_step(&mut self, st: &mut StageState, l: LayerStep) {
        let LayerStep {
            span,
            op,
            key,
            deps,
            created_by,
            inputs,
        } = l;
        st.history.push(History {
            created_by: created_by.clone(),
            empty_layer: false,
            comment: HISTORY_COMMENT.into(),
        });
        let parent = st.last;
        st.last = self.push_step(Step {
            id: 0,
            key,
            chain: key,
            op,
            parent: Some(parent),
            deps,
            stage: st.index,
            span,
            created_by,
            layer: true,
            inputs,
        });
    }

    fn dispatch(&mut self, st: &mut StageState, ins: &Instruction) {
        let env = self.stage_env(st);
        match ins {
            Instruction::From(_) | Instruction::Include(_) => {}
            Instruction::Arg(a) => self.declare_args(a, Some(st)),
            Instruction::Env(e) => {
                let mut pairs = Vec::new();
                for kv in &e.vars {
                    let k = self.expand(&kv.key, &env);
                    let v = self.expand(&kv.value, &env);
                    pairs.push((k, v));
                }
                let mut text = String::from("ENV");
                for (k, v) in &pairs {
                    st.config.set_env(k, v);
                    text.push_str(&format!(" {k}={v}"));
                }
                self.meta(st, e.span, text);
            }
            Instruction::Label(l) => {
                let mut text = String::from("LABEL");
                for kv in &l.labels {
                    let k = self.expand(&kv.key, &env);
                    let v = self.expand(&kv.value, &env);
                    text.push_str(&format!(" {k}={v}"));
                    st.config.labels.insert(k, v);
                }
                self.meta(st, l.span, text);
            }
            Instruction::Maintainer(m) => {
                st.config.author = m.name.value.clone();
                self.meta(st, m.span, format!("MAINTAINER {}", m.name.value));
            }
            Instruction::User(u) => {
                let mut user = self.expand(&u.user, &env);
                if let Some(g) = &u.group {
                    user = format!("{user}:{}", self.expand(g, &env));
                }
                st.config.user = user.clone();
                self.meta(st, u.span, format!("USER {user}"));
            }
            Instruction::Workdir(w) => {
                let path = self.expand(&w.path, &env);
                let wd = join_workdir(&st.config.working_dir, &path);
                st.config.working_dir = wd.clone();
                if wd == "/" {
                    self.meta(st, w.span, format!("WORKDIR {wd}"));
                } else {
                    let user = st.config.user.clone();
                    let key = KeyHasher::new("mkdir")
                        .key(&self.steps[st.last].chain)
                        .str(&wd)
                        .str(&user)
                        .finish();
                    let inputs = vec![
                        ("parent".into(), self.steps[st.last].chain.hex()),
                        ("path".into(), wd.clone()),
                        ("user".into(), user.clone()),
                    ];
                    self.layer_step(
                        st,
                        LayerStep {
                            span: w.span,
                            op: Op::Mkdir {
                                path: wd.clone(),
                                user,
                            },
                            key,
                            deps: Vec::new(),
                            created_by: format!("WORKDIR {wd}"),
                            inputs,
                        },
                    );
                }
            }
            Instruction::Cmd(c) => {
                let args = command(&c.command, &st.config);
                let text = format!("CMD {}", go_list(&args));
                st.config.cmd = Some(args);
                st.cmd_set = true;
                self.meta(st, c.span, text);
            }
            Instruction::Entrypoint(e) => {
                let args = command(&e.command, &st.config);
                let text = format!("ENTRYPOINT {}", go_list(&args));
                st.config.entrypoint = Some(args);
                // An ENTRYPOINT resets a CMD inherited from the base image.
                if !st.cmd_set {
                    st.config.cmd = None;
                }
                self.meta(st, e.span, text);
            }
            Instruction::Shell(s) => {
                let shell: Vec<String> = s.shell.iter().map(|w| w.value.clone()).collect();
                let text = format!("SHELL {}", go_list(&shell));
                st.config.shell = Some(shell);
                self.meta(st, s.span, text);
            }
            Instruction::StopSignal(s) => {
                let sig = self.expand(&s.signal, &env);
                st.config.stop_signal = sig.clone();
                self.meta(st, s.span, format!("STOPSIGNAL {sig}"));
            }
            Instruction::Volume(v) => {
                let mut text = String::from("VOLUME");
                for w in &v.paths {
                    for p in self.expand_words(w, &env) {
                        text.push_str(&format!(" {p}"));
                        st.config.volumes.insert(p);
                    }
                }
                self.meta(st, v.span, text);
            }
            Instruction::Expose(e) => {
                let mut keys = Vec::new();
                let mut uk_ports = Vec::new();
                for port in &e.ports {
                    for w in self.expand_words(&port.raw, &env) {
                        match instructions::parse_port(&w) {
                            Ok(spec) => {
                                keys.extend(spec.keys());
                                if st.uk.is_some() {
                                    uk_ports.push((spec, w, port.raw.span));
                                }
                            }
                            Err(msg) => self.error(
                                port.raw.span,
                                format!("invalid port {w:?}: {msg}"),
                                "write a port as 80, 80/udp or a range 8000-8010/tcp",
                            ),
                        }
                    }
                }
                // In a unikernel stage EXPOSE also brings in the network modules, and the
                // ports are recorded with the unikernel for `imgbuild run` to forward.
                for (spec, written, span) in uk_ports {
                    let udp = match spec.protocol {
                        instructions::Protocol::Tcp => false,
                        instructions::Protocol::Udp => true,
                        instructions::Protocol::Sctp => {
                            self.error(
                                span,
                                format!("EXPOSE {written}: the unikernel runtime has no SCTP"),
                                "expose TCP or UDP ports (80, 80/tcp, 53/udp)",
                            );
                            continue;
                        }
                    };
                    if let Some(uk) = st.uk.as_mut() {
                        for port in spec.start..=spec.end {
                            uk.ports.push((
                                crate::ExposedPort { port, udp },
                                format!("EXPOSE {written}"),
                                e.span,
                            ));
                        }
                    }
                }
                let text = format!("EXPOSE {}", keys.join(" "));
                st.config.exposed_ports.extend(keys);
                self.meta(st, e.span, text);
            }
            Instruction::Healthcheck(h) => {
                st.config.healthcheck = Some(Healthcheck {
                    test: h.test.clone(),
                    interval: h.interval,
                    timeout: h.timeout,
                    start_period: h.start_period,
                    start_interval: h.start_interval,
                    retries: h.retries,
                });
                self.meta(st, h.span, format!("HEALTHCHECK {}", go_list(&h.test)));
            }
            Instruction::Onbuild(o) => {
                st.config.onbuild.push(o.expression.clone());
                self.meta(st, o.span, format!("ONBUILD {}", o.expression));
            }
            Instruction::Copy(c) => {
                if let Some(uk) = st.uk.as_mut() {
                    uk.copies.get_or_insert(("COPY".into(), c.span));
                }
                self.copy(st, CopyIns::Copy(c), &env)
            }
            Instruction::Add(a) => {
                if let Some(uk) = st.uk.as_mut() {
                    uk.copies.get_or_insert(("ADD".into(), a.span));
                }
                self.copy(st, CopyIns::Add(a), &env)
            }
            Instruction::Run(r) => self.run(st, r, &env),
            Instruction::App(a) => {
                let path = self.expand(&a.path, &env);
                match st.uk.as_mut() {
                    Some(uk) => uk.app = Some((path, a.path.span, a.span)),
                    None => self.error(
                        a.span,
                        "APP is only meaningful in a unikernel stage",
                        "start the stage with FROM unikernel",
                    ),
                }
            }
            Instruction::Module(m) => {
                let names: Vec<(String, Span)> = m
                    .names
                    .iter()
                    .flat_map(|w| {
                        self.expand_words(w, &env)
                            .into_iter()
                            .map(move |n| (n, w.span))
                    })
                    .collect();
                match st.uk.as_mut() {
                    Some(uk) => uk.modules.extend(names),
                    None => self.error(
                        m.span,
                        "MODULE is only meaningful in a unikernel stage",
                        "start the stage with FROM unikernel",
                    ),
                }
            }
        }
    }

    /// The last step of a unikernel stage: the module set, and the link of the app with it
    /// over the stage's files, ENV and CMD.
    fn link_unikernel(&mut self, st: &mut StageState, stage: &Stage, uk: &UkState) {
        let Some((app_path, path_span, app_span)) = uk.app.clone() else {
            self.error(
                stage.span,
                "a unikernel stage needs an APP: the Rust crate to boot",
                "add `APP <crate directory>` (relative to the build context) to the stage",
            );
            return;
        };
        let runtime = match self
            .runtime
            .get_or_insert_with(|| self.inputs.unikernel_runtime())
            .clone()
        {
            Ok(r) => r,
            Err(e) => {
                self.error(
                    stage.from.base.span,
                    format!("cannot build a unikernel: {e}"),
                    "install an imgbuild built with its unikernel runtime",
                );
                return;
            }
        };
        let dir = context_dir(&app_path);
        let app = match self.inputs.app(&dir) {
            Ok(a) => a,
            Err(e) => {
                self.error(
                    path_span,
                    format!("APP {app_path}: {e}"),
                    "APP names a Rust crate directory in the build context: the one holding \
                     the app's Cargo.toml",
                );
                return;
            }
        };
        let known = crate::unikernel::known_modules(&runtime.modules);
        let is_module = |n: &str| runtime.modules.iter().any(|m| m.name == n);
        let mut roots: Vec<(String, crate::ModuleWhy)> = crate::unikernel::BASE_MODULES
            .iter()
            .map(|m| (m.to_string(), crate::ModuleWhy::Base))
            .collect();
        let mut bad = false;
        for m in &app.modules {
            if !is_module(m) {
                self.error(
                    path_span,
                    format!(
                        "the app {} declares the unknown module {m:?} in \
                         [package.metadata.imgbuild] modules",
                        app.package
                    ),
                    format!("the modules are: {known}"),
                );
                bad = true;
            }
            roots.push((m.clone(), crate::ModuleWhy::App));
        }
        // A module's feature on the app's runtime dependency declares that module; other
        // features are passed on as they are.
        let mut extra_features = Vec::new();
        for f in &app.features {
            match runtime.modules.iter().find(|m| m.feature == *f) {
                Some(m) => roots.push((m.name.clone(), crate::ModuleWhy::App)),
                None => extra_features.push(f.clone()),
            }
        }
        extra_features.sort();
        extra_features.dedup();
        for (m, span) in &uk.modules {
            if !is_module(m) {
                self.error(
                    *span,
                    format!("unknown module {m:?}"),
                    format!("the modules are: {known}"),
                );
                bad = true;
            }
            roots.push((m.clone(), crate::ModuleWhy::Instruction(*span)));
        }
        if let Some((instruction, span)) = &uk.copies {
            roots.push((
                "fs".into(),
                crate::ModuleWhy::Implied {
                    instruction: instruction.clone(),
                    span: *span,
                },
            ));
        }
        for (port, text, span) in &uk.ports {
            for m in ["net", port.protocol()] {
                roots.push((
                    m.into(),
                    crate::ModuleWhy::Implied {
                        instruction: text.clone(),
                        span: *span,
                    },
                ));
            }
        }
        // A runtime without the network modules (an older imgbuild's) cannot serve a port.
        if let Some((port, _, span)) = uk
            .ports
            .iter()
            .find(|(p, _, _)| !is_module("net") || !is_module(p.protocol()))
        {
            self.error(
                *span,
                format!(
                    "EXPOSE {port} in a unikernel stage needs the modules net and {}, which this \
                     imgbuild's runtime lacks",
                    port.protocol()
                ),
                format!("remove EXPOSE; the modules are: {known}"),
            );
            return;
        }
        let mut ports: Vec<crate::ExposedPort> = uk.ports.iter().map(|p| p.0).collect();
        ports.sort();
        ports.dedup();
        if bad {
            return;
        }
        let modules = match crate::unikernel::module_set(&runtime.modules, roots) {
            Ok(m) => m,
            Err(e) => {
                self.error(
                    stage.from.base.span,
                    e,
                    "the runtime embedded in this imgbuild is inconsistent; reinstall imgbuild",
                );
                return;
            }
        };
        let op = crate::UnikernelOp {
            app: dir,
            package: app.package,
            bin: app.bin,
            modules,
            extra_features,
            cmd: st.config.cmd.clone().unwrap_or_default(),
            ports,
            env: st.config.env.clone(),
            app_digest: app.digest,
            runtime_digest: runtime.digest,
            toolchain: runtime.toolchain,
        };
        let parent = st.last;
        let features = op.features();
        let port_names: Vec<String> = op.ports.iter().map(|p| p.to_string()).collect();
        let key = KeyHasher::new("unikernel")
            .key(&self.steps[parent].chain)
            .str(&op.app)
            .str(&op.bin)
            .str(&op.app_digest)
            .list(features.iter().map(String::as_str))
            .list(op.env.iter().map(String::as_str))
            .list(op.cmd.iter().map(String::as_str))
            .list(port_names.iter().map(String::as_str))
            .str(&op.toolchain)
            .str(&op.runtime_digest)
            .finish();
        let names = op.module_names().join(" ");
        let inputs = vec![
            ("parent".into(), self.steps[parent].chain.hex()),
            ("app sources".into(), op.app_digest.clone()),
            ("modules".into(), names.clone()),
            ("env".into(), op.env.join(" ")),
            ("cmd".into(), op.cmd.join(" ")),
            ("ports".into(), port_names.join(" ")),
            (
                "toolchain".into(),
                op.toolchain.lines().next().unwrap_or_default().to_owned(),
            ),
            ("runtime".into(), op.runtime_digest.clone()),
        ];
        let created_by = format!(
            "APP {} (link {} with modules: {names})",
            if op.app.is_empty() { "." } else { &op.app },
            op.bin
        );
        st.last = self.push_step(Step {
            id: 0,
            key,
            chain: key,
            op: Op::Unikernel(op),
            parent: Some(parent),
            deps: Vec::new(),
            stage: st.index,
            span: app_span,
            created_by,
            layer: true,
            inputs,
        });
    }

    fn copy(&mut self, st: &mut StageState, ins: CopyIns, env: &BTreeMap<String, String>) {
        let (span, files, chown, chmod, link, excludes, add) = match ins {
            CopyIns::Copy(c) => (
                c.span,
                &c.files,
                c.chown.as_ref(),
                c.chmod.as_ref(),
                c.link,
                &c.excludes,
                false,
            ),
            CopyIns::Add(a) => (
                a.span,
                &a.files,
                a.chown.as_ref(),
                a.chmod.as_ref(),
                a.link,
                &a.excludes,
                true,
            ),
        };
        let sources: Vec<String> = files.sources.iter().map(|w| self.expand(w, env)).collect();
        let dest_raw = self.expand(&files.dest, env);
        let dest = absolute_dest(&st.config.working_dir, &dest_raw);
        let chown = chown.map(|w| self.expand(w, env));
        let chmod = chmod.map(|w| self.expand(w, env));
        let excludes: Vec<String> = excludes.iter().map(|w| self.expand(w, env)).collect();
        let contents: Vec<(String, String)> = files
            .contents
            .iter()
            .map(|c| {
                let data = if c.expand {
                    self.expand_word(&c.data, c.span, env)
                        .unwrap_or_else(|| c.data.clone())
                } else {
                    c.data.clone()
                };
                (c.path.clone(), data)
            })
            .collect();
        let (parents, from, checksum, unpack, keep_git_dir) = match ins {
            CopyIns::Copy(c) => (c.parents, c.from.as_ref(), None, None, None),
            CopyIns::Add(a) => (
                false,
                None,
                a.checksum.as_ref().map(|w| self.expand(w, env)),
                a.unpack,
                a.keep_git_dir,
            ),
        };

        if !self.check_remote_sources(span, add, &sources, checksum.as_deref()) {
            return;
        }

        let mut inputs: Vec<(String, String)> = Vec::new();
        let mut deps = Vec::new();
        let mut h = KeyHasher::new(if add { "add" } else { "copy" });
        // --link layers do not depend on what is below them.
        if !link {
            h.key(&self.steps[st.last].chain);
            inputs.push(("parent".into(), self.steps[st.last].chain.hex()));
        }
        let mut remotes = Vec::new();
        let mut git = Vec::new();
        let source = match from {
            None => {
                let paths: Vec<String> = sources
                    .iter()
                    .filter(|s| !is_url(s) && !is_git_source(s))
                    .cloned()
                    .collect();
                if !paths.is_empty() {
                    let q = ContextQuery {
                        sources: paths,
                        excludes: excludes.clone(),
                        include_mode: chmod.is_none(),
                    };
                    match self.inputs.context(&q) {
                        Ok(sel) => {
                            h.str("context").str(&sel.digest);
                            inputs.extend(
                                sel.files.into_iter().map(|(p, d)| (format!("file {p}"), d)),
                            );
                        }
                        Err(e) => {
                            self.error(span, e, "check the source paths and the .dockerignore");
                            return;
                        }
                    }
                }
                // ADD <url>: the key covers the URL and the content it has now, so changed
                // remote content re-runs the step and unchanged content is a cache hit.
                for url in sources.iter().filter(|s| is_url(s)) {
                    match self.inputs.remote(url, checksum.as_deref()) {
                        Ok(file) => {
                            h.str("remote").str(url).str(&file.digest);
                            inputs.push((format!("url {url}"), file.digest.clone()));
                            remotes.push(RemoteSource {
                                url: url.clone(),
                                digest: file.digest,
                                file_name: url_file_name(url),
                            });
                        }
                        Err(e) => {
                            self.error(
                                span,
                                e,
                                "check the URL (and --checksum); the file is fetched when the \
                                 build is planned",
                            );
                            return;
                        }
                    }
                }
                // ADD <git URL>: the key covers the repository, the commit its ref resolves to
                // now (never the ref name alone), the subdirectory and --keep-git-dir.
                for src in sources.iter().filter(|s| is_git_source(s)) {
                    let keep = keep_git_dir == Some(true);
                    let tree =
                        GitRef::parse(src).and_then(|g| self.inputs.git(&g, keep).map(|t| (g, t)));
                    match tree {
                        Ok((g, t)) => {
                            h.str("git")
                                .str(&g.url)
                                .str(&t.commit)
                                .opt(g.subdir.as_deref())
                                .bool(keep);
                            inputs.push((format!("git {}", g.repo_ref()), t.commit.clone()));
                            git.push(GitSource {
                                source: src.clone(),
                                url: g.url,
                                commit: t.commit,
                                subdir: g.subdir,
                                keep_git_dir: keep,
                                digest: t.digest,
                            });
                        }
                        Err(e) => {
                            self.error(
                                span,
                                e,
                                "check the repository URL and the ref (`#REF[:SUBDIR]`); the ref \
                                 is resolved when the build is planned",
                            );
                            return;
                        }
                    }
                }
                CopySource::Context
            }
            Some(w) => {
                let name = self.expand(w, env);
                match self.resolve_from(st.index, &name, w.span) {
                    Some(FromRef::Stage(si, last)) => {
                        deps.push(last);
                        let k = self.steps[last].chain;
                        h.str("stage").key(&k);
                        inputs.push((format!("stage {name}"), k.hex()));
                        CopySource::Stage(si)
                    }
                    Some(FromRef::Image(img)) => {
                        h.str("image").str(&img.manifest);
                        inputs.push((format!("image {name}"), img.manifest.clone()));
                        CopySource::Image {
                            reference: name,
                            manifest: img.manifest,
                        }
                    }
                    None => return,
                }
            }
        };
        h.list(sources.iter().map(String::as_str))
            .u64(contents.len() as u64);
        for (n, d) in &contents {
            h.str(n).str(d);
        }
        h.str(&dest)
            .opt(chown.as_deref())
            .opt(chmod.as_deref())
            .bool(link)
            .bool(parents)
            .list(excludes.iter().map(String::as_str))
            .opt(checksum.as_deref())
            .opt(unpack.map(|b| if b { "1" } else { "0" }))
            .opt(keep_git_dir.map(|b| if b { "1" } else { "0" }));
        let mut created_by = String::from(if add { "ADD" } else { "COPY" });
        if parents {
            created_by.push_str(" --parents");
        }
        if let Some(c) = &chown {
            created_by.push_str(&format!(" --chown={c}"));
        }
        if let Some(c) = &chmod {
            created_by.push_str(&format!(" --chmod={c}"));
        }
        for s in &sources {
            created_by.push_str(&format!(" {s}"));
        }
        for (n, _) in &contents {
            created_by.push_str(&format!(" <<{n}"));
        }
        created_by.push_str(&format!(" {dest_raw}"));
        inputs.push(("dest".into(), dest.clone()));
        let op = Op::Copy(CopyOp {
            add,
            source,
            sources,
            remotes,
            git,
            contents,
            dest,
            chown,
            chmod,
            link,
            parents,
            excludes,
            checksum,
            unpack,
            keep_git_dir,
        });
        let key = h.finish();
        self.layer_step(
            st,
            LayerStep {
                span,
                op,
                key,
                deps,
                created_by,
                inputs,
            },
        );
    }

    /// BuildKit's rules for URL sources and `--checksum`; false (with an error) when broken.
    fn check_remote_sources(
        &mut self,
        span: Span,
        add: bool,
        sources: &[String],
        checksum: Option<&str>,
    ) -> bool {
        if !add && sources.iter().any(|s| is_git_source(s)) {
            self.error(
                span,
                "source can't be a git ref for COPY",
                "COPY takes paths; ADD names git repositories",
            );
            return false;
        }
        if !add && sources.iter().any(|s| is_url(s)) {
            self.error(
                span,
                "source can't be a URL for COPY",
                "use ADD to download a file (ADD --checksum=sha256:… pins its content)",
            );
            return false;
        }
        let Some(sum) = checksum else { return true };
        let problem = if sources.len() != 1 {
            Some("checksum can't be specified for multiple sources".to_owned())
        } else if !is_url(&sources[0]) {
            Some("checksum can't be specified for non-HTTP(S) sources".to_owned())
        } else if !is_sha256_digest(sum) {
            Some(format!(
                "invalid checksum {sum:?}: expected sha256:<64 lowercase hex digits>"
            ))
        } else {
            None
        };
        match problem {
            Some(msg) => {
                self.error(
                    span,
                    msg,
                    "--checksum=sha256:<hex> pins the content of a single http(s) source",
                );
                false
            }
            None => true,
        }
    }

    fn resolve_from(&mut self, current: usize, name: &str, span: Span) -> Option<FromRef> {
        let by_index = name.parse::<usize>().ok();
        let stage = match by_index {
            Some(n) => Some(n),
            None => self.typed.stage(name).map(|(i, _)| i),
        };
        if let Some(si) = stage {
            if self.typed.stages.get(si).is_some_and(|s| s.unikernel) {
                self.error(
                    span,
                    format!(
                        "stage {name:?} is a unikernel: its result is a bootable ELF, not a \
                         filesystem to copy or mount from"
                    ),
                    "copy from the stages or context files the unikernel stage copies from",
                );
                return None;
            }
            if si >= current {
                self.error(
                    span,
                    format!("stage {name:?} is not defined before this one"),
                    "a stage can only copy from stages defined above it",
                );
                return None;
            }
            return self.plan_stage(si).map(|last| FromRef::Stage(si, last));
        }
        if by_index.is_some() {
            self.error(
                span,
                format!("there is no stage {name}"),
                "stage indexes count FROM instructions from 0",
            );
            return None;
        }
        match self.inputs.image(name) {
            Ok(img) => Some(FromRef::Image(Box::new(img))),
            Err(e) => {
                self.error(
                    span,
                    format!("--from={name}: no stage of that name, and as an image: {e}"),
                    "name a stage defined above, or an image in the store",
                );
                None
            }
        }
    }

    fn run(&mut self, st: &mut StageState, r: &Run, env: &BTreeMap<String, String>) {
        let (args, files) = heredoc_command(&r.command, &st.config);
        // RUN sees the image's ENV and the ARGs in scope (ENV wins on a clash).
        let mut run_env = st.config.env.clone();
        let mut arg_text = Vec::new();
        for (k, v) in &st.args {
            if let Some(v) = v
                && st.config.get_env(k).is_none()
            {
                run_env.push(format!("{k}={v}"));
                arg_text.push(format!("{k}={v}"));
            }
        }
        let mut mounts = Vec::new();
        let mut mount_from = Vec::new();
        let mut deps = Vec::new();
        // What the mounted files are (context digests, stage keys, image digests): keyed, so a
        // changed bind source re-runs the step. Cache, tmpfs, secret and ssh contents are not.
        let mut mount_keys = Vec::new();
        let mut mount_inputs = Vec::new();
        let mut ssh_index = 0;
        for m in &r.mounts {
            let Some(pm) = self.run_mount(st, m, env, &mut ssh_index) else {
                continue;
            };
            mount_inputs.push(("mount".to_owned(), pm.canonical.clone()));
            mount_inputs.extend(pm.inputs);
            mount_keys.push(pm.key.unwrap_or_default());
            deps.extend(pm.dep);
            mounts.push(pm.canonical);
            mount_from.push(pm.from);
        }
        let cache = r.cache.as_ref().map(|c| match c {
            RunCache::Never { .. } => "never".to_owned(),
            RunCache::Ttl { nanos, .. } => format!("ttl={nanos}ns"),
        });
        let op = RunOp {
            args: args.clone(),
            files,
            env: run_env,
            proxy_env: PROXY_ARGS
                .iter()
                .filter_map(|k| self.opts.build_args.get(*k).map(|v| format!("{k}={v}")))
                .collect(),
            user: st.config.user.clone(),
            workdir: st.config.working_dir.clone(),
            mounts,
            mount_from,
            network: format!("{:?}", r.network).to_lowercase(),
            security: format!("{:?}", r.security).to_lowercase(),
            cache,
        };
        let mut h = KeyHasher::new("run");
        h.key(&self.steps[st.last].chain)
            .list(op.args.iter().map(String::as_str))
            .list(op.env.iter().map(String::as_str))
            .str(&op.user)
            .str(&op.workdir)
            .list(op.mounts.iter().map(String::as_str))
            .list(mount_keys.iter().map(String::as_str))
            .str(&op.network)
            .str(&op.security)
            .opt(op.cache.as_deref())
            .u64(op.files.len() as u64);
        for (n, d, c) in &op.files {
            h.str(n).str(d).bool(*c);
        }
        let mut created_by = String::from("RUN ");
        if !arg_text.is_empty() {
            created_by.push_str(&format!("|{} {} ", arg_text.len(), arg_text.join(" ")));
        }
        created_by.push_str(&args.join(" "));
        let mut inputs = vec![
            ("parent".into(), self.steps[st.last].chain.hex()),
            ("command".into(), args.join(" ")),
            ("env".into(), op.env.join(" ")),
        ];
        inputs.extend(mount_inputs);
        let key = h.finish();
        deps.sort_unstable();
        deps.dedup();
        self.layer_step(
            st,
            LayerStep {
                span: r.span,
                op: Op::Run(op),
                key,
                deps,
                created_by,
                inputs,
            },
        );
    }

    /// One `RUN --mount`: parsed again with every value expanded (BuildKit expands each value
    /// on its own), checked, given BuildKit's defaults, and resolved to what it mounts. None
    /// (with an error) when it is unusable.
    fn run_mount(
        &mut self,
        st: &StageState,
        m: &Mount,
        env: &BTreeMap<String, String>,
        ssh_index: &mut usize,
    ) -> Option<PlannedMount> {
        let lexer = &self.lexer;
        let mut expand = |v: &str| -> Result<String, String> {
            lexer
                .process_word(v, env)
                .map(|e| e.value)
                .map_err(|e| format!("cannot expand variables: {e}"))
        };
        let (mut pm, errors) = instructions::parse_mount(&m.raw, Some(&mut expand));
        if !errors.is_empty() {
            for e in errors {
                self.error(
                    m.span,
                    e,
                    "check the --mount options (after variable expansion): \
                     type=bind|cache|tmpfs|secret|ssh,target=…",
                );
            }
            return None;
        }
        let workdir = st.config.working_dir.as_str();
        let nonempty = |o: &Option<String>| o.clone().filter(|s| !s.is_empty());
        let mut planned = PlannedMount {
            canonical: String::new(),
            from: None,
            dep: None,
            key: None,
            inputs: Vec::new(),
        };
        match pm.kind {
            MountType::Bind | MountType::Cache | MountType::Tmpfs => {
                let written = pm.target.clone().unwrap_or_default();
                let target = join_workdir(workdir, &written);
                if target == "/" {
                    self.error(
                        m.span,
                        format!("invalid mount target {target:?}"),
                        "mount over a directory below the root: target=/path",
                    );
                    return None;
                }
                if pm.kind == MountType::Cache {
                    if nonempty(&pm.id).is_none() {
                        // BuildKit's default id: the target as written, cleaned.
                        pm.id = Some(clean_path(&written));
                    }
                    pm.sharing = Some(pm.sharing.unwrap_or(Sharing::Shared));
                }
                pm.target = Some(target);
            }
            MountType::Secret => {
                let id = nonempty(&pm.source)
                    .or_else(|| nonempty(&pm.id))
                    .or_else(|| nonempty(&pm.target).map(|t| base_name(&t)))
                    .unwrap_or_default();
                if pm.env.as_deref() == Some("") {
                    self.error(
                        m.span,
                        "the secret's env= names no variable",
                        "write env=NAME to expose the secret as $NAME",
                    );
                    return None;
                }
                pm.target = match (nonempty(&pm.target), &pm.env) {
                    (Some(t), _) => Some(clean_abs(&format!("/{t}"))),
                    (None, None) => Some(format!("/run/secrets/{}", base_name(&id))),
                    (None, Some(_)) => None,
                };
                pm.id = Some(id);
                pm.source = None;
            }
            MountType::Ssh => {
                pm.id = Some(nonempty(&pm.id).unwrap_or_else(|| "default".to_owned()));
                pm.target = Some(match nonempty(&pm.target) {
                    Some(t) => clean_abs(&format!("/{t}")),
                    None => format!("/run/buildkit/ssh_agent.{ssh_index}"),
                });
                *ssh_index += 1;
            }
        }
        let target = pm.target.clone().unwrap_or_default();
        let from = nonempty(&pm.from);
        match (pm.kind, from) {
            (MountType::Bind, None) => {
                let source = nonempty(&pm.source).unwrap_or_else(|| ".".to_owned());
                let q = ContextQuery {
                    sources: vec![escape_wildcards(&source)],
                    excludes: Vec::new(),
                    include_mode: true,
                };
                match self.inputs.context(&q) {
                    Ok(sel) => {
                        planned.key = Some(format!("context {}", sel.digest));
                        planned.inputs.extend(
                            sel.files
                                .into_iter()
                                .map(|(p, d)| (format!("mount {target}: file {p}"), d)),
                        );
                    }
                    Err(e) => {
                        self.error(
                            m.span,
                            format!("bind mount source {source:?}: {e}"),
                            "name a path in the build context (not excluded by .dockerignore)",
                        );
                        return None;
                    }
                }
                planned.from = Some(CopySource::Context);
            }
            (MountType::Bind | MountType::Cache, Some(name)) => {
                let bind = pm.kind == MountType::Bind;
                match self.resolve_from(st.index, &name, m.span)? {
                    FromRef::Stage(si, last) => {
                        planned.dep = Some(last);
                        let k = self.steps[last].chain;
                        if bind {
                            planned.key = Some(format!("stage {}", k.hex()));
                            planned
                                .inputs
                                .push((format!("mount {target}: stage {name}"), k.hex()));
                        }
                        planned.from = Some(CopySource::Stage(si));
                    }
                    FromRef::Image(img) => {
                        if bind {
                            planned.key = Some(format!("image {}", img.manifest));
                            planned.inputs.push((
                                format!("mount {target}: image {name}"),
                                img.manifest.clone(),
                            ));
                        }
                        planned.from = Some(CopySource::Image {
                            reference: name,
                            manifest: img.manifest,
                        });
                    }
                }
            }
            _ => {}
        }
        planned.canonical = canonical_mount(&pm);
        Some(planned)
    }
}

/// The argv of CMD / ENTRYPOINT / RUN: exec form as written, shell form through SHELL.
fn command(c: &CommandLine, config: &ImageConfig) -> Vec<String> {
    let values = c.values();
    if c.prepend_shell {
        let mut argv = config.shell_or_default();
        argv.push(values.join(" "));
        argv
    } else {
        values
    }
}

/// RUN's argv with BuildKit's heredoc rules: `RUN <<EOF` alone runs the body (as a script
/// mounted at /dev/pipes/NAME when it starts with `#!`, else through the shell); any other
/// command line with heredocs is handed to the shell with the bodies put back in place, so the
/// shell feeds them to the command (`RUN python3 <<EOF`).
fn heredoc_command(
    c: &CommandLine,
    config: &ImageConfig,
) -> (Vec<String>, Vec<(String, String, bool)>) {
    let values = c.values();
    let with_shell = |cmd: String| {
        let mut argv = config.shell_or_default();
        argv.push(cmd);
        argv
    };
    let Some(first) = c.files.first() else {
        return (command(c, config), Vec::new());
    };
    let line = values.join(" ");
    let sole = imgbuild_parser::syntax::parse_heredoc(line.trim())
        .ok()
        .flatten()
        .is_some();
    if sole {
        let data = if first.chomp {
            chomp(&first.data)
        } else {
            first.data.clone()
        };
        if data.starts_with("#!") {
            let path = format!("/dev/pipes/{}", first.name);
            return (with_shell(path), vec![(first.name.clone(), data, false)]);
        }
        return (with_shell(data), Vec::new());
    }
    let mut script = line;
    for f in &c.files {
        script.push('\n');
        script.push_str(&f.data);
        script.push_str(&f.name);
    }
    (with_shell(script), Vec::new())
}

/// Leading tabs removed from every line (`<<-`).
fn chomp(data: &str) -> String {
    data.split_inclusive('\n')
        .map(|l| l.trim_start_matches('\t'))
        .collect()
}

enum CopyIns<'a> {
    Copy(&'a Copy),
    Add(&'a Add),
}

enum FromRef {
    Stage(usize, usize),
    Image(Box<BaseImage>),
}

/// A RUN mount as the planner resolved it.
struct PlannedMount {
    /// The mount in canonical form (see [`canonical_mount`]).
    canonical: String,
    from: Option<CopySource>,
    /// The stage step it reads.
    dep: Option<usize>,
    /// What the mounted content is, for the key (binds only).
    key: Option<String>,
    inputs: Vec<(String, String)>,
}

/// A mount written back as a `--mount` value with every field explicit, in a fixed order;
/// `parse_mount` reads it back to the same mount.
fn canonical_mount(m: &Mount) -> String {
    let mut fields = vec![format!("type={}", m.kind.as_str())];
    let mut push = |k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            fields.push(format!("{k}={v}"));
        }
    };
    push("from", m.from.clone());
    push("source", m.source.clone());
    push("target", m.target.clone());
    push("id", m.id.clone());
    push("sharing", m.sharing.map(|s| s.as_str().to_owned()));
    push("env", m.env.clone());
    push("size", m.size_limit.map(|n| n.to_string()));
    push("mode", m.mode.map(|n| format!("{n:o}")));
    push("uid", m.uid.map(|n| n.to_string()));
    push("gid", m.gid.map(|n| n.to_string()));
    if matches!(m.kind, MountType::Secret | MountType::Ssh) {
        push("required", Some(m.required.to_string()));
    }
    push("readonly", Some(m.read_only.to_string()));
    fields
        .iter()
        .map(|f| {
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A path taken literally by the context selection (which treats `*`, `?` and `[` as
/// wildcards and `\` as their escape); bind sources are plain paths.
fn escape_wildcards(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, '*' | '?' | '[' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Go's `path.Clean` (relative paths stay relative; empty is `.`).
/// A directory of the build context as APP names it, relative to the context root ("" for the
/// root): as with COPY sources, `/x` is `x` and `..` cannot leave the context.
fn context_dir(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

fn clean_path(p: &str) -> String {
    if p.starts_with('/') {
        return clean_abs(p);
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." if parts.last().is_some_and(|l| *l != "..") => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    }
}

/// Go's `path.Base`.
fn base_name(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        return if p.is_empty() { ".".into() } else { "/".into() };
    }
    t.rsplit('/').next().unwrap_or(t).to_owned()
}

/// What [`Planner::layer_step`] needs to add a step.
struct LayerStep {
    span: Span,
    op: Op,
    key: Key,
    deps: Vec<usize>,
    created_by: String,
    inputs: Vec<(String, String)>,
}

/// An http(s) source (BuildKit's `isHTTPSource`); git URLs are told apart by
/// [`is_git_source`].
fn is_url(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://")) && !is_git_source(s)
}

fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The name a downloaded file gets in a directory destination, as BuildKit's Dockerfile
/// frontend names it: the last segment of the URL's path (Go's `path.Base` of the
/// percent-decoded path), or `__unnamed__` when there is none.
pub(crate) fn url_file_name(url: &str) -> String {
    const UNNAMED: &str = "__unnamed__";
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split('#').next().unwrap_or("");
    let rest = rest.split('?').next().unwrap_or("");
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let Some(decoded) = percent_decode(path) else {
        return UNNAMED.to_owned();
    };
    let base = decoded
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("");
    if base.is_empty() || base == "." || base == ".." || base.contains('\0') {
        UNNAMED.to_owned()
    } else {
        base.to_owned()
    }
}

/// `%XX` decoding; None for a malformed escape (Go's url.Parse fails on those).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Go's `%q` of a string slice: `["a" "b"]`, as BuildKit writes CMD and friends in history.
fn go_list(items: &[String]) -> String {
    let q: Vec<String> = items
        .iter()
        .map(|s| imgbuild_parser::golang::quote(s))
        .collect();
    format!("[{}]", q.join(" "))
}

/// Cleans an absolute path lexically (`.` and `..` folded, no trailing slash but for `/`).
pub(crate) fn clean_abs(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// WORKDIR semantics: a relative path is relative to the current working directory.
fn join_workdir(current: &str, path: &str) -> String {
    if path.starts_with('/') {
        clean_abs(path)
    } else {
        let base = if current.is_empty() { "/" } else { current };
        clean_abs(&format!("{base}/{path}"))
    }
}

/// A COPY destination made absolute against the working directory; a trailing `/` (or a
/// destination of `.`/`..`-ending forms that name a directory) is kept as the "directory" mark.
fn absolute_dest(workdir: &str, dest: &str) -> String {
    let dir_mark = dest.ends_with('/')
        || dest == "."
        || dest.ends_with("/.")
        || dest == ".."
        || dest.ends_with("/..");
    let abs = join_workdir(workdir, dest);
    if dir_mark && abs != "/" {
        format!("{abs}/")
    } else {
        abs
    }
}

/// Points every span of an instruction parsed from a trigger at `span`.
fn relocate(ins: &mut Instruction, span: Span) {
    // The typed structs keep spans in many places; the ones diagnostics use are the
    // instruction's own and its words'. Re-parsing is cheap, so rebuild through serde-free
    // matching of the few that matter.
    match ins {
        Instruction::Copy(c) => {
            c.span = span;
            for w in c.files.sources.iter_mut().chain([&mut c.files.dest]) {
                w.span = span;
            }
        }
        Instruction::Add(a) => {
            a.span = span;
            for w in a.files.sources.iter_mut().chain([&mut a.files.dest]) {
                w.span = span;
            }
        }
        Instruction::Run(r) => r.span = span,
        Instruction::Env(e) => {
            e.span = span;
            for kv in &mut e.vars {
                kv.key.span = span;
                kv.value.span = span;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Git refs resolve through a table: (url, ref) -> commit.
    struct GitTable(Vec<(&'static str, Option<&'static str>, &'static str)>);

    impl Inputs for GitTable {
        fn image(&self, r: &str) -> Result<BaseImage, String> {
            Err(format!("{r}: no images here"))
        }
        fn context(&self, _: &ContextQuery) -> Result<crate::ContextSelection, String> {
            Err("no context".into())
        }
        fn git(&self, g: &GitRef, keep: bool) -> Result<crate::GitTree, String> {
            let (_, _, commit) = self
                .0
                .iter()
                .find(|(u, r, _)| *u == g.url && *r == g.reference.as_deref())
                .ok_or_else(|| format!("{}: unknown ref", g.repo_ref()))?;
            Ok(crate::GitTree {
                commit: (*commit).to_owned(),
                digest: format!("sha256:{}{}", commit.len(), keep),
            })
        }
    }

    fn add_key(df: &str, inputs: &GitTable) -> Result<(Key, CopyOp), String> {
        let parsed = imgbuild_parser::parse(df, 0);
        let (typed, _) = instructions::typed(&parsed.ast);
        let (p, d) = crate::plan(&typed, &BuildOptions::default(), inputs);
        let p = p.ok_or_else(|| {
            d.iter()
                .map(|d| d.message.clone())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let step = p
            .steps
            .iter()
            .find(|s| matches!(s.op, Op::Copy(_)))
            .unwrap();
        let Op::Copy(c) = &step.op else {
            unreachable!()
        };
        Ok((step.key, c.clone()))
    }

    #[test]
    fn add_git_keys_cover_the_commit_subdir_and_keep_git_dir() {
        const U: &str = "git://127.0.0.1/r.git";
        let t1 = GitTable(vec![(U, Some("main"), "aaaa"), (U, None, "aaaa")]);
        let t2 = GitTable(vec![(U, Some("main"), "bbbb")]);
        let df = |src: &str, flags: &str| format!("FROM scratch\nADD {flags} {src} /src/\n");
        let (k1, c) = add_key(&df(&format!("{U}#main:sub"), ""), &t1).unwrap();
        assert_eq!(
            c.git,
            [GitSource {
                source: format!("{U}#main:sub"),
                url: U.into(),
                commit: "aaaa".into(),
                subdir: Some("sub".into()),
                keep_git_dir: false,
                digest: "sha256:4false".into(),
            }]
        );
        // A new commit on the branch is a new key; the same commit is the same key.
        let (k2, _) = add_key(&df(&format!("{U}#main:sub"), ""), &t2).unwrap();
        assert_ne!(k1, k2);
        assert_eq!(
            add_key(&df(&format!("{U}#main:sub"), ""), &t1).unwrap().0,
            k1
        );
        let (k3, _) = add_key(&df(&format!("{U}#main:other"), ""), &t1).unwrap();
        assert_ne!(k1, k3);
        let (k4, c4) = add_key(&df(&format!("{U}#main:sub"), "--keep-git-dir=true"), &t1).unwrap();
        assert_ne!(k1, k4);
        assert!(c4.git[0].keep_git_dir);
        // Unknown refs and bad fragments are errors of the instruction.
        let e = add_key(&df(&format!("{U}#nope"), ""), &t1).unwrap_err();
        assert!(e.contains("git://127.0.0.1/r.git#nope: unknown ref"), "{e}");
        let e = add_key(&df(&format!("{U}#main:../x"), ""), &t1).unwrap_err();
        assert!(e.contains("leaves the repository"), "{e}");
        // COPY never takes a repository.
        let e = add_key(&format!("FROM scratch\nCOPY {U} /src/\n"), &t1).unwrap_err();
        assert!(e.contains("source can't be a git ref for COPY"), "{e}");
    }

    #[test]
    fn paths() {
        assert_eq!(join_workdir("", "app"), "/app");
        assert_eq!(join_workdir("/app", "../x/./y/"), "/x/y");
        assert_eq!(absolute_dest("/app", "."), "/app/");
        assert_eq!(absolute_dest("/app", "sub/"), "/app/sub/");
        assert_eq!(absolute_dest("/app", "f"), "/app/f");
        assert_eq!(absolute_dest("", "/"), "/");
        assert_eq!(go_list(&["a b".into(), "\"".into()]), r#"["a b" "\""]"#);
    }

    #[test]
    fn url_sources() {
        for (url, name) in [
            ("https://example.com/a/b.tar.gz", "b.tar.gz"),
            ("https://example.com/a/b.txt?x=1#frag", "b.txt"),
            ("http://example.com/dir/", "dir"),
            ("http://example.com/a%20b.txt", "a b.txt"),
            ("http://example.com", "__unnamed__"),
            ("http://example.com/", "__unnamed__"),
            ("http://example.com/%zz", "__unnamed__"),
            ("http://example.com/x/..", "__unnamed__"),
        ] {
            assert_eq!(url_file_name(url), name, "{url}");
        }
        assert!(is_url("https://example.com/f"));
        assert!(!is_url("https://github.com/moby/buildkit.git#v0.12"));
        assert!(is_git_source("git@github.com:moby/buildkit.git"));
        assert!(!is_url("./http-notes"));
        assert!(is_sha256_digest(&format!("sha256:{}", "ab".repeat(32))));
        assert!(!is_sha256_digest(&format!("sha256:{}", "AB".repeat(32))));
        assert!(!is_sha256_digest("sha512:ab"));
    }
}
