//! Whole switchovers on SIMULATED backends: bases preserved, notifiers exactly once,
//! faults rolled back with the failing device named.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use switchover::error::StepFailure;
use switchover::sim::{Fault, KvmModel};
use switchover::step::{Side, Window};
use switchover::strategy::{run, BlkPolicy, SimConfig, Strategy};
use switchover::switchover::Outcome;
use switchover::topology::Topology;

fn cfg(preset: &str) -> SimConfig {
    SimConfig::new(Topology::preset(preset).unwrap()).scale(0.02).workers(3)
}

#[test]
fn every_strategy_preserves_every_vring_base() {
    for s in Strategy::ALL {
        let r = run(&cfg("medium"), s);
        assert_eq!(r.outcome, Outcome::Completed, "{}: {:?}", s.name(), r.failure);
        assert!(r.vring_bases_preserved, "{}: {:?}", s.name(), r.base_mismatches);
        assert_eq!(r.double_ioctls, 0);
        // Every step appears once.
        let mut seen: HashMap<(Side, String, Option<u32>, String), u32> = HashMap::new();
        for st in &r.steps {
            *seen.entry((st.side, st.device.clone(), st.ring, st.step.clone())).or_default() += 1;
        }
        assert!(seen.values().all(|&n| n == 1), "{}: a step ran twice", s.name());
        let rings = Topology::preset("medium").unwrap().total_rings() as usize;
        let gets = r.steps.iter().filter(|x| x.step == "get_vring_base").count();
        assert_eq!(gets, rings);
    }
}

#[test]
fn engine_runs_notifiers_outside_the_window_in_one_transaction_per_side() {
    let r = run(&cfg("medium"), Strategy::Engine);
    for st in &r.steps {
        if st.step.contains("notifier") {
            assert_ne!(st.window, Window::Blackout, "{} {} in the window", st.device, st.step);
        }
        if st.step.starts_with("memtxn") {
            assert_eq!(st.lane, 0, "memory transaction off the caller lane");
        }
    }
    let host_changes = r.steps.iter().filter(|s| s.step.starts_with("host_notifier")).count() as u64;
    assert_eq!(r.transactions, (2, host_changes));
    // The window opens after the destination's prepare and closes before cleanup.
    for st in &r.steps {
        match st.window {
            Window::Prepare => assert!(st.end_ns <= 0, "prepare step ended inside the window"),
            Window::Cleanup => assert!(st.start_ns >= r.downtime.as_nanos() as i64, "cleanup step started inside the window"),
            Window::Blackout => {}
        }
    }
}

#[test]
fn engine_beats_serial_and_pool_side_by_side() {
    // Ratios measured in one run; generous bounds (the machine is shared and noisy).
    let c = SimConfig::new(Topology::preset("rfc-huge").unwrap()).scale(0.1);
    let serial = run(&c, Strategy::Serial);
    let pool = run(&c, Strategy::Pool);
    let engine = run(&c, Strategy::Engine);
    assert!(engine.downtime * 5 < serial.downtime, "engine {:?} serial {:?}", engine.downtime, serial.downtime);
    assert!(engine.downtime < pool.downtime, "engine {:?} pool {:?}", engine.downtime, pool.downtime);
    assert!(engine.downtime >= engine.lower_bound.total() / 2, "the lower bound is not a bound");
}

fn fault_case(preset: &str, fault: &str) -> switchover::strategy::StrategyRun {
    let f: Fault = fault.parse().unwrap();
    run(&cfg(preset).faults(vec![f]).reply_ack(true).deadline(Duration::from_millis(300)), Strategy::Engine)
}

#[test]
fn without_reply_ack_an_error_on_a_start_message_goes_unseen() {
    // The hazard REPLY_ACK removes: a fire-and-forget SET_VRING_BASE that the
    // backend refuses leaves the ring without its base, and nobody is told.
    let f: Fault = "error:set_vring_base:blk2".parse().unwrap();
    let r = run(&cfg("medium").faults(vec![f]).reply_ack(false), Strategy::Engine);
    assert_eq!(r.outcome, Outcome::Completed);
    assert!(!r.vring_bases_preserved);
    assert!(r.base_mismatches.iter().all(|m| m.0 == "blk2") && !r.base_mismatches.is_empty());
}

