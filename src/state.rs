//! Device state captured on the source while the guest is frozen: the vring bases
//! (each ring's `last_avail_idx`), the block requests handed over, and each
//! device's VMM-owned state (opaque bytes: its virtio configuration, MSI-X table,
//! inflight region, the state of a VMM-defined kind) with its configuration
//! generation. This is the data that must never be lost: every base read on the
//! source must reach the destination, or the source must be restarted with it.
//!
//! # Examples
//!
//! ```
//! use switchover::state::DeviceState;
//! use switchover::ids::DeviceId;
//! use switchover::topology::Topology;
//! let t = Topology::preset("small").unwrap();
//! let s = DeviceState::new(&t);
//! assert_eq!(s.base(DeviceId(0), 1), None);
//! s.set_base(DeviceId(0), 1, 4242);
//! assert_eq!(s.base(DeviceId(0), 1), Some(4242));
//! assert_eq!(s.captured(), 1);
//! ```

use crate::ids::DeviceId;
use crate::sync::{AtomicU32, Ordering};
use crate::topology::Topology;

const NONE: u32 = u32::MAX;

/// Captured vring bases of every ring of a topology, writable from any thread,
/// and the block requests handed over instead of drained.
///
/// ```
/// use switchover::state::{DeviceState, InflightReq};
/// use switchover::ids::DeviceId;
/// use switchover::topology::Topology;
/// let t = Topology::preset("small").unwrap();
/// let s = DeviceState::new(&t);
/// s.set_base(DeviceId(2), 0, 17);
/// s.hand_over(&[InflightReq { device: 2, ring: 0, id: 9 }]);
/// assert_eq!((s.captured(), s.inflight().len()), (1, 1));
/// ```
#[derive(Debug)]
pub struct DeviceState {
    offsets: Vec<u32>,
    bases: Vec<AtomicU32>,
    inflight: std::sync::Mutex<Vec<InflightReq>>,
    blobs: std::sync::Mutex<Vec<Option<DeviceBlob>>>,
}

/// One device's VMM-owned state, opaque to the library, with the generation of
/// its configuration: the VMM bumps it whenever the guest changes the device's
/// features, rings, queue enables or resets, MSI-X entries, BARs or active queue
/// pairs. The destination compares the generation it staged in prepare with the
/// one that arrives in the window ([`crate::step::StepKind::Reconcile`]).
///
/// ```
/// use switchover::state::{DeviceBlob, DeviceState};
/// use switchover::ids::DeviceId;
/// use switchover::topology::Topology;
/// let s = DeviceState::new(&Topology::preset("small").unwrap());
/// s.set_blob(DeviceBlob { device: 1, generation: 3, bytes: vec![1, 2, 3] });
/// assert_eq!(s.blob(DeviceId(1)).unwrap().generation, 3);
/// assert_eq!(s.blobs().len(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceBlob {
    /// Device index.
    pub device: u32,
    /// Its configuration generation.
    pub generation: u64,
    /// Its state, as the VMM encodes it.
    pub bytes: Vec<u8>,
}

/// A block request still in flight when its ring stopped, handed over to the
/// destination to be resubmitted there.
///
/// ```
/// use switchover::state::{DeviceState, InflightReq};
/// use switchover::ids::DeviceId;
/// use switchover::topology::Topology;
/// let s = DeviceState::new(&Topology::preset("small").unwrap());
/// let req = InflightReq { device: 3, ring: 0, id: 42 };
/// s.hand_over(&[req]);
/// assert_eq!(s.take_inflight(DeviceId(3), 0), [req]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InflightReq {
    /// Device index.
    pub device: u32,
    /// Ring index.
    pub ring: u32,
    /// The request (its descriptor head, or a simulated id).
    pub id: u64,
}

/// One captured base, as carried to the destination.
///
/// ```
/// use switchover::state::{DeviceState, VringBase};
/// use switchover::ids::DeviceId;
/// use switchover::topology::Topology;
/// let t = Topology::preset("small").unwrap();
/// let src = DeviceState::new(&t);
/// src.set_base(DeviceId(0), 3, 99);
/// assert_eq!(src.export(), [VringBase { device: 0, ring: 3, base: 99 }]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringBase {
    /// Device index.
    pub device: u32,
    /// Ring index.
    pub ring: u32,
    /// The ring's `last_avail_idx`.
    pub base: u16,
}

