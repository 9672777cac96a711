//! The destination role: stages the source's configuration, prepares, acks,
//! waits for the state, loads it, starts the devices, confirms, cleans up.
//!
//! Its promises to the source:
//!
//! * `ready` only after its prepare window ran without a failure;
//! * `start_failed` only after it stopped every ring it may have started
//!   ([`crate::recipe::fence`]; a device whose ring it could not stop is cut off),
//!   gave the storage back and did not resume the guest: the source may resume it;
//! * `will_not_run` when its deadline for the state passed: a state that arrives
//!   later is never acted on, so the source may resume the guest;
//! * `running` only when every ring started with the base the source read, and
//!   the guest resumed here.

use std::sync::Arc;
use std::time::Instant;

use super::error::{HookKind, MessageKind, SwitchoverError};
use super::forecast;
use super::message::Message;
use super::path::ReturnPath;
use super::session::Session;
use super::setup::{Deadlines, Outcome, SideSetup, SwitchoverReport};
use crate::exec::{Engine, FailurePolicy, Progress, RunReport, StepOutcome};
use crate::ids::{DeviceId, Side, Window};
use crate::recipe;
use crate::step::StepKind;

const SIDE: Side = Side::Destination;

/// The destination role.
pub struct Destination<'a> {
    setup: &'a SideSetup,
    engine: &'a mut Engine,
    session: Session,
    deadlines: Deadlines,
}

impl std::fmt::Debug for Destination<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination").field("setup", &self.setup).field("session", &self.session.id()).finish()
    }
}

fn hook<T>(hook: HookKind, r: Result<T, super::error::HookError>) -> Result<T, SwitchoverError> {
    r.map_err(|source| SwitchoverError::Hook { side: SIDE, hook, source })
}

