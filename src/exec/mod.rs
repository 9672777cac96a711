//! The executor: a worker pool started before the window opens, which runs one
//! window of a plan at a time.
//!
//! * Ready steps are taken longest-remaining-path first.
//! * A step starts only when its whole footprint is free; footprints are taken at
//!   once, under the scheduler lock, so no lane ever waits for a footprint, and two
//!   conflicting steps never run at the same time.
//! * Caller-affine steps run only on the thread that called [`Engine::run`] (the
//!   caller lane), which also takes other steps; workers never run them, so a worker
//!   never waits for the caller's big lock.
//! * Split-phase steps return after sending their request; the reply completes them
//!   from whichever thread receives it, so one lane keeps many round trips in flight.
//! * Each step runs at most once; a failed step's dependents never start; a step
//!   that passes its deadline fails with a time-out and its late answer is ignored.
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use switchover::exec::{Completion, Engine, Progress, StepActions};
//! use switchover::ids::{Side, Window};
//! use switchover::recipe::{build, NoCosts, RecipeOptions};
//! use switchover::step::Step;
//! use switchover::topology::Topology;
//!
//! struct Nothing;
//! impl StepActions for Nothing {
//!     fn start(&self, _step: &Step, done: Completion) {
//!         done.complete(Ok(()));
//!     }
//! }
//! let topo = Arc::new(Topology::preset("small").unwrap());
//! let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap());
//! let mut engine = Engine::new(2);
//! let mut progress = Progress::new(&plan);
//! for w in Window::ALL {
//!     let r = engine.run(&plan, w, Arc::new(Nothing), &mut progress);
//!     assert!(r.failure.is_none());
//! }
//! assert!(progress.all_done());
//! ```

mod caller;
mod clock;
mod completion;
mod ready;
mod sched;

use std::sync::Arc as StdArc;
use std::time::{Duration, Instant};

pub use caller::CallerLane;
pub use completion::Completion;
pub use sched::{Lane, CALLER};

use crate::error::{StepError, StepFailure};
use crate::ids::{Affinity, DeviceId, Side, StepId, Window};
use crate::plan::Plan;
use crate::step::Step;
use crate::sync::{Arc, AtomicU32, Condvar, Mutex, Ordering};
use sched::{Sched, Woken};

