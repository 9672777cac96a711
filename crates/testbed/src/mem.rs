//! Guest memory of one side: a memfd mapped once in this process and handed to
//! the side's backends with `SET_MEM_TABLE`. Source and destination each have
//! their own, as two hosts do: the rig's migration copies pages from one to the
//! other (precopy passes, then the final pass in the window).
//!
//! Every write the guest driver makes goes through vm-memory with an
//! [`AtomicBitmap`], the rig's stand-in for KVM's dirty log of the vCPUs' writes:
//! [`GuestMem::take_guest_dirty`] reads and clears it. The backends' writes are not
//! in it (they write through their own mappings): they reach the destination
//! through the vhost dirty log only.
//!
//! Layout: area `a` is 64 KiB at `GPA_BASE + a * RING_AREA`: descriptor table at
//! +0, available ring at +0x1000, used ring at +0x2000, request buffers (1 KiB
//! slots) from +0x3000. Ring `g` (global ring index over the topology) starts in
//! area `g`; areas past the last ring are spare, for rings the guest moves.
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
use std::ops::Deref;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::Ordering;

use switchover_vhost::log::{DirtyPages, PAGE};
use switchover_vhost::memory::{GuestMemory, MemoryRegion, VringConfig};
use vm_memory::bitmap::AtomicBitmap;
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
/// Bytes of guest memory per area (one ring and its buffers).
///
/// # Examples
///
/// ```
/// use switchover_testbed::mem::{GuestMem, RING_AREA};
/// assert_eq!(GuestMem::desc(3) - GuestMem::desc(2), RING_AREA);
/// assert_eq!(GuestMem::new(4).unwrap().region().size, 4 * RING_AREA);
/// ```
pub const RING_AREA: u64 = 0x1_0000;
/// Offset of the request buffers in an area.
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
/// Request slots per area.
///
/// # Examples
///
/// ```
/// use switchover_testbed::mem::{GuestMem, SLOTS};
/// assert_eq!(SLOTS, 52);
/// assert_eq!(GuestMem::slot(0, SLOTS), GuestMem::slot(0, 0)); // slots are reused round-robin
/// ```
pub const SLOTS: u64 = (RING_AREA - DATA_OFF) / SLOT;

/// memfd-backed guest memory of one side.
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
    mem: GuestMemoryMmap<AtomicBitmap>,
    host_base: u64,
    size: u64,
    fd: RawFd,
}

