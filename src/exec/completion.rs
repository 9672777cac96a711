//! The answer to a started step, delivered exactly once from any thread.

use std::cell::{Cell, RefCell};

use crate::error::StepFailure;
use crate::ids::StepId;
use crate::sync::Arc;

use super::Shared;

crate::sync::thread_local! {
    /// The step this lane is starting right now (shared state address, epoch, step).
    static STARTING: Cell<Option<(usize, u64, u32)>> = const { Cell::new(None) };
    /// Its answer, if it answered before `start` returned.
    static ANSWER: RefCell<Option<Result<(), StepFailure>>> = const { RefCell::new(None) };
}

/// Marks that this lane is starting `step`: an answer given on this thread before
/// `start` returns is kept for the lane (see [`end_inline`]) instead of taking the
/// scheduler lock a second time.
pub(super) fn begin_inline(shared: &Arc<Shared>, epoch: u64, step: StepId) {
    STARTING.with(|s| s.set(Some((Arc::as_ptr(shared) as usize, epoch, step.0))));
}

/// Ends the start of a step; returns its answer if it came inline.
pub(super) fn end_inline() -> Option<Result<(), StepFailure>> {
    STARTING.with(|s| s.set(None));
    ANSWER.with(|a| a.borrow_mut().take())
}

fn take_inline(shared: &Arc<Shared>, epoch: u64, step: StepId, r: Result<(), StepFailure>) -> Option<Result<(), StepFailure>> {
    let mine = STARTING.with(|s| s.get()) == Some((Arc::as_ptr(shared) as usize, epoch, step.0));
    if !mine {
        return Some(r);
    }
    ANSWER.with(|a| *a.borrow_mut() = Some(r));
    STARTING.with(|s| s.set(None));
    None
}

type Callback = Box<dyn FnOnce(Result<(), StepFailure>) + Send + 'static>;

enum Target {
    Engine { shared: Arc<Shared>, epoch: u64, step: StepId },
    Callback(Callback),
}

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
    target: Option<Target>,
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Completion")
    }
}

impl Completion {
    pub(crate) fn engine(shared: Arc<Shared>, epoch: u64, step: StepId) -> Completion {
        Completion { target: Some(Target::Engine { shared, epoch, step }) }
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
        Completion { target: Some(Target::Callback(Box::new(f))) }
    }

    /// Delivers the answer.
    ///
    /// ```
    /// use switchover::exec::Completion;
    /// let c = Completion::from_fn(|r| assert!(r.is_ok()));
    /// c.complete(Ok(()));
    /// ```
    pub fn complete(mut self, r: Result<(), StepFailure>) {
        if let Some(t) = self.target.take() {
            deliver(t, r);
        }
    }
}

fn deliver(t: Target, r: Result<(), StepFailure>) {
    match t {
        Target::Engine { shared, epoch, step } => {
            if let Some(r) = take_inline(&shared, epoch, step, r) {
                shared.complete(epoch, step, r);
            }
        }
        Target::Callback(f) => f(r),
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(t) = self.target.take() {
            // Dropped by unwinding: the code holding it panicked before answering.
            let f = if std::thread::panicking() {
                StepFailure::Panicked { message: "the thread holding its completion panicked".into() }
            } else {
                StepFailure::Abandoned
            };
            deliver(t, Err(f));
        }
    }
}
