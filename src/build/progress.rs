//! Build progress: a live view on a terminal (indicatif), one line per event in plain mode
//! (for CI logs), or nothing.

use imgbuild_executor::{Progress, StepState};
use imgbuild_planner::{Plan, Step};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A live view on a terminal, plain lines otherwise.
    Auto,
    Tty,
    Plain,
    Quiet,
}

/// `[stage n/m] COPY a /b`: which step of which stage.
fn label(plan: &Plan, step: &Step) -> String {
    let stage = plan.stages[step.stage]
        .as_ref()
        .and_then(|s| s.name.clone())
        .unwrap_or_else(|| format!("stage-{}", step.stage));
    let in_stage: Vec<usize> = plan
        .steps
        .iter()
        .filter(|s| s.stage == step.stage)
        .map(|s| s.id)
        .collect();
    let n = in_stage.iter().position(|&i| i == step.id).unwrap_or(0) + 1;
    let first = step.created_by.lines().next().unwrap_or("");
    format!("[{stage} {n}/{}] {first}", in_stage.len())
}

pub struct Plain<'a> {
    pub plan: &'a Plan,
}

impl Progress for Plain<'_> {
    fn started(&self, step: &Step) {
        eprintln!("#{} {}", step.id, label(self.plan, step));
    }
    fn finished(&self, step: &Step, state: StepState, took: Duration) {
        match state {
            StepState::Cached => eprintln!("#{} {} CACHED", step.id, label(self.plan, step)),
            StepState::Done => eprintln!("#{} DONE {:.1}s", step.id, took.as_secs_f64()),
        }
    }
    fn note(&self, message: &str) {
        eprintln!("warning: {message}");
    }
    fn output(&self, step: &Step, line: &str) {
        eprintln!("#{} {line}", step.id);
    }
}

/// One spinner per running step; finished steps stay as a line with their time.
pub struct Live<'a> {
    plan: &'a Plan,
    multi: MultiProgress,
    bars: Mutex<HashMap<usize, ProgressBar>>,
}

impl<'a> Live<'a> {
    pub fn new(plan: &'a Plan) -> Live<'a> {
        Live {
            plan,
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

impl Progress for Live<'_> {
    fn started(&self, step: &Step) {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(label(self.plan, step));
        bar.enable_steady_tick(Duration::from_millis(100));
        self.bars.lock().unwrap().insert(step.id, bar);
    }
    fn finished(&self, step: &Step, state: StepState, took: Duration) {
        let line = match state {
            StepState::Cached => format!("✓ {} (cached)", label(self.plan, step)),
            StepState::Done => format!("✓ {} {:.1}s", label(self.plan, step), took.as_secs_f64()),
        };
        match self.bars.lock().unwrap().remove(&step.id) {
            Some(bar) => bar.finish_with_message(line),
            None => {
                let _ = self.multi.println(line);
            }
        }
    }
    fn note(&self, message: &str) {
        let _ = self.multi.println(format!("warning: {message}"));
    }
    fn output(&self, step: &Step, line: &str) {
        if let Some(bar) = self.bars.lock().unwrap().get(&step.id) {
            bar.set_message(format!("{} │ {line}", label(self.plan, step)));
        }
    }
}
