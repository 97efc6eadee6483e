//! Rollouts fleetsim runs itself (`[[rollouts]]` in a scenario, or `fleetsim rollout`): which
//! devices, in which waves or at which rate, and when to abort. The policy here is pure: the
//! engine's orchestrator feeds it what the devices reported and carries out its decisions.

use serde::Deserialize;

use crate::error::Checker;
use crate::profile::{duration, positive_duration};
use crate::time::{SimDuration, SimTime};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRaw {
    pub name: String,
    /// When the rollout starts, from the start of the run.
    #[serde(default = "zero")]
    pub at: String,
    pub target_version: String,
    /// Cohorts it targets (default: every cohort whose profile has `[ota]` and whose firmware
    /// model has the target version).
    #[serde(default)]
    pub cohorts: Vec<String>,
    /// The share of those devices it targets.
    #[serde(default = "one")]
    pub fraction: f64,
    /// A device that has not reported success or failure this long after it was notified
    /// counts as timed out.
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// How often the orchestrator looks at the reports and notifies the next devices.
    #[serde(default = "default_evaluate")]
    pub evaluate_every: String,
    /// Cumulative percentages of the targets, one per wave (`[1, 10, 50, 100]`).
    pub waves: Option<Vec<f64>>,
    /// Gated waves: the next wave starts this long after every device of the previous one
    /// finished (succeeded, failed, rejected or timed out).
    pub wave_soak: Option<String>,
    /// Timed waves: wave k starts at `at + k * wave_interval`, finished or not.
    pub wave_interval: Option<String>,
    /// Notification rate that grows, like AWS IoT `jobExecutionsRolloutConfig.exponentialRate`.
    pub rate: Option<RateRaw>,
    /// Abort criteria, like AWS IoT `abortConfig`.
    pub abort: Option<AbortRaw>,
    /// The image on your artifact server (`http://`): on the wall clock every device GETs it
    /// (a real thundering herd, bounded by `[ota] max_downloads`); ignored in virtual time.
    pub url: Option<String>,
    /// Its size in bytes and SHA-256 (lowercase hex), checked by the devices when given.
    pub size: Option<u64>,
    pub sha256: Option<String>,
}

