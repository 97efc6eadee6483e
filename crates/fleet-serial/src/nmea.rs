//! NMEA 0183 sentences of a GPS receiver: GGA, RMC, GSA, GSV and VTG.
//!
//! The writer follows the NMEA 0183 v3/v4 layout that pynmea2 and gpsd read. Every value is
//! clamped to the width of its field, so any [`Fix`] gives sentences of at most 82 characters
//! (the NMEA limit, counting `$` and the closing CR LF) made only of printable ASCII.
//!
//! Pure code: the caller passes the time and the seed.

use std::f64::consts::PI;

/// The longest sentence NMEA 0183 allows, counting `$` and the closing CR LF.
pub const MAX_SENTENCE_LEN: usize = 82;

/// At most this many satellites are listed in GSV (9 messages of 4, the NMEA limit).
pub const MAX_SATELLITES_IN_VIEW: usize = 36;

/// Geoid separation written in GGA, in metres (a constant: the emulator has no geoid model).
pub const GEOID_SEPARATION_M: f64 = 46.9;

/// One satellite in view.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Satellite {
    /// Satellite number (PRN). GPS uses 1..=32.
    pub prn: u8,
    /// Elevation above the horizon, 0..=90 degrees (larger values are written as 90).
    pub elevation_deg: u8,
    /// Azimuth from true north, 0..=359 degrees (larger values are taken modulo 360).
    pub azimuth_deg: u16,
    /// Signal to noise ratio in dB-Hz; `None` when the satellite is not tracked.
    pub snr_db: Option<u8>,
}

/// What the receiver knows at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct Fix {
    /// Time of the fix, milliseconds since the Unix epoch (gives `hhmmss.ss` and `ddmmyy`).
    pub utc_ms: u64,
    /// `false`: no fix yet. GGA then has quality 0 and empty position fields, RMC status V,
    /// GSA mode 1 and VTG mode N.
    pub valid: bool,
    /// Latitude in degrees, north positive.
    pub lat_deg: f64,
    /// Longitude in degrees, east positive.
    pub lon_deg: f64,
    /// Altitude above mean sea level in metres.
    pub altitude_m: f64,
    /// Speed over ground in knots.
    pub speed_knots: f64,
    /// Course over ground, degrees from true north.
    pub course_deg: f64,
    /// Horizontal dilution of precision.
    pub hdop: f64,
    /// Position dilution of precision.
    pub pdop: f64,
    /// Vertical dilution of precision.
    pub vdop: f64,
    /// Satellites in view.
    pub satellites: Vec<Satellite>,
    /// The first `used` satellites are used in the fix (GSA lists at most 12 of them).
    pub used: usize,
}

/// A sentence type the receiver can write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sentence {
    /// Fix data: time, position, quality, satellites used, HDOP, altitude.
    Gga,
    /// Recommended minimum: time, status, position, speed, course, date.
    Rmc,
    /// DOP and the satellites used.
    Gsa,
    /// Satellites in view, four per message.
    Gsv,
    /// Course and speed over ground.
    Vtg,
}

impl Sentence {
    /// Every sentence type, in the order a receiver usually sends them.
    pub const ALL: [Sentence; 5] = [
        Sentence::Gga,
        Sentence::Rmc,
        Sentence::Gsa,
        Sentence::Gsv,
        Sentence::Vtg,
    ];

    /// The type named `name` ("GGA", "rmc", ...; case does not matter), if known.
    pub fn parse(name: &str) -> Option<Sentence> {
        Sentence::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(name))
    }

    /// The three-letter name, such as "GGA".
    pub fn as_str(self) -> &'static str {
        match self {
            Sentence::Gga => "GGA",
            Sentence::Rmc => "RMC",
            Sentence::Gsa => "GSA",
            Sentence::Gsv => "GSV",
            Sentence::Vtg => "VTG",
        }
    }
}

/// Appends complete sentences `$<talker><type>,...*HH\r\n` for `fix`.
///
/// GSV gives one sentence per 4 satellites (at least one, at most 9). Talker bytes that are not
/// ASCII letters or digits are written as `X`, so the line stays well formed.
pub fn write_sentence(out: &mut Vec<u8>, talker: [u8; 2], s: Sentence, fix: &Fix) {
    match s {
        Sentence::Gga => write_gga(out, talker, fix),
        Sentence::Rmc => write_rmc(out, talker, fix),
        Sentence::Gsa => write_gsa(out, talker, fix),
        Sentence::Gsv => write_gsv(out, talker, fix),
        Sentence::Vtg => write_vtg(out, talker, fix),
    }
}

/// XOR of the bytes of `body`, the part of a sentence between `$` and `*`.
pub fn checksum(body: &[u8]) -> u8 {
    body.iter().fold(0, |acc, b| acc ^ b)
}

/// True when `line` (`$...*HH`, with or without the closing CR LF) has a correct checksum.
///
/// The hex digits may be upper or lower case. An empty body, or one holding `$`, `*`, CR or
/// LF, is not a sentence and gives false.
pub fn verify(line: &[u8]) -> bool {
    let Some((body, hex)) = split_sentence(line) else {
        return false;
    };
    match parse_hex_byte(hex) {
        Some(sum) => sum == checksum(body),
        None => false,
    }
}

/// Replaces the checksum of the sentence at `line` (ending `*HH`, with or without CR LF) with a
/// wrong one: a fault injection. Lines of another shape are left as they are.
pub fn corrupt_checksum(line: &mut [u8]) {
    let trimmed = trim_line_end(line).len();
    if trimmed < 4 || line.first() != Some(&b'$') || line[trimmed - 3] != b'*' {
        return;
    }
    let wrong = checksum(&line[1..trimmed - 3]) ^ 0x5A;
    let [hi, lo] = hex_byte(wrong);
    line[trimmed - 2] = hi;
    line[trimmed - 1] = lo;
}

