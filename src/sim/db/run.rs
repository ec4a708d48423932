//! The simulation loop: faults, replication, the client, probes, the gates' actions carried
//! out by model effects, and the lease.

use super::model::{Io, Mysqld, Run, receive};
use super::{Client, Job, Lease, Mutation, Node, Outcome, Release, STEP, Sim, Violation};
use crate::config::MysqlMode;
use crate::core::{Candidate, FinalData, Instant, NodeIdx, RoleKind};
use crate::gate::DbReport;
use crate::gate::machine::{Action, CoreView, Event, FenceFailure, Rejoined, Settings};
use crate::gate::{self, Gate};
use crate::mysql::DbStatus;
use std::time::Duration;

pub(super) const INTERVAL: Duration = Duration::from_millis(100);
pub(super) const LEASE: Duration = Duration::from_millis(600);
const CHECK_EVERY: u64 = 10;
const FALL: u32 = 2;
const MAX_LAG: Duration = Duration::from_secs(1);
const CATCHUP: Duration = Duration::from_secs(2);
/// A fence that fails is retried until this close to its deadline (`FENCE_RETRY` × 2).
const FENCE_MARGIN: Duration = Duration::from_millis(200);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);

fn id(i: NodeIdx) -> String {
    format!("db{}", i + 1)
}

impl Sim {
    pub fn new(seed: u64, mutation: Option<Mutation>, trace: bool) -> Sim {
        Sim::build(seed, mutation, trace, None)
    }

    /// `n` database nodes (else drawn from the seed: 2 or 3).
    pub(super) fn build(seed: u64, mutation: Option<Mutation>, trace: bool, n: Option<usize>) -> Sim {
        let mut rng = super::Rng::new(seed);
        let drawn = rng.range(2, 3) as usize;
        let n = n.unwrap_or(drawn);
        let sources: Vec<String> = (0..n).map(|i| format!("192.0.2.{}", 11 + i)).collect();
        let now = Instant::from_micros(1_000_000);
        let nodes = (0..n as NodeIdx)
            .map(|i| Node::new(i, n, rng.range(1, 255) as u8, &sources, now))
            .collect();
        let chaos = Duration::from_millis(rng.range(8_000, 16_000));
        let window = Duration::from_secs(3) * u32::from(rng.chance(500));
        let overlap = rng.chance(500);
        let lease = Lease {
            node: 0,
            term: 1,
            end: now + LEASE,
            release: None,
        };
        let mut sim = Sim {
            seed,
            rng,
            mutation,
            trace,
            now,
            step: 0,
            nodes,
            sources,
            lease: Some(lease),
            term: 1,
            primary: 0,
            elect_at: now,
            window_until: now,
            window,
            last_takeover: None,
            last_owner: 0,
            owed: Vec::new(),
            violation: None,
            client: Client::default(),
            chaos_until: now + chaos,
            script: Vec::new(),
            overlap,
            end: now + chaos + Duration::from_secs(5),
            outcome: Outcome::default(),
        };
        sim.start_primary();
        sim
    }

    /// db1 owns term 1 with its database promoted, and every node has had a first check.
    fn start_primary(&mut self) {
        self.views();
        let acquired = Event::Acquired {
            term: 1,
            takeover: None,
        };
        self.gate(0, acquired);
        self.gate(
            0,
            Event::Promoted {
                term: 1,
                result: Ok(()),
            },
        );
        // The promotion it was asked for is done already.
        self.nodes[0].jobs.clear();
        for i in 0..self.nodes.len() as NodeIdx {
            self.probe(i);
        }
    }

    pub fn run(self) -> Result<Outcome, Violation> {
        self.finish().map(|sim| sim.outcome)
    }

    /// Runs to the end; the simulator as it ends, for scripted cases to inspect.
    pub(super) fn finish(mut self) -> Result<Sim, Violation> {
        while self.now < self.end {
            self.once().map_err(|what| Violation {
                seed: self.seed,
                at: self.now.saturating_since(Instant::from_micros(1_000_000)),
                what,
            })?;
        }
        self.outcome.steps = self.step;
        self.outcome.acked = self.client.acked.len() as u64;
        // Five seconds after the faults healed someone serves — unless a failed promotion's
        // back-off (10 s) still keeps its node out, and nobody else may own.
        let backing_off = self.nodes.iter().any(|n| n.gate.fault(self.now).is_some());
        self.outcome.served_at_end = self.nodes.iter().any(|n| n.vip.is_some()) || backing_off;
        Ok(self)
    }

