//! The messages agents exchange, as the ownership core sees them.
//!
//! These are payloads only: who sent a datagram, its cluster, boot id, counter and MAC belong to
//! the wire envelope (`crate::net::wire`), which authenticates and de-duplicates before anything
//! reaches the core. Nodes are named by [`NodeIdx`], their position in the cluster's member list
//! sorted by id, which the wire layer maps to and from the ids on the wire.

/// Index of a member in the cluster's member list (sorted by node id).
pub type NodeIdx = u8;

/// An election term. Each term has at most one owner: every voter votes at most once per term.
pub type Term = u64;

/// How far a node's database has got, comparable across nodes: a larger position has applied
/// more of the primary's history. The database layer maps its native position (e.g. a GTID
/// sequence number) onto this. Zero means "unknown".
pub type Position = u64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Heartbeat(Heartbeat),
    Ack(Ack),
    VoteRequest(VoteRequest),
    Vote(Vote),
    Release(Release),
}

/// Sent by every agent every interval: its view, so peers (and operators) see the whole cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender's persisted term.
    pub term: Term,
    /// Sequence number; an owner's heartbeat is acknowledged by echoing it.
    pub seq: u64,
    /// Whom the sender currently grants its lease to (itself, if it owns).
    pub owner: Option<NodeIdx>,
    /// The sender owns and asks voters to renew its lease for `term`.
    pub lease_claim: bool,
    /// The sender could own: not a witness, database healthy, not starting up.
    pub eligible: bool,
    /// The sender takes ownership only when a releasing owner names it (an anti-flap window,
    /// or another region than the last owner's).
    pub blocked: bool,
    /// The sender is in the last owner's region: it ranks before equally advanced candidates
    /// elsewhere.
    pub preferred: bool,
    pub position: Position,
    pub priority: u8,
}

/// A voter renews the lease of the owner of `term` (the one that sent heartbeat `echo_seq`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub term: Term,
    /// The owner this ack renews. An ack copied to another node (by a relay on the path) names
    /// someone else there, and is ignored: it must never renew a lease it was not meant for.
    pub owner: NodeIdx,
    pub echo_seq: u64,
}

/// A candidate asks for votes for `term`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoteRequest {
    pub term: Term,
    pub position: Position,
    pub priority: u8,
}

/// A voter's answer to a [`VoteRequest`] for `term`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vote {
    pub term: Term,
    /// The candidate this vote answers: a copy delivered to another candidate of the same term
    /// must not count there (that would elect two owners in one term).
    pub candidate: NodeIdx,
    pub granted: bool,
}

/// The sender gives up what it held in `term` (a lease, or a candidacy): voters may grant
/// at once instead of waiting for expiry. `to` names a preferred successor (switchover,
/// preemption, graceful stop); `final_position` is the sender's last data position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub term: Term,
    pub to: Option<NodeIdx>,
    pub final_position: Option<Position>,
    /// The fenced database's executed GTIDs (at most [`MAX_REPORT_GTID`] bytes), empty if
    /// unknown: a successor waits for exactly these. The core leaves it empty; the shell, which
    /// fenced the database, fills it in.
    pub final_gtid: String,
}

/// Longest GTID text a release (or a database report) carries; longer sets are cut (and end
/// with `…`).
pub const MAX_REPORT_GTID: usize = 200;

impl Message {
    /// Short name used in logs and drop counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Heartbeat(_) => "heartbeat",
            Message::Ack(_) => "ack",
            Message::VoteRequest(_) => "vote-request",
            Message::Vote(_) => "vote",
            Message::Release(_) => "release",
        }
    }
}