/// A plausible sky: `n` satellites (clamped to 4..=16) seen at `t_s` seconds since the epoch.
///
/// Each satellite rises, passes and sets over 4 to 6 hours, so elevation and azimuth move by
/// about a degree a minute at most. When one sets, another with a new PRN rises in its place.
/// PRNs (distinct, 1..=32), paths and passes depend only on `seed`. SNR is 20..=48 dB,
/// higher when higher in the sky. The list is sorted by elevation, highest first, so the first
/// ones are the natural choice for [`Fix::used`].
pub fn sky(seed: u64, t_s: f64, n: usize) -> Vec<Satellite> {
    let n = n.clamp(4, 16);
    let t = if t_s.is_finite() { t_s } else { 0.0 };

    // A shuffle of PRNs 1..=32: slot i uses prns[2i] and prns[2i+1] on alternate passes, so
    // the PRNs in view are always distinct.
    let mut prns: [u8; 32] = std::array::from_fn(|i| (i + 1) as u8);
    let mut state = mix(seed ^ 0x5EED_0F5A_7E11_1E55);
    for i in (1..prns.len()).rev() {
        state = mix(state);
        let j = (state % (i as u64 + 1)) as usize;
        prns.swap(i, j);
    }

    let mut sats: Vec<Satellite> = (0..n)
        .map(|slot| {
            let slot_key = mix(seed ^ mix(slot as u64 + 1));
            let period = 14_400.0 + (mix(slot_key ^ 1) % 7_200) as f64;
            let offset = unit(mix(slot_key ^ 2)) * period;
            let phase = (t + offset) / period;
            let pass_f = phase.floor();
            let frac = (phase - pass_f).clamp(0.0, 1.0);
            // Saturating conversion: absurd times still give some pass number.
            let pass = pass_f as i64;

            let pass_key = mix(slot_key ^ mix(pass as u64));
            let max_el = 25.0 + (mix(pass_key ^ 3) % 64) as f64;
            let rise_az = (mix(pass_key ^ 4) % 360) as f64;
            let sweep = 100.0 + (mix(pass_key ^ 5) % 161) as f64;
            let dir = if mix(pass_key ^ 6) & 1 == 0 {
                1.0
            } else {
                -1.0
            };
            let snr_bonus = (mix(pass_key ^ 7) % 3) as f64;

            let elevation = 5.0 + (max_el - 5.0) * (PI * frac).sin();
            let azimuth = (rise_az + dir * sweep * frac).rem_euclid(360.0);
            let snr = (20.0 + elevation * 26.0 / 90.0 + snr_bonus)
                .round()
                .clamp(20.0, 48.0);

            let prn_index = 2 * slot + (pass.rem_euclid(2) as usize);
            Satellite {
                prn: prns[prn_index % prns.len()],
                elevation_deg: elevation.round().clamp(0.0, 90.0) as u8,
                azimuth_deg: (azimuth.round() as u16) % 360,
                snr_db: Some(snr as u8),
            }
        })
        .collect();
    sats.sort_by(|a, b| {
        b.elevation_deg
            .cmp(&a.elevation_deg)
            .then(a.prn.cmp(&b.prn))
    });
    sats
}

// ---------------------------------------------------------------------------------------------
// Sentence writers.

fn write_gga(out: &mut Vec<u8>, talker: [u8; 2], fix: &Fix) {
    let start = begin(out, talker, Sentence::Gga);
    push_time(out, fix.utc_ms);
    out.push(b',');
    if fix.valid {
        push_position(out, fix.lat_deg, fix.lon_deg);
        out.extend_from_slice(b",1,");
        push_uint(out, used_count(fix).min(99) as u64, 2);
        out.push(b',');
        push_fixed(out, fix.hdop, 2, 0.0, 99.99);
        out.push(b',');
        push_fixed(out, fix.altitude_m, 1, -9_999.9, 99_999.9);
        out.extend_from_slice(b",M,");
        push_fixed(out, GEOID_SEPARATION_M, 1, -999.9, 999.9);
        out.extend_from_slice(b",M,,");
    } else {
        out.extend_from_slice(b",,,,0,00,99.99,,,,,,");
    }
    finish(out, start);
}

fn write_rmc(out: &mut Vec<u8>, talker: [u8; 2], fix: &Fix) {
    let start = begin(out, talker, Sentence::Rmc);
    push_time(out, fix.utc_ms);
    if fix.valid {
        out.extend_from_slice(b",A,");
        push_position(out, fix.lat_deg, fix.lon_deg);
        out.push(b',');
        push_fixed(out, fix.speed_knots, 3, 0.0, MAX_SPEED_KNOTS);
        out.push(b',');
        push_course(out, fix.course_deg);
        out.push(b',');
    } else {
        out.extend_from_slice(b",V,,,,,,,");
    }
    push_date(out, fix.utc_ms);
    out.extend_from_slice(if fix.valid { b",,,A" } else { b",,,N" });
    finish(out, start);
}

fn write_gsa(out: &mut Vec<u8>, talker: [u8; 2], fix: &Fix) {
    let start = begin(out, talker, Sentence::Gsa);
    if fix.valid {
        out.extend_from_slice(b"A,3");
        let used = &fix.satellites[..used_count(fix)];
        for i in 0..12 {
            out.push(b',');
            if let Some(sat) = used.get(i) {
                push_uint(out, u64::from(sat.prn), 2);
            }
        }
        for dop in [fix.pdop, fix.hdop, fix.vdop] {
            out.push(b',');
            push_fixed(out, dop, 2, 0.0, 99.99);
        }
    } else {
        out.extend_from_slice(b"A,1,,,,,,,,,,,,,99.99,99.99,99.99");
    }
    finish(out, start);
}

