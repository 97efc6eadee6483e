//! Gateways (profiles with `[gateway]`): many devices, the gateway's children, behind one MQTT
//! session. Each child keeps its own state machine, seed, telemetry and tally; what it shares
//! with its siblings is the gateway's session: when it drops, every child goes offline, and
//! they come back with it.
//!
//! A gateway's children are spread over the shards like any devices (`RunPlan::shard_ids`), so
//! every shard holding children of a gateway keeps a `GatewayLink` for it. On the virtual clock
//! the link *is* the simulated session: it powers on with its first child, connects, loses its
//! session to outages and partitions and reconnects on its own backoff, every draw from the
//! gateway's own generator, so every shard's copy lives exactly the same life, whatever the
//! shard layout. One copy, the gateway's *home* (the shard of its first child), logs the
//! gateway's events and counts its session in the fleet's connection counters. On the wall
//! clock the session is a real one, run by the adapter (fleet-mqtt's gateway mux); the links
//! then only say which children share a gateway (for faults and their logs).

use fleet_core::scenario::Clock;
use fleet_core::{DeviceId, DeviceState, Input, SimDuration, SimTime};
use rand::RngExt;

use super::{Net, Shard, ctx};
use crate::adapter::{Adapter, GatewayFault, GatewayNote};
use crate::plan::RunPlan;
use crate::scheduler::Due;

/// Stream selector of a gateway's generator (seeded by its first child's id).
const STREAM_GATEWAY: u64 = 0x6777_6179; // "gway"
/// `Gateways::of` of a device without a gateway.
const NONE: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    /// Not powered on yet.
    Off,
    /// No session; a retry is scheduled.
    Down,
    Connecting,
    Up,
}

/// One gateway as a shard sees it.
pub(super) struct GatewayLink {
    cohort: u16,
    index: u32,
    /// Its first child: the key of its fault draws and its generator.
    first: DeviceId,
    /// Its first child this process owns: the gateway powers on with it.
    first_owned: DeviceId,
    /// How many children it has in all (on every shard and process).
    size: u32,
    /// This shard logs the gateway's events and counts its session.
    home: bool,
    /// This shard's children of the gateway (local indices, ascending).
    children: Vec<u32>,
    state: LinkState,
    /// Session number: bumped by every attempt and every loss, so stale deadlines and acks are
    /// recognised.
    session: u32,
    attempt: u16,
    rng: rand_pcg::Pcg32,
    link_down_until: SimTime,
    partition_until: SimTime,
    spike_until: SimTime,
    spike: SimDuration,
    /// The last fleet event (index + 1) that touched it, so one event hits it once.
    fault_stamp: u32,
}

/// The gateways of one shard's devices.
#[derive(Default)]
pub(super) struct Gateways {
    /// Per local device: its gateway's slot in `links`, or `NONE`. Empty without gateways.
    of: Vec<u32>,
    links: Vec<GatewayLink>,
}

impl Gateways {
    /// The gateways of the devices `ids` (shard `shard`'s, in local order).
    pub(super) fn new(plan: &RunPlan, shard: u16, ids: &[DeviceId]) -> Gateways {
        if !plan.fleet.cohorts.iter().any(|c| c.gateways() > 0) {
            return Gateways::default();
        }
        let mut of = vec![NONE; ids.len()];
        let mut links: Vec<GatewayLink> = Vec::new();
        let mut slots: std::collections::HashMap<(u16, u32), u32> = Default::default();
        for (local, id) in ids.iter().enumerate() {
            let cohort = plan.fleet.cohort_of(*id);
            let Some(g) = cohort.gateway_of(*id) else {
                continue;
            };
            let slot = *slots.entry((cohort.id.0, g.index)).or_insert_with(|| {
                // The home is the shard of the gateway's first child this process owns.
                let (first_owned, home) = (g.first.0..g.first.0 + g.children)
                    .find_map(|c| {
                        (0..plan.shards)
                            .find(|k| plan.local_index(*k, c).is_some())
                            .map(|k| (DeviceId(c), k == shard))
                    })
                    .unwrap_or((*id, true));
                links.push(GatewayLink {
                    cohort: cohort.id.0,
                    index: g.index,
                    first: g.first,
                    first_owned,
                    size: g.children,
                    home,
                    children: Vec::new(),
                    state: LinkState::Off,
                    session: 0,
                    attempt: 0,
                    rng: plan.seed.device_stream(g.first, STREAM_GATEWAY),
                    link_down_until: SimTime::ZERO,
                    partition_until: SimTime::ZERO,
                    spike_until: SimTime::ZERO,
                    spike: SimDuration::ZERO,
                    fault_stamp: 0,
                });
                (links.len() - 1) as u32
            });
            of[local] = slot;
            links[slot as usize].children.push(local as u32);
        }
        for l in &mut links {
            l.children.shrink_to_fit();
        }
        // Process slices never cut a gateway's children apart (`Cohort::in_slice`): one
        // gateway, one process, one session.
        Gateways { of, links }
    }

