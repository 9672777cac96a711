//! The split-phase vhost-user control channel.
//!
//! The rust-vmm `vhost` Frontend is synchronous: each call writes a request and
//! blocks reading its reply, so one lane can keep only one request in flight per
//! backend. The protocol allows more: a backend serves its socket in order and
//! replies in order. So, after the handshake, a device's socket is driven here:
//!
//! * [`Channel::send`] writes one request (body built from the `vhost` crate's
//!   message structs, fds attached with `SCM_RIGHTS`) from the sending lane
//!   and queues its reply handler, under one lock so the queue order is the wire
//!   order;
//! * one reader thread per device reads replies in order and hands each to the
//!   handler at the front of the queue (which completes the engine's step);
//! * if the backend closes the socket, every queued handler fails with
//!   [`StepFailure::Disconnected`]; if the oldest request passes its deadline,
//!   [`Channel::check_deadline`] shuts the socket down so the reader wakes up and
//!   fails everything queued with a time-out, and nothing hangs.
//!
//! Deadlines are enforced without the caller's help: every channel is watched by
//! one process-wide watchdog thread ([`Channel::check_deadline`] every 10 ms).
//!
//! # Examples
//!
//! ```
//! use std::io::{Read, Write};
//! use std::os::unix::net::UnixStream;
//! use std::time::Duration;
//! use switchover_vhost::channel::Channel;
//! use switchover_vhost::reply::Reply;
//! use vhost::vhost_user::message::FrontendReq;
//! let (front, mut backend) = UnixStream::pair().unwrap();
//! let ch = Channel::start("net0", front).unwrap();
//! // Two requests in flight at once, answered in order.
//! let a = ch.request(FrontendReq::SET_VRING_ENABLE, &[0u8; 8], &[], Duration::from_secs(5));
//! let b = ch.request(FrontendReq::SET_VRING_ENABLE, &[1, 0, 0, 0, 0, 0, 0, 0], &[], Duration::from_secs(5));
//! assert_eq!(ch.in_flight(), 2);
//! let ack: Vec<u8> = [u32::from(FrontendReq::SET_VRING_ENABLE), 0x5, 8, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
//! let mut req = [0u8; 40];
//! backend.read_exact(&mut req).unwrap();
//! backend.write_all(&[ack.clone(), ack].concat()).unwrap();
//! assert_eq!((a.wait(), b.wait()), (Ok(Reply::U64(0)), Ok(Reply::U64(0))));
//! ```

use std::collections::VecDeque;
use std::io;
use std::net::Shutdown;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use vhost::vhost_user::message::{FrontendReq, VhostUserHeaderFlag};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use switchover::error::StepFailure;

use crate::reply::{request_name, validate_reply, Reply, ReplyError, REPLY_BODY};

/// What runs when a request's reply (or failure) arrives.
///
/// # Examples
///
/// ```
/// use switchover::error::StepFailure;
/// use switchover_vhost::channel::OnReply;
/// use switchover_vhost::reply::Reply;
/// let (tx, rx) = std::sync::mpsc::channel();
/// let on_reply: OnReply = Box::new(move |r| tx.send(r).unwrap());
/// on_reply(Err(StepFailure::Disconnected));
/// assert_eq!(rx.recv().unwrap(), Err::<Reply, _>(StepFailure::Disconnected));
/// ```
pub type OnReply = Box<dyn FnOnce(Result<Reply, StepFailure>) + Send + 'static>;

/// What runs when the reply to a request whose reply carries a body of its own
/// size and one file descriptor (`GET_INFLIGHT_FD`) arrives: the body and the
/// descriptor, or the failure.
pub type OnFdReply = Box<dyn FnOnce(Result<FdReply, StepFailure>) + Send + 'static>;

/// A reply that carries a file descriptor: its body and the descriptor (owned).
#[derive(Debug)]
pub struct FdReply {
    /// The reply's body.
    pub body: Vec<u8>,
    /// The descriptor that came with it.
    pub fd: std::os::fd::OwnedFd,
}

/// How a queued request's reply is shaped and who takes it.
enum Handler {
    /// An 8-byte body, no descriptor (acks, `u64`s, vring states).
    Plain(OnReply),
    /// A body of `size` bytes and exactly one descriptor.
    WithFd { size: u32, on_reply: OnFdReply },
}

