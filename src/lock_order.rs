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
//! cannot deadlock whatever the order. The ranks order the footprint (a step's
//! resources are interned and held in rank order) and say why the caller lane, and
//! only it, may need the big lock: rank 0 is outermost, so no lane that holds
//! anything else may ever ask for it, which is the deadlock of the 2021 thread-pool
//! attempt. A plan whose step holds the big lock without being caller-affine is
//! refused when it is built ([`crate::plan::PlanError::CallerOnly`]).
//!
//! The crates' own locks do not nest: each is held around one data structure and
//! released before a completion is delivered, so no lock order between them exists
//! to break. (The engine's scheduler lock is the only lock a completion takes.)
//!
//! # Examples
//!
//! ```
//! use switchover::lock_order::ResourceKind;
//! assert!(ResourceKind::BigLock.caller_only());
//! assert!(ResourceKind::BigLock < ResourceKind::Device && ResourceKind::Device < ResourceKind::Vring);
//! ```

use std::fmt;

/// Every kind of resource a step can touch, in lock order (see the module docs).
///
/// ```
/// use switchover::lock_order::ResourceKind;
/// assert!(ResourceKind::BigLock < ResourceKind::Device); // outermost first
/// assert_eq!(ResourceKind::KvmIoeventfd.rank(), 8);
/// assert_eq!(ResourceKind::GuestNotifier.to_string(), "guest_notifier");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