impl GuestMem {
    /// Memory of `areas` areas (64 KiB each).
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
    pub fn new(areas: usize) -> io::Result<GuestMem> {
        let size = (areas.max(1) as u64) * RING_AREA;
        let name = c"switchover-guest";
        // SAFETY: memfd_create with a valid NUL-terminated name.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size)?;
        let mem = GuestMemoryMmap::<AtomicBitmap>::from_ranges_with_files(&[(
            GuestAddress(GPA_BASE),
            size as usize,
            Some(FileOffset::new(file, 0)),
        )])
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
    pub fn mem(&self) -> &GuestMemoryMmap<AtomicBitmap> {
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

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
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

    /// Where the ring in area `a` lives.
    ///
    /// ```
    /// use switchover_testbed::mem::{GuestMem, QSIZE};
    /// let v = GuestMem::vring(3);
    /// assert_eq!((v.size, v.desc, v.avail, v.used), (QSIZE, GuestMem::desc(3), GuestMem::avail(3), GuestMem::used(3)));
    /// ```
    pub fn vring(a: u32) -> VringConfig {
        VringConfig { size: QSIZE, desc: Self::desc(a), avail: Self::avail(a), used: Self::used(a) }
    }

    /// Descriptor table of area `a`.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchover_testbed::mem::{GuestMem, GPA_BASE, RING_AREA};
    /// assert_eq!(GuestMem::desc(2), GPA_BASE + 2 * RING_AREA);
    /// ```
    pub fn desc(a: u32) -> u64 {
        GPA_BASE + u64::from(a) * RING_AREA
    }
    /// Available ring of area `a`.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchover_testbed::mem::GuestMem;
    /// assert_eq!(GuestMem::avail(5), GuestMem::desc(5) + 0x1000);
    /// ```
    pub fn avail(a: u32) -> u64 {
        Self::desc(a) + 0x1000
    }
    /// Used ring of area `a`.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchover_testbed::mem::GuestMem;
    /// assert_eq!(GuestMem::used(5), GuestMem::desc(5) + 0x2000);
    /// ```
    pub fn used(a: u32) -> u64 {
        Self::desc(a) + 0x2000
    }
    /// Request buffer `slot` of area `a`.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchover_testbed::mem::{GuestMem, SLOT};
    /// assert_eq!(GuestMem::slot(0, 2), GuestMem::desc(0) + 0x3000 + 2 * SLOT);
    /// ```
    pub fn slot(a: u32, slot: u64) -> u64 {
        Self::desc(a) + DATA_OFF + (slot % SLOTS) * SLOT
    }

    /// The guest's `avail.idx` of the ring in area `a`.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchover_testbed::driver::{submit, BlkOp, DriverRing, RingKind};
    /// use switchover_testbed::mem::GuestMem;
    /// let m = GuestMem::new(1).unwrap();
    /// let mut r = DriverRing::new(0, switchover::ids::DeviceId(0), 1, RingKind::NetTx);
    /// submit(&m, &mut r, BlkOp::Write).unwrap();
    /// assert_eq!(m.avail_idx(0), 1);
    /// ```
    pub fn avail_idx(&self, a: u32) -> u16 {
        self.mem.load::<u16>(GuestAddress(Self::avail(a) + 2), Ordering::Acquire).unwrap_or(0)
    }

    /// The backend's `used.idx` of the ring in area `a`.
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
    pub fn used_idx(&self, a: u32) -> u16 {
        self.mem.load::<u16>(GuestAddress(Self::used(a) + 2), Ordering::Acquire).unwrap_or(0)
    }

    fn region_bitmap(&self) -> Option<&AtomicBitmap> {
        self.mem.find_region(GuestAddress(GPA_BASE)).map(|r| r.deref().bitmap())
    }

    /// Reads and clears the pages the guest driver wrote since the last call (the
    /// rig's stand-in for KVM's dirty log of the vCPUs' writes).
    ///
    /// ```
    /// use switchover_testbed::mem::{GuestMem, GPA_BASE};
    /// use vm_memory::{Bytes, GuestAddress};
    /// let m = GuestMem::new(2).unwrap();
    /// let _ = m.take_guest_dirty();
    /// m.mem().write_obj(1u32, GuestAddress(GPA_BASE + 0x1_2000)).unwrap();
    /// assert_eq!(m.take_guest_dirty().pages().collect::<Vec<_>>(), [GPA_BASE + 0x1_2000]);
    /// assert!(m.take_guest_dirty().is_empty());
    /// ```
    pub fn take_guest_dirty(&self) -> DirtyPages {
        let mut out = DirtyPages::new(GPA_BASE, self.size);
        if let Some(b) = self.region_bitmap() {
            for (w, bits) in b.get_and_reset().into_iter().enumerate() {
                let mut x = bits;
                while x != 0 {
                    let bit = u64::from(x.trailing_zeros());
                    out.insert(GPA_BASE + (w as u64 * 64 + bit) * PAGE);
                    x &= x - 1;
                }
            }
        }
        out
    }

    /// Copies `pages` of this memory into `to` (a RAM pass); returns how many.
    ///
    /// ```
    /// use switchover_testbed::mem::{GuestMem, GPA_BASE};
    /// use switchover_vhost::log::DirtyPages;
    /// use vm_memory::{Bytes, GuestAddress};
    /// let (a, b) = (GuestMem::new(1).unwrap(), GuestMem::new(1).unwrap());
    /// a.mem().write_obj(0xabcdu16, GuestAddress(GPA_BASE + 0x2002)).unwrap();
    /// let mut d = DirtyPages::new(GPA_BASE, a.size());
    /// d.insert(GPA_BASE + 0x2002);
    /// assert_eq!(a.copy_pages(&b, &d), 1);
    /// assert_eq!(b.used_idx(0), 0xabcd);
    /// ```
    pub fn copy_pages(&self, to: &GuestMem, pages: &DirtyPages) -> u64 {
        let mut n = 0;
        for gpa in pages.pages() {
            if gpa < GPA_BASE || gpa + PAGE > GPA_BASE + self.size.min(to.size) {
                continue;
            }
            let off = (gpa - GPA_BASE) as usize;
            // SAFETY: both ranges lie inside the two mappings (checked above) and do
            // not overlap (two memfds). The source may be written concurrently by a
            // backend, as a real RAM pass races with the guest: whatever changes
            // after the copy is dirty again and copied by a later pass.
            unsafe {
                std::ptr::copy_nonoverlapping((self.host_base as *const u8).add(off), (to.host_base as *mut u8).add(off), PAGE as usize);
            }
            n += 1;
        }
        n
    }

    /// Every page of this memory.
    pub fn all_pages(&self) -> DirtyPages {
        let mut d = DirtyPages::new(GPA_BASE, self.size);
        let mut gpa = GPA_BASE;
        while gpa < GPA_BASE + self.size {
            d.insert(gpa);
            gpa += PAGE;
        }
        d
    }

    /// The pages whose content differs between this memory and `other`.
    ///
    /// ```
    /// use switchover_testbed::mem::{GuestMem, GPA_BASE};
    /// use vm_memory::{Bytes, GuestAddress};
    /// let (a, b) = (GuestMem::new(1).unwrap(), GuestMem::new(1).unwrap());
    /// assert!(a.differing_pages(&b).is_empty());
    /// a.mem().write_obj(1u8, GuestAddress(GPA_BASE + 0x5000)).unwrap();
    /// assert_eq!(a.differing_pages(&b), [GPA_BASE + 0x5000]);
    /// ```
    pub fn differing_pages(&self, other: &GuestMem) -> Vec<u64> {
        let n = self.size.min(other.size) / PAGE;
        (0..n)
            .filter(|p| {
                let off = (p * PAGE) as usize;
                // SAFETY: both pages lie inside the two mappings.
                let (a, b) = unsafe {
                    (
                        std::slice::from_raw_parts((self.host_base as *const u8).add(off), PAGE as usize),
                        std::slice::from_raw_parts((other.host_base as *const u8).add(off), PAGE as usize),
                    )
                };
                a != b
            })
            .map(|p| GPA_BASE + p * PAGE)
            .collect()
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