    fn once(&mut self) -> Result<(), String> {
        self.now = self.now + STEP;
        self.step += 1;
        if self.script.is_empty() && self.now < self.chaos_until {
            self.fault();
        }
        while let Some(&(at, node, fault, heal)) = self.script.first()
            && self.now >= at
        {
            self.script.remove(0);
            self.inject(node, fault, heal);
        }
        self.heal();
        self.replicate();
        self.write()?;
        for i in 0..self.nodes.len() {
            let i = i as NodeIdx;
            if (self.step + u64::from(i) * 3).is_multiple_of(CHECK_EVERY) {
                self.probe(i);
            }
            if self.node(i).gate.next_deadline().is_some_and(|d| self.now >= d) {
                self.gate(i, Event::Tick);
            }
            self.work(i)?;
        }
        // A node back in touch hears the newest term before it can stand; every node's
        // heartbeat says whether it may own.
        self.views();
        for i in 0..self.nodes.len() as NodeIdx {
            let eligible = self.eligible(i);
            self.node_mut(i).told_eligible = eligible;
        }
        self.ownership()?;
        self.views();
        self.check()
    }

    pub(super) fn node(&self, i: NodeIdx) -> &Node {
        &self.nodes[usize::from(i)]
    }

    pub(super) fn node_mut(&mut self, i: NodeIdx) -> &mut Node {
        &mut self.nodes[usize::from(i)]
    }

    pub(super) fn log(&self, what: impl FnOnce() -> String) {
        if self.trace {
            println!("{:>8.3} {}", self.now.as_micros() as f64 / 1e6 - 1.0, what());
        }
    }

    fn probe(&mut self, i: NodeIdx) {
        let sources = self.sources.clone();
        let node = self.node_mut(i);
        let status = node.db.probe(&sources, FALL, &node.status);
        node.status = status.clone();
        let report = DbReport {
            healthy: status.healthy,
            writable: status.read_only == Some(false),
            gtid: status.gtid.clone().unwrap_or_default(),
            ..DbReport::default()
        };
        let heard = (status.position, status.healthy && self.follows_owner(i));
        self.gate(i, Event::Probed(status));
        // Peers hear of it, with the next heartbeat (a report while down says nothing new).
        for j in 0..self.nodes.len() as NodeIdx {
            if j != i && !self.node(i).isolated && !self.node(j).isolated {
                let (report, position) = (report.clone(), heard.0);
                self.gate(
                    j,
                    Event::Peer {
                        from: i,
                        report,
                        position,
                    },
                );
                if self.node(i).status.healthy {
                    self.node_mut(j).heard[usize::from(i)] = Some(heard);
                }
            }
        }
    }

    /// Replication: every I/O thread fetches, every applier applies.
    fn replicate(&mut self) {
        for j in 0..self.nodes.len() {
            let Some(s) = self.nodes[j].db.source else {
                continue;
            };
            if self.nodes[j].isolated || self.node(s).isolated {
                self.nodes[j].db.connected = false;
                continue;
            }
            let source = std::mem::replace(&mut self.node_mut(s).db, Mysqld::primary());
            receive(&mut self.nodes[j].db, &source);
            self.node_mut(s).db = source;
        }
        let step = self.step;
        for node in &mut self.nodes {
            node.db.apply(step);
        }
    }

    /// The client: one write at a time through whoever serves the VIP, acknowledged once a
    /// replica of that server has received it (semi-sync AFTER_SYNC).
    fn write(&mut self) -> Result<(), String> {
        if let Some((tx, at, since)) = self.client.pending {
            let index = self.node(at).db.log.iter().rposition(|t| *t == tx);
            let acked = index.is_some_and(|k| self.acknowledged(at, k));
            if acked {
                self.client.acked.push(tx);
                self.client.pending = None;
            } else if self.now.saturating_since(since) > CLIENT_TIMEOUT
                || self.node(at).db.run == Run::Crashed
            {
                self.client.pending = None;
            }
            return Ok(());
        }
        let serving: Vec<NodeIdx> = (0..self.nodes.len() as NodeIdx)
            .filter(|i| self.node(*i).vip.is_some())
            .collect();
        let [h] = serving[..] else { return Ok(()) };
        if !self.node(h).db.writable() {
            return Ok(());
        }
        self.check_write(h)?;
        let tx = self.client.next;
        self.client.next += 1;
        self.node_mut(h).db.log.push(tx);
        self.client.pending = Some((tx, h, self.now));
        Ok(())
    }

