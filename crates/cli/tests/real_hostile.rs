//! REAL components: broken and hostile vhost-user backends. A device's backend is
//! the hostile test backend (`switchover real __backend hostile MODE@REQUEST …`: the
//! project's own backend behind a relay in the same process that does the
//! handshake and the ring set-up honestly, then mangles one reply of the
//! switchover). Each test checks that the affected step fails with an error
//! naming side, device, ring, step and what was wrong, that the switchover rolls
//! back with the guest on the source and every other device untouched, that
//! nothing hangs beyond the request deadline, that no impossible base reaches the
//! destination, and that no fd, thread, child process or socket file is left.
//!
//! Also: the private directory and socket modes, a connection from another uid
//! refused by `SO_PEERCRED` (as root only).
//!
//! Needs /dev/kvm (root); skipped, with the reason printed, when it is absent.

mod real_common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use switchover::error::{StepError, StepFailure};
use switchover::ids::Side;
use switchover::roles::Outcome;
use switchover_baseline::Strategy;
use switchover_testbed::{run_strategy, BlkBackend, RealConfig, RealRun};

/// The tests of this file count this process's fds and threads: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const DEADLINE: Duration = Duration::from_millis(400);

fn config() -> Option<RealConfig> {
    // net0 (4 queue pairs: 8 rings, so several requests are in flight at once) and
    // blk0 (2 queues), both on the own backends.
    real_common::config(1, 4, 1, 2, BlkBackend::Own, DEADLINE)
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// This process's threads other than the test harness's (whose names are test
/// names, truncated to 15 characters, or `main`).
fn library_threads() -> Vec<String> {
    let mut out = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_string();
        let harness = comm.is_empty()
            || comm == "main"
            || ["hostile_", "private_direc", "connection_fr", "unsolicited_rep", "real_hostile"].iter().any(|p| comm.starts_with(p));
        if !harness {
            out.push(comm);
        }
    }
    out.sort();
    out
}

/// Starts the channels' deadline watchdog if it is not running yet: it is one
/// thread for the whole process, started with the first channel and never
/// stopped, so it must be there before a test counts threads; the count then
/// still shows every thread a run leaves behind.
fn start_watchdog() {
    let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
    let ch = switchover_vhost::channel::Channel::start("warm-up", a).expect("channel");
    ch.close();
    // The watchdog may hold the channel a moment longer: wait until it is gone,
    // so that its fds are not counted.
    let weak = std::sync::Arc::downgrade(&ch);
    drop(ch);
    let t = Instant::now();
    while weak.strong_count() > 0 && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(20));
}

/// This process's children (all threads).
fn children() -> Vec<String> {
    let mut out = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let c = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(c.split_whitespace().map(str::to_string));
    }
    out
}

/// What the failed step must say.
enum Want {
    /// `StepFailure::Garbage` whose text contains one of these.
    Garbage(&'static [&'static str]),
    Timeout,
    Disconnected,
}