impl Handler {
    fn fail(self, f: StepFailure) {
        match self {
            Handler::Plain(h) => h(Err(f)),
            Handler::WithFd { on_reply, .. } => on_reply(Err(f)),
        }
    }
}

struct Queued {
    code: u32,
    /// The ring a `GET_VRING_BASE` asked about (its reply must name it).
    ring: Option<u32>,
    deadline: Instant,
    after: Duration,
    handler: Handler,
}

struct Inner {
    stream: UnixStream,
    pending: VecDeque<Queued>,
    closed: Option<StepFailure>,
}

/// One device's control channel with requests in flight.
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
/// use std::os::unix::net::UnixStream;
/// use std::time::Duration;
/// use switchover_vhost::channel::Channel;
/// use switchover_vhost::reply::Reply;
/// use vhost::vhost_user::message::FrontendReq;
/// let (front, mut backend) = UnixStream::pair().unwrap();
/// let ch = Channel::start("net0", front).unwrap();
/// // A backend that answers GET_VRING_BASE for ring 1 with base 7.
/// let b = std::thread::spawn(move || {
///     let mut req = [0u8; 20]; // 12-byte header, 8-byte vring state
///     backend.read_exact(&mut req).unwrap();
///     let code = u32::from(FrontendReq::GET_VRING_BASE);
///     let reply: Vec<u8> = [code, 0x5, 8, 1, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
///     backend.write_all(&reply).unwrap();
///     backend
/// });
/// let ring1 = [1u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
/// let r = ch.request(FrontendReq::GET_VRING_BASE, &ring1, &[], Duration::from_secs(5)).wait();
/// assert_eq!(r, Ok(Reply::State(1, 7)));
/// let _backend = b.join().unwrap();
/// ch.close();
/// ```
pub struct Channel {
    name: String,
    inner: Mutex<Inner>,
    ctl: UnixStream,
    timed_out: Arc<AtomicBool>,
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("device", &self.name).finish()
    }
}

impl Channel {
    /// Takes over a connected socket (after the handshake) and starts its reader.
    ///
    /// # Errors
    /// Cloning the socket or spawning the reader failed.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::unix::net::UnixStream;
    /// use switchover_vhost::channel::Channel;
    /// let (front, _backend) = UnixStream::pair().unwrap();
    /// let ch = Channel::start("blk0", front).unwrap();
    /// assert_eq!(ch.in_flight(), 0);
    /// ch.close();
    /// ```
    pub fn start(name: &str, stream: UnixStream) -> io::Result<Arc<Channel>> {
        let rd = stream.try_clone()?;
        let ctl = stream.try_clone()?;
        let ch = Arc::new(Channel {
            name: name.to_string(),
            inner: Mutex::new(Inner { stream, pending: VecDeque::new(), closed: None }),
            ctl,
            timed_out: Arc::new(AtomicBool::new(false)),
            reader: Mutex::new(None),
        });
        let weak = Arc::downgrade(&ch);
        let h = std::thread::Builder::new().name(format!("vu-rd-{name}")).spawn(move || reader_loop(rd, weak))?;
        *ch.reader.lock() = Some(h);
        watch(&ch);
        Ok(ch)
    }

    /// The device's name.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::unix::net::UnixStream;
    /// use switchover_vhost::channel::Channel;
    /// let (front, _backend) = UnixStream::pair().unwrap();
    /// assert_eq!(Channel::start("blk0", front).unwrap().name(), "blk0");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends one request; `on_reply` runs when its reply (or failure) arrives.
    /// SET requests carry `NEED_REPLY` (REPLY_ACK is negotiated) and get an ack.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::unix::net::UnixStream;
    /// use std::time::Duration;
    /// use switchover::error::StepFailure;
    /// use switchover_vhost::channel::Channel;
    /// use vhost::vhost_user::message::FrontendReq;
    /// let (front, backend) = UnixStream::pair().unwrap();
    /// let ch = Channel::start("net0", front).unwrap();
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let enable_ring0 = [0u8; 8];
    /// ch.send(FrontendReq::SET_VRING_ENABLE, &enable_ring0, &[], Duration::from_secs(5), Box::new(move |r| tx.send(r).unwrap()));
    /// assert_eq!(ch.in_flight(), 1);
    /// drop(backend); // the backend goes away without answering
    /// assert_eq!(rx.recv().unwrap(), Err(StepFailure::Disconnected));
    /// ```
    pub fn send(&self, req: FrontendReq, body: &[u8], fds: &[RawFd], deadline: Duration, on_reply: OnReply) {
        self.send_with(req, body, fds, deadline, Handler::Plain(on_reply));
    }

