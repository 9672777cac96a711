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
//! Why each step's window is safe under [`WindowPolicy::Minimal`]:
//!
//! | side | step | window | why it is safe there |
//! |---|---|---|---|
//! | src | `vring_disable`, `get_vring_base` | blackout | the guest adds buffers until it is frozen; the base read must be final |
//! | src | `drain_inflight` (blk) | blackout | requests the guest submitted must complete (or be handed over) before the base is read |
//! | src | `guest_notifier_off` | cleanup | after `get_vring_base` the backend no longer signals; keeping the irqfd until the destination runs also makes a rollback cheap |
//! | src | `host_notifier_off` | cleanup | the frozen guest cannot kick; the ioeventfds are inert until torn down, and stay usable if the source must resume |
//! | dst | `set_features`, `set_mem_table` | prepare | negotiated once per connection; the memory table names the destination's own memory, which exists before the guest state arrives (switchover-ack waits for this) |
//! | dst | `set_vring_num`, `set_vring_addr` | prepare | ring geometry is device configuration fixed at driver set-up, not per-switchover state |
//! | dst | `host_notifier_on`, `guest_notifier_on`, `set_vring_call` | prepare | the destination guest is not running, so no ioeventfd can fire, and no ring is started, so no backend can signal an irqfd |
//! | dst | `set_vring_base`, `set_vring_kick`, `vring_enable` | blackout | the base exists only once the source has stopped; kick starts the ring, which must follow the base |
//! | both | `memtxn_begin`, `memtxn_commit` | with the notifiers | one memory-map transaction for all devices' notifiers, run on the caller lane (needs the big lock) |
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
//! // Only the per-ring stop messages (and the blk drains) stay in the blackout window.
//! assert_eq!(p.in_window(Window::Blackout).filter(|s| s.kind.is_message()).count(), 2 * 1120);
//! assert!(p.in_window(Window::Blackout).all(|s| s.kind.is_message() || s.kind.name() == "drain_inflight"));
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
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let opts = RecipeOptions::baseline();
/// assert_eq!(opts.policy, WindowPolicy::AllInBlackout);
/// let plan = build(&topo, Side::Source, &opts, &NoCosts).unwrap();
/// assert!(plan.steps().iter().all(|s| s.window == Window::Blackout));
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
    /// Batch all notifier changes of a side into one memory-map transaction.
    pub batch_notifiers: bool,
    /// Requests in flight on blk rings: drained (a `drain_inflight` step before each
    /// ring's `get_vring_base`) or handed over.
    pub blk_policy: BlkPolicy,
    /// Deadline of every step.
    pub deadline: Duration,
    /// Deadline of each blk ring's drain (how long to wait for requests in flight).
    pub drain_deadline: Duration,
}

impl RecipeOptions {
    /// The engine's recipe: minimal blackout, batched notifiers, blk drain.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, BlkPolicy, NoCosts, RecipeOptions, WindowPolicy};
    /// use switchover::ids::Side;
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let opts = RecipeOptions::engine();
    /// assert_eq!((opts.policy, opts.batch_notifiers, opts.blk_policy), (WindowPolicy::Minimal, true, BlkPolicy::Drain));
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Source, &opts, &NoCosts).unwrap();
    /// // One memory transaction for all devices' notifiers.
    /// assert_eq!(plan.steps().iter().filter(|s| s.kind == StepKind::MemTxnCommit).count(), 1);
    /// ```
    pub fn engine() -> Self {
        RecipeOptions {
            policy: WindowPolicy::Minimal,
            batch_notifiers: true,
            blk_policy: BlkPolicy::Drain,
            deadline: DEFAULT_DEADLINE,
            drain_deadline: DEFAULT_DEADLINE,
        }
    }
    /// Today's VMMs: everything in the window, no cross-device batching.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions, WindowPolicy};
    /// use switchover::ids::Side;
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let opts = RecipeOptions::baseline();
    /// assert_eq!((opts.policy, opts.batch_notifiers), (WindowPolicy::AllInBlackout, false));
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Source, &opts, &NoCosts).unwrap();
    /// assert!(!plan.steps().iter().any(|s| s.kind == StepKind::MemTxnCommit));
    /// ```
    pub fn baseline() -> Self {
        RecipeOptions {
            policy: WindowPolicy::AllInBlackout,
            batch_notifiers: false,
            blk_policy: BlkPolicy::Drain,
            deadline: DEFAULT_DEADLINE,
            drain_deadline: DEFAULT_DEADLINE,
        }
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
/// // Each ring: `vring_disable` then `get_vring_base`, one after the other.
/// assert_eq!(plan.lower_bound(Window::Blackout, 8).chain, Duration::from_millis(2));
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

struct Ctx<'a> {
    b: PlanBuilder,
    costs: &'a dyn CostModel,
    opts: &'a RecipeOptions,
    topo: Arc<Topology>,
}

