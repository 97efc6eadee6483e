//! Merging the snapshots of several processes (`fleetsim top --attach URL...`) into what one
//! process running all their devices would have shown.
//!
//! Exact where the snapshot carries enough to be exact: counters, gauges and rates add, the
//! latency histograms add losslessly (HdrHistogram `add`) and every percentile is recomputed
//! from the merged histograms. Two things cannot be merged exactly and are bounded instead:
//! - the generator lag p99s (`lag_p99_us`, `lag_interval_p99_us`): the snapshot carries no lag
//!   histogram, and percentiles of parts do not combine, so the merge takes the worst part's
//!   (an upper bound of the true p99);
//! - `peak_online`: the parts peaked at different moments, so the sum is an upper bound.
//!
//! A part whose histograms were left out (`GET /api/v1/snapshot?histograms=false`) still
//! contributes its percentiles: when a merged histogram is empty but the parts counted values,
//! the merged percentiles are the parts' worst (count summed, mean weighted by count).

use std::collections::BTreeSet;

use crate::histogram::{LatencyHistogram, Percentiles};
use crate::live::{EVENTS_KEPT, RunMeta};
use crate::snapshot::{FleetSnapshot, SnapshotHistograms};

/// What one process would have shown for the union of the parts' devices. `parts` are
/// (source label, e.g. the URL it came from; snapshot). No parts: an empty snapshot.
pub fn merge_snapshots(parts: &[(String, FleetSnapshot)]) -> FleetSnapshot {
    let several = parts.len() > 1;
    let mut out = FleetSnapshot {
        run: merge_run(parts),
        sim_time_s: parts
            .iter()
            .map(|(_, s)| s.sim_time_s)
            .reduce(f64::min)
            .unwrap_or(0.0),
        ..FleetSnapshot::default()
    };
    let mut hist = SnapshotHistograms::default();
    for (index, (label, s)) in parts.iter().enumerate() {
        out.paused |= s.paused;
        out.elapsed_s = out.elapsed_s.max(s.elapsed_s);
        out.devices_total += s.devices_total;
        for (a, b) in out.states.iter_mut().zip(s.states) {
            *a += b;
        }
        out.low_battery += s.low_battery;
        out.totals.add(&s.totals);
        out.published_per_s += s.published_per_s;
        out.acked_per_s += s.acked_per_s;
        out.connects_per_s += s.connects_per_s;
        out.steps_per_s += s.steps_per_s;
        out.modbus.add(&s.modbus);
        out.modbus_requests_per_s += s.modbus_requests_per_s;
        out.serial.add(&s.serial);
        out.ota.add(&s.ota);
        for (a, b) in out.ota_stages.iter_mut().zip(s.ota_stages) {
            *a += b;
        }
        merge_versions(&mut out, s);
        for r in &s.rollouts {
            let mut r = r.clone();
            if several {
                r.name = format!("{} @{label}", r.name);
            }
            out.rollouts.push(r);
        }
        out.lag_interval_p99_us = out.lag_interval_p99_us.max(s.lag_interval_p99_us);
        out.lag_p99_us = out.lag_p99_us.max(s.lag_p99_us);
        out.max_lag_us = out.max_lag_us.max(s.max_lag_us);
        out.in_flight += s.in_flight;
        out.buffered += s.buffered;
        out.devices_unaccounted += s.devices_unaccounted;
        out.peak_online += s.peak_online;
        out.first_connects += s.first_connects;
        out.last_first_connect_s = out.last_first_connect_s.max(s.last_first_connect_s);
        let process = u32::try_from(index).unwrap_or(u32::MAX);
        out.shards.extend(s.shards.iter().map(|sh| {
            let mut sh = sh.clone();
            sh.process = process;
            sh
        }));
        out.events.extend(s.events.iter().map(|e| {
            let mut e = e.clone();
            if several {
                e.message = format!("[{label}] {}", e.message);
            }
            e
        }));
        hist.publish_ack_us.add(&s.histograms.publish_ack_us);
        hist.publish_ack_interval_us
            .add(&s.histograms.publish_ack_interval_us);
        hist.connect_us.add(&s.histograms.connect_us);
        hist.modbus_service_us.add(&s.histograms.modbus_service_us);
    }
    // Stable: events of one part keep their order, ties keep the parts' order.
    out.events
        .sort_by(|a, b| a.elapsed_s.total_cmp(&b.elapsed_s));
    let extra = out.events.len().saturating_sub(EVENTS_KEPT);
    out.events.drain(..extra);

    out.publish_ack = percentiles(&hist.publish_ack_us, parts, |s| s.publish_ack);
    out.publish_ack_interval = percentiles(&hist.publish_ack_interval_us, parts, |s| {
        s.publish_ack_interval
    });
    out.connect = percentiles(&hist.connect_us, parts, |s| s.connect);
    out.modbus_service = percentiles(&hist.modbus_service_us, parts, |s| s.modbus_service);
    out.histograms = hist;
    out
}

