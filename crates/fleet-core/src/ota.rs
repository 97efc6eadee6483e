//! Firmware updates, the device's side: stages of the A/B cycle, how a job ended, the job
//! messages a device understands (AWS IoT Jobs and the generic JSON protocol, docs/ota.md) and
//! the status reports it sends. The cycle itself runs in `device.rs`; this file holds the data
//! and the wire formats, with no state of its own.

use serde::Deserialize;
use serde_json::Value;

use crate::payload::{push_json_str, push_u64};

/// Where a device is in an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OtaStage {
    /// No job.
    Idle,
    /// A job is known but the device is not connected: it starts when it is.
    Queued,
    Downloading,
    Verifying,
    Installing,
    /// Rebooting into the new image (and retrying boots of it).
    Rebooting,
    /// The new image runs; it is committed when the trial ends healthy.
    Trial,
    /// The device never came back after rebooting into the new image.
    Bricked,
}

impl OtaStage {
    pub const ALL: [OtaStage; 8] = [
        OtaStage::Idle,
        OtaStage::Queued,
        OtaStage::Downloading,
        OtaStage::Verifying,
        OtaStage::Installing,
        OtaStage::Rebooting,
        OtaStage::Trial,
        OtaStage::Bricked,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            OtaStage::Idle => "idle",
            OtaStage::Queued => "queued",
            OtaStage::Downloading => "downloading",
            OtaStage::Verifying => "verifying",
            OtaStage::Installing => "installing",
            OtaStage::Rebooting => "rebooting",
            OtaStage::Trial => "trial",
            OtaStage::Bricked => "bricked",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The stage a failed update failed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailStage {
    /// Stalled or failed downloads, more than the firmware's attempts.
    Download,
    /// The image did not verify (hash or size mismatch).
    Verify,
    /// Power lost while writing the image.
    Install,
    /// The new image did not boot: rolled back after the boot attempts.
    Boot,
    /// The new image booted but its health check failed: rolled back.
    Trial,
}

impl FailStage {
    pub const ALL: [FailStage; 5] = [
        FailStage::Download,
        FailStage::Verify,
        FailStage::Install,
        FailStage::Boot,
        FailStage::Trial,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            FailStage::Download => "download",
            FailStage::Verify => "verify",
            FailStage::Install => "install",
            FailStage::Boot => "boot",
            FailStage::Trial => "trial",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
    /// The stage name in status reports.
    pub fn report_stage(self) -> &'static str {
        match self {
            FailStage::Download => "downloading",
            FailStage::Verify => "verifying",
            FailStage::Install => "installing",
            FailStage::Boot | FailStage::Trial => "rolled_back",
        }
    }
    /// Whether the device went back to its old slot after a reboot.
    pub fn rolled_back(self) -> bool {
        matches!(self, FailStage::Boot | FailStage::Trial)
    }
}

/// Why a job was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    UnknownVersion,
    Downgrade,
    LowBattery,
    NoUrl,
    BadDocument,
    Busy,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::UnknownVersion => "unknown_version",
            RejectReason::Downgrade => "downgrade",
            RejectReason::LowBattery => "low_battery",
            RejectReason::NoUrl => "no_url",
            RejectReason::BadDocument => "bad_document",
            RejectReason::Busy => "busy",
        }
    }
}

/// How a job ended, as the device knows it (the truth fleetsim injected).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Succeeded,
    Failed(FailStage),
    Rejected(RejectReason),
    /// Never came back: no report will ever come.
    Bricked,
}

impl Outcome {
    /// The job status a backend is told (AWS IoT Jobs vocabulary).
    pub fn status(self) -> &'static str {
        match self {
            Outcome::Succeeded => "SUCCEEDED",
            Outcome::Failed(_) | Outcome::Bricked => "FAILED",
            Outcome::Rejected(_) => "REJECTED",
        }
    }
}

/// Who gave the device its job: decides where and how it reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobSource {
    /// A rollout fleetsim runs itself (the scenario's `[[rollouts]]`, index).
    Rollout(u16),
    /// The generic JSON protocol.
    Generic,
    /// AWS IoT Jobs.
    Aws,
}

impl JobSource {
    pub fn rollout(self) -> Option<u16> {
        match self {
            JobSource::Rollout(r) => Some(r),
            _ => None,
        }
    }
}

