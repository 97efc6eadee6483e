//! fleet-metrics: what a run measured.
//!
//! Each shard owns a `ShardMetrics` (counters and HdrHistograms, no locks). Once a second it
//! sends a `ShardReport` (cumulative counters, the interval's histograms) to the collector, which
//! merges them into a `FleetSnapshot` for progress lines, the TUI and the final `RunReport`.
//! Latency is measured from the *scheduled* send time, so a generator that falls behind shows up
//! as latency (coordinated omission corrected) and as lag.

mod counters;
mod histogram;
pub mod live;
pub mod modbus;
pub mod ota;
mod report;
pub mod serial;
mod snapshot;

pub use counters::Counters;
pub use histogram::{LATENCY_MAX_US, LatencyHistogram, Percentiles};
pub use live::{
    Command, CommandAck, DeviceDetail, ErrorKind, FaultRequest, FleetPort, LiveEvent,
    LiveEventKind, PortError, RolloutRequest, RunMeta,
};
pub use modbus::ModbusCounters;
pub use ota::{OtaCounters, RolloutReport};
pub use report::{OtaInputs, ProcessStats, RunInfo, RunReport, SloResult, evaluate_slos};
pub use serial::SerialCounters;
pub use snapshot::{
    Collector, FleetSnapshot, STATE_COUNT, ShardLoad, ShardMetrics, ShardReport, SnapshotHistograms,
};
