//! Local time as the core sees it.
//!
//! The core never reads a clock: every event carries `now`, a reading of the agent's own
//! monotonic clock (the shell uses `CLOCK_BOOTTIME`, which keeps counting across suspend).
//! Two agents' readings are never compared; only durations measured on one clock are.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A reading of the local monotonic clock, in microseconds since an arbitrary origin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    pub const fn from_micros(us: u64) -> Self {
        Instant(us)
    }

    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Time elapsed since `earlier`, zero if `earlier` is in the future.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(micros(d)))
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, d: Duration) -> Instant {
        Instant(self.0.saturating_sub(micros(d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        let t = Instant::from_micros(5);
        assert_eq!(t - Duration::from_micros(10), Instant::from_micros(0));
        assert_eq!(
            Instant::from_micros(u64::MAX) + Duration::from_secs(1),
            Instant::from_micros(u64::MAX)
        );
        assert_eq!(t.saturating_since(Instant::from_micros(9)), Duration::ZERO);
        assert_eq!(
            Instant::from_micros(9).saturating_since(t),
            Duration::from_micros(4)
        );
    }
}