/// What a job asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct JobDoc {
    pub job_id: String,
    pub version: String,
    pub url: Option<String>,
    pub size: Option<u64>,
    pub sha256: Option<String>,
}

/// Longest job id a device keeps (AWS allows 64 characters).
pub const MAX_JOB_ID: usize = 64;

fn truncated(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// A message of the generic protocol on the job topic.
#[derive(Clone, Debug, PartialEq)]
pub enum GenericMsg {
    Job(JobDoc),
    Cancel { job_id: String },
}

#[derive(Deserialize)]
struct GenericWire {
    job_id: Option<Value>,
    version: Option<String>,
    url: Option<String>,
    size: Option<u64>,
    sha256: Option<String>,
    #[serde(default)]
    cancel: bool,
}

fn id_string(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Parses a job topic message: `{"job_id": "j-1", "version": "2.1.0", "url"?, "size"?,
/// "sha256"?}` or `{"job_id": "j-1", "cancel": true}`. The error says what is wrong; the
/// device answers it with a REJECTED status carrying the job id when there is one.
pub fn parse_generic(payload: &[u8]) -> Result<GenericMsg, (Option<String>, String)> {
    let w: GenericWire = serde_json::from_slice(payload)
        .map_err(|e| (None, format!("not a JSON job object: {e}")))?;
    let job_id = w.job_id.map(|v| truncated(id_string(v), MAX_JOB_ID));
    let Some(job_id) = job_id.filter(|j| !j.is_empty()) else {
        return Err((None, "missing \"job_id\"".into()));
    };
    if w.cancel {
        return Ok(GenericMsg::Cancel { job_id });
    }
    let Some(version) = w.version else {
        return Err((Some(job_id), "missing \"version\"".into()));
    };
    Ok(GenericMsg::Job(JobDoc {
        job_id,
        version,
        url: w.url,
        size: w.size,
        sha256: w.sha256.map(|s| s.to_ascii_lowercase()),
    }))
}

/// The reply topics of AWS IoT Jobs a device subscribes to, classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AwsTopic {
    NotifyNext,
    StartNextAccepted,
    StartNextRejected,
    UpdateAccepted,
    UpdateRejected,
    GetAccepted,
    GetRejected,
}

/// The first level of AWS IoT's reserved topics (`[ota] aws_topic_prefix` may change it, for
/// brokers that refuse `$` topics or bridges that map them).
pub const AWS_TOPIC_PREFIX: &str = "$aws";

/// `{prefix}/things/{thing}/jobs/...`: which reply, and the job id in the topic (if any).
pub fn classify_aws_topic<'t>(prefix: &str, topic: &'t [u8]) -> Option<(AwsTopic, &'t str)> {
    let topic = std::str::from_utf8(topic).ok()?;
    let rest = topic.strip_prefix(prefix)?.strip_prefix("/things/")?;
    let (_thing, rest) = rest.split_once("/jobs/")?;
    Some(match rest {
        "notify-next" => (AwsTopic::NotifyNext, ""),
        "start-next/accepted" => (AwsTopic::StartNextAccepted, ""),
        "start-next/rejected" => (AwsTopic::StartNextRejected, ""),
        _ => {
            let (job, tail) = rest.split_once('/')?;
            let kind = match tail {
                "update/accepted" => AwsTopic::UpdateAccepted,
                "update/rejected" => AwsTopic::UpdateRejected,
                "get/accepted" => AwsTopic::GetAccepted,
                "get/rejected" => AwsTopic::GetRejected,
                _ => return None,
            };
            (kind, job)
        }
    })
}

/// What a device takes from an AWS IoT Jobs reply.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AwsReply {
    /// `execution` (notify-next, start-next/accepted, get/accepted), if present.
    pub job_id: Option<String>,
    pub status: Option<String>,
    pub document: Option<Result<JobDoc, String>>,
    /// `execution.versionNumber` or `executionState.versionNumber`.
    pub version_number: Option<u64>,
    /// `code` of a rejection.
    pub code: Option<String>,
    pub message: Option<String>,
    pub client_token: Option<String>,
}

