//! Dirty logging for a migration between two hosts: the shared log the backends
//! write, and what the VMM does with it.
//!
//! While the migration runs, the source's backends log every write they make to
//! guest memory (used rings, received packets, data read from disk) in one log
//! shared by all of them: the vhost-user spec's bitmap, one bit per 4 KiB page
//! of guest-physical address, set with atomic ORs ([`DirtyLog`], a memfd sent with
//! `SET_LOG_BASE` under `LOG_SHMFD`). The VMM reads and clears it in each RAM pass
//! of its precopy, and once more in the window, after every ring sharing it has
//! stopped (`log_sync`): only then are the backends' last writes in it. The final
//! RAM pass (`final_pass`) copies what that sync found, with what the guest's own
//! writes dirtied; the destination's RAM is final once it ends.
//!
//! The VMM plugs in with [`Migration`]: where the log is, what to do with the
//! pages a sync found, and its final pass.
//!
//! # Examples
//!
//! ```
//! use switchover_vhost::log::{DirtyLog, PAGE};
//! // Guest memory at 1 GiB, 64 KiB of it.
//! let (base, size) = (1u64 << 30, 0x1_0000);
//! let log = DirtyLog::new(base + size).unwrap();
//! // What a backend does when it writes guest memory at base + 0x2004 (its
//! // used ring) and base + 0x9000 (a received packet):
//! log.mark(base + 0x2004, 2);
//! log.mark(base + 0x9000, 72);
//! let dirty = log.sync(base, size);
//! assert_eq!(dirty.pages().collect::<Vec<_>>(), [base + 2 * PAGE, base + 9 * PAGE]);
//! assert!(log.sync(base, size).is_empty()); // read and cleared
//! ```

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use switchover::error::StepFailure;

/// The log's page size: one bit per 4 KiB of guest-physical address.
pub const PAGE: u64 = 0x1000;

/// The shared dirty log: a memfd holding one bit per 4 KiB page of
/// guest-physical address from 0 up to the end of guest memory, mapped here and,
/// through `SET_LOG_BASE`, in every backend that logs.
///
/// ```
/// use switchover_vhost::log::DirtyLog;
/// let log = DirtyLog::new(1 << 30).unwrap(); // guest memory ends at 1 GiB
/// assert_eq!(log.size(), (1 << 30) / 0x1000 / 8); // 32 KiB of bits
/// assert!(log.fd() >= 0);
/// ```
#[derive(Debug)]
pub struct DirtyLog {
    fd: OwnedFd,
    base: *mut u8,
    size: usize,
}

// SAFETY: the mapping lives as long as the log; it is only accessed through
// atomics (the backends set bits with atomic ORs, the VMM swaps words out).
unsafe impl Send for DirtyLog {}
// SAFETY: as above.
unsafe impl Sync for DirtyLog {}

