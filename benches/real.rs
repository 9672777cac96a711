//! Downtime of `serial`, `pool` and `engine` on REAL components: vhost-user backends
//! (the project's own net and blk backends as child processes, and
//! qemu-storage-daemon for half of the blk devices when it is installed) over Unix
//! sockets, and KVM ioeventfd/irqfd notifiers, through `switchover_testbed::run_strategy`.
//!
//! Each criterion iteration is one whole real switchover on fresh components (backend
//! processes, VMs, guest memory, guest traffic, then the run's checks); the value
//! criterion analyses is the measured downtime, not the wall time of the iteration.
//! A run whose checks fail is counted, reported, and retried.
//!
//! Requirements, checked first; when one is missing the benchmark prints one line
//! saying which and exits successfully (so `cargo bench` and `cargo bench -- --test`
//! pass everywhere):
//!
//! * `/dev/kvm` exists and opens read-write;
//!
//! The rig starts its backend processes as `EXE real __backend …`; here EXE is this
//! benchmark's own executable, whose `main` hands such a command line to the
//! `switchover` command's code (`switchover_cli::main`) before criterion sees it.

mod common;

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode};
use switchover_baseline::Strategy;

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
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return Err(format!("/dev/kvm cannot be opened read-write: {e}"));
    }
    wired::entry()
}

mod wired {
    use std::time::Duration;

    use switchover_baseline::Strategy;
    use switchover_testbed::{run_strategy, BlkBackend, RealConfig};

    /// The real topology of this benchmark: small enough that 3 × ~30 switchovers
    /// (each with its own backend processes and VMs) take well under a minute.
    const NETS: u32 = 4;
    const QUEUE_PAIRS: u32 = 4;
    const BLKS: u32 = 4;
    const QUEUES: u32 = 2;
    const WORKERS: usize = 4;

    struct Real {
        cfg: RealConfig,
    }

    pub fn entry() -> Result<Box<dyn super::RealEntry>, String> {
        let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut cfg = RealConfig::new(me);
        cfg.nets = NETS;
        cfg.queue_pairs = QUEUE_PAIRS;
        cfg.blks = BLKS;
        cfg.queues = QUEUES;
        cfg.blk_backend = BlkBackend::Mixed;
        cfg.workers = WORKERS;
        Ok(Box::new(Real { cfg }))
    }

    impl super::RealEntry for Real {
        fn describe(&self) -> String {
            let c = &self.cfg;
            let blk = if c.qsd.is_some() {
                format!("{} on qemu-storage-daemon, {} on the own blk backend", c.blks.div_ceil(2), c.blks / 2)
            } else {
                "all on the own blk backend (qemu-storage-daemon not installed)".into()
            };
            format!(
                "{} net × {} queue pairs (own net backend), {} blk × {} queues ({blk}), {} rings, KVM ioeventfd/irqfd; {} workers for pool and engine (the engine adds the caller lane)",
                c.nets,
                c.queue_pairs,
                c.blks,
                c.queues,
                c.nets * c.queue_pairs * 2 + c.blks * c.queues,
                c.workers
            )
        }

        fn switchover(&self, strategy: Strategy) -> Result<(Duration, Duration), String> {
            let r = run_strategy(&self.cfg, strategy).map_err(|e| e.to_string())?;
            if let Some(f) = r.run.outcome.cause() {
                return Err(format!("switchover failed: {f}"));
            }
            if !r.checks_ok() {
                return Err(format!(
                    "checks failed: bases preserved {}, post-switchover {:?}, second-disable ioctls {}, double ioctls {}, requests exact {}, missing writes {}, leftover processes {}, leftover dir {}",
                    r.run.checks.vring_bases_preserved,
                    r.post_switchover,
                    r.second_disable_ioctls,
                    r.run.checks.double_ioctls,
                    r.requests_exact(),
                    r.disk.missing.len(),
                    r.leftover_processes.len(),
                    r.leftover_dir
                ));
            }
            Ok((r.run.downtime, r.run.lower_bound.total()))
        }
    }
}

/// Attempts per iteration before the benchmark gives up.
const ATTEMPTS: usize = 3;

static FAILURES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Switchovers per strategy (criterion's samples, one switchover each).
const RUNS: usize = 30;

fn bench(c: &mut Criterion, real: &dyn RealEntry) {
    let mut g = c.benchmark_group(GROUP);
    // One switchover per sample: criterion sizes samples from the returned downtime
    // (a few ms) while the wall time of one iteration is ~0.1–0.3 s (set-up and
    // checks), so a 1 ms target gives one iteration per sample (criterion warns that
    // it cannot finish in 1 ms; that is expected).
    g.sampling_mode(SamplingMode::Flat).sample_size(RUNS).warm_up_time(Duration::from_millis(1)).measurement_time(Duration::from_millis(1));
    for s in Strategy::ALL {
        g.bench_function(BenchmarkId::new(s.name(), "real"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut errors = Vec::new();
                    let (downtime, bound) = loop {
                        match real.switchover(s) {
                            Ok(v) => break v,
                            Err(e) => {
                                eprintln!("real {}: run failed, retrying: {e}", s.name());
                                FAILURES.lock().unwrap().push(format!("{}: {e}", s.name()));
                                errors.push(e);
                                if errors.len() == ATTEMPTS {
                                    panic!("real {} switchover failed {ATTEMPTS} times in a row: {errors:?}", s.name());
                                }
                            }
                        }
                    };
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
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    let rows: Vec<Vec<String>> = Strategy::ALL
        .iter()
        .map(|&s| {
            let v = DOWNTIME.values(GROUP, s.name(), "");
            let min = v.iter().copied().reduce(f64::min);
            let max = v.iter().copied().reduce(f64::max);
            vec![s.name().into(), v.len().to_string(), f(d(s)), f(min), f(max), f(BOUND.median(GROUP, s.name(), ""))]
        })
        .collect();
    let mut out = format!("real: REAL components, {}; {}\n\n", real.describe(), machine());
    out.push_str(&table(&["strategy", "runs", "median downtime ms", "min ms", "max ms", "lower bound ms (its own plan and lanes)"], &rows));
    if let (Some(e), Some(se), Some(p)) = (d(Strategy::Engine), d(Strategy::Serial), d(Strategy::Pool)) {
        out.push_str(&format!(
            "\nratios (medians, same run): engine/serial = {:.3} (1/{:.1}), engine/pool = {:.3} (1/{:.1}), pool/serial = {:.3}\n",
            e / se,
            se / e,
            e / p,
            p / e,
            p / se
        ));
    }
    let failures = FAILURES.lock().unwrap();
    if failures.is_empty() {
        out.push_str("\nfailed runs (retried): none; every run passed its checks\n");
    } else {
        out.push_str(&format!("\nfailed runs (retried): {}; first: {}\n", failures.len(), failures[0]));
    }
    println!("\n{out}");
    if let Some(p) = save("real.md", &out) {
        println!("(saved to {})", p.display());
    }
}

fn main() -> std::process::ExitCode {
    // Started by the rig as a backend process: serve, as `switchover real __backend` does.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("real") {
        return switchover_cli::main(args);
    }
    match entry() {
        Err(reason) => println!("real: skipped: {reason}"),
        Ok(real) => {
            let mut c = Criterion::default().configure_from_args();
            bench(&mut c, &*real);
            c.final_summary();
        }
    }
    std::process::ExitCode::SUCCESS
}
