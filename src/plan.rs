//! A plan: the DAG of steps one side runs, with footprints, windows, affinities,
//! priorities (longest remaining path) and the lower bound on its duration.
//!
//! Footprints are interned into dense resource ids here, once, so the executor's
//! conflict check is a scan of a few integers against a busy table; two steps
//! conflict exactly when their footprints intersect ([`Plan::conflicts`]).
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use switchover::plan::{PlanBuilder, StepSpec};
//! use switchover::resource::Resource;
//! use switchover::ids::{DeviceId, Side, Window};
//! use switchover::step::StepKind;
//! use switchover::topology::Topology;
//!
//! let topo = Arc::new(Topology::preset("single-net").unwrap());
//! let mut b = PlanBuilder::new(topo, Side::Source);
//! let d = DeviceId(0);
//! let a = b.add(StepSpec::new(d, StepKind::VringDisable, Window::Blackout).ring(0)
//!     .footprint(&[Resource::vring(d, 0)]).cost(Duration::from_micros(5)));
//! let g = b.add(StepSpec::new(d, StepKind::GetVringBase, Window::Blackout).ring(0)
//!     .footprint(&[Resource::vring(d, 0)]).after(&[a]).cost(Duration::from_micros(50)));
//! let plan = b.build().unwrap();
//! assert!(plan.conflicts(a, g));
//! assert_eq!(plan.preds(g), &[a]);
//! assert_eq!(plan.priority(a), 55_000);
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::ids::DeviceId;
use crate::ids::{Affinity, Side, StepId, Window};
use crate::lock_order::ResourceKind;
use crate::resource::{Resource, ResourceId};
use crate::step::{ExecMode, Server, Step, StepKind};
use crate::topology::Topology;

/// Default per-step deadline.
///
/// ```
/// use switchover::plan::{PlanBuilder, StepSpec, DEFAULT_DEADLINE};
/// use switchover::ids::{DeviceId, Side, StepId, Window};
/// use switchover::step::StepKind;
/// use switchover::topology::Topology;
/// let mut b = PlanBuilder::new(Topology::preset("single-net").unwrap().into(), Side::Source);
/// b.add(StepSpec::new(DeviceId(0), StepKind::VringDisable, Window::Blackout));
/// assert_eq!(b.build().unwrap().step(StepId(0)).deadline, DEFAULT_DEADLINE);
/// ```
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// Everything needed to add one step to a [`PlanBuilder`].
///
/// ```
/// use switchover::plan::{PlanBuilder, StepSpec};
/// use switchover::resource::Resource;
/// use switchover::step::{Server, StepKind};
/// use switchover::ids::{DeviceId, Side, Window};
/// use switchover::topology::Topology;
/// let d = DeviceId(0);
/// let spec = StepSpec::new(d, StepKind::GetVringBase, Window::Blackout)
///     .ring(1)
///     .split(Server::Channel(d))
///     .footprint(&[Resource::vring(d, 1)]);
/// let mut b = PlanBuilder::new(Topology::preset("single-net").unwrap().into(), Side::Source);
/// let id = b.add(spec);
/// let plan = b.build().unwrap();
/// assert_eq!(plan.step(id).ring, Some(1));
/// assert_eq!(plan.footprint(id).collect::<Vec<_>>(), [Resource::vring(d, 1)]);
/// ```
#[derive(Debug, Clone)]
pub struct StepSpec {
    device: DeviceId,
    ring: Option<u32>,
    kind: StepKind,
    window: Window,
    affinity: Affinity,
    mode: ExecMode,
    cost: Duration,
    server: Option<Server>,
    deadline: Duration,
    footprint: Vec<Resource>,
    after: Vec<StepId>,
}

