//! The engine's own cost per step, with steps that do nothing.
//!
//! Plans of 100, 1 000 and 10 000 steps shaped like the vhost recipes: per device,
//! one device-wide step fans out to per-ring chains of two steps, which join in one
//! device-wide step (footprints: the device, then each ring). Every step's action
//! does the same nothing (an atomic increment) in all executors, on the same DAG:
//!
//! * `sequential` — a plain loop over the steps in topological (id) order, the floor;
//! * `rayon-dag` — a straightforward `rayon::scope` DAG executor written here: atomic
//!   predecessor counters, each successor spawned when its last predecessor ends;
//! * `engine-Nw-cost1us` — `Engine::run` with N workers plus the caller lane (N =
//!   cores − 1, so lanes = cores, like rayon's default pool; and 0, the caller lane
//!   alone) on the plan whose steps declare 1 µs of work: the device-wide heads
//!   have the longest remaining paths, so the engine takes them first
//!   (breadth-first);
//! * `engine-Nw-cost0` — the same plan with steps that declare zero cost: every
//!   remaining path is equal, so the engine takes steps in id order (depth-first,
//!   one device after another).
//!
//! The declared cost only changes the engine's priorities; the baselines ignore
//! it, so both engine variants are compared with the same `sequential` and
//! `rayon-dag` figures. Every engine run also builds its report (a record per
//! step, with start and end) and the steps' outcomes, which the baselines do not.
//!
//! Two measurements, both printed at the end: criterion's (each executor in turn),
//! and a side-by-side pass that runs every executor once per round, round after
//! round, so that a machine shared with other work slows them alike; the ratios
//! are medians over the rounds of that pass.

mod common;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchover::exec::{Completion, Engine, Progress, StepActions};
use switchover::ids::{DeviceId, Side, StepId, Window};
use switchover::plan::{Plan, PlanBuilder, StepSpec};
use switchover::resource::Resource;
use switchover::step::{Step, StepKind};
use switchover::topology::Topology;

use common::{machine, save, table, Samples};

/// Rings per device in the synthetic plans (as a net device with 2 queue pairs).
const RINGS: u32 = 4;
/// Steps per device: fan-out head, two per ring, join.
const PER_DEVICE: usize = 2 + 2 * RINGS as usize;
const SIZES: [usize; 3] = [100, 1_000, 10_000];
const GROUP: &str = "overhead";
/// The side-by-side pass's samples.
const SIDE: &str = "side-by-side";

static SAMPLES: Samples = Samples::new();

/// What every step of a plan declares as its cost (it only changes the
/// engine's priorities).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Declared {
    /// 1 µs: the device-wide heads first (longest remaining paths).
    OneMicro,
    /// Zero: id order.
    Zero,
}

impl Declared {
    const ALL: [Declared; 2] = [Declared::OneMicro, Declared::Zero];

    fn cost(self) -> Duration {
        match self {
            Declared::OneMicro => Duration::from_micros(1),
            Declared::Zero => Duration::ZERO,
        }
    }

    /// Suffix of the benchmark id.
    fn suffix(self) -> &'static str {
        match self {
            Declared::OneMicro => "cost1us",
            Declared::Zero => "cost0",
        }
    }

    /// For the summary.
    fn label(self) -> &'static str {
        match self {
            Declared::OneMicro => "1 µs",
            Declared::Zero => "0",
        }
    }
}

fn engine_name(workers: usize, declared: Declared) -> String {
    format!("engine-{workers}w-{}", declared.suffix())
}

/// A plan of exactly `n` steps (n a multiple of [`PER_DEVICE`]), each declaring
/// `declared` as its cost.
fn synthetic_plan(n: usize, declared: Declared) -> Arc<Plan> {
    assert_eq!(n % PER_DEVICE, 0, "plan size must be a multiple of {PER_DEVICE}");
    let devices = (n / PER_DEVICE) as u32;
    let topo = Arc::new(Topology::builder().name("overhead").net(devices, RINGS / 2).build().expect("topology"));
    let mut b = PlanBuilder::new(topo, Side::Destination);
    let us = declared.cost();
    for d in 0..devices {
        let d = DeviceId(d);
        let dev = Resource::device(d);
        let head = b.add(StepSpec::new(d, StepKind::SetMemTable, Window::Blackout).footprint(&[dev]).cost(us));
        let mut tails = Vec::with_capacity(RINGS as usize);
        for r in 0..RINGS {
            let ring = Resource::vring(d, r);
            let a = b.add(StepSpec::new(d, StepKind::SetVringBase, Window::Blackout).ring(r).footprint(&[ring]).after(&[head]).cost(us));
            let k = b.add(StepSpec::new(d, StepKind::SetVringKick, Window::Blackout).ring(r).footprint(&[ring]).after(&[a]).cost(us));
            tails.push(k);
        }
        b.add(StepSpec::new(d, StepKind::VringEnable, Window::Blackout).footprint(&[dev]).after(&tails).cost(us));
    }
    let plan = b.build().expect("plan");
    assert_eq!(plan.len(), n);
    Arc::new(plan)
}

