//! The wall-clock driver: a current-thread tokio runtime per shard. The loop runs due deadlines
//! and inbound network events, each with a bound per turn, then sleeps until the next deadline or
//! the next event. Adapter tasks (connects, socket readers) run on the same runtime.

use std::time::{Duration, Instant};

use fleet_core::{SimDuration, SimTime};
use tokio::sync::mpsc;

use crate::adapter::Adapter;
use crate::query::Query;
use crate::run::{REPORT_INTERVAL, ShardControl, ShardMsg};
use crate::shard::{Net, Shard};

/// Deadlines run per turn before the loop looks at the network again.
pub const MAX_STEPS_PER_TURN: usize = 4096;
/// Inbound events handled per turn before deadlines run again.
pub const MAX_EVENTS_PER_TURN: usize = 4096;
/// Capacity of a shard's inbound event channel. When it is full, socket readers wait: TCP
/// back-pressure reaches the broker instead of memory growing.
pub const INBOX_CAPACITY: usize = 16_384;
/// The loop wakes at least this often (to notice Ctrl-C and the end of the run).
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// How often the adapter's `tick` runs (keep-alive pings and checks): often enough that a
/// one-second keep-alive is kept with room to spare.
pub const ADAPTER_TICK: SimDuration = SimDuration::from_millis(250);
/// While some socket could not take all its bytes, the loop retries this often.
const BLOCKED_WRITE_RETRY: Duration = Duration::from_millis(1);
/// At shutdown, how long to wait for queued bytes to reach the sockets.
const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// After a stop, how long the acknowledgements of messages in flight are waited for.
const STOP_DRAIN: SimDuration = SimDuration::from_millis(1_000);

fn now_since(start: Instant) -> SimTime {
    SimTime(start.elapsed().as_micros() as u64)
}

/// Hands one adapter event to the adapter (at the real time `real`) and what it makes of it to
/// the devices (at their time `now`: behind the real one by the time the run spent paused).
fn deliver<A: Adapter>(
    shard: &mut Shard,
    net: &mut Net<A>,
    ev: A::Event,
    real: SimTime,
    now: SimTime,
) {
    if let Net::Real(a) = net {
        a.on_event(ev, real, shard.inputs_mut());
    }
    shard.drain_inputs(now, net);
}

/// Simulated time stands still while the run is paused; sockets live on the real clock (the
/// adapter's keep-alives go on), devices on the simulated one, `shift` behind it.
#[derive(Default)]
struct PauseClock {
    /// Time spent paused in pauses that ended.
    shift: SimDuration,
    /// The real time the current pause began.
    since: Option<SimTime>,
}

impl PauseClock {
    /// Follows the control's pause flag; true when the shift changed (a pause ended).
    fn follow(&mut self, paused: bool, real: SimTime) -> bool {
        match (paused, self.since) {
            (true, None) => {
                self.since = Some(real);
                false
            }
            (false, Some(p)) => {
                self.shift = self.shift + real.saturating_since(p);
                self.since = None;
                true
            }
            _ => false,
        }
    }

    fn frozen(&self) -> bool {
        self.since.is_some()
    }

    /// The devices' time at real time `real`.
    fn device_time(&self, real: SimTime) -> SimTime {
        SimTime(self.since.unwrap_or(real).0.saturating_sub(self.shift.0))
    }