impl DirtyLog {
    /// A log covering guest-physical addresses `0..guest_end`, all clean.
    ///
    /// # Errors
    /// `memfd_create`, `ftruncate` or `mmap` failed.
    pub fn new(guest_end: u64) -> io::Result<DirtyLog> {
        let pages = guest_end.div_ceil(PAGE);
        // Whole 64-bit words, so that a sync can swap words out.
        let size = pages.div_ceil(64).max(1) * 8;
        let size = usize::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: memfd_create with a NUL-terminated name.
        let raw = unsafe { libc::memfd_create(c"vhost-dirty-log".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just created, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ftruncate and a shared read-write mapping of our own memfd.
        let base = unsafe {
            if libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) != 0 {
                return Err(io::Error::last_os_error());
            }
            let p = libc::mmap(std::ptr::null_mut(), size, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0);
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            p.cast::<u8>()
        };
        Ok(DirtyLog { fd, base, size })
    }

    /// The memfd sent with `SET_LOG_BASE`.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Its size in bytes (`SET_LOG_BASE`'s `mmap_size`; the offset is 0).
    pub fn size(&self) -> u64 {
        self.size as u64
    }

    fn word(&self, i: usize) -> Option<&AtomicU64> {
        // SAFETY: in bounds (checked), 8-byte aligned (the mapping is page
        // aligned), and only ever accessed atomically.
        (i < self.size / 8).then(|| unsafe { &*self.base.cast::<AtomicU64>().add(i) })
    }

    /// Marks `len` bytes at guest-physical `gpa` dirty, as a backend does (atomic
    /// byte ORs, the spec's way). For tests and for a VMM that logs its own writes.
    ///
    /// ```
    /// use switchover_vhost::log::{DirtyLog, PAGE};
    /// let log = DirtyLog::new(16 * PAGE).unwrap();
    /// log.mark(PAGE - 1, 2); // straddles two pages
    /// assert_eq!(log.sync(0, 16 * PAGE).len(), 2);
    /// ```
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        for page in gpa / PAGE..=(gpa + len - 1) / PAGE {
            let byte = (page / 8) as usize;
            if byte < self.size {
                // SAFETY: in bounds (checked); bytes of the log are only accessed atomically.
                let b = unsafe { &*self.base.add(byte).cast::<AtomicU8>() };
                b.fetch_or(1 << (page % 8), Ordering::AcqRel);
            }
        }
    }

    /// Reads and clears the log over guest memory `gpa..gpa + size` (whole words
    /// swapped out atomically, as QEMU's sync does): the pages the backends wrote
    /// since the last sync.
    ///
    /// ```
    /// use switchover_vhost::log::{DirtyLog, PAGE};
    /// let log = DirtyLog::new(1024 * PAGE).unwrap();
    /// log.mark(700 * PAGE, 1);
    /// assert_eq!(log.sync(512 * PAGE, 512 * PAGE).pages().collect::<Vec<_>>(), [700 * PAGE]);
    /// ```
    pub fn sync(&self, gpa: u64, size: u64) -> DirtyPages {
        let first = gpa / PAGE;
        let last = (gpa + size).div_ceil(PAGE); // exclusive
        let mut out = DirtyPages::new(first * PAGE, (last - first) * PAGE);
        for w in (first / 64)..last.div_ceil(64) {
            let Some(word) = self.word(w as usize) else { break };
            // Only the bits of this range: a word may cover pages outside it.
            let lo = (w * 64).max(first);
            let hi = (w * 64 + 64).min(last);
            let mask = if hi - lo == 64 { u64::MAX } else { ((1u64 << (hi - lo)) - 1) << (lo - w * 64) };
            let bits = word.fetch_and(!mask, Ordering::AcqRel) & mask;
            let mut b = bits;
            while b != 0 {
                let bit = u64::from(b.trailing_zeros());
                out.insert((w * 64 + bit) * PAGE);
                b &= b - 1;
            }
        }
        out
    }
}

impl Drop for DirtyLog {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe {
            libc::munmap(self.base.cast(), self.size);
        }
    }
}

/// A set of dirty 4 KiB pages of one range of guest memory.
///
/// ```
/// use switchover_vhost::log::{DirtyPages, PAGE};
/// let mut d = DirtyPages::new(0x1000_0000, 64 * PAGE);
/// d.insert(0x1000_0000 + 3 * PAGE + 17); // any address in the page
/// let mut e = DirtyPages::new(0x1000_0000, 64 * PAGE);
/// e.insert(0x1000_0000 + 9 * PAGE);
/// d.union(&e);
/// assert_eq!(d.len(), 2);
/// assert_eq!(d.pages().next(), Some(0x1000_0000 + 3 * PAGE));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyPages {
    base: u64,
    bits: Vec<u64>,
}

