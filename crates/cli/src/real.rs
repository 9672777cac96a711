//! `switchover real`: the serial / pool / engine comparison on real components,
//! printed with the simulation's table and JSON (`"simulated": false`).
//!
//! # Examples
//!
//! ```
//! use std::process::ExitCode;
//! use switchover_cli::real::main;
//! // Bad arguments: one line on stderr and status 2, before anything is started.
//! assert_eq!(main(&["--nets".into(), "many".into()]), ExitCode::from(2));
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::json;

use switchover::ids::Side;
use switchover::step::StepKind;
use switchover_baseline::Strategy;
use switchover_report::{json as report_json, table, Comparison};
use switchover_testbed::guest::Change;
use switchover_testbed::side::BackendKind;
use switchover_testbed::{backend, run_strategy, BlkBackend, RealConfig, RealRun};
use switchover_vhost::kvm::measure_routing;

/// Compares `serial`, `pool` and `engine` on REAL vhost-user backends (own net and
/// blk backends in child processes, qemu-storage-daemon) and real KVM notifiers.
#[derive(Debug, Parser)]
#[command(name = "switchover real")]
struct Args {
    /// Net devices.
    #[arg(long, default_value_t = 8)]
    nets: u32,
    /// Queue pairs per net device.
    #[arg(long, default_value_t = 8)]
    queue_pairs: u32,
    /// Blk devices.
    #[arg(long, default_value_t = 8)]
    blks: u32,
    /// Queues per blk device.
    #[arg(long, default_value_t = 4)]
    queues: u32,
    /// Backend of the blk devices: own, qsd (qemu-storage-daemon) or mixed (half each).
    #[arg(long, default_value = "mixed")]
    blk_backend: String,
    /// Worker threads for `pool` and `engine` (the engine's caller lane is one more).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Per-step deadline in milliseconds.
    #[arg(long, default_value_t = 5000)]
    deadline_ms: u64,
    /// Strategies to run (comma separated).
    #[arg(long, default_value = "serial,pool,engine", value_delimiter = ',')]
    strategies: Vec<String>,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Block writes per blk ring left in flight when the window opens (1..=24).
    #[arg(long, default_value_t = 1)]
    inflight: u16,
    /// Limit each qemu-storage-daemon to N I/O operations per second (throttle
    /// node), so that block requests are still in flight when the window opens.
    #[arg(long)]
    qsd_iops: Option<u32>,
    /// Inject a fault on the real components: KIND:STEP:DEVICE[:RING], KIND one of
    /// error (the reply counts as an error), hang (SIGSTOP the backend), crash
    /// (SIGKILL the backend). Repeatable. Only `engine` rolls back.
    #[arg(long)]
    inject: Vec<String>,
    /// During precopy the guest changes net1's ring addresses (driver reload),
    /// net0's active queue pairs, blk0's first MSI-X entry, and resets blk1's
    /// first ring; the destination must reconcile them in the window.
    #[arg(long)]
    precopy_changes: bool,
    /// Tx packets per tx ring the guest publishes without a kick just before the
    /// stop (still in the rings when the source stops).
    #[arg(long, default_value_t = 0)]
    unkicked_tx: u16,
}

/// The steps a two-host migration adds to the window (and `log_start` in the
/// source's prepare), as the report names them.
pub const NEW_STEPS: [StepKind; 6] =
    [StepKind::LogStart, StepKind::LogSync, StepKind::FinalPass, StepKind::Reconcile, StepKind::RouteCommit, StepKind::RingNotify];

/// What one kind of step cost in a run (REAL): how many ran, their total, median
/// and longest duration.
///
/// ```
/// # use switchover_testbed::run::RealRun;
/// # use switchover_sim::{run, SimConfig};
/// # use switchover_baseline::Strategy;
/// # use switchover::topology::Topology;
/// use switchover::step::StepKind;
/// use switchover_cli::real::step_costs;
/// let r = RealRun::bare(run(&SimConfig::new(Topology::preset("small").unwrap()).scale(0.02), Strategy::Engine));
/// let c = step_costs(&r, &StepKind::LogSync);
/// assert_eq!(c.count, 1); // once, after every device stopped
/// assert!(c.median_ms <= c.max_ms && c.max_ms <= c.total_ms);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepCost {
    /// Steps of the kind that ran (rollback and fence excluded).
    pub count: usize,
    /// Their total duration (ms).
    pub total_ms: f64,
    /// The median one (ms).
    pub median_ms: f64,
    /// The longest (ms).
    pub max_ms: f64,
}

