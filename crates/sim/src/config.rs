//! A whole simulated switchover: its configuration, one side ready for a role,
//! and [`run`], which runs one strategy on fresh simulated backends and checks the
//! result.

use std::sync::Arc;
use std::time::Duration;

use switchover::exec::StepActions;
use switchover::ids::Side;
use switchover::plan::Plan;
use switchover::recipe::{build, BlkPolicy, RecipeOptions};
use switchover::roles::{Outcome, SideSetup};
use switchover::state::DeviceState;
use switchover::topology::Topology;
use switchover_baseline::{execute, Checks, LowerBound2, Strategy, StrategyRun, DEFAULT_WORKERS};

use crate::{Fault, IoLedger, KvmModel, Profile, SimActions, SimSide};

/// Default scale of the simulated profile: a `rfc-huge` run takes a few seconds.
///
/// ```
/// use switchover_sim::{SimConfig, DEFAULT_SCALE};
/// use switchover::topology::Topology;
/// assert_eq!(SimConfig::new(Topology::preset("small").unwrap()).profile.scale, DEFAULT_SCALE);
/// ```
pub const DEFAULT_SCALE: f64 = 0.5;

/// A simulated run's configuration.
///
/// ```
/// use std::time::Duration;
/// use switchover::recipe::BlkPolicy;
/// use switchover_sim::SimConfig;
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

impl SimConfig {
    /// Defaults: the RFC-derived profile at [`DEFAULT_SCALE`], [`DEFAULT_WORKERS`]
    /// workers, no faults, 10 s deadlines.
    ///
    /// ```
    /// use switchover_sim::KvmModel;
    /// use switchover_sim::SimConfig;
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
            deadline: switchover::plan::DEFAULT_DEADLINE,
            blk_policy: BlkPolicy::Drain,
            drain_deadline: switchover::plan::DEFAULT_DEADLINE,
        }
    }
    /// Sets the drain deadline.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover::step::StepKind;
    /// use switchover_sim::{run, SimConfig};
    /// use switchover_baseline::Strategy;
    /// use switchover::topology::Topology;
    /// // Requests that take 25 ms (scaled) cannot drain within 1 ms: the switchover rolls back.
    /// let cfg = SimConfig::new(Topology::preset("single-blk").unwrap())
    ///     .scale(0.02)
    ///     .blk_inflight(2, Duration::from_millis(1250))
    ///     .drain_deadline(Duration::from_millis(1));
    /// let r = run(&cfg, Strategy::Engine);
    /// assert_eq!(r.outcome.cause().and_then(|c| c.step()).unwrap().kind, StepKind::DrainInflight);
    /// assert!(r.checks.vring_bases_preserved);
    /// ```
    pub fn drain_deadline(mut self, d: Duration) -> Self {
        self.drain_deadline = d;
        self
    }
    /// Sets the block policy.
    ///
    /// ```
    /// use switchover::recipe::BlkPolicy;
    /// use switchover_sim::SimConfig;
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
    /// use switchover_sim::{run, SimConfig};
    /// use switchover_baseline::Strategy;
    /// use switchover::topology::Topology;
    /// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02).blk_inflight(4, Duration::from_millis(2));
    /// assert_eq!(cfg.profile.blk_inflight, 4);
    /// let r = run(&cfg, Strategy::Engine);
    /// assert_eq!(r.checks.io.submitted, 2 * 4); // two blk devices, one ring each
    /// assert!(r.checks.io.exact());
    /// ```
    pub fn blk_inflight(mut self, per_ring: u32, io: Duration) -> Self {
        self.profile.blk_inflight = per_ring;
        self.profile.blk_io = io;
        self
    }
    /// Sets the profile scale.
    ///
    /// ```
    /// use switchover_sim::{run, SimConfig};
    /// use switchover_baseline::Strategy;
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
    /// use switchover_sim::{run, SimConfig};
    /// use switchover_baseline::Strategy;
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
    /// use switchover_sim::KvmModel;
    /// use switchover_sim::{run, SimConfig};
    /// use switchover_baseline::Strategy;
    /// use switchover::topology::Topology;
    /// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02).kvm(KvmModel::PerVmIoeventfd);
    /// assert_eq!(cfg.profile.kvm, KvmModel::PerVmIoeventfd);
    /// let r = run(&cfg, Strategy::Engine);
    /// assert!(r.outcome.cause().is_none() && r.checks.double_ioctls == 0);
    /// ```
    pub fn kvm(mut self, m: KvmModel) -> Self {
        self.profile.kvm = m;
        self
    }
    /// Sets the faults.
    ///
    /// ```
    /// use switchover_sim::{run, SimConfig};
    /// use switchover_baseline::Strategy;
    /// use switchover::roles::Outcome;
    /// use switchover::topology::Topology;
    /// let cfg = SimConfig::new(Topology::preset("small").unwrap())
    ///     .scale(0.02)
    ///     .faults(vec!["error:get_vring_base:net1".parse().unwrap()]);
    /// let r = run(&cfg, Strategy::Engine);
    /// assert!(matches!(r.outcome, Outcome::RolledBack { .. }));
    /// assert_eq!(r.outcome.cause().unwrap().device_name(), Some("net1"));
    /// assert!(r.checks.vring_bases_preserved); // the source resumes with every base it read
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
    /// use switchover_sim::SimConfig;
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
    /// use switchover_sim::{run, SimConfig};
    /// use switchover_baseline::Strategy;
    /// use switchover::topology::Topology;
    /// let cfg = SimConfig::new(Topology::preset("single-net").unwrap())
    ///     .scale(0.02)
    ///     .deadline(Duration::from_millis(100))
    ///     .faults(vec!["hang:get_vring_base:net0".parse().unwrap()]);
    /// let r = run(&cfg, Strategy::Engine);
    /// let failed = r.outcome.cause().and_then(|c| c.step()).unwrap();
    /// assert_eq!(failed.failure, StepFailure::Timeout { after: Duration::from_millis(100) });
    /// ```
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = d;
        self
    }
    fn opts(&self, base: RecipeOptions) -> RecipeOptions {
        RecipeOptions { deadline: self.deadline, drain_deadline: self.drain_deadline, blk_policy: self.blk_policy, ..base }
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

/// One side of a simulated switchover, ready for a role: the engine plan, its
/// actions on fresh simulated backends, the side's state, and its recovery (the
/// source's rollback, the destination's fence) on the same backends without the
/// injected faults.
///
/// ```
/// use switchover::exec::Engine;
/// use switchover::ids::Side;
/// use switchover_sim::{SimConfig, SimRole};
/// use switchover::roles::{run_in_process, Outcome};
/// use switchover::topology::Topology;
/// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
/// let (src, dst) = (SimRole::new(&cfg, Side::Source), SimRole::new(&cfg, Side::Destination));
/// let rep = run_in_process(&src.setup, &dst.setup, &mut Engine::new(2), &mut Engine::new(2));
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
    /// use switchover::ids::Side;
    /// use switchover_sim::{SimConfig, SimRole};
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
        let setup = side_setup(plan, &sim, &opts, &cfg.profile);
        SimRole { setup, side: sim, cfg: cfg.clone() }
    }

    /// Its configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }
}

