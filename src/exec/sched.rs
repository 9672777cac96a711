//! The scheduler's state for one window of one plan: readiness, footprints, lanes,
//! deadlines. Pure data with no threads or locks of its own; the engine keeps it
//! under its one mutex. Small enough to model-check (loom-tests/).

use std::collections::VecDeque;
use std::time::Duration;

use super::clock::Stamp;
use super::ready::ReadySet;
use super::{FailurePolicy, Progress, StepOutcome};
use crate::error::StepFailure;
use crate::ids::{Affinity, StepId, Window};
use crate::plan::Plan;

/// The lane a step was started on: 0 is the caller, 1.. are workers.
///
/// ```
/// use std::sync::Arc;
/// use switchover::exec::{Completion, Engine, Progress, StepActions};
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::ids::{Side, Window};
/// use switchover::step::Step;
/// use switchover::topology::Topology;
/// struct Inline;
/// impl StepActions for Inline {
///     fn start(&self, _step: &Step, done: Completion) {
///         done.complete(Ok(()));
///     }
/// }
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap());
/// let mut engine = Engine::new(2);
/// let r = engine.run(&plan, Window::Blackout, Arc::new(Inline), &mut Progress::new(&plan));
/// assert!(r.records.iter().all(|x| usize::from(x.lane) <= engine.workers()));
/// ```
pub type Lane = u16;

/// The caller lane.
///
/// ```
/// use std::sync::Arc;
/// use switchover::exec::{Completion, Engine, Progress, StepActions, CALLER};
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::ids::{Side, Window};
/// use switchover::step::Step;
/// use switchover::topology::Topology;
/// struct Inline;
/// impl StepActions for Inline {
///     fn start(&self, _step: &Step, done: Completion) {
///         done.complete(Ok(()));
///     }
/// }
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap());
/// // With no workers, the caller lane runs every step.
/// let r = Engine::new(0).run(&plan, Window::Blackout, Arc::new(Inline), &mut Progress::new(&plan));
/// assert!(!r.records.is_empty() && r.records.iter().all(|x| x.lane == CALLER));
/// ```
pub const CALLER: Lane = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Outside,
    Pending,
    Ready,
    Running,
    Done,
    Failed,
    TimedOut,
}

/// Per-step timing, in nanoseconds since the run's start.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Times {
    pub lane: Lane,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// What a completion changed, so the engine knows whom to wake.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Woken {
    pub any: usize,
    pub caller: usize,
}

#[derive(Debug)]
pub(crate) struct Sched {
    window: Window,
    policy: FailurePolicy,
    state: Vec<St>,
    remaining: Vec<u32>,
    ready_any: ReadySet,
    ready_caller: ReadySet,
    busy: Vec<bool>,
    parked: Vec<Vec<u32>>,
    in_flight: usize,
    stopping: bool,
    /// Running steps' deadlines, one FIFO per distinct deadline length: steps start
    /// in time order, so each FIFO is sorted.
    deadlines: Vec<(Duration, VecDeque<(Stamp, u32)>)>,
    /// Steps past their deadline whose lane is still busy with a later step of the
    /// same batch (so their answer may be waiting in the lane), each with the time
    /// to look again: that step's deadline.
    deferred: Vec<(Stamp, u32)>,
    pub(crate) times: Vec<Times>,
    pub(crate) failures: Vec<(StepId, StepFailure)>,
}

