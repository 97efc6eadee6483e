//! Steering a run while it goes: pause and resume, fleet events injected now, looking at one
//! device, and the feed of notable events live views show.
//!
//! The control surfaces (TUI, API) talk to a `Control` through the binary; shards look at it once
//! per loop turn (an atomic load when nothing changed). Commands are applied by each shard at its
//! own current simulated time: a run that was steered by hand is not reproducible from its seed
//! (the scenario's `[[events]]` are), so every command goes into the event feed and the log.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fleet_core::scenario::FleetEvent;
use fleet_metrics::live::{EVENTS_KEPT, LiveEvent, LiveEventKind};
use fleet_metrics::{DeviceDetail, ErrorKind, PortError};

/// How long a device lookup waits for its shard.
pub const INSPECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Devices a shard keeps a recent history of (the ones looked at last).
pub const WATCHED_PER_SHARD: usize = 8;
/// Lines of history kept per watched device.
pub const WATCH_LINES: usize = 64;

/// What a shard is asked to do.
pub(crate) enum ShardCmd {
    /// Run this fleet event now; `index` salts the choice of devices (after the scenario's).
    Fault { event: Arc<FleetEvent>, index: u32 },
    /// Describe this device (by local index) and keep its history from now on.
    Inspect {
        local: u32,
        reply: SyncSender<DeviceDetail>,
    },
}

/// Shared by a run's shards and whoever steers it.
pub struct Control {
    paused: AtomicBool,
    /// Bumped by every queued shard command, so an idle check is one load.
    generation: AtomicU64,
    queues: Box<[Mutex<Vec<ShardCmd>>]>,
    /// Each shard's simulated time when it last looked at its queue (µs).
    sim_us: Box<[AtomicU64]>,
    /// Fleet events injected so far.
    injected: AtomicU32,
    /// The run has ended: commands are refused.
    closed: AtomicBool,
    feed: Mutex<Feed>,
    start: Instant,
}

