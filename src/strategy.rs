//! The three strategies, side by side on the same SIMULATED backends:
//!
//! * `serial` — today's QEMU: one device after another, every step inside the
//!   window, each request waited for before the next;
//! * `pool` — the 2021 RFC: one task per device on a thread pool, every step inside
//!   the window;
//! * `engine` — this crate: the minimal-window plan on the [`Engine`].
//!
//! # Examples
//!
//! ```
//! use switchover::strategy::{run, SimConfig, Strategy};
//! use switchover::topology::Topology;
//! let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.05).workers(2);
//! let serial = run(&cfg, Strategy::Serial);
//! let engine = run(&cfg, Strategy::Engine);
//! assert!(serial.vring_bases_preserved && engine.vring_bases_preserved);
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{StepError, StepFailure};
use crate::exec::{Completion, Engine, Lane, Progress, RunReport, StepActions, StepOutcome};
use crate::plan::{LowerBound, Plan};
use crate::recipe::{build, rollback, RecipeOptions};
use crate::sim::{Fault, IoLedger, IoSummary, KvmModel, Profile, SimActions, SimSide};
use crate::state::DeviceState;
use crate::step::{ExecMode, Server, Side, Step, Window};
use crate::switchover::{run_in_process, Outcome, RollbackFn, SideSetup};
use crate::topology::Topology;

/// Default scale of the simulated profile: a `rfc-huge` run takes a few seconds.
///
/// ```
/// use switchover::strategy::{SimConfig, DEFAULT_SCALE};
/// use switchover::topology::Topology;
/// assert_eq!(SimConfig::new(Topology::preset("small").unwrap()).profile.scale, DEFAULT_SCALE);
/// ```
pub const DEFAULT_SCALE: f64 = 0.5;
/// Default number of workers (the caller lane is one more).
///
/// ```
/// use switchover::strategy::{SimConfig, DEFAULT_WORKERS};
/// use switchover::topology::Topology;
/// assert_eq!(SimConfig::new(Topology::preset("small").unwrap()).workers, DEFAULT_WORKERS);
/// ```
pub const DEFAULT_WORKERS: usize = 8;

/// A strategy.
///
/// ```
/// use switchover::strategy::{run, SimConfig, Strategy};
/// use switchover::topology::Topology;
/// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02).workers(2);
/// assert_eq!(run(&cfg, Strategy::Serial).lanes, 1);
/// assert_eq!(run(&cfg, Strategy::Pool).lanes, 2);
/// assert_eq!(run(&cfg, Strategy::Engine).lanes, 3); // workers + the caller lane
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// One device after another, everything in the window.
    Serial,
    /// One task per device on a pool, everything in the window.
    Pool,
    /// This crate's engine.
    Engine,
}

impl Strategy {
    /// All three, in report order.
    ///
    /// ```
    /// use switchover::strategy::Strategy;
    /// let names: Vec<_> = Strategy::ALL.iter().map(|s| s.name()).collect();
    /// assert_eq!(names, ["serial", "pool", "engine"]);
    /// ```
    pub const ALL: [Strategy; 3] = [Strategy::Serial, Strategy::Pool, Strategy::Engine];
    /// Lower-case name.
    ///
    /// ```
    /// use switchover::strategy::Strategy;
    /// assert_eq!(Strategy::Engine.name(), "engine");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Serial => "serial",
            Strategy::Pool => "pool",
            Strategy::Engine => "engine",
        }
    }
}

/// A simulated run's configuration.
///
/// ```
/// use std::time::Duration;
/// use switchover::strategy::{BlkPolicy, SimConfig};
/// use switchover::topology::Topology;
/// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02).workers(2).deadline(Duration::from_secs(1));
/// assert_eq!((cfg.workers, cfg.deadline, cfg.blk_policy), (2, Duration::from_secs(1), BlkPolicy::Drain));
/// assert!(cfg.faults.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The VM.
    pub topology: Arc<Topology>,
    /// The cost profile.
    pub profile: Profile,
    /// Workers for `pool` and `engine`.
    pub workers: usize,
    /// Faults to inject.
    pub faults: Vec<Fault>,
    /// Deadline of every step.
    pub deadline: Duration,
    /// What happens to block requests in flight when the guest stops.
    pub blk_policy: BlkPolicy,
    /// How long a drain may wait for a ring's requests in flight.
    pub drain_deadline: Duration,
}

