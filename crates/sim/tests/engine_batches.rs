//! The engine and a blocking step that hangs inside a lane's batch.
//!
//! A lane takes several *brief* steps (split-phase sends, blocking steps declared
//! under 1 µs, such as a drain with nothing in flight) in one batch. When one of
//! them blocks far longer than declared (a hung drain, a hung ioctl), the engine
//! must still:
//!
//! * name that step, not a batch-mate that answered at once;
//! * time it out when its answer comes after its deadline, even on the caller lane
//!   (which cannot expire anything while it is blocked itself);
//! * start nothing more of the batch once the run has stopped (a stale step of an
//!   ended run would act on devices a rollback is already restarting).
//!
//! These use the core's API only (no simulated backend).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchover::error::StepFailure;
use switchover::exec::{Completion, Engine, Progress, StepActions, StepOutcome};
use switchover::ids::{Affinity, DeviceId, Side, StepId, Window};
use switchover::plan::{Plan, PlanBuilder, StepSpec};
use switchover::resource::Resource;
use switchover::step::{Step, StepKind};
use switchover::topology::Topology;

const DEADLINE: Duration = Duration::from_millis(100);
const HANG: Duration = Duration::from_millis(400);

/// `hold` (caller-affine, 40 ms: keeps the caller lane busy so a worker takes the
/// batch), then three brief blocking steps with one deadline: `a` (answers at
/// once), `h` (hangs, then answers Ok), `b` (answers at once).
struct Batch {
    plan: Arc<Plan>,
    hold: Option<StepId>,
    a: StepId,
    h: StepId,
    b: StepId,
}

fn plan(with_hold: bool, a_deadline: Duration) -> Batch {
    let topo = Arc::new(Topology::preset("small").unwrap());
    let mut pb = PlanBuilder::new(topo, Side::Source);
    let brief = |pb: &mut PlanBuilder, d: u32| {
        pb.add(
            StepSpec::new(DeviceId(d), StepKind::DrainInflight, Window::Blackout)
                .ring(0)
                .deadline(if d == 0 { a_deadline } else { DEADLINE })
                .footprint(&[Resource::vring(DeviceId(d), 0)]),
        )
    };
    let hold = with_hold.then(|| {
        pb.add(
            StepSpec::new(DeviceId(3), StepKind::Custom("hold".into()), Window::Blackout)
                .affinity(Affinity::Caller)
                .cost(Duration::from_millis(40))
                .footprint(&[Resource::device(DeviceId(3))]),
        )
    });
    let a = brief(&mut pb, 0);
    let h = brief(&mut pb, 1);
    let b = brief(&mut pb, 2);
    Batch { plan: Arc::new(pb.build().unwrap()), hold, a, h, b }
}

struct Actions {
    hold: Option<StepId>,
    h: StepId,
    starts: Vec<AtomicU32>,
    late: Vec<AtomicU32>,
    opened: Instant,
}

impl StepActions for Actions {
    fn start(&self, step: &Step, done: Completion) {
        self.starts[step.id.0 as usize].fetch_add(1, Ordering::SeqCst);
        if self.opened.elapsed() > DEADLINE + Duration::from_millis(50) {
            self.late[step.id.0 as usize].fetch_add(1, Ordering::SeqCst);
        }
        if Some(step.id) == self.hold {
            std::thread::sleep(Duration::from_millis(40));
        }
        if step.id == self.h {
            std::thread::sleep(HANG);
        }
        done.complete(Ok(()));
    }
}

fn run(workers: usize, with_hold: bool, a_deadline: Duration) -> (Batch, Arc<Actions>, switchover::exec::RunReport, Progress) {
    let bt = plan(with_hold, a_deadline);
    let n = bt.plan.len();
    let actions = Arc::new(Actions {
        hold: bt.hold,
        h: bt.h,
        starts: (0..n).map(|_| AtomicU32::new(0)).collect(),
        late: (0..n).map(|_| AtomicU32::new(0)).collect(),
        opened: Instant::now(),
    });
    let mut engine = Engine::new(workers);
    let mut p = Progress::new(&bt.plan);
    let r = engine.run(&bt.plan, Window::Blackout, actions.clone(), &mut p);
    // Let a lane stuck in the hung step come back (the engine joins it on drop).
    drop(engine);
    (bt, actions, r, p)
}

#[test]
fn a_hung_step_on_a_worker_is_the_one_named_and_nothing_starts_after_the_run() {
    for attempt in 0..5 {
        // `a` (answered at once, its answer waiting in the lane) has the same
        // deadline, then a shorter one than the hung step.
        let a_deadline = if attempt % 2 == 0 { DEADLINE } else { DEADLINE / 2 };
        let (bt, actions, r, p) = run(1, true, a_deadline);
        let f = r.failure.clone().unwrap_or_else(|| panic!("attempt {attempt}: no failure"));
        assert_eq!(f.step, bt.h, "attempt {attempt}: the failure names {} ({}), not the hung step", f.device_name, f.kind);
        assert_eq!(f.failure, StepFailure::Timeout { after: DEADLINE });
        assert_eq!(p.outcome(bt.h), StepOutcome::TimedOut);
        // Nothing of the batch started once the run had stopped. `b` may have run
        // before, on the caller lane once its hold ended (an idle lane takes the
        // ready steps a lane stuck in an action holds): then exactly once.
        assert_eq!(actions.late[bt.b.0 as usize].load(Ordering::SeqCst), 0, "attempt {attempt}: b started after the run stopped");
        assert!(actions.starts[bt.b.0 as usize].load(Ordering::SeqCst) <= 1);
        assert_eq!(p.outcome(bt.b) == StepOutcome::Done, actions.starts[bt.b.0 as usize].load(Ordering::SeqCst) == 1);
        let _ = bt.a;
    }
}

#[test]
fn a_hung_step_on_the_caller_lane_times_out_when_it_answers_late() {
    for attempt in 0..3 {
        let (bt, actions, r, p) = run(0, false, DEADLINE);
        let f = r.failure.clone().unwrap_or_else(|| panic!("attempt {attempt}: a step answering after its deadline counted as done"));
        assert_eq!(f.step, bt.h, "attempt {attempt}: names {}", f.device_name);
        assert_eq!(f.failure, StepFailure::Timeout { after: DEADLINE });
        assert_eq!(p.outcome(bt.h), StepOutcome::TimedOut);
        // The step that answered at once before it is done; the one after it never started.
        assert_eq!(p.outcome(bt.a), StepOutcome::Done);
        assert_eq!(actions.starts[bt.b.0 as usize].load(Ordering::SeqCst), 0, "attempt {attempt}: b started after the failure");
        assert_eq!(p.outcome(bt.b), StepOutcome::NotRun);
    }
}
