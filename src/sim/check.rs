//! The invariants, checked after every event and at the moments they concern. Serving starts
//! only at events (an address added, a fence opened), so checking at each event instant
//! covers every real instant; what only ends between events (an expiry) cannot break them.

use super::*;
use crate::core::RoleKind;

impl Sim {
    /// After every event: at most one host serves the VIP, at most one agent believes an
    /// unexpired lease (as the owner, eligible, not a witness), terms never go back, and a
    /// running agent whose effects worked has no VIP past its lease end.
    pub(super) fn check(&mut self) -> Result<(), Violation> {
        let mut serving = Vec::new();
        let mut holders = Vec::new();
        for i in 0..self.agents.len() {
            let local = self.agents[i].clock.local(self.now);
            if self.agents[i].kernel.serving(local) {
                serving.push(i);
            }
            self.check_vip_within_lease(i as NodeIdx, local)?;
            let a = &self.agents[i];
            let Some(core) = &a.core else { continue };
            let (role, term) = (core.role(), core.term());
            if core.holds_lease(local) {
                holders.push(i);
                if role != RoleKind::Owner || self.scenario.members[i].witness || !a.told_eligible {
                    let what = format!(
                        "agent {i} holds a lease as {role:?} (eligible {})",
                        a.told_eligible
                    );
                    return Err(self.fail(what));
                }
            }
            if term < a.highest_term {
                let what = format!("agent {i}'s term went back from {} to {term}", a.highest_term);
                return Err(self.fail(what));
            }
            self.agents[i].highest_term = term;
        }
        if serving.len() > 1 {
            return Err(self.fail(format!("hosts {serving:?} serve the VIP at the same instant")));
        }
        if holders.len() > 1 {
            return Err(self.fail(format!(
                "agents {holders:?} hold unexpired leases at the same instant"
            )));
        }
        Ok(())
    }

    /// A running agent whose effects worked has its VIP gone by its lease end.
    fn check_vip_within_lease(&self, agent: NodeIdx, local: Instant) -> Result<(), Violation> {
        let a = &self.agents[usize::from(agent)];
        let running = a.core.is_some() && self.now >= a.frozen_until;
        if let Some(m) = a.lease_mark
            && running
            && !a.exempt
            && a.kernel.has_addr(local)
            && local > m.end
        {
            return Err(self.fail(format!(
                "agent {agent} still has the VIP {:?} after its lease of term {} ended",
                local.saturating_since(m.end),
                m.term
            )));
        }
        Ok(())
    }

    /// A removal the kernel applies after the lease end breaks the shell's rule (remove before
    /// the lease ends, whatever the loop does), unless effects failed or the process stopped.
    pub(super) fn check_removed_in_time(&self, agent: NodeIdx, local: Instant) -> Result<(), Violation> {
        let a = &self.agents[usize::from(agent)];
        if !a.kernel.has_addr(local) {
            return Ok(());
        }
        self.check_vip_within_lease(agent, local).map_err(|mut v| {
            v.what = format!("{} (removed only now)", v.what);
            v
        })
    }

    /// An acquisition: by an eligible database node, once per term, and never before another
    /// agent's lease that no release has freed has ended on that agent's clock.
    pub(super) fn check_acquire(&self, agent: NodeIdx, term: Term) -> Result<(), Violation> {
        let i = usize::from(agent);
        if self.scenario.members[i].witness {
            return Err(self.fail(format!("witness {agent} acquired ownership in term {term}")));
        }
        if !self.agents[i].told_eligible {
            return Err(self.fail(format!(
                "ineligible agent {agent} acquired ownership in term {term}"
            )));
        }
        if let Some(&first) = self.owners.get(&term) {
            return Err(self.fail(format!("agents {first} and {agent} both acquired term {term}")));
        }
        for (j, other) in self.agents.iter().enumerate() {
            let Some(m) = other.lease_mark.filter(|m| j != i && !m.released) else {
                continue;
            };
            let theirs = other.clock.local(self.now);
            if theirs < m.end {
                return Err(self.fail(format!(
                    "agent {agent} acquired term {term} {:?} before agent {j}'s unreleased lease of term {} ended",
                    m.end.saturating_since(theirs),
                    m.term
                )));
            }
        }
        Ok(())
    }

    pub(super) fn check_persist(&self, agent: NodeIdx, state: PersistentState) -> Result<(), Violation> {
        let durable = self.agents[usize::from(agent)].durable;
        if state.term < durable.term || state.acked < durable.acked {
            return Err(self.fail(format!(
                "agent {agent} persisted a lower term or acknowledged term: {state:?} after {durable:?}"
            )));
        }
        Ok(())
    }

    /// "The core asks for persistence before it sends a vote": every vote, ack and vote request
    /// must be backed by what is already on disk, with the lease it grants.
    pub(super) fn check_durable_before_send(
        &self,
        agent: NodeIdx,
        to: Option<NodeIdx>,
        message: &Message,
    ) -> Result<(), Violation> {
        let a = &self.agents[usize::from(agent)];
        let d = a.durable;
        let lease_ok = Duration::from_millis(d.lease_ms) >= a.lease;
        let backed = match message {
            Message::Vote(v) if v.granted => d.term == v.term && d.voted_for == to && lease_ok,
            // An ack for a term below the agent's own leaves no vote of its own term standing.
            Message::Ack(x) => {
                lease_ok
                    && d.acked >= x.term
                    && ((d.term == x.term && d.voted_for == to) || (d.term > x.term && d.voted_for.is_none()))
            }
            Message::VoteRequest(r) => d.term == r.term && d.voted_for == Some(agent),
            _ => true,
        };
        if backed {
            return Ok(());
        }
        Err(self.fail(format!(
            "agent {agent} sent {message:?} before persisting it (disk: {d:?})"
        )))
    }
}
