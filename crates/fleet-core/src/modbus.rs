//! Modbus register maps: what a device shows a Modbus master, declared in its profile's
//! `[modbus]` table and validated into a `RegisterMap`; how typed values become 16-bit
//! registers in each word and byte order; and the faults a slave can inject.
//!
//! The device model (`device.rs`) answers reads and writes through this map from the same
//! state that drives its MQTT telemetry. Framing and sockets live in the `fleet-modbus` crate.

use serde::Deserialize;

use crate::dist::{Dist, DistSpec};
use crate::error::Checker;
use crate::profile::SensorSpec;
use crate::time::SimDuration;

/// Exception codes the device model answers with (Modbus application protocol, section 7).
pub mod exception {
    pub const ILLEGAL_FUNCTION: u8 = 0x01;
    pub const ILLEGAL_DATA_ADDRESS: u8 = 0x02;
    pub const ILLEGAL_DATA_VALUE: u8 = 0x03;
    pub const SERVER_DEVICE_FAILURE: u8 = 0x04;
    pub const ACKNOWLEDGE: u8 = 0x05;
    pub const SERVER_DEVICE_BUSY: u8 = 0x06;
    pub const MEMORY_PARITY_ERROR: u8 = 0x08;
    pub const GATEWAY_PATH_UNAVAILABLE: u8 = 0x0A;
    pub const GATEWAY_TARGET_FAILED: u8 = 0x0B;
    /// Codes a fault may inject.
    pub const INJECTABLE: &[u8] = &[1, 2, 3, 4, 5, 6, 8, 10, 11];
}

/// Longest string point, in registers (a read of 125 registers must be able to hold it).
pub const MAX_STRING_REGISTERS: u16 = 123;
/// Most points one profile may declare.
pub const MAX_POINTS: usize = 10_000;
/// Bounds of the `interval` setpoint, in seconds, unless the point gives its own.
pub const INTERVAL_MIN_S: f64 = 1.0;
pub const INTERVAL_MAX_S: f64 = 86_400.0;

// ---------------------------------------------------------------- raw (as written) ----------

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusRaw {
    /// Vendor name a master reads with Read Device Identification (function 0x2B/0x0E).
    pub vendor: Option<String>,
    /// How a read that touches an address no point covers is answered.
    #[serde(default)]
    pub unmapped: Unmapped,
    #[serde(default)]
    pub registers: Vec<PointRaw>,
    #[serde(default)]
    pub faults: ModbusFaultsRaw,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmapped {
    /// Exception 0x02 (illegal data address), as most devices do.
    #[default]
    Exception,
    /// Zeros, as devices with a flat register file do.
    Zero,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    Coil,
    DiscreteInput,
    Input,
    Holding,
}

impl Table {
    pub const ALL: [Table; 4] = [
        Table::Coil,
        Table::DiscreteInput,
        Table::Input,
        Table::Holding,
    ];
    pub fn index(self) -> usize {
        self as usize
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::DiscreteInput => "discrete_input",
            Table::Input => "input",
            Table::Holding => "holding",
        }
    }
    /// Coils and discrete inputs hold bits; input and holding registers hold 16-bit words.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::DiscreteInput)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PointType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    String,
    Bitfield,
}

impl PointType {
    pub fn as_str(self) -> &'static str {
        match self {
            PointType::Bool => "bool",
            PointType::U16 => "u16",
            PointType::I16 => "i16",
            PointType::U32 => "u32",
            PointType::I32 => "i32",
            PointType::U64 => "u64",
            PointType::I64 => "i64",
            PointType::F32 => "f32",
            PointType::F64 => "f64",
            PointType::String => "string",
            PointType::Bitfield => "bitfield",
        }
    }
    /// Registers (or bits) a value of this type takes; strings give their own length.
    fn words(self) -> u16 {
        match self {
            PointType::Bool | PointType::U16 | PointType::I16 | PointType::Bitfield => 1,
            PointType::U32 | PointType::I32 | PointType::F32 => 2,
            PointType::U64 | PointType::I64 | PointType::F64 => 4,
            PointType::String => 1,
        }
    }
    fn is_numeric(self) -> bool {
        !matches!(
            self,
            PointType::Bool | PointType::String | PointType::Bitfield
        )
    }
}

/// Byte order of a value across its registers: A is the most significant byte. `ABCD` is big
/// endian (the Modbus default); `CDAB` swaps words, `BADC` swaps the bytes in each word,
/// `DCBA` is little endian. For 64-bit values the word swap reverses all four words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum WordOrder {
    #[default]
    #[serde(rename = "ABCD")]
    Abcd,
    #[serde(rename = "CDAB")]
    Cdab,
    #[serde(rename = "BADC")]
    Badc,
    #[serde(rename = "DCBA")]
    Dcba,
}

