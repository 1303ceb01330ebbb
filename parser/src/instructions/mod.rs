//! The typed instruction layer: syntax-tree nodes -> validated instructions grouped in stages.
//!
//! What BuildKit's `instructions` package does, with the same error texts: each instruction's
//! arguments are counted and its flags checked ([`flags`]); RUN mounts, healthcheck durations
//! and EXPOSE ports are typed. Plus our extensions: INCLUDE, `RUN --cache`, and unikernel
//! stages (`FROM unikernel`, APP, MODULE).
//!
//! Architecture invariant: no variable expansion here. Values stay raw (quotes and `$VAR`
//! kept, with their spans); the planner expands them with the build's ARG and ENV values.
//! A value that needs expansion is validated after it (e.g. [`parse_mount`] takes an expander).
//!
//! Never stops at the first error: every entry point returns what it could build plus all
//! diagnostics. Each diagnostic points at the offending flag, argument or instruction, keeps
//! BuildKit's wording in its message and says how to fix it in `help`.

pub mod check;
mod copy;
mod expose;
mod flags;
mod health;
mod run;
mod stages;
mod util;

pub use check::{check, check_all};
pub use copy::{Add, Copy, SourceContent, SourcesAndDest};
pub use expose::{Expose, ExposePort, PortSpec, Protocol, parse_port};
pub use health::Healthcheck;
pub use run::{
    Device, Mount, MountType, Network, Run, RunCache, Security, Sharing, parse_device, parse_mount,
};
pub use stages::{Stage, TypedDockerfile, is_docker_frontend, typed};
pub use util::{Nanos, VarRef, format_go_duration, parse_go_duration, var_refs};

use crate::ast::{Heredoc, Node, Span, Word};
use crate::diag::{Diagnostic, Severity};
use flags::Kind;

pub use crate::syntax::BUILDKIT_INSTRUCTIONS;

/// Our instructions beyond BuildKit's.
pub const EXTENSION_INSTRUCTIONS: &[&str] = &["INCLUDE", "APP", "MODULE"];

/// The base name that starts a unikernel stage (reserved like `scratch`).
pub const UNIKERNEL_BASE: &str = "unikernel";

/// One typed instruction.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Instruction {
    From(From),
    Run(Run),
    Cmd(Cmd),
    Entrypoint(Entrypoint),
    Copy(Copy),
    Add(Add),
    Env(Env),
    Arg(Arg),
    Label(Label),
    Expose(Expose),
    Healthcheck(Healthcheck),
    Shell(Shell),
    StopSignal(StopSignal),
    User(User),
    Workdir(Workdir),
    Volume(Volume),
    Maintainer(Maintainer),
    Onbuild(Onbuild),
    Include(Include),
    App(App),
    Module(Module),
}

