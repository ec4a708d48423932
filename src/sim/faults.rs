//! The faults a run goes through, drawn from its seed, and the heal that ends them.

use super::*;

impl Sim {
    pub(super) fn pick_agent(&mut self) -> NodeIdx {
        self.rng.range(0, self.agents.len() as u64 - 1) as NodeIdx
    }

    pub(super) fn inject_fault(&mut self) {
        match self.rng.range(0, 23) {
            0..=7 => self.network_fault(),
            8 | 9 => {
                let a = self.pick_agent();
                if self.agents[usize::from(a)].core.is_some() && !self.fence_in_flight(a) {
                    self.crash(a);
                    let back = self.now + self.rng.range(0, 3_000_000);
                    self.push(
                        back,
                        Ev::Restart {
                            agent: a,
                            lease: None,
                        },
                    );
                }
            }
            10..=13 => self.database_fault(),
            14 | 15 => {
                // An operator switchover or a graceful stop, with or without a named successor.
                let agent = self.pick_agent();
                let to = self
                    .rng
                    .chance(500)
                    .then(|| self.pick_agent())
                    .filter(|&t| t != agent);
                self.push(self.now, Ev::OperatorRelease { agent, to });
            }
            _ => self.shell_fault(),
        }
        let next = self.now + self.rng.range(100_000, 1_500_000);
        if next < us(self.scenario.chaos) {
            self.push(next, Ev::Fault);
        }
    }

    fn network_fault(&mut self) {
        let n = self.agents.len();
        let max_delay = us(self.scenario.max_delay);
        let (a, b) = (usize::from(self.pick_agent()), usize::from(self.pick_agent()));
        match self.rng.range(0, 7) {
            0 => {
                // Symmetric partition into two random sides.
                let side: Vec<bool> = (0..n).map(|_| self.rng.chance(500)).collect();
                for x in 0..n {
                    for y in 0..n {
                        if side[x] != side[y] {
                            self.net.up[x][y] = false;
                        }
                    }
                }
            }
            // Two agents lose each other but still reach everyone else.
            1 => (self.net.up[a][b], self.net.up[b][a]) = (false, false),
            // One-way: a hears nothing from b, b still hears a.
            2 => self.net.up[b][a] = false,
            3 => {
                // A flapping link.
                let mut at = self.now;
                for _ in 0..self.rng.range(2, 12) {
                    at += self.rng.range(20_000, 300_000);
                    let (from, to) = (a as NodeIdx, b as NodeIdx);
                    self.push(at, Ev::Toggle { from, to });
                    self.push(at, Ev::Toggle { from: to, to: from });
                }
            }
            4 => self.net.up.iter_mut().for_each(|row| row.fill(true)),
            5 => self.net.loss_per_mille = self.rng.pick(&[0, 0, 100, 300, 600]),
            6 => {
                let hi = match self.rng.range(0, 3) {
                    0 => 2_000,
                    1 => us(self.scenario.interval),
                    2 => us(self.scenario.lease),
                    _ => max_delay,
                };
                self.net.delay = (self.rng.range(0, hi / 2), hi);
            }
            _ => {
                self.net.dup_per_mille = self.rng.pick(&[0, 50, 300]);
                self.net.misdeliver_per_mille = self.rng.pick(&[0, 0, 200, 1000]);
                // One direction of one link becomes slow (or fast again).
                let extra = if self.rng.chance(300) {
                    0
                } else {
                    self.rng.range(0, max_delay)
                };
                self.net.slow[a][b] = extra;
            }
        }
    }

    /// What the database gate tells the core: eligibility, data, the anti-flap block and the
    /// region preference.
    fn database_fault(&mut self) {
        let a = self.pick_agent();
        let i = usize::from(a);
        match self.rng.range(0, 3) {
            0 if !self.scenario.members[i].witness => self.agents[i].eligible ^= true,
            1 => {
                for ag in &mut self.agents {
                    ag.position += self.rng.range(0, 50);
                }
            }
            2 => self.agents[i].blocked ^= true,
            _ => self.agents[i].preferred ^= true,
        }
        for x in 0..self.agents.len() as NodeIdx {
            self.health_due(x);
        }
    }

