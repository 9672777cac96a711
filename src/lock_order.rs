//! The global lock order: every lockable resource kind and its rank, in one file.
//!
//! A resource with a lower rank is *outer*: a thread that holds a resource may only
//! acquire resources of strictly greater `(rank, index)`. The order, outermost first:
//!
//! | rank | kind | what it is | who may hold it |
//! |---|---|---|---|
//! | 0 | [`ResourceKind::BigLock`] | the caller's own big lock (QEMU's BQL, a VMM's device-manager lock) | only the caller lane, which already holds it |
//! | 1 | [`ResourceKind::MemoryTransaction`] | the memory-map transaction that batches notifier changes | caller lane (begin/commit need the big lock) |
//! | 2 | [`ResourceKind::Routing`] | the VM's interrupt routing table (MSI routes) | caller lane (the commit needs the big lock) |
//! | 3 | [`ResourceKind::DirtyLog`] | the dirty log the backends share, and the RAM pass that reads it | any lane |
//! | 4 | [`ResourceKind::Device`] | a whole device (feature and memory-table setup) | any lane |
//! | 5 | [`ResourceKind::Vring`] | one virtqueue of a device | any lane |
//! | 6 | [`ResourceKind::HostNotifier`] | a ring's ioeventfd (guest → backend kick) | any lane |
//! | 7 | [`ResourceKind::GuestNotifier`] | a ring's irqfd (backend → guest interrupt) | any lane |
//! | 8 | [`ResourceKind::Custom`] | a resource a VMM declares for its own device kind | any lane |
//!
//! The executor never *waits* for a footprint: it acquires a step's contended
//! footprint at once, under its mutex, or does not start the step (the rest of the
//! footprint is excluded by the plan's dependencies: [`crate::plan::Plan::contended`]).
//! So step footprints cannot deadlock whatever the order. The ranks order the footprint (a step's
//! resources are interned and held in rank order) and say why the caller lane, and
//! only it, may need the big lock: rank 0 is outermost, so no lane that holds
//! anything else may ever ask for it, which is the deadlock of the 2021 thread-pool
//! attempt. A plan whose step holds the big lock without being caller-affine is
//! refused when it is built ([`crate::plan::PlanError::CallerOnly`]).
//!
//! The crates' own locks do not nest: each is held around one data structure and
//! released before a completion is delivered, so no lock order between them exists
//! to break — with one exception, inside the engine: a lane's own lock (its ready
//! steps and records) comes before the engine's mutex. A lane may take the mutex
//! while it holds its own lock; nothing takes a lane's lock while it holds the
//! mutex (the watchdog and the end of a run release the mutex first). A
//! completion delivered off its lane takes only the engine's mutex.
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
/// assert_eq!(ResourceKind::Custom.rank(), 8);
/// assert_eq!(ResourceKind::GuestNotifier.to_string(), "guest_notifier");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    /// The caller's big lock; held only by the caller lane.
    BigLock,
    /// The memory-map transaction that batches all notifier changes of one side.
    MemoryTransaction,
    /// The VM's interrupt routing table.
    Routing,
    /// The dirty log shared by the backends, and the RAM pass that reads it.
    DirtyLog,
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
        ResourceKind::Routing,
        ResourceKind::DirtyLog,
        ResourceKind::Device,
        ResourceKind::Vring,
        ResourceKind::HostNotifier,
        ResourceKind::GuestNotifier,
        ResourceKind::Custom,
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
            ResourceKind::Routing => "routing",
            ResourceKind::DirtyLog => "dirty_log",
            ResourceKind::Device => "device",
            ResourceKind::Vring => "vring",
            ResourceKind::HostNotifier => "host_notifier",
            ResourceKind::GuestNotifier => "guest_notifier",
            ResourceKind::Custom => "custom",
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
