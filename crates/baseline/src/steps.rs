//! The steps of a run as one flat list: a view of the engine's records (each
//! window's plan and [`RunReport`](switchover::exec::RunReport)) with times
//! relative to the window's opening.

use std::time::Instant;

use crate::{StrategyRun, WindowRun};
use switchover::exec::{Lane, StepOutcome};
use switchover::ids::{Side, Window};
use switchover::step::{ExecMode, Server};

/// One step as it ran, with times relative to the window's opening (negative in
/// prepare).
///
/// ```
/// # use std::sync::Arc;
/// # use switchover::ids::Side;
/// # use switchover::topology::Topology;
/// # use switchover_baseline::{execute, Checks, InstantDevices, LowerBound2, Strategy, StrategyRun};
/// # let topo = Arc::new(Topology::preset("small").unwrap());
/// # let setup = |side| InstantDevices::setup(&topo, side, &Strategy::Engine.recipe());
/// # let (src, dst) = (setup(Side::Source), setup(Side::Destination));
/// # let lb = LowerBound2::of(&src.plan, &dst.plan, 3);
/// # let e = execute(Strategy::Engine, 2, &src, &dst);
/// # let r = StrategyRun::new(Strategy::Engine, false, e, 3, lb, Checks::default());
/// use switchover::ids::Window;
/// use switchover_baseline::timed_steps;
/// for s in timed_steps(&r) {
///     assert!(s.start_ns <= s.end_ns && !s.rollback && !s.fence);
///     if s.window == Window::Prepare {
///         assert!(s.start_ns < 0); // before the window opened
///     }
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedStep {
    /// Side.
    pub side: Side,
    /// Window it ran in.
    pub window: Window,
    /// Device name.
    pub device: String,
    /// Device kind (`net`, `blk`, or a generic kind).
    pub device_kind: String,
    /// Ring.
    pub ring: Option<u32>,
    /// Step kind name.
    pub step: String,
    /// Lane (0 = caller).
    pub lane: Lane,
    /// Start (ns from window opening).
    pub start_ns: i64,
    /// End (ns from window opening).
    pub end_ns: i64,
    /// Outcome.
    pub outcome: StepOutcome,
    /// The serialised server, if any.
    pub server: Option<Server>,
    /// Whether it was split-phase.
    pub split: bool,
    /// Expected cost (ns).
    pub cost_ns: u64,
    /// Whether this was a rollback step (source).
    pub rollback: bool,
    /// Whether this was a fence step (destination).
    pub fence: bool,
}

/// Every step a run started, in start order: the view the table, the timeline and
/// the trace are drawn from.
///
/// ```
/// # use std::sync::Arc;
/// # use switchover::ids::Side;
/// # use switchover::topology::Topology;
/// # use switchover_baseline::{execute, Checks, InstantDevices, LowerBound2, Strategy, StrategyRun};
/// # let topo = Arc::new(Topology::preset("small").unwrap());
/// # let setup = |side| InstantDevices::setup(&topo, side, &Strategy::Engine.recipe());
/// # let (src, dst) = (setup(Side::Source), setup(Side::Destination));
/// # let lb = LowerBound2::of(&src.plan, &dst.plan, 3);
/// # let e = execute(Strategy::Engine, 2, &src, &dst);
/// # let r = StrategyRun::new(Strategy::Engine, false, e, 3, lb, Checks::default());
/// use switchover_baseline::timed_steps;
/// let steps = timed_steps(&r);
/// assert_eq!(steps.len(), r.steps_started());
/// assert!(steps.windows(2).all(|w| (w[0].start_ns, w[0].end_ns) <= (w[1].start_ns, w[1].end_ns)));
/// ```
pub fn timed_steps(run: &StrategyRun) -> Vec<TimedStep> {
    let mut v: Vec<TimedStep> = run.windows.iter().flat_map(|w| window_steps(w, run.window_opened)).collect();
    v.sort_by_key(|s| (s.start_ns, s.end_ns));
    v
}

fn window_steps(w: &WindowRun, opened: Instant) -> impl Iterator<Item = TimedStep> + '_ {
    let base = signed_ns(w.report.started_at, opened);
    w.report.records.iter().map(move |rec| {
        let s = w.plan.step(rec.step);
        let dev = w.plan.topology().device(s.device);
        TimedStep {
            side: w.plan.side(),
            window: s.window,
            device: dev.name.clone(),
            device_kind: dev.kind.prefix().to_string(),
            ring: s.ring,
            step: s.kind.name().to_string(),
            lane: rec.lane,
            start_ns: base + rec.start.as_nanos() as i64,
            end_ns: base + rec.end.as_nanos() as i64,
            outcome: rec.outcome,
            server: s.server,
            split: s.mode == ExecMode::Split,
            cost_ns: s.cost.as_nanos() as u64,
            rollback: w.rollback,
            fence: w.fence,
        }
    })
}

fn signed_ns(t: Instant, origin: Instant) -> i64 {
    if t >= origin {
        (t - origin).as_nanos() as i64
    } else {
        -((origin - t).as_nanos() as i64)
    }
}
