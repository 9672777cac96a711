//! `switchover role`: one role of a SIMULATED switchover in its own process, joined
//! to the other role by a Unix socket: `switchover role destination --socket P`
//! listens, `switchover role source --socket P` connects. Prints one JSON line with
//! the outcome; exits 0 when the switchover completed, 1 otherwise, 2 on bad input.
//!
//! ```
//! use std::process::ExitCode;
//! let args = ["role", "sideways", "--socket", "/tmp/x"].map(String::from).to_vec();
//! assert_eq!(switchover_cli::role::main(args), ExitCode::from(2));
//! ```

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::json;

use switchover::exec::Engine;
use switchover::ids::Side;
use switchover::roles::path::UnixPath;
use switchover::roles::{Deadlines, Destination, Outcome, Session, Source};
use switchover::topology::Topology;
use switchover_sim::Fault;
use switchover_sim::{SimConfig, SimRole};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Role {
    Source,
    Destination,
}

/// One role of a SIMULATED switchover, joined to the other by a Unix socket.
#[derive(Debug, Parser)]
#[command(name = "switchover role")]
struct Cli {
    /// Which role.
    role: Role,
    /// The socket between the roles (the destination listens).
    #[arg(long)]
    socket: PathBuf,
    /// Built-in topology.
    #[arg(long, default_value = "small")]
    preset: String,
    /// Simulated cost scale.
    #[arg(long, default_value_t = 0.05)]
    scale: f64,
    /// Worker threads.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Faults to inject on this side: `KIND:STEP:DEVICE[:RING]`.
    #[arg(long)]
    inject: Vec<String>,
    /// Seconds each side waits for the other.
    #[arg(long, default_value_t = 20)]
    wait_s: u64,
    /// Per-step deadline (ms).
    #[arg(long, default_value_t = 10_000)]
    deadline_ms: u64,
    /// The migration's session id: both roles must be given the same one (a
    /// message of another session is refused).
    #[arg(long, default_value_t = 1)]
    session: u64,
}

/// Runs one role with `args` (the subcommand name first); the exit status.
pub fn main(args: Vec<String>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    let topo = match Topology::preset(&cli.preset) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("switchover role: {e}");
            return ExitCode::from(2);
        }
    };
    let mut faults = Vec::new();
    for f in &cli.inject {
        match f.parse::<Fault>() {
            Ok(f) => faults.push(f),
            Err(e) => {
                eprintln!("switchover role: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let cfg = SimConfig::new(topo)
        .scale(cli.scale)
        .workers(cli.workers)
        .reply_ack(true)
        .faults(faults)
        .deadline(Duration::from_millis(cli.deadline_ms.max(1)));
    let wait = Duration::from_secs(cli.wait_s);
    let deadlines = Deadlines { config: wait, ready: wait, state: wait, running: wait };
    let side = match cli.role {
        Role::Source => Side::Source,
        Role::Destination => Side::Destination,
    };
    let role = SimRole::new(&cfg, side);
    let mut engine = Engine::new(cfg.workers);
    let stream = match cli.role {
        Role::Destination => {
            let _ = std::fs::remove_file(&cli.socket);
            let l = match UnixListener::bind(&cli.socket) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("switchover role: cannot listen on {}: {e}", cli.socket.display());
                    return ExitCode::from(2);
                }
            };
            let s = l.accept().map(|(s, _)| s);
            let _ = std::fs::remove_file(&cli.socket);
            s
        }
        Role::Source => {
            let until = Instant::now() + wait;
            loop {
                match UnixStream::connect(&cli.socket) {
                    Ok(s) => break Ok(s),
                    Err(e) if Instant::now() > until => break Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    };
    let mut path = match stream {
        Ok(s) => UnixPath::new(s),
        Err(e) => {
            eprintln!("switchover role: cannot connect {}: {e}", cli.socket.display());
            return ExitCode::from(1);
        }
    };
    let session = Session::new(cli.session, role.setup.plan.topology());
    let rep = match cli.role {
        Role::Destination => Destination::new(&role.setup, &mut engine, session, deadlines).run(&mut path),
        Role::Source => Source::new(&role.setup, &mut engine, session, deadlines).run(&mut path),
    };
    // Where the guest now runs, every ring must hold the base it had reached.
    let here_runs = match cli.role {
        Role::Destination => rep.running_here,
        Role::Source => matches!(rep.outcome, Outcome::RolledBack { .. }),
    };
    let mismatches = if here_runs && role.side.sync(Duration::from_secs(5)) { role.side.base_mismatches().len() } else { 0 };
    let line = json!({
        "simulated": true,
        "role": format!("{:?}", cli.role).to_lowercase(),
        "outcome": rep.outcome.name(),
        "cause": rep.outcome.cause().map(ToString::to_string),
        "downtime_ms": rep.downtime.as_secs_f64() * 1e3,
        "bases_carried": rep.bases_carried,
        "guest_runs_here": here_runs,
        "base_mismatches": mismatches,
    });
    println!("{line}");
    if matches!(rep.outcome, Outcome::Completed) && mismatches == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
