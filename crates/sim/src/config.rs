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
use switchover_baseline::{execute, Checks, LowerBound2, SafetyCheck, Strategy, StrategyRun, DEFAULT_WORKERS};

use crate::{Fault, IoLedger, KvmModel, Profile, SimActions, SimSide, SimVmm, SimWorld};

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
    /// How long a drain may wait for a ring's requests in flight (`None`: the
    /// step deadline).
    pub drain_deadline: Option<Duration>,
    /// Devices (by name) whose configuration the guest changes during precopy.
    pub precopy_changes: Vec<String>,
    /// Whether the engine's destination reconciles (a switch for negative controls).
    pub reconcile: bool,
    /// Whether the log sync collects the dirty log (a switch for negative controls).
    pub log_sync: bool,
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
            profile: Profile::rfc_original(DEFAULT_SCALE).for_topology(&topology),
            topology: Arc::new(topology),
            workers: DEFAULT_WORKERS,
            faults: vec![],
            deadline: switchover::plan::DEFAULT_DEADLINE,
            blk_policy: BlkPolicy::Drain,
            drain_deadline: None,
            precopy_changes: vec![],
            reconcile: true,
            log_sync: true,
        }
    }
    /// Sets the drain deadline (by default the step deadline).
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
        self.drain_deadline = Some(d);
        self
    }
    /// The guest changes these devices' configuration during precopy (driver
    /// reload, ring reset, queue pairs, MSI-X entries): the destination staged the
    /// old one in prepare, and must redo those devices' steps in the window.
    ///
    /// ```
    /// use switchover::topology::Topology;
    /// use switchover_baseline::Strategy;
    /// use switchover_sim::{run, SimConfig};
    /// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02).precopy_changes(&["net1"]);
    /// let r = run(&cfg, Strategy::Engine);
    /// assert!(r.safe(), "{:?}", r.safety);
    /// // Only the changed device paid for its reconcile.
    /// let paid: Vec<_> = switchover_baseline::timed_steps(&r).into_iter().filter(|s| s.step == "reconcile" && s.cost_ns > 0).map(|s| s.device).collect();
    /// assert_eq!(paid, ["net1"]);
    /// ```
    pub fn precopy_changes(mut self, devices: &[&str]) -> Self {
        self.precopy_changes = devices.iter().map(|d| d.to_string()).collect();
        self.profile.changed.clone_from(&self.precopy_changes);
        self
    }
    /// Turns the engine destination's reconcile off (a negative control: a device
    /// changed during precopy then runs on its old configuration, and the check
    /// says so).
    pub fn reconcile(mut self, on: bool) -> Self {
        self.reconcile = on;
        self
    }
    /// Makes the log sync collect nothing (a negative control: the final pass
    /// misses the backends' last writes, and the check says so).
    pub fn log_sync(mut self, on: bool) -> Self {
        self.log_sync = on;
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
    /// Whether the backends negotiate `REPLY_ACK` (the default, as the real
    /// frontend does): every vhost-user message then waits for the backend's reply,
    /// so an error or a dead backend is seen. Without it the start messages are
    /// fire-and-forget: the plans list every vhost-user device in
    /// [`RecipeOptions::unacked`], the destination probes each backend once after
    /// its start, and a switchover that completes says `completed_unverified`.
    ///
    /// ```
    /// use switchover::roles::Outcome;
    /// use switchover::topology::Topology;
    /// use switchover_baseline::Strategy;
    /// use switchover_sim::{run, SimConfig};
    /// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
    /// assert!(cfg.profile.reply_ack);
    /// let r = run(&cfg.reply_ack(false), Strategy::Engine);
    /// assert!(matches!(r.outcome, Outcome::CompletedUnverified { .. }));
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
    /// The recipe options of `strategy`'s plans under this configuration.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover::topology::Topology;
    /// use switchover_baseline::Strategy;
    /// use switchover_sim::SimConfig;
    /// let cfg = SimConfig::new(Topology::preset("small").unwrap()).deadline(Duration::from_millis(200));
    /// let o = cfg.recipe(Strategy::Engine);
    /// // The drain honours the step deadline unless given its own.
    /// assert_eq!((o.deadline, o.drain_deadline), (Duration::from_millis(200), Duration::from_millis(200)));
    /// assert!(o.unacked.is_empty());
    /// assert_eq!(cfg.reply_ack(false).recipe(Strategy::Engine).unacked.len(), 4);
    /// ```
    pub fn recipe(&self, strategy: Strategy) -> RecipeOptions {
        let base = strategy.recipe();
        let unacked =
            if self.profile.reply_ack { vec![] } else { self.topology.devices().iter().filter(|d| d.rings() > 0).map(|d| d.id).collect() };
        RecipeOptions {
            deadline: self.deadline,
            drain_deadline: self.drain_deadline.unwrap_or(self.deadline),
            blk_policy: self.blk_policy,
            reconcile: base.reconcile && self.reconcile,
            unacked,
            ..base
        }
    }
    fn world(&self) -> Arc<SimWorld> {
        let changes = self.precopy_changes.iter().filter_map(|n| self.topology.device_by_name(n)).map(|d| d.id).collect();
        let w = SimWorld::new(self.topology.clone(), changes, true);
        Arc::new(if self.log_sync { w } else { w.without_log_sync() })
    }
    fn sides(&self) -> (Arc<SimSide>, Arc<SimSide>, Arc<IoLedger>, Arc<SimWorld>) {
        let ledger = Arc::new(IoLedger::default());
        let ho = self.blk_policy == BlkPolicy::HandOver;
        let topo = &self.topology;
        let world = self.world();
        let side = |s| {
            let state = Arc::new(DeviceState::new(topo));
            Arc::new(SimSide::in_world(topo, s, &self.profile, &self.faults, state, ledger.clone(), ho, world.clone()))
        };
        let (src, dst) = (side(Side::Source), side(Side::Destination));
        world.set_sides(&src, &dst);
        (src, dst, ledger, world)
    }
}

