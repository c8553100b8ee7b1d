//! Time as the protocol sees it: a monotonic instant handed in by the driver.
//!
//! The real driver maps `std::time::Instant` onto it; the simulator advances it virtually.
//! Wall-clock time (for hybrid logical clocks) is passed separately as milliseconds since the
//! Unix epoch, because it may be skewed, or jump, independently of the monotonic clock.

use serde::{Deserialize, Serialize};
use std::ops::{Add, Sub};
use std::time::Duration;

/// Microseconds on a monotonic clock whose origin the driver chooses.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Instant(pub u64);

impl Instant {
    pub const ZERO: Instant = Instant(0);

    pub fn from_micros(micros: u64) -> Self {
        Instant(micros)
    }

    pub fn as_micros(self) -> u64 {
        self.0
    }

    /// Time elapsed since `earlier`, zero if `earlier` is later (never panics on reordering).
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d.as_micros() as u64))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_since(earlier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_panicking() {
        let a = Instant::from_micros(10);
        let b = a + Duration::from_millis(1);
        assert_eq!(b.as_micros(), 1_010);
        assert_eq!(b - a, Duration::from_micros(1_000));
        assert_eq!(a - b, Duration::ZERO);
    }
}

/// What the driver knows of time when it steps a machine: the monotonic instant (for timers and
/// latencies) and the wall clock in ms since the Unix epoch (for hybrid logical clocks; it may be
/// skewed or jump, and the simulator makes it do both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub instant: Instant,
    pub wall_ms: u64,
}

impl Now {
    pub fn new(instant: Instant, wall_ms: u64) -> Self {
        Now { instant, wall_ms }
    }
}
