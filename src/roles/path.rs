//! The path between the two roles: the source's state goes forward, the
//! destination's answers (ready, running, start failed) come back.
//!
//! Two implementations: an in-process channel pair, and a Unix socket carrying
//! length-prefixed frames of [`Message::encode`], so the two roles can live in two
//! processes (as two VMMs do).
//!
//! # Examples
//!
//! ```
//! use std::time::{Duration, Instant};
//! use switchover::roles::path::{channel_pair, ReturnPath};
//! use switchover::roles::message::Message;
//! let (mut a, mut b) = channel_pair();
//! a.send(&Message::Ready { prepare_ms: 1.0 }).unwrap();
//! let m = b.recv(Instant::now() + Duration::from_secs(1)).unwrap();
//! assert!(matches!(m, Message::Ready { .. }));
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::error::{PathError, MAX_FRAME};
use super::message::Message;

/// A bidirectional, message-oriented path between the two roles.
///
/// ```
/// use std::time::{Duration, Instant};
/// use switchover::roles::path::{channel_pair, ReturnPath};
/// use switchover::roles::message::Message;
/// use switchover::roles::PathError;
/// /// The destination's side of the ready-ack, on any path.
/// fn ack(path: &mut dyn ReturnPath) -> Result<(), PathError> {
///     path.send(&Message::Ready { prepare_ms: 12.0 })
/// }
/// let (mut src, mut dst) = channel_pair();
/// ack(&mut dst).unwrap();
/// let got = src.recv(Instant::now() + Duration::from_secs(1)).unwrap();
/// assert_eq!(got, Message::Ready { prepare_ms: 12.0 });
/// ```
pub trait ReturnPath: Send {
    /// Sends a message.
    ///
    /// # Errors
    /// [`PathError`] if the other side is gone.
    ///
    /// ```
    /// use switchover::roles::path::{channel_pair, ReturnPath};
    /// use switchover::roles::message::Message;
    /// use switchover::roles::PathError;
    /// let (mut a, b) = channel_pair();
    /// assert!(a.send(&Message::Running { blackout_ms: 1.0 }).is_ok());
    /// drop(b);
    /// assert_eq!(a.send(&Message::Running { blackout_ms: 1.0 }), Err(PathError::Closed));
    /// ```
    fn send(&mut self, m: &Message) -> Result<(), PathError>;
    /// Receives the next message, waiting at most until `deadline`.
    ///
    /// # Errors
    /// [`PathError::Timeout`], [`PathError::Closed`], [`PathError::Decode`].
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use switchover::roles::path::{channel_pair, ReturnPath};
    /// use switchover::roles::message::Message;
    /// use switchover::roles::PathError;
    /// let (mut a, mut b) = channel_pair();
    /// a.send(&Message::Running { blackout_ms: 2.0 }).unwrap();
    /// let soon = Instant::now() + Duration::from_millis(10);
    /// assert_eq!(b.recv(soon), Ok(Message::Running { blackout_ms: 2.0 }));
    /// assert_eq!(b.recv(soon), Err(PathError::Timeout)); // nothing more came
    /// ```
    fn recv(&mut self, deadline: Instant) -> Result<Message, PathError>;
}

/// One end of an in-process path.
///
/// ```
/// use std::time::{Duration, Instant};
/// use switchover::roles::path::{channel_pair, ReturnPath};
/// use switchover::roles::message::Message;
/// use switchover::roles::MessageKind;
/// let (mut a, mut b) = channel_pair();
/// let deadline = Instant::now() + Duration::from_secs(1);
/// a.send(&Message::Ready { prepare_ms: 1.0 }).unwrap();
/// b.send(&Message::Running { blackout_ms: 2.0 }).unwrap();
/// assert_eq!(b.recv(deadline).unwrap().kind(), MessageKind::Ready);
/// assert_eq!(a.recv(deadline).unwrap().kind(), MessageKind::Running);
/// ```
#[derive(Debug)]
pub struct ChannelPath {
    tx: Sender<Message>,
    rx: Receiver<Message>,
}

/// Two connected in-process ends.
///
/// ```
/// use std::time::{Duration, Instant};
/// use switchover::roles::path::{channel_pair, ReturnPath};
/// use switchover::roles::message::Message;
/// let (mut a, mut b) = channel_pair();
/// std::thread::spawn(move || a.send(&Message::Ready { prepare_ms: 0.5 }).unwrap());
/// assert_eq!(b.recv(Instant::now() + Duration::from_secs(5)).unwrap(), Message::Ready { prepare_ms: 0.5 });
/// ```
pub fn channel_pair() -> (ChannelPath, ChannelPath) {
    let (a_tx, b_rx) = crossbeam_channel::unbounded();
    let (b_tx, a_rx) = crossbeam_channel::unbounded();
    (ChannelPath { tx: a_tx, rx: a_rx }, ChannelPath { tx: b_tx, rx: b_rx })
}

impl ReturnPath for ChannelPath {
    fn send(&mut self, m: &Message) -> Result<(), PathError> {
        self.tx.send(m.clone()).map_err(|_| PathError::Closed)
    }
    fn recv(&mut self, deadline: Instant) -> Result<Message, PathError> {
        match self.rx.recv_deadline(deadline) {
            Ok(m) => Ok(m),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(PathError::Timeout),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(PathError::Closed),
        }
    }
}

/// A path over a connected Unix stream socket: 4-byte little-endian length, then
/// the message's bytes ([`Message::encode`]).
///
/// ```
/// use std::os::unix::net::UnixStream;
/// use std::time::{Duration, Instant};
/// use switchover::state::InflightReq;
/// use switchover::roles::message::Message;
/// use switchover::roles::path::{ReturnPath, UnixPath};
/// let (x, y) = UnixStream::pair().unwrap();
/// let (mut src, mut dst) = (UnixPath::new(x), UnixPath::new(y));
/// let state = Message::State { bases: vec![], inflight: vec![InflightReq { device: 2, ring: 0, id: 5 }] };
/// src.send(&state).unwrap();
/// assert_eq!(dst.recv(Instant::now() + Duration::from_secs(1)).unwrap(), state);
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
    /// // A well-framed frame that is not a message.
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
    fn send(&mut self, m: &Message) -> Result<(), PathError> {
        let body = m.encode();
        if body.len() > MAX_FRAME {
            return Err(PathError::FrameTooLarge { len: body.len() });
        }
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&body);
        self.stream.write_all(&frame).map_err(PathError::io)
    }

    fn recv(&mut self, deadline: Instant) -> Result<Message, PathError> {
        let mut len = [0u8; 4];
        self.read_exact_until(&mut len, deadline)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(PathError::FrameTooLarge { len });
        }
        let mut body = vec![0u8; len];
        self.read_exact_until(&mut body, deadline)?;
        Ok(Message::decode(&body)?)
    }
}
