//! Today's ways of stopping and starting devices at switchover, beside the engine,
//! on the same plans and the same [`StepActions`](switchover::exec::StepActions):
//!
//! * `serial` — QEMU before 2023: one device after another, every step inside the
//!   window, each request waited for before the next, each notifier and each MSI
//!   route committed on its own;
//! * `pool` — the 2021 RFC: one task per device on a thread pool, every step inside
//!   the window;
//! * `qemu` — QEMU today: `serial`, with each device's host notifiers in one
//!   memory-map transaction and its MSI routes committed once per device;
//! * `engine` — the `switchover` engine: the minimal-window plan, both roles.
//!
//! Every strategy leaves the same record: the core's per-window
//! [`RunReport`] of each step's lane, start, end and
//! outcome, kept with the plan it ran ([`WindowRun`]). Everything else is a view
//! built from those after the window: [`timed_steps`] here, tables and pictures in
//! the `switchover-report` crate.
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use switchover::ids::Side;
//! use switchover::topology::Topology;
//! use switchover_baseline::{execute, InstantDevices, Strategy};
//!
//! let topo = Arc::new(Topology::preset("small").unwrap());
//! for s in Strategy::ALL {
//!     let opts = s.recipe();
//!     let (src, dst) = (InstantDevices::setup(&topo, Side::Source, &opts), InstantDevices::setup(&topo, Side::Destination, &opts));
//!     let e = execute(s, 2, &src, &dst);
//!     assert_eq!(e.outcome.name(), "completed", "{}", s.name());
//!     assert!(e.windows.iter().all(|w| w.report.ok()));
//! }
//! ```

#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

mod chains;
mod instant;
mod steps;

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchover::exec::{Engine, RunReport};
use switchover::ids::{Side, Window};
use switchover::plan::{LowerBound, Plan};
use switchover::predict::Prediction;
use switchover::recipe::RecipeOptions;
use switchover::roles::{run_in_process, HookError, HookKind, Outcome, SideSetup, SwitchoverError};

pub use chains::{run_chains, run_one};
pub use instant::InstantDevices;
pub use steps::{timed_steps, TimedStep};

/// Default number of workers (the engine's caller lane is one more).
///
/// ```
/// assert_eq!(switchover_baseline::DEFAULT_WORKERS, 8);
/// ```
pub const DEFAULT_WORKERS: usize = 8;

/// A way of running a switchover.
///
/// ```
/// use switchover_baseline::Strategy;
/// assert_eq!(Strategy::Serial.lanes(8), 1);
/// assert_eq!(Strategy::Qemu.lanes(8), 1);
/// assert_eq!(Strategy::Pool.lanes(8), 8);
/// assert_eq!(Strategy::Engine.lanes(8), 9); // workers + the caller lane
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Strategy {
    /// QEMU before 2023: one device after another, everything in the window, no
    /// batching.
    Serial,
    /// The 2021 RFC: one task per device on a pool, everything in the window.
    Pool,
    /// QEMU today: one device after another, everything in the window, each
    /// device's host notifiers in one transaction and its routes in one commit.
    Qemu,
    /// The `switchover` engine.
    Engine,
}

impl Strategy {
    /// All of them, in report order.
    ///
    /// ```
    /// use switchover_baseline::Strategy;
    /// let names: Vec<_> = Strategy::ALL.iter().map(|s| s.name()).collect();
    /// assert_eq!(names, ["serial", "pool", "qemu", "engine"]);
    /// ```
    pub const ALL: [Strategy; 4] = [Strategy::Serial, Strategy::Pool, Strategy::Qemu, Strategy::Engine];

