//! Lockable resources: a kind (with its rank in [`crate::lock_order`]), the device it
//! belongs to and an index, interned into dense ids when a plan is built.
//!
//! # Examples
//!
//! ```
//! use switchover::resource::Resource;
//! use switchover::ids::DeviceId;
//! let r = Resource::vring(DeviceId(3), 5);
//! assert_eq!(r.to_string(), "vring(dev3#5)");
//! assert!(Resource::BIG_LOCK < r); // the big lock is outermost
//! ```

use std::fmt;

use crate::ids::DeviceId;
use crate::lock_order::ResourceKind;

/// A lockable resource. Ordered by lock order: kind rank, then device, then index.
///
/// ```
/// use switchover::lock_order::ResourceKind;
/// use switchover::resource::Resource;
/// use switchover::ids::DeviceId;
/// let r = Resource::host_notifier(DeviceId(1), 2);
/// assert_eq!((r.kind, r.device, r.index), (ResourceKind::HostNotifier, Some(DeviceId(1)), 2));
/// // Ordered by lock order: the vring (rank 3) before its host notifier (rank 4).
/// assert!(Resource::vring(DeviceId(9), 0) < r);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resource {
    /// Its kind (and so its rank).
    pub kind: ResourceKind,
    /// The device it belongs to, for per-device kinds.
    pub device: Option<DeviceId>,
    /// Ring index, or a VMM-chosen index for custom resources.
    pub index: u32,
}

impl Resource {
    /// The caller's big lock.
    ///
    /// ```
    /// use switchover::resource::Resource;
    /// assert!(Resource::BIG_LOCK.kind.caller_only());
    /// assert_eq!(Resource::BIG_LOCK.to_string(), "big_lock");
    /// ```
    pub const BIG_LOCK: Resource = Resource { kind: ResourceKind::BigLock, device: None, index: 0 };
    /// The side's memory-map transaction.
    ///
    /// ```
    /// use switchover::resource::Resource;
    /// assert!(Resource::BIG_LOCK < Resource::MEMORY_TRANSACTION);
    /// assert_eq!(Resource::MEMORY_TRANSACTION.device, None);
    /// ```
    pub const MEMORY_TRANSACTION: Resource = Resource { kind: ResourceKind::MemoryTransaction, device: None, index: 0 };

    /// The VM's interrupt routing table.
    ///
    /// ```
    /// use switchover::resource::Resource;
    /// assert!(Resource::MEMORY_TRANSACTION < Resource::ROUTING);
    /// assert_eq!(Resource::ROUTING.to_string(), "routing");
    /// ```
    pub const ROUTING: Resource = Resource { kind: ResourceKind::Routing, device: None, index: 0 };
    /// The dirty log the backends share, and the RAM pass that reads it.
    ///
    /// ```
    /// use switchover::resource::Resource;
    /// assert!(Resource::ROUTING < Resource::DIRTY_LOG);
    /// assert_eq!(Resource::DIRTY_LOG.to_string(), "dirty_log");
    /// ```
    pub const DIRTY_LOG: Resource = Resource { kind: ResourceKind::DirtyLog, device: None, index: 0 };

    /// A whole device.
    ///
    /// ```
    /// use switchover::resource::Resource;
    /// use switchover::ids::DeviceId;
    /// let r = Resource::device(DeviceId(2));
    /// assert_eq!(r.to_string(), "device(dev2#0)");
    /// assert!(r < Resource::vring(DeviceId(0), 0)); // devices rank before rings
    /// ```
    pub fn device(d: DeviceId) -> Resource {
        Resource { kind: ResourceKind::Device, device: Some(d), index: 0 }
    }
    /// One ring of a device.
    ///
    /// ```
    /// use switchover::resource::Resource;
    /// use switchover::ids::DeviceId;
    /// assert!(Resource::vring(DeviceId(0), 1) < Resource::vring(DeviceId(0), 2));
    /// assert_ne!(Resource::vring(DeviceId(0), 1), Resource::vring(DeviceId(1), 1));
    /// ```
    pub fn vring(d: DeviceId, ring: u32) -> Resource {
        Resource { kind: ResourceKind::Vring, device: Some(d), index: ring }
    }
    /// The ioeventfd of a ring.
    ///
    /// ```
    /// use switchover::resource::Resource;
    /// use switchover::ids::DeviceId;
    /// assert_eq!(Resource::host_notifier(DeviceId(0), 3).to_string(), "host_notifier(dev0#3)");
    /// ```
    pub fn host_notifier(d: DeviceId, ring: u32) -> Resource {
        Resource { kind: ResourceKind::HostNotifier, device: Some(d), index: ring }
    }
    /// The irqfd of a ring.
    ///
    /// ```
    /// use switchover::resource::Resource;
    /// use switchover::ids::DeviceId;
    /// let d = DeviceId(0);
    /// assert!(Resource::host_notifier(d, 0) < Resource::guest_notifier(d, 0));
    /// assert_eq!(Resource::guest_notifier(d, 3).to_string(), "guest_notifier(dev0#3)");
    /// ```
    pub fn guest_notifier(d: DeviceId, ring: u32) -> Resource {
        Resource { kind: ResourceKind::GuestNotifier, device: Some(d), index: ring }
    }
    /// A VMM-defined resource.
    ///
    /// ```
    /// use switchover::resource::Resource;
    /// use switchover::ids::DeviceId;
    /// assert_eq!(Resource::custom(None, 7).to_string(), "custom");
    /// assert_eq!(Resource::custom(Some(DeviceId(4)), 7).to_string(), "custom(dev4#7)");
    /// ```
    pub fn custom(d: Option<DeviceId>, index: u32) -> Resource {
        Resource { kind: ResourceKind::Custom, device: d, index }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.device {
            Some(d) => write!(f, "{}(dev{}#{})", self.kind, d.0, self.index),
            None => write!(f, "{}", self.kind),
        }
    }
}

/// Dense index of an interned [`Resource`] within one plan.
///
/// ```
/// use std::sync::Arc;
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::resource::ResourceId;
/// use switchover::ids::Side;
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
/// let id = plan.footprint_ids(plan.steps()[0].id)[0];
/// assert_eq!(plan.resource(ResourceId(id)), plan.footprint(plan.steps()[0].id).next().unwrap());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceId(pub u32);
