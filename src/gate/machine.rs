//! The database gate as a state machine: the ordered moves of promote mode — promote before the
//! VIP is served, fence before a release is announced, keep every database this node does not
//! own read_only, re-point a fenced database at the owner unless it diverged — decided here,
//! carried out by the shell.
//!
//! Same shape as the ownership core: [`Gate::handle`] takes `now` and one [`Event`] and returns
//! [`Action`]s for the shell to carry out in order; no I/O, no clock, no tokio. The agent feeds
//! it probe results, the core's transitions, peers' database reports and the outcomes of the
//! database tasks; the simulator (`crate::sim::db`) feeds it the same events from a model of
//! replication, so the seeds check the code the agent runs.
//!
//! States (`docs/mysql.md`, *The gate's states*): [`Phase::Idle`] — nothing running; the
//! database is read_only unless this node was promoted; [`Phase::Fencing`] — read_only ON
//! running, for a release (its final position completes the release) or for a writable
//! database this node does not own; [`Phase::Promoting`] — catching up and read_only OFF for a
//! term won; [`Phase::Promoted`] — writable by right, the VIP follows. Beside the phase: a
//! rejoin running or waiting to retry, a fault keeping the node out for a while, a divergence
//! finding (persisted), the old primary's final position from its release, and the kill of the
//! fenced database's clients, due `kill_grace` after the fence.

use super::DbReport;
use crate::config::MysqlMode;
use crate::core::{FinalData, Instant, NodeIdx, RoleKind, Term};
use crate::mysql::DbStatus;
use crate::mysql::dialect::code;
use std::time::Duration;

/// After a failed promotion the node stays ineligible this long (or one lease, if longer).
pub const PROMOTE_FAULT_BACKOFF: Duration = Duration::from_secs(10);
/// After a failed rejoin attempt, the next one waits this long.
pub const REJOIN_RETRY: Duration = Duration::from_secs(5);

/// What the gate is told once, and again after a reload.
#[derive(Clone, Debug)]
pub struct Settings {
    pub mode: MysqlMode,
    pub me: NodeIdx,
    /// Each node's database address, as a replica of it names its source.
    pub sources: Vec<String>,
    /// A replication account is configured: a fenced database can re-point itself.
    pub replication: bool,
    pub lease: Duration,
    /// How long a release's fence must find the server not running before it counts as
    /// down for good (every peer's next check is reported by then).
    pub fence_settle: Duration,
    /// Bound on fencing a writable database this node does not own.
    pub fence_budget: Duration,
    pub kill_grace: Duration,
}

/// The ownership core as the gate needs to know it, after each of its steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreView {
    pub role: RoleKind,
    pub term: Term,
    /// The owner this node knows of right now.
    pub owner: Option<NodeIdx>,
    /// The term of the lease this node acknowledges, if any.
    pub grant_term: Option<Term>,
    /// The owner of the newest term seen (`gate::Owners::last_owner`).
    pub last_owner: Option<NodeIdx>,
}

/// Why a fence did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceFailure {
    /// The server was found not running for `fence_settle`: it takes no writes.
    NotRunning,
    Failed,
}

/// What a rejoin attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejoined {
    Replicating,
    /// This database holds transactions the owner lacks (the message says which).
    Diverged(String),
    /// It could not re-point (the owner unreachable, say): try again later.
    Failed,
}

