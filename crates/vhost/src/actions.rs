//! The switchover core's [`StepActions`] for vhost-user devices: control-channel
//! steps are split-phase requests on each device's [`Frontend`] (sent from the
//! lane, completed by the device's reader thread); notifier steps go to the VMM's
//! [`NotifierSink`]; `drain_inflight` waits for the backend's requests in flight
//! (its inflight region, else guest memory); `probe` is one round trip to a
//! backend without `REPLY_ACK` (see [`unacked_devices`]). With an inflight region
//! (`INFLIGHT_SHMFD`), `get_vring_base` records the requests a backend left in
//! flight in the device state, `set_vring_base` on the destination writes them
//! into its backend's region for resubmission, `set_mem_table` gives the backend
//! its region, and `recover_base` is exact whatever the completion order
//! (`docs/blk-inflight.md`).
//!
//! The VMM supplies everything through traits: its devices' connections and ring
//! layouts ([`VhostDevices`]), its memory ([`GuestMemory`]) and its notifiers.
//! Device kinds of its own (custom steps) it performs itself: wrap these actions
//! in its own `StepActions` and pass the vhost-user steps on.
//!
//! # Examples
//!
//! ```no_run
//! use std::sync::Arc;
//! use switchover::exec::{Engine, Progress};
//! use switchover::ids::{Side, Window};
//! use switchover::recipe::{build, NoCosts, RecipeOptions};
//! use switchover::state::DeviceState;
//! use switchover_vhost::actions::{VhostActions, VhostDevices};
//! use switchover_vhost::memory::GuestMemory;
//! use switchover_vhost::sink::NotifierSink;
//! # fn vmm() -> (Arc<switchover::topology::Topology>, Arc<dyn VhostDevices>, Arc<dyn GuestMemory>, Arc<dyn NotifierSink>) { unimplemented!() }
//! let (topology, devices, memory, notifiers) = vmm(); // the VMM's own
//! let state = Arc::new(DeviceState::new(&topology));
//! let actions = Arc::new(VhostActions::new(devices, memory, notifiers, state.clone()));
//! let plan = Arc::new(build(&topology, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap());
//! let mut engine = Engine::new(4);
//! let r = engine.run(&plan, Window::Blackout, actions, &mut Progress::new(&plan));
//! assert!(r.ok());
//! // Every ring's base, read and checked, is in `state`, to send to the destination.
//! assert_eq!(state.captured() as u32, topology.total_rings());
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use switchover::error::StepFailure;
use switchover::exec::{Completion, StepActions};
use switchover::ids::{DeviceId, Side};
use switchover::predict::RoundTrip;
use switchover::recipe::RouteCommits;
use switchover::state::DeviceState;
use switchover::step::{Step, StepKind};
use switchover::topology::Topology;

use crate::channel::Pending;
use crate::config::{ConfigDiff, DeviceConfig, RingSetup};
use crate::frontend::Frontend;
use crate::log::Migration;
use crate::memory::{GuestMemory, VringConfig};
use crate::reply::check_base;
use crate::sink::{NotifierSink, Route};

/// The VMM's vhost-user devices: each one's connection and ring layout.
pub trait VhostDevices: Send + Sync {
    /// The device's frontend (`None`: not a vhost-user device, or not connected).
    fn frontend(&self, device: DeviceId) -> Option<Arc<Frontend>>;
    /// Where the guest put the device's ring `ring`.
    fn vring(&self, device: DeviceId, ring: u32) -> Option<VringConfig>;
    /// Brings back the backend of a device whose control channel was lost: a new
    /// connection (and process), with no ring state. `false` if it cannot.
    fn reconnect(&self, device: DeviceId) -> bool {
        let _ = device;
        false
    }
    /// The device's configuration as the guest has it now (see
    /// [`crate::config`]): on the source the live one, on the destination the
    /// staged one until the window's state is loaded, the loaded one after.
    /// `None` (the default): every ring is set up where [`VhostDevices::vring`]
    /// says, enabled, with its call eventfd, and the features are those acked at
    /// the handshake; nothing is reconciled and no route can be committed.
    fn config(&self, device: DeviceId) -> Option<DeviceConfig> {
        let _ = device;
        None
    }
}

/// What the destination's `reconcile` found and redid for one device.
///
/// ```
/// use switchover::ids::DeviceId;
/// use switchover_vhost::actions::Reconciled;
/// use switchover_vhost::config::ConfigDiff;
/// let r = Reconciled { device: DeviceId(3), staged: 1, loaded: 2, diff: ConfigDiff { moved: vec![0, 1], ..ConfigDiff::default() }, messages: 4 };
/// assert_eq!(r.diff.moved.len() * 2, r.messages); // NUM and ADDR per moved ring
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// The device.
    pub device: DeviceId,
    /// The generation prepare staged.
    pub staged: u64,
    /// The generation that arrived in the window.
    pub loaded: u64,
    /// What differed.
    pub diff: ConfigDiff,
    /// Requests sent to the backend to redo it.
    pub messages: usize,
}

