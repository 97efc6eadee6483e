//! Serial personas: what a device says on a serial line, declared in its profile's `[serial]`
//! table and validated into a `SerialSpec`: an NMEA 0183 GPS receiver, an AT-command modem, a
//! Modbus RTU slave (its register map is `[modbus]`), or lines from a template; the line's
//! speed and its impairments. The ports and the personas' wire formats live in `fleet-serial`.

use serde::Deserialize;

use crate::dist::{Dist, DistSpec};
use crate::error::Checker;
use crate::profile::SensorSpec;
use crate::template::{Piece, Template, Var, split_placeholders};
use crate::time::SimDuration;

/// Baud rates a line may be set to.
pub const BAUD_RATES: &[u32] = &[
    1200, 2400, 4800, 9600, 19_200, 38_400, 57_600, 115_200, 230_400, 460_800, 921_600,
];
/// Longest template line, in bytes after rendering is not bounded here; the template itself is.
pub const MAX_TEMPLATE_LEN: usize = 1024;

// ---------------------------------------------------------------- raw (as written) ----------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersonaKind {
    Nmea,
    AtModem,
    ModbusRtu,
    Lines,
}

impl PersonaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PersonaKind::Nmea => "nmea",
            PersonaKind::AtModem => "at_modem",
            PersonaKind::ModbusRtu => "modbus_rtu",
            PersonaKind::Lines => "lines",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialRaw {
    pub persona: PersonaKind,
    /// Line speed (8 data bits, no parity, 1 stop bit: 10 bits per byte).
    pub baud: Option<u32>,
    #[serde(default)]
    pub impairments: ImpairmentsRaw,
    pub nmea: Option<NmeaRaw>,
    pub at_modem: Option<AtModemRaw>,
    pub lines: Option<LinesRaw>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImpairmentsRaw {
    /// Probability a byte sent has one bit flipped.
    pub corrupt_byte: Option<f64>,
    /// Probability a byte sent is lost.
    pub drop_byte: Option<f64>,
    /// NMEA: probability a sentence goes out with a wrong checksum.
    pub bad_checksum: Option<f64>,
    /// Mean time between unplugs (the port disappears); "never" or absent: never.
    pub unplug_mtbf: Option<String>,
    /// How long the port stays away, seconds (a number or a distribution).
    pub unplug_s: Option<DistSpec>,
}

/// A number, or `"sensor.<name>"`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ValueRaw {
    Number(f64),
    Source(String),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NmeaRaw {
    /// Fixes per second: 1, 5 or 10.
    pub rate_hz: Option<u8>,
    /// Sentences per fix, in order (default all: GGA, RMC, GSA, GSV, VTG).
    pub sentences: Option<Vec<String>>,
    /// "GP" (GPS) or "GN" (several constellations).
    pub talker: Option<String>,
    /// Latitude and longitude in degrees: a fixed point or a sensor (the device's route).
    pub lat: ValueRaw,
    pub lon: ValueRaw,
    /// Noise added to every fix, metres (one sigma per axis).
    pub jitter_m: Option<f64>,
    /// Speed over ground (km/h) and course (degrees) from sensors; without them they are
    /// derived from the movement between fixes.
    pub speed_kmh: Option<String>,
    pub course_deg: Option<String>,
    /// Satellites in view: a number or a sensor.
    pub satellites: Option<ValueRaw>,
    pub altitude_m: Option<f64>,
    pub hdop: Option<f64>,
    /// Seconds from power-on (or reboot) to the first fix: a number or a distribution.
    pub ttff_s: Option<DistSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AtModemRaw {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    /// IMEI template (placeholders {id}, {index}); 15 digits once rendered.
    pub imei: Option<String>,
    pub operator: Option<String>,
    /// Received signal strength, dBm: a number, a sensor, or a distribution drawn per query.
    pub rssi_dbm: Option<RssiRaw>,
    /// Access technology reported: 7 (LTE, default), 9 (NB-IoT), 0 (GSM), 2 (UTRAN).
    pub act: Option<u8>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RssiRaw {
    Source(String),
    Dist(DistSpec),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinesRaw {
    /// One line per interval.
    pub interval: Option<String>,
    /// The line: literal text with `{sensor.<name>}` (`{sensor.<name>:.N}` for N decimals),
    /// `{seq}`, `{battery}`, `{uptime}`, `{ts}`, `{device_id}`, `{fw}`.
    pub template: String,
    /// What ends a line: "crlf" (default), "lf" or "cr".
    pub terminator: Option<String>,
}

// ---------------------------------------------------------------- validated ----------------

/// A number from a sensor's latest reading, or a fixed one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueSource {
    Sensor(u16),
    Fixed(f64),
}

#[derive(Clone, Debug, Default)]
pub struct Impairments {
    pub corrupt_byte: f64,
    pub drop_byte: f64,
    pub bad_checksum: f64,
    pub unplug_mtbf: Option<SimDuration>,
    pub unplug_s: Option<Dist>,
}

#[derive(Clone, Debug)]
pub struct NmeaSpec {
    pub rate_hz: u8,
    /// Sentence names, validated ("GGA", "RMC", "GSA", "GSV", "VTG").
    pub sentences: Vec<String>,
    pub talker: [u8; 2],
    pub lat: ValueSource,
    pub lon: ValueSource,
    pub jitter_m: f64,
    pub speed_kmh: Option<u16>,
    pub course_deg: Option<u16>,
    pub satellites: ValueSource,
    pub altitude_m: f64,
    pub hdop: f64,
    pub ttff_s: Dist,
}

#[derive(Clone, Debug)]
pub enum Rssi {
    Sensor(u16),
    Dist(Dist),
}

#[derive(Clone, Debug)]
pub struct AtModemSpec {
    pub manufacturer: String,
    pub model: String,
    pub imei: Template,
    pub operator: String,
    pub rssi_dbm: Rssi,
    pub act: u8,
}

/// One piece of a template line.
#[derive(Clone, Debug, PartialEq)]
pub enum LinePart {
    Text(String),
    /// A sensor's latest reading with this many decimals (None: the sensor's own).
    Sensor(u16, Option<u8>),
    Seq,
    Battery,
    Uptime,
    /// Milliseconds since the Unix epoch.
    Ts,
    DeviceId,
    Firmware,
}

#[derive(Clone, Debug)]
pub struct LinesSpec {
    pub interval: SimDuration,
    pub parts: Vec<LinePart>,
    pub terminator: &'static [u8],
}

#[derive(Clone, Debug)]
pub enum Persona {
    Nmea(NmeaSpec),
    AtModem(AtModemSpec),
    ModbusRtu,
    Lines(LinesSpec),
}

impl Persona {
    pub fn kind(&self) -> PersonaKind {
        match self {
            Persona::Nmea(_) => PersonaKind::Nmea,
            Persona::AtModem(_) => PersonaKind::AtModem,
            Persona::ModbusRtu => PersonaKind::ModbusRtu,
            Persona::Lines(_) => PersonaKind::Lines,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SerialSpec {
    pub persona: Persona,
    pub baud: u32,
    pub impairments: Impairments,
}

fn sensor_index(c: &mut Checker, key: &str, text: &str, sensors: &[SensorSpec]) -> Option<u16> {
    let Some(name) = text.strip_prefix("sensor.") else {
        c.fail(
            key,
            format!("{text:?}"),
            "must be a number or \"sensor.<name>\"",
        );
        return None;
    };
    match sensors.iter().position(|s| s.name == name) {
        Some(i) => Some(i as u16),
        None => {
            let names: Vec<&str> = sensors.iter().map(|s| s.name.as_str()).collect();
            c.fail(
                key,
                format!("{text:?}"),
                format!(
                    "names no sensor of this profile (sensors: {})",
                    names.join(", ")
                ),
            );
            None
        }
    }
}

fn value_source(c: &mut Checker, key: &str, v: &ValueRaw, sensors: &[SensorSpec]) -> ValueSource {
    match v {
        ValueRaw::Number(x) => {
            c.check(x.is_finite(), key, x, "must be a finite number");
            ValueSource::Fixed(*x)
        }
        ValueRaw::Source(s) => sensor_index(c, key, s, sensors)
            .map(ValueSource::Sensor)
            .unwrap_or(ValueSource::Fixed(0.0)),
    }
}

impl SerialSpec {
    /// Validates `[serial]`; `sensors` and `has_modbus` come from the same profile.
    pub fn validate(
        c: &mut Checker,
        raw: &SerialRaw,
        sensors: &[SensorSpec],
        has_modbus: bool,
    ) -> SerialSpec {
        let baud = raw.baud.unwrap_or(match raw.persona {
            PersonaKind::Nmea => 9600,
            PersonaKind::AtModem => 115_200,
            PersonaKind::ModbusRtu => 9600,
            PersonaKind::Lines => 9600,
        });
        if !BAUD_RATES.contains(&baud) {
            let list: Vec<String> = BAUD_RATES.iter().map(u32::to_string).collect();
            c.fail(
                "serial.baud",
                baud,
                format!("must be one of {}", list.join(", ")),
            );
        }
        let imp = &raw.impairments;
        let mut prob = |field: &str, v: Option<f64>| {
            let v = v.unwrap_or(0.0);
            c.probability(&format!("serial.impairments.{field}"), v);
            v
        };
        let corrupt_byte = prob("corrupt_byte", imp.corrupt_byte);
        let drop_byte = prob("drop_byte", imp.drop_byte);
        let bad_checksum = prob("bad_checksum", imp.bad_checksum);
        let unplug_mtbf = match imp.unplug_mtbf.as_deref() {
            None | Some("never") => None,
            Some(t) => Some(crate::profile::positive_duration(
                c,
                "serial.impairments.unplug_mtbf",
                t,
            )),
        };
        let unplug_s = imp
            .unplug_s
            .as_ref()
            .map(|d| Dist::validate(d, "serial.impairments.unplug_s", c));
        if unplug_mtbf.is_some() && unplug_s.is_none() {
            c.fail_key(
                "serial.impairments.unplug_s",
                "is required with unplug_mtbf (how long the port stays away, seconds)",
            );
        }
        if bad_checksum > 0.0 && raw.persona != PersonaKind::Nmea {
            c.fail_key(
                "serial.impairments.bad_checksum",
                "applies to persona = \"nmea\" only",
            );
        }
        let present = [
            ("nmea", raw.nmea.is_some(), PersonaKind::Nmea),
            ("at_modem", raw.at_modem.is_some(), PersonaKind::AtModem),
            ("lines", raw.lines.is_some(), PersonaKind::Lines),
        ];
        for (name, is, kind) in present {
            if is && raw.persona != kind {
                c.fail_key(
                    &format!("serial.{name}"),
                    format!("does not apply to persona = \"{}\"", raw.persona.as_str()),
                );
            }
        }
        let persona = match raw.persona {
            PersonaKind::Nmea => match &raw.nmea {
                Some(n) => Persona::Nmea(validate_nmea(c, n, sensors)),
                None => {
                    c.fail_key(
                        "serial.nmea",
                        "persona = \"nmea\" needs a [serial.nmea] table (at least lat and lon)",
                    );
                    Persona::ModbusRtu
                }
            },
            PersonaKind::AtModem => Persona::AtModem(validate_at(
                c,
                raw.at_modem.as_ref().unwrap_or(&AtModemRaw::default()),
                sensors,
            )),
            PersonaKind::ModbusRtu => {
                if !has_modbus {
                    c.fail_key(
                        "serial.persona",
                        "\"modbus_rtu\" serves the profile's register map: add a [modbus] table",
                    );
                }
                Persona::ModbusRtu
            }
            PersonaKind::Lines => match &raw.lines {
                Some(l) => Persona::Lines(validate_lines(c, l, sensors)),
                None => {
                    c.fail_key(
                        "serial.lines",
                        "persona = \"lines\" needs a [serial.lines] table with a template",
                    );
                    Persona::ModbusRtu
                }
            },
        };
        SerialSpec {
            persona,
            baud,
            impairments: Impairments {
                corrupt_byte,
                drop_byte,
                bad_checksum,
                unplug_mtbf,
                unplug_s,
            },
        }
    }
}

const NMEA_SENTENCES: &[&str] = &["GGA", "RMC", "GSA", "GSV", "VTG"];

fn validate_nmea(c: &mut Checker, n: &NmeaRaw, sensors: &[SensorSpec]) -> NmeaSpec {
    let rate_hz = n.rate_hz.unwrap_or(1);
    c.check(
        matches!(rate_hz, 1 | 5 | 10),
        "serial.nmea.rate_hz",
        rate_hz,
        "must be 1, 5 or 10 (fixes per second)",
    );
    let sentences: Vec<String> = match &n.sentences {
        None => NMEA_SENTENCES.iter().map(|s| s.to_string()).collect(),
        Some(list) => {
            if list.is_empty() {
                c.fail(
                    "serial.nmea.sentences",
                    "[]",
                    "must name at least one sentence",
                );
            }
            for (i, s) in list.iter().enumerate() {
                if !NMEA_SENTENCES.contains(&s.as_str()) {
                    c.fail(
                        &format!("serial.nmea.sentences[{i}]"),
                        format!("{s:?}"),
                        format!("must be one of {}", NMEA_SENTENCES.join(", ")),
                    );
                }
            }
            list.clone()
        }
    };
    let talker_text = n.talker.as_deref().unwrap_or("GP");
    let talker = match talker_text.as_bytes() {
        [a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => [*a, *b],
        _ => {
            c.fail(
                "serial.nmea.talker",
                format!("{talker_text:?}"),
                "must be two capital letters, like \"GP\" or \"GN\"",
            );
            *b"GP"
        }
    };
    let lat = value_source(c, "serial.nmea.lat", &n.lat, sensors);
    let lon = value_source(c, "serial.nmea.lon", &n.lon, sensors);
    if let ValueSource::Fixed(x) = lat {
        c.check(
            (-90.0..=90.0).contains(&x),
            "serial.nmea.lat",
            x,
            "must be -90..90 degrees",
        );
    }
    if let ValueSource::Fixed(x) = lon {
        c.check(
            (-180.0..=180.0).contains(&x),
            "serial.nmea.lon",
            x,
            "must be -180..180 degrees",
        );
    }
    let jitter_m = n.jitter_m.unwrap_or(2.0);
    c.finite_at_least("serial.nmea.jitter_m", jitter_m, 0.0);
    let speed_kmh = n
        .speed_kmh
        .as_deref()
        .and_then(|s| sensor_index(c, "serial.nmea.speed_kmh", s, sensors));
    let course_deg = n
        .course_deg
        .as_deref()
        .and_then(|s| sensor_index(c, "serial.nmea.course_deg", s, sensors));
    let satellites = n
        .satellites
        .as_ref()
        .map(|v| value_source(c, "serial.nmea.satellites", v, sensors))
        .unwrap_or(ValueSource::Fixed(10.0));
    if let ValueSource::Fixed(x) = satellites {
        c.check(
            (4.0..=16.0).contains(&x),
            "serial.nmea.satellites",
            x,
            "must be 4..16 satellites in view",
        );
    }
    let altitude_m = n.altitude_m.unwrap_or(30.0);
    c.check(
        altitude_m.is_finite(),
        "serial.nmea.altitude_m",
        altitude_m,
        "must be a finite number",
    );
    let hdop = n.hdop.unwrap_or(0.9);
    c.check(
        hdop.is_finite() && (0.5..=50.0).contains(&hdop),
        "serial.nmea.hdop",
        hdop,
        "must be 0.5..50",
    );
    let ttff_s = Dist::validate(
        n.ttff_s.as_ref().unwrap_or(&DistSpec::Lognormal {
            median: 25.0,
            sigma: 0.4,
        }),
        "serial.nmea.ttff_s",
        c,
    );
    NmeaSpec {
        rate_hz,
        sentences,
        talker,
        lat,
        lon,
        jitter_m,
        speed_kmh,
        course_deg,
        satellites,
        altitude_m,
        hdop,
        ttff_s,
    }
}

fn validate_at(c: &mut Checker, a: &AtModemRaw, sensors: &[SensorSpec]) -> AtModemSpec {
    let imei_text = a.imei.as_deref().unwrap_or("35{id:013}");
    let imei = match Template::parse(imei_text, &[Var::Id, Var::Index]) {
        Ok(t) => t,
        Err(e) => {
            c.fail("serial.at_modem.imei", format!("{imei_text:?}"), e);
            Template::literal("350000000000000")
        }
    };
    let rssi_dbm = match &a.rssi_dbm {
        None => Rssi::Dist(Dist::validate(
            &DistSpec::Normal {
                mean: -85.0,
                sigma: 6.0,
            },
            "serial.at_modem.rssi_dbm",
            c,
        )),
        Some(RssiRaw::Source(s)) => match sensor_index(c, "serial.at_modem.rssi_dbm", s, sensors) {
            Some(i) => Rssi::Sensor(i),
            None => Rssi::Dist(Dist::Constant(-85.0)),
        },
        Some(RssiRaw::Dist(d)) => Rssi::Dist(Dist::validate(d, "serial.at_modem.rssi_dbm", c)),
    };
    let act = a.act.unwrap_or(7);
    c.check(
        matches!(act, 0 | 2 | 7 | 8 | 9),
        "serial.at_modem.act",
        act,
        "must be 0 (GSM), 2 (UTRAN), 7 (LTE), 8 (LTE-M) or 9 (NB-IoT)",
    );
    let text = |c: &mut Checker, key: &str, v: &Option<String>, default: &str| {
        let s = v.clone().unwrap_or_else(|| default.to_string());
        if s.is_empty() || !s.is_ascii() || s.contains(['"', '\r', '\n']) {
            c.fail(
                &format!("serial.at_modem.{key}"),
                format!("{s:?}"),
                "must be non-empty ASCII without quotes or line breaks",
            );
        }
        s
    };
    AtModemSpec {
        manufacturer: text(c, "manufacturer", &a.manufacturer, "fleetsim"),
        model: text(c, "model", &a.model, "FS-LTE1"),
        imei,
        operator: text(c, "operator", &a.operator, "fleetsim"),
        rssi_dbm,
        act,
    }
}

fn validate_lines(c: &mut Checker, l: &LinesRaw, sensors: &[SensorSpec]) -> LinesSpec {
    let interval = crate::profile::positive_duration(
        c,
        "serial.lines.interval",
        l.interval.as_deref().unwrap_or("1s"),
    );
    let terminator: &'static [u8] = match l.terminator.as_deref().unwrap_or("crlf") {
        "crlf" => b"\r\n",
        "lf" => b"\n",
        "cr" => b"\r",
        other => {
            c.fail(
                "serial.lines.terminator",
                format!("{other:?}"),
                "must be \"crlf\", \"lf\" or \"cr\"",
            );
            b"\r\n"
        }
    };
    let parts = match parse_line_template(&l.template, sensors) {
        Ok(p) => p,
        Err(e) => {
            c.fail("serial.lines.template", format!("{:?}", l.template), e);
            Vec::new()
        }
    };
    if l.template.len() > MAX_TEMPLATE_LEN {
        c.fail(
            "serial.lines.template",
            format!("{} bytes", l.template.len()),
            format!("must be at most {MAX_TEMPLATE_LEN} bytes"),
        );
    }
    LinesSpec {
        interval,
        parts,
        terminator,
    }
}

/// Parses a line template; the error says what is wrong.
pub fn parse_line_template(text: &str, sensors: &[SensorSpec]) -> Result<Vec<LinePart>, String> {
    if text.contains(['\r', '\n']) {
        return Err("must not contain line breaks (terminator ends each line)".into());
    }
    let pieces = split_placeholders(text).map_err(|e| {
        if e.starts_with("unclosed") {
            "has a `{` without `}`".to_string()
        } else {
            "has a `}` without `{` (write `}}` for a brace)".to_string()
        }
    })?;
    let mut parts = Vec::new();
    for piece in pieces {
        let name = match piece {
            Piece::Text(t) => {
                parts.push(LinePart::Text(t));
                continue;
            }
            Piece::Placeholder(name) => name,
        };
        let (var, format) = match name.split_once(':') {
            Some((v, f)) => (v, Some(f)),
            None => (name.as_str(), None),
        };
        let part = match var {
            "seq" => LinePart::Seq,
            "battery" => LinePart::Battery,
            "uptime" => LinePart::Uptime,
            "ts" => LinePart::Ts,
            "device_id" => LinePart::DeviceId,
            "fw" => LinePart::Firmware,
            s if s.starts_with("sensor.") => {
                let sname = &s["sensor.".len()..];
                let idx = sensors
                    .iter()
                    .position(|x| x.name == sname)
                    .ok_or_else(|| {
                        let names: Vec<&str> = sensors.iter().map(|x| x.name.as_str()).collect();
                        format!(
                            "`{{{name}}}` names no sensor of this profile (sensors: {})",
                            names.join(", ")
                        )
                    })?;
                let decimals = match format {
                    None => None,
                    Some(f) => Some(
                        f.strip_prefix('.')
                            .and_then(|d| d.parse::<u8>().ok())
                            .filter(|d| *d <= 9)
                            .ok_or_else(|| {
                                format!("`{{{name}}}`: decimals must look like `:.2` (0-9)")
                            })?,
                    ),
                };
                LinePart::Sensor(idx as u16, decimals)
            }
            other => {
                return Err(format!(
                    "`{{{other}}}` is not a placeholder: use {{sensor.<name>}}, {{sensor.<name>:.N}}, {{seq}}, {{battery}}, {{uptime}}, {{ts}}, {{device_id}} or {{fw}}"
                ));
            }
        };
        if format.is_some() && !matches!(part, LinePart::Sensor(..)) {
            return Err(format!("`{{{name}}}`: only sensor values take decimals"));
        }
        parts.push(part);
    }
    if parts.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{SensorFaults, SensorModel};

    fn sensors() -> Vec<SensorSpec> {
        ["temp", "rh"]
            .iter()
            .map(|n| SensorSpec {
                name: n.to_string(),
                unit: None,
                decimals: 1,
                model: SensorModel::Constant { value: 1.0 },
                faults: SensorFaults::default(),
            })
            .collect()
    }

    #[test]
    fn line_templates_parse_into_parts() {
        let p = parse_line_template("T={sensor.temp:.2} RH={sensor.rh} #{seq} {{x}}", &sensors())
            .expect("valid");
        assert_eq!(
            p,
            vec![
                LinePart::Text("T=".into()),
                LinePart::Sensor(0, Some(2)),
                LinePart::Text(" RH=".into()),
                LinePart::Sensor(1, None),
                LinePart::Text(" #".into()),
                LinePart::Seq,
                LinePart::Text(" {x}".into()),
            ]
        );
    }

    #[test]
    fn bad_line_templates_say_what_is_wrong() {
        let s = sensors();
        let cases = [
            ("{sensor.wind}", "names no sensor"),
            ("{temp}", "is not a placeholder"),
            ("{sensor.temp:2}", "decimals must look like"),
            ("{seq:.2}", "only sensor values take decimals"),
            ("a}", "without `{`"),
            ("{seq", "without `}`"),
            ("a\nb", "line breaks"),
            ("", "must not be empty"),
        ];
        for (t, want) in cases {
            let e = parse_line_template(t, &s).expect_err(t);
            assert!(e.contains(want), "{t:?}: {e}");
        }
    }
}
