//! The executor: a worker pool started before the window opens, which runs one
//! window of a plan at a time.
//!
//! * Each lane (the caller's and each worker's) runs the steps it made ready
//!   itself, most urgent (longest remaining path) first, without a shared lock: a
//!   step whose one remaining predecessor ended is ready at once, a step waiting
//!   for several counts them down atomically. The engine's one mutex is taken only
//!   on slow paths: the shared pool holds a more urgent step (or the lane has
//!   none), a worker waits for work (the lane hands its other steps over), a
//!   caller-affine step became ready on a worker, a step's footprint is contended,
//!   a step failed, or a split-phase step did not answer before `start` returned.
//! * A step starts only when its whole footprint is free, and two conflicting
//!   steps never run at the same time. Footprint resources whose users in a window
//!   are all ordered by the plan's dependencies are excluded by those alone
//!   ([`crate::plan::Plan::contended`]); the rest are taken at once, under the
//!   engine's mutex, or the step waits parked on the busy one — no lane ever waits
//!   for a footprint.
//! * Caller-affine steps run only on the thread that called [`Engine::run`] (the
//!   caller lane), which also takes other steps; workers never run them, so a worker
//!   never waits for the caller's big lock.
//! * Split-phase steps return after sending their request; the reply completes them
//!   from whichever thread receives it, so one lane keeps many round trips in flight.
//! * Each step runs at most once; a failed step's dependents never start; a step
//!   that passes its deadline fails with a time-out and its late answer is ignored
//!   (a step whose action returns past its deadline, on any lane, timed out
//!   whatever it answered; so did a step whose action reports a time-out). Once a
//!   failure stops the run, no lane starts another step of it; the step a worker
//!   is stuck in is the one named.
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
mod controls;
mod expect;
mod lane;
mod ready;
mod run;

use std::sync::Arc as StdArc;
use std::time::{Duration, Instant};

pub use caller::CallerLane;
pub use completion::Completion;
#[cfg(feature = "negative-controls")]
pub use controls::Controls;
pub use expect::{Expected, RoundTrip};
pub use lane::Lane;

use crate::error::{StepError, StepFailure};
use crate::ids::{DeviceId, Side, StepId, Window};
use crate::plan::Plan;
use crate::step::Step;
use crate::sync::{Arc, AtomicU64, Condvar, Mutex, Ordering};
use completion::LaneHandle;
#[cfg(not(feature = "negative-controls"))]
use controls::Controls;
use lane::{LaneCtx, Slot};
use run::{Inner, Rec, RunData, RunInner};

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

    /// Starts a caller-affine step ([`Affinity::Caller`](crate::ids::Affinity::Caller)) on the thread that called
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

    /// Measures, before the window opens, a round trip on `device`'s backend: a
    /// request that changes nothing and has a reply (vhost-user `GET_FEATURES`,
    /// say), once alone and then a few back to back. The prediction
    /// ([`crate::predict`]) takes from it what a plain request costs on that
    /// channel. `None` (the default): cannot measure.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover::exec::{Completion, StepActions};
    /// use switchover::ids::DeviceId;
    /// use switchover::predict::RoundTrip;
    /// use switchover::step::Step;
    /// struct Backend;
    /// impl StepActions for Backend {
    ///     fn start(&self, _step: &Step, done: Completion) {
    ///         done.complete(Ok(()));
    ///     }
    ///     fn probe(&self, _device: DeviceId) -> Option<RoundTrip> {
    ///         // e.g. timed GET_FEATURES requests on the device's control channel
    ///         Some(RoundTrip { alone: Duration::from_micros(40), per_request: Duration::from_micros(12) })
    ///     }
    /// }
    /// assert_eq!(Backend.probe(DeviceId(0)).unwrap().transport(), Duration::from_micros(28));
    /// ```
    fn probe(&self, _device: DeviceId) -> Option<RoundTrip> {
        None
    }

    /// What the actions expect `step` to cost if it ran now, from what they know
    /// of their own backends (their own measurements, the dirty pages a final RAM
    /// pass would copy, the requests a drain would wait for). `None` (the
    /// default): the prediction works it out from measurements and the plan.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover::exec::{Completion, StepActions};
    /// use switchover::predict::Expected;
    /// use switchover::step::{Step, StepKind};
    /// struct Vmm {
    ///     dirty_pages: u64,
    /// }
    /// impl StepActions for Vmm {
    ///     fn start(&self, _step: &Step, done: Completion) {
    ///         done.complete(Ok(()));
    ///     }
    ///     fn expect(&self, step: &Step) -> Option<Expected> {
    ///         // The final pass copies what is dirty now, at 2 GB/s.
    ///         (step.kind == StepKind::FinalPass).then(|| Expected::blocking(Duration::from_nanos(self.dirty_pages * 4096 / 2)))
    ///     }
    /// }
    /// let topo = switchover::topology::Topology::preset("single-net").unwrap();
    /// let plan = switchover::recipe::build(&topo.into(), switchover::ids::Side::Source, &switchover::recipe::RecipeOptions::engine(), &switchover::recipe::NoCosts).unwrap();
    /// let pass = plan.steps().iter().find(|s| s.kind == StepKind::FinalPass).unwrap();
    /// assert_eq!(Vmm { dirty_pages: 1000 }.expect(pass).unwrap().service, Duration::from_micros(2048));
    /// ```
    fn expect(&self, _step: &Step) -> Option<Expected> {
        None
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
    /// Per window, how many of its steps are done.
    done_in: [usize; 3],
    /// Per window, whether it ran already (its steps' outcomes are not all
    /// `NotRun` any more).
    attempted: [bool; 3],
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
        Progress { outcome: vec![StepOutcome::NotRun; plan.len()], done_in: [0; 3], attempted: [false; 3] }
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
    /// Records of the steps that were started, lane by lane, each lane's in the
    /// order it started them (sort by `start` or `step` for another order).
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

/// The CALLER lane's number.
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

/// What the engine's threads share: the slow-path state under one mutex, the
/// hint word the lanes read once per step, and each lane's own state.
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    workers_cv: Condvar,
    caller_cv: Condvar,
    hints: Padded<AtomicU64>,
    lanes: Vec<Padded<Slot>>,
}