impl Ctx<'_> {
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
    fn msg(&mut self, d: DeviceId, kind: StepKind, ring: Option<u32>, w: Window, after: &[StepId]) -> StepId {
        let dev = self.topo.device(d).clone();
        let fp = match ring {
            Some(r) => Resource::vring(d, r),
            None => Resource::device(d),
        };
        let mut s = StepSpec::new(d, kind.clone(), self.win(w))
            .split(Server::Channel(d))
            .cost(self.costs.cost(&dev, &kind))
            .deadline(self.opts.deadline)
            .footprint(&[fp])
            .after(after);
        if let Some(r) = ring {
            s = s.ring(r);
        }
        self.b.add(s)
    }
    fn notifier(&mut self, d: DeviceId, kind: StepKind, r: u32, w: Window, after: &[StepId]) -> StepId {
        let dev = self.topo.device(d).clone();
        let host = matches!(kind, StepKind::HostNotifierOn | StepKind::HostNotifierOff);
        let fp = if host { Resource::host_notifier(d, r) } else { Resource::guest_notifier(d, r) };
        let mut s = StepSpec::new(d, kind.clone(), self.win(w))
            .ring(r)
            .cost(self.costs.cost(&dev, &kind))
            .deadline(self.opts.deadline)
            .footprint(&[fp])
            .after(after);
        if host {
            if let Some(sv) = self.costs.host_notifier_server() {
                s = s.serialised_on(sv);
            }
        }
        self.b.add(s)
    }
    fn txn(&mut self, d: DeviceId, kind: StepKind, w: Window, after: &[StepId]) -> StepId {
        let dev = self.topo.device(d).clone();
        self.b.add(
            StepSpec::new(d, kind.clone(), w)
                .affinity(Affinity::Caller)
                .cost(self.costs.cost(&dev, &kind))
                .deadline(self.opts.deadline)
                .footprint(&[Resource::BIG_LOCK, Resource::MEMORY_TRANSACTION])
                .after(after),
        )
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
    let mut c = Ctx { b: PlanBuilder::new(topology.clone(), side), costs, opts, topo: topology.clone() };
    let batch = opts.batch_notifiers && topology.total_rings() > 0;
    let first_vhost = topology.devices().iter().find(|d| d.rings() > 0).map(|d| d.id);
    match side {
        Side::Source => {
            let (txn_w, mut host_offs) = (Window::Cleanup, Vec::new());
            let begin = match (batch, first_vhost) {
                (true, Some(d)) => Some(c.txn(d, StepKind::MemTxnBegin, c.win(txn_w), &[])),
                _ => None,
            };
            for dev in topology.devices() {
                match dev.kind {
                    DeviceKind::Net | DeviceKind::Blk => source_vhost(&mut c, dev, begin, &mut host_offs),
                    DeviceKind::Generic(_) => generic(&mut c, dev, Side::Source)?,
                }
            }
            if let (Some(_), Some(d)) = (begin, first_vhost) {
                c.txn(d, StepKind::MemTxnCommit, c.win(txn_w), &host_offs);
            }
        }
        Side::Destination => {
            let (txn_w, mut host_ons) = (Window::Prepare, Vec::new());
            let begin = match (batch, first_vhost) {
                (true, Some(d)) => Some(c.txn(d, StepKind::MemTxnBegin, c.win(txn_w), &[])),
                _ => None,
            };
            // Host notifiers first (they only need the transaction), so the commit can
            // run while ring set-up goes on.
            let mut per_dev_hn: HashMap<DeviceId, Vec<StepId>> = HashMap::new();
            if c.minimal() {
                for dev in topology.devices().iter().filter(|d| d.rings() > 0) {
                    let v: Vec<StepId> = (0..dev.rings())
                        .map(|r| c.notifier(dev.id, StepKind::HostNotifierOn, r, Window::Prepare, &begin.into_iter().collect::<Vec<_>>()))
                        .collect();
                    host_ons.extend_from_slice(&v);
                    per_dev_hn.insert(dev.id, v);
                }
            }
            let commit = match (begin, first_vhost) {
                (Some(_), Some(d)) if c.minimal() => Some(c.txn(d, StepKind::MemTxnCommit, Window::Prepare, &host_ons)),
                _ => None,
            };
            for dev in topology.devices() {
                match dev.kind {
                    DeviceKind::Net | DeviceKind::Blk => dest_vhost(&mut c, dev, commit),
                    DeviceKind::Generic(_) => generic(&mut c, dev, Side::Destination)?,
                }
            }
        }
    }
    c.b.build()
}

