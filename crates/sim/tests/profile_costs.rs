//! What the steps a two-host switchover adds cost in the SIMULATED profile on
//! rfc-huge, per strategy, and that they take nothing from the RFC's calibration.
//! `cargo test --release -p switchover-sim --test profile_costs -- --nocapture`
//! prints the table docs/performance.md quotes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use switchover::ids::{Side, Window};
use switchover::recipe::build;
use switchover::topology::Topology;
use switchover_baseline::{LowerBound2, Strategy};
use switchover_sim::{rfc_measured, Profile, SimConfig, RFC_ORIGINAL_MS};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[test]
fn the_new_steps_cost_what_the_profile_says_and_leave_the_rfc_calibration_alone() {
    let topo = Arc::new(Topology::preset("rfc-huge").unwrap());
    let cfg = SimConfig::new(Topology::preset("rfc-huge").unwrap()).scale(1.0);
    let p: &Profile = &cfg.profile;
    // The calibration: the RFC-measured kinds of today's 2021 plans add up to 5600 ms.
    let mut rfc = 0.0;
    let mut added: BTreeMap<(&str, String), (usize, f64)> = BTreeMap::new();
    for s in Strategy::ALL {
        let opts = cfg.recipe(s);
        for side in [Side::Source, Side::Destination] {
            let plan = build(&topo, side, &opts, p).unwrap();
            for st in plan.in_window(Window::Blackout) {
                if rfc_measured(&st.kind) {
                    if s == Strategy::Serial {
                        rfc += ms(st.cost);
                    }
                } else {
                    let e = added.entry((s.name(), format!("{} {}", side.short(), st.kind))).or_default();
                    e.0 += 1;
                    e.1 += ms(st.cost);
                }
            }
        }
    }
    assert!((rfc - RFC_ORIGINAL_MS).abs() < 0.01, "the RFC's steps cost {rfc} ms in the 2021 plans");
    println!("steps the RFC did not measure, in the blackout window of rfc-huge (SIMULATED profile, unscaled):");
    println!("{:<8} {:<24} {:>6} {:>12}", "strategy", "step", "count", "total ms");
    for ((s, k), (n, t)) in &added {
        println!("{s:<8} {k:<24} {n:>6} {t:>12.3}");
    }
    let total = |s: &str| added.iter().filter(|((x, _), _)| *x == s).map(|(_, v)| v.1).sum::<f64>();
    for s in ["serial", "qemu", "engine"] {
        println!("{s:<8} all added steps: {:.3} ms", total(s));
    }
    // One routing commit for every vector against one per device and one per vector.
    let once = added[&("engine", "dst route_commit".to_string())].1;
    let per_device = added[&("qemu", "dst route_commit".to_string())].1;
    let per_vector = added[&("serial", "dst route_commit".to_string())].1;
    println!("route commits: once {once:.3} ms, per device {per_device:.3} ms, per vector {per_vector:.3} ms");
    assert!(once < per_device && per_device < per_vector);
    // The engine's one commit carries every vector of the VM.
    assert_eq!(added[&("engine", "dst route_commit".to_string())].0, 1);
    assert_eq!(once, ms(p.window.route_commit(p.window.routes())));
    // The lower bound includes them: the engine's source window ends with the log
    // sync and the final pass after its last stop.
    let opts = cfg.recipe(Strategy::Engine);
    let (src, dst) = (build(&topo, Side::Source, &opts, p).unwrap(), build(&topo, Side::Destination, &opts, p).unwrap());
    let lb = LowerBound2::of(&src, &dst, Strategy::Engine.lanes(cfg.workers));
    let log_tail =
        ms(p.window.bitmap_scan_per_gib * p.window.guest_ram_gib + p.window.page_copy * (p.window.rings * p.window.pages_per_ring));
    println!(
        "engine lower bound: src {:.3} ms, dst {:.3} ms (log sync + final pass on its chain: {log_tail:.3} ms)",
        ms(lb.src.bound),
        ms(lb.dst.bound)
    );
    assert!(ms(lb.src.chain) >= log_tail);
}

#[test]
fn batching_host_notifiers_cuts_them_as_qemu_measured() {
    let topo = Arc::new(Topology::preset("rfc-huge").unwrap());
    let p = Profile::rfc_original(1.0);
    let sum = |s: Strategy, side: Side, kind: &str| -> f64 {
        build(&topo, side, &s.recipe(), &p).unwrap().steps().iter().filter(|x| x.kind.name() == kind).map(|x| ms(x.cost)).sum()
    };
    let serial = sum(Strategy::Serial, Side::Destination, "host_notifier_on");
    let qemu = sum(Strategy::Qemu, Side::Destination, "host_notifier_on");
    assert!((serial - 2022.0 - 312.0).abs() < 0.01);
    // 2022 × 75/630 + 312 × 9.1/376.
    assert!((qemu - (2022.0 * 75.0 / 630.0 + 312.0 * 9.1 / 376.0)).abs() < 0.01, "{qemu}");
}
