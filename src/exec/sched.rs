//! The scheduler's state for one window of one plan: readiness, footprints, lanes,
//! deadlines. Pure data with no threads or locks of its own; the engine keeps it
//! under its one mutex. Small enough to model-check (loom-tests/).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::{FailurePolicy, Progress, StepOutcome};
use crate::error::StepFailure;
use crate::plan::Plan;
use crate::step::{Affinity, StepId, Window};

/// The lane a step was started on: 0 is the caller, 1.. are workers.
pub type Lane = u16;

/// The caller lane.
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

/// Per-step timing, relative to the run's start.
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
    ready_any: BinaryHeap<(u64, Reverse<u32>)>,
    ready_caller: BinaryHeap<(u64, Reverse<u32>)>,
    busy: Vec<bool>,
    parked: Vec<Vec<u32>>,
    in_flight: usize,
    stopping: bool,
    deadlines: BinaryHeap<Reverse<(Instant, u32)>>,
    pub(crate) times: Vec<Times>,
    pub(crate) failures: Vec<(StepId, StepFailure)>,
    pub(crate) t0: Instant,
    started: usize,
}

impl Sched {
    /// Sets up the window's steps; steps whose earlier-window predecessors did not
    /// finish stay out of the run (they end as not run).
    pub(crate) fn new(plan: &Plan, window: Window, policy: FailurePolicy, progress: &Progress, t0: Instant) -> Sched {
        let n = plan.len();
        let mut s = Sched {
            window,
            policy,
            state: vec![St::Outside; n],
            remaining: vec![0; n],
            ready_any: BinaryHeap::new(),
            ready_caller: BinaryHeap::new(),
            busy: vec![false; plan.resource_count()],
            parked: vec![Vec::new(); plan.resource_count()],
            in_flight: 0,
            stopping: false,
            deadlines: BinaryHeap::new(),
            times: vec![Times::default(); n],
            failures: Vec::new(),
            t0,
            started: 0,
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
                if ps.window == window {
                    rem += 1;
                } else if progress.outcome(*p) != StepOutcome::Done {
                    blocked = true;
                }
            }
            if blocked {
                continue;
            }
            s.state[i] = St::Pending;
            s.remaining[i] = rem;
        }
        // Predecessors in this window that already ran (an earlier attempt) count as done.
        for step in plan.in_window(window) {
            let i = step.id.0 as usize;
            if s.state[i] != St::Pending {
                continue;
            }
            let done_before =
                plan.preds(step.id).iter().filter(|p| plan.step(**p).window == window && progress.outcome(**p) == StepOutcome::Done).count() as u32;
            s.remaining[i] -= done_before;
            if s.remaining[i] == 0 {
                s.push_ready(plan, i as u32);
            }
        }
        s
    }

    fn push_ready(&mut self, plan: &Plan, id: u32) {
        self.state[id as usize] = St::Ready;
        let step = &plan.steps()[id as usize];
        let key = (plan.priority(step.id), Reverse(id));
        match step.affinity {
            Affinity::Any => self.ready_any.push(key),
            Affinity::Caller => self.ready_caller.push(key),
        }
    }

    /// Next step for `lane`, with its whole footprint acquired; `None` if nothing
    /// can start now.
    pub(crate) fn next(&mut self, plan: &Plan, lane: Lane, now: Instant) -> Option<StepId> {
        if self.stopping {
            return None;
        }
        loop {
            let (_, Reverse(id)) = if lane == CALLER {
                match self.ready_caller.pop() {
                    Some(x) => x,
                    None => self.ready_any.pop()?,
                }
            } else {
                self.ready_any.pop()?
            };
            let fp = plan.footprint_ids(StepId(id));
            if let Some(&r) = fp.iter().find(|&&r| self.busy[r as usize]) {
                // Park on the first busy resource; it returns to the ready queue when
                // that resource is released.
                self.parked[r as usize].push(id);
                continue;
            }
            for &r in fp {
                self.busy[r as usize] = true;
            }
            let i = id as usize;
            self.state[i] = St::Running;
            self.in_flight += 1;
            self.started += 1;
            self.times[i] = Times { lane, start_ns: ns(now, self.t0), end_ns: 0 };
            let dl = plan.steps()[i].deadline;
            if dl < Duration::MAX / 2 {
                self.deadlines.push(Reverse((now + dl, id)));
            }
            return Some(StepId(id));
        }
    }

    /// Records a step's end. Late answers (after a time-out) are ignored and
    /// return `None`.
    pub(crate) fn complete(&mut self, plan: &Plan, id: StepId, result: Result<(), StepFailure>, now: Instant) -> Option<Woken> {
        let i = id.0 as usize;
        if self.state[i] != St::Running {
            return None;
        }
        self.in_flight -= 1;
        self.times[i].end_ns = ns(now, self.t0);
        let mut woken = Woken::default();
        for &r in plan.footprint_ids(id) {
            self.busy[r as usize] = false;
            for p in std::mem::take(&mut self.parked[r as usize]) {
                self.requeue(plan, p, &mut woken);
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
                self.state[i] = St::Failed;
                self.fail(id, f);
            }
        }
        Some(woken)
    }

    fn requeue(&mut self, plan: &Plan, id: u32, woken: &mut Woken) {
        let step = &plan.steps()[id as usize];
        let key = (plan.priority(step.id), Reverse(id));
        match step.affinity {
            Affinity::Any => self.ready_any.push(key),
            Affinity::Caller => self.ready_caller.push(key),
        }
        count(plan, id, woken);
    }

    fn fail(&mut self, id: StepId, f: StepFailure) {
        self.failures.push((id, f));
        if self.policy == FailurePolicy::StopAll {
            self.stopping = true;
        }
    }

    /// Fails every running step whose deadline has passed; returns how many.
    pub(crate) fn expire(&mut self, plan: &Plan, now: Instant) -> usize {
        let mut n = 0;
        while let Some(&Reverse((t, id))) = self.deadlines.peek() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            let i = id as usize;
            if self.state[i] != St::Running {
                continue;
            }
            // Abandon it: the lane or backend may still be busy with it, so its
            // resources stay held for the rest of this run; a late answer is ignored.
            self.state[i] = St::TimedOut;
            self.in_flight -= 1;
            self.times[i].end_ns = ns(now, self.t0);
            self.fail(StepId(id), StepFailure::Timeout { after: plan.steps()[i].deadline });
            n += 1;
        }
        n
    }

    /// The earliest deadline of a running step.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((t, id))) = self.deadlines.peek() {
            if self.state[id as usize] == St::Running {
                return Some(t);
            }
            self.deadlines.pop();
        }
        None
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

fn count(plan: &Plan, id: u32, woken: &mut Woken) {
    match plan.steps()[id as usize].affinity {
        Affinity::Any => woken.any += 1,
        Affinity::Caller => woken.caller += 1,
    }
}

fn ns(now: Instant, t0: Instant) -> u64 {
    now.saturating_duration_since(t0).as_nanos() as u64
}
