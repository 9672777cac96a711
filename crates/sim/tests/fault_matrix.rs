//! The fault matrix on SIMULATED backends: every fault kind (error, hang, crash)
//! × every step kind either side's plans perform × a net and a blk device, with
//! REPLY_ACK (the default) and again without it. Each run must end safe:
//!
//! * `completed` with every vring base preserved, or `completed_unverified` (no
//!   REPLY_ACK) naming the faulty device among those it could not verify, or
//!   `rolled_back`, `aborted` or `completed_with_cleanup_errors` naming the faulty
//!   device;
//! * the guest runs on exactly one side, every image owned by that side, no
//!   destination ring live when the source resumed, the destination's memory and
//!   configuration final (the world's checks);
//! * no acknowledged block request lost;
//!
//! and the whole matrix leaves no thread and no file descriptor behind.
//!
//! The step kinds come from the plans themselves (both sides, both
//! configurations), so a kind added to a recipe joins the matrix. The counts per
//! outcome are printed: `cargo test --release -p switchover-sim --test
//! fault_matrix -- --nocapture`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use switchover::ids::Side;
use switchover::recipe::build;
use switchover::roles::Outcome;
use switchover::step::StepKind;
use switchover::topology::Topology;
use switchover_baseline::{Strategy, StrategyRun};
use switchover_sim::{run, Fault, FaultKind, SimConfig};

fn topology() -> Topology {
    Topology::builder().name("matrix").net(1, 1).blk(1, 1).build().unwrap()
}

fn config(reply_ack: bool) -> SimConfig {
    SimConfig::new(topology())
        .scale(0.02)
        .workers(2)
        .reply_ack(reply_ack)
        .deadline(Duration::from_millis(80))
        .blk_inflight(2, Duration::from_millis(1))
        // Both devices change during precopy, so `reconcile` has work a fault can hit.
        .precopy_changes(&["net0", "blk0"])
}

/// Every (step kind, device) either side's plan performs, in either configuration.
fn points() -> Vec<(StepKind, String)> {
    let mut v = Vec::new();
    for ack in [true, false] {
        let c = config(ack);
        let opts = c.recipe(Strategy::Engine);
        for side in [Side::Source, Side::Destination] {
            let plan = build(&c.topology, side, &opts, &c.profile).unwrap();
            for s in plan.steps() {
                let p = (s.kind.clone(), c.topology.device(s.device).name.clone());
                if !v.contains(&p) {
                    v.push(p);
                }
            }
        }
    }
    v
}

/// One run: REPLY_ACK or not, the fault, the outcome, why it is unsafe if it is.
type Finished = (bool, Fault, String, Option<String>);

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Why a run is not safe, if it is not.
fn unsafe_because(r: &StrategyRun, f: &Fault, cfg: &SimConfig) -> Option<String> {
    let faulty = cfg.topology.device_by_name(&f.device).unwrap().id;
    let named = |o: &Outcome| o.cause().and_then(|c| c.device_name()) == Some(f.device.as_str());
    let outcome = match &r.outcome {
        Outcome::Completed if r.checks.vring_bases_preserved => None,
        Outcome::Completed => Some(format!("completed with bases lost: {:?}", r.checks.base_mismatches)),
        Outcome::CompletedUnverified { devices } if devices.contains(&faulty) => None,
        Outcome::CompletedUnverified { devices } => Some(format!("completed_unverified without the faulty device: {devices:?}")),
        o @ (Outcome::RolledBack { .. } | Outcome::Aborted { .. } | Outcome::CompletedWithCleanupErrors { .. }) if named(o) => None,
        o => Some(format!("{}: {:?}", o.name(), o.cause().map(ToString::to_string))),
    };
    if outcome.is_some() {
        return outcome;
    }
    // A start without REPLY_ACK does not promise what only an acknowledgement
    // shows (the outcome says so); every other check must hold.
    let unverified = matches!(r.outcome, Outcome::CompletedUnverified { .. });
    if let Some(c) = r.safety.iter().find(|c| !(c.ok() || unverified && c.needs_ack)) {
        return Some(format!("check '{}': {:?}", c.name, c.findings));
    }
    assert!(r.safe());
    let io = &r.checks.io;
    if io.lost > 0 || io.completed_twice > 0 {
        return Some(format!("block requests: {io:?}"));
    }
    None
}

#[test]
fn every_fault_at_every_step_kind_ends_safe() {
    let started = Instant::now();
    let (fds0, threads0) = (count("/proc/self/fd"), count("/proc/self/task"));
    let points = points();
    // The kinds both sides perform must all be there (the matrix is derived, this
    // only makes sure the derivation did not come back short).
    for k in ["get_vring_base", "set_vring_base", "log_sync", "final_pass", "route_commit", "storage_activate", "probe", "reconcile"] {
        assert!(points.iter().any(|(s, _)| s.name() == k), "no {k} in the plans");
    }
    let mut cases = Vec::new();
    for ack in [true, false] {
        for (kind, device) in &points {
            for fk in ["error", "hang", "crash"] {
                let f: Fault = format!("{fk}:{kind}:{device}").parse().unwrap();
                cases.push((ack, f));
            }
        }
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Finished>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((ack, f)) = cases.get(i) else { break };
                let cfg = config(*ack).faults(vec![f.clone()]);
                let r = run(&cfg, Strategy::Engine);
                let why = unsafe_because(&r, f, &cfg);
                results.lock().unwrap().push((*ack, f.clone(), r.outcome.name().to_string(), why));
            });
        }
    });
    let results = results.into_inner().unwrap();
    // Counts per configuration and outcome, per fault kind.
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut by_kind: BTreeMap<(&str, String), usize> = BTreeMap::new();
    for (ack, f, outcome, _) in &results {
        let c = if *ack { "REPLY_ACK" } else { "no REPLY_ACK" };
        *counts.entry((c, outcome.as_str())).or_default() += 1;
        let fk = match f.kind {
            FaultKind::Error => "error",
            FaultKind::Hang => "hang",
            FaultKind::Crash => "crash",
        };
        *by_kind.entry((fk, outcome.clone())).or_default() += 1;
    }
    let elapsed = started.elapsed();
    println!(
        "fault matrix (SIMULATED): {} runs, {} step kinds × device points, {:.1} s",
        results.len(),
        points.len(),
        elapsed.as_secs_f64()
    );
    for ((c, o), n) in &counts {
        println!("  {c:<13} {o:<30} {n}");
    }
    for ((k, o), n) in &by_kind {
        println!("  {k:<6} {o:<30} {n}");
    }
    let completed: Vec<String> =
        results.iter().filter(|(_, _, o, _)| o == "completed").map(|(ack, f, ..)| format!("{f} (reply_ack {ack})")).collect();
    println!("  completed despite the fault (its step is not in that configuration's plans, or did no harm): {}", completed.join(", "));
    let bad: Vec<String> =
        results.iter().filter_map(|(ack, f, o, why)| why.as_ref().map(|w| format!("{f} (reply_ack {ack}): {o}: {w}"))).collect();
    assert!(bad.is_empty(), "{} of {} runs ended unsafe:\n{}", bad.len(), results.len(), bad.join("\n"));
    assert_eq!(results.len(), cases.len());
    // Nothing left behind: the backends' and engines' threads joined, no fd open.
    // (Threads of hung steps are joined when their engine drops.)
    let until = Instant::now() + Duration::from_secs(5);
    while count("/proc/self/task") > threads0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(count("/proc/self/task"), threads0, "threads left behind");
    assert_eq!(count("/proc/self/fd"), fds0, "file descriptors left behind");
}
