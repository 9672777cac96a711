//! How long the blk stop takes with 8 requests in flight per ring under a
//! throttle of 200 requests per second: hand-over against drain, side by side in
//! one run, on the own backend (real processes, sockets and file I/O).
//!
//! Shown as figures and ratios (printed); asserted only structurally: the
//! hand-over's stop leaves the requests recorded in flight, the drain's leaves
//! none and cannot be shorter than the throttle makes it.
//!
//! `cargo test --release -p switchover-testbed --test blk_stop_time -- --nocapture`

mod blk_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use blk_common::*;
use switchover::exec::{Engine, Progress};
use switchover::ids::{Side as Role, Window};
use switchover::recipe::{build, BlkPolicy, NoCosts};
use switchover::state::DeviceState;
use switchover::step::StepKind;
use switchover_testbed::blk::driver::{BlkDriver, Op};
use switchover_testbed::blk::BlkOptions;
use switchover_testbed::dir::PrivateDir;
use switchover_vhost::frontend::{FrontendConfig, InflightMode};

/// Not a test: the backend process this test binary runs as (see `blk_common::exe`).
#[test]
#[ignore]
fn blk_backend_child_process() {
    if let Some(code) = switchover_testbed::blk::child_main_from_env() {
        std::process::exit(code);
    }
}

const IOPS: u32 = 200;
const IN_FLIGHT: u32 = 8;

/// A source with `queues` rings at 200 IOPS, `IN_FLIGHT` writes taken off every ring.
fn loaded(dir: &std::path::Path, queues: u32, mode: InflightMode) -> (Arc<Guest>, Arc<Side>, Vec<BlkDriver>) {
    let img = image(dir, &format!("disk-{mode:?}-{queues}"), 8);
    let guest = Guest::new(queues);
    let opts = BlkOptions { iops: Some(IOPS), ..BlkOptions::new(queues as u16) };
    let fcfg = FrontendConfig { inflight: mode, ..FrontendConfig::new("src blk0", queues) };
    let src = Side::spawn(&format!("src-{mode:?}"), &guest, dir, &img, opts, fcfg).unwrap();
    src.bring_up(Duration::from_secs(5)).unwrap();
    let mut drivers: Vec<BlkDriver> = (0..queues).map(BlkDriver::new).collect();
    for d in &mut drivers {
        for n in 0..IN_FLIGHT {
            d.submit(&src.mem, Op::Write { sector: sector(d.ring(), n) }).unwrap();
        }
        guest.kick(d.ring());
    }
    let t = Instant::now();
    while src.control().stats().unwrap().popped < u64::from(queues * IN_FLIGHT) {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_micros(200));
    }
    (guest, src, drivers)
}

#[test]
fn get_vring_base_hand_over_vs_drain() {
    let dir = PrivateDir::new().unwrap();
    let d = Duration::from_secs(10);
    // Hand-over: GET_VRING_BASE_INFLIGHT negotiated.
    let (_guest, src, _drivers) = loaded(dir.path(), 1, InflightMode::Offered);
    let t = Instant::now();
    let base = src.frontend().get_vring_base(0, d).wait().unwrap();
    let hand_over = t.elapsed();
    let used = src.mem.used_idx(0);
    let recorded = src.frontend().inflight().unwrap().queue(0).unwrap().in_flight(used).unwrap().len();
    assert_eq!(u32::from(base), IN_FLIGHT);
    assert_eq!(usize::from(base - used), recorded, "every request not completed is recorded in flight");
    assert!(recorded > 0, "requests were in flight at the stop");
    // The stop did not wait for them, and none completes after it.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(src.mem.used_idx(0), used, "no completion after the stop");
    // Drain: the same backend without GET_VRING_BASE_INFLIGHT completes them first.
    let (_guest2, src2, _d2) = loaded(dir.path(), 1, InflightMode::TrackOnly);
    let t = Instant::now();
    let base2 = src2.frontend().get_vring_base(0, d).wait().unwrap();
    let drain = t.elapsed();
    assert_eq!((u32::from(base2), u32::from(src2.mem.used_idx(0))), (IN_FLIGHT, IN_FLIGHT), "the drain completed every request");
    let slot = Duration::from_nanos(1_000_000_000 / u64::from(IOPS));
    assert!(drain >= slot * (IN_FLIGHT - 2), "a drain cannot beat the throttle ({drain:?})");
    println!(
        "GET_VRING_BASE, {IN_FLIGHT} requests in flight, {IOPS} IOPS: hand-over {:.3} ms ({recorded} left in flight), drain {:.3} ms; drain / hand-over = {:.0}x",
        hand_over.as_secs_f64() * 1e3,
        drain.as_secs_f64() * 1e3,
        drain.as_secs_f64() / hand_over.as_secs_f64()
    );
}

