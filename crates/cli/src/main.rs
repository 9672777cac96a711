//! The `switchover` command; see the crate docs of `switchover_cli`.

use std::process::ExitCode;

fn main() -> ExitCode {
    switchover_cli::main(std::env::args().collect())
}
