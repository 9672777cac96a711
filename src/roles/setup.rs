//! What a role works on and what it reports: one side's plan, actions and state
//! ([`SideSetup`]), how a switchover ended ([`Outcome`]) and everything it did
//! ([`SwitchoverReport`]); the source's rollback ([`RollbackFn`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::SwitchoverError;
use crate::error::StepError;
use crate::exec::{Progress, RunReport, StepActions};
use crate::ids::{DeviceId, Side, Window};
use crate::plan::Plan;
use crate::state::DeviceState;

/// How a switchover ended.
///
/// ```
/// # mod vmm {
/// #     use std::sync::Arc;
/// #     use switchover::error::StepFailure;
/// #     use switchover::exec::{Completion, Progress, StepActions};
/// #     use switchover::ids::{DeviceId, Side};
/// #     use switchover::plan::Plan;
/// #     use switchover::recipe::{build, rollback, NoCosts, RecipeOptions};
/// #     use switchover::roles::{RollbackPlan, SideSetup};
/// #     use switchover::state::DeviceState;
/// #     use switchover::step::{Step, StepKind};
/// #     use switchover::topology::Topology;
/// #
/// #     /// One side's devices, in memory: the guest left ring `r` of every device at
/// #     /// base `100 + r`; the source reads it, the destination checks it got it.
/// #     pub struct Devices {
/// #         state: Arc<DeviceState>,
/// #         /// A step that fails: its kind, its device, and how.
/// #         fail: Option<(StepKind, DeviceId, StepFailure)>,
/// #     }
/// #     impl StepActions for Devices {
/// #         fn start(&self, step: &Step, done: Completion) {
/// #             if let Some((kind, device, failure)) = &self.fail {
/// #                 if step.kind == *kind && step.device == *device {
/// #                     return done.complete(Err(failure.clone()));
/// #                 }
/// #             }
/// #             let ring = step.ring.unwrap_or(0);
/// #             let base = 100 + ring as u16;
/// #             let r = match step.kind {
/// #                 StepKind::GetVringBase => {
/// #                     self.state.set_base(step.device, ring, base);
/// #                     Ok(())
/// #                 }
/// #                 StepKind::SetVringBase if self.state.base(step.device, ring) != Some(base) => {
/// #                     Err(StepFailure::MissingState { what: format!("the base of ring {ring}") })
/// #                 }
/// #                 _ => Ok(()),
/// #             };
/// #             done.complete(r);
/// #         }
/// #         fn reconnect(&self, _device: DeviceId) -> bool {
/// #             true // a new backend process
/// #         }
/// #         fn recover_base(&self, _device: DeviceId, ring: u32) -> Option<u16> {
/// #             Some(100 + ring as u16) // the used ring's index, read from guest memory
/// #         }
/// #     }
/// #
/// #     /// `side`'s plan of the engine's recipe, on devices of its own.
/// #     pub fn setup(topo: &Arc<Topology>, side: Side, fail: Option<(StepKind, DeviceId, StepFailure)>) -> SideSetup {
/// #         let state = Arc::new(DeviceState::new(topo));
/// #         let plan = Arc::new(build(topo, side, &RecipeOptions::engine(), &NoCosts).unwrap());
/// #         SideSetup { plan, actions: Arc::new(Devices { state: state.clone(), fail }), state }
/// #     }
/// #
/// #     /// The source's rollback: the recipe's rollback plan, on the source's devices.
/// #     pub fn rollback_of(src: &SideSetup) -> impl Fn(&Plan, &Progress, &[DeviceId]) -> RollbackPlan + '_ {
/// #         move |plan: &Plan, progress: &Progress, lost: &[DeviceId]| {
/// #             let rb = rollback(plan, progress, lost, &RecipeOptions::engine(), &NoCosts).ok()?;
/// #             Some((Arc::new(rb), src.actions.clone()))
/// #         }
/// #     }
/// # }
/// # use vmm::{rollback_of, setup};
/// use std::sync::Arc;
/// use switchover::error::StepFailure;
/// use switchover::exec::Engine;
/// use switchover::ids::{DeviceId, Side};
/// use switchover::roles::{run_in_process, Outcome};
/// use switchover::step::StepKind;
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// // blk1's backend crashes while its base is read.
/// let crash = (StepKind::GetVringBase, DeviceId(3), StepFailure::Disconnected);
/// let (src, dst) = (setup(&topo, Side::Source, Some(crash)), setup(&topo, Side::Destination, None));
/// let rep = run_in_process(&src, &dst, &mut Engine::new(2), &mut Engine::new(2), &rollback_of(&src));
/// // The source lost blk1's backend inside the window: it reconnects it and resumes the guest.
/// assert!(matches!(&rep.outcome, Outcome::RolledBack { cause } if cause.device_name() == Some("blk1")));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest runs on the destination.
    Completed,
    /// The destination never became ready; the source was never stopped.
    Aborted {
        /// Why.
        cause: SwitchoverError,
    },
    /// A step failed inside the window; the source's devices were restarted with
    /// the state read from them and the guest resumes on the source.
    RolledBack {
        /// The first failure.
        cause: SwitchoverError,
    },
    /// A step failed and the source could not be fully restarted either.
    Failed {
        /// The first failure.
        cause: SwitchoverError,
        /// What failed during rollback (none: no rollback was tried).
        rollback: Option<StepError>,
    },
    /// The state left the source but the destination did not confirm: it may be
    /// running the guest, so the source does not resume it (never both sides).
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
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::error::{StepError, StepFailure};
    /// use switchover::ids::{Side, StepId};
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::roles::{Outcome, SwitchoverError};
    /// use switchover::topology::Topology;
    /// assert!(Outcome::Completed.cause().is_none());
    /// let topo = Arc::new(Topology::preset("single-net").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// let cause = SwitchoverError::Step(StepError::new(&plan, StepId(1), StepFailure::Disconnected));
    /// assert_eq!(Outcome::InDoubt { cause: cause.clone() }.cause(), Some(&cause));
    /// assert_eq!(cause.device_name(), Some("net0"));
    /// ```
    pub fn cause(&self) -> Option<&SwitchoverError> {
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
    /// use std::sync::Arc;
    /// use switchover::error::{StepError, StepFailure};
    /// use switchover::ids::Side;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::roles::Outcome;
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// assert_eq!(Outcome::Completed.name(), "completed");
    /// let topo = Arc::new(Topology::preset("single-blk").unwrap());
    /// let plan = build(&topo, Side::Destination, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// let mt = plan.steps().iter().find(|s| s.kind == StepKind::SetMemTable).unwrap();
    /// let cause = StepError::new(&plan, mt.id, StepFailure::Abandoned).into();
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
/// use std::sync::Arc;
/// use switchover::exec::{Completion, StepActions};
/// use switchover::ids::Side;
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::roles::SideSetup;
/// use switchover::state::DeviceState;
/// use switchover::step::Step;
/// use switchover::topology::Topology;
/// /// The VMM's devices (a real VMM writes the bases `get_vring_base` reads into `state`).
/// struct Vmm;
/// impl StepActions for Vmm {
///     fn start(&self, _step: &Step, done: Completion) {
///         done.complete(Ok(()));
///     }
/// }
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let setup = SideSetup {
///     plan: Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap()),
///     actions: Arc::new(Vmm),
///     state: Arc::new(DeviceState::new(&topo)),
/// };
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
/// # mod vmm {
/// #     use std::sync::Arc;
/// #     use switchover::error::StepFailure;
/// #     use switchover::exec::{Completion, Progress, StepActions};
/// #     use switchover::ids::{DeviceId, Side};
/// #     use switchover::plan::Plan;
/// #     use switchover::recipe::{build, rollback, NoCosts, RecipeOptions};
/// #     use switchover::roles::{RollbackPlan, SideSetup};
/// #     use switchover::state::DeviceState;
/// #     use switchover::step::{Step, StepKind};
/// #     use switchover::topology::Topology;
/// #
/// #     /// One side's devices, in memory: the guest left ring `r` of every device at
/// #     /// base `100 + r`; the source reads it, the destination checks it got it.
/// #     pub struct Devices {
/// #         state: Arc<DeviceState>,
/// #         /// A step that fails: its kind, its device, and how.
/// #         fail: Option<(StepKind, DeviceId, StepFailure)>,
/// #     }
/// #     impl StepActions for Devices {
/// #         fn start(&self, step: &Step, done: Completion) {
/// #             if let Some((kind, device, failure)) = &self.fail {
/// #                 if step.kind == *kind && step.device == *device {
/// #                     return done.complete(Err(failure.clone()));
/// #                 }
/// #             }
/// #             let ring = step.ring.unwrap_or(0);
/// #             let base = 100 + ring as u16;
/// #             let r = match step.kind {
/// #                 StepKind::GetVringBase => {
/// #                     self.state.set_base(step.device, ring, base);
/// #                     Ok(())
/// #                 }
/// #                 StepKind::SetVringBase if self.state.base(step.device, ring) != Some(base) => {
/// #                     Err(StepFailure::MissingState { what: format!("the base of ring {ring}") })
/// #                 }
/// #                 _ => Ok(()),
/// #             };
/// #             done.complete(r);
/// #         }
/// #         fn reconnect(&self, _device: DeviceId) -> bool {
/// #             true // a new backend process
/// #         }
/// #         fn recover_base(&self, _device: DeviceId, ring: u32) -> Option<u16> {
/// #             Some(100 + ring as u16) // the used ring's index, read from guest memory
/// #         }
/// #     }
/// #
/// #     /// `side`'s plan of the engine's recipe, on devices of its own.
/// #     pub fn setup(topo: &Arc<Topology>, side: Side, fail: Option<(StepKind, DeviceId, StepFailure)>) -> SideSetup {
/// #         let state = Arc::new(DeviceState::new(topo));
/// #         let plan = Arc::new(build(topo, side, &RecipeOptions::engine(), &NoCosts).unwrap());
/// #         SideSetup { plan, actions: Arc::new(Devices { state: state.clone(), fail }), state }
/// #     }
/// #
/// #     /// The source's rollback: the recipe's rollback plan, on the source's devices.
/// #     pub fn rollback_of(src: &SideSetup) -> impl Fn(&Plan, &Progress, &[DeviceId]) -> RollbackPlan + '_ {
/// #         move |plan: &Plan, progress: &Progress, lost: &[DeviceId]| {
/// #             let rb = rollback(plan, progress, lost, &RecipeOptions::engine(), &NoCosts).ok()?;
/// #             Some((Arc::new(rb), src.actions.clone()))
/// #         }
/// #     }
/// # }
/// # use vmm::{rollback_of, setup};
/// use std::sync::Arc;
/// use switchover::error::StepFailure;
/// use switchover::exec::Engine;
/// use switchover::ids::{DeviceId, Side};
/// use switchover::roles::{run_in_process, Outcome, RollbackFn};
/// use switchover::step::StepKind;
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let eio = (StepKind::GetVringBase, DeviceId(0), StepFailure::Backend { message: "EIO".into() });
/// let (src, dst) = (setup(&topo, Side::Source, Some(eio)), setup(&topo, Side::Destination, None));
/// // A rollback builder that has no plan: the outcome is still a rollback, with no run.
/// let no_plan: &RollbackFn<'_> = &|_plan, _progress, _lost| None;
/// let rep = run_in_process(&src, &dst, &mut Engine::new(1), &mut Engine::new(1), no_plan);
/// assert!(matches!(rep.outcome, Outcome::RolledBack { .. }));
/// assert!(rep.rollback.is_none());
/// ```
pub type RollbackFn<'a> = dyn Fn(&Plan, &Progress, &[DeviceId]) -> RollbackPlan + 'a;

/// A rollback plan and the actions that perform it, if one can be made.
///
/// ```
/// use std::sync::Arc;
/// use switchover::exec::{Completion, Progress, StepActions};
/// use switchover::ids::{DeviceId, Side};
/// use switchover::plan::Plan;
/// use switchover::recipe::{build, rollback, NoCosts, RecipeOptions};
/// use switchover::roles::RollbackPlan;
/// use switchover::step::Step;
/// use switchover::topology::Topology;
/// struct Inline;
/// impl StepActions for Inline {
///     fn start(&self, _step: &Step, done: Completion) {
///         done.complete(Ok(()));
///     }
/// }
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let src = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
/// let builder = |plan: &Plan, progress: &Progress, lost: &[DeviceId]| -> RollbackPlan {
///     let rb = rollback(plan, progress, lost, &RecipeOptions::engine(), &NoCosts).ok()?;
///     Some((Arc::new(rb), Arc::new(Inline)))
/// };
/// // Nothing has run yet: the rollback restarts no ring.
/// let (plan, _actions) = builder(&src, &Progress::new(&src), &[]).unwrap();
/// assert_eq!(plan.side(), Side::Source);
/// assert!(plan.is_empty());
/// ```
pub type RollbackPlan = Option<(Arc<Plan>, Arc<dyn StepActions>)>;

/// Devices of the source whose state is unknown after a failure: a step of theirs
/// failed (error, garbage, time-out, closed channel), so the ring may or may not
/// have stopped. Rollback reconnects their backends and replays the whole start
/// sequence with the bases captured (or recovered from guest memory).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use switchover::error::{StepError, StepFailure};
/// use switchover::ids::{DeviceId, Side};
/// use switchover::plan::Plan;
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::roles::lost_devices;
/// use switchover::step::StepKind;
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let src = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
/// let dst = build(&topo, Side::Destination, &RecipeOptions::engine(), &NoCosts).unwrap();
/// // Ring 0's base could not be read (source) or set (destination) in time.
/// let fail = |plan: &Plan, device: &str| {
///     let d = topo.device_by_name(device).unwrap().id;
///     let base = |k: &StepKind| matches!(k, StepKind::GetVringBase | StepKind::SetVringBase);
///     let s = plan.steps().iter().find(|s| s.device == d && s.ring == Some(0) && base(&s.kind)).unwrap();
///     StepError::new(plan, s.id, StepFailure::Timeout { after: Duration::from_secs(1) })
/// };
/// let failures = [fail(&src, "blk1"), fail(&src, "net0"), fail(&src, "blk1"), fail(&dst, "net1")];
/// // Sorted, deduplicated, and only this plan's side.
/// assert_eq!(lost_devices(&src, &failures), [DeviceId(0), DeviceId(3)]);
/// ```
pub fn lost_devices(plan: &Plan, failures: &[StepError]) -> Vec<DeviceId> {
    let mut v: Vec<DeviceId> = failures.iter().filter(|f| f.side == plan.side()).map(|f| f.device).collect();
    v.sort();
    v.dedup();
    v
}

/// Everything a switchover did.
///
/// ```
/// # mod vmm {
/// #     use std::sync::Arc;
/// #     use switchover::error::StepFailure;
/// #     use switchover::exec::{Completion, Progress, StepActions};
/// #     use switchover::ids::{DeviceId, Side};
/// #     use switchover::plan::Plan;
/// #     use switchover::recipe::{build, rollback, NoCosts, RecipeOptions};
/// #     use switchover::roles::{RollbackPlan, SideSetup};
/// #     use switchover::state::DeviceState;
/// #     use switchover::step::{Step, StepKind};
/// #     use switchover::topology::Topology;
/// #
/// #     /// One side's devices, in memory: the guest left ring `r` of every device at
/// #     /// base `100 + r`; the source reads it, the destination checks it got it.
/// #     pub struct Devices {
/// #         state: Arc<DeviceState>,
/// #         /// A step that fails: its kind, its device, and how.
/// #         fail: Option<(StepKind, DeviceId, StepFailure)>,
/// #     }
/// #     impl StepActions for Devices {
/// #         fn start(&self, step: &Step, done: Completion) {
/// #             if let Some((kind, device, failure)) = &self.fail {
/// #                 if step.kind == *kind && step.device == *device {
/// #                     return done.complete(Err(failure.clone()));
/// #                 }
/// #             }
/// #             let ring = step.ring.unwrap_or(0);
/// #             let base = 100 + ring as u16;
/// #             let r = match step.kind {
/// #                 StepKind::GetVringBase => {
/// #                     self.state.set_base(step.device, ring, base);
/// #                     Ok(())
/// #                 }
/// #                 StepKind::SetVringBase if self.state.base(step.device, ring) != Some(base) => {
/// #                     Err(StepFailure::MissingState { what: format!("the base of ring {ring}") })
/// #                 }
/// #                 _ => Ok(()),
/// #             };
/// #             done.complete(r);
/// #         }
/// #         fn reconnect(&self, _device: DeviceId) -> bool {
/// #             true // a new backend process
/// #         }
/// #         fn recover_base(&self, _device: DeviceId, ring: u32) -> Option<u16> {
/// #             Some(100 + ring as u16) // the used ring's index, read from guest memory
/// #         }
/// #     }
/// #
/// #     /// `side`'s plan of the engine's recipe, on devices of its own.
/// #     pub fn setup(topo: &Arc<Topology>, side: Side, fail: Option<(StepKind, DeviceId, StepFailure)>) -> SideSetup {
/// #         let state = Arc::new(DeviceState::new(topo));
/// #         let plan = Arc::new(build(topo, side, &RecipeOptions::engine(), &NoCosts).unwrap());
/// #         SideSetup { plan, actions: Arc::new(Devices { state: state.clone(), fail }), state }
/// #     }
/// #
/// #     /// The source's rollback: the recipe's rollback plan, on the source's devices.
/// #     pub fn rollback_of(src: &SideSetup) -> impl Fn(&Plan, &Progress, &[DeviceId]) -> RollbackPlan + '_ {
/// #         move |plan: &Plan, progress: &Progress, lost: &[DeviceId]| {
/// #             let rb = rollback(plan, progress, lost, &RecipeOptions::engine(), &NoCosts).ok()?;
/// #             Some((Arc::new(rb), src.actions.clone()))
/// #         }
/// #     }
/// # }
/// # use vmm::{rollback_of, setup};
/// use std::sync::Arc;
/// use switchover::exec::Engine;
/// use switchover::ids::Side;
/// use switchover::roles::{run_in_process, Outcome};
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let (src, dst) = (setup(&topo, Side::Source, None), setup(&topo, Side::Destination, None));
/// let rep = run_in_process(&src, &dst, &mut Engine::new(2), &mut Engine::new(2), &rollback_of(&src));
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
    /// # mod vmm {
    /// #     use std::sync::Arc;
    /// #     use switchover::error::StepFailure;
    /// #     use switchover::exec::{Completion, Progress, StepActions};
    /// #     use switchover::ids::{DeviceId, Side};
    /// #     use switchover::plan::Plan;
    /// #     use switchover::recipe::{build, rollback, NoCosts, RecipeOptions};
    /// #     use switchover::roles::{RollbackPlan, SideSetup};
    /// #     use switchover::state::DeviceState;
    /// #     use switchover::step::{Step, StepKind};
    /// #     use switchover::topology::Topology;
    /// #
    /// #     /// One side's devices, in memory: the guest left ring `r` of every device at
    /// #     /// base `100 + r`; the source reads it, the destination checks it got it.
    /// #     pub struct Devices {
    /// #         state: Arc<DeviceState>,
    /// #         /// A step that fails: its kind, its device, and how.
    /// #         fail: Option<(StepKind, DeviceId, StepFailure)>,
    /// #     }
    /// #     impl StepActions for Devices {
    /// #         fn start(&self, step: &Step, done: Completion) {
    /// #             if let Some((kind, device, failure)) = &self.fail {
    /// #                 if step.kind == *kind && step.device == *device {
    /// #                     return done.complete(Err(failure.clone()));
    /// #                 }
    /// #             }
    /// #             let ring = step.ring.unwrap_or(0);
    /// #             let base = 100 + ring as u16;
    /// #             let r = match step.kind {
    /// #                 StepKind::GetVringBase => {
    /// #                     self.state.set_base(step.device, ring, base);
    /// #                     Ok(())
    /// #                 }
    /// #                 StepKind::SetVringBase if self.state.base(step.device, ring) != Some(base) => {
    /// #                     Err(StepFailure::MissingState { what: format!("the base of ring {ring}") })
    /// #                 }
    /// #                 _ => Ok(()),
    /// #             };
    /// #             done.complete(r);
    /// #         }
    /// #         fn reconnect(&self, _device: DeviceId) -> bool {
    /// #             true // a new backend process
    /// #         }
    /// #         fn recover_base(&self, _device: DeviceId, ring: u32) -> Option<u16> {
    /// #             Some(100 + ring as u16) // the used ring's index, read from guest memory
    /// #         }
    /// #     }
    /// #
    /// #     /// `side`'s plan of the engine's recipe, on devices of its own.
    /// #     pub fn setup(topo: &Arc<Topology>, side: Side, fail: Option<(StepKind, DeviceId, StepFailure)>) -> SideSetup {
    /// #         let state = Arc::new(DeviceState::new(topo));
    /// #         let plan = Arc::new(build(topo, side, &RecipeOptions::engine(), &NoCosts).unwrap());
    /// #         SideSetup { plan, actions: Arc::new(Devices { state: state.clone(), fail }), state }
    /// #     }
    /// #
    /// #     /// The source's rollback: the recipe's rollback plan, on the source's devices.
    /// #     pub fn rollback_of(src: &SideSetup) -> impl Fn(&Plan, &Progress, &[DeviceId]) -> RollbackPlan + '_ {
    /// #         move |plan: &Plan, progress: &Progress, lost: &[DeviceId]| {
    /// #             let rb = rollback(plan, progress, lost, &RecipeOptions::engine(), &NoCosts).ok()?;
    /// #             Some((Arc::new(rb), src.actions.clone()))
    /// #         }
    /// #     }
    /// # }
    /// # use vmm::{rollback_of, setup};
    /// use std::sync::Arc;
    /// use switchover::exec::Engine;
    /// use switchover::ids::{Side, Window};
    /// use switchover::roles::run_in_process;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let (src, dst) = (setup(&topo, Side::Source, None), setup(&topo, Side::Destination, None));
    /// let rep = run_in_process(&src, &dst, &mut Engine::new(2), &mut Engine::new(2), &rollback_of(&src));
    /// let (stop, start) = (rep.phase(Side::Source, Window::Blackout).unwrap(), rep.phase(Side::Destination, Window::Blackout).unwrap());
    /// assert!(stop + start <= rep.downtime);
    /// ```
    pub fn phase(&self, side: Side, w: Window) -> Option<Duration> {
        self.runs.iter().find(|r| r.side == side && r.window == w).map(|r| r.wall)
    }
}
