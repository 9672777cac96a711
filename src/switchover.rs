//! Both sides of a switchover, in one state machine: prepare (destination first),
//! ready-ack, the blackout window (source stops, state crosses, destination
//! starts), then cleanup; rollback of the source if anything fails before the
//! destination runs.
//!
//! Downtime is measured from the source's first stop step to the destination's
//! last start step, and reported per phase.
//!
//! # Examples
//!
//! ```
//! use switchover::strategy::{run, SimConfig, Strategy};
//! use switchover::topology::Topology;
//! let r = run(&SimConfig::new(Topology::preset("small").unwrap()).scale(0.05), Strategy::Engine);
//! assert_eq!(r.outcome, switchover::switchover::Outcome::Completed);
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::StepError;
use crate::exec::{Engine, Progress, RunReport, StepActions};
use crate::plan::Plan;
use crate::state::DeviceState;
use crate::step::{Side, StepKind, Window};
use crate::topology::DeviceId;

/// How a switchover ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// The guest runs on the destination.
    Completed,
    /// The destination never became ready; the source was never stopped.
    Aborted {
        /// Why.
        cause: StepError,
    },
    /// A step failed inside the window; the source's devices were restarted with
    /// the state read from them and the guest resumes on the source.
    RolledBack {
        /// The first failure.
        cause: StepError,
    },
    /// A step failed and the source could not be fully restarted either.
    Failed {
        /// The first failure.
        cause: StepError,
        /// What failed during rollback.
        rollback: StepError,
    },
    /// The destination runs the guest, but its cleanup or the source's failed.
    CompletedWithCleanupErrors {
        /// The first cleanup failure.
        cause: StepError,
    },
}

impl Outcome {
    /// `completed`, `aborted`, `rolled_back`, `failed` or `completed_with_cleanup_errors`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Aborted { .. } => "aborted",
            Outcome::RolledBack { .. } => "rolled_back",
            Outcome::Failed { .. } => "failed",
            Outcome::CompletedWithCleanupErrors { .. } => "completed_with_cleanup_errors",
        }
    }
}

/// One side's plan, the actions that perform it, and its captured state.
pub struct SideSetup {
    /// The plan.
    pub plan: Arc<Plan>,
    /// What performs its steps.
    pub actions: Arc<dyn StepActions>,
    /// The side's device state (source: written by `get_vring_base`; destination:
    /// read by `set_vring_base`).
    pub state: Arc<DeviceState>,
}

impl std::fmt::Debug for SideSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SideSetup").field("side", &self.plan.side()).field("steps", &self.plan.len()).finish()
    }
}

/// Builds the source's rollback plan and its actions from what the source ran and
/// the devices whose backends were lost (and have been reconnected).
pub type RollbackFn<'a> = dyn Fn(&Plan, &Progress, &[DeviceId]) -> Option<(Arc<Plan>, Arc<dyn StepActions>)> + 'a;

