//! Recipes: the steps each device kind performs on each side, in QEMU's order, with
//! the window each step runs in and why that window is safe.
//!
//! Two window policies:
//!
//! * [`WindowPolicy::AllInBlackout`] — today's VMMs: every step inside the window,
//!   one device's steps in a chain (used by the `serial` and `pool` strategies);
//! * [`WindowPolicy::Minimal`] — the engine: only what must happen while the guest is
//!   frozen stays in the blackout window.
//!
//! Why each step's window is safe under [`WindowPolicy::Minimal`], in a two-host
//! migration (two copies of guest memory, a dirty log, device state that arrives in
//! the window, a guest that may reconfigure its devices during precopy):
//!
//! | side | step | window | why it is safe there |
//! |---|---|---|---|
//! | src | `log_start` | prepare | dirty logging must cover every write the backends make while precopy copies RAM; it starts before the first pass |
//! | src | `get_vring_base` (net) | blackout | the guest adds buffers until it is frozen; the base read must be final. No `vring_disable` first: a started but disabled net ring must keep processing and discard TX (the spec), and QEMU's net stop does not disable |
//! | src | `vring_disable`, `drain_inflight`, `get_vring_base` (blk) | blackout | QEMU's blk stop: no new requests, those in flight complete (or are handed over), then the final base |
//! | src | `log_sync` | blackout | after the `get_vring_base` of every device sharing the log: the backends' last used-ring and data writes are in the log only then |
//! | src | `final_pass` | blackout | copies what the log sync found dirty; the destination's RAM is final only after it, so the state (and with it the destination's start) follows it |
//! | src | `storage_inactivate` (blk) | blackout | after the device's rings stopped: its writes are complete (or handed over); the image is flushed and given up before the destination takes it |
//! | src | `guest_notifier_off` | cleanup | after `get_vring_base` the backend no longer signals; keeping the irqfd until the destination runs also makes a rollback cheap |
//! | src | `host_notifier_off` | cleanup | the frozen guest cannot kick; the ioeventfds are inert until torn down, and stay usable if the source must resume |
//! | dst | `set_features`, `set_mem_table` | prepare | negotiated per connection; the memory table names the destination's own memory, which exists before the guest state arrives (switchover-ack waits for this). Features the guest changes during precopy are redone by `reconcile` |
//! | dst | `set_vring_num`, `set_vring_addr` | prepare | staged from the precopy snapshot of the device's configuration; a ring the guest moved, resized or reset is redone by `reconcile` in the window |
//! | dst | `host_notifier_on`, `guest_notifier_on`, `set_vring_call` | prepare | the destination guest is not running, so no ioeventfd can fire, and no ring is started, so no backend can signal an irqfd; irqfds are assigned to pre-allocated GSIs whose routes come in the window. A moved doorbell or a vector set to none is redone by `reconcile` |
//! | dst | `reconcile` | blackout | compares the configuration staged in prepare with the one loaded in the window (a generation per device); only a changed device redoes its steps, before its rings start |
//! | dst | `route_commit` | blackout | MSI routes are built from the MSI-X tables, device state that arrives in the window; one routing-table commit for every vector of every device, before the first kick |
//! | dst | `storage_activate` (blk) | blackout | the source gave the image up (its `storage_inactivate` precedes the state); taken before the device's first kick |
//! | dst | `set_vring_base`, `vring_enable`, `set_vring_kick` | blackout | the base exists only once the source has stopped, and the backend reads the used index from guest memory, final only then; the ring is enabled before it is kicked (QEMU's order since 2022) |
//! | dst | `ring_notify` | blackout | an interrupt raised before its route existed is lost, and requests already in the ring must be picked up: every started ring's call is signalled and the ring kicked once |
//! | dst | `probe` | blackout | only for backends without `REPLY_ACK`: one round trip shows the backend alive after its fire-and-forget start messages |
//! | both | `memtxn_begin`, `memtxn_commit` | with the notifiers | one memory-map transaction for all devices' notifiers, run on the caller lane (needs the big lock) |
//!
//! What these steps do is the VMM's (or the `switchover-vhost` frontend's): the
//! recipe only places them. [`RecipeOptions`] turns each mechanism on or off (a VMM
//! migrating between two processes of one host with shared memory has no dirty
//! log to sync, say); [`rollback`] and [`fence`] are the recipes for a failure.
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use switchover::ids::{Side, Window};
//! use switchover::recipe::{build, NoCosts, RecipeOptions};
//! use switchover::topology::Topology;
//! let t = Arc::new(Topology::preset("rfc-huge").unwrap());
//! let p = build(&t, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
//! // Only the per-ring stop messages (net: `get_vring_base`; blk: `vring_disable` and
//! // `get_vring_base`), the blk drains and storage hand-over, and the log sync and
//! // final RAM pass stay in the source's blackout window.
//! let messages = p.in_window(Window::Blackout).filter(|s| s.kind.is_message()).count();
//! assert_eq!(messages, 16 * 64 + 2 * 24 * 4);
//! let others: Vec<_> = p.in_window(Window::Blackout).filter(|s| !s.kind.is_message()).map(|s| s.kind.name()).collect();
//! assert!(others.iter().all(|k| ["drain_inflight", "storage_inactivate", "log_sync", "final_pass"].contains(k)));
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::ids::DeviceId;
use crate::ids::{Affinity, Side, StepId, Window};
use crate::plan::{Plan, PlanBuilder, PlanError, StepSpec, DEFAULT_DEADLINE};
use crate::resource::Resource;
use crate::step::{Server, StepKind};
use crate::topology::{Device, DeviceKind, Topology};