/// What performs steps. `start` must eventually call `done.complete(..)` exactly once
/// (dropping `done` unanswered fails the step as abandoned). A blocking step completes
/// before returning; a split-phase step hands `done` to whatever receives the reply.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use switchover::exec::{Completion, Engine, Progress, StepActions};
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::step::{ExecMode, Step};
/// use switchover::ids::{Side, Window};
/// use switchover::topology::Topology;
///
/// /// Answers blocking steps at once and split-phase ones from another thread, as a
/// /// backend's reply would.
/// #[derive(Default)]
/// struct Counting(AtomicUsize);
/// impl StepActions for Counting {
///     fn start(&self, step: &Step, done: Completion) {
///         self.0.fetch_add(1, Ordering::SeqCst);
///         match step.mode {
///             ExecMode::Blocking => done.complete(Ok(())),
///             ExecMode::Split => drop(std::thread::spawn(move || done.complete(Ok(())))),
///         }
///     }
/// }
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap());
/// let actions = Arc::new(Counting::default());
/// let mut progress = Progress::new(&plan);
/// for w in Window::ALL {
///     assert!(Engine::new(1).run(&plan, w, actions.clone(), &mut progress).ok());
/// }
/// assert_eq!(actions.0.load(Ordering::SeqCst), plan.len()); // each step started once
/// ```
pub trait StepActions: Send + Sync + 'static {
    /// Starts `step`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::error::StepFailure;
    /// use switchover::exec::{Completion, Engine, Progress, StepActions};
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::{Side, Window};
    /// use switchover::step::{Step, StepKind};
    /// use switchover::topology::Topology;
    ///
    /// /// Every `get_vring_base` fails; everything else succeeds.
    /// struct NoBase;
    /// impl StepActions for NoBase {
    ///     fn start(&self, step: &Step, done: Completion) {
    ///         if step.kind == StepKind::GetVringBase {
    ///             done.complete(Err(StepFailure::Backend { message: "EIO".into() }));
    ///         } else {
    ///             done.complete(Ok(()));
    ///         }
    ///     }
    /// }
    /// let topo = Arc::new(Topology::preset("single-net").unwrap());
    /// let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap());
    /// let r = Engine::new(1).run(&plan, Window::Blackout, Arc::new(NoBase), &mut Progress::new(&plan));
    /// let failure = r.failure.unwrap();
    /// assert_eq!(failure.kind, StepKind::GetVringBase);
    /// assert_eq!(plan.step(failure.step).kind, StepKind::GetVringBase);
    /// ```
    fn start(&self, step: &Step, done: Completion);

    /// Starts a caller-affine step ([`Affinity::Caller`]) on the thread that called
    /// [`Engine::run`] — the one that holds the VMM's big lock. `lane` proves it:
    /// only the engine makes a [`CallerLane`], only on that thread, and it cannot
    /// be sent to another. VMM code that needs its big lock can ask for
    /// `&CallerLane`. By default, the same as [`StepActions::start`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::thread::ThreadId;
    /// use parking_lot::Mutex;
    /// use switchover::exec::{CallerLane, Completion, Engine, Progress, StepActions};
    /// use switchover::ids::{Affinity, Side, Window};
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::step::Step;
    /// use switchover::topology::Topology;
    ///
    /// /// The VMM's big lock, reachable only with the caller-lane token.
    /// struct Vmm {
    ///     on_caller: Mutex<Vec<ThreadId>>,
    /// }
    /// impl Vmm {
    ///     fn commit_memory_map(&self, _lane: &CallerLane) {
    ///         self.on_caller.lock().push(std::thread::current().id());
    ///     }
    /// }
    /// impl StepActions for Vmm {
    ///     fn start(&self, step: &Step, done: Completion) {
    ///         assert_eq!(step.affinity, Affinity::Any); // caller-affine steps never come here
    ///         done.complete(Ok(()));
    ///     }
    ///     fn start_on_caller(&self, _step: &Step, lane: &CallerLane, done: Completion) {
    ///         self.commit_memory_map(lane);
    ///         done.complete(Ok(()));
    ///     }
    /// }
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap());
    /// let vmm = Arc::new(Vmm { on_caller: Mutex::new(vec![]) });
    /// let (mut engine, mut progress) = (Engine::new(2), Progress::new(&plan));
    /// for w in Window::ALL {
    ///     assert!(engine.run(&plan, w, vmm.clone(), &mut progress).ok());
    /// }
    /// // Every caller-affine step (the final RAM pass, the memory transaction's begin
    /// // and commit) ran on this thread.
    /// let caller_steps = plan.steps().iter().filter(|s| s.affinity == Affinity::Caller).count();
    /// assert_eq!(*vmm.on_caller.lock(), vec![std::thread::current().id(); caller_steps]);
    /// ```
    fn start_on_caller(&self, step: &Step, lane: &CallerLane, done: Completion) {
        let _ = lane;
        self.start(step, done)
    }

    /// Brings back the backend of a device whose control channel was lost (crashed,
    /// hung, closed): a new backend process or connection, with no ring state. Used by
    /// rollback before the device's full start sequence. `false` if it cannot.
    ///
    /// ```
    /// use switchover::exec::{Completion, StepActions};
    /// use switchover::step::Step;
    /// use switchover::ids::DeviceId;
    /// struct Inline;
    /// impl StepActions for Inline {
    ///     fn start(&self, _step: &Step, done: Completion) {
    ///         done.complete(Ok(()));
    ///     }
    /// }
    /// struct Restartable;
    /// impl StepActions for Restartable {
    ///     fn start(&self, _step: &Step, done: Completion) {
    ///         done.complete(Ok(()));
    ///     }
    ///     fn reconnect(&self, _device: DeviceId) -> bool {
    ///         true // e.g. spawned a new backend process and connected to it
    ///     }
    /// }
    /// assert!(!Inline.reconnect(DeviceId(0))); // by default a lost backend stays lost
    /// assert!(Restartable.reconnect(DeviceId(0)));
    /// ```
    fn reconnect(&self, _device: DeviceId) -> bool {
        false
    }

    /// For a ring whose `GET_VRING_BASE` never answered, the base recovered from
    /// guest memory (the used ring's index, once nothing is in flight), if possible.
    ///
    /// ```
    /// use switchover::exec::{Completion, StepActions};
    /// use switchover::step::Step;
    /// use switchover::ids::DeviceId;
    /// struct Inline;
    /// impl StepActions for Inline {
    ///     fn start(&self, _step: &Step, done: Completion) {
    ///         done.complete(Ok(()));
    ///     }
    /// }
    /// struct FromGuestMemory;
    /// impl StepActions for FromGuestMemory {
    ///     fn start(&self, _step: &Step, done: Completion) {
    ///         done.complete(Ok(()));
    ///     }
    ///     fn recover_base(&self, _device: DeviceId, ring: u32) -> Option<u16> {
    ///         Some(100 + ring as u16) // the used ring's index, read from guest memory
    ///     }
    /// }
    /// assert_eq!(Inline.recover_base(DeviceId(0), 1), None);
    /// assert_eq!(FromGuestMemory.recover_base(DeviceId(0), 1), Some(101));
    /// ```
    fn recover_base(&self, _device: DeviceId, _ring: u32) -> Option<u16> {
        None
    }

    /// Cuts a device's backend off for good (closes its connection, stops its
    /// process): used by a destination whose fence could not stop one of the
    /// device's rings, so that no ring of it stays live once the destination has
    /// said it will not run the guest. `false` if it cannot.
    ///
    /// ```
    /// use switchover::exec::{Completion, StepActions};
    /// use switchover::ids::DeviceId;
    /// use switchover::step::Step;
    /// struct Inline;
    /// impl StepActions for Inline {
    ///     fn start(&self, _step: &Step, done: Completion) {
    ///         done.complete(Ok(()));
    ///     }
    /// }
    /// assert!(!Inline.abandon(DeviceId(0))); // by default nothing can be cut off
    /// ```
    fn abandon(&self, _device: DeviceId) -> bool {
        false
    }
}

