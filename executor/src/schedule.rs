//! The scheduler: runs the steps of a DAG on a rayon pool, each as soon as its inputs are done,
//! at most `jobs` at once.
//!
//! One thread (the caller's) owns all the bookkeeping: it decides what a ready step needs
//! ([`Ready`]: nothing, a cache hit, or a run), hands runs to the pool, and waits for them to
//! report back over a channel. Deciding never waits for a free job slot, so a cache hit is
//! taken as soon as its inputs are there, however busy the pool is. Among the steps that must
//! run, the one with the longest chain of steps after it starts first (a cheap critical-path
//! guess; ties go to the lower id, so the order is deterministic).
//!
//! On the first failure no new step starts; steps already running finish, and every failure
//! is reported. Cancellation (polled) stops it the same way; errors of steps that end after it
//! count as cancelled, not failed (their sandboxes were killed).
//!
//! Architecture invariant: the scheduler knows nothing of layers or the store — it sees a
//! graph and two callbacks — so its behaviour is unit-tested with fake steps.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What a step whose inputs are done needs (decided on the scheduler's thread).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ready {
    /// Nothing (it adds no layer): done at once, and not part of the timeline.
    Nothing,
    /// Its result is in the cache: done at once.
    Cached,
    /// It must run: queued for the pool.
    Run,
}

/// How a step of the timeline ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Cached,
    Done,
    Failed,
    Cancelled,
}

/// One step's place in the timeline; times count from the start of scheduling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    pub step: usize,
    /// When its last input was done.
    pub ready: Duration,
    pub start: Duration,
    pub end: Duration,
    /// 1-based; steps in one lane never overlap.
    pub lane: usize,
    pub outcome: Outcome,
}

/// What a schedule did.
pub(crate) struct Report<E> {
    /// In the order steps started.
    pub timeline: Vec<Timing>,
    /// Every step that failed, by step id.
    pub failures: Vec<(usize, E)>,
    pub cancelled: bool,
}

/// A step's work panicked (a bug); reported as that step's failure.
pub(crate) struct Panicked(pub String);

/// Lane numbers for the timeline: the lowest free one is taken.
#[derive(Default)]
struct Lanes(Vec<bool>);

impl Lanes {
    fn take(&mut self) -> usize {
        match self.0.iter().position(|busy| !busy) {
            Some(i) => {
                self.0[i] = true;
                i + 1
            }
            None => {
                self.0.push(true);
                self.0.len()
            }
        }
    }

    fn free(&mut self, lane: usize) {
        self.0[lane - 1] = false;
    }

    /// Records a step decided without running (a cache hit, a failed decision): it takes no
    /// time, on the lowest free lane.
    fn instant(
        &mut self,
        timeline: &mut Vec<Timing>,
        step: usize,
        ready: Duration,
        now: Duration,
        outcome: Outcome,
    ) {
        let lane = self.take();
        let at = now.max(ready);
        timeline.push(Timing {
            step,
            ready,
            start: at,
            end: at,
            lane,
            outcome,
        });
        self.free(lane);
    }
}

/// For each step, the length of the longest chain of steps that need it.
fn heights(users: &[Vec<usize>], topo: &[usize]) -> Vec<usize> {
    let mut h = vec![0; users.len()];
    for &i in topo.iter().rev() {
        h[i] = users[i].iter().map(|&u| h[u] + 1).max().unwrap_or(0);
    }
    h
}

/// Kahn's algorithm; steps on a cycle (never in a plan) are left out, and so never run.
fn topological(inputs: &[Vec<usize>], users: &[Vec<usize>]) -> Vec<usize> {
    let mut left: Vec<usize> = inputs.iter().map(Vec::len).collect();
    let mut queue: Vec<usize> = (0..inputs.len()).filter(|&i| left[i] == 0).collect();
    let mut out = Vec::with_capacity(inputs.len());
    while let Some(i) = queue.pop() {
        out.push(i);
        for &u in &users[i] {
            left[u] -= 1;
            if left[u] == 0 {
                queue.push(u);
            }
        }
    }
    out
}

type Finished<E> = (usize, Duration, Duration, Result<Result<(), E>, String>);

