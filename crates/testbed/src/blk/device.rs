//! The device: its rings, the worker pool that does their host I/O (with the
//! throttle), and what starting and stopping a ring does.
//!
//! * **Taking requests.** A ring started (kicked) and enabled takes every request
//!   the guest published, records each in the inflight region (`counter`, then
//!   `inflight = 1`) and queues it for a worker. A disabled ring takes none: the
//!   requests stay in the available ring.
//! * **Host I/O.** A worker takes the oldest queued request, waits for its slot of
//!   the throttle (one request every `1/iops` seconds for the whole device),
//!   then does its I/O on the image outside every lock. Workers complete in any
//!   order. Completion (under the ring's lock): data and status into guest
//!   memory, the region's put protocol around the used ring's update, the call.
//! * **The stop (`GET_VRING_BASE`)** never waits for the throttle when the
//!   frontend negotiated `GET_VRING_BASE_INFLIGHT` and gave a region: the ring
//!   takes no more requests; its requests not yet started (queued, or waiting for
//!   their slot) are cancelled — they never reach the image; those whose host I/O
//!   is executing are waited for (one system call each) and their completion is
//!   discarded. The reply comes then: every request the ring took and did not
//!   complete is recorded in flight, none has an effect to come, and each is
//!   either untouched on the image or written there in full with the guest's data
//!   — so the destination redoing it writes the same bytes, and a request the
//!   guest saw completed is never redone. Without that feature (or without a
//!   region) the stop waits for every request in flight to complete, as the
//!   spec requires.
//! * **The start (`SET_VRING_KICK`)** reads the used index from guest memory and,
//!   with a region, applies the spec's last-batch correction and checks that the
//!   base agrees with it (`base == used + in flight`); once the ring is also
//!   enabled, the recorded requests are resubmitted in counter order, before any
//!   new one.
//! * **Dirty log.** With `VHOST_F_LOG_ALL` acked and a log set, every write to
//!   guest memory is logged: data and status at their address, the used ring at
//!   the ring's log address if its `SET_VRING_ADDR` had the log flag.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use switchover_vhost::inflight::{InflightEntry, InflightRegion};
use vmm_sys_util::eventfd::EventFd;

use super::guest::{DirtyLog, GuestMap, LogTarget};
use super::request::{execute, parse, Kind, Outcome, Request, S_IOERR};
use super::storage::Storage;
use super::BlkOptions;

/// What the device counted since it started (the control socket's `stats`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests taken off available rings.
    pub popped: AtomicU64,
    /// Requests resubmitted from the inflight region.
    pub resubmitted: AtomicU64,
    /// Requests completed (published in a used ring).
    pub completed: AtomicU64,
    /// Requests cancelled by a stop before their host I/O started.
    pub cancelled: AtomicU64,
    /// Requests whose host I/O ran across a stop, completion discarded.
    pub discarded: AtomicU64,
    /// Host writes done (each `OUT` request's one write).
    pub writes: AtomicU64,
    /// Host reads done.
    pub reads: AtomicU64,
    /// Writes refused because the image was inactive.
    pub refused: AtomicU64,
    /// Host I/O started after a stop of its ring had answered (only without
    /// settling, the negative control).
    pub late_io: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// See [`Counters::popped`].
    pub popped: u64,
    /// See [`Counters::resubmitted`].
    pub resubmitted: u64,
    /// See [`Counters::completed`].
    pub completed: u64,
    /// See [`Counters::cancelled`].
    pub cancelled: u64,
    /// See [`Counters::discarded`].
    pub discarded: u64,
    /// See [`Counters::writes`].
    pub writes: u64,
    /// See [`Counters::reads`].
    pub reads: u64,
    /// See [`Counters::refused`].
    pub refused: u64,
    /// See [`Counters::late_io`].
    pub late_io: u64,
}

impl Counters {
    /// A snapshot.
    pub fn snapshot(&self) -> Stats {
        let l = |a: &AtomicU64| a.load(Ordering::Acquire);
        Stats {
            popped: l(&self.popped),
            resubmitted: l(&self.resubmitted),
            completed: l(&self.completed),
            cancelled: l(&self.cancelled),
            discarded: l(&self.discarded),
            writes: l(&self.writes),
            reads: l(&self.reads),
            refused: l(&self.refused),
            late_io: l(&self.late_io),
        }
    }
}

fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::AcqRel);
}

