//! The timeline SVG and the Chrome trace of an engine run: every step of the plan
//! appears exactly once, and the spans match the recorded times.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;
use switchover::ids::{Side, Window};
use switchover::recipe::{build, RecipeOptions};
use switchover::step::Server;
use switchover::topology::Topology;
use switchover_baseline::timed_steps;
use switchover_baseline::TimedStep;
use switchover_baseline::{Strategy, StrategyRun};
use switchover_report::timeline::step_id;
use switchover_report::{breakdown, critical_path, critical_shares, own_times, table, Comparison};
use switchover_sim::{run, Fault, SimConfig};

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("switchover-report-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn engine_run(preset: &str, faults: Vec<Fault>) -> (SimConfig, StrategyRun) {
    let cfg = SimConfig::new(Topology::preset(preset).unwrap()).scale(0.05).workers(3).faults(faults);
    let r = run(&cfg, Strategy::Engine);
    (cfg, r)
}

/// The `data-step` ids of the SVG, each checked to carry a `<title>`.
fn svg_step_ids(text: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(text).expect("the SVG is well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(root.tag_name().namespace(), Some("http://www.w3.org/2000/svg"));
    let width: f64 = root.attribute("width").unwrap().parse().unwrap();
    let mut ids = Vec::new();
    for n in doc.descendants().filter(|n| n.has_attribute("data-step")) {
        assert_eq!(n.tag_name().name(), "rect");
        let title = n.children().find(|c| c.tag_name().name() == "title").expect("every step has a <title>");
        assert!(!title.text().unwrap_or("").is_empty());
        let x: f64 = n.attribute("x").unwrap().parse().unwrap();
        let w: f64 = n.attribute("width").unwrap().parse().unwrap();
        assert!(x >= 0.0 && w > 0.0 && x + w <= width + 1.0, "bar inside the picture: x={x} w={w}");
        ids.push(n.attribute("data-step").unwrap().to_string());
    }
    ids
}

fn plan_ids(cfg: &SimConfig) -> BTreeSet<String> {
    let topo = &cfg.topology;
    let mut ids = BTreeSet::new();
    for side in [Side::Source, Side::Destination] {
        let plan = build(topo, side, &RecipeOptions::engine(), &cfg.profile).unwrap();
        for s in plan.steps() {
            let mut id = format!("{}:{}", side.short(), plan.device_name(s.id));
            if let Some(r) = s.ring {
                id.push_str(&format!(":ring{r}"));
            }
            id.push_str(&format!(":{}", s.kind.name()));
            assert!(ids.insert(id.clone()), "plan step ids are unique: {id}");
        }
    }
    ids
}

fn once_each(ids: &[String]) -> BTreeSet<String> {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for i in ids {
        *count.entry(i).or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "steps drawn more than once: {twice:?}");
    ids.iter().cloned().collect()
}

#[test]
fn svg_has_every_plan_step_exactly_once() {
    let (cfg, r) = engine_run("small", vec![]);
    assert!(r.outcome.cause().is_none());
    let dir = tmp_dir("svg");
    let path = dir.join("t.svg");
    std::fs::write(&path, switchover_report::timeline::svg(&r, "small")).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let ids = once_each(&svg_step_ids(&text));
    assert_eq!(ids, plan_ids(&cfg), "the SVG shows exactly the plan's steps");
    let run_ids: BTreeSet<String> = timed_steps(&r).iter().map(step_id).collect();
    assert_eq!(ids, run_ids);
    // Simulated runs say so in the title.
    let doc = roxmltree::Document::parse(&text).unwrap();
    let title = doc.root_element().children().find(|c| c.tag_name().name() == "title").unwrap();
    assert!(title.text().unwrap().contains("SIMULATED"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn svg_of_a_rolled_back_run_shows_rollback_steps_once() {
    let fault: Fault = "error:get_vring_base:net1:0".parse().unwrap();
    let (_, r) = engine_run("small", vec![fault]);
    assert_eq!(r.outcome.name(), "rolled_back");
    let steps = timed_steps(&r);
    assert!(steps.iter().any(|s| s.rollback));
    let ids = once_each(&svg_step_ids(&switchover_report::timeline::svg(&r, "small")));
    let run_ids: BTreeSet<String> = steps.iter().map(step_id).collect();
    assert_eq!(ids, run_ids);
}

#[test]
fn a_destination_failure_shows_its_fence_and_the_rollback_in_every_view() {
    // The destination's net0 start fails after other rings were kicked: it fences
    // itself (stops what it started, gives the images back), the source rolls back.
    let fault: Fault = "hang:set_vring_kick:net0".parse().unwrap();
    let cfg = SimConfig::new(Topology::preset("small").unwrap())
        .scale(0.05)
        .workers(3)
        .faults(vec![fault])
        .deadline(std::time::Duration::from_millis(150));
    let r = run(&cfg, Strategy::Engine);
    assert_eq!(r.outcome.name(), "rolled_back");
    let steps = timed_steps(&r);
    assert!(steps.iter().any(|s| s.fence && s.side == Side::Destination && s.step == "get_vring_base"));
    assert!(steps.iter().any(|s| s.rollback && s.side == Side::Source));
    assert!(steps.iter().all(|s| !(s.fence && s.rollback)));
    // SVG: every step once, fence and rollback steps marked.
    let text = switchover_report::timeline::svg(&r, "small");
    let ids = once_each(&svg_step_ids(&text));
    assert_eq!(ids, steps.iter().map(step_id).collect::<BTreeSet<_>>());
    assert!(ids.iter().any(|i| i.ends_with(":fence")) && ids.iter().any(|i| i.ends_with(":rollback")));
    assert!(text.contains("fence step (destination)") && text.contains("rollback step (source)"));
    // Trace: the spans say which.
    let doc = switchover_report::trace::chrome_trace(&r);
    let spans: Vec<&Value> = doc["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").collect();
    assert_eq!(spans.iter().filter(|e| e["args"]["fence"] == true).count(), steps.iter().filter(|s| s.fence).count());
    assert!(spans.iter().any(|e| e["name"].as_str().unwrap().ends_with("(fence)")));
    // Table and JSON.
    let cmp = Comparison::simulated(&cfg, vec![r], vec![]);
    let text = table(&cmp);
    assert!(text.contains("engine after the failure") && text.contains("  fence    dst"), "{text}");
    assert!(text.contains("after the failure: dst fence"), "{text}");
    let doc = switchover_report::json(&cmp);
    assert!(doc["strategies"]["engine"]["fence_ms"].as_f64().is_some());
    assert!(doc["strategies"]["engine"]["rollback_ms"].as_f64().is_some());
    assert!(doc["strategies"]["engine"]["steps"].as_array().unwrap().iter().any(|s| s["fence"] == true));
}

#[test]
fn completed_unverified_is_named_in_the_table_and_the_json() {
    let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.05).reply_ack(false);
    let r = run(&cfg, Strategy::Engine);
    assert_eq!(r.outcome.name(), "completed_unverified");
    assert!(timed_steps(&r).iter().any(|s| s.step == "probe"));
    let cmp = Comparison::simulated(&cfg, vec![r], vec![]);
    assert!(table(&cmp).contains("unverified (no REPLY_ACK; probed once after their start): net0, net1, blk0, blk1"));
    let doc = switchover_report::json(&cmp);
    assert_eq!(doc["strategies"]["engine"]["outcome"], "completed_unverified");
    assert_eq!(doc["strategies"]["engine"]["unverified_devices"].as_array().unwrap().len(), 4);
}

fn is_channel(s: &TimedStep) -> bool {
    s.split && matches!(s.server, Some(Server::Channel(_)))
}

#[test]
fn trace_has_one_span_per_step_matching_the_recorded_times() {
    let (_, r) = engine_run("small", vec![]);
    let dir = tmp_dir("trace");
    let path = dir.join("t.json");
    std::fs::write(&path, switchover_report::trace::to_string(&r)).unwrap();
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    std::fs::remove_dir_all(dir).ok();
    let events = doc["traceEvents"].as_array().unwrap();
    let opened = doc["otherData"]["window_opened_ts_us"].as_f64().unwrap();
    let closed = doc["otherData"]["window_closed_ts_us"].as_f64().unwrap();
    assert_eq!(doc["otherData"]["simulated"], Value::Bool(true));
    assert!((closed - opened - r.downtime.as_nanos() as f64 / 1e3).abs() < 0.01);

    // Named processes and threads.
    let mut named: BTreeSet<(u64, u64)> = BTreeSet::new();
    for e in events.iter().filter(|e| e["ph"] == "M" && e["name"] == "thread_name") {
        assert!(!e["args"]["name"].as_str().unwrap().is_empty());
        named.insert((e["pid"].as_u64().unwrap(), e["tid"].as_u64().unwrap()));
    }
    let procs: Vec<&str> =
        events.iter().filter(|e| e["ph"] == "M" && e["name"] == "process_name").map(|e| e["args"]["name"].as_str().unwrap()).collect();
    assert_eq!(procs.len(), 2);
    assert!(procs.iter().all(|p| p.contains("SIMULATED")));

    // Window marks.
    let instants: Vec<f64> = events.iter().filter(|e| e["ph"] == "i").map(|e| e["ts"].as_f64().unwrap()).collect();
    assert_eq!(instants.len(), 2);
    assert!((instants[0] - opened).abs() < 1e-6 && (instants[1] - closed).abs() < 1e-6);

    // One X event per step.
    let steps = timed_steps(&r);
    let by_id: BTreeMap<String, &TimedStep> = steps.iter().map(|s| (step_id(s), s)).collect();
    assert_eq!(by_id.len(), steps.len());
    let spans: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X").collect();
    assert_eq!(spans.len(), steps.len());
    let mut seen = BTreeSet::new();
    let mut per_thread: BTreeMap<(u64, u64), Vec<(f64, f64)>> = BTreeMap::new();
    let close = 1e-3 + 1e-9; // µs: ns precision, rounding of f64
    for e in spans {
        let id = e["args"]["step"].as_str().unwrap().to_string();
        let s = by_id.get(&id).unwrap_or_else(|| panic!("span {id} is not a step of the run"));
        assert!(seen.insert(id.clone()), "two spans for {id}");
        assert_eq!(e["name"], Value::String(s.step.clone()));
        assert_eq!(e["cat"], Value::String(s.device_kind.clone()));
        assert_eq!(e["pid"].as_u64().unwrap(), if s.side == Side::Source { 1 } else { 2 });
        assert_eq!(e["args"]["window"], Value::String(s.window.name().into()));
        assert_eq!(e["args"]["device"], Value::String(s.device.clone()));
        assert_eq!(e["args"]["ring"].as_u64(), s.ring.map(u64::from));
        let (ts, dur) = (e["ts"].as_f64().unwrap(), e["dur"].as_f64().unwrap());
        assert!(ts >= 0.0 && dur >= 0.0);
        let start_us = s.start_ns as f64 / 1e3;
        let end_us = s.end_ns as f64 / 1e3;
        assert!((e["args"]["start_us"].as_f64().unwrap() - start_us).abs() < close);
        assert!((e["args"]["end_us"].as_f64().unwrap() - end_us).abs() < close);
        // The span ends at the step's end; it starts at its start (lane work) or
        // when its channel began serving it (a request), never before its send.
        assert!((ts + dur - opened - end_us).abs() < 2.0 * close, "{id}: span end");
        if is_channel(s) {
            assert!(ts - opened >= start_us - close, "{id}: served before it was sent");
        } else {
            assert!((ts - opened - start_us).abs() < close, "{id}: span start");
            assert_eq!(e["tid"].as_u64().unwrap(), u64::from(s.lane) + 1);
        }
        let key = (e["pid"].as_u64().unwrap(), e["tid"].as_u64().unwrap());
        assert!(named.contains(&key), "thread {key:?} has a name");
        per_thread.entry(key).or_default().push((ts, ts + dur));
    }
    // Slices on one thread never overlap (trace viewers need proper nesting).
    for (key, mut v) in per_thread {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        for w in v.windows(2) {
            assert!(w[1].0 >= w[0].1 - close, "overlapping slices on {key:?}: {w:?}");
        }
    }
}

#[test]
fn critical_path_ends_the_window_and_breakdown_marks_it() {
    let (_, r) = engine_run("medium", vec![]);
    let steps = timed_steps(&r);
    let path = critical_path(&steps);
    assert!(!path.is_empty());
    let last_end = steps.iter().filter(|s| s.window == Window::Blackout).map(|s| s.end_ns).max().unwrap();
    assert_eq!(steps[*path.last().unwrap()].end_ns, last_end);
    for w in path.windows(2) {
        assert!(steps[w[0]].end_ns <= steps[w[1]].end_ns, "path in time order");
    }
    let shares = critical_shares(&steps, &path);
    assert_eq!(shares.iter().sum::<i64>(), last_end);
    let rows = breakdown(&r);
    assert_eq!(rows.iter().map(|x| x.count).sum::<usize>(), steps.len());
    assert_eq!(rows.iter().map(|x| x.critical).sum::<usize>(), path.len());
    let own = own_times(&steps);
    assert_eq!(rows.iter().map(|x| x.total_ns).sum::<i64>(), own.iter().sum::<i64>());
    for x in &rows {
        assert!(x.p50_ns <= x.max_ns && x.max_ns <= x.total_ns);
        if x.critical > 0 {
            assert_eq!(x.window, Window::Blackout);
        }
    }
    let text = switchover_report::breakdown_table(&r);
    assert!(text.contains('◀'));
    assert!(text.contains("critical path (SIMULATED)"));
}

/// What the CLI writes for `--preset small --scale 0.05 --no-kvm-comparison --svg
/// FILE --trace FILE`: the table on stdout, the engine run's timeline and trace
/// in files. (The flags themselves are tested with the CLI, `switchover-cli`.)
#[test]
fn comparison_outputs_written_to_files_show_every_step_once() {
    let dir = tmp_dir("cli");
    let (svg, trace) = (dir.join("t.svg"), dir.join("t.json"));
    let cfg = SimConfig::new(Topology::preset("small").unwrap()).scale(0.05);
    let runs = Strategy::ALL.iter().map(|s| run(&cfg, *s)).collect();
    let cmp = Comparison::simulated(&cfg, runs, vec![]);
    let stdout = table(&cmp);
    assert!(stdout.contains("critical path"));
    let r = cmp.get(Strategy::Engine).expect("the engine ran");
    let caption = format!("{} · {}", cmp.topology.summary(), cmp.label);
    std::fs::write(&svg, switchover_report::timeline::svg(r, &caption)).unwrap();
    std::fs::write(&trace, switchover_report::trace::to_string(r)).unwrap();
    let ids = once_each(&svg_step_ids(&std::fs::read_to_string(&svg).unwrap()));
    let cfg = SimConfig::new(Topology::preset("small").unwrap());
    assert_eq!(ids, plan_ids(&cfg));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let spans = doc["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").count();
    assert_eq!(spans, ids.len());
    std::fs::remove_dir_all(dir).ok();
}
