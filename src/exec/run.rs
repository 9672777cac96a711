//! One window's run, as the lanes share it.
//!
//! * [`RunData`] — what every lane reads without a lock: the plan, each step's
//!   gate (how many of its predecessors must still end in this run) and the
//!   countdowns of steps that wait for more than one.
//! * [`Inner`] / [`RunInner`] — what lanes and completers share under the engine's
//!   one mutex, on the slow paths only: the shared ready pool, the caller's inbox,
//!   split-phase steps in flight (and answers that came before their lane
//!   registered them), contended footprints, failures, the watchdog, and which
//!   workers are parked, running or stuck.
//! * [`Hints`] — one atomic word the lanes read once per step: the shared pool's
//!   most urgent rank, how many workers wait for work, whether the run stops,
//!   whether the caller's inbox has steps.
//!
//! Readiness: a step whose gate is 1 becomes ready when its one remaining
//! predecessor ends (no atomic operation: that predecessor ends exactly once); a
//! step waiting for more counts down an atomic, and the predecessor that takes it
//! to zero makes it ready. A ready step sits in exactly one place at a time — a
//! lane's local set, the shared pool, the caller's inbox, or parked on a busy
//! resource — so it starts at most once.

use std::collections::VecDeque;
use std::sync::Arc as StdArc;

use super::clock::{Clock, Stamp};
use super::controls::Controls;
use super::ready::ReadySet;
use super::{FailurePolicy, Lane, Progress, StepActions, StepOutcome};
use crate::error::StepFailure;
use crate::ids::{StepId, Window};
use crate::plan::{pack_info, Plan, EXEC_CALLER, EXEC_CONTENDED, EXEC_JOINS, GATE_OUTSIDE};
use crate::sync::{AtomicU32, AtomicU8, Ordering};

/// How a started step ended, in a record.
pub(crate) const DONE: u8 = 1;
pub(crate) const FAILED: u8 = 2;
pub(crate) const TIMED_OUT: u8 = 3;

/// How an answer ends its step, as a record's code: an action that reports its
/// own time-out timed out.
pub(crate) fn code_of(r: &Result<(), StepFailure>) -> u8 {
    match r {
        Ok(()) => DONE,
        Err(StepFailure::Timeout { .. }) => TIMED_OUT,
        Err(_) => FAILED,
    }
}

/// One started step: its lane, and start and end in clock units.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rec {
    pub step: u32,
    pub lane: Lane,
    pub outcome: u8,
    pub start: Stamp,
    pub end: Stamp,
}

/// The hint word's fields.
pub(crate) struct Hints;

impl Hints {
    /// The shared pool's most urgent rank (`u32::MAX`: empty).
    pub(crate) const BEST: u64 = 0xffff_ffff;
    pub(crate) const IDLE_SHIFT: u32 = 32;
    pub(crate) const IDLE: u64 = 0xffff << 32;
    pub(crate) const STOPPING: u64 = 1 << 48;
    pub(crate) const INBOX: u64 = 1 << 49;
    /// No run: nothing to take, nobody to share with.
    pub(crate) const NONE: u64 = Hints::BEST;

    #[inline]
    pub(crate) fn best(h: u64) -> u32 {
        (h & Hints::BEST) as u32
    }
    #[inline]
    pub(crate) fn idle(h: u64) -> bool {
        h & Hints::IDLE != 0
    }
}

/// What the lanes read without a lock.
pub(crate) struct RunData {
    pub epoch: u64,
    pub plan: StdArc<Plan>,
    pub actions: StdArc<dyn StepActions>,
    pub window: Window,
    pub policy: FailurePolicy,
    pub clock: Clock,
    pub lanes: usize,
    /// Per step: its rank (low 32 bits), gate (24 bits: [`OUTSIDE`]; 0, ready
    /// when the run starts; 1, ready when its one remaining predecessor ends; or
    /// `2 + k`, counted down in `counts[k]`) and flags (high 8 bits:
    /// [`CALLER_AFFINE`], [`CONTENDED`]) — one read per successor.
    pub info: Vec<u64>,
    /// Countdowns of the steps that wait for more than one predecessor.
    pub counts: Vec<AtomicU32>,
    /// The window's shortest step deadline, in clock units.
    pub min_deadline: u64,
    /// Whether any step of the run locks part of its footprint at run time.
    pub contended: bool,
    /// 1 while the caller lane is inside a caller-affine step (or about to start
    /// one when the run opens): it takes no pool steps until that step ends, so
    /// the other lanes share the pool without it. A hint only (relaxed).
    pub caller_busy: AtomicU8,
    /// Mechanisms removed for a negative-control test (none in a VMM's build).
    pub controls: Controls,
}

