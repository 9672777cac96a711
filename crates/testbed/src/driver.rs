//! A guest-side driver: writes virtio descriptor chains into the shared guest
//! memory, publishes them in the available ring, and kicks the ring's kick eventfd
//! (the one registered as the side's ioeventfd), as a guest's virtio driver would.
//!
//! * net rx rings (even): one write-only 1 KiB buffer per request;
//! * net tx rings (odd): one 72-byte packet (virtio-net header + payload);
//! * blk rings: header, one 512-byte data buffer, status byte (virtio-blk); writes
//!   put a pattern unique to (ring, request) on sector `ring * 64 + request`.
//!
//! # Examples
//!
//! ```
//! use switchover_testbed::driver::{blk_result, pattern, submit, BlkOp, DriverRing, RingKind};
//! use switchover_testbed::mem::GuestMem;
//! let mem = GuestMem::new(1).unwrap();
//! let mut r = DriverRing { g: 0, device: switchover::ids::DeviceId(0), ring: 0, kind: RingKind::Blk, avail: 0 };
//! submit(&mem, &mut r, BlkOp::Write).unwrap();
//! assert_eq!(mem.avail_idx(0), 1);
//! let (status, data) = blk_result(&mem, 0, 0);
//! assert_eq!(status, 0xff); // not completed: no backend serves this ring
//! assert_eq!(data, pattern(0, 0));
//! ```

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

use vmm_sys_util::eventfd::EventFd;

use super::mem::{GuestMem, QSIZE, SLOT};
use crate::error::RigError;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// What kind of ring.
///
/// # Examples
///
/// ```
/// use switchover_testbed::driver::{submit, BlkOp, DriverRing, RingKind};
/// use switchover_testbed::mem::GuestMem;
/// let mem = GuestMem::new(1).unwrap();
/// let mut rx = DriverRing { g: 0, device: switchover::ids::DeviceId(0), ring: 0, kind: RingKind::NetRx, avail: 0 };
/// // An rx request is one empty buffer; the op only matters on blk rings.
/// assert_eq!(submit(&mem, &mut rx, BlkOp::Write).unwrap(), GuestMem::slot(0, 0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingKind {
    /// Net receive ring.
    NetRx,
    /// Net transmit ring.
    NetTx,
    /// Blk request ring.
    Blk,
}

/// A blk request.
///
/// # Examples
///
/// ```
/// use switchover_testbed::driver::{blk_result, submit, BlkOp, DriverRing, RingKind};
/// use switchover_testbed::mem::GuestMem;
/// let mem = GuestMem::new(1).unwrap();
/// let mut r = DriverRing { g: 0, device: switchover::ids::DeviceId(0), ring: 0, kind: RingKind::Blk, avail: 0 };
/// submit(&mem, &mut r, BlkOp::Write).unwrap();
/// submit(&mem, &mut r, BlkOp::Read(0)).unwrap(); // reads back what request 0 wrote
/// assert_eq!(r.avail, 2);
/// assert_eq!(blk_result(&mem, 0, 1).1, vec![0u8; 512]); // the backend fills it in
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkOp {
    /// Write the (ring, request) pattern to the request's sector.
    Write,
    /// Read the sector that request `n` of this ring wrote.
    Read(u16),
}

/// The driver's view of one ring.
///
/// # Examples
///
/// ```
/// use switchover_testbed::driver::{submit, BlkOp, DriverRing, RingKind};
/// use switchover_testbed::mem::GuestMem;
/// let mem = GuestMem::new(1).unwrap();
/// let mut r = DriverRing { g: 0, device: switchover::ids::DeviceId(0), ring: 1, kind: RingKind::NetTx, avail: u16::MAX };
/// submit(&mem, &mut r, BlkOp::Write).unwrap();
/// assert_eq!(r.avail, 0); // the index is free-running and wraps
/// assert_eq!(mem.avail_idx(0), 0);
/// ```
#[derive(Debug, Clone)]
pub struct DriverRing {
    /// Global ring index.
    pub g: u32,
    /// Its device.
    pub device: switchover::ids::DeviceId,
    /// Ring index within its device.
    pub ring: u32,
    /// Its kind.
    pub kind: RingKind,
    /// Requests published so far (`avail.idx`).
    pub avail: u16,
}

