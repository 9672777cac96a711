//! Downtime of `serial`, `pool` and `engine` on the `rfc-huge` topology (16 net × 32
//! queue pairs, 24 blk × 4 queues, 1120 rings), SIMULATED backends, side by side in
//! one benchmark group.
//!
//! One switchover takes about a second of wall time at this scale, so each criterion
//! iteration is one whole switchover and the value criterion analyses is the
//! measured *downtime* (window open → destination running), not the wall time of
//! the iteration (which includes starting simulated backends and the prepare and
//! cleanup windows). Profile: the RFC-derived profile scaled by [`SCALE`].

mod common;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use switchover::topology::Topology;
use switchover_baseline::Strategy;
use switchover_sim::{run, SimConfig};

use common::{machine, ms, save, table, Samples};

/// Profile scale for this benchmark (the CLI default is 0.5; 0.1 keeps a serial
/// switchover under a second).
const SCALE: f64 = 0.1;
const WORKERS: usize = switchover_baseline::DEFAULT_WORKERS;
const GROUP: &str = "topology";
const PARAM: &str = "rfc-huge";

static DOWNTIME: Samples = Samples::new();
static BOUND: Samples = Samples::new();

fn config() -> SimConfig {
    SimConfig::new(Topology::preset("rfc-huge").expect("preset")).scale(SCALE).workers(WORKERS)
}

fn bench(c: &mut Criterion) {
    let cfg = config();
    let mut g = c.benchmark_group(GROUP);
    g.sampling_mode(SamplingMode::Flat).sample_size(10).warm_up_time(Duration::from_millis(1));
    for s in Strategy::ALL {
        // About the wall time of 10 switchovers (a serial one is ~0.8 s here), so
        // criterion takes one switchover per sample without complaint.
        g.measurement_time(Duration::from_secs(if s == Strategy::Serial { 9 } else { 3 }));
        g.bench_with_input(BenchmarkId::new(s.name(), PARAM), &cfg, |b, cfg| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let r = run(cfg, s);
                    assert!(
                        r.outcome.cause().is_none() && r.checks.vring_bases_preserved,
                        "{} switchover completed with every vring base",
                        s.name()
                    );
                    total += r.downtime;
                    DOWNTIME.add(GROUP, s.name(), PARAM, ms(r.downtime));
                    BOUND.add(GROUP, s.name(), PARAM, ms(r.lower_bound.total()));
                }
                total
            })
        });
    }
    g.finish();
    summary();
}

fn summary() {
    let d = |s: Strategy| DOWNTIME.median(GROUP, s.name(), PARAM);
    let lb = |s: Strategy| BOUND.median(GROUP, s.name(), PARAM);
    let mut rows = Vec::new();
    for s in Strategy::ALL {
        rows.push(vec![
            s.name().to_string(),
            DOWNTIME.count(GROUP, s.name(), PARAM).to_string(),
            d(s).map_or("-".into(), |v| format!("{v:.1}")),
            lb(s).map_or("-".into(), |v| format!("{v:.1}")),
        ]);
    }
    let mut out = format!(
        "topology: rfc-huge (16 net × 32 qp, 24 blk × 4 q), SIMULATED backends, profile rfc-original × {SCALE}, {WORKERS} workers; {}\n\n",
        machine()
    );
    out.push_str(&table(&["strategy", "runs", "median downtime ms", "lower bound ms (its own plan and lanes)"], &rows));
    if let (Some(e), Some(se), Some(p), Some(b)) = (d(Strategy::Engine), d(Strategy::Serial), d(Strategy::Pool), lb(Strategy::Engine)) {
        out.push_str(&format!(
            "\nratios (medians, same run): engine/serial = {:.4} (1/{:.0}), engine/pool = {:.3} (1/{:.1}), engine/lower-bound = {:.2}, pool/serial = {:.3}\n",
            e / se,
            se / e,
            e / p,
            p / e,
            e / b,
            p / se
        ));
    }
    println!("\n{out}");
    if let Some(p) = save("topology.md", &out) {
        println!("(saved to {})", p.display());
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
