//! What the rig checks of a switchover's safety on the real backends, from the
//! backends' side, before either side is discarded:
//!
//! * [`StorageCheck`] — one writer per image: the side that runs the guest holds
//!   each image it hands over as steps, and the other side neither holds it nor
//!   can take it (its backend asked to activate is refused: the image's lock is
//!   held). Where the backend cannot give its image up (qemu-storage-daemon), the
//!   check says so and why;
//! * [`FenceCheck`] — a destination that says it will not run the guest
//!   (`start_failed`, `will_not_run`) has no ring live by then, as each own
//!   backend recorded it ([`crate::ringlog`]), and starts none afterwards;
//! * [`BlkStats`] — what each own blk backend counted (requests taken,
//!   resubmitted, completed, cancelled or discarded by a stop, host I/O after a
//!   stop).
//!
//! # Examples
//!
//! ```
//! use switchover_testbed::safety::{FenceCheck, StorageCheck};
//! assert!(StorageCheck::default().ok() && FenceCheck::default().ok());
//! let f = FenceCheck { findings: vec!["dst blk0 ring 1 live when start_failed was sent".into()], ..FenceCheck::default() };
//! assert!(!f.ok());
//! ```

use std::time::Duration;

use switchover::ids::Side;
use switchover::recipe::RecipeOptions;
use switchover::roles::MessageKind;
use switchover::topology::{DeviceKind, Topology};

use crate::blk::Stats;
use crate::ringlog::{instant_ns, live_at, read};
use crate::roles::Sent;
use crate::side::{BackendKind, RealSide};

/// Why qemu-storage-daemon's image is not handed over as steps (what was found
/// on qemu-storage-daemon 10.0.2; `crates/testbed/tests/qsd_storage.rs` checks it
/// on the installed daemon).
pub const QSD_STORAGE: &str = "not handed over: qemu-storage-daemon's vhost-user-blk export cannot be inactive (allow-inactive: \
\"Export type does not support inactive exports\"; blockdev-set-active false: \"Operation not permitted\" while the export uses the node) \
and its image locks share write (both daemons hold the image writable with locking=on); one writer at a time rests on the source's \
rings being drained and stopped before the destination's start, and on the destination being shut down after a failure";

/// [`QSD_STORAGE`] in a few words.
pub const QSD_STORAGE_SHORT: &str = "qemu-storage-daemon: its vhost-user-blk export cannot be inactive and its image locks share write";

/// One blk device's image after a switchover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRecord {
    /// The device.
    pub device: String,
    /// Handed over as steps (its backend can give the image up).
    pub handed_over: bool,
    /// What was found, or why it is not handed over.
    pub note: String,
    /// Whether the source's backend holds the image (`None`: no answer, or no
    /// storage switch).
    pub src_active: Option<bool>,
    /// Whether the destination's does.
    pub dst_active: Option<bool>,
    /// The side that does not run the guest, asked to take the image: refused
    /// (or its backend is gone: it cannot write).
    pub other_refused: Option<bool>,
}

/// One writer per image (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageCheck {
    /// Each blk device.
    pub devices: Vec<StorageRecord>,
    /// What does not hold.
    pub findings: Vec<String>,
}

impl StorageCheck {
    /// Whether it held.
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Checks who holds each image: the side `runs_on` must, the other must neither
/// hold it nor be able to take it (a take that succeeds is given back at once).
pub fn storage_check(
    topo: &Topology,
    src: &RealSide,
    dst: &RealSide,
    runs_on: Option<Side>,
    opts: &RecipeOptions,
    timeout: Duration,
) -> StorageCheck {
    let mut c = StorageCheck::default();
    for d in topo.devices().iter().filter(|d| d.kind == DeviceKind::Blk) {
        if !opts.storage_of(d.id) {
            let note = match src.backend_kind(d.id) {
                Some(BackendKind::Qsd) => QSD_STORAGE.to_string(),
                _ => "not handed over: the backend has no storage switch".to_string(),
            };
            c.devices.push(StorageRecord {
                device: d.name.clone(),
                handed_over: false,
                note,
                src_active: None,
                dst_active: None,
                other_refused: None,
            });
            continue;
        }
        let state = |s: &RealSide| s.control(d.id, timeout).and_then(|c| c.is_active().ok());
        let (src_active, dst_active) = (state(src), state(dst));
        let mut rec =
            StorageRecord { device: d.name.clone(), handed_over: true, note: String::new(), src_active, dst_active, other_refused: None };
        let Some(on) = runs_on else {
            rec.note = "the guest runs nowhere: not checked".into();
            c.devices.push(rec);
            continue;
        };
        let (here, other, here_active, other_active) = match on {
            Side::Source => (src, dst, src_active, dst_active),
            Side::Destination => (dst, src, dst_active, src_active),
        };
        let (h, o) = (here.side().short(), other.side().short());
        if here_active != Some(true) {
            c.findings.push(format!("{}: the guest runs on the {h} but its backend does not hold the image ({here_active:?})", d.name));
        }
        if other_active == Some(true) {
            c.findings.push(format!("{}: the {o} backend holds the image as well", d.name));
        }
        // The side that does not run the guest tries to take the image.
        rec.other_refused = Some(match other.control(d.id, timeout) {
            None => true,
            Some(ctl) => match ctl.activate() {
                Err(e) => {
                    rec.note = format!("{o} refused: {e}");
                    true
                }
                Ok(()) => {
                    c.findings.push(format!("{}: the {o} backend took the image while the guest runs on the {h}", d.name));
                    let _ = ctl.inactivate();
                    false
                }
            },
        });
        c.devices.push(rec);
    }
    c
}

/// What one own blk backend counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkStats {
    /// Its side.
    pub side: Side,
    /// The device.
    pub device: String,
    /// The counters.
    pub stats: Stats,
}