    /// Lower-case name.
    ///
    /// ```
    /// use switchover_baseline::Strategy;
    /// assert_eq!(Strategy::Engine.name(), "engine");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Serial => "serial",
            Strategy::Pool => "pool",
            Strategy::Qemu => "qemu",
            Strategy::Engine => "engine",
        }
    }

    /// The strategy of this name.
    ///
    /// ```
    /// use switchover_baseline::Strategy;
    /// assert_eq!(Strategy::parse("pool"), Some(Strategy::Pool));
    /// assert_eq!(Strategy::parse("fast"), None);
    /// ```
    pub fn parse(name: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The recipe options its plans are built with: today's VMMs put every step
    /// in the window; the engine only what must be there.
    ///
    /// ```
    /// use switchover::recipe::{NotifierBatch, WindowPolicy};
    /// use switchover_baseline::Strategy;
    /// assert_eq!(Strategy::Serial.recipe().policy, WindowPolicy::AllInBlackout);
    /// assert_eq!(Strategy::Qemu.recipe().notifier_batch, NotifierBatch::PerDevice);
    /// assert_eq!(Strategy::Engine.recipe().policy, WindowPolicy::Minimal);
    /// ```
    pub fn recipe(self) -> RecipeOptions {
        match self {
            Strategy::Serial | Strategy::Pool => RecipeOptions::baseline(),
            Strategy::Qemu => RecipeOptions::qemu(),
            Strategy::Engine => RecipeOptions::engine(),
        }
    }

    /// How many lanes run steps with `workers` workers.
    ///
    /// ```
    /// use switchover_baseline::Strategy;
    /// assert_eq!(Strategy::Pool.lanes(0), 1); // a pool has at least one thread
    /// ```
    pub fn lanes(self, workers: usize) -> usize {
        match self {
            Strategy::Serial | Strategy::Qemu => 1,
            Strategy::Pool => workers.max(1),
            Strategy::Engine => workers + 1,
        }
    }
}

/// One window one side ran: the plan and the engine's record of it.
///
/// ```
/// use std::sync::Arc;
/// use switchover::exec::{Completion, Engine, Progress, StepActions};
/// use switchover::ids::{Side, Window};
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::step::Step;
/// use switchover::topology::Topology;
/// use switchover_baseline::WindowRun;
/// struct Inline;
/// impl StepActions for Inline {
///     fn start(&self, _step: &Step, done: Completion) {
///         done.complete(Ok(()));
///     }
/// }
/// let topo = Arc::new(Topology::preset("single-net").unwrap());
/// let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap());
/// let report = Engine::new(1).run(&plan, Window::Blackout, Arc::new(Inline), &mut Progress::new(&plan));
/// let w = WindowRun { plan, report, rollback: false, fence: false };
/// assert_eq!((w.side(), w.window()), (Side::Source, Window::Blackout));
/// ```
#[derive(Debug, Clone)]
pub struct WindowRun {
    /// The plan it ran.
    pub plan: Arc<Plan>,
    /// The engine's record: each started step's lane, start, end and outcome.
    pub report: RunReport,
    /// Whether it was the source's rollback.
    pub rollback: bool,
    /// Whether it was the destination's fence (its started rings stopped before
    /// it told the source the start failed).
    pub fence: bool,
}

impl WindowRun {
    /// The side.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use switchover::exec::{Completion, Engine, Progress, StepActions};
    /// # use switchover::ids::{Side, Window};
    /// # use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// # use switchover::step::Step;
    /// # use switchover::topology::Topology;
    /// # use switchover_baseline::WindowRun;
    /// # struct Inline;
    /// # impl StepActions for Inline { fn start(&self, _s: &Step, d: Completion) { d.complete(Ok(())) } }
    /// # let topo = Arc::new(Topology::preset("single-net").unwrap());
    /// let plan = Arc::new(build(&topo, Side::Destination, &RecipeOptions::engine(), &NoCosts).unwrap());
    /// let report = Engine::new(0).run(&plan, Window::Prepare, Arc::new(Inline), &mut Progress::new(&plan));
    /// assert_eq!(WindowRun { plan, report, rollback: false, fence: false }.side(), Side::Destination);
    /// ```
    pub fn side(&self) -> Side {
        self.report.side
    }
    /// The window.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use switchover::exec::{Completion, Engine, Progress, StepActions};
    /// # use switchover::ids::{Side, Window};
    /// # use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// # use switchover::step::Step;
    /// # use switchover::topology::Topology;
    /// # use switchover_baseline::WindowRun;
    /// # struct Inline;
    /// # impl StepActions for Inline { fn start(&self, _s: &Step, d: Completion) { d.complete(Ok(())) } }
    /// # let topo = Arc::new(Topology::preset("single-net").unwrap());
    /// let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap());
    /// let report = Engine::new(0).run(&plan, Window::Cleanup, Arc::new(Inline), &mut Progress::new(&plan));
    /// assert_eq!(WindowRun { plan, report, rollback: false, fence: false }.window(), Window::Cleanup);
    /// ```
    pub fn window(&self) -> Window {
        self.report.window
    }
}

