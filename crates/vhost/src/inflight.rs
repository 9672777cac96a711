//! The inflight region of vhost-user's `INFLIGHT_SHMFD` protocol feature, split
//! rings: the shared memory in which a backend records every request it took off
//! a ring and has not completed, so that the requests survive the backend (a
//! crash, a restart, or a stop that does not wait for them).
//!
//! Layout (docs/interop/vhost-user.rst, "Inflight I/O tracking"): one region per
//! queue, `stride` bytes apart; each queue region is a 16-byte header followed by
//! one 16-byte entry per descriptor of the ring.
//!
//! | offset | field | |
//! |---|---|---|
//! | 0 | `features: u64` | 0 |
//! | 8 | `version: u16` | 1; 0 = never initialised |
//! | 10 | `desc_num: u16` | the ring's size |
//! | 12 | `last_batch_head: u16` | head of the last batch of completions |
//! | 14 | `used_idx: u16` | the used ring's index after that batch |
//! | 16 + 16·i | `inflight: u8`, 5 bytes padding, `next: u16`, `counter: u64` | descriptor head `i` |
//!
//! A backend sets `counter` (a running count, the order it took requests in) and
//! then `inflight = 1` when it takes a head off the available ring; when it
//! completes one, it links the head into the last batch (`next`,
//! `last_batch_head`), publishes it in the used ring, clears `inflight` and copies
//! the used index into `used_idx`. If it died between publishing and clearing,
//! `used_idx` differs from the used ring's index: the heads of the last batch are
//! no longer in flight ([`QueueRegion::in_flight`] applies that correction).
//!
//! What the frontend derives from a queue region and the used ring's index in
//! guest memory:
//!
//! * the requests in flight, in the order the backend took them (to hand them
//!   over, or to count them for a drain);
//! * the ring's base: every request the backend took is either completed (counted
//!   by the used index) or in flight, so the next available index it would read
//!   is `used_idx + in_flight` (libvhost-user restarts a ring at exactly that
//!   index). This is right whatever order the backend completed requests in,
//!   where the used index alone skips a request still in flight and repeats one
//!   already completed.
//!
//! # Examples
//!
//! ```
//! use switchover_vhost::inflight::InflightRegion;
//! // A region for 2 queues of 256 descriptors, as a backend allocates it.
//! let region = InflightRegion::create(2, 256).unwrap();
//! let q = region.queue(1).unwrap();
//! q.init(0);
//! // The backend takes heads 7, 3 and 9 (in that order) and completes 3.
//! for (n, head) in [7u16, 3, 9].into_iter().enumerate() {
//!     q.track_get(head, n as u64 + 1);
//! }
//! q.put_begin(3);
//! q.put_end(3, 1); // the used ring's index is now 1
//! let heads: Vec<u16> = q.in_flight(1).unwrap().iter().map(|e| e.head).collect();
//! assert_eq!(heads, [7, 9]); // in the order they were taken
//! assert_eq!(q.recover_base(1).unwrap(), 3); // 1 completed + 2 in flight
//! ```

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicU16, AtomicU64, AtomicU8, Ordering};

/// Bytes of a queue region's header.
pub const HEADER_SIZE: usize = 16;
/// Bytes of one descriptor's entry.
pub const DESC_SIZE: usize = 16;
/// The region version this module reads and writes.
pub const VERSION: u16 = 1;
/// Alignment of each queue region.
const ALIGN: usize = 64;

/// Bytes one queue region of a ring of `queue_size` descriptors needs, rounded up
/// to 64 bytes (what libvhost-user and DPDK allocate per queue).
///
/// ```
/// use switchover_vhost::inflight::queue_region_size;
/// assert_eq!(queue_region_size(256), 4160); // 16 + 256 * 16, rounded up to 64
/// assert_eq!(queue_region_size(1), 64);
/// ```
pub fn queue_region_size(queue_size: u16) -> usize {
    let raw = HEADER_SIZE + DESC_SIZE * usize::from(queue_size);
    raw.div_ceil(ALIGN) * ALIGN
}