#[derive(Debug, Default)]
struct RingState {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    log_addr: Option<u64>,
    next_avail: u16,
    used_idx: u16,
    enabled: bool,
    started: bool,
    resubmit: Vec<InflightEntry>,
    epoch: u64,
    counter: u64,
    inflight: usize,
    executing: usize,
    call: Option<File>,
    kick: Option<KickThread>,
    /// When the last stop answered (host I/O after it is late).
    stopped: bool,
}

#[derive(Debug)]
struct KickThread {
    stop: EventFd,
    handle: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Ring {
    st: Mutex<RingState>,
    cv: Condvar,
}

struct Job {
    ring: u16,
    epoch: u64,
    req: Request,
}

struct Sched {
    queue: VecDeque<Job>,
    next_slot: Instant,
    quit: bool,
    seed: u64,
}

/// The device.
pub struct Device {
    opts: BlkOptions,
    mem: RwLock<Option<Arc<GuestMap>>>,
    log: RwLock<Option<Arc<DirtyLog>>>,
    log_all: AtomicBool,
    hand_over: AtomicBool,
    /// Host I/O held (the control socket's `hold`): a stalled disk, so that a
    /// test's requests are in flight at the stop whatever the machine's load.
    held: AtomicBool,
    region: RwLock<Option<Arc<InflightRegion>>>,
    rings: Vec<Ring>,
    sched: Mutex<Sched>,
    sched_cv: Condvar,
    storage: Storage,
    counters: Counters,
    ring_log: Option<crate::ringlog::RingLog>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("queues", &self.rings.len()).field("opts", &self.opts).finish()
    }
}

/// Why a ring could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Something the start needs is missing.
    #[error("ring {ring}: {what}")]
    Missing {
        /// The ring.
        ring: u16,
        /// What.
        what: String,
    },
    /// The base and the inflight region disagree, or the region is impossible.
    #[error("ring {ring}: {what}")]
    Inconsistent {
        /// The ring.
        ring: u16,
        /// What.
        what: String,
    },
}

impl Device {
    /// A device of `opts.queues` rings on `storage`, with its workers started.
    ///
    /// # Errors
    /// A worker thread could not be started.
    pub fn start(opts: BlkOptions, storage: Storage) -> std::io::Result<Arc<Device>> {
        let queues = usize::from(opts.queues);
        let seed = opts.seed;
        let ring_log = opts.ring_log.as_deref().map(crate::ringlog::RingLog::create).transpose()?;
        let d = Arc::new(Device {
            opts,
            mem: RwLock::new(None),
            log: RwLock::new(None),
            log_all: AtomicBool::new(false),
            hand_over: AtomicBool::new(false),
            held: AtomicBool::new(false),
            region: RwLock::new(None),
            rings: (0..queues).map(|_| Ring::default()).collect(),
            sched: Mutex::new(Sched { queue: VecDeque::new(), next_slot: Instant::now(), quit: false, seed: seed | 1 }),
            sched_cv: Condvar::new(),
            storage,
            counters: Counters::default(),
            ring_log,
        });
        for i in 0..d.opts.workers.max(1) {
            let dd = d.clone();
            std::thread::Builder::new().name(format!("blk-worker-{i}")).spawn(move || dd.worker())?;
        }
        Ok(d)
    }

    /// The options.
    pub fn opts(&self) -> &BlkOptions {
        &self.opts
    }
    /// The image.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    /// Rings.
    pub fn queues(&self) -> u16 {
        self.rings.len() as u16
    }

    fn ring(&self, r: u16) -> Option<&Ring> {
        self.rings.get(usize::from(r))
    }

    fn mem(&self) -> Option<Arc<GuestMap>> {
        self.mem.read().clone()
    }

    fn active_log(&self) -> Option<Arc<DirtyLog>> {
        if self.log_all.load(Ordering::Acquire) {
            self.log.read().clone()
        } else {
            None
        }
    }

    /// `SET_FEATURES`: logging on with `VHOST_F_LOG_ALL`.
    pub fn set_log_all(&self, on: bool) {
        self.log_all.store(on, Ordering::Release);
    }
    /// `SET_PROTOCOL_FEATURES`: whether a stop may leave requests in the region.
    pub fn set_hand_over(&self, on: bool) {
        self.hand_over.store(on, Ordering::Release);
    }
    /// `SET_MEM_TABLE`.
    pub fn set_mem(&self, m: GuestMap) {
        *self.mem.write() = Some(Arc::new(m));
    }
    /// `SET_LOG_BASE`.
    pub fn set_log(&self, log: DirtyLog) {
        *self.log.write() = Some(Arc::new(log));
    }
    /// `GET_INFLIGHT_FD` / `SET_INFLIGHT_FD`: the region the rings record into.
    pub fn set_region(&self, r: Arc<InflightRegion>) {
        *self.region.write() = Some(r);
    }
    /// The current region.
    pub fn region(&self) -> Option<Arc<InflightRegion>> {
        self.region.read().clone()
    }

