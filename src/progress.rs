//! Progress while a run goes: a bar on a terminal, a line every few seconds otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use fleet_core::DeviceState;
use fleet_core::scenario::{Clock, ScenarioSettings};
use fleet_metrics::FleetSnapshot;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::summary::us;

pub struct Progress {
    bar: Option<ProgressBar>,
    every: Duration,
    last_line: Option<Instant>,
    clock: Clock,
    duration_s: f64,
    devices: u32,
}

impl Progress {
    pub fn new(s: &ScenarioSettings, devices: u32, headless: bool, every: Duration) -> Progress {
        let on_terminal = std::io::stderr().is_terminal() && !headless;
        let bar = on_terminal.then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(s.duration.as_secs_f64().ceil() as u64),
                ProgressDrawTarget::stderr(),
            );
            let style = ProgressStyle::with_template("{spinner} [{bar:30}] {pos:>5}/{len}s  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        Progress {
            bar,
            every,
            last_line: None,
            clock: s.clock,
            duration_s: s.duration.as_secs_f64(),
            devices,
        }
    }

    fn line(&self, s: &FleetSnapshot) -> String {
        let p = &s.publish_ack_interval;
        let modbus = if s.modbus.requests > 0 {
            format!(
                "  modbus {} req ({:.0}/s) p99 {}",
                s.modbus.requests,
                s.modbus_requests_per_s,
                us(s.modbus_service.p99)
            )
        } else {
            String::new()
        };
        let serial = if s.serial.ports_opened > 0 {
            format!(
                "  serial {} lines out, {} commands",
                s.serial.lines_out, s.serial.commands
            )
        } else {
            String::new()
        };
        let ota = if s.ota.jobs_received > 0 {
            let updating: u64 = s.ota_stages[1..fleet_metrics::ota::OTA_STAGE_COUNT - 1]
                .iter()
                .sum();
            format!(
                "  ota {} updating, {} ok, {} failed, {} bricked",
                updating, s.ota.succeeded, s.ota.failed, s.ota.bricked
            )
        } else {
            String::new()
        };
        let rollouts: String = s
            .rollouts
            .iter()
            .map(|r| {
                format!(
                    "  rollout {} {} wave {}/{} notified {} ok {} failed {} timed out {}",
                    r.name,
                    r.state,
                    r.wave,
                    r.waves,
                    r.reported.notified,
                    r.reported.succeeded,
                    r.reported.failed,
                    r.reported.timed_out
                )
            })
            .collect();
        format!(
            "online {}/{}  offline {}  published {} ({:.0}/s)  acked {}  failed {}  p50 {} p99 {}  lag max {}{modbus}{serial}{ota}{rollouts}",
            s.state(DeviceState::Online),
            self.devices,
            s.state(DeviceState::Offline) + s.state(DeviceState::Connecting),
            s.totals.published,
            s.published_per_s,
            s.totals.acked,
            s.totals.failed(),
            us(p.p50),
            us(p.p99),
            us(s.max_lag_us),
        )
    }

    pub fn update(&mut self, s: &FleetSnapshot) {
        if s.shards_done() {
            return; // the run is over: the summary speaks now
        }
        let t = match self.clock {
            Clock::Wall => s.elapsed_s,
            Clock::Virtual => s.sim_time_s,
        };
        if let Some(bar) = &self.bar {
            bar.set_position(t.min(self.duration_s) as u64);
            bar.set_message(self.line(s));
            return;
        }
        if self.last_line.is_some_and(|l| l.elapsed() < self.every) {
            return;
        }
        self.last_line = Some(Instant::now());
        let clock = match self.clock {
            Clock::Wall => String::new(),
            Clock::Virtual => format!(" (virtual, {:.0} steps/s)", s.steps_per_s),
        };
        tracing::info!(
            "t={:.0}s/{:.0}s{clock}  {}",
            t,
            self.duration_s,
            self.line(s)
        );
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
