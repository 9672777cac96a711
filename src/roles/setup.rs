//! What a role works on and what it reports: one side's plan, actions, state and
//! VMM hooks ([`SideSetup`]), its deadlines ([`Deadlines`]), how a switchover ended
//! ([`Outcome`]) and everything it did ([`SwitchoverReport`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::SwitchoverError;
use super::hooks::{NoHooks, VmmHooks};
use crate::error::StepError;
use crate::exec::{RunReport, StepActions};
use crate::ids::{DeviceId, Side, Window};
use crate::plan::Plan;
use crate::recipe::{CostModel, NoCosts, RecipeOptions};
use crate::state::DeviceState;

/// How long each role waits for the other.
///
/// ```
/// use std::time::Duration;
/// use switchover::roles::Deadlines;
/// let d = Deadlines { running: Duration::from_secs(5), ..Deadlines::default() };
/// assert!(d.ready > d.running);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Destination: how long to wait for the source's configuration snapshot.
    pub config: Duration,
    /// Source: how long to wait for the destination's ready-ack.
    pub ready: Duration,
    /// Destination: how long to wait for the source's state (or abort); past it,
    /// the destination tells the source it will not run the guest.
    pub state: Duration,
    /// Source: how long to wait for the destination's running (or start-failed).
    pub running: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            config: Duration::from_secs(120),
            ready: Duration::from_secs(120),
            state: Duration::from_secs(120),
            running: Duration::from_secs(30),
        }
    }
}

/// What a role needs to recover from a failure: the recipe the plan was built
/// with (the source's rollback and the destination's fence are built from it), the
/// costs, and the actions that perform the recovery (a VMM may want other actions
/// there: no fault injection in a test rig, say).
#[derive(Clone)]
pub struct Recovery {
    /// The recipe options the side's plan was built with.
    pub opts: RecipeOptions,
    /// The cost model.
    pub costs: Arc<dyn CostModel + Send + Sync>,
    /// What performs the rollback or fence steps.
    pub actions: Arc<dyn StepActions>,
}

impl std::fmt::Debug for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovery").field("opts", &self.opts).finish()
    }
}

/// One side's plan, the actions that perform it, its state, the VMM's hooks and
/// how it recovers. A setup runs one switchover: a second run is refused
/// ([`SwitchoverError::AlreadyRan`]) — a finished switchover never registers its
/// notifiers again on a destination whose guest runs.
///
/// ```
/// use std::sync::Arc;
/// use switchover::exec::{Completion, StepActions};
/// use switchover::ids::Side;
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::roles::SideSetup;
/// use switchover::state::DeviceState;
/// use switchover::step::Step;
/// use switchover::topology::Topology;
/// struct Inline;
/// impl StepActions for Inline {
///     fn start(&self, _s: &Step, done: Completion) {
///         done.complete(Ok(()));
///     }
/// }
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap());
/// let setup = SideSetup::new(plan, Arc::new(Inline), Arc::new(DeviceState::new(&topo)));
/// assert_eq!(setup.plan.side(), Side::Source);
/// assert_eq!(setup.state.captured(), 0); // filled in by `get_vring_base` during the window
/// ```
pub struct SideSetup {
    /// The plan.
    pub plan: Arc<Plan>,
    /// What performs its steps.
    pub actions: Arc<dyn StepActions>,
    /// The side's device state (source: written by `get_vring_base` and the
    /// `save_state` hook; destination: read by `set_vring_base`, the `load_state`
    /// hook receives its devices' state).
    pub state: Arc<DeviceState>,
    /// The VMM's hooks.
    pub hooks: Arc<dyn VmmHooks>,
    /// How the side recovers from a failure.
    pub recovery: Recovery,
    claimed: AtomicBool,
}

impl std::fmt::Debug for SideSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SideSetup").field("side", &self.plan.side()).field("steps", &self.plan.len()).finish()
    }
}