#[derive(Clone, Debug)]
pub enum Event {
    /// A new probe result for the local database.
    Probed(DbStatus),
    /// The core's state after a step.
    Core(CoreView),
    /// A peer's database report, and the position its heartbeats advertise.
    Peer {
        from: NodeIdx,
        report: DbReport,
        position: u64,
    },
    /// This node won `term`; `takeover`: from whom, if it was an automatic failover.
    Acquired {
        term: Term,
        takeover: Option<(Term, NodeIdx)>,
    },
    /// This node releases `term`, and must be fenced before `by` (the lease end).
    Releasing {
        term: Term,
        by: Instant,
    },
    /// A peer released `term` with its database fenced at this final position.
    HandedOver {
        position: u64,
        gtid: String,
    },
    Promoted {
        term: Term,
        result: Result<(), String>,
    },
    /// `release`: the term whose release the fence was for, `None` for an unowned database.
    Fenced {
        release: Option<Term>,
        result: Result<(u64, String), FenceFailure>,
    },
    Rejoined {
        term: Term,
        result: Rejoined,
    },
    /// Time passed (deliver at [`Gate::next_deadline`]).
    Tick,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// read_only ON before `by`, after any change queued before it. A promotion in progress
    /// is cancelled first.
    Fence {
        release: Option<Term>,
        by: Instant,
        settle: Duration,
    },
    CancelPromotion,
    /// Catch up (to `wait_for`, the old primary's final position, on a planned hand-over),
    /// then read_only OFF. A rejoin still waiting is cancelled first.
    Promote {
        term: Term,
        wait_for: Option<(u64, String)>,
    },
    CancelRejoin,
    /// Replicate from `owner` (the owner of `term`) unless this database diverged from it.
    Rejoin {
        term: Term,
        owner: NodeIdx,
        gtid: String,
    },
    /// The clients of the database fenced for the release of `term` are cut off.
    KillClients {
        term: Term,
    },
    /// The database of `term` is writable by right: the VIP may be served.
    Serve {
        term: Term,
    },
    /// An automatic failover from `from` completed in `term`: the anti-flap window opens.
    OpenWindow {
        term: Term,
        from: NodeIdx,
    },
    /// Persist the divergence finding (`None`: it ended) before anything else.
    PersistDiverged(Option<String>),
    Hook {
        event: &'static str,
        term: Option<Term>,
        detail: Option<String>,
    },
    /// The node's eligibility or position may have changed: tell the core.
    Reconsider,
    /// The database side of the release of `term` is done.
    ReleaseFenced {
        term: Term,
        final_data: FinalData,
    },
}

/// Where the database stands in the ordered moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Idle,
    Fencing { release: Option<Term> },
    Promoting(Term),
    Promoted(Term),
}

#[derive(Clone, Debug)]
pub struct Gate {
    settings: Settings,
    core: CoreView,
    db: Option<DbStatus>,
    was_healthy: Option<bool>,
    peers: Vec<Option<(Instant, DbReport)>>,
    positions: Vec<u64>,
    phase: Phase,
    /// A rejoined database must reach the owner's position at the rejoin before it may own:
    /// until then it lacks transactions the owner had (acknowledged ones among them). The
    /// target of a rejoin running, then of the one done.
    rejoin_target: u64,
    catch_up: Option<u64>,
    /// A rejoin is running (its term), and when the next may start.
    rejoining: Option<Term>,
    rejoin_at: Instant,
    fault: Option<(String, Instant)>,
    diverged: Option<(Term, String)>,
    handover: Option<(u64, String, Instant)>,
    takeover: Option<(Term, NodeIdx)>,
    /// The final position of the release fenced last, until the release completes.
    final_position: Option<(Term, u64)>,
    kill_at: Option<(Term, Instant)>,
    /// Checks in a row that found the owner's promoted database read_only again.
    read_only_checks: u8,
}

impl Gate {
    /// `diverged`: a finding persisted by an earlier run.
    pub fn new(settings: Settings, diverged: Option<String>, now: Instant) -> Gate {
        let nodes = settings.sources.len();
        Gate {
            settings,
            core: CoreView {
                role: RoleKind::Follower,
                term: 0,
                owner: None,
                grant_term: None,
                last_owner: None,
            },
            db: None,
            was_healthy: None,
            peers: vec![None; nodes],
            positions: vec![0; nodes],
            phase: Phase::Idle,
            rejoin_target: 0,
            catch_up: None,
            rejoining: None,
            rejoin_at: now,
            fault: None,
            diverged: diverged.map(|d| (0, d)),
            handover: None,
            takeover: None,
            final_position: None,
            kill_at: None,
            read_only_checks: 0,
        }
    }