impl WordOrder {
    pub const ALL: [WordOrder; 4] = [
        WordOrder::Abcd,
        WordOrder::Cdab,
        WordOrder::Badc,
        WordOrder::Dcba,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            WordOrder::Abcd => "ABCD",
            WordOrder::Cdab => "CDAB",
            WordOrder::Badc => "BADC",
            WordOrder::Dcba => "DCBA",
        }
    }
    fn swaps_words(self) -> bool {
        matches!(self, WordOrder::Cdab | WordOrder::Dcba)
    }
    fn swaps_bytes(self) -> bool {
        matches!(self, WordOrder::Badc | WordOrder::Dcba)
    }
    /// The order a master expecting `self` would decode wrongly: words swapped.
    pub fn word_swapped(self) -> WordOrder {
        match self {
            WordOrder::Abcd => WordOrder::Cdab,
            WordOrder::Cdab => WordOrder::Abcd,
            WordOrder::Badc => WordOrder::Dcba,
            WordOrder::Dcba => WordOrder::Badc,
        }
    }
}

/// A number or a text, for `value`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ValueRaw {
    Number(f64),
    Text(String),
    Bool(bool),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointRaw {
    pub name: String,
    pub table: Table,
    /// 0-based protocol address (what goes in the request; mbpoll -0 or reference - 1).
    pub address: u32,
    #[serde(rename = "type")]
    pub kind: PointType,
    pub order: Option<WordOrder>,
    pub source: String,
    /// register = (value - offset) / scale; a master computes value = register * scale + offset.
    pub scale: Option<f64>,
    pub offset: Option<f64>,
    /// Registers a string takes (two characters each).
    pub length: Option<u16>,
    /// `constant`: the value; `setpoint`: the initial value.
    pub value: Option<ValueRaw>,
    /// `status` bitfields: the flag of each bit, from bit 0.
    pub bits: Option<Vec<String>>,
    /// Writable points: the range a write must fall in (engineering units), else exception 0x03.
    pub min: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusFaultsRaw {
    /// Probability a request is answered with an exception.
    pub exception: Option<f64>,
    /// The exception code injected (default 0x06, server device busy).
    pub exception_code: Option<u8>,
    /// Delay before every response, milliseconds (a number or a distribution table).
    pub delay_ms: Option<DistSpec>,
    /// Probability a request gets no answer at all (the master times out).
    pub silence: Option<f64>,
    /// Modbus TCP: probability the connection is closed instead of answered.
    pub drop_connection: Option<f64>,
    /// Modbus RTU: probability the answer goes out with a wrong CRC.
    pub bad_crc: Option<f64>,
    /// Modbus RTU: probability the answer is cut short.
    pub truncated: Option<f64>,
    /// Probability multi-register values go out in the wrong word order.
    pub swapped_words: Option<f64>,
}

impl ModbusFaultsRaw {
    /// `self` with the fields `over` sets replaced (a cohort's override of its profile's faults).
    pub fn overridden_by(&self, over: &ModbusFaultsRaw) -> ModbusFaultsRaw {
        ModbusFaultsRaw {
            exception: over.exception.or(self.exception),
            exception_code: over.exception_code.or(self.exception_code),
            delay_ms: over.delay_ms.clone().or_else(|| self.delay_ms.clone()),
            silence: over.silence.or(self.silence),
            drop_connection: over.drop_connection.or(self.drop_connection),
            bad_crc: over.bad_crc.or(self.bad_crc),
            truncated: over.truncated.or(self.truncated),
            swapped_words: over.swapped_words.or(self.swapped_words),
        }
    }
}

// ---------------------------------------------------------------- validated ----------------

/// Device flags a point can show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    /// Powered, booted and on its network: answering.
    Up,
    /// Has an MQTT session.
    Online,
    BatteryLow,
    /// Holding telemetry in its offline buffer.
    Buffering,
}

pub const FLAG_NAMES: &[&str] = &["up", "online", "battery_low", "buffering"];

impl Flag {
    fn parse(s: &str) -> Option<Flag> {
        Some(match s {
            "up" => Flag::Up,
            "online" => Flag::Online,
            "battery_low" => Flag::BatteryLow,
            "buffering" => Flag::Buffering,
            _ => return None,
        })
    }
}

/// Where a point's value comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// The sensor's latest reading (index into the profile's sensors).
    Sensor(u16),
    /// Battery charge, percent.
    Battery,
    /// The firmware version as text.
    FirmwareVersion,
    /// One number of the firmware version `major.minor.patch`.
    FirmwarePart(u8),
    /// Seconds since the device last booted.
    Uptime,
    /// Telemetry reports made (the `seq` of the latest).
    Seq,
    /// The reporting interval in seconds; writing it re-times the device.
    Interval,
    Constant(f64),
    Text(String),
    /// A writable value kept per device (slot into the device's setpoints).
    Setpoint {
        slot: u16,
        initial: f64,
    },
    Flag(Flag),
    /// A bitfield of flags, bit 0 first.
    Status(Vec<Flag>),
    /// A coil: writing ON reboots the device; reads as OFF.
    Reboot,
}

