//! The receive-side filter: decode, authenticate, reject replays, count every drop.
//!
//! Replay protection: each sender stamps datagrams with `(boot id, counter)`, both growing.
//! A receiver keeps the highest pair accepted per sender and drops anything not newer, so a
//! captured datagram can be delivered at most once, and never after a newer one. The boot id
//! grows across restarts of the sender (see `docs/protocol.md`), so datagrams from an earlier
//! run are refused too. After a *receiver* restart the table is empty; datagrams captured
//! before are then accepted once each, which the core tolerates: it neither votes nor
//! acknowledges during its first lease, votes only in terms above its persisted one, and refuses
//! lease claims older than the newest it acknowledged (persisted too).

use super::wire::{Codec, Datagram, DropReason, Envelope, Notice};
use crate::core::NodeIdx;
use std::collections::{BTreeMap, BTreeSet};

/// Dropped datagrams by reason, for `vipgate status` and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropCounters(BTreeMap<DropReason, u64>);

impl DropCounters {
    pub fn count(&mut self, reason: DropReason) {
        *self.0.entry(reason).or_default() += 1;
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.0.get(&reason).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        self.0.iter().map(|(r, n)| (*r, *n))
    }
}

pub struct Receiver {
    codec: Codec,
    /// Highest `(boot, counter)` accepted per sender, indexed by [`NodeIdx`].
    newest: Vec<Option<(u64, u64)>>,
    drops: DropCounters,
    /// Members already named in a notice, per reason: each is logged once, not per datagram
    /// (bounded by the member count).
    noticed: BTreeSet<(DropReason, String)>,
    notices: Vec<Notice>,
}

impl Receiver {
    pub fn new(codec: Codec, members: usize) -> Receiver {
        Receiver {
            codec,
            newest: vec![None; members],
            drops: DropCounters::default(),
            noticed: BTreeSet::new(),
            notices: Vec::new(),
        }
    }

    /// Members whose datagrams keep being dropped for a reason an operator must fix (another
    /// wire version, other timing), each reported once per reason since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// The message in `bytes` and its sender, or `None` (counted) if it must be dropped.
    pub fn accept(&mut self, bytes: &[u8]) -> Option<(NodeIdx, Datagram)> {
        match self.check(bytes) {
            Ok(env) => Some((env.sender, env.message)),
            Err(reason) => {
                self.drops.count(reason);
                if let Some(n) = self.codec.explain(bytes, reason)
                    && self.noticed.insert((reason, n.peer.clone()))
                {
                    self.notices.push(n);
                }
                None
            }
        }
    }

    fn check(&mut self, bytes: &[u8]) -> Result<Envelope, DropReason> {
        let env = self.codec.decode(bytes)?;
        let slot = self
            .newest
            .get_mut(usize::from(env.sender))
            .ok_or(DropReason::UnknownSender)?;
        let stamp = (env.boot, env.counter);
        if slot.is_some_and(|newest| stamp <= newest) {
            return Err(DropReason::Replayed);
        }
        *slot = Some(stamp);
        Ok(env)
    }

    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Ack, Message, Timing};

    const TIMING: Timing = Timing {
        lease_ms: 1000,
        drift_ppm: 10_000,
    };

    fn codec(me: NodeIdx) -> Codec {
        Codec::new(
            "c",
            &[7u8; 32],
            5,
            TIMING,
            vec!["a".into(), "b".into(), "c".into()],
            me,
        )
    }

    fn ack() -> Datagram {
        Message::Ack(Ack {
            term: 1,
            owner: 1,
            echo_seq: 1,
        })
        .into()
    }

    #[test]
    fn replayed_and_older_datagrams_are_dropped_and_counted() {
        let tx = codec(0);
        let mut rx = Receiver::new(codec(1), 3);
        let first = tx.encode(1, 10, 1, &ack());
        let second = tx.encode(1, 10, 2, &ack());
        assert!(rx.accept(&second).is_some());
        assert!(rx.accept(&second).is_none(), "exact replay");
        assert!(
            rx.accept(&first).is_none(),
            "older counter, e.g. reordered or replayed later"
        );
        assert_eq!(rx.drops().get(DropReason::Replayed), 2);
    }

    #[test]
    fn a_restarted_sender_with_a_newer_boot_is_accepted_and_its_old_boot_refused() {
        let tx = codec(0);
        let mut rx = Receiver::new(codec(1), 3);
        let old = tx.encode(1, 10, 500, &ack());
        assert!(rx.accept(&old).is_some());
        assert!(
            rx.accept(&tx.encode(1, 11, 1, &ack())).is_some(),
            "counter restarts with a new boot id"
        );
        assert!(
            rx.accept(&tx.encode(1, 10, 501, &ack())).is_none(),
            "datagram from the previous run"
        );
    }

    #[test]
    fn senders_are_tracked_independently_and_forgeries_do_not_advance_counters() {
        let mut rx = Receiver::new(codec(1), 3);
        assert!(rx.accept(&codec(0).encode(1, 1, 5, &ack())).is_some());
        assert!(rx.accept(&codec(2).encode(1, 1, 1, &ack())).is_some());
        let forger = Codec::new(
            "c",
            &[8u8; 32],
            5,
            TIMING,
            vec!["a".into(), "b".into(), "c".into()],
            0,
        );
        assert!(rx.accept(&forger.encode(1, 99, 99, &ack())).is_none());
        assert!(
            rx.accept(&codec(0).encode(1, 1, 6, &ack())).is_some(),
            "forgery must not raise the bar"
        );
        assert_eq!(rx.drops().get(DropReason::BadMac), 1);
        assert_eq!(rx.drops().total(), 1);
    }

    #[test]
    fn a_member_on_other_timing_or_version_is_dropped_counted_and_named_once() {
        let mut rx = Receiver::new(codec(1), 3);
        let longer = Timing {
            lease_ms: 3000,
            ..TIMING
        };
        let other = Codec::new(
            "c",
            &[7u8; 32],
            5,
            longer,
            vec!["a".into(), "b".into(), "c".into()],
            2,
        );
        for counter in 1..=3 {
            assert!(rx.accept(&other.encode(1, 1, counter, &ack())).is_none());
        }
        let mut old = codec(0).encode(1, 1, 1, &ack());
        old[2] = 1;
        assert!(rx.accept(&old).is_none());
        assert!(rx.accept(&old).is_none());
        assert_eq!(rx.drops().get(DropReason::TimingMismatch), 3);
        assert_eq!(rx.drops().get(DropReason::UnknownVersion), 2);
        let notices = rx.take_notices();
        assert_eq!(notices.len(), 2, "{notices:?}");
        assert_eq!(notices[0].peer, "c");
        assert!(
            notices[0].message.contains("lease_ms 3000") && notices[0].message.contains("this agent 1000"),
            "{}",
            notices[0].message
        );
        assert_eq!(notices[1].peer, "a");
        assert!(
            notices[1].message.contains("wire version 1"),
            "{}",
            notices[1].message
        );
        assert!(rx.take_notices().is_empty());
    }

    #[test]
    fn a_datagram_copied_to_another_member_is_dropped_there() {
        let tx = codec(0);
        let for_b = tx.encode(1, 1, 1, &ack());
        let mut at_c = Receiver::new(codec(2), 3);
        assert!(at_c.accept(&for_b).is_none());
        assert_eq!(at_c.drops().get(DropReason::Misaddressed), 1);
        let mut at_b = Receiver::new(codec(1), 3);
        assert!(at_b.accept(&for_b).is_some());
    }
}