    pub fn configure(&mut self, settings: Settings) {
        self.settings = settings;
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn db(&self) -> Option<&DbStatus> {
        self.db.as_ref()
    }

    pub fn peer(&self, node: NodeIdx) -> Option<&(Instant, DbReport)> {
        self.peers.get(usize::from(node))?.as_ref()
    }

    /// A database fault that still keeps the node out.
    pub fn fault(&self, now: Instant) -> Option<&str> {
        self.fault
            .as_ref()
            .filter(|(_, until)| now < *until)
            .map(|(e, _)| e.as_str())
    }

    /// The position a rejoined database must reach before it may own, while it has not.
    pub fn catching_up(&self) -> Option<u64> {
        self.catch_up
    }

    pub fn diverged(&self) -> Option<&str> {
        self.diverged.as_ref().map(|(_, d)| d.as_str())
    }

    /// Whether the VIP of `term` may be served: outside promote mode at once, in it once the
    /// database of that term is promoted.
    pub fn serves(&self, term: Term) -> bool {
        self.settings.mode != MysqlMode::Promote || self.phase == Phase::Promoted(term)
    }

    /// The position to rank this node by: the fenced final one during a release.
    pub fn position(&self) -> u64 {
        match self.final_position {
            Some((_, p)) => p,
            None => self.db.as_ref().map_or(0, |db| db.position),
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.kill_at.map(|(_, at)| at)
    }

    fn promote_mode(&self) -> bool {
        self.settings.mode == MysqlMode::Promote
    }

    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Probed(status) => self.on_probe(now, status, &mut out),
            Event::Core(view) => {
                self.core = view;
                if view.role != RoleKind::Releasing {
                    self.final_position = None;
                }
            }
            Event::Peer {
                from,
                report,
                position,
            } => {
                if let Some(slot) = self.peers.get_mut(usize::from(from)) {
                    *slot = Some((now, report));
                    self.positions[usize::from(from)] = position;
                }
            }
            Event::Acquired { term, takeover } => self.on_acquired(now, term, takeover, &mut out),
            Event::Releasing { term, by } => self.on_releasing(term, by, &mut out),
            Event::HandedOver { position, gtid } => self.handover = Some((position, gtid, now)),
            Event::Promoted { term, result } => self.on_promoted(now, term, result, &mut out),
            Event::Fenced { release, result } => self.on_fenced(now, release, result, &mut out),
            Event::Rejoined { term, result } => self.on_rejoined(now, term, result, &mut out),
            Event::Tick => self.on_tick(now, &mut out),
        }
        out
    }

    fn on_probe(&mut self, now: Instant, status: DbStatus, out: &mut Vec<Action>) {
        // The first result counts as a change only when healthy (nothing was wrong before).
        if self
            .was_healthy
            .map_or(status.healthy, |was| was != status.healthy)
        {
            let event = if status.healthy {
                "db_healthy"
            } else {
                "db_unhealthy"
            };
            out.push(hook(event, Some(self.core.term), status.problem.clone()));
        }
        self.was_healthy = Some(status.healthy);
        if self.catch_up.is_some_and(|target| status.position >= target) {
            self.catch_up = None;
        }
        self.db = Some(status);
        if self.fault.as_ref().is_some_and(|(_, until)| now >= *until) {
            self.fault = None;
        }
        self.check_still_writable(now, out);
        if !self.promote_mode() || self.phase != Phase::Idle && !matches!(self.phase, Phase::Promoted(_)) {
            return;
        }
        if self.core.role == RoleKind::Releasing {
            return;
        }
        self.watch_divergence(out);
        if self.writable_unowned() {
            self.phase = Phase::Fencing { release: None };
            out.push(Action::Fence {
                release: None,
                by: now + self.settings.fence_budget,
                settle: self.settings.fence_settle,
            });
            return;
        }
        self.maybe_rejoin(now, out);
    }

    /// The owner's promoted database found read_only again (its mysqld restarted, or someone
    /// set it): it takes no writes, yet the node holds the VIP and would never move it. Two
    /// checks in a row (the first may have been made before the promotion ended) make it a
    /// fault: the node releases, and a caught-up replica takes over.
    fn check_still_writable(&mut self, now: Instant, out: &mut Vec<Action>) {
        let owns = matches!(self.phase, Phase::Promoted(_)) && self.core.role == RoleKind::Owner;
        let read_only = (self.db.as_ref()).is_some_and(|db| db.healthy && db.read_only == Some(true));
        if !(owns && read_only) {
            self.read_only_checks = 0;
            return;
        }
        self.read_only_checks = self.read_only_checks.saturating_add(1);
        if self.read_only_checks >= 2 && self.fault.is_none() {
            let backoff = PROMOTE_FAULT_BACKOFF.max(self.settings.lease);
            let why = "the owner's database turned read_only (mysqld restarted, or set by hand): it \
                       takes no writes, so this node releases to a caught-up replica";
            self.fault = Some((why.into(), now + backoff));
            out.push(Action::Reconsider);
        }
    }

    /// Seen writable by the last check (a failed check keeps the last value it saw, which
    /// says nothing about a server that is gone), and not this node's by right.
    fn writable_unowned(&self) -> bool {
        let writable = self
            .db
            .as_ref()
            .is_some_and(|db| db.read_only == Some(false) && db.problem.is_none());
        let owns = matches!(self.phase, Phase::Promoted(_)) && self.core.role == RoleKind::Owner;
        writable && !owns
    }