/// One side of a simulated switchover, ready for a role: the engine plan, its
/// actions on fresh simulated backends, the side's state, the simulated VMM's
/// hooks, and its recovery (the source's rollback, the destination's fence) on
/// the same backends without the injected faults.
///
/// ```
/// use switchover::exec::Engine;
/// use switchover::ids::Side;
/// use switchover_sim::{SimConfig, SimRole};
/// use switchover::roles::{run_in_process, Outcome};
/// use switchover::topology::Topology;
/// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
/// let (src, dst) = SimRole::pair(&cfg);
/// let rep = run_in_process(&src.setup, &dst.setup, &mut Engine::new(2), &mut Engine::new(2));
/// assert_eq!(rep.outcome, Outcome::Completed);
/// assert!(dst.side.sync(std::time::Duration::from_secs(5)));
/// assert!(dst.side.base_mismatches().is_empty());
/// assert_eq!(dst.side.world().running(), Some(Side::Destination));
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
    /// Builds `side` of the engine's plan for `cfg` on fresh simulated backends, in
    /// a world of its own (one role of a two-process switchover: it sees only its
    /// side).
    ///
    /// ```
    /// use switchover::ids::Side;
    /// use switchover_sim::{SimConfig, SimRole};
    /// use switchover::topology::Topology;
    /// let role = SimRole::new(&SimConfig::new(Topology::preset("small").unwrap()), Side::Destination);
    /// assert_eq!(role.setup.plan.side(), Side::Destination);
    /// assert_eq!(role.side.state().captured(), 0); // nothing has crossed yet
    /// assert!(!role.side.world().shared());
    /// ```
    pub fn new(cfg: &SimConfig, side: Side) -> SimRole {
        let topo = &cfg.topology;
        let world = Arc::new(SimWorld::one_side(topo.clone(), side));
        let state = Arc::new(DeviceState::new(topo));
        let ledger = Arc::new(IoLedger::default());
        let ho = cfg.blk_policy == BlkPolicy::HandOver;
        let sim = Arc::new(SimSide::in_world(topo, side, &cfg.profile, &cfg.faults, state, ledger, ho, world));
        SimRole::on(cfg, sim)
    }

    /// Both sides of the engine's plan for `cfg`, in one world (both roles in one
    /// process): the source first.
    pub fn pair(cfg: &SimConfig) -> (SimRole, SimRole) {
        let (src, dst, _, _) = cfg.sides();
        (SimRole::on(cfg, src), SimRole::on(cfg, dst))
    }

    fn on(cfg: &SimConfig, sim: Arc<SimSide>) -> SimRole {
        let opts = cfg.recipe(Strategy::Engine);
        let plan = Arc::new(build(&cfg.topology, sim.side(), &opts, &cfg.profile).expect("validated topology"));
        let setup = side_setup(plan, &sim, &opts, &cfg.profile);
        SimRole { setup, side: sim, cfg: cfg.clone() }
    }

    /// Its configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }
}

/// A side's setup on `sim`: its plan's actions, the simulated VMM's hooks, and its
/// recovery without faults.
fn side_setup(plan: Arc<Plan>, sim: &Arc<SimSide>, opts: &RecipeOptions, profile: &Profile) -> SideSetup {
    let actions = Arc::new(SimActions::new(sim.clone(), plan.len()));
    let recovery: Arc<dyn StepActions> = Arc::new(SimActions::new(sim.clone(), 0).without_faults());
    SideSetup::new(plan, actions, sim.state().clone()).with_hooks(Arc::new(SimVmm::new(sim.world().clone(), sim.side()))).with_recovery(
        opts.clone(),
        Arc::new(profile.clone()),
        recovery,
    )
}

