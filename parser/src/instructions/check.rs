//! Semantic checks for `imgbuild check`: cross-instruction problems and BuildKit's lint rules.
//!
//! [`typed`](super::typed) already reports what is wrong with each instruction on its own
//! (including unknown instructions, with a did-you-mean) and the unikernel-stage rules; this
//! adds what needs the whole file:
//! - stage names: duplicates (`DuplicateStageName`), reserved names (`ReservedStageName`);
//! - stage references in FROM, `COPY --from` and `RUN --mount=from=`: forward and circular
//!   references and bad indexes are errors; a stage-like name that is no stage is a warning
//!   (BuildKit would pull it as an image);
//! - variables: `UndefinedVar` and `UndefinedArgInFrom`, as BuildKit scopes them (global ARGs
//!   only in FROM lines; in a stage only its ARGs and ENVs and those of the stages it builds on);
//! - BuildKit's other lint rules that need no image or context: `JSONArgsRecommended`,
//!   `LegacyKeyValueFormat`, `WorkdirRelativePath`, `MultipleInstructionsDisallowed`,
//!   `ExposeProtoCasing`, `ExposeInvalidFormat`, `SecretsUsedInArgOrEnv`,
//!   `RedundantTargetPlatform`, `FromPlatformFlagConstDisallowed`,
//!   `ConsistentInstructionCasing`, `InvalidDefaultArgInFrom`.
//!
//! Lint codes are BuildKit's rule names; our own codes are kebab-case. A
//! `# check=skip=…;error=true` directive applies to all warnings (see [`check_all`]).

use std::collections::{HashMap, HashSet};

use crate::ast::{Dockerfile, Node, Span, Word};
use crate::diag::{Diagnostic, Severity};

use super::run::mount_from;
use super::util::{suggest, var_refs, with_suggestion};
use super::{Instruction, KeyValue, Stage, TypedDockerfile, UNIKERNEL_BASE, typed, util::sub_span};

/// The ARGs BuildKit defines for FROM lines.
pub const PLATFORM_ARGS: &[&str] = &[
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDOSVERSION",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETOSVERSION",
    "TARGETARCH",
    "TARGETVARIANT",
    "TARGETSTAGE",
];

/// The proxy ARGs every RUN gets without declaring them.
pub const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Build args BuildKit reads itself and never puts in the environment.
const NON_ENV_ARGS: &[&str] = &["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

/// Stage names BuildKit reserves, and ours.
const RESERVED_STAGE_NAMES: &[&str] = &["context", "scratch", UNIKERNEL_BASE];

/// Types the file and runs every check: [`typed`]'s diagnostics followed by [`check`]'s, with
/// the file's `# check=` directive applied to lint rules.
pub fn check_all(df: &Dockerfile) -> (TypedDockerfile, Vec<Diagnostic>) {
    let (t, mut diags) = typed(df);
    diags.extend(check_unfiltered(df, &t));
    let diags = apply_check_directive(df, diags);
    (t, diags)
}

/// The whole-file checks (see the module docs). Returns only what [`typed`] does not report.
pub fn check(df: &Dockerfile, typed: &TypedDockerfile) -> Vec<Diagnostic> {
    apply_check_directive(df, check_unfiltered(df, typed))
}

fn check_unfiltered(df: &Dockerfile, t: &TypedDockerfile) -> Vec<Diagnostic> {
    let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut parent = Vec::with_capacity(t.stages.len());
    let mut from_image = Vec::with_capacity(t.stages.len());
    for (i, st) in t.stages.iter().enumerate() {
        // FROM resolves only to earlier stages, by exact (lower-case) name; the last wins.
        let p = by_name
            .get(st.base.as_str())
            .and_then(|v| v.last().copied());
        parent.push(p);
        from_image.push(match p {
            Some(p) => from_image[p],
            None => st.base != "scratch" && st.base != UNIKERNEL_BASE,
        });
        if let Some(n) = st.name.as_deref() {
            by_name.entry(n).or_default().push(i);
        }
    }
    let mut c = Checker {
        df,
        t,
        diags: Vec::new(),
        nodes: df
            .children
            .iter()
            .map(|n| ((n.span.file, n.span.start), n))
            .collect(),
        by_name,
        parent,
        from_image,
    };
    c.stage_names();
    c.stage_refs();
    c.variables();
    c.instruction_lints();
    c.casing();
    c.diags
}

/// `# check=skip=A,B;error=true`, as BuildKit reads it for its lint rules, applied to every
/// warning: `skip` drops warnings of those codes (`all`: every warning), `error=true` turns
/// the remaining warnings into errors. Errors are never skipped.
fn apply_check_directive(df: &Dockerfile, diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let Some(dir) = df.directive("check") else {
        return diags;
    };
    let mut skip: Vec<String> = Vec::new();
    let mut skip_all = false;
    let mut error = false;
    for part in dir.value.split(';') {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "skip" => {
                for r in v.split(',').map(str::trim) {
                    if r.eq_ignore_ascii_case("all") {
                        skip_all = true;
                    } else {
                        skip.push(r.to_ascii_lowercase());
                    }
                }
            }
            "error" => error = v.trim().eq_ignore_ascii_case("true"),
            _ => {}
        }
    }
    diags
        .into_iter()
        .filter(|d| d.is_error() || !(skip_all || skip.contains(&d.code.to_ascii_lowercase())))
        .map(|mut d| {
            if error {
                d.severity = Severity::Error;
            }
            d
        })
        .collect()
}

