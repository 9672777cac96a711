//! The engine's own cost per step, with steps that do nothing.
//!
//! Plans of 100, 1 000 and 10 000 steps shaped like the vhost recipes: per device,
//! one device-wide step fans out to per-ring chains of two steps, which join in one
//! device-wide step (footprints: the device, then each ring). Every step's action
//! does the same nothing (an atomic increment) in all three executors:
//!
//! * `sequential` — a plain loop over the steps in topological (id) order, the floor;
//! * `rayon-dag` — a straightforward `rayon::scope` DAG executor written here: atomic
//!   predecessor counters, each successor spawned when its last predecessor ends;
//! * `engine-Nw` — `Engine::run` with N workers plus the caller lane (N = cores − 1,
//!   so lanes = cores, like rayon's default pool; and 0, the caller lane alone).
//!
//! Reported as time per step (criterion `Throughput::Elements`); the summary printed
//! at the end gives ns/step of each executor and the ratios, all from this run.

mod common;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchover::exec::{Completion, Engine, Progress, StepActions};
use switchover::plan::{Plan, PlanBuilder, StepSpec};
use switchover::resource::Resource;
use switchover::step::{Side, Step, StepId, StepKind, Window};
use switchover::topology::{DeviceId, Topology};

use common::{machine, save, table, Samples};

/// Rings per device in the synthetic plans (as a net device with 2 queue pairs).
const RINGS: u32 = 4;
/// Steps per device: fan-out head, two per ring, join.
const PER_DEVICE: usize = 2 + 2 * RINGS as usize;
const SIZES: [usize; 3] = [100, 1_000, 10_000];
const GROUP: &str = "overhead";

static SAMPLES: Samples = Samples::new();

/// A plan of exactly `n` steps (n a multiple of [`PER_DEVICE`]).
fn synthetic_plan(n: usize) -> Arc<Plan> {
    assert_eq!(
        n % PER_DEVICE,
        0,
        "plan size must be a multiple of {PER_DEVICE}"
    );
    let devices = (n / PER_DEVICE) as u32;
    let topo = Arc::new(
        Topology::builder()
            .name("overhead")
            .net(devices, RINGS / 2)
            .build()
            .expect("topology"),
    );
    let mut b = PlanBuilder::new(topo, Side::Destination);
    let us = Duration::from_micros(1);
    for d in 0..devices {
        let d = DeviceId(d);
        let dev = Resource::device(d);
        let head = b.add(
            StepSpec::new(d, StepKind::SetMemTable, Window::Blackout)
                .footprint(&[dev])
                .cost(us),
        );
        let mut tails = Vec::with_capacity(RINGS as usize);
        for r in 0..RINGS {
            let ring = Resource::vring(d, r);
            let a = b.add(
                StepSpec::new(d, StepKind::SetVringBase, Window::Blackout)
                    .ring(r)
                    .footprint(&[ring])
                    .after(&[head])
                    .cost(us),
            );
            let k = b.add(
                StepSpec::new(d, StepKind::SetVringKick, Window::Blackout)
                    .ring(r)
                    .footprint(&[ring])
                    .after(&[a])
                    .cost(us),
            );
            tails.push(k);
        }
        b.add(
            StepSpec::new(d, StepKind::VringEnable, Window::Blackout)
                .footprint(&[dev])
                .after(&tails)
                .cost(us),
        );
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
    let remaining: Vec<AtomicU32> = plan
        .steps()
        .iter()
        .map(|s| AtomicU32::new(plan.preds(s.id).len() as u32))
        .collect();
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
    SAMPLES.add(
        GROUP,
        name,
        &n.to_string(),
        total.as_nanos() as f64 / iters as f64 / n as f64,
    );
}

fn bench(c: &mut Criterion) {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let engine_workers: Vec<usize> = {
        let mut v = vec![cores.saturating_sub(1), 0];
        v.dedup();
        v
    };
    // Start rayon's global pool before measuring.
    rayon::scope(|_| {});
    let mut g = c.benchmark_group(GROUP);
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in SIZES {
        let plan = synthetic_plan(n);
        g.throughput(Throughput::Elements(n as u64));
        let w = Nothing::default();
        g.bench_with_input(BenchmarkId::new("sequential", n), &plan, |b, plan| {
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
        g.bench_with_input(BenchmarkId::new("rayon-dag", n), &plan, |b, plan| {
            b.iter_custom(|iters| {
                let before = w.ran.load(Ordering::Relaxed);
                let t = Instant::now();
                for _ in 0..iters {
                    rayon_dag(plan, &w);
                }
                let e = t.elapsed();
                assert_eq!(
                    w.ran.load(Ordering::Relaxed) - before,
                    iters * n as u64,
                    "rayon-dag ran every step"
                );
                record("rayon-dag", n, e, iters);
                e
            })
        });
        for &workers in &engine_workers {
            let engine = Engine::new(workers);
            let nothing = Arc::new(Nothing::default());
            let actions: Arc<dyn StepActions> = Arc::new(NothingActions(nothing.clone()));
            let name = format!("engine-{workers}w");
            g.bench_with_input(BenchmarkId::new(&name, n), &plan, |b, plan| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let mut progress = Progress::new(plan);
                        let t = Instant::now();
                        let r = engine.run(plan, Window::Blackout, actions.clone(), &mut progress);
                        total += t.elapsed();
                        assert!(r.ok() && r.records.len() == n, "engine ran every step");
                    }
                    record(&name, n, total, iters);
                    total
                })
            });
        }
    }
    g.finish();
    summary(&engine_workers, cores);
}

fn summary(engine_workers: &[usize], cores: usize) {
    let mut names = vec!["sequential".to_string(), "rayon-dag".to_string()];
    names.extend(engine_workers.iter().map(|w| format!("engine-{w}w")));
    let mut header: Vec<String> = vec!["steps".into()];
    header.extend(names.iter().map(|n| format!("{n} ns/step")));
    header.push(format!("engine-{}w / rayon-dag", engine_workers[0]));
    let mut rows = Vec::new();
    for n in SIZES {
        let p = n.to_string();
        let mut row = vec![format!("{n}")];
        for name in &names {
            row.push(
                SAMPLES
                    .median(GROUP, name, &p)
                    .map_or("-".into(), |v| format!("{v:.0}")),
            );
        }
        let e = SAMPLES.median(GROUP, &names[2], &p);
        let r = SAMPLES.median(GROUP, "rayon-dag", &p);
        row.push(match (e, r) {
            (Some(e), Some(r)) => format!("{:.2}", e / r),
            _ => "-".into(),
        });
        rows.push(row);
    }
    let hdr: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut out = format!(
        "overhead: do-nothing steps, median ns per step over all criterion iterations, one run; {} ({cores} lanes for rayon and engine-{}w)\n\n",
        machine(),
        engine_workers[0]
    );
    out.push_str(&table(&hdr, &rows));
    if let Some(e) = SAMPLES.median(GROUP, &names[2], "10000") {
        let verdict = if e <= 2000.0 { "within" } else { "ABOVE" };
        out.push_str(&format!(
            "\nengine-{}w at 10 000 steps: {e:.0} ns/step, {verdict} the 2 µs/step target\n",
            engine_workers[0]
        ));
    }
    println!("\n{out}");
    if let Some(p) = save("overhead.md", &out) {
        println!("(saved to {})", p.display());
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
