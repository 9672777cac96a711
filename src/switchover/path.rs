//! The path between the two roles: the source's state goes forward, the
//! destination's answers (ready, running, start failed) come back.
//!
//! Two implementations: an in-process channel pair, and a Unix socket carrying
//! length-prefixed JSON frames, so the two roles can live in two processes (as two
//! VMMs do).
//!
//! # Examples
//!
//! ```
//! use std::time::{Duration, Instant};
//! use switchover::switchover::path::{channel_pair, Message, ReturnPath};
//! let (mut a, mut b) = channel_pair();
//! a.send(&Message::Ready { prepare_ms: 1.0 }).unwrap();
//! let m = b.recv(Instant::now() + Duration::from_secs(1)).unwrap();
//! assert!(matches!(m, Message::Ready { .. }));
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::error::StepError;
use crate::state::{InflightReq, VringBase};

/// What crosses between the roles.
///
/// ```
/// use switchover::state::VringBase;
/// use switchover::switchover::path::Message;
/// let m = Message::State { bases: vec![VringBase { device: 0, ring: 1, base: 77 }], inflight: vec![] };
/// let text = serde_json::to_string(&m).unwrap();
/// assert!(text.starts_with(r#"{"msg":"state""#));
/// assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), m);
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum Message {
    /// Destination → source: prepared; the source may stop the guest (switchover-ack).
    Ready {
        /// How long the destination's prepare took (ms).
        prepare_ms: f64,
    },
    /// Destination → source: prepare failed; the source must not stop.
    NotReady {
        /// Why.
        cause: StepError,
    },
    /// Source → destination: the devices' state, read while the guest is frozen.
    State {
        /// Every ring's captured base.
        bases: Vec<VringBase>,
        /// Block requests handed over instead of drained, to resubmit.
        #[serde(default)]
        inflight: Vec<InflightReq>,
    },
    /// Source → destination: the source could not stop; the destination must not start.
    Abort {
        /// Why.
        cause: StepError,
    },
    /// Destination → source: devices started, the guest runs on the destination.
    Running {
        /// How long the destination's blackout took (ms).
        blackout_ms: f64,
    },
    /// Destination → source: starting failed; the destination will not run the guest,
    /// so the source resumes it.
    StartFailed {
        /// Why.
        cause: StepError,
    },
}

impl Message {
    /// The message's name, for errors.
    ///
    /// ```
    /// use switchover::switchover::path::Message;
    /// assert_eq!(Message::Running { blackout_ms: 3.5 }.name(), "running");
    /// assert_eq!(Message::Ready { prepare_ms: 1.0 }.name(), "ready");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            Message::Ready { .. } => "ready",
            Message::NotReady { .. } => "not_ready",
            Message::State { .. } => "state",
            Message::Abort { .. } => "abort",
            Message::Running { .. } => "running",
            Message::StartFailed { .. } => "start_failed",
        }
    }
}

/// The path failed.
///
/// ```
/// use std::time::{Duration, Instant};
/// use switchover::switchover::path::{channel_pair, PathError, ReturnPath};
/// let (mut a, b) = channel_pair();
/// assert_eq!(a.recv(Instant::now() + Duration::from_millis(5)).unwrap_err(), PathError::Timeout);
/// drop(b);
/// assert_eq!(a.recv(Instant::now() + Duration::from_secs(1)).unwrap_err(), PathError::Closed);
/// assert_eq!(PathError::Closed.to_string(), "the other side closed the path");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Nothing arrived before the deadline.
    #[error("no message from the other side before the deadline")]
    Timeout,
    /// The other side went away.
    #[error("the other side closed the path")]
    Closed,
    /// A frame that is not a message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// An I/O error.
    #[error("path I/O error: {0}")]
    Io(String),
}

/// A bidirectional, message-oriented path between the two roles.
///
/// ```
/// use std::time::{Duration, Instant};
/// use switchover::switchover::path::{channel_pair, Message, PathError, ReturnPath};
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
    /// use switchover::switchover::path::{channel_pair, Message, PathError, ReturnPath};
    /// let (mut a, b) = channel_pair();
    /// assert!(a.send(&Message::Running { blackout_ms: 1.0 }).is_ok());
    /// drop(b);
    /// assert_eq!(a.send(&Message::Running { blackout_ms: 1.0 }), Err(PathError::Closed));
    /// ```
    fn send(&mut self, m: &Message) -> Result<(), PathError>;
    /// Receives the next message, waiting at most until `deadline`.
    ///
    /// # Errors
    /// [`PathError::Timeout`], [`PathError::Closed`], [`PathError::Malformed`].
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use switchover::switchover::path::{channel_pair, Message, PathError, ReturnPath};
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
/// use switchover::switchover::path::{channel_pair, Message, ReturnPath};
/// let (mut a, mut b) = channel_pair();
/// let deadline = Instant::now() + Duration::from_secs(1);
/// a.send(&Message::Ready { prepare_ms: 1.0 }).unwrap();
/// b.send(&Message::Running { blackout_ms: 2.0 }).unwrap();
/// assert_eq!(b.recv(deadline).unwrap().name(), "ready");
/// assert_eq!(a.recv(deadline).unwrap().name(), "running");
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
/// use switchover::switchover::path::{channel_pair, Message, ReturnPath};
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

/// Largest frame accepted (a topology of thousands of rings fits easily).
const MAX_FRAME: u32 = 16 << 20;

/// A path over a connected Unix stream socket: 4-byte little-endian length, then JSON.
///
/// ```
/// use std::os::unix::net::UnixStream;
/// use std::time::{Duration, Instant};
/// use switchover::state::InflightReq;
/// use switchover::switchover::path::{Message, ReturnPath, UnixPath};
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
    /// use switchover::switchover::path::{PathError, ReturnPath, UnixPath};
    /// let (mut raw, y) = UnixStream::pair().unwrap();
    /// let mut path = UnixPath::new(y);
    /// // A well-framed frame that is not a message.
    /// raw.write_all(&4u32.to_le_bytes()).unwrap();
    /// raw.write_all(b"null").unwrap();
    /// assert!(matches!(path.recv(Instant::now() + Duration::from_secs(1)), Err(PathError::Malformed(_))));
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
            self.stream.set_read_timeout(Some(left)).map_err(|e| PathError::Io(e.to_string()))?;
            match self.stream.read(&mut buf[got..]) {
                Ok(0) => return Err(PathError::Closed),
                Ok(n) => got += n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Err(PathError::Timeout)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(PathError::Io(e.to_string())),
            }
        }
        Ok(())
    }
}

impl ReturnPath for UnixPath {
    fn send(&mut self, m: &Message) -> Result<(), PathError> {
        let body = serde_json::to_vec(m).map_err(|e| PathError::Malformed(e.to_string()))?;
        let len = u32::try_from(body.len()).map_err(|_| PathError::Malformed("frame too large".into()))?;
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&body);
        self.stream.write_all(&frame).map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => PathError::Closed,
            _ => PathError::Io(e.to_string()),
        })
    }

    fn recv(&mut self, deadline: Instant) -> Result<Message, PathError> {
        let mut len = [0u8; 4];
        self.read_exact_until(&mut len, deadline)?;
        let len = u32::from_le_bytes(len);
        if len > MAX_FRAME {
            return Err(PathError::Malformed(format!("frame of {len} bytes")));
        }
        let mut body = vec![0u8; len as usize];
        self.read_exact_until(&mut body, deadline)?;
        serde_json::from_slice(&body).map_err(|e| PathError::Malformed(e.to_string()))
    }
}
