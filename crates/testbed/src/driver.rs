//! A guest-side driver: writes virtio descriptor chains into the memory of the
//! side the guest runs on, publishes them in the available ring, kicks the
//! ring's kick eventfd (the one registered as the side's ioeventfd), and reaps
//! completions from the used ring, as a guest's virtio driver would.
//!
//! * net rx rings (even): one write-only 1 KiB buffer per request; the backend
//!   puts a packet in it whose bytes 12..16 are the used-ring position it
//!   completed at;
//! * net tx rings (odd): one 72-byte packet (virtio-net header + payload) whose
//!   bytes 12..20 name it: the ring and the request's sequence number;
//! * blk rings: header, one 512-byte data buffer, status byte (virtio-blk); a
//!   write puts a pattern unique to (ring, sequence number) on its own sector
//!   (`ring * 256 + seq`), a read reads one of them back.
//!
//! A ring's requests are numbered twice: `k`, its place in the avail ring of the
//! ring's current setup (it restarts at 0 when the guest resets or moves the
//! ring), and `seq`, over the ring's whole life (what names packets and sectors).
//!
//! # Examples
//!
//! ```
//! use switchover_testbed::driver::{blk_result, pattern, submit, BlkOp, DriverRing, RingKind};
//! use switchover_testbed::mem::GuestMem;
//! let mem = GuestMem::new(1).unwrap();
//! let mut r = DriverRing::new(0, switchover::ids::DeviceId(0), 0, RingKind::Blk);
//! submit(&mem, &mut r, BlkOp::Write).unwrap();
//! assert_eq!(mem.avail_idx(0), 1);
//! let (status, data) = blk_result(&mem, 0, 0);
//! assert_eq!(status, 0xff); // not completed: no backend serves this ring
//! assert_eq!(data, pattern(0, 0));
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

use vmm_sys_util::eventfd::EventFd;

use super::mem::{GuestMem, QSIZE, SLOT, SLOTS};
use crate::error::RigError;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// Sectors of a blk ring's own part of its image.
pub const SECTORS_PER_RING: u64 = 256;

/// What kind of ring.
///
/// # Examples
///
/// ```
/// use switchover_testbed::driver::{submit, BlkOp, DriverRing, RingKind};
/// use switchover_testbed::mem::GuestMem;
/// let mem = GuestMem::new(1).unwrap();
/// let mut rx = DriverRing::new(0, switchover::ids::DeviceId(0), 0, RingKind::NetRx);
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
/// let mut r = DriverRing::new(0, switchover::ids::DeviceId(0), 0, RingKind::Blk);
/// submit(&mem, &mut r, BlkOp::Write).unwrap();
/// submit(&mem, &mut r, BlkOp::Read(0)).unwrap(); // reads back what write 0 wrote
/// assert_eq!(r.avail, 2);
/// assert_eq!(blk_result(&mem, 0, 1).1, vec![0u8; 512]); // the backend fills it in
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkOp {
    /// Write the (ring, seq) pattern to the request's own sector.
    Write,
    /// Read the sector that the write numbered `seq` of this ring wrote.
    Read(u32),
}

/// One request the guest published and has not reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Its place in the avail ring of the ring's current setup.
    pub k: u16,
    /// Its number over the ring's life.
    pub seq: u32,
    /// What it is (net requests: `Write`).
    pub op: BlkOp,
}

/// What reaping found wrong with one completion.
pub type ReapError = String;

