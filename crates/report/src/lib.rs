//! Reports built after the window closes: the RFC-style table, the default run's
//! [`breakdown`] with its [`critical_path`], the JSON document. The timeline picture
//! and the trace are in [`timeline`] and [`trace`]; all of them are views of the
//! runs' records, drawn through [`timed_steps`].
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
//! use switchover_report::{Comparison, table};
//! use switchover_sim::{run, SimConfig};
//! use switchover_baseline::Strategy;
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

use switchover::ids::{Side, Window};
use switchover_baseline::{timed_steps, Strategy, StrategyRun, TimedStep};
use switchover_sim::{rfc_rows, KvmModel, SimConfig, RFC_CONCURRENT_MS, RFC_ORIGINAL_MS};

pub mod timeline;
pub mod trace;

/// Side-by-side runs of the strategies on one configuration.
///
/// ```
/// use switchover_report::Comparison;
/// use switchover_sim::{run, SimConfig};
/// use switchover_baseline::Strategy;
/// use switchover::topology::Topology;
/// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
/// let cmp = Comparison::simulated(&cfg, vec![run(&cfg, Strategy::Engine)], vec![]);
/// assert!(cmp.simulated && cmp.label.starts_with("SIMULATED"));
/// assert_eq!(cmp.workers, cfg.workers);
/// ```
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Whether the backends were simulated; every figure is labelled accordingly.
    pub simulated: bool,
    /// What ran, e.g. `SIMULATED backends (profile rfc-original scaled ×0.5, KVM model rfc)`.
    pub label: String,
    /// The VM.
    pub topology: std::sync::Arc<switchover::topology::Topology>,
    /// Worker threads of `pool` and `engine`.
    pub workers: usize,
    /// The simulated profile, when simulated (its RFC rows and scale label the table).
    pub profile: Option<switchover_sim::Profile>,
    /// Faults injected.
    pub faults: Vec<String>,
    /// One run per strategy.
    pub runs: Vec<StrategyRun>,
    /// The same strategies under the other KVM model (may be empty).
    pub kvm_runs: Vec<StrategyRun>,
}

impl Comparison {
    /// A comparison of simulated runs made with `cfg`.
    ///
    /// ```
    /// use switchover_report::Comparison;
    /// use switchover_sim::SimConfig;
    /// use switchover_baseline::Strategy;
    /// use switchover::topology::Topology;
    /// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02).faults(vec!["crash:get_vring_base:net0".parse().unwrap()]);
    /// let cmp = Comparison::simulated(&cfg, vec![], vec![]);
    /// assert_eq!(cmp.label, "SIMULATED backends (profile rfc-original scaled ×0.02, KVM model rfc)");
    /// assert_eq!(cmp.faults, ["crash:get_vring_base:net0"]);
    /// assert!(cmp.get(Strategy::Engine).is_none());
    /// ```
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
    ///
    /// ```
    /// use switchover_report::Comparison;
    /// use switchover_sim::{run, SimConfig};
    /// use switchover_baseline::Strategy;
    /// use switchover::topology::Topology;
    /// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
    /// let cmp = Comparison::simulated(&cfg, vec![run(&cfg, Strategy::Serial)], vec![]);
    /// assert_eq!(cmp.get(Strategy::Serial).unwrap().strategy, Strategy::Serial);
    /// assert!(cmp.get(Strategy::Pool).is_none());
    /// ```
    pub fn get(&self, s: Strategy) -> Option<&StrategyRun> {
        self.runs.iter().find(|r| r.strategy == s)
    }
}

