//! The device: a sans-IO state machine. The engine calls `start` once and then `handle` with an
//! input and `now`; the device answers with effects (connect, publish, drop the link) and
//! events (for the event log and the counters) and says when it next wants to wake (`wake_at`).
//! It never reads a clock, touches a socket or uses global randomness.

use std::collections::VecDeque;
use std::ops::Range;

use rand::RngExt;
use rand_distr::{Distribution, Exp1};

use crate::command::{Command, parse_command};
use crate::defaults::RETRANSMIT_DELAY;
use crate::ids::{CohortId, DeviceId};
use crate::load::Cohort;
use crate::modbus::{FaultDecision, Flag, ForcedFault, Source, Table, Value, version_part};
use crate::payload::{push_fixed, push_json_str, push_u64};
use crate::profile::{Backoff, Qos};
use crate::seed::{DeviceRngs, RunSeed};
use crate::sensor::SensorState;
use crate::template::TemplateVars;
use crate::time::{SimDuration, SimTime};

#[path = "device_ota.rs"]
mod ota_cycle;
pub use ota_cycle::OtaInput;
use ota_cycle::OtaJob;

/// Where a device is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceState {
    /// Not powered on yet (waiting for its ramp-up slot).
    Off,
    /// Powered on or rebooting; connects when boot completes.
    Booting,
    /// A connection attempt is under way.
    Connecting,
    /// Session established.
    Online,
    /// Link or session lost; waiting to retry.
    Offline,
    /// Battery depleted: silent for the rest of the run.
    Dead,
}

impl DeviceState {
    pub const ALL: [DeviceState; 6] = [
        DeviceState::Off,
        DeviceState::Booting,
        DeviceState::Connecting,
        DeviceState::Online,
        DeviceState::Offline,
        DeviceState::Dead,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Off => "off",
            DeviceState::Booting => "booting",
            DeviceState::Connecting => "connecting",
            DeviceState::Online => "online",
            DeviceState::Offline => "offline",
            DeviceState::Dead => "dead",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Something that happened to the device from outside.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// A deadline the device asked for (`wake_at`) has come.
    Wake,
    /// The session is up (CONNACK accepted).
    Connected,
    /// The attempt failed (refused, timed out, TCP error).
    ConnectFailed,
    /// The session died (broker closed it, I/O error, keep-alive expired).
    LinkLost,
    /// A command arrived on the command topic.
    Command(&'a [u8]),
    /// A fleet outage: no link until `until`.
    Outage { until: SimTime },
    /// A reboot wave: reboot at `at`.
    Reboot { at: SimTime },
    /// The run is over: stop reporting, leave the session cleanly.
    Shutdown,
    /// A scheduled Modbus fault: every request gets it until `until`.
    ModbusFault { fault: ForcedFault, until: SimTime },
    /// The device's serial port is unplugged until `until`.
    Unplug { until: SimTime },
    /// A message arrived on one of the device's subscriptions (commands, OTA jobs).
    Message { topic: &'a [u8], payload: &'a [u8] },
    /// The update cycle: a rollout's job or cancellation, download progress.
    Ota(OtaInput<'a>),
}

/// Which of the device's topics a publish goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicKind {
    Telemetry,
    Response,
    /// The device's status, `online: true` (and `online: false` unless the profile has a topic
    /// of its own for that: Sparkplug's DDEATH, see `StatusOffline`).
    Status,
    /// An `online: false` status, on `identity.status_offline_topic` when the profile has one
    /// (else on `status_topic`, like `Status`).
    StatusOffline,
    /// An update's status or job request: the topic is the first `topic_len` bytes of the
    /// payload range (AWS IoT Jobs topics carry the job id).
    Ota,
}

/// A message to send. Its payload is `Effects::payload[payload]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Publish {
    pub topic: TopicKind,
    pub qos: Qos,
    pub retain: bool,
    /// Telemetry sequence number (0 for responses and status).
    pub seq: u64,
    /// When the message was due: latency is measured from here.
    pub scheduled: SimTime,
    /// Uplink latency of the simulated link: the adapter sends after this delay.
    pub delay: SimDuration,
    /// Sent from the offline buffer after a reconnect (latency includes the time offline).
    pub from_buffer: bool,
    pub payload: Range<u32>,
    /// `TopicKind::Ota`: the payload range starts with this many bytes of topic.
    pub topic_len: u32,
}

impl Publish {
    /// (topic, payload) of the bytes of `payload`: the topic is empty unless the publish
    /// carries its own (`TopicKind::Ota`).
    pub fn split<'b>(&self, bytes: &'b [u8]) -> (&'b [u8], &'b [u8]) {
        bytes.split_at((self.topic_len as usize).min(bytes.len()))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Open a session.
    Connect,
    Publish(Publish),
    /// The link dies abruptly: no DISCONNECT, the broker finds out (and sends the will).
    DropLink,
    /// Leave cleanly with DISCONNECT (reboot, end of run).
    Disconnect,
    /// Fetch the update's image over HTTP from `offset` (the URL is `Device::ota_download_url`).
    Download {
        offset: u64,
    },
    /// Stop the HTTP fetch under way (the link went down; the device resumes later).
    CancelDownload,
}

/// What the device reports about itself, for the event log and the counters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Event {
    PoweredOn,
    Booted,
    ConnectAttempt {
        attempt: u16,
    },
    NoLink {
        retry_in: SimDuration,
    },
    Connected,
    ConnectFailed {
        retry_in: SimDuration,
    },
    LinkLost {
        retry_in: SimDuration,
    },
    LinkDropped {
        down_for: SimDuration,
    },
    Outage {
        until: SimTime,
    },
    Report {
        seq: u64,
    },
    LostOnLink {
        seq: u64,
    },
    Retransmit {
        seq: u64,
    },
    Buffered {
        seq: u64,
    },
    DroppedOffline {
        seq: u64,
    },
    /// QoS 0 telemetry produced while disconnected, dropped (`reporting.buffer_qos0 = false`).
    DroppedQos0Offline {
        seq: u64,
    },
    /// Buffered telemetry older than `reporting.max_age` when its turn came, dropped.
    Expired {
        seq: u64,
    },
    Flushed {
        count: u32,
    },
    Command {
        name: &'static str,
    },
    CommandRejected,
    IntervalChanged {
        interval: SimDuration,
    },
    BatteryLow,
    BatteryDepleted,
    Reboot,
    Stopped,
    /// A device without MQTT took its periodic reading (what a Modbus master reads).
    Sampled {
        seq: u64,
    },
    /// A Modbus master wrote a point (index into the register map).
    RegisterWritten {
        point: u16,
    },
    /// A scheduled Modbus fault starts.
    ModbusFault {
        until: SimTime,
    },
    /// The serial port is unplugged until then.
    Unplugged {
        until: SimTime,
    },
    /// A job arrived (before it is checked).
    OtaJobReceived {
        rollout: Option<u16>,
    },
    /// A job was accepted and its download begins.
    OtaStarted {
        rollout: Option<u16>,
    },
    OtaStage {
        stage: crate::ota::OtaStage,
    },
    /// How the job ended, when it is decided (the truth, reported or not).
    OtaOutcome {
        outcome: crate::ota::Outcome,
        rollout: Option<u16>,
    },
    /// A status report of a rollout's job left the device (`outcome` None: the first
    /// IN_PROGRESS report); it reaches the orchestrator after `delay` unless `lost`.
    OtaReported {
        rollout: u16,
        outcome: Option<crate::ota::Outcome>,
        lost: bool,
        delay: SimDuration,
    },
    OtaStatusSent,
    OtaReportLost,
    OtaDownloadPaused,
    OtaDownloadRestarted,
    OtaDownloadStalled,
    OtaDownloadFailed {
        retryable: bool,
    },
    OtaRebootMidDownload,
    OtaPowerLoss,
    OtaBootFailed {
        attempt: u8,
    },
    OtaRolledBack,
    OtaCancelled {
        rollout: Option<u16>,
    },
    OtaCancelRefused,
    OtaBadMessage,
    /// AWS IoT Jobs: an update was rejected / re-sent; start-next or get was rejected; a job
    /// the backend no longer knows was dropped.
    OtaUpdateRejected,
    OtaUpdateRetried,
    OtaRequestRejected,
    OtaAbandoned,
}