/// The variable names visible at a point of a stage: a count per name, so the declarations of
/// a stage can be undone when the walk over the stage tree leaves it.
#[derive(Default, serde::Serialize)]
struct Scope {
    count: HashMap<String, usize>,
    /// Names in declaration order (with repeats), for deterministic suggestions and undo.
    order: Vec<String>,
}

impl Scope {
    fn contains(&self, name: &str) -> bool {
        self.count.contains_key(name)
    }

    fn add(&mut self, name: &str) {
        *self.count.entry(name.to_owned()).or_default() += 1;
        self.order.push(name.to_owned());
    }

    /// Removes the names added after the scope had `len` entries.
    fn truncate(&mut self, len: usize) {
        while self.order.len() > len {
            let Some(name) = self.order.pop() else { break };
            if let Some(c) = self.count.get_mut(&name) {
                *c -= 1;
                if *c == 0 {
                    self.count.remove(&name);
                }
            }
        }
    }

    /// A did-you-mean among the names (skipped for huge scopes: it costs per name).
    fn suggest(&self, name: &str) -> Option<String> {
        if self.count.len() > 1000 {
            return None;
        }
        let mut seen = HashSet::new();
        let names = self.order.iter().filter(|n| seen.insert(n.as_str()));
        suggest(name, names.map(String::as_str), true)
    }
}

struct Checker<'a> {
    df: &'a Dockerfile,
    t: &'a TypedDockerfile,
    diags: Vec<Diagnostic>,
    /// The syntax node of each instruction, by the start of its span.
    nodes: HashMap<(u32, usize), &'a Node>,
    /// Stage indexes by (lower-case) name, ascending.
    by_name: HashMap<&'a str, Vec<usize>>,
    /// The earlier stage each stage's FROM builds on.
    parent: Vec<Option<usize>>,
    /// The stage's chain of bases ends in an image (whose ENV we cannot see).
    from_image: Vec<bool>,
}

/// Looks like a stage name rather than an image reference.
fn stage_like(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', ':', '@', '.', '$'])
}

