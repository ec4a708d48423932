//! The lease, as the core holds it: renewed while the owner is reachable and eligible,
//! released (the gate fences first) when it is not, lapsing at its end when the release cannot
//! complete or peers cannot hear it, and won by the best eligible candidate.

use super::run::{INTERVAL, LEASE};
use super::{Lease, Release, Sim};
use crate::core::{FinalData, NodeIdx};
use crate::gate::machine::Event;
use std::time::Duration;

impl Sim {
    pub(super) fn ownership(&mut self) -> Result<(), String> {
        let Some(lease) = self.lease.clone() else {
            if self.now >= self.elect_at {
                self.elect(None)?;
            }
            return Ok(());
        };
        match &lease.release {
            Some(r) => self.releasing(&lease, r),
            None => {
                self.hold(&lease);
                Ok(())
            }
        }
    }

    /// A majority of the members (the database nodes and one witness, never cut off) can be
    /// reached: what any election and any renewal needs.
    fn quorum(&self) -> bool {
        let members = self.nodes.len() + 1;
        let reachable = 1 + self.nodes.iter().filter(|n| !n.isolated).count();
        reachable > members / 2
    }

    fn hold(&mut self, lease: &Lease) {
        let owner = lease.node;
        if self.node(owner).isolated || !self.quorum() {
            // Cut off: no renewal; its own core gives up before the lease could run out.
            if self.now + LEASE / 6 >= lease.end {
                self.start_release(false, false);
            }
            return;
        }
        if !self.eligible(owner) {
            self.start_release(true, false);
            return;
        }
        if let Some(l) = &mut self.lease {
            l.end = self.now + LEASE;
        }
    }

    fn releasing(&mut self, lease: &Lease, release: &Release) -> Result<(), String> {
        let owner = lease.node;
        if self.now >= release.vip_gone_at || self.now >= lease.end {
            self.node_mut(owner).vip = None;
            // Unplanned: the VIP task resets the clients' connections as it drops the VIP.
            if !release.planned && self.client.pending.is_some_and(|(_, at, _)| at == owner) {
                self.client.pending = None;
            }
        }
        if self.now >= lease.end {
            // Lapsed, or released where nobody heard it: every grant ends now.
            self.lease = None;
            self.elect_at = self.now + Duration::from_millis(self.rng.range(0, INTERVAL.as_millis() as u64));
            return Ok(());
        }
        if !(self.released(lease) && release.announced) {
            return Ok(());
        }
        if let Some(FinalData::Fenced { position, gtid }) = &release.final_data {
            for i in 0..self.nodes.len() as NodeIdx {
                if i != owner && !self.node(i).isolated {
                    let gtid = gtid.clone();
                    self.gate(
                        i,
                        Event::HandedOver {
                            position: *position,
                            gtid,
                        },
                    );
                }
            }
        }
        self.lease = None;
        // The release names the best other candidate.
        self.elect(Some(owner))
    }

    /// Ownership may not come to `i` on its own: an anti-flap window is on and another node
    /// owned last.
    pub(super) fn blocked(&self, i: NodeIdx) -> bool {
        self.now < self.window_until && self.last_owner != i
    }

    /// `released_by`: the owner whose release names the winner (never itself).
    fn elect(&mut self, released_by: Option<NodeIdx>) -> Result<(), String> {
        let named = released_by.is_some();
        if !self.quorum() {
            self.elect_at = self.now + INTERVAL;
            return Ok(());
        }
        let candidates: Vec<NodeIdx> = (0..self.nodes.len() as NodeIdx)
            .filter(|i| !self.node(*i).isolated && self.eligible(*i))
            .filter(|i| named || !self.blocked(*i))
            .filter(|i| released_by != Some(*i))
            .collect();
        let Some(winner) = self.best(&candidates) else {
            self.elect_at = self.now + INTERVAL;
            return Ok(());
        };
        self.check_election(winner, &candidates)?;
        self.term += 1;
        let term = self.term;
        let takeover = (!named && self.last_owner != winner).then_some((term, self.last_owner));
        self.last_owner = winner;
        self.lease = Some(Lease {
            node: winner,
            term,
            end: self.now + LEASE,
            release: None,
        });
        self.log(|| format!("db{} wins term {term} (named {named})", winner + 1));
        self.views();
        self.gate(winner, Event::Acquired { term, takeover });
        Ok(())
    }
}
