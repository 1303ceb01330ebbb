//! Build progress: a live view on a terminal (indicatif), one line per event in plain mode
//! (for CI logs), or nothing.
//!
//! Steps run in parallel, so events come from several threads at once. Plain mode writes each
//! line with one `write` under the stderr lock, prefixed with its step (`#5 …`): lines of two
//! steps never mix mid-line (even with another process on the same pipe, since a line is one
//! write). The live view keeps one spinner per running step, each one line, cut to the terminal
//! width; a finished step is printed above the spinners as a permanent line, so the live area
//! only ever holds what is running.

use imgbuild_executor::{Progress, StepState};
use imgbuild_planner::{Plan, Step};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::io::Write;
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

/// Control characters (a RUN's `\r` progress bars, escape sequences) replaced, so one output
/// line stays one line on the terminal and cannot move the cursor.
fn printable(line: &str) -> String {
    line.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '�'
            } else {
                c
            }
        })
        .collect()
}

/// Writes `line` and a newline to stderr in one write.
fn emit(mut line: String) {
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

pub struct Plain<'a> {
    pub plan: &'a Plan,
}

impl Progress for Plain<'_> {
    fn started(&self, step: &Step) {
        emit(format!("#{} {}", step.id, label(self.plan, step)));
    }
    fn finished(&self, step: &Step, state: StepState, took: Duration) {
        emit(match state {
            StepState::Cached => format!("#{} {} CACHED", step.id, label(self.plan, step)),
            StepState::Done => format!("#{} DONE {:.1}s", step.id, took.as_secs_f64()),
            StepState::Failed => format!("#{} ERROR {:.1}s", step.id, took.as_secs_f64()),
            StepState::Cancelled => format!("#{} CANCELED {:.1}s", step.id, took.as_secs_f64()),
        });
    }
    fn note(&self, message: &str) {
        emit(format!("warning: {message}"));
    }
    fn output(&self, step: &Step, line: &str) {
        // Not `printable`: plain logs keep the bytes the step wrote (a `\r` stays inside the
        // line it came with).
        emit(format!("#{} {line}", step.id));
    }
}

/// The terminal's width in columns.
fn width() -> usize {
    console::Term::stderr().size().1.max(20) as usize
}

/// `s` cut to `cols` columns, ending in `…` when cut.
fn fit(s: &str, cols: usize) -> String {
    console::truncate_str(s, cols, "…").into_owned()
}

/// One spinner per running step; finished steps become permanent lines above them.
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
        // `wide_msg` cuts the message to the terminal width: a spinner never wraps, which
        // would break the redraw of the lines below it.
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(label(self.plan, step));
        bar.enable_steady_tick(Duration::from_millis(100));
        self.bars.lock().unwrap().insert(step.id, bar);
    }
    fn finished(&self, step: &Step, state: StepState, took: Duration) {
        let label = label(self.plan, step);
        let secs = took.as_secs_f64();
        // What happened first, so that cutting a long label to the width keeps it.
        let line = match state {
            StepState::Cached => format!("✓ cached {label}"),
            StepState::Done => format!("✓ {:>6} {label}", format!("{secs:.1}s")),
            StepState::Failed => format!("✗ failed after {secs:.1}s: {label}"),
            StepState::Cancelled => format!("✗ cancelled after {secs:.1}s: {label}"),
        };
        if let Some(bar) = self.bars.lock().unwrap().remove(&step.id) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        let _ = self.multi.println(fit(&line, width()));
    }
    fn note(&self, message: &str) {
        let _ = self.multi.println(format!("warning: {message}"));
    }
    fn output(&self, step: &Step, line: &str) {
        // The step's label, cut to leave room for its latest line.
        let label = fit(&label(self.plan, step), (width() / 2).max(30));
        if let Some(bar) = self.bars.lock().unwrap().get(&step.id) {
            bar.set_message(format!("{label} │ {}", printable(line.trim_end())));
        }
    }
}
