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

use crate::config::MsiVector;

/// One ring's MSI route, as a route commit carries it: the message its irqfd's
/// GSI raises, or `None` for no route (a masked vector, `NO_VECTOR`).
///
/// ```
/// use switchover::ids::DeviceId;
/// use switchover_vhost::config::MsiVector;
/// use switchover_vhost::sink::Route;
/// let r = Route { device: DeviceId(0), ring: 1, msi: Some(MsiVector { address: 0xfee0_0000, data: 0x4021, masked: false }) };
/// assert!(r.msi.is_some());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The device.
    pub device: DeviceId,
    /// The ring (its guest notifier's GSI).
    pub ring: u32,
    /// The message, or no route.
    pub msi: Option<MsiVector>,
}

/// Writes 1 to an eventfd.
fn signal(fd: RawFd, what: &str) -> Result<(), StepFailure> {
    let one = 1u64.to_ne_bytes();
    // SAFETY: an 8-byte write from a local buffer to a descriptor the sink owns.
    let n = unsafe { libc::write(fd, one.as_ptr().cast(), 8) };
    if n == 8 {
        Ok(())
    } else {
        Err(StepFailure::io(format!("signalling the {what} eventfd"), std::io::Error::last_os_error()))
    }
}

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
    /// Moves the ring's host notifier to a new doorbell address (the guest moved
    /// the device's BAR): unregistered at the old address, registered at the new
    /// one if it was on. By default a sink cannot.
    ///
    /// # Errors
    /// The sink cannot move it, or an ioctl failed.
    fn move_host_notifier(&self, device: DeviceId, ring: u32, doorbell: u64) -> Result<(), StepFailure> {
        let _ = (device, ring, doorbell);
        Err(StepFailure::Other { message: "this notifier sink cannot move a doorbell".into() })
    }
    /// Updates the routes of `routes`' rings and commits the VM's routing table
    /// (`KVM_SET_GSI_ROUTING`: the whole table in one ioctl). By default a sink
    /// has no MSI routing.
    ///
    /// # Errors
    /// The sink has no routing, or the commit failed.
    fn commit_routes(&self, routes: &[Route]) -> Result<(), StepFailure> {
        let _ = routes;
        Err(StepFailure::Other { message: "this notifier sink has no MSI routing".into() })
    }
    /// After the ring started: signals its call eventfd (`call`: an interrupt
    /// raised before its route existed was lost) and its kick eventfd (`kick`:
    /// requests already in the ring are picked up), once each.
    ///
    /// # Errors
    /// An eventfd write failed, or the ring has no such eventfd.
    fn notify(&self, device: DeviceId, ring: u32, call: bool, kick: bool) -> Result<(), StepFailure> {
        let missing = |what: &str| StepFailure::MissingState { what: format!("no {what} eventfd for ring {ring}") };
        if call {
            signal(self.call_fd(device, ring).ok_or_else(|| missing("call"))?, "call")?;
        }
        if kick {
            signal(self.kick_fd(device, ring).ok_or_else(|| missing("kick"))?, "kick")?;
        }
        Ok(())
    }
}
