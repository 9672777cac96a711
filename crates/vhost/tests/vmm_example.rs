//! Runs `examples/vmm.rs`: a VMM integration with the core and this crate only,
//! on real qemu-storage-daemon backends.

#[path = "../examples/vmm.rs"]
#[allow(dead_code)]
mod vmm;

use switchover::roles::Outcome;

#[test]
fn a_vmm_of_its_own_switches_over_on_real_backends() {
    let Some(qsd) = vmm::find_qsd() else {
        assert!(std::env::var_os("SWITCHOVER_REQUIRE_REAL").is_none(), "qemu-storage-daemon is required here but not installed");
        eprintln!("SKIPPED: qemu-storage-daemon is not installed (Debian package qemu-utils); .ci/run installs it");
        return;
    };
    let dir = std::env::temp_dir().join(format!("vmm-example-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let r = vmm::run(&qsd, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let r = r.unwrap();
    assert_eq!(r.source.outcome, Outcome::Completed, "{:?}", r.source.outcome);
    assert_eq!(r.destination.outcome, Outcome::Completed, "{:?}", r.destination.outcome);
    assert_eq!(r.source.bases_carried, 1);
    // Every write completed before the stop, the vCPU's included: the ring's base
    // is what the guest published, on both sides.
    assert!(r.base.is_some_and(|b| b > 1), "{:?}", r.base);
    assert!(r.read_back_identical, "the block written on the source did not read back through the destination");
    // Guest memory was migrated: the destination's equals the source's when its
    // ring starts, the final pass in the window copied what the log sync found.
    assert!(r.memory_identical);
    assert!(r.pages.0 > 0 && r.pages.1 > 0, "{:?}", r.pages);
    // The guest's MSI-X change during precopy was reconciled, on that device only.
    assert_eq!(r.reconciled, [0]);
    // The big lock: free through prepare, precopy and the ready-ack wait (the
    // guest's vCPU took it meanwhile), taken by the migration at the window's
    // opening only.
    let l = r.lock;
    assert!(l.vcpu_runs_before_window > 0, "{l:?}");
    assert!(l.locked_after_ready, "{l:?}");
    assert!(l.prepare_ms > 0.0 && l.locked_after_ms >= l.prepare_ms + l.ready_wait_ms, "{l:?}");
}
