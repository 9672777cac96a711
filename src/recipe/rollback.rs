//! The recipes for a failed switchover: the source's [`rollback`] (its devices
//! restarted with the state read from them, its VMM-defined devices undone) and the
//! destination's [`fence`] (every ring it may have started stopped, the storage it
//! took given back, before it tells the source it will not run the guest).

use std::collections::HashMap;

use super::{generic_spec, CostModel, Ctx, RecipeOptions};
use crate::exec::{Progress, StepOutcome};
use crate::ids::{DeviceId, Side, StepId, Window};
use crate::plan::{Plan, PlanError};
use crate::step::StepKind;
use crate::topology::{Device, DeviceKind};

/// How the steps of one device ended, by kind and ring.
struct Ran<'a> {
    plan: &'a Plan,
    progress: &'a Progress,
}

impl Ran<'_> {
    fn outcome(&self, d: DeviceId, kind: &StepKind, ring: Option<u32>) -> StepOutcome {
        self.plan
            .steps()
            .iter()
            .find(|s| s.device == d && s.ring == ring && s.kind == *kind)
            .map(|s| self.progress.outcome(s.id))
            .unwrap_or(StepOutcome::NotRun)
    }
    /// Whether the step started (its effect may have happened, whatever it answered).
    fn started(&self, d: DeviceId, kind: &StepKind, ring: Option<u32>) -> bool {
        self.outcome(d, kind, ring) != StepOutcome::NotRun
    }
}

/// The plan that restarts the source's devices after a failed switchover. All in
/// one window (blackout: the guest is still frozen), device by device in parallel.
///
/// * a ring whose base was read (`get_vring_base` done) is restarted as a backend
///   may need after a stop (DPDK drops the ring's address, kick and call): NUM,
///   ADDR, BASE (the base read), CALL, ENABLE, KICK;
/// * a ring that was only disabled is enabled again;
/// * a device in `lost` (its backend was reconnected and has no state) gets its
///   whole start sequence, with the captured (or recovered) bases;
/// * with dirty logging on, logging is turned off (`SET_FEATURES` without
///   `VHOST_F_LOG_ALL`, ring addresses without the log flag): the migration failed;
/// * a blk device whose image was given up takes it back (`storage_reactivate`)
///   before its rings restart, and the rollback fails if it cannot;
/// * a VMM-defined step that ran and declares an undo step gets it, in reverse
///   dependency order (the undo of a later step first);
/// * a device whose backend does not acknowledge requests (`unacked`) ends its
///   restart with a `probe`: the guest resumes only on a backend that answered.
///
/// # Errors
/// [`PlanError`] (never for the built-in kinds).
///
/// ```
/// use std::sync::Arc;
/// use switchover::exec::Progress;
/// use switchover::ids::Side;
/// use switchover::recipe::{build, rollback, NoCosts, RecipeOptions};
/// use switchover::topology::Topology;
/// let t = Arc::new(Topology::preset("single-blk").unwrap());
/// let opts = RecipeOptions { dirty_log: false, ..RecipeOptions::engine() };
/// let src = build(&t, Side::Source, &opts, &NoCosts).unwrap();
/// let none_ran = Progress::new(&src);
/// assert!(rollback(&src, &none_ran, &[], &opts, &NoCosts).unwrap().is_empty());
/// ```
pub fn rollback(
    src: &Plan,
    progress: &Progress,
    lost: &[DeviceId],
    opts: &RecipeOptions,
    costs: &dyn CostModel,
) -> Result<Plan, PlanError> {
    let topo = src.topology().clone();
    let mut c = Ctx::new(&topo, Side::Source, opts, costs);
    let ran = Ran { plan: src, progress };
    for dev in topo.devices() {
        match dev.kind {
            DeviceKind::Net | DeviceKind::Blk => restart(&mut c, dev, &ran, lost.contains(&dev.id)),
            DeviceKind::Generic(_) => undo(&mut c, dev, &ran, Side::Source),
        }
    }
    c.b.build()
}

fn restart(c: &mut Ctx<'_>, dev: &Device, ran: &Ran<'_>, lost: bool) {
    let d = dev.id;
    let b = Window::Blackout;
    let first = c.b.len();
    let reactivate = (dev.kind == DeviceKind::Blk && ran.started(d, &StepKind::StorageInactivate, None))
        .then(|| c.work(d, StepKind::StorageReactivate, None, b, &[]));
    let mut pre: Vec<StepId> = Vec::new();
    if lost {
        let feat = c.msg(d, StepKind::SetFeatures, None, b, &[]);
        pre.push(c.msg(d, StepKind::SetMemTable, None, b, &[feat]));
    } else if c.opts.dirty_log && ran.started(d, &StepKind::LogStart, None) {
        // The migration failed: the backend stops logging.
        pre.push(c.msg(d, StepKind::SetFeatures, None, b, &[]));
    }
    for r in 0..dev.rings() {
        let got = ran.outcome(d, &StepKind::GetVringBase, Some(r)) == StepOutcome::Done;
        if lost || got {
            let num = c.msg(d, StepKind::SetVringNum, Some(r), b, &pre);
            let addr = c.msg(d, StepKind::SetVringAddr, Some(r), b, &[num]);
            let base = c.msg(d, StepKind::SetVringBase, Some(r), b, &[addr]);
            let call = c.msg(d, StepKind::SetVringCall, Some(r), b, &[base]);
            let enable = c.msg(d, StepKind::VringEnable, Some(r), b, &[call]);
            let mut kick_after = vec![enable];
            kick_after.extend(reactivate);
            c.msg(d, StepKind::SetVringKick, Some(r), b, &kick_after);
        } else if ran.started(d, &StepKind::VringDisable, Some(r)) {
            // Disabled, never stopped: the ring runs again once enabled. A ring
            // whose base read failed belongs to a lost device (replayed whole).
            let mut after = pre.clone();
            after.extend(reactivate);
            c.msg(d, StepKind::VringEnable, Some(r), b, &after);
        } else if c.opts.dirty_log && !pre.is_empty() {
            // A ring never stopped: its address again, without the log flag.
            c.msg(d, StepKind::SetVringAddr, Some(r), b, &pre);
        }
    }
    if c.opts.unacked.contains(&d) && c.b.len() > first {
        // A backend without REPLY_ACK took its restart fire-and-forget: one round
        // trip after it shows it alive before the guest resumes on it.
        let restarted: Vec<StepId> = (first..c.b.len()).map(|i| StepId(i as u32)).collect();
        c.msg(d, StepKind::Probe, None, b, &restarted);
    }
}

