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

use std::sync::Arc;

use crate::error::{IoCause, StepError};
use crate::ids::Side;

/// Largest frame a path accepts, in bytes (a topology of thousands of rings fits easily).
pub const MAX_FRAME: usize = 16 << 20;

/// Why a switchover did not complete: a step that failed, the path between the two
/// roles, a message that does not belong, a VMM hook, or a check of the roles' own.
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
    /// A message that is not of this switchover (another session, out of
    /// sequence, another VM's topology): refused.
    #[error("{side} refused a message: {problem}")]
    Refused {
        /// The side that refused it.
        side: Side,
        /// Why.
        problem: Refusal,
    },
    /// A VMM hook failed.
    #[error("{side} {hook}: {source}")]
    Hook {
        /// The side whose hook it was.
        side: Side,
        /// Which hook.
        hook: HookKind,
        /// What the VMM said.
        #[source]
        source: HookError,
    },
    /// A role's own check before it reports success failed: the switchover is not
    /// reported done.
    #[error("{side} invariant: {what}")]
    Invariant {
        /// The side.
        side: Side,
        /// What did not hold.
        what: String,
    },
    /// This side's switchover already ran: a setup runs once.
    #[error("{side}: this switchover already ran")]
    AlreadyRan {
        /// The side.
        side: Side,
    },
}

/// Why a role refused a message.
///
/// ```
/// use switchover::roles::Refusal;
/// let r = Refusal::Session { expected: 7, got: 8 };
/// assert_eq!(r.to_string(), "session 8, this switchover is session 7");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Another switchover's message.
    #[error("session {got}, this switchover is session {expected}")]
    Session {
        /// This switchover's session id.
        expected: u64,
        /// The message's.
        got: u64,
    },
    /// A message out of sequence (lost, repeated or replayed).
    #[error("sequence number {got}, {expected} expected")]
    Sequence {
        /// The next sequence number expected.
        expected: u32,
        /// The message's.
        got: u32,
    },
    /// A message about another topology (another VM, or another device layout).
    #[error("topology fingerprint {got:#018x}, this VM's is {expected:#018x}")]
    Fingerprint {
        /// This VM's topology fingerprint.
        expected: u64,
        /// The message's.
        got: u64,
    },
}

/// The VMM hooks a role calls ([`super::VmmHooks`]).
///
/// ```
/// use switchover::roles::HookKind;
/// assert_eq!(HookKind::StopVcpus.to_string(), "stop_vcpus");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HookKind {
    /// The source's configuration snapshot for the destination's prepare.
    SnapshotConfig,
    /// The destination stages that snapshot.
    StageConfig,
    /// The source copies RAM while the guest runs.
    Precopy,
    /// The window opens: the source's vCPUs stop.
    StopVcpus,
    /// The source saves its devices' state after they stopped.
    SaveState,
    /// The destination loads it before its devices start.
    LoadState,
    /// The guest runs on this side.
    ResumeVcpus,
}

impl HookKind {
    const ALL: [HookKind; 7] = [
        HookKind::SnapshotConfig,
        HookKind::StageConfig,
        HookKind::Precopy,
        HookKind::StopVcpus,
        HookKind::SaveState,
        HookKind::LoadState,
        HookKind::ResumeVcpus,
    ];

    /// Snake-case name.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::SnapshotConfig => "snapshot_config",
            HookKind::StageConfig => "stage_config",
            HookKind::Precopy => "precopy",
            HookKind::StopVcpus => "stop_vcpus",
            HookKind::SaveState => "save_state",
            HookKind::LoadState => "load_state",
            HookKind::ResumeVcpus => "resume_vcpus",
        }
    }

    pub(super) fn from_index(i: u8) -> Option<HookKind> {
        HookKind::ALL.get(i as usize).copied()
    }
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a VMM hook reports when it fails: the VMM's own error, kept as the source,
/// and comparable by its message (so an outcome can be compared and carried).
///
/// ```
/// use switchover::roles::HookError;
/// let e = HookError::new(std::io::Error::other("KVM_RUN still running"));
/// assert_eq!(e.to_string(), "KVM_RUN still running");
/// assert_eq!(e.clone(), e);
/// ```
#[derive(Debug, Clone)]
pub struct HookError(Arc<dyn std::error::Error + Send + Sync>);

impl HookError {
    /// Wraps the VMM's error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> HookError {
        HookError(Arc::new(e))
    }
    /// A hook error from a message only.
    pub fn msg(m: impl Into<String>) -> HookError {
        HookError(Arc::new(MessageError(m.into())))
    }
}

/// An error that is only a message (a hook error carried from the other side).
#[derive(Debug)]
struct MessageError(String);

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MessageError {}

impl PartialEq for HookError {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl Eq for HookError {}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for HookError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
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
            SwitchoverError::ReturnPath { side, .. }
            | SwitchoverError::Unexpected { side, .. }
            | SwitchoverError::Refused { side, .. }
            | SwitchoverError::Hook { side, .. }
            | SwitchoverError::Invariant { side, .. }
            | SwitchoverError::AlreadyRan { side } => *side,
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
    /// [`Message::Config`](super::Message::Config).
    Config,
    /// [`Message::WillNotRun`](super::Message::WillNotRun).
    WillNotRun,
    /// [`Message::Query`](super::Message::Query).
    Query,
    /// [`Message::Verdict`](super::Message::Verdict).
    Verdict,
}

impl MessageKind {
    pub(super) const ALL: [MessageKind; 10] = [
        MessageKind::Ready,
        MessageKind::NotReady,
        MessageKind::State,
        MessageKind::Abort,
        MessageKind::Running,
        MessageKind::StartFailed,
        MessageKind::Config,
        MessageKind::WillNotRun,
        MessageKind::Query,
        MessageKind::Verdict,
    ];

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
            MessageKind::Config => "config",
            MessageKind::WillNotRun => "will_not_run",
            MessageKind::Query => "query",
            MessageKind::Verdict => "verdict",
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
