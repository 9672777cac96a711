//! The two roles, each driving its own engine, joined by a [`ReturnPath`].
//!
//! The source stops the guest only after the destination says it is ready
//! (switchover-ack), resumes it only when the destination says it will not run it
//! (`start_failed`), and otherwise — once the state has left and the destination
//! falls silent — reports the outcome as in doubt and resumes nothing, so the guest
//! never runs on both sides.
//!
//! # Examples
//!
//! The two roles over a Unix socket, as two VMM processes would run them:
//!
//! ```
//! use std::os::unix::net::UnixStream;
//! use std::sync::Arc;
//! use switchover::error::StepFailure;
//! use switchover::exec::{Completion, Engine, Progress, StepActions};
//! use switchover::ids::{DeviceId, Side};
//! use switchover::plan::Plan;
//! use switchover::recipe::{build, rollback, NoCosts, RecipeOptions};
//! use switchover::roles::path::UnixPath;
//! use switchover::roles::{Deadlines, Destination, Outcome, RollbackPlan, SideSetup, Source};
//! use switchover::state::DeviceState;
//! use switchover::step::{Step, StepKind};
//! use switchover::topology::Topology;
//!
//! /// One side's devices, in memory: the guest left ring `r` of every device at
//! /// base `100 + r`; the source reads it, the destination checks it got it.
//! struct Devices {
//!     state: Arc<DeviceState>,
//!     /// A step that fails: its kind, its device, and how.
//!     fail: Option<(StepKind, DeviceId, StepFailure)>,
//! }
//! impl StepActions for Devices {
//!     fn start(&self, step: &Step, done: Completion) {
//!         if let Some((kind, device, failure)) = &self.fail {
//!             if step.kind == *kind && step.device == *device {
//!                 return done.complete(Err(failure.clone()));
//!             }
//!         }
//!         let ring = step.ring.unwrap_or(0);
//!         let base = 100 + ring as u16;
//!         let r = match step.kind {
//!             StepKind::GetVringBase => {
//!                 self.state.set_base(step.device, ring, base);
//!                 Ok(())
//!             }
//!             StepKind::SetVringBase if self.state.base(step.device, ring) != Some(base) => {
//!                 Err(StepFailure::MissingState { what: format!("the base of ring {ring}") })
//!             }
//!             _ => Ok(()),
//!         };
//!         done.complete(r);
//!     }
//!     fn reconnect(&self, _device: DeviceId) -> bool {
//!         true // a new backend process
//!     }
//!     fn recover_base(&self, _device: DeviceId, ring: u32) -> Option<u16> {
//!         Some(100 + ring as u16) // the used ring's index, read from guest memory
//!     }
//! }
//!
//! /// `side`'s plan of the engine's recipe, on devices of its own.
//! fn setup(topo: &Arc<Topology>, side: Side, fail: Option<(StepKind, DeviceId, StepFailure)>) -> SideSetup {
//!     let state = Arc::new(DeviceState::new(topo));
//!     let plan = Arc::new(build(topo, side, &RecipeOptions::engine(), &NoCosts).unwrap());
//!     SideSetup { plan, actions: Arc::new(Devices { state: state.clone(), fail }), state }
//! }
//!
//! /// The source's rollback: the recipe's rollback plan, on the source's devices.
//! fn rollback_of(src: &SideSetup) -> impl Fn(&Plan, &Progress, &[DeviceId]) -> RollbackPlan + '_ {
//!     move |plan: &Plan, progress: &Progress, lost: &[DeviceId]| {
//!         let rb = rollback(plan, progress, lost, &RecipeOptions::engine(), &NoCosts).ok()?;
//!         Some((Arc::new(rb), src.actions.clone()))
//!     }
//! }
//!
//! let topo = Arc::new(Topology::preset("small").unwrap());
//! let (src, dst) = (setup(&topo, Side::Source, None), setup(&topo, Side::Destination, None));
//! let (x, y) = UnixStream::pair().unwrap();
//! let (mut src_path, mut dst_path) = (UnixPath::new(x), UnixPath::new(y));
//! let (mut src_engine, mut dst_engine) = (Engine::new(2), Engine::new(2));
//! let rollback = rollback_of(&src);
//! let report = std::thread::scope(|s| {
//!     s.spawn(|| Destination { setup: &dst, engine: &mut dst_engine, deadlines: Deadlines::default() }.run(&mut dst_path));
//!     Source { setup: &src, engine: &mut src_engine, deadlines: Deadlines::default(), rollback: &rollback }.run(&mut src_path)
//! });
//! assert_eq!(report.outcome, Outcome::Completed);
//! assert_eq!(report.bases_carried, 10);
//! ```

use std::time::{Duration, Instant};

use super::error::{MessageKind, PathError, PathOp, SwitchoverError};
use super::message::Message;
use super::path::{channel_pair, ReturnPath};
use super::setup::{lost_devices, Outcome, RollbackFn, SideSetup, SwitchoverReport};
use crate::error::StepError;
use crate::exec::{Engine, Progress, RunReport};
use crate::ids::{Side, Window};
use crate::step::StepKind;