struct Feed {
    next_seq: u64,
    events: VecDeque<LiveEvent>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("paused", &self.paused())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Control {
    pub fn new(shards: u16) -> Arc<Control> {
        Arc::new(Control {
            paused: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            queues: (0..shards.max(1)).map(|_| Mutex::new(Vec::new())).collect(),
            sim_us: (0..shards.max(1)).map(|_| AtomicU64::new(0)).collect(),
            injected: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            feed: Mutex::new(Feed {
                next_seq: 1,
                events: VecDeque::new(),
            }),
            start: Instant::now(),
        })
    }

    fn check_open(&self) -> Result<(), PortError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(PortError::new(ErrorKind::Conflict, "the run has ended"));
        }
        Ok(())
    }

    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Freezes simulated time in every shard. Conflict when already paused.
    pub fn pause(&self) -> Result<(), PortError> {
        self.check_open()?;
        if self.paused.swap(true, Ordering::Relaxed) {
            return Err(PortError::new(
                ErrorKind::Conflict,
                "the run is paused already",
            ));
        }
        Ok(())
    }

    /// Conflict when not paused.
    pub fn resume(&self) -> Result<(), PortError> {
        self.check_open()?;
        if !self.paused.swap(false, Ordering::Relaxed) {
            return Err(PortError::new(ErrorKind::Conflict, "the run is not paused"));
        }
        Ok(())
    }

    /// Hands `event` to every shard; `first_index` is the number of the scenario's own events
    /// (injected events are numbered after them, which salts their choice of devices).
    pub fn inject(&self, event: FleetEvent, first_index: u32) -> Result<u32, PortError> {
        self.check_open()?;
        let index = first_index + self.injected.fetch_add(1, Ordering::Relaxed);
        let event = Arc::new(event);
        for q in self.queues.iter() {
            lock(q).push(ShardCmd::Fault {
                event: event.clone(),
                index,
            });
        }
        self.generation.fetch_add(1, Ordering::Release);
        Ok(index)
    }

    /// Asks shard `shard` to describe its device `local`; the caller waits on the receiver.
    pub(crate) fn inspect(
        &self,
        shard: u16,
        local: u32,
    ) -> Result<Receiver<DeviceDetail>, PortError> {
        self.check_open()?;
        let Some(q) = self.queues.get(usize::from(shard)) else {
            return Err(PortError::new(ErrorKind::NotFound, "no such shard"));
        };
        let (reply, rx) = sync_channel(1);
        lock(q).push(ShardCmd::Inspect { local, reply });
        self.generation.fetch_add(1, Ordering::Release);
        Ok(rx)
    }

    /// A device by its number in the run or its rendered id; waits for its shard.
    pub fn device(&self, plan: &crate::RunPlan, key: &str) -> Result<DeviceDetail, PortError> {
        let key = key.trim();
        let Some(id) = resolve_device(plan, key) else {
            return Err(PortError::new(
                ErrorKind::NotFound,
                match plan.owned.bounds() {
                    Some((a, b)) if plan.slice.is_whole() => format!(
                        "no device {key:?} in this run (give its number, {a} to {b}, or its device id)"
                    ),
                    _ => format!(
                        "no device {key:?} in this process (shard {} owns {} devices of the fleet: give a number or a device id of its slice)",
                        plan.slice,
                        plan.owned.len()
                    ),
                },
            ));
        };
        let (shard, local) = plan.locate(id).ok_or_else(|| {
            PortError::new(
                ErrorKind::NotFound,
                format!("device {id} is not in this process"),
            )
        })?;
        let rx = self.inspect(shard, local)?;
        rx.recv_timeout(INSPECT_TIMEOUT).map_err(|_| {
            PortError::new(
                ErrorKind::Unavailable,
                format!("shard {shard} did not answer within {INSPECT_TIMEOUT:?} (busy, or the run is ending)"),
            )
        })
    }

    /// The run's simulated time now, as far as the shards have told (the slowest one's, like
    /// a snapshot's `sim_time_s`): when a command handed over now applies.
    pub fn sim_time_s(&self) -> f64 {
        let us = self
            .sim_us
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        us as f64 / 1e6
    }

    /// The commands queued for `shard` when the generation moved past `seen`; `now_us` is the
    /// shard's simulated time.
    pub(crate) fn take(&self, shard: u16, now_us: u64, seen: &mut u64) -> Vec<ShardCmd> {
        if let Some(t) = self.sim_us.get(usize::from(shard)) {
            t.store(now_us, Ordering::Relaxed);
        }
        let g = self.generation.load(Ordering::Acquire);
        if g == *seen {
            return Vec::new();
        }
        *seen = g;
        match self.queues.get(usize::from(shard)) {
            Some(q) => std::mem::take(&mut *lock(q)),
            None => Vec::new(),
        }
    }

    /// The run has ended: commands are refused from now on (pending lookups get no answer).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.paused.store(false, Ordering::Relaxed);
    }

    /// Adds a notable event to the feed.
    pub fn note(&self, kind: LiveEventKind, sim_time_s: f64, message: impl Into<String>) {
        let message = message.into();
        tracing::info!(kind = kind.as_str(), sim_time_s, "{message}");
        let mut f = lock(&self.feed);
        let seq = f.next_seq;
        f.next_seq += 1;
        f.events.push_back(LiveEvent {
            seq,
            elapsed_s: self.start.elapsed().as_secs_f64(),
            sim_time_s,
            kind,
            message,
        });
        while f.events.len() > EVENTS_KEPT {
            f.events.pop_front();
        }
    }

    /// The latest notable events, oldest first.
    pub fn events(&self) -> Vec<LiveEvent> {
        lock(&self.feed).events.iter().cloned().collect()
    }
}

/// The number of the device `key` names: a number in the run, or a rendered device id (found
/// by rendering the ids its digit runs may stand for).
fn resolve_device(plan: &crate::RunPlan, key: &str) -> Option<u32> {
    let owned = &plan.owned;
    if let Ok(n) = key.parse::<u32>() {
        return owned.contains(n).then_some(n);
    }
    let fleet = &plan.fleet;
    let mut out = Vec::new();
    for run in key
        .split(|c: char| !c.is_ascii_digit())
        .filter(|r| !r.is_empty())
    {
        let Ok(n) = run.parse::<u32>() else { continue };
        let candidates = std::iter::once(n).chain(
            fleet
                .cohorts
                .iter()
                .map(|c| c.first_device.saturating_add(n)),
        );
        for id in candidates.filter(|id| owned.contains(*id)) {
            let d = fleet_core::DeviceId(id);
            let ctx = fleet_core::DeviceCtx {
                cohort: fleet.cohort_of(d),
                epoch_ms: plan.epoch_ms,
                end: plan.end,
                real_network: plan.clock == fleet_core::scenario::Clock::Wall,
            };
            out.clear();
            ctx.cohort
                .profile
                .identity
                .device_id
                .render_into(&ctx.vars(d, &[]), &mut out);
            if out == key.as_bytes() {
                return Some(id);
            }
        }
    }
    None
}

