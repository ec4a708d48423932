//! Deterministic cluster simulator: the ownership core *and the shell around it*.
//!
//! Runs 3-, 4- and 5-agent clusters of real [`Core`]s on a fake clock and a fake network,
//! driven by one seeded random generator. Below each core it models the agent's shell and the
//! host's kernel (`host`): VIP adds and removals that take time, fail or hang, the kernel fence
//! and the address lifetime expiring at their own granularity and slack, the backstop timer,
//! the agent loop stalling (slow fsync, late ticks, an ack handled before a tick), the process
//! frozen (SIGSTOP) or killed with its VIP left to the kernel, clock rates changing within ±ρ,
//! rolling changes of the lease (mixed timing, refused on the wire), and `blocked`/`preferred`.
//! The network partitions, loses, delays, duplicates and misdelivers datagrams.
//!
//! After every event `check` asserts, in real time: at most one host *serves* the VIP, no
//! agent acquires before another agent's unreleased lease has ended, a running agent's VIP is
//! gone by its lease end unless its effects failed, no release is confirmed with the VIP up,
//! and the core's own invariants. After the faults heal an owner must appear within the bound.
//! The same seed replays exactly.
//!
//! `VIPGATE_SIM_SEEDS=N` runs N seeds (default 10 000); `VIPGATE_SIM_SEED=S` replays seed S
//! with a trace of every event.

mod check;
mod clock;
pub mod db;
mod host;
mod tests;

use crate::core::{
    Action, Core, Event, Fault, Instant, Member, Message, NodeIdx, PersistentState, Settings, Term,
    splitmix64,
};
use crate::vip::Report;
use crate::vip::lease::faults::Shell as ShellFault;
use clock::Clock;
use host::{Cmd, Health, Kernel, Next, Op, Shell, Worker};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

/// The run's only source of randomness, so a seed replays exactly.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.0)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.next_u64() % 1000 < per_mille
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.range(0, from.len() as u64 - 1) as usize]
    }
}

/// A deliberate bug the simulator must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    Core(Fault),
    Shell(ShellFault),
    /// The wire accepts peers that count another lease.
    MixedTimingAccepted,
}

/// A shape of cluster and its timing, drawn from the seed.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub members: Vec<Member>,
    pub interval: Duration,
    /// The lease every agent starts with (a rolling change may move some to another).
    pub lease: Duration,
    pub drift_ppm: u32,
    pub preempt_delay: Option<Duration>,
    /// Real time during which faults are injected.
    pub chaos: Duration,
    /// Longest message delay the chaos may set.
    pub max_delay: Duration,
    /// After the heal, this database agent stays cut off for this long — its failed
    /// candidacies raise its term meanwhile — and must then follow the owner the others chose.
    pub late_rejoin: Option<(NodeIdx, Duration)>,
}

impl Scenario {
    pub fn draw(rng: &mut Rng) -> Scenario {
        let n = rng.range(3, 5) as usize;
        let max_witnesses = if n == 5 { 2 } else { 1 };
        let witnesses = rng.range(0, max_witnesses) as usize;
        let members = (0..n)
            .map(|i| Member {
                witness: i >= n - witnesses,
                priority: rng.range(1, 255) as u8,
            })
            .collect();
        let interval = Duration::from_millis(rng.range(2, 4) * 50);
        let lease = interval * rng.range(3, 6) as u32;
        Scenario {
            members,
            interval,
            lease,
            drift_ppm: rng.pick(&[1_000, 10_000, 50_000, 50_000]),
            preempt_delay: rng.chance(300).then(|| Duration::from_millis(rng.range(0, 2000))),
            chaos: Duration::from_secs(rng.range(8, 20)),
            max_delay: lease * 2,
            late_rejoin: rng.chance(500).then(|| {
                let agent = rng.range(0, (n - witnesses - 1) as u64) as NodeIdx;
                (agent, lease * rng.range(2, 5) as u32)
            }),
        }
    }

    fn settings(&self, me: NodeIdx, seed: u64, lease: Duration) -> Settings {
        Settings {
            me,
            members: self.members.clone(),
            interval: self.interval,
            lease,
            drift_ppm: self.drift_ppm,
            release_budget: self.interval,
            preempt_delay: self.preempt_delay,
            seed,
        }
    }