/// The driver's view of one ring.
///
/// # Examples
///
/// ```
/// use switchover_testbed::driver::{submit, BlkOp, DriverRing, RingKind};
/// use switchover_testbed::mem::GuestMem;
/// let mem = GuestMem::new(1).unwrap();
/// let mut r = DriverRing::new(0, switchover::ids::DeviceId(0), 1, RingKind::NetTx);
/// r.avail = u16::MAX;
/// submit(&mem, &mut r, BlkOp::Write).unwrap();
/// assert_eq!(r.avail, 0); // the index is free-running and wraps
/// assert_eq!(mem.avail_idx(0), 0);
/// ```
#[derive(Debug, Clone)]
pub struct DriverRing {
    /// Global ring index (its identity).
    pub g: u32,
    /// Its device.
    pub device: switchover::ids::DeviceId,
    /// Ring index within its device.
    pub ring: u32,
    /// Its kind.
    pub kind: RingKind,
    /// Requests published in the current setup (`avail.idx`).
    pub avail: u16,
    /// The guest-memory area the ring lives in now.
    pub area: u32,
    /// `avail` when the ring was last kicked.
    pub kicked: u16,
    /// Completions reaped in the current setup.
    pub reaped: u16,
    /// Requests ever published (the next request's `seq`).
    pub seq: u32,
    /// Whether the guest uses it (a ring of an inactive queue pair is not used).
    pub active: bool,
    /// Published and not yet reaped, by descriptor head.
    pub outstanding: BTreeMap<u16, Request>,
    /// Blk writes (seq) the guest saw completed with status 0.
    pub acked_writes: Vec<u32>,
    /// The last completed rx or read request of each slot: (seq, request k, op,
    /// the used-ring position it completed at).
    pub filled: BTreeMap<u64, (u32, u16, BlkOp, u16)>,
    /// Completions reaped over the ring's life.
    pub completions: u64,
    /// Blk writes published over the ring's life.
    pub writes: u32,
    /// The ring was torn down (reset, not set up again): the guest no longer
    /// reaps it, and its used index must stay at this.
    pub frozen_used: Option<u16>,
}

impl DriverRing {
    /// A ring in its own area (`g`), nothing published.
    pub fn new(g: u32, device: switchover::ids::DeviceId, ring: u32, kind: RingKind) -> DriverRing {
        DriverRing {
            g,
            device,
            ring,
            kind,
            avail: 0,
            area: g,
            kicked: 0,
            reaped: 0,
            seq: 0,
            active: true,
            outstanding: BTreeMap::new(),
            acked_writes: Vec::new(),
            filled: BTreeMap::new(),
            completions: 0,
            writes: 0,
            frozen_used: None,
        }
    }

    /// The guest set the ring up again (a reset, or a move to `area`): its
    /// indices restart at 0. Nothing may be outstanding.
    pub fn restart(&mut self, area: u32) {
        self.area = area;
        self.avail = 0;
        self.kicked = 0;
        self.reaped = 0;
        self.outstanding.clear();
        self.filled.clear();
    }

    /// Requests published and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.outstanding.len()
    }
}

/// The pattern the blk write numbered `seq` of global ring `g` writes.
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
pub fn pattern(g: u32, seq: u32) -> Vec<u8> {
    (0..512u32).map(|i| (i.wrapping_mul(31) ^ g.wrapping_mul(7) ^ seq.wrapping_mul(13) ^ (seq >> 8).wrapping_mul(101)) as u8).collect()
}

/// The sector the blk write numbered `seq` of a device's ring `ring` writes.
///
/// ```
/// use switchover_testbed::driver::sector;
/// assert_eq!(sector(1, 3), 259);
/// ```
pub fn sector(ring: u32, seq: u32) -> u64 {
    u64::from(ring) * SECTORS_PER_RING + u64::from(seq) % SECTORS_PER_RING
}

