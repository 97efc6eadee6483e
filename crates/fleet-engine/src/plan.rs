//! A run, planned: which devices each shard owns, when each device powers on, when the run
//! ends. Everything here depends only on the scenario and the seed.

use std::ops::Range;
use std::sync::Arc;

use fleet_core::scenario::{Clock, RampMode};
use fleet_core::{DeviceId, Fleet, RunSeed, SimDuration, SimTime};
use rand_distr_free::exp1;

/// Salt of the fleet-wide ramp-up generator.
const RAMP_SALT: u64 = 0x72616d70; // "ramp"

#[derive(Clone, Debug)]
pub struct RunPlan {
    pub fleet: Arc<Fleet>,
    pub seed: RunSeed,
    pub clock: Clock,
    pub shards: u16,
    /// Reports stop at this simulated time.
    pub end: SimTime,
    /// After `end`, wait at most this long for outstanding acknowledgements.
    pub drain: SimDuration,
    /// Wall-clock ms since the Unix epoch at SimTime 0.
    pub epoch_ms: u64,
    /// Device ids this process simulates (all of them; a slice once processes share a fleet).
    pub devices: Range<u32>,
    /// Power-on times, indexed by device id - devices.start.
    start_times: Arc<[SimTime]>,
    /// The orchestrator of the scenario's rollouts (None without rollouts).
    pub rollouts: Option<Arc<crate::rollout::RolloutHub>>,
    /// Firmware versions of the fleet (`Fleet::version_labels`) and each cohort's first index.
    pub version_labels: Arc<[String]>,
    pub version_base: Arc<[u32]>,
}

impl RunPlan {
    pub fn new(fleet: Arc<Fleet>, shards: u16, epoch_ms: u64) -> RunPlan {
        let s = &fleet.settings;
        let total = fleet.total_devices();
        let start_times = ramp_times(RunSeed(s.seed), s.ramp_mode, s.ramp_per_second, total).into();
        let shards = shards.max(1);
        let rollouts =
            crate::rollout::RolloutHub::new(&fleet, RunSeed(s.seed), shards, false).map(Arc::new);
        let (labels, base) = fleet.version_labels();
        RunPlan {
            rollouts,
            version_labels: labels.into(),
            version_base: base.into(),
            seed: RunSeed(s.seed),
            clock: s.clock,
            shards,
            end: SimTime::ZERO + s.duration,
            drain: s.drain,
            epoch_ms,
            devices: 0..total,
            start_times,
            fleet,
        }
    }

    /// Lets rollouts be started while the run goes (the control API, the TUI): the
    /// orchestrator keeps ticking even with no rollout. Wall clock only.
    pub fn with_live_rollouts(mut self) -> RunPlan {
        if self.clock == Clock::Wall {
            self.rollouts =
                crate::rollout::RolloutHub::new(&self.fleet, self.seed, self.shards, true)
                    .map(Arc::new);
        }
        self
    }

    /// The device ids shard `k` owns: every `shards`-th id from `devices.start + k`. Interleaved,
    /// not contiguous, so every shard gets its share of every cohort: cohorts differ in how much
    /// work a device makes, and contiguous ranges left one core idle while the other finished.
    /// Stable for a given shard count, and the fleet's behaviour does not depend on it.
    pub fn shard_ids(&self, k: u16) -> std::iter::StepBy<Range<u32>> {
        let start = self
            .devices
            .start
            .saturating_add(u32::from(k))
            .min(self.devices.end);
        (start..self.devices.end).step_by(usize::from(self.shards))
    }

    /// The local index of device `id` in shard `k`, if that shard owns it.
    pub fn local_index(&self, k: u16, id: u32) -> Option<u32> {
        let rel = id.checked_sub(self.devices.start)?;
        let n = u32::from(self.shards);
        (id < self.devices.end && rel % n == u32::from(k)).then_some(rel / n)
    }

    /// How many devices shard `k` owns.
    pub fn shard_len(&self, k: u16) -> usize {
        self.shard_ids(k).len()
    }

    pub fn start_time(&self, id: DeviceId) -> SimTime {
        self.start_times
            .get((id.0 - self.devices.start) as usize)
            .copied()
            .unwrap_or(SimTime::ZERO)
    }

    pub fn total_devices(&self) -> u32 {
        self.devices.end - self.devices.start
    }
}

/// Power-on times for every device, in id order.
fn ramp_times(seed: RunSeed, mode: RampMode, per_second: f64, total: u32) -> Vec<SimTime> {
    let step_us = 1e6 / per_second.max(1e-9);
    match mode {
        RampMode::All => vec![SimTime::ZERO; total as usize],
        RampMode::Rate => (0..total)
            .map(|i| SimTime((f64::from(i) * step_us) as u64))
            .collect(),
        RampMode::Poisson => {
            let mut rng = seed.fleet_rng(RAMP_SALT);
            let mut t = 0.0;
            (0..total)
                .map(|_| {
                    t += exp1(&mut rng) * step_us;
                    SimTime(t as u64)
                })
                .collect()
        }
    }
}

mod rand_distr_free {
    use rand::RngExt;
    use rand_pcg::Pcg32;

    /// A standard exponential draw by inversion (portable, no library algorithm to change).
    pub fn exp1(rng: &mut Pcg32) -> f64 {
        let u: f64 = rng.random();
        -(1.0 - u).ln()
    }
}