/// A value on cache lines of its own (two, for the adjacent-line prefetcher), so
/// that one lane's writes do not slow another's reads.
#[repr(align(128))]
pub(crate) struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

impl Shared {
    /// Delivers the answer of a step that did not answer inline, from any thread.
    pub(crate) fn complete(&self, epoch: u64, id: StepId, r: Result<(), StepFailure>) {
        let mut inner = self.inner.lock();
        let Some(run) = inner.run_of(epoch) else { return };
        let now = run.data.clock.now();
        let before = run.pool.len();
        run.answer(id.0, r, now);
        let fresh = run.pool.len() - before;
        let wake = inner.wake_for(fresh);
        self.hints.store(inner.hints(), Ordering::Release);
        for _ in 0..wake {
            self.workers_cv.notify_one();
        }
        // The caller lane takes new steps too, runs caller-affine ones, and ends
        // the run once nothing can make progress.
        if inner.caller_waiting {
            self.caller_cv.notify_one();
        }
    }
}

fn worker_loop(shared: &Arc<Shared>, lane: Lane) {
    let (handle, _reserve) = LaneHandle::new(shared.clone());
    let w = lane as usize - 1;
    let mut active = false;
    let (mut take, mut none) = (Vec::new(), Vec::new());
    loop {
        let data = {
            let mut inner = shared.inner.lock();
            if active {
                if !std::mem::take(&mut inner.stuck[w]) {
                    inner.active -= 1;
                }
                if inner.caller_waiting && inner.quiescent() {
                    shared.caller_cv.notify_one();
                }
            }
            let mut scanned = false;
            loop {
                if inner.shutdown {
                    return;
                }
                if let Some(run) = inner.run.as_mut().filter(|r| !r.stopping && !r.pool.is_empty()) {
                    let data = run.data.clone();
                    for _ in 0..run.batch() {
                        match run.pool.pop() {
                            Some(r) => take.push(r),
                            None => break,
                        }
                    }
                    inner.active += 1;
                    active = true;
                    shared.hints.store(inner.hints(), Ordering::Release);
                    break data;
                }
                inner.parked += 1;
                shared.hints.store(inner.hints(), Ordering::Release);
                // Counted idle (a lane that sees it shares its own ready steps):
                // once, ready steps another lane already holds in its own set come
                // to the pool; then look again with the lock held throughout, so
                // that no wake-up is lost before the wait.
                if !std::mem::replace(&mut scanned, true) {
                    if let Some(epoch) = inner.run.as_ref().filter(|r| !r.stopping && r.data.idle_unload()).map(|r| r.data.epoch) {
                        drop(inner);
                        unload_others(shared, epoch, lane as usize);
                        inner = shared.inner.lock();
                        // Not parked yet; a wake-up meant for this worker meanwhile
                        // went to another, or to nobody: never count more notified
                        // than parked.
                        inner.parked -= 1;
                        inner.notified = inner.notified.min(inner.parked);
                        shared.hints.store(inner.hints(), Ordering::Release);
                        continue;
                    }
                }
                shared.workers_cv.wait(&mut inner);
                inner.parked -= 1;
                inner.notified = inner.notified.saturating_sub(1);
                shared.hints.store(inner.hints(), Ordering::Release);
            }
        };
        let cx = LaneCtx { shared, handle: &handle, data: &data, lane, caller: None };
        lane::work(&cx, &mut take, &mut none);
    }
}

