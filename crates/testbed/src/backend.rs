//! The project's own vhost-user backends (vhost-user-backend crate), run as child
//! processes (`switchover real __backend net|blk SOCK QUEUES [FILE]`), that really
//! process descriptors:
//!
//! * net: a tx ring's packets are transmitted (appended, with the ring, to the
//!   wire file FILE if given) and completed; an rx ring's buffers are filled with
//!   a packet (virtio-net header + 60 bytes, stamped with the used-ring position
//!   it completes at) and completed;
//! * blk: virtio-blk requests (IN, OUT, FLUSH, GET_ID) read and write a file.
//!
//! Both log every write they make to guest memory while the frontend asks them to
//! (`VHOST_F_LOG_ALL` and `LOG_SHMFD` offered; `SET_LOG_BASE` maps the shared
//! log): guest memory is mapped with a bitmap ([`LogGate`]) that marks the
//! pages in the log, and stops marking them once `SET_FEATURES` comes without
//! `VHOST_F_LOG_ALL` (a failed migration). vhost-user-backend alone keeps
//! logging then.
//!
//! A net tx ring follows the spec's ring states: started (it has a kick) but
//! disabled, it processes and discards its packets (they are completed, not
//! transmitted). vhost-user-backend alone just leaves them in the ring.
//!
//! The frontend listens and the backend connects (no start-up race). The backend
//! completes every buffer it takes under the vring lock, so `GET_VRING_BASE` never
//! sees a request in flight.
//!
//! # Examples
//!
//! ```
//! use switchover_testbed::backend::serve;
//! // A blk backend serves a file: without one it refuses to start.
//! let e = serve("blk", "/nonexistent/blk0.sock", 1, None).unwrap_err();
//! assert_eq!(e.to_string(), "a blk backend needs a file");
//! ```

use std::fs::File;
use std::io;
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::bitmap::{AtomicBitmapMmap, BitmapMmapRegion, BitmapReplace};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringStateGuard, VringStateMutGuard, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::{Error as VirtQueError, QueueT};
use vm_memory::bitmap::{Bitmap, BitmapSlice, WithBitmapSlice};
use vm_memory::mmap::NewBitmap;
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};

use super::mem::QSIZE;
use crate::error::RigError;

/// virtio-blk request types.
const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// `VHOST_F_LOG_ALL`.
const LOG_ALL: u64 = VhostUserVirtioFeatures::LOG_ALL.bits();

/// Whether the frontend asks this backend to log its writes (`SET_FEATURES` with
/// `VHOST_F_LOG_ALL`). One backend process serves one device.
static LOGGING: AtomicBool = AtomicBool::new(false);
/// Whether this process serves a net device (its odd rings transmit).
static NET: AtomicBool = AtomicBool::new(false);
/// Rings created so far (the handler creates them in queue order).
static RINGS: AtomicUsize = AtomicUsize::new(0);
/// Where transmitted packets go (net, optional).
static WIRE: OnceLock<parking_lot::Mutex<File>> = OnceLock::new();

/// Guest memory's dirty bitmap in an own backend: vhost-user-backend's
/// [`BitmapMmapRegion`] (the shared log `SET_LOG_BASE` maps), marked only while
/// the frontend has `VHOST_F_LOG_ALL` set.
///
/// ```
/// use switchover_testbed::backend::LogGate;
/// use vm_memory::bitmap::Bitmap;
/// let b = LogGate::default();
/// b.mark_dirty(0, 8); // no log mapped yet: nothing to mark
/// assert!(!b.dirty_at(0));
/// ```
#[derive(Debug, Clone, Default)]
pub struct LogGate(BitmapMmapRegion);

impl Bitmap for LogGate {
    fn mark_dirty(&self, offset: usize, len: usize) {
        if LOGGING.load(Ordering::Acquire) {
            self.0.mark_dirty(offset, len);
        }
    }
    fn dirty_at(&self, offset: usize) -> bool {
        self.0.dirty_at(offset)
    }
    fn slice_at(&self, offset: usize) -> Self {
        LogGate(self.0.slice_at(offset))
    }
}

impl BitmapSlice for LogGate {}

impl WithBitmapSlice<'_> for LogGate {
    type S = Self;
}

impl NewBitmap for LogGate {
    fn with_len(len: usize) -> Self {
        LogGate(BitmapMmapRegion::with_len(len))
    }
}

