//! The firmware-update (A/B) cycle of one device, driven directly in virtual time: a table of
//! cases (firmware faults, profile `[ota]` settings, timed inputs, expected stages, outcome,
//! reports, final version and slot), AWS IoT Jobs conversations with a fake job service,
//! determinism of the per-job fault draws, and a property test of the cycle's invariants
//! under random input sequences.
//!
//! The driver wakes the device at `wake_at()` and answers every `Effect::Connect` with
//! `Input::Connected` (a simulated broker), so a case that spans minutes of device time runs in
//! microseconds. Nothing here reads a clock.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use fleet_core::device::OtaInput;
use fleet_core::load::{EmbeddedSource, FsSource, load_fleet, validate_file};
use fleet_core::ota::{FailStage, JobDoc, JobSource, OtaStage, Outcome, RejectReason};
use fleet_core::{
    ConfigError, Device, DeviceCtx, DeviceId, DeviceState, Effect, Effects, Event, Fleet, Input,
    RunSeed, SimDuration, SimTime, TopicKind,
};
use proptest::prelude::*;
use serde_json::{Value, json};

// ------------------------------------------------------------------ the fleet ---------------

/// What a case changes in the firmware model and the profile.
#[derive(Clone, Debug)]
struct Setup {
    /// Inside `faults = { ... }` of version 2.0.0, the usual target.
    faults: &'static str,
    /// Lines of the line-wide `[ota.faults]` (every version).
    line_faults: &'static str,
    max_boot_attempts: u8,
    download_attempts: u8,
    /// Lines of the profile's `[ota]` table.
    ota: &'static str,
    /// Tables appended to the profile (`[battery]`).
    extra: &'static str,
    /// The version the devices run at power-on.
    version: &'static str,
    seed: u64,
    /// `DeviceCtx::real_network`: jobs with a url download over HTTP.
    real_network: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            faults: "",
            line_faults: "",
            max_boot_attempts: 3,
            download_attempts: 3,
            ota: "",
            extra: "",
            version: "1.0.0",
            seed: 1,
            real_network: false,
        }
    }
}

/// Three versions of 100 KiB each; verify 2 s, install 10 s, trial 30 s, boot 1 s.
fn firmware_toml(s: &Setup) -> String {
    format!(
        r#"
name = "fw"
[ota]
verify_s = 2
install_s = 10
trial_s = 30
max_boot_attempts = {boot}
download_attempts = {download}
stall_timeout = "30s"
[ota.faults]
{line}

[[versions]]
version = "1.0.0"
image_size_kb = 100
boot_s = 1

[[versions]]
version = "1.1.0"
image_size_kb = 100
boot_s = 1

[[versions]]
version = "2.0.0"
image_size_kb = 100
boot_s = 1
faults = {{ {faults} }}
"#,
        boot = s.max_boot_attempts,
        download = s.download_attempts,
        line = s.line_faults,
        faults = s.faults,
    )
}

/// 10 s telemetry, a 1 s -> 8 s backoff without jitter, and 8.192 kbit/s = 1024 B/s: a 100 KiB
/// image downloads in exactly 100 s, a progress step of 25 % every 25 s.
const PROFILE: &str = r#"
name = "p"
[identity]
device_id = "d-{id}"
telemetry_topic = "t/{device_id}"
status_topic = "s/{device_id}"
[reporting]
interval = "10s"
qos = 1
[sensors.x]
kind = "constant"
value = 1.0
[link]
bandwidth_kbps = 8.192
reconnect = { initial = "1s", max = "8s", multiplier = 2.0, jitter = 0.0 }
[firmware]
model = "fw.toml"
version = "@VERSION@"
[commands]
enabled = []
[ota]
"#;

fn fleet(s: &Setup) -> Fleet {
    let profile = format!(
        "{}{}\n{}\n",
        PROFILE.replace("@VERSION@", s.version),
        s.ota,
        s.extra
    );
    let leak = |t: String| -> &'static str { Box::leak(t.into_boxed_str()) };
    let scenario = "name = \"s\"\nduration = \"1d\"\n[[cohorts]]\nname = \"c\"\nprofile = \"p.toml\"\ncount = 2\n";
    let files: &'static [(&'static str, &'static str)] = Box::leak(
        vec![
            ("s.toml", scenario),
            ("p.toml", leak(profile)),
            ("fw.toml", leak(firmware_toml(s))),
        ]
        .into_boxed_slice(),
    );
    load_fleet(&EmbeddedSource(files), Path::new("s.toml")).expect("the test fleet is valid")
}

fn at(s: f64) -> SimTime {
    SimTime(SimDuration::from_secs_f64(s).as_micros())
}

// ------------------------------------------------------------------ the driver --------------

/// Something the world does to the device at a given time.
#[derive(Clone, Debug)]
enum Act {
    /// A generic-protocol message on the job topic.
    Job(&'static str),
    /// AWS IoT Jobs: a message on `$aws/things/d-0/jobs/<tail>`.
    Aws(&'static str, &'static str),
    /// The fake job service queues a job and sends notify-next.
    AwsQueue(&'static str, &'static str),
    /// The fake job service's next update gets a VersionMismatch (someone else moved the
    /// execution on); `with_state`: the rejection carries `executionState`.
    AwsMismatch {
        with_state: bool,
    },
    /// The fake job service cancels the current execution (updates get InvalidStateTransition).
    AwsCancel,
    /// The fake job service's replies are lost on the way to the device (true) or not.
    AwsMute(bool),
    Rollout {
        rollout: u16,
        version: &'static str,
    },
    CancelRollout(u16),
    LinkLost,
    Reboot,
    Outage(f64),
    Progress {
        bytes: u64,
        total: Option<u64>,
    },
    Done {
        bytes: u64,
        sha256: &'static str,
    },
    Failed {
        bytes: u64,
        retryable: bool,
    },
}

fn rollout(rollout: u16, version: &'static str) -> Act {
    Act::Rollout { rollout, version }
}
fn progress(bytes: u64, total: Option<u64>) -> Act {
    Act::Progress { bytes, total }
}
fn done(bytes: u64, sha256: &'static str) -> Act {
    Act::Done { bytes, sha256 }
}
fn failed(bytes: u64, retryable: bool) -> Act {
    Act::Failed { bytes, retryable }
}

/// An OTA publish of the device: its topic and JSON body.
#[derive(Clone, Debug)]
struct Sent {
    at: SimTime,
    topic: String,
    body: Value,
    /// The device had a session when it published: online before or after the step, and no
    /// Disconnect or DropLink earlier in the step's effects.
    on_session: bool,
}

/// A follow-up input the driver feeds at the same instant.
enum FollowUp {
    Connected,
    Message(String, String),
}

struct Sim {
    fleet: Fleet,
    dev: Device,
    index: u32,
    real_network: bool,
    now: SimTime,
    fx: Effects,
    log: Vec<(SimTime, Event)>,
    /// Effects other than publishes.
    effects: Vec<(SimTime, Effect)>,
    ota: Vec<Sent>,
    telemetry: Vec<Value>,
    broker_up: bool,
    jobs: Option<FakeJobs>,
}

impl Sim {
    fn new(s: &Setup) -> Sim {
        Sim::device(s, 0)
    }

    fn device(s: &Setup, index: u32) -> Sim {
        let fleet = fleet(s);
        let mut dev = Device::new(RunSeed(s.seed), DeviceId(index), &fleet.cohorts[0]);
        dev.power_on_at(SimTime::ZERO);
        Sim {
            fleet,
            dev,
            index,
            real_network: s.real_network,
            now: SimTime::ZERO,
            fx: Effects::default(),
            log: Vec::new(),
            effects: Vec::new(),
            ota: Vec::new(),
            telemetry: Vec::new(),
            broker_up: true,
            jobs: None,
        }
    }

    fn with_jobs(mut self) -> Sim {
        self.jobs = Some(FakeJobs::default());
        self
    }

    fn thing(&self) -> String {
        format!("d-{}", self.index)
    }
    fn job_topic(&self) -> String {
        format!("fleetsim/p/d-{}/ota/job", self.index)
    }
    fn status_topic(&self) -> String {
        format!("fleetsim/p/d-{}/ota/status", self.index)
    }
    fn aws_topic(&self, tail: &str) -> String {
        format!("$aws/things/{}/jobs/{tail}", self.thing())
    }

    /// One input, then whatever follows from it at the same instant (connect answers, replies
    /// of the fake job service).
    fn feed(&mut self, now: SimTime, input: Input) {
        let mut queue = VecDeque::new();
        self.handle(now, input, &mut queue);
        let mut rounds = 0;
        while let Some(next) = queue.pop_front() {
            rounds += 1;
            assert!(rounds < 1_000, "the device and its peers never go quiet");
            match next {
                FollowUp::Connected => self.handle(now, Input::Connected, &mut queue),
                FollowUp::Message(topic, body) => {
                    if self.dev.state() == DeviceState::Online {
                        let input = Input::Message {
                            topic: topic.as_bytes(),
                            payload: body.as_bytes(),
                        };
                        self.handle(now, input, &mut queue);
                    }
                }
            }
        }
    }

    fn handle(&mut self, now: SimTime, input: Input, queue: &mut VecDeque<FollowUp>) {
        assert!(now >= self.now, "time went backwards");
        self.now = now;
        let ctx = DeviceCtx {
            cohort: &self.fleet.cohorts[0],
            epoch_ms: 0,
            end: SimTime::NEVER,
            real_network: self.real_network,
        };
        self.fx.clear();
        let online_before = self.dev.state() == DeviceState::Online;
        self.dev.handle(now, input, &ctx, &mut self.fx);
        self.log.extend(self.fx.events.iter().map(|e| (now, *e)));
        let mut on_session = online_before || self.dev.state() == DeviceState::Online;
        for effect in &self.fx.list {
            if matches!(effect, Effect::Disconnect | Effect::DropLink) {
                on_session = false;
            }
            match effect {
                Effect::Publish(p) => {
                    let (topic, body) = p.split(self.fx.payload_of(p));
                    let body: Value = serde_json::from_slice(body).expect("a publish is JSON");
                    match p.topic {
                        TopicKind::Ota => {
                            let topic = String::from_utf8(topic.to_vec()).expect("utf-8 topic");
                            if let Some(jobs) = &mut self.jobs {
                                let thing = format!("d-{}", self.index);
                                let replies = jobs.request(&thing, &topic, &body);
                                if !jobs.mute {
                                    for (t, b) in replies {
                                        queue.push_back(FollowUp::Message(t, b));
                                    }
                                }
                            }
                            self.ota.push(Sent {
                                at: now,
                                topic,
                                body,
                                on_session,
                            });
                        }
                        TopicKind::Telemetry => self.telemetry.push(body),
                        TopicKind::Status | TopicKind::StatusOffline | TopicKind::Response => {}
                    }
                }
                Effect::Connect if self.broker_up => {
                    queue.push_back(FollowUp::Connected);
                    self.effects.push((now, effect.clone()));
                }
                other => self.effects.push((now, other.clone())),
            }
        }
    }

    /// Wakes the device at each of its deadlines up to `until`.
    fn run_until(&mut self, until: SimTime) {
        let mut same = 0;
        let mut last = SimTime::NEVER;
        while self.dev.wake_at() <= until {
            let w = self.dev.wake_at();
            assert!(w >= self.now, "wake_at {w:?} is before now {:?}", self.now);
            same = if w == last { same + 1 } else { 0 };
            assert!(same < 100, "the device keeps asking to wake at {w:?}");
            last = w;
            self.feed(w, Input::Wake);
        }
        self.now = self.now.max(until);
    }

