//! The switchover core's [`StepActions`] for vhost-user devices: control-channel
//! steps are split-phase requests on each device's [`Frontend`] (sent from the
//! lane, completed by the device's reader thread); notifier steps go to the VMM's
//! [`NotifierSink`]; `drain_inflight` waits for the backend's requests in flight
//! (its inflight region, else guest memory). With an inflight region
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchover::error::StepFailure;
use switchover::exec::{Completion, StepActions};
use switchover::ids::DeviceId;
use switchover::state::DeviceState;
use switchover::step::{Step, StepKind};

use crate::channel::Pending;
use crate::frontend::Frontend;
use crate::memory::{GuestMemory, VringConfig};
use crate::reply::check_base;
use crate::sink::NotifierSink;

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
}

/// [`StepActions`] for vhost-user net and blk devices.
#[derive(Clone)]
pub struct VhostActions {
    devices: Arc<dyn VhostDevices>,
    memory: Arc<dyn GuestMemory>,
    notifiers: Arc<dyn NotifierSink>,
    state: Arc<DeviceState>,
    restart: bool,
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
        VhostActions { devices, memory, notifiers, state, restart: false }
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
            .devices
            .vring(step.device, ring)
            .ok_or_else(|| StepFailure::MissingState { what: format!("no ring layout for ring {ring}") })?;
        Ok((ring, v))
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
        if step.side == switchover::ids::Side::Destination && fe.as_ref().is_some_and(|f| f.can_hand_over()) {
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

    /// Sends the step's request; returns its pending reply.
    fn request(&self, fe: &Arc<Frontend>, step: &Step) -> Result<Pending<()>, StepFailure> {
        let d = step.deadline;
        let kind = &step.kind;
        Ok(match kind {
            StepKind::SetFeatures => fe.set_features(fe.features(), d),
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
                    crate::inflight::load_handed_over(fe, &self.state, &*self.memory, step.device, r, v)?;
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
                match (self.restart, self.notifiers.call_fd(step.device, r)) {
                    (true, Some(call)) => both(fe.set_vring_call(r, call, d), kick),
                    _ => kick,
                }
            }
            StepKind::SetVringCall => {
                let r = step.ring.unwrap_or(0);
                let fd = self
                    .notifiers
                    .call_fd(step.device, r)
                    .ok_or_else(|| StepFailure::MissingState { what: format!("no call eventfd for ring {r}") })?;
                fe.set_vring_call(r, fd, d)
            }
            StepKind::VringEnable => fe.set_vring_enable(step.ring.unwrap_or(0), true, d),
            StepKind::VringDisable => fe.set_vring_enable(step.ring.unwrap_or(0), false, d),
            other => return Err(StepFailure::Other { message: format!("{other} is not a vhost-user request") }),
        })
    }

    fn set_addr(&self, fe: &Frontend, r: u32, v: VringConfig, d: Duration) -> Result<Pending<()>, StepFailure> {
        let hva = |gpa| {
            self.memory.hva(gpa).ok_or_else(|| StepFailure::MissingState { what: format!("ring {r} at {gpa:#x} is outside guest memory") })
        };
        Ok(fe.set_vring_addr(r, hva(v.desc)?, hva(v.used)?, hva(v.avail)?, d))
    }
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
            StepKind::DrainInflight => self.vring(step).and_then(|(r, v)| self.drain(step, r, v)),
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
