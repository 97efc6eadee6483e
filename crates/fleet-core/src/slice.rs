//! Process slices of a fleet: `--shard K/N` (or `JOB_COMPLETION_INDEX` with `--shards-total N`)
//! makes a process own the K-th contiguous slice of every cohort's device ids. Device ids,
//! seeds and power-on times stay those of the whole fleet, so N processes together are exactly
//! the fleet of one, and a restarted process rebuilds exactly the same devices.

use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};

/// The most processes a fleet may be cut into.
pub const MAX_SLICES: u32 = 100_000;

/// Which part of the fleet a process owns: `index` of `count` (0-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Slice {
    pub index: u32,
    pub count: u32,
}

impl Slice {
    /// The whole fleet: slice 0 of 1.
    pub const WHOLE: Slice = Slice { index: 0, count: 1 };

    pub fn new(index: u32, count: u32) -> Result<Slice, String> {
        if count == 0 || count > MAX_SLICES {
            return Err(format!(
                "the number of shards must be between 1 and {MAX_SLICES}, not {count}"
            ));
        }
        if index >= count {
            return Err(format!(
                "shard {index} does not exist in {count} shards (they are numbered 0 to {})",
                count - 1
            ));
        }
        Ok(Slice { index, count })
    }

    /// Parses `K/N` (0-based K).
    pub fn parse(s: &str) -> Result<Slice, String> {
        let bad = || {
            format!(
                "{s:?} is not K/N: the shard's index from 0, a slash, the number of shards (e.g. 0/4 .. 3/4)"
            )
        };
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let k: u32 = k.trim().parse().map_err(|_| bad())?;
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        Slice::new(k, n)
    }

    pub fn is_whole(&self) -> bool {
        self.count == 1
    }

    /// This slice of a cohort whose ids are `first .. first + len`: ids
    /// `first + floor(K*len/N) .. first + floor((K+1)*len/N)`. The slices of all K are
    /// contiguous, in order, disjoint, and cover the cohort; their sizes differ by at most one.
    pub fn of_cohort(&self, first: u32, len: u32) -> Range<u32> {
        self.of_units(first, len, 1)
    }

    /// Like `of_cohort`, cutting only between units of `unit` devices (a gateway and its
    /// children: one gateway's devices always stay in one slice, or two processes would each
    /// open its session). The cohort's last unit may be smaller.
    pub fn of_units(&self, first: u32, len: u32, unit: u32) -> Range<u32> {
        let unit = unit.max(1);
        let units = len.div_ceil(unit);
        let at = |k: u32| {
            let u = (u64::from(units) * u64::from(k) / u64::from(self.count)) as u32;
            first + u.saturating_mul(unit).min(len)
        };
        at(self.index)..at(self.index + 1)
    }
}

impl fmt::Display for Slice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_partition_every_cohort_in_order() {
        for len in [0u32, 1, 2, 7, 100, 1001] {
            for n in [1u32, 2, 3, 4, 7, 16] {
                let mut next = 10;
                for k in 0..n {
                    let r = Slice::new(k, n).unwrap().of_cohort(10, len);
                    assert_eq!(r.start, next, "len {len} n {n} k {k}");
                    assert!(r.len() as u32 <= len.div_ceil(n));
                    assert!(r.len() as u32 >= len / n);
                    next = r.end;
                }
                assert_eq!(next, 10 + len);
            }
        }
    }

    #[test]
    fn parse_accepts_k_of_n_and_explains_the_rest() {
        assert_eq!(Slice::parse("2/4"), Ok(Slice { index: 2, count: 4 }));
        assert_eq!(Slice::parse("0/1"), Ok(Slice::WHOLE));
        assert!(Slice::parse("4/4").unwrap_err().contains("numbered 0 to 3"));
        assert!(Slice::parse("0/0").unwrap_err().contains("between 1 and"));
        assert!(Slice::parse("x").unwrap_err().contains("not K/N"));
        assert!(Slice::parse("1/-2").unwrap_err().contains("not K/N"));
    }

    #[test]
    fn units_are_never_cut() {
        for (len, unit) in [(1000u32, 100u32), (1001, 100), (7, 3), (5, 10), (0, 4)] {
            for n in [1u32, 2, 3, 4, 16] {
                let mut next = 50;
                for k in 0..n {
                    let r = Slice::new(k, n).unwrap().of_units(50, len, unit);
                    assert_eq!(r.start, next, "len {len} unit {unit} n {n} k {k}");
                    assert!(r.start == 50 + len || (r.start - 50).is_multiple_of(unit));
                    next = r.end;
                }
                assert_eq!(next, 50 + len);
            }
        }
        let s = Slice::new(1, 3).unwrap();
        assert_eq!(s.of_units(0, 90, 1), s.of_cohort(0, 90));
    }

    #[test]
    fn large_fleets_do_not_overflow() {
        let s = Slice::new(99_999, 100_000).unwrap();
        let r = s.of_cohort(0, 50_000_000);
        assert_eq!(r.end, 50_000_000);
        assert_eq!(r.len(), 500);
    }
}