impl Instruction {
    /// The instruction's name, upper-case.
    pub fn name(&self) -> &'static str {
        match self {
            Instruction::From(_) => "FROM",
            Instruction::Run(_) => "RUN",
            Instruction::Cmd(_) => "CMD",
            Instruction::Entrypoint(_) => "ENTRYPOINT",
            Instruction::Copy(_) => "COPY",
            Instruction::Add(_) => "ADD",
            Instruction::Env(_) => "ENV",
            Instruction::Arg(_) => "ARG",
            Instruction::Label(_) => "LABEL",
            Instruction::Expose(_) => "EXPOSE",
            Instruction::Healthcheck(_) => "HEALTHCHECK",
            Instruction::Shell(_) => "SHELL",
            Instruction::StopSignal(_) => "STOPSIGNAL",
            Instruction::User(_) => "USER",
            Instruction::Workdir(_) => "WORKDIR",
            Instruction::Volume(_) => "VOLUME",
            Instruction::Maintainer(_) => "MAINTAINER",
            Instruction::Onbuild(_) => "ONBUILD",
            Instruction::Include(_) => "INCLUDE",
            Instruction::App(_) => "APP",
            Instruction::Module(_) => "MODULE",
        }
    }

    /// The whole instruction in the source (the syntax node's span).
    pub fn span(&self) -> Span {
        match self {
            Instruction::From(i) => i.span,
            Instruction::Run(i) => i.span,
            Instruction::Cmd(i) => i.span,
            Instruction::Entrypoint(i) => i.span,
            Instruction::Copy(i) => i.span,
            Instruction::Add(i) => i.span,
            Instruction::Env(i) => i.span,
            Instruction::Arg(i) => i.span,
            Instruction::Label(i) => i.span,
            Instruction::Expose(i) => i.span,
            Instruction::Healthcheck(i) => i.span,
            Instruction::Shell(i) => i.span,
            Instruction::StopSignal(i) => i.span,
            Instruction::User(i) => i.span,
            Instruction::Workdir(i) => i.span,
            Instruction::Volume(i) => i.span,
            Instruction::Maintainer(i) => i.span,
            Instruction::Onbuild(i) => i.span,
            Instruction::Include(i) => i.span,
            Instruction::App(i) => i.span,
            Instruction::Module(i) => i.span,
        }
    }

    /// True for our extensions, which Docker's own frontend does not know.
    pub fn extension_use(&self) -> Option<(String, Span)> {
        match self {
            Instruction::Include(i) => Some(("INCLUDE".into(), i.keyword)),
            Instruction::App(i) => Some(("APP".into(), i.keyword)),
            Instruction::Module(i) => Some(("MODULE".into(), i.keyword)),
            Instruction::From(f) if f.unikernel => Some(("FROM unikernel".into(), f.base.span)),
            Instruction::Run(r) => r.cache.as_ref().map(|c| ("RUN --cache".into(), c.span())),
            _ => None,
        }
    }
}

/// `FROM [--platform=…] <base> [AS <name>]`: starts a stage.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct From {
    pub span: Span,
    /// The image or stage name as written (unexpanded: may hold `$VAR`).
    pub base: Word,
    /// The stage name, lower-cased (stage names are case-insensitive), with its span.
    pub name: Option<Word>,
    pub platform: Option<Word>,
    /// `FROM unikernel`.
    pub unikernel: bool,
    /// The description from a `# <name> <description>` comment above.
    pub doc: String,
}

/// A command line of RUN, CMD or ENTRYPOINT (BuildKit's ShellDependantCmdLine).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CommandLine {
    /// Exec form: the array's elements. Shell form: one element, the rest of the line.
    pub args: Vec<Word>,
    /// Shell form: run through the stage's SHELL.
    pub prepend_shell: bool,
    /// Heredoc bodies the command line opens (`RUN <<EOF`).
    pub files: Vec<InlineFile>,
}

impl CommandLine {
    /// The arguments' values.
    pub fn values(&self) -> Vec<String> {
        self.args.iter().map(|w| w.value.clone()).collect()
    }
}

/// A heredoc body attached to a command line.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct InlineFile {
    pub name: String,
    /// The body, raw: leading tabs are kept even when `chomp` is set.
    pub data: String,
    /// `<<-`: strip leading tabs when the file is used.
    pub chomp: bool,
    pub span: Span,
}

/// `CMD`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Cmd {
    pub span: Span,
    pub command: CommandLine,
}

/// `ENTRYPOINT`. An exec-form `ENTRYPOINT []` has no arguments and resets the entrypoint.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Entrypoint {
    pub span: Span,
    pub command: CommandLine,
}

