//! Writes the seed corpora built from valid encodings to `fuzz/seeds/`:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds
//! ```

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let n = telemetry_link_fuzz::seeds::write_all(&root)?;
    println!("wrote {n} seeds under {}", root.display());
    Ok(())
}