/// The pattern request `n` of global ring `g` writes.
///
/// # Examples
///
/// ```
/// use switchover_testbed::driver::pattern;
/// assert_eq!(pattern(1, 2).len(), 512);
/// assert_eq!(pattern(1, 2), pattern(1, 2));
/// assert_ne!(pattern(1, 2), pattern(1, 3));
/// assert_ne!(pattern(1, 2), pattern(2, 2));
/// ```
pub fn pattern(g: u32, n: u16) -> Vec<u8> {
    (0..512u32).map(|i| (i.wrapping_mul(31) ^ g.wrapping_mul(7) ^ u32::from(n).wrapping_mul(13)) as u8).collect()
}

/// Publishes one request on `r` (does not kick). Returns its slot address.
///
/// # Errors
/// Guest memory access failed.
///
/// # Examples
///
/// ```
/// use switchover_testbed::driver::{submit, BlkOp, DriverRing, RingKind};
/// use switchover_testbed::mem::GuestMem;
/// let mem = GuestMem::new(2).unwrap();
/// let mut tx = DriverRing { g: 1, device: switchover::ids::DeviceId(0), ring: 1, kind: RingKind::NetTx, avail: 0 };
/// assert_eq!(submit(&mem, &mut tx, BlkOp::Write).unwrap(), GuestMem::slot(1, 0));
/// assert_eq!(submit(&mem, &mut tx, BlkOp::Write).unwrap(), GuestMem::slot(1, 1));
/// assert_eq!((tx.avail, mem.avail_idx(1), mem.avail_idx(0)), (2, 2, 0));
/// ```
pub fn submit(mem: &GuestMem, r: &mut DriverRing, op: BlkOp) -> Result<u64, RigError> {
    let g = r.g;
    let k = r.avail;
    let m = mem.mem();
    let slot = GuestMem::slot(g, u64::from(k));
    let head = (u32::from(k) * 3 % u32::from(QSIZE)) as u16;
    let dt = GuestMem::desc(g);
    let wd = |i: u16, d: Descriptor| {
        m.write_obj(d, GuestAddress(dt + u64::from(i) * 16)).map_err(RigError::memory(format!("ring {g}: descriptor")))
    };
    match r.kind {
        RingKind::NetRx => wd(head, Descriptor::new(slot, SLOT as u32, F_WRITE, 0))?,
        RingKind::NetTx => {
            let mut pkt = vec![0u8; 72];
            pkt[12..].iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
            m.write_slice(&pkt, GuestAddress(slot)).map_err(RigError::memory(format!("ring {g}: packet")))?;
            wd(head, Descriptor::new(slot, 72, 0, 0))?;
        }
        RingKind::Blk => {
            let (ty, sector_of, data_flags) = match op {
                BlkOp::Write => (1u32, k, 0),
                BlkOp::Read(n) => (0u32, n, F_WRITE),
            };
            let sector = u64::from(r.ring) * 64 + u64::from(sector_of);
            let mut hdr = [0u8; 16];
            hdr[0..4].copy_from_slice(&ty.to_le_bytes());
            hdr[8..16].copy_from_slice(&sector.to_le_bytes());
            m.write_slice(&hdr, GuestAddress(slot)).map_err(RigError::memory(format!("ring {g}: header")))?;
            let data = slot + 64;
            if op == BlkOp::Write {
                m.write_slice(&pattern(g, k), GuestAddress(data)).map_err(RigError::memory(format!("ring {g}: data")))?;
            } else {
                m.write_slice(&[0u8; 512], GuestAddress(data)).map_err(RigError::memory(format!("ring {g}: data")))?;
            }
            m.write_slice(&[0xff], GuestAddress(slot + 600)).map_err(RigError::memory(format!("ring {g}: status")))?;
            wd(head, Descriptor::new(slot, 16, F_NEXT, head + 1))?;
            wd(head + 1, Descriptor::new(data, 512, data_flags | F_NEXT, head + 2))?;
            wd(head + 2, Descriptor::new(slot + 600, 1, F_WRITE, 0))?;
        }
    }
    let avail = GuestMem::avail(g);
    m.store(head, GuestAddress(avail + 4 + 2 * u64::from(k % QSIZE)), Ordering::Release)
        .map_err(RigError::memory(format!("ring {g}: avail ring")))?;
    std::sync::atomic::fence(Ordering::SeqCst);
    r.avail = k.wrapping_add(1);
    m.store(r.avail, GuestAddress(avail + 2), Ordering::Release).map_err(RigError::memory(format!("ring {g}: avail idx")))?;
    Ok(slot)
}

