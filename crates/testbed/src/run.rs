//! The serial / pool / engine comparison on REAL components: for each strategy a
//! fresh pair of sides (backend processes, VMs, connections) on fresh guest memory,
//! the same topology, the same guest traffic, then the same checks.
//!
//! # Examples
//!
//! ```
//! use switchover_testbed::side::BackendKind;
//! use switchover_testbed::{BlkBackend, RealConfig};
//! let mut cfg = RealConfig::new("target/release/switchover".into());
//! (cfg.nets, cfg.blks, cfg.blk_backend) = (1, 2, BlkBackend::Own);
//! let t = cfg.topology().unwrap();
//! assert_eq!(cfg.backends(&t), vec![BackendKind::OwnNet, BackendKind::OwnBlk, BackendKind::OwnBlk]);
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use switchover::ids::Side;
use switchover::notifier::NotifierState;
use switchover::recipe::{build, CostModel, RecipeOptions, RouteCommits};
use switchover::roles::{Outcome, SideSetup};
use switchover::state::DeviceState;
use switchover::step::{Server, StepKind};
use switchover::topology::{Device, DeviceKind, Topology};
use switchover_baseline::{execute, Checks, IoSummary, LowerBound2, Strategy, StrategyRun};
use switchover_vhost::sink::NotifierSink;

use crate::dir::PrivateDir;
use crate::driver::{self, BlkOp, DriverRing, RingKind};
use crate::error::RigError;
use crate::mem::GuestMem;
use crate::qsd;
use crate::rig::RigActions;
use crate::side::{BackendKind, RealSide, SideConfig};

/// Which backend serves the blk devices.
///
/// # Examples
///
/// ```
/// use switchover_testbed::side::BackendKind;
/// use switchover_testbed::{BlkBackend, RealConfig};
/// let mut cfg = RealConfig::new("target/release/switchover".into());
/// (cfg.nets, cfg.blks, cfg.blk_backend) = (1, 2, BlkBackend::Mixed);
/// cfg.qsd = Some("/usr/bin/qemu-storage-daemon".into());
/// let t = cfg.topology().unwrap();
/// // blk0 on qemu-storage-daemon, blk1 on the own backend.
/// assert_eq!(cfg.backends(&t), vec![BackendKind::OwnNet, BackendKind::Qsd, BackendKind::OwnBlk]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkBackend {
    /// The project's own blk backend.
    Own,
    /// qemu-storage-daemon.
    Qsd,
    /// Every other blk device on qemu-storage-daemon (blk0, blk2, …), the rest own.
    Mixed,
}

impl BlkBackend {
    /// Parses `own`, `qsd` or `mixed`.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchover_testbed::BlkBackend;
    /// assert_eq!(BlkBackend::parse("qsd"), Some(BlkBackend::Qsd));
    /// assert_eq!(BlkBackend::parse("nvme"), None);
    /// ```
    pub fn parse(s: &str) -> Option<BlkBackend> {
        match s {
            "own" => Some(BlkBackend::Own),
            "qsd" => Some(BlkBackend::Qsd),
            "mixed" => Some(BlkBackend::Mixed),
            _ => None,
        }
    }
}

/// A real run's configuration.
///
/// # Examples
///
/// ```
/// use switchover_testbed::RealConfig;
/// let mut cfg = RealConfig::new("target/release/switchover".into());
/// (cfg.nets, cfg.queue_pairs, cfg.blks, cfg.queues) = (2, 1, 1, 1);
/// let t = cfg.topology().unwrap();
/// assert_eq!(t.total_rings(), 5); // a queue pair is an rx and a tx ring
/// ```
#[derive(Debug, Clone)]
pub struct RealConfig {
    /// Net devices.
    pub nets: u32,
    /// Queue pairs per net device.
    pub queue_pairs: u32,
    /// Blk devices.
    pub blks: u32,
    /// Queues per blk device.
    pub queues: u32,
    /// Backend of the blk devices.
    pub blk_backend: BlkBackend,
    /// Workers of `pool` and `engine`.
    pub workers: usize,
    /// Deadline of every step.
    pub deadline: Duration,
    /// The binary that runs own backends (`EXE real __backend …`).
    pub exe: PathBuf,
    /// qemu-storage-daemon, if installed.
    pub qsd: Option<PathBuf>,
    /// A real fault to cause on the source just before the window opens.
    pub fault: Option<RealFault>,
    /// Limit qemu-storage-daemon to this many I/O operations per second (a
    /// throttle node), so that requests are really in flight at the stop.
    pub qsd_iops: Option<u32>,
    /// Block writes per blk ring left in flight when the window opens (1..=24).
    pub inflight: u16,
    /// Faults injected at steps (`KIND:STEP:DEVICE[:RING]`, see
    /// [`crate::rig`]), on whichever side runs the step.
    pub inject: Vec<switchover_sim::Fault>,
    /// Tests only: devices served by the hostile test backend, as (side, device
    /// name, `MODE@REQUEST`); see [`super::backend::HOSTILE_MODES`]. Own backends
    /// only (a qemu-storage-daemon device ignores it).
    pub hostile: Vec<(Side, String, String)>,
}