/// The inflight description of `GET_INFLIGHT_FD` / `SET_INFLIGHT_FD` (the
/// message's payload): where the region is in its file and its shape.
///
/// ```
/// use switchover_vhost::inflight::InflightDesc;
/// let d = InflightDesc { mmap_size: 8320, mmap_offset: 0, num_queues: 2, queue_size: 256 };
/// assert_eq!(InflightDesc::parse(&d.to_bytes()), Some(d));
/// assert_eq!(d.to_bytes().len(), 24);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InflightDesc {
    /// Size of the region.
    pub mmap_size: u64,
    /// Offset of the region in the file.
    pub mmap_offset: u64,
    /// Queues.
    pub num_queues: u16,
    /// Descriptors per queue.
    pub queue_size: u16,
}

impl InflightDesc {
    /// Bytes on the wire (two `u64`, two `u16`, padded to 8 bytes as the C struct is).
    pub const WIRE_SIZE: usize = 24;

    /// The message payload.
    pub fn to_bytes(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0..8].copy_from_slice(&self.mmap_size.to_le_bytes());
        b[8..16].copy_from_slice(&self.mmap_offset.to_le_bytes());
        b[16..18].copy_from_slice(&self.num_queues.to_le_bytes());
        b[18..20].copy_from_slice(&self.queue_size.to_le_bytes());
        b
    }

    /// Parses a payload of [`InflightDesc::WIRE_SIZE`] bytes.
    pub fn parse(b: &[u8]) -> Option<InflightDesc> {
        if b.len() != Self::WIRE_SIZE {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(InflightDesc { mmap_size: u64_at(0), mmap_offset: u64_at(8), num_queues: u16_at(16), queue_size: u16_at(18) })
    }
}

/// What is wrong with a region (or the file that should hold it).
///
/// ```
/// use switchover_vhost::inflight::{InflightDesc, InflightError, InflightRegion};
/// let f = tempfile_like();
/// # fn tempfile_like() -> std::fs::File { std::fs::File::open("/dev/null").unwrap() }
/// let d = InflightDesc { mmap_size: 64, mmap_offset: 0, num_queues: 1, queue_size: 256 };
/// let e = InflightRegion::map(f.into(), d).unwrap_err();
/// assert!(matches!(e, InflightError::Invalid { .. }), "{e}");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InflightError {
    /// A system call on the region's file failed.
    #[error("inflight region: {op}")]
    Io {
        /// What was done.
        op: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The description or the file cannot hold the region.
    #[error("inflight region: {what}")]
    Invalid {
        /// What is wrong.
        what: String,
    },
    /// A queue region's content is impossible (a backend wrote garbage).
    #[error("inflight region of queue {queue}: {what}")]
    Corrupt {
        /// The queue.
        queue: u16,
        /// What is impossible.
        what: String,
    },
}

/// One request in flight: its descriptor head and the backend's running count
/// when it took it.
///
/// ```
/// use switchover_vhost::inflight::InflightEntry;
/// let e = InflightEntry { head: 4, counter: 17 };
/// assert!(e < InflightEntry { head: 0, counter: 18 }); // ordered by counter first
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct InflightEntry {
    /// The running count (the order the backend took requests in).
    pub counter: u64,
    /// The descriptor head.
    pub head: u16,
}

/// A mapped inflight region (every queue), backed by a file descriptor that can be
/// passed with `SET_INFLIGHT_FD`.
pub struct InflightRegion {
    file: File,
    map: *mut u8,
    map_len: usize,
    desc: InflightDesc,
    stride: usize,
    sealed: bool,
}

// SAFETY: the mapping is shared memory accessed only through atomics; the pointer
// is valid for the life of the value and owned by it.
unsafe impl Send for InflightRegion {}
// SAFETY: as above; every access is atomic.
unsafe impl Sync for InflightRegion {}

impl std::fmt::Debug for InflightRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InflightRegion").field("desc", &self.desc).field("stride", &self.stride).field("sealed", &self.sealed).finish()
    }
}

