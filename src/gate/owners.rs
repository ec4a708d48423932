//! Who owned last. Two answers, for two purposes:
//! - the **last owner**, the owner of the newest term seen — from this node's vote for
//!   another, its own ownership, or a peer claiming a lease — kept after that owner releases or
//!   falls silent: its database holds the newest history, and eligibility is judged against it;
//! - the **last holder**, the newest lease actually held (a vote does not count): the region
//!   rules and the anti-flap window follow it, and the agent persists it.
//!
//! - the **last primary**, the owner of the newest term whose database was seen writable: the
//!   newest history *written*. An owner whose promotion failed wrote nothing, and replicas of
//!   the primary before it still hold that primary's whole history: they are judged against it.
//!
//! Plus, for a cluster that never saw an owner, the highest position a writable peer reported.

use crate::core::{NodeIdx, Position, Term};

/// A term and the node that owned it (or was voted for in it).
pub type Owner = (Term, NodeIdx);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owners {
    pub last_owner: Option<Owner>,
    pub last_holder: Option<Owner>,
    pub last_primary: Option<Owner>,
    /// The last primary's position when this node learnt it was primary: everything written
    /// before its term (every acknowledged write among it) is below; a replica that has not got
    /// this far did not follow it.
    pub primary_floor: Position,
    /// The highest position a writable peer reported in this run, and that peer.
    pub highest_writable: Option<(Position, NodeIdx)>,
}

/// What the agent saw in one step.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// This node's persisted vote (term, candidate). A vote for itself is a candidacy: whether
    /// it won shows in `owning`, so it is not an owner here.
    pub vote: Option<Owner>,
    /// This node's own term, while it owns.
    pub owning: Option<Term>,
    /// Peers claiming a lease in their heartbeats.
    pub claims: Vec<Owner>,
    /// The lease held right now as this node knows it: its own, or the one it acknowledges.
    pub live: Option<Owner>,
}

impl Owners {
    /// From what the state file kept: the last holder, and the last primary with its floor.
    pub fn new(last_holder: Option<Owner>, last_primary: Option<(Owner, Position)>) -> Owners {
        Owners {
            last_holder,
            last_primary: last_primary.map(|(p, _)| p),
            primary_floor: last_primary.map_or(0, |(_, floor)| floor),
            ..Owners::default()
        }
    }

    /// Takes in what was seen. Returns the new last holder when it changed, for the agent to
    /// persist before it acts on it.
    pub fn observe(&mut self, me: NodeIdx, seen: &Seen) -> Option<Owner> {
        let vote = seen.vote.filter(|(_, v)| *v != me);
        let held = seen
            .owning
            .map(|t| (t, me))
            .into_iter()
            .chain(seen.claims.iter().copied());
        let before = self.last_holder;
        for owner in vote.into_iter().chain(held.clone()) {
            if self.last_owner.is_none_or(|(t, _)| owner.0 > t) {
                self.last_owner = Some(owner);
            }
        }
        for owner in held {
            if self.last_holder.is_none_or(|(t, _)| owner.0 > t) {
                self.last_holder = Some(owner);
            }
        }
        // Terms are won in increasing order and none while a lease is live, so a remembered
        // vote for a term above the live lease's never won: the live holder is the newest owner
        // whenever there is one — a node back from a partition follows the owner it
        // acknowledges, not the candidate it once voted for.
        self.last_owner = seen.live.or(self.last_owner);
        (self.last_holder != before).then_some(self.last_holder).flatten()
    }

    /// The owner of `term` has a writable database (its own promotion, or its report), at
    /// `position`. True when that is news, for the agent to persist.
    pub fn note_primary(&mut self, owner: Owner, position: Position) -> bool {
        let news = self.last_primary.is_none_or(|(t, _)| owner.0 > t);
        if news {
            self.last_primary = Some(owner);
            self.primary_floor = position;
        }
        news
    }

    /// Whose history eligibility is judged against: the last primary, else (none seen yet in
    /// this run) the last owner.
    pub fn history(&self) -> Option<Owner> {
        match (self.last_primary, self.last_owner) {
            (Some(p), _) => Some(p),
            (None, o) => o,
        }
    }

    /// This node was the last primary it knows of, yet a newer term had another owner, never
    /// seen writable here (its report did not arrive, or this node restarted meanwhile): that
    /// owner may have written what this database lacks. The newest such owner.
    pub fn unseen_newer_owner(&self, me: NodeIdx) -> Option<Owner> {
        let (primary_term, primary) = self.last_primary?;
        if primary != me {
            return None;
        }
        [self.last_owner, self.last_holder]
            .into_iter()
            .flatten()
            .filter(|(term, node)| *term > primary_term && *node != me)
            .max()
    }

