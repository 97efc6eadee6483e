use std::path::{Path, PathBuf};

use fleet_core::seed::mix64;
use fleet_core::slice::Slice;
use fleet_core::slo::{SloBound, SloSpec};

use super::*;
use crate::histogram::LatencyHistogram;
use crate::ota::RolloutReport;
use crate::snapshot::SnapshotHistograms;

const SEED: u64 = 0x5eed_0008;

/// One latency sample per tag (publish -> ack, connect, Modbus service), long-tailed; now and
/// then one above an hour (clamped).
fn sample(i: u64) -> [u64; 3] {
    let x = mix64(SEED ^ i);
    let publish = if i % 10_007 == 3 {
        5_000_000_000
    } else {
        (x % 1000 + 1) << (x >> 60)
    };
    let connect = (x >> 20) % 2_000_000;
    let modbus = (x >> 40) % 5_000 + 50;
    [publish, connect, modbus]
}

fn cohorts() -> Vec<CohortSpan> {
    vec![
        CohortSpan {
            name: "meters".into(),
            first: 0,
            count: 1000,
            unit: 1,
        },
        CohortSpan {
            name: "sensors".into(),
            first: 1000,
            count: 250,
            unit: 1,
        },
    ]
}

fn slos() -> Vec<SloSpec> {
    vec![
        SloSpec {
            name: "p99".into(),
            metric: "latency_us.publish_ack.p99".into(),
            bound: SloBound::Max(100_000_000.0),
        },
        SloSpec {
            name: "delivered".into(),
            metric: "messages.delivered_ratio".into(),
            bound: SloBound::Min(0.5),
        },
    ]
}

fn results_of(slice: Slice) -> ShardResults {
    ShardResults {
        slice,
        cohorts: cohorts(),
        run: RunInfo {
            id: format!("run-{}", slice.index),
            seed: 7,
            scenario: "demo".into(),
            clock: "virtual".into(),
            duration_s: 120.0,
            elapsed_s: 3.0 + f64::from(slice.index),
            shards: 2,
            processes: 1,
            ..RunInfo::default()
        },
        process: ProcessStats {
            rss_peak_bytes: 100 << 20,
            cpu_user_s: 1.5,
            cpu_system_s: 0.5,
            open_files_limit: 20_000,
        },
        slos: slos(),
        saturation_threshold_us: 1_000_000,
        version_labels: vec!["fw 1.0".into()],
        ..ShardResults::default()
    }
}

/// Writes the results of `slice` into `dir`: the samples `indices` recorded over `intervals`
/// snapshots (cumulative, like a run's), with counters that count them.
fn write_part(
    dir: &Path,
    slice: Slice,
    indices: &[u64],
    intervals: usize,
    tweak: impl FnOnce(&mut ShardResults),
) -> PathBuf {
    let mut w = ResultsWriter::create(dir, slice, 1_700_000_000_000).unwrap();
    let mut snap = FleetSnapshot::default();
    let per = indices.len().div_ceil(intervals.max(1)).max(1);
    for (n, chunk) in indices.chunks(per).enumerate() {
        for &i in chunk {
            let [p, c, m] = sample(i);
            snap.histograms.publish_ack_us.record(p);
            snap.histograms.connect_us.record(c);
            snap.histograms.modbus_service_us.record(m);
            snap.totals.published += 1;
            snap.totals.acked += 1;
        }
        snap.elapsed_s = (n + 1) as f64;
        snap.publish_ack = snap.histograms.publish_ack_us.percentiles();
        snap.connect = snap.histograms.connect_us.percentiles();
        snap.modbus_service = snap.histograms.modbus_service_us.percentiles();
        snap.devices_total = indices.len() as u64;
        snap.versions = vec![indices.len() as u64];
        w.observe(&snap).unwrap();
    }
    let mut results = results_of(slice);
    results.at_end = snap.clone();
    tweak(&mut results);
    w.finish(results, &snap).unwrap()
}

/// Samples `0..n` dealt to `parts` parts in contiguous runs, as slices deal devices.
fn split(n: u64, parts: u32) -> Vec<Vec<u64>> {
    (0..parts)
        .map(|k| {
            let r = Slice::new(k, parts).unwrap().of_cohort(0, n as u32);
            (u64::from(r.start)..u64::from(r.end)).collect()
        })
        .collect()
}

fn whole(n: u64) -> SnapshotHistograms {
    let mut h = SnapshotHistograms::default();
    for i in 0..n {
        let [p, c, m] = sample(i);
        h.publish_ack_us.record(p);
        h.connect_us.record(c);
        h.modbus_service_us.record(m);
    }
    h
}

