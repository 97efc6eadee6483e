use fleet_core::DeviceState;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::counters::Counters;
use crate::histogram::{LatencyHistogram, Percentiles};
use crate::modbus::ModbusCounters;
use crate::ota::{OTA_STAGE_COUNT, OtaCounters};
use crate::serial::SerialCounters;

/// Number of device states (`DeviceState::ALL`).
pub const STATE_COUNT: usize = DeviceState::ALL.len();

/// The metrics a shard records as it runs. Owned by the shard thread: no locks.
#[derive(Clone, Debug, Default)]
pub struct ShardMetrics {
    pub counters: Counters,
    /// Publish -> ack latency (QoS >= 1), from the scheduled send time. This interval only.
    pub publish_ack_us: LatencyHistogram,
    /// Connect attempt -> CONNACK. This interval only.
    pub connect_us: LatencyHistogram,
    /// How late the shard ran its deadlines. This interval only.
    pub lag_us: LatencyHistogram,
    /// Modbus slaves: counters, and the service time from a request's arrival to its answer
    /// (injected delay included). This interval only.
    pub modbus: ModbusCounters,
    pub modbus_service_us: LatencyHistogram,
    /// Serial ports (cumulative).
    pub serial: SerialCounters,
    /// Firmware updates (cumulative).
    pub ota: OtaCounters,
    /// Gauges: devices per update stage, and per firmware version (index into the fleet's
    /// version labels, `Fleet::version_labels`).
    pub ota_stages: [u64; OTA_STAGE_COUNT],
    pub versions: Vec<u64>,
    pub max_lag_us: u64,
    /// Devices that have had a session at least once, and when the last of them got its first.
    pub first_connects: u64,
    pub last_first_connect_us: u64,
    /// Gauges, set by the shard before each report.
    pub states: [u64; STATE_COUNT],
    pub low_battery: u64,
    pub in_flight: u64,
    pub buffered: u64,
    /// Devices whose own telemetry does not add up (published != acked + in flight + buffered
    /// + dropped): 0 unless fleetsim lost count of a message.
    pub devices_unaccounted: u64,
}

/// What a shard sends to the collector once a second: its metrics, with the interval's
/// histograms (the shard's own start again empty).
#[derive(Clone, Debug)]
pub struct ShardReport {
    pub shard: u16,
    /// The shard's simulated time (for virtual runs, how far it has got).
    pub sim_time_us: u64,
    pub metrics: ShardMetrics,
    /// The shard has finished its run; this is its last report.
    pub done: bool,
}

impl ShardMetrics {
    pub fn record_lag(&mut self, lag_us: u64) {
        self.lag_us.record(lag_us);
        self.max_lag_us = self.max_lag_us.max(lag_us);
    }

    /// The report for this interval; the interval's histograms start again empty.
    pub fn take_report(&mut self, shard: u16, sim_time_us: u64, done: bool) -> ShardReport {
        let report = ShardReport {
            shard,
            sim_time_us,
            metrics: self.clone(),
            done,
        };
        self.publish_ack_us.reset();
        self.connect_us.reset();
        self.lag_us.reset();
        self.modbus_service_us.reset();
        report
    }

    /// A report that could not be sent (the collector's queue was full) is folded back in, so
    /// nothing is lost: it goes out with the next one.
    pub fn restore(&mut self, r: ShardReport) {
        self.publish_ack_us.add(&r.metrics.publish_ack_us);
        self.connect_us.add(&r.metrics.connect_us);
        self.lag_us.add(&r.metrics.lag_us);
        self.modbus_service_us.add(&r.metrics.modbus_service_us);
    }
}

/// One shard's load, as the snapshot shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardLoad {
    pub shard: u16,
    /// The process it belongs to (views that merge several processes; 0 otherwise).
    #[serde(default)]
    pub process: u32,
    pub devices: u64,
    pub online: u64,
    pub sim_time_s: f64,
    pub max_lag_ms: f64,
    pub steps: u64,
    pub done: bool,
}

/// The run's latency histograms (whole run, and publish -> ack over the last interval): the
/// TUI draws them, `/metrics` exports their buckets, `top --attach` merges them losslessly.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SnapshotHistograms {
    pub publish_ack_us: LatencyHistogram,
    pub publish_ack_interval_us: LatencyHistogram,
    pub connect_us: LatencyHistogram,
    pub modbus_service_us: LatencyHistogram,
}