impl BitmapReplace for LogGate {
    type InnerBitmap = AtomicBitmapMmap;
    fn replace(&self, bitmap: AtomicBitmapMmap) {
        self.0.replace(bitmap);
    }
}

type Gm = GuestMemoryAtomic<GuestMemoryMmap<LogGate>>;

/// A ring of an own backend: vhost-user-backend's, with the spec's rule for a
/// net tx ring that is started but disabled (its packets are discarded).
#[derive(Clone)]
struct OwnVring {
    inner: VringRwLock<Gm>,
    mem: Gm,
    tx: bool,
}

impl OwnVring {
    /// Completes every packet in the ring without transmitting it.
    fn discard(&self) {
        let mem = self.mem.memory();
        let mut st = self.inner.get_mut();
        if !st.get_queue().ready() {
            return;
        }
        if let Ok(u) = st.get_queue().used_idx(&*mem, Ordering::Acquire) {
            st.get_queue_mut().set_next_used(u.0);
        }
        let mut any = false;
        while let Some(chain) = st.get_queue_mut().pop_descriptor_chain(mem.clone()) {
            let head = chain.head_index();
            if st.get_queue_mut().add_used(&*mem, head, 0).is_err() {
                break;
            }
            any = true;
        }
        drop(st);
        if any {
            let _ = self.inner.signal_used_queue();
        }
    }
}

impl<'a> VringStateGuard<'a, Gm> for OwnVring {
    type G = <VringRwLock<Gm> as VringStateGuard<'a, Gm>>::G;
}

impl<'a> VringStateMutGuard<'a, Gm> for OwnVring {
    type G = <VringRwLock<Gm> as VringStateMutGuard<'a, Gm>>::G;
}

impl VringT<Gm> for OwnVring {
    fn new(mem: Gm, max_queue_size: u16) -> Result<Self, VirtQueError> {
        let index = RINGS.fetch_add(1, Ordering::AcqRel);
        let tx = NET.load(Ordering::Acquire) && index % 2 == 1;
        Ok(OwnVring { inner: VringRwLock::new(mem.clone(), max_queue_size)?, mem, tx })
    }
    fn get_ref(&self) -> <Self as VringStateGuard<'_, Gm>>::G {
        self.inner.get_ref()
    }
    fn get_mut(&self) -> <Self as VringStateMutGuard<'_, Gm>>::G {
        self.inner.get_mut()
    }
    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), VirtQueError> {
        self.inner.add_used(desc_index, len)
    }
    fn signal_used_queue(&self) -> io::Result<()> {
        self.inner.signal_used_queue()
    }
    fn enable_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.enable_notification()
    }
    fn disable_notification(&self) -> Result<(), VirtQueError> {
        self.inner.disable_notification()
    }
    fn needs_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.needs_notification()
    }
    fn set_enabled(&self, enabled: bool) {
        self.inner.set_enabled(enabled);
        // A started tx ring being disabled discards what it holds.
        if self.tx && !enabled {
            self.discard();
        }
    }
    fn set_queue_info(&self, desc_table: u64, avail_ring: u64, used_ring: u64) -> Result<(), VirtQueError> {
        self.inner.set_queue_info(desc_table, avail_ring, used_ring)
    }
    fn queue_next_avail(&self) -> u16 {
        self.inner.queue_next_avail()
    }
    fn set_queue_next_avail(&self, base: u16) {
        self.inner.set_queue_next_avail(base)
    }
    fn set_queue_next_used(&self, idx: u16) {
        self.inner.set_queue_next_used(idx)
    }
    fn queue_used_idx(&self) -> Result<u16, VirtQueError> {
        self.inner.queue_used_idx()
    }
    fn set_queue_size(&self, num: u16) {
        self.inner.set_queue_size(num)
    }
    fn set_queue_event_idx(&self, enabled: bool) {
        self.inner.set_queue_event_idx(enabled)
    }
    fn set_queue_ready(&self, ready: bool) {
        self.inner.set_queue_ready(ready);
        // A tx ring started (kicked) while disabled discards what it holds.
        if self.tx && ready && !self.inner.get_ref().is_enabled() {
            self.discard();
        }
    }
    fn set_kick(&self, file: Option<File>) {
        self.inner.set_kick(file)
    }
    fn read_kick(&self) -> io::Result<bool> {
        self.inner.read_kick()
    }
    fn set_call(&self, file: Option<File>) {
        self.inner.set_call(file)
    }
    fn set_err(&self, file: Option<File>) {
        self.inner.set_err(file)
    }
}

