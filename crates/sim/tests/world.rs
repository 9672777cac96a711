//! What the window's new steps protect, in the SIMULATED world, each with its
//! negative control (the mechanism removed, the check then fails): storage owned
//! by one side at a time, the destination's fence, reconciliation of a
//! configuration the guest changed during precopy, and the dirty-log sync before
//! the final RAM pass.

use std::sync::Arc;
use std::time::Duration;

use switchover::exec::{CallerLane, Completion, Engine, StepActions};
use switchover::ids::{DeviceId, Side};
use switchover::roles::{run_in_process, Outcome, SwitchoverReport};
use switchover::step::{Step, StepKind};
use switchover::topology::Topology;
use switchover_baseline::{timed_steps, Strategy, StrategyRun};
use switchover_sim::{run, safety_checks, Fault, SimConfig, SimRole};

fn cfg() -> SimConfig {
    SimConfig::new(Topology::preset("medium").unwrap()).scale(0.02).workers(3).deadline(Duration::from_millis(300))
}

fn check<'a>(r: &'a StrategyRun, name: &str) -> &'a switchover_baseline::SafetyCheck {
    r.safety.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check '{name}'"))
}

/// Actions that answer some step kinds without doing anything (the mechanism
/// removed), and perform the rest.
struct Without {
    inner: Arc<dyn StepActions>,
    skip: Vec<StepKind>,
}

impl StepActions for Without {
    fn start(&self, step: &Step, done: Completion) {
        if self.skip.contains(&step.kind) {
            done.complete(Ok(()));
        } else {
            self.inner.start(step, done);
        }
    }
    fn start_on_caller(&self, step: &Step, lane: &CallerLane, done: Completion) {
        if self.skip.contains(&step.kind) {
            done.complete(Ok(()));
        } else {
            self.inner.start_on_caller(step, lane, done);
        }
    }
    fn reconnect(&self, device: DeviceId) -> bool {
        self.inner.reconnect(device)
    }
    fn recover_base(&self, device: DeviceId, ring: u32) -> Option<u16> {
        self.inner.recover_base(device, ring)
    }
    fn abandon(&self, device: DeviceId) -> bool {
        self.inner.abandon(device)
    }
}

/// Both roles in one process on one world, the recovery of `side` without `skip`.
fn roles_without(c: &SimConfig, side: Side, skip: &[StepKind]) -> (SimRole, SimRole, SwitchoverReport) {
    let (mut src, mut dst) = SimRole::pair(c);
    let role = if side == Side::Source { &mut src } else { &mut dst };
    let inner = role.setup.recovery.actions.clone();
    role.setup.recovery.actions = Arc::new(Without { inner, skip: skip.to_vec() });
    let rep = run_in_process(&src.setup, &dst.setup, &mut Engine::new(3), &mut Engine::new(3));
    (src, dst, rep)
}

#[test]
fn a_completed_switchover_leaves_every_image_with_the_destination() {
    let r = run(&cfg().blk_inflight(4, Duration::from_millis(2)), Strategy::Engine);
    assert_eq!(r.outcome, Outcome::Completed);
    assert!(r.safe(), "{:?}", r.safety);
    assert!(check(&r, "storage").ok() && check(&r, "guest on one side").ok());
    let steps = timed_steps(&r);
    assert_eq!(steps.iter().filter(|s| s.step == "storage_inactivate").count(), 4);
    assert_eq!(steps.iter().filter(|s| s.step == "storage_activate").count(), 4);
}

#[test]
fn after_a_rollback_the_source_can_write_its_images_and_the_destination_cannot() {
    let f: Fault = "error:set_vring_kick:blk1".parse().unwrap();
    let (src, dst) = SimRole::pair(&cfg().faults(vec![f]));
    let rep = run_in_process(&src.setup, &dst.setup, &mut Engine::new(3), &mut Engine::new(3));
    let Outcome::RolledBack { cause } = &rep.outcome else { panic!("{:?}", rep.outcome) };
    assert_eq!(cause.device_name(), Some("blk1"));
    let world = src.side.world();
    assert_eq!(world.running(), Some(Side::Source));
    for d in Topology::preset("medium").unwrap().devices().iter().filter(|d| d.name.starts_with("blk")) {
        assert_eq!(world.owner(d.id), Some(Side::Source), "{}", d.name);
        assert!(!world.write(d.id, Side::Destination), "{}: the destination wrote after the rollback", d.name);
        assert!(world.write(d.id, Side::Source), "{}", d.name);
    }
    // The destination gave the images back in its fence, the source took them back.
    let fence = rep.fence.as_ref().expect("a fence ran");
    assert!(fence.0.steps().iter().any(|s| s.kind == StepKind::StorageInactivate));
    let rollback = rep.rollback.as_ref().expect("a rollback ran");
    assert!(rollback.0.steps().iter().any(|s| s.kind == StepKind::StorageReactivate));
}

#[test]
fn negative_control_a_rollback_without_storage_reactivate_resumes_a_guest_that_cannot_write() {
    let f: Fault = "error:set_vring_kick:blk1".parse().unwrap();
    let c = cfg().faults(vec![f]);
    let (src, dst, rep) = roles_without(&c, Side::Source, &[StepKind::StorageReactivate]);
    assert!(matches!(rep.outcome, Outcome::RolledBack { .. }), "{:?}", rep.outcome);
    let checks = safety_checks(&rep.outcome, src.side.world(), &dst.side, &Default::default());
    let storage = checks.iter().find(|c| c.name == "storage").unwrap();
    assert!(!storage.ok(), "the storage check did not see the source resume without its images");
    assert!(storage.findings.iter().any(|f| f.contains("a write by the src refused")), "{:?}", storage.findings);
}

