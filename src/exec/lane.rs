//! A lane's own steps, and the loop that runs them.
//!
//! Each lane keeps the steps it made ready in a local set of its own and runs them
//! most urgent first, without touching the engine's mutex: a step's whole life on
//! its lane is one timestamp, the action, and its successors' gates. The lane takes
//! the engine's mutex only on a slow path: the shared pool holds a more urgent
//! step, a worker waits for work (the lane hands its other steps over), a
//! caller-affine step became ready on a worker, a step's footprint is contended, a
//! step failed, or a split-phase step did not answer before `start` returned.
//!
//! A lane's local state sits behind a mutex of its own that only the lane takes
//! while it runs steps; the lane releases it around each action, so the watchdog
//! can reach a lane stuck inside an action (end its step, hand its other steps to
//! the pool) and the run's end can collect its records.

use std::sync::Arc as StdArc;

use super::caller::CallerLane;
use super::clock::Clock;
use super::clock::Stamp;
use super::completion::{self, Completion, Inline, LaneHandle, ANSWERED_ERR, ANSWERED_OK, NO_ANSWER};
use super::ready::ReadySet;
use super::run::{Hints, RunData, CALLER_AFFINE, CONTENDED, JOINS};
use super::{panic_message, Shared, CALLER};
use super::{StepOutcome, StepRecord};
use crate::error::StepFailure;
use crate::ids::{Affinity, StepId};
use crate::sync::{Arc, AtomicU32, AtomicU64, Mutex, Ordering};
use std::time::Duration;

/// The lane a step was started on: 0 is the caller, 1.. are workers.
///
/// ```
/// use std::sync::Arc;
/// use switchover::exec::{Completion, Engine, Progress, StepActions};
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::ids::{Side, Window};
/// use switchover::step::Step;
/// use switchover::topology::Topology;
/// struct Inline;
/// impl StepActions for Inline {
///     fn start(&self, _step: &Step, done: Completion) {
///         done.complete(Ok(()));
///     }
/// }
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap());
/// let mut engine = Engine::new(2);
/// let r = engine.run(&plan, Window::Blackout, Arc::new(Inline), &mut Progress::new(&plan));
/// assert!(r.records.iter().all(|x| usize::from(x.lane) <= engine.workers()));
/// ```
pub type Lane = u16;

/// A lane's own state, behind its own mutex.
#[derive(Default)]
pub(crate) struct Local {
    /// The run these sets belong to.
    pub epoch: u64,
    /// Ready any-lane steps this lane made ready (or took), by rank.
    pub any: ReadySet,
    /// Ready caller-affine steps (caller lane only).
    pub caller: ReadySet,
    /// Steps this lane started (a split-phase step's still in flight says
    /// `NotRun`, and is listed in `pending`).
    pub records: Vec<StepRecord>,
    /// Indexes in `records` of split-phase steps answered off this lane.
    pub pending: Vec<u32>,
    /// The record whose end is this lane's next timestamp (a step that answered
    /// inline ends when its lane is done with it).
    pub open: Option<usize>,
    /// The step inside its action right now (its start is in [`Slot::started`]).
    pub current: Option<u32>,
    /// The watchdog ended `current` while the lane was inside it.
    pub claimed: bool,
}

impl Local {
    /// Empties the lane's state for run `epoch` of a plan of `n` steps.
    pub(crate) fn reset(&mut self, epoch: u64, n: usize, expect: usize) {
        self.epoch = epoch;
        self.any.reset(n);
        self.caller.reset(n);
        self.records.clear();
        self.records.reserve(expect);
        self.pending.clear();
        self.open = None;
        self.current = None;
        self.claimed = false;
    }

    #[inline]
    pub(crate) fn close(&mut self, t: Stamp, clock: &Clock) {
        if let Some(i) = self.open.take() {
            let r = &mut self.records[i];
            r.end = Duration::from_nanos(clock.ns(t)).max(r.start);
        }
    }

    /// Ends the open record now: another lane may start one of its successors
    /// before this lane's next step, and a record never ends after a successor's
    /// start (unless a negative control removes this, see [`Controls`]).
    ///
    /// [`Controls`]: super::controls::Controls
    #[inline]
    pub(crate) fn close_now(&mut self, data: &RunData) {
        if !data.controls.late_record_ends {
            self.close(data.clock.now(), &data.clock);
        }
    }
}