/// Own time of each step (see the module docs), in the order of `steps`.
///
/// ```
/// use switchover_report::{own_times};
/// use switchover_baseline::timed_steps;
/// use switchover_sim::{run, SimConfig};
/// use switchover_baseline::Strategy;
/// use switchover::topology::Topology;
/// let r = run(&SimConfig::new(Topology::preset("small").unwrap()).scale(0.02), Strategy::Engine);
/// let steps = timed_steps(&r);
/// let own = own_times(&steps);
/// assert_eq!(own.len(), steps.len());
/// // A step's own time never exceeds its interval.
/// assert!(steps.iter().zip(&own).all(|(s, &o)| 0 <= o && o <= s.end_ns - s.start_ns));
/// ```
pub fn own_times(steps: &[TimedStep]) -> Vec<i64> {
    let mut own: Vec<i64> = steps.iter().map(|s| (s.end_ns - s.start_ns).max(0)).collect();
    let mut by_server: BTreeMap<(u8, String), Vec<usize>> = BTreeMap::new();
    for (i, s) in steps.iter().enumerate() {
        if s.split {
            if let Some(switchover::step::Server::Channel(_)) = s.server {
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
/// Per row: count, total own time (ns), the engine's window.
type Rows = BTreeMap<RowKey, (usize, i64, Window)>;

fn rows_of(run: &StrategyRun) -> Rows {
    let steps = timed_steps(run);
    let own = own_times(&steps);
    let mut m: BTreeMap<RowKey, (usize, i64, Window)> = BTreeMap::new();
    for (s, o) in steps.iter().zip(own) {
        if s.rollback || s.fence {
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

/// The RFC-style table, then downtimes, speedups and the lower bound, then the
/// [`breakdown_table`] of the engine run (or of the first run if the engine did not run).
///
/// ```
/// use switchover_report::{table, Comparison};
/// use switchover_sim::{run, SimConfig};
/// use switchover_baseline::Strategy;
/// use switchover::topology::Topology;
/// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02).workers(2);
/// let cmp = Comparison::simulated(&cfg, vec![run(&cfg, Strategy::Serial), run(&cfg, Strategy::Engine)], vec![]);
/// let text = table(&cmp);
/// assert!(text.contains("serial") && text.contains("engine"));
/// assert!(text.contains("critical path"));
/// ```
pub fn table(cmp: &Comparison) -> String {
    let scale = cmp.profile.as_ref().map(|p| p.scale).unwrap_or(1.0);
    let rfc = if cmp.profile.is_some() { rfc_rows() } else { vec![] };
    let mut out = String::new();
    let _ = writeln!(out, "switchover: {}, {} workers + caller lane", cmp.label, cmp.workers);
    let _ = writeln!(out, "topology {}", cmp.topology.summary());
    let _ = writeln!(out);
    let per: Vec<(Strategy, Rows)> = cmp.runs.iter().map(|r| (r.strategy, rows_of(r))).collect();
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
        "{:<4} {:<5} {:<20} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  engine window",
        "side", "dev", "step", "count", "RFC orig", "RFC×scale", "serial", "pool", "qemu", "engine"
    );
    let _ = writeln!(out, "{:<37} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}", "", "ms", "ms", "ms", "ms", "ms", "ms");
    for k in &keys {
        let rfc_ms = rfc.iter().find(|r| r.side == k.0 && unit_name(r.unit) == k.1 && r.step.name() == k.2).map(|r| r.original_ms);
        let count = per.iter().filter_map(|(_, m)| m.get(k).map(|x| x.0)).max().unwrap_or(0);
        let cell = |s: Strategy| -> String {
            per.iter()
                .find(|(x, _)| *x == s)
                .and_then(|(_, m)| m.get(k))
                .map(|x| format!("{:>9.1}", ms(x.1)))
                .unwrap_or_else(|| format!("{:>9}", "-"))
        };
        let win = per.iter().find(|(x, _)| *x == Strategy::Engine).and_then(|(_, m)| m.get(k)).map(|x| x.2.name()).unwrap_or("-");
        let _ = writeln!(
            out,
            "{:<4} {:<5} {:<20} {:>6} {:>9} {:>9} {} {} {} {}  {}",
            k.0.short(),
            k.1,
            k.2,
            count,
            rfc_ms.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into()),
            rfc_ms.map(|v| format!("{:.1}", v * scale)).unwrap_or_else(|| "-".into()),
            cell(Strategy::Serial),
            cell(Strategy::Pool),
            cell(Strategy::Qemu),
            cell(Strategy::Engine),
            win
        );
    }
    let _ = writeln!(out, "(own time per step kind; engine rows outside the blackout window are not downtime; rows without an RFC figure are steps the RFC did not measure)");
    out.push_str(&recovery_rows(cmp));
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
    if let Some(v) = dt(Strategy::Qemu) {
        let _ = writeln!(out, "  qemu    {v:>9.1} ms   (QEMU today: serial, one memory-map transaction and one route commit per device)");
    }
    if let Some(e) = cmp.get(Strategy::Engine) {
        let lb = e.lower_bound.total();
        let _ = writeln!(
            out,
            "  engine  {:>9.1} ms   (lower bound {:.1} ms, {}; engine / bound = {:.2})",
            dms(e.downtime),
            dms(lb),
            bound_kind(e),
            ratio(e.downtime, lb)
        );
        out.push_str(&prediction_lines(e));
        let _ = writeln!(
            out,
            "          lower bound: src {:.1} ms limited by {}, dst {:.1} ms limited by {}",
            dms(e.lower_bound.src.bound),
            limiter(&e.lower_bound.src),
            dms(e.lower_bound.dst.bound),
            limiter(&e.lower_bound.dst)
        );
        let ph: Vec<String> = e.phases().iter().map(|(s, w, d)| format!("{} {} {:.1} ms", s.short(), w.name(), dms(*d))).collect();
        let _ = writeln!(out, "          phases: {}", ph.join(", "));
        let mut parts = Vec::new();
        for other in [Strategy::Qemu, Strategy::Serial, Strategy::Pool] {
            if let Some(o) = cmp.get(other) {
                parts.push(format!(
                    "engine ÷ {} = {:.4} (1/{:.1})",
                    other.name(),
                    ratio(e.downtime, o.downtime),
                    ratio(o.downtime, e.downtime)
                ));
            }
        }
        if !parts.is_empty() {
            let _ = writeln!(out, "  measured side by side in this run: {}", parts.join(", "));
        }
        if let (Some(r), Some(f)) = (e.rollback(), e.fence()) {
            let _ = writeln!(out, "          after the failure: dst fence {:.1} ms, then src rollback {:.1} ms", dms(f), dms(r));
        } else if let Some(r) = e.rollback() {
            let _ = writeln!(out, "          after the failure: src rollback {:.1} ms", dms(r));
        }
    }
    let _ = writeln!(out);
    for r in &cmp.runs {
        let _ = writeln!(
            out,
            "  {:<7} outcome {}; vring bases preserved: {}; notifiers issued twice: {}; memory transactions: {} carrying {} notifier changes",
            r.strategy.name(),
            r.outcome.name(),
            if r.checks.vring_bases_preserved { "yes" } else { "NO" },
            r.checks.double_ioctls,
            r.checks.transactions.0,
            r.checks.transactions.1
        );
        if let Some(f) = r.outcome.cause() {
            let _ = writeln!(out, "          failure: {f}");
        }
        if let switchover::roles::Outcome::CompletedUnverified { devices } = &r.outcome {
            let names: Vec<&str> = devices.iter().map(|d| cmp.topology.device(*d).name.as_str()).collect();
            let _ = writeln!(out, "          unverified (no REPLY_ACK; probed once after their start): {}", names.join(", "));
        }
        if !r.safety.is_empty() {
            let verdicts: Vec<String> = r.safety.iter().map(|c| format!("{} {}", c.name, if c.ok() { "ok" } else { "FAILED" })).collect();
            let _ = writeln!(out, "          checks: {}", verdicts.join("; "));
            for c in r.safety.iter().filter(|c| !c.ok()) {
                for f in c.findings.iter().take(4) {
                    let _ = writeln!(out, "            {}: {f}", c.name);
                }
                if c.findings.len() > 4 {
                    let _ = writeln!(out, "            {}: … {} more", c.name, c.findings.len() - 4);
                }
            }
        }
        let io = &r.checks.io;
        if io.submitted > 0 {
            let _ = writeln!(
                out,
                "          block requests in flight at the stop: {}; completed once {} ({} handed over), twice {}, lost {}, never {}",
                io.submitted, io.completed_once, io.handed_over, io.completed_twice, io.lost, io.never
            );
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
        if let Some(e) = k(Strategy::Engine) {
            let parts: Vec<String> = [Strategy::Qemu, Strategy::Serial, Strategy::Pool]
                .iter()
                .filter_map(|s| k(*s).map(|o| format!("engine ÷ {} = {:.4}", s.name(), ratio(e, o))))
                .collect();
            if !parts.is_empty() {
                let _ = writeln!(out, "  measured side by side: {}", parts.join(", "));
            }
        }
    }
    if let Some(d) = cmp.get(Strategy::Engine).or(cmp.runs.first()) {
        let _ = writeln!(out);
        out.push_str(&breakdown_table(d));
    }
    out
}

/// The steps each run made after a failure: the destination's fence (its started
/// rings stopped, its storage given back) and the source's rollback, per kind.
fn recovery_rows(cmp: &Comparison) -> String {
    let mut out = String::new();
    for r in &cmp.runs {
        let steps = timed_steps(r);
        let own = own_times(&steps);
        let mut rows: BTreeMap<(u8, Side, String, String), (usize, i64)> = BTreeMap::new();
        for (s, o) in steps.iter().zip(own) {
            let what = match (s.fence, s.rollback) {
                (true, _) => 0,
                (_, true) => 1,
                _ => continue,
            };
            let e = rows.entry((what, s.side, s.device_kind.clone(), s.step.clone())).or_default();
            e.0 += 1;
            e.1 += o;
        }
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{} after the failure ({}):", r.strategy.name(), if r.simulated { "SIMULATED" } else { "REAL" });
        for ((what, side, dev, step), (n, ns)) in rows {
            let label = if what == 0 { "fence" } else { "rollback" };
            let _ = writeln!(out, "  {:<8} {:<4} {:<5} {:<20} {:>6} {:>9.1} ms", label, side.short(), dev, step, n, ms(ns));
        }
    }
    out
}

fn keys_rank(k: &RowKey) -> usize {
    switchover::step::StepKind::parse(&k.2)
        .and_then(|sk| switchover::step::StepKind::BUILTIN.iter().position(|b| *b == sk))
        .unwrap_or(usize::MAX)
        * 4
        + usize::from(k.1 != "net")
}

fn unit_name(u: switchover_sim::Unit) -> &'static str {
    match u {
        switchover_sim::Unit::Net => "net",
        switchover_sim::Unit::Blk => "blk",
    }
}

fn limiter(lb: &switchover::plan::LowerBound) -> String {
    match lb.limiter {
        switchover::plan::Limiter::Nothing => "nothing".into(),
        switchover::plan::Limiter::Chain => "the longest dependency chain".into(),
        switchover::plan::Limiter::Lanes => "blocking work over lanes".into(),
        switchover::plan::Limiter::Server(switchover::step::Server::VmIoeventfd) => "the VM's ioeventfd lock".into(),
        switchover::plan::Limiter::Server(switchover::step::Server::Channel(d)) => {
            format!("the control channel of device {}", d.0)
        }
    }
}

/// `a / b`, or 0 when `b` is zero.
///
/// ```
/// use std::time::Duration;
/// use switchover_report::ratio;
/// assert_eq!(ratio(Duration::from_millis(1500), Duration::from_millis(500)), 3.0);
/// assert_eq!(ratio(Duration::from_millis(1500), Duration::ZERO), 0.0);
/// ```
pub fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        0.0
    } else {
        a.as_secs_f64() / b.as_secs_f64()
    }
}

/// Where a run's lower bound came from, in words.
fn bound_kind(r: &StrategyRun) -> &'static str {
    if r.bound_measured {
        "measured: from costs measured on this VM's backends before the window"
    } else {
        "estimated: from the plans' expected costs"
    }
}

/// Each side's measured blackout window (ms), if it ran.
fn blackout_ms(r: &StrategyRun, side: Side) -> Option<f64> {
    r.phase(side, Window::Blackout).map(dms)
}

/// The engine's prediction beside what was measured, labelled SIMULATED or REAL.
fn prediction_lines(r: &StrategyRun) -> String {
    let mut out = String::new();
    let label = if r.simulated { "SIMULATED" } else { "REAL" };
    let p = &r.predicted;
    let Some(predicted) = p.downtime() else {
        if r.strategy == Strategy::Engine {
            let _ = writeln!(out, "          predicted downtime: none (the roles made no prediction before the window)");
        }
        return out;
    };
    let err = p.error(r.downtime).map_or("-".into(), |e| format!("{:+.1} %", e * 100.0));
    let _ = writeln!(
        out,
        "          predicted before the window opened ({label}): downtime {:.1} ms, measured {:.1} ms, error {err}",
        dms(predicted),
        dms(r.downtime)
    );
    let side = |pr: Option<&switchover::predict::Prediction>, s: Side| {
        let pred = pr.map_or("-".into(), |x| format!("{:.1}", dms(x.window.duration)));
        let meas = blackout_ms(r, s).map_or("-".into(), |x| format!("{x:.1}"));
        format!("{} blackout {pred} / {meas} ms", s.short())
    };
    let lead = p.made_at().and_then(|m| r.window_opened.checked_duration_since(m)).map_or("-".into(), |d| format!("{:.1}", dms(d)));
    let _ = writeln!(
        out,
        "          predicted / measured ({label}): {}, {}; made {lead} ms before the window opened",
        side(p.source.as_ref(), Side::Source),
        side(p.destination.as_ref(), Side::Destination)
    );
    out
}

/// The engine's prediction as JSON keys of its strategy (all null when it made none).
fn prediction_json(r: &StrategyRun) -> Value {
    let p = &r.predicted;
    let win = |x: Option<&switchover::predict::Prediction>| x.map(|x| dms(x.window.duration));
    let bound = |x: Option<&switchover::predict::Prediction>| x.map(|x| dms(x.lower_bound()));
    let share = |x: Option<&switchover::predict::Prediction>| x.map(|x| dms(x.this_side()));
    let sources = |x: Option<&switchover::predict::Prediction>| {
        x.map(|x| x.window.sources.iter().map(|(s, n)| (s.name().to_string(), json!(n))).collect::<serde_json::Map<_, _>>())
    };
    json!({
        "downtime_ms": p.downtime().map(dms),
        "error_pct": p.error(r.downtime).map(|e| e * 100.0),
        "made_before_window_ms": p.made_at().and_then(|m| r.window_opened.checked_duration_since(m)).map(dms),
        "src_blackout_ms": win(p.source.as_ref()),
        "dst_blackout_ms": win(p.destination.as_ref()),
        "measured_src_blackout_ms": blackout_ms(r, Side::Source),
        "measured_dst_blackout_ms": blackout_ms(r, Side::Destination),
        "src_share_ms": share(p.source.as_ref()),
        "dst_share_ms": share(p.destination.as_ref()),
        "dst_estimate_ms": p.source.as_ref().and_then(|x| x.other).map(dms),
        "src_lower_bound_ms": bound(p.source.as_ref()),
        "dst_lower_bound_ms": bound(p.destination.as_ref()),
        "src_cost_sources": sources(p.source.as_ref()),
        "dst_cost_sources": sources(p.destination.as_ref()),
    })
}

fn run_json(r: &StrategyRun, with_steps: bool) -> Value {
    let c = &r.checks;
    let mut v = json!({
        "simulated": r.simulated,
        "downtime_ms": dms(r.downtime),
        "outcome": r.outcome.name(),
        "failure": r.outcome.cause().map(|f| f.to_string()),
        "vring_bases_preserved": c.vring_bases_preserved,
        "block_io": { "submitted": c.io.submitted, "completed_once": c.io.completed_once, "completed_twice": c.io.completed_twice,
                      "lost": c.io.lost, "never": c.io.never, "handed_over": c.io.handed_over },
        "double_notifier_ioctls": c.double_ioctls,
        "memory_transactions": { "commits": c.transactions.0, "notifier_changes": c.transactions.1 },
        "lanes": r.lanes,
        "lower_bound_ms": dms(r.lower_bound.total()),
        "lower_bound_from": if r.bound_measured { "measured" } else { "expected_costs" },
        "predicted_downtime_ms": r.predicted.downtime().map(dms),
        "prediction_error_pct": r.predicted.error(r.downtime).map(|e| e * 100.0),
        "prediction": prediction_json(r),
        "unverified_devices": match &r.outcome {
            switchover::roles::Outcome::CompletedUnverified { devices } => json!(devices.iter().map(|d| d.0).collect::<Vec<_>>()),
            _ => json!([]),
        },
        "rollback_ms": r.rollback().map(dms),
        "fence_ms": r.fence().map(dms),
        "safe": r.safe(),
        "safety": r.safety.iter().map(|c| json!({ "name": c.name, "ok": c.ok(), "findings": c.findings })).collect::<Vec<_>>(),
        "phases": r.phases().iter().map(|(s, w, d)| json!({"side": s.short(), "window": w.name(), "ms": dms(*d)})).collect::<Vec<_>>(),
    });
    if with_steps {
        v["steps"] = json!(timed_steps(r)
            .iter()
            .map(|s| json!({
                "side": s.side.short(), "window": s.window.name(), "device": s.device, "ring": s.ring, "step": s.step,
                "lane": s.lane, "start_us": s.start_ns as f64 / 1e3, "end_us": s.end_ns as f64 / 1e3,
                "outcome": s.outcome.name(), "rollback": s.rollback, "fence": s.fence,
            }))
            .collect::<Vec<_>>());
    }
    v
}

/// The JSON document: `simulated`, `topology`, `lower_bound_ms`,
/// `strategies.<name>` for each strategy that ran (`serial`, `pool`, `qemu`,
/// `engine`) with its `downtime_ms`, `lower_bound_ms` and `lower_bound_from`
/// (`measured`: the roles' bound from costs measured before the window, on real
/// runs; else `expected_costs`), the engine's `predicted_downtime_ms` and
/// `prediction_error_pct` (null for the baselines) and `prediction` (each side's
/// predicted and measured blackout, share, bound and cost sources, and how long
/// before the window opened it was made), `outcome` (`completed_unverified` listing
/// `unverified_devices`), `safe` and its `safety` checks, `rollback_ms` and
/// `fence_ms`, and per-step intervals (each with `rollback` and `fence`);
/// `ratios.engine_over_<strategy>` and `ratios.engine_over_lower_bound`, measured
/// in the same run; `vring_bases_preserved`; the engine run's [`breakdown`] rows
/// (`breakdown.rows`), …
///
/// ```
/// use switchover_report::{Comparison, json};
/// use switchover_baseline::timed_steps;
/// use switchover_sim::{run, SimConfig};
/// use switchover_baseline::Strategy;
/// use switchover::topology::Topology;
/// let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.02);
/// let r = run(&cfg, Strategy::Engine);
/// let steps = timed_steps(&r);
/// let steps = steps.len();
/// let doc = json(&Comparison::simulated(&cfg, vec![r], vec![]));
/// assert_eq!(doc["simulated"], true);
/// assert_eq!(doc["topology"]["rings"], 10);
/// assert_eq!(doc["strategies"]["engine"]["steps"].as_array().unwrap().len(), steps);
/// assert_eq!(doc["vring_bases_preserved"], true);
/// assert_eq!(doc["strategies"]["engine"]["safe"], true);
/// assert!(doc["strategies"]["engine"]["steps"][0]["fence"].is_boolean());
/// ```
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
    let mut ratios = serde_json::Map::new();
    if let Some(e) = engine {
        for o in &cmp.runs {
            if o.strategy != Strategy::Engine {
                ratios.insert(format!("engine_over_{}", o.strategy.name()), json!(ratio(e.downtime, o.downtime)));
            }
        }
        ratios.insert("engine_over_lower_bound".into(), json!(ratio(e.downtime, e.lower_bound.total())));
    }
    let main_model = cmp.profile.as_ref().map(|p| p.kvm).unwrap_or(KvmModel::Rfc);
    json!({
        "simulated": cmp.simulated,
        "label": cmp.label,
        "profile": cmp.profile.as_ref().map(|p| json!({ "name": p.name, "scale": p.scale, "kvm_model": p.kvm.name(),
            "rule": "each RFC Original row divided evenly over its instances in rfc-huge; unlisted messages share the remaining 30 ms; the steps the RFC did not measure (log, final pass, routes, ring notify, reconcile, probe, storage) charged on top at this machine's measured costs; all × scale",
            "reply_ack": p.reply_ack, "guest_ram_gib": p.window.guest_ram_gib,
            "window_costs_ns": {
                "route_commit_base": p.window.route_commit_base.as_nanos() as u64, "route_commit_per_route": p.window.route_commit_per_route.as_nanos() as u64,
                "eventfd_write": p.window.eventfd_write.as_nanos() as u64, "page_copy": p.window.page_copy.as_nanos() as u64,
                "bitmap_scan_per_gib": p.window.bitmap_scan_per_gib.as_nanos() as u64,
                "storage_inactivate": p.window.storage_inactivate.as_nanos() as u64, "storage_activate": p.window.storage_activate.as_nanos() as u64,
            } })),
        "topology": { "name": cmp.topology.name(), "summary": cmp.topology.summary(), "devices": cmp.topology.devices().len(), "rings": cmp.topology.total_rings() },
        "workers": cmp.workers,
        "faults": cmp.faults,
        "outcome": outcome,
        "cause": engine.and_then(|e| e.outcome.cause()).map(cause_json),
        "lower_bound_ms": engine.map(|e| dms(e.lower_bound.total())),
        "lower_bound_from": engine.map(|e| if e.bound_measured { "measured" } else { "expected_costs" }),
        "breakdown": engine.or(cmp.runs.first()).map(|r| json!({ "strategy": r.strategy.name(), "rows": breakdown(r).iter().map(|b| json!({
            "window": b.window.name(), "side": b.side.short(), "device_kind": b.device_kind, "step": b.step, "count": b.count,
            "total_ns": b.total_ns, "p50_ns": b.p50_ns, "max_ns": b.max_ns, "critical": b.critical, "critical_ns": b.critical_ns,
        })).collect::<Vec<_>>() })),
        "rfc": cmp.profile.as_ref().map(|_| json!({ "original_ms": RFC_ORIGINAL_MS, "concurrent_ms": RFC_CONCURRENT_MS })),
        "vring_bases_preserved": cmp.runs.iter().all(|r| r.checks.vring_bases_preserved),
        "ratios": ratios,
        "strategies": strategies,
        "other_kvm_model": { "model": if main_model == KvmModel::Rfc { "per-vm-ioeventfd" } else { "rfc" }, "strategies": kvm },
    })
}

/// A failure as JSON: side, device, ring and step where a step failed, and the message.
///
/// ```
/// use switchover::ids::Side;
/// use switchover::roles::MessageKind;
/// use switchover::roles::SwitchoverError;
/// let e = SwitchoverError::Unexpected { side: Side::Source, waiting_for: MessageKind::Ready, got: MessageKind::State };
/// let j = switchover_report::cause_json(&e);
/// assert_eq!(j["side"], "src");
/// assert!(j["device"].is_null());
/// ```
pub fn cause_json(f: &switchover::roles::SwitchoverError) -> Value {
    let step = f.step();
    json!({
        "side": f.side().short(),
        "device": step.map(|e| e.device_name.to_string()),
        "ring": step.and_then(|e| e.ring),
        "step": step.map(|e| e.kind.name().to_string()),
        "message": f.to_string(),
    })
}

/// Indices (into `steps`) of the blackout window's critical path, from the window's
/// opening to the step that closed it.
///
/// The rule, applied to the recorded intervals only (no plan needed, so it works for
/// every strategy and for real backends):
///
/// 1. start at the blackout step (window [`Window::Blackout`], rollback included)
///    that finished last: its end is the window's end;
/// 2. if the current step is a request on a backend's control channel that waited
///    in the channel's queue (its service began after it was sent, see
///    [`own_times`]), the step that delayed it is the request the channel answered
///    just before: continue from that one;
/// 3. otherwise, the step that delayed it is the blackout step (either side) that
///    finished last at or before it started, preferring one of the same device on a
///    tie: a predecessor whose completion released it, the lane it waited for, or
///    the source's last stop before the destination's starts;
/// 4. stop when no blackout step finished before the current one started (it was
///    ready when the window opened).
///
/// The result is in time order. Shortening any step on it moves the window's end;
/// shortening a step off it does not (as far as the recorded run shows). Each
/// step's share of the window is given by [`critical_shares`].
///
/// ```
/// use switchover_report::{critical_path};
/// use switchover_baseline::timed_steps;
/// use switchover::ids::Window;
/// use switchover_sim::{run, SimConfig};
/// use switchover_baseline::Strategy;
/// use switchover::topology::Topology;
/// let r = run(&SimConfig::new(Topology::preset("small").unwrap()).scale(0.05), Strategy::Engine);
/// let steps = timed_steps(&r);
/// let path = critical_path(&steps);
/// assert!(!path.is_empty());
/// assert!(path.iter().all(|&i| steps[i].window == Window::Blackout));
/// // The last step of the path is the one that ended the window.
/// let last = steps.iter().filter(|s| s.window == Window::Blackout).map(|s| s.end_ns).max();
/// assert_eq!(Some(steps[*path.last().unwrap()].end_ns), last);
/// ```
pub fn critical_path(steps: &[TimedStep]) -> Vec<usize> {
    let own = own_times(steps);
    let mut blackout: Vec<usize> = (0..steps.len()).filter(|&i| steps[i].window == Window::Blackout).collect();
    blackout.sort_by_key(|&i| (steps[i].end_ns, steps[i].start_ns));
    let Some(&last) = blackout.last() else {
        return vec![];
    };
    let mut channels: BTreeMap<(Side, &str), Vec<usize>> = BTreeMap::new();
    for &i in &blackout {
        if is_channel(&steps[i]) {
            channels.entry((steps[i].side, steps[i].device.as_str())).or_default().push(i);
        }
    }
    let mut visited = vec![false; steps.len()];
    let mut path = Vec::new();
    let mut cur = last;
    loop {
        visited[cur] = true;
        path.push(cur);
        let s = &steps[cur];
        let service_start = s.end_ns - own[cur];
        let next = if is_channel(s) && service_start > s.start_ns {
            let list = &channels[&(s.side, s.device.as_str())];
            let upto = list.partition_point(|&j| steps[j].end_ns <= service_start);
            list[..upto].iter().rev().copied().find(|&j| !visited[j])
        } else {
            let upto = blackout.partition_point(|&j| steps[j].end_ns <= s.start_ns);
            let mut best: Option<usize> = None;
            for &j in blackout[..upto].iter().rev() {
                if visited[j] {
                    continue;
                }
                match best {
                    None => best = Some(j),
                    Some(b) if steps[j].end_ns < steps[b].end_ns => break,
                    Some(_) if steps[j].device == s.device && steps[j].side == s.side => {
                        best = Some(j);
                        break;
                    }
                    Some(_) => {}
                }
            }
            best
        };
        match next {
            Some(n) => cur = n,
            None => break,
        }
    }
    path.reverse();
    path
}

/// How much of the blackout window each step of `path` (from [`critical_path`])
/// accounts for: the time from the previous path step's end (the window's opening
/// for the first) to its own end. The shares add up to the end of the last path
/// step, so they say where the downtime went; a share includes any wait for a lane
/// or a dispatch just before the step.
///
/// ```
/// use switchover_report::{critical_path, critical_shares};
/// use switchover_baseline::timed_steps;
/// use switchover_sim::{run, SimConfig};
/// use switchover_baseline::Strategy;
/// use switchover::topology::Topology;
/// let r = run(&SimConfig::new(Topology::preset("small").unwrap()).scale(0.05), Strategy::Engine);
/// let steps = timed_steps(&r);
/// let path = critical_path(&steps);
/// let shares = critical_shares(&steps, &path);
/// let end = steps[*path.last().unwrap()].end_ns;
/// assert_eq!(shares.iter().sum::<i64>(), end.max(0));
/// ```
pub fn critical_shares(steps: &[TimedStep], path: &[usize]) -> Vec<i64> {
    let mut prev = 0i64;
    path.iter()
        .map(|&i| {
            let e = steps[i].end_ns.max(prev);
            let share = e - prev;
            prev = e;
            share
        })
        .collect()
}

fn is_channel(s: &TimedStep) -> bool {
    s.split && matches!(s.server, Some(switchover::step::Server::Channel(_)))
}

/// One row of [`breakdown`]: the steps of one window, side, device kind and step kind.
///
/// ```
/// use switchover_report::breakdown;
/// use switchover::ids::{Side, Window};
/// use switchover_sim::{run, SimConfig};
/// use switchover_baseline::Strategy;
/// use switchover::topology::Topology;
/// let r = run(&SimConfig::new(Topology::preset("small").unwrap()).scale(0.02), Strategy::Engine);
/// let rows = breakdown(&r);
/// let get = rows.iter().find(|x| x.side == Side::Source && x.device_kind == "net" && x.step == "get_vring_base").unwrap();
/// assert_eq!((get.window, get.count), (Window::Blackout, 8)); // 2 nets × 4 rings
/// assert!(get.p50_ns <= get.max_ns && get.max_ns <= get.total_ns);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakdownRow {
    /// The window.
    pub window: Window,
    /// The side.
    pub side: Side,
    /// Device kind (`net`, `blk` or a generic kind).
    pub device_kind: String,
    /// Step kind, with ` (rollback)` appended for rollback steps and ` (fence)`
    /// for the destination's fence steps.
    pub step: String,
    /// Number of steps.
    pub count: usize,
    /// Sum of own times (ns).
    pub total_ns: i64,
    /// Median own time (ns, nearest rank).
    pub p50_ns: i64,
    /// Largest own time (ns).
    pub max_ns: i64,
    /// How many of these steps lie on the [`critical_path`].
    pub critical: usize,
    /// Their share of the blackout window ([`critical_shares`], ns).
    pub critical_ns: i64,
}