#[derive(Clone)]
struct OwnBackend {
    blk: bool,
    queues: usize,
    file: Option<Arc<File>>,
    mem: Gm,
}

impl OwnBackend {
    fn process(&self, vring: &OwnVring, q: usize) -> io::Result<()> {
        let mem = self.mem.memory();
        let mut st = vring.get_mut();
        // vhost-user-backend's SET_VRING_BASE sets next_avail only: resynchronise
        // next_used with the used ring (this backend never holds buffers).
        if let Ok(u) = st.get_queue().used_idx(&*mem, Ordering::Acquire) {
            st.get_queue_mut().set_next_used(u.0);
        }
        let mut any = false;
        while let Some(chain) = st.get_queue_mut().pop_descriptor_chain(mem.clone()) {
            let head = chain.head_index();
            let descs: Vec<_> = chain.collect();
            let at = st.get_queue().next_used();
            let len = if self.blk { self.blk_request(&mem, &descs) } else { net_buffer(&mem, &descs, q, at) };
            st.get_queue_mut().add_used(&*mem, head, len).map_err(|e| io::Error::other(format!("add_used: {e}")))?;
            any = true;
        }
        drop(st);
        if any {
            let _ = vring.signal_used_queue();
        }
        Ok(())
    }

    fn blk_request(&self, mem: &GuestMemoryMmap<LogGate>, d: &[virtio_queue::desc::split::Descriptor]) -> u32 {
        let (Some(first), Some(last)) = (d.first(), d.last()) else {
            return 0;
        };
        if d.len() < 2 || first.len() < 16 {
            return 0;
        }
        let mut hdr = [0u8; 16];
        if mem.read_slice(&mut hdr, first.addr()).is_err() {
            return 0;
        }
        let ty = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector = u64::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15]]);
        let data = &d[1..d.len() - 1];
        let mut off = sector * 512;
        let mut written = 0u32;
        let mut status = 0u8;
        let file = self.file.as_deref();
        for desc in data {
            let mut buf = vec![0u8; desc.len() as usize];
            let ok = match (ty, file) {
                (VIRTIO_BLK_T_IN, Some(f)) => {
                    let r = f.read_at(&mut buf, off).is_ok() && mem.write_slice(&buf, desc.addr()).is_ok();
                    written += desc.len();
                    r
                }
                (VIRTIO_BLK_T_OUT, Some(f)) => mem.read_slice(&mut buf, desc.addr()).is_ok() && f.write_at(&buf, off).is_ok(),
                (VIRTIO_BLK_T_GET_ID, _) => {
                    let id = b"switchover-own-blk";
                    let n = id.len().min(buf.len());
                    buf[..n].copy_from_slice(&id[..n]);
                    written += desc.len();
                    mem.write_slice(&buf, desc.addr()).is_ok()
                }
                (VIRTIO_BLK_T_FLUSH, Some(f)) => f.sync_data().is_ok(),
                _ => {
                    status = 2;
                    true
                }
            };
            if !ok && status == 0 {
                status = 1;
            }
            off += u64::from(desc.len());
        }
        if ty == VIRTIO_BLK_T_FLUSH && data.is_empty() {
            if let Some(f) = file {
                if f.sync_data().is_err() {
                    status = 1;
                }
            }
        }
        let _ = mem.write_slice(&[status], last.addr());
        written + 1
    }
}

