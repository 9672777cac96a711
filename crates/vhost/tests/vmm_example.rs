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
    // One write completed before the stop: the ring's base is 1 on both sides.
    assert_eq!(r.base, Some(1));
    assert!(r.read_back_identical, "the block written on the source did not read back through the destination");
}
