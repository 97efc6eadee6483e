//! What the binary's end-to-end tests share: starting `fleetsim` as a user would (from the
//! repository, no colours, no RUST_LOG or JOB_COMPLETION_INDEX from the caller's environment),
//! and reading what it said and wrote.

// Each test file uses its own part of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The repository (the scenarios, profiles and firmware models are found from here).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fleetsim() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fleetsim"));
    c.current_dir(root())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("JOB_COMPLETION_INDEX");
    c
}

pub fn run(args: &[&str]) -> Output {
    fleetsim().args(args).output().expect("fleetsim runs")
}

/// What it printed, stdout then stderr.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn report(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("report written"))
        .expect("report is JSON")
}

/// `report["messages"]["acked"]` as `at(&report, "messages.acked")`.
pub fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}