/// The steps of one run grouped by window, side, device kind and step kind, with the
/// count, total, median and largest own time (see [`own_times`]) of each group and
/// how many of its steps are on the [`critical_path`]. Rows are in time order of
/// windows, then in the order the kinds first started.
///
/// ```
/// use switchover_report::{breakdown};
/// use switchover_baseline::timed_steps;
/// use switchover_sim::{run, SimConfig};
/// use switchover_baseline::Strategy;
/// use switchover::topology::Topology;
/// let r = run(&SimConfig::new(Topology::preset("small").unwrap()).scale(0.05), Strategy::Engine);
/// let steps = timed_steps(&r);
/// let rows = breakdown(&r);
/// assert_eq!(rows.iter().map(|x| x.count).sum::<usize>(), steps.len());
/// assert!(rows.iter().any(|x| x.critical > 0 && x.step == "get_vring_base"));
/// ```
pub fn breakdown(run: &StrategyRun) -> Vec<BreakdownRow> {
    let steps = timed_steps(run);
    let own = own_times(&steps);
    let mut on_path: Vec<Option<i64>> = vec![None; steps.len()];
    let path = critical_path(&steps);
    for (&i, share) in path.iter().zip(critical_shares(&steps, &path)) {
        on_path[i] = Some(share);
    }
    type Key = (Window, Side, String, String);
    /// Key, first start, own times, (steps on the path, their shares).
    type Group = (Key, i64, Vec<i64>, (usize, i64));
    let mut groups: Vec<Group> = Vec::new();
    let mut index: std::collections::HashMap<Key, usize> = std::collections::HashMap::new();
    for (i, s) in steps.iter().enumerate() {
        let step = match (s.rollback, s.fence) {
            (true, _) => format!("{} (rollback)", s.step),
            (_, true) => format!("{} (fence)", s.step),
            _ => s.step.clone(),
        };
        let key = (s.window, s.side, s.device_kind.clone(), step);
        let g = *index.entry(key.clone()).or_insert_with(|| {
            groups.push((key, s.start_ns, Vec::new(), (0, 0)));
            groups.len() - 1
        });
        groups[g].2.push(own[i]);
        if let Some(share) = on_path[i] {
            groups[g].3 .0 += 1;
            groups[g].3 .1 += share;
        }
    }
    groups.sort_by_key(|g| (g.0 .0, g.1));
    groups
        .into_iter()
        .map(|((window, side, device_kind, step), _, mut v, (critical, critical_ns))| {
            v.sort_unstable();
            BreakdownRow {
                window,
                side,
                device_kind,
                step,
                count: v.len(),
                total_ns: v.iter().sum(),
                p50_ns: v[(v.len() - 1) / 2],
                max_ns: *v.last().unwrap_or(&0),
                critical,
                critical_ns,
            }
        })
        .collect()
}