/// Output buffers, owned by the engine and reused for every step.
#[derive(Debug, Default)]
pub struct Effects {
    pub list: Vec<Effect>,
    pub events: Vec<Event>,
    pub payload: Vec<u8>,
}

impl Effects {
    pub fn clear(&mut self) {
        self.list.clear();
        self.events.clear();
        self.payload.clear();
    }
    pub fn payload_of(&self, p: &Publish) -> &[u8] {
        &self.payload[p.payload.start as usize..p.payload.end as usize]
    }
}

/// What a device needs to know about the run and its cohort.
#[derive(Clone, Copy, Debug)]
pub struct DeviceCtx<'a> {
    pub cohort: &'a Cohort,
    /// Wall-clock milliseconds since the Unix epoch at `SimTime::ZERO`.
    pub epoch_ms: u64,
    /// No reports are made at or after this time.
    pub end: SimTime,
    /// Real sockets (wall clock): an update may download its image over HTTP.
    pub real_network: bool,
}

impl DeviceCtx<'_> {
    pub fn vars<'b>(&'b self, id: DeviceId, device_id: &'b [u8]) -> TemplateVars<'b> {
        self.cohort.vars(id, device_id)
    }
}

/// A telemetry message kept while offline.
#[derive(Clone, Debug, PartialEq)]
struct Buffered {
    seq: u64,
    scheduled: SimTime,
    payload: Box<[u8]>,
}

#[derive(Clone, Debug)]
pub struct Device {
    pub id: DeviceId,
    pub cohort: CohortId,
    state: DeviceState,
    rng: DeviceRngs,
    seq: u64,
    /// The one deadline the engine must wake the device at (min of the ones below).
    wake_at: SimTime,
    start_at: SimTime,
    next_report: SimTime,
    next_drop: SimTime,
    /// Boot completes / next connection attempt.
    retry_at: SimTime,
    reboot_at: SimTime,
    link_down_until: SimTime,
    interval: SimDuration,
    attempt: u16,
    low_battery: bool,
    battery_mah: f64,
    battery_at: SimTime,
    sensors: Box<[SensorState]>,
    offline: VecDeque<Buffered>,
    /// Only for devices with a register map.
    modbus: Option<Box<ModbusState>>,
    /// Firmware version in slot A and B (indexes into the model), and the slot that runs.
    fw_slots: [u16; 2],
    fw_active: u8,
    /// AWS IoT Jobs client tokens so far.
    ota_tokens: u32,
    /// Draws of the update cycle (faults, stage durations, bandwidth).
    ota_rng: rand_pcg::Pcg32,
    ota: Option<Box<OtaJob>>,
    /// A rollout's job that arrived while another job was under way: it starts after it.
    ota_next: Option<Box<(std::sync::Arc<crate::ota::JobDoc>, crate::ota::JobSource)>>,
}

/// Stream selector of the Modbus fault draws.
const STREAM_MODBUS: u64 = 0x6d6f_6462; // "modb"
/// Stream selector of the update cycle's draws.
const STREAM_OTA: u64 = 0x6f74_6131; // "ota1"

/// What a device with a peripheral (a Modbus register map, a serial persona) keeps.
#[derive(Clone, Debug)]
struct ModbusState {
    /// Fault draws, one fixed set per request.
    rng: rand_pcg::Pcg32,
    /// The latest reading of each sensor, as the telemetry carried it.
    last: Box<[f64]>,
    setpoints: Box<[f64]>,
    /// When the device last powered on or rebooted.
    up_since: SimTime,
    forced: Option<(ForcedFault, SimTime)>,
    /// Serial: the port is unplugged until then.
    unplugged_until: SimTime,
}

