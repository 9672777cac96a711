//! The rig's [`StepActions`]: the frontend crate's [`VhostActions`] on a
//! [`RealSide`], with faults injected on the real components and the bases each
//! destination backend acknowledged recorded for the run's checks.
//!
//! Faults ([`Fault`], the same `KIND:STEP:DEVICE[:RING]` as the simulation):
//!
//! * `error`: the request is sent and served, but its reply is treated as an error;
//!   a step that is not a message fails without acting;
//! * `hang`: the device's backend process is stopped (SIGSTOP) just before the
//!   request is written, so it never answers and the channel's watchdog turns that
//!   into a time-out; a step that is not a message waits out its deadline;
//! * `crash`: the backend process is killed (SIGKILL) just before the request is
//!   written, so the request fails with a closed channel; a step that is not a
//!   message fails once the backend is gone.
//!
//! Each fault fires once (on the named ring, or on the first ring performing the
//! step). Rollback runs on [`RigActions::for_rollback`], which injects nothing.
//!
//! Negative controls ([`Switches`], for tests): a mechanism taken away so that a
//! test can see its check fail — the window's log sync, the net order at the
//! source's stop, the destination's enable before kick.
//!
//! # Examples
//!
//! ```
//! use switchover_sim::{Fault, FaultKind};
//! let f: Fault = "crash:get_vring_base:net3".parse().unwrap();
//! assert_eq!(f.kind, FaultKind::Crash); // the backend is SIGKILLed just before the request
//! assert_eq!(f.device, "net3");
//! ```

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchover::error::StepFailure;
use switchover::exec::{Completion, StepActions};
use switchover::ids::{DeviceId, Side};
use switchover::recipe::RouteCommits;
use switchover::step::{Step, StepKind};
use switchover::topology::DeviceKind;
use switchover_sim::{Fault, FaultKind};
use switchover_vhost::actions::{VhostActions, VhostDevices};
use switchover_vhost::log::Migration;

use crate::side::RealSide;

const NONE: u32 = u32::MAX;

/// Mechanisms a test takes away to see its check fail (all on by default).
///
/// ```
/// use switchover_testbed::rig::Switches;
/// let s = Switches::default();
/// assert!(!s.skip_log_sync && !s.disable_net_before_stop && !s.kick_before_enable && !s.keep_logging);
/// assert!(!s.skip_fence && !s.no_image_lock && !s.skip_storage && !s.skip_probe);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Switches {
    /// The source's `log_sync` does nothing: the backends' writes since the last
    /// precopy pass never reach the destination.
    pub skip_log_sync: bool,
    /// Every net ring is disabled (`SET_VRING_ENABLE 0`) before its
    /// `GET_VRING_BASE`, as the recipe did before: a spec-conforming backend
    /// discards the tx packets still in the ring.
    pub disable_net_before_stop: bool,
    /// The destination kicks a ring before it enables it (its `vring_enable` does
    /// nothing, its `set_vring_kick` sends the kick, then the enable).
    pub kick_before_enable: bool,
    /// After a failed migration the source's backends keep logging: the
    /// rollback's `SET_FEATURES` keeps `VHOST_F_LOG_ALL` (and an aborted
    /// migration does not stop logging).
    pub keep_logging: bool,
    /// The destination's fence does nothing: its steps succeed without acting
    /// and no device is cut off, so `start_failed` goes out with its rings live.
    pub skip_fence: bool,
    /// The own blk backends do not lock their images (image locking off): a
    /// backend that should not hold the image can take it.
    pub no_image_lock: bool,
    /// Storage is not handed over: every storage step succeeds without acting,
    /// and the destination's own blk backends hold their images from the start,
    /// as the source's do (with image locking on they cannot: set
    /// `no_image_lock` too).
    pub skip_storage: bool,
    /// The destination's `probe` of a backend without `REPLY_ACK` succeeds
    /// without a round trip (a fault injected at it still acts first): a backend
    /// that died after its last fire-and-forget message goes unseen.
    pub skip_probe: bool,
}

/// [`VhostActions`] on a real side, with fault injection and sent-base records.
#[derive(Debug, Clone)]
pub struct RigActions {
    side: Arc<RealSide>,
    inner: VhostActions,
    faults: Arc<Vec<(Fault, AtomicBool)>>,
    sent: Arc<Vec<AtomicU32>>,
    switches: Switches,
    rollback: bool,
    /// Per device with a storage switch: its control socket's round trip, as
    /// measured by [`StepActions::probe`] before the window.
    storage_rt: Arc<parking_lot::Mutex<std::collections::HashMap<DeviceId, Duration>>>,
}