/// What a strategy did to the two sides, before any check of the result.
#[derive(Debug)]
pub struct Executed {
    /// How it ended.
    pub outcome: Outcome,
    /// Window opening to the destination running (or the source resumed).
    pub downtime: Duration,
    /// When the window opened (the origin of every report's times).
    pub window_opened: Instant,
    /// Every window each side ran, the rollback and the fence included, in the
    /// order they started.
    pub windows: Vec<WindowRun>,
    /// What the roles predicted before the window opened (the engine only; the
    /// baselines predict nothing).
    pub predicted: Predicted,
}

/// The roles' predictions, each made before the window opened
/// ([`switchover::predict`]): the source's, with the destination's estimate of
/// its own share from its ready-ack (so the predicted downtime), and the
/// destination's own.
///
/// ```
/// use switchover_baseline::Predicted;
/// let p = Predicted::default();
/// assert!(p.downtime().is_none() && p.measured_bound().is_none());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Predicted {
    /// The source's prediction.
    pub source: Option<Prediction>,
    /// The destination's prediction.
    pub destination: Option<Prediction>,
}

impl Predicted {
    /// The predicted downtime: the source's share and the destination's estimate.
    pub fn downtime(&self) -> Option<Duration> {
        self.source.as_ref()?.downtime()
    }
    /// Each side's lower bound from its measured costs
    /// ([`Prediction::lower_bound`]), when both sides predicted.
    pub fn measured_bound(&self) -> Option<LowerBound2> {
        let (s, d) = (self.source.as_ref()?, self.destination.as_ref()?);
        Some(LowerBound2 { src: s.window.lower_bound, dst: d.window.lower_bound })
    }
    /// (predicted − measured) / measured, for a measured `downtime`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover_baseline::Predicted;
    /// assert!(Predicted::default().error(Duration::from_millis(3)).is_none());
    /// ```
    pub fn error(&self, downtime: Duration) -> Option<f64> {
        let p = self.downtime()?;
        (!downtime.is_zero()).then(|| (p.as_secs_f64() - downtime.as_secs_f64()) / downtime.as_secs_f64())
    }
    /// The earlier of the two predictions' instants: both were made before it.
    pub fn made_at(&self) -> Option<Instant> {
        [self.source.as_ref(), self.destination.as_ref()].into_iter().flatten().map(|p| p.made_at.min(p.window.made_at)).min()
    }
}

