//! The rig's guest: its driver's view of every ring, where it runs, and what it
//! does while the migration runs ([`Workload`], the rig's [`GuestControl`]).
//!
//! During precopy a guest thread keeps submitting requests on the source (net
//! packets, block writes and reads) while the migration's RAM passes copy the
//! source's memory to the destination's. With `changes`, the guest also
//! reconfigures four devices during precopy, and the source's VMM follows
//! ([`Change`]): one net device reloads its driver (its rings move), another
//! halves its active queue pairs, one blk device's MSI-X entry is rewritten and
//! another blk device resets its first ring. After the last pass the guest goes
//! on: one more request on every active ring (block writes left in flight), so
//! that the backends' last writes reach the destination through the window's log
//! sync only.
//!
//! # Examples
//!
//! ```
//! use switchover_testbed::guest::Change;
//! assert_eq!(Change::ALL.len(), 4);
//! assert_eq!(Change::MoveRings.name(), "ring addresses");
//! ```

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use switchover::ids::{DeviceId, Side};
use switchover::topology::{DeviceKind, Topology};
use switchover_vhost::config::MsiVector;

use crate::driver::{self, BlkOp, DriverRing, RingKind};
use crate::error::RigError;
use crate::mem::GuestMem;
use crate::side::RealSide;
use crate::vmm::{GuestControl, RigMigration};
use switchover_vhost::actions::VhostDevices;
use switchover_vhost::sink::NotifierSink;

/// A reconfiguration the guest makes during precopy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Its driver reloads: every ring of the device moves to new addresses.
    MoveRings,
    /// Its active queue pairs are halved (`ethtool -L`): the rings of the
    /// others are disabled, with receive buffers left in them.
    QueuePairs,
    /// One MSI-X entry gets a new message (another CPU).
    MsixEntry,
    /// One ring is reset (`VIRTIO_F_RING_RESET`) and set up again elsewhere.
    RingReset,
    /// The device's BAR moves: one ring's doorbell (its ioeventfd) is elsewhere.
    DoorbellMove,
    /// One ring's vector is set to `NO_VECTOR` (no call eventfd).
    NoVector,
    /// One ring is reset and not set up again: the guest stops using it.
    TearDown,
}

impl Change {
    /// The four of `--precopy-changes`, in the order the guest makes them.
    pub const ALL: [Change; 4] = [Change::MoveRings, Change::QueuePairs, Change::MsixEntry, Change::RingReset];
    /// Three more, on the same devices (tests): a moved doorbell (blk0 ring 1), a
    /// vector set to none (net0 ring 0), a ring torn down (blk1 ring 1).
    pub const EXTRA: [Change; 3] = [Change::DoorbellMove, Change::NoVector, Change::TearDown];

    /// What it changes.
    pub fn name(self) -> &'static str {
        match self {
            Change::MoveRings => "ring addresses",
            Change::QueuePairs => "active queue pairs",
            Change::MsixEntry => "MSI-X entry",
            Change::RingReset => "ring reset",
            Change::DoorbellMove => "doorbell moved",
            Change::NoVector => "vector set to none",
            Change::TearDown => "ring torn down",
        }
    }

    /// The device it changes in `topo`: net1, net0, blk0 and blk1.
    ///
    /// ```
    /// use switchover::topology::Topology;
    /// use switchover_testbed::guest::Change;
    /// let t = Topology::builder().name("t").net(2, 2).blk(2, 1).build().unwrap();
    /// let names: Vec<_> = Change::ALL.iter().map(|c| c.device(&t).map(|d| t.device(d).name.clone())).collect();
    /// assert_eq!(names, [Some("net1".into()), Some("net0".into()), Some("blk0".into()), Some("blk1".into())]);
    /// ```
    pub fn device(self, topo: &Topology) -> Option<DeviceId> {
        let name = match self {
            Change::MoveRings => "net1",
            Change::QueuePairs => "net0",
            Change::MsixEntry | Change::DoorbellMove => "blk0",
            Change::RingReset | Change::TearDown => "blk1",
            Change::NoVector => "net0",
        };
        topo.device_by_name(name).map(|d| d.id)
    }

    /// Whether `topo` has what the four changes need: two nets of at least two
    /// queue pairs, two blks.
    pub fn possible(topo: &Topology) -> Result<(), String> {
        let net = |n: &str| topo.device_by_name(n).filter(|d| d.kind == DeviceKind::Net && d.rings() >= 4);
        let blk = |n: &str| topo.device_by_name(n).filter(|d| d.kind == DeviceKind::Blk);
        if net("net0").is_none() || net("net1").is_none() || blk("blk0").is_none() || blk("blk1").is_none() {
            return Err("precopy changes need at least 2 nets of 2 queue pairs and 2 blks".into());
        }
        Ok(())
    }
}

