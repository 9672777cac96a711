//! The vocabulary of a plan: sides, windows, affinities, step kinds, steps.
//!
//! # Examples
//!
//! ```
//! use switchover::step::StepKind;
//! use switchover::ids::Window;
//! assert_eq!(StepKind::GetVringBase.name(), "get_vring_base");
//! assert_eq!(StepKind::parse("get_vring_base"), Some(StepKind::GetVringBase));
//! assert!(Window::Prepare < Window::Blackout);
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::ids::{Affinity, DeviceId, Side, StepId, Window};

/// How a step's action reports completion.
///
/// ```
/// use std::sync::Arc;
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::step::{ExecMode, StepKind};
/// use switchover::ids::Side;
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
/// for s in plan.steps() {
///     // Control-channel messages are split-phase; notifier ioctls block.
///     if s.kind == StepKind::GetVringBase {
///         assert_eq!(s.mode, ExecMode::Split);
///     }
///     if s.kind.is_notifier() {
///         assert_eq!(s.mode, ExecMode::Blocking);
///     }
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecMode {
    /// The action does its work on the lane that starts it and completes before returning.
    Blocking,
    /// The action sends a request and returns; the reply completes the step later, from
    /// any thread, so one lane keeps many round trips in flight.
    Split,
}

/// What a step does. The vhost-user kinds follow QEMU's order (hw/virtio/vhost.c).
///
/// ```
/// use switchover::step::StepKind;
/// let k = StepKind::Custom("load_state".into());
/// assert_eq!(k.to_string(), "load_state");
/// assert!(!k.is_message());
/// assert_eq!(StepKind::HostNotifierOff.to_string(), "host_notifier_off");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StepKind {
    /// `SET_VRING_ENABLE(0)`: the backend stops taking new buffers from the ring.
    VringDisable,
    /// Wait until every request the guest submitted on a blk ring is completed (`used == avail`).
    DrainInflight,
    /// `GET_VRING_BASE`: stops the ring and returns its `last_avail_idx`, the state that
    /// must reach the destination.
    GetVringBase,
    /// Unregister the ring's irqfd.
    GuestNotifierOff,
    /// Unregister the ring's ioeventfd.
    HostNotifierOff,
    /// `SET_FEATURES` (with `VHOST_USER_F_PROTOCOL_FEATURES`).
    SetFeatures,
    /// `SET_MEM_TABLE` (guest memory regions, fd-backed).
    SetMemTable,
    /// `SET_VRING_NUM`.
    SetVringNum,
    /// `SET_VRING_ADDR`.
    SetVringAddr,
    /// `SET_VRING_CALL` (the irqfd's eventfd).
    SetVringCall,
    /// Register the ring's ioeventfd.
    HostNotifierOn,
    /// Register the ring's irqfd.
    GuestNotifierOn,
    /// `SET_VRING_BASE` with the base captured on the source.
    SetVringBase,
    /// `SET_VRING_KICK` (the ioeventfd's eventfd): starts the ring.
    SetVringKick,
    /// `SET_VRING_ENABLE(1)`.
    VringEnable,
    /// Open the memory-map transaction that batches notifier changes (caller lane).
    MemTxnBegin,
    /// Commit the memory-map transaction: one update for all devices (caller lane).
    MemTxnCommit,
    /// Source, prepare: start dirty logging on a device's backend (`SET_FEATURES`
    /// with `VHOST_F_LOG_ALL`, `SET_LOG_BASE`, each ring's `SET_VRING_ADDR` with the
    /// log flag), so its writes to guest memory reach the destination.
    LogStart,
    /// Source, blackout: collect the dirty log after every ring sharing it was
    /// stopped (the backends' last used-ring and data writes are in it then).
    LogSync,
    /// Source, blackout: the final RAM pass, copying what the log sync found dirty;
    /// the destination's RAM is final once it ends.
    FinalPass,
    /// Destination, blackout: compare a device's configuration staged in prepare
    /// with the one that arrived in the window; redo what changed (features, ring
    /// geometry, doorbells, vectors, active queue pairs). An unchanged device pays nothing.
    Reconcile,
    /// Destination, blackout: one routing-table commit (`KVM_SET_GSI_ROUTING`) with
    /// the MSI message of every vector of every device, from the loaded MSI-X tables
    /// (caller lane: the routing table is the VMM's).
    RouteCommit,
    /// Destination, blackout: signal a started ring's call and kick it once (an
    /// interrupt raised before its route existed is lost; requests already in the
    /// ring are picked up).
    RingNotify,
    /// Destination, blackout: one round trip to a backend that does not acknowledge
    /// requests (no `REPLY_ACK`), to see that it is alive after its fire-and-forget
    /// start messages.
    Probe,
    /// Source, blackout: flush a blk device's image and give it up (inactivate), after
    /// its rings were drained and stopped.
    StorageInactivate,
    /// Destination, blackout: take a blk device's image (activate) before its first kick.
    StorageActivate,
    /// Source, rollback: take the image back before the guest resumes; the guest
    /// resumes only if this succeeded.
    StorageReactivate,
    /// A step of a VMM-defined device kind.
    Custom(Arc<str>),
}

