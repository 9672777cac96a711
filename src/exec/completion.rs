//! The answer to a started step, delivered exactly once from any thread.
//!
//! An answer given while the lane is still inside the step's `start`, on the
//! lane's own thread (the common case for blocking steps), is an *inline* answer:
//! it is left in a thread-local slot for the lane, touching neither a lock nor a
//! reference count. Any other answer goes to the engine's mutex.

use std::cell::{Cell, RefCell};
use std::mem::ManuallyDrop;
use std::sync::Arc as StdArc;

use crate::error::StepFailure;
use crate::ids::StepId;

use super::Shared;
use crate::sync::Arc;

/// What a step's `start` left for its lane: [`NO_ANSWER`], [`ANSWERED_OK`] or
/// [`ANSWERED_ERR`] (its failure in [`take_failure`]).
pub(super) type Inline = u8;
/// The step did not answer before `start` returned (split-phase).
pub(super) const NO_ANSWER: Inline = 0;
/// It answered success inline.
pub(super) const ANSWERED_OK: Inline = 1;
/// It answered a failure inline.
pub(super) const ANSWERED_ERR: Inline = 2;

crate::sync::thread_local! {
    /// The step this lane is starting right now: its lane handle's address (0:
    /// none), and its run (low 32 bits) and step.
    static STARTING: Cell<(usize, u64)> = const { Cell::new((0, 0)) };
    /// Whether it answered before `start` returned, and how.
    static INLINE: Cell<u8> = const { Cell::new(NO_ANSWER) };
    /// Its failure, if it answered one inline.
    static FAILURE: RefCell<Option<StepFailure>> = const { RefCell::new(None) };
}

#[inline]
fn key(epoch: u64, step: StepId) -> u64 {
    (epoch << 32) | u64::from(step.0)
}

/// Marks that this lane is starting `step`: an answer given on this thread before
/// `start` returns is kept for the lane (see [`end_inline`]) instead of going
/// through the engine's mutex.
#[inline]
pub(super) fn begin_inline(lane: &StdArc<LaneHandle>, epoch: u64, step: StepId) {
    STARTING.with(|s| s.set((StdArc::as_ptr(lane) as usize, key(epoch, step))));
}

/// Ends the start of a step; says whether it answered inline.
///
/// A completion that did not answer inline has escaped (a backend's reply will
/// answer it, from any thread): from here on it holds a counted reference to its
/// lane's handle, taken here on its behalf, and released when it answers.
#[inline]
pub(super) fn end_inline(lane: &StdArc<LaneHandle>) -> Inline {
    STARTING.with(|s| s.set((0, 0)));
    let a = INLINE.with(|a| a.replace(NO_ANSWER));
    if a == NO_ANSWER {
        // SAFETY: `lane` is a live `Arc`, so its strong count is at least one;
        // this reference is given to the escaped completion, which releases it
        // exactly once, after it delivered its answer (see `deliver`). The lane
        // keeps a reserve reference while it runs, so a release that overtakes
        // this increment never takes the count to zero.
        unsafe { StdArc::increment_strong_count(StdArc::as_ptr(lane)) };
    }
    a
}

/// The failure a step answered inline ([`ANSWERED_ERR`]).
#[cold]
pub(super) fn take_failure() -> StepFailure {
    FAILURE.with(|f| f.borrow_mut().take()).unwrap_or(StepFailure::Abandoned)
}

/// Leaves `f` as the failure of the step a lane just started (for a panic).
#[cold]
pub(super) fn keep_failure(f: StepFailure) {
    FAILURE.with(|x| *x.borrow_mut() = Some(f));
}

/// Keeps the answer for the lane if (`lane`, `key`) is the step this thread is
/// starting; returns whether it did.
#[inline]
fn take_inline(lane: usize, key: u64, r: &mut Option<Result<(), StepFailure>>) -> bool {
    if STARTING.with(|s| s.get()) != (lane, key) {
        return false;
    }
    STARTING.with(|s| s.set((0, 0)));
    match r.take() {
        Some(Err(f)) => {
            FAILURE.with(|x| *x.borrow_mut() = Some(f));
            INLINE.with(|a| a.set(ANSWERED_ERR));
        }
        _ => INLINE.with(|a| a.set(ANSWERED_OK)),
    }
    true
}

type Callback = Box<dyn FnOnce(Result<(), StepFailure>) + Send + 'static>;