/// The source's whole blackout window (disable, drain or not, GET_VRING_BASE,
/// storage inactivate) on 4 rings of 8 writes each, through the engine.
#[test]
fn source_window_hand_over_vs_drain() {
    let dir = PrivateDir::new().unwrap();
    let topo = topology(4);
    let mut walls = Vec::new();
    for policy in [BlkPolicy::HandOver, BlkPolicy::Drain] {
        let (_guest, src, _drivers) = loaded(dir.path(), 4, InflightMode::Offered);
        let opts = recipe(policy);
        let plan = Arc::new(build(&topo, Role::Source, &opts, &NoCosts).unwrap());
        let drains = plan.in_window(Window::Blackout).filter(|s| s.kind == StepKind::DrainInflight).count();
        assert_eq!(drains, if policy == BlkPolicy::Drain { 4 } else { 0 });
        let state = Arc::new(DeviceState::new(&topo));
        let actions = Actions::new(&src, &state, None);
        let r = Engine::new(2).run(&plan, Window::Blackout, actions, &mut Progress::new(&plan));
        assert!(r.ok(), "{:?}", r.failure);
        let handed = state.inflight().len();
        let outstanding: usize = (0..4).map(|r| usize::from(src.mem.avail_idx(r).wrapping_sub(src.mem.used_idx(r)))).sum();
        match policy {
            // Every request not completed at the stop was handed over, none completed after.
            BlkPolicy::HandOver => assert!(handed > 0 && handed == outstanding, "handed over {handed}, outstanding {outstanding}"),
            BlkPolicy::Drain => assert_eq!((handed, outstanding), (0, 0)),
        }
        walls.push((policy, r.wall, handed));
    }
    let (h, d) = (walls[0].1, walls[1].1);
    println!(
        "source blackout window, 4 rings x {IN_FLIGHT} writes, {IOPS} IOPS: hand-over {:.3} ms ({} handed over), drain {:.3} ms; drain / hand-over = {:.0}x",
        h.as_secs_f64() * 1e3,
        walls[0].2,
        d.as_secs_f64() * 1e3,
        d.as_secs_f64() / h.as_secs_f64()
    );
}

/// A whole switchover (both roles, two guest memories) of 4 rings with 8 writes
/// each taken off the rings: hand-over and drain at 200 IOPS, and hand-over with
/// no throttle (the requests complete at once), side by side. Every request
/// completes once, every write is on the image; the downtimes are printed.
#[test]
fn switchover_downtime_hand_over_vs_drain() {
    use switchover::roles::Outcome;
    use switchover_testbed::blk::driver::pattern;
    let dir = PrivateDir::new().unwrap();
    let mut lines = Vec::new();
    for (name, policy, iops) in [
        ("hand-over, 200 IOPS", BlkPolicy::HandOver, Some(IOPS)),
        ("drain, 200 IOPS", BlkPolicy::Drain, Some(IOPS)),
        ("hand-over, no throttle", BlkPolicy::HandOver, None),
    ] {
        let q = 4u32;
        let img = image(dir.path(), &format!("sw-{}", lines.len()), 8);
        let guest = Guest::new(q);
        let src_opts = BlkOptions { iops, ..BlkOptions::new(q as u16) };
        let dst_opts = BlkOptions { iops, active: false, ..BlkOptions::new(q as u16) };
        let src = Side::spawn("src", &guest, dir.path(), &img, src_opts, FrontendConfig::new("src blk0", q)).unwrap();
        let dst = Side::spawn("dst", &guest, dir.path(), &img, dst_opts, FrontendConfig::new("dst blk0", q)).unwrap();
        src.bring_up(Duration::from_secs(5)).unwrap();
        let mut drivers: Vec<BlkDriver> = (0..q).map(BlkDriver::new).collect();
        for d in &mut drivers {
            for n in 0..IN_FLIGHT {
                d.submit(&src.mem, Op::Write { sector: sector(d.ring(), n) }).unwrap();
            }
            guest.kick(d.ring());
        }
        if iops.is_some() {
            let t = Instant::now();
            while src.control().stats().unwrap().popped < u64::from(q * IN_FLIGHT) {
                assert!(t.elapsed() < Duration::from_secs(10));
                std::thread::sleep(Duration::from_micros(200));
            }
        } else {
            for d in &mut drivers {
                d.wait_all(&src.mem, Duration::from_secs(10)).unwrap();
            }
        }
        let (rep, state) = switchover(&src, &dst, &recipe(policy), None, None);
        assert_eq!(rep.outcome, Outcome::Completed, "{name}: {:?}", rep.outcome);
        let handed = state.inflight().len();
        for d in &mut drivers {
            d.wait_all(&dst.mem, Duration::from_secs(20)).unwrap();
            d.check_exactly_once().unwrap();
            for x in d.done() {
                if let Op::Write { sector } = x.op {
                    assert_eq!(read_sector(&img, sector), pattern(d.ring(), x.n), "{name}");
                }
            }
        }
        lines.push((name, rep.downtime, handed));
    }
    let base = lines[2].1.as_secs_f64();
    for (name, dt, handed) in &lines {
        println!(
            "switchover, 4 rings x {IN_FLIGHT} writes: {name}: downtime {:.3} ms, {handed} handed over, {:.2}x the unthrottled hand-over",
            dt.as_secs_f64() * 1e3,
            dt.as_secs_f64() / base
        );
    }
}
