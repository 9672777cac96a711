//! Exactly-once notifier transitions.
//!
//! Each host notifier (ioeventfd) and guest notifier (irqfd) has one atomic state.
//! A thread that wants to change it first wins the transition with a compare-and-swap
//! (`Enabled → Disabling` or `Disabled → Enabling`), then issues the ioctl, then
//! commits (or aborts, which restores the old state). A thread that loses is told
//! why and issues nothing. KVM does not protect against a double disable — a second
//! irqfd unregister returns success silently — so the library must.
//!
//! # Examples
//!
//! ```
//! use switchover::notifier::{Notifier, NotifierState, Refused};
//! let n = Notifier::new(NotifierState::Enabled);
//! let t = n.begin_disable().unwrap();      // this thread won: issue the ioctl now
//! assert_eq!(n.begin_disable().unwrap_err(), Refused::InTransition);
//! t.commit();
//! assert_eq!(n.begin_disable().unwrap_err(), Refused::AlreadyDisabled);
//! assert_eq!(n.state(), NotifierState::Disabled);
//! ```

use crate::sync::{AtomicU8, Ordering};

/// A notifier's state.
///
/// ```
/// use switchover::notifier::{Notifier, NotifierState};
/// let n = Notifier::new(NotifierState::Disabled);
/// let t = n.begin_enable().unwrap();
/// assert_eq!(n.state(), NotifierState::Enabling); // visible while the ioctl runs
/// t.commit();
/// assert_eq!(n.state(), NotifierState::Enabled);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifierState {
    /// Not registered with KVM.
    Disabled = 0,
    /// A thread is registering it.
    Enabling = 1,
    /// Registered.
    Enabled = 2,
    /// A thread is unregistering it.
    Disabling = 3,
}

impl NotifierState {
    fn from_u8(v: u8) -> NotifierState {
        match v {
            0 => NotifierState::Disabled,
            1 => NotifierState::Enabling,
            2 => NotifierState::Enabled,
            _ => NotifierState::Disabling,
        }
    }
}

/// Why a transition was refused; the caller must issue nothing.
///
/// ```
/// use switchover::notifier::{Notifier, NotifierState, Refused};
/// let n = Notifier::new(NotifierState::Disabled);
/// assert_eq!(n.begin_disable().unwrap_err(), Refused::AlreadyDisabled);
/// assert_eq!(Refused::InTransition.to_string(), "another thread is changing it");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Someone already disabled it.
    #[error("already disabled")]
    AlreadyDisabled,
    /// Someone already enabled it.
    #[error("already enabled")]
    AlreadyEnabled,
    /// Another thread is changing it right now.
    #[error("another thread is changing it")]
    InTransition,
}

/// One notifier's exactly-once state machine.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use switchover::notifier::{Notifier, NotifierState};
/// // Eight threads race to disable one notifier: exactly one issues the ioctl.
/// let n = Notifier::new(NotifierState::Enabled);
/// let issued = AtomicUsize::new(0);
/// std::thread::scope(|s| {
///     for _ in 0..8 {
///         s.spawn(|| {
///             if let Ok(t) = n.begin_disable() {
///                 issued.fetch_add(1, Ordering::SeqCst);
///                 t.commit();
///             }
///         });
///     }
/// });
/// assert_eq!(issued.load(Ordering::SeqCst), 1);
/// assert_eq!(n.state(), NotifierState::Disabled);
/// ```
#[derive(Debug)]
pub struct Notifier {
    state: AtomicU8,
}

/// A won transition: issue the ioctl, then [`Transition::commit`] or
/// [`Transition::abort`]. Dropping it aborts.
///
/// ```
/// use switchover::notifier::{Notifier, NotifierState};
/// let n = Notifier::new(NotifierState::Enabled);
/// drop(n.begin_disable().unwrap()); // dropped unanswered: aborted
/// assert_eq!(n.state(), NotifierState::Enabled);
/// ```
#[derive(Debug)]
#[must_use = "a won transition must be committed or aborted"]
pub struct Transition<'a> {
    n: &'a Notifier,
    from: NotifierState,
    to: NotifierState,
    mid: NotifierState,
    open: bool,
}