impl Sched {
    /// Sets up the window's steps; steps whose earlier-window predecessors did not
    /// finish stay out of the run (they end as not run).
    pub(crate) fn new(plan: &Plan, window: Window, policy: FailurePolicy, progress: &Progress) -> Sched {
        let n = plan.len();
        let mut s = Sched {
            window,
            policy,
            state: vec![St::Outside; n],
            remaining: vec![0; n],
            ready_any: ReadySet::new(n),
            ready_caller: ReadySet::new(n),
            busy: vec![false; plan.resource_count()],
            parked: vec![Vec::new(); plan.resource_count()],
            in_flight: 0,
            stopping: false,
            deadlines: Vec::new(),
            deferred: Vec::new(),
            times: vec![Times::default(); n],
            failures: Vec::new(),
        };
        for step in plan.in_window(window) {
            let i = step.id.0 as usize;
            if progress.outcome(step.id) == StepOutcome::Done {
                continue; // idempotent: a step that already ran is not run again
            }
            let mut blocked = false;
            let mut rem = 0;
            for p in plan.preds(step.id) {
                let ps = plan.step(*p);
                if ps.window != window {
                    blocked |= progress.outcome(*p) != StepOutcome::Done;
                } else if progress.outcome(*p) != StepOutcome::Done {
                    // Predecessors in this window that already ran (an earlier
                    // attempt) count as done.
                    rem += 1;
                }
            }
            if blocked {
                continue;
            }
            s.state[i] = St::Pending;
            s.remaining[i] = rem;
            if rem == 0 {
                s.push_ready(plan, i as u32);
            }
        }
        s
    }

    #[inline]
    fn push_ready(&mut self, plan: &Plan, id: u32) {
        self.state[id as usize] = St::Ready;
        let step = &plan.steps()[id as usize];
        let r = plan.rank(step.id);
        match step.affinity {
            Affinity::Any => self.ready_any.insert(r),
            Affinity::Caller => self.ready_caller.insert(r),
        }
    }

    /// Fills `out` with steps for `lane` to start, each with its whole footprint
    /// acquired: the most urgent ready step, then — if it is *brief* (expected to
    /// hold a lane for under a microsecond: a split-phase send, a trivial step) —
    /// more brief steps, up to `max`, so one lock acquisition serves many of them.
    /// A step that would hold a lane longer is taken alone.
    pub(crate) fn next_batch(&mut self, plan: &Plan, lane: Lane, now: Stamp, max: usize, out: &mut Vec<StepId>) {
        let Some(first) = self.next(plan, lane, now) else { return };
        out.push(first);
        if !brief(plan, first) {
            return;
        }
        while out.len() < max {
            // Look before taking: a step that is not brief stays for a lane of its own.
            let peek = if lane == CALLER && !self.ready_caller.is_empty() { self.ready_caller.peek() } else { self.ready_any.peek() };
            match peek {
                Some(r) if brief(plan, plan.at_rank(r)) => {}
                _ => return,
            }
            let Some(id) = self.next(plan, lane, now) else { return };
            out.push(id);
            if !brief(plan, id) {
                return;
            }
        }
    }

    /// Next step for `lane`, with its whole footprint acquired; `None` if nothing
    /// can start now.
    pub(crate) fn next(&mut self, plan: &Plan, lane: Lane, now: Stamp) -> Option<StepId> {
        if self.stopping {
            return None;
        }
        loop {
            let rank = if lane == CALLER {
                match self.ready_caller.pop() {
                    Some(x) => x,
                    None => self.ready_any.pop()?,
                }
            } else {
                self.ready_any.pop()?
            };
            let id = plan.at_rank(rank);
            let fp = plan.footprint_ids(id);
            if let Some(&r) = fp.iter().find(|&&r| self.busy[r as usize]) {
                // Park on the first busy resource; it returns to the ready set when
                // that resource is released.
                self.parked[r as usize].push(id.0);
                continue;
            }
            for &r in fp {
                self.busy[r as usize] = true;
            }
            let i = id.0 as usize;
            self.state[i] = St::Running;
            self.in_flight += 1;
            self.times[i] = Times { lane, start_ns: now, end_ns: 0 };
            let dl = plan.steps()[i].deadline;
            if dl < Duration::MAX / 2 {
                let at = now.saturating_add(dl.as_nanos() as u64);
                match self.deadlines.iter_mut().find(|(d, _)| *d == dl) {
                    Some((_, q)) => q.push_back((at, id.0)),
                    None => self.deadlines.push((dl, VecDeque::from([(at, id.0)]))),
                }
            }
            return Some(id);
        }
    }

