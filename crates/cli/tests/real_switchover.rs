//! REAL components: own vhost-user net/blk backends and qemu-storage-daemon as child
//! processes, KVM ioeventfds/irqfds, a guest driver in shared memfd memory. Each
//! test drives a small topology through stop on the source and start on the
//! destination and checks what the migration must guarantee.
//!
//! Needs /dev/kvm (root) and qemu-storage-daemon; skipped, with the reason printed,
//! only when /dev/kvm is absent.

mod real_common;

use std::time::{Duration, Instant};

use switchover::roles::Outcome;
use switchover_baseline::Strategy;
use switchover_testbed::side::BackendKind;
use switchover_testbed::{run_strategy, BlkBackend, RealConfig, RealFault, RealRun};

fn config(nets: u32, qp: u32, blks: u32, queues: u32, blk: BlkBackend) -> Option<RealConfig> {
    real_common::config(nets, qp, blks, queues, blk, Duration::from_secs(3))
}

/// The guarantees every completed real switchover must give.
fn assert_switchover_ok(r: &RealRun) {
    let name = r.run.strategy.name();
    assert_eq!(r.run.outcome, Outcome::Completed, "{name}: {:?}", r.run.outcome.cause());
    assert!(!r.run.simulated);
    // Every vring base read on the source was set on the destination, and it is
    // what the guest had published, less at most the blk requests it had in
    // flight (the own blk backend stops taking requests once its ring is
    // disabled: the destination takes them from the base).
    for b in &r.bases {
        assert!(b.read.is_some(), "{name}: {} ring {} base never read", b.device, b.ring);
        assert!(
            b.read.is_some_and(|x| b.expected.wrapping_sub(x) <= b.in_flight),
            "{name}: {} ring {} base read {:?}, guest published {} ({} in flight)",
            b.device,
            b.ring,
            b.read,
            b.expected,
            b.in_flight
        );
        assert_eq!(b.set, b.read, "{name}: {} ring {} base set {:?} != read {:?}", b.device, b.ring, b.set, b.read);
        assert_ne!(b.read, Some(0), "{name}: {} ring {} base is zero", b.device, b.ring);
    }
    let distinct: std::collections::BTreeSet<_> = r.bases.iter().map(|b| b.read).collect();
    assert!(distinct.len() > 1, "{name}: all bases equal");
    assert!(r.run.checks.vring_bases_preserved, "{name}: {:?}", r.run.checks.base_mismatches);
    // A request submitted after the switchover completes on the destination; blk
    // data written before it reads back identical through the destination.
    assert_eq!(r.post_switchover.as_ref().ok(), Some(&r.bases.len()), "{name}: {:?}", r.post_switchover);
    let blk_rings = r.bases.iter().filter(|b| b.device.starts_with("blk")).count();
    assert_eq!(r.blk_rings_verified, blk_rings, "{name}");
    // The blk write in flight at the window completed on the source before its base was read.
    assert!(r.run.checks.io.exact(), "{name}: {:?}", r.run.checks.io);
    // A second disable of any notifier issues no second ioctl.
    assert_eq!(r.second_disable_ioctls, 0, "{name}");
    assert_eq!(r.second_disables_refused, 2 * r.bases.len(), "{name}");
    assert_eq!(r.run.checks.double_ioctls, 0, "{name}");
    // No child process or socket file remains.
    assert!(r.leftover_processes.is_empty(), "{name}: processes left: {:?}", r.leftover_processes);
    assert!(!r.leftover_dir, "{name}: socket directory left behind");
}

