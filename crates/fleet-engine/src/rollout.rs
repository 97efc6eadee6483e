//! The rollout orchestrator: fleetsim playing the backend that rolls a firmware version out.
//!
//! Every `tick` (the shortest `evaluate_every` of the scenario's rollouts) each shard hands
//! the orchestrator what its devices did since the last tick (reports with the time they reach
//! the backend, and the truth: outcomes as they happened), and gets back which devices to
//! notify next and which queued jobs to cancel. In virtual time the shards meet at every tick
//! (a barrier), so a decision depends only on what happened before it, never on how devices are
//! spread over shards: the same scenario and seed abort at the same instant with 1 or N shards.
//! On the wall clock shards hand in and pick up decisions without waiting.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};

use fleet_core::ota::{FailStage, JobDoc, Outcome};
use fleet_core::rollout::{Policy, RolloutSpec, Tally};
use fleet_core::{DeviceId, Fleet, RunSeed, SimDuration, SimTime};
use fleet_metrics::ota::{
    AbortReport, Overshoot, RolloutCounts, RolloutLive, RolloutReport, RolloutTruth, WaveReport,
};

/// The tick of a hub that starts with no rollout but may be given some (wall clock, control
/// API): a rollout started then is looked at within this long.
pub const LIVE_PERIOD: SimDuration = SimDuration::from_secs(10);

const TARGET_SALT: u64 = 0x726f_6c6c_0000_0000; // "roll"
const ORDER_SALT: u64 = 0x6f72_6465_7200_0000; // "order"

/// A rollout's targets in notification order, fixed by the scenario and the seed.
#[derive(Debug)]
pub struct RolloutPlan {
    pub spec: RolloutSpec,
    pub doc: Arc<JobDoc>,
    pub cohort_names: Vec<String>,
    /// Device ids by rank.
    pub order: Vec<u32>,
    /// Rank of each device id of the run (u32::MAX: not a target).
    rank_of: Vec<u32>,
}

impl RolloutPlan {
    /// The plans of the scenario's rollouts over the devices this process owns (a process
    /// shard orchestrates its own slice: the same waves, of its devices).
    pub fn build(fleet: &Fleet, seed: RunSeed, owned: &crate::plan::Owned) -> Vec<RolloutPlan> {
        fleet
            .settings
            .rollouts
            .iter()
            .zip(&fleet.rollouts)
            .enumerate()
            .map(|(i, (spec, targets))| RolloutPlan::one(fleet, seed, i, spec, targets, owned))
            .collect()
    }

    /// The plan of rollout number `i` of the run (its number salts the draws).
    pub fn one(
        fleet: &Fleet,
        seed: RunSeed,
        i: usize,
        spec: &RolloutSpec,
        targets: &fleet_core::load::RolloutTargets,
        owned: &crate::plan::Owned,
    ) -> RolloutPlan {
        let salt = TARGET_SALT ^ i as u64;
        let order_salt = ORDER_SALT ^ i as u64;
        let mut chosen: Vec<(f64, u32)> = Vec::new();
        for c in fleet
            .cohorts
            .iter()
            .filter(|c| targets.cohorts.contains(&c.id))
        {
            for id in c.first_device..c.first_device + c.count {
                let d = DeviceId(id);
                if !owned.contains(id) {
                    continue;
                }
                if spec.fraction >= 1.0 || seed.unit_draw(salt, d) < spec.fraction {
                    chosen.push((seed.unit_draw(order_salt, d), id));
                }
            }
        }
        chosen.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let order: Vec<u32> = chosen.into_iter().map(|(_, id)| id).collect();
        let mut rank_of = vec![u32::MAX; fleet.total_devices() as usize];
        for (r, id) in order.iter().enumerate() {
            rank_of[*id as usize] = r as u32;
        }
        RolloutPlan {
            doc: Arc::new(JobDoc {
                job_id: spec.name.clone(),
                version: spec.target_version.clone(),
                url: spec.url.clone(),
                size: spec.size,
                sha256: spec.sha256.clone(),
            }),
            cohort_names: targets
                .cohorts
                .iter()
                .map(|c| fleet.cohorts[usize::from(c.0)].name.clone())
                .collect(),
            spec: spec.clone(),
            order,
            rank_of,
        }
    }

