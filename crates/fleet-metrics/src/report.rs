//! The end-of-run report: JSON for machines (`--report`), a summary for people, SLO verdicts.
//! Keys are documented in docs/report.md; SLO metric names are paths into this JSON.

use std::collections::BTreeMap;

use fleet_core::DeviceState;
use fleet_core::slo::SloSpec;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::histogram::Percentiles;
use crate::snapshot::FleetSnapshot;

/// Facts about the run that the metrics do not know.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunInfo {
    pub id: String,
    pub seed: u64,
    pub scenario: String,
    pub scenario_path: String,
    pub clock: String,
    /// The scenario's duration, seconds of (simulated) time.
    pub duration_s: f64,
    /// Wall-clock seconds the run took, ramp-up, drain and shutdown included.
    pub elapsed_s: f64,
    pub shards: u16,
    pub broker: String,
    pub mqtt_version: String,
    pub fleetsim_version: String,
    /// The run stopped early (Ctrl-C / SIGTERM).
    pub interrupted: bool,
    /// Processes whose results this report holds: 1 for a run, the parts merged otherwise.
    #[serde(default = "one")]
    pub processes: u32,
}

fn one() -> u32 {
    1
}

/// What the process cost, read from the OS at the end of the run. Merged results: CPU summed,
/// `rss_peak_bytes` the sum of each process's peak (they may have peaked at different moments:
/// an upper bound of the memory held at once), `open_files_limit` the lowest.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct ProcessStats {
    pub rss_peak_bytes: u64,
    pub cpu_user_s: f64,
    pub cpu_system_s: f64,
    pub open_files_limit: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SloResult {
    pub name: String,
    pub metric: String,
    pub ok: bool,
    /// The measured value; null when the run produced none (then `ok` is false).
    pub value: Option<f64>,
    pub limit: f64,
    /// "max" or "min".
    pub bound: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct DevicesSection {
    pub total: u64,
    pub by_state: BTreeMap<&'static str, u64>,
    pub peak_online: u64,
    /// Devices online when the run's duration ended, over all devices.
    pub connected_ratio: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MessagesSection {
    pub published: u64,
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub in_flight: u64,
    pub buffered: u64,
    /// acked / published (1.0 when nothing was published).
    pub delivered_ratio: f64,
    pub failed_by_reason: BTreeMap<&'static str, u64>,
    /// published - (acked + in_flight + buffered + failed): 0 when every message is accounted.
    pub unaccounted: i64,
    /// Devices whose own messages do not add up that way (0 when every device's do).
    pub devices_unaccounted: u64,
    pub retransmits: u64,
    pub flushed_from_buffer: u64,
    pub bytes_sent: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConnectionsSection {
    pub attempts: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub skipped_no_link: u64,
    pub link_drops: u64,
    pub sessions_lost: u64,
    pub malformed_packets: u64,
    /// Devices that had a session at least once.
    pub first_connects: u64,
    /// When the last of them got its first session (seconds of run time).
    pub last_first_connect_s: f64,
    /// first_connects / last_first_connect_s: the fleet's connect rate (with ramp mode "all",
    /// what the broker and this client sustain).
    pub first_connect_rate_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CommandsSection {
    pub received: u64,
    pub rejected: u64,
    pub reboots: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConnectLatency {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    /// Connections per latency bucket, log scale: `[up_to_us, count]` from 1 ms doubling to
    /// about 8 s, the last bucket open-ended. A reconnect storm shows as a second hump.
    pub histogram: Vec<(u64, u64)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LatencySection {
    pub publish_ack: Percentiles,
    pub connect: ConnectLatency,
}

#[derive(Clone, Debug, Serialize)]
pub struct GeneratorSection {
    /// True when a shard fell behind its schedule by more than `saturation_threshold_ms`.
    pub saturated: bool,
    pub saturation_threshold_ms: f64,
    pub max_lag_ms: f64,
    pub lag_p99_ms: f64,
    pub steps: u64,
    pub steps_per_s: f64,
}

/// The Modbus counters (requests by function, exceptions by code, every fault), the
/// exceptions' total, and the service time.
#[derive(Clone, Debug, Serialize)]
pub struct ModbusSection {
    #[serde(flatten)]
    pub counters: crate::modbus::ModbusCounters,
    /// Exception responses in all (`exceptions_by_code` summed).
    pub exceptions: u64,
    /// Request arrival to answer (injected delay included), microseconds.
    pub service_us: Percentiles,
}

impl ModbusSection {
    fn from_snapshot(s: &FleetSnapshot) -> ModbusSection {
        ModbusSection {
            counters: s.modbus,
            exceptions: s.modbus.exceptions_total(),
            service_us: s.modbus_service,
        }
    }
}

/// Firmware updates: what the devices did, the update stages and versions at the end.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OtaSection {
    #[serde(flatten)]
    pub counters: crate::ota::OtaCounters,
    /// Devices per update stage at the end of the run.
    pub states: BTreeMap<&'static str, u64>,
    /// Devices per firmware version at the end of the run ("model version" -> count).
    pub versions: BTreeMap<String, u64>,
    /// Rollouts that aborted.
    pub rollouts_aborted: u64,
}

/// What the report needs beyond the snapshots: the fleet's version labels and the rollouts.
#[derive(Clone, Debug, Default)]
pub struct OtaInputs {
    pub version_labels: Vec<String>,
    pub rollouts: Vec<crate::ota::RolloutReport>,
}

/// One slice of a fleet run as several processes (`--shard K/N`), in a merged report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PartReport {
    /// `K/N`.
    pub shard: String,
    /// Devices in the slice (the sum of its ranges).
    pub devices: u64,
    /// The slice's device ids per cohort, in the cohorts' (and ids') order: `[first, end)`
    /// (end excluded). In JSON a map {"cohort": [first, end]}.
    #[serde(serialize_with = "ranges_map")]
    pub ranges: Vec<(String, [u32; 2])>,
    /// What the process cost; null when its results are missing.
    pub rss_peak_bytes: Option<u64>,
    pub cpu_s: Option<f64>,
    pub interrupted: Option<bool>,
    /// `ok`, or `missing: <why>`.
    pub status: String,
}

fn ranges_map<S: serde::Serializer>(v: &[(String, [u32; 2])], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(v.len()))?;
    for (cohort, range) in v {
        m.serialize_entry(cohort, range)?;
    }
    m.end()
}

impl PartReport {
    pub fn is_missing(&self) -> bool {
        self.status != PART_OK
    }
}

/// `PartReport::status` of a slice whose results were merged.
pub const PART_OK: &str = "ok";

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub run: RunInfo,
    pub devices: DevicesSection,
    pub messages: MessagesSection,
    pub connections: ConnectionsSection,
    pub commands: CommandsSection,
    pub latency_us: LatencySection,
    pub generator: GeneratorSection,
    pub modbus: ModbusSection,
    pub serial: crate::serial::SerialCounters,
    pub ota: OtaSection,
    /// Rollouts fleetsim ran itself (`[[rollouts]]`, `fleetsim rollout`).
    pub rollouts: Vec<crate::ota::RolloutReport>,
    pub process: ProcessStats,
    /// Notable events (the latest `live::EVENTS_KEPT`): faults that fired, commands given by
    /// hand (a run steered by hand is not reproducible from its seed: these say what was done),
    /// reconnect storms, rollout waves, SLO breaches seen while running.
    pub events: Vec<crate::live::LiveEvent>,
    pub slo: Vec<SloResult>,
    /// The slices of a run as several processes (`fleetsim report merge`, `run --processes`),
    /// present or missing; empty for a run of one process.
    pub parts: Vec<PartReport>,
    /// False when a slice's results are missing: the figures cover only the slices present.
    pub complete: bool,
    /// Every SLO met, and (merged results) no slice missing.
    pub ok: bool,
}

impl RunReport {
    /// Builds the report. `at_end` is the snapshot taken when the duration ended (before
    /// shutdown), `last` the final one (everything drained and counted).
    pub fn build(
        run: RunInfo,
        at_end: &FleetSnapshot,
        last: &FleetSnapshot,
        process: ProcessStats,
        saturation_threshold_us: u64,
        slos: &[SloSpec],
        ota: OtaInputs,
    ) -> RunReport {
        let mut versions = BTreeMap::new();
        for (label, n) in ota.version_labels.iter().zip(&last.versions) {
            if *n > 0 {
                *versions.entry(label.clone()).or_insert(0) += n;
            }
        }
        let ota_section = OtaSection {
            counters: last.ota,
            states: crate::ota::stage_map(&last.ota_stages),
            versions,
            rollouts_aborted: ota.rollouts.iter().filter(|r| r.state == "aborted").count() as u64,
        };
        let t = &last.totals;
        let by_state = DeviceState::ALL
            .iter()
            .map(|s| (s.as_str(), at_end.state(*s)))
            .collect();
        let total = last.devices_total;
        let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
        let failed_by_reason = BTreeMap::from(t.failed_by_reason());
        let steps_per_s = if run.elapsed_s > 0.0 {
            t.steps as f64 / run.elapsed_s
        } else {
            0.0
        };
        let mut report = RunReport {
            devices: DevicesSection {
                total,
                by_state,
                peak_online: last.peak_online,
                connected_ratio: ratio(at_end.state(DeviceState::Online), total),
            },
            messages: MessagesSection {
                published: t.published,
                sent: t.sent,
                acked: t.acked,
                failed: t.failed(),
                in_flight: last.in_flight,
                buffered: last.buffered,
                delivered_ratio: ratio(t.acked, t.published),
                failed_by_reason,
                unaccounted: t.published as i64
                    - (t.acked + last.in_flight + last.buffered + t.failed()) as i64,
                devices_unaccounted: last.devices_unaccounted,
                retransmits: t.retransmits,
                flushed_from_buffer: t.flushed,
                bytes_sent: t.bytes_sent,
            },
            connections: ConnectionsSection {
                attempts: t.connect_attempts,
                succeeded: t.connects_ok,
                failed: t.connects_failed,
                skipped_no_link: t.connects_no_link,
                link_drops: t.link_drops,
                sessions_lost: t.sessions_lost,
                malformed_packets: t.malformed_packets,
                first_connects: last.first_connects,
                last_first_connect_s: last.last_first_connect_s,
                first_connect_rate_per_s: if last.last_first_connect_s > 0.0 {
                    last.first_connects as f64 / last.last_first_connect_s
                } else {
                    0.0
                },
            },
            commands: CommandsSection {
                received: t.commands,
                rejected: t.commands_rejected,
                reboots: t.reboots,
            },
            latency_us: LatencySection {
                publish_ack: last.publish_ack,
                connect: ConnectLatency {
                    count: last.connect.count,
                    p50: last.connect.p50,
                    p90: last.connect.p90,
                    p99: last.connect.p99,
                    max: last.connect.max,
                    histogram: last.histograms.connect_us.log_buckets(1_000, 2.0, 14),
                },
            },
            generator: GeneratorSection {
                saturated: last.max_lag_us > saturation_threshold_us,
                saturation_threshold_ms: saturation_threshold_us as f64 / 1e3,
                max_lag_ms: last.max_lag_us as f64 / 1e3,
                lag_p99_ms: last.lag_p99_us as f64 / 1e3,
                steps: t.steps,
                steps_per_s,
            },
            modbus: ModbusSection::from_snapshot(last),
            serial: last.serial,
            ota: ota_section,
            rollouts: ota.rollouts,
            process,
            events: last.events.clone(),
            run,
            slo: Vec::new(),
            parts: Vec::new(),
            complete: true,
            ok: true,
        };
        report.slo = evaluate_slos(&report, slos);
        report.ok = report.slo.iter().all(|s| s.ok);
        report
    }

    /// Adds the slices of a run as several processes; a missing one makes the report
    /// incomplete and not ok.
    pub fn set_parts(&mut self, parts: Vec<PartReport>) {
        self.complete = parts.iter().all(|p| !p.is_missing());
        self.parts = parts;
        self.ok = self.complete && self.slo.iter().all(|s| s.ok);
    }

    /// Slices whose results are missing.
    pub fn missing_parts(&self) -> impl Iterator<Item = &PartReport> {
        self.parts.iter().filter(|p| p.is_missing())
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Looks up a dotted path (`latency_us.publish_ack.p99`) in the report.
pub fn metric_value(report: &Value, path: &str) -> Option<f64> {
    let mut v = report;
    for part in path.split('.') {
        v = v.get(part)?;
    }
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

pub fn evaluate_slos(report: &RunReport, slos: &[SloSpec]) -> Vec<SloResult> {
    let json = report.to_json();
    slos.iter()
        .map(|s| {
            let value = metric_value(&json, &s.metric);
            // A latency SLO over zero samples is not met: nothing was measured.
            let measured = match s.metric.as_str() {
                m if m.starts_with("latency_us.publish_ack") => {
                    report.latency_us.publish_ack.count > 0
                }
                m if m.starts_with("latency_us.connect") => report.latency_us.connect.count > 0,
                _ => true,
            };
            let value = if measured { value } else { None };
            SloResult {
                name: s.name.clone(),
                metric: s.metric.clone(),
                ok: value.is_some_and(|v| s.holds(v)),
                value,
                limit: s.limit(),
                bound: match s.bound {
                    fleet_core::slo::SloBound::Max(_) => "max",
                    fleet_core::slo::SloBound::Min(_) => "min",
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Collector, ShardMetrics};
    use fleet_core::slo::{METRIC_NAMES, SloBound};

    fn report(slos: &[SloSpec]) -> RunReport {
        let mut c = Collector::new(1, 10);
        let mut m = ShardMetrics::default();
        m.counters.published = 100;
        m.counters.acked = 98;
        m.counters.failed_offline = 2;
        m.states[DeviceState::Online.index()] = 10;
        for v in 1..=100 {
            m.publish_ack_us.record(v * 1000);
        }
        m.connect_us.record(5000);
        c.ingest(m.take_report(0, 0, true));
        let s = c.snapshot(1.0);
        RunReport::build(
            RunInfo::default(),
            &s,
            &s,
            ProcessStats::default(),
            1_000_000,
            slos,
            OtaInputs::default(),
        )
    }

    #[test]
    fn every_slo_metric_name_is_a_number_in_the_report() {
        let json = report(&[]).to_json();
        for name in METRIC_NAMES {
            assert!(
                metric_value(&json, name).is_some(),
                "{name} is not in the report"
            );
        }
    }

    #[test]
    fn slos_pass_and_fail_on_their_bounds() {
        let slos = [
            SloSpec {
                name: "p99".into(),
                metric: "latency_us.publish_ack.p99".into(),
                bound: SloBound::Max(50_000.0),
            },
            SloSpec {
                name: "delivered".into(),
                metric: "messages.delivered_ratio".into(),
                bound: SloBound::Min(0.95),
            },
        ];
        let r = report(&slos);
        assert!(!r.slo[0].ok, "p99 of 1..100 ms is 99 ms > 50 ms");
        assert!(r.slo[1].ok);
        assert!(!r.ok);
        assert_eq!(r.messages.failed, 2);
        assert_eq!(r.devices.connected_ratio, 1.0);
    }
}
