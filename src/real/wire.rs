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

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use vhost::vhost_user::message::{FrontendReq, VhostUserHeaderFlag};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::error::StepFailure;

/// A reply's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The `u64` of a `REPLY_ACK` (0 = success) or of a `GET_*` returning a u64.
    U64(u64),
    /// A vring state (`GET_VRING_BASE`): index and number.
    State(u32, u32),
}

/// What runs when a request's reply (or failure) arrives.
pub type OnReply = Box<dyn FnOnce(Result<Reply, StepFailure>) + Send + 'static>;

struct Pending {
    code: u32,
    deadline: Instant,
    after: Duration,
    on_reply: OnReply,
}

struct Inner {
    stream: UnixStream,
    pending: VecDeque<Pending>,
    closed: Option<StepFailure>,
}

/// One device's control channel with requests in flight.
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

fn request_name(code: u32) -> String {
    match FrontendReq::try_from(code) {
        Ok(r) => format!("{r:?}"),
        Err(_) => format!("request {code}"),
    }
}

impl Channel {
    /// Takes over a connected socket (after the handshake) and starts its reader.
    ///
    /// # Errors
    /// Cloning the socket or spawning the reader failed.
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
        Ok(ch)
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends one request; `on_reply` runs when its reply (or failure) arrives.
    /// SET requests carry `NEED_REPLY` (REPLY_ACK is negotiated) and get an ack.
    pub fn send(&self, req: FrontendReq, body: &[u8], fds: &[RawFd], deadline: Duration, on_reply: OnReply) {
        let code: u32 = req.into();
        let flags =
            if req == FrontendReq::GET_VRING_BASE || req == FrontendReq::GET_FEATURES { 0 } else { VhostUserHeaderFlag::NEED_REPLY.bits() };
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
            on_reply(Err(f));
            return;
        }
        let r = g.stream.send_with_fds(&[&msg[..]], fds);
        match r {
            Ok(n) if n == msg.len() => {
                g.pending.push_back(Pending { code, deadline: Instant::now() + deadline, after: deadline, on_reply });
            }
            Ok(n) => {
                drop(g);
                on_reply(Err(StepFailure::Other {
                    message: format!("{}: short write of {} ({n} of {} bytes)", self.name, request_name(code), msg.len()),
                }));
            }
            Err(e) => {
                drop(g);
                let f = match e.errno() {
                    libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN => StepFailure::Disconnected,
                    _ => StepFailure::Other { message: format!("sending {}: {e}", request_name(code)) },
                };
                on_reply(Err(f));
            }
        }
    }

    /// Sends one request and waits for its reply.
    ///
    /// # Errors
    /// The failure of the request.
    pub fn call(&self, req: FrontendReq, body: &[u8], fds: &[RawFd], deadline: Duration) -> Result<Reply, StepFailure> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(
            req,
            body,
            fds,
            deadline,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        match rx.recv_timeout(deadline + Duration::from_millis(500)) {
            Ok(r) => r,
            Err(_) => {
                self.timed_out.store(true, Ordering::Release);
                let _ = self.ctl.shutdown(Shutdown::Both);
                Err(StepFailure::Timeout { after: deadline })
            }
        }
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.inner.lock().pending.len()
    }

    /// If the oldest request is past its deadline, shuts the socket down: the reader
    /// then fails every queued request (the backend is hung). Returns whether it did.
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
    pub fn close(&self) {
        let _ = self.ctl.shutdown(Shutdown::Both);
        if let Some(h) = self.reader.lock().take() {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }

    fn fail_all(&self, f: StepFailure) {
        let drained: Vec<Pending> = {
            let mut g = self.inner.lock();
            if g.closed.is_none() {
                g.closed = Some(f.clone());
            }
            g.pending.drain(..).collect()
        };
        for p in drained {
            let f = if self.timed_out.load(Ordering::Acquire) { StepFailure::Timeout { after: p.after } } else { f.clone() };
            (p.on_reply)(Err(f));
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        let _ = self.ctl.shutdown(Shutdown::Both);
    }
}

fn read_reply(rd: &mut UnixStream) -> io::Result<(u32, u32, Vec<u8>)> {
    let mut h = [0u8; 12];
    rd.read_exact(&mut h)?;
    let code = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let flags = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let size = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if size > 4096 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("reply body of {size} bytes")));
    }
    let mut body = vec![0u8; size as usize];
    rd.read_exact(&mut body)?;
    Ok((code, flags, body))
}

fn reader_loop(mut rd: UnixStream, ch: std::sync::Weak<Channel>) {
    loop {
        let r = read_reply(&mut rd);
        let Some(ch) = ch.upgrade() else { return };
        let (code, flags, body) = match r {
            Ok(x) => x,
            Err(e) => {
                let f = match e.kind() {
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => StepFailure::Disconnected,
                    _ => StepFailure::Other { message: format!("{}: reading a reply: {e}", ch.name) },
                };
                ch.fail_all(f);
                return;
            }
        };
        let front = ch.inner.lock().pending.pop_front();
        let Some(p) = front else {
            ch.fail_all(StepFailure::Garbage { what: format!("unsolicited reply {} from {}", request_name(code), ch.name) });
            return;
        };
        if code != p.code || flags & VhostUserHeaderFlag::REPLY.bits() == 0 {
            let what = format!("expected the reply to {}, got {} (flags {flags:#x})", request_name(p.code), request_name(code));
            (p.on_reply)(Err(StepFailure::Garbage { what: what.clone() }));
            ch.fail_all(StepFailure::Garbage { what });
            let _ = rd.shutdown(Shutdown::Both);
            return;
        }
        let reply = match body.len() {
            8 if code == u32::from(FrontendReq::GET_VRING_BASE) => Ok(Reply::State(
                u32::from_le_bytes([body[0], body[1], body[2], body[3]]),
                u32::from_le_bytes([body[4], body[5], body[6], body[7]]),
            )),
            8 => {
                let v = u64::from_le_bytes([body[0], body[1], body[2], body[3], body[4], body[5], body[6], body[7]]);
                if v != 0 && code != u32::from(FrontendReq::GET_FEATURES) {
                    Err(StepFailure::Backend { message: format!("{} answered {} with status {v}", ch.name, request_name(code)) })
                } else {
                    Ok(Reply::U64(v))
                }
            }
            n => Err(StepFailure::Garbage { what: format!("reply to {} with a {n}-byte body", request_name(code)) }),
        };
        (p.on_reply)(reply);
    }
}
