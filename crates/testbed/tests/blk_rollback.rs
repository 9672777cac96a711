//! Failures after a hand-over, on real processes, fds and file I/O: the source
//! takes its requests back and each completes exactly once; nothing the source
//! handed over is written after its stop.

mod blk_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use blk_common::*;
use switchover::error::StepFailure;
use switchover::recipe::BlkPolicy;
use switchover::roles::Outcome;
use switchover::step::StepKind;
use switchover_testbed::blk::driver::{pattern, BlkDriver, Op};
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

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_micros(500));
    }
}

struct Rig {
    _dir: PrivateDir,
    img: std::path::PathBuf,
    guest: Arc<Guest>,
    src: Arc<Side>,
    dst: Arc<Side>,
    drivers: Vec<BlkDriver>,
}

/// Two sides of `queues` rings; the source running with `in_flight` writes per
/// ring taken off the rings (after two completed ones), of which `complete_first`
/// (over all rings) complete before the source's host I/O is held: the rest stay
/// in flight until the test releases it, whatever the machine's load.
fn rig(queues: u32, src_opts: BlkOptions, dst_opts: BlkOptions, in_flight: u32, complete_first: u64) -> Rig {
    let dir = PrivateDir::new().unwrap();
    let img = image(dir.path(), "disk", 8);
    let guest = Guest::new(queues);
    let src = Side::spawn("src", &guest, dir.path(), &img, src_opts, FrontendConfig::new("src blk0", queues)).unwrap();
    let dst = Side::spawn("dst", &guest, dir.path(), &img, dst_opts, FrontendConfig::new("dst blk0", queues)).unwrap();
    src.bring_up(Duration::from_secs(5)).unwrap();
    let mut drivers: Vec<BlkDriver> = (0..queues).map(BlkDriver::new).collect();
    writes(&src.mem, &guest, &mut drivers, 2);
    for d in &mut drivers {
        d.wait_all(&src.mem, Duration::from_secs(10)).unwrap();
    }
    let warm = u64::from(queues * 2);
    if complete_first == 0 {
        src.control().hold().unwrap();
    }
    writes(&src.mem, &guest, &mut drivers, in_flight);
    if complete_first > 0 {
        wait_until("the first writes complete", || src.control().stats().unwrap().completed >= warm + complete_first);
        src.control().hold().unwrap();
    }
    let total = u64::from(queues * (2 + in_flight));
    wait_until("the source took every request", || src.control().stats().unwrap().popped >= total);
    let left = total - src.control().stats().unwrap().completed;
    assert!(left > 0, "requests in flight at the source: none (the premise)");
    Rig { _dir: dir, img, guest, src, dst, drivers }
}

fn opts(queues: u32, iops: Option<u32>, active: bool) -> BlkOptions {
    BlkOptions { iops, active, ..BlkOptions::new(queues as u16) }
}

/// The destination fails at the kick of its last ring, once its first ring's
/// handed-over requests are being resubmitted; its fence stops what it started,
/// and the source, restarted, completes each request once.
#[test]
fn rollback_after_a_hand_over_completes_each_request_once_on_the_source() {
    let q = 2;
    let mut r = rig(q, opts(q, None, true), opts(q, Some(20), false), 8, 0);
    let hook: Hook = Arc::new(|side: &Side, step: &switchover::step::Step| {
        if step.kind == StepKind::SetVringKick && step.ring == Some(1) {
            wait_until("ring 0 resubmits", || side.control().stats().unwrap().resubmitted >= 1);
            return Some(Err(StepFailure::Injected { what: "kick of ring 1".into() }));
        }
        None
    });
    let (rep, src_state) = switchover(&r.src, &r.dst, &recipe(BlkPolicy::HandOver), None, Some(hook));
    assert!(matches!(rep.outcome, Outcome::RolledBack { .. }), "{:?}", rep.outcome);
    let fence = rep.fence.as_ref().map(|(_, run)| run.failures.clone());
    assert_eq!(fence, Some(vec![]), "the destination's fence stopped what it started");
    let handed = src_state.inflight().len() as u64;
    assert!(handed > 0, "handed over {handed}");
    // The destination settled before the source resumed: nothing more from it.
    let d0 = r.dst.control().stats().unwrap();
    assert!(!r.dst.control().is_active().unwrap(), "the destination gave the image back");
    r.src.control().release().unwrap();
    check(&r.src.mem, &mut r.drivers, &r.img);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(r.dst.control().stats().unwrap(), d0, "the destination did no I/O after its fence");
    let s = r.src.control().stats().unwrap();
    assert_eq!(s.resubmitted, handed, "the source resubmitted every request it handed over");
    // The guest goes on, on the source.
    writes(&r.src.mem, &r.guest, &mut r.drivers, 3);
    check(&r.src.mem, &mut r.drivers, &r.img);
}

/// The destination's backend is killed while it resubmits the handed-over
/// requests; the source rolls back and each request completes once.
#[test]
fn destination_crash_while_resubmitting_rolls_back_each_request_once() {
    let q = 2;
    let mut r = rig(q, opts(q, None, true), opts(q, Some(20), false), 8, 0);
    let hook: Hook = Arc::new(|side: &Side, step: &switchover::step::Step| {
        if step.kind == StepKind::SetVringKick && step.ring == Some(1) {
            // Ring 0's requests are being written again by the destination: crash it.
            wait_until("the destination writes resubmitted requests", || side.control().stats().unwrap().writes >= 1);
            side.kill();
        }
        None
    });
    let (rep, src_state) = switchover(&r.src, &r.dst, &recipe(BlkPolicy::HandOver), None, Some(hook));
    assert!(matches!(rep.outcome, Outcome::RolledBack { .. }), "{:?}", rep.outcome);
    assert!(r.dst.pid().is_none(), "the destination backend is gone");
    let handed = src_state.inflight().len() as u64;
    assert!(handed > 0, "handed over {handed}");
    r.src.control().release().unwrap();
    check(&r.src.mem, &mut r.drivers, &r.img);
    assert_eq!(r.src.control().stats().unwrap().resubmitted, handed);
    writes(&r.src.mem, &r.guest, &mut r.drivers, 3);
    check(&r.src.mem, &mut r.drivers, &r.img);
}

