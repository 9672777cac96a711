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

use switchover::error::StepFailure;
use switchover::exec::{Completion, StepActions};
use switchover::ids::DeviceId;
use switchover::step::{Step, StepKind};
use switchover_sim::{Fault, FaultKind};
use switchover_vhost::actions::VhostActions;

use crate::side::RealSide;

const NONE: u32 = u32::MAX;

/// [`VhostActions`] on a real side, with fault injection and sent-base records.
#[derive(Debug, Clone)]
pub struct RigActions {
    side: Arc<RealSide>,
    inner: VhostActions,
    faults: Arc<Vec<(Fault, AtomicBool)>>,
    sent: Arc<Vec<AtomicU32>>,
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
        RigActions { side, inner, faults: Arc::new(faults), sent: Arc::new(sent) }
    }

    /// The same side's rollback actions: nothing injected, and a restarted ring
    /// gets its call eventfd again before its kick.
    pub fn for_rollback(&self) -> RigActions {
        RigActions { inner: self.inner.for_rollback(), faults: Arc::new(Vec::new()), ..self.clone() }
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

impl StepActions for RigActions {
    fn start(&self, step: &Step, done: Completion) {
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
        let injected = (fault == Some(FaultKind::Error)).then(|| self.injected(step, FaultKind::Error));
        let record = (step.kind == StepKind::SetVringBase).then(|| {
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

    fn recover_base(&self, device: DeviceId, ring: u32) -> Option<u16> {
        self.inner.recover_base(device, ring)
    }
}
