//! A shard: one thread's devices, their deadlines, their sessions and their metrics.
//!
//! This is the clock-agnostic core both drivers share (`virtual_clock.rs`, `wall_clock.rs`):
//! step a device, count and log what it did, hand its effects to the network (the simulated
//! broker, or a protocol `Adapter`), and schedule its next wake-up.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

use fleet_core::device::encode_status;
use fleet_core::profile::Qos;
use fleet_core::scenario::{FleetEvent, FleetEventKind};
use fleet_core::{
    Device, DeviceCtx, DeviceId, DeviceState, Effect, Effects, Event, Input, Publish, SimDuration,
    SimTime, TopicKind,
};
use fleet_metrics::live::{DeviceDetail, LiveEventKind, SensorReading};
use fleet_metrics::{Counters, ShardMetrics, ShardReport};

use crate::adapter::{Adapter, NetInput, SendOutcome};
use crate::control::{Control, ShardCmd, Watch};
use crate::event_log::EventLog;
use crate::plan::RunPlan;
use crate::query::{Query, QueryCx};
use crate::rollout::{Decision, Obs, ObsKind};
use crate::scheduler::{Due, Entry, Scheduler};
use fleet_core::device::OtaInput;
use fleet_core::ota::{JobSource, Outcome};

#[path = "shard_gateway.rs"]
mod gateway;
use gateway::{GatewayFaultKind, Gateways};

/// Salt for picking the devices a fleet event touches (mixed with the event's index).
const FLEET_EVENT_SALT: u64 = 0x6576_656e_7400_0000;
/// Salt for spreading a reboot wave.
const REBOOT_SPREAD_SALT: u64 = 0x7370_7265_6164_0000;

/// Where effects go: the simulated broker (virtual clock) or a protocol adapter (wall clock).
pub enum Net<'a, A: Adapter> {
    Sim,
    Real(&'a mut A),
}

/// One device's telemetry, counted where each message goes: published = acked + in flight +
/// buffered (the device's own count) + dropped, checked at every report.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    published: u32,
    acked: u32,
    dropped: u32,
    in_flight: u32,
}

/// A partition or a latency spike under way for one device.
#[derive(Clone, Copy, Debug, Default)]
struct Disturbance {
    partition_until: SimTime,
    spike_until: SimTime,
    spike: SimDuration,
}

/// A message held back for its simulated uplink latency (wall clock).
struct Parked {
    dev: u32,
    session: u32,
    publish: Publish,
    payload: Box<[u8]>,
}

pub struct Shard {
    pub id: u16,
    pub plan: Arc<RunPlan>,
    devices: Vec<Device>,
    /// The wake-up each device has in the scheduler (later entries for it are stale).
    scheduled: Vec<SimTime>,
    /// Session generation per device: bumped when a session ends, so late acks are recognised.
    sessions: Vec<u32>,
    /// Devices that have had a session at least once.
    connected_once: Vec<bool>,
    /// Per device: where its telemetry went.
    tally: Vec<Tally>,
    /// Devices under a partition or a latency spike (few, and only while it lasts).
    disturbed: HashMap<u32, Disturbance>,
    /// Persistent sessions: the last session each device left cleanly (forgetting what was in
    /// flight up to it).
    forgotten: HashMap<u32, u32>,
    /// Simulated broker: persistent sessions' unacknowledged telemetry (scheduled time, from
    /// the buffer), to send again on the next connection.
    sim_resend: HashMap<u32, Vec<(SimTime, bool)>>,
    pub sched: Scheduler,
    fx: Effects,
    pub metrics: ShardMetrics,
    log: Option<EventLog>,
    log_error: Option<io::Error>,
    parked: Vec<Option<Parked>>,
    free_slots: Vec<u32>,
    /// Parked messages and parked session ends not yet run; parked telemetry among them.
    parked_count: u64,
    parked_telemetry: u64,
    /// The longest uplink delay of a message parked by the step under way.
    step_delay: SimDuration,
    sim_in_flight: u64,
    inputs: Vec<(u32, NetInput)>,
    /// What devices did for the rollout orchestrator since the last tick.
    pub obs: Vec<Obs>,
    /// Commands from the TUI or the API (None: nobody steers this run).
    control: Option<Arc<Control>>,
    control_seen: u64,
    /// Recent history of the devices looked at.
    watch: Watch,
    /// Time spent paused, in ms (see `ctx`).
    pub epoch_shift_ms: u64,
    /// The gateways of this shard's devices that sit behind one (`[gateway]` profiles).
    gateways: Gateways,
    /// The run is over and the devices are saying goodbye (`shutdown_devices`).
    shutting_down: bool,
}

/// A device's context; `shift_ms` is the time the run spent paused (timestamps stay on the
/// wall clock while simulated time waited).
fn ctx<'a>(plan: &'a RunPlan, shift_ms: u64, device: &Device) -> DeviceCtx<'a> {
    DeviceCtx {
        cohort: &plan.fleet.cohorts[usize::from(device.cohort.0)],
        epoch_ms: plan.epoch_ms + shift_ms,
        end: plan.end,
        real_network: plan.clock == fleet_core::scenario::Clock::Wall,
    }
}