/// Processes one net buffer of ring `q`, completed at used-ring position `at`.
fn net_buffer(mem: &GuestMemoryMmap<LogGate>, d: &[virtio_queue::desc::split::Descriptor], q: usize, at: u16) -> u32 {
    if q % 2 == 1 {
        // tx: transmit the packet (on the wire: ring, then the packet's id).
        if let (Some(w), Some(desc)) = (WIRE.get(), d.first()) {
            let mut id = [0u8; 8];
            if desc.len() >= 20 && mem.read_slice(&mut id, vm_memory::GuestAddress(desc.addr().0 + 12)).is_ok() {
                let mut rec = (q as u32).to_le_bytes().to_vec();
                rec.extend_from_slice(&id);
                let _ = w.lock().write_all(&rec);
            }
        }
        return 0;
    }
    // rx: one packet, header (12 bytes, num_buffers = 1) then 60 bytes of payload,
    // its first four the used-ring position it completes at.
    let Some(desc) = d.iter().find(|x| x.is_write_only()) else {
        return 0;
    };
    let mut pkt = [0u8; 72];
    pkt[10] = 1;
    for (i, b) in pkt[12..].iter_mut().enumerate() {
        *b = (i as u8) ^ (q as u8);
    }
    pkt[12..16].copy_from_slice(&u32::from(at).to_le_bytes());
    let n = pkt.len().min(desc.len() as usize);
    if mem.write_slice(&pkt[..n], desc.addr()).is_err() {
        return 0;
    }
    n as u32
}

impl VhostUserBackend for OwnBackend {
    type Bitmap = LogGate;
    type Vring = OwnVring;

    fn num_queues(&self) -> usize {
        self.queues
    }
    fn max_queue_size(&self) -> usize {
        usize::from(QSIZE)
    }
    fn features(&self) -> u64 {
        (1u64 << VIRTIO_F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() | LOG_ALL
    }
    fn acked_features(&self, features: u64) {
        // Logging on with VHOST_F_LOG_ALL, off without it (a failed migration).
        LOGGING.store(features & LOG_ALL != 0, Ordering::Release);
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // REPLY_ACK is added by the vhost crate's request handler.
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::LOG_SHMFD
    }
    fn set_event_idx(&self, _enabled: bool) {}
    fn update_memory(&self, _mem: Gm) -> io::Result<()> {
        Ok(())
    }
    fn queues_per_thread(&self) -> Vec<u64> {
        vec![if self.queues >= 64 { u64::MAX } else { (1u64 << self.queues) - 1 }]
    }
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Without an exit event the worker never ends and dropping the daemon hangs.
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }
    fn handle_event(&self, device_event: u16, evset: EventSet, vrings: &[OwnVring], _thread_id: usize) -> io::Result<()> {
        if evset != EventSet::IN {
            return Ok(());
        }
        let q = usize::from(device_event);
        match vrings.get(q) {
            Some(v) => self.process(v, q),
            None => Ok(()),
        }
    }
}

/// The child-process entry: serve one frontend connection on `sock`, then exit.
/// `file` is a blk device's image, or a net device's wire (optional).
///
/// # Errors
/// Start-up failures (the socket, the file, the daemon).
///
/// # Examples
///
/// ```
/// use switchover_testbed::backend::serve;
/// let e = serve("scsi", "/nonexistent/x.sock", 1, None).unwrap_err().to_string();
/// assert!(e.starts_with("unknown backend kind 'scsi'"), "{e}");
/// ```
pub fn serve(kind: &str, sock: &str, queues: usize, file: Option<&Path>) -> Result<(), RigError> {
    // Die with the parent, whatever happens to it.
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    serve_inner(kind, sock, queues, file)
}

fn serve_inner(kind: &str, sock: &str, queues: usize, file: Option<&Path>) -> Result<(), RigError> {
    let blk = match kind {
        "net" => false,
        "blk" => true,
        // The backend with an inflight region (its options in SWITCHOVER_BLK_ARGS).
        "blk-inflight" => return crate::blk::serve_from_env(sock, queues, file),
        other => return Err(RigError::Config(format!("unknown backend kind '{other}' (net, blk)"))),
    };
    NET.store(!blk, Ordering::Release);
    let file = match (file, blk) {
        (Some(p), true) => Some(Arc::new(File::options().read(true).write(true).open(p).map_err(RigError::io(p.display().to_string()))?)),
        (Some(p), false) => {
            let w = File::options().append(true).create(true).open(p).map_err(RigError::io(p.display().to_string()))?;
            let _ = WIRE.set(parking_lot::Mutex::new(w));
            None
        }
        (None, true) => return Err(RigError::Config("a blk backend needs a file".into())),
        (None, false) => None,
    };
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<LogGate>::new());
    let be = OwnBackend { blk, queues, file, mem: mem.clone() };
    let mut daemon = VhostUserDaemon::new(format!("switchover-{kind}"), be, mem)
        .map_err(|source| RigError::Daemon { what: "daemon".into(), source: source.into() })?;
    daemon.start_client(sock).map_err(|source| RigError::Daemon { what: format!("connect {sock}"), source: source.into() })?;
    match daemon.wait() {
        Ok(()) => Ok(()),
        Err(vhost_user_backend::Error::HandleRequest(vhost::vhost_user::Error::Disconnected)) => Ok(()),
        Err(vhost_user_backend::Error::HandleRequest(vhost::vhost_user::Error::PartialMessage)) => Ok(()),
        Err(source) => Err(RigError::Daemon { what: format!("serving {sock}"), source: source.into() }),
    }
}

