//! Serial personas over in-process PTY pairs, driven by a real wall-clock run (two shards, no
//! broker): a reader opens the linked port as a user's program would, and checks what a GPS
//! receiver, a modem, a template device and a Modbus RTU meter say; unplugs; impairments;
//! a thousand ports in one process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_core::load::{FsSource, load_fleet};
use fleet_engine::{BackgroundRun, QueryRouter, RunOptions, RunOutcome, RunPlan};
use fleet_serial::nmea;
use fleet_serial::{SerialPlan, SerialServers};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const FW: &str = "firmware-models/tracker-fw.toml";

fn profile(name: &str, body: &str) -> String {
    format!(
        r#"
name = "{name}"
[identity]
device_id = "{name}-{{id:03}}"
[reporting]
interval = "1s"
jitter = 0.0
[sensors.lat]
kind = "constant"
value = 48.858222
decimals = 6
[sensors.lon]
kind = "constant"
value = 2.2945
decimals = 6
[sensors.rssi]
kind = "constant"
value = -71.0
decimals = 0
[link]
mtbf = "never"
[firmware]
model = "{}"
version = "1.8.3"
[mqtt]
enabled = false
{body}
"#,
        root().join(FW).display()
    )
}

struct Rig {
    /// The reader's runtime (ports register with its reactor when they open).
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    servers: SerialServers,
    run: Option<BackgroundRun>,
    /// device_id -> path
    ports: HashMap<String, PathBuf>,
}

impl Rig {
    /// `cohorts`: (profile name, profile body, count); `extra`: scenario text (events).
    fn start(cohorts: &[(&str, &str, u32)], extra: &str) -> Rig {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut scenario =
            String::from("name = \"ports\"\nduration = \"60s\"\n[ramp]\nmode = \"all\"\n");
        for (name, body, count) in cohorts {
            let path = dir.path().join(format!("{name}.toml"));
            std::fs::write(&path, profile(name, body)).expect("profile");
            scenario.push_str(&format!(
                "[[cohorts]]\nname = \"{name}\"\nprofile = \"{}\"\ncount = {count}\n",
                path.display()
            ));
        }
        scenario.push_str(extra);
        let sc = dir.path().join("scenario.toml");
        std::fs::write(&sc, scenario).expect("scenario");
        let fleet = Arc::new(load_fleet(&FsSource, &sc).unwrap_or_else(|e| panic!("{e}")));
        let plan = Arc::new(RunPlan::new(fleet.clone(), 2, 1_700_000_000_000));
        let (router, inboxes) = QueryRouter::new(&plan);
        let run_dir = dir.path().join("run");
        let serial = SerialPlan::new(&fleet, &run_dir, 1_700_000_000_000).expect("plan");
        let servers = fleet_serial::start(&serial, router, &run_dir).expect("ports open");
        let text = std::fs::read_to_string(&servers.map_file).expect("map");
        let ports = text
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[0].to_string(), PathBuf::from(f[3]))
            })
            .collect();
        let opts = RunOptions {
            queries: Some(inboxes),
            ..RunOptions::default()
        };
        let run = BackgroundRun::start(plan, opts);
        Rig {
            rt: rt(),
            _dir: dir,
            servers,
            run: Some(run),
            ports,
        }
    }

    fn open(&self, device: &str, baud: u32) -> tokio_serial::SerialStream {
        let _in_runtime = self.rt.enter();
        tokio_serial::SerialStream::open(&tokio_serial::new(
            self.ports[device].to_string_lossy(),
            baud,
        ))
        .expect("the linked PTY opens")
    }

    fn finish(mut self) -> RunOutcome {
        let out = self
            .run
            .take()
            .expect("running")
            .finish()
            .expect("run completes");
        self.servers.stop();
        out
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn read_lines<R: tokio::io::AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    n: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < n && Instant::now() < deadline {
        let mut l = String::new();
        match tokio::time::timeout(Duration::from_secs(3), r.read_line(&mut l)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(_)) => out.push(l),
            Ok(Err(e)) => panic!("reading the port: {e}"),
        }
    }
    out
}

