//! `mqtt_packet`: the input and the checks are those of `harness::mqtt_packet`
//! (`fuzz/harness/fleet_mqtt.rs`), which `cargo test` runs too (the crate's
//! `tests/bad_input.rs`, over this target's corpus and regressions).

#![no_main]

#[allow(dead_code)]
#[path = "../harness/fleet_mqtt.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::mqtt_packet(data));