/// A lane's place in the engine: its own state, and the start of the step inside
/// its action.
pub(crate) struct Slot {
    pub local: Mutex<Local>,
    /// For the watchdog, in windows with deadlines: the step inside its action
    /// (id + 1; 0: none) ...
    pub current: AtomicU32,
    /// ... and when it started (0: not stamped yet). Written by the lane after it
    /// released `local` (so that reading the clock never delays the release) and
    /// reset under `local` after the action; the watchdog reads them without a
    /// lock to find late steps, then checks them again under `local`.
    pub started: AtomicU64,
}

impl Slot {
    pub(crate) fn new() -> Slot {
        Slot { local: Mutex::new(Local::default()), current: AtomicU32::new(0), started: AtomicU64::new(0) }
    }
}

/// What a lane needs to run steps.
pub(crate) struct LaneCtx<'a> {
    pub shared: &'a Arc<Shared>,
    pub handle: &'a StdArc<LaneHandle>,
    pub data: &'a StdArc<RunData>,
    pub lane: Lane,
    /// Present on the caller lane only.
    pub caller: Option<&'a CallerLane>,
}

/// Runs steps on this lane until it has none left (or the run stops, or is
/// over), starting with the ranks in `take`.
pub(crate) fn work(cx: &LaneCtx<'_>, take_any: &mut Vec<u32>, take_caller: &mut Vec<u32>) {
    let sh = cx.shared;
    let data = &**cx.data;
    let plan = &*data.plan;
    let slot = &sh.lanes[cx.lane as usize];
    // Only windows with deadlines need the watchdog to see when a step started.
    let watched = data.min_deadline != u64::MAX && cx.lane != CALLER;
    let mut g = slot.local.lock();
    if g.epoch != data.epoch {
        // The caller lane's records become the report's: room for the window.
        let expect = if cx.lane == CALLER { plan.window_steps(data.window).len() } else { 0 };
        g.reset(data.epoch, plan.len(), expect);
    }
    for r in take_any.drain(..) {
        g.any.insert(r);
    }
    for r in take_caller.drain(..) {
        g.caller.insert(r);
    }
    loop {
        let h = sh.hints.load(Ordering::Acquire);
        if h & Hints::STOPPING != 0 {
            break;
        }
        if cx.lane == CALLER && h & Hints::INBOX != 0 {
            let mut inner = sh.inner.lock();
            let Some(run) = inner.run_of(data.epoch) else { break };
            run.inbox.move_into(&mut g.caller);
            let h = inner.hints();
            sh.hints.store(h, Ordering::Release);
        }
        // The caller lane's own steps first; then the most urgent of this lane's
        // and the shared pool's.
        let rank = match g.caller.pop() {
            Some(r) => r,
            None => match g.any.pop_below(Hints::best(h)) {
                Some(r) => r,
                None if Hints::best(h) != u32::MAX => {
                    // The pool holds a more urgent step (or this lane has none).
                    let mut inner = sh.inner.lock();
                    let Some(run) = inner.run_of(data.epoch) else { break };
                    let k = run.batch();
                    run.take(k, &mut g.any);
                    let h = inner.hints();
                    sh.hints.store(h, Ordering::Release);
                    continue;
                }
                None => break,
            },
        };
        let id = plan.at_rank(rank);
        if Hints::idle(h) && !g.any.is_empty() {
            // Steps leave this lane: the step that made them ready ends now, before
            // another lane can start them (a record never ends after a successor's
            // start).
            g.close_now(data);
            share(cx, &mut g.any);
        }
        if data.flags(id.0) & CONTENDED != 0 {
            let mut inner = sh.inner.lock();
            let Some(run) = inner.run_of(data.epoch) else { break };
            if !run.acquire(id.0) {
                continue; // parked on a busy resource
            }
        }
        // The caller lane inside a caller-affine step takes no pool steps: the
        // workers share the pool without it meanwhile.
        let affine = cx.lane == CALLER && data.lanes > 1 && data.flags(id.0) & CALLER_AFFINE != 0;
        if affine {
            data.caller_busy.store(1, Ordering::Relaxed);
        }
        // The start is read before the step shows as current: a lane that moves
        // this lane's ready steps away meanwhile (`unload_others`) relies on the
        // open record then ending no later than now.
        let t = data.clock.now();
        g.current = Some(id.0);
        drop(g);
        if watched {
            slot.current.store(id.0 + 1, Ordering::Relaxed);
            slot.started.store(t.max(1), Ordering::Release);
        }
        let answer = start_step(cx, id);
        if affine {
            data.caller_busy.store(0, Ordering::Relaxed);
        }
        // A step that answered inline after its deadline timed out: the watchdog
        // cannot reach the caller lane inside an action, nor a worker while the
        // caller lane runs steps itself.
        let late = if data.min_deadline != u64::MAX && answer != NO_ANSWER { late(data, id.0, t) } else { None };
        g = slot.local.lock();
        if watched {
            slot.started.store(0, Ordering::Relaxed);
            slot.current.store(0, Ordering::Relaxed);
        }
        // The previous step (answered inline) ended when this one started.
        g.close(t, &data.clock);
        g.current = None;
        if std::mem::take(&mut g.claimed) {
            // The watchdog ended this step while the lane was inside it. The lane
            // runs steps again: count it as active again.
            let mut inner = sh.inner.lock();
            if inner.run_of(data.epoch).is_none() {
                break;
            }
            let w = cx.lane as usize - 1;
            if std::mem::take(&mut inner.stuck[w]) {
                inner.active += 1;
            }
            continue;
        }
        let idx = g.records.len();
        let start = Duration::from_nanos(data.clock.ns(t));
        g.records.push(StepRecord { step: id, outcome: StepOutcome::Done, lane: cx.lane, start, end: start });
        let flags = data.flags(id.0);
        if answer == ANSWERED_OK && late.is_none() && flags & CONTENDED == 0 {
            // The common case: answered inline, nothing to release.
            g.open = Some(idx);
            if flags & JOINS != 0 {
                // Another lane may start a successor as soon as this one is
                // released: the step ends now, not at this lane's next step.
                g.close_now(data);
            }
            if !succeeded(cx, &mut g, id) {
                break;
            }
            continue;
        }
        let r = match answer {
            ANSWERED_OK => {
                g.open = Some(idx);
                Ok(())
            }
            ANSWERED_ERR => {
                g.open = Some(idx);
                Err(completion::take_failure())
            }
            _ => {
                // Split-phase: in flight until its answer comes, unless it came already.
                let mut inner = sh.inner.lock();
                let Some(run) = inner.run_of(data.epoch) else { break };
                match run.register(id.0, t) {
                    None => {
                        g.records[idx].outcome = StepOutcome::NotRun;
                        g.pending.push(idx as u32);
                        continue;
                    }
                    Some((r, at)) => {
                        g.records[idx].end = Duration::from_nanos(data.clock.ns(at)).max(start);
                        r
                    }
                }
            }
        };
        let r = match late {
            Some(end) => {
                g.open = None;
                g.records[idx].end = Duration::from_nanos(data.clock.ns(end)).max(start);
                Err(StepFailure::Timeout { after: plan.step(id).deadline })
            }
            None => r,
        };
        g.records[idx].outcome = outcome_of_answer(&r);
        if !ended(cx, &mut g, id, r) {
            break;
        }
    }
    let t = data.clock.now();
    g.close(t, &data.clock);
}

