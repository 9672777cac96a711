//! # switchover-cli
//!
//! The `switchover` command (the only crate with clap):
//!
//! * `switchover [OPTIONS]` — the default: the strategies side by side on SIMULATED
//!   backends ([`compare`]);
//! * `switchover real [OPTIONS]` — the same on REAL components ([`real`]);
//! * `switchover role source|destination --socket P` — one role of a switchover in
//!   its own process ([`role`]);
//! * `switchover real __backend ...` — the project's own vhost-user backends, run
//!   as child processes by the rig.
//!
//! It also holds the topology file format ([`topology_file`]).
//!
//! # Examples
//!
//! ```
//! use std::process::ExitCode;
//! let args = ["switchover", "--strategies", "fast"].map(String::from).to_vec();
//! assert_eq!(switchover_cli::main(args), ExitCode::from(2)); // unknown strategy
//! ```

#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

use std::process::ExitCode;

pub mod compare;
pub mod real;
pub mod role;
pub mod topology_file;

/// Runs the command line `args` (the program name first).
pub fn main(args: Vec<String>) -> ExitCode {
    match args.get(1).map(String::as_str) {
        Some("real") => real::main(&args[2..]),
        Some("role") => role::main(args[1..].to_vec()),
        _ => compare::main(args),
    }
}
