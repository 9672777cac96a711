//! The CLI: clear one-line errors with exit code 2; the JSON document.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchover"))
}

fn bad(args: &[&str], needle: &str) {
    let out = bin().args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{args:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: not one line: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
}

#[test]
fn malformed_input_is_one_line_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("switchover-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    bad(&["--preset", "nope"], "unknown preset 'nope'");
    bad(&["--topology", &write("bad.toml", "[[device]\nkind=")], "bad topology file");
    bad(&["--topology", &write("zero.toml", "[[device]]\nkind = \"blk\"\nqueues = 0\n")], "queues is 0");
    bad(
        &["--topology", &write("unknown.toml", "[[device]]\nkind = \"net\"\nqueue_pairs = 2\ncolour = \"red\"\n")],
        "unknown field `colour`",
    );
    bad(&["--topology", &write("kind.toml", "[[device]]\nkind = \"gpu\"\n")], "unknown kind 'gpu'");
    bad(&["--topology", &write("huge.toml", "[[device]]\nkind = \"net\"\ncount = 4000000000\n")], "more than 4096 devices");
    bad(&["--topology", "/nonexistent/x.toml"], "cannot read topology file");
    bad(&["--inject", "melt:get_vring_base:net0"], "unknown kind 'melt'");
    bad(&["--inject", "error:get_vring_base:net99"], "no device named 'net99'");
    bad(&["--workers", "lots"], "invalid value");
    bad(&["--kvm-model", "xen"], "unknown --kvm-model");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn json_has_the_documented_keys() {
    let p = std::env::temp_dir().join(format!("switchover-cli-{}.json", std::process::id()));
    let out = bin().args(["--preset", "small", "--scale", "0.02", "--json", p.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("SIMULATED"));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    std::fs::remove_file(&p).unwrap();
    assert_eq!(v["simulated"], true);
    assert_eq!(v["topology"]["name"], "small");
    assert!(v["lower_bound_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(v["vring_bases_preserved"], true);
    for s in ["serial", "pool", "engine"] {
        let d = v["strategies"][s]["downtime_ms"].as_f64().unwrap();
        assert!(d > 0.0, "{s}");
        let steps = v["strategies"][s]["steps"].as_array().unwrap();
        assert!(!steps.is_empty());
        for st in steps {
            assert!(st["end_us"].as_f64().unwrap() >= st["start_us"].as_f64().unwrap());
        }
    }
    assert!(v["other_kvm_model"]["strategies"]["engine"]["downtime_ms"].as_f64().is_some());
}

#[test]
fn injected_crash_rolls_back_and_exits_cleanly() {
    let p = std::env::temp_dir().join(format!("switchover-cli-crash-{}.json", std::process::id()));
    let out = bin()
        .args(["--preset", "medium", "--scale", "0.02", "--inject", "crash:get_vring_base:net3", "--json", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    std::fs::remove_file(&p).unwrap();
    assert_eq!(v["outcome"], "rolled_back");
    assert_eq!(v["cause"]["device"], "net3");
    assert_eq!(v["cause"]["step"], "get_vring_base");
}

#[test]
fn svg_and_trace_flags_draw_every_engine_step_once() {
    let dir = std::env::temp_dir().join(format!("switchover-cli-pictures-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, svg, trace) = (dir.join("r.json"), dir.join("t.svg"), dir.join("t.json"));
    let args = ["--preset", "small", "--scale", "0.02", "--strategies", "engine", "--no-kvm-comparison"];
    let out = bin()
        .args(args)
        .args(["--json", json.to_str().unwrap(), "--svg", svg.to_str().unwrap(), "--trace", trace.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let steps = v["strategies"]["engine"]["steps"].as_array().unwrap().len();
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(picture.starts_with("<svg") || picture.starts_with("<?xml"), "not an SVG");
    assert!(picture.contains("SIMULATED"));
    assert_eq!(picture.matches("data-step=").count(), steps, "one bar per step");
    let t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let spans = t["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").count();
    assert_eq!(spans, steps, "one span per step");
    std::fs::remove_dir_all(&dir).unwrap();
}