fn count_ota(c: &mut fleet_metrics::OtaCounters, e: &Event) {
    match e {
        Event::OtaJobReceived { .. } => c.jobs_received += 1,
        Event::OtaStarted { .. } => c.accepted += 1,
        Event::OtaOutcome { outcome, .. } => match outcome {
            Outcome::Succeeded => c.succeeded += 1,
            Outcome::Failed(s) => {
                c.failed += 1;
                c.failures_by_stage.bump(*s);
                if s.rolled_back() {
                    c.rolled_back += 1;
                }
            }
            Outcome::Rejected(_) => c.rejected += 1,
            Outcome::Bricked => c.bricked += 1,
        },
        Event::OtaStatusSent => c.status_reports += 1,
        Event::OtaReportLost => c.reports_lost += 1,
        Event::OtaDownloadPaused => c.download_pauses += 1,
        Event::OtaDownloadRestarted => c.download_restarts += 1,
        Event::OtaDownloadStalled => c.download_stalls += 1,
        Event::OtaDownloadFailed { .. } => c.download_failures += 1,
        Event::OtaRebootMidDownload => c.reboots_mid_download += 1,
        Event::OtaPowerLoss => c.power_losses += 1,
        Event::OtaBootFailed { .. } => c.boot_failures += 1,
        Event::OtaCancelled { .. } => c.cancelled += 1,
        Event::OtaCancelRefused => c.cancel_refused += 1,
        Event::OtaBadMessage => c.bad_messages += 1,
        Event::OtaUpdateRejected => c.update_rejections += 1,
        Event::OtaUpdateRetried => c.update_retries += 1,
        Event::OtaRequestRejected => c.request_rejections += 1,
        Event::OtaAbandoned => c.abandoned += 1,
        _ => {}
    }
}

/// The orchestrator's view of an event of a rollout's job (None for anything else).
fn observation(e: &Event, now: SimTime) -> Option<(u16, SimTime, ObsKind)> {
    match *e {
        Event::OtaStarted { rollout: Some(r) } => Some((r, now, ObsKind::TruthStarted)),
        Event::OtaOutcome {
            outcome,
            rollout: Some(r),
        } => Some((r, now, ObsKind::Truth(outcome.into()))),
        Event::OtaReported {
            rollout,
            outcome,
            lost: false,
            delay,
        } => Some((
            rollout,
            now + delay,
            ObsKind::Reported(outcome.map(Into::into)),
        )),
        Event::OtaReported {
            rollout,
            lost: true,
            ..
        } => Some((rollout, now, ObsKind::ReportLost)),
        Event::OtaCancelled { rollout: Some(r) } => Some((r, now, ObsKind::TruthCancelled)),
        _ => None,
    }
}

/// Counts a device's event. A gateway's child (`child`) has no session of its own: its
/// connects and losses are its gateway's, counted once by the gateway.
fn count(c: &mut Counters, t: &mut Tally, e: &Event, child: bool) {
    match e {
        Event::ConnectAttempt { .. }
        | Event::NoLink { .. }
        | Event::ConnectFailed { .. }
        | Event::LinkLost { .. }
            if child => {}
        Event::Report { .. } => {
            c.published += 1;
            t.published += 1;
        }
        Event::LostOnLink { .. } => {
            c.failed_lost_link += 1;
            t.dropped += 1;
        }
        Event::Retransmit { .. } => c.retransmits += 1,
        Event::DroppedOffline { .. } => {
            c.failed_offline += 1;
            t.dropped += 1;
        }
        Event::DroppedQos0Offline { .. } => {
            c.failed_qos0_offline += 1;
            t.dropped += 1;
        }
        Event::Expired { .. } => {
            c.failed_expired += 1;
            t.dropped += 1;
        }
        Event::Flushed { count } => c.flushed += u64::from(*count),
        Event::ConnectAttempt { .. } => c.connect_attempts += 1,
        Event::NoLink { .. } => c.connects_no_link += 1,
        Event::ConnectFailed { .. } => c.connects_failed += 1,
        Event::LinkLost { .. } => c.sessions_lost += 1,
        Event::LinkDropped { .. } => c.link_drops += 1,
        Event::Command { .. } => c.commands += 1,
        Event::CommandRejected => {
            c.commands += 1;
            c.commands_rejected += 1;
        }
        Event::Reboot => c.reboots += 1,
        Event::BatteryDepleted => c.batteries_depleted += 1,
        _ => {}
    }
}

fn topic_name(t: TopicKind) -> &'static str {
    match t {
        TopicKind::Telemetry => "telemetry",
        TopicKind::Response => "response",
        TopicKind::Status | TopicKind::StatusOffline => "status",
        TopicKind::Ota => "ota",
    }
}

impl Shard {
    pub fn new(id: u16, plan: Arc<RunPlan>, log_path: Option<&Path>) -> io::Result<Shard> {
        let seed = plan.seed;
        let devices: Vec<Device> = plan
            .shard_ids(id)
            .map(|i| {
                let id = DeviceId(i);
                Device::new(seed, id, plan.fleet.cohort_of(id))
            })
            .collect();
        let n = devices.len();
        let log = log_path.map(EventLog::create).transpose()?;
        let ids: Vec<DeviceId> = devices.iter().map(|d| d.id).collect();
        let gateways = Gateways::new(&plan, id, &ids);
        drop(ids);
        Ok(Shard {
            gateways,
            shutting_down: false,
            id,
            scheduled: vec![SimTime::NEVER; n],
            sessions: vec![0; n],
            connected_once: vec![false; n],
            tally: vec![Tally::default(); n],
            disturbed: HashMap::new(),
            forgotten: HashMap::new(),
            sim_resend: HashMap::new(),
            sched: Scheduler::with_capacity(n + 16),
            fx: Effects::default(),
            metrics: ShardMetrics::default(),
            log,
            log_error: None,
            parked: Vec::new(),
            free_slots: Vec::new(),
            parked_count: 0,
            parked_telemetry: 0,
            step_delay: SimDuration::ZERO,
            sim_in_flight: 0,
            inputs: Vec::new(),
            obs: Vec::new(),
            control: None,
            control_seen: 0,
            watch: Watch::default(),
            epoch_shift_ms: 0,
            devices,
            plan,
        })
    }

    /// Lets `control` steer this shard.
    pub fn set_control(&mut self, control: Option<Arc<Control>>) {
        self.control = control;
    }

    pub fn control(&self) -> Option<&Arc<Control>> {
        self.control.as_ref()
    }

