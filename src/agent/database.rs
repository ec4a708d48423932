//! The database side of ownership: who may own (the gate), and, in promote mode, the ordered
//! moves — promote before taking the VIP, fence before confirming a release, keep every
//! database this node does not own read_only.
//!
//! Database actions run as tasks (`crate::mysql::actions`) with deadlines and come back as
//! [`Outcome`]s, so a hung database never stops heartbeats.

use super::{Agent, clock};
use crate::config::{Mysql, MysqlMode, Secret};
use crate::core::{Instant, RoleKind, Term};
use crate::mysql::actions;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// After a failed promotion the node stays ineligible this long (or one lease, if longer).
const PROMOTE_FAULT_BACKOFF: Duration = Duration::from_secs(10);
/// Bound on killing client connections after a fence.
const KILL_TIMEOUT: Duration = Duration::from_secs(2);

/// A change to the database. Jobs run one at a time, in order, so that a fence can never be
/// overtaken by a promotion that started before it (or the reverse).
pub(super) enum Job {
    Promote { term: Term, cancelled: Arc<AtomicBool> },
    Fence { term: Option<Term>, budget: Duration },
}

/// Runs database jobs in order and reports each outcome.
pub(super) fn start_worker(
    mysql: Mysql,
    password: Option<Secret>,
    outcomes: mpsc::UnboundedSender<Outcome>,
) -> mpsc::UnboundedSender<Job> {
    let (tx, mut jobs) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(job) = jobs.recv().await {
            let outcome = match job {
                Job::Promote { term, cancelled } => {
                    let deadline = tokio::time::Instant::now() + mysql.catchup_timeout;
                    let result = actions::promote(&mysql, &password, deadline, &cancelled).await;
                    Outcome::Promoted { term, result }
                }
                Job::Fence { term, budget } => {
                    let deadline = tokio::time::Instant::now() + budget;
                    let result = actions::fence(&mysql, &password, deadline).await;
                    Outcome::Fenced { term, result }
                }
            };
            if outcomes.send(outcome).is_err() {
                return;
            }
        }
    });
    tx
}

/// What a database task reports back.
pub(super) enum Outcome {
    Promoted {
        term: Term,
        result: Result<actions::Promoted, String>,
    },
    /// `term`: the fence of a release of that term; `None`: of a database this node does not own.
    Fenced {
        term: Option<Term>,
        result: Result<(), String>,
    },
    Killed(Result<u32, String>),
}

impl Agent {
    pub(super) fn promote_mode(&self) -> bool {
        self.mysql
            .as_ref()
            .is_some_and(|(m, _)| m.mode == MysqlMode::Promote)
    }

    /// Why the database keeps this node from owning, if it does.
    pub(super) fn database_ineligible(&self, now: Instant) -> Option<String> {
        if let Some((error, until)) = &self.db_fault
            && now < *until
        {
            return Some(error.clone());
        }
        let (mysql, _) = self.mysql.as_ref()?;
        let status = self.db.as_ref()?.borrow();
        if !status.healthy {
            let problem = status.problem.as_deref().unwrap_or("not checked yet");
            return Some(format!("database not healthy ({problem})"));
        }
        match mysql.mode {
            MysqlMode::Gate => match status.read_only {
                Some(false) => None,
                _ => Some(
                    "database is read_only (gate mode: only the writable database's node may own)".into(),
                ),
            },
            MysqlMode::Promote => {
                // A database that replicates from nobody (the primary) has no lag to check.
                status.replication.as_ref()?;
                let max = mysql.max_lag.as_secs();
                match status.lag_s {
                    Some(lag) if lag <= max => None,
                    Some(lag) => Some(format!("replica {lag} s behind its source (max_lag {max} s)")),
                    None => Some("replica lag unknown (replication never ran?)".into()),
                }
            }
        }
    }

    /// A new probe result: in promote mode, fence a writable database this node does not own.
    pub(super) fn on_db_status(&mut self, now: Instant) {
        if let Some((_, until)) = &self.db_fault
            && now >= *until
        {
            self.db_fault = None;
        }
        if !self.promote_mode() || self.fencing || self.promoting.is_some() || self.pending_release.is_some()
        {
            return;
        }
        let writable = self
            .db
            .as_ref()
            .is_some_and(|db| db.borrow().read_only == Some(false));
        let owns_it = self.promoted.is_some() && self.core.role() == RoleKind::Owner;
        if writable && !owns_it {
            tracing::warn!("the database is writable but this node does not own: fencing it (read_only ON)");
            self.fencing = true;
            let timeout = self
                .mysql
                .as_ref()
                .map_or(Duration::from_secs(1), |(m, _)| m.check_timeout);
            self.start_fence(None, clock::now() + timeout.max(Duration::from_secs(1)));
        }
    }

