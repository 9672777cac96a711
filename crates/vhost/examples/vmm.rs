//! A VMM that adopts `switchover` with the core and the frontend crate only: its
//! own guest memory (a memfd it maps itself), its own eventfds, real
//! qemu-storage-daemon backends (one per side, on one disk image), and a
//! switchover between the two roles over a Unix socket pair, as two VMM
//! processes on one host would run it (both sides map the same memory, as a local
//! migration does).
//!
//! The guest writes a block through the source's backend before the switchover
//! and reads it back through the destination's after it.
//!
//! Run: `cargo run --release -p switchover-vhost --example vmm` (needs
//! qemu-storage-daemon, Debian package qemu-utils). `tests/vmm_example.rs` runs it.

use std::error::Error;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchover::error::StepFailure;
use switchover::exec::Engine;
use switchover::ids::{DeviceId, Side};
use switchover::notifier::{Notifier, NotifierState};
use switchover::recipe::{build, NoCosts, RecipeOptions, RouteCommits};
use switchover::roles::path::UnixPath;
use switchover::roles::{Deadlines, Destination, Outcome, Session, SideSetup, Source, SwitchoverReport};
use switchover::state::DeviceState;
use switchover::topology::Topology;
use switchover_vhost::actions::{VhostActions, VhostDevices};
use switchover_vhost::frontend::{Frontend, FrontendConfig};
use switchover_vhost::memory::{GuestMemory, MemoryRegion, VringConfig};
use switchover_vhost::sink::NotifierSink;

/// Guest-physical address of the VMM's one memory region.
const GPA: u64 = 0x4000_0000;
/// Its size.
const SIZE: usize = 1 << 20;
/// The one ring: 64 descriptors, its tables, and request buffers after them.
const QSIZE: u16 = 64;
const DESC: u64 = GPA;
const AVAIL: u64 = GPA + 0x1000;
const USED: u64 = GPA + 0x2000;
const BUFS: u64 = GPA + 0x3000;

/// The VMM's guest memory: a memfd it maps itself.
struct Memory {
    fd: RawFd,
    base: *mut u8,
}

// SAFETY: the mapping lives as long as `Memory`; access is by volatile/atomic
// reads and writes of plain data, as a guest and its backends share memory.
unsafe impl Send for Memory {}
unsafe impl Sync for Memory {}

impl Memory {
    fn new() -> std::io::Result<Memory> {
        // SAFETY: memfd_create with a NUL-terminated name; ftruncate and mmap on it.
        unsafe {
            let fd = libc::memfd_create(c"vmm-guest".as_ptr(), libc::MFD_CLOEXEC);
            if fd < 0 || libc::ftruncate(fd, SIZE as libc::off_t) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let p = libc::mmap(std::ptr::null_mut(), SIZE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0);
            if p == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Memory { fd, base: p.cast() })
        }
    }
    fn ptr(&self, gpa: u64) -> *mut u8 {
        assert!(gpa >= GPA && gpa < GPA + SIZE as u64, "outside guest memory");
        // SAFETY: inside the mapping (checked).
        unsafe { self.base.add((gpa - GPA) as usize) }
    }
    fn write(&self, gpa: u64, bytes: &[u8]) {
        // SAFETY: inside the mapping; the guest owns these buffers until it publishes them.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr(gpa), bytes.len()) }
    }
    fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        // SAFETY: inside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr(gpa), v.as_mut_ptr(), len) }
        v
    }
    fn idx(&self, gpa: u64) -> &AtomicU16 {
        // SAFETY: ring indices are naturally aligned u16s inside the mapping.
        unsafe { &*(self.ptr(gpa) as *const AtomicU16) }
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: unmapping and closing what `new` mapped and opened.
        unsafe {
            libc::munmap(self.base.cast(), SIZE);
            libc::close(self.fd);
        }
    }
}