/// Kicks a ring: writes its kick eventfd, as a guest's doorbell write does
/// through the ring's ioeventfd.
///
/// # Errors
/// The eventfd write failed.
///
/// ```
/// use switchover_testbed::driver::kick;
/// use vmm_sys_util::eventfd::EventFd;
/// let fd = EventFd::new(0).unwrap();
/// kick(&fd).unwrap();
/// assert_eq!(fd.read().unwrap(), 1);
/// ```
pub fn kick(fd: &EventFd) -> Result<(), RigError> {
    fd.write(1).map_err(RigError::io("kick"))
}

/// Waits until every ring's `used.idx` reaches its `avail`.
///
/// # Errors
/// Names the rings that did not complete in time.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use switchover_testbed::driver::{submit, wait_all, BlkOp, DriverRing, RingKind};
/// use switchover_testbed::mem::GuestMem;
/// let mem = GuestMem::new(1).unwrap();
/// let name = |r: &DriverRing| format!("net0 ring {}", r.ring);
/// let mut r = DriverRing { g: 0, device: switchover::ids::DeviceId(0), ring: 1, kind: RingKind::NetTx, avail: 0 };
/// assert!(wait_all(&mem, &[r.clone()], &name, Duration::ZERO).is_ok()); // nothing published
/// submit(&mem, &mut r, BlkOp::Write).unwrap(); // no backend completes it
/// let e = wait_all(&mem, &[r], &name, Duration::from_millis(1)).unwrap_err().to_string();
/// assert!(e.contains("net0 ring 1 (avail 1, used 0)"), "{e}");
/// ```
pub fn wait_all(mem: &GuestMem, rings: &[DriverRing], names: &dyn Fn(&DriverRing) -> String, timeout: Duration) -> Result<(), RigError> {
    let t = Instant::now();
    loop {
        let late: Vec<&DriverRing> = rings.iter().filter(|r| mem.used_idx(r.g) != r.avail).collect();
        if late.is_empty() {
            return Ok(());
        }
        if t.elapsed() > timeout {
            let l: Vec<String> =
                late.iter().take(6).map(|r| format!("{} (avail {}, used {})", names(r), r.avail, mem.used_idx(r.g))).collect();
            return Err(RigError::Guest(format!(
                "{} ring(s) did not complete their requests within {} ms: {}",
                late.len(),
                timeout.as_millis(),
                l.join(", ")
            )));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// The status byte and data of the blk request published as number `k` on `g`.
///
/// # Examples
///
/// ```
/// use switchover_testbed::driver::{blk_result, pattern, submit, BlkOp, DriverRing, RingKind};
/// use switchover_testbed::mem::GuestMem;
/// let mem = GuestMem::new(3).unwrap();
/// let mut r = DriverRing { g: 2, device: switchover::ids::DeviceId(0), ring: 0, kind: RingKind::Blk, avail: 0 };
/// submit(&mem, &mut r, BlkOp::Write).unwrap();
/// submit(&mem, &mut r, BlkOp::Write).unwrap();
/// let (status, data) = blk_result(&mem, 2, 1);
/// assert_eq!(status, 0xff); // VIRTIO_BLK_S_OK (0) once a backend completes it
/// assert_eq!(data, pattern(2, 1));
/// ```
pub fn blk_result(mem: &GuestMem, g: u32, k: u16) -> (u8, Vec<u8>) {
    let slot = GuestMem::slot(g, u64::from(k));
    let mut st = [0u8; 1];
    let mut data = vec![0u8; 512];
    let _ = mem.mem().read_slice(&mut st, GuestAddress(slot + 600));
    let _ = mem.mem().read_slice(&mut data, GuestAddress(slot + 64));
    (st[0], data)
}
