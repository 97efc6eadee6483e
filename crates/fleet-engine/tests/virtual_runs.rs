//! Whole runs on the virtual clock: determinism across shard counts, and the accounting.

use std::path::Path;

mod common;

const PROFILE: &str = r#"
name = "sensor"
[identity]
device_id = "s-{id:05}"
telemetry_topic = "t/{device_id}"
command_topic = "c/{device_id}"
response_topic = "r/{device_id}"
status_topic = "s/{device_id}"
[reporting]
interval = "5s"
jitter = 0.2
qos = 1
offline_buffer = 4
max_age = "15s"
[sensors.temp]
kind = "sine"
mean = 20.0
amplitude = 5.0
period = "1h"
phase = "random"
noise = 0.3
[sensors.level]
kind = "random_walk"
start = 50.0
step = 2.0
min = 0.0
max = 100.0
faults = { spike_probability = 0.01, spike_magnitude = 30.0 }
[battery]
capacity_mah = 50
idle_ma = 0.5
tx_mah = 0.05
start_percent = [20, 100]
[link]
latency_ms = { dist = "lognormal", median = 40, sigma = 0.7 }
loss = 0.02
mtbf = "3m"
mttr_s = { dist = "exponential", mean = 20 }
reconnect = { initial = "1s", max = "30s", multiplier = 2.0, jitter = 0.5 }
[firmware]
model = "fw.toml"
version = "1.0.0"
"#;

fn scenario(devices: u32, qos0_share: bool) -> String {
    let mut s = format!(
        r#"
name = "det"
seed = 7
duration = "20m"
clock = "virtual"
[ramp]
mode = "poisson"
per_second = 50
[[cohorts]]
name = "a"
profile = "sensor.toml"
count = {devices}
[[events]]
at = "5m"
kind = "outage"
fraction = 0.3
duration = "1m"
[[events]]
at = "12m"
kind = "reboot_wave"
fraction = 0.2
spread = "30s"
[[events]]
at = "3m"
kind = "latency_spike"
fraction = 0.5
delay = "2s"
duration = "1m"
[[events]]
at = "15m"
kind = "partition"
fraction = 0.3
duration = "2m"
"#
    );
    if qos0_share {
        s.push_str("[[cohorts]]\nname = \"b\"\nprofile = \"sensor0.toml\"\ncount = 10\nlink = { loss = 0.1 }\n");
        // Persistent sessions: what is in flight when a session dies is sent again.
        s.push_str("[[cohorts]]\nname = \"kept\"\nprofile = \"kept.toml\"\ncount = 12\n");
        // Modbus-only slaves: they sample without a session; a scheduled fault reaches some.
        s.push_str(
            "[[cohorts]]\nname = \"slaves\"\nprofile = \"slave.toml\"\ncount = 7\nmqtt = false\n",
        );
        s.push_str("[[events]]\nat = \"8m\"\nkind = \"modbus_fault\"\nfault = \"silence\"\nduration = \"1m\"\nfraction = 0.5\ncohort = \"slaves\"\n");
    }
    s
}

fn run(devices: u32, shards: u16, log: Option<&Path>) -> fleet_engine::RunOutcome {
    run_sliced(devices, shards, fleet_core::slice::Slice::WHOLE, log)
}

fn run_sliced(
    devices: u32,
    shards: u16,
    slice: fleet_core::slice::Slice,
    log: Option<&Path>,
) -> fleet_engine::RunOutcome {
    let qos0 = PROFILE.replace("qos = 1", "qos = 0\nbuffer_qos0 = false");
    let slave = format!(
        "{}\n[modbus]\n[[modbus.registers]]\nname = \"t\"\ntable = \"input\"\naddress = 0\ntype = \"f32\"\nsource = \"sensor.temp\"\n",
        PROFILE
            .replace("name = \"sensor\"", "name = \"slave\"")
            .replace("s-{id:05}", "m-{id:05}")
    );
    common::run_slice(
        vec![
            ("det.toml", scenario(devices, true)),
            ("sensor.toml", PROFILE.to_string()),
            ("sensor0.toml", qos0),
            (
                "kept.toml",
                PROFILE.replace("name = \"sensor\"", "name = \"kept\"")
                    + "[mqtt]\nclean_session = false\n",
            ),
            ("slave.toml", slave),
            ("fw.toml", common::FIRMWARE.to_string()),
        ],
        shards,
        slice,
        log,
    )
}

#[test]
fn process_slices_together_are_exactly_the_fleet_of_one_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let whole_log = dir.path().join("whole.log");
    let whole = run(150, 2, Some(&whole_log));
    let whole_lines = common::sorted_lines(&whole_log);
    assert!(whole_lines.len() > 10_000, "{}", whole_lines.len());
    // Three processes (of 1, 2 and 3 engine threads): their event logs together, sorted, are
    // the one process's, line for line; their counters add up to its counters.
    let mut lines = Vec::new();
    let mut published = 0;
    let mut acked = 0;
    let mut devices = 0;
    let mut hist = fleet_metrics::LatencyHistogram::new();
    for k in 0..3u32 {
        let slice = fleet_core::slice::Slice::new(k, 3).expect("slice");
        let log = dir.path().join(format!("slice-{k}.log"));
        let out = run_sliced(150, (k + 1) as u16, slice, Some(&log));
        devices += out.last.devices_total;
        published += out.last.totals.published;
        acked += out.last.totals.acked;
        hist.add(&out.last.histograms.publish_ack_us);
        let part = common::sorted_lines(&log);
        assert!(!part.is_empty(), "slice {k} logged");
        lines.extend(part);
    }
    lines.sort();
    assert_eq!(devices, whole.last.devices_total);
    assert_eq!(published, whole.last.totals.published);
    assert_eq!(acked, whole.last.totals.acked);
    let one = &whole.last.histograms.publish_ack_us;
    assert_eq!(hist.count(), one.count());
    for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
        assert_eq!(hist.quantile(q), one.quantile(q), "quantile {q}");
    }
    if lines != whole_lines {
        let first_diff = whole_lines.iter().zip(&lines).find(|(a, b)| a != b);
        panic!(
            "3 slices logged {} lines, one process {}: first difference {first_diff:?}",
            lines.len(),
            whole_lines.len()
        );
    }
}

