//! REAL components: the mechanisms that make a failure end safe, each shown to
//! hold and, with the mechanism taken away (a negative control), shown to be what
//! the check depends on:
//!
//! * the destination's fence: when it says `start_failed`, none of its rings is
//!   live (its own backends' ring logs); without the fence, one is;
//! * storage handed over as steps, image locking on: after a rollback the source
//!   holds the image and writes it, the destination neither holds it nor can take
//!   it; without locking the destination can take it, without the steps (and
//!   locking) both hold it;
//! * backends without REPLY_ACK: a switchover ends `completed_unverified`, never
//!   `completed`; a destination backend killed after its last fire-and-forget
//!   message is found by the probe and the source resumes; without the probe the
//!   switchover reports the guest running on the destination with a dead backend.
//!
//! Needs /dev/kvm (root); skipped, with the reason printed, when it is absent.

mod real_common;

use std::sync::Mutex;
use std::time::Duration;

use switchover::ids::Side;
use switchover::roles::{MessageKind, Outcome};
use switchover::step::StepKind;
use switchover_baseline::Strategy;
use switchover_sim::Fault;
use switchover_testbed::rig::Switches;
use switchover_testbed::{run_strategy, BlkBackend, RealConfig, RealRun};

/// The tests of this file count this process's fds: one run at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn config() -> Option<RealConfig> {
    // net0 and blk0, one ring pair / queue each, both on the own backends (whose
    // ring logs and storage switch the checks read).
    let mut c = real_common::config(1, 1, 1, 1, BlkBackend::Own, Duration::from_millis(400))?;
    c.precopy_passes = 1;
    Some(c)
}

fn run(cfg: &RealConfig, fault: &str, switches: Switches) -> RealRun {
    let mut cfg = cfg.clone();
    cfg.inject = if fault.is_empty() { vec![] } else { vec![fault.parse::<Fault>().expect("fault")] };
    cfg.switches = switches;
    let before = real_common::open_fds();
    let r = run_strategy(&cfg, Strategy::Engine).expect("set-up");
    assert_eq!(real_common::open_fds(), before, "{fault}: fds left");
    assert!(r.leftover_processes.is_empty() && !r.leftover_dir, "{fault}: left behind");
    eprintln!(
        "{fault} {switches:?}: {} ({}), runs on {:?}, failed checks {:?}",
        r.run.outcome.name(),
        r.run.outcome.cause().map(ToString::to_string).unwrap_or_default(),
        r.runs_on,
        r.failed_checks()
    );
    r
}

/// Whether the destination started a step of `kind` on `device` in its window
/// (not in its fence).
fn dst_started(r: &RealRun, kind: &StepKind, device: &str) -> bool {
    let topo = config().expect("real").topology().expect("topology");
    r.run
        .windows
        .iter()
        .filter(|w| w.side() == Side::Destination && !w.fence)
        .any(|w| w.report.records.iter().map(|rec| w.plan.step(rec.step)).any(|s| s.kind == *kind && topo.device(s.device).name == device))
}

fn rolled_back_naming(r: &RealRun, device: &str, side: Side) {
    assert!(matches!(r.run.outcome, Outcome::RolledBack { .. }), "{:?}", r.run.outcome);
    let cause = r.run.outcome.cause().expect("cause");
    assert_eq!(cause.device_name(), Some(device), "{cause}");
    assert_eq!(cause.side(), side, "{cause}");
    assert_eq!(r.runs_on, Some(Side::Source));
}

#[test]
fn real_destination_abort_has_no_ring_live_when_start_failed_is_sent() {
    let Some(cfg) = config() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The kick reaches net0's destination backend (its ring starts), then the
    // step counts as failed: the destination will not run the guest.
    let fault = "error:set_vring_kick:net0";
    let r = run(&cfg, fault, Switches::default());
    rolled_back_naming(&r, "net0", Side::Destination);
    assert_eq!(r.fence.said, Some(MessageKind::StartFailed), "{:?}", r.fence);
    assert!(r.fence.observed.contains(&"net0".to_string()), "{:?}", r.fence);
    assert!(r.fence.rings_stopped >= 1, "no ring had started before start_failed: {:?}", r.fence);
    assert!(r.fence.ok(), "{:?}", r.fence.findings);
    assert!(r.checks_ok(), "{:?}", r.failed_checks());
    eprintln!("fence: {} ring(s) stopped {:?} µs before start_failed", r.fence.rings_stopped, r.fence.margin_us);

    // Negative control: the fence does nothing; start_failed goes out with the
    // started ring live, and the check says which.
    let n = run(&cfg, fault, Switches { skip_fence: true, ..Switches::default() });
    assert_eq!(n.fence.said, Some(MessageKind::StartFailed), "{:?}", n.fence);
    assert!(!n.fence.ok(), "without the fence the check still passes: {:?}", n.fence);
    assert!(
        n.fence.findings.iter().any(|f| f.starts_with("dst net0 ring") && f.contains("live when start_failed was sent")),
        "{:?}",
        n.fence.findings
    );
    assert!(n.failed_checks().contains(&"fence"), "{:?}", n.failed_checks());
}