    /// Divergence the replication threads reveal on their own (the source refusing this
    /// database's position, error 1236), and its end: replicating cleanly from the last owner,
    /// e.g. after an operator repaired it.
    fn watch_divergence(&mut self, out: &mut Vec<Action>) {
        let Some(r) = self.db.as_ref().and_then(|db| db.replication.as_ref()) else {
            return;
        };
        let owner = self.core.last_owner.filter(|o| *o != self.settings.me);
        let from_owner = owner.is_some_and(|o| self.settings.sources.get(usize::from(o)) == Some(&r.source));
        if r.io_errno == Some(code::SOURCE_REFUSES_POSITION) && self.diverged.is_none() {
            let message = format!(
                "the source {} refuses this database's position ({}); manual action needed",
                r.source,
                r.last_error.clone().unwrap_or_default()
            );
            self.set_diverged(self.core.term, Some(message), out);
        } else if self.diverged.is_some()
            && from_owner
            && r.io_running
            && r.sql_running
            && r.io_errno.is_none()
        {
            self.set_diverged(self.core.term, None, out);
        }
    }

    fn set_diverged(&mut self, term: Term, why: Option<String>, out: &mut Vec<Action>) {
        out.push(Action::PersistDiverged(why.clone()));
        if let Some(w) = &why {
            out.push(hook("diverged", Some(term), Some(w.clone())));
            out.push(Action::Reconsider);
        }
        self.diverged = why.map(|w| (term, w));
    }

    /// A fenced database that does not replicate from the current owner re-points itself
    /// there — unless it has diverged (then it stays out, and says so).
    fn maybe_rejoin(&mut self, now: Instant, out: &mut Vec<Action>) {
        if !self.settings.replication || self.rejoining.is_some() || now < self.rejoin_at {
            return;
        }
        if self.core.role != RoleKind::Follower {
            return;
        }
        let Some(owner) = self.core.owner.filter(|o| *o != self.settings.me) else {
            return;
        };
        let term = self.core.grant_term.unwrap_or(self.core.term);
        if self.diverged.as_ref().is_some_and(|(t, _)| *t == term) {
            return;
        }
        let Some((at, report)) = self.peer(owner) else {
            return;
        };
        let fresh = now.saturating_since(*at) < self.settings.lease * 3;
        if !(fresh && report.healthy && report.writable) {
            return;
        }
        let gtid = report.gtid.clone();
        let Some(db) = &self.db else { return };
        if !db.healthy || db.read_only != Some(true) {
            return;
        }
        // Already pointed at the owner: its threads are its own business (a stopped thread
        // shows in status and in eligibility); re-pointing would only interrupt it.
        let source = &self.settings.sources[usize::from(owner)];
        if db.replication.as_ref().is_some_and(|r| &r.source == source) {
            return;
        }
        self.rejoining = Some(term);
        self.rejoin_target = self.positions[usize::from(owner)];
        out.push(Action::Rejoin { term, owner, gtid });
    }

    fn on_acquired(
        &mut self,
        now: Instant,
        term: Term,
        takeover: Option<(Term, NodeIdx)>,
        out: &mut Vec<Action>,
    ) {
        if !self.promote_mode() {
            out.push(hook("owner", Some(term), None));
            out.push(Action::Serve { term });
            return;
        }
        if self.rejoining.take().is_some() {
            // A rejoin still waiting for its source must not hold the promotion up.
            out.push(Action::CancelRejoin);
        }
        self.takeover = takeover;
        self.catch_up = None;
        self.phase = Phase::Promoting(term);
        // Handed over a moment ago: wait for everything the old primary wrote.
        let wait_for = self
            .handover
            .take()
            .filter(|(_, _, at)| now.saturating_since(*at) < self.settings.lease * 2)
            .map(|(p, gtid, _)| (p, gtid));
        out.push(Action::Promote { term, wait_for });
    }

    fn on_releasing(&mut self, term: Term, by: Instant, out: &mut Vec<Action>) {
        if !self.promote_mode() {
            out.push(Action::ReleaseFenced {
                term,
                final_data: FinalData::NotConsulted,
            });
            return;
        }
        if matches!(self.phase, Phase::Promoting(_)) {
            out.push(Action::CancelPromotion);
        }
        self.phase = Phase::Fencing { release: Some(term) };
        out.push(Action::Fence {
            release: Some(term),
            by,
            settle: self.settings.fence_settle,
        });
    }