    /// A replica connected to `primary` has its transaction number `k`.
    fn acknowledged(&self, primary: NodeIdx, k: usize) -> bool {
        !self.node(primary).isolated
            && self.nodes.iter().any(|n| {
                n.db.source == Some(primary)
                    && n.db.io == Io::Running
                    && !n.isolated
                    && n.db.received_len() > k
            })
    }

    pub(super) fn eligible(&self, i: NodeIdx) -> bool {
        let node = self.node(i);
        let owner = node.last_primary;
        let address = self.sources[usize::from(owner)].clone();
        let owner_id = id(owner);
        let ahead = self.ahead(i);
        let facts = gate::Facts {
            mode: MysqlMode::Promote,
            me: i,
            db: &node.status,
            max_lag: MAX_LAG,
            fault: node.gate.fault(self.now),
            diverged: node.gate.diverged(),
            last_owner: Some((owner, &owner_id, &address)),
            cold_start: None,
            highest_writable: (0, ""),
            ahead: ahead.as_ref().map(|(p, n)| (*p, n.as_str())),
            catching_up: node.gate.catching_up(),
            owner_live: node.view.owner.is_some(),
            floor: node.floor,
            // Each node is given the true last primary: never one it did not see.
            newer_owner: None,
        };
        let why = gate::ineligible(&facts);
        self.log(|| {
            format!(
                "db{} eligible: {why:?} (facts: ahead {:?}, status {:?})",
                i + 1,
                facts.ahead,
                facts.db
            )
        });
        why.is_none()
    }

    /// The most advanced peer of `i` replicating the last owner's history, as `i` last heard
    /// from it, that cannot stand itself (down, cut off, not eligible at its last heartbeat, or
    /// kept from taking over by the anti-flap window).
    fn ahead(&self, i: NodeIdx) -> Option<(u64, String)> {
        let owner = self.node(i).last_primary;
        let stands = |j: NodeIdx| {
            let reachable = !self.node(j).isolated && !self.node(i).isolated;
            reachable && self.node(j).told_eligible && !self.blocked(j)
        };
        (0..self.nodes.len() as NodeIdx)
            .filter(|j| *j != i && *j != owner && !stands(*j))
            .filter_map(|j| match self.node(i).heard[usize::from(j)] {
                Some((position, true)) => Some((position, id(j))),
                _ => None,
            })
            .max()
    }

    /// What `i` tells peers in its database report: it replicates the last owner's history.
    fn follows_owner(&self, i: NodeIdx) -> bool {
        let node = self.node(i);
        let owner = node.last_primary;
        let source = node
            .status
            .replication
            .as_ref()
            .map(|r| (r.source.as_str(), r.io_errno));
        owner != i
            && node.status.read_only == Some(true)
            && node.gate.diverged().is_none()
            && source == Some((self.sources[usize::from(owner)].as_str(), None))
    }

    /// Feeds the gate of `i` and carries out what it asks.
    pub(super) fn gate(&mut self, i: NodeIdx, event: Event) {
        let now = self.now;
        let actions = self.node_mut(i).gate.handle(now, event);
        for action in actions {
            self.act(i, action);
        }
    }

    /// The core as each gate sees it.
    pub(super) fn views(&mut self) {
        for i in 0..self.nodes.len() as NodeIdx {
            if !self.node(i).isolated {
                let (owner, primary) = (self.last_owner, self.primary);
                let floor = self.node(primary).status.position;
                let node = self.node_mut(i);
                node.last_owner = owner;
                if node.last_primary != primary {
                    node.last_primary = primary;
                    node.floor = floor;
                }
            }
            let view = self.view(i);
            if view != self.node(i).view {
                self.node_mut(i).view = view;
                self.gate(i, Event::Core(view));
            }
        }
    }

    fn view(&self, i: NodeIdx) -> CoreView {
        let lease = self.lease.as_ref();
        let role = match lease {
            Some(l) if l.node == i && l.release.is_none() => RoleKind::Owner,
            Some(l) if l.node == i && !self.released(l) => RoleKind::Releasing,
            _ => RoleKind::Follower,
        };
        let owner = lease
            .filter(|l| l.release.is_none() && (l.node == i || !self.node(i).isolated))
            .map(|l| l.node);
        CoreView {
            role,
            term: self.term,
            owner,
            grant_term: owner.filter(|o| *o != i).map(|_| self.term),
            last_owner: Some(self.node(i).last_owner),
        }
    }

    /// The release's two parts are done: the VIP is gone and the gate finished the database.
    pub(super) fn released(&self, lease: &Lease) -> bool {
        lease
            .release
            .as_ref()
            .is_some_and(|r| r.final_data.is_some() && self.node(lease.node).vip.is_none())
    }

