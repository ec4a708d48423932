//! The agent's clock: `CLOCK_BOOTTIME`, which keeps counting while the machine is suspended.
//!
//! `CLOCK_MONOTONIC` stops during suspend: a host resumed after a minute would believe its
//! lease still had the time left that it had before it slept, while its peers elected someone
//! else. With `CLOCK_BOOTTIME` the lease has visibly expired at resume, and the agent releases.

use crate::core::Instant;
use nix::time::{ClockId, clock_gettime};

/// Now, in microseconds since boot.
pub fn now() -> Instant {
    // CLOCK_BOOTTIME exists on every Linux since 2.6.39; failure would be a broken kernel.
    let ts = clock_gettime(ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME is readable");
    let us = (ts.tv_sec() as u64).saturating_mul(1_000_000) + (ts.tv_nsec() as u64) / 1_000;
    Instant::from_micros(us)
}

/// How long from `now` until `at` (zero if it has passed), for tokio timers.
pub fn until(at: Instant) -> std::time::Duration {
    at.saturating_since(now())
}
