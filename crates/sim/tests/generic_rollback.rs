//! Rollback of the VMM's own device kinds (SIMULATED): a VFIO-like device stopped
//! in the window and a virtio-fs-like daemon paused are resumed by the source's
//! rollback, through the undo steps they declare, in reverse dependency order;
//! the destination's fence undoes what it started of them.

use std::time::Duration;

use switchover::exec::Engine;
use switchover::ids::{Affinity, DeviceId, Side, Window};
use switchover::roles::{run_in_process, Outcome};
use switchover::topology::{GenericStep, Topology};
use switchover_sim::{Fault, SimConfig, SimRole};

fn topology() -> Topology {
    let ms = Duration::from_millis;
    let vfio = vec![
        GenericStep::new("attach", Side::Destination, Window::Prepare).cost(ms(5)),
        // Source: DMA stopped and the device's state saved in the window.
        GenericStep::new("quiesce", Side::Source, Window::Blackout).cost(ms(1)).undone_by("unquiesce"),
        GenericStep::new("save_state", Side::Source, Window::Blackout).cost(ms(1)).after("quiesce"),
        GenericStep::rollback_only("unquiesce", Side::Source).cost(ms(1)),
        // Destination: state loaded, device started; a fence stops it again.
        GenericStep::new("load_state", Side::Destination, Window::Blackout).cost(ms(1)),
        GenericStep::new("start", Side::Destination, Window::Blackout).after("load_state").undone_by("stop"),
        GenericStep::rollback_only("stop", Side::Destination),
    ];
    let virtiofs = vec![
        // Source: the daemon paused, then its queues drained; undone the other way round.
        GenericStep::new("pause", Side::Source, Window::Blackout).undone_by("unpause"),
        GenericStep::new("drain_queues", Side::Source, Window::Blackout).after("pause").undone_by("resume_queues"),
        GenericStep::rollback_only("resume_queues", Side::Source),
        GenericStep::rollback_only("unpause", Side::Source).affinity(Affinity::Caller),
        GenericStep::new("resume", Side::Destination, Window::Blackout),
    ];
    Topology::builder().name("vmm-devices").net(1, 2).blk(1, 1).generic(1, "vfio", vfio).generic(1, "virtiofs", virtiofs).build().unwrap()
}

fn steps_of(role: &SimRole, device: &str) -> Vec<String> {
    let d = role.setup.plan.topology().device_by_name(device).unwrap().id;
    role.side.custom_steps().into_iter().filter(|(x, _)| *x == d).map(|(_, s)| s).collect()
}

#[test]
fn a_rollback_resumes_a_vfio_like_and_a_virtiofs_like_device() {
    // The destination fails once its devices began to start: the source rolls back.
    let f: Fault = "error:set_vring_kick:blk0".parse().unwrap();
    let cfg = SimConfig::new(topology()).scale(0.05).workers(3).deadline(Duration::from_millis(500)).faults(vec![f]);
    let (src, dst) = SimRole::pair(&cfg);
    let rep = run_in_process(&src.setup, &dst.setup, &mut Engine::new(3), &mut Engine::new(3));
    let Outcome::RolledBack { cause } = &rep.outcome else { panic!("{:?}", rep.outcome) };
    assert_eq!(cause.device_name(), Some("blk0"));
    // The source's devices were stopped in the window, then resumed by their undo steps.
    assert_eq!(steps_of(&src, "vfio0"), ["quiesce", "save_state", "unquiesce"]);
    let fs = steps_of(&src, "virtiofs0");
    assert_eq!(fs, ["pause", "drain_queues", "resume_queues", "unpause"], "undone in reverse dependency order");
    // The guest runs on the source again, with its rings restarted.
    assert_eq!(src.side.world().running(), Some(Side::Source));
    assert!(src.side.sync(Duration::from_secs(5)));
    assert!(src.side.base_mismatches().is_empty());
    // The destination undid what it started of its own devices before saying so.
    let started = steps_of(&dst, "vfio0");
    if started.contains(&"start".to_string()) {
        assert_eq!(started.last().map(String::as_str), Some("stop"), "{started:?}");
    }
    assert!(!steps_of(&dst, "virtiofs0").iter().any(|s| s == "stop"));
}

#[test]
fn a_rollback_undoes_only_what_ran() {
    // The source fails before its devices were quiesced: nothing to undo but the
    // steps that ran.
    let f: Fault = "error:get_vring_base:net0".parse().unwrap();
    let cfg = SimConfig::new(topology()).scale(0.05).workers(0).deadline(Duration::from_millis(500)).faults(vec![f]);
    let (src, dst) = SimRole::pair(&cfg);
    let rep = run_in_process(&src.setup, &dst.setup, &mut Engine::new(0), &mut Engine::new(0));
    assert!(matches!(rep.outcome, Outcome::RolledBack { .. }), "{:?}", rep.outcome);
    for dev in ["vfio0", "virtiofs0"] {
        let ran = steps_of(&src, dev);
        let (done, undone): (Vec<&String>, Vec<&String>) =
            ran.iter().partition(|s| ["quiesce", "save_state", "pause", "drain_queues"].contains(&s.as_str()));
        let expect: Vec<&str> = done
            .iter()
            .rev()
            .filter_map(|s| match s.as_str() {
                "quiesce" => Some("unquiesce"),
                "drain_queues" => Some("resume_queues"),
                "pause" => Some("unpause"),
                _ => None,
            })
            .collect();
        assert_eq!(undone.iter().map(|s| s.as_str()).collect::<Vec<_>>(), expect, "{dev}: {ran:?}");
    }
    let _ = DeviceId(0);
}
