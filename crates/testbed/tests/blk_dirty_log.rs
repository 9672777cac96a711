//! The own blk backend's dirty log, on its own, driven by rust-vmm's `vhost`
//! frontend: `VHOST_F_LOG_ALL`, `SET_LOG_BASE` with `LOG_SHMFD`, the ring log
//! flag. One bit per 4 KiB guest-physical page: every buffer the backend writes
//! (read data, status bytes), and the used ring at the ring's `log_guest_addr`.

mod blk_common;

use std::time::Duration;

use blk_common::{exe, image};
use switchover_testbed::blk::driver::{BlkDriver, Op};
use switchover_testbed::blk::guest::{DirtyLog, LOG_PAGE};
use switchover_testbed::blk::{self, BlkOptions};
use switchover_testbed::dir::PrivateDir;
use switchover_testbed::mem::{GuestMem, QSIZE};
use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend as VhostFrontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserDirtyLogRegion, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

/// Not a test: the backend process this test binary runs as (see `blk_common::exe`).
#[test]
#[ignore]
fn blk_backend_child_process() {
    if let Some(code) = switchover_testbed::blk::child_main_from_env() {
        std::process::exit(code);
    }
}

const VERSION_1: u64 = 1 << 32;
const LOG_ALL: u64 = 1 << 26;

fn page(gpa: u64) -> u64 {
    gpa / LOG_PAGE
}

/// Waits until the backend has signalled `n` completions on `call`. The backend
/// marks the log after it publishes the used index and signals the call after
/// that, so a guest that saw the used index alone may clear the log before the
/// backend's last mark lands; the call is the backend's "done with this request".
fn settled(call: &EventFd, n: u64) {
    let t = std::time::Instant::now();
    let mut seen = 0;
    while seen < n {
        match call.read() {
            Ok(v) => seen += v,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(t.elapsed() < Duration::from_secs(5), "{seen} of {n} completions signalled within 5 s");
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => panic!("reading the call eventfd: {e}"),
        }
    }
}

#[test]
fn backend_logs_every_write_to_guest_memory() {
    let dir = PrivateDir::new().unwrap();
    let img = image(dir.path(), "disk", 1);
    let s = blk::spawn(&exe(), dir.path(), "blk0", &img, BlkOptions::new(1)).unwrap();
    let mem = GuestMem::new(1).unwrap();
    let mut fe = VhostFrontend::from_stream(s.stream, 1);
    fe.set_owner().unwrap();
    let offered = fe.get_features().unwrap();
    assert_ne!(offered & LOG_ALL, 0, "the backend offers VHOST_F_LOG_ALL");
    let base = VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    fe.set_features(base | LOG_ALL).unwrap();
    let pf = fe.get_protocol_features().unwrap();
    assert!(pf.contains(VhostUserProtocolFeatures::LOG_SHMFD));
    fe.set_protocol_features(VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::LOG_SHMFD)
        .unwrap();
    // rust-vmm's frontend asks for a reply only when told to: without it a
    // SET_FEATURES or SET_VRING_ADDR is still in the socket while the kick that
    // follows is served, and the request completes under the old settings.
    fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    let r = mem.region();
    fe.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: r.guest_addr,
        memory_size: r.size,
        userspace_addr: r.user_addr,
        mmap_offset: 0,
        mmap_handle: r.fd,
    }])
    .unwrap();
    // A bitmap for every page up to the end of guest memory and the log address.
    let log_addr = GuestMem::used(0) + 0x10_0000;
    let bytes = (page(log_addr) + 8) / 8 + 1;
    let log = DirtyLog::create(bytes).unwrap();
    let log_file = log.try_clone_file().unwrap();
    use std::os::fd::AsRawFd;
    fe.set_log_base(0, Some(VhostUserDirtyLogRegion { mmap_size: bytes, mmap_offset: 0, mmap_handle: log_file.as_raw_fd() })).unwrap();
    let v = GuestMem::vring(0);
    let h = |gpa| mem.host_addr(gpa);
    let ring = |flags: u32| VringConfigData {
        queue_max_size: QSIZE,
        queue_size: QSIZE,
        flags,
        desc_table_addr: h(v.desc),
        used_ring_addr: h(v.used),
        avail_ring_addr: h(v.avail),
        log_addr: Some(log_addr),
    };
    let (kick, call) = (EventFd::new(libc::EFD_NONBLOCK).unwrap(), EventFd::new(libc::EFD_NONBLOCK).unwrap());
    fe.set_vring_num(0, QSIZE).unwrap();
    fe.set_vring_addr(0, &ring(1)).unwrap(); // VHOST_VRING_F_LOG
    fe.set_vring_base(0, 0).unwrap();
    fe.set_vring_call(0, &call).unwrap();
    fe.set_vring_enable(0, true).unwrap();
    fe.set_vring_kick(0, &kick).unwrap();

    let mut d = BlkDriver::new(0);
    d.submit(&mem, Op::Write { sector: 3 }).unwrap();
    d.submit(&mem, Op::Read { sector: 3 }).unwrap();
    kick.write(1).unwrap();
    d.wait_all(&mem, Duration::from_secs(5)).unwrap();
    settled(&call, 2);
    d.check_exactly_once().unwrap();
    let slot = |k: u64| GuestMem::slot(0, k);
    // Slot 0: the write's status byte; slot 1: the read's data and status.
    for (what, gpa) in [("write status", slot(0) + 600), ("read data", slot(1) + 64), ("read status", slot(1) + 600)] {
        assert!(log.is_dirty(page(gpa)), "{what} at {gpa:#x} logged");
    }
    assert!(log.is_dirty(page(log_addr)), "the used ring logged at its log address");
    // Pages only read are not: descriptors, the available ring; nor the used ring's
    // own address (its writes go to the log address).
    for (what, gpa) in [("descriptors", v.desc), ("avail ring", v.avail), ("used ring (own address)", v.used)] {
        assert!(!log.is_dirty(page(gpa)), "{what} at {gpa:#x} not logged");
    }
    let dirty = log.dirty_pages();
    eprintln!("dirty pages: {dirty:x?}");

    // The ring without the log flag: its used ring is no longer logged, buffers are.
    log.clear();
    fe.set_vring_addr(0, &ring(0)).unwrap();
    d.submit(&mem, Op::Read { sector: 3 }).unwrap();
    kick.write(1).unwrap();
    d.wait_all(&mem, Duration::from_secs(5)).unwrap();
    settled(&call, 1);
    assert!(
        !log.is_dirty(page(log_addr)) && !log.is_dirty(page(v.used)),
        "used ring not logged without the ring's log flag: {:x?}",
        log.dirty_pages()
    );
    assert!(log.is_dirty(page(slot(2) + 64)), "read data still logged with VHOST_F_LOG_ALL");

    // Logging off (VHOST_F_LOG_ALL cleared): nothing is logged.
    log.clear();
    fe.set_features(base).unwrap();
    fe.set_vring_addr(0, &ring(1)).unwrap();
    d.submit(&mem, Op::Read { sector: 3 }).unwrap();
    kick.write(1).unwrap();
    d.wait_all(&mem, Duration::from_secs(5)).unwrap();
    settled(&call, 1);
    d.check_exactly_once().unwrap();
    assert!(log.dirty_pages().is_empty(), "nothing logged without VHOST_F_LOG_ALL: {:x?}", log.dirty_pages());
}