fn source_vhost(c: &mut Ctx<'_>, dev: &Device, begin: Option<StepId>, host_offs: &mut Vec<StepId>) {
    let d = dev.id;
    let rings = dev.rings();
    let mut last: Vec<StepId> = Vec::new(); // chain tail for the baseline policy
    let chain = |last: &Vec<StepId>, own: &[StepId]| -> Vec<StepId> {
        let mut v = own.to_vec();
        v.extend(last.iter().copied());
        v
    };
    let minimal = c.minimal();
    let mut gets = Vec::with_capacity(rings as usize);
    if dev.kind == DeviceKind::Blk {
        // QEMU vhost-user-blk: SET_VRING_ENABLE(0) on all rings, then GET_VRING_BASE per ring.
        let mut dis = Vec::new();
        for r in 0..rings {
            let after = if minimal { vec![] } else { last.clone() };
            let s = c.msg(d, StepKind::VringDisable, Some(r), Window::Blackout, &after);
            dis.push(s);
            last = vec![s];
        }
        for r in 0..rings {
            let mut pred = if minimal { dis.clone() } else { last.clone() };
            if c.opts.blk_policy == BlkPolicy::Drain {
                let dev_c = c.topo.device(d).clone();
                let s = c.b.add(
                    StepSpec::new(d, StepKind::DrainInflight, Window::Blackout)
                        .ring(r)
                        .cost(c.costs.cost(&dev_c, &StepKind::DrainInflight))
                        .deadline(c.opts.drain_deadline)
                        .footprint(&[Resource::vring(d, r)])
                        .after(&pred),
                );
                pred = vec![s];
            }
            let g = c.msg(d, StepKind::GetVringBase, Some(r), Window::Blackout, &pred);
            gets.push(g);
            last = vec![g];
        }
    } else {
        for r in 0..rings {
            let after = if minimal { vec![] } else { chain(&last, &[]) };
            let dis = c.msg(d, StepKind::VringDisable, Some(r), Window::Blackout, &after);
            let g = c.msg(d, StepKind::GetVringBase, Some(r), Window::Blackout, &[dis]);
            gets.push(g);
            last = vec![g];
        }
    }
    let mut gn = Vec::with_capacity(rings as usize);
    for r in 0..rings {
        let after = if minimal { vec![gets[r as usize]] } else { last.clone() };
        let s = c.notifier(d, StepKind::GuestNotifierOff, r, Window::Cleanup, &after);
        gn.push(s);
        last = vec![s];
    }
    for r in 0..rings {
        let mut after = if minimal { vec![gn[r as usize]] } else { last.clone() };
        after.extend(begin);
        let s = c.notifier(d, StepKind::HostNotifierOff, r, Window::Cleanup, &after);
        host_offs.push(s);
        last = vec![s];
    }
}

