//! A recording `StepActions` for checking the engine's invariants on any plan.

#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use switchover::error::StepFailure;
use switchover::exec::{Completion, StepActions};
use switchover::ids::StepId;
use switchover::plan::Plan;
use switchover::recipe::CostModel;
use switchover::step::{ExecMode, Step, StepKind};
use switchover::topology::Device;

/// Expected costs that differ by step kind (in the proportions of a vhost-user
/// backend: ring stops and the memory table dominate), so plans have real
/// priorities and the engine's longest-path-first order matters.
#[derive(Debug, Clone, Copy, Default)]
pub struct TestCosts;

impl CostModel for TestCosts {
    fn cost(&self, _device: &Device, kind: &StepKind) -> Duration {
        let us = match kind {
            StepKind::GetVringBase => 1300,
            StepKind::SetMemTable => 900,
            StepKind::DrainInflight => 400,
            StepKind::MemTxnCommit => 300,
            k if k.is_notifier() => 60,
            k if k.is_message() => 120,
            _ => 10,
        };
        Duration::from_micros(us)
    }
}

/// What one step did, as seen by the actions (independently of the engine's records).
#[derive(Debug, Clone)]
pub struct Seen {
    pub starts: u32,
    pub start: Option<Instant>,
    pub end: Option<Instant>,
    pub thread: Option<ThreadId>,
}

/// Records every start and completion; fails the steps in `fail`.
pub struct Recorder {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub fail: HashSet<u32>,
    pub work: Duration,
}

impl Recorder {
    pub fn new(n: usize, fail: HashSet<u32>, work: Duration) -> Arc<Recorder> {
        Arc::new(Recorder { seen: Arc::new(Mutex::new(vec![Seen { starts: 0, start: None, end: None, thread: None }; n])), fail, work })
    }
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl StepActions for Recorder {
    fn start(&self, step: &Step, done: Completion) {
        let i = step.id.0 as usize;
        {
            let mut s = self.seen.lock().unwrap();
            s[i].starts += 1;
            s[i].start = Some(Instant::now());
            s[i].thread = Some(std::thread::current().id());
        }
        let result = if self.fail.contains(&step.id.0) { Err(StepFailure::Injected { what: "test".into() }) } else { Ok(()) };
        let work = self.work;
        let finish = move |seen: &Mutex<Vec<Seen>>| {
            seen.lock().unwrap()[i].end = Some(Instant::now());
        };
        match step.mode {
            ExecMode::Blocking => {
                if !work.is_zero() {
                    std::thread::sleep(work);
                }
                finish(&self.seen);
                done.complete(result);
            }
            ExecMode::Split => {
                // The reply arrives on another thread, later.
                let seen = self.seen.clone();
                std::thread::spawn(move || {
                    if !work.is_zero() {
                        std::thread::sleep(work);
                    }
                    finish(&seen);
                    done.complete(result);
                });
            }
        }
    }
}

/// Checks the engine's invariants for the steps of `plan` that ran, using what
/// the actions saw. `caller` is the thread that called `Engine::run`.
pub fn check_invariants(plan: &Plan, seen: &[Seen], caller: ThreadId) {
    for s in plan.steps() {
        let me = &seen[s.id.0 as usize];
        assert!(me.starts <= 1, "step {} ({} {}) started {} times", s.id.0, plan.device_name(s.id), s.kind, me.starts);
        if me.starts == 0 {
            continue;
        }
        let (st, _) = (me.start.unwrap(), me.end);
        // Predecessors finished before this step started.
        for p in plan.preds(s.id) {
            let pe = seen[p.0 as usize].end.unwrap_or_else(|| panic!("step {} started before predecessor {} ended", s.id.0, p.0));
            assert!(pe <= st, "step {} started before predecessor {} finished", s.id.0, p.0);
        }
        if s.affinity == switchover::ids::Affinity::Caller {
            assert_eq!(me.thread, Some(caller), "caller-affine step {} ran off the caller's thread", s.id.0);
        }
    }
    // No two conflicting steps overlapped.
    let ran: Vec<&Step> = plan.steps().iter().filter(|s| seen[s.id.0 as usize].starts == 1).collect();
    for (i, a) in ran.iter().enumerate() {
        for b in &ran[i + 1..] {
            if !plan.conflicts(a.id, b.id) {
                continue;
            }
            let (sa, sb) = (&seen[a.id.0 as usize], &seen[b.id.0 as usize]);
            let (Some(ea), Some(eb)) = (sa.end, sb.end) else { continue };
            let disjoint = ea <= sb.start.unwrap() || eb <= sa.start.unwrap();
            assert!(disjoint, "conflicting steps {} and {} overlapped", a.id.0, b.id.0);
        }
    }
}

/// Every step reachable from `failed` through successors.
pub fn dependents(plan: &Plan, failed: StepId) -> HashSet<u32> {
    let mut out = HashSet::new();
    let mut stack = vec![failed];
    while let Some(x) = stack.pop() {
        for s in plan.succs(x) {
            if out.insert(s.0) {
                stack.push(*s);
            }
        }
    }
    out
}
