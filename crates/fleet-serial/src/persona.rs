//! The personas at work: each serial device's task, fed by its device's state (a query to the
//! device's shard), writing at the line's pace, reopening the port after an unplug.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use fleet_core::serial::{LinePart, LinesSpec, NmeaSpec, Persona, Rssi, SerialSpec, ValueSource};
use fleet_core::{DeviceId, DeviceView, SimTime};
use fleet_engine::{QueryCx, QueryRouter};
use fleet_metrics::SerialCounters;
use rand::RngExt;
use rand_distr::{Distribution, StandardNormal};
use rand_pcg::Pcg32;
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::at::{Assembled, LineAssembler, Modem, ModemInfo, NetState, Outcome, Registration};
use crate::line::{Line, Pacer, Place, count_lines, impair};
use crate::nmea::{self, Fix, Sentence};

/// How often a persona that has nothing scheduled looks at its device (unplugs, registration).
const WATCH: Duration = Duration::from_millis(250);

/// What a device's port task knows of it for the whole run.
#[derive(Clone, Debug)]
pub struct PortDevice {
    pub id: DeviceId,
    pub device_id: String,
    pub firmware: String,
    pub spec: Arc<SerialSpec>,
    pub place: Place,
    pub baud: u32,
    /// Wall-clock ms since the Unix epoch at the run's time zero.
    pub epoch_ms: u64,
    /// Seeds the port's own draws (jitter, impairments, unplugs, time to first fix).
    pub seed: u64,
    pub imei: String,
    /// Decimals of each sensor (for template lines without their own).
    pub decimals: Vec<u8>,
}

/// The device's state now, and the run's `now`; None once the run is over. The counters
/// gathered since the last look travel with the query into the shard's metrics.
async fn look(
    router: &QueryRouter,
    id: DeviceId,
    c: &mut SerialCounters,
) -> Option<(DeviceView, SimTime)> {
    let (tx, rx) = oneshot::channel();
    let batch = std::mem::take(c);
    router
        .device(
            id,
            Box::new(move |cx: QueryCx<'_, '_>| {
                cx.metrics.serial.add(&batch);
                let _ = tx.send((cx.device.view(cx.now, cx.ctx), cx.now));
            }),
        )
        .await
        .ok()?;
    rx.await.ok()
}

/// Hands counters to the device's shard (they show in snapshots and the report) right after
/// each write, so a run that ends loses none of what went over the line.
async fn flush(router: &QueryRouter, id: DeviceId, c: &mut SerialCounters) {
    if *c == SerialCounters::default() {
        return;
    }
    let batch = std::mem::take(c);
    let _ = router
        .metrics(id, Box::new(move |m| m.serial.add(&batch)))
        .await;
}

/// Sends `bytes` on the line: impairments, pacing, then the counters into the shard.
async fn send(
    line: &mut Line,
    pacer: &mut Pacer,
    bytes: &mut Vec<u8>,
    dev: &PortDevice,
    rng: &mut Pcg32,
    c: &mut SerialCounters,
    router: &QueryRouter,
) -> io::Result<()> {
    impair(bytes, &dev.spec.impairments, rng, c);
    c.bytes_out += bytes.len() as u64;
    pacer.write(line, bytes, c).await?;
    flush(router, dev.id, c).await;
    Ok(())
}

/// Why a persona stopped using its line.
enum Stop {
    /// The port is pulled for this long (the line's own MTBF).
    Unplug(Duration),
    /// The device's port is unplugged (a scheduled event) until it says otherwise.
    UnpluggedByDevice,
    /// The run is over.
    Done,
    /// The line failed (a real port went away): reopen after a pause.
    Failed(io::Error),
}

