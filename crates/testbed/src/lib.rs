//! # switchover-testbed
//!
//! The real test rig: vhost-user backends over Unix sockets (the project's own
//! net and blk backends, and qemu-storage-daemon), KVM ioeventfd/irqfd notifiers,
//! guest memory and a guest-side driver that puts real requests in the rings, and
//! the serial / pool / engine comparison on them. It is a VMM of its own, built on
//! the `switchover` core and the `switchover-vhost` frontend exactly as a VMM would.
//!
//! Every figure produced here comes from real processes, sockets and ioctls on this
//! host and is labelled REAL. See `docs/real.md` for how the pieces fit.
//!
//! * [`dir`] — a private 0700 directory for sockets and images, removed on drop;
//! * [`mem`] — memfd-backed guest memory of one side, and its ring layout;
//! * [`vmm`] — the rig's VMM state: device configurations, the migration of
//!   guest memory, the hooks the roles call;
//! * [`guest`] — the guest's workload over a migration;
//! * [`backend`] — the project's own vhost-user net and blk backends (child processes);
//! * [`blk`] — the own vhost-user-blk backend with an inflight region: a stop that
//!   does not wait for the disk, resubmission, dirty log, storage hand-over;
//! * [`qsd`] — qemu-storage-daemon as a third-party vhost-user-blk backend;
//! * [`driver`] — a guest-side driver that puts requests in the rings;
//! * [`side`] — one side's world: VM and notifiers, devices, backends, state;
//! * [`rig`] — the frontend's step actions on a side, with fault injection;
//! * [`run`] — the serial / pool / engine comparison on real components;
//! * [`error`] — what can go wrong in the rig.
//!
//! # Examples
//!
//! ```
//! use switchover_testbed::{BlkBackend, RealConfig};
//! let cfg = RealConfig::new("target/release/switchover".into());
//! assert_eq!(cfg.blk_backend, BlkBackend::Mixed);
//! let t = cfg.topology().unwrap();
//! assert_eq!(t.devices().len(), 16); // 8 nets, 8 blks
//! assert_eq!(cfg.backends(&t).len(), 16);
//! ```

#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod backend;
pub mod blk;
pub mod dir;
pub mod driver;
pub mod error;
pub mod guest;
pub mod mem;
pub mod qsd;
pub mod rig;
pub mod run;
pub mod side;
pub mod vmm;

pub use error::RigError;
pub use run::{run_strategy, BlkBackend, RealConfig, RealFault, RealRun};