fn assert_same(merged: &LatencyHistogram, all: &LatencyHistogram, what: &str) {
    assert_eq!(merged.inner(), all.inner(), "{what}: every bucket");
    assert_eq!(
        merged.percentiles(),
        all.percentiles(),
        "{what}: percentiles"
    );
    assert_eq!(merged.count(), all.count(), "{what}: count");
    assert_eq!(merged.inner().min(), all.inner().min(), "{what}: min");
    assert_eq!(merged.inner().max(), all.inner().max(), "{what}: max");
    assert_eq!(merged.clamped(), all.clamped(), "{what}: clamped");
    for q in [
        0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 0.9999, 1.0,
    ] {
        assert_eq!(merged.quantile(q), all.quantile(q), "{what}: quantile {q}");
    }
}

#[test]
fn merging_the_parts_gives_the_histograms_of_one_process_that_saw_all_the_data() {
    const N: u64 = 40_000;
    let all = whole(N);
    assert!(
        all.publish_ack_us.clamped() > 0,
        "the data set has clamped values"
    );
    for parts in [1u32, 3, 8] {
        let dir = tempfile::tempdir().unwrap();
        for (k, indices) in split(N, parts).iter().enumerate() {
            // Different numbers of intervals per part: the log's cut does not matter.
            let slice = Slice::new(k as u32, parts).unwrap();
            write_part(dir.path(), slice, indices, 3 + k % 5, |_| {});
        }
        let read = read_results(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(read.len(), parts as usize);
        let m = merge_results(&read, &[]).unwrap();
        let h = &m.last.histograms;
        assert_same(&h.publish_ack_us, &all.publish_ack_us, "publish_ack");
        assert_same(&h.connect_us, &all.connect_us, "connect");
        assert_same(
            &h.modbus_service_us,
            &all.modbus_service_us,
            "modbus_service",
        );
        let r = &m.report;
        assert_eq!(r.latency_us.publish_ack, all.publish_ack_us.percentiles());
        let c = all.connect_us.percentiles();
        let rc = &r.latency_us.connect;
        assert_eq!(
            (rc.count, rc.p50, rc.p90, rc.p99, rc.max),
            (c.count, c.p50, c.p90, c.p99, c.max)
        );
        assert_eq!(r.modbus.service_us, all.modbus_service_us.percentiles());
        assert_eq!(r.messages.published, N);
        assert_eq!(r.devices.total, N);
        // SLOs are evaluated on the merged figures.
        assert_eq!(
            r.slo[0].value,
            Some(all.publish_ack_us.percentiles().p99 as f64)
        );
        assert!(m.is_complete() && r.complete && r.ok, "{parts} parts");
        assert_eq!(r.run.processes, parts);
        assert_eq!(r.run.shards, 2 * parts as u16);
        assert_eq!(r.run.elapsed_s, 3.0 + f64::from(parts - 1));
        assert_eq!(r.process.rss_peak_bytes, u64::from(parts) * (100 << 20));
        assert_eq!(r.parts.len(), parts as usize);
        assert!(r.parts.iter().all(|p| p.status == "ok"));
        assert_eq!(r.parts.iter().map(|p| p.devices).sum::<u64>(), 1250);
        assert_eq!(r.ota.versions.get("fw 1.0"), Some(&N));
    }
}

#[test]
fn a_missing_part_is_reported_with_its_ranges_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let parts = split(4_000, 4);
    for k in [0u32, 1, 3] {
        write_part(
            dir.path(),
            Slice::new(k, 4).unwrap(),
            &parts[k as usize],
            3,
            |_| {},
        );
    }
    let read = read_results(&[dir.path().to_path_buf()]).unwrap();
    let m = merge_results(&read, &[(2, "process exited with signal 9".into())]).unwrap();
    assert!(!m.is_complete());
    assert_eq!(m.missing.len(), 1);
    let missing = &m.missing[0];
    assert_eq!(missing.slice, Slice::new(2, 4).unwrap());
    assert_eq!(
        missing.ranges,
        vec![
            ("meters".to_string(), 500..750),
            ("sensors".to_string(), 1125..1187)
        ]
    );
    assert_eq!(missing.reason, "process exited with signal 9");
    let r = &m.report;
    assert!(
        !r.ok && !r.complete,
        "a report with a missing part is not ok"
    );
    assert!(
        r.slo.iter().all(|s| s.ok),
        "the SLOs of the parts present hold"
    );
    let json = r.to_json();
    let part = &json["parts"][2];
    assert_eq!(part["shard"], "2/4");
    assert_eq!(part["devices"], 250 + 62);
    assert_eq!(part["ranges"]["meters"], serde_json::json!([500, 750]));
    assert_eq!(part["status"], "missing: process exited with signal 9");
    assert!(part["rss_peak_bytes"].is_null());
    assert_eq!(json["parts"][3]["status"], "ok");
    assert_eq!(json["run"]["processes"], 3);
    assert_eq!(json["complete"], false);

    // Without a known reason, the report says the results were not found.
    let m = merge_results(&read, &[]).unwrap();
    assert!(m.missing[0].reason.contains("shard-2-of-4.json not found"));
}

