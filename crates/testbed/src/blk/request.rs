//! virtio-blk requests on a split ring: the descriptor chain of a head parsed
//! into a request, and the request's host I/O on the image.
//!
//! A request is a chain of descriptors: a 16-byte header (type, reserved,
//! sector) the device reads, data buffers (read by the device for `OUT`, written
//! for `IN` and `GET_ID`), and a status byte the device writes last. Indirect
//! descriptors are not offered, so a chain is direct, at most a ring long.
//!
//! # Examples
//!
//! ```
//! use switchover_testbed::blk::request::{Kind, BLK_T_OUT};
//! assert_eq!(Kind::of(BLK_T_OUT), Kind::Out);
//! assert_eq!(Kind::of(99), Kind::Unsupported);
//! ```

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::guest::GuestMap;

/// `VIRTIO_BLK_T_IN`.
pub const BLK_T_IN: u32 = 0;
/// `VIRTIO_BLK_T_OUT`.
pub const BLK_T_OUT: u32 = 1;
/// `VIRTIO_BLK_T_FLUSH`.
pub const BLK_T_FLUSH: u32 = 4;
/// `VIRTIO_BLK_T_GET_ID`.
pub const BLK_T_GET_ID: u32 = 8;
/// `VIRTIO_BLK_S_OK`.
pub const S_OK: u8 = 0;
/// `VIRTIO_BLK_S_IOERR`.
pub const S_IOERR: u8 = 1;
/// `VIRTIO_BLK_S_UNSUPP`.
pub const S_UNSUPP: u8 = 2;
/// The device id `GET_ID` answers.
pub const DEVICE_ID: &[u8] = b"switchover-own-blk";

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// What a request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Read sectors into the data buffers.
    In,
    /// Write the data buffers to sectors.
    Out,
    /// Make every completed write durable.
    Flush,
    /// The device id into the data buffer.
    GetId,
    /// Any other type.
    Unsupported,
    /// A chain that is not a virtio-blk request.
    Bad,
}

impl Kind {
    /// The kind of a request type.
    pub fn of(ty: u32) -> Kind {
        match ty {
            BLK_T_IN => Kind::In,
            BLK_T_OUT => Kind::Out,
            BLK_T_FLUSH => Kind::Flush,
            BLK_T_GET_ID => Kind::GetId,
            _ => Kind::Unsupported,
        }
    }
}

/// One request, as parsed from its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Its descriptor head.
    pub head: u16,
    /// What it asks.
    pub kind: Kind,
    /// First sector.
    pub sector: u64,
    /// Data buffers (guest address, length).
    pub data: Vec<(u64, u32)>,
    /// Guest address of the status byte, if the chain has one.
    pub status: Option<u64>,
}

impl Request {
    /// Bytes of data.
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|d| u64::from(d.1)).sum()
    }
}

