//! The VIP's lease as the shell keeps it: when the VIPs may be held, served and announced, and
//! by when they must be gone. Pure — every decision takes `now` — so that the VIP task, its
//! backstop thread, the announcement threads and the simulator (`crate::sim`) all decide
//! through the same code.
//!
//! The shell's **deadline** is the lease end minus half the release budget: the kernel fence
//! is opened only until then, and the backstop removes the VIPs then if the agent loop has not
//! released them by itself (it starts at the lease end minus the whole budget). A term once
//! dropped is never held again: after a release, a late renewal must not bring a VIP back.

use super::Report;
use crate::core::{Instant, Term};
use std::time::Duration;

/// The shortest fence opening the shell asks for. Below one kernel tick (10 ms at HZ = 100)
/// a timeout rounds down to zero ticks, which the kernel reads as "no timeout": the fence would
/// stay open for ever. A shorter time left closes the fence instead.
pub const MIN_FENCE: Duration = Duration::from_millis(10);

/// What a `Hold` asks of the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub term: Term,
    /// This hold starts holding (the VIPs are not up yet): announce once they are.
    pub acquiring: bool,
    /// The addresses' valid lifetime in whole seconds (the kernel's unit), at least one.
    pub lifetime_s: u32,
}

/// The shared lease state of one agent's VIPs.
#[derive(Clone, Debug)]
pub struct Lease {
    /// The term and lease end while holding.
    holding: Option<(Term, Instant)>,
    /// The highest term given up (by release, failure or the backstop).
    dropped: Option<Term>,
    /// Half the release budget: how long before the lease end the shell's deadline falls.
    margin: Duration,
}

impl Lease {
    pub fn new(release_budget: Duration) -> Lease {
        Lease {
            holding: None,
            dropped: None,
            margin: release_budget / 2,
        }
    }

    /// How long before the lease end the deadline falls (half the release budget).
    pub fn margin(&self) -> Duration {
        self.margin
    }

    /// By when the VIPs of a lease ending at `lease_end` must no longer be served.
    pub fn deadline(&self, lease_end: Instant) -> Instant {
        lease_end - self.margin
    }

    /// When the backstop removes the VIPs unless the lease is renewed or released before.
    pub fn backstop_at(&self) -> Option<Instant> {
        #[cfg(test)]
        if faults::active(faults::Shell::LateBackstop) {
            return self.holding.map(|(_, end)| end);
        }
        self.holding.map(|(_, end)| self.deadline(end))
    }

    /// Starts or renews holding for `term` until `lease_end`; `None` if that must not happen:
    /// the term was dropped, or its deadline has passed.
    pub fn hold(&mut self, now: Instant, term: Term, lease_end: Instant) -> Option<Plan> {
        let deadline = self.deadline(lease_end);
        if now >= deadline || self.dropped.is_some_and(|d| term <= d) {
            return None;
        }
        // A renewal never shortens what the kernel was already told for the same term.
        let end = match self.holding {
            Some((t, e)) if t == term => e.max(lease_end),
            _ => lease_end,
        };
        let acquiring = self.holding.is_none();
        self.holding = Some((term, end));
        Some(Plan {
            term,
            acquiring,
            lifetime_s: lifetime_secs(now, end),
        })
    }

    /// Stops holding: nothing of `term` (or older) is held, served or announced again.
    pub fn give_up(&mut self, term: Term) {
        self.holding = None;
        self.dropped = Some(self.dropped.map_or(term, |d| d.max(term)));
    }

    /// The backstop's decision at `now`: the term to drop if its deadline has come.
    pub fn expire(&mut self, now: Instant) -> Option<Term> {
        let (term, _) = self.holding?;
        if now < self.backstop_at()? {
            return None;
        }
        self.give_up(term);
        Some(term)
    }

    /// Whether the VIPs may be announced (or re-added) at `now`.
    pub fn serving(&self, now: Instant) -> bool {
        self.holding.is_some_and(|(_, end)| now < self.deadline(end))
    }

    /// How long to open the fence for `term` with a request that goes out at `now`: the time
    /// left until the deadline of the lease held, or `None` to close it instead (the term was
    /// given up meanwhile — by a release or the backstop — or too little time is left).
    /// Decided right before the request is sent, never earlier: the kernel counts the time
    /// from when it applies the request.
    pub fn fence_for(&self, term: Term, now: Instant) -> Option<Duration> {
        match self.holding {
            Some((t, end)) if t == term => fence_timeout(now, self.deadline(end)),
            _ => None,
        }
    }

    /// Whether a fence opening sent at `sent` and answered at `answered` may reach past the
    /// lease end: the kernel applied it somewhere in between, so an answer later than the margin
    /// must be corrected with the time left then.
    pub fn answered_late(&self, sent: Instant, answered: Instant) -> bool {
        answered.saturating_since(sent) > self.margin
    }

