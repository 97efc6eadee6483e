//! Every file fleetsim ships (device profiles, firmware models, scenarios) and every test fixture
//! is loaded here, so a change to the schema that breaks a shipped file, or a fixture whose error
//! message drifts, fails the build.
//!
//! Invalid fixtures (`tests/fixtures/invalid/*.toml`) start with `# expect: <text>`: validation
//! must fail, and its message must contain that text and name the fixture. A fixture whose error
//! is reported against another file (a scenario naming a profile that does not exist) says which
//! with a second line, `# names: <text>`.

use std::path::{Path, PathBuf};

use fleet_core::load::{FileKind, FsSource, load_fleet, normalize, validate_file};

fn workspace_root() -> PathBuf {
    normalize(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// The `*.toml` files of a folder under the workspace root, sorted, at least one.
fn toml_files(folder: &str) -> Vec<PathBuf> {
    let dir = workspace_root().join(folder);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
                .path()
        })
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no .toml files", dir.display());
    files
}

/// Validates every file of `folder`; returns one line per file that failed or was not of `kind`.
fn problems_in(folder: &str, kind: Option<FileKind>) -> Vec<String> {
    let mut problems = Vec::new();
    for path in toml_files(folder) {
        match validate_file(&FsSource, &path) {
            Ok(found) if kind.is_none_or(|k| k == found) => {}
            Ok(found) => problems.push(format!(
                "{}: is a {found:?}, expected a {kind:?}",
                path.display()
            )),
            Err(errors) => problems.push(errors.to_string()),
        }
    }
    problems
}

/// The text after `# <tag>:` on one of the file's leading comment lines.
fn header(text: &str, tag: &str) -> Option<String> {
    let prefix = format!("# {tag}:");
    text.lines()
        .take_while(|line| line.starts_with('#'))
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|rest| rest.trim().to_string())
        .filter(|rest| !rest.is_empty())
}

#[test]
fn every_shipped_device_profile_validates_with_its_firmware_model() {
    let problems = problems_in("device-profiles", Some(FileKind::Profile));
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn every_shipped_firmware_model_validates() {
    let problems = problems_in("firmware-models", Some(FileKind::Firmware));
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn every_shipped_scenario_validates_with_everything_it_names() {
    let problems = problems_in("scenarios", Some(FileKind::Scenario));
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn every_valid_fixture_validates() {
    let problems = problems_in("tests/fixtures/valid", None);
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn every_invalid_fixture_fails_with_its_expected_message_naming_the_file() {
    let files = toml_files("tests/fixtures/invalid");
    assert!(files.len() >= 12, "only {} invalid fixtures", files.len());
    let mut problems = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let Some(expect) = header(&text, "expect") else {
            problems.push(format!(
                "{}: does not start with `# expect: <message text>`",
                path.display()
            ));
            continue;
        };
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let names = header(&text, "names").unwrap_or(file_name);
        match validate_file(&FsSource, &path) {
            Ok(kind) => problems.push(format!(
                "{}: validated as a {kind:?}, expected: {expect}",
                path.display()
            )),
            Err(errors) => {
                let message = errors.to_string();
                if !message.contains(&expect) {
                    problems.push(format!(
                        "{}: message lacks {expect:?}:\n    {message}",
                        path.display()
                    ));
                }
                if !message.contains(&names) {
                    problems.push(format!(
                        "{}: message does not name {names:?}:\n    {message}",
                        path.display()
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn scaling_the_demo_to_a_thousand_devices_keeps_the_cohort_proportions() {
    let path = workspace_root().join("scenarios/demo.toml");
    let mut fleet = load_fleet(&FsSource, &path).unwrap_or_else(|e| panic!("{e}"));
    let before: Vec<u32> = fleet.cohorts.iter().map(|c| c.count).collect();
    let total_before = fleet.total_devices();
    assert!(before.len() > 1, "the demo should mix several cohorts");

    fleet.scale_to(1000);

    assert_eq!(fleet.total_devices(), 1000);
    let mut next_device = 0;
    for (cohort, old) in fleet.cohorts.iter().zip(&before) {
        let exact = f64::from(*old) * 1000.0 / f64::from(total_before);
        assert!(
            (f64::from(cohort.count) - exact).abs() < 1.0,
            "cohort {} has {} devices, in proportion it would have {exact}",
            cohort.name,
            cohort.count
        );
        assert_eq!(
            cohort.first_device, next_device,
            "cohort {} is not numbered on",
            cohort.name
        );
        next_device += cohort.count;
    }
}
