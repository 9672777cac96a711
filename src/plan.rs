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
//! use switchover::step::{Side, StepKind, Window};
//! use switchover::topology::{DeviceId, Topology};
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

use crate::lock_order::ResourceKind;
use crate::resource::{Resource, ResourceId};
use crate::step::{Affinity, ExecMode, Server, Side, Step, StepId, StepKind, Window};
use crate::topology::{DeviceId, Topology};

/// Default per-step deadline.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// Everything needed to add one step to a [`PlanBuilder`].
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
    pub fn ring(mut self, r: u32) -> Self {
        self.ring = Some(r);
        self
    }
    /// Sets the affinity.
    pub fn affinity(mut self, a: Affinity) -> Self {
        self.affinity = a;
        self
    }
    /// Makes it split-phase, served by `server`.
    pub fn split(mut self, server: Server) -> Self {
        self.mode = ExecMode::Split;
        self.server = Some(server);
        self
    }
    /// Blocking work that is serialised on `server` (e.g. a VM's ioeventfd lock).
    pub fn serialised_on(mut self, server: Server) -> Self {
        self.server = Some(server);
        self
    }
    /// Sets the expected cost.
    pub fn cost(mut self, c: Duration) -> Self {
        self.cost = c;
        self
    }
    /// Sets the deadline.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = d;
        self
    }
    /// Sets the footprint.
    pub fn footprint(mut self, f: &[Resource]) -> Self {
        self.footprint = f.to_vec();
        self
    }
    /// Adds predecessors.
    pub fn after(mut self, p: &[StepId]) -> Self {
        self.after.extend_from_slice(p);
        self
    }
}

/// A plan that cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A step runs in an earlier window than one of its predecessors.
    #[error("{device} {step}: runs in {window} but its predecessor {pred} runs later, in {pred_window}")]
    WindowOrder {
        /// Device name.
        device: String,
        /// Step kind name.
        step: String,
        /// Its window.
        window: &'static str,
        /// The predecessor's kind name.
        pred: String,
        /// The predecessor's window.
        pred_window: &'static str,
    },
    /// A step that is not caller-affine touches a caller-only resource.
    #[error("{device} {step}: touches {resource}, which only the caller lane may hold; make it caller-affine")]
    CallerOnly {
        /// Device name.
        device: String,
        /// Step kind name.
        step: String,
        /// The resource.
        resource: String,
    },
    /// A caller-affine step is split-phase.
    #[error("{device} {step}: caller-affine steps must be blocking")]
    CallerSplit {
        /// Device name.
        device: String,
        /// Step kind name.
        step: String,
    },
    /// A predecessor id that does not exist yet.
    #[error("{device} {step}: predecessor {pred} is not an earlier step")]
    BadPred {
        /// Device name.
        device: String,
        /// Step kind name.
        step: String,
        /// The bad id.
        pred: u32,
    },
}

/// Adds steps one by one; ids are assigned in order, and predecessors must already
/// exist, so every plan is acyclic by construction.
#[derive(Debug)]
pub struct PlanBuilder {
    topology: Arc<Topology>,
    side: Side,
    specs: Vec<StepSpec>,
}

impl PlanBuilder {
    /// An empty plan for `side` of `topology`.
    pub fn new(topology: Arc<Topology>, side: Side) -> Self {
        PlanBuilder { topology, side, specs: Vec::new() }
    }

    /// Adds a step; returns its id.
    pub fn add(&mut self, spec: StepSpec) -> StepId {
        self.specs.push(spec);
        StepId(self.specs.len() as u32 - 1)
    }

