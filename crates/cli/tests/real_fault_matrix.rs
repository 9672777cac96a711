//! The fault matrix on REAL components: every fault kind the rig injects (error,
//! hang, crash; see [`FaultKind`]) × every step kind either side's plans perform
//! on a net device (own backend), a blk device on the own inflight backend and a
//! blk device on qemu-storage-daemon, with the backends offering REPLY_ACK (the
//! default) and again without it. Each run must end safe:
//!
//! * `completed` with every vring base preserved, or `completed_unverified` (no
//!   REPLY_ACK) naming the faulty device among those it could not verify, or
//!   `rolled_back`, `aborted` or `completed_with_cleanup_errors` naming the faulty
//!   device;
//! * the guest runs on exactly one side, its rings there serve a new request and
//!   were started with the bases the guest had published;
//! * every request completed exactly once, no acknowledged write missing from the
//!   image file;
//! * every check of the run holds (one writer per image, the fence, the backends'
//!   counters, …) and no backend process or socket directory is left;
//!
//! and the whole matrix leaves no child process and no file descriptor behind.
//!
//! The (side, step kind, device) points come from the plans of a run without a
//! fault in each configuration (both sides, every window but rollback and fence,
//! which inject nothing), so a kind added to a recipe joins the matrix; each
//! fault is injected on its side only (a kind both sides run, such as `probe`
//! without REPLY_ACK, is a point on each). A fault whose step is never started in
//! its run (it cannot fire) is counted and listed; such a run must end as a run
//! without a fault does. The counts per outcome are printed:
//!
//! ```text
//! cargo test --release -p switchover-cli --test real_fault_matrix -- --nocapture
//! ```
//!
//! One case, or a few: `SWITCHOVER_MATRIX_ONLY=dst:crash:probe:net0@noack,src:hang:log_start:blk1@ack`.
//!
//! Needs /dev/kvm (root) and qemu-storage-daemon; skipped, with the reason
//! printed, only when /dev/kvm is absent.

mod real_common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use switchover::ids::Side;
use switchover::roles::Outcome;
use switchover::step::StepKind;
use switchover_baseline::Strategy;
use switchover_sim::{Fault, FaultKind};
use switchover_testbed::side::BackendKind;
use switchover_testbed::{run_strategy, BlkBackend, RealConfig, RealRun};

/// Runs at once (the runs are mostly waiting on backends and deadlines).
const PARALLEL: usize = 2;

fn config(reply_ack: bool) -> Option<RealConfig> {
    // net0 (own backend), blk0 (qemu-storage-daemon), blk1 (own inflight
    // backend, its storage handed over as steps); one ring pair / queue each.
    let mut c = real_common::config(1, 1, 2, 1, BlkBackend::Mixed, Duration::from_millis(300))?;
    c.precopy_passes = 1;
    c.reply_ack = reply_ack;
    Some(c)
}

fn ack_name(ack: bool) -> &'static str {
    if ack {
        "REPLY_ACK"
    } else {
        "no REPLY_ACK"
    }
}

fn kind_name(k: FaultKind) -> &'static str {
    match k {
        FaultKind::Error => "error",
        FaultKind::Hang => "hang",
        FaultKind::Crash => "crash",
    }
}

/// Every (side, step kind, device) the plans of `r` perform, outside rollback
/// and fence (which inject nothing).
fn points_of(r: &RealRun, cfg: &RealConfig) -> Vec<(Side, StepKind, String)> {
    let topo = cfg.topology().expect("topology");
    let mut v: Vec<(Side, StepKind, String)> = Vec::new();
    for w in r.run.windows.iter().filter(|w| !w.rollback && !w.fence) {
        for s in w.plan.steps() {
            let p = (w.side(), s.kind.clone(), topo.device(s.device).name.clone());
            if !v.contains(&p) {
                v.push(p);
            }
        }
    }
    v
}

