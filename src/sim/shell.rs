//! The agent's effects in the simulator: the VIP task and the backstop issuing netlink
//! requests (`host::Shell` decides what, through the real `vip::lease`), the kernel applying
//! them, and their reports reaching the agent loop.
//!
//! Address requests may run slow, fail, or hang and be applied by the kernel long after the
//! task gave up waiting — in order per worker, as requests on one netlink socket are. Fence
//! requests are answered at once or fail: a fence request held inside the kernel past the
//! lease end while the agent dies is not modelled (`docs/agent.md`, what is not protected).

use super::*;

/// When an issued request applies (if ever) and when the worker hears back.
struct Outcome {
    applies: Option<u64>,
    returns: u64,
    result: Result<(), String>,
    /// Slow, failed or hung: the address may outlive the lease (the fence covers it).
    abnormal: bool,
}

fn is_fence(op: Op) -> bool {
    matches!(op, Op::FenceOpen(_) | Op::FenceClose)
}

impl Sim {
    /// Queues a command for the VIP task and wakes it.
    pub(super) fn command(&mut self, agent: NodeIdx, cmd: Cmd) {
        let a = &mut self.agents[usize::from(agent)];
        a.shell.push(cmd);
        let epoch = a.epoch;
        self.push(self.now, Ev::TaskWake { agent, epoch });
    }

    pub(super) fn task_wake(&mut self, agent: NodeIdx) -> Result<(), Violation> {
        let local = self.local(agent);
        let a = &mut self.agents[usize::from(agent)];
        if a.shell.job.is_some() {
            return Ok(());
        }
        let next = a.shell.start_next(local);
        self.follow(agent, next);
        Ok(())
    }

    fn follow(&mut self, agent: NodeIdx, next: Vec<Next>) {
        let epoch = self.agents[usize::from(agent)].epoch;
        for n in next {
            match n {
                Next::Issue(worker, op) => self.issue(agent, worker, op),
                Next::Report(report) => {
                    let at = self.now + self.rng.range(10, 200);
                    self.push(at, Ev::Report { agent, epoch, report });
                }
                Next::RetryAfter(d) => self.push(self.now + us(d), Ev::TaskWake { agent, epoch }),
            }
        }
        self.arm_backstop(agent);
    }

    /// How a request turns out. A fence opening runs slow at most until the lease end: one the
    /// kernel held past it is the residual risk this model leaves out (`docs/protocol.md` §8).
    fn draw(&mut self, agent: NodeIdx, op: Op, wait: u64) -> Outcome {
        let h = self.agents[usize::from(agent)].health;
        let fast = self.rng.range(20, 500);
        if self.now < h.denied_until {
            let result = Err("netlink: operation not permitted".into());
            return Outcome {
                applies: None,
                returns: fast,
                result,
                abnormal: true,
            };
        }
        if self.rng.chance(h.fail_per_mille) {
            let result = Err("netlink: request failed".into());
            return Outcome {
                applies: None,
                returns: fast,
                result,
                abnormal: true,
            };
        }
        let late = !is_fence(op) && self.rng.chance(h.hang_per_mille);
        let slow = self.rng.chance(h.slow_per_mille);
        let latency = match (late, slow) {
            (true, _) => wait + self.rng.range(0, super::HANG_PAST_TIMEOUT),
            (false, true) => self.rng.range(fast, h.slow_max.max(fast)).min(wait),
            (false, false) => fast,
        };
        let latency = match (op, self.lease_end_real(agent)) {
            (Op::FenceOpen(_), Some(end)) => {
                latency.min(end.saturating_sub(self.now + 1).min(wait - 1)).max(1)
            }
            _ => latency,
        };
        if latency >= wait {
            let result = Err(format!("netlink did not answer within {wait} µs"));
            return Outcome {
                applies: Some(latency),
                returns: wait,
                result,
                abnormal: true,
            };
        }
        let returns = latency + self.rng.range(5, 50);
        Outcome {
            applies: Some(latency),
            returns,
            result: Ok(()),
            abnormal: late || slow,
        }
    }

    /// The real instant the lease held by `agent`'s shell ends, at its clock's current rate.
    fn lease_end_real(&self, agent: NodeIdx) -> Option<u64> {
        let a = &self.agents[usize::from(agent)];
        a.shell.lease.holding().map(|(_, end)| a.clock.real(end))
    }