    /// The slot of device `dev`'s gateway.
    pub(super) fn slot(&self, dev: u32) -> Option<usize> {
        match self.of.get(dev as usize) {
            Some(&s) if s != NONE => Some(s as usize),
            _ => None,
        }
    }

    /// Device `dev`'s gateway as fleet events see it: its first child (the key of the draw
    /// that picks it) and its number of children.
    pub(super) fn fault_key(&self, dev: u32) -> Option<(DeviceId, u32)> {
        let l = &self.links[self.slot(dev)?];
        Some((l.first, l.size))
    }

    pub(super) fn is_child(&self, dev: u32) -> bool {
        self.slot(dev).is_some()
    }

    /// The session number that device `dev`'s acknowledgements belong to: its gateway's for a
    /// child (a child that leaves does not take its sent messages with it), else None.
    pub(super) fn ack_session(&self, dev: u32) -> Option<u32> {
        self.slot(dev).map(|s| self.links[s].session)
    }

    /// When a partition of device `dev`'s gateway heals, if one is under way at `at`.
    pub(super) fn partitioned_until(&self, dev: u32, at: SimTime) -> Option<SimTime> {
        let l = &self.links[self.slot(dev)?];
        (l.partition_until > at).then_some(l.partition_until)
    }

    /// The latency a spike of device `dev`'s gateway adds at `now`.
    pub(super) fn spike(&self, dev: u32, now: SimTime) -> Option<SimDuration> {
        let l = &self.links[self.slot(dev)?];
        Some(if l.spike_until > now {
            l.spike
        } else {
            SimDuration::ZERO
        })
    }

    /// Whether the gateway of device `dev` has its session (virtual clock).
    fn up(&self, dev: u32) -> bool {
        self.slot(dev)
            .is_some_and(|s| self.links[s].state == LinkState::Up)
    }
}

impl Shard {
    /// Virtual clock: every gateway powers on with its first child (scheduled before the
    /// devices, so at equal times it comes first in every shard layout).
    pub(super) fn init_gateways(&mut self) {
        if self.plan.clock != Clock::Virtual {
            return;
        }
        for slot in 0..self.gateways.links.len() {
            // Ramps power devices on in id order: its first child is the first up.
            let at = self.plan.start_time(self.gateways.links[slot].first_owned);
            self.sched
                .push(at, slot as u32, Due::GatewayWake { session: 0 });
        }
    }

