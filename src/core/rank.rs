//! Candidate ranking: who should own next.
//!
//! The most advanced database first (MHA's rule: promoting a replica that lacks transactions
//! loses them), then the operator's priority, then the lowest node index (ids sorted) so that
//! every agent orders the same candidates the same way.

use super::message::{NodeIdx, Position};
use std::cmp::Ordering;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub node: NodeIdx,
    pub position: Position,
    pub priority: u8,
}

impl Candidate {
    /// `Ordering::Less` means `self` ranks before (is better than) `other`.
    pub fn cmp_rank(&self, other: &Candidate) -> Ordering {
        other
            .position
            .cmp(&self.position)
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
            priority,
        }
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