/// Whether the fault's step was started on `side` (where it is injected): it
/// fired.
fn fired(r: &RealRun, side: Side, f: &Fault, cfg: &RealConfig) -> bool {
    let topo = cfg.topology().expect("topology");
    let mut sides = Vec::new();
    for w in r.run.windows.iter().filter(|w| !w.rollback && !w.fence && w.side() == side) {
        let hit = w
            .report
            .records
            .iter()
            .map(|rec| w.plan.step(rec.step))
            .any(|s| s.kind == f.step && topo.device(s.device).name == f.device && f.ring.map_or(true, |ring| s.ring == Some(ring)));
        if hit && !sides.contains(&w.side()) {
            sides.push(w.side());
        }
    }
    !sides.is_empty()
}

/// What is wrong with a run's end, wherever the guest ends up (empty: safe).
fn guest_findings(r: &RealRun) -> Vec<String> {
    let mut v = Vec::new();
    let Some(side) = r.runs_on else {
        v.push("the guest runs nowhere".to_string());
        return v;
    };
    if r.post_switchover.as_ref().ok() != Some(&r.bases.len()) {
        v.push(format!("after the switchover: {:?} of {} rings served a new request", r.post_switchover, r.bases.len()));
    }
    let blk_rings = r.bases.iter().filter(|b| b.device.starts_with("blk")).count();
    if r.blk_rings_verified != blk_rings {
        v.push(format!("blk read-back verified on {} of {blk_rings} rings", r.blk_rings_verified));
    }
    if !r.run.checks.vring_bases_preserved {
        v.push(format!("bases: {:?}", r.run.checks.base_mismatches));
    }
    for b in &r.bases {
        if r.reconnected.contains(&b.device) {
            if !(b.read.is_some() && b.set == b.read && b.read.unwrap_or(0) <= b.expected) {
                v.push(format!("{} ring {} (reconnected) read {:?}, set {:?}, guest {}", b.device, b.ring, b.read, b.set, b.expected));
            }
            continue;
        }
        let reached = |x: u16| b.expected.wrapping_sub(x) <= b.in_flight;
        if !b.read.map_or(true, reached) {
            v.push(format!("{} ring {} read {:?}, guest {} ({} in flight)", b.device, b.ring, b.read, b.expected, b.in_flight));
        }
        if (side == Side::Destination || b.read.is_some()) && !(b.set.is_some() && b.set == b.read) {
            v.push(format!("{} ring {} set {:?}, read {:?}", b.device, b.ring, b.set, b.read));
        }
    }
    for q in &r.requests {
        if q.completed != q.published {
            v.push(format!("{} ring {} completed {} of {}", q.device, q.ring, q.completed, q.published));
        }
    }
    if !r.run.checks.io.exact() {
        v.push(format!("block requests: {:?}", r.run.checks.io));
    }
    if !r.disk.missing.is_empty() {
        v.push(format!("acknowledged writes not on disk: {:?}", r.disk.missing));
    }
    if r.disk.acknowledged != r.disk.submitted || r.disk.on_disk != r.disk.submitted {
        v.push(format!("writes: {:?}", r.disk));
    }
    if !r.leftover_processes.is_empty() {
        v.push(format!("processes left: {:?}", r.leftover_processes));
    }
    if r.leftover_dir {
        v.push("socket directory left".into());
    }
    let failed = r.failed_checks();
    if !r.fidelity.ok() {
        let f = &r.fidelity;
        v.push(format!(
            "fidelity: memory differing {:?}, buffers missing {:?}, tx {:?}, routes {:?}, inactive served {:?}, torn started {:?}, logged after the failure {:?}",
            f.memory.differing, f.memory.buffers_missing, f.tx, f.routes, f.inactive_served, f.torn_started, f.log_after_failure
        ));
    }
    if !failed.is_empty() {
        v.push(format!(
            "checks failed: {failed:?} (storage {:?}, fence {:?}, counters {:?})",
            r.storage.findings, r.fence.findings, r.counter_findings
        ));
    }
    v
}