/// What the engine does when a step fails.
///
/// ```
/// use std::sync::Arc;
/// use switchover::error::StepFailure;
/// use switchover::exec::{Completion, Engine, FailurePolicy, Progress, StepActions, StepOutcome, Threads};
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::ids::{Side, Window};
/// use switchover::step::{Step, StepKind};
/// use switchover::topology::Topology;
///
/// /// Ring 0's `get_vring_base` fails.
/// struct FailRing0;
/// impl StepActions for FailRing0 {
///     fn start(&self, step: &Step, done: Completion) {
///         let fail = step.kind == StepKind::GetVringBase && step.ring == Some(0);
///         done.complete(if fail { Err(StepFailure::Disconnected) } else { Ok(()) });
///     }
/// }
/// let topo = Arc::new(Topology::preset("single-net").unwrap());
/// let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap());
/// assert_eq!(FailurePolicy::default(), FailurePolicy::StopAll);
/// let mut engine = Engine::with_spawner(0, FailurePolicy::ContinueIndependent, &Threads);
/// let mut p = Progress::new(&plan);
/// let r = engine.run(&plan, Window::Blackout, Arc::new(FailRing0), &mut p);
/// assert_eq!(r.failures.len(), 1);
/// // Ring 1 does not depend on ring 0: it still stopped.
/// let ring1 = plan.in_window(Window::Blackout).find(|s| s.kind == StepKind::GetVringBase && s.ring == Some(1)).unwrap();
/// assert_eq!(p.outcome(ring1.id), StepOutcome::Done);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Start nothing new; let running steps finish; end the run (for all-or-nothing
    /// switchover with rollback).
    #[default]
    StopAll,
    /// Keep running the steps that do not depend on the failed one.
    ContinueIndependent,
}

/// How each step of a plan ended, accumulated over the windows run so far.
///
/// ```
/// use std::sync::Arc;
/// use switchover::error::StepFailure;
/// use switchover::exec::{Completion, Engine, Progress, StepActions, StepOutcome};
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::ids::{Side, Window};
/// use switchover::step::Step;
/// use switchover::topology::Topology;
/// struct Fail;
/// impl StepActions for Fail {
///     fn start(&self, _step: &Step, done: Completion) {
///         done.complete(Err(StepFailure::Other { message: "no".into() }));
///     }
/// }
/// let topo = Arc::new(Topology::preset("single-blk").unwrap());
/// let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap());
/// let mut p = Progress::new(&plan);
/// let r = Engine::new(0).run(&plan, Window::Blackout, Arc::new(Fail), &mut p);
/// assert_eq!(p.outcome(r.records[0].step), StepOutcome::Failed);
/// // Nothing ran in cleanup, nor after the failure.
/// assert!(p.with(StepOutcome::NotRun).count() > 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Not run (yet, or because a predecessor failed or the run stopped).
    NotRun,
    /// Finished successfully.
    Done,
    /// Failed.
    Failed,
    /// Passed its deadline.
    TimedOut,
}

impl StepOutcome {
    /// Snake-case name.
    ///
    /// ```
    /// use switchover::exec::StepOutcome;
    /// assert_eq!(StepOutcome::TimedOut.name(), "timed_out");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            StepOutcome::NotRun => "not_run",
            StepOutcome::Done => "done",
            StepOutcome::Failed => "failed",
            StepOutcome::TimedOut => "timed_out",
        }
    }
}

/// Outcomes of a plan's steps across windows. A step already `Done` is never run
/// again, so re-running a window after a partial failure is idempotent.
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
/// let mut engine = Engine::new(1);
/// let mut p = Progress::new(&plan);
/// let first = engine.run(&plan, Window::Blackout, Arc::new(Inline), &mut p);
/// assert_eq!(first.records.len(), plan.in_window(Window::Blackout).count());
/// // Running the window again starts nothing: every step of it is done.
/// let again = engine.run(&plan, Window::Blackout, Arc::new(Inline), &mut p);
/// assert!(again.records.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct Progress {
    outcome: Vec<StepOutcome>,
}