/// Runs `strategy` over two prepared sides, simulated or real: `serial` and `qemu`
/// (`workers` ignored) and `pool` run each device's chain with every step inside
/// the window (the prepare window's steps — dirty logging started — before it
/// opens) and no rollback, as the harness models today's VMMs, calling the sides'
/// VMM hooks where the roles do; `engine` runs the two roles, each on its own
/// engine of `workers` workers, with their rollback and fence.
///
/// The sides' plans must have been built with [`Strategy::recipe`].
///
/// ```
/// use std::sync::Arc;
/// use switchover::error::StepFailure;
/// use switchover::exec::{Completion, StepActions};
/// use switchover::ids::Side;
/// use switchover::recipe::{build, NoCosts};
/// use switchover::roles::{Outcome, SideSetup};
/// use switchover::state::DeviceState;
/// use switchover::step::{Step, StepKind};
/// use switchover::topology::Topology;
/// use switchover_baseline::{execute, Strategy};
/// /// net1's base cannot be read.
/// struct FailNet1;
/// impl StepActions for FailNet1 {
///     fn start(&self, step: &Step, done: Completion) {
///         let fail = step.kind == StepKind::GetVringBase && step.device.0 == 1;
///         done.complete(if fail { Err(StepFailure::Disconnected) } else { Ok(()) });
///     }
/// }
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let setup = |side| {
///     let plan = Arc::new(build(&topo, side, &Strategy::Serial.recipe(), &NoCosts).unwrap());
///     SideSetup::new(plan, Arc::new(FailNet1), Arc::new(DeviceState::new(&topo)))
/// };
/// let e = execute(Strategy::Serial, 0, &setup(Side::Source), &setup(Side::Destination));
/// // Today's VMMs have no rollback: the VM stays stopped.
/// assert!(matches!(&e.outcome, Outcome::Failed { cause, .. } if cause.device_name() == Some("net1")));
/// ```
pub fn execute(strategy: Strategy, workers: usize, src: &SideSetup, dst: &SideSetup) -> Executed {
    if strategy == Strategy::Engine {
        let mut src_engine = Engine::new(workers);
        let mut dst_engine = Engine::new(workers);
        let rep = run_in_process(src, dst, &mut src_engine, &mut dst_engine);
        let mut windows: Vec<WindowRun> = rep
            .runs
            .into_iter()
            .map(|report| {
                let plan = if report.side == Side::Source { src.plan.clone() } else { dst.plan.clone() };
                WindowRun { plan, report, rollback: false, fence: false }
            })
            .collect();
        if let Some((plan, report)) = rep.fence {
            windows.push(WindowRun { plan, report, rollback: false, fence: true });
        }
        if let Some((plan, report)) = rep.rollback {
            windows.push(WindowRun { plan, report, rollback: true, fence: false });
        }
        let predicted = Predicted { source: rep.prediction, destination: rep.destination_prediction };
        return Executed { outcome: rep.outcome, downtime: rep.downtime, window_opened: rep.window_opened, windows, predicted };
    }
    let lanes = if strategy == Strategy::Pool { workers.max(1) } else { 0 };
    let mut windows = Vec::new();
    // The VMM's hooks at the points the roles call them.
    let hook = |side: Side, hook: HookKind, r: Result<(), HookError>| r.map_err(|source| SwitchoverError::Hook { side, hook, source });
    let mut failure: Option<SwitchoverError> = src
        .hooks
        .snapshot_config()
        .map_err(|source| SwitchoverError::Hook { side: Side::Source, hook: HookKind::SnapshotConfig, source })
        .and_then(|c| hook(Side::Destination, HookKind::StageConfig, dst.hooks.stage_config(&c)))
        .err();
    // Migration start: each side's prepare steps (dirty logging), the guest running.
    for side in [src, dst] {
        if side.plan.in_window(Window::Prepare).next().is_some() && failure.is_none() {
            let run = run_chains(&side.plan, &*side.actions, lanes, Window::Prepare);
            failure = run.failure.clone().map(SwitchoverError::from);
            windows.push(WindowRun { plan: side.plan.clone(), report: run, rollback: false, fence: false });
        }
    }
    if failure.is_none() {
        failure = hook(Side::Source, HookKind::Precopy, src.hooks.precopy()).err();
    }
    let opened = Instant::now();
    if failure.is_none() {
        failure = hook(Side::Source, HookKind::StopVcpus, src.hooks.stop_vcpus()).err();
    }
    if failure.is_none() {
        let src_run = run_chains(&src.plan, &*src.actions, lanes, Window::Blackout);
        failure = src_run.failure.clone().map(SwitchoverError::from);
        windows.push(WindowRun { plan: src.plan.clone(), report: src_run, rollback: false, fence: false });
    }
    if failure.is_none() {
        failure = match src.hooks.save_state() {
            Ok(devices) => hook(Side::Destination, HookKind::LoadState, dst.hooks.load_state(&devices)).err(),
            Err(source) => Some(SwitchoverError::Hook { side: Side::Source, hook: HookKind::SaveState, source }),
        };
    }
    if failure.is_none() {
        dst.state.import(&src.state.export());
        dst.state.hand_over(&src.state.inflight());
        let dst_run = run_chains(&dst.plan, &*dst.actions, lanes, Window::Blackout);
        failure = dst_run.failure.clone().map(SwitchoverError::from);
        windows.push(WindowRun { plan: dst.plan.clone(), report: dst_run, rollback: false, fence: false });
    }
    if failure.is_none() {
        failure = hook(Side::Destination, HookKind::ResumeVcpus, dst.hooks.resume_vcpus()).err();
    }
    let downtime = opened.elapsed();
    // The harness's baselines have no rollback: a failure leaves the VM stopped.
    // Devices only probed after their start (no REPLY_ACK) leave it unverified.
    let mut probed: Vec<_> = dst.plan.steps().iter().filter(|s| s.kind == switchover::step::StepKind::Probe).map(|s| s.device).collect();
    probed.dedup();
    let outcome = match failure {
        None if probed.is_empty() => Outcome::Completed,
        None => Outcome::CompletedUnverified { devices: probed },
        Some(cause) => Outcome::Failed { rollback: None, cause },
    };
    Executed { outcome, downtime, window_opened: opened, windows, predicted: Predicted::default() }
}

/// The lower bound of a strategy's downtime, per side.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use switchover::ids::{DeviceId, Side, Window};
/// use switchover::plan::{PlanBuilder, StepSpec};
/// use switchover::step::StepKind;
/// use switchover::topology::Topology;
/// use switchover_baseline::LowerBound2;
/// let topo: Arc<Topology> = Topology::preset("single-net").unwrap().into();
/// let plan = |side| {
///     let mut b = PlanBuilder::new(topo.clone(), side);
///     b.add(StepSpec::new(DeviceId(0), StepKind::VringDisable, Window::Blackout).cost(Duration::from_millis(2)));
///     b.build().unwrap()
/// };
/// let lb = LowerBound2::of(&plan(Side::Source), &plan(Side::Destination), 4);
/// assert_eq!(lb.total(), Duration::from_millis(4));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowerBound2 {
    /// Source side.
    pub src: LowerBound,
    /// Destination side.
    pub dst: LowerBound,
}

