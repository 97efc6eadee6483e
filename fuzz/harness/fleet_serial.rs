//! Bad-input checks of the serial personas' parsers, shared by the fuzz targets `at_command` and
//! `nmea_sentence` and by `crates/fleet-serial/tests/bad_input.rs`.
//!
//! - AT modem: bytes from the line through `at::LineAssembler` and `at::Modem` as the persona's
//!   `at_loop` uses them (the network state before each line, URCs first, then the answer).
//!   Lines are non-empty, at most `MAX_LINE` bytes, without CR, LF, BS or DEL; every command
//!   line gets its echo (when on) and exactly one final result code, the one the returned
//!   `Outcome` says; URCs are well-formed `+CREG` / `+CEREG` lines.
//! - NMEA: a GPS fix made of fuzzed numbers (NaN, infinities, huge times, too many satellites)
//!   through `nmea::write_sentence` for every sentence type: the documented promise is lines of
//!   at most 82 characters of printable ASCII, each with a checksum `nmea::verify` accepts and
//!   that `nmea::corrupt_checksum` breaks. Raw bytes go through `verify`, `corrupt_checksum`
//!   and `Sentence::parse` too, and `nmea::sky` keeps its promises for any seed, time and count.

use fleet_serial::at::{Assembled, LineAssembler, MAX_LINE, Modem, ModemInfo, NetState, Outcome};
use fleet_serial::at::{Registration, cme_text};
use fleet_serial::nmea::{self, Fix, MAX_SENTENCE_LEN, Satellite, Sentence};

/// Reads fuzz bytes as numbers; zeros once the bytes run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    /// A number: most often one of the edges, else any bit pattern.
    fn f64(&mut self) -> f64 {
        const EDGES: [f64; 16] = [
            0.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e300,
            -1e300,
            90.0,
            -90.0,
            180.0,
            -180.0,
            359.999_999,
            1e-300,
            f64::MAX,
            -113.0,
            -51.0,
        ];
        let pick = self.u8();
        if usize::from(pick) < EDGES.len() * 8 {
            EDGES[usize::from(pick) % EDGES.len()]
        } else {
            f64::from_bits(self.u64())
        }
    }
    fn rest(&self) -> &[u8] {
        self.0
    }
}

fn registration(b: u8) -> Registration {
    match b % 6 {
        0 => Registration::NotSearching,
        1 => Registration::Home,
        2 => Registration::Searching,
        3 => Registration::Denied,
        4 => Registration::Unknown,
        _ => Registration::Roaming,
    }
}

/// Checks URC output: nothing, or `\r\n+CREG: ...\r\n` / `\r\n+CEREG: ...\r\n` lines.
fn check_urcs(out: &[u8]) {
    let mut rest = out;
    while !rest.is_empty() {
        let body = rest.strip_prefix(b"\r\n").unwrap_or_else(|| {
            panic!(
                "a URC without its CR LF: {:?}",
                String::from_utf8_lossy(out)
            )
        });
        let end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| panic!("an unterminated URC: {:?}", String::from_utf8_lossy(out)));
        let line = &body[..end];
        assert!(
            line.starts_with(b"+CREG: ") || line.starts_with(b"+CEREG: "),
            "an unexpected URC {:?}",
            String::from_utf8_lossy(line)
        );
        rest = &body[end + 2..];
    }
}

/// A modem on a line: byte 0 sets the size of the pieces the bytes arrive in (1..=64); before
/// each line the network state is taken from the next 8 bytes of a header that repeats (bytes
/// 1..=8: registration, RSSI, access technology, area and cell), so it changes between lines.
pub fn at_command(data: &[u8]) {
    let mut b = Bytes(data);
    let piece = usize::from(b.u8() % 64) + 1;
    let header: Vec<u8> = (0..8).map(|_| b.u8()).collect();
    let stream = b.rest();
    let mut modem = Modem::new(ModemInfo {
        manufacturer: "Quectel".to_string(),
        model: "EC25".to_string(),
        revision: "EC25EFAR06A06M4G".to_string(),
        imei: "867698040000001".to_string(),
        operator: "FleetNet".to_string(),
    });
    let mut assembler = LineAssembler::new();
    let mut lines = Vec::new();
    let mut n = 0usize;
    for chunk in stream.chunks(piece) {
        assembler.push(chunk, &mut lines);
        for l in lines.drain(..) {
            let h = |i: usize| header[(n + i) % header.len()];
            let net = NetState {
                registration: registration(h(0)),
                rssi_dbm: match h(1) {
                    0 => None,
                    1 => Some(f64::NAN),
                    2 => Some(f64::INFINITY),
                    v => Some(-140.0 + f64::from(v) / 2.0),
                },
                act: h(2),
                tac: u16::from_le_bytes([h(3), h(4)]),
                cell_id: u32::from_le_bytes([h(5), h(6), h(7), h(0)]),
            };
            n += 1;
            let mut out = Vec::new();
            modem.network_changed(&net, &mut out);
            check_urcs(&out);
            match l {
                Assembled::Line(cmd) => check_command(&mut modem, &cmd, &net),
                Assembled::Overflow => {}
            }
        }
    }
}

