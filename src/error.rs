//! Typed errors: what went wrong in a step, naming the side, device, ring and step.
//!
//! # Examples
//!
//! ```
//! use switchover::error::{StepError, StepFailure};
//! use switchover::step::Side;
//! let e = StepError {
//!     side: Side::Source,
//!     device: "net3".into(),
//!     ring: Some(5),
//!     step: "get_vring_base".into(),
//!     failure: StepFailure::Disconnected,
//! };
//! assert_eq!(e.to_string(), "src net3 ring 5 get_vring_base: backend closed its control channel");
//! ```

use std::fmt;
use std::time::Duration;

use crate::step::Side;

/// Why one step failed.
///
/// ```
/// use std::time::Duration;
/// use switchover::error::StepFailure;
/// let f = StepFailure::Timeout { after: Duration::from_millis(250) };
/// assert_eq!(f.to_string(), "no reply within 250 ms");
/// assert_eq!(StepFailure::Other { message: "device busy".into() }.to_string(), "device busy");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepFailure {
    /// The backend answered with an error.
    #[error("backend answered an error: {message}")]
    Backend {
        /// What it said.
        message: String,
    },
    /// No reply before the step's deadline.
    #[error("no reply within {} ms", after.as_millis())]
    Timeout {
        /// The deadline that passed.
        after: Duration,
    },
    /// The backend closed its control channel (or its process died).
    #[error("backend closed its control channel")]
    Disconnected,
    /// The backend answered something impossible.
    #[error("backend answered garbage: {what}")]
    Garbage {
        /// What was wrong.
        what: String,
    },
    /// State the step needs is missing (e.g. no vring base captured for this ring).
    #[error("missing state: {what}")]
    MissingState {
        /// What is missing.
        what: String,
    },
    /// The action dropped its completion without answering.
    #[error("step abandoned: its completion was dropped without an answer")]
    Abandoned,
    /// A fault injected on purpose.
    #[error("injected fault: {what}")]
    Injected {
        /// Which fault.
        what: String,
    },
    /// Anything else a VMM's own step reports.
    #[error("{message}")]
    Other {
        /// The message.
        message: String,
    },
}

/// A failed step: side, device name, ring, step kind, and why.
///
/// ```
/// use switchover::error::{StepError, StepFailure};
/// use switchover::step::Side;
/// let e = StepError {
///     side: Side::Destination,
///     device: "blk0".into(),
///     ring: None,
///     step: "set_mem_table".into(),
///     failure: StepFailure::Abandoned,
/// };
/// assert_eq!(e.to_string(), "dst blk0 set_mem_table: step abandoned: its completion was dropped without an answer");
/// // The failure is the error's source.
/// assert!(std::error::Error::source(&e).is_some());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub struct StepError {
    /// Which side ran it.
    pub side: Side,
    /// Device name, e.g. `net3`.
    pub device: String,
    /// Ring, for per-ring steps.
    pub ring: Option<u32>,
    /// Step kind name, e.g. `get_vring_base`.
    pub step: String,
    /// Why it failed.
    #[source]
    pub failure: StepFailure,
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.side.short(), self.device)?;
        if let Some(r) = self.ring {
            write!(f, " ring {r}")?;
        }
        write!(f, " {}: {}", self.step, self.failure)
    }
}