    pub fn rank(&self, id: u32) -> Option<u32> {
        self.rank_of
            .get(id as usize)
            .copied()
            .filter(|r| *r != u32::MAX)
    }
}

/// What a device did that the orchestrator cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObsKind {
    /// Truth: the job started (download began).
    TruthStarted,
    /// Truth: how the job ended.
    Truth(OutcomeKey),
    /// A report reached the backend: None = the first IN_PROGRESS.
    Reported(Option<OutcomeKey>),
    /// Truth: the final report was lost on its way.
    ReportLost,
    /// Truth: the device dropped the job before starting it (the rollout aborted).
    TruthCancelled,
}

/// `Outcome` with an order (for sorting observations deterministically).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum OutcomeKey {
    Succeeded,
    Failed(u8),
    Rejected,
    Bricked,
}

impl From<Outcome> for OutcomeKey {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Succeeded => OutcomeKey::Succeeded,
            Outcome::Failed(s) => OutcomeKey::Failed(s.index() as u8),
            Outcome::Rejected(_) => OutcomeKey::Rejected,
            Outcome::Bricked => OutcomeKey::Bricked,
        }
    }
}

/// One observation: `at` is when it happened (truth) or reaches the backend (reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Obs {
    pub at: SimTime,
    pub device: u32,
    pub kind: ObsKind,
    pub rollout: u16,
}

/// What shards do after a tick.
#[derive(Debug, Default)]
pub struct Decision {
    pub at: SimTime,
    /// (rollout, ranks, window): notify these ranks, spread over the window.
    pub notify: Vec<(u16, Range<u32>, SimDuration)>,
    /// (rollout, device ids): drop the queued job.
    pub cancel: Vec<(u16, Vec<u32>)>,
    /// The next tick (NEVER: no rollout needs one).
    pub next_at: SimTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunState {
    NotStarted,
    Running,
    Completed,
    Aborted,
}

const STARTED: u8 = 1;
const TERMINAL: u8 = 2;
/// Notified, nothing heard yet when the rollout aborted: its job was cancelled.
const CANCELLED: u8 = 8;
const TRUTH_DONE: u8 = 4;

struct RolloutRun {
    plan: Arc<RolloutPlan>,
    policy: Policy,
    state: RunState,
    started_at: Option<SimTime>,
    next_eval: SimTime,
    finished_at: Option<SimTime>,
    notified: u32,
    notify_at: Vec<SimTime>,
    flags: Vec<u8>,
    tally: Tally,
    truth: RolloutTruth,
    truth_tally: Tally,
    pending: BinaryHeap<Reverse<Obs>>,
    timeouts: VecDeque<(SimTime, u32)>,
    crossed_at: Option<SimTime>,
    aborted_at: Option<SimTime>,
    overshoot: Overshoot,
    cancelled: u64,
    waves: Vec<RolloutCounts>,
}

impl RolloutRun {
    fn new(plan: Arc<RolloutPlan>) -> RolloutRun {
        let n = plan.order.len();
        RolloutRun {
            policy: Policy::new(&plan.spec, n as u32),
            state: RunState::NotStarted,
            started_at: None,
            next_eval: SimTime::ZERO + plan.spec.at,
            finished_at: None,
            notified: 0,
            notify_at: vec![SimTime::NEVER; n],
            flags: vec![0; n],
            tally: Tally::default(),
            truth: RolloutTruth::default(),
            truth_tally: Tally::default(),
            pending: BinaryHeap::new(),
            timeouts: VecDeque::new(),
            crossed_at: None,
            aborted_at: None,
            overshoot: Overshoot::default(),
            cancelled: 0,
            waves: Vec::new(),
            plan,
        }
    }

    /// Notified `rank` long enough ago with no final report: timed out.
    fn time_out(&mut self, rank: u32) {
        let r = rank as usize;
        if self.flags[r] & (TERMINAL | CANCELLED) == 0 {
            self.flags[r] |= TERMINAL;
            self.tally.timed_out += 1;
            let wave = self.policy.wave_of(&self.plan.spec, rank);
            if self.waves.len() <= wave {
                self.waves.resize(wave + 1, RolloutCounts::default());
            }
            self.waves[wave].timed_out += 1;
        }
    }