/// The whole fleet at one moment: what the progress line, the TUI, `/metrics` and the report
/// read. Its size does not grow with the number of devices.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FleetSnapshot {
    #[serde(default)]
    pub run: crate::live::RunMeta,
    /// Simulated time is frozen (`Command::Pause`).
    #[serde(default)]
    pub paused: bool,
    pub elapsed_s: f64,
    /// The slowest shard's simulated time.
    pub sim_time_s: f64,
    pub devices_total: u64,
    /// Devices by state; in JSON a map {"off": n, "online": n, ...}.
    #[serde(serialize_with = "states_map", deserialize_with = "states_from_map")]
    pub states: [u64; STATE_COUNT],
    /// Devices below their profile's low-battery threshold (and not dead).
    #[serde(default)]
    pub low_battery: u64,
    pub totals: Counters,
    pub published_per_s: f64,
    pub acked_per_s: f64,
    /// Connection attempts per second over the last interval.
    #[serde(default)]
    pub connects_per_s: f64,
    pub steps_per_s: f64,
    /// Publish -> ack latency over the last interval, and over the whole run.
    pub publish_ack_interval: Percentiles,
    pub publish_ack: Percentiles,
    pub connect: Percentiles,
    pub modbus: ModbusCounters,
    /// Modbus service time over the whole run, and requests answered per second (last interval).
    pub modbus_service: Percentiles,
    pub modbus_requests_per_s: f64,
    pub serial: SerialCounters,
    pub ota: OtaCounters,
    /// Devices per update stage; in JSON a map {"idle": n, "downloading": n, ...}.
    #[serde(serialize_with = "stages_map", deserialize_with = "stages_from_map")]
    pub ota_stages: [u64; OTA_STAGE_COUNT],
    /// Devices per firmware version, and the versions' labels ("model version").
    pub versions: Vec<u64>,
    #[serde(default)]
    pub version_labels: Vec<String>,
    /// Rollouts fleetsim runs, as the orchestrator sees them now.
    pub rollouts: Vec<crate::ota::RolloutLive>,
    pub lag_interval_p99_us: u64,
    pub lag_p99_us: u64,
    pub max_lag_us: u64,
    pub in_flight: u64,
    pub buffered: u64,
    /// Devices whose telemetry does not add up (see `ShardMetrics::devices_unaccounted`).
    #[serde(default)]
    pub devices_unaccounted: u64,
    pub peak_online: u64,
    /// Devices that have connected at least once, and when the last of them first did.
    pub first_connects: u64,
    pub last_first_connect_s: f64,
    pub shards: Vec<ShardLoad>,
    /// The latest notable events (at most `live::EVENTS_KEPT`), oldest first.
    #[serde(default)]
    pub events: Vec<crate::live::LiveEvent>,
    #[serde(default)]
    pub histograms: SnapshotHistograms,
}

fn states_map<S: Serializer>(v: &[u64; STATE_COUNT], s: S) -> Result<S::Ok, S::Error> {
    let m: std::collections::BTreeMap<&str, u64> = DeviceState::ALL
        .iter()
        .map(|st| (st.as_str(), v[st.index()]))
        .collect();
    m.serialize(s)
}

fn states_from_map<'de, D: Deserializer<'de>>(d: D) -> Result<[u64; STATE_COUNT], D::Error> {
    let m = std::collections::BTreeMap::<String, u64>::deserialize(d)?;
    let mut v = [0u64; STATE_COUNT];
    for st in DeviceState::ALL {
        v[st.index()] = m.get(st.as_str()).copied().unwrap_or(0);
    }
    Ok(v)
}

fn stages_map<S: Serializer>(v: &[u64; OTA_STAGE_COUNT], s: S) -> Result<S::Ok, S::Error> {
    crate::ota::stage_map(v).serialize(s)
}

fn stages_from_map<'de, D: Deserializer<'de>>(d: D) -> Result<[u64; OTA_STAGE_COUNT], D::Error> {
    let m = std::collections::BTreeMap::<String, u64>::deserialize(d)?;
    let mut v = [0u64; OTA_STAGE_COUNT];
    for st in fleet_core::ota::OtaStage::ALL {
        v[st.index()] = m.get(st.as_str()).copied().unwrap_or(0);
    }
    Ok(v)
}

impl FleetSnapshot {
    pub fn state(&self, s: DeviceState) -> u64 {
        self.states[s.index()]
    }
    pub fn shards_done(&self) -> bool {
        !self.shards.is_empty() && self.shards.iter().all(|s| s.done)
    }
}

#[derive(Clone, Debug)]
struct ShardState {
    sim_time_us: u64,
    counters: Counters,
    modbus: ModbusCounters,
    serial: SerialCounters,
    ota: OtaCounters,
    ota_stages: [u64; OTA_STAGE_COUNT],
    versions: Vec<u64>,
    states: [u64; STATE_COUNT],
    low_battery: u64,
    in_flight: u64,
    buffered: u64,
    devices_unaccounted: u64,
    max_lag_us: u64,
    first_connects: u64,
    last_first_connect_us: u64,
    done: bool,
}

