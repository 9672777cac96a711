//! The engine's invariants on recorded runs: every step exactly once, after its
//! predecessors, no two conflicting steps at once, caller-affine steps on the
//! caller's thread, failures named with their dependents never started.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{check_invariants, dependents, Recorder, TestCosts};
use proptest::prelude::*;
use switchover::error::StepFailure;
use switchover::exec::{Completion, Controls, Engine, FailurePolicy, Progress, StepActions, StepOutcome, Threads};
use switchover::ids::{Affinity, DeviceId, Side, StepId, Window};
use switchover::plan::{Plan, PlanBuilder, StepSpec};
use switchover::recipe::{build, RecipeOptions};
use switchover::resource::Resource;
use switchover::step::{Server, Step, StepKind};
use switchover::topology::Topology;

fn run_all(engine: &mut Engine, plan: &Arc<Plan>, actions: Arc<dyn StepActions>) -> (Progress, Vec<switchover::exec::RunReport>) {
    let mut p = Progress::new(plan);
    let reports = Window::ALL.iter().map(|w| engine.run(plan, *w, actions.clone(), &mut p)).collect();
    (p, reports)
}

#[test]
fn vhost_recipes_run_every_step_once_in_order() {
    let topo = Arc::new(Topology::preset("medium").unwrap());
    for side in [Side::Source, Side::Destination] {
        for opts in [RecipeOptions::engine(), RecipeOptions::baseline()] {
            let plan = Arc::new(build(&topo, side, &opts, &TestCosts).unwrap());
            let rec = Recorder::new(plan.len(), HashSet::new(), Duration::ZERO);
            let mut engine = Engine::new(3);
            let (p, reports) = run_all(&mut engine, &plan, rec.clone());
            assert!(reports.iter().all(|r| r.failure.is_none()));
            assert!(p.all_done(), "{side:?}: not every step done");
            let seen = rec.seen();
            assert!(seen.iter().all(|s| s.starts == 1));
            check_invariants(&plan, &seen, std::thread::current().id());
            // The engine's own records agree: one record per step, lanes valid.
            let recs: usize = reports.iter().map(|r| r.records.len()).sum();
            assert_eq!(recs, plan.len());
            for r in &reports {
                for rec in &r.records {
                    assert!(rec.end >= rec.start);
                    if plan.step(rec.step).affinity == Affinity::Caller {
                        assert_eq!(rec.lane, 0, "caller-affine step on a worker lane");
                    }
                }
            }
        }
    }
}

#[test]
fn engine_plan_keeps_only_stop_and_start_messages_in_the_window() {
    let topo = Arc::new(Topology::preset("rfc-huge").unwrap());
    let prof = TestCosts;
    let src = build(&topo, Side::Source, &RecipeOptions::engine(), &prof).unwrap();
    let dst = build(&topo, Side::Destination, &RecipeOptions::engine(), &prof).unwrap();
    for s in src.in_window(Window::Blackout) {
        assert!(
            matches!(
                s.kind,
                StepKind::VringDisable
                    | StepKind::GetVringBase
                    | StepKind::DrainInflight
                    | StepKind::StorageInactivate
                    | StepKind::LogSync
                    | StepKind::FinalPass
            ),
            "{} in src blackout",
            s.kind
        );
        // A net ring is not disabled before its base is read (a disabled started
        // net ring must discard TX).
        if s.kind == StepKind::VringDisable {
            assert_eq!(topo.device(s.device).kind, switchover::topology::DeviceKind::Blk, "net ring disabled before GET_VRING_BASE");
        }
    }
    for s in dst.in_window(Window::Blackout) {
        assert!(
            matches!(
                s.kind,
                StepKind::SetVringBase
                    | StepKind::SetVringKick
                    | StepKind::VringEnable
                    | StepKind::Reconcile
                    | StepKind::RouteCommit
                    | StepKind::RingNotify
                    | StepKind::StorageActivate
            ),
            "{} in dst blackout",
            s.kind
        );
        // Enabled before kicked.
        if s.kind == StepKind::SetVringKick {
            let enabled_first = dst.preds(s.id).iter().any(|p| dst.step(*p).kind == StepKind::VringEnable && dst.step(*p).ring == s.ring);
            assert!(enabled_first, "kick before enable");
        }
    }
    // One routing-table commit, before every kick; the log is synced after every
    // base was read, and the final pass follows it.
    let route = dst.steps().iter().filter(|s| s.kind == StepKind::RouteCommit).collect::<Vec<_>>();
    assert_eq!(route.len(), 1);
    assert!(dst.steps().iter().filter(|s| s.kind == StepKind::SetVringKick).all(|k| dst.preds(k.id).contains(&route[0].id)));
    let sync = src.steps().iter().find(|s| s.kind == StepKind::LogSync).unwrap();
    assert_eq!(src.preds(sync.id).len(), src.steps().iter().filter(|s| s.kind == StepKind::GetVringBase).count());
    let pass = src.steps().iter().find(|s| s.kind == StepKind::FinalPass).unwrap();
    assert_eq!(src.preds(pass.id), [sync.id]);
    // Notifier changes of all devices go through one memory transaction per side.
    for plan in [&src, &dst] {
        let begins = plan.steps().iter().filter(|s| s.kind == StepKind::MemTxnBegin).count();
        let commits = plan.steps().iter().filter(|s| s.kind == StepKind::MemTxnCommit).count();
        assert_eq!((begins, commits), (1, 1));
        let commit = plan.steps().iter().find(|s| s.kind == StepKind::MemTxnCommit).unwrap();
        let host = plan.steps().iter().filter(|s| matches!(s.kind, StepKind::HostNotifierOn | StepKind::HostNotifierOff)).count();
        assert_eq!(plan.preds(commit.id).len(), host, "commit waits for every host notifier change");
        assert_eq!(commit.affinity, Affinity::Caller);
    }
}