/// The step "work" all executors do: nothing but count.
#[derive(Default)]
struct Nothing {
    ran: AtomicU64,
}

impl Nothing {
    #[inline]
    fn work(&self, _step: &Step) {
        self.ran.fetch_add(1, Ordering::Relaxed);
    }
}

/// The engine's view of the same work: completes inline.
struct NothingActions(Arc<Nothing>);

impl StepActions for NothingActions {
    fn start(&self, step: &Step, done: Completion) {
        self.0.work(step);
        done.complete(Ok(()));
    }
}

fn sequential(plan: &Plan, w: &Nothing) {
    for s in plan.steps() {
        w.work(s);
    }
}

/// A straightforward DAG executor on a rayon scope.
fn rayon_dag(plan: &Plan, w: &Nothing) {
    struct Ctx<'a> {
        plan: &'a Plan,
        w: &'a Nothing,
        remaining: Vec<AtomicU32>,
    }
    fn run_node<'s>(sc: &rayon::Scope<'s>, ctx: &'s Ctx<'s>, id: StepId) {
        ctx.w.work(ctx.plan.step(id));
        for &s in ctx.plan.succs(id) {
            if ctx.remaining[s.0 as usize].fetch_sub(1, Ordering::AcqRel) == 1 {
                sc.spawn(move |sc| run_node(sc, ctx, s));
            }
        }
    }
    let remaining: Vec<AtomicU32> = plan.steps().iter().map(|s| AtomicU32::new(plan.preds(s.id).len() as u32)).collect();
    let ctx = Ctx { plan, w, remaining };
    let ctx = &ctx;
    rayon::scope(|sc| {
        for s in plan.steps() {
            if plan.preds(s.id).is_empty() {
                let id = s.id;
                sc.spawn(move |sc| run_node(sc, ctx, id));
            }
        }
    });
}

fn record(name: &str, n: usize, total: Duration, iters: u64) {
    SAMPLES.add(GROUP, name, &n.to_string(), total.as_nanos() as f64 / iters as f64 / n as f64);
}

fn bench(c: &mut Criterion) {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let engine_workers: Vec<usize> = {
        let mut v = vec![cores.saturating_sub(1), 0];
        v.dedup();
        v
    };
    // Start rayon's global pool before measuring.
    rayon::scope(|_| {});
    let mut g = c.benchmark_group(GROUP);
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for n in SIZES {
        // The baselines ignore the declared cost: one plan serves both.
        let plans: Vec<(Declared, Arc<Plan>)> = Declared::ALL.iter().map(|&d| (d, synthetic_plan(n, d))).collect();
        let plan = &plans[0].1;
        g.throughput(Throughput::Elements(n as u64));
        let w = Nothing::default();
        g.bench_with_input(BenchmarkId::new("sequential", n), plan, |b, plan| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    sequential(plan, &w);
                }
                let e = t.elapsed();
                record("sequential", n, e, iters);
                e
            })
        });
        g.bench_with_input(BenchmarkId::new("rayon-dag", n), plan, |b, plan| {
            b.iter_custom(|iters| {
                let before = w.ran.load(Ordering::Relaxed);
                let t = Instant::now();
                for _ in 0..iters {
                    rayon_dag(plan, &w);
                }
                let e = t.elapsed();
                assert_eq!(w.ran.load(Ordering::Relaxed) - before, iters * n as u64, "rayon-dag ran every step");
                record("rayon-dag", n, e, iters);
                e
            })
        });
        for (declared, plan) in &plans {
            for &workers in &engine_workers {
                let mut engine = Engine::new(workers);
                let nothing = Arc::new(Nothing::default());
                let actions: Arc<dyn StepActions> = Arc::new(NothingActions(nothing.clone()));
                let name = engine_name(workers, *declared);
                g.bench_with_input(BenchmarkId::new(&name, n), plan, |b, plan| {
                    b.iter_custom(|iters| {
                        let before = nothing.ran.load(Ordering::Relaxed);
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let mut progress = Progress::new(plan);
                            let t = Instant::now();
                            let r = engine.run(plan, Window::Blackout, actions.clone(), &mut progress);
                            total += t.elapsed();
                            assert!(r.ok() && r.records.len() == n, "engine ran every step");
                        }
                        assert_eq!(nothing.ran.load(Ordering::Relaxed) - before, iters * n as u64, "engine ran every action once");
                        record(&name, n, total, iters);
                        total
                    })
                });
            }
        }
    }
    g.finish();
    side_by_side(&engine_workers);
    summary(&engine_workers, cores);
}

/// Rounds of the side-by-side pass per plan size.
fn rounds(n: usize) -> usize {
    if common::test_mode() || common::list_mode() {
        return 1;
    }
    match n {
        0..=100 => 2000,
        101..=1000 => 600,
        _ => 200,
    }
}

