#![no_main]
//! See `telemetry_link_fuzz::state` for the input layout and the checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    telemetry_link_fuzz::state::run(data);
});