#[test]
fn real_after_a_rollback_only_the_source_can_write_the_image() {
    let Some(cfg) = config() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // blk0's destination took the image (storage_activate runs before its first
    // kick), then its kick fails: the destination gives the image up, the source
    // takes it back and resumes.
    let fault = "error:set_vring_kick:blk0";
    let r = run(&cfg, fault, Switches::default());
    rolled_back_naming(&r, "blk0", Side::Destination);
    assert!(dst_started(&r, &StepKind::StorageActivate, "blk0"), "the destination never took the image");
    let rec = r.storage.devices.iter().find(|d| d.device == "blk0").expect("blk0 checked");
    assert!(rec.handed_over, "{rec:?}");
    assert_eq!((rec.src_active, rec.dst_active), (Some(true), Some(false)), "{rec:?}");
    assert_eq!(rec.other_refused, Some(true), "{rec:?}");
    assert!(rec.note.contains("held by another process"), "the destination was refused for another reason: {rec:?}");
    assert!(r.storage.ok(), "{:?}", r.storage.findings);
    // The source writes: every write after the rollback acknowledged and on disk.
    assert!(r.disk.missing.is_empty() && r.disk.on_disk == r.disk.submitted, "{:?}", r.disk);
    assert!(r.post_switchover.is_ok() && r.blk_rings_verified == 1, "{:?}", r.post_switchover);
    assert!(r.checks_ok(), "{:?}", r.failed_checks());

    // Negative control 1: image locking off. The steps still hand the image
    // over and back, but nothing stops the destination from taking it again.
    let n = run(&cfg, fault, Switches { no_image_lock: true, ..Switches::default() });
    rolled_back_naming(&n, "blk0", Side::Destination);
    assert!(!n.storage.ok(), "without image locking the check still passes: {:?}", n.storage);
    assert!(
        n.storage.findings.iter().any(|f| f.contains("blk0: the dst backend took the image while the guest runs on the src")),
        "{:?}",
        n.storage.findings
    );

    // Negative control 2: no storage steps (and no locking, without which the
    // destination's backend could not even start holding the image): both sides
    // hold it, two writers.
    let n = run(&cfg, fault, Switches { skip_storage: true, no_image_lock: true, ..Switches::default() });
    rolled_back_naming(&n, "blk0", Side::Destination);
    assert!(!n.storage.ok(), "without storage steps the check still passes: {:?}", n.storage);
    assert!(n.storage.findings.iter().any(|f| f.contains("blk0: the dst backend holds the image as well")), "{:?}", n.storage.findings);
}

#[test]
fn real_without_reply_ack_a_switchover_is_unverified_and_a_dead_backend_is_probed() {
    let Some(mut cfg) = config() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    cfg.reply_ack = false;
    let r = run(&cfg, "", Switches::default());
    assert_eq!(r.unacked, ["net0", "blk0"], "the frontends negotiated REPLY_ACK");
    match &r.run.outcome {
        Outcome::CompletedUnverified { devices } => assert_eq!(devices.len(), 2, "{devices:?}"),
        o => panic!("without REPLY_ACK: {o:?}"),
    }
    assert_eq!(r.runs_on, Some(Side::Destination));
    assert!(r.checks_ok(), "{:?}", r.failed_checks());

    // net0's destination backend is killed after every start message (sent
    // without acknowledgement) and before the probe's round trip.
    // (The source probes net0 too, after its log_start: the fault is injected on
    // the destination only.)
    cfg.inject_side = Some(Side::Destination);
    let fault = "crash:probe:net0";
    let r = run(&cfg, fault, Switches::default());
    for k in [StepKind::SetVringKick, StepKind::VringEnable, StepKind::Probe] {
        assert!(dst_started(&r, &k, "net0"), "{k} never started on net0");
    }
    assert_ne!(r.run.outcome.name(), "completed");
    rolled_back_naming(&r, "net0", Side::Destination);
    assert_eq!(r.run.outcome.cause().and_then(|c| c.step()).map(|e| e.kind.clone()), Some(StepKind::Probe), "{:?}", r.run.outcome);
    assert!(r.checks_ok(), "{:?}", r.failed_checks());
    assert!(r.post_switchover.is_ok() && r.disk.missing.is_empty(), "{:?} {:?}", r.post_switchover, r.disk);

    // Negative control: the probe does nothing. The switchover reports the guest
    // running on the destination, where net0's backend is dead.
    let n = run(&cfg, fault, Switches { skip_probe: true, ..Switches::default() });
    assert!(n.run.outcome.guest_on_destination(), "{:?}", n.run.outcome);
    assert!(n.post_switchover.is_err(), "a request after the switchover was served by a dead backend? {:?}", n.post_switchover);
    assert!(!n.checks_ok());
}
