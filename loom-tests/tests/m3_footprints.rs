//! Model 3: footprints and ranked locks.
//!
//! (a) Steps whose footprints overlap never run at the same time: the recorder
//! counts, per footprint resource, the steps inside it (entered when the action
//! starts, left just before its completion is delivered, from whichever thread
//! delivers it) and fails on a second entry. A split-phase step keeps its
//! footprint until its answer arrives.
//!
//! (b) Step code that takes `RankedMutex`es (`src/lock_order.rs`) in rank order on
//! two workers never deadlocks, and a step that tries the reverse order is refused
//! with `LockOrderError` instead of blocking. The control model takes two plain
//! mutexes in opposite orders from two steps: loom must report the deadlock, which
//! shows that (b) passes because of the ranks and not because loom missed it.
//!
//! Does not prove: anything about locks the step code takes without `RankedMutex`,
//! or more than two concurrent lock takers.
#![cfg(loom)]

use std::sync::Arc as StdArc;

use loom::sync::atomic::{AtomicUsize, Ordering};
use switchover::exec::{Completion, Engine, Progress, StepActions};
use switchover::lock_order::{RankedMutex, ResourceKind};
use switchover::resource::Resource;
use switchover::step::{Step, StepId, Window};
use switchover::sync::Mutex;
use switchover::topology::DeviceId;
use switchover_loom_tests::{check, expect_loom_deadlock, plan, spec, Recorder};

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
        let engine = Engine::new(2);
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

/// Same conflict, but the first step is split-phase: its footprint must stay held
/// until the replier thread delivers the answer, not until `start` returns.
#[test]
fn split_phase_step_holds_its_footprint_until_answered() {
    check("m3 split-phase step holds footprint, 1 worker + caller", 3, || {
        let p = plan(vec![spec("a", 0).footprint(&[r(0)]), spec("b", 1).footprint(&[r(0)])]);
        let engine = Engine::new(1);
        let actions = StdArc::new(Recorder::new(&p, &[0, 1]));
        let rec = actions.rec.clone();
        let mut progress = Progress::new(&p);
        let r = engine.run(&p, Window::Blackout, actions, &mut progress);
        assert!(r.ok() && progress.all_done());
        assert_eq!((rec.starts(0), rec.starts(1)), (1, 1));
    });
}

/// Locks shared by step code: a device-rank lock and a vring-rank lock.
struct Ranked {
    dev: RankedMutex<u32>,
    ring: RankedMutex<u32>,
    refused: AtomicUsize,
    /// Step `reverse` first takes the ring lock, then asks for the device lock.
    reverse: Option<u32>,
}

impl StepActions for Ranked {
    fn start(&self, step: &Step, done: Completion) {
        if self.reverse == Some(step.id.0) {
            let ring = self.ring.lock().expect("nothing held");
            // Out of order: refused at once, whatever the other thread holds.
            let e = self.dev.lock().expect_err("device after vring must be refused");
            assert_eq!((e.wanted, e.held), (ResourceKind::Device, ResourceKind::Vring));
            self.refused.fetch_add(1, Ordering::Relaxed);
            drop(ring);
        }
        let mut d = self.dev.lock().expect("in rank order");
        let mut g = self.ring.lock().expect("in rank order");
        *d += 1;
        *g += 1;
        drop((g, d));
        done.complete(Ok(()));
    }
}

fn ranked_model(reverse: Option<u32>) {
    // Disjoint footprints, so the engine runs the two steps concurrently.
    let p = plan(vec![spec("x", 0), spec("y", 1)]);
    let engine = Engine::new(2);
    let actions = StdArc::new(Ranked {
        dev: RankedMutex::new(ResourceKind::Device, 0, 0),
        ring: RankedMutex::new(ResourceKind::Vring, 0, 0),
        refused: AtomicUsize::new(0),
        reverse,
    });
    let mut progress = Progress::new(&p);
    let r = engine.run(&p, Window::Blackout, actions.clone(), &mut progress);
    assert!(r.ok() && progress.all_done());
    assert_eq!(*actions.dev.lock().unwrap(), 2);
    assert_eq!(*actions.ring.lock().unwrap(), 2);
    assert_eq!(actions.refused.load(Ordering::Relaxed), usize::from(reverse.is_some()));
}

#[test]
fn ranked_locks_in_order_never_deadlock() {
    check("m3 ranked locks in rank order, 2 workers", 3, || ranked_model(None));
}

#[test]
fn ranked_lock_out_of_order_is_refused_not_deadlocked() {
    check("m3 ranked locks, one step tries reverse order, 2 workers", 3, || ranked_model(Some(1)));
}

/// Two steps take two plain mutexes in opposite orders.
struct Unranked {
    a: Mutex<u32>,
    b: Mutex<u32>,
}

impl StepActions for Unranked {
    fn start(&self, step: &Step, done: Completion) {
        if step.id.0 == 0 {
            let ga = self.a.lock();
            let gb = self.b.lock();
            drop((gb, ga));
        } else {
            let gb = self.b.lock();
            let ga = self.a.lock();
            drop((ga, gb));
        }
        done.complete(Ok(()));
    }
}

/// Control: without ranks, loom finds the interleaving where the two steps
/// deadlock (run in a child process, see `expect_loom_deadlock`).
#[test]
fn control_unranked_opposite_order_deadlocks() {
    expect_loom_deadlock("child_unranked_opposite_order");
}

#[test]
#[ignore = "must deadlock; run by control_unranked_opposite_order_deadlocks"]
fn child_unranked_opposite_order() {
    check("m3 control: plain mutexes in opposite orders", 3, || {
        let p = plan(vec![spec("x", 0), spec("y", 1)]);
        let engine = Engine::new(2);
        let actions = StdArc::new(Unranked { a: Mutex::new(0), b: Mutex::new(0) });
        let mut progress = Progress::new(&p);
        let _ = engine.run(&p, Window::Blackout, actions, &mut progress);
    });
}