/// A step outside this run (another window's, or blocked by an earlier
/// window's failure, or done already).
pub(crate) const OUTSIDE: u32 = GATE_OUTSIDE;
/// [`RunData::flags`]: the step runs on the caller lane only.
pub(crate) const CALLER_AFFINE: u8 = EXEC_CALLER;
/// [`RunData::flags`]: part of the step's footprint is locked at run time.
pub(crate) const CONTENDED: u8 = EXEC_CONTENDED;
/// [`RunData::flags`]: another lane may start a successor of the step (it joins
/// with another predecessor): its end is stamped as it ends.
pub(crate) const JOINS: u8 = EXEC_JOINS;

/// How a run's steps become ready: see the fields of the same names in
/// [`RunData`]; `any` and `caller` are the ranks ready at once.
struct Gates {
    info: Vec<u64>,
    counts: Vec<AtomicU32>,
    any: Vec<u32>,
    caller: Vec<u32>,
    contended: bool,
}

impl RunData {
    /// Sets up the window's steps; steps whose earlier-window predecessors did not
    /// finish stay out of the run (they end as not run). Returns the data and the
    /// ranks of the steps ready at once (any-lane, caller-affine).
    pub(crate) fn new(
        epoch: u64,
        plan: StdArc<Plan>,
        actions: StdArc<dyn StepActions>,
        window: Window,
        policy: FailurePolicy,
        lanes: usize,
        progress: &Progress,
    ) -> (RunData, Vec<u32>, Vec<u32>) {
        let clock = Clock::start();
        // The first attempt at a window whose earlier windows all ran: every step
        // waits for exactly its predecessors in the window, as the plan worked out
        // when it was built.
        let fresh = progress.done_in[window as usize] == 0
            && Window::ALL.iter().filter(|w| **w < window).all(|w| progress.done_in[*w as usize] == plan.window_steps(*w).len());
        let min_deadline = clock.ticks(plan.min_deadline(window));
        let Gates { info, counts, any, caller, contended } = if fresh {
            let st = plan.window_start(window);
            Gates {
                info: st.info.clone(),
                counts: st.counts.iter().map(|&c| AtomicU32::new(c)).collect(),
                any: st.ready_any.clone(),
                caller: st.ready_caller.clone(),
                contended: st.contended,
            }
        } else {
            Self::resumed(&plan, window, progress)
        };
        let data = RunData {
            epoch,
            plan,
            actions,
            window,
            policy,
            clock,
            lanes,
            info,
            counts,
            min_deadline,
            contended,
            caller_busy: AtomicU8::new(0),
            controls: Controls::default(),
        };
        (data, any, caller)
    }

    /// A window after a failed or partial attempt: the steps of `window` not done
    /// yet wait for their predecessors not done yet; steps whose earlier-window
    /// predecessors did not finish stay outside.
    fn resumed(plan: &Plan, window: Window, progress: &Progress) -> Gates {
        let n = plan.len();
        let done = &progress.outcome;
        let mut info: Vec<u64> = (0..n as u32).map(|i| pack_info(plan.rank(StepId(i)), OUTSIDE, 0)).collect();
        let mut waits = Vec::new();
        let (mut any, mut caller) = (Vec::new(), Vec::new());
        let mut contended = false;
        for &id in plan.window_steps(window) {
            let i = id.0 as usize;
            if done[i] == StepOutcome::Done {
                continue; // done already (a window is idempotent)
            }
            let mut blocked = false;
            let mut rem = 0u32;
            for p in plan.preds(id) {
                if done[p.0 as usize] == StepOutcome::Done {
                    // Predecessors in this window that already ran (an earlier
                    // attempt) count as done.
                    continue;
                }
                if plan.step(*p).window != window {
                    blocked = true;
                    break;
                }
                rem += 1;
            }
            if blocked {
                continue;
            }
            let f = plan.exec_flags(id);
            contended |= f & CONTENDED != 0;
            let gate = match rem {
                0 | 1 => rem,
                _ => {
                    waits.push(rem);
                    1 + waits.len() as u32
                }
            };
            let rank = plan.rank(id);
            info[i] = pack_info(rank, gate, f);
            if rem == 0 {
                if f & CALLER_AFFINE == 0 {
                    any.push(rank);
                } else {
                    caller.push(rank);
                }
            }
        }
        let counts = waits.into_iter().map(AtomicU32::new).collect();
        Gates { info, counts, any, caller, contended }
    }

