//! Negative controls: switches that each remove one engine mechanism, so that a
//! test can show the property the mechanism holds then fails. Settable only with
//! the feature `negative-controls`, which the project's own tests turn on and a
//! VMM's build never does; without it every switch stays off.

/// Engine mechanisms a negative-control test can remove (all off by default).
///
/// ```
/// # #[cfg(feature = "negative-controls")] {
/// use switchover::exec::{Controls, Engine};
/// let mut engine = Engine::new(2);
/// // The test then shows a lane inside a long action holding back its other steps.
/// engine.set_controls(Controls { no_idle_unload: true, ..Controls::default() });
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(not(feature = "negative-controls"), allow(unreachable_pub))]
pub struct Controls {
    /// A step's record ends only when its lane starts its next step, also when a
    /// successor may start on another lane before that (its end is no longer
    /// stamped as it ends, nor when its successors leave the lane).
    pub late_record_ends: bool,
    /// An idle lane does not move the ready steps a busy lane holds in its own set.
    pub no_idle_unload: bool,
}
