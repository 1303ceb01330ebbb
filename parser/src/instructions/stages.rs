//! Grouping instructions into stages, the unikernel-stage rules, and the portability rule for
//! our extensions under Docker's own `# syntax=` frontend.

use std::collections::HashMap;

use crate::ast::{Dockerfile, Span, Word};
use crate::diag::Diagnostic;

use super::{Arg, From, Include, Instruction, parse_instruction};

/// One build stage: a FROM and the instructions up to the next FROM.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Stage {
    /// `AS name`, lower-cased.
    pub name: Option<String>,
    /// The base as written (may hold `$VAR`: expanded with the global ARGs by the planner).
    pub base: String,
    pub platform: Option<Word>,
    /// `FROM unikernel`, or based on a unikernel stage.
    pub unikernel: bool,
    pub instructions: Vec<Instruction>,
    /// The FROM instruction's span.
    pub span: Span,
    /// The description from a `# <name> <description>` comment above the FROM.
    pub doc: String,
    /// The FROM instruction, with sub-spans.
    pub from: From,
}

/// A Dockerfile as stages.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TypedDockerfile {
    /// The ARGs before the first FROM (usable in FROM lines).
    pub meta_args: Vec<Arg>,
    pub stages: Vec<Stage>,
    /// INCLUDE instructions still present (not spliced, e.g. under a Docker syntax line).
    pub includes: Vec<Include>,
}

impl TypedDockerfile {
    /// The stage of that name (stage names are case-insensitive); the last one when the name
    /// is given twice, as BuildKit resolves it.
    pub fn stage(&self, name: &str) -> Option<(usize, &Stage)> {
        let lower = name.to_lowercase();
        self.stages
            .iter()
            .enumerate()
            .rev()
            .find(|(_, s)| s.name.as_deref() == Some(lower.as_str()))
    }
}

/// Whether a `# syntax=` value names Docker's own Dockerfile frontend, where our extensions
/// do not exist.
pub fn is_docker_frontend(syntax: &str) -> bool {
    crate::include::is_docker_frontend(syntax)
}

/// Why an instruction cannot be in a unikernel stage, and what to do instead.
fn unikernel_forbids(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "RUN" => (
            "a unikernel has no shell to run commands",
            "build files in an earlier stage and COPY --from it",
        ),
        "ENTRYPOINT" => (
            "a unikernel boots straight into its APP",
            "name the program with APP and give its arguments with CMD",
        ),
        "SHELL" => (
            "a unikernel has no shell",
            "remove SHELL and write CMD in exec form: CMD [\"arg\", …]",
        ),
        "HEALTHCHECK" => (
            "a unikernel has no process manager to run health checks",
            "remove HEALTHCHECK and check the service from outside, e.g. over the network",
        ),
        "USER" => (
            "a unikernel runs a single program without user accounts",
            "remove USER; set file owners with COPY --chown if they matter",
        ),
        "WORKDIR" => (
            "a unikernel has no working directory to set",
            "remove WORKDIR and use absolute destination paths in COPY and ADD",
        ),
        "VOLUME" => ("a unikernel has no volume mounts", "remove VOLUME"),
        "STOPSIGNAL" => (
            "a unikernel has no signals: it stops when its APP returns",
            "remove STOPSIGNAL",
        ),
        "ONBUILD" => (
            "a unikernel image cannot be the base of another image build",
            "remove ONBUILD",
        ),
        "MAINTAINER" => (
            "a unikernel image keeps metadata only as labels",
            "use LABEL org.opencontainers.image.authors=\"…\" instead",
        ),
        _ => return None,
    })
}

