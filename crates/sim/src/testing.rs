//! Small helpers the seed-test files share (environment knobs, timing the run itself).

/// The number in environment variable `name`, if set; panics on anything else, naming it.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
    })
}

/// The test harness measures its own speed; it is not protocol code, which is what the
/// workspace's ban on reading the clock protects.
#[allow(clippy::disallowed_methods)]
pub fn stopwatch() -> std::time::Instant {
    std::time::Instant::now()
}
