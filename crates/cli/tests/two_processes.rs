//! Source and destination in two processes, joined by a Unix socket (SIMULATED backends).

use std::process::{Command, Stdio};

fn role(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_switchover")).arg("role").args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("{e}: {text} / {}", String::from_utf8_lossy(&out.stderr)))
}

fn pair(extra_src: &[&str], extra_dst: &[&str]) -> (serde_json::Value, serde_json::Value) {
    let dir = std::env::temp_dir().join(format!("switchover-2p-{}-{}", std::process::id(), extra_src.len() + 2 * extra_dst.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("path.sock");
    let s = sock.to_str().unwrap();
    let mut d_args = vec!["destination", "--socket", s, "--preset", "medium"];
    d_args.extend_from_slice(extra_dst);
    let mut s_args = vec!["source", "--socket", s, "--preset", "medium"];
    s_args.extend_from_slice(extra_src);
    let d = role(&d_args);
    let src = role(&s_args);
    let so = src.wait_with_output().unwrap();
    let dout = d.wait_with_output().unwrap();
    assert!(!sock.exists(), "socket file left behind");
    std::fs::remove_dir_all(&dir).unwrap();
    (json_of(&so), json_of(&dout))
}

#[test]
fn two_processes_complete_a_switchover() {
    let (s, d) = pair(&[], &[]);
    assert_eq!(s["outcome"], "completed", "{s}");
    assert_eq!(d["outcome"], "completed", "{d}");
    assert_eq!(d["guest_runs_here"], true);
    assert_eq!(d["base_mismatches"], 0);
    let rings = switchover::topology::Topology::preset("medium").unwrap().total_rings();
    assert_eq!(s["bases_carried"], rings);
    assert!(s["downtime_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_destination_that_cannot_start_hands_the_guest_back() {
    let (s, d) = pair(&[], &["--inject", "error:set_vring_kick:net2"]);
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    assert_eq!(d["guest_runs_here"], false);
    assert_eq!(s["outcome"], "rolled_back", "{s}");
    assert!(s["cause"].as_str().unwrap().contains("net2"), "{s}");
    assert_eq!(s["guest_runs_here"], true);
    assert_eq!(s["base_mismatches"], 0, "source not restored: {s}");
}

#[test]
fn a_source_that_cannot_stop_never_starts_the_destination() {
    let (s, d) = pair(&["--inject", "crash:get_vring_base:blk1"], &[]);
    assert_eq!(s["outcome"], "rolled_back", "{s}");
    assert!(s["cause"].as_str().unwrap().contains("blk1"), "{s}");
    assert_eq!(s["base_mismatches"], 0, "source not restored: {s}");
    assert_eq!(d["guest_runs_here"], false, "{d}");
}

#[test]
fn a_silent_destination_leaves_the_outcome_in_doubt_and_the_source_stopped() {
    // The destination hangs starting a ring (its step deadline is 3 s); the source
    // gives up waiting after 1 s. It must not resume: the destination has the state.
    let (s, d) = pair(&["--wait-s", "1"], &["--inject", "hang:set_vring_kick:net1", "--deadline-ms", "3000"]);
    assert_eq!(s["outcome"], "in_doubt", "{s}");
    assert_eq!(s["guest_runs_here"], false);
    assert_eq!(d["guest_runs_here"], false, "{d}");
}
