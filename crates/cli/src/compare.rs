//! The default command: the strategies side by side on SIMULATED backends, the
//! RFC-style table (and JSON with `--json`, a timeline picture with `--svg`, a
//! Perfetto trace with `--trace`).
//!
//! ```
//! use std::process::ExitCode;
//! // An unknown preset: one line on stderr, status 2.
//! let args = ["switchover", "--preset", "nope"].map(String::from).to_vec();
//! assert_eq!(switchover_cli::compare::main(args), ExitCode::from(2));
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use switchover::recipe::BlkPolicy;
use switchover::topology::Topology;
use switchover_baseline::{Strategy, DEFAULT_WORKERS};
use switchover_report::{json, table, Comparison};
use switchover_sim::{run, Fault, KvmModel, SimConfig, DEFAULT_SCALE};

use crate::topology_file;

/// Stop and start all of a VM's devices concurrently at migration switchover:
/// compares `serial` (QEMU before 2023), `pool` (the 2021 RFC), `qemu` (QEMU
/// today) and `engine` on SIMULATED vhost-user backends.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Built-in topology (rfc-huge, medium, small, single-net, single-blk).
    #[arg(long, default_value = "rfc-huge", conflicts_with = "topology")]
    preset: String,
    /// Topology TOML file.
    #[arg(long)]
    topology: Option<PathBuf>,
    /// Worker threads for `pool` and `engine` (the engine's caller lane is one more).
    #[arg(long, default_value_t = DEFAULT_WORKERS)]
    workers: usize,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Scale factor applied to every simulated cost.
    #[arg(long, default_value_t = DEFAULT_SCALE)]
    scale: f64,
    /// KVM model for the main comparison: rfc or per-vm-ioeventfd (the other is run too).
    #[arg(long, default_value = "rfc")]
    kvm_model: String,
    /// Skip the run under the other KVM model.
    #[arg(long)]
    no_kvm_comparison: bool,
    /// Inject a fault: KIND:STEP:DEVICE[:RING], KIND one of error, hang, crash.
    #[arg(long)]
    inject: Vec<String>,
    /// Per-step deadline in milliseconds (also each blk ring's drain, unless
    /// --drain-deadline-ms says otherwise).
    #[arg(long, default_value_t = 10_000)]
    deadline_ms: u64,
    /// How long each blk ring's drain may wait for its requests in flight, in
    /// milliseconds (default: --deadline-ms).
    #[arg(long)]
    drain_deadline_ms: Option<u64>,
    /// Simulated backends without REPLY_ACK: start messages are fire-and-forget,
    /// the destination probes each backend once after its start, and a switchover
    /// that completes says `completed_unverified`.
    #[arg(long)]
    no_reply_ack: bool,
    /// Devices whose configuration the simulated guest changes during precopy
    /// (comma separated, e.g. net1,blk0): the destination must redo their steps in
    /// the window.
    #[arg(long, value_delimiter = ',')]
    precopy_changes: Vec<String>,
    /// Guest memory the simulated dirty log covers, in GiB (the log sync scans its
    /// bitmap; the RFC does not give its VM's memory).
    #[arg(long)]
    guest_ram_gib: Option<u32>,
    /// Block requests in flight per blk ring when the guest stops (simulated guest).
    #[arg(long, default_value_t = 0)]
    blk_inflight: u32,
    /// Duration of one simulated block request, in µs (unscaled).
    #[arg(long, default_value_t = 1000)]
    blk_io_us: u64,
    /// What happens to block requests in flight: drain or hand-over.
    #[arg(long, default_value = "drain")]
    blk_policy: String,
    /// Strategies to run (comma separated).
    #[arg(long, default_value = "serial,pool,qemu,engine", value_delimiter = ',')]
    strategies: Vec<String>,
    /// Write the engine run's timeline picture (SVG) here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Write the engine run's Chrome trace-event JSON (opens in Perfetto) here.
    #[arg(long)]
    trace: Option<PathBuf>,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("switchover: {msg}");
    ExitCode::from(2)
}

