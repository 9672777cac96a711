//! Both sides of a switchover, in one state machine: the source sends its
//! devices' configuration, both prepare (dirty logging on the source; backends,
//! memory, rings and notifiers on the destination), the destination acks (with its
//! estimate), the window opens (the source's vCPUs and devices stop, the log is
//! synced and the last RAM pass made, the state crosses, the destination loads it,
//! reconciles what changed, commits its routes and starts), then cleanup — and if
//! anything fails inside the window, the destination fences itself and the source
//! rolls back, never both sides running.
//!
//! * [`Source`] — typed states: prepare, wait for ready, switch over;
//! * [`Destination`] — one run; [`answer_query`] afterwards;
//! * [`VmmHooks`] — what the roles ask of the VMM (stop and resume vCPUs, save and
//!   load device state, stage configuration, precopy);
//! * [`path::ReturnPath`] — the path between them, [`message`] — what crosses it,
//!   in a [`Session`] (session id, sequence, topology fingerprint);
//! * [`SideSetup`] — a side's plan, actions, state, hooks and recovery; a setup
//!   runs once;
//! * [`run_in_process`] — both roles in one process (tests, simulations).
//!
//! Downtime is measured from the window's opening (the source's `stop_vcpus`) to
//! the destination's running confirmation, and reported per phase.
//!
//! # Examples
//!
//! Two roles over a Unix socket pair, as two VMM processes run them, on devices in
//! memory:
//!
//! ```
//! use std::os::unix::net::UnixStream;
//! use std::sync::Arc;
//! use switchover::exec::{Completion, Engine, StepActions};
//! use switchover::ids::Side;
//! use switchover::recipe::{build, NoCosts, RecipeOptions};
//! use switchover::roles::path::UnixPath;
//! use switchover::roles::{Deadlines, Destination, Outcome, Session, SideSetup, Source};
//! use switchover::state::DeviceState;
//! use switchover::step::{Step, StepKind};
//! use switchover::topology::Topology;
//!
//! /// One side's devices, in memory: the guest left every ring at base 100.
//! struct Devices(Arc<DeviceState>);
//! impl StepActions for Devices {
//!     fn start(&self, step: &Step, done: Completion) {
//!         if step.kind == StepKind::GetVringBase {
//!             self.0.set_base(step.device, step.ring.unwrap(), 100);
//!         }
//!         done.complete(Ok(()));
//!     }
//! }
//! let topo = Arc::new(Topology::preset("small").unwrap());
//! let setup = |side| {
//!     let state = Arc::new(DeviceState::new(&topo));
//!     let plan = Arc::new(build(&topo, side, &RecipeOptions::engine(), &NoCosts).unwrap());
//!     SideSetup::new(plan, Arc::new(Devices(state.clone())), state)
//! };
//! let (src, dst) = (setup(Side::Source), setup(Side::Destination));
//! let (x, y) = UnixStream::pair().unwrap();
//! let (mut src_path, mut dst_path) = (UnixPath::new(x), UnixPath::new(y));
//! let (mut src_engine, mut dst_engine) = (Engine::new(2), Engine::new(2));
//! let session = 42; // the migration's id, known to both VMMs
//! let report = std::thread::scope(|s| {
//!     s.spawn(|| Destination::new(&dst, &mut dst_engine, Session::new(session, &topo), Deadlines::default()).run(&mut dst_path));
//!     // The source in its typed states: the VMM may look at the destination's
//!     // estimate before it stops the guest.
//!     let source = Source::new(&src, &mut src_engine, Session::new(session, &topo), Deadlines::default());
//!     let ready = source.prepare(&mut src_path).and_then(|p| p.wait_ready(&mut src_path)).unwrap();
//!     // The downtime predicted before the guest stops: this side's share,
//!     // measured on its own devices, and the destination's, from its ready-ack.
//!     let predicted = ready.prediction().and_then(|p| p.downtime()).unwrap();
//!     assert!(predicted >= ready.destination_estimate().unwrap());
//!     ready.switch_over(&mut src_path)
//! });
//! assert_eq!(report.outcome, Outcome::Completed);
//! assert_eq!(report.bases_carried, 10);
//! // The prediction was made before the window opened, and sits beside the
//! // measured downtime.
//! assert!(report.prediction.as_ref().unwrap().made_at < report.window_opened);
//! assert!(report.prediction_error().is_some());
//! // A setup runs once.
//! let again = Source::new(&src, &mut src_engine, Session::new(session, &topo), Deadlines::default()).run(&mut src_path);
//! assert!(matches!(again.outcome, Outcome::Aborted { .. }));
//! ```

mod destination;
mod error;
mod forecast;
mod hooks;
mod in_process;
pub mod message;
pub mod path;
mod session;
mod setup;
mod source;

pub use destination::{answer_query, Destination};
pub use error::{DecodeError, HookError, HookKind, MessageKind, PathError, PathOp, Refusal, SwitchoverError, MAX_FRAME};
pub use hooks::{NoHooks, VmmHooks};
pub use in_process::{run_in_process, run_in_process_with};
pub use message::Message;
pub use session::Session;
pub use setup::{lost_devices, Deadlines, Outcome, Recovery, SideSetup, SwitchoverReport, Unsettled};
pub use source::{PreparedSource, ReadySource, Source};
