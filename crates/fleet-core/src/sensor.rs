//! Sensor models: a value per report, drawn from the device's `values` stream.

use rand::RngExt;
use rand_distr::{Distribution, StandardNormal};
use rand_pcg::Pcg32;

use crate::profile::{SensorModel, SensorSpec};
use crate::time::{SimDuration, SimTime};

/// Per-device state of one sensor (40 bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct SensorState {
    /// random walk / counter: the current value.
    value: f64,
    /// sine: this device's phase as a fraction of the period.
    phase: f32,
    /// stuck-at fault: the value it is stuck at, and until when (0 = not stuck).
    stuck_value: f64,
    stuck_until: u64,
    /// counter: when it was last sampled.
    last_at: u64,
}

fn normal(rng: &mut Pcg32) -> f64 {
    StandardNormal.sample(rng)
}

impl SensorState {
    pub fn new(spec: &SensorSpec, rng: &mut Pcg32) -> SensorState {
        let (value, phase) = match spec.model {
            SensorModel::RandomWalk { start, .. } => (start, 0.0),
            SensorModel::Counter { start, .. } => (start, 0.0),
            SensorModel::Sine { phase: Some(p), .. } => (0.0, p as f32),
            SensorModel::Sine { phase: None, .. } => (0.0, rng.random::<f32>()),
            _ => (0.0, 0.0),
        };
        SensorState {
            value,
            phase,
            stuck_value: 0.0,
            stuck_until: 0,
            last_at: 0,
        }
    }

    /// The reading at `now`. Draws a fixed number of values per call for a given state, so a
    /// device's readings depend only on its seed and the report times.
    pub fn sample(&mut self, spec: &SensorSpec, now: SimTime, rng: &mut Pcg32) -> f64 {
        let clean = match spec.model {
            SensorModel::Constant { value } => value,
            SensorModel::Normal { mean, sigma } => mean + sigma * normal(rng),
            SensorModel::RandomWalk { step, min, max, .. } => {
                let mut v = self.value + step * normal(rng);
                // Reflect at the bounds so the walk does not stick to them.
                if v > max {
                    v = (2.0 * max - v).max(min);
                } else if v < min {
                    v = (2.0 * min - v).min(max);
                }
                self.value = v;
                v
            }
            SensorModel::Sine {
                mean,
                amplitude,
                period,
                noise,
                ..
            } => {
                let cycles = now.as_micros() as f64 / period.as_micros().max(1) as f64
                    + f64::from(self.phase);
                let n = if noise > 0.0 {
                    noise * normal(rng)
                } else {
                    0.0
                };
                mean + amplitude * (std::f64::consts::TAU * cycles).sin() + n
            }
            SensorModel::Counter {
                rate_per_s,
                rate_sigma,
                ..
            } => {
                let dt_s = SimDuration(now.as_micros().saturating_sub(self.last_at)).as_secs_f64();
                self.last_at = now.as_micros();
                let factor = if rate_sigma > 0.0 {
                    (1.0 + rate_sigma * normal(rng)).max(0.0)
                } else {
                    1.0
                };
                self.value += rate_per_s * dt_s * factor;
                self.value
            }
        };
        let f = &spec.faults;
        let mut v = clean + f.drift_per_hour * now.as_secs_f64() / 3600.0;
        if f.stuck_probability > 0.0 {
            if now.as_micros() < self.stuck_until {
                return self.stuck_value;
            }
            if rng.random::<f64>() < f.stuck_probability {
                self.stuck_until = (now + f.stuck_duration).as_micros();
                self.stuck_value = v;
                return v;
            }
        }
        if f.spike_probability > 0.0 && rng.random::<f64>() < f.spike_probability {
            let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
            v += sign * f.spike_magnitude;
        }
        v
    }

    /// The value now without a draw (noise and spikes left out), for observers: looking at a
    /// device must not change what it does next.
    pub fn peek(&self, spec: &SensorSpec, now: SimTime) -> f64 {
        if now.as_micros() < self.stuck_until {
            return self.stuck_value;
        }
        let clean = match spec.model {
            SensorModel::Constant { value } => value,
            SensorModel::Normal { mean, .. } => mean,
            SensorModel::RandomWalk { .. } | SensorModel::Counter { .. } => self.value,
            SensorModel::Sine {
                mean,
                amplitude,
                period,
                ..
            } => {
                let cycles = now.as_micros() as f64 / period.as_micros().max(1) as f64
                    + f64::from(self.phase);
                mean + amplitude * (std::f64::consts::TAU * cycles).sin()
            }
        };
        clean + spec.faults.drift_per_hour * now.as_secs_f64() / 3600.0
    }

    /// The counter's start time (a counter integrates from the device's start).
    pub fn start_at(&mut self, now: SimTime) {
        self.last_at = now.as_micros();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{SensorFaults, SensorSpec};

    fn spec(model: SensorModel) -> SensorSpec {
        SensorSpec {
            name: "x".into(),
            unit: None,
            decimals: 2,
            model,
            faults: SensorFaults::default(),
        }
    }

    #[test]
    fn a_random_walk_stays_within_its_bounds() {
        let s = spec(SensorModel::RandomWalk {
            start: 5.0,
            step: 3.0,
            min: 0.0,
            max: 10.0,
        });
        let mut rng = Pcg32::new(3, 3);
        let mut st = SensorState::new(&s, &mut rng);
        for i in 0..10_000 {
            let v = st.sample(&s, SimTime(i * 1_000_000), &mut rng);
            assert!((0.0..=10.0).contains(&v), "{v}");
        }
    }

    #[test]
    fn a_counter_never_decreases_and_follows_its_rate() {
        let s = spec(SensorModel::Counter {
            start: 100.0,
            rate_per_s: 2.0,
            rate_sigma: 0.5,
        });
        let mut rng = Pcg32::new(3, 3);
        let mut st = SensorState::new(&s, &mut rng);
        let mut last = 100.0;
        for i in 1..=1000u64 {
            let v = st.sample(&s, SimTime(i * 1_000_000), &mut rng);
            assert!(v >= last);
            last = v;
        }
        assert!((1_700.0..2_300.0).contains(&(last - 100.0)), "{last}");
    }

    #[test]
    fn a_stuck_sensor_repeats_its_value_until_the_fault_ends() {
        let mut s = spec(SensorModel::Normal {
            mean: 0.0,
            sigma: 1.0,
        });
        s.faults.stuck_probability = 1.0;
        s.faults.stuck_duration = SimDuration::from_secs(10);
        let mut rng = Pcg32::new(3, 3);
        let mut st = SensorState::new(&s, &mut rng);
        let first = st.sample(&s, SimTime(0), &mut rng);
        for t in 1..10 {
            assert_eq!(st.sample(&s, SimTime(t * 1_000_000), &mut rng), first);
        }
    }

    #[test]
    fn spikes_appear_at_their_rate() {
        let mut s = spec(SensorModel::Constant { value: 0.0 });
        s.faults.spike_probability = 0.1;
        s.faults.spike_magnitude = 50.0;
        let mut rng = Pcg32::new(3, 3);
        let mut st = SensorState::new(&s, &mut rng);
        let spikes = (0..10_000)
            .filter(|t| st.sample(&s, SimTime(*t), &mut rng).abs() > 40.0)
            .count();
        assert!((800..1200).contains(&spikes), "{spikes}");
    }
}