#[test]
fn source_faults_roll_back_and_name_the_device() {
    for kind in ["error", "crash", "hang"] {
        let r = fault_case("medium", &format!("{kind}:get_vring_base:net3"));
        let Outcome::RolledBack { cause } = &r.outcome else { panic!("{kind}: {:?}", r.outcome) };
        assert_eq!(cause.device, "net3", "{kind}");
        assert_eq!(cause.step, "get_vring_base");
        assert_eq!(cause.side, Side::Source);
        match kind {
            "error" => assert!(matches!(cause.failure, StepFailure::Injected { .. })),
            "crash" => assert_eq!(cause.failure, StepFailure::Disconnected),
            _ => assert!(matches!(cause.failure, StepFailure::Timeout { .. }), "{cause}"),
        }
        // The source runs again with every base the guest had reached: read ones
        // restored, the failed device's backend reconnected and replayed.
        assert!(r.vring_bases_preserved, "{kind}: {:?}", r.base_mismatches);
        assert!(r.steps.iter().any(|s| s.rollback && s.device == "net3" && s.step == "set_mem_table"), "{kind}: net3 not replayed");
        // Nothing of the cleanup ran: notifiers stay registered for the resumed guest.
        assert!(r.steps.iter().all(|s| s.window != Window::Cleanup));
    }
}

#[test]
fn destination_faults_roll_back_the_source() {
    let r = fault_case("medium", "error:set_vring_base:blk2");
    let Outcome::RolledBack { cause } = &r.outcome else { panic!("{:?}", r.outcome) };
    assert_eq!((cause.side, cause.device.as_str()), (Side::Destination, "blk2"));
    assert!(r.vring_bases_preserved, "source not restored: {:?}", r.base_mismatches);
}

#[test]
fn destination_not_ready_aborts_before_the_source_stops() {
    let r = fault_case("medium", "error:set_mem_table:net0");
    let Outcome::Aborted { cause } = &r.outcome else { panic!("{:?}", r.outcome) };
    assert_eq!(cause.device, "net0");
    assert!(r.steps.iter().all(|s| s.side == Side::Destination), "the source must not have stopped anything");
    assert_eq!(r.downtime, Duration::ZERO);
}

#[test]
fn per_vm_ioeventfd_model_hurts_pool_not_engine_blackout() {
    let c = SimConfig::new(Topology::preset("medium").unwrap()).scale(0.2).workers(4).kvm(KvmModel::PerVmIoeventfd);
    let pool = run(&c, Strategy::Pool);
    let engine = run(&c, Strategy::Engine);
    assert!(engine.downtime < pool.downtime);
    // Under this model a VM's ioeventfd changes are serialised: the pool, which
    // does them inside the window, cannot take less than their sum per side.
    let serialised: u64 = pool.steps.iter().filter(|s| s.step.starts_with("host_notifier")).map(|s| s.cost_ns).sum();
    assert!(pool.downtime.as_nanos() as u64 >= serialised * 9 / 10, "pool {:?} < serialised {serialised} ns", pool.downtime);
    let c_rfc = c.clone().kvm(KvmModel::Rfc);
    let pool_rfc = run(&c_rfc, Strategy::Pool);
    assert!(pool_rfc.downtime < pool.downtime, "the per-VM lock must cost the pool something");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_topologies_and_fault_points(
        nets in 0u32..3, qp in 1u32..4, blks in 0u32..3, q in 1u32..4,
        point in prop::option::of((0usize..6, 0u32..6)),
    ) {
        prop_assume!(nets + blks > 0);
        let mut b = Topology::builder();
        if nets > 0 { b = b.net(nets, qp); }
        if blks > 0 { b = b.blk(blks, q); }
        let topo = b.build().unwrap();
        let kinds = ["vring_disable", "get_vring_base", "set_vring_base", "set_vring_kick", "vring_enable", "host_notifier_on"];
        let fault = point.map(|(k, d)| {
            let dev = &topo.devices()[d as usize % topo.devices().len()];
            format!("error:{}:{}", kinds[k], dev.name).parse::<Fault>().unwrap()
        });
        let c = SimConfig::new(topo).scale(0.01).workers(2).reply_ack(true).faults(fault.iter().cloned().collect());
        let r = run(&c, Strategy::Engine);
        prop_assert_eq!(r.double_ioctls, 0);
        match &r.outcome {
            Outcome::Completed => prop_assert!(r.vring_bases_preserved, "{:?}", r.base_mismatches),
            Outcome::RolledBack { cause } | Outcome::Aborted { cause } => {
                let f = fault.as_ref().expect("no fault yet it failed");
                prop_assert_eq!(&cause.device, &f.device);
                prop_assert_eq!(&cause.step, f.step.name());
                prop_assert!(r.vring_bases_preserved, "{:?}", r.base_mismatches);
            }
            other => prop_assert!(false, "unexpected outcome {:?}", other),
        }
    }
}