pub const SOURCE_NAMES: &str = "sensor.<name>, battery, firmware.version, firmware.major, firmware.minor, firmware.patch, uptime, seq, interval, constant, setpoint, flag.<up|online|battery_low|buffering>, status, reboot";

#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub name: String,
    pub table: Table,
    pub address: u16,
    pub kind: PointType,
    /// Registers (or bits) it covers.
    pub words: u16,
    pub order: WordOrder,
    pub scale: f64,
    pub offset: f64,
    pub source: Source,
    pub writable: bool,
    pub min: f64,
    pub max: f64,
}

/// A point's place in its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u16,
    words: u16,
    point: u16,
}

impl Span {
    fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.words)
    }
}

/// Fault probabilities of a cohort's slaves, validated.
#[derive(Clone, Debug, Default)]
pub struct ModbusFaults {
    pub exception: f64,
    pub exception_code: u8,
    pub delay_ms: Option<Dist>,
    pub silence: f64,
    pub drop_connection: f64,
    pub bad_crc: f64,
    pub truncated: f64,
    pub swapped_words: f64,
}

impl ModbusFaults {
    pub fn validate(c: &mut Checker, key: &str, raw: &ModbusFaultsRaw) -> ModbusFaults {
        let mut prob = |field: &str, v: Option<f64>| {
            let v = v.unwrap_or(0.0);
            c.probability(&format!("{key}.{field}"), v);
            v
        };
        let exception = prob("exception", raw.exception);
        let silence = prob("silence", raw.silence);
        let drop_connection = prob("drop_connection", raw.drop_connection);
        let bad_crc = prob("bad_crc", raw.bad_crc);
        let truncated = prob("truncated", raw.truncated);
        let swapped_words = prob("swapped_words", raw.swapped_words);
        let exception_code = raw.exception_code.unwrap_or(exception::SERVER_DEVICE_BUSY);
        check_exception_code(c, &format!("{key}.exception_code"), exception_code);
        let delay_ms = raw
            .delay_ms
            .as_ref()
            .map(|d| Dist::validate(d, &format!("{key}.delay_ms"), c));
        ModbusFaults {
            exception,
            exception_code,
            delay_ms,
            silence,
            drop_connection,
            bad_crc,
            truncated,
            swapped_words,
        }
    }
}

pub fn check_exception_code(c: &mut Checker, key: &str, code: u8) {
    c.check(
        exception::INJECTABLE.contains(&code),
        key,
        code,
        "must be a Modbus exception code: 1, 2, 3, 4, 5, 6, 8, 10 or 11",
    );
}

/// A fault switched on for a while by a scenario event (or the control API).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ForcedFault {
    Exception(u8),
    Delay(SimDuration),
    Silence,
    DropConnection,
    BadCrc,
    Truncated,
    SwappedWords,
}

pub const FORCED_FAULT_NAMES: &[&str] = &[
    "exception",
    "delay",
    "silence",
    "drop_connection",
    "bad_crc",
    "truncated",
    "swapped_words",
];

/// What to do with one request, decided by the device from its fault model.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultDecision {
    /// No answer at all.
    pub silence: bool,
    /// Answer with this exception instead of the data.
    pub exception: Option<u8>,
    /// Wait this long before answering.
    pub delay: SimDuration,
    /// Modbus TCP: close the connection instead of answering.
    pub drop_connection: bool,
    /// Modbus RTU: send the answer with a wrong CRC.
    pub bad_crc: bool,
    /// Modbus RTU: cut the answer short.
    pub truncated: bool,
    /// Multi-register values in the wrong word order.
    pub swapped_words: bool,
}

/// A profile's register map, validated: points and their spans per table.
#[derive(Clone, Debug)]
pub struct RegisterMap {
    pub points: Vec<Point>,
    /// Read Device Identification: the vendor name (object 0x00).
    pub vendor: String,
    spans: [Vec<Span>; 4],
    pub unmapped: Unmapped,
    /// Writable per-device values (`setpoint` points), with their initial values.
    pub setpoint_initial: Vec<f64>,
    /// The profile's faults (a cohort may override them).
    pub faults_raw: ModbusFaultsRaw,
    pub faults: ModbusFaults,
}

fn parse_version_part(version: &str, part: u8) -> f64 {
    version
        .split(['.', '-', '+'])
        .nth(usize::from(part))
        .and_then(|p| p.parse::<f64>().ok())
        .unwrap_or(0.0)
}

