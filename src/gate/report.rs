//! What each database node tells its peers about its database, with its heartbeats: the gate's
//! input from peers. The ownership core never sees it (`crate::net::Datagram` keeps the two
//! apart on the wire).

/// A database's state as its own agent's probe last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbReport {
    pub healthy: bool,
    /// `read_only = OFF`.
    pub writable: bool,
    /// A replica whose I/O and SQL threads both run.
    pub replicating: bool,
    /// Seconds behind its source, when replicating and known.
    pub lag_s: Option<u32>,
    /// A replica of the last owner's history (its source is the last owner, which has not
    /// refused its position, and it has not diverged): what it received counts against
    /// candidates that lack it.
    pub follows_owner: bool,
    /// Its database may own (the gate's rules say so, whatever else keeps the node out:
    /// maintenance, a stop, a link down).
    pub database_eligible: bool,
    /// What is left of the sender's anti-flap window (0: none). Peers follow the owner's.
    pub failover_block_ms: u32,
    /// Executed GTIDs (at most [`crate::core::MAX_REPORT_GTID`] bytes).
    pub gtid: String,
}