/// Spare areas of guest memory the changes need for `topo` (moved and reset rings).
pub fn spare_areas(topo: &Topology) -> u32 {
    topo.device_by_name("net1").map_or(0, |d| d.rings()) + 1
}

/// How the guest behaves during the migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadConfig {
    /// Block writes per blk ring submitted after the last precopy pass and left
    /// in flight when the window opens.
    pub inflight: u16,
    /// Make the four [`Change`]s during precopy.
    pub changes: bool,
    /// Make the three [`Change::EXTRA`] too (with `changes`; blks of 2 queues).
    pub extra: bool,
    /// Packets per active tx ring published after the last kick, just before the
    /// stop (a guest batching notifications): they are in the ring, unprocessed,
    /// when the source stops.
    pub unkicked_tx: u16,
    /// Precopy passes after the first (full) one.
    pub passes: u32,
    /// Requests per ring the guest thread submits at most during precopy.
    pub budget: u32,
    /// Global rings whose last writes may stay in flight at the stop (their
    /// backend keeps processing a disabled ring, as qemu-storage-daemon does, so
    /// the drain sees them complete). The others' are waited for: a backend that
    /// stops taking requests from a disabled ring would never see them.
    pub in_flight_ok: Vec<bool>,
}

/// The guest's rings and where it runs.
#[derive(Debug)]
pub struct GuestState {
    /// Every ring, by global index.
    pub rings: Vec<DriverRing>,
    /// Ring names (`net0 ring 3`), by global index.
    pub names: Vec<String>,
    /// Where it runs (`None` while stopped).
    pub on: Option<Side>,
    /// Each ring's kicked count when the guest stopped (the expected base).
    pub at_stop: Option<Vec<u16>>,
    /// Blk requests outstanding when the guest stopped (global ring, head).
    pub in_flight_at_stop: Vec<(u32, u16)>,
    /// Changes made, with their device.
    pub changes: Vec<(Change, DeviceId)>,
}

/// The rig's guest workload over a migration; its [`GuestControl`].
pub struct Workload {
    topo: Arc<Topology>,
    src: Arc<RealSide>,
    migration: Arc<RigMigration>,
    cfg: WorkloadConfig,
    state: Mutex<GuestState>,
    next_spare: AtomicU32,
    deadline: Duration,
    precopy_time: Mutex<Duration>,
    at_stop: Mutex<Option<(DeviceId, i32)>>,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload").field("cfg", &self.cfg).finish()
    }
}

/// The rings of `topo` as the guest driver sees them at boot.
pub fn rings_of(topo: &Topology) -> (Vec<DriverRing>, Vec<String>) {
    let mut v = Vec::new();
    let mut names = Vec::new();
    let mut g = 0;
    for d in topo.devices() {
        for r in 0..d.rings() {
            let kind = match d.kind {
                DeviceKind::Blk => RingKind::Blk,
                _ if r % 2 == 0 => RingKind::NetRx,
                _ => RingKind::NetTx,
            };
            v.push(DriverRing::new(g, d.id, r, kind));
            names.push(format!("{} ring {r}", d.name));
            g += 1;
        }
    }
    (v, names)
}