/// If the step that started at `start` answered after its deadline: now.
#[inline]
fn late(data: &RunData, id: u32, start: Stamp) -> Option<Stamp> {
    let now = data.clock.now();
    let took = now.saturating_sub(start);
    // Within the window's shortest deadline: in time, without looking the step up.
    if took <= data.min_deadline {
        return None;
    }
    (took > data.deadline_ticks(id)).then_some(now)
}

/// How a step ended, from its answer: an action that reports its own time-out (a
/// drain past its deadline, an answer after it) timed out.
fn outcome_of_answer(r: &Result<(), StepFailure>) -> StepOutcome {
    match r {
        Ok(()) => StepOutcome::Done,
        Err(StepFailure::Timeout { .. }) => StepOutcome::TimedOut,
        Err(_) => StepOutcome::Failed,
    }
}

/// A step of this lane succeeded (and holds no contended resource): its
/// successors become ready on this lane (caller-affine ones on a worker go to the
/// caller's inbox). Returns false if the run is over.
#[inline]
fn succeeded(cx: &LaneCtx<'_>, g: &mut Local, id: StepId) -> bool {
    let data = &**cx.data;
    let plan = &*data.plan;
    let mut inbox = false;
    for s in plan.succs(id) {
        if let Some((rank, f)) = data.arrive(s.0 as usize) {
            if f & CALLER_AFFINE == 0 {
                g.any.insert(rank);
            } else if cx.lane == CALLER {
                g.caller.insert(rank);
            } else {
                if !inbox {
                    // The caller lane may start it at once: this step ends first.
                    g.close_now(data);
                }
                inbox = true;
                if !to_inbox(cx, rank) {
                    return false;
                }
            }
        }
    }
    if inbox {
        let sh = cx.shared;
        let inner = sh.inner.lock();
        sh.hints.store(inner.hints(), Ordering::Release);
        if inner.caller_waiting {
            sh.caller_cv.notify_one();
        }
    }
    true
}