impl RegisterMap {
    /// Validates `raw`; `sensors` and `has_battery` come from the same profile.
    pub fn validate(
        c: &mut Checker,
        raw: &ModbusRaw,
        sensors: &[SensorSpec],
        has_battery: bool,
    ) -> RegisterMap {
        let mut points = Vec::new();
        let mut setpoint_initial = Vec::new();
        if raw.registers.is_empty() {
            c.fail_key(
                "modbus.registers",
                "must declare at least one point ([[modbus.registers]])",
            );
        }
        if raw.registers.len() > MAX_POINTS {
            c.fail(
                "modbus.registers",
                raw.registers.len(),
                format!("at most {MAX_POINTS} points per profile"),
            );
        }
        for (i, p) in raw.registers.iter().enumerate() {
            let key = format!("modbus.registers[{i}]");
            if let Some(point) =
                validate_point(c, &key, p, sensors, has_battery, &mut setpoint_initial)
            {
                if points.iter().any(|o: &Point| o.name == point.name) {
                    c.fail(
                        &format!("{key}.name"),
                        format!("{:?}", point.name),
                        "is used by an earlier point",
                    );
                }
                points.push(point);
            }
        }
        let mut spans: [Vec<Span>; 4] = Default::default();
        for (i, p) in points.iter().enumerate() {
            spans[p.table.index()].push(Span {
                start: p.address,
                words: p.words,
                point: i as u16,
            });
        }
        for (t, list) in spans.iter_mut().enumerate() {
            list.sort_by_key(|s| s.start);
            for w in list.windows(2) {
                if w[0].end() > u32::from(w[1].start) {
                    let (a, b) = (
                        &points[usize::from(w[0].point)],
                        &points[usize::from(w[1].point)],
                    );
                    let range = |p: &Point| {
                        if p.words == 1 {
                            p.address.to_string()
                        } else {
                            let last = u32::from(p.address) + u32::from(p.words) - 1;
                            format!("{}..{last}", p.address)
                        }
                    };
                    c.fail_key(
                        "modbus.registers",
                        format!(
                            "points {:?} ({} {}) and {:?} ({} {}) overlap in the {} table",
                            a.name,
                            a.table.as_str(),
                            range(a),
                            b.name,
                            b.table.as_str(),
                            range(b),
                            Table::ALL[t].as_str()
                        ),
                    );
                }
            }
        }
        let faults = ModbusFaults::validate(c, "modbus.faults", &raw.faults);
        let vendor = raw.vendor.clone().unwrap_or_else(|| "fleetsim".to_string());
        if vendor.is_empty() || !vendor.is_ascii() || vendor.len() > 64 {
            c.fail(
                "modbus.vendor",
                format!("{vendor:?}"),
                "must be 1 to 64 ASCII characters",
            );
        }
        RegisterMap {
            vendor,
            points,
            spans,
            unmapped: raw.unmapped,
            setpoint_initial,
            faults_raw: raw.faults.clone(),
            faults,
        }
    }

