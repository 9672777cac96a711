//! REAL components, two copies of guest memory: what a migration between two
//! hosts asks of the window, each with a negative control that takes the
//! mechanism away and sees its check fail.
//!
//! * the dirty log: without the window's log sync, the backends' last writes
//!   never reach the destination's memory;
//! * reconciliation: the guest changes four devices during precopy; without
//!   `reconcile` the destination starts them as staged and the guest's requests
//!   go astray;
//! * the net order: tx packets still in a ring at the stop are transmitted by
//!   the destination; disabling the ring first, or kicking before enabling,
//!   discards them;
//! * MSI routes: one commit in the destination's window, from the loaded MSI-X
//!   tables, before the first kick;
//! * logging off after a rollback.
//!
//! Needs /dev/kvm (root) and qemu-storage-daemon; skipped, with the reason
//! printed, only when /dev/kvm is absent.

mod real_common;

use std::sync::Mutex;
use std::time::Duration;

use switchover::ids::Side;
use switchover::roles::Outcome;
use switchover_baseline::Strategy;
use switchover_testbed::rig::Switches;
use switchover_testbed::{run_strategy, BlkBackend, RealConfig, RealRun};

/// One real run at a time (they are heavy on 2 cores).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn config() -> Option<RealConfig> {
    // net0, net1 (2 queue pairs, own backend), blk0 (qemu-storage-daemon), blk1
    // (own backend), 2 queues each.
    real_common::config(2, 2, 2, 2, BlkBackend::Mixed, Duration::from_secs(2))
}

fn run(cfg: &RealConfig, s: Strategy) -> RealRun {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let r = run_strategy(cfg, s).expect("set-up");
    let f = &r.fidelity;
    eprintln!(
        "{}: {} on {:?}; memory {:?}, {} pages differ (first {:?}), buffers {} checked, {} missing; tx {}/{} ({} missing); routes {} in window, {} mismatches; reconciled {:?}; log after failure {:?}",
        s.name(),
        r.run.outcome.name(),
        r.runs_on,
        f.memory.stats,
        f.memory.differing.len(),
        f.memory.differing.first(),
        f.memory.buffers_checked,
        f.memory.buffers_missing.len(),
        f.tx.transmitted,
        f.tx.published,
        f.tx.missing.len(),
        f.routes.commits_in_window,
        f.routes.mismatches.len(),
        f.reconciled,
        f.log_after_failure,
    );
    r
}

#[test]
fn real_memory_per_side_with_the_log_sync_is_identical_at_the_start() {
    let Some(cfg) = config() else { return };
    let r = run(&cfg, Strategy::Engine);
    assert_eq!(r.run.outcome, Outcome::Completed, "{:?}", r.run.outcome.cause());
    assert!(r.checks_ok(), "{:?}", r.fidelity);
    let m = &r.fidelity.memory;
    assert!(m.compared);
    assert!(m.differing.is_empty(), "{:?}", m.differing);
    // Precopy ran while the guest wrote and the backends completed requests; the
    // final pass copied what the window's log sync found.
    assert!(m.stats.passes >= 2, "{:?}", m.stats);
    assert!(m.stats.precopy_logged > 0, "{:?}", m.stats);
    assert_eq!(m.stats.log_syncs, 1, "{:?}", m.stats);
    assert!(m.stats.final_pass_pages > 0 && m.stats.final_from_log > 0, "{:?}", m.stats);
    assert!(m.buffers_checked > 0 && m.buffers_missing.is_empty(), "{:?}", m.buffers_missing);
}

#[test]
fn real_negative_control_without_the_log_sync_the_destination_misses_the_last_writes() {
    let Some(mut cfg) = config() else { return };
    cfg.switches = Switches { skip_log_sync: true, ..Switches::default() };
    let r = run(&cfg, Strategy::Engine);
    // The switchover itself "completes": nothing in the window sees the loss...
    assert_eq!(r.run.outcome, Outcome::Completed, "{:?}", r.run.outcome.cause());
    // ... but the destination started on memory without the backends' last
    // used-ring writes: the pages differ and the guest's requests do not add up.
    assert!(!r.fidelity.memory.differing.is_empty(), "the destination's memory is identical without the log sync");
    assert!(r.fidelity.memory.differing.iter().any(|p| p.contains("used ring")), "{:?}", r.fidelity.memory.differing);
    assert!(!r.checks_ok());
}

