//! The serial / pool / engine comparison on REAL components: for each strategy a
//! fresh pair of sides (backend processes, VMs, connections), each with its own
//! guest memory, the same topology, the same guest traffic, a migration of guest
//! memory from one to the other (precopy passes while the guest runs, the dirty
//! log, the final pass in the window), then the same checks.
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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use switchover::ids::{DeviceId, Side, Window};
use switchover::notifier::NotifierState;
use switchover::recipe::{build, BlkPolicy, CostModel, RecipeOptions, RouteCommits};
use switchover::roles::{lost_devices, Outcome, SideSetup};
use switchover::state::DeviceState;
use switchover::step::{Server, StepKind};
use switchover::topology::{Device, DeviceKind, Topology};
use switchover_baseline::{execute, Checks, IoSummary, LowerBound2, Strategy, StrategyRun, WindowRun};
use switchover_vhost::actions::{hand_over_policies, unacked_devices, VhostDevices};
use switchover_vhost::log::PAGE;
use switchover_vhost::sink::NotifierSink;

use crate::dir::PrivateDir;
use crate::driver::{self, BlkOp, DriverRing, RingKind};
use crate::error::RigError;
use crate::guest::{spare_areas, Change, Workload, WorkloadConfig};
use crate::mem::{GuestMem, GPA_BASE, RING_AREA};
use crate::qsd;
use crate::rig::{RigActions, Switches};
use crate::roles::run_roles;
use crate::safety::{blk_stats, fence_check, storage_check, BlkStats, FenceCheck, StorageCheck};
use crate::side::{BackendKind, RealSide, SideConfig};
use crate::vmm::{Devices, GuestControl, MemStats, RigHooks, RigMigration};

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
    /// A real fault to cause on the source as the window opens (the guest stops).
    pub fault: Option<RealFault>,
    /// Limit qemu-storage-daemon to this many I/O operations per second (a
    /// throttle node), so that requests are really in flight at the stop.
    pub qsd_iops: Option<u32>,
    /// Block writes per blk ring left in flight when the window opens (1..=24).
    pub inflight: u16,
    /// During precopy the guest changes four devices (see [`Change`]): one
    /// net's ring addresses, another's active queue pairs, a blk's MSI-X entry,
    /// another blk's first ring (reset). Needs 2 nets of 2 queue pairs and 2 blks.
    pub precopy_changes: bool,
    /// Tests only, with `precopy_changes`: three more changes ([`Change::EXTRA`]:
    /// a moved doorbell, a vector set to none, a ring torn down).
    pub precopy_extra: bool,
    /// The destination reconciles what prepare staged with the loaded
    /// configuration (`reconcile`), where the strategy's recipe has it. Tests
    /// turn it off to see the checks fail.
    pub reconcile: bool,
    /// Tests only: mechanisms taken away to see their checks fail.
    pub switches: Switches,
    /// Tx packets per active tx ring published without a kick just before the
    /// stop (still in the ring when the source stops).
    pub unkicked_tx: u16,
    /// Precopy passes after the first (full) one.
    pub precopy_passes: u32,
    /// Faults injected at steps (`KIND:STEP:DEVICE[:RING]`, see
    /// [`crate::rig`]), on whichever side runs the step.
    pub inject: Vec<switchover_sim::Fault>,
    /// Inject them only on this side (`None`: on whichever side runs the step;
    /// a kind both sides run then fails on each).
    pub inject_side: Option<Side>,
    /// Tests only: devices served by the hostile test backend, as (side, device
    /// name, `MODE@REQUEST`); see [`super::backend::HOSTILE_MODES`]. Own backends
    /// only (a qemu-storage-daemon device ignores it).
    pub hostile: Vec<(Side, String, String)>,
    /// Throttle each own blk backend to this many IOPS (per device), so that
    /// requests are really in flight at the stop.
    pub blk_iops: Option<u32>,
    /// What happens to blk requests in flight at the stop: `Drain` for every blk
    /// device, or `HandOver` where both sides' backends can (the own blk
    /// backend), drain elsewhere (qemu-storage-daemon).
    pub blk_policy: BlkPolicy,
    /// The own backends offer `REPLY_ACK` (off: they do not; the frontend drives
    /// them without acknowledgements, probes them after their start, and a
    /// completed switchover is `completed_unverified`).
    pub reply_ack: bool,
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
            inject_side: None,
            hostile: Vec::new(),
            inflight: 1,
            qsd_iops: None,
            precopy_changes: false,
            precopy_extra: false,
            reconcile: true,
            switches: Switches::default(),
            unkicked_tx: 0,
            precopy_passes: 3,
            blk_iops: None,
            blk_policy: BlkPolicy::Drain,
            reply_ack: true,
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

/// Expected costs of real steps (medians measured on this machine kind, see
/// docs/real.md); they only order the engine's ready steps and give the
/// lower-bound estimate.
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
/// assert!(RealCosts.cost(d, &StepKind::FinalPass) > RealCosts.cost(d, &StepKind::LogSync));
/// assert_eq!(RealCosts.host_notifier_server(), Some(Server::VmIoeventfd));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RealCosts;