impl DeviceState {
    /// No base captured yet for any ring of `t`.
    ///
    /// ```
    /// use switchover::state::DeviceState;
    /// use switchover::ids::DeviceId;
    /// use switchover::topology::Topology;
    /// let s = DeviceState::new(&Topology::preset("small").unwrap());
    /// assert_eq!(s.captured(), 0);
    /// assert!(s.export().is_empty() && s.inflight().is_empty());
    /// assert_eq!(s.base(DeviceId(0), 0), None);
    /// ```
    pub fn new(t: &Topology) -> DeviceState {
        let mut offsets = Vec::with_capacity(t.devices().len() + 1);
        let mut n = 0u32;
        for d in t.devices() {
            offsets.push(n);
            n += d.rings();
        }
        offsets.push(n);
        DeviceState {
            offsets,
            bases: (0..n).map(|_| AtomicU32::new(NONE)).collect(),
            inflight: std::sync::Mutex::new(Vec::new()),
            blobs: std::sync::Mutex::new(vec![None; t.devices().len()]),
        }
    }

    fn slot(&self, d: DeviceId, ring: u32) -> Option<&AtomicU32> {
        let i = d.0 as usize;
        let (a, b) = (*self.offsets.get(i)?, *self.offsets.get(i + 1)?);
        if ring >= b - a {
            return None;
        }
        self.bases.get((a + ring) as usize)
    }

    /// Records the base read from ring `ring` of device `d`.
    ///
    /// ```
    /// use switchover::state::DeviceState;
    /// use switchover::ids::DeviceId;
    /// use switchover::topology::Topology;
    /// let s = DeviceState::new(&Topology::preset("small").unwrap());
    /// s.set_base(DeviceId(1), 2, 7);
    /// s.set_base(DeviceId(1), 2, 8); // a later read replaces the earlier one
    /// assert_eq!(s.base(DeviceId(1), 2), Some(8));
    /// s.set_base(DeviceId(3), 1, 5); // blk1 has one ring: ignored
    /// assert_eq!(s.captured(), 1);
    /// ```
    pub fn set_base(&self, d: DeviceId, ring: u32, base: u16) {
        if let Some(s) = self.slot(d, ring) {
            s.store(u32::from(base), Ordering::Release);
        }
    }

    /// The base captured for a ring, if any.
    ///
    /// ```
    /// use switchover::state::DeviceState;
    /// use switchover::ids::DeviceId;
    /// use switchover::topology::Topology;
    /// let s = DeviceState::new(&Topology::preset("small").unwrap());
    /// s.set_base(DeviceId(2), 0, 0);
    /// assert_eq!(s.base(DeviceId(2), 0), Some(0)); // zero is a base like any other
    /// assert_eq!(s.base(DeviceId(9), 0), None); // no such device
    /// ```
    pub fn base(&self, d: DeviceId, ring: u32) -> Option<u16> {
        let v = self.slot(d, ring)?.load(Ordering::Acquire);
        (v != NONE).then_some(v as u16)
    }

    /// How many rings have a captured base.
    ///
    /// ```
    /// use switchover::state::DeviceState;
    /// use switchover::ids::DeviceId;
    /// use switchover::topology::Topology;
    /// let t = Topology::preset("small").unwrap();
    /// let s = DeviceState::new(&t);
    /// for d in t.devices() {
    ///     for r in 0..d.rings() {
    ///         s.set_base(d.id, r, 1);
    ///     }
    /// }
    /// assert_eq!(s.captured(), t.total_rings() as usize);
    /// ```
    pub fn captured(&self) -> usize {
        self.bases.iter().filter(|b| b.load(Ordering::Acquire) != NONE).count()
    }

    /// All captured bases, for carrying to the destination.
    ///
    /// ```
    /// use switchover::state::DeviceState;
    /// use switchover::ids::DeviceId;
    /// use switchover::topology::Topology;
    /// let s = DeviceState::new(&Topology::preset("small").unwrap());
    /// s.set_base(DeviceId(1), 0, 5);
    /// s.set_base(DeviceId(0), 2, 6);
    /// let rings: Vec<_> = s.export().iter().map(|b| (b.device, b.ring, b.base)).collect();
    /// assert_eq!(rings, [(0, 2, 6), (1, 0, 5)]); // in device, then ring order
    /// ```
    pub fn export(&self) -> Vec<VringBase> {
        let mut v = Vec::new();
        for d in 0..self.offsets.len().saturating_sub(1) {
            let (a, b) = (self.offsets[d], self.offsets[d + 1]);
            for r in 0..(b - a) {
                if let Some(base) = self.base(DeviceId(d as u32), r) {
                    v.push(VringBase { device: d as u32, ring: r, base });
                }
            }
        }
        v
    }

    /// Records requests handed over.
    ///
    /// ```
    /// use switchover::state::{DeviceState, InflightReq};
    /// use switchover::topology::Topology;
    /// let s = DeviceState::new(&Topology::preset("small").unwrap());
    /// s.hand_over(&[InflightReq { device: 2, ring: 0, id: 1 }]);
    /// s.hand_over(&[InflightReq { device: 3, ring: 0, id: 2 }]);
    /// assert_eq!(s.inflight().len(), 2);
    /// ```
    pub fn hand_over(&self, reqs: &[InflightReq]) {
        self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(reqs);
    }

