//! The SIMULATED world both sides of a switchover share, so that the run's checks
//! can see what the window's steps protect:
//!
//! * **the guest**: where its vCPUs run (the roles' `stop_vcpus` and
//!   `resume_vcpus` hooks); it must never run on both sides;
//! * **storage**: each blk device's image, owned by one side at a time. The
//!   source gives it up (`storage_inactivate`), the destination takes it
//!   (`storage_activate`, refused while the source still holds it), a rollback
//!   takes it back (`storage_reactivate`, refused while the destination holds it).
//!   A write by a side that does not own the image fails and is counted;
//! * **guest memory**, one copy per side, one page per ring (its used ring, where
//!   the backend writes the index it reached). The source's backends write their
//!   last used index at `get_vring_base`, into the dirty log once logging started
//!   (`log_start`); `log_sync` collects the log, `final_pass` copies what it
//!   collected; precopy copied everything before. A destination ring that starts
//!   (`set_vring_kick`) on a stale used index has lost data;
//! * **configuration**: a generation per device. The destination stages the
//!   precopy snapshot (prepare); the guest may change a device meanwhile
//!   ([`SimWorld::new`]'s `changes`); `reconcile` must redo that device's steps
//!   in the window, or its rings run on the old configuration;
//! * **the fence**: when the source resumes after a failed start, no destination
//!   ring may still be live.
//!
//! Every finding is recorded, never hidden: [`SimWorld::findings`].

use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;
use switchover::ids::{DeviceId, Side};
use switchover::roles::{HookError, VmmHooks};
use switchover::state::{DeviceBlob, DeviceState};
use switchover::topology::{DeviceKind, Topology};

use crate::actions::SimSide;

/// What the world's checks found (each list empty when all is well).
///
/// ```
/// use std::sync::Arc;
/// use switchover::topology::Topology;
/// use switchover_sim::SimWorld;
/// let w = SimWorld::new(Arc::new(Topology::preset("small").unwrap()), vec![], true);
/// let f = w.findings();
/// assert!(f.storage.is_empty() && f.memory.is_empty() && f.config.is_empty() && f.fence.is_empty() && f.guest.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// Writes refused because the side did not own the image, and images owned by
    /// the wrong side at the end.
    pub storage: Vec<String>,
    /// Destination rings started on a stale used index (data lost).
    pub memory: Vec<String>,
    /// Destination rings running on another configuration than the guest's.
    pub config: Vec<String>,
    /// Destination rings still live when the source resumed the guest.
    pub fence: Vec<String>,
    /// The guest resumed on a side while it ran on the other.
    pub guest: Vec<String>,
    /// Pages the final passes copied, and log syncs made.
    pub final_pass_pages: u64,
    /// Log syncs that collected the log.
    pub log_syncs: u64,
    /// Devices whose configuration the destination redid in the window.
    pub reconciled: Vec<String>,
}

#[derive(Debug)]
struct Inner {
    running: Option<Side>,
    owner: Vec<Option<Side>>,
    src_mem: Vec<u16>,
    dst_mem: Vec<u16>,
    log: Vec<bool>,
    synced: Vec<bool>,
    logging: Vec<bool>,
    generation: Vec<u64>,
    staged: Vec<Option<u64>>,
    findings: Findings,
}

/// The world of one simulated switchover (see the module docs).
///
/// ```
/// use std::sync::Arc;
/// use switchover::ids::{DeviceId, Side};
/// use switchover::topology::Topology;
/// use switchover_sim::SimWorld;
/// let w = SimWorld::new(Arc::new(Topology::preset("small").unwrap()), vec![], true);
/// let blk0 = DeviceId(2);
/// assert_eq!(w.owner(blk0), Some(Side::Source));
/// // The destination cannot take the image while the source holds it.
/// assert!(w.activate(blk0, Side::Destination).is_err());
/// w.give_up(blk0, Side::Source).unwrap();
/// w.activate(blk0, Side::Destination).unwrap();
/// assert!(!w.write(blk0, Side::Source)); // refused, and counted
/// assert!(w.findings().storage.iter().any(|f| f.contains("a write by the src refused")));
/// ```
#[derive(Debug)]
pub struct SimWorld {
    topo: Arc<Topology>,
    offsets: Vec<usize>,
    changes: Vec<DeviceId>,
    shared: bool,
    log_sync: bool,
    inner: Mutex<Inner>,
    destination: OnceLock<Weak<SimSide>>,
    source: OnceLock<Weak<SimSide>>,
}

