//! Steering a run while it goes (`Control`): looking at devices changes nothing they do, a
//! pause freezes simulated time, an injected fault reaches the share of the fleet it names.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_core::SimDuration;
use fleet_core::load::{EmbeddedSource, load_fleet};
use fleet_core::scenario::{FleetEvent, FleetEventKind};
use fleet_engine::{Control, RunOptions, RunPlan};

#[allow(dead_code)] // this file uses the log reader only
mod common;

const FIRMWARE: &str = "name = \"cfw\"\n[[versions]]\nversion = \"0.9.0\"\nimage_size_kb = 64\nboot_s = { dist = \"uniform\", min = 1.0, max = 3.0 }\n";

const PROFILE: &str = r#"
name = "probe"
[identity]
device_id = "probe-{id:04}"
telemetry_topic = "p/{device_id}"
command_topic = "p/{device_id}/cmd"
response_topic = "p/{device_id}/res"
status_topic = "p/{device_id}/status"
[reporting]
interval = "10s"
jitter = 0.1
qos = 1
offline_buffer = 8
[sensors.flow]
kind = "random_walk"
start = 10.0
step = 0.5
min = 0.0
max = 40.0
[sensors.temp]
kind = "sine"
mean = 12.0
amplitude = 3.0
period = "30m"
noise = 0.2
[link]
latency_ms = { dist = "lognormal", median = 30, sigma = 0.5 }
loss = 0.01
mtbf = "20m"
mttr_s = { dist = "exponential", mean = 10 }
[firmware]
model = "cfw.toml"
version = "0.9.0"
"#;

fn files(duration: &str, clock: &str, devices: u32, mqtt: bool) -> Vec<(&'static str, String)> {
    vec![
        (
            "c.toml",
            format!(
                "name = \"ctl\"\nseed = 11\nduration = \"{duration}\"\nclock = \"{clock}\"\n[ramp]\nmode = \"all\"\n[[cohorts]]\nname = \"probes\"\nprofile = \"probe.toml\"\ncount = {devices}\nmqtt = {mqtt}\n"
            ),
        ),
        ("probe.toml", PROFILE.to_string()),
        ("cfw.toml", FIRMWARE.to_string()),
    ]
}