    fn act(&mut self, i: NodeIdx, action: Action) {
        self.log(|| format!("{} {action:?}", id(i)));
        let now = self.now;
        match action {
            Action::Fence { release, by, settle } => self.node_mut(i).jobs.push_back(Job::Fence {
                release,
                by,
                settle,
                gone_since: None,
            }),
            Action::CancelPromotion => self.node_mut(i).cancel_promotion = true,
            Action::Promote { term, wait_for } => {
                let node = self.node_mut(i);
                node.cancel_promotion = false;
                node.jobs.push_back(Job::Promote {
                    term,
                    wait_for: wait_for.map(|(p, _)| p),
                    deadline: now + CATCHUP,
                });
            }
            Action::CancelRejoin => self.node_mut(i).cancel_rejoin = true,
            Action::Rejoin { term, owner, .. } => {
                let node = self.node_mut(i);
                node.cancel_rejoin = false;
                node.jobs.push_back(Job::Rejoin { term, owner });
            }
            Action::KillClients { .. } => {
                if self.client.pending.is_some_and(|(_, at, _)| at == i) {
                    self.client.pending = None;
                }
            }
            Action::Serve { term } => {
                let holds = self
                    .lease
                    .as_ref()
                    .is_some_and(|l| l.node == i && l.term == term && l.release.is_none());
                if holds {
                    self.node_mut(i).vip = Some(term);
                }
            }
            Action::OpenWindow { .. } if self.window.is_zero() => {}
            Action::OpenWindow { .. } => self.check_window(),
            Action::PersistDiverged(why) => self.outcome.divergences += u64::from(why.is_some()),
            Action::Hook { .. } | Action::Reconsider => {}
            Action::ReleaseFenced { term, final_data } => self.release_fenced(i, term, final_data),
        }
    }

    fn release_fenced(&mut self, i: NodeIdx, term: u64, final_data: FinalData) {
        if matches!(final_data, FinalData::Fenced { .. }) {
            self.node_mut(i).announced_fenced = true;
        }
        if let Some(lease) = &mut self.lease
            && lease.node == i
            && lease.term == term
            && let Some(r) = &mut lease.release
        {
            r.final_data = Some(final_data);
        }
    }

    /// The head job of `i` moves one step; its outcome goes to the gate.
    fn work(&mut self, i: NodeIdx) -> Result<(), String> {
        let Some(job) = self.node(i).jobs.front().cloned() else {
            return Ok(());
        };
        let event = match job {
            Job::Promote {
                term,
                wait_for,
                deadline,
            } => self.promote(i, term, wait_for, deadline)?,
            Job::Fence {
                release,
                by,
                settle,
                gone_since,
            } => self.fence(i, release, by, settle, gone_since),
            Job::Rejoin { term, owner } => Some(self.rejoin(i, term, owner)?),
        };
        if let Some(event) = event {
            self.node_mut(i).jobs.pop_front();
            self.gate(i, event);
        }
        Ok(())
    }

    fn promote(
        &mut self,
        i: NodeIdx,
        term: u64,
        wait_for: Option<u64>,
        deadline: Instant,
    ) -> Result<Option<Event>, String> {
        let now = self.now;
        let skip_catch_up = self.mutation == Some(Mutation::PromoteBeforeCatchUp);
        let node = self.node_mut(i);
        let failed = |why: &str| {
            Ok(Some(Event::Promoted {
                term,
                result: Err(why.into()),
            }))
        };
        if node.cancel_promotion {
            return failed("ownership ended");
        }
        match node.db.run {
            Run::Crashed => return failed("down"),
            Run::Frozen if now >= deadline => return failed("timed out"),
            Run::Frozen => return Ok(None),
            Run::Running => {}
        }
        node.db.io = Io::Stopped;
        if skip_catch_up {
            node.db.relay.clear();
        }
        let behind = !node.db.relay.is_empty() || wait_for.is_some_and(|p| (node.db.log.len() as u64) < p);
        if behind {
            return if now >= deadline {
                failed("catch-up timed out")
            } else {
                Ok(None)
            };
        }
        node.db.read_only = false;
        node.db.source = None;
        self.check_promotion(i)?;
        Ok(Some(Event::Promoted { term, result: Ok(()) }))
    }