/// What happens to block requests in flight when the guest stops.
///
/// ```
/// use std::time::Duration;
/// use switchover::strategy::{run, BlkPolicy, SimConfig, Strategy};
/// use switchover::topology::Topology;
/// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02).blk_inflight(3, Duration::from_secs(1));
/// let drained = run(&cfg.clone().blk_policy(BlkPolicy::Drain), Strategy::Engine);
/// let handed = run(&cfg.blk_policy(BlkPolicy::HandOver), Strategy::Engine);
/// // Either way every request completes exactly once where the guest sees it.
/// assert!(drained.io.exact() && handed.io.exact());
/// assert_eq!((drained.io.submitted, drained.io.handed_over), (6, 0));
/// assert!(handed.io.handed_over > 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlkPolicy {
    /// Wait for them (with the step's deadline) before reading the ring's base.
    Drain,
    /// Read the base at once and carry them to the destination, which resubmits them
    /// (vhost-user's inflight-fd mechanism).
    HandOver,
}

impl SimConfig {
    /// Defaults: the RFC-derived profile at [`DEFAULT_SCALE`], [`DEFAULT_WORKERS`]
    /// workers, no faults, 10 s deadlines.
    ///
    /// ```
    /// use switchover::sim::KvmModel;
    /// use switchover::strategy::SimConfig;
    /// use switchover::topology::Topology;
    /// let cfg = SimConfig::new(Topology::preset("small").unwrap());
    /// assert_eq!(cfg.topology.name(), "small");
    /// assert_eq!((cfg.profile.name.as_str(), cfg.profile.kvm), ("rfc-original", KvmModel::Rfc));
    /// ```
    pub fn new(topology: Topology) -> SimConfig {
        SimConfig {
            topology: Arc::new(topology),
            profile: Profile::rfc_original(DEFAULT_SCALE),
            workers: DEFAULT_WORKERS,
            faults: vec![],
            deadline: crate::plan::DEFAULT_DEADLINE,
            blk_policy: BlkPolicy::Drain,
            drain_deadline: crate::plan::DEFAULT_DEADLINE,
        }
    }
    /// Sets the drain deadline.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover::strategy::{run, SimConfig, Strategy};
    /// use switchover::topology::Topology;
    /// // Requests that take 25 ms (scaled) cannot drain within 1 ms: the switchover rolls back.
    /// let cfg = SimConfig::new(Topology::preset("single-blk").unwrap())
    ///     .scale(0.02)
    ///     .blk_inflight(2, Duration::from_millis(1250))
    ///     .drain_deadline(Duration::from_millis(1));
    /// let r = run(&cfg, Strategy::Engine);
    /// assert_eq!(r.outcome.cause().unwrap().step, "drain_inflight");
    /// assert!(r.vring_bases_preserved);
    /// ```
    pub fn drain_deadline(mut self, d: Duration) -> Self {
        self.drain_deadline = d;
        self
    }
    /// Sets the block policy.
    ///
    /// ```
    /// use switchover::strategy::{BlkPolicy, SimConfig};
    /// use switchover::topology::Topology;
    /// let cfg = SimConfig::new(Topology::preset("small").unwrap()).blk_policy(BlkPolicy::HandOver);
    /// assert_eq!(cfg.blk_policy, BlkPolicy::HandOver);
    /// ```
    pub fn blk_policy(mut self, p: BlkPolicy) -> Self {
        self.blk_policy = p;
        self
    }
    /// Sets the block requests in flight per blk ring at the stop, and their duration
    /// (unscaled).
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover::strategy::{run, SimConfig, Strategy};
    /// use switchover::topology::Topology;
    /// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02).blk_inflight(4, Duration::from_millis(2));
    /// assert_eq!(cfg.profile.blk_inflight, 4);
    /// let r = run(&cfg, Strategy::Engine);
    /// assert_eq!(r.io.submitted, 2 * 4); // two blk devices, one ring each
    /// assert!(r.io.exact());
    /// ```
    pub fn blk_inflight(mut self, per_ring: u32, io: Duration) -> Self {
        self.profile.blk_inflight = per_ring;
        self.profile.blk_io = io;
        self
    }
    /// Sets the profile scale.
    ///
    /// ```
    /// use switchover::strategy::{run, SimConfig, Strategy};
    /// use switchover::topology::Topology;
    /// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
    /// assert_eq!(cfg.profile.scale, 0.02);
    /// let r = run(&cfg, Strategy::Serial);
    /// assert!(r.downtime >= r.lower_bound.total());
    /// ```
    pub fn scale(mut self, s: f64) -> Self {
        self.profile.scale = s;
        self
    }
    /// Sets the worker count.
    ///
    /// ```
    /// use switchover::strategy::{run, SimConfig, Strategy};
    /// use switchover::topology::Topology;
    /// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02).workers(3);
    /// assert_eq!(run(&cfg, Strategy::Pool).lanes, 3);
    /// ```
    pub fn workers(mut self, w: usize) -> Self {
        self.workers = w;
        self
    }
    /// Sets the KVM model.
    ///
    /// ```
    /// use switchover::sim::KvmModel;
    /// use switchover::strategy::{run, SimConfig, Strategy};
    /// use switchover::topology::Topology;
    /// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02).kvm(KvmModel::PerVmIoeventfd);
    /// assert_eq!(cfg.profile.kvm, KvmModel::PerVmIoeventfd);
    /// let r = run(&cfg, Strategy::Engine);
    /// assert!(r.failure.is_none() && r.double_ioctls == 0);
    /// ```
    pub fn kvm(mut self, m: KvmModel) -> Self {
        self.profile.kvm = m;
        self
    }
    /// Sets the faults.
    ///
    /// ```
    /// use switchover::strategy::{run, SimConfig, Strategy};
    /// use switchover::switchover::Outcome;
    /// use switchover::topology::Topology;
    /// let cfg = SimConfig::new(Topology::preset("small").unwrap())
    ///     .scale(0.02)
    ///     .faults(vec!["error:get_vring_base:net1".parse().unwrap()]);
    /// let r = run(&cfg, Strategy::Engine);
    /// assert!(matches!(r.outcome, Outcome::RolledBack { .. }));
    /// assert_eq!(r.failure.unwrap().device, "net1");
    /// assert!(r.vring_bases_preserved); // the source resumes with every base it read
    /// ```
    pub fn faults(mut self, f: Vec<Fault>) -> Self {
        self.faults = f;
        self
    }
    /// Makes every vhost-user message wait for the backend's reply (`REPLY_ACK`), so
    /// a backend's error on a start message is seen; without it those messages are
    /// fire-and-forget, as in the RFC-era profile.
    ///
    /// ```
    /// use switchover::strategy::SimConfig;
    /// use switchover::topology::Topology;
    /// let cfg = SimConfig::new(Topology::preset("small").unwrap());
    /// assert!(!cfg.profile.reply_ack);
    /// assert!(cfg.reply_ack(true).profile.reply_ack);
    /// ```
    pub fn reply_ack(mut self, on: bool) -> Self {
        self.profile.reply_ack = on;
        self
    }
    /// Sets every step's deadline.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover::error::StepFailure;
    /// use switchover::strategy::{run, SimConfig, Strategy};
    /// use switchover::topology::Topology;
    /// let cfg = SimConfig::new(Topology::preset("single-net").unwrap())
    ///     .scale(0.02)
    ///     .deadline(Duration::from_millis(100))
    ///     .faults(vec!["hang:get_vring_base:net0".parse().unwrap()]);
    /// let r = run(&cfg, Strategy::Engine);
    /// assert_eq!(r.failure.unwrap().failure, StepFailure::Timeout { after: Duration::from_millis(100) });
    /// ```
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = d;
        self
    }
    fn opts(&self, base: RecipeOptions) -> RecipeOptions {
        RecipeOptions {
            deadline: self.deadline,
            drain_deadline: self.drain_deadline,
            drain_blk: self.blk_policy == BlkPolicy::Drain,
            ..base
        }
    }
    fn sides(&self) -> (Arc<SimSide>, Arc<SimSide>, Arc<IoLedger>) {
        let ledger = Arc::new(IoLedger::default());
        let ho = self.blk_policy == BlkPolicy::HandOver;
        let topo = &self.topology;
        let src = SimSide::with_io(topo, Side::Source, &self.profile, &self.faults, Arc::new(DeviceState::new(topo)), ledger.clone(), ho);
        let dst =
            SimSide::with_io(topo, Side::Destination, &self.profile, &self.faults, Arc::new(DeviceState::new(topo)), ledger.clone(), ho);
        (Arc::new(src), Arc::new(dst), ledger)
    }
}