/// One command line: its echo and its final result code.
fn check_command(modem: &mut Modem, cmd: &[u8], net: &NetState) {
    assert!(
        !cmd.is_empty() && cmd.len() <= MAX_LINE,
        "a line of {} bytes",
        cmd.len()
    );
    assert!(
        !cmd.iter().any(|b| matches!(b, b'\r' | b'\n' | 0x08 | 0x7F)),
        "a line holding CR, LF, BS or DEL: {cmd:?}"
    );
    let echo = modem.echo();
    let mut out = Vec::new();
    let outcome = modem.command(cmd, net, &mut out);
    let shown = String::from_utf8_lossy(&out).into_owned();
    if cmd.iter().all(|b| matches!(b, b' ' | b'\t')) {
        assert!(
            out.is_empty() && outcome == Outcome::Ok,
            "a blank line was answered: {shown:?}"
        );
        return;
    }
    let rest = if echo {
        let Some(rest) = out.strip_prefix(cmd).and_then(|r| r.strip_prefix(b"\r")) else {
            panic!("no echo of {cmd:?}: {shown:?}");
        };
        rest
    } else {
        &out[..]
    };
    let body = rest
        .strip_suffix(b"\r\n")
        .unwrap_or_else(|| panic!("an answer not ending in CR LF: {shown:?}"));
    let start = body
        .windows(2)
        .rposition(|w| w == b"\r\n")
        .unwrap_or_else(|| panic!("no final result code: {shown:?}"));
    let last = String::from_utf8_lossy(&body[start + 2..]).into_owned();
    let expected_ok = match outcome {
        Outcome::Ok => last == "OK",
        Outcome::Error => last == "ERROR",
        Outcome::CmeError(n) => {
            last == format!("+CME ERROR: {n}") || last == format!("+CME ERROR: {}", cme_text(n))
        }
    };
    assert!(expected_ok, "{outcome:?} answered with {last:?}: {shown:?}");
    if let Outcome::CmeError(n) = outcome {
        assert_ne!(cme_text(n), "unknown", "CME error {n} has no text");
    }
    // Only the final line may be a result code.
    for line in body[..start].split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(
            !(line == b"OK" || line == b"ERROR" || line.starts_with(b"+CME ERROR")),
            "two result codes: {shown:?}"
        );
    }
}

/// Byte 0 says how many of the next bytes make the fix (the numbers, read as `Bytes` does: zeros
/// when they run out) and the sky; the fix goes through every sentence writer. The bytes after
/// them are a raw line (see the module documentation).
pub fn nmea_sentence(data: &[u8]) {
    let Some((&fix_len, rest)) = data.split_first() else {
        return;
    };
    let (fix_bytes, raw) = rest.split_at(usize::from(fix_len).min(rest.len()));
    let mut b = Bytes(fix_bytes);
    let talker = [b.u8(), b.u8()];
    let utc_ms = match b.u8() % 4 {
        0 => u64::MAX,
        1 => b.u64(),
        _ => 1_700_000_000_000 + u64::from(b.u32()),
    };
    let valid = b.u8() & 1 == 1;
    let (lat_deg, lon_deg, altitude_m) = (b.f64(), b.f64(), b.f64());
    let (speed_knots, course_deg) = (b.f64(), b.f64());
    let (hdop, pdop, vdop) = (b.f64(), b.f64(), b.f64());
    let count = usize::from(b.u8() % 48);
    let satellites: Vec<Satellite> = (0..count)
        .map(|_| Satellite {
            prn: b.u8(),
            elevation_deg: b.u8(),
            azimuth_deg: b.u16(),
            snr_db: match b.u8() {
                0 => None,
                v => Some(v),
            },
        })
        .collect();
    let used = usize::from(b.u8());
    let fix = Fix {
        utc_ms,
        valid,
        lat_deg,
        lon_deg,
        altitude_m,
        speed_knots,
        course_deg,
        hdop,
        pdop,
        vdop,
        satellites,
        used,
    };
    for s in Sentence::ALL {
        let mut out = Vec::new();
        nmea::write_sentence(&mut out, talker, s, &fix);
        check_sentences(&out, s, &fix);
    }
    let sky_seed = b.u64();
    let sky_t = b.f64();
    let sky_n = usize::from(b.u8());
    check_sky(sky_seed, sky_t, sky_n);
    raw_line(raw);
}

