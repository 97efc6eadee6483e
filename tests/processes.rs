//! `fleetsim run --processes N` and `--shard K/N` end to end: the fleet cut into child
//! processes is the fleet of one; a child that dies is reported with its devices, never
//! silently dropped. Needs only the Rust toolchain (embedded brokers, virtual clock).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{at, fleetsim, report, run, text};

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// The demo's fleet on the virtual clock: the simulated broker's latencies are drawn per
/// device, so any cut of the fleet measures exactly the same values.
const VIRTUAL: &[&str] = &[
    "run",
    "scenarios/demo.toml",
    "--clock",
    "virtual",
    "--duration",
    "3m",
    "--devices",
    "600",
    "--headless",
    "--seed",
    "11",
];

#[test]
fn three_processes_report_exactly_what_one_process_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let one = dir.path().join("one.json");
    let three = dir.path().join("three.json");
    let out = run(&[VIRTUAL, &["--report", p(&one)]].concat());
    assert!(out.status.success(), "{}", text(&out));
    let run_dir = dir.path().join("run");
    let out = run(&[
        VIRTUAL,
        &[
            "--processes",
            "3",
            "--report",
            p(&three),
            "--run-dir",
            p(&run_dir),
        ],
    ]
    .concat());
    assert!(out.status.success(), "{}", text(&out));
    let (one, three) = (report(&one), report(&three));
    assert_eq!(at(&three, "devices.total"), 600);
    for key in [
        "messages.published",
        "messages.acked",
        "messages.failed",
        "messages.in_flight",
        "messages.buffered",
        "messages.unaccounted",
        "connections.attempts",
        "connections.succeeded",
        "connections.link_drops",
        "latency_us.publish_ack.p50",
        "latency_us.publish_ack.p90",
        "latency_us.publish_ack.p99",
        "latency_us.publish_ack.p999",
        "latency_us.publish_ack.max",
        "latency_us.publish_ack.count",
        "latency_us.connect.p99",
        "latency_us.connect.count",
        "ok",
    ] {
        assert!(!at(&one, key).is_null(), "{key} is in the report");
        assert_eq!(at(&one, key), at(&three, key), "{key}");
    }
    assert!(at(&one, "messages.published").as_u64().unwrap_or(0) > 1000);
    let parts = at(&three, "parts").as_array().expect("parts");
    assert_eq!(parts.len(), 3);
    for (k, part) in parts.iter().enumerate() {
        assert_eq!(part["shard"], format!("{k}/3"));
        assert_eq!(part["status"], "ok");
        assert_eq!(part["devices"], 200);
    }
    // Each child logged to its own folder, and its results stay for `report merge`.
    for k in 0..3 {
        assert!(
            run_dir
                .join(format!("shard-{k}-of-3/fleetsim.log"))
                .is_file()
        );
        assert!(
            run_dir
                .join(format!("results/shard-{k}-of-3.hlog"))
                .is_file()
        );
    }
    let merged = dir.path().join("merged.json");
    let out = run(&[
        "report",
        "merge",
        p(&run_dir.join("results")),
        "--report",
        p(&merged),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        at(&report(&merged), "latency_us.publish_ack.p99"),
        at(&three, "latency_us.publish_ack.p99")
    );
}