/// Where steps go.
///
/// ```
/// use std::sync::Arc;
/// use switchover::recipe::{build, NoCosts, RecipeOptions, WindowPolicy};
/// use switchover::ids::{Side, Window};
/// use switchover::step::StepKind;
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let opts = RecipeOptions::baseline();
/// assert_eq!(opts.policy, WindowPolicy::AllInBlackout);
/// let plan = build(&topo, Side::Source, &opts, &NoCosts).unwrap();
/// // Everything in the window but dirty logging, which starts with the migration
/// // (and, for a backend without REPLY_ACK, the probe that follows it).
/// assert!(plan.steps().iter().all(|s| s.window == Window::Blackout || s.kind == StepKind::LogStart));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowPolicy {
    /// Only what must happen while the guest is frozen is in the blackout window.
    Minimal,
    /// Everything in the blackout window, each device's steps in one chain (today's VMMs).
    AllInBlackout,
}

/// What happens to a blk ring's requests still in flight when the source stops.
///
/// ```
/// use std::sync::Arc;
/// use switchover::ids::Side;
/// use switchover::recipe::{build, BlkPolicy, NoCosts, RecipeOptions};
/// use switchover::step::StepKind;
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("single-blk").unwrap());
/// let drain = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
/// assert!(drain.steps().iter().any(|s| s.kind == StepKind::DrainInflight));
/// let opts = RecipeOptions { blk_policy: BlkPolicy::HandOver, ..RecipeOptions::engine() };
/// let hand_over = build(&topo, Side::Source, &opts, &NoCosts).unwrap();
/// assert!(!hand_over.steps().iter().any(|s| s.kind == StepKind::DrainInflight));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlkPolicy {
    /// Wait for them (with the drain's deadline) before reading the ring's base.
    Drain,
    /// Read the base at once and carry them to the destination, which resubmits them
    /// (vhost-user's inflight-fd mechanism).
    HandOver,
}

impl BlkPolicy {
    /// `drain` or `hand-over`.
    ///
    /// ```
    /// use switchover::recipe::BlkPolicy;
    /// assert_eq!(BlkPolicy::HandOver.name(), "hand-over");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            BlkPolicy::Drain => "drain",
            BlkPolicy::HandOver => "hand-over",
        }
    }
}

/// How notifier changes are batched into memory-map transactions.
///
/// ```
/// use switchover::recipe::{NotifierBatch, RecipeOptions};
/// assert_eq!(RecipeOptions::engine().notifier_batch, NotifierBatch::All);
/// assert_eq!(RecipeOptions::qemu().notifier_batch, NotifierBatch::PerDevice);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifierBatch {
    /// Each notifier change updates the memory map on its own (QEMU before 2023).
    None,
    /// One transaction per device (QEMU today).
    PerDevice,
    /// One transaction for every device of a side (the engine).
    All,
}

/// How MSI routes are committed to the VM's routing table.
///
/// ```
/// use switchover::recipe::{RecipeOptions, RouteCommits};
/// assert_eq!(RecipeOptions::engine().routes, RouteCommits::Once);
/// assert_eq!(RecipeOptions::baseline().routes, RouteCommits::PerVector);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteCommits {
    /// No route steps (the VMM routes interrupts itself, or has no MSI).
    None,
    /// One commit per vector (QEMU before per-device batching).
    PerVector,
    /// One commit per device (QEMU today).
    PerDevice,
    /// One commit for every vector of every device, in the window (the engine).
    Once,
}

/// Options for [`build`].
///
/// ```
/// use std::sync::Arc;
/// use switchover::recipe::{build, BlkPolicy, NoCosts, RecipeOptions};
/// use switchover::ids::Side;
/// use switchover::step::StepKind;
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("single-blk").unwrap());
/// let opts = RecipeOptions { blk_policy: BlkPolicy::HandOver, ..RecipeOptions::engine() };
/// let plan = build(&topo, Side::Source, &opts, &NoCosts).unwrap();
/// assert!(!plan.steps().iter().any(|s| s.kind == StepKind::DrainInflight));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeOptions {
    /// Window policy.
    pub policy: WindowPolicy,
    /// How notifier changes are batched.
    pub notifier_batch: NotifierBatch,
    /// Requests in flight on blk rings, for blk devices not in `blk_overrides`:
    /// drained (a `drain_inflight` step before each ring's `get_vring_base`) or
    /// handed over.
    pub blk_policy: BlkPolicy,
    /// The policy of particular blk devices (hand-over where the backend offers
    /// it, drain otherwise).
    pub blk_overrides: Vec<(DeviceId, BlkPolicy)>,
    /// Dirty logging on the source: `log_start` in prepare, `log_sync` and
    /// `final_pass` in the window.
    pub dirty_log: bool,
    /// The destination reconciles each device's staged configuration with the
    /// loaded one in the window (`reconcile`).
    pub reconcile: bool,
    /// How MSI routes are committed (with `ring_notify` after each ring's start).
    pub routes: RouteCommits,
    /// Storage handed over as steps: `storage_inactivate` on the source,
    /// `storage_activate` on the destination (and `storage_reactivate` in rollback).
    pub storage: bool,
    /// Blk devices whose backend cannot give its image up (qemu-storage-daemon
    /// 10.0's vhost-user-blk export refuses to be inactive): no storage steps for
    /// them, whatever `storage` says — the VMM must keep one writer per image
    /// some other way, and say so.
    pub storage_unmanaged: Vec<DeviceId>,
    /// Devices whose backends do not acknowledge requests (no `REPLY_ACK`): the
    /// destination probes each once after its start, and the source once after
    /// its `log_start` (whose messages have no reply of their own: a backend
    /// that hung or died there would otherwise go unseen until the window).
    pub unacked: Vec<DeviceId>,
    /// Deadline of every step.
    pub deadline: Duration,
    /// Deadline of each blk ring's drain (how long to wait for requests in flight).
    pub drain_deadline: Duration,
}

