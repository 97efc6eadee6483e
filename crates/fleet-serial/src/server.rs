//! The serial ports of a run: which device gets which port, the map file, and the thread that
//! runs every port's persona on its own small runtime.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleet_core::serial::Persona;
use fleet_core::{DeviceId, Fleet};
use fleet_engine::{QueryRouter, ServiceThread};

use crate::line::{Line, Place, pty_link};
use crate::persona::{PortDevice, run_port};

/// Most ports one process opens (each PTY is two descriptors and a /dev/pts entry).
pub const MAX_PORTS: usize = 4_000;

#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error(
        "serial: {count} ports asked for, at most {MAX_PORTS} per process (PTYs are limited by /proc/sys/kernel/pty/max too); use fewer serial devices or more processes"
    )]
    TooMany { count: usize },
    #[error(
        "serial: a real port ({port}) serves one device, and cohort {cohort:?} has {count}: give it count = 1"
    )]
    RealPortShared {
        port: String,
        cohort: String,
        count: u32,
    },
    #[error("serial: cannot open {what}: {source}")]
    Open { what: String, source: io::Error },
    #[error("serial: {path}: {source}")]
    File { path: String, source: io::Error },
    #[error("serial: cannot start the serial thread: {0}")]
    Thread(io::Error),
}

/// Every serial device of a run and where its port is.
#[derive(Clone, Debug, Default)]
pub struct SerialPlan {
    pub ports: Vec<PortDevice>,
}

impl SerialPlan {
    /// Devices whose profile has a `[serial]` persona, each with a PTY under `run_dir/serial/`
    /// unless the scenario gives its cohort a real port. Cohorts on a `[[modbus.rtu]]` line are
    /// left to the Modbus servers.
    pub fn new(fleet: &Fleet, run_dir: &Path, epoch_ms: u64) -> Result<SerialPlan, SerialError> {
        let s = &fleet.settings;
        let mut ports = Vec::new();
        for cohort in &fleet.cohorts {
            let Some(spec) = cohort
                .profile
                .serial
                .as_ref()
                .filter(|_| fleet.has_serial_ports(cohort))
            else {
                continue;
            };
            let cfg = s.serial.iter().find(|p| p.cohort == cohort.name);
            if let Some(port) = cfg.and_then(|c| c.port.as_ref())
                && cohort.count != 1
            {
                return Err(SerialError::RealPortShared {
                    port: port.clone(),
                    cohort: cohort.name.clone(),
                    count: cohort.count,
                });
            }
            let spec = Arc::new(spec.clone());
            let firmware = cohort.firmware.versions[usize::from(cohort.firmware_version)]
                .version
                .clone();
            let decimals: Vec<u8> = cohort.profile.sensors.iter().map(|x| x.decimals).collect();
            for id in cohort.first_device..cohort.first_device + cohort.count {
                let mut name = Vec::new();
                let vars = cohort.vars(DeviceId(id), &[]);
                cohort
                    .profile
                    .identity
                    .device_id
                    .render_into(&vars, &mut name);
                let device_id = String::from_utf8_lossy(&name).into_owned();
                let imei = match &spec.persona {
                    Persona::AtModem(a) => a.imei.render(&vars),
                    _ => String::new(),
                };
                let place = match cfg.and_then(|c| c.port.clone()) {
                    Some(p) => Place::Real(p),
                    None => Place::Pty(pty_link(run_dir, &sanitize(&device_id))),
                };
                ports.push(PortDevice {
                    id: DeviceId(id),
                    device_id,
                    firmware: firmware.clone(),
                    baud: cfg.and_then(|c| c.baud).unwrap_or(spec.baud),
                    spec: spec.clone(),
                    place,
                    epoch_ms,
                    seed: fleet_core::seed::mix64(s.seed ^ fleet_core::seed::mix64(u64::from(id))),
                    imei,
                    decimals: decimals.clone(),
                });
            }
        }
        if ports.len() > MAX_PORTS {
            return Err(SerialError::TooMany { count: ports.len() });
        }
        Ok(SerialPlan { ports })
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// Descriptors the ports hold (a PTY pair is two).
    pub fn open_files(&self) -> u64 {
        self.ports
            .iter()
            .map(|p| {
                if matches!(p.place, Place::Pty(_)) {
                    2
                } else {
                    1
                }
            })
            .sum()
    }
}

/// A device id as a file name: path separators and odd characters become `_`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The running ports; dropping it (or `stop`) closes them and removes the PTY links.
#[derive(Debug)]
pub struct SerialServers {
    pub map_file: PathBuf,
    /// (device id, path a user opens, persona, baud) per port.
    pub ports: Vec<(String, PathBuf, &'static str, u32)>,
    /// The thread serving them; it removes the PTY links when it stops.
    service: ServiceThread,
}

impl SerialServers {
    pub fn stop(&mut self) {
        self.service.stop();
    }
}

/// Opens every port now (a missing real port stops the run before it starts), writes
/// `run_dir/serial-map.csv`, and starts the personas on a thread of their own.
pub fn start(
    plan: &SerialPlan,
    router: QueryRouter,
    run_dir: &Path,
) -> Result<SerialServers, SerialError> {
    let file_err = |path: &Path, source: io::Error| SerialError::File {
        path: path.display().to_string(),
        source,
    };
    let dir = run_dir.join("serial");
    std::fs::create_dir_all(&dir).map_err(|e| file_err(&dir, e))?;
    let rt = ServiceThread::runtime().map_err(SerialError::Thread)?;
    let guard = rt.enter();
    let mut lines = Vec::with_capacity(plan.ports.len());
    let mut links = Vec::new();
    let mut ports = Vec::new();
    for p in &plan.ports {
        let line = Line::open(&p.place, p.baud).map_err(|source| SerialError::Open {
            what: match &p.place {
                Place::Pty(l) => format!("a PTY pair for {} ({})", p.device_id, l.display()),
                Place::Real(r) => format!("{r} (the port of {})", p.device_id),
            },
            source,
        })?;
        let path = match &p.place {
            Place::Pty(l) => {
                links.push(l.clone());
                l.clone()
            }
            Place::Real(r) => PathBuf::from(r),
        };
        ports.push((
            p.device_id.clone(),
            path,
            p.spec.persona.kind().as_str(),
            p.baud,
        ));
        lines.push(line);
    }
    drop(guard);
    if !links.is_empty() {
        tracing::info!(
            "serial: {} virtual ports (PTYs): they carry bytes only; the baud rate and parity a reader sets, breaks and modem control lines (DTR, RTS, DCD) are not emulated; fleetsim paces its own output at each port's baud (docs/serial.md)",
            links.len()
        );
    }
    let map_file = run_dir.join("serial-map.csv");
    let mut text = String::from("device_id,device,persona,path,baud\n");
    for ((name, path, persona, baud), p) in ports.iter().zip(&plan.ports) {
        let _ = writeln!(
            text,
            "{name},{},{persona},{},{baud}",
            p.id.0,
            path.display()
        );
    }
    std::fs::write(&map_file, text).map_err(|e| file_err(&map_file, e))?;
    let devices = plan.ports.clone();
    let service = ServiceThread::spawn("serial", rt, links, move || {
        for (dev, line) in devices.into_iter().zip(lines) {
            tokio::spawn(run_port(dev, router.clone(), Some(line)));
        }
    })
    .map_err(SerialError::Thread)?;
    Ok(SerialServers {
        map_file,
        ports,
        service,
    })
}
