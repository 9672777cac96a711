//! Downtime of `serial`, `pool` and `engine` on REAL components: vhost-user backends
//! over Unix sockets and KVM ioeventfd/irqfd notifiers.
//!
//! Runs only where `/dev/kvm` exists, the crate is built with its `real` feature, and
//! `switchover::real` exposes an entry point this benchmark can call; otherwise it
//! prints one line saying why and exits successfully (so `cargo bench` and
//! `cargo bench -- --test` pass everywhere).
//!
//! Wiring it: implement [`RealEntry`] for the crate's real runner in [`entry`] (the
//! one place that names `switchover::real`); the benchmark group, the summary and
//! the ratios below need no change.

mod common;

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode};
use switchover::strategy::Strategy;

use common::{machine, ms, save, table, Samples};

const GROUP: &str = "real";

static DOWNTIME: Samples = Samples::new();
static BOUND: Samples = Samples::new();

/// What the benchmark needs from the real components.
trait RealEntry {
    /// A short description of the topology and backends (for the report).
    fn describe(&self) -> String;
    /// One whole switchover with `strategy`: its downtime and the lower bound of
    /// the plans it ran.
    fn switchover(&self, strategy: Strategy) -> Result<(Duration, Duration), String>;
}

/// The real runner, or why there is none.
fn entry() -> Result<Box<dyn RealEntry>, String> {
    if !std::path::Path::new("/dev/kvm").exists() {
        return Err("/dev/kvm does not exist on this machine".into());
    }
    if !cfg!(feature = "real") {
        return Err("switchover was built without its `real` feature".into());
    }
    // Wire here: wrap the crate's real runner (e.g. a `switchover::real` function
    // that runs one strategy on a real side and returns its downtime and bound) in
    // a type implementing `RealEntry` and return it.
    Err(
        "switchover::real exposes no benchmark entry point yet (see benches/real.rs, fn entry)"
            .into(),
    )
}

fn bench(c: &mut Criterion, real: &dyn RealEntry) {
    let mut g = c.benchmark_group(GROUP);
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(5));
    for s in Strategy::ALL {
        g.bench_function(BenchmarkId::new(s.name(), "real"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (downtime, bound) = real
                        .switchover(s)
                        .unwrap_or_else(|e| panic!("real {} switchover failed: {e}", s.name()));
                    DOWNTIME.add(GROUP, s.name(), "", ms(downtime));
                    BOUND.add(GROUP, s.name(), "", ms(bound));
                    total += downtime;
                }
                total
            })
        });
    }
    g.finish();
    let d = |s: Strategy| DOWNTIME.median(GROUP, s.name(), "");
    let rows: Vec<Vec<String>> = Strategy::ALL
        .iter()
        .map(|&s| {
            vec![
                s.name().into(),
                d(s).map_or("-".into(), |v| format!("{v:.2}")),
                BOUND
                    .median(GROUP, s.name(), "")
                    .map_or("-".into(), |v| format!("{v:.2}")),
            ]
        })
        .collect();
    let mut out = format!(
        "real: REAL components, {}; {}\n\n",
        real.describe(),
        machine()
    );
    out.push_str(&table(
        &["strategy", "median downtime ms", "lower bound ms"],
        &rows,
    ));
    if let (Some(e), Some(se), Some(p)) =
        (d(Strategy::Engine), d(Strategy::Serial), d(Strategy::Pool))
    {
        out.push_str(&format!(
            "\nratios (medians, same run): engine/serial = {:.3}, engine/pool = {:.3}\n",
            e / se,
            e / p
        ));
    }
    println!("\n{out}");
    save("real.md", &out);
}

fn main() {
    match entry() {
        Err(reason) => println!("real: skipped: {reason}"),
        Ok(real) => {
            let mut c = Criterion::default().configure_from_args();
            bench(&mut c, &*real);
            c.final_summary();
        }
    }
}
