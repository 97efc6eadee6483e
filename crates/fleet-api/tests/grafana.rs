//! The shipped Grafana dashboard uses only metric names `/metrics` emits, so the two cannot
//! drift apart.

use std::collections::BTreeSet;

use fleet_api::render_metrics;
use fleet_metrics::FleetSnapshot;

const DASHBOARD: &str = include_str!("../../../deploy/grafana/fleetsim-dashboard.json");

/// Every `fleetsim_[a-z0-9_]+` in `text` (names may hold digits: `..._lag_p99_seconds`).
fn metric_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("fleetsim_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// (families, histogram families) that `render_metrics` writes, from its `# TYPE` lines.
fn exported() -> (BTreeSet<String>, BTreeSet<String>) {
    let text = render_metrics(&FleetSnapshot::default());
    let mut all = BTreeSet::new();
    let mut histograms = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            all.insert(name.to_string());
            if kind == "histogram" {
                histograms.insert(name.to_string());
            }
        }
    }
    (all, histograms)
}

/// Every string under a key named `key`, anywhere in the document.
fn strings_under(v: &serde_json::Value, key: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                match child {
                    serde_json::Value::String(s) if k == key => out.push(s.clone()),
                    _ => strings_under(child, key, out),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                strings_under(item, key, out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_metric_the_dashboard_queries_is_one_the_exporter_writes() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let (families, histograms) = exported();
    let mut exprs = Vec::new();
    strings_under(&dashboard["panels"], "expr", &mut exprs);
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if var["type"] == "query" {
            strings_under(var, "query", &mut exprs);
        }
    }
    assert!(exprs.len() > 20, "{} expressions", exprs.len());
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "an expression without a fleetsim metric: {expr}"
        );
        for name in names {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| histograms.contains(*base))
                .unwrap_or(&name);
            assert!(
                families.contains(family),
                "the dashboard uses {name}, which /metrics does not write: {expr}"
            );
            if histograms.contains(family) {
                assert!(
                    name.ends_with("_bucket") || name.ends_with("_sum") || name.ends_with("_count"),
                    "histogram {name} used without a suffix: {expr}"
                );
            }
            used.insert(family.to_string());
        }
    }
    for required in [
        "fleetsim_devices",
        "fleetsim_telemetry_published_total",
        "fleetsim_telemetry_acked_total",
        "fleetsim_publish_ack_latency_seconds",
        "fleetsim_connect_latency_seconds",
        "fleetsim_telemetry_failed_total",
        "fleetsim_sessions_lost_total",
        "fleetsim_connect_attempts_total",
        "fleetsim_shard_lag_max_seconds",
        "fleetsim_firmware_devices",
        "fleetsim_ota_stage_devices",
        "fleetsim_rollout_devices",
        "fleetsim_modbus_requests_total",
        "fleetsim_paused",
    ] {
        assert!(
            used.contains(required),
            "the dashboard does not show {required}"
        );
    }
}

#[test]
fn the_dashboard_imports_with_a_chosen_prometheus() {
    let d: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    assert_eq!(d["schemaVersion"], 39);
    assert_eq!(d["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(d["__inputs"][0]["pluginId"], "prometheus");
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource")
    );
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel id twice: {p}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
}