/// Whether criterion's filter (a positional argument, e.g. `10000`) selects plans of `n` steps.
fn selected(n: usize) -> bool {
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    filters.is_empty() || filters.iter().any(|f| format!("{GROUP}/rayon-dag/{n}").contains(f.as_str()))
}

/// An engine variant of the side-by-side pass: its name, plan, engine and actions.
type EngineVariant = (String, Arc<Plan>, Engine, Arc<dyn StepActions>);

/// Every executor once per round, round after round (see the module docs).
fn side_by_side(engine_workers: &[usize]) {
    for n in SIZES.into_iter().filter(|&n| selected(n)) {
        let plans: Vec<(Declared, Arc<Plan>)> = Declared::ALL.iter().map(|&d| (d, synthetic_plan(n, d))).collect();
        let w = Nothing::default();
        let mut engines: Vec<EngineVariant> = Vec::new();
        for (d, plan) in &plans {
            for &workers in engine_workers {
                let actions: Arc<dyn StepActions> = Arc::new(NothingActions(Arc::new(Nothing::default())));
                engines.push((engine_name(workers, *d), plan.clone(), Engine::new(workers), actions));
            }
        }
        let rayon_plan = &plans[0].1;
        for _ in 0..rounds(n) {
            let t = Instant::now();
            rayon_dag(rayon_plan, &w);
            SAMPLES.add(SIDE, "rayon-dag", &n.to_string(), t.elapsed().as_nanos() as f64 / n as f64);
            for (name, plan, engine, actions) in &mut engines {
                let mut progress = Progress::new(plan);
                let t = Instant::now();
                let r = engine.run(plan, Window::Blackout, actions.clone(), &mut progress);
                let e = t.elapsed();
                assert!(r.ok() && r.records.len() == n, "engine ran every step");
                SAMPLES.add(SIDE, name, &n.to_string(), e.as_nanos() as f64 / n as f64);
            }
        }
    }
}

fn fmt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.prec$}"))
}

fn summary(engine_workers: &[usize], cores: usize) {
    let mut engines: Vec<(String, String)> = Vec::new();
    for d in Declared::ALL {
        for &w in engine_workers {
            engines.push((engine_name(w, d), format!("engine-{w}w ({})", d.label())));
        }
    }
    let mut out = format!(
        "overhead: do-nothing steps, median ns per step, one run; {} ({cores} lanes for rayon and engine-{}w)\n",
        machine(),
        engine_workers[0]
    );
    for (group, title) in [(SIDE, "side by side (every executor once per round)"), (GROUP, "criterion (each executor in turn)")] {
        let med = |name: &str, n: usize| SAMPLES.median(group, name, &n.to_string());
        out.push_str(&format!("\n{title}:\n\n"));
        let mut header: Vec<String> = vec!["steps".into(), "sequential".into(), "rayon-dag".into()];
        header.extend(engines.iter().map(|(_, l)| l.clone()));
        let rows: Vec<Vec<String>> = SIZES
            .iter()
            .map(|&n| {
                let mut row = vec![n.to_string(), fmt(SAMPLES.median(GROUP, "sequential", &n.to_string()), 0), fmt(med("rayon-dag", n), 0)];
                row.extend(engines.iter().map(|(name, _)| fmt(med(name, n), 0)));
                row
            })
            .collect();
        let hdr: Vec<&str> = header.iter().map(String::as_str).collect();
        out.push_str(&table(&hdr, &rows));
        let mut header: Vec<String> = vec!["steps".into()];
        header.extend(engines.iter().map(|(_, l)| format!("{l} / rayon")));
        let rows: Vec<Vec<String>> = SIZES
            .iter()
            .map(|&n| {
                let r = med("rayon-dag", n);
                let mut row = vec![n.to_string()];
                row.extend(engines.iter().map(|(name, _)| match (med(name, n), r) {
                    (Some(e), Some(r)) => format!("{:.2}", e / r),
                    _ => "-".into(),
                }));
                row
            })
            .collect();
        let hdr: Vec<&str> = header.iter().map(String::as_str).collect();
        out.push_str("\nratios to rayon-dag (medians, same run):\n\n");
        out.push_str(&table(&hdr, &rows));
    }
    let med = |name: &str, n: usize| SAMPLES.median(SIDE, name, &n.to_string());
    if let Some(r) = med("rayon-dag", 10_000) {
        for (name, _) in &engines {
            if let Some(e) = med(name, 10_000) {
                let verdict = if e <= r { "at or below" } else { "ABOVE" };
                out.push_str(&format!("\n{name} at 10 000 steps, side by side: {e:.0} ns/step, {:.2}× rayon-dag ({:+.0} ns/step), {verdict} the rayon baseline", e / r, e - r));
            }
        }
    }
    out.push('\n');
    println!("\n{out}");
    if let Some(p) = save("overhead.md", &out) {
        println!("(saved to {})", p.display());
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