/// Why a run is not safe, if it is not.
fn unsafe_because(r: &RealRun, f: &Fault, fired: bool, cfg: &RealConfig) -> Option<String> {
    let topo = cfg.topology().expect("topology");
    let faulty = topo.device_by_name(&f.device).expect("device").id;
    let named = |o: &Outcome| o.cause().and_then(|c| c.device_name()) == Some(f.device.as_str());
    let outcome = match &r.run.outcome {
        Outcome::Completed if r.run.checks.vring_bases_preserved => None,
        Outcome::Completed => Some(format!("completed with bases lost: {:?}", r.run.checks.base_mismatches)),
        Outcome::CompletedUnverified { devices } if !fired || devices.contains(&faulty) => None,
        Outcome::CompletedUnverified { devices } => Some(format!("completed_unverified without the faulty device: {devices:?}")),
        o @ (Outcome::RolledBack { .. } | Outcome::Aborted { .. } | Outcome::CompletedWithCleanupErrors { .. }) if fired && named(o) => {
            None
        }
        o => Some(format!("{}: {}", o.name(), o.cause().map(ToString::to_string).unwrap_or_default())),
    };
    let mut why: Vec<String> = outcome.into_iter().collect();
    let expected_side = match r.run.outcome {
        Outcome::Aborted { .. } | Outcome::RolledBack { .. } => Some(Side::Source),
        Outcome::Failed { .. } | Outcome::InDoubt { .. } => None,
        _ => Some(Side::Destination),
    };
    if r.runs_on != expected_side {
        why.push(format!("{} but the guest runs on {:?}", r.run.outcome.name(), r.runs_on));
    }
    why.extend(guest_findings(r));
    (!why.is_empty()).then(|| why.join("; "))
}

/// This process's children still alive (backends the rig did not reap).
fn children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // pid (comm) state ppid …; comm may hold spaces: split after the last ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string));
        if ppid.as_deref() == Some(me.as_str()) {
            v.push(pid);
        }
    }
    v
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// One run: REPLY_ACK or not, the side and the fault, the outcome, whether it
/// fired, why it is unsafe if it is.
struct Finished {
    ack: bool,
    side: Side,
    fault: Fault,
    outcome: String,
    fired: bool,
    why: Option<String>,
}

impl Finished {
    fn name(&self) -> String {
        format!("{} {} ({})", self.side.short(), self.fault, ack_name(self.ack))
    }
}