    fn act(&mut self, t: SimTime, act: &Act) {
        match act {
            Act::Job(body) => {
                let topic = self.job_topic();
                self.message(t, &topic, body);
            }
            Act::Aws(tail, body) => {
                let topic = self.aws_topic(tail);
                self.message(t, &topic, body);
            }
            Act::AwsQueue(id, doc) => {
                let thing = self.thing();
                let jobs = self.jobs.as_mut().expect("a fake job service");
                let notify = jobs.queue(id, doc, &thing);
                for (topic, body) in notify {
                    self.message(t, &topic, &body);
                }
            }
            Act::AwsMute(mute) => {
                let jobs = self.jobs.as_mut().expect("a fake job service");
                jobs.mute = *mute;
            }
            Act::AwsMismatch { with_state } => {
                let jobs = self.jobs.as_mut().expect("a fake job service");
                jobs.mismatch_next = Some(*with_state);
            }
            Act::AwsCancel => {
                let jobs = self.jobs.as_mut().expect("a fake job service");
                if let Some(e) = &mut jobs.current {
                    e.status = "CANCELED".into();
                }
            }
            Act::Rollout { rollout, version } => {
                let doc = JobDoc {
                    job_id: format!("rollout-{rollout}"),
                    version: version.to_string(),
                    url: None,
                    size: None,
                    sha256: None,
                };
                let source = JobSource::Rollout(*rollout);
                self.feed(
                    t,
                    Input::Ota(OtaInput::Job {
                        doc: &std::sync::Arc::new(doc),
                        source,
                    }),
                );
            }
            Act::CancelRollout(r) => self.feed(t, Input::Ota(OtaInput::Cancel { rollout: *r })),
            Act::LinkLost => self.feed(t, Input::LinkLost),
            Act::Reboot => self.feed(t, Input::Reboot { at: t }),
            Act::Outage(s) => {
                let until = t + SimDuration::from_secs_f64(*s);
                self.feed(t, Input::Outage { until });
            }
            Act::Progress { bytes, total } => self.feed(
                t,
                Input::Ota(OtaInput::DownloadProgress {
                    bytes: *bytes,
                    total: *total,
                }),
            ),
            Act::Done { bytes, sha256 } => self.feed(
                t,
                Input::Ota(OtaInput::DownloadDone {
                    bytes: *bytes,
                    sha256,
                }),
            ),
            Act::Failed { bytes, retryable } => self.feed(
                t,
                Input::Ota(OtaInput::DownloadFailed {
                    bytes: *bytes,
                    retryable: *retryable,
                    reason: "HTTP 503 Service Unavailable",
                }),
            ),
        }
    }

    /// A message on one of the device's subscriptions; dropped unless it is online (no session).
    fn message(&mut self, t: SimTime, topic: &str, body: &str) {
        if self.dev.state() == DeviceState::Online {
            let input = Input::Message {
                topic: topic.as_bytes(),
                payload: body.as_bytes(),
            };
            self.feed(t, input);
        }
    }

    /// Runs the timed inputs (seconds) in order, waking the device in between, then runs on to
    /// `until_s`.
    fn play(&mut self, inputs: &[(f64, Act)], until_s: f64) {
        for (t, act) in inputs {
            let t = at(*t);
            self.run_until(t);
            self.act(t, act);
        }
        self.run_until(at(until_s));
    }

    // ---- what happened ----

    fn events(&self) -> Vec<Event> {
        self.log.iter().map(|(_, e)| *e).collect()
    }

    fn count(&self, f: impl Fn(&Event) -> bool) -> usize {
        self.log.iter().filter(|(_, e)| f(e)).count()
    }

    fn first_time(&self, f: impl Fn(&Event) -> bool) -> Option<f64> {
        self.log
            .iter()
            .find(|(_, e)| f(e))
            .map(|(t, _)| t.as_secs_f64())
    }

    fn stages(&self) -> Vec<OtaStage> {
        self.log
            .iter()
            .filter_map(|(_, e)| match e {
                Event::OtaStage { stage } => Some(*stage),
                _ => None,
            })
            .collect()
    }

    fn outcomes(&self) -> Vec<Outcome> {
        self.log
            .iter()
            .filter_map(|(_, e)| match e {
                Event::OtaOutcome { outcome, .. } => Some(*outcome),
                _ => None,
            })
            .collect()
    }

    /// Reports on the generic status topic.
    fn reports(&self) -> Vec<&Value> {
        let topic = self.status_topic();
        self.ota
            .iter()
            .filter(|s| s.topic == topic)
            .map(|s| &s.body)
            .collect()
    }

