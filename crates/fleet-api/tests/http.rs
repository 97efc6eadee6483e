//! The API over real HTTP: `serve` on 127.0.0.1:0 over a fake `FleetPort`, asked with a plain
//! blocking TCP client (every read bounded by a timeout), and `RemoteFleet` against two servers.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_api::{ApiConfig, ApiError, ApiServer, MAX_BODY_BYTES, RemoteFleet, serve};
use fleet_core::DeviceState;
use fleet_metrics::{
    Command, CommandAck, DeviceDetail, ErrorKind, FaultRequest, FleetPort, FleetSnapshot,
    PortError, RolloutRequest,
};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A run that records the commands it gets and serves a fixed snapshot.
struct FakePort {
    snapshot: Mutex<Option<Arc<FleetSnapshot>>>,
    commands: Mutex<Vec<Command>>,
    devices: Vec<DeviceDetail>,
}

impl FakePort {
    fn new(snapshot: Option<FleetSnapshot>, device_ids: &[u32]) -> Arc<FakePort> {
        Arc::new(FakePort {
            snapshot: Mutex::new(snapshot.map(Arc::new)),
            commands: Mutex::new(Vec::new()),
            devices: device_ids
                .iter()
                .map(|&id| DeviceDetail {
                    id,
                    device_id: format!("env-{id:06}"),
                    state: "online".into(),
                    ..DeviceDetail::default()
                })
                .collect(),
        })
    }

    fn commands(&self) -> Vec<Command> {
        self.commands.lock().expect("lock").clone()
    }
}

impl FleetPort for FakePort {
    fn snapshot(&self) -> Option<Arc<FleetSnapshot>> {
        self.snapshot.lock().expect("lock").clone()
    }

    fn command(&self, cmd: Command) -> Result<CommandAck, PortError> {
        if cmd == Command::Resume {
            return Err(PortError::new(
                ErrorKind::Conflict,
                "resume: the run is not paused",
            ));
        }
        let message = cmd.describe();
        self.commands.lock().expect("lock").push(cmd);
        Ok(CommandAck {
            message,
            sim_time_s: 12.0,
        })
    }

    fn device(&self, key: &str) -> Result<DeviceDetail, PortError> {
        self.devices
            .iter()
            .find(|d| d.id.to_string() == key || d.device_id == key)
            .cloned()
            .ok_or_else(|| {
                PortError::new(
                    ErrorKind::NotFound,
                    format!("device {key:?}: no such device"),
                )
            })
    }
}

/// A snapshot as a run would serve it: percentiles from real histograms.
fn fixture(devices: u64, latencies_us: &[u64]) -> FleetSnapshot {
    let mut s = FleetSnapshot {
        devices_total: devices,
        elapsed_s: 12.5,
        sim_time_s: 12.0,
        versions: vec![devices],
        version_labels: vec!["env 1.0".into()],
        ..FleetSnapshot::default()
    };
    s.run.run_id = "run-1".into();
    s.run.scenario = "demo".into();
    s.run.clock = "wall".into();
    s.run.shards = 1;
    s.run.processes = 1;
    s.states[DeviceState::Online.index()] = devices;
    s.totals.published = devices * 10;
    for &v in latencies_us {
        s.histograms.publish_ack_us.record(v);
        s.histograms.connect_us.record(v * 2);
    }
    s.publish_ack = s.histograms.publish_ack_us.percentiles();
    s.connect = s.histograms.connect_us.percentiles();
    s.shards = vec![fleet_metrics::ShardLoad {
        shard: 0,
        devices,
        online: devices,
        ..Default::default()
    }];
    s
}

