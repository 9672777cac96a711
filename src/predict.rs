//! Downtime known before the window opens: a prediction of each side's blackout
//! window, from the plan, costs measured on this VM's own backends during prepare,
//! and the engine's own measured costs.
//!
//! * [`Calibration`] — what was measured before the window: each earlier window's
//!   records (every step's start and answer), a round trip per backend
//!   ([`crate::exec::StepActions::probe`]), what the actions expect of a step
//!   ([`crate::exec::StepActions::expect`]), and the engine's per-step cost and
//!   wake-up latency ([`EngineCosts::measure`]).
//! * [`Calibration::cost`] — one step's costs, and where they came from
//!   ([`CostSource`]): measured on the same device, measured on a device of the
//!   same kind, measured for a plain request on the same channel, the actions'
//!   own expectation, or (with nothing better) the plan's expected cost.
//! * [`Calibration::predict`] — the window, run in a simulation of the engine:
//!   list scheduling of the plan's steps by priority on the engine's lanes
//!   (caller-affine steps on the caller lane only), each step holding its lane for
//!   its lane time plus the engine's per-step cost, requests queueing on their
//!   server (a backend's control channel, the VM's ioeventfd list) for their
//!   service time, split-phase steps freeing their lane once sent and answering
//!   after their service, and a lane woken by an answer from another thread
//!   starting late by the engine's wake-up latency. Not a sum: a plan whose 64
//!   ring stops queue on one channel takes 64 services; 64 devices with one ring
//!   each take one.
//! * [`WindowPrediction`] — the predicted window, with the lower bound from the
//!   same measured costs ([`crate::plan::Plan::lower_bound_by`]).
//! * [`Prediction`] — one side's share of the downtime (its blackout window and
//!   its part of the hand-over), and the other side's, which the destination sends
//!   in its ready-ack ([`crate::roles::message::Message::Ready`]).
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use switchover::exec::{Completion, Engine, Progress, StepActions};
//! use switchover::ids::{Side, Window};
//! use switchover::predict::{Calibration, EngineCosts};
//! use switchover::recipe::{build, CostModel, RecipeOptions};
//! use switchover::step::{Step, StepKind};
//! use switchover::topology::{Device, Topology};
//!
//! /// Every control-channel request takes 200 µs of its backend's time.
//! struct Costs;
//! impl CostModel for Costs {
//!     fn cost(&self, _d: &Device, k: &StepKind) -> Duration {
//!         if k.is_message() { Duration::from_micros(200) } else { Duration::ZERO }
//!     }
//! }
//! struct Inline;
//! impl StepActions for Inline {
//!     fn start(&self, _s: &Step, done: Completion) {
//!         done.complete(Ok(()));
//!     }
//! }
//! let topo = Arc::new(Topology::builder().net(1, 2).build().unwrap()); // 4 rings, one channel
//! let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &Costs).unwrap();
//! let mut engine = Engine::new(1);
//! let mut progress = Progress::new(&plan);
//! let prepare = engine.run(&Arc::new(plan.clone()), Window::Prepare, Arc::new(Inline), &mut progress);
//! let mut cal = Calibration::new(EngineCosts::new(Duration::from_micros(1), Duration::from_micros(20)));
//! cal.learn(&plan, &prepare);
//! let p = cal.predict(&plan, Window::Blackout, 2, &Inline);
//! // Four ring stops queue on the one control channel: at least 4 × 200 µs.
//! assert!(p.duration >= Duration::from_micros(800));
//! assert!(p.duration >= p.lower_bound.bound);
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::exec::{Completion, Engine, Progress, RunReport, StepActions, StepOutcome};
use crate::ids::{Affinity, DeviceId, Side, StepId, Window};
use crate::plan::{BoundCost, LowerBound, Plan, PlanBuilder, StepSpec};
use crate::resource::Resource;
use crate::step::{ExecMode, Server, Step, StepKind};
use crate::topology::Topology;

pub use crate::exec::{Expected, RoundTrip};

/// The engine's own costs on this machine.
///
/// ```
/// use switchover::exec::Engine;
/// use switchover::predict::EngineCosts;
/// let c = EngineCosts::measure(&mut Engine::new(1));
/// assert!(c.per_step > std::time::Duration::ZERO);
/// assert!(c.wake > std::time::Duration::ZERO);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineCosts {
    /// What a lane spends on one step besides its action (taking it, stamping
    /// it, recording it, making its successors ready).
    pub per_step: Duration,
    /// From an answer delivered by another thread to the waiting lane starting
    /// the next step (a parked worker's start at the beginning of a run too).
    pub wake: Duration,
    /// What a run costs besides its steps: setting it up before the first step,
    /// building its report after the last.
    pub per_run: Duration,
}

impl EngineCosts {
    /// Given costs (and no cost per run).
    pub const fn new(per_step: Duration, wake: Duration) -> EngineCosts {
        EngineCosts { per_step, wake, per_run: Duration::ZERO }
    }