/// A fleet event in words: "outage of 10% of cohort meters for 20s".
pub fn describe_event(e: &FleetEvent) -> String {
    use fleet_core::scenario::FleetEventKind as K;
    let mut who = String::new();
    if e.fraction < 1.0 {
        who.push_str(&format!(" of {}%", (e.fraction * 1000.0).round() / 10.0));
    }
    match (&e.cohort, &e.devices) {
        (Some(c), _) => who.push_str(&format!(" of cohort {c}")),
        (None, Some(d)) => who.push_str(&format!(" of {} named devices", d.len())),
        (None, None) if e.fraction < 1.0 => who.push_str(" of the fleet"),
        (None, None) => who.push_str(" of every device"),
    }
    match &e.kind {
        K::Outage { duration } => format!("outage{who} for {duration}"),
        K::Unplug { duration } => format!("serial ports unplugged{who} for {duration}"),
        K::RebootWave { spread } => format!("reboot wave{who} over {spread}"),
        K::ModbusFault { fault, duration } => {
            format!("modbus fault {fault:?}{who} for {duration}")
        }
        K::Partition { duration } => format!("network partition{who} for {duration}"),
        K::LatencySpike { delay, duration } => {
            format!("latency spike of +{delay}{who} for {duration}")
        }
    }
}

/// A shard's recent history of the devices looked at (a few of them, newest look last).
#[derive(Default)]
pub(crate) struct Watch {
    pub devices: Vec<(u32, f64, VecDeque<fleet_metrics::live::DeviceEventLine>)>,
}

impl Watch {
    /// Starts (or keeps) watching `local`; returns when its history starts.
    pub fn watch(&mut self, local: u32, sim_time_s: f64) -> f64 {
        if let Some(i) = self.devices.iter().position(|w| w.0 == local) {
            let w = self.devices.remove(i);
            let since = w.1;
            self.devices.push(w);
            return since;
        }
        if self.devices.len() >= WATCHED_PER_SHARD {
            self.devices.remove(0);
        }
        self.devices.push((local, sim_time_s, VecDeque::new()));
        sim_time_s
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Records a line for `local` if it is watched.
    pub fn record(&mut self, local: u32, sim_time_s: f64, text: impl FnOnce() -> String) {
        if let Some(w) = self.devices.iter_mut().find(|w| w.0 == local) {
            w.2.push_back(fleet_metrics::live::DeviceEventLine {
                sim_time_s,
                text: text(),
            });
            if w.2.len() > WATCH_LINES {
                w.2.pop_front();
            }
        }
    }

    pub fn history(&self, local: u32) -> Vec<fleet_metrics::live::DeviceEventLine> {
        self.devices
            .iter()
            .find(|w| w.0 == local)
            .map(|w| w.2.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_and_resume_refuse_what_makes_no_sense() {
        let c = Control::new(2);
        assert!(c.resume().is_err());
        c.pause().expect("pause");
        assert!(c.paused());
        assert_eq!(c.pause().map_err(|e| e.kind), Err(ErrorKind::Conflict));
        c.resume().expect("resume");
        c.close();
        assert_eq!(c.pause().map_err(|e| e.kind), Err(ErrorKind::Conflict));
    }

    #[test]
    fn a_shard_sees_commands_once_and_only_its_own() {
        let c = Control::new(2);
        let (mut seen0, mut seen1) = (0, 0);
        assert!(c.take(0, 5_000_000, &mut seen0).is_empty());
        let _rx = c.inspect(1, 5).expect("inspect");
        assert!(c.take(0, 6_000_000, &mut seen0).is_empty());
        assert_eq!(c.take(1, 7_000_000, &mut seen1).len(), 1);
        assert!(c.take(1, 7_000_000, &mut seen1).is_empty());
        assert_eq!(c.sim_time_s(), 6.0, "the slowest shard's time");
    }

    #[test]
    fn the_feed_keeps_the_latest_events_numbered() {
        let c = Control::new(1);
        for i in 0..EVENTS_KEPT + 5 {
            c.note(LiveEventKind::Fault, i as f64, format!("e{i}"));
        }
        let e = c.events();
        assert_eq!(e.len(), EVENTS_KEPT);
        assert_eq!(e[0].seq, 6);
        assert_eq!(e[EVENTS_KEPT - 1].message, format!("e{}", EVENTS_KEPT + 4));
    }

    #[test]
    fn a_shard_watches_the_devices_looked_at_last() {
        let mut w = Watch::default();
        for d in 0..WATCHED_PER_SHARD as u32 + 1 {
            w.watch(d, 1.0);
        }
        w.record(0, 2.0, || "evicted".into());
        assert!(w.history(0).is_empty());
        w.record(1, 2.0, || "kept".into());
        assert_eq!(w.history(1).len(), 1);
        assert_eq!(
            w.watch(1, 9.0),
            1.0,
            "history starts when it was first looked at"
        );
    }
}
