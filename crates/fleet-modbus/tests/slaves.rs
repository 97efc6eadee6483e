//! tokio-modbus's client (an independent implementation) against fleetsim's slaves: over TCP,
//! over an RTU line in memory and over a PTY; every type in every word order, writes that
//! change a device, exceptions, broadcasts and every injected fault. A real wall-clock run
//! (two shards, no broker: the devices have no MQTT) serves the requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleet_core::DeviceId;
use fleet_core::load::{FsSource, load_fleet};
use fleet_engine::{BackgroundRun, QueryRouter, RunOptions, RunOutcome, RunPlan};
use fleet_modbus::{ModbusPlan, ModbusServers};
use tokio_modbus::prelude::*;

const TIMEOUT: Duration = Duration::from_secs(3);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// (type, value, word orders it is declared in)
const NUMBERS: &[(&str, f64)] = &[
    ("u16", 48_879.0),
    ("i16", -12_345.0),
    ("u32", 3_735_928_559.0),
    ("i32", -123_456_789.0),
    ("u64", 4_822_678_189_205_111.0), // 0x0011_2233_4455_6677
    ("i64", -1_234_567_890_123.0),
    ("f32", -1_234.5),
    ("f64", std::f64::consts::PI),
];
const ORDERS: [&str; 4] = ["ABCD", "CDAB", "BADC", "DCBA"];

fn words_of(kind: &str) -> u16 {
    match kind {
        "u16" | "i16" => 1,
        "u32" | "i32" | "f32" => 2,
        _ => 4,
    }
}

/// Where each (type, order) constant sits in the holding table.
fn layout() -> Vec<(&'static str, f64, &'static str, u16)> {
    let mut out = Vec::new();
    let mut addr = 1000u16;
    for (kind, v) in NUMBERS {
        for order in ORDERS {
            out.push((*kind, *v, order, addr));
            addr += words_of(kind);
        }
    }
    out
}

/// The registers a master expects for `v` as `kind` in `order`, computed here independently
/// of fleetsim's encoder: big-endian bytes, then the order's word and byte swaps.
fn expected(kind: &str, v: f64, order: &str) -> Vec<u16> {
    let bytes: Vec<u8> = match kind {
        "u16" => (v as u16).to_be_bytes().to_vec(),
        "i16" => (v as i16).to_be_bytes().to_vec(),
        "u32" => (v as u32).to_be_bytes().to_vec(),
        "i32" => (v as i32).to_be_bytes().to_vec(),
        "u64" => (v as u64).to_be_bytes().to_vec(),
        "i64" => (v as i64).to_be_bytes().to_vec(),
        "f32" => (v as f32).to_be_bytes().to_vec(),
        "f64" => v.to_be_bytes().to_vec(),
        _ => unreachable!(),
    };
    let mut words: Vec<[u8; 2]> = bytes.chunks(2).map(|c| [c[0], c[1]]).collect();
    if order == "CDAB" || order == "DCBA" {
        words.reverse();
    }
    words
        .into_iter()
        .map(|[a, b]| {
            if order == "BADC" || order == "DCBA" {
                u16::from_be_bytes([b, a])
            } else {
                u16::from_be_bytes([a, b])
            }
        })
        .collect()
}