    /// Measures `engine` (a few milliseconds, before the window opens): the
    /// median time per step of a chain of no-op steps, and the median delay from
    /// an answer delivered by another thread to the next step's start.
    pub fn measure(engine: &mut Engine) -> EngineCosts {
        let topo = Arc::new(Topology::builder().name("calibration").net(1, 1).build().expect("a valid topology"));
        let (chain, answered) = calibration_plans(&topo);
        let inline: Arc<dyn StepActions> = Arc::new(Noop);
        let (mut per, mut fixed) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let mut p = Progress::new(&chain);
            let t = Instant::now();
            let r = engine.run(&chain, Window::Blackout, inline.clone(), &mut p);
            let e = t.elapsed().as_nanos() as u64;
            let first = r.records.iter().map(|x| x.start).min().unwrap_or_default();
            let last = r.records.iter().map(|x| x.end).max().unwrap_or_default();
            let span = last.saturating_sub(first).as_nanos() as u64;
            if r.ok() {
                per.push(span / chain.len() as u64);
                fixed.push(e.saturating_sub(span));
            }
        }
        let later: Arc<dyn StepActions> = Arc::new(Later);
        let mut wake = Vec::new();
        for _ in 0..5 {
            let mut p = Progress::new(&answered);
            let r = engine.run(&answered, Window::Blackout, later.clone(), &mut p);
            let (Some(a), Some(b)) = (r.records.iter().find(|x| x.step == StepId(0)), r.records.iter().find(|x| x.step == StepId(1)))
            else {
                continue;
            };
            if r.ok() {
                wake.push(b.start.saturating_sub(a.end).as_nanos() as u64);
            }
        }
        EngineCosts {
            per_step: Duration::from_nanos(median(&mut per).max(1)),
            wake: Duration::from_nanos(median(&mut wake).max(1)),
            per_run: Duration::from_nanos(median(&mut fixed)),
        }
    }
}

/// A chain of 256 no-op steps, and a split-phase step answered from another thread
/// followed by one more.
fn calibration_plans(topo: &Arc<Topology>) -> (Arc<Plan>, Arc<Plan>) {
    let d = DeviceId(0);
    let mut b = PlanBuilder::new(topo.clone(), Side::Source);
    let mut last = None;
    for _ in 0..256 {
        let s = StepSpec::new(d, StepKind::Custom("calibrate".into()), Window::Blackout).footprint(&[Resource::custom(Some(d), 0)]);
        last = Some(b.add(match last {
            Some(p) => s.after(&[p]),
            None => s,
        }));
    }
    let chain = Arc::new(b.build().expect("a valid plan"));
    let mut b = PlanBuilder::new(topo.clone(), Side::Source);
    let a = b.add(StepSpec::new(d, StepKind::Probe, Window::Blackout).split(Server::Channel(d)));
    b.add(StepSpec::new(d, StepKind::Custom("calibrate".into()), Window::Blackout).after(&[a]));
    (chain, Arc::new(b.build().expect("a valid plan")))
}

struct Noop;
impl StepActions for Noop {
    fn start(&self, _step: &Step, done: Completion) {
        done.complete(Ok(()));
    }
}

/// Answers split-phase steps from another thread, once the lane waits.
struct Later;
impl StepActions for Later {
    fn start(&self, step: &Step, done: Completion) {
        if step.mode == ExecMode::Split {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_micros(300));
                done.complete(Ok(()));
            });
        } else {
            done.complete(Ok(()));
        }
    }
}

fn median(v: &mut [u64]) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

fn mean(v: &[u64]) -> Option<u64> {
    (!v.is_empty()).then(|| v.iter().sum::<u64>() / v.len() as u64)
}

/// Where a step's predicted costs came from, best first.
///
/// ```
/// use switchover::predict::CostSource;
/// assert_eq!(CostSource::ALL.len(), 5);
/// assert_eq!(CostSource::Declared.name(), "declared");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CostSource {
    /// The actions' own expectation ([`crate::exec::StepActions::expect`]).
    Actions,
    /// Measured on the same device, same step kind, in an earlier window.
    Measured,
    /// Measured for the same step kind on a device of the same kind.
    MeasuredKind,
    /// A plain request (no work in the backend beyond answering) costs what
    /// plain requests measured on the same control channel cost (an earlier
    /// window's, or the probe's).
    PlainRequest,
    /// Nothing measured: the plan's expected cost.
    Declared,
}

impl CostSource {
    /// Every source, best first.
    pub const ALL: [CostSource; 5] =
        [CostSource::Actions, CostSource::Measured, CostSource::MeasuredKind, CostSource::PlainRequest, CostSource::Declared];

    /// Snake-case name.
    pub fn name(self) -> &'static str {
        match self {
            CostSource::Actions => "actions",
            CostSource::Measured => "measured",
            CostSource::MeasuredKind => "measured_kind",
            CostSource::PlainRequest => "plain_request",
            CostSource::Declared => "declared",
        }
    }
}

/// One step's predicted costs.
///
/// ```
/// use std::time::Duration;
/// use switchover::predict::{CostSource, StepCost};
/// let c = StepCost {
///     lane: Duration::from_micros(2),
///     service: Duration::from_micros(30),
///     tail: Some(Duration::from_micros(15)),
///     wake: Duration::ZERO,
///     source: CostSource::Measured,
/// };
/// assert_eq!(c.answer(), Some(Duration::from_micros(47)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepCost {
    /// How long it holds its lane (a blocking step: all of it; a split-phase
    /// step: sending it).
    pub lane: Duration,
    /// How long it keeps its server busy (its backend's control channel, the
    /// VM's ioeventfd list); a blocking step without a server: its work.
    pub service: Duration,
    /// From the end of its service to its answer (reply, reader, wake-up); `None`
    /// for a request answered as soon as it is sent.
    pub tail: Option<Duration>,
    /// A request's extra lane time when its channel is idle (the send wakes the
    /// backend).
    pub wake: Duration,
    /// Where these figures came from.
    pub source: CostSource,
}