impl<'a> Checker<'a> {
    fn node(&self, span: Span) -> Option<&'a Node> {
        self.nodes.get(&(span.file, span.start)).copied()
    }

    /// The keyword as written, for BuildKit's messages.
    fn keyword(&self, inst: &Instruction) -> String {
        self.node(inst.span())
            .map_or_else(|| inst.name().to_owned(), |n| n.keyword.clone())
    }

    fn push(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn stage_names(&mut self) {
        let mut first: HashMap<&str, Span> = HashMap::new();
        for st in &self.t.stages {
            let (Some(name), Some(w)) = (st.name.as_deref(), st.from.name.as_ref()) else {
                continue;
            };
            if RESERVED_STAGE_NAMES.contains(&name) {
                self.diags.push(
                    Diagnostic::warning(
                        "ReservedStageName",
                        w.span,
                        format!(
                            "Stage name should not use the same name as reserved stage {}",
                            crate::golang::quote(name)
                        ),
                    )
                    .with_help(format!(
                        "rename the stage: `{name}` means something else in FROM"
                    )),
                );
            }
            match first.get(name) {
                Some(prev) => self.diags.push(
                    Diagnostic::warning(
                        "DuplicateStageName",
                        w.span,
                        format!(
                            "Duplicate stage name {}, stage names should be unique",
                            crate::golang::quote(name)
                        ),
                    )
                    .with_help("rename one of the stages; references resolve to the last one")
                    .with_label(*prev, "first defined here"),
                ),
                None => {
                    first.insert(name, w.span);
                }
            }
        }
    }

    /// The index of the stage a COPY --from / mount from names (case-insensitive), preferring
    /// the last definition before `current`, else the first at or after it.
    fn find_stage(&self, name: &str, current: usize) -> Option<usize> {
        let v = self.by_name.get(name.to_lowercase().as_str())?;
        let k = v.partition_point(|&i| i < current);
        if k > 0 {
            Some(v[k - 1])
        } else {
            v.get(k).copied()
        }
    }

    /// Stage names for a did-you-mean (none for huge files: it costs per name).
    fn stage_names_list(&self, before: usize) -> Vec<&'a str> {
        if self.by_name.len() > 1000 {
            return Vec::new();
        }
        let mut names: Vec<(&str, usize)> = self
            .by_name
            .iter()
            .filter_map(|(n, v)| v.first().filter(|&&i| i < before).map(|&i| (*n, i)))
            .collect();
        names.sort_by_key(|(_, i)| *i);
        names.into_iter().map(|(n, _)| n).collect()
    }

    fn stage_refs(&mut self) {
        let stages = &self.t.stages;
        for (i, st) in stages.iter().enumerate() {
            self.base_ref(i, st);
            for inst in &st.instructions {
                match inst {
                    Instruction::Copy(c) => {
                        if let Some(f) = &c.from {
                            self.copy_ref(i, f, "COPY --from");
                        }
                    }
                    Instruction::Run(r) => {
                        for m in &r.mounts {
                            if let Some(f) = mount_from(m) {
                                self.copy_ref(i, &f, "RUN --mount=from");
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn base_ref(&mut self, i: usize, st: &Stage) {
        let base = &st.from.base;
        let v = base.value.as_str();
        if v.is_empty() || v.contains('$') || v == "scratch" || v == UNIKERNEL_BASE {
            return;
        }
        if self.parent[i].is_some() {
            return;
        }
        let stages = &self.t.stages;
        let later = self
            .by_name
            .get(v)
            .and_then(|idx| idx.iter().copied().find(|&j| j > i));
        if let Some(j) = later {
            self.push(
                Diagnostic::error(
                    "forward-stage-reference",
                    base.span,
                    format!("FROM {v} names a stage defined later in the file"),
                )
                .with_help(format!(
                    "move stage '{v}' above this one: as written, FROM would pull an image named '{v}'"
                ))
                .with_label(stages[j].from.span, "defined here"),
            );
            return;
        }
        let s = stage_like(v)
            .then(|| suggest(v, self.stage_names_list(i), false))
            .flatten();
        if let Some(s) = s {
            self.push(
                Diagnostic::warning(
                    "undefined-stage",
                    base.span,
                    format!("'{v}' is not a stage name, so FROM pulls it as an image"),
                )
                .with_help(format!(
                    "use the stage '{s}' if that is what you meant, or write the image with a tag ({v}:latest)"
                )),
            );
        }
    }

    fn copy_ref(&mut self, i: usize, r: &Word, what: &str) {
        let v = r.value.as_str();
        if v.is_empty() || v.contains('$') {
            return;
        }
        let stages = &self.t.stages;
        let target = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
            match v.parse::<usize>() {
                Ok(n) if n < stages.len() => Some(n),
                _ => {
                    self.push(
                        Diagnostic::error(
                            "invalid-stage-index",
                            r.span,
                            format!("invalid stage index {v}"),
                        )
                        .with_help(format!(
                            "stages are numbered from 0; this file has {} (0 to {}), or name the stage with AS",
                            stages.len(),
                            stages.len().saturating_sub(1)
                        )),
                    );
                    return;
                }
            }
        } else {
            self.find_stage(v, i)
        };
        match target {
            Some(j) if j < i => {}
            Some(j) if j == i => {
                let name = stages[i]
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("stage-{i}"));
                self.push(
                    Diagnostic::error(
                        "circular-stage-reference",
                        r.span,
                        format!("circular dependency detected on stage: {name}"),
                    )
                    .with_help(format!(
                        "{what} cannot use the stage it is in; copy from an earlier stage"
                    )),
                );
            }
            Some(j) => {
                let name = stages[j].name.clone().unwrap_or_else(|| j.to_string());
                self.push(
                    Diagnostic::error(
                        "forward-stage-reference",
                        r.span,
                        format!("{what}={v} names a stage defined later in the file"),
                    )
                    .with_help(format!("move stage '{name}' above the stage that uses it"))
                    .with_label(stages[j].from.span, "defined here"),
                );
            }
            None if stage_like(v) => {
                let s = suggest(v, self.stage_names_list(self.t.stages.len()), false);
                let help = match &s {
                    Some(s) => format!("did you mean the stage '{s}'?"),
                    None => format!(
                        "if you meant an image, write it with a tag ({v}:latest) to make that clear; otherwise define the stage with `FROM … AS {v}`"
                    ),
                };
                self.push(
                    Diagnostic::warning(
                        "undefined-stage",
                        r.span,
                        format!("'{v}' is not a stage name, so {what} uses it as an image"),
                    )
                    .with_help(help),
                );
            }
            None => {}
        }
    }

    fn variables(&mut self) {
        // Global scope: meta ARGs (declared, with or without a default).
        let mut global: Vec<&str> = Vec::new();
        let mut global_set: HashSet<&str> = HashSet::new();
        for a in &self.t.meta_args {
            for d in &a.args {
                if global_set.insert(d.key.value.as_str()) {
                    global.push(d.key.value.as_str());
                }
            }
        }
        let escape = self.df.escape;
        let start = self.diags.len();
        // FROM lines see the global ARGs and the platform ARGs.
        for st in &self.t.stages {
            let mut from_words = vec![&st.from.base];
            from_words.extend(st.from.platform.as_ref());
            for w in from_words {
                for r in var_refs(&w.value, escape) {
                    let name = r.name.as_str();
                    if global_set.contains(name) || PLATFORM_ARGS.contains(&name) {
                        continue;
                    }
                    let s = if global.len() <= 1000 {
                        suggest(name, global.iter().copied(), true)
                    } else {
                        None
                    };
                    self.push(
                        Diagnostic::warning(
                            "UndefinedArgInFrom",
                            sub_span(w, r.start, r.end),
                            with_suggestion(
                                format!("FROM argument '{name}' is not declared"),
                                s.as_deref(),
                            ),
                        )
                        .with_help(format!(
                            "declare it with `ARG {name}` before the first FROM"
                        )),
                    );
                }
            }
        }
        // A stage sees its own ARGs and ENVs and those of the stages it builds on: walk the
        // tree of stages depth-first with one scope, undoing a stage's names on the way out.
        let n = self.t.stages.len();
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut stack: Vec<(usize, Option<usize>)> = Vec::new();
        for i in (0..n).rev() {
            match self.parent[i] {
                Some(p) => children[p].push(i),
                None => stack.push((i, None)),
            }
        }
        for c in &mut children {
            c.reverse();
        }
        let mut scope = Scope::default();
        while let Some((i, mark)) = stack.pop() {
            if let Some(mark) = mark {
                scope.truncate(mark);
                continue;
            }
            let mark = scope.order.len();
            if self.parent[i].is_none() {
                // The base image's ENV is unknown to us, except for the PATH every image gets.
                scope.add("PATH");
            }
            self.stage_variables(i, &mut scope, &global_set, escape);
            stack.push((i, Some(mark)));
            stack.extend(children[i].iter().map(|&c| (c, None)));
        }
        self.diags[start..].sort_by_key(|d| (d.span.file, d.span.start));
    }

    fn stage_variables(
        &mut self,
        i: usize,
        scope: &mut Scope,
        global: &HashSet<&str>,
        escape: char,
    ) {
        let from_image = self.from_image[i];
        for inst in &self.t.stages[i].instructions {
            let mut uses: Vec<&Word> = Vec::new();
            let mut mounts: Vec<Word> = Vec::new();
            match inst {
                Instruction::Env(e) => {
                    for kv in &e.vars {
                        uses.push(&kv.key);
                        uses.push(&kv.value);
                    }
                }
                Instruction::Label(l) => {
                    for kv in &l.labels {
                        uses.push(&kv.key);
                        uses.push(&kv.value);
                    }
                }
                Instruction::Arg(a) => {
                    // Each ARG's default sees the ones declared before it.
                    for d in &a.args {
                        if let Some(v) = &d.value {
                            self.undefined(v, scope, global, from_image, escape);
                        }
                        scope.add(&d.key.value);
                    }
                }
                Instruction::Copy(c) => {
                    uses.extend(&c.files.sources);
                    uses.push(&c.files.dest);
                    uses.extend(c.chown.iter().chain(&c.chmod));
                }
                Instruction::Add(a) => {
                    uses.extend(&a.files.sources);
                    uses.push(&a.files.dest);
                    uses.extend(a.chown.iter().chain(&a.chmod).chain(&a.checksum));
                }
                Instruction::Workdir(w) => uses.push(&w.path),
                Instruction::User(u) => {
                    uses.push(&u.user);
                    uses.extend(&u.group);
                }
                Instruction::Volume(v) => uses.extend(&v.paths),
                Instruction::StopSignal(s) => uses.push(&s.signal),
                Instruction::Expose(e) => uses.extend(e.ports.iter().map(|p| &p.raw)),
                Instruction::Run(r) => {
                    mounts.extend(r.mounts.iter().map(|m| Word {
                        value: m.raw.clone(),
                        span: m.span,
                    }));
                }
                _ => {}
            }
            for w in uses.into_iter().chain(&mounts) {
                self.undefined(w, scope, global, from_image, escape);
            }
            // ENV values see the scope before the instruction; the names count after it.
            if let Instruction::Env(e) = inst {
                for kv in &e.vars {
                    scope.add(&kv.key.value);
                }
            }
        }
    }

    fn undefined(
        &mut self,
        w: &Word,
        scope: &Scope,
        global: &HashSet<&str>,
        from_image: bool,
        escape: char,
    ) {
        for r in var_refs(&w.value, escape) {
            let name = r.name.as_str();
            if scope.contains(name) || NON_ENV_ARGS.contains(&name) {
                continue;
            }
            let s = scope.suggest(name);
            let help = if global.contains(name) {
                format!(
                    "global ARGs are only visible in FROM lines: add `ARG {name}` in this stage to use its value here"
                )
            } else if PLATFORM_ARGS.contains(&name) || PROXY_ARGS.contains(&name) {
                format!("add `ARG {name}` in this stage to use the predefined value")
            } else if from_image {
                format!(
                    "declare it with `ARG {name}` or `ENV {name}=…` before this line (harmless if the base image sets {name})"
                )
            } else {
                format!("declare it with `ARG {name}` or `ENV {name}=…` before this line")
            };
            self.push(
                Diagnostic::warning(
                    "UndefinedVar",
                    sub_span(w, r.start, r.end),
                    with_suggestion(
                        format!("Usage of undefined variable '${name}'"),
                        s.map(|s| format!("${s}")).as_deref(),
                    ),
                )
                .with_help(help),
            );
        }
    }

    fn instruction_lints(&mut self) {
        // Per stage: inherited facts from the stage it builds on.
        #[derive(Clone, Copy, Default, serde::Serialize)]
        struct Facts {
            shell_set: bool,
            workdir_set: bool,
        }
        let mut facts_at_end: Vec<Facts> = Vec::new();
        for (i, st) in self.t.stages.iter().enumerate() {
            let mut facts = self.parent[i].map(|p| facts_at_end[p]).unwrap_or_default();
            self.platform_lints(st);
            let mut last: HashMap<&'static str, Span> = HashMap::new();
            for inst in &st.instructions {
                let kw = self.keyword(inst);
                match inst {
                    Instruction::Shell(_) => facts.shell_set = true,
                    Instruction::Cmd(_)
                    | Instruction::Entrypoint(_)
                    | Instruction::Healthcheck(_) => {
                        let name = inst.name();
                        if let Some(prev) = last.insert(name, inst.span()) {
                            self.push(
                                Diagnostic::warning(
                                    "MultipleInstructionsDisallowed",
                                    prev,
                                    format!("Multiple {kw} instructions should not be used in the same stage because only the last one will be used"),
                                )
                                .with_help(format!("remove this {name}: the later one replaces it")),
                            );
                        }
                        let prepend = match inst {
                            Instruction::Cmd(c) => c.command.prepend_shell,
                            Instruction::Entrypoint(e) => e.command.prepend_shell,
                            _ => false,
                        };
                        if prepend && !facts.shell_set && !st.unikernel {
                            self.push(
                                Diagnostic::warning(
                                    "JSONArgsRecommended",
                                    inst.span(),
                                    format!("JSON arguments recommended for {kw} to prevent unintended behavior related to OS signals"),
                                )
                                .with_help(format!("write {name} in exec form: {name} [\"program\", \"arg\"]")),
                            );
                        }
                    }
                    Instruction::Env(e) => self.kv_lints(&kw, &e.vars, inst.span(), true),
                    Instruction::Label(l) => self.kv_lints(&kw, &l.labels, inst.span(), false),
                    Instruction::Arg(a) => {
                        for d in &a.args {
                            self.secret_lint("ARG", &d.key);
                        }
                    }
                    Instruction::Workdir(w) => {
                        let p = &w.path.value;
                        if !facts.workdir_set && !p.starts_with('/') && !p.contains('$') {
                            self.push(
                                Diagnostic::warning(
                                    "WorkdirRelativePath",
                                    w.path.span,
                                    format!(
                                        "Relative workdir {} can have unexpected results if the base image changes",
                                        crate::golang::quote(p)
                                    ),
                                )
                                .with_help(format!("use an absolute path such as /{p}")),
                            );
                        }
                        facts.workdir_set = true;
                    }
                    Instruction::Expose(e) => {
                        for p in &e.ports {
                            let Some(spec) = &p.spec else { continue };
                            if spec.protocol_written != spec.protocol_written.to_lowercase() {
                                self.push(
                                    Diagnostic::warning(
                                        "ExposeProtoCasing",
                                        p.raw.span,
                                        format!("Defined protocol '{}' in EXPOSE instruction should be lowercase", p.raw.value),
                                    )
                                    .with_help(format!("write the protocol as {}", spec.protocol.as_str())),
                                );
                            }
                            if spec.host_ip.is_some() || spec.host_port.is_some() {
                                self.push(
                                    Diagnostic::warning(
                                        "ExposeInvalidFormat",
                                        p.raw.span,
                                        format!("EXPOSE instruction should not define an IP address or host-port mapping, found '{}'", p.raw.value),
                                    )
                                    .with_help("expose only the container port; map host ports when running the container"),
                                );
                            }
                        }
                    }
                    _ => {}
                }
            }
            facts_at_end.push(facts);
        }
    }

    fn kv_lints(&mut self, kw: &str, kvs: &[KeyValue], span: Span, env: bool) {
        for kv in kvs {
            if kv.legacy {
                self.push(
                    Diagnostic::warning(
                        "LegacyKeyValueFormat",
                        span,
                        format!("\"{kw} key=value\" should be used instead of legacy \"{kw} key value\" format"),
                    )
                    .with_help(format!("write {kw} {}=<value>", kv.key.value)),
                );
            }
            if env {
                self.secret_lint("ENV", &kv.key);
            }
        }
    }

    fn secret_lint(&mut self, what: &str, key: &Word) {
        const DENY: &[&str] = &[
            "apikey",
            "auth",
            "credential",
            "credentials",
            "key",
            "password",
            "pword",
            "passwd",
            "secret",
            "token",
        ];
        const ALLOW: &[&str] = &["public", "file", "version"];
        let parts: Vec<String> = key.value.split('_').map(str::to_ascii_lowercase).collect();
        let has = |set: &[&str]| parts.iter().any(|p| set.contains(&p.as_str()));
        if has(DENY) && !has(ALLOW) {
            self.push(
                Diagnostic::warning(
                    "SecretsUsedInArgOrEnv",
                    key.span,
                    format!(
                        "Do not use ARG or ENV instructions for sensitive data ({what} {})",
                        crate::golang::quote(&key.value)
                    ),
                )
                .with_help("pass secrets with RUN --mount=type=secret; ARG and ENV values are kept in the image"),
            );
        }
    }

    fn platform_lints(&mut self, st: &Stage) {
        let Some(p) = &st.from.platform else {
            self.default_arg_lint(st);
            return;
        };
        let v = p.value.as_str();
        if v == "$TARGETPLATFORM" || v == "${TARGETPLATFORM}" {
            self.push(
                Diagnostic::warning(
                    "RedundantTargetPlatform",
                    p.span,
                    format!("Setting platform to predefined {v} in FROM is redundant as this is the default behavior"),
                )
                .with_help("remove the --platform flag"),
            );
        } else if !v.contains('$') {
            let mut parts = v.split('/');
            let os = parts.next().unwrap_or_default();
            let arch = parts.next().unwrap_or_default();
            let name = st.name.as_deref().unwrap_or_default();
            let known_os = ["linux", "windows", "darwin", "freebsd", "netbsd", "openbsd"];
            if known_os.contains(&os)
                && !arch.is_empty()
                && !name.contains(os)
                && !name.contains(arch)
            {
                self.push(
                    Diagnostic::warning(
                        "FromPlatformFlagConstDisallowed",
                        p.span,
                        format!("FROM --platform flag should not use constant value {}", crate::golang::quote(v)),
                    )
                    .with_help("use --platform=$BUILDPLATFORM or $TARGETPLATFORM, or name the stage after the platform"),
                );
            }
        }
        self.default_arg_lint(st);
    }

    /// InvalidDefaultArgInFrom, for the simple forms `$X` and `${X}` of global ARGs.
    fn default_arg_lint(&mut self, st: &Stage) {
        let base = &st.from.base;
        let refs = var_refs(&base.value, self.df.escape);
        if refs.is_empty() {
            return;
        }
        let mut out = String::new();
        let mut at = 0;
        for r in &refs {
            let text = &base.value[r.start..r.end];
            if text != format!("${}", r.name) && text != format!("${{{}}}", r.name) {
                return;
            }
            // The last global declaration of that name, with its default.
            let decl = self
                .t
                .meta_args
                .iter()
                .flat_map(|a| &a.args)
                .rev()
                .find(|d| d.key.value == r.name);
            let Some(decl) = decl else { return };
            let default = decl.value.as_ref().map_or("", |v| v.value.as_str());
            if default.contains(['$', '\'', '"', '\\']) {
                return;
            }
            out.push_str(&base.value[at..r.start]);
            out.push_str(default);
            at = r.end;
        }
        out.push_str(&base.value[at..]);
        let invalid = out.is_empty()
            || out.starts_with([':', '@', '/'])
            || out.ends_with([':', '@', '/'])
            || out.contains(char::is_whitespace);
        if invalid {
            self.push(
                Diagnostic::warning(
                    "InvalidDefaultArgInFrom",
                    base.span,
                    format!(
                        "Default value for ARG {} results in empty or invalid base image name",
                        base.value
                    ),
                )
                .with_help("give the global ARG a default that makes a valid image name"),
            );
        }
    }

    fn casing(&mut self) {
        let Some(first) = self.df.children.iter().position(|n| n.name() == "from") else {
            return;
        };
        let nodes: Vec<&Node> = self.df.children[first..]
            .iter()
            .filter(|n| {
                let upper = n.keyword.to_ascii_uppercase();
                super::BUILDKIT_INSTRUCTIONS.contains(&upper.as_str())
                    || super::EXTENSION_INSTRUCTIONS.contains(&upper.as_str())
            })
            .collect();
        let (mut lower, mut upper) = (0, 0);
        for n in &nodes {
            if n.keyword == n.keyword.to_lowercase() {
                lower += 1;
            } else if n.keyword == n.keyword.to_uppercase() {
                upper += 1;
            }
        }
        let majority_lower = lower > upper;
        for n in nodes {
            let bad = if majority_lower {
                n.keyword != n.keyword.to_lowercase()
            } else {
                n.keyword != n.keyword.to_uppercase()
            };
            if bad {
                let (case, fixed) = if majority_lower {
                    ("lowercase", n.keyword.to_lowercase())
                } else {
                    ("uppercase", n.keyword.to_uppercase())
                };
                self.diags.push(
                    Diagnostic::warning(
                        "ConsistentInstructionCasing",
                        n.keyword_span,
                        format!(
                            "Command '{}' should match the case of the command majority ({case})",
                            n.keyword
                        ),
                    )
                    .with_help(format!("write {fixed}")),
                );
            }
        }
    }
}
