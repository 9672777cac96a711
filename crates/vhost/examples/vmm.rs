//! A VMM that adopts `switchover` with the core and the frontend crate only: its
//! own guest memory (a memfd per side, as two hosts have), its own eventfds, real
//! qemu-storage-daemon backends (one per side, on one disk image), its big lock,
//! and a switchover between the two roles over a Unix socket pair, as two VMM
//! processes would run it.
//!
//! What it shows:
//!
//! * the big lock is taken only when the window opens (`stop_vcpus`): the
//!   migration's prepare, its precopy and the wait for the destination's
//!   ready-ack run with the guest running and the lock free — the guest's vCPU
//!   takes it meanwhile — and the report says so;
//! * guest memory is migrated: precopy passes copy the source's memory to the
//!   destination's while the guest writes, the backend logs its writes in a
//!   shared dirty log (`VHOST_F_LOG_ALL`, `LOG_SHMFD`), the window's log sync
//!   and final pass copy what is left, and the destination's backend starts on
//!   final memory;
//! * each device's configuration (rings, MSI-X table) crosses as a device blob
//!   with its generation; the guest rewrites an MSI-X entry during precopy and
//!   the destination reconciles that device in the window.
//!
//! The guest writes blocks through the source's backend before and during the
//! migration and reads one back through the destination's after it.
//!
//! Run: `cargo run --release -p switchover-vhost --example vmm` (needs
//! qemu-storage-daemon, Debian package qemu-utils). `tests/vmm_example.rs` runs it.