impl StepCost {
    /// From start to answer with nothing queued before it (`None`: answered when sent).
    pub fn answer(&self) -> Option<Duration> {
        self.tail.map(|t| self.lane + self.service + t)
    }
}

/// Measured samples of one kind of step (nanoseconds).
#[derive(Debug, Clone, Default)]
struct Samples {
    /// Start to answer.
    answer: Vec<u64>,
    /// Start to answer of a request sent to an idle channel: its whole round
    /// trip, nothing queued before it.
    alone: Vec<u64>,
    /// Time its server was busy with it: a request's answer after the one before
    /// it on the same channel, when it was queued behind that one.
    service: Vec<u64>,
}

impl Samples {
    fn merge(&mut self, o: &Samples) {
        self.answer.extend_from_slice(&o.answer);
        self.alone.extend_from_slice(&o.alone);
        self.service.extend_from_slice(&o.service);
    }

    /// Service and tail (after service, until the answer) of a request, in ns:
    /// the service from requests queued in a row (else the expected cost, at
    /// most the whole round trip), the tail from requests sent alone (else the
    /// answers).
    fn request(&self, expected: u64, send: u64) -> (u64, u64) {
        let alone = match median(&mut self.alone.clone()) {
            0 => median(&mut self.answer.clone()),
            a => a,
        };
        let service = match median(&mut self.service.clone()) {
            0 => expected.min(alone),
            s => s.min(alone),
        };
        (service, alone.saturating_sub(service + send))
    }
}

/// Kinds that ask a backend for nothing but a change of its configuration and
/// an answer: one costs about what another does on the same channel.
fn plain_request(k: &StepKind) -> bool {
    matches!(
        k,
        StepKind::SetFeatures
            | StepKind::SetVringNum
            | StepKind::SetVringAddr
            | StepKind::SetVringCall
            | StepKind::SetVringBase
            | StepKind::SetVringKick
            | StepKind::VringEnable
            | StepKind::VringDisable
            | StepKind::Probe
    )
}

/// Kinds that have a reply whatever the backend negotiated (vhost-user
/// `GET_VRING_BASE`; the probe, which exists for its reply).
fn always_answered(k: &StepKind) -> bool {
    matches!(k, StepKind::GetVringBase | StepKind::Probe)
}

/// What was measured before the window opens. See the module docs.
#[derive(Debug, Clone)]
pub struct Calibration {
    engine: EngineCosts,
    /// Processors the lanes run on.
    cpus: usize,
    steps: HashMap<(DeviceId, StepKind), Samples>,
    kinds: HashMap<(String, StepKind), Samples>,
    /// Per device, plain requests: measured samples.
    plain: HashMap<DeviceId, Samples>,
    /// Per device: whether requests without a reply by protocol were answered
    /// (the backend acknowledges every request), as measured.
    acks: HashMap<DeviceId, (u32, u32)>,
    probes: HashMap<DeviceId, RoundTrip>,
    /// Time from a split-phase step's start to the next step's on its lane, as
    /// measured: sent to a channel that was busy (its backend awake), and to an
    /// idle one (the send wakes the backend).
    send: Vec<u64>,
    send_idle: Vec<u64>,
}

impl Calibration {
    /// Nothing measured yet but the engine's costs.
    pub fn new(engine: EngineCosts) -> Calibration {
        Calibration {
            engine,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            steps: HashMap::new(),
            kinds: HashMap::new(),
            plain: HashMap::new(),
            acks: HashMap::new(),
            probes: HashMap::new(),
            send: Vec::new(),
            send_idle: Vec::new(),
        }
    }

    /// Measures everything a side can before its window opens: the engine's
    /// costs, what its earlier windows' `runs` of `plan` took, and a round trip
    /// on each backend of the plan's devices.
    pub fn measure(engine: &mut Engine, plan: &Plan, runs: &[RunReport], actions: &dyn StepActions) -> Calibration {
        let mut c = Calibration::new(EngineCosts::measure(engine));
        for r in runs.iter().filter(|r| r.side == plan.side()) {
            c.learn(plan, r);
        }
        c.probe(plan, actions);
        c
    }

    /// The engine's costs.
    pub fn engine(&self) -> EngineCosts {
        self.engine
    }

    /// Sets how many processors the lanes run on (by default, this machine's).
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover::predict::{Calibration, EngineCosts};
    /// let c = Calibration::new(EngineCosts::new(Duration::ZERO, Duration::ZERO)).with_cpus(4);
    /// assert_eq!(c.cpus(), 4);
    /// ```
    pub fn with_cpus(mut self, cpus: usize) -> Calibration {
        self.cpus = cpus.max(1);
        self
    }

    /// How many processors the lanes run on.
    pub fn cpus(&self) -> usize {
        self.cpus
    }

