//! The database side of ownership: who may own (the gate), and, in promote mode, the ordered
//! moves — promote before taking the VIP, fence before confirming a release, keep every
//! database this node does not own read_only.
//!
//! Database actions run as tasks (`crate::mysql::actions`) with deadlines and come back as
//! [`Outcome`]s, so a hung database never stops heartbeats.

use super::Agent;
use crate::clock;
use crate::config::{Mysql, MysqlMode, Secret};
use crate::core::{Instant, RoleKind, Term};
use crate::gate;
use crate::mysql::actions;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// After a failed promotion the node stays ineligible this long (or one lease, if longer).
const PROMOTE_FAULT_BACKOFF: Duration = Duration::from_secs(10);
/// Between attempts of a fence that failed.
const FENCE_RETRY: Duration = Duration::from_millis(100);
/// Bound on killing client connections after a fence.
const KILL_TIMEOUT: Duration = Duration::from_secs(2);

/// A change to the database. Jobs run one at a time, in order, so that a fence can never be
/// overtaken by a promotion that started before it (or the reverse).
pub(super) enum Job {
    Promote {
        term: Term,
        cancelled: Arc<AtomicBool>,
        /// A planned hand-over: the old primary's final position (count, GTIDs).
        wait_for: Option<(u64, String)>,
        /// Bound on catching up (`catchup_timeout_ms` as configured now).
        catchup: Duration,
        /// `[hooks] pre_promote`; a failure vetoes.
        veto: Option<Veto>,
    },
    /// `settle`: how long the server must be found not running, attempt after attempt,
    /// before the fence reports [`actions::FenceError::NotRunning`].
    Fence {
        term: Option<Term>,
        budget: Duration,
        settle: Duration,
    },
    /// Replicate from the owner of `term`, whose database is at `host`.
    Rejoin {
        term: Term,
        owner: String,
        host: String,
        gtid: String,
        cancelled: Arc<AtomicBool>,
    },
}

/// The `pre_promote` hook: the script, its bound and its variables.
pub(super) type Veto = (std::path::PathBuf, Duration, Vec<(String, String)>);

/// Bound on one rejoin attempt (re-pointing and waiting for the I/O thread to connect).
const REJOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed rejoin attempt, the next one waits this long.
const REJOIN_RETRY: Duration = Duration::from_secs(5);

/// Bound on fencing the local database at start.
const START_FENCE_TIMEOUT: Duration = Duration::from_secs(5);

/// Promote mode, before anything else at start: a (re)started agent holds no lease, so its
/// database must not accept writes — whatever a killed predecessor left (`Restart=on-failure`
/// makes this the way back from a crash). An unreachable database is fenced by the first
/// health check that finds it writable instead.
pub(super) async fn fence_at_start(
    config: &crate::config::Config,
    me: crate::core::NodeIdx,
) -> Result<(), String> {
    fence_unowned(config, me, "at start").await
}

/// Promote mode, when the agent ends on an error (a state file it cannot write, say): it will
/// hold no lease, so its database stops accepting writes now rather than when the agent is
/// started again.
pub(super) async fn fence_at_error_exit(config: &crate::config::Config, me: crate::core::NodeIdx) {
    let _ = fence_unowned(config, me, "on the way out").await;
}

async fn fence_unowned(
    config: &crate::config::Config,
    me: crate::core::NodeIdx,
    when: &str,
) -> Result<(), String> {
    let Some(mysql) = config.mysql.as_ref().filter(|m| m.mode == MysqlMode::Promote) else {
        return Ok(());
    };
    if config.nodes[usize::from(me)].witness {
        return Ok(());
    }
    let password = config.read_mysql_password().map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + START_FENCE_TIMEOUT;
    match actions::fence_at_start(mysql, &password, deadline).await {
        Ok(killed) => tracing::info!(
            "database fenced {when} (read_only ON, {killed} client connection(s) killed): this agent holds \
             no lease until it wins one"
        ),
        Err(e) => tracing::warn!(
            "could not fence the database {when} ({e}); the first health check of a running agent that finds \
             it writable fences it"
        ),
    }
    Ok(())
}