    /// Walks addresses `[addr, addr + count)` of `table` in order, calling `f` once per point
    /// met, with the part of it inside the range (`Some((index, point, first word, words))`),
    /// or once per address no point covers (`None`). Stops at the first error `f` returns.
    fn walk<'a>(
        &'a self,
        table: Table,
        addr: u16,
        count: u16,
        mut f: impl FnMut(Option<(u16, &'a Point, u16, u16)>) -> Result<(), u8>,
    ) -> Result<(), u8> {
        let spans = &self.spans[table.index()];
        let end = u32::from(addr) + u32::from(count);
        if end > 0x1_0000 {
            return Err(exception::ILLEGAL_DATA_ADDRESS);
        }
        let mut a = u32::from(addr);
        let mut idx = spans.partition_point(|s| s.end() <= a);
        while a < end {
            match spans.get(idx) {
                Some(s) if u32::from(s.start) <= a => {
                    let from = (a - u32::from(s.start)) as u16;
                    let upto = end.min(s.end());
                    let n = (upto - a) as u16;
                    f(Some((s.point, &self.points[usize::from(s.point)], from, n)))?;
                    a = upto;
                    idx += 1;
                }
                _ => {
                    f(None)?;
                    a += 1;
                }
            }
        }
        Ok(())
    }

    /// Reads `count` registers (or bits, as 0/1) of `table` from `addr` into `out`.
    /// `value_of` gives each point's current value.
    pub fn read<'v>(
        &'v self,
        table: Table,
        addr: u16,
        count: u16,
        swap_words: bool,
        mut value_of: impl FnMut(&'v Point) -> Value<'v>,
        out: &mut Vec<u16>,
    ) -> Result<(), u8> {
        let zero = self.unmapped == Unmapped::Zero;
        let mut buf = [0u16; MAX_STRING_REGISTERS as usize];
        self.walk(table, addr, count, |hit| match hit {
            Some((_, p, from, n)) => {
                let order = if swap_words {
                    p.order.word_swapped()
                } else {
                    p.order
                };
                let words = &mut buf[..usize::from(p.words)];
                encode(p, order, &value_of(p), words);
                out.extend_from_slice(&words[usize::from(from)..usize::from(from + n)]);
                Ok(())
            }
            None if zero => {
                out.push(0);
                Ok(())
            }
            None => Err(exception::ILLEGAL_DATA_ADDRESS),
        })
    }

    /// Checks a write of `values` to `table` at `addr` and decodes it into (point index, value)
    /// pairs, without applying anything: a write that fails changes nothing.
    pub fn decode_write(
        &self,
        table: Table,
        addr: u16,
        values: &[u16],
        out: &mut Vec<(u16, f64)>,
    ) -> Result<(), u8> {
        if !matches!(table, Table::Coil | Table::Holding) {
            return Err(exception::ILLEGAL_FUNCTION);
        }
        let count = u16::try_from(values.len()).map_err(|_| exception::ILLEGAL_DATA_VALUE)?;
        let mut at = 0usize;
        let mut result = Ok(());
        self.walk(table, addr, count, |hit| {
            let Some((idx, p, from, n)) = hit else {
                return Err(exception::ILLEGAL_DATA_ADDRESS);
            };
            // Only whole points, and only writable ones.
            if !p.writable || from != 0 || n != p.words {
                return Err(exception::ILLEGAL_DATA_ADDRESS);
            }
            let words = &values[at..at + usize::from(n)];
            at += usize::from(n);
            let v = decode(p, words);
            if !(v.is_finite() && v >= p.min && v <= p.max) {
                result = Err(exception::ILLEGAL_DATA_VALUE);
            }
            out.push((idx, v));
            Ok(())
        })?;
        result
    }
}

/// A point's current value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Number(f64),
    Text(&'a str),
    Bits(u16),
}

fn validate_point(
    c: &mut Checker,
    key: &str,
    p: &PointRaw,
    sensors: &[SensorSpec],
    has_battery: bool,
    setpoints: &mut Vec<f64>,
) -> Option<Point> {
    let before = c.errors.len();
    if p.name.is_empty() {
        c.fail(&format!("{key}.name"), "\"\"", "must not be empty");
    }
    let words = if p.kind == PointType::String {
        match p.length {
            Some(n) if (1..=MAX_STRING_REGISTERS).contains(&n) => n,
            Some(n) => {
                c.fail(
                    &format!("{key}.length"),
                    n,
                    format!("must be 1..={MAX_STRING_REGISTERS} registers (two characters each)"),
                );
                1
            }
            None => {
                c.fail_key(
                    &format!("{key}.length"),
                    "is required for type = \"string\" (registers, two characters each)",
                );
                1
            }
        }
    } else {
        if p.length.is_some() {
            c.fail_key(
                &format!("{key}.length"),
                "applies to type = \"string\" only",
            );
        }
        p.kind.words()
    };
    if p.table.is_bits() != (p.kind == PointType::Bool) {
        let expected = if p.table.is_bits() {
            format!("a {} holds bits: type must be \"bool\"", p.table.as_str())
        } else {
            format!(
                "a {} register holds 16-bit words: bool goes in a coil or discrete_input (use u16 for 0/1 in a register)",
                p.table.as_str()
            )
        };
        c.fail(
            &format!("{key}.type"),
            format!("{:?}", p.kind.as_str()),
            expected,
        );
    }
    if p.address + u32::from(words) > 0x1_0000 {
        c.fail(
            &format!("{key}.address"),
            p.address,
            format!("must leave room for its {words} register(s) below 65536"),
        );
    }
    let order = p.order.unwrap_or_default();
    if p.order.is_some() && p.table.is_bits() {
        c.fail_key(&format!("{key}.order"), "does not apply to bits");
    }
    if p.kind == PointType::String && order.swaps_words() {
        c.fail(
            &format!("{key}.order"),
            format!("{:?}", order.as_str()),
            "a string's characters are in register order: use ABCD or BADC",
        );
    }
    let scale = p.scale.unwrap_or(1.0);
    let offset = p.offset.unwrap_or(0.0);
    if p.scale.is_some() || p.offset.is_some() {
        if !p.kind.is_numeric() {
            c.fail_key(
                &format!("{key}.scale"),
                format!(
                    "scale and offset apply to numeric types, not {}",
                    p.kind.as_str()
                ),
            );
        }
        c.check(
            scale.is_finite() && scale != 0.0,
            &format!("{key}.scale"),
            scale,
            "must be a finite number other than 0",
        );
        c.check(
            offset.is_finite(),
            &format!("{key}.offset"),
            offset,
            "must be a finite number",
        );
    }
    let (src, arg) = match p.source.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (p.source.as_str(), None),
    };
    let src_key = format!("{key}.source");
    let bad_source = |c: &mut Checker, why: &str| {
        c.fail(&src_key, format!("{:?}", p.source), why.to_string());
    };
    let mut writable = false;
    let mut min = f64::NEG_INFINITY;
    let mut max = f64::INFINITY;
    let source = match (src, arg) {
        ("sensor", Some(name)) => match sensors.iter().position(|s| s.name == name) {
            Some(i) => Source::Sensor(i as u16),
            None => {
                let names: Vec<&str> = sensors.iter().map(|s| s.name.as_str()).collect();
                bad_source(
                    c,
                    &format!(
                        "names no sensor of this profile (sensors: {})",
                        names.join(", ")
                    ),
                );
                Source::Constant(0.0)
            }
        },
        ("battery", None) => {
            if !has_battery {
                bad_source(c, "this profile has no [battery] (mains powered)");
            }
            Source::Battery
        }
        ("firmware", Some("version")) => Source::FirmwareVersion,
        ("firmware", Some("major")) => Source::FirmwarePart(0),
        ("firmware", Some("minor")) => Source::FirmwarePart(1),
        ("firmware", Some("patch")) => Source::FirmwarePart(2),
        ("uptime", None) => Source::Uptime,
        ("seq", None) => Source::Seq,
        ("interval", None) => {
            writable = p.table == Table::Holding;
            min = INTERVAL_MIN_S;
            max = INTERVAL_MAX_S;
            Source::Interval
        }
        ("constant", None) => match &p.value {
            Some(ValueRaw::Number(v)) => Source::Constant(*v),
            Some(ValueRaw::Bool(b)) => Source::Constant(f64::from(u8::from(*b))),
            Some(ValueRaw::Text(t)) => {
                if !t.is_ascii() {
                    c.fail(
                        &format!("{key}.value"),
                        format!("{t:?}"),
                        "must be ASCII (Modbus strings carry one byte per character)",
                    );
                }
                Source::Text(t.clone())
            }
            None => {
                c.fail_key(
                    &format!("{key}.value"),
                    "is required for source = \"constant\"",
                );
                Source::Constant(0.0)
            }
        },
        ("setpoint", None) => {
            writable = matches!(p.table, Table::Holding | Table::Coil);
            if !writable {
                bad_source(
                    c,
                    "a setpoint is written by the master: it goes in a holding register or a coil",
                );
            }
            let initial = match &p.value {
                None => 0.0,
                Some(ValueRaw::Number(v)) => *v,
                Some(ValueRaw::Bool(b)) => f64::from(u8::from(*b)),
                Some(ValueRaw::Text(t)) => {
                    c.fail(
                        &format!("{key}.value"),
                        format!("{t:?}"),
                        "a setpoint holds a number (or true/false in a coil)",
                    );
                    0.0
                }
            };
            let slot = setpoints.len() as u16;
            setpoints.push(initial);
            Source::Setpoint { slot, initial }
        }
        ("flag", Some(f)) => match Flag::parse(f) {
            Some(flag) => Source::Flag(flag),
            None => {
                bad_source(c, &format!("flags: {}", FLAG_NAMES.join(", ")));
                Source::Flag(Flag::Up)
            }
        },
        ("status", None) => {
            let mut flags = Vec::new();
            match &p.bits {
                Some(bits) if !bits.is_empty() && bits.len() <= 16 => {
                    for (b, name) in bits.iter().enumerate() {
                        match Flag::parse(name) {
                            Some(f) => flags.push(f),
                            None => c.fail(
                                &format!("{key}.bits[{b}]"),
                                format!("{name:?}"),
                                format!("must be one of {}", FLAG_NAMES.join(", ")),
                            ),
                        }
                    }
                }
                _ => c.fail_key(
                    &format!("{key}.bits"),
                    "source = \"status\" needs bits = [...], 1 to 16 flag names, bit 0 first",
                ),
            }
            Source::Status(flags)
        }
        ("reboot", None) => {
            writable = p.table == Table::Coil;
            if !writable {
                bad_source(c, "reboot is a coil the master writes ON");
            }
            Source::Reboot
        }
        _ => {
            bad_source(c, &format!("must be one of {SOURCE_NAMES}"));
            Source::Constant(0.0)
        }
    };
    // The source and the type must fit together.
    let text_source = matches!(source, Source::FirmwareVersion | Source::Text(_));
    if (p.kind == PointType::String) != text_source {
        c.fail(
            &format!("{key}.type"),
            format!("{:?}", p.kind.as_str()),
            if text_source {
                "a text source (firmware.version, a constant text) needs type = \"string\""
            } else {
                "type = \"string\" needs a text source: firmware.version or a constant text"
            },
        );
    }
    if (p.kind == PointType::Bitfield) != matches!(source, Source::Status(_)) {
        c.fail(
            &format!("{key}.type"),
            format!("{:?}", p.kind.as_str()),
            "type = \"bitfield\" goes with source = \"status\" (and the other way round)",
        );
    }
    if p.bits.is_some() && !matches!(source, Source::Status(_)) {
        c.fail_key(
            &format!("{key}.bits"),
            "applies to source = \"status\" only",
        );
    }
    if p.value.is_some()
        && !matches!(
            source,
            Source::Constant(_) | Source::Text(_) | Source::Setpoint { .. }
        )
    {
        c.fail_key(
            &format!("{key}.value"),
            "applies to source = \"constant\" or \"setpoint\" only",
        );
    }
    if p.min.is_some() || p.max.is_some() {
        if !writable {
            c.fail_key(
                &format!("{key}.min"),
                "min and max bound what a master may write: only for writable points (setpoint, interval)",
            );
        }
        min = p.min.unwrap_or(min);
        max = p.max.unwrap_or(max);
        c.check(
            min <= max,
            &format!("{key}.min"),
            min,
            &format!("must not exceed max ({max})"),
        );
    }
    if c.errors.len() > before {
        return None;
    }
    Some(Point {
        name: p.name.clone(),
        table: p.table,
        address: p.address as u16,
        kind: p.kind,
        words,
        order,
        scale,
        offset,
        source,
        writable,
        min,
        max,
    })
}

