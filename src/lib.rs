//! # switchover
//!
//! Stop and start all of a VM's devices concurrently at the end of live migration,
//! so the VM's downtime stops growing with its device count.
//!
//! A VMM links this crate into its vm-state-change path. It describes its devices
//! as a [`topology::Topology`], builds a [`plan::Plan`] per side with
//! [`recipe::build`] (vhost-user net and blk steps in QEMU's order, plus steps of its
//! own device kinds), and performs the steps itself through [`exec::StepActions`];
//! an [`exec::Engine`] whose worker pool was started before the window opened runs
//! each window of the plan:
//!
//! * steps fan out over the pool with no global lock; a step starts only when its
//!   whole footprint (resources ranked in [`lock_order`]) is free;
//! * steps that need the caller's big lock run on the caller's own thread, and
//!   receive an [`exec::CallerLane`] token that proves it;
//! * notifier changes are exactly-once state transitions ([`notifier`]);
//! * only what must happen while the guest is frozen runs in the blackout window.
//!
//! [`roles`] drives a whole switchover: the destination prepares and acks, the
//! source stops and sends the state over a [`roles::path::ReturnPath`], the
//! destination starts; a failure rolls the source back, never both sides running.
//!
//! The vhost-user frontend that performs the steps on real backends is the
//! `switchover-vhost` crate; simulated backends, the baselines, reports, the test
//! rig and the CLI are crates of their own, so a VMM links only this one.
//!
//! # Examples
//!
//! A VMM with two devices of its own: it performs each step itself. The
//! memory-map transaction needs its big lock, so it runs on the calling thread.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use switchover::exec::{CallerLane, Completion, Engine, Progress, StepActions};
//! use switchover::ids::{Affinity, Side, Window};
//! use switchover::recipe::{build, NoCosts, RecipeOptions};
//! use switchover::step::{ExecMode, Step};
//! use switchover::topology::Topology;
//!
//! /// The VMM's side of the steps: a real VMM sends vhost-user messages and
//! /// issues KVM ioctls here (the `switchover-vhost` crate does both).
//! #[derive(Default)]
//! struct MyVmm {
//!     stopped: AtomicUsize,
//! }
//! impl StepActions for MyVmm {
//!     fn start(&self, step: &Step, done: Completion) {
//!         self.stopped.fetch_add(1, Ordering::Relaxed);
//!         match step.mode {
//!             // A control-channel request: the reply completes the step later,
//!             // from another thread; here it answers at once.
//!             ExecMode::Split => std::thread::spawn(move || done.complete(Ok(()))).join().unwrap(),
//!             ExecMode::Blocking => done.complete(Ok(())),
//!         }
//!     }
//!     fn start_on_caller(&self, step: &Step, _lane: &CallerLane, done: Completion) {
//!         // Only the thread that called `Engine::run` gets here: the one that
//!         // holds the VMM's big lock.
//!         assert_eq!(step.affinity, Affinity::Caller);
//!         self.start(step, done)
//!     }
//! }
//!
//! let topo = Arc::new(Topology::builder().net(1, 2).blk(1, 1).build().unwrap());
//! let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap());
//! let mut engine = Engine::new(2); // before the window opens
//! let vmm = Arc::new(MyVmm::default());
//! let mut progress = Progress::new(&plan);
//! for w in Window::ALL {
//!     let r = engine.run(&plan, w, vmm.clone(), &mut progress);
//!     assert!(r.ok(), "{:?}", r.failure);
//! }
//! assert_eq!(vmm.stopped.load(Ordering::Relaxed), plan.len());
//! ```

#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod error;
pub mod exec;
pub mod ids;
pub mod lock_order;
pub mod notifier;
pub mod plan;
pub mod predict;
pub mod recipe;
pub mod resource;
pub mod roles;
pub mod state;
pub mod step;
mod sync;
pub mod topology;
