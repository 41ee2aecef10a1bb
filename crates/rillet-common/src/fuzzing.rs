//! Replaying fuzz corpora in ordinary tests (not an API).
//!
//! Each fuzz target under `fuzz/` has a corpus in `fuzz/corpus/<target>/`: its seeds and
//! every input a fuzzer found crashing it. The crate owning a target's entry point replays
//! the corpus in a unit test, each input as it is and cut or altered in a fixed set of ways
//! ([`mutations`]), so CI checks them without a fuzzer.

use std::path::PathBuf;

/// The corpus directory of fuzz target `target`.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Every input of `target`'s corpus, with its file name. Panics (failing the test) when
/// the corpus is missing or empty: a replay that checks nothing must not pass.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a corpus entry").path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, bytes)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "fuzz corpus {} is empty", dir.display());
    inputs
}

/// `seed` and variants of it: every prefix, and at evenly spaced positions (about 256)
/// the byte set to 0, to 0xFF and with its top bit flipped, and 64 cuts of a span from
/// the middle.
///
/// ```
/// let variants: Vec<Vec<u8>> = rillet_common::fuzzing::mutations(b"abc").collect();
/// assert!(variants.contains(&b"ab".to_vec()) && variants.contains(&b"\xffbc".to_vec()));
/// ```
pub fn mutations(seed: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let step = (seed.len() / 256).max(1);
    let prefixes = (0..=seed.len()).map(move |end| seed[..end].to_vec());
    let altered = (0..seed.len()).step_by(step).flat_map(move |at| {
        [0x00u8, 0xFF, seed[at] ^ 0x80]
            .into_iter()
            .map(move |byte| {
                let mut changed = seed.to_vec();
                changed[at] = byte;
                changed
            })
    });
    let cut = (1..=64usize).filter(move |_| seed.len() > 2).map(move |i| {
        let from = i * 7919 % seed.len();
        let to = (from + i * 13).min(seed.len());
        [&seed[..from], &seed[to..]].concat()
    });
    std::iter::once(seed.to_vec())
        .chain(prefixes)
        .chain(altered)
        .chain(cut)
}

/// Run `entry` on every input of `target`'s corpus and its [`mutations`]; a panic fails
/// the calling test, naming the input it came from. `entry` says whether the input decoded:
/// a seed (any file not named `crash-*`) must, so that a replay whose seeds all fail
/// early cannot pass while checking nothing.
pub fn replay(target: &str, entry: impl Fn(&[u8]) -> bool) {
    for (name, seed) in corpus(target) {
        if !name.starts_with("crash-") {
            assert!(
                entry(&seed),
                "fuzz target {target}: seed {name} no longer decodes; write a seed of the \
                 current format into fuzz/corpus/{target}/"
            );
        }
        for variant in mutations(&seed) {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _decoded = entry(&variant);
            }));
            if outcome.is_err() {
                panic!(
                    "fuzz target {target}: input {name} (a variant of {} bytes) panicked",
                    variant.len()
                );
            }
        }
    }
}
