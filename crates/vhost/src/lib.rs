//! # switchover-vhost
//!
//! A vhost-user frontend that keeps many requests in flight per backend, with a
//! deadline on every request and every reply validated, and the `switchover`
//! core's [`StepActions`](switchover::exec::StepActions) on top of it.
//!
//! rust-vmm's `vhost` `Frontend` holds one lock across each request and its
//! reply, so a VMM can have one round trip in flight per backend and waits
//! forever on a backend that never answers. Here a device's socket, after the
//! handshake, is driven by a [`channel::Channel`]: requests are written from any
//! thread and return a [`channel::Pending`] reply at once; one reader thread per
//! device completes them in order; a watchdog turns a request past its deadline
//! into a time-out; every reply is checked against the rules of the trust model
//! ([`reply`]) before it is believed.
//!
//! A VMM plugs in its own world through four traits: its guest memory
//! ([`memory::GuestMemory`]), its notifiers ([`sink::NotifierSink`]; KVM
//! ioeventfds, irqfds and MSI routes in [`kvm`], feature `kvm`), its devices'
//! connections and configurations ([`actions::VhostDevices`], [`config`]), and
//! the migration of its guest memory ([`log::Migration`]: the shared dirty log,
//! the final RAM pass). [`actions::VhostActions`] then performs every vhost-user
//! step of a switchover plan, the two-host ones included (`log_start`,
//! `log_sync`, `final_pass`, `reconcile`, `route_commit`, `ring_notify`).
//!
//! * [`frontend`] — one device: the handshake, then typed requests in `vhost`'s
//!   vocabulary (`get_vring_base(ring)` returns a pending base);
//! * [`channel`] — the pipelined socket, [`channel::Pending`] replies, deadlines;
//! * [`reply`] — the reply rules;
//! * [`inflight`] — the inflight region (`INFLIGHT_SHMFD`): requests in flight,
//!   counted, handed over, and a ring's base recovered from it;
//! * [`memory`], [`sink`] — what the VMM supplies;
//! * [`config`] — a device's configuration and generation, staged and loaded;
//! * [`log`] — the shared dirty log and the VMM's migration of guest memory;
//! * [`actions`] — the core's `StepActions` on top;
//! * [`kvm`] — KVM notifiers as a sink.
//!
//! See `examples/vmm.rs` for a whole integration: a VMM of its own with its own
//! memory per side and eventfds, its big lock taken only when the window opens,
//! real qemu-storage-daemon backends logging their writes, and a switchover
//! between two roles.

#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod actions;
pub mod channel;
pub mod config;
pub mod frontend;
pub mod inflight;
#[cfg(feature = "kvm")]
pub mod kvm;
pub mod log;
pub mod memory;
pub mod reply;
pub mod sink;