fn zero() -> String {
    "0s".into()
}
fn one() -> f64 {
    1.0
}
fn default_timeout() -> String {
    "1h".into()
}
fn default_evaluate() -> String {
    "1m".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateRaw {
    pub base_per_minute: f64,
    #[serde(default = "two")]
    pub increment_factor: f64,
    pub max_per_minute: f64,
    /// Raise the rate after this many more devices were notified...
    pub notified_to_increase: Option<u32>,
    /// ... or after this many more succeeded.
    pub succeeded_to_increase: Option<u32>,
}

fn two() -> f64 {
    2.0
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortRaw {
    /// Abort when this percentage of the executed devices failed...
    pub failure_percent: f64,
    /// ... once at least this many have executed (reached a final state).
    #[serde(default = "min_executed")]
    pub min_executed: u32,
    /// Which outcomes count as failures (failed, rejected, timed_out).
    #[serde(default = "failure_types")]
    pub failure_types: Vec<String>,
}

impl AbortRaw {
    /// Abort at `failure_percent`, with the defaults of a scenario file for the rest.
    pub fn new(failure_percent: f64) -> AbortRaw {
        AbortRaw {
            failure_percent,
            min_executed: min_executed(),
            failure_types: failure_types(),
        }
    }
}

fn min_executed() -> u32 {
    10
}
fn failure_types() -> Vec<String> {
    vec!["failed".into(), "rejected".into(), "timed_out".into()]
}

/// How devices are notified.
#[derive(Clone, Debug, PartialEq)]
pub enum Pace {
    /// Cumulative fractions of the targets (the last is 1.0 unless the user stops short).
    Waves { ends: Vec<f64>, gate: WaveGate },
    Rate {
        base_per_minute: f64,
        increment_factor: f64,
        max_per_minute: f64,
        notified_to_increase: Option<u32>,
        succeeded_to_increase: Option<u32>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WaveGate {
    /// The next wave waits for the previous one to finish, then this long.
    Soak(SimDuration),
    /// Waves start on a fixed schedule.
    Interval(SimDuration),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AbortSpec {
    pub failure_percent: f64,
    pub min_executed: u32,
    pub count_failed: bool,
    pub count_rejected: bool,
    pub count_timed_out: bool,
}

impl AbortSpec {
    /// Whether these counts meet the criteria.
    pub fn crossed(&self, t: &Tally) -> bool {
        let executed = t.executed();
        let failures = u64::from(self.count_failed) * t.failed
            + u64::from(self.count_rejected) * t.rejected
            + u64::from(self.count_timed_out) * t.timed_out;
        executed >= u64::from(self.min_executed)
            && executed > 0
            && failures as f64 * 100.0 >= self.failure_percent * executed as f64
    }
    pub fn describe(&self) -> String {
        let mut types = Vec::new();
        if self.count_failed {
            types.push("failed");
        }
        if self.count_rejected {
            types.push("rejected");
        }
        if self.count_timed_out {
            types.push("timed_out");
        }
        format!(
            "{}% of at least {} executed ({})",
            self.failure_percent,
            self.min_executed,
            types.join(", ")
        )
    }
}

/// A rollout, validated. Cohorts are resolved to ids when the fleet is loaded.
#[derive(Clone, Debug)]
pub struct RolloutSpec {
    pub name: String,
    pub at: SimDuration,
    pub target_version: String,
    pub cohorts: Vec<String>,
    pub fraction: f64,
    pub timeout: SimDuration,
    pub evaluate_every: SimDuration,
    pub pace: Pace,
    pub abort: Option<AbortSpec>,
    pub url: Option<String>,
    pub size: Option<u64>,
    pub sha256: Option<String>,
}

impl RolloutRaw {
    pub fn validate(&self, c: &mut Checker, key: &str) -> RolloutSpec {
        let k = |f: &str| format!("{key}.{f}");
        c.check(
            !self.name.is_empty(),
            &k("name"),
            "\"\"",
            "must not be empty",
        );
        c.check(
            !self.name.contains(['/', '+', '#']) && self.name.len() <= 64,
            &k("name"),
            format!("{:?}", self.name),
            "is the job id devices see: at most 64 characters, no / + #",
        );
        let at = duration(c, &k("at"), &self.at);
        c.check(
            self.fraction > 0.0 && self.fraction <= 1.0,
            &k("fraction"),
            self.fraction,
            "must be in (0, 1]",
        );
        let timeout = positive_duration(c, &k("timeout"), &self.timeout);
        let evaluate_every = positive_duration(c, &k("evaluate_every"), &self.evaluate_every);
        c.check(
            evaluate_every >= SimDuration::from_secs(1),
            &k("evaluate_every"),
            format!("{:?}", self.evaluate_every),
            "must be at least 1s",
        );
        let pace = match (&self.waves, &self.rate) {
            (Some(w), Some(_)) => {
                c.fail(
                    &k("rate"),
                    format!("a [rate] table next to waves = {w:?}"),
                    "give waves or rate, not both",
                );
                Pace::Waves {
                    ends: vec![1.0],
                    gate: WaveGate::Soak(SimDuration::ZERO),
                }
            }
            (None, Some(r)) => {
                let ok = |v: f64| v.is_finite() && v > 0.0;
                c.check(
                    ok(r.base_per_minute),
                    &k("rate.base_per_minute"),
                    r.base_per_minute,
                    "must be > 0",
                );
                c.check(
                    ok(r.max_per_minute) && r.max_per_minute >= r.base_per_minute,
                    &k("rate.max_per_minute"),
                    r.max_per_minute,
                    "must be >= base_per_minute",
                );
                c.check(
                    (1.1..=5.0).contains(&r.increment_factor),
                    &k("rate.increment_factor"),
                    r.increment_factor,
                    "must be between 1.1 and 5 (as in AWS IoT)",
                );
                if r.notified_to_increase.is_some() && r.succeeded_to_increase.is_some() {
                    c.fail_key(
                        &k("rate.succeeded_to_increase"),
                        "give notified_to_increase or succeeded_to_increase, not both",
                    );
                }
                if self.wave_soak.is_some() || self.wave_interval.is_some() {
                    c.fail_key(&k("rate"), "wave_soak and wave_interval apply to waves");
                }
                Pace::Rate {
                    base_per_minute: r.base_per_minute,
                    increment_factor: r.increment_factor,
                    max_per_minute: r.max_per_minute,
                    notified_to_increase: r.notified_to_increase,
                    succeeded_to_increase: r.succeeded_to_increase,
                }
            }
            (waves, None) => {
                let ends: Vec<f64> = waves
                    .clone()
                    .unwrap_or_else(|| vec![100.0])
                    .iter()
                    .map(|p| p / 100.0)
                    .collect();
                let increasing = ends.windows(2).all(|w| w[1] > w[0]);
                let ok = !ends.is_empty()
                    && increasing
                    && ends.iter().all(|e| e.is_finite() && *e > 0.0 && *e <= 1.0);
                c.check(
                    ok,
                    &k("waves"),
                    format!("{:?}", waves.clone().unwrap_or_default()),
                    "must be increasing cumulative percentages in (0, 100], like [1, 10, 50, 100]",
                );
                let gate = match (&self.wave_soak, &self.wave_interval) {
                    (Some(_), Some(_)) => {
                        c.fail_key(
                            &k("wave_interval"),
                            "give wave_soak or wave_interval, not both",
                        );
                        WaveGate::Soak(SimDuration::ZERO)
                    }
                    (_, Some(i)) => {
                        WaveGate::Interval(positive_duration(c, &k("wave_interval"), i))
                    }
                    (Some(s), None) => WaveGate::Soak(duration(c, &k("wave_soak"), s)),
                    (None, None) => WaveGate::Soak(SimDuration::ZERO),
                };
                Pace::Waves { ends, gate }
            }
        };
        let abort = self.abort.as_ref().map(|a| {
            c.check(
                a.failure_percent > 0.0 && a.failure_percent <= 100.0,
                &k("abort.failure_percent"),
                a.failure_percent,
                "must be in (0, 100]",
            );
            let mut spec = AbortSpec {
                failure_percent: a.failure_percent,
                min_executed: a.min_executed,
                count_failed: false,
                count_rejected: false,
                count_timed_out: false,
            };
            for (i, t) in a.failure_types.iter().enumerate() {
                match t.as_str() {
                    "failed" => spec.count_failed = true,
                    "rejected" => spec.count_rejected = true,
                    "timed_out" => spec.count_timed_out = true,
                    other => c.fail(
                        &k(&format!("abort.failure_types[{i}]")),
                        format!("{other:?}"),
                        "must be failed, rejected or timed_out",
                    ),
                }
            }
            if a.failure_types.is_empty() {
                c.fail(
                    &k("abort.failure_types"),
                    "[]",
                    "must name at least one outcome",
                );
            }
            spec
        });
        if let Some(u) = &self.url
            && !u.starts_with("http://")
        {
            c.fail(
                &k("url"),
                format!("{u:?}"),
                "must be an http:// URL (https:// is not supported yet)",
            );
        }
        if let Some(h) = &self.sha256 {
            c.check(
                h.len() == 64 && h.chars().all(|ch| ch.is_ascii_hexdigit()),
                &k("sha256"),
                format!("{h:?}"),
                "must be 64 hex digits",
            );
        }
        if self.url.is_none() && (self.size.is_some() || self.sha256.is_some()) {
            c.fail_key(
                &k("size"),
                "size and sha256 describe the image at url: give url too",
            );
        }
        RolloutSpec {
            url: self.url.clone(),
            size: self.size,
            sha256: self.sha256.as_ref().map(|h| h.to_ascii_lowercase()),
            name: self.name.clone(),
            at,
            target_version: self.target_version.clone(),
            cohorts: self.cohorts.clone(),
            fraction: self.fraction,
            timeout,
            evaluate_every,
            pace,
            abort,
        }
    }
}

/// Outcomes counted so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub rejected: u64,
    pub timed_out: u64,
}

impl Tally {
    pub fn executed(&self) -> u64 {
        self.succeeded + self.failed + self.rejected + self.timed_out
    }
}

/// The policy's state between ticks.
#[derive(Clone, Debug)]
pub struct Policy {
    total: u32,
    /// Devices notified so far (ranks `0..notified`).
    pub notified: u32,
    wave: usize,
    /// Gated waves: when the current wave was seen finished.
    wave_done_at: Option<SimTime>,
    /// Start time of each wave so far.
    pub wave_starts: Vec<SimTime>,
    rate: f64,
    carry: f64,
    mark_notified: u32,
    mark_succeeded: u64,
}

impl Policy {
    pub fn new(spec: &RolloutSpec, total: u32) -> Policy {
        let rate = match spec.pace {
            Pace::Rate {
                base_per_minute, ..
            } => base_per_minute,
            Pace::Waves { .. } => 0.0,
        };
        Policy {
            total,
            notified: 0,
            wave: 0,
            wave_done_at: None,
            wave_starts: Vec::new(),
            rate,
            carry: 0.0,
            mark_notified: 0,
            mark_succeeded: 0,
        }
    }

    /// The end rank of wave `k`.
    pub fn wave_end(&self, spec: &RolloutSpec, k: usize) -> u32 {
        match &spec.pace {
            Pace::Waves { ends, .. } => ends
                .get(k)
                .map(|e| ((f64::from(self.total) * e).ceil() as u32).min(self.total))
                .unwrap_or(self.total),
            Pace::Rate { .. } => self.total,
        }
    }

    /// One evaluation at `now` (the rollout started at `start`): how many devices should have
    /// been notified by now. `tally` is what the devices reported; `executed` of it covers
    /// every device that finished.
    pub fn tick(&mut self, spec: &RolloutSpec, start: SimTime, now: SimTime, tally: &Tally) -> u32 {
        match &spec.pace {
            Pace::Waves { ends, gate } => {
                if self.wave_starts.is_empty() {
                    self.wave_starts.push(now);
                    self.notified = self.wave_end(spec, 0);
                    return self.notified;
                }
                while self.wave + 1 < ends.len() {
                    let open = match gate {
                        WaveGate::Interval(i) => now >= start + i.mul_f64((self.wave + 1) as f64),
                        WaveGate::Soak(soak) => {
                            if tally.executed() >= u64::from(self.notified) {
                                let done = *self.wave_done_at.get_or_insert(now);
                                now >= done + *soak
                            } else {
                                false
                            }
                        }
                    };
                    if !open {
                        break;
                    }
                    self.wave += 1;
                    self.wave_done_at = None;
                    self.wave_starts.push(now);
                    self.notified = self.wave_end(spec, self.wave);
                }
                self.notified
            }
            Pace::Rate {
                increment_factor,
                max_per_minute,
                notified_to_increase,
                succeeded_to_increase,
                ..
            } => {
                if let Some(n) = notified_to_increase
                    && self.notified - self.mark_notified >= *n
                {
                    self.rate = (self.rate * increment_factor).min(*max_per_minute);
                    self.mark_notified = self.notified;
                }
                if let Some(n) = succeeded_to_increase
                    && tally.succeeded - self.mark_succeeded >= u64::from(*n)
                {
                    self.rate = (self.rate * increment_factor).min(*max_per_minute);
                    self.mark_succeeded = tally.succeeded;
                }
                let minutes = spec.evaluate_every.as_secs_f64() / 60.0;
                let allowance = self.rate * minutes + self.carry;
                let whole = allowance.floor();
                self.carry = allowance - whole;
                self.notified =
                    (u64::from(self.notified) + whole as u64).min(u64::from(self.total)) as u32;
                if self.wave_starts.is_empty() {
                    self.wave_starts.push(now);
                }
                self.notified
            }
        }
    }

    /// How many targets the rollout notifies in the end: the last wave's end (waves may stop
    /// short of 100 %), or all of them.
    pub fn final_target(&self, spec: &RolloutSpec) -> u32 {
        match &spec.pace {
            Pace::Waves { ends, .. } => self.wave_end(spec, ends.len().saturating_sub(1)),
            Pace::Rate { .. } => self.total,
        }
    }

    /// The wave a rank belongs to (rate rollouts: one wave).
    pub fn wave_of(&self, spec: &RolloutSpec, rank: u32) -> usize {
        match &spec.pace {
            Pace::Waves { ends, .. } => (0..ends.len())
                .find(|k| rank < self.wave_end(spec, *k))
                .unwrap_or(ends.len().saturating_sub(1)),
            Pace::Rate { .. } => 0,
        }
    }

    pub fn current_rate(&self) -> f64 {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml_text: &str) -> RolloutSpec {
        let raw: RolloutRaw = toml::from_str(toml_text).unwrap();
        let mut c = Checker::new("t.toml");
        let s = raw.validate(&mut c, "rollouts[0]");
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        s
    }

    #[test]
    fn gated_waves_wait_for_the_previous_wave_and_its_soak() {
        let s = spec(
            "name='r'\ntarget_version='2'\nwaves=[10,50,100]\nwave_soak='10m'\nevaluate_every='1m'",
        );
        let mut p = Policy::new(&s, 1000);
        let t0 = SimTime::ZERO;
        let min = |m: u64| t0 + SimDuration::from_secs(60 * m);
        assert_eq!(p.tick(&s, t0, t0, &Tally::default()), 100);
        let mut t = Tally {
            succeeded: 99,
            ..Tally::default()
        };
        assert_eq!(p.tick(&s, t0, min(5), &t), 100, "one device still running");
        t.timed_out = 1;
        assert_eq!(p.tick(&s, t0, min(6), &t), 100, "soak starts");
        assert_eq!(p.tick(&s, t0, min(15), &t), 100);
        assert_eq!(p.tick(&s, t0, min(16), &t), 500, "soak over");
        assert_eq!(p.wave_starts.len(), 2);
        assert_eq!(p.wave_of(&s, 99), 0);
        assert_eq!(p.wave_of(&s, 100), 1);
        assert_eq!(p.wave_of(&s, 999), 2);
    }

    #[test]
    fn timed_waves_start_on_their_schedule() {
        let s = spec("name='r'\ntarget_version='2'\nwaves=[1,100]\nwave_interval='1h'");
        let mut p = Policy::new(&s, 200);
        let t0 = SimTime::ZERO + SimDuration::from_secs(10);
        assert_eq!(p.tick(&s, t0, t0, &Tally::default()), 2);
        assert_eq!(
            p.tick(&s, t0, t0 + SimDuration::from_secs(3599), &Tally::default()),
            2
        );
        assert_eq!(
            p.tick(&s, t0, t0 + SimDuration::from_secs(3600), &Tally::default()),
            200
        );
    }

    #[test]
    fn exponential_rate_grows_by_its_factor_up_to_the_maximum() {
        let s = spec(
            "name='r'\ntarget_version='2'\nevaluate_every='1m'\n[rate]\nbase_per_minute=10\nincrement_factor=2\nmax_per_minute=35\nnotified_to_increase=20",
        );
        let mut p = Policy::new(&s, 1000);
        let t0 = SimTime::ZERO;
        let counts: Vec<u32> = (0..6)
            .map(|m| {
                p.tick(
                    &s,
                    t0,
                    t0 + SimDuration::from_secs(60 * m),
                    &Tally::default(),
                )
            })
            .collect();
        assert_eq!(counts, vec![10, 20, 40, 75, 110, 145]);
        assert_eq!(p.current_rate(), 35.0);
    }

    #[test]
    fn abort_criteria_count_the_chosen_outcomes_over_a_minimum() {
        let s = spec(
            "name='r'\ntarget_version='2'\n[abort]\nfailure_percent=10\nmin_executed=20\nfailure_types=['failed']",
        );
        let a = s.abort.unwrap();
        let mut t = Tally {
            succeeded: 9,
            failed: 1,
            ..Tally::default()
        };
        assert!(!a.crossed(&t), "below the minimum executed");
        t.succeeded = 18;
        t.failed = 2;
        assert!(a.crossed(&t));
        t.failed = 1;
        t.rejected = 5;
        assert!(!a.crossed(&t), "rejections do not count here");
    }

    #[test]
    fn bad_rollouts_say_what_is_wrong() {
        let raw: RolloutRaw = toml::from_str(
            "name='a/b'\ntarget_version='2'\nwaves=[50,10]\nfraction=0\nurl='https://x/fw'\nsha256='zz'\n[abort]\nfailure_percent=0\nfailure_types=['lost']",
        )
        .unwrap();
        let mut c = Checker::new("s.toml");
        raw.validate(&mut c, "rollouts[0]");
        let text = c.errors.to_string();
        for needle in [
            "rollouts[0].name",
            "rollouts[0].waves",
            "rollouts[0].fraction",
            "rollouts[0].abort.failure_percent",
            "rollouts[0].abort.failure_types[0]",
            "rollouts[0].url = \"https://x/fw\": must be an http:// URL",
            "rollouts[0].sha256 = \"zz\": must be 64 hex digits",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
    }
}
