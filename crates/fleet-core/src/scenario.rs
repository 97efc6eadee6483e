//! Scenarios: what to run (`scenarios/*.toml`): seed, duration, clock, broker, cohorts, ramp-up,
//! timed fleet events and SLO thresholds.

use serde::Deserialize;

use crate::defaults;
use crate::dist::{Dist, DistSpec};
use crate::error::{Checker, ConfigErrors};
use crate::modbus::{FORCED_FAULT_NAMES, ForcedFault, check_exception_code};
use crate::profile::{LinkRaw, duration, positive_duration};
use crate::slo::{METRIC_NAMES, SloBound, SloSpec, metric_is_known};
use crate::time::SimDuration;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    pub duration: String,
    #[serde(default)]
    pub clock: Clock,
    /// Wall-clock instant (ms since the Unix epoch) a virtual run starts at.
    pub start_epoch_ms: Option<u64>,
    /// After `duration`, how long to wait for outstanding acknowledgements.
    #[serde(default = "defaults::drain")]
    pub drain: String,
    pub broker: Option<BrokerRaw>,
    #[serde(default)]
    pub mqtt: MqttSessionRaw,
    #[serde(default)]
    pub embedded_broker: EmbeddedBrokerRaw,
    #[serde(default)]
    pub ramp: RampRaw,
    pub cohorts: Vec<CohortRaw>,
    #[serde(default)]
    pub events: Vec<EventRaw>,
    #[serde(default)]
    pub slo: Vec<SloRaw>,
    #[serde(default)]
    pub sim_broker: SimBrokerRaw,
    /// Modbus listeners and serial lines (used when some profile has a register map).
    #[serde(default)]
    pub modbus: ModbusServeRaw,
    /// Serial ports of cohorts whose profile has a `[serial]` persona: a PTY per device unless
    /// a table here names a real port.
    #[serde(default)]
    pub serial: Vec<SerialPortRaw>,
    /// Firmware rollouts fleetsim runs itself (docs/ota.md).
    #[serde(default)]
    pub rollouts: Vec<crate::rollout::RolloutRaw>,
    /// Settings of firmware updates for the whole run.
    #[serde(default)]
    pub ota: OtaRunRaw,
}

/// `[ota]` of a scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtaRunRaw {
    /// HTTP image downloads in progress at once, whole process.
    #[serde(default = "defaults::ota_max_downloads")]
    pub max_downloads: u32,
}