/// How long each role waits for the other.
///
/// ```
/// # mod vmm {
/// #     use std::sync::Arc;
/// #     use switchover::error::StepFailure;
/// #     use switchover::exec::{Completion, Progress, StepActions};
/// #     use switchover::ids::{DeviceId, Side};
/// #     use switchover::plan::Plan;
/// #     use switchover::recipe::{build, rollback, NoCosts, RecipeOptions};
/// #     use switchover::roles::{RollbackPlan, SideSetup};
/// #     use switchover::state::DeviceState;
/// #     use switchover::step::{Step, StepKind};
/// #     use switchover::topology::Topology;
/// #
/// #     /// One side's devices, in memory: the guest left ring `r` of every device at
/// #     /// base `100 + r`; the source reads it, the destination checks it got it.
/// #     pub struct Devices {
/// #         state: Arc<DeviceState>,
/// #         /// A step that fails: its kind, its device, and how.
/// #         fail: Option<(StepKind, DeviceId, StepFailure)>,
/// #     }
/// #     impl StepActions for Devices {
/// #         fn start(&self, step: &Step, done: Completion) {
/// #             if let Some((kind, device, failure)) = &self.fail {
/// #                 if step.kind == *kind && step.device == *device {
/// #                     return done.complete(Err(failure.clone()));
/// #                 }
/// #             }
/// #             let ring = step.ring.unwrap_or(0);
/// #             let base = 100 + ring as u16;
/// #             let r = match step.kind {
/// #                 StepKind::GetVringBase => {
/// #                     self.state.set_base(step.device, ring, base);
/// #                     Ok(())
/// #                 }
/// #                 StepKind::SetVringBase if self.state.base(step.device, ring) != Some(base) => {
/// #                     Err(StepFailure::MissingState { what: format!("the base of ring {ring}") })
/// #                 }
/// #                 _ => Ok(()),
/// #             };
/// #             done.complete(r);
/// #         }
/// #         fn reconnect(&self, _device: DeviceId) -> bool {
/// #             true // a new backend process
/// #         }
/// #         fn recover_base(&self, _device: DeviceId, ring: u32) -> Option<u16> {
/// #             Some(100 + ring as u16) // the used ring's index, read from guest memory
/// #         }
/// #     }
/// #
/// #     /// `side`'s plan of the engine's recipe, on devices of its own.
/// #     pub fn setup(topo: &Arc<Topology>, side: Side, fail: Option<(StepKind, DeviceId, StepFailure)>) -> SideSetup {
/// #         let state = Arc::new(DeviceState::new(topo));
/// #         let plan = Arc::new(build(topo, side, &RecipeOptions::engine(), &NoCosts).unwrap());
/// #         SideSetup { plan, actions: Arc::new(Devices { state: state.clone(), fail }), state }
/// #     }
/// #
/// #     /// The source's rollback: the recipe's rollback plan, on the source's devices.
/// #     pub fn rollback_of(src: &SideSetup) -> impl Fn(&Plan, &Progress, &[DeviceId]) -> RollbackPlan + '_ {
/// #         move |plan: &Plan, progress: &Progress, lost: &[DeviceId]| {
/// #             let rb = rollback(plan, progress, lost, &RecipeOptions::engine(), &NoCosts).ok()?;
/// #             Some((Arc::new(rb), src.actions.clone()))
/// #         }
/// #     }
/// # }
/// # use vmm::{rollback_of, setup};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use switchover::exec::Engine;
/// use switchover::ids::Side;
/// use switchover::roles::path::channel_pair;
/// use switchover::roles::{Deadlines, Outcome, Source};
/// use switchover::topology::Topology;
/// let src = setup(&Arc::new(Topology::preset("small").unwrap()), Side::Source, None);
/// let (mut path, _silent_destination) = channel_pair();
/// let deadlines = Deadlines { ready: Duration::from_millis(50), ..Deadlines::default() };
/// let rollback = rollback_of(&src);
/// let rep = Source { setup: &src, engine: &mut Engine::new(1), deadlines, rollback: &rollback }.run(&mut path);
/// // No ready-ack in time: the source never stopped the guest.
/// assert!(matches!(rep.outcome, Outcome::Aborted { .. }));
/// assert_eq!(rep.downtime, Duration::ZERO);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Source: how long to wait for the destination's ready-ack.
    pub ready: Duration,
    /// Destination: how long to wait for the source's state (or abort).
    pub state: Duration,
    /// Source: how long to wait for the destination's running (or start-failed).
    pub running: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines { ready: Duration::from_secs(120), state: Duration::from_secs(120), running: Duration::from_secs(30) }
    }
}

fn path_error(side: Side, op: PathOp, source: PathError) -> SwitchoverError {
    SwitchoverError::ReturnPath { side, op, source }
}

fn unexpected(side: Side, waiting_for: MessageKind, got: &Message) -> SwitchoverError {
    SwitchoverError::Unexpected { side, waiting_for, got: got.kind() }
}

/// Runs one window of a side's plan and keeps its report; returns the window's
/// first failure and how long it took.
fn run_window(
    s: &SideSetup,
    e: &mut Engine,
    w: Window,
    p: &mut Progress,
    runs: &mut Vec<RunReport>,
) -> (Option<SwitchoverError>, Duration) {
    let r = e.run(&s.plan, w, s.actions.clone(), p);
    let out = (r.failure.clone().map(SwitchoverError::Step), r.wall);
    runs.push(r);
    out
}

fn report(outcome: Outcome, opened: Instant, downtime: Duration, runs: Vec<RunReport>, carried: usize) -> SwitchoverReport {
    SwitchoverReport { outcome, downtime, window_opened: opened, runs, rollback: None, bases_carried: carried }
}

/// The report of a switchover whose window never opened (nothing was stopped).
fn not_opened(outcome: Outcome, runs: Vec<RunReport>) -> SwitchoverReport {
    report(outcome, Instant::now(), Duration::ZERO, runs, 0)
}

