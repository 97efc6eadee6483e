//! A run, planned: which devices each shard owns, when each device powers on, when the run
//! ends. Everything here depends only on the scenario and the seed.

use std::ops::Range;
use std::sync::Arc;

use fleet_core::scenario::{Clock, RampMode};
use fleet_core::slice::Slice;
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
    /// The part of the fleet this process simulates (`--shard K/N`; the whole fleet by default).
    pub slice: Slice,
    /// The device ids this process owns: its slice of each cohort, in id order.
    pub owned: Owned,
    /// Power-on times of the owned devices, by ordinal (see `Owned`).
    start_times: Arc<[SimTime]>,
    /// The orchestrator of the scenario's rollouts (None without rollouts).
    pub rollouts: Option<Arc<crate::rollout::RolloutHub>>,
    /// Firmware versions of the fleet (`Fleet::version_labels`) and each cohort's first index.
    pub version_labels: Arc<[String]>,
    pub version_base: Arc<[u32]>,
}

impl RunPlan {
    pub fn new(fleet: Arc<Fleet>, shards: u16, epoch_ms: u64) -> RunPlan {
        RunPlan::sliced(fleet, shards, epoch_ms, Slice::WHOLE)
    }

    /// The plan of one process's slice of the fleet: the same devices, seeds and power-on
    /// times as in the whole fleet, only fewer of them.
    pub fn sliced(fleet: Arc<Fleet>, shards: u16, epoch_ms: u64, slice: Slice) -> RunPlan {
        let s = &fleet.settings;
        let total = fleet.total_devices();
        let owned = Owned::new(&fleet, slice);
        // The ramp is the whole fleet's (a device powers on when it would in one process).
        let all = ramp_times(RunSeed(s.seed), s.ramp_mode, s.ramp_per_second, total);
        let start_times = owned
            .ranges()
            .iter()
            .flat_map(|r| all[r.start as usize..r.end as usize].iter().copied())
            .collect();
        let shards = shards.max(1);
        let rollouts =
            crate::rollout::RolloutHub::new(&fleet, RunSeed(s.seed), shards, false, &owned)
                .map(Arc::new);
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
            slice,
            owned,
            start_times,
            fleet,
        }
    }

    /// Lets rollouts be started while the run goes (the control API, the TUI): the
    /// orchestrator keeps ticking even with no rollout. Wall clock only.
    pub fn with_live_rollouts(mut self) -> RunPlan {
        if self.clock == Clock::Wall {
            self.rollouts = crate::rollout::RolloutHub::new(
                &self.fleet,
                self.seed,
                self.shards,
                true,
                &self.owned,
            )
            .map(Arc::new);
        }
        self
    }

    /// The device ids shard `k` owns: every `shards`-th of the owned devices, from the `k`-th.
    /// Interleaved, not contiguous, so every shard gets its share of every cohort: cohorts
    /// differ in how much work a device makes, and contiguous ranges left one core idle while
    /// the other finished. Stable for a given shard count, and the fleet's behaviour does not
    /// depend on it.
    pub fn shard_ids(&self, k: u16) -> impl ExactSizeIterator<Item = u32> + '_ {
        let start = u32::from(k).min(self.owned.len());
        (start..self.owned.len())
            .step_by(usize::from(self.shards))
            .map(|o| self.owned.id_at(o))
    }

    /// The local index of device `id` in shard `k`, if that shard owns it.
    pub fn local_index(&self, k: u16, id: u32) -> Option<u32> {
        let o = self.owned.ordinal(id)?;
        let n = u32::from(self.shards);
        (o % n == u32::from(k)).then_some(o / n)
    }

    /// The shard and local index of device `id`, if this process owns it.
    pub fn locate(&self, id: u32) -> Option<(u16, u32)> {
        let o = self.owned.ordinal(id)?;
        let n = u32::from(self.shards);
        Some(((o % n) as u16, o / n))
    }

    /// How many devices shard `k` owns.
    pub fn shard_len(&self, k: u16) -> usize {
        self.shard_ids(k).len()
    }

    pub fn start_time(&self, id: DeviceId) -> SimTime {
        self.owned
            .ordinal(id.0)
            .and_then(|o| self.start_times.get(o as usize))
            .copied()
            .unwrap_or(SimTime::ZERO)
    }

    /// Devices this process simulates.
    pub fn total_devices(&self) -> u32 {
        self.owned.len()
    }
}

/// The device ids a process owns, as ranges in id order (one per cohort, empty ones left out),
/// numbered by "ordinal" 0..len across the ranges.
#[derive(Clone, Debug)]
pub struct Owned {
    ranges: Arc<[Range<u32>]>,
    /// Ordinal of each range's first id.
    firsts: Arc<[u32]>,
    len: u32,
}

impl Owned {
    pub fn new(fleet: &Fleet, slice: Slice) -> Owned {
        let ranges: Vec<Range<u32>> = fleet
            .cohorts
            .iter()
            .map(|c| c.in_slice(slice))
            .filter(|r| !r.is_empty())
            .collect();
        let mut firsts = Vec::with_capacity(ranges.len());
        let mut len = 0u32;
        for r in &ranges {
            firsts.push(len);
            len += r.end - r.start;
        }
        Owned {
            ranges: ranges.into(),
            firsts: firsts.into(),
            len,
        }
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn ranges(&self) -> &[Range<u32>] {
        &self.ranges
    }

    pub fn contains(&self, id: u32) -> bool {
        self.ordinal(id).is_some()
    }

    /// The position of device `id` among the owned devices.
    pub fn ordinal(&self, id: u32) -> Option<u32> {
        let i = self
            .ranges
            .partition_point(|r| r.start <= id)
            .checked_sub(1)?;
        let r = &self.ranges[i];
        (id < r.end).then(|| self.firsts[i] + (id - r.start))
    }

    /// The device at ordinal `o` (`o < len`).
    pub fn id_at(&self, o: u32) -> u32 {
        let i = self.firsts.partition_point(|&f| f <= o).saturating_sub(1);
        match self.ranges.get(i) {
            Some(r) => r.start + (o - self.firsts[i]),
            None => o,
        }
    }

    /// The lowest and highest owned ids (for messages), if any.
    pub fn bounds(&self) -> Option<(u32, u32)> {
        Some((self.ranges.first()?.start, self.ranges.last()?.end - 1))
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
