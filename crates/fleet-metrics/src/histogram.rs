use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency recorded exactly: one hour. Larger values are clamped to it (and counted).
pub const LATENCY_MAX_US: u64 = 3_600_000_000;
/// Three significant figures: 0.1% relative error.
const SIGFIG: u8 = 3;

/// A latency histogram in microseconds.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    h: Histogram<u64>,
    clamped: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

/// Summary of a histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl LatencyHistogram {
    pub fn new() -> Self {
        LatencyHistogram {
            h: Histogram::new_with_bounds(1, LATENCY_MAX_US, SIGFIG)
                .unwrap_or_else(|_| unreachable!("constant bounds are valid")),
            clamped: 0,
        }
    }

    pub fn record(&mut self, us: u64) {
        let v = us.clamp(1, LATENCY_MAX_US);
        if us > LATENCY_MAX_US {
            self.clamped += 1;
        }
        self.h.saturating_record(v);
    }

    pub fn add(&mut self, other: &LatencyHistogram) {
        // Same bounds on both sides: addition cannot fail.
        let _ = self.h.add(&other.h);
        self.clamped += other.clamped;
    }

    pub fn reset(&mut self) {
        self.h.reset();
        self.clamped = 0;
    }

    pub fn count(&self) -> u64 {
        self.h.len()
    }

    pub fn quantile(&self, q: f64) -> u64 {
        if self.h.is_empty() {
            0
        } else {
            self.h.value_at_quantile(q)
        }
    }

    pub fn percentiles(&self) -> Percentiles {
        if self.h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: self.h.len(),
            p50: self.h.value_at_quantile(0.5),
            p90: self.h.value_at_quantile(0.9),
            p99: self.h.value_at_quantile(0.99),
            p999: self.h.value_at_quantile(0.999),
            max: self.h.max(),
            mean: self.h.mean(),
        }
    }

    /// Counts per bucket between `lo_us` and `hi_us` on a log scale, for the TUI and summaries.
    pub fn log_buckets(&self, first_us: u64, factor: f64, n: usize) -> Vec<(u64, u64)> {
        let mut out = Vec::with_capacity(n);
        let mut lo = 0u64;
        let mut hi = first_us.max(1);
        for i in 0..n {
            let top = if i + 1 == n { LATENCY_MAX_US } else { hi };
            out.push((top, self.h.count_between(lo, top)));
            lo = top + 1;
            hi = ((hi as f64) * factor) as u64;
        }
        out
    }

    pub fn inner(&self) -> &Histogram<u64> {
        &self.h
    }

    /// Values above `LATENCY_MAX_US` that were recorded as `LATENCY_MAX_US`.
    pub(crate) fn clamped(&self) -> u64 {
        self.clamped
    }

    pub(crate) fn set_clamped(&mut self, clamped: u64) {
        self.clamped = clamped;
    }

    /// What was recorded since `earlier`, a copy of this histogram taken before (the same
    /// histogram can only have grown since). `None` when `earlier` holds a value this one
    /// does not: it was not an earlier state of this histogram.
    pub(crate) fn since(&self, earlier: &LatencyHistogram) -> Option<Histogram<u64>> {
        let mut h = self.h.clone();
        h.subtract(&earlier.h).ok()?;
        Some(h)
    }

    /// Adds a histogram from elsewhere (an interval log); values outside our bounds are
    /// clamped like `record` does.
    pub(crate) fn add_hdr(&mut self, other: &Histogram<u64>) {
        if self.h.add(other).is_err() {
            for v in other.iter_recorded() {
                self.h.saturating_record_n(
                    v.value_iterated_to().clamp(1, LATENCY_MAX_US),
                    v.count_at_value(),
                );
            }
        }
    }
}

/// On the wire (the API's snapshot, for `top --attach` to merge losslessly): the HdrHistogram
/// V2 encoding in base64, with the count of clamped values.
impl Serialize for LatencyHistogram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        use hdrhistogram::serialization::Serializer as _;
        let mut buf = Vec::new();
        hdrhistogram::serialization::V2Serializer::new()
            .serialize(&self.h, &mut buf)
            .map_err(|e| serde::ser::Error::custom(format!("histogram: {e:?}")))?;
        let text = base64::engine::general_purpose::STANDARD.encode(buf);
        (text, self.clamped).serialize(s)
    }
}

impl<'de> Deserialize<'de> for LatencyHistogram {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let (text, clamped) = <(String, u64)>::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("histogram: not base64: {e}")))?;
        let h: Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut &bytes[..])
            .map_err(|e| serde::de::Error::custom(format!("histogram: {e:?}")))?;
        let mut out = LatencyHistogram::new();
        // Values outside our bounds cannot be added: clamp them like `record` does.
        out.add_hdr(&h);
        out.clamped = clamped;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_histograms_equal_one_that_saw_everything() {
        let (mut a, mut b, mut all) = (
            LatencyHistogram::new(),
            LatencyHistogram::new(),
            LatencyHistogram::new(),
        );
        for v in 1..5_000u64 {
            let x = v * 37 % 100_000;
            if v % 2 == 0 {
                a.record(x)
            } else {
                b.record(x)
            }
            all.record(x);
        }
        a.add(&b);
        assert_eq!(a.percentiles(), all.percentiles());
    }

    #[test]
    fn values_above_an_hour_are_clamped_and_counted() {
        let mut h = LatencyHistogram::new();
        h.record(LATENCY_MAX_US * 2);
        assert_eq!(h.count(), 1);
        assert_eq!(h.clamped, 1);
        assert!(h.percentiles().max >= LATENCY_MAX_US - LATENCY_MAX_US / 1000);
    }
}