    /// Whether a lane counted idle moves the ready steps other lanes hold into the
    /// pool (`unload_others`): always, but in the loom models (whose interleavings
    /// it would multiply past what CI explores) and under the negative control.
    #[inline]
    pub(crate) fn idle_unload(&self) -> bool {
        !cfg!(loom) && !self.controls.no_idle_unload
    }

    /// A step's flags.
    #[inline]
    pub(crate) fn flags(&self, id: u32) -> u8 {
        (self.info[id as usize] >> 56) as u8
    }

    /// If successor `s` becomes ready now that one of its predecessors ended
    /// well: its rank and flags.
    #[inline]
    pub(crate) fn arrive(&self, s: usize) -> Option<(u32, u8)> {
        let x = self.info[s];
        let ready = match (x >> 32) as u32 & 0x00ff_ffff {
            1 => true,
            OUTSIDE | 0 => false,
            g => self.counts[(g - 2) as usize].fetch_sub(1, Ordering::AcqRel) == 1,
        };
        ready.then_some((x as u32, (x >> 56) as u8))
    }

    /// A step's deadline in clock units after its start.
    pub(crate) fn deadline_ticks(&self, id: u32) -> u64 {
        self.clock.ticks(self.plan.steps()[id as usize].deadline)
    }
}

/// Split-phase bookkeeping of a step in [`RunInner::status`].
const UNKNOWN: u8 = 0;
const IN_FLIGHT: u8 = 1;
const ENDED: u8 = 2;

/// The slow-path state of one run, under the engine's mutex.
pub(crate) struct RunInner {
    pub data: StdArc<RunData>,
    /// Ready any-lane steps that any lane may take.
    pub pool: ReadySet,
    /// Ready caller-affine steps made ready off the caller lane.
    pub inbox: ReadySet,
    status: Vec<u8>,
    /// Answers that came before their lane registered the step as in flight.
    early: Vec<(u32, Result<(), StepFailure>, Stamp)>,
    pub in_flight: usize,
    /// Split-phase steps' deadlines, one FIFO per distinct deadline length:
    /// steps are registered in time order, so each FIFO is sorted.
    deadlines: Vec<(u64, VecDeque<(Stamp, u32)>)>,
    /// Ends of steps answered off their lane: (step, end, outcome).
    pub ends: Vec<(u32, Stamp, u8)>,
    /// Whole records of steps the watchdog ended while their lane was inside them.
    pub claimed: Vec<Rec>,
    busy: Vec<bool>,
    parked: Vec<Vec<u32>>,
    pub failures: Vec<(StepId, StepFailure)>,
    pub stopping: bool,
}

impl RunInner {
    pub(crate) fn new(data: StdArc<RunData>) -> RunInner {
        let n = data.plan.len();
        // Footprint tables only for a run that locks footprints at all.
        let r = if data.contended { data.plan.resource_count() } else { 0 };
        RunInner {
            pool: ReadySet::new(n),
            inbox: ReadySet::new(n),
            status: vec![UNKNOWN; n],
            early: Vec::new(),
            in_flight: 0,
            deadlines: Vec::new(),
            ends: Vec::new(),
            claimed: Vec::new(),
            busy: vec![false; r],
            parked: vec![Vec::new(); r],
            failures: Vec::new(),
            stopping: false,
            data,
        }
    }

    /// Records a failure; under [`FailurePolicy::StopAll`] the run stops starting steps.
    pub(crate) fn fail(&mut self, id: u32, f: StepFailure) {
        self.failures.push((StepId(id), f));
        if self.data.policy == FailurePolicy::StopAll {
            self.stopping = true;
        }
    }