impl DirtyPages {
    /// No page dirty in `base..base + size`.
    pub fn new(base: u64, size: u64) -> DirtyPages {
        let pages = size.div_ceil(PAGE);
        DirtyPages { base: base / PAGE * PAGE, bits: vec![0; pages.div_ceil(64) as usize] }
    }
    /// Marks the page holding `gpa` (ignored outside the range).
    pub fn insert(&mut self, gpa: u64) {
        if gpa < self.base {
            return;
        }
        let p = (gpa - self.base) / PAGE;
        if let Some(w) = self.bits.get_mut((p / 64) as usize) {
            *w |= 1 << (p % 64);
        }
    }
    /// Adds every page of `other` (of the same range; pages outside it are ignored).
    pub fn union(&mut self, other: &DirtyPages) {
        for gpa in other.pages() {
            self.insert(gpa);
        }
    }
    /// The dirty pages' guest-physical addresses, in order.
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.bits
            .iter()
            .enumerate()
            .flat_map(move |(i, &w)| (0..64u64).filter(move |b| w & (1 << b) != 0).map(move |b| self.base + (i as u64 * 64 + b) * PAGE))
    }
    /// How many pages are dirty.
    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }
    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }
    /// Takes every page, leaving none dirty.
    pub fn take(&mut self) -> DirtyPages {
        let n = self.bits.len();
        let bits = std::mem::replace(&mut self.bits, vec![0; n]);
        DirtyPages { base: self.base, bits }
    }
}

/// What a migration asks of the VMM beside its devices: the log the source's
/// backends share, where the pages a log sync finds go, and the final RAM pass.
/// [`crate::actions::VhostActions`] calls it for the `log_start`, `log_sync`
/// and `final_pass` steps.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use switchover::error::StepFailure;
/// use switchover_vhost::log::{DirtyLog, DirtyPages, Migration, PAGE};
/// /// A VMM with 1 MiB of guest memory at 1 GiB and a dirty set its RAM passes copy.
/// struct Vmm {
///     log: Arc<DirtyLog>,
///     dirty: Mutex<DirtyPages>,
///     copied: Mutex<u64>,
/// }
/// impl Migration for Vmm {
///     fn dirty_log(&self) -> Option<(Arc<DirtyLog>, u64, u64)> {
///         Some((self.log.clone(), 1 << 30, 1 << 20))
///     }
///     fn mark_dirty(&self, pages: &DirtyPages) {
///         self.dirty.lock().unwrap().union(pages);
///     }
///     fn final_pass(&self) -> Result<u64, StepFailure> {
///         let pages = self.dirty.lock().unwrap().take();
///         // ... copy each page to the destination ...
///         *self.copied.lock().unwrap() += pages.len() as u64;
///         Ok(pages.len() as u64)
///     }
/// }
/// let vmm = Vmm {
///     log: Arc::new(DirtyLog::new((1 << 30) + (1 << 20)).unwrap()),
///     dirty: Mutex::new(DirtyPages::new(1 << 30, 1 << 20)),
///     copied: Mutex::new(0),
/// };
/// vmm.log.mark((1 << 30) + 5 * PAGE, 8); // a backend's last used-ring write
/// let (log, base, size) = vmm.dirty_log().unwrap();
/// vmm.mark_dirty(&log.sync(base, size)); // the log sync
/// assert_eq!(vmm.final_pass().unwrap(), 1); // the final pass copies that page
/// ```
pub trait Migration: Send + Sync {
    /// The shared log and the guest memory range it covers (`gpa`, `size`);
    /// `None` if the VMM does not log (then `log_start` and `log_sync` fail).
    fn dirty_log(&self) -> Option<(std::sync::Arc<DirtyLog>, u64, u64)>;
    /// What a log sync found: pages the final pass must copy.
    fn mark_dirty(&self, pages: &DirtyPages);
    /// The final RAM pass: copies what is dirty (the log syncs' pages and the
    /// guest's own writes) to the destination. Returns the pages copied.
    ///
    /// # Errors
    /// The copy failed; the destination's RAM is not final (the switchover rolls back).
    fn final_pass(&self) -> Result<u64, StepFailure>;
}
