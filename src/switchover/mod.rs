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
///
/// ```
/// use switchover::strategy::{run, SimConfig, Strategy};
/// use switchover::switchover::Outcome;
/// use switchover::topology::Topology;
/// let cfg = SimConfig::new(Topology::preset("small").unwrap())
///     .scale(0.02)
///     .faults(vec!["crash:get_vring_base:blk1".parse().unwrap()]);
/// let r = run(&cfg, Strategy::Engine);
/// // The source lost blk1's backend inside the window: it reconnects it and resumes the guest.
/// assert!(matches!(&r.outcome, Outcome::RolledBack { cause } if cause.device == "blk1"));
/// ```
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
    ///
    /// ```
    /// use switchover::error::{StepError, StepFailure};
    /// use switchover::step::Side;
    /// use switchover::switchover::Outcome;
    /// assert!(Outcome::Completed.cause().is_none());
    /// let cause = StepError {
    ///     side: Side::Source,
    ///     device: "net0".into(),
    ///     ring: Some(0),
    ///     step: "get_vring_base".into(),
    ///     failure: StepFailure::Disconnected,
    /// };
    /// assert_eq!(Outcome::InDoubt { cause: cause.clone() }.cause(), Some(&cause));
    /// ```
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
    ///
    /// ```
    /// use switchover::error::{StepError, StepFailure};
    /// use switchover::step::Side;
    /// use switchover::switchover::Outcome;
    /// assert_eq!(Outcome::Completed.name(), "completed");
    /// let cause = StepError {
    ///     side: Side::Destination,
    ///     device: "blk0".into(),
    ///     ring: None,
    ///     step: "set_mem_table".into(),
    ///     failure: StepFailure::Abandoned,
    /// };
    /// assert_eq!(Outcome::Aborted { cause }.name(), "aborted");
    /// ```
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
///
/// ```
/// use switchover::step::Side;
/// use switchover::strategy::{SimConfig, SimRole};
/// use switchover::topology::Topology;
/// let role = SimRole::new(&SimConfig::new(Topology::preset("small").unwrap()), Side::Source);
/// let setup = &role.setup;
/// assert_eq!(setup.plan.side(), Side::Source);
/// assert_eq!(setup.state.captured(), 0); // filled in by `get_vring_base` during the window
/// ```
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
///
/// ```
/// use switchover::exec::Engine;
/// use switchover::step::Side;
/// use switchover::strategy::{SimConfig, SimRole};
/// use switchover::switchover::{run_in_process, Outcome, RollbackFn};
/// use switchover::topology::Topology;
/// let cfg = SimConfig::new(Topology::preset("small").unwrap())
///     .scale(0.02)
///     .faults(vec!["error:get_vring_base:net0".parse().unwrap()]);
/// let (src, dst) = (SimRole::new(&cfg, Side::Source), SimRole::new(&cfg, Side::Destination));
/// // A rollback builder that has no plan: the outcome is still a rollback, with no run.
/// let no_plan: &RollbackFn<'_> = &|_plan, _progress, _lost| None;
/// let rep = run_in_process(&src.setup, &dst.setup, &Engine::new(1), &Engine::new(1), no_plan);
/// assert!(matches!(rep.outcome, Outcome::RolledBack { .. }));
/// assert!(rep.rollback.is_none());
/// ```
pub type RollbackFn<'a> = dyn Fn(&Plan, &Progress, &[DeviceId]) -> RollbackPlan + 'a;

/// A rollback plan and the actions that perform it, if one can be made.
///
/// ```
/// use switchover::exec::Progress;
/// use switchover::step::Side;
/// use switchover::strategy::{SimConfig, SimRole};
/// use switchover::switchover::RollbackPlan;
/// use switchover::topology::Topology;
/// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
/// let src = SimRole::new(&cfg, Side::Source);
/// let rollback = src.rollback();
/// // Nothing has run yet: the rollback restarts no ring.
/// let rp: RollbackPlan = rollback(&src.setup.plan, &Progress::new(&src.setup.plan), &[]);
/// let (plan, _actions) = rp.unwrap();
/// assert_eq!(plan.side(), Side::Source);
/// ```
pub type RollbackPlan = Option<(Arc<Plan>, Arc<dyn StepActions>)>;

