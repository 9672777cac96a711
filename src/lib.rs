//! # switchover
//!
//! Stop and start all of a VM's devices concurrently at the end of live migration,
//! so the VM's downtime stops growing with its device count.
//!
//! A VMM links this crate into its vm-state-change path. It describes its devices
//! as a [`topology::Topology`], builds a [`plan::Plan`] per side with
//! [`recipe::build`] (vhost-user net and blk steps in QEMU's order, plus steps of its
//! own device kinds), and runs each window of the plan on an [`exec::Engine`] whose
//! worker pool was started before the window opened:
//!
//! * steps fan out over the pool with no global lock; a step starts only when its
//!   whole footprint (resources ranked in [`lock_order`]) is free;
//! * steps that need the caller's big lock run on the caller's own thread;
//! * notifier changes are exactly-once state transitions ([`notifier`]);
//! * only what must happen while the guest is frozen runs in the blackout window.
//!
//! [`switchover`] drives both sides; [`strategy`] compares the engine with today's
//! `serial` and `pool` approaches on the same (simulated, [`sim`]) backends;
//! [`report`] prints and exports the result.
//!
//! # Examples
//!
//! ```
//! use switchover::strategy::{run, SimConfig, Strategy};
//! use switchover::topology::Topology;
//! let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.05);
//! let r = run(&cfg, Strategy::Engine);
//! assert!(r.failure.is_none());
//! assert!(r.vring_bases_preserved);
//! ```

#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod error;
pub mod exec;
pub mod lock_order;
pub mod notifier;
pub mod plan;
#[cfg(feature = "real")]
pub mod real;
pub mod recipe;
pub mod report;
pub mod resource;
pub mod sim;
pub mod state;
pub mod step;
pub mod strategy;
pub mod switchover;
pub mod sync;
pub mod timeline;
pub mod topology;
pub mod trace;
