//! The anti-flap window (promote mode). After an automatic failover — a node taking ownership
//! from another without being named by it — no other automatic failover happens until
//! `failover_block_ms` has passed. Planned hand-overs (switchover, maintenance, a graceful stop,
//! preemption) name their successor and are never blocked; `vipgate failover-ack` lifts the
//! window.
//!
//! The node that took over starts the window once its database is promoted, persists its end
//! (wall clock, so that a restart or a reboot keeps it) and tells peers what is left of it in
//! its database reports; every other node follows the current owner's figure. A blocked node
//! still votes, acknowledges and advertises its eligibility (an owner may name it), but never
//! starts an election of its own.

use super::Agent;
use crate::core::{Instant, NodeIdx, Term};
use crate::gate::window;
use crate::gate::{DbReport, Ineligible};
use std::time::{Duration, SystemTime};

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Agent {
    /// What is left of the anti-flap window (zero outside promote mode).
    pub(super) fn failover_block_left(&self) -> Duration {
        if !self.promote_mode() {
            return Duration::ZERO;
        }
        window::left(self.failover_block_until, wall_ms())
    }

    /// This node may take over only when named: a window is on, and another node owned last
    /// (taking over from itself moves no data and is no failover).
    pub(super) fn failover_blocked(&self) -> bool {
        window::blocks(self.failover_block_left(), self.owners.last_holder, self.me)
    }

    /// Ownership of `term` was won: an automatic failover (and from whom) when no releasing
    /// owner named this node and someone else held the lease before. The window starts once it
    /// is promoted (`gate::Action::OpenWindow`).
    pub(super) fn note_acquire(&mut self, term: Term, named: bool) -> Option<(Term, NodeIdx)> {
        // Peers' claims not noted yet count; this node's own new ownership must not.
        for (i, view) in self.core.peers().iter().enumerate() {
            let i = i as NodeIdx;
            if view.lease_claim
                && view.owner == Some(i)
                && view.term < term
                && self.owners.last_holder.is_none_or(|(t, _)| view.term > t)
            {
                self.owners.last_holder = Some((view.term, i));
            }
        }
        let takeover = window::takeover(
            term,
            named,
            self.me,
            self.owners.last_holder,
            self.owners.last_owner,
        );
        self.note_owner();
        takeover
    }

    /// The database of `term`, won by an automatic failover from `from`, is promoted: the
    /// window opens.
    pub(super) fn start_failover_block(&mut self, term: Term, from: NodeIdx) {
        let window = self
            .mysql
            .as_ref()
            .map_or(Duration::ZERO, |(m, _)| m.failover_block);
        if window.is_zero() {
            return;
        }
        tracing::warn!(
            term,
            "automatic failover from {}: no other automatic failover for {} s (failover_block_ms); \
             `vipgate failover-ack` lifts the block",
            self.id(from),
            window.as_secs()
        );
        let until = wall_ms().saturating_add(u64::try_from(window.as_millis()).unwrap_or(u64::MAX));
        if let Err(e) = self.set_failover_block(Some(until)) {
            tracing::error!("{e}");
        }
    }

    /// A database report from `from`: the owner's window is the cluster's (lifted there,
    /// lifted everywhere) once its database is promoted (before, it has not decided yet).
    pub(super) fn follow_failover_block(&mut self, now: Instant, from: NodeIdx, report: &DbReport) {
        if !self.promote_mode() || from == self.me || self.core.owner(now) != Some(from) || !report.writable {
            return;
        }
        let left_ms = report.failover_block_ms;
        let Some(until) = window::follow(self.failover_block_until, left_ms, wall_ms()) else {
            return;
        };
        match until {
            Some(_) => tracing::warn!(
                "the owner {} reports an anti-flap window of {} s: this node takes over only when named",
                self.id(from),
                left_ms / 1000
            ),
            None if !self.failover_block_left().is_zero() => {
                tracing::info!("the owner {} lifted the anti-flap window", self.id(from))
            }
            None => {}
        }
        if let Err(e) = self.set_failover_block(until) {
            tracing::error!("{e}");
        }
    }

    /// `vipgate failover-ack`: lifts the window — for the whole cluster on the owner; on a node
    /// with no owner, so that it may take over.
    /// Also lifts, on a node while no node owns, the cross-region block for the last owner's
    /// term: the operator decides that the primary may move to this region.
    /// And, on a node while no node owns, a peer replica that received more but is down (or
    /// lagging), a newer owner never seen writable, or a last primary this replica had not
    /// caught up with (`CatchingUp`, `BelowPrimary`) and that is gone: the operator accepts
    /// losing what only that peer, or that primary, may have.
    pub(super) fn failover_ack(&mut self, now: Instant) -> Result<String, String> {
        let window = !self.failover_block_left().is_zero();
        let region = self.region_blocked();
        let behind = matches!(
            self.database_why(now),
            Some(
                Ineligible::BehindPeer { .. }
                    | Ineligible::NewerOwner { .. }
                    | Ineligible::CatchingUp { .. }
                    | Ineligible::BelowPrimary { .. }
            )
        );
        if !window && !region && !behind {
            return Ok("no failover block is in effect".into());
        }
        if let Some(o) = self.core.owner(now).filter(|o| *o != self.me) {
            return Err(format!(
                "{} owns: run `vipgate failover-ack` on {} to lift the anti-flap window (a move to another \
                 region while an owner lives is a switchover)",
                self.id(o),
                self.id(o)
            ));
        }
        let mut done = Vec::new();
        if window {
            self.set_failover_block(None)
                .map_err(|e| format!("nothing changed: {e}"))?;
            tracing::warn!("failover block lifted by an operator");
            done.push(if self.core.owner(now) == Some(self.me) {
                "failover block lifted for the cluster"
            } else {
                "failover block lifted: this node may take over automatically"
            });
        }
        if region {
            self.region_override = self.owners.last_holder.map(|(t, _)| t);
            tracing::warn!("an operator lets ownership move to this node's region");
            done.push("this node may take over from the last owner's region");
        }
        if behind {
            self.behind_override = self.owners.history().map(|(t, _)| t);
            tracing::warn!(
                "an operator lets this node stand although a peer received or wrote more: what only that peer \
                 has is lost"
            );
            done.push(
                "this node may stand although a peer received or wrote more (what only it has is lost)",
            );
        }
        Ok(done.join("; "))
    }

    fn set_failover_block(&mut self, until: Option<u64>) -> Result<(), String> {
        let result = self
            .state
            .set_failover_block_until_ms(until)
            .map_err(|e| e.to_string());
        // Kept in memory even if it could not be persisted: blocking is the cautious side.
        if result.is_ok() || until.is_some() {
            self.failover_block_until = until;
        }
        result
    }
}