    /// Learns what `run` (a window of `plan`) measured.
    pub fn learn(&mut self, plan: &Plan, run: &RunReport) {
        let done: Vec<_> = run.records.iter().filter(|r| r.outcome == StepOutcome::Done).collect();
        // Whether each request found its channel busy with an earlier one (sent
        // less than that one's answer, or expected cost, before).
        let mut sent: HashMap<Server, Vec<(u64, u64)>> = HashMap::new();
        for r in &done {
            let s = plan.step(r.step);
            if let (ExecMode::Split, Some(sv)) = (s.mode, s.server) {
                let start = r.start.as_nanos() as u64;
                let busy_for = (r.end.as_nanos() as u64 - start).max(s.cost.as_nanos() as u64);
                sent.entry(sv).or_default().push((start, busy_for));
            }
        }
        let mut busy_at: HashMap<(Server, u64), bool> = HashMap::new();
        for (sv, v) in sent.iter_mut() {
            v.sort_unstable();
            let mut until = 0;
            for &(start, busy_for) in v.iter() {
                busy_at.insert((*sv, start), start < until);
                until = until.max(start + busy_for);
            }
        }
        // Lane time of a split-phase step: until its lane started its next step.
        let mut by_lane: HashMap<u16, Vec<(u64, u64, StepId)>> = HashMap::new();
        for r in &done {
            by_lane.entry(r.lane).or_default().push((r.start.as_nanos() as u64, r.end.as_nanos() as u64, r.step));
        }
        for v in by_lane.values_mut() {
            v.sort_unstable();
            for w in v.windows(2) {
                // A longer gap is the lane waiting for work, not sending.
                let gap = w[1].0 - w[0].0;
                let s = plan.step(w[0].2);
                if s.mode == ExecMode::Split && gap < 50_000 {
                    let busy = s.server.and_then(|sv| busy_at.get(&(sv, w[0].0)).copied()).unwrap_or(true);
                    if busy {
                        self.send.push(gap);
                    } else {
                        self.send_idle.push(gap);
                    }
                }
            }
        }
        // Service on each control channel: a request's answer after the one
        // before it, or after its own start if the channel was idle.
        let mut by_server: HashMap<Server, Vec<(u64, u64, StepId)>> = HashMap::new();
        for r in &done {
            let s = plan.step(r.step);
            let (start, end) = (r.start.as_nanos() as u64, r.end.as_nanos() as u64);
            let mut smp = Samples { answer: vec![end - start], ..Samples::default() };
            match (s.mode, s.server) {
                (ExecMode::Split, Some(sv)) => by_server.entry(sv).or_default().push((end, start, r.step)),
                _ => smp.service.push(end - start),
            }
            self.add(plan, s, &smp);
        }
        let send = self.send_ns();
        for v in by_server.values_mut() {
            v.sort_unstable();
            let mut prev = 0;
            for &(end, start, id) in v.iter() {
                let s = plan.step(id);
                let answered = end - start > 3 * send + 5_000;
                if !always_answered(&s.kind) {
                    let e = self.acks.entry(s.device).or_default();
                    if answered {
                        e.0 += 1;
                    } else {
                        e.1 += 1;
                    }
                }
                if answered {
                    let smp = if start >= prev {
                        Samples { alone: vec![end - start], ..Samples::default() }
                    } else {
                        Samples { service: vec![end - prev], ..Samples::default() }
                    };
                    self.add(plan, s, &smp);
                }
                prev = end;
            }
        }
    }

    fn add(&mut self, plan: &Plan, s: &Step, smp: &Samples) {
        self.steps.entry((s.device, s.kind.clone())).or_default().merge(smp);
        let kind = plan.topology().device(s.device).kind.prefix().to_string();
        self.kinds.entry((kind, s.kind.clone())).or_default().merge(smp);
        if plain_request(&s.kind) && s.mode == ExecMode::Split {
            self.plain.entry(s.device).or_default().merge(smp);
        }
    }

    /// Measures a round trip on each backend of `plan`'s devices
    /// ([`crate::exec::StepActions::probe`]), every backend at once, one thread
    /// each: as the window sends to all of them at once, so that backends that
    /// share the machine's processors (with each other and with the lanes) show
    /// what that sharing costs.
    pub fn probe(&mut self, plan: &Plan, actions: &dyn StepActions) {
        let mut devices: Vec<DeviceId> = plan.steps().iter().filter(|s| s.kind.is_message()).map(|s| s.device).collect();
        devices.sort();
        devices.dedup();
        let measured: Vec<(DeviceId, Option<RoundTrip>)> = std::thread::scope(|sc| {
            let probes: Vec<_> = devices.iter().map(|&d| (d, sc.spawn(move || actions.probe(d)))).collect();
            probes.into_iter().map(|(d, h)| (d, h.join().ok().flatten())).collect()
        });
        for (d, rt) in measured {
            if let Some(rt) = rt {
                self.probes.insert(d, rt);
            }
        }
    }

    /// Adds a round trip measured on `device`'s backend.
    pub fn add_probe(&mut self, device: DeviceId, rt: RoundTrip) {
        self.probes.insert(device, rt);
    }

    /// A split-phase step's time on its lane besides the engine's per-step cost
    /// (sending it) to a busy channel: the mean time from one step's start to the
    /// next on a lane, after such a step, as measured (preemption included);
    /// with nothing measured, the engine's per-step cost.
    fn send_ns(&self) -> u64 {
        let per_step = self.engine.per_step.as_nanos() as u64;
        match mean(&self.send) {
            Some(m) => m.saturating_sub(per_step).max(1),
            None => per_step,
        }
    }