#[test]
fn real_engine_mixed_own_and_qemu_storage_daemon() {
    let Some(cfg) = config(2, 2, 2, 2, BlkBackend::Mixed) else {
        return;
    };
    let r = run_strategy(&cfg, Strategy::Engine).expect("set-up");
    assert!(
        r.backends.contains(&BackendKind::Qsd) && r.backends.contains(&BackendKind::OwnBlk) && r.backends.contains(&BackendKind::OwnNet)
    );
    assert_switchover_ok(&r);
    // The engine batches notifier changes in one transaction per side.
    assert_eq!(r.run.checks.transactions.0, 2);
    // Both sides predicted before the window opened; the source costed its
    // plain requests from round trips measured on its own backends (the probe),
    // and the run's lower bound is the one from those measured costs.
    assert_eq!(r.run.predicted_before_window(), Some(true));
    assert!(r.run.predicted.downtime().is_some());
    let src = r.run.predicted.source.as_ref().unwrap();
    let probed = src.window.sources.iter().find(|(s, _)| *s == switchover::predict::CostSource::PlainRequest).map_or(0, |x| x.1);
    assert!(probed > 0, "{:?}", src.window.sources);
    assert!(r.run.bound_measured);
    assert_eq!(Some(r.run.lower_bound), r.run.predicted.measured_bound());
}

#[test]
fn real_serial_and_pool_on_qemu_storage_daemon() {
    let Some(cfg) = config(1, 1, 2, 2, BlkBackend::Qsd) else {
        return;
    };
    for s in [Strategy::Serial, Strategy::Pool] {
        let r = run_strategy(&cfg, s).expect("set-up");
        assert!(r.backends.iter().filter(|b| **b == BackendKind::Qsd).count() == 2);
        assert_switchover_ok(&r);
    }
}

#[test]
fn real_engine_own_backends_only() {
    let Some(cfg) = config(2, 2, 1, 2, BlkBackend::Own) else {
        return;
    };
    let r = run_strategy(&cfg, Strategy::Engine).expect("set-up");
    assert!(!r.backends.contains(&BackendKind::Qsd));
    assert_switchover_ok(&r);
}

#[test]
fn real_backend_closing_its_socket_names_device_and_ring() {
    let Some(mut cfg) = config(1, 1, 2, 2, BlkBackend::Mixed) else {
        return;
    };
    cfg.fault = Some(RealFault::Kill("blk1".into()));
    let r = run_strategy(&cfg, Strategy::Engine).expect("set-up");
    let f = r.run.outcome.cause().expect("a killed backend must fail the switchover");
    let msg = f.to_string();
    eprintln!("outcome {}: {msg}", r.run.outcome.name());
    assert_eq!(f.device_name(), Some("blk1"), "{msg}");
    assert!(f.step().is_some_and(|e| e.ring.is_some()), "{msg}");
    assert!(msg.contains("src blk1 ring"), "{msg}");
    assert!(msg.contains("closed its control channel"), "{msg}");
    // The killed backend is replaced and the source resumes: rolled back.
    assert!(matches!(r.run.outcome, Outcome::RolledBack { .. }), "{:?}", r.run.outcome);
    assert_eq!(r.runs_on, Some(switchover::ids::Side::Source));
    assert_eq!(r.reconnects, 1);
    assert!(r.checks_ok(), "{:?} {:?}", r.post_switchover, r.disk);
    assert!(r.leftover_processes.is_empty(), "processes left: {:?}", r.leftover_processes);
    assert!(!r.leftover_dir);
}

#[test]
fn real_hung_backend_times_out_instead_of_hanging() {
    let Some(mut cfg) = config(1, 1, 1, 1, BlkBackend::Own) else {
        return;
    };
    cfg.deadline = Duration::from_millis(300);
    cfg.fault = Some(RealFault::Hang("net0".into()));
    let t = Instant::now();
    let r = run_strategy(&cfg, Strategy::Engine).expect("set-up");
    let f = r.run.outcome.cause().expect("a hung backend must fail the switchover");
    eprintln!("outcome {}: {f}", r.run.outcome.name());
    assert_eq!(f.device_name(), Some("net0"), "{f}");
    assert!(f.to_string().contains("no reply within"), "{f}");
    assert!(matches!(r.run.outcome, Outcome::RolledBack { .. }), "{:?}", r.run.outcome);
    assert!(r.checks_ok(), "{:?} {:?}", r.post_switchover, r.disk);
    assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
    assert!(r.leftover_processes.is_empty(), "processes left: {:?}", r.leftover_processes);
    assert!(!r.leftover_dir);
}