/// Runs `strategy` once on fresh simulated backends, then checks the result where
/// the guest runs: the vring bases, the notifiers, the block requests, and the
/// world's [`SafetyCheck`]s (see [`safety_checks`]).
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
/// assert!(engine.safe() && serial.safe());
/// ```
pub fn run(cfg: &SimConfig, strategy: Strategy) -> StrategyRun {
    let opts = cfg.recipe(strategy);
    let lanes = strategy.lanes(cfg.workers);
    let topo = &cfg.topology;
    let src_plan = Arc::new(build(topo, Side::Source, &opts, &cfg.profile).expect("validated topology"));
    let dst_plan = Arc::new(build(topo, Side::Destination, &opts, &cfg.profile).expect("validated topology"));
    let (src_side, dst_side, ledger, world) = cfg.sides();
    let lower_bound = LowerBound2::of(&src_plan, &dst_plan, lanes);
    let src = side_setup(src_plan.clone(), &src_side, &opts, &cfg.profile);
    let dst = side_setup(dst_plan.clone(), &dst_side, &opts, &cfg.profile);
    let e = execute(strategy, cfg.workers, &src, &dst);
    if strategy != Strategy::Engine {
        // The baselines model today's VMMs without the roles' hooks: the harness
        // plays their VMM (the guest stopped in the window, resumed where it runs).
        world.stop(Side::Source);
        if e.outcome.guest_on_destination() {
            world.resume(Side::Destination);
        }
    }
    // Check what matters: where the guest now runs, every ring has the base the
    // guest had reached.
    let sync = Duration::from_secs(5);
    let (preserved, mismatches) = if e.outcome.guest_on_destination() {
        let ok = dst_side.sync(sync);
        let m = dst_side.base_mismatches();
        (ok && m.is_empty(), m)
    } else {
        match &e.outcome {
            Outcome::RolledBack { .. } => {
                let ok = src_side.sync(sync);
                let m = src_side.base_mismatches();
                (ok && m.is_empty(), m)
            }
            Outcome::Aborted { .. } => (true, vec![]),
            _ => (false, vec![]),
        }
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
    let on_dst = e.outcome.guest_on_destination();
    let checks = Checks {
        vring_bases_preserved: preserved,
        base_mismatches: mismatches,
        double_ioctls,
        transactions: (commits, changes),
        io: ledger.summary(on_dst),
    };
    let safety = safety_checks(&e.outcome, &world, &dst_side, &checks);
    StrategyRun::new(strategy, true, e, lanes, lower_bound, checks).with_safety(safety)
}

/// The world's checks of a finished run (each can fail; see [`SimWorld`]):
///
/// * `guest on one side` — the guest runs on the side the outcome names, never
///   resumed while it ran on the other;
/// * `storage` — every image owned by the side that runs the guest, no write refused;
/// * `fence` — no destination ring live when the source resumed;
/// * `memory` — every destination ring started on the final used index;
/// * `configuration` — every destination ring runs on the guest's configuration
///   (what a start without `REPLY_ACK` cannot promise: not required of a
///   `completed_unverified` outcome, see [`SafetyCheck::needs_ack`]);
/// * `block requests` — every acknowledged block request completed exactly once
///   where the guest runs.
pub fn safety_checks(outcome: &Outcome, world: &SimWorld, dst: &SimSide, checks: &Checks) -> Vec<SafetyCheck> {
    let f = world.findings();
    let runs = world.running();
    let want = if outcome.guest_on_destination() {
        Some(Side::Destination)
    } else if outcome.guest_on_source() {
        Some(Side::Source)
    } else {
        None
    };
    let mut guest = f.guest.clone();
    match (want, runs) {
        (Some(w), Some(r)) if w == r => {}
        (w, r) => guest.push(
            format!(
                "outcome {}: the guest runs on {}",
                outcome.name(),
                r.map_or("neither side".to_string(), |s| format!("the {}", s.short()))
            ) + &w.map_or(String::new(), |w| format!(", expected the {}", w.short())),
        ),
    }
    let config = if outcome.guest_on_destination() { world.config_findings(dst) } else { vec![] };
    let memory = if outcome.guest_on_destination() { f.memory.clone() } else { vec![] };
    // A request handed over and never resubmitted is lost to a guest on the
    // destination; on the source one still in flight runs on.
    let io = &checks.io;
    let never = if runs == Some(Side::Destination) { io.never } else { 0 };
    let io_lost: Vec<String> = if runs.is_some() && (io.lost > 0 || io.completed_twice > 0 || never > 0) {
        vec![format!("{} lost, {} completed twice, {} never completed of {}", io.lost, io.completed_twice, never, io.submitted)]
    } else {
        vec![]
    };
    vec![
        SafetyCheck::new("guest on one side", guest),
        SafetyCheck::new("storage", f.storage),
        SafetyCheck::new("fence", f.fence),
        SafetyCheck::new("memory", memory),
        SafetyCheck::new("configuration", config).unverified_without_ack(),
        SafetyCheck::new("block requests", io_lost),
    ]
}