/// Parses the JSON of an AWS IoT Jobs reply. Only what a device needs is read; anything else
/// is ignored (AWS adds fields).
pub fn parse_aws_reply(payload: &[u8]) -> Result<AwsReply, String> {
    let v: Value =
        serde_json::from_slice(payload).map_err(|e| format!("not a JSON object: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let mut r = AwsReply {
        code: obj.get("code").and_then(Value::as_str).map(String::from),
        message: obj.get("message").and_then(Value::as_str).map(String::from),
        client_token: obj
            .get("clientToken")
            .and_then(Value::as_str)
            .map(String::from),
        ..AwsReply::default()
    };
    if let Some(state) = obj.get("executionState").and_then(Value::as_object) {
        r.version_number = state.get("versionNumber").and_then(Value::as_u64);
        r.status = state
            .get("status")
            .and_then(Value::as_str)
            .map(String::from);
    }
    if let Some(ex) = obj.get("execution").and_then(Value::as_object) {
        let job_id = ex
            .get("jobId")
            .and_then(Value::as_str)
            .map(|s| truncated(s.to_string(), MAX_JOB_ID));
        r.status = ex.get("status").and_then(Value::as_str).map(String::from);
        if let Some(n) = ex.get("versionNumber").and_then(Value::as_u64) {
            r.version_number = Some(n);
        }
        if let (Some(id), Some(doc)) = (&job_id, ex.get("jobDocument")) {
            r.document = Some(parse_aws_document(id, doc));
        }
        r.job_id = job_id;
    }
    Ok(r)
}

/// `{"operation": "firmware_update", "version": "2.1.0", "url"?, "size"?, "sha256"?}`.
fn parse_aws_document(job_id: &str, doc: &Value) -> Result<JobDoc, String> {
    let obj = doc.as_object().ok_or("jobDocument is not a JSON object")?;
    match obj.get("operation").and_then(Value::as_str) {
        Some("firmware_update") | None => {}
        Some(other) => return Err(format!("unknown operation {other:?}")),
    }
    let version = obj
        .get("version")
        .and_then(Value::as_str)
        .ok_or("jobDocument has no \"version\"")?;
    Ok(JobDoc {
        job_id: job_id.to_string(),
        version: version.to_string(),
        url: obj.get("url").and_then(Value::as_str).map(String::from),
        size: obj.get("size").and_then(Value::as_u64),
        sha256: obj
            .get("sha256")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase),
    })
}

/// A status report: what the device says about its job.
#[derive(Clone, Copy, Debug)]
pub struct StatusReport<'a> {
    pub device_id: &'a [u8],
    pub job_id: &'a str,
    /// IN_PROGRESS, SUCCEEDED, FAILED, REJECTED.
    pub status: &'static str,
    pub stage: &'static str,
    pub progress: Option<u8>,
    pub version: &'a str,
    pub target: &'a str,
    pub slot: &'static str,
    pub reason: Option<&'a str>,
    pub ts_ms: u64,
}

/// `"stage":…,"progress":…,"version":…,"target":…,"slot":…[,"reason":…]`: the report's details,
/// the same in both protocols; AWS wants every value a string (`progress_as_string`).
fn push_details(r: &StatusReport, progress_as_string: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"\"stage\":\"");
    out.extend_from_slice(r.stage.as_bytes());
    out.push(b'"');
    if let Some(p) = r.progress {
        out.extend_from_slice(b",\"progress\":");
        if progress_as_string {
            out.push(b'"');
        }
        push_u64(out, u64::from(p));
        if progress_as_string {
            out.push(b'"');
        }
    }
    out.extend_from_slice(b",\"version\":");
    push_json_str(out, r.version.as_bytes());
    out.extend_from_slice(b",\"target\":");
    push_json_str(out, r.target.as_bytes());
    out.extend_from_slice(b",\"slot\":\"");
    out.extend_from_slice(r.slot.as_bytes());
    out.push(b'"');
    if let Some(reason) = r.reason {
        out.extend_from_slice(b",\"reason\":");
        push_json_str(out, reason.as_bytes());
    }
}