impl StepKind {
    /// The built-in kinds.
    ///
    /// ```
    /// use switchover::step::StepKind;
    /// assert!(StepKind::BUILTIN.iter().all(|k| StepKind::parse(k.name()) == Some(k.clone())));
    /// assert!(!StepKind::BUILTIN.iter().any(|k| matches!(k, StepKind::Custom(_))));
    /// ```
    pub const BUILTIN: [StepKind; 27] = [
        StepKind::VringDisable,
        StepKind::DrainInflight,
        StepKind::GetVringBase,
        StepKind::GuestNotifierOff,
        StepKind::HostNotifierOff,
        StepKind::SetFeatures,
        StepKind::SetMemTable,
        StepKind::SetVringNum,
        StepKind::SetVringAddr,
        StepKind::SetVringCall,
        StepKind::HostNotifierOn,
        StepKind::GuestNotifierOn,
        StepKind::SetVringBase,
        StepKind::SetVringKick,
        StepKind::VringEnable,
        StepKind::MemTxnBegin,
        StepKind::MemTxnCommit,
        StepKind::LogStart,
        StepKind::LogSync,
        StepKind::FinalPass,
        StepKind::Reconcile,
        StepKind::RouteCommit,
        StepKind::RingNotify,
        StepKind::Probe,
        StepKind::StorageInactivate,
        StepKind::StorageActivate,
        StepKind::StorageReactivate,
    ];

    /// Snake-case name, as used by `--inject KIND:STEP:DEVICE` and reports.
    ///
    /// ```
    /// use switchover::step::StepKind;
    /// assert_eq!(StepKind::MemTxnCommit.name(), "memtxn_commit");
    /// assert_eq!(StepKind::Custom("attach".into()).name(), "attach");
    /// ```
    pub fn name(&self) -> &str {
        match self {
            StepKind::VringDisable => "vring_disable",
            StepKind::DrainInflight => "drain_inflight",
            StepKind::GetVringBase => "get_vring_base",
            StepKind::GuestNotifierOff => "guest_notifier_off",
            StepKind::HostNotifierOff => "host_notifier_off",
            StepKind::SetFeatures => "set_features",
            StepKind::SetMemTable => "set_mem_table",
            StepKind::SetVringNum => "set_vring_num",
            StepKind::SetVringAddr => "set_vring_addr",
            StepKind::SetVringCall => "set_vring_call",
            StepKind::HostNotifierOn => "host_notifier_on",
            StepKind::GuestNotifierOn => "guest_notifier_on",
            StepKind::SetVringBase => "set_vring_base",
            StepKind::SetVringKick => "set_vring_kick",
            StepKind::VringEnable => "vring_enable",
            StepKind::MemTxnBegin => "memtxn_begin",
            StepKind::MemTxnCommit => "memtxn_commit",
            StepKind::LogStart => "log_start",
            StepKind::LogSync => "log_sync",
            StepKind::FinalPass => "final_pass",
            StepKind::Reconcile => "reconcile",
            StepKind::RouteCommit => "route_commit",
            StepKind::RingNotify => "ring_notify",
            StepKind::Probe => "probe",
            StepKind::StorageInactivate => "storage_inactivate",
            StepKind::StorageActivate => "storage_activate",
            StepKind::StorageReactivate => "storage_reactivate",
            StepKind::Custom(n) => n,
        }
    }