fn start(port: Arc<FakePort>, token: Option<&str>) -> ApiServer {
    serve(
        port,
        ApiConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            token: token.map(String::from),
            read_only: false,
        },
    )
    .expect("serve")
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> serde_json::Value {
        assert!(
            self.header("content-type").starts_with("application/json"),
            "not JSON: {self:?}"
        );
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
    /// Asserts the error format and returns (kind, message).
    fn error(&self, status: u16) -> (String, String) {
        assert_eq!(self.status, status, "{}", self.text());
        let v = self.json();
        let kind = v["error"]["kind"].as_str().expect("error.kind").to_string();
        let message = v["error"]["message"]
            .as_str()
            .expect("error.message")
            .to_string();
        assert!(!message.is_empty());
        (kind, message)
    }
}

/// One request over a fresh connection (`Connection: close`).
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
    s.set_write_timeout(Some(IO_TIMEOUT))
        .expect("write timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).expect("send the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the answer");
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .expect("status code")
        .parse()
        .expect("status code");
    let headers: BTreeMap<String, String> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header line");
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        body = dechunk(&body);
    } else if let Some(n) = headers.get("content-length") {
        assert_eq!(
            body.len(),
            n.parse::<usize>().expect("content-length"),
            "body length"
        );
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size = usize::from_str_radix(
            std::str::from_utf8(&b[..eol]).expect("chunk size").trim(),
            16,
        )
        .expect("chunk size");
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn get(addr: SocketAddr, path: &str) -> Resp {
    http(addr, "GET", path, &[], b"")
}

fn post_json(addr: SocketAddr, path: &str, body: &str) -> Resp {
    http(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

/// A small parser of the exposition format: (name, sorted labels) -> value, and the families'
/// types. Panics on any malformed line.
fn parse_metrics(text: &str) -> (BTreeMap<String, String>, BTreeMap<(String, String), f64>) {
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "{line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = if value == "+Inf" {
            f64::INFINITY
        } else {
            value.parse().expect("sample value")
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').unwrap_or_else(|| panic!("{line}"))),
            None => (series, ""),
        };
        assert!(
            name.starts_with("fleetsim_")
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{line}"
        );
        assert!(
            samples
                .insert((name.to_string(), labels.to_string()), value)
                .is_none(),
            "duplicate series {line}"
        );
    }
    (types, samples)
}

#[test]
fn health_snapshot_and_metrics_answer_over_http() {
    let values: Vec<u64> = (1..2000).map(|v| v * 97 % 50_000 + 100).collect();
    let snap = fixture(40, &values);
    let server = start(FakePort::new(Some(snap.clone()), &[]), None);
    let addr = server.local_addr;

    let r = get(addr, "/api/v1/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"status": "ok"}));

    let r = get(addr, "/api/v1/snapshot");
    assert_eq!(r.status, 200);
    let got: FleetSnapshot = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(got.devices_total, 40);
    // serde_json reads floats back within one ulp (the mean); the histograms exactly.
    assert_eq!(
        (got.publish_ack.count, got.publish_ack.p99),
        (snap.publish_ack.count, snap.publish_ack.p99)
    );
    assert_eq!(
        got.histograms.publish_ack_us.percentiles(),
        snap.publish_ack
    );

    let r = get(addr, "/api/v1/snapshot?histograms=false");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert!(v.get("histograms").is_none());
    assert_eq!(v["devices_total"], 40);
    let got: FleetSnapshot = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(got.publish_ack.p50, snap.publish_ack.p50);
    assert_eq!(got.histograms.publish_ack_us.count(), 0);

    let (kind, message) = get(addr, "/api/v1/snapshot?histograms=maybe").error(400);
    assert_eq!(kind, "bad_request");
    assert!(message.contains("histograms"), "{message}");

    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let (types, samples) = parse_metrics(&r.text());
    assert_eq!(types["fleetsim_devices"], "gauge");
    assert_eq!(types["fleetsim_publish_ack_latency_seconds"], "histogram");
    assert_eq!(types["fleetsim_telemetry_published_total"], "counter");
    let sample = |name: &str, labels: &str| samples[&(name.to_string(), labels.to_string())];
    assert_eq!(sample("fleetsim_devices", r#"state="online""#), 40.0);
    assert_eq!(sample("fleetsim_devices_total", ""), 40.0);
    assert_eq!(sample("fleetsim_telemetry_published_total", ""), 400.0);
    assert_eq!(
        sample("fleetsim_firmware_devices", r#"version="env 1.0""#),
        40.0
    );
    assert_eq!(
        sample("fleetsim_publish_ack_latency_seconds_count", ""),
        values.len() as f64
    );
    assert_eq!(
        sample(
            "fleetsim_publish_ack_latency_seconds_bucket",
            r#"le="+Inf""#
        ),
        values.len() as f64
    );
    assert_eq!(
        sample("fleetsim_publish_ack_latency_seconds_bucket", r#"le="0.1""#),
        values.len() as f64,
        "every latency is below 100 ms"
    );
    server.shutdown();
}

#[test]
fn devices_are_found_by_number_or_id_and_unknown_ones_are_404() {
    let server = start(FakePort::new(Some(fixture(10, &[])), &[3, 42]), None);
    let addr = server.local_addr;
    let r = get(addr, "/api/v1/devices/42");
    assert_eq!(r.status, 200);
    let d: DeviceDetail = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(d.device_id, "env-000042");
    let r = get(addr, "/api/v1/devices/env-000003");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], 3);
    let (kind, message) = get(addr, "/api/v1/devices/999").error(404);
    assert_eq!(kind, "not_found");
    assert!(message.contains("999"), "{message}");
}

#[test]
fn commands_are_accepted_with_202_and_reach_the_port() {
    let port = FakePort::new(Some(fixture(10, &[])), &[]);
    let server = start(port.clone(), None);
    let addr = server.local_addr;

    let r = http(addr, "POST", "/api/v1/pause", &[], b"");
    assert_eq!(r.status, 202, "{}", r.text());
    let ack: CommandAck = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(ack.message, "pause");
    assert_eq!(ack.sim_time_s, 12.0);

    let r = post_json(
        addr,
        "/api/v1/faults",
        r#"{"kind":"outage","fraction":0.5,"duration":"30s"}"#,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let r = post_json(
        addr,
        "/api/v1/rollouts",
        r#"{"name":"canary","target_version":"1.1","waves":[0.1,1.0]}"#,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(
        port.commands(),
        vec![
            Command::Pause,
            Command::Fault(FaultRequest {
                kind: "outage".into(),
                fraction: Some(0.5),
                duration: Some("30s".into()),
                ..FaultRequest::default()
            }),
            Command::Rollout(RolloutRequest {
                name: "canary".into(),
                target_version: "1.1".into(),
                waves: Some(vec![0.1, 1.0]),
                ..RolloutRequest::default()
            }),
        ]
    );

    // The port's own refusal keeps its status.
    let (kind, message) = http(addr, "POST", "/api/v1/resume", &[], b"").error(409);
    assert_eq!(kind, "conflict");
    assert_eq!(message, "resume: the run is not paused");
}

#[test]
fn bad_requests_get_json_errors_with_the_right_status() {
    let port = FakePort::new(Some(fixture(10, &[])), &[]);
    let server = start(port.clone(), None);
    let addr = server.local_addr;

    let (kind, message) = post_json(addr, "/api/v1/faults", r#"{"kind": "outage""#).error(400);
    assert_eq!(kind, "bad_request");
    assert!(message.starts_with("invalid JSON body: EOF"), "{message}");

    let (_, message) =
        post_json(addr, "/api/v1/faults", r#"{"kind":"outage","frac":0.5}"#).error(400);
    assert!(message.contains("unknown field `frac`"), "{message}");

    let (_, message) = post_json(addr, "/api/v1/rollouts", r#"{"name":"x"}"#).error(400);
    assert!(
        message.contains("missing field `target_version`"),
        "{message}"
    );

    let r = http(
        addr,
        "POST",
        "/api/v1/faults",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"kind=outage",
    );
    let (_, message) = r.error(400);
    assert!(
        message.contains("Content-Type: application/json"),
        "{message}"
    );

    let (kind, message) = get(addr, "/api/v2/everything").error(404);
    assert_eq!(kind, "not_found");
    assert!(message.contains("/api/v2/everything"), "{message}");

    let r = get(addr, "/api/v1/pause");
    let (kind, message) = r.error(405);
    assert_eq!(kind, "method_not_allowed");
    assert!(r.header("allow").contains("POST"), "{r:?}");
    assert!(message.contains("GET"), "{message}");
    let (kind, _) = http(addr, "DELETE", "/metrics", &[], b"").error(405);
    assert_eq!(kind, "method_not_allowed");

    // Just over the limit (so the whole body is read before the answer).
    let mut big = String::from(r#"{"kind":"outage","cohort":""#);
    big.push_str(&"x".repeat(MAX_BODY_BYTES));
    big.push_str(r#""}"#);
    let (kind, message) = post_json(addr, "/api/v1/faults", &big).error(413);
    assert_eq!(kind, "payload_too_large");
    assert!(message.contains("65536"), "{message}");

    assert!(port.commands().is_empty(), "nothing bad reached the port");
}

#[test]
fn before_the_first_snapshot_metrics_and_snapshot_are_503() {
    let server = start(FakePort::new(None, &[]), None);
    let addr = server.local_addr;
    for path in ["/metrics", "/api/v1/snapshot"] {
        let (kind, message) = get(addr, path).error(503);
        assert_eq!(kind, "unavailable");
        assert!(message.contains("no snapshot yet"), "{message}");
    }
    assert_eq!(get(addr, "/api/v1/health").status, 200);
}

#[test]
fn with_a_token_every_endpoint_requires_it() {
    let server = start(
        FakePort::new(Some(fixture(10, &[])), &[1]),
        Some("s3cret-token"),
    );
    let addr = server.local_addr;
    for path in [
        "/metrics",
        "/api/v1/health",
        "/api/v1/snapshot",
        "/api/v1/devices/1",
        "/nowhere",
    ] {
        let r = get(addr, path);
        let (kind, message) = r.error(401);
        assert_eq!(kind, "unauthorized");
        assert!(message.contains("Authorization: Bearer"), "{message}");
        assert_eq!(r.header("www-authenticate"), "Bearer");
    }
    let (_, message) = http(
        addr,
        "POST",
        "/api/v1/pause",
        &[("Authorization", "Bearer wrong")],
        b"",
    )
    .error(401);
    assert!(message.contains("wrong"), "{message}");
    let r = http(
        addr,
        "GET",
        "/metrics",
        &[("Authorization", "Basic czNjcmV0LXRva2Vu")],
        b"",
    );
    assert_eq!(r.status, 401);

    let auth = [("Authorization", "Bearer s3cret-token")];
    for path in [
        "/metrics",
        "/api/v1/health",
        "/api/v1/snapshot",
        "/api/v1/devices/1",
    ] {
        let r = http(addr, "GET", path, &auth, b"");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    assert_eq!(http(addr, "POST", "/api/v1/pause", &auth, b"").status, 202);
    assert_eq!(http(addr, "GET", "/nowhere", &auth, b"").status, 404);
}

#[test]
fn a_non_loopback_address_without_a_token_is_refused() {
    let err = serve(
        FakePort::new(None, &[]),
        ApiConfig {
            listen: "0.0.0.0:0".parse().unwrap(),
            token: None,
            read_only: false,
        },
    )
    .unwrap_err();
    assert!(matches!(err, ApiError::TokenRequired { .. }));
    let message = err.to_string();
    assert!(message.starts_with("--api-listen 0.0.0.0:0: "), "{message}");
    assert!(message.contains("--api-token"), "{message}");
    assert!(message.contains("FLEETSIM_API_TOKEN"), "{message}");

    // With a token it serves.
    let server = serve(
        FakePort::new(None, &[]),
        ApiConfig {
            listen: "0.0.0.0:0".parse().unwrap(),
            token: Some("t".into()),
            read_only: false,
        },
    )
    .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], server.local_addr.port()));
    assert_eq!(
        http(
            addr,
            "GET",
            "/api/v1/health",
            &[("Authorization", "Bearer t")],
            b""
        )
        .status,
        200
    );

    let err = serve(
        FakePort::new(None, &[]),
        ApiConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            token: Some(String::new()),
            read_only: false,
        },
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "--api-token: must not be empty");
}

#[test]
fn a_read_only_api_serves_gets_anywhere_without_a_token_and_refuses_every_post() {
    let port = FakePort::new(Some(fixture(10, &[1_000, 2_000])), &[]);
    let server = serve(
        port.clone(),
        ApiConfig {
            listen: "0.0.0.0:0".parse().unwrap(),
            token: None,
            read_only: true,
        },
    )
    .expect("a read-only API needs no token off loopback");
    let addr = SocketAddr::from(([127, 0, 0, 1], server.local_addr.port()));
    assert_eq!(get(addr, "/metrics").status, 200);
    assert_eq!(get(addr, "/api/v1/snapshot").status, 200);
    for path in [
        "/api/v1/pause",
        "/api/v1/resume",
        "/api/v1/faults",
        "/api/v1/rollouts",
    ] {
        let r = post_json(addr, path, "{}");
        assert_eq!(r.status, 403, "{path}");
        let body = String::from_utf8_lossy(&r.body);
        assert!(body.contains("read_only"), "{path}: {body}");
    }
    assert!(
        port.commands.lock().unwrap().is_empty(),
        "no command reached the run through a read-only API"
    );
}

#[test]
fn a_busy_address_is_reported_when_serving_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap();
    let err = serve(
        FakePort::new(None, &[]),
        ApiConfig {
            listen,
            token: None,
            read_only: false,
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("--api-listen {listen}: address in use")
    );
}

/// Polls `f` every 20 ms until it returns Some, for at most 10 s.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn remote_fleet_merges_two_processes_and_commands_reach_both() {
    let (a_values, b_values): (Vec<u64>, Vec<u64>) = (1..3000u64)
        .map(|v| v * 131 % 80_000 + 50)
        .partition(|v| v % 3 == 0);
    let all: Vec<u64> = a_values.iter().chain(&b_values).copied().collect();
    let port_a = FakePort::new(Some(fixture(30, &a_values)), &[1, 2]);
    let port_b = FakePort::new(Some(fixture(70, &b_values)), &[7]);
    let (a, b) = (
        start(port_a.clone(), Some("tok")),
        start(port_b.clone(), Some("tok")),
    );
    let urls = vec![
        format!("http://{}", a.local_addr),
        format!("http://{}/", b.local_addr),
    ];
    let remote = RemoteFleet::connect(urls, Some("tok".into())).unwrap();

    let snap = eventually("both processes", || {
        remote.snapshot().filter(|s| s.run.processes == 2)
    });
    assert_eq!(snap.devices_total, 100);
    assert_eq!(snap.state(DeviceState::Online), 100);
    assert_eq!(snap.totals.published, 1000);
    assert_eq!(snap.versions, [100]);
    let whole = fixture(100, &all);
    assert_eq!(
        snap.publish_ack, whole.publish_ack,
        "percentiles of the merged histograms"
    );
    assert_eq!(snap.shards.len(), 2);
    assert_eq!(snap.shards[1].process, 1);
    assert_eq!(
        snap.run.source,
        format!("http://{}, http://{}", a.local_addr, b.local_addr)
    );

    let ack = remote.command(Command::Pause).unwrap();
    assert_eq!(ack.message, "pause (on all 2 processes)");
    assert_eq!(port_a.commands(), [Command::Pause]);
    assert_eq!(port_b.commands(), [Command::Pause]);
    let fault = Command::Fault(FaultRequest {
        kind: "reboot_wave".into(),
        spread: Some("10s".into()),
        ..FaultRequest::default()
    });
    remote.command(fault.clone()).unwrap();
    assert_eq!(port_b.commands().last(), Some(&fault));

    let err = remote.command(Command::Resume).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict);
    assert!(
        err.message
            .starts_with(&format!("http://{}: resume", a.local_addr)),
        "{}",
        err.message
    );

    assert_eq!(remote.device("7").unwrap().device_id, "env-000007");
    assert_eq!(remote.device("env-000002").unwrap().id, 2);
    let err = remote.device("12345").unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{}", err.message);

    // One process goes away: its last snapshot stays, and the view says so once.
    b.shutdown();
    let snap = eventually("the not-answering event", || {
        remote
            .snapshot()
            .filter(|s| s.events.iter().any(|e| e.message.contains("not answering")))
    });
    assert_eq!(snap.devices_total, 100);
    let said: Vec<&str> = snap
        .events
        .iter()
        .map(|e| e.message.as_str())
        .filter(|m| m.contains("not answering"))
        .collect();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].starts_with(&urls_b_prefix(&snap)), "{said:?}");
    let err = remote.command(Command::Pause).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(err.message.contains("not answering"), "{}", err.message);
}

#[test]
fn a_process_marked_lost_leaves_the_merged_view_and_is_not_asked_again() {
    let port_a = FakePort::new(Some(fixture(30, &[1_000])), &[1]);
    let port_b = FakePort::new(Some(fixture(70, &[2_000])), &[7]);
    let (a, b) = (start(port_a.clone(), None), start(port_b.clone(), None));
    let remote = RemoteFleet::connect(
        vec![
            format!("http://{}", a.local_addr),
            format!("http://{}", b.local_addr),
        ],
        None,
    )
    .unwrap();
    eventually("both processes", || {
        remote.snapshot().filter(|s| s.devices_total == 100)
    });
    remote.mark_lost(1, "shard 1/2 (a 35..70) was killed by signal 9".into());
    let snap = eventually("the lost process to leave", || {
        remote.snapshot().filter(|s| s.devices_total == 30)
    });
    let said: Vec<&str> = snap
        .events
        .iter()
        .map(|e| e.message.as_str())
        .filter(|m| m.contains("lost"))
        .collect();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].ends_with("lost: shard 1/2 (a 35..70) was killed by signal 9"),
        "{said:?}"
    );
    assert!(
        snap.run.source.contains("1 of 2 processes lost"),
        "{}",
        snap.run.source
    );
    // Commands go to the processes still there, and succeed.
    let ack = remote.command(Command::Pause).unwrap();
    assert_eq!(ack.message, "pause");
    assert_eq!(port_a.commands(), [Command::Pause]);
    assert!(port_b.commands().is_empty());
}