    /// What the orchestrator has seen so far.
    fn counts(&self) -> RolloutCounts {
        RolloutCounts {
            notified: u64::from(self.notified),
            started: self.tally.started,
            succeeded: self.tally.succeeded,
            failed: self.tally.failed,
            rejected: self.tally.rejected,
            timed_out: self.tally.timed_out,
        }
    }

    fn state_name(&self) -> &'static str {
        match self.state {
            RunState::NotStarted => "not_started",
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::Aborted => "aborted",
        }
    }

    fn active(&self) -> bool {
        match self.state {
            RunState::NotStarted | RunState::Running => true,
            RunState::Completed => false,
            RunState::Aborted => self.tally.executed() < u64::from(self.notified),
        }
    }

    fn truth_event(&mut self, o: &Obs, rank: u32) {
        let r = rank as usize;
        match o.kind {
            ObsKind::TruthStarted => {
                if self.crossed_at.is_some_and(|c| o.at >= c) {
                    self.overshoot.started += 1;
                }
            }
            ObsKind::Truth(k) => {
                if self.flags[r] & TRUTH_DONE != 0 {
                    return;
                }
                self.flags[r] |= TRUTH_DONE;
                let after = self.crossed_at.is_some_and(|c| o.at >= c);
                match k {
                    OutcomeKey::Succeeded => {
                        self.truth.succeeded += 1;
                        self.truth_tally.succeeded += 1;
                        if after {
                            self.overshoot.updated += 1;
                        }
                    }
                    OutcomeKey::Failed(s) => {
                        self.truth.failed += 1;
                        self.truth_tally.failed += 1;
                        if let Some(stage) = FailStage::ALL.get(usize::from(s)) {
                            self.truth.failures_by_stage.bump(*stage);
                            if stage.rolled_back() {
                                self.truth.rolled_back += 1;
                            }
                        }
                        if after {
                            self.overshoot.failed += 1;
                        }
                    }
                    OutcomeKey::Rejected => {
                        self.truth.rejected += 1;
                        self.truth_tally.rejected += 1;
                    }
                    OutcomeKey::Bricked => {
                        self.truth.bricked += 1;
                        self.truth_tally.failed += 1;
                        if after {
                            self.overshoot.failed += 1;
                        }
                    }
                }
                if self.crossed_at.is_none()
                    && let Some(a) = &self.plan.spec.abort
                    && a.crossed(&self.truth_tally)
                {
                    self.crossed_at = Some(o.at);
                }
            }
            ObsKind::ReportLost => self.truth.reports_lost += 1,
            ObsKind::TruthCancelled => {
                if self.flags[r] & TRUTH_DONE == 0 {
                    self.flags[r] |= TRUTH_DONE;
                    self.truth.cancelled += 1;
                }
            }
            ObsKind::Reported(_) => {}
        }
    }

    fn reported(&mut self, o: &Obs, rank: u32) {
        let r = rank as usize;
        if self.flags[r] & CANCELLED != 0 {
            // The cancellation came too late: the device had started. It counts as it ends.
            self.flags[r] &= !CANCELLED;
            self.cancelled -= 1;
        }
        let wave = self.policy.wave_of(&self.plan.spec, rank);
        if self.waves.len() <= wave {
            self.waves.resize(wave + 1, RolloutCounts::default());
        }
        match o.kind {
            ObsKind::Reported(None) if self.flags[r] & STARTED == 0 => {
                self.flags[r] |= STARTED;
                self.tally.started += 1;
                self.waves[wave].started += 1;
            }
            ObsKind::Reported(Some(k)) => {
                if self.flags[r] & TERMINAL != 0 {
                    return; // late: it had timed out
                }
                self.flags[r] |= TERMINAL;
                let (t, w) = (&mut self.tally, &mut self.waves[wave]);
                match k {
                    OutcomeKey::Succeeded => {
                        t.succeeded += 1;
                        w.succeeded += 1;
                    }
                    OutcomeKey::Failed(_) | OutcomeKey::Bricked => {
                        t.failed += 1;
                        w.failed += 1;
                    }
                    OutcomeKey::Rejected => {
                        t.rejected += 1;
                        w.rejected += 1;
                    }
                }
            }
            _ => {}
        }
    }

