//! A replication model: per node a mysqld with its history of transactions (GTIDs), a relay
//! log of received but not yet applied transactions, `read_only`, a replication source and its
//! two threads; crash, freeze, slow apply and a cut replication link. Semi-sync AFTER_SYNC: a
//! commit is acknowledged to the client once one replica has received it.

use crate::core::NodeIdx;
use crate::mysql::DbStatus;
use crate::mysql::dialect::code;
use crate::mysql::probe::Replication;
use std::collections::VecDeque;

/// Transactions an I/O thread receives per step, at most.
const RECEIVE_BURST: usize = 20;

/// A transaction: a GTID, unique across the cluster.
pub type Tx = u32;

/// Whether the server process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Run {
    Running,
    /// Killed: refuses connections until restarted.
    Crashed,
    /// SIGSTOP: takes connections, answers nothing.
    Frozen,
}

/// The replication I/O thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    Stopped,
    /// Started: the source checks this replica's position when it connects.
    Connecting,
    Running,
    /// The source refused this replica's position (error 1236): it holds a transaction the
    /// source lacks.
    Refused,
}

#[derive(Clone, Debug)]
pub struct Mysqld {
    pub run: Run,
    /// Executed transactions, in order (the binlog, with `log_slave_updates`).
    pub log: Vec<Tx>,
    /// Received, not yet applied.
    pub relay: VecDeque<Tx>,
    pub read_only: bool,
    pub source: Option<NodeIdx>,
    pub io: Io,
    /// Transactions applied per step (0: the applier is stalled this step).
    pub apply_every: u32,
    /// This replica receives nothing (its link to the source is cut).
    pub cut: bool,
    /// The I/O thread's connection to the source is up (it reconnects while it is not).
    pub connected: bool,
    /// Consecutive checks that timed out (a frozen server), for `fall`.
    pub timeouts: u32,
}

impl Mysqld {
    pub fn primary() -> Mysqld {
        Mysqld {
            run: Run::Running,
            log: Vec::new(),
            relay: VecDeque::new(),
            read_only: false,
            source: None,
            io: Io::Stopped,
            apply_every: 1,
            cut: false,
            connected: false,
            timeouts: 0,
        }
    }

    pub fn replica_of(source: NodeIdx) -> Mysqld {
        Mysqld {
            read_only: true,
            source: Some(source),
            io: Io::Connecting,
            ..Mysqld::primary()
        }
    }

    /// Takes client writes: running and `read_only` off.
    pub fn writable(&self) -> bool {
        self.run == Run::Running && !self.read_only
    }

    /// How many transactions it has: executed, then received.
    pub fn received_len(&self) -> usize {
        self.log.len() + self.relay.len()
    }

    pub fn received(&self) -> impl Iterator<Item = &Tx> {
        self.log.iter().chain(self.relay.iter())
    }

    /// Executed and received transactions that `other` lacks.
    pub fn extra_over(&self, other: &Mysqld) -> Vec<Tx> {
        let theirs: std::collections::HashSet<Tx> = other.received().copied().collect();
        self.received().filter(|t| !theirs.contains(t)).copied().collect()
    }

    /// Whether everything it has is the start of `source`'s history (what a GTID source checks
    /// when a replica connects).
    pub fn follows(&self, source: &Mysqld) -> bool {
        let n = self.received_len();
        n <= source.log.len() && self.received().eq(source.log[..n].iter())
    }

    pub fn gtid(&self) -> String {
        self.log.last().map_or(String::new(), |t| format!("0-1-{t}"))
    }

    /// The applier's step: up to one transaction from the relay log, unless stalled.
    pub fn apply(&mut self, step: u64) {
        if self.run != Run::Running || self.relay.is_empty() || self.apply_every == 0 {
            return;
        }
        if step.is_multiple_of(u64::from(self.apply_every))
            && let Some(tx) = self.relay.pop_front()
        {
            self.log.push(tx);
        }
    }

    /// What one health check sees, with `sources` naming each node's database address and
    /// `fall` timeouts making a frozen server unhealthy.
    pub fn probe(&mut self, sources: &[String], fall: u32, last: &DbStatus) -> DbStatus {
        match self.run {
            Run::Crashed => DbStatus {
                healthy: false,
                problem: Some("down: connection refused".into()),
                ..last.clone()
            },
            Run::Frozen => {
                self.timeouts += 1;
                DbStatus {
                    healthy: last.healthy && self.timeouts < fall,
                    problem: Some("timed out".into()),
                    ..last.clone()
                }
            }
            Run::Running => {
                self.timeouts = 0;
                self.status(sources)
            }
        }
    }

    fn status(&self, sources: &[String]) -> DbStatus {
        let caught_up = self.relay.is_empty();
        let replication = self.source.map(|s| Replication {
            source: sources[usize::from(s)].clone(),
            // Reconnecting to a source it cannot reach, the thread is not running.
            io_running: self.io == Io::Running && self.connected,
            sql_running: true,
            seconds_behind: Some(self.relay.len() as u64 / 10),
            received_gtid: String::new(),
            applied_all_received: caught_up,
            last_error: (self.io == Io::Refused).then(|| "position not in the source's binlog".into()),
            io_errno: (self.io == Io::Refused).then_some(code::SOURCE_REFUSES_POSITION),
        });
        DbStatus {
            healthy: true,
            problem: None,
            read_only: Some(self.read_only),
            lag_s: self.source.map(|_| self.relay.len() as u64 / 10),
            gtid: Some(self.gtid()),
            position: self.received_len() as u64,
            replication,
            ..DbStatus::default()
        }
    }
}

/// The I/O thread's step for `replica`: on connecting, be refused when its history is not
/// the start of the source's; then fetch the source's next transaction.
pub fn receive(replica: &mut Mysqld, source: &Mysqld) {
    replica.connected = !replica.cut && replica.run == Run::Running && source.run == Run::Running;
    if !replica.connected {
        return;
    }
    if replica.io == Io::Connecting {
        replica.io = if replica.follows(source) {
            Io::Running
        } else {
            Io::Refused
        };
    }
    if replica.io != Io::Running {
        return;
    }
    // The network outpaces the applier: up to a burst of transactions per step.
    let from = replica.received_len().min(source.log.len());
    let to = (from + RECEIVE_BURST).min(source.log.len());
    replica.relay.extend(&source.log[from..to]);
}