#[test]
fn parts_of_different_runs_or_the_same_slice_twice_are_refused() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let some = [1u64, 2, 3];
    write_part(a.path(), Slice::new(0, 2).unwrap(), &some, 1, |_| {});
    let other_seed = write_part(b.path(), Slice::new(1, 2).unwrap(), &some, 1, |r| {
        r.run.seed = 8
    });
    let read = read_results(&[a.path().to_path_buf(), other_seed.clone()]).unwrap();
    let e = merge_results(&read, &[]).unwrap_err().to_string();
    assert!(e.contains("seed 7 and 8"), "{e}");
    assert!(
        e.contains("shard-0-of-2.json") && e.contains(&other_seed.display().to_string()),
        "{e}"
    );

    let other_count = write_part(b.path(), Slice::new(1, 3).unwrap(), &some, 1, |_| {});
    let read = read_results(&[a.path().join("shard-0-of-2.json"), other_count]).unwrap();
    let e = merge_results(&read, &[]).unwrap_err().to_string();
    assert!(e.contains("2 and 3 shards"), "{e}");

    let c = tempfile::tempdir().unwrap();
    write_part(c.path(), Slice::new(0, 2).unwrap(), &some, 1, |r| {
        r.cohorts[1].count = 300
    });
    let read = read_results(&[
        a.path().join("shard-0-of-2.json"),
        c.path().join("shard-0-of-2.json"),
    ])
    .unwrap();
    let e = merge_results(&read, &[]).unwrap_err().to_string();
    assert!(e.contains("cohorts"), "{e}");

    let d = tempfile::tempdir().unwrap();
    write_part(d.path(), Slice::new(0, 2).unwrap(), &some, 1, |_| {});
    let read = read_results(&[a.path().to_path_buf(), d.path().to_path_buf()]).unwrap();
    let e = merge_results(&read, &[]).unwrap_err();
    assert!(matches!(e, ResultsError::SameSlice { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains(&a.path().join("shard-0-of-2.json").display().to_string())
            && e.contains(&d.path().join("shard-0-of-2.json").display().to_string())
            && e.contains("shard 0/2"),
        "{e}"
    );

    // The same file named twice is read once.
    let read = read_results(&[a.path().to_path_buf(), a.path().join("shard-0-of-2.hlog")]).unwrap();
    assert_eq!(read.len(), 1);
    assert!(matches!(merge_results(&[], &[]), Err(ResultsError::Empty)));
}

#[test]
fn a_damaged_log_is_an_error_naming_the_file_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let indices: Vec<u64> = (0..500).collect();
    let json = write_part(dir.path(), Slice::new(0, 1).unwrap(), &indices, 4, |_| {});
    let log = json.with_extension("hlog");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = text.lines().count() as u64;
    let read = || match read_results(&[dir.path().to_path_buf()]) {
        Ok(_) => panic!("read a damaged log without an error"),
        Err(e) => e.to_string(),
    };

    // Cut in the middle of the last interval: the process was killed while writing it.
    std::fs::write(&log, &text[..text.len() - 20]).unwrap();
    let e = read();
    assert!(e.contains(&log.display().to_string()), "{e}");
    assert!(e.contains(&format!("line {lines}: truncated")), "{e}");

    // A whole line lost: the log holds fewer values than the run counted.
    let kept: Vec<&str> = text.lines().take(lines as usize - 1).collect();
    std::fs::write(&log, kept.join("\n") + "\n").unwrap();
    let e = read();
    assert!(e.contains("the log is incomplete"), "{e}");

    // A line that is not an interval, and a histogram that is not one.
    std::fs::write(&log, text.replacen("Tag=connect,", "Tag=connect;", 1)).unwrap();
    let e = read();
    assert!(e.contains("not an interval log line"), "{e}");
    let at = text.find("Tag=publish_ack,").unwrap();
    let line_no = text[..at].lines().count() + 1;
    // The histogram is the fifth field: break its header (the cookie).
    let histogram = at + text[at..].match_indices(',').nth(3).unwrap().0 + 1;
    let mut bad = text.clone();
    bad.replace_range(histogram..histogram + 8, "AAAAAAAA");
    std::fs::write(&log, bad).unwrap();
    let e = read();
    assert!(
        e.contains(&format!("line {line_no}: the publish_ack histogram")),
        "{e}"
    );

    std::fs::remove_file(&log).unwrap();
    let e = read();
    assert!(
        e.contains("interval log") && e.contains("is missing"),
        "{e}"
    );
}

