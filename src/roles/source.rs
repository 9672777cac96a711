//! The source role, in typed states: [`Source`] (created) → [`Source::prepare`] →
//! [`PreparedSource`] (prepare window run, precopy done) →
//! [`PreparedSource::wait_ready`] → [`ReadySource`] (the destination is ready and
//! has said how long its start should take) → [`ReadySource::switch_over`] → a
//! [`SwitchoverReport`]. Each state is consumed by the next, and the setup is
//! claimed by the first: a switchover cannot run twice.
//!
//! The source stops the guest only after the destination's ready-ack; it resumes
//! it only when the destination says it will not run it (`start_failed`,
//! `will_not_run`) or the state never left; otherwise — the state left and the
//! destination fell silent — the outcome is in doubt and nothing resumes (never
//! both sides), until [`Unsettled::settle`] asks the destination again.

use std::time::{Duration, Instant};

use super::error::{HookKind, MessageKind, SwitchoverError};
use super::forecast;
use super::message::Message;
use super::path::ReturnPath;
use super::session::Session;
use super::setup::{lost_devices, Deadlines, Outcome, SideSetup, SwitchoverReport, Unsettled};
use crate::error::StepError;
use crate::exec::{Engine, Progress, RunReport, StepOutcome};
use crate::ids::{Side, Window};
use crate::predict::Prediction;
use crate::recipe;
use crate::step::StepKind;

const SIDE: Side = Side::Source;

/// The source role, created. See the module docs for its states.
pub struct Source<'a> {
    setup: &'a SideSetup,
    engine: &'a mut Engine,
    session: Session,
    deadlines: Deadlines,
}

impl std::fmt::Debug for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("setup", &self.setup).field("session", &self.session.id()).finish()
    }
}

/// What a source did so far, carried from state to state.
struct Done {
    progress: Progress,
    runs: Vec<RunReport>,
    /// Its share of the downtime, predicted after its prepare window (before precopy).
    prediction: Option<Prediction>,
}

/// The source after its prepare window and precopy, before the destination is ready.
pub struct PreparedSource<'a> {
    src: Source<'a>,
    done: Done,
}

/// The source once the destination is ready: the guest still runs. The VMM may
/// read the destination's estimate before deciding to stop the guest.
pub struct ReadySource<'a> {
    src: Source<'a>,
    done: Done,
    estimate_ms: Option<f64>,
}

impl std::fmt::Debug for PreparedSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedSource").field("src", &self.src).finish()
    }
}

impl std::fmt::Debug for ReadySource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadySource").field("src", &self.src).field("estimate_ms", &self.estimate_ms).finish()
    }
}

fn run_window(src: &mut Source<'_>, w: Window, done: &mut Done) -> Result<Duration, SwitchoverError> {
    let r = src.engine.run(&src.setup.plan, w, src.setup.actions.clone(), &mut done.progress);
    let out = match &r.failure {
        None => Ok(r.wall),
        Some(f) => Err(SwitchoverError::Step(f.clone())),
    };
    done.runs.push(r);
    out
}

fn hook<T>(hook: HookKind, r: Result<T, super::error::HookError>) -> Result<T, SwitchoverError> {
    r.map_err(|source| SwitchoverError::Hook { side: SIDE, hook, source })
}

