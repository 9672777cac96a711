//! A guest-side driver: writes virtio descriptor chains into the shared guest
//! memory, publishes them in the available ring, and kicks the ring's kick eventfd
//! (the one registered as the side's ioeventfd), as a guest's virtio driver would.
//!
//! * net rx rings (even): one write-only 1 KiB buffer per request;
//! * net tx rings (odd): one 72-byte packet (virtio-net header + payload);
//! * blk rings: header, one 512-byte data buffer, status byte (virtio-blk); writes
//!   put a pattern unique to (ring, request) on sector `ring * 64 + request`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

use super::kvm::RealVm;
use super::mem::{GuestMem, QSIZE, SLOT};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// What kind of ring.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkOp {
    /// Write the (ring, request) pattern to the request's sector.
    Write,
    /// Read the sector that request `n` of this ring wrote.
    Read(u16),
}

/// The driver's view of one ring.
#[derive(Debug, Clone)]
pub struct DriverRing {
    /// Global ring index.
    pub g: u32,
    /// Ring index within its device.
    pub ring: u32,
    /// Its kind.
    pub kind: RingKind,
    /// Requests published so far (`avail.idx`).
    pub avail: u16,
}

/// The pattern request `n` of global ring `g` writes.
pub fn pattern(g: u32, n: u16) -> Vec<u8> {
    (0..512u32).map(|i| (i.wrapping_mul(31) ^ g.wrapping_mul(7) ^ u32::from(n).wrapping_mul(13)) as u8).collect()
}

/// Publishes one request on `r` (does not kick). Returns its slot address.
///
/// # Errors
/// Guest memory access failed.
pub fn submit(mem: &GuestMem, r: &mut DriverRing, op: BlkOp) -> Result<u64, String> {
    let g = r.g;
    let k = r.avail;
    let m = mem.mem();
    let slot = GuestMem::slot(g, u64::from(k));
    let head = (u32::from(k) * 3 % u32::from(QSIZE)) as u16;
    let dt = GuestMem::desc(g);
    let wd = |i: u16, d: Descriptor| m.write_obj(d, GuestAddress(dt + u64::from(i) * 16)).map_err(|e| format!("ring {g}: descriptor: {e}"));
    match r.kind {
        RingKind::NetRx => wd(head, Descriptor::new(slot, SLOT as u32, F_WRITE, 0))?,
        RingKind::NetTx => {
            let mut pkt = vec![0u8; 72];
            pkt[12..].iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
            m.write_slice(&pkt, GuestAddress(slot)).map_err(|e| format!("ring {g}: packet: {e}"))?;
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
            m.write_slice(&hdr, GuestAddress(slot)).map_err(|e| format!("ring {g}: header: {e}"))?;
            let data = slot + 64;
            if op == BlkOp::Write {
                m.write_slice(&pattern(g, k), GuestAddress(data)).map_err(|e| format!("ring {g}: data: {e}"))?;
            } else {
                m.write_slice(&[0u8; 512], GuestAddress(data)).map_err(|e| format!("ring {g}: data: {e}"))?;
            }
            m.write_slice(&[0xff], GuestAddress(slot + 600)).map_err(|e| format!("ring {g}: status: {e}"))?;
            wd(head, Descriptor::new(slot, 16, F_NEXT, head + 1))?;
            wd(head + 1, Descriptor::new(data, 512, data_flags | F_NEXT, head + 2))?;
            wd(head + 2, Descriptor::new(slot + 600, 1, F_WRITE, 0))?;
        }
    }
    let avail = GuestMem::avail(g);
    m.store(head, GuestAddress(avail + 4 + 2 * u64::from(k % QSIZE)), Ordering::Release)
        .map_err(|e| format!("ring {g}: avail ring: {e}"))?;
    std::sync::atomic::fence(Ordering::SeqCst);
    r.avail = k.wrapping_add(1);
    m.store(r.avail, GuestAddress(avail + 2), Ordering::Release).map_err(|e| format!("ring {g}: avail idx: {e}"))?;
    Ok(slot)
}

/// Kicks ring `g` through `vm`'s kick eventfd.
///
/// # Errors
/// The eventfd write failed.
pub fn kick(vm: &RealVm, g: u32) -> Result<(), String> {
    vm.ring(g).ok_or_else(|| format!("no ring {g}"))?.kick.write(1).map_err(|e| format!("ring {g}: kick: {e}"))
}

/// Waits until every ring's `used.idx` reaches its `avail`.
///
/// # Errors
/// Names the rings that did not complete in time.
pub fn wait_all(mem: &GuestMem, rings: &[DriverRing], names: &dyn Fn(&DriverRing) -> String, timeout: Duration) -> Result<(), String> {
    let t = Instant::now();
    loop {
        let late: Vec<&DriverRing> = rings.iter().filter(|r| mem.used_idx(r.g) != r.avail).collect();
        if late.is_empty() {
            return Ok(());
        }
        if t.elapsed() > timeout {
            let l: Vec<String> =
                late.iter().take(6).map(|r| format!("{} (avail {}, used {})", names(r), r.avail, mem.used_idx(r.g))).collect();
            return Err(format!(
                "{} ring(s) did not complete their requests within {} ms: {}",
                late.len(),
                timeout.as_millis(),
                l.join(", ")
            ));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// The status byte and data of the blk request published as number `k` on `g`.
pub fn blk_result(mem: &GuestMem, g: u32, k: u16) -> (u8, Vec<u8>) {
    let slot = GuestMem::slot(g, u64::from(k));
    let mut st = [0u8; 1];
    let mut data = vec![0u8; 512];
    let _ = mem.mem().read_slice(&mut st, GuestAddress(slot + 600));
    let _ = mem.mem().read_slice(&mut data, GuestAddress(slot + 64));
    (st[0], data)
}