    /// Takes the reports that reached the backend by `now`, then the timeouts due by `now`.
    fn take_due(&mut self, now: SimTime) {
        while let Some(Reverse(o)) = self.pending.peek().copied() {
            if o.at > now {
                break;
            }
            self.pending.pop();
            if let Some(rank) = self.plan.rank(o.device) {
                self.reported(&o, rank);
            }
        }
        while let Some(&(deadline, rank)) = self.timeouts.front() {
            if deadline > now {
                break;
            }
            self.timeouts.pop_front();
            self.time_out(rank);
        }
    }

    /// Completed (every target of the last wave executed), or an abort with nothing left.
    fn check_finished(&mut self, now: SimTime) {
        let executed = self.tally.executed() + self.cancelled;
        // Waves may stop short of every target (`waves = [1, 10]`): done at the last wave's end.
        let last = self.policy.final_target(&self.plan.spec);
        if self.state == RunState::Running && self.notified >= last && executed >= u64::from(last) {
            self.state = RunState::Completed;
            self.finished_at = Some(now);
        }
        if self.state == RunState::Aborted
            && self.finished_at.is_none()
            && executed >= u64::from(self.notified)
        {
            self.finished_at = Some(now);
        }
    }

    fn tick(&mut self, index: u16, now: SimTime, period: SimDuration, d: &mut Decision) {
        self.take_due(now);
        let plan = self.plan.clone();
        let spec = &plan.spec;
        if self.state == RunState::NotStarted && now >= SimTime::ZERO + spec.at {
            self.state = RunState::Running;
            self.started_at = Some(now);
            self.next_eval = now;
        }
        if self.state == RunState::Running
            && let Some(a) = &spec.abort
            && a.crossed(&self.tally)
        {
            self.state = RunState::Aborted;
            self.aborted_at = Some(now);
            // Jobs the backend has heard nothing of are cancelled (AWS cancels QUEUED
            // executions); a device that started meanwhile carries on and is counted as it ends.
            let mut queued = Vec::new();
            for r in 0..self.notified as usize {
                if self.flags[r] & (STARTED | TERMINAL) == 0 {
                    self.flags[r] |= CANCELLED;
                    queued.push(self.plan.order[r]);
                }
            }
            self.cancelled = queued.len() as u64;
            if !queued.is_empty() {
                d.cancel.push((index, queued));
            }
        }
        if self.state == RunState::Running && now >= self.next_eval {
            let start = self.started_at.unwrap_or(now);
            let target = self.policy.tick(spec, start, now, &self.tally);
            if target > self.notified {
                let (a, b) = (self.notified, target);
                let n = f64::from(b - a);
                for r in a..b {
                    let at = now + period.mul_f64(f64::from(r - a) / n);
                    self.notify_at[r as usize] = at;
                    self.timeouts.push_back((at + spec.timeout, r));
                }
                d.notify.push((index, a..b, period));
                self.notified = b;
            }
            while self.next_eval <= now {
                self.next_eval += spec.evaluate_every;
            }
        }
        self.check_finished(now);
    }