impl<'a> Source<'a> {
    /// The source of `setup`, on `engine` (whose workers exist before the window
    /// opens), in `session`.
    pub fn new(setup: &'a SideSetup, engine: &'a mut Engine, session: Session, deadlines: Deadlines) -> Source<'a> {
        Source { setup, engine, session, deadlines }
    }

    /// The whole switchover: [`Source::prepare`], [`PreparedSource::wait_ready`],
    /// [`ReadySource::switch_over`].
    pub fn run(self, path: &mut dyn ReturnPath) -> SwitchoverReport {
        match self.prepare(path).and_then(|p| p.wait_ready(path)) {
            Ok(ready) => ready.switch_over(path),
            Err(report) => *report,
        }
    }

    fn aborted(mut self, path: &mut dyn ReturnPath, cause: SwitchoverError, runs: Vec<RunReport>) -> SwitchoverReport {
        // Best effort: the destination must not start (nothing was stopped here).
        let _ = self.session.send(path, SIDE, Message::Abort { cause: cause.clone() });
        let mut r = SwitchoverReport::not_opened(Outcome::Aborted { cause }, runs);
        r.session = Some(self.session);
        r
    }

    /// Migration start: claims the setup, sends each device's configuration to the
    /// destination (the `snapshot_config` hook), runs the prepare window (dirty
    /// logging starts), then the `precopy` hook (RAM passes while the guest runs).
    ///
    /// # Errors
    /// The report of an aborted switchover (nothing was stopped), naming why.
    pub fn prepare(mut self, path: &mut dyn ReturnPath) -> Result<PreparedSource<'a>, Box<SwitchoverReport>> {
        if let Err(cause) = self.setup.claim() {
            return Err(Box::new(SwitchoverReport::not_opened(Outcome::Aborted { cause }, vec![])));
        }
        let mut done = Done { progress: Progress::new(&self.setup.plan), runs: Vec::new(), prediction: None };
        let devices = match hook(HookKind::SnapshotConfig, self.setup.hooks.snapshot_config()) {
            Ok(d) => d,
            Err(cause) => return Err(Box::new(self.aborted(path, cause, done.runs))),
        };
        if let Err(cause) = self.session.send(path, SIDE, Message::Config { devices }) {
            return Err(Box::new(self.aborted(path, cause, done.runs)));
        }
        if let Err(cause) = run_window(&mut self, Window::Prepare, &mut done) {
            return Err(Box::new(self.aborted(path, cause, done.runs)));
        }
        // Its share of the downtime, measured on its own backends, before the
        // destination's estimate arrives, and before precopy: the last RAM pass is
        // followed by the window at once (the guest's memory keeps changing in
        // between), and the measurement takes a few milliseconds, more on a loaded
        // machine.
        let prediction = forecast::predict_side(self.setup, self.engine, &done.runs);
        self.setup.hooks.predicted(&prediction);
        done.prediction = Some(prediction);
        if let Err(cause) = hook(HookKind::Precopy, self.setup.hooks.precopy()) {
            return Err(Box::new(self.aborted(path, cause, done.runs)));
        }
        Ok(PreparedSource { src: self, done })
    }
}

impl<'a> PreparedSource<'a> {
    /// Waits for the destination's ready-ack (switchover-ack).
    ///
    /// # Errors
    /// The report of an aborted switchover: the destination said it is not ready,
    /// fell silent, or sent something else (nothing was stopped).
    pub fn wait_ready(mut self, path: &mut dyn ReturnPath) -> Result<ReadySource<'a>, Box<SwitchoverReport>> {
        let deadline = Instant::now() + self.src.deadlines.ready;
        match self.src.session.recv(path, SIDE, deadline, MessageKind::Ready) {
            Ok(Message::Ready { estimate_ms, .. }) => {
                let mut done = self.done;
                if let Some(p) = done.prediction.as_mut() {
                    p.other = estimate(estimate_ms);
                }
                Ok(ReadySource { src: self.src, done, estimate_ms })
            }
            Ok(Message::NotReady { cause }) => {
                let mut r = SwitchoverReport::not_opened(Outcome::Aborted { cause }, self.done.runs);
                r.session = Some(self.src.session);
                Err(Box::new(r))
            }
            Ok(other) => {
                let cause = SwitchoverError::Unexpected { side: SIDE, waiting_for: MessageKind::Ready, got: other.kind() };
                Err(Box::new(self.src.aborted(path, cause, self.done.runs)))
            }
            Err(cause) => Err(Box::new(self.src.aborted(path, cause, self.done.runs))),
        }
    }
}

/// A duration in milliseconds from the other side, if it is one.
fn estimate(ms: Option<f64>) -> Option<Duration> {
    ms.filter(|m| m.is_finite() && *m >= 0.0 && *m < 1e9).map(|m| Duration::from_secs_f64(m / 1e3))
}

impl PreparedSource<'_> {
    /// This side's share of the downtime, predicted after its prepare window
    /// (without the destination's share yet: see [`ReadySource::prediction`]).
    pub fn prediction(&self) -> Option<&Prediction> {
        self.done.prediction.as_ref()
    }
}

