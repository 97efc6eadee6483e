//! Bad input to fleet-core's entry points: scenario, profile and firmware files as `fleetsim run`
//! and `fleetsim validate` load them, and messages on a device's command and job topics. The
//! checks live in `fuzz/harness/fleet_core.rs`, shared with the fuzz targets: no panic, an error
//! that explains (a message, naming a file the loader read), devices that publish only JSON.
//!
//! Here they run under proptest (arbitrary bytes, and shipped files with one line changed) with
//! a fixed seed and no persistence file, and over every file of the regression corpus
//! (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`). docs/reliability.md has the rest.

#[path = "../../../fuzz/harness/fleet_core.rs"]
mod harness;
#[path = "../../../fuzz/harness/replay.rs"]
mod replay;

use proptest::prelude::*;
use proptest::sample::Index;
use replay::{config, replay, root};

#[test]
fn the_regression_corpus_of_every_fleet_core_target_passes() {
    replay("scenario_file", harness::scenario_file);
    replay("profile_file", harness::profile_file);
    replay("firmware_file", harness::firmware_file);
    replay("device_message", harness::device_message);
}

// ------------------------------------------------------------------ files -------------------

/// Values that a key may not take, or that sit at an edge.
const ODD_VALUES: &[&str] = &[
    "-1",
    "0",
    "1e309",
    "-1e309",
    "nan",
    "inf",
    "18446744073709551616",
    "4294967296",
    "\"\"",
    "\"x\"",
    "\"-5s\"",
    "\"0s\"",
    "\"99999999999d\"",
    "\"{nope}\"",
    "\"{id\"",
    "\"a/+/#\"",
    "[]",
    "[1, \"a\"]",
    "{}",
    "true",
    "\"\\u0000\"",
    "\"é\"",
];

/// One change to one line of a valid file.
#[derive(Clone, Debug)]
enum Change {
    /// The value after `=` becomes one of `ODD_VALUES`.
    Value(Index),
    /// The line is replaced.
    Replace(String),
    Delete,
    Duplicate,
    /// One byte of the line is XORed with this (non-zero) mask.
    Flip(Index, u8),
    /// The file ends in the middle of this line.
    Cut(Index),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => any::<Index>().prop_map(Change::Value),
        2 => "[a-z_.\\[\\]]{1,16} ?= ?[-0-9a-z\"{}\\[\\],. ]{0,16}".prop_map(Change::Replace),
        1 => any::<String>().prop_map(Change::Replace),
        1 => Just(Change::Delete),
        1 => Just(Change::Duplicate),
        2 => (any::<Index>(), 1u8..).prop_map(|(i, m)| Change::Flip(i, m)),
        1 => any::<Index>().prop_map(Change::Cut),
    ]
}

/// `text` with `change` made to line `line` (of its non-comment lines, so most changes land
/// on a key).
fn changed(text: &str, line: Index, change: &Change) -> Vec<u8> {
    let lines: Vec<&str> = text.lines().collect();
    let keys: Vec<usize> = (0..lines.len())
        .filter(|&i| {
            let t = lines[i].trim();
            !t.is_empty() && !t.starts_with('#')
        })
        .collect();
    let Some(&at) = keys.get(line.index(keys.len().max(1))) else {
        return text.as_bytes().to_vec();
    };
    let mut out: Vec<Vec<u8>> = lines.iter().map(|l| l.as_bytes().to_vec()).collect();
    match change {
        Change::Value(i) => {
            if let Some((key, _)) = lines[at].split_once('=') {
                let value = ODD_VALUES[i.index(ODD_VALUES.len())];
                out[at] = format!("{key}= {value}").into_bytes();
            }
        }
        Change::Replace(s) => out[at] = s.clone().into_bytes(),
        Change::Delete => {
            out.remove(at);
        }
        Change::Duplicate => out.insert(at, out[at].clone()),
        Change::Flip(i, mask) => {
            let l = &mut out[at];
            if !l.is_empty() {
                let j = i.index(l.len());
                l[j] ^= mask;
            }
        }
        Change::Cut(i) => {
            let j = i.index(out[at].len() + 1);
            out[at].truncate(j);
            out.truncate(at + 1);
        }
    }
    out.join(&b'\n')
}