/// A lane counted idle moves the ready steps other lanes hold in their own sets
/// into the pool, where it takes them: a lane inside a long action (a blocking
/// step, a slow ioctl) does not hold back steps that an idle lane could run, so a
/// ready step waits for a lane only while every lane is busy. Takes each lane's
/// lock alone, then the engine's (as [`claim`]). Returns whether it moved any.
fn unload_others(shared: &Shared, epoch: u64, me: usize) -> bool {
    // Not called in the loom models (`cfg(loom)`): locking every lane in turn
    // multiplies their interleavings past what the model checks explore in CI's
    // time. It only moves ready steps between sets under their locks;
    // `tests/engine.rs` checks it (every step exactly once on random plans; a
    // step held by a busy lane runs elsewhere).
    let mut moved = false;
    for (i, slot) in shared.lanes.iter().enumerate() {
        if i == me {
            continue;
        }
        let mut g = slot.local.lock();
        if g.epoch != epoch || g.any.is_empty() {
            continue;
        }
        let mut inner = shared.inner.lock();
        let Some(run) = inner.run_of(epoch) else { return moved };
        // The step that made them ready ends before another lane starts them: now,
        // if the lane is between steps; if it is inside an action, its open record
        // ends when that action started (the lane closes it itself).
        if g.current.is_none() {
            g.close_now(&run.data);
        }
        g.any.move_into(&mut run.pool);
        drop(g);
        moved = true;
        shared.hints.store(inner.hints(), Ordering::Release);
    }
    moved
}

