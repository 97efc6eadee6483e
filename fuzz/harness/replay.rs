//! What every crate's `tests/bad_input.rs` shares (included with `#[path]`): the proptest
//! settings, and the replay of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`.

use std::path::{Path, PathBuf};

use proptest::test_runner::{Config as ProptestConfig, RngSeed};

/// Few cases, a fixed seed, no regression files: the same run every time, in well under a
/// second or two per property in a debug build. Longer searches are the fuzzers' job.
pub fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(7),
        ..ProptestConfig::default()
    }
}

/// The repository's root (the test's crate is `crates/<name>`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The files of `fuzz/<kind>/<target>/`, sorted (none if the folder does not exist).
fn corpus_files(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = root().join("fuzz").join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable corpus folder").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every corpus and regression file of `target` through `check`.
pub fn replay(target: &str, check: fn(&[u8])) {
    let corpus = corpus_files("corpus", target);
    assert!(!corpus.is_empty(), "fuzz/corpus/{target}/ has no files");
    for path in corpus.iter().chain(&corpus_files("regressions", target)) {
        let data = std::fs::read(path).expect("a readable corpus file");
        let run = std::panic::catch_unwind(|| check(&data));
        assert!(run.is_ok(), "{} fails its checks", path.display());
    }
}