    fn on_promoted(&mut self, now: Instant, term: Term, result: Result<(), String>, out: &mut Vec<Action>) {
        if self.phase != Phase::Promoting(term) {
            // Ownership of `term` ended while promoting. If the database was made writable
            // anyway, the next check sees it and fences it.
            return;
        }
        match result {
            Ok(()) => {
                self.phase = Phase::Promoted(term);
                out.push(hook("owner", Some(term), None));
                if let Some((t, from)) = self.takeover.take().filter(|(t, _)| *t == term) {
                    out.push(Action::OpenWindow { term: t, from });
                }
                out.push(Action::Serve { term });
            }
            Err(e) => {
                self.phase = Phase::Idle;
                let backoff = PROMOTE_FAULT_BACKOFF.max(self.settings.lease);
                self.fault = Some((format!("promotion failed: {e}"), now + backoff));
                out.push(Action::Reconsider);
            }
        }
    }

    fn on_fenced(
        &mut self,
        now: Instant,
        release: Option<Term>,
        result: Result<(u64, String), FenceFailure>,
        out: &mut Vec<Action>,
    ) {
        if self.phase == (Phase::Fencing { release }) {
            self.phase = Phase::Idle;
        }
        if result.is_ok() {
            out.push(hook("fence", release.or(Some(self.core.term)), None));
        }
        let Some(term) = release else { return };
        match result {
            Ok((position, gtid)) => {
                self.kill_at = Some((term, now + self.settings.kill_grace));
                if self.core.role == RoleKind::Releasing {
                    self.final_position = Some((term, position));
                }
                // The release announces this final position to the successor.
                out.push(Action::Reconsider);
                out.push(Action::ReleaseFenced {
                    term,
                    final_data: FinalData::Fenced { position, gtid },
                });
            }
            Err(FenceFailure::NotRunning) => out.push(Action::ReleaseFenced {
                term,
                final_data: FinalData::Unknown,
            }),
            // The lease runs out instead.
            Err(FenceFailure::Failed) => {}
        }
    }

    fn on_rejoined(&mut self, now: Instant, term: Term, result: Rejoined, out: &mut Vec<Action>) {
        if self.rejoining == Some(term) {
            self.rejoining = None;
        }
        match result {
            Rejoined::Replicating => {
                let mine = self.db.as_ref().map_or(0, |db| db.position);
                self.catch_up = (self.rejoin_target > mine).then_some(self.rejoin_target);
                if self.diverged.is_some() {
                    self.set_diverged(term, None, out);
                }
            }
            Rejoined::Diverged(message) => self.set_diverged(term, Some(message), out),
            Rejoined::Failed => self.rejoin_at = now + REJOIN_RETRY,
        }
    }

    /// The grace after a fence is over: kill, unless this node owns again.
    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some((term, at)) = self.kill_at else { return };
        if now < at {
            return;
        }
        self.kill_at = None;
        if !matches!(self.phase, Phase::Promoting(_) | Phase::Promoted(_)) {
            out.push(Action::KillClients { term });
        }
    }
}