    /// Renders a gateway's id (for log lines).
    fn gateway_name(&self, slot: usize) -> String {
        let l = &self.gateways.links[slot];
        let mut out = Vec::new();
        self.plan.fleet.cohorts[usize::from(l.cohort)].render_gateway_id(l.index, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A line about the gateway in the event log, under its first child here (home only).
    fn gateway_log(&mut self, slot: usize, now: SimTime, what: std::fmt::Arguments) {
        let l = &self.gateways.links[slot];
        if !l.home || (self.log.is_none() && self.watch.is_empty()) {
            return;
        }
        let Some(&dev) = l.children.first() else {
            return;
        };
        let name = self.gateway_name(slot);
        self.log_line(dev, now, format_args!("gateway {name} {what}"), None);
    }

    /// Runs a gateway's deadline (virtual clock).
    pub(super) fn gateway_entry<A: Adapter>(
        &mut self,
        slot: u32,
        due: Due,
        now: SimTime,
        net: &mut Net<A>,
    ) {
        let slot = slot as usize;
        let Some(l) = self.gateways.links.get(slot) else {
            return;
        };
        match due {
            Due::GatewayWake { session }
                if session == l.session && matches!(l.state, LinkState::Off | LinkState::Down) =>
            {
                self.gateway_attempt(slot, now);
            }
            Due::GatewayConnected { session, started } => {
                if session != l.session || l.state != LinkState::Connecting {
                    return;
                }
                if l.partition_until > now {
                    // The CONNACK is lost: the attempt times out.
                    let timeout = self.plan.fleet.cohorts[usize::from(l.cohort)]
                        .link
                        .connect_timeout;
                    let due = Due::GatewayCutOff {
                        session,
                        connecting: true,
                    };
                    self.sched
                        .push((started + timeout).max(now), slot as u32, due);
                    return;
                }
                self.gateway_up(slot, now, now.saturating_since(started).as_micros(), net);
            }
            Due::GatewayCutOff {
                session,
                connecting,
            } => {
                if session != l.session {
                    return;
                }
                if connecting {
                    if l.home {
                        self.metrics.counters.connects_failed += 1;
                    }
                    self.gateway_log(
                        slot,
                        now,
                        format_args!("connect_error reason=connect timed out"),
                    );
                    self.gateway_retry(slot, now);
                } else {
                    self.gateway_down(slot, now, "keep-alive timeout (broker silent)", net);
                }
            }
            _ => {}
        }
    }

    /// A connect attempt of the gateway's session (virtual clock): the simulated broker answers
    /// after two round trips of its link and its service time, or never while it is cut off.
    fn gateway_attempt(&mut self, slot: usize, now: SimTime) {
        let plan = self.plan.clone();
        let l = &mut self.gateways.links[slot];
        let cohort = &plan.fleet.cohorts[usize::from(l.cohort)];
        if l.link_down_until > now {
            let home = l.home;
            let retry_in = self.gateway_retry(slot, now);
            if home {
                self.metrics.counters.connects_no_link += 1;
            }
            self.gateway_log(
                slot,
                now,
                format_args!("no_link retry_in_us={}", retry_in.as_micros()),
            );
            return;
        }
        l.state = LinkState::Connecting;
        l.session = l.session.wrapping_add(1);
        let (session, attempt, home) = (l.session, l.attempt, l.home);
        let rng = &mut l.rng;
        let one_way_ms: f64 = (0..4).map(|_| cohort.link.latency_ms.sample(rng)).sum();
        let service_us = plan.fleet.settings.sim_broker_service_us.sample(rng);
        let (at, due) = if l.partition_until > now {
            let due = Due::GatewayCutOff {
                session,
                connecting: true,
            };
            (now + cohort.link.connect_timeout, due)
        } else {
            let latency = SimDuration::from_secs_f64(one_way_ms / 1e3 + service_us / 1e6);
            let due = Due::GatewayConnected {
                session,
                started: now,
            };
            (now + latency, due)
        };
        self.sched.push(at, slot as u32, due);
        if home {
            self.metrics.counters.connect_attempts += 1;
        }
        self.gateway_log(slot, now, format_args!("connect attempt={attempt}"));
    }

    /// No session: the next attempt after the gateway's backoff (its profile's
    /// `link.reconnect`, drawn from its own generator).
    fn gateway_retry(&mut self, slot: usize, now: SimTime) -> SimDuration {
        let plan = self.plan.clone();
        let l = &mut self.gateways.links[slot];
        let cohort = &plan.fleet.cohorts[usize::from(l.cohort)];
        l.state = LinkState::Down;
        let u = l.rng.random::<f64>();
        let retry_in = fleet_core::device::backoff_delay(&cohort.link.reconnect, l.attempt, u);
        l.attempt = l.attempt.saturating_add(1);
        let due = Due::GatewayWake { session: l.session };
        self.sched.push(now + retry_in, slot as u32, due);
        retry_in
    }

    /// The gateway's session is up: its children waiting for it connect.
    fn gateway_up<A: Adapter>(
        &mut self,
        slot: usize,
        now: SimTime,
        latency_us: u64,
        net: &mut Net<A>,
    ) {
        let l = &mut self.gateways.links[slot];
        l.state = LinkState::Up;
        l.attempt = 0;
        if l.home {
            self.metrics.connect_us.record(latency_us);
            self.metrics.counters.connects_ok += 1;
        }
        self.gateway_log(slot, now, format_args!("connected latency_us={latency_us}"));
        // A partition that started before the session: keep-alive finds out (as for devices).
        self.gateway_watch_partition(slot, now);
        for i in 0..self.gateways.links[slot].children.len() {
            let dev = self.gateways.links[slot].children[i];
            if self.devices[dev as usize].state() == DeviceState::Connecting {
                self.child_connected(dev, now);
                self.step(dev, now, Input::Connected, net);
            }
        }
    }

    /// The gateway's session ends abruptly: every child online through it loses its session
    /// (what it had in flight is counted as lost when its acknowledgement would have come);
    /// children waiting to connect keep waiting. The gateway retries on its backoff.
    fn gateway_down<A: Adapter>(
        &mut self,
        slot: usize,
        now: SimTime,
        reason: &'static str,
        net: &mut Net<A>,
    ) {
        let l = &mut self.gateways.links[slot];
        l.session = l.session.wrapping_add(1);
        if l.home {
            self.metrics.counters.sessions_lost += 1;
        }
        self.gateway_log(slot, now, format_args!("session_lost reason={reason}"));
        for i in 0..self.gateways.links[slot].children.len() {
            let dev = self.gateways.links[slot].children[i];
            if self.devices[dev as usize].state() == DeviceState::Online {
                let s = &mut self.sessions[dev as usize];
                *s = s.wrapping_add(1);
                self.log_line(
                    dev,
                    now,
                    format_args!("session_error reason=gateway session lost ({reason})"),
                    None,
                );
                self.step(dev, now, Input::LinkLost, net);
            }
        }
        self.gateway_retry(slot, now);
    }

    /// Virtual clock: a partition outlasting 1.5 keep-alive periods ends the session then.
    fn gateway_watch_partition(&mut self, slot: usize, now: SimTime) {
        let l = &self.gateways.links[slot];
        if l.state != LinkState::Up || l.partition_until <= now {
            return;
        }
        let keep_alive = self.plan.fleet.cohorts[usize::from(l.cohort)]
            .profile
            .mqtt
            .keep_alive;
        let detect = now + keep_alive.mul_f64(1.5);
        if keep_alive > SimDuration::ZERO && detect < l.partition_until {
            let due = Due::GatewayCutOff {
                session: l.session,
                connecting: false,
            };
            self.sched.push(detect, slot as u32, due);
        }
    }

    /// A fleet event's fault reaching child `dev`: applied to its gateway, once per event.
    /// Returns false when `dev` is not a gateway's child (the caller applies it to the device).
    pub(super) fn gateway_fault<A: Adapter>(
        &mut self,
        dev: u32,
        stamp: u32,
        fault: GatewayFaultKind,
        now: SimTime,
        net: &mut Net<A>,
    ) -> bool {
        let Some(slot) = self.gateways.slot(dev) else {
            return false;
        };
        let l = &mut self.gateways.links[slot];
        if l.fault_stamp == stamp {
            return true;
        }
        l.fault_stamp = stamp;
        match fault {
            GatewayFaultKind::Spike { delay, until } => {
                l.spike_until = l.spike_until.max(until);
                l.spike = delay;
                self.gateway_log(
                    slot,
                    now,
                    format_args!(
                        "latency_spike delay_us={} until_s={:.3}",
                        delay.as_micros(),
                        until.as_secs_f64()
                    ),
                );
            }
            GatewayFaultKind::Outage { until } => {
                l.link_down_until = l.link_down_until.max(until);
                self.gateway_log(
                    slot,
                    now,
                    format_args!("outage until_us={}", until.as_micros()),
                );
                match net {
                    Net::Sim => self.gateway_outage(slot, now, net),
                    Net::Real(a) => {
                        let d = &self.devices[dev as usize];
                        let c = ctx(&self.plan, self.epoch_shift_ms, d);
                        let until = until + SimDuration::from_millis(self.epoch_shift_ms);
                        a.gateway_fault(dev, d, &c, GatewayFault::Outage { until });
                    }
                }
            }
            GatewayFaultKind::Partition { until } => {
                l.partition_until = l.partition_until.max(until);
                self.gateway_log(
                    slot,
                    now,
                    format_args!("partition until_s={:.3}", until.as_secs_f64()),
                );
                match net {
                    Net::Sim => self.gateway_watch_partition(slot, now),
                    Net::Real(a) => {
                        let d = &self.devices[dev as usize];
                        let c = ctx(&self.plan, self.epoch_shift_ms, d);
                        let until = until + SimDuration::from_millis(self.epoch_shift_ms);
                        a.gateway_fault(dev, d, &c, GatewayFault::Partition { until });
                    }
                }
            }
        }
        true
    }

    /// Virtual clock: an outage cuts the gateway's session (or its attempt) at once.
    fn gateway_outage<A: Adapter>(&mut self, slot: usize, now: SimTime, net: &mut Net<A>) {
        let l = &mut self.gateways.links[slot];
        match l.state {
            LinkState::Up => self.gateway_down(slot, now, "link down (outage)", net),
            LinkState::Connecting => {
                l.session = l.session.wrapping_add(1);
                self.gateway_retry(slot, now);
            }
            LinkState::Down | LinkState::Off => {}
        }
    }

    /// Child `dev` asks for a session (virtual clock): at once when its gateway has one, else
    /// when the gateway's comes up. True when `dev` is a child (handled here).
    pub(super) fn child_connect(&mut self, dev: u32, now: SimTime) -> bool {
        if !self.gateways.is_child(dev) {
            return false;
        }
        if self.gateways.up(dev) {
            let due = Due::SimConnected {
                session: self.sessions[dev as usize],
                started: now,
            };
            self.sched.push(now, dev, due);
        }
        true
    }

    /// Whether child `dev`'s attach (`Due::SimConnected`) may complete now: its gateway is up.
    pub(super) fn child_may_attach(&self, dev: u32) -> bool {
        self.gateways.up(dev)
    }

    /// A child has a session: counted as a device online (its first time), not as a connection
    /// (the fleet's connections are its gateways' sessions).
    pub(super) fn child_connected(&mut self, dev: u32, now: SimTime) {
        if !std::mem::replace(&mut self.connected_once[dev as usize], true) {
            self.metrics.first_connects += 1;
            self.metrics.last_first_connect_us = now.as_micros();
        }
    }

    /// Wall clock: what the adapter says of a gateway's session, counted and logged once.
    pub(super) fn gateway_note(&mut self, dev: u32, note: GatewayNote, now: SimTime) {
        let name = match self.gateways.slot(dev) {
            Some(slot) => self.gateway_name(slot),
            None => String::new(),
        };
        let c = &mut self.metrics.counters;
        match note {
            GatewayNote::Attempt => {
                c.connect_attempts += 1;
                self.log_line(dev, now, format_args!("gateway {name} connect"), None);
            }
            GatewayNote::Connected { latency_us } => {
                c.connects_ok += 1;
                self.metrics.connect_us.record(latency_us);
                self.log_line(
                    dev,
                    now,
                    format_args!("gateway {name} connected latency_us={latency_us}"),
                    None,
                );
            }
            GatewayNote::ConnectFailed { reason } => {
                c.connects_failed += 1;
                self.log_line(
                    dev,
                    now,
                    format_args!("gateway {name} connect_error reason={reason}"),
                    None,
                );
            }
            GatewayNote::Lost { reason } => {
                c.sessions_lost += 1;
                self.log_line(
                    dev,
                    now,
                    format_args!("gateway {name} session_lost reason={reason}"),
                    None,
                );
            }
        }
    }
}

/// A fleet event's fault of a gateway's uplink.
#[derive(Clone, Copy, Debug)]
pub(super) enum GatewayFaultKind {
    Outage { until: SimTime },
    Partition { until: SimTime },
    Spike { delay: SimDuration, until: SimTime },
}