#[test]
fn the_same_seed_gives_byte_identical_event_logs_for_one_two_and_four_shards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs: Vec<Vec<String>> = [1u16, 2, 4]
        .iter()
        .map(|&shards| {
            let path = dir.path().join(format!("events-{shards}.log"));
            run(150, shards, Some(&path));
            common::sorted_lines(&path)
        })
        .collect();
    assert!(
        logs[0].len() > 10_000,
        "a 20-minute run of 160 devices logs plenty: {}",
        logs[0].len()
    );
    for kind in [
        "report",
        "ack",
        "link_drop",
        "outage",
        "reboot",
        "no_link",
        "lost_on_link",
        "retransmit",
        "publish telemetry",
        "sample seq=",
        "modbus_fault",
        "partition until_s",
        "latency_spike delay_us=2000000",
        "keep-alive timeout",
        "expired seq=",
        "dropped_qos0_offline seq=",
    ] {
        assert!(
            logs[0].iter().any(|l| l.contains(kind)),
            "the log has {kind} events"
        );
    }
    for (i, other) in logs.iter().enumerate().skip(1) {
        if *other != logs[0] {
            let first_diff = logs[0].iter().zip(other).find(|(a, b)| a != b);
            panic!("shard layout {i} differs (seed 7): first difference {first_diff:?}");
        }
    }
}

#[test]
fn every_published_message_is_acked_failed_or_in_flight() {
    let out = run(120, 2, None);
    let t = out.last.totals;
    assert!(t.published > 10_000, "{t:?}");
    // Telemetry is acked, lost, dropped, or in flight at the end; flushed messages come from
    // the buffer (already counted as published) and buffered ones are still held.
    assert_eq!(
        t.published,
        t.acked + t.failed() + out.last.in_flight + out.last.buffered,
        "{t:?} in_flight={} buffered={}",
        out.last.in_flight,
        out.last.buffered
    );
    assert!(
        t.failed_lost_link > 0 && t.retransmits > 0 && t.link_drops > 0,
        "{t:?}"
    );
    // Every reason the simulated network can produce is seen, and every device adds up.
    assert!(
        t.failed_qos0_offline > 0 && t.failed_expired > 0 && t.failed_offline > 0,
        "{t:?}"
    );
    assert!(
        t.failed_unacked > 0,
        "the partition cost in-flight messages: {t:?}"
    );
    assert_eq!(out.last.devices_unaccounted, 0, "{t:?}");
    assert!(out.last.publish_ack.count > 0);
    assert!(
        out.last.publish_ack.p50 > 40_000,
        "median ack includes a 40 ms uplink: {:?}",
        out.last.publish_ack
    );
}

#[test]
fn a_different_seed_gives_a_different_fleet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.log");
    run(20, 1, Some(&a));
    let text = std::fs::read_to_string(&a).expect("log");
    let seeded = text.replace("seed = 7", "seed = 8");
    assert_eq!(text, seeded, "the log does not contain the seed itself");
    // Same run twice is identical; that is the other half of the contract.
    let b = dir.path().join("b.log");
    run(20, 1, Some(&b));
    assert_eq!(common::sorted_lines(&a), common::sorted_lines(&b));
}

/// A partition longer than keep-alive on the virtual clock: sessions die; with persistent
/// sessions what was in flight is sent again (nothing lost), with clean ones it is counted.
#[test]
fn a_partition_costs_clean_sessions_their_in_flight_messages_and_persistent_ones_nothing() {
    let outcome = |mqtt: &str| {
        let profile = PROFILE
            .replace("loss = 0.02", "loss = 0.0")
            .replace("mtbf = \"3m\"", "mtbf = \"1000h\"")
            .replace(
                "latency_ms = { dist = \"lognormal\", median = 40, sigma = 0.7 }",
                "latency_ms = 300",
            )
            + mqtt;
        let scenario = "name = \"p\"\nseed = 3\nduration = \"10m\"\nclock = \"virtual\"\n[[cohorts]]\nname = \"a\"\nprofile = \"sensor.toml\"\ncount = 40\n[[events]]\nat = \"2m\"\nkind = \"partition\"\nduration = \"3m\"\n";
        common::run_files(
            vec![
                ("p.toml", scenario.to_string()),
                ("sensor.toml", profile),
                ("fw.toml", common::FIRMWARE.to_string()),
            ],
            2,
            None,
        )
    };
    let clean = outcome("[mqtt]\nkeep_alive = \"20s\"\n");
    let kept = outcome("[mqtt]\nkeep_alive = \"20s\"\nclean_session = false\n");
    for out in [&clean, &kept] {
        let t = out.last.totals;
        assert!(
            t.sessions_lost >= 30,
            "most of the 40 lose their session: {t:?}"
        );
        assert_eq!(out.last.devices_unaccounted, 0, "{t:?}");
    }
    assert!(
        clean.last.totals.failed_unacked > 0,
        "{:?}",
        clean.last.totals
    );
    assert_eq!(kept.last.totals.failed_unacked, 0, "{:?}", kept.last.totals);
    assert!(kept.last.totals.acked > clean.last.totals.acked);
}