#[test]
fn real_precopy_changes_are_reconciled_in_the_window_and_only_there() {
    let Some(mut cfg) = config() else { return };
    cfg.precopy_changes = true;
    let r = run(&cfg, Strategy::Engine);
    assert_eq!(r.run.outcome, Outcome::Completed, "{:?}", r.run.outcome.cause());
    let f = &r.fidelity;
    let changed: Vec<&str> = f.changes.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(changed, ["net1", "net0", "blk0", "blk1"], "{:?}", f.changes);
    // Exactly the changed devices were redone, in the window.
    assert_eq!(f.reconciled, ["net0", "net1", "blk0", "blk1"]);
    assert!(f.reconcile_messages > 0);
    assert!(r.checks_ok(), "{f:?}\n{:?}\n{:?}", r.requests, r.post_switchover);
    // The halved net's inactive rings got nothing delivered on the destination.
    assert!(f.inactive_served.is_empty(), "{:?}", f.inactive_served);
    // The rewritten MSI-X entry's message is what the destination routes.
    assert!(f.routes.mismatches.is_empty(), "{:?}", f.routes.mismatches);
}

#[test]
fn real_negative_control_without_reconcile_the_changed_devices_go_astray() {
    let Some(mut cfg) = config() else { return };
    cfg.precopy_changes = true;
    cfg.reconcile = false;
    let r = run(&cfg, Strategy::Engine);
    let f = &r.fidelity;
    assert!(f.reconciled.is_empty());
    // Started as staged: the moved rings at their old addresses, the inactive
    // queue pairs enabled.
    assert!(!r.checks_ok(), "the checks pass without reconciliation: {f:?}");
    assert!(!f.inactive_served.is_empty(), "an inactive queue pair was not served without reconcile");
    // The guest's next requests on the moved rings and the reset ring are never
    // served: the destination's backends look at the old rings.
    let e = r.post_switchover.as_ref().expect_err("the guest's requests all completed without reconcile").to_string();
    assert!(e.contains("net1 ring") && e.contains("blk1 ring 0"), "{e}");
    assert!(!r.requests_exact());
}

#[test]
fn real_baselines_start_the_changed_devices_from_the_loaded_state() {
    let Some(mut cfg) = config() else { return };
    cfg.precopy_changes = true;
    // Today's VMMs set everything up in the window from the loaded state: no
    // reconcile needed, every check passes, and their route commits are per
    // vector (serial) and per device (qemu).
    for (s, commits) in [(Strategy::Serial, 12), (Strategy::Qemu, 4)] {
        let r = run(&cfg, s);
        assert_eq!(r.run.outcome, Outcome::Completed, "{}: {:?}", s.name(), r.run.outcome.cause());
        assert!(r.checks_ok(), "{}: {:?}", s.name(), r.fidelity);
        assert!(r.fidelity.reconciled.is_empty());
        assert_eq!(r.fidelity.routes.commits_in_window, commits, "{}", s.name());
    }
}

#[test]
fn real_routes_one_commit_in_the_window_before_the_first_kick() {
    let Some(cfg) = config() else { return };
    let r = run(&cfg, Strategy::Engine);
    let rc = &r.fidelity.routes;
    assert_eq!(rc.commits_in_window, 1);
    assert_eq!(rc.ioctls, 1, "the destination's VM had its routing table committed once");
    assert!(rc.before_first_kick && rc.enable_before_kick, "{rc:?}");
    // Every vector routed but the masked one (blk1's last ring).
    assert_eq!(rc.masked, 1);
    assert_eq!(rc.routes as usize, r.bases.len() - 1);
    assert!(rc.mismatches.is_empty(), "{:?}", rc.mismatches);
    assert_eq!(rc.net_disables_before_stop, 0);
}

#[test]
fn real_net_tx_left_in_the_ring_at_the_stop_is_sent_by_the_destination() {
    let Some(mut cfg) = config() else { return };
    cfg.unkicked_tx = 3;
    let r = run(&cfg, Strategy::Engine);
    assert_eq!(r.run.outcome, Outcome::Completed, "{:?}", r.run.outcome.cause());
    let f = &r.fidelity;
    // No net ring was disabled before its base was read; the destination enabled
    // every ring before kicking it; every packet left there went out once.
    assert_eq!(f.routes.net_disables_before_stop, 0);
    assert!(f.routes.enable_before_kick);
    assert!(f.tx.missing.is_empty() && f.tx.twice.is_empty(), "{:?} {:?}", f.tx.missing, f.tx.twice);
    assert!(f.memory.served_after_start > 0, "no tx ring had packets left at the stop");
    assert!(r.checks_ok(), "{f:?}");
}

