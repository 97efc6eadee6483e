//! Device profiles: one TOML file per device type (`device-profiles/*.toml`).
//!
//! Raw structs mirror the file (`deny_unknown_fields`); `validate()` turns them into trusted
//! types or a list of every problem, each naming the file, the key, the value and the expectation.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::defaults;
use crate::dist::{Dist, DistSpec};
use crate::error::{Checker, ConfigErrors};
use crate::template::{Template, Var};
use crate::time::{SimDuration, parse_duration};

// ---------------------------------------------------------------- raw (as written) ----------

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub identity: IdentityRaw,
    pub reporting: ReportingRaw,
    #[serde(default)]
    pub sensors: BTreeMap<String, SensorRaw>,
    pub battery: Option<BatteryRaw>,
    #[serde(default)]
    pub link: LinkRaw,
    pub firmware: FirmwareRefRaw,
    #[serde(default)]
    pub mqtt: MqttRaw,
    #[serde(default)]
    pub commands: CommandsRaw,
    /// The device is also (or only) a Modbus slave with this register map.
    pub modbus: Option<crate::modbus::ModbusRaw>,
    /// The device talks on a serial line (a GPS receiver, a modem, a Modbus RTU slave, lines).
    pub serial: Option<crate::serial::SerialRaw>,
    /// The device takes firmware updates (AWS IoT Jobs or the generic JSON job protocol).
    pub ota: Option<OtaRaw>,
    /// The devices are children of gateways that publish for them over one MQTT session each.
    pub gateway: Option<GatewayRaw>,
}

/// How a gateway's topics are laid out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicStyle {
    /// `{gateway}/{device_id}/telemetry`, retained `{gateway}/{device_id}/status` and
    /// `{gateway}/status` (the gateway's will).
    #[default]
    Plain,
    /// Sparkplug B's topic namespace with JSON payloads: `spBv1.0/{group}/DDATA/{gateway}/{device_id}`,
    /// DBIRTH / DDEATH per child, NBIRTH / NDEATH (the will) per gateway.
    Sparkplug,
}

impl TopicStyle {
    pub fn as_str(self) -> &'static str {
        match self {
            TopicStyle::Plain => "plain",
            TopicStyle::Sparkplug => "sparkplug",
        }
    }
}

/// `[gateway]` of a profile, as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayRaw {
    /// Devices behind one gateway (the cohort's devices are grouped in id order).
    pub children: u32,
    /// The gateway's id (`{gateway}` in templates); default "{cohort}-gw-{gateway_index:04}".
    pub id: Option<String>,
    /// The gateway session's MQTT client id; default "{gateway}".
    pub client_id: Option<String>,
    #[serde(default)]
    pub topics: TopicStyle,
    /// Sparkplug group id (`topics = "sparkplug"`); default "fleetsim".
    pub group: Option<String>,
    /// `topics = "plain"`: the gateway's retained status and will; default "{gateway}/status".
    pub status_topic: Option<String>,
}

/// `[gateway]`, validated.
#[derive(Clone, Debug)]
pub struct GatewaySpec {
    pub children: u32,
    pub id: Template,
    pub client_id: Template,
    pub style: TopicStyle,
    /// The gateway's status when its session comes up (plain: the retained status topic;
    /// Sparkplug: NBIRTH).
    pub status_topic: Template,
    /// Its last will, also published when it leaves cleanly (plain: the status topic;
    /// Sparkplug: NDEATH).
    pub will_topic: Template,
    /// Statuses, the gateway's and its children's, are retained (plain) or not (Sparkplug).
    pub retain_status: bool,
    /// What the gateway subscribes to for its children's commands: the children's command
    /// topic with the device level as `+` (None: commands are off).
    pub command_filter: Option<Template>,
}

/// How a device is told about updates and reports on them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtaProtocol {
    /// `{"job_id", "version", ...}` on a job topic, status on a status topic (docs/ota.md).
    #[default]
    Generic,
    /// AWS IoT Jobs over MQTT: `$aws/things/{thing}/jobs/...`.
    AwsJobs,
}

impl OtaProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            OtaProtocol::Generic => "generic",
            OtaProtocol::AwsJobs => "aws_jobs",
        }
    }
}

/// Where the image comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownloadMode {
    /// HTTP GET when the job document has a `url` and the run is on the wall clock; simulated
    /// (image size over the link's bandwidth) otherwise.
    #[default]
    Auto,
    /// Always simulated, even when the job has a URL.
    Simulated,
    /// Always a real HTTP GET: a job without a `url` is rejected.
    Http,
}

/// `[ota]` of a profile.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtaRaw {
    #[serde(default)]
    pub protocol: OtaProtocol,
    /// AWS IoT thing name (default "{device_id}").
    pub thing_name: Option<String>,
    /// First level of the AWS IoT Jobs topics (default "$aws").
    pub aws_topic_prefix: Option<String>,
    /// Generic protocol: where jobs arrive (default "fleetsim/{profile}/{device_id}/ota/job").
    pub job_topic: Option<String>,
    /// Generic protocol and rollouts run by fleetsim: where the device reports (default
    /// "fleetsim/{profile}/{device_id}/ota/status").
    pub status_topic: Option<String>,
    #[serde(default)]
    pub download: DownloadMode,
    /// A status report each time the download passes another step of this many percent.
    #[serde(default = "defaults::ota_progress_step")]
    pub progress_step_percent: u8,
    /// Jobs arriving while the battery is below this are rejected.
    #[serde(default)]
    pub min_battery_percent: f64,
    /// Accept jobs for an older version than the running one.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// AWS IoT Jobs: send `expectedVersion` with every update (and recover from VersionMismatch).
    #[serde(default = "defaults::yes")]
    pub expected_version: bool,
    /// A download interrupted by a link drop or a reboot continues where it stopped (HTTP Range);
    /// false: it starts over.
    #[serde(default = "defaults::yes")]
    pub resume: bool,
}