    /// What sending to an idle channel (waking its backend) costs its lane on top
    /// of [`Calibration::send_ns`], as measured.
    fn wake_send_ns(&self) -> u64 {
        let per_step = self.engine.per_step.as_nanos() as u64;
        mean(&self.send_idle).map_or(0, |m| m.saturating_sub(per_step).saturating_sub(self.send_ns()))
    }

    /// Whether `device`'s backend answers requests that have no reply by
    /// protocol, as measured (unknown: assumed so).
    fn acknowledges(&self, device: DeviceId) -> bool {
        self.acks.get(&device).map_or(true, |&(yes, no)| yes >= no)
    }

    /// The transport part of a round trip on `device`'s channel.
    fn transport(&self, device: DeviceId) -> Duration {
        if let Some(rt) = self.probes.get(&device) {
            return rt.transport();
        }
        self.engine.wake
    }

    /// `step`'s predicted costs (see [`CostSource`] for the order).
    pub fn cost(&self, plan: &Plan, step: &Step, actions: &dyn StepActions) -> StepCost {
        let send = Duration::from_nanos(self.send_ns());
        let wake = if step.mode == ExecMode::Split { Duration::from_nanos(self.wake_send_ns()) } else { Duration::ZERO };
        let split = step.mode == ExecMode::Split;
        let blocking = |d: Duration, source| StepCost { lane: d, service: d, tail: Some(Duration::ZERO), wake, source };
        if let Some(e) = actions.expect(step) {
            if !split {
                return blocking(e.answer.unwrap_or(e.service).max(e.service), CostSource::Actions);
            }
            let tail = e.answer.map(|a| a.saturating_sub(send + e.service));
            return StepCost { lane: send, service: e.service, tail, wake, source: CostSource::Actions };
        }
        let kind = plan.topology().device(step.device).kind.prefix().to_string();
        let measured = [
            (self.steps.get(&(step.device, step.kind.clone())), CostSource::Measured),
            (self.kinds.get(&(kind, step.kind.clone())), CostSource::MeasuredKind),
        ];
        for (smp, source) in measured {
            let Some(smp) = smp.filter(|s| !s.answer.is_empty()) else { continue };
            let answer = median(&mut smp.answer.clone());
            if !split {
                return blocking(Duration::from_nanos(answer), source);
            }
            let answered = answer > 3 * send.as_nanos() as u64 + 5_000;
            if !answered {
                // Answered when sent: its backend time is not in the records.
                return StepCost { lane: send, service: step.cost, tail: None, wake, source };
            }
            let (service, tail) = smp.request(step.cost.as_nanos() as u64, send.as_nanos() as u64);
            return StepCost { lane: send, service: Duration::from_nanos(service), tail: Some(Duration::from_nanos(tail)), wake, source };
        }
        if !split {
            return blocking(step.cost, CostSource::Declared);
        }
        let answered = always_answered(&step.kind) || self.acknowledges(step.device);
        if plain_request(&step.kind) {
            // A plain request costs what plain requests cost on this channel:
            // measured in an earlier window, else by the probe.
            if let Some(mine) = self.plain.get(&step.device).filter(|s| !s.alone.is_empty() || !s.service.is_empty()) {
                let (service, tail) = mine.request(step.cost.as_nanos() as u64, send.as_nanos() as u64);
                let tail = answered.then(|| Duration::from_nanos(tail));
                return StepCost { lane: send, service: Duration::from_nanos(service), tail, wake, source: CostSource::PlainRequest };
            }
            if let Some(rt) = self.probes.get(&step.device) {
                let tail = answered.then(|| rt.transport());
                return StepCost { lane: send, service: rt.per_request, tail, wake, source: CostSource::PlainRequest };
            }
        }
        let tail = answered.then(|| self.transport(step.device));
        // No request keeps its backend busy for less than a plain one measured
        // on the same channel.
        let floor = self.probes.get(&step.device).map_or(Duration::ZERO, |rt| rt.per_request);
        StepCost { lane: send, service: step.cost.max(floor), tail, wake, source: CostSource::Declared }
    }

    /// Predicts window `w` of `plan` run by an engine of `lanes` lanes (workers
    /// plus the caller), with these costs. Assumes the window's first attempt
    /// (every earlier window done).
    pub fn predict(&self, plan: &Plan, w: Window, lanes: usize, actions: &dyn StepActions) -> WindowPrediction {
        let made_at = Instant::now();
        let costs: Vec<Option<StepCost>> = plan.steps().iter().map(|s| (s.window == w).then(|| self.cost(plan, s, actions))).collect();
        let mut sources = HashMap::new();
        for c in costs.iter().flatten() {
            *sources.entry(c.source).or_insert(0usize) += 1;
        }
        let duration = simulate(plan, w, lanes.max(1), self.cpus, &costs, self.engine);
        let lower_bound = plan.lower_bound_by(w, lanes, |s| match costs[s.id.0 as usize] {
            Some(c) => BoundCost {
                answer: c.answer().unwrap_or(c.lane),
                server: if s.mode == ExecMode::Split { c.service } else { c.lane },
                lane: if s.mode == ExecMode::Split { Duration::ZERO } else { c.lane },
            },
            None => BoundCost::default(),
        });
        WindowPrediction {
            side: plan.side(),
            window: w,
            lanes,
            steps: plan.window_steps(w).len(),
            duration,
            lower_bound,
            sources: CostSource::ALL.iter().map(|s| (*s, sources.get(s).copied().unwrap_or(0))).collect(),
            engine: self.engine,
            made_at,
        }
    }
}

