//! Rollouts fleetsim runs itself, on the virtual clock: the same scenario and seed give the same
//! per-device outcomes and the same orchestrator decisions for 1 and 4 shards; an abort halts
//! the rollout with the truth on record; a good release completes in its waves.

use std::path::Path;

use fleet_engine::RunOutcome;
use fleet_metrics::RolloutReport;

mod common;

const FIRMWARE: &str = r#"
name = "fw"
[ota]
verify_s = { dist = "uniform", min = 2.0, max = 4.0 }
install_s = { dist = "normal", mean = 20.0, sigma = 3.0 }
trial_s = 120
max_boot_attempts = 3
download_attempts = 2
stall_timeout = "5m"
[ota.faults]
download_stall = 0.05
stall_s = { dist = "exponential", mean = 200.0 }
reboot_mid_download = 0.02
corrupt_image = 0.01
install_failure = 0.01
boot_failure = 0.05
trial_failure = 0.01
never_returns = 0.005
lost_report = 0.02
[[versions]]
version = "1.0.0"
image_size_kb = 200
boot_s = { dist = "uniform", min = 2.0, max = 6.0 }
[[versions]]
version = "1.1.0"
image_size_kb = 220
boot_s = { dist = "uniform", min = 2.0, max = 6.0 }
[[versions]]
version = "1.2.0"
image_size_kb = 230
boot_s = { dist = "uniform", min = 2.0, max = 6.0 }
faults = { boot_loop = 0.3 }
"#;

const PROFILE: &str = r#"
name = "meter"
[identity]
device_id = "m-{id:05}"
telemetry_topic = "t/{device_id}"
status_topic = "s/{device_id}"
[reporting]
interval = "10m"
jitter = 0.1
qos = 1
[sensors.v]
kind = "normal"
mean = 5.0
sigma = 1.0
[link]
latency_ms = { dist = "lognormal", median = 300, sigma = 0.5 }
loss = 0.01
mtbf = "6h"
mttr_s = { dist = "exponential", mean = 120 }
bandwidth_kbps = { dist = "uniform", min = 50.0, max = 200.0 }
reconnect = { initial = "5s", max = "5m" }
[firmware]
model = "fw.toml"
version = "1.0.0"
[commands]
enabled = []
[ota]
progress_step_percent = 50
"#;

fn scenario(target: &str, abort: bool, waves: &str) -> String {
    let mut s = format!(
        r#"
name = "roll"
seed = 21
duration = "2d"
clock = "virtual"
[ramp]
mode = "poisson"
per_second = 20
[[cohorts]]
name = "meters"
profile = "meter.toml"
count = 1500
[[cohorts]]
name = "spares"
profile = "meter.toml"
count = 100
[[rollouts]]
name = "fw-{target}"
at = "30m"
target_version = "{target}"
cohorts = ["meters"]
waves = {waves}
wave_soak = "20m"
timeout = "2h"
evaluate_every = "1m"
"#
    );
    if abort {
        s.push_str(
            "[rollouts.abort]\nfailure_percent = 10\nmin_executed = 20\nfailure_types = [\"failed\", \"timed_out\"]\n",
        );
    }
    s
}

const WAVES: &str = "[2, 10, 50, 100]";

fn run(target: &str, abort: bool, shards: u16, log: Option<&Path>) -> RunOutcome {
    run_waves(target, abort, WAVES, shards, log)
}

fn run_waves(
    target: &str,
    abort: bool,
    waves: &str,
    shards: u16,
    log: Option<&Path>,
) -> RunOutcome {
    common::run_files(
        vec![
            ("roll.toml", scenario(target, abort, waves)),
            ("meter.toml", PROFILE.to_string()),
            ("fw.toml", FIRMWARE.to_string()),
        ],
        shards,
        log,
    )
}

fn only(out: &RunOutcome) -> &RolloutReport {
    assert_eq!(out.rollouts.len(), 1, "one rollout in the report");
    &out.rollouts[0]
}

#[test]
fn an_aborted_rollout_is_the_same_for_one_and_four_shards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runs: Vec<(Vec<String>, RolloutReport)> = [1u16, 4]
        .iter()
        .map(|&shards| {
            let path = dir.path().join(format!("events-{shards}.log"));
            let out = run("1.2.0", true, shards, Some(&path));
            (common::sorted_lines(&path), only(&out).clone())
        })
        .collect();
    let (log, report) = &runs[0];
    assert!(
        log.iter()
            .any(|l| l.contains("ota_outcome failed stage=boot")),
        "the bad release rolls devices back"
    );
    assert_eq!(report.state, "aborted", "{report:#?}");
    for (other_log, other_report) in &runs[1..] {
        if other_log != log {
            let diff = log.iter().zip(other_log).find(|(a, b)| a != b);
            panic!("per-device events differ with 4 shards: first difference {diff:?}");
        }
        assert_eq!(other_report, report, "the orchestrator decided differently");
    }
}

