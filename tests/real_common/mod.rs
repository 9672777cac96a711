//! What the real-component test files share.

use switchover::real::cli::kvm_available;

/// Whether the real-component tests can run here: `false`, with the reason printed,
/// when /dev/kvm is absent; a panic when it is present but cannot be used.
pub fn kvm_or_skip() -> bool {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED: /dev/kvm is absent on this machine; real-component tests need KVM");
        return false;
    }
    if let Err(e) = kvm_available() {
        panic!("{e}");
    }
    true
}