impl RecipeOptions {
    /// The engine's recipe: minimal blackout, one memory-map transaction and one
    /// route commit per side, dirty log, reconciliation, storage hand-over, blk drain.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, BlkPolicy, NoCosts, RecipeOptions, WindowPolicy};
    /// use switchover::ids::Side;
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let opts = RecipeOptions::engine();
    /// assert_eq!((opts.policy, opts.blk_policy), (WindowPolicy::Minimal, BlkPolicy::Drain));
    /// assert!(opts.dirty_log && opts.reconcile && opts.storage);
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Source, &opts, &NoCosts).unwrap();
    /// // One memory transaction for all devices' notifiers.
    /// assert_eq!(plan.steps().iter().filter(|s| s.kind == StepKind::MemTxnCommit).count(), 1);
    /// ```
    pub fn engine() -> Self {
        RecipeOptions {
            policy: WindowPolicy::Minimal,
            notifier_batch: NotifierBatch::All,
            blk_policy: BlkPolicy::Drain,
            blk_overrides: vec![],
            dirty_log: true,
            reconcile: true,
            routes: RouteCommits::Once,
            storage: true,
            storage_unmanaged: vec![],
            unacked: vec![],
            deadline: DEFAULT_DEADLINE,
            drain_deadline: DEFAULT_DEADLINE,
        }
    }
    /// QEMU before 2023 (the 2021 RFC's baseline): everything in the window, one
    /// device after another, no notifier batching, a route commit per vector.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions, WindowPolicy};
    /// use switchover::ids::Side;
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let opts = RecipeOptions::baseline();
    /// assert_eq!(opts.policy, WindowPolicy::AllInBlackout);
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Source, &opts, &NoCosts).unwrap();
    /// assert!(!plan.steps().iter().any(|s| s.kind == StepKind::MemTxnCommit));
    /// ```
    pub fn baseline() -> Self {
        RecipeOptions {
            policy: WindowPolicy::AllInBlackout,
            notifier_batch: NotifierBatch::None,
            reconcile: false,
            routes: RouteCommits::PerVector,
            ..RecipeOptions::engine()
        }
    }
    /// QEMU today: everything in the window, one device after another, each
    /// device's host notifiers in one memory-map transaction and its routes
    /// committed once per device.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::Side;
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Destination, &RecipeOptions::qemu(), &NoCosts).unwrap();
    /// let commits = plan.steps().iter().filter(|s| s.kind == StepKind::MemTxnCommit).count();
    /// assert_eq!(commits, 4); // one per device
    /// assert_eq!(plan.steps().iter().filter(|s| s.kind == StepKind::RouteCommit).count(), 4);
    /// ```
    pub fn qemu() -> Self {
        RecipeOptions { notifier_batch: NotifierBatch::PerDevice, routes: RouteCommits::PerDevice, ..RecipeOptions::baseline() }
    }
    /// A blk device's policy.
    ///
    /// ```
    /// use switchover::ids::DeviceId;
    /// use switchover::recipe::{BlkPolicy, RecipeOptions};
    /// let mut o = RecipeOptions::engine();
    /// o.blk_overrides.push((DeviceId(3), BlkPolicy::HandOver));
    /// assert_eq!((o.blk_policy_of(DeviceId(3)), o.blk_policy_of(DeviceId(2))), (BlkPolicy::HandOver, BlkPolicy::Drain));
    /// ```
    pub fn blk_policy_of(&self, d: DeviceId) -> BlkPolicy {
        self.blk_overrides.iter().find(|(x, _)| *x == d).map(|(_, p)| *p).unwrap_or(self.blk_policy)
    }
    /// Whether a blk device's image is handed over as steps (`storage`, and the
    /// device not in `storage_unmanaged`).
    ///
    /// ```
    /// use switchover::ids::DeviceId;
    /// use switchover::recipe::RecipeOptions;
    /// let mut o = RecipeOptions::engine();
    /// o.storage_unmanaged.push(DeviceId(1));
    /// assert!(o.storage_of(DeviceId(0)) && !o.storage_of(DeviceId(1)));
    /// ```
    pub fn storage_of(&self, d: DeviceId) -> bool {
        self.storage && !self.storage_unmanaged.contains(&d)
    }
}

