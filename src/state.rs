//! Device state captured on the source while the guest is frozen: the vring bases
//! (each ring's `last_avail_idx`). This is the data that must never be lost: every
//! base read on the source must reach the destination, or the source must be
//! restarted with it.
//!
//! # Examples
//!
//! ```
//! use switchover::state::DeviceState;
//! use switchover::topology::{DeviceId, Topology};
//! let t = Topology::preset("small").unwrap();
//! let s = DeviceState::new(&t);
//! assert_eq!(s.base(DeviceId(0), 1), None);
//! s.set_base(DeviceId(0), 1, 4242);
//! assert_eq!(s.base(DeviceId(0), 1), Some(4242));
//! assert_eq!(s.captured(), 1);
//! ```

use crate::sync::{AtomicU32, Ordering};
use crate::topology::{DeviceId, Topology};

const NONE: u32 = u32::MAX;

/// Captured vring bases of every ring of a topology, writable from any thread,
/// and the block requests handed over instead of drained.
#[derive(Debug)]
pub struct DeviceState {
    offsets: Vec<u32>,
    bases: Vec<AtomicU32>,
    inflight: std::sync::Mutex<Vec<InflightReq>>,
}

/// A block request still in flight when its ring stopped, handed over to the
/// destination to be resubmitted there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InflightReq {
    /// Device index.
    pub device: u32,
    /// Ring index.
    pub ring: u32,
    /// The request (its descriptor head, or a simulated id).
    pub id: u64,
}

/// One captured base, as carried to the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    pub fn new(t: &Topology) -> DeviceState {
        let mut offsets = Vec::with_capacity(t.devices().len() + 1);
        let mut n = 0u32;
        for d in t.devices() {
            offsets.push(n);
            n += d.rings();
        }
        offsets.push(n);
        DeviceState { offsets, bases: (0..n).map(|_| AtomicU32::new(NONE)).collect(), inflight: std::sync::Mutex::new(Vec::new()) }
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
    pub fn set_base(&self, d: DeviceId, ring: u32, base: u16) {
        if let Some(s) = self.slot(d, ring) {
            s.store(u32::from(base), Ordering::Release);
        }
    }

    /// The base captured for a ring, if any.
    pub fn base(&self, d: DeviceId, ring: u32) -> Option<u16> {
        let v = self.slot(d, ring)?.load(Ordering::Acquire);
        (v != NONE).then_some(v as u16)
    }

    /// How many rings have a captured base.
    pub fn captured(&self) -> usize {
        self.bases.iter().filter(|b| b.load(Ordering::Acquire) != NONE).count()
    }

    /// All captured bases, for carrying to the destination.
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
    pub fn hand_over(&self, reqs: &[InflightReq]) {
        self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(reqs);
    }

    /// Requests handed over (all rings).
    pub fn inflight(&self) -> Vec<InflightReq> {
        self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Takes the requests handed over for one ring (to resubmit them).
    pub fn take_inflight(&self, d: DeviceId, ring: u32) -> Vec<InflightReq> {
        let mut v = self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mine, rest): (Vec<InflightReq>, Vec<InflightReq>) = v.drain(..).partition(|r| r.device == d.0 && r.ring == ring);
        *v = rest;
        mine
    }

    /// Loads bases carried from the source.
    pub fn import(&self, bases: &[VringBase]) {
        for b in bases {
            self.set_base(DeviceId(b.device), b.ring, b.base);
        }
    }
}