const GPS: &str = r#"
[serial]
persona = "nmea"
baud = 115200
[serial.nmea]
rate_hz = 5
lat = "sensor.lat"
lon = "sensor.lon"
jitter_m = 3.0
ttff_s = 0
"#;

/// (degrees) from NMEA ddmm.mmmmm and a hemisphere.
fn degrees(v: &str, hemi: &str, deg_digits: usize) -> f64 {
    let d: f64 = v[..deg_digits].parse().expect("degrees");
    let m: f64 = v[deg_digits..].parse().expect("minutes");
    let x = d + m / 60.0;
    if hemi == "S" || hemi == "W" { -x } else { x }
}

#[test]
fn a_gps_receiver_sends_valid_nmea_around_its_position_at_its_rate() {
    let rig = Rig::start(&[("gps", GPS, 1)], "");
    let port = rig.open("gps-000", 115_200);
    let lines = rig.rt.block_on(async {
        let mut r = BufReader::new(port);
        read_lines(&mut r, 120).await
    });
    assert!(lines.len() >= 100, "{} lines", lines.len());
    // The first line may be cut (the reader opened mid-sentence); every other one is whole.
    for l in &lines[1..] {
        assert!(l.ends_with("\r\n") && l.len() <= 82, "{l:?}");
        assert!(nmea::verify(l.trim_end().as_bytes()), "bad checksum: {l:?}");
    }
    let kinds: Vec<&str> = lines[1..].iter().map(|l| &l[3..6]).collect();
    for k in ["GGA", "RMC", "GSA", "GSV", "VTG"] {
        assert!(kinds.contains(&k), "no {k}");
    }
    // Valid fixes near the Eiffel tower (3 m jitter: within 30 m), five per second.
    let ggas: Vec<Vec<&str>> = lines[1..]
        .iter()
        .filter(|l| l.starts_with("$GPGGA"))
        .map(|l| l.split(',').collect())
        .collect();
    assert!(ggas.len() >= 15, "{}", ggas.len());
    let fixed: Vec<&Vec<&str>> = ggas.iter().filter(|g| g[6] == "1").collect();
    assert!(
        fixed.len() >= ggas.len() - 1,
        "ttff 0: fixes from the start"
    );
    for g in &fixed {
        let lat = degrees(g[2], g[3], 2);
        let lon = degrees(g[4], g[5], 3);
        assert!((lat - 48.858222).abs() * 111_320.0 < 30.0, "{g:?}");
        assert!((lon - 2.2945).abs() * 73_000.0 < 30.0, "{g:?}");
    }
    let times: Vec<f64> = fixed
        .iter()
        .map(|g| g[1][4..].parse::<f64>().expect("seconds"))
        .collect();
    // 5 Hz on the boundaries of UTC: fixes 0.2 s apart (a fix may be skipped when the
    // machine is busy; never a fix off the grid).
    let steps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).rem_euclid(60.0))
        .collect();
    for dt in &steps {
        let k = (dt / 0.2).round();
        assert!(
            k >= 1.0 && (dt - k * 0.2).abs() < 1e-6,
            "off the 5 Hz grid: {times:?}"
        );
    }
    let regular = steps.iter().filter(|dt| (**dt - 0.2).abs() < 1e-6).count();
    assert!(
        regular * 10 >= steps.len() * 8,
        "mostly 0.2 s apart: {times:?}"
    );
    let out = rig.finish();
    assert!(
        out.last.serial.lines_out >= 100 && out.last.serial.ports_opened == 1,
        "{:?}",
        out.last.serial
    );
}

const MODEM: &str = r#"
[serial]
persona = "at_modem"
[serial.at_modem]
rssi_dbm = "sensor.rssi"
imei = "86{id:013}"
"#;

