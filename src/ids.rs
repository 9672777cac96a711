//! Identifiers and the small enums every layer names: devices, steps, sides,
//! windows, affinities.
//!
//! # Examples
//!
//! ```
//! use switchover::ids::{DeviceId, Side, Window};
//! assert_eq!(DeviceId(3).to_string(), "dev3");
//! assert_eq!(Side::Source.short(), "src");
//! assert!(Window::Prepare < Window::Blackout);
//! ```

use std::fmt;

/// Index of a device in its [`Topology`](crate::topology::Topology).
///
/// ```
/// use switchover::ids::DeviceId;
/// use switchover::topology::Topology;
/// let t = Topology::preset("small").unwrap();
/// assert_eq!(t.device_by_name("blk1").unwrap().id, DeviceId(3));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub u32);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dev{}", self.0)
    }
}

/// Index of a step in its plan.
///
/// ```
/// use std::sync::Arc;
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::ids::{Side, StepId};
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
/// assert_eq!(plan.step(StepId(3)).id, StepId(3));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct StepId(pub u32);

/// Which end of the migration runs a step.
///
/// ```
/// use switchover::ids::Side;
/// assert_eq!(Side::Destination.short(), "dst");
/// assert!(Side::Source < Side::Destination);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The VM being migrated away from: stops its devices.
    Source,
    /// The VM being migrated to: starts its devices.
    Destination,
}

impl Side {
    /// `src` or `dst`.
    ///
    /// ```
    /// assert_eq!(switchover::ids::Side::Source.short(), "src");
    /// ```
    pub fn short(self) -> &'static str {
        match self {
            Side::Source => "src",
            Side::Destination => "dst",
        }
    }
}

/// When a step may run, relative to the guest being frozen.
///
/// ```
/// use switchover::ids::Window;
/// assert!(Window::Blackout < Window::Cleanup);
/// assert_eq!(Window::Prepare.name(), "prepare");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Window {
    /// May run while the guest still runs on the source.
    Prepare,
    /// Must run while the guest is frozen: this is the downtime.
    Blackout,
    /// May run once the destination runs the guest.
    Cleanup,
}

impl Window {
    /// All windows in time order.
    ///
    /// ```
    /// use switchover::ids::Window;
    /// let names: Vec<_> = Window::ALL.iter().map(|w| w.name()).collect();
    /// assert_eq!(names, ["prepare", "blackout", "cleanup"]);
    /// ```
    pub const ALL: [Window; 3] = [Window::Prepare, Window::Blackout, Window::Cleanup];

    /// Lower-case name.
    ///
    /// ```
    /// assert_eq!(switchover::ids::Window::Cleanup.name(), "cleanup");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Window::Prepare => "prepare",
            Window::Blackout => "blackout",
            Window::Cleanup => "cleanup",
        }
    }
}

/// Which lanes may run a step.
///
/// ```
/// use std::sync::Arc;
/// use switchover::recipe::{build, NoCosts, RecipeOptions};
/// use switchover::ids::{Affinity, Side};
/// use switchover::step::StepKind;
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let plan = build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap();
/// // The memory-map transaction needs the caller's big lock: caller lane only.
/// let begin = plan.steps().iter().find(|s| s.kind == StepKind::MemTxnBegin).unwrap();
/// assert_eq!(begin.affinity, Affinity::Caller);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Affinity {
    /// Any worker of the pool, or the caller lane.
    Any,
    /// Only the caller's thread (it holds the caller's big lock); workers never run it.
    Caller,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