/// The shipped files of one folder, as (name, text).
fn shipped(folder: &str) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(root().join(folder))
        .expect("a shipped folder")
        .map(|e| e.expect("a readable folder").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("a readable shipped file");
            (p.display().to_string(), text)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no shipped files in {folder}");
    files
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn arbitrary_bytes_as_any_config_file_give_errors_that_name_the_file(
        data in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        harness::scenario_file(&data);
        harness::profile_file(&data);
        harness::firmware_file(&data);
    }

    #[test]
    fn arbitrary_text_as_any_config_file_gives_errors_that_name_the_file(
        text in "([a-z_\\[\\]\\.]{0,12}( ?= ?)?[-0-9a-z\"{}\\[\\],.]{0,12}\n){0,12}",
    ) {
        harness::scenario_file(text.as_bytes());
        harness::profile_file(text.as_bytes());
        harness::firmware_file(text.as_bytes());
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn a_shipped_scenario_with_one_line_changed_loads_or_explains(
        file in any::<Index>(), line in any::<Index>(), change in change(),
    ) {
        let files = shipped("scenarios");
        let (_, text) = &files[file.index(files.len())];
        harness::scenario_file(&changed(text, line, &change));
    }

    #[test]
    fn a_shipped_profile_with_one_line_changed_loads_or_explains(
        file in any::<Index>(), line in any::<Index>(), change in change(),
    ) {
        let files = shipped("device-profiles");
        let (_, text) = &files[file.index(files.len())];
        harness::profile_file(&changed(text, line, &change));
    }

    #[test]
    fn a_shipped_firmware_model_with_one_line_changed_loads_or_explains(
        file in any::<Index>(), line in any::<Index>(), change in change(),
    ) {
        let files = shipped("firmware-models");
        let (_, text) = &files[file.index(files.len())];
        harness::firmware_file(&changed(text, line, &change));
    }
}

// ------------------------------------------------------------------ device messages ---------

/// A JSON value of the kinds backends send (and some they should not).
fn json_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|x| if x.is_finite() {
            format!("{x:e}")
        } else {
            "1e999".to_string()
        }),
        any::<String>().prop_map(|s| serde_json::Value::String(s).to_string()),
        "[0-9.a-z-]{0,12}".prop_map(|s| format!("\"{s}\"")),
        Just("[]".to_string()),
        Just("{}".to_string()),
    ]
}

/// A command or job message: known keys with random values, or random keys.
fn message() -> impl Strategy<Value = String> {
    let keys = prop_oneof![
        Just("cmd"),
        Just("interval_ms"),
        Just("request_id"),
        Just("job_id"),
        Just("version"),
        Just("url"),
        Just("size"),
        Just("sha256"),
        Just("cancel"),
        Just("execution"),
        Just("jobId"),
        Just("jobDocument"),
        Just("operation"),
        Just("status"),
        Just("versionNumber"),
        Just("executionState"),
        Just("code"),
        Just("clientToken"),
    ];
    let cmds = prop_oneof![
        Just("\"set_interval\"".to_string()),
        Just("\"reboot\"".to_string()),
        Just("\"ping\"".to_string()),
        Just("\"report_now\"".to_string()),
        json_value(),
    ];
    (
        proptest::collection::vec((keys, json_value()), 0..6),
        cmds,
        any::<bool>(),
    )
        .prop_map(|(fields, cmd, nested)| {
            let mut body: Vec<String> = vec![format!("\"cmd\":{cmd}")];
            body.extend(fields.iter().map(|(k, v)| format!("\"{k}\":{v}")));
            let obj = format!("{{{}}}", body.join(","));
            if nested {
                // The shape of an AWS IoT Jobs execution.
                format!(
                    "{{\"execution\":{{\"jobId\":\"j-1\",\"status\":\"QUEUED\",\
                     \"versionNumber\":1,\"jobDocument\":{obj}}}}}"
                )
            } else {
                obj
            }
        })
}

const TOPICS: &[&str] = &[
    "cmd",
    "command",
    "job",
    "aws/notify-next",
    "aws/start-next/accepted",
    "aws/start-next/rejected",
    "aws/j-1/update/accepted",
    "aws/j-1/update/rejected",
    "aws/j-1/get/accepted",
    "aws/j-1/get/rejected",
    "aws/$next/get/accepted",
    "other/topic",
];

/// A device-message input (see `harness::device_message`): a device, then messages on its
/// topics, wakes and link losses.
fn device_input() -> impl Strategy<Value = Vec<u8>> {
    let op = prop_oneof![
        4 => (any::<Index>(), message())
            .prop_map(|(t, m)| format!("{} {m}", TOPICS[t.index(TOPICS.len())])),
        2 => Just("wake".to_string()),
        1 => Just("lost".to_string()),
    ];
    (
        any::<bool>(),
        proptest::collection::vec(op, 1..12),
        proptest::option::of((any::<Index>(), 1u8..)),
    )
        .prop_map(|(aws, ops, flip)| {
            let mut text = if aws { "aws" } else { "generic" }.to_string();
            for op in ops {
                text.push('\n');
                text.push_str(&op);
            }
            let mut bytes = text.into_bytes();
            if let Some((i, mask)) = flip {
                let j = i.index(bytes.len());
                bytes[j] ^= mask;
            }
            bytes
        })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_bytes_to_a_device_are_answered_or_ignored(
        data in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        harness::device_message(&data);
        let mut framed = b"generic\ncmd ".to_vec();
        framed.extend_from_slice(&data);
        harness::device_message(&framed);
    }

    #[test]
    fn commands_and_jobs_with_odd_fields_get_well_formed_answers(data in device_input()) {
        harness::device_message(&data);
    }
}