impl Progress {
    /// All steps not run.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::exec::{Progress, StepOutcome};
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// let p = Progress::new(&plan);
    /// assert_eq!(p.with(StepOutcome::NotRun).count(), plan.len());
    /// assert!(!p.all_done());
    /// ```
    pub fn new(plan: &Plan) -> Self {
        Progress { outcome: vec![StepOutcome::NotRun; plan.len()] }
    }
    /// A step's outcome.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::exec::{Progress, StepOutcome};
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::{Side, StepId};
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// assert_eq!(Progress::new(&plan).outcome(StepId(0)), StepOutcome::NotRun);
    /// ```
    pub fn outcome(&self, id: StepId) -> StepOutcome {
        self.outcome[id.0 as usize]
    }
    fn set(&mut self, id: StepId, o: StepOutcome) {
        self.outcome[id.0 as usize] = o;
    }
    /// Whether every step is done.
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
    /// let plan = Arc::new(build(&topo, Side::Destination, &RecipeOptions::engine(), &NoCosts).unwrap());
    /// let (mut engine, mut p) = (Engine::new(1), Progress::new(&plan));
    /// engine.run(&plan, Window::Prepare, Arc::new(Inline), &mut p);
    /// assert!(!p.all_done()); // the blackout window has not run yet
    /// engine.run(&plan, Window::Blackout, Arc::new(Inline), &mut p);
    /// engine.run(&plan, Window::Cleanup, Arc::new(Inline), &mut p);
    /// assert!(p.all_done());
    /// ```
    pub fn all_done(&self) -> bool {
        self.outcome.iter().all(|o| *o == StepOutcome::Done)
    }
    /// Ids of steps with outcome `o`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::exec::{Completion, Engine, Progress, StepActions, StepOutcome};
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
    /// let mut p = Progress::new(&plan);
    /// Engine::new(1).run(&plan, Window::Blackout, Arc::new(Inline), &mut p);
    /// assert!(p.with(StepOutcome::Done).all(|id| plan.step(id).window == Window::Blackout));
    /// assert_eq!(p.with(StepOutcome::Done).count(), plan.in_window(Window::Blackout).count());
    /// ```
    pub fn with(&self, o: StepOutcome) -> impl Iterator<Item = StepId> + '_ {
        self.outcome.iter().enumerate().filter(move |(_, x)| **x == o).map(|(i, _)| StepId(i as u32))
    }
}

/// One step's record in a run.
///
/// ```
/// use std::sync::Arc;
/// use switchover::exec::{Completion, Engine, Progress, StepActions, StepOutcome};
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
/// let r = Engine::new(2).run(&plan, Window::Blackout, Arc::new(Inline), &mut Progress::new(&plan));
/// for rec in &r.records {
///     assert_eq!(rec.outcome, StepOutcome::Done);
///     assert!(rec.start <= rec.end && rec.end <= r.wall);
///     assert!((rec.lane as usize) < r.lanes);
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepRecord {
    /// The step.
    pub step: StepId,
    /// How it ended.
    pub outcome: StepOutcome,
    /// The lane that started it (0 = caller).
    pub lane: Lane,
    /// Start, relative to the run's start.
    pub start: Duration,
    /// End (reply received), relative to the run's start.
    pub end: Duration,
}

/// What one [`Engine::run`] did.
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
/// let r = Engine::new(3).run(&plan, Window::Cleanup, Arc::new(Inline), &mut Progress::new(&plan));
/// assert_eq!((r.side, r.window, r.lanes), (Side::Source, Window::Cleanup, 4));
/// assert!(r.failures.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The side of the plan.
    pub side: Side,
    /// The window run.
    pub window: Window,
    /// When the run started.
    pub started_at: Instant,
    /// How long it took.
    pub wall: Duration,
    /// Lanes available (workers + caller).
    pub lanes: usize,
    /// Records of the steps that were started.
    pub records: Vec<StepRecord>,
    /// The first failure, naming device and step.
    pub failure: Option<StepError>,
    /// Every failure, in order.
    pub failures: Vec<StepError>,
}

