//! Shard results: what one process of a fleet run as several (`--shard K/N --results DIR`)
//! leaves behind, and how `fleetsim report merge` (and `run --processes N`) adds them up.
//!
//! Each process writes two files into DIR:
//! - `shard-K-of-N.hlog`, an HdrHistogram interval log in the format of Java's
//!   `HistogramLogWriter` (log format 1.3, V2 compressed histograms, values in microseconds):
//!   one interval per tag (`publish_ack`, `connect`, `modbus_service`) and snapshot, holding
//!   what that snapshot added. The intervals of a tag sum to the run's histogram exactly, and
//!   other HdrHistogram tools (HistogramLogAnalyzer, HistogramLogProcessor, the Java and Python
//!   libraries) read the log as it is.
//! - `shard-K-of-N.json`, the [`ShardResults`]: the counters (the run's snapshots without
//!   their histograms), the run's facts, its SLOs and rollouts. Written last, under a temporary
//!   name and then renamed: a results file that exists is complete, and so is its log.
//!
//! Reading ([`read_results`]) sums each tag's intervals back into the run's histograms;
//! merging ([`merge_results`]) checks that the parts belong to one run, adds them with
//! [`merge_snapshots`](crate::merge_snapshots) (counters add, histograms add losslessly) and
//! evaluates the SLOs on the merged view. The slices with no results are named, with their
//! device ids and, when known, why.

mod combine;
mod hlog;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use fleet_core::slice::Slice;
use fleet_core::slo::SloSpec;
use serde::{Deserialize, Serialize, Serializer};

use crate::ota::RolloutReport;
use crate::report::{ProcessStats, RunInfo};
use crate::snapshot::FleetSnapshot;

pub use combine::{MergedResults, MissingSlice, merge_results};
pub use hlog::{LOG_TAGS, ResultsWriter};

/// The version of the results file this fleetsim writes and reads. Bumped when a change would
/// make an older fleetsim misread a newer file (or the reverse).
pub const RESULTS_FORMAT_VERSION: u32 = 1;

/// A cohort of the whole fleet: its name and ids `first .. first + count`. With the slice
/// count, any slice's ids follow (`Slice::of_units`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CohortSpan {
    pub name: String,
    pub first: u32,
    pub count: u32,
    /// Slices cut the cohort only between groups of this many devices (a gateway and its
    /// children; 1 otherwise): `Slice::of_units`.
    #[serde(default = "one")]
    pub unit: u32,
}

fn one() -> u32 {
    1
}

/// What one process of a run leaves in `DIR/shard-K-of-N.json`. Build it with
/// `..ShardResults::default()` for the fields `ResultsWriter::finish` fills in
/// (`format_version`, `clamped`, `last`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardResults {
    /// `RESULTS_FORMAT_VERSION` of the fleetsim that wrote it.
    pub format_version: u32,
    /// The slice of the fleet this process ran.
    pub slice: Slice,
    /// Every cohort of the whole fleet (not only this slice's part of it).
    pub cohorts: Vec<CohortSpan>,
    pub run: RunInfo,
    pub process: ProcessStats,
    pub slos: Vec<SloSpec>,
    /// A shard that ran a deadline later than this was saturated (`generator.saturated`).
    pub saturation_threshold_us: u64,
    /// The fleet's firmware versions, "model version", as the snapshots number them.
    pub version_labels: Vec<String>,
    /// This process's rollouts (over its slice's devices).
    pub rollouts: Vec<RolloutReport>,
    /// Per log tag: values above `LATENCY_MAX_US`, which the histograms hold as that maximum.
    #[serde(default)]
    pub clamped: BTreeMap<String, u64>,
    /// The fleet when the scenario's duration ended, and after drain and shutdown. In the file
    /// without their histograms: the interval log holds those.
    #[serde(serialize_with = "without_histograms")]
    pub at_end: FleetSnapshot,
    #[serde(serialize_with = "without_histograms")]
    pub last: FleetSnapshot,
}

impl Default for ShardResults {
    fn default() -> Self {
        ShardResults {
            format_version: RESULTS_FORMAT_VERSION,
            slice: Slice::WHOLE,
            cohorts: Vec::new(),
            run: RunInfo::default(),
            process: ProcessStats::default(),
            slos: Vec::new(),
            saturation_threshold_us: 0,
            version_labels: Vec::new(),
            rollouts: Vec::new(),
            clamped: BTreeMap::new(),
            at_end: FleetSnapshot::default(),
            last: FleetSnapshot::default(),
        }
    }
}

impl ShardResults {
    /// The device ids of `slice` per cohort, in the cohorts' order.
    pub fn ranges_of(&self, slice: Slice) -> Vec<(String, std::ops::Range<u32>)> {
        self.cohorts
            .iter()
            .map(|c| (c.name.clone(), slice.of_units(c.first, c.count, c.unit)))
            .collect()
    }
}