/// A side's setup on `sim`: its plan's actions, and its recovery without faults.
///
/// ```
/// use switchover::exec::Engine;
/// use switchover::ids::Side;
/// use switchover_sim::{SimConfig, SimRole};
/// use switchover::roles::{run_in_process, Outcome};
/// use switchover::topology::Topology;
/// let cfg = SimConfig::new(Topology::preset("small").unwrap())
///     .scale(0.02)
///     .faults(vec!["error:get_vring_base:blk0".parse().unwrap()]);
/// let (src, dst) = (SimRole::new(&cfg, Side::Source), SimRole::new(&cfg, Side::Destination));
/// let rep = run_in_process(&src.setup, &dst.setup, &mut Engine::new(2), &mut Engine::new(2));
/// assert!(matches!(rep.outcome, Outcome::RolledBack { .. }));
/// assert!(rep.rollback.is_some());
/// ```
fn side_setup(plan: Arc<Plan>, sim: &Arc<SimSide>, opts: &RecipeOptions, profile: &Profile) -> SideSetup {
    let actions = Arc::new(SimActions::new(sim.clone(), plan.len()));
    let recovery: Arc<dyn StepActions> = Arc::new(SimActions::new(sim.clone(), 0).without_faults());
    SideSetup::new(plan, actions, sim.state().clone()).with_recovery(opts.clone(), Arc::new(profile.clone()), recovery)
}

/// Runs `strategy` once on fresh simulated backends.
///
/// ```
/// use switchover::ids::Window;
/// use switchover::roles::Outcome;
/// use switchover::topology::Topology;
/// use switchover_baseline::{Strategy, StrategyRun, WindowRun};
/// use switchover_sim::{run, SimConfig};
/// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02).workers(2);
/// let (serial, engine) = (run(&cfg, Strategy::Serial), run(&cfg, Strategy::Engine));
/// assert!(serial.checks.vring_bases_preserved && engine.checks.vring_bases_preserved);
/// // The engine's window holds fewer steps: the rest runs in prepare and cleanup.
/// let in_window = |r: &StrategyRun| -> usize {
///     let blackout = |w: &WindowRun| w.report.records.iter().filter(|x| w.plan.step(x.step).window == Window::Blackout).count();
///     r.windows.iter().map(blackout).sum()
/// };
/// assert!(in_window(&engine) < in_window(&serial));
/// // What its checks found, on simulated backends.
/// assert!(engine.simulated);
/// assert_eq!(engine.outcome, Outcome::Completed);
/// assert!(engine.checks.base_mismatches.is_empty() && engine.checks.double_ioctls == 0);
/// assert_eq!(engine.checks.transactions.0, 2); // one memory transaction per side
/// ```
pub fn run(cfg: &SimConfig, strategy: Strategy) -> StrategyRun {
    let opts = cfg.opts(strategy.recipe());
    let lanes = strategy.lanes(cfg.workers);
    let topo = &cfg.topology;
    let src_plan = Arc::new(build(topo, Side::Source, &opts, &cfg.profile).expect("validated topology"));
    let dst_plan = Arc::new(build(topo, Side::Destination, &opts, &cfg.profile).expect("validated topology"));
    let (src_side, dst_side, ledger) = cfg.sides();
    let lower_bound = LowerBound2::of(&src_plan, &dst_plan, lanes);
    let src = side_setup(src_plan.clone(), &src_side, &opts, &cfg.profile);
    let dst = side_setup(dst_plan.clone(), &dst_side, &opts, &cfg.profile);
    let e = execute(strategy, cfg.workers, &src, &dst);
    // Check what matters: where the guest now runs, every ring has the base the
    // guest had reached.
    let sync = Duration::from_secs(5);
    let (preserved, mismatches) = match &e.outcome {
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
        _ => (false, vec![]),
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
    let on_dst = matches!(e.outcome, Outcome::Completed | Outcome::CompletedWithCleanupErrors { .. });
    let checks = Checks {
        vring_bases_preserved: preserved,
        base_mismatches: mismatches,
        double_ioctls,
        transactions: (commits, changes),
        io: ledger.summary(on_dst),
    };
    StrategyRun::new(strategy, true, e, lanes, lower_bound, checks)
}