/// What a serial persona (or any observer) may know of a device at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceView {
    pub state: DeviceState,
    /// Powered on and not dead.
    pub powered: bool,
    /// Powered and booted.
    pub booted: bool,
    /// Its network (the radio link) is up.
    pub link_up: bool,
    /// It has an MQTT session.
    pub online: bool,
    pub low_battery: bool,
    /// Seconds since it last powered on or rebooted.
    pub uptime_s: f64,
    pub seq: u64,
    pub battery_percent: Option<f64>,
    /// The latest reading of each sensor (profile order).
    pub readings: Vec<f64>,
    pub interval_s: f64,
    /// Its serial port is unplugged (a scheduled event).
    pub unplugged: bool,
    /// The firmware version it runs now (an update changes it).
    pub firmware: String,
}

/// Backoff before attempt `attempt` (0-based): initial * multiplier^attempt, capped at max,
/// then reduced by up to `jitter` of itself ("equal jitter" when jitter = 0.5).
pub fn backoff_delay(b: &Backoff, attempt: u16, u: f64) -> SimDuration {
    let exp = b.multiplier.powi(i32::from(attempt.min(64)));
    let base = (b.initial.as_secs_f64() * exp).min(b.max.as_secs_f64());
    SimDuration::from_secs_f64(base * (1.0 - b.jitter * u))
}

impl Device {
    pub fn new(seed: RunSeed, id: DeviceId, cohort: &Cohort) -> Device {
        let mut rng = seed.device_rngs(id);
        let profile = &cohort.profile;
        let sensors = profile
            .sensors
            .iter()
            .map(|s| SensorState::new(s, &mut rng.values))
            .collect();
        let battery_mah = match &profile.battery {
            Some(b) => {
                let (lo, hi) = b.start_percent;
                let pct = if hi > lo {
                    rng.values.random_range(lo..hi)
                } else {
                    lo
                };
                b.capacity_mah * pct / 100.0
            }
            None => 0.0,
        };
        let modbus = (profile.modbus.is_some() || profile.serial.is_some()).then(|| {
            Box::new(ModbusState {
                rng: seed.device_stream(id, STREAM_MODBUS),
                last: vec![0.0; profile.sensors.len()].into(),
                setpoints: profile
                    .modbus
                    .as_ref()
                    .map(|m| m.setpoint_initial.clone().into())
                    .unwrap_or_default(),
                up_since: SimTime::ZERO,
                forced: None,
                unplugged_until: SimTime::ZERO,
            })
        });
        Device {
            modbus,
            fw_slots: [cohort.firmware_version; 2],
            fw_active: 0,
            ota_tokens: 0,
            ota_rng: seed.device_stream(id, STREAM_OTA),
            ota: None,
            ota_next: None,
            id,
            cohort: cohort.id,
            state: DeviceState::Off,
            rng,
            seq: 0,
            wake_at: SimTime::NEVER,
            start_at: SimTime::NEVER,
            next_report: SimTime::NEVER,
            next_drop: SimTime::NEVER,
            retry_at: SimTime::NEVER,
            reboot_at: SimTime::NEVER,
            link_down_until: SimTime::ZERO,
            interval: profile.reporting.interval,
            attempt: 0,
            low_battery: false,
            battery_mah,
            battery_at: SimTime::ZERO,
            sensors,
            offline: VecDeque::new(),
        }
    }

    pub fn state(&self) -> DeviceState {
        self.state
    }
    pub fn wake_at(&self) -> SimTime {
        self.wake_at
    }
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// The device's link generator: the simulated network draws its timing from it, so the
    /// timing a device sees depends only on the device.
    pub fn link_rng(&mut self) -> &mut rand_pcg::Pcg32 {
        &mut self.rng.link
    }
    /// Below its profile's low-battery threshold.
    pub fn low_battery(&self) -> bool {
        self.low_battery
    }

    pub fn buffered(&self) -> usize {
        self.offline.len()
    }
    /// Battery charge in percent, or None for mains power.
    pub fn battery_percent(&self, ctx: &DeviceCtx) -> Option<f64> {
        ctx.cohort
            .profile
            .battery
            .as_ref()
            .map(|b| (self.battery_mah / b.capacity_mah * 100.0).clamp(0.0, 100.0))
    }

    /// Schedules power-on at `at` (the device's ramp-up slot).
    pub fn power_on_at(&mut self, at: SimTime) {
        self.start_at = at;
        self.battery_at = at;
        self.recompute_wake();
    }

    /// Renders the device id into `out`.
    pub fn render_device_id(&self, ctx: &DeviceCtx, out: &mut Vec<u8>) {
        ctx.cohort.render_device_id(self.id, out);
    }