/// Expected cost of each step, and which serialised server performs it.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use switchover::recipe::{build, CostModel, RecipeOptions};
/// use switchover::ids::{Side, Window};
/// use switchover::step::StepKind;
/// use switchover::topology::{Device, Topology};
///
/// /// Every control-channel message costs 1 ms; nothing else costs anything.
/// struct OneMsPerMessage;
/// impl CostModel for OneMsPerMessage {
///     fn cost(&self, _device: &Device, kind: &StepKind) -> Duration {
///         if kind.is_message() {
///             Duration::from_millis(1)
///         } else {
///             Duration::ZERO
///         }
///     }
/// }
/// let topo = Arc::new(Topology::preset("single-net").unwrap());
/// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &OneMsPerMessage).unwrap();
/// // A net ring: `get_vring_base` (then the log sync and the final RAM pass, free here).
/// assert_eq!(plan.lower_bound(Window::Blackout, 8).chain, Duration::from_millis(1));
/// ```
pub trait CostModel {
    /// Expected service time of `kind` on `device`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover::recipe::{CostModel, NoCosts};
    /// use switchover::step::StepKind;
    /// use switchover::topology::{Device, Topology};
    /// /// A backend whose ring stop takes 1.3 ms per ring, more on a wide device.
    /// struct PerRing;
    /// impl CostModel for PerRing {
    ///     fn cost(&self, device: &Device, kind: &StepKind) -> Duration {
    ///         match kind {
    ///             StepKind::GetVringBase => Duration::from_micros(1300 + 10 * u64::from(device.rings())),
    ///             _ => Duration::ZERO,
    ///         }
    ///     }
    /// }
    /// let t = Topology::preset("rfc-huge").unwrap();
    /// let net = t.device_by_name("net0").unwrap();
    /// assert!(PerRing.cost(net, &StepKind::GetVringBase) > Duration::ZERO);
    /// assert_eq!(NoCosts.cost(net, &StepKind::GetVringBase), Duration::ZERO);
    /// ```
    fn cost(&self, device: &Device, kind: &StepKind) -> Duration;
    /// Expected service time of `kind` on `device` for ring `ring` (`None`: a
    /// step of the whole device, or of the whole side). By default
    /// [`CostModel::cost`]; a model whose cost depends on the ring (a route commit
    /// replaces a routing table that grows vector by vector) says so here.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover::recipe::CostModel;
    /// use switchover::step::StepKind;
    /// use switchover::topology::{Device, Topology};
    /// /// Each per-vector route commit carries one more route than the previous.
    /// struct Growing;
    /// impl CostModel for Growing {
    ///     fn cost(&self, _device: &Device, _kind: &StepKind) -> Duration {
    ///         Duration::from_micros(20)
    ///     }
    ///     fn cost_at(&self, device: &Device, kind: &StepKind, ring: Option<u32>) -> Duration {
    ///         match (kind, ring) {
    ///             (StepKind::RouteCommit, Some(r)) => Duration::from_micros(20 + u64::from(r)),
    ///             _ => self.cost(device, kind),
    ///         }
    ///     }
    /// }
    /// let t = Topology::preset("single-net").unwrap();
    /// let net = t.device_by_name("net0").unwrap();
    /// assert!(Growing.cost_at(net, &StepKind::RouteCommit, Some(3)) > Growing.cost_at(net, &StepKind::RouteCommit, Some(0)));
    /// ```
    fn cost_at(&self, device: &Device, kind: &StepKind, ring: Option<u32>) -> Duration {
        let _ = ring;
        self.cost(device, kind)
    }
    /// Expected service time of a host-notifier change made inside a memory-map
    /// transaction (the address-space update then happens once, at the commit,
    /// for every change of the transaction). By default [`CostModel::cost_at`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use switchover::ids::Side;
    /// use switchover::recipe::{build, CostModel, RecipeOptions};
    /// use switchover::step::StepKind;
    /// use switchover::topology::{Device, Topology};
    /// /// An ioeventfd change costs 2 ms with its own address-space update, 0.2 ms
    /// /// inside a transaction.
    /// struct Kvm;
    /// impl CostModel for Kvm {
    ///     fn cost(&self, _device: &Device, _kind: &StepKind) -> Duration {
    ///         Duration::from_millis(2)
    ///     }
    ///     fn batched_cost(&self, _device: &Device, _kind: &StepKind, _ring: Option<u32>) -> Duration {
    ///         Duration::from_micros(200)
    ///     }
    /// }
    /// let topo = Arc::new(Topology::preset("single-net").unwrap());
    /// let on = |opts: &RecipeOptions| {
    ///     let p = build(&topo, Side::Destination, opts, &Kvm).unwrap();
    ///     p.steps().iter().find(|s| s.kind == StepKind::HostNotifierOn).unwrap().cost
    /// };
    /// assert_eq!(on(&RecipeOptions::baseline()), Duration::from_millis(2)); // one by one
    /// assert_eq!(on(&RecipeOptions::qemu()), Duration::from_micros(200)); // one transaction per device
    /// ```
    fn batched_cost(&self, device: &Device, kind: &StepKind, ring: Option<u32>) -> Duration {
        self.cost_at(device, kind, ring)
    }
    /// The server that serialises host-notifier changes, if the model has one
    /// (a VM's ioeventfd lock in KVM).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use switchover::ids::Side;
    /// use switchover::recipe::{build, CostModel, NoCosts, RecipeOptions};
    /// use switchover::step::{Server, StepKind};
    /// use switchover::topology::{Device, Topology};
    /// /// KVM with one ioeventfd lock per VM: host-notifier changes queue on it.
    /// struct PerVmIoeventfd;
    /// impl CostModel for PerVmIoeventfd {
    ///     fn cost(&self, _device: &Device, _kind: &StepKind) -> Duration {
    ///         Duration::from_micros(20)
    ///     }
    ///     fn host_notifier_server(&self) -> Option<Server> {
    ///         Some(Server::VmIoeventfd)
    ///     }
    /// }
    /// assert_eq!(NoCosts.host_notifier_server(), None);
    /// assert_eq!(PerVmIoeventfd.host_notifier_server(), Some(Server::VmIoeventfd));
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Destination, &RecipeOptions::engine(), &PerVmIoeventfd).unwrap();
    /// let on = plan.steps().iter().find(|s| s.kind == StepKind::HostNotifierOn).unwrap();
    /// assert_eq!(on.server, Some(Server::VmIoeventfd));
    /// ```
    fn host_notifier_server(&self) -> Option<Server> {
        None
    }
}

