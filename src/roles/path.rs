//! The path between the two roles: the source's configuration and state go
//! forward, the destination's answers (ready, running, start failed, will not
//! run) come back. Every message travels in an [`Envelope`].
//!
//! Two implementations: an in-process channel pair, and a Unix socket carrying
//! length-prefixed frames of [`Envelope::encode`], so the two roles can live in two
//! processes (as two VMMs do). A VMM with its own migration channel implements
//! [`ReturnPath`] over it.
//!
//! # Examples
//!
//! ```
//! use std::time::{Duration, Instant};
//! use switchover::roles::message::{Envelope, Message};
//! use switchover::roles::path::{channel_pair, ReturnPath};
//! let (mut a, mut b) = channel_pair();
//! let e = Envelope { session: 1, seq: 0, fingerprint: 9, message: Message::Query };
//! a.send(&e).unwrap();
//! assert_eq!(b.recv(Instant::now() + Duration::from_secs(1)).unwrap(), e);
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::error::{PathError, MAX_FRAME};
use super::message::Envelope;

/// A bidirectional, message-oriented path between the two roles.
///
/// The contract the roles rely on:
///
/// * `send` returning `Ok` means the envelope was handed to the path whole: the
///   peer receives it unless the path breaks first.
/// * `send` returning `Err` means the envelope was **not** delivered whole: the
///   peer will not act on it (a frame cut short is never decoded as a message).
///   The source relies on this: a state whose send failed never left, so it may
///   resume the guest.
/// * `recv` returns envelopes whole and in the order they were sent, or an error
///   (time-out, closed, undecodable); it never returns a part of one.
///
/// ```
/// use std::time::{Duration, Instant};
/// use switchover::roles::message::{Envelope, Message};
/// use switchover::roles::path::{channel_pair, ReturnPath};
/// use switchover::roles::PathError;
/// let (mut a, b) = channel_pair();
/// assert_eq!(a.recv(Instant::now() + Duration::from_millis(5)).unwrap_err(), PathError::Timeout);
/// drop(b);
/// let e = Envelope { session: 1, seq: 0, fingerprint: 9, message: Message::Query };
/// assert_eq!(a.send(&e), Err(PathError::Closed)); // not delivered
/// ```
pub trait ReturnPath: Send {
    /// Sends an envelope (see the trait docs for what `Ok` and `Err` promise).
    ///
    /// # Errors
    /// [`PathError`]: the envelope was not delivered whole.
    fn send(&mut self, m: &Envelope) -> Result<(), PathError>;
    /// Receives the next envelope, waiting at most until `deadline`.
    ///
    /// # Errors
    /// [`PathError::Timeout`], [`PathError::Closed`], [`PathError::Decode`].
    fn recv(&mut self, deadline: Instant) -> Result<Envelope, PathError>;
}

/// One end of an in-process path.
///
/// ```
/// use std::time::{Duration, Instant};
/// use switchover::roles::message::{Envelope, Message};
/// use switchover::roles::path::{channel_pair, ReturnPath};
/// let (mut a, mut b) = channel_pair();
/// let ping = |seq| Envelope { session: 3, seq, fingerprint: 0, message: Message::Query };
/// a.send(&ping(0)).unwrap();
/// b.send(&ping(0)).unwrap();
/// let deadline = Instant::now() + Duration::from_secs(1);
/// assert_eq!((a.recv(deadline).unwrap(), b.recv(deadline).unwrap()), (ping(0), ping(0)));
/// ```
#[derive(Debug)]
pub struct ChannelPath {
    tx: Sender<Envelope>,
    rx: Receiver<Envelope>,
}

/// Two connected ends of an in-process path.
///
/// ```
/// use std::time::{Duration, Instant};
/// use switchover::roles::message::{Envelope, Message};
/// use switchover::roles::path::{channel_pair, ReturnPath};
/// let (mut a, mut b) = channel_pair();
/// let e = Envelope { session: 1, seq: 0, fingerprint: 0, message: Message::Query };
/// let sent = e.clone();
/// std::thread::spawn(move || a.send(&sent).unwrap());
/// assert_eq!(b.recv(Instant::now() + Duration::from_secs(5)).unwrap(), e);
/// ```
pub fn channel_pair() -> (ChannelPath, ChannelPath) {
    let (a_tx, b_rx) = crossbeam_channel::unbounded();
    let (b_tx, a_rx) = crossbeam_channel::unbounded();
    (ChannelPath { tx: a_tx, rx: a_rx }, ChannelPath { tx: b_tx, rx: b_rx })
}