#[test]
fn failing_step_is_named_and_its_dependents_never_start() {
    let topo = Arc::new(Topology::preset("small").unwrap());
    let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &TestCosts).unwrap());
    let victim =
        plan.steps().iter().find(|s| s.kind == StepKind::GetVringBase && plan.device_name(s.id) == "net1" && s.ring == Some(2)).unwrap().id;
    for policy in [FailurePolicy::StopAll, FailurePolicy::ContinueIndependent] {
        let rec = Recorder::new(plan.len(), HashSet::from([victim.0]), Duration::from_micros(50));
        let mut engine = Engine::with_spawner(2, policy, &Threads);
        let (p, reports) = run_all(&mut engine, &plan, rec.clone());
        let failure = reports[1].failure.clone().expect("blackout reports the failure");
        assert_eq!(&*failure.device_name, "net1");
        assert_eq!(failure.device, plan.step(victim).device);
        assert_eq!(failure.kind, StepKind::GetVringBase);
        assert_eq!(failure.step, victim);
        assert_eq!(failure.ring, Some(2));
        assert_eq!(failure.side, Side::Source);
        assert!(matches!(failure.failure, StepFailure::Injected { .. }));
        assert_eq!(reports[1].failures.len(), 1);
        assert_eq!(p.outcome(victim), StepOutcome::Failed);
        let seen = rec.seen();
        for d in dependents(&plan, victim) {
            assert_eq!(seen[d as usize].starts, 0, "dependent {d} of the failed step started");
            assert_eq!(p.outcome(StepId(d)), StepOutcome::NotRun);
        }
        check_invariants(&plan, &seen, std::thread::current().id());
        if policy == FailurePolicy::ContinueIndependent {
            // Independent steps still ran: every other ring's base was read.
            let other = plan.steps().iter().filter(|s| s.kind == StepKind::GetVringBase && s.id != victim);
            for s in other {
                assert_eq!(p.outcome(s.id), StepOutcome::Done);
            }
        }
    }
}

/// Actions whose split-phase steps on one device never answer.
struct Silent {
    device: DeviceId,
    held: std::sync::Mutex<Vec<Completion>>,
}

impl StepActions for Silent {
    fn start(&self, step: &Step, done: Completion) {
        if step.device == self.device && step.mode == switchover::step::ExecMode::Split {
            self.held.lock().unwrap().push(done);
        } else {
            done.complete(Ok(()));
        }
    }
}

#[test]
fn a_step_without_answer_times_out_and_the_run_ends() {
    let topo = Arc::new(Topology::preset("small").unwrap());
    let mut opts = RecipeOptions::engine();
    opts.deadline = Duration::from_millis(100);
    let plan = Arc::new(build(&topo, Side::Source, &opts, &TestCosts).unwrap());
    let actions = Arc::new(Silent { device: DeviceId(2), held: std::sync::Mutex::new(Vec::new()) });
    let mut engine = Engine::new(2);
    let mut p = Progress::new(&plan);
    let t0 = std::time::Instant::now();
    let r = engine.run(&plan, Window::Blackout, actions.clone(), &mut p);
    assert!(t0.elapsed() < Duration::from_secs(5), "the run must end soon after the deadline");
    let f = r.failure.expect("time-out reported");
    assert_eq!(&*f.device_name, "blk0");
    assert_eq!(f.device, DeviceId(2));
    assert!(matches!(f.failure, StepFailure::Timeout { .. }), "{f}");
    // A late answer is ignored.
    for c in actions.held.lock().unwrap().drain(..) {
        c.complete(Ok(()));
    }
    assert!(p.with(StepOutcome::TimedOut).count() >= 1);
}