impl RunReport {
    /// Whether every step of the window that could run finished well.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::error::StepFailure;
    /// use switchover::exec::{Completion, Engine, Progress, StepActions};
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::{Side, Window};
    /// use switchover::step::Step;
    /// use switchover::topology::Topology;
    /// /// Never answers: dropping the completion fails the step as abandoned.
    /// struct Drops;
    /// impl StepActions for Drops {
    ///     fn start(&self, _step: &Step, done: Completion) {
    ///         drop(done);
    ///     }
    /// }
    /// let topo = Arc::new(Topology::preset("single-net").unwrap());
    /// let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap());
    /// let r = Engine::new(1).run(&plan, Window::Blackout, Arc::new(Drops), &mut Progress::new(&plan));
    /// assert!(!r.ok());
    /// assert_eq!(r.failure.unwrap().failure, StepFailure::Abandoned);
    /// ```
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// Makes worker threads; a loom model supplies its own.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use switchover::exec::{Engine, FailurePolicy, Spawn, Threads, WorkerHandle};
///
/// /// Counts the workers an engine starts, and starts them as OS threads.
/// #[derive(Default)]
/// struct Counting(AtomicUsize);
/// impl Spawn for Counting {
///     fn spawn(&self, name: String, f: Box<dyn FnOnce() + Send + 'static>) -> Box<dyn WorkerHandle> {
///         assert!(name.starts_with("switchover-w"));
///         self.0.fetch_add(1, Ordering::SeqCst);
///         Threads.spawn(name, f)
///     }
/// }
/// let spawner = Counting::default();
/// let engine = Engine::with_spawner(3, FailurePolicy::StopAll, &spawner);
/// assert_eq!(spawner.0.load(Ordering::SeqCst), engine.workers());
/// ```
pub trait Spawn {
    /// Starts `f` on a new thread.
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use switchover::exec::{Spawn, Threads};
    /// let (tx, rx) = mpsc::channel();
    /// let h = Threads.spawn("worker".into(), Box::new(move || tx.send(std::thread::current().name().map(String::from)).unwrap()));
    /// h.join();
    /// assert_eq!(rx.recv().unwrap().as_deref(), Some("worker"));
    /// ```
    fn spawn(&self, name: String, f: Box<dyn FnOnce() + Send + 'static>) -> Box<dyn WorkerHandle>;
}

/// A started worker that can be joined.
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
/// use switchover::exec::{Spawn, Threads};
/// let ran = Arc::new(AtomicBool::new(false));
/// let r = ran.clone();
/// let h = Threads.spawn("w".into(), Box::new(move || r.store(true, Ordering::SeqCst)));
/// h.join(); // returns once the worker has ended
/// assert!(ran.load(Ordering::SeqCst));
/// ```
pub trait WorkerHandle: Send {
    /// Waits for the worker to end.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::sync::Arc;
    /// use switchover::exec::{Spawn, Threads};
    /// let n = Arc::new(AtomicU32::new(0));
    /// let handles: Vec<_> = (0..4)
    ///     .map(|_| {
    ///         let n = n.clone();
    ///         Threads.spawn("w".into(), Box::new(move || drop(n.fetch_add(1, Ordering::SeqCst))))
    ///     })
    ///     .collect();
    /// handles.into_iter().for_each(|h| h.join());
    /// assert_eq!(n.load(Ordering::SeqCst), 4);
    /// ```
    fn join(self: Box<Self>);
}

/// The default [`Spawn`]: OS threads (loom threads under `--cfg loom`).
///
/// ```
/// use switchover::exec::{Engine, FailurePolicy, Threads};
/// let e = Engine::with_spawner(2, FailurePolicy::StopAll, &Threads);
/// assert_eq!(e.workers(), Engine::new(2).workers());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Threads;

#[cfg(not(loom))]
impl WorkerHandle for std::thread::JoinHandle<()> {
    fn join(self: Box<Self>) {
        let _ = (*self).join();
    }
}

#[cfg(loom)]
impl WorkerHandle for loom::thread::JoinHandle<()> {
    fn join(self: Box<Self>) {
        let _ = (*self).join();
    }
}

impl Spawn for Threads {
    fn spawn(&self, name: String, f: Box<dyn FnOnce() + Send + 'static>) -> Box<dyn WorkerHandle> {
        Box::new(crate::sync::spawn(name, f))
    }
}

struct RunState {
    epoch: u64,
    plan: StdArc<Plan>,
    actions: StdArc<dyn StepActions>,
    sched: Sched,
    clock: clock::Clock,
}

struct State {
    shutdown: bool,
    epoch: u64,
    run: Option<RunState>,
    idle_workers: usize,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    workers_cv: Condvar,
    caller_cv: Condvar,
    /// The tag of the run whose lanes may start steps ([`live_tag`]); 0 once it
    /// stopped or ended.
    live: AtomicU32,
    /// Per lane, the step it is starting or running now (id + 1; 0 for none).
    current: Box<[AtomicU32]>,
}

/// Steps a lane takes per lock acquisition when they are brief.
const BATCH: usize = 16;

/// A step a lane started: when, and its answer (with its time) if it came inline.
type Started = (StepId, clock::Stamp, Option<(Result<(), StepFailure>, clock::Stamp)>);

/// What a lane needs to start the steps of its batch.
struct LaneCtx<'a> {
    shared: &'a Arc<Shared>,
    epoch: u64,
    plan: &'a Plan,
    actions: &'a dyn StepActions,
    lane: Lane,
    clock: clock::Clock,
    /// Present on the caller lane only.
    caller: Option<&'a CallerLane>,
    /// Whether a failure stops the run (then the rest of a batch does not start
    /// after a step of it failed).
    stop_on_failure: bool,
}

/// The tag of a run in [`Shared::live`].
fn live_tag(epoch: u64) -> u32 {
    epoch as u32
}

/// Starts each step of a batch on this lane, stamping its real start (and inline
/// end). A step that answered inline after its deadline has timed out. The steps
/// of the batch not started — the run stopped meanwhile, or a step of the batch
/// failed and failures stop the run — go to `rest`, to be given back.
fn run_batch(cx: &LaneCtx<'_>, batch: &mut Vec<StepId>, done: &mut Vec<Started>, rest: &mut Vec<StepId>) {
    let mut stop = false;
    for id in batch.drain(..) {
        stop = stop || (!done.is_empty() && cx.shared.live.load(Ordering::Acquire) != live_tag(cx.epoch));
        if stop {
            rest.push(id);
            continue;
        }
        cx.shared.current[cx.lane as usize].store(id.0 + 1, Ordering::Release);
        let t0 = cx.clock.now();
        let mut inline = start_step(cx.shared, cx.epoch, cx.plan, cx.actions, id, cx.lane, cx.caller).map(|r| (r, cx.clock.now()));
        if let Some((r, at)) = &mut inline {
            let deadline = cx.plan.step(id).deadline;
            if u128::from(at.saturating_sub(t0)) > deadline.as_nanos() {
                *r = Err(StepFailure::Timeout { after: deadline });
            }
            stop = cx.stop_on_failure && r.is_err();
        }
        done.push((id, t0, inline));
    }
}

impl Shared {
    /// Delivers a step's answer from any thread.
    pub(crate) fn complete(&self, epoch: u64, id: StepId, r: Result<(), StepFailure>) {
        let mut st = self.state.lock();
        let w = Self::record(&mut st, epoch, id, r);
        self.halt_if_stopping(&st);
        self.wake(&st, w, 0);
    }