#[test]
fn real_negative_controls_for_the_net_order_discard_tx() {
    let Some(mut cfg) = config() else { return };
    cfg.unkicked_tx = 3;
    // The old order: net rings disabled before GET_VRING_BASE. A started but
    // disabled tx ring discards its packets (the spec; the own backend does).
    cfg.switches = Switches { disable_net_before_stop: true, ..Switches::default() };
    let r = run(&cfg, Strategy::Engine);
    assert!(!r.fidelity.tx.missing.is_empty(), "no tx packet was discarded with the rings disabled first");
    assert!(!r.checks_ok());
    // The destination kicking before it enables: the same loss there.
    cfg.switches = Switches { kick_before_enable: true, ..Switches::default() };
    let r = run(&cfg, Strategy::Engine);
    assert!(!r.fidelity.tx.missing.is_empty(), "no tx packet was discarded with kick before enable");
    assert!(!r.checks_ok());
}

#[test]
fn real_logging_is_off_after_a_rollback() {
    let Some(mut cfg) = config() else { return };
    for fault in ["crash:get_vring_base:blk1", "error:set_vring_base:net0", "error:set_vring_num:blk0"] {
        cfg.inject = vec![fault.parse().expect("fault")];
        let r = run(&cfg, Strategy::Engine);
        assert_eq!(r.runs_on, Some(Side::Source), "{fault}: {:?}", r.run.outcome);
        // The guest goes on on the source: nothing it makes its backends write is logged.
        assert_eq!(r.fidelity.log_after_failure, Some(0), "{fault}");
        assert!(r.checks_ok(), "{fault}: {:?}", r.fidelity);
    }
    // Negative control: logging left on, the backends (own and
    // qemu-storage-daemon) log the guest's traffic after the rollback.
    cfg.switches = Switches { keep_logging: true, ..Switches::default() };
    cfg.inject = vec!["error:set_vring_base:net0".parse().expect("fault")];
    let r = run(&cfg, Strategy::Engine);
    assert_eq!(r.runs_on, Some(Side::Source));
    assert!(r.fidelity.log_after_failure.is_some_and(|n| n > 0), "{:?}", r.fidelity.log_after_failure);
    assert!(!r.checks_ok());
}

#[test]
fn real_qemu_storage_daemon_logs_through_libvhost_user() {
    let Some(mut cfg) = config() else { return };
    // What the installed daemon offers.
    let dir = switchover_testbed::dir::PrivateDir::new().expect("dir");
    let image = dir.join("probe.img");
    std::fs::File::create(&image).expect("image").set_len(1 << 20).expect("size");
    let bin = cfg.qsd.clone().expect("qemu-storage-daemon");
    let (stream, daemon) = switchover_testbed::qsd::spawn(&bin, dir.path(), "probe", &image, 1, None).expect("daemon");
    let fe = switchover_vhost::frontend::Frontend::connect(stream, &switchover_vhost::frontend::FrontendConfig::new("probe", 1))
        .expect("handshake");
    eprintln!(
        "qemu-storage-daemon offers virtio features {:#x}, protocol features {:?}; negotiated {:?}",
        fe.offered_features(),
        fe.offered_protocol_features(),
        fe.protocol_features()
    );
    assert!(fe.offered_features() & switchover_vhost::frontend::VHOST_F_LOG_ALL != 0, "no VHOST_F_LOG_ALL");
    assert!(fe.can_log(), "no LOG_SHMFD");
    drop(fe);
    drop(daemon);
    // Every blk device on qemu-storage-daemon: the log reports every ring's used
    // ring, and without the window's sync the destination misses the last ones.
    cfg.blk_backend = BlkBackend::Qsd;
    let r = run(&cfg, Strategy::Engine);
    assert!(r.checks_ok(), "{:?}", r.fidelity);
    for ring in r.bases.iter().filter(|b| b.device.starts_with("blk")) {
        let name = format!("{} ring {}", ring.device, ring.ring);
        assert!(r.fidelity.memory.logged_rings.contains(&name), "{name} never logged: {:?}", r.fidelity.memory.logged_rings);
    }
    cfg.switches = Switches { skip_log_sync: true, ..Switches::default() };
    let r = run(&cfg, Strategy::Engine);
    assert!(r.fidelity.memory.differing.iter().any(|p| p.contains("blk") && p.contains("used ring")), "{:?}", r.fidelity.memory.differing);
    assert!(!r.checks_ok());
}