/// Publishes one request on `r` (does not kick). Returns its slot address.
///
/// # Errors
/// Guest memory access failed, or the ring has as many requests outstanding as
/// it has buffer slots.
///
/// # Examples
///
/// ```
/// use switchover_testbed::driver::{submit, BlkOp, DriverRing, RingKind};
/// use switchover_testbed::mem::GuestMem;
/// let mem = GuestMem::new(2).unwrap();
/// let mut tx = DriverRing::new(1, switchover::ids::DeviceId(0), 1, RingKind::NetTx);
/// assert_eq!(submit(&mem, &mut tx, BlkOp::Write).unwrap(), GuestMem::slot(1, 0));
/// assert_eq!(submit(&mem, &mut tx, BlkOp::Write).unwrap(), GuestMem::slot(1, 1));
/// assert_eq!((tx.avail, mem.avail_idx(1), mem.avail_idx(0)), (2, 2, 0));
/// ```
pub fn submit(mem: &GuestMem, r: &mut DriverRing, op: BlkOp) -> Result<u64, RigError> {
    if r.outstanding.len() as u64 >= SLOTS {
        return Err(RigError::Guest(format!("ring {}: {} requests outstanding, no free buffer slot", r.g, r.outstanding.len())));
    }
    let a = r.area;
    let g = r.g;
    let k = r.avail;
    let seq = r.seq;
    let m = mem.mem();
    let slot = GuestMem::slot(a, u64::from(k));
    let head = (u32::from(k) * 3 % u32::from(QSIZE)) as u16;
    let dt = GuestMem::desc(a);
    let wd = |i: u16, d: Descriptor| {
        m.write_obj(d, GuestAddress(dt + u64::from(i) * 16)).map_err(RigError::memory(format!("ring {g}: descriptor")))
    };
    let op = if r.kind == RingKind::Blk { op } else { BlkOp::Write };
    match r.kind {
        RingKind::NetRx => wd(head, Descriptor::new(slot, SLOT as u32, F_WRITE, 0))?,
        RingKind::NetTx => {
            let mut pkt = vec![0u8; 72];
            pkt[12..].iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
            pkt[12..16].copy_from_slice(&g.to_le_bytes());
            pkt[16..20].copy_from_slice(&seq.to_le_bytes());
            m.write_slice(&pkt, GuestAddress(slot)).map_err(RigError::memory(format!("ring {g}: packet")))?;
            wd(head, Descriptor::new(slot, 72, 0, 0))?;
        }
        RingKind::Blk => {
            let (ty, sector, data_flags) = match op {
                BlkOp::Write => (1u32, sector(r.ring, seq), 0),
                BlkOp::Read(w) => (0u32, sector(r.ring, w), F_WRITE),
            };
            let mut hdr = [0u8; 16];
            hdr[0..4].copy_from_slice(&ty.to_le_bytes());
            hdr[8..16].copy_from_slice(&sector.to_le_bytes());
            m.write_slice(&hdr, GuestAddress(slot)).map_err(RigError::memory(format!("ring {g}: header")))?;
            let data = slot + 64;
            if op == BlkOp::Write {
                m.write_slice(&pattern(g, seq), GuestAddress(data)).map_err(RigError::memory(format!("ring {g}: data")))?;
            } else {
                m.write_slice(&[0u8; 512], GuestAddress(data)).map_err(RigError::memory(format!("ring {g}: data")))?;
            }
            m.write_slice(&[0xff], GuestAddress(slot + 600)).map_err(RigError::memory(format!("ring {g}: status")))?;
            wd(head, Descriptor::new(slot, 16, F_NEXT, head + 1))?;
            wd(head + 1, Descriptor::new(data, 512, data_flags | F_NEXT, head + 2))?;
            wd(head + 2, Descriptor::new(slot + 600, 1, F_WRITE, 0))?;
        }
    }
    let avail = GuestMem::avail(a);
    m.store(head, GuestAddress(avail + 4 + 2 * u64::from(k % QSIZE)), Ordering::Release)
        .map_err(RigError::memory(format!("ring {g}: avail ring")))?;
    std::sync::atomic::fence(Ordering::SeqCst);
    r.avail = k.wrapping_add(1);
    r.seq += 1;
    if r.kind == RingKind::Blk && op == BlkOp::Write {
        r.writes += 1;
    }
    r.outstanding.insert(head, Request { k, seq, op });
    m.store(r.avail, GuestAddress(avail + 2), Ordering::Release).map_err(RigError::memory(format!("ring {g}: avail idx")))?;
    Ok(slot)
}