/// The one-shot answer for a started step. Consumed by [`Completion::complete`];
/// dropping it unanswered fails the step with [`StepFailure::Abandoned`] (so a
/// backend thread that dies with requests queued fails those steps instead of
/// hanging the run).
///
/// ```
/// use std::sync::mpsc;
/// use switchover::error::StepFailure;
/// use switchover::exec::Completion;
/// let (tx, rx) = mpsc::channel();
/// let c = Completion::from_fn(move |r| tx.send(r).unwrap());
/// drop(c);
/// assert_eq!(rx.recv().unwrap(), Err(StepFailure::Abandoned));
/// ```
pub struct Completion {
    /// The lane that started the step (null for a callback completion). Not
    /// counted while the step's `start` runs (an inline answer touches no
    /// reference count); if the completion outlives `start`, [`end_inline`]
    /// counts one reference for it.
    lane: *const LaneHandle,
    /// The run (high 32 bits) and step.
    key: u64,
    /// The engine's run number.
    epoch: u64,
    callback: Option<Callback>,
}

// SAFETY: the only field that is not `Send` by itself is the lane handle's
// pointer; `LaneHandle` is `Send + Sync`, and the reference the pointer stands for
// is counted (see `end_inline`) whenever the completion can reach another thread,
// so sending it is sending an `Arc<LaneHandle>`.
unsafe impl Send for Completion {}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Completion")
    }
}

impl Completion {
    /// The completion of `step`, which `lane` starts now (between
    /// [`begin_inline`] and [`end_inline`]).
    #[inline]
    pub(crate) fn engine(lane: &StdArc<LaneHandle>, epoch: u64, step: StepId) -> Completion {
        Completion { lane: StdArc::as_ptr(lane), key: key(epoch, step), epoch, callback: None }
    }

    /// A completion that calls `f` with the answer (for running steps outside an
    /// engine, e.g. the `serial` and `pool` strategies).
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use switchover::error::StepFailure;
    /// use switchover::exec::Completion;
    /// let (tx, rx) = mpsc::channel();
    /// let c = Completion::from_fn(move |r| tx.send(r).unwrap());
    /// std::thread::spawn(move || c.complete(Err(StepFailure::Disconnected))).join().unwrap();
    /// assert_eq!(rx.recv().unwrap(), Err(StepFailure::Disconnected));
    /// ```
    pub fn from_fn<F: FnOnce(Result<(), StepFailure>) + Send + 'static>(f: F) -> Completion {
        Completion { lane: std::ptr::null(), key: 0, epoch: 0, callback: Some(Box::new(f)) }
    }

    /// Delivers the answer.
    ///
    /// ```
    /// use switchover::exec::Completion;
    /// let c = Completion::from_fn(|r| assert!(r.is_ok()));
    /// c.complete(Ok(()));
    /// ```
    #[inline]
    pub fn complete(self, r: Result<(), StepFailure>) {
        let mut this = ManuallyDrop::new(self);
        let callback = this.callback.take();
        deliver(this.lane, this.key, this.epoch, callback, r);
    }
}

#[inline]
fn deliver(lane: *const LaneHandle, key: u64, epoch: u64, callback: Option<Callback>, r: Result<(), StepFailure>) {
    if lane.is_null() {
        if let Some(f) = callback {
            f(r);
        }
        return;
    }
    let mut r = Some(r);
    if take_inline(lane as usize, key, &mut r) {
        return;
    }
    remote(lane, key, epoch, r.unwrap_or(Ok(())));
}

/// An answer off the lane that started the step (or after its `start` returned).
#[cold]
fn remote(lane: *const LaneHandle, key: u64, epoch: u64, r: Result<(), StepFailure>) {
    // Not inline: the completion escaped its `start`, so it holds a counted
    // reference, taken by `end_inline` when `start` returned — or about to be, if
    // this answer overtook the lane. Until then the lane is running and holds two
    // references of its own (its handle and a reserve), so the count stays at
    // least one even if this release comes first.
    // SAFETY: the handle is alive (see above); the pointer came from an
    // `Arc<LaneHandle>`.
    let handle = unsafe { &*lane };
    handle.shared.complete(epoch, StepId(key as u32), r);
    // SAFETY: releases the one reference counted for this completion.
    unsafe { StdArc::decrement_strong_count(lane) };
}

impl Drop for Completion {
    fn drop(&mut self) {
        // Dropped by unwinding: the code holding it panicked before answering.
        let f = if std::thread::panicking() {
            StepFailure::Panicked { message: "the thread holding its completion panicked".into() }
        } else {
            StepFailure::Abandoned
        };
        deliver(self.lane, self.key, self.epoch, self.callback.take(), Err(f));
    }
}

/// A lane's handle on the engine, held by the completions it makes that outlive
/// their step's `start`: one per lane, so those touch only the lane's own counter
/// (an inline answer touches none; see `completion::end_inline`).
pub(crate) struct LaneHandle {
    pub shared: Arc<Shared>,
}

impl LaneHandle {
    /// A lane's handle, and the reserve reference the lane holds beside it for as
    /// long as it runs steps (see `completion::end_inline`).
    pub(crate) fn new(shared: Arc<Shared>) -> (StdArc<LaneHandle>, StdArc<LaneHandle>) {
        let h = StdArc::new(LaneHandle { shared });
        let reserve = h.clone();
        (h, reserve)
    }
}