/// The watchdog, run by the caller lane while it waits: fails split-phase steps
/// past their deadline, and finds workers inside a step past its deadline (see
/// [`claim`]). Returns when to look again, and those workers.
fn watchdog(shared: &Shared, inner: &mut Inner, now: clock::Stamp, late: &mut Vec<(usize, u32, clock::Stamp)>) -> Option<clock::Stamp> {
    let run = inner.run.as_mut()?;
    let data = run.data.clone();
    let (_, mut next) = run.expire(now);
    if data.min_deadline == u64::MAX {
        return next; // no step of this window has a deadline
    }
    for (w, slot) in shared.lanes.iter().enumerate().skip(1) {
        let start = slot.started.load(Ordering::Acquire);
        let id = slot.current.load(Ordering::Acquire);
        if start == 0 || id == 0 {
            continue;
        }
        let at = start.saturating_add(data.deadline_ticks(id - 1));
        if at <= now {
            late.push((w, id - 1, start));
        } else {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
    }
    // A step a worker starts later has a deadline at least the window's shortest
    // deadline away: look again by then.
    if inner.active > 0 {
        let at = now.saturating_add(data.min_deadline);
        next = Some(next.map_or(at, |n| n.min(at)));
    }
    next
}

/// Ends step `id` of worker `w`, still inside its action past its deadline (or
/// answered from another thread while its action has not returned): it times out
/// unless that answer came, the worker's other ready steps go to the pool, and the
/// worker counts as stuck until it comes back. Takes the worker's lock, then the
/// engine's, and checks again under them.
fn claim(shared: &Shared, epoch: u64, w: usize, id: u32, start: clock::Stamp) {
    let slot = &shared.lanes[w];
    let mut g = slot.local.lock();
    let mut inner = shared.inner.lock();
    let valid = g.epoch == epoch
        && g.current == Some(id)
        && !g.claimed
        && slot.started.load(Ordering::Acquire) == start
        && inner.run_of(epoch).is_some();
    if !valid {
        return; // it came back in time, or moved on
    }
    let run = inner.run_of(epoch).expect("checked");
    g.claimed = true;
    g.any.move_into(&mut run.pool);
    drop(g);
    run.set_ended(id);
    let now = run.data.clock.now();
    // An answer that came from another thread while the action still ran stands;
    // otherwise the step timed out.
    match run.take_early(id) {
        Some((r, at)) => {
            let outcome = run::code_of(&r);
            run.claimed.push(Rec { step: id, lane: w as Lane, outcome, start, end: at });
            run.end(id, r);
        }
        None => {
            run.claimed.push(Rec { step: id, lane: w as Lane, outcome: run::TIMED_OUT, start, end: now });
            let after = run.data.plan.steps()[id as usize].deadline;
            run.fail(id, StepFailure::Timeout { after });
        }
    }
    inner.stuck[w - 1] = true;
    inner.active -= 1;
    let wake = inner.wake_for(usize::MAX);
    shared.hints.store(inner.hints(), Ordering::Release);
    for _ in 0..wake {
        shared.workers_cv.notify_one();
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
    /// The caller lane's handle, and its reserve reference (see `LaneHandle::new`).
    handle: StdArc<LaneHandle>,
    _reserve: StdArc<LaneHandle>,
    handles: std::sync::Mutex<Vec<Box<dyn WorkerHandle>>>,
    workers: usize,
    policy: FailurePolicy,
    /// Mechanisms removed for a negative-control test (none in a VMM's build).
    controls: Controls,
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
            inner: Mutex::new(Inner::new(workers)),
            workers_cv: Condvar::new(),
            caller_cv: Condvar::new(),
            hints: Padded(AtomicU64::new(run::Hints::NONE)),
            lanes: (0..=workers).map(|_| Padded(Slot::new())).collect(),
        });
        let handles = (0..workers)
            .map(|i| {
                let sh = shared.clone();
                let lane = (i + 1) as Lane;
                spawn.spawn(format!("switchover-w{lane}"), Box::new(move || worker_loop(&sh, lane)))
            })
            .collect();
        let (handle, reserve) = LaneHandle::new(shared.clone());
        Engine {
            shared,
            handle,
            _reserve: reserve,
            handles: std::sync::Mutex::new(handles),
            workers,
            policy,
            controls: Controls::default(),
        }
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

    /// Removes engine mechanisms for a negative-control test (feature
    /// `negative-controls`; see [`Controls`]). Runs started after the call use them.
    #[cfg(feature = "negative-controls")]
    pub fn set_controls(&mut self, c: Controls) {
        self.controls = c;
    }

    /// The failure policy of runs started with [`Engine::run`].
    ///
    /// ```
    /// use switchover::exec::{Engine, FailurePolicy, Threads};
    /// assert_eq!(Engine::new(1).policy(), FailurePolicy::StopAll);
    /// let e = Engine::with_spawner(1, FailurePolicy::ContinueIndependent, &Threads);
    /// assert_eq!(e.policy(), FailurePolicy::ContinueIndependent);
    /// ```
    pub fn policy(&self) -> FailurePolicy {
        self.policy
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
        self.run_with_policy(plan, window, actions, progress, self.policy)
    }

    /// [`Engine::run`] with `policy` for this run only, whatever the engine's own
    /// ([`Engine::policy`]): a fence that must stop every ring it can, say, on an
    /// engine whose windows stop at their first failure.
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
    /// let mut p = Progress::new(&plan);
    /// engine.run_with_policy(&plan, Window::Blackout, Arc::new(FailDisable), &mut p, FailurePolicy::ContinueIndependent);
    /// // The other devices stopped all the same, and the engine's own policy is unchanged.
    /// let blk1 = topo.device_by_name("blk1").unwrap().id;
    /// assert!(plan.in_window(Window::Blackout).filter(|s| s.device == blk1).all(|s| p.outcome(s.id) == StepOutcome::Done));
    /// assert_eq!(engine.policy(), FailurePolicy::StopAll);
    /// ```
    pub fn run_with_policy(
        &mut self,
        plan: &StdArc<Plan>,
        window: Window,
        actions: StdArc<dyn StepActions>,
        progress: &mut Progress,
        policy: FailurePolicy,
    ) -> RunReport {
        let span = tracing::info_span!("window", side = plan.side().short(), window = window.name());
        let _g = span.enter();
        let sh = &self.shared;
        let lanes = self.workers + 1;
        // `&mut self` keeps a second run from starting while this one runs; a run
        // left behind by a panic outside any action is superseded (its late
        // answers carry an old epoch and are ignored).
        let epoch = sh.inner.lock().epoch + 1;
        let (mut data, any, mut caller) = RunData::new(epoch, plan.clone(), actions, window, policy, lanes, progress);
        data.controls = self.controls;
        let data = StdArc::new(data);
        let t0 = data.clock.origin();
        let mut any = any;
        {
            let mut inner = sh.inner.lock();
            inner.epoch = epoch;
            let mut run = RunInner::new(data.clone());
            if self.workers > 0 {
                // Into the pool, then the caller lane's own share back out of it
                // (so it starts at once, without contending with the workers) —
                // none if it starts with a caller-affine step: the workers share
                // the pool meanwhile.
                for r in any.drain(..) {
                    run.pool.insert(r);
                }
                let share = if caller.is_empty() { run.batch() } else { 0 };
                if !caller.is_empty() {
                    data.caller_busy.store(1, Ordering::Relaxed);
                }
                for _ in 0..share {
                    match run.pool.pop() {
                        Some(r) => any.push(r),
                        None => break,
                    }
                }
            }
            let ready = run.pool.len();
            inner.run = Some(run);
            let wake = inner.wake_for(ready);
            sh.hints.store(inner.hints(), Ordering::Release);
            for _ in 0..wake {
                sh.workers_cv.notify_one();
            }
        }
        // The caller lane.
        let token = CallerLane::here();
        let cx = LaneCtx { shared: sh, handle: &self.handle, data: &data, lane: CALLER, caller: Some(&token) };
        let mut late = Vec::new();
        loop {
            lane::work(&cx, &mut any, &mut caller);
            let mut inner = sh.inner.lock();
            let mut spin = true;
            let mut unloaded = false;
            let done = loop {
                let Some(run) = inner.run.as_mut() else { break true };
                if !run.stopping {
                    if !run.inbox.is_empty() {
                        while let Some(r) = run.inbox.pop() {
                            caller.push(r);
                        }
                        break false;
                    }
                    if !run.pool.is_empty() {
                        for _ in 0..run.batch() {
                            match run.pool.pop() {
                                Some(r) => any.push(r),
                                None => break,
                            }
                        }
                        break false;
                    }
                }
                let now = data.clock.now();
                let next = watchdog(sh, &mut inner, now, &mut late);
                // A time-out may have stopped the run: the lanes see it before
                // their next step.
                sh.hints.store(inner.hints(), Ordering::Release);
                if !late.is_empty() {
                    // The worker's lock comes before the engine's.
                    drop(inner);
                    for (w, id, start) in late.drain(..) {
                        claim(sh, epoch, w, id, start);
                    }
                    inner = sh.inner.lock();
                    continue;
                }
                let run = inner.run.as_ref().expect("run present");
                if !(run.stopping || run.pool.is_empty() && run.inbox.is_empty()) {
                    continue;
                }
                if inner.quiescent() {
                    break true;
                }
                if spin {
                    // Before sleeping, watch the hint word for a moment: a worker
                    // ending the run or making work ready usually does so within
                    // microseconds, and waking from a sleep takes longer.
                    spin = false;
                    let before = sh.hints.load(Ordering::Acquire);
                    drop(inner);
                    for i in 0..SPINS {
                        if sh.hints.load(Ordering::Acquire) != before {
                            break;
                        }
                        if i % 64 == 63 {
                            std::thread::yield_now();
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                    inner = sh.inner.lock();
                    continue;
                }
                inner.caller_waiting = true;
                sh.hints.store(inner.hints(), Ordering::Release);
                if data.idle_unload() && !std::mem::replace(&mut unloaded, true) {
                    // Counted idle: once, steps other lanes hold in their own sets
                    // come to the pool (see `unload_others`); then look again with
                    // the lock held throughout, so that no wake-up is lost.
                    drop(inner);
                    unload_others(sh, epoch, CALLER as usize);
                    inner = sh.inner.lock();
                    inner.caller_waiting = false;
                    continue;
                }
                match next {
                    Some(t) => {
                        sh.caller_cv.wait_until(&mut inner, data.clock.instant(t));
                    }
                    None => sh.caller_cv.wait(&mut inner),
                }
                inner.caller_waiting = false;
                sh.hints.store(inner.hints(), Ordering::Release);
            };
            sh.hints.store(inner.hints(), Ordering::Release);
            if done {
                break;
            }
        }
        // The run is over: collect what every lane recorded.
        let run = {
            let mut inner = sh.inner.lock();
            let run = inner.run.take().expect("run present");
            sh.hints.store(inner.hints(), Ordering::Release);
            run
        };
        let wall = t0.elapsed();
        // Every started step's record, lane by lane: the lanes' own (with the
        // ends of those answered off their lane), and those the watchdog ended.
        let clock = data.clock;
        let ns = |t: clock::Stamp| Duration::from_nanos(clock.ns(t));
        let mut ends = run.ends;
        ends.sort_unstable_by_key(|e| e.0);
        let mut records: Vec<StepRecord> = Vec::new();
        for slot in &sh.lanes {
            let mut g = slot.local.lock();
            if g.epoch != epoch {
                continue;
            }
            g.open = None;
            let base = records.len();
            if records.is_empty() {
                std::mem::swap(&mut records, &mut g.records);
            } else {
                records.append(&mut g.records);
            }
            for &i in &g.pending {
                let r = &mut records[base + i as usize];
                let (end, o) = match ends.binary_search_by_key(&r.step.0, |e| e.0) {
                    Ok(k) => (ns(ends[k].1), outcome_of(ends[k].2)),
                    Err(_) => (r.start, StepOutcome::TimedOut),
                };
                r.end = end.max(r.start);
                r.outcome = o;
            }
            g.pending.clear();
        }
        for c in &run.claimed {
            records.push(StepRecord {
                step: StepId(c.step),
                outcome: outcome_of(c.outcome),
                lane: c.lane,
                start: ns(c.start),
                end: ns(c.end).max(ns(c.start)),
            });
        }
        // Outcomes: a step that did not start keeps `done` from an earlier
        // attempt, and is not run otherwise.
        let attempted = std::mem::replace(&mut progress.attempted[window as usize], true);
        let mut done = 0;
        if attempted {
            for &id in plan.window_steps(window) {
                let o = &mut progress.outcome[id.0 as usize];
                if *o == StepOutcome::Done {
                    done += 1;
                } else {
                    *o = StepOutcome::NotRun;
                }
            }
        }
        for r in &records {
            let o = &mut progress.outcome[r.step.0 as usize];
            // A started step was not done before (done steps never start again).
            done += usize::from(r.outcome == StepOutcome::Done);
            *o = r.outcome;
        }
        progress.done_in[window as usize] = done;
        let failures: Vec<StepError> = run.failures.iter().map(|(id, f)| StepError::new(plan, *id, f.clone())).collect();
        tracing::info!(steps = records.len(), wall_us = wall.as_micros() as u64, failed = failures.len(), "window done");
        RunReport { side: plan.side(), window, started_at: t0, wall, lanes, records, failure: failures.first().cloned(), failures }
    }
}

/// A record's outcome code as an outcome.
fn outcome_of(code: u8) -> StepOutcome {
    match code {
        run::DONE => StepOutcome::Done,
        run::FAILED => StepOutcome::Failed,
        _ => StepOutcome::TimedOut,
    }
}

/// How long the caller lane watches for the run's end before it sleeps (hint
/// reads; one under loom, whose scheduler a spin would only slow).
const SPINS: u32 = if cfg!(loom) { 1 } else { 4096 };

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

impl Drop for Engine {
    fn drop(&mut self) {
        self.shared.inner.lock().shutdown = true;
        self.shared.workers_cv.notify_all();
        let handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for h in handles {
            h.join();
        }
    }
}