/// Reaps the completions the backend published since the last reap: each used
/// element names a request the guest has outstanding; a blk request's status
/// says whether it succeeded; an rx packet and a read's data are checked. Returns
/// how many were reaped.
///
/// # Errors
/// What is wrong: a used element naming no outstanding request (completed twice),
/// a failed status, a packet or data that is not what it should be.
///
/// ```
/// use switchover_testbed::driver::{reap, submit, BlkOp, DriverRing, RingKind};
/// use switchover_testbed::mem::GuestMem;
/// let mem = GuestMem::new(1).unwrap();
/// let mut r = DriverRing::new(0, switchover::ids::DeviceId(0), 1, RingKind::NetTx);
/// submit(&mem, &mut r, BlkOp::Write).unwrap();
/// assert_eq!(reap(&mem, &mut r), Ok(0)); // nothing completed yet
/// ```
pub fn reap(mem: &GuestMem, r: &mut DriverRing) -> Result<usize, ReapError> {
    if r.frozen_used.is_some() {
        return Ok(0);
    }
    let m = mem.mem();
    let used_gpa = GuestMem::used(r.area);
    let used = mem.used_idx(r.area);
    let mut n = 0;
    while r.reaped != used {
        let i = r.reaped;
        let elem = used_gpa + 4 + 8 * u64::from(i % QSIZE);
        let id: u32 = m.read_obj(GuestAddress(elem)).map_err(|e| format!("ring {}: used element: {e}", r.g))?;
        let len: u32 = m.read_obj(GuestAddress(elem + 4)).map_err(|e| format!("ring {}: used element: {e}", r.g))?;
        let head = id as u16;
        let Some(req) = r.outstanding.remove(&head) else {
            return Err(format!("ring {} used element {i}: descriptor {head} is not outstanding (completed twice?)", r.g));
        };
        let slot = GuestMem::slot(r.area, u64::from(req.k));
        match r.kind {
            RingKind::NetTx => {}
            RingKind::NetRx => {
                let mut pkt = [0u8; 72];
                m.read_slice(&mut pkt, GuestAddress(slot)).map_err(|e| format!("ring {}: rx buffer: {e}", r.g))?;
                let stamp = u32::from_le_bytes([pkt[12], pkt[13], pkt[14], pkt[15]]);
                if len != 72 || pkt[10] != 1 || stamp != u32::from(i) || pkt[16..] != rx_payload(r.ring)[4..] {
                    return Err(format!(
                        "ring {} rx request {}: not the packet completed at {i} (length {len}, stamp {stamp})",
                        r.g, req.k
                    ));
                }
                r.filled.insert(u64::from(req.k) % SLOTS, (req.seq, req.k, req.op, i));
            }
            RingKind::Blk => {
                let (st, data) = blk_result(mem, r.area, req.k);
                if st != 0 {
                    return Err(format!("ring {} blk request {} (seq {}) ended with status {st}", r.g, req.k, req.seq));
                }
                match req.op {
                    BlkOp::Write => r.acked_writes.push(req.seq),
                    BlkOp::Read(w) => {
                        if data != pattern(r.g, w) {
                            return Err(format!("ring {} read of write {w} returned other data", r.g));
                        }
                        r.filled.insert(u64::from(req.k) % SLOTS, (req.seq, req.k, req.op, i));
                    }
                }
            }
        }
        r.reaped = r.reaped.wrapping_add(1);
        r.completions += 1;
        n += 1;
    }
    Ok(n)
}

/// Checks that the rx packets and read data the guest reaped are in `mem` (the
/// memory of the side the guest runs on now): the last one of every buffer slot.
/// Returns how many were checked and the ones missing.
///
/// ```
/// use switchover_testbed::driver::{check_filled, DriverRing, RingKind};
/// use switchover_testbed::mem::GuestMem;
/// let mem = GuestMem::new(1).unwrap();
/// let r = DriverRing::new(0, switchover::ids::DeviceId(0), 0, RingKind::NetRx);
/// assert_eq!(check_filled(&mem, &r), (0, vec![])); // nothing received yet
/// ```
pub fn check_filled(mem: &GuestMem, r: &DriverRing) -> (usize, Vec<String>) {
    let m = mem.mem();
    let mut missing = Vec::new();
    for (&s, &(seq, k, op, pos)) in &r.filled {
        let slot = GuestMem::slot(r.area, s);
        let ok = match r.kind {
            RingKind::NetRx => {
                let mut pkt = [0u8; 72];
                m.read_slice(&mut pkt, GuestAddress(slot)).is_ok()
                    && pkt[10] == 1
                    && u32::from_le_bytes([pkt[12], pkt[13], pkt[14], pkt[15]]) == u32::from(pos)
                    && pkt[16..] == rx_payload(r.ring)[4..]
            }
            RingKind::Blk => match op {
                BlkOp::Read(w) => blk_result(mem, r.area, k).1 == pattern(r.g, w),
                BlkOp::Write => true,
            },
            RingKind::NetTx => true,
        };
        if !ok {
            missing.push(format!("ring {} request {k} (seq {seq})", r.g));
        }
    }
    (r.filled.len(), missing)
}