    /// `SET_VRING_NUM`.
    pub fn set_num(&self, r: u16, num: u16) -> bool {
        self.ring(r).map(|x| x.st.lock().size = num).is_some() && num > 0
    }

    /// `SET_VRING_ADDR`, guest addresses already translated.
    pub fn set_addr(&self, r: u16, desc: u64, avail: u64, used: u64, log_addr: Option<u64>) -> bool {
        let Some(x) = self.ring(r) else { return false };
        let mut st = x.st.lock();
        (st.desc, st.avail, st.used, st.log_addr) = (desc, avail, used, log_addr);
        true
    }

    /// Translates a frontend user address to a guest address.
    pub fn gpa_of(&self, uaddr: u64) -> Option<u64> {
        self.mem()?.gpa_of(uaddr)
    }

    /// `SET_VRING_BASE`.
    pub fn set_base(&self, r: u16, base: u16) -> bool {
        self.ring(r).map(|x| x.st.lock().next_avail = base).is_some()
    }

    /// `SET_VRING_CALL`.
    pub fn set_call(&self, r: u16, call: Option<File>) -> bool {
        self.ring(r).map(|x| x.st.lock().call = call).is_some()
    }

    /// `SET_VRING_ENABLE`.
    pub fn set_enabled(self: &Arc<Self>, r: u16, on: bool) -> bool {
        let Some(x) = self.ring(r) else { return false };
        let mut st = x.st.lock();
        st.enabled = on;
        if on {
            self.pump(r, &mut st);
        }
        true
    }