/// The guest runs on the destination: the window closed at `downtime`; run the
/// side's cleanup window, outside it, and report.
fn clean_up(
    s: &SideSetup,
    e: &mut Engine,
    p: &mut Progress,
    mut runs: Vec<RunReport>,
    opened: Instant,
    downtime: Duration,
    carried: usize,
) -> SwitchoverReport {
    let (cleanup, _) = run_window(s, e, Window::Cleanup, p, &mut runs);
    let outcome = match cleanup {
        None => Outcome::Completed,
        Some(cause) => Outcome::CompletedWithCleanupErrors { cause },
    };
    report(outcome, opened, downtime, runs, carried)
}

/// The destination role.
///
/// ```
/// # mod vmm {
/// #     use std::sync::Arc;
/// #     use switchover::error::StepFailure;
/// #     use switchover::exec::{Completion, Progress, StepActions};
/// #     use switchover::ids::{DeviceId, Side};
/// #     use switchover::plan::Plan;
/// #     use switchover::recipe::{build, rollback, NoCosts, RecipeOptions};
/// #     use switchover::roles::{RollbackPlan, SideSetup};
/// #     use switchover::state::DeviceState;
/// #     use switchover::step::{Step, StepKind};
/// #     use switchover::topology::Topology;
/// #
/// #     /// One side's devices, in memory: the guest left ring `r` of every device at
/// #     /// base `100 + r`; the source reads it, the destination checks it got it.
/// #     pub struct Devices {
/// #         state: Arc<DeviceState>,
/// #         /// A step that fails: its kind, its device, and how.
/// #         fail: Option<(StepKind, DeviceId, StepFailure)>,
/// #     }
/// #     impl StepActions for Devices {
/// #         fn start(&self, step: &Step, done: Completion) {
/// #             if let Some((kind, device, failure)) = &self.fail {
/// #                 if step.kind == *kind && step.device == *device {
/// #                     return done.complete(Err(failure.clone()));
/// #                 }
/// #             }
/// #             let ring = step.ring.unwrap_or(0);
/// #             let base = 100 + ring as u16;
/// #             let r = match step.kind {
/// #                 StepKind::GetVringBase => {
/// #                     self.state.set_base(step.device, ring, base);
/// #                     Ok(())
/// #                 }
/// #                 StepKind::SetVringBase if self.state.base(step.device, ring) != Some(base) => {
/// #                     Err(StepFailure::MissingState { what: format!("the base of ring {ring}") })
/// #                 }
/// #                 _ => Ok(()),
/// #             };
/// #             done.complete(r);
/// #         }
/// #         fn reconnect(&self, _device: DeviceId) -> bool {
/// #             true // a new backend process
/// #         }
/// #         fn recover_base(&self, _device: DeviceId, ring: u32) -> Option<u16> {
/// #             Some(100 + ring as u16) // the used ring's index, read from guest memory
/// #         }
/// #     }
/// #
/// #     /// `side`'s plan of the engine's recipe, on devices of its own.
/// #     pub fn setup(topo: &Arc<Topology>, side: Side, fail: Option<(StepKind, DeviceId, StepFailure)>) -> SideSetup {
/// #         let state = Arc::new(DeviceState::new(topo));
/// #         let plan = Arc::new(build(topo, side, &RecipeOptions::engine(), &NoCosts).unwrap());
/// #         SideSetup { plan, actions: Arc::new(Devices { state: state.clone(), fail }), state }
/// #     }
/// #
/// #     /// The source's rollback: the recipe's rollback plan, on the source's devices.
/// #     pub fn rollback_of(src: &SideSetup) -> impl Fn(&Plan, &Progress, &[DeviceId]) -> RollbackPlan + '_ {
/// #         move |plan: &Plan, progress: &Progress, lost: &[DeviceId]| {
/// #             let rb = rollback(plan, progress, lost, &RecipeOptions::engine(), &NoCosts).ok()?;
/// #             Some((Arc::new(rb), src.actions.clone()))
/// #         }
/// #     }
/// # }
/// # use vmm::{rollback_of, setup};
/// use std::sync::Arc;
/// use std::time::{Duration, Instant};
/// use switchover::exec::Engine;
/// use switchover::ids::Side;
/// use switchover::roles::path::{channel_pair, ReturnPath};
/// use switchover::roles::message::Message;
/// use switchover::roles::MessageKind;
/// use switchover::roles::{Deadlines, Destination, Outcome};
/// use switchover::state::VringBase;
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let dst = setup(&topo, Side::Destination, None);
/// let mut engine = Engine::new(2);
/// let role = Destination { setup: &dst, engine: &mut engine, deadlines: Deadlines::default() };
/// let (mut source, mut b) = channel_pair();
/// let rep = std::thread::scope(|s| {
///     let h = s.spawn(move || role.run(&mut b));
///     // Play the source: wait for the ready-ack, then send every ring's base.
///     let soon = Instant::now() + Duration::from_secs(5);
///     assert_eq!(source.recv(soon).unwrap().kind(), MessageKind::Ready);
///     let base = |d: u32, r: u32| VringBase { device: d, ring: r, base: 100 + r as u16 };
///     let bases = topo.devices().iter().flat_map(|d| (0..d.rings()).map(move |r| base(d.id.0, r))).collect();
///     source.send(&Message::State { bases, inflight: vec![] }).unwrap();
///     assert_eq!(source.recv(soon).unwrap().kind(), MessageKind::Running);
///     h.join().unwrap()
/// });
/// assert_eq!((rep.outcome, rep.bases_carried), (Outcome::Completed, 10));
/// ```
#[derive(Debug)]
pub struct Destination<'a> {
    /// Its plan, actions and state.
    pub setup: &'a SideSetup,
    /// Its engine (started before prepare).
    pub engine: &'a mut Engine,
    /// Its deadlines.
    pub deadlines: Deadlines,
}

