//! Reports built after the window closes: the RFC-style table, the JSON document.
//!
//! Each step's *own time* is the time attributable to it alone: for a request on a
//! backend's control channel, from when the channel could start serving it (its
//! send, or the previous reply on that channel, whichever is later) to its reply;
//! for work on a lane, its whole interval. Own times of one step kind add up to the
//! work that kind cost, however much of it overlapped.
//!
//! # Examples
//!
//! ```
//! use switchover::report::{Comparison, table};
//! use switchover::strategy::{run, SimConfig, Strategy};
//! use switchover::topology::Topology;
//! let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.05).workers(2);
//! let runs = Strategy::ALL.iter().map(|s| run(&cfg, *s)).collect();
//! let cmp = Comparison::simulated(&cfg, runs, vec![]);
//! let text = table(&cmp);
//! assert!(text.contains("SIMULATED"));
//! assert!(text.contains("get_vring_base"));
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use crate::sim::{rfc_rows, KvmModel, RFC_CONCURRENT_MS, RFC_ORIGINAL_MS};
use crate::step::{Side, Window};
use crate::strategy::{SimConfig, Strategy, StrategyRun, TimedStep};

/// Side-by-side runs of the strategies on one configuration.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Whether the backends were simulated; every figure is labelled accordingly.
    pub simulated: bool,
    /// What ran, e.g. `SIMULATED backends (profile rfc-original scaled ×0.5, KVM model rfc)`.
    pub label: String,
    /// The VM.
    pub topology: std::sync::Arc<crate::topology::Topology>,
    /// Worker threads of `pool` and `engine`.
    pub workers: usize,
    /// The simulated profile, when simulated (its RFC rows and scale label the table).
    pub profile: Option<crate::sim::Profile>,
    /// Faults injected.
    pub faults: Vec<String>,
    /// One run per strategy.
    pub runs: Vec<StrategyRun>,
    /// The same strategies under the other KVM model (may be empty).
    pub kvm_runs: Vec<StrategyRun>,
}

impl Comparison {
    /// A comparison of simulated runs made with `cfg`.
    pub fn simulated(cfg: &SimConfig, runs: Vec<StrategyRun>, kvm_runs: Vec<StrategyRun>) -> Comparison {
        let p = &cfg.profile;
        Comparison {
            simulated: true,
            label: format!("SIMULATED backends (profile {} scaled ×{}, KVM model {})", p.name, p.scale, p.kvm.name()),
            topology: cfg.topology.clone(),
            workers: cfg.workers,
            profile: Some(p.clone()),
            faults: cfg.faults.iter().map(ToString::to_string).collect(),
            runs,
            kvm_runs,
        }
    }

    /// The run of a strategy.
    pub fn get(&self, s: Strategy) -> Option<&StrategyRun> {
        self.runs.iter().find(|r| r.strategy == s)
    }
}

/// Own time of each step (see the module docs), in the order of `steps`.
pub fn own_times(steps: &[TimedStep]) -> Vec<i64> {
    let mut own: Vec<i64> = steps.iter().map(|s| (s.end_ns - s.start_ns).max(0)).collect();
    let mut by_server: BTreeMap<(u8, String), Vec<usize>> = BTreeMap::new();
    for (i, s) in steps.iter().enumerate() {
        if s.split {
            if let Some(crate::step::Server::Channel(_)) = s.server {
                by_server.entry((s.side as u8, s.device.clone())).or_default().push(i);
            }
        }
    }
    for idx in by_server.values_mut() {
        idx.sort_by_key(|&i| steps[i].end_ns);
        let mut prev_end = i64::MIN;
        for &i in idx.iter() {
            let s = &steps[i];
            let from = s.start_ns.max(prev_end);
            own[i] = (s.end_ns - from).max(0);
            prev_end = prev_end.max(s.end_ns);
        }
    }
    own
}

type RowKey = (Side, String, String);