/// Writes `v` as `p` into `out` (exactly `p.words` long) in word order `order`.
pub fn encode(p: &Point, order: WordOrder, v: &Value, out: &mut [u16]) {
    match (p.kind, v) {
        (PointType::String, Value::Text(t)) => {
            let bytes = t.as_bytes();
            for (i, w) in out.iter_mut().enumerate() {
                let hi = bytes.get(2 * i).copied().unwrap_or(0);
                let lo = bytes.get(2 * i + 1).copied().unwrap_or(0);
                let word = u16::from_be_bytes([hi, lo]);
                *w = if order.swaps_bytes() {
                    word.swap_bytes()
                } else {
                    word
                };
            }
        }
        (PointType::Bitfield, Value::Bits(b)) => {
            out[0] = if order.swaps_bytes() {
                b.swap_bytes()
            } else {
                *b
            };
        }
        (kind, v) => {
            let x = match v {
                Value::Number(x) => *x,
                Value::Bits(b) => f64::from(*b),
                Value::Text(_) => 0.0,
            };
            if kind == PointType::Bool {
                out[0] = u16::from(x != 0.0);
                return;
            }
            // Snap away the noise of the division (5.85 / 0.1 = 58.49999...) before an
            // integer type rounds it: the register then rounds as the decimal value would.
            let raw = (x - p.offset) / p.scale;
            let raw = if raw.abs() < 1e15 {
                (raw * 1e6).round() / 1e6
            } else {
                raw
            };
            let mut bytes = [0u8; 8];
            let n = match kind {
                PointType::U16 => {
                    bytes[..2].copy_from_slice(&(raw.round() as u16).to_be_bytes());
                    2
                }
                PointType::I16 => {
                    bytes[..2].copy_from_slice(&(raw.round() as i16).to_be_bytes());
                    2
                }
                PointType::U32 => {
                    bytes[..4].copy_from_slice(&(raw.round() as u32).to_be_bytes());
                    4
                }
                PointType::I32 => {
                    bytes[..4].copy_from_slice(&(raw.round() as i32).to_be_bytes());
                    4
                }
                PointType::F32 => {
                    let exact = (x - p.offset) / p.scale;
                    bytes[..4].copy_from_slice(&(exact as f32).to_be_bytes());
                    4
                }
                PointType::U64 => {
                    bytes.copy_from_slice(&(raw.round() as u64).to_be_bytes());
                    8
                }
                PointType::I64 => {
                    bytes.copy_from_slice(&(raw.round() as i64).to_be_bytes());
                    8
                }
                PointType::F64 => {
                    let exact = (x - p.offset) / p.scale;
                    bytes.copy_from_slice(&exact.to_be_bytes());
                    8
                }
                _ => 2,
            };
            words_from_bytes(&bytes[..n], order, out);
        }
    }
}