    /// One step. Effects and events are appended to `fx`.
    pub fn handle(&mut self, now: SimTime, input: Input, ctx: &DeviceCtx, fx: &mut Effects) {
        if self.state == DeviceState::Dead {
            return;
        }
        match input {
            Input::Wake => self.on_wake(now, ctx, fx),
            Input::Connected => {
                if self.state == DeviceState::Connecting {
                    self.state = DeviceState::Online;
                    self.attempt = 0;
                    fx.events.push(Event::Connected);
                    self.next_drop = self.draw_next_drop(now, ctx);
                    self.publish_status(now, true, ctx, fx);
                    self.flush_offline(now, ctx, fx);
                    self.ota_connected(now, ctx, fx);
                }
            }
            Input::ConnectFailed => {
                if self.state == DeviceState::Connecting {
                    self.state = DeviceState::Offline;
                    let retry_in = self.next_backoff(ctx);
                    self.retry_at = now + retry_in;
                    fx.events.push(Event::ConnectFailed { retry_in });
                }
            }
            Input::LinkLost => {
                if matches!(self.state, DeviceState::Online | DeviceState::Connecting) {
                    self.state = DeviceState::Offline;
                    self.next_drop = SimTime::NEVER;
                    let retry_in = self.next_backoff(ctx);
                    self.retry_at = now + retry_in;
                    fx.events.push(Event::LinkLost { retry_in });
                }
            }
            Input::Command(payload) => self.on_command(now, payload, ctx, fx),
            Input::Message { topic, payload } => {
                if !self.on_ota_message(now, topic, payload, ctx, fx) {
                    self.on_command(now, payload, ctx, fx);
                }
            }
            Input::Ota(input) => self.on_ota(now, input, ctx, fx),
            Input::Outage { until } => {
                self.link_down_until = self.link_down_until.max(until);
                fx.events.push(Event::Outage { until });
                if matches!(self.state, DeviceState::Online | DeviceState::Connecting) {
                    if ctx.cohort.mqtt {
                        fx.list.push(Effect::DropLink);
                    }
                    self.state = DeviceState::Offline;
                    self.next_drop = SimTime::NEVER;
                    let retry_in = self.next_backoff(ctx);
                    self.retry_at = now + retry_in;
                }
            }
            Input::Reboot { at } => {
                if self.state != DeviceState::Off {
                    self.reboot_at = self.reboot_at.min(at.max(now));
                }
            }
            Input::Unplug { until } => {
                if let Some(m) = &mut self.modbus {
                    m.unplugged_until = m.unplugged_until.max(until);
                    fx.events.push(Event::Unplugged { until });
                }
            }
            Input::ModbusFault { fault, until } => {
                if let Some(m) = &mut self.modbus {
                    m.forced = Some((fault, until));
                    fx.events.push(Event::ModbusFault { until });
                }
            }
            Input::Shutdown => {
                if ctx.cohort.mqtt
                    && matches!(self.state, DeviceState::Online | DeviceState::Connecting)
                {
                    self.publish_status(now, false, ctx, fx);
                    fx.list.push(Effect::Disconnect);
                }
                fx.events.push(Event::Stopped);
                self.state = DeviceState::Dead;
                self.wake_at = SimTime::NEVER;
                return;
            }
        }
        if self.state == DeviceState::Dead {
            return;
        }
        if self.ota.is_some() || self.ota_next.is_some() {
            self.ota_sync(now, ctx, fx);
        }
        self.refresh_wake(ctx);
    }

    fn on_wake(&mut self, now: SimTime, ctx: &DeviceCtx, fx: &mut Effects) {
        if self.state == DeviceState::Off {
            if self.start_at > now {
                return;
            }
            fx.events.push(Event::PoweredOn);
            for s in self.sensors.iter_mut() {
                s.start_at(now);
            }
            if self.modbus.is_some() {
                // A slave has readings in its registers from the start.
                self.sample(now, ctx);
            }
            // Spread reports over one interval so a fleet that starts together does not report together.
            let phase = self.interval.mul_f64(self.rng.values.random::<f64>());
            self.next_report = now + phase;
            self.boot(now, ctx);
        }
        if self.drain_battery(now, ctx, fx) {
            return;
        }
        while self.next_report <= now && self.next_report < ctx.end {
            let at = self.next_report;
            self.report(at, ctx, fx);
            if self.state == DeviceState::Dead {
                return;
            }
            self.next_report = at + self.next_interval(ctx);
        }
        if self.next_report >= ctx.end {
            self.next_report = SimTime::NEVER;
        }
        if self.ota_deadline() <= now {
            self.ota_wake(now, ctx, fx);
        }
        if self.next_drop <= now {
            self.next_drop = SimTime::NEVER;
            if self.state == DeviceState::Online {
                let down_for =
                    SimDuration::from_secs_f64(ctx.cohort.link.mttr_s.sample(&mut self.rng.link));
                fx.list.push(Effect::DropLink);
                fx.events.push(Event::LinkDropped { down_for });
                self.state = DeviceState::Offline;
                self.link_down_until = self.link_down_until.max(now + down_for);
                self.retry_at = now + down_for;
            }
        }
        if self.reboot_at <= now {
            self.ota_before_reboot(now, ctx, fx);
            self.reboot_at = SimTime::NEVER;
            fx.events.push(Event::Reboot);
            if ctx.cohort.mqtt
                && matches!(self.state, DeviceState::Online | DeviceState::Connecting)
            {
                fx.list.push(Effect::Disconnect);
            }
            self.boot(now, ctx);
        }
        if self.retry_at <= now {
            self.retry_at = SimTime::NEVER;
            match self.state {
                DeviceState::Booting => {
                    if self.ota_booted(now, ctx, fx) {
                        return;
                    }
                    fx.events.push(Event::Booted);
                    self.try_connect(now, ctx, fx);
                }
                DeviceState::Offline => self.try_connect(now, ctx, fx),
                _ => {}
            }
        }
    }

    fn boot(&mut self, now: SimTime, ctx: &DeviceCtx) {
        self.state = DeviceState::Booting;
        if let Some(m) = &mut self.modbus {
            m.up_since = now;
        }
        self.next_drop = SimTime::NEVER;
        let version = &ctx.cohort.firmware.versions[usize::from(self.running_version())];
        self.retry_at = now + SimDuration::from_secs_f64(version.boot_s.sample(&mut self.rng.link));
        self.attempt = 0;
    }

    fn try_connect(&mut self, now: SimTime, ctx: &DeviceCtx, fx: &mut Effects) {
        if self.link_down_until > now {
            // No network: the modem has nothing to connect over. Retry on the firmware's backoff.
            self.state = DeviceState::Offline;
            let retry_in = self.next_backoff(ctx);
            self.retry_at = now + retry_in;
            fx.events.push(Event::NoLink { retry_in });
            return;
        }
        if !ctx.cohort.mqtt {
            // No MQTT: on its network is as connected as this device gets.
            self.state = DeviceState::Online;
            self.attempt = 0;
            fx.events.push(Event::Connected);
            return;
        }
        self.state = DeviceState::Connecting;
        fx.events.push(Event::ConnectAttempt {
            attempt: self.attempt,
        });
        fx.list.push(Effect::Connect);
    }