impl CostModel for RealCosts {
    fn cost(&self, d: &Device, kind: &StepKind) -> Duration {
        // The two-host steps' figures are medians of `real` runs on the default
        // topology (see docs/real.md): log_start 0.2–0.3 ms per device when one
        // device at a time (serial), log_sync 4–9 µs (the log of 5 MiB of guest
        // memory), final_pass 0.7–0.9 ms (about 640 pages), route_commit 39–44 µs
        // when nothing else runs (160 routes), ring_notify 2–3 µs, reconcile 1 µs
        // on an unchanged device.
        let us = match kind {
            StepKind::SetMemTable => 150,
            StepKind::GetVringBase => 50,
            // SET_LOG_BASE, SET_FEATURES and one SET_VRING_ADDR per ring, pipelined.
            StepKind::LogStart => 100 + 15 * u64::from(d.rings()),
            // An unchanged device pays nothing; a changed one a few messages.
            StepKind::Reconcile => 1,
            k if k.is_message() => 40,
            StepKind::DrainInflight => 5,
            StepKind::HostNotifierOn => 2,
            StepKind::HostNotifierOff => 10,
            StepKind::GuestNotifierOn => 1,
            StepKind::GuestNotifierOff => 50,
            StepKind::LogSync => 8,
            StepKind::FinalPass => 800,
            StepKind::RouteCommit => 45,
            StepKind::RingNotify => 3,
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
/// let b = RingBase { device: "net0".into(), ring: 1, expected: 12, in_flight: 0, read: Some(12), set: Some(12) };
/// assert_eq!(b.read, b.set); // preserved across the switchover
/// assert_eq!(b.expected, 12);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingBase {
    /// Device name.
    pub device: String,
    /// Ring.
    pub ring: u32,
    /// Requests the guest had kicked when the window opened.
    pub expected: u16,
    /// Of those, the blk requests still in flight (not completed) then.
    pub in_flight: u16,
    /// Base read with `GET_VRING_BASE` on the source.
    pub read: Option<u16>,
    /// Base set with `SET_VRING_BASE` (acked) on the destination (or on the source
    /// in a rollback).
    pub set: Option<u16>,
}

/// The two copies of guest memory after the migration.
///
/// # Examples
///
/// ```
/// use switchover_testbed::run::MemoryCheck;
/// let m = MemoryCheck::default();
/// assert!(m.differing.is_empty() && m.buffers_missing.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryCheck {
    /// What the migration of guest memory did.
    pub stats: MemStats,
    /// Whether the destination's memory was compared with the source's (the
    /// guest runs on the destination).
    pub compared: bool,
    /// Pages that differ although nothing explains it (each with the ring area it
    /// is in): data the destination started on without.
    pub differing: Vec<String>,
    /// Pages that differ because the destination served requests that were in
    /// the rings, unprocessed, at the stop (their used rings).
    pub served_after_start: usize,
    /// Rx packets and read data the guest saw completed before the stop (the
    /// last one of every buffer slot), looked for in the destination's memory.
    pub buffers_checked: usize,
    /// Those not there.
    pub buffers_missing: Vec<String>,
    /// Rings whose used ring the backends' dirty log reported at least once (the
    /// backend logs its writes).
    pub logged_rings: Vec<String>,
}

/// The guest's transmitted packets, as the backends' wires saw them.
///
/// # Examples
///
/// ```
/// use switchover_testbed::run::TxCheck;
/// let t = TxCheck { published: 4, transmitted: 4, missing: vec![], twice: vec![] };
/// assert!(t.missing.is_empty() && t.published == t.transmitted);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxCheck {
    /// Tx packets the guest published.
    pub published: u64,
    /// Transmitted, on either side's wire.
    pub transmitted: u64,
    /// Published and never transmitted (discarded, lost): `ring seq`.
    pub missing: Vec<String>,
    /// Transmitted more than once.
    pub twice: Vec<String>,
}

/// The destination's MSI routes and the order of its start.
///
/// # Examples
///
/// ```
/// use switchover_testbed::run::RouteCheck;
/// let r = RouteCheck::default();
/// assert!(r.before_first_kick && r.enable_before_kick && r.mismatches.is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCheck {
    /// `route_commit` steps in the destination's blackout window.
    pub commits_in_window: usize,
    /// `KVM_SET_GSI_ROUTING` ioctls on the destination's VM.
    pub ioctls: u64,
    /// MSI routes in its routing table at the end.
    pub routes: u64,
    /// Rings whose vector is masked (no route must be there).
    pub masked: usize,
    /// Rings whose route is not their loaded MSI-X entry's message.
    pub mismatches: Vec<String>,
    /// Every ring's route was committed before the ring was kicked (one commit
    /// for the VM: before the first kick of all).
    pub before_first_kick: bool,
    /// Every ring was enabled before it was kicked.
    pub enable_before_kick: bool,
    /// Net rings disabled before their `GET_VRING_BASE` on the source (must be 0).
    pub net_disables_before_stop: usize,
    /// Rings whose ioeventfd is not at the doorbell of the loaded configuration.
    pub doorbells: Vec<String>,
}

impl Default for RouteCheck {
    fn default() -> Self {
        RouteCheck {
            commits_in_window: 0,
            ioctls: 0,
            routes: 0,
            masked: 0,
            mismatches: vec![],
            before_first_kick: true,
            enable_before_kick: true,
            net_disables_before_stop: 0,
            doorbells: vec![],
        }
    }
}

/// What a two-host migration asks beyond the bases: memory per side, the dirty
/// log, routes, reconciliation, the net order.
///
/// # Examples
///
/// ```
/// use switchover_testbed::run::Fidelity;
/// let f = Fidelity::default();
/// assert!(f.ok());
/// assert!(!Fidelity { log_after_failure: Some(3), ..Fidelity::default() }.ok());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fidelity {
    /// The two copies of guest memory.
    pub memory: MemoryCheck,
    /// Tx packets.
    pub tx: TxCheck,
    /// Routes and start order.
    pub routes: RouteCheck,
    /// Devices the destination's `reconcile` redid (by name, in device order).
    pub reconciled: Vec<String>,
    /// Requests those redos sent.
    pub reconcile_messages: usize,
    /// What differed, device by device (`net0: calls [0]`, …).
    pub reconcile_diffs: Vec<String>,
    /// Changes the guest made during precopy: (what, device).
    pub changes: Vec<(String, String)>,
    /// Rings of inactive queue pairs that got requests served after the stop.
    pub inactive_served: Vec<String>,
    /// Rings the guest tore down that the destination's backends started anyway
    /// (as their own ring logs record it).
    pub torn_started: Vec<String>,
    /// Pages the backends logged after a failed migration (the guest back on the
    /// source): logging must be off, so 0.
    pub log_after_failure: Option<u64>,
    /// How long the precopy hook took (passes and the guest's traffic).
    pub precopy: Duration,
}

impl Fidelity {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.memory.differing.is_empty()
            && self.memory.buffers_missing.is_empty()
            && self.tx.missing.is_empty()
            && self.tx.twice.is_empty()
            && self.routes.mismatches.is_empty()
            && self.routes.before_first_kick
            && self.routes.enable_before_kick
            && self.routes.net_disables_before_stop == 0
            && self.routes.doorbells.is_empty()
            && self.inactive_served.is_empty()
            && self.torn_started.is_empty()
            && self.log_after_failure.unwrap_or(0) == 0
    }
}

/// What one real strategy run did and what was checked.
///
/// # Examples
///
/// ```
/// # use switchover_testbed::run::RealRun;
/// # use switchover_sim::{run, SimConfig};
/// # use switchover_baseline::Strategy;
/// # use switchover::topology::Topology;
/// # let small = || SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
/// let mut r = RealRun::bare(run(&small(), Strategy::Engine));
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
    /// Rings that served a request submitted after the switchover completed
    /// where the guest runs.
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
    /// Memory per side, dirty log, routes, reconciliation, net order.
    pub fidelity: Fidelity,
    /// Each blk device's policy for its requests in flight at the stop.
    pub blk_policies: Vec<(String, BlkPolicy)>,
    /// Devices whose backends do not acknowledge requests (no `REPLY_ACK`):
    /// probed after their start; a switchover that completes is
    /// `completed_unverified`, naming them.
    pub unacked: Vec<String>,
    /// Requests the source's backends left in flight at their stop, handed over
    /// in the state (completed on the destination, or by the source's own
    /// backends after a rollback).
    pub handed_over: usize,
    /// One writer per image.
    pub storage: StorageCheck,
    /// No destination ring live when it said it will not run the guest.
    pub fence: FenceCheck,
    /// What the own blk backends counted, both sides.
    pub blk_stats: Vec<BlkStats>,
    /// Source devices brought back by the VMM after an aborted migration whose
    /// prepare failed on them.
    pub repaired: Vec<String>,
    /// What the blk counters say against what the run saw (a handed-over request
    /// resubmitted other than once, host I/O after a stop).
    pub counter_findings: Vec<String>,
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
    /// Requests the guest published in the ring's current setup (on a ring of an
    /// inactive queue pair: those it kicked while the pair was active; the
    /// buffers it left there must stay unused).
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
    /// Writes the guest saw completed (reaped with status 0).
    pub acknowledged: usize,
    /// Acknowledged writes whose data is in the image file.
    pub on_disk: usize,
    /// Acknowledged writes whose data is not on disk (`device ring write`).
    pub missing: Vec<String>,
}