    /// Records a lane's batch: when each step really started and, for those that
    /// answered before `start` returned, their answer and its time; gives back the
    /// steps it did not start. The lane goes on to take more steps itself.
    fn record_batch(&self, st: &mut State, epoch: u64, lane: Lane, done: &mut Vec<Started>, rest: &mut Vec<StepId>) {
        let mut total = Woken::default();
        let mut add = |w: Woken| {
            total.any += w.any;
            total.caller += w.caller;
        };
        if let Some(run) = st.run.as_mut().filter(|r| r.epoch == epoch) {
            let RunState { plan, sched, .. } = run;
            for (id, started, inline) in done.drain(..) {
                sched.restamp(id, started);
                if let Some((r, at)) = inline {
                    add(sched.complete(plan, id, r, at).unwrap_or_default());
                }
            }
            for id in rest.drain(..) {
                add(sched.unstart(plan, id));
            }
        }
        done.clear();
        rest.clear();
        // Under the lock, so an expiry never sees a lane between its last answer
        // and this record.
        self.current[lane as usize].store(0, Ordering::Release);
        self.halt_if_stopping(st);
        self.wake(st, total, 1);
    }

    /// Once the run stops taking new steps, lanes stop starting the rest of their batches.
    fn halt_if_stopping(&self, st: &State) {
        if st.run.as_ref().is_some_and(|r| r.sched.stopping()) {
            self.live.store(0, Ordering::Release);
        }
    }

    fn record(st: &mut State, epoch: u64, id: StepId, r: Result<(), StepFailure>) -> Woken {
        let Some(run) = st.run.as_mut() else { return Woken::default() };
        if run.epoch != epoch {
            return Woken::default();
        }
        let now = run.clock.now();
        let RunState { plan, sched, .. } = run;
        sched.complete(plan, id, r, now).unwrap_or_default()
    }

    /// Wakes whoever can now make progress; `lane_continues` of the newly ready
    /// any-lane steps are left to the lane that made them ready.
    fn wake(&self, st: &State, w: Woken, lane_continues: usize) {
        let idle = st.idle_workers;
        let finished = st.run.as_ref().is_some_and(|r| r.sched.finished());
        let any = w.any.saturating_sub(lane_continues);
        for _ in 0..any.min(idle) {
            self.workers_cv.notify_one();
        }
        if w.caller > 0 || finished || any > idle {
            self.caller_cv.notify_one();
        }
    }
}

/// The worker pool and the entry point a VMM calls from its vm-state-change path.
///
/// ```
/// use std::sync::Arc;
/// use switchover::exec::{Completion, Engine, Progress, StepActions, CALLER};
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::ids::{Affinity, Side, Window};
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
/// let mut engine = Engine::new(2); // started before the window opens
/// let r = engine.run(&plan, Window::Cleanup, Arc::new(Inline), &mut Progress::new(&plan));
/// // Caller-affine steps (the memory transaction) ran on the calling thread.
/// for rec in &r.records {
///     if plan.step(rec.step).affinity == Affinity::Caller {
///         assert_eq!(rec.lane, CALLER);
///     }
/// }
/// ```
pub struct Engine {
    shared: Arc<Shared>,
    handles: std::sync::Mutex<Vec<Box<dyn WorkerHandle>>>,
    workers: usize,
    policy: FailurePolicy,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("workers", &self.workers).field("policy", &self.policy).finish()
    }
}

impl Engine {
    /// Starts `workers` worker threads (0 is allowed: the caller lane runs everything).
    ///
    /// ```
    /// use switchover::exec::Engine;
    /// assert_eq!(Engine::new(4).workers(), 4);
    /// assert_eq!(Engine::new(0).workers(), 0); // the caller lane runs everything
    /// ```
    pub fn new(workers: usize) -> Engine {
        Engine::with_spawner(workers, FailurePolicy::StopAll, &Threads)
    }

