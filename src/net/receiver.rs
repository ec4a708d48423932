//! The receive-side filter: decode, authenticate, reject replays, count every drop.
//!
//! Replay protection: each sender stamps datagrams with `(boot id, counter)`, both growing.
//! A receiver keeps the highest pair accepted per sender and drops anything not newer, so a
//! captured datagram can be delivered at most once, and never after a newer one. The boot id
//! grows across restarts of the sender (see `docs/protocol.md`), so datagrams from an earlier
//! run are refused too. After a *receiver* restart the table is empty; a replay of a recent
//! datagram is then accepted once, which the core tolerates (it ignores stale terms and does
//! not vote or acknowledge during its first lease).

use super::wire::{Codec, DropReason, Envelope};
use crate::core::{Message, NodeIdx};
use std::collections::BTreeMap;

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
}

impl Receiver {
    pub fn new(codec: Codec, members: usize) -> Receiver {
        Receiver {
            codec,
            newest: vec![None; members],
            drops: DropCounters::default(),
        }
    }

    /// The message in `bytes` and its sender, or `None` (counted) if it must be dropped.
    pub fn accept(&mut self, bytes: &[u8]) -> Option<(NodeIdx, Message)> {
        match self.check(bytes) {
            Ok(env) => Some((env.sender, env.message)),
            Err(reason) => {
                self.drops.count(reason);
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
    use crate::core::{Ack, Message};

    fn codec(me: NodeIdx) -> Codec {
        Codec::new("c", &[7u8; 32], 5, vec!["a".into(), "b".into(), "c".into()], me)
    }

    fn ack() -> Message {
        Message::Ack(Ack { term: 1, echo_seq: 1 })
    }

    #[test]
    fn replayed_and_older_datagrams_are_dropped_and_counted() {
        let tx = codec(0);
        let mut rx = Receiver::new(codec(1), 3);
        let first = tx.encode(10, 1, &ack());
        let second = tx.encode(10, 2, &ack());
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
        let old = tx.encode(10, 500, &ack());
        assert!(rx.accept(&old).is_some());
        assert!(
            rx.accept(&tx.encode(11, 1, &ack())).is_some(),
            "counter restarts with a new boot id"
        );
        assert!(
            rx.accept(&tx.encode(10, 501, &ack())).is_none(),
            "datagram from the previous run"
        );
    }

    #[test]
    fn senders_are_tracked_independently_and_forgeries_do_not_advance_counters() {
        let mut rx = Receiver::new(codec(1), 3);
        assert!(rx.accept(&codec(0).encode(1, 5, &ack())).is_some());
        assert!(rx.accept(&codec(2).encode(1, 1, &ack())).is_some());
        let forger = Codec::new("c", &[8u8; 32], 5, vec!["a".into(), "b".into(), "c".into()], 0);
        assert!(rx.accept(&forger.encode(99, 99, &ack())).is_none());
        assert!(
            rx.accept(&codec(0).encode(1, 6, &ack())).is_some(),
            "forgery must not raise the bar"
        );
        assert_eq!(rx.drops().get(DropReason::BadMac), 1);
        assert_eq!(rx.drops().total(), 1);
    }
}