    /// Sets a started step's start to when its lane really started it.
    pub(crate) fn restamp(&mut self, id: StepId, start: Stamp) {
        let t = &mut self.times[id.0 as usize];
        t.start_ns = start;
        if t.end_ns != 0 && t.end_ns < start {
            t.end_ns = start;
        }
    }

    /// Records a step's end. Late answers (after a time-out) are ignored and
    /// return `None`.
    pub(crate) fn complete(&mut self, plan: &Plan, id: StepId, result: Result<(), StepFailure>, now: Stamp) -> Option<Woken> {
        let i = id.0 as usize;
        if self.state[i] != St::Running {
            return None;
        }
        self.in_flight -= 1;
        self.times[i].end_ns = now;
        let mut woken = Woken::default();
        for &r in plan.footprint_ids(id) {
            self.busy[r as usize] = false;
            if !self.parked[r as usize].is_empty() {
                for p in std::mem::take(&mut self.parked[r as usize]) {
                    self.push_ready(plan, p);
                    count(plan, p, &mut woken);
                }
            }
        }
        match result {
            Ok(()) => {
                self.state[i] = St::Done;
                for s in plan.succs(id) {
                    let si = s.0 as usize;
                    if self.state[si] != St::Pending {
                        continue;
                    }
                    self.remaining[si] -= 1;
                    if self.remaining[si] == 0 {
                        self.push_ready(plan, s.0);
                        count(plan, s.0, &mut woken);
                    }
                }
            }
            Err(f) => {
                // An action that reports its own time-out (a drain past its
                // deadline, an answer after it) timed out.
                self.state[i] = if matches!(f, StepFailure::Timeout { .. }) { St::TimedOut } else { St::Failed };
                self.fail(id, f);
            }
        }
        Some(woken)
    }

    fn fail(&mut self, id: StepId, f: StepFailure) {
        self.failures.push((id, f));
        if self.policy == FailurePolicy::StopAll {
            self.stopping = true;
        }
    }

    /// Fails every running step whose deadline has passed; returns how many.
    ///
    /// `current(lane)` is the step that lane is starting or running now (id + 1; 0
    /// for none). A lane starts a batch's steps one after another and records their
    /// answers when the batch ends, so a step of a batch whose lane is still busy
    /// with a later step of it may have answered in time: it waits for that step's
    /// deadline. The steps lanes are stuck on are named first.
    pub(crate) fn expire(&mut self, plan: &Plan, now: Stamp, current: &dyn Fn(Lane) -> u32) -> usize {
        let mut due = Vec::new();
        for (_, q) in &mut self.deadlines {
            while let Some(&(t, id)) = q.front() {
                if self.state[id as usize] != St::Running {
                    q.pop_front();
                    continue;
                }
                if t > now {
                    break;
                }
                q.pop_front();
                due.push(id);
            }
        }
        let state = &self.state;
        self.deferred.retain(|&(t, id)| {
            if state[id as usize] != St::Running {
                return false;
            }
            if t > now {
                return true;
            }
            due.push(id);
            false
        });
        if due.is_empty() {
            return 0;
        }
        let mut expired = Vec::with_capacity(due.len());
        for &id in &due {
            let t = self.times[id as usize];
            let cur = current(t.lane);
            let c = cur.wrapping_sub(1) as usize;
            let hostage = cur != 0
                && cur != id + 1
                && self.state[c] == St::Running
                && self.times[c].lane == t.lane
                && self.times[c].start_ns == t.start_ns
                && !due.contains(&(cur - 1));
            if hostage {
                let at = self.times[c].start_ns.saturating_add(plan.steps()[c].deadline.as_nanos().min(u128::from(u64::MAX)) as u64);
                self.deferred.push((at, id));
            } else {
                expired.push(id);
            }
        }
        expired.sort_by_key(|&id| current(self.times[id as usize].lane) != id + 1);
        for &id in &expired {
            // Abandon it: the lane or backend may still be busy with it, so its
            // resources stay held for the rest of this run; a late answer is ignored.
            let i = id as usize;
            self.state[i] = St::TimedOut;
            self.in_flight -= 1;
            self.times[i].end_ns = now;
            self.fail(StepId(id), StepFailure::Timeout { after: plan.steps()[i].deadline });
        }
        expired.len()
    }

