//! The drain counts the backend's own requests in flight (its inflight region),
//! not `used == avail` in guest memory: a backend that stops taking requests once
//! its ring is disabled (as the spec has it) leaves published requests in the
//! available ring, and a drain by guest memory never ends on it.

mod blk_common;

use std::sync::Arc;
use std::time::Duration;

use blk_common::*;
use switchover::error::StepFailure;
use switchover::exec::{Engine, Progress};
use switchover::ids::{DeviceId, Side as Role, Window};
use switchover::recipe::{build, BlkPolicy, NoCosts, RecipeOptions};
use switchover::state::DeviceState;
use switchover::step::StepKind;
use switchover_testbed::blk::driver::{BlkDriver, Op};
use switchover_testbed::blk::BlkOptions;
use switchover_testbed::dir::PrivateDir;
use switchover_vhost::frontend::FrontendConfig;

/// Not a test: the backend process this test binary runs as (see `blk_common::exe`).
#[test]
#[ignore]
fn blk_backend_child_process() {
    if let Some(code) = switchover_testbed::blk::child_main_from_env() {
        std::process::exit(code);
    }
}

/// A source whose ring has 2 requests taken and in flight (20 IOPS), then the
/// source's blackout window with the drain policy; once the ring is disabled, 4
/// more requests are published and kicked (a guest's last requests, published as
/// its ring was disabled). Returns the drain's failure, if any, the base read,
/// and the used and avail indices.
fn drain_window(pops_while_disabled: bool) -> (Option<StepFailure>, Option<u16>, u16, u16) {
    let dir = PrivateDir::new().unwrap();
    let img = image(dir.path(), "disk", 1);
    let guest = Guest::new(1);
    let fcfg = FrontendConfig { pops_while_disabled, ..FrontendConfig::new("src blk0", 1) };
    let src = Side::spawn("src", &guest, dir.path(), &img, BlkOptions { iops: Some(20), ..BlkOptions::new(1) }, fcfg).unwrap();
    src.bring_up(Duration::from_secs(5)).unwrap();
    let mut d = BlkDriver::new(0);
    for n in 0..2 {
        d.submit(&src.mem, Op::Write { sector: n }).unwrap();
    }
    guest.kick(0);
    let t = std::time::Instant::now();
    while src.control().stats().unwrap().popped < 2 {
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_micros(200));
    }
    let d = Arc::new(parking_lot::Mutex::new(d));
    let (dd, g) = (d.clone(), guest.clone());
    let hook: Hook = Arc::new(move |side: &Side, step: &switchover::step::Step| {
        if step.kind == StepKind::DrainInflight {
            let mut d = dd.lock();
            for n in 2..6 {
                d.submit(&side.mem, Op::Write { sector: n }).unwrap();
            }
            g.kick(0);
        }
        None
    });
    let topo = topology(1);
    let opts = RecipeOptions { drain_deadline: Duration::from_millis(600), ..recipe(BlkPolicy::Drain) };
    let plan = Arc::new(build(&topo, Role::Source, &opts, &NoCosts).unwrap());
    let state = Arc::new(DeviceState::new(&topo));
    let r = Engine::new(2).run(&plan, Window::Blackout, Actions::new(&src, &state, Some(hook)), &mut Progress::new(&plan));
    let f = r.failures.iter().find(|f| f.kind == StepKind::DrainInflight).map(|f| f.failure.clone());
    (f, state.base(DeviceId(0), 0), src.mem.used_idx(0), src.mem.avail_idx(0))
}

#[test]
fn drain_ends_when_the_backends_requests_complete() {
    let (failure, base, used, avail) = drain_window(false);
    assert_eq!(failure, None);
    // The two taken requests completed; the four published ones stay for the
    // destination, from the base on.
    assert_eq!((base, used, avail), (Some(2), 2, 6));
}

/// The guest-memory condition (`used == avail`) on the same backend: the drain
/// never ends (the requests left in the available ring are never taken).
#[test]
fn negative_control_drain_by_guest_memory_never_ends() {
    let (failure, base, used, avail) = drain_window(true);
    assert!(matches!(failure, Some(StepFailure::Timeout { .. })), "{failure:?}");
    assert_eq!((base, used, avail), (None, 2, 6));
}