#[test]
fn results_files_say_what_is_wrong_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let json = write_part(dir.path(), Slice::new(1, 2).unwrap(), &[1, 2], 1, |_| {});
    let text = std::fs::read_to_string(&json).unwrap();
    let read = || {
        read_results(std::slice::from_ref(&json))
            .unwrap_err()
            .to_string()
    };

    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v["last"].get("histograms").is_none(), "the log holds them");
    assert!(v["at_end"].get("histograms").is_none());
    assert_eq!(v["slos"][0]["bound"]["max"], 100_000_000.0);

    std::fs::write(
        &json,
        text.replacen("\"format_version\": 1", "\"format_version\": 99", 1),
    )
    .unwrap();
    let e = read();
    assert!(
        e.contains("shard-1-of-2.json") && e.contains("format version 99"),
        "{e}"
    );

    std::fs::write(&json, &text[..text.len() / 2]).unwrap();
    let e = read();
    assert!(
        e.contains("shard-1-of-2.json") && e.contains("not JSON"),
        "{e}"
    );

    let renamed = dir.path().join("shard-0-of-2.json");
    std::fs::write(&renamed, &text).unwrap();
    let e = read_results(&[renamed]).unwrap_err().to_string();
    assert!(
        e.contains("named for shard 0/2 but holds the results of shard 1/2"),
        "{e}"
    );

    let empty = tempfile::tempdir().unwrap();
    let e = read_results(&[empty.path().to_path_buf()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no shard results in it"), "{e}");
}

#[test]
fn the_log_is_a_standard_interval_log_whose_intervals_sum_to_the_run() {
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    let dir = tempfile::tempdir().unwrap();
    let indices: Vec<u64> = (0..3_000).collect();
    let json = write_part(dir.path(), Slice::new(0, 1).unwrap(), &indices, 5, |_| {});
    let bytes = std::fs::read(json.with_extension("hlog")).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("#[Histogram log format version 1.3]"),
        "{text}"
    );
    assert!(
        text.contains("\"StartTimestamp\",\"Interval_Length\""),
        "{text}"
    );
    let mut sum = LatencyHistogram::new();
    let mut intervals = 0;
    let mut start = None;
    for entry in IntervalLogIterator::new(&bytes) {
        match entry.unwrap() {
            LogEntry::StartTime(t) => start = Some(t.as_secs()),
            LogEntry::Interval(i) if i.tag().map(|t| t.as_str()) == Some("publish_ack") => {
                use base64::Engine as _;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(i.encoded_histogram())
                    .unwrap();
                let h: hdrhistogram::Histogram<u64> =
                    hdrhistogram::serialization::Deserializer::new()
                        .deserialize(&mut &raw[..])
                        .unwrap();
                sum.add_hdr(&h);
                intervals += 1;
            }
            _ => {}
        }
    }
    assert_eq!(start, Some(1_700_000_000));
    assert_eq!(intervals, 5);
    let mut all = LatencyHistogram::new();
    for i in indices {
        all.record(sample(i)[0]);
    }
    assert_eq!(sum.inner(), all.inner());
}

#[test]
fn a_restarted_slice_does_not_keep_its_old_results() {
    let dir = tempfile::tempdir().unwrap();
    let json = write_part(dir.path(), Slice::new(0, 1).unwrap(), &[1, 2, 3], 1, |_| {});
    assert!(json.is_file());
    let _w = ResultsWriter::create(dir.path(), Slice::new(0, 1).unwrap(), 0).unwrap();
    assert!(
        !json.exists(),
        "an old results file must not pair with the new log"
    );
    let e = read_results(&[dir.path().to_path_buf()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no shard results in it"), "{e}");
}

#[test]
fn rollouts_of_the_same_name_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let rollout = |targets: u64, state: &str, started: f64| RolloutReport {
        name: "canary".into(),
        target_version: "1.1".into(),
        cohorts: vec!["meters".into()],
        state: state.into(),
        targets,
        started_at_s: Some(started),
        finished_at_s: None,
        ..RolloutReport::default()
    };
    write_part(dir.path(), Slice::new(0, 2).unwrap(), &[1], 1, |r| {
        r.rollouts = vec![rollout(10, "completed", 60.0)]
    });
    write_part(dir.path(), Slice::new(1, 2).unwrap(), &[2], 1, |r| {
        r.rollouts = vec![rollout(15, "running", 30.0)]
    });
    let m = merge_results(&read_results(&[dir.path().to_path_buf()]).unwrap(), &[]).unwrap();
    let r = &m.report.rollouts;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].targets, 25);
    assert_eq!(r[0].state, "running");
    assert_eq!(r[0].started_at_s, Some(30.0));
}