#[test]
fn the_fence_stops_every_destination_ring_before_the_source_resumes() {
    // net3's start fails after the other devices' rings were kicked.
    for fault in ["error:set_vring_kick:net3", "crash:ring_notify:net3", "hang:set_vring_kick:blk3"] {
        let f: Fault = fault.parse().unwrap();
        let r = run(&cfg().faults(vec![f]), Strategy::Engine);
        assert!(matches!(r.outcome, Outcome::RolledBack { .. }), "{fault}: {:?}", r.outcome);
        assert!(check(&r, "fence").ok(), "{fault}: {:?}", check(&r, "fence"));
        assert!(r.safe(), "{fault}: {:?}", r.safety);
        assert!(r.fence().is_some(), "{fault}: no fence ran");
    }
}

#[test]
fn negative_control_without_its_fence_the_destination_leaves_rings_live() {
    // net3's kick hangs until its deadline: every other ring was kicked by then.
    let f: Fault = "hang:set_vring_kick:net3".parse().unwrap();
    let c = cfg().faults(vec![f]);
    let skip = [StepKind::GetVringBase, StepKind::VringDisable, StepKind::DrainInflight];
    let (src, dst, rep) = roles_without(&c, Side::Destination, &skip);
    assert!(matches!(rep.outcome, Outcome::RolledBack { .. }), "{:?}", rep.outcome);
    let checks = safety_checks(&rep.outcome, src.side.world(), &dst.side, &Default::default());
    let fence = checks.iter().find(|c| c.name == "fence").unwrap();
    assert!(!fence.ok(), "the fence check did not see live destination rings");
    assert!(fence.findings.iter().any(|f| f.starts_with("dst net0 ring 0")), "{:?}", fence.findings);
}

#[test]
fn a_device_the_guest_changed_during_precopy_is_reconciled_in_the_window() {
    let r = run(&cfg().precopy_changes(&["net1", "blk2"]), Strategy::Engine);
    assert_eq!(r.outcome, Outcome::Completed);
    assert!(check(&r, "configuration").ok(), "{:?}", check(&r, "configuration"));
    assert!(r.safe(), "{:?}", r.safety);
    // Only the changed devices' reconcile is costed in the plan…
    let mut costed: Vec<String> =
        timed_steps(&r).into_iter().filter(|s| s.step == "reconcile" && s.cost_ns > 0).map(|s| s.device).collect();
    costed.sort();
    assert_eq!(costed, ["blk2", "net1"]);
    // …and only they were redone.
    let (src, dst) = SimRole::pair(&cfg().precopy_changes(&["net1", "blk2"]));
    let rep = run_in_process(&src.setup, &dst.setup, &mut Engine::new(3), &mut Engine::new(3));
    assert_eq!(rep.outcome, Outcome::Completed);
    let mut redone = dst.side.world().findings().reconciled;
    redone.sort();
    assert_eq!(redone, ["blk2", "net1"]);
}

#[test]
fn negative_control_without_reconcile_a_changed_device_runs_its_old_configuration() {
    let r = run(&cfg().precopy_changes(&["net1"]).reconcile(false), Strategy::Engine);
    assert_eq!(r.outcome, Outcome::Completed);
    let c = check(&r, "configuration");
    assert!(!c.ok(), "the configuration check did not see net1's old configuration");
    assert!(c.findings.iter().all(|f| f.starts_with("net1 ")), "{:?}", c.findings);
    assert!(!r.safe());
}

#[test]
fn the_final_pass_after_the_log_sync_carries_the_backends_last_writes() {
    for s in [Strategy::Engine, Strategy::Serial, Strategy::Qemu] {
        let r = run(&cfg(), s);
        assert!(check(&r, "memory").ok(), "{}: {:?}", s.name(), check(&r, "memory"));
    }
}

#[test]
fn negative_control_without_the_log_sync_the_destination_starts_on_stale_memory() {
    for s in [Strategy::Engine, Strategy::Serial] {
        let r = run(&cfg().log_sync(false), s);
        let m = check(&r, "memory");
        assert!(!m.ok(), "{}: the memory check did not see the lost used-ring writes", s.name());
        assert_eq!(m.findings.len(), Topology::preset("medium").unwrap().total_rings() as usize, "{}", s.name());
        assert!(!r.safe());
    }
}

#[test]
fn the_guest_runs_on_exactly_one_side() {
    let done = run(&cfg(), Strategy::Engine);
    assert!(check(&done, "guest on one side").ok());
    let f: Fault = "error:get_vring_base:net2".parse().unwrap();
    let back = run(&cfg().faults(vec![f]), Strategy::Engine);
    assert!(matches!(back.outcome, Outcome::RolledBack { .. }));
    assert!(check(&back, "guest on one side").ok(), "{:?}", back.safety);
    // Today's VMMs have no rollback: the guest runs nowhere, and the check says so.
    let f: Fault = "error:get_vring_base:net2".parse().unwrap();
    let stuck = run(&cfg().faults(vec![f]), Strategy::Qemu);
    assert!(matches!(stuck.outcome, Outcome::Failed { .. }));
    assert!(!check(&stuck, "guest on one side").ok());
}
