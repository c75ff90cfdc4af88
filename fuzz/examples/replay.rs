//! Runs one harness on input files, with every check on (open bugs
//! included) unless `TL_FUZZ_STRICT=0`:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example replay -- spool_reader fuzz/regressions/spool_reader/*
//! ```

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args
        .next()
        .expect("usage: replay <frame_decoder|spool_reader|batch_roundtrip|state_journal> FILE...");
    let strict = std::env::var_os("TL_FUZZ_STRICT").is_none_or(|v| v != "0");
    for path in args {
        let data = std::fs::read(&path).expect("read input");
        eprintln!("{target} {path} ({} bytes, strict={strict})", data.len());
        match target.as_str() {
            "frame_decoder" => telemetry_link_fuzz::frame::run_with(&data, strict),
            "spool_reader" => telemetry_link_fuzz::spool::run_with(&data, strict),
            "batch_roundtrip" => telemetry_link_fuzz::batch::run(&data),
            "state_journal" => telemetry_link_fuzz::state::run(&data),
            other => panic!("unknown target {other}"),
        }
        eprintln!("ok");
    }
}