/// A child process killed and waited for on drop.
///
/// # Examples
///
/// ```
/// use std::process::Command;
/// use switchover_testbed::backend::ChildProc;
/// let p = ChildProc::new("sleeper".into(), Command::new("sleep").arg("30").spawn().unwrap());
/// let pid = p.pid().unwrap();
/// drop(p); // ended and reaped
/// assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
/// ```
#[derive(Debug)]
pub struct ChildProc {
    /// What it is (for messages).
    pub what: String,
    child: Option<Child>,
}

impl ChildProc {
    /// Wraps a started child.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    /// use switchover_testbed::backend::ChildProc;
    /// let p = ChildProc::new("net0 backend".into(), Command::new("sleep").arg("30").spawn().unwrap());
    /// assert_eq!(p.what, "net0 backend");
    /// ```
    pub fn new(what: String, child: Child) -> ChildProc {
        ChildProc { what, child: Some(child) }
    }

    /// Its pid.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    /// use switchover_testbed::backend::ChildProc;
    /// let child = Command::new("sleep").arg("30").spawn().unwrap();
    /// let id = child.id();
    /// let mut p = ChildProc::new("sleeper".into(), child);
    /// assert_eq!(p.pid(), Some(id));
    /// p.kill();
    /// assert_eq!(p.pid(), None);
    /// ```
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it has exited (reaps it if so).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    /// use std::time::Duration;
    /// use switchover_testbed::backend::ChildProc;
    /// let mut p = ChildProc::new("true".into(), Command::new("true").spawn().unwrap());
    /// let status = loop {
    ///     if let Some(s) = p.exited() {
    ///         break s;
    ///     }
    ///     std::thread::sleep(Duration::from_millis(1));
    /// };
    /// assert!(status.success());
    /// ```
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Asks it to end (SIGTERM, and SIGCONT in case it is stopped) without waiting.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::unix::process::ExitStatusExt;
    /// use std::process::Command;
    /// use std::time::Duration;
    /// use switchover_testbed::backend::ChildProc;
    /// let mut p = ChildProc::new("sleeper".into(), Command::new("sleep").arg("30").spawn().unwrap());
    /// p.term();
    /// let status = loop {
    ///     if let Some(s) = p.exited() {
    ///         break s;
    ///     }
    ///     std::thread::sleep(Duration::from_millis(1));
    /// };
    /// assert_eq!(status.signal(), Some(libc::SIGTERM));
    /// ```
    pub fn term(&self) {
        if let Some(c) = &self.child {
            // SAFETY: signalling our own, not yet reaped, child by pid.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
                libc::kill(c.id() as i32, libc::SIGCONT);
            }
        }
    }

    /// Kills it (SIGKILL, which also ends a stopped process) and reaps it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    /// use switchover_testbed::backend::ChildProc;
    /// let mut p = ChildProc::new("sleeper".into(), Command::new("sleep").arg("30").spawn().unwrap());
    /// let pid = p.pid().unwrap();
    /// p.kill(); // SIGKILL, then reaped
    /// assert_eq!(p.pid(), None);
    /// assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    /// ```
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Asks it to end (SIGTERM), waits up to `grace`, then kills it; always reaps it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    /// use std::time::{Duration, Instant};
    /// use switchover_testbed::backend::ChildProc;
    /// let mut p = ChildProc::new("sleeper".into(), Command::new("sleep").arg("30").spawn().unwrap());
    /// let t = Instant::now();
    /// p.stop(Duration::from_secs(5)); // sleep ends on SIGTERM: no need to wait out the grace
    /// assert!(t.elapsed() < Duration::from_secs(5));
    /// assert_eq!(p.pid(), None);
    /// ```
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
            libc::kill(c.id() as i32, libc::SIGCONT);
        }
        let t = Instant::now();
        while t.elapsed() < grace {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        self.stop(Duration::from_millis(500));
    }
}

