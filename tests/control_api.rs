//! The control API end to end: the `fleetsim` binary with `--api-listen`, steered over HTTP
//! while it runs (docs/api.md). Needs only the Rust toolchain: the embedded broker, and a small
//! HTTP/1.1 client here (one request per connection, `Connection: close`).
//! Every wait is bounded and waits for a condition (snapshots come once a second: a newer one
//! is one with a larger `elapsed_s`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Connect, read and write timeout of one request (a device lookup may wait about 2 s).
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a run may take to say where its API listens.
const STARTUP: Duration = Duration::from_secs(30);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// The binary, with its output collected on threads.

/// A fleetsim process: stdout and stderr are read on threads (the pipes never fill up);
/// stderr is watched for the line that says where the control API listens. Killed if a test
/// fails while it runs.
struct Proc {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    api: Receiver<SocketAddr>,
}

struct Ended {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ended {
    fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

fn fleetsim(args: &[&str]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetsim"))
        .current_dir(root())
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("FLEETSIM_API_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fleetsim starts");
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let (tx, api) = channel();
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let readers = vec![
        collect(out, stdout.clone(), None),
        collect(err, stderr.clone(), Some(tx)),
    ];
    Proc {
        child,
        stdout,
        stderr,
        readers,
        api,
    }
}

/// Appends every line of `from` to `into`; sends the control API's address when a line says
/// `control API on http://ADDR (...)`.
fn collect(
    from: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
    api: Option<Sender<SocketAddr>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(from);
        let mut line = Vec::new();
        while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line).into_owned();
            if let (Some(tx), Some((_, rest))) = (&api, text.split_once("control API on http://"))
                && let Some(addr) = rest.split_whitespace().next()
                && let Ok(addr) = addr.parse()
            {
                let _ = tx.send(addr);
            }
            lock(&into).push_str(&text);
            line.clear();
        }
    })
}