/// Runs the engine with net0 hostile on `side` (`MODE@REQUEST`), and checks
/// everything but the failure's text, which it returns with the run.
fn hostile(side: Side, spec: &str, want: Want) -> RealRun {
    let cfg = config().expect("checked by the caller");
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut cfg = cfg;
    cfg.hostile = vec![(side, "net0".into(), spec.into())];
    start_watchdog();
    let (fds, threads) = (count("/proc/self/fd"), library_threads());
    let t = Instant::now();
    let r = run_strategy(&cfg, Strategy::Engine).expect("set-up");
    let elapsed = t.elapsed();
    // No fd, thread or child process left (threads may take a moment to be reaped).
    let settle = Instant::now();
    while library_threads() != threads && settle.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(count("/proc/self/fd"), fds, "{spec}: fds");
    assert_eq!(library_threads(), threads, "{spec}: threads");
    assert!(children().is_empty(), "{spec}: child processes left: {:?}", children());
    assert!(r.leftover_processes.is_empty(), "{spec}: processes left: {:?}", r.leftover_processes);
    assert!(!r.leftover_dir, "{spec}: socket directory left behind");

    let cause = failed_step(&r, spec);
    eprintln!(
        "{spec} on {}: {} in {:.0} ms (downtime {:.1} ms): {cause}",
        side.short(),
        r.run.outcome.name(),
        elapsed.as_secs_f64() * 1e3,
        r.run.downtime.as_secs_f64() * 1e3
    );
    // The error names side, device and ring, and what was wrong.
    assert_eq!(cause.side, side, "{spec}: {cause}");
    assert_eq!(&*cause.device_name, "net0", "{spec}: {cause}");
    assert!(cause.ring.is_some(), "{spec}: {cause}");
    assert!(cause.to_string().starts_with(&format!("{} net0 ring ", side.short())), "{spec}: {cause}");
    match (&want, &cause.failure) {
        (Want::Garbage(any), StepFailure::Garbage { what }) => {
            assert!(any.iter().any(|w| what.contains(w)), "{spec}: {what}")
        }
        (Want::Timeout, StepFailure::Timeout { after }) => assert_eq!(*after, DEADLINE, "{spec}"),
        (Want::Disconnected, StepFailure::Disconnected) => {}
        (_, f) => panic!("{spec}: unexpected failure {f:?}"),
    }
    // No hang beyond the deadline: a time-out costs the deadline once, anything
    // else much less (generous slack for a loaded 2-core machine).
    let bound = if matches!(want, Want::Timeout) { DEADLINE + Duration::from_millis(1500) } else { Duration::from_millis(1500) };
    assert!(r.run.downtime < bound, "{spec}: downtime {:?}", r.run.downtime);
    assert!(elapsed < Duration::from_secs(10), "{spec}: run took {elapsed:?}");

    // Rolled back, the guest on the source; only net0's source backend replaced
    // (a destination failure replaces none).
    assert!(matches!(r.run.outcome, Outcome::RolledBack { .. }), "{spec}: {:?}", r.run.outcome);
    assert_eq!(r.runs_on, Some(Side::Source), "{spec}");
    let replaced: &[&str] = if side == Side::Source { &["net0"] } else { &[] };
    assert_eq!(r.reconnected, replaced, "{spec}");
    // Other devices unaffected: their bases were read as the guest published them
    // and restarted with them. net0's bases are read or recovered from guest
    // memory, never beyond what the guest published: an impossible base never
    // reaches DeviceState or the destination.
    for b in &r.bases {
        if b.device == "net0" {
            assert!(b.set.map_or(true, |s| s <= b.expected), "{spec}: net0 ring {} set {:?}, guest {}", b.ring, b.set, b.expected);
            assert!(b.read.map_or(true, |s| s <= b.expected), "{spec}: net0 ring {} read {:?}, guest {}", b.ring, b.read, b.expected);
        } else {
            // Stopped and restarted with the base the guest published, or (the
            // engine stops at the first failure) never stopped at all.
            // (A blk ring's base may stop short of what the guest kicked by the
            // requests it had in flight: its backend left them in the ring.)
            assert!(
                b.read.map_or(true, |x| b.expected.wrapping_sub(x) <= b.in_flight),
                "{spec}: {} ring {} read {:?}, guest {} ({} in flight)",
                b.device,
                b.ring,
                b.read,
                b.expected,
                b.in_flight
            );
            if b.read.is_some() || side == Side::Destination {
                assert!(b.set.is_some() && b.set == b.read, "{spec}: {} ring {} set {:?}, read {:?}", b.device, b.ring, b.set, b.read);
            }
        }
    }
    // The guest's rings all serve a new request where it runs; nothing lost or
    // completed twice; every acknowledged write is on disk.
    assert_eq!(r.post_switchover.as_ref().ok(), Some(&r.bases.len()), "{spec}: {:?}", r.post_switchover);
    for q in &r.requests {
        assert_eq!(q.completed, q.published, "{spec}: {} ring {}", q.device, q.ring);
    }
    assert!(r.run.checks.vring_bases_preserved, "{spec}: {:?}", r.run.checks.base_mismatches);
    assert!(r.disk.missing.is_empty(), "{spec}: {:?}", r.disk.missing);
    assert_eq!(r.disk.on_disk, r.disk.submitted, "{spec}");
    assert!(r.checks_ok(), "{spec}");
    r
}

/// The step whose failure ended the run: a hostile backend fails a step, never
/// the path between the roles.
fn failed_step(r: &RealRun, spec: &str) -> StepError {
    let cause = r.run.outcome.cause().unwrap_or_else(|| panic!("{spec}: no failure ({:?})", r.run.outcome));
    cause.step().cloned().unwrap_or_else(|| panic!("{spec}: not a step failure: {cause}"))
}