impl Destination<'_> {
    /// Prepares, acks, waits for the state, starts the devices, confirms, cleans up.
    ///
    /// ```
    /// # mod vmm {
    /// #     use std::sync::Arc;
    /// #     use switchover::error::StepFailure;
    /// #     use switchover::exec::{Completion, Progress, StepActions};
    /// #     use switchover::ids::{DeviceId, Side};
    /// #     use switchover::plan::Plan;
    /// #     use switchover::recipe::{build, rollback, NoCosts, RecipeOptions};
    /// #     use switchover::roles::{RollbackPlan, SideSetup};
    /// #     use switchover::state::DeviceState;
    /// #     use switchover::step::{Step, StepKind};
    /// #     use switchover::topology::Topology;
    /// #
    /// #     /// One side's devices, in memory: the guest left ring `r` of every device at
    /// #     /// base `100 + r`; the source reads it, the destination checks it got it.
    /// #     pub struct Devices {
    /// #         state: Arc<DeviceState>,
    /// #         /// A step that fails: its kind, its device, and how.
    /// #         fail: Option<(StepKind, DeviceId, StepFailure)>,
    /// #     }
    /// #     impl StepActions for Devices {
    /// #         fn start(&self, step: &Step, done: Completion) {
    /// #             if let Some((kind, device, failure)) = &self.fail {
    /// #                 if step.kind == *kind && step.device == *device {
    /// #                     return done.complete(Err(failure.clone()));
    /// #                 }
    /// #             }
    /// #             let ring = step.ring.unwrap_or(0);
    /// #             let base = 100 + ring as u16;
    /// #             let r = match step.kind {
    /// #                 StepKind::GetVringBase => {
    /// #                     self.state.set_base(step.device, ring, base);
    /// #                     Ok(())
    /// #                 }
    /// #                 StepKind::SetVringBase if self.state.base(step.device, ring) != Some(base) => {
    /// #                     Err(StepFailure::MissingState { what: format!("the base of ring {ring}") })
    /// #                 }
    /// #                 _ => Ok(()),
    /// #             };
    /// #             done.complete(r);
    /// #         }
    /// #         fn reconnect(&self, _device: DeviceId) -> bool {
    /// #             true // a new backend process
    /// #         }
    /// #         fn recover_base(&self, _device: DeviceId, ring: u32) -> Option<u16> {
    /// #             Some(100 + ring as u16) // the used ring's index, read from guest memory
    /// #         }
    /// #     }
    /// #
    /// #     /// `side`'s plan of the engine's recipe, on devices of its own.
    /// #     pub fn setup(topo: &Arc<Topology>, side: Side, fail: Option<(StepKind, DeviceId, StepFailure)>) -> SideSetup {
    /// #         let state = Arc::new(DeviceState::new(topo));
    /// #         let plan = Arc::new(build(topo, side, &RecipeOptions::engine(), &NoCosts).unwrap());
    /// #         SideSetup { plan, actions: Arc::new(Devices { state: state.clone(), fail }), state }
    /// #     }
    /// #
    /// #     /// The source's rollback: the recipe's rollback plan, on the source's devices.
    /// #     pub fn rollback_of(src: &SideSetup) -> impl Fn(&Plan, &Progress, &[DeviceId]) -> RollbackPlan + '_ {
    /// #         move |plan: &Plan, progress: &Progress, lost: &[DeviceId]| {
    /// #             let rb = rollback(plan, progress, lost, &RecipeOptions::engine(), &NoCosts).ok()?;
    /// #             Some((Arc::new(rb), src.actions.clone()))
    /// #         }
    /// #     }
    /// # }
    /// # use vmm::{rollback_of, setup};
    /// use std::sync::Arc;
    /// use std::time::{Duration, Instant};
    /// use switchover::error::{StepError, StepFailure};
    /// use switchover::exec::Engine;
    /// use switchover::ids::{Side, Window};
    /// use switchover::roles::path::{channel_pair, ReturnPath};
    /// use switchover::roles::message::Message;
    /// use switchover::roles::MessageKind;
    /// use switchover::roles::{Deadlines, Destination, Outcome};
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let (src, dst) = (setup(&topo, Side::Source, None), setup(&topo, Side::Destination, None));
    /// let mut engine = Engine::new(1);
    /// let role = Destination { setup: &dst, engine: &mut engine, deadlines: Deadlines::default() };
    /// let (mut source, mut b) = channel_pair();
    /// let rep = std::thread::scope(|s| {
    ///     let h = s.spawn(move || role.run(&mut b));
    ///     assert_eq!(source.recv(Instant::now() + Duration::from_secs(5)).unwrap().kind(), MessageKind::Ready);
    ///     // The source could not stop its devices: the destination must not start.
    ///     let get = src.plan.steps().iter().find(|s| s.kind == StepKind::GetVringBase).unwrap();
    ///     let cause = StepError::new(&src.plan, get.id, StepFailure::Disconnected).into();
    ///     source.send(&Message::Abort { cause }).unwrap();
    ///     h.join().unwrap()
    /// });
    /// assert!(matches!(rep.outcome, Outcome::RolledBack { .. }));
    /// assert!(rep.phase(Side::Destination, Window::Blackout).is_none()); // never started
    /// ```
    pub fn run(self, path: &mut dyn ReturnPath) -> SwitchoverReport {
        let Destination { setup: s, engine: e, deadlines } = self;
        let side = Side::Destination;
        let mut p = Progress::new(&s.plan);
        let mut runs = Vec::new();
        let (failed, wall) = run_window(s, e, Window::Prepare, &mut p, &mut runs);
        if let Some(cause) = failed {
            let _ = path.send(&Message::NotReady { cause: cause.clone() });
            return not_opened(Outcome::Aborted { cause }, runs);
        }
        if let Err(err) = path.send(&Message::Ready { prepare_ms: wall.as_secs_f64() * 1e3 }) {
            return not_opened(Outcome::Aborted { cause: path_error(side, PathOp::Send(MessageKind::Ready), err) }, runs);
        }
        let bases = match path.recv(Instant::now() + deadlines.state) {
            Ok(Message::State { bases, inflight }) => {
                s.state.hand_over(&inflight);
                bases
            }
            Ok(Message::Abort { cause }) => return not_opened(Outcome::RolledBack { cause }, runs),
            Ok(other) => return not_opened(Outcome::Aborted { cause: unexpected(side, MessageKind::State, &other) }, runs),
            Err(err) => return not_opened(Outcome::Aborted { cause: path_error(side, PathOp::Wait(MessageKind::State), err) }, runs),
        };
        let opened = Instant::now();
        s.state.import(&bases);
        let (failed, wall) = run_window(s, e, Window::Blackout, &mut p, &mut runs);
        if let Some(cause) = failed {
            // This side will not run the guest: say so, so that the source resumes it.
            let _ = path.send(&Message::StartFailed { cause: cause.clone() });
            return report(Outcome::RolledBack { cause }, opened, opened.elapsed(), runs, bases.len());
        }
        if let Err(err) = path.send(&Message::Running { blackout_ms: wall.as_secs_f64() * 1e3 }) {
            // The guest runs here regardless; the source, not hearing, stays stopped.
            tracing::warn!(error = %err, "could not confirm running to the source");
        }
        let downtime = opened.elapsed();
        clean_up(s, e, &mut p, runs, opened, downtime, bases.len())
    }
}