/// The payload the own net backend puts in an rx buffer of device ring `q`
/// (bytes 12..72 of the packet), before it overwrites the first four with the
/// used-ring position it completes the buffer at.
///
/// ```
/// assert_eq!(switchover_testbed::driver::rx_payload(2).len(), 60);
/// ```
pub fn rx_payload(q: u32) -> Vec<u8> {
    (0..60u32).map(|i| (i as u8) ^ (q as u8)).collect()
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

/// Waits until the guest has reaped, on every ring, every request it kicked.
///
/// # Errors
/// Names the rings that did not complete in time, or what reaping found wrong.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use switchover_testbed::driver::{submit, wait_all, BlkOp, DriverRing, RingKind};
/// use switchover_testbed::mem::GuestMem;
/// let mem = GuestMem::new(1).unwrap();
/// let name = |r: &DriverRing| format!("net0 ring {}", r.ring);
/// let mut r = DriverRing::new(0, switchover::ids::DeviceId(0), 1, RingKind::NetTx);
/// assert!(wait_all(&mem, &mut [r.clone()], &name, Duration::ZERO).is_ok()); // nothing published
/// submit(&mem, &mut r, BlkOp::Write).unwrap(); // no backend completes it
/// r.kicked = r.avail;
/// let e = wait_all(&mem, &mut [r], &name, Duration::from_millis(1)).unwrap_err().to_string();
/// assert!(e.contains("net0 ring 1 (avail 1, used 0)"), "{e}");
/// ```
pub fn wait_all(
    mem: &GuestMem,
    rings: &mut [DriverRing],
    names: &dyn Fn(&DriverRing) -> String,
    timeout: Duration,
) -> Result<(), RigError> {
    let t = Instant::now();
    loop {
        for r in rings.iter_mut() {
            reap(mem, r).map_err(RigError::Guest)?;
        }
        // Done when the guest has reaped what it kicked (a completion that lands
        // after the reap above is reaped on the next round).
        let late: Vec<&DriverRing> = rings.iter().filter(|r| r.reaped.wrapping_sub(r.kicked) >= 0x8000).collect();
        if late.is_empty() {
            return Ok(());
        }
        if t.elapsed() > timeout {
            let l: Vec<String> =
                late.iter().take(6).map(|r| format!("{} (avail {}, used {})", names(r), r.kicked, mem.used_idx(r.area))).collect();
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

/// The status byte and data of the blk request published as number `k` in area `a`.
///
/// # Examples
///
/// ```
/// use switchover_testbed::driver::{blk_result, pattern, submit, BlkOp, DriverRing, RingKind};
/// use switchover_testbed::mem::GuestMem;
/// let mem = GuestMem::new(3).unwrap();
/// let mut r = DriverRing::new(2, switchover::ids::DeviceId(0), 0, RingKind::Blk);
/// submit(&mem, &mut r, BlkOp::Write).unwrap();
/// submit(&mem, &mut r, BlkOp::Write).unwrap();
/// let (status, data) = blk_result(&mem, 2, 1);
/// assert_eq!(status, 0xff); // VIRTIO_BLK_S_OK (0) once a backend completes it
/// assert_eq!(data, pattern(2, 1));
/// ```
pub fn blk_result(mem: &GuestMem, a: u32, k: u16) -> (u8, Vec<u8>) {
    let slot = GuestMem::slot(a, u64::from(k));
    let mut st = [0u8; 1];
    let mut data = vec![0u8; 512];
    let _ = mem.mem().read_slice(&mut st, GuestAddress(slot + 600));
    let _ = mem.mem().read_slice(&mut data, GuestAddress(slot + 64));
    (st[0], data)
}