/// What the `drain_inflight` steps cost on one kind of blk backend (REAL).
///
/// # Examples
///
/// ```
/// use switchover_testbed::side::BackendKind;
/// use switchover_testbed::run::DrainCost;
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
    /// A run with nothing checked but what its strategy reported (for reports
    /// and examples; [`run_strategy`] fills every check in).
    pub fn bare(run: StrategyRun) -> RealRun {
        RealRun {
            runs_on: run.outcome.guest_on_destination().then_some(Side::Destination),
            run,
            bases: vec![],
            post_switchover: Ok(0),
            blk_rings_verified: 0,
            second_disable_ioctls: 0,
            second_disables_refused: 0,
            leftover_processes: vec![],
            leftover_dir: false,
            backends: vec![],
            reconnects: 0,
            reconnected: vec![],
            rollback: None,
            requests: vec![],
            disk: DiskCheck::default(),
            drains: vec![],
            fidelity: Fidelity::default(),
            blk_policies: vec![],
            unacked: vec![],
            handed_over: 0,
            storage: StorageCheck::default(),
            fence: FenceCheck::default(),
            blk_stats: vec![],
            repaired: vec![],
            counter_findings: vec![],
        }
    }

    /// Whether every check passed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use switchover_testbed::run::RealRun;
    /// # use switchover_sim::{run, SimConfig};
    /// # use switchover_baseline::Strategy;
    /// # use switchover::topology::Topology;
    /// # let small = || SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
    /// let mut r = RealRun::bare(run(&small(), Strategy::Engine));
    /// assert!(r.checks_ok());
    /// r.leftover_dir = true;
    /// assert!(!r.checks_ok());
    /// ```
    pub fn checks_ok(&self) -> bool {
        self.failed_checks().is_empty()
    }

    /// The names of the checks that failed (empty when every one passed).
    ///
    /// ```
    /// # use switchover_testbed::run::RealRun;
    /// # use switchover_sim::{run, SimConfig};
    /// # use switchover_baseline::Strategy;
    /// # use switchover::topology::Topology;
    /// # let small = || SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
    /// let mut r = RealRun::bare(run(&small(), Strategy::Engine));
    /// r.leftover_processes.push(4242);
    /// assert_eq!(r.failed_checks(), ["leftover processes"]);
    /// ```
    pub fn failed_checks(&self) -> Vec<&'static str> {
        let checks = [
            (self.run.checks.vring_bases_preserved, "vring bases"),
            (self.post_switchover.is_ok(), "after the switchover"),
            (self.second_disable_ioctls == 0, "second disables"),
            (self.run.checks.double_ioctls == 0, "notifiers issued twice"),
            (self.requests_exact(), "requests exactly once"),
            (self.disk.missing.is_empty(), "acknowledged writes on disk"),
            (self.leftover_processes.is_empty(), "leftover processes"),
            (!self.leftover_dir, "socket directory removed"),
            (self.fidelity.memory.differing.is_empty(), "destination memory"),
            (self.fidelity.memory.buffers_missing.is_empty(), "rx and read buffers"),
            (self.fidelity.tx.missing.is_empty() && self.fidelity.tx.twice.is_empty(), "tx exactly once"),
            (self.fidelity.ok(), "fidelity"),
            (self.storage.ok(), "one writer per image"),
            (self.fence.ok(), "fence"),
            (self.counter_findings.is_empty(), "backend counters"),
        ];
        checks.iter().filter(|(ok, _)| !ok).map(|(_, n)| *n).collect()
    }

    /// Whether the run ended as a strategy without rollback must end after an
    /// injected fault (failed, the guest nowhere), with nothing left behind.
    ///
    /// # Examples
    ///
    /// ```
    /// # use switchover_testbed::run::RealRun;
    /// # use switchover_sim::{run, SimConfig};
    /// # use switchover_baseline::Strategy;
    /// # use switchover::topology::Topology;
    /// # let small = || SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
    /// let faulty = small().faults(vec!["error:get_vring_base:net1".parse().unwrap()]);
    /// let serial = RealRun::bare(run(&faulty, Strategy::Serial));
    /// assert!(serial.failed_without_rollback_ok()); // failed, nothing left behind
    /// assert!(!RealRun::bare(run(&small(), Strategy::Serial)).failed_without_rollback_ok());
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
    /// # use switchover_testbed::run::RealRun;
    /// # use switchover_sim::{run, SimConfig};
    /// # use switchover_baseline::Strategy;
    /// # use switchover::topology::Topology;
    /// # let small = || SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
    /// use switchover_testbed::run::RingRequests;
    /// let mut r = RealRun::bare(run(&small(), Strategy::Engine));
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