fn rows_of(run: &StrategyRun) -> BTreeMap<RowKey, (usize, i64, Window)> {
    let own = own_times(&run.steps);
    let mut m: BTreeMap<RowKey, (usize, i64, Window)> = BTreeMap::new();
    for (s, o) in run.steps.iter().zip(own) {
        if s.rollback {
            continue;
        }
        let e = m.entry((s.side, s.device_kind.clone(), s.step.clone())).or_insert((0, 0, s.window));
        e.0 += 1;
        e.1 += o;
    }
    m
}

fn ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

fn dms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The RFC-style table, then downtimes, speedups and the lower bound.
pub fn table(cmp: &Comparison) -> String {
    let scale = cmp.profile.as_ref().map(|p| p.scale).unwrap_or(1.0);
    let rfc = if cmp.profile.is_some() { rfc_rows() } else { vec![] };
    let mut out = String::new();
    let _ = writeln!(out, "switchover: {}, {} workers + caller lane", cmp.label, cmp.workers);
    let _ = writeln!(out, "topology {}", cmp.topology.summary());
    let _ = writeln!(out);
    let per: Vec<(Strategy, BTreeMap<RowKey, (usize, i64, Window)>)> = cmp.runs.iter().map(|r| (r.strategy, rows_of(r))).collect();
    // Row order: the RFC's rows first (source then destination), then the others.
    let mut keys: Vec<RowKey> = Vec::new();
    for r in &rfc {
        keys.push((r.side, unit_name(r.unit).into(), r.step.name().into()));
    }
    for (_, m) in &per {
        for k in m.keys() {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    keys.sort_by_key(|k| (k.0, keys_rank(k)));
    let _ = writeln!(
        out,
        "{:<4} {:<5} {:<20} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}  {}",
        "side", "dev", "step", "count", "RFC orig", "RFC×scale", "serial", "pool", "engine", "engine window"
    );
    let _ = writeln!(out, "{:<37} {:>9} {:>9} {:>9} {:>9} {:>9}", "", "ms", "ms", "ms", "ms", "ms");
    for k in &keys {
        let rfc_ms = rfc.iter().find(|r| r.side == k.0 && unit_name(r.unit) == k.1 && r.step.name() == k.2).map(|r| r.original_ms);
        let count = per.iter().filter_map(|(_, m)| m.get(k).map(|x| x.0)).max().unwrap_or(0);
        let cell = |s: Strategy| -> String {
            per.iter().find(|(x, _)| *x == s).and_then(|(_, m)| m.get(k)).map(|x| format!("{:>9.1}", ms(x.1))).unwrap_or_else(|| format!("{:>9}", "-"))
        };
        let win = per
            .iter()
            .find(|(x, _)| *x == Strategy::Engine)
            .and_then(|(_, m)| m.get(k))
            .map(|x| x.2.name())
            .unwrap_or("-");
        let _ = writeln!(
            out,
            "{:<4} {:<5} {:<20} {:>6} {:>9} {:>9} {} {} {}  {}",
            k.0.short(),
            k.1,
            k.2,
            count,
            rfc_ms.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into()),
            rfc_ms.map(|v| format!("{:.1}", v * scale)).unwrap_or_else(|| "-".into()),
            cell(Strategy::Serial),
            cell(Strategy::Pool),
            cell(Strategy::Engine),
            win
        );
    }
    let _ = writeln!(out, "(own time per step kind; engine rows outside the blackout window are not downtime)");
    let _ = writeln!(out);
    let dt = |s: Strategy| cmp.get(s).map(|r| dms(r.downtime));
    let _ = writeln!(out, "downtime (window open → destination running), {}:", if cmp.simulated { "SIMULATED" } else { "REAL" });
    if let Some(v) = dt(Strategy::Serial) {
        let _ = write!(out, "  serial  {v:>9.1} ms");
        if cmp.profile.is_some() {
            let _ = write!(out, "   (RFC Original {RFC_ORIGINAL_MS:.0} ms × {scale} = {:.1} ms)", RFC_ORIGINAL_MS * scale);
        }
        let _ = writeln!(out);
    }
    if let Some(v) = dt(Strategy::Pool) {
        let _ = write!(out, "  pool    {v:>9.1} ms   ({} workers", cmp.workers);
        if cmp.profile.is_some() {
            let _ = write!(out, "; the RFC's own pool: {RFC_CONCURRENT_MS:.0} ms × {scale} = {:.1} ms", RFC_CONCURRENT_MS * scale);
        }
        let _ = writeln!(out, ")");
    }
    if let Some(e) = cmp.get(Strategy::Engine) {
        let lb = e.lower_bound.total();
        let _ = writeln!(out, "  engine  {:>9.1} ms   (lower bound {:.1} ms; engine / bound = {:.2})", dms(e.downtime), dms(lb), ratio(e.downtime, lb));
        let _ = writeln!(
            out,
            "          lower bound: src {:.1} ms limited by {}, dst {:.1} ms limited by {}",
            dms(e.lower_bound.src.bound),
            limiter(&e.lower_bound.src),
            dms(e.lower_bound.dst.bound),
            limiter(&e.lower_bound.dst)
        );
        let ph: Vec<String> = e.phases.iter().map(|(s, w, d)| format!("{} {} {:.1} ms", s.short(), w.name(), dms(*d))).collect();
        let _ = writeln!(out, "          phases: {}", ph.join(", "));
        if let (Some(s), Some(po)) = (cmp.get(Strategy::Serial), cmp.get(Strategy::Pool)) {
            let _ = writeln!(
                out,
                "  speedup: engine vs serial {:.1}×, engine vs pool {:.1}×, pool vs serial {:.1}×",
                ratio(s.downtime, e.downtime),
                ratio(po.downtime, e.downtime),
                ratio(s.downtime, po.downtime)
            );
        }
    }
    let _ = writeln!(out);
    for r in &cmp.runs {
        let _ = writeln!(
            out,
            "  {:<7} outcome {}; vring bases preserved: {}; notifiers issued twice: {}; memory transactions: {} carrying {} notifier changes",
            r.strategy.name(),
            r.outcome.name(),
            if r.vring_bases_preserved { "yes" } else { "NO" },
            r.double_ioctls,
            r.transactions.0,
            r.transactions.1
        );
        if let Some(f) = &r.failure {
            let _ = writeln!(out, "          failure: {f}");
        }
    }
    if !cmp.kvm_runs.is_empty() {
        let main_model = cmp.profile.as_ref().map(|p| p.kvm).unwrap_or(KvmModel::Rfc);
        let other = if main_model == KvmModel::Rfc { KvmModel::PerVmIoeventfd } else { KvmModel::Rfc };
        let _ = writeln!(out);
        let _ = writeln!(out, "under KVM model {} (SIMULATED):", other.name());
        for r in &cmp.kvm_runs {
            let main = cmp.get(r.strategy).map(|m| dms(m.downtime)).unwrap_or(0.0);
            let _ = writeln!(out, "  {:<7} {:>9.1} ms   (was {:.1} ms)", r.strategy.name(), dms(r.downtime), main);
        }
        let k = |s: Strategy| cmp.kvm_runs.iter().find(|r| r.strategy == s).map(|r| r.downtime);
        if let (Some(s), Some(po), Some(e)) = (k(Strategy::Serial), k(Strategy::Pool), k(Strategy::Engine)) {
            let _ = writeln!(out, "  speedup: engine vs serial {:.1}×, engine vs pool {:.1}×", ratio(s, e), ratio(po, e));
        }
    }
    out
}

fn keys_rank(k: &RowKey) -> usize {
    crate::step::StepKind::parse(&k.2)
        .and_then(|sk| crate::step::StepKind::BUILTIN.iter().position(|b| *b == sk))
        .unwrap_or(usize::MAX)
        * 4
        + usize::from(k.1 != "net")
}

fn unit_name(u: crate::sim::Unit) -> &'static str {
    match u {
        crate::sim::Unit::Net => "net",
        crate::sim::Unit::Blk => "blk",
    }
}

