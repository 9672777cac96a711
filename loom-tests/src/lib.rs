//! Shared pieces of the loom models of the switchover engine.
//!
//! The models compile the real `switchover` crate with `--cfg loom`, so its
//! (private) `sync` module hands the engine loom's `Mutex`, `Condvar`, atomics and
//! threads. The models themselves use `loom::sync` directly.
//! Everything here is for building small plans and step actions that record what
//! the engine did, with loom atomics, so that loom checks the recording too.
//!
//! Build and run only with `RUSTFLAGS="--cfg loom"` (see README.md).

#![cfg(loom)]

use std::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use switchover::error::StepFailure;
use switchover::exec::{Completion, StepActions};
use switchover::ids::{Affinity, DeviceId, Side, StepId, Window};
use switchover::plan::{Plan, PlanBuilder, StepSpec};
use switchover::resource::Resource;
use switchover::step::{Step, StepKind};
use switchover::topology::Topology;

/// Explores `f` exhaustively within `preemption_bound` preemptions per execution
/// (no permutation or time cap, whatever `LOOM_MAX_PERMUTATIONS` /
/// `LOOM_MAX_DURATION` say), then prints how many executions that took and how long.
/// Returns the number of executions.
pub fn check<F>(name: &str, preemption_bound: usize, f: F) -> usize
where
    F: Fn() + Sync + Send + 'static,
{
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(preemption_bound);
    b.max_permutations = None;
    b.max_duration = None;
    b.max_branches = 20_000;
    let count = Arc::new(StdAtomicUsize::new(0));
    let c = count.clone();
    let t0 = Instant::now();
    b.check(move || {
        c.fetch_add(1, StdOrdering::Relaxed);
        f();
    });
    let n = count.load(StdOrdering::Relaxed);
    println!("{name}: {n} executions, preemption bound {preemption_bound}, {:.2?}", t0.elapsed());
    n
}

/// A topology with a few named devices (`net0`, `net1`: 1 queue pair each;
/// `blk0`, `blk1`: 1 queue each), for device names in reports.
pub fn topology() -> Arc<Topology> {
    Arc::new(Topology::preset("small").expect("preset"))
}

/// A VMM-defined step kind named `name`.
pub fn custom(name: &str) -> StepKind {
    StepKind::Custom(Arc::from(name))
}

/// A step on device 0 with its own custom resource `index` as footprint, no
/// deadline (loom has no clock), blocking, any lane, with an expected cost of
/// 1 ms (the cost only sets priorities: a longer remaining path first). Use
/// `.cost(Duration::ZERO)` for a step that declares none.
pub fn spec(name: &str, index: u32) -> StepSpec {
    spec_in(name, index, Window::Blackout)
}

/// [`spec`] in window `w`.
pub fn spec_in(name: &str, index: u32, w: Window) -> StepSpec {
    StepSpec::new(DeviceId(0), custom(name), w)
        .footprint(&[Resource::custom(Some(DeviceId(0)), index)])
        .deadline(Duration::MAX)
        .cost(Duration::from_millis(1))
}

/// A one-window plan from specs; `after[i]` are the predecessors of step `i`.
pub fn plan(specs: Vec<StepSpec>) -> Arc<Plan> {
    let mut b = PlanBuilder::new(topology(), Side::Source);
    for s in specs {
        b.add(s);
    }
    Arc::new(b.build().expect("valid plan"))
}

/// Predecessor ids of `id` as plain indices.
pub fn preds(plan: &Plan, id: StepId) -> Vec<usize> {
    plan.preds(id).iter().map(|p| p.0 as usize).collect()
}

/// How a [`Recorder`] answers a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `done.complete(..)` before `start` returns, on the lane that started it.
    Inline,
    /// Hands `done` to a newly spawned loom thread that completes it
    /// (split-phase: the lane returns at once).
    Thread,
}

/// What the steps of a model recorded, shared with spawned completion threads.
#[derive(Debug)]
pub struct Record {
    /// Times each step was started.
    pub starts: Vec<AtomicUsize>,
    /// Set just before the step's completion is delivered.
    pub done: Vec<AtomicBool>,
    /// Per footprint resource (dense id in the plan): steps inside it right now.
    pub inside: Vec<AtomicUsize>,
}