impl RigActions {
    /// Actions on `side` that inject `faults` (those naming a device of the side's
    /// topology).
    pub fn new(side: Arc<RealSide>, faults: &[Fault]) -> RigActions {
        let topo = side.topology().clone();
        let faults =
            faults.iter().filter(|f| topo.device_by_name(&f.device).is_some()).map(|f| (f.clone(), AtomicBool::new(false))).collect();
        let inner = VhostActions::new(side.clone(), side.mem().clone(), side.notifiers().clone(), side.state().clone());
        let sent = (0..topo.total_rings()).map(|_| AtomicU32::new(NONE)).collect();
        RigActions {
            side,
            inner,
            faults: Arc::new(faults),
            sent: Arc::new(sent),
            switches: Switches::default(),
            rollback: false,
            storage_rt: Arc::default(),
        }
    }

    /// The same, migrating guest memory with `migration` (dirty log, final pass)
    /// and committing routes as `routes` says.
    pub fn with_migration(mut self, migration: Arc<dyn Migration>, routes: RouteCommits) -> RigActions {
        let topo = self.side.topology().clone();
        self.inner = self.inner.with_migration(migration).with_routes(routes, topo);
        self
    }

    /// The same with mechanisms taken away (tests).
    pub fn with_switches(mut self, switches: Switches) -> RigActions {
        self.switches = switches;
        self
    }

    /// The frontend actions underneath (what `reconcile` redid, the migration
    /// steps' figures).
    pub fn vhost(&self) -> &VhostActions {
        &self.inner
    }

    /// The same side's rollback actions: nothing injected, and a restarted ring
    /// gets its call eventfd again before its kick.
    pub fn for_rollback(&self) -> RigActions {
        RigActions { inner: self.inner.for_rollback(), faults: Arc::new(Vec::new()), rollback: true, ..self.clone() }
    }

    /// The base a backend acknowledged with `SET_VRING_BASE` for global ring `g`.
    pub fn sent_base(&self, g: u32) -> Option<u16> {
        let v = self.sent.get(g as usize)?.load(Ordering::Acquire);
        (v != NONE).then_some(v as u16)
    }

    fn fault_for(&self, step: &Step) -> Option<FaultKind> {
        let name = &self.side.topology().device(step.device).name;
        for (f, fired) in self.faults.iter() {
            if f.step != step.kind || &f.device != name || f.ring.is_some_and(|r| step.ring != Some(r)) {
                continue;
            }
            if fired.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return Some(f.kind);
            }
        }
        None
    }

    fn injected(&self, step: &Step, kind: FaultKind) -> StepFailure {
        let k = match kind {
            FaultKind::Error => "error",
            FaultKind::Hang => "hang",
            FaultKind::Crash => "crash",
        };
        StepFailure::Injected { what: format!("{k} at {} on {} (real backend)", step.kind, self.side.topology().device(step.device).name) }
    }
}

impl RigActions {
    /// A negative control's version of the step, if one applies; `None` to run it
    /// as it is.
    fn switched(&self, step: &Step) -> Option<Result<(), StepFailure>> {
        let sw = self.switches;
        let r = step.ring.unwrap_or(0);
        let net = self.side.topology().device(step.device).kind == DeviceKind::Net;
        match &step.kind {
            StepKind::LogSync if sw.skip_log_sync => Some(Ok(())),
            StepKind::SetFeatures if sw.keep_logging && self.rollback && step.side == Side::Source => {
                let fe = self.side.frontend(step.device)?;
                Some(fe.set_features(fe.logging_features(), step.deadline).wait())
            }
            StepKind::GetVringBase if sw.disable_net_before_stop && net && step.side == Side::Source => {
                // Disabled first (and waited for); the base is read after.
                let fe = self.side.frontend(step.device)?;
                match fe.set_vring_enable(r, false, step.deadline).wait() {
                    Ok(()) => None,
                    Err(e) => Some(Err(e)),
                }
            }
            StepKind::VringEnable if sw.kick_before_enable && step.side == Side::Destination => Some(Ok(())),
            // The fence (the destination's recovery plan) does nothing.
            _ if sw.skip_fence && self.rollback && step.side == Side::Destination => Some(Ok(())),
            StepKind::SetVringKick if sw.kick_before_enable && step.side == Side::Destination => {
                let fe = self.side.frontend(step.device)?;
                let kick = self.side.notifiers().kick(step.device, r)?;
                let on = self.side.config(step.device).and_then(|c| c.rings.get(r as usize).map(|s| s.enabled)).unwrap_or(true);
                let sent = fe.set_vring_kick(r, std::os::fd::AsRawFd::as_raw_fd(kick), step.deadline).wait();
                Some(sent.and_then(|()| fe.set_vring_enable(r, on, step.deadline).wait()))
            }
            _ => None,
        }
    }
}