/// The pid of the child of `parent` whose command line has `needle`.
fn child_pid(parent: u32, needle: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let ppid: Option<u32> = after.split_whitespace().nth(1).and_then(|s| s.parse().ok());
        if ppid != Some(parent) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn a_child_that_dies_is_reported_with_its_devices_and_the_run_exits_3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run_dir = dir.path().join("run");
    let report_path = dir.path().join("report.json");
    let parent = fleetsim()
        .args([
            "run",
            "scenarios/demo.toml",
            "--processes",
            "3",
            "--devices",
            "300",
            "--duration",
            "8s",
            "--headless",
            "--report",
            p(&report_path),
            "--run-dir",
            p(&run_dir),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fleetsim starts");
    // Once shard 1/3 has its control API up, kill it as the OOM killer would.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run_dir.join("shard-1-of-3/api-addr").exists() {
        assert!(Instant::now() < deadline, "shard 1/3 did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child_pid(parent.id(), "--shard 1/3").expect("the child of shard 1/3");
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let out = parent.wait_with_output().expect("fleetsim ends");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(
        said.contains("shard 1/3 (") && said.contains("was killed by signal 9"),
        "{said}"
    );
    let r = report(&report_path);
    assert_eq!(at(&r, "ok"), false);
    let parts = at(&r, "parts").as_array().expect("parts");
    let lost = &parts[1];
    assert_eq!(lost["shard"], "1/3");
    assert!(
        lost["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("missing") && s.contains("signal 9")),
        "{lost}"
    );
    // The lost devices are named (the demo's first cohort: ids 40..80 of 0..120 at 300).
    assert!(
        lost["ranges"].as_object().is_some_and(|m| !m.is_empty()),
        "{lost}"
    );
    assert_eq!(parts[0]["status"], "ok");
    assert_eq!(parts[2]["status"], "ok");
    let counted = at(&r, "devices.total").as_u64().expect("total");
    let lost_devices = lost["devices"].as_u64().expect("devices");
    assert_eq!(counted + lost_devices, 300);
}

#[test]
fn cutting_options_that_cannot_work_are_refused_before_anything_starts() {
    let out = run(&["run", "--processes", "2", "--shard", "0/2", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = run(&["run", "scenarios/modbus-plant.toml", "--processes", "2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("cut MQTT fleets only"),
        "{}",
        text(&out)
    );
    let out = run(&["run", "--devices", "3", "--processes", "4", "--headless"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("at most one process per device"),
        "{}",
        text(&out)
    );
    // A child that cannot start says why, through the parent.
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker: PathBuf = dir.path().join("file");
    std::fs::write(&blocker, "").expect("write");
    let out = run(&[
        "run",
        "--processes",
        "2",
        "--headless",
        "--duration",
        "5s",
        "--run-dir",
        p(&dir.path().join("run")),
        "--event-log",
        p(&blocker.join("events.log")),
    ]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("events.log"), "{}", text(&out));
}

#[test]
fn dry_run_shows_each_shard_its_slice_and_the_slices_cover_the_fleet() {
    let mut next: Option<Vec<u64>> = None;
    for k in 0..4 {
        let out = fleetsim()
            .args([
                "run",
                "--shards-total",
                "4",
                "--dry-run",
                "--devices",
                "1001",
            ])
            .env("JOB_COMPLETION_INDEX", k.to_string())
            .output()
            .expect("fleetsim runs");
        let said = text(&out);
        assert!(out.status.success(), "{said}");
        assert!(said.contains(&format!("shard {k}/4 owns ")), "{said}");
        // "  cohort: ids A..B (...)": each cohort's slice starts where the previous one ended.
        let ranges: Vec<(u64, u64)> = said
            .lines()
            .filter_map(|l| l.split_once(": ids ").map(|(_, r)| r))
            .filter_map(|r| {
                let (a, rest) = r.split_once("..")?;
                let b: String = rest.chars().take_while(char::is_ascii_digit).collect();
                Some((a.parse().ok()?, b.parse().ok()?))
            })
            .collect();
        assert_eq!(ranges.len(), 4, "{said}");
        if let Some(ends) = &next {
            for ((a, _), end) in ranges.iter().zip(ends) {
                assert_eq!(a, end, "{said}");
            }
        }
        next = Some(ranges.iter().map(|r| r.1).collect());
    }
    let out = fleetsim()
        .args(["run", "--shards-total", "4", "--dry-run"])
        .env("JOB_COMPLETION_INDEX", "four")
        .output()
        .expect("fleetsim runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("JOB_COMPLETION_INDEX=\"four\""),
        "{}",
        text(&out)
    );
}
