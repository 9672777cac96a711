//! A guest's virtio-blk driver for one ring, that checks every completion: it
//! publishes requests (each a chain of three descriptors: header, 512 bytes of
//! data, status) in the guest memory of [`crate::mem`], reaps the used ring, and
//! counts, per request, how many times it completed.
//!
//! A completion of a head that is not outstanding — a request completed twice,
//! or never submitted — is recorded as an error; so is a used entry past the
//! ring's index. Heads are reused in FIFO order (52 requests before one comes
//! back), so within that many requests a repeated completion cannot pass for
//! another request's.
//!
//! # Examples
//!
//! ```
//! use switchover_testbed::blk::driver::{BlkDriver, Op};
//! use switchover_testbed::mem::GuestMem;
//! let mem = GuestMem::new(1).unwrap();
//! let mut d = BlkDriver::new(0);
//! let n = d.submit(&mem, Op::Write { sector: 8 }).unwrap();
//! assert_eq!((n, mem.avail_idx(0), d.outstanding()), (0, 1, 1));
//! assert_eq!(d.reap(&mem), 0); // no backend: nothing completed
//! ```

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use crate::error::RigError;
use crate::mem::{GuestMem, QSIZE, SLOTS};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// A request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Write the request's pattern to `sector`.
    Write {
        /// The sector.
        sector: u64,
    },
    /// Read `sector`.
    Read {
        /// The sector.
        sector: u64,
    },
    /// Flush.
    Flush,
}

/// The 512 bytes request `n` of ring `g` writes.
///
/// ```
/// use switchover_testbed::blk::driver::pattern;
/// assert_ne!(pattern(0, 1), pattern(0, 2));
/// assert_eq!(pattern(3, 9).len(), 512);
/// ```
pub fn pattern(g: u32, n: u32) -> Vec<u8> {
    (0..512u32).map(|i| (i.wrapping_mul(29) ^ g.wrapping_mul(101) ^ n.wrapping_mul(7919) ^ (n >> 8)) as u8).collect()
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    n: u32,
    op: Op,
    group: u16,
}

/// What happened to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// The request's number.
    pub n: u32,
    /// What it was.
    pub op: Op,
    /// Its status byte.
    pub status: u8,
    /// The data read (reads only).
    pub data: Vec<u8>,
}

/// The driver of one ring.
#[derive(Debug)]
pub struct BlkDriver {
    g: u32,
    avail: u16,
    used_seen: u16,
    free: VecDeque<u16>,
    out: HashMap<u16, Outstanding>,
    done: Vec<Done>,
    submitted: Vec<Op>,
    errors: Vec<String>,
}

impl BlkDriver {
    /// The driver of global ring `g` (its place in [`GuestMem`]), a fresh ring.
    pub fn new(g: u32) -> BlkDriver {
        BlkDriver {
            g,
            avail: 0,
            used_seen: 0,
            free: (0..SLOTS as u16).collect(),
            out: HashMap::new(),
            done: Vec::new(),
            submitted: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// The global ring.
    pub fn ring(&self) -> u32 {
        self.g
    }

    /// Publishes one request (does not kick); returns its number.
    ///
    /// # Errors
    /// Every slot is taken, or guest memory failed.
    pub fn submit(&mut self, mem: &GuestMem, op: Op) -> Result<u32, RigError> {
        let g = self.g;
        let group = self
            .free
            .pop_front()
            .ok_or_else(|| RigError::Guest(format!("ring {g}: {} requests outstanding, no slot free", self.out.len())))?;
        let n = self.submitted.len() as u32;
        let head = group * 3;
        let slot = GuestMem::slot(g, u64::from(group));
        let m = mem.mem();
        let e = |w: &str| RigError::memory(format!("ring {g}: {w}"));
        let (ty, sector, data_flags) = match op {
            Op::Write { sector } => (1u32, sector, 0),
            Op::Read { sector } => (0u32, sector, F_WRITE),
            Op::Flush => (4u32, 0, 0),
        };
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&ty.to_le_bytes());
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&hdr, GuestAddress(slot)).map_err(e("header"))?;
        let data = slot + 64;
        let content = if matches!(op, Op::Write { .. }) { pattern(g, n) } else { vec![0u8; 512] };
        m.write_slice(&content, GuestAddress(data)).map_err(e("data"))?;
        m.write_slice(&[0xff], GuestAddress(slot + 600)).map_err(e("status"))?;
        let desc = |i: u16, addr: u64, len: u32, flags: u16, next: u16| {
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            m.write_slice(&d, GuestAddress(GuestMem::desc(g) + 16 * u64::from(i))).map_err(e("descriptor"))
        };
        if op == Op::Flush {
            desc(head, slot, 16, F_NEXT, head + 2)?;
        } else {
            desc(head, slot, 16, F_NEXT, head + 1)?;
            desc(head + 1, data, 512, data_flags | F_NEXT, head + 2)?;
        }
        desc(head + 2, slot + 600, 1, F_WRITE, 0)?;
        let avail = GuestMem::avail(g);
        m.store(head, GuestAddress(avail + 4 + 2 * u64::from(self.avail % QSIZE)), std::sync::atomic::Ordering::Release)
            .map_err(e("avail ring"))?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.avail = self.avail.wrapping_add(1);
        m.store(self.avail, GuestAddress(avail + 2), std::sync::atomic::Ordering::Release).map_err(e("avail index"))?;
        self.out.insert(head, Outstanding { n, op, group });
        self.submitted.push(op);
        Ok(n)
    }