/// The source role.
///
/// ```
/// # mod vmm {
/// #     use std::sync::Arc;
/// #     use switchover::error::StepFailure;
/// #     use switchover::exec::{Completion, Progress, StepActions};
/// #     use switchover::ids::{DeviceId, Side};
/// #     use switchover::plan::Plan;
/// #     use switchover::recipe::{build, rollback, NoCosts, RecipeOptions};
/// #     use switchover::roles::{RollbackPlan, SideSetup};
/// #     use switchover::state::DeviceState;
/// #     use switchover::step::{Step, StepKind};
/// #     use switchover::topology::Topology;
/// #
/// #     /// One side's devices, in memory: the guest left ring `r` of every device at
/// #     /// base `100 + r`; the source reads it, the destination checks it got it.
/// #     pub struct Devices {
/// #         state: Arc<DeviceState>,
/// #         /// A step that fails: its kind, its device, and how.
/// #         fail: Option<(StepKind, DeviceId, StepFailure)>,
/// #     }
/// #     impl StepActions for Devices {
/// #         fn start(&self, step: &Step, done: Completion) {
/// #             if let Some((kind, device, failure)) = &self.fail {
/// #                 if step.kind == *kind && step.device == *device {
/// #                     return done.complete(Err(failure.clone()));
/// #                 }
/// #             }
/// #             let ring = step.ring.unwrap_or(0);
/// #             let base = 100 + ring as u16;
/// #             let r = match step.kind {
/// #                 StepKind::GetVringBase => {
/// #                     self.state.set_base(step.device, ring, base);
/// #                     Ok(())
/// #                 }
/// #                 StepKind::SetVringBase if self.state.base(step.device, ring) != Some(base) => {
/// #                     Err(StepFailure::MissingState { what: format!("the base of ring {ring}") })
/// #                 }
/// #                 _ => Ok(()),
/// #             };
/// #             done.complete(r);
/// #         }
/// #         fn reconnect(&self, _device: DeviceId) -> bool {
/// #             true // a new backend process
/// #         }
/// #         fn recover_base(&self, _device: DeviceId, ring: u32) -> Option<u16> {
/// #             Some(100 + ring as u16) // the used ring's index, read from guest memory
/// #         }
/// #     }
/// #
/// #     /// `side`'s plan of the engine's recipe, on devices of its own.
/// #     pub fn setup(topo: &Arc<Topology>, side: Side, fail: Option<(StepKind, DeviceId, StepFailure)>) -> SideSetup {
/// #         let state = Arc::new(DeviceState::new(topo));
/// #         let plan = Arc::new(build(topo, side, &RecipeOptions::engine(), &NoCosts).unwrap());
/// #         SideSetup { plan, actions: Arc::new(Devices { state: state.clone(), fail }), state }
/// #     }
/// #
/// #     /// The source's rollback: the recipe's rollback plan, on the source's devices.
/// #     pub fn rollback_of(src: &SideSetup) -> impl Fn(&Plan, &Progress, &[DeviceId]) -> RollbackPlan + '_ {
/// #         move |plan: &Plan, progress: &Progress, lost: &[DeviceId]| {
/// #             let rb = rollback(plan, progress, lost, &RecipeOptions::engine(), &NoCosts).ok()?;
/// #             Some((Arc::new(rb), src.actions.clone()))
/// #         }
/// #     }
/// # }
/// # use vmm::{rollback_of, setup};
/// use std::sync::Arc;
/// use switchover::exec::Engine;
/// use switchover::ids::Side;
/// use switchover::roles::path::channel_pair;
/// use switchover::roles::{Deadlines, Destination, Outcome, Source};
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let (src, dst) = (setup(&topo, Side::Source, None), setup(&topo, Side::Destination, None));
/// let (mut src_engine, mut dst_engine) = (Engine::new(2), Engine::new(2));
/// let rollback = rollback_of(&src);
/// let source = Source { setup: &src, engine: &mut src_engine, deadlines: Deadlines::default(), rollback: &rollback };
/// let destination = Destination { setup: &dst, engine: &mut dst_engine, deadlines: Deadlines::default() };
/// let (mut a, mut b) = channel_pair();
/// let (s, d) = std::thread::scope(|sc| {
///     let h = sc.spawn(move || destination.run(&mut b));
///     (source.run(&mut a), h.join().unwrap())
/// });
/// assert_eq!((s.outcome, d.outcome), (Outcome::Completed, Outcome::Completed));
/// assert_eq!(s.bases_carried, d.bases_carried);
/// ```
pub struct Source<'a> {
    /// Its plan, actions and state.
    pub setup: &'a SideSetup,
    /// Its engine (started before prepare).
    pub engine: &'a mut Engine,
    /// Its deadlines.
    pub deadlines: Deadlines,
    /// Builds the rollback plan.
    pub rollback: &'a RollbackFn<'a>,
}

