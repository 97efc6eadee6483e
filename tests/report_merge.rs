//! `fleetsim report merge`: the results of a run cut into processes (`--shard K/N --results
//! DIR`) add up to the report of one process over the same devices. Virtual clock (simulated
//! broker, every device deterministic from the seed): each run takes a moment.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

mod common;
use common::{report, root, run, text};

use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The small virtual run every test plays, with extra arguments (`--shard`, `--results`, ...).
fn run_demo(scenario: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        scenario,
        "--clock",
        "virtual",
        "--duration",
        "2m",
        "--devices",
        "400",
        "--headless",
        "--seed",
        "7",
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(
        o.status.code().is_some_and(|c| c <= 1),
        "{args:?}: {}",
        text(&o)
    );
    o
}

/// Runs the scenario as `n` processes writing their results into `dir`.
fn run_sliced(scenario: &str, n: u32, dir: &Path) {
    for k in 0..n {
        run_demo(
            scenario,
            &["--shard", &format!("{k}/{n}"), "--results", s(dir)],
        );
    }
}

/// `report merge PATHS --report OUT`: its output, and the report.
fn merge(paths: &[&Path], out: &Path) -> (Output, Option<Value>) {
    let mut args = vec!["report", "merge"];
    args.extend(paths.iter().map(|p| s(p)));
    args.extend(["--report", s(out)]);
    let o = run(&args);
    let r = out.exists().then(|| report(out));
    (o, r)
}