#[test]
fn dropped_completion_fails_the_step_instead_of_hanging() {
    struct Dropper;
    impl StepActions for Dropper {
        fn start(&self, _step: &Step, done: Completion) {
            drop(done);
        }
    }
    let topo = Arc::new(Topology::preset("single-blk").unwrap());
    let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &TestCosts).unwrap());
    let mut engine = Engine::new(1);
    let mut p = Progress::new(&plan);
    let r = engine.run(&plan, Window::Blackout, Arc::new(Dropper), &mut p);
    assert_eq!(r.failure.unwrap().failure, StepFailure::Abandoned);
}

#[test]
fn a_panicking_action_fails_its_step_and_the_engine_stays_usable() {
    /// Panics starting one step; answers every other at once.
    struct PanicsOn(StepId);
    impl StepActions for PanicsOn {
        fn start(&self, step: &Step, done: Completion) {
            assert!(step.id != self.0, "backend state corrupt");
            done.complete(Ok(()));
        }
    }
    let topo = Arc::new(Topology::preset("small").unwrap());
    let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &TestCosts).unwrap());
    let victim = plan.in_window(Window::Blackout).find(|s| s.kind == StepKind::GetVringBase).unwrap().id;
    // With no worker the caller lane runs it; with workers, most likely a worker.
    for workers in [0, 2] {
        let mut engine = Engine::new(workers);
        let mut p = Progress::new(&plan);
        let r = engine.run(&plan, Window::Blackout, Arc::new(PanicsOn(victim)), &mut p);
        let f = r.failure.expect("the panic fails the step");
        assert_eq!(f.step, victim);
        assert!(matches!(&f.failure, StepFailure::Panicked { message } if message.contains("backend state corrupt")), "{f}");
        assert_eq!(p.outcome(victim), StepOutcome::Failed);
        // The engine (its workers and the caller lane) still runs plans.
        let rec = Recorder::new(plan.len(), HashSet::new(), Duration::ZERO);
        let (p, reports) = run_all(&mut engine, &plan, rec.clone());
        assert!(reports.iter().all(|r| r.ok()) && p.all_done(), "{workers} workers");
        check_invariants(&plan, &rec.seen(), std::thread::current().id());
    }
}

#[test]
fn rerunning_a_window_is_idempotent() {
    let topo = Arc::new(Topology::preset("small").unwrap());
    let plan = Arc::new(build(&topo, Side::Destination, &RecipeOptions::engine(), &TestCosts).unwrap());
    let rec = Recorder::new(plan.len(), HashSet::new(), Duration::ZERO);
    let mut engine = Engine::new(2);
    let mut p = Progress::new(&plan);
    engine.run(&plan, Window::Prepare, rec.clone(), &mut p);
    let again = engine.run(&plan, Window::Prepare, rec.clone(), &mut p);
    assert!(again.records.is_empty(), "done steps ran again");
    assert!(rec.seen().iter().all(|s| s.starts <= 1));
}

// ---------------------------------------------------------------- proptest

#[derive(Debug, Clone)]
struct RandStep {
    preds: Vec<usize>,
    footprint: Vec<u32>,
    caller: bool,
    split: bool,
    window: u8,
}

fn rand_plan() -> impl Strategy<Value = (Vec<RandStep>, Option<usize>, usize)> {
    let step = (prop::collection::vec(0usize..1000, 0..3), prop::collection::vec(0u32..6, 0..3), 0u8..7, any::<bool>(), 0u8..3);
    (prop::collection::vec(step, 1..36), prop::option::of(0usize..1000), 0usize..4).prop_map(|(raw, fail, workers)| {
        let n = raw.len();
        let mut steps: Vec<RandStep> = Vec::with_capacity(n);
        for (i, (preds, fp, aff, split, win)) in raw.into_iter().enumerate() {
            let preds: Vec<usize> = if i == 0 { vec![] } else { preds.into_iter().map(|p| p % i).collect() };
            let min_w = preds.iter().map(|&p| steps[p].window).max().unwrap_or(0);
            let caller = aff == 0;
            steps.push(RandStep { preds, footprint: fp, caller, split: split && !caller, window: win.max(min_w) });
        }
        (steps, fail.map(|f| f % n), workers)
    })
}

