//! The vocabulary of failure between the two roles: why a switchover did not
//! complete ([`SwitchoverError`]), what a role was doing on the return path
//! ([`PathOp`]), how the path failed ([`PathError`], [`DecodeError`]), and the
//! kinds of message the errors name ([`MessageKind`]).
//!
//! # Examples
//!
//! ```
//! use switchover::ids::Side;
//! use switchover::roles::{MessageKind, PathError, PathOp, SwitchoverError};
//! let e = SwitchoverError::ReturnPath { side: Side::Destination, op: PathOp::Wait(MessageKind::State), source: PathError::Closed };
//! assert_eq!(e.side(), Side::Destination);
//! assert_eq!(e.to_string(), "dst return path, wait for state: the other side closed the path");
//! ```

use std::fmt;

use crate::error::{IoCause, StepError};
use crate::ids::Side;

/// Largest frame a path accepts, in bytes (a topology of thousands of rings fits easily).
pub const MAX_FRAME: usize = 16 << 20;

/// Why a switchover did not complete: a step that failed, or the path between
/// the two roles.
///
/// ```
/// use switchover::ids::Side;
/// use switchover::roles::MessageKind;
/// use switchover::roles::PathError;
/// use switchover::roles::{PathOp, SwitchoverError};
/// let e = SwitchoverError::ReturnPath { side: Side::Source, op: PathOp::Wait(MessageKind::Ready), source: PathError::Timeout };
/// assert_eq!(e.to_string(), "src return path, wait for ready: no message from the other side before the deadline");
/// assert!(e.step().is_none() && e.device_name().is_none());
/// assert!(std::error::Error::source(&e).is_some());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SwitchoverError {
    /// A step failed (on either side).
    #[error(transparent)]
    Step(#[from] StepError),
    /// Sending to or receiving from the other role failed.
    #[error("{side} return path, {op}: {source}")]
    ReturnPath {
        /// The side that saw it.
        side: Side,
        /// What it was doing.
        op: PathOp,
        /// Why it failed.
        #[source]
        source: PathError,
    },
    /// The other role sent a message out of turn.
    #[error("{side}: got '{got}' while waiting for {waiting_for}")]
    Unexpected {
        /// The side that saw it.
        side: Side,
        /// What it waited for.
        waiting_for: MessageKind,
        /// What came.
        got: MessageKind,
    },
}

impl SwitchoverError {
    /// The failed step, if a step failed.
    ///
    /// ```
    /// use switchover::roles::SwitchoverError;
    /// use switchover::ids::Side;
    /// use switchover::roles::MessageKind;
    /// let e = SwitchoverError::Unexpected { side: Side::Destination, waiting_for: MessageKind::State, got: MessageKind::Ready };
    /// assert!(e.step().is_none());
    /// ```
    pub fn step(&self) -> Option<&StepError> {
        match self {
            SwitchoverError::Step(e) => Some(e),
            _ => None,
        }
    }
    /// The name of the device whose step failed, if a step failed.
    ///
    /// ```
    /// use switchover::roles::SwitchoverError;
    /// use switchover::ids::Side;
    /// use switchover::roles::MessageKind;
    /// let e = SwitchoverError::Unexpected { side: Side::Source, waiting_for: MessageKind::Ready, got: MessageKind::State };
    /// assert_eq!(e.device_name(), None);
    /// ```
    pub fn device_name(&self) -> Option<&str> {
        self.step().map(|e| &*e.device_name)
    }
    /// The side that saw the failure.
    ///
    /// ```
    /// use switchover::roles::SwitchoverError;
    /// use switchover::ids::Side;
    /// use switchover::roles::MessageKind;
    /// let e = SwitchoverError::Unexpected { side: Side::Source, waiting_for: MessageKind::Ready, got: MessageKind::State };
    /// assert_eq!(e.side(), Side::Source);
    /// ```
    pub fn side(&self) -> Side {
        match self {
            SwitchoverError::Step(e) => e.side,
            SwitchoverError::ReturnPath { side, .. } | SwitchoverError::Unexpected { side, .. } => *side,
        }
    }
}