/// The counters of every own blk backend still answering, both sides.
pub fn blk_stats(topo: &Topology, src: &RealSide, dst: &RealSide, timeout: Duration) -> Vec<BlkStats> {
    let mut v = Vec::new();
    for side in [src, dst] {
        for d in topo.devices().iter().filter(|d| d.kind == DeviceKind::Blk) {
            if let Some(stats) = side.control(d.id, timeout).and_then(|c| c.stats().ok()) {
                v.push(BlkStats { side: side.side(), device: d.name.clone(), stats });
            }
        }
    }
    v
}

/// The destination's promise when it says it will not run the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FenceCheck {
    /// When the destination said so (`start_failed` or `will_not_run`), if it did.
    pub said: Option<MessageKind>,
    /// How long before saying it the last of its rings stopped (or its backend
    /// was cut off), in microseconds.
    pub margin_us: Option<u64>,
    /// Rings that had started and were stopped (or cut off) before it said so.
    pub rings_stopped: usize,
    /// Devices whose backends record their rings.
    pub observed: Vec<String>,
    /// Devices whose backends do not (qemu-storage-daemon).
    pub unobserved: Vec<String>,
    /// What does not hold.
    pub findings: Vec<String>,
}

impl FenceCheck {
    /// Whether it held.
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Checks, from each destination backend's own record, that no ring was live
/// when the destination said it will not run the guest, and that none started
/// afterwards.
pub fn fence_check(topo: &Topology, dst: &RealSide, sent: &[Sent], backends: &[BackendKind]) -> FenceCheck {
    let mut c = FenceCheck::default();
    let Some(said) =
        sent.iter().find(|s| s.side == Side::Destination && matches!(s.kind, MessageKind::StartFailed | MessageKind::WillNotRun))
    else {
        return c;
    };
    c.said = Some(said.kind);
    let t = instant_ns(said.at);
    let mut last_stop = 0u64;
    for d in topo.devices() {
        if backends.get(d.id.0 as usize) == Some(&BackendKind::Qsd) {
            c.unobserved.push(d.name.clone());
            continue;
        }
        c.observed.push(d.name.clone());
        for rec in dst.backend_records().iter().filter(|r| r.device == d.id) {
            let events = read(&rec.ring_log);
            let killed = rec.killed.map(instant_ns).filter(|k| *k <= t);
            let live = live_at(&events, t);
            match killed {
                Some(k) => last_stop = last_stop.max(k),
                None => {
                    for r in &live {
                        c.findings.push(format!("dst {} ring {r} live when {} was sent", d.name, said.kind));
                    }
                }
            }
            for e in events.iter().filter(|e| e.at_ns <= t) {
                if !e.start {
                    last_stop = last_stop.max(e.at_ns);
                }
            }
            let started: std::collections::BTreeSet<u32> = events.iter().filter(|e| e.start && e.at_ns <= t).map(|e| e.ring).collect();
            c.rings_stopped += started.iter().filter(|r| killed.is_some() || !live.contains(r)).count();
            for e in events.iter().filter(|e| e.start && e.at_ns > t) {
                c.findings.push(format!("dst {} ring {} started after {} was sent", d.name, e.ring, said.kind));
            }
        }
    }
    if last_stop > 0 {
        c.margin_us = Some(t.saturating_sub(last_stop) / 1000);
    }
    c
}