/// The configuration generation every device starts with.
const FIRST_GENERATION: u64 = 1;

impl SimWorld {
    /// A world for `topo` whose guest runs on the source, owning every image, with
    /// every device at its first configuration generation. `changes`: devices the
    /// guest reconfigures during precopy. `shared`: both sides live in this world
    /// (false for one role of a two-process run, which sees only its own side:
    /// then a destination finds the images given up and memory is not checked).
    pub fn new(topo: Arc<Topology>, changes: Vec<DeviceId>, shared: bool) -> SimWorld {
        SimWorld::with_owner(topo, changes, shared, Some(Side::Source))
    }

    /// The world of one role of a two-process run, which sees only its own side:
    /// the source holds its images, a destination finds them given up; memory is
    /// not checked (see [`SimWorld::new`]).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::ids::{DeviceId, Side};
    /// use switchover::topology::Topology;
    /// use switchover_sim::SimWorld;
    /// let t = Arc::new(Topology::preset("small").unwrap());
    /// assert_eq!(SimWorld::one_side(t.clone(), Side::Destination).owner(DeviceId(2)), None);
    /// assert_eq!(SimWorld::one_side(t, Side::Source).owner(DeviceId(2)), Some(Side::Source));
    /// ```
    pub fn one_side(topo: Arc<Topology>, side: Side) -> SimWorld {
        SimWorld::with_owner(topo, vec![], false, (side == Side::Source).then_some(Side::Source))
    }

    fn with_owner(topo: Arc<Topology>, changes: Vec<DeviceId>, shared: bool, first_owner: Option<Side>) -> SimWorld {
        let mut offsets = Vec::with_capacity(topo.devices().len());
        let mut n = 0usize;
        for d in topo.devices() {
            offsets.push(n);
            n += d.rings() as usize;
        }
        let devices = topo.devices().len();
        let owner = topo.devices().iter().map(|d| if d.kind == DeviceKind::Blk { first_owner } else { None }).collect();
        // Before precopy the guest's used rings hold some earlier index.
        let src_mem: Vec<u16> =
            topo.devices().iter().flat_map(|d| (0..d.rings()).map(move |r| SimSide::guest_base(d.id.0, r).wrapping_sub(7))).collect();
        SimWorld {
            offsets,
            changes,
            shared,
            log_sync: true,
            inner: Mutex::new(Inner {
                running: Some(Side::Source),
                owner,
                dst_mem: vec![0; n],
                src_mem,
                log: vec![false; n],
                synced: vec![false; n],
                logging: vec![false; devices],
                generation: vec![FIRST_GENERATION; devices],
                staged: vec![None; devices],
                findings: Findings::default(),
            }),
            destination: OnceLock::new(),
            source: OnceLock::new(),
            topo,
        }
    }

    /// A negative control: the log sync collects nothing (as if the VMM did not
    /// sync the backends' dirty log), so the final pass misses their last writes.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::topology::Topology;
    /// use switchover_sim::SimWorld;
    /// let w = SimWorld::new(Arc::new(Topology::preset("small").unwrap()), vec![], true).without_log_sync();
    /// assert!(!w.syncs_log());
    /// ```
    pub fn without_log_sync(mut self) -> SimWorld {
        self.log_sync = false;
        self
    }

    /// Whether log syncs collect the log.
    pub fn syncs_log(&self) -> bool {
        self.log_sync
    }

    /// Whether both sides live in this world.
    pub fn shared(&self) -> bool {
        self.shared
    }

    /// Registers the two sides (the fence check looks at the destination's rings;
    /// the guest writes through the backends of the side it runs on).
    pub(crate) fn set_sides(&self, src: &Arc<SimSide>, dst: &Arc<SimSide>) {
        let _ = self.source.set(Arc::downgrade(src));
        let _ = self.destination.set(Arc::downgrade(dst));
    }