/// The generic protocol's status message.
pub fn encode_generic_status(r: &StatusReport, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"device_id\":");
    push_json_str(out, r.device_id);
    out.extend_from_slice(b",\"job_id\":");
    push_json_str(out, r.job_id.as_bytes());
    out.extend_from_slice(b",\"status\":\"");
    out.extend_from_slice(r.status.as_bytes());
    out.extend_from_slice(b"\",");
    push_details(r, false, out);
    out.extend_from_slice(b",\"ts\":");
    push_u64(out, r.ts_ms);
    out.push(b'}');
}

/// The body of `$aws/things/{thing}/jobs/{jobId}/update` (statusDetails values are strings,
/// as AWS requires).
pub fn encode_aws_update(
    r: &StatusReport,
    expected_version: Option<u64>,
    client_token: &[u8],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"{\"status\":\"");
    out.extend_from_slice(r.status.as_bytes());
    out.extend_from_slice(b"\",\"statusDetails\":{");
    push_details(r, true, out);
    out.push(b'}');
    if let Some(v) = expected_version {
        out.extend_from_slice(b",\"expectedVersion\":");
        push_u64(out, v);
    }
    out.extend_from_slice(b",\"includeJobExecutionState\":true,\"clientToken\":");
    push_json_str(out, client_token);
    out.push(b'}');
}

/// The body of `start-next` (and of `{jobId}/get`): a client token.
pub fn encode_aws_request(client_token: &[u8], get: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"clientToken\":");
    push_json_str(out, client_token);
    if get {
        out.extend_from_slice(b",\"includeJobDocument\":false");
    }
    out.push(b'}');
}

/// `{prefix}/things/{thing}/jobs/` + `suffix` (a job id and a verb, or `start-next`).
pub fn push_aws_topic(
    prefix: &str,
    thing: &[u8],
    job: Option<&str>,
    verb: &str,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(b"/things/");
    out.extend_from_slice(thing);
    out.extend_from_slice(b"/jobs/");
    if let Some(j) = job {
        out.extend_from_slice(j.as_bytes());
        out.push(b'/');
    }
    out.extend_from_slice(verb.as_bytes());
}

/// The topic filters an AWS IoT Jobs device subscribes to.
pub fn aws_filters(prefix: &str, thing: &[u8]) -> [Vec<u8>; 4] {
    let f = |tail: &str| {
        let mut v = Vec::with_capacity(thing.len() + 40);
        push_aws_topic(prefix, thing, None, tail, &mut v);
        v
    };
    [
        f("notify-next"),
        f("start-next/+"),
        f("+/update/+"),
        f("+/get/+"),
    ]
}

