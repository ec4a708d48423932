//! A simulated host clock: it runs at a rate within ±ρ of real time, and the rate may change
//! while the run goes on (temperature, NTP slewing). Real time is the simulator's; each agent
//! only ever sees its own local readings.

use crate::core::Instant;

/// `local = base_local + (real − base_real) · (10⁶ + ppm) / 10⁶`, in microseconds. A rate
/// change starts a new segment at the current instant, so local time never jumps.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base_real: u64,
    base_local: u64,
    ppm: i64,
}

impl Clock {
    pub fn new(offset: u64, ppm: i64) -> Clock {
        Clock {
            base_real: 0,
            base_local: offset,
            ppm,
        }
    }

    fn rate(self) -> u128 {
        (1_000_000 + self.ppm) as u128
    }

    /// The local reading at real time `real` (not before the current segment began).
    pub fn local(self, real: u64) -> Instant {
        let elapsed = u128::from(real.saturating_sub(self.base_real));
        Instant::from_micros(self.base_local + (elapsed * self.rate() / 1_000_000) as u64)
    }

    /// The first real instant at which the clock reads `local` or later, at the current rate.
    pub fn real(self, local: Instant) -> u64 {
        let l = u128::from(local.as_micros().saturating_sub(self.base_local));
        let real = l.saturating_mul(1_000_000).div_ceil(self.rate());
        (u128::from(self.base_real) + real).min(u128::from(u64::MAX / 4)) as u64
    }

    /// From real time `now` on, run at `ppm`.
    pub fn set_rate(&mut self, now: u64, ppm: i64) {
        self.base_local = self.local(now).as_micros();
        self.base_real = now;
        self.ppm = ppm;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_change_bends_the_clock_without_a_jump() {
        let mut c = Clock::new(1_000, 10_000);
        assert_eq!(c.local(1_000_000).as_micros(), 1_000 + 1_010_000);
        c.set_rate(1_000_000, -10_000);
        assert_eq!(c.local(1_000_000).as_micros(), 1_011_000);
        assert_eq!(c.local(2_000_000).as_micros(), 1_011_000 + 990_000);
        let at = c.real(Instant::from_micros(1_011_000 + 990_000));
        assert_eq!(at, 2_000_000);
    }
}