    fn side(&self, side: Side) -> Option<Arc<SimSide>> {
        match side {
            Side::Source => &self.source,
            Side::Destination => &self.destination,
        }
        .get()
        .and_then(Weak::upgrade)
    }

    /// Whether `side`'s backend of `d` runs (unknown sides: assumed to).
    fn backend_alive(&self, d: DeviceId, side: Side) -> bool {
        match self.side(side) {
            Some(s) => s.backend(d).is_some_and(|b| b.alive()),
            None => true,
        }
    }

    /// A new backend process of `side` for `d` opens its image if nobody holds it
    /// (a reconnect after a crash).
    pub(crate) fn reopen(&self, d: DeviceId, side: Side) {
        if self.topo.device(d).kind != DeviceKind::Blk {
            return;
        }
        let mut g = self.inner.lock();
        if g.owner[d.0 as usize].is_none() {
            g.owner[d.0 as usize] = Some(side);
        }
    }

    fn ring(&self, d: DeviceId, r: u32) -> usize {
        self.offsets[d.0 as usize] + r as usize
    }

    fn name(&self, d: DeviceId) -> &str {
        &self.topo.device(d).name
    }

    /// The side whose vCPUs run the guest (`None` while it is stopped).
    pub fn running(&self) -> Option<Side> {
        self.inner.lock().running
    }

    /// Who owns a blk device's image (`None`: nobody; always `None` for other kinds).
    pub fn owner(&self, d: DeviceId) -> Option<Side> {
        self.inner.lock().owner.get(d.0 as usize).copied().flatten()
    }

    /// `side` flushes and gives up its image (`storage_inactivate`); giving up an
    /// image nobody holds is a no-op.
    ///
    /// # Errors
    /// The other side holds it.
    pub fn give_up(&self, d: DeviceId, side: Side) -> Result<(), String> {
        let mut g = self.inner.lock();
        match g.owner[d.0 as usize] {
            Some(s) if s != side => Err(format!("{}: the image is held by the {}", self.name(d), s.short())),
            _ => {
                g.owner[d.0 as usize] = None;
                Ok(())
            }
        }
    }

    /// `side` takes the image (`storage_activate`, `storage_reactivate`).
    ///
    /// # Errors
    /// The other side still holds it (image locking refuses the open).
    pub fn activate(&self, d: DeviceId, side: Side) -> Result<(), String> {
        let mut g = self.inner.lock();
        match g.owner[d.0 as usize] {
            Some(s) if s != side => Err(format!("{}: the image is still held by the {} (locked)", self.name(d), s.short())),
            _ => {
                g.owner[d.0 as usize] = Some(side);
                Ok(())
            }
        }
    }

    /// A backend process of `side` died (crashed, or cut off): the image lock it
    /// held is released.
    pub(crate) fn backend_died(&self, d: DeviceId, side: Side) {
        let mut g = self.inner.lock();
        if g.owner.get(d.0 as usize).copied().flatten() == Some(side) {
            g.owner[d.0 as usize] = None;
        }
    }

    /// A write to a blk device's image by `side`: refused (and counted) unless
    /// `side` owns it. Other device kinds have no image: always `true`.
    pub fn write(&self, d: DeviceId, side: Side) -> bool {
        if self.topo.device(d).kind != DeviceKind::Blk {
            return true;
        }
        let mut g = self.inner.lock();
        if g.owner[d.0 as usize] == Some(side) {
            return true;
        }
        let what = format!("{}: a write by the {} refused (the image is {})", self.name(d), side.short(), owned(g.owner[d.0 as usize]));
        g.findings.storage.push(what);
        false
    }

    /// Dirty logging on a source device's backend started (`log_start`) or
    /// stopped (rollback).
    pub(crate) fn set_logging(&self, d: DeviceId, on: bool) {
        self.inner.lock().logging[d.0 as usize] = on;
    }

    /// A source backend wrote the used index it reached to its ring's page.
    pub(crate) fn backend_write(&self, d: DeviceId, r: u32, used: u16) {
        let i = self.ring(d, r);
        let mut g = self.inner.lock();
        g.src_mem[i] = used;
        if g.logging[d.0 as usize] {
            g.log[i] = true;
        }
    }