impl<'a> Destination<'a> {
    /// The destination of `setup`, on `engine` (whose workers exist before prepare),
    /// in `session`.
    pub fn new(setup: &'a SideSetup, engine: &'a mut Engine, session: Session, deadlines: Deadlines) -> Destination<'a> {
        Destination { setup, engine, session, deadlines }
    }

    fn run_window(&mut self, w: Window, p: &mut Progress, runs: &mut Vec<RunReport>) -> Result<f64, SwitchoverError> {
        let r = self.engine.run(&self.setup.plan, w, self.setup.actions.clone(), p);
        let out = match &r.failure {
            None => Ok(r.wall.as_secs_f64() * 1e3),
            Some(f) => Err(SwitchoverError::Step(f.clone())),
        };
        runs.push(r);
        out
    }

    fn not_ready(mut self, path: &mut dyn ReturnPath, cause: SwitchoverError, runs: Vec<RunReport>) -> SwitchoverReport {
        let _ = self.session.send(path, SIDE, Message::NotReady { cause: cause.clone() });
        let mut r = SwitchoverReport::not_opened(Outcome::Aborted { cause }, runs);
        r.session = Some(self.session);
        r
    }

    /// The whole destination side of a switchover.
    pub fn run(mut self, path: &mut dyn ReturnPath) -> SwitchoverReport {
        if let Err(cause) = self.setup.claim() {
            return SwitchoverReport::not_opened(Outcome::Aborted { cause }, vec![]);
        }
        let mut p = Progress::new(&self.setup.plan);
        let mut runs = Vec::new();
        // The source's configuration, staged before prepare.
        let staged = match self.session.recv(path, SIDE, Instant::now() + self.deadlines.config, MessageKind::Config) {
            Ok(Message::Config { devices }) => hook(HookKind::StageConfig, self.setup.hooks.stage_config(&devices)),
            Ok(Message::Abort { cause }) => Err(cause),
            Ok(other) => Err(SwitchoverError::Unexpected { side: SIDE, waiting_for: MessageKind::Config, got: other.kind() }),
            Err(e) => Err(e),
        };
        if let Err(cause) = staged {
            return self.not_ready(path, cause, runs);
        }
        let prepare_ms = match self.run_window(Window::Prepare, &mut p, &mut runs) {
            Ok(ms) => ms,
            Err(cause) => return self.not_ready(path, cause, runs),
        };
        // This side's share of the downtime, measured on its own backends after
        // prepare; the source adds it to its own before it stops the guest.
        let prediction = forecast::predict_side(self.setup, self.engine, &runs);
        self.setup.hooks.predicted(&prediction);
        let estimate_ms = Some(prediction.this_side().as_secs_f64() * 1e3);
        if let Err(cause) = self.session.send(path, SIDE, Message::Ready { prepare_ms, estimate_ms }) {
            let mut r = SwitchoverReport::not_opened(Outcome::Aborted { cause }, runs);
            r.session = Some(self.session);
            r.prediction = Some(prediction);
            return r;
        }
        let prediction = Some(prediction);
        let state = self.session.recv(path, SIDE, Instant::now() + self.deadlines.state, MessageKind::State);
        let (bases, inflight, devices) = match state {
            Ok(Message::State { bases, inflight, devices }) => (bases, inflight, devices),
            Ok(Message::Abort { cause }) => {
                // The source could not stop and resumes its guest.
                let mut r = SwitchoverReport::not_opened(Outcome::RolledBack { cause }, runs);
                r.session = Some(self.session);
                r.prediction = prediction;
                return r;
            }
            other => {
                // Past the deadline (or a message out of turn): this side will not
                // run the guest, whatever comes later; the source may resume it.
                let cause = match other {
                    Ok(m) => SwitchoverError::Unexpected { side: SIDE, waiting_for: MessageKind::State, got: m.kind() },
                    Err(e) => e,
                };
                let _ = self.session.send(path, SIDE, Message::WillNotRun { cause: cause.clone() });
                let mut r = SwitchoverReport::not_opened(Outcome::Aborted { cause }, runs);
                r.session = Some(self.session);
                r.prediction = prediction;
                return r;
            }
        };
        let opened = Instant::now();
        let s = &self.setup.state;
        s.import(&bases);
        s.hand_over(&inflight);
        for b in &devices {
            s.set_blob(b.clone());
        }
        let started = hook(HookKind::LoadState, self.setup.hooks.load_state(&devices))
            .and_then(|()| self.run_window(Window::Blackout, &mut p, &mut runs))
            .and_then(|ms| self.check_started(&p, bases.len()).map(|()| ms))
            .and_then(|ms| hook(HookKind::ResumeVcpus, self.setup.hooks.resume_vcpus()).map(|()| ms));
        let blackout_ms = match started {
            Ok(ms) => ms,
            Err(cause) => {
                let mut r = self.fence(path, cause, &p, runs, opened, bases.len());
                r.prediction = prediction;
                return r;
            }
        };
        // The guest runs here from now on.
        let unverified = self.unverified();
        if let Err(err) = self.session.send(path, SIDE, Message::Running { blackout_ms, unverified: unverified.clone() }) {
            // The guest runs here regardless; the source, not hearing, stays stopped
            // (in doubt) until it asks again.
            tracing::warn!(error = %err, "could not confirm running to the source");
        }
        let downtime = opened.elapsed();
        let outcome = match self.run_window(Window::Cleanup, &mut p, &mut runs) {
            Err(cause) => Outcome::CompletedWithCleanupErrors { cause },
            Ok(_) if unverified.is_empty() => Outcome::Completed,
            Ok(_) => Outcome::CompletedUnverified { devices: unverified },
        };
        let mut r = SwitchoverReport::new(outcome, opened, downtime, runs);
        r.bases_carried = bases.len();
        r.running_here = true;
        r.prediction = prediction;
        r.session = Some(self.session);
        r
    }

    /// Every ring started with the base the source read.
    fn check_started(&self, p: &Progress, carried: usize) -> Result<(), SwitchoverError> {
        let plan = &self.setup.plan;
        let sets: Vec<_> = plan.steps().iter().filter(|s| s.kind == StepKind::SetVringBase).collect();
        if carried != sets.len() {
            let what = format!("{carried} ring bases arrived for {} rings", sets.len());
            return Err(SwitchoverError::Invariant { side: SIDE, what });
        }
        for st in sets {
            if p.outcome(st.id) != StepOutcome::Done || self.setup.state.base(st.device, st.ring.unwrap_or(0)).is_none() {
                let what =
                    format!("{} ring {}: not started with a carried base", plan.topology().device(st.device).name, st.ring.unwrap_or(0));
                return Err(SwitchoverError::Invariant { side: SIDE, what });
            }
        }
        Ok(())
    }

    /// Devices whose start was only probed (their backends do not acknowledge).
    fn unverified(&self) -> Vec<DeviceId> {
        let mut v: Vec<DeviceId> = self.setup.plan.steps().iter().filter(|s| s.kind == StepKind::Probe).map(|s| s.device).collect();
        v.dedup();
        v
    }

    /// This side will not run the guest: stop every ring it may have started, give
    /// the storage back, undo its own steps, cut off any device whose ring it could
    /// not stop — then tell the source, which resumes the guest.
    fn fence(
        mut self,
        path: &mut dyn ReturnPath,
        cause: SwitchoverError,
        p: &Progress,
        runs: Vec<RunReport>,
        opened: Instant,
        carried: usize,
    ) -> SwitchoverReport {
        let s = self.setup;
        let rc = &s.recovery;
        let fence = match recipe::fence(&s.plan, p, &rc.opts, &*rc.costs) {
            Ok(plan) => {
                let plan = Arc::new(plan);
                let mut fp = Progress::new(&plan);
                // Every ring that can be stopped is stopped, whatever failed on
                // another device (which is then cut off below).
                let r =
                    self.engine.run_with_policy(&plan, Window::Blackout, rc.actions.clone(), &mut fp, FailurePolicy::ContinueIndependent);
                Some((plan, r))
            }
            Err(e) => {
                tracing::error!(error = %e, "no fence plan");
                None
            }
        };
        // A device whose fence step failed (or that had none) may still run a ring:
        // cut it off before promising anything.
        let mut cut: Vec<DeviceId> = match &fence {
            Some((_, r)) => r.failures.iter().map(|f| f.device).collect(),
            None => s
                .plan
                .steps()
                .iter()
                .filter(|st| st.kind == StepKind::SetVringKick && p.outcome(st.id) != StepOutcome::NotRun)
                .map(|st| st.device)
                .collect(),
        };
        cut.sort();
        cut.dedup();
        for d in cut {
            if !s.actions.abandon(d) {
                tracing::error!(device = %s.plan.topology().device(d).name, "a ring may still run: its backend could not be cut off");
            }
        }
        if let Err(err) = self.session.send(path, SIDE, Message::StartFailed { cause: cause.clone() }) {
            tracing::warn!(error = %err, "could not tell the source the start failed");
        }
        let mut r = SwitchoverReport::new(Outcome::RolledBack { cause }, opened, opened.elapsed(), runs);
        r.fence = fence;
        r.bases_carried = carried;
        r.session = Some(self.session);
        r
    }
}

/// Answers a source that asks, after an in-doubt outcome, whether the guest runs
/// here (from the destination's own report of the switchover).
///
/// # Errors
/// The path failed, or the source sent something else than a query.
pub fn answer_query(report: &mut SwitchoverReport, path: &mut dyn ReturnPath, wait: std::time::Duration) -> Result<(), SwitchoverError> {
    let running = report.running_here;
    let cause = report.outcome.cause().cloned();
    let Some(session) = report.session.as_mut() else {
        return Err(SwitchoverError::Invariant { side: SIDE, what: "no session to answer in".into() });
    };
    match session.recv_after_gap(path, SIDE, Instant::now() + wait, MessageKind::Query)? {
        Message::Query => session.send(path, SIDE, Message::Verdict { running, cause: if running { None } else { cause } }),
        other => Err(SwitchoverError::Unexpected { side: SIDE, waiting_for: MessageKind::Query, got: other.kind() }),
    }
}