fn io_cfg(policy: BlkPolicy) -> SimConfig {
    cfg("medium").blk_inflight(8, Duration::from_millis(4)).blk_policy(policy).reply_ack(true).deadline(Duration::from_millis(500))
}

#[test]
fn drained_block_requests_complete_once_on_the_source() {
    for s in Strategy::ALL {
        let r = run(&io_cfg(BlkPolicy::Drain), s);
        assert_eq!(r.outcome, Outcome::Completed);
        assert!(r.io.exact(), "{}: {:?}", s.name(), r.io);
        assert_eq!(r.io.submitted, 8 * 16);
        assert_eq!(r.io.handed_over, 0);
    }
}

#[test]
fn handed_over_block_requests_complete_once_on_the_destination() {
    // Requests of 50 ms (scaled: 1 ms) are still in flight when the bases are read.
    let r = run(&io_cfg(BlkPolicy::HandOver).blk_inflight(8, Duration::from_millis(50)), Strategy::Engine);
    assert_eq!(r.outcome, Outcome::Completed);
    assert!(r.io.exact(), "{:?}", r.io);
    assert!(r.io.handed_over > 0, "nothing was in flight at the stop: {:?}", r.io);
    assert!(r.steps.iter().all(|s| s.step != "drain_inflight"));
}

#[test]
fn a_drain_past_its_deadline_rolls_back_without_losing_a_request() {
    // Requests take 40 ms (scaled: 0.8 ms); the drain's deadline is 0.5 ms.
    let c =
        cfg("medium").blk_inflight(4, Duration::from_millis(40)).blk_policy(BlkPolicy::Drain).drain_deadline(Duration::from_micros(500));
    let r = run(&c, Strategy::Engine);
    let Outcome::RolledBack { cause } = &r.outcome else { panic!("{:?}", r.outcome) };
    assert_eq!(cause.step, "drain_inflight");
    assert!(matches!(cause.failure, StepFailure::Timeout { .. }));
    // The guest resumes on the source, which completes every request once.
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(r.io.lost + r.io.completed_twice, 0, "{:?}", r.io);
}

#[test]
fn hand_over_then_rollback_completes_each_request_once_on_the_source() {
    let f: Fault = "error:set_vring_kick:blk3".parse().unwrap();
    let r = run(&io_cfg(BlkPolicy::HandOver).faults(vec![f]), Strategy::Engine);
    let Outcome::RolledBack { cause } = &r.outcome else { panic!("{:?}", r.outcome) };
    assert_eq!(cause.device, "blk3");
    assert!(r.vring_bases_preserved, "{:?}", r.base_mismatches);
    assert!(r.io.exact(), "{:?}", r.io);
}