/// What the steps of `kind` cost in `r`'s windows (its rollback and fence excluded).
pub fn step_costs(r: &RealRun, kind: &StepKind) -> StepCost {
    let mut v: Vec<f64> = r
        .run
        .windows
        .iter()
        .filter(|w| !w.rollback && !w.fence)
        .flat_map(|w| {
            w.report
                .records
                .iter()
                .filter(|x| w.plan.step(x.step).kind == *kind)
                .map(|x| (x.end.saturating_sub(x.start)).as_secs_f64() * 1e3)
        })
        .collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return StepCost::default();
    }
    StepCost { count: v.len(), total_ms: v.iter().sum(), median_ms: v[v.len() / 2], max_ms: v[v.len() - 1] }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("switchover real: {msg}");
    ExitCode::from(2)
}

/// `/dev/kvm` cannot be used.
///
/// ```
/// let e = switchover_cli::real::KvmUnavailable(std::io::Error::from(std::io::ErrorKind::NotFound));
/// assert!(e.to_string().starts_with("/dev/kvm is not usable"));
/// ```
#[derive(Debug, thiserror::Error)]
#[error("/dev/kvm is not usable ({0}); real components need KVM")]
pub struct KvmUnavailable(#[source] pub std::io::Error);

/// Whether `/dev/kvm` opens read-write.
///
/// # Errors
/// [`KvmUnavailable`] with the reason.
///
/// ```no_run
/// switchover_cli::real::kvm_available().unwrap(); // needs /dev/kvm
/// ```
pub fn kvm_available() -> Result<(), KvmUnavailable> {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").map(|_| ()).map_err(KvmUnavailable)
}

/// One line per strategy with what was checked on the real components.
///
/// # Examples
///
/// ```
/// # use switchover_testbed::run::RealRun;
/// # use switchover_sim::{run, SimConfig};
/// # use switchover_baseline::Strategy;
/// # use switchover::topology::Topology;
/// # let small = || SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
/// use switchover_cli::real::checks_text;
/// let text = checks_text(&[RealRun::bare(run(&small(), Strategy::Engine))]);
/// assert!(text.contains("engine  REAL checks"), "{text}");
/// assert!(text.contains("socket dir removed"));
/// ```
pub fn checks_text(runs: &[RealRun]) -> String {
    let mut out = String::new();
    for r in runs {
        let rings = r.bases.len();
        let nonzero = r.bases.iter().filter(|b| b.read.unwrap_or(0) != 0).count();
        out.push_str(&format!(
            "  {:<7} REAL checks: bases read {}/{} (non-zero {}), set = read on {} rings; after switchover {}; blk read-back verified on {} rings; second disables refused {} with {} ioctls; leftover processes {}, socket dir {}\n",
            r.run.strategy.name(),
            r.bases.iter().filter(|b| b.read.is_some()).count(),
            rings,
            nonzero,
            r.bases.iter().filter(|b| b.set.is_some() && b.set == b.read).count(),
            match &r.post_switchover {
                Ok(n) => format!("{n} requests completed"),
                Err(e) => format!("FAILED: {e}"),
            },
            r.blk_rings_verified,
            r.second_disables_refused,
            r.second_disable_ioctls,
            r.leftover_processes.len(),
            if r.leftover_dir { "LEFT" } else { "removed" },
        ));
        let published: u32 = r.requests.iter().map(|q| u32::from(q.published)).sum();
        out.push_str(&format!(
            "          REAL guest: runs on {}; {} backend(s) reconnected; requests published {published}, {}; blk writes submitted {}, acknowledged {}, on disk {}{}\n",
            match r.runs_on {
                Some(s) => s.short(),
                None => "NO SIDE",
            },
            r.reconnects,
            if r.runs_on.is_none() {
                "not checked (the guest runs nowhere)".to_string()
            } else if r.requests_exact() {
                "each completed exactly once".to_string()
            } else {
                "LOST OR COMPLETED TWICE".to_string()
            },
            r.disk.submitted,
            r.disk.acknowledged,
            r.disk.on_disk,
            if r.disk.missing.is_empty() { String::new() } else { format!(", MISSING: {}", r.disk.missing.join(", ")) },
        ));
        let mut phases: Vec<String> =
            r.run.phases().iter().map(|(s, w, d)| format!("{} {} {:.2} ms", s.short(), w.name(), d.as_secs_f64() * 1e3)).collect();
        if let Some(rb) = r.rollback {
            // The rollback run is the last phase recorded.
            phases.pop();
            phases.push(format!("src rollback {:.2} ms", rb.as_secs_f64() * 1e3));
        }
        out.push_str(&format!("          REAL downtime {:.2} ms; phases: {}\n", r.run.downtime.as_secs_f64() * 1e3, phases.join(", ")));
        let f = &r.fidelity;
        let m = &f.memory;
        out.push_str(&format!(
            "          REAL memory per side: precopy {} passes, {} pages ({} logged by backends) in {:.1} ms; window: {} log sync(s), final pass {} pages ({} found only by the log sync) in {:.3} ms; {}; rx/read buffers {} checked, {} missing\n",
            m.stats.passes,
            m.stats.precopy_pages,
            m.stats.precopy_logged,
            f.precopy.as_secs_f64() * 1e3,
            m.stats.log_syncs,
            m.stats.final_pass_pages,
            m.stats.final_from_log,
            m.stats.final_pass.as_secs_f64() * 1e3,
            if !m.compared {
                "destination memory not compared (the guest does not run there)".to_string()
            } else if m.differing.is_empty() {
                format!("destination memory identical to the source's ({} used-ring pages served after the start)", m.served_after_start)
            } else {
                format!("{} DESTINATION PAGES DIFFER (first: {})", m.differing.len(), m.differing[0])
            },
            m.buffers_checked,
            m.buffers_missing.len(),
        ));
        let rc = &f.routes;
        out.push_str(&format!(
            "          REAL routes: {} route commit(s) in the window ({} KVM_SET_GSI_ROUTING), {} MSI routes, {} masked, {} mismatched; committed before each ring's kick: {}; enabled before kicked: {}; net rings disabled before their stop: {}\n",
            rc.commits_in_window,
            rc.ioctls,
            rc.routes,
            rc.masked,
            rc.mismatches.len(),
            if rc.before_first_kick { "yes" } else { "NO" },
            if rc.enable_before_kick { "yes" } else { "NO" },
            rc.net_disables_before_stop,
        ));
        out.push_str(&format!(
            "          REAL tx: {} published, {} transmitted, {} missing, {} twice; precopy changes: {}; reconciled: [{}] ({} requests); inactive queues served: {}{}\n",
            f.tx.published,
            f.tx.transmitted,
            f.tx.missing.len(),
            f.tx.twice.len(),
            if f.changes.is_empty() { "none".to_string() } else { f.changes.iter().map(|(c, d)| format!("{c} on {d}")).collect::<Vec<_>>().join(", ") },
            f.reconciled.join(", "),
            f.reconcile_messages,
            f.inactive_served.len(),
            match f.log_after_failure {
                Some(n) => format!("; pages logged after the failure: {n}"),
                None => String::new(),
            },
        ));
        let costs: Vec<String> = NEW_STEPS
            .iter()
            .map(|k| (k, step_costs(r, k)))
            .filter(|(_, c)| c.count > 0)
            .map(|(k, c)| format!("{k} {}× median {:.3} ms (total {:.3})", c.count, c.median_ms, c.total_ms))
            .collect();
        if !costs.is_empty() {
            out.push_str(&format!("          REAL new steps: {}\n", costs.join(", ")));
        }
        for d in &r.drains {
            out.push_str(&format!(
                "          REAL drain_inflight on {}: {} steps, total {:.3} ms, longest {:.3} ms{}\n",
                d.backend,
                d.steps,
                d.total_ms,
                d.max_ms,
                if d.backend == BackendKind::Qsd.name() { " (no INFLIGHT_SHMFD: drain is the only policy)" } else { "" }
            ));
        }
    }
    out
}

/// A side as the JSON report names it (`real.checks.<strategy>.runs_on`): `source`
/// or `destination`, as before the report was built by hand and as docs/real.md says.
fn side_name(s: Side) -> &'static str {
    match s {
        Side::Source => "source",
        Side::Destination => "destination",
    }
}

