//! The answer to a started step, delivered exactly once from any thread.

use crate::error::StepFailure;
use crate::step::StepId;
use crate::sync::Arc;

use super::Shared;

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
        Target::Engine { shared, epoch, step } => shared.complete(epoch, step, r),
        Target::Callback(f) => f(r),
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(t) = self.target.take() {
            deliver(t, Err(StepFailure::Abandoned));
        }
    }
}