/// What the actions' migration steps did, for reports.
///
/// ```
/// use switchover_vhost::actions::MigrationStats;
/// let s = MigrationStats::default();
/// assert_eq!((s.log_syncs, s.synced_pages, s.route_commits), (0, 0, 0));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigrationStats {
    /// `log_sync` steps run.
    pub log_syncs: u64,
    /// Pages those syncs found dirty.
    pub synced_pages: u64,
    /// Pages the `final_pass` steps copied.
    pub final_pass_pages: u64,
    /// `route_commit` steps run (routing-table commits).
    pub route_commits: u64,
    /// Routes those commits carried.
    pub routes: u64,
    /// `ring_notify` steps run.
    pub ring_notifies: u64,
}

#[derive(Debug, Default)]
struct Counters {
    log_syncs: AtomicU64,
    synced_pages: AtomicU64,
    final_pass_pages: AtomicU64,
    route_commits: AtomicU64,
    routes: AtomicU64,
    ring_notifies: AtomicU64,
}

/// [`StepActions`] for vhost-user net and blk devices.
#[derive(Clone)]
pub struct VhostActions {
    devices: Arc<dyn VhostDevices>,
    memory: Arc<dyn GuestMemory>,
    notifiers: Arc<dyn NotifierSink>,
    state: Arc<DeviceState>,
    restart: bool,
    /// The VMM's migration of guest memory (dirty log, final pass).
    migration: Option<Arc<dyn Migration>>,
    /// How route commits are scoped, and the devices a whole-VM commit covers.
    routes: (RouteCommits, Option<Arc<Topology>>),
    /// Destination: what each device's backend was told (staged in prepare,
    /// replaced by the loaded configuration when `reconcile` redoes it).
    programmed: Arc<Mutex<HashMap<DeviceId, DeviceConfig>>>,
    reconciled: Arc<Mutex<Vec<Reconciled>>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for VhostActions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostActions").field("restart", &self.restart).finish()
    }
}

impl VhostActions {
    /// Actions on the VMM's devices, memory and notifiers; `state` receives the
    /// bases read (source) and gives the bases to set (destination).
    pub fn new(
        devices: Arc<dyn VhostDevices>,
        memory: Arc<dyn GuestMemory>,
        notifiers: Arc<dyn NotifierSink>,
        state: Arc<DeviceState>,
    ) -> VhostActions {
        VhostActions {
            devices,
            memory,
            notifiers,
            state,
            restart: false,
            migration: None,
            routes: (RouteCommits::Once, None),
            programmed: Arc::new(Mutex::new(HashMap::new())),
            reconciled: Arc::new(Mutex::new(Vec::new())),
            counters: Arc::new(Counters::default()),
        }
    }

    /// The VMM's migration of guest memory: the `log_start`, `log_sync` and
    /// `final_pass` steps go to it.
    pub fn with_migration(mut self, migration: Arc<dyn Migration>) -> VhostActions {
        self.migration = Some(migration);
        self
    }

    /// How the plan commits MSI routes (the recipe's
    /// [`switchover::recipe::RecipeOptions::routes`]) and the topology a
    /// whole-VM commit covers. Without it, a `route_commit` without a ring commits
    /// one device's routes.
    pub fn with_routes(mut self, commits: RouteCommits, topology: Arc<Topology>) -> VhostActions {
        self.routes = (commits, Some(topology));
        self
    }

    /// What the destination's `reconcile` steps redid, device by device (an
    /// unchanged device is not listed: it paid nothing).
    pub fn reconciled(&self) -> Vec<Reconciled> {
        self.reconciled.lock().clone()
    }

    /// Source: stops dirty logging on `device`'s backend after a migration that
    /// ended before its window (aborted): `SET_FEATURES` without
    /// `VHOST_F_LOG_ALL`, each ring's address without the log flag. (After a
    /// window, the rollback plan does the same.) Waits for the replies; from a
    /// backend without `REPLY_ACK`, for a probe's (the backend took every request
    /// before it: logging is off).
    ///
    /// # Errors
    /// A request failed.
    pub fn stop_logging(&self, device: DeviceId, deadline: Duration) -> Result<(), StepFailure> {
        let fe = self
            .devices
            .frontend(device)
            .ok_or_else(|| StepFailure::MissingState { what: "the device has no vhost-user connection".into() })?;
        let cfg = self.devices.config(device);
        let features = match &cfg {
            Some(c) => fe.features() | (c.features & fe.offered_features()),
            None => fe.features(),
        };
        let mut p = fe.set_features(features, deadline);
        for r in 0..fe.queues() {
            let v = match &cfg {
                Some(c) => c.rings.get(r as usize).and_then(|s| s.vring),
                None => self.devices.vring(device, r),
            };
            if let Some(v) = v {
                p = both(p, self.set_addr(&fe, r, v, deadline)?);
            }
        }
        if !fe.acks() {
            // Sent, not yet taken: only a round trip shows the backend took them.
            p = both(p, fe.probe(deadline));
        }
        p.wait()
    }