#[test]
fn real_reconcile_moves_doorbells_drops_calls_and_skips_torn_down_rings() {
    let Some(mut cfg) = config() else { return };
    cfg.precopy_changes = true;
    cfg.precopy_extra = true;
    let r = run(&cfg, Strategy::Engine);
    assert_eq!(r.run.outcome, Outcome::Completed, "{:?}", r.run.outcome.cause());
    let f = &r.fidelity;
    eprintln!("{:#?}", f.reconcile_diffs);
    assert_eq!(f.changes.len(), 7, "{:?}", f.changes);
    assert_eq!(f.reconciled, ["net0", "net1", "blk0", "blk1"]);
    // net0 ring 0's call redone without an eventfd, blk0 ring 1's ioeventfd
    // re-registered at the moved doorbell, blk1 ring 1 (torn down) never started.
    let diff = |d: &str| f.reconcile_diffs.iter().find(|x| x.starts_with(&format!("{d}:"))).cloned().unwrap_or_default();
    assert!(diff("net0").contains("calls [0]"), "{}", diff("net0"));
    assert!(diff("blk0").contains("doorbells [1]"), "{}", diff("blk0"));
    assert!(diff("blk1").contains("moved [0, 1]"), "{}", diff("blk1"));
    assert!(f.routes.doorbells.is_empty(), "{:?}", f.routes.doorbells);
    assert!(r.checks_ok(), "{:?}\n{:?}\n{:?}\n{:?}", r.post_switchover, r.run.checks, r.requests, r.disk);
    // Without reconcile: the doorbell is where prepare put it, and the torn-down
    // ring is started on the destination.
    cfg.reconcile = false;
    let r = run(&cfg, Strategy::Engine);
    assert!(!r.fidelity.routes.doorbells.is_empty(), "the doorbell followed without reconcile");
    // (Its backend's own record says it started; the own blk backend refuses to
    // take requests from a base behind its used index, so it serves nothing.)
    assert!(r.fidelity.torn_started.iter().any(|x| x == "blk1 ring 1"), "{:?}", r.fidelity.torn_started);
    assert!(!r.checks_ok());
}

#[test]
fn real_cli_json_reports_memory_per_side_routes_and_reconciled_devices() {
    if config().is_none() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("switchover-real-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("r.json");
    let run = |extra: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchover"))
            .args(["real", "--nets", "2", "--queue-pairs", "2", "--blks", "2", "--queues", "2", "--strategies", "engine", "--json"])
            .arg(&json)
            .args(extra)
            .output()
            .expect("run switchover real");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{extra:?}: status {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("REAL memory per side"), "{stdout}");
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("json")
    };
    let v = run(&[]);
    let r = &v["real"];
    assert_eq!(r["memory"], "per-side", "{r}");
    assert!(r["final_pass_pages"].as_u64().is_some_and(|n| n > 0), "{r}");
    assert!(r["log_syncs"].as_u64().is_some_and(|n| n >= 1), "{r}");
    assert_eq!(r["route_commits_in_window"], 1, "{r}");
    assert_eq!(r["reconciled_devices"], serde_json::json!([]), "{r}");
    // Both ways measured (the figures themselves are for the report, not asserted).
    assert!(r["routing"]["per_vector_ms"].as_f64().is_some() && r["routing"]["one_commit_ms"].as_f64().is_some(), "{r}");
    assert_eq!(r["routing"]["vectors"], r["checks"]["engine"]["routes"]["routes"], "{r}");
    let v = run(&["--precopy-changes"]);
    assert_eq!(v["real"]["reconciled_devices"], serde_json::json!(["net0", "net1", "blk0", "blk1"]), "{}", v["real"]);
    assert_eq!(v["real"]["checks"]["engine"]["ok"], true);
    let _ = std::fs::remove_dir_all(&dir);
}