/// Types every instruction and groups them into stages.
///
/// Returns the typed file and every problem found: the instructions' own errors (BuildKit's
/// texts), instructions before the first FROM other than ARG, the unikernel-stage rules and
/// our extensions used under Docker's `# syntax=` frontend.
pub fn typed(df: &Dockerfile) -> (TypedDockerfile, Vec<Diagnostic>) {
    let mut out = TypedDockerfile::default();
    let mut diags = Vec::new();
    let docker_syntax = df
        .directive("syntax")
        .filter(|d| is_docker_frontend(&d.value));
    // Whether each stage name (the last of that name so far) is a unikernel stage.
    let mut unikernel_by_name: HashMap<String, bool> = HashMap::new();
    // The first APP of the current stage, to report a second one.
    let mut app_seen: Option<Span> = None;
    for node in &df.children {
        let (inst, d) = parse_instruction(node);
        diags.extend(d);
        let Some(inst) = inst else { continue };
        if let (Some(dir), Some((what, span))) = (docker_syntax, inst.extension_use()) {
            diags.push(
                Diagnostic::error(
                    "imgbuild-extension",
                    span,
                    format!(
                        "{what} is an imgbuild extension, not available with `# syntax={}`",
                        dir.value
                    ),
                )
                .with_help(
                    "remove the `# syntax=` line to use imgbuild extensions, or do without this one",
                )
                .with_label(dir.span, "this selects Docker's Dockerfile frontend"),
            );
        }
        let inst = match inst {
            Instruction::From(f) => {
                let unikernel =
                    f.unikernel || unikernel_by_name.get(&f.base.value).copied() == Some(true);
                if let Some(n) = &f.name {
                    unikernel_by_name.insert(n.value.clone(), unikernel);
                }
                out.stages.push(Stage {
                    name: f.name.as_ref().map(|n| n.value.clone()),
                    base: f.base.value.clone(),
                    platform: f.platform.clone(),
                    unikernel,
                    instructions: Vec::new(),
                    span: f.span,
                    doc: f.doc.clone(),
                    from: f,
                });
                app_seen = None;
                continue;
            }
            Instruction::Include(i) => {
                out.includes.push(i);
                continue;
            }
            inst => inst,
        };
        let Some(stage) = out.stages.last_mut() else {
            match inst {
                Instruction::Arg(a) => out.meta_args.push(a),
                other => diags.push(
                    Diagnostic::error(
                        "no-stage",
                        node.keyword_span,
                        "no build stage in current context",
                    )
                    .with_help(format!(
                        "add a FROM line before this {}: only ARG may come before the first FROM",
                        other.name()
                    )),
                ),
            }
            continue;
        };
        let name = inst.name();
        if stage.unikernel {
            if let Some((why, fix)) = unikernel_forbids(name) {
                diags.push(
                    Diagnostic::error(
                        "unikernel-stage",
                        node.keyword_span,
                        format!("{name} is not allowed in a unikernel stage: {why}"),
                    )
                    .with_help(fix)
                    .with_label(stage.from.base.span, "the unikernel stage starts here"),
                );
                continue;
            }
            if let Instruction::Cmd(c) = &inst
                && c.command.prepend_shell
            {
                diags.push(
                    Diagnostic::error(
                        "unikernel-stage",
                        node.keyword_span,
                        "CMD in a unikernel stage must be in exec form: a unikernel has no shell to run a command line",
                    )
                    .with_help("write the APP's arguments as a JSON array: CMD [\"--port\", \"8080\"]")
                    .with_label(stage.from.base.span, "the unikernel stage starts here"),
                );
                continue;
            }
            if let Instruction::App(app) = &inst {
                if let Some(first) = app_seen {
                    diags.push(
                        Diagnostic::error(
                            "unikernel-stage",
                            app.keyword,
                            "APP is given more than once in this stage",
                        )
                        .with_help("keep one APP: a unikernel boots exactly one program")
                        .with_label(first, "the first APP"),
                    );
                    continue;
                }
                app_seen = Some(app.keyword);
            }
        } else if matches!(inst, Instruction::App(_) | Instruction::Module(_)) {
            diags.push(
                Diagnostic::error(
                    "unikernel-only",
                    node.keyword_span,
                    format!("{name} is only allowed in a unikernel stage"),
                )
                .with_help(format!(
                    "start the stage with `FROM unikernel AS <name>` to build a unikernel, or remove {name}"
                ))
                .with_label(stage.from.span, "this stage is a container image"),
            );
            continue;
        }
        stage.instructions.push(inst);
    }
    if let Some(first) = df.children.first().filter(|_| out.stages.is_empty()) {
        diags.push(
            Diagnostic::error(
                "no-stage",
                first.span,
                "dockerfile contains no stages to build",
            )
            .with_help("add a FROM line to start a build stage"),
        );
    }
    (out, diags)
}
