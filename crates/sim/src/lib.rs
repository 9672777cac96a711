//! SIMULATED backends: every figure they produce is labelled simulated.
//!
//! * [`Profile`] — service times per step, derived from the 2021 RFC's "Original"
//!   column by a fixed rule (see [`Profile::rfc_original`]), the steps the RFC did
//!   not measure at costs measured on this machine ([`WindowCosts`]), scaled by one
//!   factor.
//! * [`SimBackend`] — one thread per vhost-user backend, serving its control
//!   channel one message at a time, checking message order like a strict backend.
//! * [`SimVm`] — one side's KVM: notifiers with exactly-once transitions, under the
//!   RFC model or the per-VM ioeventfd model probed on this machine kind.
//! * [`SimActions`] — performs a plan's steps on these.
//! * [`SimWorld`] — what both sides share: where the guest runs, storage owned by
//!   one side at a time, guest memory per side with the dirty log, configuration
//!   generations; [`SimVmm`] — the roles' hooks on it.
//! * [`SimConfig`], [`run`] — a whole switchover with one strategy on fresh
//!   simulated backends, and the checks of its result ([`safety_checks`]).
//!
//! # Examples
//!
//! ```
//! use switchover_sim::{KvmModel, Profile};
//! let p = Profile::rfc_original(1.0);
//! assert_eq!(p.kvm, KvmModel::Rfc);
//! // 1376 ms over 16 × 64 net rings:
//! let c = p.unit_cost(switchover_sim::Unit::Net, &switchover::step::StepKind::GetVringBase);
//! assert_eq!(c.as_nanos(), 1_343_750);
//! ```

#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

mod actions;
mod backend;
mod clock;
mod config;
mod fault;
mod io;
mod profile;
mod vm;
mod world;

pub use actions::{SimActions, SimSide};
pub use backend::{BlkIo, SimBackend, SimRing};
pub use clock::sleep_until;
pub use config::{run, safety_checks, SimConfig, SimRole, DEFAULT_SCALE};
pub use fault::{Fault, FaultKind, FaultParseError};
pub use io::{IoEnd, IoLedger};
pub use profile::{
    batched_share, rfc_measured, rfc_rows, KvmModel, Profile, RfcRow, Unit, WindowCosts, RFC_CONCURRENT_MS, RFC_ORIGINAL_MS,
};
pub use vm::SimVm;
pub use world::{Findings, SimVmm, SimWorld};