    /// What goes wrong below the core: effects, the loop, the process, the clock, the config.
    fn shell_fault(&mut self) {
        let agent = self.pick_agent();
        let i = usize::from(agent);
        let lease = us(self.agents[i].lease);
        let interval = us(self.scenario.interval);
        match self.rng.range(0, 6) {
            0 => {
                let slow_max = self.rng.pick(&[interval / 4, lease, 2 * lease]);
                self.agents[i].health = Health {
                    fail_per_mille: self.rng.pick(&[0, 20, 200]),
                    hang_per_mille: self.rng.pick(&[0, 10, 100]),
                    slow_per_mille: self.rng.pick(&[0, 50, 300]),
                    slow_max,
                    denied_until: 0,
                };
            }
            // Netlink refused (a removal made impossible), for a while. Not while a fence
            // opening is on its way: a late one that can then be neither corrected nor undone
            // is the residual risk the model leaves out (`docs/protocol.md` §8).
            1 if !self.fence_in_flight(agent) => {
                self.agents[i].health.denied_until = self.now + self.rng.range(100_000, 2 * lease)
            }
            // The loop stalls: a slow fsync, a late timer, a long garbage collection elsewhere.
            2 => {
                let until = self.now + self.rng.range(1_000, 3 * lease);
                let a = &mut self.agents[i];
                a.stalled_until = a.stalled_until.max(until);
            }
            3 => self.agents[i].fsync_max = self.rng.pick(&[0, 2_000, interval, 2 * interval]),
            4 if !self.fence_in_flight(agent) => {
                // SIGSTOP, resumed later: nothing of the process runs; the kernel goes on.
                let until = self.now + self.rng.range(50_000, 3 * lease);
                let a = &mut self.agents[i];
                a.frozen_until = a.frozen_until.max(until);
                a.exempt = true;
            }
            5 => {
                let rho = i64::from(self.scenario.drift_ppm);
                let ppm = self.rng.range(0, 2 * rho as u64) as i64 - rho;
                self.agents[i].clock.set_rate(self.now, ppm);
            }
            _ => self.rolling_lease_change(),
        }
    }

    /// A fence opening of `agent`'s is on its way (see `Agent::fence_in_flight_until`).
    pub(super) fn fence_in_flight(&self, agent: NodeIdx) -> bool {
        self.now < self.agents[usize::from(agent)].fence_in_flight_until
    }

    /// An operator changes `lease_ms`, restarting one agent after another.
    fn rolling_lease_change(&mut self) {
        let base = self.scenario.lease;
        let min = self.scenario.interval * 3;
        let to = [base * 3, base * 2, base / 2, base][self.rng.range(0, 3) as usize].max(min);
        let mut at = self.now;
        for agent in 0..self.agents.len() as NodeIdx {
            at += self.rng.range(100_000, 2_000_000);
            self.push(
                at,
                Ev::Restart {
                    agent,
                    lease: Some(to),
                },
            );
        }
    }

    /// The agent's loop hears the database's (or its VIP's) state anew, when it next runs.
    fn health_due(&mut self, agent: NodeIdx) {
        let epoch = self.agents[usize::from(agent)].epoch;
        self.push(self.now, Ev::HealthDue { agent, epoch });
    }

    pub(super) fn heal(&mut self) -> Result<(), Violation> {
        for row in &mut self.net.up {
            row.fill(true);
        }
        for row in &mut self.net.slow {
            row.fill(0);
        }
        self.net.loss_per_mille = 0;
        self.net.dup_per_mille = 0;
        self.net.misdeliver_per_mille = 0;
        self.net.delay = (100, 2_000);
        // Pending toggles, faults and configuration changes would undo the heal.
        self.queue.retain(|q| {
            !matches!(
                q.0.ev,
                Ev::Toggle { .. } | Ev::Fault | Ev::Restart { lease: Some(_), .. }
            )
        });
        // Every agent ends on one lease: the first agent's (a rolling change finished).
        let lease = self.agents[0].lease;
        for agent in 0..self.agents.len() as NodeIdx {
            let a = &mut self.agents[usize::from(agent)];
            a.health = Health::default();
            a.fsync_max = 0;
            a.blocked = false;
            let change = (a.lease != lease).then_some(lease);
            self.restart(agent, change)?;
            self.health_due(agent);
        }
        if !self.agents.iter().any(|a| a.eligible) {
            let best = (0..self.agents.len())
                .filter(|&i| !self.scenario.members[i].witness)
                .max_by_key(|&i| self.scenario.members[i].priority)
                .expect("every scenario has a database node");
            self.agents[best].eligible = true;
            self.health_due(best as NodeIdx);
        }
        let mut clean_from = self.now;
        if let Some((agent, after)) = self.scenario.late_rejoin {
            self.set_links(agent, false);
            clean_from += us(after);
            self.push(clean_from, Ev::Rejoin { agent });
        }
        // Messages sent under the old faults may still be in flight (slow link plus delay), a
        // stall or freeze may still run its course, and a netlink request hung before the heal
        // may still hold up the requests queued behind it.
        let longest = self.agents.iter().map(|a| a.lease).max().unwrap_or(lease);
        let hung = us(crate::vip::OP_TIMEOUT) + super::HANG_PAST_TIMEOUT;
        let settle = (2 * us(self.scenario.max_delay).max(3 * us(longest))).max(hung);
        self.healed_at = Some(clean_from + settle);
        Ok(())
    }

    /// Every link to and from `agent` up (or down).
    pub(super) fn set_links(&mut self, agent: NodeIdx, up: bool) {
        let a = usize::from(agent);
        for (i, row) in self.net.up.iter_mut().enumerate() {
            if i != a {
                row[a] = up;
            }
        }
        for (j, link) in self.net.up[a].iter_mut().enumerate() {
            if j != a {
                *link = up;
            }
        }
    }
}
