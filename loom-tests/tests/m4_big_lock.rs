//! Model 4: the 2021 RFC's deadlock (seed 003): the caller holds its big lock
//! (QEMU's BQL) while the devices are stopped, and a step needs that lock.
//!
//! Engine model: the caller thread locks the big lock (a loom mutex), then calls
//! `Engine::run` on a plan shaped like a memory-map transaction: `memtxn_begin`
//! (caller-affine, footprint big lock + memory transaction) → two host-notifier
//! steps on the workers → `memtxn_commit` (caller-affine), plus an independent
//! ring step. A caller-affine step does not lock again: the lane that runs it
//! already holds the lock, which the action checks (the engine hands it to
//! `StepActions::start_on_caller` with the caller-lane token, it runs on the
//! caller's thread, and `try_lock` from there fails because the lock is held).
//!
//! Proves, within the bound: the run terminates in every interleaving, every step
//! runs once after its predecessors, caller-affine steps run only on the caller's
//! thread while it holds the lock, and no worker ever waits for the lock.
//!
//! The two failing models show the check has teeth: a naive pool (written here,
//! like the RFC's) whose worker takes the big lock while the caller holds it and
//! waits for the worker, and the real engine given a step that was wrongly left
//! `Affinity::Any` and takes the lock itself. Loom must report a deadlock for both
//! (they run in a child process, see `expect_loom_deadlock`).
//!
//! Does not prove: that a VMM declares every step that needs its big lock as
//! caller-affine (the plan builder refuses a non-caller step whose footprint names
//! the big lock, but cannot see locks an action takes without declaring them).
#![cfg(loom)]

use std::collections::VecDeque;
use std::sync::Arc as StdArc;

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread::ThreadId;
use switchover::exec::{CallerLane, Completion, Engine, Progress, StepActions};
use switchover::ids::{Affinity, DeviceId, Side, StepId, Window};
use switchover::plan::{PlanBuilder, PlanError, StepSpec};
use switchover::resource::Resource;
use switchover::step::{Step, StepKind};
use switchover_loom_tests::{check, expect_loom_deadlock, plan, topology, Recorder};

fn step(kind: StepKind, fp: &[Resource]) -> StepSpec {
    StepSpec::new(DeviceId(0), kind, Window::Blackout).footprint(fp).deadline(std::time::Duration::MAX)
}

fn txn(kind: StepKind) -> StepSpec {
    step(kind, &[Resource::BIG_LOCK, Resource::MEMORY_TRANSACTION]).affinity(Affinity::Caller)
}

struct BigLockActions {
    inner: Recorder,
    big: Mutex<u32>,
    caller: ThreadId,
    on_caller: AtomicUsize,
}

impl StepActions for BigLockActions {
    fn start(&self, step: &Step, done: Completion) {
        assert_eq!(step.affinity, Affinity::Any, "a caller-affine step was started off the caller lane");
        self.inner.start(step, done);
    }
    fn start_on_caller(&self, step: &Step, _lane: &CallerLane, done: Completion) {
        assert_eq!(step.affinity, Affinity::Caller);
        assert_eq!(loom::thread::current().id(), self.caller, "a caller-affine step ran on a worker");
        assert!(self.big.try_lock().is_err(), "the caller lane must be holding the big lock");
        self.on_caller.fetch_add(1, Ordering::Relaxed);
        self.inner.start(step, done);
    }
}

#[test]
fn caller_lane_runs_big_lock_steps_while_holding_it() {
    check("m4 caller holds big lock, engine with 2 workers", 3, || {
        let begin = StepId(0);
        let p = plan(vec![
            txn(StepKind::MemTxnBegin),
            step(StepKind::HostNotifierOff, &[Resource::host_notifier(DeviceId(0), 0)]).ring(0).after(&[begin]),
            step(StepKind::HostNotifierOff, &[Resource::host_notifier(DeviceId(0), 1)]).ring(1).after(&[begin]),
            txn(StepKind::MemTxnCommit).after(&[StepId(1), StepId(2)]),
            step(StepKind::VringDisable, &[Resource::vring(DeviceId(0), 0)]).ring(0),
        ]);
        let mut engine = Engine::new(2);
        let actions = StdArc::new(BigLockActions {
            inner: Recorder::new(&p, &[]),
            big: Mutex::new(0),
            caller: loom::thread::current().id(),
            on_caller: AtomicUsize::new(0),
        });
        let rec = actions.inner.rec.clone();
        let mut progress = Progress::new(&p);
        let mut held = actions.big.lock().unwrap(); // migration_completion(): the BQL is taken
        let r = engine.run(&p, Window::Blackout, actions.clone(), &mut progress);
        *held += 1;
        drop(held);
        assert!(r.ok() && progress.all_done());
        assert_eq!(actions.on_caller.load(Ordering::Relaxed), 2);
        for i in 0..p.len() {
            assert_eq!(rec.starts(i), 1, "step {i}");
        }
        assert_eq!(*actions.big.lock().unwrap(), 1);
    });
}