fn profile(faults: &str) -> String {
    let fw = root().join("firmware-models/meter-fw.toml");
    let mut p = format!(
        r#"
name = "all-types"
[identity]
device_id = "mb-{{id:04}}"
[reporting]
interval = "1s"
jitter = 0.0
[sensors.volts]
kind = "constant"
value = 230.5
decimals = 1
[firmware]
model = "{}"
version = "5.2.0"
[mqtt]
enabled = false
[modbus]
[modbus.faults]
{faults}
[[modbus.registers]]
name = "volts"
table = "input"
address = 0
type = "f32"
source = "sensor.volts"
[[modbus.registers]]
name = "volts_scaled"
table = "input"
address = 2
type = "u16"
scale = 0.1
offset = -40.0
source = "sensor.volts"
[[modbus.registers]]
name = "readings"
table = "input"
address = 3
type = "u64"
source = "seq"
[[modbus.registers]]
name = "interval"
table = "holding"
address = 0
type = "u16"
source = "interval"
[[modbus.registers]]
name = "gain"
table = "holding"
address = 1
type = "f32"
order = "CDAB"
source = "setpoint"
value = 1.5
min = 0.0
max = 10.0
[[modbus.registers]]
name = "fw"
table = "holding"
address = 10
type = "string"
length = 4
source = "firmware.version"
[[modbus.registers]]
name = "fw_badc"
table = "holding"
address = 14
type = "string"
length = 4
order = "BADC"
source = "firmware.version"
[[modbus.registers]]
name = "status"
table = "holding"
address = 20
type = "bitfield"
source = "status"
bits = ["up", "online", "battery_low", "buffering"]
[[modbus.registers]]
name = "relay"
table = "coil"
address = 0
type = "bool"
source = "setpoint"
[[modbus.registers]]
name = "on"
table = "coil"
address = 1
type = "bool"
source = "constant"
value = true
[[modbus.registers]]
name = "up"
table = "discrete_input"
address = 0
type = "bool"
source = "flag.up"
"#,
        fw.display()
    );
    for (kind, v, order, addr) in layout() {
        p.push_str(&format!(
            "[[modbus.registers]]\nname = \"{kind}_{order}\"\ntable = \"holding\"\naddress = {addr}\ntype = \"{kind}\"\norder = \"{order}\"\nsource = \"constant\"\nvalue = {v:?}\n"
        ));
    }
    p
}

/// A fleet served over Modbus, stopped when dropped.
struct Plant {
    _dir: tempfile::TempDir,
    servers: ModbusServers,
    router: QueryRouter,
    run: Option<BackgroundRun>,
    /// device_id -> (transport, address, port, unit)
    map: HashMap<String, (String, String, String, u8)>,
}

impl Plant {
    /// `cohorts`: (name, count, faults table body, rtu) — all on the all-types profile.
    fn start(cohorts: &[(&str, u32, &str, bool)]) -> Plant {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut scenario = String::from(
            "name = \"slaves\"\nduration = \"60s\"\n[ramp]\nmode = \"all\"\n[modbus]\nport = 0\nunits_per_port = 4\n",
        );
        for (name, _, _, rtu) in cohorts {
            if *rtu {
                scenario.push_str(&format!(
                    "[[modbus.rtu]]\ncohort = \"{name}\"\nper_bus = 8\n"
                ));
            }
        }
        for (name, count, faults, _) in cohorts {
            let path = dir.path().join(format!("{name}.toml"));
            std::fs::write(&path, profile(faults)).expect("write profile");
            scenario.push_str(&format!(
                "[[cohorts]]\nname = \"{name}\"\nprofile = \"{}\"\ncount = {count}\n",
                path.display()
            ));
        }
        let sc = dir.path().join("scenario.toml");
        std::fs::write(&sc, scenario).expect("write scenario");
        let fleet = Arc::new(load_fleet(&FsSource, &sc).expect("valid scenario"));
        let modbus = ModbusPlan::new(&fleet).expect("plan");
        let plan = Arc::new(RunPlan::new(fleet.clone(), 2, 1_700_000_000_000));
        let (router, inboxes) = QueryRouter::new(&plan);
        let servers = fleet_modbus::start(&modbus, &fleet, router.clone(), dir.path())
            .expect("servers start");
        let text = std::fs::read_to_string(&servers.map_file).expect("map file");
        let mut map = HashMap::new();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            map.insert(
                f[0].to_string(),
                (
                    f[2].to_string(),
                    f[3].to_string(),
                    f[4].to_string(),
                    f[5].parse().expect("unit"),
                ),
            );
        }
        let opts = RunOptions {
            queries: Some(inboxes),
            ..RunOptions::default()
        };
        let run = BackgroundRun::start(plan, opts);
        Plant {
            _dir: dir,
            servers,
            router,
            run: Some(run),
            map,
        }
    }

    fn tcp(&self, device: &str) -> (SocketAddr, u8) {
        let (t, addr, port, unit) = &self.map[device];
        assert_eq!(t, "tcp", "{device}");
        (format!("{addr}:{port}").parse().expect("addr"), *unit)
    }

    /// Ends the run and returns its outcome (the counters).
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

