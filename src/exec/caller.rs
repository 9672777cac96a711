//! The caller-lane token.

use std::marker::PhantomData;

/// Proof that code runs on the caller lane: the thread that called
/// [`super::Engine::run`], which holds the VMM's big lock. The engine makes one per
/// run, on that thread, and hands it to [`super::StepActions::start_on_caller`] by
/// reference; it is neither `Send` nor `Sync`, so it cannot reach a worker.
///
/// ```compile_fail
/// fn needs_send<T: Send>(_: T) {}
/// fn try_to_leak(lane: &switchover::exec::CallerLane) {
///     needs_send(lane); // a worker can never hold the caller-lane token
/// }
/// ```
#[derive(Debug)]
pub struct CallerLane {
    _not_send: PhantomData<*const ()>,
}

impl CallerLane {
    /// Made by the engine only, on the calling thread.
    pub(super) fn here() -> CallerLane {
        CallerLane { _not_send: PhantomData }
    }
}