impl LowerBound2 {
    /// The bound of both sides' blackout windows with `lanes` lanes.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use switchover::ids::Side;
    /// # use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// # use switchover::topology::Topology;
    /// # use switchover_baseline::LowerBound2;
    /// let t = Arc::new(Topology::preset("small").unwrap());
    /// let (s, d) = (build(&t, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap(), build(&t, Side::Destination, &RecipeOptions::engine(), &NoCosts).unwrap());
    /// assert!(LowerBound2::of(&s, &d, 2).total().is_zero()); // no costs, no bound
    /// ```
    pub fn of(src: &Plan, dst: &Plan, lanes: usize) -> LowerBound2 {
        LowerBound2 { src: src.lower_bound(Window::Blackout, lanes), dst: dst.lower_bound(Window::Blackout, lanes) }
    }
    /// Sum of the two sides (they run one after the other).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use switchover::ids::Side;
    /// # use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// # use switchover::topology::Topology;
    /// # use switchover_baseline::LowerBound2;
    /// # let t = Arc::new(Topology::preset("small").unwrap());
    /// # let (s, d) = (build(&t, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap(), build(&t, Side::Destination, &RecipeOptions::engine(), &NoCosts).unwrap());
    /// let lb = LowerBound2::of(&s, &d, 2);
    /// assert_eq!(lb.total(), lb.src.bound + lb.dst.bound);
    /// ```
    pub fn total(&self) -> Duration {
        self.src.bound + self.dst.bound
    }
}

