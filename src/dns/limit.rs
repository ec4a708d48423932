//! What keeps the name server from being an amplifier for spoofed UDP queries: a response
//! rate limit per source network, and an upper bound on an answer's size relative to its query
//! (a larger answer goes out truncated, so the client asks again over TCP, which a spoofed
//! source cannot).

use crate::net::admission::network;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

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
    at: Option<Instant>,
    slip: bool,
}

/// Token buckets per source network: `rate` answers per second, bursts up to `rate`. A fixed
/// table of [`BUCKETS`] slots, indexed by a keyed hash of the network: constant memory and
/// constant work per query whatever the sources (spoofed ones from every /24 included); two
/// networks that share a slot share its rate, and the key, drawn at start, keeps an outsider
/// from choosing which.
#[derive(Debug)]
pub struct RateLimiter {
    rate: u32,
    key: std::collections::hash_map::RandomState,
    buckets: Mutex<Vec<Bucket>>,
}

/// Slots in the table.
pub const BUCKETS: usize = 4096;

impl RateLimiter {
    /// `rate` 0: no limit.
    pub fn new(rate: u32) -> RateLimiter {
        let empty = Bucket {
            tokens: 0.0,
            at: None,
            slip: false,
        };
        RateLimiter {
            rate,
            key: std::collections::hash_map::RandomState::new(),
            buckets: Mutex::new(vec![empty; if rate == 0 { 0 } else { BUCKETS }]),
        }
    }

    pub fn check(&self, source: IpAddr, now: Instant) -> Verdict {
        if self.rate == 0 {
            return Verdict::Answer;
        }
        let rate = f64::from(self.rate);
        let slot = (std::hash::BuildHasher::hash_one(&self.key, network(source)) as usize) % BUCKETS;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = &mut buckets[slot];
        let refill =
            b.at.map_or(rate, |at| now.saturating_duration_since(at).as_secs_f64() * rate);
        (b.tokens, b.at) = ((b.tokens + refill).min(rate), Some(now));
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
        // The same /24 shares the bucket (an IPv4-mapped source too); other networks do not,
        // unless they share its slot (1 in 4096).
        assert_ne!(l.check("198.51.100.200".parse().unwrap(), t0), Verdict::Answer);
        assert_ne!(
            l.check("::ffff:198.51.100.9".parse().unwrap(), t0),
            Verdict::Answer
        );
        let others = (0..=255u8).filter(|i| l.check(IpAddr::from([203, 0, *i, 7]), t0) == Verdict::Answer);
        assert!(others.count() >= 250);
        // A tenth of a second later, one more answer.
        let later = t0 + std::time::Duration::from_millis(100);
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

    #[test]
    fn spoofed_sources_from_every_network_keep_the_table_at_its_size() {
        let l = RateLimiter::new(100);
        let t0 = Instant::now();
        for i in 0..200_000u32 {
            l.check(IpAddr::from((i << 8).to_be_bytes()), t0);
        }
        assert_eq!(l.buckets.lock().unwrap().len(), BUCKETS);
        // A source seen once per slot-mate still has most of its burst.
        let fresh: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(l.check(fresh, t0), Verdict::Answer);
    }
}