    /// Sends a request whose reply carries a body of `reply_size` bytes and exactly
    /// one file descriptor (`GET_INFLIGHT_FD`); any other shape of reply breaks the
    /// stream as a malformed reply does.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use std::os::fd::AsRawFd;
    /// use std::os::unix::net::UnixStream;
    /// use std::time::Duration;
    /// use switchover_vhost::channel::Channel;
    /// use vhost::vhost_user::message::FrontendReq;
    /// use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    /// let (front, mut backend) = UnixStream::pair().unwrap();
    /// let ch = Channel::start("blk0", front).unwrap();
    /// let b = std::thread::spawn(move || {
    ///     let mut req = [0u8; 12 + 24];
    ///     backend.read_exact(&mut req).unwrap();
    ///     let code = u32::from(FrontendReq::GET_INFLIGHT_FD);
    ///     let mut reply: Vec<u8> = [code, 0x5, 24].iter().flat_map(|v| v.to_le_bytes()).collect();
    ///     reply.extend_from_slice(&[7u8; 24]);
    ///     let f = std::fs::File::open("/dev/null").unwrap();
    ///     backend.send_with_fds(&[&reply[..]], &[f.as_raw_fd()]).unwrap();
    ///     backend
    /// });
    /// let r = ch.request_with_fd(FrontendReq::GET_INFLIGHT_FD, &[0u8; 24], &[], Duration::from_secs(5), 24).wait().unwrap();
    /// assert_eq!(r.body, vec![7u8; 24]);
    /// assert!(r.fd.as_raw_fd() >= 0);
    /// let _backend = b.join().unwrap();
    /// ```
    pub fn request_with_fd(&self, req: FrontendReq, body: &[u8], fds: &[RawFd], deadline: Duration, reply_size: u32) -> Pending<FdReply> {
        let (p, answer) = Pending::new();
        self.send_with(req, body, fds, deadline, Handler::WithFd { size: reply_size, on_reply: answer });
        p
    }

    fn send_with(&self, req: FrontendReq, body: &[u8], fds: &[RawFd], deadline: Duration, handler: Handler) {
        let code: u32 = req.into();
        // Requests with a reply of their own never ask for an ack as well
        // (a second reply would put the stream out of step): GET_*, and
        // SET_LOG_BASE under LOG_SHMFD.
        let own_reply = [FrontendReq::GET_VRING_BASE, FrontendReq::GET_FEATURES, FrontendReq::GET_INFLIGHT_FD, FrontendReq::SET_LOG_BASE]
            .contains(&req);
        let flags = if own_reply { 0 } else { VhostUserHeaderFlag::NEED_REPLY.bits() };
        // The header (request, flags with protocol version 1, body size); the
        // crate's header type is private, its layout is the spec's.
        let mut msg = Vec::with_capacity(12 + body.len());
        msg.extend_from_slice(&code.to_le_bytes());
        msg.extend_from_slice(&(flags | 0x1).to_le_bytes());
        msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
        msg.extend_from_slice(body);
        let mut g = self.inner.lock();
        if let Some(f) = g.closed.clone() {
            drop(g);
            handler.fail(f);
            return;
        }
        let r = g.stream.send_with_fds(&[&msg[..]], fds);
        match r {
            Ok(n) if n == msg.len() => {
                let ring = (req == FrontendReq::GET_VRING_BASE && body.len() >= 4)
                    .then(|| u32::from_le_bytes([body[0], body[1], body[2], body[3]]));
                g.pending.push_back(Queued { code, ring, deadline: Instant::now() + deadline, after: deadline, handler });
            }
            Ok(n) => {
                drop(g);
                handler.fail(StepFailure::Other {
                    message: format!("{}: short write of {} ({n} of {} bytes)", self.name, request_name(code), msg.len()),
                });
            }
            Err(e) => {
                drop(g);
                let f = match e.errno() {
                    libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN => StepFailure::Disconnected,
                    _ => StepFailure::Io {
                        op: format!("sending {}", request_name(code)),
                        source: std::io::Error::from_raw_os_error(e.errno()).into(),
                    },
                };
                handler.fail(f);
            }
        }
    }

