//! The backend's view of guest memory: the regions of `SET_MEM_TABLE`, mapped
//! from their file descriptors, and the frontend's dirty log (`SET_LOG_BASE`).
//!
//! Every write the backend makes to guest memory goes through [`GuestMap::write`]
//! or [`GuestMap::store_u16`] with a [`LogTarget`]: while logging is on, the
//! 4 KiB guest-physical pages it touched are marked in the log (one bit per page,
//! atomically), data writes at their own address, used-ring writes at the
//! ring's log address (the spec's `log_guest_addr`).
//!
//! # Examples
//!
//! ```
//! use switchover_testbed::blk::guest::DirtyLog;
//! let log = DirtyLog::create(4096).unwrap(); // 4096 bytes: 32768 pages of 4 KiB
//! log.mark(0x5000, 0x2001); // pages 5, 6 and 7
//! assert_eq!(log.dirty_pages(), [5, 6, 7]);
//! ```

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};

/// Bytes of a dirty page.
pub const LOG_PAGE: u64 = 4096;

struct Region {
    gpa: u64,
    size: u64,
    uaddr: u64,
    base: *mut u8,
    map_len: usize,
    map: *mut u8,
}

/// Guest memory as the frontend described it, mapped shared.
pub struct GuestMap {
    regions: Vec<Region>,
}

// SAFETY: the mappings are shared memory accessed with volatile copies and
// atomics; the pointers live as long as the value.
unsafe impl Send for GuestMap {}
// SAFETY: as above.
unsafe impl Sync for GuestMap {}

impl std::fmt::Debug for GuestMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r: Vec<(u64, u64)> = self.regions.iter().map(|r| (r.gpa, r.size)).collect();
        f.debug_struct("GuestMap").field("regions", &r).finish()
    }
}

/// Where a write is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// Not logged (logging off).
    None,
    /// At the guest-physical address written (data buffers, status bytes).
    Data,
    /// At `log_addr + (gpa - ring_gpa)`: a used ring whose `SET_VRING_ADDR` had
    /// the log flag, logged at its `log_guest_addr`.
    Used {
        /// The used ring's guest-physical address.
        ring_gpa: u64,
        /// Its log address.
        log_addr: u64,
    },
}

impl GuestMap {
    /// Maps the regions `(guest address, size, user address, mmap offset)` from
    /// their files.
    ///
    /// # Errors
    /// A region that does not fit its file, or a failed `mmap`.
    ///
    /// ```
    /// use switchover_testbed::blk::guest::{GuestMap, LogTarget};
    /// use switchover_testbed::mem::{GuestMem, GPA_BASE};
    /// let m = GuestMem::new(1).unwrap();
    /// let r = m.region();
    /// let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(r.fd) }.try_clone_to_owned().unwrap();
    /// let g = GuestMap::map(vec![(r.guest_addr, r.size, r.user_addr, 0, fd.into())]).unwrap();
    /// assert!(g.write(GPA_BASE + 8, b"hi", LogTarget::None, None));
    /// assert_eq!(g.gpa_of(r.user_addr + 8), Some(GPA_BASE + 8));
    /// let mut b = [0u8; 2];
    /// assert!(g.read(GPA_BASE + 8, &mut b));
    /// assert_eq!(&b, b"hi");
    /// ```
    pub fn map(regions: Vec<(u64, u64, u64, u64, File)>) -> io::Result<GuestMap> {
        let mut out = Vec::new();
        for (gpa, size, uaddr, off, file) in regions {
            let len = file.metadata()?.len();
            let end = off.checked_add(size).ok_or_else(|| io::Error::other("region overflows"))?;
            if size == 0 || len < end {
                return Err(io::Error::other(format!("region of {size} bytes at offset {off} does not fit a file of {len}")));
            }
            // SAFETY: a shared mapping of a file checked to be long enough.
            let map = unsafe {
                libc::mmap(std::ptr::null_mut(), end as usize, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, file.as_raw_fd(), 0)
            };
            if map == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let map = map.cast::<u8>();
            // SAFETY: `off` is inside the mapping.
            let base = unsafe { map.add(off as usize) };
            out.push(Region { gpa, size, uaddr, base, map_len: end as usize, map });
        }
        Ok(GuestMap { regions: out })
    }

    fn host(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        let r = self.regions.iter().find(|r| gpa >= r.gpa && gpa - r.gpa < r.size)?;
        let off = gpa - r.gpa;
        if off.checked_add(len as u64)? > r.size {
            return None;
        }
        // SAFETY: the range is inside the region.
        Some(unsafe { r.base.add(off as usize) })
    }

    /// The guest address of a frontend's user address (ring addresses come as those).
    pub fn gpa_of(&self, uaddr: u64) -> Option<u64> {
        let r = self.regions.iter().find(|r| uaddr >= r.uaddr && uaddr - r.uaddr < r.size)?;
        Some(r.gpa + (uaddr - r.uaddr))
    }