/// A fault caused on a real source backend just before the window opens.
///
/// # Examples
///
/// ```
/// use switchover_testbed::{RealConfig, RealFault};
/// let mut cfg = RealConfig::new("target/release/switchover".into());
/// cfg.fault = Some(RealFault::Kill("net3".into()));
/// assert_ne!(cfg.fault, Some(RealFault::Hang("net3".into())));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RealFault {
    /// Kill the named device's backend process (its socket closes).
    Kill(String),
    /// Stop (SIGSTOP) the named device's backend process (it hangs).
    Hang(String),
}

impl RealConfig {
    /// The default real topology for a 2-core host: 8 nets × 8 queue pairs, 8 blks ×
    /// 4 queues, half of the blks on qemu-storage-daemon; 4 workers; 5 s deadlines.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover_testbed::{qsd, BlkBackend, RealConfig};
    /// let cfg = RealConfig::new("target/release/switchover".into());
    /// assert_eq!((cfg.nets, cfg.queue_pairs, cfg.blks, cfg.queues), (8, 8, 8, 4));
    /// assert_eq!((cfg.workers, cfg.deadline, cfg.blk_backend), (4, Duration::from_secs(5), BlkBackend::Mixed));
    /// assert_eq!(cfg.qsd, qsd::find());
    /// ```
    pub fn new(exe: PathBuf) -> RealConfig {
        RealConfig {
            nets: 8,
            queue_pairs: 8,
            blks: 8,
            queues: 4,
            blk_backend: BlkBackend::Mixed,
            workers: 4,
            deadline: Duration::from_secs(5),
            exe,
            qsd: qsd::find(),
            fault: None,
            inject: Vec::new(),
            hostile: Vec::new(),
            inflight: 1,
            qsd_iops: None,
        }
    }

    /// The topology.
    ///
    /// # Errors
    /// Sizes the topology rejects.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchover_testbed::RealConfig;
    /// let mut cfg = RealConfig::new("target/release/switchover".into());
    /// (cfg.nets, cfg.queue_pairs, cfg.blks, cfg.queues) = (1, 2, 1, 3);
    /// let t = cfg.topology().unwrap();
    /// assert_eq!(t.device_by_name("net0").unwrap().rings(), 4);
    /// assert_eq!(t.device_by_name("blk0").unwrap().rings(), 3);
    /// ```
    pub fn topology(&self) -> Result<Topology, RigError> {
        Ok(Topology::builder().name("real").net(self.nets, self.queue_pairs).blk(self.blks, self.queues).build()?)
    }

    /// The backend of each device of `t`.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchover_testbed::side::BackendKind;
    /// use switchover_testbed::{BlkBackend, RealConfig};
    /// let mut cfg = RealConfig::new("target/release/switchover".into());
    /// (cfg.nets, cfg.blks, cfg.blk_backend, cfg.qsd) = (1, 2, BlkBackend::Qsd, None);
    /// let t = cfg.topology().unwrap();
    /// // Without qemu-storage-daemon, the own blk backend serves every blk device.
    /// assert_eq!(cfg.backends(&t), vec![BackendKind::OwnNet, BackendKind::OwnBlk, BackendKind::OwnBlk]);
    /// ```
    pub fn backends(&self, t: &Topology) -> Vec<BackendKind> {
        let mut blk_i = 0;
        t.devices()
            .iter()
            .map(|d| match d.kind {
                DeviceKind::Blk => {
                    let q = match self.blk_backend {
                        BlkBackend::Own => false,
                        BlkBackend::Qsd => true,
                        BlkBackend::Mixed => blk_i % 2 == 0,
                    };
                    blk_i += 1;
                    if q && self.qsd.is_some() {
                        BackendKind::Qsd
                    } else {
                        BackendKind::OwnBlk
                    }
                }
                _ => BackendKind::OwnNet,
            })
            .collect()
    }
}

/// Expected costs of real steps (medians probed on this machine kind); they only
/// order the engine's ready steps and give the lower-bound estimate.
///
/// # Examples
///
/// ```
/// use switchover_testbed::run::RealCosts;
/// use switchover::recipe::CostModel;
/// use switchover::step::{Server, StepKind};
/// use switchover::topology::Topology;
/// let t = Topology::preset("small").unwrap();
/// let d = &t.devices()[0];
/// assert!(RealCosts.cost(d, &StepKind::SetMemTable) > RealCosts.cost(d, &StepKind::HostNotifierOn));
/// assert_eq!(RealCosts.host_notifier_server(), Some(Server::VmIoeventfd));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RealCosts;

