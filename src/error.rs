//! Typed errors of a step: why it failed ([`StepFailure`]) and which step it was
//! ([`StepError`]: side, device, step and ring, by id, with the device's name
//! resolved through the plan).
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use switchover::error::{StepError, StepFailure};
//! use switchover::ids::Side;
//! use switchover::recipe::{build, NoCosts, RecipeOptions};
//! use switchover::step::StepKind;
//! use switchover::topology::Topology;
//! let topo = Arc::new(Topology::preset("small").unwrap());
//! let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
//! let get = plan.steps().iter().find(|s| s.kind == StepKind::GetVringBase && s.ring == Some(1)).unwrap();
//! let e = StepError::new(&plan, get.id, StepFailure::Disconnected);
//! assert_eq!(e.to_string(), "src net0 ring 1 get_vring_base: backend closed its control channel");
//! assert_eq!((e.device, e.step), (get.device, get.id));
//! ```

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::ids::{DeviceId, Side, StepId};
use crate::plan::Plan;
use crate::step::StepKind;

/// An I/O error that can be cloned and compared (by kind and message), so a step
/// failure that wraps one can be reported, compared in tests and carried to the
/// other side of a migration.
///
/// ```
/// use std::io;
/// use switchover::error::IoCause;
/// let a = IoCause::from(io::Error::from(io::ErrorKind::BrokenPipe));
/// assert_eq!(a.kind(), io::ErrorKind::BrokenPipe);
/// assert_eq!(a.clone(), a);
/// assert!(std::error::Error::source(&a).is_none());
/// ```
#[derive(Debug, Clone)]
pub struct IoCause(Arc<io::Error>);

impl IoCause {
    /// The error's kind.
    ///
    /// ```
    /// use std::io;
    /// use switchover::error::IoCause;
    /// assert_eq!(IoCause::from(io::Error::other("x")).kind(), io::ErrorKind::Other);
    /// ```
    pub fn kind(&self) -> io::ErrorKind {
        self.0.kind()
    }
    /// The wrapped error.
    ///
    /// ```
    /// use std::io;
    /// use switchover::error::IoCause;
    /// let c = IoCause::from(io::Error::from_raw_os_error(libc_enoent()));
    /// assert_eq!(c.get().raw_os_error(), Some(libc_enoent()));
    /// # fn libc_enoent() -> i32 { 2 }
    /// ```
    pub fn get(&self) -> &io::Error {
        &self.0
    }
}

impl From<io::Error> for IoCause {
    fn from(e: io::Error) -> Self {
        IoCause(Arc::new(e))
    }
}

impl PartialEq for IoCause {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.0.to_string() == other.0.to_string()
    }
}

impl Eq for IoCause {}

impl fmt::Display for IoCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for IoCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Why one step failed.
///
/// ```
/// use std::time::Duration;
/// use switchover::error::StepFailure;
/// let f = StepFailure::Timeout { after: Duration::from_millis(250) };
/// assert_eq!(f.to_string(), "no reply within 250 ms");
/// assert_eq!(StepFailure::Other { message: "device busy".into() }.to_string(), "device busy");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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
    /// The action panicked; the engine caught it and failed the step.
    #[error("step panicked: {message}")]
    Panicked {
        /// The panic's message.
        message: String,
    },
    /// A fault injected on purpose.
    #[error("injected fault: {what}")]
    Injected {
        /// Which fault.
        what: String,
    },
    /// An operating-system call failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The error.
        #[source]
        source: IoCause,
    },
    /// Anything else a VMM's own step reports.
    #[error("{message}")]
    Other {
        /// The message.
        message: String,
    },
}

impl StepFailure {
    /// A failed OS call, `op` naming what was being done.
    ///
    /// ```
    /// use std::io;
    /// use switchover::error::StepFailure;
    /// let f = StepFailure::io("sending GET_VRING_BASE", io::Error::from(io::ErrorKind::WouldBlock));
    /// assert!(f.to_string().starts_with("sending GET_VRING_BASE: "));
    /// assert!(std::error::Error::source(&f).is_some());
    /// ```
    pub fn io(op: impl Into<String>, e: io::Error) -> StepFailure {
        StepFailure::Io { op: op.into(), source: e.into() }
    }
}

/// A failed step: side, device, step and ring, by id; the device's name resolved
/// through the plan; and why.
///
/// ```
/// use std::sync::Arc;
/// use switchover::error::{StepError, StepFailure};
/// use switchover::ids::Side;
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::step::StepKind;
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("single-blk").unwrap());
/// let plan = build(&topo, Side::Destination, &RecipeOptions::engine(), &NoCosts).unwrap();
/// let mt = plan.steps().iter().find(|s| s.kind == StepKind::SetMemTable).unwrap();
/// let e = StepError::new(&plan, mt.id, StepFailure::Abandoned);
/// assert_eq!(e.to_string(), "dst blk0 set_mem_table: step abandoned: its completion was dropped without an answer");
/// // The failure is the error's source.
/// assert!(std::error::Error::source(&e).is_some());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct StepError {
    /// Which side ran it.
    pub side: Side,
    /// The step, in its side's plan.
    pub step: StepId,
    /// The device it belongs to.
    pub device: DeviceId,
    /// The device's name, e.g. `net3` (resolved through the plan).
    pub device_name: Arc<str>,
    /// Ring, for per-ring steps.
    pub ring: Option<u32>,
    /// What the step does.
    pub kind: StepKind,
    /// Why it failed.
    #[source]
    pub failure: StepFailure,
}

impl StepError {
    /// The error of step `id` of `plan`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::error::{StepError, StepFailure};
    /// use switchover::ids::{Side, StepId};
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("single-net").unwrap());
    /// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
    /// let e = StepError::new(&plan, StepId(0), StepFailure::Disconnected);
    /// assert_eq!(&*e.device_name, "net0");
    /// assert_eq!(e.kind, plan.step(StepId(0)).kind);
    /// ```
    pub fn new(plan: &Plan, id: StepId, failure: StepFailure) -> StepError {
        let s = plan.step(id);
        StepError {
            side: plan.side(),
            step: id,
            device: s.device,
            device_name: plan.topology().device(s.device).name.as_str().into(),
            ring: s.ring,
            kind: s.kind.clone(),
            failure,
        }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.side.short(), self.device_name)?;
        if let Some(r) = self.ring {
            write!(f, " ring {r}")?;
        }
        write!(f, " {}: {}", self.kind, self.failure)
    }
}
