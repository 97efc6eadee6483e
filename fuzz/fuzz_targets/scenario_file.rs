//! `scenario_file`: the input and the checks are those of `harness::scenario_file`
//! (`fuzz/harness/fleet_core.rs`), which `cargo test` runs too (the crate's
//! `tests/bad_input.rs`, over this target's corpus and regressions).

#![no_main]

#[allow(dead_code)]
#[path = "../harness/fleet_core.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::scenario_file(data));