    /// After the last fault has healed (every message sent under it delivered), an owner exists
    /// within this bound: one (longest) lease for grants, restarts and a VIP failure's backoff
    /// to lapse, one for the silence after the last lease claim, one for a netlink request hung
    /// before the heal, the rank stagger, jitter and a failed round on top, stretched for the
    /// slowest clock.
    pub fn liveness_bound(&self, longest_lease: Duration) -> Duration {
        let n = self.members.len() as u32;
        let local = longest_lease * 2 + crate::vip::OP_TIMEOUT + self.interval * (n + 4);
        local.mul_f64((1_000_000.0 + f64::from(self.drift_ppm)) / (1_000_000.0 - f64::from(self.drift_ppm)))
    }
}

#[derive(Clone, Debug)]
enum Ev {
    Deliver {
        to: NodeIdx,
        from: NodeIdx,
        message: Message,
        /// The sender's lease (ms) as its datagram carries it.
        lease_ms: u64,
    },
    Tick {
        agent: NodeIdx,
        generation: u64,
    },
    /// The loop's fsync of `persist` finished: the rest of the actions go out.
    Continue {
        agent: NodeIdx,
        epoch: u64,
        persist: PersistentState,
        actions: Vec<Action>,
    },
    /// An effect's report reaches the agent loop.
    Report {
        agent: NodeIdx,
        epoch: u64,
        report: Report,
    },
    /// A worker's netlink request returned (or timed out).
    OpDone {
        agent: NodeIdx,
        epoch: u64,
        worker: Worker,
        op: Op,
        result: Result<(), String>,
    },
    /// The kernel applies a request (made by the process run `epoch`).
    Kernel {
        agent: NodeIdx,
        epoch: u64,
        op: Op,
    },
    Backstop {
        agent: NodeIdx,
        epoch: u64,
    },
    /// The VIP task looks at its queue (a new command, or a retry is due).
    TaskWake {
        agent: NodeIdx,
        epoch: u64,
    },
    /// A VIP failure's backoff is over: the agent may be eligible again.
    HealthDue {
        agent: NodeIdx,
        epoch: u64,
    },
    OperatorRelease {
        agent: NodeIdx,
        to: Option<NodeIdx>,
    },
    /// (Re)start; with a lease, after a configuration change to it.
    Restart {
        agent: NodeIdx,
        lease: Option<Duration>,
    },
    Fault,
    Toggle {
        from: NodeIdx,
        to: NodeIdx,
    },
    Heal,
    /// The agent cut off after the heal ([`Scenario::late_rejoin`]) is reachable again.
    Rejoin {
        agent: NodeIdx,
    },
}

/// Who runs an event, and so what stops it: a dead process drops it, a frozen one delays it,
/// a stalled loop delays what the loop handles.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Runner {
    Loop,
    Process,
    Kernel,
    Sim,
}

impl Ev {
    fn runner(&self) -> (Runner, Option<NodeIdx>) {
        match *self {
            Ev::Deliver { to, .. } => (Runner::Loop, Some(to)),
            Ev::Tick { agent, .. }
            | Ev::Report { agent, .. }
            | Ev::HealthDue { agent, .. }
            | Ev::OperatorRelease { agent, .. } => (Runner::Loop, Some(agent)),
            Ev::Continue { agent, .. }
            | Ev::OpDone { agent, .. }
            | Ev::Backstop { agent, .. }
            | Ev::TaskWake { agent, .. } => (Runner::Process, Some(agent)),
            Ev::Kernel { agent, .. } => (Runner::Kernel, Some(agent)),
            _ => (Runner::Sim, None),
        }
    }

    fn epoch(&self) -> Option<u64> {
        match *self {
            Ev::Continue { epoch, .. }
            | Ev::Report { epoch, .. }
            | Ev::OpDone { epoch, .. }
            | Ev::Backstop { epoch, .. }
            | Ev::TaskWake { epoch, .. }
            | Ev::HealthDue { epoch, .. } => Some(epoch),
            _ => None,
        }
    }
}