/// Entry point of `switchover real ARGS`.
///
/// # Examples
///
/// ```
/// use std::process::ExitCode;
/// use switchover_cli::real::main;
/// assert_eq!(main(&["--blk-backend".into()]), ExitCode::from(2)); // missing value
/// assert_eq!(main(&["__backend".into(), "net".into()]), ExitCode::from(2)); // usage
/// ```
pub fn main(args: &[String]) -> ExitCode {
    if args.first().map(String::as_str) == Some("__backend") && args.get(1).map(String::as_str) == Some("hostile") {
        let (Some(spec), Some(kind), Some(sock), Some(q)) = (args.get(2), args.get(3), args.get(4), args.get(5)) else {
            return fail("usage: switchover real __backend hostile MODE@REQUEST net|blk SOCK QUEUES [FILE]");
        };
        let Ok(q) = q.parse::<usize>() else {
            return fail(format!("bad queue count '{q}'"));
        };
        return match backend::serve_hostile(spec, kind, sock, q, args.get(6).map(std::path::Path::new)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(format!("hostile backend: {e}")),
        };
    }
    if args.first().map(String::as_str) == Some("__backend") {
        let (Some(kind), Some(sock), Some(q)) = (args.get(1), args.get(2), args.get(3)) else {
            return fail("usage: switchover real __backend net|blk SOCK QUEUES [FILE]");
        };
        let Ok(q) = q.parse::<usize>() else {
            return fail(format!("bad queue count '{q}'"));
        };
        return match backend::serve(kind, sock, q, args.get(4).map(std::path::Path::new)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(format!("backend: {e}")),
        };
    }
    let a = match Args::try_parse_from(std::iter::once("switchover real".to_string()).chain(args.iter().cloned())) {
        Ok(a) => a,
        Err(e) => {
            if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.to_string();
            return fail(text.lines().next().unwrap_or("bad arguments").trim_start_matches("error: "));
        }
    };
    if let Err(e) = kvm_available() {
        return fail(e);
    }
    let Some(blk_backend) = BlkBackend::parse(&a.blk_backend) else {
        return fail(format!("unknown --blk-backend '{}' (own, qsd, mixed)", a.blk_backend));
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return fail(format!("cannot find my own binary: {e}")),
    };
    let mut cfg = RealConfig::new(exe);
    cfg.nets = a.nets;
    cfg.queue_pairs = a.queue_pairs;
    cfg.blks = a.blks;
    cfg.queues = a.queues;
    cfg.blk_backend = blk_backend;
    cfg.workers = a.workers;
    cfg.deadline = Duration::from_millis(a.deadline_ms.max(1));
    cfg.inflight = a.inflight.clamp(1, 24);
    cfg.qsd_iops = a.qsd_iops.filter(|n| *n > 0);
    cfg.precopy_changes = a.precopy_changes;
    cfg.unkicked_tx = a.unkicked_tx.min(16);
    if cfg.qsd.is_none() && cfg.blks > 0 && blk_backend != BlkBackend::Own {
        eprintln!("switchover real: qemu-storage-daemon is not installed; all blk devices use the project's own blk backend");
    }
    for f in &a.inject {
        match f.parse::<switchover_sim::Fault>() {
            Ok(x) => cfg.inject.push(x),
            Err(e) => return fail(e),
        }
    }
    let mut strategies = Vec::new();
    for s in &a.strategies {
        match Strategy::parse(s) {
            Some(x) => strategies.push(x),
            None => return fail(format!("unknown strategy '{s}' (serial, pool, engine)")),
        }
    }
    let topo = match cfg.topology() {
        Ok(t) => std::sync::Arc::new(t),
        Err(e) => return fail(e),
    };
    for f in &cfg.inject {
        if topo.device_by_name(&f.device).is_none() {
            return fail(format!("--inject: no device named '{}' in this topology", f.device));
        }
    }
    if cfg.precopy_changes {
        if let Err(e) = Change::possible(&topo) {
            return fail(format!("--precopy-changes: {e}"));
        }
    }
    let kinds = cfg.backends(&topo);
    let count = |k: BackendKind| kinds.iter().filter(|x| **x == k).count();
    let label = format!(
        "REAL components on this host: {} own vhost-user net, {} own vhost-user blk, {} qemu-storage-daemon blk backends (child processes, per side), KVM ioeventfds/irqfds (one VM per side)",
        count(BackendKind::OwnNet),
        count(BackendKind::OwnBlk),
        count(BackendKind::Qsd)
    );
    let mut reals = Vec::new();
    for s in &strategies {
        match run_strategy(&cfg, *s) {
            Ok(r) => reals.push(r),
            Err(e) => return fail(format!("{}: {e}", s.name())),
        }
    }
    let cmp = Comparison {
        simulated: false,
        label,
        topology: topo,
        workers: cfg.workers,
        profile: None,
        faults: a.inject.clone(),
        runs: reals.iter().map(|r| r.run.clone()).collect(),
        kvm_runs: vec![],
    };
    print!("{}", table(&cmp));
    print!("{}", checks_text(&reals));
    // The routing table committed once against once per vector, side by side on
    // a scratch VM, for as many vectors as the destination routes.
    let vectors = reals.iter().map(|r| r.fidelity.routes.routes as usize).max().unwrap_or(0).max(1);
    let routing = match measure_routing(vectors, 7) {
        Ok(c) => {
            println!(
                "  REAL MSI routing, {} vectors (median of {} rounds, one scratch VM): one KVM_SET_GSI_ROUTING {:.3} ms, one per vector {:.3} ms ({:.0}×)",
                c.vectors,
                c.rounds,
                c.one_commit.as_secs_f64() * 1e3,
                c.per_vector.as_secs_f64() * 1e3,
                c.ratio()
            );
            Some(c)
        }
        Err(e) => {
            eprintln!("switchover real: routing measurement: {e}");
            None
        }
    };
    // With an injected fault, serial and pool (no rollback) are expected to fail.
    let ok = reals.iter().all(|r| r.checks_ok() || (!cfg.inject.is_empty() && r.failed_without_rollback_ok()));
    if let Some(p) = &a.json {
        let mut v = report_json(&cmp);
        // The two-host figures of the engine's run (or of the one strategy run).
        let main = reals.iter().find(|r| r.run.strategy == Strategy::Engine).or(reals.first());
        v["real"] = json!({
            "memory": "per-side",
            "final_pass_pages": main.map(|r| r.fidelity.memory.stats.final_pass_pages),
            "log_syncs": main.map(|r| r.fidelity.memory.stats.log_syncs),
            "route_commits_in_window": main.map(|r| r.fidelity.routes.commits_in_window),
            "reconciled_devices": main.map(|r| r.fidelity.reconciled.clone()).unwrap_or_default(),
            "routing": routing.map(|c| json!({"vectors": c.vectors, "rounds": c.rounds, "one_commit_ms": c.one_commit.as_secs_f64() * 1e3, "per_vector_ms": c.per_vector.as_secs_f64() * 1e3, "ratio": c.ratio()})),
            "backends": kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "checks": reals.iter().map(|r| (r.run.strategy.name().to_string(), json!({
                "ok": r.checks_ok(),
                "bases": r.bases.iter().map(|b| json!({"device": b.device, "ring": b.ring, "expected": b.expected, "read": b.read, "set": b.set})).collect::<Vec<_>>(),
                "post_switchover": match &r.post_switchover { Ok(n) => json!({"completed": n}), Err(e) => json!({"error": e.to_string()}) },
                "blk_rings_verified": r.blk_rings_verified,
                "second_disable_ioctls": r.second_disable_ioctls,
                "second_disables_refused": r.second_disables_refused,
                "leftover_processes": r.leftover_processes,
                "leftover_dir": r.leftover_dir,
                "runs_on": r.runs_on.map(side_name),
                "reconnects": r.reconnects,
                "reconnected": r.reconnected,
                "rollback_ms": r.rollback.map(|d| d.as_secs_f64() * 1e3),
                "requests_exact": r.requests_exact(),
                "requests": r.requests.iter().map(|q| json!({"device": q.device, "ring": q.ring, "published": q.published, "completed": q.completed})).collect::<Vec<_>>(),
                "disk": json!({"submitted": r.disk.submitted, "acknowledged": r.disk.acknowledged, "on_disk": r.disk.on_disk, "missing": r.disk.missing}),
                "drain_inflight": r.drains.iter().map(|d| json!({"backend": d.backend, "steps": d.steps, "total_ms": d.total_ms, "max_ms": d.max_ms})).collect::<Vec<_>>(),
                "memory": {
                    "precopy_passes": r.fidelity.memory.stats.passes,
                    "precopy_pages": r.fidelity.memory.stats.precopy_pages,
                    "precopy_logged_pages": r.fidelity.memory.stats.precopy_logged,
                    "precopy_ms": r.fidelity.precopy.as_secs_f64() * 1e3,
                    "log_syncs": r.fidelity.memory.stats.log_syncs,
                    "final_pass_pages": r.fidelity.memory.stats.final_pass_pages,
                    "final_pass_pages_only_logged": r.fidelity.memory.stats.final_from_log,
                    "compared": r.fidelity.memory.compared,
                    "differing": r.fidelity.memory.differing,
                    "served_after_start": r.fidelity.memory.served_after_start,
                    "buffers_checked": r.fidelity.memory.buffers_checked,
                    "buffers_missing": r.fidelity.memory.buffers_missing,
                },
                "routes": {
                    "commits_in_window": r.fidelity.routes.commits_in_window,
                    "ioctls": r.fidelity.routes.ioctls,
                    "routes": r.fidelity.routes.routes,
                    "masked": r.fidelity.routes.masked,
                    "mismatches": r.fidelity.routes.mismatches,
                    "before_kicks": r.fidelity.routes.before_first_kick,
                    "enable_before_kick": r.fidelity.routes.enable_before_kick,
                    "net_disables_before_stop": r.fidelity.routes.net_disables_before_stop,
                },
                "tx": {"published": r.fidelity.tx.published, "transmitted": r.fidelity.tx.transmitted, "missing": r.fidelity.tx.missing, "twice": r.fidelity.tx.twice},
                "precopy_changes": r.fidelity.changes.iter().map(|(c, d)| json!({"change": c, "device": d})).collect::<Vec<_>>(),
                "reconciled_devices": r.fidelity.reconciled,
                "reconcile_requests": r.fidelity.reconcile_messages,
                "inactive_queues_served": r.fidelity.inactive_served,
                "log_after_failure_pages": r.fidelity.log_after_failure,
                "new_steps": NEW_STEPS.iter().map(|k| {
                    let c = step_costs(r, k);
                    (k.name().to_string(), json!({"count": c.count, "total_ms": c.total_ms, "median_ms": c.median_ms, "max_ms": c.max_ms}))
                }).collect::<serde_json::Map<_, _>>(),
            }))).collect::<serde_json::Map<_, _>>(),
        });
        let text = serde_json::to_string_pretty(&v).expect("JSON of plain data");
        if let Err(e) = std::fs::write(p, text) {
            return fail(format!("cannot write {}: {e}", p.display()));
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("switchover real: some checks failed (see above)");
        ExitCode::from(1)
    }
}