    /// What the migration steps did so far.
    pub fn stats(&self) -> MigrationStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Acquire);
        MigrationStats {
            log_syncs: l(&c.log_syncs),
            synced_pages: l(&c.synced_pages),
            final_pass_pages: l(&c.final_pass_pages),
            route_commits: l(&c.route_commits),
            routes: l(&c.routes),
            ring_notifies: l(&c.ring_notifies),
        }
    }

    /// The same, for the source's rollback: a ring restarted after
    /// `GET_VRING_BASE` gets its call eventfd again before its kick (a backend may
    /// have dropped it at the stop, as qemu-storage-daemon does).
    pub fn for_rollback(&self) -> VhostActions {
        VhostActions { restart: true, ..self.clone() }
    }

    /// The device state the actions read and write.
    pub fn state(&self) -> &Arc<DeviceState> {
        &self.state
    }

    fn vring(&self, step: &Step) -> Result<(u32, VringConfig), StepFailure> {
        let ring = step.ring.ok_or_else(|| StepFailure::MissingState { what: "a per-ring step without a ring".into() })?;
        let v = self
            .setup(step, ring)?
            .vring
            .ok_or_else(|| StepFailure::MissingState { what: format!("ring {ring} was never set up by the guest") })?;
        Ok((ring, v))
    }

    /// The configuration a step uses: on the destination, what its backend was
    /// told (staged at its first step, replaced by `reconcile`); elsewhere the
    /// VMM's current one.
    fn device_config(&self, step: &Step) -> Option<DeviceConfig> {
        if step.side == Side::Destination {
            let mut p = self.programmed.lock();
            if let Some(c) = p.get(&step.device) {
                return Some(c.clone());
            }
            let c = self.devices.config(step.device)?;
            p.insert(step.device, c.clone());
            return Some(c);
        }
        self.devices.config(step.device)
    }

    fn never_set_up(&self, step: &Step) -> bool {
        step.ring.is_some_and(|r| self.setup(step, r).is_ok_and(|s| s.vring.is_none()))
    }

    /// One ring's setup for `step` (without a configuration from the VMM: where
    /// [`VhostDevices::vring`] says, enabled, its vector its index).
    fn setup(&self, step: &Step, ring: u32) -> Result<RingSetup, StepFailure> {
        match self.device_config(step) {
            Some(c) => c.rings.get(ring as usize).copied().ok_or_else(|| StepFailure::MissingState { what: format!("no ring {ring}") }),
            None => {
                let v = self
                    .devices
                    .vring(step.device, ring)
                    .ok_or_else(|| StepFailure::MissingState { what: format!("no ring layout for ring {ring}") })?;
                Ok(RingSetup { vring: Some(v), enabled: true, vector: u16::try_from(ring).ok(), doorbell: 0 })
            }
        }
    }

    /// The features `SET_FEATURES` sends: the guest's, as far as the backend
    /// offers them, with `VERSION_1` and `PROTOCOL_FEATURES`.
    fn features(&self, fe: &Frontend, step: &Step) -> u64 {
        match self.device_config(step) {
            Some(c) => fe.features() | (c.features & fe.offered_features()),
            None => fe.features(),
        }
    }

    /// Waits until the backend has no request of ring `ring` in flight.
    ///
    /// With an inflight region, from the backend's own count: no descriptor of the
    /// ring marked in flight. A backend that stops taking requests once its ring is
    /// disabled (as the spec has it) leaves the rest in the available ring, to be
    /// taken from the base on. Without a region, or for a backend that keeps taking
    /// requests off a disabled ring ([`Frontend::pops_while_disabled`]), from guest
    /// memory: every published request completed (`used == avail`) — the only
    /// count there is, and one that never settles on a backend that stops taking
    /// requests. Fails at once if the backend goes away (its requests are settled
    /// by its end, the caller sees it as lost).
    ///
    /// On the destination (its fence), a backend that can hand requests over is
    /// not waited for: its `GET_VRING_BASE`, next, settles the requests it
    /// resubmitted (cancelled, or their completion discarded) without waiting for
    /// the disk, and a ring it never started has nothing to settle — while the
    /// region still lists, for such a ring, the requests it was to resubmit.
    fn drain(&self, step: &Step, ring: u32, v: VringConfig) -> Result<(), StepFailure> {
        let (device, deadline) = (step.device, step.deadline);
        let fe = self.devices.frontend(device);
        if step.side == Side::Destination && fe.as_ref().is_some_and(|f| f.can_hand_over()) {
            return Ok(());
        }
        let region = fe.as_ref().filter(|f| !f.pops_while_disabled()).and_then(|f| f.inflight());
        let queue =
            u16::try_from(ring).map_err(|_| StepFailure::MissingState { what: format!("ring {ring} is not a 16-bit queue index") })?;
        if region.as_ref().is_some_and(|r| r.queue(queue).is_none()) {
            return Err(StepFailure::MissingState { what: format!("the inflight region has no queue {ring}") });
        }
        let t = Instant::now();
        let mut spins = 0u32;
        loop {
            let settled = match &region {
                Some(r) => r.queue(queue).is_some_and(|q| (0..q.queue_size()).all(|h| !q.is_inflight(h))),
                None => {
                    let (a, u) = (self.memory.read_u16(v.avail_idx_addr()), self.memory.read_u16(v.used_idx_addr()));
                    let (Some(a), Some(u)) = (a, u) else {
                        return Err(StepFailure::MissingState { what: "the ring is outside guest memory".into() });
                    };
                    a == u
                }
            };
            if settled {
                return Ok(());
            }
            if fe.as_ref().is_some_and(|f| f.channel().is_closed()) {
                return Err(StepFailure::Disconnected);
            }
            if t.elapsed() > deadline {
                return Err(StepFailure::Timeout { after: deadline });
            }
            spins += 1;
            if spins < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
    }

    /// Sends the step's request(s); returns the pending reply that settles it.
    fn request(&self, fe: &Arc<Frontend>, step: &Step) -> Result<Pending<()>, StepFailure> {
        let d = step.deadline;
        let kind = &step.kind;
        // A per-ring step on a ring the guest never set up sends nothing (QEMU's
        // `vhost_virtqueue_start` skips it).
        let setup = match step.ring {
            Some(r) => Some(self.setup(step, r)?),
            None => None,
        };
        if setup.is_some_and(|s| s.vring.is_none()) {
            if kind == &StepKind::GetVringBase {
                // Its last avail index is the one it was never given.
                self.state.set_base(step.device, step.ring.unwrap_or(0), 0);
            }
            return Ok(done_now());
        }
        Ok(match kind {
            StepKind::SetFeatures => fe.set_features(self.features(fe, step), d),
            StepKind::SetMemTable => {
                let table = fe.set_mem_table(&self.memory.regions(), d);
                if !fe.tracks_inflight() {
                    table
                } else {
                    // The inflight region goes with the memory table, before any kick.
                    let size = self.devices.vring(step.device, 0).map(|v| v.size).ok_or_else(|| StepFailure::MissingState {
                        what: "no ring layout for ring 0 (the inflight region's ring size)".into(),
                    })?;
                    both(table, fe.setup_inflight(size, d))
                }
            }
            StepKind::SetVringNum => {
                let (r, v) = self.vring(step)?;
                fe.set_vring_num(r, v.size, d)
            }
            StepKind::SetVringAddr => {
                let (r, v) = self.vring(step)?;
                self.set_addr(fe, r, v, d)?
            }
            StepKind::SetVringBase => {
                let (r, v) = self.vring(step)?;
                let base = self
                    .state
                    .base(step.device, r)
                    .ok_or_else(|| StepFailure::MissingState { what: "no vring base was captured for this ring".into() })?;
                if !self.restart {
                    // Destination: the requests the source handed over go into the
                    // backend's region, to be resubmitted when the ring starts.
                    crate::inflight::load_handed_over(fe.inflight(), &self.state, &*self.memory, step.device, r, v)?;
                }
                let set = fe.set_vring_base(r, base, d);
                if !fe.resend_addr_after_base() {
                    set
                } else {
                    // The backend reads the used index at SET_VRING_ADDR only; the
                    // address went in prepare, before guest memory was final.
                    let again = self.set_addr(fe, r, v, d)?;
                    both(set, again)
                }
            }
            StepKind::GetVringBase => {
                let (r, v) = self.vring(step)?;
                let (memory, state, device) = (self.memory.clone(), self.state.clone(), step.device);
                let region = fe.inflight().map(|reg| (reg, fe.can_hand_over()));
                fe.get_vring_base(r, d).map(move |res| {
                    let base = res?;
                    // Rule 8 of the trust model: a base must be possible for this
                    // ring in guest memory before it is recorded (and forwarded).
                    let (used, avail) = (memory.read_u16(v.used_idx_addr()), memory.read_u16(v.avail_idx_addr()));
                    let (Some(used), Some(avail)) = (used, avail) else {
                        return Err(StepFailure::MissingState { what: "the ring is outside guest memory".into() });
                    };
                    let base = check_base(base, used, avail, v.size).map_err(|e| StepFailure::Garbage { what: e.to_string() })?;
                    if let Some((region, hand_over)) = region {
                        crate::inflight::hand_over(&region, &state, device, r, base, used, hand_over)?;
                    }
                    state.set_base(device, r, base);
                    Ok(())
                })
            }
            StepKind::SetVringKick => {
                let r = step.ring.unwrap_or(0);
                let fd = self
                    .notifiers
                    .kick_fd(step.device, r)
                    .ok_or_else(|| StepFailure::MissingState { what: format!("no kick eventfd for ring {r}") })?;
                let kick = fe.set_vring_kick(r, fd, d);
                if self.restart {
                    both(self.set_call(fe, step, r, setup)?, kick)
                } else {
                    kick
                }
            }
            StepKind::SetVringCall => self.set_call(fe, step, step.ring.unwrap_or(0), setup)?,
            // Enabled as the guest has it: a ring of an inactive queue pair is
            // started but stays disabled.
            StepKind::VringEnable => fe.set_vring_enable(step.ring.unwrap_or(0), setup.map_or(true, |s| s.enabled), d),
            StepKind::VringDisable => fe.set_vring_enable(step.ring.unwrap_or(0), false, d),
            StepKind::LogStart => self.log_start(fe, step)?,
            StepKind::Reconcile => self.reconcile(fe, step)?,
            // A backend without REPLY_ACK: one round trip after its fire-and-forget
            // start shows it alive and in step.
            StepKind::Probe => fe.probe(d),
            other => return Err(StepFailure::Other { message: format!("{other} is not a vhost-user request") }),
        })
    }

    /// `SET_VRING_CALL`: the call eventfd, or none for a ring without a vector.
    fn set_call(&self, fe: &Frontend, step: &Step, r: u32, setup: Option<RingSetup>) -> Result<Pending<()>, StepFailure> {
        if setup.is_some_and(|s| s.vector.is_none()) {
            return Ok(fe.set_vring_call_none(r, step.deadline));
        }
        let fd = self
            .notifiers
            .call_fd(step.device, r)
            .ok_or_else(|| StepFailure::MissingState { what: format!("no call eventfd for ring {r}") })?;
        Ok(fe.set_vring_call(r, fd, step.deadline))
    }

    /// Source, prepare: the backend starts logging its writes to guest memory in
    /// the shared log (QEMU's order: `SET_LOG_BASE`, `SET_FEATURES` with
    /// `VHOST_F_LOG_ALL`, each ring's address with the log flag).
    fn log_start(&self, fe: &Frontend, step: &Step) -> Result<Pending<()>, StepFailure> {
        let (log, _, _) = self
            .migration
            .as_ref()
            .and_then(|m| m.dirty_log())
            .ok_or_else(|| StepFailure::MissingState { what: "the VMM gave no dirty log".into() })?;
        if !fe.can_log() {
            return Err(StepFailure::Other {
                message: format!(
                    "the backend does not offer dirty logging (VHOST_F_LOG_ALL and LOG_SHMFD): {} cannot migrate between hosts",
                    fe.name()
                ),
            });
        }
        let d = step.deadline;
        let mut p = both(fe.set_log_base(log.fd(), log.size(), 0, d), fe.set_features(self.features(fe, step) | fe.logging_features(), d));
        for r in 0..fe.queues() {
            let Some(v) = self.setup(step, r)?.vring else { continue };
            let hva = |gpa| self.hva(r, gpa);
            p = both(p, fe.set_vring_addr_logged(r, hva(v.desc)?, hva(v.used)?, hva(v.avail)?, v.used, d));
        }
        Ok(p)
    }

    /// Destination, window: an unchanged device (same generation) pays nothing; a
    /// changed one has what differs redone from the loaded configuration.
    fn reconcile(&self, fe: &Frontend, step: &Step) -> Result<Pending<()>, StepFailure> {
        let dev = step.device;
        let staged = self.device_config(step);
        let loaded = self.devices.config(dev);
        let (Some(staged), Some(loaded)) = (staged, loaded) else {
            return Err(StepFailure::MissingState { what: "the VMM gives no device configuration to reconcile".into() });
        };
        if staged.generation == loaded.generation {
            return Ok(done_now());
        }
        let diff = staged.diff(&loaded);
        let d = step.deadline;
        let mut sent: Vec<Pending<()>> = Vec::new();
        if diff.features {
            let f = fe.features() | (loaded.features & fe.offered_features());
            sent.push(fe.set_features(f, d));
        }
        for &r in &diff.moved {
            if let Some(v) = loaded.rings.get(r as usize).and_then(|s| s.vring) {
                sent.push(fe.set_vring_num(r, v.size, d));
                sent.push(self.set_addr(fe, r, v, d)?);
            }
        }
        for &r in &diff.calls {
            let s = loaded.rings.get(r as usize).copied();
            if s.is_some_and(|s| s.vring.is_some()) {
                sent.push(self.set_call(fe, step, r, s)?);
            }
        }
        for &r in &diff.doorbells {
            if let Some(s) = loaded.rings.get(r as usize) {
                self.notifiers.move_host_notifier(dev, r, s.doorbell)?;
            }
        }
        let messages = sent.len();
        self.reconciled.lock().push(Reconciled { device: dev, staged: staged.generation, loaded: loaded.generation, diff, messages });
        self.programmed.lock().insert(dev, loaded);
        Ok(sent.into_iter().reduce(both).unwrap_or_else(done_now))
    }

    fn hva(&self, r: u32, gpa: u64) -> Result<u64, StepFailure> {
        self.memory.hva(gpa).ok_or_else(|| StepFailure::MissingState { what: format!("ring {r} at {gpa:#x} is outside guest memory") })
    }

    /// `route_commit`: the routes of the rings in the step's scope, from the
    /// loaded MSI-X tables, committed in one routing-table update.
    fn route_commit(&self, step: &Step) -> Result<(), StepFailure> {
        let devices: Vec<DeviceId> = match (step.ring, &self.routes) {
            (None, (RouteCommits::Once, Some(t))) => t.devices().iter().filter(|d| d.rings() > 0).map(|d| d.id).collect(),
            _ => vec![step.device],
        };
        let mut routes = Vec::new();
        for dev in devices {
            let c = self
                .devices
                .config(dev)
                .ok_or_else(|| StepFailure::MissingState { what: format!("no configuration (MSI-X table) for device {}", dev.0) })?;
            let rings: Vec<u32> = match step.ring {
                Some(r) => vec![r],
                None => (0..c.rings.len() as u32).collect(),
            };
            for r in rings {
                routes.push(Route { device: dev, ring: r, msi: c.msi(r) });
            }
        }
        self.notifiers.commit_routes(&routes)?;
        self.counters.route_commits.fetch_add(1, Ordering::AcqRel);
        self.counters.routes.fetch_add(routes.iter().filter(|r| r.msi.is_some()).count() as u64, Ordering::AcqRel);
        Ok(())
    }

    /// `ring_notify`: once the ring started, its call signalled (if it has an
    /// unmasked vector) and its kick signalled once.
    fn ring_notify(&self, step: &Step) -> Result<(), StepFailure> {
        let r = step.ring.unwrap_or(0);
        let s = self.setup(step, r)?;
        if s.vring.is_none() {
            return Ok(());
        }
        let unmasked = match self.device_config(step) {
            Some(c) => c.msi(r).is_some(),
            None => true,
        };
        self.notifiers.notify(step.device, r, unmasked, true)?;
        self.counters.ring_notifies.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// `log_sync`: reads and clears the shared log into the VMM's dirty set.
    fn log_sync(&self) -> Result<(), StepFailure> {
        let m = self.migration.as_ref().ok_or_else(|| StepFailure::MissingState { what: "the VMM migrates no memory".into() })?;
        let (log, gpa, size) = m.dirty_log().ok_or_else(|| StepFailure::MissingState { what: "the VMM gave no dirty log".into() })?;
        let pages = log.sync(gpa, size);
        m.mark_dirty(&pages);
        self.counters.log_syncs.fetch_add(1, Ordering::AcqRel);
        self.counters.synced_pages.fetch_add(pages.len() as u64, Ordering::AcqRel);
        Ok(())
    }

    /// `final_pass`: the VMM's last RAM pass.
    fn final_pass(&self) -> Result<(), StepFailure> {
        let m = self.migration.as_ref().ok_or_else(|| StepFailure::MissingState { what: "the VMM migrates no memory".into() })?;
        let n = m.final_pass()?;
        self.counters.final_pass_pages.fetch_add(n, Ordering::AcqRel);
        Ok(())
    }

    fn set_addr(&self, fe: &Frontend, r: u32, v: VringConfig, d: Duration) -> Result<Pending<()>, StepFailure> {
        let hva = |gpa| self.hva(r, gpa);
        Ok(fe.set_vring_addr(r, hva(v.desc)?, hva(v.used)?, hva(v.avail)?, d))
    }
}

/// A reply that has already come (a step with nothing to send).
fn done_now() -> Pending<()> {
    let (p, answer) = Pending::new();
    answer(Ok(()));
    p
}

/// The blk policy of each device: hand-over where its backend can leave requests
/// in flight in its inflight region ([`Frontend::can_hand_over`]), drain
/// otherwise (qemu-storage-daemon). For `RecipeOptions::blk_overrides`.
///
/// ```
/// use std::sync::Arc;
/// use switchover::ids::DeviceId;
/// use switchover::topology::Topology;
/// use switchover_vhost::actions::{hand_over_policies, VhostDevices};
/// use switchover_vhost::frontend::Frontend;
/// use switchover_vhost::memory::VringConfig;
/// struct NotConnected;
/// impl VhostDevices for NotConnected {
///     fn frontend(&self, _d: DeviceId) -> Option<Arc<Frontend>> { None }
///     fn vring(&self, _d: DeviceId, _r: u32) -> Option<VringConfig> { None }
/// }
/// let t = Topology::preset("single-blk").unwrap();
/// let p = hand_over_policies(&t, &NotConnected);
/// assert_eq!(p, [(DeviceId(0), switchover::recipe::BlkPolicy::Drain)]);
/// ```
pub fn hand_over_policies(
    topology: &switchover::topology::Topology,
    devices: &dyn VhostDevices,
) -> Vec<(DeviceId, switchover::recipe::BlkPolicy)> {
    use switchover::recipe::BlkPolicy;
    topology
        .devices()
        .iter()
        .filter(|d| d.kind == switchover::topology::DeviceKind::Blk)
        .map(|d| {
            let ho = devices.frontend(d.id).is_some_and(|f| f.can_hand_over());
            (d.id, if ho { BlkPolicy::HandOver } else { BlkPolicy::Drain })
        })
        .collect()
}

/// The devices whose backends do not acknowledge requests (no `REPLY_ACK`,
/// [`Frontend::acks`]): for `RecipeOptions::unacked`, so that each gets a `probe`
/// after its start and the outcome says their start is unverified.
///
/// ```
/// use std::sync::Arc;
/// use switchover::ids::DeviceId;
/// use switchover::topology::Topology;
/// use switchover_vhost::actions::{unacked_devices, VhostDevices};
/// use switchover_vhost::frontend::Frontend;
/// use switchover_vhost::memory::VringConfig;
/// struct NotConnected;
/// impl VhostDevices for NotConnected {
///     fn frontend(&self, _d: DeviceId) -> Option<Arc<Frontend>> { None }
///     fn vring(&self, _d: DeviceId, _r: u32) -> Option<VringConfig> { None }
/// }
/// let t = Topology::preset("small").unwrap();
/// assert!(unacked_devices(&t, &NotConnected).is_empty()); // nothing connected, nothing to say
/// ```
pub fn unacked_devices(topology: &switchover::topology::Topology, devices: &dyn VhostDevices) -> Vec<DeviceId> {
    topology.devices().iter().filter(|d| devices.frontend(d.id).is_some_and(|f| !f.acks())).map(|d| d.id).collect()
}

/// How long a probe of a backend waits for each reply.
const PROBE_DEADLINE: Duration = Duration::from_secs(1);

/// Requests sent alone, and back to back, by [`probe_round_trip`].
const PROBES_ALONE: u32 = 4;
const PROBES_IN_A_ROW: u32 = 8;

/// Measures round trips on `fe`'s control channel with `GET_FEATURES`: `alone`,
/// the mean of 4 requests each sent once the one before it was
/// answered (the backend woken by each: what a window's first request to an idle
/// backend sees, scheduling delays on a loaded machine included — hence the mean,
/// not the median); `per_request`, the backend's time per request of
/// 8 sent back to back (the burst's time past one round trip,
/// over the requests after the first). `None` if a reply did not come.
///
/// ```no_run
/// # fn frontend() -> std::sync::Arc<switchover_vhost::frontend::Frontend> { unimplemented!() }
/// use std::time::Duration;
/// let rt = switchover_vhost::actions::probe_round_trip(&frontend(), Duration::from_secs(1)).unwrap();
/// assert!(rt.alone >= rt.per_request);
/// ```
pub fn probe_round_trip(fe: &Frontend, deadline: Duration) -> Option<RoundTrip> {
    let mut alone = Duration::ZERO;
    for _ in 0..PROBES_ALONE {
        let t = Instant::now();
        fe.probe(deadline).wait().ok()?;
        alone += t.elapsed();
    }
    let alone = alone / PROBES_ALONE;
    let t = Instant::now();
    let sent: Vec<Pending<()>> = (0..PROBES_IN_A_ROW).map(|_| fe.probe(deadline)).collect();
    for p in sent {
        p.wait().ok()?;
    }
    let burst = t.elapsed();
    let per_request = (burst.saturating_sub(alone) / (PROBES_IN_A_ROW - 1)).min(alone);
    Some(RoundTrip { alone, per_request })
}

/// Two requests of one step, in order on one channel: the second's reply settles
/// the step, unless the first failed.
fn both(first: Pending<()>, second: Pending<()>) -> Pending<()> {
    let (p, answer) = Pending::new();
    let failed = Arc::new(parking_lot::Mutex::new(None));
    let f2 = failed.clone();
    first.then(move |r| {
        if let Err(e) = r {
            *f2.lock() = Some(e);
        }
    });
    // Replies arrive in wire order: the first's has been handled when the second's comes.
    second.then(move |r| {
        let first = failed.lock().take();
        answer(match first {
            Some(e) => Err(e),
            None => r,
        })
    });
    p
}

impl StepActions for VhostActions {
    fn start(&self, step: &Step, done: Completion) {
        let r = match &step.kind {
            StepKind::HostNotifierOn | StepKind::HostNotifierOff => {
                self.notifiers.host_notifier(step.device, step.ring.unwrap_or(0), step.kind == StepKind::HostNotifierOn)
            }
            StepKind::GuestNotifierOn | StepKind::GuestNotifierOff => {
                self.notifiers.guest_notifier(step.device, step.ring.unwrap_or(0), step.kind == StepKind::GuestNotifierOn)
            }
            StepKind::MemTxnBegin => {
                self.notifiers.begin_transaction();
                Ok(())
            }
            StepKind::MemTxnCommit => {
                self.notifiers.commit_transaction();
                Ok(())
            }
            StepKind::DrainInflight if self.never_set_up(step) => Ok(()),
            StepKind::DrainInflight => self.vring(step).and_then(|(r, v)| self.drain(step, r, v)),
            StepKind::LogSync => self.log_sync(),
            StepKind::FinalPass => self.final_pass(),
            StepKind::RouteCommit => self.route_commit(step),
            StepKind::RingNotify => self.ring_notify(step),
            StepKind::Custom(name) => Err(StepFailure::Other { message: format!("custom step {name} is the VMM's own") }),
            _ => {
                let Some(fe) = self.devices.frontend(step.device) else {
                    done.complete(Err(StepFailure::MissingState { what: "the device has no vhost-user connection".into() }));
                    return;
                };
                match self.request(&fe, step) {
                    Ok(p) => p.then(move |r| done.complete(r)),
                    Err(e) => done.complete(Err(e)),
                }
                return;
            }
        };
        done.complete(r);
    }

    fn reconnect(&self, device: DeviceId) -> bool {
        self.devices.reconnect(device)
    }

    /// Round trips on the device's control channel, measured before the window
    /// with `GET_FEATURES` (which changes nothing in the backend; its reply is
    /// checked against the handshake's): see [`probe_round_trip`].
    fn probe(&self, device: DeviceId) -> Option<RoundTrip> {
        let fe = self.devices.frontend(device)?;
        probe_round_trip(&fe, PROBE_DEADLINE)
    }

    /// The base of a ring whose `GET_VRING_BASE` never answered, read once its
    /// backend is gone (the roles reconnect a lost device first).
    ///
    /// With the device's inflight region (carried over to the new connection, see
    /// [`Frontend::adopt_inflight`]): the used index plus the requests the region
    /// has in flight — every request the backend took is either completed or in
    /// flight, whatever order it completed them in; the new backend gets the
    /// region before its first kick and resubmits those requests, then reads the
    /// ring from this base. A region that is impossible, or a base past what the
    /// guest published, gives none (the ring cannot be restarted safely).
    ///
    /// Without a region, the used index: right for a backend that completes
    /// requests in order (the requests it took and did not complete are read
    /// again); with out-of-order completion it would skip a request still in
    /// flight and repeat one already completed, so such a backend needs a region.
    fn recover_base(&self, device: DeviceId, ring: u32) -> Option<u16> {
        let v = self.devices.vring(device, ring)?;
        let used = self.memory.read_u16(v.used_idx_addr())?;
        let Some(region) = self.devices.frontend(device).and_then(|f| f.inflight()) else {
            return Some(used);
        };
        let base = match region.queue(u16::try_from(ring).ok()?)?.recover_base(used) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(device = device.0, ring, error = %e, "no base recovered");
                return None;
            }
        };
        let avail = self.memory.read_u16(v.avail_idx_addr())?;
        check_base(base, used, avail, v.size).ok()
    }
}