/// The URL of the second process, as the merged view names it.
fn urls_b_prefix(snap: &FleetSnapshot) -> String {
    snap.run
        .source
        .split(", ")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

#[test]
fn remote_fleet_leaves_out_a_process_that_never_answered() {
    let server = start(FakePort::new(Some(fixture(5, &[])), &[]), None);
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let remote = RemoteFleet::connect(
        vec![
            format!("http://{}", server.local_addr),
            format!("http://{closed}"),
        ],
        None,
    )
    .unwrap();
    let snap = remote
        .wait_for_snapshot(Duration::from_secs(10))
        .expect("a snapshot");
    assert_eq!(snap.devices_total, 5);
    assert_eq!(snap.run.processes, 1);
    assert!(
        snap.run
            .source
            .contains(&format!("never answered: http://{closed}")),
        "{}",
        snap.run.source
    );
}

#[test]
fn remote_fleet_checks_its_urls() {
    let e = RemoteFleet::connect(vec!["https://127.0.0.1:9000".into()], None).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("--attach https://127.0.0.1:9000: https is not supported"),
        "{e}"
    );
    let e = RemoteFleet::connect(vec!["localhost:9000".into()], None).unwrap_err();
    assert!(e.to_string().contains("expected http://HOST:PORT"), "{e}");
    assert!(matches!(
        RemoteFleet::connect(vec![], None),
        Err(ApiError::NoUrls)
    ));
}
