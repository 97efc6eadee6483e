//! Telemetry and response payloads: JSON written straight into a reused buffer.
//!
//! The telemetry contract (docs/telemetry.md): every message carries `device_id`, `seq` (+1 per
//! message, per device), `ts` (the scheduled send time, ms since the Unix epoch), `fw`,
//! `battery` (percent, or null for mains power) and `values` (one key per sensor).

/// Appends `s` as a JSON string (quoted, escaped).
pub fn push_json_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    if s.iter().all(|b| *b >= 0x20 && *b != b'"' && *b != b'\\') {
        out.extend_from_slice(s);
    } else {
        for &b in s {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0..=0x1f => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 0xf)]);
                }
                _ => out.push(b),
            }
        }
    }
    out.push(b'"');
}

pub fn push_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(v).as_bytes());
}

const POW10: [f64; 10] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// Appends `v` with exactly `decimals` digits after the point (0..=9). Non-finite values are
/// written as `null`, which JSON allows where a number cannot be.
pub fn push_fixed(out: &mut Vec<u8>, v: f64, decimals: u8) {
    if !v.is_finite() {
        out.extend_from_slice(b"null");
        return;
    }
    let d = usize::from(decimals.min(9));
    let scaled = (v * POW10[d]).round();
    if scaled.abs() >= 9.0e18 {
        // Too large for the integer path; the shortest round-trip form is still valid JSON.
        out.extend_from_slice(format!("{v:.d$}").as_bytes());
        return;
    }
    let mut n = scaled as i64;
    if n < 0 {
        out.push(b'-');
        n = -n;
    }
    let n = n as u64;
    let mut buf = itoa::Buffer::new();
    if d == 0 {
        out.extend_from_slice(buf.format(n).as_bytes());
        return;
    }
    let unit = 10u64.pow(d as u32);
    out.extend_from_slice(buf.format(n / unit).as_bytes());
    out.push(b'.');
    let frac = n % unit;
    let digits = buf.format(frac);
    for _ in digits.len()..d {
        out.push(b'0');
    }
    out.extend_from_slice(digits.as_bytes());
}

/// A gateway's status, published by the gateway when its session comes up (`online: true`)
/// and as its will and at the end of the run (`online: false`):
/// `{"gateway":"edge-gw-0001","online":true,"ts":1767225600000,"children":1000}`.
pub fn encode_gateway_status(
    gateway: &[u8],
    online: bool,
    ts_ms: u64,
    children: u32,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"{\"gateway\":");
    push_json_str(out, gateway);
    out.extend_from_slice(if online {
        b",\"online\":true"
    } else {
        b",\"online\":false"
    });
    out.extend_from_slice(b",\"ts\":");
    push_u64(out, ts_ms);
    out.extend_from_slice(b",\"children\":");
    push_u64(out, u64::from(children));
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(v: f64, d: u8) -> String {
        let mut out = Vec::new();
        push_fixed(&mut out, v, d);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fixed_point_numbers_round_and_pad() {
        assert_eq!(fixed(21.456, 2), "21.46");
        assert_eq!(fixed(-0.5, 1), "-0.5");
        assert_eq!(fixed(3.0, 3), "3.000");
        assert_eq!(fixed(0.0012, 3), "0.001");
        assert_eq!(fixed(1234.5, 0), "1235");
        assert_eq!(fixed(f64::NAN, 2), "null");
        assert_eq!(fixed(1e30, 1).parse::<f64>().unwrap(), 1e30);
    }

    #[test]
    fn strings_are_escaped() {
        let mut out = Vec::new();
        push_json_str(&mut out, b"a\"b\\c\n\x01");
        assert_eq!(String::from_utf8(out).unwrap(), r#""a\"b\\c\n\u0001""#);
    }
}
