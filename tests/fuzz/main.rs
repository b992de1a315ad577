//! Fuzz targets, run as part of `cargo test`.
//!
//! libFuzzer (cargo-fuzz) needs a nightly toolchain, which this project does not use, so the
//! targets are structure-aware property tests on stable Rust (proptest): each builds inputs
//! shaped like the real thing (gRPC frames around protobuf messages made from the catalog's
//! field paths, gzip streams of several members, JWTs, TOML configs, policy test files),
//! damages them, and checks properties with an oracle where one exists (prost's wire decoding
//! with the server's merge rules, flate2's own inflation, the framing arithmetic), not only
//! "no panic". Each target first replays its seed corpus in `tests/fuzz-corpus/<target>/`
//! (regressions found so far, and inputs that once aborted the process), then runs a bounded
//! number of generated cases.
//!
//! `FLOWGATE_FUZZ_CASES` sets the number of cases per target (per catalog method for
//! inspection), `FLOWGATE_FUZZ_SEED` fixes the random seed; docs/fuzzing.md says how to run
//! them for longer.

mod config;
mod framing;
mod gzip;
mod inspection;
mod jwt;
mod proto;
mod stamp;

#[path = "../support/mod.rs"]
mod support;

use std::fmt::Debug;
use std::path::Path;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};

/// The number of generated cases per target: `FLOWGATE_FUZZ_CASES`, or `default` (sized so the
/// whole suite stays within about a minute of a debug build on two cores).
pub fn cases(default: u32) -> u32 {
    match std::env::var("FLOWGATE_FUZZ_CASES") {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("FLOWGATE_FUZZ_CASES `{text}` is not a number")),
        Err(_) => default,
    }
}

/// The seed of this run: `FLOWGATE_FUZZ_SEED`, or a new one each run (so the suite keeps
/// exploring); a failure prints the seed that reproduces it.
fn seed() -> u64 {
    match std::env::var("FLOWGATE_FUZZ_SEED") {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("FLOWGATE_FUZZ_SEED `{text}` is not a number")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64 ^ u64::from(std::process::id())),
    }
}

/// Runs `check` on `cases` inputs from `strategy`; a failing input is shrunk and reported with
/// the seed, ready to be added to the corpus.
pub fn run<S>(target: &str, cases: u32, strategy: S, check: impl Fn(S::Value) -> Result<(), String>)
where
    S: Strategy,
    S::Value: Debug,
{
    let seed = seed();
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 2_000,
        max_shrink_time: 60_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    match runner.run(&strategy, |value| check(value).map_err(TestCaseError::fail)) {
        Ok(()) => {}
        Err(TestError::Fail(reason, input)) => {
            panic!("fuzz target {target} failed (FLOWGATE_FUZZ_SEED={seed}): {reason}\nminimal input: {input:#?}")
        }
        Err(TestError::Abort(reason)) => panic!("fuzz target {target} aborted (FLOWGATE_FUZZ_SEED={seed}): {reason}"),
    }
}

/// The seed corpus of `target`: every file in `tests/fuzz-corpus/<target>/`, by name, sorted.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus").join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus directory entry").path();
            let name = path.file_name().expect("a file name").to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            (name, bytes)
        })
        .collect();
    files.sort();
    files
}
