//! The `serial` and `pool` strategies: each device's steps in plan order, one
//! request at a time, on the calling thread or one device per task on a pool.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use switchover::error::{StepError, StepFailure};
use switchover::exec::{Completion, Lane, RunReport, StepActions, StepOutcome, StepRecord};
use switchover::ids::Window;
use switchover::plan::Plan;
use switchover::step::Step;

/// Runs one step and waits for its answer (or its deadline); a panicking action
/// fails the step as panicked.
///
/// ```
/// use std::sync::Arc;
/// use switchover::exec::{Completion, StepActions};
/// use switchover::ids::Side;
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::step::Step;
/// use switchover::topology::Topology;
/// struct Inline;
/// impl StepActions for Inline {
///     fn start(&self, _: &Step, done: Completion) {
///         done.complete(Ok(()))
///     }
/// }
/// let t = Arc::new(Topology::preset("single-blk").unwrap());
/// let plan = build(&t, Side::Source, &RecipeOptions::baseline(), &NoCosts).unwrap();
/// assert!(switchover_baseline::run_one(&Inline, &plan.steps()[0]).is_ok());
/// ```
pub fn run_one(actions: &dyn StepActions, step: &Step) -> Result<(), StepFailure> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let done = Completion::from_fn(move |r| {
        let _ = tx.send(r);
    });
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| actions.start(step, done))) {
        let message = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
        return Err(StepFailure::Panicked { message: message.unwrap_or_else(|| "a panic".into()) });
    }
    match rx.recv_timeout(step.deadline) {
        Ok(r) => r,
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(StepFailure::Timeout { after: step.deadline }),
        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(StepFailure::Abandoned),
    }
}

/// Runs the steps of `window`, each device's in plan order, one request at a time:
/// on the calling thread (`workers == 0`, the `serial` and `qemu` strategies), or
/// one device per task on `workers` threads (the `pool` strategy). A step that
/// waits for another device's (the final RAM pass after every device stopped, a
/// transaction spanning devices) runs after every device's chain, on the calling
/// thread. The first failure stops every lane from taking a new device. The record
/// is the engine's: one [`StepRecord`] per step started, times from the run's start.
///
/// ```
/// use std::sync::Arc;
/// use switchover::error::StepFailure;
/// use switchover::exec::{Completion, StepActions};
/// use switchover::ids::{Side, Window};
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::step::{Step, StepKind};
/// use switchover::topology::Topology;
/// use switchover_baseline::run_chains;
/// /// blk0's `get_vring_base` fails.
/// struct FailBlk0;
/// impl StepActions for FailBlk0 {
///     fn start(&self, step: &Step, done: Completion) {
///         let fail = step.kind == StepKind::GetVringBase && step.device.0 == 2;
///         done.complete(if fail { Err(StepFailure::Disconnected) } else { Ok(()) });
///     }
/// }
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let plan = build(&topo, Side::Source, &RecipeOptions::baseline(), &NoCosts).unwrap();
/// let r = run_chains(&plan, &FailBlk0, 2, Window::Blackout);
/// assert_eq!(&*r.failure.unwrap().device_name, "blk0");
/// assert!(r.records.len() < plan.in_window(Window::Blackout).count()); // the pool stopped taking new work
/// ```
pub fn run_chains(plan: &Plan, actions: &dyn StepActions, workers: usize, window: Window) -> RunReport {
    let started_at = Instant::now();
    let ndev = plan.topology().devices().len();
    let mut by_dev: Vec<Vec<&Step>> = vec![Vec::new(); ndev];
    // Steps after another device's, and everything after them: run last.
    let mut tail: Vec<&Step> = Vec::new();
    let mut deferred = vec![false; plan.len()];
    for s in plan.in_window(window) {
        let after_other = plan.preds(s.id).iter().any(|p| {
            let p = plan.step(*p);
            deferred[p.id.0 as usize] || (p.window == window && p.device != s.device)
        });
        if after_other {
            deferred[s.id.0 as usize] = true;
            tail.push(s);
        } else {
            by_dev[s.device.0 as usize].push(s);
        }
    }
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let failures: Mutex<Vec<StepError>> = Mutex::new(Vec::new());
    let run_list = |lane: Lane, steps: &[&Step], out: &mut Vec<StepRecord>| -> bool {
        for s in steps {
            let start = started_at.elapsed();
            let r = run_one(actions, s);
            let end = started_at.elapsed();
            let outcome = match &r {
                Ok(()) => StepOutcome::Done,
                Err(StepFailure::Timeout { .. }) => StepOutcome::TimedOut,
                Err(_) => StepOutcome::Failed,
            };
            out.push(StepRecord { step: s.id, outcome, lane, start, end });
            if let Err(f) = r {
                failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(StepError::new(plan, s.id, f));
                stop.store(true, Ordering::Release);
                return false;
            }
        }
        true
    };
    let lane_work = |lane: Lane| -> Vec<StepRecord> {
        let mut out = Vec::new();
        loop {
            let d = next.fetch_add(1, Ordering::AcqRel);
            if d >= ndev || stop.load(Ordering::Acquire) || !run_list(lane, &by_dev[d], &mut out) {
                break;
            }
        }
        out
    };
    let mut records = if workers == 0 {
        lane_work(0)
    } else {
        let lw = &lane_work;
        std::thread::scope(|sc| {
            let hs: Vec<_> = (0..workers).map(|i| sc.spawn(move || lw((i + 1) as Lane))).collect();
            hs.into_iter().flat_map(|h| h.join().expect("pool lanes catch step panics")).collect::<Vec<_>>()
        })
    };
    if !stop.load(Ordering::Acquire) {
        run_list(0, &tail, &mut records);
    }
    records.sort_by_key(|r| (r.start, r.step));
    let failures = failures.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    RunReport {
        side: plan.side(),
        window,
        started_at,
        wall: started_at.elapsed(),
        lanes: workers.max(1),
        records,
        failure: failures.first().cloned(),
        failures,
    }
}