/// Fences, retrying every [`FENCE_RETRY`] until `budget` is spent: a dropped connection may be
/// passing, and a server being restarted is fenced as soon as it listens. A server found not
/// running at every attempt for `settle` is reported so — it takes no writes — so that a
/// release need not wait for the lease to run out; by then every peer's database report is
/// fresh, and the election that follows ranks on current positions.
async fn fence_until(
    mysql: &Mysql,
    password: &Option<Secret>,
    budget: Duration,
    settle: Duration,
) -> Result<(u64, String), actions::FenceError> {
    let started = tokio::time::Instant::now();
    let deadline = started + budget;
    let mut gone_since = None;
    loop {
        let result = actions::fence(mysql, password, deadline).await;
        let now = tokio::time::Instant::now();
        match &result {
            Ok(_) => return result,
            Err(actions::FenceError::NotRunning(_)) => {
                if now.duration_since(*gone_since.get_or_insert(now)) >= settle {
                    return result;
                }
            }
            Err(actions::FenceError::Failed(_)) => gone_since = None,
        }
        if now + FENCE_RETRY * 2 >= deadline {
            // Not running, but not for long enough to be sure: the lease decides.
            return result.map_err(|e| match e {
                actions::FenceError::NotRunning(e) => actions::FenceError::Failed(format!(
                    "the database is not running ({e}) since less than {settle:?}"
                )),
                e => e,
            });
        }
        tokio::time::sleep(FENCE_RETRY).await;
    }
}