impl StepActions for RigActions {
    fn start(&self, step: &Step, done: Completion) {
        if let Some(r) = self.switched(step) {
            done.complete(r);
            return;
        }
        let fault = if self.faults.is_empty() { None } else { self.fault_for(step) };
        match fault {
            Some(f @ (FaultKind::Hang | FaultKind::Crash)) => {
                let sig = if f == FaultKind::Hang { libc::SIGSTOP } else { libc::SIGKILL };
                // signal_backend waits until the signal took effect.
                if let Err(e) = self.side.signal_backend(step.device, sig) {
                    tracing::warn!(error = %e, "fault injection");
                }
                if !step.kind.is_message() {
                    if f == FaultKind::Hang {
                        // A hung step: nothing answers before the deadline.
                        std::thread::sleep(step.deadline);
                        done.complete(Err(StepFailure::Timeout { after: step.deadline }));
                    } else {
                        done.complete(Err(self.injected(step, f)));
                    }
                    return;
                }
            }
            Some(FaultKind::Error) if !step.kind.is_message() => {
                done.complete(Err(self.injected(step, FaultKind::Error)));
                return;
            }
            _ => {}
        }
        if step.kind == StepKind::Probe && self.switches.skip_probe {
            done.complete(Ok(()));
            return;
        }
        if matches!(step.kind, StepKind::StorageInactivate | StepKind::StorageActivate | StepKind::StorageReactivate) {
            done.complete(if self.switches.skip_storage { Ok(()) } else { self.storage(step) });
            return;
        }
        let injected = (fault == Some(FaultKind::Error)).then(|| self.injected(step, FaultKind::Error));
        // A ring the guest never set up gets no SET_VRING_BASE: nothing to record.
        let set_up = step
            .ring
            .map_or(true, |r| self.side.config(step.device).map_or(true, |c| c.rings.get(r as usize).is_some_and(|s| s.vring.is_some())));
        let record = (step.kind == StepKind::SetVringBase && set_up).then(|| {
            let r = step.ring.unwrap_or(0);
            (self.sent.clone(), self.side.global(step.device, r), self.side.state().base(step.device, r))
        });
        let wrapped = Completion::from_fn(move |r| {
            // The reply arrived (the wire stays in step) but counts as an error.
            let r = match (r, injected) {
                (Ok(()), Some(e)) => Err(e),
                (r, _) => r,
            };
            if let (Ok(()), Some((sent, g, Some(base)))) = (&r, record) {
                if let Some(s) = sent.get(g as usize) {
                    s.store(u32::from(base), Ordering::Release);
                }
            }
            done.complete(r);
        });
        self.inner.start(step, wrapped);
    }

    fn reconnect(&self, device: DeviceId) -> bool {
        self.inner.reconnect(device)
    }

    /// The vhost-user channel's round trips; and, for a device with a storage
    /// switch, its control socket's (a `state` command, which changes nothing).
    fn probe(&self, device: DeviceId) -> Option<switchover::predict::RoundTrip> {
        if let Some(rt) = self.storage_round_trip(device) {
            self.storage_rt.lock().insert(device, rt);
        }
        self.inner.probe(device)
    }

    /// A storage step costs at least its control socket's measured round trip
    /// (connecting, the command, the answer); the rest is the plan's.
    fn expect(&self, step: &Step) -> Option<switchover::predict::Expected> {
        if matches!(step.kind, StepKind::StorageInactivate | StepKind::StorageActivate | StepKind::StorageReactivate) {
            let rt = *self.storage_rt.lock().get(&step.device)?;
            return Some(switchover::predict::Expected::blocking(rt.max(step.cost)));
        }
        self.inner.expect(step)
    }

    fn recover_base(&self, device: DeviceId, ring: u32) -> Option<u16> {
        self.inner.recover_base(device, ring)
    }

    fn abandon(&self, device: DeviceId) -> bool {
        if self.switches.skip_fence {
            return false;
        }
        self.side.abandon(device)
    }
}

impl RigActions {
    /// The mean of three `state` commands on the device's control socket, each
    /// on a connection of its own as the storage steps make theirs.
    fn storage_round_trip(&self, d: DeviceId) -> Option<Duration> {
        let c = self.side.control(d, Duration::from_secs(1))?;
        let mut total = Duration::ZERO;
        for _ in 0..3 {
            let t = std::time::Instant::now();
            c.is_active().ok()?;
            total += t.elapsed();
        }
        Some(total / 3)
    }

    /// A storage step on the device's own blk backend (its control socket,
    /// answered within the step's deadline).
    fn storage(&self, step: &Step) -> Result<(), StepFailure> {
        let d = step.device;
        let c = self.side.control(d, step.deadline).ok_or_else(|| StepFailure::MissingState {
            what: format!("{} has no storage switch (its backend cannot give its image up)", self.side.topology().device(d).name),
        })?;
        let r = match step.kind {
            StepKind::StorageInactivate => {
                if step.side == Side::Source {
                    self.side.release_storage(d);
                }
                c.inactivate()
            }
            _ => c.activate(),
        };
        r.map_err(|e| StepFailure::Backend { message: e.to_string() })
    }
}