impl Workload {
    /// The guest of `topo`, running on `src`, migrated by `migration`.
    pub fn new(topo: Arc<Topology>, src: Arc<RealSide>, migration: Arc<RigMigration>, cfg: WorkloadConfig, deadline: Duration) -> Workload {
        let (rings, names) = rings_of(&topo);
        let first_spare = topo.total_rings();
        Workload {
            topo,
            src,
            migration,
            cfg,
            state: Mutex::new(GuestState {
                rings,
                names,
                on: Some(Side::Source),
                at_stop: None,
                in_flight_at_stop: Vec::new(),
                changes: Vec::new(),
            }),
            next_spare: AtomicU32::new(first_spare),
            deadline,
            precopy_time: Mutex::new(Duration::ZERO),
            at_stop: Mutex::new(None),
        }
    }

    /// Sends `signal` to a device's source backend when the guest stops (the
    /// window opens): a backend that dies or hangs right then.
    pub fn signal_at_stop(&self, device: DeviceId, signal: i32) {
        *self.at_stop.lock() = Some((device, signal));
    }

    /// The guest's state (rings, where it runs).
    pub fn state(&self) -> parking_lot::MutexGuard<'_, GuestState> {
        self.state.lock()
    }

    /// How long the precopy hook took.
    pub fn precopy_time(&self) -> Duration {
        *self.precopy_time.lock()
    }

    fn kick(side: &RealSide, r: &mut DriverRing) -> Result<(), RigError> {
        let fd = side.notifiers().kick(r.device, r.ring).ok_or_else(|| RigError::Config(format!("no kick eventfd for ring {}", r.g)))?;
        r.kicked = r.avail;
        driver::kick(fd)
    }

    /// One request on `r`: net as its kind; blk a write, or every other time a
    /// read of a write already acknowledged.
    fn one(mem: &GuestMem, r: &mut DriverRing) -> Result<(), RigError> {
        let op = match r.acked_writes.last() {
            Some(&w) if r.kind == RingKind::Blk && r.seq % 2 == 1 => BlkOp::Read(w),
            _ => BlkOp::Write,
        };
        driver::submit(mem, r, op).map(|_| ())
    }

    /// The guest thread during precopy: requests round-robin on the active
    /// rings, each within the budget; the changes when asked.
    fn traffic(&self, st: &mut GuestState, stop: &AtomicBool, change: &AtomicBool, changed: &AtomicBool) -> Result<(), RigError> {
        let mem = self.src.mem().clone();
        let mut sent = vec![0u32; st.rings.len()];
        let mut i = 0usize;
        let n = st.rings.len();
        while !stop.load(Ordering::Acquire) {
            if change.load(Ordering::Acquire) && !changed.load(Ordering::Acquire) {
                self.apply_changes(st)?;
                changed.store(true, Ordering::Release);
            }
            let mut any = false;
            for _ in 0..8.min(n) {
                let r = &mut st.rings[i % n];
                i += 1;
                driver::reap(&mem, r).map_err(RigError::Guest)?;
                if !r.active || sent[r.g as usize] >= self.cfg.budget || r.in_flight() >= 4 {
                    continue;
                }
                Self::one(&mem, r)?;
                sent[r.g as usize] += 1;
                Self::kick(&self.src, r)?;
                any = true;
            }
            std::thread::sleep(Duration::from_micros(if any { 30 } else { 200 }));
        }
        Ok(())
    }

    fn spare(&self) -> u32 {
        self.next_spare.fetch_add(1, Ordering::AcqRel)
    }

    /// Waits until every request on global ring `g` completed (reaping).
    fn quiesce(&self, st: &mut GuestState, g: usize) -> Result<(), RigError> {
        let mem = self.src.mem().clone();
        let t = Instant::now();
        loop {
            driver::reap(&mem, &mut st.rings[g]).map_err(RigError::Guest)?;
            if st.rings[g].in_flight() == 0 || (!st.rings[g].active && st.rings[g].reaped == st.rings[g].kicked) {
                return Ok(());
            }
            if t.elapsed() > self.deadline {
                return Err(RigError::Guest(format!("{}: requests still in flight before its reset", st.names[g])));
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// The four changes, each with what the source's VMM does about it.
    fn apply_changes(&self, st: &mut GuestState) -> Result<(), RigError> {
        let d = self.deadline;
        let devs = self.src.devices().clone();
        let first = |dev: DeviceId| self.src.global(dev, 0) as usize;
        let extra: &[Change] = if self.cfg.extra { &Change::EXTRA } else { &[] };
        for &c in Change::ALL.iter().chain(extra) {
            let Some(dev) = c.device(&self.topo) else { continue };
            let rings = self.topo.device(dev).rings();
            let name = self.topo.device(dev).name.clone();
            match c {
                Change::MoveRings => {
                    let mut areas = Vec::new();
                    for r in 0..rings {
                        let g = first(dev) + r as usize;
                        self.quiesce(st, g)?;
                        self.src.stop_ring(dev, r, d).map_err(RigError::step(format!("{name} ring {r} stop for the driver reload")))?;
                        let a = self.spare();
                        st.rings[g].restart(a);
                        areas.push(a);
                    }
                    devs.update(dev, |cfg| {
                        for (r, a) in areas.iter().enumerate() {
                            cfg.rings[r].vring = Some(GuestMem::vring(*a));
                        }
                    });
                    for r in 0..rings {
                        self.src
                            .start_ring(dev, r, true, d)
                            .map_err(RigError::step(format!("{name} ring {r} start after the driver reload")))?;
                    }
                }
                Change::QueuePairs => {
                    let pairs = rings / 2;
                    let keep = (pairs / 2).max(1);
                    let mem = self.src.mem().clone();
                    for q in keep * 2..rings {
                        let g = first(dev) + q as usize;
                        self.quiesce(st, g)?;
                        let r = &mut st.rings[g];
                        if r.kind == RingKind::NetRx {
                            // Receive buffers stay posted on the queue the guest stops using.
                            for _ in 0..2 {
                                driver::submit(&mem, r, BlkOp::Write)?;
                            }
                        }
                        r.active = false;
                        self.src.enable_ring(dev, q, false, d).map_err(RigError::step(format!("{name} ring {q} disable")))?;
                    }
                    devs.update(dev, |cfg| {
                        for q in keep * 2..rings {
                            cfg.rings[q as usize].enabled = false;
                        }
                    });
                }
                Change::MsixEntry => {
                    devs.update(dev, |cfg| {
                        if let Some(m) = cfg.msix.first_mut() {
                            *m = MsiVector { address: 0xfee0_0000 | (5 << 12), data: 0x4000 | 0x61, masked: false };
                        }
                    });
                    self.src.commit_routes().map_err(RigError::step(format!("{name} MSI-X entry 0 route")))?;
                }
                Change::RingReset => {
                    let g = first(dev);
                    self.quiesce(st, g)?;
                    self.src.stop_ring(dev, 0, d).map_err(RigError::step(format!("{name} ring 0 reset")))?;
                    let a = self.spare();
                    st.rings[g].restart(a);
                    devs.update(dev, |cfg| cfg.rings[0].vring = Some(GuestMem::vring(a)));
                    self.src.start_ring(dev, 0, true, d).map_err(RigError::step(format!("{name} ring 0 start after its reset")))?;
                }
                Change::DoorbellMove => {
                    let r = 1.min(rings - 1);
                    let g = first(dev) as u64 + u64::from(r);
                    let new = crate::side::DOORBELL_BASE + 0x10_0000 + 4 * g;
                    self.src.notifiers().move_host_notifier(dev, r, new).map_err(RigError::step(format!("{name} ring {r} doorbell")))?;
                    devs.update(dev, |cfg| cfg.rings[r as usize].doorbell = new);
                }
                Change::NoVector => {
                    let fe = self.src.frontend(dev).ok_or_else(|| RigError::Config(format!("{name}: no frontend")))?;
                    fe.set_vring_call_none(0, d).wait().map_err(RigError::step(format!("{name} ring 0 call none")))?;
                    devs.update(dev, |cfg| cfg.rings[0].vector = None);
                }
                Change::TearDown => {
                    let r = 1.min(rings - 1);
                    let g = first(dev) + r as usize;
                    self.quiesce(st, g)?;
                    self.src.stop_ring(dev, r, d).map_err(RigError::step(format!("{name} ring {r} reset")))?;
                    let a = st.rings[g].area;
                    let used = self.src.mem().used_idx(a);
                    st.rings[g].restart(a);
                    st.rings[g].active = false;
                    st.rings[g].frozen_used = Some(used);
                    devs.update(dev, |cfg| cfg.rings[r as usize].vring = None);
                }
            }
            st.changes.push((c, dev));
        }
        Ok(())
    }

    /// After the last precopy pass: one more request on every active ring and
    /// kick (net waited for, blk writes left in flight), then the unkicked tx
    /// packets.
    fn last_burst(&self, st: &mut GuestState) -> Result<(), RigError> {
        let mem = self.src.mem().clone();
        for r in st.rings.iter_mut().filter(|r| r.active) {
            let n = if r.kind == RingKind::Blk { self.cfg.inflight.max(1) } else { 1 };
            for _ in 0..n {
                if r.kind == RingKind::Blk {
                    driver::submit(&mem, r, BlkOp::Write)?;
                } else {
                    Self::one(&mem, r)?;
                }
            }
            Self::kick(&self.src, r)?;
        }
        let names = st.names.clone();
        let name = |r: &DriverRing| names[r.g as usize].clone();
        let ok = |g: u32| self.cfg.in_flight_ok.get(g as usize).copied().unwrap_or(false);
        let mut nets: Vec<DriverRing> = st.rings.iter().filter(|r| r.kind != RingKind::Blk || !ok(r.g)).cloned().collect();
        driver::wait_all(&mem, &mut nets, &name, self.deadline)?;
        for r in nets {
            let g = r.g as usize;
            st.rings[g] = r;
        }
        for r in st.rings.iter_mut().filter(|r| r.active && r.kind == RingKind::NetTx) {
            for _ in 0..self.cfg.unkicked_tx {
                driver::submit(&mem, r, BlkOp::Write)?;
            }
        }
        Ok(())
    }
}

impl GuestControl for Workload {
    fn precopy(&self) -> Result<(), String> {
        let t = Instant::now();
        let mut st = self.state.lock();
        let (stop, change, changed) = (AtomicBool::new(false), AtomicBool::new(false), AtomicBool::new(false));
        let r = std::thread::scope(|s| {
            let st = &mut *st;
            let h = s.spawn(|| self.traffic(st, &stop, &change, &changed));
            self.migration.pass();
            for p in 0..self.cfg.passes {
                std::thread::sleep(Duration::from_millis(2));
                if p == 0 && self.cfg.changes {
                    change.store(true, Ordering::Release);
                    let t = Instant::now();
                    while !changed.load(Ordering::Acquire) && !h.is_finished() && t.elapsed() < self.deadline * 4 {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
                self.migration.pass();
            }
            stop.store(true, Ordering::Release);
            h.join().unwrap_or_else(|_| Err(RigError::Guest("the guest thread panicked".into())))
        });
        let r = r.and_then(|()| {
            let want = if self.cfg.changes { Change::ALL.len() + if self.cfg.extra { Change::EXTRA.len() } else { 0 } } else { 0 };
            if st.changes.len() != want {
                return Err(RigError::Guest(format!("only {} of the precopy changes were made", st.changes.len())));
            }
            self.last_burst(&mut st)
        });
        *self.precopy_time.lock() = t.elapsed();
        r.map_err(|e| e.to_string())
    }

    fn stop(&self) {
        if let Some((d, sig)) = self.at_stop.lock().take() {
            if let Err(e) = self.src.signal_backend(d, sig) {
                tracing::warn!(error = %e, "fault at the stop");
            }
        }
        let mut st = self.state.lock();
        st.on = None;
        st.at_stop = Some(st.rings.iter().map(|r| r.kicked).collect());
        st.in_flight_at_stop =
            st.rings.iter().filter(|r| r.kind == RingKind::Blk).flat_map(|r| r.outstanding.keys().map(move |h| (r.g, *h))).collect();
    }

    fn resume(&self, here: Side) {
        self.state.lock().on = Some(here);
    }
}
