//! The fuzz corpus as a regression test: every file in `fuzz/corpus/<target>/` and
//! `fuzz/artifacts/<target>/` goes through the same check the fuzz target runs
//! (`shardmq::fuzzing`), in a plain `cargo test`, so CI needs no cargo-fuzz or nightly.
//!
//! The `seed-*` files are generated, not typed: `seed_files_match_the_generators` fails when
//! they differ from `shardmq::fuzzing::seed_corpus()`; run it with
//! `SHARDMQ_WRITE_SEEDS=1 cargo test --test fuzz_corpus` to rewrite them.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use shardmq::fuzzing::{check_for, seed_corpus};

const TARGETS: [&str; 3] = ["mqtt_decode", "wal_frame", "kafka_request"];
const SEED_PREFIX: &str = "seed-";

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every regular file directly under `dir`, sorted; none if `dir` does not exist.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_and_artifact_file_passes_its_check() {
    let mut failures = Vec::new();
    for target in TARGETS {
        let check = check_for(target).expect("a check for every target");
        let corpus = files_in(&fuzz_dir().join("corpus").join(target));
        assert!(
            corpus.len() >= 10,
            "fuzz/corpus/{target} holds only {} files",
            corpus.len()
        );
        let artifacts = files_in(&fuzz_dir().join("artifacts").join(target));
        for path in corpus.iter().chain(&artifacts) {
            let data = fs::read(path).expect("readable corpus file");
            if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
                failures.push(path.display().to_string());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "inputs that fail their check: {failures:#?}"
    );
}

#[test]
fn seed_files_match_the_generators() {
    let write = std::env::var_os("SHARDMQ_WRITE_SEEDS").is_some();
    for (target, seeds) in seed_corpus() {
        let dir = fuzz_dir().join("corpus").join(target);
        let wanted: Vec<(PathBuf, Vec<u8>)> = seeds
            .into_iter()
            .map(|(name, data)| (dir.join(format!("{SEED_PREFIX}{name}")), data))
            .collect();
        let stale: Vec<PathBuf> = files_in(&dir)
            .into_iter()
            .filter(|p| is_seed(p) && !wanted.iter().any(|(w, _)| w == p))
            .collect();
        if write {
            fs::create_dir_all(&dir).expect("create the corpus directory");
            for p in &stale {
                fs::remove_file(p).expect("remove a stale seed");
            }
            for (path, data) in &wanted {
                fs::write(path, data).expect("write a seed");
            }
            continue;
        }
        assert!(
            stale.is_empty(),
            "seed files no generator makes: {stale:#?}"
        );
        for (path, data) in &wanted {
            let on_disk = fs::read(path).unwrap_or_default();
            assert!(
                on_disk == *data,
                "{} is missing or outdated; rerun with SHARDMQ_WRITE_SEEDS=1",
                path.display()
            );
        }
    }
}

fn is_seed(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(SEED_PREFIX))
}

/// The checks assert contracts, not the outcome of one decode: every MQTT seed passes at
/// every level, whatever that level makes of its bytes.
#[test]
fn mqtt_seeds_pass_at_every_level() {
    let mqtt = check_for("mqtt_decode").expect("mqtt check");
    let (_, seeds) = seed_corpus().remove(0);
    for (_, mut data) in seeds {
        for selector in 0..4 {
            data[0] = selector;
            mqtt(&data);
        }
    }
}