impl ReturnPath for ChannelPath {
    fn send(&mut self, m: &Envelope) -> Result<(), PathError> {
        self.tx.send(m.clone()).map_err(|_| PathError::Closed)
    }
    fn recv(&mut self, deadline: Instant) -> Result<Envelope, PathError> {
        match self.rx.recv_deadline(deadline) {
            Ok(m) => Ok(m),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(PathError::Timeout),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(PathError::Closed),
        }
    }
}

/// A path over a connected Unix stream socket: 4-byte little-endian length, then
/// the envelope's bytes ([`Envelope::encode`]).
///
/// ```
/// use std::os::unix::net::UnixStream;
/// use std::time::{Duration, Instant};
/// use switchover::roles::message::{Envelope, Message};
/// use switchover::roles::path::{ReturnPath, UnixPath};
/// use switchover::state::InflightReq;
/// let (x, y) = UnixStream::pair().unwrap();
/// let (mut src, mut dst) = (UnixPath::new(x), UnixPath::new(y));
/// let state = Message::State { bases: vec![], inflight: vec![InflightReq { device: 2, ring: 0, id: 5 }], devices: vec![] };
/// let e = Envelope { session: 5, seq: 2, fingerprint: 11, message: state };
/// src.send(&e).unwrap();
/// assert_eq!(dst.recv(Instant::now() + Duration::from_secs(1)).unwrap(), e);
/// ```
#[derive(Debug)]
pub struct UnixPath {
    stream: UnixStream,
}

impl UnixPath {
    /// Wraps a connected stream.
    ///
    /// ```
    /// use std::io::Write;
    /// use std::os::unix::net::UnixStream;
    /// use std::time::{Duration, Instant};
    /// use switchover::roles::PathError;
    /// use switchover::roles::path::{ReturnPath, UnixPath};
    /// let (mut raw, y) = UnixStream::pair().unwrap();
    /// let mut path = UnixPath::new(y);
    /// // A well-framed frame that is not an envelope.
    /// raw.write_all(&4u32.to_le_bytes()).unwrap();
    /// raw.write_all(b"null").unwrap();
    /// assert!(matches!(path.recv(Instant::now() + Duration::from_secs(1)), Err(PathError::Decode(_))));
    /// drop(raw);
    /// assert_eq!(path.recv(Instant::now() + Duration::from_secs(1)).unwrap_err(), PathError::Closed);
    /// ```
    pub fn new(stream: UnixStream) -> UnixPath {
        UnixPath { stream }
    }

    fn read_exact_until(&mut self, buf: &mut [u8], deadline: Instant) -> Result<(), PathError> {
        let mut got = 0;
        while got < buf.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PathError::Timeout);
            }
            self.stream.set_read_timeout(Some(left)).map_err(PathError::io)?;
            match self.stream.read(&mut buf[got..]) {
                Ok(0) => return Err(PathError::Closed),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(PathError::io(e)),
            }
        }
        Ok(())
    }
}

impl ReturnPath for UnixPath {
    fn send(&mut self, m: &Envelope) -> Result<(), PathError> {
        let body = m.encode();
        if body.len() > MAX_FRAME {
            return Err(PathError::FrameTooLarge { len: body.len() });
        }
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&body);
        // A write that fails leaves at most part of the frame on the socket: the
        // peer never decodes it as an envelope (it times out or sees the close).
        self.stream.write_all(&frame).map_err(PathError::io)
    }

    fn recv(&mut self, deadline: Instant) -> Result<Envelope, PathError> {
        let mut len = [0u8; 4];
        self.read_exact_until(&mut len, deadline)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(PathError::FrameTooLarge { len });
        }
        let mut body = vec![0u8; len];
        self.read_exact_until(&mut body, deadline)?;
        Ok(Envelope::decode(&body)?)
    }
}