/// Devices per firmware version, matched by label (each process numbers its versions itself).
fn merge_versions(out: &mut FleetSnapshot, s: &FleetSnapshot) {
    for (i, n) in s.versions.iter().enumerate() {
        let label = s
            .version_labels
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("version #{i}"));
        match out.version_labels.iter().position(|l| *l == label) {
            Some(j) => out.versions[j] += n,
            None => {
                out.version_labels.push(label);
                out.versions.push(*n);
            }
        }
    }
}

/// Percentiles of the merged histogram; when it is empty although the parts counted values
/// (their histograms were left out), a bound from the parts' percentiles.
fn percentiles(
    merged: &LatencyHistogram,
    parts: &[(String, FleetSnapshot)],
    of: impl Fn(&FleetSnapshot) -> Percentiles,
) -> Percentiles {
    if merged.count() > 0 {
        return merged.percentiles();
    }
    let mut out = Percentiles::default();
    let mut weighted_sum = 0.0;
    for (_, s) in parts {
        let p = of(s);
        out.count += p.count;
        out.p50 = out.p50.max(p.p50);
        out.p90 = out.p90.max(p.p90);
        out.p99 = out.p99.max(p.p99);
        out.p999 = out.p999.max(p.p999);
        out.max = out.max.max(p.max);
        weighted_sum += p.mean * p.count as f64;
    }
    if out.count > 0 {
        out.mean = weighted_sum / out.count as f64;
    }
    out
}