/// The plan builder refuses a step that names the big lock unless it is
/// caller-affine, so a declared big-lock step can never reach a worker.
#[test]
fn plan_refuses_big_lock_on_a_worker_step() {
    let mut b = PlanBuilder::new(topology(), Side::Source);
    b.add(step(StepKind::MemTxnBegin, &[Resource::BIG_LOCK]));
    assert!(matches!(b.build(), Err(PlanError::CallerOnly { .. })));
}

/// The RFC's pool: the caller holds the big lock, submits the stop requests and
/// waits for them; the worker runs virtio_vmstate_change, which (via
/// memory_region_transaction_begin → prepare_mmio_access) locks the big lock.
fn naive_pool() {
    struct Pool {
        jobs: Mutex<VecDeque<bool>>, // true: the job needs the big lock
        jobs_cv: Condvar,
        done: Mutex<usize>,
        done_cv: Condvar,
    }
    let big = Arc::new(Mutex::new(0u32));
    let pool = Arc::new(Pool { jobs: Mutex::new(VecDeque::new()), jobs_cv: Condvar::new(), done: Mutex::new(0), done_cv: Condvar::new() });
    let worker = {
        let (big, pool) = (big.clone(), pool.clone());
        loom::thread::spawn(move || {
            for _ in 0..2 {
                let job = {
                    let mut q = pool.jobs.lock().unwrap();
                    loop {
                        if let Some(j) = q.pop_front() {
                            break j;
                        }
                        q = pool.jobs_cv.wait(q).unwrap();
                    }
                };
                if job {
                    *big.lock().unwrap() += 1; // prepare_mmio_access(): BQL not held here → lock it
                }
                *pool.done.lock().unwrap() += 1;
                pool.done_cv.notify_all();
            }
        })
    };
    let held = big.lock().unwrap(); // migration_completion()
    pool.jobs.lock().unwrap().extend([false, true]);
    pool.jobs_cv.notify_all();
    let mut d = pool.done.lock().unwrap();
    while *d < 2 {
        d = pool.done_cv.wait(d).unwrap();
    }
    drop(d);
    drop(held);
    worker.join().unwrap();
}

#[test]
fn naive_pool_deadlocks() {
    let line = expect_loom_deadlock("child_naive_pool");
    assert!(line.contains("Blocked"), "{line}");
}

#[test]
#[ignore = "must deadlock; run by naive_pool_deadlocks"]
fn child_naive_pool() {
    check("m4 naive pool, worker takes the big lock", 2, naive_pool);
}

/// A step that takes the big lock in its action but was left `Affinity::Any` (and
/// does not name the lock in its footprint): the engine can no longer help.
struct LocksBigLock {
    big: Mutex<u32>,
}

impl StepActions for LocksBigLock {
    fn start(&self, _step: &Step, done: Completion) {
        *self.big.lock().unwrap() += 1;
        done.complete(Ok(()));
    }
}

#[test]
fn engine_with_undeclared_big_lock_step_deadlocks() {
    expect_loom_deadlock("child_engine_undeclared_big_lock");
}

#[test]
#[ignore = "must deadlock; run by engine_with_undeclared_big_lock_step_deadlocks"]
fn child_engine_undeclared_big_lock() {
    check("m4 engine, big-lock step left Affinity::Any", 2, || {
        let p = plan(vec![step(StepKind::MemTxnBegin, &[Resource::MEMORY_TRANSACTION])]);
        let mut engine = Engine::new(1);
        let actions = StdArc::new(LocksBigLock { big: Mutex::new(0) });
        let mut progress = Progress::new(&p);
        let held = actions.big.lock().unwrap();
        let _ = engine.run(&p, Window::Blackout, actions.clone(), &mut progress);
        drop(held);
    });
}