/// A cost model that knows nothing: every cost zero. Priorities then fall back to
/// the number of steps on the remaining path being equal.
///
/// ```
/// use std::sync::Arc;
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::ids::{Side, Window};
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
/// assert!(plan.steps().iter().all(|s| s.cost.is_zero()));
/// assert!(plan.lower_bound(Window::Blackout, 1).bound.is_zero());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCosts;

impl CostModel for NoCosts {
    fn cost(&self, device: &Device, kind: &StepKind) -> Duration {
        // A generic device's steps keep the cost its VMM declared.
        device.steps.iter().find(|s| s.name == kind.name()).map(|s| s.cost).unwrap_or(Duration::ZERO)
    }
}

mod rollback;

pub use rollback::{fence, rollback};

/// Builds a plan step by step: the helpers every recipe uses.
struct Ctx<'a> {
    b: PlanBuilder,
    costs: &'a dyn CostModel,
    opts: &'a RecipeOptions,
    topo: Arc<Topology>,
}

impl Ctx<'_> {
    fn new<'a>(topo: &Arc<Topology>, side: Side, opts: &'a RecipeOptions, costs: &'a dyn CostModel) -> Ctx<'a> {
        Ctx { b: PlanBuilder::new(topo.clone(), side), costs, opts, topo: topo.clone() }
    }
    fn minimal(&self) -> bool {
        self.opts.policy == WindowPolicy::Minimal
    }
    fn win(&self, w: Window) -> Window {
        if self.minimal() {
            w
        } else {
            Window::Blackout
        }
    }
    fn cost(&self, d: DeviceId, kind: &StepKind) -> Duration {
        self.costs.cost_at(self.topo.device(d), kind, None)
    }
    fn cost_at(&self, d: DeviceId, kind: &StepKind, ring: Option<u32>) -> Duration {
        self.costs.cost_at(self.topo.device(d), kind, ring)
    }
    /// A request on the device's control channel (split-phase).
    fn msg(&mut self, d: DeviceId, kind: StepKind, ring: Option<u32>, w: Window, after: &[StepId]) -> StepId {
        let fp = match ring {
            Some(r) => Resource::vring(d, r),
            None => Resource::device(d),
        };
        let mut s = StepSpec::new(d, kind.clone(), self.win(w))
            .split(Server::Channel(d))
            .cost(self.cost_at(d, &kind, ring))
            .deadline(self.opts.deadline)
            .footprint(&[fp])
            .after(after);
        if let Some(r) = ring {
            s = s.ring(r);
        }
        self.b.add(s)
    }
    /// Work of the VMM's on one device or ring, blocking on the lane.
    fn work(&mut self, d: DeviceId, kind: StepKind, ring: Option<u32>, w: Window, after: &[StepId]) -> StepId {
        let fp = match ring {
            Some(r) => Resource::vring(d, r),
            None => Resource::device(d),
        };
        let mut s = StepSpec::new(d, kind.clone(), self.win(w))
            .cost(self.cost_at(d, &kind, ring))
            .deadline(self.opts.deadline)
            .footprint(&[fp])
            .after(after);
        if let Some(r) = ring {
            s = s.ring(r);
        }
        self.b.add(s)
    }
    fn notifier(&mut self, d: DeviceId, kind: StepKind, r: u32, w: Window, after: &[StepId]) -> StepId {
        let host = matches!(kind, StepKind::HostNotifierOn | StepKind::HostNotifierOff);
        let fp = if host { Resource::host_notifier(d, r) } else { Resource::guest_notifier(d, r) };
        // Host notifiers change inside a memory-map transaction whenever changes are batched.
        let cost = if host && self.opts.notifier_batch != NotifierBatch::None {
            self.costs.batched_cost(self.topo.device(d), &kind, Some(r))
        } else {
            self.cost_at(d, &kind, Some(r))
        };
        let mut s =
            StepSpec::new(d, kind.clone(), self.win(w)).ring(r).cost(cost).deadline(self.opts.deadline).footprint(&[fp]).after(after);
        if host {
            if let Some(sv) = self.costs.host_notifier_server() {
                s = s.serialised_on(sv);
            }
        }
        self.b.add(s)
    }
    /// A step of the caller's, holding its big lock and `what`.
    fn caller(&mut self, d: DeviceId, kind: StepKind, ring: Option<u32>, w: Window, what: Resource, after: &[StepId]) -> StepId {
        let mut s = StepSpec::new(d, kind.clone(), self.win(w))
            .affinity(Affinity::Caller)
            .cost(self.cost_at(d, &kind, ring))
            .deadline(self.opts.deadline)
            .footprint(&[Resource::BIG_LOCK, what])
            .after(after);
        if let Some(r) = ring {
            s = s.ring(r);
        }
        self.b.add(s)
    }
    fn txn(&mut self, d: DeviceId, kind: StepKind, w: Window, after: &[StepId]) -> StepId {
        self.caller(d, kind, None, w, Resource::MEMORY_TRANSACTION, after)
    }
}

/// Builds the plan `side` runs for `topology`.
///
/// # Errors
/// [`PlanError`] if a generic device's steps break a plan rule.
///
/// ```
/// use std::sync::Arc;
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::ids::{Side, Window};
/// use switchover::step::StepKind;
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let src = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
/// let dst = build(&topo, Side::Destination, &RecipeOptions::engine(), &NoCosts).unwrap();
/// // The source reads each ring's base; the destination sets it.
/// let count = |p: &switchover::plan::Plan, k: StepKind| p.in_window(Window::Blackout).filter(|s| s.kind == k).count();
/// assert_eq!(count(&src, StepKind::GetVringBase), 10);
/// assert_eq!(count(&dst, StepKind::SetVringBase), 10);
/// ```
pub fn build(topology: &Arc<Topology>, side: Side, opts: &RecipeOptions, costs: &dyn CostModel) -> Result<Plan, PlanError> {
    let mut c = Ctx::new(topology, side, opts, costs);
    let vhost: Vec<&Device> = topology.devices().iter().filter(|d| d.rings() > 0).collect();
    match side {
        Side::Source => source(&mut c, &vhost)?,
        Side::Destination => destination(&mut c, &vhost)?,
    }
    c.b.build()
}

