//! Faults, one per node at a time, each healed after a while: mysqld crashed (restarted with
//! `read_only` as its configuration says), frozen, the node cut from its peers, a replica's
//! link to its source cut, a slow or stalled applier; and switchovers.

use super::Sim;
use super::model::{Io, Run};
use crate::core::{Instant, NodeIdx};
use std::time::Duration;

/// One fault on one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Crash,
    Freeze,
    /// Cut from every peer (agents and replication); clients still reach it.
    Isolate,
    /// Its replication link to its source is cut.
    Cut,
    /// Its applier applies one transaction every so many steps (0: none).
    Stall(u32),
    /// The owner hands over (`vipgate switchover`).
    Switchover,
}

impl Sim {
    /// Now and then, a random fault on a random node (the owner more often), healed after a
    /// while; one at a time unless this run lets them overlap.
    pub(super) fn fault(&mut self) {
        if !self.rng.chance(8) {
            return;
        }
        let n = self.nodes.len() as u64;
        let owner = self.lease.as_ref().map(|l| l.node);
        let target = match owner {
            Some(o) if self.rng.chance(600) => o,
            _ => self.rng.range(0, n - 1) as NodeIdx,
        };
        let busy = |n: &super::Node| n.heal_at.is_some();
        if busy(self.node(target)) || !self.overlap && self.nodes.iter().any(busy) {
            return;
        }
        let heal = self.now + Duration::from_millis(self.rng.range(300, 4_000));
        let stall = self.rng.pick(&[0, 3, 10]);
        let fault = match self.rng.range(0, 5) {
            0 => Fault::Crash,
            1 => Fault::Freeze,
            2 => Fault::Isolate,
            3 => Fault::Cut,
            4 => Fault::Stall(stall),
            _ => Fault::Switchover,
        };
        self.inject(target, fault, heal);
    }

    /// Puts `fault` on `target` until `heal`.
    pub(super) fn inject(&mut self, target: NodeIdx, fault: Fault, heal: Instant) {
        self.log(|| format!("fault {fault:?} on db{}", target + 1));
        let node = self.node_mut(target);
        match fault {
            Fault::Crash => node.db.run = Run::Crashed,
            Fault::Freeze => node.db.run = Run::Frozen,
            Fault::Isolate => node.isolated = true,
            Fault::Cut => node.db.cut = true,
            Fault::Stall(every) => node.db.apply_every = every,
            Fault::Switchover => {
                let holds = self
                    .lease
                    .as_ref()
                    .is_some_and(|l| l.release.is_none() && l.node == target);
                if holds && !self.node(target).isolated {
                    self.start_release(true, true);
                }
                return;
            }
        }
        node.heal_at = Some(heal);
    }

    pub(super) fn heal(&mut self) {
        let now = self.now;
        let all = now >= self.chaos_until;
        for i in 0..self.nodes.len() as NodeIdx {
            let due = self.node(i).heal_at.is_some_and(|at| all || now >= at);
            if !due {
                continue;
            }
            let restart_read_only = self.rng.chance(500);
            let node = self.node_mut(i);
            node.heal_at = None;
            if node.db.run == Run::Crashed {
                // A restarted server: read_only as configured, replication reconnecting.
                node.db.read_only = restart_read_only;
                node.announced_fenced = false;
                if node.db.source.is_some() && node.db.io != Io::Stopped {
                    node.db.io = Io::Connecting;
                }
            }
            node.db.run = Run::Running;
            node.db.timeouts = 0;
            node.isolated = false;
            node.db.cut = false;
            node.db.apply_every = 1;
            self.log(|| format!("db{} healed", i + 1));
        }
    }
}