/// Runs the graph given by `inputs` (for each step, the steps it needs). `ready` is called on
/// this thread once for each step whose inputs all succeeded; `work` runs a step on the pool.
pub(crate) fn run<E: Send + From<Panicked>>(
    inputs: &[Vec<usize>],
    pool: &rayon::ThreadPool,
    jobs: usize,
    ready: &mut dyn FnMut(usize) -> Result<Ready, E>,
    work: &(dyn Fn(usize) -> Result<(), E> + Sync),
    cancelled: &dyn Fn() -> bool,
) -> Report<E> {
    let n = inputs.len();
    let jobs = jobs.max(1);
    let inputs: Vec<Vec<usize>> = inputs
        .iter()
        .map(|i| {
            let mut i = i.clone();
            i.sort_unstable();
            i.dedup();
            i
        })
        .collect();
    let mut users = vec![Vec::new(); n];
    for (i, ins) in inputs.iter().enumerate() {
        for &d in ins {
            users[d].push(i);
        }
    }
    let height = heights(&users, &topological(&inputs, &users));
    let mut waiting: Vec<usize> = inputs.iter().map(Vec::len).collect();

    let t0 = Instant::now();
    let mut report = Report {
        timeline: Vec::new(),
        failures: Vec::new(),
        cancelled: false,
    };
    let mut ready_at = vec![Duration::ZERO; n];
    let mut lane_of = vec![0; n];
    // Steps whose inputs are done and that have not been decided yet.
    let mut decide: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).rev().collect();
    // Steps that must run, best first.
    let mut runnable: BinaryHeap<(usize, Reverse<usize>)> = BinaryHeap::new();
    let mut lanes = Lanes::default();
    let mut running = 0;
    let mut stop = false;
    let (tx, rx) = mpsc::channel::<Finished<E>>();

    // Marks `id` done: its users whose inputs are now all done become ready.
    let done = |id: usize,
                waiting: &mut Vec<usize>,
                decide: &mut Vec<usize>,
                ready_at: &mut Vec<Duration>| {
        let now = t0.elapsed();
        for &u in &users[id] {
            waiting[u] -= 1;
            if waiting[u] == 0 {
                ready_at[u] = now;
                decide.push(u);
            }
        }
    };

    pool.in_place_scope(|scope| {
        loop {
            if !stop && cancelled() {
                stop = true;
                report.cancelled = true;
            }
            // Decide everything that is ready: cache hits complete here and may make more
            // steps ready, without waiting for a job slot.
            while !stop && let Some(id) = decide.pop() {
                match ready(id) {
                    Ok(Ready::Nothing) => done(id, &mut waiting, &mut decide, &mut ready_at),
                    Ok(Ready::Cached) => {
                        let at = t0.elapsed();
                        lanes.instant(&mut report.timeline, id, ready_at[id], at, Outcome::Cached);
                        done(id, &mut waiting, &mut decide, &mut ready_at);
                    }
                    Ok(Ready::Run) => runnable.push((height[id], Reverse(id))),
                    Err(e) => {
                        let at = t0.elapsed();
                        lanes.instant(&mut report.timeline, id, ready_at[id], at, Outcome::Failed);
                        report.failures.push((id, e));
                        stop = true;
                    }
                }
            }
            while !stop && running < jobs {
                let Some((_, Reverse(id))) = runnable.pop() else {
                    break;
                };
                lane_of[id] = lanes.take();
                running += 1;
                let tx = tx.clone();
                scope.spawn(move |_| {
                    let start = t0.elapsed();
                    let result = catch_unwind(AssertUnwindSafe(|| work(id))).map_err(|p| {
                        p.downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic".into())
                    });
                    let _ = tx.send((id, start, t0.elapsed(), result));
                });
            }
            if running == 0 {
                // Nothing runs, and nothing more can start.
                break;
            }
            let (id, start, end, result) = match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(f) => f,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            running -= 1;
            lanes.free(lane_of[id]);
            let outcome = match result {
                Ok(Ok(())) => {
                    done(id, &mut waiting, &mut decide, &mut ready_at);
                    Outcome::Done
                }
                Ok(Err(_)) | Err(_) if cancelled() => {
                    stop = true;
                    report.cancelled = true;
                    Outcome::Cancelled
                }
                Ok(Err(e)) => {
                    report.failures.push((id, e));
                    stop = true;
                    Outcome::Failed
                }
                Err(panic) => {
                    report
                        .failures
                        .push((id, E::from(Panicked(format!("internal error: {panic}")))));
                    stop = true;
                    Outcome::Failed
                }
            };
            report.timeline.push(Timing {
                step: id,
                ready: ready_at[id],
                start,
                end,
                lane: lane_of[id],
                outcome,
            });
        }
    });
    report.failures.sort_by_key(|(id, _)| *id);
    report.timeline.sort_by_key(|t| (t.start, t.step));
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[derive(Debug, PartialEq)]
    enum Err {
        Step(usize),
        Panic(String),
    }

    impl From<Panicked> for Err {
        fn from(p: Panicked) -> Err {
            Err::Panic(p.0)
        }
    }

    fn pool(n: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    }

    /// A test graph: `n` steps, each with its inputs.
    struct Graph {
        inputs: Vec<Vec<usize>>,
        cached: HashSet<usize>,
        fail: HashSet<usize>,
        sleep: Duration,
        /// How many of the steps in `overlap` can run at once.
        together: usize,
        overlap: HashSet<usize>,
    }

    struct Run {
        report: Report<Err>,
        order: Vec<usize>,
        max_running: usize,
        decided: Vec<usize>,
    }

    impl Graph {
        fn new(inputs: Vec<Vec<usize>>) -> Graph {
            Graph {
                inputs,
                cached: HashSet::new(),
                fail: HashSet::new(),
                sleep: Duration::from_millis(30),
                together: 1,
                overlap: HashSet::new(),
            }
        }

        fn run(&self, jobs: usize) -> Run {
            let running = AtomicUsize::new(0);
            let max = AtomicUsize::new(0);
            let order = Mutex::new(Vec::new());
            let mut decided = Vec::new();
            let work = |id: usize| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(now, Ordering::SeqCst);
                order.lock().unwrap().push(id);
                // Failing steps fail at once. The others wait (a while at most) until as many
                // run at once as the test expects can, so overlap does not hang on timing.
                if !self.fail.contains(&id) {
                    let t = Instant::now();
                    while self.overlap.contains(&id)
                        && max.load(Ordering::SeqCst) < self.together
                        && t.elapsed() < Duration::from_secs(5)
                    {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    std::thread::sleep(self.sleep);
                }
                running.fetch_sub(1, Ordering::SeqCst);
                if self.fail.contains(&id) {
                    return Err(Err::Step(id));
                }
                Ok(())
            };
            let mut ready = |id: usize| {
                decided.push(id);
                Ok(if self.cached.contains(&id) {
                    Ready::Cached
                } else {
                    Ready::Run
                })
            };
            let report = run(&self.inputs, &pool(jobs), jobs, &mut ready, &work, &|| {
                false
            });
            Run {
                report,
                order: order.into_inner().unwrap(),
                max_running: max.load(Ordering::SeqCst),
                decided,
            }
        }
    }

    fn timing(r: &Report<Err>, step: usize) -> &Timing {
        r.timeline.iter().find(|t| t.step == step).unwrap()
    }

    #[test]
    fn independent_steps_run_at_once_up_to_the_job_limit() {
        // 0 -> {1, 2, 3} -> 4
        let mut g = Graph::new(vec![vec![], vec![0], vec![0], vec![0], vec![1, 2, 3]]);
        g.together = 2;
        g.overlap = [1, 2, 3].into();
        let r = g.run(2);
        assert_eq!(r.max_running, 2);
        assert!(r.report.failures.is_empty());
        assert_eq!(r.report.timeline.len(), 5);
        // Two lanes are enough for two jobs, and no lane holds two steps at once.
        assert!(r.report.timeline.iter().all(|t| (1..=2).contains(&t.lane)));
        for a in &r.report.timeline {
            for b in &r.report.timeline {
                if a.step != b.step && a.lane == b.lane {
                    assert!(a.end <= b.start || b.end <= a.start, "{a:?} {b:?}");
                }
            }
        }
        // Inputs are done before a step starts.
        for (i, ins) in g.inputs.iter().enumerate() {
            for &d in ins {
                assert!(timing(&r.report, d).end <= timing(&r.report, i).start);
            }
        }
        g.together = 3;
        let r = g.run(8);
        assert_eq!(r.max_running, 3);
        g.together = 1;
        let r = g.run(1);
        assert_eq!(r.max_running, 1);
        assert_eq!(r.order.first(), Some(&0));
        assert_eq!(r.order.last(), Some(&4));
    }

    #[test]
    fn a_step_waits_for_its_inputs_and_the_longest_chain_goes_first() {
        // A chain 0 -> 1 -> 2 -> 3 and a lone 4, one job: each step of the chain has more
        // after it than 4 has, so the chain goes first.
        let g = Graph::new(vec![vec![], vec![0], vec![1], vec![2], vec![]]);
        let r = g.run(1);
        assert_eq!(r.order, [0, 1, 2, 3, 4]);
        // A lone step that comes first by id waits while a longer chain runs, then goes
        // before the chain's last step (equal heights: the lower id).
        let g = Graph::new(vec![vec![], vec![], vec![1], vec![2]]);
        assert_eq!(g.run(1).order, [1, 2, 0, 3]);
        // The wait (ready to start) shows in the timeline.
        let r = g.run(1);
        let t0 = timing(&r.report, 0);
        assert_eq!(t0.ready, Duration::ZERO);
        assert!(t0.start >= timing(&r.report, 2).end, "{t0:?}");
    }

    #[test]
    fn cache_hits_do_not_wait_for_a_job_slot() {
        // 0 must run; 1 is a hit and 2 (after 1) is a hit: both are decided and done before
        // a job slot is even handed out.
        let mut g = Graph::new(vec![vec![], vec![], vec![1], vec![2]]);
        g.cached = [1, 2].into();
        let r = g.run(1);
        let running = timing(&r.report, 0);
        for hit in [1, 2] {
            let t = timing(&r.report, hit);
            assert_eq!(t.outcome, Outcome::Cached);
            assert!(t.end <= running.start, "{t:?} {running:?}");
        }
        // 3 (after the hits) waited for the one slot: equal heights, lower id first.
        assert_eq!(r.order, [0, 3]);
        assert_eq!(r.decided.len(), 4);
    }

    #[test]
    fn every_failure_is_reported_and_nothing_new_starts() {
        // 0 and 1 fail at once; 2 needs 0; 3 is independent but only ready after 1.
        let mut g = Graph::new(vec![vec![], vec![], vec![0], vec![1]]);
        g.fail = [0, 1].into();
        let r = g.run(2);
        let failed: Vec<usize> = r.report.failures.iter().map(|(i, _)| *i).collect();
        assert_eq!(failed, [0, 1]);
        assert_eq!(r.report.failures[1].1, Err::Step(1));
        assert!(!r.order.contains(&2) && !r.order.contains(&3));
        // With one job, the first failure stops the build before the other step starts.
        let r = g.run(1);
        assert_eq!(r.report.failures.len(), 1);
        assert_eq!(r.order.len(), 1);
    }

    #[test]
    fn a_running_step_finishes_after_another_fails() {
        // 0 fails quickly while 1 (slow) runs: 1 still completes and is in the timeline.
        let g = Graph {
            inputs: vec![vec![], vec![], vec![1]],
            cached: HashSet::new(),
            fail: [0].into(),
            sleep: Duration::from_millis(50),
            together: 1,
            overlap: HashSet::new(),
        };
        let r = g.run(2);
        assert_eq!(r.report.failures.len(), 1);
        assert_eq!(timing(&r.report, 1).outcome, Outcome::Done);
        assert!(!r.order.contains(&2));
    }

    #[test]
    fn panics_are_failures_and_cancellation_stops_new_work() {
        let inputs = vec![vec![], vec![0], vec![1]];
        let work = |id: usize| -> Result<(), Err> {
            if id == 1 {
                panic!("boom");
            }
            Ok(())
        };
        let r = run(
            &inputs,
            &pool(1),
            1,
            &mut |_| Ok(Ready::Run),
            &work,
            &|| false,
        );
        assert_eq!(r.failures.len(), 1);
        assert!(matches!(&r.failures[0], (1, Err::Panic(m)) if m.contains("boom")));

        let stop = AtomicBool::new(false);
        let work = |id: usize| -> Result<(), Err> {
            if id == 0 {
                stop.store(true, Ordering::SeqCst);
                return Err(Err::Step(0));
            }
            Ok(())
        };
        let r = run(
            &inputs,
            &pool(1),
            1,
            &mut |_| Ok(Ready::Run),
            &work,
            &|| stop.load(Ordering::SeqCst),
        );
        assert!(r.cancelled);
        assert!(
            r.failures.is_empty(),
            "errors after a cancel are not failures"
        );
        assert_eq!(r.timeline.len(), 1);
        assert_eq!(r.timeline[0].outcome, Outcome::Cancelled);
    }

    #[test]
    fn steps_without_work_are_not_in_the_timeline() {
        let inputs = vec![vec![], vec![0], vec![1]];
        let r = run(
            &inputs,
            &pool(1),
            1,
            &mut |id| Ok(if id == 1 { Ready::Nothing } else { Ready::Run }),
            &|_| Ok::<(), Err>(()),
            &|| false,
        );
        let steps: Vec<usize> = r.timeline.iter().map(|t| t.step).collect();
        assert_eq!(steps, [0, 2]);
    }
}
