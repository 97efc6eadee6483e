//! The Modbus servers of a run: which device answers on which TCP port and unit id, or on
//! which serial line; the map file that tells a user (and a test) where each device is; and
//! the thread that runs every listener and line on its own small runtime, so that a poller's
//! traffic never runs on a shard's thread except for the device's own step.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fleet_core::load::ModbusHome;
use fleet_core::scenario::Parity;
use fleet_core::{DeviceId, Fleet};
use fleet_engine::{QueryRouter, ServiceThread};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::frame::{self, RtuDecoder, RtuEvent};
use crate::pdu;
use crate::slave::{self, Transport};

/// A device's place: a TCP port and unit id, or a serial line and unit id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    Tcp { port_index: usize, unit: u8 },
    Rtu { bus: usize, unit: u8 },
}

/// One TCP listener and the devices behind it (unit id = index + 1).
#[derive(Clone, Debug)]
pub struct TcpPortPlan {
    pub bind: SocketAddr,
    pub units: Vec<DeviceId>,
}

/// One serial line and its slaves (unit id = index + 1).
#[derive(Clone, Debug)]
pub struct RtuBusPlan {
    /// `<cohort>-<n>`, also the name of the PTY's link in the run folder.
    pub name: String,
    /// A real port; None for a PTY pair.
    pub port: Option<String>,
    pub baud: u32,
    pub parity: Parity,
    pub stop_bits: u8,
    pub units: Vec<DeviceId>,
}

/// Where every Modbus device of a run is served.
#[derive(Clone, Debug, Default)]
pub struct ModbusPlan {
    pub tcp: Vec<TcpPortPlan>,
    pub rtu: Vec<RtuBusPlan>,
    pub max_connections: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "modbus: cannot listen on {addr}: {source} (set [modbus] port, or --modbus-port 0 to let the system pick free ports)"
    )]
    Bind { addr: SocketAddr, source: io::Error },
    #[error(
        "modbus: cohort {cohort:?} has {count} devices but one real serial line ({port}) holds at most {max} slaves (per_bus)"
    )]
    LineFull {
        cohort: String,
        count: u32,
        port: String,
        max: u16,
    },
    #[error("modbus: cannot open serial port {port}: {message}")]
    Port { port: String, message: String },
    #[error("modbus: cannot create a virtual serial port pair: {0}")]
    Pty(String),
    #[error("modbus: {path}: {source}")]
    File { path: String, source: io::Error },
    #[error("modbus: cannot start the server thread: {0}")]
    Thread(io::Error),
}

impl ModbusPlan {
    /// Spreads the fleet's Modbus devices: cohorts on a `[[modbus.rtu]]` line go to serial
    /// lines, the others to TCP ports of `units_per_port` devices each, in device order.
    pub fn new(fleet: &Fleet) -> Result<ModbusPlan, ServeError> {
        let serve = &fleet.settings.modbus;
        let mut plan = ModbusPlan {
            max_connections: serve.max_connections,
            ..ModbusPlan::default()
        };
        let mut tcp_units: Vec<DeviceId> = Vec::new();
        for cohort in &fleet.cohorts {
            if cohort.count == 0 {
                continue;
            }
            let ids = (cohort.first_device..cohort.first_device + cohort.count).map(DeviceId);
            match fleet.modbus_home(cohort) {
                None | Some(ModbusHome::SerialPort) => {} // no map, or served by fleet-serial
                Some(ModbusHome::Bus(i)) => {
                    let Some(bus) = serve.rtu.get(i) else {
                        continue;
                    };
                    let per = u32::from(bus.per_bus.max(1));
                    if let Some(port) = &bus.port
                        && cohort.count > per
                    {
                        return Err(ServeError::LineFull {
                            cohort: cohort.name.clone(),
                            count: cohort.count,
                            port: port.clone(),
                            max: bus.per_bus,
                        });
                    }
                    let ids: Vec<DeviceId> = ids.collect();
                    for (n, chunk) in ids.chunks(per as usize).enumerate() {
                        plan.rtu.push(RtuBusPlan {
                            name: format!("{}-{n}", cohort.name),
                            port: bus.port.clone(),
                            baud: bus.baud,
                            parity: bus.parity,
                            stop_bits: bus.stop_bits,
                            units: chunk.to_vec(),
                        });
                    }
                }
                Some(ModbusHome::Tcp) => tcp_units.extend(ids),
            }
        }
        let per = usize::from(serve.units_per_port.clamp(1, 247));
        for (n, chunk) in tcp_units.chunks(per).enumerate() {
            let port = if serve.port == 0 {
                0
            } else {
                u16::try_from(usize::from(serve.port) + n).map_err(|_| ServeError::Bind {
                    addr: SocketAddr::new(serve.listen, serve.port),
                    source: io::Error::other(format!(
                        "{} ports from {} run past 65535",
                        n + 1,
                        serve.port
                    )),
                })?
            };
            plan.tcp.push(TcpPortPlan {
                bind: SocketAddr::new(serve.listen, port),
                units: chunk.to_vec(),
            });
        }
        Ok(plan)
    }