fn lock(s: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Proc {
    /// The control API's address, from the log on stderr.
    fn api_addr(&mut self) -> SocketAddr {
        let deadline = Instant::now() + STARTUP;
        loop {
            match self.api.recv_timeout(Duration::from_millis(200)) {
                Ok(addr) => return addr,
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!(
                            "fleetsim exited ({status}) before serving the API:\n{}",
                            lock(&self.stderr)
                        );
                    }
                }
                Err(_) => panic!(
                    "no `control API on http://...` line on stderr within {STARTUP:?}:\n{}",
                    lock(&self.stderr)
                ),
            }
        }
    }

    fn api(&mut self, token: Option<&str>) -> Api {
        Api {
            addr: self.api_addr(),
            token: token.map(String::from),
        }
    }

    /// Ctrl-C, as a person would (the run stops early and writes its report).
    fn interrupt(&self) {
        let sent = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGINT sent");
    }

    /// Waits for the exit (at most `limit`) and the rest of its output.
    fn wait(&mut self, limit: Duration) -> Ended {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "fleetsim did not exit within {limit:?}; stderr:\n{}",
                    lock(&self.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Ended {
            status,
            stdout: lock(&self.stdout).clone(),
            stderr: lock(&self.stderr).clone(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The run's report; every run these tests make must account for every message (outages,
/// reboots and pauses on the wall clock with messages held for their link latency).
fn report(path: &Path) -> Value {
    let r: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("report written"))
        .expect("report is JSON");
    assert_eq!(r["messages"]["unaccounted"], 0, "{}", r["messages"]);
    assert_eq!(r["messages"]["devices_unaccounted"], 0, "{}", r["messages"]);
    r
}

// ---------------------------------------------------------------------------------------------
// A small HTTP/1.1 client.

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    fn json(&self) -> Value {
        assert!(
            self.header("content-type").starts_with("application/json"),
            "not JSON: {self:?}"
        );
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// Asserts the status and the error format (docs/api.md, Errors); returns (kind, message).
    fn error(&self, status: u16) -> (String, String) {
        assert_eq!(self.status, status, "{self:?}");
        let v = self.json();
        let kind = v["error"]["kind"].as_str().expect("error.kind").to_string();
        let message = v["error"]["message"].as_str().expect("error.message");
        assert!(!message.is_empty(), "{v}");
        (kind, message.to_string())
    }

    /// Asserts `202` and returns the `CommandAck`'s message.
    fn accepted(&self) -> String {
        assert_eq!(self.status, 202, "{self:?}");
        let ack = self.json();
        assert!(ack["sim_time_s"].is_number(), "{ack}");
        ack["message"].as_str().expect("ack.message").to_string()
    }
}

struct Api {
    addr: SocketAddr,
    token: Option<String>,
}

impl Api {
    /// One request on a fresh connection; the token (if any) as `Authorization: Bearer`.
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        let mut s = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(t) = &self.token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).expect("send the request");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read the answer");
        parse_response(&raw)
    }

    fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], "")
    }

    fn post(&self, path: &str) -> Resp {
        self.request("POST", path, &[], "")
    }

    fn post_json(&self, path: &str, body: &str) -> Resp {
        self.request("POST", path, &[("Content-Type", "application/json")], body)
    }

    /// The latest snapshot without histograms; None before the first one (503).
    fn try_snapshot(&self) -> Option<Value> {
        let r = self.get("/api/v1/snapshot?histograms=false");
        if r.status == 503 {
            assert_eq!(r.error(503).0, "unavailable");
            return None;
        }
        assert_eq!(r.status, 200, "{r:?}");
        Some(r.json())
    }

    /// A snapshot taken after the one of `elapsed_s` (the collector makes one a second).
    fn snapshot_after(&self, elapsed_s: f64) -> Value {
        eventually("a newer snapshot", Duration::from_secs(15), || {
            self.try_snapshot()
                .filter(|s| s["elapsed_s"].as_f64().expect("elapsed_s") > elapsed_s)
        })
    }

    /// The first snapshot for which `f` holds (within `limit`); the last one seen otherwise.
    fn snapshot_where(&self, what: &str, limit: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_snapshot() {
                if f(&s) {
                    return s;
                }
                last = s;
            }
            assert!(
                Instant::now() < deadline,
                "no snapshot with {what} within {limit:?}; the last:\n{last}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"));
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = &raw[split + 4..];
    let mut unchunked = Vec::new();
    if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        loop {
            let eol = body
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size");
            let size = usize::from_str_radix(String::from_utf8_lossy(&body[..eol]).trim(), 16)
                .expect("chunk size");
            body = &body[eol + 2..];
            if size == 0 {
                break;
            }
            unchunked.extend_from_slice(&body[..size]);
            body = &body[size + 2..];
        }
        body = &unchunked;
    }
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(body).into_owned(),
    }
}

/// Polls `f` every 100 ms until it returns Some, for at most `limit`.
fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn published(s: &Value) -> u64 {
    s["totals"]["published"].as_u64().expect("totals.published")
}

fn elapsed(s: &Value) -> f64 {
    s["elapsed_s"].as_f64().expect("elapsed_s")
}

fn sim_time(s: &Value) -> f64 {
    s["sim_time_s"].as_f64().expect("sim_time_s")
}