/// The records of the steps of `kind` in one window run.
fn records<'a>(
    w: &'a WindowRun,
    kind: &'a StepKind,
) -> impl Iterator<Item = (&'a switchover::exec::StepRecord, &'a switchover::step::Step)> + 'a {
    w.report.records.iter().map(|r| (r, w.plan.step(r.step))).filter(move |(_, s)| s.kind == *kind)
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
    if cfg.precopy_changes {
        Change::possible(&topo)?;
    }
    if topo.devices().iter().any(|d| d.kind == DeviceKind::Blk && u64::from(d.rings()) * driver::SECTORS_PER_RING > 2048) {
        return Err(RigError::Config("a blk device has more than 8 queues (each queue writes its own 128 KiB of a 1 MiB image)".into()));
    }
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
        blk_iops: cfg.blk_iops,
        reply_ack: cfg.reply_ack,
        image_lock: !cfg.switches.no_image_lock,
    };
    // Two hosts: each side its own guest memory, the same layout.
    let areas = topo.total_rings() + if cfg.precopy_changes { spare_areas(&topo) } else { 0 };
    let src_mem = Arc::new(GuestMem::new(areas as usize).map_err(RigError::io("source guest memory"))?);
    let dst_mem = Arc::new(GuestMem::new(areas as usize).map_err(RigError::io("destination guest memory"))?);
    let src_state = Arc::new(DeviceState::new(&topo));
    let dst_state = Arc::new(DeviceState::new(&topo));
    let src_devices = Arc::new(Devices::initial(&topo));
    let dst_devices = Arc::new(Devices::empty(&topo));
    let src = Arc::new(RealSide::connect(&side_cfg, Side::Source, &topo, src_mem.clone(), src_state.clone(), src_devices.clone())?);
    src.bring_up(cfg.deadline)?;
    let migration = Arc::new(RigMigration::new(src_mem.clone(), dst_mem.clone()).map_err(RigError::io("dirty log"))?);
    let wcfg = WorkloadConfig {
        inflight: cfg.inflight.clamp(1, 24),
        changes: cfg.precopy_changes,
        extra: cfg.precopy_changes && cfg.precopy_extra,
        unkicked_tx: cfg.unkicked_tx,
        passes: cfg.precopy_passes,
        budget: 12,
        in_flight_ok: topo
            .devices()
            .iter()
            .flat_map(|d| {
                // qemu-storage-daemon keeps serving a disabled ring, and the own blk
                // backend's drain (by its count) or hand-over settles what it took:
                // both may have writes in flight at the stop. The plain own blk
                // backend behind a hostile relay is waited for.
                let hostile = cfg.hostile.iter().any(|h| h.1 == d.name);
                let ok = match backends[d.id.0 as usize] {
                    BackendKind::Qsd => true,
                    BackendKind::OwnBlk => !hostile,
                    BackendKind::OwnNet => false,
                };
                (0..d.rings()).map(move |_| ok)
            })
            .collect(),
    };
    let workload = Arc::new(Workload::new(topo.clone(), src.clone(), migration.clone(), wcfg, cfg.deadline));

    // The guest runs on the source: requests on every ring.
    {
        let mut st = workload.state();
        let names = st.names.clone();
        let name_of = |r: &DriverRing| names[r.g as usize].clone();
        for r in st.rings.iter_mut() {
            for _ in 0..pre_requests(r.g) {
                driver::submit(&src_mem, r, BlkOp::Write)?;
            }
            r.kicked = r.avail;
            let fd = src.notifiers().kick(r.device, r.ring).ok_or_else(|| RigError::Config(format!("no kick eventfd for ring {}", r.g)))?;
            driver::kick(fd)?;
        }
        driver::wait_all(&src_mem, &mut st.rings, &name_of, Duration::from_secs(10))?;
    }

    // The destination's backends and connections exist before the switchover.
    side_cfg.hostile = hostile_on(Side::Destination);
    let dst = Arc::new(RealSide::connect(&side_cfg, Side::Destination, &topo, dst_mem.clone(), dst_state.clone(), dst_devices.clone())?);
    if cfg.switches.skip_storage {
        // The negative control without storage hand-over: the destination's
        // backends take their images at once, next to the source's.
        for d in topo.devices().iter().filter(|d| d.kind == DeviceKind::Blk) {
            if let Some(c) = dst.control(d.id, cfg.deadline) {
                c.activate().map_err(|e| RigError::Config(format!("{}: destination activate: {e}", d.name)))?;
            }
        }
    }

    let all_rings: Vec<(DeviceId, u32)> = topo.devices().iter().flat_map(|d| (0..d.rings()).map(move |r| (d.id, r))).collect();
    let ioctls_before = |s: &RealSide| -> Vec<(u32, u32)> {
        all_rings.iter().map(|&(d, r)| (s.notifiers().ioctls(d, r, true), s.notifiers().ioctls(d, r, false))).collect()
    };
    let src_before = ioctls_before(&src);
    let dst_before = ioctls_before(&dst);

    // Two hosts: dirty logging and the final pass, route commits, reconciliation.
    // Storage handed over as steps, image locking on, where the backend can give
    // its image up (the own blk backend); qemu-storage-daemon cannot (see `qsd`).
    // Requests in flight handed over where both sides' backends can, drained
    // elsewhere. Backends without REPLY_ACK are probed after their start.
    let recipe = strategy.recipe();
    let blk_devices: Vec<DeviceId> = topo.devices().iter().filter(|d| d.kind == DeviceKind::Blk).map(|d| d.id).collect();
    let storage_unmanaged: Vec<DeviceId> = blk_devices
        .iter()
        .copied()
        .filter(|d| src.control(*d, cfg.deadline).is_none() || dst.control(*d, cfg.deadline).is_none())
        .collect();
    let blk_overrides: Vec<(DeviceId, BlkPolicy)> = match cfg.blk_policy {
        BlkPolicy::Drain => vec![],
        BlkPolicy::HandOver => {
            let src_can = hand_over_policies(&topo, &*src);
            src_can
                .into_iter()
                .map(|(d, p)| {
                    let dst_tracks = dst.frontend(d).is_some_and(|f| f.tracks_inflight());
                    (d, if p == BlkPolicy::HandOver && dst_tracks { BlkPolicy::HandOver } else { BlkPolicy::Drain })
                })
                .collect()
        }
    };
    let mut unacked = unacked_devices(&topo, &*src);
    unacked.extend(unacked_devices(&topo, &*dst));
    unacked.sort();
    unacked.dedup();
    let opts = RecipeOptions {
        deadline: cfg.deadline,
        drain_deadline: cfg.deadline,
        dirty_log: true,
        reconcile: recipe.reconcile && cfg.reconcile,
        storage: true,
        storage_unmanaged,
        blk_policy: BlkPolicy::Drain,
        blk_overrides,
        unacked,
        ..recipe
    };
    let lanes = strategy.lanes(cfg.workers);
    if let Some(f) = &cfg.fault {
        let (name, sig) = match f {
            RealFault::Kill(n) => (n, libc::SIGKILL),
            RealFault::Hang(n) => (n, libc::SIGSTOP),
        };
        let d = topo.device_by_name(name).ok_or_else(|| RigError::Config(format!("fault: no device named '{name}'")))?;
        // When the window opens (the guest stops), after prepare and precopy.
        workload.signal_at_stop(d.id, sig);
    }
    let src_plan = Arc::new(build(&topo, Side::Source, &opts, &RealCosts)?);
    let dst_plan = Arc::new(build(&topo, Side::Destination, &opts, &RealCosts)?);
    let lower_bound = LowerBound2::of(&src_plan, &dst_plan, lanes);
    let act = |side: &Arc<RealSide>| {
        let faults: &[switchover_sim::Fault] = if cfg.inject_side.map_or(true, |s| s == side.side()) { &cfg.inject } else { &[] };
        Arc::new(RigActions::new(side.clone(), faults).with_migration(migration.clone(), opts.routes).with_switches(cfg.switches))
    };
    let src_act = act(&src);
    let dst_act = act(&dst);
    let rb_act = Arc::new(src_act.for_rollback());
    let fence_act = Arc::new(dst_act.for_rollback());
    let guest: Arc<dyn GuestControl> = workload.clone();
    let src_hooks = Arc::new(RigHooks::new(Side::Source, src_devices.clone(), guest.clone()));
    let dst_hooks = Arc::new(RigHooks::new(Side::Destination, dst_devices.clone(), guest));
    let s = SideSetup::new(src_plan.clone(), src_act.clone(), src_state.clone())
        .with_recovery(opts.clone(), Arc::new(RealCosts), rb_act.clone())
        .with_hooks(src_hooks.clone());
    let d = SideSetup::new(dst_plan.clone(), dst_act.clone(), dst_state.clone())
        .with_recovery(opts.clone(), Arc::new(RealCosts), fence_act)
        .with_hooks(dst_hooks.clone());
    let (executed, sent) =
        if strategy == Strategy::Engine { run_roles(cfg.workers, &s, &d) } else { (execute(strategy, cfg.workers, &s, &d), Vec::new()) };
    let outcome = executed.outcome.clone();
    let completed = outcome.guest_on_destination();
    // Exactly one side runs the guest: the destination once it confirmed, the
    // source when it was never stopped (aborted) or was restarted (rolled back).
    let runs_on = if outcome.guest_on_destination() {
        Some(Side::Destination)
    } else if outcome.guest_on_source() {
        Some(Side::Source)
    } else {
        None
    };
    let lost_on_abort: Vec<DeviceId> = match outcome {
        Outcome::Aborted { .. } => {
            let failures: Vec<_> =
                executed.windows.iter().filter(|w| w.side() == Side::Source).flat_map(|w| w.report.failures.clone()).collect();
            lost_devices(&src_plan, &failures)
        }
        _ => vec![],
    };
    // Before either side is discarded: what the backends counted, and whether
    // the destination's rings were all stopped when it said it would not run
    // the guest.
    let blk_stats = blk_stats(&topo, &src, &dst, cfg.deadline);
    let fence = fence_check(&topo, &dst, &sent, &backends);
    // An aborted migration whose source backend failed (crashed, hung, erred
    // while its logging started): the VMM brings that device back as it would
    // after any backend crash, outside the switchover — a new backend, its
    // inflight region carried over, its rings restarted where the guest is.
    let repaired = repair(&src, &src_act, &lost_on_abort, cfg.deadline);
    // Then, still before the destination is discarded: who holds each image, and
    // whether the side that does not run the guest could take it.
    let storage = storage_check(&topo, &src, &dst, runs_on, &opts, cfg.deadline);
    if runs_on != Some(Side::Destination) {
        // The destination will not run the guest: it is discarded (its backends
        // stop and can no longer touch its memory).
        dst.shutdown();
    }
    let mut fid = Fidelity { precopy: workload.precopy_time(), ..Fidelity::default() };
    if matches!(outcome, Outcome::Aborted { .. }) && !cfg.switches.keep_logging {
        // The migration was cancelled before the window: the VMM stops logging
        // (after a window, the rollback plan does).
        for dev in topo.devices() {
            if let Err(e) = src_act.vhost().stop_logging(dev.id, cfg.deadline) {
                tracing::warn!(device = %dev.name, error = %e, "stopping dirty logging after an aborted migration");
            }
        }
    }
    let (running, run_mem) = match runs_on {
        Some(Side::Destination) => (Some((&dst, &dst_act)), Some(&dst_mem)),
        Some(Side::Source) => (Some((&src, &rb_act)), Some(&src_mem)),
        None => (None, None),
    };
    if let Some(on) = runs_on {
        // Where the guest runs now: the destination resumed it there, the source
        // after a rollback; an aborted migration never stopped it.
        workload.resume(on);
    }

    // The destination's memory, compared with the source's before the guest
    // touches it: identical but for the used rings of requests still in the rings
    // at the stop, which the destination served once it started.
    let mut st = workload.state();
    let names = st.names.clone();
    let at_stop = st.at_stop.clone();
    let pending_at_stop: Vec<u32> =
        st.rings.iter().filter(|r| r.active && at_stop.as_ref().is_some_and(|a| a[r.g as usize] != r.avail)).map(|r| r.area).collect();
    fid.memory.stats = migration.stats();
    let logged = migration.logged();
    fid.memory.logged_rings =
        st.rings.iter().filter(|r| logged.pages().any(|p| p == GuestMem::used(r.area))).map(|r| names[r.g as usize].clone()).collect();
    // Requests the destination served once it started — handed over at the stop
    // (in flight in the source backend's region), or never taken by the source
    // (past the base it read): their used rings, status bytes and (reads) data
    // may differ, nothing else.
    let handed_over_reqs = src_state.inflight();
    let mut handed_areas: Vec<u32> = Vec::new();
    let mut status_bytes: std::collections::BTreeSet<u64> = std::collections::BTreeSet::new();
    for r in st.rings.iter().filter(|r| r.kind == RingKind::Blk && r.active) {
        let base = src_state.base(r.device, r.ring);
        let kicked = at_stop.as_ref().map_or(r.kicked, |a| a[r.g as usize]);
        for (&head, req) in &r.outstanding {
            let handed = handed_over_reqs.iter().any(|q| DeviceId(q.device) == r.device && q.ring == r.ring && q.id == u64::from(head));
            let untaken = base.is_some_and(|b| req.k.wrapping_sub(b) < kicked.wrapping_sub(b));
            if !(handed || untaken) {
                continue;
            }
            handed_areas.push(r.area);
            let slot = GuestMem::slot(r.area, u64::from(req.k));
            status_bytes.insert(slot + 600);
            if matches!(req.op, BlkOp::Read(_)) {
                // A read's data, written where the guest reads it.
                status_bytes.extend((0..512).map(|i| slot + 64 + i));
            }
        }
    }
    if runs_on == Some(Side::Destination) {
        fid.memory.compared = true;
        for page in src_mem.differing_pages(&dst_mem) {
            let area = ((page - GPA_BASE) / RING_AREA) as u32;
            let off = (page - GPA_BASE) % RING_AREA;
            if off == 0x2000 && (pending_at_stop.contains(&area) || handed_areas.contains(&area)) {
                fid.memory.served_after_start += 1;
                continue;
            }
            if off >= 3 * PAGE && handed_areas.contains(&area) && only_status_bytes(&src_mem, &dst_mem, page, &status_bytes) {
                fid.memory.served_after_start += 1;
                continue;
            }
            let owner =
                st.rings.iter().find(|r| r.area == area).map(|r| names[r.g as usize].clone()).unwrap_or_else(|| format!("area {area}"));
            let what = match off / PAGE {
                0 => "descriptors",
                1 => "avail ring",
                2 => "used ring",
                _ => "buffers",
            };
            fid.memory.differing.push(format!("page {page:#x} ({owner} {what})"));
        }
    }
    // Every rx packet and read the guest saw completed is in the memory it runs
    // on; then the guest reaps what completed while it was stopped.
    if let Some(mem) = run_mem {
        for r in &st.rings {
            let (n, missing) = driver::check_filled(mem, r);
            fid.memory.buffers_checked += n;
            fid.memory.buffers_missing.extend(missing);
        }
    }
    // After a failed migration, logging is off: nothing the backends write now
    // is logged.
    let log = migration.log().clone();
    let check_log = runs_on == Some(Side::Source) && src_plan.steps().iter().any(|s| s.kind == StepKind::LogStart);
    if check_log {
        let _ = log.sync(GPA_BASE, src_mem.size());
    }

    // Backends the rollback replaced (not those the VMM brought back after an abort).
    let lost: Vec<DeviceId> = src.reconnected().into_iter().filter(|d| !repaired.contains(d)).collect();
    let mut bases = Vec::new();
    let mut mismatches = Vec::new();
    for dev in topo.devices() {
        for r in 0..dev.rings() {
            let g = src.global(dev.id, r);
            let ring = &st.rings[g as usize];
            let expected = at_stop.as_ref().map_or(ring.kicked, |a| a[g as usize]);
            let in_flight = st.in_flight_at_stop.iter().filter(|(x, _)| *x == g).count() as u16;
            let rb = RingBase {
                device: dev.name.clone(),
                ring: r,
                expected,
                in_flight,
                read: src_state.base(dev.id, r),
                set: running.and_then(|(_, a)| a.sent_base(g)),
            };
            // A base the guest reached: what it kicked, less at most the requests
            // it had in flight at the stop (a blk backend that stops taking
            // requests once its ring is disabled leaves the rest in the ring,
            // taken from the base by whoever starts it next).
            let reached = |b: u16| rb.expected.wrapping_sub(b) <= in_flight;
            let torn = ring.frozen_used.is_some();
            let ok = match runs_on {
                // A ring the guest tore down is reset (base 0) and never started again.
                Some(Side::Destination) if torn => rb.read == Some(0) && rb.set.is_none(),
                // Every base read on the source was set on the destination.
                Some(Side::Destination) => rb.read.is_some_and(reached) && rb.set == rb.read,
                // A restarted source ring gets the base it reached (read, or
                // recovered from guest memory and the inflight region); a ring
                // never stopped keeps its own. A replaced backend's rings restart
                // at the recovered base: requests the lost backend took but never
                // completed (at most those in flight at the stop) are served again.
                Some(Side::Source) if lost.contains(&dev.id) => rb.set.is_some() && rb.set == rb.read && rb.read.is_some_and(reached),
                Some(Side::Source) => rb.set.map_or(true, |b| Some(b) == rb.read) && rb.read.map_or(true, reached),
                None => true,
            };
            if !ok {
                mismatches.push((dev.name.clone(), r, rb.set, rb.expected));
            }
            bases.push(rb);
        }
    }
    let preserved = runs_on.is_some() && mismatches.is_empty();

    // The guest continues where it runs: it reaps what completed while it was
    // stopped, then per active blk ring one more write and a read of its first
    // write, per active net ring one request. All must complete there.
    let mut blk_rings_verified = 0;
    let post_switchover = match (running, run_mem) {
        (Some((side, _)), Some(mem)) => (|| {
            let mut reads = Vec::new();
            let mut served = 0;
            for r in st.rings.iter_mut().filter(|r| r.active) {
                driver::reap(mem, r).map_err(RigError::Guest)?;
                if r.kind == RingKind::Blk {
                    driver::submit(mem, r, BlkOp::Write)?;
                    reads.push((r.g, r.avail));
                    driver::submit(mem, r, BlkOp::Read(0))?;
                } else {
                    driver::submit(mem, r, BlkOp::Write)?;
                }
                r.kicked = r.avail;
                let fd =
                    side.notifiers().kick(r.device, r.ring).ok_or_else(|| RigError::Config(format!("no kick eventfd for ring {}", r.g)))?;
                driver::kick(fd)?;
                served += 1;
            }
            let name_of = |r: &DriverRing| names[r.g as usize].clone();
            let mut active: Vec<DriverRing> = st.rings.iter().filter(|r| r.active).cloned().collect();
            let waited = driver::wait_all(mem, &mut active, &name_of, Duration::from_secs(3));
            for r in active {
                let g = r.g as usize;
                st.rings[g] = r;
            }
            waited?;
            for (g, _) in reads {
                // The read of write 0 was reaped and checked against its pattern.
                if st.rings[g as usize].outstanding.is_empty() {
                    blk_rings_verified += 1;
                }
            }
            Ok(served)
        })()
        .map_err(Arc::new),
        _ => Err(Arc::new(RigError::Guest("the guest runs nowhere (switchover failed without rollback)".to_string()))),
    };
    // Nothing completes twice: give late completions a moment to show.
    std::thread::sleep(Duration::from_millis(20));
    if let Some(mem) = run_mem {
        for r in st.rings.iter_mut() {
            if let Err(e) = driver::reap(mem, r) {
                tracing::warn!(error = %e, "late completion");
                mismatches.push((names[r.g as usize].clone(), r.ring, None, r.avail));
            }
        }
    }
    if check_log {
        fid.log_after_failure = Some(log.sync(GPA_BASE, src_mem.size()).len() as u64);
    }
    let requests: Vec<RingRequests> = st
        .rings
        .iter()
        .map(|r| {
            let (device, ring) =
                names[r.g as usize].split_once(" ring ").map(|(d, x)| (d.to_string(), x.parse().unwrap_or(0))).unwrap_or_default();
            let completed = run_mem.map_or(0, |m| m.used_idx(r.area));
            let published = match (r.active, r.frozen_used) {
                (_, Some(u)) => u,
                (true, None) => r.avail,
                (false, None) => r.kicked,
            };
            RingRequests { device, ring, published, completed }
        })
        .collect();
    for r in st.rings.iter().filter(|r| !r.active) {
        if run_mem.is_some_and(|m| m.used_idx(r.area) != r.frozen_used.unwrap_or(r.kicked)) {
            fid.inactive_served.push(names[r.g as usize].clone());
        }
    }
    // A ring the guest tore down must not be started by the destination: its
    // backend's own record says whether it was (one that refuses a base behind
    // its used index serves nothing from it, but started it all the same).
    if runs_on == Some(Side::Destination) {
        for r in st.rings.iter().filter(|r| r.frozen_used.is_some()) {
            let started = dst
                .backend_records()
                .iter()
                .filter(|b| b.device == r.device)
                .any(|b| crate::ringlog::read(&b.ring_log).iter().any(|e| e.start && e.ring == r.ring));
            if started {
                fid.torn_started.push(names[r.g as usize].clone());
            }
        }
    }

    // The blk writes in flight when the window opened: each completed exactly
    // once where the guest runs (before the base was read, or, after a rollback,
    // by the restarted backend).
    // Those the source handed over (left in flight in its backend's region):
    // completed on the destination, or after a rollback by the source's backend.
    let mut io = IoSummary::default();
    let mut counter_findings = Vec::new();
    let handed: std::collections::BTreeSet<(u32, u16)> =
        handed_over_reqs.iter().filter_map(|q| Some((src.global(DeviceId(q.device), q.ring), u16::try_from(q.id).ok()?))).collect();
    for &(g, head) in &handed {
        if !st.in_flight_at_stop.contains(&(g, head)) {
            counter_findings
                .push(format!("{} descriptor {head} handed over, but the guest had no such request in flight", names[g as usize]));
        }
    }
    for &(g, head) in &st.in_flight_at_stop {
        io.submitted += 1;
        let r = &st.rings[g as usize];
        let handed_this = handed.contains(&(g, head));
        if r.outstanding.contains_key(&head) {
            if handed_this {
                io.lost += 1;
            } else {
                io.never += 1;
            }
        } else if running.is_none() {
            io.lost += 1;
        } else {
            io.completed_once += 1;
            if handed_this && runs_on == Some(Side::Destination) {
                io.handed_over += 1;
            }
        }
    }
    // The backends' own counts: a completed switchover's destination resubmitted
    // each handed-over request once; no host I/O ran after a stop.
    if runs_on == Some(Side::Destination) && !handed.is_empty() {
        let resubmitted: u64 = blk_stats.iter().filter(|b| b.side == Side::Destination).map(|b| b.stats.resubmitted).sum();
        if resubmitted != handed.len() as u64 {
            counter_findings.push(format!("{} request(s) handed over, the destination's backends resubmitted {resubmitted}", handed.len()));
        }
    }
    for b in blk_stats.iter().filter(|b| b.stats.late_io > 0) {
        counter_findings.push(format!("{} {}: {} host I/O(s) after a stop of their ring", b.side.short(), b.device, b.stats.late_io));
    }

    // Exactly-once: a second disable of every source notifier issues nothing.
    let mut second_disable_ioctls = 0;
    let mut second_disables_refused = 0;
    if completed {
        let n = src.notifiers();
        for &(dv, rg) in &all_rings {
            for host in [true, false] {
                // A notifier whose disable failed (an injected cleanup fault) is
                // still on: disabling it again is the retry, not a second disable.
                if n.state(dv, rg, host) != Some(NotifierState::Disabled) {
                    continue;
                }
                let before = n.ioctls(dv, rg, host);
                let again = if host { n.host_notifier(dv, rg, false) } else { n.guest_notifier(dv, rg, false) };
                let issued = n.ioctls(dv, rg, host) - before;
                if again.is_ok() && issued == 0 {
                    second_disables_refused += 1;
                }
                second_disable_ioctls += issued;
            }
        }
    }
    let mut double_ioctls = 0;
    for (s, before) in [(&src, &src_before), (&dst, &dst_before)] {
        for (&(dv, rg), (h, gu)) in all_rings.iter().zip(before) {
            // A moved doorbell re-registers its ioeventfd (two ioctls per move).
            if s.notifiers().ioctls(dv, rg, true) - h > 1 + 2 * s.notifiers().moves(dv, rg) {
                double_ioctls += 1;
            }
            if s.notifiers().ioctls(dv, rg, false) - gu > 1 {
                double_ioctls += 1;
            }
        }
    }
    let (c1, n1) = src.notifiers().transactions();
    let (c2, n2) = dst.notifiers().transactions();
    let reconnects = src.reconnects();

    // Routes and the order of the destination's start.
    let dst_windows: Vec<&WindowRun> =
        executed.windows.iter().filter(|w| w.side() == Side::Destination && w.window() == Window::Blackout && !w.fence).collect();
    let mut rc = RouteCheck::default();
    for w in &dst_windows {
        let commits: Vec<_> = records(w, &StepKind::RouteCommit).collect();
        rc.commits_in_window += commits.len();
        // Each ring's route is committed before the ring is kicked: with one
        // commit for the VM, before the first kick of all.
        for (k, ks) in records(w, &StepKind::SetVringKick) {
            let covering = commits.iter().filter(|(_, cs)| match opts.routes {
                RouteCommits::Once => true,
                RouteCommits::PerDevice => cs.device == ks.device,
                _ => cs.device == ks.device && cs.ring == ks.ring,
            });
            for (c, _) in covering {
                rc.before_first_kick &= c.end <= k.start;
            }
        }
        let enables: BTreeMap<(DeviceId, u32), Duration> =
            records(w, &StepKind::VringEnable).map(|(r, s)| ((s.device, s.ring.unwrap_or(0)), r.end)).collect();
        for (r, s) in records(w, &StepKind::SetVringKick) {
            if enables.get(&(s.device, s.ring.unwrap_or(0))).map_or(true, |e| *e > r.start) {
                rc.enable_before_kick = false;
            }
        }
    }
    let rs = dst.notifiers().route_stats();
    (rc.ioctls, rc.routes) = (rs.commits, rs.msi_routes);
    if runs_on == Some(Side::Destination) {
        for &(dv, rg) in &all_rings {
            let want = dst.config(dv).and_then(|c| c.msi(rg));
            let masked = dst.config(dv).is_some_and(|c| c.rings[rg as usize].vector.is_some() && c.msi(rg).is_none());
            rc.masked += usize::from(masked);
            let have = dst.notifiers().route(dv, rg);
            if have != want {
                rc.mismatches.push(format!("{} ring {rg}: route {have:?}, MSI-X {want:?}", topo.device(dv).name));
            }
            let (bell, want_bell) = (dst.notifiers().doorbell(dv, rg), dst.config(dv).map(|c| c.rings[rg as usize].doorbell));
            if bell != want_bell {
                rc.doorbells.push(format!("{} ring {rg}: ioeventfd at {bell:x?}, doorbell {want_bell:x?}", topo.device(dv).name));
            }
        }
    }
    for w in executed.windows.iter().filter(|w| w.side() == Side::Source && w.window() == Window::Blackout && !w.rollback) {
        rc.net_disables_before_stop +=
            records(w, &StepKind::VringDisable).filter(|(_, s)| topo.device(s.device).kind == DeviceKind::Net).count();
    }
    if cfg.switches.disable_net_before_stop {
        // The switch disables every net ring before its base is read, outside the plan.
        rc.net_disables_before_stop +=
            topo.devices().iter().filter(|d| d.kind == DeviceKind::Net).map(|d| d.rings() as usize).sum::<usize>();
    }
    fid.routes = rc;
    let mut reconciled: Vec<_> = dst_act.vhost().reconciled();
    reconciled.sort_by_key(|r| r.device);
    fid.reconciled = reconciled.iter().map(|r| topo.device(r.device).name.clone()).collect();
    fid.reconcile_messages = reconciled.iter().map(|r| r.messages).sum();
    fid.reconcile_diffs = reconciled
        .iter()
        .map(|r| {
            let d = &r.diff;
            format!(
                "{}: features {}, moved {:?}, calls {:?}, doorbells {:?}, enables {:?}, vectors {}",
                topo.device(r.device).name,
                d.features,
                d.moved,
                d.calls,
                d.doorbells,
                d.enables,
                d.vectors
            )
        })
        .collect();
    fid.changes = st.changes.iter().map(|(c, d)| (c.name().to_string(), topo.device(*d).name.clone())).collect();

    // Teardown: channels closed, every backend process stopped and reaped.
    let pids: Vec<u32> = src.pids().into_iter().chain(dst.pids()).collect();
    let wires: Vec<(DeviceId, Vec<PathBuf>)> = topo
        .devices()
        .iter()
        .filter(|d| d.kind == DeviceKind::Net)
        .map(|d| (d.id, [src.wire(d.id), dst.wire(d.id)].into_iter().flatten().collect()))
        .collect();
    drop((src_act, dst_act, rb_act, s, d, src_hooks, dst_hooks));
    src.shutdown();
    dst.shutdown();
    drop(src);
    drop(dst);

    // Every tx packet the guest published went out exactly once, on one side's wire.
    let mut tx = TxCheck::default();
    for (dev, paths) in &wires {
        let mut seen: BTreeMap<(u32, u32), u32> = BTreeMap::new();
        for p in paths {
            let bytes = std::fs::read(p).unwrap_or_default();
            for rec in bytes.chunks_exact(12) {
                let g = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
                let seq = u32::from_le_bytes([rec[8], rec[9], rec[10], rec[11]]);
                *seen.entry((g, seq)).or_default() += 1;
                tx.transmitted += 1;
            }
        }
        for r in st.rings.iter().filter(|r| r.kind == RingKind::NetTx && r.device == *dev) {
            for seq in 0..r.seq {
                tx.published += 1;
                match seen.get(&(r.g, seq)).copied().unwrap_or(0) {
                    0 => tx.missing.push(format!("{} packet {seq}", names[r.g as usize])),
                    1 => {}
                    n => tx.twice.push(format!("{} packet {seq} ({n} times)", names[r.g as usize])),
                }
            }
        }
    }
    fid.tx = tx;

    // Every write the guest saw completed is in the image file.
    let mut disk = DiskCheck::default();
    for r in st.rings.iter().filter(|r| r.kind == RingKind::Blk) {
        disk.submitted += r.writes as usize;
        let dev = topo.device(r.device);
        for &seq in &r.acked_writes {
            disk.acknowledged += 1;
            let mut buf = vec![0u8; 512];
            let ok = side_cfg.images[r.device.0 as usize]
                .as_ref()
                .and_then(|p| std::fs::File::open(p).ok())
                .map(|f| {
                    use std::os::unix::fs::FileExt;
                    f.read_exact_at(&mut buf, driver::sector(r.ring, seq) * 512).is_ok() && buf == driver::pattern(r.g, seq)
                })
                .unwrap_or(false);
            if ok {
                disk.on_disk += 1;
            } else {
                disk.missing.push(format!("{} ring {} write {seq}", dev.name, r.ring));
            }
        }
    }
    drop(st);
    drop(workload);
    drop(migration);
    drop(dir);
    let leftover_processes: Vec<u32> = pids.into_iter().filter(|p| pid_alive(*p)).collect();
    let leftover_dir = dir_path.exists();

    let drains = drain_costs(&backends, &executed.windows);
    let rollback_wall = executed.windows.iter().find(|w| w.rollback).map(|w| w.report.wall);
    let checks = Checks {
        vring_bases_preserved: preserved && mismatches.is_empty(),
        base_mismatches: mismatches,
        double_ioctls,
        transactions: (c1 + c2, n1 + n2),
        io,
    };
    // On real backends the bound is the roles' own, from costs measured on this
    // VM's backends before the window (the engine; the baselines predict nothing).
    let run = StrategyRun::new(strategy, false, executed, lanes, lower_bound, checks).with_measured_bound();
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
        fidelity: fid,
        blk_policies: blk_devices.iter().map(|d| (topo.device(*d).name.clone(), opts.blk_policy_of(*d))).collect(),
        unacked: opts.unacked.iter().map(|d| topo.device(*d).name.clone()).collect(),
        handed_over: handed.len(),
        storage,
        fence,
        blk_stats,
        repaired: repaired.iter().map(|d| topo.device(*d).name.clone()).collect(),
        counter_findings,
    })
}

