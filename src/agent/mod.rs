//! The agent: the one place where the ownership core meets the world.
//!
//! A single tokio task owns the [`Core`] and feeds it events — datagrams, timer ticks at
//! `next_deadline`, reports from effects, signals — then carries out the actions it returns, in
//! order: `Persist` is written with fsync before anything after it is sent; `Acquire`,
//! `Renewed` and `Release` become commands to the VIP task, which reports back. Effects run as
//! their own tasks with their own deadlines, so a hung effect never stops heartbeats, and the
//! VIP task removes the VIP at the lease end even if this loop stalls (the kernel lifetime on
//! the address covers a frozen process).

mod database;
mod dns_push;
mod failover_block;
mod hooks;
mod reload;
mod service;
mod start;
pub mod state;
#[cfg(test)]
mod tests;

use crate::clock;
use crate::config::{Config, Mysql, Secret};
use crate::control::{self, DnsStatus, Request};
use crate::core::{Action, Core, Event, FinalData, Instant, Message, NodeIdx, RoleKind, Term, Vote};
use crate::gate::DbReport;
use crate::mysql::DbStatus;
use crate::net::{Datagram, Transport};
use crate::vip::{self, Command, Report};
use state::StateFile;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

/// A release in progress: done when the VIP is gone and the gate has finished the database's
/// part (fenced, found not running, or not consulted).
struct PendingRelease {
    term: Term,
    vip_done: bool,
    /// What the release announces of the database (`gate::Action::ReleaseFenced`).
    final_data: Option<FinalData>,
}

/// Database reports go out on change, and at least this often.
const DB_REPORT_EVERY: Duration = Duration::from_secs(1);

/// What peers are told about a database status.
/// `follows_owner`, `database_eligible`: what the gate says of this node's database.
fn db_report(
    db: &DbStatus,
    failover_block: Duration,
    (follows_owner, database_eligible): (bool, bool),
) -> DbReport {
    let replicating = db
        .replication
        .as_ref()
        .is_some_and(|r| r.io_running && r.sql_running);
    DbReport {
        healthy: db.healthy,
        writable: db.read_only == Some(false),
        replicating,
        lag_s: db.lag_s.map(|s| u32::try_from(s).unwrap_or(u32::MAX)),
        follows_owner,
        database_eligible,
        failover_block_ms: u32::try_from(failover_block.as_millis()).unwrap_or(u32::MAX),
        gtid: crate::net::wire::cut_gtid(db.gtid.as_deref().unwrap_or_default()).into_owned(),
    }
}

/// After a VIP could not be added, the node stays ineligible this long before trying again.
const VIP_FAULT_BACKOFF: Duration = Duration::from_secs(5);

/// Runs the agent for node `me` until SIGTERM or SIGINT. Blocks the calling thread.
pub fn run(config: Config, me: NodeIdx) -> Result<(), String> {
    // The loop runs on this thread; effects (the VIP task, netlink, announcements) run on
    // worker threads, so that the fsync the loop waits for never delays the VIP's deadline.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Netlink requests run on blocking threads: bounded well inside the unit's TasksMax.
        .max_blocking_threads(64)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let mut agent = Agent::start(config, me).await?;
        let result = agent.run().await;
        // Whatever ended the loop, no VIP stays behind, and after an error no writable
        // database either (a graceful stop's release fenced it already).
        let removed = agent.remove_vips().await;
        if result.is_err() {
            database::fence_at_error_exit(&agent.config, agent.me).await;
        }
        result.and(removed)
    })
}

/// Whether the effective capability set holds capability number `cap`.
pub fn has_capability(cap: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << cap) != 0)
}

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_NET_RAW: u32 = 13;