/// A snapshot as JSON, without its `histograms` key.
fn without_histograms<S: Serializer>(snap: &FleetSnapshot, s: S) -> Result<S::Ok, S::Error> {
    let mut v = serde_json::to_value(snap).map_err(serde::ser::Error::custom)?;
    if let Some(o) = v.as_object_mut() {
        o.remove("histograms");
    }
    v.serialize(s)
}

/// One process's results as read back: `results.last` carries the run's histograms again,
/// summed from the interval log.
#[derive(Clone, Debug)]
pub struct ShardPart {
    /// The results file (`shard-K-of-N.json`).
    pub path: PathBuf,
    pub results: ShardResults,
}

/// Why results could not be read or merged. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{path}: line {line}: {message}")]
    Log {
        path: String,
        line: u64,
        message: String,
    },
    #[error("{path}: no shard results in it (files named shard-K-of-N.json, each with its .hlog)")]
    NoResults { path: String },
    #[error("{json}: its interval log {log} is missing (both files are needed)")]
    MissingLog { json: String, log: String },
    #[error("{first} and {second} are not parts of one run: {what}")]
    Mismatch {
        first: String,
        second: String,
        what: String,
    },
    #[error("{first} and {second} both hold the results of shard {slice}")]
    SameSlice {
        first: String,
        second: String,
        slice: String,
    },
    #[error("no shard results given")]
    Empty,
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ResultsError + '_ {
    move |source| ResultsError::Io {
        path: shown(path),
        source,
    }
}

/// Where a slice's results go in `dir`: (`shard-K-of-N.json`, `shard-K-of-N.hlog`).
pub fn results_paths(dir: &Path, slice: Slice) -> (PathBuf, PathBuf) {
    let stem = format!("shard-{}-of-{}", slice.index, slice.count);
    (
        dir.join(format!("{stem}.json")),
        dir.join(format!("{stem}.hlog")),
    )
}

/// The slice a file name `shard-K-of-N.json` names.
fn slice_of_file_name(name: &str) -> Option<Slice> {
    let rest = name.strip_prefix("shard-")?.strip_suffix(".json")?;
    let (k, n) = rest.split_once("-of-")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(k) || !digits(n) {
        return None;
    }
    Slice::new(k.parse().ok()?, n.parse().ok()?).ok()
}

/// Reads the results in `paths`: results files (`shard-K-of-N.json`, or their `.hlog`), or
/// folders (every `shard-K-of-N.json` in them, each with its `.hlog`). Each part's interval
/// log is summed back into its histograms (in `results.last`). A file named twice is read once.
pub fn read_results(paths: &[PathBuf]) -> Result<Vec<ShardPart>, ResultsError> {
    let mut files: Vec<PathBuf> = Vec::new();
    for path in paths {
        if path.is_dir() {
            let found = results_in(path)?;
            if found.is_empty() {
                return Err(ResultsError::NoResults { path: shown(path) });
            }
            files.extend(found);
        } else if path.extension().is_some_and(|e| e == "hlog") {
            files.push(path.with_extension("json"));
        } else {
            files.push(path.clone());
        }
    }
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())));
    files.iter().map(|f| read_part(f)).collect()
}

/// The results files in a folder, by slice.
fn results_in(dir: &Path) -> Result<Vec<PathBuf>, ResultsError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        if let Some(slice) = name.to_str().and_then(slice_of_file_name) {
            found.push(((slice.count, slice.index), entry.path()));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// One results file and its interval log.
fn read_part(path: &Path) -> Result<ShardPart, ResultsError> {
    let invalid = |message: String| ResultsError::Invalid {
        path: shown(path),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| invalid(format!("not a shard results file: not JSON ({e})")))?;
    let version = value
        .get("format_version")
        .ok_or_else(|| invalid("not a shard results file: no format_version".into()))?;
    if version.as_u64() != Some(u64::from(RESULTS_FORMAT_VERSION)) {
        let by = value
            .pointer("/run/fleetsim_version")
            .and_then(|v| v.as_str())
            .map(|v| format!(", written by fleetsim {v}"))
            .unwrap_or_default();
        return Err(invalid(format!(
            "results format version {version}{by}: this fleetsim (version {}) reads version {RESULTS_FORMAT_VERSION}; merge with the fleetsim that wrote it",
            env!("CARGO_PKG_VERSION")
        )));
    }
    let mut results: ShardResults =
        serde_json::from_value(value).map_err(|e| invalid(format!("{e}")))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if let Some(named) = slice_of_file_name(name)
        && named != results.slice
    {
        return Err(invalid(format!(
            "the file is named for shard {named} but holds the results of shard {}",
            results.slice
        )));
    }
    let log = path.with_extension("hlog");
    if !log.is_file() {
        return Err(ResultsError::MissingLog {
            json: shown(path),
            log: shown(&log),
        });
    }
    let sums = hlog::read_log(&log)?;
    hlog::restore(&mut results, sums, &log)?;
    Ok(ShardPart {
        path: path.to_path_buf(),
        results,
    })
}