fn write_gsv(out: &mut Vec<u8>, talker: [u8; 2], fix: &Fix) {
    let sats = &fix.satellites[..fix.satellites.len().min(MAX_SATELLITES_IN_VIEW)];
    let total = sats.len().div_ceil(4).max(1);
    for msg in 0..total {
        let start = begin(out, talker, Sentence::Gsv);
        push_uint(out, total as u64, 1);
        out.push(b',');
        push_uint(out, msg as u64 + 1, 1);
        out.push(b',');
        push_uint(out, sats.len() as u64, 2);
        for sat in sats.iter().skip(msg * 4).take(4) {
            out.push(b',');
            push_uint(out, u64::from(sat.prn), 2);
            out.push(b',');
            push_uint(out, u64::from(sat.elevation_deg.min(90)), 2);
            out.push(b',');
            push_uint(out, u64::from(sat.azimuth_deg % 360), 3);
            out.push(b',');
            if let Some(snr) = sat.snr_db {
                push_uint(out, u64::from(snr.min(99)), 2);
            }
        }
        finish(out, start);
    }
}

fn write_vtg(out: &mut Vec<u8>, talker: [u8; 2], fix: &Fix) {
    let start = begin(out, talker, Sentence::Vtg);
    if fix.valid {
        push_course(out, fix.course_deg);
        out.extend_from_slice(b",T,,M,");
        push_fixed(out, fix.speed_knots, 3, 0.0, MAX_SPEED_KNOTS);
        out.extend_from_slice(b",N,");
        push_fixed(
            out,
            fix.speed_knots.clamp(0.0, MAX_SPEED_KNOTS) * KMH_PER_KNOT,
            3,
            0.0,
            MAX_SPEED_KNOTS * KMH_PER_KNOT,
        );
        out.extend_from_slice(b",K,A");
    } else {
        out.extend_from_slice(b",T,,M,,N,,K,N");
    }
    finish(out, start);
}

// ---------------------------------------------------------------------------------------------
// Field helpers.

const MAX_SPEED_KNOTS: f64 = 9_999.999;
const KMH_PER_KNOT: f64 = 1.852;
const MS_PER_DAY: u64 = 86_400_000;

/// How many satellites count as used: `used`, but no more than are in view.
fn used_count(fix: &Fix) -> usize {
    fix.used.min(fix.satellites.len())
}

/// Starts a sentence: `$`, talker, type and the first comma. Returns where the `$` is.
fn begin(out: &mut Vec<u8>, talker: [u8; 2], s: Sentence) -> usize {
    let start = out.len();
    out.push(b'$');
    for b in talker {
        out.push(if b.is_ascii_alphanumeric() {
            b.to_ascii_uppercase()
        } else {
            b'X'
        });
    }
    out.extend_from_slice(s.as_str().as_bytes());
    out.push(b',');
    start
}

/// Ends the sentence that starts at `start` with `*HH\r\n`.
fn finish(out: &mut Vec<u8>, start: usize) {
    let sum = checksum(out.get(start + 1..).unwrap_or_default());
    out.push(b'*');
    out.extend_from_slice(&hex_byte(sum));
    out.extend_from_slice(b"\r\n");
}

/// `hhmmss.ss` (hundredths truncated, so never `60.00`).
fn push_time(out: &mut Vec<u8>, utc_ms: u64) {
    let ms = utc_ms % MS_PER_DAY;
    push_uint(out, ms / 3_600_000, 2);
    push_uint(out, ms / 60_000 % 60, 2);
    push_uint(out, ms / 1_000 % 60, 2);
    out.push(b'.');
    push_uint(out, ms % 1_000 / 10, 2);
}

/// `ddmmyy` of the UTC day.
fn push_date(out: &mut Vec<u8>, utc_ms: u64) {
    let days = (utc_ms / MS_PER_DAY) as i64;
    let (year, month, day) = civil_from_days(days);
    push_uint(out, u64::from(day), 2);
    push_uint(out, u64::from(month), 2);
    push_uint(out, year.rem_euclid(100) as u64, 2);
}

/// Year, month (1..=12) and day (1..=31) of a day count since 1970-01-01 (proleptic
/// Gregorian; Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `ddmm.mmmmm,N,dddmm.mmmmm,E`, or four empty fields when a coordinate is not finite.
fn push_position(out: &mut Vec<u8>, lat_deg: f64, lon_deg: f64) {
    if !lat_deg.is_finite() || !lon_deg.is_finite() {
        out.extend_from_slice(b",,,");
        return;
    }
    let lat = lat_deg.clamp(-90.0, 90.0);
    let lon = if (-180.0..=180.0).contains(&lon_deg) {
        lon_deg
    } else {
        (lon_deg + 180.0).rem_euclid(360.0) - 180.0
    };
    push_angle(out, lat, 2, b'N', b'S');
    out.push(b',');
    push_angle(out, lon, 3, b'E', b'W');
}

/// Degrees and minutes with 5 decimals, then the hemisphere letter.
fn push_angle(out: &mut Vec<u8>, deg: f64, deg_digits: usize, pos: u8, neg: u8) {
    const UNITS_PER_MINUTE: u64 = 100_000;
    const UNITS_PER_DEGREE: u64 = 60 * UNITS_PER_MINUTE;
    // Whole 1e-5 minutes, rounded once, so the minutes never read 60.
    let units = (deg.abs() * 60.0 * UNITS_PER_MINUTE as f64).round() as u64;
    push_uint(out, units / UNITS_PER_DEGREE, deg_digits);
    push_uint(out, units % UNITS_PER_DEGREE / UNITS_PER_MINUTE, 2);
    out.push(b'.');
    push_uint(out, units % UNITS_PER_MINUTE, 5);
    out.push(b',');
    out.push(if deg < 0.0 && units != 0 { neg } else { pos });
}

/// Course in `[0, 360)` with 2 decimals; empty when not finite.
fn push_course(out: &mut Vec<u8>, course_deg: f64) {
    if !course_deg.is_finite() {
        return;
    }
    let hundredths = ((course_deg.rem_euclid(360.0) * 100.0).round() as i64).rem_euclid(36_000);
    push_scaled(out, hundredths, 2);
}

