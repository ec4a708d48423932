//! The database invariants, checked as the run goes (judged on the model's data, not on what
//! the gates believe).

use super::Sim;
use super::model::Tx;
use crate::core::NodeIdx;
use crate::gate::Phase;
use std::collections::HashSet;

fn id(i: NodeIdx) -> String {
    format!("db{}", i + 1)
}

impl Sim {
    /// After every step: one host serves the VIP at most; a database whose release announced
    /// it fenced is still read_only while it runs.
    pub(super) fn check(&mut self) -> Result<(), String> {
        if let Some(v) = self.violation.take() {
            return Err(v);
        }
        let serving = self.nodes.iter().filter(|n| n.vip.is_some()).count();
        if serving > 1 {
            return Err(format!("{serving} hosts serve the VIP"));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if node.announced_fenced && node.db.writable() {
                return Err(format!(
                    "{} is writable although its release announced it fenced",
                    id(i as NodeIdx)
                ));
            }
        }
        Ok(())
    }

    /// A write through the VIP lands on the database of the lease's term, promoted for it (or
    /// releasing it, before its fence).
    pub(super) fn check_write(&self, h: NodeIdx) -> Result<(), String> {
        let lease = self.lease.as_ref().filter(|l| l.node == h);
        let term = lease.map(|l| l.term);
        let phase = self.node(h).gate.phase();
        let by_right = term
            .is_some_and(|t| phase == Phase::Promoted(t) || phase == (Phase::Fencing { release: Some(t) }));
        if by_right {
            return Ok(());
        }
        Err(format!(
            "{} takes a write through the VIP in phase {phase:?} (lease term {term:?})",
            id(h)
        ))
    }

    /// A new primary has every acknowledged write, everything an eligible candidate had at its
    /// election, and nothing the previous primary lacks.
    pub(super) fn check_promotion(&mut self, w: NodeIdx) -> Result<(), String> {
        let log: HashSet<Tx> = self.node(w).db.log.iter().copied().collect();
        let owed = std::mem::take(&mut self.owed);
        let unpaid = owed.iter().find(|(t, _)| !log.contains(t));
        if unpaid.is_some() && self.overlap {
            self.outcome.behind_after_double_faults += 1;
        } else if let Some((_, c)) = unpaid {
            return Err(format!(
                "{} promoted lacking transaction(s) that the eligible {} had at its election; {}",
                id(w),
                id(*c),
                self.histories()
            ));
        }
        let missing: Vec<Tx> = self
            .client
            .acked
            .iter()
            .filter(|t| !log.contains(t))
            .copied()
            .collect();
        if !missing.is_empty() && self.overlap {
            self.outcome.lost_to_double_faults += missing.len() as u64;
            self.client.acked.retain(|t| log.contains(t));
        } else if !missing.is_empty() {
            return Err(format!(
                "{} promoted without {} acknowledged write(s) {:?}…; {}",
                id(w),
                missing.len(),
                &missing[..missing.len().min(5)],
                self.histories()
            ));
        }
        let before = self.primary;
        if before != w {
            let extra = self.node(w).db.extra_over(&self.node(before).db);
            if !extra.is_empty() {
                return Err(format!(
                    "{} promoted holding {} transaction(s) the previous primary {} lacks",
                    id(w),
                    extra.len(),
                    id(before)
                ));
            }
        }
        self.primary = w;
        let node = self.node_mut(w);
        node.announced_fenced = false;
        node.last_primary = w;
        node.floor = node.db.received_len() as u64;
        self.outcome.promotions += 1;
        Ok(())
    }

    /// The winner holds nothing the cluster's primary lacks; what eligible candidates have and
    /// it lacks is owed: its promotion must bring it (a hand-over's final position does).
    pub(super) fn check_election(&mut self, w: NodeIdx, candidates: &[NodeIdx]) -> Result<(), String> {
        let owed: Vec<(Tx, NodeIdx)> = (candidates.iter().filter(|c| **c != w))
            .flat_map(|&c| {
                self.node(c)
                    .db
                    .extra_over(&self.node(w).db)
                    .into_iter()
                    .map(move |t| (t, c))
            })
            .collect();
        self.owed = owed;
        if w != self.primary {
            let extra = self.node(w).db.extra_over(&self.node(self.primary).db);
            if !extra.is_empty() {
                return Err(format!(
                    "{} wins holding {} transaction(s) the primary {} lacks (diverged)",
                    id(w),
                    extra.len(),
                    id(self.primary)
                ));
            }
        }
        Ok(())
    }

    /// Each database's history, for a violation's message.
    fn histories(&self) -> String {
        let each = self.nodes.iter().enumerate().map(|(i, n)| {
            format!(
                "{}: executed {}, relay {}, source {:?}, io {:?}, read_only {}",
                id(i as NodeIdx),
                n.db.log.len(),
                n.db.relay.len(),
                n.db.source.map(id),
                n.db.io,
                n.db.read_only
            )
        });
        each.collect::<Vec<_>>().join("; ")
    }

    /// A database that holds transactions the owner lacks (it diverged) is never re-pointed
    /// at it: replicating would keep them silently.
    pub(super) fn check_repoint(&self, i: NodeIdx, owner: NodeIdx) -> Result<(), String> {
        let extra = self.node(i).db.extra_over(&self.node(owner).db);
        if extra.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} re-points replication at {} while holding {} transaction(s) it lacks",
            id(i),
            id(owner),
            extra.len()
        ))
    }

    /// At most one automatic failover per anti-flap window.
    pub(super) fn check_window(&mut self) {
        if let Some(at) = self.last_takeover
            && self.now < at + self.window
        {
            self.violation = Some(format!(
                "a second automatic failover {:?} after the one before, inside the window",
                self.now.saturating_since(at)
            ));
        }
        self.last_takeover = Some(self.now);
        self.window_until = self.now + self.window;
    }
}