/// One `key=value` (or legacy `key value`) of ENV or LABEL. Both are raw: quotes and
/// variables are resolved by expansion.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyValue {
    pub key: Word,
    pub value: Word,
    /// Written in the legacy `KEY value` form.
    pub legacy: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Env {
    pub span: Span,
    pub vars: Vec<KeyValue>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Label {
    pub span: Span,
    pub labels: Vec<KeyValue>,
}

/// One declaration of an ARG instruction.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ArgDecl {
    pub key: Word,
    /// The default, raw (quotes kept, unexpanded).
    pub value: Option<Word>,
    /// From a `# <key> <description>` comment above the ARG.
    pub doc: String,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Arg {
    pub span: Span,
    pub args: Vec<ArgDecl>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Shell {
    pub span: Span,
    pub shell: Vec<Word>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StopSignal {
    pub span: Span,
    pub signal: Word,
    /// The signal number when the value is a known name or number (not a variable).
    pub number: Option<i64>,
}

/// `USER user[:group]`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct User {
    pub span: Span,
    pub user: Word,
    pub group: Option<Word>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Workdir {
    pub span: Span,
    pub path: Word,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Volume {
    pub span: Span,
    pub paths: Vec<Word>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Maintainer {
    pub span: Span,
    pub name: Word,
}

/// `ONBUILD <instruction>`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Onbuild {
    pub span: Span,
    /// The trigger as BuildKit stores it in the image config (heredoc bodies appended).
    pub expression: String,
    /// The trigger, typed. Its problems are warnings here: they only fail a build that uses
    /// this image as a base.
    pub trigger: Option<Box<Instruction>>,
}

/// `INCLUDE <path>`: splices a Dockerfile fragment in place (done by [`crate::include`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Include {
    pub span: Span,
    pub keyword: Span,
    pub path: Word,
}

/// `APP <path>`: the program a unikernel stage links and boots.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct App {
    pub span: Span,
    pub keyword: Span,
    pub path: Word,
}

/// `MODULE <name>...`: library-OS modules a unikernel stage links in.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Module {
    pub span: Span,
    pub keyword: Span,
    pub names: Vec<Word>,
}

/// The collector every instruction parser writes its diagnostics to.
pub(crate) struct Cx<'a> {
    pub node: &'a Node,
    /// The instruction name, upper-case.
    pub name: String,
    pub diags: Vec<Diagnostic>,
}

