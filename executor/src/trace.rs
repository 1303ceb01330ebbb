//! The build's timeline as Chrome trace-event JSON (`imgbuild build --trace FILE`), the object
//! format with `traceEvents`, which Perfetto and chrome://tracing open.
//!
//! One complete event (`"ph": "X"`) per layer step the build decided: `ts`/`dur` in
//! microseconds from the start of scheduling, `tid` the lane the step ran in (no two steps of a
//! lane overlap, so lanes show how many ran at once), `args` the step's id, key, stage, whether
//! it was a cache hit, why it ran when it did (`cache`), and how long it waited for a job slot
//! after its inputs were done (`wait_us`). Wall-clock time appears only here, never in a layer.

use crate::schedule::{Outcome, Timing};
use imgbuild_planner::{Op, Plan};
use serde_json::{Value, json};
use std::collections::HashMap;

fn us(d: std::time::Duration) -> u64 {
    d.as_micros() as u64
}

/// The trace of `timeline`; `cache` says per step why it was or was not a cache hit.
pub fn chrome(plan: &Plan, timeline: &[Timing], cache: &HashMap<usize, &'static str>) -> Value {
    let mut events = vec![json!({
        "name": "process_name", "ph": "M", "pid": 1, "tid": 0,
        "args": {"name": "imgbuild build"},
    })];
    let mut lanes: Vec<usize> = timeline.iter().map(|t| t.lane).collect();
    lanes.sort_unstable();
    lanes.dedup();
    for lane in lanes {
        events.push(json!({
            "name": "thread_name", "ph": "M", "pid": 1, "tid": lane,
            "args": {"name": format!("lane {lane}")},
        }));
        events.push(json!({
            "name": "thread_sort_index", "ph": "M", "pid": 1, "tid": lane,
            "args": {"sort_index": lane},
        }));
    }
    for t in timeline {
        let step = &plan.steps[t.step];
        let stage = plan.stages[step.stage]
            .as_ref()
            .and_then(|s| s.name.clone())
            .unwrap_or_else(|| format!("stage-{}", step.stage));
        let kind = match &step.op {
            Op::Copy(c) if c.add => "add",
            Op::Copy(_) => "copy",
            Op::Mkdir { .. } => "workdir",
            Op::Run(_) => "run",
            Op::Unikernel(_) => "unikernel",
            _ => "other",
        };
        let outcome = match t.outcome {
            Outcome::Cached => "cached",
            Outcome::Done => "done",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        };
        events.push(json!({
            "name": step.created_by.lines().next().unwrap_or_default(),
            "cat": kind,
            "ph": "X",
            "ts": us(t.start),
            "dur": us(t.end.saturating_sub(t.start)),
            "pid": 1,
            "tid": t.lane,
            "args": {
                "step": step.id,
                "key": step.key.hex(),
                "stage": stage,
                "cached": t.outcome == Outcome::Cached,
                "outcome": outcome,
                "cache": cache.get(&t.step).copied().unwrap_or("miss"),
                "ready_us": us(t.ready),
                "wait_us": us(t.start.saturating_sub(t.ready)),
            },
        }));
    }
    json!({"traceEvents": events, "displayTimeUnit": "ms"})
}