/// Whether the bytes of `page` that differ between the two memories are all
/// status bytes in `allowed` (requests the destination completed after its start).
fn only_status_bytes(a: &GuestMem, b: &GuestMem, page: u64, allowed: &std::collections::BTreeSet<u64>) -> bool {
    use vm_memory::{Bytes, GuestAddress};
    let (mut x, mut y) = (vec![0u8; PAGE as usize], vec![0u8; PAGE as usize]);
    if a.mem().read_slice(&mut x, GuestAddress(page)).is_err() || b.mem().read_slice(&mut y, GuestAddress(page)).is_err() {
        return false;
    }
    x.iter().zip(&y).enumerate().all(|(i, (p, q))| p == q || allowed.contains(&(page + i as u64)))
}

/// Brings back, after an aborted migration, each source device whose backend
/// failed in the prepare window (the VMM's own recovery from a backend crash,
/// outside the switchover): a new backend (the inflight region carried over),
/// its rings restarted at the base recovered from guest memory and the region,
/// a probe where the backend does not acknowledge. Returns the devices brought back.
fn repair(src: &RealSide, act: &RigActions, lost: &[DeviceId], deadline: Duration) -> Vec<DeviceId> {
    use switchover::exec::StepActions;
    let mut done = Vec::new();
    for &d in lost {
        let r = (|| -> Result<(), RigError> {
            src.replace_backend(d)?;
            let fe = src.frontend(d).ok_or_else(|| RigError::Config(format!("device {} has no frontend", d.0)))?;
            let name = fe.name().to_string();
            let features = src.config(d).map_or(fe.features(), |c| fe.features() | (c.features & fe.offered_features()));
            fe.set_features(features, deadline).wait().map_err(RigError::step(format!("{name} set_features")))?;
            fe.set_mem_table(&[src.mem().region()], deadline).wait().map_err(RigError::step(format!("{name} set_mem_table")))?;
            fe.setup_inflight(crate::mem::QSIZE, deadline).wait().map_err(RigError::step(format!("{name} inflight region")))?;
            for ring in 0..src.topology().device(d).rings() {
                let base = act.recover_base(d, ring).ok_or_else(|| RigError::Config(format!("{name} ring {ring}: no base recovered")))?;
                src.restart_ring(d, ring, base, deadline).map_err(RigError::step(format!("{name} ring {ring} restart")))?;
            }
            if !fe.acks() {
                fe.probe(deadline).wait().map_err(RigError::step(format!("{name} probe")))?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => done.push(d),
            Err(e) => tracing::warn!(device = d.0, error = %e, "could not bring the device back after the aborted migration"),
        }
    }
    done
}

/// The `drain_inflight` steps that completed, summed per blk backend kind.
fn drain_costs(backends: &[BackendKind], windows: &[WindowRun]) -> Vec<DrainCost> {
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
