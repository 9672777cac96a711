//! Property tests of the topology file parser: arbitrary and near-valid text gives
//! an error or a valid topology, never a panic. Beside the cargo-fuzz target
//! `fuzz/fuzz_targets/topology_toml.rs`; `PROPTEST_CASES=200000` runs a longer search.

use proptest::prelude::*;
use switchover_cli::topology_file::from_toml_str;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary text at the topology parser: an error or a valid topology.
    #[test]
    fn topology_parser_never_panics(text in ".{0,200}") {
        if let Ok(t) = from_toml_str(&text, "prop") {
            prop_assert!(!t.devices().is_empty());
        }
    }

    /// Near-valid topology files (bounded counts: the parser builds every device).
    #[test]
    fn topology_parser_on_near_valid_files(kind in prop_oneof![Just("net".to_string()), Just("blk".to_string()), Just("generic".to_string()), "[a-z]{0,6}"],
                                           count in 0u32..64, q in 0u32..300, extra in "[a-z_]{0,8}( = [0-9]{1,3})?") {
        let text = format!("[[device]]\nkind = \"{kind}\"\ncount = {count}\nqueues = {q}\nqueue_pairs = {q}\n{extra}\n");
        if let Ok(t) = from_toml_str(&text, "prop") {
            prop_assert_eq!(t.devices().len() as u32, count);
            prop_assert!(t.devices().iter().all(|d| d.rings() > 0));
        }
    }
}