fn dest_vhost(c: &mut Ctx<'_>, dev: &Device, commit: Option<StepId>) {
    let d = dev.id;
    let rings = dev.rings();
    if c.minimal() {
        let feat = c.msg(d, StepKind::SetFeatures, None, Window::Prepare, &[]);
        let mt = c.msg(d, StepKind::SetMemTable, None, Window::Prepare, &[feat]);
        for r in 0..rings {
            let num = c.msg(d, StepKind::SetVringNum, Some(r), Window::Prepare, &[mt]);
            let addr = c.msg(d, StepKind::SetVringAddr, Some(r), Window::Prepare, &[num]);
            let gn = c.notifier(d, StepKind::GuestNotifierOn, r, Window::Prepare, &[]);
            let call = c.msg(d, StepKind::SetVringCall, Some(r), Window::Prepare, &[addr, gn]);
            let base = c.msg(d, StepKind::SetVringBase, Some(r), Window::Blackout, &[addr]);
            let mut kick_after = vec![base];
            kick_after.extend(commit);
            let kick = c.msg(d, StepKind::SetVringKick, Some(r), Window::Blackout, &kick_after);
            c.msg(d, StepKind::VringEnable, Some(r), Window::Blackout, &[kick, call]);
        }
        return;
    }
    // Baseline, QEMU's order, one chain per device: host notifiers on, guest notifiers
    // on, SET_FEATURES, SET_MEM_TABLE, then per ring NUM/ADDR/BASE/KICK/CALL/ENABLE.
    let mut last: Option<StepId> = None;
    let mut push = |c: &mut Ctx<'_>, kind: StepKind, ring: Option<u32>| {
        let after: Vec<StepId> = last.into_iter().collect();
        let s = if kind.is_notifier() {
            c.notifier(d, kind, ring.expect("per ring"), Window::Blackout, &after)
        } else {
            c.msg(d, kind, ring, Window::Blackout, &after)
        };
        last = Some(s);
    };
    for r in 0..rings {
        push(c, StepKind::HostNotifierOn, Some(r));
    }
    for r in 0..rings {
        push(c, StepKind::GuestNotifierOn, Some(r));
    }
    push(c, StepKind::SetFeatures, None);
    push(c, StepKind::SetMemTable, None);
    for r in 0..rings {
        for k in [
            StepKind::SetVringNum,
            StepKind::SetVringAddr,
            StepKind::SetVringBase,
            StepKind::SetVringKick,
            StepKind::SetVringCall,
            StepKind::VringEnable,
        ] {
            push(c, k, Some(r));
        }
    }
}

fn generic(c: &mut Ctx<'_>, dev: &Device, side: Side) -> Result<(), PlanError> {
    let mut ids: HashMap<&str, StepId> = HashMap::new();
    let mut last: Option<StepId> = None;
    for gs in dev.steps.iter().filter(|s| s.side == side) {
        let mut after: Vec<StepId> = gs.after.iter().filter_map(|n| ids.get(n.as_str()).copied()).collect();
        if !c.minimal() {
            after.extend(last);
        }
        let mut fp = vec![Resource::device(dev.id)];
        if gs.big_lock {
            // Refused by the plan builder unless the step is caller-affine.
            fp.push(Resource::BIG_LOCK);
        }
        let kind = StepKind::Custom(Arc::from(gs.name.as_str()));
        let cost = c.costs.cost(dev, &kind);
        let id = c.b.add(
            StepSpec::new(dev.id, kind, c.win(gs.window))
                .affinity(gs.affinity)
                .cost(cost)
                .deadline(c.opts.deadline)
                .footprint(&fp)
                .after(&after),
        );
        ids.insert(gs.name.as_str(), id);
        last = Some(id);
    }
    Ok(())
}