/// One step as it ran, with times relative to the window's opening (negative in
/// prepare).
///
/// ```
/// use switchover::step::Window;
/// use switchover::strategy::{run, SimConfig, Strategy};
/// use switchover::topology::Topology;
/// let r = run(&SimConfig::new(Topology::preset("small").unwrap()).scale(0.02), Strategy::Engine);
/// for s in &r.steps {
///     assert!(s.start_ns <= s.end_ns && !s.rollback);
///     if s.window == Window::Prepare {
///         assert!(s.start_ns < 0); // before the window opened
///     }
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TimedStep {
    /// Side.
    pub side: Side,
    /// Window it ran in.
    pub window: Window,
    /// Device name.
    pub device: String,
    /// Device kind (`net`, `blk`, or a generic kind).
    pub device_kind: String,
    /// Ring.
    pub ring: Option<u32>,
    /// Step kind name.
    pub step: String,
    /// Lane (0 = caller).
    pub lane: Lane,
    /// Start (ns from window opening).
    pub start_ns: i64,
    /// End (ns from window opening).
    pub end_ns: i64,
    /// Outcome.
    pub outcome: StepOutcome,
    /// The serialised server, if any.
    pub server: Option<Server>,
    /// Whether it was split-phase.
    pub split: bool,
    /// Expected cost (ns).
    pub cost_ns: u64,
    /// Whether this was a rollback step.
    pub rollback: bool,
}