/// Parses the chain of `head` in the descriptor table at `desc` of a ring of `size`.
///
/// ```
/// use switchover_testbed::blk::guest::GuestMap;
/// use switchover_testbed::blk::request::{parse, Kind};
/// use switchover_testbed::driver::{submit, BlkOp, DriverRing, RingKind};
/// use switchover_testbed::mem::{GuestMem, QSIZE};
/// let m = GuestMem::new(1).unwrap();
/// let mut r = DriverRing::new(0, switchover::ids::DeviceId(0), 0, RingKind::Blk);
/// submit(&m, &mut r, BlkOp::Write).unwrap(); // head 0: header, 512 bytes, status
/// let reg = m.region();
/// let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(reg.fd) }.try_clone_to_owned().unwrap();
/// let g = GuestMap::map(vec![(reg.guest_addr, reg.size, reg.user_addr, 0, fd.into())]).unwrap();
/// let req = parse(&g, GuestMem::desc(0), QSIZE, 0);
/// assert_eq!((req.kind, req.sector, req.data_len()), (Kind::Out, 0, 512));
/// assert!(req.status.is_some());
/// ```
pub fn parse(mem: &GuestMap, desc: u64, size: u16, head: u16) -> Request {
    let mut req = Request { head, kind: Kind::Bad, sector: 0, data: Vec::new(), status: None };
    let mut chain = Vec::new();
    let mut i = head;
    for _ in 0..size {
        if i >= size {
            return req;
        }
        let mut d = [0u8; 16];
        if !mem.read(desc + 16 * u64::from(i), &mut d) {
            return req;
        }
        let addr = u64::from_le_bytes(d[0..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(d[8..12].try_into().expect("4 bytes"));
        let flags = u16::from_le_bytes([d[12], d[13]]);
        let next = u16::from_le_bytes([d[14], d[15]]);
        if flags & F_INDIRECT != 0 {
            return req;
        }
        chain.push((addr, len, flags));
        if flags & F_NEXT == 0 {
            break;
        }
        i = next;
    }
    let (Some(&(haddr, hlen, hflags)), Some(&(saddr, slen, sflags))) = (chain.first(), chain.last()) else {
        return req;
    };
    if chain.len() < 2 || hlen < 16 || hflags & F_WRITE != 0 || slen < 1 || sflags & F_WRITE == 0 {
        return req;
    }
    req.status = Some(saddr + u64::from(slen) - 1);
    let mut hdr = [0u8; 16];
    if !mem.read(haddr, &mut hdr) {
        return req;
    }
    let kind = Kind::of(u32::from_le_bytes(hdr[0..4].try_into().expect("4 bytes")));
    req.sector = u64::from_le_bytes(hdr[8..16].try_into().expect("8 bytes"));
    let middle = &chain[1..chain.len() - 1];
    let device_writes = matches!(kind, Kind::In | Kind::GetId);
    if matches!(kind, Kind::In | Kind::Out | Kind::GetId) && middle.iter().any(|d| (d.2 & F_WRITE != 0) != device_writes) {
        return req;
    }
    req.data = middle.iter().map(|d| (d.0, d.1)).collect();
    req.kind = kind;
    req
}

/// What a request's host I/O produced: its status, and the bytes to write into
/// its data buffers at completion (reads, `GET_ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The status byte.
    pub status: u8,
    /// Bytes for the data buffers, in order.
    pub data: Vec<u8>,
}

impl Outcome {
    fn status(status: u8) -> Outcome {
        Outcome { status, data: Vec::new() }
    }
    /// The used length: bytes written into the request's buffers (data and status).
    pub fn used_len(&self) -> u32 {
        self.data.len() as u32 + 1
    }
}

/// Does the request's host I/O on `file` (`capacity` bytes). Writes are refused
/// (`IOERR`) unless `writable`. Guest memory is only read (a write's data);
/// what a read produces is returned, for the completion to write.
pub fn execute(req: &Request, mem: &GuestMap, file: &File, capacity: u64, writable: bool) -> Outcome {
    let off = req.sector.checked_mul(512);
    let in_range = off.and_then(|o| o.checked_add(req.data_len())).is_some_and(|end| end <= capacity);
    match req.kind {
        Kind::In => {
            if !in_range {
                return Outcome::status(S_IOERR);
            }
            let mut buf = vec![0u8; req.data_len() as usize];
            match file.read_exact_at(&mut buf, off.unwrap_or(0)) {
                Ok(()) => Outcome { status: S_OK, data: buf },
                Err(_) => Outcome::status(S_IOERR),
            }
        }
        Kind::Out => {
            if !in_range || !writable {
                return Outcome::status(S_IOERR);
            }
            let mut buf = Vec::with_capacity(req.data_len() as usize);
            for &(gpa, len) in &req.data {
                let mut b = vec![0u8; len as usize];
                if !mem.read(gpa, &mut b) {
                    return Outcome::status(S_IOERR);
                }
                buf.extend_from_slice(&b);
            }
            match file.write_all_at(&buf, off.unwrap_or(0)) {
                Ok(()) => Outcome::status(S_OK),
                Err(_) => Outcome::status(S_IOERR),
            }
        }
        Kind::Flush => match file.sync_data() {
            Ok(()) => Outcome::status(S_OK),
            Err(_) => Outcome::status(S_IOERR),
        },
        Kind::GetId => {
            let mut id = vec![0u8; req.data_len() as usize];
            let n = DEVICE_ID.len().min(id.len());
            id[..n].copy_from_slice(&DEVICE_ID[..n]);
            Outcome { status: S_OK, data: id }
        }
        Kind::Unsupported => Outcome::status(S_UNSUPP),
        Kind::Bad => Outcome::status(S_IOERR),
    }
}