/// What became of the guest's block requests in flight at the stop: each must
/// complete exactly once where the guest runs.
///
/// ```
/// use switchover_baseline::IoSummary;
/// let s = IoSummary { submitted: 3, completed_once: 3, ..IoSummary::default() };
/// assert!(s.exact());
/// assert!(!IoSummary { lost: 1, ..s }.exact());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoSummary {
    /// Requests the guest submitted.
    pub submitted: u64,
    /// Completed exactly once where the guest now runs.
    pub completed_once: u64,
    /// Completed twice (on both sides).
    pub completed_twice: u64,
    /// Handed over but never completed, or otherwise lost.
    pub lost: u64,
    /// Never completed anywhere.
    pub never: u64,
    /// Of those completed once: handed over and completed on the destination.
    pub handed_over: u64,
}

impl IoSummary {
    /// Every request completed exactly once, none lost.
    ///
    /// ```
    /// use switchover_baseline::IoSummary;
    /// assert!(IoSummary::default().exact()); // nothing submitted, nothing owed
    /// ```
    pub fn exact(&self) -> bool {
        self.completed_once == self.submitted && self.completed_twice == 0 && self.lost == 0 && self.never == 0
    }
}

/// What the run's own checks found, where the guest runs after it.
///
/// ```
/// use switchover_baseline::Checks;
/// let c = Checks::default();
/// assert!(c.vring_bases_preserved && c.base_mismatches.is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checks {
    /// Every base read on the source reached the destination (completed), or the
    /// source runs again with every base it read (rolled back).
    pub vring_bases_preserved: bool,
    /// Rings whose final base differs from the guest's (device, ring, have, want).
    pub base_mismatches: Vec<(String, u32, Option<u16>, u16)>,
    /// Notifiers whose ioctl was issued more than once in this run.
    pub double_ioctls: usize,
    /// Memory transactions committed and notifier changes they carried (both sides).
    pub transactions: (u64, u64),
    /// What became of the guest's block requests in flight at the stop.
    pub io: IoSummary,
}

impl Default for Checks {
    fn default() -> Self {
        Checks { vring_bases_preserved: true, base_mismatches: vec![], double_ioctls: 0, transactions: (0, 0), io: IoSummary::default() }
    }
}

/// One of a run's safety checks beyond the vring bases (the guest on one side,
/// storage owned by one side, the destination fenced, …): its name, and what it
/// found wrong (nothing when it held).
///
/// ```
/// use switchover_baseline::SafetyCheck;
/// assert!(SafetyCheck::new("fence", vec![]).ok());
/// assert!(!SafetyCheck::new("storage", vec!["blk0: a write by the src refused".into()]).ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyCheck {
    /// What it checks, in a few words.
    pub name: String,
    /// What it found wrong.
    pub findings: Vec<String>,
    /// What it checks holds only where every backend acknowledged its start: a
    /// `completed_unverified` outcome (backends without `REPLY_ACK`) does not
    /// promise it, and says so.
    pub needs_ack: bool,
}