impl GuestMemory for Memory {
    fn regions(&self) -> Vec<MemoryRegion> {
        vec![MemoryRegion { guest_addr: GPA, size: SIZE as u64, user_addr: self.base as u64, fd: self.fd, fd_offset: 0 }]
    }
    fn read_u16(&self, gpa: u64) -> Option<u16> {
        (gpa >= GPA && gpa + 2 <= GPA + SIZE as u64).then(|| self.idx(gpa).load(Ordering::Acquire))
    }
}

/// The VMM's notifiers for its one ring: two eventfds of its own, and their
/// state. A VMM with vCPUs registers them with KVM here (see
/// `switchover_vhost::kvm::KvmNotifiers`); this one has no vCPUs, so its guest
/// kicks the kick eventfd directly.
struct Eventfds {
    kick: RawFd,
    call: RawFd,
    host: Notifier,
    guest: Notifier,
}

impl Eventfds {
    fn new() -> std::io::Result<Eventfds> {
        // SAFETY: creating two eventfds.
        let (kick, call) = unsafe { (libc::eventfd(0, libc::EFD_CLOEXEC), libc::eventfd(0, libc::EFD_CLOEXEC)) };
        if kick < 0 || call < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Eventfds { kick, call, host: Notifier::new(NotifierState::Disabled), guest: Notifier::new(NotifierState::Disabled) })
    }
    fn kick(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: an 8-byte write to our eventfd.
        unsafe { libc::write(self.kick, one.as_ptr().cast(), 8) };
    }
}

impl Drop for Eventfds {
    fn drop(&mut self) {
        // SAFETY: closing our own fds.
        unsafe {
            libc::close(self.kick);
            libc::close(self.call);
        }
    }
}

impl NotifierSink for Eventfds {
    fn kick_fd(&self, _d: DeviceId, _ring: u32) -> Option<RawFd> {
        Some(self.kick)
    }
    fn call_fd(&self, _d: DeviceId, _ring: u32) -> Option<RawFd> {
        Some(self.call)
    }
    fn host_notifier(&self, _d: DeviceId, _ring: u32, on: bool) -> Result<(), StepFailure> {
        // Exactly once: only the winner of the transition would issue the ioctl.
        if let Ok(t) = if on { self.host.begin_enable() } else { self.host.begin_disable() } {
            t.commit();
        }
        Ok(())
    }
    fn guest_notifier(&self, _d: DeviceId, _ring: u32, on: bool) -> Result<(), StepFailure> {
        if let Ok(t) = if on { self.guest.begin_enable() } else { self.guest.begin_disable() } {
            t.commit();
        }
        Ok(())
    }
}

/// The VMM's one vhost-user-blk device on one side.
struct Disk {
    frontend: Arc<Frontend>,
}

impl VhostDevices for Disk {
    fn frontend(&self, _d: DeviceId) -> Option<Arc<Frontend>> {
        Some(self.frontend.clone())
    }
    fn vring(&self, _d: DeviceId, ring: u32) -> Option<VringConfig> {
        (ring == 0).then_some(VringConfig { size: QSIZE, desc: DESC, avail: AVAIL, used: USED })
    }
}