    /// Takes a contended step's contended resources, or parks it on the first busy
    /// one (it returns to the pool when that resource is released).
    pub(crate) fn acquire(&mut self, id: u32) -> bool {
        let res = self.data.plan.contended(StepId(id));
        if let Some(&r) = res.iter().find(|&&r| self.busy[r as usize]) {
            self.parked[r as usize].push(id);
            return false;
        }
        for &r in res {
            self.busy[r as usize] = true;
        }
        true
    }

    /// Releases a contended step's contended resources; steps parked on them
    /// return to the pool (or the inbox).
    pub(crate) fn release(&mut self, id: u32) {
        let data = self.data.clone();
        for &r in data.plan.contended(StepId(id)) {
            self.busy[r as usize] = false;
            for p in std::mem::take(&mut self.parked[r as usize]) {
                self.make_ready(p);
            }
        }
    }

    /// A ready step into the pool, or the inbox if it is caller-affine.
    pub(crate) fn make_ready(&mut self, id: u32) {
        let rank = self.data.plan.rank(StepId(id));
        if self.data.flags(id) & CALLER_AFFINE != 0 {
            self.inbox.insert(rank);
        } else {
            self.pool.insert(rank);
        }
    }

    /// A step's end (its answer, or its failure), wherever it is recorded:
    /// releases its contended resources, makes its successors ready (into the
    /// pool and inbox: the caller of this holds the mutex) or records the failure.
    pub(crate) fn end(&mut self, id: u32, r: Result<(), StepFailure>) {
        let data = self.data.clone();
        if data.flags(id) & CONTENDED != 0 {
            self.release(id);
        }
        match r {
            Ok(()) => {
                for s in data.plan.succs(StepId(id)) {
                    if let Some((rank, f)) = data.arrive(s.0 as usize) {
                        if f & CALLER_AFFINE != 0 {
                            self.inbox.insert(rank);
                        } else {
                            self.pool.insert(rank);
                        }
                    }
                }
            }
            Err(f) => self.fail(id, f),
        }
    }

    /// A lane started split-phase step `id` and it did not answer inline: it is
    /// now in flight, unless its answer already came (then it is returned).
    pub(crate) fn register(&mut self, id: u32, start: Stamp) -> Option<(Result<(), StepFailure>, Stamp)> {
        if let Some(i) = self.early.iter().position(|e| e.0 == id) {
            let (_, r, at) = self.early.swap_remove(i);
            self.status[id as usize] = ENDED;
            return Some((r, at));
        }
        self.status[id as usize] = IN_FLIGHT;
        self.in_flight += 1;
        let dl = self.data.deadline_ticks(id);
        if dl != u64::MAX {
            let at = start.saturating_add(dl);
            match self.deadlines.iter_mut().find(|(d, _)| *d == dl) {
                Some((_, q)) => q.push_back((at, id)),
                None => self.deadlines.push((dl, VecDeque::from([(at, id)]))),
            }
        }
        None
    }

    /// An answer delivered off the lane that started the step. Late answers (after
    /// a time-out) are ignored.
    pub(crate) fn answer(&mut self, id: u32, r: Result<(), StepFailure>, now: Stamp) {
        match self.status[id as usize] {
            IN_FLIGHT => {
                self.status[id as usize] = ENDED;
                self.in_flight -= 1;
                self.ends.push((id, now, code_of(&r)));
                self.end(id, r);
            }
            UNKNOWN => self.early.push((id, r, now)),
            _ => {}
        }
    }

    /// An answer that came before the lane registered the step, if any.
    pub(crate) fn take_early(&mut self, id: u32) -> Option<(Result<(), StepFailure>, Stamp)> {
        let i = self.early.iter().position(|e| e.0 == id)?;
        let (_, r, at) = self.early.swap_remove(i);
        self.status[id as usize] = ENDED;
        Some((r, at))
    }

    /// Marks a step the watchdog ended while its lane was inside it.
    pub(crate) fn set_ended(&mut self, id: u32) {
        self.status[id as usize] = ENDED;
    }

