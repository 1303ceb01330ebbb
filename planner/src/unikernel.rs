//! Unikernel stages: the runtime's module graph, the module set a stage links (a closure over
//! that graph, each module with the reason it is in), and the link step's operation.

use imgbuild_parser::Span;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// The modules every unikernel has: the entry path and the serial console (panics and the
/// exit path print there).
pub const BASE_MODULES: &[&str] = &["boot", "console"];

/// One module of the runtime, as `modules.toml` describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModuleSpec {
    pub name: String,
    /// The runtime crate's Cargo feature that compiles the module in.
    pub feature: String,
    pub depends_on: Vec<String>,
    pub description: String,
}

/// The runtime this imgbuild links apps with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnikernelRuntime {
    /// The module graph, in `modules.toml`'s order.
    pub modules: Vec<ModuleSpec>,
    /// A digest of the runtime crate's files.
    pub digest: String,
    /// `rustc -vV` of the toolchain that builds the app.
    pub toolchain: String,
}

/// An app crate in the build context, as its manifest describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppCrate {
    /// `[package] name`.
    pub package: String,
    /// The crate's single binary (the ELF cargo writes).
    pub bin: String,
    /// `[package.metadata.imgbuild] modules`.
    pub modules: Vec<String>,
    /// The features its `imgbuild-unikernel` dependency asks for (a module's feature counts as
    /// declaring the module; others, such as `bench-exit-at-entry`, are passed on).
    pub features: Vec<String>,
    /// A digest of the crate directory's files (`target/` left out).
    pub digest: String,
}

/// Why a module is in a unikernel's module set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum ModuleWhy {
    /// boot and console: every unikernel has them.
    Base,
    /// The app declares it (`[package.metadata.imgbuild] modules`).
    App,
    /// A MODULE instruction names it (the name's span).
    Instruction(Span),
    /// An instruction of the stage needs it (fs for COPY/ADD; net and tcp or udp for EXPOSE).
    Implied { instruction: String, span: Span },
    /// A module of the set depends on it.
    Dependency(String),
}

impl ModuleWhy {
    /// `declared by the app`, `MODULE line 4`, `implied by COPY (line 3)`, `dependency of fs`.
    pub fn describe(&self, line_of: &dyn Fn(Span) -> usize) -> String {
        match self {
            ModuleWhy::Base => "every unikernel has it".into(),
            ModuleWhy::App => "declared by the app".into(),
            ModuleWhy::Instruction(s) => format!("MODULE line {}", line_of(*s)),
            ModuleWhy::Implied { instruction, span } => {
                format!("implied by {instruction} (line {})", line_of(*span))
            }
            ModuleWhy::Dependency(of) => format!("dependency of {of}"),
        }
    }
}

/// A module in the set, with the reason it is there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModuleChoice {
    pub name: String,
    pub feature: String,
    pub why: ModuleWhy,
}

/// A port a unikernel stage EXPOSEs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ExposedPort {
    pub port: u16,
    /// `tcp` or `udp` (the runtime has no other transport).
    pub udp: bool,
}

impl ExposedPort {
    pub fn protocol(&self) -> &'static str {
        if self.udp { "udp" } else { "tcp" }
    }
}

impl std::fmt::Display for ExposedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol())
    }
}

/// Links a unikernel: the app crate with the runtime's module set and the stage's files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnikernelOp {
    /// The app crate's directory, relative to the context root ("" for the root itself).
    pub app: String,
    pub package: String,
    pub bin: String,
    /// The module set, in the module graph's order.
    pub modules: Vec<ModuleChoice>,
    /// Runtime features the app asks for that are not modules, sorted.
    pub extra_features: Vec<String>,
    /// The CMD: the app's arguments.
    pub cmd: Vec<String>,
    /// The stage's EXPOSEd ports, sorted and without duplicates: `imgbuild run` forwards
    /// them (the executor writes them into the ELF's `.imgbuild.ports` section).
    pub ports: Vec<ExposedPort>,
    /// `KEY=VALUE`: the stage's ENV.
    pub env: Vec<String>,
    pub app_digest: String,
    pub runtime_digest: String,
    pub toolchain: String,
}

