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
