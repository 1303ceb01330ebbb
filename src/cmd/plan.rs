//! `imgbuild plan`: the build DAG with each step's key and whether the store has it; with
//! `--explain`, why each missing step misses.

use crate::build::{self, Common, Prepared};
use clap::ValueEnum;
use imgbuild_executor::{CachePolicy, StepRecord};
use imgbuild_planner::{Key, render};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Dot,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// For each step the store does not have, say which input changed since the last build
    /// of this target.
    #[arg(long)]
    pub explain: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let prep = match build::prepare(&args.common)? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let store = &prep.store;
    // A record counts when its blob is there and the step's `RUN --cache=` policy allows it
    // (whether it was built on the very layers below is known only while building).
    let now = std::time::SystemTime::now();
    let policies: std::collections::HashMap<Key, CachePolicy> = prep
        .plan
        .steps
        .iter()
        .map(|s| (s.key, CachePolicy::of(s)))
        .collect();
    let cached = |k: &Key| {
        let policy = policies.get(k);
        store.get_step::<StepRecord>(&k.0).hit().is_some_and(|r| {
            store.has_blob(&r.layer.digest)
                && r.base.is_some()
                && policy.is_none_or(|p| p.refuses(r.made_ms, now).is_none())
        })
    };
    match args.format {
        Format::Text => {
            print!("{}", render::text(&prep.plan, &cached));
            print!("{}", module_sets(&prep));
        }
        Format::Json => println!("{}", render::json(&prep.plan, &cached)),
        Format::Dot => print!("{}", render::dot(&prep.plan, &cached)),
    }
    if args.explain {
        explain(&prep, &cached);
    }
    Ok(ExitCode::SUCCESS)
}

/// For each unikernel step: its module set, each module with why it is in.
fn module_sets(prep: &Prepared) -> String {
    let line_of = |span: imgbuild_parser::Span| prep.sources.line_col(span.file, span.start).0;
    let mut out = String::new();
    for s in &prep.plan.steps {
        let imgbuild_planner::Op::Unikernel(u) = &s.op else {
            continue;
        };
        out.push_str(&format!(
            "\n#{} module set of {} (why each module is linked in):\n",
            s.id, u.bin
        ));
        for m in &u.modules {
            out.push_str(&format!("  {:<10} {}\n", m.name, m.why.describe(&line_of)));
        }
        if !u.ports.is_empty() {
            let ports: Vec<String> = u.ports.iter().map(|p| p.to_string()).collect();
            out.push_str(&format!(
                "  exposed ports (imgbuild run forwards them): {}\n",
                ports.join(" ")
            ));
        }
    }
    out
}

/// One step as the last build saw it.
#[derive(Serialize, Deserialize)]
struct Recorded {
    stage: usize,
    /// Position within its stage.
    index: usize,
    created_by: String,
    key: String,
    inputs: Vec<(String, String)>,
}

fn explain_path(prep: &Prepared) -> PathBuf {
    let df = std::fs::canonicalize(&prep.dockerfile).unwrap_or_else(|_| prep.dockerfile.clone());
    let target = prep.plan.target;
    let h = blake3::hash(format!("{}\0{target}", df.display()).as_bytes());
    prep.store
        .root()
        .join("explain")
        .join(format!("{}.json", h.to_hex()))
}

fn recorded(prep: &Prepared) -> Vec<Recorded> {
    let mut per_stage: BTreeMap<usize, usize> = BTreeMap::new();
    prep.plan
        .steps
        .iter()
        .map(|s| {
            let n = per_stage.entry(s.stage).or_default();
            *n += 1;
            Recorded {
                stage: s.stage,
                index: *n - 1,
                created_by: s.created_by.clone(),
                key: s.key.hex(),
                inputs: s.inputs.clone(),
            }
        })
        .collect()
}

/// Remembers this build's step inputs, for the next `plan --explain`.
pub fn record_explain(prep: &Prepared) {
    let data = match serde_json::to_vec(&recorded(prep)) {
        Ok(d) => d,
        Err(_) => return,
    };
    if let Err(e) = prep.store.write_atomic(&explain_path(prep), &data) {
        eprintln!("warning: cannot record the build for plan --explain: {e}");
    }
}

fn explain(prep: &Prepared, cached: &dyn Fn(&Key) -> bool) {
    let previous: Vec<Recorded> = std::fs::read(explain_path(prep))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let now = recorded(prep);
    println!();
    let mut any = false;
    for (rec, step) in now.iter().zip(&prep.plan.steps) {
        if !step.layer || cached(&step.key) {
            continue;
        }
        any = true;
        let before = previous
            .iter()
            .find(|p| p.stage == rec.stage && p.index == rec.index)
            .or_else(|| previous.iter().find(|p| p.created_by == rec.created_by));
        let Some(before) = before else {
            println!("#{} {}: not built before", step.id, rec.created_by);
            continue;
        };
        let old: BTreeMap<&str, &str> = before
            .inputs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let new: BTreeMap<&str, &str> = rec
            .inputs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut reasons = Vec::new();
        for (k, v) in &new {
            match old.get(k) {
                None => reasons.push(format!("{k} added")),
                Some(o) if o != v => reasons.push(format!("{k} changed")),
                _ => {}
            }
        }
        for k in old.keys().filter(|k| !new.contains_key(*k)) {
            reasons.push(format!("{k} removed"));
        }
        if before.created_by != rec.created_by {
            reasons.push(format!(
                "the instruction changed (was `{}`)",
                before.created_by
            ));
        }
        if reasons.is_empty() {
            reasons.push(if before.key == rec.key {
                "its result is no longer in the store (pruned?)".into()
            } else {
                "an earlier step changed".into()
            });
        }
        // Parent changes are implied by the earlier step's own explanation.
        if reasons.len() > 1 {
            reasons.retain(|r| !r.starts_with("parent"));
        }
        println!("#{} {}: {}", step.id, rec.created_by, reasons.join(", "));
    }
    if !any {
        println!("every step is in the store: the build would do no work");
    }
}
