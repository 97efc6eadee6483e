//! Gateways on the virtual clock: many devices behind one simulated session each. Determinism
//! across shard layouts (a gateway's children are spread over the shards), the accounting, and
//! faults that hit a gateway's uplink reaching all its children together.

mod common;

/// 10 children per gateway; some children reboot, lose their own radio link, run flat.
const CHILD: &str = r#"
name = "child"
[identity]
device_id = "c-{id:05}"
[reporting]
interval = "10s"
jitter = 0.2
qos = 1
offline_buffer = 5
[sensors.temp]
kind = "sine"
mean = 20.0
amplitude = 5.0
period = "1h"
phase = "random"
noise = 0.3
[battery]
capacity_mah = 20
idle_ma = 0.5
tx_mah = 0.05
start_percent = [5, 100]
[link]
latency_ms = { dist = "lognormal", median = 40, sigma = 0.7 }
loss = 0.02
mtbf = "8m"
mttr_s = { dist = "exponential", mean = 20 }
[mqtt]
keep_alive = "20s"
[firmware]
model = "fw.toml"
version = "1.0.0"
[gateway]
children = 10
"#;

fn scenario(children: u32) -> String {
    format!(
        r#"
name = "gw"
seed = 11
duration = "20m"
clock = "virtual"
[ramp]
mode = "poisson"
per_second = 40
[[cohorts]]
name = "edge"
profile = "child.toml"
count = {children}
[[cohorts]]
name = "qos0"
profile = "child0.toml"
count = 23
[[events]]
at = "3m"
kind = "latency_spike"
fraction = 0.5
delay = "2s"
duration = "1m"
[[events]]
at = "5m"
kind = "outage"
fraction = 0.3
duration = "2m"
[[events]]
at = "12m"
kind = "reboot_wave"
fraction = 0.2
spread = "30s"
[[events]]
at = "15m"
kind = "partition"
fraction = 0.4
duration = "2m"
"#
    )
}

fn run(children: u32, shards: u16, log: Option<&std::path::Path>) -> fleet_engine::RunOutcome {
    run_slice(children, shards, fleet_core::slice::Slice::WHOLE, log)
}

fn run_slice(
    children: u32,
    shards: u16,
    slice: fleet_core::slice::Slice,
    log: Option<&std::path::Path>,
) -> fleet_engine::RunOutcome {
    let qos0 = CHILD
        .replace("name = \"child\"", "name = \"child0\"")
        .replace("qos = 1", "qos = 0\nbuffer_qos0 = false")
        .replace("children = 10", "children = 7");
    common::run_slice(
        vec![
            ("gw.toml", scenario(children)),
            ("child.toml", CHILD.to_string()),
            ("child0.toml", qos0),
            ("fw.toml", common::FIRMWARE.to_string()),
        ],
        shards,
        slice,
        log,
    )
}

#[test]
fn process_slices_keep_each_gateway_whole_and_together_are_the_fleet_of_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let whole_log = dir.path().join("whole.log");
    let whole = run(157, 2, Some(&whole_log));
    let whole_lines = common::sorted_lines(&whole_log);
    let mut lines = Vec::new();
    let mut sessions = 0;
    // 4 slices of cohorts of 10- and 7-children gateways: cuts fall between gateways, so each
    // gateway has one session in one process, and the sessions add up to the whole fleet's.
    for k in 0..4u32 {
        let slice = fleet_core::slice::Slice::new(k, 4).expect("slice");
        let log = dir.path().join(format!("slice-{k}.log"));
        let out = run_slice(157, 1, slice, Some(&log));
        sessions += out.last.totals.connects_ok;
        lines.extend(common::sorted_lines(&log));
    }
    lines.sort();
    assert_eq!(sessions, whole.last.totals.connects_ok);
    if lines != whole_lines {
        let first_diff = whole_lines.iter().zip(&lines).find(|(a, b)| a != b);
        panic!(
            "4 slices logged {} lines, one process {}: first difference {first_diff:?}",
            lines.len(),
            whole_lines.len()
        );
    }
}

