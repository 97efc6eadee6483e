//! What the whole-run tests share: running in-memory files on the virtual clock, and reading
//! an event log.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use fleet_core::load::{EmbeddedSource, load_fleet};
use fleet_engine::{RunOptions, RunOutcome, RunPlan, run_virtual};

/// Runs the scenario `files[0]` (with the profiles and models among `files`) on the virtual
/// clock with `shards` shards, writing the event log to `log` if given.
pub fn run_files(
    files: Vec<(&'static str, String)>,
    shards: u16,
    log: Option<&Path>,
) -> RunOutcome {
    run_slice(files, shards, fleet_core::slice::Slice::WHOLE, log)
}

/// Like `run_files`, for one process's slice of the fleet (`--shard K/N`).
pub fn run_slice(
    files: Vec<(&'static str, String)>,
    shards: u16,
    slice: fleet_core::slice::Slice,
    log: Option<&Path>,
) -> RunOutcome {
    let scenario = files[0].0;
    let files: Vec<(&'static str, &'static str)> = files
        .into_iter()
        .map(|(name, text)| (name, &*Box::leak(text.into_boxed_str())))
        .collect();
    let files: &'static [(&'static str, &'static str)] = Box::leak(files.into_boxed_slice());
    let fleet = load_fleet(&EmbeddedSource(files), Path::new(scenario)).expect("valid scenario");
    let plan = Arc::new(RunPlan::sliced(
        Arc::new(fleet),
        shards,
        fleet_core::defaults::VIRTUAL_EPOCH_MS,
        slice,
    ));
    let opts = RunOptions {
        event_log: log.map(Path::to_path_buf),
        ..RunOptions::default()
    };
    run_virtual(plan, &opts, Arc::new(AtomicBool::new(false)), |_| {}).expect("run completes")
}

/// The event log's lines, sorted (device, then time: the order does not depend on shards).
pub fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .expect("event log exists")
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// A firmware model with one version, for profiles that name `fw.toml`.
#[allow(dead_code)] // not every test file has such a profile
pub const FIRMWARE: &str = r#"
name = "fw"
[[versions]]
version = "1.0.0"
image_size_kb = 100
boot_s = { dist = "uniform", min = 0.5, max = 2.0 }
"#;
