//! What the real-component test files share.

use switchover_cli::real::kvm_available;

/// Whether the real-component tests can run here: `false`, with the reason printed,
/// when /dev/kvm is absent; a panic when it is present but cannot be used, or when
/// `SWITCHOVER_REQUIRE_REAL` is set (CI sets it where KVM exists: no real test
/// passes there by being skipped).
pub fn kvm_or_skip() -> bool {
    if !std::path::Path::new("/dev/kvm").exists() {
        assert!(std::env::var_os("SWITCHOVER_REQUIRE_REAL").is_none(), "/dev/kvm is absent but SWITCHOVER_REQUIRE_REAL is set");
        eprintln!("SKIPPED: /dev/kvm is absent on this machine; real-component tests need KVM");
        return false;
    }
    if let Err(e) = kvm_available() {
        panic!("{e}");
    }
    true
}