/// Devices on firmware `label` ("model version") in a snapshot.
fn on_version(s: &Value, label: &str) -> u64 {
    let labels = s["version_labels"].as_array().expect("version_labels");
    labels
        .iter()
        .position(|l| l == label)
        .and_then(|i| s["versions"][i].as_u64())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Fleets.

/// A firmware line with quick update stages and no faults: an update takes about a second of
/// wall time and always succeeds.
const FIRMWARE: &str = r#"
name = "node-fw"
description = "Quick firmware line for the control API test"

[ota]
verify_s = 0.2
install_s = 0.3
trial_s = 0.5
max_boot_attempts = 3

[[versions]]
version = "1.0.0"
image_size_kb = 64
boot_s = 0.2

[[versions]]
version = "2.0.0"
image_size_kb = 64
boot_s = 0.2
"#;

/// A device that takes updates over the generic protocol (the embedded broker refuses `$aws`
/// topics): 64 KiB at 4 Mbit/s.
const PROFILE: &str = r#"
name = "ota-node"
description = "Takes firmware updates over the generic protocol"

[identity]
device_id = "node-{id:04}"
telemetry_topic = "fleetsim/{profile}/{device_id}/telemetry"
status_topic = "fleetsim/{profile}/{device_id}/status"

[reporting]
interval = "2s"
qos = 1

[sensors.temperature]
kind = "normal"
unit = "C"
mean = 21.0
sigma = 0.3

[link]
latency_ms = 2.0
bandwidth_kbps = 4000.0

[firmware]
model = "node-fw.toml"
version = "1.0.0"

[commands]
enabled = []

[ota]
protocol = "generic"
"#;

/// Writes the firmware model, the OTA profile and a scenario into `dir`: 150 GPS trackers (the
/// shipped profile, no link faults) and 50 OTA nodes (ids 150..200), on `clock` for `duration`,
/// plus `extra` at the end of the scenario.
fn fleet_files(dir: &Path, clock: &str, duration: &str, extra: &str) -> PathBuf {
    std::fs::write(dir.join("node-fw.toml"), FIRMWARE).expect("firmware model written");
    std::fs::write(dir.join("ota-node.toml"), PROFILE).expect("profile written");
    let trackers = root().join("device-profiles/gps-tracker.toml");
    let scenario = format!(
        r#"
name = "steered"
seed = 11
duration = "{duration}"
clock = "{clock}"
drain = "1s"

[ramp]
mode = "rate"
per_second = 400.0

[[cohorts]]
name = "trackers"
profile = "{}"
count = 150
link = {{ mtbf = "never", loss = 0.0 }}

[[cohorts]]
name = "nodes"
profile = "ota-node.toml"
count = 50
{extra}"#,
        trackers.display()
    );
    let path = dir.join("scenario.toml");
    std::fs::write(&path, scenario).expect("scenario written");
    path
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn a_running_fleet_is_steered_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scen = fleet_files(dir.path(), "wall", "30s", "");
    let rep = dir.path().join("report.json");
    let mut run = fleetsim(&[
        "run",
        scen.to_str().expect("utf-8"),
        "--headless",
        "--api-listen",
        "127.0.0.1:0",
        "--report",
        rep.to_str().expect("utf-8"),
    ]);
    let api = run.api(None);

    // Health answers at once; /metrics once the first snapshot is there.
    let h = api.get("/api/v1/health");
    assert_eq!(h.status, 200, "{h:?}");
    assert_eq!(h.json(), serde_json::json!({"status": "ok"}));
    let m = eventually("/metrics to answer 200", Duration::from_secs(15), || {
        let r = api.get("/metrics");
        match r.status {
            200 => Some(r),
            503 => None,
            _ => panic!("/metrics: {r:?}"),
        }
    });
    assert!(
        m.header("content-type")
            .starts_with("text/plain; version=0.0.4"),
        "{m:?}"
    );
    let lines: Vec<&str> = m.body.lines().collect();
    for expected in [
        "# HELP fleetsim_devices_total Devices in the fleet.",
        "# TYPE fleetsim_devices_total gauge",
        "fleetsim_devices_total 200",
        "# TYPE fleetsim_telemetry_published_total counter",
        "# TYPE fleetsim_publish_ack_latency_seconds histogram",
        "fleetsim_paused 0",
    ] {
        assert!(
            lines.contains(&expected),
            "no line {expected:?} in:\n{}",
            m.body
        );
    }
    let info = lines
        .iter()
        .find(|l| l.starts_with("fleetsim_run_info{"))
        .expect("fleetsim_run_info");
    assert!(
        info.contains(r#"scenario="steered""#) && info.contains(r#"clock="wall""#),
        "{info}"
    );

    let s = api
        .try_snapshot()
        .expect("a snapshot after /metrics had one");
    assert_eq!(s["run"]["scenario"], "steered", "{}", s["run"]);
    assert_eq!(s["run"]["clock"], "wall");
    assert_eq!(s["devices_total"], 200);
    assert_eq!(s["paused"], false);
    // Something to freeze: telemetry is flowing.
    api.snapshot_where("telemetry published", Duration::from_secs(15), |s| {
        published(s) > 0
    });

    // Pause: simulated time stands still, nothing is published.
    let msg = api.post("/api/v1/pause").accepted();
    assert!(msg.contains("paused"), "{msg}");
    let p = api.snapshot_where("paused = true", Duration::from_secs(10), |s| {
        s["paused"] == true
    });
    // The first paused snapshot may carry shard reports from just before the pause: compare
    // the two after it.
    let s1 = api.snapshot_after(elapsed(&p));
    let s2 = api.snapshot_after(elapsed(&s1));
    assert_eq!(s2["paused"], true);
    assert_eq!(
        published(&s1),
        published(&s2),
        "published moved while paused"
    );
    assert_eq!(
        sim_time(&s1),
        sim_time(&s2),
        "simulated time moved while paused"
    );
    let m = api.get("/metrics");
    assert!(
        m.body.lines().any(|l| l == "fleetsim_paused 1"),
        "{}",
        m.body
    );
    let (kind, msg) = api.post("/api/v1/pause").error(409);
    assert_eq!(kind, "conflict");
    assert!(msg.contains("paused"), "{msg}");

    // Resume: telemetry moves again.
    let msg = api.post("/api/v1/resume").accepted();
    assert!(msg.contains("resumed"), "{msg}");
    let frozen = published(&s2);
    api.snapshot_where(
        "paused = false and more published",
        Duration::from_secs(15),
        |s| s["paused"] == false && published(s) > frozen,
    );
    let (kind, _) = api.post("/api/v1/resume").error(409);
    assert_eq!(kind, "conflict");

    // A fault now, like a scenario's [[events]] entry.
    let msg = api
        .post_json(
            "/api/v1/faults",
            r#"{"kind":"outage","fraction":0.5,"duration":"5s"}"#,
        )
        .accepted();
    assert!(msg.contains("outage"), "{msg}");
    let s = api.snapshot_where(
        "offline devices and a control event for the outage",
        Duration::from_secs(15),
        |s| {
            s["states"]["offline"].as_u64() > Some(0)
                && s["events"].as_array().is_some_and(|evs| {
                    evs.iter().any(|e| {
                        e["kind"] == "control"
                            && e["message"].as_str().is_some_and(|m| m.contains("outage"))
                    })
                })
        },
    );
    assert!(
        s["states"]["offline"].as_u64() <= Some(200),
        "{}",
        s["states"]
    );

    // Bad faults: every problem named at once; unknown fields refused; JSON only.
    let (kind, msg) = api
        .post_json("/api/v1/faults", r#"{"kind":"outage","fraction":2}"#)
        .error(400);
    assert_eq!(kind, "bad_request");
    assert!(
        msg.contains("fraction") && msg.contains("duration"),
        "{msg}"
    );
    let (kind, msg) = api
        .post_json(
            "/api/v1/faults",
            r#"{"kind":"outage","fraction":0.5,"duration":"5s","frac":1}"#,
        )
        .error(400);
    assert_eq!(kind, "bad_request");
    assert!(msg.contains("unknown field `frac`"), "{msg}");
    let (_, msg) = api
        .request(
            "POST",
            "/api/v1/faults",
            &[("Content-Type", "text/plain")],
            r#"{"kind":"outage","fraction":0.5,"duration":"5s"}"#,
        )
        .error(400);
    assert!(msg.contains("Content-Type: application/json"), "{msg}");
    let (kind, _) = api.get("/api/v1/pause").error(405);
    assert_eq!(kind, "method_not_allowed");

    // One device, by number and by rendered id.
    let by_number = api.get("/api/v1/devices/160");
    assert_eq!(by_number.status, 200, "{by_number:?}");
    let d = by_number.json();
    assert_eq!(d["id"], 160, "{d}");
    assert_eq!(d["device_id"], "node-0160", "{d}");
    assert_eq!(d["cohort"], "nodes", "{d}");
    assert!(
        d["firmware"]
            .as_str()
            .is_some_and(|f| f.starts_with("node-fw ")),
        "{d}"
    );
    let by_id = api.get("/api/v1/devices/node-0160");
    assert_eq!(by_id.status, 200, "{by_id:?}");
    let e = by_id.json();
    for key in ["id", "device_id", "cohort", "profile", "shard"] {
        assert_eq!(d[key], e[key], "{key}: {d} vs {e}");
    }
    let (kind, _) = api.get("/api/v1/devices/no-such-device").error(404);
    assert_eq!(kind, "not_found");
    let (kind, _) = api.get("/api/v1/devices/200").error(404);
    assert_eq!(kind, "not_found");

    // A rollout by hand: 202, then refused under the same name or to a version nobody has.
    let msg = api
        .post_json(
            "/api/v1/rollouts",
            r#"{"name":"hot","target_version":"2.0.0"}"#,
        )
        .accepted();
    assert!(msg.contains("hot") && msg.contains("50 devices"), "{msg}");
    let (kind, msg) = api
        .post_json(
            "/api/v1/rollouts",
            r#"{"name":"hot","target_version":"2.0.0"}"#,
        )
        .error(409);
    assert_eq!(kind, "conflict");
    assert!(msg.contains("hot"), "{msg}");
    let (kind, msg) = api
        .post_json(
            "/api/v1/rollouts",
            r#"{"name":"cold","target_version":"9.9.9"}"#,
        )
        .error(400);
    assert_eq!(kind, "bad_request");
    assert!(msg.contains("9.9.9"), "{msg}");
    // It starts at the orchestrator's next tick (every 10 s of simulated time) and notifies its
    // targets over one period; each update takes about a second.
    api.snapshot_where(
        "rollout hot running or completed, and nodes on 2.0.0",
        Duration::from_secs(40),
        |s| {
            s["rollouts"].as_array().is_some_and(|ros| {
                ros.iter().any(|r| {
                    r["name"] == "hot"
                        && r["target_version"] == "2.0.0"
                        && r["targets"] == 50
                        && (r["state"] == "running" || r["state"] == "completed")
                })
            }) && on_version(s, "node-fw 2.0.0") > 0
        },
    );

    // The run ends on its own; the report and the summary tell of the rollout.
    let end = run.wait(Duration::from_secs(90));
    assert!(
        matches!(end.status.code(), Some(0 | 1)),
        "exit {:?}:\n{}",
        end.status,
        end.text()
    );
    let r = report(&rep);
    assert_eq!(r["run"]["interrupted"], false);
    assert_eq!(r["devices"]["total"], 200);
    let ro = r["rollouts"]
        .as_array()
        .expect("rollouts")
        .iter()
        .find(|ro| ro["name"] == "hot")
        .unwrap_or_else(|| panic!("no rollout hot in the report: {}", r["rollouts"]));
    assert_eq!(ro["target_version"], "2.0.0", "{ro}");
    assert_eq!(ro["targets"], 50, "{ro}");
    assert!(
        ro["state"] == "running" || ro["state"] == "completed",
        "{ro}"
    );
    assert!(ro["notified"].as_u64() > Some(0), "{ro}");
    assert!(
        r["ota"]["versions"]["node-fw 2.0.0"].as_u64() > Some(0),
        "{}",
        r["ota"]
    );
    assert!(end.stdout.contains("hot -> 2.0.0"), "{}", end.stdout);
    // What was done by hand is in the report's events, in order, and the summary says so.
    let commands: Vec<&str> = r["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "control")
        .filter_map(|e| e["message"].as_str())
        .collect();
    let wanted = ["paused", "resumed", "outage of 50%", "rollout \"hot\""];
    assert_eq!(commands.len(), wanted.len(), "{commands:?}");
    for (c, w) in commands.iter().zip(wanted) {
        assert!(c.contains(w), "{c:?} should say {w:?}: {commands:?}");
    }
    assert!(
        end.stdout.contains("steered by hand (4 commands)"),
        "{}",
        end.stdout
    );
}

#[test]
fn the_api_refuses_other_addresses_without_a_token() {
    let mut off_loopback = fleetsim(&[
        "run",
        "--headless",
        "--api-listen",
        "0.0.0.0:0",
        "--duration",
        "2s",
    ]);
    let end = off_loopback.wait(Duration::from_secs(60));
    assert_eq!(end.status.code(), Some(2), "{}", end.text());
    assert!(
        end.stderr.contains("--api-listen 0.0.0.0:0")
            && end.stderr.contains("without a token")
            && end.stderr.contains("--api-token"),
        "{}",
        end.stderr
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let rep = dir.path().join("report.json");
    let mut run = fleetsim(&[
        "run",
        "scenarios/smoke.toml",
        "--devices",
        "10",
        "--duration",
        "5m",
        "--headless",
        "--api-listen",
        "127.0.0.1:0",
        "--api-token",
        "secret",
        "--report",
        rep.to_str().expect("utf-8"),
    ]);
    let with = run.api(Some("secret"));
    let without = Api {
        addr: with.addr,
        token: None,
    };
    let wrong = Api {
        addr: with.addr,
        token: Some("secreT".into()),
    };
    for (client, says) in [(&without, "requires a token"), (&wrong, "wrong")] {
        for path in ["/api/v1/health", "/metrics", "/api/v1/snapshot"] {
            let r = client.get(path);
            let (kind, msg) = r.error(401);
            assert_eq!(kind, "unauthorized", "{path}");
            assert!(msg.contains(says), "{path}: {msg}");
            assert_eq!(r.header("www-authenticate"), "Bearer", "{path}");
        }
        let (kind, _) = client.post("/api/v1/pause").error(401);
        assert_eq!(kind, "unauthorized");
    }
    let h = with.get("/api/v1/health");
    assert_eq!(h.status, 200, "{h:?}");
    eventually("/metrics with the token", Duration::from_secs(15), || {
        let r = with.get("/metrics");
        assert!(matches!(r.status, 200 | 503), "{r:?}");
        (r.status == 200).then_some(())
    });
    let s = with.try_snapshot().expect("a snapshot");
    assert_eq!(s["devices_total"], 10);
    assert_eq!(s["paused"], false, "the pauses without a token did nothing");

    run.interrupt();
    let end = run.wait(Duration::from_secs(30));
    assert!(matches!(end.status.code(), Some(0 | 1)), "{}", end.text());
    assert_eq!(report(&rep)["run"]["interrupted"], true);
}

#[test]
fn a_virtual_run_refuses_hand_started_rollouts_but_pauses() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Far longer than the test: it ends with Ctrl-C. One shard leaves a core to the others.
    let scen = fleet_files(dir.path(), "virtual", "3650d", "");
    let rep = dir.path().join("report.json");
    let mut run = fleetsim(&[
        "run",
        scen.to_str().expect("utf-8"),
        "--devices",
        "40",
        "--shards",
        "1",
        "--headless",
        "--api-listen",
        "127.0.0.1:0",
        "--report",
        rep.to_str().expect("utf-8"),
    ]);
    let api = run.api(None);
    let s = api.snapshot_where("a first snapshot", Duration::from_secs(15), |_| true);
    assert_eq!(s["run"]["clock"], "virtual", "{}", s["run"]);

    let (kind, msg) = api
        .post_json(
            "/api/v1/rollouts",
            r#"{"name":"hot","target_version":"2.0.0"}"#,
        )
        .error(409);
    assert_eq!(kind, "conflict");
    assert!(msg.contains("virtual clock"), "{msg}");

    let msg = api.post("/api/v1/pause").accepted();
    assert!(msg.contains("paused"), "{msg}");
    let p = api.snapshot_where("paused = true", Duration::from_secs(10), |s| {
        s["paused"] == true
    });
    let s1 = api.snapshot_after(elapsed(&p));
    let s2 = api.snapshot_after(elapsed(&s1));
    assert_eq!(
        sim_time(&s1),
        sim_time(&s2),
        "simulated time moved while paused"
    );
    assert_eq!(
        published(&s1),
        published(&s2),
        "published moved while paused"
    );
    api.post("/api/v1/resume").accepted();
    let frozen = sim_time(&s2);
    api.snapshot_where(
        "simulated time moving again",
        Duration::from_secs(15),
        |s| s["paused"] == false && sim_time(s) > frozen,
    );

    run.interrupt();
    let end = run.wait(Duration::from_secs(30));
    assert!(matches!(end.status.code(), Some(0 | 1)), "{}", end.text());
    let r = report(&rep);
    assert_eq!(r["run"]["interrupted"], true);
    assert_eq!(r["run"]["clock"], "virtual");
    assert_eq!(
        r["rollouts"],
        serde_json::json!([]),
        "nothing was rolled out"
    );
    assert!(end.stdout.contains("(interrupted)"), "{}", end.stdout);
}

/// A virtual run whose scenario has its own `[[rollouts]]` still refuses one started by hand
/// for the reason that applies: the clock (it once answered that the run took no new rollouts).
#[test]
fn a_virtual_run_with_planned_rollouts_refuses_hand_started_ones_for_its_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let planned = r#"
[[rollouts]]
name = "planned"
at = "1h"
target_version = "2.0.0"
cohorts = ["nodes"]
"#;
    let scen = fleet_files(dir.path(), "virtual", "3650d", planned);
    let mut run = fleetsim(&[
        "run",
        scen.to_str().expect("utf-8"),
        "--devices",
        "40",
        "--shards",
        "1",
        "--headless",
        "--api-listen",
        "127.0.0.1:0",
    ]);
    let api = run.api(None);
    let (kind, msg) = api
        .post_json(
            "/api/v1/rollouts",
            r#"{"name":"hot","target_version":"2.0.0"}"#,
        )
        .error(409);
    assert_eq!(kind, "conflict");
    // Seen: "this run takes no new rollouts (it was not started with a control surface, or no
    // device takes updates)".
    assert!(msg.contains("virtual clock"), "{msg}");
    run.interrupt();
    run.wait(Duration::from_secs(30));
}

#[test]
fn top_needs_a_terminal_and_says_so() {
    // stdin is /dev/null and stdout a pipe here: no terminal.
    let end = fleetsim(&["top", "--attach", "http://127.0.0.1:9"]).wait(Duration::from_secs(30));
    assert_eq!(end.status.code(), Some(2), "{}", end.text());
    assert!(end.stderr.contains("needs a terminal"), "{}", end.stderr);

    let end = fleetsim(&["top", "--attach", "ftp://x"]).wait(Duration::from_secs(30));
    assert_eq!(end.status.code(), Some(2), "{}", end.text());
    assert!(
        end.stderr.contains("--attach ftp://x") && end.stderr.contains("http://HOST:PORT"),
        "{}",
        end.stderr
    );
}