impl SideSetup {
    /// A setup with no hooks, recovering with the engine's recipe, no costs and
    /// the same actions.
    pub fn new(plan: Arc<Plan>, actions: Arc<dyn StepActions>, state: Arc<DeviceState>) -> SideSetup {
        let recovery = Recovery { opts: RecipeOptions::engine(), costs: Arc::new(NoCosts), actions: actions.clone() };
        SideSetup { plan, actions, state, hooks: Arc::new(NoHooks), recovery, claimed: AtomicBool::new(false) }
    }
    /// The VMM's hooks.
    pub fn with_hooks(mut self, hooks: Arc<dyn VmmHooks>) -> SideSetup {
        self.hooks = hooks;
        self
    }
    /// How the side recovers: the recipe options its plan was built with, the
    /// costs, and the actions that perform the rollback (source) or fence
    /// (destination).
    pub fn with_recovery(
        mut self,
        opts: RecipeOptions,
        costs: Arc<dyn CostModel + Send + Sync>,
        actions: Arc<dyn StepActions>,
    ) -> SideSetup {
        self.recovery = Recovery { opts, costs, actions };
        self
    }
    /// Claims the setup for its one switchover.
    pub(super) fn claim(&self) -> Result<(), SwitchoverError> {
        match self.claimed.swap(true, Ordering::AcqRel) {
            false => Ok(()),
            true => Err(SwitchoverError::AlreadyRan { side: self.plan.side() }),
        }
    }
}

/// How a switchover ended.
///
/// ```
/// use switchover::ids::DeviceId;
/// use switchover::roles::Outcome;
/// assert_eq!(Outcome::CompletedUnverified { devices: vec![DeviceId(2)] }.name(), "completed_unverified");
/// assert!(Outcome::Completed.guest_on_destination());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The guest runs on the destination; every ring was started with the base read
    /// on the source and every backend acknowledged it.
    Completed,
    /// The guest runs on the destination, but these devices' backends do not
    /// acknowledge requests: their start could not be verified beyond a probe.
    CompletedUnverified {
        /// The devices whose start was not acknowledged.
        devices: Vec<DeviceId>,
    },
    /// The destination never became ready; the source was never stopped.
    Aborted {
        /// Why.
        cause: SwitchoverError,
    },
    /// Something failed inside the window; the source's devices were restarted with
    /// the state read from them and the guest resumes on the source.
    RolledBack {
        /// The first failure.
        cause: SwitchoverError,
    },
    /// Something failed and the source could not be fully restarted either.
    Failed {
        /// The first failure.
        cause: SwitchoverError,
        /// What failed during rollback (none: no rollback was tried).
        rollback: Option<SwitchoverError>,
    },
    /// The state left the source but the destination did not confirm: it may be
    /// running the guest, so the source does not resume it (never both sides).
    /// The report's [`SwitchoverReport::unsettled`] can settle it later.
    InDoubt {
        /// What went silent.
        cause: SwitchoverError,
    },
    /// The destination runs the guest, but its cleanup or the source's failed.
    CompletedWithCleanupErrors {
        /// The first cleanup failure.
        cause: SwitchoverError,
    },
}

impl Outcome {
    /// The first failure, if any.
    pub fn cause(&self) -> Option<&SwitchoverError> {
        match self {
            Outcome::Completed | Outcome::CompletedUnverified { .. } => None,
            Outcome::Aborted { cause }
            | Outcome::RolledBack { cause }
            | Outcome::Failed { cause, .. }
            | Outcome::InDoubt { cause }
            | Outcome::CompletedWithCleanupErrors { cause } => Some(cause),
        }
    }

    /// `completed`, `completed_unverified`, `aborted`, `rolled_back`, `failed`,
    /// `in_doubt` or `completed_with_cleanup_errors`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::CompletedUnverified { .. } => "completed_unverified",
            Outcome::Aborted { .. } => "aborted",
            Outcome::RolledBack { .. } => "rolled_back",
            Outcome::Failed { .. } => "failed",
            Outcome::InDoubt { .. } => "in_doubt",
            Outcome::CompletedWithCleanupErrors { .. } => "completed_with_cleanup_errors",
        }
    }

    /// Whether the guest runs on the destination after it.
    pub fn guest_on_destination(&self) -> bool {
        matches!(self, Outcome::Completed | Outcome::CompletedUnverified { .. } | Outcome::CompletedWithCleanupErrors { .. })
    }

    /// Whether the guest runs on the source after it.
    pub fn guest_on_source(&self) -> bool {
        matches!(self, Outcome::Aborted { .. } | Outcome::RolledBack { .. })
    }
}

