//! What keeps the name server from being an amplifier for spoofed UDP queries: a response
//! rate limit per source network, and an upper bound on an answer's size relative to its query
//! (a larger answer goes out truncated, so the client asks again over TCP, which a spoofed
//! source cannot).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A UDP answer may be at most this many times the size of its query.
pub const MAX_AMPLIFICATION: usize = 3;

/// Whether an answer of `answer` bytes to a query of `query` bytes must go out truncated.
pub fn too_large(query: usize, answer: usize) -> bool {
    answer > MAX_AMPLIFICATION * query
}

/// What to do with a query from a source over its rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Answer,
    /// Over the rate: every other one gets an empty truncated answer (a real client then
    /// retries over TCP), the rest nothing.
    Slip,
    Drop,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    slip: bool,
}

/// Token buckets per source network: `rate` answers per second, bursts up to `rate`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: u32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

/// Sources tracked at most; past it, buckets idle for a second are forgotten.
const MAX_SOURCES: usize = 10_000;

/// The network a source is limited as: its /24 (IPv4) or /56 (IPv6).
fn network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & 0xffff_ff00).into()),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 72) - 1)).into()),
    }
}

impl RateLimiter {
    /// `rate` 0: no limit.
    pub fn new(rate: u32) -> RateLimiter {
        RateLimiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn check(&self, source: IpAddr, now: Instant) -> Verdict {
        if self.rate == 0 {
            return Verdict::Answer;
        }
        let rate = f64::from(self.rate);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_SOURCES {
            buckets.retain(|_, b| now.saturating_duration_since(b.at) < Duration::from_secs(1));
        }
        let b = buckets.entry(network(source)).or_insert(Bucket {
            tokens: rate,
            at: now,
            slip: false,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * rate;
        (b.tokens, b.at) = ((b.tokens + refill).min(rate), now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Verdict::Answer;
        }
        b.slip = !b.slip;
        if b.slip { Verdict::Slip } else { Verdict::Drop }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_over_its_rate_is_slipped_and_dropped_in_turn_and_refills() {
        let l = RateLimiter::new(10);
        let t0 = Instant::now();
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        let verdicts: Vec<Verdict> = (0..14).map(|_| l.check(a, t0)).collect();
        assert!(
            verdicts[..10].iter().all(|v| *v == Verdict::Answer),
            "{verdicts:?}"
        );
        assert_eq!(
            verdicts[10..],
            [Verdict::Slip, Verdict::Drop, Verdict::Slip, Verdict::Drop]
        );
        // The same /24 shares the bucket; another network does not.
        assert_ne!(l.check("198.51.100.200".parse().unwrap(), t0), Verdict::Answer);
        assert_eq!(l.check("203.0.113.7".parse().unwrap(), t0), Verdict::Answer);
        // A tenth of a second later, one more answer.
        let later = t0 + Duration::from_millis(100);
        assert_eq!(l.check(a, later), Verdict::Answer);
        assert_ne!(l.check(a, later), Verdict::Answer);
        assert_eq!(RateLimiter::new(0).check(a, t0), Verdict::Answer);
    }

    #[test]
    fn ipv6_sources_are_limited_per_56_and_answers_bounded_by_the_query() {
        assert_eq!(
            network("2001:db8:1:2ff:1::1".parse().unwrap()),
            "2001:db8:1:200::".parse::<IpAddr>().unwrap()
        );
        assert!(!too_large(40, 120) && too_large(40, 121));
    }
}
