//! qemu-storage-daemon completes requests out of order; a ring whose
//! `GET_VRING_BASE` hangs must get back a base that neither skips a request still
//! in flight nor repeats one completed. Guest memory alone cannot give it: the
//! inflight region can. Real qemu-storage-daemon processes, real fds and file I/O.
//!
//! qemu-storage-daemon 10.0 does not offer `INFLIGHT_SHMFD` (checked here), but its
//! libvhost-user tracks requests in the region and resubmits them on restart when
//! the frontend negotiates it anyway (`InflightMode::Unadvertised`, checked here).
//! Skipped, with a message, when qemu-storage-daemon is not installed (a failure
//! with `SWITCHOVER_REQUIRE_REAL=1`).

mod blk_common;

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blk_common::{image, read_sector, require_real, MemOf};
use parking_lot::RwLock;
use switchover::error::StepFailure;
use switchover::exec::{Engine, Progress, StepActions};
use switchover::ids::{DeviceId, Side as Role, Window};
use switchover::recipe::{build, BlkPolicy, NoCosts};
use switchover::state::DeviceState;
use switchover::step::StepKind;
use switchover_testbed::backend::ChildProc;
use switchover_testbed::blk::driver::{pattern, BlkDriver, Op};
use switchover_testbed::dir::PrivateDir;
use switchover_testbed::mem::{GuestMem, QSIZE};
use switchover_testbed::qsd;
use switchover_vhost::actions::{hand_over_policies, VhostActions, VhostDevices};
use switchover_vhost::frontend::{Frontend, FrontendConfig, InflightMode};
use switchover_vhost::memory::VringConfig;
use switchover_vhost::sink::NotifierSink;
use vmm_sys_util::eventfd::EventFd;

fn qsd_or_skip() -> Option<PathBuf> {
    match qsd::find() {
        Some(b) => Some(b),
        None if require_real() => panic!("qemu-storage-daemon is not installed and SWITCHOVER_REQUIRE_REAL=1"),
        None => {
            eprintln!("SKIPPED: qemu-storage-daemon is not installed");
            None
        }
    }
}