/// A predicted window.
#[derive(Debug, Clone)]
pub struct WindowPrediction {
    /// The plan's side.
    pub side: Side,
    /// The window.
    pub window: Window,
    /// The engine's lanes (workers plus the caller).
    pub lanes: usize,
    /// The window's steps.
    pub steps: usize,
    /// The predicted duration (a simulation of the engine running it).
    pub duration: Duration,
    /// The lower bound from the same costs ([`crate::plan::Plan::lower_bound_by`]).
    pub lower_bound: LowerBound,
    /// How many steps' costs came from each source.
    pub sources: Vec<(CostSource, usize)>,
    /// The engine's costs used.
    pub engine: EngineCosts,
    /// When it was made.
    pub made_at: Instant,
}

/// One side's share of the downtime, predicted before the window opens: its
/// blackout window and its part of the hand-over; on the source, the
/// destination's estimate of its own share beside it.
///
/// ```
/// use std::time::{Duration, Instant};
/// use switchover::predict::{EngineCosts, Prediction, WindowPrediction};
/// use switchover::ids::{Side, Window};
/// use switchover::plan::{Limiter, LowerBound};
/// let lb = LowerBound { chain: Duration::ZERO, busiest_server: None, server_bound: Duration::ZERO, blocking_per_lane: Duration::ZERO, bound: Duration::from_millis(3), limiter: Limiter::Chain };
/// let window = WindowPrediction {
///     side: Side::Source, window: Window::Blackout, lanes: 2, steps: 10, duration: Duration::from_millis(4),
///     lower_bound: lb, sources: vec![], engine: EngineCosts::new(Duration::ZERO, Duration::ZERO), made_at: Instant::now(),
/// };
/// let p = Prediction { window, handoff: Duration::from_millis(1), other: Some(Duration::from_millis(5)), made_at: Instant::now() };
/// assert_eq!(p.this_side(), Duration::from_millis(5));
/// assert_eq!(p.downtime(), Some(Duration::from_millis(10)));
/// ```
#[derive(Debug, Clone)]
pub struct Prediction {
    /// This side's blackout window.
    pub window: WindowPrediction,
    /// This side's part of the hand-over besides its window: the VMM's hooks,
    /// the state's encoding, waking up for the other side's message.
    pub handoff: Duration,
    /// The other side's share as it estimated it (the source: the destination's,
    /// from its ready-ack).
    pub other: Option<Duration>,
    /// When it was made (before the window opened).
    pub made_at: Instant,
}

impl Prediction {
    /// This side's share: its window and its part of the hand-over.
    pub fn this_side(&self) -> Duration {
        self.window.duration + self.handoff
    }
    /// The predicted downtime: both sides' shares (the source's view, once the
    /// destination's estimate arrived).
    pub fn downtime(&self) -> Option<Duration> {
        self.other.map(|o| self.this_side() + o)
    }
    /// This side's lower bound, from the same measured costs.
    pub fn lower_bound(&self) -> Duration {
        self.window.lower_bound.bound
    }
}