impl Default for OtaRunRaw {
    fn default() -> Self {
        OtaRunRaw {
            max_downloads: defaults::OTA_MAX_DOWNLOADS,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialPortRaw {
    pub cohort: String,
    /// "pty" (default): a virtual port pair per device. A path (/dev/ttyUSB0): a real port for
    /// the cohort's one device.
    #[serde(default = "defaults::pty")]
    pub port: String,
    /// Overrides the profile's serial.baud.
    pub baud: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct SerialPortCfg {
    pub cohort: String,
    /// None: PTY pairs.
    pub port: Option<String>,
    pub baud: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    /// Real time, real sockets.
    #[default]
    Wall,
    /// Discrete-event time against a simulated broker, as fast as the CPU goes.
    Virtual,
}

impl Clock {
    pub fn as_str(self) -> &'static str {
        match self {
            Clock::Wall => "wall",
            Clock::Virtual => "virtual",
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerRaw {
    /// One broker URL, `mqtt://host:port`.
    pub url: Option<String>,
    /// Several listeners of one broker (or a cluster): sessions are spread over them.
    #[serde(default)]
    pub urls: Vec<String>,
    /// MQTT over TLS (`mqtts://` URLs): trust, the broker's name, client certificates.
    pub tls: Option<crate::security::BrokerTlsRaw>,
    /// Per-device user names and passwords (or tokens).
    pub auth: Option<crate::security::BrokerAuthRaw>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MqttVersion {
    #[default]
    V311,
    V5,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSessionRaw {
    #[serde(default)]
    pub version: MqttVersion,
    /// Disable Nagle: lower latency for paced QoS 1, more packets for floods.
    #[serde(default = "crate::defaults::yes")]
    pub tcp_nodelay: bool,
    /// Local addresses sessions bind to, round-robin by device id (127.0.0.x or this host's IPs).
    #[serde(default)]
    pub source_addrs: Vec<String>,
    /// Connection attempts in progress at once (whole process); 0 = the default (96).
    #[serde(default)]
    pub max_connecting: u32,
}

impl Default for MqttSessionRaw {
    fn default() -> Self {
        MqttSessionRaw {
            version: MqttVersion::V311,
            tcp_nodelay: true,
            source_addrs: Vec::new(),
            max_connecting: 0,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedBrokerRaw {
    /// Listener count; 0 = one per 2,000 devices, at least one.
    #[serde(default)]
    pub listeners: u16,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RampMode {
    /// Everyone at once.
    All,
    /// Evenly spaced arrivals at `per_second`.
    #[default]
    Rate,
    /// Poisson arrivals with mean rate `per_second`.
    Poisson,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RampRaw {
    #[serde(default)]
    pub mode: RampMode,
    #[serde(default = "defaults::ramp_per_second")]
    pub per_second: f64,
}

impl Default for RampRaw {
    fn default() -> Self {
        RampRaw {
            mode: RampMode::Rate,
            per_second: defaults::RAMP_PER_SECOND,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CohortRaw {
    pub name: String,
    /// Path to a device profile, relative to this scenario file.
    pub profile: String,
    pub count: u32,
    /// Overrides the profile's firmware version.
    pub firmware_version: Option<String>,
    /// Overrides fields of the profile's link model.
    pub link: Option<LinkRaw>,
    /// false: the cohort's devices have no MQTT session (Modbus slaves only), whatever the
    /// profile says.
    pub mqtt: Option<bool>,
    /// Overrides fields of the profile's Modbus faults (`[modbus.faults]`).
    pub modbus_faults: Option<crate::modbus::ModbusFaultsRaw>,
    /// Overrides the profile's `ota.protocol`.
    pub ota_protocol: Option<crate::profile::OtaProtocol>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A fraction of the fleet loses its link for `duration`, then reconnects through backoff.
    Outage,
    /// A fraction of the fleet reboots, spread over `spread`.
    RebootWave,
    /// Modbus slaves answer with `fault` for `duration`.
    ModbusFault,
    /// Serial ports disappear for `duration`, then come back.
    Unplug,
    /// The network between a fraction of the fleet and the broker silently drops everything
    /// for `duration`: connections stay open, keep-alive finds out.
    Partition,
    /// A fraction of the fleet's messages take `delay` longer for `duration`.
    LatencySpike,
}

impl EventKind {
    /// The name as written in files.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Outage => "outage",
            EventKind::RebootWave => "reboot_wave",
            EventKind::ModbusFault => "modbus_fault",
            EventKind::Unplug => "unplug",
            EventKind::Partition => "partition",
            EventKind::LatencySpike => "latency_spike",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRaw {
    pub at: String,
    pub kind: EventKind,
    /// The share of the selected devices it touches (default: all of them).
    pub fraction: Option<f64>,
    pub duration: Option<String>,
    pub spread: Option<String>,
    /// Only devices of this cohort.
    pub cohort: Option<String>,
    /// Only these devices (numbers in the run, as in `{id}`).
    pub devices: Option<Vec<u32>>,
    /// modbus_fault: which fault (exception, delay, silence, drop_connection, bad_crc,
    /// truncated, swapped_words).
    pub fault: Option<String>,
    /// modbus_fault with fault = "exception": the code (default 6, server device busy).
    pub exception_code: Option<u8>,
    /// modbus_fault with fault = "delay": added to every answer; latency_spike: added to
    /// every message.
    pub delay: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloRaw {
    pub name: String,
    pub metric: String,
    pub max: Option<f64>,
    pub min: Option<f64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimBrokerRaw {
    /// Broker service time per request, microseconds (virtual clock only).
    pub service_us: DistSpec,
}

impl Default for SimBrokerRaw {
    fn default() -> Self {
        SimBrokerRaw {
            service_us: DistSpec::Lognormal {
                median: defaults::SIM_BROKER_SERVICE_MEDIAN_US,
                sigma: defaults::SIM_BROKER_SERVICE_SIGMA,
            },
        }
    }
}

// ---------------------------------------------------------------- validated ----------------

#[derive(Clone, Debug)]
pub enum FleetEventKind {
    Outage {
        duration: SimDuration,
    },
    RebootWave {
        spread: SimDuration,
    },
    ModbusFault {
        fault: ForcedFault,
        duration: SimDuration,
    },
    Unplug {
        duration: SimDuration,
    },
    Partition {
        duration: SimDuration,
    },
    LatencySpike {
        delay: SimDuration,
        duration: SimDuration,
    },
}

#[derive(Clone, Debug)]
pub struct FleetEvent {
    pub at: SimDuration,
    pub fraction: f64,
    pub cohort: Option<String>,
    /// Only these device numbers (sorted), when given.
    pub devices: Option<Vec<u32>>,
    pub kind: FleetEventKind,
}

impl FleetEvent {
    /// Whether the event may touch device `id` (before the fraction draw).
    pub fn names_device(&self, id: u32) -> bool {
        self.devices
            .as_ref()
            .is_none_or(|d| d.binary_search(&id).is_ok())
    }

    /// Whether the event may touch any of the devices `first .. first + n` (a gateway's
    /// children: a fault of its uplink reaches them all).
    pub fn names_any(&self, first: u32, n: u32) -> bool {
        self.devices.as_ref().is_none_or(|d| {
            let i = d.partition_point(|x| *x < first);
            d.get(i).is_some_and(|x| x - first < n)
        })
    }
}

/// Where Modbus slaves listen (`[modbus]` in a scenario).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusServeRaw {
    /// Address the TCP listeners bind to.
    #[serde(default = "defaults::modbus_listen")]
    pub listen: String,
    /// First TCP port; further ports count up from it. 0: the system picks free ports.
    #[serde(default = "defaults::modbus_port")]
    pub port: u16,
    /// Unit ids (devices) per TCP port, 1..=247.
    #[serde(default = "defaults::modbus_units_per_port")]
    pub units_per_port: u16,
    /// Connections one port accepts at once (more wait in the backlog).
    #[serde(default = "defaults::modbus_max_connections")]
    pub max_connections: u32,
    /// Cohorts served as RTU slaves on serial lines instead of TCP.
    #[serde(default)]
    pub rtu: Vec<RtuBusRaw>,
}

impl Default for ModbusServeRaw {
    fn default() -> Self {
        ModbusServeRaw {
            listen: defaults::modbus_listen(),
            port: defaults::modbus_port(),
            units_per_port: defaults::modbus_units_per_port(),
            max_connections: defaults::modbus_max_connections(),
            rtu: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    None,
    /// The Modbus serial line default.
    #[default]
    Even,
    Odd,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtuBusRaw {
    /// The cohort whose devices sit on the line(s).
    pub cohort: String,
    /// "pty": a virtual port pair per bus (a link to each is made in the run folder); or a
    /// device path such as /dev/ttyUSB0 for a real RS-485 adapter.
    #[serde(default = "defaults::pty")]
    pub port: String,
    #[serde(default = "defaults::baud")]
    pub baud: u32,
    #[serde(default)]
    pub parity: Parity,
    /// 1 or 2 (the Modbus rule: 2 without parity, 1 with).
    pub stop_bits: Option<u8>,
    /// Slaves per line, 1..=247: a cohort larger than that gets several lines (pty only).
    #[serde(default = "defaults::modbus_per_bus")]
    pub per_bus: u16,
}

#[derive(Clone, Debug)]
pub struct RtuBus {
    pub cohort: String,
    /// None: a PTY pair per bus.
    pub port: Option<String>,
    pub baud: u32,
    pub parity: Parity,
    pub stop_bits: u8,
    pub per_bus: u16,
}

#[derive(Clone, Debug)]
pub struct ModbusServe {
    pub listen: std::net::IpAddr,
    pub port: u16,
    pub units_per_port: u16,
    pub max_connections: u32,
    pub rtu: Vec<RtuBus>,
}

/// The scenario's own settings, validated; cohorts are resolved with their files in `load`.
#[derive(Clone, Debug)]
pub struct ScenarioSettings {
    pub name: String,
    pub description: String,
    pub seed: u64,
    pub duration: SimDuration,
    pub clock: Clock,
    pub start_epoch_ms: Option<u64>,
    pub drain: SimDuration,
    pub broker_urls: Vec<String>,
    /// `[broker.tls]` (also implied, with defaults, by `mqtts://` URLs).
    pub broker_tls: Option<crate::security::BrokerTls>,
    pub broker_auth: Option<crate::security::BrokerAuth>,
    pub mqtt_version: MqttVersion,
    pub tcp_nodelay: bool,
    pub source_addrs: Vec<std::net::IpAddr>,
    /// 0 = the adapter's default.
    pub max_connecting: u32,
    pub embedded_listeners: u16,
    pub ramp_mode: RampMode,
    pub ramp_per_second: f64,
    pub events: Vec<FleetEvent>,
    pub slos: Vec<SloSpec>,
    pub sim_broker_service_us: Dist,
    pub modbus: ModbusServe,
    pub serial: Vec<SerialPortCfg>,
    pub rollouts: Vec<crate::rollout::RolloutSpec>,
    pub ota_max_downloads: u32,
}

/// Checks one `[[events]]` entry (its `at` excepted: the caller places it in time) and turns it
/// into a fleet event at `at`. Shared by scenario files and the control API.
pub fn validate_event(
    c: &mut Checker,
    key: &str,
    e: &EventRaw,
    at: SimDuration,
    cohort_exists: impl Fn(&str) -> bool,
) -> FleetEvent {
    let fraction = e.fraction.unwrap_or(1.0);
    c.check(
        fraction > 0.0 && fraction <= 1.0,
        &format!("{key}.fraction"),
        fraction,
        "must be in (0, 1]",
    );
    if e.kind != EventKind::ModbusFault {
        for field in [
            ("fault", e.fault.is_some()),
            ("exception_code", e.exception_code.is_some()),
        ] {
            if field.1 {
                c.fail_key(
                    &format!("{key}.{}", field.0),
                    "applies to kind = \"modbus_fault\" only",
                );
            }
        }
    }
    if e.delay.is_some() && !matches!(e.kind, EventKind::ModbusFault | EventKind::LatencySpike) {
        c.fail_key(
            &format!("{key}.delay"),
            "applies to kind = \"latency_spike\" or \"modbus_fault\" only",
        );
    }
    if e.spread.is_some() && e.kind != EventKind::RebootWave {
        c.fail_key(
            &format!("{key}.spread"),
            format!("applies to reboot_wave, not {}", e.kind.as_str()),
        );
    }
    // How long the event lasts: required by every kind but reboot_wave.
    let lasting = |c: &mut Checker, hint: &str| match &e.duration {
        Some(d) => positive_duration(c, &format!("{key}.duration"), d),
        None => {
            c.fail_key(
                &format!("{key}.duration"),
                format!("is required for kind = \"{}\"{hint}", e.kind.as_str()),
            );
            SimDuration::ZERO
        }
    };
    let devices = e.devices.as_ref().map(|d| {
        if d.is_empty() {
            c.fail(
                &format!("{key}.devices"),
                "[]",
                "must name at least one device",
            );
        }
        let mut d = d.clone();
        d.sort_unstable();
        d.dedup();
        d
    });
    if let Some(name) = &e.cohort
        && !cohort_exists(name)
    {
        c.fail(
            &format!("{key}.cohort"),
            format!("{name:?}"),
            "must name a cohort of this scenario",
        );
    }
    let kind = match e.kind {
        EventKind::Outage => FleetEventKind::Outage {
            duration: lasting(c, ""),
        },
        EventKind::Partition => FleetEventKind::Partition {
            duration: lasting(c, ""),
        },
        EventKind::LatencySpike => {
            let duration = lasting(c, "");
            let delay = match &e.delay {
                Some(d) => positive_duration(c, &format!("{key}.delay"), d),
                None => {
                    c.fail_key(
                        &format!("{key}.delay"),
                        "is required for kind = \"latency_spike\" (added to every message, like \"800ms\")",
                    );
                    SimDuration::ZERO
                }
            };
            FleetEventKind::LatencySpike { delay, duration }
        }
        EventKind::ModbusFault => {
            let duration = lasting(c, "");
            let fault = match e.fault.as_deref() {
                Some("exception") => {
                    let code = e.exception_code.unwrap_or(6);
                    check_exception_code(c, &format!("{key}.exception_code"), code);
                    ForcedFault::Exception(code)
                }
                Some("delay") => match &e.delay {
                    Some(d) => ForcedFault::Delay(positive_duration(c, &format!("{key}.delay"), d)),
                    None => {
                        c.fail_key(
                            &format!("{key}.delay"),
                            "is required for fault = \"delay\" (like \"500ms\")",
                        );
                        ForcedFault::Silence
                    }
                },
                Some("silence") => ForcedFault::Silence,
                Some("drop_connection") => ForcedFault::DropConnection,
                Some("bad_crc") => ForcedFault::BadCrc,
                Some("truncated") => ForcedFault::Truncated,
                Some("swapped_words") => ForcedFault::SwappedWords,
                None => {
                    c.fail_key(
                        &format!("{key}.fault"),
                        format!(
                            "is required for kind = \"modbus_fault\": one of {}",
                            FORCED_FAULT_NAMES.join(", ")
                        ),
                    );
                    ForcedFault::Silence
                }
                other => {
                    c.fail(
                        &format!("{key}.fault"),
                        format!("{:?}", other.unwrap_or("")),
                        format!("must be one of {}", FORCED_FAULT_NAMES.join(", ")),
                    );
                    ForcedFault::Silence
                }
            };
            if e.exception_code.is_some() && !matches!(fault, ForcedFault::Exception(_)) {
                c.fail_key(
                    &format!("{key}.exception_code"),
                    "applies to fault = \"exception\" only",
                );
            }
            if e.delay.is_some() && !matches!(fault, ForcedFault::Delay(_)) {
                c.fail_key(&format!("{key}.delay"), "applies to fault = \"delay\" only");
            }
            FleetEventKind::ModbusFault { fault, duration }
        }
        EventKind::Unplug => FleetEventKind::Unplug {
            duration: lasting(c, " (how long the ports stay away)"),
        },
        EventKind::RebootWave => {
            if e.duration.is_some() {
                c.fail_key(
                    &format!("{key}.duration"),
                    "does not apply to a reboot wave, which takes spread",
                );
            }
            FleetEventKind::RebootWave {
                spread: e
                    .spread
                    .as_deref()
                    .map(|s| duration(c, &format!("{key}.spread"), s))
                    .unwrap_or(SimDuration::ZERO),
            }
        }
    };
    FleetEvent {
        at,
        fraction,
        cohort: e.cohort.clone(),
        devices,
        kind,
    }
}

/// Whether `url` asks for TLS (`mqtts://`, `ssl://`).
pub fn is_tls_url(url: &str) -> bool {
    url.starts_with("mqtts://") || url.starts_with("ssl://")
}

/// The `host:port` of a broker URL (its scheme and a trailing `/` taken off); None when the
/// scheme is not one fleetsim speaks.
pub fn broker_authority(url: &str) -> Option<&str> {
    ["mqtt://", "tcp://", "mqtts://", "ssl://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .map(|rest| rest.trim_end_matches('/'))
}

/// `mqtt://host:port` (port defaults to 1883) or `mqtts://host:port` (8883).
pub fn check_broker_url(url: &str) -> Result<(), String> {
    let rest = broker_authority(url).ok_or("must start with mqtt:// or mqtts:// (TLS)")?;
    let (host, port) = split_host_port(rest)?;
    if host.is_empty() {
        return Err("has no host".into());
    }
    if port == Some(0) {
        return Err("port 0 is not a port a broker listens on".into());
    }
    Ok(())
}

/// Splits `host:port`, `[v6]:port`, `host` or `[v6]`; the port must be 1..=65535 when given.
pub fn split_host_port(s: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or("`[` without `]` around an IPv6 address")?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(format!("unexpected `{after}` after the IPv6 address")),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| format!("port `{p}` is not a number 1..65535"))?,
        ),
        None => None,
    };
    Ok((host, port))
}

impl ScenarioFile {
    pub fn validate_settings(&self, file: &str) -> Result<ScenarioSettings, ConfigErrors> {
        let mut c = Checker::new(file);
        c.check(!self.name.is_empty(), "name", "\"\"", "must not be empty");
        let run_duration = positive_duration(&mut c, "duration", &self.duration);
        let drain = duration(&mut c, "drain", &self.drain);
        let mut broker_urls = Vec::new();
        if let Some(b) = &self.broker {
            if let Some(u) = &b.url {
                broker_urls.push(u.clone());
            }
            broker_urls.extend(b.urls.iter().cloned());
            if broker_urls.is_empty() {
                c.fail_key("broker", "needs url = \"mqtt://host:port\" or urls = [...]; remove [broker] to use the embedded broker");
            }
        }
        for (i, u) in broker_urls.iter().enumerate() {
            if let Err(e) = check_broker_url(u) {
                c.fail(&format!("broker.urls[{i}]"), format!("{u:?}"), e);
            }
        }
        let base_dir = std::path::Path::new(file)
            .parent()
            .unwrap_or(std::path::Path::new(""));
        let broker_tls = self
            .broker
            .as_ref()
            .and_then(|b| b.tls.as_ref())
            .map(|t| t.validate(&mut c, "broker.tls", base_dir));
        let broker_auth = self
            .broker
            .as_ref()
            .and_then(|b| b.auth.as_ref())
            .map(|a| a.validate(&mut c, "broker.auth", base_dir));
        let secure = broker_urls.iter().filter(|u| is_tls_url(u)).count();
        if secure > 0 && secure < broker_urls.len() {
            c.fail_key(
                "broker.urls",
                "mixes mqtts:// and mqtt:// URLs: every listener of a run speaks TLS or none does",
            );
        }
        if broker_tls.is_some() && secure == 0 && !broker_urls.is_empty() {
            c.fail_key(
                "broker.tls",
                "is set but the broker URLs are mqtt://: use mqtts://host:8883 to connect over TLS",
            );
        }
        let mut source_addrs = Vec::new();
        for (i, a) in self.mqtt.source_addrs.iter().enumerate() {
            match a.parse() {
                Ok(ip) => source_addrs.push(ip),
                Err(_) => c.fail(
                    &format!("mqtt.source_addrs[{i}]"),
                    format!("{a:?}"),
                    "must be an IP address like 127.0.0.2",
                ),
            }
        }
        c.check(
            self.ramp.per_second.is_finite() && self.ramp.per_second > 0.0,
            "ramp.per_second",
            self.ramp.per_second,
            "must be > 0",
        );
        c.check(
            !self.cohorts.is_empty(),
            "cohorts",
            "[]",
            "must list at least one cohort",
        );
        for (i, cohort) in self.cohorts.iter().enumerate() {
            if self.cohorts[..i].iter().any(|o| o.name == cohort.name) {
                c.fail(
                    &format!("cohorts[{i}].name"),
                    format!("{:?}", cohort.name),
                    "is used by an earlier cohort",
                );
            }
            if cohort.name.is_empty() {
                c.fail(&format!("cohorts[{i}].name"), "\"\"", "must not be empty");
            }
        }
        let mut events = Vec::new();
        for (i, e) in self.events.iter().enumerate() {
            let key = format!("events[{i}]");
            let at = duration(&mut c, &format!("{key}.at"), &e.at);
            if at >= run_duration && run_duration > SimDuration::ZERO {
                c.fail(
                    &format!("{key}.at"),
                    format!("{:?}", e.at),
                    format!("must be before the end of the run ({})", self.duration),
                );
            }
            let cohort_exists = |name: &str| self.cohorts.iter().any(|co| co.name == name);
            events.push(validate_event(&mut c, &key, e, at, cohort_exists));
        }
        let mut slos = Vec::new();
        for (i, s) in self.slo.iter().enumerate() {
            let key = format!("slo[{i}]");
            if !metric_is_known(&s.metric) {
                c.fail(
                    &format!("{key}.metric"),
                    format!("{:?}", s.metric),
                    format!("must be one of: {}", METRIC_NAMES.join(", ")),
                );
            }
            let bound = match (s.max, s.min) {
                (Some(max), None) => SloBound::Max(max),
                (None, Some(min)) => SloBound::Min(min),
                _ => {
                    c.fail_key(&key, "needs exactly one of max or min");
                    SloBound::Max(0.0)
                }
            };
            slos.push(SloSpec {
                name: s.name.clone(),
                metric: s.metric.clone(),
                bound,
            });
        }
        let sim_broker_service_us =
            Dist::validate(&self.sim_broker.service_us, "sim_broker.service_us", &mut c);
        let modbus = self.validate_modbus(&mut c);
        let mut serial = Vec::new();
        for (i, p) in self.serial.iter().enumerate() {
            let key = format!("serial[{i}]");
            if !self.cohorts.iter().any(|co| co.name == p.cohort) {
                c.fail(
                    &format!("{key}.cohort"),
                    format!("{:?}", p.cohort),
                    "must name a cohort of this scenario",
                );
            }
            if self.serial[..i].iter().any(|o| o.cohort == p.cohort) {
                c.fail(
                    &format!("{key}.cohort"),
                    format!("{:?}", p.cohort),
                    "has ports given by an earlier [[serial]] table",
                );
            }
            if self.modbus.rtu.iter().any(|b| b.cohort == p.cohort) {
                c.fail(
                    &format!("{key}.cohort"),
                    format!("{:?}", p.cohort),
                    "is on a [[modbus.rtu]] line already: a device has one serial port",
                );
            }
            if let Some(b) = p.baud
                && !crate::serial::BAUD_RATES.contains(&b)
            {
                c.fail(
                    &format!("{key}.baud"),
                    b,
                    "must be a standard rate like 9600 or 115200",
                );
            }
            let port = if p.port == "pty" {
                None
            } else if p.port.starts_with('/') {
                Some(p.port.clone())
            } else {
                c.fail(
                    &format!("{key}.port"),
                    format!("{:?}", p.port),
                    "must be \"pty\" (a virtual port pair per device) or a device path like /dev/ttyUSB0",
                );
                None
            };
            serial.push(SerialPortCfg {
                cohort: p.cohort.clone(),
                port,
                baud: p.baud,
            });
        }
        let rollouts: Vec<_> = self
            .rollouts
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let key = format!("rollouts[{i}]");
                for name in &r.cohorts {
                    if !self.cohorts.iter().any(|co| &co.name == name) {
                        c.fail(
                            &format!("{key}.cohorts"),
                            format!("{name:?}"),
                            "must name a cohort of this scenario",
                        );
                    }
                }
                if self.rollouts[..i].iter().any(|o| o.name == r.name) {
                    c.fail(
                        &format!("{key}.name"),
                        format!("{:?}", r.name),
                        "is used by an earlier rollout",
                    );
                }
                r.validate(&mut c, &key)
            })
            .collect();
        c.check(
            self.rollouts.len() <= usize::from(u16::MAX),
            "rollouts",
            self.rollouts.len(),
            "at most 65535 rollouts",
        );
        c.check(
            self.ota.max_downloads >= 1,
            "ota.max_downloads",
            self.ota.max_downloads,
            "must be at least 1",
        );
        c.errors.into_result(ScenarioSettings {
            rollouts,
            ota_max_downloads: self.ota.max_downloads,
            name: self.name.clone(),
            description: self.description.clone(),
            seed: self.seed,
            duration: run_duration,
            clock: self.clock,
            start_epoch_ms: self.start_epoch_ms,
            drain,
            broker_urls,
            broker_tls,
            broker_auth,
            mqtt_version: self.mqtt.version,
            tcp_nodelay: self.mqtt.tcp_nodelay,
            source_addrs,
            max_connecting: self.mqtt.max_connecting,
            embedded_listeners: self.embedded_broker.listeners,
            ramp_mode: self.ramp.mode,
            ramp_per_second: self.ramp.per_second,
            events,
            slos,
            sim_broker_service_us,
            modbus,
            serial,
        })
    }

    fn validate_modbus(&self, c: &mut Checker) -> ModbusServe {
        let m = &self.modbus;
        let listen = match m.listen.parse() {
            Ok(ip) => ip,
            Err(_) => {
                c.fail(
                    "modbus.listen",
                    format!("{:?}", m.listen),
                    "must be an IP address like 127.0.0.1 or 0.0.0.0",
                );
                std::net::IpAddr::from([127, 0, 0, 1])
            }
        };
        c.check(
            (1..=247).contains(&m.units_per_port),
            "modbus.units_per_port",
            m.units_per_port,
            "must be 1..=247 (Modbus unit ids)",
        );
        c.check(
            m.max_connections >= 1,
            "modbus.max_connections",
            m.max_connections,
            "must be at least 1",
        );
        let mut rtu = Vec::new();
        for (i, b) in m.rtu.iter().enumerate() {
            let key = format!("modbus.rtu[{i}]");
            if !self.cohorts.iter().any(|co| co.name == b.cohort) {
                c.fail(
                    &format!("{key}.cohort"),
                    format!("{:?}", b.cohort),
                    "must name a cohort of this scenario",
                );
            }
            if m.rtu[..i].iter().any(|o| o.cohort == b.cohort) {
                c.fail(
                    &format!("{key}.cohort"),
                    format!("{:?}", b.cohort),
                    "is already on an earlier [[modbus.rtu]] line",
                );
            }
            c.check(
                (1..=247).contains(&b.per_bus),
                &format!("{key}.per_bus"),
                b.per_bus,
                "must be 1..=247 (unit ids on one line)",
            );
            c.check(
                (50..=4_000_000).contains(&b.baud),
                &format!("{key}.baud"),
                b.baud,
                "must be a baud rate like 9600 or 19200",
            );
            let stop_bits = b
                .stop_bits
                .unwrap_or(if b.parity == Parity::None { 2 } else { 1 });
            c.check(
                matches!(stop_bits, 1 | 2),
                &format!("{key}.stop_bits"),
                stop_bits,
                "must be 1 or 2",
            );
            let port = if b.port == "pty" {
                None
            } else if b.port.starts_with('/') {
                Some(b.port.clone())
            } else {
                c.fail(
                    &format!("{key}.port"),
                    format!("{:?}", b.port),
                    "must be \"pty\" (a virtual port pair) or a device path like /dev/ttyUSB0",
                );
                None
            };
            rtu.push(RtuBus {
                cohort: b.cohort.clone(),
                port,
                baud: b.baud,
                parity: b.parity,
                stop_bits,
                per_bus: b.per_bus,
            });
        }
        ModbusServe {
            listen,
            port: m.port,
            units_per_port: m.units_per_port,
            max_connections: m.max_connections,
            rtu,
        }
    }
}