/// A human reason for a failure or rejection.
pub fn reason_text(outcome: Outcome, max_boot_attempts: u8) -> String {
    match outcome {
        Outcome::Succeeded => String::new(),
        Outcome::Failed(FailStage::Download) => {
            "download failed: no progress after the firmware's download attempts".into()
        }
        Outcome::Failed(FailStage::Verify) => {
            "image verification failed (size or sha256 mismatch)".into()
        }
        Outcome::Failed(FailStage::Install) => {
            "install interrupted (power loss): still on the old slot".into()
        }
        Outcome::Failed(FailStage::Boot) => {
            format!("new image did not boot: rolled back after {max_boot_attempts} boot attempts")
        }
        Outcome::Failed(FailStage::Trial) => {
            "health check failed during the trial boot: rolled back".into()
        }
        Outcome::Bricked => "device did not come back".into(),
        Outcome::Rejected(r) => match r {
            RejectReason::UnknownVersion => "unknown firmware version".into(),
            RejectReason::Downgrade => "downgrade not allowed".into(),
            RejectReason::LowBattery => "battery too low for an update".into(),
            RejectReason::NoUrl => "the job document has no url (download = \"http\")".into(),
            RejectReason::BadDocument => "malformed job document".into(),
            RejectReason::Busy => "another update is in progress".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_jobs_and_cancels_parse_and_bad_ones_say_why() {
        let m = parse_generic(br#"{"job_id":"j-1","version":"2.1.0","size":1024,"sha256":"AB"}"#);
        assert_eq!(
            m,
            Ok(GenericMsg::Job(JobDoc {
                job_id: "j-1".into(),
                version: "2.1.0".into(),
                url: None,
                size: Some(1024),
                sha256: Some("ab".into()),
            }))
        );
        assert_eq!(
            parse_generic(br#"{"job_id":7,"cancel":true}"#),
            Ok(GenericMsg::Cancel { job_id: "7".into() })
        );
        assert_eq!(
            parse_generic(br#"{"job_id":"j"}"#).unwrap_err(),
            (Some("j".into()), "missing \"version\"".into())
        );
        assert!(parse_generic(b"{").unwrap_err().1.contains("not a JSON"));
        assert!(
            parse_generic(br#"{"version":"1"}"#)
                .unwrap_err()
                .1
                .contains("job_id")
        );
    }

    #[test]
    fn aws_topics_are_classified_with_their_job_id() {
        assert_eq!(
            classify_aws_topic("$aws", b"$aws/things/m-1/jobs/notify-next"),
            Some((AwsTopic::NotifyNext, ""))
        );
        assert_eq!(
            classify_aws_topic("$aws", b"$aws/things/m-1/jobs/fw-7/update/rejected"),
            Some((AwsTopic::UpdateRejected, "fw-7"))
        );
        assert_eq!(
            classify_aws_topic("$aws", b"$aws/things/m-1/jobs/start-next/accepted"),
            Some((AwsTopic::StartNextAccepted, ""))
        );
        assert_eq!(
            classify_aws_topic("$aws", b"$aws/things/m-1/jobs/x/delete"),
            None
        );
        assert_eq!(classify_aws_topic("$aws", b"fleetsim/m-1/cmd"), None);
    }

    #[test]
    fn aws_replies_give_the_job_and_its_version_number() {
        let r = parse_aws_reply(
            br#"{"execution":{"jobId":"j1","status":"QUEUED","versionNumber":3,
                "jobDocument":{"operation":"firmware_update","version":"2.1.0","url":"http://h/f"}},
                "timestamp":1,"clientToken":"t"}"#,
        )
        .unwrap();
        assert_eq!(r.job_id.as_deref(), Some("j1"));
        assert_eq!(r.version_number, Some(3));
        assert_eq!(
            r.document.unwrap().unwrap().url.as_deref(),
            Some("http://h/f")
        );
        let rej = parse_aws_reply(
            br#"{"code":"VersionMismatch","message":"m","executionState":{"status":"IN_PROGRESS","versionNumber":5}}"#,
        )
        .unwrap();
        assert_eq!(rej.code.as_deref(), Some("VersionMismatch"));
        assert_eq!(rej.version_number, Some(5));
        let bad = parse_aws_reply(
            br#"{"execution":{"jobId":"j2","jobDocument":{"operation":"reboot"}}}"#,
        )
        .unwrap();
        assert!(bad.document.unwrap().unwrap_err().contains("reboot"));
        assert!(parse_aws_reply(b"[1]").is_err());
    }

    #[test]
    fn status_reports_encode_as_documented() {
        let r = StatusReport {
            device_id: b"m-1",
            job_id: "j1",
            status: "IN_PROGRESS",
            stage: "downloading",
            progress: Some(40),
            version: "1.0.0",
            target: "1.1.0",
            slot: "A",
            reason: None,
            ts_ms: 5,
        };
        let mut g = Vec::new();
        encode_generic_status(&r, &mut g);
        let v: Value = serde_json::from_slice(&g).unwrap();
        assert_eq!(v["progress"], 40);
        assert_eq!(v["status"], "IN_PROGRESS");
        let mut a = Vec::new();
        encode_aws_update(&r, Some(2), b"m-1-1", &mut a);
        let v: Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["statusDetails"]["progress"], "40");
        assert_eq!(v["expectedVersion"], 2);
        assert_eq!(v["clientToken"], "m-1-1");
        let mut t = Vec::new();
        push_aws_topic("$aws", b"m-1", Some("j1"), "update", &mut t);
        assert_eq!(t, b"$aws/things/m-1/jobs/j1/update");
        assert_eq!(
            aws_filters("$aws", b"x")[2],
            b"$aws/things/x/jobs/+/update/+"
        );
        assert_eq!(
            classify_aws_topic("lab/aws", b"lab/aws/things/m-1/jobs/notify-next"),
            Some((AwsTopic::NotifyNext, ""))
        );
        assert_eq!(
            classify_aws_topic("lab/aws", b"$aws/things/m-1/jobs/notify-next"),
            None
        );
    }
}
