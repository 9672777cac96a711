//! The own blk backend's hand-over on real processes, fds and file I/O: a
//! switchover whose blk stop does not wait for the disk.

mod blk_common;

use std::time::Duration;

use blk_common::*;
use switchover::ids::{DeviceId, Side as Role};
use switchover::recipe::{build, BlkPolicy, NoCosts, RecipeOptions};
use switchover::roles::Outcome;
use switchover::step::StepKind;
use switchover_testbed::blk::driver::BlkDriver;
use switchover_testbed::blk::BlkOptions;
use switchover_testbed::dir::PrivateDir;
use switchover_vhost::actions::hand_over_policies;
use switchover_vhost::frontend::FrontendConfig;

/// Not a test: the backend process this test binary runs as (see `blk_common::exe`).
#[test]
#[ignore]
fn blk_backend_child_process() {
    if let Some(code) = switchover_testbed::blk::child_main_from_env() {
        std::process::exit(code);
    }
}

fn wait_popped(side: &Side, n: u64) {
    let t = std::time::Instant::now();
    while side.control().stats().unwrap().popped < n {
        assert!(t.elapsed() < Duration::from_secs(10), "the backend did not take {n} requests");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn hand_over_with_requests_in_flight_completes_each_once() {
    let dir = PrivateDir::new().unwrap();
    let img = image(dir.path(), "disk", 8);
    let queues = 2u32;
    let guest = Guest::new(queues);
    let src_opts = BlkOptions::new(queues as u16);
    let dst_opts = BlkOptions { active: false, ..BlkOptions::new(queues as u16) };
    let src = Side::spawn("src", &guest, dir.path(), &img, src_opts, FrontendConfig::new("src blk0", queues)).unwrap();
    let dst = Side::spawn("dst", &guest, dir.path(), &img, dst_opts, FrontendConfig::new("dst blk0", queues)).unwrap();
    src.bring_up(Duration::from_secs(5)).unwrap();
    assert!(src.frontend().can_hand_over() && dst.frontend().can_hand_over());
    let mut drivers: Vec<BlkDriver> = (0..queues).map(BlkDriver::new).collect();
    writes(&src.mem, &guest, &mut drivers, 2);
    for d in &mut drivers {
        d.wait_all(&src.mem, Duration::from_secs(10)).unwrap();
    }
    // The source's disk stalls: 8 writes per ring stay in flight across the whole
    // window, whatever the machine's load.
    src.control().hold().unwrap();
    writes(&src.mem, &guest, &mut drivers, 8);
    wait_popped(&src, u64::from(queues) * 10);
    // The policy per device, from what its backend offers (drain by default).
    let topo = topology(queues);
    let opts = RecipeOptions { blk_overrides: hand_over_policies(&topo, &*src), ..recipe(BlkPolicy::Drain) };
    assert_eq!(opts.blk_overrides, [(DeviceId(0), BlkPolicy::HandOver)]);
    let plan = build(&topo, Role::Source, &opts, &NoCosts).unwrap();
    assert!(!plan.steps().iter().any(|s| s.kind == StepKind::DrainInflight), "no drain in the window");
    let (rep, src_state) = switchover(&src, &dst, &opts, None, None);
    assert_eq!(rep.outcome, Outcome::Completed, "{:?}", rep.outcome);
    let handed = src_state.inflight().len();
    // Every request not completed at the source's stop was handed over (the
    // source's memory is as its stop left it).
    let outstanding: usize = (0..queues).map(|r| usize::from(src.mem.avail_idx(r).wrapping_sub(src.mem.used_idx(r)))).sum();
    assert!(handed > 0 && handed == outstanding, "handed over {handed}, outstanding at the stop {outstanding}");
    // ... and none of them completes on the source: cancelled, or run and discarded.
    let t = std::time::Instant::now();
    let s = loop {
        let s = src.control().stats().unwrap();
        if s.cancelled + s.discarded == handed as u64 || t.elapsed() > Duration::from_secs(5) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    eprintln!("handed over {handed} request(s); source {s:?}; downtime {:?}", rep.downtime);
    assert_eq!(s.cancelled + s.discarded, handed as u64);
    assert_eq!(s.late_io, 0);
    // The guest runs on the destination, with the destination's memory.
    check(&dst.mem, &mut drivers, &img);
    let d = dst.control().stats().unwrap();
    assert_eq!(d.resubmitted, handed as u64, "the destination resubmitted exactly the requests handed over");
    // The guest goes on, on the destination.
    writes(&dst.mem, &guest, &mut drivers, 3);
    check(&dst.mem, &mut drivers, &img);
    assert!(!src.control().is_active().unwrap() && dst.control().is_active().unwrap());
}