    /// Sends a request: the kernel applies it in order after the worker's earlier ones.
    fn issue(&mut self, agent: NodeIdx, worker: Worker, op: Op) {
        let local = self.local(agent);
        let wait = match worker {
            Worker::Task => self.agents[usize::from(agent)].shell.op_timeout(local),
            Worker::Backstop => crate::vip::OP_TIMEOUT,
        };
        let o = self.draw(agent, op, us(wait));
        let a = &mut self.agents[usize::from(agent)];
        a.exempt |= o.abnormal;
        if matches!(op, Op::FenceOpen(_)) {
            a.fence_in_flight_until = a.fence_in_flight_until.max(self.now + o.returns);
        }
        let epoch = a.epoch;
        let (mut returns, mut result) = (self.now + o.returns, o.result);
        if let Some(d) = o.applies {
            // Behind an earlier request still in the kernel: applied, and answered, after it.
            let fifo = &mut a.fifo[worker as usize][usize::from(is_fence(op))];
            let at = (self.now + d).max(*fifo);
            *fifo = at;
            if at > self.now + d {
                a.exempt = true;
                if at + 10 >= self.now + us(wait) {
                    (returns, result) = (self.now + us(wait), Err("netlink did not answer in time".into()));
                } else if result.is_ok() {
                    returns = at + 10;
                }
            }
            self.push(at, Ev::Kernel { agent, epoch, op });
        }
        self.push(
            returns,
            Ev::OpDone {
                agent,
                epoch,
                worker,
                op,
                result,
            },
        );
    }

    pub(super) fn op_done(
        &mut self,
        agent: NodeIdx,
        worker: Worker,
        op: Op,
        result: Result<(), String>,
    ) -> Result<(), Violation> {
        let local = self.local(agent);
        match worker {
            Worker::Task => {
                let next = self.agents[usize::from(agent)].shell.op_done(local, op, result);
                self.follow(agent, next);
            }
            Worker::Backstop => {
                let a = &mut self.agents[usize::from(agent)];
                if op == Op::AddrRemove && result.is_err() {
                    a.shell.push(Cmd::Cleanup);
                    let epoch = a.epoch;
                    self.push(self.now, Ev::TaskWake { agent, epoch });
                }
                match self.agents[usize::from(agent)].backstop_ops.pop_front() {
                    Some(next) => self.issue(agent, Worker::Backstop, next),
                    None => {
                        let a = &mut self.agents[usize::from(agent)];
                        if let Some(term) = a.backstop_term.take() {
                            let epoch = a.epoch;
                            let report = Report::Expired { term };
                            self.push(self.now + 50, Ev::Report { agent, epoch, report });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Keeps one backstop timer armed at the lease's backstop instant.
    fn arm_backstop(&mut self, agent: NodeIdx) {
        let a = &mut self.agents[usize::from(agent)];
        let at = a.shell.lease.backstop_at();
        if at == a.backstop_armed {
            return;
        }
        a.backstop_armed = at;
        if let Some(at) = at {
            let (epoch, real) = (a.epoch, a.clock.real(at).max(self.now));
            self.push(real, Ev::Backstop { agent, epoch });
        }
    }

    /// The backstop thread wakes: if the deadline came, it takes the VIPs down by itself.
    pub(super) fn backstop(&mut self, agent: NodeIdx) -> Result<(), Violation> {
        let local = self.local(agent);
        let a = &mut self.agents[usize::from(agent)];
        a.backstop_armed = None;
        if let Some(term) = a.shell.lease.expire(local) {
            a.backstop_term = Some(term);
            a.backstop_ops = VecDeque::from([Op::AddrRemove]);
            self.issue(agent, Worker::Backstop, Op::FenceClose);
        }
        self.arm_backstop(agent);
        Ok(())
    }

    /// The kernel applies a request. A removal after the lease end is a broken shell rule
    /// unless the host's effects failed (or the process froze or died) since the last one.
    pub(super) fn kernel_apply(&mut self, agent: NodeIdx, epoch: u64, op: Op) -> Result<(), Violation> {
        let local = self.local(agent);
        if op == Op::AddrRemove {
            self.check_removed_in_time(agent, local)?;
        }
        let lag = Duration::from_micros(self.rng.range(0, 4_000));
        let slack = Duration::from_micros(self.rng.range(0, 1_100_000));
        let a = &mut self.agents[usize::from(agent)];
        a.kernel.apply(op, local, lag, slack);
        if epoch != a.epoch {
            a.exempt = true;
        }
        Ok(())
    }

    /// A report reaches the agent loop, which acts as the agent does (`crate::agent`).
    pub(super) fn on_report(&mut self, agent: NodeIdx, report: Report) -> Result<(), Violation> {
        let local = self.local(agent);
        match report {
            Report::Dropped { term, seq } => {
                let a = &mut self.agents[usize::from(agent)];
                if a.pending_release != Some((term, seq)) {
                    return Ok(());
                }
                if a.kernel.has_addr(local) {
                    return Err(self.fail(format!(
                        "agent {agent} confirmed the release of term {term} with its VIP still up"
                    )));
                }
                a.pending_release = None;
                let released = Event::Released {
                    term,
                    final_data: crate::core::FinalData::NotConsulted,
                };
                self.step(agent, released)
            }
            // The release stays unconfirmed: the lease runs out and the fence closes.
            Report::DropFailed { .. } | Report::Links { .. } => Ok(()),
            Report::Expired { term } => self.step(agent, Event::VipLost { term }),
            Report::Failed { .. } => {
                let a = &mut self.agents[usize::from(agent)];
                let until = local + a.lease;
                a.vip_fault_until = Some(until);
                let (epoch, at) = (a.epoch, a.clock.real(until));
                self.push(at, Ev::HealthDue { agent, epoch });
                self.refresh_health(agent)
            }
        }
    }
}