async fn tcp_client(addr: SocketAddr, unit: u8) -> client::Context {
    tokio::time::timeout(TIMEOUT, tcp::connect_slave(addr, Slave(unit)))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Reads holding registers, retrying while the device is still booting (silent).
async fn read_holding(
    ctx: &mut client::Context,
    addr: u16,
    n: u16,
) -> Result<Vec<u16>, ExceptionCode> {
    tokio::time::timeout(TIMEOUT, ctx.read_holding_registers(addr, n))
        .await
        .expect("answer in time")
        .expect("transport ok")
}

/// Waits (bounded) until the device answers: it boots in a fraction of a second.
async fn wait_up(addr: SocketAddr, unit: u8) -> client::Context {
    for _ in 0..50 {
        let mut ctx = tcp_client(addr, unit).await;
        if let Ok(Ok(Ok(_))) =
            tokio::time::timeout(Duration::from_millis(300), ctx.read_holding_registers(0, 1)).await
        {
            return ctx;
        }
    }
    panic!("device at {addr} unit {unit} never answered");
}

#[test]
fn every_type_in_every_word_order_reads_as_a_master_expects_over_tcp() {
    let plant = Plant::start(&[("meters", 6, "", false)]);
    let (addr, unit) = plant.tcp("mb-0005");
    assert_eq!(
        unit, 2,
        "6 devices, 4 per port: the sixth is unit 2 of the second port"
    );
    rt().block_on(async {
        let mut ctx = wait_up(addr, unit).await;
        for (kind, v, order, a) in layout() {
            let got = read_holding(&mut ctx, a, words_of(kind))
                .await
                .expect("readable");
            assert_eq!(got, expected(kind, v, order), "{kind} {order} at {a}");
        }
        // The whole block (80 registers, 32 points) in one read.
        let mut flat = Vec::new();
        for (kind, v, order, _) in layout() {
            flat.extend(expected(kind, v, order));
        }
        assert_eq!(flat.len(), 80);
        let all = read_holding(&mut ctx, 1000, 80).await.expect("readable");
        assert_eq!(all, flat);
        // One register past the block is unmapped: the whole read fails.
        assert_eq!(
            read_holding(&mut ctx, 1000, 81).await,
            Err(ExceptionCode::IllegalDataAddress)
        );
        // Starting in the middle of a point returns its remaining words.
        assert_eq!(
            read_holding(&mut ctx, 1009, 1).await.expect("ok"),
            flat[9..10]
        );
        // Strings: two characters per register, NUL padded; BADC swaps the bytes.
        let fw = read_holding(&mut ctx, 10, 4).await.expect("readable");
        assert_eq!(fw, [0x352E, 0x322E, 0x3000, 0]);
        let fw = read_holding(&mut ctx, 14, 4).await.expect("readable");
        assert_eq!(fw, [0x2E35, 0x2E32, 0x0030, 0]);
        // Sensor values: f32, and u16 with scale 0.1 and offset -40: (230.5 + 40) / 0.1.
        let volts = tokio::time::timeout(TIMEOUT, ctx.read_input_registers(0, 3))
            .await
            .expect("in time")
            .expect("transport")
            .expect("readable");
        assert_eq!(&volts[..2], &expected("f32", 230.5, "ABCD")[..]);
        assert_eq!(volts[2], 2705);
        // Bitfield: up (bit 0); no MQTT, so not online.
        let status = read_holding(&mut ctx, 20, 1).await.expect("readable");
        assert_eq!(status, [0b0001]);
        let coils = tokio::time::timeout(TIMEOUT, ctx.read_coils(0, 2))
            .await
            .expect("in time")
            .expect("io")
            .expect("ok");
        assert_eq!(coils, [false, true]);
        let up = tokio::time::timeout(TIMEOUT, ctx.read_discrete_inputs(0, 1))
            .await
            .expect("in time")
            .expect("io")
            .expect("ok");
        assert_eq!(up, [true]);
    });
    plant.finish();
}

#[test]
fn writes_change_the_device_and_bad_requests_get_the_right_exception() {
    let plant = Plant::start(&[("meters", 2, "", false)]);
    let (addr, unit) = plant.tcp("mb-0001");
    rt().block_on(async {
        let mut ctx = wait_up(addr, unit).await;
        // A setpoint written in its word order (f32 CDAB) reads back as written.
        let w = expected("f32", 2.25, "CDAB");
        tokio::time::timeout(TIMEOUT, ctx.write_multiple_registers(1, &w))
            .await
            .expect("in time")
            .expect("io")
            .expect("accepted");
        assert_eq!(read_holding(&mut ctx, 1, 2).await.expect("ok"), w);
        // Out of the setpoint's range (max 10): illegal data value, nothing written.
        let r = tokio::time::timeout(
            TIMEOUT,
            ctx.write_multiple_registers(1, &expected("f32", 11.0, "CDAB")),
        )
        .await
        .expect("in time")
        .expect("io");
        assert_eq!(r, Err(ExceptionCode::IllegalDataValue));
        assert_eq!(read_holding(&mut ctx, 1, 2).await.expect("ok"), w);
        // Half of a two-register point: illegal data address.
        let r = tokio::time::timeout(TIMEOUT, ctx.write_single_register(2, 7))
            .await
            .expect("t")
            .expect("io");
        assert_eq!(r, Err(ExceptionCode::IllegalDataAddress));
        // A read-only register (a constant): illegal data address.
        let r = tokio::time::timeout(TIMEOUT, ctx.write_single_register(1000, 7))
            .await
            .expect("t")
            .expect("io");
        assert_eq!(r, Err(ExceptionCode::IllegalDataAddress));
        // Nothing mapped there.
        assert_eq!(
            read_holding(&mut ctx, 500, 1).await,
            Err(ExceptionCode::IllegalDataAddress)
        );
        // A coil setpoint.
        tokio::time::timeout(TIMEOUT, ctx.write_single_coil(0, true))
            .await
            .expect("t")
            .expect("io")
            .expect("ok");
        let coils = tokio::time::timeout(TIMEOUT, ctx.read_coils(0, 1))
            .await
            .expect("t")
            .expect("io")
            .expect("ok");
        assert_eq!(coils, [true]);
        // Read/write multiple (0x17): the write comes first.
        let got = tokio::time::timeout(
            TIMEOUT,
            ctx.read_write_multiple_registers(1, 2, 1, &expected("f32", 4.0, "CDAB")),
        )
        .await
        .expect("t")
        .expect("io")
        .expect("ok");
        assert_eq!(got, expected("f32", 4.0, "CDAB"));

        // The interval register re-times the device: 1 s -> 60 s, and `readings` stops rising
        // at one per second. Counted in reports, not timed: read twice, 2.5 s apart.
        let readings = |r: Vec<u16>| r.iter().fold(0u64, |acc, w| (acc << 16) | u64::from(*w));
        let before = readings(
            tokio::time::timeout(TIMEOUT, ctx.read_input_registers(3, 4))
                .await
                .expect("t")
                .expect("io")
                .expect("ok"),
        );
        tokio::time::timeout(TIMEOUT, ctx.write_single_register(0, 60))
            .await
            .expect("t")
            .expect("io")
            .expect("ok");
        assert_eq!(read_holding(&mut ctx, 0, 1).await.expect("ok"), [60]);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let after = readings(
            tokio::time::timeout(TIMEOUT, ctx.read_input_registers(3, 4))
                .await
                .expect("t")
                .expect("io")
                .expect("ok"),
        );
        assert!(
            after <= before + 1,
            "readings went {before} -> {after} after a 60 s interval was set"
        );
        // An interval of 0 s is out of range.
        let r = tokio::time::timeout(TIMEOUT, ctx.write_single_register(0, 0))
            .await
            .expect("t")
            .expect("io");
        assert_eq!(r, Err(ExceptionCode::IllegalDataValue));
    });
    let out = plant.finish();
    let m = &out.last.modbus;
    assert!(m.writes >= 4, "{m:?}");
    assert!(m.exceptions[2] >= 3 && m.exceptions[3] >= 2, "{m:?}");
    assert_eq!(
        m.requests,
        m.responses + m.exceptions_total() + m.silent,
        "{m:?}"
    );
}

#[test]
fn unknown_units_get_exception_0x0b_and_are_counted() {
    let plant = Plant::start(&[("meters", 3, "", false)]);
    let (addr, _) = plant.tcp("mb-0000");
    rt().block_on(async {
        wait_up(addr, 1).await;
        let mut ctx = tcp_client(addr, 9).await;
        assert_eq!(
            read_holding(&mut ctx, 0, 1).await,
            Err(ExceptionCode::GatewayTargetDevice)
        );
    });
    let out = plant.finish();
    let m = &out.last.modbus;
    assert_eq!((m.unknown_unit, m.exceptions[0x0B]), (1, 1), "{m:?}");
    assert_eq!(
        m.requests,
        m.responses + m.exceptions_total() + m.silent + m.dropped_connections + m.broadcasts,
        "{m:?}"
    );
}

#[test]
fn injected_faults_are_what_a_master_sees() {
    let plant = Plant::start(&[
        ("ok", 1, "", false),
        ("busy", 1, "exception = 1.0\nexception_code = 4", false),
        ("mute", 1, "silence = 1.0", false),
        ("swapped", 1, "swapped_words = 1.0", false),
        ("dropper", 1, "drop_connection = 1.0", false),
        ("slow", 1, "delay_ms = 50", false),
    ]);
    let (addr, unit) = plant.tcp("mb-0000");
    let busy = plant.tcp("mb-0001");
    let mute = plant.tcp("mb-0002");
    let swapped = plant.tcp("mb-0003");
    let dropper = plant.tcp("mb-0004");
    let slow = plant.tcp("mb-0005");
    rt().block_on(async {
        wait_up(addr, unit).await;
        let mut ctx = tcp_client(busy.0, busy.1).await;
        assert_eq!(
            read_holding(&mut ctx, 1000, 1).await,
            Err(ExceptionCode::ServerDeviceFailure)
        );
        // Silence: the master times out.
        let mut ctx = tcp_client(mute.0, mute.1).await;
        let r = tokio::time::timeout(
            Duration::from_millis(500),
            ctx.read_holding_registers(1000, 1),
        )
        .await;
        assert!(r.is_err(), "a silent slave answered: {r:?}");
        // Swapped words: an f32 ABCD arrives as CDAB.
        let mut ctx = wait_up(swapped.0, swapped.1).await;
        let f32_abcd = layout()
            .into_iter()
            .find(|l| l.0 == "f32" && l.2 == "ABCD")
            .expect("f32")
            .3;
        assert_eq!(
            read_holding(&mut ctx, f32_abcd, 2).await.expect("ok"),
            expected("f32", -1234.5, "CDAB")
        );
        // Dropped connection: the read fails (connection closed), not a hang.
        let mut ctx = tcp_client(dropper.0, dropper.1).await;
        let r = tokio::time::timeout(TIMEOUT, ctx.read_holding_registers(1000, 1))
            .await
            .expect("no hang");
        assert!(r.is_err(), "a dropped connection answered: {r:?}");
        // Delay: answered, late (counted; not timed here).
        let mut ctx = wait_up(slow.0, slow.1).await;
        assert!(read_holding(&mut ctx, 1000, 1).await.is_ok());
    });
    let out = plant.finish();
    let m = &out.last.modbus;
    assert!(m.injected_exceptions >= 1 && m.exceptions[4] >= 1, "{m:?}");
    assert!(
        m.silent >= 1 && m.swapped_words >= 1 && m.dropped_connections >= 1 && m.delayed >= 1,
        "{m:?}"
    );
    assert!(out.last.modbus_service.count > 0);
    assert_eq!(
        m.requests,
        m.responses + m.exceptions_total() + m.silent + m.dropped_connections + m.broadcasts,
        "every request is accounted for: {m:?}"
    );
}

#[test]
fn an_rtu_line_in_memory_serves_its_slaves_ignores_others_and_obeys_broadcasts() {
    let plant = Plant::start(&[("line", 3, "", false)]);
    let router = plant.router.clone();
    let (addr, _) = plant.tcp("mb-0000");
    let runtime = rt();
    runtime.block_on(async {
        wait_up(addr, 1).await;
        let (ours, theirs) = tokio::io::duplex(1024);
        let units: Arc<[DeviceId]> = vec![DeviceId(0), DeviceId(1), DeviceId(2)].into();
        tokio::spawn(fleet_modbus::serve_rtu(
            ours,
            units,
            router,
            Duration::from_millis(2),
        ));
        let mut ctx = rtu::attach_slave(theirs, Slave(2));
        for (kind, v, order, a) in layout() {
            let got = read_holding(&mut ctx, a, words_of(kind))
                .await
                .expect("readable");
            assert_eq!(got, expected(kind, v, order), "{kind} {order} over RTU");
        }
        // Broadcast (unit 0): carried out by every slave, answered by none.
        ctx.set_slave(Slave(0));
        let w = expected("f32", 7.5, "CDAB");
        let r = tokio::time::timeout(
            Duration::from_millis(300),
            ctx.write_multiple_registers(1, &w),
        )
        .await;
        assert!(r.is_err(), "a broadcast was answered: {r:?}");
        for unit in 1..=3 {
            ctx.set_slave(Slave(unit));
            assert_eq!(
                read_holding(&mut ctx, 1, 2).await.expect("ok"),
                w,
                "unit {unit}"
            );
        }
        // A unit not on this line: silence.
        ctx.set_slave(Slave(9));
        let r = tokio::time::timeout(Duration::from_millis(300), ctx.read_holding_registers(0, 1))
            .await;
        assert!(r.is_err(), "unit 9 is not on the line but answered: {r:?}");
    });
    let out = plant.finish();
    assert_eq!(out.last.modbus.broadcasts, 3);
}

#[test]
fn rtu_faults_corrupt_the_crc_or_cut_the_frame() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let plant = Plant::start(&[
        ("crc", 1, "bad_crc = 1.0", false),
        ("cut", 1, "truncated = 1.0", false),
    ]);
    let router = plant.router.clone();
    let (addr, unit) = plant.tcp("mb-0000");
    rt().block_on(async {
        wait_up(addr, unit).await;
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let units: Arc<[DeviceId]> = vec![DeviceId(0), DeviceId(1)].into();
        tokio::spawn(fleet_modbus::serve_rtu(
            ours,
            units,
            router,
            Duration::from_millis(2),
        ));
        let mut request = Vec::new();
        // Read 2 holding registers at 1000 from unit 1, then unit 2.
        fleet_modbus::frame::encode_rtu(&mut request, 1, &[0x03, 0x03, 0xE8, 0x00, 0x02]);
        theirs.write_all(&request).await.expect("write");
        let mut buf = [0u8; 9];
        tokio::time::timeout(TIMEOUT, theirs.read_exact(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        let crc = fleet_modbus::frame::crc16(&buf[..7]).to_le_bytes();
        assert_eq!(&buf[..3], &[1, 3, 4]);
        assert_ne!(&buf[7..], &crc, "the CRC should be wrong");
        request.clear();
        fleet_modbus::frame::encode_rtu(&mut request, 2, &[0x03, 0x03, 0xE8, 0x00, 0x02]);
        tokio::time::sleep(Duration::from_millis(10)).await;
        theirs.write_all(&request).await.expect("write");
        let mut cut = [0u8; 9];
        let n = tokio::time::timeout(TIMEOUT, theirs.read(&mut cut))
            .await
            .expect("in time")
            .expect("read");
        assert!(n < 9, "a truncated answer came whole: {:?}", &cut[..n]);
        // A request with a bad CRC is not answered and is counted.
        let mut bad = request.clone();
        if let Some(b) = bad.last_mut() {
            *b ^= 0x55;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        theirs.write_all(&bad).await.expect("write");
        let mut none = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_millis(200), theirs.read(&mut none)).await;
        assert!(r.is_err(), "a request with a bad CRC was answered");
    });
    let out = plant.finish();
    let m = &out.last.modbus;
    assert_eq!((m.bad_crc, m.truncated), (1, 1), "{m:?}");
    assert!(m.malformed_frames >= 1, "{m:?}");
}

#[test]
fn a_pty_line_serves_the_cohort_on_it() {
    let plant = Plant::start(&[("tcp", 1, "", false), ("bus", 3, "", true)]);
    let (tcp_addr, _) = plant.tcp("mb-0000");
    let (t, path, _, unit) = plant.map["mb-0002"].clone();
    assert_eq!((t.as_str(), unit), ("rtu", 2));
    assert_eq!(plant.servers.rtu.len(), 1);
    rt().block_on(async {
        wait_up(tcp_addr, 1).await;
        let port = tokio_serial::SerialStream::open(&tokio_serial::new(&path, 9600))
            .expect("open the PTY");
        let mut ctx = rtu::attach_slave(port, Slave(unit));
        let (kind, v, order, a) = layout()[20];
        let mut got = None;
        for _ in 0..10 {
            if let Ok(Ok(Ok(r))) = tokio::time::timeout(
                Duration::from_millis(500),
                ctx.read_holding_registers(a, words_of(kind)),
            )
            .await
            {
                got = Some(r);
                break;
            }
        }
        assert_eq!(
            got,
            Some(expected(kind, v, order)),
            "{kind} {order} over a PTY"
        );
    });
    plant.finish();
}

#[test]
fn device_identification_names_vendor_product_and_firmware() {
    let plant = Plant::start(&[("meters", 1, "", false)]);
    let (addr, unit) = plant.tcp("mb-0000");
    rt().block_on(async {
        let mut ctx = wait_up(addr, unit).await;
        let r = tokio::time::timeout(TIMEOUT, ctx.read_device_identification(ReadCode::Basic, 0))
            .await
            .expect("in time")
            .expect("io")
            .expect("answered");
        let objects: Vec<(u8, String)> = r
            .device_id_objects
            .iter()
            .map(|o| (o.id, String::from_utf8_lossy(&o.value).into_owned()))
            .collect();
        assert_eq!(
            objects,
            [
                (0, "fleetsim".to_string()),
                (1, "all-types".to_string()),
                (2, "5.2.0".to_string())
            ]
        );
        let one = tokio::time::timeout(
            TIMEOUT,
            ctx.read_device_identification(ReadCode::Specific, 2),
        )
        .await
        .expect("in time")
        .expect("io")
        .expect("answered");
        assert_eq!(one.device_id_objects.len(), 1);
        let missing = tokio::time::timeout(
            TIMEOUT,
            ctx.read_device_identification(ReadCode::Specific, 0x80),
        )
        .await
        .expect("in time")
        .expect("io");
        assert_eq!(missing.err(), Some(ExceptionCode::IllegalDataAddress));
    });
    plant.finish();
}