    fn report(&self) -> RolloutReport {
        let spec = &self.plan.spec;
        let secs = |t: SimTime| t.as_micros() as f64 / 1e6;
        let notified_after = self
            .crossed_at
            .map(|c| {
                self.notify_at
                    .iter()
                    .filter(|t| !t.is_never() && **t >= c)
                    .count() as u64
            })
            .unwrap_or(0);
        let mut truth = self.truth;
        truth.stuck = (0..self.notified as usize)
            .filter(|r| self.flags[*r] & TRUTH_DONE == 0)
            .count() as u64;
        let waves = self
            .policy
            .wave_starts
            .iter()
            .enumerate()
            .map(|(k, at)| {
                let lo = if k == 0 {
                    0
                } else {
                    self.policy.wave_end(spec, k - 1)
                };
                let hi = self.policy.wave_end(spec, k).min(self.notified.max(lo));
                let mut counts = self.waves.get(k).copied().unwrap_or_default();
                counts.notified = u64::from(hi.saturating_sub(lo));
                WaveReport {
                    wave: k as u32 + 1,
                    started_at_s: secs(*at),
                    devices: u64::from(hi.saturating_sub(lo)),
                    reported: counts,
                }
            })
            .collect();
        let state = self.state_name();
        let total = self.plan.order.len() as u64;
        RolloutReport {
            name: spec.name.clone(),
            target_version: spec.target_version.clone(),
            cohorts: self.plan.cohort_names.clone(),
            state: state.into(),
            targets: total,
            started_at_s: self.started_at.map(secs),
            finished_at_s: self.finished_at.map(secs),
            reported: self.counts(),
            not_notified: total - u64::from(self.notified),
            cancelled: self.cancelled,
            in_progress: u64::from(self.notified)
                .saturating_sub(self.tally.executed() + self.cancelled),
            abort: spec.abort.as_ref().map(|a| AbortReport {
                criteria: a.describe(),
                aborted_at_s: self.aborted_at.map(secs),
                threshold_crossed_at_s: self.crossed_at.map(secs),
                time_to_halt_s: match (self.aborted_at, self.crossed_at) {
                    (Some(a), Some(c)) => Some(secs(a) - secs(c)),
                    _ => None,
                },
                overshoot: Overshoot {
                    notified: notified_after,
                    ..self.overshoot
                },
            }),
            truth,
            waves,
        }
    }
}

/// The orchestrator of all the scenario's rollouts.
struct Orchestrator {
    runs: Vec<RolloutRun>,
    period: SimDuration,
    /// Rollouts may be added while the run goes (wall clock, control API): keep ticking.
    live: bool,
}

impl Orchestrator {
    fn ingest(&mut self, mut obs: Vec<Obs>) {
        obs.sort_unstable();
        for o in obs {
            let Some(run) = self.runs.get_mut(usize::from(o.rollout)) else {
                continue;
            };
            let Some(rank) = run.plan.rank(o.device) else {
                continue;
            };
            match o.kind {
                ObsKind::Reported(_) => run.pending.push(Reverse(o)),
                _ => run.truth_event(&o, rank),
            }
        }
    }

    fn tick(&mut self, now: SimTime) -> Decision {
        let mut d = Decision {
            at: now,
            ..Decision::default()
        };
        for (i, run) in self.runs.iter_mut().enumerate() {
            run.tick(i as u16, now, self.period, &mut d);
        }
        d.next_at = if self.live || self.runs.iter().any(RolloutRun::active) {
            now + self.period
        } else {
            SimTime::NEVER
        };
        d
    }
}

struct HubState {
    orch: Orchestrator,
    /// Shards still taking part.
    present: u16,
    /// Shards that handed in for the tick being collected.
    arrived: u16,
    collecting: SimTime,
    obs: Vec<Obs>,
    decisions: Vec<Arc<Decision>>,
    /// Observations handed in when leaving (after the last tick).
    final_obs: Vec<Obs>,
}

/// Shared by the shards of a run (see the module's comment).
pub struct RolloutHub {
    plans: RwLock<Vec<Arc<RolloutPlan>>>,
    pub period: SimDuration,
    /// The first tick.
    pub first_tick: SimTime,
    state: Mutex<HubState>,
    cv: Condvar,
}

impl std::fmt::Debug for RolloutHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RolloutHub")
    }
}

impl RolloutHub {
    /// None when the fleet has no rollouts (and rollouts cannot be added: `live` is false, or
    /// no device takes updates).
    pub fn new(
        fleet: &Fleet,
        seed: RunSeed,
        shards: u16,
        live: bool,
        owned: &crate::plan::Owned,
    ) -> Option<RolloutHub> {
        let plans: Vec<Arc<RolloutPlan>> = RolloutPlan::build(fleet, seed, owned)
            .into_iter()
            .map(Arc::new)
            .collect();
        let live = live && fleet.cohorts.iter().any(|c| c.profile.ota.is_some());
        let period = match plans.iter().map(|p| p.spec.evaluate_every).min() {
            Some(p) => p,
            None if live => LIVE_PERIOD,
            None => return None,
        };
        let first_at = plans
            .iter()
            .map(|p| p.spec.at)
            .min()
            .unwrap_or(SimDuration::ZERO);
        // Ticks fall on multiples of the period.
        let k = first_at.as_micros().div_ceil(period.as_micros().max(1));
        let first_tick = SimTime(k * period.as_micros());
        Some(RolloutHub::with_plans(
            plans, period, first_tick, live, shards,
        ))
    }

