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
//! use switchover::exec::Engine;
//! use switchover::step::Side;
//! use switchover::strategy::{SimConfig, SimRole};
//! use switchover::switchover::path::UnixPath;
//! use switchover::switchover::{Deadlines, Destination, Outcome, Source};
//! use switchover::topology::Topology;
//! let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
//! let (src, dst) = (SimRole::new(&cfg, Side::Source), SimRole::new(&cfg, Side::Destination));
//! let (x, y) = UnixStream::pair().unwrap();
//! let (mut src_path, mut dst_path) = (UnixPath::new(x), UnixPath::new(y));
//! let (src_engine, dst_engine) = (Engine::new(2), Engine::new(2));
//! let rollback = src.rollback();
//! let report = std::thread::scope(|s| {
//!     s.spawn(|| Destination { setup: &dst.setup, engine: &dst_engine, deadlines: Deadlines::default() }.run(&mut dst_path));
//!     Source { setup: &src.setup, engine: &src_engine, deadlines: Deadlines::default(), rollback: &rollback }.run(&mut src_path)
//! });
//! assert_eq!(report.outcome, Outcome::Completed);
//! assert_eq!(report.bases_carried, 10);
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::path::{Message, PathError, ReturnPath};
use super::{lost_devices, Outcome, RollbackFn, SideSetup, SwitchoverReport};
use crate::error::{StepError, StepFailure};
use crate::exec::{Engine, Progress, RunReport};
use crate::step::{Side, StepKind, Window};

/// How long each role waits for the other.
///
/// ```
/// use std::time::Duration;
/// use switchover::exec::Engine;
/// use switchover::step::Side;
/// use switchover::strategy::{SimConfig, SimRole};
/// use switchover::switchover::path::channel_pair;
/// use switchover::switchover::{Deadlines, Outcome, Source};
/// use switchover::topology::Topology;
/// let src = SimRole::new(&SimConfig::new(Topology::preset("small").unwrap()).scale(0.02), Side::Source);
/// let (mut path, _silent_destination) = channel_pair();
/// let deadlines = Deadlines { ready: Duration::from_millis(50), ..Deadlines::default() };
/// let rollback = src.rollback();
/// let rep = Source { setup: &src.setup, engine: &Engine::new(1), deadlines, rollback: &rollback }.run(&mut path);
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

fn path_error(side: Side, what: &str, e: &PathError) -> StepError {
    StepError { side, device: "return-path".into(), ring: None, step: what.into(), failure: StepFailure::Other { message: e.to_string() } }
}

fn unexpected(side: Side, waiting_for: &str, got: &Message) -> StepError {
    StepError {
        side,
        device: "return-path".into(),
        ring: None,
        step: waiting_for.into(),
        failure: StepFailure::Garbage { what: format!("got '{}' while waiting for {waiting_for}", got.name()) },
    }
}