/// What one strategy did.
///
/// ```
/// use switchover::strategy::{run, SimConfig, Strategy};
/// use switchover::switchover::Outcome;
/// use switchover::topology::Topology;
/// let r = run(&SimConfig::new(Topology::preset("small").unwrap()).scale(0.02), Strategy::Engine);
/// assert!(r.simulated);
/// assert_eq!(r.outcome, Outcome::Completed);
/// assert!(r.base_mismatches.is_empty() && r.double_ioctls == 0);
/// assert_eq!(r.transactions.0, 2); // one memory transaction per side
/// ```
#[derive(Debug, Clone)]
pub struct StrategyRun {
    /// The strategy.
    pub strategy: Strategy,
    /// Always true here: these figures come from simulated backends.
    pub simulated: bool,
    /// Window opening to the destination running (or the source resumed).
    pub downtime: Duration,
    /// Duration of each phase that ran.
    pub phases: Vec<(Side, Window, Duration)>,
    /// Every step that ran.
    pub steps: Vec<TimedStep>,
    /// How it ended.
    pub outcome: Outcome,
    /// The first failure, if any.
    pub failure: Option<StepError>,
    /// Every base read on the source reached the destination (completed), or the
    /// source runs again with every base it read (rolled back).
    pub vring_bases_preserved: bool,
    /// Rings whose final base differs from the guest's (device, ring, have, want).
    pub base_mismatches: Vec<(String, u32, Option<u16>, u16)>,
    /// Notifiers whose ioctl was issued more than once in this run.
    pub double_ioctls: usize,
    /// Memory transactions committed and notifier changes they carried (both sides).
    pub transactions: (u64, u64),
    /// Lanes (workers + caller, or 1 for serial).
    pub lanes: usize,
    /// Lower bound on the blackout (src + dst) from the plans run.
    pub lower_bound: LowerBound2,
    /// What became of the guest's block requests in flight at the stop.
    pub io: IoSummary,
}

/// The lower bound of a strategy's downtime, per side.
///
/// ```
/// use switchover::strategy::{run, SimConfig, Strategy};
/// use switchover::topology::Topology;
/// let r = run(&SimConfig::new(Topology::preset("small").unwrap()).scale(0.02), Strategy::Serial);
/// assert!(r.lower_bound.src.bound > std::time::Duration::ZERO);
/// assert!(r.downtime >= r.lower_bound.total());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LowerBound2 {
    /// Source side.
    pub src: LowerBound,
    /// Destination side.
    pub dst: LowerBound,
}

impl LowerBound2 {
    /// Sum of the two sides (they run one after the other).
    ///
    /// ```
    /// use switchover::strategy::{run, SimConfig, Strategy};
    /// use switchover::topology::Topology;
    /// let r = run(&SimConfig::new(Topology::preset("small").unwrap()).scale(0.02), Strategy::Engine);
    /// let lb = r.lower_bound;
    /// assert_eq!(lb.total(), lb.src.bound + lb.dst.bound);
    /// ```
    pub fn total(&self) -> Duration {
        self.src.bound + self.dst.bound
    }
}

/// One side of a simulated switchover, ready for a role: the engine plan, its
/// actions on fresh simulated backends, the side's state, and (for the source) the
/// rollback builder.
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
/// assert!(dst.side.sync(std::time::Duration::from_secs(5))); // fire-and-forget messages served
/// assert!(dst.side.base_mismatches().is_empty());
/// ```
pub struct SimRole {
    /// Plan, actions and state.
    pub setup: SideSetup,
    /// The simulated world.
    pub side: Arc<SimSide>,
    cfg: SimConfig,
}

impl std::fmt::Debug for SimRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimRole").field("setup", &self.setup).finish()
    }
}