    /// Starts `workers` workers with `spawn` and the given failure policy.
    ///
    /// ```
    /// use switchover::exec::{Engine, FailurePolicy, Threads};
    /// let e = Engine::with_spawner(2, FailurePolicy::ContinueIndependent, &Threads);
    /// assert_eq!(e.workers(), 2);
    /// ```
    pub fn with_spawner(workers: usize, policy: FailurePolicy, spawn: &dyn Spawn) -> Engine {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { shutdown: false, epoch: 0, run: None, idle_workers: 0 }),
            workers_cv: Condvar::new(),
            caller_cv: Condvar::new(),
            live: AtomicU32::new(0),
            current: (0..=workers).map(|_| AtomicU32::new(0)).collect(),
        });
        let handles = (0..workers)
            .map(|i| {
                let sh = shared.clone();
                let lane = (i + 1) as Lane;
                spawn.spawn(format!("switchover-w{lane}"), Box::new(move || worker_loop(&sh, lane)))
            })
            .collect();
        Engine { shared, handles: std::sync::Mutex::new(handles), workers, policy }
    }

    /// Sets the failure policy for later runs.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::error::StepFailure;
    /// use switchover::exec::{Completion, Engine, FailurePolicy, Progress, StepActions, StepOutcome};
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::ids::{Side, Window};
    /// use switchover::step::{Step, StepKind};
    /// use switchover::topology::Topology;
    /// struct FailDisable;
    /// impl StepActions for FailDisable {
    ///     fn start(&self, step: &Step, done: Completion) {
    ///         let fail = step.kind == StepKind::VringDisable && step.device.0 == 0;
    ///         done.complete(if fail { Err(StepFailure::Disconnected) } else { Ok(()) });
    ///     }
    /// }
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap());
    /// let mut engine = Engine::new(0);
    /// engine.set_policy(FailurePolicy::ContinueIndependent);
    /// let mut p = Progress::new(&plan);
    /// engine.run(&plan, Window::Blackout, Arc::new(FailDisable), &mut p);
    /// // The other devices stopped all the same.
    /// let blk1 = topo.device_by_name("blk1").unwrap().id;
    /// assert!(plan.in_window(Window::Blackout).filter(|s| s.device == blk1).all(|s| p.outcome(s.id) == StepOutcome::Done));
    /// ```
    pub fn set_policy(&mut self, p: FailurePolicy) {
        self.policy = p;
    }

    /// Number of workers (the caller lane not counted).
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
    /// let mut engine = Engine::new(3);
    /// let r = engine.run(&plan, Window::Blackout, Arc::new(Inline), &mut Progress::new(&plan));
    /// assert_eq!(r.lanes, engine.workers() + 1); // plus the caller lane
    /// ```
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Runs the steps of `window` of `plan`, on the workers and on the calling
    /// thread, until every step that can run has ended. Steps already done in
    /// `progress` are not run again; outcomes are written back into it.
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
    /// let mut engine = Engine::new(1);
    /// let mut progress = Progress::new(&plan);
    /// let r = engine.run(&plan, Window::Blackout, Arc::new(Inline), &mut progress);
    /// assert!(r.ok());
    /// // Only the window's steps ran, each once.
    /// let mut ran: Vec<_> = r.records.iter().map(|x| x.step).collect();
    /// ran.sort();
    /// assert_eq!(ran, plan.in_window(Window::Blackout).map(|s| s.id).collect::<Vec<_>>());
    /// ```
    pub fn run(&mut self, plan: &StdArc<Plan>, window: Window, actions: StdArc<dyn StepActions>, progress: &mut Progress) -> RunReport {
        let span = tracing::info_span!("window", side = plan.side().short(), window = window.name());
        let _g = span.enter();
        let clock = clock::Clock::start();
        let t0 = clock.origin();
        let epoch;
        {
            let mut st = self.shared.state.lock();
            // `&mut self` keeps a second run from starting while this one runs; a
            // run left behind by a panic outside any action is superseded (its
            // late answers carry an old epoch and are ignored).
            st.epoch += 1;
            epoch = st.epoch;
            let sched = Sched::new(plan, window, self.policy, progress);
            st.run = Some(RunState { epoch, plan: plan.clone(), actions: actions.clone(), sched, clock });
            self.shared.live.store(live_tag(epoch), Ordering::Release);
        }
        self.shared.workers_cv.notify_all();
        // The caller lane.
        let caller = CallerLane::here();
        let mut batch = Vec::with_capacity(BATCH);
        let mut answers = Vec::with_capacity(BATCH);
        let mut rest = Vec::new();
        let mut st = self.shared.state.lock();
        loop {
            let run = st.run.as_mut().expect("run present");
            let now = run.clock.now();
            let current = |lane: Lane| self.shared.current.get(lane as usize).map_or(0, |c| c.load(Ordering::Acquire));
            if run.sched.expire(plan, now, &current) > 0 {
                self.shared.halt_if_stopping(&st);
                continue;
            }
            if run.sched.finished() {
                break;
            }
            run.sched.next_batch(plan, CALLER, now, BATCH, &mut batch);
            if !batch.is_empty() {
                let clock = run.clock;
                let stop_on_failure = run.sched.stops_on_failure();
                drop(st);
                let cx = LaneCtx {
                    shared: &self.shared,
                    epoch,
                    plan,
                    actions: &*actions,
                    lane: CALLER,
                    clock,
                    caller: Some(&caller),
                    stop_on_failure,
                };
                run_batch(&cx, &mut batch, &mut answers, &mut rest);
                st = self.shared.state.lock();
                self.shared.record_batch(&mut st, epoch, CALLER, &mut answers, &mut rest);
                continue;
            }
            match run.sched.next_deadline() {
                Some(t) => {
                    let at = run.clock.instant(t);
                    self.shared.caller_cv.wait_until(&mut st, at);
                }
                None => self.shared.caller_cv.wait(&mut st),
            }
        }
        let run = st.run.take().expect("run present");
        self.shared.live.store(0, Ordering::Release);
        drop(st);
        let wall = t0.elapsed();
        run.sched.settle(plan, progress);
        let failures: Vec<StepError> = run.sched.failures.iter().map(|(id, f)| StepError::new(plan, *id, f.clone())).collect();
        let records = plan
            .in_window(window)
            .filter(|s| run.sched.was_started(s.id))
            .map(|s| {
                let t = run.sched.times[s.id.0 as usize];
                StepRecord {
                    step: s.id,
                    outcome: progress.outcome(s.id),
                    lane: t.lane,
                    start: Duration::from_nanos(t.start_ns),
                    end: Duration::from_nanos(t.end_ns.max(t.start_ns)),
                }
            })
            .collect::<Vec<_>>();
        tracing::info!(steps = records.len(), wall_us = wall.as_micros() as u64, failed = failures.len(), "window done");
        RunReport {
            side: plan.side(),
            window,
            started_at: t0,
            wall,
            lanes: self.workers + 1,
            records,
            failure: failures.first().cloned(),
            failures,
        }
    }
}