impl<'a> Cx<'a> {
    fn new(node: &'a Node) -> Cx<'a> {
        Cx {
            node,
            name: node.keyword.to_ascii_uppercase(),
            diags: Vec::new(),
        }
    }

    pub fn error(
        &mut self,
        code: &'static str,
        span: Span,
        msg: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.diags
            .push(Diagnostic::error(code, span, msg).with_help(help));
    }

    pub fn warn(
        &mut self,
        code: &'static str,
        span: Span,
        msg: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.diags
            .push(Diagnostic::warning(code, span, msg).with_help(help));
    }

    /// Parses the node's flags against `specs`.
    pub fn flags(&mut self, specs: &[flags::Spec]) -> flags::Flags {
        flags::parse(&self.name, &self.node.flags, specs, &mut self.diags)
    }

    /// For instructions that take no flags.
    pub fn no_flags(&mut self) {
        self.flags(&[]);
    }

    /// `X requires at least one argument` unless there is one.
    pub fn at_least_one(&mut self) -> bool {
        if self.node.args.is_empty() {
            let name = self.name.clone();
            self.error(
                "missing-argument",
                self.node.span,
                format!("{name} requires at least one argument"),
                format!("give {name} an argument"),
            );
            return false;
        }
        true
    }

    /// The single argument, or `X requires exactly one argument`.
    pub fn exactly_one(&mut self) -> Option<Word> {
        match self.node.args.as_slice() {
            [one] => Some(one.clone()),
            args => {
                let name = self.name.clone();
                let span = match args.get(1..) {
                    Some(extra) if !extra.is_empty() => {
                        extra[0].span.join(extra[extra.len() - 1].span)
                    }
                    _ => self.node.span,
                };
                self.error(
                    "argument-count",
                    span,
                    format!("{name} requires exactly one argument"),
                    if args.is_empty() {
                        format!("give {name} its argument")
                    } else {
                        format!("give {name} only one argument")
                    },
                );
                None
            }
        }
    }
}

/// Parses one syntax node into a typed instruction. `None` when the node cannot be typed at
/// all (unknown instruction, missing arguments); the diagnostics say why.
pub fn parse_instruction(node: &Node) -> (Option<Instruction>, Vec<Diagnostic>) {
    let mut cx = Cx::new(node);
    let inst = match node.name().as_str() {
        "from" => Some(Instruction::From(parse_from(&mut cx))),
        "run" => run::parse_run(&mut cx).map(Instruction::Run),
        "cmd" => {
            cx.no_flags();
            Some(Instruction::Cmd(Cmd {
                span: node.span,
                command: command_line(node),
            }))
        }
        "entrypoint" => {
            cx.no_flags();
            Some(Instruction::Entrypoint(Entrypoint {
                span: node.span,
                command: command_line(node),
            }))
        }
        "copy" => copy::parse_copy(&mut cx).map(Instruction::Copy),
        "add" => copy::parse_add(&mut cx).map(Instruction::Add),
        "env" => {
            cx.no_flags();
            key_values(&mut cx).map(|vars| {
                Instruction::Env(Env {
                    span: node.span,
                    vars,
                })
            })
        }
        "label" => {
            cx.no_flags();
            key_values(&mut cx).map(|labels| {
                Instruction::Label(Label {
                    span: node.span,
                    labels,
                })
            })
        }
        "arg" => parse_arg(&mut cx).map(Instruction::Arg),
        "expose" => expose::parse_expose(&mut cx).map(Instruction::Expose),
        "healthcheck" => health::parse_healthcheck(&mut cx).map(Instruction::Healthcheck),
        "shell" => parse_shell(&mut cx).map(Instruction::Shell),
        "stopsignal" => parse_stopsignal(&mut cx).map(Instruction::StopSignal),
        "user" => parse_user(&mut cx).map(Instruction::User),
        "workdir" => {
            let path = cx.exactly_one();
            cx.no_flags();
            path.map(|path| {
                Instruction::Workdir(Workdir {
                    span: node.span,
                    path,
                })
            })
        }
        "volume" => parse_volume(&mut cx).map(Instruction::Volume),
        "maintainer" => parse_maintainer(&mut cx).map(Instruction::Maintainer),
        "onbuild" => parse_onbuild(&mut cx).map(Instruction::Onbuild),
        "include" => {
            let path = cx.exactly_one();
            cx.no_flags();
            path.map(|path| {
                Instruction::Include(Include {
                    span: node.span,
                    keyword: node.keyword_span,
                    path,
                })
            })
        }
        "app" => {
            let path = cx.exactly_one();
            cx.no_flags();
            path.map(|path| {
                Instruction::App(App {
                    span: node.span,
                    keyword: node.keyword_span,
                    path,
                })
            })
        }
        "module" => parse_module(&mut cx).map(Instruction::Module),
        _ => {
            let all = BUILDKIT_INSTRUCTIONS
                .iter()
                .chain(EXTENSION_INSTRUCTIONS)
                .copied();
            let s = util::suggest(&node.keyword, all, false);
            let help = match &s {
                Some(s) => format!("did you mean {s}?"),
                None => "use one of the Dockerfile instructions (FROM, RUN, COPY, …)".into(),
            };
            cx.error(
                "unknown-instruction",
                node.keyword_span,
                util::with_suggestion(
                    format!("unknown instruction: {}", node.keyword),
                    s.as_deref(),
                ),
                help,
            );
            None
        }
    };
    (inst, cx.diags)
}

/// BuildKit's getDocComment: the rest of the first comment line that starts with `name `.
pub(crate) fn doc_comment(comments: &[String], name: &str) -> String {
    if name.is_empty() {
        return String::new();
    }
    comments
        .iter()
        .find_map(|c| c.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_default()
        .to_owned()
}

fn is_valid_stage_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

fn parse_from(cx: &mut Cx) -> From {
    let node = cx.node;
    let args = &node.args;
    // BuildKit's lint rules on FROM (they do not stop the build).
    if let [_, as_kw, name] = args.as_slice() {
        if name.value != name.value.to_lowercase() {
            cx.warn(
                "StageNameCasing",
                name.span,
                format!("Stage name '{}' should be lowercase", name.value),
                format!("write the stage name as {}", name.value.to_lowercase()),
            );
        }
        let kw = &node.keyword;
        let from_lower = *kw == kw.to_lowercase();
        let from_upper = *kw == kw.to_uppercase();
        let mismatch = (from_lower && as_kw.value != as_kw.value.to_lowercase())
            || (!from_lower && from_upper && as_kw.value != as_kw.value.to_uppercase());
        if mismatch {
            cx.warn(
                "FromAsCasing",
                as_kw.span,
                format!(
                    "'{}' and '{}' keywords' casing do not match",
                    as_kw.value, kw
                ),
                if from_lower {
                    "write `as` in lower case like `from`"
                } else {
                    "write `AS` in upper case like `FROM`"
                },
            );
        }
    }
    let flags = cx.flags(&[flags::flag("platform", Kind::String)]);
    let mut name = None;
    match args.as_slice() {
        [_, as_kw, n] if as_kw.value.eq_ignore_ascii_case("as") => {
            let lower = n.value.to_lowercase();
            if !is_valid_stage_name(&lower) {
                cx.error(
                    "invalid-stage-name",
                    n.span,
                    format!(
                        "invalid name for build stage: {}, name can't start with a number or contain symbols",
                        crate::golang::quote(&n.value)
                    ),
                    "start the name with a letter and use only letters, digits, '-', '_' and '.'",
                );
            }
            name = Some(Word {
                value: lower,
                span: n.span,
            });
        }
        [_] => {}
        _ => {
            let span = match args.get(1..) {
                Some(rest) if !rest.is_empty() => rest[0].span.join(rest[rest.len() - 1].span),
                _ => node.span,
            };
            cx.error(
                "argument-count",
                span,
                "FROM requires either one or three arguments",
                "write `FROM <image>` or `FROM <image> AS <name>`",
            );
        }
    }
    let base = args.first().cloned().unwrap_or(Word {
        value: String::new(),
        span: node.span,
    });
    let doc = name
        .as_ref()
        .map(|n| doc_comment(&node.prev_comment, &n.value))
        .unwrap_or_default();
    From {
        span: node.span,
        unikernel: base.value == UNIKERNEL_BASE,
        base,
        name,
        platform: flags.string("platform"),
        doc,
    }
}

/// RUN, CMD and ENTRYPOINT command lines (BuildKit's parseShellDependentCommand).
pub(crate) fn command_line(node: &Node) -> CommandLine {
    let files = heredocs_of(node)
        .iter()
        .map(|h| InlineFile {
            name: h.name.clone(),
            data: h.content.clone(),
            chomp: h.chomp,
            span: h.span,
        })
        .collect();
    let args = if node.json || node.args.len() <= 1 {
        node.args.clone()
    } else {
        // The syntax layer gives shell form as one word already; join defensively.
        let first = &node.args[0];
        let last = &node.args[node.args.len() - 1];
        vec![Word {
            value: node
                .args
                .iter()
                .map(|w| w.value.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            span: first.span.join(last.span),
        }]
    };
    CommandLine {
        args,
        prepend_shell: !node.json,
        files,
    }
}

/// The heredocs of an instruction (for ONBUILD they sit on the ONBUILD node).
pub(crate) fn heredocs_of(node: &Node) -> &[Heredoc] {
    &node.heredocs
}

/// ENV and LABEL: the (key, value, separator) triples of the syntax layer.
fn key_values(cx: &mut Cx) -> Option<Vec<KeyValue>> {
    let name = cx.name.clone();
    let args = &cx.node.args;
    if args.is_empty() {
        cx.at_least_one();
        return None;
    }
    if !args.len().is_multiple_of(3) {
        cx.error(
            "argument-count",
            cx.node.span,
            format!("Bad input to {name}, too many arguments"),
            format!("write {name} as `key=value` pairs"),
        );
        return None;
    }
    let mut out = Vec::new();
    for t in args.chunks(3) {
        if t[0].value.is_empty() {
            cx.error(
                "blank-name",
                t[0].span.join(t[1].span),
                format!("{name} names can not be blank"),
                format!("give each {name} value a name: `name=value`"),
            );
            continue;
        }
        out.push(KeyValue {
            key: t[0].clone(),
            value: t[1].clone(),
            legacy: t[2].value.is_empty(),
        });
    }
    Some(out)
}

fn parse_arg(cx: &mut Cx) -> Option<Arg> {
    let node = cx.node;
    flags::ignored("ARG", &node.flags, &mut cx.diags);
    if !cx.at_least_one() {
        return None;
    }
    let mut args = Vec::new();
    for w in &node.args {
        let (key, value) = match w.value.find('=') {
            Some(eq) => (
                util::sub_word(w, 0, eq),
                Some(util::sub_word(w, eq + 1, w.value.len())),
            ),
            None => (w.clone(), None),
        };
        if key.value.is_empty() {
            cx.error(
                "blank-name",
                w.span,
                "ARG names can not be blank",
                "write `ARG name` or `ARG name=default`",
            );
            continue;
        }
        let doc = doc_comment(&node.prev_comment, &key.value);
        args.push(ArgDecl { key, value, doc });
    }
    Some(Arg {
        span: node.span,
        args,
    })
}

fn parse_shell(cx: &mut Cx) -> Option<Shell> {
    cx.no_flags();
    let node = cx.node;
    if node.args.is_empty() {
        cx.at_least_one();
        return None;
    }
    if !node.json {
        cx.error(
            "not-json",
            node.args[0].span,
            "SHELL requires the arguments to be in JSON form",
            "write the shell as a JSON array, e.g. SHELL [\"/bin/bash\", \"-c\"]",
        );
        return None;
    }
    Some(Shell {
        span: node.span,
        shell: node.args.clone(),
    })
}

/// Signal names Linux knows, as moby's signal.ParseSignal accepts them (without `SIG`).
fn signal_number(name: &str) -> Option<i64> {
    const NAMES: &[(&str, i64)] = &[
        ("ABRT", 6),
        ("ALRM", 14),
        ("BUS", 7),
        ("CHLD", 17),
        ("CLD", 17),
        ("CONT", 18),
        ("FPE", 8),
        ("HUP", 1),
        ("ILL", 4),
        ("INT", 2),
        ("IO", 29),
        ("IOT", 6),
        ("KILL", 9),
        ("PIPE", 13),
        ("POLL", 29),
        ("PROF", 27),
        ("PWR", 30),
        ("QUIT", 3),
        ("SEGV", 11),
        ("STKFLT", 16),
        ("STOP", 19),
        ("SYS", 31),
        ("TERM", 15),
        ("TRAP", 5),
        ("TSTP", 20),
        ("TTIN", 21),
        ("TTOU", 22),
        ("URG", 23),
        ("USR1", 10),
        ("USR2", 12),
        ("VTALRM", 26),
        ("WINCH", 28),
        ("XCPU", 24),
        ("XFSZ", 25),
        ("RTMIN", 34),
        ("RTMAX", 64),
    ];
    if let Ok(n) = name.parse::<i64>() {
        return (n != 0).then_some(n);
    }
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some((_, n)) = NAMES.iter().find(|(k, _)| *k == bare) {
        return Some(*n);
    }
    // RTMIN+1 … RTMIN+15 and RTMAX-14 … RTMAX-1.
    if let Some(k) = bare.strip_prefix("RTMIN+") {
        return k
            .parse::<i64>()
            .ok()
            .filter(|k| (1..=15).contains(k) && !bare.contains("+0"))
            .map(|k| 34 + k);
    }
    if let Some(k) = bare.strip_prefix("RTMAX-") {
        return k
            .parse::<i64>()
            .ok()
            .filter(|k| (1..=14).contains(k) && !bare.contains("-0"))
            .map(|k| 64 - k);
    }
    None
}

fn parse_stopsignal(cx: &mut Cx) -> Option<StopSignal> {
    flags::ignored("STOPSIGNAL", &cx.node.flags, &mut cx.diags);
    let signal = cx.exactly_one()?;
    let mut number = None;
    if !util::needs_expansion(&signal.value) {
        number = signal_number(&signal.value);
        if number.is_none() {
            cx.error(
                "invalid-signal",
                signal.span,
                format!("invalid signal: {}", signal.value),
                "use a signal name such as SIGTERM or SIGINT, or a signal number",
            );
        }
    }
    Some(StopSignal {
        span: cx.node.span,
        signal,
        number,
    })
}

fn parse_user(cx: &mut Cx) -> Option<User> {
    let whole = cx.exactly_one();
    cx.no_flags();
    let whole = whole?;
    let (user, group) = match whole.value.find(':') {
        Some(i) => (
            util::sub_word(&whole, 0, i),
            Some(util::sub_word(&whole, i + 1, whole.value.len())),
        ),
        None => (whole.clone(), None),
    };
    Some(User {
        span: cx.node.span,
        user,
        group,
    })
}

fn parse_volume(cx: &mut Cx) -> Option<Volume> {
    if !cx.at_least_one() {
        return None;
    }
    cx.no_flags();
    let mut paths = Vec::new();
    for w in &cx.node.args {
        let v = w.value.trim();
        if v.is_empty() {
            cx.error(
                "empty-volume",
                w.span,
                "VOLUME specified can not be an empty string",
                "give VOLUME a path such as /data",
            );
            continue;
        }
        paths.push(Word {
            value: v.to_owned(),
            span: w.span,
        });
    }
    Some(Volume {
        span: cx.node.span,
        paths,
    })
}

fn parse_maintainer(cx: &mut Cx) -> Option<Maintainer> {
    let name = cx.exactly_one();
    cx.no_flags();
    cx.warn(
        "MaintainerDeprecated",
        cx.node.keyword_span,
        "Maintainer instruction is deprecated in favor of using label",
        "use LABEL org.opencontainers.image.authors=\"…\" instead",
    );
    Some(Maintainer {
        span: cx.node.span,
        name: name?,
    })
}

fn parse_onbuild(cx: &mut Cx) -> Option<Onbuild> {
    let node = cx.node;
    let Some(sub) = node.sub.as_deref() else {
        cx.at_least_one();
        return None;
    };
    cx.no_flags();
    let trigger = sub.keyword.trim().to_ascii_uppercase();
    match trigger.as_str() {
        "ONBUILD" => {
            cx.error(
                "onbuild-trigger",
                sub.keyword_span,
                "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
                "write the trigger instruction once after a single ONBUILD",
            );
            return None;
        }
        "MAINTAINER" | "FROM" => {
            cx.error(
                "onbuild-trigger",
                sub.keyword_span,
                format!("{trigger} isn't allowed as an ONBUILD trigger"),
                format!("move the {trigger} instruction out of ONBUILD"),
            );
            return None;
        }
        "INCLUDE" | "APP" | "MODULE" => {
            cx.error(
                "onbuild-trigger",
                sub.keyword_span,
                format!("{trigger} isn't allowed as an ONBUILD trigger"),
                format!("{trigger} is an imgbuild extension that acts when this file is built; move it out of ONBUILD"),
            );
            return None;
        }
        _ => {}
    }
    // The expression: the line without its ONBUILD keyword, heredoc bodies appended.
    let original = node.original.trim_start();
    let kw_len = original
        .get(..7)
        .filter(|k| k.eq_ignore_ascii_case("onbuild"))
        .map_or(0, |_| 7);
    let mut expression = original[kw_len..].trim_start().to_owned();
    for h in &node.heredocs {
        expression.push('\n');
        expression.push_str(&h.content);
        expression.push_str(&h.name);
    }
    // Type the trigger now, so mistakes show up early; they only fail a child build.
    let mut sub_node = sub.clone();
    if sub_node.heredocs.is_empty() {
        sub_node.heredocs = node.heredocs.clone();
    }
    let (inst, diags) = parse_instruction(&sub_node);
    for mut d in diags {
        if d.severity == Severity::Error {
            d.severity = Severity::Warning;
            d.message = format!("ONBUILD trigger: {}", d.message);
            d.help = Some(format!(
                "{} (this only fails builds that use this image as a base)",
                d.help.unwrap_or_default().trim_end_matches('.')
            ));
        }
        cx.diags.push(d);
    }
    Some(Onbuild {
        span: node.span,
        expression,
        trigger: inst.map(Box::new),
    })
}

/// A module name: `[a-z][a-z0-9-]*`.
pub fn is_valid_module_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn parse_module(cx: &mut Cx) -> Option<Module> {
    if !cx.at_least_one() {
        return None;
    }
    cx.no_flags();
    let mut names = Vec::new();
    for w in &cx.node.args {
        if !is_valid_module_name(&w.value) {
            cx.error(
                "invalid-module-name",
                w.span,
                format!("invalid module name {}", crate::golang::quote(&w.value)),
                "a module name starts with a lowercase letter and has only lowercase letters, digits and '-'",
            );
            continue;
        }
        names.push(w.clone());
    }
    Some(Module {
        span: cx.node.span,
        keyword: cx.node.keyword_span,
        names,
    })
}

#[cfg(test)]
pub(crate) mod tests;