    fn next_backoff(&mut self, ctx: &DeviceCtx) -> SimDuration {
        let u = self.rng.link.random::<f64>();
        let d = backoff_delay(&ctx.cohort.link.reconnect, self.attempt, u);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    fn draw_next_drop(&mut self, now: SimTime, ctx: &DeviceCtx) -> SimTime {
        match ctx.cohort.link.mtbf {
            Some(mtbf) => {
                let e: f64 = Exp1.sample(&mut self.rng.link);
                now + mtbf.mul_f64(e)
            }
            None => SimTime::NEVER,
        }
    }

    fn next_interval(&mut self, ctx: &DeviceCtx) -> SimDuration {
        let r = &ctx.cohort.profile.reporting;
        let mut d = self.interval;
        if r.jitter > 0.0 {
            let u = self.rng.values.random_range(-1.0..1.0);
            d = d.mul_f64(1.0 + r.jitter * u);
        }
        if self.low_battery
            && let Some(b) = &ctx.cohort.profile.battery
        {
            d = d.mul_f64(b.low_interval_factor);
        }
        d.max(SimDuration::from_micros(1))
    }

    /// Idle drain up to `now`. Returns true if the battery is now empty (device died).
    fn drain_battery(&mut self, now: SimTime, ctx: &DeviceCtx, fx: &mut Effects) -> bool {
        let Some(b) = &ctx.cohort.profile.battery else {
            return false;
        };
        let hours = now.saturating_since(self.battery_at).as_secs_f64() / 3600.0;
        self.battery_at = self.battery_at.max(now);
        self.battery_mah -= b.idle_ma * hours;
        self.check_battery(ctx, fx)
    }

    fn check_battery(&mut self, ctx: &DeviceCtx, fx: &mut Effects) -> bool {
        let Some(b) = &ctx.cohort.profile.battery else {
            return false;
        };
        if self.battery_mah <= 0.0 {
            self.battery_mah = 0.0;
            fx.events.push(Event::BatteryDepleted);
            if ctx.cohort.mqtt
                && matches!(self.state, DeviceState::Online | DeviceState::Connecting)
            {
                fx.list.push(Effect::DropLink);
            }
            self.state = DeviceState::Dead;
            self.wake_at = SimTime::NEVER;
            return true;
        }
        let low = self.battery_mah / b.capacity_mah * 100.0 <= b.low_percent;
        if low && !self.low_battery {
            fx.events.push(Event::BatteryLow);
        }
        self.low_battery = low;
        false
    }

    /// When the idle draw alone empties the battery.
    fn depletion_at(&self, ctx: &DeviceCtx) -> SimTime {
        match &ctx.cohort.profile.battery {
            Some(b) if b.idle_ma > 0.0 => {
                let hours = self.battery_mah / b.idle_ma;
                self.battery_at
                    + SimDuration::from_secs_f64(hours * 3600.0)
                    + SimDuration::from_micros(1)
            }
            _ => SimTime::NEVER,
        }
    }

    fn report(&mut self, at: SimTime, ctx: &DeviceCtx, fx: &mut Effects) {
        self.seq += 1;
        let seq = self.seq;
        if !ctx.cohort.mqtt {
            self.sample(at, ctx);
            fx.events.push(Event::Sampled { seq });
            return;
        }
        fx.events.push(Event::Report { seq });
        let start = fx.payload.len();
        self.encode_telemetry(at, seq, ctx, &mut fx.payload);
        let profile = &ctx.cohort.profile;
        if let Some(b) = &profile.battery {
            self.battery_mah -= b.tx_mah;
        }
        if self.state == DeviceState::Online {
            self.push_publish(at, TopicKind::Telemetry, seq, start, false, ctx, fx);
        } else if profile.reporting.qos == Qos::AtMostOnce && !profile.reporting.buffer_qos0 {
            fx.events.push(Event::DroppedQos0Offline { seq });
            fx.payload.truncate(start);
        } else {
            let cap = profile.reporting.offline_buffer as usize;
            if cap == 0 {
                fx.events.push(Event::DroppedOffline { seq });
            } else {
                if self.offline.len() >= cap
                    && let Some(old) = self.offline.pop_front()
                {
                    fx.events.push(Event::DroppedOffline { seq: old.seq });
                }
                self.offline.push_back(Buffered {
                    seq,
                    scheduled: at,
                    payload: fx.payload[start..].into(),
                });
                fx.events.push(Event::Buffered { seq });
            }
            fx.payload.truncate(start);
        }
        self.check_battery(ctx, fx);
    }

    /// Appends a publish of `fx.payload[start..]`, drawing the link's latency and loss; the
    /// publish, unless the link lost it (QoS 0).
    #[allow(clippy::too_many_arguments)]
    fn push_publish<'f>(
        &mut self,
        at: SimTime,
        topic: TopicKind,
        seq: u64,
        start: usize,
        from_buffer: bool,
        ctx: &DeviceCtx,
        fx: &'f mut Effects,
    ) -> Option<&'f mut Publish> {
        let profile = &ctx.cohort.profile;
        let (qos, retain) = match topic {
            TopicKind::Telemetry => (profile.reporting.qos, profile.reporting.retain),
            TopicKind::Response => (profile.command_qos, false),
            TopicKind::Status | TopicKind::StatusOffline => {
                (Qos::AtLeastOnce, profile.identity.retain_status)
            }
            TopicKind::Ota => (Qos::AtLeastOnce, false),
        };
        let link = &ctx.cohort.link;
        let mut delay =
            SimDuration::from_secs_f64(link.latency_ms.sample(&mut self.rng.link) / 1000.0);
        if link.loss > 0.0 && self.rng.link.random::<f64>() < link.loss {
            if qos == Qos::AtMostOnce {
                fx.events.push(Event::LostOnLink { seq });
                fx.payload.truncate(start);
                return None;
            }
            // TCP retransmits what the radio lost: the message arrives, late.
            fx.events.push(Event::Retransmit { seq });
            delay = delay + RETRANSMIT_DELAY;
        }
        let end = fx.payload.len();
        fx.list.push(Effect::Publish(Publish {
            topic,
            qos,
            retain,
            seq,
            scheduled: at,
            delay,
            from_buffer,
            payload: start as u32..end as u32,
            topic_len: 0,
        }));
        match fx.list.last_mut() {
            Some(Effect::Publish(p)) => Some(p),
            _ => None,
        }
    }

    /// Appends a publish of `fx.payload[start..]` whose first `topic_len` bytes are its topic
    /// (an update's status or job request, QoS 1), drawing the link's latency and loss.
    fn push_publish_topic(
        &mut self,
        at: SimTime,
        start: usize,
        topic_len: usize,
        ctx: &DeviceCtx,
        fx: &mut Effects,
    ) {
        if let Some(p) = self.push_publish(at, TopicKind::Ota, 0, start, false, ctx, fx) {
            p.topic_len = topic_len as u32;
        }
    }

    fn flush_offline(&mut self, now: SimTime, ctx: &DeviceCtx, fx: &mut Effects) {
        if self.offline.is_empty() {
            return;
        }
        let max_age = ctx.cohort.profile.reporting.max_age;
        let mut count = 0;
        while let Some(b) = self.offline.pop_front() {
            if let Some(age) = max_age
                && now.saturating_since(b.scheduled) > age
            {
                fx.events.push(Event::Expired { seq: b.seq });
                continue;
            }
            count += 1;
            let start = fx.payload.len();
            fx.payload.extend_from_slice(&b.payload);
            self.push_publish(
                b.scheduled,
                TopicKind::Telemetry,
                b.seq,
                start,
                true,
                ctx,
                fx,
            );
        }
        self.offline = VecDeque::new();
        if count > 0 {
            fx.events.push(Event::Flushed { count });
        }
    }

    fn publish_status(&mut self, now: SimTime, online: bool, ctx: &DeviceCtx, fx: &mut Effects) {
        if ctx.cohort.profile.identity.status_topic.is_none() {
            return;
        }
        let start = fx.payload.len();
        encode_status(self, online, now, ctx, &mut fx.payload);
        let kind = if online {
            TopicKind::Status
        } else {
            TopicKind::StatusOffline
        };
        self.push_publish(now, kind, 0, start, false, ctx, fx);
    }

    fn on_command(&mut self, now: SimTime, payload: &[u8], ctx: &DeviceCtx, fx: &mut Effects) {
        let profile = &ctx.cohort.profile;
        let msg = parse_command(payload);
        let allowed = match &msg.command {
            Ok(Command::SetInterval(_)) => profile.commands.set_interval,
            Ok(Command::Reboot) => profile.commands.reboot,
            Ok(Command::Ping) => profile.commands.ping,
            Ok(Command::ReportNow) => profile.commands.report_now,
            Err(_) => true,
        };
        let outcome: Result<&Command, String> = match &msg.command {
            Ok(c) if allowed => Ok(c),
            Ok(c) => Err(format!(
                "command {:?} is not enabled on this device",
                c.name()
            )),
            Err(e) => Err(e.clone()),
        };
        match &outcome {
            Ok(c) => fx.events.push(Event::Command { name: c.name() }),
            Err(_) => fx.events.push(Event::CommandRejected),
        }
        if profile.identity.response_topic.is_some() && self.state == DeviceState::Online {
            let start = fx.payload.len();
            self.encode_response(now, &msg, &outcome, ctx, &mut fx.payload);
            self.push_publish(now, TopicKind::Response, 0, start, false, ctx, fx);
        }
        match outcome {
            Ok(Command::SetInterval(d)) => self.set_interval(now, *d, fx),
            Ok(Command::Reboot) => self.reboot_at = now,
            Ok(Command::ReportNow) if now < ctx.end => {
                self.report(now, ctx, fx);
            }
            _ => {}
        }
        if self.reboot_at <= now {
            self.on_wake(now, ctx, fx);
        }
    }

    /// Re-times reporting: the next report comes at most one new interval from now.
    fn set_interval(&mut self, now: SimTime, d: SimDuration, fx: &mut Effects) {
        self.interval = d;
        fx.events.push(Event::IntervalChanged { interval: d });
        if self.next_report != SimTime::NEVER {
            self.next_report = (now + d).min(self.next_report.max(now));
        }
    }

    /// The telemetry JSON for report `seq` at `at`.
    pub fn encode_telemetry(&mut self, at: SimTime, seq: u64, ctx: &DeviceCtx, out: &mut Vec<u8>) {
        let profile = &ctx.cohort.profile;
        out.extend_from_slice(b"{\"device_id\":");
        self.push_device_id(ctx, out);
        out.extend_from_slice(b",\"seq\":");
        push_u64(out, seq);
        out.extend_from_slice(b",\"ts\":");
        push_u64(out, ctx.epoch_ms + at.as_millis());
        out.extend_from_slice(b",\"fw\":");
        let version = &ctx.cohort.firmware.versions[usize::from(self.running_version())];
        push_json_str(out, version.version.as_bytes());
        if profile.ota.is_some() {
            out.extend_from_slice(b",\"slot\":\"");
            out.extend_from_slice(self.active_slot().as_bytes());
            out.extend_from_slice(b"\",\"ota\":\"");
            out.extend_from_slice(self.ota_stage().as_str().as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b",\"battery\":");
        match self.battery_percent(ctx) {
            Some(p) => push_fixed(out, p, 1),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"values\":{");
        for (i, (spec, state)) in profile
            .sensors
            .iter()
            .zip(self.sensors.iter_mut())
            .enumerate()
        {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(spec.name.as_bytes());
            out.extend_from_slice(b"\":");
            let v = state.sample(spec, at, &mut self.rng.values);
            push_fixed(out, v, spec.decimals);
            if let Some(m) = &mut self.modbus {
                m.last[i] = round_to(v, spec.decimals);
            }
        }
        out.extend_from_slice(b"}}");
    }

    /// Takes a reading of every sensor (what the telemetry would carry) without encoding it.
    fn sample(&mut self, at: SimTime, ctx: &DeviceCtx) {
        let profile = &ctx.cohort.profile;
        for (i, (spec, state)) in profile
            .sensors
            .iter()
            .zip(self.sensors.iter_mut())
            .enumerate()
        {
            let v = state.sample(spec, at, &mut self.rng.values);
            if let Some(m) = &mut self.modbus {
                m.last[i] = round_to(v, spec.decimals);
            }
        }
    }

    /// The latest reading of each sensor, as a Modbus master sees it (empty without a map).
    pub fn last_readings(&self) -> &[f64] {
        self.modbus.as_ref().map(|m| &m.last[..]).unwrap_or(&[])
    }

    /// Each sensor's value now, without a draw: the last reading for devices with a register
    /// map, the model's noise-free value otherwise.
    pub fn sensor_values(&self, now: SimTime, ctx: &DeviceCtx) -> Vec<f64> {
        match &self.modbus {
            Some(m) => m.last.to_vec(),
            None => ctx
                .cohort
                .profile
                .sensors
                .iter()
                .zip(self.sensors.iter())
                .map(|(spec, st)| round_to(st.peek(spec, now), spec.decimals))
                .collect(),
        }
    }

    /// Whether `view` knows its uptime (devices with a register map or a serial port).
    pub fn tracks_uptime(&self) -> bool {
        self.modbus.is_some()
    }

    /// The device as an observer sees it at `now`.
    pub fn view(&self, now: SimTime, ctx: &DeviceCtx) -> DeviceView {
        let powered = !matches!(self.state, DeviceState::Off | DeviceState::Dead);
        let (uptime_s, unplugged) = match &self.modbus {
            Some(m) => (
                now.saturating_since(m.up_since).as_secs_f64(),
                now < m.unplugged_until,
            ),
            None => (0.0, false),
        };
        DeviceView {
            state: self.state,
            powered,
            booted: powered && self.state != DeviceState::Booting,
            link_up: powered && self.link_down_until <= now,
            online: self.state == DeviceState::Online && ctx.cohort.mqtt,
            low_battery: self.low_battery,
            uptime_s: if powered { uptime_s } else { 0.0 },
            seq: self.seq,
            battery_percent: self.battery_percent(ctx),
            readings: self.last_readings().to_vec(),
            interval_s: self.interval.as_secs_f64(),
            unplugged,
            firmware: ctx.cohort.firmware.versions[usize::from(self.running_version())]
                .version
                .clone(),
        }
    }

    /// Whether the device answers a Modbus master now: powered, booted, its network up.
    pub fn modbus_serving(&self, now: SimTime) -> bool {
        self.modbus.is_some()
            && matches!(
                self.state,
                DeviceState::Connecting | DeviceState::Online | DeviceState::Offline
            )
            && self.link_down_until <= now
    }

    /// Draws what happens to one request: the same draws per request whatever the faults are
    /// set to, so a device's fault sequence depends only on its seed and its request count.
    pub fn modbus_faults(&mut self, now: SimTime, ctx: &DeviceCtx) -> FaultDecision {
        let Some(m) = &mut self.modbus else {
            return FaultDecision::default();
        };
        let f = &ctx.cohort.modbus_faults;
        let rng = &mut m.rng;
        let mut hit = |p: f64| {
            let u: f64 = rng.random();
            p > 0.0 && u < p
        };
        let mut d = FaultDecision {
            silence: hit(f.silence),
            exception: None,
            delay: SimDuration::ZERO,
            drop_connection: hit(f.drop_connection),
            bad_crc: hit(f.bad_crc),
            truncated: hit(f.truncated),
            swapped_words: hit(f.swapped_words),
        };
        if hit(f.exception) {
            d.exception = Some(f.exception_code);
        }
        if let Some(dist) = &f.delay_ms {
            d.delay = SimDuration::from_secs_f64(dist.sample(&mut m.rng).max(0.0) / 1e3);
        }
        match m.forced {
            Some((fault, until)) if now < until => match fault {
                ForcedFault::Exception(code) => d.exception = Some(code),
                ForcedFault::Delay(extra) => d.delay = d.delay + extra,
                ForcedFault::Silence => d.silence = true,
                ForcedFault::DropConnection => d.drop_connection = true,
                ForcedFault::BadCrc => d.bad_crc = true,
                ForcedFault::Truncated => d.truncated = true,
                ForcedFault::SwappedWords => d.swapped_words = true,
            },
            Some(_) => m.forced = None,
            None => {}
        }
        d
    }

    /// Reads `count` registers (or bits, as 0/1) of `table` from `addr` into `out`; an
    /// exception code when the range is not readable.
    #[allow(clippy::too_many_arguments)]
    pub fn modbus_read(
        &self,
        table: Table,
        addr: u16,
        count: u16,
        now: SimTime,
        ctx: &DeviceCtx,
        swap_words: bool,
        out: &mut Vec<u16>,
    ) -> Result<(), u8> {
        let (Some(map), Some(m)) = (&ctx.cohort.profile.modbus, &self.modbus) else {
            return Err(crate::modbus::exception::GATEWAY_TARGET_FAILED);
        };
        let version = &ctx.cohort.firmware.versions[usize::from(self.running_version())];
        let flag = |f: Flag| -> bool {
            match f {
                Flag::Up => self.modbus_serving(now),
                Flag::Online => self.state == DeviceState::Online && ctx.cohort.mqtt,
                Flag::BatteryLow => self.low_battery,
                Flag::Buffering => !self.offline.is_empty(),
            }
        };
        map.read(
            table,
            addr,
            count,
            swap_words,
            |p| match &p.source {
                Source::Sensor(i) => {
                    Value::Number(m.last.get(usize::from(*i)).copied().unwrap_or(0.0))
                }
                Source::Battery => Value::Number(self.battery_percent(ctx).unwrap_or(0.0)),
                Source::FirmwareVersion => Value::Text(&version.version),
                Source::FirmwarePart(k) => Value::Number(version_part(&version.version, *k)),
                Source::Uptime => {
                    Value::Number(now.saturating_since(m.up_since).as_secs_f64().floor())
                }
                Source::Seq => Value::Number(self.seq as f64),
                Source::Interval => Value::Number(self.interval.as_secs_f64()),
                Source::Constant(x) => Value::Number(*x),
                Source::Text(t) => Value::Text(t),
                Source::Setpoint { slot, .. } => {
                    Value::Number(m.setpoints.get(usize::from(*slot)).copied().unwrap_or(0.0))
                }
                Source::Flag(f) => Value::Number(f64::from(u8::from(flag(*f)))),
                Source::Status(flags) => Value::Bits(
                    flags
                        .iter()
                        .enumerate()
                        .fold(0u16, |acc, (b, f)| acc | (u16::from(flag(*f)) << b)),
                ),
                Source::Reboot => Value::Number(0.0),
            },
            out,
        )
    }

    /// A master writes `values` (registers, or coils as 0/1) to `table` at `addr`. All or
    /// nothing: any point that may not take its value fails the whole write with an exception.
    pub fn modbus_write(
        &mut self,
        table: Table,
        addr: u16,
        values: &[u16],
        now: SimTime,
        ctx: &DeviceCtx,
        fx: &mut Effects,
    ) -> Result<(), u8> {
        let Some(map) = &ctx.cohort.profile.modbus else {
            return Err(crate::modbus::exception::GATEWAY_TARGET_FAILED);
        };
        let mut writes = Vec::new();
        map.decode_write(table, addr, values, &mut writes)?;
        for (idx, v) in writes {
            let Some(point) = map.points.get(usize::from(idx)) else {
                continue;
            };
            fx.events.push(Event::RegisterWritten { point: idx });
            match point.source {
                Source::Setpoint { slot, .. } => {
                    if let Some(m) = &mut self.modbus
                        && let Some(s) = m.setpoints.get_mut(usize::from(slot))
                    {
                        *s = v;
                    }
                }
                Source::Interval => self.set_interval(now, SimDuration::from_secs_f64(v), fx),
                Source::Reboot if v != 0.0 => self.reboot_at = now,
                _ => {}
            }
        }
        self.refresh_wake(ctx);
        Ok(())
    }

    /// Appends the device id as a JSON string, rendered in place (no allocation unless the
    /// template produced characters that need escaping).
    fn push_device_id(&self, ctx: &DeviceCtx, out: &mut Vec<u8>) {
        out.push(b'"');
        let start = out.len();
        self.render_device_id(ctx, out);
        if out[start..]
            .iter()
            .all(|b| *b >= 0x20 && *b != b'"' && *b != b'\\')
        {
            out.push(b'"');
        } else {
            let raw = out.split_off(start);
            out.pop();
            push_json_str(out, &raw);
        }
    }

    fn encode_response(
        &self,
        now: SimTime,
        msg: &crate::command::CommandMessage,
        outcome: &Result<&Command, String>,
        ctx: &DeviceCtx,
        out: &mut Vec<u8>,
    ) {
        out.extend_from_slice(b"{\"device_id\":");
        self.push_device_id(ctx, out);
        out.extend_from_slice(b",\"request_id\":");
        match &msg.request_id {
            Some(r) => push_json_str(out, r.as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"cmd\":");
        match &msg.name {
            Some(n) => push_json_str(out, n.as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"ts\":");
        push_u64(out, ctx.epoch_ms + now.as_millis());
        match outcome {
            Ok(Command::SetInterval(d)) => {
                out.extend_from_slice(b",\"status\":\"ok\",\"interval_ms\":");
                push_u64(out, d.as_millis());
            }
            Ok(Command::Ping) => out.extend_from_slice(b",\"status\":\"ok\",\"pong\":true"),
            Ok(_) => out.extend_from_slice(b",\"status\":\"ok\""),
            Err(e) => {
                out.extend_from_slice(b",\"status\":\"error\",\"error\":");
                push_json_str(out, e.as_bytes());
            }
        }
        out.push(b'}');
    }

    fn recompute_wake(&mut self) {
        self.wake_at = match self.state {
            DeviceState::Dead => SimTime::NEVER,
            DeviceState::Off => self.start_at,
            _ => self
                .next_report
                .min(self.next_drop)
                .min(self.retry_at)
                .min(self.reboot_at)
                .min(self.ota_deadline()),
        };
    }

    /// Like `recompute_wake`, also waking when the idle draw empties the battery.
    pub fn refresh_wake(&mut self, ctx: &DeviceCtx) {
        self.recompute_wake();
        if !matches!(self.state, DeviceState::Dead | DeviceState::Off) {
            self.wake_at = self.wake_at.min(self.depletion_at(ctx));
        }
    }
}

/// `v` rounded to `decimals` places, as the telemetry prints it.
fn round_to(v: f64, decimals: u8) -> f64 {
    let f = 10f64.powi(i32::from(decimals));
    (v * f).round() / f
}

/// The status message (retained; also the will, with `online: false`).
pub fn encode_status(dev: &Device, online: bool, now: SimTime, ctx: &DeviceCtx, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"device_id\":");
    dev.push_device_id(ctx, out);
    out.extend_from_slice(if online {
        b",\"online\":true"
    } else {
        b",\"online\":false"
    });
    out.extend_from_slice(b",\"ts\":");
    push_u64(out, ctx.epoch_ms + now.as_millis());
    out.extend_from_slice(b",\"fw\":");
    let version = &ctx.cohort.firmware.versions[usize::from(dev.running_version())];
    push_json_str(out, version.version.as_bytes());
    out.push(b'}');
}