    pub fn devices(&self) -> usize {
        self.tcp.iter().map(|p| p.units.len()).sum::<usize>()
            + self.rtu.iter().map(|b| b.units.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.rtu.is_empty()
    }

    /// File descriptors the servers hold before any master connects.
    pub fn open_files(&self) -> u64 {
        // A PTY pair is two descriptors (we keep the other end open so the line stays up).
        self.tcp.len() as u64 + 2 * self.rtu.len() as u64
    }
}

/// A running set of Modbus servers; dropping it (or `stop`) closes every listener and line.
#[derive(Debug)]
pub struct ModbusServers {
    /// Where each TCP port listens (the real port when 0 was asked for).
    pub tcp: Vec<SocketAddr>,
    /// Each line's path: the PTY link in the run folder, or the real port.
    pub rtu: Vec<PathBuf>,
    /// The map file: one line per device.
    pub map_file: PathBuf,
    /// The thread serving them; it removes the PTY links when it stops.
    service: ServiceThread,
}

impl ModbusServers {
    pub fn stop(&mut self) {
        self.service.stop();
    }
}

/// A line opened before the run: what the server thread serves, what keeps a PTY up.
enum Line {
    Pty {
        master: tokio_serial::SerialStream,
        _slave: tokio_serial::SerialStream,
    },
    Real(tokio_serial::SerialStream),
}

/// Binds every listener and opens every line now (so a taken port or a missing serial device
/// stops the run before it starts), writes the map file into `run_dir`, and starts serving on
/// a thread of its own. `fleet` gives the device ids written into the map.
pub fn start(
    plan: &ModbusPlan,
    fleet: &Fleet,
    router: QueryRouter,
    run_dir: &Path,
) -> Result<ModbusServers, ServeError> {
    let file_err = |path: &Path, source: io::Error| ServeError::File {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(run_dir).map_err(|e| file_err(run_dir, e))?;
    // Serial streams register with a reactor when they open: open them inside the runtime
    // that will serve them (its thread starts below).
    let rt = ServiceThread::runtime().map_err(ServeError::Thread)?;
    let guard = rt.enter();
    let mut listeners = Vec::new();
    let mut tcp = Vec::new();
    for p in &plan.tcp {
        let l = std::net::TcpListener::bind(p.bind).map_err(|source| ServeError::Bind {
            addr: p.bind,
            source,
        })?;
        l.set_nonblocking(true).map_err(|source| ServeError::Bind {
            addr: p.bind,
            source,
        })?;
        let addr = l.local_addr().map_err(|source| ServeError::Bind {
            addr: p.bind,
            source,
        })?;
        tcp.push(addr);
        listeners.push(l);
    }
    let mut lines = Vec::new();
    let mut rtu = Vec::new();
    let mut links = Vec::new();
    for b in &plan.rtu {
        match &b.port {
            Some(port) => {
                let builder = tokio_serial::new(port, b.baud)
                    .data_bits(tokio_serial::DataBits::Eight)
                    .parity(match b.parity {
                        Parity::None => tokio_serial::Parity::None,
                        Parity::Even => tokio_serial::Parity::Even,
                        Parity::Odd => tokio_serial::Parity::Odd,
                    })
                    .stop_bits(if b.stop_bits == 2 {
                        tokio_serial::StopBits::Two
                    } else {
                        tokio_serial::StopBits::One
                    });
                let stream =
                    tokio_serial::SerialStream::open(&builder).map_err(|e| ServeError::Port {
                        port: port.clone(),
                        message: e.to_string(),
                    })?;
                rtu.push(PathBuf::from(port));
                lines.push(Line::Real(stream));
            }
            None => {
                let (master, slave) = tokio_serial::SerialStream::pair()
                    .map_err(|e| ServeError::Pty(e.to_string()))?;
                use tokio_serial::SerialPort as _;
                let name = slave
                    .name()
                    .ok_or_else(|| ServeError::Pty("the PTY has no name".into()))?;
                let link = run_dir.join(&b.name);
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(&name, &link).map_err(|e| file_err(&link, e))?;
                links.push(link.clone());
                rtu.push(link);
                lines.push(Line::Pty {
                    master,
                    _slave: slave,
                });
            }
        }
    }
    drop(guard);
    let map_file = run_dir.join("modbus-map.csv");
    std::fs::write(&map_file, map_text(plan, fleet, &tcp, &rtu))
        .map_err(|e| file_err(&map_file, e))?;

    let plan = plan.clone();
    let service = ServiceThread::spawn("modbus", rt, links, move || {
        for (l, p) in listeners.into_iter().zip(&plan.tcp) {
            match TcpListener::from_std(l) {
                Ok(l) => {
                    let units: Arc<[DeviceId]> = p.units.clone().into();
                    let limit = Arc::new(Semaphore::new(plan.max_connections as usize));
                    tokio::spawn(serve_tcp(l, units, router.clone(), limit));
                }
                Err(e) => tracing::error!("modbus: listener: {e}"),
            }
        }
        for (line, b) in lines.into_iter().zip(&plan.rtu) {
            let units: Arc<[DeviceId]> = b.units.clone().into();
            let gap = frame_gap(b.baud, b.parity, b.stop_bits);
            let router = router.clone();
            match line {
                Line::Pty { master, _slave } => {
                    tokio::spawn(async move {
                        let _keep = _slave;
                        serve_rtu(master, units, router, gap).await;
                    });
                }
                Line::Real(stream) => {
                    tokio::spawn(serve_rtu(stream, units, router, gap));
                }
            }
        }
    })
    .map_err(ServeError::Thread)?;
    Ok(ModbusServers {
        tcp,
        rtu,
        map_file,
        service,
    })
}

/// The map file: `device_id,device,transport,address,port,unit`.
fn map_text(plan: &ModbusPlan, fleet: &Fleet, tcp: &[SocketAddr], rtu: &[PathBuf]) -> String {
    let mut out = String::from("device_id,device,transport,address,port,unit\n");
    let mut name = Vec::new();
    let mut line = |id: DeviceId, transport: &str, address: &str, port: &str, unit: usize| {
        let cohort = fleet.cohort_of(id);
        name.clear();
        let ctx_vars = cohort.vars(id, &[]);
        cohort
            .profile
            .identity
            .device_id
            .render_into(&ctx_vars, &mut name);
        let _ = writeln!(
            out,
            "{},{},{transport},{address},{port},{unit}",
            String::from_utf8_lossy(&name),
            id.0
        );
    };
    for (p, addr) in plan.tcp.iter().zip(tcp) {
        for (i, id) in p.units.iter().enumerate() {
            let ip = match addr.ip() {
                IpAddr::V6(v6) => format!("[{v6}]"),
                v4 => v4.to_string(),
            };
            line(*id, "tcp", &ip, &addr.port().to_string(), i + 1);
        }
    }
    for (b, path) in plan.rtu.iter().zip(rtu) {
        for (i, id) in b.units.iter().enumerate() {
            line(*id, "rtu", &path.display().to_string(), "", i + 1);
        }
    }
    out
}

/// The silence that ends an RTU frame: 3.5 character times, 1.75 ms above 19,200 baud (the
/// serial line specification's fixed value).
pub fn frame_gap(baud: u32, parity: Parity, stop_bits: u8) -> Duration {
    if baud > 19_200 {
        return Duration::from_micros(1_750);
    }
    let bits = 1 + 8 + u32::from(parity != Parity::None) + u32::from(stop_bits);
    Duration::from_micros(u64::from(bits) * 3_500_000 / u64::from(baud.max(1)))
}

/// Accepts connections on one port; each is served on its own task.
async fn serve_tcp(
    listener: TcpListener,
    units: Arc<[DeviceId]>,
    router: QueryRouter,
    limit: Arc<Semaphore>,
) {
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: say so, wait, go on.
                tracing::warn!("modbus: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if router.closed() {
            return;
        }
        let units = units.clone();
        let router = router.clone();
        tokio::spawn(async move {
            serve_connection(stream, &units, &router).await;
            drop(permit);
        });
    }
}

/// The device behind `unit` on a TCP port. A port with one device also answers to unit 0
/// and 255, which masters use to address "the device at this address".
fn tcp_unit(units: &[DeviceId], unit: u8) -> Option<DeviceId> {
    match unit {
        0 | 255 if units.len() == 1 => units.first().copied(),
        0 => None,
        u => units.get(usize::from(u) - 1).copied(),
    }
}

async fn serve_connection(mut stream: TcpStream, units: &[DeviceId], router: &QueryRouter) {
    let Some(&first) = units.first() else { return };
    slave::count(router, first, |m| m.connections += 1).await;
    let mut buf = BytesMut::with_capacity(512);
    let mut out = Vec::with_capacity(300);
    loop {
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            let frame = match frame::decode_tcp(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("modbus tcp: {e}: closing the connection");
                    slave::count(router, first, |m| m.malformed_frames += 1).await;
                    return;
                }
            };
            out.clear();
            let Some(id) = tcp_unit(units, frame.unit) else {
                // No device with this unit id behind this port: the gateway's answer.
                let function = frame.pdu.first().copied().unwrap_or(0) & 0x7F;
                let mut p = Vec::with_capacity(2);
                pdu::encode_exception(&mut p, function, pdu::exception::GATEWAY_TARGET_FAILED);
                slave::count(router, first, move |m| {
                    m.count_request(function);
                    m.unknown_unit += 1;
                    m.count_exception(pdu::exception::GATEWAY_TARGET_FAILED);
                })
                .await;
                frame::encode_tcp(&mut out, frame.transaction, frame.unit, &p);
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                continue;
            };
            let Ok(outcome) = slave::serve(router, id, frame.pdu, Transport::Tcp, false).await
            else {
                return; // the run is over
            };
            if !outcome.delay.is_zero() {
                tokio::time::sleep(outcome.delay).await;
            }
            if outcome.drop_connection {
                return;
            }
            if outcome.pdu.is_empty() {
                continue;
            }
            frame::encode_tcp(&mut out, frame.transaction, frame.unit, &outcome.pdu);
            if stream.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}

/// Serves the slaves of one serial line (a PTY, a real port, or any byte stream in tests).
pub async fn serve_rtu<S: AsyncRead + AsyncWrite + Unpin>(
    mut line: S,
    units: Arc<[DeviceId]>,
    router: QueryRouter,
    gap: Duration,
) {
    let Some(&first) = units.first() else { return };
    slave::count(&router, first, |m| m.connections += 1).await;
    let mut decoder = RtuDecoder::new();
    let mut buf = [0u8; 512];
    let mut out = Vec::with_capacity(300);
    let mut pending = false;
    loop {
        let read = if pending {
            tokio::time::timeout(gap, line.read(&mut buf)).await.ok()
        } else {
            Some(line.read(&mut buf).await)
        };
        let mut first_event = None;
        match read {
            Some(Ok(0)) => return,
            Some(Err(e)) => {
                tracing::debug!("modbus rtu: {e}");
                if router.closed() {
                    return;
                }
                // A PTY with no reader on the other side reports EIO: wait for one.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Some(Ok(n)) => {
                decoder.push(&buf[..n]);
                pending = true;
            }
            None => {
                // The line went quiet: what is buffered is a frame now (or garbage).
                first_event = decoder.gap();
                pending = false;
            }
        }
        while let Some(ev) = first_event.take().or_else(|| decoder.next_event()) {
            match ev {
                RtuEvent::Frame { unit, pdu } => {
                    if unit == 0 {
                        // Broadcast: every slave on the line carries it out, none answers.
                        for id in units.iter() {
                            if slave::serve(&router, *id, pdu.clone(), Transport::Rtu, true)
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        continue;
                    }
                    let Some(id) = units.get(usize::from(unit) - 1).copied() else {
                        continue; // another slave's address: not ours to answer
                    };
                    let Ok(outcome) = slave::serve(&router, id, pdu, Transport::Rtu, false).await
                    else {
                        return;
                    };
                    if outcome.pdu.is_empty() {
                        continue;
                    }
                    if !outcome.delay.is_zero() {
                        tokio::time::sleep(outcome.delay).await;
                    }
                    out.clear();
                    frame::encode_rtu(&mut out, unit, &outcome.pdu);
                    if outcome.bad_crc
                        && let Some(last) = out.last_mut()
                    {
                        *last ^= 0xFF;
                    }
                    if outcome.truncated {
                        let keep = (out.len() / 2).max(1);
                        out.truncate(keep);
                    }
                    if line.write_all(&out).await.is_err() || line.flush().await.is_err() {
                        return;
                    }
                }
                RtuEvent::BadCrc { .. } | RtuEvent::Garbage { .. } => {
                    slave::count(&router, first, |m| m.malformed_frames += 1).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_gap_is_three_and_a_half_characters() {
        // 9600 8E1: 11 bits per character, 3.5 characters = 4.01 ms.
        assert_eq!(
            frame_gap(9_600, Parity::Even, 1),
            Duration::from_micros(4_010)
        );
        assert_eq!(
            frame_gap(115_200, Parity::None, 2),
            Duration::from_micros(1_750)
        );
    }

    #[test]
    fn a_port_with_one_device_answers_to_unit_0_and_255() {
        let one = [DeviceId(7)];
        assert_eq!(tcp_unit(&one, 0), Some(DeviceId(7)));
        assert_eq!(tcp_unit(&one, 255), Some(DeviceId(7)));
        assert_eq!(tcp_unit(&one, 1), Some(DeviceId(7)));
        assert_eq!(tcp_unit(&one, 2), None);
        let many = [DeviceId(1), DeviceId(2)];
        assert_eq!(tcp_unit(&many, 0), None);
        assert_eq!(tcp_unit(&many, 2), Some(DeviceId(2)));
        assert_eq!(tcp_unit(&many, 3), None);
    }
}
