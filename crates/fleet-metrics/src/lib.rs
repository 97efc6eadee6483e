//! fleet-metrics: what a run measured.
//!
//! Each shard owns a `ShardMetrics` (counters and HdrHistograms, no locks). Once a second it
//! sends a `ShardReport` (cumulative counters, the interval's histograms) to the collector, which
//! merges them into a `FleetSnapshot` for progress lines, the TUI and the final `RunReport`.
//! Latency is measured from the *scheduled* send time, so a generator that falls behind shows up
//! as latency (coordinated omission corrected) and as lag.

mod counters;
pub mod detect;
mod histogram;
pub mod live;
pub mod merge;
pub mod modbus;
pub mod ota;
mod report;
pub mod results;
pub mod serial;
mod snapshot;

pub use counters::Counters;

/// `1234567` -> `1,234,567` (summaries, the dashboard, event lines).
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
pub use histogram::{LATENCY_MAX_US, LatencyHistogram, Percentiles};
pub use live::{
    Command, CommandAck, DeviceDetail, ErrorKind, FaultRequest, FleetPort, LiveEvent,
    LiveEventKind, PortError, RolloutRequest, RunMeta,
};
pub use merge::merge_snapshots;
pub use modbus::ModbusCounters;
pub use ota::{OtaCounters, RolloutReport};
pub use report::{
    OtaInputs, PART_OK, PartReport, ProcessStats, RunInfo, RunReport, SloResult, evaluate_slos,
};
pub use results::{
    MergedResults, MissingSlice, ResultsError, ResultsWriter, ShardPart, ShardResults,
    merge_results, read_results,
};
pub use serial::SerialCounters;
pub use snapshot::{
    Collector, FleetSnapshot, STATE_COUNT, ShardLoad, ShardMetrics, ShardReport, SnapshotHistograms,
};