/// A list-scheduling simulation of the engine running window `w` (see the module
/// docs); returns its predicted duration.
fn simulate(plan: &Plan, w: Window, lanes: usize, cpus: usize, costs: &[Option<StepCost>], engine: EngineCosts) -> Duration {
    let n = plan.len();
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 4);
    let per_step = ns(engine.per_step);
    let wake = ns(engine.wake);
    let mut gate: Vec<u32> = (0..n).map(|i| plan.window_preds(StepId(i as u32))).collect();
    // Steps ready at a time (possibly later than now), and ready now, by rank.
    let mut pending: BinaryHeap<Reverse<(u64, u32)>> = BinaryHeap::new();
    let mut ready_any: BinaryHeap<Reverse<u32>> = BinaryHeap::new();
    let mut ready_caller: BinaryHeap<Reverse<u32>> = BinaryHeap::new();
    for &id in plan.window_steps(w) {
        if gate[id.0 as usize] == 0 {
            pending.push(Reverse((0, plan.rank(id))));
        }
    }
    // Workers wait parked for the run: they start once woken.
    let mut lane_free: Vec<u64> = (0..lanes).map(|l| if l == 0 { 0 } else { wake }).collect();
    // The lanes' own work (the engine's per-step cost, sending, blocking actions)
    // runs on the machine's processors: no more of it at once than there are.
    let cpus = cpus.clamp(1, lanes);
    let mut cpu_free = vec![0u64; cpus];
    let mut servers: HashMap<Server, u64> = HashMap::new();
    // Answers: (time, step, whether it came from another thread).
    let mut answers: BinaryHeap<Reverse<(u64, u32, bool)>> = BinaryHeap::new();
    let mut now = 0u64;
    let mut end = 0u64;
    loop {
        while let Some(&Reverse((t, r))) = pending.peek() {
            if t > now {
                break;
            }
            pending.pop();
            let s = plan.step(plan.at_rank(r));
            if s.affinity == Affinity::Caller {
                ready_caller.push(Reverse(r));
            } else {
                ready_any.push(Reverse(r));
            }
        }
        // Start what can start now, on free lanes (the caller lane takes its own
        // steps first).
        for (l, free) in lane_free.iter_mut().enumerate() {
            while *free <= now {
                let pick = if l == 0 { ready_caller.pop().or_else(|| ready_any.pop()) } else { ready_any.pop() };
                let Some(Reverse(r)) = pick else { break };
                let s = plan.step(plan.at_rank(r));
                let c = costs[s.id.0 as usize].unwrap_or(StepCost {
                    lane: Duration::ZERO,
                    service: Duration::ZERO,
                    tail: Some(Duration::ZERO),
                    wake: Duration::ZERO,
                    source: CostSource::Declared,
                });
                // The processor that frees first.
                let cpu = (0..cpus).min_by_key(|&k| cpu_free[k]).unwrap_or(0);
                let t0 = now.max(*free).max(cpu_free[cpu]) + per_step;
                let (lane_end, answer, remote) = match (s.mode, s.server) {
                    (ExecMode::Blocking, None) => {
                        let e = t0 + ns(c.lane);
                        (e, e, false)
                    }
                    (ExecMode::Blocking, Some(sv)) => {
                        let srv = servers.entry(sv).or_insert(0);
                        let e = t0.max(*srv) + ns(c.service);
                        *srv = e;
                        (e, e, false)
                    }
                    (ExecMode::Split, server) => {
                        let idle = server.map_or(true, |sv| servers.get(&sv).map_or(true, |&f| f <= t0));
                        let sent = t0 + ns(c.lane) + if idle { ns(c.wake) } else { 0 };
                        let served = match server {
                            Some(sv) => {
                                let srv = servers.entry(sv).or_insert(0);
                                *srv = sent.max(*srv) + ns(c.service);
                                *srv
                            }
                            None => sent + ns(c.service),
                        };
                        match c.tail {
                            Some(t) => (sent, served + ns(t), true),
                            None => (sent, sent, false),
                        }
                    }
                };
                *free = lane_end;
                cpu_free[cpu] = match (s.mode, s.server) {
                    // Waiting for the server is not work for the processor.
                    (ExecMode::Blocking, Some(_)) => t0 + ns(c.service),
                    _ => lane_end,
                };
                answers.push(Reverse((answer, s.id.0, remote)));
            }
        }
        // The next event: an answer, a step becoming ready, a lane becoming free.
        let next_answer = answers.peek().map(|Reverse((t, _, _))| *t);
        let next_ready = pending.peek().map(|Reverse((t, _))| *t);
        let has_ready = !ready_any.is_empty() || !ready_caller.is_empty();
        let next_free = if has_ready { lane_free.iter().copied().filter(|&f| f > now).min() } else { None };
        let Some(next) = [next_answer, next_ready, next_free].into_iter().flatten().min() else { break };
        now = next.max(now);
        while let Some(&Reverse((t, id, remote))) = answers.peek() {
            if t > now {
                break;
            }
            answers.pop();
            end = end.max(t);
            for s in plan.succs(StepId(id)) {
                let si = s.0 as usize;
                if plan.step(*s).window != w {
                    continue;
                }
                gate[si] -= 1;
                if gate[si] == 0 {
                    let at = if remote { t + wake } else { t };
                    pending.push(Reverse((at, plan.rank(*s))));
                }
            }
        }
    }
    Duration::from_nanos(end) + engine.per_run
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::{build, CostModel, RecipeOptions};
    use crate::topology::Device;

    struct Inline;
    impl StepActions for Inline {
        fn start(&self, _s: &Step, done: Completion) {
            done.complete(Ok(()));
        }
    }

    struct Msg(u64);
    impl CostModel for Msg {
        fn cost(&self, _d: &Device, k: &StepKind) -> Duration {
            if k.is_message() {
                Duration::from_micros(self.0)
            } else {
                Duration::ZERO
            }
        }
    }

    fn costs() -> Calibration {
        Calibration::new(EngineCosts::new(Duration::from_nanos(100), Duration::from_micros(10))).with_cpus(8)
    }

    #[test]
    fn requests_on_one_channel_queue_and_channels_overlap() {
        // One net with 8 rings: 8 ring stops on one channel.
        let one = Arc::new(Topology::builder().net(1, 4).build().unwrap());
        // Eight nets with one ring pair each: 2 ring stops per channel.
        let eight = Arc::new(Topology::builder().net(4, 1).build().unwrap());
        let p1 = build(&one, Side::Source, &RecipeOptions::engine(), &Msg(100)).unwrap();
        let p8 = build(&eight, Side::Source, &RecipeOptions::engine(), &Msg(100)).unwrap();
        let c = costs();
        let d1 = c.predict(&p1, Window::Blackout, 2, &Inline).duration;
        let d8 = c.predict(&p8, Window::Blackout, 2, &Inline).duration;
        assert!(d1 >= Duration::from_micros(800), "{d1:?}");
        assert!(d8 < Duration::from_micros(400), "{d8:?}");
        // Not a sum: the same eight requests, spread over four channels, take a
        // quarter as long.
        assert!(d8 * 3 < d1);
    }

    #[test]
    fn lanes_limit_blocking_work() {
        struct Notifiers;
        impl CostModel for Notifiers {
            fn cost(&self, _d: &Device, k: &StepKind) -> Duration {
                if k.is_notifier() {
                    Duration::from_micros(50)
                } else {
                    Duration::ZERO
                }
            }
        }
        let t = Arc::new(Topology::builder().net(4, 2).build().unwrap()); // 16 rings
        let p = build(&t, Side::Destination, &RecipeOptions::engine(), &Notifiers).unwrap();
        let c = costs();
        // 32 notifier changes of 50 µs in prepare.
        let one = c.predict(&p, Window::Prepare, 1, &Inline).duration;
        let four = c.predict(&p, Window::Prepare, 4, &Inline).duration;
        assert!(one >= Duration::from_micros(1600));
        assert!(four < one / 3, "{four:?} vs {one:?}");
        assert!(four >= Duration::from_micros(400));
        // Four lanes on two processors: blocking work on the lanes is processor
        // work, two at a time.
        let two_cpus = c.clone().with_cpus(2).predict(&p, Window::Prepare, 4, &Inline).duration;
        assert!(two_cpus >= Duration::from_micros(800), "{two_cpus:?}");
    }

    #[test]
    fn measured_costs_replace_declared_ones() {
        let t = Arc::new(Topology::builder().net(1, 1).build().unwrap());
        let plan = build(&t, Side::Destination, &RecipeOptions::engine(), &Msg(1000)).unwrap();
        // Prepare's plain requests answered in 30 µs: so do the window's.
        let mut c = costs();
        let run = synthetic_run(&plan, Window::Prepare, Duration::from_micros(30));
        c.learn(&plan, &run);
        let base = plan.steps().iter().find(|s| s.kind == StepKind::SetVringBase).unwrap();
        let cost = c.cost(&plan, base, &Inline);
        assert_eq!(cost.source, CostSource::PlainRequest);
        assert!(cost.answer().unwrap() < Duration::from_micros(100), "{cost:?}");
        // Nothing measured for it: the plan's 1 ms.
        let fresh = costs().cost(&plan, base, &Inline);
        assert_eq!((fresh.source, fresh.service), (CostSource::Declared, Duration::from_millis(1)));
    }

    #[test]
    fn the_actions_expectation_comes_first() {
        struct Knows;
        impl StepActions for Knows {
            fn start(&self, _s: &Step, done: Completion) {
                done.complete(Ok(()));
            }
            fn expect(&self, _s: &Step) -> Option<Expected> {
                Some(Expected::unanswered(Duration::from_micros(7)))
            }
        }
        let t = Arc::new(Topology::builder().net(1, 1).build().unwrap());
        let plan = build(&t, Side::Destination, &RecipeOptions::engine(), &Msg(1000)).unwrap();
        let kick = plan.steps().iter().find(|s| s.kind == StepKind::SetVringKick).unwrap();
        let c = costs().cost(&plan, kick, &Knows);
        assert_eq!((c.source, c.service, c.tail), (CostSource::Actions, Duration::from_micros(7), None));
    }

    #[test]
    fn backends_are_probed_at_once_and_a_request_costs_at_least_a_plain_one() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        /// A probe that takes 30 ms, counting how many run at once.
        #[derive(Default)]
        struct Slow {
            now: AtomicUsize,
            most: AtomicUsize,
        }
        impl StepActions for Slow {
            fn start(&self, _s: &Step, done: Completion) {
                done.complete(Ok(()));
            }
            fn probe(&self, _d: DeviceId) -> Option<RoundTrip> {
                let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
                self.most.fetch_max(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(30));
                self.now.fetch_sub(1, Ordering::SeqCst);
                Some(RoundTrip { alone: Duration::from_micros(400), per_request: Duration::from_micros(300) })
            }
        }
        let t = Arc::new(Topology::builder().net(4, 1).build().unwrap());
        let plan = build(&t, Side::Source, &RecipeOptions::engine(), &Msg(50)).unwrap();
        let slow = Slow::default();
        let mut c = costs();
        c.probe(&plan, &slow);
        // The window sends to every backend at once: so does the probe.
        assert!(slow.most.load(Ordering::SeqCst) > 1);
        // A GET_VRING_BASE declared at 50 µs keeps its backend busy at least as
        // long as the 300 µs plain request measured on its channel.
        let get = plan.steps().iter().find(|s| s.kind == StepKind::GetVringBase).unwrap();
        let cost = c.cost(&plan, get, &Inline);
        assert_eq!(
            (cost.source, cost.service, cost.tail),
            (CostSource::Declared, Duration::from_micros(300), Some(Duration::from_micros(100)))
        );
        // Without the probe: the plan's 50 µs.
        assert_eq!(costs().cost(&plan, get, &Inline).service, Duration::from_micros(50));
    }

    /// A run of window `w` where one lane started a step every microsecond and
    /// each answered `each` after it started.
    fn synthetic_run(plan: &Plan, w: Window, each: Duration) -> RunReport {
        let mut t = Duration::ZERO;
        let records = plan
            .window_steps(w)
            .iter()
            .map(|&id| {
                let r = crate::exec::StepRecord { step: id, outcome: StepOutcome::Done, lane: 0, start: t, end: t + each };
                t += Duration::from_micros(1);
                r
            })
            .collect();
        RunReport { side: plan.side(), window: w, started_at: Instant::now(), wall: t, lanes: 1, records, failure: None, failures: vec![] }
    }
}
