//! Notable events read off successive snapshots: reconnect storms, rollout waves, SLOs that
//! would fail if the run ended now, a generator that falls behind. Pure: snapshots in, event
//! lines out; the run feeds them to the live views and the log.

use fleet_core::DeviceState;
use fleet_core::slo::{SloBound, SloSpec};

use crate::live::LiveEventKind;
use crate::report::{OtaInputs, ProcessStats, RunInfo, RunReport};
use crate::snapshot::FleetSnapshot;
use crate::thousands;

/// A storm starts when this share of the online devices lose their session within one
/// snapshot interval (and at least `STORM_MIN_DEVICES` do).
pub const STORM_SHARE: f64 = 0.02;
pub const STORM_MIN_DEVICES: u64 = 10;
/// A storm is over when this share of the devices it took offline are back online.
pub const STORM_RECOVERED: f64 = 0.9;
/// SLOs are looked at this often (snapshots).
const SLO_EVERY: u32 = 5;

#[derive(Debug, Default)]
struct Storm {
    started_s: f64,
    online_before: u64,
    lowest_online: u64,
    peak_connects_per_s: f64,
}

/// Remembers what the previous snapshots showed.
#[derive(Debug, Default)]
pub struct Detector {
    prev_online: Option<u64>,
    storm: Option<Storm>,
    saturated: bool,
    /// (name, state, wave) of each rollout last time.
    rollouts: Vec<(String, String, u32)>,
    /// SLOs failing now (index into the specs).
    failing: Vec<bool>,
    since_slo: u32,
}

impl Detector {
    pub fn new() -> Detector {
        Detector::default()
    }

    /// What `snap` shows that the previous snapshots did not. `saturation_us`: the lag at which
    /// the generator counts as saturated. Only SLOs with a maximum (latencies, failure rates)
    /// are looked at live: a minimum (messages delivered, devices online) can only be judged
    /// at the end.
    pub fn observe(
        &mut self,
        snap: &FleetSnapshot,
        slos: &[SloSpec],
        saturation_us: u64,
    ) -> Vec<(LiveEventKind, String)> {
        let mut out = Vec::new();
        self.storms(snap, &mut out);
        self.rollouts(snap, &mut out);
        let lag = snap.lag_interval_p99_us;
        if !self.saturated && lag >= saturation_us {
            self.saturated = true;
            let worst = snap
                .shards
                .iter()
                .max_by(|a, b| a.max_lag_ms.total_cmp(&b.max_lag_ms))
                .map(|s| format!(" (worst: shard {}, {:.0} ms)", s.shard, s.max_lag_ms))
                .unwrap_or_default();
            out.push((
                LiveEventKind::Shard,
                format!(
                    "generator saturated: deadlines run {:.2} s late (p99 of the last second){worst}; fewer devices per process, or more shards",
                    lag as f64 / 1e6
                ),
            ));
        } else if self.saturated && lag < saturation_us / 2 {
            self.saturated = false;
            out.push((
                LiveEventKind::Shard,
                format!(
                    "generator keeps up again: p99 lag {:.0} ms",
                    lag as f64 / 1e3
                ),
            ));
        }
        self.since_slo += 1;
        if self.since_slo >= SLO_EVERY && !slos.is_empty() {
            self.since_slo = 0;
            self.slos(snap, slos, saturation_us, &mut out);
        }
        out
    }