impl SimRole {
    /// Builds `side` of the engine's plan for `cfg` on fresh simulated backends.
    ///
    /// ```
    /// use switchover::step::Side;
    /// use switchover::strategy::{SimConfig, SimRole};
    /// use switchover::topology::Topology;
    /// let role = SimRole::new(&SimConfig::new(Topology::preset("small").unwrap()), Side::Destination);
    /// assert_eq!(role.setup.plan.side(), Side::Destination);
    /// assert_eq!(role.side.state().captured(), 0); // nothing has crossed yet
    /// ```
    pub fn new(cfg: &SimConfig, side: Side) -> SimRole {
        let opts = cfg.opts(RecipeOptions::engine());
        let plan = Arc::new(build(&cfg.topology, side, &opts, &cfg.profile).expect("validated topology"));
        let (src, dst, _) = cfg.sides();
        let sim = if side == Side::Source { src } else { dst };
        let state = sim.state().clone();
        let actions = Arc::new(SimActions::new(sim.clone(), plan.len()));
        SimRole { setup: SideSetup { plan, actions, state }, side: sim, cfg: cfg.clone() }
    }

    /// The rollback builder for a source role.
    ///
    /// ```
    /// use switchover::exec::Engine;
    /// use switchover::step::Side;
    /// use switchover::strategy::{SimConfig, SimRole};
    /// use switchover::switchover::{run_in_process, Outcome};
    /// use switchover::topology::Topology;
    /// let cfg = SimConfig::new(Topology::preset("small").unwrap())
    ///     .scale(0.02)
    ///     .faults(vec!["error:get_vring_base:blk0".parse().unwrap()]);
    /// let (src, dst) = (SimRole::new(&cfg, Side::Source), SimRole::new(&cfg, Side::Destination));
    /// let rep = run_in_process(&src.setup, &dst.setup, &Engine::new(2), &Engine::new(2), &src.rollback());
    /// assert!(matches!(rep.outcome, Outcome::RolledBack { .. }));
    /// assert!(rep.rollback.is_some());
    /// ```
    pub fn rollback(&self) -> impl Fn(&Plan, &Progress, &[crate::topology::DeviceId]) -> crate::switchover::RollbackPlan + '_ {
        move |plan: &Plan, p: &Progress, lost: &[crate::topology::DeviceId]| {
            let rp = Arc::new(rollback(plan, p, lost, &self.cfg.opts(RecipeOptions::engine()), &self.cfg.profile).ok()?);
            let act: Arc<dyn StepActions> = Arc::new(SimActions::new(self.side.clone(), rp.len()).without_faults());
            Some((rp, act))
        }
    }
}

