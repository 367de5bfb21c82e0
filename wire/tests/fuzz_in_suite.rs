//! The fuzz checks (`tests/fuzz/`, the same ones the libFuzzer targets in
//! `fuzz/` run) over a bounded, seeded stream of inputs in every test run:
//! each target's kept corpus (`fuzz/corpus/<target>/`, grown by the
//! CPU-hour runs), then mutations of it (bit flips, byte changes, insertions,
//! deletions, splices) for `TALLY_FUZZ_MS` milliseconds per target (default
//! 1 000). A failing input is written to `target/fuzz-in-suite-<target>.bin`
//! and its hex printed, so it can be replayed with the libFuzzer target.

mod fuzz;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A tiny deterministic generator (splitmix64): the run is reproducible
/// from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|entry| std::fs::read(entry.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    // Deterministic order whatever the directory listing says.
    inputs.sort();
    inputs
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], out: &mut Vec<u8>) {
    out.clear();
    if seeds.is_empty() || rng.below(8) == 0 {
        let len = rng.below(96);
        out.extend((0..len).map(|_| rng.next() as u8));
        return;
    }
    out.extend_from_slice(&seeds[rng.below(seeds.len())]);
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !out.is_empty() => {
                let at = rng.below(out.len());
                out[at] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let at = rng.below(out.len());
                out[at] = rng.next() as u8;
            }
            2 => {
                let at = rng.below(out.len() + 1);
                out.insert(at, rng.next() as u8);
            }
            3 if !out.is_empty() => {
                let at = rng.below(out.len());
                out.remove(at);
            }
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                let at = rng.below(out.len() + 1);
                let take = rng.below(other.len() + 1);
                out.truncate(at);
                out.extend_from_slice(&other[..take]);
            }
            _ => {
                // Interesting lengths and bytes: ASCII digits and spaces
                // matter to SoupBinTCP's number fields.
                let at = rng.below(out.len().max(1));
                if let Some(byte) = out.get_mut(at) {
                    *byte = b" 0123456789\xff\x00"[rng.below(13)];
                }
            }
        }
    }
}

fn failing_input_path(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(format!("fuzz-in-suite-{target}.bin"))
}

fn run(target: &str, check: fn(&[u8])) -> (usize, usize) {
    let budget = Duration::from_millis(
        std::env::var("TALLY_FUZZ_MS")
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(1_000),
    );
    let seeds = corpus(target);
    let mut rng = Rng(0x7A11_F022 ^ target.len() as u64);
    let mut input = Vec::new();
    let mut runs = 0usize;
    let started = Instant::now();
    let mut index = 0usize;
    while index < seeds.len() || started.elapsed() < budget {
        if index < seeds.len() {
            input.clear();
            input.extend_from_slice(&seeds[index]);
            index += 1;
        } else {
            mutate(&mut rng, &seeds, &mut input);
        }
        let outcome = std::panic::catch_unwind(|| check(&input));
        if outcome.is_err() {
            let path = failing_input_path(target);
            let _ = std::fs::write(&path, &input);
            let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
            panic!(
                "fuzz check {target} failed on {} bytes (saved to {}): {hex}",
                input.len(),
                path.display()
            );
        }
        runs += 1;
    }
    (seeds.len(), runs)
}

#[test]
fn every_fuzz_check_holds_on_its_corpus_and_seeded_mutations() {
    for (target, check) in fuzz::TARGETS {
        let (corpus, runs) = run(target, *check);
        eprintln!("fuzz check {target}: {corpus} corpus inputs, {runs} runs");
        assert!(runs > corpus || corpus > 0, "{target} ran");
    }
}
