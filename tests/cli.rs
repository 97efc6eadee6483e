//! End-to-end tests of the `fleetsim` binary: what a user types, what they get back.
//! Needs only the Rust toolchain: brokers are the embedded one (in fleetsim or in this test).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

mod common;
use common::{at, fleetsim, report, root, run, text};

use serde_json::Value;

/// A scenario in a temp dir that uses the shipped profiles by absolute path.
fn scenario(dir: &Path, body: &str) -> PathBuf {
    let profiles = root().join("device-profiles");
    let text = body.replace("PROFILES", &profiles.display().to_string());
    let path = dir.join("scenario.toml");
    std::fs::write(&path, text).expect("scenario written");
    path
}

#[test]
fn version_help_and_completions_answer() {
    let v = run(&["--version"]);
    assert!(v.status.success());
    assert!(text(&v).contains(env!("CARGO_PKG_VERSION")));
    let help = run(&["run", "--help"]);
    let h = text(&help);
    for flag in [
        "--devices",
        "--duration",
        "--seed",
        "--shards",
        "--headless",
        "--broker",
        "--report",
        "--event-log",
    ] {
        assert!(h.contains(flag), "run --help explains {flag}");
    }
    assert!(h.contains("Example: --duration 30s"), "{h}");
    for shell in ["bash", "zsh", "fish"] {
        let c = run(&["completions", shell]);
        assert!(
            c.status.success() && text(&c).contains("fleetsim"),
            "{shell}"
        );
    }
}

#[test]
fn validate_accepts_every_shipped_file() {
    let mut args = vec!["validate".to_string()];
    for dir in ["scenarios", "device-profiles", "firmware-models"] {
        for e in std::fs::read_dir(root().join(dir)).expect("dir") {
            args.push(e.expect("entry").path().display().to_string());
        }
    }
    let o = fleetsim().args(&args).output().expect("runs");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("files valid"));
}