/// Runs `strategy` once on fresh simulated backends.
///
/// ```
/// use switchover::strategy::{run, SimConfig, Strategy};
/// use switchover::topology::Topology;
/// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02).workers(2);
/// let (serial, engine) = (run(&cfg, Strategy::Serial), run(&cfg, Strategy::Engine));
/// assert!(serial.vring_bases_preserved && engine.vring_bases_preserved);
/// // The engine's window holds fewer steps: the rest runs in prepare and cleanup.
/// let in_window = |r: &switchover::strategy::StrategyRun| r.steps.iter().filter(|s| s.window.name() == "blackout").count();
/// assert!(in_window(&engine) < in_window(&serial));
/// ```
pub fn run(cfg: &SimConfig, strategy: Strategy) -> StrategyRun {
    let (opts, lanes) = match strategy {
        Strategy::Serial => (cfg.opts(RecipeOptions::baseline()), 1),
        Strategy::Pool => (cfg.opts(RecipeOptions::baseline()), cfg.workers.max(1)),
        Strategy::Engine => (cfg.opts(RecipeOptions::engine()), cfg.workers + 1),
    };
    let topo = &cfg.topology;
    let src_plan = Arc::new(build(topo, Side::Source, &opts, &cfg.profile).expect("validated topology"));
    let dst_plan = Arc::new(build(topo, Side::Destination, &opts, &cfg.profile).expect("validated topology"));
    let (src_side, dst_side, ledger) = cfg.sides();
    let (src_state, dst_state) = (src_side.state().clone(), dst_side.state().clone());
    let src_act = Arc::new(SimActions::new(src_side.clone(), src_plan.len()));
    let dst_act = Arc::new(SimActions::new(dst_side.clone(), dst_plan.len()));
    let lower_bound =
        LowerBound2 { src: src_plan.lower_bound(Window::Blackout, lanes), dst: dst_plan.lower_bound(Window::Blackout, lanes) };

    let src = SideSetup { plan: src_plan.clone(), actions: src_act.clone(), state: src_state.clone() };
    let dst = SideSetup { plan: dst_plan.clone(), actions: dst_act.clone(), state: dst_state.clone() };
    let side = src_side.clone();
    let profile = cfg.profile.clone();
    let rb_opts = opts.clone();
    let rb = move |plan: &Plan, p: &Progress, lost: &[crate::topology::DeviceId]| -> crate::switchover::RollbackPlan {
        let rp = Arc::new(rollback(plan, p, lost, &rb_opts, &profile).ok()?);
        let act: Arc<dyn StepActions> = Arc::new(SimActions::new(side.clone(), rp.len()).without_faults());
        Some((rp, act))
    };
    let Executed { outcome, downtime, mut steps, phases, .. } = execute(strategy, cfg.workers, &src, &dst, &rb);
    let failure = outcome.cause().cloned();
    // Check what matters: where the guest now runs, every ring has the base the
    // guest had reached.
    let sync = Duration::from_secs(5);
    let (preserved, mismatches) = match &outcome {
        Outcome::Completed | Outcome::CompletedWithCleanupErrors { .. } => {
            let ok = dst_side.sync(sync);
            let m = dst_side.base_mismatches();
            (ok && m.is_empty(), m)
        }
        Outcome::RolledBack { .. } => {
            let ok = src_side.sync(sync);
            let m = src_side.base_mismatches();
            (ok && m.is_empty(), m)
        }
        Outcome::Aborted { .. } => (true, vec![]),
        Outcome::Failed { .. } | Outcome::InDoubt { .. } => (false, vec![]),
    };
    let mut double_ioctls = 0;
    let (mut commits, mut changes) = (0, 0);
    for side in [&src_side, &dst_side] {
        for d in topo.devices() {
            for r in 0..d.rings() {
                for host in [true, false] {
                    if side.vm().ioctls(d.id, r, host) > 1 {
                        double_ioctls += 1;
                    }
                }
            }
        }
        let (c, n) = side.vm().transactions();
        commits += c;
        changes += n;
    }
    steps.sort_by_key(|s| (s.start_ns, s.end_ns));
    let on_dst = matches!(outcome, Outcome::Completed | Outcome::CompletedWithCleanupErrors { .. });
    let io = ledger.summary(on_dst);
    StrategyRun {
        strategy,
        simulated: true,
        downtime,
        phases,
        steps,
        outcome,
        failure,
        vring_bases_preserved: preserved,
        base_mismatches: mismatches,
        double_ioctls,
        transactions: (commits, changes),
        lanes,
        lower_bound,
        io,
    }
}

/// What a strategy did to the two sides, before any check of the result.
#[derive(Debug)]
pub struct Executed {
    /// How it ended.
    pub outcome: Outcome,
    /// Window opening to the destination running (or the source resumed).
    pub downtime: Duration,
    /// Every step that ran, times relative to the window's opening.
    pub steps: Vec<TimedStep>,
    /// Duration of each phase that ran.
    pub phases: Vec<(Side, Window, Duration)>,
    /// How long the source's rollback took, if there was one.
    pub rollback: Option<Duration>,
}