/// Runs one window of a side's plan and keeps its report; returns the window's
/// first failure and how long it took.
fn run_window(s: &SideSetup, e: &Engine, w: Window, p: &mut Progress, runs: &mut Vec<RunReport>) -> (Option<StepError>, Duration) {
    let r = e.run(&s.plan, w, s.actions.clone(), p);
    let out = (r.failure.clone(), r.wall);
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
    e: &Engine,
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
/// use std::time::{Duration, Instant};
/// use switchover::exec::Engine;
/// use switchover::sim::SimSide;
/// use switchover::state::VringBase;
/// use switchover::step::Side;
/// use switchover::strategy::{SimConfig, SimRole};
/// use switchover::switchover::path::{channel_pair, Message, ReturnPath};
/// use switchover::switchover::{Deadlines, Destination, Outcome};
/// use switchover::topology::Topology;
/// let dst = SimRole::new(&SimConfig::new(Topology::preset("small").unwrap()).scale(0.02), Side::Destination);
/// let engine = Engine::new(2);
/// let role = Destination { setup: &dst.setup, engine: &engine, deadlines: Deadlines::default() };
/// let (mut source, mut b) = channel_pair();
/// let rep = std::thread::scope(|s| {
///     let h = s.spawn(move || role.run(&mut b));
///     // Play the source: wait for the ready-ack, then send every ring's base.
///     let soon = Instant::now() + Duration::from_secs(5);
///     assert_eq!(source.recv(soon).unwrap().name(), "ready");
///     let base = |d: u32, r: u32| VringBase { device: d, ring: r, base: SimSide::guest_base(d, r) };
///     let topo = dst.setup.plan.topology();
///     let bases = topo.devices().iter().flat_map(|d| (0..d.rings()).map(move |r| base(d.id.0, r))).collect();
///     source.send(&Message::State { bases, inflight: vec![] }).unwrap();
///     assert_eq!(source.recv(soon).unwrap().name(), "running");
///     h.join().unwrap()
/// });
/// assert_eq!((rep.outcome, rep.bases_carried), (Outcome::Completed, 10));
/// ```
#[derive(Debug)]
pub struct Destination<'a> {
    /// Its plan, actions and state.
    pub setup: &'a SideSetup,
    /// Its engine (started before prepare).
    pub engine: &'a Engine,
    /// Its deadlines.
    pub deadlines: Deadlines,
}