/// Devices of a side whose state is unknown after a failure: a step of theirs
/// failed (error, garbage, time-out, closed channel), so a ring may or may not
/// have stopped. The source's rollback reconnects their backends and replays the
/// whole start sequence with the bases captured (or recovered from guest memory).
pub fn lost_devices(plan: &Plan, failures: &[StepError]) -> Vec<DeviceId> {
    let mut v: Vec<DeviceId> = failures.iter().filter(|f| f.side == plan.side()).map(|f| f.device).collect();
    v.sort();
    v.dedup();
    v
}

/// Everything a switchover did, as one role saw it.
#[derive(Debug)]
pub struct SwitchoverReport {
    /// How it ended.
    pub outcome: Outcome,
    /// Window opening (the source stops) to window closing (the destination runs,
    /// or the source resumed); zero if the window never opened.
    pub downtime: Duration,
    /// When the window opened (or the report was made, if it never did).
    pub window_opened: Instant,
    /// Each engine run of the plan, in order (side, window).
    pub runs: Vec<RunReport>,
    /// The source's rollback run, if one happened.
    pub rollback: Option<(Arc<Plan>, RunReport)>,
    /// The destination's fence run, if one happened.
    pub fence: Option<(Arc<Plan>, RunReport)>,
    /// How many vring bases crossed to the destination.
    pub bases_carried: usize,
    /// The destination's predicted share of the downtime (its blackout window and
    /// its part of the hand-over), as its ready-ack carried it (ms).
    pub destination_estimate_ms: Option<f64>,
    /// This side's prediction, made before the window opened: on the source, with
    /// the destination's estimate, the predicted downtime
    /// ([`crate::predict::Prediction::downtime`]) to set beside
    /// [`SwitchoverReport::downtime`].
    pub prediction: Option<crate::predict::Prediction>,
    /// The destination's own prediction, where both roles ran in one process
    /// ([`super::run_in_process`]).
    pub destination_prediction: Option<crate::predict::Prediction>,
    /// Destination: whether it runs the guest (what it answers to a query).
    pub running_here: bool,
    /// Source, when the outcome is in doubt: what settles it.
    pub unsettled: Option<Unsettled>,
    /// The session, to go on talking to the other role (a destination answers a
    /// source's query with it).
    pub session: Option<super::session::Session>,
}

impl SwitchoverReport {
    /// A report of a switchover whose window never opened.
    pub(super) fn not_opened(outcome: Outcome, runs: Vec<RunReport>) -> SwitchoverReport {
        SwitchoverReport::new(outcome, Instant::now(), Duration::ZERO, runs)
    }
    pub(super) fn new(outcome: Outcome, window_opened: Instant, downtime: Duration, runs: Vec<RunReport>) -> SwitchoverReport {
        SwitchoverReport {
            outcome,
            downtime,
            window_opened,
            runs,
            rollback: None,
            fence: None,
            bases_carried: 0,
            destination_estimate_ms: None,
            prediction: None,
            destination_prediction: None,
            running_here: false,
            unsettled: None,
            session: None,
        }
    }
    /// The predicted downtime beside the measured one, and the prediction's error
    /// (predicted − measured, relative to measured), if the window opened and a
    /// prediction with both sides' shares was made.
    pub fn prediction_error(&self) -> Option<(Duration, f64)> {
        let predicted = self.prediction.as_ref()?.downtime()?;
        if self.downtime.is_zero() {
            return None;
        }
        Some((predicted, (predicted.as_secs_f64() - self.downtime.as_secs_f64()) / self.downtime.as_secs_f64()))
    }
    /// Duration of one window of one side, if it ran.
    pub fn phase(&self, side: Side, w: Window) -> Option<Duration> {
        self.runs.iter().find(|r| r.side == side && r.window == w).map(|r| r.wall)
    }
}

/// What settles an in-doubt switchover: the source stopped, its state left, and the
/// destination did not say whether it runs the guest. Ask again when the path is
/// back: the destination answers from what it did (it keeps its verdict):
/// [`Unsettled::settle`].
pub struct Unsettled {
    pub(super) progress: crate::exec::Progress,
    pub(super) session: super::session::Session,
    pub(super) opened: Instant,
    pub(super) carried: usize,
    pub(super) deadlines: Deadlines,
}

impl std::fmt::Debug for Unsettled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unsettled").field("session", &self.session.id()).finish()
    }
}