/// Runs `strategy` over two prepared sides, simulated or real: `serial`
/// (`workers` ignored) and `pool` run each device's chain with every step inside the
/// window and no rollback, as today's VMMs do; `engine` runs the two roles, each
/// on its own engine of `workers` workers, with `rollback`.
///
/// # Examples
///
/// ```
/// use switchover::strategy::{execute, SimConfig, SimRole, Strategy};
/// use switchover::step::Side;
/// use switchover::topology::Topology;
/// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
/// let (src, dst) = (SimRole::new(&cfg, Side::Source), SimRole::new(&cfg, Side::Destination));
/// let rb = src.rollback();
/// let e = execute(Strategy::Engine, 2, &src.setup, &dst.setup, &rb);
/// assert_eq!(e.outcome.name(), "completed");
/// assert!(e.downtime > std::time::Duration::ZERO);
/// ```
pub fn execute(strategy: Strategy, workers: usize, src: &SideSetup, dst: &SideSetup, rollback: &RollbackFn<'_>) -> Executed {
    let mut steps = Vec::new();
    let mut phases = Vec::new();
    if strategy == Strategy::Engine {
        let src_engine = Engine::new(workers);
        let dst_engine = Engine::new(workers);
        let rep = run_in_process(src, dst, &src_engine, &dst_engine, rollback);
        for r in &rep.runs {
            let plan = if r.side == Side::Source { &src.plan } else { &dst.plan };
            phases.push((r.side, r.window, r.wall));
            steps.extend(timed(plan, r, rep.window_opened, false));
        }
        let mut rollback_wall = None;
        if let Some((plan, r)) = &rep.rollback {
            rollback_wall = Some(r.wall);
            phases.push((Side::Source, Window::Blackout, r.wall));
            steps.extend(timed(plan, r, rep.window_opened, true));
        }
        return Executed { outcome: rep.outcome, downtime: rep.downtime, steps, phases, rollback: rollback_wall };
    }
    let opened = Instant::now();
    let lanes = if strategy == Strategy::Serial { 0 } else { workers.max(1) };
    let ((src_steps, mut failure), t_src) = run_chains(&src.plan, &*src.actions, lanes, opened);
    phases.push((Side::Source, Window::Blackout, t_src));
    steps.extend(src_steps);
    if failure.is_none() {
        dst.state.import(&src.state.export());
        dst.state.hand_over(&src.state.inflight());
        let ((dst_steps, f), t_dst) = run_chains(&dst.plan, &*dst.actions, lanes, opened);
        phases.push((Side::Destination, Window::Blackout, t_dst));
        steps.extend(dst_steps);
        failure = f;
    }
    let downtime = opened.elapsed();
    // Today's VMMs have no rollback: a failure leaves the VM stopped.
    let outcome = match failure {
        None => Outcome::Completed,
        Some(cause) => Outcome::Failed {
            rollback: StepError { failure: StepFailure::Other { message: "no rollback in this strategy".into() }, ..cause.clone() },
            cause,
        },
    };
    Executed { outcome, downtime, steps, phases, rollback: None }
}

/// The steps of an engine run as [`TimedStep`]s, times relative to `opened`.
///
/// ```
/// use std::sync::Arc;
/// use switchover::exec::{Completion, Engine, Progress, StepActions};
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::step::{Side, Step, Window};
/// use switchover::strategy::timed;
/// use switchover::topology::Topology;
/// struct Inline;
/// impl StepActions for Inline {
///     fn start(&self, _step: &Step, done: Completion) {
///         done.complete(Ok(()));
///     }
/// }
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap());
/// let r = Engine::new(1).run(&plan, Window::Blackout, Arc::new(Inline), &mut Progress::new(&plan));
/// let steps = timed(&plan, &r, r.started_at, false);
/// assert_eq!(steps.len(), r.records.len());
/// assert!(steps.iter().all(|s| s.start_ns >= 0 && s.window == Window::Blackout && !s.device_kind.is_empty()));
/// ```
pub fn timed(plan: &Plan, r: &RunReport, opened: Instant, rollback: bool) -> Vec<TimedStep> {
    let base = signed_ns(r.started_at, opened);
    r.records
        .iter()
        .map(|rec| {
            let s = plan.step(rec.step);
            mk_timed(plan, s, rec.lane, base + rec.start.as_nanos() as i64, base + rec.end.as_nanos() as i64, rec.outcome, rollback)
        })
        .collect()
}

fn mk_timed(plan: &Plan, s: &Step, lane: Lane, start_ns: i64, end_ns: i64, outcome: StepOutcome, rollback: bool) -> TimedStep {
    let dev = plan.topology().device(s.device);
    TimedStep {
        side: plan.side(),
        window: s.window,
        device: dev.name.clone(),
        device_kind: dev.kind.prefix().to_string(),
        ring: s.ring,
        step: s.kind.name().to_string(),
        lane,
        start_ns,
        end_ns,
        outcome,
        server: s.server,
        split: s.mode == ExecMode::Split,
        cost_ns: s.cost.as_nanos() as u64,
        rollback,
    }
}

fn signed_ns(t: Instant, origin: Instant) -> i64 {
    if t >= origin {
        (t - origin).as_nanos() as i64
    } else {
        -((origin - t).as_nanos() as i64)
    }
}

/// Runs one step and waits for its answer (or its deadline).
///
/// ```
/// use switchover::exec::{Completion, StepActions};
/// use switchover::step::Step;
/// struct Ok_;
/// impl StepActions for Ok_ {
///     fn start(&self, _: &Step, done: Completion) { done.complete(Ok(())) }
/// }
/// let t = std::sync::Arc::new(switchover::topology::Topology::preset("single-blk").unwrap());
/// let plan = switchover::recipe::build(&t, switchover::step::Side::Source,
///     &switchover::recipe::RecipeOptions::baseline(), &switchover::recipe::NoCosts).unwrap();
/// assert!(switchover::strategy::run_one(&Ok_, &plan.steps()[0]).is_ok());
/// ```
pub fn run_one(actions: &dyn StepActions, step: &Step) -> Result<(), StepFailure> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    actions.start(
        step,
        Completion::from_fn(move |r| {
            let _ = tx.send(r);
        }),
    );
    match rx.recv_timeout(step.deadline) {
        Ok(r) => r,
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(StepFailure::Timeout { after: step.deadline }),
        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(StepFailure::Abandoned),
    }
}