    fn storms(&mut self, snap: &FleetSnapshot, out: &mut Vec<(LiveEventKind, String)>) {
        let online = snap.state(DeviceState::Online);
        let prev = self.prev_online.replace(online).unwrap_or(online);
        // The end of the run disconnects everyone: that is no storm.
        let ending = snap.run.duration_s > 0.0 && snap.sim_time_s >= snap.run.duration_s
            || snap.shards.iter().any(|s| s.done);
        if ending {
            return;
        }
        if let Some(s) = &mut self.storm {
            s.lowest_online = s.lowest_online.min(online);
            s.peak_connects_per_s = s.peak_connects_per_s.max(snap.connects_per_s);
            let lost = s.online_before.saturating_sub(s.lowest_online) as f64;
            if online as f64 >= s.online_before as f64 - lost * (1.0 - STORM_RECOVERED) {
                out.push((
                    LiveEventKind::Storm,
                    format!(
                        "reconnect storm over after {:.0} s: {} online again (lowest {}, peak {:.0} connects/s)",
                        snap.elapsed_s - s.started_s,
                        thousands(online),
                        thousands(s.lowest_online),
                        s.peak_connects_per_s
                    ),
                ));
                self.storm = None;
            }
            return;
        }
        let lost = prev.saturating_sub(online);
        let threshold = ((prev as f64 * STORM_SHARE).ceil() as u64).max(STORM_MIN_DEVICES);
        if lost >= threshold {
            out.push((
                LiveEventKind::Storm,
                format!(
                    "reconnect storm: {} devices lost their session in the last second ({} online of {}; {:.0} connects/s)",
                    thousands(lost),
                    thousands(online),
                    thousands(snap.devices_total),
                    snap.connects_per_s
                ),
            ));
            self.storm = Some(Storm {
                started_s: snap.elapsed_s,
                online_before: prev,
                lowest_online: online,
                peak_connects_per_s: snap.connects_per_s,
            });
        }
    }

    fn rollouts(&mut self, snap: &FleetSnapshot, out: &mut Vec<(LiveEventKind, String)>) {
        for r in &snap.rollouts {
            let before = self.rollouts.iter_mut().find(|(n, _, _)| *n == r.name);
            let (state, wave) = match &before {
                Some((_, s, w)) => (s.clone(), *w),
                None => ("not_started".to_string(), 0),
            };
            if r.state != state {
                let what = match r.state.as_str() {
                    "running" => format!(
                        "rollout {} of {} started: {} targets",
                        r.name,
                        r.target_version,
                        thousands(r.targets)
                    ),
                    "aborted" => format!(
                        "rollout {} ABORTED: {} failed, {} timed out of {} notified",
                        r.name,
                        thousands(r.reported.failed),
                        thousands(r.reported.timed_out),
                        thousands(r.reported.notified)
                    ),
                    "completed" => format!(
                        "rollout {} completed: {} succeeded, {} failed",
                        r.name,
                        thousands(r.reported.succeeded),
                        thousands(r.reported.failed)
                    ),
                    other => format!("rollout {}: {other}", r.name),
                };
                out.push((LiveEventKind::Rollout, what));
            }
            if r.wave > wave.max(1) && r.waves > 1 {
                out.push((
                    LiveEventKind::Rollout,
                    format!(
                        "rollout {}: wave {}/{} ({} notified so far)",
                        r.name,
                        r.wave,
                        r.waves,
                        thousands(r.reported.notified)
                    ),
                ));
            }
            match before {
                Some(b) => {
                    b.1 = r.state.clone();
                    b.2 = r.wave;
                }
                None => self
                    .rollouts
                    .push((r.name.clone(), r.state.clone(), r.wave)),
            }
        }
    }