    /// Gives back a step a lane took for its batch but did not start (the run
    /// stopped, or an earlier step of the batch failed): it ends this run not run,
    /// its resources free. Returns whom to wake.
    pub(crate) fn unstart(&mut self, plan: &Plan, id: StepId) -> Woken {
        let i = id.0 as usize;
        match self.state[i] {
            St::Running => self.in_flight -= 1,
            // Timed out while it waited in the batch: it never started.
            St::TimedOut => self.failures.retain(|(f, _)| *f != id),
            _ => return Woken::default(),
        }
        self.state[i] = St::Outside;
        let mut woken = Woken::default();
        for &r in plan.footprint_ids(id) {
            self.busy[r as usize] = false;
            for p in std::mem::take(&mut self.parked[r as usize]) {
                self.push_ready(plan, p);
                count(plan, p, &mut woken);
            }
        }
        woken
    }

    /// Whether no new step may start (a failure under [`FailurePolicy::StopAll`]).
    pub(crate) fn stopping(&self) -> bool {
        self.stopping
    }

    /// Whether a failure stops the run.
    pub(crate) fn stops_on_failure(&self) -> bool {
        self.policy == FailurePolicy::StopAll
    }

    /// The earliest deadline of a running step.
    pub(crate) fn next_deadline(&mut self) -> Option<Stamp> {
        let mut best: Option<Stamp> = None;
        for (_, q) in &mut self.deadlines {
            while let Some(&(t, id)) = q.front() {
                if self.state[id as usize] == St::Running {
                    best = Some(best.map_or(t, |b| b.min(t)));
                    break;
                }
                q.pop_front();
            }
        }
        for &(t, id) in &self.deferred {
            if self.state[id as usize] == St::Running {
                best = Some(best.map_or(t, |b| b.min(t)));
            }
        }
        best
    }

    /// Whether the run is over: nothing running, and nothing that can start.
    pub(crate) fn finished(&self) -> bool {
        self.in_flight == 0 && (self.stopping || (self.ready_any.is_empty() && self.ready_caller.is_empty()))
    }

    /// Final outcomes of this window's steps, written into `progress`.
    pub(crate) fn settle(&self, plan: &Plan, progress: &mut Progress) {
        for step in plan.in_window(self.window) {
            let i = step.id.0 as usize;
            let o = match self.state[i] {
                St::Done => StepOutcome::Done,
                St::Failed => StepOutcome::Failed,
                St::TimedOut => StepOutcome::TimedOut,
                St::Outside if progress.outcome(step.id) == StepOutcome::Done => StepOutcome::Done,
                St::Outside | St::Pending | St::Ready | St::Running => StepOutcome::NotRun,
            };
            progress.set(step.id, o);
        }
    }

    /// Whether step `id` is part of this run and was started.
    pub(crate) fn was_started(&self, id: StepId) -> bool {
        matches!(self.state[id.0 as usize], St::Running | St::Done | St::Failed | St::TimedOut)
    }
}

/// Whether a step is expected to hold its lane for under a microsecond.
fn brief(plan: &Plan, id: StepId) -> bool {
    let s = plan.step(id);
    s.mode == crate::step::ExecMode::Split || s.cost < Duration::from_micros(1)
}

fn count(plan: &Plan, id: u32, woken: &mut Woken) {
    match plan.steps()[id as usize].affinity {
        Affinity::Any => woken.any += 1,
        Affinity::Caller => woken.caller += 1,
    }
}