/// Starts a step on this lane; returns its answer if it answered before `start`
/// returned (the lane then records it and takes its next step under one lock).
///
/// A panic in the action is caught here: the step fails as
/// [`StepFailure::Panicked`] (unless it had already answered) and the lane goes on,
/// so neither a worker nor the caller's run is lost to it.
fn start_step(
    shared: &Arc<Shared>,
    epoch: u64,
    plan: &Plan,
    actions: &dyn StepActions,
    id: StepId,
    lane: Lane,
    caller: Option<&CallerLane>,
) -> Option<Result<(), StepFailure>> {
    let step = plan.step(id);
    tracing::trace!(step = id.0, kind = step.kind.name(), device = plan.device_name(id), lane, "start");
    completion::begin_inline(shared, epoch, id);
    let done = Completion::engine(shared.clone(), epoch, id);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match (caller, step.affinity) {
        (Some(token), Affinity::Caller) => actions.start_on_caller(step, token, done),
        _ => actions.start(step, done),
    }));
    let answer = completion::end_inline();
    match r {
        Ok(()) => answer,
        Err(payload) => {
            let message = panic_message(&*payload);
            tracing::error!(step = id.0, kind = step.kind.name(), device = plan.device_name(id), %message, "step action panicked");
            match answer {
                // It panicked before answering: the dropped completion answered
                // "panicked" inline; give that answer the panic's message.
                Some(Err(StepFailure::Panicked { .. })) | None => Some(Err(StepFailure::Panicked { message })),
                // It answered, then panicked: the answer stands.
                Some(a) => Some(a),
            }
        }
    }
}

/// The message of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

fn worker_loop(shared: &Arc<Shared>, lane: Lane) {
    let mut cached: Option<(u64, StdArc<Plan>, StdArc<dyn StepActions>)> = None;
    let mut batch = Vec::with_capacity(BATCH);
    let mut answers = Vec::with_capacity(BATCH);
    let mut rest = Vec::new();
    let mut st = shared.state.lock();
    loop {
        if st.shutdown {
            return;
        }
        let mut epoch = 0;
        let mut clock = None;
        let mut stop_on_failure = true;
        if let Some(run) = st.run.as_mut() {
            if cached.as_ref().map(|c| c.0) != Some(run.epoch) {
                cached = Some((run.epoch, run.plan.clone(), run.actions.clone()));
            }
            let plan = &cached.as_ref().expect("cached").1;
            let now = run.clock.now();
            run.sched.next_batch(plan, lane, now, BATCH, &mut batch);
            epoch = run.epoch;
            clock = Some(run.clock);
            stop_on_failure = run.sched.stops_on_failure();
        }
        let (false, Some(clock)) = (batch.is_empty(), clock) else {
            st.idle_workers += 1;
            shared.workers_cv.wait(&mut st);
            st.idle_workers -= 1;
            continue;
        };
        drop(st);
        let (_, plan, actions) = cached.as_ref().expect("cached");
        let cx = LaneCtx { shared, epoch, plan, actions: &**actions, lane, clock, caller: None, stop_on_failure };
        run_batch(&cx, &mut batch, &mut answers, &mut rest);
        st = shared.state.lock();
        shared.record_batch(&mut st, epoch, lane, &mut answers, &mut rest);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shared.state.lock().shutdown = true;
        self.shared.workers_cv.notify_all();
        let handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for h in handles {
            h.join();
        }
    }
}