/// Runs database jobs in order and reports each outcome.
pub(super) fn start_worker(
    mysql: Mysql,
    password: Option<Secret>,
    replication_password: Option<Secret>,
    outcomes: mpsc::UnboundedSender<Outcome>,
) -> mpsc::UnboundedSender<Job> {
    let (tx, mut jobs) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(job) = jobs.recv().await {
            let outcome = match job {
                Job::Promote {
                    term,
                    cancelled,
                    wait_for,
                    catchup,
                    veto,
                } => {
                    let vetoed = match &veto {
                        Some((script, timeout, env)) => {
                            super::hooks::run(script, "pre_promote", term, env, *timeout)
                                .await
                                .err()
                                .map(|e| format!("vetoed by the pre_promote hook {}: {e}", script.display()))
                        }
                        None => None,
                    };
                    let result = match vetoed {
                        Some(why) => Err(why),
                        None => {
                            let deadline = tokio::time::Instant::now() + catchup;
                            actions::promote(&mysql, &password, deadline, &cancelled, wait_for).await
                        }
                    };
                    Outcome::Promoted { term, result }
                }
                Job::Fence { term, budget, settle } => Outcome::Fenced {
                    term,
                    result: fence_until(&mysql, &password, budget, settle).await,
                },
                Job::Rejoin {
                    term,
                    owner,
                    host,
                    gtid,
                    cancelled,
                } => {
                    let result = match &mysql.replication {
                        Some(account) => {
                            let pw = replication_password
                                .as_ref()
                                .map(|p| String::from_utf8_lossy(p.bytes()).into_owned())
                                .unwrap_or_default();
                            let source = actions::Source {
                                host,
                                port: account.port,
                                user: &account.user,
                                password: &pw,
                                gtid: &gtid,
                            };
                            let deadline = tokio::time::Instant::now() + REJOIN_TIMEOUT;
                            actions::rejoin(&mysql, &password, &source, deadline, &cancelled).await
                        }
                        None => Err("no replication_user configured".into()),
                    };
                    Outcome::Rejoined { term, owner, result }
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
    /// With the database's final position (count, GTIDs) on success.
    Fenced {
        term: Option<Term>,
        result: Result<(u64, String), actions::FenceError>,
    },
    /// `kill_grace` has passed since the fence of a release of `term`.
    KillDue {
        term: Term,
    },
    Killed(Result<u32, String>),
    Rejoined {
        term: Term,
        owner: String,
        result: Result<actions::Rejoin, String>,
    },
}

impl Agent {
    pub(super) fn promote_mode(&self) -> bool {
        self.mysql
            .as_ref()
            .is_some_and(|(m, _)| m.mode == MysqlMode::Promote)
    }

    /// A cluster starting (no owner seen yet): the first owner must be the most advanced
    /// database, so nobody stands before every other database host has reported a healthy
    /// database (and every one that ranks above it has said it may own) — or until it has had
    /// time to (a lease, `rise` checks and a check timeout from
    /// this agent's start): a host that is down does not hold the others back for long.
    fn my_priority(&self) -> u8 {
        self.config.nodes[usize::from(self.me)].priority
    }

    fn cold_start(&self, now: Instant, mysql: &Mysql) -> Option<gate::ColdStart> {
        let window = self.config.cluster.lease + mysql.check_interval * mysql.rise + mysql.check_timeout;
        let left = (self.started + window).saturating_since(now);
        if left.is_zero() {
            return None;
        }
        // A peer that ranks above this node (more data, or as much and a higher priority)
        // must also have said it may own: its heartbeat can come a moment after its database
        // report, and standing in between would let this node win before it.
        let peers = self.core.peers();
        let mine = (
            self.db.as_ref().map_or(0, |db| db.borrow().position),
            self.my_priority(),
        );
        let waits_for = |i: usize| {
            let healthy = self.peer_db[i].as_ref().is_some_and(|(_, r)| r.healthy);
            let outranks = (peers[i].position, peers[i].priority) > mine;
            !healthy || (outranks && !peers[i].eligible)
        };
        let missing: Vec<String> = (0..self.config.nodes.len())
            .filter(|&i| i != usize::from(self.me) && !self.config.nodes[i].witness)
            .filter(|&i| waits_for(i))
            .map(|i| self.id(i as crate::core::NodeIdx).to_string())
            .collect();
        (!missing.is_empty()).then_some(gate::ColdStart { missing, left })
    }

    /// Why the database keeps this node from owning, if it does (`gate::ineligible`).
    pub(super) fn database_ineligible(&self, now: Instant) -> Option<String> {
        let (mysql, _) = self.mysql.as_ref()?;
        let status = self.db.as_ref()?.borrow();
        let fault = self.db_fault.as_ref().filter(|(_, until)| now < *until);
        let owner = self.owners.last_owner.map(|(_, o)| o);
        let owner_address = owner.map(|o| self.config.nodes[usize::from(o)].address.to_string());
        let facts = gate::Facts {
            mode: mysql.mode,
            me: self.me,
            db: &status,
            max_lag: mysql.max_lag,
            fault: fault.map(|(e, _)| e.as_str()),
            diverged: self.diverged.as_ref().map(|(_, d)| d.as_str()),
            last_owner: owner
                .zip(owner_address.as_deref())
                .map(|(o, a)| (o, self.id(o), a)),
            cold_start: self.cold_start(now, mysql),
            highest_writable: self
                .owners
                .highest_writable
                .map_or((0, ""), |(p, n)| (p, self.id(n))),
        };
        gate::ineligible(&facts).map(|why| why.to_string())
    }

    /// Notes who owned last and the positions of writable peers (`gate::Owners`); a new last
    /// holder is persisted, since the region and anti-flap rules follow it, also after a restart.
    pub(super) fn note_positions(&mut self) {
        self.note_owner();
        for (i, view) in self.core.peers().iter().enumerate() {
            let writable = self.peer_db[i].as_ref().is_some_and(|(_, r)| r.writable);
            if i != usize::from(self.me) && writable {
                self.owners
                    .note_writable(i as crate::core::NodeIdx, view.position);
            }
        }
    }

    pub(super) fn note_owner(&mut self) {
        let persisted = self.core.persisted();
        let seen = gate::Seen {
            vote: persisted.voted_for.map(|v| (persisted.term, v)),
            owning: (self.core.role() == RoleKind::Owner).then(|| self.core.term()),
            claims: (self.core.peers().iter().enumerate())
                .filter(|(i, view)| view.lease_claim && view.owner == Some(*i as crate::core::NodeIdx))
                .map(|(i, view)| (view.term, i as crate::core::NodeIdx))
                .collect(),
            live: self.live_holder(),
        };
        if let Some(holder) = self.owners.observe(self.me, &seen)
            && let Err(e) = self.state.set_last_holder(Some(holder))
        {
            tracing::error!("{e}");
        }
    }

    /// The lease held right now, as this node knows it: its own, or the one it acknowledges.
    fn live_holder(&self) -> Option<(Term, crate::core::NodeIdx)> {
        let now = clock::now();
        if self.core.holds_lease(now) {
            return Some((self.core.term(), self.me));
        }
        let grant = self.core.grant().filter(|g| now < g.until)?;
        Some((grant.term, grant.to))
    }

    /// A new probe result: in promote mode, fence a writable database this node does not own.
    pub(super) fn on_db_status(&mut self, now: Instant) {
        let healthy = self.db.as_ref().is_some_and(|db| db.borrow().healthy);
        if self.db_was_healthy.map_or(healthy, |was| was != healthy) {
            let problem = self.db.as_ref().and_then(|db| db.borrow().problem.clone());
            let event = if healthy { "db_healthy" } else { "db_unhealthy" };
            self.hook(event, self.core.term(), problem.as_deref());
        }
        self.db_was_healthy = Some(healthy);
        if let Some((_, until)) = &self.db_fault
            && now >= *until
        {
            self.db_fault = None;
        }
        if !self.promote_mode() || self.fencing || self.promoting.is_some() || self.pending_release.is_some()
        {
            return;
        }
        self.watch_divergence();
        // Seen writable by the last check (a failed check keeps the last value it saw, which
        // says nothing about a server that is gone).
        let writable = self.db.as_ref().is_some_and(|db| {
            let db = db.borrow();
            db.read_only == Some(false) && db.problem.is_none()
        });
        let owns_it = self.promoted.is_some() && self.core.role() == RoleKind::Owner;
        if writable && !owns_it {
            tracing::warn!("the database is writable but this node does not own: fencing it (read_only ON)");
            self.fencing = true;
            let timeout = self
                .mysql
                .as_ref()
                .map_or(Duration::from_secs(1), |(m, _)| m.check_timeout);
            self.start_fence(None, clock::now() + timeout.max(Duration::from_secs(1)));
            return;
        }
        self.maybe_rejoin(now);
    }

    /// Persists a divergence finding (or its end), so that a restart does not forget it.
    fn set_diverged(&mut self, why: Option<String>) {
        if why.is_none() {
            self.diverged = None;
        }
        if let Some(w) = &why {
            self.hook("diverged", self.core.term(), Some(w));
        }
        if let Err(e) = self.state.set_diverged(why) {
            tracing::error!("{e}");
        }
    }

    /// Divergence the replication threads reveal on their own (the source refusing this
    /// database's position, error 1236), and its end: replicating cleanly from the last owner,
    /// e.g. after an operator repaired it.
    fn watch_divergence(&mut self) {
        let Some(db) = &self.db else { return };
        let replication = db.borrow().replication.clone();
        let Some(r) = replication else { return };
        let last_owner = self.owners.last_owner.map(|(_, o)| o).filter(|o| *o != self.me);
        let from_owner =
            last_owner.is_some_and(|o| r.source == self.config.nodes[usize::from(o)].address.to_string());
        if r.io_errno == Some(crate::mysql::dialect::code::SOURCE_REFUSES_POSITION) && self.diverged.is_none()
        {
            let message = format!(
                "the source {} refuses this database's position ({}); manual action needed",
                r.source,
                r.last_error.clone().unwrap_or_default()
            );
            tracing::error!("diverged: {message}");
            self.diverged = Some((self.core.term(), message.clone()));
            self.set_diverged(Some(message));
        } else if self.diverged.is_some()
            && from_owner
            && r.io_running
            && r.sql_running
            && r.io_errno.is_none()
        {
            tracing::info!("the database replicates cleanly from the owner again: no longer diverged");
            self.set_diverged(None);
        }
    }

    /// A fenced database that does not replicate from the current owner's re-points itself
    /// there — unless it has diverged (then it stays out, and says so).
    fn maybe_rejoin(&mut self, now: Instant) {
        let Some((mysql, _)) = &self.mysql else { return };
        if mysql.replication.is_none() || self.rejoining || now < self.rejoin_retry_at {
            return;
        }
        if self.core.role() != RoleKind::Follower {
            return;
        }
        let Some(owner) = self.core.owner(now).filter(|o| *o != self.me) else {
            return;
        };
        let term = self.core.grant().map_or(self.core.term(), |g| g.term);
        if self.diverged.as_ref().is_some_and(|(t, _)| *t == term) {
            return;
        }
        let Some((at, report)) = &self.peer_db[usize::from(owner)] else {
            return;
        };
        let fresh = now.saturating_since(*at) < self.config.cluster.lease * 3;
        if !(fresh && report.healthy && report.writable) {
            return;
        }
        let host = self.config.nodes[usize::from(owner)].address.to_string();
        let Some(db) = &self.db else { return };
        let status = db.borrow();
        if !status.healthy || status.read_only != Some(true) {
            return;
        }
        // Already pointed at the owner: its threads are its own business (a stopped thread shows
        // in status and in eligibility); re-pointing would only interrupt it.
        if status.replication.as_ref().is_some_and(|r| r.source == host) {
            return;
        }
        let gtid = report.gtid.clone();
        drop(status);
        let Some(jobs) = &self.db_jobs else { return };
        let owner = self.id(owner).to_string();
        tracing::info!(
            term,
            "re-pointing replication at the owner {owner} ({host}) if this database has not diverged"
        );
        self.rejoining = true;
        let cancelled = Arc::new(AtomicBool::new(false));
        self.rejoin_cancel = Some(cancelled.clone());
        let _ = jobs.send(Job::Rejoin {
            term,
            owner,
            host,
            gtid,
            cancelled,
        });
    }

    pub(super) fn start_promotion(&mut self, term: Term) {
        let Some(jobs) = &self.db_jobs else { return };
        tracing::info!(
            term,
            "became owner: promoting the database before adding the VIPs"
        );
        // A rejoin still waiting for its source must not hold the promotion up.
        if let Some(cancel) = self.rejoin_cancel.take() {
            cancel.store(true, Ordering::SeqCst);
        }
        self.promoting = Some(term);
        self.promoted = None;
        self.step_started.insert("promotion", clock::now());
        let cancelled = Arc::new(AtomicBool::new(false));
        self.promotion_cancel = Some(cancelled.clone());
        // Handed over by name a moment ago: wait for everything the old primary wrote.
        let wait_for = self
            .handover_position
            .take()
            .filter(|(_, _, at)| clock::now().saturating_since(*at) < self.config.cluster.lease * 2)
            .map(|(p, gtid, _)| (p, gtid));
        if let Some((p, gtid)) = &wait_for {
            tracing::info!(
                term,
                "planned hand-over: waiting until this database has the old primary's {p} transactions ({})",
                if gtid.is_empty() {
                    "GTIDs unknown"
                } else {
                    gtid.as_str()
                }
            );
        }
        let catchup = self
            .mysql
            .as_ref()
            .map_or(Duration::from_secs(30), |(m, _)| m.catchup_timeout);
        let veto = self
            .config
            .hooks
            .pre_promote
            .clone()
            .map(|script| (script, self.config.hooks.timeout, self.hook_env(None)));
        let _ = jobs.send(Job::Promote {
            term,
            cancelled,
            wait_for,
            catchup,
            veto,
        });
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
        self.step_started.insert("fence", clock::now());
        let budget = clock::until(by).max(Duration::from_millis(10));
        // Long enough for every peer's next check to be reported (see `fence_until`).
        let settle = self.mysql.as_ref().map_or(Duration::ZERO, |(m, _)| {
            m.check_interval + m.check_timeout + self.config.cluster.interval
        });
        let _ = jobs.send(Job::Fence { term, budget, settle });
    }

    pub(super) fn on_db_outcome(&mut self, now: Instant, outcome: Outcome) -> Result<(), String> {
        match outcome {
            Outcome::Promoted { term, result } => self.on_promoted(now, term, result),
            Outcome::Fenced { term, result } => self.on_fenced(now, term, result),
            Outcome::Rejoined { term, owner, result } => self.on_rejoined(now, term, owner, result),
            Outcome::KillDue { term } => {
                self.kill_now(term);
                Ok(())
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

    /// A fence's outcome: `term` for the fence of a release of that term, which completes
    /// (with the final position) once the fence is done or the database found not running.
    fn on_fenced(
        &mut self,
        now: Instant,
        term: Option<Term>,
        result: Result<(u64, String), actions::FenceError>,
    ) -> Result<(), String> {
        self.step_ended("fence");
        match (&result, term) {
            (Ok((p, gtid)), Some(t)) => {
                tracing::info!(
                    term = t,
                    "database fenced (read_only ON) at {gtid} ({p} transactions)"
                )
            }
            (Ok(_), None) => tracing::info!("database fenced (read_only ON)"),
            (Err(e), None) => {
                tracing::error!("could not fence the database: {e}; retrying with the next check")
            }
            (Err(e @ actions::FenceError::NotRunning(_)), Some(t)) => tracing::warn!(
                term = t,
                "{e}: it takes no writes, so the release goes on without waiting for the lease to run out"
            ),
            (Err(e), Some(_)) => {
                tracing::error!("could not fence the database: {e}; a release waits for the lease to run out")
            }
        }
        if result.is_ok() {
            self.hook("fence", term.unwrap_or(self.core.term()), None);
        }
        if term.is_none() {
            self.fencing = false;
            return Ok(());
        }
        if let (Err(actions::FenceError::NotRunning(_)), Some(t)) = (&result, term)
            && let Some(p) = &mut self.pending_release
            && p.term == t
        {
            p.fence_done = true;
            p.not_running = true;
        }
        if let (Ok((position, gtid)), Some(t)) = (&result, term) {
            self.kill_clients_later(t);
            if let Some(p) = &mut self.pending_release
                && p.term == t
            {
                p.fence_done = true;
                p.final_position = Some(*position);
                p.final_gtid = gtid.clone();
                // The release announces this final position to the successor.
                let eligible = self.ineligible_reason(now).is_none();
                self.step(
                    now,
                    crate::core::Event::Health {
                        eligible,
                        position: *position,
                        blocked: self.sent_flags.0,
                        preferred: self.sent_flags.1,
                    },
                )?;
            }
        }
        self.complete_release(now)
    }

    fn on_rejoined(
        &mut self,
        now: Instant,
        term: Term,
        owner: String,
        result: Result<actions::Rejoin, String>,
    ) -> Result<(), String> {
        self.rejoining = false;
        self.rejoin_cancel = None;
        match result {
            Ok(actions::Rejoin::Replicating) => {
                tracing::info!(term, "the database replicates from {owner}");
                self.set_diverged(None);
            }
            Ok(actions::Rejoin::Diverged { detail, count }) => {
                let count = count.map_or("an unknown number of".to_string(), |n| n.to_string());
                let message =
                    format!("{count} transaction(s) that {owner} lacks ({detail}); manual action needed");
                tracing::error!(
                    term,
                    "diverged: this database stays read_only and out of replication: {message}"
                );
                self.diverged = Some((term, message.clone()));
                self.set_diverged(Some(message));
                let health = self.health(now);
                return self.step(now, health);
            }
            Err(e) => {
                tracing::warn!(term, "could not re-point replication at {owner}: {e}; retrying");
                self.rejoin_retry_at = now + REJOIN_RETRY;
            }
        }
        Ok(())
    }

    fn on_promoted(
        &mut self,
        now: Instant,
        term: Term,
        result: Result<actions::Promoted, String>,
    ) -> Result<(), String> {
        if self.promoting != Some(term) {
            // Ownership of `term` ended while promoting. If the database was made writable
            // anyway, the next health check sees it and fences it (unless this node owns again
            // and is promoting, in which case it is about to be writable by right).
            if result.is_ok() {
                tracing::warn!(term, "a promotion finished after its ownership ended");
            }
            return Ok(());
        }
        self.promoting = None;
        self.promotion_cancel = None;
        self.step_ended("promotion");
        match result {
            Ok(p) => {
                tracing::info!(
                    term,
                    applied = %p.applied,
                    "database promoted (caught up in {} ms, read_only OFF): adding the VIPs",
                    p.caught_up_in.as_millis()
                );
                self.promoted = Some(term);
                self.hook("owner", term, None);
                self.start_failover_block(term);
                self.update_dns(now);
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

    /// Kills client connections `kill_grace` after the fence of a release of `term`: they
    /// cannot write any more, and should reconnect — through the VIP, to the new primary.
    fn kill_clients_later(&self, term: Term) {
        let Some((mysql, _)) = &self.mysql else { return };
        let grace = mysql.kill_grace;
        let tx = self.db_outcomes_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = tx.send(Outcome::KillDue { term });
        });
    }

    /// The grace after a fence is over: kill, unless this node has been promoted since.
    fn kill_now(&self, term: Term) {
        if self.promoting.is_some() || self.promoted.is_some() {
            tracing::info!(term, "not killing client connections: this node owns again");
            return;
        }
        let Some((mysql, password)) = self.mysql.clone() else {
            return;
        };
        let tx = self.db_outcomes_tx.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + KILL_TIMEOUT;
            let _ = tx.send(Outcome::Killed(
                actions::kill_clients(&mysql, &password, deadline).await,
            ));
        });
    }
}