impl std::fmt::Debug for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("setup", &self.setup).field("deadlines", &self.deadlines).finish()
    }
}

impl Source<'_> {
    /// Prepares, waits for the ready-ack, stops the devices, sends their state,
    /// waits for the destination to run, cleans up — or rolls back.
    ///
    /// ```
    /// # mod vmm {
    /// #     use std::sync::Arc;
    /// #     use switchover::error::StepFailure;
    /// #     use switchover::exec::{Completion, Progress, StepActions};
    /// #     use switchover::ids::{DeviceId, Side};
    /// #     use switchover::plan::Plan;
    /// #     use switchover::recipe::{build, rollback, NoCosts, RecipeOptions};
    /// #     use switchover::roles::{RollbackPlan, SideSetup};
    /// #     use switchover::state::DeviceState;
    /// #     use switchover::step::{Step, StepKind};
    /// #     use switchover::topology::Topology;
    /// #
    /// #     /// One side's devices, in memory: the guest left ring `r` of every device at
    /// #     /// base `100 + r`; the source reads it, the destination checks it got it.
    /// #     pub struct Devices {
    /// #         state: Arc<DeviceState>,
    /// #         /// A step that fails: its kind, its device, and how.
    /// #         fail: Option<(StepKind, DeviceId, StepFailure)>,
    /// #     }
    /// #     impl StepActions for Devices {
    /// #         fn start(&self, step: &Step, done: Completion) {
    /// #             if let Some((kind, device, failure)) = &self.fail {
    /// #                 if step.kind == *kind && step.device == *device {
    /// #                     return done.complete(Err(failure.clone()));
    /// #                 }
    /// #             }
    /// #             let ring = step.ring.unwrap_or(0);
    /// #             let base = 100 + ring as u16;
    /// #             let r = match step.kind {
    /// #                 StepKind::GetVringBase => {
    /// #                     self.state.set_base(step.device, ring, base);
    /// #                     Ok(())
    /// #                 }
    /// #                 StepKind::SetVringBase if self.state.base(step.device, ring) != Some(base) => {
    /// #                     Err(StepFailure::MissingState { what: format!("the base of ring {ring}") })
    /// #                 }
    /// #                 _ => Ok(()),
    /// #             };
    /// #             done.complete(r);
    /// #         }
    /// #         fn reconnect(&self, _device: DeviceId) -> bool {
    /// #             true // a new backend process
    /// #         }
    /// #         fn recover_base(&self, _device: DeviceId, ring: u32) -> Option<u16> {
    /// #             Some(100 + ring as u16) // the used ring's index, read from guest memory
    /// #         }
    /// #     }
    /// #
    /// #     /// `side`'s plan of the engine's recipe, on devices of its own.
    /// #     pub fn setup(topo: &Arc<Topology>, side: Side, fail: Option<(StepKind, DeviceId, StepFailure)>) -> SideSetup {
    /// #         let state = Arc::new(DeviceState::new(topo));
    /// #         let plan = Arc::new(build(topo, side, &RecipeOptions::engine(), &NoCosts).unwrap());
    /// #         SideSetup { plan, actions: Arc::new(Devices { state: state.clone(), fail }), state }
    /// #     }
    /// #
    /// #     /// The source's rollback: the recipe's rollback plan, on the source's devices.
    /// #     pub fn rollback_of(src: &SideSetup) -> impl Fn(&Plan, &Progress, &[DeviceId]) -> RollbackPlan + '_ {
    /// #         move |plan: &Plan, progress: &Progress, lost: &[DeviceId]| {
    /// #             let rb = rollback(plan, progress, lost, &RecipeOptions::engine(), &NoCosts).ok()?;
    /// #             Some((Arc::new(rb), src.actions.clone()))
    /// #         }
    /// #     }
    /// # }
    /// # use vmm::{rollback_of, setup};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use switchover::exec::Engine;
    /// use switchover::ids::Side;
    /// use switchover::roles::path::channel_pair;
    /// use switchover::roles::{MessageKind, PathError};
    /// use switchover::roles::{Deadlines, Outcome, PathOp, Source, SwitchoverError};
    /// use switchover::topology::Topology;
    /// let src = setup(&Arc::new(Topology::preset("small").unwrap()), Side::Source, None);
    /// let (mut path, destination) = channel_pair();
    /// drop(destination); // the destination went away before its ready-ack
    /// let rollback = rollback_of(&src);
    /// let mut engine = Engine::new(1);
    /// let source = Source { setup: &src, engine: &mut engine, deadlines: Deadlines::default(), rollback: &rollback };
    /// let rep = source.run(&mut path);
    /// let Outcome::Aborted { cause } = &rep.outcome else { panic!("{:?}", rep.outcome) };
    /// // The return path failed, not a device.
    /// assert_eq!(
    ///     cause,
    ///     &SwitchoverError::ReturnPath { side: Side::Source, op: PathOp::Wait(MessageKind::Ready), source: PathError::Closed }
    /// );
    /// assert_eq!(cause.device_name(), None);
    /// assert_eq!(rep.downtime, Duration::ZERO);
    /// ```
    pub fn run(self, path: &mut dyn ReturnPath) -> SwitchoverReport {
        let s = self.setup;
        let e = &mut *self.engine;
        let side = Side::Source;
        let mut p = Progress::new(&s.plan);
        let mut runs = Vec::new();
        let (failed, _) = run_window(s, e, Window::Prepare, &mut p, &mut runs);
        if let Some(cause) = failed {
            let _ = path.send(&Message::Abort { cause: cause.clone() });
            return not_opened(Outcome::Aborted { cause }, runs);
        }
        match path.recv(Instant::now() + self.deadlines.ready) {
            Ok(Message::Ready { .. }) => {}
            Ok(Message::NotReady { cause }) => return not_opened(Outcome::Aborted { cause }, runs),
            Ok(other) => return not_opened(Outcome::Aborted { cause: unexpected(side, MessageKind::Ready, &other) }, runs),
            Err(err) => return not_opened(Outcome::Aborted { cause: path_error(side, PathOp::Wait(MessageKind::Ready), err) }, runs),
        }
        // The destination is ready: open the window.
        let opened = Instant::now();
        let (failed, _) = run_window(s, e, Window::Blackout, &mut p, &mut runs);
        if let Some(cause) = failed {
            let _ = path.send(&Message::Abort { cause: cause.clone() });
            return self.roll_back(cause, &p, opened, runs, 0);
        }
        let bases = s.state.export();
        let carried = bases.len();
        if let Err(err) = path.send(&Message::State { bases, inflight: s.state.inflight() }) {
            // The state never left: the destination cannot run the guest.
            return self.roll_back(path_error(side, PathOp::Send(MessageKind::State), err), &p, opened, runs, 0);
        }
        match path.recv(Instant::now() + self.deadlines.running) {
            Ok(Message::Running { .. }) => {}
            Ok(Message::StartFailed { cause }) => return self.roll_back(cause, &p, opened, runs, carried),
            Ok(other) => {
                return report(
                    Outcome::InDoubt { cause: unexpected(side, MessageKind::Running, &other) },
                    opened,
                    opened.elapsed(),
                    runs,
                    carried,
                )
            }
            Err(err) => {
                let cause = path_error(side, PathOp::Wait(MessageKind::Running), err);
                return report(Outcome::InDoubt { cause }, opened, opened.elapsed(), runs, carried);
            }
        }
        let downtime = opened.elapsed();
        clean_up(s, e, &mut p, runs, opened, downtime, carried)
    }

    /// All or nothing: restart the source with the state read from it. Backends of
    /// devices whose steps failed are reconnected, and the bases their rings never
    /// reported are recovered from guest memory.
    fn roll_back(self, cause: SwitchoverError, p: &Progress, opened: Instant, runs: Vec<RunReport>, carried: usize) -> SwitchoverReport {
        let s = self.setup;
        let failures: Vec<StepError> = runs.iter().flat_map(|r| r.failures.clone()).collect();
        let lost = lost_devices(&s.plan, &failures);
        for &d in &lost {
            s.actions.reconnect(d);
            for st in s.plan.steps().iter().filter(|x| x.device == d && x.kind == StepKind::GetVringBase) {
                let r = st.ring.expect("per-ring step");
                if s.state.base(d, r).is_none() {
                    if let Some(b) = s.actions.recover_base(d, r) {
                        s.state.set_base(d, r, b);
                    }
                }
            }
        }
        let rb = (self.rollback)(&s.plan, p, &lost).map(|(plan, actions)| {
            let mut rp = Progress::new(&plan);
            let r = self.engine.run(&plan, Window::Blackout, actions, &mut rp);
            (plan, r)
        });
        let outcome = match rb.as_ref().and_then(|(_, r)| r.failure.clone()) {
            None => Outcome::RolledBack { cause },
            Some(rollback) => Outcome::Failed { cause, rollback: Some(rollback) },
        };
        SwitchoverReport { outcome, downtime: opened.elapsed(), window_opened: opened, runs, rollback: rb, bases_carried: carried }
    }
}