fn source(c: &mut Ctx<'_>, vhost: &[&Device]) -> Result<(), PlanError> {
    let first = vhost.first().map(|d| d.id);
    // One transaction for every device's host notifiers (cleanup).
    let all_txn = match (c.opts.notifier_batch, first) {
        (NotifierBatch::All, Some(d)) => Some((d, c.txn(d, StepKind::MemTxnBegin, Window::Cleanup, &[]))),
        _ => None,
    };
    let mut gets_all = Vec::new();
    let mut host_offs = Vec::new();
    let mut ends = Vec::new(); // each device's last step (the baseline's chains)
    for dev in c.topo.clone().devices() {
        match dev.kind {
            DeviceKind::Net | DeviceKind::Blk => {
                let s = source_vhost(c, dev, all_txn.map(|t| t.1));
                gets_all.extend(s.gets);
                host_offs.extend(s.host_offs);
                ends.push(s.end);
            }
            DeviceKind::Generic(_) => generic(c, dev, Side::Source)?,
        }
    }
    if let Some((d, _)) = all_txn {
        c.txn(d, StepKind::MemTxnCommit, Window::Cleanup, &host_offs);
    }
    if let (true, Some(d)) = (c.opts.dirty_log, first) {
        // The minimal plan syncs the shared log once, after every device stopped,
        // then makes the final pass; a baseline plan synced it at the end of each
        // device's stop, and makes the final pass once every device is done.
        let pass_after = if c.minimal() {
            let s = StepSpec::new(d, StepKind::LogSync, Window::Blackout)
                .cost(c.cost(d, &StepKind::LogSync))
                .deadline(c.opts.deadline)
                .footprint(&[Resource::DIRTY_LOG])
                .after(&gets_all);
            vec![c.b.add(s)]
        } else {
            ends
        };
        c.caller(d, StepKind::FinalPass, None, Window::Blackout, Resource::DIRTY_LOG, &pass_after);
    }
    Ok(())
}

/// What a device's stop recipe made.
struct SourceDevice {
    gets: Vec<StepId>,
    host_offs: Vec<StepId>,
    /// Its last step (the baseline chains devices on it).
    end: StepId,
}

fn source_vhost(c: &mut Ctx<'_>, dev: &Device, all_txn: Option<StepId>) -> SourceDevice {
    let d = dev.id;
    let rings = dev.rings();
    let minimal = c.minimal();
    // In the baseline every step of the device follows the previous one.
    let mut last: Vec<StepId> = Vec::new();
    let mut chain = |c: &mut Ctx<'_>, own: &[StepId], f: &dyn Fn(&mut Ctx<'_>, &[StepId]) -> StepId| -> StepId {
        let mut a = own.to_vec();
        if !minimal {
            a.extend(last.iter().copied());
        }
        let s = f(c, &a);
        last = vec![s];
        s
    };
    if c.opts.dirty_log {
        // Logging starts with the migration, the guest running, whatever the policy.
        let s = StepSpec::new(d, StepKind::LogStart, Window::Prepare)
            .split(Server::Channel(d))
            .cost(c.cost(d, &StepKind::LogStart))
            .deadline(c.opts.deadline)
            .footprint(&[Resource::device(d)]);
        let started = c.b.add(s);
        if c.opts.unacked.contains(&d) {
            // In prepare whatever the policy, as `log_start` is.
            let p = StepSpec::new(d, StepKind::Probe, Window::Prepare)
                .split(Server::Channel(d))
                .cost(c.cost(d, &StepKind::Probe))
                .deadline(c.opts.deadline)
                .footprint(&[Resource::device(d)])
                .after(&[started]);
            c.b.add(p);
        }
    }
    let mut gets = Vec::with_capacity(rings as usize);
    if dev.kind == DeviceKind::Blk {
        // QEMU vhost-user-blk: SET_VRING_ENABLE(0) on all rings, then per ring the
        // drain (or hand-over) and GET_VRING_BASE.
        let dis: Vec<StepId> =
            (0..rings).map(|r| chain(c, &[], &|c, a| c.msg(d, StepKind::VringDisable, Some(r), Window::Blackout, a))).collect();
        let drain = c.opts.blk_policy_of(d) == BlkPolicy::Drain;
        for r in 0..rings {
            let mut pred = if minimal { dis.clone() } else { vec![] };
            if drain {
                let deadline = c.opts.drain_deadline;
                let s = chain(c, &pred, &|c, a| {
                    c.b.add(
                        StepSpec::new(d, StepKind::DrainInflight, Window::Blackout)
                            .ring(r)
                            .cost(c.cost_at(d, &StepKind::DrainInflight, Some(r)))
                            .deadline(deadline)
                            .footprint(&[Resource::vring(d, r)])
                            .after(a),
                    )
                });
                pred = vec![s];
            }
            gets.push(chain(c, &pred, &|c, a| c.msg(d, StepKind::GetVringBase, Some(r), Window::Blackout, a)));
        }
    } else {
        // QEMU vhost-user-net: GET_VRING_BASE per ring, no disable first (a started
        // but disabled net ring must keep processing and discard TX).
        for r in 0..rings {
            gets.push(chain(c, &[], &|c, a| c.msg(d, StepKind::GetVringBase, Some(r), Window::Blackout, a)));
        }
    }
    if c.opts.dirty_log && !minimal {
        // QEMU syncs the log at the end of each device's stop.
        chain(c, &gets, &|c, a| c.work(d, StepKind::LogSync, None, Window::Blackout, a));
    }
    if c.opts.storage_of(d) && dev.kind == DeviceKind::Blk {
        chain(c, &gets, &|c, a| c.work(d, StepKind::StorageInactivate, None, Window::Blackout, a));
    }
    let dev_txn = (c.opts.notifier_batch == NotifierBatch::PerDevice)
        .then(|| chain(c, &[], &|c, a| c.txn(d, StepKind::MemTxnBegin, Window::Cleanup, a)));
    let gn: Vec<StepId> = (0..rings)
        .map(|r| chain(c, &[gets[r as usize]], &|c, a| c.notifier(d, StepKind::GuestNotifierOff, r, Window::Cleanup, a)))
        .collect();
    let mut host_offs = Vec::with_capacity(rings as usize);
    for r in 0..rings {
        let mut own = vec![gn[r as usize]];
        own.extend(all_txn.or(dev_txn));
        host_offs.push(chain(c, &own, &|c, a| c.notifier(d, StepKind::HostNotifierOff, r, Window::Cleanup, a)));
    }
    if dev_txn.is_some() {
        chain(c, &host_offs, &|c, a| c.txn(d, StepKind::MemTxnCommit, Window::Cleanup, a));
    }
    SourceDevice { gets, host_offs, end: last[0] }
}