impl Record {
    fn new(steps: usize, resources: usize) -> Record {
        Record {
            starts: (0..steps).map(|_| AtomicUsize::new(0)).collect(),
            done: (0..steps).map(|_| AtomicBool::new(false)).collect(),
            inside: (0..resources).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Times step `i` was started.
    pub fn starts(&self, i: usize) -> usize {
        self.starts[i].load(Ordering::Relaxed)
    }
}

/// Step actions that check, with *relaxed* loom atomics (so only the engine's own
/// synchronisation orders them), that a step starts only after all its
/// predecessors delivered their completions, that no two steps sharing a
/// footprint resource are inside it at once, and count starts.
pub struct Recorder {
    plan: Arc<Plan>,
    /// The shared record.
    pub rec: Arc<Record>,
    answer: Vec<Answer>,
    fail: Option<(usize, StepFailure)>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("answer", &self.answer).finish()
    }
}

impl Recorder {
    /// Every step answers `Inline` unless listed in `threaded`.
    pub fn new(plan: &Arc<Plan>, threaded: &[usize]) -> Recorder {
        let answer = (0..plan.len()).map(|i| if threaded.contains(&i) { Answer::Thread } else { Answer::Inline }).collect();
        Recorder { plan: plan.clone(), rec: Arc::new(Record::new(plan.len(), plan.resource_count())), answer, fail: None }
    }

    /// Step `i` answers with `f` instead of success.
    pub fn failing(mut self, i: usize, f: StepFailure) -> Recorder {
        self.fail = Some((i, f));
        self
    }
}

impl StepActions for Recorder {
    fn start(&self, step: &Step, done: Completion) {
        let i = step.id.0 as usize;
        let prev = self.rec.starts[i].fetch_add(1, Ordering::Relaxed);
        assert_eq!(prev, 0, "step {i} started twice");
        for p in preds(&self.plan, step.id) {
            assert!(self.rec.done[p].load(Ordering::Relaxed), "step {i} started before its predecessor {p} completed");
        }
        let fp: Vec<usize> = self.plan.footprint_ids(step.id).iter().map(|&r| r as usize).collect();
        for &r in &fp {
            let n = self.rec.inside[r].fetch_add(1, Ordering::Relaxed);
            assert_eq!(n, 0, "step {i} entered resource {r} while another step holds it");
        }
        let result = match &self.fail {
            Some((f, e)) if *f == i => Err(e.clone()),
            _ => Ok(()),
        };
        let rec = self.rec.clone();
        let finish = move || {
            for &r in &fp {
                rec.inside[r].fetch_sub(1, Ordering::Relaxed);
            }
            rec.done[i].store(true, Ordering::Relaxed);
            done.complete(result);
        };
        match self.answer[i] {
            Answer::Inline => finish(),
            Answer::Thread => {
                // Not joined: loom keeps exploring until every thread has ended, and
                // reports a deadlock if one never can.
                let _ = loom::thread::spawn(finish);
            }
        }
    }
}

/// Marks a step caller-affine (it may touch the caller's big lock).
pub fn caller_affine(s: StepSpec) -> StepSpec {
    s.affinity(Affinity::Caller)
}

/// Runs the `#[ignore]`d test `child` of the current test binary in a child
/// process and asserts that loom reported a deadlock there.
///
/// A deadlock found by loom panics inside loom's scheduler; unwinding then drops
/// loom objects whose runtime is gone, which aborts the process. So a model that
/// must deadlock cannot use `#[should_panic]` in-process: it runs in a child, and
/// this checks the child failed with loom's `deadlock; threads = [...]` report.
pub fn expect_loom_deadlock(child: &str) -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(exe)
        .args(["--ignored", "--exact", child, "--nocapture", "--test-threads", "1"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run the child test");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{child}: expected loom to report a deadlock, but the model passed\n{stdout}");
    assert!(stdout.contains("running 1 test"), "{child}: the child did not run exactly one test\n{stdout}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("deadlock; threads = "))
        .unwrap_or_else(|| panic!("{child}: failed, but not with loom's deadlock report:\n{stderr}"))
        .to_string();
    println!("{child}: loom reported `{line}`");
    line
}