impl ReadySource<'_> {
    /// The destination's predicted share of the downtime (its blackout window and
    /// its part of the hand-over), as its ready-ack carried it.
    pub fn destination_estimate(&self) -> Option<Duration> {
        estimate(self.estimate_ms)
    }

    /// The downtime predicted before the window opens: this side's blackout
    /// window and hand-over, measured on its own backends, and the destination's
    /// estimate of its share ([`Prediction::downtime`]). A VMM reads it before it
    /// decides to stop the guest.
    pub fn prediction(&self) -> Option<&Prediction> {
        self.done.prediction.as_ref()
    }

    /// Opens the window: the `stop_vcpus` hook, the blackout window (devices
    /// stopped, log synced, final RAM pass), the `save_state` hook, the state sent;
    /// then waits for the destination and cleans up — or rolls back.
    pub fn switch_over(self, path: &mut dyn ReturnPath) -> SwitchoverReport {
        let ReadySource { mut src, mut done, estimate_ms } = self;
        let opened = Instant::now();
        let stopped = (|| {
            hook(HookKind::StopVcpus, src.setup.hooks.stop_vcpus())?;
            run_window(&mut src, Window::Blackout, &mut done)?;
            check_bases_read(&src, &done)?;
            hook(HookKind::SaveState, src.setup.hooks.save_state())
        })();
        let devices = match stopped {
            Ok(d) => d,
            Err(cause) => {
                let _ = src.session.send(path, SIDE, Message::Abort { cause: cause.clone() });
                return roll_back(src, cause, done, opened, 0, estimate_ms);
            }
        };
        let s = &src.setup.state;
        for b in &devices {
            s.set_blob(b.clone());
        }
        let bases = s.export();
        let carried = bases.len();
        let state = Message::State { bases, inflight: s.inflight(), devices };
        if let Err(cause) = src.session.send(path, SIDE, state) {
            // Not delivered whole (the path's contract): the destination cannot run the guest.
            return roll_back(src, cause, done, opened, 0, estimate_ms);
        }
        let deadline = Instant::now() + src.deadlines.running;
        match src.session.recv(path, SIDE, deadline, MessageKind::Running) {
            Ok(Message::Running { unverified, .. }) => {
                let downtime = opened.elapsed();
                clean_up(src, done, opened, downtime, carried, unverified, estimate_ms)
            }
            Ok(Message::StartFailed { cause } | Message::WillNotRun { cause }) => roll_back(src, cause, done, opened, carried, estimate_ms),
            Ok(other) => {
                let cause = SwitchoverError::Unexpected { side: SIDE, waiting_for: MessageKind::Running, got: other.kind() };
                in_doubt(src, cause, done, opened, carried, estimate_ms)
            }
            Err(cause) => in_doubt(src, cause, done, opened, carried, estimate_ms),
        }
    }
}

/// Every ring whose base the plan reads has one before the state leaves.
fn check_bases_read(src: &Source<'_>, done: &Done) -> Result<(), SwitchoverError> {
    let plan = &src.setup.plan;
    for st in plan.steps().iter().filter(|s| s.kind == StepKind::GetVringBase) {
        let r = st.ring.unwrap_or(0);
        if done.progress.outcome(st.id) != StepOutcome::Done || src.setup.state.base(st.device, r).is_none() {
            let what = format!("{} ring {r}: no base was read", plan.topology().device(st.device).name);
            return Err(SwitchoverError::Invariant { side: SIDE, what });
        }
    }
    Ok(())
}

/// The guest runs on the destination: the source's cleanup window, outside the
/// window.
fn clean_up(
    mut src: Source<'_>,
    mut done: Done,
    opened: Instant,
    downtime: Duration,
    carried: usize,
    unverified: Vec<crate::ids::DeviceId>,
    estimate_ms: Option<f64>,
) -> SwitchoverReport {
    let outcome = match run_window(&mut src, Window::Cleanup, &mut done) {
        Err(cause) => Outcome::CompletedWithCleanupErrors { cause },
        Ok(_) if unverified.is_empty() => Outcome::Completed,
        Ok(_) => Outcome::CompletedUnverified { devices: unverified },
    };
    let mut r = SwitchoverReport::new(outcome, opened, downtime, done.runs);
    r.bases_carried = carried;
    r.destination_estimate_ms = estimate_ms;
    r.prediction = done.prediction;
    r.session = Some(src.session);
    r
}