    /// A peer whose database is writable (a primary) reported `position`. Replicas are not
    /// counted: one that streams from this node's database is at most as far, give or take
    /// the writes between two checks.
    pub fn note_writable(&mut self, node: NodeIdx, position: Position) {
        if self.highest_writable.is_none_or(|(p, _)| position > p) {
            self.highest_writable = Some((position, node));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: NodeIdx = 1;

    #[test]
    fn a_vote_names_the_last_owner_but_only_a_held_lease_the_last_holder() {
        let mut o = Owners::default();
        let seen = Seen {
            vote: Some((3, 0)),
            ..Seen::default()
        };
        assert_eq!(o.observe(ME, &seen), None);
        assert_eq!((o.last_owner, o.last_holder), (Some((3, 0)), None));
        let seen = Seen {
            claims: vec![(3, 0)],
            ..Seen::default()
        };
        assert_eq!(o.observe(ME, &seen), Some((3, 0)));
        assert_eq!(o.last_holder, Some((3, 0)));
        // Its own candidacy is no owner; its own ownership is.
        let seen = Seen {
            vote: Some((4, ME)),
            ..Seen::default()
        };
        assert_eq!(o.observe(ME, &seen), None);
        assert_eq!(o.last_owner, Some((3, 0)));
        let seen = Seen {
            owning: Some(4),
            ..Seen::default()
        };
        assert_eq!(o.observe(ME, &seen), Some((4, ME)));
        assert_eq!(o.last_owner, Some((4, ME)));
    }

    #[test]
    fn older_terms_never_replace_newer_ones_and_silence_forgets_nothing() {
        let mut o = Owners::new(Some((5, 2)), None);
        let seen = Seen {
            claims: vec![(4, 0)],
            ..Seen::default()
        };
        assert_eq!(o.observe(ME, &seen), None);
        assert_eq!(o.last_holder, Some((5, 2)));
        assert_eq!(o.last_owner, Some((4, 0)), "the newest seen in this run");
        assert_eq!(o.observe(ME, &Seen::default()), None);
        assert_eq!(o.last_owner, Some((4, 0)));
    }

    #[test]
    fn a_live_lease_older_than_a_remembered_vote_names_the_owner() {
        let mut o = Owners::default();
        // Voted for node 2 in term 5, now acknowledges node 0's lease of term 3.
        let seen = Seen {
            vote: Some((5, 2)),
            live: Some((3, 0)),
            ..Seen::default()
        };
        o.observe(ME, &seen);
        assert_eq!(o.last_owner, Some((3, 0)));
        // No live lease: the remembered owner stands, even after it fell silent.
        o.observe(ME, &Seen::default());
        assert_eq!(o.last_owner, Some((3, 0)));
    }

    #[test]
    fn history_follows_the_last_owner_that_was_writable() {
        let mut o = Owners::default();
        o.observe(
            ME,
            &Seen {
                claims: vec![(3, 0)],
                ..Seen::default()
            },
        );
        assert_eq!(o.history(), Some((3, 0)), "no primary seen yet: the last owner");
        assert!(o.note_primary((3, 0), 40), "news, to persist");
        // Node 2 wins term 4 but never reports a writable database (its promotion failed).
        o.observe(
            ME,
            &Seen {
                claims: vec![(4, 2)],
                ..Seen::default()
            },
        );
        assert_eq!(o.last_owner, Some((4, 2)));
        assert_eq!(o.history(), Some((3, 0)));
        assert!(!o.note_primary((2, 1), 50));
        assert_eq!(o.history(), Some((3, 0)), "an older term changes nothing");
        assert_eq!(o.primary_floor, 40);
        assert!(o.note_primary((4, 2), 60));
        assert!(!o.note_primary((4, 2), 70));
        let kept = Owners::new(None, Some(((4, 2), 60)));
        assert_eq!(
            (kept.history(), kept.primary_floor),
            (Some((4, 2)), 60),
            "from the state file"
        );
        assert_eq!(
            (o.history(), o.primary_floor),
            (Some((4, 2)), 60),
            "the first report sets the floor"
        );
    }

    #[test]
    fn a_newer_owner_never_seen_writable_is_named_to_the_primary_before_it() {
        // This node was primary in term 3; node 2 won term 4 and was never seen writable.
        let mut o = Owners::new(Some((3, ME)), Some(((3, ME), 40)));
        assert_eq!(o.unseen_newer_owner(ME), None);
        let vote = Seen {
            vote: Some((4, 2)),
            ..Seen::default()
        };
        o.observe(ME, &vote);
        assert_eq!(o.history(), Some((3, ME)));
        assert_eq!(o.unseen_newer_owner(ME), Some((4, 2)));
        // Known from the persisted last holder alone, after a restart.
        let restarted = Owners::new(Some((4, 2)), Some(((3, ME), 40)));
        assert_eq!(restarted.unseen_newer_owner(ME), Some((4, 2)));
        // Seen writable: it is the history now, and the usual rules apply.
        assert!(o.note_primary((4, 2), 50));
        assert_eq!(o.unseen_newer_owner(ME), None);
        // Nothing of the kind for a node that was not the last primary, nor for its own terms.
        let replica = Owners::new(Some((4, 2)), Some(((3, 0), 40)));
        assert_eq!(replica.unseen_newer_owner(ME), None);
        let mine = Owners::new(Some((5, ME)), Some(((3, ME), 40)));
        assert_eq!(mine.unseen_newer_owner(ME), None);
    }

    #[test]
    fn the_highest_writable_position_only_grows() {
        let mut o = Owners::default();
        o.note_writable(0, 10);
        o.note_writable(2, 8);
        assert_eq!(o.highest_writable, Some((10, 0)));
        o.note_writable(2, 11);
        assert_eq!(o.highest_writable, Some((11, 2)));
    }
}