    /// The migration's precopy: every page copied to the destination, the log
    /// cleared; then the guest reconfigures the devices it changes.
    pub(crate) fn precopy(&self) {
        let mut g = self.inner.lock();
        let Inner { src_mem, dst_mem, log, synced, generation, .. } = &mut *g;
        dst_mem.copy_from_slice(src_mem);
        log.iter_mut().for_each(|x| *x = false);
        synced.iter_mut().for_each(|x| *x = false);
        for d in &self.changes {
            generation[d.0 as usize] += 1;
        }
    }

    /// `log_sync`: collect the dirty log.
    pub(crate) fn log_sync(&self) {
        let mut g = self.inner.lock();
        g.findings.log_syncs += 1;
        if !self.log_sync {
            return;
        }
        let Inner { log, synced, .. } = &mut *g;
        for (l, s) in log.iter_mut().zip(synced.iter_mut()) {
            *s |= std::mem::take(l);
        }
    }

    /// `final_pass`: copy what the log syncs collected.
    pub(crate) fn final_pass(&self) {
        let mut g = self.inner.lock();
        let Inner { src_mem, dst_mem, synced, findings, .. } = &mut *g;
        for (i, s) in synced.iter_mut().enumerate() {
            if std::mem::take(s) {
                dst_mem[i] = src_mem[i];
                findings.final_pass_pages += 1;
            }
        }
    }

    /// A destination ring starts: its backend reads the used index from the
    /// destination's memory, which must be the base it was given.
    pub(crate) fn ring_starts(&self, d: DeviceId, r: u32, base: u16) {
        if !self.shared {
            return;
        }
        let i = self.ring(d, r);
        let mut g = self.inner.lock();
        if g.dst_mem[i] != base {
            let what = format!(
                "{} ring {r}: started on used index {} in the destination's memory, the guest reached {base}",
                self.name(d),
                g.dst_mem[i]
            );
            g.findings.memory.push(what);
        }
    }

    /// The configuration snapshot of every device, as the guest has it now.
    pub(crate) fn snapshot(&self) -> Vec<DeviceBlob> {
        let g = self.inner.lock();
        g.generation.iter().enumerate().map(|(d, &generation)| DeviceBlob { device: d as u32, generation, bytes: vec![] }).collect()
    }

    /// The destination staged this snapshot.
    pub(crate) fn stage(&self, config: &[DeviceBlob]) {
        let mut g = self.inner.lock();
        for b in config {
            if let Some(s) = g.staged.get_mut(b.device as usize) {
                *s = Some(b.generation);
            }
        }
    }

    /// The configuration generation `side` programs into a device's rings now: on
    /// the destination the loaded state's if it arrived, else the staged snapshot's;
    /// on the source (and where nothing was staged) the guest's.
    pub(crate) fn generation_for(&self, d: DeviceId, side: Side, state: &DeviceState) -> u64 {
        let g = self.inner.lock();
        if side == Side::Destination {
            if let Some(b) = state.blob(d) {
                return b.generation;
            }
            if let Some(s) = g.staged[d.0 as usize] {
                return s;
            }
        }
        g.generation[d.0 as usize]
    }

    /// `reconcile` on the destination: the generation to redo the device with, if
    /// the loaded one differs from the staged one.
    pub(crate) fn reconcile(&self, d: DeviceId, state: &DeviceState) -> Option<u64> {
        let loaded = state.blob(d)?.generation;
        let mut g = self.inner.lock();
        let staged = g.staged[d.0 as usize];
        if staged == Some(loaded) {
            return None;
        }
        g.findings.reconciled.push(self.name(d).to_string());
        Some(loaded)
    }

    /// The guest's configuration generation of a device.
    pub fn generation(&self, d: DeviceId) -> u64 {
        self.inner.lock().generation[d.0 as usize]
    }

    /// The vCPUs stop (the window opens).
    pub(crate) fn stop(&self, side: Side) {
        let mut g = self.inner.lock();
        if g.running == Some(side) {
            g.running = None;
        }
    }

