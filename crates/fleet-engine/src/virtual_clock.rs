//! The virtual-clock driver: pop the earliest deadline, jump the clock to it, run it. No sleeping,
//! no sockets: the simulated broker answers with latencies drawn from each device's link.

use std::time::Instant;

use fleet_core::{Device, DeviceCtx, Publish, SimTime};
use tokio::sync::mpsc;

use crate::adapter::{Adapter, NetInput, SendOutcome};
use crate::run::{ShardControl, ShardMsg};
use crate::shard::{Net, Shard};

/// How many entries run between looks at the wall clock (report time, Ctrl-C).
const ENTRIES_PER_CHECK: u32 = 4096;

/// How often a paused shard looks whether it may go on.
const PAUSE_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// The adapter of virtual runs: there is none (an uninhabited type).
pub enum NoAdapter {}

impl Adapter for NoAdapter {
    type Event = ();
    fn start(&mut self, _: mpsc::Sender<()>) {
        match *self {}
    }
    fn connect(&mut self, _: u32, _: &Device, _: &DeviceCtx, _: SimTime) {
        match *self {}
    }
    fn publish(&mut self, _: u32, _: &Device, _: &DeviceCtx, _: &Publish, _: &[u8]) -> SendOutcome {
        match *self {}
    }
    fn download(&mut self, _: u32, _: &str, _: u64) {
        match *self {}
    }
    fn cancel_download(&mut self, _: u32) {
        match *self {}
    }
    fn close(&mut self, _: u32, _: bool) -> u32 {
        match *self {}
    }
    fn on_event(&mut self, _: (), _: SimTime, _: &mut Vec<(u32, NetInput)>) {
        match *self {}
    }
    fn tick(&mut self, _: SimTime, _: &mut Vec<(u32, NetInput)>) {
        match *self {}
    }
    fn flush(&mut self) -> bool {
        match *self {}
    }
    fn sessions_open(&self) -> u64 {
        match *self {}
    }
    fn in_flight(&self) -> u64 {
        match *self {}
    }
    fn pending_bytes(&self) -> u64 {
        match *self {}
    }
}

pub(crate) fn run_virtual(mut shard: Shard, ctl: &ShardControl) -> std::io::Result<()> {
    let mut net: Net<NoAdapter> = Net::Sim;
    shard.init();
    let end = shard.plan.end;
    // Everyone stops at the same simulated instant, so the event log does not depend on how
    // devices are spread over shards.
    let stop_at = end + shard.plan.drain;
    let mut member = crate::rollout::Membership::new(shard.plan.rollouts.clone());
    let hub = member.hub().cloned();
    // Rollout ticks: every shard meets the others there before it runs anything later.
    let mut next_tick = hub.as_ref().map_or(SimTime::NEVER, |h| h.first_tick);
    let mut tick_n = 0usize;
    let mut ended = false;
    let mut last_report = Instant::now();
    let mut since_check = 0u32;
    let mut now = SimTime::ZERO;
    let mut interrupted = false;
    loop {
        let t = shard.sched.peek_time().unwrap_or(SimTime::NEVER);
        if let Some(h) = &hub
            && next_tick < stop_at
            && next_tick <= t
        {
            if !ended && next_tick >= end {
                ended = true;
                ctl.send_ended(shard.report(end, false, &net));
            }
            h.submit(next_tick, &mut shard.obs);
            let Some(d) = h.wait(tick_n) else { break };
            tick_n += 1;
            now = next_tick;
            shard.apply_decision(&d, now, &mut net);
            next_tick = d.next_at;
            continue;
        }
        if t >= stop_at {
            break;
        }
        if !ended && t >= end {
            ended = true;
            ctl.send_ended(shard.report(end, false, &net));
        }
        let Some(entry) = shard.sched.pop() else {
            break;
        };
        now = entry.at;
        shard.run_entry(entry, now, &mut net);
        since_check += 1;
        if since_check >= ENTRIES_PER_CHECK {
            since_check = 0;
            shard.poll_control(now, &mut net);
            // Paused: simulated time stands still; reports go on.
            while shard.control().is_some_and(|c| c.paused()) && !ctl.stopped() {
                std::thread::sleep(PAUSE_POLL);
                shard.poll_control(now, &mut net);
                if last_report.elapsed() >= crate::run::REPORT_INTERVAL {
                    last_report = Instant::now();
                    ctl.try_send(shard.report(now, false, &net), &mut shard.metrics);
                }
            }
            if ctl.stopped() {
                interrupted = true;
                break;
            }
            if last_report.elapsed() >= crate::run::REPORT_INTERVAL {
                last_report = Instant::now();
                ctl.try_send(shard.report(now, false, &net), &mut shard.metrics);
            }
        }
    }
    let stop_time = if interrupted { now } else { stop_at };
    if !ended {
        ctl.send_ended(shard.report(stop_time.min(end), false, &net));
    }
    shard.shutdown_devices(stop_time, &mut net);
    member.leave(&mut shard.obs, None);
    let result = shard.finish_log();
    ctl.send(ShardMsg::Report(shard.report(stop_time, true, &net)));
    result
}