/// Merges shard reports into fleet snapshots.
#[derive(Debug)]
pub struct Collector {
    devices_total: u64,
    shards: Vec<Option<ShardState>>,
    publish_ack: LatencyHistogram,
    publish_ack_interval: LatencyHistogram,
    connect: LatencyHistogram,
    lag: LatencyHistogram,
    lag_interval: LatencyHistogram,
    modbus_service: LatencyHistogram,
    prev: Counters,
    prev_modbus_requests: u64,
    prev_elapsed_s: f64,
    peak_online: u64,
    /// Device states each shard reported when the scenario's duration ended.
    end_states: Vec<Option<[u64; STATE_COUNT]>>,
}

impl Collector {
    pub fn new(shards: usize, devices_total: u64) -> Self {
        Collector {
            devices_total,
            shards: vec![None; shards],
            publish_ack: LatencyHistogram::new(),
            publish_ack_interval: LatencyHistogram::new(),
            connect: LatencyHistogram::new(),
            lag: LatencyHistogram::new(),
            lag_interval: LatencyHistogram::new(),
            modbus_service: LatencyHistogram::new(),
            prev: Counters::default(),
            prev_modbus_requests: 0,
            prev_elapsed_s: 0.0,
            peak_online: 0,
            end_states: vec![None; shards],
        }
    }

    pub fn ingest(&mut self, r: ShardReport) {
        let m = &r.metrics;
        self.publish_ack.add(&m.publish_ack_us);
        self.publish_ack_interval.add(&m.publish_ack_us);
        self.connect.add(&m.connect_us);
        self.lag.add(&m.lag_us);
        self.lag_interval.add(&m.lag_us);
        self.modbus_service.add(&m.modbus_service_us);
        if let Some(slot) = self.shards.get_mut(usize::from(r.shard)) {
            *slot = Some(ShardState {
                sim_time_us: r.sim_time_us,
                counters: m.counters,
                modbus: m.modbus,
                serial: m.serial,
                ota: m.ota,
                ota_stages: m.ota_stages,
                versions: m.versions.clone(),
                states: m.states,
                low_battery: m.low_battery,
                in_flight: m.in_flight,
                buffered: m.buffered,
                devices_unaccounted: m.devices_unaccounted,
                max_lag_us: m.max_lag_us,
                first_connects: m.first_connects,
                last_first_connect_us: m.last_first_connect_us,
                done: r.done,
            });
        }
        // A shard that has finished counts with its devices as they were at the end of the
        // duration, not after shutdown: virtual shards do not finish together, and one that
        // shut down early would otherwise hide its devices from the peak.
        let online: u64 = self
            .shards
            .iter()
            .zip(&self.end_states)
            .map(|(s, end)| match (s, end) {
                (Some(s), Some(end)) if s.done => end[DeviceState::Online.index()],
                (Some(s), _) => s.states[DeviceState::Online.index()],
                (None, _) => 0,
            })
            .sum();
        self.peak_online = self.peak_online.max(online);
    }

    /// Ingests the report a shard sent when the scenario's duration ended; its device states are
    /// kept for `snapshot_at_end` (other shards may already have shut down by then).
    pub fn ingest_ended(&mut self, r: ShardReport) {
        if let Some(slot) = self.end_states.get_mut(usize::from(r.shard)) {
            *slot = Some(r.metrics.states);
        }
        self.ingest(r);
    }

    /// True when every shard has reported the end of the duration.
    pub fn all_ended(&self) -> bool {
        self.end_states.iter().all(Option::is_some)
    }

    /// A snapshot whose device states are those at the end of the duration.
    pub fn snapshot_at_end(&mut self, elapsed_s: f64) -> FleetSnapshot {
        let mut snap = self.snapshot(elapsed_s);
        let mut states = [0u64; STATE_COUNT];
        for s in self.end_states.iter().flatten() {
            for (a, b) in states.iter_mut().zip(s) {
                *a += b;
            }
        }
        snap.states = states;
        snap
    }