/// `v` clamped to `min..=max` with `decimals` decimals; empty when not finite.
fn push_fixed(out: &mut Vec<u8>, v: f64, decimals: u32, min: f64, max: f64) {
    if !v.is_finite() {
        return;
    }
    let scaled = (v.clamp(min, max) * 10f64.powi(decimals as i32)).round() as i64;
    push_scaled(out, scaled, decimals);
}

/// Writes `scaled / 10^decimals` with exactly `decimals` decimals (never "-0.0").
fn push_scaled(out: &mut Vec<u8>, scaled: i64, decimals: u32) {
    if scaled < 0 {
        out.push(b'-');
    }
    let magnitude = scaled.unsigned_abs();
    let pow = 10u64.pow(decimals);
    push_uint(out, magnitude / pow, 1);
    if decimals > 0 {
        out.push(b'.');
        push_uint(out, magnitude % pow, decimals as usize);
    }
}

/// Decimal digits of `v`, zero-padded to at least `width`.
fn push_uint(out: &mut Vec<u8>, v: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut n = v;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for _ in len..width {
        out.push(b'0');
    }
    out.extend(digits[..len].iter().rev());
}

fn hex_byte(v: u8) -> [u8; 2] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    [HEX[usize::from(v >> 4)], HEX[usize::from(v & 0x0F)]]
}

fn parse_hex_byte(hex: &[u8]) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16);
    match hex {
        [hi, lo] => Some((digit(*hi)? * 16 + digit(*lo)?) as u8),
        _ => None,
    }
}

/// `line` without one closing CR LF (or a lone CR or LF).
fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Body (between `$` and `*`) and the two checksum characters of a sentence.
fn split_sentence(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let line = trim_line_end(line);
    let rest = line.strip_prefix(b"$")?;
    let star = rest.len().checked_sub(3)?;
    if rest[star] != b'*' {
        return None;
    }
    let (body, hex) = (&rest[..star], &rest[star + 1..]);
    if body.is_empty()
        || body
            .iter()
            .any(|b| matches!(b, b'$' | b'*' | b'\r' | b'\n'))
    {
        return None;
    }
    Some((body, hex))
}