/// A caller-affine step made ready on a worker: into the caller's inbox.
#[cold]
fn to_inbox(cx: &LaneCtx<'_>, rank: u32) -> bool {
    let mut inner = cx.shared.inner.lock();
    let Some(run) = inner.run_of(cx.data.epoch) else { return false };
    run.inbox.insert(rank);
    true
}

/// A step of this lane ended with `r`, on the slow path: it holds contended
/// resources, or failed. Returns false if the run is over.
#[cold]
fn ended(cx: &LaneCtx<'_>, g: &mut Local, id: StepId, r: Result<(), StepFailure>) -> bool {
    let sh = cx.shared;
    let data = &**cx.data;
    if r.is_ok() && data.flags(id.0) & CONTENDED == 0 {
        return succeeded(cx, g, id);
    }
    // Its successors go to the shared pool, where another lane may start them at
    // once: the step ends first.
    g.close_now(data);
    let mut inner = sh.inner.lock();
    let Some(run) = inner.run_of(data.epoch) else { return false };
    let before = run.pool.len();
    run.end(id.0, r);
    let fresh = run.pool.len() - before;
    let caller_has = !run.inbox.is_empty() || run.stopping;
    let wake = inner.wake_for(fresh);
    sh.hints.store(inner.hints(), Ordering::Release);
    for _ in 0..wake {
        sh.workers_cv.notify_one();
    }
    if inner.caller_waiting && (caller_has || fresh > 0) {
        sh.caller_cv.notify_one();
    }
    true
}

/// Hands this lane's other ready steps to the pool for workers that wait.
#[cold]
fn share(cx: &LaneCtx<'_>, any: &mut ReadySet) {
    let sh = cx.shared;
    let mut inner = sh.inner.lock();
    let Some(run) = inner.run_of(cx.data.epoch) else { return };
    let n = any.len();
    any.move_into(&mut run.pool);
    let wake = inner.wake_for(n);
    sh.hints.store(inner.hints(), Ordering::Release);
    for _ in 0..wake {
        sh.workers_cv.notify_one();
    }
    if inner.caller_waiting {
        sh.caller_cv.notify_one();
    }
}

/// Starts a step on this lane; returns its answer if it answered before `start`
/// returned.
///
/// A panic in the action is caught here: the step fails as
/// [`StepFailure::Panicked`] (unless it had already answered) and the lane goes on,
/// so neither a worker nor the caller's run is lost to it.
#[inline]
fn start_step(cx: &LaneCtx<'_>, id: StepId) -> Inline {
    let data = &**cx.data;
    let plan = &*data.plan;
    let step = plan.step(id);
    tracing::trace!(step = id.0, kind = step.kind.name(), device = plan.device_name(id), lane = cx.lane, "start");
    completion::begin_inline(cx.handle, data.epoch, id);
    let done = Completion::engine(cx.handle, data.epoch, id);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match (cx.caller, step.affinity) {
        (Some(token), Affinity::Caller) => data.actions.start_on_caller(step, token, done),
        _ => data.actions.start(step, done),
    }));
    let answer = completion::end_inline(cx.handle);
    match r {
        Ok(()) => answer,
        Err(payload) => panicked(cx, id, answer, &*payload),
    }
}

/// A step's action panicked: the step fails as panicked, with the panic's
/// message, unless it had answered before it panicked.
#[cold]
fn panicked(cx: &LaneCtx<'_>, id: StepId, answer: Inline, payload: &(dyn std::any::Any + Send)) -> Inline {
    let plan = &*cx.data.plan;
    let step = plan.step(id);
    let message = panic_message(payload);
    tracing::error!(step = id.0, kind = step.kind.name(), device = plan.device_name(id), %message, "step action panicked");
    match answer {
        // It answered, then panicked: the answer stands.
        ANSWERED_OK => ANSWERED_OK,
        ANSWERED_ERR => {
            let f = completion::take_failure();
            // It panicked before answering: the dropped completion answered
            // "panicked" inline; give that answer the panic's message.
            let f = if matches!(f, StepFailure::Panicked { .. }) { StepFailure::Panicked { message } } else { f };
            completion::keep_failure(f);
            ANSWERED_ERR
        }
        // Its completion escaped before the panic: the step fails now; a later
        // answer finds it ended and is ignored.
        _ => {
            completion::keep_failure(StepFailure::Panicked { message });
            ANSWERED_ERR
        }
    }
}