    /// Carries out the commands queued for this shard since the last look.
    pub fn poll_control<A: Adapter>(&mut self, now: SimTime, net: &mut Net<A>) {
        let Some(c) = self.control.clone() else {
            return;
        };
        for cmd in c.take(self.id, now.as_micros(), &mut self.control_seen) {
            match cmd {
                ShardCmd::Fault { event, index } => {
                    self.run_fleet_event(&event, index, now, net);
                }
                ShardCmd::Inspect { local, reply } => {
                    let _ = reply.try_send(self.inspect(local, now));
                }
            }
        }
    }

    /// Describes device `local` and keeps its history from now on.
    fn inspect(&mut self, local: u32, now: SimTime) -> DeviceDetail {
        let Some(d) = self.devices.get(local as usize) else {
            return DeviceDetail::default();
        };
        let since = self.watch.watch(local, now.as_secs_f64());
        let c = ctx(&self.plan, self.epoch_shift_ms, d);
        let view = d.view(now, &c);
        let mut id = Vec::new();
        d.render_device_id(&c, &mut id);
        let profile = &c.cohort.profile;
        let sensors = profile
            .sensors
            .iter()
            .zip(d.sensor_values(now, &c))
            .map(|(s, value)| SensorReading {
                name: s.name.clone(),
                value,
                unit: s.unit.clone().unwrap_or_default(),
            })
            .collect();
        DeviceDetail {
            id: d.id.0,
            device_id: String::from_utf8_lossy(&id).into_owned(),
            cohort: c.cohort.name.clone(),
            profile: profile.name.clone(),
            shard: self.id,
            sim_time_s: now.as_secs_f64(),
            state: view.state.as_str().into(),
            powered: view.powered,
            link_up: view.link_up,
            uptime_s: d.tracks_uptime().then_some(view.uptime_s),
            battery_percent: view.battery_percent,
            low_battery: view.low_battery,
            sensors,
            seq: view.seq,
            buffered: d.buffered() as u64,
            interval_s: view.interval_s,
            firmware: format!("{} {}", c.cohort.firmware.name, view.firmware),
            slot: d.active_slot().into(),
            ota_stage: d.ota_stage().as_str().into(),
            recent: self.watch.history(local),
            watched_since_s: since,
        }
    }