/// Starts an own backend as a child of `exe` and accepts its connection on a
/// socket in `dir` (removed once connected).
///
/// # Errors
/// A message naming the device.
///
/// # Examples
///
/// ```no_run
/// use switchover_testbed::backend::spawn_own;
/// use switchover_testbed::dir::PrivateDir;
/// use switchover_vhost::frontend::{Frontend, FrontendConfig};
/// let dir = PrivateDir::new().unwrap();
/// // The `switchover` binary: the child runs `switchover real __backend blk SOCK 2 IMAGE`.
/// let exe = std::path::Path::new("target/release/switchover");
/// let image = dir.join("blk0.img");
/// std::fs::File::create(&image).unwrap().set_len(1 << 20).unwrap();
/// let (stream, backend) = spawn_own(exe, dir.path(), "blk0", true, 2, Some(&image), None).unwrap();
/// assert!(backend.pid().is_some());
/// assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1); // socket removed, image left
/// let fe = Frontend::connect(stream, &FrontendConfig::new("blk0", 2)).unwrap();
/// assert_eq!(fe.queues(), 2);
/// ```
pub fn spawn_own(
    exe: &Path,
    dir: &Path,
    name: &str,
    blk: bool,
    queues: u32,
    file: Option<&Path>,
    hostile: Option<&str>,
) -> Result<(UnixStream, ChildProc), RigError> {
    let sock: PathBuf = dir.join(format!("{name}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let listener = super::dir::bind_private(&sock).map_err(RigError::io(format!("{name}: bind {}", sock.display())))?;
    listener.set_nonblocking(true).map_err(RigError::io(format!("{name}: non-blocking listener")))?;
    let mut cmd = Command::new(exe);
    cmd.args(["real", "__backend"]);
    if let Some(h) = hostile {
        cmd.args(["hostile", h]);
    }
    cmd.arg(if blk { "blk" } else { "net" }).arg(&sock).arg(queues.to_string());
    if let Some(f) = file {
        cmd.arg(f);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    let child = cmd.spawn().map_err(RigError::io(format!("{name}: starting backend {}", exe.display())))?;
    let mut proc_ = ChildProc::new(format!("{name} backend"), child);
    let t = Instant::now();
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => match super::dir::check_peer_uid(&s) {
                Ok(()) => break s,
                // Another user's process: refused (closed), keep waiting for ours.
                Err(e) => tracing::warn!(device = name, error = %e, "connection refused"),
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Some(st) = proc_.exited() {
                    let _ = std::fs::remove_file(&sock);
                    return Err(RigError::Process { process: format!("{name} backend"), what: format!("exited before connecting ({st})") });
                }
                if t.elapsed() > Duration::from_secs(10) {
                    let _ = std::fs::remove_file(&sock);
                    return Err(RigError::Process { process: format!("{name} backend"), what: "did not connect within 10 s".into() });
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&sock);
                return Err(RigError::Io { what: format!("{name}: accept"), source: e });
            }
        }
    };
    let _ = std::fs::remove_file(&sock);
    stream.set_nonblocking(false).map_err(RigError::io(format!("{name}: blocking socket")))?;
    Ok((stream, proc_))
}

/// Misbehaviours of the hostile test backend (`switchover real __backend hostile
/// MODE@REQUEST KIND SOCK QUEUES [FILE]`): a real own backend behind a proxy in
/// the same process that, at the first reply to REQUEST (`get_vring_base` or
/// `set_vring_base`), does MODE:
///
/// * `wrong_type`: the reply names another request (`SET_VRING_ENABLE`);
/// * `wrong_size`: the reply's body is 4 bytes longer;
/// * `base_beyond_ring`: the base is moved a ring size plus one ahead;
/// * `base_past_avail`: the base is moved one ahead (past what the guest published);
/// * `base_other_ring`: the reply names another ring;
/// * `base_over_u16`: the base does not fit the 16-bit index (`+ 0x10000`);
/// * `duplicate`: the reply is sent twice;
/// * `swap`: the reply is held and sent after the next one (out of order);
/// * `fds`: the reply carries an unexpected file descriptor (`SCM_RIGHTS`);
/// * `partial`: half of the reply's header, then silence;
/// * `drip`: the reply one byte every 150 ms;
/// * `close`: the connection is closed when the request arrives (the process
///   exits); with REQUEST `connect`, right after connecting, before the handshake;
/// * `flood`: the reply, then unsolicited replies as fast as the socket takes them.
///
/// Only for tests: it exists to check that the frontend survives such a backend.
///
/// # Examples
///
/// ```
/// use switchover_testbed::backend::HOSTILE_MODES;
/// assert_eq!(HOSTILE_MODES.len(), 13);
/// assert!(HOSTILE_MODES.contains(&"base_past_avail"));
/// ```
pub const HOSTILE_MODES: &[&str] = &[
    "wrong_type",
    "wrong_size",
    "base_beyond_ring",
    "base_past_avail",
    "base_other_ring",
    "base_over_u16",
    "duplicate",
    "swap",
    "fds",
    "partial",
    "drip",
    "close",
    "flood",
];

fn read_frame(s: &UnixStream, fds_out: &mut Vec<File>) -> io::Result<Vec<u8>> {
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let mut h = [0u8; 12];
    let mut got = 0;
    while got < 12 {
        let mut fds = [-1; 8];
        let mut iov = [libc::iovec { iov_base: h[got..].as_mut_ptr().cast(), iov_len: 12 - got }];
        // SAFETY: the iovec points into `h`, alive across the call.
        let (n, nfds) = unsafe { s.recv_with_fds(&mut iov, &mut fds) }.map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        for fd in &fds[..nfds] {
            // SAFETY: a descriptor just received, owned by nobody else.
            fds_out.push(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(*fd) });
        }
        got += n;
    }
    let size = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
    let mut body = vec![0u8; size.min(1 << 16)];
    std::io::Read::read_exact(&mut &*s, &mut body)?;
    let mut m = h.to_vec();
    m.extend_from_slice(&body);
    Ok(m)
}