impl InflightRegion {
    /// Allocates a zeroed region for `num_queues` rings of `queue_size` descriptors
    /// (what a backend does on `GET_INFLIGHT_FD`): a sealed memfd, mapped shared.
    ///
    /// # Errors
    /// [`InflightError`] for a zero shape or a failed system call.
    ///
    /// ```
    /// use switchover_vhost::inflight::{queue_region_size, InflightRegion};
    /// let r = InflightRegion::create(4, 128).unwrap();
    /// assert_eq!(r.desc().mmap_size as usize, 4 * queue_region_size(128));
    /// assert!(r.queue(3).unwrap().in_flight(0).unwrap().is_empty());
    /// assert!(r.queue(4).is_none());
    /// ```
    pub fn create(num_queues: u16, queue_size: u16) -> Result<InflightRegion, InflightError> {
        if num_queues == 0 || queue_size == 0 {
            return Err(InflightError::Invalid { what: format!("{num_queues} queues of {queue_size} descriptors") });
        }
        let size = usize::from(num_queues) * queue_region_size(queue_size);
        // SAFETY: memfd_create with a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"switchover-inflight".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        if fd < 0 {
            return Err(InflightError::Io { op: "memfd_create", source: io::Error::last_os_error() });
        }
        // SAFETY: a descriptor just created, owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size as u64).map_err(|source| InflightError::Io { op: "ftruncate", source })?;
        // SAFETY: fcntl on our own memfd.
        let r = unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL) };
        if r < 0 {
            return Err(InflightError::Io { op: "seal", source: io::Error::last_os_error() });
        }
        let desc = InflightDesc { mmap_size: size as u64, mmap_offset: 0, num_queues, queue_size };
        Self::map(file.into(), desc)
    }

    /// Maps a region received with `GET_INFLIGHT_FD` (frontend) or
    /// `SET_INFLIGHT_FD` (backend). The description is checked against the file
    /// (a region past the file's end would fault when touched), and the file is
    /// sealed against shrinking when it allows it ([`InflightRegion::sealed`]).
    ///
    /// # Errors
    /// [`InflightError`]: a shape that cannot hold `num_queues` queue regions of
    /// `queue_size` descriptors, a file too short, a failed system call.
    ///
    /// ```
    /// use switchover_vhost::inflight::{InflightDesc, InflightRegion};
    /// let a = InflightRegion::create(1, 64).unwrap();
    /// a.queue(0).unwrap().init(5);
    /// // The same memory, mapped again from the descriptor (as the other side does).
    /// let b = InflightRegion::map(a.try_clone_fd().unwrap(), a.desc()).unwrap();
    /// assert_eq!(b.queue(0).unwrap().used_idx(), 5);
    /// assert!(b.sealed());
    /// ```
    pub fn map(fd: OwnedFd, desc: InflightDesc) -> Result<InflightRegion, InflightError> {
        let file = File::from(fd);
        let invalid = |what: String| Err(InflightError::Invalid { what });
        if desc.num_queues == 0 || desc.queue_size == 0 || desc.queue_size > 32768 {
            return invalid(format!("{} queues of {} descriptors", desc.num_queues, desc.queue_size));
        }
        let need = queue_region_size(desc.queue_size) as u64;
        let stride = desc.mmap_size / u64::from(desc.num_queues);
        if stride < (HEADER_SIZE + DESC_SIZE * usize::from(desc.queue_size)) as u64 || stride % 8 != 0 || desc.mmap_size > 1 << 32 {
            return invalid(format!(
                "{} bytes cannot hold {} queue regions of {} descriptors ({need} bytes each)",
                desc.mmap_size, desc.num_queues, desc.queue_size
            ));
        }
        if desc.mmap_offset % 8 != 0 {
            return invalid(format!("offset {} is not 8-byte aligned", desc.mmap_offset));
        }
        let end = desc.mmap_offset.checked_add(desc.mmap_size).ok_or_else(|| InflightError::Invalid { what: "offset overflows".into() })?;
        let len = file.metadata().map_err(|source| InflightError::Io { op: "fstat", source })?.len();
        if len < end {
            return invalid(format!("the file has {len} bytes, the region ends at {end}"));
        }
        // Keep the backend from shrinking the file under the mapping (a fault on
        // the next access): seal it if it allows that, else see whether it is sealed.
        let fd = file.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own.
        let sealed = unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) } == 0 || {
            // SAFETY: as above.
            let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
            seals >= 0 && seals & libc::F_SEAL_SHRINK != 0
        };
        let map_len = end as usize;
        // SAFETY: a shared mapping of `map_len` bytes of our file, checked above to
        // be at least that long; the result is checked.
        let map = unsafe { libc::mmap(std::ptr::null_mut(), map_len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0) };
        if map == libc::MAP_FAILED {
            return Err(InflightError::Io { op: "mmap", source: io::Error::last_os_error() });
        }
        Ok(InflightRegion { file, map: map.cast(), map_len, desc, stride: stride as usize, sealed })
    }

    /// The description to send with `SET_INFLIGHT_FD` (or to answer `GET_INFLIGHT_FD`).
    pub fn desc(&self) -> InflightDesc {
        self.desc
    }

    /// The region's file descriptor (to pass with `SCM_RIGHTS`).
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// A duplicate of the region's file descriptor.
    ///
    /// # Errors
    /// `dup` failed.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        Ok(self.file.try_clone()?.into())
    }

    /// Whether the file is sealed against shrinking (a backend that could shrink
    /// it could make the frontend fault on its next access).
    pub fn sealed(&self) -> bool {
        self.sealed
    }

    /// Queues.
    pub fn num_queues(&self) -> u16 {
        self.desc.num_queues
    }

    /// Queue `q`'s region, if the region has that queue.
    pub fn queue(&self, q: u16) -> Option<QueueRegion<'_>> {
        if q >= self.desc.num_queues {
            return None;
        }
        let off = self.desc.mmap_offset as usize + usize::from(q) * self.stride;
        // SAFETY: `off` plus a queue region lies inside the mapping (checked at map).
        let base = unsafe { self.map.add(off) };
        Some(QueueRegion { base, queue: q, size: self.desc.queue_size, _region: std::marker::PhantomData })
    }

    /// The in-flight requests of every queue (their heads in counter order), given
    /// each queue's used index in guest memory.
    ///
    /// # Errors
    /// A queue region's content is impossible.
    ///
    /// ```
    /// use switchover_vhost::inflight::InflightRegion;
    /// let r = InflightRegion::create(2, 8).unwrap();
    /// r.queue(1).unwrap().init(0);
    /// r.queue(1).unwrap().track_get(5, 1);
    /// assert_eq!(r.total_in_flight(&|_| 0).unwrap(), 1);
    /// ```
    pub fn total_in_flight(&self, used_idx: &dyn Fn(u16) -> u16) -> Result<usize, InflightError> {
        let mut n = 0;
        for q in 0..self.desc.num_queues {
            n += self.queue(q).map(|r| r.in_flight(used_idx(q)).map(|v| v.len())).transpose()?.unwrap_or(0);
        }
        Ok(n)
    }
}

