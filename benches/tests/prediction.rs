//! The downtime prediction against SIMULATED backends: made before the window
//! opens, and its error on `rfc-huge` printed beside the measured downtime.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use switchover::exec::Engine;
use switchover::ids::Side;
use switchover::roles::{run_in_process_with, Deadlines, HookError, Outcome, VmmHooks};
use switchover::topology::Topology;
use switchover_sim::{SimConfig, SimRole};

/// Notes when the source's window opened.
#[derive(Default)]
struct Opened(Mutex<Option<Instant>>);
impl VmmHooks for Opened {
    fn stop_vcpus(&self) -> Result<(), HookError> {
        *self.0.lock().unwrap() = Some(Instant::now());
        Ok(())
    }
}

#[test]
fn the_prediction_is_made_before_the_window_opens() {
    let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.05);
    let (src, dst) = (SimRole::new(&cfg, Side::Source), SimRole::new(&cfg, Side::Destination));
    let opened = Arc::new(Opened::default());
    let src_setup = src.setup.with_hooks(opened.clone());
    let rep = run_in_process_with(&src_setup, &dst.setup, &mut Engine::new(2), &mut Engine::new(2), Deadlines::default());
    assert_eq!(rep.outcome, Outcome::Completed);
    let p = rep.prediction.as_ref().expect("the source predicted its share");
    let stopped = opened.0.lock().unwrap().expect("the window opened");
    assert!(p.made_at < stopped, "predicted before stop_vcpus");
    assert!(p.made_at < rep.window_opened);
    assert!(p.other.is_some(), "the destination's estimate came with its ready-ack");
    let d = rep.destination_prediction.as_ref().expect("the destination predicted its share");
    assert!(d.made_at < rep.window_opened);
    assert!(p.downtime().unwrap() > p.this_side());
    let (predicted, err) = rep.prediction_error().unwrap();
    println!("small (SIMULATED): predicted {predicted:?}, measured {:?}, error {:+.1} %", rep.downtime, err * 100.0);
}

/// Per side: predicted and measured blackout, on rfc-huge (run with `--ignored --nocapture`).
#[test]
#[ignore]
fn explore() {
    let preset = std::env::var("PRESET").unwrap_or("rfc-huge".into());
    let workers: usize = std::env::var("WORKERS").ok().and_then(|w| w.parse().ok()).unwrap_or(8);
    for _ in 0..3 {
        let topo = if preset == "uneven" { uneven() } else { Topology::preset(&preset).unwrap() };
        let cfg = SimConfig::new(topo);
        let (src, dst) = (SimRole::new(&cfg, Side::Source), SimRole::new(&cfg, Side::Destination));
        let rep = run_in_process_with(&src.setup, &dst.setup, &mut Engine::new(workers), &mut Engine::new(workers), Deadlines::default());
        let p = rep.prediction.as_ref().unwrap();
        let d = rep.destination_prediction.as_ref().unwrap();
        let m = |side| rep.runs.iter().find(|r| r.side == side && r.window == switchover::ids::Window::Blackout).map(|r| r.wall).unwrap();
        println!(
            "{preset}: downtime predicted {:?} measured {:?} ({:+.1} %); src blackout {:?} vs {:?}, handoff {:?}; dst blackout {:?} vs {:?}, handoff {:?}; sources src {:?} dst {:?}; engine {:?}",
            p.downtime().unwrap(), rep.downtime, rep.prediction_error().unwrap().1 * 100.0,
            p.window.duration, m(Side::Source), p.handoff, d.window.duration, m(Side::Destination), d.handoff,
            p.window.sources, d.window.sources, p.window.engine
        );
    }
}

/// Gaps between consecutive starts on each lane, per window (`--ignored --nocapture`).
#[test]
#[ignore]
fn gaps() {
    let cfg = SimConfig::new(Topology::preset("rfc-huge").unwrap());
    let (src, dst) = (SimRole::new(&cfg, Side::Source), SimRole::new(&cfg, Side::Destination));
    let rep = run_in_process_with(&src.setup, &dst.setup, &mut Engine::new(8), &mut Engine::new(8), Deadlines::default());
    for r in &rep.runs {
        let mut by_lane: std::collections::HashMap<u16, Vec<u64>> = Default::default();
        for x in &r.records {
            by_lane.entry(x.lane).or_default().push(x.start.as_nanos() as u64);
        }
        let mut gaps = vec![];
        for v in by_lane.values_mut() {
            v.sort();
            gaps.extend(v.windows(2).map(|w| w[1] - w[0]));
        }
        gaps.sort();
        let q = |f: f64| gaps.get(((gaps.len().max(1) - 1) as f64 * f) as usize).copied().unwrap_or(0);
        println!(
            "{:?} {:?}: {} steps, {} lanes used, wall {:?}, gaps p25 {} p50 {} p90 {} ns",
            r.side,
            r.window,
            r.records.len(),
            by_lane.len(),
            r.wall,
            q(0.25),
            q(0.5),
            q(0.9)
        );
        if r.window == switchover::ids::Window::Blackout {
            let mut lanes: Vec<_> = by_lane.iter().map(|(l, v)| (*l, v.len(), v[0] / 1000, v[v.len() - 1] / 1000)).collect();
            lanes.sort();
            let last_end = r.records.iter().map(|x| x.end.as_micros()).max().unwrap_or(0);
            println!("   lanes (lane, steps, first start us, last start us): {lanes:?}; last end {last_end} us");
        }
    }
}

/// Nets of 1 to 64 queue pairs, blks of 1 to 16 queues, a generic device.
fn uneven() -> Topology {
    use std::time::Duration;
    use switchover::ids::Window;
    use switchover::topology::GenericStep;
    let steps = vec![
        GenericStep::new("quiesce", Side::Source, Window::Blackout).cost(Duration::from_micros(800)),
        GenericStep::new("save_fw", Side::Source, Window::Blackout).cost(Duration::from_micros(400)).after("quiesce"),
        GenericStep::new("load_fw", Side::Destination, Window::Blackout).cost(Duration::from_micros(600)),
    ];
    Topology::builder()
        .name("uneven")
        .net(1, 1)
        .net(1, 4)
        .net(1, 16)
        .net(1, 64)
        .blk(1, 1)
        .blk(1, 4)
        .blk(1, 16)
        .generic(1, "gpu", steps)
        .build()
        .unwrap()
}