/// The plan that restarts the source's devices after a failed switchover: every
/// ring that was stopped gets its captured base back and is kicked and enabled
/// again; a ring that was only disabled is enabled again. A device in `lost` (its
/// backend was reconnected and has no state) gets its whole start sequence, with
/// the captured (or recovered) bases. All in one window (blackout: the guest is
/// still frozen), ring by ring in parallel.
///
/// # Errors
/// [`PlanError`] (never for the built-in kinds).
///
/// ```
/// use std::sync::Arc;
/// use switchover::exec::Progress;
/// use switchover::recipe::{build, rollback, NoCosts, RecipeOptions};
/// use switchover::ids::Side;
/// use switchover::topology::Topology;
/// let t = Arc::new(Topology::preset("single-blk").unwrap());
/// let src = build(&t, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
/// let none_ran = Progress::new(&src);
/// assert!(rollback(&src, &none_ran, &[], &RecipeOptions::engine(), &NoCosts).unwrap().is_empty());
/// ```
pub fn rollback(
    src: &Plan,
    progress: &crate::exec::Progress,
    lost: &[DeviceId],
    opts: &RecipeOptions,
    costs: &dyn CostModel,
) -> Result<Plan, PlanError> {
    use crate::exec::StepOutcome;
    let topo = src.topology().clone();
    let mut c = Ctx { b: PlanBuilder::new(topo.clone(), Side::Source), costs, opts, topo: topo.clone() };
    for dev in topo.devices().iter().filter(|d| d.rings() > 0) {
        let d = dev.id;
        if lost.contains(&d) {
            let feat = c.msg(d, StepKind::SetFeatures, None, Window::Blackout, &[]);
            let mt = c.msg(d, StepKind::SetMemTable, None, Window::Blackout, &[feat]);
            for r in 0..dev.rings() {
                let num = c.msg(d, StepKind::SetVringNum, Some(r), Window::Blackout, &[mt]);
                let addr = c.msg(d, StepKind::SetVringAddr, Some(r), Window::Blackout, &[num]);
                let call = c.msg(d, StepKind::SetVringCall, Some(r), Window::Blackout, &[addr]);
                let base = c.msg(d, StepKind::SetVringBase, Some(r), Window::Blackout, &[call]);
                let kick = c.msg(d, StepKind::SetVringKick, Some(r), Window::Blackout, &[base]);
                c.msg(d, StepKind::VringEnable, Some(r), Window::Blackout, &[kick]);
            }
            continue;
        }
        for r in 0..dev.rings() {
            let outcome = |k: StepKind| {
                src.steps()
                    .iter()
                    .find(|s| s.device == d && s.ring == Some(r) && s.kind == k)
                    .map(|s| progress.outcome(s.id))
                    .unwrap_or(StepOutcome::NotRun)
            };
            // A base counts as read only if GET_VRING_BASE finished; a ring whose
            // read failed is only re-enabled (the roles treat its device as lost and
            // replay it whole instead).
            if outcome(StepKind::GetVringBase) == StepOutcome::Done {
                let base = c.msg(d, StepKind::SetVringBase, Some(r), Window::Blackout, &[]);
                let kick = c.msg(d, StepKind::SetVringKick, Some(r), Window::Blackout, &[base]);
                c.msg(d, StepKind::VringEnable, Some(r), Window::Blackout, &[kick]);
            } else if outcome(StepKind::VringDisable) != StepOutcome::NotRun {
                c.msg(d, StepKind::VringEnable, Some(r), Window::Blackout, &[]);
            }
        }
    }
    c.b.build()
}