fn send_frame(s: &UnixStream, m: &[u8], fds: &[File]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let n = s.send_with_fds(&[m], &raw).map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    if n < m.len() {
        std::io::Write::write_all(&mut &*s, &m[n..])?;
    }
    Ok(())
}

/// The hostile backend's entry (see [`HOSTILE_MODES`]).
///
/// # Errors
/// Start-up failures, or an unknown mode.
///
/// # Examples
///
/// ```
/// use switchover_testbed::backend::serve_hostile;
/// let e = serve_hostile("explode@get_vring_base", "net", "/nonexistent/x.sock", 1, None).unwrap_err().to_string();
/// assert!(e.starts_with("unknown hostile mode 'explode'"), "{e}");
/// let e = serve_hostile("swap", "net", "/nonexistent/x.sock", 1, None).unwrap_err().to_string();
/// assert!(e.contains("is not MODE@REQUEST"), "{e}");
/// ```
pub fn serve_hostile(spec: &str, kind: &str, sock: &str, queues: usize, file: Option<&Path>) -> Result<(), RigError> {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let (mode, req) = spec.split_once('@').ok_or_else(|| RigError::Config(format!("hostile spec '{spec}' is not MODE@REQUEST")))?;
    if !HOSTILE_MODES.contains(&mode) {
        return Err(RigError::Config(format!("unknown hostile mode '{mode}' ({})", HOSTILE_MODES.join(", "))));
    }
    let target: u32 = match req {
        "connect" if mode == "close" => 0,
        "get_vring_base" => 11,
        "set_vring_base" => 10,
        other => return Err(RigError::Config(format!("unknown request '{other}' (get_vring_base, set_vring_base)"))),
    };
    let mode = mode.to_string();
    // The real backend serves an inner socket; this process relays the frontend.
    let front = UnixStream::connect(sock).map_err(RigError::io(format!("connect {sock}")))?;
    if target == 0 {
        std::process::exit(0);
    }
    let inner_path = format!("{sock}.inner");
    let _ = std::fs::remove_file(&inner_path);
    let inner = UnixListener::bind(&inner_path).map_err(RigError::io(format!("bind {inner_path}")))?;
    let (kind, ip, file) = (kind.to_string(), inner_path.clone(), file.map(Path::to_path_buf));
    std::thread::spawn(move || {
        let _ = serve_inner(&kind, &ip, queues, file.as_deref());
        std::process::exit(0);
    });
    let (back, _) = inner.accept().map_err(RigError::io(format!("accept {inner_path}")))?;
    let _ = std::fs::remove_file(&inner_path);
    let armed = Arc::new(AtomicBool::new(false));
    // Frontend to backend: requests (with their fds), watching for the target.
    {
        let (front, back, armed, mode) = (
            front.try_clone().map_err(RigError::io("clone socket"))?,
            back.try_clone().map_err(RigError::io("clone socket"))?,
            armed.clone(),
            mode.clone(),
        );
        std::thread::spawn(move || loop {
            let mut fds = Vec::new();
            let Ok(m) = read_frame(&front, &mut fds) else { std::process::exit(0) };
            let code = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
            if code == target && !armed.swap(true, Ordering::AcqRel) && mode == "close" {
                std::process::exit(0);
            }
            if send_frame(&back, &m, &fds).is_err() {
                std::process::exit(0);
            }
        });
    }
    // Backend to frontend: replies, one of them mangled.
    let mut fired = false;
    loop {
        let mut fds = Vec::new();
        let Ok(mut m) = read_frame(&back, &mut fds) else { std::process::exit(0) };
        let code = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
        if fired || code != target || !armed.load(Ordering::Acquire) {
            if send_frame(&front, &m, &fds).is_err() {
                std::process::exit(0);
            }
            continue;
        }
        fired = true;
        let num = |m: &mut Vec<u8>, f: &dyn Fn(u32) -> u32| {
            let v = u32::from_le_bytes([m[16], m[17], m[18], m[19]]);
            m[16..20].copy_from_slice(&f(v).to_le_bytes());
        };
        match mode.as_str() {
            "wrong_type" => m[0..4].copy_from_slice(&18u32.to_le_bytes()),
            "wrong_size" => {
                let size = u32::from_le_bytes([m[8], m[9], m[10], m[11]]) + 4;
                m[8..12].copy_from_slice(&size.to_le_bytes());
                m.extend_from_slice(&[0; 4]);
            }
            "base_beyond_ring" => num(&mut m, &|v| (v + u32::from(QSIZE) + 1) & 0xffff),
            "base_past_avail" => num(&mut m, &|v| (v + 1) & 0xffff),
            "base_over_u16" => num(&mut m, &|v| v + 0x10000),
            "base_other_ring" => {
                let i = u32::from_le_bytes([m[12], m[13], m[14], m[15]]) + 1;
                m[12..16].copy_from_slice(&i.to_le_bytes());
            }
            "duplicate" => {
                let _ = send_frame(&front, &m, &[]);
            }
            "swap" => {
                // The next reply first (or, if none comes within 150 ms, an ack
                // as if to a later request), then the one held back.
                let _ = back.set_read_timeout(Some(Duration::from_millis(150)));
                let mut fds2 = Vec::new();
                let next = read_frame(&back, &mut fds2).unwrap_or_else(|_| {
                    let mut ack = m[..12].to_vec();
                    ack[0..4].copy_from_slice(&18u32.to_le_bytes());
                    ack[8..12].copy_from_slice(&8u32.to_le_bytes());
                    ack.extend_from_slice(&[0; 8]);
                    ack
                });
                let _ = back.set_read_timeout(None);
                let _ = send_frame(&front, &next, &[]);
                let _ = send_frame(&front, &m, &[]);
                continue;
            }
            "fds" => {
                let f = File::open("/dev/null").map_err(RigError::io("/dev/null"))?;
                let _ = send_frame(&front, &m, &[f]);
                continue;
            }
            "partial" => {
                let _ = (&front).write_all(&m[..6]);
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            "drip" => {
                for b in &m {
                    if (&front).write_all(&[*b]).is_err() {
                        std::process::exit(0);
                    }
                    std::thread::sleep(Duration::from_millis(150));
                }
                continue;
            }
            "flood" => {
                let _ = send_frame(&front, &m, &[]);
                let mut junk = m.clone();
                for i in 0u32.. {
                    junk[16..20].copy_from_slice(&i.to_le_bytes());
                    if send_frame(&front, &junk, &[]).is_err() {
                        std::process::exit(0);
                    }
                }
                continue;
            }
            _ => {}
        }
        if send_frame(&front, &m, &fds).is_err() {
            std::process::exit(0);
        }
    }
}