    /// The real time of device time `t`.
    fn real_time(&self, t: SimTime) -> SimTime {
        if t.is_never() { t } else { t + self.shift }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Draining,
}

/// The next query, or never when there is no inbox (or it has closed).
async fn next_query(inbox: &mut Option<mpsc::Receiver<Query>>) -> Option<Query> {
    match inbox {
        Some(rx) => {
            let q = rx.recv().await;
            if q.is_none() {
                *inbox = None;
            }
            q
        }
        None => std::future::pending().await,
    }
}

pub(crate) fn run_wall<A: Adapter>(
    mut shard: Shard,
    mut adapter: A,
    ctl: &ShardControl,
    mut queries: Option<mpsc::Receiver<Query>>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (tx, mut rx) = mpsc::channel::<A::Event>(INBOX_CAPACITY);
        adapter.start(tx);
        shard.init();
        let start = ctl.start;
        let end = shard.plan.end;
        let mut drain_until = end + shard.plan.drain;
        let mut phase = Phase::Running;
        let mut next_tick = SimTime::ZERO + SimDuration::from_secs(1);
        let mut next_adapter_tick = SimTime::ZERO + ADAPTER_TICK;
        let mut member = crate::rollout::Membership::new(shard.plan.rollouts.clone());
        let hub = member.hub().cloned();
        // Rollout ticks: hand in at the tick, pick the decision up when it is ready.
        let mut next_rollout = hub.as_ref().map_or(SimTime::NEVER, |h| h.first_tick);
        let mut rollout_n = 0usize;
        let mut awaiting = false;
        let control = shard.control().cloned();
        let mut clock = PauseClock::default();
        loop {
            let real = now_since(start);
            let pause = phase == Phase::Running && control.as_ref().is_some_and(|c| c.paused());
            if clock.follow(pause, real) {
                shard.epoch_shift_ms = clock.shift.as_millis();
            }
            let frozen = clock.frozen();
            let now = clock.device_time(real);
            let mut net = Net::Real(&mut adapter);
            shard.poll_control(now, &mut net);
            if let Some(h) = &hub {
                if !awaiting && !frozen && now >= next_rollout {
                    h.submit(next_rollout, &mut shard.obs);
                    awaiting = true;
                }
                if awaiting && let Some(d) = h.try_get(rollout_n) {
                    rollout_n += 1;
                    awaiting = false;
                    next_rollout = d.next_at;
                    shard.apply_decision(&d, now, &mut net);
                }
            }
            let mut steps = 0;
            while steps < MAX_STEPS_PER_TURN && !frozen {
                let Some(entry) = shard.sched.pop_due(now) else {
                    break;
                };
                shard.run_entry(entry, now, &mut net);
                steps += 1;
            }
            let mut events = 0;
            while events < MAX_EVENTS_PER_TURN {
                let Ok(ev) = rx.try_recv() else { break };
                deliver(&mut shard, &mut net, ev, real, now);
                events += 1;
            }
            if let Some(qrx) = &mut queries {
                while events < MAX_EVENTS_PER_TURN {
                    let Ok(q) = qrx.try_recv() else { break };
                    shard.run_query(q, now, &mut net);
                    events += 1;
                }
            }
            if real >= next_adapter_tick {
                while next_adapter_tick <= real {
                    next_adapter_tick += ADAPTER_TICK;
                }
                if let Net::Real(a) = &mut net {
                    a.tick(real, shard.inputs_mut());
                }
                shard.drain_inputs(now, &mut net);
            }
            if real >= next_tick {
                let interval = SimDuration::from_micros(REPORT_INTERVAL.as_micros() as u64);
                while next_tick <= real {
                    next_tick += interval;
                }
                ctl.try_send(shard.report(now, false, &net), &mut shard.metrics);
            }
            if phase == Phase::Running && (now >= end || ctl.stopped()) {
                phase = Phase::Draining;
                if now < end {
                    // Stopped early (Ctrl-C, SIGTERM, `q`): a short wait for the acknowledgements
                    // on their way, so that the report is out within seconds.
                    drain_until = drain_until.min(now + STOP_DRAIN);
                }
                ctl.send_ended(shard.report(now.min(end), false, &net));
            }
            if phase == Phase::Draining && (shard.in_flight(&net) == 0 || now >= drain_until) {
                shard.shutdown_devices(now, &mut net);
                break;
            }
            let blocked = adapter.flush();
            if steps == MAX_STEPS_PER_TURN || events == MAX_EVENTS_PER_TURN {
                // More is due: let the adapter's tasks run, then go on.
                tokio::task::yield_now().await;
                continue;
            }
            let device_next = if frozen {
                SimTime::NEVER
            } else {
                shard
                    .sched
                    .peek_time()
                    .unwrap_or(SimTime::NEVER)
                    .min(if awaiting {
                        now + SimDuration::from_millis(5)
                    } else {
                        next_rollout
                    })
            };
            let next = clock
                .real_time(device_next)
                .min(next_tick)
                .min(next_adapter_tick);
            let cap = if blocked {
                BLOCKED_WRITE_RETRY
            } else {
                MAX_SLEEP
            };
            let sleep_for = next.saturating_since(now_since(start)).to_std().min(cap);
            tokio::select! {
                biased;
                ev = rx.recv() => {
                    if let Some(ev) = ev {
                        let real = now_since(start);
                        deliver(&mut shard, &mut Net::Real(&mut adapter), ev, real, clock.device_time(real));
                    }
                }
                q = next_query(&mut queries) => {
                    if let Some(q) = q {
                        let now = clock.device_time(now_since(start));
                        shard.run_query(q, now, &mut Net::Real(&mut adapter));
                    }
                }
                _ = tokio::time::sleep(sleep_for) => {}
            }
        }
        // Let last messages (held for their uplink latency), DISCONNECTs and queued bytes reach
        // the sockets.
        let flush_start = Instant::now();
        while shard.has_parked() && flush_start.elapsed() < FLUSH_WAIT {
            let now = clock.device_time(now_since(start));
            let mut net = Net::Real(&mut adapter);
            while let Some(entry) = shard.sched.pop_due(now) {
                shard.run_entry(entry, now, &mut net);
            }
            adapter.flush();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        while adapter.pending_bytes() > 0 && flush_start.elapsed() < FLUSH_WAIT {
            adapter.flush();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let now = clock.device_time(now_since(start));
        // Queries already queued (a serial port's last counts, a master's last request) are
        // answered before the final report, so what happened before the end is counted.
        if let Some(qrx) = &mut queries {
            let mut net = Net::Real(&mut adapter);
            for _ in 0..crate::query::QUERY_INBOX_CAPACITY {
                let Ok(q) = qrx.try_recv() else { break };
                shard.run_query(q, now, &mut net);
            }
        }
        member.leave(&mut shard.obs, awaiting.then_some(next_rollout));
        let net: Net<A> = Net::Real(&mut adapter);
        let result = shard.finish_log();
        ctl.send(ShardMsg::Report(shard.report(now, true, &net)));
        result
    })
}
