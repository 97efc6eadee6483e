//! `at_command`: the input and the checks are those of `harness::at_command`
//! (`fuzz/harness/fleet_serial.rs`), which `cargo test` runs too (the crate's
//! `tests/bad_input.rs`, over this target's corpus and regressions).

#![no_main]

#[allow(dead_code)]
#[path = "../harness/fleet_serial.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::at_command(data));
