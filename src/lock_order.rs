//! The global lock order: every lockable resource kind and its rank, in one file.
//!
//! A resource with a lower rank is *outer*: a thread that holds a resource may only
//! acquire resources of strictly greater `(rank, index)`. The order, outermost first:
//!
//! | rank | kind | what it is | who may hold it |
//! |---|---|---|---|
//! | 0 | [`ResourceKind::BigLock`] | the caller's own big lock (QEMU's BQL, a VMM's device-manager lock) | only the caller lane, which already holds it |
//! | 1 | [`ResourceKind::MemoryTransaction`] | the memory-map transaction that batches notifier changes | caller lane (begin/commit need the big lock) |
//! | 2 | [`ResourceKind::Device`] | a whole device (feature and memory-table setup) | any lane |
//! | 3 | [`ResourceKind::Vring`] | one virtqueue of a device | any lane |
//! | 4 | [`ResourceKind::HostNotifier`] | a ring's ioeventfd (guest → backend kick) | any lane |
//! | 5 | [`ResourceKind::GuestNotifier`] | a ring's irqfd (backend → guest interrupt) | any lane |
//! | 6 | [`ResourceKind::Custom`] | a resource a VMM declares for its own device kind | any lane |
//! | 7 | [`ResourceKind::ControlChannel`] | the send half of a backend's control socket (leaf) | any lane, never while waiting |
//! | 8 | [`ResourceKind::KvmIoeventfd`] | a VM's ioeventfd list in KVM (leaf; serialises per VM) | any lane, only around one ioctl |
//!
//! The executor never *waits* for a footprint: it acquires a step's whole footprint
//! at once, under its scheduler lock, or does not start the step. So step footprints
//! cannot deadlock whatever the order. The ranks bind code that takes locks itself
//! while a step runs ([`RankedMutex`]) and document why the caller lane, and only it,
//! may need the big lock: rank 0 is outermost, so no lane that holds anything else
//! may ever ask for it, which is the deadlock of the 2021 thread-pool attempt.
//!
//! # Examples
//!
//! ```
//! use switchover::lock_order::{RankedMutex, ResourceKind};
//! let dev = RankedMutex::new(ResourceKind::Device, 0, "net0");
//! let ring = RankedMutex::new(ResourceKind::Vring, 3, 7u16);
//! let d = dev.lock().unwrap();      // rank 2
//! let r = ring.lock().unwrap();     // rank 3 after rank 2: allowed
//! assert_eq!(*r, 7);
//! drop((r, d));
//! let r = ring.lock().unwrap();
//! assert!(dev.lock().is_err());     // rank 2 while holding rank 3: refused
//! drop(r);
//! ```

use std::cell::RefCell;
use std::fmt;

use crate::sync::{Mutex, MutexGuard};

/// Every kind of resource a step can touch, in lock order (see the module docs).
///
/// ```
/// use switchover::lock_order::ResourceKind;
/// assert!(ResourceKind::BigLock < ResourceKind::Device); // outermost first
/// assert_eq!(ResourceKind::KvmIoeventfd.rank(), 8);
/// assert_eq!(ResourceKind::GuestNotifier.to_string(), "guest_notifier");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// The caller's big lock; held only by the caller lane.
    BigLock,
    /// The memory-map transaction that batches all notifier changes of one side.
    MemoryTransaction,
    /// A whole device.
    Device,
    /// One virtqueue.
    Vring,
    /// A ring's host notifier (ioeventfd).
    HostNotifier,
    /// A ring's guest notifier (irqfd).
    GuestNotifier,
    /// A resource declared by a VMM for its own device kind.
    Custom,
    /// The send half of a backend's control channel (leaf).
    ControlChannel,
    /// A VM's ioeventfd list in KVM (leaf).
    KvmIoeventfd,
}

impl ResourceKind {
    /// All kinds, outermost first.
    ///
    /// ```
    /// use switchover::lock_order::ResourceKind;
    /// assert_eq!(ResourceKind::ALL[0], ResourceKind::BigLock);
    /// ```
    pub const ALL: [ResourceKind; 9] = [
        ResourceKind::BigLock,
        ResourceKind::MemoryTransaction,
        ResourceKind::Device,
        ResourceKind::Vring,
        ResourceKind::HostNotifier,
        ResourceKind::GuestNotifier,
        ResourceKind::Custom,
        ResourceKind::ControlChannel,
        ResourceKind::KvmIoeventfd,
    ];

    /// The rank: a lower rank is acquired first.
    ///
    /// ```
    /// use switchover::lock_order::ResourceKind;
    /// assert!(ResourceKind::BigLock.rank() < ResourceKind::Vring.rank());
    /// ```
    pub const fn rank(self) -> u8 {
        self as u8
    }

    /// Whether only the caller lane may hold this kind.
    ///
    /// ```
    /// use switchover::lock_order::ResourceKind;
    /// assert!(ResourceKind::BigLock.caller_only());
    /// assert!(!ResourceKind::Vring.caller_only());
    /// ```
    pub const fn caller_only(self) -> bool {
        matches!(self, ResourceKind::BigLock)
    }