fn in_doubt(
    src: Source<'_>,
    cause: SwitchoverError,
    done: Done,
    opened: Instant,
    carried: usize,
    estimate_ms: Option<f64>,
) -> SwitchoverReport {
    let mut r = SwitchoverReport::new(Outcome::InDoubt { cause }, opened, opened.elapsed(), done.runs);
    r.bases_carried = carried;
    r.destination_estimate_ms = estimate_ms;
    r.prediction = done.prediction;
    r.unsettled = Some(Unsettled { progress: done.progress, session: src.session, opened, carried, deadlines: src.deadlines });
    r
}

/// All or nothing: restart the source with the state read from it, then resume the
/// guest. Backends of devices whose steps failed are reconnected, and the bases
/// their rings never reported are recovered from guest memory.
fn roll_back(
    src: Source<'_>,
    cause: SwitchoverError,
    done: Done,
    opened: Instant,
    carried: usize,
    estimate_ms: Option<f64>,
) -> SwitchoverReport {
    let Source { setup: s, engine, session, .. } = src;
    let failures: Vec<StepError> = done.runs.iter().flat_map(|r| r.failures.clone()).collect();
    let lost = lost_devices(&s.plan, &failures);
    for &d in &lost {
        s.actions.reconnect(d);
        for st in s.plan.steps().iter().filter(|x| x.device == d && x.kind == StepKind::GetVringBase) {
            let r = st.ring.unwrap_or(0);
            if s.state.base(d, r).is_none() {
                if let Some(b) = s.actions.recover_base(d, r) {
                    s.state.set_base(d, r, b);
                }
            }
        }
    }
    let rc = &s.recovery;
    let (plan, run) = match recipe::rollback(&s.plan, &done.progress, &lost, &rc.opts, &*rc.costs) {
        Ok(plan) => {
            let plan = std::sync::Arc::new(plan);
            let mut rp = Progress::new(&plan);
            let r = engine.run(&plan, Window::Blackout, rc.actions.clone(), &mut rp);
            (Some(plan), Some(r))
        }
        Err(e) => {
            tracing::error!(error = %e, "no rollback plan");
            (None, None)
        }
    };
    let failed = match (&plan, &run) {
        (None, _) => Some(SwitchoverError::Invariant { side: SIDE, what: "no rollback plan could be built".into() }),
        (_, Some(r)) => r.failure.clone().map(SwitchoverError::Step),
        _ => None,
    };
    let resumed = match failed {
        // The devices could not all restart: the guest does not resume on them.
        Some(e) => Err(e),
        None => hook(HookKind::ResumeVcpus, s.hooks.resume_vcpus()),
    };
    let outcome = match resumed {
        Ok(()) => Outcome::RolledBack { cause },
        Err(e) => Outcome::Failed { cause, rollback: Some(e) },
    };
    let mut r = SwitchoverReport::new(outcome, opened, opened.elapsed(), done.runs);
    r.rollback = plan.zip(run);
    r.bases_carried = carried;
    r.destination_estimate_ms = estimate_ms;
    r.prediction = done.prediction;
    r.session = Some(session);
    r
}

impl Unsettled {
    /// Asks the destination (over `path`, a new connection if the old one broke)
    /// whether it runs the guest, and settles: cleanup if it does, rollback if it
    /// does not; in doubt still if it does not answer within `wait`.
    pub fn settle(self, setup: &SideSetup, engine: &mut Engine, path: &mut dyn ReturnPath, wait: Duration) -> SwitchoverReport {
        let Unsettled { progress, mut session, opened, carried, deadlines } = self;
        let runs = Vec::new();
        let asked = session
            .send(path, SIDE, Message::Query)
            .and_then(|()| session.recv_after_gap(path, SIDE, Instant::now() + wait, MessageKind::Verdict));
        let src = Source { setup, engine, session, deadlines };
        let done = Done { progress, runs, prediction: None };
        match asked {
            Ok(Message::Verdict { running: true, .. }) => clean_up(src, done, opened, opened.elapsed(), carried, vec![], None),
            Ok(Message::Verdict { running: false, cause }) => {
                let cause =
                    cause.unwrap_or(SwitchoverError::Invariant { side: Side::Destination, what: "it does not run the guest".into() });
                roll_back(src, cause, done, opened, carried, None)
            }
            Ok(other) => {
                let cause = SwitchoverError::Unexpected { side: SIDE, waiting_for: MessageKind::Verdict, got: other.kind() };
                in_doubt(src, cause, done, opened, carried, None)
            }
            Err(cause) => in_doubt(src, cause, done, opened, carried, None),
        }
    }
}