impl StepSpec {
    /// A blocking, any-lane step with an empty footprint and no predecessors.
    ///
    /// ```
    /// use switchover::plan::{PlanBuilder, StepSpec};
    /// use switchover::ids::{Affinity, DeviceId, Side, Window};
    /// use switchover::step::{ExecMode, StepKind};
    /// use switchover::topology::Topology;
    /// let mut b = PlanBuilder::new(Topology::preset("single-net").unwrap().into(), Side::Source);
    /// let id = b.add(StepSpec::new(DeviceId(0), StepKind::HostNotifierOff, Window::Cleanup));
    /// let plan = b.build().unwrap();
    /// let s = plan.step(id);
    /// assert_eq!((s.affinity, s.mode, s.ring, s.server), (Affinity::Any, ExecMode::Blocking, None, None));
    /// assert!(plan.preds(id).is_empty() && plan.footprint_ids(id).is_empty());
    /// ```
    pub fn new(device: DeviceId, kind: StepKind, window: Window) -> Self {
        StepSpec {
            device,
            ring: None,
            kind,
            window,
            affinity: Affinity::Any,
            mode: ExecMode::Blocking,
            cost: Duration::ZERO,
            server: None,
            deadline: DEFAULT_DEADLINE,
            footprint: vec![],
            after: vec![],
        }
    }
    /// Sets the ring.
    ///
    /// ```
    /// use switchover::plan::{PlanBuilder, StepSpec};
    /// use switchover::ids::{DeviceId, Side, Window};
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let mut b = PlanBuilder::new(Topology::preset("single-net").unwrap().into(), Side::Source);
    /// let id = b.add(StepSpec::new(DeviceId(0), StepKind::VringDisable, Window::Blackout).ring(1));
    /// assert_eq!(b.build().unwrap().step(id).ring, Some(1));
    /// ```
    pub fn ring(mut self, r: u32) -> Self {
        self.ring = Some(r);
        self
    }
    /// Sets the affinity.
    ///
    /// ```
    /// use switchover::plan::{PlanBuilder, StepSpec};
    /// use switchover::ids::{Affinity, DeviceId, Side, Window};
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let mut b = PlanBuilder::new(Topology::preset("single-net").unwrap().into(), Side::Source);
    /// let id = b.add(StepSpec::new(DeviceId(0), StepKind::MemTxnBegin, Window::Cleanup).affinity(Affinity::Caller));
    /// assert_eq!(b.build().unwrap().step(id).affinity, Affinity::Caller);
    /// ```
    pub fn affinity(mut self, a: Affinity) -> Self {
        self.affinity = a;
        self
    }
    /// Makes it split-phase, served by `server`.
    ///
    /// ```
    /// use switchover::plan::{PlanBuilder, StepSpec};
    /// use switchover::step::{ExecMode, Server, StepKind};
    /// use switchover::ids::{DeviceId, Side, Window};
    /// use switchover::topology::Topology;
    /// let d = DeviceId(0);
    /// let mut b = PlanBuilder::new(Topology::preset("single-net").unwrap().into(), Side::Source);
    /// let id = b.add(StepSpec::new(d, StepKind::GetVringBase, Window::Blackout).split(Server::Channel(d)));
    /// let plan = b.build().unwrap();
    /// assert_eq!((plan.step(id).mode, plan.step(id).server), (ExecMode::Split, Some(Server::Channel(d))));
    /// ```
    pub fn split(mut self, server: Server) -> Self {
        self.mode = ExecMode::Split;
        self.server = Some(server);
        self
    }
    /// Blocking work that is serialised on `server` (e.g. a VM's ioeventfd lock).
    ///
    /// ```
    /// use switchover::plan::{PlanBuilder, StepSpec};
    /// use switchover::step::{ExecMode, Server, StepKind};
    /// use switchover::ids::{DeviceId, Side, Window};
    /// use switchover::topology::Topology;
    /// let mut b = PlanBuilder::new(Topology::preset("single-net").unwrap().into(), Side::Destination);
    /// let spec = StepSpec::new(DeviceId(0), StepKind::HostNotifierOn, Window::Prepare).serialised_on(Server::VmIoeventfd);
    /// let id = b.add(spec);
    /// let plan = b.build().unwrap();
    /// // Still blocking: the lane does the work, but it queues on the server.
    /// assert_eq!((plan.step(id).mode, plan.step(id).server), (ExecMode::Blocking, Some(Server::VmIoeventfd)));
    /// ```
    pub fn serialised_on(mut self, server: Server) -> Self {
        self.server = Some(server);
        self
    }
    /// Sets the expected cost.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover::plan::{PlanBuilder, StepSpec};
    /// use switchover::ids::{DeviceId, Side, Window};
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let mut b = PlanBuilder::new(Topology::preset("single-net").unwrap().into(), Side::Source);
    /// let id = b.add(StepSpec::new(DeviceId(0), StepKind::VringDisable, Window::Blackout).cost(Duration::from_micros(7)));
    /// let plan = b.build().unwrap();
    /// assert_eq!(plan.step(id).cost, Duration::from_micros(7));
    /// assert_eq!(plan.priority(id), 7_000);
    /// ```
    pub fn cost(mut self, c: Duration) -> Self {
        self.cost = c;
        self
    }
    /// Sets the deadline.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover::plan::{PlanBuilder, StepSpec};
    /// use switchover::ids::{DeviceId, Side, Window};
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let mut b = PlanBuilder::new(Topology::preset("single-net").unwrap().into(), Side::Source);
    /// let id = b.add(StepSpec::new(DeviceId(0), StepKind::VringDisable, Window::Blackout).deadline(Duration::from_secs(2)));
    /// assert_eq!(b.build().unwrap().step(id).deadline, Duration::from_secs(2));
    /// ```
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = d;
        self
    }
    /// Sets the footprint.
    ///
    /// ```
    /// use switchover::plan::{PlanBuilder, StepSpec};
    /// use switchover::resource::Resource;
    /// use switchover::ids::{DeviceId, Side, Window};
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let d = DeviceId(0);
    /// let mut b = PlanBuilder::new(Topology::preset("single-net").unwrap().into(), Side::Source);
    /// let x = b.add(StepSpec::new(d, StepKind::VringDisable, Window::Blackout).footprint(&[Resource::vring(d, 0)]));
    /// let y = b.add(StepSpec::new(d, StepKind::VringDisable, Window::Blackout).footprint(&[Resource::vring(d, 1)]));
    /// let z = b.add(StepSpec::new(d, StepKind::SetFeatures, Window::Blackout).footprint(&[Resource::device(d), Resource::vring(d, 1)]));
    /// let plan = b.build().unwrap();
    /// assert!(!plan.conflicts(x, y));
    /// assert!(plan.conflicts(y, z));
    /// ```
    pub fn footprint(mut self, f: &[Resource]) -> Self {
        self.footprint = f.to_vec();
        self
    }
    /// Adds predecessors.
    ///
    /// ```
    /// use switchover::plan::{PlanBuilder, StepSpec};
    /// use switchover::ids::{DeviceId, Side, Window};
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let d = DeviceId(0);
    /// let mut b = PlanBuilder::new(Topology::preset("single-net").unwrap().into(), Side::Source);
    /// let a = b.add(StepSpec::new(d, StepKind::VringDisable, Window::Blackout));
    /// let g = b.add(StepSpec::new(d, StepKind::GetVringBase, Window::Blackout).after(&[a]));
    /// let plan = b.build().unwrap();
    /// assert_eq!(plan.preds(g), [a]);
    /// assert_eq!(plan.succs(a), [g]);
    /// ```
    pub fn after(mut self, p: &[StepId]) -> Self {
        self.after.extend_from_slice(p);
        self
    }
}

/// A plan that cannot be run.
///
/// ```
/// use switchover::plan::{PlanBuilder, PlanError, StepSpec};
/// use switchover::ids::{DeviceId, Side, Window};
/// use switchover::step::StepKind;
/// use switchover::topology::Topology;
/// let d = DeviceId(0);
/// let mut b = PlanBuilder::new(Topology::preset("single-net").unwrap().into(), Side::Source);
/// let late = b.add(StepSpec::new(d, StepKind::VringDisable, Window::Cleanup));
/// b.add(StepSpec::new(d, StepKind::GetVringBase, Window::Blackout).after(&[late]));
/// let e = b.build().unwrap_err();
/// assert!(matches!(e, PlanError::WindowOrder { .. }));
/// assert!(e.to_string().starts_with("net0 get_vring_base: runs in blackout"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// A step runs in an earlier window than one of its predecessors.
    #[error("{at}: runs in {window} but its predecessor {pred_kind} runs later, in {pred_window}")]
    WindowOrder {
        /// The step.
        at: StepAt,
        /// Its window.
        window: Window,
        /// The predecessor.
        pred: StepId,
        /// The predecessor's kind.
        pred_kind: StepKind,
        /// The predecessor's window.
        pred_window: Window,
    },
    /// A step that is not caller-affine touches a caller-only resource.
    #[error("{at}: touches {resource}, which only the caller lane may hold; make it caller-affine")]
    CallerOnly {
        /// The step.
        at: StepAt,
        /// The resource.
        resource: Resource,
    },
    /// A caller-affine step is split-phase.
    #[error("{at}: caller-affine steps must be blocking")]
    CallerSplit {
        /// The step.
        at: StepAt,
    },
    /// A predecessor id that does not exist yet.
    #[error("{at}: predecessor {} is not an earlier step", pred.0)]
    BadPred {
        /// The step.
        at: StepAt,
        /// The bad id.
        pred: StepId,
    },
}