/// What a role was doing on the return path when it failed.
///
/// ```
/// use switchover::roles::MessageKind;
/// use switchover::roles::PathOp;
/// assert_eq!(PathOp::Send(MessageKind::State).to_string(), "send state");
/// assert_eq!(PathOp::Wait(MessageKind::Running).to_string(), "wait for running");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathOp {
    /// Sending a message of this kind.
    Send(MessageKind),
    /// Waiting for a message of this kind.
    Wait(MessageKind),
}

impl std::fmt::Display for PathOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathOp::Send(k) => write!(f, "send {k}"),
            PathOp::Wait(k) => write!(f, "wait for {k}"),
        }
    }
}

/// The kind of a [`Message`](super::Message), without its contents (for errors and logs).
///
/// ```
/// use switchover::roles::MessageKind;
/// assert_eq!(MessageKind::NotReady.name(), "not_ready");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageKind {
    /// [`Message::Ready`](super::Message::Ready).
    Ready,
    /// [`Message::NotReady`](super::Message::NotReady).
    NotReady,
    /// [`Message::State`](super::Message::State).
    State,
    /// [`Message::Abort`](super::Message::Abort).
    Abort,
    /// [`Message::Running`](super::Message::Running).
    Running,
    /// [`Message::StartFailed`](super::Message::StartFailed).
    StartFailed,
}

impl MessageKind {
    pub(super) const ALL: [MessageKind; 6] =
        [MessageKind::Ready, MessageKind::NotReady, MessageKind::State, MessageKind::Abort, MessageKind::Running, MessageKind::StartFailed];

    /// Snake-case name.
    ///
    /// ```
    /// use switchover::roles::MessageKind;
    /// assert_eq!(MessageKind::Running.name(), "running");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::Ready => "ready",
            MessageKind::NotReady => "not_ready",
            MessageKind::State => "state",
            MessageKind::Abort => "abort",
            MessageKind::Running => "running",
            MessageKind::StartFailed => "start_failed",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A frame that is not a well-formed [`Message`](super::Message).
///
/// ```
/// use switchover::roles::message::Message;
/// let e = Message::decode(&[0, 1, 2]).unwrap_err();
/// assert_eq!(e.offset, 1);
/// assert_eq!(e.to_string(), "malformed message at byte 1: needs 8 more byte(s), has 2");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed message at byte {offset}: {what}")]
pub struct DecodeError {
    /// Where in the frame.
    pub offset: usize,
    /// What is wrong.
    pub what: String,
}

/// The path failed.
///
/// ```
/// use std::time::{Duration, Instant};
/// use switchover::roles::path::{channel_pair, ReturnPath};
/// use switchover::roles::PathError;
/// let (mut a, b) = channel_pair();
/// assert_eq!(a.recv(Instant::now() + Duration::from_millis(5)).unwrap_err(), PathError::Timeout);
/// drop(b);
/// assert_eq!(a.recv(Instant::now() + Duration::from_secs(1)).unwrap_err(), PathError::Closed);
/// assert_eq!(PathError::Closed.to_string(), "the other side closed the path");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// Nothing arrived before the deadline.
    #[error("no message from the other side before the deadline")]
    Timeout,
    /// The other side went away.
    #[error("the other side closed the path")]
    Closed,
    /// A frame that is not a message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A frame longer than [`MAX_FRAME`] bytes.
    #[error("a frame of {len} bytes (at most {MAX_FRAME})")]
    FrameTooLarge {
        /// Its announced length.
        len: usize,
    },
    /// An I/O error on the path.
    #[error("path I/O error")]
    Io(#[source] IoCause),
}

impl PathError {
    pub(super) fn io(e: std::io::Error) -> PathError {
        match e.kind() {
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof => PathError::Closed,
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => PathError::Timeout,
            _ => PathError::Io(e.into()),
        }
    }
}
