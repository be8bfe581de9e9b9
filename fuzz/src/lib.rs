//! keel-fuzz: mutation fuzzing of what a stranger reaches, on stable Rust
//! (cargo-fuzz needs a nightly toolchain, which this project's machines do
//! not have). Each target starts from its seed corpus in
//! `fuzz/corpus/<target>/`; inputs are mutated (bytes, JSON tokens, Unicode
//! that breaks naive code) and an input whose outcome is new joins the
//! corpus for the rest of the run. An input that panics is written to
//! `fuzz/regressions/<target>/`, and every file there is replayed by the
//! crate's tests, so a crash once found stays a regression test.

pub mod mutate;
pub mod targets;

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use targets::Target;

/// Inputs are cut to this many bytes: large enough for every parser's
/// interesting paths, small enough for many runs a second.
pub const MAX_INPUT: usize = 8 * 1024;

pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The files of `fuzz/<kind>/<target>/`, sorted.
pub fn files(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join(kind).join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    out.sort();
    out.into_iter().filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b))).collect()
}

/// A target's seeds: its corpus, and for the Lambda events target every
/// sample event of `events/` as well.
pub fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = files("corpus", target);
    if target == "lambda_events" {
        let events = fuzz_dir().join("../events");
        for function in std::fs::read_dir(&events).into_iter().flatten().filter_map(Result::ok) {
            for file in std::fs::read_dir(function.path()).into_iter().flatten().filter_map(Result::ok) {
                if let Ok(bytes) = std::fs::read(file.path()) {
                    out.push((file.path(), bytes));
                }
            }
        }
    }
    out
}

/// Runs one input; `Err` with the panic's message if it panicked.
pub fn run_one(target: &Target, input: &[u8]) -> Result<String, String> {
    catch_unwind(AssertUnwindSafe(|| (target.run)(input))).map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
    })
}

pub struct Report {
    pub target: &'static str,
    pub runs: u64,
    pub outcomes: usize,
    pub crashes: Vec<(PathBuf, String)>,
}

/// Fuzzes `target` for `budget`, from `seed`. Crashing inputs are saved
/// under `fuzz/regressions/<target>/` and reported.
pub fn fuzz(target: &'static Target, budget: Duration, seed: u64) -> Report {
    let mut rng = mutate::Rng::new(seed);
    let mut corpus: Vec<Vec<u8>> = seeds(target.name).into_iter().map(|(_, b)| b).collect();
    if corpus.is_empty() {
        corpus.push(b"{}".to_vec());
    }
    let mut seen = HashSet::new();
    let mut report = Report { target: target.name, runs: 0, outcomes: 0, crashes: vec![] };
    let started = Instant::now();
    while started.elapsed() < budget && report.crashes.len() < 5 {
        let mut input = corpus[rng.below(corpus.len())].clone();
        for _ in 0..=rng.below(4) {
            let other = &corpus[rng.below(corpus.len())];
            mutate::mutate(&mut input, other, &mut rng);
        }
        input.truncate(MAX_INPUT);
        report.runs += 1;
        match run_one(target, &input) {
            Ok(outcome) => {
                if seen.insert(outcome) && corpus.len() < 4096 {
                    corpus.push(input);
                }
            }
            Err(message) => report.crashes.push((save_crash(target.name, &input), message)),
        }
    }
    report.outcomes = seen.len();
    report
}

fn save_crash(target: &str, input: &[u8]) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    input.hash(&mut h);
    let dir = fuzz_dir().join("regressions").join(target);
    let path = dir.join(format!("crash-{:016x}", h.finish()));
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input)) {
        eprintln!("could not save {}: {e}", path.display());
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_and_every_crash_once_found_runs_clean_on_every_target() {
        for target in &targets::TARGETS {
            let inputs: Vec<_> = seeds(target.name).into_iter().chain(files("regressions", target.name)).collect();
            assert!(!inputs.is_empty(), "{} has no seed corpus", target.name);
            for (path, bytes) in inputs {
                if let Err(message) = run_one(target, &bytes) {
                    panic!("{} on {}: {message}", target.name, path.display());
                }
            }
        }
    }

    #[test]
    fn a_short_run_of_each_target_finds_more_than_one_outcome() {
        for target in &targets::TARGETS {
            let report = fuzz(target, Duration::from_millis(300), 7);
            assert!(report.crashes.is_empty(), "{}: {:?}", target.name, report.crashes);
            assert!(report.outcomes > 1, "{} reached a single outcome in {} runs", target.name, report.runs);
        }
    }
}