    fn slos(
        &mut self,
        snap: &FleetSnapshot,
        slos: &[SloSpec],
        saturation_us: u64,
        out: &mut Vec<(LiveEventKind, String)>,
    ) {
        let report = RunReport::build(
            RunInfo {
                duration_s: snap.run.duration_s,
                elapsed_s: snap.elapsed_s,
                ..RunInfo::default()
            },
            snap,
            snap,
            ProcessStats::default(),
            saturation_us,
            slos,
            OtaInputs {
                version_labels: snap.version_labels.clone(),
                rollouts: Vec::new(),
            },
        );
        self.failing.resize(slos.len(), false);
        for (i, (spec, r)) in slos.iter().zip(&report.slo).enumerate() {
            if !matches!(spec.bound, SloBound::Max(_)) {
                continue;
            }
            let Some(v) = r.value else { continue };
            let failing = !r.ok;
            if failing != self.failing[i] {
                self.failing[i] = failing;
                let msg = if failing {
                    format!(
                        "SLO {:?} breached: {} = {v} (max {})",
                        spec.name,
                        spec.metric,
                        spec.limit()
                    )
                } else {
                    format!(
                        "SLO {:?} holds again: {} = {v} (max {})",
                        spec.name,
                        spec.metric,
                        spec.limit()
                    )
                };
                out.push((LiveEventKind::Slo, msg));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ota::RolloutLive;

    fn snap(online: u64, elapsed_s: f64) -> FleetSnapshot {
        let mut s = FleetSnapshot {
            devices_total: 1000,
            elapsed_s,
            ..FleetSnapshot::default()
        };
        s.states[DeviceState::Online.index()] = online;
        s
    }

    #[test]
    fn a_ramp_up_is_no_storm_but_losing_a_tenth_is_one_until_they_are_back() {
        let mut d = Detector::new();
        for (i, online) in [0, 200, 600, 1000].into_iter().enumerate() {
            assert!(d.observe(&snap(online, i as f64), &[], u64::MAX).is_empty());
        }
        let e = d.observe(&snap(900, 4.0), &[], u64::MAX);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, LiveEventKind::Storm);
        assert!(e[0].1.contains("100 devices lost"), "{}", e[0].1);
        assert!(d.observe(&snap(920, 5.0), &[], u64::MAX).is_empty());
        assert!(
            d.observe(&snap(985, 6.0), &[], u64::MAX).is_empty(),
            "85 of 100 back"
        );
        let e = d.observe(&snap(990, 9.0), &[], u64::MAX);
        assert!(e[0].1.contains("over after 5 s"), "{}", e[0].1);
    }

    #[test]
    fn the_end_of_the_run_is_no_storm() {
        let mut d = Detector::new();
        let mut s = snap(1000, 0.0);
        s.run.duration_s = 60.0;
        assert!(d.observe(&s, &[], u64::MAX).is_empty());
        let mut s = snap(0, 61.0);
        s.run.duration_s = 60.0;
        s.sim_time_s = 60.0;
        assert!(d.observe(&s, &[], u64::MAX).is_empty());
    }

    #[test]
    fn rollout_starts_waves_and_aborts_are_told_once() {
        let mut d = Detector::new();
        let mut s = snap(1000, 0.0);
        s.rollouts.push(RolloutLive {
            name: "r".into(),
            state: "not_started".into(),
            waves: 3,
            ..RolloutLive::default()
        });
        assert!(d.observe(&s, &[], u64::MAX).is_empty());
        s.rollouts[0].state = "running".into();
        s.rollouts[0].wave = 1;
        let e = d.observe(&s, &[], u64::MAX);
        assert_eq!(e.len(), 1, "{e:?}");
        s.rollouts[0].wave = 2;
        let e = d.observe(&s, &[], u64::MAX);
        assert!(e[0].1.contains("wave 2/3"), "{e:?}");
        s.rollouts[0].state = "aborted".into();
        let e = d.observe(&s, &[], u64::MAX);
        assert!(e[0].1.contains("ABORTED"), "{e:?}");
        assert!(d.observe(&s, &[], u64::MAX).is_empty());
    }

    #[test]
    fn saturation_is_told_when_it_starts_and_when_it_ends() {
        let mut d = Detector::new();
        let mut s = snap(10, 0.0);
        s.lag_interval_p99_us = 2_000_000;
        assert_eq!(d.observe(&s, &[], 1_000_000).len(), 1);
        assert!(d.observe(&s, &[], 1_000_000).is_empty());
        s.lag_interval_p99_us = 1_000;
        assert!(d.observe(&s, &[], 1_000_000)[0].1.contains("keeps up"));
    }

    #[test]
    fn a_latency_slo_breach_is_told_but_a_minimum_not_yet_reached_is_not() {
        let mut d = Detector::new();
        let slos = [
            SloSpec {
                name: "p99".into(),
                metric: "latency_us.publish_ack.p99".into(),
                bound: SloBound::Max(1000.0),
            },
            SloSpec {
                name: "delivered".into(),
                metric: "messages.published".into(),
                bound: SloBound::Min(1e9),
            },
        ];
        let mut s = snap(10, 0.0);
        for _ in 0..100 {
            s.histograms.publish_ack_us.record(5_000);
        }
        s.publish_ack = s.histograms.publish_ack_us.percentiles();
        let mut all = Vec::new();
        for _ in 0..SLO_EVERY {
            all.extend(d.observe(&s, &slos, u64::MAX));
        }
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(all[0].1.contains("\"p99\" breached"), "{all:?}");
    }
}
