//! The database half, simulated: the real [`Gate`] of every database node driving a model of
//! MySQL replication (`model`) through the same actions the agent's effects carry out, under
//! mysqld crashes, freezes, slow appliers, cut replication links, isolated owners and
//! switchovers, with a client writing through whoever serves the VIP.
//!
//! Ownership comes from a lease model that follows the core's rules as the core simulator
//! proves them (`crate::sim`): one lease at a time, renewed while the owner is reachable and
//! eligible, released (fence first) when it is not, lapsing at its end when the release
//! cannot complete, and won by the best eligible candidate by the core's own ranking.
//!
//! Checked at every step (`check`): never two hosts serving the VIP, and a write accepted
//! through it only by a database promoted for the serving term; no acknowledged write missing
//! from a newly promoted primary, and none of what an eligible candidate had at the election;
//! a node holding transactions the owner lacks never replicates from it nor owns; a database
//! whose release announced it fenced stays read_only; at most one automatic failover per
//! anti-flap window. Semi-sync with one acknowledgement survives one failure, not two: runs
//! whose faults overlap count the first two kinds instead of failing on them.

mod check;
mod faults;
mod lease;
mod model;
mod run;
#[cfg(test)]
mod tests;

use crate::core::{Instant, NodeIdx, Term};
use crate::gate::Gate;
use crate::mysql::DbStatus;
use model::{Mysqld, Tx};
use std::collections::VecDeque;
use std::time::Duration;

pub use super::Rng;

/// One simulated step.
const STEP: Duration = Duration::from_millis(10);

/// A deliberate bug the checks must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Read_only OFF without applying what was received (the relay log is discarded).
    PromoteBeforeCatchUp,
    /// The fence reports success and leaves the database writable.
    SkipFence,
    /// Re-point replication without checking for transactions the new source lacks.
    RejoinWithoutDivergenceCheck,
    /// Rank candidates by priority before data.
    PriorityBeforeData,
}

/// A database task in progress (one at a time per node, in order, as the agent's worker).
#[derive(Clone, Debug)]
enum Job {
    Promote {
        term: Term,
        wait_for: Option<u64>,
        deadline: Instant,
    },
    Fence {
        release: Option<Term>,
        by: Instant,
        settle: Duration,
        gone_since: Option<Instant>,
    },
    Rejoin {
        term: Term,
        owner: NodeIdx,
    },
}

#[derive(Clone, Debug)]
struct Node {
    priority: u8,
    db: Mysqld,
    gate: Gate,
    /// The latest probe result.
    status: DbStatus,
    jobs: VecDeque<Job>,
    /// Cancelled by the gate: the job at the head stops at its next step.
    cancel_promotion: bool,
    cancel_rejoin: bool,
    /// The VIP is up here, for this term.
    vip: Option<Term>,
    /// Cut from every peer (agents and replication); clients still reach it.
    isolated: bool,
    /// A release announced this database fenced; cleared when it is promoted again.
    announced_fenced: bool,
    /// When the fault on this node ends, if one is on.
    heal_at: Option<Instant>,
    /// Each peer's position as last reported, and whether it replicated the last owner's
    /// history then.
    heard: Vec<Option<(u64, bool)>>,
    /// Whether its last heartbeat said it may own.
    told_eligible: bool,
    /// The owner of the newest term this node has heard of, and the last primary it knows of
    /// (`gate::Owners::history`).
    last_owner: NodeIdx,
    last_primary: NodeIdx,
    /// The last primary's position when this node learnt of it (`gate::Owners::primary_floor`).
    floor: u64,
    /// The core's state as this node's gate was last told.
    view: crate::gate::machine::CoreView,
}

/// The lease, as the core would hold it.
#[derive(Clone, Debug)]
struct Lease {
    node: NodeIdx,
    term: Term,
    end: Instant,
    release: Option<Release>,
}

#[derive(Clone, Debug)]
struct Release {
    /// Peers hear of it (the owner is not cut off from them).
    announced: bool,
    /// A switchover: clients keep their connections until the kill (`kill_grace`); on any
    /// other release they are reset as the VIP goes.
    planned: bool,
    vip_gone_at: Instant,
    final_data: Option<crate::core::FinalData>,
}

/// The client writing through the VIP: the write in flight (transaction, where, since when)
/// and every write acknowledged.
#[derive(Clone, Debug, Default)]
struct Client {
    pending: Option<(Tx, NodeIdx, Instant)>,
    next: Tx,
    acked: Vec<Tx>,
}

/// What a run found wrong.
#[derive(Clone, Debug)]
pub struct Violation {
    pub seed: u64,
    pub at: Duration,
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} violated a database invariant at t={:?}: {}\n  replay with: VIPGATE_DB_SIM_SEED={} cargo test --lib sim::db::tests::replay_one_seed -- --nocapture",
            self.seed, self.at, self.what, self.seed
        )
    }
}

/// What a clean run did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub steps: u64,
    pub promotions: u64,
    pub acked: u64,
    pub divergences: u64,
    /// Five seconds after the faults healed, a host serves the VIP (or a failed promotion's
    /// back-off is still on).
    pub served_at_end: bool,
    /// Acknowledged writes missing from a new primary after overlapping faults.
    pub lost_to_double_faults: u64,
    /// Promotions, after overlapping faults, of a winner lacking what an eligible candidate
    /// had received since its last check.
    pub behind_after_double_faults: u64,
}

pub struct Sim {
    seed: u64,
    rng: Rng,
    mutation: Option<Mutation>,
    trace: bool,
    now: Instant,
    step: u64,
    nodes: Vec<Node>,
    sources: Vec<String>,
    lease: Option<Lease>,
    /// The newest term, and the last node promoted (whose history is the cluster's).
    term: Term,
    primary: NodeIdx,
    /// No election before this (the lease that lapsed, plus an election's delay).
    elect_at: Instant,
    /// The anti-flap window: until when, and the last automatic failover's promotion.
    window_until: Instant,
    window: Duration,
    last_takeover: Option<Instant>,
    /// The owner of the newest term.
    last_owner: NodeIdx,
    /// What eligible candidates had at the last election and its winner lacked (transaction,
    /// holder): the winner's promotion must bring it.
    owed: Vec<(Tx, NodeIdx)>,
    /// Found while carrying out an action; reported after the step.
    violation: Option<String>,
    client: Client,
    chaos_until: Instant,
    /// Scripted faults (node, fault, until), in order of time, in place of random ones.
    script: Vec<(Instant, NodeIdx, faults::Fault, Instant)>,
    /// Faults may overlap (several at once). Then an acknowledged write whose only copies
    /// are on nodes that are down or cut off can be lost: semi-sync with one acknowledgement
    /// survives one failure, not two. Such losses are counted; without overlap they are
    /// violations.
    overlap: bool,
    end: Instant,
    outcome: Outcome,
}