/// Runs a whole switchover with both roles in this process, each on its own engine
/// and thread (as two VMMs would), joined by an in-process [`super::path::ChannelPath`].
/// The report holds both sides' runs; downtime is the source's measure.
///
/// ```
/// # mod vmm {
/// #     use std::sync::Arc;
/// #     use switchover::error::StepFailure;
/// #     use switchover::exec::{Completion, Progress, StepActions};
/// #     use switchover::ids::{DeviceId, Side};
/// #     use switchover::plan::Plan;
/// #     use switchover::recipe::{build, rollback, NoCosts, RecipeOptions};
/// #     use switchover::roles::{RollbackPlan, SideSetup};
/// #     use switchover::state::DeviceState;
/// #     use switchover::step::{Step, StepKind};
/// #     use switchover::topology::Topology;
/// #
/// #     /// One side's devices, in memory: the guest left ring `r` of every device at
/// #     /// base `100 + r`; the source reads it, the destination checks it got it.
/// #     pub struct Devices {
/// #         state: Arc<DeviceState>,
/// #         /// A step that fails: its kind, its device, and how.
/// #         fail: Option<(StepKind, DeviceId, StepFailure)>,
/// #     }
/// #     impl StepActions for Devices {
/// #         fn start(&self, step: &Step, done: Completion) {
/// #             if let Some((kind, device, failure)) = &self.fail {
/// #                 if step.kind == *kind && step.device == *device {
/// #                     return done.complete(Err(failure.clone()));
/// #                 }
/// #             }
/// #             let ring = step.ring.unwrap_or(0);
/// #             let base = 100 + ring as u16;
/// #             let r = match step.kind {
/// #                 StepKind::GetVringBase => {
/// #                     self.state.set_base(step.device, ring, base);
/// #                     Ok(())
/// #                 }
/// #                 StepKind::SetVringBase if self.state.base(step.device, ring) != Some(base) => {
/// #                     Err(StepFailure::MissingState { what: format!("the base of ring {ring}") })
/// #                 }
/// #                 _ => Ok(()),
/// #             };
/// #             done.complete(r);
/// #         }
/// #         fn reconnect(&self, _device: DeviceId) -> bool {
/// #             true // a new backend process
/// #         }
/// #         fn recover_base(&self, _device: DeviceId, ring: u32) -> Option<u16> {
/// #             Some(100 + ring as u16) // the used ring's index, read from guest memory
/// #         }
/// #     }
/// #
/// #     /// `side`'s plan of the engine's recipe, on devices of its own.
/// #     pub fn setup(topo: &Arc<Topology>, side: Side, fail: Option<(StepKind, DeviceId, StepFailure)>) -> SideSetup {
/// #         let state = Arc::new(DeviceState::new(topo));
/// #         let plan = Arc::new(build(topo, side, &RecipeOptions::engine(), &NoCosts).unwrap());
/// #         SideSetup { plan, actions: Arc::new(Devices { state: state.clone(), fail }), state }
/// #     }
/// #
/// #     /// The source's rollback: the recipe's rollback plan, on the source's devices.
/// #     pub fn rollback_of(src: &SideSetup) -> impl Fn(&Plan, &Progress, &[DeviceId]) -> RollbackPlan + '_ {
/// #         move |plan: &Plan, progress: &Progress, lost: &[DeviceId]| {
/// #             let rb = rollback(plan, progress, lost, &RecipeOptions::engine(), &NoCosts).ok()?;
/// #             Some((Arc::new(rb), src.actions.clone()))
/// #         }
/// #     }
/// # }
/// # use vmm::{rollback_of, setup};
/// use std::sync::Arc;
/// use switchover::error::StepFailure;
/// use switchover::exec::Engine;
/// use switchover::ids::{DeviceId, Side};
/// use switchover::roles::{run_in_process, Outcome};
/// use switchover::step::StepKind;
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// // net1's backend refuses to start a ring on the destination.
/// let refuse = (StepKind::SetVringKick, DeviceId(1), StepFailure::Backend { message: "EINVAL".into() });
/// let (src, dst) = (setup(&topo, Side::Source, None), setup(&topo, Side::Destination, Some(refuse)));
/// let rep = run_in_process(&src, &dst, &mut Engine::new(2), &mut Engine::new(2), &rollback_of(&src));
/// // The destination could not start: the source resumes the guest, and says why.
/// assert!(matches!(&rep.outcome, Outcome::RolledBack { cause } if cause.side() == Side::Destination));
/// ```
pub fn run_in_process(
    src: &SideSetup,
    dst: &SideSetup,
    src_engine: &mut Engine,
    dst_engine: &mut Engine,
    rollback: &RollbackFn<'_>,
) -> SwitchoverReport {
    let (mut a, mut b) = channel_pair();
    let deadlines = Deadlines::default();
    let (mut s, d) = std::thread::scope(|sc| {
        let h = sc.spawn(move || Destination { setup: dst, engine: dst_engine, deadlines }.run(&mut b));
        let s = Source { setup: src, engine: src_engine, deadlines, rollback }.run(&mut a);
        drop(a);
        (s, h.join().expect("destination role panicked"))
    });
    s.runs.extend(d.runs);
    s.runs.sort_by_key(|r| r.started_at);
    // Where the destination saw the failure first, its cause is the one to name.
    if let (Outcome::RolledBack { .. }, Outcome::RolledBack { cause }) = (&s.outcome, &d.outcome) {
        if cause.side() == Side::Destination {
            s.outcome = Outcome::RolledBack { cause: cause.clone() };
        }
    }
    if let Outcome::Aborted { cause } = &d.outcome {
        if matches!(s.outcome, Outcome::Aborted { .. }) && cause.step().is_some() {
            s.outcome = Outcome::Aborted { cause: cause.clone() };
        }
    }
    s
}
