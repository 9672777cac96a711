//! Guest memory: one memfd mapped once in this process and handed to every backend
//! with `SET_MEM_TABLE`. Source and destination share it, as a same-host migration
//! does; the rings and the request buffers live in it.
//!
//! Layout: ring `g` (global ring index over the topology) owns a 64 KiB area at
//! `GPA_BASE + g * RING_AREA`: descriptor table at +0, available ring at +0x1000,
//! used ring at +0x2000, request buffers (1 KiB slots) from +0x3000.
//!
//! # Examples
//!
//! ```
//! use switchover_testbed::mem::{GuestMem, GPA_BASE, RING_AREA};
//! assert_eq!(GuestMem::desc(1), GPA_BASE + RING_AREA);
//! assert_eq!(GuestMem::avail(1), GPA_BASE + RING_AREA + 0x1000);
//! assert_eq!(GuestMem::used(1), GPA_BASE + RING_AREA + 0x2000);
//! assert_eq!(GuestMem::slot(1, 0), GPA_BASE + RING_AREA + 0x3000);
//! ```

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::Ordering;

use switchover_vhost::memory::{GuestMemory, MemoryRegion, VringConfig};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Guest-physical address of the first byte of guest memory.
///
/// # Examples
///
/// ```
/// use switchover_testbed::mem::{GuestMem, GPA_BASE};
/// let m = GuestMem::new(1).unwrap();
/// assert_eq!(m.region().guest_addr, GPA_BASE);
/// assert_eq!(GuestMem::desc(0), GPA_BASE);
/// ```
pub const GPA_BASE: u64 = 0x1_0000_0000;
/// Ring size (descriptors) of every ring.
///
/// # Examples
///
/// ```
/// use switchover_vhost::reply::check_base;
/// use switchover_testbed::mem::QSIZE;
/// assert_eq!(QSIZE, 256);
/// // A base can never be more than a ring's worth of requests past `used`.
/// assert!(check_base(QSIZE + 1, 0, u16::MAX, QSIZE).is_err());
/// ```
pub const QSIZE: u16 = 256;
/// Bytes of guest memory per ring.
///
/// # Examples
///
/// ```
/// use switchover_testbed::mem::{GuestMem, RING_AREA};
/// assert_eq!(GuestMem::desc(3) - GuestMem::desc(2), RING_AREA);
/// assert_eq!(GuestMem::new(4).unwrap().region().size, 4 * RING_AREA);
/// ```
pub const RING_AREA: u64 = 0x1_0000;
/// Offset of the request buffers in a ring's area.
const DATA_OFF: u64 = 0x3000;
/// Bytes per request slot.
///
/// # Examples
///
/// ```
/// use switchover_testbed::mem::{GuestMem, SLOT};
/// assert_eq!(GuestMem::slot(0, 1) - GuestMem::slot(0, 0), SLOT);
/// ```
pub const SLOT: u64 = 1024;
/// Request slots per ring.
///
/// # Examples
///
/// ```
/// use switchover_testbed::mem::{GuestMem, SLOTS};
/// assert_eq!(SLOTS, 52);
/// assert_eq!(GuestMem::slot(0, SLOTS), GuestMem::slot(0, 0)); // slots are reused round-robin
/// ```
pub const SLOTS: u64 = (RING_AREA - DATA_OFF) / SLOT;

/// memfd-backed guest memory.
///
/// # Examples
///
/// ```
/// use switchover_testbed::mem::GuestMem;
/// let m = GuestMem::new(2).unwrap();
/// assert_eq!((m.avail_idx(1), m.used_idx(1)), (0, 0)); // fresh rings are empty
/// ```
#[derive(Debug)]
pub struct GuestMem {
    mem: GuestMemoryMmap<()>,
    host_base: u64,
    size: u64,
    fd: RawFd,
}

impl GuestMem {
    /// Memory for `rings` rings.
    ///
    /// # Errors
    /// memfd or mmap failures.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchover_testbed::mem::{GuestMem, RING_AREA};
    /// let m = GuestMem::new(3).unwrap();
    /// let region = m.region();
    /// assert_eq!(region.size, 3 * RING_AREA);
    /// assert!(region.fd >= 0);
    /// ```
    pub fn new(rings: usize) -> io::Result<GuestMem> {
        let size = (rings.max(1) as u64) * RING_AREA;
        let name = c"switchover-guest";
        // SAFETY: memfd_create with a valid NUL-terminated name.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size)?;
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files(&[(GuestAddress(GPA_BASE), size as usize, Some(FileOffset::new(file, 0)))])
            .map_err(|e| io::Error::other(format!("mmap guest memory: {e}")))?;
        let region = mem.find_region(GuestAddress(GPA_BASE)).ok_or_else(|| io::Error::other("guest memory region missing"))?;
        let host_base = region.as_ptr() as u64;
        let fd = region.file_offset().map(|f| f.file().as_raw_fd()).ok_or_else(|| io::Error::other("guest memory is not fd-backed"))?;
        Ok(GuestMem { mem, host_base, size, fd })
    }

