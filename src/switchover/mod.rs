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

pub mod path;
pub mod roles;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use roles::{Deadlines, Destination, Source};

use crate::error::StepError;
use crate::exec::{Engine, Progress, RunReport, StepActions};
use crate::plan::Plan;
use crate::state::DeviceState;
use crate::step::{Side, Window};
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
    /// The state left the source but the destination did not confirm: it may be
    /// running the guest, so the source does not resume it (never both sides).
    InDoubt {
        /// What went silent.
        cause: StepError,
    },
    /// The destination runs the guest, but its cleanup or the source's failed.
    CompletedWithCleanupErrors {
        /// The first cleanup failure.
        cause: StepError,
    },
}

impl Outcome {
    /// The first failure, if any.
    pub fn cause(&self) -> Option<&StepError> {
        match self {
            Outcome::Completed => None,
            Outcome::Aborted { cause }
            | Outcome::RolledBack { cause }
            | Outcome::Failed { cause, .. }
            | Outcome::InDoubt { cause }
            | Outcome::CompletedWithCleanupErrors { cause } => Some(cause),
        }
    }

    /// `completed`, `aborted`, `rolled_back`, `failed`, `in_doubt` or `completed_with_cleanup_errors`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Aborted { .. } => "aborted",
            Outcome::RolledBack { .. } => "rolled_back",
            Outcome::Failed { .. } => "failed",
            Outcome::InDoubt { .. } => "in_doubt",
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
pub type RollbackFn<'a> = dyn Fn(&Plan, &Progress, &[DeviceId]) -> RollbackPlan + 'a;

/// A rollback plan and the actions that perform it, if one can be made.
pub type RollbackPlan = Option<(Arc<Plan>, Arc<dyn StepActions>)>;

/// Devices of the source whose state is unknown after a failure: a step of theirs
/// failed (error, garbage, time-out, closed channel), so the ring may or may not
/// have stopped. Rollback reconnects their backends and replays the whole start
/// sequence with the bases captured (or recovered from guest memory).
pub fn lost_devices(plan: &Plan, failures: &[StepError]) -> Vec<DeviceId> {
    let mut v: Vec<DeviceId> =
        failures.iter().filter(|f| f.side == plan.side()).filter_map(|f| plan.topology().device_by_name(&f.device).map(|d| d.id)).collect();
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

/// Runs a whole switchover with both roles in this process, each on its own engine
/// and thread (as two VMMs would), joined by an in-process [`path::ChannelPath`].
/// The report holds both sides' runs; downtime is the source's measure.
pub fn run_in_process(
    src: &SideSetup,
    dst: &SideSetup,
    src_engine: &Engine,
    dst_engine: &Engine,
    rollback: &RollbackFn<'_>,
) -> SwitchoverReport {
    let (mut a, mut b) = path::channel_pair();
    let deadlines = Deadlines::default();
    let (mut s, d) = std::thread::scope(|sc| {
        let h = sc.spawn(move || Destination { setup: dst, engine: dst_engine, deadlines }.run(&mut b));
        let s = Source { setup: src, engine: src_engine, deadlines, rollback }.run(&mut a);
        drop(a);
        (s, h.join().expect("destination role panicked"))
    });
    s.runs.extend(d.runs);
    s.runs.sort_by_key(|r| r.started_at);
    // Where the destination saw the failure first, its cause is the one to name.
    if let (Outcome::RolledBack { .. }, Outcome::RolledBack { cause }) = (&s.outcome, &d.outcome) {
        if cause.side == Side::Destination {
            s.outcome = Outcome::RolledBack { cause: cause.clone() };
        }
    }
    if let Outcome::Aborted { cause } = &d.outcome {
        if matches!(s.outcome, Outcome::Aborted { .. }) && cause.device != "return-path" {
            s.outcome = Outcome::Aborted { cause: cause.clone() };
        }
    }
    s
}
