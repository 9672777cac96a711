//! Real components (feature `real`): vhost-user frontends and backends over Unix
//! sockets, qemu-storage-daemon, and KVM ioeventfd/irqfd notifiers.
//!
//! Every figure produced here comes from real processes, sockets and ioctls on this
//! host and is labelled REAL. See `docs/real.md` for how the pieces fit.
//!
//! * [`dir`] — a private 0700 directory for sockets and images, removed on drop;
//! * [`mem`] — memfd-backed guest memory shared by both sides, and its ring layout;
//! * [`wire`] — the split-phase vhost-user control channel (many requests in flight,
//!   one reader thread completing them in order);
//! * [`frontend`] — one device's vhost-user frontend: handshake with the rust-vmm
//!   `vhost` Frontend, then the engine's steps over [`wire`];
//! * [`backend`] — the project's own vhost-user net and blk backends (child processes);
//! * [`qsd`] — qemu-storage-daemon as a third-party vhost-user-blk backend;
//! * [`kvm`] — one KVM VM per side with real ioeventfds and irqfds, changed through
//!   the exactly-once [`crate::notifier::Notifier`];
//! * [`driver`] — a guest-side driver that puts requests in the rings;
//! * [`side`] — one side's world: VM, devices, backends, captured state;
//! * [`actions`] — [`crate::exec::StepActions`] on a real side;
//! * [`run`] — the serial / pool / engine comparison on real components;
//! * [`cli`] — `switchover real`.
//!
//! # Examples
//!
//! ```
//! use switchover::real::{BlkBackend, RealConfig};
//! let cfg = RealConfig::new("target/release/switchover".into());
//! assert_eq!(cfg.blk_backend, BlkBackend::Mixed);
//! let t = cfg.topology().unwrap();
//! assert_eq!(t.devices().len(), 16); // 8 nets, 8 blks
//! assert_eq!(cfg.backends(&t).len(), 16);
//! ```

pub mod actions;
pub mod backend;
pub mod cli;
pub mod dir;
pub mod driver;
pub mod frontend;
pub mod kvm;
pub mod mem;
pub mod qsd;
pub mod run;
pub mod side;
pub mod wire;

pub use run::{run_strategy, BlkBackend, RealConfig, RealFault, RealRun};