    /// The mapping.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchover_testbed::mem::GuestMem;
    /// use vm_memory::{Bytes, GuestAddress};
    /// let m = GuestMem::new(1).unwrap();
    /// m.mem().write_obj(7u16, GuestAddress(GuestMem::avail(0) + 2)).unwrap();
    /// assert_eq!(m.avail_idx(0), 7);
    /// ```
    pub fn mem(&self) -> &GuestMemoryMmap<()> {
        &self.mem
    }

    /// The one region, as `SET_MEM_TABLE` sends it.
    ///
    /// ```
    /// use switchover_testbed::mem::{GuestMem, GPA_BASE, RING_AREA};
    /// let m = GuestMem::new(2).unwrap();
    /// let r = m.region();
    /// assert_eq!((r.guest_addr, r.size), (GPA_BASE, 2 * RING_AREA));
    /// assert!(r.fd >= 0);
    /// ```
    pub fn region(&self) -> MemoryRegion {
        MemoryRegion { guest_addr: GPA_BASE, size: self.size, user_addr: self.host_base, fd: self.fd, fd_offset: 0 }
    }

    /// This process's address of a guest address inside guest memory.
    ///
    /// ```
    /// use switchover_testbed::mem::GuestMem;
    /// let m = GuestMem::new(1).unwrap();
    /// assert_eq!(m.host_addr(GuestMem::avail(0)) - m.host_addr(GuestMem::desc(0)), 0x1000);
    /// ```
    pub fn host_addr(&self, gpa: u64) -> u64 {
        self.host_base + (gpa - GPA_BASE)
    }

    /// Where ring `g` lives.
    ///
    /// ```
    /// use switchover_testbed::mem::{GuestMem, QSIZE};
    /// let v = GuestMem::vring(3);
    /// assert_eq!((v.size, v.desc, v.avail, v.used), (QSIZE, GuestMem::desc(3), GuestMem::avail(3), GuestMem::used(3)));
    /// ```
    pub fn vring(g: u32) -> VringConfig {
        VringConfig { size: QSIZE, desc: Self::desc(g), avail: Self::avail(g), used: Self::used(g) }
    }

    /// Descriptor table of ring `g`.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchover_testbed::mem::{GuestMem, GPA_BASE, RING_AREA};
    /// assert_eq!(GuestMem::desc(2), GPA_BASE + 2 * RING_AREA);
    /// ```
    pub fn desc(g: u32) -> u64 {
        GPA_BASE + u64::from(g) * RING_AREA
    }
    /// Available ring of ring `g`.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchover_testbed::mem::GuestMem;
    /// assert_eq!(GuestMem::avail(5), GuestMem::desc(5) + 0x1000);
    /// ```
    pub fn avail(g: u32) -> u64 {
        Self::desc(g) + 0x1000
    }
    /// Used ring of ring `g`.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchover_testbed::mem::GuestMem;
    /// assert_eq!(GuestMem::used(5), GuestMem::desc(5) + 0x2000);
    /// ```
    pub fn used(g: u32) -> u64 {
        Self::desc(g) + 0x2000
    }
    /// Request buffer `slot` of ring `g`.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchover_testbed::mem::{GuestMem, SLOT};
    /// assert_eq!(GuestMem::slot(0, 2), GuestMem::desc(0) + 0x3000 + 2 * SLOT);
    /// ```
    pub fn slot(g: u32, slot: u64) -> u64 {
        Self::desc(g) + DATA_OFF + (slot % SLOTS) * SLOT
    }

    /// The guest's `avail.idx` of ring `g`.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchover_testbed::driver::{submit, BlkOp, DriverRing, RingKind};
    /// use switchover_testbed::mem::GuestMem;
    /// let m = GuestMem::new(1).unwrap();
    /// let mut r = DriverRing { g: 0, device: switchover::ids::DeviceId(0), ring: 1, kind: RingKind::NetTx, avail: 0 };
    /// submit(&m, &mut r, BlkOp::Write).unwrap();
    /// assert_eq!(m.avail_idx(0), 1);
    /// ```
    pub fn avail_idx(&self, g: u32) -> u16 {
        self.mem.load::<u16>(GuestAddress(Self::avail(g) + 2), Ordering::Acquire).unwrap_or(0)
    }

    /// The backend's `used.idx` of ring `g`.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchover_testbed::mem::GuestMem;
    /// use vm_memory::{Bytes, GuestAddress};
    /// let m = GuestMem::new(1).unwrap();
    /// assert_eq!(m.used_idx(0), 0);
    /// // What a backend does when it completes three requests:
    /// m.mem().write_obj(3u16, GuestAddress(GuestMem::used(0) + 2)).unwrap();
    /// assert_eq!(m.used_idx(0), 3);
    /// ```
    pub fn used_idx(&self, g: u32) -> u16 {
        self.mem.load::<u16>(GuestAddress(Self::used(g) + 2), Ordering::Acquire).unwrap_or(0)
    }
}

impl GuestMemory for GuestMem {
    fn regions(&self) -> Vec<MemoryRegion> {
        vec![self.region()]
    }
    fn read_u16(&self, gpa: u64) -> Option<u16> {
        self.mem.load::<u16>(GuestAddress(gpa), Ordering::Acquire).ok()
    }
}