fn src(mode: &str, want: Want) {
    if config().is_none() {
        return;
    }
    let r = hostile(Side::Source, &format!("{mode}@get_vring_base"), want);
    let cause = failed_step(&r, mode);
    // The single mangled reply is the GET_VRING_BASE's own.
    if !matches!(mode, "duplicate" | "swap" | "flood" | "close") {
        assert_eq!(cause.kind.name(), "get_vring_base", "{mode}: {cause}");
    }
}

#[test]
fn hostile_wrong_request_type_is_garbage() {
    src("wrong_type", Want::Garbage(&["expected the reply to GET_VRING_BASE, got reply SET_VRING_ENABLE"]));
}

#[test]
fn hostile_wrong_payload_size_is_garbage() {
    src("wrong_size", Want::Garbage(&["has a 12-byte body, the message defines 8"]));
}

#[test]
fn hostile_base_beyond_the_ring_is_rejected() {
    src("base_beyond_ring", Want::Garbage(&["more than the ring size 256"]));
}

#[test]
fn hostile_base_past_what_the_guest_published_is_rejected() {
    src("base_past_avail", Want::Garbage(&["is past the guest's avail index"]));
}

#[test]
fn hostile_base_for_another_ring_is_rejected() {
    src("base_other_ring", Want::Garbage(&["answered for ring"]));
}

#[test]
fn hostile_base_wider_than_16_bits_is_rejected() {
    src("base_over_u16", Want::Garbage(&["is not a 16-bit ring index"]));
}

/// A duplicated or out-of-order reply lands on another pending request (another
/// ring's GET_VRING_BASE, a SET_VRING_ENABLE) or on none.
const DESYNC: &[&str] = &["expected the reply to", "answered for ring", "unsolicited"];

#[test]
fn hostile_duplicated_reply_is_garbage() {
    src("duplicate", Want::Garbage(DESYNC));
}

#[test]
fn hostile_replies_out_of_order_are_garbage() {
    src("swap", Want::Garbage(DESYNC));
}

#[test]
fn hostile_unexpected_file_descriptors_are_closed_and_refused() {
    src("fds", Want::Garbage(&["1 file descriptor(s), none expected (closed)"]));
}

#[test]
fn hostile_partial_message_then_silence_times_out() {
    src("partial", Want::Timeout);
}

#[test]
fn hostile_slow_drip_is_bounded_by_the_deadline() {
    src("drip", Want::Timeout);
}

#[test]
fn hostile_immediate_close_is_disconnected() {
    src("close", Want::Disconnected);
}

#[test]
fn hostile_close_before_the_handshake_fails_set_up_naming_the_device() {
    let Some(mut cfg) = config() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    cfg.hostile = vec![(Side::Source, "net0".into(), "close@connect".into())];
    start_watchdog();
    let (fds, threads) = (count("/proc/self/fd"), library_threads());
    let t = Instant::now();
    let e = run_strategy(&cfg, Strategy::Engine).expect_err("set-up must fail").to_string();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    eprintln!("close@connect: {e}");
    assert!(e.starts_with("src net0: vhost-user SET_OWNER") || e.starts_with("src net0: vhost-user GET_FEATURES"), "{e}");
    let settle = Instant::now();
    while library_threads() != threads && settle.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(count("/proc/self/fd"), fds);
    assert_eq!(library_threads(), threads);
    assert!(children().is_empty(), "child processes left: {:?}", children());
}

#[test]
fn unsolicited_reply_with_nothing_pending_fails_the_device() {
    use std::io::Write;
    use switchover_vhost::channel::Channel;
    use vhost::vhost_user::message::FrontendReq;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let fds = count("/proc/self/fd");
    {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let ch = Channel::start("dev0", a).expect("channel");
        // A well-formed GET_VRING_BASE reply nobody asked for.
        let mut m = Vec::new();
        for v in [11u32, 0x5, 8, 0, 7] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        b.write_all(&m).expect("write");
        // Let the reader see it with nothing pending; then the device is failed
        // and every later request fails at once with the same garbage.
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        let r = ch.request(FrontendReq::GET_VRING_BASE, &[0; 8], &[], DEADLINE).wait();
        assert!(t.elapsed() < DEADLINE, "{:?}", t.elapsed());
        match r {
            Err(StepFailure::Garbage { what }) => assert!(what.contains("unsolicited reply GET_VRING_BASE"), "{what}"),
            other => panic!("{other:?}"),
        }
        ch.close();
    }
    assert_eq!(count("/proc/self/fd"), fds);
}

