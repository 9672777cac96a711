//! Where notifier steps go: the VMM's ioeventfds and irqfds.
//!
//! A ring has two notifiers: the host notifier (the guest's kick, an ioeventfd on
//! the ring's doorbell) and the guest notifier (the backend's call, an irqfd that
//! raises the ring's interrupt). The frontend passes their eventfds to the backend
//! (`SET_VRING_KICK`, `SET_VRING_CALL`) and asks the sink to register or
//! unregister them. A sink must change each notifier at most once per request
//! and refuse a change to the state it is already in without acting (KVM itself
//! silently accepts a second irqfd unregister): [`switchover::notifier::Notifier`]
//! does exactly that, and [`crate::kvm::KvmNotifiers`] uses it.
//!
//! # Examples
//!
//! ```
//! use std::os::fd::RawFd;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use switchover::error::StepFailure;
//! use switchover::ids::DeviceId;
//! use switchover::notifier::{Notifier, NotifierState};
//! use switchover_vhost::sink::NotifierSink;
//! /// One ring whose host notifier only counts its registrations.
//! struct Counting { host: Notifier, ioctls: AtomicU32 }
//! impl NotifierSink for Counting {
//!     fn kick_fd(&self, _d: DeviceId, _ring: u32) -> Option<RawFd> { None }
//!     fn call_fd(&self, _d: DeviceId, _ring: u32) -> Option<RawFd> { None }
//!     fn host_notifier(&self, _d: DeviceId, _ring: u32, on: bool) -> Result<(), StepFailure> {
//!         let t = if on { self.host.begin_enable() } else { self.host.begin_disable() };
//!         if let Ok(t) = t {
//!             self.ioctls.fetch_add(1, Ordering::Relaxed); // the ioctl, issued once
//!             t.commit();
//!         }
//!         Ok(())
//!     }
//!     fn guest_notifier(&self, _d: DeviceId, _ring: u32, _on: bool) -> Result<(), StepFailure> { Ok(()) }
//! }
//! let s = Counting { host: Notifier::new(NotifierState::Disabled), ioctls: AtomicU32::new(0) };
//! s.host_notifier(DeviceId(0), 0, true).unwrap();
//! s.host_notifier(DeviceId(0), 0, true).unwrap(); // refused: already enabled
//! assert_eq!(s.ioctls.load(Ordering::Relaxed), 1);
//! ```

use std::os::fd::RawFd;

use switchover::error::StepFailure;
use switchover::ids::DeviceId;

/// The VMM's notifiers, by device and ring.
pub trait NotifierSink: Send + Sync {
    /// The eventfd of the ring's host notifier (sent with `SET_VRING_KICK`).
    fn kick_fd(&self, device: DeviceId, ring: u32) -> Option<RawFd>;
    /// The eventfd of the ring's guest notifier (sent with `SET_VRING_CALL`).
    fn call_fd(&self, device: DeviceId, ring: u32) -> Option<RawFd>;
    /// Registers (`on`) or unregisters the ring's host notifier, exactly once.
    ///
    /// # Errors
    /// The registration failed (the notifier keeps its state).
    fn host_notifier(&self, device: DeviceId, ring: u32, on: bool) -> Result<(), StepFailure>;
    /// Registers (`on`) or unregisters the ring's guest notifier, exactly once.
    ///
    /// # Errors
    /// The registration failed (the notifier keeps its state).
    fn guest_notifier(&self, device: DeviceId, ring: u32, on: bool) -> Result<(), StepFailure>;
    /// Opens the memory-map transaction that batches host-notifier changes (the
    /// caller lane runs it, with the VMM's big lock).
    fn begin_transaction(&self) {}
    /// Commits it: one memory-map update for every change since the begin.
    fn commit_transaction(&self) {}
}