/// The writer's promise for one sentence type.
fn check_sentences(out: &[u8], s: Sentence, fix: &Fix) {
    let shown = || String::from_utf8_lossy(out).into_owned();
    assert!(
        out.ends_with(b"\r\n"),
        "{s:?}: output not ending in CR LF: {:?}",
        shown()
    );
    let lines: Vec<&[u8]> = out.split_inclusive(|b| *b == b'\n').collect();
    let max_lines = if s == Sentence::Gsv { 9 } else { 1 };
    assert!(
        (1..=max_lines).contains(&lines.len()),
        "{s:?}: {} lines: {:?}",
        lines.len(),
        shown()
    );
    for line in lines {
        let text = String::from_utf8_lossy(line);
        assert!(
            line.len() <= MAX_SENTENCE_LEN,
            "{s:?}: {} bytes: {text:?} for {fix:?}",
            line.len()
        );
        assert!(
            line.starts_with(b"$") && line.ends_with(b"\r\n"),
            "{s:?}: {text:?}"
        );
        let body = &line[..line.len() - 2];
        assert!(
            body.iter().all(|b| (0x20..=0x7E).contains(b)),
            "{s:?}: not printable ASCII: {text:?} for {fix:?}"
        );
        assert!(nmea::verify(line), "{s:?}: a bad checksum: {text:?}");
        let mut broken = line.to_vec();
        nmea::corrupt_checksum(&mut broken);
        assert!(
            !nmea::verify(&broken),
            "{s:?}: corrupt_checksum left it valid: {text:?}"
        );
        assert_eq!(broken.len(), line.len());
    }
}

/// `sky`'s promises: 4..=16 satellites (the count clamped), distinct PRNs in 1..=32, elevation
/// 0..=90, azimuth 0..360, SNR 20..=48, highest first.
fn check_sky(seed: u64, t_s: f64, n: usize) {
    let sats = nmea::sky(seed, t_s, n);
    assert_eq!(sats.len(), n.clamp(4, 16), "sky({seed}, {t_s}, {n})");
    let mut prns: Vec<u8> = sats.iter().map(|s| s.prn).collect();
    prns.sort_unstable();
    prns.dedup();
    assert_eq!(
        prns.len(),
        sats.len(),
        "repeated PRNs in sky({seed}, {t_s}, {n}): {sats:?}"
    );
    for s in &sats {
        assert!((1..=32).contains(&s.prn), "{s:?}");
        assert!(s.elevation_deg <= 90 && s.azimuth_deg < 360, "{s:?}");
        assert!(
            s.snr_db.is_some_and(|snr| (20..=48).contains(&snr)),
            "{s:?}"
        );
    }
    assert!(
        sats.windows(2)
            .all(|w| w[0].elevation_deg >= w[1].elevation_deg),
        "not highest first: {sats:?}"
    );
}

/// Any bytes as a received line: `verify` and `corrupt_checksum` do not panic, a valid sentence
/// made invalid stays the same length and changes only in its two checksum digits.
fn raw_line(raw: &[u8]) {
    let valid = nmea::verify(raw);
    let mut broken = raw.to_vec();
    nmea::corrupt_checksum(&mut broken);
    assert_eq!(broken.len(), raw.len());
    if valid {
        assert!(
            !nmea::verify(&broken),
            "still valid after corrupt_checksum: {raw:?}"
        );
        let differ: Vec<usize> = (0..raw.len()).filter(|&i| raw[i] != broken[i]).collect();
        assert!(
            !differ.is_empty() && differ.len() <= 2,
            "corrupt_checksum changed {differ:?} of {raw:?}"
        );
    }
    if let Ok(name) = std::str::from_utf8(raw)
        && let Some(s) = Sentence::parse(name)
    {
        assert!(s.as_str().eq_ignore_ascii_case(name));
    }
}