impl CostModel for RealCosts {
    fn cost(&self, _d: &Device, kind: &StepKind) -> Duration {
        let us = match kind {
            StepKind::SetMemTable => 150,
            StepKind::GetVringBase => 50,
            k if k.is_message() => 40,
            StepKind::DrainInflight => 5,
            StepKind::HostNotifierOn => 2,
            StepKind::HostNotifierOff => 10,
            StepKind::GuestNotifierOn => 1,
            StepKind::GuestNotifierOff => 50,
            _ => 1,
        };
        Duration::from_micros(us)
    }
    fn host_notifier_server(&self) -> Option<Server> {
        Some(Server::VmIoeventfd)
    }
}

/// One ring's vring base across the switchover.
///
/// # Examples
///
/// ```
/// use switchover_testbed::run::RingBase;
/// let b = RingBase { device: "net0".into(), ring: 1, expected: 12, read: Some(12), set: Some(12) };
/// assert_eq!(b.read, b.set); // preserved across the switchover
/// assert_eq!(b.expected, 12);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingBase {
    /// Device name.
    pub device: String,
    /// Ring.
    pub ring: u32,
    /// Requests the guest had published when the window opened.
    pub expected: u16,
    /// Base read with `GET_VRING_BASE` on the source.
    pub read: Option<u16>,
    /// Base set with `SET_VRING_BASE` (acked) on the destination (or on the source
    /// in a rollback).
    pub set: Option<u16>,
}

/// What one real strategy run did and what was checked.
///
/// # Examples
///
/// ```
/// # use switchover_testbed::run::{DiskCheck, RealRun};
/// # use switchover_sim::{run, SimConfig};
/// # use switchover_baseline::{StrategyRun, Strategy};
/// # use switchover::ids::Side;
/// # use switchover::topology::Topology;
/// # let real = |run: StrategyRun| RealRun {
/// #     runs_on: matches!(run.outcome, switchover::roles::Outcome::Completed).then_some(Side::Destination),
/// #     run, bases: vec![], post_switchover: Ok(0), blk_rings_verified: 0, second_disable_ioctls: 0,
/// #     second_disables_refused: 0, leftover_processes: vec![], leftover_dir: false, backends: vec![],
/// #     reconnects: 0, reconnected: vec![], rollback: None, requests: vec![],
/// #     disk: DiskCheck::default(), drains: vec![],
/// # };
/// # let small = || SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
///
/// let mut r = real(run(&small(), Strategy::Engine));
/// assert!(r.checks_ok());
/// r.leftover_processes.push(4242); // a backend outlived the run
/// assert!(!r.checks_ok());
/// ```
#[derive(Debug, Clone)]
pub struct RealRun {
    /// The run, in the simulation's format (`simulated: false`).
    pub run: StrategyRun,
    /// Every ring's base.
    pub bases: Vec<RingBase>,
    /// Requests submitted after the switchover completed where the guest runs.
    pub post_switchover: Result<usize, Arc<RigError>>,
    /// Blk rings whose data written before the switchover read back identical
    /// through the destination's backend.
    pub blk_rings_verified: usize,
    /// Ioctls issued by a second disable of every source notifier (must be 0).
    pub second_disable_ioctls: u32,
    /// Second disables that were refused by the state machine.
    pub second_disables_refused: usize,
    /// Backend processes still alive after teardown.
    pub leftover_processes: Vec<u32>,
    /// Whether the private socket directory still exists after teardown.
    pub leftover_dir: bool,
    /// The backend of each device.
    pub backends: Vec<BackendKind>,
    /// Where the guest runs after the run: the destination (completed), the
    /// source (aborted before the stop, or rolled back), or nowhere (failed, in
    /// doubt, or a strategy without rollback that failed).
    pub runs_on: Option<Side>,
    /// Source backends replaced by rollback (reconnected).
    pub reconnects: u32,
    /// The devices whose source backends were replaced.
    pub reconnected: Vec<String>,
    /// How long the rollback plan ran (the last source blackout phase), if it ran.
    pub rollback: Option<Duration>,
    /// Every ring's requests: published, and completed as the guest sees it at the
    /// end (`used.idx`); equal when nothing was lost or completed twice.
    pub requests: Vec<RingRequests>,
    /// The guest's block writes, checked against the image files after teardown.
    pub disk: DiskCheck,
    /// The `drain_inflight` steps of this run, per blk backend kind.
    pub drains: Vec<DrainCost>,
}

/// One ring's request count at the end of a run.
///
/// # Examples
///
/// ```
/// use switchover_testbed::run::RingRequests;
/// let r = RingRequests { device: "blk0".into(), ring: 0, published: 9, completed: 9 };
/// assert_eq!(r.published, r.completed); // nothing lost, nothing completed twice
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingRequests {
    /// Device name.
    pub device: String,
    /// Ring.
    pub ring: u32,
    /// Requests the guest published (`avail.idx`).
    pub published: u16,
    /// Requests completed (`used.idx`).
    pub completed: u16,
}