impl SafetyCheck {
    /// A check named `name` with its findings.
    pub fn new(name: &str, findings: Vec<String>) -> SafetyCheck {
        SafetyCheck { name: name.into(), findings, needs_ack: false }
    }
    /// The check, marked as one a start without `REPLY_ACK` cannot promise.
    pub fn unverified_without_ack(mut self) -> SafetyCheck {
        self.needs_ack = true;
        self
    }
    /// Whether it held.
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

/// What one strategy did, and what its checks found.
///
/// ```
/// use std::sync::Arc;
/// use switchover::exec::{Completion, StepActions};
/// use switchover::ids::{Side, Window};
/// use switchover::recipe::{build, NoCosts};
/// use switchover::roles::{Outcome, SideSetup};
/// use switchover::state::DeviceState;
/// use switchover::step::Step;
/// use switchover::topology::Topology;
/// use switchover_baseline::{execute, Checks, InstantDevices, LowerBound2, Strategy, StrategyRun};
/// let (topo, s, workers) = (Arc::new(Topology::preset("small").unwrap()), Strategy::Engine, 2);
/// let src = InstantDevices::setup(&topo, Side::Source, &s.recipe());
/// let dst = InstantDevices::setup(&topo, Side::Destination, &s.recipe());
/// let e = execute(s, workers, &src, &dst);
/// let bound = LowerBound2::of(&src.plan, &dst.plan, s.lanes(workers));
/// let r = StrategyRun::new(s, false, e, s.lanes(workers), bound, Checks::default());
/// assert_eq!(r.outcome, Outcome::Completed);
/// assert_eq!(r.phases().len(), 6); // three windows on each side
/// assert!(r.phase(Side::Destination, Window::Blackout).unwrap() <= r.downtime);
/// assert!(r.rollback().is_none());
/// assert_eq!(r.steps_started(), src.plan.len() + dst.plan.len()); // every step, once
/// ```
#[derive(Debug, Clone)]
pub struct StrategyRun {
    /// The strategy.
    pub strategy: Strategy,
    /// Whether the backends were simulated (every figure is then labelled so).
    pub simulated: bool,
    /// Window opening to the destination running (or the source resumed).
    pub downtime: Duration,
    /// When the window opened.
    pub window_opened: Instant,
    /// Every window each side ran, the rollback included.
    pub windows: Vec<WindowRun>,
    /// How it ended.
    pub outcome: Outcome,
    /// Lanes (workers + caller, or 1 for serial).
    pub lanes: usize,
    /// Lower bound on the blackout (src + dst): from the plans' expected costs, or
    /// (see [`StrategyRun::bound_measured`]) from the costs measured before the
    /// window.
    pub lower_bound: LowerBound2,
    /// Whether [`StrategyRun::lower_bound`] is the roles' measured bound
    /// ([`Predicted::measured_bound`]) rather than the plans' expected costs.
    pub bound_measured: bool,
    /// What the roles predicted before the window opened (the engine only).
    pub predicted: Predicted,
    /// The checks.
    pub checks: Checks,
    /// The safety checks of the world the run happened in (empty when the
    /// harness has none for it).
    pub safety: Vec<SafetyCheck>,
}

impl StrategyRun {
    /// A run from what [`execute`] returned, with its checks.
    pub fn new(strategy: Strategy, simulated: bool, e: Executed, lanes: usize, lower_bound: LowerBound2, checks: Checks) -> StrategyRun {
        StrategyRun {
            strategy,
            simulated,
            downtime: e.downtime,
            window_opened: e.window_opened,
            windows: e.windows,
            outcome: e.outcome,
            lanes,
            lower_bound,
            bound_measured: false,
            predicted: e.predicted,
            checks,
            safety: vec![],
        }
    }
    /// The run with the roles' measured lower bound in place of the plans'
    /// expected costs' (unchanged when the roles did not predict both sides).
    pub fn with_measured_bound(mut self) -> StrategyRun {
        if let Some(b) = self.predicted.measured_bound() {
            self.lower_bound = b;
            self.bound_measured = true;
        }
        self
    }
    /// The run with these safety checks.
    pub fn with_safety(mut self, safety: Vec<SafetyCheck>) -> StrategyRun {
        self.safety = safety;
        self
    }
    /// Whether the run ended safe: an outcome where the guest runs on one side
    /// (completed, with the vring bases preserved; completed unverified;
    /// completed with cleanup errors; rolled back; aborted), and every safety
    /// check held (but those a `completed_unverified` outcome does not promise).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// use switchover_baseline::{execute, Checks, InstantDevices, LowerBound2, SafetyCheck, Strategy, StrategyRun};
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let (src, dst) = (InstantDevices::setup(&topo, Side::Source, &Strategy::Engine.recipe()), InstantDevices::setup(&topo, Side::Destination, &Strategy::Engine.recipe()));
    /// let lb = LowerBound2::of(&src.plan, &dst.plan, 3);
    /// let r = StrategyRun::new(Strategy::Engine, false, execute(Strategy::Engine, 2, &src, &dst), 3, lb, Checks::default());
    /// assert!(r.safe());
    /// assert!(!r.with_safety(vec![SafetyCheck::new("fence", vec!["dst net0 ring 0 still live".into()])]).safe());
    /// ```
    pub fn safe(&self) -> bool {
        use switchover::roles::Outcome as O;
        let outcome_ok = match &self.outcome {
            O::Completed => self.checks.vring_bases_preserved,
            O::CompletedUnverified { .. } | O::CompletedWithCleanupErrors { .. } | O::RolledBack { .. } | O::Aborted { .. } => true,
            _ => false,
        };
        let unverified = matches!(self.outcome, O::CompletedUnverified { .. });
        outcome_ok && self.safety.iter().all(|c| c.ok() || unverified && c.needs_ack)
    }
    /// Duration of each window of the plans that ran (not the rollback or the
    /// fence: see [`StrategyRun::rollback`] and [`StrategyRun::fence`]).
    pub fn phases(&self) -> Vec<(Side, Window, Duration)> {
        self.windows.iter().filter(|w| !w.rollback && !w.fence).map(|w| (w.side(), w.window(), w.report.wall)).collect()
    }
    /// Duration of one side's window, if it ran (not the rollback or the fence).
    pub fn phase(&self, side: Side, window: Window) -> Option<Duration> {
        self.windows.iter().find(|w| !w.rollback && !w.fence && w.side() == side && w.window() == window).map(|w| w.report.wall)
    }
    /// How long the rollback took, if there was one.
    pub fn rollback(&self) -> Option<Duration> {
        self.windows.iter().find(|w| w.rollback).map(|w| w.report.wall)
    }
    /// How long the destination's fence took, if there was one.
    pub fn fence(&self) -> Option<Duration> {
        self.windows.iter().find(|w| w.fence).map(|w| w.report.wall)
    }
    /// Whether every prediction the run holds was made before the window opened
    /// and before the first step of either side's blackout window started
    /// (`None`: no prediction).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// use switchover_baseline::{execute, Checks, InstantDevices, LowerBound2, Strategy, StrategyRun};
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let run = |s: Strategy| {
    ///     let (src, dst) = (InstantDevices::setup(&topo, Side::Source, &s.recipe()), InstantDevices::setup(&topo, Side::Destination, &s.recipe()));
    ///     let lb = LowerBound2::of(&src.plan, &dst.plan, 3);
    ///     StrategyRun::new(s, false, execute(s, 2, &src, &dst), 3, lb, Checks::default())
    /// };
    /// assert_eq!(run(Strategy::Engine).predicted_before_window(), Some(true));
    /// assert_eq!(run(Strategy::Serial).predicted_before_window(), None); // the baselines predict nothing
    /// ```
    pub fn predicted_before_window(&self) -> Option<bool> {
        let made = [self.predicted.source.as_ref(), self.predicted.destination.as_ref()];
        let made: Vec<Instant> = made.into_iter().flatten().flat_map(|p| [p.made_at, p.window.made_at]).collect();
        let last = made.iter().max()?;
        let first_step = self
            .windows
            .iter()
            .filter(|w| !w.rollback && !w.fence && w.window() == Window::Blackout)
            .flat_map(|w| w.report.records.iter().map(|r| w.report.started_at + r.start))
            .min();
        Some(*last < self.window_opened && first_step.map_or(true, |f| *last < f))
    }
    /// Number of steps started, over every window.
    pub fn steps_started(&self) -> usize {
        self.windows.iter().map(|w| w.report.records.len()).sum()
    }
}