fn to_plan(steps: &[RandStep]) -> Arc<Plan> {
    let topo = Arc::new(Topology::builder().net(1, 1).build().unwrap());
    let mut b = PlanBuilder::new(topo, Side::Source);
    for (i, s) in steps.iter().enumerate() {
        let mut fp: Vec<Resource> = s.footprint.iter().map(|&r| Resource::custom(None, r)).collect();
        if s.caller {
            fp.push(Resource::BIG_LOCK);
        }
        let mut spec = StepSpec::new(DeviceId(0), StepKind::Custom(format!("s{i}").into()), Window::ALL[s.window as usize])
            .footprint(&fp)
            .after(&s.preds.iter().map(|&p| StepId(p as u32)).collect::<Vec<_>>());
        if s.caller {
            spec = spec.affinity(Affinity::Caller);
        }
        if s.split {
            spec = spec.split(Server::Channel(DeviceId(0)));
        }
        b.add(spec);
    }
    Arc::new(b.build().unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_plans_keep_the_invariants((steps, fail, workers) in rand_plan()) {
        let plan = to_plan(&steps);
        let fail_set: HashSet<u32> = fail.iter().map(|&f| f as u32).collect();
        let rec = Recorder::new(plan.len(), fail_set, Duration::from_micros(20));
        let mut engine = Engine::new(workers);
        let (p, reports) = run_all(&mut engine, &plan, rec.clone());
        let seen = rec.seen();
        check_invariants(&plan, &seen, std::thread::current().id());
        match fail {
            None => {
                prop_assert!(p.all_done());
                prop_assert!(seen.iter().all(|s| s.starts == 1));
                prop_assert!(reports.iter().all(|r| r.failure.is_none()));
            }
            Some(f) => {
                let fid = StepId(f as u32);
                for d in dependents(&plan, fid) {
                    prop_assert_eq!(seen[d as usize].starts, 0);
                }
                if seen[f].starts == 1 {
                    let failures: Vec<_> = reports.iter().flat_map(|r| r.failures.iter()).collect();
                    prop_assert_eq!(failures.len(), 1);
                    prop_assert_eq!(failures[0].step, fid);
                    prop_assert_eq!(&failures[0].kind, &StepKind::Custom(format!("s{f}").into()));
                    prop_assert_eq!(&*failures[0].device_name, "net0");
                    prop_assert_eq!(failures[0].device, DeviceId(0));
                    prop_assert_eq!(p.outcome(fid), StepOutcome::Failed);
                } else {
                    // It can only have been skipped because an earlier failure... there is none:
                    // so it was in a window after the failing one, which cannot be.
                    prop_assert!(false, "the failing step never started");
                }
            }
        }
    }
}

/// Runs the medium preset's plans on both sides, 1 and 3 workers, `runs` times
/// each, and returns the records that ended after one of their successors
/// started (at most `stop_after`).
fn records_ending_after_a_successor_starts(controls: Controls, runs: usize, stop_after: usize) -> Vec<String> {
    let topo = Arc::new(Topology::preset("medium").unwrap());
    let mut bad = Vec::new();
    for side in [Side::Source, Side::Destination] {
        let plan = Arc::new(build(&topo, side, &RecipeOptions::engine(), &TestCosts).unwrap());
        for workers in [1, 3] {
            let mut engine = Engine::new(workers);
            engine.set_controls(controls);
            for _ in 0..runs {
                let rec = Recorder::new(plan.len(), HashSet::new(), Duration::ZERO);
                let (p, reports) = run_all(&mut engine, &plan, rec);
                assert!(p.all_done());
                for r in &reports {
                    let by_step: std::collections::HashMap<StepId, &switchover::exec::StepRecord> =
                        r.records.iter().map(|x| (x.step, x)).collect();
                    for x in &r.records {
                        for pred in plan.preds(x.step) {
                            let Some(pr) = by_step.get(pred).filter(|pr| pr.end > x.start) else { continue };
                            bad.push(format!(
                                "{side:?} {:?} {workers} workers: {} (lane {}, {:?}) ended at {:?}, after its successor {} (lane {}) started at {:?}",
                                r.window,
                                plan.step(*pred).kind.name(),
                                pr.lane,
                                pr.outcome,
                                pr.end,
                                plan.step(x.step).kind.name(),
                                x.lane,
                                x.start
                            ));
                            if bad.len() >= stop_after {
                                return bad;
                            }
                        }
                    }
                }
            }
        }
    }
    bad
}

#[test]
fn a_step_record_never_ends_after_a_successor_starts() {
    // Reports, the critical path and the real rig's order checks (a route commit
    // ends before the first kick) read the engine's records: whichever lane runs a
    // successor, its start is not before its predecessors' recorded ends.
    let bad = records_ending_after_a_successor_starts(Controls::default(), 20, 1);
    assert!(bad.is_empty(), "{}", bad[0]);
}

#[test]
fn negative_control_records_closed_only_at_the_lanes_next_step_end_after_successors_start() {
    // Without closing a record when its successors may start elsewhere, the check
    // above fails.
    let bad = records_ending_after_a_successor_starts(Controls { late_record_ends: true, ..Controls::default() }, 20, 1);
    assert!(!bad.is_empty(), "no record ended after a successor's start without the mechanism");
    eprintln!("as expected without the mechanism: {}", bad[0]);
}

/// `x` makes `a` and `b` ready on its own lane; `a` (more urgent) blocks until `b`
/// has run, for at most `wait`. Runs it `runs` times with 1 and 2 workers and
/// returns the failures (at most `stop_after`).
fn runs_where_a_busy_lane_held_back_its_ready_step(controls: Controls, runs: usize, wait: Duration, stop_after: usize) -> Vec<String> {
    struct WaitForB(std::sync::Mutex<bool>, std::sync::Condvar, Duration);
    impl StepActions for WaitForB {
        fn start(&self, step: &Step, done: Completion) {
            let name = step.kind.name();
            if name == "a" {
                let g = self.0.lock().unwrap();
                let (g, t) = self.1.wait_timeout_while(g, self.2, |ran| !*ran).unwrap();
                drop(g);
                done.complete(if t.timed_out() {
                    Err(StepFailure::Injected { what: "b never ran while a blocked".into() })
                } else {
                    Ok(())
                });
                return;
            }
            if name == "b" {
                *self.0.lock().unwrap() = true;
                self.1.notify_all();
            }
            done.complete(Ok(()));
        }
    }
    let topo = Arc::new(Topology::builder().net(1, 1).build().unwrap());
    let mut b = PlanBuilder::new(topo, Side::Source);
    let x = b.add(StepSpec::new(DeviceId(0), StepKind::Custom("x".into()), Window::Blackout));
    b.add(StepSpec::new(DeviceId(0), StepKind::Custom("a".into()), Window::Blackout).after(&[x]).cost(Duration::from_millis(50)));
    b.add(StepSpec::new(DeviceId(0), StepKind::Custom("b".into()), Window::Blackout).after(&[x]).cost(Duration::from_micros(1)));
    let plan = Arc::new(b.build().unwrap());
    let mut bad = Vec::new();
    for workers in [1, 2] {
        let mut engine = Engine::new(workers);
        engine.set_controls(controls);
        for _ in 0..runs {
            let actions = Arc::new(WaitForB(std::sync::Mutex::new(false), std::sync::Condvar::new(), wait));
            let mut p = Progress::new(&plan);
            let r = engine.run(&plan, Window::Blackout, actions, &mut p);
            if let Some(f) = r.failure {
                bad.push(format!("{workers} workers: {f:?}"));
                if bad.len() >= stop_after {
                    return bad;
                }
            }
        }
    }
    bad
}

#[test]
fn a_lane_inside_a_long_action_does_not_hold_back_its_other_ready_steps() {
    // An idle lane takes `b` from the busy lane's own set: a ready step waits for
    // a lane only while every lane is busy.
    let bad = runs_where_a_busy_lane_held_back_its_ready_step(Controls::default(), 20, Duration::from_secs(5), 1);
    assert!(bad.is_empty(), "{}", bad[0]);
}

#[test]
fn negative_control_without_the_idle_lanes_unload_a_busy_lane_holds_back_its_ready_step() {
    let bad = runs_where_a_busy_lane_held_back_its_ready_step(
        Controls { no_idle_unload: true, ..Controls::default() },
        20,
        Duration::from_millis(500),
        1,
    );
    assert!(!bad.is_empty(), "b always ran while a blocked, without the idle lane's unload");
    eprintln!("as expected without the mechanism: {}", bad[0]);
}
