//! Guest memory: one memfd mapped once in this process and handed to every backend
//! with `SET_MEM_TABLE`. Source and destination share it, as a same-host migration
//! does; the rings and the request buffers live in it.
//!
//! Layout: ring `g` (global ring index over the topology) owns a 64 KiB area at
//! `GPA_BASE + g * RING_AREA`: descriptor table at +0, available ring at +0x1000,
//! used ring at +0x2000, request buffers (1 KiB slots) from +0x3000.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::Ordering;

use vhost::vhost_user::message::VhostUserMemoryRegion;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Guest-physical address of the first byte of guest memory.
pub const GPA_BASE: u64 = 0x1_0000_0000;
/// Ring size (descriptors) of every ring.
pub const QSIZE: u16 = 256;
/// Bytes of guest memory per ring.
pub const RING_AREA: u64 = 0x1_0000;
/// Offset of the request buffers in a ring's area.
const DATA_OFF: u64 = 0x3000;
/// Bytes per request slot.
pub const SLOT: u64 = 1024;
/// Request slots per ring.
pub const SLOTS: u64 = (RING_AREA - DATA_OFF) / SLOT;

/// memfd-backed guest memory.
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
    pub fn mem(&self) -> &GuestMemoryMmap<()> {
        &self.mem
    }

    /// The one memory region as `SET_MEM_TABLE` describes it, and its fd.
    pub fn region(&self) -> (VhostUserMemoryRegion, RawFd) {
        (VhostUserMemoryRegion::new(GPA_BASE, self.size, self.host_base, 0), self.fd)
    }

    /// This process's virtual address of a guest-physical address (what
    /// `SET_VRING_ADDR` carries).
    pub fn hva(&self, gpa: u64) -> u64 {
        self.host_base + (gpa - GPA_BASE)
    }

    /// Descriptor table of ring `g`.
    pub fn desc(g: u32) -> u64 {
        GPA_BASE + u64::from(g) * RING_AREA
    }
    /// Available ring of ring `g`.
    pub fn avail(g: u32) -> u64 {
        Self::desc(g) + 0x1000
    }
    /// Used ring of ring `g`.
    pub fn used(g: u32) -> u64 {
        Self::desc(g) + 0x2000
    }
    /// Request buffer `slot` of ring `g`.
    pub fn slot(g: u32, slot: u64) -> u64 {
        Self::desc(g) + DATA_OFF + (slot % SLOTS) * SLOT
    }

    /// The guest's `avail.idx` of ring `g`.
    pub fn avail_idx(&self, g: u32) -> u16 {
        self.mem.load::<u16>(GuestAddress(Self::avail(g) + 2), Ordering::Acquire).unwrap_or(0)
    }

    /// The backend's `used.idx` of ring `g`.
    pub fn used_idx(&self, g: u32) -> u16 {
        self.mem.load::<u16>(GuestAddress(Self::used(g) + 2), Ordering::Acquire).unwrap_or(0)
    }
}
