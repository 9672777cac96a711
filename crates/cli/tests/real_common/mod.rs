//! What the real-component test files share.
#![allow(dead_code)] // each test file uses a part

use std::path::PathBuf;
use std::time::Duration;

use switchover_cli::real::kvm_available;
use switchover_testbed::{BlkBackend, RealConfig};

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

/// A real configuration: `nets` nets of `queue_pairs` queue pairs and `blks` blks of
/// `queues` queues on `blk` backends, 2 workers, every step's deadline `deadline`.
/// `None` (skipped, reason printed) without KVM; a panic if the blk backends
/// include qemu-storage-daemon and it is not installed.
pub fn config(nets: u32, queue_pairs: u32, blks: u32, queues: u32, blk: BlkBackend, deadline: Duration) -> Option<RealConfig> {
    if !kvm_or_skip() {
        return None;
    }
    let mut c = RealConfig::new(PathBuf::from(env!("CARGO_BIN_EXE_switchover")));
    (c.nets, c.queue_pairs, c.blks, c.queues) = (nets, queue_pairs, blks, queues);
    c.blk_backend = blk;
    c.workers = 2;
    c.deadline = deadline;
    if blk != BlkBackend::Own {
        assert!(c.qsd.is_some(), "qemu-storage-daemon is not installed (package qemu-utils); these tests drive it");
    }
    Some(c)
}

/// This process's open file descriptors.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}