/// Runs the device's port for the whole run: open, serve, unplug, reopen.
pub async fn run_port(dev: PortDevice, router: QueryRouter, first: Option<Line>) {
    let mut rng = Pcg32::new(dev.seed, 0x7365_7269); // "seri"
    let mut c = SerialCounters::default();
    let mut line = first;
    let mut next_unplug = draw_unplug(&dev.spec, &mut rng);
    // What the device remembers while its port is away: an unplug takes the cable, not the
    // power (a GPS keeps its fix, a modem its settings).
    let mut memory = Memory::default();
    loop {
        let l = match line.take() {
            Some(l) => l,
            None => match Line::open(&dev.place, dev.baud) {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(
                        device = dev.device_id,
                        "serial: cannot open {:?}: {e}",
                        dev.place
                    );
                    c.open_errors += 1;
                    flush(&router, dev.id, &mut c).await;
                    if router.closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        c.ports_opened += 1;
        let (l, stop) = serve(l, &dev, &router, &mut rng, &mut c, next_unplug, &mut memory).await;
        l.close();
        match stop {
            Stop::Done => {
                flush(&router, dev.id, &mut c).await;
                return;
            }
            Stop::Unplug(d) => {
                c.unplugs += 1;
                flush(&router, dev.id, &mut c).await;
                tokio::time::sleep(d).await;
                next_unplug = draw_unplug(&dev.spec, &mut rng);
            }
            Stop::UnpluggedByDevice => {
                c.unplugs += 1;
                loop {
                    tokio::time::sleep(WATCH).await;
                    match look(&router, dev.id, &mut c).await {
                        None => return,
                        Some((v, _)) if !v.unplugged => break,
                        Some(_) => {}
                    }
                }
            }
            Stop::Failed(e) => {
                tracing::warn!(
                    device = dev.device_id,
                    "serial: line failed: {e}; reopening"
                );
                flush(&router, dev.id, &mut c).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if router.closed() {
            return;
        }
    }
}

/// When the port is next pulled by the MTBF (None: never).
fn draw_unplug(spec: &SerialSpec, rng: &mut Pcg32) -> Option<Instant> {
    let mtbf = spec.impairments.unplug_mtbf?;
    let u: f64 = rng.random();
    let wait = mtbf.as_secs_f64() * -(1.0 - u).ln();
    Some(Instant::now() + Duration::from_secs_f64(wait.min(1e9)))
}

fn unplug_for(spec: &SerialSpec, rng: &mut Pcg32) -> Duration {
    let s = spec
        .impairments
        .unplug_s
        .as_ref()
        .map(|d| d.sample(rng))
        .unwrap_or(1.0);
    Duration::from_secs_f64(s.clamp(0.0, 86_400.0))
}

/// A persona's state that outlives its port.
#[derive(Default)]
struct Memory {
    gps: GpsState,
    modem: Option<ModemMemory>,
}

struct ModemMemory {
    modem: Modem,
    /// Uptime when last seen: a smaller one means the device rebooted.
    last_uptime: f64,
}

/// Serves the persona on `line` until it has to stop.
#[allow(clippy::too_many_arguments)]
async fn serve(
    mut line: Line,
    dev: &PortDevice,
    router: &QueryRouter,
    rng: &mut Pcg32,
    c: &mut SerialCounters,
    next_unplug: Option<Instant>,
    memory: &mut Memory,
) -> (Line, Stop) {
    let stop = match &dev.spec.persona {
        Persona::Nmea(n) => {
            nmea_loop(
                &mut line,
                dev,
                n,
                router,
                rng,
                c,
                next_unplug,
                &mut memory.gps,
            )
            .await
        }
        Persona::AtModem(_) => {
            at_loop(
                &mut line,
                dev,
                router,
                rng,
                c,
                next_unplug,
                &mut memory.modem,
            )
            .await
        }
        Persona::Lines(l) => lines_loop(&mut line, dev, l, router, rng, c, next_unplug).await,
        Persona::ModbusRtu => modbus_loop(&mut line, dev, router, rng, c, next_unplug).await,
    };
    (line, stop)
}

/// Checks the unplug schedule and the device's own unplug; Some(stop) when the port must go.
fn unplugged(
    view: &DeviceView,
    dev: &PortDevice,
    rng: &mut Pcg32,
    next_unplug: Option<Instant>,
) -> Option<Stop> {
    if view.unplugged {
        // A scheduled unplug: come back when the device says it is plugged again.
        return Some(Stop::UnpluggedByDevice);
    }
    if next_unplug.is_some_and(|t| Instant::now() >= t) {
        return Some(Stop::Unplug(unplug_for(&dev.spec, rng)));
    }
    None
}

fn value(src: ValueSource, view: &DeviceView) -> f64 {
    match src {
        ValueSource::Fixed(x) => x,
        ValueSource::Sensor(i) => view.readings.get(usize::from(i)).copied().unwrap_or(0.0),
    }
}

fn normal(rng: &mut Pcg32) -> f64 {
    StandardNormal.sample(rng)
}

/// Metres per degree of latitude.
const M_PER_DEG: f64 = 111_320.0;

/// The GPS receiver's memory between fixes.
struct GpsState {
    /// Uptime at the last fix: a smaller one means the device rebooted.
    last_uptime: f64,
    /// Seconds after boot the first fix comes.
    ttff_s: f64,
    prev: Option<(f64, f64, f64)>, // lat, lon, t_s
}

impl Default for GpsState {
    fn default() -> Self {
        GpsState {
            last_uptime: f64::MAX,
            ttff_s: -1.0,
            prev: None,
        }
    }
}

fn nmea_fix(
    n: &NmeaSpec,
    dev: &PortDevice,
    view: &DeviceView,
    utc_ms: u64,
    st: &mut GpsState,
    rng: &mut Pcg32,
) -> Fix {
    if view.uptime_s < st.last_uptime || st.ttff_s < 0.0 {
        st.ttff_s = n.ttff_s.sample(rng).max(0.0);
        st.prev = None;
    }
    st.last_uptime = view.uptime_s;
    let t_s = utc_ms as f64 / 1000.0;
    let valid = view.booted && view.uptime_s >= st.ttff_s;
    let base_lat = value(n.lat, view).clamp(-89.9, 89.9);
    let base_lon = value(n.lon, view);
    let lat = base_lat + normal(rng) * n.jitter_m / M_PER_DEG;
    let lon =
        base_lon + normal(rng) * n.jitter_m / (M_PER_DEG * base_lat.to_radians().cos().max(0.01));
    let (mut speed_kmh, mut course) = (0.0, 0.0);
    if let Some((plat, plon, pt)) = st.prev {
        let dt = t_s - pt;
        if dt > 0.0 {
            let dy = (base_lat - plat) * M_PER_DEG;
            let dx = (base_lon - plon) * M_PER_DEG * base_lat.to_radians().cos();
            speed_kmh = (dx.hypot(dy) / dt) * 3.6;
            course = dx.atan2(dy).to_degrees().rem_euclid(360.0);
        }
    }
    if let Some(i) = n.speed_kmh {
        speed_kmh = view
            .readings
            .get(usize::from(i))
            .copied()
            .unwrap_or(0.0)
            .max(0.0);
    }
    if let Some(i) = n.course_deg {
        course = view
            .readings
            .get(usize::from(i))
            .copied()
            .unwrap_or(0.0)
            .rem_euclid(360.0);
    }
    if st.prev.is_none_or(|(_, _, pt)| t_s - pt >= 1.0) {
        st.prev = Some((base_lat, base_lon, t_s));
    }
    let in_view = value(n.satellites, view).round().clamp(4.0, 16.0) as usize;
    let satellites = nmea::sky(dev.seed, t_s, in_view);
    let used = if valid { in_view.min(12) } else { 0 };
    let hdop = (n.hdop * (1.0 + 0.05 * normal(rng))).clamp(0.5, 50.0);
    Fix {
        utc_ms,
        valid,
        lat_deg: lat,
        lon_deg: lon,
        altitude_m: n.altitude_m + normal(rng) * n.jitter_m * 1.5,
        speed_knots: speed_kmh / 1.852,
        course_deg: course,
        hdop,
        pdop: (hdop * 1.6).min(50.0),
        vdop: (hdop * 1.3).min(50.0),
        satellites,
        used,
    }
}

#[allow(clippy::too_many_arguments)]
async fn nmea_loop(
    line: &mut Line,
    dev: &PortDevice,
    n: &NmeaSpec,
    router: &QueryRouter,
    rng: &mut Pcg32,
    c: &mut SerialCounters,
    next_unplug: Option<Instant>,
    st: &mut GpsState,
) -> Stop {
    let period_ms = 1000 / u64::from(n.rate_hz.max(1));
    let period = Duration::from_millis(period_ms);
    // Receivers report on the second (and its tenths): start on the next boundary of UTC.
    let utc_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let first = Instant::now() + Duration::from_millis(period_ms - utc_now % period_ms);
    let first_utc_ms = utc_now + (period_ms - utc_now % period_ms);
    let mut tick = tokio::time::interval_at(first, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut pacer = Pacer::new(dev.baud);
    let sentences: Vec<Sentence> = n
        .sentences
        .iter()
        .filter_map(|s| Sentence::parse(s))
        .collect();
    let mut buf = Vec::with_capacity(1024);
    loop {
        let due = tick.tick().await;
        // The fix's time is its slot on the receiver's grid (a late tick keeps its slot).
        let slot =
            (due.saturating_duration_since(first).as_millis() as u64 + period_ms / 2) / period_ms;
        let utc_ms = first_utc_ms + slot * period_ms;
        let Some((view, _)) = look(router, dev.id, c).await else {
            return Stop::Done;
        };
        if let Some(stop) = unplugged(&view, dev, rng, next_unplug) {
            return stop;
        }
        if !view.powered {
            continue; // the receiver is off
        }
        if pacer.busy_at(Instant::now()) {
            c.overruns += 1; // the line still carries the previous fix
            continue;
        }
        let fix = nmea_fix(n, dev, &view, utc_ms, st, rng);
        buf.clear();
        for s in &sentences {
            let start = buf.len();
            nmea::write_sentence(&mut buf, n.talker, *s, &fix);
            if dev.spec.impairments.bad_checksum > 0.0 {
                // Each line of the sentence (GSV has several) may go out with a bad checksum.
                let mut at = start;
                while at < buf.len() {
                    let end = buf[at..]
                        .iter()
                        .position(|b| *b == b'\n')
                        .map(|p| at + p + 1)
                        .unwrap_or(buf.len());
                    if rng.random::<f64>() < dev.spec.impairments.bad_checksum {
                        nmea::corrupt_checksum(&mut buf[at..end]);
                        c.bad_checksums += 1;
                    }
                    at = end;
                }
            }
        }
        c.lines_out += count_lines(&buf);
        if let Err(e) = send(line, &mut pacer, &mut buf, dev, rng, c, router).await {
            return Stop::Failed(e);
        }
    }
}

fn net_state(view: &DeviceView, spec: &SerialSpec, rng: &mut Pcg32, cell_id: u32) -> NetState {
    let registration = if !view.booted {
        Registration::NotSearching
    } else if view.link_up {
        Registration::Home
    } else {
        Registration::Searching
    };
    let (rssi_dbm, act) = match &spec.persona {
        Persona::AtModem(a) => {
            let r = match &a.rssi_dbm {
                Rssi::Sensor(i) => view.readings.get(usize::from(*i)).copied(),
                Rssi::Dist(d) => Some(d.sample(rng)),
            };
            (r.filter(|_| registration == Registration::Home), a.act)
        }
        _ => (None, 7),
    };
    NetState {
        registration,
        rssi_dbm,
        act,
        tac: (cell_id >> 16) as u16,
        cell_id,
    }
}

async fn at_loop(
    line: &mut Line,
    dev: &PortDevice,
    router: &QueryRouter,
    rng: &mut Pcg32,
    c: &mut SerialCounters,
    next_unplug: Option<Instant>,
    memory: &mut Option<ModemMemory>,
) -> Stop {
    let Persona::AtModem(a) = &dev.spec.persona else {
        return Stop::Done;
    };
    let info = ModemInfo {
        manufacturer: a.manufacturer.clone(),
        model: a.model.clone(),
        revision: dev.firmware.clone(),
        imei: dev.imei.clone(),
        operator: a.operator.clone(),
    };
    let cell_id = (dev.seed as u32) & 0x0FFF_FFFF;
    let mem = memory.get_or_insert_with(|| ModemMemory {
        modem: Modem::new(info.clone()),
        last_uptime: f64::MAX,
    });
    let mut assembler = LineAssembler::new();
    let mut pacer = Pacer::new(dev.baud);
    let mut tick = tokio::time::interval(WATCH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut buf = [0u8; 256];
    let mut lines = Vec::new();
    let mut out = Vec::with_capacity(256);
    loop {
        let modem = &mut mem.modem;
        tokio::select! {
            r = line.stream.read(&mut buf) => {
                let n = match r {
                    Ok(0) => return Stop::Failed(io::Error::other("end of file on the line")),
                    Ok(n) => n,
                    Err(e) => return Stop::Failed(e),
                };
                c.bytes_in += n as u64;
                let Some((view, _)) = look(router, dev.id, c).await else { return Stop::Done };
                if !view.booted {
                    continue; // the modem is off or still booting: nothing answers
                }
                lines.clear();
                assembler.push(&buf[..n], &mut lines);
                out.clear();
                for l in lines.drain(..) {
                    c.lines_in += 1;
                    let net = net_state(&view, &dev.spec, rng, cell_id);
                    // The modem knows its network before it answers (URCs first, if any).
                    modem.network_changed(&net, &mut out);
                    let outcome = match l {
                        Assembled::Line(cmd) => modem.command(&cmd, &net, &mut out),
                        Assembled::Overflow => {
                            out.extend_from_slice(b"\r\nERROR\r\n");
                            Outcome::Error
                        }
                    };
                    c.commands += 1;
                    if outcome != Outcome::Ok {
                        c.command_errors += 1;
                    }
                }
                c.lines_out += count_lines(&out);
                if let Err(e) = send(line, &mut pacer, &mut out, dev, rng, c, router).await {
                    return Stop::Failed(e);
                }
            }
            _ = tick.tick() => {
                let Some((view, _)) = look(router, dev.id, c).await else { return Stop::Done };
                if let Some(stop) = unplugged(&view, dev, rng, next_unplug) {
                    return stop;
                }
                if view.uptime_s < mem.last_uptime && view.booted {
                    // A (re)boot: the modem starts over with its defaults.
                    mem.modem = Modem::new(info.clone());
                }
                mem.last_uptime = if view.booted { view.uptime_s } else { f64::MAX };
                let modem = &mut mem.modem;
                if !view.booted {
                    continue;
                }
                out.clear();
                let net = net_state(&view, &dev.spec, rng, cell_id);
                modem.network_changed(&net, &mut out);
                if !out.is_empty() {
                    let n = count_lines(&out);
                    c.lines_out += n;
                    c.unsolicited += n.div_ceil(2).max(1);
                    if let Err(e) = send(line, &mut pacer, &mut out, dev, rng, c, router).await {
                        return Stop::Failed(e);
                    }
                }
            }
        }
    }
}

/// Renders a template line from the device's state.
pub fn render_line(
    spec: &LinesSpec,
    dev: &PortDevice,
    view: &DeviceView,
    now: SimTime,
    out: &mut Vec<u8>,
) {
    use std::io::Write as _;
    for p in &spec.parts {
        let _ = match p {
            LinePart::Text(t) => out.write_all(t.as_bytes()),
            LinePart::Sensor(i, decimals) => {
                let v = view.readings.get(usize::from(*i)).copied().unwrap_or(0.0);
                let d = decimals
                    .unwrap_or_else(|| dev.decimals.get(usize::from(*i)).copied().unwrap_or(2));
                write!(out, "{v:.*}", usize::from(d))
            }
            LinePart::Seq => write!(out, "{}", view.seq),
            LinePart::Battery => match view.battery_percent {
                Some(b) => write!(out, "{b:.1}"),
                None => out.write_all(b"-"),
            },
            LinePart::Uptime => write!(out, "{}", view.uptime_s.floor() as u64),
            LinePart::Ts => write!(out, "{}", dev.epoch_ms + now.as_millis()),
            LinePart::DeviceId => out.write_all(dev.device_id.as_bytes()),
            // The device's firmware as it runs now (the modem's revision, AT+CGMR, is another).
            LinePart::Firmware => out.write_all(view.firmware.as_bytes()),
        };
    }
    out.extend_from_slice(spec.terminator);
}

async fn lines_loop(
    line: &mut Line,
    dev: &PortDevice,
    spec: &LinesSpec,
    router: &QueryRouter,
    rng: &mut Pcg32,
    c: &mut SerialCounters,
    next_unplug: Option<Instant>,
) -> Stop {
    let mut tick = tokio::time::interval(spec.interval.to_std().max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut pacer = Pacer::new(dev.baud);
    let mut out = Vec::with_capacity(256);
    loop {
        tick.tick().await;
        let Some((view, now)) = look(router, dev.id, c).await else {
            return Stop::Done;
        };
        if let Some(stop) = unplugged(&view, dev, rng, next_unplug) {
            return stop;
        }
        if !view.booted {
            continue;
        }
        if pacer.busy_at(Instant::now()) {
            c.overruns += 1;
            continue;
        }
        out.clear();
        render_line(spec, dev, &view, now, &mut out);
        c.lines_out += 1;
        if let Err(e) = send(line, &mut pacer, &mut out, dev, rng, c, router).await {
            return Stop::Failed(e);
        }
    }
}

async fn modbus_loop(
    line: &mut Line,
    dev: &PortDevice,
    router: &QueryRouter,
    rng: &mut Pcg32,
    c: &mut SerialCounters,
    next_unplug: Option<Instant>,
) -> Stop {
    let units: Arc<[DeviceId]> = vec![dev.id].into();
    let gap = fleet_modbus::server::frame_gap(dev.baud, fleet_core::scenario::Parity::None, 1);
    let serve = fleet_modbus::serve_rtu(&mut line.stream, units, router.clone(), gap);
    tokio::pin!(serve);
    let mut tick = tokio::time::interval(WATCH);
    loop {
        tokio::select! {
            _ = &mut serve => return Stop::Done,
            _ = tick.tick() => {
                let Some((view, _)) = look(router, dev.id, c).await else { return Stop::Done };
                if let Some(stop) = unplugged(&view, dev, rng, next_unplug) {
                    return stop;
                }
            }
        }
    }
}
