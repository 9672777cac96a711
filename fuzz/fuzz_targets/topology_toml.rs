//! Arbitrary text as a topology file: an error or a valid topology, never a panic
//! or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchover::topology::{DeviceKind, MAX_DEVICES};
use switchover_cli::topology_file::from_toml_str;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(t) = from_toml_str(text, "fuzz") {
        assert!(!t.devices().is_empty());
        assert!(t.devices().len() <= MAX_DEVICES as usize);
        for d in t.devices() {
            match d.kind {
                DeviceKind::Net | DeviceKind::Blk => assert!(d.queues > 0 && d.rings() > 0),
                DeviceKind::Generic(_) => assert!(!d.steps.is_empty()),
            }
        }
    }
});
