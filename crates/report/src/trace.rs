//! The run as a Chrome trace-event JSON document, which opens in Perfetto
//! (<https://ui.perfetto.dev>, "Open trace file") and `chrome://tracing`.
//!
//! The same spans as the [timeline picture](crate::timeline):
//!
//! * one process per side (`pid` 1 = source, 2 = destination), named with the
//!   strategy and SIMULATED or REAL;
//! * one thread per lane (`tid` = lane + 1: `tid` 1 is the caller lane, `tid` 2 is
//!   worker 1, …) and one per backend control channel (`tid` 1000 and up, in device
//!   name order), named by metadata events (`"ph":"M"`);
//! * one complete event (`"ph":"X"`) per step, named by its step kind, with
//!   `cat` = device kind and `args` = step id, device, ring, window, lane, outcome,
//!   whether it is a rollback step or on the critical path, and its start and end
//!   in µs from the window's opening (`start_us`, `end_us`: the recorded times);
//!   a blocking step lies on its lane from start to end; a request on a control
//!   channel lies on the channel's thread from when the channel began serving it
//!   to its reply (so slices on one thread never overlap), with the lane that sent
//!   it in `args.lane`;
//! * instant events (`"ph":"i"`, global scope) where the window opens and closes.
//!
//! `ts` and `dur` are in µs (with ns precision). Trace viewers want `ts ≥ 0`, so
//! time 0 of the trace is the first step's start: `otherData.window_opened_ts_us`
//! gives the window's opening on that scale.
//!
//! The document is built with `serde_json` directly: the format is a flat list of
//! small objects, and the spans come from the recorded run rather than from live
//! `tracing` spans, so a tracing-subscriber layer would add nothing.
//!
//! # Examples
//!
//! ```
//! use switchover_baseline::timed_steps;
//! use switchover_sim::{run, SimConfig};
//! use switchover_baseline::Strategy;
//! use switchover::topology::Topology;
//! use switchover_report::trace::chrome_trace;
//! let r = run(&SimConfig::new(Topology::preset("small").unwrap()).scale(0.05), Strategy::Engine);
//! let steps = timed_steps(&r);
//! let doc = chrome_trace(&r);
//! let events = doc["traceEvents"].as_array().unwrap();
//! let spans = events.iter().filter(|e| e["ph"] == "X").count();
//! assert_eq!(spans, steps.len());
//! assert_eq!(doc["otherData"]["simulated"], true);
//! ```

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::timeline::step_id;
use crate::{critical_path, own_times};
use switchover::ids::Side;
use switchover::step::Server;
use switchover_baseline::TimedStep;
use switchover_baseline::{Strategy, StrategyRun};

/// `tid` of the first control-channel thread.
///
/// ```
/// use switchover_baseline::timed_steps;
/// use switchover_sim::{run, SimConfig};
/// use switchover_baseline::Strategy;
/// use switchover::topology::Topology;
/// use switchover_report::trace::{chrome_trace, CHANNEL_TID_BASE};
/// let r = run(&SimConfig::new(Topology::preset("small").unwrap()).scale(0.02), Strategy::Engine);
/// let steps = timed_steps(&r);
/// let doc = chrome_trace(&r);
/// let on_channels = doc["traceEvents"]
///     .as_array()
///     .unwrap()
///     .iter()
///     .filter(|e| e["ph"] == "X" && e["tid"].as_u64().unwrap() >= u64::from(CHANNEL_TID_BASE))
///     .count();
/// assert_eq!(on_channels, steps.iter().filter(|s| s.split).count());
/// ```
pub const CHANNEL_TID_BASE: u32 = 1000;

fn pid(side: Side) -> u32 {
    match side {
        Side::Source => 1,
        Side::Destination => 2,
    }
}

fn on_channel(s: &TimedStep) -> bool {
    s.split && matches!(s.server, Some(Server::Channel(_)))
}

fn us(ns: i64) -> f64 {
    ns as f64 / 1e3
}

fn name_key(name: &str) -> (String, u64) {
    let split = name.find(|c: char| c.is_ascii_digit()).unwrap_or(name.len());
    (name[..split].to_string(), name[split..].parse().unwrap_or(0))
}

