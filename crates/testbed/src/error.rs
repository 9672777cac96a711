//! What can go wrong in the test rig, typed, each keeping its cause.
//!
//! # Examples
//!
//! ```
//! use std::io;
//! use switchover_testbed::error::RigError;
//! let e = RigError::io("blk0: bind /tmp/x.sock")(io::Error::from(io::ErrorKind::AddrInUse));
//! assert!(e.to_string().starts_with("blk0: bind /tmp/x.sock: "));
//! assert!(std::error::Error::source(&e).is_some());
//! ```

use std::io;

use switchover::error::StepFailure;
use switchover::plan::PlanError;
use switchover::topology::TopologyError;
use switchover_vhost::frontend::ConnectError;
use switchover_vhost::kvm::KvmError;

/// A failure of the rig (not of a switchover step: those are the run's outcome).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RigError {
    /// An OS call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// Guest memory could not be accessed.
    #[error("{what}: {source}")]
    Memory {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// A backend's vhost-user handshake failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// KVM could not be used.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// A request to a backend outside a switchover plan (bringing a side up) failed.
    #[error("{what}: {source}")]
    Step {
        /// Which request.
        what: String,
        /// Why it failed.
        #[source]
        source: StepFailure,
    },
    /// The backend daemon failed.
    #[error("{what}: {source}")]
    Daemon {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: DaemonError,
    },
    /// The topology is not valid.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// A plan could not be built.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A backend process did not come up, or went away.
    #[error("{process}: {what}")]
    Process {
        /// The process.
        process: String,
        /// What happened.
        what: String,
    },
    /// The socket's peer is another user's process.
    #[error("peer uid {uid} (pid {pid}) is not this process's uid {me}")]
    PeerUid {
        /// Its uid.
        uid: u32,
        /// Its pid.
        pid: i32,
        /// Ours.
        me: u32,
    },
    /// The guest's requests did not complete as they must.
    #[error("{0}")]
    Guest(String),
    /// The rig was asked for something it cannot do.
    #[error("{0}")]
    Config(String),
}

impl RigError {
    /// A mapper from an I/O error to [`RigError::Io`] with `what` as context.
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> RigError {
        let what = what.into();
        move |source| RigError::Io { what, source }
    }
    /// A mapper from a guest-memory error to [`RigError::Memory`].
    pub fn memory(what: impl Into<String>) -> impl FnOnce(vm_memory::GuestMemoryError) -> RigError {
        let what = what.into();
        move |source| RigError::Memory { what, source }
    }
    /// A mapper from a step failure to [`RigError::Step`].
    pub fn step(what: impl Into<String>) -> impl FnOnce(StepFailure) -> RigError {
        let what = what.into();
        move |source| RigError::Step { what, source }
    }
}

/// An error of the `vhost-user-backend` daemon (that type implements `Display`
/// only; this gives it `std::error::Error`). It is not `Sync` either (one variant
/// holds a thread's panic payload), so it is kept behind a lock: [`RigError`] stays
/// `Send + Sync`, and so does a run that holds one.
///
/// ```
/// use switchover_testbed::error::{DaemonError, RigError};
/// fn send_sync<T: Send + Sync>() {}
/// send_sync::<RigError>();
/// let e = DaemonError::from(vhost_user_backend::Error::WaitDaemon(Box::new("panicked")));
/// assert_eq!(e.to_string(), "failed to wait for daemon exit");
/// ```
#[derive(Debug)]
pub struct DaemonError(pub parking_lot::Mutex<vhost_user_backend::Error>);

impl From<vhost_user_backend::Error> for DaemonError {
    fn from(e: vhost_user_backend::Error) -> Self {
        DaemonError(parking_lot::Mutex::new(e))
    }
}

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.lock().fmt(f)
    }
}

impl std::error::Error for DaemonError {}
