//! `switchover real`: the comparison on real components.

use std::process::ExitCode;

/// Entry point of `switchover real ARGS`.
pub fn main(_args: &[String]) -> ExitCode {
    eprintln!("switchover: real components are not implemented yet");
    ExitCode::from(2)
}