    /// Requests handed over (all rings).
    ///
    /// ```
    /// use switchover::state::{DeviceState, InflightReq};
    /// use switchover::topology::Topology;
    /// let s = DeviceState::new(&Topology::preset("small").unwrap());
    /// let r = InflightReq { device: 2, ring: 0, id: 1 };
    /// s.hand_over(&[r]);
    /// assert_eq!(s.inflight(), [r]);
    /// assert_eq!(s.inflight(), [r]); // reading does not take them
    /// ```
    pub fn inflight(&self) -> Vec<InflightReq> {
        self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Takes the requests handed over for one ring (to resubmit them).
    ///
    /// ```
    /// use switchover::state::{DeviceState, InflightReq};
    /// use switchover::ids::DeviceId;
    /// use switchover::topology::Topology;
    /// let s = DeviceState::new(&Topology::preset("small").unwrap());
    /// let (a, b) = (InflightReq { device: 2, ring: 0, id: 1 }, InflightReq { device: 3, ring: 0, id: 2 });
    /// s.hand_over(&[a, b]);
    /// assert_eq!(s.take_inflight(DeviceId(2), 0), [a]);
    /// assert_eq!(s.inflight(), [b]);
    /// assert!(s.take_inflight(DeviceId(2), 0).is_empty());
    /// ```
    pub fn take_inflight(&self, d: DeviceId, ring: u32) -> Vec<InflightReq> {
        let mut v = self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mine, rest): (Vec<InflightReq>, Vec<InflightReq>) = v.drain(..).partition(|r| r.device == d.0 && r.ring == ring);
        *v = rest;
        mine
    }

    /// Loads bases carried from the source.
    ///
    /// ```
    /// use switchover::state::DeviceState;
    /// use switchover::ids::DeviceId;
    /// use switchover::topology::Topology;
    /// let t = Topology::preset("small").unwrap();
    /// let (src, dst) = (DeviceState::new(&t), DeviceState::new(&t));
    /// src.set_base(DeviceId(1), 3, 1234);
    /// dst.import(&src.export());
    /// assert_eq!(dst.base(DeviceId(1), 3), Some(1234));
    /// ```
    pub fn import(&self, bases: &[VringBase]) {
        for b in bases {
            self.set_base(DeviceId(b.device), b.ring, b.base);
        }
    }

    /// Records a device's VMM-owned state (a device outside the topology is ignored).
    ///
    /// ```
    /// use switchover::state::{DeviceBlob, DeviceState};
    /// use switchover::ids::DeviceId;
    /// use switchover::topology::Topology;
    /// let s = DeviceState::new(&Topology::preset("single-net").unwrap());
    /// s.set_blob(DeviceBlob { device: 0, generation: 1, bytes: vec![] });
    /// s.set_blob(DeviceBlob { device: 0, generation: 2, bytes: vec![9] }); // replaces
    /// s.set_blob(DeviceBlob { device: 7, generation: 1, bytes: vec![] }); // no such device
    /// assert_eq!(s.blob(DeviceId(0)).unwrap().bytes, [9]);
    /// assert_eq!(s.blobs().len(), 1);
    /// ```
    pub fn set_blob(&self, blob: DeviceBlob) {
        let mut v = self.blobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slot) = v.get_mut(blob.device as usize) {
            *slot = Some(blob);
        }
    }

    /// A device's VMM-owned state, if recorded.
    ///
    /// ```
    /// use switchover::state::DeviceState;
    /// use switchover::ids::DeviceId;
    /// use switchover::topology::Topology;
    /// assert!(DeviceState::new(&Topology::preset("small").unwrap()).blob(DeviceId(0)).is_none());
    /// ```
    pub fn blob(&self, d: DeviceId) -> Option<DeviceBlob> {
        self.blobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(d.0 as usize).cloned().flatten()
    }

    /// Every device's recorded VMM-owned state, by device.
    ///
    /// ```
    /// use switchover::state::{DeviceBlob, DeviceState};
    /// use switchover::topology::Topology;
    /// let s = DeviceState::new(&Topology::preset("small").unwrap());
    /// s.set_blob(DeviceBlob { device: 3, generation: 1, bytes: vec![] });
    /// s.set_blob(DeviceBlob { device: 0, generation: 1, bytes: vec![] });
    /// assert_eq!(s.blobs().iter().map(|b| b.device).collect::<Vec<_>>(), [0, 3]);
    /// ```
    pub fn blobs(&self) -> Vec<DeviceBlob> {
        self.blobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().flatten().cloned().collect()
    }
}
