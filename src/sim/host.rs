//! One simulated host below the core: the agent's VIP task and backstop (deciding through the
//! real `crate::vip::lease`), the kernel's address and fence, and the process itself, which can
//! stall, freeze or die while the kernel goes on.
//!
//! Netlink requests ("ops") take time, fail, or hang; the kernel applies an op at its own
//! instant, whatever the process does meanwhile. What the kernel holds decides whether the host
//! *serves* the VIP: an address that has not expired behind a fence element that is live.

use crate::core::{Instant, Term};
use crate::vip::lease::{self, Lease};
use crate::vip::{MAX_REFRESH_FAILURES, OP_TIMEOUT, RETRY, Report};
use std::collections::VecDeque;
use std::time::Duration;

/// A netlink request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Let the VIP's traffic pass for this long from when the kernel takes it.
    FenceOpen(Duration),
    FenceClose,
    /// Add (or refresh) the address, valid for whole seconds.
    AddrAdd(u32),
    AddrRemove,
}

/// Which of the agent's independent effect workers issued an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Worker {
    /// The VIP task: commands one at a time, in order.
    Task,
    /// The backstop thread: removes the VIPs at the deadline, whatever the task is doing.
    Backstop,
}

/// A command from the agent loop to the VIP task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    Hold {
        term: Term,
        until: Instant,
    },
    Drop {
        term: Term,
        by: Instant,
        seq: u64,
    },
    /// Remove whatever is left (after a failure, or an add that landed after a drop).
    Cleanup,
}

/// How the host's effects behave now (set by the simulator's faults).
#[derive(Clone, Copy, Debug, Default)]
pub struct Health {
    pub fail_per_mille: u64,
    pub hang_per_mille: u64,
    pub slow_per_mille: u64,
    /// Longest latency of a slow op, µs.
    pub slow_max: u64,
    /// Every op fails until this real instant (netlink denied).
    pub denied_until: u64,
}

/// The kernel's view of this host's VIP, in the host's local time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Kernel {
    /// The address is configured until the kernel's lifetime check removes it.
    pub addr_until: Option<Instant>,
    /// The fence element is live until then.
    pub fence_until: Option<Instant>,
}

impl Kernel {
    pub fn has_addr(&self, local: Instant) -> bool {
        self.addr_until.is_some_and(|u| local < u)
    }

    /// An address the kernel still answers for, behind a live fence element.
    pub fn serving(&self, local: Instant) -> bool {
        self.has_addr(local) && self.fence_until.is_some_and(|u| local < u)
    }

    /// The kernel applies `op` at local time `local`. `tick_lag` (below one jiffy) and
    /// `lifetime_slack` (the lifetime worker running late) are drawn by the caller.
    pub fn apply(&mut self, op: Op, local: Instant, tick_lag: Duration, lifetime_slack: Duration) {
        match op {
            Op::FenceOpen(d) => self.fence_until = Some(local + d + tick_lag),
            Op::FenceClose => self.fence_until = None,
            Op::AddrAdd(secs) => {
                self.addr_until = Some(local + Duration::from_secs(u64::from(secs)) + lifetime_slack)
            }
            Op::AddrRemove => self.addr_until = None,
        }
    }
}

/// The job the VIP task is working on.
#[derive(Clone, Debug)]
pub struct Job {
    pub cmd: Cmd,
    /// When the op in progress was planned (local time).
    issued: Instant,
    /// A fence opening answered late has been corrected once already.
    corrected: bool,
    /// The correction came back late too: the fence is being closed, and the hold fails.
    doomed: bool,
    /// The hold started holding (a failure then gives the VIP up at once).
    acquiring: bool,
    ops: VecDeque<Op>,
    error: Option<String>,
}

/// As the VIP task's `open_for_lease` does, through the same [`Lease`] decisions: a fence
/// opening answered late may reach past the lease end, so it is shortened to the time left then
/// (once; a second late answer closes the fence, and the hold fails). A failed opening closes
/// the fence too.
fn after_fence_open(lease: &Lease, job: &mut Job, now: Instant, op: Op, failed: bool) -> Option<Op> {
    let (Op::FenceOpen(_), Cmd::Hold { term, .. }) = (op, job.cmd) else {
        return None;
    };
    if failed {
        return Some(Op::FenceClose);
    }
    if !lease.answered_late(job.issued, now) {
        return None;
    }
    let fix = match lease.fence_for(term, now) {
        _ if job.corrected => {
            job.doomed = true;
            Op::FenceClose
        }
        Some(d) => Op::FenceOpen(d),
        None => Op::FenceClose,
    };
    job.corrected = true;
    Some(fix)
}

/// What the simulator must do after a worker's op finished.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Issue this op for this worker.
    Issue(Worker, Op),
    /// Tell the agent loop.
    Report(Report),
    /// Start the next queued command after this long (retry of a failed removal).
    RetryAfter(Duration),
}

/// The agent's effect side: the shared lease, the VIP task's queue and current job.
pub struct Shell {
    pub lease: Lease,
    queue: VecDeque<Cmd>,
    pub job: Option<Job>,
    refresh_failures: u32,
    /// A removal that failed is being retried in the background.
    pub unremoved: bool,
}

impl Shell {
    pub fn new(release_budget: Duration) -> Shell {
        Shell {
            lease: Lease::new(release_budget),
            queue: VecDeque::new(),
            job: None,
            refresh_failures: 0,
            unremoved: false,
        }
    }