/// The [`breakdown`] of one run as text, with the critical path's rows marked `◀`
/// and a one-line summary of the path.
///
/// ```
/// use switchover_report::breakdown_table;
/// use switchover_sim::{run, SimConfig};
/// use switchover_baseline::Strategy;
/// use switchover::topology::Topology;
/// let r = run(&SimConfig::new(Topology::preset("small").unwrap()).scale(0.05), Strategy::Engine);
/// let text = breakdown_table(&r);
/// assert!(text.contains("critical path"));
/// assert!(text.contains("SIMULATED"));
/// ```
pub fn breakdown_table(run: &StrategyRun) -> String {
    let mut out = String::new();
    let label = if run.simulated { "SIMULATED" } else { "REAL" };
    let _ = writeln!(out, "{} run by window, device kind and step kind ({label}; own time per step, ms):", run.strategy.name());
    let _ = writeln!(
        out,
        "{:<8} {:<4} {:<6} {:<24} {:>6} {:>9} {:>8} {:>8} {:>12}",
        "window", "side", "dev", "step", "count", "total", "p50", "max", "critical path"
    );
    let rows = breakdown(run);
    for r in &rows {
        let crit = if r.critical > 0 { format!("{:>5} {:>6.1}  ◀", r.critical, ms(r.critical_ns)) } else { format!("{:>5}", "-") };
        let _ = writeln!(
            out,
            "{:<8} {:<4} {:<6} {:<24} {:>6} {:>9.1} {:>8.3} {:>8.3} {crit}",
            r.window.name(),
            r.side.short(),
            r.device_kind,
            r.step,
            r.count,
            ms(r.total_ns),
            ms(r.p50_ns),
            ms(r.max_ns),
        );
    }
    let steps = timed_steps(run);
    let path = critical_path(&steps);
    if let (Some(&a), Some(&b)) = (path.first(), path.last()) {
        let mut top: Vec<&BreakdownRow> = rows.iter().filter(|r| r.critical > 0).collect();
        top.sort_by_key(|r| std::cmp::Reverse(r.critical_ns));
        let parts: Vec<String> =
            top.iter().take(4).map(|r| format!("{} {} {} {:.1} ms", r.side.short(), r.device_kind, r.step, ms(r.critical_ns))).collect();
        let _ = writeln!(
            out,
            "critical path ({label}): {} steps, from {} to {} at {:.1} ms; most of it: {}",
            path.len(),
            step_label(&steps[a]),
            step_label(&steps[b]),
            ms(steps[b].end_ns),
            parts.join(", "),
        );
        let _ = writeln!(
            out,
            "  (the chain that ends the window: from its last step, back through the request its channel answered just before, or the step that finished just before it started; ms = the window time each row accounts for)"
        );
    }
    out
}

/// `src net3 ring 5 get_vring_base`.
fn step_label(s: &TimedStep) -> String {
    match s.ring {
        Some(r) => format!("{} {} ring {r} {}", s.side.short(), s.device, s.step),
        None => format!("{} {} {}", s.side.short(), s.device, s.step),
    }
}