/// Big-endian bytes (A first) into registers in `order`.
fn words_from_bytes(bytes: &[u8], order: WordOrder, out: &mut [u16]) {
    let n = bytes.len() / 2;
    for (i, w) in out.iter_mut().enumerate().take(n) {
        let j = if order.swaps_words() { n - 1 - i } else { i };
        let word = u16::from_be_bytes([bytes[2 * j], bytes[2 * j + 1]]);
        *w = if order.swaps_bytes() {
            word.swap_bytes()
        } else {
            word
        };
    }
}

/// Registers in `order` back into big-endian bytes.
fn bytes_from_words(words: &[u16], order: WordOrder, out: &mut [u8]) {
    let n = words.len();
    for (i, w) in words.iter().enumerate() {
        let word = if order.swaps_bytes() {
            w.swap_bytes()
        } else {
            *w
        };
        let j = if order.swaps_words() { n - 1 - i } else { i };
        out[2 * j..2 * j + 2].copy_from_slice(&word.to_be_bytes());
    }
}

/// The engineering value a master wrote into `p` (`words` is exactly `p.words` long).
pub fn decode(p: &Point, words: &[u16]) -> f64 {
    if p.kind == PointType::Bool {
        return f64::from(u8::from(words.first().copied().unwrap_or(0) != 0));
    }
    let mut bytes = [0u8; 8];
    let n = (words.len() * 2).min(8);
    bytes_from_words(&words[..n / 2], p.order, &mut bytes[..n]);
    let raw = match p.kind {
        PointType::U16 | PointType::Bitfield => f64::from(u16::from_be_bytes([bytes[0], bytes[1]])),
        PointType::I16 => f64::from(i16::from_be_bytes([bytes[0], bytes[1]])),
        PointType::U32 => f64::from(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])),
        PointType::I32 => f64::from(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])),
        PointType::F32 => f64::from(f32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])),
        PointType::U64 => u64::from_be_bytes(bytes) as f64,
        PointType::I64 => i64::from_be_bytes(bytes) as f64,
        PointType::F64 => f64::from_be_bytes(bytes),
        PointType::Bool | PointType::String => f64::NAN,
    };
    raw * p.scale + p.offset
}

