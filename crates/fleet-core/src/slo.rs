//! SLO thresholds: a metric of the run report and a bound it must keep.

use serde::{Deserialize, Serialize};

/// Report values an SLO may name. `fleet-metrics` computes each of them.
pub const METRIC_NAMES: &[&str] = &[
    "latency_us.publish_ack.p50",
    "latency_us.publish_ack.p90",
    "latency_us.publish_ack.p99",
    "latency_us.publish_ack.p999",
    "latency_us.publish_ack.max",
    "latency_us.connect.p50",
    "latency_us.connect.p99",
    "latency_us.connect.max",
    "messages.published",
    "messages.acked",
    "messages.failed",
    "messages.delivered_ratio",
    "connections.failed",
    "generator.max_lag_ms",
    "devices.connected_ratio",
    "modbus.requests",
    "modbus.exceptions",
    "modbus.silent",
    "modbus.malformed_frames",
    "modbus.service_us.p50",
    "modbus.service_us.p99",
    "modbus.service_us.max",
    "serial.lines_out",
    "serial.bytes_out",
    "serial.commands",
    "serial.command_errors",
    "serial.overruns",
    "serial.open_errors",
    "ota.jobs_received",
    "ota.succeeded",
    "ota.failed",
    "ota.rejected",
    "ota.bricked",
    "ota.rolled_back",
    "ota.reports_lost",
    "ota.rollouts_aborted",
];

pub fn metric_is_known(name: &str) -> bool {
    METRIC_NAMES.contains(&name)
}

/// In JSON (shard results): `{"max": 250000.0}` or `{"min": 0.99}`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SloBound {
    Max(f64),
    Min(f64),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SloSpec {
    pub name: String,
    pub metric: String,
    pub bound: SloBound,
}

impl SloSpec {
    pub fn limit(&self) -> f64 {
        match self.bound {
            SloBound::Max(v) | SloBound::Min(v) => v,
        }
    }
    pub fn holds(&self, value: f64) -> bool {
        match self.bound {
            SloBound::Max(max) => value <= max,
            SloBound::Min(min) => value >= min,
        }
    }
}