#[test]
fn an_abort_halts_the_rollout_and_reports_what_truly_happened() {
    let out = run("1.2.0", true, 2, None);
    let r = only(&out);
    let abort = r.abort.as_ref().expect("abort criteria");
    let crossed = abort.threshold_crossed_at_s.expect("the truth crossed it");
    let aborted = abort.aborted_at_s.expect("the orchestrator aborted");
    // The orchestrator hears of failures only when they are reported: never before the truth.
    assert!(
        aborted >= crossed,
        "aborted {aborted} before the crossing {crossed}"
    );
    assert_eq!(abort.time_to_halt_s, Some(aborted - crossed));
    assert!(
        r.not_notified > 0,
        "an abort leaves targets unnotified: {r:#?}"
    );
    assert_eq!(
        r.targets,
        r.reported.notified + r.not_notified,
        "every target is notified or not"
    );
    assert!(
        r.reported.failed + r.reported.timed_out > 0 && r.truth.failed >= r.reported.failed,
        "{r:#?}"
    );
    assert!(
        r.truth.rolled_back > 0,
        "boot loops roll back: {:?}",
        r.truth
    );
    // Queued jobs were cancelled; the devices that had not started dropped them.
    assert!(r.truth.cancelled <= r.cancelled, "{r:#?}");
    assert_eq!(
        r.truth.succeeded
            + r.truth.failed
            + r.truth.rejected
            + r.truth.bricked
            + r.truth.cancelled
            + r.truth.stuck,
        r.reported.notified,
        "every notified device has one truth: {:?}",
        r.truth
    );
    // The spares were not targeted and kept their version.
    let ota = out.last.ota;
    assert!(ota.jobs_received <= r.reported.notified, "{ota:?}");
    assert_eq!(
        ota.succeeded + ota.failed + ota.bricked,
        r.truth.succeeded + r.truth.failed
    );
}

#[test]
fn a_good_release_completes_in_its_waves() {
    let out = run("1.1.0", false, 2, None);
    let r = only(&out);
    assert_eq!(r.state, "completed", "{r:#?}");
    assert_eq!(r.reported.notified, r.targets);
    assert_eq!(r.in_progress, 0, "{r:#?}");
    assert_eq!(r.waves.len(), 4);
    let sizes: Vec<u64> = r.waves.iter().map(|w| w.devices).collect();
    assert_eq!(sizes, vec![30, 120, 600, 750], "2/10/50/100 % of 1500");
    assert!(
        r.waves
            .windows(2)
            .all(|w| w[1].started_at_s > w[0].started_at_s),
        "waves start one after the other: {:?}",
        r.waves
    );
    // Executed = succeeded + failed + rejected + timed out, every target once.
    let c = &r.reported;
    assert_eq!(c.succeeded + c.failed + c.rejected + c.timed_out, r.targets);
    // Lost final reports and bricked devices are what times out.
    assert!(
        c.timed_out >= r.truth.reports_lost.min(c.timed_out) && r.truth.reports_lost > 0,
        "{r:#?}"
    );
    // Versions at the end: the committed devices run 1.1.0, the spares 1.0.0; bricked devices
    // run nothing anyone can see.
    let v = &out.last.versions;
    assert_eq!(
        v.iter().sum::<u64>() + r.truth.bricked,
        1600,
        "every device runs some version or is bricked: {v:?} {:?}",
        r.truth
    );
    assert_eq!(v[1], r.truth.succeeded, "versions: {v:?}");
    assert!(v[0] >= 100, "the spares stay on 1.0.0: {v:?}");
}

#[test]
fn waves_that_stop_short_of_every_target_complete_at_their_last_wave() {
    let out = run_waves("1.1.0", false, "[2, 10]", 1, None);
    let r = only(&out);
    assert_eq!(r.state, "completed", "{r:#?}");
    assert_eq!(r.reported.notified, 150, "10 % of 1500");
    assert_eq!(r.not_notified, 1350);
    assert!(r.finished_at_s.is_some());
    assert_eq!(r.waves.len(), 2);
}
