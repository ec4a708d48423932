//! The anti-flap window's rules (promote mode), on wall-clock milliseconds passed in: after an
//! automatic failover — a node taking ownership from another without being named by it — no
//! other automatic failover until the window ends. Planned hand-overs name their successor and
//! are never blocked. The agent persists the end and carries out the log and the reports.

use super::Owner;
use crate::core::{NodeIdx, Term};
use std::time::Duration;

/// The owner's figure is taken over when it moves the end by more than this: reports arrive
/// every second, and their delay shifts the computed end a little each time.
pub const RESYNC_MS: u64 = 5_000;

/// What is left of a window ending at `until_ms` (Unix ms), at `now_ms`.
pub fn left(until_ms: Option<u64>, now_ms: u64) -> Duration {
    until_ms.map_or(Duration::ZERO, |until| {
        Duration::from_millis(until.saturating_sub(now_ms))
    })
}

/// This node may take over only when named: a window is on, and another node held the lease
/// last (taking over from itself moves no data and is no failover).
pub fn blocks(left: Duration, last_holder: Option<Owner>, me: NodeIdx) -> bool {
    !left.is_zero() && last_holder.is_some_and(|(_, o)| o != me)
}

/// Whether winning `term` was an automatic failover, and from whom: no releasing owner named
/// this node, and someone else held the lease (or, failing that, owned) before `term`.
pub fn takeover(
    term: Term,
    named: bool,
    me: NodeIdx,
    last_holder: Option<Owner>,
    last_owner: Option<Owner>,
) -> Option<(Term, NodeIdx)> {
    let before = last_holder
        .filter(|(t, _)| *t < term)
        .or(last_owner.filter(|(t, _)| *t < term))
        .map(|(_, o)| o);
    match before {
        Some(from) if !named && from != me => Some((term, from)),
        _ => None,
    }
}

/// The end to follow when the owner reports `owner_left_ms` of its window (0: none), or `None`
/// when the current end is close enough to leave alone.
pub fn follow(current: Option<u64>, owner_left_ms: u32, now_ms: u64) -> Option<Option<u64>> {
    let until = (owner_left_ms > 0).then(|| now_ms.saturating_add(u64::from(owner_left_ms)));
    let changed = match (current, until) {
        (Some(a), Some(b)) => a.abs_diff(b) > RESYNC_MS,
        (a, b) => a.is_some() != b.is_some(),
    };
    changed.then_some(until)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: NodeIdx = 1;

    #[test]
    fn only_an_unnamed_takeover_from_another_node_opens_a_window() {
        assert_eq!(takeover(5, false, ME, Some((4, 0)), None), Some((5, 0)));
        assert_eq!(takeover(5, true, ME, Some((4, 0)), None), None, "named: planned");
        assert_eq!(takeover(5, false, ME, Some((4, ME)), None), None, "from itself");
        assert_eq!(takeover(5, false, ME, None, None), None, "nobody owned before");
        // Known only as the owner of an older term (a vote): still a takeover.
        assert_eq!(takeover(5, false, ME, None, Some((3, 2))), Some((5, 2)));
        // The holder of this very term is not "before".
        assert_eq!(takeover(5, false, ME, Some((5, 0)), None), None);
    }

    #[test]
    fn a_window_blocks_only_takeovers_from_another_node_while_it_lasts() {
        let open = left(Some(10_000), 4_000);
        assert_eq!(open, Duration::from_secs(6));
        assert!(blocks(open, Some((3, 0)), ME));
        assert!(!blocks(open, Some((3, ME)), ME));
        assert!(!blocks(left(Some(10_000), 10_000), Some((3, 0)), ME));
        assert!(!blocks(left(None, 0), Some((3, 0)), ME));
    }

    #[test]
    fn the_owners_figure_is_followed_only_when_it_moves_the_end_far_enough() {
        assert_eq!(follow(None, 60_000, 1_000), Some(Some(61_000)));
        assert_eq!(
            follow(Some(61_000), 59_000, 2_500),
            None,
            "within the resync margin"
        );
        assert_eq!(follow(Some(61_000), 50_000, 2_000), Some(Some(52_000)));
        assert_eq!(follow(Some(61_000), 0, 2_000), Some(None), "lifted on the owner");
        assert_eq!(follow(None, 0, 2_000), None);
    }
}
