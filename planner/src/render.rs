//! `imgbuild plan` output: the DAG as text, JSON or Graphviz dot.

use crate::{Key, Plan};
use serde_json::json;

/// One line per step: id, stage, cache state, key, what it does.
pub fn text(plan: &Plan, cached: &dyn Fn(&Key) -> bool) -> String {
    let mut out = String::new();
    for s in &plan.steps {
        let stage = stage_label(plan, s.stage);
        let state = if !s.layer {
            "meta  "
        } else if cached(&s.key) {
            "cached"
        } else {
            "build "
        };
        out.push_str(&format!(
            "#{:<3} {:<12} {state} {} {}\n",
            s.id,
            stage,
            s.key.short(),
            s.created_by
        ));
    }
    out
}

/// The whole plan as JSON, each step with its key, inputs and cache state.
pub fn json(plan: &Plan, cached: &dyn Fn(&Key) -> bool) -> serde_json::Value {
    let steps: Vec<_> = plan
        .steps
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "key": s.key,
                "stage": stage_label(plan, s.stage),
                "parent": s.parent,
                "deps": s.deps,
                "layer": s.layer,
                "cached": s.layer && cached(&s.key),
                "created_by": s.created_by,
                "op": s.op,
                "inputs": s.inputs,
            })
        })
        .collect();
    json!({
        "target": stage_label(plan, plan.target),
        "platform": plan.platform.spec(),
        "steps": steps,
        "unused_build_args": plan.unused_build_args,
    })
}

/// Graphviz: one cluster per stage, edges from inputs to users; cached steps are grey.
pub fn dot(plan: &Plan, cached: &dyn Fn(&Key) -> bool) -> String {
    let mut out = String::from(
        "digraph imgbuild {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n",
    );
    for (i, st) in plan.stages.iter().enumerate() {
        let Some(st) = st else { continue };
        out.push_str(&format!(
            "  subgraph cluster_{i} {{\n    label={};\n",
            dot_quote(&stage_label(plan, st.index))
        ));
        for s in plan.steps.iter().filter(|s| s.stage == i) {
            let style = if s.layer && cached(&s.key) {
                ", style=filled, fillcolor=lightgrey"
            } else if !s.layer {
                ", style=dashed"
            } else {
                ""
            };
            let label = format!("{}\\n{}", trim(&s.created_by, 60), s.key.short());
            out.push_str(&format!(
                "    s{} [label={}{style}];\n",
                s.id,
                dot_quote(&label).replace("\\\\n", "\\n")
            ));
        }
        out.push_str("  }\n");
    }
    for s in &plan.steps {
        if let Some(p) = s.parent {
            out.push_str(&format!("  s{p} -> s{};\n", s.id));
        }
        for d in &s.deps {
            out.push_str(&format!("  s{d} -> s{} [style=bold, color=blue];\n", s.id));
        }
    }
    out.push_str("}\n");
    out
}

fn stage_label(plan: &Plan, index: usize) -> String {
    plan.stages
        .get(index)
        .and_then(|s| s.as_ref())
        .and_then(|s| s.name.clone())
        .unwrap_or_else(|| format!("stage-{index}"))
}

fn trim(s: &str, n: usize) -> String {
    let first_line = s.lines().next().unwrap_or("");
    if first_line.chars().count() > n {
        format!("{}…", first_line.chars().take(n).collect::<String>())
    } else {
        first_line.to_owned()
    }
}

fn dot_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
