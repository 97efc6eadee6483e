//! Simulated time. Model code never reads a clock: the engine passes `now` in.
//!
//! `SimTime` is microseconds since the start of the run; `SimDuration` is a span in microseconds.
//! Both clocks (wall and virtual) express time this way, so one model serves both.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};

/// Microseconds since the run started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SimTime(pub u64);

/// A span of simulated time, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SimDuration(pub u64);

impl SimTime {
    pub const ZERO: SimTime = SimTime(0);
    /// "Never": a deadline that does not fire.
    pub const NEVER: SimTime = SimTime(u64::MAX);

    pub fn as_micros(self) -> u64 {
        self.0
    }
    pub fn as_millis(self) -> u64 {
        self.0 / 1_000
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }
    /// Time elapsed since `earlier`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: SimTime) -> SimDuration {
        SimDuration(self.0.saturating_sub(earlier.0))
    }
    pub fn is_never(self) -> bool {
        self == Self::NEVER
    }
}

impl SimDuration {
    pub const ZERO: SimDuration = SimDuration(0);

    pub const fn from_micros(us: u64) -> Self {
        SimDuration(us)
    }
    pub const fn from_millis(ms: u64) -> Self {
        SimDuration(ms * 1_000)
    }
    pub const fn from_secs(s: u64) -> Self {
        SimDuration(s * 1_000_000)
    }
    /// From fractional seconds; negative and NaN become zero, huge values saturate.
    pub fn from_secs_f64(s: f64) -> Self {
        if s.is_nan() || s <= 0.0 {
            return SimDuration(0);
        }
        let us = s * 1e6;
        if us >= u64::MAX as f64 {
            SimDuration(u64::MAX)
        } else {
            SimDuration(us.round() as u64)
        }
    }
    pub fn as_micros(self) -> u64 {
        self.0
    }
    pub fn as_millis(self) -> u64 {
        self.0 / 1_000
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }
    pub fn mul_f64(self, factor: f64) -> Self {
        Self::from_secs_f64(self.as_secs_f64() * factor)
    }
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_micros(self.0)
    }
}

impl Add<SimDuration> for SimTime {
    type Output = SimTime;
    fn add(self, rhs: SimDuration) -> SimTime {
        SimTime(self.0.saturating_add(rhs.0))
    }
}

impl AddAssign<SimDuration> for SimTime {
    fn add_assign(&mut self, rhs: SimDuration) {
        *self = *self + rhs;
    }
}

impl Sub<SimTime> for SimTime {
    type Output = SimDuration;
    fn sub(self, rhs: SimTime) -> SimDuration {
        self.saturating_since(rhs)
    }
}

impl Add for SimDuration {
    type Output = SimDuration;
    fn add(self, rhs: SimDuration) -> SimDuration {
        SimDuration(self.0.saturating_add(rhs.0))
    }
}

impl fmt::Display for SimDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0;
        if us == 0 {
            write!(f, "0s")
        } else if us.is_multiple_of(86_400_000_000) {
            write!(f, "{}d", us / 86_400_000_000)
        } else if us.is_multiple_of(3_600_000_000) {
            write!(f, "{}h", us / 3_600_000_000)
        } else if us.is_multiple_of(60_000_000) {
            write!(f, "{}m", us / 60_000_000)
        } else if us.is_multiple_of(1_000_000) {
            write!(f, "{}s", us / 1_000_000)
        } else if us.is_multiple_of(1_000) {
            write!(f, "{}ms", us / 1_000)
        } else {
            write!(f, "{us}us")
        }
    }
}

/// Parses `250ms`, `30s`, `5m`, `1.5h`, `2d`, `100us`, or several joined (`1h30m`).
pub fn parse_duration(text: &str) -> Result<SimDuration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total_us: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("`{text}`: expected a number before the unit"));
        }
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("`{text}`: `{}` is not a number", &rest[..num_len]))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = rest[..unit_len].trim();
        rest = &rest[unit_len..];
        let scale = match unit {
            "us" | "µs" => 1.0,
            "ms" => 1e3,
            "s" | "sec" => 1e6,
            "m" | "min" => 60e6,
            "h" => 3600e6,
            "d" => 86_400e6,
            "" => {
                return Err(format!(
                    "`{text}`: missing unit (one of us, ms, s, m, h, d)"
                ));
            }
            other => {
                return Err(format!(
                    "`{text}`: unknown unit `{other}` (one of us, ms, s, m, h, d)"
                ));
            }
        };
        total_us += number * scale;
    }
    if !total_us.is_finite() || total_us >= u64::MAX as f64 {
        return Err(format!("`{text}`: too long"));
    }
    Ok(SimDuration(total_us.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit_and_combined() {
        assert_eq!(parse_duration("250ms"), Ok(SimDuration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(SimDuration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(SimDuration::from_secs(300)));
        assert_eq!(parse_duration("1.5h"), Ok(SimDuration::from_secs(5400)));
        assert_eq!(parse_duration("1h30m"), Ok(SimDuration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(SimDuration::from_secs(172_800)));
        assert_eq!(parse_duration("100us"), Ok(SimDuration::from_micros(100)));
    }

    #[test]
    fn bad_durations_explain_what_is_wrong() {
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(
            parse_duration("10 parsecs")
                .unwrap_err()
                .contains("unknown unit `parsecs`")
        );
        assert!(parse_duration("").unwrap_err().contains("empty"));
        assert!(
            parse_duration("s")
                .unwrap_err()
                .contains("expected a number")
        );
    }

    #[test]
    fn durations_display_in_their_largest_whole_unit() {
        assert_eq!(SimDuration::from_secs(300).to_string(), "5m");
        assert_eq!(SimDuration::from_millis(1500).to_string(), "1500ms");
    }
}
