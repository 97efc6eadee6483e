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
        use std::io::Write as _;
        self.start(id, t);
        let l = &mut self.line;
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
        };
        self.finish()
    }

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
