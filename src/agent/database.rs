//! The database side of ownership: who may own (the gate), and, in promote mode, the ordered
//! moves — promote before taking the VIP, fence before confirming a release, keep every
//! database this node does not own read_only.
//!
//! Database actions run as tasks (`crate::mysql::actions`) with deadlines and come back as
//! [`Outcome`]s, so a hung database never stops heartbeats.

use super::Agent;
use crate::clock;
use crate::config::{Mysql, MysqlMode, Secret};
use crate::core::{Instant, NodeIdx, RoleKind, Term};
use crate::gate;
use crate::gate::machine::Action as GateAction;
pub(super) use crate::gate::machine::Event as GateEvent;
use crate::mysql::actions;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

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
                    let result =
                        rejoin(&mysql, &password, &replication_password, host, &gtid, &cancelled).await;
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

/// Re-points replication at `host` with the replication account, bounded by
/// [`REJOIN_TIMEOUT`].
async fn rejoin(
    mysql: &Mysql,
    password: &Option<Secret>,
    replication_password: &Option<Secret>,
    host: String,
    gtid: &str,
    cancelled: &AtomicBool,
) -> Result<actions::Rejoin, String> {
    let Some(account) = &mysql.replication else {
        return Err("no replication_user configured".into());
    };
    let pw = (replication_password.as_ref())
        .map(|p| String::from_utf8_lossy(p.bytes()).into_owned())
        .unwrap_or_default();
    let source = actions::Source {
        host,
        port: account.port,
        user: &account.user,
        password: &pw,
        gtid,
    };
    let deadline = tokio::time::Instant::now() + REJOIN_TIMEOUT;
    actions::rejoin(mysql, password, &source, deadline, cancelled).await
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
        let mine = (self.probed().map_or(0, |db| db.position), self.my_priority());
        let waits_for = |i: usize| {
            let healthy = self.gate.peer(i as NodeIdx).is_some_and(|(_, r)| r.healthy);
            let outranks = (peers[i].position, peers[i].priority) > mine;
            !healthy || (outranks && !peers[i].eligible)
        };
        let missing: Vec<String> = (0..self.config.nodes.len())
            .filter(|&i| i != usize::from(self.me) && !self.config.nodes[i].witness)
            .filter(|&i| waits_for(i))
            .map(|i| self.id(i as NodeIdx).to_string())
            .collect();
        (!missing.is_empty()).then_some(gate::ColdStart { missing, left })
    }

    /// The probe's latest result, copied out of its watch at once: two borrows of the watch
    /// alive together deadlock the agent when the probe sends in between (the lock lets a
    /// waiting writer go first), so none is ever held across a call.
    pub(super) fn probed(&self) -> Option<crate::mysql::DbStatus> {
        self.db.as_ref().map(|db| db.borrow().clone())
    }

    /// Why the database keeps this node from owning, if it does.
    pub(super) fn database_ineligible(&self, now: Instant) -> Option<String> {
        self.database_why(now).map(|why| why.to_string())
    }

    /// The same, typed (`gate::ineligible`).
    pub(super) fn database_why(&self, now: Instant) -> Option<gate::Ineligible> {
        let (mysql, _) = self.mysql.as_ref()?;
        let status = self.probed()?;
        let owner = self.owners.history().map(|(_, o)| o);
        let owner_address = owner.map(|o| self.config.nodes[usize::from(o)].address.to_string());
        let facts = gate::Facts {
            mode: mysql.mode,
            me: self.me,
            db: &status,
            max_lag: mysql.max_lag,
            fault: self.gate.fault(now),
            diverged: self.gate.diverged(),
            last_owner: owner
                .zip(owner_address.as_deref())
                .map(|(o, a)| (o, self.id(o), a)),
            cold_start: self.cold_start(now, mysql),
            highest_writable: self
                .owners
                .highest_writable
                .map_or((0, ""), |(p, n)| (p, self.id(n))),
            ahead: self.ahead(now).map(|(p, n)| (p, self.id(n))),
            catching_up: self.gate.catching_up().filter(|_| !self.stands_anyway()),
            owner_live: self.core.owner(now).is_some(),
            floor: match self.stands_anyway() {
                true => 0,
                false => self.owners.primary_floor,
            },
            newer_owner: self.unseen_newer_owner(now).map(|(term, o)| (self.id(o), term)),
        };
        gate::ineligible(&facts)
    }

    /// A newer term's owner this node — the last primary it knows of — never saw writable
    /// (`gate::Owners::unseen_newer_owner`). Cleared when that owner is heard saying it is a
    /// read_only replica of the last primary's history: it wrote nothing of its own (a
    /// promotion that never took). Or by an operator (`vipgate failover-ack`, for this term).
    fn unseen_newer_owner(&self, now: Instant) -> Option<(Term, NodeIdx)> {
        let newer = self.owners.unseen_newer_owner(self.me)?;
        if self.stands_anyway() {
            return None;
        }
        let lease = self.config.cluster.lease;
        let replica = self
            .gate
            .peer(newer.1)
            .is_some_and(|(at, r)| now.saturating_since(*at) < lease && r.follows_owner && !r.writable);
        (!replica).then_some(newer)
    }

    /// (follows the last primary's history, its database may own), for the database report.
    pub(super) fn database_flags(&self, now: Instant) -> (bool, bool) {
        (self.follows_owner(), self.database_why(now).is_none())
    }

    /// Whether the local database replicates the last primary's history (`Owners::history`): a
    /// read_only replica of it whose position it has not refused, and not diverged.
    pub(super) fn follows_owner(&self) -> bool {
        let Some(owner) = self.owners.history().map(|(_, o)| o).filter(|o| *o != self.me) else {
            return false;
        };
        let Some(db) = self.gate.db() else { return false };
        let address = self.config.nodes[usize::from(owner)].address.to_string();
        let refused = Some(crate::mysql::dialect::code::SOURCE_REFUSES_POSITION);
        db.read_only == Some(true)
            && self.gate.diverged().is_none()
            && db
                .replication
                .as_ref()
                .is_some_and(|r| r.source == address && r.io_errno != refused)
    }

    /// An operator let this node stand against the current history (`vipgate failover-ack`):
    /// what only a peer, or the last primary, has and this database lacks is given up.
    fn stands_anyway(&self) -> bool {
        self.behind_override.is_some() && self.behind_override == self.owners.history().map(|(t, _)| t)
    }

    /// The most advanced peer that replicates the last owner's history, as it last reported,
    /// and whose database cannot stand — silent or down since, or its database not eligible
    /// (lagging, say) —, or that may not take over (a window, a region): what it received may
    /// be nowhere else. A live peer whose database may own is left to the ranking, which puts
    /// the most advanced first — also one out for other reasons (maintenance, a stop, a link
    /// down): the operator took it out, and waiting for it could mean no failover at all. None
    /// once an operator let this node stand anyway (`vipgate failover-ack`, for this term).
    pub(super) fn ahead(&self, now: Instant) -> Option<(u64, NodeIdx)> {
        let last_owner = self.owners.history();
        if self.stands_anyway() {
            return None;
        }
        let peers = self.core.peers();
        (0..self.config.nodes.len() as NodeIdx)
            .filter(|i| *i != self.me && Some(*i) != last_owner.map(|(_, o)| o))
            .filter(|i| {
                let p = &peers[usize::from(*i)];
                let live = p
                    .last_heard
                    .is_some_and(|t| now.saturating_since(t) < self.config.cluster.lease);
                let report = self.gate.peer(*i).map(|(_, r)| r);
                let stands = live && report.is_some_and(|r| r.database_eligible) && !p.blocked;
                report.is_some_and(|r| r.follows_owner) && !stands
            })
            .map(|i| (peers[usize::from(i)].position, i))
            .max()
    }

    /// Notes who owned last and the positions of writable peers (`gate::Owners`); a new last
    /// holder is persisted, since the region and anti-flap rules follow it, also after a restart.
    pub(super) fn note_positions(&mut self) {
        self.note_owner();
        for (i, view) in self.core.peers().iter().enumerate() {
            let writable = self.gate.peer(i as NodeIdx).is_some_and(|(_, r)| r.writable);
            if i != usize::from(self.me) && writable {
                self.owners.note_writable(i as NodeIdx, view.position);
            }
        }
    }

    pub(super) fn note_owner(&mut self) {
        let persisted = self.core.persisted();
        let seen = gate::Seen {
            vote: persisted.voted_for.map(|v| (persisted.term, v)),
            owning: (self.core.role() == RoleKind::Owner).then(|| self.core.term()),
            claims: (self.core.peers().iter().enumerate())
                .filter(|(i, view)| view.lease_claim && view.owner == Some(*i as NodeIdx))
                .map(|(i, view)| (view.term, i as NodeIdx))
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
    fn live_holder(&self) -> Option<(Term, NodeIdx)> {
        let now = clock::now();
        if self.core.holds_lease(now) {
            return Some((self.core.term(), self.me));
        }
        let grant = self.core.grant().filter(|g| now < g.until)?;
        Some((grant.term, grant.to))
    }

    /// A primary seen: noted, and persisted when it is news (eligibility is judged against it,
    /// also after a restart).
    pub(super) fn note_primary(&mut self, primary: (Term, NodeIdx), position: u64) {
        if self.owners.note_primary(primary, position)
            && let Err(e) = self.state.set_last_primary(primary, position)
        {
            tracing::error!("{e}");
        }
    }

    /// The core as the gate sees it, after a step.
    pub(super) fn core_view(&self, now: Instant) -> gate::machine::CoreView {
        gate::machine::CoreView {
            role: self.core.role(),
            term: self.core.term(),
            owner: self.core.owner(now),
            grant_term: self.core.grant().map(|g| g.term),
            last_owner: self.owners.last_owner.map(|(_, o)| o),
        }
    }

    /// Feeds one event to the gate and carries out what it asks, in order.
    pub(super) fn gate_step(&mut self, now: Instant, event: GateEvent) -> Result<(), String> {
        for action in self.gate.handle(now, event) {
            self.gate_action(now, action)?;
        }
        Ok(())
    }

    fn gate_action(&mut self, now: Instant, action: GateAction) -> Result<(), String> {
        match action {
            GateAction::Fence { release, by, settle } => self.start_fence(release, by, settle),
            GateAction::CancelPromotion => {
                if let Some(cancel) = self.promotion_cancel.take() {
                    cancel.store(true, Ordering::SeqCst);
                }
            }
            GateAction::Promote { term, wait_for } => self.start_promotion(term, wait_for),
            GateAction::CancelRejoin => {
                if let Some(cancel) = self.rejoin_cancel.take() {
                    cancel.store(true, Ordering::SeqCst);
                }
            }
            GateAction::Rejoin { term, owner, gtid } => self.start_rejoin(term, owner, gtid),
            GateAction::KillClients { term } => self.kill_now(term),
            GateAction::Serve { term } => {
                let position = self.gate.position();
                self.note_primary((term, self.me), position);
                self.update_dns(now);
                if let Some((t, until)) = self.lease
                    && t == term
                {
                    self.vip(super::Command::Hold { term, until });
                }
            }
            GateAction::OpenWindow { term, from } => self.start_failover_block(term, from),
            GateAction::PersistDiverged(why) => {
                if let Some(w) = &why {
                    tracing::error!("diverged: this database stays read_only and out of replication: {w}");
                } else {
                    tracing::info!("the database replicates cleanly from the owner: no longer diverged");
                }
                if let Err(e) = self.state.set_diverged(why) {
                    tracing::error!("{e}");
                }
            }
            GateAction::Hook { event, term, detail } => {
                self.hook(event, term.unwrap_or(self.core.term()), detail.as_deref())
            }
            GateAction::Reconsider => {
                let health = self.health(now);
                self.step(now, health)?;
            }
            GateAction::ReleaseFenced { term, final_data } => {
                if let Some(p) = &mut self.pending_release
                    && p.term == term
                {
                    p.final_data = Some(final_data);
                }
                self.complete_release(now)?;
            }
        }
        Ok(())
    }

    fn start_rejoin(&mut self, term: Term, owner: NodeIdx, gtid: String) {
        let Some(jobs) = &self.db_jobs else { return };
        let host = self.config.nodes[usize::from(owner)].address.to_string();
        let owner = self.id(owner).to_string();
        tracing::info!(
            term,
            "re-pointing replication at the owner {owner} ({host}) if this database has not diverged"
        );
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

    fn start_promotion(&mut self, term: Term, wait_for: Option<(u64, String)>) {
        let Some(jobs) = &self.db_jobs else { return };
        tracing::info!(
            term,
            "became owner: promoting the database before adding the VIPs"
        );
        self.step_started.insert("promotion", clock::now());
        let cancelled = Arc::new(AtomicBool::new(false));
        self.promotion_cancel = Some(cancelled.clone());
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

    /// Fences the database (read_only ON) before `by`, after any job already queued.
    fn start_fence(&mut self, term: Option<Term>, by: Instant, settle: Duration) {
        let Some(jobs) = &self.db_jobs else { return };
        if term.is_none() {
            tracing::warn!("the database is writable but this node does not own: fencing it (read_only ON)");
        }
        self.step_started.insert("fence", clock::now());
        let budget = clock::until(by).max(Duration::from_millis(10));
        let _ = jobs.send(Job::Fence { term, budget, settle });
    }

    pub(super) fn on_db_outcome(&mut self, now: Instant, outcome: Outcome) -> Result<(), String> {
        let event = match outcome {
            Outcome::Promoted { term, result } => self.promoted_event(term, result),
            Outcome::Fenced { term, result } => self.fenced_event(term, result),
            Outcome::Rejoined { term, owner, result } => rejoined_event(term, &owner, result),
            Outcome::Killed(result) => {
                match result {
                    Ok(n) => tracing::info!("killed {n} client connection(s) of the fenced database"),
                    Err(e) => tracing::error!("killing client connections: {e}"),
                }
                return Ok(());
            }
        };
        self.gate_step(now, event)
    }

    /// A fence's outcome: `term` for the fence of a release of that term, which completes
    /// (with the final position) once the fence is done or the database found not running.
    fn fenced_event(
        &mut self,
        term: Option<Term>,
        result: Result<(u64, String), actions::FenceError>,
    ) -> GateEvent {
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
        let result = result.map_err(|e| match e {
            actions::FenceError::NotRunning(_) => gate::machine::FenceFailure::NotRunning,
            actions::FenceError::Failed(_) => gate::machine::FenceFailure::Failed,
        });
        GateEvent::Fenced {
            release: term,
            result,
        }
    }

    fn promoted_event(&mut self, term: Term, result: Result<actions::Promoted, String>) -> GateEvent {
        if self.gate.phase() != gate::Phase::Promoting(term) {
            if result.is_ok() {
                tracing::warn!(term, "a promotion finished after its ownership ended");
            }
        } else {
            self.promotion_cancel = None;
            self.step_ended("promotion");
            match &result {
                Ok(p) => tracing::info!(
                    term,
                    applied = %p.applied,
                    "database promoted (caught up in {} ms, read_only OFF): adding the VIPs",
                    p.caught_up_in.as_millis()
                ),
                Err(e) => tracing::error!(term, "promotion failed: {e}; giving ownership up"),
            }
        }
        GateEvent::Promoted {
            term,
            result: result.map(|_| ()),
        }
    }

    /// The grace after a fence is over (the gate checked that this node does not own again).
    fn kill_now(&self, term: Term) {
        let Some((mysql, password)) = self.mysql.clone() else {
            return;
        };
        tracing::info!(term, "killing the client connections of the fenced database");
        let tx = self.db_outcomes_tx.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + KILL_TIMEOUT;
            let _ = tx.send(Outcome::Killed(
                actions::kill_clients(&mysql, &password, deadline).await,
            ));
        });
    }
}

fn rejoined_event(term: Term, owner: &str, result: Result<actions::Rejoin, String>) -> GateEvent {
    let result = match result {
        Ok(actions::Rejoin::Replicating) => {
            tracing::info!(term, "the database replicates from {owner}");
            gate::machine::Rejoined::Replicating
        }
        Ok(actions::Rejoin::Diverged { detail, count }) => {
            let count = count.map_or("an unknown number of".to_string(), |n| n.to_string());
            gate::machine::Rejoined::Diverged(format!(
                "{count} transaction(s) that {owner} lacks ({detail}); manual action needed"
            ))
        }
        Err(e) => {
            tracing::warn!(term, "could not re-point replication at {owner}: {e}; retrying");
            gate::machine::Rejoined::Failed
        }
    };
    GateEvent::Rejoined { term, result }
}