impl Drop for InflightRegion {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe {
            libc::munmap(self.map.cast(), self.map_len);
        }
    }
}

/// One queue's region in a mapped [`InflightRegion`]. Every access is atomic: the
/// other side of the protocol reads and writes the same memory.
#[derive(Debug, Clone, Copy)]
pub struct QueueRegion<'a> {
    base: *mut u8,
    queue: u16,
    size: u16,
    _region: std::marker::PhantomData<&'a InflightRegion>,
}

impl QueueRegion<'_> {
    fn a8(&self, off: usize) -> &AtomicU8 {
        // SAFETY: `off` is inside this queue's region; the byte is only accessed atomically.
        unsafe { &*(self.base.add(off) as *const AtomicU8) }
    }
    fn a16(&self, off: usize) -> &AtomicU16 {
        debug_assert_eq!(off % 2, 0);
        // SAFETY: inside the region, 2-byte aligned (the region is 8-byte aligned).
        unsafe { &*(self.base.add(off) as *const AtomicU16) }
    }
    fn a64(&self, off: usize) -> &AtomicU64 {
        debug_assert_eq!(off % 8, 0);
        // SAFETY: inside the region, 8-byte aligned.
        unsafe { &*(self.base.add(off) as *const AtomicU64) }
    }
    fn desc_off(&self, head: u16) -> usize {
        HEADER_SIZE + DESC_SIZE * usize::from(head)
    }

    /// The queue index.
    pub fn index(&self) -> u16 {
        self.queue
    }
    /// Descriptors of the ring (from the description, not from the region).
    pub fn queue_size(&self) -> u16 {
        self.size
    }
    /// `version` (0: never initialised).
    pub fn version(&self) -> u16 {
        self.a16(8).load(Ordering::Acquire)
    }
    /// `desc_num`.
    pub fn desc_num(&self) -> u16 {
        self.a16(10).load(Ordering::Acquire)
    }
    /// `last_batch_head`.
    pub fn last_batch_head(&self) -> u16 {
        self.a16(12).load(Ordering::Acquire)
    }
    /// `used_idx`: the used ring's index after the last completed batch.
    pub fn used_idx(&self) -> u16 {
        self.a16(14).load(Ordering::Acquire)
    }
    /// Whether head `h` is marked in flight (`false` past the ring's end).
    pub fn is_inflight(&self, h: u16) -> bool {
        h < self.size && self.a8(self.desc_off(h)).load(Ordering::Acquire) == 1
    }
    /// Head `h`'s counter.
    pub fn counter(&self, h: u16) -> u64 {
        if h >= self.size {
            return 0;
        }
        self.a64(self.desc_off(h) + 8).load(Ordering::Acquire)
    }
    fn next(&self, h: u16) -> u16 {
        self.a16(self.desc_off(h) + 6).load(Ordering::Acquire)
    }

    /// Backend: initialises a fresh region (version 0) for a ring whose used index
    /// is `used_idx`; a region already initialised is left as it is.
    pub fn init(&self, used_idx: u16) {
        if self.version() != 0 {
            return;
        }
        self.a64(0).store(0, Ordering::Relaxed);
        self.a16(10).store(self.size, Ordering::Relaxed);
        self.a16(12).store(0, Ordering::Relaxed);
        self.a16(14).store(used_idx, Ordering::Relaxed);
        self.a16(8).store(VERSION, Ordering::Release);
    }

    /// Backend, taking head `h` off the available ring: its counter, then `inflight = 1`.
    pub fn track_get(&self, h: u16, counter: u64) {
        if h >= self.size {
            return;
        }
        let d = self.desc_off(h);
        self.a64(d + 8).store(counter, Ordering::Relaxed);
        self.a8(d).store(1, Ordering::Release);
    }

    /// Backend, before publishing head `h` in the used ring: a batch of one.
    pub fn put_begin(&self, h: u16) {
        if h >= self.size {
            return;
        }
        let prev = self.last_batch_head();
        self.a16(self.desc_off(h) + 6).store(prev, Ordering::Relaxed);
        self.a16(12).store(h, Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// Backend, after publishing head `h` (the used ring's index is now `used_idx`):
    /// `inflight = 0`, then `used_idx`.
    pub fn put_end(&self, h: u16, used_idx: u16) {
        fence(Ordering::SeqCst);
        if h < self.size {
            self.a8(self.desc_off(h)).store(0, Ordering::Release);
        }
        self.a16(14).store(used_idx, Ordering::Release);
    }

    /// The requests in flight, in the order the backend took them, for a ring whose
    /// used index in guest memory is `used_idx`. Applies the spec's correction for
    /// a backend that died between publishing a batch and clearing it (without
    /// writing the region). A region never initialised has none.
    ///
    /// # Errors
    /// [`InflightError::Corrupt`]: a region of another ring size, a last batch that
    /// cannot be, more requests in flight than the ring holds, two with one counter.
    ///
    /// ```
    /// use switchover_vhost::inflight::InflightRegion;
    /// let r = InflightRegion::create(1, 16).unwrap();
    /// let q = r.queue(0).unwrap();
    /// q.init(0);
    /// q.track_get(2, 1);
    /// q.track_get(6, 2);
    /// // The backend published head 2 (used index 1) and died before clearing it.
    /// q.put_begin(2);
    /// let heads: Vec<u16> = q.in_flight(1).unwrap().iter().map(|e| e.head).collect();
    /// assert_eq!(heads, [6]);
    /// assert_eq!(q.in_flight(0).unwrap().len(), 2); // as the region says, if it was not published
    /// ```
    pub fn in_flight(&self, used_idx: u16) -> Result<Vec<InflightEntry>, InflightError> {
        let corrupt = |what: String| Err(InflightError::Corrupt { queue: self.queue, what });
        match self.version() {
            0 => return Ok(Vec::new()),
            VERSION => {}
            v => return corrupt(format!("version {v}")),
        }
        if self.desc_num() != self.size {
            return corrupt(format!("{} descriptors, the ring has {}", self.desc_num(), self.size));
        }
        // The last batch, if it was published but not cleared.
        let mut cleared = Vec::new();
        let batch = used_idx.wrapping_sub(self.used_idx());
        if batch != 0 {
            if batch > self.size {
                return corrupt(format!("used index {used_idx} is {batch} past the region's {}", self.used_idx()));
            }
            let mut h = self.last_batch_head();
            for _ in 0..batch {
                if h >= self.size {
                    return corrupt(format!("last batch links to head {h}"));
                }
                cleared.push(h);
                h = self.next(h);
            }
        }
        let mut v: Vec<InflightEntry> = (0..self.size)
            .filter(|h| self.is_inflight(*h) && !cleared.contains(h))
            .map(|h| InflightEntry { head: h, counter: self.counter(h) })
            .collect();
        v.sort();
        if v.windows(2).any(|w| w[0].counter == w[1].counter) {
            return corrupt("two requests in flight with one counter".into());
        }
        Ok(v)
    }

    /// Backend, at a restart: applies the last-batch correction to the region itself
    /// (clears the heads published but not cleared, sets `used_idx`) and returns the
    /// requests to resubmit, in counter order.
    ///
    /// # Errors
    /// As [`QueueRegion::in_flight`].
    pub fn fixup(&self, used_idx: u16) -> Result<Vec<InflightEntry>, InflightError> {
        let v = self.in_flight(used_idx)?;
        if self.version() == 0 {
            return Ok(v);
        }
        for h in 0..self.size {
            if self.is_inflight(h) && !v.iter().any(|e| e.head == h) {
                self.a8(self.desc_off(h)).store(0, Ordering::Release);
            }
        }
        self.a16(14).store(used_idx, Ordering::Release);
        Ok(v)
    }

    /// The ring's base (next available index the backend reads) for a used index of
    /// `used_idx`: every request the backend took is completed or in flight.
    ///
    /// # Errors
    /// As [`QueueRegion::in_flight`].
    pub fn recover_base(&self, used_idx: u16) -> Result<u16, InflightError> {
        Ok(used_idx.wrapping_add(self.in_flight(used_idx)?.len() as u16))
    }

    /// Frontend, destination: writes the ring's region as the source left it — the
    /// requests `heads` in flight in that order, the used index `used_idx` — for the
    /// backend to resubmit them when the ring starts.
    ///
    /// ```
    /// use switchover_vhost::inflight::InflightRegion;
    /// let r = InflightRegion::create(1, 32).unwrap();
    /// let q = r.queue(0).unwrap();
    /// q.load(40, &[9, 1, 30]);
    /// let heads: Vec<u16> = q.in_flight(40).unwrap().iter().map(|e| e.head).collect();
    /// assert_eq!(heads, [9, 1, 30]);
    /// assert_eq!(q.recover_base(40).unwrap(), 43);
    /// ```
    pub fn load(&self, used_idx: u16, heads: &[u16]) {
        self.a16(8).store(0, Ordering::Release);
        fence(Ordering::SeqCst);
        for h in 0..self.size {
            let d = self.desc_off(h);
            self.a8(d).store(0, Ordering::Relaxed);
            self.a16(d + 6).store(0, Ordering::Relaxed);
            self.a64(d + 8).store(0, Ordering::Relaxed);
        }
        for (n, h) in heads.iter().enumerate() {
            self.track_get(*h, n as u64 + 1);
        }
        self.a64(0).store(0, Ordering::Relaxed);
        self.a16(10).store(self.size, Ordering::Relaxed);
        self.a16(12).store(0, Ordering::Relaxed);
        self.a16(14).store(used_idx, Ordering::Relaxed);
        self.a16(8).store(VERSION, Ordering::Release);
    }

    /// Sets the region's version to 0 (never initialised): a backend treats the
    /// ring as fresh at its next start.
    pub fn reset(&self) {
        self.a16(8).store(0, Ordering::Release);
    }
}

/// Source, after ring `ring` of `device` stopped with `base` (the used index in
/// guest memory now `used`): the requests its backend left in flight in the
/// region, in the order it took them, recorded in `state` to be carried to the
/// destination ([`switchover::state::InflightReq`], the id being the descriptor
/// head).
///
/// The region must agree with the base: every request the backend took is
/// completed or in flight (`base == used + in flight`). A backend that did not
/// negotiate `GET_VRING_BASE_INFLIGHT` (`hand_over` false) must have waited for
/// its requests: any left in flight means it answered without waiting for them.
///
/// # Errors
/// [`StepFailure::Garbage`] naming the disagreement; [`StepFailure::MissingState`]
/// if the region has no such queue.
///
/// ```
/// use std::sync::Arc;
/// use switchover::ids::DeviceId;
/// use switchover::state::DeviceState;
/// use switchover::topology::Topology;
/// use switchover_vhost::inflight::{hand_over, InflightRegion};
/// let state = DeviceState::new(&Topology::preset("single-blk").unwrap());
/// let region = InflightRegion::create(1, 64).unwrap();
/// let q = region.queue(0).unwrap();
/// q.init(10);
/// q.track_get(12, 1);
/// q.track_get(3, 2); // two requests in flight, 10 completed: the base is 12
/// hand_over(&region, &state, DeviceId(0), 0, 12, 10, true).unwrap();
/// let ids: Vec<u64> = state.inflight().iter().map(|r| r.id).collect();
/// assert_eq!(ids, [12, 3]);
/// assert!(hand_over(&region, &state, DeviceId(0), 0, 13, 10, true).is_err()); // disagrees
/// assert!(hand_over(&region, &state, DeviceId(0), 0, 12, 10, false).is_err()); // did not wait
/// ```
pub fn hand_over(
    region: &InflightRegion,
    state: &switchover::state::DeviceState,
    device: switchover::ids::DeviceId,
    ring: u32,
    base: u16,
    used: u16,
    hand_over: bool,
) -> Result<(), switchover::error::StepFailure> {
    use switchover::error::StepFailure;
    let q = u16::try_from(ring)
        .ok()
        .and_then(|r| region.queue(r))
        .ok_or_else(|| StepFailure::MissingState { what: format!("the inflight region has no queue {ring}") })?;
    let entries = q.in_flight(used).map_err(|e| StepFailure::Garbage { what: e.to_string() })?;
    let k = entries.len();
    if used.wrapping_add(k as u16) != base {
        return Err(StepFailure::Garbage {
            what: format!("vring base {base}, but the inflight region has {k} request(s) in flight past the used index {used}"),
        });
    }
    if k > 0 && !hand_over {
        return Err(StepFailure::Garbage {
            what: format!(
                "GET_VRING_BASE answered with {k} request(s) still in flight, without GET_VRING_BASE_INFLIGHT (it did not wait for them)"
            ),
        });
    }
    let reqs: Vec<switchover::state::InflightReq> =
        entries.iter().map(|e| switchover::state::InflightReq { device: device.0, ring, id: u64::from(e.head) }).collect();
    state.hand_over(&reqs);
    Ok(())
}

/// Destination, before ring `ring` of `device` starts: the requests the source
/// handed over for it (taken from `state`) written into the device's region, in
/// their order, with the used index of guest memory, for the backend to resubmit
/// at its kick. Nothing to do for a ring with none.
///
/// # Errors
/// [`switchover::error::StepFailure::MissingState`]: requests were handed over but
/// the backend keeps no region (or the frontend has none yet), a head past the
/// ring, one handed over twice, the ring outside guest memory.
pub fn load_handed_over(
    fe: &crate::frontend::Frontend,
    state: &switchover::state::DeviceState,
    memory: &dyn crate::memory::GuestMemory,
    device: switchover::ids::DeviceId,
    ring: u32,
    v: crate::memory::VringConfig,
) -> Result<(), switchover::error::StepFailure> {
    use switchover::error::StepFailure;
    let reqs = state.take_inflight(device, ring);
    if reqs.is_empty() {
        return Ok(());
    }
    let missing = |what: String| Err(StepFailure::MissingState { what });
    let Some(region) = fe.inflight() else {
        return missing(format!("{} request(s) handed over, but the backend has no inflight region to resubmit them from", reqs.len()));
    };
    let mut heads = Vec::with_capacity(reqs.len());
    for r in &reqs {
        match u16::try_from(r.id) {
            Ok(h) if h < v.size && !heads.contains(&h) => heads.push(h),
            _ => return missing(format!("handed-over request {} is not a head of a ring of {} (or is handed over twice)", r.id, v.size)),
        }
    }
    let Some(q) = u16::try_from(ring).ok().and_then(|r| region.queue(r)) else {
        return missing(format!("the inflight region has no queue {ring}"));
    };
    let Some(used) = memory.read_u16(v.used_idx_addr()) else {
        return missing("the ring is outside guest memory".into());
    };
    q.load(used, &heads);
    Ok(())
}