fn limiter(lb: &crate::plan::LowerBound) -> String {
    match lb.limiter {
        crate::plan::Limiter::Nothing => "nothing".into(),
        crate::plan::Limiter::Chain => "the longest dependency chain".into(),
        crate::plan::Limiter::Lanes => "blocking work over lanes".into(),
        crate::plan::Limiter::Server(crate::step::Server::VmIoeventfd) => "the VM's ioeventfd lock".into(),
        crate::plan::Limiter::Server(crate::step::Server::Channel(d)) => format!("the control channel of device {}", d.0),
    }
}

/// `a / b`, or 0 when `b` is zero.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        0.0
    } else {
        a.as_secs_f64() / b.as_secs_f64()
    }
}

fn run_json(r: &StrategyRun, with_steps: bool) -> Value {
    let mut v = json!({
        "simulated": r.simulated,
        "downtime_ms": dms(r.downtime),
        "outcome": r.outcome,
        "failure": r.failure.as_ref().map(|f| f.to_string()),
        "vring_bases_preserved": r.vring_bases_preserved,
        "double_notifier_ioctls": r.double_ioctls,
        "memory_transactions": { "commits": r.transactions.0, "notifier_changes": r.transactions.1 },
        "lanes": r.lanes,
        "lower_bound_ms": dms(r.lower_bound.total()),
        "phases": r.phases.iter().map(|(s, w, d)| json!({"side": s, "window": w, "ms": dms(*d)})).collect::<Vec<_>>(),
    });
    if with_steps {
        v["steps"] = json!(r
            .steps
            .iter()
            .map(|s| json!({
                "side": s.side, "window": s.window, "device": s.device, "ring": s.ring, "step": s.step,
                "lane": s.lane, "start_us": s.start_ns as f64 / 1e3, "end_us": s.end_ns as f64 / 1e3,
                "outcome": s.outcome, "rollback": s.rollback,
            }))
            .collect::<Vec<_>>());
    }
    v
}

