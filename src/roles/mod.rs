//! Both sides of a switchover, in one state machine: prepare (destination first),
//! ready-ack, the blackout window (source stops, state crosses, destination
//! starts), then cleanup; rollback of the source if anything fails before the
//! destination runs.
//!
//! Downtime is measured from the source's first stop step to the destination's
//! last start step, and reported per phase.
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use switchover::error::StepFailure;
//! use switchover::exec::{Completion, Engine, Progress, StepActions};
//! use switchover::ids::{DeviceId, Side};
//! use switchover::plan::Plan;
//! use switchover::recipe::{build, rollback, NoCosts, RecipeOptions};
//! use switchover::roles::{run_in_process, Outcome, RollbackPlan, SideSetup};
//! use switchover::state::DeviceState;
//! use switchover::step::{Step, StepKind};
//! use switchover::topology::Topology;
//!
//! /// One side's devices, in memory: the guest left ring `r` of every device at
//! /// base `100 + r`; the source reads it, the destination checks it got it.
//! struct Devices {
//!     state: Arc<DeviceState>,
//!     /// A step that fails: its kind, its device, and how.
//!     fail: Option<(StepKind, DeviceId, StepFailure)>,
//! }
//! impl StepActions for Devices {
//!     fn start(&self, step: &Step, done: Completion) {
//!         if let Some((kind, device, failure)) = &self.fail {
//!             if step.kind == *kind && step.device == *device {
//!                 return done.complete(Err(failure.clone()));
//!             }
//!         }
//!         let ring = step.ring.unwrap_or(0);
//!         let base = 100 + ring as u16;
//!         let r = match step.kind {
//!             StepKind::GetVringBase => {
//!                 self.state.set_base(step.device, ring, base);
//!                 Ok(())
//!             }
//!             StepKind::SetVringBase if self.state.base(step.device, ring) != Some(base) => {
//!                 Err(StepFailure::MissingState { what: format!("the base of ring {ring}") })
//!             }
//!             _ => Ok(()),
//!         };
//!         done.complete(r);
//!     }
//!     fn reconnect(&self, _device: DeviceId) -> bool {
//!         true // a new backend process
//!     }
//!     fn recover_base(&self, _device: DeviceId, ring: u32) -> Option<u16> {
//!         Some(100 + ring as u16) // the used ring's index, read from guest memory
//!     }
//! }
//!
//! /// `side`'s plan of the engine's recipe, on devices of its own.
//! fn setup(topo: &Arc<Topology>, side: Side, fail: Option<(StepKind, DeviceId, StepFailure)>) -> SideSetup {
//!     let state = Arc::new(DeviceState::new(topo));
//!     let plan = Arc::new(build(topo, side, &RecipeOptions::engine(), &NoCosts).unwrap());
//!     SideSetup { plan, actions: Arc::new(Devices { state: state.clone(), fail }), state }
//! }
//!
//! /// The source's rollback: the recipe's rollback plan, on the source's devices.
//! fn rollback_of(src: &SideSetup) -> impl Fn(&Plan, &Progress, &[DeviceId]) -> RollbackPlan + '_ {
//!     move |plan: &Plan, progress: &Progress, lost: &[DeviceId]| {
//!         let rb = rollback(plan, progress, lost, &RecipeOptions::engine(), &NoCosts).ok()?;
//!         Some((Arc::new(rb), src.actions.clone()))
//!     }
//! }
//!
//! let topo = Arc::new(Topology::preset("small").unwrap());
//! let (src, dst) = (setup(&topo, Side::Source, None), setup(&topo, Side::Destination, None));
//! let (mut src_engine, mut dst_engine) = (Engine::new(2), Engine::new(2));
//! let rep = run_in_process(&src, &dst, &mut src_engine, &mut dst_engine, &rollback_of(&src));
//! assert_eq!(rep.outcome, Outcome::Completed);
//! // Every ring's base crossed to the destination, which started with it.
//! assert_eq!(dst.state.captured(), topo.total_rings() as usize);
//! ```

mod error;
pub mod message;
pub mod path;
mod run;
mod setup;

pub use error::{DecodeError, MessageKind, PathError, PathOp, SwitchoverError, MAX_FRAME};
pub use message::Message;
pub use run::{run_in_process, Deadlines, Destination, Source};
pub use setup::{lost_devices, Outcome, RollbackFn, RollbackPlan, SideSetup, SwitchoverReport};
