//! Fuzz harnesses for telemetry-link, shared by the cargo-fuzz targets in
//! `fuzz_targets/`, the property tests in `tests/` and the seed generator in
//! `examples/gen_seeds.rs`.
//!
//! Each harness takes raw bytes, never panics on its own account, and
//! panics (with a message naming the broken invariant) when the library
//! misbehaves: a panic inside telemetry-link, a violated invariant, or memory
//! growing out of proportion to the input.
//!
//! * [`frame`]: `FrameDecoder` under arbitrary chunkings, every frame through
//!   `Message::decode`, every batch body through one `BatchDecoder`.
//! * [`spool`]: arbitrary segment files and meta file, `Spool::open`,
//!   reading everything, appending, acknowledging, reopening.
//! * [`batch`]: structured records encoded with `BatchEncoder`, framed,
//!   decoded again, compared bit for bit.
//! * [`state`]: arbitrary receiver state directories (positions journal,
//!   snapshot, per-stream files of the older layout), recovered by the
//!   format's fold and by opening the directory, against a reference model.
//! * [`seeds`]: valid encodings for the seed corpora.

pub mod alloc;
pub mod batch;
pub mod frame;
pub mod seeds;
pub mod spool;
pub mod state;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// Whether the checks for the bugs found by fuzzing (F1–F8, all fixed) are
/// enabled: on unless `TL_FUZZ_STRICT=0`, which only makes sense to fuzz an
/// old revision without stopping over and over on a known finding.
pub fn strict() -> bool {
    use std::sync::OnceLock;
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("TL_FUZZ_STRICT").is_none_or(|v| v != "0"))
}