    /// Sends one request; the reply arrives in the returned [`Pending`].
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use std::os::unix::net::UnixStream;
    /// use std::time::Duration;
    /// use switchover_vhost::channel::Channel;
    /// use switchover_vhost::reply::Reply;
    /// use vhost::vhost_user::message::FrontendReq;
    /// let (front, mut backend) = UnixStream::pair().unwrap();
    /// let ch = Channel::start("net0", front).unwrap();
    /// let b = std::thread::spawn(move || {
    ///     let mut req = [0u8; 20];
    ///     backend.read_exact(&mut req).unwrap();
    ///     let ack: Vec<u8> = [u32::from(FrontendReq::SET_VRING_ENABLE), 0x5, 8, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    ///     backend.write_all(&ack).unwrap(); // REPLY_ACK, status 0
    ///     backend
    /// });
    /// let r = ch.request(FrontendReq::SET_VRING_ENABLE, &[0u8; 8], &[], Duration::from_secs(5)).wait();
    /// assert_eq!(r, Ok(Reply::U64(0)));
    /// let _backend = b.join().unwrap();
    /// ```
    pub fn request(&self, req: FrontendReq, body: &[u8], fds: &[RawFd], deadline: Duration) -> Pending<Reply> {
        let (p, on_reply) = Pending::new();
        self.send(req, body, fds, deadline, on_reply);
        p
    }

    /// Requests in flight.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::unix::net::UnixStream;
    /// use std::time::Duration;
    /// use switchover_vhost::channel::Channel;
    /// use vhost::vhost_user::message::FrontendReq;
    /// let (front, _backend) = UnixStream::pair().unwrap(); // a backend that never answers
    /// let ch = Channel::start("net0", front).unwrap();
    /// for ring in 0u32..3 {
    ///     let body = [ring.to_le_bytes(), 1u32.to_le_bytes()].concat();
    ///     ch.send(FrontendReq::SET_VRING_ENABLE, &body, &[], Duration::from_secs(5), Box::new(|_| ()));
    /// }
    /// assert_eq!(ch.in_flight(), 3);
    /// ```
    pub fn in_flight(&self) -> usize {
        self.inner.lock().pending.len()
    }