/// Devices of the source whose state is unknown after a failure: a step of theirs
/// failed (error, garbage, time-out, closed channel), so the ring may or may not
/// have stopped. Rollback reconnects their backends and replays the whole start
/// sequence with the bases captured (or recovered from guest memory).
pub fn lost_devices(plan: &Plan, failures: &[StepError]) -> Vec<DeviceId> {
    let mut v: Vec<DeviceId> = failures
        .iter()
        .filter(|f| f.side == plan.side())
        .filter_map(|f| plan.topology().device_by_name(&f.device).map(|d| d.id))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Everything a switchover did.
#[derive(Debug)]
pub struct SwitchoverReport {
    /// How it ended.
    pub outcome: Outcome,
    /// Window opening (source stops) to window closing (destination runs).
    pub downtime: Duration,
    /// When the window opened.
    pub window_opened: Instant,
    /// Each engine run, in order (side, window).
    pub runs: Vec<RunReport>,
    /// The rollback run, if one happened.
    pub rollback: Option<(Arc<Plan>, RunReport)>,
    /// How many vring bases crossed to the destination.
    pub bases_carried: usize,
}

impl SwitchoverReport {
    /// Duration of one phase, if it ran.
    pub fn phase(&self, side: Side, w: Window) -> Option<Duration> {
        self.runs.iter().find(|r| r.side == side && r.window == w).map(|r| r.wall)
    }
}

/// Runs a whole switchover with both sides in this process, each on its own engine
/// (as two VMMs would); the return path is a function call here.
pub fn run_in_process(src: &SideSetup, dst: &SideSetup, src_engine: &Engine, dst_engine: &Engine, rollback: &RollbackFn<'_>) -> SwitchoverReport {
    let mut runs = Vec::new();
    let mut sp = Progress::new(&src.plan);
    let mut dp = Progress::new(&dst.plan);
    let report = |outcome, opened, downtime, runs, rollback, carried| SwitchoverReport {
        outcome,
        downtime,
        window_opened: opened,
        runs,
        rollback,
        bases_carried: carried,
    };
    // Prepare: the destination connects and sets up everything it can while the
    // guest still runs; the source pre-warms.
    let r = dst_engine.run(&dst.plan, Window::Prepare, dst.actions.clone(), &mut dp);
    let dst_failed = r.failure.clone();
    runs.push(r);
    if let Some(cause) = dst_failed {
        let now = Instant::now();
        return report(Outcome::Aborted { cause }, now, Duration::ZERO, runs, None, 0);
    }
    let r = src_engine.run(&src.plan, Window::Prepare, src.actions.clone(), &mut sp);
    let src_failed = r.failure.clone();
    runs.push(r);
    if let Some(cause) = src_failed {
        let now = Instant::now();
        return report(Outcome::Aborted { cause }, now, Duration::ZERO, runs, None, 0);
    }
    // The destination is ready (switchover-ack): open the window.
    let opened = Instant::now();
    let r = src_engine.run(&src.plan, Window::Blackout, src.actions.clone(), &mut sp);
    let mut failure = r.failure.clone();
    runs.push(r);
    let mut carried = 0;
    if failure.is_none() {
        let bases = src.state.export();
        carried = bases.len();
        dst.state.import(&bases);
        let r = dst_engine.run(&dst.plan, Window::Blackout, dst.actions.clone(), &mut dp);
        failure = r.failure.clone();
        runs.push(r);
    }
    if let Some(cause) = failure {
        // All or nothing: restart the source with the state read from it. Source
        // backends that were lost are reconnected, and the bases their rings never
        // reported are recovered from guest memory.
        let src_failures: Vec<StepError> = runs.iter().filter(|r| r.side == Side::Source).flat_map(|r| r.failures.clone()).collect();
        let lost = lost_devices(&src.plan, &src_failures);
        for &d in &lost {
            src.actions.reconnect(d);
            for s in src.plan.steps().iter().filter(|s| s.device == d && s.kind == StepKind::GetVringBase) {
                let r = s.ring.expect("per-ring step");
                if src.state.base(d, r).is_none() {
                    if let Some(b) = src.actions.recover_base(d, r) {
                        src.state.set_base(d, r, b);
                    }
                }
            }
        }
        let rb = rollback(&src.plan, &sp, &lost).map(|(plan, actions)| {
            let mut p = Progress::new(&plan);
            let r = src_engine.run(&plan, Window::Blackout, actions, &mut p);
            (plan, r)
        });
        let downtime = opened.elapsed();
        let outcome = match rb.as_ref().and_then(|(_, r)| r.failure.clone()) {
            None => Outcome::RolledBack { cause },
            Some(rollback) => Outcome::Failed { cause, rollback },
        };
        return report(outcome, opened, downtime, runs, rb, carried);
    }
    let downtime = opened.elapsed();
    // The destination runs the guest: cleanup, outside the window.
    let r = src_engine.run(&src.plan, Window::Cleanup, src.actions.clone(), &mut sp);
    let mut cleanup_err = r.failure.clone();
    runs.push(r);
    let r = dst_engine.run(&dst.plan, Window::Cleanup, dst.actions.clone(), &mut dp);
    cleanup_err = cleanup_err.or(r.failure.clone());
    runs.push(r);
    let outcome = match cleanup_err {
        None => Outcome::Completed,
        Some(cause) => Outcome::CompletedWithCleanupErrors { cause },
    };
    report(outcome, opened, downtime, runs, None, carried)
}