    /// A hub over `plans` for `shards` shards, collecting the tick at `first_tick`.
    fn with_plans(
        plans: Vec<Arc<RolloutPlan>>,
        period: SimDuration,
        first_tick: SimTime,
        live: bool,
        shards: u16,
    ) -> RolloutHub {
        let runs = plans.iter().cloned().map(RolloutRun::new).collect();
        RolloutHub {
            plans: RwLock::new(plans),
            period,
            first_tick,
            state: Mutex::new(HubState {
                orch: Orchestrator { runs, period, live },
                present: shards,
                arrived: 0,
                collecting: first_tick,
                obs: Vec::new(),
                decisions: Vec::new(),
                final_obs: Vec::new(),
            }),
            cv: Condvar::new(),
        }
    }

    /// Rollout number `i`.
    pub fn plan(&self, i: u16) -> Option<Arc<RolloutPlan>> {
        self.plans
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(usize::from(i))
            .cloned()
    }

    /// Rollouts so far (the next one added gets this number).
    pub fn len(&self) -> usize {
        self.plans
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a rollout while the run goes (a live hub); it starts at the first tick at or after
    /// its `at`. Refused once every shard has left.
    pub fn add(&self, plan: RolloutPlan) -> Result<u16, String> {
        let mut s = self.lock();
        if !s.orch.live {
            return Err("this run takes no new rollouts (it was not started with a control surface, or no device takes updates)".into());
        }
        if s.present == 0 {
            return Err("the run has ended".into());
        }
        let mut plans = self.plans.write().unwrap_or_else(PoisonError::into_inner);
        if plans.iter().any(|p| p.spec.name == plan.spec.name) {
            return Err(format!(
                "a rollout named {:?} exists already",
                plan.spec.name
            ));
        }
        let i = u16::try_from(plans.len()).map_err(|_| "too many rollouts".to_string())?;
        let plan = Arc::new(plan);
        plans.push(plan.clone());
        s.orch.runs.push(RolloutRun::new(plan));
        Ok(i)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands in what happened before the tick at `at`; the last shard to do so decides.
    pub fn submit(&self, at: SimTime, obs: &mut Vec<Obs>) {
        let mut s = self.lock();
        s.obs.append(obs);
        s.arrived += 1;
        debug_assert_eq!(s.collecting, at);
        Self::maybe_decide(&mut s);
        self.cv.notify_all();
    }

    fn maybe_decide(s: &mut HubState) {
        if s.present > 0 && s.arrived >= s.present {
            let obs = std::mem::take(&mut s.obs);
            s.orch.ingest(obs);
            let d = s.orch.tick(s.collecting);
            s.collecting = d.next_at;
            s.arrived = 0;
            s.decisions.push(Arc::new(d));
        }
    }

    /// The decision of tick number `n` (0-based), waiting for it.
    pub fn wait(&self, n: usize) -> Option<Arc<Decision>> {
        let mut s = self.lock();
        loop {
            if let Some(d) = s.decisions.get(n) {
                return Some(d.clone());
            }
            if s.present == 0 {
                return None;
            }
            s = self.cv.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The decision of tick `n` if it is ready.
    pub fn try_get(&self, n: usize) -> Option<Arc<Decision>> {
        self.lock().decisions.get(n).cloned()
    }

    /// A shard stops taking part (its run is over); its last observations count for the report.
    /// `submitted`: the tick it handed in and has not had the decision of (a wall-clock shard
    /// may end while it waits): that hand-in no longer counts as one of the shards still
    /// present, or the hub would decide the tick before the others have handed theirs in.
    pub fn leave(&self, obs: &mut Vec<Obs>, submitted: Option<SimTime>) {
        let mut s = self.lock();
        s.final_obs.append(obs);
        if submitted == Some(s.collecting) {
            s.arrived = s.arrived.saturating_sub(1);
        }
        s.present = s.present.saturating_sub(1);
        Self::maybe_decide(&mut s);
        self.cv.notify_all();
    }

    /// The rollouts as the orchestrator sees them now (no scan of the targets: cheap).
    pub fn live(&self) -> Vec<fleet_metrics::ota::RolloutLive> {
        let s = self.lock();
        s.orch
            .runs
            .iter()
            .map(|r| {
                let spec = &r.plan.spec;
                let waves = match &spec.pace {
                    fleet_core::rollout::Pace::Waves { ends, .. } => ends.len() as u32,
                    fleet_core::rollout::Pace::Rate { .. } => 1,
                };
                RolloutLive {
                    name: spec.name.clone(),
                    target_version: spec.target_version.clone(),
                    state: r.state_name().into(),
                    wave: r.policy.wave_starts.len() as u32,
                    waves,
                    targets: r.plan.order.len() as u64,
                    reported: r.counts(),
                }
            })
            .collect()
    }

    /// The rollouts' reports, once every shard has left.
    pub fn reports(&self, end: SimTime) -> Vec<RolloutReport> {
        let mut s = self.lock();
        let mut obs = std::mem::take(&mut s.obs);
        obs.append(&mut s.final_obs);
        s.orch.ingest(obs);
        // Reports that arrive by the end count; deadlines up to the end too.
        for run in s.orch.runs.iter_mut() {
            if run.state != RunState::NotStarted {
                run.tick_final(end);
            }
        }
        s.orch.runs.iter().map(RolloutRun::report).collect()
    }
}

impl RolloutRun {
    /// At the end: take the reports and timeouts due by `end`, notify nobody.
    fn tick_final(&mut self, end: SimTime) {
        self.take_due(end);
        self.check_finished(end);
    }
}

/// A shard's membership of the hub: leaving is certain, even when the shard's thread unwinds,
/// so the other shards never wait at a tick for a shard that is gone.
pub(crate) struct Membership {
    hub: Option<Arc<RolloutHub>>,
}

impl Membership {
    pub(crate) fn new(hub: Option<Arc<RolloutHub>>) -> Membership {
        Membership { hub }
    }

    pub(crate) fn hub(&self) -> Option<&Arc<RolloutHub>> {
        self.hub.as_ref()
    }

    /// Leaves with the shard's last observations (`submitted`: see `RolloutHub::leave`).
    pub(crate) fn leave(&mut self, obs: &mut Vec<Obs>, submitted: Option<SimTime>) {
        if let Some(h) = self.hub.take() {
            h.leave(obs, submitted);
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.leave(&mut Vec::new(), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(shards: u16) -> RolloutHub {
        let period = SimDuration::from_secs(10);
        RolloutHub::with_plans(Vec::new(), period, SimTime::ZERO + period, true, shards)
    }

    #[test]
    fn a_shard_that_leaves_after_handing_in_does_not_decide_for_the_others() {
        let h = hub(2);
        let tick = h.first_tick;
        // Shard 0 hands in the tick and ends before the decision (a wall-clock shard whose
        // drain was short); shard 1 has not reached the tick yet.
        h.submit(tick, &mut Vec::new());
        h.leave(&mut Vec::new(), Some(tick));
        assert!(h.try_get(0).is_none(), "decided without shard 1's hand-in");
        h.submit(tick, &mut Vec::new());
        let d = h.try_get(0).expect("decided once shard 1 handed in");
        assert_eq!(d.at, tick);
        assert_eq!(h.lock().collecting, d.next_at);
    }

    #[test]
    fn a_shard_that_leaves_before_handing_in_lets_the_others_go_on() {
        let h = hub(2);
        let tick = h.first_tick;
        h.submit(tick, &mut Vec::new());
        h.leave(&mut Vec::new(), None);
        assert!(h.try_get(0).is_some(), "the one shard left decides");
        // A hand-in for a tick already decided does not count for the next one.
        let h = hub(2);
        h.submit(tick, &mut Vec::new());
        h.submit(tick, &mut Vec::new());
        h.leave(&mut Vec::new(), Some(tick));
        assert_eq!(h.lock().arrived, 0);
    }
}