/// The guest's block writes against the image files.
///
/// # Examples
///
/// ```
/// use switchover_testbed::run::DiskCheck;
/// let d = DiskCheck { submitted: 4, acknowledged: 3, on_disk: 3, missing: vec![] };
/// assert!(d.on_disk == d.acknowledged && d.missing.is_empty());
/// assert_eq!(DiskCheck::default().submitted, 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskCheck {
    /// Writes the guest submitted (before the stop, in flight at the stop, after).
    pub submitted: usize,
    /// Writes the guest saw completed (status 0, below `used.idx`).
    pub acknowledged: usize,
    /// Acknowledged writes whose data is in the image file.
    pub on_disk: usize,
    /// Acknowledged writes whose data is not on disk (`device ring request`).
    pub missing: Vec<String>,
}

/// What the `drain_inflight` steps cost on one kind of blk backend (REAL).
///
/// # Examples
///
/// ```
/// use switchover_testbed::run::DrainCost;
/// use switchover_testbed::side::BackendKind;
/// let c = DrainCost { backend: BackendKind::Qsd.name().into(), steps: 4, total_ms: 0.8, max_ms: 0.3 };
/// assert!(c.max_ms <= c.total_ms);
/// assert_eq!(c.backend, "qemu-storage-daemon");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DrainCost {
    /// Backend kind name.
    pub backend: String,
    /// Drain steps run.
    pub steps: usize,
    /// Their total duration (ms).
    pub total_ms: f64,
    /// The longest (ms).
    pub max_ms: f64,
}

impl RealRun {
    /// Whether every check passed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use switchover_testbed::run::{DiskCheck, RealRun};
    /// # use switchover_sim::{run, SimConfig};
    /// # use switchover_baseline::{StrategyRun, Strategy};
    /// # use switchover::ids::Side;
    /// # use switchover::topology::Topology;
    /// # let real = |run: StrategyRun| RealRun {
    /// #     runs_on: matches!(run.outcome, switchover::roles::Outcome::Completed).then_some(Side::Destination),
    /// #     run, bases: vec![], post_switchover: Ok(0), blk_rings_verified: 0, second_disable_ioctls: 0,
    /// #     second_disables_refused: 0, leftover_processes: vec![], leftover_dir: false, backends: vec![],
    /// #     reconnects: 0, reconnected: vec![], rollback: None, requests: vec![],
    /// #     disk: DiskCheck::default(), drains: vec![],
    /// # };
    /// # let small = || SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
    ///
    /// let mut r = real(run(&small(), Strategy::Engine));
    /// assert!(r.checks_ok());
    /// r.leftover_dir = true;
    /// assert!(!r.checks_ok());
    /// ```
    pub fn checks_ok(&self) -> bool {
        self.run.checks.vring_bases_preserved
            && self.post_switchover.is_ok()
            && self.second_disable_ioctls == 0
            && self.run.checks.double_ioctls == 0
            && self.requests_exact()
            && self.disk.missing.is_empty()
            && self.leftover_processes.is_empty()
            && !self.leftover_dir
    }

    /// Whether the run ended as a strategy without rollback must end after an
    /// injected fault (failed, the guest nowhere), with nothing left behind.
    ///
    /// # Examples
    ///
    /// ```
    /// # use switchover_testbed::run::{DiskCheck, RealRun};
    /// # use switchover_sim::{run, SimConfig};
    /// # use switchover_baseline::{StrategyRun, Strategy};
    /// # use switchover::ids::Side;
    /// # use switchover::topology::Topology;
    /// # let real = |run: StrategyRun| RealRun {
    /// #     runs_on: matches!(run.outcome, switchover::roles::Outcome::Completed).then_some(Side::Destination),
    /// #     run, bases: vec![], post_switchover: Ok(0), blk_rings_verified: 0, second_disable_ioctls: 0,
    /// #     second_disables_refused: 0, leftover_processes: vec![], leftover_dir: false, backends: vec![],
    /// #     reconnects: 0, reconnected: vec![], rollback: None, requests: vec![],
    /// #     disk: DiskCheck::default(), drains: vec![],
    /// # };
    /// # let small = || SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
    ///
    /// let faulty = small().faults(vec!["error:get_vring_base:net1".parse().unwrap()]);
    /// let serial = real(run(&faulty, Strategy::Serial));
    /// assert!(serial.failed_without_rollback_ok()); // failed, nothing left behind
    /// assert!(!real(run(&small(), Strategy::Serial)).failed_without_rollback_ok());
    /// ```
    pub fn failed_without_rollback_ok(&self) -> bool {
        matches!(self.run.outcome, Outcome::Failed { .. })
            && self.run.strategy != Strategy::Engine
            && self.leftover_processes.is_empty()
            && !self.leftover_dir
            && self.disk.missing.is_empty()
    }

