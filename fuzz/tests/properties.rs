//! The fuzz harnesses as property tests on stable Rust, no fuzzer needed:
//!
//! ```sh
//! cargo test --manifest-path fuzz/Cargo.toml
//! PROPTEST_CASES=5000 cargo test --release --manifest-path fuzz/Cargo.toml   # longer
//! ```
//!
//! Inputs are random bytes and mutated valid encodings (the seed corpora);
//! the harnesses panic on any broken invariant. Checks for reported, still
//! open bugs are off here (see `tests/regressions.rs`).

use proptest::prelude::*;
use telemetry_link_fuzz::{batch, frame, seeds, spool, state};

/// Applies byte-level mutations (flip, overwrite, truncate, insert) to `base`.
fn mutate(base: &[u8], ops: &[(u16, u8, u8)]) -> Vec<u8> {
    let mut v = base.to_vec();
    for &(at, what, b) in ops {
        if v.is_empty() {
            v.push(b);
            continue;
        }
        let i = usize::from(at) % v.len();
        match what % 5 {
            0 => v[i] ^= b,
            1 => v[i] = b,
            2 => v.truncate(i.max(4)),
            3 => v.insert(i, b),
            _ => {
                let j = (i + usize::from(b)).min(v.len());
                v.drain(i..j);
            }
        }
    }
    v
}

/// Runs `f(data)`; on a panic saves `data` to
/// `target/proptest-failures/<name>` (the last one saved is the shrunk case)
/// so it can be replayed with `examples/replay.rs` or kept as a regression.
fn guarded(name: &str, data: &[u8], f: impl FnOnce(&[u8])) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(data)));
    if let Err(p) = r {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/proptest-failures");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(name), data);
        std::panic::resume_unwind(p);
    }
}

fn ops() -> impl Strategy<Value = Vec<(u16, u8, u8)>> {
    proptest::collection::vec(any::<(u16, u8, u8)>(), 0..6)
}

#[test]
fn every_seed_passes() {
    for (name, s) in seeds::frame_seeds() {
        eprintln!("frame_decoder/{name}");
        frame::run_with(&s, false);
    }
    for (name, s) in seeds::spool_seeds() {
        eprintln!("spool_reader/{name}");
        spool::run_with(&s, false);
    }
    for (name, s) in seeds::batch_seeds() {
        eprintln!("batch_roundtrip/{name}");
        batch::run(&s);
    }
    for (name, s) in seeds::state_seeds() {
        eprintln!("state_journal/{name}");
        state::run(&s);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn frame_decoder_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..1500)) {
        guarded("frame_decoder_random_bytes", &data, |d| frame::run_with(d, false));
    }

    #[test]
    fn frame_decoder_mutated_sessions(
        seed in 0usize..64,
        config in any::<[u8; 4]>(),
        ops in ops(),
    ) {
        let seeds = seeds::frame_seeds();
        let (_, s) = &seeds[seed % seeds.len()];
        let mut s = s.clone();
        s[..4].copy_from_slice(&config);
        guarded("frame_decoder_mutated_sessions", &mutate(&s, &ops), |d| frame::run_with(d, false));
    }

    #[test]
    fn batch_roundtrip_random(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
        guarded("batch_roundtrip_random", &data, batch::run);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn spool_reader_mutated_spools(
        seed in 0usize..64,
        config in any::<[u8; 4]>(),
        keep_config in any::<bool>(),
        ops in ops(),
    ) {
        let seeds = seeds::spool_seeds();
        let (_, s) = &seeds[seed % seeds.len()];
        let mut s = s.clone();
        if !keep_config {
            s[..4].copy_from_slice(&config);
        }
        guarded("spool_reader_mutated_spools", &mutate(&s, &ops), |d| spool::run_with(d, false));
    }

    #[test]
    fn spool_reader_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        guarded("spool_reader_random_bytes", &data, |d| spool::run_with(d, false));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn state_journal_mutated_directories(seed in 0usize..64, ops in ops()) {
        let seeds = seeds::state_seeds();
        let (_, s) = &seeds[seed % seeds.len()];
        guarded("state_journal_mutated_directories", &mutate(s, &ops), state::run);
    }

    /// Mutations with every checksum repaired, so they reach the records.
    #[test]
    fn state_journal_mutated_repaired(seed in 0usize..64, ops in ops()) {
        let seeds = seeds::state_seeds();
        let (_, s) = &seeds[seed % seeds.len()];
        let mut data = mutate(s, &ops);
        // Set every repair flag on the section kinds at their offsets.
        let mut at = 0;
        while at < data.len() {
            data[at] |= 0x07;
            let len = data.get(at + 1..at + 3).map_or(0, |l| usize::from(u16::from_le_bytes([l[0], l[1]])));
            at += 3 + len;
        }
        guarded("state_journal_mutated_repaired", &data, state::run);
    }

    #[test]
    fn state_journal_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..800)) {
        guarded("state_journal_random_bytes", &data, state::run);
    }
}