#[test]
fn hostile_flood_of_unsolicited_replies_is_garbage() {
    src("flood", Want::Garbage(DESYNC));
}

#[test]
fn hostile_destination_wrong_type_at_set_vring_base_rolls_back() {
    if config().is_none() {
        return;
    }
    let r = hostile(Side::Destination, "wrong_type@set_vring_base", Want::Garbage(&["expected the reply to SET_VRING_BASE"]));
    assert_eq!(failed_step(&r, "wrong_type@set_vring_base").kind.name(), "set_vring_base");
}

#[test]
fn private_directory_is_0700_and_sockets_0600() {
    use std::os::unix::fs::PermissionsExt;
    let d = switchover_testbed::dir::PrivateDir::new().expect("private dir");
    let mode = std::fs::metadata(d.path()).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{mode:o}");
    let sock = d.join("s.sock");
    let l = switchover_testbed::dir::bind_private(&sock).expect("bind");
    let mode = std::fs::metadata(&sock).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    // Our own uid is accepted.
    let c = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
    let (s, _) = l.accept().expect("accept");
    assert!(switchover_testbed::dir::check_peer_uid(&s).is_ok());
    drop((c, s, l));
    let p = d.path().to_path_buf();
    drop(d);
    assert!(!p.exists());
}

/// Forks a child that becomes `nobody` (uid 65534) and connects to `sock`; returns
/// whether its connect succeeded (the child's exit status).
fn connect_as_nobody(sock: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(sock.as_os_str().as_bytes()).expect("path");
    // SAFETY: the child only makes async-signal-safe calls (setgid, setuid,
    // socket, connect, _exit) on memory prepared before the fork.
    unsafe {
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (i, b) in path.as_bytes().iter().enumerate() {
            addr.sun_path[i] = *b as libc::c_char;
        }
        let pid = libc::fork();
        assert!(pid >= 0, "fork");
        if pid == 0 {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                libc::_exit(2);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let r = libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), std::mem::size_of::<libc::sockaddr_un>() as u32);
            if r == 0 {
                // Stay connected until the parent has looked at the credentials.
                let mut b = [0u8; 1];
                libc::read(fd, b.as_mut_ptr().cast(), 1);
            }
            libc::_exit(if r == 0 { 0 } else { 1 });
        }
        let mut st = 0;
        // The parent waits below, after it accepted (or not).
        CHILD.with(|c| c.set(pid));
        let _ = &mut st;
    }
    true
}

thread_local! {
    static CHILD: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

fn wait_child() -> i32 {
    let pid = CHILD.with(|c| c.replace(0));
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe {
        libc::waitpid(pid, &mut st, 0);
    }
    if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else {
        -1
    }
}

#[test]
fn connection_from_another_uid_is_refused() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: not root, so no child can setuid() to another user for this test");
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // 1. Through the private directory, `nobody` cannot even reach the socket.
    let d = switchover_testbed::dir::PrivateDir::new().expect("private dir");
    let sock = d.join("f.sock");
    let l = switchover_testbed::dir::bind_private(&sock).expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    connect_as_nobody(&sock);
    assert_eq!(wait_child(), 1, "nobody connected through the 0700 directory");
    assert!(l.accept().is_err(), "a connection from nobody was queued");
    drop(l);
    // 2. Past the permissions (a socket another user could reach), SO_PEERCRED
    //    refuses it where the frontend accepts.
    let open = std::env::temp_dir().join(format!("switchover-peercred-{}", std::process::id()));
    std::fs::create_dir_all(&open).expect("dir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let sock = open.join("open.sock");
    let _ = std::fs::remove_file(&sock);
    let l = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    connect_as_nobody(&sock);
    let (s, _) = l.accept().expect("accept");
    let e = switchover_testbed::dir::check_peer_uid(&s).expect_err("refused").to_string();
    assert!(e.contains("peer uid 65534"), "{e}");
    drop(s);
    assert_eq!(wait_child(), 0);
    drop(l);
    let _ = std::fs::remove_dir_all(&open);
}