struct Agent {
    config: Config,
    me: NodeIdx,
    ids: Vec<String>,
    core: Core,
    state: StateFile,
    started: Instant,
    /// The socket, the codec and receive filter, counters and round trips.
    net: Transport,
    /// Votes granted and leases acknowledged, and how long after start the first one was.
    grants_sent: u64,
    first_grant: Option<Duration>,
    /// The VIP task (none without VIPs, and on witnesses), and what it reports.
    vips: Option<vip::Vips>,
    vip_reports: mpsc::UnboundedReceiver<Report>,
    /// Why the VIP interfaces cannot carry the VIP, if they cannot.
    links_down: Option<String>,
    /// A failed VIP add, and until when it keeps this node ineligible.
    vip_fault: Option<(String, Instant)>,
    control: mpsc::Receiver<Request>,
    /// Set once a stop was requested: exit when ownership is handed over, or at this deadline.
    stopping: Option<Instant>,
    /// `vipgate maintenance on`: never eligible (persisted).
    maintenance: bool,
    /// The number of the last `Drop` sent to the VIP task and its deadline: only its
    /// confirmation completes the release.
    drop_seq: u64,
    release_by: Option<Instant>,
    pending_release: Option<PendingRelease>,
    /// The lease this node holds as owner (term, end), as the core last granted it.
    lease: Option<(Term, Instant)>,
    /// The database policy (promote, fence, rejoin, divergence), pure; this agent carries out
    /// what it decides.
    gate: crate::gate::Gate,
    mysql: Option<(Mysql, Option<Secret>)>,
    /// Promote mode: the queue of database changes, run one at a time.
    db_jobs: Option<mpsc::UnboundedSender<database::Job>>,
    promotion_cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Promote mode: cancels the rejoin attempt running, if any.
    rejoin_cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Who owned last (`gate::owners`): the owner of the newest term seen, the newest lease
    /// actually held (whom a new owner takes over from; persisted), and the highest position a
    /// writable peer reported in this run.
    owners: crate::gate::Owners,
    /// Promote mode: no automatic takeover before this wall-clock time (Unix ms; persisted).
    failover_block_until: Option<u64>,
    /// Ownership transitions by reason, for metrics.
    transitions: BTreeMap<String, u64>,
    /// How long the last promotion and the last fence took (ms), and when the running ones began.
    step_ms: BTreeMap<String, u64>,
    step_started: BTreeMap<&'static str, Instant>,
    /// The hook runner, and its runs by event and result.
    hooks: mpsc::UnboundedSender<hooks::Event>,
    hook_runs: hooks::Counts,
    /// (blocked, preferred) as last given to the core.
    sent_flags: (bool, bool),
    /// systemd readiness and watchdog.
    service: service::Service,
    /// `vipgate failover-ack` let this node take over from another region's owner of this term.
    region_override: Option<Term>,
    /// `vipgate failover-ack` let this node stand although a peer replica that is down had
    /// received more, for the last owner of this term.
    behind_override: Option<Term>,
    db_outcomes_tx: mpsc::UnboundedSender<database::Outcome>,
    db_outcomes: mpsc::UnboundedReceiver<database::Outcome>,
    /// The local database's latest health check, if the database gates this node.
    db: Option<watch::Receiver<DbStatus>>,
    /// The last database report sent.
    last_report: Option<(Instant, DbReport)>,
    /// `[dns.update]`: the pusher, the term of the running (or finished) push and its cancel
    /// flag, and the latest result for status.
    dns_push: Option<Arc<crate::dns::update::Updater>>,
    push_term: Option<(Term, Arc<std::sync::atomic::AtomicBool>)>,
    push_status: Arc<Mutex<Option<String>>>,
    /// The name server's view of ownership, and its answer counts, if this node serves DNS.
    dns_view: Option<watch::Sender<crate::dns::View>>,
    /// The zone the name server answers from (a reload replaces it).
    dns_zone: Option<watch::Sender<Arc<crate::dns::zone::Zone>>>,
    /// The probe's settings (a reload changes its thresholds).
    db_settings: Option<watch::Sender<Mysql>>,
    dns_counters: Option<Arc<crate::dns::Counters>>,
}

/// What `Agent::start` set running, for `Agent::assemble`.
struct Effects {
    net: Transport,
    bind: SocketAddr,
    vips: Option<vip::Vips>,
    vip_reports: mpsc::UnboundedReceiver<Report>,
    database: start::Database,
    db_outcomes: (
        mpsc::UnboundedSender<database::Outcome>,
        mpsc::UnboundedReceiver<database::Outcome>,
    ),
    dns: start::DnsParts,
    dns_push: Option<Arc<crate::dns::update::Updater>>,
    control: mpsc::Receiver<Request>,
}