    /// Copies guest memory at `gpa` into `buf`; `false` if it is not all guest memory.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        let Some(p) = self.host(gpa, buf.len()) else { return false };
        // SAFETY: `p..p+len` is mapped; the guest may change it concurrently (a
        // byte copy, as a device's DMA read).
        unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
        true
    }

    /// Writes `data` at `gpa` and logs it; `false` (nothing written) if it is not
    /// all guest memory.
    pub fn write(&self, gpa: u64, data: &[u8], target: LogTarget, log: Option<&DirtyLog>) -> bool {
        let Some(p) = self.host(gpa, data.len()) else { return false };
        // SAFETY: `p..p+len` is mapped and writable.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        mark(gpa, data.len() as u64, target, log);
        true
    }

    /// Reads a `u16` atomically (acquire).
    pub fn load_u16(&self, gpa: u64) -> Option<u16> {
        if gpa % 2 != 0 {
            return None;
        }
        let p = self.host(gpa, 2)?;
        // SAFETY: mapped, 2-byte aligned (regions are page aligned).
        Some(u16::from_le(unsafe { &*(p as *const AtomicU16) }.load(Ordering::Acquire)))
    }

    /// Writes a `u16` atomically (release) and logs it.
    pub fn store_u16(&self, gpa: u64, v: u16, target: LogTarget, log: Option<&DirtyLog>) -> bool {
        if gpa % 2 != 0 {
            return false;
        }
        let Some(p) = self.host(gpa, 2) else { return false };
        // SAFETY: mapped, aligned.
        unsafe { &*(p as *const AtomicU16) }.store(v.to_le(), Ordering::Release);
        mark(gpa, 2, target, log);
        true
    }
}

fn mark(gpa: u64, len: u64, target: LogTarget, log: Option<&DirtyLog>) {
    let Some(log) = log else { return };
    match target {
        LogTarget::None => {}
        LogTarget::Data => log.mark(gpa, len),
        LogTarget::Used { ring_gpa, log_addr } => log.mark(log_addr.wrapping_add(gpa.wrapping_sub(ring_gpa)), len),
    }
}

impl Drop for GuestMap {
    fn drop(&mut self) {
        for r in &self.regions {
            // SAFETY: unmapping what `map` mapped.
            unsafe { libc::munmap(r.map.cast(), r.map_len) };
        }
    }
}

/// The frontend's dirty log: one bit per 4 KiB guest-physical page.
pub struct DirtyLog {
    map: *mut u8,
    map_len: usize,
    base: *mut u8,
    size: usize,
    _file: File,
}

// SAFETY: accessed only with atomics.
unsafe impl Send for DirtyLog {}
// SAFETY: as above.
unsafe impl Sync for DirtyLog {}

impl std::fmt::Debug for DirtyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyLog").field("bytes", &self.size).finish()
    }
}

impl DirtyLog {
    /// Maps `size` bytes at `offset` of the log's file (`SET_LOG_BASE`).
    ///
    /// # Errors
    /// A log that does not fit its file, or a failed `mmap`.
    pub fn map(file: File, size: u64, offset: u64) -> io::Result<DirtyLog> {
        let end = offset.checked_add(size).ok_or_else(|| io::Error::other("log overflows"))?;
        if size == 0 || file.metadata()?.len() < end {
            return Err(io::Error::other(format!("a log of {size} bytes at {offset} does not fit its file")));
        }
        // SAFETY: a shared mapping of a file checked to be long enough.
        let map = unsafe {
            libc::mmap(std::ptr::null_mut(), end as usize, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, file.as_raw_fd(), 0)
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = map.cast::<u8>();
        // SAFETY: inside the mapping.
        let base = unsafe { map.add(offset as usize) };
        Ok(DirtyLog { map, map_len: end as usize, base, size: size as usize, _file: file })
    }

    /// A zeroed log of `size` bytes in a memfd of its own (what a frontend
    /// allocates), with the file to send.
    ///
    /// # Errors
    /// memfd or mmap failures.
    pub fn create(size: u64) -> io::Result<DirtyLog> {
        // SAFETY: memfd_create with a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"switchover-dirty-log".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just created.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size)?;
        DirtyLog::map(file, size, 0)
    }

    /// A duplicate of the log's file (to send with `SET_LOG_BASE`).
    ///
    /// # Errors
    /// `dup` failed.
    pub fn try_clone_file(&self) -> io::Result<File> {
        self._file.try_clone()
    }

    /// Bytes of bitmap.
    pub fn len(&self) -> usize {
        self.size
    }

    /// Whether the bitmap has no bytes.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    fn byte(&self, i: usize) -> Option<&AtomicU8> {
        // SAFETY: inside the mapping; the bitmap is only accessed atomically.
        (i < self.size).then(|| unsafe { &*(self.base.add(i) as *const AtomicU8) })
    }

    /// Marks every page of `gpa .. gpa + len` dirty (pages past the log are not).
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let (first, last) = (gpa / LOG_PAGE, (gpa + len - 1) / LOG_PAGE);
        for page in first..=last {
            if let Some(b) = usize::try_from(page / 8).ok().and_then(|i| self.byte(i)) {
                b.fetch_or(1 << (page % 8), Ordering::AcqRel);
            }
        }
    }

    /// The pages marked dirty, in order.
    pub fn dirty_pages(&self) -> Vec<u64> {
        let mut v = Vec::new();
        for i in 0..self.size {
            let b = self.byte(i).map(|b| b.load(Ordering::Acquire)).unwrap_or(0);
            for bit in 0..8 {
                if b & (1 << bit) != 0 {
                    v.push(i as u64 * 8 + bit);
                }
            }
        }
        v
    }

    /// Whether page `page` is marked.
    pub fn is_dirty(&self, page: u64) -> bool {
        usize::try_from(page / 8).ok().and_then(|i| self.byte(i)).is_some_and(|b| b.load(Ordering::Acquire) & (1 << (page % 8)) != 0)
    }

    /// Clears every mark (what a frontend does when it collects the log).
    pub fn clear(&self) {
        for i in 0..self.size {
            if let Some(b) = self.byte(i) {
                b.store(0, Ordering::Release);
            }
        }
    }
}

impl Drop for DirtyLog {
    fn drop(&mut self) {
        // SAFETY: unmapping what `map` mapped.
        unsafe { libc::munmap(self.map.cast(), self.map_len) };
    }
}