fn plan(files: Vec<(&'static str, String)>, shards: u16) -> Arc<RunPlan> {
    let files: Vec<(&'static str, &'static str)> = files
        .into_iter()
        .map(|(name, text)| (name, &*Box::leak(text.into_boxed_str())))
        .collect();
    let files: &'static [(&'static str, &'static str)] = Box::leak(files.into_boxed_slice());
    let fleet = load_fleet(&EmbeddedSource(files), Path::new("c.toml")).expect("valid scenario");
    Arc::new(RunPlan::new(
        Arc::new(fleet),
        shards,
        fleet_core::defaults::VIRTUAL_EPOCH_MS,
    ))
}

fn run_virtual(
    plan: Arc<RunPlan>,
    control: Arc<Control>,
    log: &Path,
    observe: impl FnMut(&fleet_metrics::FleetSnapshot),
) -> fleet_engine::RunOutcome {
    let opts = RunOptions {
        event_log: Some(log.to_path_buf()),
        control: Some(control),
        ..RunOptions::default()
    };
    fleet_engine::run_virtual(plan, &opts, Arc::new(AtomicBool::new(false)), observe)
        .expect("run completes")
}

#[test]
fn looking_at_devices_while_a_run_goes_changes_nothing_they_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (quiet, watched) = (dir.path().join("quiet.log"), dir.path().join("watched.log"));
    let p = plan(files("3h", "virtual", 300, true), 2);
    run_virtual(p.clone(), Control::new(2), &quiet, |_| {});

    let control = Control::new(2);
    let done = Arc::new(AtomicBool::new(false));
    let looked = std::thread::scope(|s| {
        let looker = s.spawn(|| {
            let mut details = Vec::new();
            // By number and by rendered id, both shards, until the run is over.
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for key in ["17", "probe-0042", "299"] {
                    if let Ok(d) = control.device(&p, key) {
                        details.push(d);
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            details
        });
        run_virtual(p.clone(), control.clone(), &watched, |_| {});
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        looker.join().expect("looker")
    });
    assert!(!looked.is_empty(), "the run answered lookups");
    assert_eq!(
        common::sorted_lines(&quiet),
        common::sorted_lines(&watched),
        "looking at devices changed the fleet's behaviour"
    );
    let d = looked
        .iter()
        .rev()
        .find(|d| d.id == 42)
        .expect("device 42 was found by its id");
    assert_eq!(d.device_id, "probe-0042");
    assert_eq!(d.cohort, "probes");
    assert_eq!(d.firmware, "cfw 0.9.0");
    assert_eq!(
        d.sensors
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["flow", "temp"]
    );
    assert!(d.sensors.iter().all(|s| s.value.is_finite()));
    // Its history is what the event log says it did, from when it was first looked at.
    if let Some(last) = d.recent.last() {
        assert!(last.sim_time_s >= d.watched_since_s);
    }
    let later = looked.iter().rfind(|d| d.id == 42).expect("42");
    assert!(
        later.recent.len() <= fleet_engine::control::WATCH_LINES,
        "history is bounded"
    );
    assert!(
        matches!(control.device(&p, "probe-9999"), Err(e) if e.kind == fleet_metrics::ErrorKind::NotFound || e.kind == fleet_metrics::ErrorKind::Conflict)
    );
}

#[test]
fn unknown_devices_are_not_found_with_a_message_that_says_what_to_give() {
    let p = plan(files("1m", "virtual", 10, true), 1);
    let control = Control::new(1);
    let e = control.device(&p, "probe-0010").expect_err("only 0 to 9");
    assert_eq!(e.kind, fleet_metrics::ErrorKind::NotFound);
    assert!(e.message.contains("0 to 9"), "{}", e.message);
    let e = control.device(&p, "nonsense").expect_err("no digits");
    assert_eq!(e.kind, fleet_metrics::ErrorKind::NotFound);
}

#[test]
fn an_injected_outage_reaches_its_share_of_the_fleet_and_is_in_the_event_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("events.log");
    let p = plan(files("2h", "virtual", 400, true), 2);
    let control = Control::new(2);
    let outage = FleetEvent {
        at: SimDuration::ZERO,
        fraction: 0.25,
        cohort: Some("probes".into()),
        devices: None,
        kind: FleetEventKind::Outage {
            duration: SimDuration::from_secs(300),
        },
    };
    control.inject(outage, 0).expect("injected");
    run_virtual(p, control, &log, |_| {});
    let lines = common::sorted_lines(&log);
    let mut hit: Vec<&str> = lines
        .iter()
        .filter(|l| l.contains(" outage until_us="))
        .map(|l| &l[..10])
        .collect();
    hit.dedup();
    // A quarter of 400, drawn per device: far from 0 and from 400.
    assert!((60..=140).contains(&hit.len()), "{} devices", hit.len());
}

#[test]
fn a_paused_run_stands_still_until_resumed_and_then_ends_as_if_nothing_happened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (plain, paused) = (dir.path().join("plain.log"), dir.path().join("paused.log"));
    let p = plan(files("2h", "virtual", 200, true), 2);
    run_virtual(p.clone(), Control::new(2), &plain, |_| {});

    let control = Control::new(2);
    control.pause().expect("pause");
    let seen: Mutex<Vec<(f64, u64)>> = Mutex::new(Vec::new());
    let started = Instant::now();
    let out = run_virtual(p, control.clone(), &paused, |s| {
        let mut seen = seen.lock().expect("lock");
        seen.push((s.sim_time_s, s.totals.steps));
        // Three snapshots while paused, then go on.
        if seen.len() == 3 {
            control.resume().expect("resume");
        }
    });
    let seen = seen.into_inner().expect("lock");
    assert!(started.elapsed() >= Duration::from_secs(2), "it waited");
    assert_eq!(seen[0], seen[1], "paused: neither time nor steps moved");
    assert_eq!(seen[1], seen[2]);
    assert!(out.last.sim_time_s >= 2.0 * 3600.0);
    assert_eq!(
        common::sorted_lines(&plain),
        common::sorted_lines(&paused),
        "a pause on the virtual clock changes nothing the fleet does"
    );
}

#[test]
fn a_paused_wall_clock_run_freezes_simulated_time_and_makes_up_for_it() {
    // No broker: every connect fails at once, devices report into their offline buffers.
    let p = plan(files("3s", "wall", 50, true), 2);
    let control = Control::new(2);
    let opts = RunOptions {
        control: Some(control.clone()),
        ..RunOptions::default()
    };
    let seen: Mutex<Vec<(bool, f64, u64)>> = Mutex::new(Vec::new());
    let out = fleet_engine::run_wall(
        p,
        |_| fleet_engine::IdleAdapter::default(),
        &opts,
        Arc::new(AtomicBool::new(false)),
        |s| {
            let mut seen = seen.lock().expect("lock");
            seen.push((s.paused, s.sim_time_s, s.totals.steps));
            match seen.len() {
                1 => control.pause().expect("pause"),
                4 => control.resume().expect("resume"),
                _ => {}
            }
        },
    )
    .expect("run");
    let seen = seen.into_inner().expect("lock");
    // Snapshots 3 and 4 were taken a second apart while paused.
    let (a, b) = (seen[2], seen[3]);
    assert!(a.0 && b.0, "{seen:?}");
    assert_eq!(
        (a.1, a.2),
        (b.1, b.2),
        "time and steps stood still: {seen:?}"
    );
    // The run still lasted its 3 simulated seconds, so at least 2 more in real time.
    assert!(out.last.sim_time_s >= 3.0, "{seen:?}");
    assert!(out.elapsed >= Duration::from_secs(5), "{:?}", out.elapsed);
}
