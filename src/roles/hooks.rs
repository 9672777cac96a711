//! The VMM's side of a switchover: what the roles ask of it besides the plan's
//! steps. A VMM implements what it needs; every hook has a default that does
//! nothing.
//!
//! The order, per side:
//!
//! | side | when | hook |
//! |---|---|---|
//! | src | migration start, before its prepare window | [`VmmHooks::snapshot_config`] (sent to the destination) |
//! | dst | before its prepare window | [`VmmHooks::stage_config`] |
//! | src | after its prepare window, before the ready-ack wait | [`VmmHooks::precopy`] (RAM passes while the guest runs) |
//! | src | the window opens | [`VmmHooks::stop_vcpus`] — the VMM's big lock is needed from here on, not before |
//! | src | after its blackout window (devices stopped, final RAM pass made) | [`VmmHooks::save_state`] |
//! | dst | the state arrived, before its blackout window | [`VmmHooks::load_state`] |
//! | dst | its devices started | [`VmmHooks::resume_vcpus`] |
//! | src | after a rollback | [`VmmHooks::resume_vcpus`] |
//!
//! # Examples
//!
//! ```
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use switchover::roles::{HookError, VmmHooks};
//! use switchover::state::DeviceBlob;
//! /// A VMM whose vCPUs stop when the window opens and whose one device has a
//! /// configuration to carry.
//! #[derive(Default)]
//! struct Vm {
//!     running: AtomicBool,
//! }
//! impl VmmHooks for Vm {
//!     fn stop_vcpus(&self) -> Result<(), HookError> {
//!         self.running.store(false, Ordering::SeqCst);
//!         Ok(())
//!     }
//!     fn save_state(&self) -> Result<Vec<DeviceBlob>, HookError> {
//!         Ok(vec![DeviceBlob { device: 0, generation: 1, bytes: b"msix+config".to_vec() }])
//!     }
//!     fn resume_vcpus(&self) -> Result<(), HookError> {
//!         self.running.store(true, Ordering::SeqCst);
//!         Ok(())
//!     }
//! }
//! let vm = Vm::default();
//! vm.stop_vcpus().unwrap();
//! assert_eq!(vm.save_state().unwrap()[0].generation, 1);
//! ```

use super::error::HookError;
use crate::state::DeviceBlob;

/// What the roles ask of the VMM. See the module docs for the order.
pub trait VmmHooks: Send + Sync {
    /// Source, at migration start: each device's configuration as the guest has
    /// it now, with its generation; the destination stages its devices from it.
    ///
    /// # Errors
    /// The VMM's error; the switchover is aborted (nothing was stopped).
    fn snapshot_config(&self) -> Result<Vec<DeviceBlob>, HookError> {
        Ok(Vec::new())
    }
    /// Destination, before its prepare window: stage the configuration snapshot
    /// (the prepare steps read the device layouts from the VMM after this).
    ///
    /// # Errors
    /// The VMM's error; the destination is not ready.
    fn stage_config(&self, config: &[DeviceBlob]) -> Result<(), HookError> {
        let _ = config;
        Ok(())
    }
    /// This side's share of the downtime, predicted after its prepare window: on
    /// the source before [`VmmHooks::precopy`], so that the VMM's RAM loop can
    /// budget for the devices when it decides to stop the guest; on the
    /// destination before its ready-ack (which carries it to the source, see
    /// `ReadySource::destination_estimate`).
    ///
    /// ```
    /// use switchover::predict::Prediction;
    /// use switchover::roles::VmmHooks;
    /// struct Vm;
    /// impl VmmHooks for Vm {
    ///     fn predicted(&self, p: &Prediction) {
    ///         println!("devices: {:?} of the downtime on this side", p.this_side());
    ///     }
    /// }
    /// ```
    fn predicted(&self, prediction: &crate::predict::Prediction) {
        let _ = prediction;
    }
    /// Source, after its prepare window (dirty logging started): copy RAM while the
    /// guest runs. The roles wait for the destination's ready-ack after it.
    ///
    /// # Errors
    /// The VMM's error; the switchover is aborted (nothing was stopped).
    fn precopy(&self) -> Result<(), HookError> {
        Ok(())
    }
    /// Source, the window opens: stop the vCPUs.
    ///
    /// # Errors
    /// The VMM's error; the switchover rolls back (the vCPUs resume).
    fn stop_vcpus(&self) -> Result<(), HookError> {
        Ok(())
    }
    /// Source, the devices stopped: each device's VMM-owned state, with its
    /// configuration generation.
    ///
    /// # Errors
    /// The VMM's error; the switchover rolls back.
    fn save_state(&self) -> Result<Vec<DeviceBlob>, HookError> {
        Ok(Vec::new())
    }
    /// Destination, the state arrived: load each device's state before its start
    /// (the blackout steps read the loaded layouts and vectors from the VMM).
    ///
    /// # Errors
    /// The VMM's error; the destination does not start and the source resumes.
    fn load_state(&self, state: &[DeviceBlob]) -> Result<(), HookError> {
        let _ = state;
        Ok(())
    }
    /// The guest runs on this side: the destination once its devices started, the
    /// source after a rollback.
    ///
    /// # Errors
    /// The VMM's error (reported; the devices already run here).
    fn resume_vcpus(&self) -> Result<(), HookError> {
        Ok(())
    }
    /// How long the VMM expects `hook` to take, for the downtime prediction
    /// ([`crate::predict`]): the hooks in the window (`stop_vcpus`, `save_state`,
    /// `load_state`, `resume_vcpus`) are part of the downtime. `None` (the
    /// default): not known, counted as nothing.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover::roles::{HookKind, VmmHooks};
    /// struct Vm;
    /// impl VmmHooks for Vm {
    ///     fn expected(&self, hook: HookKind) -> Option<Duration> {
    ///         (hook == HookKind::SaveState).then(|| Duration::from_micros(300))
    ///     }
    /// }
    /// assert_eq!(Vm.expected(HookKind::SaveState), Some(Duration::from_micros(300)));
    /// assert_eq!(Vm.expected(HookKind::StopVcpus), None);
    /// ```
    fn expected(&self, hook: super::error::HookKind) -> Option<std::time::Duration> {
        let _ = hook;
        None
    }
}

/// A VMM with nothing to do besides the plan's steps.
///
/// ```
/// use switchover::roles::{NoHooks, VmmHooks};
/// assert!(NoHooks.save_state().unwrap().is_empty());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl VmmHooks for NoHooks {}