async fn at(port: &mut tokio_serial::SerialStream, cmd: &str, want_final: bool) -> String {
    port.write_all(format!("{cmd}\r").as_bytes())
        .await
        .expect("write");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        let done = {
            let t = String::from_utf8_lossy(&got);
            t.ends_with("OK\r\n")
                || t.ends_with("ERROR\r\n")
                || (t.contains("+CME ERROR") && t.ends_with("\r\n"))
        };
        if done && want_final {
            break;
        }
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(300), port.read(&mut buf)).await
        {
            got.extend_from_slice(&buf[..n]);
        } else if !want_final {
            break;
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn a_modem_answers_at_commands_and_deregisters_when_its_link_drops() {
    // The link goes down at 9 s for 3 s (the modem boots in about 3 s): the modem says so
    // with +CREG URCs.
    let rig = Rig::start(
        &[("modem", MODEM, 1)],
        "[[events]]\nat = \"9s\"\nkind = \"outage\"\nduration = \"3s\"\n",
    );
    let mut port = rig.open("modem-000", 115_200);
    rig.rt.block_on(async {
        // Wait (bounded) for the modem to boot.
        let mut ok = false;
        for _ in 0..20 {
            if at(&mut port, "AT", true).await.contains("OK") {
                ok = true;
                break;
            }
        }
        assert!(ok, "the modem never answered AT");
        assert_eq!(
            at(&mut port, "ATE0", true).await,
            "ATE0\r\r\nOK\r\n",
            "echo until ATE0"
        );
        assert_eq!(
            at(&mut port, "AT+CSQ", true).await,
            "\r\n+CSQ: 21,99\r\n\r\nOK\r\n",
            "-71 dBm"
        );
        assert_eq!(
            at(&mut port, "AT+CGSN", true).await,
            "\r\n860000000000000\r\n\r\nOK\r\n"
        );
        assert!(at(&mut port, "AT+CREG?", true).await.contains("+CREG: 0,1"));
        assert_eq!(at(&mut port, "AT+NOPE", true).await, "\r\nERROR\r\n");
        assert!(
            at(&mut port, "AT+CREG=7", true)
                .await
                .contains("+CME ERROR: 50")
        );
        assert!(at(&mut port, "AT+CREG=1", true).await.contains("OK"));
        // Collect URCs through the outage (9 s .. 12 s) and after.
        let mut urcs = String::new();
        let deadline = Instant::now() + Duration::from_secs(16);
        let mut buf = [0u8; 256];
        while Instant::now() < deadline && !urcs.contains("+CREG: 1") {
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(500), port.read(&mut buf)).await
            {
                urcs.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
        let lost = urcs
            .find("+CREG: 2")
            .unwrap_or_else(|| panic!("no deregistration: {urcs:?}"));
        let back = urcs
            .rfind("+CREG: 1")
            .unwrap_or_else(|| panic!("no registration: {urcs:?}"));
        assert!(lost < back, "{urcs:?}");
    });
    let out = rig.finish();
    let s = out.last.serial;
    assert!(
        s.commands >= 8 && s.command_errors >= 2 && s.unsolicited >= 2,
        "{s:?}"
    );
}

const LINES: &str = r#"
[serial]
persona = "lines"
[serial.lines]
interval = "200ms"
template = "POS {device_id} {sensor.lat:.3},{sensor.lon} rssi={sensor.rssi} seq={seq} {{ok}}"
terminator = "lf"
"#;

#[test]
fn a_template_device_prints_its_readings() {
    let rig = Rig::start(&[("wx", LINES, 2)], "");
    let port = rig.open("wx-001", 9600);
    let lines = rig
        .rt
        .block_on(async { read_lines(&mut BufReader::new(port), 6).await });
    assert!(lines.len() >= 5, "{lines:?}");
    for l in &lines[1..] {
        assert!(
            l.starts_with("POS wx-001 48.858,2.294500 rssi=-71 seq=") && l.ends_with(" {ok}\n"),
            "{l:?}"
        );
    }
    rig.finish();
}

#[test]
fn an_unplugged_port_disappears_and_comes_back_at_the_same_path() {
    let rig = Rig::start(
        &[("wx", LINES, 1)],
        "[[events]]\nat = \"2s\"\nkind = \"unplug\"\nduration = \"2s\"\n",
    );
    let path = rig.ports["wx-000"].clone();
    let first = std::fs::read_link(&path).expect("linked at start");
    let t0 = Instant::now();
    let mut gone = false;
    while t0.elapsed() < Duration::from_secs(4) && !gone {
        gone = std::fs::symlink_metadata(&path).is_err();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone, "the link never went away");
    let mut back = None;
    while t0.elapsed() < Duration::from_secs(9) && back.is_none() {
        back = std::fs::read_link(&path).ok();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(back.is_some(), "the link never came back");
    // It works again.
    let port = rig.open("wx-000", 9600);
    let lines = rig
        .rt
        .block_on(async { read_lines(&mut BufReader::new(port), 3).await });
    assert!(lines.len() >= 2, "{lines:?} (first PTY {first:?})");
    let out = rig.finish();
    assert_eq!(out.last.serial.unplugs, 1);
    assert_eq!(out.last.serial.ports_opened, 2);
}

#[test]
fn impairments_break_checksums_and_bytes_at_their_rates() {
    let body = GPS.replace(
        "[serial.nmea]",
        "[serial.impairments]\nbad_checksum = 1.0\n[serial.nmea]",
    );
    let rig = Rig::start(&[("gps", &body, 1)], "");
    let port = rig.open("gps-000", 115_200);
    let lines = rig
        .rt
        .block_on(async { read_lines(&mut BufReader::new(port), 30).await });
    assert!(lines.len() >= 20);
    assert!(
        lines[1..]
            .iter()
            .all(|l| !nmea::verify(l.trim_end().as_bytes())),
        "every checksum broken"
    );
    let out = rig.finish();
    assert!(out.last.serial.bad_checksums >= 20, "{:?}", out.last.serial);
}

#[test]
fn a_modbus_rtu_meter_answers_on_its_own_port() {
    let body = r#"
[serial]
persona = "modbus_rtu"
[modbus]
[[modbus.registers]]
name = "lat"
table = "input"
address = 0
type = "f64"
source = "sensor.lat"
"#;
    let rig = Rig::start(&[("din", body, 2)], "");
    let port = rig.open("din-001", 9600);
    rig.rt.block_on(async {
        use tokio_modbus::prelude::*;
        let mut ctx = rtu::attach_slave(port, Slave(1));
        let mut got = None;
        for _ in 0..20 {
            if let Ok(Ok(Ok(r))) =
                tokio::time::timeout(Duration::from_millis(500), ctx.read_input_registers(0, 4))
                    .await
            {
                got = Some(r);
                break;
            }
        }
        let r = got.expect("the meter answers");
        let v = f64::from_bits(r.iter().fold(0u64, |a, w| (a << 16) | u64::from(*w)));
        assert_eq!(v, 48.858222);
    });
    rig.finish();
}

#[test]
fn a_thousand_ports_run_in_one_process() {
    let body = GPS.replace("rate_hz = 5", "rate_hz = 1");
    let rig = Rig::start(&[("gps", &body, 1000)], "");
    assert_eq!(rig.ports.len(), 1000);
    // Read a few of them while all run.
    for dev in ["gps-000", "gps-499", "gps-999"] {
        let port = rig.open(dev, 115_200);
        let lines = rig
            .rt
            .block_on(async { read_lines(&mut BufReader::new(port), 8).await });
        assert!(
            lines.len() >= 7
                && lines[1..]
                    .iter()
                    .all(|l| nmea::verify(l.trim_end().as_bytes())),
            "{dev}: {lines:?}"
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let out = rig.finish();
    let s = out.last.serial;
    assert_eq!(s.ports_opened, 1000, "{s:?}");
    assert!(
        s.lines_out >= 1000 * 7 * 2,
        "two fixes or more of 7 lines per port: {s:?}"
    );
    assert_eq!(s.open_errors, 0);
}