    /// Fails every split-phase step in flight whose deadline has passed; returns
    /// how many, and the earliest deadline still ahead.
    pub(crate) fn expire(&mut self, now: Stamp) -> (usize, Option<Stamp>) {
        let mut expired = Vec::new();
        let mut next: Option<Stamp> = None;
        for (_, q) in &mut self.deadlines {
            while let Some(&(t, id)) = q.front() {
                if self.status[id as usize] != IN_FLIGHT {
                    q.pop_front();
                    continue;
                }
                if t > now {
                    next = Some(next.map_or(t, |b| b.min(t)));
                    break;
                }
                q.pop_front();
                expired.push(id);
            }
        }
        for &id in &expired {
            // Abandon it: the backend may still be busy with it, so its resources
            // stay held for the rest of this run; a late answer is ignored.
            self.status[id as usize] = ENDED;
            self.in_flight -= 1;
            self.ends.push((id, now, TIMED_OUT));
            let after = self.data.plan.steps()[id as usize].deadline;
            self.fail(id, StepFailure::Timeout { after });
        }
        (expired.len(), next)
    }

    /// Takes up to `max` of the most urgent pool steps.
    pub(crate) fn take(&mut self, max: usize, into: &mut ReadySet) -> usize {
        let mut k = 0;
        while k < max {
            let Some(r) = self.pool.pop() else { break };
            into.insert(r);
            k += 1;
        }
        k
    }

    /// How many pool steps a lane takes at once: its share among the lanes that
    /// can take them (not the caller lane while it is inside a caller-affine
    /// step).
    pub(crate) fn batch(&self) -> usize {
        let busy = usize::from(self.data.caller_busy.load(Ordering::Relaxed));
        (self.pool.len() / self.data.lanes.saturating_sub(busy).max(1)).max(1)
    }
}

/// The engine's shared slow-path state, under its one mutex.
pub(crate) struct Inner {
    pub shutdown: bool,
    pub epoch: u64,
    pub run: Option<RunInner>,
    /// Workers waiting for work.
    pub parked: usize,
    /// Of them, notified and not awake yet.
    pub notified: usize,
    /// Workers running steps of the run (neither parked nor stuck).
    pub active: usize,
    /// Per worker: the watchdog ended the step it is inside (it counts as
    /// neither active nor parked until it comes back).
    pub stuck: Vec<bool>,
    /// The caller lane waits for work, answers or the run's end.
    pub caller_waiting: bool,
}

impl Inner {
    pub(crate) fn new(workers: usize) -> Inner {
        Inner {
            shutdown: false,
            epoch: 0,
            run: None,
            parked: 0,
            notified: 0,
            active: 0,
            stuck: vec![false; workers],
            caller_waiting: false,
        }
    }

    /// The current run, if it is run `epoch`.
    #[inline]
    pub(crate) fn run_of(&mut self, epoch: u64) -> Option<&mut RunInner> {
        self.run.as_mut().filter(|r| r.data.epoch == epoch)
    }

    /// Nothing can make progress: no worker runs a step, nothing is in flight,
    /// and nothing is ready (or the run stops). The caller lane checks its own
    /// local steps itself.
    pub(crate) fn quiescent(&self) -> bool {
        match &self.run {
            None => true,
            Some(r) => self.active == 0 && r.in_flight == 0 && (r.stopping || (r.pool.is_empty() && r.inbox.is_empty())),
        }
    }

    /// The hint word for the lanes.
    pub(crate) fn hints(&self) -> u64 {
        let Some(r) = &self.run else { return Hints::NONE };
        let mut h = if r.stopping { u64::from(u32::MAX) | Hints::STOPPING } else { u64::from(r.pool.peek().unwrap_or(u32::MAX)) };
        // Parked workers not yet woken, and the caller lane waiting: a lane with
        // ready steps of its own shares them while anyone idles.
        let idle = (self.parked.saturating_sub(self.notified) + usize::from(self.caller_waiting)).min(0xffff) as u64;
        h |= idle << Hints::IDLE_SHIFT;
        if !r.inbox.is_empty() {
            h |= Hints::INBOX;
        }
        h
    }

    /// How many parked workers to wake for `ready` new pool steps; counts them as
    /// notified.
    pub(crate) fn wake_for(&mut self, ready: usize) -> usize {
        let k = self.parked.saturating_sub(self.notified).min(ready);
        self.notified += k;
        k
    }
}