/// Where in a plan a [`PlanError`] is: the step, its device (id and name) and kind.
///
/// ```
/// use switchover::ids::{DeviceId, StepId};
/// use switchover::plan::StepAt;
/// use switchover::step::StepKind;
/// let at = StepAt { step: StepId(4), device: DeviceId(0), device_name: "net0".into(), kind: StepKind::GetVringBase };
/// assert_eq!(at.to_string(), "net0 get_vring_base");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepAt {
    /// The step's id.
    pub step: StepId,
    /// Its device.
    pub device: DeviceId,
    /// The device's name.
    pub device_name: String,
    /// What the step does.
    pub kind: StepKind,
}

impl std::fmt::Display for StepAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.device_name, self.kind)
    }
}

/// Adds steps one by one; ids are assigned in order, and predecessors must already
/// exist, so every plan is acyclic by construction.
///
/// ```
/// use switchover::plan::{PlanBuilder, StepSpec};
/// use switchover::ids::{DeviceId, Side, Window};
/// use switchover::step::StepKind;
/// use switchover::topology::Topology;
/// let mut b = PlanBuilder::new(Topology::preset("single-blk").unwrap().into(), Side::Source);
/// let first = b.add(StepSpec::new(DeviceId(0), StepKind::DrainInflight, Window::Blackout).ring(0));
/// let second = b.add(StepSpec::new(DeviceId(0), StepKind::GetVringBase, Window::Blackout).ring(0).after(&[first]));
/// assert_eq!((first.0, second.0), (0, 1));
/// assert_eq!(b.build().unwrap().len(), 2);
/// ```
#[derive(Debug)]
pub struct PlanBuilder {
    topology: Arc<Topology>,
    side: Side,
    specs: Vec<StepSpec>,
}

impl PlanBuilder {
    /// An empty plan for `side` of `topology`.
    ///
    /// ```
    /// use switchover::plan::PlanBuilder;
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let b = PlanBuilder::new(Topology::preset("small").unwrap().into(), Side::Destination);
    /// let plan = b.build().unwrap();
    /// assert!(plan.is_empty());
    /// assert_eq!(plan.side(), Side::Destination);
    /// ```
    pub fn new(topology: Arc<Topology>, side: Side) -> Self {
        PlanBuilder { topology, side, specs: Vec::new() }
    }

    /// Adds a step; returns its id.
    ///
    /// ```
    /// use switchover::plan::{PlanBuilder, StepSpec};
    /// use switchover::ids::{DeviceId, Side, StepId, Window};
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let mut b = PlanBuilder::new(Topology::preset("small").unwrap().into(), Side::Source);
    /// let id = b.add(StepSpec::new(DeviceId(1), StepKind::VringDisable, Window::Blackout));
    /// assert_eq!(id, StepId(0));
    /// assert_eq!(b.build().unwrap().device_name(id), "net1");
    /// ```
    pub fn add(&mut self, spec: StepSpec) -> StepId {
        self.specs.push(spec);
        StepId(self.specs.len() as u32 - 1)
    }

