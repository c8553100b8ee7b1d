//! Feeds arbitrary bytes to the RESP request decoder.
//!
//! The body lives in `triarch_resp::fuzz_decode` so that ordinary `cargo test` compiles and
//! runs it too; see its documentation for the invariants checked.
//!
//! Run with `cargo +nightly fuzz run resp_decoder` from this directory.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    triarch_resp::fuzz_decode(data);
});
