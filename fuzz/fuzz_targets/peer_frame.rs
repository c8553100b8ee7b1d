//! Feeds arbitrary bytes to the peer frame decoder, as a hostile or broken peer would.
//!
//! Run with `cargo +nightly fuzz run peer_frame` from this directory.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    triarch_node::fuzz_decode_frame(data);
});