    /// Number of steps so far.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// Whether no step was added.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Validates, interns footprints, computes successors and priorities.
    ///
    /// # Errors
    /// [`PlanError`] naming the device and step that break a rule.
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
            let dname = || topo.device(s.device).name.clone();
            let mut p: Vec<u32> = s.after.iter().map(|x| x.0).collect();
            p.sort_unstable();
            p.dedup();
            for &q in &p {
                if q as usize >= i {
                    return Err(PlanError::BadPred { device: dname(), step: s.kind.name().into(), pred: q });
                }
                let pw = self.specs[q as usize].window;
                if pw > s.window {
                    return Err(PlanError::WindowOrder {
                        device: dname(),
                        step: s.kind.name().into(),
                        window: s.window.name(),
                        pred: self.specs[q as usize].kind.name().into(),
                        pred_window: pw.name(),
                    });
                }
            }
            if s.affinity == Affinity::Caller && s.mode == ExecMode::Split {
                return Err(PlanError::CallerSplit { device: dname(), step: s.kind.name().into() });
            }
            let mut f: Vec<u32> = Vec::with_capacity(s.footprint.len());
            for r in &s.footprint {
                if r.kind.caller_only() && s.affinity != Affinity::Caller {
                    return Err(PlanError::CallerOnly { device: dname(), step: s.kind.name().into(), resource: r.to_string() });
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
        Ok(Plan { topology: topo, side: self.side, steps, preds, succs, footprint, resources, priority, rank, by_rank })
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

/// A validated DAG of steps for one side.
#[derive(Debug, Clone)]
pub struct Plan {
    topology: Arc<Topology>,
    side: Side,
    steps: Vec<Step>,
    preds: Csr,
    succs: Csr,
    footprint: Csr,
    resources: Vec<Resource>,
    priority: Vec<u64>,
    rank: Vec<u32>,
    by_rank: Vec<u32>,
}

fn ids(l: &[u32]) -> &[StepId] {
    // SAFETY: StepId is a #[repr(transparent)]-equivalent newtype of u32 with no
    // invariants; a slice of u32 has the same layout as a slice of StepId.
    unsafe { std::slice::from_raw_parts(l.as_ptr().cast::<StepId>(), l.len()) }
}

impl Plan {
    /// The topology it was built for.
    pub fn topology(&self) -> &Arc<Topology> {
        &self.topology
    }
    /// Which side runs it.
    pub fn side(&self) -> Side {
        self.side
    }
    /// All steps, in id order (a topological order).
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }
    /// One step.
    pub fn step(&self, id: StepId) -> &Step {
        &self.steps[id.0 as usize]
    }
    /// Number of steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }
    /// Whether the plan has no steps.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
    /// Predecessors of a step.
    pub fn preds(&self, id: StepId) -> &[StepId] {
        ids(self.preds.get(id.0 as usize))
    }
    /// Successors of a step.
    pub fn succs(&self, id: StepId) -> &[StepId] {
        ids(self.succs.get(id.0 as usize))
    }
    /// Dense resource ids of a step's footprint, in lock order.
    pub fn footprint_ids(&self, id: StepId) -> &[u32] {
        self.footprint.get(id.0 as usize)
    }
    /// A step's footprint as resources.
    pub fn footprint(&self, id: StepId) -> impl Iterator<Item = Resource> + '_ {
        self.footprint_ids(id).iter().map(|&r| self.resources[r as usize])
    }
    /// Number of distinct resources.
    pub fn resource_count(&self) -> usize {
        self.resources.len()
    }
    /// A resource by dense id.
    pub fn resource(&self, id: ResourceId) -> Resource {
        self.resources[id.0 as usize]
    }
    /// Longest remaining path from this step, in nanoseconds of expected cost.
    pub fn priority(&self, id: StepId) -> u64 {
        self.priority[id.0 as usize]
    }
    /// A step's rank: 0 is the most urgent (longest remaining path, then lowest id).
    pub fn rank(&self, id: StepId) -> u32 {
        self.rank[id.0 as usize]
    }
    /// The step of a rank.
    pub fn at_rank(&self, rank: u32) -> StepId {
        StepId(self.by_rank[rank as usize])
    }
    /// Whether two steps may not run at the same time (footprints intersect).
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
    pub fn device_name(&self, id: StepId) -> &str {
        &self.topology.device(self.step(id).device).name
    }
    /// Steps of one window.
    pub fn in_window(&self, w: Window) -> impl Iterator<Item = &Step> + '_ {
        self.steps.iter().filter(move |s| s.window == w)
    }
    /// Whether any step of the plan touches a resource of `kind`.
    pub fn uses(&self, kind: ResourceKind) -> bool {
        self.resources.iter().any(|r| r.kind == kind)
    }

    /// The lower bound on running the steps of window `w` with `lanes` lanes
    /// (workers plus the caller), from expected costs: the largest of the longest
    /// dependency chain, each serialised server's busy time, and the lanes' blocking
    /// work divided by the number of lanes.
    ///
    /// ```
    /// use switchover::recipe::{build, RecipeOptions};
    /// use switchover::sim::Profile;
    /// use switchover::step::{Side, Window};
    /// use switchover::topology::Topology;
    /// let t = std::sync::Arc::new(Topology::preset("rfc-huge").unwrap());
    /// let p = build(&t, Side::Source, &RecipeOptions::engine(), &Profile::rfc_original(1.0)).unwrap();
    /// let lb = p.lower_bound(Window::Blackout, 9);
    /// assert!(lb.bound >= lb.chain);
    /// ```
    pub fn lower_bound(&self, w: Window, lanes: usize) -> LowerBound {
        let mut finish = vec![0u64; self.steps.len()];
        let mut chain = 0u64;
        let mut servers: Vec<(Server, u64)> = Vec::new();
        let mut blocking = 0u64;
        for s in &self.steps {
            if s.window != w {
                continue;
            }
            let c = s.cost.as_nanos() as u64;
            let start = self.preds(s.id).iter().map(|p| finish[p.0 as usize]).max().unwrap_or(0);
            finish[s.id.0 as usize] = start + c;
            chain = chain.max(start + c);
            if let Some(sv) = s.server {
                match servers.iter_mut().find(|(x, _)| *x == sv) {
                    Some(e) => e.1 += c,
                    None => servers.push((sv, c)),
                }
            }
            if s.mode == ExecMode::Blocking {
                blocking += c;
            }
        }
        servers.sort_by_key(|x| std::cmp::Reverse(x.1));
        let lanes = lanes.max(1) as u64;
        let per_lane = blocking / lanes;
        let busiest = servers.first().map(|x| x.1).unwrap_or(0);
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
            busiest_server: servers.first().map(|&(s, c)| (s, Duration::from_nanos(c))),
            blocking_per_lane: Duration::from_nanos(per_lane),
            bound: Duration::from_nanos(bound),
            limiter,
        }
    }
}

/// What limits a window's duration at best.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LowerBound {
    /// Longest dependency chain.
    pub chain: Duration,
    /// The busiest serialised server and its busy time.
    pub busiest_server: Option<(Server, Duration)>,
    /// Blocking work divided by lanes.
    pub blocking_per_lane: Duration,
    /// The largest of the three.
    pub bound: Duration,
    /// Which one it is.
    pub limiter: Limiter,
}
