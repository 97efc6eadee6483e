//! Merging the results of the processes of one run into one report.

use std::collections::BTreeMap;
use std::ops::Range;

use fleet_core::slice::Slice;

use super::{ResultsError, ShardPart, ShardResults, shown};
use crate::merge::merge_snapshots;
use crate::ota::{AbortReport, RolloutCounts, RolloutReport, RolloutTruth, WaveReport};
use crate::report::{OtaInputs, PART_OK, PartReport, ProcessStats, RunInfo, RunReport};
use crate::snapshot::FleetSnapshot;

/// A slice of the run whose results are not among the parts.
#[derive(Clone, Debug, PartialEq)]
pub struct MissingSlice {
    pub slice: Slice,
    /// Its device ids per cohort, in the cohorts' order.
    pub ranges: Vec<(String, Range<u32>)>,
    /// Why, as far as known (`known_failures`), or that no results were found.
    pub reason: String,
}

/// The parts of a run, merged.
#[derive(Clone, Debug)]
pub struct MergedResults {
    /// The report over the merged view, SLOs evaluated on it; `parts` lists every slice.
    pub report: RunReport,
    /// The merged final snapshot (full histograms).
    pub last: FleetSnapshot,
    /// Slices with no results, in slice order.
    pub missing: Vec<MissingSlice>,
}

