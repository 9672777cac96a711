//! Both roles in one process, each on its own engine and thread, as two VMMs would
//! run them.

use std::time::{SystemTime, UNIX_EPOCH};

use super::destination::Destination;
use super::path::channel_pair;
use super::session::Session;
use super::setup::{Deadlines, Outcome, SideSetup, SwitchoverReport};
use super::source::Source;
use crate::exec::Engine;
use crate::ids::Side;

/// Runs a whole switchover with both roles in this process, each on its own engine
/// and thread, joined by an in-process [`super::path::ChannelPath`]. The report is
/// the source's, with both sides' runs; where the destination saw the failure
/// first, its cause is the one named.
///
/// ```
/// use std::sync::Arc;
/// use switchover::exec::{Completion, Engine, StepActions};
/// use switchover::ids::Side;
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::roles::{run_in_process, Outcome, SideSetup};
/// use switchover::state::DeviceState;
/// use switchover::step::{Step, StepKind};
/// use switchover::topology::Topology;
/// /// Devices in memory: every ring's base is 7.
/// struct Devices(Arc<DeviceState>);
/// impl StepActions for Devices {
///     fn start(&self, step: &Step, done: Completion) {
///         if step.kind == StepKind::GetVringBase {
///             self.0.set_base(step.device, step.ring.unwrap(), 7);
///         }
///         done.complete(Ok(()));
///     }
/// }
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let setup = |side| {
///     let state = Arc::new(DeviceState::new(&topo));
///     let plan = Arc::new(build(&topo, side, &RecipeOptions::engine(), &NoCosts).unwrap());
///     SideSetup::new(plan, Arc::new(Devices(state.clone())), state)
/// };
/// let (src, dst) = (setup(Side::Source), setup(Side::Destination));
/// let rep = run_in_process(&src, &dst, &mut Engine::new(2), &mut Engine::new(2));
/// assert_eq!(rep.outcome, Outcome::Completed);
/// assert_eq!(rep.bases_carried, 10);
/// assert_eq!(dst.state.base(switchover::ids::DeviceId(3), 0), Some(7));
/// ```
pub fn run_in_process(src: &SideSetup, dst: &SideSetup, src_engine: &mut Engine, dst_engine: &mut Engine) -> SwitchoverReport {
    run_in_process_with(src, dst, src_engine, dst_engine, Deadlines::default())
}

/// [`run_in_process`] with these deadlines.
pub fn run_in_process_with(
    src: &SideSetup,
    dst: &SideSetup,
    src_engine: &mut Engine,
    dst_engine: &mut Engine,
    deadlines: Deadlines,
) -> SwitchoverReport {
    let (mut a, mut b) = channel_pair();
    // One session id for both sides, different for every run of this process.
    let id = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0) ^ u64::from(std::process::id());
    let topo = src.plan.topology();
    let (ss, ds) = (Session::new(id, topo), Session::new(id, topo));
    let (mut s, d) = std::thread::scope(|sc| {
        let h = sc.spawn(move || Destination::new(dst, dst_engine, ds, deadlines).run(&mut b));
        let s = Source::new(src, src_engine, ss, deadlines).run(&mut a);
        drop(a);
        (s, h.join().expect("the destination role does not panic"))
    });
    s.runs.extend(d.runs);
    s.destination_prediction = d.prediction;
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
            if cause.step().is_some() || matches!(cause, super::SwitchoverError::Hook { .. }) =>
        {
            s.outcome = Outcome::Aborted { cause: cause.clone() };
        }
        _ => {}
    }
    s
}
