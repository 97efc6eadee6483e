//! Every default and limit of the file formats, in one place, named.

use crate::dist::DistSpec;
use crate::profile::Backoff;
use crate::time::SimDuration;

/// Telemetry messages a device keeps while offline, flushed on reconnect (profile default).
pub const OFFLINE_BUFFER: u32 = 32;
/// The largest offline buffer a profile may ask for.
pub const MAX_OFFLINE_BUFFER: u32 = 100_000;
/// Sensor values are written with this many decimals unless the profile says otherwise.
pub const DECIMALS: u8 = 2;
/// Mean time to repair a dropped link, seconds.
pub const MTTR_S: f64 = 10.0;
/// How long a connection attempt may take before it counts as failed.
pub const CONNECT_TIMEOUT: SimDuration = SimDuration::from_secs(10);
/// MQTT keep-alive.
pub const KEEP_ALIVE: &str = "60s";
/// Reconnect backoff when a profile gives none: 1 s doubling to 60 s, half of it jittered.
pub const BACKOFF_INITIAL: SimDuration = SimDuration::from_secs(1);
pub const BACKOFF_MAX: SimDuration = SimDuration::from_secs(60);
pub const BACKOFF_MULTIPLIER: f64 = 2.0;
pub const BACKOFF_JITTER: f64 = 0.5;
/// A low battery stretches the reporting interval by this factor.
pub const LOW_INTERVAL_FACTOR: f64 = 4.0;
pub const LOW_PERCENT: f64 = 15.0;
/// Extra delay a lost QoS>=1 message takes (one TCP retransmission timeout).
pub const RETRANSMIT_DELAY: SimDuration = SimDuration::from_millis(200);
/// Ramp-up: devices started per second.
pub const RAMP_PER_SECOND: f64 = 1_000.0;
/// After the scenario's duration, how long to wait for outstanding acks.
pub const DRAIN: &str = "2s";
/// The simulated broker's service time (virtual clock), microseconds.
pub const SIM_BROKER_SERVICE_MEDIAN_US: f64 = 300.0;
pub const SIM_BROKER_SERVICE_SIGMA: f64 = 0.5;
/// Virtual runs start at this wall-clock instant (2026-01-01T00:00:00Z) unless the scenario
/// sets `start_epoch_ms`, so `ts` fields are reproducible too.
pub const VIRTUAL_EPOCH_MS: u64 = 1_767_225_600_000;

/// Gateways (`[gateway]`): the gateway's id, its MQTT client id, the Sparkplug group, and the
/// most children one gateway may carry.
pub const GATEWAY_ID: &str = "{cohort}-gw-{gateway_index:04}";
pub const GATEWAY_CLIENT_ID: &str = "{gateway}";
pub const SPARKPLUG_GROUP: &str = "fleetsim";
pub const MAX_GATEWAY_CHILDREN: u32 = 1_000_000;

pub fn backoff() -> Backoff {
    Backoff {
        initial: BACKOFF_INITIAL,
        max: BACKOFF_MAX,
        multiplier: BACKOFF_MULTIPLIER,
        jitter: BACKOFF_JITTER,
    }
}

// serde `default = "…"` needs functions.
pub(crate) fn offline_buffer() -> u32 {
    OFFLINE_BUFFER
}
pub(crate) fn decimals() -> u8 {
    DECIMALS
}
pub(crate) fn start_percent() -> crate::profile::StartPercentRaw {
    crate::profile::StartPercentRaw::Fixed(100.0)
}
pub(crate) fn low_percent() -> f64 {
    LOW_PERCENT
}
pub(crate) fn low_interval_factor() -> f64 {
    LOW_INTERVAL_FACTOR
}
pub(crate) fn backoff_multiplier() -> f64 {
    BACKOFF_MULTIPLIER
}
pub(crate) fn backoff_jitter() -> f64 {
    BACKOFF_JITTER
}
pub(crate) fn keep_alive() -> String {
    KEEP_ALIVE.to_string()
}
pub(crate) fn yes() -> bool {
    true
}
pub(crate) fn one() -> u8 {
    1
}
pub(crate) fn commands() -> Vec<String> {
    crate::profile::COMMAND_NAMES
        .iter()
        .map(|s| s.to_string())
        .collect()
}
pub(crate) fn ramp_per_second() -> f64 {
    RAMP_PER_SECOND
}
pub(crate) fn drain() -> String {
    DRAIN.to_string()
}
pub(crate) fn seed() -> u64 {
    1
}

/// Modbus: listen on loopback, from port 5020 (502 needs privileges), 100 unit ids per port.
pub(crate) fn modbus_listen() -> String {
    "127.0.0.1".into()
}
pub(crate) fn modbus_port() -> u16 {
    5020
}
pub(crate) fn modbus_units_per_port() -> u16 {
    100
}
pub(crate) fn modbus_max_connections() -> u32 {
    64
}
pub(crate) fn modbus_per_bus() -> u16 {
    32
}
pub(crate) fn pty() -> String {
    "pty".into()
}
pub(crate) fn baud() -> u32 {
    9600
}

/// OTA: a quick cycle unless the firmware model says otherwise.
pub(crate) fn ota_verify_s() -> DistSpec {
    DistSpec::Constant { value: 2.0 }
}
pub(crate) fn ota_install_s() -> DistSpec {
    DistSpec::Constant { value: 10.0 }
}
pub(crate) fn ota_trial_s() -> DistSpec {
    DistSpec::Constant { value: 30.0 }
}
pub(crate) fn ota_max_boot_attempts() -> u8 {
    3
}
pub(crate) fn ota_download_attempts() -> u8 {
    5
}
pub(crate) fn ota_stall_timeout() -> String {
    "5m".into()
}
/// Link bandwidth when a profile names none: 1 Mbit/s.
pub const BANDWIDTH_KBPS: f64 = 1_000.0;
/// OTA status reports while downloading: every 25 %.
pub(crate) fn ota_progress_step() -> u8 {
    25
}
/// Retry of a failed HTTP download attempt: after this long times the attempt number.
pub const OTA_DOWNLOAD_RETRY: SimDuration = SimDuration::from_secs(5);
/// AWS IoT Jobs: how often a rejected update is re-sent before the device gives up.
pub const OTA_MAX_UPDATE_RETRIES: u8 = 3;
/// HTTP downloads in progress at once, whole process, unless the scenario says otherwise.
pub const OTA_MAX_DOWNLOADS: u32 = 64;
pub(crate) fn ota_max_downloads() -> u32 {
    OTA_MAX_DOWNLOADS
}