    /// Number of steps so far.
    ///
    /// ```
    /// use switchover::plan::{PlanBuilder, StepSpec};
    /// use switchover::ids::{DeviceId, Side, Window};
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let mut b = PlanBuilder::new(Topology::preset("small").unwrap().into(), Side::Source);
    /// assert_eq!(b.len(), 0);
    /// b.add(StepSpec::new(DeviceId(0), StepKind::VringDisable, Window::Blackout));
    /// assert_eq!(b.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// Whether no step was added.
    ///
    /// ```
    /// use switchover::plan::{PlanBuilder, StepSpec};
    /// use switchover::ids::{DeviceId, Side, Window};
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let mut b = PlanBuilder::new(Topology::preset("small").unwrap().into(), Side::Source);
    /// assert!(b.is_empty());
    /// b.add(StepSpec::new(DeviceId(0), StepKind::VringDisable, Window::Blackout));
    /// assert!(!b.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Validates, interns footprints, computes successors and priorities.
    ///
    /// # Errors
    /// [`PlanError`] naming the device and step that break a rule.
    ///
    /// ```
    /// use switchover::plan::{PlanBuilder, PlanError, StepSpec};
    /// use switchover::resource::Resource;
    /// use switchover::ids::{DeviceId, Side, Window};
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let mut b = PlanBuilder::new(Topology::preset("small").unwrap().into(), Side::Source);
    /// // Only caller-affine steps may hold the big lock.
    /// b.add(StepSpec::new(DeviceId(0), StepKind::MemTxnBegin, Window::Cleanup).footprint(&[Resource::BIG_LOCK]));
    /// assert!(matches!(b.build(), Err(PlanError::CallerOnly { .. })));
    /// ```
    pub fn build(self) -> Result<Plan, PlanError> {
        let n = self.specs.len();
        let topo = self.topology;
        let mut resources: Vec<Resource> = self.specs.iter().flat_map(|s| s.footprint.iter().copied()).collect();
        resources.sort_unstable();
        resources.dedup();
        let mut steps = Vec::with_capacity(n);
        let mut preds = Csr::default();
        let mut footprint = Csr::default();
        for (i, s) in self.specs.iter().enumerate() {
            let at = || StepAt {
                step: StepId(i as u32),
                device: s.device,
                device_name: topo.device(s.device).name.clone(),
                kind: s.kind.clone(),
            };
            let mut p: Vec<u32> = s.after.iter().map(|x| x.0).collect();
            p.sort_unstable();
            p.dedup();
            for &q in &p {
                if q as usize >= i {
                    return Err(PlanError::BadPred { at: at(), pred: StepId(q) });
                }
                let pw = self.specs[q as usize].window;
                if pw > s.window {
                    return Err(PlanError::WindowOrder {
                        at: at(),
                        window: s.window,
                        pred: StepId(q),
                        pred_kind: self.specs[q as usize].kind.clone(),
                        pred_window: pw,
                    });
                }
            }
            if s.affinity == Affinity::Caller && s.mode == ExecMode::Split {
                return Err(PlanError::CallerSplit { at: at() });
            }
            let mut f: Vec<u32> = Vec::with_capacity(s.footprint.len());
            for r in &s.footprint {
                if r.kind.caller_only() && s.affinity != Affinity::Caller {
                    return Err(PlanError::CallerOnly { at: at(), resource: *r });
                }
                f.push(resources.binary_search(r).expect("interned") as u32);
            }
            // Sorted by lock order (resources are sorted, so by dense id).
            f.sort_unstable();
            f.dedup();
            preds.push(&p);
            footprint.push(&f);
            steps.push(Step {
                id: StepId(i as u32),
                device: s.device,
                ring: s.ring,
                kind: s.kind.clone(),
                side: self.side,
                window: s.window,
                affinity: s.affinity,
                mode: s.mode,
                cost: s.cost,
                server: s.server,
                deadline: s.deadline,
            });
        }
        // Successors (CSR) from predecessors.
        let mut succ_lists: Vec<Vec<u32>> = vec![Vec::new(); n];
        for i in 0..n {
            for &p in preds.get(i) {
                succ_lists[p as usize].push(i as u32);
            }
        }
        let mut succs = Csr::default();
        for l in &succ_lists {
            succs.push(l);
        }
        // Longest remaining path (own cost included), walking ids backwards.
        let mut priority = vec![0u64; n];
        for i in (0..n).rev() {
            let tail = succs.get(i).iter().map(|&s| priority[s as usize]).max().unwrap_or(0);
            priority[i] = steps[i].cost.as_nanos() as u64 + tail;
        }
        // Dense ranks: higher priority first, then lower id; the executor's ready set
        // is a bitset over ranks, so taking the most urgent step is a bit scan.
        let mut by_rank: Vec<u32> = (0..n as u32).collect();
        by_rank.sort_by(|&a, &b| priority[b as usize].cmp(&priority[a as usize]).then(a.cmp(&b)));
        let mut rank = vec![0u32; n];
        for (r, &id) in by_rank.iter().enumerate() {
            rank[id as usize] = r as u32;
        }
        let contended = contended_footprints(&steps, &preds, &footprint, resources.len());
        // Each window's steps, and each step's predecessors in its own window.
        let mut windows: [Vec<StepId>; 3] = Default::default();
        let mut window_preds = vec![0u32; n];
        let mut exec = vec![0u8; n];
        let mut min_deadline = [Duration::MAX; 3];
        for (i, s) in steps.iter().enumerate() {
            windows[s.window as usize].push(s.id);
            window_preds[i] = preds.get(i).iter().filter(|&&p| steps[p as usize].window == s.window).count() as u32;
            let w = &mut min_deadline[s.window as usize];
            *w = (*w).min(s.deadline);
            if s.affinity == Affinity::Caller {
                exec[i] |= EXEC_CALLER;
            }
            if !contended.get(i).is_empty() {
                exec[i] |= EXEC_CONTENDED;
            }
        }
        for (i, s) in steps.iter().enumerate() {
            let joins = succs.get(i).iter().any(|&x| steps[x as usize].window == s.window && window_preds[x as usize] > 1);
            if joins {
                exec[i] |= EXEC_JOINS;
            }
        }
        let starts = Window::ALL.map(|w| WindowStart::new(&windows[w as usize], &window_preds, &exec, &rank, n));
        Ok(Plan {
            topology: topo,
            side: self.side,
            steps,
            preds,
            succs,
            footprint,
            contended,
            resources,
            priority,
            rank,
            by_rank,
            windows,
            window_preds,
            exec,
            min_deadline,
            starts,
        })
    }
}

/// Compressed adjacency lists.
#[derive(Debug, Clone, Default)]
struct Csr {
    offsets: Vec<u32>,
    items: Vec<u32>,
}