    /// Short name used in reports.
    ///
    /// ```
    /// use switchover::lock_order::ResourceKind;
    /// assert_eq!(ResourceKind::HostNotifier.name(), "host_notifier");
    /// ```
    pub const fn name(self) -> &'static str {
        match self {
            ResourceKind::BigLock => "big_lock",
            ResourceKind::MemoryTransaction => "memory_transaction",
            ResourceKind::Device => "device",
            ResourceKind::Vring => "vring",
            ResourceKind::HostNotifier => "host_notifier",
            ResourceKind::GuestNotifier => "guest_notifier",
            ResourceKind::Custom => "custom",
            ResourceKind::ControlChannel => "control_channel",
            ResourceKind::KvmIoeventfd => "kvm_ioeventfd",
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A lock taken out of order.
///
/// ```
/// use switchover::lock_order::{RankedMutex, ResourceKind};
/// let ring = RankedMutex::new(ResourceKind::Vring, 1, ());
/// let dev = RankedMutex::new(ResourceKind::Device, 0, ());
/// let _r = ring.lock().unwrap();
/// let e = dev.lock().unwrap_err();
/// assert_eq!((e.wanted, e.held, e.held_index), (ResourceKind::Device, ResourceKind::Vring, 1));
/// assert_eq!(e.to_string(), "lock order violation: acquiring device#0 while holding vring#1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lock order violation: acquiring {wanted}#{wanted_index} while holding {held}#{held_index}")]
pub struct LockOrderError {
    /// The kind asked for.
    pub wanted: ResourceKind,
    /// Its index.
    pub wanted_index: u32,
    /// The innermost kind already held.
    pub held: ResourceKind,
    /// Its index.
    pub held_index: u32,
}

crate::sync::thread_local! {
    static HELD: RefCell<Vec<(ResourceKind, u32)>> = const { RefCell::new(Vec::new()) };
}

/// A mutex with a place in the lock order; acquiring it out of order is refused
/// with [`LockOrderError`] instead of risking a deadlock.
///
/// Locks must be taken in strictly increasing `(rank, index)` order on each thread.
/// Step code a VMM writes for its own device kinds uses these for its own state.
///
/// ```
/// use switchover::lock_order::{RankedMutex, ResourceKind};
/// let a = RankedMutex::new(ResourceKind::Vring, 0, ());
/// let b = RankedMutex::new(ResourceKind::Vring, 1, ());
/// let ga = a.lock().unwrap();
/// let gb = b.lock().unwrap();
/// drop((gb, ga));
/// ```
#[derive(Debug)]
pub struct RankedMutex<T> {
    kind: ResourceKind,
    index: u32,
    inner: Mutex<T>,
}

/// Guard of a [`RankedMutex`]; releases the rank on drop.
///
/// ```
/// use switchover::lock_order::{RankedMutex, ResourceKind};
/// let m = RankedMutex::new(ResourceKind::Custom, 0, vec![1]);
/// {
///     let mut g = m.lock().unwrap();
///     g.push(2); // DerefMut to the protected value
/// }
/// // Dropping the guard released the rank: the lock can be taken again.
/// assert_eq!(*m.lock().unwrap(), [1, 2]);
/// ```
#[derive(Debug)]
pub struct RankedGuard<'a, T> {
    key: (ResourceKind, u32),
    guard: MutexGuard<'a, T>,
}

impl<T> RankedMutex<T> {
    /// Creates a ranked mutex of `kind` with a tie-breaking `index`.
    ///
    /// ```
    /// use switchover::lock_order::{RankedMutex, ResourceKind};
    /// let m = RankedMutex::new(ResourceKind::Custom, 0, 5u32);
    /// assert_eq!(*m.lock().unwrap(), 5);
    /// ```
    pub fn new(kind: ResourceKind, index: u32, value: T) -> Self {
        RankedMutex { kind, index, inner: Mutex::new(value) }
    }

    /// Acquires the lock if this thread holds nothing at or after it in the order.
    ///
    /// # Errors
    /// [`LockOrderError`] when a lock of greater or equal `(rank, index)` is held.
    ///
    /// ```
    /// use switchover::lock_order::{RankedMutex, ResourceKind};
    /// let m = RankedMutex::new(ResourceKind::Device, 0, ());
    /// let g = m.lock().unwrap();
    /// assert!(m.lock().is_err()); // re-entry is an order violation, not a deadlock
    /// drop(g);
    /// ```
    pub fn lock(&self) -> Result<RankedGuard<'_, T>, LockOrderError> {
        let key = (self.kind, self.index);
        HELD.with(|h| {
            let h = h.borrow();
            match h.last() {
                Some(&(k, i)) if (k, i) >= key => {
                    Err(LockOrderError { wanted: self.kind, wanted_index: self.index, held: k, held_index: i })
                }
                _ => Ok(()),
            }
        })?;
        let guard = self.inner.lock();
        HELD.with(|h| h.borrow_mut().push(key));
        Ok(RankedGuard { key, guard })
    }
}

impl<T> std::ops::Deref for RankedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> std::ops::DerefMut for RankedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T> Drop for RankedGuard<'_, T> {
    fn drop(&mut self) {
        let key = self.key;
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(pos) = h.iter().rposition(|&k| k == key) {
                h.remove(pos);
            }
        });
    }
}