    /// The guest resumes on `side`: on the source (after a rollback) no destination
    /// ring may be live; then the guest writes once to each of its images.
    pub(crate) fn resume(&self, side: Side) {
        if side == Side::Source {
            let live = self.side(Side::Destination).map(|d| d.live_rings()).unwrap_or_default();
            self.inner.lock().findings.fence.extend(live.into_iter().map(|l| format!("{l} still live when the source resumed")));
        }
        {
            let mut g = self.inner.lock();
            match g.running {
                Some(other) if other != side => {
                    let what = format!("the guest resumed on the {} while it ran on the {}", side.short(), other.short());
                    g.findings.guest.push(what);
                }
                _ => {}
            }
            g.running = Some(side);
        }
        for d in self.topo.devices() {
            // Through a live backend only (a dead one serves no request).
            if self.backend_alive(d.id, side) {
                self.write(d.id, side);
            }
        }
    }

    /// What the checks found so far, with the end state: no image held by the side
    /// that does not run the guest, and every image the running side serves
    /// through a live backend owned by it.
    pub fn findings(&self) -> Findings {
        let (mut f, running, owner) = {
            let g = self.inner.lock();
            (g.findings.clone(), g.running, g.owner.clone())
        };
        if let (true, Some(side)) = (self.shared, running) {
            for d in self.topo.devices().iter().filter(|d| d.kind == DeviceKind::Blk) {
                let o = owner[d.id.0 as usize];
                if o.is_some_and(|o| o != side) || o.is_none() && self.backend_alive(d.id, side) {
                    f.storage.push(format!("{}: the image is {}, the guest runs on the {}", d.name, owned(o), side.short()));
                }
            }
        }
        f
    }

    /// Destination rings whose configuration is not the guest's.
    pub(crate) fn config_findings(&self, dst: &SimSide) -> Vec<String> {
        let mut out = Vec::new();
        for d in self.topo.devices() {
            let Some(b) = dst.backend(d.id) else { continue };
            let want = self.generation(d.id);
            for (r, ring) in b.rings().iter().enumerate() {
                if u64::from(ring.config) != want {
                    out.push(format!("{} ring {r}: configuration generation {}, the guest's is {want}", d.name, ring.config));
                }
            }
        }
        out
    }
}

fn owned(o: Option<Side>) -> String {
    match o {
        Some(s) => format!("held by the {}", s.short()),
        None => "held by nobody".into(),
    }
}

/// The simulated VMM of one side: the roles' hooks, acting on the world.
///
/// ```
/// use std::sync::Arc;
/// use switchover::ids::Side;
/// use switchover::roles::VmmHooks;
/// use switchover::topology::Topology;
/// use switchover_sim::{SimVmm, SimWorld};
/// let w = Arc::new(SimWorld::new(Arc::new(Topology::preset("small").unwrap()), vec![], true));
/// let src = SimVmm::new(w.clone(), Side::Source);
/// src.stop_vcpus().unwrap();
/// assert_eq!(w.running(), None);
/// ```
#[derive(Debug)]
pub struct SimVmm {
    world: Arc<SimWorld>,
    side: Side,
}

impl SimVmm {
    /// The VMM of `side` in `world`.
    pub fn new(world: Arc<SimWorld>, side: Side) -> SimVmm {
        SimVmm { world, side }
    }
}

impl VmmHooks for SimVmm {
    fn snapshot_config(&self) -> Result<Vec<DeviceBlob>, HookError> {
        Ok(self.world.snapshot())
    }
    fn stage_config(&self, config: &[DeviceBlob]) -> Result<(), HookError> {
        self.world.stage(config);
        Ok(())
    }
    fn precopy(&self) -> Result<(), HookError> {
        self.world.precopy();
        Ok(())
    }
    fn stop_vcpus(&self) -> Result<(), HookError> {
        self.world.stop(self.side);
        Ok(())
    }
    fn save_state(&self) -> Result<Vec<DeviceBlob>, HookError> {
        Ok(self.world.snapshot())
    }
    fn resume_vcpus(&self) -> Result<(), HookError> {
        self.world.resume(self.side);
        Ok(())
    }
}