#[test]
fn gateway_fleets_give_byte_identical_event_logs_for_one_two_three_and_four_shards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs: Vec<Vec<String>> = [1u16, 2, 3, 4]
        .iter()
        .map(|&shards| {
            let path = dir.path().join(format!("events-{shards}.log"));
            run(157, shards, Some(&path));
            common::sorted_lines(&path)
        })
        .collect();
    assert!(logs[0].len() > 5_000, "{}", logs[0].len());
    for kind in [
        "gateway edge-gw-0000 connect attempt=0",
        "gateway edge-gw-0015 connected",
        "gateway qos0-gw-0003 connected",
        "session_lost reason=link down (outage)",
        "session_lost reason=keep-alive timeout (broker silent)",
        "session_error reason=gateway session lost",
        "no_link retry_in_us",
        "outage until_us",
        "partition until_s",
        "latency_spike delay_us=2000000",
        "reboot",
        "link_drop",
        "report",
        "ack latency_us",
        "publish telemetry",
        "dropped_qos0_offline",
    ] {
        assert!(
            logs[0].iter().any(|l| l.contains(kind)),
            "the log has {kind:?} lines"
        );
    }
    for (i, other) in logs.iter().enumerate().skip(1) {
        if *other != logs[0] {
            let first_diff = logs[0].iter().zip(other).find(|(a, b)| a != b);
            panic!(
                "{} shards differ from 1 (seed 11): first difference {first_diff:?}",
                i + 1
            );
        }
    }
}

#[test]
fn every_childs_messages_are_accounted_for_and_connections_are_gateway_sessions() {
    let out = run(157, 2, None);
    let t = out.last.totals;
    assert!(t.published > 10_000, "{t:?}");
    assert_eq!(
        t.published,
        t.acked + t.failed() + out.last.in_flight + out.last.buffered,
        "{t:?} in_flight={} buffered={}",
        out.last.in_flight,
        out.last.buffered
    );
    assert_eq!(out.last.devices_unaccounted, 0, "{t:?}");
    assert!(
        t.failed_unacked > 0 && t.failed_offline > 0 && t.failed_qos0_offline > 0,
        "gateway losses cost in-flight and buffered messages: {t:?}"
    );
    // 16 + 4 gateways: the broker sees 20 sessions, not 180 devices. Each connects once, and
    // again after each outage and partition that cut it.
    assert!(
        t.connects_ok >= 20 && t.connects_ok < 60,
        "connections are gateway sessions: {t:?}"
    );
    assert!(t.sessions_lost > 0 && t.sessions_lost < 40, "{t:?}");
    assert!(out.last.publish_ack.count > 0);
}

/// An outage of every gateway: all children go offline, buffer, and come back when the
/// gateway reconnects, not on their own backoff.
#[test]
fn a_gateway_outage_takes_every_child_offline_and_back_with_it() {
    let scenario = r#"
name = "o"
seed = 5
duration = "6m"
clock = "virtual"
[ramp]
mode = "all"
[[cohorts]]
name = "edge"
profile = "child.toml"
count = 40
[[events]]
at = "2m"
kind = "outage"
fraction = 1.0
duration = "90s"
"#;
    let child = CHILD
        .replace("loss = 0.02", "loss = 0.0")
        .replace("mtbf = \"8m\"", "mtbf = \"never\"")
        .replace("start_percent = [5, 100]", "start_percent = 100")
        .replace("offline_buffer = 5", "offline_buffer = 50")
        .replace("capacity_mah = 20", "capacity_mah = 2000");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.log");
    let out = common::run_files(
        vec![
            ("o.toml", scenario.to_string()),
            ("child.toml", child),
            ("fw.toml", common::FIRMWARE.to_string()),
        ],
        2,
        Some(&path),
    );
    let lines = common::sorted_lines(&path);
    let t = out.last.totals;
    assert_eq!(out.last.devices_unaccounted, 0, "{t:?}");
    // Every child lost its session at the outage (2 min = 120 s) ...
    let lost: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("session_error reason=gateway session lost (link down (outage))"))
        .collect();
    assert_eq!(lost.len(), 40, "{lost:?}");
    // ... buffered while the gateway was down, and flushed after it reconnected.
    let at = |l: &String| -> u64 {
        l.split_whitespace()
            .nth(1)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0)
    };
    assert!(lines.iter().any(|l| l.contains("buffered seq=")));
    let flushed = lines
        .iter()
        .filter(|l| l.contains("flushed count=") && at(l) > 200_000_000)
        .count();
    assert_eq!(flushed, 40, "each child flushed its buffer once");
    // Each child reconnected within a second of its gateway's reconnect after the outage.
    let gateway_back: Vec<u64> = lines
        .iter()
        .filter(|l| l.contains(" gateway ") && l.contains(" connected ") && at(l) > 200_000_000)
        .map(at)
        .collect();
    assert_eq!(
        gateway_back.len(),
        4,
        "4 gateways came back: {gateway_back:?}"
    );
    let children_back = lines
        .iter()
        .filter(|l| l.ends_with(" connected") && at(l) > 210_000_000)
        .filter(|l| {
            gateway_back
                .iter()
                .any(|g| at(l) >= *g && at(l) - g < 1_000_000)
        })
        .count();
    assert_eq!(children_back, 40, "every child came back with its gateway");
    assert_eq!(t.failed_offline, 0, "{t:?}");
    assert_eq!(out.last.buffered, 0, "{t:?}");
}