struct Queued {
    at: u64,
    order: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

/// The lease an agent last held, as the checker tracks it.
#[derive(Clone, Copy, Debug)]
struct LeaseMark {
    term: Term,
    /// Its end on the agent's own clock.
    end: Instant,
    /// The agent announced a release of it (or of a later term), which it does only once its
    /// VIP is gone: grants to it may lapse early from then on.
    released: bool,
}

struct Agent {
    core: Option<Core>,
    /// What the agent's disk holds: survives crashes.
    durable: PersistentState,
    /// The lease this agent is configured with.
    lease: Duration,
    clock: Clock,
    eligible: bool,
    /// Eligibility as the core was last told it (the loop may not have heard a change yet).
    told_eligible: bool,
    position: u64,
    blocked: bool,
    preferred: bool,
    /// Bumped on every crash so that events of the previous run are ignored.
    epoch: u64,
    tick_generation: u64,
    highest_term: Term,
    /// The agent loop does nothing before this real instant (slow fsync, late timer).
    stalled_until: u64,
    /// The loop waits for an fsync until then: nothing else runs on it before the rest of its
    /// actions.
    persisting: Option<u64>,
    /// The whole process does nothing before this real instant (SIGSTOP).
    frozen_until: u64,
    /// Persists take this long (µs, upper bound) while the disk is slow.
    fsync_max: u64,
    /// Per worker and per request family (address, fence): when the kernel applies the last
    /// request sent, so that later ones apply after it, as on one netlink socket.
    fifo: [[u64; 2]; 2],
    /// A fence opening is on its way until then (with its correction, if it comes back late).
    /// A freeze, a kill or a netlink denial waits for it: one landing inside it is the residual
    /// risk the model leaves out (`docs/protocol.md` §8).
    fence_in_flight_until: u64,
    shell: Shell,
    kernel: Kernel,
    health: Health,
    /// The backstop's removal, op by op, and the term it expired.
    backstop_ops: VecDeque<Op>,
    backstop_term: Option<Term>,
    backstop_armed: Option<Instant>,
    /// The release waiting for the VIP task's confirmation: (term, drop number).
    pending_release: Option<(Term, u64)>,
    drop_seq: u64,
    /// A VIP failure keeps the agent ineligible until then (local time).
    vip_fault_until: Option<Instant>,
    /// Since its address was last removed, the host's effects failed, hung or ran slow, or the
    /// process froze or died: its address may then outlive the lease (the fence covers that).
    exempt: bool,
    lease_mark: Option<LeaseMark>,
}

struct Network {
    up: Vec<Vec<bool>>,
    /// Extra one-way latency per directed link (a congested uplink), in microseconds.
    slow: Vec<Vec<u64>>,
    loss_per_mille: u64,
    dup_per_mille: u64,
    /// A copy of a datagram also reaches a member it was not sent to (a relay on the path).
    misdeliver_per_mille: u64,
    delay: (u64, u64),
}

/// A violated invariant, with the moment and the seed that produced it.
#[derive(Debug)]
pub struct Violation {
    pub seed: u64,
    pub at: Duration,
    pub what: String,
    /// False for a liveness failure (no owner in time), true for everything else.
    pub safety: bool,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} violated an invariant at t={:?}: {}\n  replay with: VIPGATE_SIM_SEED={} cargo test --lib sim::tests::replay_one_seed -- --nocapture",
            self.seed, self.at, self.what, self.seed
        )
    }
}

/// What one run showed, for statistics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    pub events: u64,
    /// Time from the network being clean until an owner existed.
    pub time_to_owner: Duration,
    pub ownership_changes: u64,
}

pub struct Sim {
    seed: u64,
    rng: Rng,
    pub scenario: Scenario,
    now: u64,
    order: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    agents: Vec<Agent>,
    net: Network,
    healed_at: Option<u64>,
    trace: bool,
    mutation: Option<Mutation>,
    outcome: Outcome,
    /// Who acquired each term: a term has at most one owner, ever.
    owners: std::collections::BTreeMap<Term, NodeIdx>,
}

/// How long past the task's timeout a hung netlink request may still apply (µs).
const HANG_PAST_TIMEOUT: u64 = 3_000_000;

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

mod drive;
mod faults;
mod shell;
