//! Model 2: the executor's completion protocol (`src/exec/`) on small DAGs.
//!
//! The real `Engine` (its worker pool spawned as loom threads by the default
//! `Threads` spawner, through the core's private `sync` module) runs small plans; the calling thread is the caller
//! lane. Steps answer inline or hand their `Completion` to a new loom thread
//! (split-phase). The recorder uses relaxed atomics, so only the engine's own
//! locking can order a step after its predecessors.
//!
//! Proves, for every interleaving within the bound: every step runs exactly once,
//! never before all its predecessors have delivered their completion, no
//! completion is lost (the run returns with every step `Done`), the run
//! terminates (loom reports any state where every thread waits as a deadlock),
//! and the workers shut down when the engine is dropped.
//!
//! Does not prove: deadlines/time-outs (loom has no clock; steps have none here),
//! plans larger than 5 steps or more than 2 workers, or fairness.
#![cfg(loom)]

use std::sync::Arc as StdArc;

use switchover::exec::{Engine, Progress, StepActions};
use switchover::ids::{StepId, Window};
use switchover::plan::Plan;
use switchover_loom_tests::{check, plan, spec, spec_in, Recorder};

/// Runs `plan` (one window) on an engine with `workers` workers and checks the
/// protocol; `threaded` steps complete from a spawned thread.
fn run_all(plan: &StdArc<Plan>, workers: usize, threaded: &[usize]) {
    let mut engine = Engine::new(workers);
    let actions = StdArc::new(Recorder::new(plan, threaded));
    let rec = actions.rec.clone();
    let mut progress = Progress::new(plan);
    let dyn_actions: StdArc<dyn StepActions> = actions;
    let r = engine.run(plan, Window::Blackout, dyn_actions, &mut progress);
    assert!(r.ok(), "unexpected failure: {:?}", r.failure);
    assert!(r.failures.is_empty());
    assert!(progress.all_done(), "a completion was lost");
    assert_eq!(r.records.len(), plan.len());
    for i in 0..plan.len() {
        assert_eq!(rec.starts(i), 1, "step {i}");
    }
    drop(engine); // joins the workers: a worker that never sees shutdown is a deadlock
}

/// a → {b, c} → d
fn diamond() -> StdArc<Plan> {
    let a = StepId(0);
    plan(vec![spec("a", 0), spec("b", 1).after(&[a]), spec("c", 2).after(&[a]), spec("d", 3).after(&[StepId(1), StepId(2)])])
}

/// a → b → c
fn chain() -> StdArc<Plan> {
    plan(vec![spec("a", 0), spec("b", 1).after(&[StepId(0)]), spec("c", 2).after(&[StepId(1)])])
}

/// a → {b, c, d} → e
fn fan() -> StdArc<Plan> {
    let a = StepId(0);
    plan(vec![
        spec("a", 0),
        spec("b", 1).after(&[a]),
        spec("c", 2).after(&[a]),
        spec("d", 3).after(&[a]),
        spec("e", 4).after(&[StepId(1), StepId(2), StepId(3)]),
    ])
}

#[test]
fn diamond_two_workers_inline() {
    check("m2 diamond, 2 workers + caller, inline", 3, || run_all(&diamond(), 2, &[]));
}

/// The same diamond with steps that declare no cost: every remaining path is
/// equal, so the lanes take them in id order (the plan's other ordering).
#[test]
fn diamond_two_workers_zero_cost() {
    check("m2 diamond of zero-cost steps, 2 workers + caller, inline", 3, || {
        let zero = std::time::Duration::ZERO;
        let a = StepId(0);
        let p = plan(vec![
            spec("a", 0).cost(zero),
            spec("b", 1).cost(zero).after(&[a]),
            spec("c", 2).cost(zero).after(&[a]),
            spec("d", 3).cost(zero).after(&[StepId(1), StepId(2)]),
        ]);
        run_all(&p, 2, &[])
    });
}

#[test]
fn diamond_one_worker_split_phase() {
    // b and c complete from their own threads: 1 worker + caller + 2 repliers.
    check("m2 diamond, 1 worker + caller, b,c split", 3, || run_all(&diamond(), 1, &[1, 2]));
}

#[test]
fn chain_two_workers_split_phase() {
    check("m2 chain, 2 workers + caller, b split", 3, || run_all(&chain(), 2, &[1]));
}

#[test]
fn chain_caller_lane_only() {
    // Zero workers: the caller lane runs everything, split answers included.
    check("m2 chain, caller only, a,c split", 3, || run_all(&chain(), 0, &[0, 2]));
}

#[test]
fn fan_out_fan_in_one_worker() {
    check("m2 fan-out/fan-in, 1 worker + caller, c split", 3, || run_all(&fan(), 1, &[2]));
}

/// One engine, two windows: the second run (new epoch) reuses the workers, and a
/// step of the second window runs after its predecessor of the first.
#[test]
fn two_windows_reuse_the_pool() {
    use switchover::ids::Window::{Blackout, Prepare};
    check("m2 two windows on one engine, 1 worker", 3, || {
        let p = plan(vec![
            spec_in("a", 0, Prepare),
            spec_in("b", 1, Prepare),
            spec("c", 2).after(&[StepId(0)]),
            spec("d", 3).after(&[StepId(1), StepId(2)]),
        ]);
        let mut engine = Engine::new(1);
        let actions = StdArc::new(Recorder::new(&p, &[1, 3]));
        let rec = actions.rec.clone();
        let mut progress = Progress::new(&p);
        let dyn_actions: StdArc<dyn StepActions> = actions;
        let r1 = engine.run(&p, Prepare, dyn_actions.clone(), &mut progress);
        assert!(r1.ok());
        assert_eq!((rec.starts(0), rec.starts(1), rec.starts(2), rec.starts(3)), (1, 1, 0, 0));
        let r2 = engine.run(&p, Blackout, dyn_actions, &mut progress);
        assert!(r2.ok());
        assert!(progress.all_done());
        for i in 0..4 {
            assert_eq!(rec.starts(i), 1, "step {i}");
        }
    });
}