/// The version number part (`major` = 0) of a version text, 0 when it is not a number.
pub fn version_part(version: &str, part: u8) -> f64 {
    parse_version_part(version, part)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(kind: PointType, order: WordOrder) -> Point {
        Point {
            name: "p".into(),
            table: Table::Holding,
            address: 0,
            kind,
            words: kind.words(),
            order,
            scale: 1.0,
            offset: 0.0,
            source: Source::Setpoint {
                slot: 0,
                initial: 0.0,
            },
            writable: true,
            min: f64::NEG_INFINITY,
            max: f64::INFINITY,
        }
    }

    fn enc(kind: PointType, order: WordOrder, x: f64) -> Vec<u16> {
        let p = point(kind, order);
        let mut out = vec![0u16; usize::from(p.words)];
        encode(&p, order, &Value::Number(x), &mut out);
        out
    }

    #[test]
    fn word_and_byte_orders_follow_the_usual_names() {
        // 0x41200000 = 10.0f32: A=41 B=20 C=00 D=00.
        assert_eq!(enc(PointType::F32, WordOrder::Abcd, 10.0), [0x4120, 0x0000]);
        assert_eq!(enc(PointType::F32, WordOrder::Cdab, 10.0), [0x0000, 0x4120]);
        assert_eq!(enc(PointType::F32, WordOrder::Badc, 10.0), [0x2041, 0x0000]);
        assert_eq!(enc(PointType::F32, WordOrder::Dcba, 10.0), [0x0000, 0x2041]);
        // 0x0001020304050607 as u64 (exact in an f64).
        let v = 0x0001_0203_0405_0607u64 as f64;
        assert_eq!(
            enc(PointType::U64, WordOrder::Abcd, v),
            [0x0001, 0x0203, 0x0405, 0x0607]
        );
        assert_eq!(
            enc(PointType::U64, WordOrder::Cdab, v),
            [0x0607, 0x0405, 0x0203, 0x0001]
        );
        assert_eq!(
            enc(PointType::U64, WordOrder::Dcba, v),
            [0x0706, 0x0504, 0x0302, 0x0100]
        );
        assert_eq!(enc(PointType::I16, WordOrder::Abcd, -2.0), [0xFFFE]);
        assert_eq!(
            enc(PointType::U16, WordOrder::Badc, 0x1234 as f64),
            [0x3412]
        );
        // Out of range values saturate instead of wrapping.
        assert_eq!(enc(PointType::U16, WordOrder::Abcd, 70_000.0), [0xFFFF]);
        assert_eq!(enc(PointType::U16, WordOrder::Abcd, -5.0), [0]);
    }

    #[test]
    fn decode_inverts_encode_for_every_numeric_type_and_order() {
        let kinds = [
            (PointType::U16, 54_321.0),
            (PointType::I16, -1234.0),
            (PointType::U32, 3_000_000_000.0),
            (PointType::I32, -2_000_000_000.0),
            (PointType::U64, 9_007_199_254_740_000.0),
            (PointType::I64, -9_007_199_254_740_000.0),
            (PointType::F32, 230.5),
            (PointType::F64, -0.000_123_456_789),
        ];
        for (kind, x) in kinds {
            for order in WordOrder::ALL {
                let p = point(kind, order);
                let w = enc(kind, order, x);
                assert_eq!(decode(&p, &w), x, "{kind:?} {order:?}");
            }
        }
    }

    #[test]
    fn scale_and_offset_apply_both_ways() {
        let mut p = point(PointType::U16, WordOrder::Abcd);
        p.scale = 0.1;
        p.offset = -40.0;
        let mut out = [0u16];
        encode(&p, p.order, &Value::Number(21.5), &mut out);
        assert_eq!(out, [615]);
        assert!((decode(&p, &out) - 21.5).abs() < 1e-9);
    }

    #[test]
    fn strings_fill_two_characters_per_register() {
        let mut p = point(PointType::String, WordOrder::Abcd);
        p.words = 3;
        let mut out = [0u16; 3];
        encode(&p, WordOrder::Abcd, &Value::Text("5.2.0"), &mut out);
        assert_eq!(out, [0x352E, 0x322E, 0x3000]);
        encode(&p, WordOrder::Badc, &Value::Text("5.2.0"), &mut out);
        assert_eq!(out, [0x2E35, 0x2E32, 0x0030]);
    }

    #[test]
    fn version_parts_are_numbers_or_zero() {
        assert_eq!(version_part("5.2.10", 2), 10.0);
        assert_eq!(version_part("2.1.0-rc1", 1), 1.0);
        assert_eq!(version_part("beta", 0), 0.0);
    }
}