    /// (job_id, status, stage) of every report that is not IN_PROGRESS.
    fn terminal(&self) -> Vec<(String, String, String)> {
        self.reports()
            .into_iter()
            .filter(|r| r["status"] != "IN_PROGRESS")
            .map(|r| {
                (
                    r["job_id"].as_str().unwrap_or("").to_string(),
                    r["status"].as_str().unwrap_or("").to_string(),
                    r["stage"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    fn progress(&self) -> Vec<u64> {
        self.reports()
            .into_iter()
            .filter_map(|r| r["progress"].as_u64())
            .collect()
    }

    fn version(&self) -> &str {
        let model = &self.fleet.cohorts[0].firmware;
        &model.versions[usize::from(self.dev.running_version())].version
    }

    fn downloads(&self) -> Vec<(f64, u64)> {
        self.effects
            .iter()
            .filter_map(|(t, e)| match e {
                Effect::Download { offset } => Some((t.as_secs_f64(), *offset)),
                _ => None,
            })
            .collect()
    }

    /// AWS: (topic tail, body) of every request the device published.
    fn aws_requests(&self) -> Vec<(String, &Value)> {
        let prefix = self.aws_topic("");
        self.ota
            .iter()
            .filter_map(|s| {
                s.topic
                    .strip_prefix(&prefix)
                    .map(|tail| (tail.to_string(), &s.body))
            })
            .collect()
    }

    fn aws_updates(&self, job: &str) -> Vec<&Value> {
        let tail = format!("{job}/update");
        self.aws_requests()
            .into_iter()
            .filter(|(t, _)| *t == tail)
            .map(|(_, b)| b)
            .collect()
    }
}

// ------------------------------------------------------------------ a fake AWS IoT Jobs -------

/// One job execution as the service keeps it.
#[derive(Clone, Debug)]
struct Execution {
    job_id: String,
    doc: Value,
    status: String,
    version: u64,
}

/// The device-facing half of AWS IoT Jobs, as documented: start-next hands out the next
/// queued execution (IN_PROGRESS, versionNumber 1) or the one in progress; an update with
/// a stale `expectedVersion` is rejected with VersionMismatch (and `executionState`), an update
/// of a terminal or cancelled execution with InvalidStateTransition; an accepted update bumps
/// `versionNumber`; when the next pending execution changes, notify-next says so.
#[derive(Debug, Default)]
struct FakeJobs {
    queued: VecDeque<Execution>,
    current: Option<Execution>,
    /// The next update is answered with a VersionMismatch (Some(true): with executionState).
    mismatch_next: Option<bool>,
    /// Rejections it sent (codes), in order.
    rejected: Vec<String>,
    /// Replies are computed (the service's state moves on) but lost on the way.
    mute: bool,
}

fn terminal_status(s: &str) -> bool {
    matches!(
        s,
        "SUCCEEDED" | "FAILED" | "REJECTED" | "CANCELED" | "REMOVED" | "TIMED_OUT"
    )
}

impl FakeJobs {
    fn execution_json(e: &Execution) -> Value {
        json!({
            "jobId": e.job_id,
            "thingName": "thing",
            "jobDocument": e.doc,
            "status": e.status,
            "queuedAt": 1_700_000_000,
            "lastUpdatedAt": 1_700_000_001,
            "versionNumber": e.version,
            "executionNumber": 1,
        })
    }

    fn queue(&mut self, id: &str, doc: &str, thing: &str) -> Vec<(String, String)> {
        let doc: Value = serde_json::from_str(doc).expect("a JSON job document");
        self.queued.push_back(Execution {
            job_id: id.into(),
            doc,
            status: "QUEUED".into(),
            version: 1,
        });
        let busy = self
            .current
            .as_ref()
            .is_some_and(|e| !terminal_status(&e.status));
        if busy || self.queued.len() > 1 {
            return Vec::new();
        }
        vec![self.notify_next(thing)]
    }

    fn notify_next(&self, thing: &str) -> (String, String) {
        let topic = format!("$aws/things/{thing}/jobs/notify-next");
        let body = match self.queued.front() {
            Some(e) => json!({"timestamp": 1_700_000_002, "execution": Self::execution_json(e)}),
            None => json!({"timestamp": 1_700_000_002}),
        };
        (topic, body.to_string())
    }

    /// The replies to one request of the device.
    fn request(&mut self, thing: &str, topic: &str, body: &Value) -> Vec<(String, String)> {
        let prefix = format!("$aws/things/{thing}/jobs/");
        let Some(tail) = topic.strip_prefix(&prefix) else {
            return Vec::new();
        };
        let token = body["clientToken"].clone();
        let reply = |t: &str, b: Value| (format!("{prefix}{t}"), b.to_string());
        if tail == "start-next" {
            let busy = self
                .current
                .as_ref()
                .is_some_and(|e| !terminal_status(&e.status));
            if !busy {
                self.current = self.queued.pop_front().map(|mut e| {
                    e.status = "IN_PROGRESS".into();
                    e
                });
            }
            let body = match &self.current {
                Some(e) if !terminal_status(&e.status) => json!({
                    "execution": Self::execution_json(e),
                    "timestamp": 1_700_000_003,
                    "clientToken": token,
                }),
                _ => json!({"timestamp": 1_700_000_003, "clientToken": token}),
            };
            return vec![reply("start-next/accepted", body)];
        }
        let Some((job, verb)) = tail.split_once('/') else {
            return Vec::new();
        };
        let Some(e) = self.current.as_mut().filter(|e| e.job_id == job) else {
            let body = json!({"code": "ResourceNotFound", "message": "no such execution", "clientToken": token});
            return vec![reply(&format!("{job}/{verb}/rejected"), body)];
        };
        match verb {
            "get" => vec![reply(
                &format!("{job}/get/accepted"),
                json!({"execution": Self::execution_json(e), "timestamp": 1_700_000_004, "clientToken": token}),
            )],
            "update" => {
                let rejected = |code: &str, state: Option<(&str, u64)>| {
                    let mut b = json!({"code": code, "message": code, "clientToken": token, "timestamp": 1_700_000_005});
                    if let Some((status, v)) = state {
                        b["executionState"] =
                            json!({"status": status, "statusDetails": {}, "versionNumber": v});
                    }
                    reply(&format!("{job}/update/rejected"), b)
                };
                if let Some(with_state) = self.mismatch_next.take() {
                    // Someone else updated the execution first.
                    e.version += 1;
                    self.rejected.push("VersionMismatch".into());
                    let state = with_state.then_some((e.status.as_str(), e.version));
                    return vec![rejected("VersionMismatch", state)];
                }
                if let Some(expected) = body["expectedVersion"].as_u64()
                    && expected != e.version
                {
                    self.rejected.push("VersionMismatch".into());
                    return vec![rejected(
                        "VersionMismatch",
                        Some((e.status.as_str(), e.version)),
                    )];
                }
                if terminal_status(&e.status) {
                    self.rejected.push("InvalidStateTransition".into());
                    return vec![rejected("InvalidStateTransition", None)];
                }
                e.version += 1;
                e.status = body["status"].as_str().unwrap_or("").to_string();
                let accepted = reply(
                    &format!("{job}/update/accepted"),
                    json!({
                        "executionState": {"status": e.status, "statusDetails": body["statusDetails"], "versionNumber": e.version},
                        "timestamp": 1_700_000_006,
                        "clientToken": token,
                    }),
                );
                let mut out = vec![accepted];
                if terminal_status(&e.status) {
                    // The next pending execution changed.
                    out.push(self.notify_next(thing));
                }
                out
            }
            _ => Vec::new(),
        }
    }
}

// ------------------------------------------------------------------ the table ---------------

const JOB: &str = r#"{"job_id":"j1","version":"2.0.0"}"#;

use OtaStage::{Downloading, Installing, Rebooting, Trial, Verifying};
const FULL: &[OtaStage] = &[Downloading, Verifying, Installing, Rebooting, Trial];

/// A case of the A/B cycle.
struct Case {
    name: &'static str,
    setup: Setup,
    inputs: Vec<(f64, Act)>,
    until_s: f64,
    expect: Expect,
}

struct Expect {
    /// Every `Event::OtaStage`, in order.
    stages: &'static [OtaStage],
    /// Every `Event::OtaOutcome`, in order.
    outcomes: &'static [Outcome],
    /// (job_id, status, stage) of every report that is not IN_PROGRESS, in order.
    reports: &'static [(&'static str, &'static str, &'static str)],
    /// Text the last terminal report's `reason` contains ("" when not checked).
    reason: &'static str,
    /// The `progress` values reported, in order (None: not checked).
    progress: Option<&'static [u64]>,
    /// Events that must appear in this order (others may come in between).
    events: &'static [Event],
    version: &'static str,
    slot: &'static str,
    state: DeviceState,
    /// Anything else the case checks.
    check: fn(&Sim) -> Result<(), String>,
}

impl Default for Expect {
    fn default() -> Self {
        Expect {
            stages: FULL,
            outcomes: &[Outcome::Succeeded],
            reports: &[("j1", "SUCCEEDED", "committed")],
            reason: "",
            progress: Some(&[0, 25, 50, 75, 100]),
            events: &[],
            version: "2.0.0",
            slot: "B",
            state: DeviceState::Online,
            check: |_| Ok(()),
        }
    }
}

/// Whether `want` appears in `have` in order.
fn subsequence(have: &[Event], want: &[Event]) -> bool {
    let mut it = have.iter();
    want.iter().all(|w| it.any(|h| h == w))
}

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what()) }
}

/// The HTTP job of the HTTP cases: 4096 bytes with this sha256.
const HTTP_JOB: &str = r#"{"job_id":"j1","version":"2.0.0","url":"http://fw.example/2.0.0.bin","size":4096,"sha256":"AB12"}"#;

fn cases() -> Vec<Case> {
    let d = Expect::default;
    let s = Setup::default;
    vec![
        Case {
            name: "happy path: a generic job goes through every stage and commits slot B",
            setup: s(),
            inputs: vec![(5.0, Act::Job(JOB))],
            until_s: 400.0,
            expect: Expect {
                events: &[
                    Event::OtaJobReceived { rollout: None },
                    Event::OtaStarted { rollout: None },
                    Event::Reboot,
                    Event::Booted,
                    Event::Connected,
                    Event::OtaOutcome {
                        outcome: Outcome::Succeeded,
                        rollout: None,
                    },
                ],
                check: |sim| {
                    let stages: Vec<&str> = sim
                        .reports()
                        .iter()
                        .map(|r| r["stage"].as_str().unwrap_or(""))
                        .collect();
                    ensure(
                        stages
                            == [
                                "downloading",
                                "downloading",
                                "downloading",
                                "downloading",
                                "downloading",
                                "verifying",
                                "installing",
                                "rebooting",
                                "trial",
                                "committed",
                            ],
                        || format!("report stages {stages:?}"),
                    )?;
                    for r in sim.reports() {
                        ensure(
                            r["device_id"] == "d-0"
                                && r["job_id"] == "j1"
                                && r["target"] == "2.0.0",
                            || format!("report {r}"),
                        )?;
                    }
                    let last = sim.reports().last().map(|r| (*r).clone());
                    ensure(
                        last.as_ref().is_some_and(|r| {
                            r["version"] == "2.0.0" && r["slot"] == "B" && r.get("reason").is_none()
                        }),
                        || format!("final report {last:?}"),
                    )?;
                    // The download takes 100 s from the job at 5 s: 25 % every 25 s.
                    let times: Vec<f64> = sim
                        .ota
                        .iter()
                        .filter(|s| s.body["progress"].is_u64())
                        .map(|s| s.at.as_secs_f64().round())
                        .collect();
                    ensure(times == [5.0, 30.0, 55.0, 80.0, 105.0], || {
                        format!("progress report times {times:?}")
                    })?;
                    let t = sim.telemetry.last().cloned().unwrap_or_default();
                    ensure(
                        t["fw"] == "2.0.0" && t["slot"] == "B" && t["ota"] == "idle",
                        || format!("telemetry after the update: {t}"),
                    )?;
                    let during = sim.telemetry.iter().any(|t| t["ota"] == "downloading");
                    ensure(during, || {
                        "telemetry never said \"ota\":\"downloading\"".into()
                    })
                },
                ..d()
            },
        },
        Case {
            name: "boot_loop = 1: exactly max_boot_attempts failed boots, then rollback to slot A",
            setup: Setup {
                faults: "boot_loop = 1.0",
                ..s()
            },
            inputs: vec![(5.0, Act::Job(JOB))],
            until_s: 400.0,
            expect: Expect {
                stages: &[Downloading, Verifying, Installing, Rebooting],
                outcomes: &[Outcome::Failed(FailStage::Boot)],
                reports: &[("j1", "FAILED", "rolled_back")],
                reason: "rolled back after 3 boot attempts",
                events: &[
                    Event::OtaBootFailed { attempt: 1 },
                    Event::OtaBootFailed { attempt: 2 },
                    Event::OtaBootFailed { attempt: 3 },
                    Event::OtaRolledBack,
                    Event::Booted,
                    Event::Connected,
                ],
                version: "1.0.0",
                slot: "A",
                check: |sim| {
                    let n = sim.count(|e| matches!(e, Event::OtaBootFailed { .. }));
                    ensure(n == 3, || format!("{n} failed boots"))?;
                    let t = sim.telemetry.last().cloned().unwrap_or_default();
                    ensure(t["fw"] == "1.0.0" && t["slot"] == "A", || {
                        format!("telemetry {t}")
                    })
                },
                ..d()
            },
        },
        Case {
            name: "boot_loop with max_boot_attempts = 5 fails five boots",
            setup: Setup {
                faults: "boot_loop = 1.0",
                max_boot_attempts: 5,
                ..s()
            },
            inputs: vec![(5.0, Act::Job(JOB))],
            until_s: 400.0,
            expect: Expect {
                stages: &[Downloading, Verifying, Installing, Rebooting],
                outcomes: &[Outcome::Failed(FailStage::Boot)],
                reports: &[("j1", "FAILED", "rolled_back")],
                reason: "after 5 boot attempts",
                events: &[Event::OtaBootFailed { attempt: 5 }, Event::OtaRolledBack],
                version: "1.0.0",
                slot: "A",
                check: |sim| {
                    let n = sim.count(|e| matches!(e, Event::OtaBootFailed { .. }));
                    ensure(n == 5, || format!("{n} failed boots"))
                },
                ..d()
            },
        },
        Case {
            name: "a boot that fails once (boot_failure) succeeds on the retry",
            // Seed 0's first boot draw fails at p = 0.5 and its second succeeds.
            setup: Setup {
                faults: "boot_failure = 0.5",
                seed: 0,
                ..s()
            },
            inputs: vec![(5.0, Act::Job(JOB))],
            until_s: 400.0,
            expect: Expect {
                events: &[
                    Event::OtaStage { stage: Rebooting },
                    Event::OtaBootFailed { attempt: 1 },
                    Event::OtaStage { stage: Trial },
                ],
                check: |sim| {
                    let n = sim.count(|e| matches!(e, Event::OtaBootFailed { .. }));
                    ensure(n == 1, || format!("{n} failed boots"))?;
                    ensure(sim.count(|e| *e == Event::OtaRolledBack) == 0, || {
                        "rolled back".into()
                    })
                },
                ..d()
            },
        },
        Case {
            name: "corrupt_image fails verification and keeps the old version",
            setup: Setup {
                faults: "corrupt_image = 1.0",
                ..s()
            },
            inputs: vec![(5.0, Act::Job(JOB))],
            until_s: 400.0,
            expect: Expect {
                stages: &[Downloading, Verifying],
                outcomes: &[Outcome::Failed(FailStage::Verify)],
                reports: &[("j1", "FAILED", "verifying")],
                reason: "verification failed",
                version: "1.0.0",
                slot: "A",
                check: |sim| {
                    ensure(sim.count(|e| *e == Event::Reboot) == 0, || {
                        "a failed verification rebooted".into()
                    })
                },
                ..d()
            },
        },
        Case {
            name: "install_failure: power loss reboots, FAILED installing reported after reconnect",
            setup: Setup {
                faults: "install_failure = 1.0",
                ..s()
            },
            inputs: vec![(5.0, Act::Job(JOB))],
            until_s: 400.0,
            expect: Expect {
                stages: &[Downloading, Verifying, Installing],
                outcomes: &[Outcome::Failed(FailStage::Install)],
                reports: &[("j1", "FAILED", "installing")],
                reason: "power loss",
                events: &[
                    Event::OtaPowerLoss,
                    Event::Reboot,
                    Event::Booted,
                    Event::Connected,
                    Event::OtaStatusSent,
                ],
                version: "1.0.0",
                slot: "A",
                check: |sim| {
                    let n = sim.count(|e| *e == Event::OtaPowerLoss);
                    ensure(n == 1, || format!("{n} power losses"))?;
                    let reboot = sim.first_time(|e| *e == Event::Reboot).unwrap_or(0.0);
                    let fail = sim.ota.last().map(|s| s.at.as_secs_f64()).unwrap_or(0.0);
                    ensure(fail > reboot, || {
                        format!("FAILED sent at {fail} s, before the reboot at {reboot} s")
                    })?;
                    ensure(sim.ota.iter().all(|s| s.on_session), || {
                        "a report left without a session".into()
                    })?;
                    // Power loss: the link dies (the broker sends the will), no DISCONNECT.
                    let ends: Vec<&Effect> = sim
                        .effects
                        .iter()
                        .filter(|(_, e)| matches!(e, Effect::Disconnect | Effect::DropLink))
                        .map(|(_, e)| e)
                        .collect();
                    ensure(ends == [&Effect::DropLink], || {
                        format!("link ends {ends:?}")
                    })
                },
                ..d()
            },
        },
        Case {
            name: "a reboot while installing is a power loss: FAILED installing",
            setup: s(),
            // Download 5..105 s, verify to 107 s, install 107..117 s.
            inputs: vec![(5.0, Act::Job(JOB)), (110.0, Act::Reboot)],
            until_s: 400.0,
            expect: Expect {
                stages: &[Downloading, Verifying, Installing],
                outcomes: &[Outcome::Failed(FailStage::Install)],
                reports: &[("j1", "FAILED", "installing")],
                events: &[Event::OtaPowerLoss, Event::Reboot, Event::Connected],
                version: "1.0.0",
                slot: "A",
                ..d()
            },
        },
        Case {
            name: "trial_failure rolls back to the old slot",
            setup: Setup {
                faults: "trial_failure = 1.0",
                ..s()
            },
            inputs: vec![(5.0, Act::Job(JOB))],
            until_s: 400.0,
            expect: Expect {
                outcomes: &[Outcome::Failed(FailStage::Trial)],
                reports: &[("j1", "FAILED", "rolled_back")],
                reason: "health check failed",
                events: &[
                    Event::OtaStage { stage: Trial },
                    Event::OtaRolledBack,
                    Event::Reboot,
                    Event::Connected,
                ],
                version: "1.0.0",
                slot: "A",
                ..d()
            },
        },
        Case {
            name: "never_returns bricks the device: Dead, no report",
            setup: Setup {
                faults: "never_returns = 1.0",
                ..s()
            },
            inputs: vec![(5.0, Act::Job(JOB))],
            until_s: 400.0,
            expect: Expect {
                stages: &[Downloading, Verifying, Installing, Rebooting],
                outcomes: &[Outcome::Bricked],
                reports: &[],
                state: DeviceState::Dead,
                check: |sim| {
                    ensure(sim.dev.ota_stage() == OtaStage::Bricked, || {
                        format!("stage {:?}", sim.dev.ota_stage())
                    })?;
                    ensure(sim.dev.wake_at().is_never(), || {
                        "a dead device wakes".into()
                    })
                },
                ..d()
            },
        },
        Case {
            name: "lost_report: the outcome is logged but no terminal report is published",
            setup: Setup {
                faults: "lost_report = 1.0",
                ..s()
            },
            inputs: vec![(5.0, Act::Job(JOB))],
            until_s: 400.0,
            expect: Expect {
                reports: &[],
                events: &[
                    Event::OtaOutcome {
                        outcome: Outcome::Succeeded,
                        rollout: None,
                    },
                    Event::OtaReportLost,
                ],
                check: |sim| ensure(sim.dev.ota_stage() == OtaStage::Idle, || "job kept".into()),
                ..d()
            },
        },
        Case {
            name: "a stall shorter than stall_timeout holds the download for stall_s",
            setup: Setup {
                faults: "download_stall = 1.0, stall_s = 10",
                ..s()
            },
            inputs: vec![(5.0, Act::Job(JOB))],
            until_s: 400.0,
            expect: Expect {
                events: &[Event::OtaDownloadStalled],
                check: |sim| {
                    let v = sim.first_time(|e| *e == Event::OtaStage { stage: Verifying });
                    ensure(v.is_some_and(|v| (v - 115.0).abs() < 0.01), || {
                        format!("verifying at {v:?} s, expected 5 + 100 + 10")
                    })
                },
                ..d()
            },
        },
        Case {
            name: "every attempt may stall again: with certain stalls two attempts fail the download",
            setup: Setup {
                faults: "download_stall = 1.0, stall_s = 60",
                download_attempts: 2,
                ..s()
            },
            inputs: vec![(5.0, Act::Job(JOB))],
            until_s: 400.0,
            expect: Expect {
                stages: &[Downloading],
                events: &[Event::OtaDownloadStalled, Event::OtaDownloadStalled],
                outcomes: &[Outcome::Failed(FailStage::Download)],
                reports: &[("j1", "FAILED", "downloading")],
                progress: None,
                version: "1.0.0",
                slot: "A",
                ..d()
            },
        },
        Case {
            name: "a stall longer than stall_timeout is abandoned after the timeout and retried",
            setup: Setup {
                faults: "download_stall = 0.6, stall_s = 60",
                download_attempts: 5,
                ..s()
            },
            inputs: vec![(5.0, Act::Job(JOB))],
            until_s: 600.0,
            expect: Expect {
                events: &[Event::OtaDownloadStalled],
                check: |sim| {
                    // Each stall (each attempt draws again) costs the 30 s timeout.
                    let n = sim
                        .log
                        .iter()
                        .filter(|(_, e)| *e == Event::OtaDownloadStalled)
                        .count() as f64;
                    let v = sim.first_time(|e| *e == Event::OtaStage { stage: Verifying });
                    ensure(
                        n >= 1.0 && v.is_some_and(|v| (v - (105.0 + 30.0 * n)).abs() < 0.01),
                        || {
                            format!(
                                "verifying at {v:?} s after {n} stalls, expected 5 + 100 + 30 each"
                            )
                        },
                    )
                },
                ..d()
            },
        },
        Case {
            name: "a long stall with the download attempts exhausted fails the download",
            setup: Setup {
                faults: "download_stall = 1.0, stall_s = 60",
                download_attempts: 1,
                ..s()
            },
            inputs: vec![(5.0, Act::Job(JOB))],
            until_s: 400.0,
            expect: Expect {
                stages: &[Downloading],
                outcomes: &[Outcome::Failed(FailStage::Download)],
                reports: &[("j1", "FAILED", "downloading")],
                reason: "download failed",
                progress: None,
                events: &[Event::OtaDownloadStalled],
                version: "1.0.0",
                slot: "A",
                ..d()
            },
        },
        Case {
            name: "reboot_mid_download with resume: progress continues where it was",
            setup: Setup {
                faults: "reboot_mid_download = 1.0",
                ..s()
            },
            inputs: vec![(5.0, Act::Job(JOB))],
            until_s: 400.0,
            expect: Expect {
                events: &[
                    Event::OtaRebootMidDownload,
                    Event::Reboot,
                    Event::OtaDownloadPaused,
                    Event::Booted,
                    Event::Connected,
                    Event::OtaStage { stage: Verifying },
                ],
                check: |sim| {
                    ensure(
                        sim.count(|e| *e == Event::OtaDownloadRestarted) == 0,
                        || "restarted".into(),
                    )?;
                    // 100 s of download plus the reboot's 1 s boot.
                    let v = sim.first_time(|e| *e == Event::OtaStage { stage: Verifying });
                    ensure(v.is_some_and(|v| (v - 106.0).abs() < 0.01), || {
                        format!("verifying at {v:?} s, expected 5 + 100 + 1")
                    })
                },
                ..d()
            },
        },
        Case {
            name: "reboot_mid_download without resume: the download starts again from 0",
            setup: Setup {
                faults: "reboot_mid_download = 1.0",
                ota: "resume = false",
                ..s()
            },
            inputs: vec![(5.0, Act::Job(JOB))],
            until_s: 400.0,
            expect: Expect {
                progress: None,
                events: &[
                    Event::OtaRebootMidDownload,
                    Event::OtaDownloadRestarted,
                    Event::Connected,
                    Event::OtaStage { stage: Verifying },
                ],
                check: |sim| {
                    let p = sim.progress();
                    let zeros = p.iter().filter(|v| **v == 0).count();
                    ensure(zeros == 2 && p.last() == Some(&100), || {
                        format!("progress {p:?}: expected 0 twice, ending at 100")
                    })?;
                    let v = sim.first_time(|e| *e == Event::OtaStage { stage: Verifying });
                    ensure(v.is_some_and(|v| v > 106.5), || {
                        format!("verifying at {v:?} s: the download did not start over")
                    })
                },
                ..d()
            },
        },
        Case {
            name: "a link drop mid-download pauses it, the reconnect resumes it",
            setup: s(),
            inputs: vec![(5.0, Act::Job(JOB)), (50.0, Act::LinkLost)],
            until_s: 400.0,
            expect: Expect {
                events: &[
                    Event::OtaDownloadPaused,
                    Event::Connected,
                    Event::OtaStage { stage: Verifying },
                ],
                check: |sim| {
                    // Offline for the 1 s backoff.
                    let v = sim.first_time(|e| *e == Event::OtaStage { stage: Verifying });
                    ensure(v.is_some_and(|v| (v - 106.0).abs() < 0.01), || {
                        format!("verifying at {v:?} s, expected 5 + 100 + 1")
                    })
                },
                ..d()
            },
        },
        Case {
            name: "a link drop mid-download without resume restarts it from 0",
            setup: Setup {
                ota: "resume = false",
                ..s()
            },
            inputs: vec![(5.0, Act::Job(JOB)), (60.0, Act::LinkLost)],
            until_s: 400.0,
            expect: Expect {
                progress: Some(&[0, 25, 50, 0, 25, 50, 75, 100]),
                events: &[Event::OtaDownloadRestarted],
                check: |sim| {
                    let v = sim.first_time(|e| *e == Event::OtaStage { stage: Verifying });
                    ensure(v.is_some_and(|v| (v - 161.0).abs() < 0.01), || {
                        format!("verifying at {v:?} s, expected 61 + 100")
                    })
                },
                ..d()
            },
        },
        Case {
            name: "an outage mid-download pauses it until the device is back",
            setup: s(),
            inputs: vec![(5.0, Act::Job(JOB)), (50.0, Act::Outage(20.0))],
            until_s: 400.0,
            expect: Expect {
                events: &[
                    Event::OtaDownloadPaused,
                    Event::Connected,
                    Event::OtaStage { stage: Verifying },
                ],
                ..d()
            },
        },
        Case {
            name: "an unknown version is REJECTED",
            setup: s(),
            inputs: vec![(5.0, Act::Job(r#"{"job_id":"j1","version":"9.9.9"}"#))],
            until_s: 100.0,
            expect: Expect {
                stages: &[],
                outcomes: &[Outcome::Rejected(RejectReason::UnknownVersion)],
                reports: &[("j1", "REJECTED", "rejected")],
                reason: "unknown firmware version",
                progress: Some(&[]),
                version: "1.0.0",
                slot: "A",
                ..d()
            },
        },
        Case {
            name: "a downgrade is REJECTED unless allowed",
            setup: Setup {
                version: "1.1.0",
                ..s()
            },
            inputs: vec![(5.0, Act::Job(r#"{"job_id":"j1","version":"1.0.0"}"#))],
            until_s: 100.0,
            expect: Expect {
                stages: &[],
                outcomes: &[Outcome::Rejected(RejectReason::Downgrade)],
                reports: &[("j1", "REJECTED", "rejected")],
                reason: "downgrade not allowed",
                progress: Some(&[]),
                version: "1.1.0",
                slot: "A",
                ..d()
            },
        },
        Case {
            name: "an allowed downgrade installs the older version in slot B",
            setup: Setup {
                version: "1.1.0",
                ota: "allow_downgrade = true",
                ..s()
            },
            inputs: vec![(5.0, Act::Job(r#"{"job_id":"j1","version":"1.0.0"}"#))],
            until_s: 400.0,
            expect: Expect {
                version: "1.0.0",
                ..d()
            },
        },
        Case {
            name: "a job on a low battery is REJECTED",
            setup: Setup {
                ota: "min_battery_percent = 20",
                extra: "[battery]\ncapacity_mah = 1000\nidle_ma = 0\ntx_mah = 0\nstart_percent = 10\n",
                ..s()
            },
            inputs: vec![(5.0, Act::Job(JOB))],
            until_s: 100.0,
            expect: Expect {
                stages: &[],
                outcomes: &[Outcome::Rejected(RejectReason::LowBattery)],
                reports: &[("j1", "REJECTED", "rejected")],
                reason: "battery too low",
                progress: Some(&[]),
                version: "1.0.0",
                slot: "A",
                ..d()
            },
        },
        Case {
            name: "download = \"http\" and a job without a url is REJECTED",
            setup: Setup {
                ota: "download = \"http\"",
                ..s()
            },
            inputs: vec![(5.0, Act::Job(JOB))],
            until_s: 100.0,
            expect: Expect {
                stages: &[],
                outcomes: &[Outcome::Rejected(RejectReason::NoUrl)],
                reports: &[("j1", "REJECTED", "rejected")],
                reason: "no url",
                progress: Some(&[]),
                version: "1.0.0",
                slot: "A",
                ..d()
            },
        },
        Case {
            name: "a job without a version is REJECTED as a bad document",
            setup: s(),
            inputs: vec![(5.0, Act::Job(r#"{"job_id":"j1","url":"http://x/y"}"#))],
            until_s: 100.0,
            expect: Expect {
                stages: &[],
                outcomes: &[Outcome::Rejected(RejectReason::BadDocument)],
                reports: &[("j1", "REJECTED", "rejected")],
                reason: "malformed job document",
                progress: Some(&[]),
                events: &[Event::OtaBadMessage],
                version: "1.0.0",
                slot: "A",
                ..d()
            },
        },
        Case {
            name: "a job for the running version succeeds at once without a download",
            setup: s(),
            inputs: vec![(5.0, Act::Job(r#"{"job_id":"j1","version":"1.0.0"}"#))],
            until_s: 100.0,
            expect: Expect {
                stages: &[],
                progress: Some(&[]),
                version: "1.0.0",
                slot: "A",
                ..d()
            },
        },
        Case {
            name: "a second job while busy is REJECTED busy and the first carries on",
            setup: s(),
            inputs: vec![
                (5.0, Act::Job(JOB)),
                (40.0, Act::Job(r#"{"job_id":"j2","version":"1.1.0"}"#)),
            ],
            until_s: 400.0,
            expect: Expect {
                outcomes: &[Outcome::Rejected(RejectReason::Busy), Outcome::Succeeded],
                reports: &[
                    ("j2", "REJECTED", "rejected"),
                    ("j1", "SUCCEEDED", "committed"),
                ],
                check: |sim| {
                    let busy = sim
                        .reports()
                        .into_iter()
                        .find(|r| r["job_id"] == "j2")
                        .cloned()
                        .unwrap_or_default();
                    ensure(
                        busy["reason"] == "another update is in progress"
                            && busy["target"] == "1.1.0",
                        || format!("busy report {busy}"),
                    )
                },
                ..d()
            },
        },
        Case {
            name: "the same job id twice is ignored",
            setup: s(),
            inputs: vec![(5.0, Act::Job(JOB)), (40.0, Act::Job(JOB))],
            until_s: 400.0,
            expect: Expect {
                check: |sim| {
                    let n = sim.count(|e| matches!(e, Event::OtaJobReceived { .. }));
                    ensure(n == 1, || format!("{n} jobs received"))
                },
                ..d()
            },
        },
        Case {
            name: "a generic cancel while downloading sends CANCELED and drops the job",
            setup: s(),
            inputs: vec![
                (5.0, Act::Job(JOB)),
                (40.0, Act::Job(r#"{"job_id":"j1","cancel":true}"#)),
            ],
            until_s: 400.0,
            expect: Expect {
                stages: &[Downloading],
                outcomes: &[],
                reports: &[("j1", "CANCELED", "downloading")],
                progress: Some(&[0, 25]),
                events: &[Event::OtaCancelled { rollout: None }],
                version: "1.0.0",
                slot: "A",
                check: |sim| {
                    ensure(sim.dev.ota_stage() == OtaStage::Idle, || "job kept".into())?;
                    let last = sim.ota.last().map(|s| s.at.as_secs_f64());
                    ensure(last == Some(40.0), || {
                        format!("a report after the cancel: {last:?}")
                    })
                },
                ..d()
            },
        },
        Case {
            name: "a cancel of another job id is ignored",
            setup: s(),
            inputs: vec![
                (5.0, Act::Job(JOB)),
                (40.0, Act::Job(r#"{"job_id":"j9","cancel":true}"#)),
            ],
            until_s: 400.0,
            expect: d(),
        },
        Case {
            name: "a cancel once the image is being written is refused",
            setup: s(),
            inputs: vec![
                (5.0, Act::Job(JOB)),
                (110.0, Act::Job(r#"{"job_id":"j1","cancel":true}"#)),
            ],
            until_s: 400.0,
            expect: Expect {
                events: &[Event::OtaCancelRefused],
                ..d()
            },
        },
        Case {
            name: "a rollout job while offline is queued and starts on connect",
            setup: s(),
            inputs: vec![(0.5, rollout(0, "2.0.0"))],
            until_s: 400.0,
            expect: Expect {
                reports: &[("rollout-0", "SUCCEEDED", "committed")],
                events: &[
                    Event::OtaJobReceived { rollout: Some(0) },
                    Event::Connected,
                    Event::OtaStarted { rollout: Some(0) },
                    Event::OtaReported {
                        rollout: 0,
                        outcome: None,
                        lost: false,
                        delay: SimDuration::ZERO,
                    },
                    Event::OtaOutcome {
                        outcome: Outcome::Succeeded,
                        rollout: Some(0),
                    },
                ],
                check: |sim| {
                    let queued = sim.first_time(|e| matches!(e, Event::OtaJobReceived { .. }));
                    let started = sim.first_time(|e| matches!(e, Event::OtaStarted { .. }));
                    let connected = sim.first_time(|e| *e == Event::Connected);
                    ensure(queued == Some(0.5) && started == connected, || {
                        format!("queued {queued:?}, started {started:?}, connected {connected:?}")
                    })?;
                    let finals = sim.count(|e| {
                        matches!(
                            e,
                            Event::OtaReported {
                                outcome: Some(Outcome::Succeeded),
                                lost: false,
                                ..
                            }
                        )
                    });
                    ensure(finals == 1, || format!("{finals} final rollout reports"))
                },
                ..d()
            },
        },
        Case {
            name: "a rollout job for an unknown version that reached the device offline is rejected once connected",
            setup: s(),
            inputs: vec![(0.5, rollout(0, "9.9.9"))],
            until_s: 100.0,
            expect: Expect {
                stages: &[],
                outcomes: &[Outcome::Rejected(RejectReason::UnknownVersion)],
                reports: &[("rollout-0", "REJECTED", "rejected")],
                progress: Some(&[]),
                events: &[
                    Event::OtaJobReceived { rollout: Some(0) },
                    Event::Connected,
                    Event::OtaReported {
                        rollout: 0,
                        outcome: Some(Outcome::Rejected(RejectReason::UnknownVersion)),
                        lost: false,
                        delay: SimDuration::ZERO,
                    },
                ],
                version: "1.0.0",
                slot: "A",
                ..d()
            },
        },
        Case {
            name: "a rollout cancel drops the job while it is queued",
            setup: s(),
            inputs: vec![(0.3, rollout(0, "2.0.0")), (0.6, Act::CancelRollout(0))],
            until_s: 400.0,
            expect: Expect {
                stages: &[],
                outcomes: &[],
                reports: &[],
                progress: Some(&[]),
                events: &[Event::OtaCancelled { rollout: Some(0) }],
                version: "1.0.0",
                slot: "A",
                ..d()
            },
        },
        Case {
            name: "a rollout cancel of another rollout or after the start changes nothing",
            setup: s(),
            inputs: vec![
                (0.3, rollout(0, "2.0.0")),
                (0.6, Act::CancelRollout(1)),
                (10.0, Act::CancelRollout(0)),
            ],
            until_s: 400.0,
            expect: Expect {
                reports: &[("rollout-0", "SUCCEEDED", "committed")],
                check: |sim| {
                    let n = sim.count(|e| matches!(e, Event::OtaCancelled { .. }));
                    ensure(n == 0, || format!("{n} cancels"))
                },
                ..d()
            },
        },
        Case {
            name: "two updates in a row alternate the slots",
            setup: s(),
            inputs: vec![
                (5.0, Act::Job(r#"{"job_id":"j1","version":"1.1.0"}"#)),
                (200.0, Act::Job(r#"{"job_id":"j2","version":"2.0.0"}"#)),
            ],
            until_s: 600.0,
            expect: Expect {
                stages: &[
                    Downloading,
                    Verifying,
                    Installing,
                    Rebooting,
                    Trial,
                    Downloading,
                    Verifying,
                    Installing,
                    Rebooting,
                    Trial,
                ],
                outcomes: &[Outcome::Succeeded, Outcome::Succeeded],
                reports: &[
                    ("j1", "SUCCEEDED", "committed"),
                    ("j2", "SUCCEEDED", "committed"),
                ],
                progress: Some(&[0, 25, 50, 75, 100, 0, 25, 50, 75, 100]),
                slot: "A",
                check: |sim| {
                    let slots: Vec<String> = sim
                        .terminal()
                        .iter()
                        .zip(
                            sim.reports()
                                .iter()
                                .filter(|r| r["status"] != "IN_PROGRESS"),
                        )
                        .map(|(_, r)| r["slot"].as_str().unwrap_or("").to_string())
                        .collect();
                    ensure(slots == ["B", "A"], || format!("slots {slots:?}"))
                },
                ..d()
            },
        },
        // ---- HTTP downloads (real network, job with a url) ----
        Case {
            name: "http: Effect::Download, progress inputs and DownloadDone drive the cycle",
            setup: Setup {
                real_network: true,
                ..s()
            },
            inputs: vec![
                (5.0, Act::Job(HTTP_JOB)),
                (6.0, progress(1024, Some(4096))),
                (7.0, progress(2048, None)),
                (8.0, done(4096, "ab12")),
            ],
            until_s: 400.0,
            expect: Expect {
                progress: Some(&[0, 25, 50, 100]),
                check: |sim| {
                    let d = sim.downloads();
                    ensure(d == [(5.0, 0)], || format!("downloads {d:?}"))?;
                    let v = sim.first_time(|e| *e == Event::OtaStage { stage: Verifying });
                    ensure(v == Some(8.0), || format!("verifying at {v:?}"))?;
                    ensure(sim.dev.ota_download_url().is_none(), || "job kept".into())
                },
                ..d()
            },
        },
        Case {
            name: "http: a sha256 mismatch fails verification",
            setup: Setup {
                real_network: true,
                ..s()
            },
            inputs: vec![(5.0, Act::Job(HTTP_JOB)), (8.0, done(4096, "ffff"))],
            until_s: 400.0,
            expect: Expect {
                stages: &[Downloading, Verifying],
                outcomes: &[Outcome::Failed(FailStage::Verify)],
                reports: &[("j1", "FAILED", "verifying")],
                progress: Some(&[0, 100]),
                version: "1.0.0",
                slot: "A",
                ..d()
            },
        },
        Case {
            name: "http: a size mismatch fails verification",
            setup: Setup {
                real_network: true,
                ..s()
            },
            inputs: vec![(5.0, Act::Job(HTTP_JOB)), (8.0, done(4000, "ab12"))],
            until_s: 400.0,
            expect: Expect {
                stages: &[Downloading, Verifying],
                outcomes: &[Outcome::Failed(FailStage::Verify)],
                reports: &[("j1", "FAILED", "verifying")],
                progress: Some(&[0, 100]),
                version: "1.0.0",
                slot: "A",
                ..d()
            },
        },
        Case {
            name: "http: a retryable failure is retried later from the offset it had",
            setup: Setup {
                real_network: true,
                ..s()
            },
            inputs: vec![
                (5.0, Act::Job(HTTP_JOB)),
                (6.0, failed(2048, true)),
                (12.0, done(4096, "ab12")),
            ],
            until_s: 400.0,
            expect: Expect {
                progress: Some(&[0, 100]),
                events: &[Event::OtaDownloadFailed { retryable: true }],
                check: |sim| {
                    // The first retry waits OTA_DOWNLOAD_RETRY (5 s).
                    let d = sim.downloads();
                    ensure(d == [(5.0, 0), (11.0, 2048)], || format!("downloads {d:?}"))
                },
                ..d()
            },
        },
        Case {
            name: "http: a non-retryable failure fails the download",
            setup: Setup {
                real_network: true,
                ..s()
            },
            inputs: vec![(5.0, Act::Job(HTTP_JOB)), (6.0, failed(100, false))],
            until_s: 400.0,
            expect: Expect {
                stages: &[Downloading],
                outcomes: &[Outcome::Failed(FailStage::Download)],
                reports: &[("j1", "FAILED", "downloading")],
                progress: Some(&[0]),
                version: "1.0.0",
                slot: "A",
                check: |sim| {
                    let d = sim.downloads();
                    ensure(d == [(5.0, 0)], || format!("downloads {d:?}"))
                },
                ..d()
            },
        },
        Case {
            name: "http: retryable failures up to download_attempts fail the download",
            setup: Setup {
                real_network: true,
                download_attempts: 2,
                ..s()
            },
            inputs: vec![
                (5.0, Act::Job(HTTP_JOB)),
                (6.0, failed(1000, true)),
                (12.0, failed(3000, true)),
            ],
            until_s: 400.0,
            expect: Expect {
                stages: &[Downloading],
                outcomes: &[Outcome::Failed(FailStage::Download)],
                reports: &[("j1", "FAILED", "downloading")],
                progress: Some(&[0]),
                version: "1.0.0",
                slot: "A",
                check: |sim| {
                    let d = sim.downloads();
                    ensure(d == [(5.0, 0), (11.0, 1000)], || format!("downloads {d:?}"))
                },
                ..d()
            },
        },
        Case {
            name: "http: a link drop cancels the fetch and the reconnect resumes at its offset",
            setup: Setup {
                real_network: true,
                ..s()
            },
            inputs: vec![
                (5.0, Act::Job(HTTP_JOB)),
                (6.0, progress(3000, Some(4096))),
                (7.0, Act::LinkLost),
                (9.0, done(4096, "ab12")),
            ],
            until_s: 400.0,
            expect: Expect {
                // 3000 of 4096 bytes passes the 25 and 50 % steps at once: one report, 73 %.
                progress: Some(&[0, 73, 100]),
                events: &[Event::OtaDownloadPaused],
                check: |sim| {
                    let d = sim.downloads();
                    ensure(d == [(5.0, 0), (8.0, 3000)], || format!("downloads {d:?}"))?;
                    let cancels: Vec<f64> = sim
                        .effects
                        .iter()
                        .filter(|(_, e)| *e == Effect::CancelDownload)
                        .map(|(t, _)| t.as_secs_f64())
                        .collect();
                    ensure(cancels == [7.0], || format!("cancels {cancels:?}"))
                },
                ..d()
            },
        },
        Case {
            name: "http: without resume the fetch after a link drop starts at 0",
            setup: Setup {
                real_network: true,
                ota: "resume = false",
                ..s()
            },
            inputs: vec![
                (5.0, Act::Job(HTTP_JOB)),
                (6.0, progress(3000, Some(4096))),
                (7.0, Act::LinkLost),
                (9.0, done(4096, "ab12")),
            ],
            until_s: 400.0,
            expect: Expect {
                progress: Some(&[0, 73, 100]),
                events: &[Event::OtaDownloadRestarted],
                check: |sim| {
                    let d = sim.downloads();
                    ensure(d == [(5.0, 0), (8.0, 0)], || format!("downloads {d:?}"))
                },
                ..d()
            },
        },
        Case {
            name: "http: download = \"simulated\" ignores the url",
            setup: Setup {
                real_network: true,
                ota: "download = \"simulated\"",
                ..s()
            },
            inputs: vec![(5.0, Act::Job(HTTP_JOB))],
            until_s: 400.0,
            expect: Expect {
                check: |sim| {
                    let d = sim.downloads();
                    ensure(d.is_empty(), || format!("downloads {d:?}"))
                },
                ..d()
            },
        },
    ]
}

fn run_case(case: &Case) -> Result<(), String> {
    let mut sim = Sim::new(&case.setup);
    sim.play(&case.inputs, case.until_s);
    let e = &case.expect;
    let stages = sim.stages();
    ensure(stages == e.stages, || format!("stages {stages:?}"))?;
    let outcomes = sim.outcomes();
    ensure(outcomes == e.outcomes, || format!("outcomes {outcomes:?}"))?;
    let terminal = sim.terminal();
    let want: Vec<(String, String, String)> = e
        .reports
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    ensure(terminal == want, || {
        format!("terminal reports {terminal:?}")
    })?;
    if !e.reason.is_empty() {
        let last = sim
            .reports()
            .into_iter()
            .rfind(|r| r["status"] != "IN_PROGRESS")
            .cloned()
            .unwrap_or_default();
        let reason = last["reason"].as_str().unwrap_or("");
        ensure(reason.contains(e.reason), || format!("reason {reason:?}"))?;
    }
    if let Some(p) = e.progress {
        let have = sim.progress();
        ensure(have == p, || format!("progress {have:?}"))?;
    }
    let events = sim.events();
    ensure(subsequence(&events, e.events), || {
        format!("events lack {:?} in order; have {events:?}", e.events)
    })?;
    ensure(sim.version() == e.version, || {
        format!("version {}", sim.version())
    })?;
    ensure(sim.dev.active_slot() == e.slot, || {
        format!("slot {}", sim.dev.active_slot())
    })?;
    ensure(sim.dev.state() == e.state, || {
        format!("state {:?}", sim.dev.state())
    })?;
    let offline: Vec<String> = sim
        .ota
        .iter()
        .filter(|s| !s.on_session)
        .map(|s| format!("{} s: {}", s.at.as_secs_f64(), s.body))
        .collect();
    ensure(offline.is_empty(), || {
        format!("published without a session: {offline:?}")
    })?;
    if e.state != DeviceState::Dead {
        ensure(sim.dev.ota_stage() == OtaStage::Idle, || {
            format!("stage {:?} at the end", sim.dev.ota_stage())
        })?;
    }
    (e.check)(&sim)
}

#[test]
fn the_ab_cycle_table() {
    let mut problems = Vec::new();
    let cases = cases();
    for case in &cases {
        if let Err(why) = run_case(case) {
            problems.push(format!("{}: {why}", case.name));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} cases failed:\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n")
    );
}

#[test]
fn boot_failure_rolls_back_exactly_when_every_boot_attempt_failed() {
    // Per-boot draws at p = 0.5 over 40 seeds: each run either commits after fewer failed
    // boots than max_boot_attempts, or rolls back after exactly that many.
    let mut seen = BTreeMap::new();
    for seed in 0..40 {
        let mut sim = Sim::new(&Setup {
            faults: "boot_failure = 0.5",
            seed,
            ..Setup::default()
        });
        sim.play(&[(5.0, Act::Job(JOB))], 400.0);
        let failed = sim.count(|e| matches!(e, Event::OtaBootFailed { .. }));
        let outcomes = sim.outcomes();
        let expected = if failed < 3 {
            (Outcome::Succeeded, "2.0.0", "B")
        } else {
            (Outcome::Failed(FailStage::Boot), "1.0.0", "A")
        };
        assert!(failed <= 3, "seed {seed}: {failed} failed boots");
        assert_eq!(
            (
                outcomes[..].first().copied(),
                sim.version(),
                sim.dev.active_slot()
            ),
            (Some(expected.0), expected.1, expected.2),
            "seed {seed}: {failed} failed boots"
        );
        *seen.entry(failed).or_insert(0) += 1;
    }
    assert_eq!(
        seen.len(),
        4,
        "0, 1, 2 and 3 failed boots all occur: {seen:?}"
    );
}

// ------------------------------------------------------------------ AWS IoT Jobs -------------

const AWS: &str = "protocol = \"aws_jobs\"";
const AWS_DOC: &str = r#"{"operation":"firmware_update","version":"2.0.0"}"#;

fn aws_setup() -> Setup {
    Setup {
        ota: AWS,
        ..Setup::default()
    }
}

/// The statusDetails of an update, with every value checked to be a string (AWS requires it).
fn details(update: &Value) -> Result<BTreeMap<String, String>, String> {
    let d = update["statusDetails"]
        .as_object()
        .ok_or_else(|| format!("no statusDetails in {update}"))?;
    d.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => Ok((k.clone(), s.to_string())),
            None => Err(format!("statusDetails.{k} = {v} is not a string")),
        })
        .collect()
}

#[test]
fn aws_a_job_from_start_next_runs_and_every_update_carries_the_next_expected_version() {
    let mut sim = Sim::new(&aws_setup()).with_jobs();
    sim.play(&[(0.0, Act::AwsQueue("j1", AWS_DOC))], 400.0);
    let requests = sim.aws_requests();
    // On connect (t = 1 s) the device asks for its next job.
    assert_eq!(requests[0].0, "start-next");
    assert_eq!(sim.ota[0].at, at(1.0));
    assert!(
        requests[0].1["clientToken"]
            .as_str()
            .is_some_and(|t| t.starts_with("d-0-"))
    );
    let updates = sim.aws_updates("j1");
    let stages: Vec<String> = updates
        .iter()
        .map(|u| details(u).expect("string details")["stage"].clone())
        .collect();
    assert_eq!(
        stages,
        [
            "downloading",
            "downloading",
            "downloading",
            "downloading",
            "downloading",
            "verifying",
            "installing",
            "rebooting",
            "trial",
            "committed"
        ]
    );
    let progress: Vec<String> = updates
        .iter()
        .filter_map(|u| details(u).ok()?.get("progress").cloned())
        .collect();
    assert_eq!(progress, ["0", "25", "50", "75", "100"]);
    let expected: Vec<u64> = updates
        .iter()
        .filter_map(|u| u["expectedVersion"].as_u64())
        .collect();
    assert_eq!(
        expected,
        (1..=10).collect::<Vec<_>>(),
        "expectedVersion counts up"
    );
    let statuses: Vec<&str> = updates
        .iter()
        .map(|u| u["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(statuses.last(), Some(&"SUCCEEDED"));
    assert!(statuses[..9].iter().all(|s| *s == "IN_PROGRESS"));
    let final_details = details(updates[9]).expect("string details");
    assert_eq!(final_details["version"], "2.0.0");
    assert_eq!(final_details["slot"], "B");
    let mut tokens: Vec<&str> = requests
        .iter()
        .map(|(_, b)| b["clientToken"].as_str().unwrap_or(""))
        .collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), requests.len(), "client tokens are unique");
    assert!(
        updates
            .iter()
            .all(|u| u["includeJobExecutionState"] == true)
    );
    // Nothing the service rejected; after the terminal update was accepted, start-next again.
    let jobs = sim.jobs.as_ref().expect("fake service");
    assert!(jobs.rejected.is_empty(), "{:?}", jobs.rejected);
    assert_eq!(
        requests.last().map(|(t, _)| t.as_str()),
        Some("start-next"),
        "{requests:?}"
    );
    assert_eq!(sim.outcomes(), [Outcome::Succeeded]);
    assert_eq!((sim.version(), sim.dev.active_slot()), ("2.0.0", "B"));
    assert_eq!(sim.dev.ota_stage(), OtaStage::Idle);
    assert!(
        sim.reports().is_empty(),
        "nothing on the generic status topic"
    );
}

#[test]
fn aws_version_mismatch_with_execution_state_re_sends_the_same_update_with_that_version() {
    let mut sim = Sim::new(&aws_setup()).with_jobs();
    sim.play(
        &[
            (0.0, Act::AwsQueue("j1", AWS_DOC)),
            (20.0, Act::AwsMismatch { with_state: true }),
        ],
        400.0,
    );
    let updates = sim.aws_updates("j1");
    // The 25 % update (t = 30 s) was rejected: the service was at version 3 after a change by
    // someone else; the device re-sends it with expectedVersion 3.
    let (first, again) = (updates[1], updates[2]);
    assert_eq!(first["expectedVersion"], 2);
    assert_eq!(again["expectedVersion"], 3);
    assert_eq!(first["status"], again["status"]);
    assert_eq!(first["statusDetails"], again["statusDetails"]);
    assert_eq!(sim.count(|e| *e == Event::OtaUpdateRetried), 1);
    let jobs = sim.jobs.as_ref().expect("fake service");
    assert_eq!(jobs.rejected, ["VersionMismatch"]);
    assert_eq!(sim.outcomes(), [Outcome::Succeeded]);
    assert_eq!(
        updates.last().map(|u| &u["status"]),
        Some(&json!("SUCCEEDED"))
    );
}

#[test]
fn aws_version_mismatch_without_execution_state_gets_the_execution_then_re_sends() {
    let mut sim = Sim::new(&aws_setup()).with_jobs();
    sim.play(
        &[
            (0.0, Act::AwsQueue("j1", AWS_DOC)),
            (20.0, Act::AwsMismatch { with_state: false }),
        ],
        400.0,
    );
    let requests: Vec<(String, Value)> = sim
        .aws_requests()
        .into_iter()
        .map(|(t, b)| (t, b.clone()))
        .collect();
    let get = requests
        .iter()
        .position(|(t, _)| t == "j1/get")
        .expect("a get request");
    let (rejected, get_body, again) = (&requests[get - 1], &requests[get].1, &requests[get + 1]);
    assert_eq!(rejected.0, "j1/update");
    assert_eq!(again.0, "j1/update");
    assert!(get_body["clientToken"].is_string());
    assert_eq!(rejected.1["statusDetails"], again.1["statusDetails"]);
    assert_eq!(
        again.1["expectedVersion"], 3,
        "the version get/accepted gave"
    );
    assert_eq!(sim.outcomes(), [Outcome::Succeeded]);
}

#[test]
fn aws_scripted_replies_drive_retries_and_an_invalid_state_transition_abandons_the_job() {
    let mut sim = Sim::new(&aws_setup());
    let exec = r#"{"timestamp":1,"clientToken":"d-0-1","execution":{"jobId":"j1","status":"IN_PROGRESS","versionNumber":3,"executionNumber":1,"jobDocument":{"operation":"firmware_update","version":"2.0.0"}}}"#;
    sim.play(
        &[
            (2.0, Act::Aws("start-next/accepted", exec)),
            (
                3.0,
                Act::Aws(
                    "j1/update/rejected",
                    r#"{"code":"VersionMismatch","message":"m","clientToken":"x","executionState":{"status":"IN_PROGRESS","statusDetails":{},"versionNumber":7}}"#,
                ),
            ),
            (
                4.0,
                Act::Aws(
                    "j1/update/rejected",
                    r#"{"code":"VersionMismatch","message":"m","clientToken":"x"}"#,
                ),
            ),
            (
                5.0,
                Act::Aws(
                    "j1/get/accepted",
                    r#"{"execution":{"jobId":"j1","status":"IN_PROGRESS","versionNumber":9,"executionNumber":1},"timestamp":2,"clientToken":"x"}"#,
                ),
            ),
            // notify-next while busy: no start-next.
            (
                6.0,
                Act::Aws(
                    "notify-next",
                    r#"{"timestamp":3,"execution":{"jobId":"j2","versionNumber":1,"executionNumber":1,"jobDocument":{"version":"1.1.0"}}}"#,
                ),
            ),
            (
                10.0,
                Act::Aws(
                    "j1/update/rejected",
                    r#"{"code":"InvalidStateTransition","message":"canceled","clientToken":"x"}"#,
                ),
            ),
        ],
        400.0,
    );
    let requests: Vec<(f64, String, Value)> = sim
        .aws_requests()
        .into_iter()
        .map(|(t, b)| (0.0, t, b.clone()))
        .zip(&sim.ota)
        .map(|((_, t, b), s)| (s.at.as_secs_f64(), t, b))
        .collect();
    let summary: Vec<(f64, &str, Option<u64>)> = requests
        .iter()
        .map(|(t, topic, b)| (*t, topic.as_str(), b["expectedVersion"].as_u64()))
        .collect();
    assert_eq!(
        summary,
        [
            (1.0, "start-next", None),
            (2.0, "j1/update", Some(3)),
            (3.0, "j1/update", Some(7)),
            (4.0, "j1/get", None),
            (5.0, "j1/update", Some(9)),
            // Abandoned after InvalidStateTransition: the device asks for its next job.
            (10.0, "start-next", None),
        ]
    );
    assert_eq!(
        requests[1].2["statusDetails"],
        requests[2].2["statusDetails"]
    );
    assert_eq!(
        requests[1].2["statusDetails"],
        requests[4].2["statusDetails"]
    );
    assert_eq!(requests[3].2["includeJobDocument"], false);
    assert!(sim.events().contains(&Event::OtaAbandoned));
    assert_eq!(sim.dev.ota_stage(), OtaStage::Idle);
    assert!(sim.outcomes().is_empty());
    assert_eq!((sim.version(), sim.dev.active_slot()), ("1.0.0", "A"));
}

#[test]
fn aws_a_job_cancelled_by_the_service_while_downloading_is_abandoned() {
    let mut sim = Sim::new(&aws_setup()).with_jobs();
    sim.play(
        &[(0.0, Act::AwsQueue("j1", AWS_DOC)), (20.0, Act::AwsCancel)],
        400.0,
    );
    let updates = sim.aws_updates("j1");
    assert_eq!(
        updates.len(),
        2,
        "0 % accepted, 25 % rejected, nothing after"
    );
    let jobs = sim.jobs.as_ref().expect("fake service");
    assert_eq!(jobs.rejected, ["InvalidStateTransition"]);
    assert!(sim.events().contains(&Event::OtaAbandoned));
    assert_eq!(sim.dev.ota_stage(), OtaStage::Idle);
    assert!(sim.stages() == [Downloading], "{:?}", sim.stages());
    assert!(sim.outcomes().is_empty());
    assert_eq!((sim.version(), sim.dev.active_slot()), ("1.0.0", "A"));
}

#[test]
fn aws_notify_next_while_idle_makes_the_device_start_the_next_job() {
    let mut sim = Sim::new(&aws_setup()).with_jobs();
    sim.play(&[(20.0, Act::AwsQueue("j2", AWS_DOC))], 400.0);
    let requests = sim.aws_requests();
    let times: Vec<(f64, &str)> = sim
        .ota
        .iter()
        .zip(&requests)
        .map(|(s, (t, _))| (s.at.as_secs_f64(), t.as_str()))
        .take(3)
        .collect();
    assert_eq!(
        times,
        [
            (1.0, "start-next"),
            (20.0, "start-next"),
            (20.0, "j2/update")
        ]
    );
    assert_eq!(sim.outcomes(), [Outcome::Succeeded]);
    assert_eq!(sim.version(), "2.0.0");
}

#[test]
fn aws_a_malformed_job_document_is_rejected_and_the_next_job_runs() {
    for bad in [
        r#"{"operation":"reboot"}"#,
        r#"{"operation":"firmware_update"}"#,
        r#""just a string""#,
    ] {
        let mut sim = Sim::new(&aws_setup()).with_jobs();
        sim.play(
            &[
                (0.0, Act::AwsQueue("j3", bad)),
                (0.0, Act::AwsQueue("j4", AWS_DOC)),
            ],
            400.0,
        );
        let rejected = sim.aws_updates("j3");
        assert_eq!(rejected.len(), 1, "{bad}");
        assert_eq!(rejected[0]["status"], "REJECTED", "{bad}");
        assert_eq!(rejected[0]["expectedVersion"], 1, "{bad}");
        let d = details(rejected[0]).expect("string details");
        assert_eq!(d["stage"], "rejected");
        assert_eq!(d["reason"], "malformed job document");
        assert_eq!(
            sim.outcomes(),
            [
                Outcome::Rejected(RejectReason::BadDocument),
                Outcome::Succeeded
            ],
            "{bad}"
        );
        assert_eq!(sim.version(), "2.0.0");
    }
}

#[test]
fn aws_rejections_are_sent_as_terminal_updates_with_the_reason() {
    for (doc, reason) in [
        (
            r#"{"operation":"firmware_update","version":"7.0.0"}"#,
            "unknown firmware version",
        ),
        (
            r#"{"operation":"firmware_update","version":"2.0.0"}"#,
            "the job document has no url (download = \"http\")",
        ),
    ] {
        let mut sim = Sim::new(&Setup {
            ota: "protocol = \"aws_jobs\"\ndownload = \"http\"",
            ..Setup::default()
        })
        .with_jobs();
        sim.play(&[(0.0, Act::AwsQueue("j1", doc))], 100.0);
        let updates = sim.aws_updates("j1");
        assert_eq!(updates.len(), 1, "{doc}");
        assert_eq!(updates[0]["status"], "REJECTED", "{doc}");
        let d = details(updates[0]).expect("string details");
        assert_eq!(d["reason"], reason);
        assert_eq!(d["version"], "1.0.0");
    }
}

// ------------------------------------------------------------------ determinism --------------

/// The outcome of each of 24 jobs in a row on one device; each job targets the version the
/// device does not run. `spacing_s` apart; `drops`: the link drops 40 s into each job.
fn outcome_sequence(seed: u64, device: u32, spacing_s: f64, drops: bool) -> Vec<Outcome> {
    let setup = Setup {
        line_faults: "download_stall = 0.3\nstall_s = 5\nreboot_mid_download = 0.3\ncorrupt_image = 0.15\ninstall_failure = 0.15\nboot_loop = 0.15\ntrial_failure = 0.15\nlost_report = 0.2",
        ota: "allow_downgrade = true",
        seed,
        ..Setup::default()
    };
    let mut sim = Sim::device(&setup, device);
    let mut t = 5.0;
    for k in 0..24 {
        sim.run_until(at(t));
        let target = if sim.version() == "2.0.0" {
            "1.1.0"
        } else {
            "2.0.0"
        };
        let body = format!(r#"{{"job_id":"j{k}","version":"{target}"}}"#);
        let topic = sim.job_topic();
        sim.message(at(t), &topic, &body);
        if drops {
            sim.run_until(at(t + 40.0));
            sim.feed(at(t + 40.0), Input::LinkLost);
        }
        t += spacing_s;
    }
    sim.run_until(at(t));
    let outcomes = sim.outcomes();
    assert_eq!(outcomes.len(), 24, "every job ended: {outcomes:?}");
    outcomes
}

#[test]
fn the_same_seed_gives_the_same_outcomes_and_other_devices_draw_other_faults() {
    let a = outcome_sequence(5, 0, 300.0, false);
    assert_eq!(
        a,
        outcome_sequence(5, 0, 300.0, false),
        "same seed, same device"
    );
    let kinds: std::collections::BTreeSet<String> = a.iter().map(|o| format!("{o:?}")).collect();
    assert!(kinds.len() >= 3, "the faults show: {a:?}");
    assert_ne!(a, outcome_sequence(5, 1, 300.0, false), "another device");
    assert_ne!(a, outcome_sequence(6, 0, 300.0, false), "another seed");
}

#[test]
fn a_jobs_fate_does_not_depend_on_when_it_arrives_or_on_link_drops() {
    assert_eq!(
        outcome_sequence(9, 0, 300.0, false),
        outcome_sequence(9, 0, 420.0, true)
    );
}

// ------------------------------------------------------------------ properties --------------

/// The OTA deadline the device holds (`Device::ota_deadline`); None without a pending one.
fn ota_deadline(dev: &Device) -> Option<SimTime> {
    Some(dev.ota_deadline()).filter(|t| !t.is_never())
}

#[test]
fn the_ota_deadline_is_the_next_progress_step_while_downloading() {
    let mut sim = Sim::new(&Setup::default());
    sim.play(&[(5.0, Act::Job(JOB))], 10.0);
    // Downloading: the next progress step is 25 % of 100 s after 5 s.
    let due = ota_deadline(&sim.dev).expect("a job");
    assert!((due.as_secs_f64() - 30.0).abs() < 0.001, "{due:?}");
    sim.run_until(at(400.0));
    assert_eq!(ota_deadline(&sim.dev), None, "the job is gone");
}

#[derive(Clone, Debug)]
enum Step {
    Wake,
    Connected,
    ConnectFailed,
    LinkLost,
    Outage(u8),
    Reboot(u8),
    /// A generic job with a fresh id; version index 3 is not in the model.
    Job {
        version: u8,
        url: bool,
    },
    /// The latest generic job again (same id).
    RepeatJob,
    /// A generic cancel of the latest job.
    Cancel,
    Rollout {
        rollout: u8,
        version: u8,
    },
    CancelRollout(u8),
    Progress {
        bytes: u32,
        total: Option<u32>,
    },
    Done {
        bytes: u32,
        good: bool,
    },
    Failed {
        bytes: u32,
        retryable: bool,
    },
    /// AWS IoT Jobs replies (aws_jobs devices only).
    Aws {
        kind: u8,
        version: u8,
        number: u8,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => Just(Step::Wake),
        2 => Just(Step::Connected),
        1 => Just(Step::ConnectFailed),
        1 => Just(Step::LinkLost),
        1 => (1u8..120).prop_map(Step::Outage),
        1 => (0u8..30).prop_map(Step::Reboot),
        3 => (0u8..4, any::<bool>()).prop_map(|(version, url)| Step::Job { version, url }),
        1 => Just(Step::RepeatJob),
        1 => Just(Step::Cancel),
        2 => (0u8..3, 0u8..4).prop_map(|(rollout, version)| Step::Rollout { rollout, version }),
        1 => (0u8..3).prop_map(Step::CancelRollout),
        1 => (0u32..6000, prop::option::of(1u32..6000)).prop_map(|(bytes, total)| Step::Progress { bytes, total }),
        1 => (0u32..6000, any::<bool>()).prop_map(|(bytes, good)| Step::Done { bytes, good }),
        1 => (0u32..6000, any::<bool>()).prop_map(|(bytes, retryable)| Step::Failed { bytes, retryable }),
        3 => (0u8..10, 0u8..4, 0u8..12).prop_map(|(kind, version, number)| Step::Aws { kind, version, number }),
    ]
}

const VERSIONS: [&str; 4] = ["1.0.0", "1.1.0", "2.0.0", "9.9.9"];

const FAULT_PRESETS: [&str; 4] = [
    "",
    "download_stall = 0.5\nstall_s = 40\nreboot_mid_download = 0.5",
    "corrupt_image = 0.3\ninstall_failure = 0.3\nboot_failure = 0.3\nboot_loop = 0.2\ntrial_failure = 0.3\nlost_report = 0.3",
    "never_returns = 0.3\nboot_loop = 0.3\nlost_report = 0.5\ndownload_stall = 0.3\nstall_s = 100",
];

/// One AWS reply about the latest job (or a new one).
fn aws_message(kind: u8, version: u8, number: u8, job: &str) -> (String, String) {
    let v = VERSIONS[usize::from(version)];
    let n = u64::from(number);
    let exec = |doc: Value| json!({"jobId": job, "status": "IN_PROGRESS", "versionNumber": n, "executionNumber": 1, "jobDocument": doc});
    let (tail, body) = match kind {
        0 => (
            "start-next/accepted".to_string(),
            json!({"execution": exec(json!({"operation": "firmware_update", "version": v})), "timestamp": 1}),
        ),
        1 => (
            "start-next/accepted".to_string(),
            json!({"execution": exec(json!({"operation": "reboot"})), "timestamp": 1}),
        ),
        2 => (
            format!("{job}/update/accepted"),
            json!({"executionState": {"status": "IN_PROGRESS", "versionNumber": n}, "timestamp": 1}),
        ),
        3 => (
            format!("{job}/update/rejected"),
            json!({"code": "VersionMismatch", "message": "m", "executionState": {"status": "IN_PROGRESS", "versionNumber": n}}),
        ),
        4 => (
            format!("{job}/update/rejected"),
            json!({"code": "VersionMismatch", "message": "m"}),
        ),
        5 => (
            format!("{job}/update/rejected"),
            json!({"code": "InvalidStateTransition", "message": "m"}),
        ),
        6 => (
            format!("{job}/get/accepted"),
            json!({"execution": {"jobId": job, "status": "IN_PROGRESS", "versionNumber": n}}),
        ),
        7 => (
            "notify-next".to_string(),
            json!({"execution": exec(json!({"version": v})), "timestamp": 1}),
        ),
        8 => (
            "start-next/rejected".to_string(),
            json!({"code": "InvalidRequest", "message": "m"}),
        ),
        _ => ("notify-next".to_string(), json!("not an object")),
    };
    (format!("$aws/things/d-0/jobs/{tail}"), body.to_string())
}

#[derive(Default)]
struct Tally {
    /// Generic job id -> deliveries.
    delivered: BTreeMap<String, usize>,
    /// Rollout -> deliveries.
    rollouts: BTreeMap<u16, usize>,
    next_id: u32,
    aws_jobs: u32,
}

/// Applies one step at `now_ms` (moved on to the device's deadline for a Wake).
fn apply(sim: &mut Sim, now_ms: &mut u64, step: &Step, aws: bool, tally: &mut Tally) {
    let wake = sim.dev.wake_at();
    if let Step::Wake = step {
        if wake.is_never() {
            return;
        }
        // As in the engine, a deadline runs when it is due or later.
        *now_ms = (*now_ms).max(wake.as_micros().div_ceil(1000));
    }
    let t = SimTime(*now_ms * 1000);
    let online = sim.dev.state() == DeviceState::Online;
    let latest = format!("g{}", tally.next_id.saturating_sub(1));
    match step {
        Step::Wake => sim.feed(t, Input::Wake),
        Step::Connected => sim.feed(t, Input::Connected),
        Step::ConnectFailed => sim.feed(t, Input::ConnectFailed),
        Step::LinkLost => sim.feed(t, Input::LinkLost),
        Step::Outage(s) => sim.feed(
            t,
            Input::Outage {
                until: t + SimDuration::from_secs(u64::from(*s)),
            },
        ),
        Step::Reboot(s) => sim.feed(
            t,
            Input::Reboot {
                at: t + SimDuration::from_secs(u64::from(*s)),
            },
        ),
        Step::Job { version, url } if !aws && online => {
            let id = format!("g{}", tally.next_id);
            tally.next_id += 1;
            let mut doc = json!({"job_id": id, "version": VERSIONS[usize::from(*version)]});
            if *url {
                doc["url"] = json!("http://fw.example/image.bin");
                doc["size"] = json!(4096);
                doc["sha256"] = json!("ab12");
            }
            *tally.delivered.entry(id).or_default() += 1;
            let topic = sim.job_topic();
            sim.message(t, &topic, &doc.to_string());
        }
        Step::RepeatJob if !aws && online && tally.next_id > 0 => {
            // Re-sent the same way: the stored document of that id is not kept, so send the
            // version the device would run to (any version will do for the id check).
            *tally.delivered.entry(latest.clone()).or_default() += 1;
            let topic = sim.job_topic();
            let body = json!({"job_id": latest, "version": "2.0.0"}).to_string();
            sim.message(t, &topic, &body);
        }
        Step::Cancel if !aws && online => {
            let topic = sim.job_topic();
            let body = json!({"job_id": latest, "cancel": true}).to_string();
            sim.message(t, &topic, &body);
        }
        Step::Rollout { rollout, version } => {
            let r = u16::from(*rollout);
            *tally.rollouts.entry(r).or_default() += 1;
            let doc = JobDoc {
                job_id: format!("rollout-{r}"),
                version: VERSIONS[usize::from(*version)].to_string(),
                url: None,
                size: None,
                sha256: None,
            };
            let source = JobSource::Rollout(r);
            sim.feed(
                t,
                Input::Ota(OtaInput::Job {
                    doc: &std::sync::Arc::new(doc),
                    source,
                }),
            );
        }
        Step::CancelRollout(r) => sim.feed(
            t,
            Input::Ota(OtaInput::Cancel {
                rollout: u16::from(*r),
            }),
        ),
        Step::Progress { bytes, total } => sim.feed(
            t,
            Input::Ota(OtaInput::DownloadProgress {
                bytes: u64::from(*bytes),
                total: total.map(u64::from),
            }),
        ),
        Step::Done { bytes, good } => {
            let sha256 = if *good { "ab12" } else { "0000" };
            sim.feed(
                t,
                Input::Ota(OtaInput::DownloadDone {
                    bytes: u64::from(*bytes),
                    sha256,
                }),
            );
        }
        Step::Failed { bytes, retryable } => sim.feed(
            t,
            Input::Ota(OtaInput::DownloadFailed {
                bytes: u64::from(*bytes),
                retryable: *retryable,
                reason: "connection reset",
            }),
        ),
        Step::Aws {
            kind,
            version,
            number,
        } if aws && online => {
            if matches!(kind, 0 | 1) {
                tally.aws_jobs += 1;
            }
            let job = format!("a{}", tally.aws_jobs);
            let (topic, body) = aws_message(*kind, *version, *number, &job);
            sim.message(t, &topic, &body);
        }
        _ => {}
    }
}

/// The invariants that hold after every step.
/// What the device looked like before a step.
struct Before {
    dead: bool,
    wake: SimTime,
    events: usize,
    effects: usize,
    ota: usize,
}

impl Before {
    fn of(sim: &Sim) -> Before {
        Before {
            dead: sim.dev.state() == DeviceState::Dead,
            wake: sim.dev.wake_at(),
            events: sim.log.len(),
            effects: sim.effects.len(),
            ota: sim.ota.len(),
        }
    }
}

fn check_invariants(
    sim: &Sim,
    before: &Before,
    tally: &Tally,
    aws: bool,
) -> Result<(), TestCaseError> {
    let versions = sim.fleet.cohorts[0].firmware.versions.len();
    prop_assert!(
        usize::from(sim.dev.running_version()) < versions,
        "running version index {}",
        sim.dev.running_version()
    );
    prop_assert!(matches!(sim.dev.active_slot(), "A" | "B"));
    let stage = sim.dev.ota_stage();
    if stage == OtaStage::Idle {
        let due = ota_deadline(&sim.dev);
        prop_assert!(
            due.is_none_or(SimTime::is_never),
            "idle with an OTA deadline at {due:?}"
        );
    }
    if stage == OtaStage::Bricked {
        prop_assert_eq!(sim.dev.state(), DeviceState::Dead);
    }
    if before.dead {
        prop_assert_eq!(
            sim.dev.state(),
            DeviceState::Dead,
            "a dead device came back"
        );
        prop_assert_eq!(sim.log.len(), before.events, "a dead device made events");
        prop_assert_eq!(
            sim.effects.len() + sim.ota.len(),
            before.effects + before.ota,
            "a dead device acted"
        );
    }
    // No new deadline in the past (an input may arrive while an earlier one is overdue).
    let wake = sim.dev.wake_at();
    prop_assert!(
        wake >= sim.now.min(before.wake),
        "wake_at {wake:?} is before now {:?}",
        sim.now
    );
    if sim.dev.state() == DeviceState::Dead {
        prop_assert!(wake.is_never());
    }
    for s in &sim.ota[before.ota..] {
        if let Some(p) = s.body["progress"].as_u64().or_else(|| {
            s.body["statusDetails"]["progress"]
                .as_str()
                .and_then(|p| p.parse().ok())
        }) {
            prop_assert!(p <= 100, "progress {p}");
        }
    }
    if !aws {
        // Each delivery of a job gets at most one terminal report.
        let mut reports: BTreeMap<String, usize> = BTreeMap::new();
        for (id, status, _) in sim.terminal() {
            if status != "CANCELED" {
                *reports.entry(id).or_default() += 1;
            }
        }
        for (id, n) in &reports {
            let delivered = match id.strip_prefix("rollout-") {
                Some(r) => r
                    .parse()
                    .ok()
                    .and_then(|r: u16| tally.rollouts.get(&r))
                    .copied()
                    .unwrap_or(0),
                None => tally.delivered.get(id).copied().unwrap_or(0),
            };
            prop_assert!(
                *n <= delivered,
                "job {id}: {n} terminal reports for {delivered} deliveries"
            );
        }
        for (r, delivered) in &tally.rollouts {
            let told = sim.count(|e| matches!(e, Event::OtaReported { rollout, outcome: Some(_), .. } if rollout == r));
            prop_assert!(
                told <= *delivered,
                "rollout {r}: {told} final reports for {delivered} deliveries"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever happens to a device during updates, nothing panics and after every step: it
    /// runs a version of its model from slot A or B, an idle cycle holds no deadline, a dead
    /// device stays dead and silent, it never asks to wake in the past, and no delivery of a
    /// job is reported twice.
    #[test]
    fn the_update_cycle_keeps_its_invariants_under_any_inputs(
        seed in any::<u64>(),
        preset in 0usize..4,
        resume in any::<bool>(),
        real_network in any::<bool>(),
        aws in any::<bool>(),
        step_percent in prop::sample::select(vec![1u8, 25, 30]),
        steps in prop::collection::vec((1u32..30_000, step()), 1..150),
    ) {
        let ota: &'static str = Box::leak(format!(
            "protocol = \"{}\"\nresume = {resume}\nprogress_step_percent = {step_percent}\nallow_downgrade = {}",
            if aws { "aws_jobs" } else { "generic" },
            seed % 2 == 0,
        ).into_boxed_str());
        let setup = Setup {
            line_faults: FAULT_PRESETS[preset],
            ota,
            seed,
            real_network,
            ..Setup::default()
        };
        let mut sim = Sim::new(&setup);
        // Connects are answered only by `Step::Connected`.
        sim.broker_up = false;
        let mut tally = Tally::default();
        let mut now_ms = 0u64;
        for (dt_ms, s) in &steps {
            now_ms += u64::from(*dt_ms);
            let before = Before::of(&sim);
            apply(&mut sim, &mut now_ms, s, aws, &mut tally);
            check_invariants(&sim, &before, &tally, aws)?;
        }
    }
}

// ------------------------------------------------------------------ invalid files -----------

/// The problems validation finds in `tests/fixtures/invalid/<name>` (the message checks of
/// every fixture are in shipped_files.rs; here the parts of the OTA ones are checked apart).
fn fixture_errors(name: &str) -> Vec<ConfigError> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/invalid")
        .join(name);
    match validate_file(&FsSource, &path) {
        Ok(kind) => panic!("{name} validated as a {kind:?}"),
        Err(errors) => errors.0,
    }
}

/// Checks that the one problem of a fixture names its file, the key, the value (as the
/// error's value, or in the message for serde errors) and what was expected.
fn names_everything(name: &str, key: &str, value: &str, expected: &str) -> Result<(), String> {
    let errors = fixture_errors(name);
    let [e] = &errors[..] else {
        return Err(format!("{name}: {} problems: {errors:?}", errors.len()));
    };
    let value_named = e.value.as_deref() == Some(value)
        || e.value.as_deref().is_some_and(|v| v.contains(value))
        || e.message.contains(value);
    ensure(
        e.file.ends_with(name) && e.key == key && value_named && e.message.contains(expected),
        || format!("{name}: {e:?} (wanted key {key}, value {value}, expectation {expected:?})"),
    )
}

#[test]
fn the_ota_fixtures_name_the_file_the_key_the_value_and_the_expectation() {
    let cases = [
        (
            "firmware-ota-boot-loop-over-one.toml",
            "ota.faults.boot_loop",
            "1.5",
            "probability in [0, 1]",
        ),
        (
            "firmware-ota-zero-boot-attempts.toml",
            "ota.max_boot_attempts",
            "0",
            "between 1 and 16",
        ),
        (
            "firmware-version-fault-negative.toml",
            "versions[1].faults.corrupt_image",
            "-0.1",
            "probability in [0, 1]",
        ),
        (
            "ota-progress-step-zero.toml",
            "ota.progress_step_percent",
            "0",
            "between 1 and 100",
        ),
        (
            "ota-unknown-protocol.toml",
            "ota.protocol",
            "mqtt5",
            "expected `generic` or `aws_jobs`",
        ),
        (
            "rollout-target-not-in-model.toml",
            "rollouts[0].target_version",
            "\"2.0.0\"",
            "is not a version of firmware model minimal-fw",
        ),
        (
            "rollout-waves-not-increasing.toml",
            "rollouts[0].waves",
            "[50.0, 10.0]",
            "must be increasing",
        ),
        (
            "rollout-abort-unknown-failure-type.toml",
            "rollouts[0].abort.failure_types[0]",
            "\"lost\"",
            "must be failed, rejected or timed_out",
        ),
    ];
    let problems: Vec<String> = cases
        .iter()
        .filter_map(|(f, k, v, x)| names_everything(f, k, v, x).err())
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ------------------------------------------------------------------ found by these tests -----

/// A rollout's job that reaches a device busy with another job waits behind it (as AWS IoT
/// queues executions) instead of being rejected while the device has no session.
#[test]
fn a_rollout_job_that_arrives_while_another_runs_waits_behind_it() {
    let mut sim = Sim::new(&Setup::default());
    sim.play(
        &[
            (5.0, Act::Job(JOB)),
            (20.0, Act::Outage(10.0)),
            (22.0, rollout(0, "2.0.0")),
        ],
        400.0,
    );
    let offline: Vec<String> = sim
        .ota
        .iter()
        .filter(|s| !s.on_session)
        .map(|s| format!("{} s: {}", s.at.as_secs_f64(), s.body))
        .collect();
    assert!(
        offline.is_empty(),
        "published without a session: {offline:?}"
    );
    let told = sim.first_time(|e| {
        matches!(
            e,
            Event::OtaReported {
                rollout: 0,
                outcome: Some(_),
                ..
            }
        )
    });
    let back = sim
        .log
        .iter()
        .find(|(t, e)| *e == Event::Connected && *t > at(22.0))
        .map(|(t, _)| t.as_secs_f64());
    assert!(
        told >= back,
        "rollout 0 told at {told:?} s, the device was back at {back:?} s"
    );
    assert_eq!(
        sim.terminal(),
        [
            (
                "j1".to_string(),
                "SUCCEEDED".to_string(),
                "committed".to_string()
            ),
            (
                "rollout-0".to_string(),
                "SUCCEEDED".to_string(),
                "committed".to_string()
            ),
        ],
        "the rollout's job ran after j1 (and found 2.0.0 already there)"
    );
}

/// AWS IoT Jobs: the acceptance of the final update is lost and the link drops; the device
/// re-sends it, the service answers InvalidStateTransition (already SUCCEEDED): the job is done
/// and the device asks for the next one.
#[test]
fn aws_a_lost_acceptance_of_the_terminal_update_does_not_stall_the_next_job() {
    let mut sim = Sim::new(&aws_setup()).with_jobs();
    sim.play(
        &[
            (0.0, Act::AwsQueue("j1", AWS_DOC)),
            (
                0.0,
                Act::AwsQueue("j2", r#"{"operation":"firmware_update","version":"1.1.0"}"#),
            ),
            // j1 commits at 148 s: its SUCCEEDED is accepted, the reply (and the notify-next
            // naming j2) are lost; the link drops before the device hears anything.
            (140.0, Act::AwsMute(true)),
            (150.0, Act::LinkLost),
            (150.0, Act::AwsMute(false)),
        ],
        800.0,
    );
    let requests: Vec<String> = sim.aws_requests().into_iter().map(|(t, _)| t).collect();
    assert!(
        requests.iter().any(|t| t == "j2/update"),
        "j2 never started; the device asked: {requests:?}"
    );
    // j2 ran: it asks for 1.1.0 on a device now on 2.0.0, a downgrade.
    assert_eq!(
        sim.outcomes(),
        [
            Outcome::Succeeded,
            Outcome::Rejected(fleet_core::ota::RejectReason::Downgrade)
        ]
    );
}

/// Two messages that first lacked the value.
#[test]
fn the_ota_fixtures_without_a_value_in_their_message() {
    let problems: Vec<String> = [
        (
            "cohort-ota-protocol-without-ota.toml",
            "cohorts[0].ota_protocol",
            "\"aws_jobs\"",
            "has no [ota] table",
        ),
        (
            "rollout-waves-and-rate.toml",
            "rollouts[0].rate",
            "[rate]",
            "not both",
        ),
    ]
    .iter()
    .filter_map(|(f, k, v, x)| names_everything(f, k, v, x).err())
    .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