impl Csr {
    fn push(&mut self, l: &[u32]) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        self.items.extend_from_slice(l);
        self.offsets.push(self.items.len() as u32);
    }
    fn get(&self, i: usize) -> &[u32] {
        &self.items[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

/// How many steps an ancestry check may visit before it gives up and counts the
/// two steps as unordered (which only costs the engine a lock it did not need).
const ANCESTRY_VISITS: usize = 4096;

/// Per step, the resources of its footprint that another step of its window may
/// hold at the same time: those whose users in that window are not all ordered
/// by the plan's dependencies. Every other footprint resource is excluded by the
/// dependencies themselves (each of its users starts only after the previous one
/// ended), so the executor locks only these at run time.
fn contended_footprints(steps: &[Step], preds: &Csr, footprint: &Csr, resources: usize) -> Csr {
    // Users of each resource per window, in id (topological) order.
    let windows = Window::ALL.len();
    let mut users: Vec<Vec<u32>> = vec![Vec::new(); resources * windows];
    for (i, s) in steps.iter().enumerate() {
        for &r in footprint.get(i) {
            users[r as usize * windows + s.window as usize].push(i as u32);
        }
    }
    let mut seen = vec![0u32; steps.len()];
    let mut mark = 0u32;
    let mut stack = Vec::new();
    // Whether `a` (< `b`) is an ancestor of `b`: a walk back from `b` over
    // predecessors with ids above `a`.
    let mut ancestor = |a: u32, b: u32| -> bool {
        mark += 1;
        stack.clear();
        stack.push(b);
        let mut visits = 0;
        while let Some(x) = stack.pop() {
            for &p in preds.get(x as usize) {
                if p == a {
                    return true;
                }
                if p > a && seen[p as usize] != mark {
                    seen[p as usize] = mark;
                    visits += 1;
                    if visits > ANCESTRY_VISITS {
                        return false;
                    }
                    stack.push(p);
                }
            }
        }
        false
    };
    // A resource is contended in a window unless its users there form a chain
    // (each one an ancestor of the next; by transitivity then of all later ones).
    let contended: Vec<bool> = users.iter().map(|u| u.windows(2).any(|w| !ancestor(w[0], w[1]))).collect();
    let mut out = Csr::default();
    let mut list = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        list.clear();
        list.extend(footprint.get(i).iter().copied().filter(|&r| contended[r as usize * windows + s.window as usize]));
        out.push(&list);
    }
    out
}

/// A validated DAG of steps for one side.
///
/// ```
/// use std::sync::Arc;
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::ids::{Side, Window};
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
/// // Every predecessor has a smaller id and never runs in a later window.
/// for s in plan.steps() {
///     for p in plan.preds(s.id) {
///         assert!(p.0 < s.id.0 && plan.step(*p).window <= s.window);
///     }
/// }
/// assert!(plan.in_window(Window::Blackout).count() > 0);
/// ```
#[derive(Debug, Clone)]
pub struct Plan {
    topology: Arc<Topology>,
    side: Side,
    steps: Vec<Step>,
    preds: Csr,
    succs: Csr,
    footprint: Csr,
    contended: Csr,
    resources: Vec<Resource>,
    priority: Vec<u64>,
    rank: Vec<u32>,
    by_rank: Vec<u32>,
    windows: [Vec<StepId>; 3],
    window_preds: Vec<u32>,
    /// Per step, what the executor needs to know without touching the step:
    /// [`EXEC_CALLER`], [`EXEC_CONTENDED`].
    exec: Vec<u8>,
    min_deadline: [Duration; 3],
    starts: [WindowStart; 3],
}

/// Where the executor starts a window's first attempt (every earlier window done,
/// none of this one's steps run yet): built with the plan, before any window
/// opens, so that a run's setup is a copy.
#[derive(Debug, Clone, Default)]
pub(crate) struct WindowStart {
    /// Per step: rank (low 32 bits), gate (next 24 bits: [`GATE_OUTSIDE`] for the
    /// other windows' steps; 0, ready at once; 1, ready when its one predecessor
    /// ends; `2 + k`, counted down from `counts[k]`), exec flags (high 8 bits).
    pub info: Vec<u64>,
    /// Initial countdowns of the steps that wait for more than one predecessor.
    pub counts: Vec<u32>,
    /// Ranks of the any-lane and the caller-affine steps ready at once.
    pub ready_any: Vec<u32>,
    pub ready_caller: Vec<u32>,
    /// Whether any of the window's steps locks part of its footprint at run time.
    pub contended: bool,
}

/// [`WindowStart::info`]: a step outside the window.
pub(crate) const GATE_OUTSIDE: u32 = 0x00ff_ffff;

/// One step's [`WindowStart::info`].
#[inline]
pub(crate) fn pack_info(rank: u32, gate: u32, flags: u8) -> u64 {
    u64::from(rank) | u64::from(gate) << 32 | u64::from(flags) << 56
}

impl WindowStart {
    fn new(steps: &[StepId], window_preds: &[u32], exec: &[u8], rank: &[u32], n: usize) -> WindowStart {
        let mut s = WindowStart { info: (0..n).map(|i| pack_info(rank[i], GATE_OUTSIDE, 0)).collect(), ..WindowStart::default() };
        for id in steps {
            let i = id.0 as usize;
            let (rem, f) = (window_preds[i], exec[i]);
            let gate = match rem {
                0 | 1 => rem,
                _ => {
                    s.counts.push(rem);
                    1 + s.counts.len() as u32
                }
            };
            s.info[i] = pack_info(rank[i], gate, f);
            s.contended |= f & EXEC_CONTENDED != 0;
            if rem == 0 {
                if f & EXEC_CALLER == 0 {
                    s.ready_any.push(rank[i]);
                } else {
                    s.ready_caller.push(rank[i]);
                }
            }
        }
        s
    }
}
/// [`Plan::exec_flags`]: the step is caller-affine.
pub(crate) const EXEC_CALLER: u8 = 1;
/// [`Plan::exec_flags`]: part of the step's footprint is locked at run time.
pub(crate) const EXEC_CONTENDED: u8 = 2;
/// [`Plan::exec_flags`]: a successor in the step's window has another predecessor
/// there, so another lane may make it ready and start it: the step's end is
/// stamped as it ends (otherwise its lane's next timestamp serves).
pub(crate) const EXEC_JOINS: u8 = 4;

fn ids(l: &[u32]) -> &[StepId] {
    // SAFETY: StepId is a #[repr(transparent)]-equivalent newtype of u32 with no
    // invariants; a slice of u32 has the same layout as a slice of StepId.
    unsafe { std::slice::from_raw_parts(l.as_ptr().cast::<StepId>(), l.len()) }
}

impl Plan {
    /// The topology it was built for.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// assert!(Arc::ptr_eq(plan.topology(), &topo));
    /// ```
    pub fn topology(&self) -> &Arc<Topology> {
        &self.topology
    }
    /// Which side runs it.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Destination, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// assert_eq!(plan.side(), Side::Destination);
    /// assert!(plan.steps().iter().all(|s| s.side == Side::Destination));
    /// ```
    pub fn side(&self) -> Side {
        self.side
    }
    /// All steps, in id order (a topological order).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// assert!(plan.steps().iter().enumerate().all(|(i, s)| s.id.0 as usize == i));
    /// ```
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }
    /// One step.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::{Side, StepId};
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// let last = StepId(plan.len() as u32 - 1);
    /// assert_eq!(plan.step(last).id, last);
    /// ```
    pub fn step(&self, id: StepId) -> &Step {
        &self.steps[id.0 as usize]
    }
    /// Number of steps.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::Side;
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// assert_eq!(plan.len(), plan.steps().len());
    /// // One `get_vring_base` per ring.
    /// assert_eq!(plan.steps().iter().filter(|s| s.kind == StepKind::GetVringBase).count(), topo.total_rings() as usize);
    /// ```
    pub fn len(&self) -> usize {
        self.steps.len()
    }
    /// Whether the plan has no steps.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("single-blk").unwrap());
    /// assert!(!build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
    /// Predecessors of a step.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::Side;
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("single-blk").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// let get = plan.steps().iter().find(|s| s.kind == StepKind::GetVringBase).unwrap();
    /// // A blk ring's base is read only after its requests were drained.
    /// assert!(plan.preds(get.id).iter().any(|p| plan.step(*p).kind == StepKind::DrainInflight));
    /// ```
    pub fn preds(&self, id: StepId) -> &[StepId] {
        ids(self.preds.get(id.0 as usize))
    }
    /// Successors of a step.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// for s in plan.steps() {
    ///     assert!(plan.succs(s.id).iter().all(|n| plan.preds(*n).contains(&s.id)));
    /// }
    /// ```
    pub fn succs(&self, id: StepId) -> &[StepId] {
        ids(self.succs.get(id.0 as usize))
    }
    /// Dense resource ids of a step's footprint, in lock order.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// for s in plan.steps() {
    ///     let ids = plan.footprint_ids(s.id);
    ///     assert!(ids.windows(2).all(|w| w[0] < w[1]));
    ///     assert!(ids.iter().all(|&r| (r as usize) < plan.resource_count()));
    /// }
    /// ```
    pub fn footprint_ids(&self, id: StepId) -> &[u32] {
        self.footprint.get(id.0 as usize)
    }
    /// The part of a step's footprint that the executor locks at run time: the
    /// resources another step of the same window may hold at the same time. A
    /// resource whose users in a window are all ordered by the plan's
    /// dependencies is excluded by them alone (each user starts only after the
    /// previous one ended), so it needs no lock.
    ///
    /// ```
    /// use switchover::ids::{DeviceId, Side, Window};
    /// use switchover::plan::{PlanBuilder, StepSpec};
    /// use switchover::resource::Resource;
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let d = DeviceId(0);
    /// let (dev, ring) = (Resource::device(d), Resource::vring(d, 0));
    /// let mut b = PlanBuilder::new(Topology::preset("single-net").unwrap().into(), Side::Destination);
    /// let base = b.add(StepSpec::new(d, StepKind::SetVringBase, Window::Blackout).ring(0).footprint(&[ring]));
    /// let kick = b.add(StepSpec::new(d, StepKind::SetVringKick, Window::Blackout).ring(0).footprint(&[ring]).after(&[base]));
    /// // Two device-wide steps that nothing orders: they must exclude each other at run time.
    /// let x = b.add(StepSpec::new(d, StepKind::Reconcile, Window::Blackout).footprint(&[dev]));
    /// let y = b.add(StepSpec::new(d, StepKind::StorageActivate, Window::Blackout).footprint(&[dev]));
    /// let plan = b.build().unwrap();
    /// assert!(plan.contended(base).is_empty() && plan.contended(kick).is_empty()); // ordered
    /// assert_eq!(plan.contended(x), plan.footprint_ids(x));
    /// assert_eq!(plan.contended(y), plan.footprint_ids(y));
    /// ```
    pub fn contended(&self, id: StepId) -> &[u32] {
        self.contended.get(id.0 as usize)
    }
    /// A step's footprint as resources.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::resource::Resource;
    /// use switchover::ids::Side;
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("single-net").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// let get = plan.steps().iter().find(|s| s.kind == StepKind::GetVringBase).unwrap();
    /// let ring = get.ring.unwrap();
    /// assert_eq!(plan.footprint(get.id).collect::<Vec<_>>(), [Resource::vring(get.device, ring)]);
    /// ```
    pub fn footprint(&self, id: StepId) -> impl Iterator<Item = Resource> + '_ {
        self.footprint_ids(id).iter().map(|&r| self.resources[r as usize])
    }
    /// Number of distinct resources.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::resource::ResourceId;
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// let all: std::collections::HashSet<_> = (0..plan.resource_count() as u32).map(|i| plan.resource(ResourceId(i))).collect();
    /// assert_eq!(all.len(), plan.resource_count()); // interned: each resource once
    /// ```
    pub fn resource_count(&self) -> usize {
        self.resources.len()
    }
    /// A resource by dense id.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::resource::ResourceId;
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// let s = &plan.steps()[0];
    /// let via_ids: Vec<_> = plan.footprint_ids(s.id).iter().map(|&r| plan.resource(ResourceId(r))).collect();
    /// assert_eq!(via_ids, plan.footprint(s.id).collect::<Vec<_>>());
    /// ```
    pub fn resource(&self, id: ResourceId) -> Resource {
        self.resources[id.0 as usize]
    }
    /// Longest remaining path from this step, in nanoseconds of expected cost.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, RecipeOptions};
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// use std::time::Duration;
    /// use switchover::recipe::CostModel;
    /// use switchover::step::StepKind;
    /// use switchover::topology::Device;
    /// /// Control-channel messages take 50 µs; everything else 5 µs.
    /// struct Costs;
    /// impl CostModel for Costs {
    ///     fn cost(&self, _device: &Device, kind: &StepKind) -> Duration {
    ///         Duration::from_micros(if kind.is_message() { 50 } else { 5 })
    ///     }
    /// }
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &Costs).unwrap();
    /// // A step's remaining path is at least its own cost plus any successor's.
    /// for s in plan.steps() {
    ///     for n in plan.succs(s.id) {
    ///         assert!(plan.priority(s.id) >= s.cost.as_nanos() as u64 + plan.priority(*n));
    ///     }
    /// }
    /// ```
    pub fn priority(&self, id: StepId) -> u64 {
        self.priority[id.0 as usize]
    }
    /// A step's rank: 0 is the most urgent (longest remaining path, then lowest id).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, RecipeOptions};
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// use std::time::Duration;
    /// use switchover::recipe::CostModel;
    /// use switchover::step::StepKind;
    /// use switchover::topology::Device;
    /// /// Control-channel messages take 50 µs; everything else 5 µs.
    /// struct Costs;
    /// impl CostModel for Costs {
    ///     fn cost(&self, _device: &Device, kind: &StepKind) -> Duration {
    ///         Duration::from_micros(if kind.is_message() { 50 } else { 5 })
    ///     }
    /// }
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &Costs).unwrap();
    /// let most_urgent = plan.at_rank(0);
    /// assert_eq!(plan.rank(most_urgent), 0);
    /// assert!(plan.steps().iter().all(|s| plan.priority(s.id) <= plan.priority(most_urgent)));
    /// ```
    pub fn rank(&self, id: StepId) -> u32 {
        self.rank[id.0 as usize]
    }
    /// The step of a rank.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// for s in plan.steps() {
    ///     assert_eq!(plan.at_rank(plan.rank(s.id)), s.id);
    /// }
    /// ```
    pub fn at_rank(&self, rank: u32) -> StepId {
        StepId(self.by_rank[rank as usize])
    }
    /// Whether two steps may not run at the same time (footprints intersect).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::Side;
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("single-net").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// let gets: Vec<_> = plan.steps().iter().filter(|s| s.kind == StepKind::GetVringBase).map(|s| s.id).collect();
    /// assert!(plan.conflicts(gets[0], gets[0]));
    /// assert!(!plan.conflicts(gets[0], gets[1])); // different rings
    /// ```
    pub fn conflicts(&self, a: StepId, b: StepId) -> bool {
        let (fa, fb) = (self.footprint_ids(a), self.footprint_ids(b));
        let (mut i, mut j) = (0, 0);
        while i < fa.len() && j < fb.len() {
            match fa[i].cmp(&fb[j]) {
                std::cmp::Ordering::Equal => return true,
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
            }
        }
        false
    }
    /// The device name of a step.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// for s in plan.steps() {
    ///     assert_eq!(plan.device_name(s.id), topo.device(s.device).name);
    /// }
    /// ```
    pub fn device_name(&self, id: StepId) -> &str {
        &self.topology.device(self.step(id).device).name
    }
    /// Steps of one window.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::{Side, Window};
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Destination, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// // The destination registers its notifiers before the window opens.
    /// assert!(plan.in_window(Window::Prepare).any(|s| s.kind == StepKind::HostNotifierOn));
    /// assert!(!plan.in_window(Window::Blackout).any(|s| s.kind.is_notifier()));
    /// ```
    pub fn in_window(&self, w: Window) -> impl Iterator<Item = &Step> + '_ {
        self.windows[w as usize].iter().map(|id| &self.steps[id.0 as usize])
    }
    /// The ids of one window's steps, in id order.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::{Side, Window};
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// let ids: Vec<_> = plan.in_window(Window::Blackout).map(|s| s.id).collect();
    /// assert_eq!(plan.window_steps(Window::Blackout), &ids[..]);
    /// ```
    pub fn window_steps(&self, w: Window) -> &[StepId] {
        &self.windows[w as usize]
    }
    /// The executor's flags of a step ([`EXEC_CALLER`], [`EXEC_CONTENDED`]).
    pub(crate) fn exec_flags(&self, id: StepId) -> u8 {
        self.exec[id.0 as usize]
    }
    /// Where the executor starts the first attempt at window `w`.
    pub(crate) fn window_start(&self, w: Window) -> &WindowStart {
        &self.starts[w as usize]
    }
    /// The shortest deadline of a window's steps (`Duration::MAX` if it has none).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use switchover::plan::DEFAULT_DEADLINE;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::{Side, Window};
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// assert_eq!(plan.min_deadline(Window::Blackout), DEFAULT_DEADLINE);
    /// ```
    pub fn min_deadline(&self, w: Window) -> Duration {
        self.min_deadline[w as usize]
    }
    /// How many of a step's predecessors run in its own window.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Destination, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// for s in plan.steps() {
    ///     let same = plan.preds(s.id).iter().filter(|p| plan.step(**p).window == s.window).count();
    ///     assert_eq!(plan.window_preds(s.id) as usize, same);
    /// }
    /// ```
    pub fn window_preds(&self, id: StepId) -> u32 {
        self.window_preds[id.0 as usize]
    }
    /// Whether any step of the plan touches a resource of `kind`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::lock_order::ResourceKind;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// assert!(plan.uses(ResourceKind::Vring));
    /// assert!(plan.uses(ResourceKind::BigLock)); // the batched memory transaction
    /// assert!(!plan.uses(ResourceKind::Custom));
    /// ```
    pub fn uses(&self, kind: ResourceKind) -> bool {
        self.resources.iter().any(|r| r.kind == kind)
    }

    /// The lower bound on running the steps of window `w` with `lanes` lanes
    /// (workers plus the caller), from expected costs: the largest of the longest
    /// dependency chain, each serialised server's busy time (after the earliest any
    /// of its requests can be sent, and before the shortest chain that must follow
    /// its last one), and the lanes' blocking work divided by the number of lanes.
    ///
    /// ```
    /// use switchover::recipe::{build, RecipeOptions};
    /// use switchover::ids::{Side, Window};
    /// use switchover::topology::Topology;
    /// use std::time::Duration;
    /// use switchover::recipe::CostModel;
    /// use switchover::step::StepKind;
    /// use switchover::topology::Device;
    /// /// Control-channel messages take 50 µs; everything else 5 µs.
    /// struct Costs;
    /// impl CostModel for Costs {
    ///     fn cost(&self, _device: &Device, kind: &StepKind) -> Duration {
    ///         Duration::from_micros(if kind.is_message() { 50 } else { 5 })
    ///     }
    /// }
    /// let t = std::sync::Arc::new(Topology::preset("rfc-huge").unwrap());
    /// let p = build(&t, Side::Source, &RecipeOptions::engine(), &Costs).unwrap();
    /// let lb = p.lower_bound(Window::Blackout, 9);
    /// assert!(lb.bound >= lb.chain);
    /// // The longest chain: a blk ring's `vring_disable`, `drain_inflight`,
    /// // `get_vring_base`, then the log sync and the final RAM pass.
    /// assert_eq!(lb.chain, Duration::from_micros(50 + 5 + 50 + 5 + 5));
    /// // A net device's channel serves its 64 `get_vring_base`; the log sync and
    /// // the final pass come after the last of them.
    /// assert_eq!(lb.busiest_server.unwrap().1, Duration::from_micros(64 * 50));
    /// assert_eq!(lb.server_bound, Duration::from_micros(64 * 50 + 5 + 5));
    /// assert_eq!(lb.bound, lb.server_bound);
    /// ```
    pub fn lower_bound(&self, w: Window, lanes: usize) -> LowerBound {
        self.lower_bound_by(w, lanes, |s| {
            let lane = if s.mode == ExecMode::Blocking { s.cost } else { Duration::ZERO };
            BoundCost { answer: s.cost, server: s.cost, lane }
        })
    }

    /// [`Plan::lower_bound`] with each step's costs given by `cost` (measured costs,
    /// say, instead of the expected ones the plan was built with): the largest of
    /// the longest dependency chain of answers, each serialised server's busy time
    /// (after the earliest any of its requests can be sent, and before the shortest
    /// chain of answers that must follow its last one), and the lanes' work divided
    /// by the number of lanes.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover::ids::{Side, Window};
    /// use switchover::plan::BoundCost;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let t = std::sync::Arc::new(Topology::preset("single-net").unwrap());
    /// let p = build(&t, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// // Measured: each `get_vring_base` answers in 30 µs and holds its channel 10 µs.
    /// let lb = p.lower_bound_by(Window::Blackout, 2, |s| match s.kind {
    ///     StepKind::GetVringBase => BoundCost { answer: Duration::from_micros(30), server: Duration::from_micros(10), lane: Duration::ZERO },
    ///     _ => BoundCost::default(),
    /// });
    /// assert_eq!(lb.chain, Duration::from_micros(30)); // the rings are independent
    /// assert_eq!(lb.busiest_server.unwrap().1, Duration::from_micros(20)); // two rings, one channel
    /// assert_eq!(lb.bound, Duration::from_micros(30));
    /// ```
    pub fn lower_bound_by(&self, w: Window, lanes: usize, cost: impl Fn(&Step) -> BoundCost) -> LowerBound {
        let n = self.steps.len();
        // Per step of the window: (answer, server, lane) in nanoseconds.
        let costs: Vec<(u64, u64, u64)> = self
            .steps
            .iter()
            .map(|s| {
                if s.window != w {
                    return (0, 0, 0);
                }
                let c = cost(s);
                (ns(c.answer), ns(c.server), ns(c.lane))
            })
            .collect();
        let mut finish = vec![0u64; n];
        let mut start_at = vec![0u64; n];
        let mut chain = 0u64;
        let mut blocking = 0u64;
        for &id in self.window_steps(w) {
            let s = &self.steps[id.0 as usize];
            let i = id.0 as usize;
            let answer = costs[i].0;
            let start = self.preds(s.id).iter().map(|p| finish[p.0 as usize]).max().unwrap_or(0);
            start_at[i] = start;
            finish[i] = start + answer;
            chain = chain.max(start + answer);
            blocking += costs[i].2;
        }
        // The longest chain of this window's answers after each step (itself excluded).
        let mut tail = vec![0u64; n];
        for s in self.steps.iter().rev() {
            if s.window != w {
                continue;
            }
            let after = self
                .succs(s.id)
                .iter()
                .map(|x| self.step(*x))
                .filter(|x| x.window == w)
                .map(|x| costs[x.id.0 as usize].0 + tail[x.id.0 as usize]);
            tail[s.id.0 as usize] = after.max().unwrap_or(0);
        }
        // Per server: busy time, the earliest any of its requests can start, the
        // shortest chain after any of them (its last one has at least that).
        let mut servers: Vec<(Server, u64, u64, u64)> = Vec::new();
        for s in self.steps.iter().filter(|s| s.window == w) {
            let Some(sv) = s.server else { continue };
            let i = s.id.0 as usize;
            match servers.iter_mut().find(|(x, ..)| *x == sv) {
                Some(e) => {
                    e.1 += costs[i].1;
                    e.2 = e.2.min(start_at[i]);
                    e.3 = e.3.min(tail[i]);
                }
                None => servers.push((sv, costs[i].1, start_at[i], tail[i])),
            }
        }
        let server_bound = |e: &(Server, u64, u64, u64)| e.2 + e.1 + e.3;
        servers.sort_by_key(|e| std::cmp::Reverse(server_bound(e)));
        let lanes = lanes.max(1) as u64;
        let per_lane = blocking / lanes;
        let busiest = servers.first().map(server_bound).unwrap_or(0);
        let bound = chain.max(busiest).max(per_lane);
        let limiter = if bound == 0 {
            Limiter::Nothing
        } else if bound == busiest && busiest >= chain {
            Limiter::Server(servers[0].0)
        } else if bound == chain {
            Limiter::Chain
        } else {
            Limiter::Lanes
        };
        LowerBound {
            chain: Duration::from_nanos(chain),
            busiest_server: servers.first().map(|e| (e.0, Duration::from_nanos(e.1))),
            server_bound: Duration::from_nanos(busiest),
            blocking_per_lane: Duration::from_nanos(per_lane),
            bound: Duration::from_nanos(bound),
            limiter,
        }
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One step's costs for [`Plan::lower_bound_by`].
///
/// ```
/// use switchover::plan::BoundCost;
/// assert_eq!(BoundCost::default().answer, std::time::Duration::ZERO);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BoundCost {
    /// From its start to its answer, with nothing queued before it.
    pub answer: std::time::Duration,
    /// How long it keeps its serialised server busy (if it has one).
    pub server: std::time::Duration,
    /// How long it holds a lane.
    pub lane: std::time::Duration,
}