    /// The fleet now; starts a new interval.
    pub fn snapshot(&mut self, elapsed_s: f64) -> FleetSnapshot {
        let mut snap = FleetSnapshot {
            elapsed_s,
            devices_total: self.devices_total,
            ..FleetSnapshot::default()
        };
        let mut min_sim = u64::MAX;
        for (i, s) in self.shards.iter().enumerate() {
            let Some(s) = s else {
                snap.shards.push(ShardLoad {
                    shard: i as u16,
                    ..ShardLoad::default()
                });
                min_sim = 0;
                continue;
            };
            snap.totals.add(&s.counters);
            snap.modbus.add(&s.modbus);
            snap.serial.add(&s.serial);
            snap.ota.add(&s.ota);
            for (a, b) in snap.ota_stages.iter_mut().zip(s.ota_stages) {
                *a += b;
            }
            if snap.versions.len() < s.versions.len() {
                snap.versions.resize(s.versions.len(), 0);
            }
            for (a, b) in snap.versions.iter_mut().zip(&s.versions) {
                *a += b;
            }
            for (a, b) in snap.states.iter_mut().zip(s.states) {
                *a += b;
            }
            snap.low_battery += s.low_battery;
            snap.in_flight += s.in_flight;
            snap.buffered += s.buffered;
            snap.devices_unaccounted += s.devices_unaccounted;
            snap.max_lag_us = snap.max_lag_us.max(s.max_lag_us);
            snap.first_connects += s.first_connects;
            snap.last_first_connect_s = snap
                .last_first_connect_s
                .max(s.last_first_connect_us as f64 / 1e6);
            min_sim = min_sim.min(s.sim_time_us);
            snap.shards.push(ShardLoad {
                shard: i as u16,
                process: 0,
                devices: s.states.iter().sum(),
                online: s.states[DeviceState::Online.index()],
                sim_time_s: s.sim_time_us as f64 / 1e6,
                max_lag_ms: s.max_lag_us as f64 / 1e3,
                steps: s.counters.steps,
                done: s.done,
            });
        }
        snap.sim_time_s = if min_sim == u64::MAX {
            0.0
        } else {
            min_sim as f64 / 1e6
        };
        let dt = elapsed_s - self.prev_elapsed_s;
        if dt > 0.0 {
            snap.published_per_s =
                (snap.totals.published - self.prev.published.min(snap.totals.published)) as f64
                    / dt;
            snap.acked_per_s =
                (snap.totals.acked - self.prev.acked.min(snap.totals.acked)) as f64 / dt;
            snap.connects_per_s = (snap.totals.connect_attempts
                - self.prev.connect_attempts.min(snap.totals.connect_attempts))
                as f64
                / dt;
            snap.steps_per_s =
                (snap.totals.steps - self.prev.steps.min(snap.totals.steps)) as f64 / dt;
            snap.modbus_requests_per_s =
                (snap.modbus.requests - self.prev_modbus_requests.min(snap.modbus.requests)) as f64
                    / dt;
        }
        self.prev_modbus_requests = snap.modbus.requests;
        snap.modbus_service = self.modbus_service.percentiles();
        snap.publish_ack_interval = self.publish_ack_interval.percentiles();
        snap.publish_ack = self.publish_ack.percentiles();
        snap.connect = self.connect.percentiles();
        snap.histograms = SnapshotHistograms {
            publish_ack_us: self.publish_ack.clone(),
            publish_ack_interval_us: self.publish_ack_interval.clone(),
            connect_us: self.connect.clone(),
            modbus_service_us: self.modbus_service.clone(),
        };
        snap.lag_interval_p99_us = self.lag_interval.quantile(0.99);
        snap.lag_p99_us = self.lag.quantile(0.99);
        snap.peak_online = self.peak_online;
        self.prev = snap.totals;
        self.prev_elapsed_s = elapsed_s;
        self.publish_ack_interval.reset();
        self.lag_interval.reset();
        snap
    }

    /// The whole run's publish -> ack histogram.
    pub fn publish_ack(&self) -> &LatencyHistogram {
        &self.publish_ack
    }
    pub fn connect(&self) -> &LatencyHistogram {
        &self.connect
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_that_could_not_be_sent_is_not_lost() {
        let mut m = ShardMetrics::default();
        m.publish_ack_us.record(100);
        let r = m.take_report(0, 0, false);
        assert_eq!(m.publish_ack_us.count(), 0);
        m.restore(r);
        m.publish_ack_us.record(200);
        let r = m.take_report(0, 0, false);
        assert_eq!(r.metrics.publish_ack_us.count(), 2);
    }

    #[test]
    fn snapshots_sum_shards_and_compute_rates() {
        let mut c = Collector::new(2, 10);
        for shard in 0..2 {
            let mut m = ShardMetrics::default();
            m.counters.published = 50;
            m.states[DeviceState::Online.index()] = 5;
            m.publish_ack_us.record(1000);
            c.ingest(m.take_report(shard, 1_000_000, false));
        }
        let s = c.snapshot(2.0);
        assert_eq!(s.totals.published, 100);
        assert_eq!(s.state(DeviceState::Online), 10);
        assert_eq!(s.published_per_s, 50.0);
        assert_eq!(s.publish_ack.count, 2);
        assert_eq!(s.peak_online, 10);
    }
}