    fn fence(
        &mut self,
        i: NodeIdx,
        release: Option<u64>,
        by: Instant,
        settle: Duration,
        gone_since: Option<Instant>,
    ) -> Option<Event> {
        let now = self.now;
        let skip = self.mutation == Some(Mutation::SkipFence);
        let node = self.node_mut(i);
        let result = match node.db.run {
            Run::Running => {
                node.db.read_only |= !skip;
                Ok((node.db.log.len() as u64, node.db.gtid()))
            }
            Run::Crashed if gone_since.is_some_and(|g| now.saturating_since(g) >= settle) => {
                Err(FenceFailure::NotRunning)
            }
            _ if now + FENCE_MARGIN >= by => Err(FenceFailure::Failed),
            run => {
                let gone = (run == Run::Crashed).then(|| gone_since.unwrap_or(now));
                if let Some(Job::Fence { gone_since, .. }) = node.jobs.front_mut() {
                    *gone_since = gone;
                }
                return None;
            }
        };
        Some(Event::Fenced { release, result })
    }

    fn rejoin(&mut self, i: NodeIdx, term: u64, owner: NodeIdx) -> Result<Event, String> {
        let failed = Event::Rejoined {
            term,
            result: Rejoined::Failed,
        };
        let reachable = !self.node(i).isolated && !self.node(owner).isolated;
        let running = self.node(i).db.run == Run::Running && self.node(owner).db.run == Run::Running;
        if std::mem::take(&mut self.node_mut(i).cancel_rejoin) || !reachable || !running {
            return Ok(failed);
        }
        self.node_mut(i).db.relay.clear();
        let extra = self.node(i).db.extra_over(&self.node(owner).db);
        if !extra.is_empty() && self.mutation != Some(Mutation::RejoinWithoutDivergenceCheck) {
            let why = format!("{} transaction(s) that {} lacks", extra.len(), id(owner));
            return Ok(Event::Rejoined {
                term,
                result: Rejoined::Diverged(why),
            });
        }
        self.check_repoint(i, owner)?;
        let db = &mut self.node_mut(i).db;
        db.source = Some(owner);
        db.io = Io::Connecting;
        Ok(Event::Rejoined {
            term,
            result: Rejoined::Replicating,
        })
    }

    /// The best candidate by the core's ranking (or, mutated, by priority first).
    pub(super) fn best(&self, candidates: &[NodeIdx]) -> Option<NodeIdx> {
        let rank = |i: NodeIdx| Candidate {
            node: i,
            position: self.node(i).gate.position(),
            preferred: true,
            priority: self.node(i).priority,
        };
        let priority_first = self.mutation == Some(Mutation::PriorityBeforeData);
        candidates.iter().copied().min_by(|a, b| {
            let (a, b) = (rank(*a), rank(*b));
            if priority_first {
                b.priority.cmp(&a.priority).then(a.cmp_rank(&b))
            } else {
                a.cmp_rank(&b)
            }
        })
    }

    pub(super) fn start_release(&mut self, announced: bool, planned: bool) {
        let vip_gone_at = self.now + Duration::from_millis(self.rng.range(0, 30));
        let Some(lease) = &mut self.lease else { return };
        lease.release = Some(Release {
            announced,
            planned,
            vip_gone_at,
            final_data: None,
        });
        let (node, term, by) = (lease.node, lease.term, lease.end);
        self.log(|| {
            format!(
                "{} releases term {term} (announced {announced}, planned {planned})",
                id(node)
            )
        });
        self.views();
        self.gate(node, Event::Releasing { term, by });
    }
}

impl Node {
    /// Node `i` of `n`: db1 the primary (serving the VIP of term 1), the others its replicas.
    fn new(i: NodeIdx, n: usize, priority: u8, sources: &[String], now: Instant) -> Node {
        let settings = Settings {
            mode: MysqlMode::Promote,
            me: i,
            sources: sources.to_vec(),
            replication: true,
            lease: LEASE,
            fence_settle: STEP * CHECK_EVERY as u32 * 2 + INTERVAL,
            fence_budget: Duration::from_secs(1),
            kill_grace: Duration::from_millis(200),
        };
        let view = CoreView {
            role: RoleKind::Follower,
            term: 0,
            owner: None,
            grant_term: None,
            last_owner: None,
        };
        Node {
            priority,
            db: if i == 0 {
                Mysqld::primary()
            } else {
                Mysqld::replica_of(0)
            },
            gate: Gate::new(settings, None, now),
            status: DbStatus::default(),
            jobs: Default::default(),
            cancel_promotion: false,
            cancel_rejoin: false,
            vip: (i == 0).then_some(1),
            isolated: false,
            announced_fenced: false,
            heal_at: None,
            heard: vec![None; n],
            told_eligible: false,
            last_owner: 0,
            last_primary: 0,
            floor: 0,
            view,
        }
    }
}