/// A daemon exporting `img` with one queue; reads throttled to `read_iops` (a
/// throttle group has a queue for reads and one for writes: writes pass reads
/// waiting for their slot, so completion is out of order).
fn spawn_qsd(bin: &Path, dir: &Path, tag: &str, img: &Path, read_iops: u32) -> (UnixStream, ChildProc) {
    let sock = dir.join(format!("{tag}.sock"));
    let _ = std::fs::remove_file(&sock);
    let child = Command::new(bin)
        .arg("--blockdev")
        .arg(format!("driver=file,node-name=f0,filename={},locking=off,cache.direct=off", img.display()))
        .arg("--object")
        .arg(format!("throttle-group,id=tg0,x-iops-read={read_iops}"))
        .arg("--blockdev")
        .arg("driver=throttle,node-name=t0,throttle-group=tg0,file=f0")
        .arg("--export")
        .arg(format!("type=vhost-user-blk,id=e0,node-name=t0,addr.type=unix,addr.path={},writable=on,num-queues=1", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut p = ChildProc::new(format!("{tag} qemu-storage-daemon"), child);
    let t = Instant::now();
    loop {
        if let Ok(s) = UnixStream::connect(&sock) {
            return (s, p);
        }
        assert!(p.exited().is_none() && t.elapsed() < Duration::from_secs(10), "qemu-storage-daemon did not listen");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn qsd_config(mode: InflightMode) -> FrontendConfig {
    FrontendConfig { inflight: mode, resend_addr_after_base: true, pops_while_disabled: true, ..FrontendConfig::new("blk0", 1) }
}

/// The test's VMM: one blk device on qemu-storage-daemon, its guest memory and
/// notifiers.
struct Vmm {
    mem: Arc<GuestMem>,
    kick: EventFd,
    call: EventFd,
    fe: RwLock<Arc<Frontend>>,
}

impl VhostDevices for Vmm {
    fn frontend(&self, d: DeviceId) -> Option<Arc<Frontend>> {
        (d.0 == 0).then(|| self.fe.read().clone())
    }
    fn vring(&self, d: DeviceId, ring: u32) -> Option<VringConfig> {
        (d.0 == 0 && ring == 0).then(|| GuestMem::vring(0))
    }
}

impl NotifierSink for Vmm {
    fn kick_fd(&self, _d: DeviceId, _r: u32) -> Option<RawFd> {
        Some(self.kick.as_raw_fd())
    }
    fn call_fd(&self, _d: DeviceId, _r: u32) -> Option<RawFd> {
        Some(self.call.as_raw_fd())
    }
    fn host_notifier(&self, _d: DeviceId, _r: u32, _on: bool) -> Result<(), StepFailure> {
        Ok(())
    }
    fn guest_notifier(&self, _d: DeviceId, _r: u32, _on: bool) -> Result<(), StepFailure> {
        Ok(())
    }
}

impl Vmm {
    /// Starts ring 0 at `base` (libvhost-user's order), with the inflight region
    /// first when the frontend tracks one.
    fn start(&self, base: u16) {
        let d = Duration::from_secs(5);
        let fe = self.fe.read().clone();
        fe.set_features(fe.features(), d).wait().unwrap();
        fe.set_mem_table(&[self.mem.region()], d).wait().unwrap();
        fe.setup_inflight(QSIZE, d).wait().unwrap();
        let v = GuestMem::vring(0);
        let h = |gpa| self.mem.host_addr(gpa);
        for p in [
            fe.set_vring_num(0, v.size, d),
            fe.set_vring_addr(0, h(v.desc), h(v.used), h(v.avail), d),
            fe.set_vring_base(0, base, d),
            fe.set_vring_addr(0, h(v.desc), h(v.used), h(v.avail), d),
            fe.set_vring_kick(0, self.kick.as_raw_fd(), d),
            fe.set_vring_call(0, self.call.as_raw_fd(), d),
            fe.set_vring_enable(0, true, d),
        ] {
            p.wait().unwrap();
        }
    }
}

/// How the base of the hung ring is recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    /// From the inflight region (carried over to the new daemon).
    Region,
    /// From guest memory alone (the used index), no region: what the frontend did before.
    UsedIndex,
}

/// Out-of-order completion, a hung `GET_VRING_BASE`, a new daemon with the
/// recovered base; then the guest goes on. Returns the driver's verdict.
fn hung_stop(bin: &Path, recovery: Recovery) -> Result<(), String> {
    let dir = PrivateDir::new().unwrap();
    let img = image(dir.path(), "disk", 8);
    let mode = match recovery {
        Recovery::Region => InflightMode::Unadvertised,
        Recovery::UsedIndex => InflightMode::Off,
    };
    let (s, mut old) = spawn_qsd(bin, dir.path(), "qsd-a", &img, 2);
    let fe = Arc::new(Frontend::connect(s, &qsd_config(mode)).unwrap());
    let vmm = Arc::new(Vmm {
        mem: Arc::new(GuestMem::new(1).unwrap()),
        kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        call: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        fe: RwLock::new(fe),
    });
    vmm.start(0);
    let mem = &vmm.mem;
    let mut drv = BlkDriver::new(0);
    // A read goes first (the throttle lets it pass), a second read waits for its
    // slot, three writes pass it: completed out of order around a request in flight.
    drv.submit(mem, Op::Read { sector: 100 }).unwrap();
    drv.submit(mem, Op::Read { sector: 101 }).unwrap();
    for n in 2..5u32 {
        drv.submit(mem, Op::Write { sector: 200 + u64::from(n) }).unwrap();
    }
    vmm.kick.write(1).unwrap();
    let t = Instant::now();
    while drv.done().len() < 4 {
        drv.reap(mem);
        assert!(t.elapsed() < Duration::from_secs(5), "four requests complete");
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!(drv.out_of_order(), "qemu-storage-daemon completed out of order: {:?}", drv.done().iter().map(|d| d.n).collect::<Vec<_>>());
    assert_eq!((mem.used_idx(0), drv.outstanding()), (4, 1));
    // The daemon hangs; its GET_VRING_BASE never answers.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(old.pid().unwrap() as i32, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(50));
    let fe = vmm.fe.read().clone();
    let r = fe.get_vring_base(0, Duration::from_millis(300)).wait();
    assert!(matches!(r, Err(StepFailure::Timeout { .. })), "{r:?}");
    // The VMM gives the daemon up (killed and reaped: nothing of it can run any
    // more), starts another on the same image, carries the region over.
    old.kill();
    let (s, _new) = spawn_qsd(bin, dir.path(), "qsd-b", &img, 1000);
    let nfe = Arc::new(Frontend::connect(s, &qsd_config(mode)).unwrap());
    if let Some(region) = fe.inflight() {
        nfe.adopt_inflight(region);
    }
    *vmm.fe.write() = nfe;
    let state = Arc::new(DeviceState::new(&blk_common::topology(1)));
    let actions = VhostActions::new(vmm.clone(), Arc::new(MemOf(vmm.mem.clone())), vmm.clone(), state);
    let base = actions.recover_base(DeviceId(0), 0).expect("a base");
    eprintln!("{recovery:?}: recovered base {base} (used {}, avail {})", mem.used_idx(0), mem.avail_idx(0));
    if recovery == Recovery::Region {
        assert_eq!(base, 5, "every request the daemon took: 4 completed + 1 in flight");
    }
    vmm.start(base);
    // The request in flight completes (once), and the guest goes on.
    let more = drv.submitted().len() as u32;
    drv.submit(mem, Op::Write { sector: 300 }).unwrap();
    drv.submit(mem, Op::Read { sector: 204 }).unwrap();
    vmm.kick.write(1).unwrap();
    drv.wait_all(mem, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    drv.check_exactly_once().map_err(|e| e.to_string())?;
    assert_eq!(read_sector(&img, 300), pattern(0, more));
    let read_back = drv.done().iter().find(|d| d.n == more + 1).unwrap();
    assert_eq!(read_back.data, pattern(0, 4), "the write request 4 made is read back");
    Ok(())
}

#[test]
fn qemu_storage_daemon_does_not_offer_the_region_but_implements_it() {
    let Some(bin) = qsd_or_skip() else { return };
    let dir = PrivateDir::new().unwrap();
    let img = image(dir.path(), "disk", 1);
    let (s, _p) = spawn_qsd(&bin, dir.path(), "qsd", &img, 1000);
    let fe = Frontend::connect(s, &qsd_config(InflightMode::Offered)).unwrap();
    assert!(!fe.tracks_inflight(), "qemu-storage-daemon offers INFLIGHT_SHMFD now: {:?}", fe.protocol_features());
    let (s, _p2) = spawn_qsd(&bin, dir.path(), "qsd2", &img, 1000);
    let fe = Arc::new(Frontend::connect(s, &qsd_config(InflightMode::Unadvertised)).unwrap());
    assert!(fe.tracks_inflight() && !fe.can_hand_over());
    let region = fe.get_inflight_fd(1, QSIZE, Duration::from_secs(5)).wait().unwrap();
    assert_eq!((region.desc().num_queues, region.desc().queue_size), (1, QSIZE));
    eprintln!("qemu-storage-daemon's region: {:?}", region.desc());
}

#[test]
fn hung_stop_with_out_of_order_completion_recovers_from_the_region() {
    let Some(bin) = qsd_or_skip() else { return };
    hung_stop(&bin, Recovery::Region).unwrap();
}

/// The base from guest memory alone (what the frontend answered before): the
/// request in flight is never done again and a completed one is done twice.
#[test]
fn negative_control_used_index_alone_loses_a_request() {
    let Some(bin) = qsd_or_skip() else { return };
    let e = hung_stop(&bin, Recovery::UsedIndex).unwrap_err();
    eprintln!("as expected: {e}");
    assert!(e.contains("never completed") || e.contains("completed twice") || e.contains("not outstanding"), "{e}");
}

/// Hand-over only where the backend offers it: qemu-storage-daemon's policy is
/// drain, and a hand-over forced on it is refused by the frontend, which sees
/// its `GET_VRING_BASE` answer with a request still in flight (it does not wait).
#[test]
fn hand_over_is_refused_on_qemu_storage_daemon() {
    let Some(bin) = qsd_or_skip() else { return };
    let dir = PrivateDir::new().unwrap();
    let img = image(dir.path(), "disk", 8);
    let (s, _p) = spawn_qsd(&bin, dir.path(), "qsd", &img, 2);
    let fe = Arc::new(Frontend::connect(s, &qsd_config(InflightMode::Unadvertised)).unwrap());
    let vmm = Arc::new(Vmm {
        mem: Arc::new(GuestMem::new(1).unwrap()),
        kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        call: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        fe: RwLock::new(fe),
    });
    vmm.start(0);
    let topo = blk_common::topology(1);
    assert_eq!(hand_over_policies(&topo, &*vmm), [(DeviceId(0), BlkPolicy::Drain)]);
    let mut drv = BlkDriver::new(0);
    drv.submit(&vmm.mem, Op::Read { sector: 1 }).unwrap();
    drv.submit(&vmm.mem, Op::Read { sector: 2 }).unwrap();
    vmm.kick.write(1).unwrap();
    let t = Instant::now();
    while drv.done().is_empty() {
        drv.reap(&vmm.mem);
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_micros(200));
    }
    let opts = blk_common::recipe(BlkPolicy::HandOver);
    let plan = Arc::new(build(&topo, Role::Source, &opts, &NoCosts).unwrap());
    let state = Arc::new(DeviceState::new(&topo));
    let actions: Arc<dyn StepActions> =
        Arc::new(VhostActions::new(vmm.clone(), Arc::new(MemOf(vmm.mem.clone())), vmm.clone(), state.clone()));
    let r = Engine::new(1).run(&plan, Window::Blackout, actions, &mut Progress::new(&plan));
    let f = r.failures.iter().find(|f| f.kind == StepKind::GetVringBase).expect("GET_VRING_BASE refused");
    eprintln!("{f}");
    assert!(matches!(&f.failure, StepFailure::Garbage { what } if what.contains("still in flight")), "{f}");
    assert!(state.inflight().is_empty() && state.base(DeviceId(0), 0).is_none());
}