#[test]
fn validate_explains_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad-profile.toml");
    std::fs::write(
        &bad,
        "name = \"x\"\n[identity]\ndevice_id = \"d-{serial}\"\ntelemetry_topic = \"t/#\"\n[reporting]\ninterval = \"10 parsecs\"\nqos = 3\n[firmware]\nmodel = \"fw.toml\"\nversion = \"1.0.0\"\n[mqtt]\nlast_will = false\n[commands]\nenabled = []\n",
    )
    .expect("write");
    let o = run(&["validate", bad.to_str().expect("utf-8 path")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    for expected in [
        "identity.device_id = \"d-{serial}\": unknown placeholder `{serial}`",
        "identity.telemetry_topic = \"t/#\": a topic to publish on must not contain + or #",
        "reporting.interval = \"10 parsecs\": must be a duration",
        "reporting.qos = 3: must be 0, 1 or 2",
    ] {
        assert!(t.contains(expected), "missing {expected:?} in:\n{t}");
    }
    assert!(t.contains("bad-profile.toml"), "names the file");
}

#[test]
fn a_bad_scenario_stops_the_run_with_exit_2_before_anything_starts() {
    let o = run(&[
        "run",
        "tests/fixtures/invalid/unknown-key.toml",
        "--headless",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("unknown-key.toml"));
    let o = run(&["run", "scenarios/smoke.toml", "--devices", "0"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["run", "no/such/scenario.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("no/such/scenario.toml"), "{}", text(&o));
    let o = run(&["run", "--duration", "soon"]);
    assert_eq!(o.status.code(), Some(2), "clap usage errors exit 2");
}

#[test]
fn tls_settings_that_cannot_work_stop_the_run_before_it_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = dir.path().join("r.json");
    let report = report.to_str().expect("utf-8 path");
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--broker",
                "mqtts://127.0.0.1:8883",
                "--broker",
                "mqtt://127.0.0.1:1883",
            ],
            "mix mqtts:// and mqtt://",
        ),
        (
            &["--broker", "mqtt://127.0.0.1:1883", "--ca-file", "ca.pem"],
            "apply to TLS brokers",
        ),
        (
            &[
                "--broker",
                "mqtts://127.0.0.1:8883",
                "--ca-file",
                "no/such/ca.pem",
            ],
            "no/such/ca.pem",
        ),
        (&["--broker", "mqtts://"], "has no host"),
    ];
    for (extra, says) in cases {
        let mut args = vec![
            "run",
            "scenarios/smoke.toml",
            "--headless",
            "--report",
            report,
        ];
        args.extend_from_slice(extra);
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", text(&o));
        assert!(
            text(&o).contains(says),
            "{extra:?} should say {says:?}: {}",
            text(&o)
        );
        assert!(
            !Path::new(report).exists(),
            "{extra:?}: a refused run leaves no report file behind"
        );
    }
}

#[test]
fn a_fleet_that_cannot_fit_the_open_files_limit_is_refused_with_advice() {
    // With the embedded broker every device needs two descriptors: half the limit plus one
    // device cannot fit (15,001 here, where the hard limit is 20,000).
    let limit = fleet_engine::process::raise_open_files_limit();
    let devices = limit / 2 + 1;
    assert!(
        devices <= u64::from(fleet_core::load::MAX_DEVICES),
        "open-files limit {limit} is beyond what a test can exceed"
    );
    let o = run(&[
        "run",
        "scenarios/smoke.toml",
        "--devices",
        &devices.to_string(),
        "--headless",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("open files") && t.contains("--devices") && t.contains("--broker"),
        "{t}"
    );
}

#[test]
fn a_wall_clock_run_on_the_embedded_broker_reports_every_required_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rep = dir.path().join("report.json");
    let o = run(&[
        "run",
        "scenarios/smoke.toml",
        "--devices",
        "30",
        "--duration",
        "3s",
        "--seed",
        "5",
        "--headless",
        "--report",
        rep.to_str().expect("utf-8"),
    ]);
    assert!(o.status.code() == Some(0), "{}", text(&o));
    let r = report(&rep);
    for key in [
        "run.seed",
        "run.scenario",
        "run.clock",
        "run.duration_s",
        "devices.total",
        "messages.published",
        "messages.acked",
        "messages.failed",
        "latency_us.publish_ack.count",
        "latency_us.publish_ack.p50",
        "latency_us.publish_ack.p90",
        "latency_us.publish_ack.p99",
        "latency_us.publish_ack.p999",
        "latency_us.publish_ack.max",
        "latency_us.connect.count",
        "latency_us.connect.p50",
        "latency_us.connect.p99",
        "latency_us.connect.max",
        "generator.saturated",
        "generator.max_lag_ms",
        "slo",
        "ok",
    ] {
        assert!(!at(&r, key).is_null(), "report lacks {key}");
    }
    assert_eq!(at(&r, "run.seed"), 5);
    assert_eq!(at(&r, "devices.total"), 30);
    assert_eq!(at(&r, "run.clock"), "wall");
    assert!(at(&r, "messages.published").as_u64() > Some(0));
    assert_eq!(
        at(&r, "messages.published"),
        at(&r, "messages.acked"),
        "nothing lost on loopback"
    );
    assert_eq!(at(&r, "latency_us.connect.count"), 30);
    for slo in at(&r, "slo").as_array().expect("slo list") {
        for k in ["name", "ok", "value", "limit"] {
            assert!(!slo[k].is_null(), "slo entry lacks {k}");
        }
    }
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(
        summary.contains("publish->ack") && summary.contains("result"),
        "{summary}"
    );
}

#[test]
fn a_failed_slo_exits_1_and_says_which() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scen = scenario(
        dir.path(),
        r#"
name = "impossible"
duration = "2m"
clock = "virtual"
[[cohorts]]
name = "meters"
profile = "PROFILES/smart-meter.toml"
count = 50
[[slo]]
name = "acks within one microsecond"
metric = "latency_us.publish_ack.p99"
max = 1
[[slo]]
name = "something was published"
metric = "messages.published"
min = 1
"#,
    );
    let rep = dir.path().join("r.json");
    let o = run(&[
        "run",
        scen.to_str().expect("utf-8"),
        "--headless",
        "--report",
        rep.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r = report(&rep);
    assert_eq!(r["ok"], false);
    assert_eq!(r["slo"][0]["ok"], false);
    assert_eq!(r["slo"][1]["ok"], true);
    assert!(String::from_utf8_lossy(&o.stdout).contains("FAIL  acks within one microsecond"));
}

fn virtual_event_log(scen: &Path, shards: &str, out: &Path) -> Vec<String> {
    let o = run(&[
        "run",
        scen.to_str().expect("utf-8"),
        "--clock",
        "virtual",
        "--shards",
        shards,
        "--headless",
        "--event-log",
        out.to_str().expect("utf-8"),
    ]);
    assert!(o.status.code().is_some_and(|c| c <= 1), "{}", text(&o));
    let mut lines: Vec<String> = std::fs::read_to_string(out)
        .expect("log")
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

#[test]
fn the_demo_in_virtual_time_gives_identical_event_logs_for_one_and_four_shards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scen = scenario(
        dir.path(),
        &std::fs::read_to_string(root().join("scenarios/demo.toml"))
            .expect("demo")
            .replace("../device-profiles", "PROFILES")
            .replace("count = 800", "count = 40")
            .replace("count = 600", "count = 30")
            .replace("count = 200", "count = 20")
            .replace("count = 400", "count = 20"),
    );
    let one = virtual_event_log(&scen, "1", &dir.path().join("one.log"));
    let four = virtual_event_log(&scen, "4", &dir.path().join("four.log"));
    assert!(one.len() > 1_000, "{} lines", one.len());
    assert!(one.iter().any(|l| l.contains("outage")) && one.iter().any(|l| l.contains("reboot")));
    assert_eq!(one.len(), four.len());
    if let Some((a, b)) = one.iter().zip(&four).find(|(a, b)| a != b) {
        panic!("first difference (seed from the scenario):\n  1 shard:  {a}\n  4 shards: {b}");
    }
}

/// Runs fleetsim against a broker this test starts, with a subscriber of its own, and checks
/// the telemetry contract and a command round trip.
#[tokio::test]
async fn telemetry_arrives_with_the_contract_intact_and_commands_are_answered() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    let broker = fleet_mqtt::broker::start(100, 1, fleet_mqtt::Version::V311).expect("broker");
    let addr = broker.listeners[0];
    let mut opts = MqttOptions::new("observer", addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 10_000);
    client
        .subscribe("fleetsim/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");

    let dir = tempfile::tempdir().expect("tempdir");
    let rep = dir.path().join("r.json");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetsim"))
        .current_dir(root())
        .args([
            "run",
            "scenarios/smoke.toml",
            "--devices",
            "20",
            "--duration",
            "6s",
            "--headless",
            "--broker",
            &format!("mqtt://{addr}"),
            "--report",
            rep.to_str().expect("utf-8"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("fleetsim starts");

    let mut telemetry: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    let mut responses = Vec::new();
    let mut last_status: std::collections::BTreeMap<String, bool> = Default::default();
    let mut commanded = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        tokio::select! {
            st = child.wait() => break st.expect("exit status"),
            ev = events.poll() => {
                let Ok(Event::Incoming(Packet::Publish(p))) = ev else { continue };
                let v: Value = match serde_json::from_slice(&p.payload) { Ok(v) => v, Err(_) => continue };
                if p.topic.ends_with("/telemetry") {
                    let id = v["device_id"].as_str().expect("device_id is a string").to_string();
                    assert!(p.topic.contains(&id), "topic {} names its device {id}", p.topic);
                    assert!(v["ts"].as_u64().is_some_and(|ts| ts > 1_700_000_000_000), "{v}");
                    assert!(v["fw"].is_string() && (v["battery"].is_number() || v["battery"].is_null()), "{v}");
                    assert!(v["values"].as_object().is_some_and(|o| !o.is_empty() && o.values().all(Value::is_number)), "{v}");
                    telemetry.entry(id.clone()).or_default().push(v["seq"].as_u64().expect("seq"));
                    if !commanded {
                        commanded = true;
                        let cmd = p.topic.replace("/telemetry", "/cmd");
                        for body in [r#"{"cmd":"ping","request_id":"t-1"}"#, "not json"] {
                            client.publish(cmd.clone(), QoS::AtLeastOnce, false, body).await.expect("publish");
                        }
                    }
                } else if p.topic.ends_with("/cmd/response") {
                    responses.push(v);
                } else if p.topic.ends_with("/status") {
                    let id = v["device_id"].as_str().expect("device_id").to_string();
                    last_status.insert(id, v["online"].as_bool().expect("online is a bool"));
                }
            }
            _ = tokio::time::sleep_until(deadline) => panic!("fleetsim did not finish in time"),
        }
    };
    assert!(status.success(), "exit {status:?}");
    // The last status of every device says offline: sent before the clean DISCONNECT.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while last_status.len() < 20 || last_status.values().any(|online| *online) {
        tokio::select! {
            ev = events.poll() => {
                let Ok(Event::Incoming(Packet::Publish(p))) = ev else { continue };
                if let (true, Ok(v)) = (p.topic.ends_with("/status"), serde_json::from_slice::<Value>(&p.payload)) {
                    last_status.insert(v["device_id"].as_str().expect("device_id").to_string(), v["online"] == true);
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    assert_eq!(last_status.len(), 20, "every device published its status");
    assert!(
        last_status.values().all(|online| !online),
        "every device said offline last: {last_status:?}"
    );
    let r = report(&rep);
    let published = at(&r, "messages.published").as_u64().expect("published");
    let received: usize = telemetry.values().map(Vec::len).sum();
    assert_eq!(
        received as u64, published,
        "every published message reached the subscriber"
    );
    for (id, seqs) in &telemetry {
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(
            seqs, &expected,
            "{id}: seq runs 1..N without gaps or duplicates"
        );
    }
    assert!(
        responses
            .iter()
            .any(|v| v["request_id"] == "t-1" && v["status"] == "ok" && v["pong"] == true),
        "{responses:?}"
    );
    assert!(
        responses.iter().any(|v| v["status"] == "error"),
        "malformed command answered: {responses:?}"
    );
    assert!(at(&r, "commands.received").as_u64() >= Some(2));
    assert!(at(&r, "commands.rejected").as_u64() >= Some(1));
}

#[test]
fn sessions_spread_over_source_addresses_and_broker_listeners() {
    let broker = fleet_mqtt::broker::start(100, 2, fleet_mqtt::Version::V5).expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let rep = dir.path().join("r.json");
    let urls: Vec<String> = broker
        .listeners
        .iter()
        .map(|a| format!("mqtt://{a}"))
        .collect();
    let o = run(&[
        "run",
        "scenarios/smoke.toml",
        "--devices",
        "24",
        "--duration",
        "3s",
        "--headless",
        "--mqtt-version",
        "5",
        "--broker",
        &urls[0],
        "--broker",
        &urls[1],
        "--source-addr",
        "127.0.0.2",
        "--source-addr",
        "127.0.0.3",
        "--tcp-nodelay",
        "false",
        "--report",
        rep.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = report(&rep);
    assert_eq!(at(&r, "connections.succeeded"), 24);
    assert_eq!(at(&r, "run.mqtt_version"), "5");
    assert_eq!(at(&r, "messages.published"), at(&r, "messages.acked"));
}

#[test]
fn ctrl_c_ends_the_run_early_and_the_report_is_still_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rep = dir.path().join("r.json");
    let child = fleetsim()
        .args([
            "run",
            "scenarios/smoke.toml",
            "--devices",
            "20",
            "--duration",
            "5m",
            "--headless",
            "--report",
        ])
        .arg(&rep)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starts");
    std::thread::sleep(Duration::from_secs(3));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let start = std::time::Instant::now();
    let out = child.wait_with_output().expect("exits");
    assert!(start.elapsed() < Duration::from_secs(10), "stops promptly");
    assert!(out.status.code().is_some_and(|c| c <= 1), "{}", text(&out));
    let r = report(&rep);
    assert_eq!(at(&r, "run.interrupted"), true);
    assert!(at(&r, "messages.published").as_u64() > Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("(interrupted)"));
}

#[test]
fn json_logs_carry_the_run_id() {
    let o = run(&[
        "--log-format",
        "json",
        "run",
        "scenarios/smoke.toml",
        "--devices",
        "5",
        "--duration",
        "2s",
        "--headless",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!lines.is_empty(), "{stderr}");
    assert!(
        lines.iter().all(|l| l["span"]["run_id"].is_string()),
        "{stderr}"
    );
}

#[test]
fn a_dead_broker_means_retries_with_backoff_not_a_crash() {
    // A port that nothing listens on: bind one, note it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let dir = tempfile::tempdir().expect("tempdir");
    let rep = dir.path().join("r.json");
    let o = run(&[
        "run",
        "scenarios/smoke.toml",
        "--devices",
        "10",
        "--duration",
        "4s",
        "--headless",
        "--broker",
        &format!("mqtt://127.0.0.1:{port}"),
        "--report",
        rep.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "the SLO fails, the run does not crash: {}",
        text(&o)
    );
    let r = report(&rep);
    let failed = at(&r, "connections.failed").as_u64().expect("failed");
    // Each device retries on its backoff (1 s doubling): a handful of attempts each, not a storm.
    assert!((10..=60).contains(&failed), "{failed} failed attempts");
    assert_eq!(at(&r, "messages.acked"), 0);
}

#[test]
fn idle_sessions_keep_alive_with_pings_and_the_broker_keeps_them() {
    // rumqttd drops a client that is silent for 1.5 keep-alives: with a 1 s keep-alive and
    // nothing to report for an hour, only PINGREQs keep these sessions up for 6 s.
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = std::fs::read_to_string(root().join("device-profiles/industrial-gateway.toml"))
        .expect("profile")
        .replace(
            "../firmware-models",
            &root().join("firmware-models").display().to_string(),
        );
    let profile = replace_value(&profile, "interval = ", "\"1h\"");
    let profile = replace_value(&profile, "keep_alive = ", "\"1s\"");
    std::fs::write(dir.path().join("idle.toml"), profile).expect("write");
    let scen = dir.path().join("s.toml");
    std::fs::write(
        &scen,
        "name = \"idle\"\nduration = \"6s\"\n[[cohorts]]\nname = \"gw\"\nprofile = \"idle.toml\"\ncount = 10\nlink = { mtbf = \"never\" }\n",
    )
    .expect("write");
    let rep = dir.path().join("r.json");
    let o = run(&[
        "run",
        scen.to_str().expect("utf-8"),
        "--headless",
        "--report",
        rep.to_str().expect("utf-8"),
    ]);
    assert!(o.status.code().is_some_and(|c| c <= 1), "{}", text(&o));
    let r = report(&rep);
    assert_eq!(at(&r, "connections.sessions_lost"), 0, "{}", text(&o));
    assert_eq!(at(&r, "connections.succeeded"), 10);
    assert_eq!(at(&r, "devices.by_state.online"), 10);
}

/// Replaces the value of the first line starting with `key` (a TOML `key = value` line).
fn replace_value(text: &str, key: &str, value: &str) -> String {
    let mut done = false;
    text.lines()
        .map(|l| {
            if !done && l.trim_start().starts_with(key) {
                done = true;
                format!("{key}{value}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One Modbus TCP request (read holding registers) on a plain socket; the answer's PDU.
fn modbus_read_holding(addr: &str, unit: u8, reg: u16, count: u16) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    let r = reg.to_be_bytes();
    let c = count.to_be_bytes();
    s.write_all(&[0, 1, 0, 0, 0, 6, unit, 0x03, r[0], r[1], c[0], c[1]])
        .ok()?;
    let mut head = [0u8; 7];
    s.read_exact(&mut head).ok()?;
    let len = usize::from(u16::from_be_bytes([head[4], head[5]])) - 1;
    let mut pdu = vec![0u8; len];
    s.read_exact(&mut pdu).ok()?;
    Some(pdu)
}

#[test]
fn modbus_slaves_are_served_the_map_is_written_and_the_report_counts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scen = scenario(
        dir.path(),
        r#"
name = "modbus-e2e"
duration = "4s"
[modbus]
port = 0
units_per_port = 3
[[cohorts]]
name = "meters"
profile = "PROFILES/power-meter.toml"
count = 5
mqtt = false
[[slo]]
name = "answered"
metric = "modbus.requests"
min = 1
"#,
    );
    let run_dir = dir.path().join("run");
    let rep = dir.path().join("r.json");
    let child = fleetsim()
        .args([
            "run",
            scen.to_str().expect("utf-8"),
            "--headless",
            "--run-dir",
        ])
        .arg(&run_dir)
        .arg("--report")
        .arg(&rep)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("fleetsim starts");
    let map = run_dir.join("modbus-map.csv");
    let mut text = String::new();
    for _ in 0..100 {
        if let Ok(t) = std::fs::read_to_string(&map)
            && t.lines().count() == 6
        {
            text = t;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 5, "map: {text}");
    assert_eq!(rows[4][0], "pm-000004");
    assert_eq!(
        (rows[4][2], rows[4][5]),
        ("tcp", "2"),
        "5 devices, 3 per port"
    );
    let addr = format!("{}:{}", rows[0][3], rows[0][4]);
    // Holding register 0 is the reporting interval: 5 s. Retry while the meter boots.
    let mut answer = None;
    for _ in 0..40 {
        answer = modbus_read_holding(&addr, 1, 0, 1);
        if answer.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(answer, Some(vec![0x03, 2, 0, 5]));
    // Unit 9 is on no port: the gateway's exception 0x0B.
    assert_eq!(modbus_read_holding(&addr, 9, 0, 1), Some(vec![0x83, 0x0B]));
    let out = child.wait_with_output().expect("fleetsim ends");
    assert!(out.status.success(), "{}", text_of_stderr(&out));
    let r = report(&rep);
    assert!(at(&r, "modbus.requests").as_u64() >= Some(2), "{r}");
    assert_eq!(at(&r, "modbus.unknown_unit").as_u64(), Some(1));
    assert_eq!(at(&r, "modbus.exceptions_by_code.0B").as_u64(), Some(1));
    assert_eq!(
        at(&r, "run.broker").as_str(),
        Some("none (no device speaks MQTT)")
    );
    let err = text_of_stderr(&out);
    assert!(
        err.contains("modbus-map.csv"),
        "the map's place is printed: {err}"
    );
}

fn text_of_stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_taken_modbus_port_stops_the_run_with_exit_2_and_the_fix() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let scen = scenario(
        dir.path(),
        "name = \"taken\"\nduration = \"2s\"\n[[cohorts]]\nname = \"m\"\nprofile = \"PROFILES/power-meter.toml\"\ncount = 2\nmqtt = false\n",
    );
    let out = fleetsim()
        .args([
            "run",
            scen.to_str().expect("utf-8"),
            "--headless",
            "--modbus-port",
            &port,
            "--run-dir",
        ])
        .arg(dir.path().join("run"))
        .output()
        .expect("fleetsim runs");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("cannot listen on 127.0.0.1:") && t.contains("--modbus-port 0"),
        "{t}"
    );
}