impl MergedResults {
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Merges the parts of one run (`read_results`) into what one process running all their
/// devices would have reported, and evaluates the run's SLOs on it. `known_failures` are
/// (slice index, why) for processes known to have failed, e.g. "process exited with signal 9":
/// a missing slice is reported with that reason.
///
/// Refused: parts of different runs (scenario, seed, clock, duration, slice count, cohorts or
/// SLOs differ), and two parts of the same slice. Exact: counters, device states, histograms and
/// every percentile. Bounded, as `merge_snapshots` says: peak online (sum of the parts'
/// peaks), generator lag (the worst part's). The run's facts: shards summed, elapsed the
/// longest, interrupted if any part was; CPU summed, peak RSS the sum of the parts' peaks.
/// Rollouts of the same name add up (each process ran its own orchestrator over its slice).
pub fn merge_results(
    parts: &[ShardPart],
    known_failures: &[(u32, String)],
) -> Result<MergedResults, ResultsError> {
    let Some(first) = parts.first() else {
        return Err(ResultsError::Empty);
    };
    for other in &parts[1..] {
        if let Some(what) = difference(&first.results, &other.results) {
            return Err(ResultsError::Mismatch {
                first: shown(&first.path),
                second: shown(&other.path),
                what,
            });
        }
    }
    let mut by_slice: BTreeMap<u32, &ShardPart> = BTreeMap::new();
    for part in parts {
        if let Some(earlier) = by_slice.insert(part.results.slice.index, part) {
            return Err(ResultsError::SameSlice {
                first: shown(&earlier.path),
                second: shown(&part.path),
                slice: part.results.slice.to_string(),
            });
        }
    }
    let present: Vec<&ShardResults> = by_slice.values().map(|p| &p.results).collect();
    let labelled = |of: fn(&ShardResults) -> &FleetSnapshot| -> Vec<(String, FleetSnapshot)> {
        present
            .iter()
            .map(|r| {
                let mut s = of(r).clone();
                if s.version_labels.is_empty() {
                    s.version_labels = r.version_labels.clone();
                }
                (format!("shard {}", r.slice), s)
            })
            .collect()
    };
    let at_end = merge_snapshots(&labelled(|r| &r.at_end));
    let last = merge_snapshots(&labelled(|r| &r.last));
    let base = &first.results;
    let mut report = RunReport::build(
        merged_info(&present),
        &at_end,
        &last,
        merged_process(&present),
        base.saturation_threshold_us,
        &base.slos,
        OtaInputs {
            version_labels: last.version_labels.clone(),
            rollouts: merged_rollouts(&present),
        },
    );
    let count = base.slice.count;
    let mut entries = Vec::with_capacity(count as usize);
    let mut missing = Vec::new();
    for index in 0..count {
        let slice = Slice { index, count };
        let ranges = base.ranges_of(slice);
        let devices = ranges.iter().map(|(_, r)| u64::from(r.end - r.start)).sum();
        let range_map = ranges
            .iter()
            .map(|(name, r)| (name.clone(), [r.start, r.end]))
            .collect();
        let entry = match by_slice.get(&index) {
            Some(part) => {
                let p = &part.results.process;
                PartReport {
                    shard: slice.to_string(),
                    devices,
                    ranges: range_map,
                    rss_peak_bytes: Some(p.rss_peak_bytes),
                    cpu_s: Some(p.cpu_user_s + p.cpu_system_s),
                    interrupted: Some(part.results.run.interrupted),
                    status: PART_OK.into(),
                }
            }
            None => {
                let reason = known_failures
                    .iter()
                    .find(|(k, _)| *k == index)
                    .map(|(_, why)| why.clone())
                    .unwrap_or_else(|| {
                        format!(
                            "no results (shard-{index}-of-{count}.json not found among the inputs)"
                        )
                    });
                missing.push(MissingSlice {
                    slice,
                    ranges,
                    reason: reason.clone(),
                });
                PartReport {
                    shard: slice.to_string(),
                    devices,
                    ranges: range_map,
                    rss_peak_bytes: None,
                    cpu_s: None,
                    interrupted: None,
                    status: format!("missing: {reason}"),
                }
            }
        };
        entries.push(entry);
    }
    report.set_parts(entries);
    Ok(MergedResults {
        report,
        last,
        missing,
    })
}

/// What makes two parts not parts of one run, if anything.
fn difference(a: &ShardResults, b: &ShardResults) -> Option<String> {
    if a.run.scenario != b.run.scenario {
        return Some(format!(
            "scenario {:?} and {:?}",
            a.run.scenario, b.run.scenario
        ));
    }
    if a.run.seed != b.run.seed {
        return Some(format!("seed {} and {}", a.run.seed, b.run.seed));
    }
    if a.run.clock != b.run.clock {
        return Some(format!("clock {} and {}", a.run.clock, b.run.clock));
    }
    if a.run.duration_s != b.run.duration_s {
        return Some(format!(
            "duration {} s and {} s",
            a.run.duration_s, b.run.duration_s
        ));
    }
    if a.slice.count != b.slice.count {
        return Some(format!(
            "the fleet cut into {} and {} shards",
            a.slice.count, b.slice.count
        ));
    }
    if a.cohorts != b.cohorts {
        let show = |r: &ShardResults| {
            r.cohorts
                .iter()
                .map(|c| {
                    format!(
                        "{} {}..{}",
                        c.name,
                        c.first,
                        u64::from(c.first) + u64::from(c.count)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Some(format!("cohorts [{}] and [{}]", show(a), show(b)));
    }
    if a.slos != b.slos {
        return Some("their SLOs differ".into());
    }
    None
}

fn merged_info(parts: &[&ShardResults]) -> RunInfo {
    let mut info = parts.first().map(|p| p.run.clone()).unwrap_or_default();
    let mut ids: Vec<&str> = Vec::new();
    let mut brokers: Vec<&str> = Vec::new();
    for p in parts {
        if !ids.contains(&p.run.id.as_str()) {
            ids.push(&p.run.id);
        }
        if !brokers.contains(&p.run.broker.as_str()) {
            brokers.push(&p.run.broker);
        }
    }
    info.id = ids.join(",");
    info.broker = brokers.join(", ");
    info.elapsed_s = parts.iter().map(|p| p.run.elapsed_s).fold(0.0, f64::max);
    info.shards = parts
        .iter()
        .fold(0u16, |n, p| n.saturating_add(p.run.shards));
    info.interrupted = parts.iter().any(|p| p.run.interrupted);
    info.processes = u32::try_from(parts.len()).unwrap_or(u32::MAX);
    info
}

fn merged_process(parts: &[&ShardResults]) -> ProcessStats {
    let mut out = ProcessStats {
        open_files_limit: u64::MAX,
        ..ProcessStats::default()
    };
    for p in parts {
        let s = &p.process;
        out.rss_peak_bytes = out.rss_peak_bytes.saturating_add(s.rss_peak_bytes);
        out.cpu_user_s += s.cpu_user_s;
        out.cpu_system_s += s.cpu_system_s;
        out.open_files_limit = out.open_files_limit.min(s.open_files_limit);
    }
    if parts.is_empty() {
        out.open_files_limit = 0;
    }
    out
}

/// The parts' rollouts, those of the same name added up.
fn merged_rollouts(parts: &[&ShardResults]) -> Vec<RolloutReport> {
    let mut out: Vec<RolloutReport> = Vec::new();
    for r in parts.iter().flat_map(|p| &p.rollouts) {
        match out.iter_mut().find(|o| o.name == r.name) {
            Some(o) => add_rollout(o, r),
            None => out.push(r.clone()),
        }
    }
    out
}

fn add_rollout(o: &mut RolloutReport, r: &RolloutReport) {
    for c in &r.cohorts {
        if !o.cohorts.contains(c) {
            o.cohorts.push(c.clone());
        }
    }
    o.state = match (o.state.as_str(), r.state.as_str()) {
        ("aborted", _) | (_, "aborted") => "aborted".into(),
        (a, b) if a == b => a.to_string(),
        _ => "running".into(),
    };
    o.targets += r.targets;
    o.started_at_s = earliest(o.started_at_s, r.started_at_s);
    // Finished when every part has.
    o.finished_at_s = o.finished_at_s.zip(r.finished_at_s).map(|(a, b)| a.max(b));
    add_counts(&mut o.reported, &r.reported);
    o.not_notified += r.not_notified;
    o.cancelled += r.cancelled;
    o.in_progress += r.in_progress;
    o.abort = match (o.abort.take(), &r.abort) {
        (Some(a), Some(b)) => Some(add_abort(a, b)),
        (a, b) => a.or_else(|| b.clone()),
    };
    add_truth(&mut o.truth, &r.truth);
    for w in &r.waves {
        match o.waves.iter_mut().find(|x| x.wave == w.wave) {
            Some(x) => add_wave(x, w),
            None => o.waves.push(w.clone()),
        }
    }
    o.waves.sort_by_key(|w| w.wave);
}

fn earliest(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn add_counts(a: &mut RolloutCounts, b: &RolloutCounts) {
    a.notified += b.notified;
    a.started += b.started;
    a.succeeded += b.succeeded;
    a.failed += b.failed;
    a.rejected += b.rejected;
    a.timed_out += b.timed_out;
}

fn add_wave(a: &mut WaveReport, b: &WaveReport) {
    a.started_at_s = a.started_at_s.min(b.started_at_s);
    a.devices += b.devices;
    add_counts(&mut a.reported, &b.reported);
}

/// Each part's orchestrator aborted on its own: the first abort and the first crossing.
fn add_abort(mut a: AbortReport, b: &AbortReport) -> AbortReport {
    a.aborted_at_s = earliest(a.aborted_at_s, b.aborted_at_s);
    a.threshold_crossed_at_s = earliest(a.threshold_crossed_at_s, b.threshold_crossed_at_s);
    a.time_to_halt_s = a
        .aborted_at_s
        .zip(a.threshold_crossed_at_s)
        .map(|(abort, crossed)| abort - crossed);
    a.overshoot.notified += b.overshoot.notified;
    a.overshoot.started += b.overshoot.started;
    a.overshoot.updated += b.overshoot.updated;
    a.overshoot.failed += b.overshoot.failed;
    a
}

fn add_truth(a: &mut RolloutTruth, b: &RolloutTruth) {
    a.succeeded += b.succeeded;
    a.failed += b.failed;
    a.rejected += b.rejected;
    a.bricked += b.bricked;
    a.rolled_back += b.rolled_back;
    a.cancelled += b.cancelled;
    a.stuck += b.stuck;
    a.failures_by_stage.add(&b.failures_by_stage);
    a.reports_lost += b.reports_lost;
}