fn destination(c: &mut Ctx<'_>, vhost: &[&Device]) -> Result<(), PlanError> {
    let first = vhost.first().map(|d| d.id);
    let minimal = c.minimal();
    // Host notifiers first (they only need the transaction), so the commit can run
    // while ring set-up goes on.
    let mut commit = None;
    if let (true, NotifierBatch::All, Some(d)) = (minimal, c.opts.notifier_batch, first) {
        let begin = c.txn(d, StepKind::MemTxnBegin, Window::Prepare, &[]);
        let mut ons = Vec::new();
        for dev in vhost {
            for r in 0..dev.rings() {
                ons.push(c.notifier(dev.id, StepKind::HostNotifierOn, r, Window::Prepare, &[begin]));
            }
        }
        commit = Some(c.txn(d, StepKind::MemTxnCommit, Window::Prepare, &ons));
    }
    let route = match (minimal, c.opts.routes, first) {
        (true, RouteCommits::Once, Some(d)) => Some(c.caller(d, StepKind::RouteCommit, None, Window::Blackout, Resource::ROUTING, &[])),
        _ => None,
    };
    for dev in c.topo.clone().devices() {
        match dev.kind {
            DeviceKind::Net | DeviceKind::Blk if minimal => dest_vhost(c, dev, commit, route),
            DeviceKind::Net | DeviceKind::Blk => dest_vhost_chain(c, dev),
            DeviceKind::Generic(_) => generic(c, dev, Side::Destination)?,
        }
    }
    Ok(())
}

fn dest_vhost(c: &mut Ctx<'_>, dev: &Device, commit: Option<StepId>, route: Option<StepId>) {
    let d = dev.id;
    let feat = c.msg(d, StepKind::SetFeatures, None, Window::Prepare, &[]);
    let mt = c.msg(d, StepKind::SetMemTable, None, Window::Prepare, &[feat]);
    let reconcile = c.opts.reconcile.then(|| c.msg(d, StepKind::Reconcile, None, Window::Blackout, &[]));
    let storage =
        (c.opts.storage_of(d) && dev.kind == DeviceKind::Blk).then(|| c.work(d, StepKind::StorageActivate, None, Window::Blackout, &[]));
    // Host notifiers when they are not in the one transaction of every device:
    // in one transaction of the device's own, or one by one.
    let mut ring_on: Vec<Option<StepId>> = vec![None; dev.rings() as usize];
    let commit = match (commit, c.opts.notifier_batch) {
        (Some(all), _) => Some(all),
        (None, NotifierBatch::PerDevice) => {
            let begin = c.txn(d, StepKind::MemTxnBegin, Window::Prepare, &[]);
            let ons: Vec<StepId> =
                (0..dev.rings()).map(|r| c.notifier(d, StepKind::HostNotifierOn, r, Window::Prepare, &[begin])).collect();
            Some(c.txn(d, StepKind::MemTxnCommit, Window::Prepare, &ons))
        }
        (None, _) => {
            for r in 0..dev.rings() {
                ring_on[r as usize] = Some(c.notifier(d, StepKind::HostNotifierOn, r, Window::Prepare, &[]));
            }
            None
        }
    };
    // Routes when they are not committed once for every device.
    let route = match (route, c.opts.routes) {
        (Some(once), _) => Some(once),
        (None, RouteCommits::PerDevice) => Some(c.caller(d, StepKind::RouteCommit, None, Window::Blackout, Resource::ROUTING, &[])),
        _ => None,
    };
    let mut ends = Vec::new();
    for r in 0..dev.rings() {
        let num = c.msg(d, StepKind::SetVringNum, Some(r), Window::Prepare, &[mt]);
        let addr = c.msg(d, StepKind::SetVringAddr, Some(r), Window::Prepare, &[num]);
        let gn = c.notifier(d, StepKind::GuestNotifierOn, r, Window::Prepare, &[]);
        let call = c.msg(d, StepKind::SetVringCall, Some(r), Window::Prepare, &[addr, gn]);
        let mut base_after = vec![addr, call];
        base_after.extend(reconcile);
        let base = c.msg(d, StepKind::SetVringBase, Some(r), Window::Blackout, &base_after);
        // Enabled before it is kicked (QEMU's order since 2022).
        let enable = c.msg(d, StepKind::VringEnable, Some(r), Window::Blackout, &[base]);
        let mut kick_after = vec![enable];
        kick_after.extend(commit);
        kick_after.extend(ring_on[r as usize]);
        kick_after.extend(route);
        kick_after.extend(storage);
        if c.opts.routes == RouteCommits::PerVector {
            kick_after.push(c.caller(d, StepKind::RouteCommit, Some(r), Window::Blackout, Resource::ROUTING, &[]));
        }
        let kick = c.msg(d, StepKind::SetVringKick, Some(r), Window::Blackout, &kick_after);
        ends.push(kick);
        if c.opts.routes != RouteCommits::None {
            ends.push(c.work(d, StepKind::RingNotify, Some(r), Window::Blackout, &[kick]));
        }
    }
    if c.opts.unacked.contains(&d) {
        c.msg(d, StepKind::Probe, None, Window::Blackout, &ends);
    }
}