/// Devices of the source whose state is unknown after a failure: a step of theirs
/// failed (error, garbage, time-out, closed channel), so the ring may or may not
/// have stopped. Rollback reconnects their backends and replays the whole start
/// sequence with the bases captured (or recovered from guest memory).
///
/// ```
/// use std::sync::Arc;
/// use switchover::error::{StepError, StepFailure};
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::step::Side;
/// use switchover::switchover::lost_devices;
/// use switchover::topology::{DeviceId, Topology};
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
/// let fail = |side, device: &str| StepError {
///     side,
///     device: device.into(),
///     ring: Some(0),
///     step: "get_vring_base".into(),
///     failure: StepFailure::Timeout { after: std::time::Duration::from_secs(1) },
/// };
/// let failures = [fail(Side::Source, "blk1"), fail(Side::Source, "net0"), fail(Side::Source, "blk1"), fail(Side::Destination, "net1")];
/// // Sorted, deduplicated, and only this plan's side.
/// assert_eq!(lost_devices(&plan, &failures), [DeviceId(0), DeviceId(3)]);
/// ```
pub fn lost_devices(plan: &Plan, failures: &[StepError]) -> Vec<DeviceId> {
    let mut v: Vec<DeviceId> =
        failures.iter().filter(|f| f.side == plan.side()).filter_map(|f| plan.topology().device_by_name(&f.device).map(|d| d.id)).collect();
    v.sort();
    v.dedup();
    v
}

/// Everything a switchover did.
///
/// ```
/// use switchover::exec::Engine;
/// use switchover::step::Side;
/// use switchover::strategy::{SimConfig, SimRole};
/// use switchover::switchover::{run_in_process, Outcome};
/// use switchover::topology::Topology;
/// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
/// let (src, dst) = (SimRole::new(&cfg, Side::Source), SimRole::new(&cfg, Side::Destination));
/// let rep = run_in_process(&src.setup, &dst.setup, &Engine::new(2), &Engine::new(2), &src.rollback());
/// assert_eq!(rep.outcome, Outcome::Completed);
/// assert_eq!(rep.bases_carried, 10); // one per ring
/// assert!(rep.rollback.is_none());
/// assert_eq!(rep.runs.len(), 6); // three windows on each side
/// ```
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
    ///
    /// ```
    /// use switchover::exec::Engine;
    /// use switchover::step::{Side, Window};
    /// use switchover::strategy::{SimConfig, SimRole};
    /// use switchover::switchover::run_in_process;
    /// use switchover::topology::Topology;
    /// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
    /// let (src, dst) = (SimRole::new(&cfg, Side::Source), SimRole::new(&cfg, Side::Destination));
    /// let rep = run_in_process(&src.setup, &dst.setup, &Engine::new(2), &Engine::new(2), &src.rollback());
    /// let (stop, start) = (rep.phase(Side::Source, Window::Blackout).unwrap(), rep.phase(Side::Destination, Window::Blackout).unwrap());
    /// assert!(stop + start <= rep.downtime);
    /// ```
    pub fn phase(&self, side: Side, w: Window) -> Option<Duration> {
        self.runs.iter().find(|r| r.side == side && r.window == w).map(|r| r.wall)
    }
}

/// Runs a whole switchover with both roles in this process, each on its own engine
/// and thread (as two VMMs would), joined by an in-process [`path::ChannelPath`].
/// The report holds both sides' runs; downtime is the source's measure.
///
/// ```
/// use switchover::exec::Engine;
/// use switchover::step::Side;
/// use switchover::strategy::{SimConfig, SimRole};
/// use switchover::switchover::{run_in_process, Outcome};
/// use switchover::topology::Topology;
/// let cfg = SimConfig::new(Topology::preset("small").unwrap())
///     .scale(0.02)
///     .reply_ack(true) // so that the destination sees a start message's error
///     .faults(vec!["error:set_vring_kick:net1".parse().unwrap()]);
/// let (src, dst) = (SimRole::new(&cfg, Side::Source), SimRole::new(&cfg, Side::Destination));
/// let rep = run_in_process(&src.setup, &dst.setup, &Engine::new(2), &Engine::new(2), &src.rollback());
/// // The destination could not start: the source resumes the guest, and says why.
/// assert!(matches!(&rep.outcome, Outcome::RolledBack { cause } if cause.side == Side::Destination));
/// ```
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
