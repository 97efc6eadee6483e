//! What a live view of a run sees and may ask: the run's identity, notable events as they
//! happen, one device in detail, and the commands that steer a run (pause, resume, faults,
//! rollouts). The TUI, the control API and `fleetsim top --attach` share these types; the
//! `FleetPort` trait is the one door to a run, local (the engine) or remote (HTTP).

use serde::{Deserialize, Serialize};

use crate::snapshot::FleetSnapshot;

/// Notable events a snapshot carries (the latest ones).
pub const EVENTS_KEPT: usize = 200;

/// What a run is: fixed for its whole length.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    pub run_id: String,
    pub scenario: String,
    pub seed: u64,
    /// "wall" or "virtual".
    pub clock: String,
    /// The scenario's duration (simulated time; time spent paused does not count).
    pub duration_s: f64,
    pub shards: u16,
    pub broker: String,
    /// Processes this view merges (1 for one run; `top --attach` merges several).
    pub processes: u32,
    /// Where the view comes from ("local", or the URLs attached to).
    pub source: String,
}

/// What kind of thing happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveEventKind {
    /// A fault the scenario scheduled (outage, reboot wave, Modbus fault, unplug) fired.
    Fault,
    /// Someone steered the run (pause, resume, a fault or rollout from the TUI or the API).
    Control,
    /// Many devices reconnecting at once, or many sessions lost at once.
    Storm,
    /// A rollout started, moved to its next wave, completed or aborted.
    Rollout,
    /// An SLO that would fail if the run ended now (or that recovered).
    Slo,
    /// A shard fell behind its deadlines, or finished.
    Shard,
}

impl LiveEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LiveEventKind::Fault => "fault",
            LiveEventKind::Control => "control",
            LiveEventKind::Storm => "storm",
            LiveEventKind::Rollout => "rollout",
            LiveEventKind::Slo => "slo",
            LiveEventKind::Shard => "shard",
        }
    }
}

/// One notable event of the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiveEvent {
    /// Numbered from 1 in the order they were noticed (per process).
    pub seq: u64,
    /// Wall-clock seconds since the run started.
    pub elapsed_s: f64,
    /// Simulated time of the run then.
    pub sim_time_s: f64,
    pub kind: LiveEventKind,
    pub message: String,
}

/// One line of a device's recent history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceEventLine {
    pub sim_time_s: f64,
    pub text: String,
}

/// A sensor's latest value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SensorReading {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

/// One device, in detail (the TUI's drill-down, `GET /api/v1/devices/{id}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceDetail {
    /// The device's number in the run (as `{id}` in templates).
    pub id: u32,
    /// Its rendered id (client id, `device_id` in the telemetry).
    pub device_id: String,
    pub cohort: String,
    pub profile: String,
    pub shard: u16,
    /// The shard's simulated time when the device was read.
    pub sim_time_s: f64,
    /// off, booting, connecting, online, offline, dead.
    pub state: String,
    pub powered: bool,
    /// Its radio link is up (not in an outage or a link drop).
    pub link_up: bool,
    /// Seconds since it last powered on or rebooted (tracked for devices with a register map or
    /// a serial port; None for the others).
    pub uptime_s: Option<f64>,
    pub battery_percent: Option<f64>,
    pub low_battery: bool,
    pub sensors: Vec<SensorReading>,
    /// Telemetry sequence number of its last message.
    pub seq: u64,
    /// Telemetry waiting in its offline buffer.
    pub buffered: u64,
    pub interval_s: f64,
    /// Running firmware ("model version"), its slot, and the update stage.
    pub firmware: String,
    pub slot: String,
    pub ota_stage: String,
    /// Its latest events, oldest first (recorded from the first time it was looked at).
    pub recent: Vec<DeviceEventLine>,
    /// Simulated time from which `recent` is complete.
    pub watched_since_s: f64,
}

/// A fault to inject now: the fields of a scenario's `[[events]]` entry without `at`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    /// outage, partition, latency_spike, reboot_wave, unplug, modbus_fault.
    pub kind: String,
    /// Share of the selected devices (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// Every kind but reboot_wave: how long ("30s", "5m").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// reboot_wave: over how long the reboots spread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohort: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception_code: Option<u8>,
    /// latency_spike: added to every message ("800ms"); modbus_fault "delay": to every answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
}

/// A rollout to start now: the fields of a scenario's `[[rollouts]]` entry (`at` is ignored:
/// it starts at the next evaluation).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    pub name: String,
    pub target_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cohorts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waves: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_soak: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluate_every: Option<String>,
    /// Abort when this share (percent) of the executed jobs failed...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_failure_percent: Option<f64>,
    /// ...once at least this many executed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_min_executed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// What the TUI and the API may ask of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Command {
    /// Freeze simulated time: devices stop stepping (sessions are kept alive); the scenario's
    /// remaining duration waits.
    Pause,
    Resume,
    Fault(FaultRequest),
    Rollout(RolloutRequest),
}

impl Command {
    /// Short description for event logs and confirmations.
    pub fn describe(&self) -> String {
        match self {
            Command::Pause => "pause".into(),
            Command::Resume => "resume".into(),
            Command::Fault(f) => {
                let mut s = f.kind.clone();
                if let Some(p) = f.fraction {
                    s.push_str(&format!(" of {}%", trim(p * 100.0)));
                }
                if let Some(c) = &f.cohort {
                    s.push_str(&format!(" of cohort {c}"));
                }
                if let Some(d) = &f.duration {
                    s.push_str(&format!(" for {d}"));
                }
                if let Some(d) = &f.spread {
                    s.push_str(&format!(" over {d}"));
                }
                if let Some(d) = &f.delay {
                    s.push_str(&format!(" (+{d})"));
                }
                s
            }
            Command::Rollout(r) => {
                let mut s = format!("rollout {:?} of {}", r.name, r.target_version);
                if let Some(f) = r.fraction {
                    s.push_str(&format!(" to {}% of the targets", trim(f * 100.0)));
                }
                s
            }
        }
    }
}

fn trim(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A command was carried out (or handed to every shard).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandAck {
    pub message: String,
    /// The run's simulated time when the command was handed to the shards (the slowest
    /// shard's, as in a snapshot): when it applies.
    pub sim_time_s: f64,
}

/// Why a request failed; maps onto HTTP status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is malformed or names something invalid (400).
    BadRequest,
    /// No such device (404).
    NotFound,
    /// Not possible in the run's current state (409): resume when not paused, a rollout on the
    /// virtual clock, a run that has ended.
    Conflict,
    /// The run could not answer in time (503).
    Unavailable,
}

impl ErrorKind {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Unavailable => 503,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct PortError {
    pub kind: ErrorKind,
    pub message: String,
}

impl PortError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> PortError {
        PortError {
            kind,
            message: message.into(),
        }
    }
}

/// The one door to a run, for the TUI and the API: the engine's control (local) or an HTTP
/// client (attached). Calls may block for a short while (a device lookup waits for its
/// shard); callers on an async runtime use `spawn_blocking`.
pub trait FleetPort: Send + Sync {
    /// The latest snapshot (None before the first one).
    fn snapshot(&self) -> Option<std::sync::Arc<FleetSnapshot>>;
    fn command(&self, cmd: Command) -> Result<CommandAck, PortError>;
    /// A device by its number in the run or its rendered id (`env-000042`).
    fn device(&self, key: &str) -> Result<DeviceDetail, PortError>;
}