fn hook(event: &'static str, term: Option<Term>, detail: Option<String>) -> Action {
    Action::Hook { event, term, detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mysql::probe::Replication;

    const ME: NodeIdx = 1;
    const OWNER: NodeIdx = 0;
    const LEASE: Duration = Duration::from_secs(1);

    fn at(ms: u64) -> Instant {
        Instant::from_micros(ms * 1000)
    }

    fn gate(mode: MysqlMode) -> Gate {
        let settings = Settings {
            mode,
            me: ME,
            sources: vec!["192.0.2.11".into(), "192.0.2.12".into(), "192.0.2.13".into()],
            replication: true,
            lease: LEASE,
            fence_settle: Duration::from_millis(1200),
            fence_budget: Duration::from_secs(1),
            kill_grace: Duration::from_millis(500),
        };
        Gate::new(settings, None, at(0))
    }

    fn view(role: RoleKind, term: Term, owner: Option<NodeIdx>) -> Event {
        Event::Core(CoreView {
            role,
            term,
            owner,
            grant_term: owner.filter(|o| *o != ME).map(|_| term),
            last_owner: owner,
        })
    }

    fn db(read_only: bool, source: Option<&str>) -> DbStatus {
        DbStatus {
            healthy: true,
            read_only: Some(read_only),
            position: 10,
            replication: source.map(|s| Replication {
                source: s.into(),
                io_running: true,
                sql_running: true,
                ..Replication::default()
            }),
            ..DbStatus::default()
        }
    }

    fn owner_report() -> Event {
        Event::Peer {
            from: OWNER,
            position: 12,
            report: DbReport {
                healthy: true,
                writable: true,
                gtid: "0-1-12".into(),
                ..DbReport::default()
            },
        }
    }

    fn acquired(term: Term) -> Event {
        Event::Acquired { term, takeover: None }
    }

    fn promoted(term: Term) -> Event {
        Event::Promoted { term, result: Ok(()) }
    }

    fn releasing(term: Term, by: Instant) -> Event {
        Event::Releasing { term, by }
    }

    fn fenced(term: Term, result: Result<(u64, String), FenceFailure>) -> Event {
        Event::Fenced {
            release: Some(term),
            result,
        }
    }

    /// The moves, without the hooks that report them.
    fn moves(out: Vec<Action>) -> Vec<Action> {
        out.into_iter()
            .filter(|a| !matches!(a, Action::Hook { .. }))
            .collect()
    }

    fn fences(actions: &[Action]) -> bool {
        actions.iter().any(|a| matches!(a, Action::Fence { .. }))
    }

    #[test]
    fn a_won_term_is_served_only_once_its_database_is_promoted() {
        let mut g = gate(MysqlMode::Promote);
        g.handle(
            at(0),
            Event::HandedOver {
                position: 12,
                gtid: "0-1-12".into(),
            },
        );
        let out = g.handle(
            at(500),
            Event::Acquired {
                term: 3,
                takeover: Some((3, OWNER)),
            },
        );
        assert_eq!(
            out,
            [Action::Promote {
                term: 3,
                wait_for: Some((12, "0-1-12".into()))
            }],
            "a fresh hand-over is waited for"
        );
        assert!(!g.serves(3));
        let out = g.handle(at(600), promoted(3));
        assert!(out.contains(&Action::Serve { term: 3 }));
        assert!(out.contains(&Action::OpenWindow { term: 3, from: OWNER }));
        assert!(g.serves(3) && !g.serves(4));
    }

    #[test]
    fn a_stale_hand_over_is_not_waited_for_and_a_late_promotion_changes_nothing() {
        let mut g = gate(MysqlMode::Promote);
        g.handle(
            at(0),
            Event::HandedOver {
                position: 12,
                gtid: String::new(),
            },
        );
        let out = g.handle(at(2_500), acquired(3));
        assert_eq!(
            out,
            [Action::Promote {
                term: 3,
                wait_for: None
            }]
        );
        let out = g.handle(at(2_600), releasing(3, at(3_000)));
        assert_eq!(out[0], Action::CancelPromotion);
        assert!(fences(&out));
        assert!(
            g.handle(
                at(2_700),
                Event::Promoted {
                    term: 3,
                    result: Ok(())
                }
            )
            .is_empty()
        );
        assert!(!g.serves(3));
    }

    #[test]
    fn a_failed_promotion_keeps_the_node_out_for_the_back_off() {
        let mut g = gate(MysqlMode::Promote);
        g.handle(at(0), acquired(2));
        let out = g.handle(
            at(100),
            Event::Promoted {
                term: 2,
                result: Err("vetoed".into()),
            },
        );
        assert_eq!(out, [Action::Reconsider]);
        assert!(g.fault(at(100)).is_some_and(|f| f.contains("vetoed")));
        assert!(g.fault(at(100) + PROMOTE_FAULT_BACKOFF).is_none());
        assert_eq!(g.phase(), Phase::Idle);
    }

    #[test]
    fn an_owners_database_found_read_only_again_is_a_fault_that_releases_it() {
        let mut g = gate(MysqlMode::Promote);
        g.handle(at(0), view(RoleKind::Owner, 2, Some(ME)));
        g.handle(at(0), acquired(2));
        g.handle(at(10), promoted(2));
        // A check made before the promotion ended may still say read_only: one is no fault.
        assert!(moves(g.handle(at(20), Event::Probed(db(true, None)))).is_empty());
        assert!(g.fault(at(20)).is_none());
        g.handle(at(30), Event::Probed(db(false, None)));
        assert!(moves(g.handle(at(40), Event::Probed(db(true, None)))).is_empty());
        assert_eq!(
            g.handle(at(50), Event::Probed(db(true, None))),
            [Action::Reconsider]
        );
        assert!(g.fault(at(50)).is_some_and(|f| f.contains("read_only")));
        assert!(
            g.handle(at(60), Event::Probed(db(true, None))).is_empty(),
            "reported once"
        );
        // Not the owner's: a read_only database is what a follower's should be.
        let mut g = gate(MysqlMode::Promote);
        g.handle(at(0), view(RoleKind::Follower, 2, Some(OWNER)));
        g.handle(at(0), Event::Probed(db(true, None)));
        g.handle(at(10), Event::Probed(db(true, None)));
        assert!(g.fault(at(10)).is_none());
    }

    #[test]
    fn a_release_completes_with_the_fenced_position_and_its_clients_are_killed_after_the_grace() {
        let mut g = gate(MysqlMode::Promote);
        g.handle(at(0), acquired(2));
        g.handle(at(10), promoted(2));
        g.handle(at(20), view(RoleKind::Releasing, 2, None));
        let out = g.handle(at(20), releasing(2, at(1_000)));
        assert!(fences(&out) && !out.contains(&Action::CancelPromotion));
        assert!(!g.serves(2), "no VIP for a database being fenced");
        let out = g.handle(at(30), fenced(2, Ok((15, "0-1-15".into()))));
        assert!(out.contains(&Action::ReleaseFenced {
            term: 2,
            final_data: FinalData::Fenced {
                position: 15,
                gtid: "0-1-15".into()
            }
        }));
        assert_eq!(
            g.position(),
            15,
            "ranked by the final position during the release"
        );
        assert_eq!(g.next_deadline(), Some(at(530)));
        assert!(g.handle(at(529), Event::Tick).is_empty());
        assert_eq!(g.handle(at(530), Event::Tick), [Action::KillClients { term: 2 }]);
    }

    #[test]
    fn clients_are_not_killed_once_the_node_owns_again() {
        let mut g = gate(MysqlMode::Promote);
        g.handle(at(0), releasing(2, at(1_000)));
        g.handle(at(30), fenced(2, Ok((15, String::new()))));
        g.handle(at(100), acquired(4));
        assert!(g.handle(at(600), Event::Tick).is_empty());
    }

    #[test]
    fn a_database_not_running_releases_with_unknown_data_and_a_failed_fence_waits_for_the_lease() {
        let mut g = gate(MysqlMode::Promote);
        g.handle(at(0), releasing(2, at(1_000)));
        let out = g.handle(at(900), fenced(2, Err(FenceFailure::NotRunning)));
        assert_eq!(
            out,
            [Action::ReleaseFenced {
                term: 2,
                final_data: FinalData::Unknown
            }]
        );
        g.handle(at(1_000), releasing(3, at(2_000)));
        let out = g.handle(at(1_900), fenced(3, Err(FenceFailure::Failed)));
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_writable_database_this_node_does_not_own_is_fenced_once() {
        let mut g = gate(MysqlMode::Promote);
        g.handle(at(0), view(RoleKind::Follower, 2, Some(OWNER)));
        let out = g.handle(at(10), Event::Probed(db(false, None)));
        assert!(fences(&out), "{out:?}");
        assert!(
            !fences(&g.handle(at(20), Event::Probed(db(false, None)))),
            "one fence at a time"
        );
        g.handle(
            at(30),
            Event::Fenced {
                release: None,
                result: Ok((10, String::new())),
            },
        );
        assert!(fences(&g.handle(at(40), Event::Probed(db(false, None)))));
    }

    #[test]
    fn the_owners_promoted_database_is_not_fenced() {
        let mut g = gate(MysqlMode::Promote);
        g.handle(at(0), acquired(2));
        g.handle(at(10), promoted(2));
        g.handle(at(10), view(RoleKind::Owner, 2, Some(ME)));
        assert!(!fences(&g.handle(at(20), Event::Probed(db(false, None)))));
        // Gate mode never changes the database.
        let mut g = gate(MysqlMode::Gate);
        assert!(!fences(&g.handle(at(20), Event::Probed(db(false, None)))));
    }

    #[test]
    fn a_fenced_database_rejoins_the_owner_and_a_divergence_keeps_it_out() {
        let mut g = gate(MysqlMode::Promote);
        g.handle(at(0), view(RoleKind::Follower, 4, Some(OWNER)));
        g.handle(at(0), owner_report());
        let out = g.handle(at(10), Event::Probed(db(true, None)));
        assert_eq!(
            out.last(),
            Some(&Action::Rejoin {
                term: 4,
                owner: OWNER,
                gtid: "0-1-12".into()
            })
        );
        assert!(
            g.handle(at(20), Event::Probed(db(true, None))).is_empty(),
            "one at a time"
        );
        let out = g.handle(
            at(30),
            Event::Rejoined {
                term: 4,
                result: Rejoined::Diverged("2 extra".into()),
            },
        );
        assert_eq!(out[0], Action::PersistDiverged(Some("2 extra".into())));
        assert!(out.contains(&Action::Reconsider));
        assert!(g.diverged().is_some());
        assert!(
            g.handle(at(40), Event::Probed(db(true, None))).is_empty(),
            "no rejoin in that term"
        );
    }

    #[test]
    fn a_failed_rejoin_is_retried_later_and_one_already_replicating_is_left_alone() {
        let mut g = gate(MysqlMode::Promote);
        g.handle(at(0), view(RoleKind::Follower, 4, Some(OWNER)));
        g.handle(at(0), owner_report());
        g.handle(at(10), Event::Probed(db(true, None)));
        g.handle(
            at(20),
            Event::Rejoined {
                term: 4,
                result: Rejoined::Failed,
            },
        );
        assert!(g.handle(at(30), Event::Probed(db(true, None))).is_empty());
        g.handle(at(5_000), owner_report());
        let out = g.handle(at(5_020), Event::Probed(db(true, None)));
        assert!(matches!(out.last(), Some(Action::Rejoin { .. })), "{out:?}");
        let mut g = gate(MysqlMode::Promote);
        g.handle(at(0), view(RoleKind::Follower, 4, Some(OWNER)));
        g.handle(at(0), owner_report());
        assert!(moves(g.handle(at(10), Event::Probed(db(true, Some("192.0.2.11"))))).is_empty());
        // A stale owner report is no reason to move.
        let mut g = gate(MysqlMode::Promote);
        g.handle(at(0), view(RoleKind::Follower, 4, Some(OWNER)));
        g.handle(at(0), owner_report());
        assert!(moves(g.handle(at(3_000), Event::Probed(db(true, None)))).is_empty());
    }

    #[test]
    fn a_source_refusing_the_position_is_a_divergence_until_replication_runs_cleanly() {
        let mut g = gate(MysqlMode::Promote);
        g.handle(at(0), view(RoleKind::Follower, 4, Some(OWNER)));
        let mut refused = db(true, Some("192.0.2.11"));
        if let Some(r) = &mut refused.replication {
            r.io_running = false;
            r.io_errno = Some(code::SOURCE_REFUSES_POSITION);
        }
        let out = moves(g.handle(at(10), Event::Probed(refused)));
        assert!(matches!(&out[0], Action::PersistDiverged(Some(w)) if w.contains("192.0.2.11")));
        let out = g.handle(at(20), Event::Probed(db(true, Some("192.0.2.11"))));
        assert_eq!(out, [Action::PersistDiverged(None)]);
        assert!(g.diverged().is_none());
    }

    #[test]
    fn gate_mode_serves_at_once_and_releases_without_the_database() {
        let mut g = gate(MysqlMode::Gate);
        let out = g.handle(at(0), acquired(2));
        assert!(out.contains(&Action::Serve { term: 2 }));
        let out = g.handle(at(10), releasing(2, at(1_000)));
        assert_eq!(
            out,
            [Action::ReleaseFenced {
                term: 2,
                final_data: FinalData::NotConsulted
            }]
        );
    }

    #[test]
    fn health_hooks_fire_on_changes_only() {
        let mut g = gate(MysqlMode::Gate);
        let hooks = |out: Vec<Action>| -> Vec<&'static str> {
            out.iter()
                .filter_map(|a| match a {
                    Action::Hook { event, .. } => Some(*event),
                    _ => None,
                })
                .collect()
        };
        let down = DbStatus {
            healthy: false,
            ..DbStatus::default()
        };
        assert!(hooks(g.handle(at(0), Event::Probed(down.clone()))).is_empty());
        assert_eq!(
            hooks(g.handle(at(1), Event::Probed(db(true, None)))),
            ["db_healthy"]
        );
        assert!(hooks(g.handle(at(2), Event::Probed(db(true, None)))).is_empty());
        assert_eq!(hooks(g.handle(at(3), Event::Probed(down))), ["db_unhealthy"]);
    }
}
