//! The demo scenario and the files it names, compiled in, so `fleetsim run` works from any
//! directory. A `scenarios/demo.toml` in the working directory takes precedence.

use fleet_core::load::EmbeddedSource;

pub const DEMO_PATH: &str = "scenarios/demo.toml";

pub const FILES: EmbeddedSource = EmbeddedSource(&[
    (
        "scenarios/demo.toml",
        include_str!("../scenarios/demo.toml"),
    ),
    (
        "device-profiles/env-sensor.toml",
        include_str!("../device-profiles/env-sensor.toml"),
    ),
    (
        "device-profiles/smart-meter.toml",
        include_str!("../device-profiles/smart-meter.toml"),
    ),
    (
        "device-profiles/gps-tracker.toml",
        include_str!("../device-profiles/gps-tracker.toml"),
    ),
    (
        "device-profiles/industrial-gateway.toml",
        include_str!("../device-profiles/industrial-gateway.toml"),
    ),
    (
        "firmware-models/env-fw.toml",
        include_str!("../firmware-models/env-fw.toml"),
    ),
    (
        "firmware-models/meter-fw.toml",
        include_str!("../firmware-models/meter-fw.toml"),
    ),
    (
        "firmware-models/tracker-fw.toml",
        include_str!("../firmware-models/tracker-fw.toml"),
    ),
    (
        "firmware-models/gateway-fw.toml",
        include_str!("../firmware-models/gateway-fw.toml"),
    ),
]);