/// SplitMix64 finaliser: a good 64-bit mix, used as a seeded hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A number in `[0, 1)` from the top 53 bits of `v`.
fn unit(v: u64) -> f64 {
    (v >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2024-03-01 12:34:56.789 UTC.
    const T0: u64 = 1_709_296_496_789;

    fn sat(prn: u8, el: u8, az: u16, snr: Option<u8>) -> Satellite {
        Satellite {
            prn,
            elevation_deg: el,
            azimuth_deg: az,
            snr_db: snr,
        }
    }

    fn sample_fix() -> Fix {
        Fix {
            utc_ms: T0,
            valid: true,
            lat_deg: 53.361_336_6,
            lon_deg: -6.505_62,
            altitude_m: 61.7,
            speed_knots: 12.345_6,
            course_deg: 84.4,
            hdop: 1.03,
            pdop: 1.8,
            vdop: 1.5,
            satellites: (1..=10)
                .map(|i| sat(i * 3, i * 8, u16::from(i) * 35, Some(20 + i)))
                .collect(),
            used: 8,
        }
    }

    fn no_fix() -> Fix {
        Fix {
            valid: false,
            used: 0,
            ..sample_fix()
        }
    }

    /// A parsed sentence: talker, type and fields.
    #[derive(Debug)]
    struct Parsed {
        talker: String,
        kind: String,
        fields: Vec<String>,
    }

    /// The small parser of the tests: checks the frame and checksum, splits on commas.
    fn parse(line: &[u8]) -> Parsed {
        assert!(line.ends_with(b"\r\n"), "no CR LF: {line:?}");
        assert!(
            verify(line),
            "bad checksum: {}",
            String::from_utf8_lossy(line)
        );
        let text = std::str::from_utf8(line).expect("ASCII");
        let text = text.strip_suffix("\r\n").expect("CR LF");
        let (body, sum) = text[1..].split_once('*').expect("*");
        assert_eq!(sum.len(), 2);
        assert_eq!(
            u8::from_str_radix(sum, 16).expect("hex"),
            checksum(body.as_bytes())
        );
        let mut parts = body.split(',');
        let address = parts.next().expect("address");
        Parsed {
            talker: address[..2].to_string(),
            kind: address[2..].to_string(),
            fields: parts.map(str::to_string).collect(),
        }
    }

    fn lines(buf: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut rest = buf;
        while !rest.is_empty() {
            let end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("every line ends with CR LF")
                + 2;
            out.push(&rest[..end]);
            rest = &rest[end..];
        }
        out
    }

    fn write_one(s: Sentence, fix: &Fix) -> Vec<u8> {
        let mut out = Vec::new();
        write_sentence(&mut out, *b"GP", s, fix);
        out
    }

    fn parse_one(s: Sentence, fix: &Fix) -> Parsed {
        let out = write_one(s, fix);
        let ls = lines(&out);
        assert_eq!(ls.len(), 1);
        let p = parse(ls[0]);
        assert_eq!(p.talker, "GP");
        assert_eq!(p.kind, s.as_str());
        p
    }

    /// Degrees from `ddmm.mmmmm` (or `dddmm.mmmmm`) and a hemisphere.
    fn parse_angle(field: &str, hemi: &str, deg_digits: usize) -> f64 {
        assert_eq!(field.len(), deg_digits + 8, "{field}");
        let deg: f64 = field[..deg_digits].parse().expect("deg");
        let min: f64 = field[deg_digits..].parse().expect("min");
        assert!(min < 60.0);
        let v = deg + min / 60.0;
        match hemi {
            "N" | "E" => v,
            "S" | "W" => -v,
            other => panic!("hemisphere {other}"),
        }
    }

    fn assert_angle(field: &str, hemi: &str, deg_digits: usize, want: f64) {
        let got = parse_angle(field, hemi, deg_digits);
        // Compare in minutes: 5 decimals round to within 0.5e-5.
        let err_min = (got - want).abs() * 60.0;
        assert!(err_min <= 0.5e-5 + 1e-9, "{field},{hemi}: {got} vs {want}");
    }

    #[test]
    fn known_checksums() {
        let vectors: [&[u8]; 4] = [
            b"$GPGGA,092750.000,5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,*76",
            b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A",
            b"$GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1*39",
            b"$GPGSV,2,1,08,01,40,083,46,02,17,308,41,12,07,344,39,14,22,228,45*75",
        ];
        for v in vectors {
            assert!(verify(v), "{}", String::from_utf8_lossy(v));
            let mut crlf = v.to_vec();
            crlf.extend_from_slice(b"\r\n");
            assert!(verify(&crlf));
            let star = v.len() - 3;
            let want = u8::from_str_radix(std::str::from_utf8(&v[star + 1..]).expect("ascii"), 16)
                .expect("hex");
            assert_eq!(checksum(&v[1..star]), want);
        }
        assert_eq!(checksum(b""), 0);
        assert_eq!(checksum(b"GPGGA"), b'G' ^ b'P' ^ b'G' ^ b'G' ^ b'A');
    }

    #[test]
    fn verify_rejects_malformed() {
        let good = b"$GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1*39";
        assert!(verify(b"$GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1*39\n"));
        assert!(verify(
            b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6a"
        ));
        for bad in [
            &b""[..],
            b"$",
            b"*",
            b"$*",
            b"$*0",
            b"$*00",
            b"$*00\r\n",
            b"GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1*39",
            b"$GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1*38",
            b"$GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1*3G",
            b"$GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1*390",
            b"$GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1",
            b"$GP$GSA*00",
            b"$GP*GSA*00",
        ] {
            assert!(!verify(bad), "{}", String::from_utf8_lossy(bad));
        }
        assert!(verify(good));
    }

    #[test]
    fn corrupt_checksum_breaks_only_the_checksum() {
        let fix = sample_fix();
        for s in Sentence::ALL {
            let mut out = write_one(s, &fix);
            let first_len = lines(&out)[0].len();
            let before = out.clone();
            corrupt_checksum(&mut out[..first_len]);
            assert!(!verify(&out[..first_len]), "{s:?}");
            assert_eq!(out.len(), before.len());
            // Only the two hex digits changed.
            let diff: Vec<usize> = (0..out.len()).filter(|&i| out[i] != before[i]).collect();
            assert!(
                !diff.is_empty()
                    && diff
                        .iter()
                        .all(|&i| i + 4 == first_len || i + 3 == first_len)
            );
            // Corrupting again keeps it wrong.
            corrupt_checksum(&mut out[..first_len]);
            assert!(!verify(&out[..first_len]));
        }
        // Without CR LF too.
        let mut bare = b"$GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1*39".to_vec();
        corrupt_checksum(&mut bare);
        assert!(!verify(&bare));
        // Other shapes are left alone, and nothing panics.
        for odd in [
            &b""[..],
            b"$",
            b"*",
            b"$*",
            b"abc*12\r\n",
            b"\r\n",
            b"$GPGGA,1",
        ] {
            let mut v = odd.to_vec();
            corrupt_checksum(&mut v);
            assert_eq!(v, odd);
        }
    }

    #[test]
    fn sentence_names() {
        for s in Sentence::ALL {
            assert_eq!(Sentence::parse(s.as_str()), Some(s));
            assert_eq!(Sentence::parse(&s.as_str().to_lowercase()), Some(s));
        }
        assert_eq!(Sentence::parse("ZDA"), None);
        assert_eq!(Sentence::parse(""), None);
        assert_eq!(Sentence::parse("GGAX"), None);
    }

    #[test]
    fn gga_fields() {
        let fix = sample_fix();
        let p = parse_one(Sentence::Gga, &fix);
        let f = &p.fields;
        assert_eq!(f.len(), 14, "{f:?}");
        assert_eq!(f[0], "123456.78");
        assert_angle(&f[1], &f[2], 2, fix.lat_deg);
        assert_eq!(f[2], "N");
        assert_angle(&f[3], &f[4], 3, fix.lon_deg);
        assert_eq!(f[4], "W");
        assert_eq!(f[5], "1");
        assert_eq!(f[6], "08");
        assert_eq!(f[7], "1.03");
        assert_eq!(f[8], "61.7");
        assert_eq!(f[9], "M");
        assert_eq!(f[10], "46.9");
        assert_eq!(f[11], "M");
        assert_eq!(f[12], "");
        assert_eq!(f[13], "");
    }

    #[test]
    fn gga_exact_line() {
        let fix = Fix {
            utc_ms: 9 * 3_600_000 + 27 * 60_000 + 50_000,
            lat_deg: 53.0 + 21.6802 / 60.0,
            lon_deg: -(6.0 + 30.3372 / 60.0),
            ..sample_fix()
        };
        let out = write_one(Sentence::Gga, &fix);
        let text = String::from_utf8(out).expect("ascii");
        let body = "GPGGA,092750.00,5321.68020,N,00630.33720,W,1,08,1.03,61.7,M,46.9,M,,";
        let want = format!("${body}*{:02X}\r\n", checksum(body.as_bytes()));
        assert_eq!(text, want);
    }

    #[test]
    fn south_east_and_extremes() {
        for (lat, lon) in [
            (-33.856_784, 151.215_297),
            (0.0, 0.0),
            (-0.000_000_01, -0.000_000_01),
            (89.999_999_999, 179.999_999_999),
            (-90.0, -180.0),
            (12.5, 7.25),
        ] {
            let fix = Fix {
                lat_deg: lat,
                lon_deg: lon,
                ..sample_fix()
            };
            let p = parse_one(Sentence::Gga, &fix);
            assert_angle(&p.fields[1], &p.fields[2], 2, lat);
            assert_angle(&p.fields[3], &p.fields[4], 3, lon);
            let r = parse_one(Sentence::Rmc, &fix);
            assert_angle(&r.fields[2], &r.fields[3], 2, lat);
            assert_angle(&r.fields[4], &r.fields[5], 3, lon);
        }
        let sydney = Fix {
            lat_deg: -33.856_784,
            lon_deg: 151.215_297,
            ..sample_fix()
        };
        let p = parse_one(Sentence::Gga, &sydney);
        assert_eq!((p.fields[2].as_str(), p.fields[4].as_str()), ("S", "E"));
        // A negative value that rounds to zero is written as N / E, not "-0".
        let tiny = Fix {
            lat_deg: -1e-12,
            lon_deg: -1e-12,
            ..sample_fix()
        };
        let p = parse_one(Sentence::Gga, &tiny);
        assert_eq!(p.fields[1..5], ["0000.00000", "N", "00000.00000", "E"]);
        // Minutes that round up carry into the degrees instead of reading 60.
        let carry = Fix {
            lat_deg: 10.0 - 1e-9,
            lon_deg: -(20.0 - 1e-9),
            ..sample_fix()
        };
        let p = parse_one(Sentence::Gga, &carry);
        assert_eq!(p.fields[1..5], ["1000.00000", "N", "02000.00000", "W"]);
    }

    #[test]
    fn longitude_wraps_and_latitude_clamps() {
        let fix = Fix {
            lat_deg: 123.0,
            lon_deg: 190.0,
            ..sample_fix()
        };
        let p = parse_one(Sentence::Gga, &fix);
        assert_angle(&p.fields[1], &p.fields[2], 2, 90.0);
        assert_angle(&p.fields[3], &p.fields[4], 3, -170.0);
    }

    #[test]
    fn rmc_fields_and_date_across_midnight() {
        // 2023-12-31 23:59:59.999 and one millisecond later.
        let before = 1_704_067_199_999;
        let fix = Fix {
            utc_ms: before,
            ..sample_fix()
        };
        let p = parse_one(Sentence::Rmc, &fix);
        let f = &p.fields;
        assert_eq!(f.len(), 12, "{f:?}");
        assert_eq!(f[0], "235959.99");
        assert_eq!(f[1], "A");
        assert_angle(&f[2], &f[3], 2, fix.lat_deg);
        assert_angle(&f[4], &f[5], 3, fix.lon_deg);
        assert_eq!(f[6], "12.346");
        assert_eq!(f[7], "84.40");
        assert_eq!(f[8], "311223");
        assert_eq!(f[9..], ["", "", "A"]);

        let after = Fix {
            utc_ms: before + 1,
            ..sample_fix()
        };
        let p = parse_one(Sentence::Rmc, &after);
        assert_eq!(p.fields[0], "000000.00");
        assert_eq!(p.fields[8], "010124");
    }

    #[test]
    fn dates() {
        let date = |ms: u64| {
            let mut out = Vec::new();
            push_date(&mut out, ms);
            String::from_utf8(out).expect("ascii")
        };
        assert_eq!(date(0), "010170");
        assert_eq!(date(T0), "010324");
        // Leap day.
        assert_eq!(date(1_709_164_800_000), "290224");
        assert_eq!(date(951_782_400_000), "290200");
        // Far future stays 2 digits.
        assert_eq!(date(u64::MAX).len(), 6);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    }

    #[test]
    fn gsa_fields() {
        let fix = sample_fix();
        let p = parse_one(Sentence::Gsa, &fix);
        let f = &p.fields;
        assert_eq!(f.len(), 17, "{f:?}");
        assert_eq!(f[0], "A");
        assert_eq!(f[1], "3");
        let prns: Vec<&str> = f[2..14].iter().map(String::as_str).collect();
        assert_eq!(
            prns,
            [
                "03", "06", "09", "12", "15", "18", "21", "24", "", "", "", ""
            ]
        );
        assert_eq!(f[14..], ["1.80", "1.03", "1.50"]);

        // More than 12 used: only 12 listed. `used` beyond the list is capped.
        let many = Fix {
            satellites: (1..=16).map(|i| sat(i, 30, 100, Some(30))).collect(),
            used: 40,
            ..sample_fix()
        };
        let p = parse_one(Sentence::Gsa, &many);
        assert_eq!(p.fields.len(), 17);
        assert!(p.fields[2..14].iter().all(|x| x.len() == 2));
        assert_eq!(p.fields[13], "12");
        let g = parse_one(Sentence::Gga, &many);
        assert_eq!(g.fields[6], "16");
    }

    #[test]
    fn vtg_fields() {
        let fix = sample_fix();
        let p = parse_one(Sentence::Vtg, &fix);
        assert_eq!(
            p.fields,
            ["84.40", "T", "", "M", "12.346", "N", "22.864", "K", "A"]
        );
        let still = Fix {
            speed_knots: 0.0,
            course_deg: 359.999,
            ..sample_fix()
        };
        let p = parse_one(Sentence::Vtg, &still);
        assert_eq!(p.fields[0], "0.00");
        assert_eq!(p.fields[4], "0.000");
        let negative = Fix {
            course_deg: -90.0,
            speed_knots: -3.0,
            ..sample_fix()
        };
        let p = parse_one(Sentence::Vtg, &negative);
        assert_eq!(p.fields[0], "270.00");
        assert_eq!(p.fields[4], "0.000");
    }

    #[test]
    fn no_fix_forms() {
        let fix = no_fix();
        let gga = parse_one(Sentence::Gga, &fix);
        assert_eq!(gga.fields.len(), 14);
        assert_eq!(gga.fields[0], "123456.78");
        assert!(gga.fields[1..5].iter().all(String::is_empty));
        assert_eq!(gga.fields[5], "0");
        assert_eq!(gga.fields[6], "00");

        let rmc = parse_one(Sentence::Rmc, &fix);
        assert_eq!(rmc.fields.len(), 12);
        assert_eq!(rmc.fields[1], "V");
        assert!(rmc.fields[2..8].iter().all(String::is_empty));
        assert_eq!(rmc.fields[8], "010324");
        assert_eq!(rmc.fields[11], "N");

        let gsa = parse_one(Sentence::Gsa, &fix);
        assert_eq!(gsa.fields.len(), 17);
        assert_eq!(gsa.fields[1], "1");
        assert!(gsa.fields[2..14].iter().all(String::is_empty));

        let vtg = parse_one(Sentence::Vtg, &fix);
        assert_eq!(vtg.fields, ["", "T", "", "M", "", "N", "", "K", "N"]);

        // Satellites in view are still reported.
        let mut out = Vec::new();
        write_sentence(&mut out, *b"GP", Sentence::Gsv, &fix);
        assert_eq!(lines(&out).len(), 3);
    }

    #[test]
    fn non_finite_values_give_empty_fields() {
        let fix = Fix {
            lat_deg: f64::NAN,
            lon_deg: 1.0,
            altitude_m: f64::INFINITY,
            speed_knots: f64::NAN,
            course_deg: f64::NEG_INFINITY,
            hdop: f64::NAN,
            ..sample_fix()
        };
        let gga = parse_one(Sentence::Gga, &fix);
        assert!(gga.fields[1..5].iter().all(String::is_empty));
        assert_eq!(gga.fields[7], "");
        assert_eq!(gga.fields[8], "");
        let vtg = parse_one(Sentence::Vtg, &fix);
        assert_eq!(vtg.fields[0], "");
        assert_eq!(vtg.fields[4], "");
        assert_eq!(vtg.fields[6], "");
    }

    fn gsv_pages(n: usize) -> Vec<Parsed> {
        let fix = Fix {
            satellites: (0..n)
                .map(|i| {
                    let snr = if i % 3 == 2 { None } else { Some(30 + i as u8) };
                    sat(i as u8 + 1, (i * 7) as u8, (i * 29) as u16, snr)
                })
                .collect(),
            ..sample_fix()
        };
        let out = write_one(Sentence::Gsv, &fix);
        lines(&out).into_iter().map(parse).collect()
    }

    #[test]
    fn gsv_paging() {
        for (n, pages) in [(0, 1), (1, 1), (4, 1), (5, 2), (12, 3)] {
            let ps = gsv_pages(n);
            assert_eq!(ps.len(), pages, "{n} satellites");
            let mut seen = Vec::new();
            for (i, p) in ps.iter().enumerate() {
                assert_eq!(p.kind, "GSV");
                assert_eq!(p.fields[0], pages.to_string());
                assert_eq!(p.fields[1], (i + 1).to_string());
                assert_eq!(p.fields[2], format!("{n:02}"));
                let blocks = &p.fields[3..];
                assert_eq!(blocks.len() % 4, 0, "{:?}", p.fields);
                let expected = (n - (i * 4).min(n)).min(4);
                assert_eq!(blocks.len() / 4, expected);
                for b in blocks.chunks(4) {
                    let prn: usize = b[0].parse().expect("prn");
                    let idx = prn - 1;
                    assert_eq!(b[1], format!("{:02}", idx * 7));
                    assert_eq!(b[2], format!("{:03}", idx * 29));
                    if idx % 3 == 2 {
                        assert_eq!(b[3], "");
                    } else {
                        assert_eq!(b[3], format!("{}", 30 + idx));
                    }
                    seen.push(prn);
                }
            }
            assert_eq!(seen, (1..=n).collect::<Vec<_>>());
        }
        // Empty sky: exactly "$GPGSV,1,1,00*HH".
        let out = write_one(
            Sentence::Gsv,
            &Fix {
                satellites: Vec::new(),
                ..sample_fix()
            },
        );
        assert!(out.starts_with(b"$GPGSV,1,1,00*"));
        // More than 36 in view: capped at 9 messages.
        let ps = gsv_pages(50);
        assert_eq!(ps.len(), 9);
        assert_eq!(ps[0].fields[2], "36");
    }

    #[test]
    fn talker_is_sanitised() {
        let mut out = Vec::new();
        write_sentence(&mut out, *b"gn", Sentence::Gga, &sample_fix());
        assert!(out.starts_with(b"$GNGGA,"));
        out.clear();
        write_sentence(&mut out, [b'*', 0xFF], Sentence::Vtg, &sample_fix());
        assert!(out.starts_with(b"$XXVTG,"));
        assert!(verify(&out));
    }

    #[test]
    fn worst_case_lengths() {
        let wide = Fix {
            utc_ms: u64::MAX,
            valid: true,
            lat_deg: -89.999_999,
            lon_deg: -179.999_999,
            altitude_m: -1e9,
            speed_knots: 1e12,
            course_deg: 359.994,
            hdop: 1e9,
            pdop: 1e9,
            vdop: 1e9,
            satellites: vec![sat(255, 255, u16::MAX, Some(255)); 40],
            used: usize::MAX,
        };
        for s in Sentence::ALL {
            let out = write_one(s, &wide);
            for line in lines(&out) {
                assert!(
                    line.len() <= MAX_SENTENCE_LEN,
                    "{}",
                    String::from_utf8_lossy(line)
                );
                parse(line);
            }
        }
    }

    #[test]
    fn sky_is_plausible() {
        let t = T0 as f64 / 1000.0;
        for seed in 0..50u64 {
            for n in [0, 4, 9, 16, 100] {
                let s = sky(seed, t, n);
                assert_eq!(s.len(), n.clamp(4, 16));
                let mut prns: Vec<u8> = s.iter().map(|x| x.prn).collect();
                prns.sort_unstable();
                prns.dedup();
                assert_eq!(prns.len(), s.len(), "distinct PRNs");
                for x in &s {
                    assert!((1..=32).contains(&x.prn));
                    assert!(x.elevation_deg <= 90);
                    assert!(x.azimuth_deg < 360);
                    let snr = x.snr_db.expect("snr");
                    assert!((20..=48).contains(&snr));
                }
                assert!(
                    s.windows(2)
                        .all(|w| w[0].elevation_deg >= w[1].elevation_deg)
                );
            }
        }
        // Higher in the sky gives a stronger signal.
        let all: Vec<Satellite> = (0..200u64).flat_map(|seed| sky(seed, t, 16)).collect();
        let low = all
            .iter()
            .filter(|x| x.elevation_deg < 20)
            .filter_map(|x| x.snr_db)
            .max()
            .expect("some low");
        let high = all
            .iter()
            .filter(|x| x.elevation_deg > 60)
            .filter_map(|x| x.snr_db)
            .min()
            .expect("some high");
        assert!(high > low, "{high} vs {low}");
        // Odd times do not panic.
        for odd in [f64::NAN, f64::INFINITY, -1e300, 1e300, -5.0] {
            assert_eq!(sky(1, odd, 8).len(), 8);
        }
    }

    #[test]
    fn sky_depends_on_seed() {
        let t = 1.7e9;
        assert_eq!(sky(7, t, 12), sky(7, t, 12));
        assert_ne!(sky(7, t, 12), sky(8, t, 12));
    }

    #[test]
    fn sky_moves_slowly_and_changes_over_hours() {
        for seed in 0..20u64 {
            let mut t = 1.7e9 + seed as f64 * 977.0;
            let start = sky(seed, t, 16);
            for _ in 0..120 {
                let a = sky(seed, t, 16);
                let b = sky(seed, t + 60.0, 16);
                for x in &a {
                    if let Some(y) = b.iter().find(|y| y.prn == x.prn) {
                        let del = (i32::from(x.elevation_deg) - i32::from(y.elevation_deg)).abs();
                        assert!(del <= 3, "seed {seed} prn {}: {x:?} -> {y:?}", x.prn);
                        let daz =
                            (i32::from(x.azimuth_deg) - i32::from(y.azimuth_deg)).rem_euclid(360);
                        assert!(daz.min(360 - daz) <= 3, "{x:?} -> {y:?}");
                    }
                }
                t += 60.0;
            }
            // Two hours later the sky is not the same.
            assert_ne!(start, sky(seed, t, 16));
        }
    }

    fn arb_satellite() -> impl Strategy<Value = Satellite> {
        (any::<u8>(), any::<u8>(), any::<u16>(), any::<Option<u8>>()).prop_map(
            |(prn, el, az, snr)| Satellite {
                prn,
                elevation_deg: el,
                azimuth_deg: az,
                snr_db: snr,
            },
        )
    }

    fn arb_f64() -> impl Strategy<Value = f64> {
        prop_oneof![
            4 => -200.0f64..200.0,
            1 => any::<f64>(),
            1 => Just(-0.0),
        ]
    }

    fn arb_fix() -> impl Strategy<Value = Fix> {
        (
            any::<u64>(),
            any::<bool>(),
            (arb_f64(), arb_f64(), arb_f64()),
            (arb_f64(), arb_f64()),
            (arb_f64(), arb_f64(), arb_f64()),
            proptest::collection::vec(arb_satellite(), 0..45),
            any::<usize>(),
        )
            .prop_map(
                |(utc_ms, valid, (lat, lon, alt), (speed, course), (h, p, v), satellites, used)| {
                    Fix {
                        utc_ms,
                        valid,
                        lat_deg: lat,
                        lon_deg: lon,
                        altitude_m: alt,
                        speed_knots: speed,
                        course_deg: course,
                        hdop: h,
                        pdop: p,
                        vdop: v,
                        satellites,
                        used: used % 50,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn random_fixes_give_short_valid_printable_lines(fix in arb_fix(), talker in any::<[u8; 2]>()) {
            for s in Sentence::ALL {
                let mut out = Vec::new();
                write_sentence(&mut out, talker, s, &fix);
                let ls = lines(&out);
                prop_assert!(!ls.is_empty());
                for line in ls {
                    prop_assert!(line.len() <= MAX_SENTENCE_LEN, "{} bytes: {}", line.len(), String::from_utf8_lossy(line));
                    prop_assert!(line[..line.len() - 2].iter().all(|b| (0x20..0x7F).contains(b)));
                    prop_assert!(verify(line));
                    let p = parse(line);
                    prop_assert_eq!(p.kind.as_str(), s.as_str());
                    let mut bad = line.to_vec();
                    corrupt_checksum(&mut bad);
                    prop_assert!(!verify(&bad));
                }
            }
        }

        #[test]
        fn lat_lon_round_trip(lat in -90.0f64..=90.0, lon in -180.0f64..=180.0, ms in any::<u64>()) {
            let fix = Fix { lat_deg: lat, lon_deg: lon, utc_ms: ms, ..sample_fix() };
            let p = parse_one(Sentence::Rmc, &fix);
            assert_angle(&p.fields[2], &p.fields[3], 2, lat);
            assert_angle(&p.fields[4], &p.fields[5], 3, lon);
            let day_ms = ms % MS_PER_DAY;
            let t = &p.fields[0];
            let hh: u64 = t[0..2].parse().expect("hh");
            let mm: u64 = t[2..4].parse().expect("mm");
            let ss: u64 = t[4..6].parse().expect("ss");
            let cs: u64 = t[7..9].parse().expect("cs");
            prop_assert_eq!(((hh * 60 + mm) * 60 + ss) * 1000 + cs * 10, day_ms - day_ms % 10);
        }

        #[test]
        fn verify_and_corrupt_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = verify(&bytes);
            let mut b = bytes.clone();
            corrupt_checksum(&mut b);
            prop_assert_eq!(b.len(), bytes.len());
        }
    }
}
