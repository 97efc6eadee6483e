//! Gateway mode end to end: the shipped small gateway scenario on the embedded broker, and the
//! pre-flight check counting sessions (gateways), not devices.

use std::path::Path;

mod common;
use common::{report, run, text};

use serde_json::Value;

#[test]
fn the_gateway_smoke_run_has_one_session_per_gateway_and_accounts_for_every_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rep = dir.path().join("r.json");
    let o = run(&[
        "run",
        "scenarios/gateway-smoke.toml",
        "--headless",
        "--report",
        rep.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = report(&rep);
    let (m, c) = (&r["messages"], &r["connections"]);
    assert_eq!(r["devices"]["total"], 4000);
    assert_eq!(r["devices"]["peak_online"], 4000, "{}", r["devices"]);
    assert_eq!(c["first_connects"], 4000, "{c}");
    // 4 gateways connected, one lost its session to the outage and came back: 5 connects, not
    // 4,000 (the broker sees one session per gateway).
    assert_eq!(c["succeeded"], 5, "{c}");
    assert_eq!(c["sessions_lost"], 1, "{c}");
    assert_eq!(c["failed"], 0, "{c}");
    assert_eq!(m["unaccounted"], 0, "{m}");
    assert_eq!(m["devices_unaccounted"], 0, "{m}");
    let n = |v: &Value| v.as_u64().unwrap_or(u64::MAX);
    assert_eq!(
        n(&m["published"]),
        n(&m["acked"]) + n(&m["failed"]) + n(&m["in_flight"]) + n(&m["buffered"]),
        "{m}"
    );
    assert!(n(&m["published"]) > 300, "{m}");
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(summary.contains("sessions lost 1"), "{summary}");
}

#[test]
fn a_gateway_fleet_is_checked_for_its_sessions_not_its_devices() {
    // Half the open-files limit plus one devices do not fit one session each with the embedded
    // broker (tests/cli.rs); behind gateways of 1,000 they are a few dozen sessions.
    let limit = fleet_engine::process::raise_open_files_limit();
    let devices = (limit / 2 + 1).div_ceil(1000) * 1000;
    let dir = tempfile::tempdir().expect("tempdir");
    let rep = dir.path().join("r.json");
    let o = run(&[
        "run",
        "scenarios/gateway-smoke.toml",
        "--devices",
        &devices.to_string(),
        "--duration",
        "1s",
        "--headless",
        "--report",
        rep.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = report(&rep);
    assert_eq!(r["devices"]["total"], devices);
    assert_eq!(r["messages"]["unaccounted"], 0);
}

/// The event log of the gateway scenario on the virtual clock with `shards` shards, sorted.
fn virtual_event_log(shards: &str, out: &Path) -> Vec<String> {
    let o = run(&[
        "run",
        "scenarios/gateway-smoke.toml",
        "--clock",
        "virtual",
        "--duration",
        "2m",
        "--shards",
        shards,
        "--headless",
        "--event-log",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let mut lines: Vec<String> = std::fs::read_to_string(out)
        .expect("log")
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

#[test]
fn the_gateway_scenario_in_virtual_time_gives_identical_event_logs_for_one_and_three_shards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let one = virtual_event_log("1", &dir.path().join("one.log"));
    let three = virtual_event_log("3", &dir.path().join("three.log"));
    assert!(one.len() > 20_000, "{} lines", one.len());
    for kind in [
        "gateway edge-gw-0000 connected",
        "gateway edge-gw-0002 outage until_us=11000000",
        "session_error reason=gateway session lost (link down (outage))",
    ] {
        assert!(one.iter().any(|l| l.contains(kind)), "the log has {kind:?}");
    }
    assert_eq!(one.len(), three.len());
    if let Some((a, b)) = one.iter().zip(&three).find(|(a, b)| a != b) {
        panic!("first difference (seed 1):\n  1 shard:  {a}\n  3 shards: {b}");
    }
}
