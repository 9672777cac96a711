//! Lockable resources: a kind (with its rank in [`crate::lock_order`]), the device it
//! belongs to and an index, interned into dense ids when a plan is built.
//!
//! # Examples
//!
//! ```
//! use switchover::resource::Resource;
//! use switchover::topology::DeviceId;
//! let r = Resource::vring(DeviceId(3), 5);
//! assert_eq!(r.to_string(), "vring(dev3#5)");
//! assert!(Resource::BIG_LOCK < r); // the big lock is outermost
//! ```

use std::fmt;

use crate::lock_order::ResourceKind;
use crate::topology::DeviceId;

/// A lockable resource. Ordered by lock order: kind rank, then device, then index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
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
    pub const BIG_LOCK: Resource = Resource { kind: ResourceKind::BigLock, device: None, index: 0 };
    /// The side's memory-map transaction.
    pub const MEMORY_TRANSACTION: Resource = Resource { kind: ResourceKind::MemoryTransaction, device: None, index: 0 };

    /// A whole device.
    pub fn device(d: DeviceId) -> Resource {
        Resource { kind: ResourceKind::Device, device: Some(d), index: 0 }
    }
    /// One ring of a device.
    pub fn vring(d: DeviceId, ring: u32) -> Resource {
        Resource { kind: ResourceKind::Vring, device: Some(d), index: ring }
    }
    /// The ioeventfd of a ring.
    pub fn host_notifier(d: DeviceId, ring: u32) -> Resource {
        Resource { kind: ResourceKind::HostNotifier, device: Some(d), index: ring }
    }
    /// The irqfd of a ring.
    pub fn guest_notifier(d: DeviceId, ring: u32) -> Resource {
        Resource { kind: ResourceKind::GuestNotifier, device: Some(d), index: ring }
    }
    /// A VMM-defined resource.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceId(pub u32);