/// Resolves when the database status changes; never if there is no database gate.
async fn db_changed(db: &mut Option<watch::Receiver<DbStatus>>) -> Result<(), watch::error::RecvError> {
    match db {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

impl Agent {
    async fn start(config: Config, me: NodeIdx) -> Result<Agent, String> {
        start::check_capabilities(&config)?;
        start::check_descriptors(&config, me);
        let secrets = start::Secrets::read(&config, me)?;
        let ids: Vec<String> = config.nodes.iter().map(|n| n.id.clone()).collect();
        let mut state = StateFile::open(&config.cluster.state_dir, ids).map_err(|e| e.to_string())?;
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let boot = state.next_boot(unix).map_err(|e| e.to_string())?;
        let (socket, bind) = start::bind(&config, me).await?;
        // Before anything else this run does — but only once the bind proved that this is the
        // one agent of this node, on its host.
        database::fence_at_start(&config, me).await?;
        let net = start::transport(
            &config,
            me,
            &secrets,
            crate::net::transport::Socket::Udp(socket),
            boot,
        );
        let (vips, vip_reports) = start::vips(&config, me).await?;
        let (db_outcomes_tx, db_outcomes) = mpsc::unbounded_channel();
        let database = start::database(&config, me, &secrets, &db_outcomes_tx);
        let dns = start::dns(&config, me).await?;
        let dns_push = start::dns_push(&config, me, &secrets)?;
        let (control_tx, control) = mpsc::channel(16);
        if let Some(addr) = config.control.http {
            control::http::serve(addr, control_tx.clone()).await?;
        }
        let status_group = config.control.status_group.as_ref().map(|(_, gid)| *gid);
        control::serve(&config.control.socket, status_group, control_tx)?;
        let effects = Effects {
            net,
            bind,
            vips,
            vip_reports,
            database,
            db_outcomes: (db_outcomes_tx, db_outcomes),
            dns,
            dns_push,
            control,
        };
        Ok(Agent::assemble(config, me, state, effects))
    }

    /// The agent in its first state, over effects that are running.
    fn assemble(config: Config, me: NodeIdx, state: StateFile, e: Effects) -> Agent {
        let now = clock::now();
        let ids: Vec<String> = config.nodes.iter().map(|n| n.id.clone()).collect();
        let gate = crate::gate::Gate::new(
            config.gate_settings(me),
            state.diverged().map(str::to_string),
            now,
        );
        let boot = e.net.boot();
        let seed = boot ^ u64::from(std::process::id()).rotate_left(32) ^ now.as_micros();
        let core = Core::new(config.core_settings(me, seed), state.persistent(), now);
        tracing::info!(
            node = %config.nodes[usize::from(me)].id,
            boot,
            term = core.term(),
            listen = %e.bind,
            "agent started; not voting for one lease ({} ms) after the restart",
            config.cluster.lease.as_millis()
        );
        let hook_runs = hooks::Counts::default();
        Agent {
            me,
            ids,
            core,
            started: now,
            net: e.net,
            grants_sent: 0,
            first_grant: None,
            vips: e.vips,
            vip_reports: e.vip_reports,
            links_down: None,
            vip_fault: None,
            control: e.control,
            stopping: None,
            maintenance: state.maintenance(),
            drop_seq: 0,
            release_by: None,
            pending_release: None,
            lease: None,
            gate,
            db_jobs: e.database.jobs,
            promotion_cancel: None,
            rejoin_cancel: None,
            owners: crate::gate::Owners::new(state.last_holder(), state.last_primary()),
            failover_block_until: state.failover_block_until_ms(),
            transitions: BTreeMap::new(),
            step_ms: BTreeMap::new(),
            step_started: BTreeMap::new(),
            hooks: hooks::start(hook_runs.clone()),
            hook_runs,
            sent_flags: (false, true),
            service: service::Service::new(now),
            region_override: None,
            behind_override: None,
            mysql: e.database.mysql,
            db_outcomes_tx: e.db_outcomes.0,
            db_outcomes: e.db_outcomes.1,
            db: e.database.status,
            last_report: None,
            dns_view: e.dns.0,
            dns_zone: e.dns.1,
            dns_counters: e.dns.2,
            db_settings: e.database.settings,
            dns_push: e.dns_push,
            push_term: None,
            push_status: Arc::new(Mutex::new(None)),
            state,
            config,
        }
    }

    /// The name server's part of `status`.
    fn dns_status(&self, now: Instant) -> DnsStatus {
        let view = self.dns_view.as_ref().map(|v| *v.borrow()).unwrap_or_default();
        // A node that only pushes updates shows every count as zero.
        let none = crate::dns::Counters::default();
        let counters = self.dns_counters.as_deref().unwrap_or(&none);
        DnsStatus {
            update: self.push_status.lock().expect("push status").clone(),
            listen: self.config.nodes[usize::from(self.me)]
                .dns
                .iter()
                .map(|ip| ip.to_string())
                .collect(),
            primary_for: view
                .owner
                .filter(|(_, until)| now < *until)
                .map(|(o, _)| self.id(o.node).to_string()),
            serial: view.serial,
            answers: counters.answers(),
            limited: counters.limited(),
        }
    }

    fn id(&self, n: NodeIdx) -> &str {
        &self.ids[usize::from(n)]
    }

    fn witness(&self) -> bool {
        self.config.nodes[usize::from(self.me)].witness
    }

    /// Why this node may not own right now, if it may not.
    fn ineligible_reason(&self, now: Instant) -> Option<String> {
        if self.witness() {
            return Some("witness (votes, never owns)".into());
        }
        if self.stopping.is_some() {
            return Some("stopping".into());
        }
        if self.maintenance {
            return Some("maintenance mode (vipgate maintenance off ends it)".into());
        }
        if let Some((error, until)) = &self.vip_fault
            && now < *until
        {
            return Some(error.clone());
        }
        if self.links_down.is_some() {
            return self.links_down.clone();
        }
        self.database_ineligible(now)
    }

    /// Whether another region than this node's held ownership last.
    /// Whether the node that last held the lease (votes do not count) is in another region.
    fn last_owner_elsewhere(&self) -> bool {
        let region = |n: NodeIdx| &self.config.nodes[usize::from(n)].region;
        self.owners
            .last_holder
            .is_some_and(|(_, o)| o != self.me && region(o) != region(self.me))
    }

    /// In the last owner's region (or no owner yet): ranks before candidates elsewhere.
    fn preferred(&self) -> bool {
        !self.last_owner_elsewhere()
    }

    /// Ownership may not come here automatically from the last owner's region, and no
    /// operator allowed it for that owner's term (`vipgate failover-ack`).
    pub(super) fn region_blocked(&self) -> bool {
        self.last_owner_elsewhere()
            && !self.config.cluster.cross_region_failover
            && self.region_override != self.owners.last_holder.map(|(t, _)| t)
    }

    /// Why this node may take ownership only when a releasing owner names it, if so.
    fn takeover_block(&self) -> Option<String> {
        if self.failover_blocked() {
            return Some(format!(
                "anti-flap window after an automatic failover ({} s left; vipgate failover-ack lifts it)",
                self.failover_block_left().as_secs()
            ));
        }
        if self.region_blocked() {
            let owner = self.owners.last_holder.map_or(self.me, |(_, o)| o);
            return Some(format!(
                "the last owner {} is in region {:?}, this node in {:?}: cross_region_failover is off, so only \
                 a switchover moves ownership here (or, while no node owns, `vipgate failover-ack` on this node)",
                self.id(owner),
                self.config.nodes[usize::from(owner)].region,
                self.config.nodes[usize::from(self.me)].region
            ));
        }
        None
    }

    fn health(&mut self, now: Instant) -> Event {
        self.note_positions();
        self.sent_flags = self.takeover_flags();
        Event::Health {
            eligible: self.ineligible_reason(now).is_none(),
            blocked: self.sent_flags.0,
            preferred: self.sent_flags.1,
            // During a release, the fenced final position.
            position: self.gate.position(),
        }
    }

    async fn run(&mut self) -> Result<(), String> {
        let mut sigterm =
            signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
        let mut sigint = signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
        let mut sighup = signal(SignalKind::hangup()).map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
        let mut buf = [0u8; 2048];
        let now = clock::now();
        let health = self.health(now);
        self.step(now, health)?;
        loop {
            let now = clock::now();
            let tick_at = self.core.next_deadline(now);
            let deadline = self.next_wake(now, tick_at);
            tokio::select! {
                received = self.net.recv(&mut buf) => {
                    match received {
                        Ok(n) => self.on_datagram(clock::now(), &buf[..n])?,
                        Err(e) => tracing::debug!("receiving: {e}"),
                    }
                }
                Some(report) = self.vip_reports.recv() => {
                    let now = clock::now();
                    self.on_report(now, report)?;
                }
                Ok(()) = db_changed(&mut self.db) => self.on_probe(clock::now())?,
                Some(outcome) = self.db_outcomes.recv() => {
                    let now = clock::now();
                    self.on_db_outcome(now, outcome)?;
                }
                Some(request) = self.control.recv() => {
                    let answer = self.answer(&request.command)?;
                    let _ = request.reply.send(answer);
                }
                _ = sigterm.recv() => self.begin_stop("SIGTERM")?,
                _ = sigint.recv() => self.begin_stop("SIGINT")?,
                _ = sighup.recv() => {
                    if let Err(e) = self.reload() {
                        tracing::error!("SIGHUP: {e}");
                    }
                }
                // Capped: tokio's clock stops during suspend, CLOCK_BOOTTIME does not.
                () = tokio::time::sleep(clock::until(deadline).min(vip::MAX_SLEEP)) => {
                    let now = clock::now();
                    if now < deadline {
                        continue;
                    }
                    self.on_timers(now, tick_at)?;
                }
            }
            self.notify_service(clock::now());
            if let Some(done) = self.stopped() {
                return done;
            }
        }
    }

    /// When the loop must wake at the latest: the core's next deadline, the end of a VIP
    /// fault's back-off, the stop deadline, the gate's next timer, the service watchdog.
    fn next_wake(&self, now: Instant, tick_at: Instant) -> Instant {
        let later = [
            self.vip_fault.as_ref().map(|(_, until)| (*until).max(now)),
            self.stopping,
            self.gate.next_deadline().map(|due| due.max(now)),
            self.service.next_due(self.ready_at()).map(|due| due.max(now)),
        ];
        later.into_iter().flatten().fold(tick_at, Instant::min)
    }

    /// A new probe result: to the gate, then the core hears how this node stands.
    fn on_probe(&mut self, now: Instant) -> Result<(), String> {
        let status = self.probed().unwrap_or_default();
        self.gate_step(now, database::GateEvent::Probed(status))?;
        let health = self.health(now);
        self.step(now, health)
    }

    /// The timers that are due: a VIP fault's back-off over, the core's tick, the gate's.
    fn on_timers(&mut self, now: Instant, tick_at: Instant) -> Result<(), String> {
        if let Some((error, until)) = &self.vip_fault
            && now >= *until
        {
            tracing::info!("retrying after the VIP failure ({error})");
            self.vip_fault = None;
            let health = self.health(now);
            self.step(now, health)?;
        }
        if now >= tick_at {
            self.step(now, Event::Tick)?;
        }
        if self.gate.next_deadline().is_some_and(|due| now >= due) {
            self.gate_step(now, database::GateEvent::Tick)?;
        }
        Ok(())
    }

    /// Stopping: done once ownership is handed over, an error once the stop deadline passed
    /// without a confirmed release; `None` while it goes on (or no stop was asked for).
    fn stopped(&self) -> Option<Result<(), String>> {
        let stop = self.stopping?;
        if !matches!(self.core.role(), RoleKind::Owner | RoleKind::Releasing) {
            tracing::info!("stopped");
            return Some(Ok(()));
        }
        (clock::now() >= stop).then(|| {
            Err(
                "the release was not confirmed before the lease deadline; the kernel fence stops serving the VIPs"
                    .into(),
            )
        })
    }

    /// A datagram arrived: authenticated, de-duplicated messages go to the core (database
    /// reports to the shell); everything else is dropped and counted.
    fn on_datagram(&mut self, now: Instant, bytes: &[u8]) -> Result<(), String> {
        let (accepted, notices) = self.net.accept(now, bytes);
        for notice in notices {
            tracing::error!(peer = %notice.peer, "{}", notice.message);
        }
        match accepted {
            Some((from, Datagram::Db(report))) => {
                self.follow_failover_block(now, from, &report);
                let view = self.core.peers()[usize::from(from)];
                if report.writable && self.core.owner(now) == Some(from) {
                    self.note_primary((view.term, from), view.position);
                }
                let position = view.position;
                self.gate_step(
                    now,
                    database::GateEvent::Peer {
                        from,
                        report,
                        position,
                    },
                )?;
                self.update_dns(now);
                Ok(())
            }
            Some((from, Datagram::Core(message))) => {
                // Whoever wins next waits for the released database's final position (named
                // successor or not).
                if let Message::Release(r) = &message
                    && r.term >= self.core.term()
                    && let Some(position) = r.final_position
                {
                    let gtid = r.final_gtid.clone();
                    self.gate_step(now, database::GateEvent::HandedOver { position, gtid })?;
                }
                self.step(now, Event::Received { from, message })
            }
            None => Ok(()),
        }
    }

    fn begin_stop(&mut self, signal: &str) -> Result<(), String> {
        if self.stopping.is_some() {
            return Ok(());
        }
        let now = clock::now();
        tracing::info!("{signal}: handing ownership over and stopping");
        Self::notify_stopping();
        // An owner gives the lease up explicitly so a successor takes over within about one
        // interval; the deadline covers a removal that never completes.
        self.step(now, Event::Release { to: None })?;
        let lease_end = self.release_by.unwrap_or(now);
        self.stopping = Some(lease_end.max(now) + self.config.cluster.interval);
        Ok(())
    }

    /// Reports the pending release to the core once every part of it is done.
    fn complete_release(&mut self, now: Instant) -> Result<(), String> {
        match &self.pending_release {
            Some(PendingRelease {
                term,
                vip_done: true,
                final_data: Some(final_data),
            }) => {
                let released = Event::Released {
                    term: *term,
                    final_data: final_data.clone(),
                };
                self.pending_release = None;
                self.release_by = None;
                self.step(now, released)
            }
            _ => Ok(()),
        }
    }

    /// Removes every VIP of this node (the agent is exiting) — also one a failed removal left
    /// behind — and then the fence's tables; bounded in time. An error says what stayed.
    async fn remove_vips(&mut self) -> Result<(), String> {
        let Some(vips) = self.vips.take() else {
            return Ok(());
        };
        vips.shutdown(vip::OP_TIMEOUT * 2).await.map_err(|e| {
            format!(
                "stopping without confirmed VIP removal ({e}); the kernel fence keeps them from being served"
            )
        })
    }

    fn on_report(&mut self, now: Instant, report: Report) -> Result<(), String> {
        match report {
            Report::Dropped { term, seq } if seq == self.drop_seq => {
                if let Some(p) = &mut self.pending_release
                    && p.term == term
                {
                    p.vip_done = true;
                }
                self.complete_release(now)
            }
            Report::Dropped { .. } => Ok(()),
            Report::DropFailed { term, error, .. } => {
                tracing::error!(
                    term,
                    "the VIP removal was not confirmed ({error}): the release is not announced; the lease \
                     runs out and the fence stops serving the VIPs first"
                );
                Ok(())
            }
            Report::Expired { term } => self.step(now, Event::VipLost { term }),
            Report::Failed { term, error } => {
                tracing::error!(term, "giving ownership up: {error}");
                self.vip_fault = Some((error, now + VIP_FAULT_BACKOFF.max(self.config.cluster.lease)));
                let health = self.health(now);
                self.step(now, health)
            }
            Report::Links { ready, reason } => {
                match &reason {
                    Some(r) if self.core.role() == RoleKind::Owner => {
                        tracing::warn!("{r}: giving ownership up")
                    }
                    Some(r) => tracing::warn!("{r}: not eligible to own"),
                    None => tracing::info!("VIP interfaces are up"),
                }
                self.links_down = if ready { None } else { reason };
                let health = self.health(now);
                self.step(now, health)
            }
        }
    }

    /// Feeds one event to the core and carries out what it asks, in order.
    fn step(&mut self, now: Instant, event: Event) -> Result<(), String> {
        let owner_before = self.core.owner(now);
        let role_before = self.core.role();
        let actions = self.core.handle(now, event);
        if self.core.role() == RoleKind::Candidate && role_before != RoleKind::Candidate {
            tracing::debug!(term = self.core.term(), "standing for election");
        }
        for action in actions {
            self.execute(now, action)?;
        }
        if self.pending_release.is_some() && self.core.role() != RoleKind::Releasing {
            // The core gave up waiting at the lease end; grants have lapsed by now.
            self.pending_release = None;
        }
        self.update_dns(now);
        let owner_after = self.core.owner(now);
        if owner_after != owner_before && owner_after.is_some_and(|o| o != self.me) {
            let owner = owner_after.map(|o| self.id(o).to_string()).unwrap_or_default();
            tracing::info!(term = self.core.term(), "owner is {owner}");
        }
        // Whether this node may take over on its own (and how it ranks) follows the last
        // owner, which any message may change: tell the core at once.
        self.note_owner();
        let view = self.core_view(now);
        self.gate_step(now, database::GateEvent::Core(view))?;
        if self.takeover_flags() != self.sent_flags {
            let health = self.health(now);
            self.step(now, health)?;
        }
        Ok(())
    }

    /// (blocked, preferred), as the core should know them.
    /// Checked on every step: no reason text is built here (see [`Agent::takeover_block`]).
    fn takeover_flags(&self) -> (bool, bool) {
        (self.failover_blocked() || self.region_blocked(), self.preferred())
    }

    fn execute(&mut self, now: Instant, action: Action) -> Result<(), String> {
        match action {
            Action::Persist(state) => self.state.save(state).map_err(|e| e.to_string())?,
            Action::Send { to, message } => self.send(to, &Datagram::Core(message)),
            Action::Broadcast(message) => {
                // Acks echo a heartbeat's sequence number: their delay is the round trip.
                self.net.note_broadcast(now, &message);
                let heartbeat = matches!(message, Message::Heartbeat(_));
                self.broadcast(&Datagram::Core(message));
                if heartbeat {
                    self.report_db(now);
                }
            }
            Action::Acquire {
                term,
                lease_end,
                named,
            } => {
                self.lease = Some((term, lease_end));
                let takeover = self.note_acquire(term, named);
                *self.transitions.entry("acquired".into()).or_default() += 1;
                if !self.promote_mode() {
                    tracing::info!(term, "became owner: adding the VIPs");
                }
                // In promote mode the gate promotes first; the VIP follows (`Serve`).
                self.gate_step(now, database::GateEvent::Acquired { term, takeover })?;
            }
            Action::Renewed { term, lease_end } => {
                self.lease = Some((term, lease_end));
                // In promote mode the VIP follows only once the database is writable.
                if self.gate.serves(term) {
                    self.vip(Command::Hold {
                        term,
                        until: lease_end,
                    });
                }
            }
            Action::Release {
                term,
                reason,
                lease_end,
            } => {
                tracing::warn!(term, "releasing ownership: {}", reason.as_str());
                *self.transitions.entry(reason.label().into()).or_default() += 1;
                self.hook("release", term, Some(reason.as_str()));
                self.lease = None;
                self.release_by = Some(lease_end);
                // The release completes once the VIP is gone and (promote mode) the database
                // refuses writes; only then do peers hear of it.
                self.pending_release = Some(PendingRelease {
                    term,
                    vip_done: self.vips.is_none(),
                    final_data: None,
                });
                if let Some(vips) = &self.vips {
                    self.drop_seq += 1;
                    // A planned move lets commits in progress finish (`kill_grace_ms`); on any
                    // other release the clients are told at once that the connection is gone.
                    let planned = matches!(
                        reason,
                        crate::core::ReleaseReason::Requested | crate::core::ReleaseReason::Preempted
                    );
                    vips.drop(term, lease_end, self.drop_seq, !planned);
                }
                self.gate_step(now, database::GateEvent::Releasing { term, by: lease_end })?;
                return self.complete_release(now);
            }
        }
        Ok(())
    }

    fn broadcast(&mut self, message: &Datagram) {
        for to in self.net.others() {
            self.send(to, message);
        }
    }

    /// Tells peers about the local database: with a heartbeat, when it changed or at least
    /// every [`DB_REPORT_EVERY`].
    fn report_db(&mut self, now: Instant) {
        let Some(status) = self.probed() else { return };
        let report = db_report(&status, self.failover_block_left(), self.database_flags(now));
        let due = match &self.last_report {
            Some((at, last)) => *last != report || now.saturating_since(*at) >= DB_REPORT_EVERY,
            None => true,
        };
        if due {
            self.broadcast(&Datagram::Db(report.clone()));
            self.last_report = Some((now, report));
        }
    }

    fn vip(&self, command: Command) {
        if let Some(vips) = &self.vips {
            vips.send(command);
        }
    }

    /// Tells the name server whom to answer as primary: the owner this node holds or grants a
    /// live lease to, until that lease ends — in promote mode only once its database is
    /// writable, so that clients are not sent to a primary still catching up.
    pub(super) fn update_dns(&mut self, now: Instant) {
        if self.dns_view.is_none() && self.dns_push.is_none() {
            return;
        }
        let held = (self.core.role() == RoleKind::Owner && self.core.holds_lease(now))
            .then(|| self.core.lease_end().map(|end| (self.me, self.core.term(), end)))
            .flatten();
        // A grant made by voting is not yet a lease: only an owner heard claiming it counts.
        let granted = self
            .core
            .grant()
            .filter(|g| {
                let view = self.core.peers()[usize::from(g.to)];
                now < g.until && g.to != self.me && view.lease_claim && view.term == g.term
            })
            .map(|g| (g.to, g.term, g.until));
        let owner = held.or(granted).filter(|(o, term, _)| {
            !self.promote_mode()
                || if *o == self.me {
                    self.gate.phase() == crate::gate::Phase::Promoted(*term)
                } else {
                    self.gate.peer(*o).is_some_and(|(at, r)| {
                        r.writable && now.saturating_since(*at) < self.config.cluster.lease * 3
                    })
                }
        });
        self.push_dns(owner.filter(|(o, _, _)| *o == self.me).map(|(_, term, _)| term));
        let Some(view) = &self.dns_view else { return };
        let term = owner.map_or(self.core.term(), |(_, t, _)| t);
        let next = crate::dns::View {
            owner: owner.map(|(node, term, until)| (crate::dns::zone::Owner { node, term }, until)),
            // RFC 1982 serial arithmetic wraps; terms this large never occur in practice.
            serial: (term & u64::from(u32::MAX)) as u32,
        };
        view.send_if_modified(|v| std::mem::replace(v, next) != next);
    }

    /// A promotion or fence (`step`) ended: its duration is kept for metrics.
    pub(super) fn step_ended(&mut self, step: &'static str) {
        if let Some(at) = self.step_started.remove(step) {
            let ms = u64::try_from(clock::now().saturating_since(at).as_millis()).unwrap_or(u64::MAX);
            self.step_ms.insert(step.to_string(), ms);
        }
    }

    fn send(&mut self, to: NodeIdx, message: &Datagram) {
        if matches!(
            message,
            Datagram::Core(Message::Ack(_) | Message::Vote(Vote { granted: true, .. }))
        ) {
            self.grants_sent += 1;
            self.first_grant
                .get_or_insert_with(|| clock::now().saturating_since(self.started));
        }
        if let Err(e) = self.net.send(to, message) {
            tracing::debug!("sending to {}: {e}", self.id(to));
        }
    }

    /// Answers a control command. Only a failure to persist is an error of the agent.
    fn answer(&mut self, command: &str) -> Result<String, String> {
        let now = clock::now();
        let reply = |r: Result<String, String>| match r {
            Ok(message) => serde_json::json!({ "ok": true, "message": message }).to_string(),
            Err(error) => serde_json::json!({ "ok": false, "error": error }).to_string(),
        };
        let command = match control::Command::parse(command) {
            Ok(c) => c,
            Err(e) => return Ok(reply(Err(e))),
        };
        Ok(match command {
            control::Command::Status => {
                serde_json::to_string(&self.view(now).status(now)).expect("status serialises")
            }
            control::Command::Metrics => control::metrics::render(&self.view(now).status(now)),
            control::Command::Maintenance(on) => reply(self.set_maintenance(now, on)?),
            control::Command::Switchover(to) => reply(self.switchover(now, to.as_deref())),
            control::Command::Reload => reply(self.reload()),
            control::Command::FailoverAck => {
                let answer = self.failover_ack(now);
                let health = self.health(now);
                self.step(now, health)?;
                reply(answer)
            }
        })
    }

    /// `maintenance on|off`. Only a failure to step is an error of the agent; one to persist
    /// is the answer.
    fn set_maintenance(&mut self, now: Instant, on: bool) -> Result<Result<String, String>, String> {
        if let Err(e) = self.state.set_maintenance(on) {
            return Ok(Err(format!("nothing changed: {e}")));
        }
        self.maintenance = on;
        let owner = self.core.role() == RoleKind::Owner;
        if on {
            tracing::warn!(
                "maintenance on: this node will not own{}",
                if owner { "; handing over" } else { "" }
            );
            if owner {
                self.step(now, Event::Release { to: None })?;
            }
        } else {
            tracing::info!("maintenance off: this node may own again");
        }
        let health = self.health(now);
        self.step(now, health)?;
        Ok(Ok(if on && owner {
            "maintenance on; handing ownership over".into()
        } else {
            format!("maintenance {}", if on { "on" } else { "off" })
        }))
    }

    /// Planned hand-over from this (owning) node to `to`, or to the best candidate.
    fn switchover(&mut self, now: Instant, to: Option<&str>) -> Result<String, String> {
        if self.core.role() != RoleKind::Owner {
            return Err(match self.core.owner(now) {
                Some(o) => format!(
                    "this node does not own; the owner is {}: run switchover there",
                    self.id(o)
                ),
                None => "this node does not own, and no owner is known".into(),
            });
        }
        let target = match to {
            Some(id) => {
                let Some(i) = self.ids.iter().position(|n| n == id) else {
                    return Err(format!(
                        "{id:?} is not a member (members: {})",
                        self.ids.join(", ")
                    ));
                };
                let i = i as NodeIdx;
                if i == self.me {
                    return Err(format!("{id} already owns"));
                }
                if self.config.nodes[usize::from(i)].witness {
                    return Err(format!("{id} is a witness and cannot own"));
                }
                let view = self.core.peers()[usize::from(i)];
                let fresh = view
                    .last_heard
                    .is_some_and(|t| now.saturating_since(t) < self.config.cluster.lease);
                if !view.eligible || !fresh {
                    return Err(format!(
                        "{id} is not eligible now (see vipgate status); nothing was changed"
                    ));
                }
                Some(i)
            }
            None => None,
        };
        tracing::warn!(
            "switchover requested: fencing this database, then handing over to {}",
            target.map_or("the best candidate", |t| self.id(t))
        );
        self.step(now, Event::Release { to: target })?;
        Ok(format!(
            "handing over to {}; this node fences its database first",
            target.map_or("the best candidate", |t| self.id(t))
        ))
    }

    /// What `status` is built from (`control::view`).
    fn view(&self, now: Instant) -> control::view::View<'_> {
        let report = self
            .probed()
            .map(|db| db_report(&db, self.failover_block_left(), self.database_flags(now)));
        control::view::View {
            config: &self.config,
            me: self.me,
            core: &self.core,
            gate: &self.gate,
            started: self.started,
            net: control::view::Net {
                boot: self.net.boot(),
                sent: self.net.sent(),
                received: self.net.received(),
                send_errors: self.net.send_errors(),
                dropped: self
                    .net
                    .drops()
                    .iter()
                    .map(|(r, n)| (r.as_str().to_string(), n))
                    .collect(),
                rtt_us: (0..self.ids.len() as NodeIdx)
                    .map(|i| self.net.rtt_us(i))
                    .collect(),
            },
            local: control::view::Local {
                database: self.probed(),
                report,
                ineligible_reason: self.ineligible_reason(now),
                maintenance: self.maintenance,
                vip: self
                    .vips
                    .as_ref()
                    .map(|v| v.status.lock().expect("status lock").clone())
                    .unwrap_or_default(),
                dns: (self.dns_view.is_some() || self.dns_push.is_some()).then(|| self.dns_status(now)),
                failover_block_left: self.failover_block_left(),
                takeover_block: self.takeover_block(),
            },
            counters: control::view::Counters {
                grants_sent: self.grants_sent,
                first_grant: self.first_grant,
                transitions: self.transitions.clone(),
                step_ms: self.step_ms.clone(),
                hook_runs: self.hook_runs.lock().expect("hook counts").clone(),
            },
        }
    }
}