impl UnikernelOp {
    /// The runtime's Cargo features to enable, sorted.
    pub fn features(&self) -> Vec<String> {
        let mut f: Vec<String> = self.modules.iter().map(|m| m.feature.clone()).collect();
        f.extend(self.extra_features.iter().cloned());
        f.sort();
        f.dedup();
        f
    }

    /// The module names, in graph order.
    pub fn module_names(&self) -> Vec<&str> {
        self.modules.iter().map(|m| m.name.as_str()).collect()
    }
}

/// The closure of `roots` (in priority order: the first reason given for a module is the one
/// kept) over the dependency graph. Every root must name a module of `graph`; a `depends_on`
/// naming no module is an error of the runtime's `modules.toml`.
pub fn module_set(
    graph: &[ModuleSpec],
    roots: Vec<(String, ModuleWhy)>,
) -> Result<Vec<ModuleChoice>, String> {
    let index: BTreeMap<&str, usize> = graph
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.as_str(), i))
        .collect();
    // Node i is module i; an edge goes from a module to each module it depends on.
    let mut g: DiGraph<(), ()> = DiGraph::new();
    for _ in graph {
        g.add_node(());
    }
    for (i, m) in graph.iter().enumerate() {
        for d in &m.depends_on {
            let j = *index.get(d.as_str()).ok_or_else(|| {
                format!(
                    "the runtime's modules.toml is broken: {} depends on {d:?}, which is not a module",
                    m.name
                )
            })?;
            g.add_edge(NodeIndex::new(i), NodeIndex::new(j), ());
        }
    }
    let mut why: Vec<Option<ModuleWhy>> = vec![None; graph.len()];
    let mut queue = VecDeque::new();
    for (name, reason) in roots {
        let i = *index
            .get(name.as_str())
            .ok_or_else(|| format!("unknown module {name:?}"))?;
        if why[i].is_none() {
            why[i] = Some(reason);
            queue.push_back(i);
        }
    }
    // Breadth first, so a module is explained by the closest module that needs it.
    while let Some(i) = queue.pop_front() {
        let mut deps: Vec<usize> = g.neighbors(NodeIndex::new(i)).map(|n| n.index()).collect();
        deps.sort_unstable();
        for j in deps {
            if why[j].is_none() {
                why[j] = Some(ModuleWhy::Dependency(graph[i].name.clone()));
                queue.push_back(j);
            }
        }
    }
    Ok(graph
        .iter()
        .zip(why)
        .filter_map(|(m, w)| {
            w.map(|why| ModuleChoice {
                name: m.name.clone(),
                feature: m.feature.clone(),
                why,
            })
        })
        .collect())
}

/// The names of the modules, for messages.
pub fn known_modules(graph: &[ModuleSpec]) -> String {
    graph
        .iter()
        .map(|m| m.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, deps: &[&str]) -> ModuleSpec {
        ModuleSpec {
            name: name.into(),
            feature: name.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            description: String::new(),
        }
    }

    #[test]
    fn closure_keeps_the_first_reason() {
        let g = vec![
            spec("boot", &[]),
            spec("console", &["boot"]),
            spec("alloc", &["boot"]),
            spec("fs", &["alloc"]),
            spec("rng", &[]),
        ];
        let set = module_set(
            &g,
            vec![
                ("boot".into(), ModuleWhy::Base),
                ("console".into(), ModuleWhy::Base),
                ("fs".into(), ModuleWhy::App),
                ("fs".into(), ModuleWhy::Instruction(Span::default())),
            ],
        )
        .unwrap();
        let names: Vec<_> = set.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["boot", "console", "alloc", "fs"]);
        assert_eq!(set[2].why, ModuleWhy::Dependency("fs".into()));
        assert_eq!(set[3].why, ModuleWhy::App);
        assert!(
            module_set(&g, vec![("net".into(), ModuleWhy::App)])
                .unwrap_err()
                .contains("unknown module")
        );
        let broken = vec![spec("a", &["b"])];
        assert!(
            module_set(&broken, vec![])
                .unwrap_err()
                .contains("modules.toml")
        );
    }
}
