//! Candidate ranking: who should own next.
//!
//! The most advanced database first (MHA's rule: promoting a replica that lacks transactions
//! loses them), then candidates in the last owner's region (clients and replicas are near
//! it), then the operator's priority, then the lowest node index (ids sorted) so that every
//! agent orders the same candidates the same way.

use super::message::{NodeIdx, Position};
use std::cmp::Ordering;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub node: NodeIdx,
    pub position: Position,
    /// In the region of the last owner.
    pub preferred: bool,
    pub priority: u8,
}

impl Candidate {
    /// `Ordering::Less` means `self` ranks before (is better than) `other`.
    pub fn cmp_rank(&self, other: &Candidate) -> Ordering {
        other
            .position
            .cmp(&self.position)
            .then(other.preferred.cmp(&self.preferred))
            .then(other.priority.cmp(&self.priority))
            .then(self.node.cmp(&other.node))
    }

    pub fn better_than(&self, other: &Candidate) -> bool {
        self.cmp_rank(other) == Ordering::Less
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(node: NodeIdx, position: Position, priority: u8) -> Candidate {
        Candidate {
            node,
            position,
            preferred: false,
            priority,
        }
    }

    #[test]
    fn the_last_owners_region_comes_after_data_and_before_priority() {
        let near = Candidate {
            preferred: true,
            ..c(2, 100, 1)
        };
        assert!(near.better_than(&c(0, 100, 255)));
        assert!(c(0, 101, 1).better_than(&near));
    }

    #[test]
    fn most_advanced_data_ranks_first_even_with_lower_priority() {
        assert!(c(1, 100, 1).better_than(&c(0, 99, 255)));
    }

    #[test]
    fn priority_breaks_equal_positions_then_lowest_index() {
        assert!(c(1, 100, 200).better_than(&c(0, 100, 100)));
        assert!(c(0, 100, 100).better_than(&c(1, 100, 100)));
        assert!(!c(1, 100, 100).better_than(&c(1, 100, 100)));
    }
}