/// Today's VMMs, QEMU's order, one chain per device: host notifiers on (in one
/// transaction per device, or one by one), guest notifiers on with their routes
/// (per vector, or once per device — also for [`RouteCommits::Once`]),
/// SET_FEATURES, SET_MEM_TABLE, then per ring NUM, ADDR, BASE, CALL, ENABLE, KICK.
fn dest_vhost_chain(c: &mut Ctx<'_>, dev: &Device) {
    let d = dev.id;
    let rings = dev.rings();
    let mut last: Vec<StepId> = Vec::new();
    let mut push = |c: &mut Ctx<'_>, f: &dyn Fn(&mut Ctx<'_>, &[StepId]) -> StepId| {
        let s = f(c, &last);
        last = vec![s];
        s
    };
    let per_device = c.opts.notifier_batch == NotifierBatch::PerDevice;
    if per_device {
        push(c, &|c, a| c.txn(d, StepKind::MemTxnBegin, Window::Blackout, a));
    }
    for r in 0..rings {
        push(c, &|c, a| c.notifier(d, StepKind::HostNotifierOn, r, Window::Blackout, a));
    }
    if per_device {
        push(c, &|c, a| c.txn(d, StepKind::MemTxnCommit, Window::Blackout, a));
    }
    for r in 0..rings {
        push(c, &|c, a| c.notifier(d, StepKind::GuestNotifierOn, r, Window::Blackout, a));
        if c.opts.routes == RouteCommits::PerVector {
            push(c, &|c, a| c.caller(d, StepKind::RouteCommit, Some(r), Window::Blackout, Resource::ROUTING, a));
        }
    }
    // A chain has no step before every device's: one commit for all becomes one
    // per device.
    if matches!(c.opts.routes, RouteCommits::PerDevice | RouteCommits::Once) {
        push(c, &|c, a| c.caller(d, StepKind::RouteCommit, None, Window::Blackout, Resource::ROUTING, a));
    }
    push(c, &|c, a| c.msg(d, StepKind::SetFeatures, None, Window::Blackout, a));
    push(c, &|c, a| c.msg(d, StepKind::SetMemTable, None, Window::Blackout, a));
    if c.opts.storage_of(d) && dev.kind == DeviceKind::Blk {
        push(c, &|c, a| c.work(d, StepKind::StorageActivate, None, Window::Blackout, a));
    }
    for r in 0..rings {
        for k in [
            StepKind::SetVringNum,
            StepKind::SetVringAddr,
            StepKind::SetVringBase,
            StepKind::SetVringCall,
            StepKind::VringEnable,
            StepKind::SetVringKick,
        ] {
            push(c, &|c, a| c.msg(d, k.clone(), Some(r), Window::Blackout, a));
        }
        if c.opts.routes != RouteCommits::None {
            push(c, &|c, a| c.work(d, StepKind::RingNotify, Some(r), Window::Blackout, a));
        }
    }
    if c.opts.unacked.contains(&d) {
        push(c, &|c, a| c.msg(d, StepKind::Probe, None, Window::Blackout, a));
    }
}

fn generic(c: &mut Ctx<'_>, dev: &Device, side: Side) -> Result<(), PlanError> {
    let mut ids: HashMap<&str, StepId> = HashMap::new();
    let mut last: Option<StepId> = None;
    for gs in dev.steps.iter().filter(|s| s.side == side && !s.rollback_only) {
        let mut after: Vec<StepId> = gs.after.iter().filter_map(|n| ids.get(n.as_str()).copied()).collect();
        if !c.minimal() {
            after.extend(last);
        }
        let id = c.b.add(generic_spec(c, dev, gs, c.win(gs.window)).after(&after));
        ids.insert(gs.name.as_str(), id);
        last = Some(id);
    }
    Ok(())
}

/// The step a generic device's declared step becomes (without predecessors).
fn generic_spec(c: &Ctx<'_>, dev: &Device, gs: &crate::topology::GenericStep, w: Window) -> StepSpec {
    let mut fp = vec![Resource::device(dev.id)];
    if gs.big_lock {
        // Refused by the plan builder unless the step is caller-affine.
        fp.push(Resource::BIG_LOCK);
    }
    let kind = StepKind::Custom(Arc::from(gs.name.as_str()));
    let cost = c.costs.cost(dev, &kind);
    StepSpec::new(dev.id, kind, w).affinity(gs.affinity).cost(cost).deadline(c.opts.deadline).footprint(&fp)
}