/// A qemu-storage-daemon exporting `image` at `sock`, stopped on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_daemon(bin: &Path, image: &Path, sock: &Path) -> Result<(Daemon, UnixStream), Box<dyn Error>> {
    let child = Command::new(bin)
        .arg("--blockdev")
        .arg(format!("driver=file,node-name=f0,filename={},locking=off", image.display()))
        .arg("--export")
        .arg(format!("type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path={},writable=on,num-queues=1", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let d = Daemon(child);
    let t = Instant::now();
    loop {
        if let Ok(s) = UnixStream::connect(sock) {
            return Ok((d, s));
        }
        if t.elapsed() > Duration::from_secs(10) {
            return Err(format!("qemu-storage-daemon did not listen on {} within 10 s", sock.display()).into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The guest's virtio-blk driver on the one ring: request `n` uses descriptors
/// 3n..3n+2 and buffer slot `n`.
struct Driver<'a> {
    mem: &'a Memory,
    avail: u16,
}

impl Driver<'_> {
    fn submit(&mut self, write: bool, sector: u64, data: &[u8; 512]) -> u16 {
        let n = self.avail;
        let slot = BUFS + u64::from(n) * 1024;
        let (hdr, buf, status) = (slot, slot + 64, slot + 600);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&u32::from(write).to_le_bytes()); // VIRTIO_BLK_T_OUT = 1, IN = 0
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write(hdr, &h);
        self.mem.write(buf, if write { data } else { &[0u8; 512] });
        self.mem.write(status, &[0xff]);
        let head = (n * 3) % QSIZE;
        let desc = |i: u16, addr: u64, len: u32, flags: u16, next: u16| {
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            self.mem.write(DESC + 16 * u64::from(i), &d);
        };
        let (next, wr) = (1u16, 2u16);
        desc(head, hdr, 16, next, head + 1);
        desc(head + 1, buf, 512, next | if write { 0 } else { wr }, head + 2);
        desc(head + 2, status, 1, wr, 0);
        self.mem.write(AVAIL + 4 + 2 * u64::from(n % QSIZE), &head.to_le_bytes());
        fence(Ordering::SeqCst);
        self.avail = n.wrapping_add(1);
        self.mem.idx(AVAIL + 2).store(self.avail, Ordering::Release);
        n
    }
    fn wait(&self, n: u16) -> Result<(u8, Vec<u8>), Box<dyn Error>> {
        let t = Instant::now();
        // Completed once the used index is past `n` (free-running, wrapping).
        while (self.mem.idx(USED + 2).load(Ordering::Acquire).wrapping_sub(n) as i16) <= 0 {
            if t.elapsed() > Duration::from_secs(5) {
                return Err(format!("request {n} did not complete").into());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        let slot = BUFS + u64::from(n) * 1024;
        Ok((self.mem.read(slot + 600, 1)[0], self.mem.read(slot + 64, 512)))
    }
}

/// What the example did.
#[derive(Debug)]
pub struct Report {
    /// How the switchover ended, as the source saw it.
    pub source: SwitchoverReport,
    /// As the destination saw it.
    pub destination: SwitchoverReport,
    /// The ring's base the source read and the destination set.
    pub base: Option<u16>,
    /// The block written before the switchover read back identical through the
    /// destination's backend after it.
    pub read_back_identical: bool,
}

fn bring_up(fe: &Frontend, mem: &Memory, n: &Eventfds) -> Result<(), Box<dyn Error>> {
    let d = Duration::from_secs(2);
    n.host_notifier(DeviceId(0), 0, true)?;
    n.guest_notifier(DeviceId(0), 0, true)?;
    let hva = |gpa: u64| mem.base as u64 + (gpa - GPA);
    for p in [
        fe.set_features(fe.features(), d),
        fe.set_mem_table(&mem.regions(), d),
        fe.set_vring_num(0, QSIZE, d),
        fe.set_vring_addr(0, hva(DESC), hva(USED), hva(AVAIL), d),
        fe.set_vring_base(0, 0, d),
        fe.set_vring_kick(0, n.kick, d),
        fe.set_vring_call(0, n.call, d),
        fe.set_vring_enable(0, true, d),
    ] {
        p.wait()?;
    }
    Ok(())
}

/// Runs the whole integration with `qsd` (the qemu-storage-daemon binary) in `dir`.
///
/// # Errors
/// Anything that kept it from running (not a failed switchover: that is the report).
pub fn run(qsd: &Path, dir: &Path) -> Result<Report, Box<dyn Error>> {
    let image = dir.join("disk.img");
    std::fs::File::create(&image)?.set_len(1 << 20)?;
    let mem = Arc::new(Memory::new()?);
    let topo = Arc::new(Topology::builder().name("vmm-example").blk(1, 1).build()?);
    let (src_fds, dst_fds) = (Arc::new(Eventfds::new()?), Arc::new(Eventfds::new()?));

    // The source runs the guest: its disk's backend is started and serving.
    let (_src_daemon, s) = start_daemon(qsd, &image, &dir.join("src.sock"))?;
    let cfg = FrontendConfig { resend_addr_after_base: true, ..FrontendConfig::new("src blk0", 1) };
    let src_fe = Arc::new(Frontend::connect(s, &cfg)?);
    bring_up(&src_fe, &mem, &src_fds)?;
    let mut guest = Driver { mem: &mem, avail: 0 };
    let block: [u8; 512] = std::array::from_fn(|i| (i * 7 + 3) as u8);
    let w = guest.submit(true, 5, &block);
    src_fds.kick();
    let (status, _) = guest.wait(w)?;
    if status != 0 {
        return Err(format!("the write failed with status {status}").into());
    }

    // The destination's backend is connected before the window.
    let (_dst_daemon, s) = start_daemon(qsd, &image, &dir.join("dst.sock"))?;
    let cfg = FrontendConfig { resend_addr_after_base: true, ..FrontendConfig::new("dst blk0", 1) };
    let dst_fe = Arc::new(Frontend::connect(s, &cfg)?);

    // One memory on one host, no MSI routing, no image hand-over: the steps for
    // those are off.
    let opts = RecipeOptions { dirty_log: false, reconcile: false, routes: RouteCommits::None, storage: false, ..RecipeOptions::engine() };
    let side = |side: Side, fe: &Arc<Frontend>, fds: &Arc<Eventfds>| -> Result<SideSetup, Box<dyn Error>> {
        let state = Arc::new(DeviceState::new(&topo));
        let actions = VhostActions::new(Arc::new(Disk { frontend: fe.clone() }), mem.clone(), fds.clone(), state.clone());
        let plan = Arc::new(build(&topo, side, &opts, &NoCosts)?);
        let recovery = Arc::new(actions.for_rollback());
        Ok(SideSetup::new(plan, Arc::new(actions), state).with_recovery(opts.clone(), Arc::new(NoCosts), recovery))
    };
    let src = side(Side::Source, &src_fe, &src_fds)?;
    let dst = side(Side::Destination, &dst_fe, &dst_fds)?;

    // The two roles, as two VMM processes joined by a socket.
    let (a, b) = UnixStream::pair()?;
    let (mut src_path, mut dst_path) = (UnixPath::new(a), UnixPath::new(b));
    let (mut src_engine, mut dst_engine) = (Engine::new(2), Engine::new(2));
    let deadlines = Deadlines::default();
    let (source, destination) = std::thread::scope(|sc| {
        let d = sc.spawn(|| Destination::new(&dst, &mut dst_engine, Session::new(1, &topo), deadlines).run(&mut dst_path));
        let s = Source::new(&src, &mut src_engine, Session::new(1, &topo), deadlines).run(&mut src_path);
        (s, d.join().expect("the destination role does not panic"))
    });

    // The guest goes on where it runs: read the block back.
    let mut read_back_identical = false;
    if source.outcome == Outcome::Completed {
        let r = guest.submit(false, 5, &[0; 512]);
        dst_fds.kick();
        let (status, data) = guest.wait(r)?;
        read_back_identical = status == 0 && data[..] == block[..];
    }
    let base = dst.state.base(DeviceId(0), 0).filter(|b| src.state.base(DeviceId(0), 0) == Some(*b));
    Ok(Report { source, destination, base, read_back_identical })
}

/// qemu-storage-daemon on this machine, if installed.
pub fn find_qsd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("qemu-storage-daemon")).find(|p| p.is_file())
}

#[allow(dead_code)] // the test includes this file and calls `run` itself
fn main() -> Result<(), Box<dyn Error>> {
    let qsd = find_qsd().ok_or("qemu-storage-daemon is not installed (Debian package qemu-utils)")?;
    let dir = std::env::temp_dir().join(format!("vmm-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let r = run(&qsd, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let r = r?;
    println!(
        "source: {} in {:.2} ms; destination: {}",
        r.source.outcome.name(),
        r.source.downtime.as_secs_f64() * 1e3,
        r.destination.outcome.name()
    );
    println!("ring base carried: {:?}; block read back through the destination: {}", r.base, r.read_back_identical);
    if r.source.outcome != Outcome::Completed || !r.read_back_identical {
        return Err("the switchover did not complete with the guest's data".into());
    }
    Ok(())
}