    /// The built-in kind with this name.
    ///
    /// ```
    /// use switchover::step::StepKind;
    /// assert_eq!(StepKind::parse("set_vring_kick"), Some(StepKind::SetVringKick));
    /// assert_eq!(StepKind::parse("attach"), None); // custom kinds are not parsed
    /// ```
    pub fn parse(name: &str) -> Option<StepKind> {
        StepKind::BUILTIN.iter().find(|k| k.name() == name).cloned()
    }

    /// Whether this kind is performed as requests on the backend's control channel
    /// (one vhost-user message, or a few in a row for `log_start`, `reconcile`).
    ///
    /// ```
    /// use switchover::step::StepKind;
    /// assert!(StepKind::SetMemTable.is_message());
    /// assert!(!StepKind::HostNotifierOn.is_message());
    /// ```
    pub fn is_message(&self) -> bool {
        matches!(
            self,
            StepKind::VringDisable
                | StepKind::GetVringBase
                | StepKind::SetFeatures
                | StepKind::SetMemTable
                | StepKind::SetVringNum
                | StepKind::SetVringAddr
                | StepKind::SetVringCall
                | StepKind::SetVringBase
                | StepKind::SetVringKick
                | StepKind::VringEnable
                | StepKind::LogStart
                | StepKind::Reconcile
                | StepKind::Probe
        )
    }

    /// Whether this kind changes a notifier.
    ///
    /// ```
    /// use switchover::step::StepKind;
    /// assert!(StepKind::GuestNotifierOn.is_notifier());
    /// assert!(!StepKind::SetVringCall.is_notifier());
    /// ```
    pub fn is_notifier(&self) -> bool {
        matches!(self, StepKind::HostNotifierOff | StepKind::HostNotifierOn | StepKind::GuestNotifierOff | StepKind::GuestNotifierOn)
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A serialised server that performs a step's work one request at a time (a backend's
/// control channel, a VM's ioeventfd lock). Not a lock the scheduler takes: requests
/// queue there in order. Used for the lower bound and the report.
///
/// ```
/// use std::sync::Arc;
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::step::{Server, StepKind};
/// use switchover::ids::Side;
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
/// let get = plan.steps().iter().find(|s| s.kind == StepKind::GetVringBase).unwrap();
/// assert_eq!(get.server, Some(Server::Channel(get.device)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Server {
    /// The control channel of a device's backend.
    Channel(DeviceId),
    /// The ioeventfd list of one side's VM.
    VmIoeventfd,
}

/// One node of a plan.
///
/// ```
/// use std::sync::Arc;
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::ids::{Side, Window};
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("single-net").unwrap());
/// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
/// let s = &plan.steps()[0];
/// assert_eq!(s.side, Side::Source);
/// assert_eq!(plan.device_name(s.id), "net0");
/// assert!(plan.steps().iter().any(|s| s.window == Window::Blackout && s.ring == Some(1)));
/// ```
#[derive(Debug, Clone)]
pub struct Step {
    /// Its id.
    pub id: StepId,
    /// The device it belongs to.
    pub device: DeviceId,
    /// The ring, for per-ring steps.
    pub ring: Option<u32>,
    /// What it does.
    pub kind: StepKind,
    /// Which side runs it.
    pub side: Side,
    /// Its window.
    pub window: Window,
    /// Who may run it.
    pub affinity: Affinity,
    /// Blocking or split-phase.
    pub mode: ExecMode,
    /// Expected duration of the work itself (service time).
    pub cost: Duration,
    /// The serialised server that does the work, if any; `None` means the lane does it.
    pub server: Option<Server>,
    /// How long the step may take before it fails with a time-out.
    pub deadline: Duration,
}
