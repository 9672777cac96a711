//! What the VMM tells the frontend about its guest memory and its rings.
//!
//! vhost-user backends map the VMM's memory from file descriptors (`SET_MEM_TABLE`)
//! and address rings by the frontend's virtual addresses (`SET_VRING_ADDR`). The
//! frontend also reads two indices of each ring from guest memory: to check that a
//! base a backend reports is possible, to drain a ring, and to recover a ring's
//! base when its backend is lost.
//!
//! # Examples
//!
//! ```
//! use switchover_vhost::memory::{GuestMemory, MemoryRegion, VringConfig};
//! /// A VMM's memory: one region, with the used ring's index at a known place.
//! struct OneRegion(Vec<u8>);
//! impl GuestMemory for OneRegion {
//!     fn regions(&self) -> Vec<MemoryRegion> {
//!         vec![MemoryRegion { guest_addr: 0, size: self.0.len() as u64, user_addr: self.0.as_ptr() as u64, fd: -1, fd_offset: 0 }]
//!     }
//!     fn read_u16(&self, gpa: u64) -> Option<u16> {
//!         let i = gpa as usize;
//!         Some(u16::from_le_bytes(self.0.get(i..i + 2)?.try_into().ok()?))
//!     }
//! }
//! let mut bytes = vec![0u8; 0x3000];
//! bytes[0x2002] = 9; // used->idx of a ring whose used ring is at 0x2000
//! let mem = OneRegion(bytes);
//! let ring = VringConfig { size: 256, desc: 0, avail: 0x1000, used: 0x2000 };
//! assert_eq!(mem.read_u16(ring.used_idx_addr()), Some(9));
//! assert_eq!(mem.hva(0x1000), Some(mem.0.as_ptr() as u64 + 0x1000));
//! ```

use std::os::fd::RawFd;

/// One region of guest memory, as `SET_MEM_TABLE` sends it.
///
/// ```
/// use switchover_vhost::memory::MemoryRegion;
/// let r = MemoryRegion { guest_addr: 0x1000, size: 0x1000, user_addr: 0x7f00_0000_0000, fd: 3, fd_offset: 0 };
/// assert!(r.contains(0x1fff) && !r.contains(0x2000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Guest physical address of its start.
    pub guest_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Where it is mapped in the VMM (the address backends translate from).
    pub user_addr: u64,
    /// The file descriptor backing it (memfd, hugetlbfs file), sent to backends.
    pub fd: RawFd,
    /// Offset of the region in that file.
    pub fd_offset: u64,
}

impl MemoryRegion {
    /// Whether `gpa` falls in the region.
    ///
    /// ```
    /// use switchover_vhost::memory::MemoryRegion;
    /// let r = MemoryRegion { guest_addr: 0, size: 16, user_addr: 0, fd: -1, fd_offset: 0 };
    /// assert!(r.contains(15));
    /// ```
    pub fn contains(&self, gpa: u64) -> bool {
        gpa >= self.guest_addr && gpa - self.guest_addr < self.size
    }
}

/// The VMM's guest memory.
pub trait GuestMemory: Send + Sync {
    /// Every region, in the order `SET_MEM_TABLE` lists them.
    fn regions(&self) -> Vec<MemoryRegion>;

    /// Reads a little-endian `u16` of guest memory (a ring's index), `None` outside
    /// guest memory. Must read what the guest and the backends see now (volatile).
    fn read_u16(&self, gpa: u64) -> Option<u16>;

    /// The VMM's address of a guest address, `None` outside guest memory.
    fn hva(&self, gpa: u64) -> Option<u64> {
        self.regions().iter().find(|r| r.contains(gpa)).map(|r| r.user_addr + (gpa - r.guest_addr))
    }
}

/// Where a ring lives and how big it is: what the guest driver programmed.
///
/// ```
/// use switchover_vhost::memory::VringConfig;
/// let r = VringConfig { size: 256, desc: 0x10000, avail: 0x11000, used: 0x12000 };
/// assert_eq!((r.avail_idx_addr(), r.used_idx_addr()), (0x11002, 0x12002));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringConfig {
    /// Number of descriptors.
    pub size: u16,
    /// Guest address of the descriptor table.
    pub desc: u64,
    /// Guest address of the available ring.
    pub avail: u64,
    /// Guest address of the used ring.
    pub used: u64,
}

impl VringConfig {
    /// Guest address of `avail->idx`.
    ///
    /// ```
    /// # use switchover_vhost::memory::VringConfig;
    /// assert_eq!(VringConfig { size: 8, desc: 0, avail: 100, used: 200 }.avail_idx_addr(), 102);
    /// ```
    pub fn avail_idx_addr(&self) -> u64 {
        self.avail + 2
    }
    /// Guest address of `used->idx`.
    ///
    /// ```
    /// # use switchover_vhost::memory::VringConfig;
    /// assert_eq!(VringConfig { size: 8, desc: 0, avail: 100, used: 200 }.used_idx_addr(), 202);
    /// ```
    pub fn used_idx_addr(&self) -> u64 {
        self.used + 2
    }
}