    /// Reaps the used ring: every new completion is matched with its request.
    /// Returns how many were reaped.
    pub fn reap(&mut self, mem: &GuestMem) -> usize {
        let used = mem.used_idx(self.g);
        let new = used.wrapping_sub(self.used_seen);
        if new > QSIZE {
            self.errors.push(format!("ring {}: used index {used} is {new} past {} (more than a ring)", self.g, self.used_seen));
            self.used_seen = used;
            return 0;
        }
        let m = mem.mem();
        let mut k = 0;
        while self.used_seen != used {
            let at = GuestMem::used(self.g) + 4 + 8 * u64::from(self.used_seen % QSIZE);
            let id: u32 = m.read_obj(GuestAddress(at)).unwrap_or(u32::MAX);
            self.used_seen = self.used_seen.wrapping_add(1);
            k += 1;
            let head = u16::try_from(id).unwrap_or(u16::MAX);
            let Some(o) = self.out.remove(&head) else {
                self.errors.push(format!("ring {}: head {id} completed but not outstanding (completed twice, or never submitted)", self.g));
                continue;
            };
            let slot = GuestMem::slot(self.g, u64::from(o.group));
            let mut st = [0u8; 1];
            let _ = m.read_slice(&mut st, GuestAddress(slot + 600));
            let mut data = Vec::new();
            if matches!(o.op, Op::Read { .. }) {
                data = vec![0u8; 512];
                let _ = m.read_slice(&mut data, GuestAddress(slot + 64));
            }
            self.done.push(Done { n: o.n, op: o.op, status: st[0], data });
            self.free.push_back(o.group);
        }
        k
    }

    /// Reaps until nothing is outstanding.
    ///
    /// # Errors
    /// Requests still outstanding after `timeout`, named by number.
    pub fn wait_all(&mut self, mem: &GuestMem, timeout: Duration) -> Result<(), RigError> {
        let t = Instant::now();
        loop {
            self.reap(mem);
            if self.out.is_empty() {
                return Ok(());
            }
            if t.elapsed() > timeout {
                let mut ns: Vec<u32> = self.out.values().map(|o| o.n).collect();
                ns.sort_unstable();
                return Err(RigError::Guest(format!(
                    "ring {}: {} request(s) never completed within {} ms: {ns:?} (avail {}, used {})",
                    self.g,
                    ns.len(),
                    timeout.as_millis(),
                    self.avail,
                    mem.used_idx(self.g)
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Requests outstanding.
    pub fn outstanding(&self) -> usize {
        self.out.len()
    }
    /// Requests submitted.
    pub fn submitted(&self) -> &[Op] {
        &self.submitted
    }
    /// Completions, in the order they were reaped.
    pub fn done(&self) -> &[Done] {
        &self.done
    }
    /// Completions seen that match no outstanding request.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }
    /// Requests published (`avail.idx`).
    pub fn avail(&self) -> u16 {
        self.avail
    }

    /// Checks that every request submitted completed exactly once with status OK.
    ///
    /// # Errors
    /// What is wrong, request by request.
    pub fn check_exactly_once(&self) -> Result<(), RigError> {
        let mut count = vec![0u32; self.submitted.len()];
        let mut bad = Vec::new();
        for d in &self.done {
            count[d.n as usize] += 1;
            if d.status != 0 {
                bad.push(format!("request {} status {}", d.n, d.status));
            }
        }
        for (n, c) in count.iter().enumerate() {
            if *c != 1 {
                bad.push(format!("request {n} completed {c} times"));
            }
        }
        bad.extend(self.errors.iter().cloned());
        if bad.is_empty() {
            Ok(())
        } else {
            Err(RigError::Guest(format!("ring {}: {}", self.g, bad.join("; "))))
        }
    }

    /// Whether completions came out of order: a request completed while one
    /// submitted before it had not (it completed later, or has not yet).
    pub fn out_of_order(&self) -> bool {
        let mut seen = vec![false; self.submitted.len()];
        for d in &self.done {
            if seen[..d.n as usize].iter().any(|s| !s) {
                return true;
            }
            seen[d.n as usize] = true;
        }
        false
    }
}
