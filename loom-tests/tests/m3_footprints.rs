//! Model 3: footprints.
//!
//! Steps whose footprints overlap never run at the same time: the recorder
//! counts, per footprint resource, the steps inside it (entered when the action
//! starts, left just before its completion is delivered, from whichever thread
//! delivers it) and fails on a second entry. A split-phase step keeps its
//! footprint until its answer arrives.
//!
//! Two mechanisms exclude footprints. A resource whose users in a window are all
//! ordered by the plan's dependencies is excluded by them alone: the engine takes
//! no lock for it (`Plan::contended` is empty), and each user starts only after
//! the previous one delivered its answer — the third model checks that under
//! every interleaving, with the answers delivered from other threads. The
//! other resources (*contended*) are taken at once, under the engine's mutex, or
//! the step waits parked on the busy one, so no lane ever waits for a resource
//! and no lock order can be broken. (The ranked mutexes an earlier version
//! offered to step code, and this model's part about them, are gone: no
//! production lock nests; `lock_order` now only ranks resources.)
//!
//! Does not prove: anything about locks the step code takes itself.
#![cfg(loom)]

use std::sync::Arc as StdArc;

use switchover::exec::{Engine, Progress};
use switchover::ids::{DeviceId, StepId, Window};
use switchover::resource::Resource;
use switchover_loom_tests::{check, plan, spec, Recorder};

fn r(i: u32) -> Resource {
    Resource::custom(Some(DeviceId(0)), i)
}

/// a: {R0}, b: {R0, R1}, c: {R1}, no edges: b conflicts with both, a and c may
/// overlap. Two workers and the caller lane: every pair can be attempted at once.
#[test]
fn overlapping_footprints_never_overlap_in_time() {
    check("m3 overlapping footprints, 2 workers + caller", 3, || {
        let p = plan(vec![spec("a", 0).footprint(&[r(0)]), spec("b", 1).footprint(&[r(0), r(1)]), spec("c", 2).footprint(&[r(1)])]);
        assert!(p.conflicts(StepId(0), StepId(1)) && p.conflicts(StepId(1), StepId(2)) && !p.conflicts(StepId(0), StepId(2)));
        let mut engine = Engine::new(2);
        let actions = StdArc::new(Recorder::new(&p, &[]));
        let rec = actions.rec.clone();
        let mut progress = Progress::new(&p);
        let r = engine.run(&p, Window::Blackout, actions, &mut progress);
        assert!(r.ok() && progress.all_done());
        for i in 0..3 {
            assert_eq!(rec.starts(i), 1);
        }
    });
}

/// a → b → c, all on R0: ordered by the plan, so R0 is not contended and the
/// engine takes no lock for it; b and the answers come from other threads. The
/// recorder still never sees two steps inside R0.
#[test]
fn ordered_users_of_a_resource_never_overlap_without_a_lock() {
    check("m3 ordered users of one resource, 1 worker + caller, a,b split", 3, || {
        let p = plan(vec![
            spec("a", 0).footprint(&[r(0)]),
            spec("b", 1).footprint(&[r(0)]).after(&[StepId(0)]),
            spec("c", 2).footprint(&[r(0)]).after(&[StepId(1)]),
        ]);
        assert!((0..3).all(|i| p.contended(StepId(i)).is_empty()), "excluded by the dependencies alone");
        let mut engine = Engine::new(1);
        let actions = StdArc::new(Recorder::new(&p, &[0, 1]));
        let rec = actions.rec.clone();
        let mut progress = Progress::new(&p);
        let r = engine.run(&p, Window::Blackout, actions, &mut progress);
        assert!(r.ok() && progress.all_done());
        assert_eq!((rec.starts(0), rec.starts(1), rec.starts(2)), (1, 1, 1));
    });
}

/// Same conflict, but the first step is split-phase: its footprint must stay held
/// until the replier thread delivers the answer, not until `start` returns.
#[test]
fn split_phase_step_holds_its_footprint_until_answered() {
    check("m3 split-phase step holds footprint, 1 worker + caller", 3, || {
        let p = plan(vec![spec("a", 0).footprint(&[r(0)]), spec("b", 1).footprint(&[r(0)])]);
        let mut engine = Engine::new(1);
        let actions = StdArc::new(Recorder::new(&p, &[0, 1]));
        let rec = actions.rec.clone();
        let mut progress = Progress::new(&p);
        let r = engine.run(&p, Window::Blackout, actions, &mut progress);
        assert!(r.ok() && progress.all_done());
        assert_eq!((rec.starts(0), rec.starts(1)), (1, 1));
    });
}