impl Destination<'_> {
    /// Prepares, acks, waits for the state, starts the devices, confirms, cleans up.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use switchover::error::{StepError, StepFailure};
    /// use switchover::exec::Engine;
    /// use switchover::step::{Side, Window};
    /// use switchover::strategy::{SimConfig, SimRole};
    /// use switchover::switchover::path::{channel_pair, Message, ReturnPath};
    /// use switchover::switchover::{Deadlines, Destination, Outcome};
    /// use switchover::topology::Topology;
    /// let dst = SimRole::new(&SimConfig::new(Topology::preset("small").unwrap()).scale(0.02), Side::Destination);
    /// let engine = Engine::new(1);
    /// let role = Destination { setup: &dst.setup, engine: &engine, deadlines: Deadlines::default() };
    /// let (mut source, mut b) = channel_pair();
    /// let rep = std::thread::scope(|s| {
    ///     let h = s.spawn(move || role.run(&mut b));
    ///     assert_eq!(source.recv(Instant::now() + Duration::from_secs(5)).unwrap().name(), "ready");
    ///     // The source could not stop its devices: the destination must not start.
    ///     let cause = StepError {
    ///         side: Side::Source,
    ///         device: "net0".into(),
    ///         ring: Some(0),
    ///         step: "get_vring_base".into(),
    ///         failure: StepFailure::Disconnected,
    ///     };
    ///     source.send(&Message::Abort { cause }).unwrap();
    ///     h.join().unwrap()
    /// });
    /// assert!(matches!(rep.outcome, Outcome::RolledBack { .. }));
    /// assert!(rep.phase(Side::Destination, Window::Blackout).is_none()); // never started
    /// ```
    pub fn run(&self, path: &mut dyn ReturnPath) -> SwitchoverReport {
        let (s, e) = (self.setup, self.engine);
        let side = Side::Destination;
        let mut p = Progress::new(&s.plan);
        let mut runs = Vec::new();
        let (failed, wall) = run_window(s, e, Window::Prepare, &mut p, &mut runs);
        if let Some(cause) = failed {
            let _ = path.send(&Message::NotReady { cause: cause.clone() });
            return not_opened(Outcome::Aborted { cause }, runs);
        }
        if let Err(err) = path.send(&Message::Ready { prepare_ms: wall.as_secs_f64() * 1e3 }) {
            return not_opened(Outcome::Aborted { cause: path_error(side, "send ready", &err) }, runs);
        }
        let bases = match path.recv(Instant::now() + self.deadlines.state) {
            Ok(Message::State { bases, inflight }) => {
                s.state.hand_over(&inflight);
                bases
            }
            Ok(Message::Abort { cause }) => return not_opened(Outcome::RolledBack { cause }, runs),
            Ok(other) => return not_opened(Outcome::Aborted { cause: unexpected(side, "state", &other) }, runs),
            Err(err) => return not_opened(Outcome::Aborted { cause: path_error(side, "wait for state", &err) }, runs),
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
/// use switchover::exec::Engine;
/// use switchover::step::Side;
/// use switchover::strategy::{SimConfig, SimRole};
/// use switchover::switchover::path::channel_pair;
/// use switchover::switchover::{Deadlines, Destination, Outcome, Source};
/// use switchover::topology::Topology;
/// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
/// let (src, dst) = (SimRole::new(&cfg, Side::Source), SimRole::new(&cfg, Side::Destination));
/// let (src_engine, dst_engine) = (Engine::new(2), Engine::new(2));
/// let rollback = src.rollback();
/// let source = Source { setup: &src.setup, engine: &src_engine, deadlines: Deadlines::default(), rollback: &rollback };
/// let destination = Destination { setup: &dst.setup, engine: &dst_engine, deadlines: Deadlines::default() };
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
    pub engine: &'a Engine,
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
    /// use std::time::Duration;
    /// use switchover::exec::Engine;
    /// use switchover::step::Side;
    /// use switchover::strategy::{SimConfig, SimRole};
    /// use switchover::switchover::path::channel_pair;
    /// use switchover::switchover::{Deadlines, Outcome, Source};
    /// use switchover::topology::Topology;
    /// let src = SimRole::new(&SimConfig::new(Topology::preset("small").unwrap()).scale(0.02), Side::Source);
    /// let (mut path, destination) = channel_pair();
    /// drop(destination); // the destination went away before its ready-ack
    /// let rollback = src.rollback();
    /// let engine = Engine::new(1);
    /// let source = Source { setup: &src.setup, engine: &engine, deadlines: Deadlines::default(), rollback: &rollback };
    /// let rep = source.run(&mut path);
    /// assert!(matches!(&rep.outcome, Outcome::Aborted { cause } if cause.device == "return-path"));
    /// assert_eq!(rep.downtime, Duration::ZERO);
    /// ```
    pub fn run(&self, path: &mut dyn ReturnPath) -> SwitchoverReport {
        let (s, e) = (self.setup, self.engine);
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
            Ok(other) => return not_opened(Outcome::Aborted { cause: unexpected(side, "ready", &other) }, runs),
            Err(err) => return not_opened(Outcome::Aborted { cause: path_error(side, "wait for ready", &err) }, runs),
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
            return self.roll_back(path_error(side, "send state", &err), &p, opened, runs, 0);
        }
        match path.recv(Instant::now() + self.deadlines.running) {
            Ok(Message::Running { .. }) => {}
            Ok(Message::StartFailed { cause }) => return self.roll_back(cause, &p, opened, runs, carried),
            Ok(other) => {
                return report(Outcome::InDoubt { cause: unexpected(side, "running", &other) }, opened, opened.elapsed(), runs, carried)
            }
            Err(err) => {
                let cause = path_error(side, "wait for running", &err);
                return report(Outcome::InDoubt { cause }, opened, opened.elapsed(), runs, carried);
            }
        }
        let downtime = opened.elapsed();
        clean_up(s, e, &mut p, runs, opened, downtime, carried)
    }

    /// All or nothing: restart the source with the state read from it. Backends of
    /// devices whose steps failed are reconnected, and the bases their rings never
    /// reported are recovered from guest memory.
    fn roll_back(&self, cause: StepError, p: &Progress, opened: Instant, runs: Vec<RunReport>, carried: usize) -> SwitchoverReport {
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
            Some(rollback) => Outcome::Failed { cause, rollback },
        };
        SwitchoverReport { outcome, downtime: opened.elapsed(), window_opened: opened, runs, rollback: rb, bases_carried: carried }
    }
}

/// Keeps `Arc` in scope for doc links.
#[allow(dead_code)]
type _Plan = Arc<crate::plan::Plan>;
