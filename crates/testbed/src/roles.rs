//! The engine strategy on the rig: both roles in this process, each on its own
//! engine and thread, as two VMMs run them — with every message each role sends
//! recorded with the time it left ([`Sent`]), so that the rig can compare what
//! the backends did with what the roles said (a destination's rings must all be
//! stopped before it says `start_failed`).
//!
//! The report is assembled as `switchover_baseline::execute` assembles the
//! engine's: the source's report with both sides' runs, the fence and the
//! rollback as windows of their own, and where the destination saw the failure
//! first, its cause named.
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use switchover::ids::Side;
//! use switchover::roles::{MessageKind, Outcome};
//! use switchover::topology::Topology;
//! use switchover_baseline::{InstantDevices, Strategy};
//! use switchover_testbed::roles::run_roles;
//! let topo = Arc::new(Topology::preset("small").unwrap());
//! let src = InstantDevices::setup(&topo, Side::Source, &Strategy::Engine.recipe());
//! let dst = InstantDevices::setup(&topo, Side::Destination, &Strategy::Engine.recipe());
//! let (e, sent) = run_roles(2, &src, &dst);
//! assert_eq!(e.outcome, Outcome::Completed);
//! // The source sent its configuration first; the destination said running last.
//! assert_eq!((sent[0].side, sent[0].kind), (Side::Source, MessageKind::Config));
//! assert_eq!(sent.iter().rev().find(|s| s.side == Side::Destination).unwrap().kind, MessageKind::Running);
//! ```

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use switchover::exec::Engine;
use switchover::ids::Side;
use switchover::roles::message::Envelope;
use switchover::roles::path::{channel_pair, ChannelPath, ReturnPath};
use switchover::roles::{Deadlines, Destination, MessageKind, Outcome, PathError, Session, SideSetup, Source, SwitchoverError};
use switchover_baseline::{Executed, Predicted, WindowRun};

/// A message a role sent, and when it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// The side that sent it.
    pub side: Side,
    /// What it was.
    pub kind: MessageKind,
    /// Just before it was handed to the path.
    pub at: Instant,
}

/// An in-process path that records what its side sends.
struct Recording {
    inner: ChannelPath,
    side: Side,
    log: Arc<Mutex<Vec<Sent>>>,
}

impl ReturnPath for Recording {
    fn send(&mut self, m: &Envelope) -> Result<(), PathError> {
        // Taken before the message leaves: whatever the backends did before it,
        // they did before the other side could know.
        let at = Instant::now();
        let r = self.inner.send(m);
        if r.is_ok() {
            self.log.lock().push(Sent { side: self.side, kind: m.message.kind(), at });
        }
        r
    }
    fn recv(&mut self, deadline: Instant) -> Result<Envelope, PathError> {
        self.inner.recv(deadline)
    }
}

/// Runs a whole switchover with both roles in this process, each on its own
/// engine of `workers` workers and thread; returns what happened, as
/// `switchover_baseline::execute` reports the engine, and every message sent, in
/// order.
pub fn run_roles(workers: usize, src: &SideSetup, dst: &SideSetup) -> (Executed, Vec<Sent>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (a, b) = channel_pair();
    let mut a = Recording { inner: a, side: Side::Source, log: log.clone() };
    let mut b = Recording { inner: b, side: Side::Destination, log: log.clone() };
    let id = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0) ^ u64::from(std::process::id());
    let topo = src.plan.topology();
    let (ss, ds) = (Session::new(id, topo), Session::new(id, topo));
    let (mut src_engine, mut dst_engine) = (Engine::new(workers), Engine::new(workers));
    let (mut s, d) = std::thread::scope(|sc| {
        let h = sc.spawn(|| Destination::new(dst, &mut dst_engine, ds, Deadlines::default()).run(&mut b));
        let s = Source::new(src, &mut src_engine, ss, Deadlines::default()).run(&mut a);
        drop(a);
        (s, h.join().expect("the destination role does not panic"))
    });
    s.runs.extend(d.runs);
    s.runs.sort_by_key(|r| r.started_at);
    if s.fence.is_none() {
        s.fence = d.fence;
    }
    // Where the destination saw the failure first, its cause is the one to name.
    match (&s.outcome, &d.outcome) {
        (Outcome::RolledBack { .. }, Outcome::RolledBack { cause }) if cause.side() == Side::Destination => {
            s.outcome = Outcome::RolledBack { cause: cause.clone() };
        }
        (Outcome::Aborted { .. }, Outcome::Aborted { cause })
            if cause.step().is_some() || matches!(cause, SwitchoverError::Hook { .. }) =>
        {
            s.outcome = Outcome::Aborted { cause: cause.clone() };
        }
        _ => {}
    }
    let mut windows: Vec<WindowRun> = s
        .runs
        .into_iter()
        .map(|report| {
            let plan = if report.side == Side::Source { src.plan.clone() } else { dst.plan.clone() };
            WindowRun { plan, report, rollback: false, fence: false }
        })
        .collect();
    if let Some((plan, report)) = s.fence {
        windows.push(WindowRun { plan, report, rollback: false, fence: true });
    }
    if let Some((plan, report)) = s.rollback {
        windows.push(WindowRun { plan, report, rollback: true, fence: false });
    }
    let sent = log.lock().clone();
    let predicted = Predicted { source: s.prediction, destination: d.prediction };
    (Executed { outcome: s.outcome, downtime: s.downtime, window_opened: s.window_opened, windows, predicted }, sent)
}