    pub(super) fn start_promotion(&mut self, term: Term) {
        let Some(jobs) = &self.db_jobs else { return };
        tracing::info!(
            term,
            "became owner: promoting the database before adding the VIPs"
        );
        self.promoting = Some(term);
        self.promoted = None;
        let cancelled = Arc::new(AtomicBool::new(false));
        self.promotion_cancel = Some(cancelled.clone());
        let _ = jobs.send(Job::Promote { term, cancelled });
    }

    /// Fences the database (read_only ON) before `by`, after any job already queued; a
    /// promotion in progress is cancelled first.
    pub(super) fn start_fence(&mut self, term: Option<Term>, by: Instant) {
        let Some(jobs) = &self.db_jobs else { return };
        if let Some(cancel) = self.promotion_cancel.take() {
            cancel.store(true, Ordering::SeqCst);
        }
        self.promoting = None;
        self.promoted = None;
        let budget = clock::until(by).max(Duration::from_millis(10));
        let _ = jobs.send(Job::Fence { term, budget });
    }

    pub(super) fn on_db_outcome(&mut self, now: Instant, outcome: Outcome) -> Result<(), String> {
        match outcome {
            Outcome::Promoted { term, result } => self.on_promoted(now, term, result),
            Outcome::Fenced { term, result } => {
                match (&result, term) {
                    (Ok(()), Some(t)) => tracing::info!(term = t, "database fenced (read_only ON)"),
                    (Ok(()), None) => tracing::info!("database fenced (read_only ON)"),
                    (Err(e), _) => tracing::error!(
                        "could not fence the database: {e}; a release waits for the lease to run out"
                    ),
                }
                if term.is_none() {
                    self.fencing = false;
                    return Ok(());
                }
                if result.is_ok() {
                    self.kill_clients_later();
                    if let Some(p) = &mut self.pending_release
                        && Some(p.term) == term
                    {
                        p.fence_done = true;
                    }
                }
                self.complete_release(now)
            }
            Outcome::Killed(result) => {
                match result {
                    Ok(n) => tracing::info!("killed {n} client connection(s) of the fenced database"),
                    Err(e) => tracing::error!("killing client connections: {e}"),
                }
                Ok(())
            }
        }
    }

    fn on_promoted(
        &mut self,
        now: Instant,
        term: Term,
        result: Result<actions::Promoted, String>,
    ) -> Result<(), String> {
        if self.promoting != Some(term) {
            // Ownership ended while promoting: make sure the database does not stay writable.
            if result.is_ok() && self.pending_release.is_none() && !self.fencing {
                tracing::warn!(term, "promotion finished after ownership ended: fencing again");
                self.fencing = true;
                self.start_fence(None, now + Duration::from_secs(1));
            }
            return Ok(());
        }
        self.promoting = None;
        self.promotion_cancel = None;
        match result {
            Ok(p) => {
                tracing::info!(
                    term,
                    applied = %p.applied,
                    "database promoted (caught up in {} ms, read_only OFF): adding the VIPs",
                    p.caught_up_in.as_millis()
                );
                self.promoted = Some(term);
                if let Some((t, until)) = self.lease
                    && t == term
                {
                    self.vip(super::Command::Hold { term, until });
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(term, "promotion failed: {e}; giving ownership up");
                let backoff = PROMOTE_FAULT_BACKOFF.max(self.config.cluster.lease);
                self.db_fault = Some((format!("promotion failed: {e}"), now + backoff));
                let health = self.health(now);
                self.step(now, health)
            }
        }
    }

    /// Kills client connections `kill_grace` after a fence: they cannot write any more, and
    /// should reconnect — through the VIP, to the new primary.
    fn kill_clients_later(&self) {
        let Some((mysql, password)) = self.mysql.clone() else {
            return;
        };
        let tx = self.db_outcomes_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(mysql.kill_grace).await;
            let deadline = tokio::time::Instant::now() + KILL_TIMEOUT;
            let _ = tx.send(Outcome::Killed(
                actions::kill_clients(&mysql, &password, deadline).await,
            ));
        });
    }
}
