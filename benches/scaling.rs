//! Downtime as the VM grows, `serial` against `engine`, SIMULATED backends:
//!
//! * `scaling-devices` — 1, 2, 4, … 64 vhost-user net devices of 4 queue pairs
//!   (8 rings) each;
//! * `scaling-queues` — one vhost-user net device with 1, 2, 4, … 64 queue pairs.
//!
//! Each criterion iteration is one whole switchover; the value analysed is its
//! measured downtime. Next to each point the summary gives the engine's lower
//! bound (from the plan's expected costs: longest chain, busiest serialised server,
//! blocking work per lane) and what limits it, the busiest control channel's
//! share of the source blackout window, and the engine's excess over the bound per
//! blackout step, so the resource that saturates can be named from the figures. It
//! also writes `scaling.svg` (log–log lines of the medians) next to the summary.

mod common;

use std::fmt::Write as _;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use switchover::ids::{Side, Window};
use switchover::plan::Limiter;
use switchover::step::Server;
use switchover::topology::Topology;
use switchover_baseline::{timed_steps, Strategy, StrategyRun, DEFAULT_WORKERS};
use switchover_sim::{run, SimConfig};

use common::{machine, ms, save, table, test_mode, Samples};

/// Profile scale for this benchmark.
const SCALE: f64 = 0.05;
const WORKERS: usize = DEFAULT_WORKERS;
const QP_PER_DEVICE: u32 = 4;
const POINTS: [u32; 7] = [1, 2, 4, 8, 16, 32, 64];
const STRATEGIES: [Strategy; 2] = [Strategy::Serial, Strategy::Engine];

static S: Samples = Samples::new();
/// The engine's lower-bound limiter at the largest point of each axis.
static LIMITS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

#[derive(Clone, Copy)]
enum Axis {
    Devices,
    Queues,
}

impl Axis {
    fn group(self) -> &'static str {
        match self {
            Axis::Devices => "scaling-devices",
            Axis::Queues => "scaling-queues",
        }
    }
    fn topology(self, n: u32) -> Topology {
        let b = Topology::builder();
        match self {
            Axis::Devices => b.name(&format!("{n}-net-x-{QP_PER_DEVICE}qp")).net(n, QP_PER_DEVICE),
            Axis::Queues => b.name(&format!("1-net-x-{n}qp")).net(1, n),
        }
        .build()
        .expect("topology")
    }
    fn label(self) -> &'static str {
        match self {
            Axis::Devices => "net devices (4 queue pairs each)",
            Axis::Queues => "queue pairs of one net device",
        }
    }
}

fn limiter_name(l: Limiter) -> String {
    match l {
        Limiter::Nothing => "nothing".into(),
        Limiter::Chain => "dependency chain".into(),
        Limiter::Lanes => "lanes (blocking work / lanes)".into(),
        Limiter::Server(Server::Channel(d)) => format!("control channel of device {}", d.0),
        Limiter::Server(Server::VmIoeventfd) => "VM ioeventfd lock".into(),
    }
}

fn record(axis: Axis, s: Strategy, n: u32, r: &StrategyRun) {
    let (g, p) = (axis.group(), n.to_string());
    S.add(g, s.name(), &p, ms(r.downtime));
    if s == Strategy::Engine {
        S.add(g, "bound", &p, ms(r.lower_bound.total()));
        let src_blackout = r.phase(Side::Source, Window::Blackout);
        if let (Some((_, busy)), Some(ph)) = (r.lower_bound.src.busiest_server, src_blackout) {
            S.add(g, "channel-share", &p, busy.as_secs_f64() / ph.as_secs_f64().max(1e-9));
        }
        let blackout_steps = timed_steps(r).iter().filter(|t| t.window == Window::Blackout).count();
        S.add(g, "blackout-steps", &p, blackout_steps as f64);
        S.add(
            g,
            "excess-per-step-us",
            &p,
            (r.downtime.saturating_sub(r.lower_bound.total())).as_secs_f64() * 1e6 / blackout_steps.max(1) as f64,
        );
    }
}

fn bench_axis(c: &mut Criterion, axis: Axis) {
    let mut g = c.benchmark_group(axis.group());
    g.sampling_mode(SamplingMode::Flat).sample_size(10).warm_up_time(Duration::from_millis(1)).measurement_time(Duration::from_secs(2));
    for n in POINTS {
        let cfg = SimConfig::new(axis.topology(n)).scale(SCALE).workers(WORKERS);
        for s in STRATEGIES {
            g.bench_with_input(BenchmarkId::new(s.name(), n), &cfg, |b, cfg| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let r = run(cfg, s);
                        assert!(r.outcome.cause().is_none() && r.checks.vring_bases_preserved, "{} completed", s.name());
                        record(axis, s, n, &r);
                        let mut limits = LIMITS.lock().unwrap();
                        if s == Strategy::Engine && n == *POINTS.last().unwrap() && !limits.iter().any(|l| l.starts_with(axis.group())) {
                            limits.push(format!(
                                "{} at {n}: engine lower bound src {:.2} ms limited by {}, dst {:.2} ms limited by {}",
                                axis.group(),
                                ms(r.lower_bound.src.bound),
                                limiter_name(r.lower_bound.src.limiter),
                                ms(r.lower_bound.dst.bound),
                                limiter_name(r.lower_bound.dst.limiter)
                            ));
                        }
                        total += r.downtime;
                    }
                    total
                })
            });
        }
    }
    g.finish();
}