    /// Schedules the fleet events, then every device's power-on. (Fleet events first: at equal
    /// times they come before device deadlines in every shard layout.)
    pub fn init(&mut self) {
        for (i, e) in self.plan.fleet.settings.events.iter().enumerate() {
            self.sched
                .push(SimTime::ZERO + e.at, 0, Due::FleetEvent { index: i as u32 });
        }
        self.init_gateways();
        for (i, d) in self.devices.iter_mut().enumerate() {
            let at = self.plan.start_time(d.id);
            d.power_on_at(at);
            self.sched.push(at, i as u32, Due::Wake);
            self.scheduled[i] = at;
        }
    }

    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Runs one scheduler entry at `now` (its due time in virtual runs, the wall clock's now
    /// otherwise).
    pub fn run_entry<A: Adapter>(&mut self, e: Entry, now: SimTime, net: &mut Net<A>) {
        let dev = e.dev;
        match e.due {
            Due::Wake => {
                if self.scheduled.get(dev as usize) != Some(&e.at) {
                    return; // superseded
                }
                self.scheduled[dev as usize] = SimTime::NEVER;
                self.metrics
                    .record_lag(now.saturating_since(e.at).as_micros());
                self.step(dev, now, Input::Wake, net);
            }
            Due::SimConnected { session, started } => {
                let d = &self.devices[dev as usize];
                if session == self.sessions[dev as usize] && d.state() == DeviceState::Connecting {
                    if self.gateways.is_child(dev) {
                        // A child attaches to its gateway's session, if it is still up
                        // (else it waits for it).
                        if self.child_may_attach(dev) {
                            self.child_connected(dev, now);
                            self.step(dev, now, Input::Connected, net);
                        }
                        return;
                    }
                    if self.partitioned(dev, now) {
                        // The CONNACK is lost: the attempt times out.
                        let timeout = self.plan.fleet.cohorts[usize::from(d.cohort.0)]
                            .link
                            .connect_timeout;
                        let at = (started + timeout).max(now);
                        let due = Due::SimCutOff {
                            session,
                            connecting: true,
                        };
                        self.sched.push(at, dev, due);
                        return;
                    }
                    self.connected(dev, now, now.saturating_since(started).as_micros());
                    self.resend_sim(dev, now);
                    self.step(dev, now, Input::Connected, net);
                }
            }
            Due::SimCutOff {
                session,
                connecting,
            } => {
                if session != self.sessions[dev as usize] {
                    return;
                }
                if connecting {
                    self.log_line(
                        dev,
                        now,
                        format_args!("connect_error reason=connect timed out"),
                        None,
                    );
                    self.step(dev, now, Input::ConnectFailed, net);
                } else {
                    self.sessions[dev as usize] = session.wrapping_add(1);
                    self.log_line(
                        dev,
                        now,
                        format_args!("session_error reason=keep-alive timeout (broker silent)"),
                        None,
                    );
                    self.step(dev, now, Input::LinkLost, net);
                }
            }
            Due::SimAck {
                session,
                scheduled,
                from_buffer,
            } => {
                let current = self
                    .gateways
                    .ack_session(dev)
                    .unwrap_or(self.sessions[dev as usize]);
                if session == current {
                    self.sim_in_flight -= 1;
                    self.acked(dev, now, scheduled, from_buffer);
                } else if self.keeps_in_flight(dev, session) {
                    // Still in flight: sent again on the device's next connection (at once if
                    // it has one already).
                    let r = self.sim_resend.entry(dev).or_default();
                    r.push((scheduled, from_buffer));
                    if self.devices[dev as usize].state() == DeviceState::Online {
                        self.resend_sim(dev, now);
                    }
                } else {
                    self.sim_in_flight -= 1;
                    self.unacked(dev, 1);
                }
            }
            Due::SendParked { slot } => {
                let Some(p) = self.parked.get_mut(slot as usize).and_then(Option::take) else {
                    return;
                };
                self.free_slots.push(slot);
                self.parked_count -= 1;
                let telemetry = p.publish.topic == TopicKind::Telemetry;
                if telemetry {
                    self.parked_telemetry -= 1;
                }
                // The session it was sent on must still be the device's (any close, loss or
                // new connect since makes it stale); a persistent session still owes a QoS >= 1
                // message whose session died while it waited: the adapter sends it on the next
                // connection.
                let live = p.session == self.sessions[p.dev as usize]
                    || (telemetry
                        && p.publish.qos != Qos::AtMostOnce
                        && self.keeps_in_flight(p.dev, p.session));
                match net {
                    Net::Real(adapter) if live => {
                        if telemetry {
                            // Out of the parking; `count_send` counts where it goes now.
                            self.tally[p.dev as usize].in_flight -= 1;
                        }
                        let d = &self.devices[p.dev as usize];
                        let outcome = adapter.publish(
                            p.dev,
                            d,
                            &ctx(&self.plan, self.epoch_shift_ms, d),
                            &p.publish,
                            &p.payload,
                        );
                        self.count_send(p.dev, &p.publish, p.payload.len(), outcome);
                    }
                    // Its session ended while it waited.
                    _ => {
                        if telemetry {
                            self.unacked(p.dev, 1);
                        }
                    }
                }
            }
            Due::CloseParked { session, clean } => {
                self.parked_count -= 1;
                if session == self.sessions[dev as usize] {
                    self.close_now(dev, clean, net);
                }
            }
            Due::FleetEvent { index } => self.fleet_event(index, now, net),
            Due::GatewayWake { .. } | Due::GatewayConnected { .. } | Due::GatewayCutOff { .. } => {
                self.gateway_entry(dev, e.due, now, net)
            }
            Due::OtaNotify { rollout } => {
                let plan = self.plan.clone();
                let Some(hub) = &plan.rollouts else { return };
                let Some(p) = hub.plan(rollout) else {
                    return;
                };
                let input = Input::Ota(OtaInput::Job {
                    doc: &p.doc,
                    source: JobSource::Rollout(rollout),
                });
                self.step(dev, now, input, net);
            }
        }
    }

    /// Carries out the orchestrator's decision taken at `d.at` for this shard's devices.
    pub fn apply_decision<A: Adapter>(&mut self, d: &Decision, now: SimTime, net: &mut Net<A>) {
        let plan = self.plan.clone();
        let Some(hub) = &plan.rollouts else { return };
        for (rollout, ranks, window) in &d.notify {
            let Some(p) = hub.plan(*rollout) else {
                continue;
            };
            let n = f64::from(ranks.end - ranks.start);
            for r in ranks.clone() {
                let Some(&id) = p.order.get(r as usize) else {
                    continue;
                };
                if let Some(local) = plan.local_index(self.id, id) {
                    let at = d.at + window.mul_f64(f64::from(r - ranks.start) / n);
                    self.sched
                        .push(at.max(now), local, Due::OtaNotify { rollout: *rollout });
                }
            }
        }
        for (rollout, ids) in &d.cancel {
            for id in ids {
                if let Some(local) = plan.local_index(self.id, *id) {
                    let input = Input::Ota(OtaInput::Cancel { rollout: *rollout });
                    self.step(local, now, input, net);
                }
            }
        }
    }

    fn fleet_event<A: Adapter>(&mut self, index: u32, now: SimTime, net: &mut Net<A>) {
        let plan = self.plan.clone();
        let Some(event) = plan.fleet.settings.events.get(index as usize) else {
            return;
        };
        if self.id == 0
            && let Some(c) = &self.control
        {
            c.note(
                LiveEventKind::Fault,
                now.as_secs_f64(),
                crate::control::describe_event(event),
            );
        }
        self.run_fleet_event(event, index, now, net);
    }

    /// Runs `event` on this shard's devices; `index` salts which devices it touches.
    fn run_fleet_event<A: Adapter>(
        &mut self,
        event: &FleetEvent,
        index: u32,
        now: SimTime,
        net: &mut Net<A>,
    ) {
        let plan = self.plan.clone();
        let cohort = event.cohort.as_ref().and_then(|name| {
            plan.fleet
                .cohorts
                .iter()
                .find(|c| &c.name == name)
                .map(|c| c.id)
        });
        let salt = FLEET_EVENT_SALT ^ u64::from(index);
        let link_fault = matches!(
            event.kind,
            FleetEventKind::Partition { .. }
                | FleetEventKind::LatencySpike { .. }
                | FleetEventKind::Outage { .. }
        );
        for dev in 0..self.devices.len() as u32 {
            let d = &self.devices[dev as usize];
            if cohort.is_some_and(|c| c != d.cohort) {
                continue;
            }
            // A fault of the uplink hits a gateway's children together: drawn for the gateway.
            if link_fault && let Some((first, size)) = self.gateways.fault_key(dev) {
                if !event.names_any(first.0, size)
                    || plan.seed.unit_draw(salt, first) >= event.fraction
                {
                    continue;
                }
                let fault = match event.kind {
                    FleetEventKind::Partition { duration } => GatewayFaultKind::Partition {
                        until: now + duration,
                    },
                    FleetEventKind::LatencySpike { delay, duration } => GatewayFaultKind::Spike {
                        delay,
                        until: now + duration,
                    },
                    FleetEventKind::Outage { duration } => GatewayFaultKind::Outage {
                        until: now + duration,
                    },
                    _ => continue,
                };
                self.gateway_fault(dev, index.wrapping_add(1), fault, now, net);
                continue;
            }
            if !event.names_device(d.id.0) || plan.seed.unit_draw(salt, d.id) >= event.fraction {
                continue;
            }
            let input = match event.kind {
                FleetEventKind::Partition { duration } => {
                    self.partition(dev, now, now + duration, net);
                    continue;
                }
                FleetEventKind::LatencySpike { delay, duration } => {
                    let until = now + duration;
                    let d = self.disturbed.entry(dev).or_default();
                    d.spike_until = d.spike_until.max(until);
                    d.spike = delay;
                    self.log_line(
                        dev,
                        now,
                        format_args!(
                            "latency_spike delay_us={} until_s={:.3}",
                            delay.as_micros(),
                            until.as_secs_f64()
                        ),
                        None,
                    );
                    continue;
                }
                FleetEventKind::Outage { duration } => Input::Outage {
                    until: now + duration,
                },
                FleetEventKind::Unplug { duration } => Input::Unplug {
                    until: now + duration,
                },
                FleetEventKind::ModbusFault { fault, duration } => Input::ModbusFault {
                    fault,
                    until: now + duration,
                },
                FleetEventKind::RebootWave { spread } => {
                    let u = plan
                        .seed
                        .unit_draw(REBOOT_SPREAD_SALT ^ u64::from(index), d.id);
                    Input::Reboot {
                        at: now + spread.mul_f64(u),
                    }
                }
            };
            self.step(dev, now, input, net);
        }
    }

    /// Cuts device `dev` off from the broker until `until` (see `Adapter::partition`); the
    /// simulated network loses the session when its keep-alive runs out first.
    fn partition<A: Adapter>(&mut self, dev: u32, now: SimTime, until: SimTime, net: &mut Net<A>) {
        let d = self.disturbed.entry(dev).or_default();
        d.partition_until = d.partition_until.max(until);
        self.log_line(
            dev,
            now,
            format_args!("partition until_s={:.3}", until.as_secs_f64()),
            None,
        );
        match net {
            // Adapters keep time on the run's real clock (ahead of device time by the pauses).
            Net::Real(adapter) => {
                adapter.partition(dev, until + SimDuration::from_millis(self.epoch_shift_ms))
            }
            Net::Sim => {
                let d = &self.devices[dev as usize];
                let keep_alive = self.plan.fleet.cohorts[usize::from(d.cohort.0)]
                    .profile
                    .mqtt
                    .keep_alive;
                let detect = now + keep_alive.mul_f64(1.5);
                if d.state() == DeviceState::Online
                    && keep_alive > SimDuration::ZERO
                    && detect < until
                {
                    let due = Due::SimCutOff {
                        session: self.sessions[dev as usize],
                        connecting: false,
                    };
                    self.sched.push(detect, dev, due);
                }
            }
        }
    }

    /// Whether a partition cuts device `dev` off at `at`.
    fn partitioned(&self, dev: u32, at: SimTime) -> bool {
        !self.disturbed.is_empty()
            && self
                .disturbed
                .get(&dev)
                .is_some_and(|d| d.partition_until > at)
    }

    /// The latency a spike adds to device `dev`'s messages at `now` (forgetting spent ones).
    fn spike(&mut self, dev: u32, now: SimTime) -> SimDuration {
        if let Some(d) = self.gateways.spike(dev, now) {
            return d;
        }
        if self.disturbed.is_empty() {
            return SimDuration::ZERO;
        }
        let Some(d) = self.disturbed.get(&dev) else {
            return SimDuration::ZERO;
        };
        if d.spike_until > now {
            return d.spike;
        }
        if d.partition_until <= now {
            self.disturbed.remove(&dev);
        }
        SimDuration::ZERO
    }

    /// Hands a protocol's input to its device.
    pub fn net_input<A: Adapter>(
        &mut self,
        dev: u32,
        input: NetInput,
        now: SimTime,
        net: &mut Net<A>,
    ) {
        if dev as usize >= self.devices.len() {
            return;
        }
        match input {
            NetInput::Connected { latency_us } => {
                if self.gateways.is_child(dev) {
                    self.child_connected(dev, now);
                } else {
                    self.connected(dev, now, latency_us);
                }
                self.step(dev, now, Input::Connected, net);
            }
            NetInput::Gateway(note) => self.gateway_note(dev, note, now),
            NetInput::ConnectFailed { reason } => {
                tracing::debug!(
                    device_id = self.devices[dev as usize].id.0,
                    reason,
                    "connect failed"
                );
                self.log_line(
                    dev,
                    now,
                    format_args!("connect_error reason={reason}"),
                    None,
                );
                self.step(dev, now, Input::ConnectFailed, net);
            }
            NetInput::SessionLost { reason, unacked } => {
                tracing::debug!(
                    device_id = self.devices[dev as usize].id.0,
                    reason,
                    unacked,
                    "session lost"
                );
                self.unacked(dev, unacked);
                self.sessions[dev as usize] = self.sessions[dev as usize].wrapping_add(1);
                self.log_line(
                    dev,
                    now,
                    format_args!("session_error reason={reason} unacked={unacked}"),
                    None,
                );
                self.step(dev, now, Input::LinkLost, net);
            }
            NetInput::Acked {
                scheduled,
                from_buffer,
            } => self.acked(dev, now, scheduled, from_buffer),
            NetInput::Rejected { reason } => {
                self.metrics.counters.failed_rejected += 1;
                let t = &mut self.tally[dev as usize];
                t.in_flight -= 1;
                t.dropped += 1;
                self.log_line(
                    dev,
                    now,
                    format_args!("rejected reason={reason:#04x}"),
                    None,
                );
            }
            NetInput::Message { topic, payload } => self.step(
                dev,
                now,
                Input::Message {
                    topic: &topic,
                    payload: &payload,
                },
                net,
            ),
            NetInput::DownloadProgress { bytes, total } => self.step(
                dev,
                now,
                Input::Ota(OtaInput::DownloadProgress { bytes, total }),
                net,
            ),
            NetInput::DownloadDone {
                bytes,
                sha256,
                fetched,
                resumed,
            } => {
                self.metrics.ota.http.attempt(fetched, resumed, false);
                self.step(
                    dev,
                    now,
                    Input::Ota(OtaInput::DownloadDone {
                        bytes,
                        sha256: &sha256,
                    }),
                    net,
                )
            }
            NetInput::DownloadFailed {
                bytes,
                retryable,
                reason,
                fetched,
                resumed,
            } => {
                self.metrics.ota.http.attempt(fetched, resumed, true);
                self.log_line(
                    dev,
                    now,
                    format_args!("download_error retryable={retryable} reason={reason:?}"),
                    None,
                );
                self.step(
                    dev,
                    now,
                    Input::Ota(OtaInput::DownloadFailed {
                        bytes,
                        retryable,
                        reason: &reason,
                    }),
                    net,
                )
            }
            NetInput::Malformed => self.metrics.counters.malformed_packets += 1,
        }
    }

    /// Passes everything in `inputs` (filled by the adapter) to the devices.
    pub fn drain_inputs<A: Adapter>(&mut self, now: SimTime, net: &mut Net<A>) {
        let mut inputs = std::mem::take(&mut self.inputs);
        for (dev, input) in inputs.drain(..) {
            self.net_input(dev, input, now, net);
        }
        self.inputs = inputs;
    }

    /// The buffer adapters fill with inputs (see `drain_inputs`).
    pub fn inputs_mut(&mut self) -> &mut Vec<(u32, NetInput)> {
        &mut self.inputs
    }

    fn connected(&mut self, dev: u32, now: SimTime, latency_us: u64) {
        self.metrics.connect_us.record(latency_us);
        self.metrics.counters.connects_ok += 1;
        if !std::mem::replace(&mut self.connected_once[dev as usize], true) {
            self.metrics.first_connects += 1;
            self.metrics.last_first_connect_us = now.as_micros();
        }
    }

    fn acked(&mut self, dev: u32, now: SimTime, scheduled: SimTime, from_buffer: bool) {
        self.metrics.counters.acked += 1;
        let t = &mut self.tally[dev as usize];
        t.in_flight -= 1;
        t.acked += 1;
        let latency = now.saturating_since(scheduled).as_micros();
        if !from_buffer {
            self.metrics.publish_ack_us.record(latency);
        }
        self.log_line(dev, now, format_args!("ack latency_us={latency}"), None);
    }

    /// Steps device `dev` with `input` and carries out what it asks for.
    pub fn step<A: Adapter>(&mut self, dev: u32, now: SimTime, input: Input, net: &mut Net<A>) {
        self.step_with(dev, now, net, |cx| {
            cx.device.handle(cx.now, input, cx.ctx, cx.fx);
        });
    }

    /// Runs a server's query on its device, then carries out what the device asked for.
    pub fn run_query<A: Adapter>(&mut self, q: Query, now: SimTime, net: &mut Net<A>) {
        match q {
            Query::Device { local, run } => {
                if (local as usize) < self.devices.len() {
                    self.step_with(local, now, net, run);
                }
            }
            Query::Metrics(run) => run(&mut self.metrics),
        }
    }

    /// Gives device `dev` to `f` (a step or a query) and carries out its effects.
    fn step_with<A: Adapter>(
        &mut self,
        dev: u32,
        now: SimTime,
        net: &mut Net<A>,
        f: impl FnOnce(QueryCx<'_, '_>),
    ) {
        let i = dev as usize;
        let mut fx = std::mem::take(&mut self.fx);
        fx.clear();
        self.step_delay = SimDuration::ZERO;
        {
            let d = &mut self.devices[i];
            let c = ctx(&self.plan, self.epoch_shift_ms, d);
            f(QueryCx {
                device: d,
                ctx: &c,
                now,
                fx: &mut fx,
                metrics: &mut self.metrics,
            });
        }
        self.metrics.counters.steps += 1;
        let id = self.devices[i].id;
        let child = self.gateways.is_child(dev);
        for e in &fx.events {
            count(&mut self.metrics.counters, &mut self.tally[i], e, child);
            count_ota(&mut self.metrics.ota, e);
            if let Some((rollout, at, kind)) = observation(e, now) {
                self.obs.push(Obs {
                    at,
                    device: id.0,
                    kind,
                    rollout,
                });
            }
            if let Some(log) = &mut self.log
                && let Err(err) = log.event(id, now, e)
            {
                self.log_error.get_or_insert(err);
            }
            if !self.watch.is_empty() {
                self.watch.record(dev, now.as_secs_f64(), || {
                    let mut line = Vec::new();
                    crate::event_log::write_event(&mut line, e);
                    String::from_utf8_lossy(&line).into_owned()
                });
            }
        }
        for effect in &fx.list {
            match effect {
                Effect::Connect => self.connect(dev, now, net),
                Effect::Publish(p) => self.publish(dev, now, p, fx.payload_of(p), net),
                Effect::DropLink => self.close(dev, now, false, net),
                Effect::Disconnect => self.close(dev, now, true, net),
                Effect::Download { offset } => {
                    if let Net::Real(adapter) = net {
                        let d = &self.devices[i];
                        if let Some(url) = d.ota_download_url() {
                            adapter.download(dev, url, *offset);
                        }
                    }
                }
                Effect::CancelDownload => {
                    if let Net::Real(adapter) = net {
                        adapter.cancel_download(dev);
                    }
                }
            }
        }
        self.fx = fx;
        let wake = self.devices[i].wake_at();
        if wake != self.scheduled[i] {
            self.scheduled[i] = wake;
            // A deadline after the run's last instant never runs (a device whose last report
            // is done waits for its battery to run flat): it is not worth a timer entry.
            if !wake.is_never() && wake <= self.plan.end + self.plan.drain {
                self.sched.push(wake, dev, Due::Wake);
            }
        }
    }

    fn connect<A: Adapter>(&mut self, dev: u32, now: SimTime, net: &mut Net<A>) {
        let i = dev as usize;
        // A new attempt replaces whatever session the device had.
        self.sessions[i] = self.sessions[i].wrapping_add(1);
        match net {
            Net::Sim if self.child_connect(dev, now) => {}
            Net::Sim => {
                let service = &self.plan.fleet.settings.sim_broker_service_us;
                let d = &mut self.devices[i];
                let link = &self.plan.fleet.cohorts[usize::from(d.cohort.0)].link;
                let rng = d.link_rng();
                // TCP handshake plus CONNECT/CONNACK: two round trips over the link.
                let one_way_ms: f64 = (0..4).map(|_| link.latency_ms.sample(rng)).sum();
                let mut latency =
                    SimDuration::from_secs_f64(one_way_ms / 1e3 + service.sample(rng) / 1e6);
                let session = self.sessions[i];
                let due = if self.partitioned(dev, now) {
                    latency = link.connect_timeout;
                    Due::SimCutOff {
                        session,
                        connecting: true,
                    }
                } else {
                    Due::SimConnected {
                        session,
                        started: now,
                    }
                };
                self.sched.push(now + latency, dev, due);
            }
            Net::Real(adapter) => {
                let d = &self.devices[i];
                adapter.connect(dev, d, &ctx(&self.plan, self.epoch_shift_ms, d), now);
            }
        }
    }

    fn publish<A: Adapter>(
        &mut self,
        dev: u32,
        now: SimTime,
        p: &Publish,
        payload: &[u8],
        net: &mut Net<A>,
    ) {
        let i = dev as usize;
        // At the end of the run the goodbyes (offline statuses) go at once: holding a million
        // of them for their simulated uplink latency would cost more than the fleet's state.
        let delay = if self.shutting_down && matches!(net, Net::Real(_)) {
            SimDuration::ZERO
        } else {
            p.delay + self.spike(dev, now)
        };
        if let Some(log) = &mut self.log {
            let r = log.line(
                self.devices[i].id,
                now,
                format_args!(
                    "publish {} seq={} qos={} delay_us={}",
                    topic_name(p.topic),
                    p.seq,
                    p.qos as u8,
                    delay.as_micros()
                ),
                Some(payload),
            );
            if let Err(err) = r {
                self.log_error.get_or_insert(err);
            }
        }
        match net {
            Net::Sim => {
                self.metrics.counters.sent += 1;
                self.metrics.counters.bytes_sent += payload.len() as u64;
                if p.topic != TopicKind::Telemetry {
                    return;
                }
                if p.qos == Qos::AtMostOnce {
                    self.metrics.counters.acked += 1;
                    self.tally[i].acked += 1;
                    return;
                }
                self.tally[i].in_flight += 1;
                let service = &self.plan.fleet.settings.sim_broker_service_us;
                let d = &mut self.devices[i];
                let link = &self.plan.fleet.cohorts[usize::from(d.cohort.0)].link;
                let rng = d.link_rng();
                let mut ms = link.latency_ms.sample(rng); // the ack's way back
                if p.qos == Qos::ExactlyOnce {
                    ms += link.latency_ms.sample(rng) * 2.0; // PUBREL / PUBCOMP
                }
                let back = SimDuration::from_secs_f64(ms / 1e3 + service.sample(rng) / 1e6);
                // A partition holds the message until it heals (TCP retransmits it then).
                let mut arrives = now + delay;
                if let Some(d) = self.disturbed.get(&dev)
                    && d.partition_until > arrives
                {
                    arrives = d.partition_until;
                }
                if let Some(until) = self.gateways.partitioned_until(dev, arrives) {
                    arrives = until;
                }
                self.sim_in_flight += 1;
                self.sched.push(
                    arrives + back,
                    dev,
                    Due::SimAck {
                        session: self.gateways.ack_session(dev).unwrap_or(self.sessions[i]),
                        scheduled: p.scheduled,
                        from_buffer: p.from_buffer,
                    },
                );
            }
            Net::Real(adapter) => {
                if delay > SimDuration::ZERO {
                    let parked = Parked {
                        dev,
                        session: self.sessions[i],
                        publish: p.clone(),
                        payload: payload.into(),
                    };
                    let slot = match self.free_slots.pop() {
                        Some(s) => {
                            self.parked[s as usize] = Some(parked);
                            s
                        }
                        None => {
                            self.parked.push(Some(parked));
                            (self.parked.len() - 1) as u32
                        }
                    };
                    self.sched.push(now + delay, dev, Due::SendParked { slot });
                    self.parked_count += 1;
                    if p.topic == TopicKind::Telemetry {
                        self.parked_telemetry += 1;
                        self.tally[i].in_flight += 1;
                    }
                    self.step_delay = self.step_delay.max(delay);
                    return;
                }
                let d = &self.devices[i];
                let outcome =
                    adapter.publish(dev, d, &ctx(&self.plan, self.epoch_shift_ms, d), p, payload);
                self.count_send(dev, p, payload.len(), outcome);
            }
        }
    }

    fn count_send(&mut self, dev: u32, p: &Publish, len: usize, outcome: SendOutcome) {
        let c = &mut self.metrics.counters;
        let t = &mut self.tally[dev as usize];
        let telemetry = p.topic == TopicKind::Telemetry;
        match outcome {
            SendOutcome::Written | SendOutcome::AwaitingAck => {
                c.sent += 1;
                c.bytes_sent += len as u64;
                if telemetry && outcome == SendOutcome::Written {
                    c.acked += 1;
                    t.acked += 1;
                } else if telemetry {
                    t.in_flight += 1;
                }
            }
            SendOutcome::Failed => {
                if telemetry {
                    c.failed_write += 1;
                    t.dropped += 1;
                }
            }
        }
    }

    /// `n` telemetry messages of `dev` in flight when their session ended: lost.
    fn unacked(&mut self, dev: u32, n: u32) {
        self.metrics.counters.failed_unacked += u64::from(n);
        let t = &mut self.tally[dev as usize];
        t.in_flight -= n;
        t.dropped += n;
    }

    fn close<A: Adapter>(&mut self, dev: u32, now: SimTime, clean: bool, net: &mut Net<A>) {
        if self.step_delay > SimDuration::ZERO {
            // Messages this step parked (a status "offline", a command's answer) go first.
            let session = self.sessions[dev as usize];
            self.sched.push(
                now + self.step_delay,
                dev,
                Due::CloseParked { session, clean },
            );
            self.parked_count += 1;
            return;
        }
        self.close_now(dev, clean, net);
    }

    fn close_now<A: Adapter>(&mut self, dev: u32, clean: bool, net: &mut Net<A>) {
        let i = dev as usize;
        let session = self.sessions[i];
        self.sessions[i] = session.wrapping_add(1);
        // Leaving cleanly, a persistent session's device forgets what it would have sent again.
        let forget = clean && self.persistent(dev);
        if forget {
            self.forgotten.insert(dev, session);
        }
        match net {
            Net::Real(adapter) => {
                let unacked = adapter.close(dev, clean);
                self.unacked(dev, unacked);
            }
            Net::Sim if forget => {
                let n = self.sim_resend.remove(&dev).map_or(0, |p| p.len()) as u32;
                self.sim_in_flight -= u64::from(n);
                self.unacked(dev, n);
            }
            Net::Sim => {}
        }
    }

    /// The device's profile asks for a persistent session (`clean_session = false`).
    fn persistent(&self, dev: u32) -> bool {
        let d = &self.devices[dev as usize];
        !self.plan.fleet.cohorts[usize::from(d.cohort.0)]
            .profile
            .mqtt
            .clean_session
    }

    /// Whether a message sent on `session`, which has ended, is still the device's to send
    /// again (a persistent session that has not left cleanly since).
    fn keeps_in_flight(&self, dev: u32, session: u32) -> bool {
        self.persistent(dev) && self.forgotten.get(&dev).is_none_or(|upto| session > *upto)
    }

    /// Simulated broker: a persistent session's first act on a new connection, its
    /// unacknowledged messages again; each is acknowledged a link round trip later.
    fn resend_sim(&mut self, dev: u32, now: SimTime) {
        let Some(pending) = self.sim_resend.remove(&dev) else {
            return;
        };
        let session = self.sessions[dev as usize];
        let d = &mut self.devices[dev as usize];
        let link = &self.plan.fleet.cohorts[usize::from(d.cohort.0)].link;
        let rng = d.link_rng();
        for (scheduled, from_buffer) in pending {
            let rtt_ms = link.latency_ms.sample(rng) * 2.0;
            let due = Due::SimAck {
                session,
                scheduled,
                from_buffer,
            };
            self.sched
                .push(now + SimDuration::from_secs_f64(rtt_ms / 1e3), dev, due);
        }
    }

    /// Ends every device's run (clean disconnects) at `now`.
    pub fn shutdown_devices<A: Adapter>(&mut self, now: SimTime, net: &mut Net<A>) {
        self.shutting_down = true;
        for dev in 0..self.devices.len() as u32 {
            if self.devices[dev as usize].state() != DeviceState::Dead {
                self.step(dev, now, Input::Shutdown, net);
            }
        }
    }

    /// QoS >= 1 telemetry awaiting acknowledgement, and telemetry waiting for its uplink latency.
    pub fn in_flight<A: Adapter>(&self, net: &Net<A>) -> u64 {
        match net {
            Net::Sim => self.sim_in_flight,
            Net::Real(a) => a.in_flight() + self.parked_telemetry,
        }
    }

    /// Parked messages or session ends are still to run.
    pub fn has_parked(&self) -> bool {
        self.parked_count > 0
    }

    /// The metrics report for this interval, with the gauges brought up to date.
    pub fn report<A: Adapter>(&mut self, now: SimTime, done: bool, net: &Net<A>) -> ShardReport {
        let mut states = [0u64; fleet_metrics::STATE_COUNT];
        let mut buffered = 0u64;
        let mut stages = [0u64; fleet_metrics::ota::OTA_STAGE_COUNT];
        let mut versions = vec![0u64; self.plan.version_labels.len()];
        let mut low_battery = 0u64;
        let mut unaccounted = 0u64;
        for (d, t) in self.devices.iter().zip(&self.tally) {
            if t.published != t.acked + t.in_flight + t.dropped + d.buffered() as u32 {
                unaccounted += 1;
            }
            states[d.state().index()] += 1;
            if d.low_battery() && d.state() != DeviceState::Dead {
                low_battery += 1;
            }
            buffered += d.buffered() as u64;
            let stage = d.ota_stage();
            stages[stage.index()] += 1;
            if stage == fleet_core::ota::OtaStage::Bricked {
                continue; // what a bricked device runs, nobody can tell
            }
            let base = self
                .plan
                .version_base
                .get(usize::from(d.cohort.0))
                .copied()
                .unwrap_or(0);
            if let Some(v) = versions.get_mut((base + u32::from(d.running_version())) as usize) {
                *v += 1;
            }
        }
        self.metrics.ota_stages = stages;
        self.metrics.versions = versions;
        self.metrics.states = states;
        self.metrics.low_battery = low_battery;
        self.metrics.buffered = buffered;
        self.metrics.devices_unaccounted = unaccounted;
        self.metrics.in_flight = self.in_flight(net);
        self.metrics.take_report(self.id, now.as_micros(), done)
    }

    fn log_line(
        &mut self,
        dev: u32,
        now: SimTime,
        text: std::fmt::Arguments,
        payload: Option<&[u8]>,
    ) {
        if !self.watch.is_empty() {
            self.watch
                .record(dev, now.as_secs_f64(), || text.to_string());
        }
        if let Some(log) = &mut self.log
            && let Err(err) = log.line(self.devices[dev as usize].id, now, text, payload)
        {
            self.log_error.get_or_insert(err);
        }
    }

    /// Flushes the event log; the first write error of the run, if any.
    pub fn finish_log(&mut self) -> io::Result<()> {
        if let Some(err) = self.log_error.take() {
            return Err(err);
        }
        match &mut self.log {
            Some(log) => log.flush(),
            None => Ok(()),
        }
    }

    /// The encoded will (status "offline") of a device, for adapters that set one up.
    pub fn will_payload(device: &Device, ctx: &DeviceCtx, now: SimTime, out: &mut Vec<u8>) {
        encode_status(device, false, now, ctx, out);
    }
}
