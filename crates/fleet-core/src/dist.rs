//! Random distributions as users write them in TOML, validated into samplers.
//!
//! A distribution is either a plain number (a constant) or a table with `dist = "…"`:
//! `{ dist = "constant", value = 5 }`, `{ dist = "uniform", min = 1, max = 10 }`,
//! `{ dist = "normal", mean = 20, sigma = 3 }`, `{ dist = "lognormal", median = 20, sigma = 0.5 }`,
//! `{ dist = "exponential", mean = 30 }`. The unit is in the key's name (`latency_ms`, `mttr_s`).

use std::fmt;

use rand::{Rng, RngExt};
use rand_distr::{Distribution, Exp, LogNormal, Normal};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::Checker;

/// A distribution as written in a file.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "dist", rename_all = "snake_case")]
pub enum DistSpec {
    Constant { value: f64 },
    Uniform { min: f64, max: f64 },
    Normal { mean: f64, sigma: f64 },
    Lognormal { median: f64, sigma: f64 },
    Exponential { mean: f64 },
}

#[derive(Deserialize)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
enum DistTable {
    Constant { value: f64 },
    Uniform { min: f64, max: f64 },
    Normal { mean: f64, sigma: f64 },
    Lognormal { median: f64, sigma: f64 },
    Exponential { mean: f64 },
}