/// The undo steps of a VMM-defined device's steps that ran on `side`, in reverse
/// dependency order.
fn undo(c: &mut Ctx<'_>, dev: &Device, ran: &Ran<'_>, side: Side) {
    let declared: Vec<_> = dev.steps.iter().filter(|s| s.side == side).collect();
    let mut undo_of: HashMap<&str, StepId> = HashMap::new();
    // Later steps first: an undo waits for the undos of the steps that came after
    // the step it undoes.
    for gs in declared.iter().rev().filter(|s| !s.rollback_only) {
        let Some(u) = &gs.undo else { continue };
        if !ran.started(dev.id, &StepKind::Custom(gs.name.as_str().into()), None) {
            continue;
        }
        let Some(us) = declared.iter().find(|s| s.rollback_only && &s.name == u) else { continue };
        let after: Vec<StepId> = declared
            .iter()
            .filter(|later| later.after.contains(&gs.name))
            .filter_map(|later| undo_of.get(later.name.as_str()).copied())
            .collect();
        let id = c.b.add(generic_spec(c, dev, us, Window::Blackout).after(&after));
        undo_of.insert(gs.name.as_str(), id);
    }
}

/// The plan a destination runs before it tells the source it will not run the
/// guest: every ring it may have started (its `set_vring_kick` was sent) is stopped
/// — blk rings disabled, their resubmitted requests drained, then
/// `get_vring_base` — the storage it took is given back (`storage_inactivate`), and
/// its VMM-defined steps that ran are undone. A fence step that fails leaves a
/// backend that may still run the ring: the role then cuts that device off
/// ([`crate::exec::StepActions::abandon`]) before it answers.
///
/// # Errors
/// [`PlanError`] (never for the built-in kinds).
///
/// ```
/// use std::sync::Arc;
/// use switchover::exec::{Completion, Engine, Progress, StepActions};
/// use switchover::ids::{Side, Window};
/// use switchover::recipe::{build, fence, NoCosts, RecipeOptions};
/// use switchover::step::{Step, StepKind};
/// use switchover::topology::Topology;
/// struct Inline;
/// impl StepActions for Inline {
///     fn start(&self, _s: &Step, done: Completion) {
///         done.complete(Ok(()));
///     }
/// }
/// let t = Arc::new(Topology::preset("single-blk").unwrap());
/// let dst = Arc::new(build(&t, Side::Destination, &RecipeOptions::engine(), &NoCosts).unwrap());
/// let mut p = Progress::new(&dst);
/// let mut e = Engine::new(1);
/// e.run(&dst, Window::Prepare, Arc::new(Inline), &mut p);
/// // Nothing was kicked yet: nothing to stop.
/// assert!(fence(&dst, &p, &RecipeOptions::engine(), &NoCosts).unwrap().is_empty());
/// e.run(&dst, Window::Blackout, Arc::new(Inline), &mut p);
/// let f = fence(&dst, &p, &RecipeOptions::engine(), &NoCosts).unwrap();
/// assert!(f.steps().iter().any(|s| s.kind == StepKind::GetVringBase));
/// assert!(f.steps().iter().any(|s| s.kind == StepKind::StorageInactivate));
/// ```
pub fn fence(dst: &Plan, progress: &Progress, opts: &RecipeOptions, costs: &dyn CostModel) -> Result<Plan, PlanError> {
    let topo = dst.topology().clone();
    let mut c = Ctx::new(&topo, Side::Destination, opts, costs);
    let ran = Ran { plan: dst, progress };
    let b = Window::Blackout;
    for dev in topo.devices() {
        let d = dev.id;
        if matches!(dev.kind, DeviceKind::Generic(_)) {
            undo(&mut c, dev, &ran, Side::Destination);
            continue;
        }
        let mut gets = Vec::new();
        for r in 0..dev.rings() {
            if !ran.started(d, &StepKind::SetVringKick, Some(r)) {
                continue;
            }
            let mut pred = Vec::new();
            if dev.kind == DeviceKind::Blk {
                // Requests it resubmitted settle before the ring's base is read.
                let dis = c.msg(d, StepKind::VringDisable, Some(r), b, &[]);
                pred.push(c.work(d, StepKind::DrainInflight, Some(r), b, &[dis]));
            }
            gets.push(c.msg(d, StepKind::GetVringBase, Some(r), b, &pred));
        }
        if ran.started(d, &StepKind::StorageActivate, None) {
            c.work(d, StepKind::StorageInactivate, None, b, &gets);
        }
    }
    c.b.build()
}