fn fmt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.prec$}"))
}

fn summary_table(axis: Axis) -> String {
    let g = axis.group();
    let mut rows = Vec::new();
    for n in POINTS {
        let p = n.to_string();
        let se = S.median(g, "serial", &p);
        let en = S.median(g, "engine", &p);
        let lb = S.median(g, "bound", &p);
        rows.push(vec![
            p.clone(),
            fmt(se, 2),
            fmt(en, 2),
            fmt(lb, 2),
            match (en, se) {
                (Some(e), Some(s)) => format!("{:.0}×", s / e),
                _ => "-".into(),
            },
            match (en, lb) {
                (Some(e), Some(b)) => format!("{:.2}", e / b),
                _ => "-".into(),
            },
            fmt(S.median(g, "channel-share", &p).map(|x| x * 100.0), 0),
            fmt(S.median(g, "blackout-steps", &p), 0),
            fmt(S.median(g, "excess-per-step-us", &p), 2),
        ]);
    }
    let mut out = format!("{g}: x = {}\n\n", axis.label());
    out.push_str(&table(
        &[
            "x",
            "serial ms",
            "engine ms",
            "engine lower bound ms",
            "serial / engine",
            "engine / bound",
            "busiest channel busy, % of src blackout",
            "blackout steps (both sides)",
            "engine − bound, µs per blackout step",
        ],
        &rows,
    ));
    out
}

/// A log–log line chart of the medians, two panels side by side.
fn svg() -> String {
    let (pw, ph, ml, mt, mb) = (420.0, 300.0, 60.0, 40.0, 50.0);
    let width = 2.0 * (pw + ml) + 20.0;
    let height = ph + mt + mb + 30.0;
    let (ymin, ymax) = (0.1f64, 1000.0f64);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14">Downtime vs size, SIMULATED backends (profile × {SCALE}, {WORKERS} workers), medians of one run</text>"#,
        width / 2.0
    );
    let series = [("serial", "#d62728", ""), ("engine", "#1f77b4", ""), ("bound", "#555555", r#" stroke-dasharray="5,4""#)];
    for (k, axis) in [Axis::Devices, Axis::Queues].into_iter().enumerate() {
        let x0 = ml + k as f64 * (pw + ml + 20.0);
        let xs = |i: usize| x0 + 20.0 + i as f64 * (pw - 40.0) / (POINTS.len() - 1) as f64;
        let ys = |v: f64| mt + ph - (v.clamp(ymin, ymax).log10() - ymin.log10()) / (ymax.log10() - ymin.log10()) * ph;
        let _ = writeln!(s, r##"<rect x="{x0}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##);
        for e in -1..=3 {
            let v = 10f64.powi(e);
            let y = ys(v);
            let _ = writeln!(s, r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/>"##, x0 + pw);
            let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="end">{v}</text>"#, x0 - 5.0, y + 4.0);
        }
        for (i, n) in POINTS.iter().enumerate() {
            let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">{n}</text>"#, xs(i), mt + ph + 16.0);
        }
        let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, x0 + pw / 2.0, mt + ph + 36.0, axis.label());
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">downtime ms (log)</text>"#,
            x0 - 40.0,
            mt + ph / 2.0,
            x0 - 40.0,
            mt + ph / 2.0
        );
        for (name, color, dash) in series {
            let pts: Vec<String> = POINTS
                .iter()
                .enumerate()
                .filter_map(|(i, n)| S.median(axis.group(), name, &n.to_string()).map(|v| format!("{:.1},{:.1}", xs(i), ys(v))))
                .collect();
            let _ = writeln!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#, pts.join(" "));
            for p in &pts {
                let (x, y) = p.split_once(',').unwrap();
                let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
            }
        }
        for (j, (name, color, dash)) in series.iter().enumerate() {
            let label = if *name == "bound" { "engine lower bound" } else { name };
            let (lx, ly) = (x0 + 12.0, mt + 16.0 + j as f64 * 16.0);
            let _ = writeln!(s, r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/>"#, lx + 24.0);
            let _ = writeln!(s, r#"<text x="{}" y="{}">{label}</text>"#, lx + 30.0, ly + 4.0);
        }
    }
    s.push_str("</svg>\n");
    s
}

fn bench(c: &mut Criterion) {
    bench_axis(c, Axis::Devices);
    bench_axis(c, Axis::Queues);
    let mut out = format!("scaling: SIMULATED backends, profile rfc-original × {SCALE}, {WORKERS} workers; {}\n\n", machine());
    out.push_str(&summary_table(Axis::Devices));
    out.push('\n');
    out.push_str(&summary_table(Axis::Queues));
    out.push('\n');
    for l in LIMITS.lock().unwrap().iter() {
        out.push_str(l);
        out.push('\n');
    }
    println!("\n{out}");
    if let Some(p) = save("scaling.md", &out) {
        println!("(saved to {})", p.display());
    }
    if !test_mode() {
        if let Some(p) = save("scaling.svg", &svg()) {
            println!("(plot saved to {})", p.display());
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