/// The source hands over writes still waiting for its (stalled) disk; the destination
/// redoes them and the guest then overwrites the same sectors. With the settle
/// rule the source never writes them after its stop; without it (the negative
/// control) its late writes put the old data back over the guest's newer writes.
///
/// `storage`: the image handed over as steps (the source inactive after its
/// stop: a second guard, a late write is refused); without, image locking off,
/// the settle rule alone.
fn late_writes(settle: bool, storage: bool) -> (Vec<bool>, u64) {
    let q = 1;
    let src_opts = BlkOptions { settle, lock: storage, ..opts(q, None, true) };
    let dst_opts = BlkOptions { lock: storage, ..opts(q, None, !storage) };
    let mut r = rig(q, src_opts, dst_opts, 4, 0);
    let recipe = switchover::recipe::RecipeOptions { storage, ..recipe(BlkPolicy::HandOver) };
    let (rep, src_state) = switchover(&r.src, &r.dst, &recipe, None, None);
    assert_eq!(rep.outcome, Outcome::Completed, "{:?}", rep.outcome);
    let handed: Vec<u64> = src_state.inflight().iter().map(|x| x.id).collect();
    assert!(!handed.is_empty(), "handed over {handed:?}");
    let d = &mut r.drivers[0];
    d.wait_all(&r.dst.mem, Duration::from_secs(10)).unwrap();
    // The guest, on the destination, writes new data over the handed-over requests' sectors.
    let first_new = d.submitted().len() as u32;
    for n in 2..6u32 {
        d.submit(&r.dst.mem, Op::Write { sector: sector(0, n) }).unwrap();
    }
    r.guest.kick(0);
    d.wait_all(&r.dst.mem, Duration::from_secs(10)).unwrap();
    d.check_exactly_once().unwrap();
    // The source's stalled disk comes back: each request it handed over ends there,
    // cancelled (settled at the stop) or done late with its completion discarded.
    r.src.control().release().unwrap();
    let n = handed.len() as u64;
    wait_until("every handed-over request ended on the source", || {
        let s = r.src.control().stats().unwrap();
        s.cancelled + s.discarded >= n
    });
    let newest: Vec<bool> = (2..6u32).map(|n| read_sector(&r.img, sector(0, n)) == pattern(0, first_new + n - 2)).collect();
    (newest, r.src.control().stats().unwrap().late_io)
}

#[test]
fn source_never_writes_a_request_after_handing_it_over() {
    for storage in [false, true] {
        let (newest, late) = late_writes(true, storage);
        assert_eq!(late, 0, "storage steps {storage}");
        assert!(newest.iter().all(|x| *x), "the guest's newest writes are on the image (storage steps {storage}): {newest:?}");
    }
}

/// The settle rule removed (and storage not handed over, image locking off):
/// the check above then fails.
#[test]
fn negative_control_without_settling_the_source_clobbers_newer_writes() {
    let (newest, late) = late_writes(false, false);
    assert!(late > 0, "the source did host I/O after its stop");
    assert!(newest.iter().any(|x| !x), "a late write of the source replaced newer data: {newest:?}");
}

/// The source's backend hangs at `GET_VRING_BASE` while requests complete out of
/// order (random extra latency per request); the roles reconnect it (a new
/// process, the region carried over), recover the ring's base from the region,
/// and the new backend resubmits what the old one left in flight: each request
/// completes once.
#[test]
fn hung_source_stop_is_recovered_from_the_region() {
    let q = 2;
    let src_opts = BlkOptions { jitter_us: 40_000, workers: 8, ..opts(q, None, true) };
    // Some of the 8 per ring complete, out of order, before the stop; the rest
    // are held in flight.
    let mut r = rig(q, src_opts, opts(q, None, false), 8, 4);
    let hook: Hook = Arc::new(|side: &Side, step: &switchover::step::Step| {
        if step.kind == StepKind::GetVringBase && step.ring == Some(1) {
            side.signal(libc::SIGSTOP);
        }
        None
    });
    let recipe = switchover::recipe::RecipeOptions { deadline: Duration::from_millis(400), ..recipe(BlkPolicy::HandOver) };
    let (rep, _state) = switchover(&r.src, &r.dst, &recipe, Some(hook), None);
    assert!(matches!(rep.outcome, Outcome::RolledBack { .. }), "{:?}", rep.outcome);
    assert_eq!(r.src.reconnects.load(std::sync::atomic::Ordering::Acquire), 1, "the hung backend was replaced");
    check(&r.src.mem, &mut r.drivers, &r.img);
    assert!(r.drivers.iter().any(|d| d.out_of_order()), "completion was out of order");
    let s = r.src.control().stats().unwrap();
    eprintln!("new source backend: {s:?}");
    assert!(s.resubmitted > 0, "the new backend resubmitted what the old one left in flight");
    writes(&r.src.mem, &r.guest, &mut r.drivers, 3);
    check(&r.src.mem, &mut r.drivers, &r.img);
}
