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
//! * [`seeds`]: valid encodings for the seed corpora.

pub mod alloc;
pub mod batch;
pub mod frame;
pub mod seeds;
pub mod spool;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// Whether checks for already reported, still open bugs are enabled
/// (`TL_FUZZ_STRICT=1`). Off by default so that a long fuzzing run is not
/// stopped over and over by a known finding; the regression tests turn it on.
pub fn strict() -> bool {
    use std::sync::OnceLock;
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("TL_FUZZ_STRICT").is_some_and(|v| v != "0"))
}