impl<'de> Deserialize<'de> for DistSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DistSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a number or a table like { dist = \"lognormal\", median = 20, sigma = 0.5 } \
                     (dist: constant, uniform, normal, lognormal, exponential)",
                )
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<DistSpec, E> {
                Ok(DistSpec::Constant { value: v })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DistSpec, E> {
                Ok(DistSpec::Constant { value: v as f64 })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DistSpec, E> {
                Ok(DistSpec::Constant { value: v as f64 })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<DistSpec, A::Error> {
                let t = DistTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(match t {
                    DistTable::Constant { value } => DistSpec::Constant { value },
                    DistTable::Uniform { min, max } => DistSpec::Uniform { min, max },
                    DistTable::Normal { mean, sigma } => DistSpec::Normal { mean, sigma },
                    DistTable::Lognormal { median, sigma } => DistSpec::Lognormal { median, sigma },
                    DistTable::Exponential { mean } => DistSpec::Exponential { mean },
                })
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl fmt::Display for DistSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DistSpec::Constant { value } => write!(f, "{value}"),
            DistSpec::Uniform { min, max } => {
                write!(f, "{{ dist = \"uniform\", min = {min}, max = {max} }}")
            }
            DistSpec::Normal { mean, sigma } => {
                write!(f, "{{ dist = \"normal\", mean = {mean}, sigma = {sigma} }}")
            }
            DistSpec::Lognormal { median, sigma } => {
                write!(
                    f,
                    "{{ dist = \"lognormal\", median = {median}, sigma = {sigma} }}"
                )
            }
            DistSpec::Exponential { mean } => {
                write!(f, "{{ dist = \"exponential\", mean = {mean} }}")
            }
        }
    }
}

/// A validated distribution of non-negative values, ready to sample.
#[derive(Clone, Debug)]
pub enum Dist {
    Constant(f64),
    Uniform { min: f64, max: f64 },
    Normal(Normal<f64>),
    LogNormal(LogNormal<f64>),
    Exponential(Exp<f64>),
}

impl Dist {
    pub const ZERO: Dist = Dist::Constant(0.0);

    /// Validates a spec whose values must be >= 0 (durations, latencies).
    pub fn validate(spec: &DistSpec, key: &str, c: &mut Checker) -> Dist {
        let mut bad = |field: &str, v: f64, why: &str| {
            c.fail(&format!("{key}.{field}"), v, why);
            Dist::ZERO
        };
        match *spec {
            DistSpec::Constant { value } if !(value.is_finite() && value >= 0.0) => {
                c.fail(key, value, "must be a number >= 0");
                Dist::ZERO
            }
            DistSpec::Constant { value } => Dist::Constant(value),
            DistSpec::Uniform { min, .. } if !(min.is_finite() && min >= 0.0) => {
                bad("min", min, "must be >= 0")
            }
            DistSpec::Uniform { min, max } if !(max.is_finite() && max >= min) => {
                bad("max", max, &format!("must be >= min ({min})"))
            }
            DistSpec::Uniform { min, max } => Dist::Uniform { min, max },
            DistSpec::Normal { mean, .. } if !(mean.is_finite() && mean >= 0.0) => {
                bad("mean", mean, "must be >= 0")
            }
            DistSpec::Normal { mean, sigma } => match Normal::new(mean, sigma) {
                Ok(n) if sigma >= 0.0 => Dist::Normal(n),
                _ => bad("sigma", sigma, "must be >= 0"),
            },
            DistSpec::Lognormal { median, .. } if !(median.is_finite() && median > 0.0) => {
                bad("median", median, "must be > 0")
            }
            DistSpec::Lognormal { median, sigma } => match LogNormal::new(median.ln(), sigma) {
                Ok(n) if sigma >= 0.0 => Dist::LogNormal(n),
                _ => bad("sigma", sigma, "must be >= 0"),
            },
            DistSpec::Exponential { mean } => match Exp::new(1.0 / mean) {
                Ok(e) if mean.is_finite() && mean > 0.0 => Dist::Exponential(e),
                _ => bad("mean", mean, "must be > 0"),
            },
        }
    }

    /// One draw, never negative.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        let v = match self {
            Dist::Constant(v) => return *v,
            Dist::Uniform { min, max } => {
                if max > min {
                    rng.random_range(*min..*max)
                } else {
                    *min
                }
            }
            Dist::Normal(n) => n.sample(rng),
            Dist::LogNormal(n) => n.sample(rng),
            Dist::Exponential(e) => e.sample(rng),
        };
        v.max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_pcg::Pcg32;

    fn parse(text: &str) -> Result<DistSpec, String> {
        #[derive(Deserialize)]
        struct W {
            d: DistSpec,
        }
        toml::from_str::<W>(text)
            .map(|w| w.d)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_plain_number_is_a_constant_and_tables_name_their_distribution() {
        assert_eq!(parse("d = 5"), Ok(DistSpec::Constant { value: 5.0 }));
        assert_eq!(
            parse("d = { dist = \"lognormal\", median = 20, sigma = 0.5 }"),
            Ok(DistSpec::Lognormal {
                median: 20.0,
                sigma: 0.5
            })
        );
    }

    #[test]
    fn unknown_distributions_and_fields_are_rejected() {
        assert!(
            parse("d = { dist = \"cauchy\" }")
                .unwrap_err()
                .contains("cauchy")
        );
        assert!(
            parse("d = { dist = \"uniform\", min = 1, max = 2, mode = 3 }")
                .unwrap_err()
                .contains("mode")
        );
    }

    #[test]
    fn invalid_parameters_name_the_field() {
        let mut c = Checker::new("f.toml");
        Dist::validate(
            &DistSpec::Uniform { min: 5.0, max: 1.0 },
            "link.latency_ms",
            &mut c,
        );
        Dist::validate(
            &DistSpec::Lognormal {
                median: 0.0,
                sigma: 1.0,
            },
            "x",
            &mut c,
        );
        let text = c.errors.to_string();
        assert!(
            text.contains("f.toml: link.latency_ms.max = 1: must be >= min (5)"),
            "{text}"
        );
        assert!(text.contains("x.median = 0: must be > 0"), "{text}");
    }

    #[test]
    fn samples_are_never_negative() {
        let mut c = Checker::new("f");
        let d = Dist::validate(
            &DistSpec::Normal {
                mean: 1.0,
                sigma: 5.0,
            },
            "k",
            &mut c,
        );
        let mut rng = Pcg32::new(1, 1);
        assert!((0..10_000).all(|_| d.sample(&mut rng) >= 0.0));
    }
}