/// `[ota]`, validated.
#[derive(Clone, Debug)]
pub struct OtaSpec {
    pub protocol: OtaProtocol,
    pub thing_name: Template,
    pub aws_topic_prefix: String,
    pub job_topic: Template,
    pub status_topic: Template,
    pub download: DownloadMode,
    pub progress_step_percent: u8,
    pub min_battery_percent: f64,
    pub allow_downgrade: bool,
    pub expected_version: bool,
    pub resume: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityRaw {
    pub device_id: String,
    pub client_id: Option<String>,
    /// Required when the device speaks MQTT.
    pub telemetry_topic: Option<String>,
    pub command_topic: Option<String>,
    pub response_topic: Option<String>,
    pub status_topic: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportingRaw {
    pub interval: String,
    #[serde(default)]
    pub jitter: f64,
    #[serde(default)]
    pub qos: u8,
    #[serde(default)]
    pub retain: bool,
    #[serde(default = "defaults::offline_buffer")]
    pub offline_buffer: u32,
    /// Keep QoS 0 telemetry produced while disconnected (most client libraries drop it).
    #[serde(default = "defaults::yes")]
    pub buffer_qos0: bool,
    /// Buffered telemetry older than this when it would be sent is dropped (`expired`).
    pub max_age: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorKind {
    Constant,
    Normal,
    RandomWalk,
    Sine,
    Counter,
}

impl SensorKind {
    /// The name as written in files.
    pub fn as_str(self) -> &'static str {
        match self {
            SensorKind::Constant => "constant",
            SensorKind::Normal => "normal",
            SensorKind::RandomWalk => "random_walk",
            SensorKind::Sine => "sine",
            SensorKind::Counter => "counter",
        }
    }
}

/// A sensor as written: `kind` says which of the other fields apply.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorRaw {
    pub kind: SensorKind,
    pub unit: Option<String>,
    #[serde(default = "defaults::decimals")]
    pub decimals: u8,
    /// constant: the value
    pub value: Option<f64>,
    /// normal, sine: the centre
    pub mean: Option<f64>,
    /// normal: standard deviation
    pub sigma: Option<f64>,
    /// random_walk, counter: the first value
    pub start: Option<f64>,
    /// random_walk: standard deviation of one step (per report)
    pub step: Option<f64>,
    /// random_walk: bounds
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// sine: amplitude and period
    pub amplitude: Option<f64>,
    pub period: Option<String>,
    /// sine: phase as a fraction of the period (0..1); "random" gives each device its own
    pub phase: Option<PhaseRaw>,
    /// sine: added normal noise
    pub noise: Option<f64>,
    /// counter: mean increase per second, and its relative spread per report
    pub rate_per_s: Option<f64>,
    pub rate_sigma: Option<f64>,
    #[serde(default)]
    pub faults: SensorFaultsRaw,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a fraction of the period between 0 and 1, or \"random\""
)]
pub enum PhaseRaw {
    Fixed(f64),
    Named(String),
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorFaultsRaw {
    #[serde(default)]
    pub spike_probability: f64,
    #[serde(default)]
    pub spike_magnitude: f64,
    #[serde(default)]
    pub stuck_probability: f64,
    pub stuck_duration: Option<String>,
    #[serde(default)]
    pub drift_per_hour: f64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatteryRaw {
    pub capacity_mah: f64,
    pub idle_ma: f64,
    pub tx_mah: f64,
    /// Starting charge in percent: a number, or `[min, max]` drawn per device.
    #[serde(default = "defaults::start_percent")]
    pub start_percent: StartPercentRaw,
    #[serde(default = "defaults::low_percent")]
    pub low_percent: f64,
    #[serde(default = "defaults::low_interval_factor")]
    pub low_interval_factor: f64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a percentage like 80, or a range like [20, 100]"
)]
pub enum StartPercentRaw {
    Fixed(f64),
    Range([f64; 2]),
}

/// A link model; every field optional so a cohort can override some of a profile's.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRaw {
    pub latency_ms: Option<DistSpec>,
    pub loss: Option<f64>,
    /// Mean time between link drops, or "never".
    pub mtbf: Option<String>,
    pub mttr_s: Option<DistSpec>,
    pub connect_timeout: Option<String>,
    pub reconnect: Option<BackoffRaw>,
    /// Download bandwidth of an OTA image, kbit/s.
    pub bandwidth_kbps: Option<DistSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffRaw {
    pub initial: String,
    pub max: String,
    #[serde(default = "defaults::backoff_multiplier")]
    pub multiplier: f64,
    #[serde(default = "defaults::backoff_jitter")]
    pub jitter: f64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareRefRaw {
    /// Path to the firmware model, relative to this profile.
    pub model: String,
    pub version: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttRaw {
    /// false: the device has no MQTT uplink (a Modbus-only meter).
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    #[serde(default = "defaults::keep_alive")]
    pub keep_alive: String,
    #[serde(default = "defaults::yes")]
    pub clean_session: bool,
    /// v5 session expiry for persistent sessions.
    #[serde(default)]
    pub session_expiry: Option<String>,
    #[serde(default = "defaults::yes")]
    pub last_will: bool,
}

impl Default for MqttRaw {
    fn default() -> Self {
        MqttRaw {
            enabled: true,
            keep_alive: defaults::keep_alive(),
            clean_session: true,
            session_expiry: None,
            last_will: true,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsRaw {
    #[serde(default = "defaults::commands")]
    pub enabled: Vec<String>,
    #[serde(default = "defaults::one")]
    pub qos: u8,
}

impl Default for CommandsRaw {
    fn default() -> Self {
        CommandsRaw {
            enabled: defaults::commands(),
            qos: 1,
        }
    }
}

// ---------------------------------------------------------------- validated ----------------

/// MQTT quality of service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Qos {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl Qos {
    pub fn from_u8(v: u8) -> Option<Qos> {
        match v {
            0 => Some(Qos::AtMostOnce),
            1 => Some(Qos::AtLeastOnce),
            2 => Some(Qos::ExactlyOnce),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Identity {
    pub device_id: Template,
    pub client_id: Template,
    pub telemetry_topic: Template,
    pub command_topic: Option<Template>,
    pub response_topic: Option<Template>,
    pub status_topic: Option<Template>,
    /// Where an `online: false` status goes when not on `status_topic` (Sparkplug's DDEATH).
    pub status_offline_topic: Option<Template>,
    /// Status messages are retained (false for Sparkplug-style gateways).
    pub retain_status: bool,
}

impl Identity {
    /// The topic a message of `kind` goes to (None: the profile has none; OTA messages carry
    /// their own).
    pub fn topic(&self, kind: crate::device::TopicKind) -> Option<&Template> {
        use crate::device::TopicKind;
        match kind {
            TopicKind::Telemetry => Some(&self.telemetry_topic),
            TopicKind::Response => self.response_topic.as_ref(),
            TopicKind::Status => self.status_topic.as_ref(),
            TopicKind::StatusOffline => self
                .status_offline_topic
                .as_ref()
                .or(self.status_topic.as_ref()),
            TopicKind::Ota => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Reporting {
    pub interval: SimDuration,
    pub jitter: f64,
    pub qos: Qos,
    pub retain: bool,
    pub offline_buffer: u32,
    /// QoS 0 telemetry produced while disconnected goes to the offline buffer (else dropped).
    pub buffer_qos0: bool,
    /// Buffered telemetry older than this when its turn comes is dropped (`expired`).
    pub max_age: Option<SimDuration>,
}

#[derive(Clone, Debug)]
pub enum SensorModel {
    Constant {
        value: f64,
    },
    Normal {
        mean: f64,
        sigma: f64,
    },
    RandomWalk {
        start: f64,
        step: f64,
        min: f64,
        max: f64,
    },
    Sine {
        mean: f64,
        amplitude: f64,
        period: SimDuration,
        phase: Option<f64>,
        noise: f64,
    },
    Counter {
        start: f64,
        rate_per_s: f64,
        rate_sigma: f64,
    },
}

#[derive(Clone, Debug, Default)]
pub struct SensorFaults {
    pub spike_probability: f64,
    pub spike_magnitude: f64,
    pub stuck_probability: f64,
    pub stuck_duration: SimDuration,
    pub drift_per_hour: f64,
}

#[derive(Clone, Debug)]
pub struct SensorSpec {
    pub name: String,
    pub unit: Option<String>,
    pub decimals: u8,
    pub model: SensorModel,
    pub faults: SensorFaults,
}

#[derive(Clone, Debug)]
pub struct BatterySpec {
    pub capacity_mah: f64,
    pub idle_ma: f64,
    pub tx_mah: f64,
    pub start_percent: (f64, f64),
    pub low_percent: f64,
    pub low_interval_factor: f64,
}

#[derive(Clone, Debug)]
pub struct Backoff {
    pub initial: SimDuration,
    pub max: SimDuration,
    pub multiplier: f64,
    /// Fraction of the delay drawn at random: delay * (1 - jitter * u), u in [0, 1).
    pub jitter: f64,
}

#[derive(Clone, Debug)]
pub struct LinkSpec {
    pub latency_ms: Dist,
    pub loss: f64,
    pub mtbf: Option<SimDuration>,
    pub mttr_s: Dist,
    pub connect_timeout: SimDuration,
    pub reconnect: Backoff,
    pub bandwidth_kbps: Dist,
}

#[derive(Clone, Debug)]
pub struct MqttSpec {
    /// The device has an MQTT session (false: it only samples, for Modbus or serial).
    pub enabled: bool,
    pub keep_alive: SimDuration,
    pub clean_session: bool,
    pub session_expiry: Option<SimDuration>,
    pub last_will: bool,
}

/// Commands a device answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommandSet {
    pub set_interval: bool,
    pub reboot: bool,
    pub ping: bool,
    pub report_now: bool,
}

pub const COMMAND_NAMES: &[&str] = &["set_interval", "reboot", "ping", "report_now"];

#[derive(Clone, Debug)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub identity: Identity,
    pub reporting: Reporting,
    pub sensors: Vec<SensorSpec>,
    pub battery: Option<BatterySpec>,
    /// Kept raw so a cohort can override parts of it before it is validated.
    pub link_raw: LinkRaw,
    pub link: LinkSpec,
    pub firmware_model: String,
    pub firmware_version: String,
    pub mqtt: MqttSpec,
    pub commands: CommandSet,
    pub command_qos: Qos,
    pub modbus: Option<crate::modbus::RegisterMap>,
    pub serial: Option<crate::serial::SerialSpec>,
    pub ota: Option<OtaSpec>,
    pub gateway: Option<GatewaySpec>,
}

const DEVICE_ID_VARS: &[Var] = &[Var::Id, Var::Index, Var::Cohort, Var::Profile];
const TOPIC_VARS: &[Var] = &[
    Var::Id,
    Var::Index,
    Var::Cohort,
    Var::Profile,
    Var::DeviceId,
];
/// Topics and client ids of a gateway's children may name their gateway too.
const CHILD_TOPIC_VARS: &[Var] = &[
    Var::Id,
    Var::Index,
    Var::Cohort,
    Var::Profile,
    Var::DeviceId,
    Var::Gateway,
    Var::GatewayIndex,
];
const GATEWAY_ID_VARS: &[Var] = &[Var::GatewayIndex, Var::Cohort, Var::Profile];
const GATEWAY_VARS: &[Var] = &[Var::Gateway, Var::GatewayIndex, Var::Cohort, Var::Profile];

/// The children's topics a gateway style gives when the profile names none (`{G}` stands for
/// the Sparkplug group): telemetry, status, offline status, command, response.
struct ChildTopics {
    telemetry: String,
    status: String,
    status_offline: Option<String>,
    command: String,
    response: String,
}

fn child_topics(style: TopicStyle, group: &str) -> ChildTopics {
    // The group is literal text in a template: braces are doubled.
    let g = group.replace('{', "{{").replace('}', "}}");
    match style {
        TopicStyle::Plain => ChildTopics {
            telemetry: "{gateway}/{device_id}/telemetry".into(),
            status: "{gateway}/{device_id}/status".into(),
            status_offline: None,
            command: "{gateway}/{device_id}/cmd".into(),
            response: "{gateway}/{device_id}/cmd/response".into(),
        },
        TopicStyle::Sparkplug => ChildTopics {
            telemetry: format!("spBv1.0/{g}/DDATA/{{gateway}}/{{device_id}}"),
            status: format!("spBv1.0/{g}/DBIRTH/{{gateway}}/{{device_id}}"),
            status_offline: Some(format!("spBv1.0/{g}/DDEATH/{{gateway}}/{{device_id}}")),
            command: format!("spBv1.0/{g}/DCMD/{{gateway}}/{{device_id}}"),
            response: format!("spBv1.0/{g}/DDATA/{{gateway}}/{{device_id}}"),
        },
    }
}

fn template(c: &mut Checker, key: &str, text: &str, vars: &[Var], topic: bool) -> Template {
    match Template::parse(text, vars) {
        Ok(t) if topic && t.has_topic_wildcards() => {
            c.fail(
                key,
                format!("{text:?}"),
                "a topic to publish on must not contain + or #",
            );
            t
        }
        Ok(t) if topic && text.is_empty() => {
            c.fail(key, "\"\"", "must not be empty");
            t
        }
        Ok(t) => t,
        Err(e) => {
            c.fail(key, format!("{text:?}"), e);
            Template::parse("", &[]).unwrap_or_else(|_| unreachable!("the empty template parses"))
        }
    }
}

pub(crate) fn duration(c: &mut Checker, key: &str, text: &str) -> SimDuration {
    match parse_duration(text) {
        Ok(d) => d,
        Err(e) => {
            c.fail(
                key,
                format!("{text:?}"),
                format!("must be a duration like \"30s\" or \"5m\" ({e})"),
            );
            SimDuration::ZERO
        }
    }
}

pub(crate) fn positive_duration(c: &mut Checker, key: &str, text: &str) -> SimDuration {
    let d = duration(c, key, text);
    if d == SimDuration::ZERO && parse_duration(text).is_ok() {
        c.fail(key, format!("{text:?}"), "must be longer than zero");
    }
    d
}

impl ProfileFile {
    pub fn validate(&self, file: &str) -> Result<Profile, ConfigErrors> {
        let mut c = Checker::new(file);
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        {
            c.fail(
                "name",
                format!("{:?}", self.name),
                "must be non-empty letters, digits, - or _",
            );
        }
        let id = &self.identity;
        let gw = self.gateway.as_ref();
        let group = gw
            .and_then(|g| g.group.clone())
            .unwrap_or_else(|| defaults::SPARKPLUG_GROUP.to_string());
        // A gateway's children get topics under their gateway unless the profile names them.
        let preset = gw.map(|g| child_topics(g.topics, &group));
        let topic_vars = if gw.is_some() {
            CHILD_TOPIC_VARS
        } else {
            TOPIC_VARS
        };
        let commands_on = !self.commands.enabled.is_empty();
        let named_or_preset =
            |given: &Option<String>, preset: Option<String>| given.clone().or(preset);
        let command_text = named_or_preset(
            &id.command_topic,
            preset
                .as_ref()
                .filter(|_| commands_on)
                .map(|p| p.command.clone()),
        );
        let response_text = named_or_preset(
            &id.response_topic,
            preset
                .as_ref()
                .filter(|_| commands_on)
                .map(|p| p.response.clone()),
        );
        let status_text =
            named_or_preset(&id.status_topic, preset.as_ref().map(|p| p.status.clone()));
        let identity = Identity {
            device_id: template(
                &mut c,
                "identity.device_id",
                &id.device_id,
                DEVICE_ID_VARS,
                false,
            ),
            client_id: template(
                &mut c,
                "identity.client_id",
                id.client_id.as_deref().unwrap_or("{device_id}"),
                topic_vars,
                false,
            ),
            telemetry_topic: template(
                &mut c,
                "identity.telemetry_topic",
                id.telemetry_topic
                    .as_deref()
                    .or(preset.as_ref().map(|p| p.telemetry.as_str()))
                    .unwrap_or("{device_id}/telemetry"),
                topic_vars,
                true,
            ),
            command_topic: command_text
                .as_deref()
                .map(|t| template(&mut c, "identity.command_topic", t, topic_vars, true)),
            response_topic: response_text
                .as_deref()
                .map(|t| template(&mut c, "identity.response_topic", t, topic_vars, true)),
            status_topic: status_text
                .as_deref()
                .map(|t| template(&mut c, "identity.status_topic", t, topic_vars, true)),
            // Sparkplug's DDEATH, unless the profile chose its own status topic.
            status_offline_topic: preset
                .as_ref()
                .filter(|_| id.status_topic.is_none())
                .and_then(|p| p.status_offline.as_deref())
                .map(|t| template(&mut c, "identity.status_topic", t, topic_vars, true)),
            retain_status: gw.is_none_or(|g| g.topics == TopicStyle::Plain),
        };
        if id.device_id.is_empty() {
            c.fail("identity.device_id", "\"\"", "must not be empty");
        } else if Template::parse(&id.device_id, DEVICE_ID_VARS).is_ok()
            && !identity.device_id.uses(Var::Id)
            && !identity.device_id.uses(Var::Index)
        {
            c.fail(
                "identity.device_id",
                format!("{:?}", id.device_id),
                "must contain {id} or {index} so every device gets its own id",
            );
        }
        if identity.command_topic.is_some() != identity.response_topic.is_some() {
            c.fail_key(
                "identity.response_topic",
                "command_topic and response_topic go together: set both or neither",
            );
        }

        let r = &self.reporting;
        let reporting = Reporting {
            interval: positive_duration(&mut c, "reporting.interval", &r.interval),
            jitter: r.jitter,
            qos: Qos::from_u8(r.qos).unwrap_or(Qos::AtMostOnce),
            retain: r.retain,
            offline_buffer: r.offline_buffer,
            buffer_qos0: r.buffer_qos0,
            max_age: r
                .max_age
                .as_deref()
                .map(|t| positive_duration(&mut c, "reporting.max_age", t)),
        };
        c.check(
            (0.0..1.0).contains(&r.jitter),
            "reporting.jitter",
            r.jitter,
            "must be a fraction in [0, 1)",
        );
        c.check(r.qos <= 2, "reporting.qos", r.qos, "must be 0, 1 or 2");
        c.check(
            r.offline_buffer <= defaults::MAX_OFFLINE_BUFFER,
            "reporting.offline_buffer",
            r.offline_buffer,
            &format!("must be at most {}", defaults::MAX_OFFLINE_BUFFER),
        );

        let sensors: Vec<SensorSpec> = self
            .sensors
            .iter()
            .map(|(name, s)| validate_sensor(&mut c, name, s))
            .collect();

        let battery = self.battery.as_ref().map(|b| validate_battery(&mut c, b));
        let link = validate_link(&mut c, "link", &self.link);

        let mqtt_on = self.mqtt.enabled;
        if mqtt_on && id.telemetry_topic.is_none() && gw.is_none() {
            c.fail_key(
                "identity.telemetry_topic",
                "is required (or set mqtt.enabled = false for a device without MQTT)",
            );
        }
        let mqtt = MqttSpec {
            enabled: mqtt_on,
            keep_alive: duration(&mut c, "mqtt.keep_alive", &self.mqtt.keep_alive),
            clean_session: self.mqtt.clean_session,
            session_expiry: self
                .mqtt
                .session_expiry
                .as_deref()
                .map(|t| duration(&mut c, "mqtt.session_expiry", t)),
            last_will: self.mqtt.last_will,
        };
        c.check(
            mqtt.keep_alive.as_micros() <= 65_535_000_000,
            "mqtt.keep_alive",
            format!("{:?}", self.mqtt.keep_alive),
            "must be at most 65535s (MQTT limit)",
        );
        // A gateway's children have no session, so no will: the gateway has one.
        if mqtt_on && self.mqtt.last_will && identity.status_topic.is_none() && gw.is_none() {
            // A will needs a topic; silently turning it off would surprise a user.
            c.fail_key(
                "mqtt.last_will",
                "needs identity.status_topic (the will is published there)",
            );
        }

        let mut commands = CommandSet::default();
        for (i, name) in self.commands.enabled.iter().enumerate() {
            match name.as_str() {
                "set_interval" => commands.set_interval = true,
                "reboot" => commands.reboot = true,
                "ping" => commands.ping = true,
                "report_now" => commands.report_now = true,
                other => c.fail(
                    &format!("commands.enabled[{i}]"),
                    format!("{other:?}"),
                    format!("must be one of {}", COMMAND_NAMES.join(", ")),
                ),
            }
        }
        c.check(
            self.commands.qos <= 2,
            "commands.qos",
            self.commands.qos,
            "must be 0, 1 or 2",
        );
        if mqtt_on && !self.commands.enabled.is_empty() && identity.command_topic.is_none() {
            c.fail_key(
                "identity.command_topic",
                "commands are enabled, so a command_topic (and response_topic) is needed; or set commands.enabled = []",
            );
        }
        c.check(
            !self.firmware.model.is_empty(),
            "firmware.model",
            "\"\"",
            "must name a firmware model file",
        );

        let modbus = self
            .modbus
            .as_ref()
            .map(|m| crate::modbus::RegisterMap::validate(&mut c, m, &sensors, battery.is_some()));
        let serial = self
            .serial
            .as_ref()
            .map(|s| crate::serial::SerialSpec::validate(&mut c, s, &sensors, modbus.is_some()));
        if !mqtt_on && modbus.is_none() && serial.is_none() {
            c.fail_key(
                "mqtt.enabled",
                "is false and there is no [modbus] or [serial] table: the device would have no way to be seen",
            );
        }
        let ota = self.ota.as_ref().map(|o| validate_ota(&mut c, o));
        let gateway = gw.map(|g| validate_gateway(&mut c, self, g, &group, &identity));
        let profile = Profile {
            ota,
            gateway,
            name: self.name.clone(),
            description: self.description.clone(),
            identity,
            reporting,
            sensors,
            battery,
            link_raw: self.link.clone(),
            link,
            firmware_model: self.firmware.model.clone(),
            firmware_version: self.firmware.version.clone(),
            mqtt,
            commands,
            command_qos: Qos::from_u8(self.commands.qos).unwrap_or(Qos::AtLeastOnce),
            modbus,
            serial,
        };
        c.errors.into_result(profile)
    }
}

fn require(c: &mut Checker, key: &str, field: &str, v: Option<f64>, kind: &str) -> f64 {
    match v {
        Some(x) if x.is_finite() => x,
        Some(x) => {
            c.fail(&format!("{key}.{field}"), x, "must be a finite number");
            0.0
        }
        None => {
            c.fail_key(
                &format!("{key}.{field}"),
                format!("is required for kind = \"{kind}\""),
            );
            0.0
        }
    }
}

fn validate_sensor(c: &mut Checker, name: &str, s: &SensorRaw) -> SensorSpec {
    let key = format!("sensors.{name}");
    if name.is_empty()
        || !name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    {
        c.fail(
            &key,
            format!("{name:?}"),
            "a sensor name must be letters, digits or _ (it becomes a JSON key)",
        );
    }
    let allowed: &[&str] = match s.kind {
        SensorKind::Constant => &["value"],
        SensorKind::Normal => &["mean", "sigma"],
        SensorKind::RandomWalk => &["start", "step", "min", "max"],
        SensorKind::Sine => &["mean", "amplitude", "period", "phase", "noise"],
        SensorKind::Counter => &["start", "rate_per_s", "rate_sigma"],
    };
    let present = [
        ("value", s.value.is_some()),
        ("mean", s.mean.is_some()),
        ("sigma", s.sigma.is_some()),
        ("start", s.start.is_some()),
        ("step", s.step.is_some()),
        ("min", s.min.is_some()),
        ("max", s.max.is_some()),
        ("amplitude", s.amplitude.is_some()),
        ("period", s.period.is_some()),
        ("phase", s.phase.is_some()),
        ("noise", s.noise.is_some()),
        ("rate_per_s", s.rate_per_s.is_some()),
        ("rate_sigma", s.rate_sigma.is_some()),
    ];
    let kind_name = s.kind.as_str();
    for (field, is_set) in present {
        if is_set && !allowed.contains(&field) {
            c.fail_key(
                &format!("{key}.{field}"),
                format!(
                    "does not apply to kind = \"{kind_name}\" (it takes: {})",
                    allowed.join(", ")
                ),
            );
        }
    }
    let model = match s.kind {
        SensorKind::Constant => SensorModel::Constant {
            value: require(c, &key, "value", s.value, "constant"),
        },
        SensorKind::Normal => {
            let sigma = require(c, &key, "sigma", s.sigma, "normal");
            c.check(sigma >= 0.0, &format!("{key}.sigma"), sigma, "must be >= 0");
            SensorModel::Normal {
                mean: require(c, &key, "mean", s.mean, "normal"),
                sigma,
            }
        }
        SensorKind::RandomWalk => {
            let (start, step) = (
                require(c, &key, "start", s.start, "random_walk"),
                require(c, &key, "step", s.step, "random_walk"),
            );
            let (min, max) = (
                require(c, &key, "min", s.min, "random_walk"),
                require(c, &key, "max", s.max, "random_walk"),
            );
            c.check(step >= 0.0, &format!("{key}.step"), step, "must be >= 0");
            c.check(
                min <= max,
                &format!("{key}.max"),
                max,
                &format!("must be >= min ({min})"),
            );
            c.check(
                (min..=max).contains(&start),
                &format!("{key}.start"),
                start,
                &format!("must lie within min..max ({min}..{max})"),
            );
            SensorModel::RandomWalk {
                start,
                step,
                min,
                max,
            }
        }
        SensorKind::Sine => {
            let period = match &s.period {
                Some(p) => positive_duration(c, &format!("{key}.period"), p),
                None => {
                    c.fail_key(&format!("{key}.period"), "is required for kind = \"sine\"");
                    SimDuration::from_secs(1)
                }
            };
            let phase = match &s.phase {
                None => Some(0.0),
                Some(PhaseRaw::Fixed(p)) => {
                    c.check(
                        (0.0..=1.0).contains(p),
                        &format!("{key}.phase"),
                        p,
                        "must be a fraction of the period in [0, 1] or \"random\"",
                    );
                    Some(*p)
                }
                Some(PhaseRaw::Named(n)) if n == "random" => None,
                Some(PhaseRaw::Named(n)) => {
                    c.fail(
                        &format!("{key}.phase"),
                        format!("{n:?}"),
                        "must be a fraction in [0, 1] or \"random\"",
                    );
                    Some(0.0)
                }
            };
            let noise = s.noise.unwrap_or(0.0);
            c.check(noise >= 0.0, &format!("{key}.noise"), noise, "must be >= 0");
            SensorModel::Sine {
                mean: require(c, &key, "mean", s.mean, "sine"),
                amplitude: require(c, &key, "amplitude", s.amplitude, "sine"),
                period,
                phase,
                noise,
            }
        }
        SensorKind::Counter => {
            let rate = require(c, &key, "rate_per_s", s.rate_per_s, "counter");
            let rate_sigma = s.rate_sigma.unwrap_or(0.0);
            c.check(
                rate >= 0.0,
                &format!("{key}.rate_per_s"),
                rate,
                "must be >= 0 (a counter only grows)",
            );
            c.check(
                rate_sigma >= 0.0,
                &format!("{key}.rate_sigma"),
                rate_sigma,
                "must be >= 0",
            );
            SensorModel::Counter {
                start: s.start.unwrap_or(0.0),
                rate_per_s: rate,
                rate_sigma,
            }
        }
    };
    c.check(
        s.decimals <= 9,
        &format!("{key}.decimals"),
        s.decimals,
        "must be 0..=9",
    );
    let f = &s.faults;
    c.probability(
        &format!("{key}.faults.spike_probability"),
        f.spike_probability,
    );
    c.probability(
        &format!("{key}.faults.stuck_probability"),
        f.stuck_probability,
    );
    c.finite_at_least(
        &format!("{key}.faults.spike_magnitude"),
        f.spike_magnitude,
        f64::MIN,
    );
    c.finite_at_least(
        &format!("{key}.faults.drift_per_hour"),
        f.drift_per_hour,
        f64::MIN,
    );
    let stuck_duration = match &f.stuck_duration {
        Some(d) => duration(c, &format!("{key}.faults.stuck_duration"), d),
        None if f.stuck_probability > 0.0 => {
            c.fail_key(
                &format!("{key}.faults.stuck_duration"),
                "is required when stuck_probability > 0",
            );
            SimDuration::ZERO
        }
        None => SimDuration::ZERO,
    };
    SensorSpec {
        name: name.to_string(),
        unit: s.unit.clone(),
        decimals: s.decimals.min(9),
        model,
        faults: SensorFaults {
            spike_probability: f.spike_probability,
            spike_magnitude: f.spike_magnitude,
            stuck_probability: f.stuck_probability,
            stuck_duration,
            drift_per_hour: f.drift_per_hour,
        },
    }
}

fn validate_battery(c: &mut Checker, b: &BatteryRaw) -> BatterySpec {
    c.check(
        b.capacity_mah.is_finite() && b.capacity_mah > 0.0,
        "battery.capacity_mah",
        b.capacity_mah,
        "must be > 0",
    );
    c.finite_at_least("battery.idle_ma", b.idle_ma, 0.0);
    c.finite_at_least("battery.tx_mah", b.tx_mah, 0.0);
    let (start, written) = match b.start_percent {
        StartPercentRaw::Fixed(p) => ((p, p), format!("{p}")),
        StartPercentRaw::Range([lo, hi]) => ((lo, hi), format!("[{lo}, {hi}]")),
    };
    c.check(
        (0.0..=100.0).contains(&start.0) && (0.0..=100.0).contains(&start.1) && start.0 <= start.1,
        "battery.start_percent",
        written,
        "must be a percentage, or [min, max] with 0 <= min <= max <= 100",
    );
    c.check(
        (0.0..=100.0).contains(&b.low_percent),
        "battery.low_percent",
        b.low_percent,
        "must be 0..=100",
    );
    c.check(
        b.low_interval_factor.is_finite() && b.low_interval_factor >= 1.0,
        "battery.low_interval_factor",
        b.low_interval_factor,
        "must be >= 1 (low battery reports less often, never more)",
    );
    BatterySpec {
        capacity_mah: b.capacity_mah,
        idle_ma: b.idle_ma,
        tx_mah: b.tx_mah,
        start_percent: start,
        low_percent: b.low_percent,
        low_interval_factor: b.low_interval_factor,
    }
}

/// `[gateway]`: the gateway's own templates, and what a gateway cannot do for its children.
fn validate_gateway(
    c: &mut Checker,
    file: &ProfileFile,
    g: &GatewayRaw,
    group: &str,
    identity: &Identity,
) -> GatewaySpec {
    c.check(
        (1..=defaults::MAX_GATEWAY_CHILDREN).contains(&g.children),
        "gateway.children",
        g.children,
        &format!(
            "must be between 1 and {} (devices behind one gateway)",
            defaults::MAX_GATEWAY_CHILDREN
        ),
    );
    let id_text = g.id.as_deref().unwrap_or(defaults::GATEWAY_ID);
    let id = template(c, "gateway.id", id_text, GATEWAY_ID_VARS, false);
    if !id_text.is_empty()
        && Template::parse(id_text, GATEWAY_ID_VARS).is_ok()
        && !id.uses(Var::GatewayIndex)
    {
        c.fail(
            "gateway.id",
            format!("{id_text:?}"),
            "must contain {gateway_index} so every gateway gets its own id",
        );
    }
    let client_id = template(
        c,
        "gateway.client_id",
        g.client_id
            .as_deref()
            .unwrap_or(defaults::GATEWAY_CLIENT_ID),
        GATEWAY_VARS,
        false,
    );
    if g.group.is_some() && g.topics != TopicStyle::Sparkplug {
        c.fail_key("gateway.group", "applies to topics = \"sparkplug\" only");
    }
    c.check(
        !group.is_empty() && !group.contains(['/', '+', '#', '\0']),
        "gateway.group",
        format!("{group:?}"),
        "must be a Sparkplug group id: non-empty, without /, + or #",
    );
    let g_lit = group.replace('{', "{{").replace('}', "}}");
    let (status, will) = match (g.topics, &g.status_topic) {
        (TopicStyle::Sparkplug, Some(_)) => {
            c.fail_key(
                "gateway.status_topic",
                "does not apply to topics = \"sparkplug\" (the gateway publishes NBIRTH and its will is NDEATH)",
            );
            (String::new(), String::new())
        }
        (TopicStyle::Sparkplug, None) => (
            format!("spBv1.0/{g_lit}/NBIRTH/{{gateway}}"),
            format!("spBv1.0/{g_lit}/NDEATH/{{gateway}}"),
        ),
        (TopicStyle::Plain, given) => {
            let t = given.clone().unwrap_or_else(|| "{gateway}/status".into());
            (t.clone(), t)
        }
    };
    let status_topic = template(c, "gateway.status_topic", &status, GATEWAY_VARS, true);
    let will_topic = template(c, "gateway.status_topic", &will, GATEWAY_VARS, true);

    // What a gateway does not do for its children: said plainly rather than ignored.
    if file.ota.is_some() {
        c.fail_key(
            "ota",
            "a gateway's children take no firmware updates in fleetsim: remove [ota] or [gateway]",
        );
    }
    if !file.mqtt.enabled {
        c.fail_key(
            "mqtt.enabled",
            "is false, but [gateway] publishes its children's telemetry over MQTT",
        );
    }
    if !file.mqtt.clean_session {
        c.fail(
            "mqtt.clean_session",
            "false",
            "a gateway's session is a clean session (as Sparkplug requires); its children keep unsent telemetry in their offline buffers",
        );
    }
    if file.serial.is_some() {
        c.fail_key(
            "serial",
            "a gateway's children have no serial port of their own in fleetsim: remove [serial] or [gateway]",
        );
    }
    let command_filter = match (&identity.command_topic, file.commands.enabled.is_empty()) {
        (Some(t), false) => match t.level_wildcard(Var::DeviceId, &[Var::Id, Var::Index]) {
            Ok(f) => Some(f),
            Err(why) => {
                let given = file.identity.command_topic.clone().unwrap_or_default();
                c.fail(
                    "identity.command_topic",
                    format!("{given:?}"),
                    format!(
                        "with [gateway], the gateway subscribes for all its children with one filter, so the topic {why}"
                    ),
                );
                None
            }
        },
        _ => None,
    };
    if command_filter.is_some() && file.identity.device_id.contains(['/', '+', '#']) {
        c.fail(
            "identity.device_id",
            format!("{:?}", file.identity.device_id),
            "with [gateway] and commands, a device id is one topic level: no /, + or #",
        );
    }
    GatewaySpec {
        children: g.children.max(1),
        id,
        client_id,
        style: g.topics,
        status_topic,
        will_topic,
        retain_status: g.topics == TopicStyle::Plain,
        command_filter,
    }
}

fn validate_ota(c: &mut Checker, o: &OtaRaw) -> OtaSpec {
    let t = |c: &mut Checker, key: &str, given: &Option<String>, default: &str| {
        template(
            c,
            key,
            given.as_deref().unwrap_or(default),
            TOPIC_VARS,
            true,
        )
    };
    c.check(
        (1..=100).contains(&o.progress_step_percent),
        "ota.progress_step_percent",
        o.progress_step_percent,
        "must be between 1 and 100",
    );
    c.check(
        (0.0..=100.0).contains(&o.min_battery_percent),
        "ota.min_battery_percent",
        o.min_battery_percent,
        "must be a percentage in [0, 100]",
    );
    let aws_topic_prefix = o
        .aws_topic_prefix
        .clone()
        .unwrap_or_else(|| crate::ota::AWS_TOPIC_PREFIX.to_string());
    c.check(
        !aws_topic_prefix.is_empty()
            && !aws_topic_prefix.contains(['+', '#'])
            && !aws_topic_prefix.starts_with('/')
            && !aws_topic_prefix.ends_with('/'),
        "ota.aws_topic_prefix",
        format!("{aws_topic_prefix:?}"),
        "must be a topic level like \"$aws\" (no + or #, no leading or trailing /)",
    );
    OtaSpec {
        protocol: o.protocol,
        aws_topic_prefix,
        thing_name: t(c, "ota.thing_name", &o.thing_name, "{device_id}"),
        job_topic: t(
            c,
            "ota.job_topic",
            &o.job_topic,
            "fleetsim/{profile}/{device_id}/ota/job",
        ),
        status_topic: t(
            c,
            "ota.status_topic",
            &o.status_topic,
            "fleetsim/{profile}/{device_id}/ota/status",
        ),
        download: o.download,
        progress_step_percent: o.progress_step_percent,
        min_battery_percent: o.min_battery_percent,
        allow_downgrade: o.allow_downgrade,
        expected_version: o.expected_version,
        resume: o.resume,
    }
}

/// Validates a (possibly merged) link model; `key` is the section's key path for messages.
pub fn validate_link(c: &mut Checker, key: &str, l: &LinkRaw) -> LinkSpec {
    let latency_ms = match &l.latency_ms {
        Some(spec) => Dist::validate(spec, &format!("{key}.latency_ms"), c),
        None => Dist::Constant(0.0),
    };
    let loss = l.loss.unwrap_or(0.0);
    c.check(
        (0.0..1.0).contains(&loss),
        &format!("{key}.loss"),
        loss,
        "must be a probability in [0, 1)",
    );
    let mtbf = match l.mtbf.as_deref() {
        None | Some("never") => None,
        Some(t) => Some(positive_duration(c, &format!("{key}.mtbf"), t)),
    };
    let mttr_s = match &l.mttr_s {
        Some(spec) => Dist::validate(spec, &format!("{key}.mttr_s"), c),
        None => Dist::Constant(defaults::MTTR_S),
    };
    let bandwidth_kbps = match &l.bandwidth_kbps {
        Some(spec) => {
            if let DistSpec::Constant { value } = spec {
                c.check(
                    *value > 0.0,
                    &format!("{key}.bandwidth_kbps"),
                    value,
                    "must be > 0 (kbit/s)",
                );
            }
            Dist::validate(spec, &format!("{key}.bandwidth_kbps"), c)
        }
        None => Dist::Constant(defaults::BANDWIDTH_KBPS),
    };
    let connect_timeout = match &l.connect_timeout {
        Some(t) => positive_duration(c, &format!("{key}.connect_timeout"), t),
        None => defaults::CONNECT_TIMEOUT,
    };
    let reconnect = match &l.reconnect {
        None => defaults::backoff(),
        Some(b) => {
            let k = format!("{key}.reconnect");
            let initial = positive_duration(c, &format!("{k}.initial"), &b.initial);
            let max = positive_duration(c, &format!("{k}.max"), &b.max);
            c.check(
                max >= initial,
                &format!("{k}.max"),
                &b.max,
                &format!("must be >= initial ({})", b.initial),
            );
            c.check(
                b.multiplier.is_finite() && b.multiplier >= 1.0,
                &format!("{k}.multiplier"),
                b.multiplier,
                "must be >= 1",
            );
            c.check(
                (0.0..=1.0).contains(&b.jitter),
                &format!("{k}.jitter"),
                b.jitter,
                "must be a fraction in [0, 1]",
            );
            Backoff {
                initial,
                max,
                multiplier: b.multiplier,
                jitter: b.jitter,
            }
        }
    };
    LinkSpec {
        latency_ms,
        loss,
        mtbf,
        mttr_s,
        connect_timeout,
        reconnect,
        bandwidth_kbps,
    }
}

impl LinkRaw {
    /// `over`'s fields win where set.
    pub fn overridden_by(&self, over: &LinkRaw) -> LinkRaw {
        LinkRaw {
            latency_ms: over.latency_ms.clone().or_else(|| self.latency_ms.clone()),
            loss: over.loss.or(self.loss),
            mtbf: over.mtbf.clone().or_else(|| self.mtbf.clone()),
            mttr_s: over.mttr_s.clone().or_else(|| self.mttr_s.clone()),
            connect_timeout: over
                .connect_timeout
                .clone()
                .or_else(|| self.connect_timeout.clone()),
            reconnect: over.reconnect.clone().or_else(|| self.reconnect.clone()),
            bandwidth_kbps: over
                .bandwidth_kbps
                .clone()
                .or_else(|| self.bandwidth_kbps.clone()),
        }
    }
}