/// What limits a window's duration at best.
///
/// ```
/// use std::sync::Arc;
/// use switchover::plan::Limiter;
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::ids::{Side, Window};
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
/// // With no costs nothing limits the window.
/// assert_eq!(plan.lower_bound(Window::Blackout, 4).limiter, Limiter::Nothing);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limiter {
    /// The window is empty.
    Nothing,
    /// The longest dependency chain.
    Chain,
    /// A serialised server (its busy time).
    Server(Server),
    /// Blocking work spread over all lanes.
    Lanes,
}

/// A lower bound on a window's duration; see [`Plan::lower_bound`].
///
/// ```
/// use std::sync::Arc;
/// use switchover::recipe::{build, RecipeOptions};
/// use switchover::ids::{Side, Window};
/// use switchover::topology::Topology;
/// use std::time::Duration;
/// use switchover::recipe::CostModel;
/// use switchover::step::StepKind;
/// use switchover::topology::Device;
/// /// Control-channel messages take 50 µs; everything else 5 µs.
/// struct Costs;
/// impl CostModel for Costs {
///     fn cost(&self, _device: &Device, kind: &StepKind) -> Duration {
///         Duration::from_micros(if kind.is_message() { 50 } else { 5 })
///     }
/// }
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &Costs).unwrap();
/// let lb = plan.lower_bound(Window::Blackout, 3);
/// assert_eq!(lb.bound, lb.chain.max(lb.blocking_per_lane).max(lb.server_bound));
/// assert!(lb.server_bound >= lb.busiest_server.map_or(Default::default(), |s| s.1));
/// // More lanes never raise the bound.
/// assert!(plan.lower_bound(Window::Blackout, 8).bound <= lb.bound);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowerBound {
    /// Longest dependency chain.
    pub chain: Duration,
    /// The serialised server that bounds the window most (see
    /// [`LowerBound::server_bound`]), and its busy time.
    pub busiest_server: Option<(Server, Duration)>,
    /// What that server allows at best: the earliest any of its requests can be
    /// sent, its busy time, and the shortest chain of steps that must follow its
    /// last request (whichever it is).
    pub server_bound: Duration,
    /// Blocking work divided by lanes.
    pub blocking_per_lane: Duration,
    /// The largest of the three.
    pub bound: Duration,
    /// Which one it is.
    pub limiter: Limiter,
}