    /// Whether every ring completed exactly the requests the guest published.
    ///
    /// # Examples
    ///
    /// ```
    /// # use switchover_testbed::run::{DiskCheck, RealRun};
    /// # use switchover_sim::{run, SimConfig};
    /// # use switchover_baseline::{StrategyRun, Strategy};
    /// # use switchover::ids::Side;
    /// # use switchover::topology::Topology;
    /// # let real = |run: StrategyRun| RealRun {
    /// #     runs_on: matches!(run.outcome, switchover::roles::Outcome::Completed).then_some(Side::Destination),
    /// #     run, bases: vec![], post_switchover: Ok(0), blk_rings_verified: 0, second_disable_ioctls: 0,
    /// #     second_disables_refused: 0, leftover_processes: vec![], leftover_dir: false, backends: vec![],
    /// #     reconnects: 0, reconnected: vec![], rollback: None, requests: vec![],
    /// #     disk: DiskCheck::default(), drains: vec![],
    /// # };
    /// # let small = || SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
    ///
    /// use switchover_testbed::run::RingRequests;
    /// let mut r = real(run(&small(), Strategy::Engine));
    /// r.requests.push(RingRequests { device: "net0".into(), ring: 0, published: 5, completed: 5 });
    /// assert!(r.requests_exact());
    /// r.requests[0].completed = 6; // completed twice
    /// assert!(!r.requests_exact());
    /// ```
    pub fn requests_exact(&self) -> bool {
        self.runs_on.is_none() || self.requests.iter().all(|r| r.published == r.completed)
    }
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks existence.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

fn ring_kinds(topo: &Topology) -> Vec<DriverRing> {
    let mut v = Vec::new();
    let mut g = 0;
    for d in topo.devices() {
        for r in 0..d.rings() {
            let kind = match d.kind {
                DeviceKind::Blk => RingKind::Blk,
                _ if r % 2 == 0 => RingKind::NetRx,
                _ => RingKind::NetTx,
            };
            v.push(DriverRing { g, device: d.id, ring: r, kind, avail: 0 });
            g += 1;
        }
    }
    v
}

/// Requests the guest submits on global ring `g` before the switchover (1..=23,
/// different on neighbouring rings).
///
/// # Examples
///
/// ```
/// use switchover_testbed::run::pre_requests;
/// assert!((0..64).all(|g| (1..=23).contains(&pre_requests(g))));
/// assert_ne!(pre_requests(0), pre_requests(1));
/// ```
pub fn pre_requests(g: u32) -> u16 {
    1 + ((g * 7 + 3) % 23) as u16
}

/// Runs `strategy` once on fresh real components and checks the result.
///
/// # Errors
/// Set-up failures (a backend that does not start, /dev/kvm missing, …), naming
/// the device; failures during the switchover are reported in the run instead.
///
/// # Examples
///
/// ```no_run
/// use switchover_testbed::{run_strategy, BlkBackend, RealConfig};
/// use switchover_baseline::Strategy;
/// // Needs /dev/kvm; this crate's binary runs the own backends.
/// let mut cfg = RealConfig::new("target/release/switchover".into());
/// (cfg.nets, cfg.queue_pairs, cfg.blks, cfg.queues, cfg.blk_backend) = (1, 1, 1, 1, BlkBackend::Own);
/// let r = run_strategy(&cfg, Strategy::Engine).unwrap();
/// assert!(r.checks_ok(), "{:?}", r.run.outcome.cause());
/// assert!(!r.run.simulated);
/// ```
pub fn run_strategy(cfg: &RealConfig, strategy: Strategy) -> Result<RealRun, RigError> {
    let topo = Arc::new(cfg.topology()?);
    let dir = PrivateDir::new().map_err(RigError::io("private directory"))?;
    let dir_path = dir.path().to_path_buf();
    let backends = cfg.backends(&topo);
    let mut images = Vec::new();
    for d in topo.devices() {
        if d.kind == DeviceKind::Blk {
            let p = dir.join(&format!("{}.img", d.name));
            let f = std::fs::File::create(&p).map_err(RigError::io(p.display().to_string()))?;
            f.set_len(1 << 20).map_err(RigError::io(p.display().to_string()))?;
            images.push(Some(p));
        } else {
            images.push(None);
        }
    }
    let hostile_on = |side: Side| cfg.hostile.iter().filter(|h| h.0 == side).map(|h| (h.1.clone(), h.2.clone())).collect::<Vec<_>>();
    let mut side_cfg = SideConfig {
        exe: cfg.exe.clone(),
        dir: dir_path.clone(),
        qsd: cfg.qsd.clone(),
        backends: backends.clone(),
        images,
        deadline: cfg.deadline,
        qsd_iops: cfg.qsd_iops,
        hostile: hostile_on(Side::Source),
    };
    let mem = Arc::new(GuestMem::new(topo.total_rings() as usize).map_err(RigError::io("guest memory"))?);
    let src_state = Arc::new(DeviceState::new(&topo));
    let dst_state = Arc::new(DeviceState::new(&topo));
    let src = Arc::new(RealSide::connect(&side_cfg, Side::Source, &topo, mem.clone(), src_state.clone())?);
    src.bring_up(cfg.deadline)?;
    let kick = |side: &RealSide, r: &DriverRing| -> Result<(), RigError> {
        let fd = side.notifiers().kick(r.device, r.ring).ok_or_else(|| RigError::Config(format!("no kick eventfd for ring {}", r.g)))?;
        driver::kick(fd)
    };

    // The guest runs on the source: requests on every ring.
    let mut rings = ring_kinds(&topo);
    let names: Vec<String> = topo.devices().iter().flat_map(|d| (0..d.rings()).map(move |r| format!("{} ring {r}", d.name))).collect();
    let name_of = |r: &DriverRing| names[r.g as usize].clone();
    // The guest's blk writes (global ring, ring, request), checked on disk at the end.
    let mut writes: Vec<(u32, u32, u16)> = Vec::new();
    for r in &mut rings {
        for _ in 0..pre_requests(r.g) {
            if r.kind == RingKind::Blk {
                writes.push((r.g, r.ring, r.avail));
            }
            driver::submit(&mem, r, BlkOp::Write)?;
        }
        kick(&src, r)?;
    }
    driver::wait_all(&mem, &rings, &name_of, Duration::from_secs(10))?;
    for r in rings.iter().filter(|r| r.kind == RingKind::Blk) {
        for k in 0..r.avail {
            let (st, _) = driver::blk_result(&mem, r.g, k);
            if st != 0 {
                return Err(RigError::Guest(format!("src {}: write request {k} ended with status {st}", name_of(r))));
            }
        }
    }

    // The destination's backends and connections exist before the switchover.
    side_cfg.hostile = hostile_on(Side::Destination);
    let dst = Arc::new(RealSide::connect(&side_cfg, Side::Destination, &topo, mem.clone(), dst_state.clone())?);

    // More writes per blk ring, submitted once the destination is connected, so
    // they are still in flight when the window opens: the drain step waits for them.
    let inflight = cfg.inflight.clamp(1, 24);
    for r in rings.iter_mut().filter(|r| r.kind == RingKind::Blk) {
        for _ in 0..inflight {
            writes.push((r.g, r.ring, r.avail));
            driver::submit(&mem, r, BlkOp::Write)?;
        }
        kick(&src, r)?;
    }
    let expected: Vec<u16> = rings.iter().map(|r| r.avail).collect();

    let ioctls_before = |s: &RealSide| -> Vec<(u32, u32)> {
        rings.iter().map(|r| (s.notifiers().ioctls(r.device, r.ring, true), s.notifiers().ioctls(r.device, r.ring, false))).collect()
    };
    let src_before = ioctls_before(&src);
    let dst_before = ioctls_before(&dst);

    // Not yet on the real rig: dirty logging, route commits, reconciliation and
    // storage hand-over (one memory on one host, IOAPIC pins, image locking off).
    let opts = RecipeOptions {
        deadline: cfg.deadline,
        drain_deadline: cfg.deadline,
        dirty_log: false,
        reconcile: false,
        routes: RouteCommits::None,
        storage: false,
        ..strategy.recipe()
    };
    let lanes = strategy.lanes(cfg.workers);
    if let Some(f) = &cfg.fault {
        let (name, sig) = match f {
            RealFault::Kill(n) => (n, libc::SIGKILL),
            RealFault::Hang(n) => (n, libc::SIGSTOP),
        };
        let d = topo.device_by_name(name).ok_or_else(|| RigError::Config(format!("fault: no device named '{name}'")))?;
        src.signal_backend(d.id, sig)?;
    }
    let src_plan = Arc::new(build(&topo, Side::Source, &opts, &RealCosts)?);
    let dst_plan = Arc::new(build(&topo, Side::Destination, &opts, &RealCosts)?);
    let lower_bound = LowerBound2::of(&src_plan, &dst_plan, lanes);
    let src_act = Arc::new(RigActions::new(src.clone(), &cfg.inject));
    let dst_act = Arc::new(RigActions::new(dst.clone(), &cfg.inject));
    let rb_act = Arc::new(src_act.for_rollback());
    let fence_act = Arc::new(dst_act.for_rollback());
    let s = SideSetup::new(src_plan.clone(), src_act.clone(), src_state.clone()).with_recovery(
        opts.clone(),
        Arc::new(RealCosts),
        rb_act.clone(),
    );
    let d =
        SideSetup::new(dst_plan.clone(), dst_act.clone(), dst_state.clone()).with_recovery(opts.clone(), Arc::new(RealCosts), fence_act);
    let executed = execute(strategy, cfg.workers, &s, &d);
    let outcome = executed.outcome.clone();
    let completed = matches!(outcome, Outcome::Completed | Outcome::CompletedWithCleanupErrors { .. });
    // Exactly one side runs the guest: the destination once it confirmed, the
    // source when it was never stopped (aborted) or was restarted (rolled back).
    let runs_on = match &outcome {
        Outcome::Completed | Outcome::CompletedWithCleanupErrors { .. } => Some(Side::Destination),
        Outcome::Aborted { .. } | Outcome::RolledBack { .. } => Some(Side::Source),
        _ => None,
    };
    if runs_on != Some(Side::Destination) {
        // The destination will not run the guest: it is discarded (its backends
        // stop and can no longer touch the shared rings).
        dst.shutdown();
    }
    let running = match runs_on {
        Some(Side::Destination) => Some((&dst, &dst_act)),
        Some(Side::Source) => Some((&src, &rb_act)),
        None => None,
    };
    let lost = src.reconnected();
    let mut bases = Vec::new();
    let mut mismatches = Vec::new();
    for d in topo.devices() {
        for r in 0..d.rings() {
            let g = src.global(d.id, r);
            let rb = RingBase {
                device: d.name.clone(),
                ring: r,
                expected: expected[g as usize],
                read: src_state.base(d.id, r),
                set: running.and_then(|(_, a)| a.sent_base(g)),
            };
            let ok = match runs_on {
                // Every base read on the source was set on the destination.
                Some(Side::Destination) => rb.read == Some(rb.expected) && rb.set == rb.read,
                // A restarted source ring gets the base the guest reached (read,
                // or recovered from guest memory); a ring never stopped keeps its own.
                // A replaced backend's rings restart at the used index recovered
                // from guest memory: requests the lost backend took but never
                // completed (at most those in flight at the stop) are served again.
                Some(Side::Source) if lost.contains(&d.id) => {
                    rb.set.is_some()
                        && rb.set == rb.read
                        && rb.read.is_some_and(|b| rb.expected.wrapping_sub(b) <= if d.kind == DeviceKind::Blk { inflight } else { 0 })
                }
                Some(Side::Source) => rb.set.map_or(true, |b| b == rb.expected) && rb.read.map_or(true, |b| b == rb.expected),
                None => true,
            };
            if !ok {
                mismatches.push((d.name.clone(), r, rb.set, rb.expected));
            }
            bases.push(rb);
        }
    }
    let preserved = runs_on.is_some() && mismatches.is_empty();

    // The guest continues where it runs: per blk ring one more write and a read of
    // the first write; per net ring one request. All must complete there.
    let mut blk_rings_verified = 0;
    let post_switchover = match running {
        None => Err(Arc::new(RigError::Guest("the guest runs nowhere (switchover failed without rollback)".to_string()))),
        Some((side, _)) => (|| {
            let mut reads = Vec::new();
            for r in &mut rings {
                if r.kind == RingKind::Blk {
                    writes.push((r.g, r.ring, r.avail));
                    driver::submit(&mem, r, BlkOp::Write)?;
                    reads.push((r.g, r.avail));
                }
                driver::submit(&mem, r, BlkOp::Read(0))?;
                kick(side, r)?;
            }
            driver::wait_all(&mem, &rings, &name_of, Duration::from_secs(10))?;
            for (g, k) in reads {
                let (st, data) = driver::blk_result(&mem, g, k);
                if st != 0 || data != driver::pattern(g, 0) {
                    return Err(RigError::Guest(format!("{}: read-back after switchover differs (status {st})", names[g as usize])));
                }
                blk_rings_verified += 1;
            }
            Ok(rings.len())
        })()
        .map_err(Arc::new),
    };
    // Nothing completes twice: give late completions a moment to show.
    std::thread::sleep(Duration::from_millis(20));
    let requests: Vec<RingRequests> = rings
        .iter()
        .map(|r| {
            let (device, ring) =
                names[r.g as usize].split_once(" ring ").map(|(d, x)| (d.to_string(), x.parse().unwrap_or(0))).unwrap_or_default();
            RingRequests { device, ring, published: r.avail, completed: mem.used_idx(r.g) }
        })
        .collect();

    // The blk write left in flight on every blk ring when the window opened: it
    // completed exactly once where the guest runs (before the base was read, or,
    // after a rollback, by the restarted backend).
    let mut io = IoSummary::default();
    for (r, b) in rings.iter().zip(&bases).filter(|(r, _)| r.kind == RingKind::Blk) {
        for k in (0..inflight).map(|i| b.expected.wrapping_sub(inflight - i)) {
            io.submitted += 1;
            let (st, _) = driver::blk_result(&mem, r.g, k);
            let used = mem.used_idx(r.g);
            // Completed as the guest sees it: status 0 and `used.idx` past it. Twice or
            // lost shows in the ring's request count ([`RealRun::requests_exact`]).
            let seen = used.wrapping_sub(k).wrapping_sub(1) < 0x8000;
            if st != 0 || !seen {
                io.never += 1;
            } else if running.is_none() {
                io.lost += 1;
            } else if used.wrapping_sub(r.avail) != 0 && used.wrapping_sub(r.avail) < 0x8000 {
                io.completed_twice += 1;
            } else {
                io.completed_once += 1;
            }
        }
    }

    // Exactly-once: a second disable of every source notifier issues nothing.
    let mut second_disable_ioctls = 0;
    let mut second_disables_refused = 0;
    if completed {
        let n = src.notifiers();
        for r in &rings {
            for host in [true, false] {
                // A notifier whose disable failed (an injected cleanup fault) is
                // still on: disabling it again is the retry, not a second disable.
                if n.state(r.device, r.ring, host) != Some(NotifierState::Disabled) {
                    continue;
                }
                let before = n.ioctls(r.device, r.ring, host);
                let again = if host { n.host_notifier(r.device, r.ring, false) } else { n.guest_notifier(r.device, r.ring, false) };
                let issued = n.ioctls(r.device, r.ring, host) - before;
                if again.is_ok() && issued == 0 {
                    second_disables_refused += 1;
                }
                second_disable_ioctls += issued;
            }
        }
    }
    let mut double_ioctls = 0;
    for (s, before) in [(&src, &src_before), (&dst, &dst_before)] {
        for (r, (h, gu)) in rings.iter().zip(before) {
            if s.notifiers().ioctls(r.device, r.ring, true) - h > 1 {
                double_ioctls += 1;
            }
            if s.notifiers().ioctls(r.device, r.ring, false) - gu > 1 {
                double_ioctls += 1;
            }
        }
    }
    let (c1, n1) = src.notifiers().transactions();
    let (c2, n2) = dst.notifiers().transactions();
    let reconnects = src.reconnects();

    // Teardown: channels closed, every backend process stopped and reaped, the
    // private directory (sockets, images) removed.
    let pids: Vec<u32> = src.pids().into_iter().chain(dst.pids()).collect();
    drop((src_act, dst_act, rb_act, s, d));
    src.shutdown();
    dst.shutdown();
    drop(src);
    drop(dst);

    // Every write the guest saw completed is in the image file.
    let mut disk = DiskCheck { submitted: writes.len(), ..DiskCheck::default() };
    let dev_of_ring: Vec<(usize, &str)> =
        topo.devices().iter().flat_map(|d| (0..d.rings()).map(move |_| (d.id.0 as usize, d.name.as_str()))).collect();
    for &(g, ring, k) in &writes {
        let (st, _) = driver::blk_result(&mem, g, k);
        let used = mem.used_idx(g);
        let completed_k = used.wrapping_sub(k).wrapping_sub(1) < 0x8000;
        if st != 0 || !completed_k {
            continue;
        }
        disk.acknowledged += 1;
        let (di, dname) = dev_of_ring[g as usize];
        let mut buf = vec![0u8; 512];
        let ok = side_cfg.images[di]
            .as_ref()
            .and_then(|p| std::fs::File::open(p).ok())
            .map(|f| {
                use std::os::unix::fs::FileExt;
                f.read_exact_at(&mut buf, (u64::from(ring) * 64 + u64::from(k)) * 512).is_ok() && buf == driver::pattern(g, k)
            })
            .unwrap_or(false);
        if ok {
            disk.on_disk += 1;
        } else {
            disk.missing.push(format!("{dname} ring {ring} request {k}"));
        }
    }
    drop(dir);
    let leftover_processes: Vec<u32> = pids.into_iter().filter(|p| pid_alive(*p)).collect();
    let leftover_dir = dir_path.exists();

    let drains = drain_costs(&backends, &executed.windows);
    let rollback_wall = executed.windows.iter().find(|w| w.rollback).map(|w| w.report.wall);
    let checks =
        Checks { vring_bases_preserved: preserved, base_mismatches: mismatches, double_ioctls, transactions: (c1 + c2, n1 + n2), io };
    let run = StrategyRun::new(strategy, false, executed, lanes, lower_bound, checks);
    Ok(RealRun {
        run,
        bases,
        post_switchover,
        blk_rings_verified,
        second_disable_ioctls,
        second_disables_refused,
        leftover_processes,
        leftover_dir,
        backends,
        runs_on,
        reconnects,
        reconnected: lost.iter().map(|d| topo.device(*d).name.clone()).collect(),
        rollback: rollback_wall,
        requests,
        disk,
        drains,
    })
}

/// The `drain_inflight` steps that completed, summed per blk backend kind.
fn drain_costs(backends: &[BackendKind], windows: &[switchover_baseline::WindowRun]) -> Vec<DrainCost> {
    let mut out: Vec<DrainCost> = Vec::new();
    for w in windows {
        for rec in &w.report.records {
            let st = w.plan.step(rec.step);
            if st.kind != StepKind::DrainInflight {
                continue;
            }
            let kind = backends.get(st.device.0 as usize).map(|b| b.name()).unwrap_or("?");
            let ms = rec.end.saturating_sub(rec.start).as_secs_f64() * 1e3;
            match out.iter_mut().find(|c| c.backend == kind) {
                Some(c) => {
                    c.steps += 1;
                    c.total_ms += ms;
                    c.max_ms = c.max_ms.max(ms);
                }
                None => out.push(DrainCost { backend: kind.to_string(), steps: 1, total_ms: ms, max_ms: ms }),
            }
        }
    }
    out
}