    pub fn push(&mut self, cmd: Cmd) {
        self.queue.push_back(cmd);
    }

    /// Starts the next command if the task is idle: the op to issue, or a report for a
    /// command that needs none.
    pub fn start_next(&mut self, now: Instant) -> Vec<Next> {
        let mut out = Vec::new();
        while self.job.is_none() {
            let Some(cmd) = self.queue.pop_front() else { break };
            let (acquiring, ops) = match cmd {
                Cmd::Hold { term, until } => match self.lease.hold(now, term, until) {
                    None => continue,
                    Some(plan) => {
                        // The time left is read as the request goes out (here: at once).
                        let fence = self
                            .lease
                            .fence_for(term, now)
                            .map_or(Op::FenceClose, Op::FenceOpen);
                        (
                            plan.acquiring,
                            VecDeque::from([fence, Op::AddrAdd(plan.lifetime_s)]),
                        )
                    }
                },
                Cmd::Drop { .. } | Cmd::Cleanup => (false, VecDeque::from([Op::FenceClose, Op::AddrRemove])),
            };
            let mut job = Job {
                cmd,
                issued: now,
                corrected: false,
                doomed: false,
                acquiring,
                ops,
                error: None,
            };
            let op = job.ops.pop_front().expect("every job has an op");
            self.job = Some(job);
            out.push(Next::Issue(Worker::Task, op));
        }
        out
    }

    /// The per-op bound the task waits for the kernel, as the real task does.
    pub fn op_timeout(&self, now: Instant) -> Duration {
        match self.job.as_ref().map(|j| j.cmd) {
            Some(Cmd::Drop { by, .. }) => by.saturating_since(now).clamp(RETRY, OP_TIMEOUT),
            Some(Cmd::Hold { until, .. }) => self
                .lease
                .deadline(until)
                .saturating_since(now)
                .clamp(RETRY, OP_TIMEOUT),
            _ => OP_TIMEOUT,
        }
    }

    /// The task's current op finished (`Err`: failed or timed out).
    pub fn op_done(&mut self, now: Instant, op: Op, result: Result<(), String>) -> Vec<Next> {
        let Some(job) = self.job.as_mut() else {
            return Vec::new();
        };
        // The fence close of a removal is best effort: the address is what must go.
        let best_effort = op == Op::FenceClose && !matches!(job.cmd, Cmd::Hold { .. });
        let open_failed = matches!(op, Op::FenceOpen(_)) && result.is_err();
        if let Err(e) = result
            && !best_effort
        {
            job.error = Some(e);
        }
        if job.doomed && job.error.is_none() {
            job.error = Some("the kernel answered the fence requests too slowly: closed it".into());
        }
        if (job.error.is_none() || open_failed)
            && let Some(fix) = after_fence_open(&self.lease, job, now, op, open_failed)
        {
            job.issued = now;
            return vec![Next::Issue(Worker::Task, fix)];
        }
        if job.error.is_none()
            && let Some(next) = job.ops.pop_front()
        {
            job.issued = now;
            return vec![Next::Issue(Worker::Task, next)];
        }
        let job = self.job.take().expect("a job is running");
        let mut out = self.finish(now, job);
        if !out.iter().any(|n| matches!(n, Next::RetryAfter(_))) {
            out.extend(self.start_next(now));
        }
        out
    }

    fn finish(&mut self, now: Instant, job: Job) -> Vec<Next> {
        match job.cmd {
            Cmd::Hold { term, .. } => self.finish_hold(term, job.acquiring, job.error),
            Cmd::Drop { term, by, seq } => {
                if job.error.is_some() && now + RETRY < by {
                    // Retry within the deadline, ahead of anything queued.
                    self.queue.push_front(job.cmd);
                    return vec![Next::RetryAfter(RETRY)];
                }
                let result = job.error.map_or(Ok(()), Err);
                self.unremoved = result.is_err();
                let mut out = vec![Next::Report(lease::drop_report(term, seq, result))];
                if self.unremoved {
                    self.queue.push_back(Cmd::Cleanup);
                    out.push(Next::RetryAfter(RETRY));
                }
                out
            }
            Cmd::Cleanup => {
                self.unremoved = job.error.is_some();
                if self.unremoved {
                    self.queue.push_back(Cmd::Cleanup);
                    return vec![Next::RetryAfter(RETRY)];
                }
                Vec::new()
            }
        }
    }

    fn finish_hold(&mut self, term: Term, acquiring: bool, error: Option<String>) -> Vec<Next> {
        let Some(error) = error else {
            self.refresh_failures = 0;
            // Dropped while the request was on its way: take down what it may have added.
            if self.lease.held() != Some(term) {
                self.queue.push_back(Cmd::Cleanup);
            }
            return Vec::new();
        };
        if !acquiring {
            self.refresh_failures += 1;
            if self.refresh_failures < MAX_REFRESH_FAILURES {
                return Vec::new();
            }
        }
        self.refresh_failures = 0;
        self.lease.give_up(term);
        self.queue.push_back(Cmd::Cleanup);
        vec![Next::Report(Report::Failed { term, error })]
    }

    /// The process died: its queue and job go with it (the kernel keeps what it has).
    pub fn reset(&mut self, release_budget: Duration) {
        *self = Shell::new(release_budget);
    }
}
