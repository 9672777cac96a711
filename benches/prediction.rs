//! The downtime prediction against SIMULATED backends: predicted (before the
//! window opens) beside measured, per topology, side by side in one run.
//!
//! Each round runs one whole switchover per topology with both roles in this
//! process ([`switchover::roles::run_in_process`]) on fresh simulated backends (the
//! CLI's default profile, `rfc-original` × 0.5, 8 workers), and takes from its
//! report the source's prediction (its share, measured on its own backends after
//! its prepare window, plus the destination's estimate from the ready-ack) and the
//! measured downtime. Topologies: `rfc-huge`; `uneven` (nets of 1, 4, 16 and 64
//! queue pairs, blks of 1, 4 and 16 queues, one generic device with steps in
//! both windows); `medium`. The summary gives medians over the rounds of the
//! predicted and measured downtime, of the error (predicted − measured, relative),
//! its range, and each side's predicted and measured blackout window.
//!
//! `cargo bench --bench prediction` (5 rounds; `-- --rounds N` for another count).

mod common;

use switchover::exec::Engine;
use switchover::ids::{Side, Window};
use switchover::roles::{run_in_process, Outcome};
use switchover::topology::Topology;
use switchover_sim::{SimConfig, SimRole};

use common::{machine, median, ms, save, table, test_mode};

/// One round's figures (ms): predicted and measured downtime; per side,
/// predicted and measured blackout window.
struct Round {
    predicted: f64,
    measured: f64,
    src: (f64, f64),
    dst: (f64, f64),
}

fn round(topo: &Topology) -> Option<Round> {
    let cfg = SimConfig::new(topo.clone());
    let (src, dst) = (SimRole::new(&cfg, Side::Source), SimRole::new(&cfg, Side::Destination));
    let rep = run_in_process(&src.setup, &dst.setup, &mut Engine::new(cfg.workers), &mut Engine::new(cfg.workers));
    if rep.outcome != Outcome::Completed {
        eprintln!("{}: {}", topo.name(), rep.outcome.name());
        return None;
    }
    let p = rep.prediction.as_ref()?;
    let d = rep.destination_prediction.as_ref()?;
    let measured = |side| rep.runs.iter().find(|r| r.side == side && r.window == Window::Blackout).map(|r| ms(r.wall));
    Some(Round {
        predicted: ms(p.downtime()?),
        measured: ms(rep.downtime),
        src: (ms(p.window.duration), measured(Side::Source)?),
        dst: (ms(d.window.duration), measured(Side::Destination)?),
    })
}

fn main() {
    if common::list_mode() {
        return;
    }
    let rounds: usize =
        std::env::args().skip_while(|a| a != "--rounds").nth(1).and_then(|n| n.parse().ok()).unwrap_or(if test_mode() { 1 } else { 5 });
    let topologies = [
        Topology::preset("rfc-huge").expect("preset"),
        Topology::preset("uneven").expect("preset"),
        Topology::preset("medium").expect("preset"),
    ];
    let mut all: Vec<Vec<Round>> = topologies.iter().map(|_| Vec::new()).collect();
    // Round after round, every topology once per round.
    for _ in 0..rounds {
        for (t, v) in topologies.iter().zip(all.iter_mut()) {
            v.extend(round(t));
        }
    }
    let f = |x: f64| format!("{x:.2}");
    let rows: Vec<Vec<String>> = topologies
        .iter()
        .zip(&all)
        .map(|(t, v)| {
            let col = |g: &dyn Fn(&Round) -> f64| median(&v.iter().map(g).collect::<Vec<_>>()).unwrap_or(f64::NAN);
            let errs: Vec<f64> = v.iter().map(|r| (r.predicted - r.measured) / r.measured * 100.0).collect();
            let (lo, hi) = errs.iter().fold((f64::MAX, f64::MIN), |(a, b), &e| (a.min(e), b.max(e)));
            vec![
                t.name().to_string(),
                v.len().to_string(),
                f(col(&|r| r.predicted)),
                f(col(&|r| r.measured)),
                format!("{:+.1} %", median(&errs).unwrap_or(f64::NAN)),
                format!("{lo:+.1} … {hi:+.1} %"),
                format!("{} / {}", f(col(&|r| r.src.0)), f(col(&|r| r.src.1))),
                format!("{} / {}", f(col(&|r| r.dst.0)), f(col(&|r| r.dst.1))),
            ]
        })
        .collect();
    let mut out = format!(
        "prediction (SIMULATED backends, profile rfc-original × 0.5, 8 workers + caller), medians over rounds, one run; {}\n\n",
        machine()
    );
    out.push_str(&table(
        &[
            "topology",
            "rounds",
            "predicted downtime ms",
            "measured downtime ms",
            "error",
            "error range",
            "src blackout ms predicted / measured",
            "dst blackout ms predicted / measured",
        ],
        &rows,
    ));
    println!("\n{out}");
    if let Some(p) = save("prediction.md", &out) {
        println!("(saved to {})", p.display());
    }
}