#[test]
fn real_every_fault_at_every_step_kind_ends_safe() {
    let (Some(with_ack), Some(without_ack)) = (config(true), config(false)) else { return };
    let started = Instant::now();
    let fds0 = count("/proc/self/fd");
    let configs = [(true, with_ack), (false, without_ack)];
    // SWITCHOVER_MATRIX_ONLY="src:crash:log_start:blk1@ack,dst:hang:probe:net0@noack"
    // runs only those cases (to reproduce one).
    let only: Option<Vec<(String, bool)>> = std::env::var("SWITCHOVER_MATRIX_ONLY")
        .ok()
        .map(|v| v.split(',').filter_map(|c| c.rsplit_once('@').map(|(f, a)| (f.to_string(), a == "ack"))).collect());
    // A run without a fault in each configuration: its plans give the points, and
    // it must end as the configuration says (never `completed` without REPLY_ACK).
    let mut cases = Vec::new();
    let mut npoints = BTreeMap::new();
    for (ack, cfg) in &configs {
        let r = run_strategy(cfg, Strategy::Engine).expect("set-up");
        let expect = if *ack { "completed" } else { "completed_unverified" };
        assert_eq!(r.run.outcome.name(), expect, "{}: {:?}", ack_name(*ack), r.run.outcome);
        let g = guest_findings(&r);
        assert!(g.is_empty(), "{} without a fault: {g:?}", ack_name(*ack));
        let points = points_of(&r, cfg);
        for d in ["net0", "blk0", "blk1"] {
            for side in [Side::Source, Side::Destination] {
                assert!(points.iter().any(|(s, _, n)| n == d && *s == side), "no {} step on {d}", side.short());
            }
        }
        assert_eq!(cfg.backends(&cfg.topology().unwrap()), [BackendKind::OwnNet, BackendKind::Qsd, BackendKind::OwnBlk]);
        // The derivation must not come back short: both sides' kinds are there.
        for (side, k) in [
            (Side::Source, "log_start"),
            (Side::Source, "get_vring_base"),
            (Side::Source, "drain_inflight"),
            (Side::Source, "storage_inactivate"),
            (Side::Destination, "set_vring_base"),
            (Side::Destination, "set_vring_kick"),
            (Side::Destination, "storage_activate"),
        ] {
            assert!(points.iter().any(|(s, k2, _)| *s == side && k2.name() == k), "no {k} in the plans ({})", ack_name(*ack));
        }
        if !*ack {
            for side in [Side::Source, Side::Destination] {
                assert!(points.iter().any(|(s, k, _)| *s == side && k.name() == "probe"), "no probe without REPLY_ACK");
            }
        }
        npoints.insert(ack_name(*ack), points.len());
        for (side, kind, device) in &points {
            for fk in ["error", "hang", "crash"] {
                let f: Fault = format!("{fk}:{kind}:{device}").parse().expect("fault");
                let name = format!("{}:{f}", side.short());
                if only.as_ref().map_or(true, |o| o.iter().any(|x| *x == (name.clone(), *ack))) {
                    cases.push((*ack, *side, f));
                }
            }
        }
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Finished>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((ack, side, f)) = cases.get(i) else { break };
                let mut cfg = if *ack { configs[0].1.clone() } else { configs[1].1.clone() };
                cfg.inject = vec![f.clone()];
                cfg.inject_side = Some(*side);
                let t = Instant::now();
                let fin = match run_strategy(&cfg, Strategy::Engine) {
                    Ok(r) => {
                        let fired = fired(&r, *side, f, &cfg);
                        let why = unsafe_because(&r, f, fired, &cfg);
                        Finished { ack: *ack, side: *side, fault: f.clone(), outcome: r.run.outcome.name().to_string(), fired, why }
                    }
                    Err(e) => Finished {
                        ack: *ack,
                        side: *side,
                        fault: f.clone(),
                        outcome: "set-up failed".into(),
                        fired: false,
                        why: Some(format!("set-up: {e}")),
                    },
                };
                eprintln!(
                    "{}: {} in {:.0} ms{}",
                    fin.name(),
                    fin.outcome,
                    t.elapsed().as_secs_f64() * 1e3,
                    fin.why.as_ref().map(|w| format!(" UNSAFE: {w}")).unwrap_or_default()
                );
                results.lock().unwrap_or_else(|e| e.into_inner()).push(fin);
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut by_kind: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut by_side: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for r in &results {
        *counts.entry((ack_name(r.ack), r.outcome.as_str())).or_default() += 1;
        *by_side.entry((r.side.short(), r.outcome.as_str())).or_default() += 1;
        *by_kind.entry((kind_name(r.fault.kind), r.outcome.as_str())).or_default() += 1;
    }
    let elapsed = started.elapsed();
    println!(
        "fault matrix (REAL backends: own net, qemu-storage-daemon blk0, own blk1): {} runs, points {:?}, {:.1} s",
        results.len(),
        npoints,
        elapsed.as_secs_f64()
    );
    for ((c, o), n) in &counts {
        println!("  {c:<13} {o:<30} {n}");
    }
    for ((k, o), n) in &by_kind {
        println!("  {k:<6} {o:<30} {n}");
    }
    for ((side, o), n) in &by_side {
        println!("  {side:<6} {o:<30} {n}");
    }
    let mut unfired: Vec<String> = results.iter().filter(|r| !r.fired).map(Finished::name).collect();
    unfired.sort();
    println!("  never fired (its step was not started in that run): {} — {}", unfired.len(), unfired.join(", "));
    let mut harmless: Vec<String> = results
        .iter()
        .filter(|r| r.fired && matches!(r.outcome.as_str(), "completed" | "completed_unverified"))
        .map(Finished::name)
        .collect();
    harmless.sort();
    println!("  fired and still completed: {} — {}", harmless.len(), harmless.join(", "));
    let mut bad: Vec<String> =
        results.iter().filter_map(|r| r.why.as_ref().map(|w| format!("{} (fired: {}): {}: {w}", r.name(), r.fired, r.outcome))).collect();
    bad.sort();
    assert!(bad.is_empty(), "{} of {} runs ended unsafe:\n{}", bad.len(), results.len(), bad.join("\n"));
    assert_eq!(results.len(), cases.len());
    // Nothing left behind: every backend reaped, no fd open.
    let until = Instant::now() + Duration::from_secs(5);
    while (!children().is_empty() || count("/proc/self/fd") > fds0) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(children(), Vec::<u32>::new(), "child processes left behind");
    assert_eq!(count("/proc/self/fd"), fds0, "file descriptors left behind");
}
