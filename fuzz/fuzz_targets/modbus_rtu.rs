//! `modbus_rtu`: the input and the checks are those of `harness::modbus_rtu`
//! (`fuzz/harness/fleet_modbus.rs`), which `cargo test` runs too (the crate's
//! `tests/bad_input.rs`, over this target's corpus and regressions).

#![no_main]

#[allow(dead_code)]
#[path = "../harness/fleet_modbus.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::modbus_rtu(data));
