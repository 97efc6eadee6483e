//! The per-device event log (`--event-log PATH`): one line per device event,
//! `<device id, 10 digits> <time in µs, 16 digits> <event>`, so `sort` orders it by device and
//! time. Each shard writes its own part; the run concatenates them.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use fleet_core::{DeviceId, Event, SimTime};

pub struct EventLog {
    out: BufWriter<File>,
    line: Vec<u8>,
}

impl EventLog {
    pub fn create(path: &Path) -> io::Result<EventLog> {
        Ok(EventLog {
            out: BufWriter::with_capacity(1 << 20, File::create(path)?),
            line: Vec::with_capacity(256),
        })
    }

    fn start(&mut self, id: DeviceId, t: SimTime) {
        use std::io::Write as _;
        self.line.clear();
        let _ = write!(self.line, "{:010} {:016} ", id.0, t.as_micros());
    }

    fn finish(&mut self) -> io::Result<()> {
        self.line.push(b'\n');
        self.out.write_all(&self.line)
    }

    pub fn event(&mut self, id: DeviceId, t: SimTime, e: &Event) -> io::Result<()> {
        self.start(id, t);
        write_event(&mut self.line, e);
        self.finish()
    }
}

/// An event as the log writes it (`connect attempt=2`).
pub fn write_event(l: &mut Vec<u8>, e: &Event) {
    use fleet_core::ota::Outcome;
    use std::io::Write as _;
    let _ = match e {
        Event::PoweredOn => write!(l, "power_on"),
        Event::Booted => write!(l, "booted"),
        Event::ConnectAttempt { attempt } => write!(l, "connect attempt={attempt}"),
        Event::NoLink { retry_in } => write!(l, "no_link retry_in_us={}", retry_in.as_micros()),
        Event::Connected => write!(l, "connected"),
        Event::ConnectFailed { retry_in } => {
            write!(l, "connect_failed retry_in_us={}", retry_in.as_micros())
        }
        Event::LinkLost { retry_in } => {
            write!(l, "session_lost retry_in_us={}", retry_in.as_micros())
        }
        Event::LinkDropped { down_for } => {
            write!(l, "link_drop down_us={}", down_for.as_micros())
        }
        Event::Outage { until } => write!(l, "outage until_us={}", until.as_micros()),
        Event::Report { seq } => write!(l, "report seq={seq}"),
        Event::LostOnLink { seq } => write!(l, "lost_on_link seq={seq}"),
        Event::Retransmit { seq } => write!(l, "retransmit seq={seq}"),
        Event::Buffered { seq } => write!(l, "buffered seq={seq}"),
        Event::DroppedOffline { seq } => write!(l, "dropped_offline seq={seq}"),
        Event::DroppedQos0Offline { seq } => write!(l, "dropped_qos0_offline seq={seq}"),
        Event::Expired { seq } => write!(l, "expired seq={seq}"),
        Event::Flushed { count } => write!(l, "flushed count={count}"),
        Event::Command { name } => write!(l, "command {name}"),
        Event::CommandRejected => write!(l, "command_rejected"),
        Event::IntervalChanged { interval } => {
            write!(l, "interval us={}", interval.as_micros())
        }
        Event::BatteryLow => write!(l, "battery_low"),
        Event::BatteryDepleted => write!(l, "battery_depleted"),
        Event::Reboot => write!(l, "reboot"),
        Event::Stopped => write!(l, "stopped"),
        Event::Sampled { seq } => write!(l, "sample seq={seq}"),
        Event::RegisterWritten { point } => write!(l, "modbus_write point={point}"),
        Event::Unplugged { until } => write!(l, "unplugged until_us={}", until.as_micros()),
        Event::ModbusFault { until } => {
            write!(l, "modbus_fault until_us={}", until.as_micros())
        }
        Event::OtaJobReceived { rollout } => write!(l, "ota_job rollout={rollout:?}"),
        Event::OtaStarted { .. } => write!(l, "ota_started"),
        Event::OtaStage { stage } => write!(l, "ota_stage {}", stage.as_str()),
        Event::OtaOutcome { outcome, .. } => match outcome {
            Outcome::Failed(s) => write!(l, "ota_outcome failed stage={}", s.as_str()),
            Outcome::Rejected(r) => write!(l, "ota_outcome rejected reason={}", r.as_str()),
            Outcome::Succeeded => write!(l, "ota_outcome succeeded"),
            Outcome::Bricked => write!(l, "ota_outcome bricked"),
        },
        Event::OtaReported {
            outcome,
            lost,
            delay,
            ..
        } => write!(
            l,
            "ota_reported final={} lost={lost} delay_us={}",
            outcome.is_some(),
            delay.as_micros()
        ),
        Event::OtaStatusSent => write!(l, "ota_status_sent"),
        Event::OtaReportLost => write!(l, "ota_report_lost"),
        Event::OtaDownloadPaused => write!(l, "ota_download_paused"),
        Event::OtaDownloadRestarted => write!(l, "ota_download_restarted"),
        Event::OtaDownloadStalled => write!(l, "ota_download_stalled"),
        Event::OtaDownloadFailed { retryable } => {
            write!(l, "ota_download_failed retryable={retryable}")
        }
        Event::OtaRebootMidDownload => write!(l, "ota_reboot_mid_download"),
        Event::OtaPowerLoss => write!(l, "ota_power_loss"),
        Event::OtaBootFailed { attempt } => write!(l, "ota_boot_failed attempt={attempt}"),
        Event::OtaRolledBack => write!(l, "ota_rolled_back"),
        Event::OtaCancelled { .. } => write!(l, "ota_cancelled"),
        Event::OtaCancelRefused => write!(l, "ota_cancel_refused"),
        Event::OtaBadMessage => write!(l, "ota_bad_message"),
        Event::OtaUpdateRejected => write!(l, "ota_update_rejected"),
        Event::OtaUpdateRetried => write!(l, "ota_update_retried"),
        Event::OtaRequestRejected => write!(l, "ota_request_rejected"),
        Event::OtaAbandoned => write!(l, "ota_abandoned"),
    };
}

impl EventLog {
    /// A free-form line (engine-side events: sends, acks).
    pub fn line(
        &mut self,
        id: DeviceId,
        t: SimTime,
        text: std::fmt::Arguments,
        payload: Option<&[u8]>,
    ) -> io::Result<()> {
        use std::io::Write as _;
        self.start(id, t);
        let _ = self.line.write_fmt(text);
        if let Some(p) = payload {
            self.line.push(b' ');
            self.line.extend_from_slice(p);
        }
        self.finish()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Where shard `k` writes its part of the log.
pub fn part_path(path: &Path, shard: u16) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".part{shard}"));
    PathBuf::from(p)
}

/// Concatenates the parts into `path` and removes them.
pub fn join_parts(path: &Path, shards: u16) -> io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    for k in 0..shards {
        let part = part_path(path, k);
        let mut f = File::open(&part)?;
        io::copy(&mut f, &mut out)?;
        std::fs::remove_file(&part)?;
    }
    out.flush()
}