/// The Chrome trace-event document of `run` (see the module docs).
///
/// ```
/// use switchover_sim::{run, SimConfig};
/// use switchover_baseline::Strategy;
/// use switchover::topology::Topology;
/// use switchover_report::trace::chrome_trace;
/// let r = run(&SimConfig::new(Topology::preset("small").unwrap()).scale(0.02), Strategy::Engine);
/// let doc = chrome_trace(&r);
/// let events = doc["traceEvents"].as_array().unwrap();
/// // Trace viewers want no negative times; prepare steps still come before the window opens.
/// assert!(events.iter().filter(|e| e["ph"] == "X").all(|e| e["ts"].as_f64().unwrap() >= 0.0));
/// assert_eq!(events.iter().filter(|e| e["ph"] == "i").count(), 2); // window opens, window closes
/// ```
pub fn chrome_trace(run: &StrategyRun) -> Value {
    let steps = &switchover_baseline::timed_steps(run);
    let own = own_times(steps);
    let mut on_path = vec![false; steps.len()];
    for i in critical_path(steps) {
        on_path[i] = true;
    }
    let origin = steps.iter().map(|s| s.start_ns).min().unwrap_or(0).min(0);
    let close = run.downtime.as_nanos() as i64;
    let label = if run.simulated { "SIMULATED" } else { "REAL" };
    let mut events: Vec<Value> = Vec::with_capacity(steps.len() + 64);

    // Threads: lanes, then channels per side.
    let mut channels: BTreeMap<Side, Vec<(String, u64, String)>> = BTreeMap::new();
    for s in steps.iter().filter(|s| on_channel(s)) {
        let (k, n) = name_key(&s.device);
        channels.entry(s.side).or_default().push((k, n, s.device.clone()));
    }
    let mut chan_tid: BTreeMap<(Side, String), u32> = BTreeMap::new();
    for (side, list) in channels.iter_mut() {
        list.sort();
        list.dedup();
        for (i, (_, _, d)) in list.iter().enumerate() {
            chan_tid.insert((*side, d.clone()), CHANNEL_TID_BASE + i as u32);
        }
    }
    for side in [Side::Source, Side::Destination] {
        if !steps.iter().any(|s| s.side == side) {
            continue;
        }
        let p = pid(side);
        let pname = match side {
            Side::Source => "source",
            Side::Destination => "destination",
        };
        events.push(json!({"ph": "M", "name": "process_name", "pid": p, "tid": 0,
            "args": {"name": format!("{pname} ({label} {} run)", run.strategy.name())}}));
        events.push(json!({"ph": "M", "name": "process_sort_index", "pid": p, "tid": 0, "args": {"sort_index": p}}));
        let mut lanes: Vec<u16> = steps.iter().filter(|s| s.side == side).map(|s| s.lane).collect();
        if run.strategy == Strategy::Engine {
            lanes.extend(0..run.lanes as u16);
        }
        lanes.sort_unstable();
        lanes.dedup();
        for l in lanes {
            let tid = u32::from(l) + 1;
            let name = if l == 0 { "caller lane".to_string() } else { format!("worker {l}") };
            events.push(json!({"ph": "M", "name": "thread_name", "pid": p, "tid": tid, "args": {"name": name}}));
            events.push(json!({"ph": "M", "name": "thread_sort_index", "pid": p, "tid": tid, "args": {"sort_index": tid}}));
        }
        for ((s, dev), tid) in &chan_tid {
            if *s != side {
                continue;
            }
            events
                .push(json!({"ph": "M", "name": "thread_name", "pid": p, "tid": tid, "args": {"name": format!("{dev} control channel")}}));
            events.push(json!({"ph": "M", "name": "thread_sort_index", "pid": p, "tid": tid, "args": {"sort_index": tid}}));
        }
    }

    // One complete event per step.
    for (i, s) in steps.iter().enumerate() {
        let (start, tid) =
            if on_channel(s) { (s.end_ns - own[i], chan_tid[&(s.side, s.device.clone())]) } else { (s.start_ns, u32::from(s.lane) + 1) };
        let name = match (s.rollback, s.fence) {
            (true, _) => format!("{} (rollback)", s.step),
            (_, true) => format!("{} (fence)", s.step),
            _ => s.step.clone(),
        };
        events.push(json!({
            "ph": "X",
            "name": name,
            "cat": s.device_kind,
            "pid": pid(s.side),
            "tid": tid,
            "ts": us(start - origin),
            "dur": us(s.end_ns - start),
            "args": {
                "step": step_id(s),
                "device": s.device,
                "ring": s.ring,
                "window": s.window.name(),
                "lane": s.lane,
                "outcome": s.outcome.name(),
                "rollback": s.rollback,
                "fence": s.fence,
                "critical_path": on_path[i],
                "start_us": us(s.start_ns),
                "end_us": us(s.end_ns),
            },
        }));
    }

    // The window's opening and closing.
    for (t, name) in [(0, "window opens (source stops)"), (close, "window closes (destination runs)")] {
        events.push(json!({"ph": "i", "s": "g", "name": name, "pid": 1, "tid": 1, "ts": us(t - origin)}));
    }

    json!({
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "simulated": run.simulated,
            "strategy": run.strategy.name(),
            "outcome": run.outcome.name(),
            "downtime_ms": close as f64 / 1e6,
            "window_opened_ts_us": us(-origin),
            "window_closed_ts_us": us(close - origin),
        },
    })
}

/// [`chrome_trace`] as compact JSON text.
///
/// ```
/// use switchover_sim::{run, SimConfig};
/// use switchover_baseline::Strategy;
/// use switchover::topology::Topology;
/// let r = run(&SimConfig::new(Topology::preset("single-blk").unwrap()).scale(0.05), Strategy::Engine);
/// let text = switchover_report::trace::to_string(&r);
/// assert!(text.contains("\"ph\":\"X\""));
/// ```
pub fn to_string(run: &StrategyRun) -> String {
    serde_json::to_string(&chrome_trace(run)).expect("JSON of plain data")
}