use std::error::Error;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{fence, AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use switchover::error::StepFailure;
use switchover::exec::Engine;
use switchover::ids::{DeviceId, Side};
use switchover::notifier::{Notifier, NotifierState};
use switchover::recipe::{build, NoCosts, RecipeOptions, RouteCommits};
use switchover::roles::path::UnixPath;
use switchover::roles::{Deadlines, Destination, HookError, Outcome, Session, SideSetup, Source, SwitchoverReport, VmmHooks};
use switchover::state::DeviceBlob;
use switchover::state::DeviceState;
use switchover::topology::Topology;
use switchover_vhost::actions::{VhostActions, VhostDevices};
use switchover_vhost::config::{DeviceConfig, MsiVector, RingSetup};
use switchover_vhost::frontend::{Frontend, FrontendConfig};
use switchover_vhost::log::{DirtyLog, DirtyPages, Migration, PAGE};
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

/// A side's guest memory: a memfd it maps itself. The guest's own writes are
/// tracked in a dirty set (a VMM with vCPUs reads them from KVM's dirty log).
struct Memory {
    fd: RawFd,
    base: *mut u8,
    guest_dirty: Mutex<DirtyPages>,
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
            Ok(Memory { fd, base: p.cast(), guest_dirty: Mutex::new(DirtyPages::new(GPA, SIZE as u64)) })
        }
    }
    fn ptr(&self, gpa: u64) -> *mut u8 {
        assert!(gpa >= GPA && gpa < GPA + SIZE as u64, "outside guest memory");
        // SAFETY: inside the mapping (checked).
        unsafe { self.base.add((gpa - GPA) as usize) }
    }
    fn dirty(&self, gpa: u64, len: usize) {
        let mut d = self.guest_dirty.lock();
        let mut p = gpa / PAGE * PAGE;
        while p < gpa + len as u64 {
            d.insert(p);
            p += PAGE;
        }
    }
    fn write(&self, gpa: u64, bytes: &[u8]) {
        // SAFETY: inside the mapping; the guest owns these buffers until it publishes them.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr(gpa), bytes.len()) }
        self.dirty(gpa, bytes.len());
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
    fn store_idx(&self, gpa: u64, v: u16) {
        self.idx(gpa).store(v, Ordering::Release);
        self.dirty(gpa, 2);
    }
    /// Copies `pages` of this memory into `to` (one RAM pass).
    fn copy_to(&self, to: &Memory, pages: &DirtyPages) -> u64 {
        let mut n = 0;
        for gpa in pages.pages() {
            // SAFETY: whole pages inside both mappings (two memfds of one size).
            unsafe { std::ptr::copy_nonoverlapping(self.ptr(gpa), to.ptr(gpa), PAGE as usize) };
            n += 1;
        }
        n
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
/// `switchover_vhost::kvm::KvmNotifiers`, which also commits MSI routes); this
/// one has no vCPUs, so its guest kicks the kick eventfd directly.
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

/// The VMM's big lock: held by a vCPU while it runs guest code, and by the
/// migration from the window's opening. A flag and a condition variable, so that
/// the hooks can take it in one call and give it back in another.
#[derive(Default)]
struct BigLock {
    held: Mutex<bool>,
    freed: Condvar,
}

impl BigLock {
    fn lock(&self) {
        let mut h = self.held.lock();
        while *h {
            self.freed.wait(&mut h);
        }
        *h = true;
    }
    fn unlock(&self) {
        *self.held.lock() = false;
        self.freed.notify_all();
    }
}

/// One side's VMM state: its memory, its device's configuration, its big lock.
struct Vmm {
    mem: Arc<Memory>,
    config: Mutex<Option<DeviceConfig>>,
    lock: BigLock,
    /// When the migration took the big lock (the window's opening).
    locked_at: Mutex<Option<Instant>>,
}

impl Vmm {
    fn new(mem: Arc<Memory>, config: Option<DeviceConfig>) -> Vmm {
        Vmm { mem, config: Mutex::new(config), lock: BigLock::default(), locked_at: Mutex::new(None) }
    }
    fn blobs(&self) -> Vec<DeviceBlob> {
        self.config.lock().iter().map(|c| DeviceBlob { device: 0, generation: c.generation, bytes: c.encode() }).collect()
    }
    fn load(&self, blobs: &[DeviceBlob]) -> Result<(), HookError> {
        let b = blobs.first().ok_or_else(|| HookError::msg("no state for blk0"))?;
        let c = DeviceConfig::decode(&b.bytes).map_err(HookError::new)?;
        *self.config.lock() = Some(c);
        Ok(())
    }
}

/// The VMM's one vhost-user-blk device on one side.
struct Disk {
    frontend: Arc<Frontend>,
    vmm: Arc<Vmm>,
}

impl VhostDevices for Disk {
    fn frontend(&self, _d: DeviceId) -> Option<Arc<Frontend>> {
        Some(self.frontend.clone())
    }
    fn vring(&self, _d: DeviceId, ring: u32) -> Option<VringConfig> {
        (ring == 0).then_some(VringConfig { size: QSIZE, desc: DESC, avail: AVAIL, used: USED })
    }
    fn config(&self, _d: DeviceId) -> Option<DeviceConfig> {
        self.vmm.config.lock().clone()
    }
}

/// The guest's virtio-blk driver on the one ring: request `n` uses descriptors
/// 3n..3n+2 and buffer slot `n`.
struct Driver {
    mem: Arc<Memory>,
    avail: u16,
}

impl Driver {
    fn submit(&mut self, write: bool, sector: u64, data: &[u8; 512]) -> u16 {
        let n = self.avail;
        let slot = BUFS + u64::from(n % 64) * 1024;
        let (hdr, buf, status) = (slot, slot + 64, slot + 600);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&u32::from(write).to_le_bytes()); // VIRTIO_BLK_T_OUT = 1, IN = 0
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write(hdr, &h);
        self.mem.write(buf, if write { data } else { &[0u8; 512] });
        self.mem.write(status, &[0xff]);
        // Three descriptors per request, a chain never wrapping past the table's
        // end: 21 chain slots in a table of 64 (one request in flight at a time).
        let head = (n % (QSIZE / 3)) * 3;
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
        self.mem.store_idx(AVAIL + 2, self.avail);
        n
    }
    fn wait(&self, n: u16) -> Result<(u8, Vec<u8>), Box<dyn Error + Send + Sync>> {
        let t = Instant::now();
        // Completed once the used index is past `n` (free-running, wrapping).
        while (self.mem.idx(USED + 2).load(Ordering::Acquire).wrapping_sub(n) as i16) <= 0 {
            if t.elapsed() > Duration::from_secs(5) {
                let (avail, used) = (self.mem.idx(AVAIL + 2).load(Ordering::Acquire), self.mem.idx(USED + 2).load(Ordering::Acquire));
                return Err(format!("request {n} did not complete (available index {avail}, used index {used})").into());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        let slot = BUFS + u64::from(n % 64) * 1024;
        Ok((self.mem.read(slot + 600, 1)[0], self.mem.read(slot + 64, 512)))
    }
}

/// The source VMM's side of the migration: its vCPU (a thread running the guest
/// driver under the big lock), precopy, the dirty log and the final pass.
struct SourceVmm {
    vmm: Arc<Vmm>,
    dst_mem: Arc<Memory>,
    log: Arc<DirtyLog>,
    pending: Mutex<DirtyPages>,
    guest: Mutex<Option<Driver>>,
    kick: Arc<Eventfds>,
    /// vCPU runs (big lock taken by the vCPU) and when the last one ended.
    vcpu_runs: AtomicU64,
    vcpu: Mutex<Option<std::thread::JoinHandle<Driver>>>,
    stop: Arc<AtomicBool>,
    copied: AtomicU64,
    final_pages: AtomicU64,
}

impl SourceVmm {
    /// The vCPU: every millisecond it takes the big lock and the guest writes a
    /// block (sectors 100..), until the window opens.
    fn start_vcpu(self: &Arc<Self>) {
        let me = self.clone();
        let mut drv = self.guest.lock().take().expect("the guest's driver");
        let h = std::thread::spawn(move || {
            let mut sector = 100;
            while !me.stop.load(Ordering::Acquire) {
                me.vmm.lock.lock();
                let block = [sector as u8; 512];
                let n = drv.submit(true, sector, &block);
                me.kick.kick();
                let _ = drv.wait(n);
                me.vmm.lock.unlock();
                me.vcpu_runs.fetch_add(1, Ordering::AcqRel);
                sector += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            drv
        });
        *self.vcpu.lock() = Some(h);
    }

    fn pass(&self, all: bool) -> u64 {
        let guest = std::mem::replace(&mut *self.vmm.mem.guest_dirty.lock(), DirtyPages::new(GPA, SIZE as u64));
        let mut pages = self.log.sync(GPA, SIZE as u64);
        pages.union(&guest);
        if all {
            pages = DirtyPages::new(GPA, SIZE as u64);
            let mut p = GPA;
            while p < GPA + SIZE as u64 {
                pages.insert(p);
                p += PAGE;
            }
        }
        let n = self.vmm.mem.copy_to(&self.dst_mem, &pages);
        self.copied.fetch_add(n, Ordering::AcqRel);
        n
    }
}

impl Migration for SourceVmm {
    fn dirty_log(&self) -> Option<(Arc<DirtyLog>, u64, u64)> {
        Some((self.log.clone(), GPA, SIZE as u64))
    }
    fn mark_dirty(&self, pages: &DirtyPages) {
        self.pending.lock().union(pages);
    }
    fn final_pass(&self) -> Result<u64, StepFailure> {
        let mut pages = self.pending.lock().take();
        pages.union(&std::mem::replace(&mut *self.vmm.mem.guest_dirty.lock(), DirtyPages::new(GPA, SIZE as u64)));
        let n = self.vmm.mem.copy_to(&self.dst_mem, &pages);
        self.final_pages.fetch_add(n, Ordering::AcqRel);
        Ok(n)
    }
}

impl VmmHooks for SourceVmm {
    fn snapshot_config(&self) -> Result<Vec<DeviceBlob>, HookError> {
        Ok(self.vmm.blobs())
    }
    fn precopy(&self) -> Result<(), HookError> {
        // RAM passes while the vCPU runs: everything, then what got dirty.
        self.pass(true);
        for i in 0..3 {
            std::thread::sleep(Duration::from_millis(5));
            if i == 0 {
                // The guest moves vector 0 to another CPU: its MSI-X entry
                // changes (an MMIO write the VMM handles under its big lock).
                self.vmm.lock.lock();
                if let Some(c) = self.vmm.config.lock().as_mut() {
                    c.msix[0] = MsiVector { address: 0xfee0_1000, data: 0x4041, masked: false };
                    c.generation += 1;
                }
                self.vmm.lock.unlock();
            }
            self.pass(false);
        }
        // The guest runs on after the last pass: what it and the backend write
        // now reaches the destination through the window's log sync and final pass.
        let runs = self.vcpu_runs.load(Ordering::Acquire);
        let t = Instant::now();
        while self.vcpu_runs.load(Ordering::Acquire) == runs && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }
    fn stop_vcpus(&self) -> Result<(), HookError> {
        self.stop.store(true, Ordering::Release);
        let h = self.vcpu.lock().take();
        let drv = h.map(|h| h.join().map_err(|_| HookError::msg("the vCPU panicked"))).transpose()?;
        *self.guest.lock() = drv;
        // From here the migration holds the big lock (till the end of the window).
        self.vmm.lock.lock();
        *self.vmm.locked_at.lock() = Some(Instant::now());
        Ok(())
    }
    fn save_state(&self) -> Result<Vec<DeviceBlob>, HookError> {
        Ok(self.vmm.blobs())
    }
    fn resume_vcpus(&self) -> Result<(), HookError> {
        // After a rollback the guest runs here again.
        self.vmm.lock.unlock();
        Ok(())
    }
}

/// The destination VMM: it stages the configuration, loads the state, resumes.
struct DestinationVmm {
    vmm: Arc<Vmm>,
    staged: Mutex<Option<u64>>,
}

impl VmmHooks for DestinationVmm {
    fn stage_config(&self, config: &[DeviceBlob]) -> Result<(), HookError> {
        self.vmm.load(config)?;
        *self.staged.lock() = config.first().map(|b| b.generation);
        Ok(())
    }
    fn load_state(&self, state: &[DeviceBlob]) -> Result<(), HookError> {
        // The window: the big lock is the migration's until the guest resumes.
        self.vmm.lock.lock();
        *self.vmm.locked_at.lock() = Some(Instant::now());
        self.vmm.load(state)
    }
    fn resume_vcpus(&self) -> Result<(), HookError> {
        self.vmm.lock.unlock();
        Ok(())
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

/// When the source's phases ended, and what its vCPU did meanwhile.
#[derive(Debug, Clone, Copy)]
pub struct LockTimeline {
    /// vCPU runs (each under the big lock) between the migration's start and the
    /// window's opening.
    pub vcpu_runs_before_window: u64,
    /// Migration start to the end of prepare and precopy (ms).
    pub prepare_ms: f64,
    /// Then the wait for the destination's ready-ack (ms).
    pub ready_wait_ms: f64,
    /// When the migration took the big lock, after the migration's start (ms).
    pub locked_after_ms: f64,
    /// Whether the migration took it only once the ready-ack had come.
    pub locked_after_ready: bool,
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
    /// Pages the precopy passes and the final pass copied.
    pub pages: (u64, u64),
    /// The destination's memory equals the source's when its ring starts.
    pub memory_identical: bool,
    /// The devices the destination reconciled.
    pub reconciled: Vec<u32>,
    /// The big lock and the vCPU.
    pub lock: LockTimeline,
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
        fe.set_vring_call(0, n.call, d),
        fe.set_vring_enable(0, true, d),
        fe.set_vring_kick(0, n.kick, d),
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
    // Two hosts: each side its own memory.
    let (src_mem, dst_mem) = (Arc::new(Memory::new()?), Arc::new(Memory::new()?));
    let topo = Arc::new(Topology::builder().name("vmm-example").blk(1, 1).build()?);
    let (src_fds, dst_fds) = (Arc::new(Eventfds::new()?), Arc::new(Eventfds::new()?));
    // The guest's device: one ring on MSI-X vector 0.
    let config = DeviceConfig {
        generation: 1,
        features: 0,
        rings: vec![RingSetup {
            vring: Some(VringConfig { size: QSIZE, desc: DESC, avail: AVAIL, used: USED }),
            enabled: true,
            vector: Some(0),
            doorbell: 0,
        }],
        msix: vec![MsiVector { address: 0xfee0_0000, data: 0x4031, masked: false }],
    };
    let src_vmm = Arc::new(Vmm::new(src_mem.clone(), Some(config)));
    let dst_vmm = Arc::new(Vmm::new(dst_mem.clone(), None));

    // The source runs the guest: its disk's backend is started and serving.
    let (_src_daemon, s) = start_daemon(qsd, &image, &dir.join("src.sock"))?;
    let cfg = FrontendConfig { resend_addr_after_base: true, ..FrontendConfig::new("src blk0", 1) };
    let src_fe = Arc::new(Frontend::connect(s, &cfg)?);
    bring_up(&src_fe, &src_mem, &src_fds)?;
    let mut guest = Driver { mem: src_mem.clone(), avail: 0 };
    let block: [u8; 512] = std::array::from_fn(|i| (i * 7 + 3) as u8);
    let w = guest.submit(true, 5, &block);
    src_fds.kick();
    let (status, _) = guest.wait(w).map_err(|e| e.to_string())?;
    if status != 0 {
        return Err(format!("the write failed with status {status}").into());
    }

    // The destination's backend is connected before the window, on its memory.
    let (_dst_daemon, s) = start_daemon(qsd, &image, &dir.join("dst.sock"))?;
    let cfg = FrontendConfig { resend_addr_after_base: true, ..FrontendConfig::new("dst blk0", 1) };
    let dst_fe = Arc::new(Frontend::connect(s, &cfg)?);

    // Dirty logging, the final pass and reconciliation on; no MSI routes (this
    // VMM has no KVM VM) and no image hand-over (the two daemons open the image
    // without locking).
    let opts = RecipeOptions { routes: RouteCommits::None, storage: false, ..RecipeOptions::engine() };
    let log = Arc::new(DirtyLog::new(GPA + SIZE as u64)?);
    let source_vmm = Arc::new(SourceVmm {
        vmm: src_vmm.clone(),
        dst_mem: dst_mem.clone(),
        log,
        pending: Mutex::new(DirtyPages::new(GPA, SIZE as u64)),
        guest: Mutex::new(Some(guest)),
        kick: src_fds.clone(),
        vcpu_runs: AtomicU64::new(0),
        vcpu: Mutex::new(None),
        stop: Arc::new(AtomicBool::new(false)),
        copied: AtomicU64::new(0),
        final_pages: AtomicU64::new(0),
    });
    let dest_vmm = Arc::new(DestinationVmm { vmm: dst_vmm.clone(), staged: Mutex::new(None) });
    let src_state = Arc::new(DeviceState::new(&topo));
    let dst_state = Arc::new(DeviceState::new(&topo));
    let src_actions = VhostActions::new(
        Arc::new(Disk { frontend: src_fe.clone(), vmm: src_vmm.clone() }),
        src_mem.clone(),
        src_fds.clone(),
        src_state.clone(),
    )
    .with_migration(source_vmm.clone());
    let dst_actions = VhostActions::new(
        Arc::new(Disk { frontend: dst_fe.clone(), vmm: dst_vmm.clone() }),
        dst_mem.clone(),
        dst_fds.clone(),
        dst_state.clone(),
    );
    let setup =
        |side: Side, actions: &VhostActions, state: &Arc<DeviceState>, hooks: Arc<dyn VmmHooks>| -> Result<SideSetup, Box<dyn Error>> {
            let plan = Arc::new(build(&topo, side, &opts, &NoCosts)?);
            let recovery = Arc::new(actions.for_rollback());
            Ok(SideSetup::new(plan, Arc::new(actions.clone()), state.clone()).with_hooks(hooks).with_recovery(
                opts.clone(),
                Arc::new(NoCosts),
                recovery,
            ))
        };
    let src = setup(Side::Source, &src_actions, &src_state, source_vmm.clone())?;
    let dst = setup(Side::Destination, &dst_actions, &dst_state, dest_vmm.clone())?;

    // The guest keeps running on its vCPU while the migration starts.
    source_vmm.start_vcpu();

    // The two roles, as two VMM processes joined by a socket.
    let (a, b) = UnixStream::pair()?;
    let (mut src_path, mut dst_path) = (UnixPath::new(a), UnixPath::new(b));
    let (mut src_engine, mut dst_engine) = (Engine::new(2), Engine::new(2));
    let deadlines = Deadlines::default();
    let started = Instant::now();
    let mut timeline = (0.0, 0.0);
    let (source, destination) = std::thread::scope(|sc| {
        let d = sc.spawn(|| Destination::new(&dst, &mut dst_engine, Session::new(1, &topo), deadlines).run(&mut dst_path));
        // The source in its typed states: prepare (dirty logging) and precopy,
        // then the ready-ack wait — the guest running, the big lock free —, then
        // the window.
        let source = Source::new(&src, &mut src_engine, Session::new(1, &topo), deadlines);
        let s = match source.prepare(&mut src_path) {
            Ok(prepared) => {
                timeline.0 = started.elapsed().as_secs_f64() * 1e3;
                match prepared.wait_ready(&mut src_path) {
                    Ok(ready) => {
                        timeline.1 = started.elapsed().as_secs_f64() * 1e3;
                        ready.switch_over(&mut src_path)
                    }
                    Err(r) => *r,
                }
            }
            Err(r) => *r,
        };
        (s, d.join().expect("the destination role does not panic"))
    });
    let locked_at = src_vmm.locked_at.lock().map(|t| (t - started).as_secs_f64() * 1e3);
    let lock = LockTimeline {
        vcpu_runs_before_window: source_vmm.vcpu_runs.load(Ordering::Acquire),
        prepare_ms: timeline.0,
        ready_wait_ms: timeline.1 - timeline.0,
        locked_after_ms: locked_at.unwrap_or(f64::NAN),
        locked_after_ready: locked_at.is_some_and(|l| l >= timeline.1 && timeline.1 > 0.0),
    };
    // The destination's memory is what the source's was at the stop.
    let memory_identical =
        (0..SIZE as u64 / PAGE).all(|p| src_mem.read(GPA + p * PAGE, PAGE as usize) == dst_mem.read(GPA + p * PAGE, PAGE as usize));

    // The guest goes on where it runs: read the first block back.
    let mut read_back_identical = false;
    if source.outcome == Outcome::Completed {
        let avail = src_mem.idx(AVAIL + 2).load(Ordering::Acquire);
        let mut guest = Driver { mem: dst_mem.clone(), avail };
        let r = guest.submit(false, 5, &[0; 512]);
        dst_fds.kick();
        let (status, data) = guest.wait(r).map_err(|e| e.to_string())?;
        read_back_identical = status == 0 && data[..] == block[..];
    }
    let base = dst.state.base(DeviceId(0), 0).filter(|b| src.state.base(DeviceId(0), 0) == Some(*b));
    let reconciled = dst_actions.reconciled().iter().map(|r| r.device.0).collect();
    let pages = (source_vmm.copied.load(Ordering::Acquire), source_vmm.final_pages.load(Ordering::Acquire));
    Ok(Report { source, destination, base, read_back_identical, pages, memory_identical, reconciled, lock })
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
    let l = &r.lock;
    println!(
        "big lock: free through prepare and precopy ({:.1} ms) and the ready-ack wait ({:.1} ms), the vCPU took it {} times meanwhile; the migration took it at {:.1} ms, {} the ready-ack",
        l.prepare_ms,
        l.ready_wait_ms,
        l.vcpu_runs_before_window,
        l.locked_after_ms,
        if l.locked_after_ready { "after" } else { "BEFORE" }
    );
    println!(
        "memory per side: precopy and final pass copied {} pages, the final pass {}; destination memory identical at its start: {}; reconciled devices: {:?}",
        r.pages.0 + r.pages.1,
        r.pages.1,
        r.memory_identical,
        r.reconciled
    );
    println!("ring base carried: {:?}; block read back through the destination: {}", r.base, r.read_back_identical);
    if r.source.outcome != Outcome::Completed || !r.read_back_identical || !r.memory_identical || !l.locked_after_ready {
        return Err("the switchover did not complete with the guest's data".into());
    }
    Ok(())
}