    /// Whether the channel is closed (the backend went away, or the stream was given up).
    ///
    /// ```
    /// use std::os::unix::net::UnixStream;
    /// use switchover_vhost::channel::Channel;
    /// let (front, backend) = UnixStream::pair().unwrap();
    /// let ch = Channel::start("blk0", front).unwrap();
    /// assert!(!ch.is_closed());
    /// drop(backend);
    /// let t = std::time::Instant::now();
    /// while !ch.is_closed() && t.elapsed() < std::time::Duration::from_secs(5) {
    ///     std::thread::sleep(std::time::Duration::from_millis(1));
    /// }
    /// assert!(ch.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed.is_some()
    }

    /// If the oldest request is past its deadline, shuts the socket down: the reader
    /// then fails every queued request (the backend is hung). Returns whether it did.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::unix::net::UnixStream;
    /// use std::time::{Duration, Instant};
    /// use switchover::error::StepFailure;
    /// use switchover_vhost::channel::Channel;
    /// use vhost::vhost_user::message::FrontendReq;
    /// let (front, _backend) = UnixStream::pair().unwrap(); // a backend that never answers
    /// let ch = Channel::start("net0", front).unwrap();
    /// assert!(!ch.check_deadline(Instant::now())); // nothing pending
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// ch.send(FrontendReq::GET_VRING_BASE, &[0u8; 8], &[], Duration::ZERO, Box::new(move |r| tx.send(r).unwrap()));
    /// assert!(ch.check_deadline(Instant::now()));
    /// assert_eq!(rx.recv().unwrap(), Err(StepFailure::Timeout { after: Duration::ZERO }));
    /// ```
    pub fn check_deadline(&self, now: Instant) -> bool {
        let g = self.inner.lock();
        match g.pending.front() {
            Some(p) if p.deadline <= now => {
                self.timed_out.store(true, Ordering::Release);
                let _ = self.ctl.shutdown(Shutdown::Both);
                true
            }
            _ => false,
        }
    }

    /// Closes the socket (the backend sees the frontend go away) and joins the reader.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::unix::net::UnixStream;
    /// use std::time::Duration;
    /// use switchover::error::StepFailure;
    /// use switchover_vhost::channel::Channel;
    /// use vhost::vhost_user::message::FrontendReq;
    /// let (front, _backend) = UnixStream::pair().unwrap();
    /// let ch = Channel::start("net0", front).unwrap();
    /// ch.close();
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// ch.send(FrontendReq::SET_VRING_ENABLE, &[0u8; 8], &[], Duration::from_secs(5), Box::new(move |r| tx.send(r).unwrap()));
    /// assert_eq!(rx.recv().unwrap(), Err(StepFailure::Disconnected)); // failed at once
    /// ```
    pub fn close(&self) {
        let _ = self.ctl.shutdown(Shutdown::Both);
        if let Some(h) = self.reader.lock().take() {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }

    fn fail_all(&self, f: StepFailure) {
        let drained: Vec<Queued> = {
            let mut g = self.inner.lock();
            if g.closed.is_none() {
                g.closed = Some(f.clone());
            }
            g.pending.drain(..).collect()
        };
        for p in drained {
            let f = if self.timed_out.load(Ordering::Acquire) { StepFailure::Timeout { after: p.after } } else { f.clone() };
            p.handler.fail(f);
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        let _ = self.ctl.shutdown(Shutdown::Both);
    }
}

/// Why reading stopped: the socket failed, or the backend sent something that is
/// not a well-formed reply (the stream can no longer be trusted to be in step).
enum ReadError {
    Io(io::Error),
    Garbage(ReplyError),
}

/// Reads exactly `buf.len()` bytes with `recvmsg`, so that file descriptors passed
/// with `SCM_RIGHTS` are seen: each one is taken into `fds` (owned: closed when
/// dropped); descriptors the kernel dropped because the control buffer was too
/// small (`MSG_CTRUNC`) are counted in `lost`.
fn recv_exact(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>, lost: &mut usize) -> io::Result<()> {
    const SPACE: usize = 256;
    let mut got = 0;
    while got < buf.len() {
        let mut cmsg = [0u64; SPACE / 8];
        let mut iov = libc::iovec { iov_base: buf[got..].as_mut_ptr().cast(), iov_len: buf.len() - got };
        // SAFETY: msghdr is plain data; every pointer set below outlives the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = SPACE as _;
        // SAFETY: fd is our socket; iov points into `buf`, msg_control into `cmsg`.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: walking the control messages recvmsg just wrote into `cmsg`.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c).cast::<RawFd>();
                    let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..len / std::mem::size_of::<RawFd>() {
                        fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            *lost += 1;
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        got += n as usize;
    }
    Ok(())
}

/// The body of the rust-vmm backend's answer to `SET_LOG_BASE` (the log region).
const LOG_BASE_REPLY_BODY: u32 = 16;

/// One reply frame as read: its header and body, and the descriptors that came with it.
struct Frame {
    code: u32,
    flags: u32,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// Reads one reply frame: the header, then a body of the size the reply to the
/// request it answers has — 8 bytes and no descriptor for most (`SET_LOG_BASE`'s
/// answer may also be the 16-byte log region), `size` bytes and exactly one
/// descriptor for a request sent with [`Channel::request_with_fd`] (`expect` gives
/// the front request's code and that size, once the header is read). A frame of
/// another shape is garbage: the body is not read, the stream is given up,
/// descriptors are closed.
fn read_reply(fd: RawFd, expect: &dyn Fn() -> Option<(u32, Option<u32>)>) -> Result<Frame, ReadError> {
    let mut h = [0u8; 12];
    let (mut fds, mut lost) = (Vec::new(), 0usize);
    recv_exact(fd, &mut h, &mut fds, &mut lost).map_err(ReadError::Io)?;
    let code = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let flags = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let size = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    let with_fd = match expect() {
        Some((c, Some(sz))) if c == code => Some(sz),
        _ => None,
    };
    let want = with_fd.unwrap_or(REPLY_BODY);
    if with_fd.is_none() && (!fds.is_empty() || lost > 0) {
        return Err(ReadError::Garbage(ReplyError::FileDescriptors { code, count: fds.len() + lost }));
    }
    // SET_LOG_BASE's answer is an acknowledgement whose body backends disagree
    // on: libvhost-user sends a u64, the rust-vmm backend the log region (16 bytes).
    let log_base = code == u32::from(FrontendReq::SET_LOG_BASE) && with_fd.is_none();
    if size != want && !(log_base && size == LOG_BASE_REPLY_BODY) {
        return Err(ReadError::Garbage(ReplyError::BodySize { code, size }));
    }
    let mut body = vec![0u8; size as usize];
    recv_exact(fd, &mut body, &mut fds, &mut lost).map_err(ReadError::Io)?;
    let expected_fds = usize::from(with_fd.is_some());
    if fds.len() + lost != expected_fds || lost > 0 {
        return Err(ReadError::Garbage(ReplyError::FileDescriptors { code, count: fds.len() + lost }));
    }
    if log_base {
        // Not a status: what it echoes (the log's size or region) is no error.
        body = vec![0u8; REPLY_BODY as usize];
    }
    Ok(Frame { code, flags, body, fds })
}

fn reader_loop(rd: UnixStream, ch: std::sync::Weak<Channel>) {
    use std::os::fd::AsRawFd;
    let fd = rd.as_raw_fd();
    loop {
        // The shape of the reply expected next: the front request's, looked at once
        // the header is in (the request is queued before it is written).
        let expect = || {
            ch.upgrade().and_then(|c| {
                c.inner.lock().pending.front().map(|p| match &p.handler {
                    Handler::Plain(_) => (p.code, None),
                    Handler::WithFd { size, .. } => (p.code, Some(*size)),
                })
            })
        };
        let r = read_reply(fd, &expect);
        let Some(ch) = ch.upgrade() else { return };
        let garbage = |ch: &Channel, what: ReplyError| {
            // The stream is out of step or the backend lies: nothing more it sends
            // is trusted. Every queued step fails, and the socket is shut down.
            ch.fail_all(StepFailure::Garbage { what: what.to_string() });
            let _ = rd.shutdown(Shutdown::Both);
        };
        let frame = match r {
            Ok(x) => x,
            Err(ReadError::Garbage(what)) => {
                garbage(&ch, what);
                return;
            }
            Err(ReadError::Io(e)) => {
                let f = match e.kind() {
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => StepFailure::Disconnected,
                    _ => StepFailure::io(format!("{}: reading a reply", ch.name), e),
                };
                ch.fail_all(f);
                return;
            }
        };
        let Frame { code, flags, body, mut fds } = frame;
        let front = ch.inner.lock().pending.pop_front();
        let Some(p) = front else {
            garbage(&ch, ReplyError::Unsolicited { code });
            return;
        };
        let head: [u8; 8] = body[..8].try_into().expect("a reply body has at least 8 bytes");
        match (validate_reply(p.code, p.ring, code, flags, &head), p.handler) {
            (Err(what), h) => {
                h.fail(StepFailure::Garbage { what: what.to_string() });
                garbage(&ch, what);
                return;
            }
            (Ok(_), Handler::WithFd { on_reply, .. }) => match fds.pop() {
                Some(fd) => on_reply(Ok(FdReply { body, fd })),
                None => on_reply(Err(StepFailure::Garbage { what: format!("{} came without its descriptor", request_name(code)) })),
            },
            (Ok(Reply::U64(v)), Handler::Plain(h)) if v != 0 && code != u32::from(FrontendReq::GET_FEATURES) => {
                h(Err(StepFailure::Backend { message: format!("{} answered {} with status {v}", ch.name, request_name(code)) }));
            }
            (Ok(reply), Handler::Plain(h)) => h(Ok(reply)),
        }
    }
}

/// A reply that has not necessarily arrived yet: wait for it, or hand it a
/// function to run when it does (from the channel's reader thread).
///
/// ```
/// use switchover::error::StepFailure;
/// use switchover_vhost::channel::Pending;
/// let (p, answer) = Pending::<u32>::new();
/// answer(Ok(7));
/// assert_eq!(p.wait(), Ok(7));
/// let (p, answer) = Pending::<u32>::new();
/// let (tx, rx) = std::sync::mpsc::channel();
/// p.then(move |r| tx.send(r).unwrap()); // runs when the answer comes
/// answer(Err(StepFailure::Disconnected));
/// assert_eq!(rx.recv().unwrap(), Err(StepFailure::Disconnected));
/// ```
#[must_use = "a pending reply is waited for or given a continuation"]
pub struct Pending<T> {
    slot: Arc<Slot<T>>,
}

/// A function that takes a reply once: what answers a [`Pending`] (as
/// [`Pending::new`] returns it), or a continuation given to [`Pending::then`].
pub type Then<T> = Box<dyn FnOnce(Result<T, StepFailure>) + Send + 'static>;

struct Slot<T> {
    state: Mutex<SlotState<T>>,
    cv: parking_lot::Condvar,
}

enum SlotState<T> {
    Waiting(Option<Then<T>>),
    Done(Result<T, StepFailure>),
    Taken,
}

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

impl<T: Send + 'static> Pending<T> {
    /// A pending reply and the function that answers it (once).
    ///
    /// ```
    /// use switchover_vhost::channel::Pending;
    /// let (p, answer) = Pending::<()>::new();
    /// drop(answer); // never answered: the waiter is told so
    /// assert!(p.wait().is_err());
    /// ```
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> (Pending<T>, Then<T>) {
        let slot = Arc::new(Slot { state: Mutex::new(SlotState::Waiting(None)), cv: parking_lot::Condvar::new() });
        let guard = Answer { slot: Some(slot.clone()) };
        (Pending { slot }, Box::new(move |r| guard.answer(r)))
    }

    /// The same reply, mapped.
    ///
    /// ```
    /// use switchover_vhost::channel::Pending;
    /// let (p, answer) = Pending::<u32>::new();
    /// let q = p.map(|v| v.map(|x| x * 2));
    /// answer(Ok(21));
    /// assert_eq!(q.wait(), Ok(42));
    /// ```
    pub fn map<U: Send + 'static>(self, f: impl FnOnce(Result<T, StepFailure>) -> Result<U, StepFailure> + Send + 'static) -> Pending<U> {
        let (q, answer) = Pending::new();
        self.then(move |r| answer(f(r)));
        q
    }

    /// Runs `f` with the reply when it arrives (at once if it already has).
    pub fn then(self, f: impl FnOnce(Result<T, StepFailure>) + Send + 'static) {
        let mut g = self.slot.state.lock();
        match std::mem::replace(&mut *g, SlotState::Taken) {
            SlotState::Done(r) => {
                drop(g);
                f(r);
            }
            SlotState::Waiting(_) => *g = SlotState::Waiting(Some(Box::new(f))),
            SlotState::Taken => {}
        }
    }

    /// Waits for the reply. The channel's deadline bounds the wait: a request past
    /// it fails with a time-out (the watchdog shuts a hung channel down).
    pub fn wait(self) -> Result<T, StepFailure> {
        let mut g = self.slot.state.lock();
        loop {
            match std::mem::replace(&mut *g, SlotState::Taken) {
                SlotState::Done(r) => return r,
                w @ SlotState::Waiting(_) => {
                    *g = w;
                    self.slot.cv.wait(&mut g);
                }
                SlotState::Taken => return Err(StepFailure::Abandoned),
            }
        }
    }
}

/// Answers a slot once; dropped unanswered, it answers `Abandoned`.
struct Answer<T> {
    slot: Option<Arc<Slot<T>>>,
}

impl<T> Answer<T> {
    fn answer(mut self, r: Result<T, StepFailure>) {
        if let Some(slot) = self.slot.take() {
            fulfil(&slot, r);
        }
    }
}

impl<T> Drop for Answer<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            fulfil(&slot, Err(StepFailure::Abandoned));
        }
    }
}