/// Steps run by [`run_chains`] and the first failure.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Instant;
/// use switchover::exec::{Completion, StepActions};
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::step::{Side, Step};
/// use switchover::strategy::{run_chains, ChainOut};
/// use switchover::topology::Topology;
/// struct Inline;
/// impl StepActions for Inline {
///     fn start(&self, _step: &Step, done: Completion) {
///         done.complete(Ok(()));
///     }
/// }
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let plan = build(&topo, Side::Source, &RecipeOptions::baseline(), &NoCosts).unwrap();
/// let (out, _took): (ChainOut, _) = run_chains(&plan, &Inline, 0, Instant::now());
/// let (steps, failure) = out;
/// assert_eq!((steps.len(), failure), (plan.len(), None));
/// ```
pub type ChainOut = (Vec<TimedStep>, Option<StepError>);

/// Runs each device's steps in plan order, one request at a time: on the calling
/// thread (`workers == 0`, the `serial` strategy), or one device per task on
/// `workers` threads (the `pool` strategy). Times are relative to `opened`.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Instant;
/// use switchover::error::StepFailure;
/// use switchover::exec::{Completion, StepActions};
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::step::{Side, Step, StepKind};
/// use switchover::strategy::run_chains;
/// use switchover::topology::Topology;
/// /// blk0's `get_vring_base` fails.
/// struct FailBlk0;
/// impl StepActions for FailBlk0 {
///     fn start(&self, step: &Step, done: Completion) {
///         let fail = step.kind == StepKind::GetVringBase && step.device.0 == 2;
///         done.complete(if fail { Err(StepFailure::Disconnected) } else { Ok(()) });
///     }
/// }
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let plan = build(&topo, Side::Source, &RecipeOptions::baseline(), &NoCosts).unwrap();
/// let ((steps, failure), _took) = run_chains(&plan, &FailBlk0, 2, Instant::now());
/// assert_eq!(failure.unwrap().device, "blk0");
/// assert!(steps.len() < plan.len()); // the pool stopped taking new work
/// ```
pub fn run_chains(plan: &Plan, actions: &dyn StepActions, workers: usize, opened: Instant) -> (ChainOut, Duration) {
    let t0 = Instant::now();
    let ndev = plan.topology().devices().len();
    let mut by_dev: Vec<Vec<&Step>> = vec![Vec::new(); ndev];
    for s in plan.steps() {
        by_dev[s.device.0 as usize].push(s);
    }
    let next = AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let lane_work = |lane: Lane| -> ChainOut {
        let mut out = Vec::new();
        let mut fail = None;
        loop {
            let d = next.fetch_add(1, Ordering::AcqRel);
            if d >= ndev || stop.load(Ordering::Acquire) {
                break;
            }
            for s in &by_dev[d] {
                let st = signed_ns(Instant::now(), opened);
                let r = run_one(actions, s);
                let en = signed_ns(Instant::now(), opened);
                let oc = if r.is_ok() { StepOutcome::Done } else { StepOutcome::Failed };
                out.push(mk_timed(plan, s, lane, st, en, oc, false));
                if let Err(f) = r {
                    fail = Some(StepError {
                        side: plan.side(),
                        device: plan.device_name(s.id).to_string(),
                        ring: s.ring,
                        step: s.kind.name().into(),
                        failure: f,
                    });
                    stop.store(true, Ordering::Release);
                    break;
                }
            }
            if fail.is_some() {
                break;
            }
        }
        (out, fail)
    };
    let result = if workers == 0 {
        lane_work(0)
    } else {
        let lw = &lane_work;
        std::thread::scope(|sc| {
            let hs: Vec<_> = (0..workers).map(|i| sc.spawn(move || lw((i + 1) as Lane))).collect();
            let mut all = Vec::new();
            let mut fail = None;
            for h in hs {
                let (o, f) = h.join().expect("pool worker panicked");
                all.extend(o);
                fail = fail.or(f);
            }
            (all, fail)
        })
    };
    (result, t0.elapsed())
}