/// Every leaf of a report by its path (`latency_us.publish_ack.p99`, `slo[0].ok`).
fn leaves(v: &Value) -> BTreeMap<String, Value> {
    fn walk(v: &Value, path: String, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(v, p, out);
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(v, format!("{path}[{i}]"), out);
                }
            }
            _ => {
                out.insert(path, v.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(v, String::new(), &mut out);
    out
}

/// What differs between the runs of one fleet as one or several processes, and must: which
/// processes (ids, threads, wall time, CPU, memory), their parts, events (labelled by part).
fn depends_on_the_processes(key: &str) -> bool {
    [
        "run.id",
        "run.elapsed_s",
        "run.shards",
        "run.processes",
        "run.scenario_path",
        "process.",
        "parts",
        "events",
        "generator.steps_per_s",
    ]
    .iter()
    .any(|p| key.starts_with(p))
}

/// Every figure of `a` equals `b`'s, but for what depends on the processes.
fn assert_same_figures(a: &Value, b: &Value, what: &str) {
    let (a, b) = (leaves(a), leaves(b));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let differ: Vec<String> = keys
        .into_iter()
        .filter(|k| !depends_on_the_processes(k) && a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {:?} vs {:?}", a.get(k), b.get(k)))
        .collect();
    assert!(differ.is_empty(), "{what}:\n{}", differ.join("\n"));
}

#[test]
fn merging_the_shards_of_a_run_gives_the_report_of_one_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (d4, d1, d01) = (d.join("d4"), d.join("d1"), d.join("d01"));
    run_sliced("scenarios/demo.toml", 4, &d4);
    let whole = d.join("whole.json");
    let one = run_demo(
        "scenarios/demo.toml",
        &["--results", s(&d1), "--report", s(&whole)],
    );
    run_demo(
        "scenarios/demo.toml",
        &["--shard", "0/1", "--results", s(&d01)],
    );

    let (o4, m4) = merge(&[&d4], &d.join("m4.json"));
    let (o1, m1) = merge(&[&d1], &d.join("m1.json"));
    let (o01, m01) = merge(&[&d01], &d.join("m01.json"));
    let (m4, m1, m01) = (
        m4.expect("merged report"),
        m1.expect("merged report"),
        m01.expect("merged report"),
    );
    let whole = report(&whole);

    // Exit codes: as the run of one process.
    assert_eq!(o4.status.code(), one.status.code(), "{}", text(&o4));
    assert_eq!(o1.status.code(), one.status.code(), "{}", text(&o1));
    assert_eq!(o01.status.code(), one.status.code(), "{}", text(&o01));

    // Every counter, latency percentile, histogram bucket and SLO verdict.
    assert_same_figures(&m4, &m1, "4 processes merged vs 1 process merged");
    assert_same_figures(&m1, &whole, "1 process merged vs its own report");
    assert_same_figures(&m01, &m1, "--shard 0/1 vs no --shard");
    assert!(m4["latency_us"]["publish_ack"]["count"].as_u64() > Some(1000));
    assert!(m4["latency_us"]["connect"]["count"].as_u64() >= Some(400));
    assert_eq!(m4["messages"]["unaccounted"], 0);
    assert_eq!(m4["devices"]["total"], 400);
    assert_eq!(m4["slo"], whole["slo"]);
    assert_eq!(m4["ok"], whole["ok"]);

    // The parts, and the run as several processes.
    assert_eq!(m4["run"]["processes"], 4);
    assert_eq!(m4["complete"], true);
    let parts = m4["parts"].as_array().expect("parts");
    assert_eq!(parts.len(), 4);
    assert!(parts.iter().all(|p| p["status"] == "ok"), "{parts:?}");
    let devices: u64 = parts.iter().filter_map(|p| p["devices"].as_u64()).sum();
    assert_eq!(devices, 400);
    assert_eq!(m1["parts"][0]["shard"], "0/1");
    assert!(String::from_utf8_lossy(&o4.stdout).contains("4 of 4 shards merged"));
}

#[test]
fn a_missing_shard_exits_3_and_names_its_devices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d4 = dir.path().join("d4");
    run_sliced("scenarios/demo.toml", 4, &d4);
    let (_, complete) = merge(&[&d4], &dir.path().join("m4.json"));
    let complete = complete.expect("merged report");
    std::fs::remove_file(d4.join("shard-2-of-4.json")).expect("remove");

    let out = dir.path().join("m3.json");
    let (o, r) = merge(&[&d4], &out);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let r = r.expect("the incomplete report is still written");
    assert_eq!(r["complete"], false);
    assert_eq!(r["ok"], false);
    let missing = &r["parts"][2];
    assert_eq!(missing["shard"], "2/4");
    assert!(
        missing["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("missing: ")),
        "{missing}"
    );
    assert_eq!(missing["ranges"], complete["parts"][2]["ranges"]);
    assert!(missing["rss_peak_bytes"].is_null());
    assert_eq!(r["parts"][1]["status"], "ok");
    // The devices of the other slices are there.
    let others: u64 = [0, 1, 3]
        .iter()
        .filter_map(|i| r["parts"][*i]["devices"].as_u64())
        .sum();
    assert_eq!(r["devices"]["total"].as_u64(), Some(others));

    let stdout = String::from_utf8_lossy(&o.stdout);
    let (a, b) = {
        let m = &missing["ranges"]["meters"];
        (m[0].as_u64().unwrap_or(0), m[1].as_u64().unwrap_or(0))
    };
    assert!(
        stdout.contains("shard 2/4 (") && stdout.contains(&format!("meters {a}..{b}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("INCOMPLETE: 1 of 4 shards missing"),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("shard 2/4"),
        "{}",
        text(&o)
    );
}

#[test]
fn an_slo_failed_on_the_merged_view_exits_1_like_one_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let profiles = root().join("device-profiles");
    let scen = dir.path().join("strict.toml");
    std::fs::write(
        &scen,
        format!(
            r#"
name = "strict"
duration = "2m"
clock = "virtual"
[[cohorts]]
name = "meters"
profile = "{0}/smart-meter.toml"
count = 60
[[cohorts]]
name = "sensors"
profile = "{0}/env-sensor.toml"
count = 40
[[slo]]
name = "acks within one microsecond"
metric = "latency_us.publish_ack.p50"
max = 1
[[slo]]
name = "something was published"
metric = "messages.published"
min = 1
"#,
            profiles.display()
        ),
    )
    .expect("scenario written");
    let (d3, d1) = (dir.path().join("d3"), dir.path().join("d1"));
    run_sliced(s(&scen), 3, &d3);
    let one = run_demo(s(&scen), &["--results", s(&d1)]);
    assert_eq!(one.status.code(), Some(1), "{}", text(&one));
    let (o3, m3) = merge(&[&d3], &dir.path().join("m3.json"));
    let (_, m1) = merge(&[&d1], &dir.path().join("m1.json"));
    assert_eq!(o3.status.code(), Some(1), "{}", text(&o3));
    let (m3, m1) = (m3.expect("report"), m1.expect("report"));
    assert_eq!(m3["slo"], m1["slo"]);
    assert_eq!(m3["slo"][0]["ok"], false);
    assert_eq!(m3["slo"][1]["ok"], true);
    assert_same_figures(&m3, &m1, "3 processes vs 1");
    assert!(String::from_utf8_lossy(&o3.stdout).contains("FAIL  acks within one microsecond"));
}

#[test]
fn inputs_that_are_not_parts_of_one_run_exit_2_and_name_the_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d2, d3) = (dir.path().join("d2"), dir.path().join("d3"));
    run_sliced("scenarios/demo.toml", 2, &d2);
    run_demo(
        "scenarios/demo.toml",
        &["--shard", "1/3", "--results", s(&d3)],
    );
    let out = dir.path().join("m.json");

    let (a, b) = (d2.join("shard-0-of-2.json"), d3.join("shard-1-of-3.json"));
    let (o, r) = merge(&[&a, &b], &out);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(r.is_none(), "no report from inputs that do not fit");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains(s(&a)) && e.contains(s(&b)) && e.contains("2 and 3 shards"),
        "{e}"
    );

    // The same shard twice.
    let copy = dir.path().join("copy");
    std::fs::create_dir_all(&copy).expect("mkdir");
    for f in ["shard-0-of-2.json", "shard-0-of-2.hlog"] {
        std::fs::copy(d2.join(f), copy.join(f)).expect("copy");
    }
    let (o, _) = merge(&[&d2, &copy], &out);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("both hold the results of shard 0/2"), "{e}");

    // A log cut short: the file and the line.
    let log = d2.join("shard-1-of-2.hlog");
    let t = std::fs::read_to_string(&log).expect("log");
    std::fs::write(&log, &t[..t.len() - 10]).expect("cut");
    let (o, _) = merge(&[&d2], &out);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains(s(&log)) && e.contains(&format!("line {}: truncated", t.lines().count())),
        "{e}"
    );

    // Nothing there.
    let (o, _) = merge(&[&dir.path().join("nowhere")], &out);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("nowhere"), "{}", text(&o));
}