fn fulfil<T>(slot: &Slot<T>, r: Result<T, StepFailure>) {
    let mut g = slot.state.lock();
    match std::mem::replace(&mut *g, SlotState::Taken) {
        SlotState::Waiting(Some(f)) => {
            drop(g);
            f(r);
        }
        SlotState::Waiting(None) => {
            *g = SlotState::Done(r);
            slot.cv.notify_all();
        }
        other => *g = other,
    }
}

/// The process-wide watchdog: checks every live channel's oldest request
/// against its deadline every 10 ms.
fn watch(ch: &Arc<Channel>) {
    static WATCHED: std::sync::OnceLock<Mutex<Vec<std::sync::Weak<Channel>>>> = std::sync::OnceLock::new();
    let list = WATCHED.get_or_init(|| {
        let _ = std::thread::Builder::new().name("vu-watchdog".into()).spawn(|| loop {
            std::thread::sleep(Duration::from_millis(10));
            let now = Instant::now();
            let live: Vec<Arc<Channel>> = {
                let mut l = WATCHED.get().expect("initialised").lock();
                l.retain(|w| w.strong_count() > 0);
                l.iter().filter_map(std::sync::Weak::upgrade).collect()
            };
            for c in live {
                c.check_deadline(now);
            }
        });
        Mutex::new(Vec::new())
    });
    list.lock().push(Arc::downgrade(ch));
}