fn merge_run(parts: &[(String, FleetSnapshot)]) -> RunMeta {
    let Some((_, first)) = parts.first() else {
        return RunMeta::default();
    };
    let distinct = |f: fn(&RunMeta) -> &str| -> Vec<String> {
        let mut seen = BTreeSet::new();
        parts
            .iter()
            .map(|(_, s)| f(&s.run).to_string())
            .filter(|v| seen.insert(v.clone()))
            .collect()
    };
    let mut scenario = first.run.scenario.clone();
    if distinct(|r| &r.scenario).len() > 1 {
        scenario.push_str(" (+ other scenarios)");
    }
    RunMeta {
        run_id: distinct(|r| &r.run_id).join(","),
        scenario,
        seed: first.run.seed,
        clock: first.run.clock.clone(),
        duration_s: first.run.duration_s,
        shards: parts
            .iter()
            .fold(0u16, |n, (_, s)| n.saturating_add(s.run.shards)),
        broker: distinct(|r| &r.broker).join(", "),
        processes: parts
            .iter()
            .fold(0u32, |n, (_, s)| n.saturating_add(s.run.processes.max(1))),
        source: parts
            .iter()
            .map(|(label, _)| label.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::{LiveEvent, LiveEventKind};
    use crate::ota::RolloutLive;
    use crate::snapshot::ShardLoad;
    use fleet_core::DeviceState;

    /// A snapshot as a process would serve it: percentiles computed from its histograms.
    fn snapshot_of(values: &[u64], devices: u64, versions: &[(&str, u64)]) -> FleetSnapshot {
        let mut h = SnapshotHistograms::default();
        for &v in values {
            h.publish_ack_us.record(v);
            h.publish_ack_interval_us.record(v / 2 + 1);
            h.connect_us.record(v * 3);
            h.modbus_service_us.record(v % 977 + 5);
        }
        let mut s = FleetSnapshot {
            run: RunMeta {
                run_id: "r1".into(),
                scenario: "demo".into(),
                seed: 7,
                clock: "wall".into(),
                duration_s: 60.0,
                shards: 2,
                broker: "mqtt://127.0.0.1:1883".into(),
                processes: 1,
                source: "local".into(),
            },
            elapsed_s: 10.0,
            sim_time_s: 9.5,
            devices_total: devices,
            published_per_s: 100.0,
            peak_online: devices,
            first_connects: devices,
            last_first_connect_s: 3.0,
            max_lag_us: 1500,
            lag_p99_us: 900,
            versions: versions.iter().map(|(_, n)| *n).collect(),
            version_labels: versions.iter().map(|(l, _)| l.to_string()).collect(),
            publish_ack: h.publish_ack_us.percentiles(),
            publish_ack_interval: h.publish_ack_interval_us.percentiles(),
            connect: h.connect_us.percentiles(),
            modbus_service: h.modbus_service_us.percentiles(),
            histograms: h,
            ..FleetSnapshot::default()
        };
        s.states[DeviceState::Online.index()] = devices;
        s.totals.published = devices * 10;
        s.totals.acked = devices * 9;
        s.shards = vec![
            ShardLoad {
                shard: 0,
                devices: devices / 2,
                ..ShardLoad::default()
            },
            ShardLoad {
                shard: 1,
                devices: devices - devices / 2,
                ..ShardLoad::default()
            },
        ];
        s.events = vec![LiveEvent {
            seq: 1,
            elapsed_s: devices as f64,
            sim_time_s: 0.0,
            kind: LiveEventKind::Fault,
            message: "outage".into(),
        }];
        s.rollouts = vec![RolloutLive {
            name: "canary".into(),
            ..RolloutLive::default()
        }];
        s
    }

    fn values() -> Vec<u64> {
        (1..20_000u64).map(|v| v * 7919 % 2_000_000 + 1).collect()
    }

    #[test]
    fn merging_two_halves_gives_the_percentiles_of_one_process_that_saw_everything() {
        let all = values();
        let (even, odd): (Vec<u64>, Vec<u64>) = all.iter().partition(|v| *v % 2 == 0);
        let whole = snapshot_of(&all, 100, &[]);
        // Through JSON, as `top --attach` gets them.
        let json = |s: &FleetSnapshot| -> FleetSnapshot {
            let text = serde_json::to_string(s).unwrap_or_default();
            serde_json::from_str(&text).unwrap_or_default()
        };
        let parts = vec![
            ("a".to_string(), json(&snapshot_of(&even, 40, &[]))),
            ("b".to_string(), json(&snapshot_of(&odd, 60, &[]))),
        ];
        let m = merge_snapshots(&parts);
        assert_eq!(m.publish_ack, whole.publish_ack);
        assert_eq!(m.publish_ack_interval, whole.publish_ack_interval);
        assert_eq!(m.connect, whole.connect);
        assert_eq!(m.modbus_service, whole.modbus_service);
        assert_eq!(m.publish_ack.count, all.len() as u64);
        assert_eq!(m.devices_total, 100);
        assert_eq!(m.state(DeviceState::Online), 100);
        assert_eq!(m.totals.published, 1000);
        assert_eq!(m.published_per_s, 200.0);
        assert_eq!(m.run.processes, 2);
        assert_eq!(m.run.shards, 4);
        assert_eq!(m.run.source, "a, b");
        assert_eq!(m.run.scenario, "demo");
        let processes: Vec<u32> = m.shards.iter().map(|s| s.process).collect();
        assert_eq!(processes, [0, 0, 1, 1]);
        let names: Vec<&str> = m.rollouts.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["canary @a", "canary @b"]);
        let events: Vec<&str> = m.events.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(events, ["[a] outage", "[b] outage"]);
    }

    #[test]
    fn versions_are_merged_by_label() {
        let parts = vec![
            (
                "a".to_string(),
                snapshot_of(&[10], 10, &[("env 1.0", 4), ("env 1.1", 6)]),
            ),
            (
                "b".to_string(),
                snapshot_of(
                    &[10],
                    10,
                    &[("env 1.1", 3), ("meter 2.0", 5), ("env 1.0", 2)],
                ),
            ),
        ];
        let m = merge_snapshots(&parts);
        assert_eq!(m.version_labels, ["env 1.0", "env 1.1", "meter 2.0"]);
        assert_eq!(m.versions, [6, 9, 5]);
    }

    #[test]
    fn a_single_part_merges_to_itself() {
        let s = snapshot_of(&values(), 50, &[("env 1.0", 50)]);
        let m = merge_snapshots(&[("http://127.0.0.1:9000".to_string(), s.clone())]);
        assert_eq!(m.publish_ack, s.publish_ack);
        assert_eq!(m.publish_ack_interval, s.publish_ack_interval);
        assert_eq!(m.connect, s.connect);
        assert_eq!(m.modbus_service, s.modbus_service);
        assert_eq!(m.states, s.states);
        assert_eq!(m.totals, s.totals);
        assert_eq!(m.devices_total, s.devices_total);
        assert_eq!(m.versions, s.versions);
        assert_eq!(m.version_labels, s.version_labels);
        assert_eq!(m.shards, s.shards);
        assert_eq!(m.events, s.events);
        assert_eq!(m.rollouts, s.rollouts);
        assert_eq!(m.elapsed_s, s.elapsed_s);
        assert_eq!(m.sim_time_s, s.sim_time_s);
        assert_eq!(m.max_lag_us, s.max_lag_us);
        assert_eq!(m.lag_p99_us, s.lag_p99_us);
        assert_eq!(m.peak_online, s.peak_online);
        assert_eq!(m.first_connects, s.first_connects);
        assert_eq!(m.last_first_connect_s, s.last_first_connect_s);
        assert_eq!(m.published_per_s, s.published_per_s);
        assert_eq!(
            RunMeta {
                source: s.run.source.clone(),
                ..m.run.clone()
            },
            s.run
        );
        assert_eq!(m.run.source, "http://127.0.0.1:9000");
    }

    #[test]
    fn different_scenarios_are_noted_and_times_are_bounded() {
        let a = snapshot_of(&[10], 10, &[]);
        let mut b = snapshot_of(&[10], 10, &[]);
        b.run.scenario = "soak".into();
        b.elapsed_s = 20.0;
        b.sim_time_s = 1.0;
        b.paused = true;
        b.lag_p99_us = 5000;
        let m = merge_snapshots(&[("a".into(), a), ("b".into(), b)]);
        assert_eq!(m.run.scenario, "demo (+ other scenarios)");
        assert_eq!(m.elapsed_s, 20.0);
        assert_eq!(m.sim_time_s, 1.0);
        assert!(m.paused);
        assert_eq!(m.lag_p99_us, 5000);
    }

    #[test]
    fn parts_without_histograms_still_count() {
        let mut a = snapshot_of(&[100, 200], 10, &[]);
        let mut b = snapshot_of(&[300], 10, &[]);
        a.histograms = SnapshotHistograms::default();
        b.histograms = SnapshotHistograms::default();
        let m = merge_snapshots(&[("a".into(), a), ("b".into(), b)]);
        assert_eq!(m.publish_ack.count, 3);
        assert_eq!(m.publish_ack.max, 300);
    }

    #[test]
    fn only_the_latest_events_are_kept() {
        let mut a = snapshot_of(&[10], 10, &[]);
        a.events = (0..EVENTS_KEPT as u64)
            .map(|i| LiveEvent {
                seq: i + 1,
                elapsed_s: i as f64,
                sim_time_s: 0.0,
                kind: LiveEventKind::Control,
                message: format!("a{i}"),
            })
            .collect();
        let mut b = a.clone();
        for e in &mut b.events {
            e.elapsed_s += 0.5;
        }
        let m = merge_snapshots(&[("a".into(), a), ("b".into(), b)]);
        assert_eq!(m.events.len(), EVENTS_KEPT);
        assert_eq!(
            m.events.last().map(|e| e.message.as_str()),
            Some("[b] a199")
        );
        assert!(
            m.events
                .windows(2)
                .all(|w| w[0].elapsed_s <= w[1].elapsed_s)
        );
    }
}