impl Notifier {
    /// A notifier in `state` (only `Enabled` or `Disabled` are meaningful).
    ///
    /// ```
    /// use switchover::notifier::{Notifier, NotifierState};
    /// assert_eq!(Notifier::new(NotifierState::Disabled).state(), NotifierState::Disabled);
    /// ```
    pub fn new(state: NotifierState) -> Notifier {
        Notifier { state: AtomicU8::new(state as u8) }
    }

    /// The current state.
    ///
    /// ```
    /// use switchover::notifier::{Notifier, NotifierState};
    /// let n = Notifier::new(NotifierState::Enabled);
    /// n.begin_disable().unwrap().commit();
    /// assert_eq!(n.state(), NotifierState::Disabled);
    /// ```
    pub fn state(&self) -> NotifierState {
        NotifierState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn begin(&self, from: NotifierState, mid: NotifierState, to: NotifierState, already: Refused) -> Result<Transition<'_>, Refused> {
        match self.state.compare_exchange(from as u8, mid as u8, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ok(Transition { n: self, from, to, mid, open: true }),
            Err(cur) => Err(match NotifierState::from_u8(cur) {
                s if s == to => already,
                _ => Refused::InTransition,
            }),
        }
    }

    /// Wins the right to disable, or says why not.
    ///
    /// # Errors
    /// [`Refused::AlreadyDisabled`] or [`Refused::InTransition`].
    ///
    /// ```
    /// use switchover::notifier::{Notifier, NotifierState, Refused};
    /// let n = Notifier::new(NotifierState::Enabled);
    /// let t = n.begin_disable().unwrap();
    /// assert_eq!(n.state(), NotifierState::Disabling);
    /// assert_eq!(n.begin_disable().unwrap_err(), Refused::InTransition);
    /// t.commit();
    /// assert_eq!(n.begin_disable().unwrap_err(), Refused::AlreadyDisabled);
    /// ```
    pub fn begin_disable(&self) -> Result<Transition<'_>, Refused> {
        self.begin(NotifierState::Enabled, NotifierState::Disabling, NotifierState::Disabled, Refused::AlreadyDisabled)
    }

    /// Wins the right to enable, or says why not.
    ///
    /// # Errors
    /// [`Refused::AlreadyEnabled`] or [`Refused::InTransition`].
    ///
    /// ```
    /// use switchover::notifier::{Notifier, NotifierState, Refused};
    /// let n = Notifier::new(NotifierState::Disabled);
    /// n.begin_enable().unwrap().commit();
    /// assert_eq!(n.begin_enable().unwrap_err(), Refused::AlreadyEnabled);
    /// ```
    pub fn begin_enable(&self) -> Result<Transition<'_>, Refused> {
        self.begin(NotifierState::Disabled, NotifierState::Enabling, NotifierState::Enabled, Refused::AlreadyEnabled)
    }
}

impl Transition<'_> {
    /// The ioctl succeeded: the new state holds.
    ///
    /// ```
    /// use switchover::notifier::{Notifier, NotifierState};
    /// let n = Notifier::new(NotifierState::Disabled);
    /// n.begin_enable().unwrap().commit();
    /// assert_eq!(n.state(), NotifierState::Enabled);
    /// ```
    pub fn commit(mut self) {
        self.finish(self.to);
    }

    /// The ioctl failed: the old state is restored.
    ///
    /// ```
    /// use switchover::notifier::{Notifier, NotifierState};
    /// let n = Notifier::new(NotifierState::Enabled);
    /// n.begin_disable().unwrap().abort();
    /// assert_eq!(n.state(), NotifierState::Enabled);
    /// ```
    pub fn abort(mut self) {
        self.finish(self.from);
    }

    fn finish(&mut self, s: NotifierState) {
        if self.open {
            self.open = false;
            let prev = self.n.state.swap(s as u8, Ordering::AcqRel);
            debug_assert_eq!(prev, self.mid as u8, "notifier changed under a won transition");
        }
    }
}

impl Drop for Transition<'_> {
    fn drop(&mut self) {
        let from = self.from;
        self.finish(from);
    }
}