    /// `SET_VRING_KICK`: starts the ring (see the module's documentation).
    ///
    /// # Errors
    /// [`StartError`]: no memory table or ring address, or the base disagrees with
    /// the region.
    pub fn start_ring(self: &Arc<Self>, r: u16, kick: File) -> Result<(), StartError> {
        let x = self.ring(r).ok_or_else(|| StartError::Missing { ring: r, what: "no such ring".into() })?;
        self.stop_kick_thread(r);
        let mut st = x.st.lock();
        let mem = self.mem().ok_or_else(|| StartError::Missing { ring: r, what: "no memory table".into() })?;
        if st.size == 0 || st.used == 0 {
            return Err(StartError::Missing { ring: r, what: "no ring size or address".into() });
        }
        let used =
            mem.load_u16(st.used + 2).ok_or_else(|| StartError::Missing { ring: r, what: "used ring outside guest memory".into() })?;
        let region = self.region();
        let mut entries = Vec::new();
        if let Some(q) = region.as_ref().and_then(|g| g.queue(r)) {
            if q.queue_size() != st.size {
                return Err(StartError::Inconsistent {
                    ring: r,
                    what: format!("region for {} descriptors, ring of {}", q.queue_size(), st.size),
                });
            }
            if q.version() == 0 {
                q.init(used);
            } else {
                entries = q.fixup(used).map_err(|e| StartError::Inconsistent { ring: r, what: e.to_string() })?;
                let expect = used.wrapping_add(entries.len() as u16);
                if st.next_avail != expect {
                    return Err(StartError::Inconsistent {
                        ring: r,
                        what: format!(
                            "base {} but the inflight region has {} in flight past the used index {used}",
                            st.next_avail,
                            entries.len()
                        ),
                    });
                }
            }
        }
        st.used_idx = used;
        st.counter = entries.iter().map(|e| e.counter).max().unwrap_or(st.counter).max(st.counter);
        st.resubmit = entries;
        st.started = true;
        st.stopped = false;
        st.inflight = 0;
        drop(st);
        // The kick thread: waits on the kick eventfd (and its own stop eventfd).
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| StartError::Missing { ring: r, what: format!("eventfd: {e}") })?;
        let stop2 = stop.try_clone().map_err(|e| StartError::Missing { ring: r, what: format!("eventfd: {e}") })?;
        let dev = self.clone();
        let handle = std::thread::Builder::new()
            .name(format!("blk-kick-{r}"))
            .spawn(move || dev.kick_loop(r, kick, stop2))
            .map_err(|e| StartError::Missing { ring: r, what: format!("thread: {e}") })?;
        let mut st = x.st.lock();
        st.kick = Some(KickThread { stop, handle });
        if let Some(l) = &self.ring_log {
            l.start(u32::from(r));
        }
        self.pump(r, &mut st);
        Ok(())
    }

    fn kick_loop(self: Arc<Self>, r: u16, kick: File, stop: EventFd) {
        use std::os::fd::AsRawFd;
        loop {
            let mut fds = [
                libc::pollfd { fd: kick.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: polling two descriptors we own, with a valid array.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            if fds[1].revents != 0 {
                return;
            }
            if fds[0].revents & libc::POLLIN != 0 {
                let mut b = [0u8; 8];
                // SAFETY: reading 8 bytes from an eventfd into a local buffer.
                unsafe { libc::read(kick.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
                if let Some(x) = self.ring(r) {
                    let mut st = x.st.lock();
                    self.pump(r, &mut st);
                }
            } else if fds[0].revents != 0 {
                return;
            }
        }
    }

    /// Tells the ring's kick thread to end (not waited for: a pump it still
    /// makes finds the ring stopped, or restarted, under the ring's lock).
    fn stop_kick_thread(&self, r: u16) {
        let Some(x) = self.ring(r) else { return };
        let k = x.st.lock().kick.take();
        if let Some(k) = k {
            let _ = k.stop.write(1);
            drop(k.handle);
        }
    }

    /// Takes what the ring has to take (ring lock held): the recorded requests to
    /// resubmit first, then every request the guest published.
    fn pump(&self, r: u16, st: &mut RingState) {
        if !(st.started && st.enabled) {
            return;
        }
        let Some(mem) = self.mem() else { return };
        let region = self.region();
        let q = region.as_ref().and_then(|g| g.queue(r));
        for e in std::mem::take(&mut st.resubmit) {
            inc(&self.counters.resubmitted);
            self.submit(r, st, &mem, e.head);
        }
        loop {
            let Some(avail_idx) = mem.load_u16(st.avail + 2) else { return };
            if avail_idx == st.next_avail || st.next_avail.wrapping_sub(st.used_idx) >= st.size {
                return;
            }
            let Some(head) = mem.load_u16(st.avail + 4 + 2 * u64::from(st.next_avail % st.size)) else { return };
            st.next_avail = st.next_avail.wrapping_add(1);
            st.counter += 1;
            if let Some(q) = q {
                q.track_get(head, st.counter);
            }
            inc(&self.counters.popped);
            self.submit(r, st, &mem, head);
        }
    }

    fn submit(&self, r: u16, st: &mut RingState, mem: &GuestMap, head: u16) {
        let req = parse(mem, st.desc, st.size, head);
        st.inflight += 1;
        if req.kind == Kind::Bad {
            self.complete(r, st, mem, &req, &Outcome { status: S_IOERR, data: Vec::new() });
            return;
        }
        let mut s = self.sched.lock();
        s.queue.push_back(Job { ring: r, epoch: st.epoch, req });
        self.sched_cv.notify_one();
    }

    /// Publishes a request's completion (ring lock held).
    fn complete(&self, r: u16, st: &mut RingState, mem: &GuestMap, req: &Request, out: &Outcome) {
        let log = self.active_log();
        let log = log.as_deref();
        let mut rest = &out.data[..];
        for &(gpa, len) in &req.data {
            if rest.is_empty() {
                break;
            }
            let n = (len as usize).min(rest.len());
            mem.write(gpa, &rest[..n], LogTarget::Data, log);
            rest = &rest[n..];
        }
        if let Some(s) = req.status {
            mem.write(s, &[out.status], LogTarget::Data, log);
        }
        let region = self.region();
        let q = region.as_ref().and_then(|g| g.queue(r));
        if let Some(q) = q {
            q.put_begin(req.head);
        }
        let used_target = match st.log_addr {
            Some(log_addr) => LogTarget::Used { ring_gpa: st.used, log_addr },
            None => LogTarget::None,
        };
        let mut elem = [0u8; 8];
        elem[0..4].copy_from_slice(&u32::from(req.head).to_le_bytes());
        elem[4..8].copy_from_slice(&out.used_len().to_le_bytes());
        mem.write(st.used + 4 + 8 * u64::from(st.used_idx % st.size), &elem, used_target, log);
        std::sync::atomic::fence(Ordering::SeqCst);
        st.used_idx = st.used_idx.wrapping_add(1);
        mem.store_u16(st.used + 2, st.used_idx, used_target, log);
        if let Some(q) = q {
            q.put_end(req.head, st.used_idx);
        }
        st.inflight = st.inflight.saturating_sub(1);
        inc(&self.counters.completed);
        if let Some(c) = st.call.as_mut() {
            let _ = c.write_all(&1u64.to_ne_bytes());
        }
    }

    fn worker(self: Arc<Self>) {
        'jobs: loop {
            let job = {
                let mut s = self.sched.lock();
                loop {
                    if s.quit {
                        return;
                    }
                    if let Some(j) = s.queue.pop_front() {
                        break j;
                    }
                    self.sched_cv.wait(&mut s);
                }
            };
            let Some(ring) = self.ring(job.ring) else { continue };
            let settle = self.opts.settle;
            if settle && ring.st.lock().epoch != job.epoch {
                inc(&self.counters.cancelled);
                continue;
            }
            // The throttle's slot, then the test's jitter: still cancellable.
            let mut until = Instant::now();
            {
                let mut s = self.sched.lock();
                if let Some(iv) = self.opts.interval() {
                    until = until.max(s.next_slot);
                    s.next_slot = until + iv;
                }
                if self.opts.jitter_us > 0 {
                    s.seed ^= s.seed << 13;
                    s.seed ^= s.seed >> 7;
                    s.seed ^= s.seed << 17;
                    until += Duration::from_micros(s.seed % (self.opts.jitter_us + 1));
                }
            }
            {
                let mut st = ring.st.lock();
                loop {
                    if settle && st.epoch != job.epoch {
                        inc(&self.counters.cancelled);
                        continue 'jobs;
                    }
                    let held = self.held.load(Ordering::Acquire);
                    if !held && Instant::now() >= until {
                        break;
                    }
                    // Held: woken by `hold(false)` (or a stop), else looks again.
                    ring.cv.wait_until(&mut st, if held { Instant::now() + Duration::from_millis(50) } else { until });
                }
                if st.stopped && st.epoch != job.epoch {
                    inc(&self.counters.late_io);
                }
                st.executing += 1;
            }
            let Some(mem) = self.mem() else {
                let mut st = ring.st.lock();
                st.executing -= 1;
                ring.cv.notify_all();
                continue;
            };
            let out = self.storage.io(|file, cap, writable| execute(&job.req, &mem, file, cap, writable));
            match job.req.kind {
                Kind::Out if out.status == 0 => inc(&self.counters.writes),
                Kind::Out if !self.storage.is_active() => inc(&self.counters.refused),
                Kind::In if out.status == 0 => inc(&self.counters.reads),
                _ => {}
            }
            let mut st = ring.st.lock();
            st.executing -= 1;
            if st.epoch == job.epoch {
                self.complete(job.ring, &mut st, &mem, &job.req, &out);
            } else {
                inc(&self.counters.discarded);
            }
            ring.cv.notify_all();
        }
    }

    /// Holds every request's host I/O before it starts (`true`), as a stalled disk
    /// would, or lets it go on (`false`). Requests held stay cancellable; those
    /// already executing finish.
    pub fn hold(&self, on: bool) {
        self.held.store(on, Ordering::Release);
        if !on {
            for r in &self.rings {
                let _g = r.st.lock();
                r.cv.notify_all();
            }
        }
    }

    /// `GET_VRING_BASE`: stops the ring (see the module's documentation) and
    /// returns its base.
    pub fn stop_ring(&self, r: u16) -> u16 {
        self.stop_kick_thread(r);
        let Some(x) = self.ring(r) else { return 0 };
        let mut st = x.st.lock();
        st.started = false;
        st.resubmit.clear();
        let recorded = self.hand_over.load(Ordering::Acquire) && self.region().and_then(|g| g.queue(r).map(|_| ())).is_some();
        if recorded {
            // Requests not started are cancelled; executing ones are waited for
            // and their completion discarded: they stay recorded in flight.
            st.epoch += 1;
            x.cv.notify_all();
            if self.opts.settle {
                while st.executing > 0 {
                    x.cv.wait(&mut st);
                }
            }
        } else {
            while st.inflight > 0 {
                x.cv.wait(&mut st);
            }
            st.epoch += 1;
        }
        st.inflight = 0;
        st.stopped = true;
        st.call = None;
        if let Some(l) = &self.ring_log {
            l.stop(u32::from(r));
        }
        st.next_avail
    }

    /// Stops every ring and the workers (the frontend went away).
    pub fn shutdown(&self) {
        for r in 0..self.queues() {
            self.stop_kick_thread(r);
        }
        let mut s = self.sched.lock();
        s.quit = true;
        s.queue.clear();
        self.sched_cv.notify_all();
    }
}