    /// The term held, if any.
    pub fn held(&self) -> Option<Term> {
        self.holding.map(|(t, _)| t)
    }

    /// The term held and its lease end.
    pub fn holding(&self) -> Option<(Term, Instant)> {
        self.holding
    }
}

/// How long to open the fence at `now` for a deadline, if at least [`MIN_FENCE`] is left.
pub fn fence_timeout(now: Instant, deadline: Instant) -> Option<Duration> {
    #[cfg(test)]
    if faults::active(faults::Shell::FenceTooLong) {
        return Some(deadline.saturating_since(now) + Duration::from_secs(1));
    }
    Some(deadline.saturating_since(now)).filter(|d| *d >= MIN_FENCE)
}

/// Whole seconds of address lifetime that cover `until` from `now`: at least one.
pub fn lifetime_secs(now: Instant, until: Instant) -> u32 {
    let us = until.saturating_since(now).as_micros();
    u32::try_from(us.div_ceil(1_000_000)).unwrap_or(u32::MAX).max(1)
}

/// What the VIP task reports after trying to remove the VIPs of `term` for the `Drop` numbered
/// `seq`: done only when the kernel confirmed every address gone.
pub fn drop_report(term: Term, seq: u64, removal: Result<(), String>) -> Report {
    #[cfg(test)]
    if faults::active(faults::Shell::DroppedAfterFailedRemoval) {
        return Report::Dropped { term, seq };
    }
    match removal {
        Ok(()) => Report::Dropped { term, seq },
        Err(error) => Report::DropFailed { term, seq, error },
    }
}

/// Deliberate shell bugs that the simulator must catch (tests only), switched per thread.
#[cfg(test)]
pub(crate) mod faults {
    use std::cell::Cell;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Shell {
        /// The backstop fires at the lease end instead of before it.
        LateBackstop,
        /// A removal that failed is reported as done.
        DroppedAfterFailedRemoval,
        /// The fence is opened a second past the deadline (as if it were not there at all,
        /// for a host whose agent died: its address outlives the lease by about that much).
        FenceTooLong,
    }

    thread_local! {
        static ACTIVE: Cell<Option<Shell>> = const { Cell::new(None) };
    }

    pub(crate) fn active(f: Shell) -> bool {
        ACTIVE.with(|a| a.get() == Some(f))
    }

    /// Turns `f` on for this thread until the guard is dropped.
    pub(crate) fn inject(f: Option<Shell>) -> Guard {
        ACTIVE.with(|a| a.set(f));
        Guard
    }

    pub(crate) struct Guard;

    impl Drop for Guard {
        fn drop(&mut self) {
            ACTIVE.with(|a| a.set(None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_micros(ms * 1000)
    }

    #[test]
    fn the_fence_and_the_backstop_end_half_a_budget_before_the_lease() {
        let mut l = Lease::new(Duration::from_millis(200));
        let plan = l.hold(t(0), 3, t(1000)).unwrap();
        assert!(plan.acquiring);
        assert_eq!(l.fence_for(3, t(0)), Some(Duration::from_millis(900)));
        assert_eq!(l.fence_for(2, t(0)), None, "another term closes");
        assert_eq!(plan.lifetime_s, 1);
        assert!(!l.answered_late(t(0), t(100)) && l.answered_late(t(0), t(101)));
        assert_eq!(l.backstop_at(), Some(t(900)));
        assert!(l.serving(t(899)) && !l.serving(t(900)));
        assert_eq!(l.expire(t(899)), None);
        assert_eq!(l.expire(t(900)), Some(3));
        assert_eq!(
            l.hold(t(901), 3, t(2000)),
            None,
            "a dropped term is never held again"
        );
        assert!(l.hold(t(901), 4, t(2000)).unwrap().acquiring);
    }

    #[test]
    fn too_little_time_left_closes_the_fence_and_a_renewal_never_shortens() {
        let mut l = Lease::new(Duration::from_millis(20));
        l.hold(t(0), 1, t(25)).unwrap();
        assert_eq!(l.fence_for(1, t(0)), Some(Duration::from_millis(15)));
        assert_eq!(l.fence_for(1, t(6)), None, "9 ms left: closed");
        l.hold(t(6), 1, t(22)).unwrap();
        assert_eq!(l.holding(), Some((1, t(25))), "kept the later end");
        assert_eq!(l.hold(t(15), 1, t(25)), None, "past the deadline");
        assert_eq!(lifetime_secs(t(0), t(1001)), 2);
    }

    #[test]
    fn a_failed_removal_is_reported_as_failed() {
        assert_eq!(drop_report(2, 5, Ok(())), Report::Dropped { term: 2, seq: 5 });
        assert!(matches!(
            drop_report(2, 5, Err("EPERM".into())),
            Report::DropFailed { term: 2, seq: 5, .. }
        ));
    }
}