/// Runs the comparison with `args` (the program name first); the exit status.
pub fn main(args: Vec<String>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("bad arguments").trim_start_matches("error: ");
            return fail(first);
        }
    };
    let topo = match &cli.topology {
        Some(p) => topology_file::from_toml_file(p).map_err(fail),
        None => Topology::preset(&cli.preset).map_err(fail),
    };
    let topo = match topo {
        Ok(t) => t,
        Err(code) => return code,
    };
    if !(cli.scale > 0.0 && cli.scale <= 100.0) {
        return fail(format!("--scale {} must be in (0, 100]", cli.scale));
    }
    if cli.workers > 1024 {
        return fail(format!("--workers {} is more than 1024", cli.workers));
    }
    let kvm = match cli.kvm_model.as_str() {
        "rfc" => KvmModel::Rfc,
        "per-vm-ioeventfd" | "per-vm" => KvmModel::PerVmIoeventfd,
        other => return fail(format!("unknown --kvm-model '{other}' (rfc, per-vm-ioeventfd)")),
    };
    let mut faults = Vec::new();
    for f in &cli.inject {
        match f.parse::<Fault>() {
            Ok(f) if topo.device_by_name(&f.device).is_none() => {
                return fail(format!("--inject {f}: no device named '{}' in {}", f.device, topo.name()))
            }
            Ok(f) => faults.push(f),
            Err(e) => return fail(e),
        }
    }
    let mut strategies = Vec::new();
    for s in &cli.strategies {
        match Strategy::parse(s) {
            Some(x) => strategies.push(x),
            None => return fail(format!("unknown strategy '{s}' (serial, pool, qemu, engine)")),
        }
    }
    let blk_policy = match cli.blk_policy.as_str() {
        "drain" => BlkPolicy::Drain,
        "hand-over" | "handover" => BlkPolicy::HandOver,
        other => return fail(format!("unknown --blk-policy '{other}' (drain, hand-over)")),
    };
    for d in &cli.precopy_changes {
        match topo.device_by_name(d) {
            Some(dev) if dev.rings() > 0 => {}
            Some(_) => return fail(format!("--precopy-changes {d}: not a vhost-user device")),
            None => return fail(format!("--precopy-changes {d}: no device named '{d}' in {}", topo.name())),
        }
    }
    if cli.guest_ram_gib == Some(0) || cli.guest_ram_gib.is_some_and(|g| g > 1 << 20) {
        return fail("--guest-ram-gib must be in 1..=1048576");
    }
    let changes: Vec<&str> = cli.precopy_changes.iter().map(String::as_str).collect();
    let mut cfg = SimConfig::new(topo)
        .blk_policy(blk_policy)
        .blk_inflight(cli.blk_inflight, std::time::Duration::from_micros(cli.blk_io_us))
        .scale(cli.scale)
        .workers(cli.workers)
        .kvm(kvm)
        .faults(faults)
        .reply_ack(!cli.no_reply_ack)
        .precopy_changes(&changes)
        .deadline(std::time::Duration::from_millis(cli.deadline_ms.max(1)));
    if let Some(ms) = cli.drain_deadline_ms {
        cfg = cfg.drain_deadline(std::time::Duration::from_millis(ms.max(1)));
    }
    if let Some(g) = cli.guest_ram_gib {
        cfg.profile.window.guest_ram_gib = g;
    }
    let runs = strategies.iter().map(|s| run(&cfg, *s)).collect();
    let kvm_runs = if cli.no_kvm_comparison || !cfg.faults.is_empty() {
        vec![]
    } else {
        let other = if kvm == KvmModel::Rfc { KvmModel::PerVmIoeventfd } else { KvmModel::Rfc };
        let c2 = cfg.clone().kvm(other);
        strategies.iter().map(|s| run(&c2, *s)).collect()
    };
    let cmp = Comparison::simulated(&cfg, runs, kvm_runs);
    print!("{}", table(&cmp));
    if let Some(p) = &cli.json {
        let text = serde_json::to_string_pretty(&json(&cmp)).expect("JSON of plain data");
        if let Err(e) = std::fs::write(p, text) {
            return fail(format!("cannot write {}: {e}", p.display()));
        }
    }
    // The timeline and trace show the engine run (the first run if it did not run).
    if let Some(r) = cmp.get(Strategy::Engine).or(cmp.runs.first()) {
        if let Some(p) = &cli.svg {
            let caption = format!("{} · {}", cmp.topology.summary(), cmp.label);
            if let Err(e) = std::fs::write(p, switchover_report::timeline::svg(r, &caption)) {
                return fail(format!("cannot write {}: {e}", p.display()));
            }
        }
        if let Some(p) = &cli.trace {
            if let Err(e) = std::fs::write(p, switchover_report::trace::to_string(r)) {
                return fail(format!("cannot write {}: {e}", p.display()));
            }
        }
    }
    ExitCode::SUCCESS
}