/// The JSON document: `simulated`, `topology`, `lower_bound_ms`,
/// `strategies.<name>.downtime_ms`, per-step intervals, `vring_bases_preserved`, …
pub fn json(cmp: &Comparison) -> Value {
    let mut strategies = serde_json::Map::new();
    for r in &cmp.runs {
        strategies.insert(r.strategy.name().into(), run_json(r, true));
    }
    let mut kvm = serde_json::Map::new();
    for r in &cmp.kvm_runs {
        kvm.insert(r.strategy.name().into(), run_json(r, false));
    }
    let engine = cmp.get(Strategy::Engine);
    let outcome = engine.map(|e| e.outcome.name()).unwrap_or("n/a");
    let main_model = cmp.profile.as_ref().map(|p| p.kvm).unwrap_or(KvmModel::Rfc);
    json!({
        "simulated": cmp.simulated,
        "label": cmp.label,
        "profile": cmp.profile.as_ref().map(|p| json!({ "name": p.name, "scale": p.scale, "kvm_model": p.kvm.name(),
            "rule": "each RFC Original row divided evenly over its instances in rfc-huge; unlisted messages share the remaining 30 ms; all × scale" })),
        "topology": { "name": cmp.topology.name(), "summary": cmp.topology.summary(), "devices": cmp.topology.devices().len(), "rings": cmp.topology.total_rings() },
        "workers": cmp.workers,
        "faults": cmp.faults,
        "outcome": outcome,
        "cause": engine.and_then(|e| e.failure.as_ref()).map(|f| json!({"device": f.device, "step": f.step, "ring": f.ring, "side": f.side, "message": f.to_string()})),
        "lower_bound_ms": engine.map(|e| dms(e.lower_bound.total())),
        "rfc": cmp.profile.as_ref().map(|_| json!({ "original_ms": RFC_ORIGINAL_MS, "concurrent_ms": RFC_CONCURRENT_MS })),
        "vring_bases_preserved": cmp.runs.iter().all(|r| r.vring_bases_preserved),
        "strategies": strategies,
        "other_kvm_model": { "model": if main_model == KvmModel::Rfc { "per-vm-ioeventfd" } else { "rfc" }, "strategies": kvm },
    })
}
