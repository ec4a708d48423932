//! The status an agent answers with, built from a read-only view of the agent: the ownership
//! core and the database gate as they are, and a snapshot of what the shell around them holds
//! (the effects' state, counters). The agent routes; this module decides what `status` shows,
//! and can be tested without a socket, a database or a network.

use super::{DnsStatus, GrantStatus, PeerDb, PeerStatus, Status};
use crate::config::Config;
use crate::core::{Core, Instant, NodeIdx, RoleKind};
use crate::gate::{DbReport, Gate};
use crate::mysql::DbStatus;
use crate::vip::VipStatus;
use std::collections::BTreeMap;
use std::time::Duration;

/// Everything `status` is built from, borrowed or copied at the moment of the request.
pub struct View<'a> {
    pub config: &'a Config,
    pub me: NodeIdx,
    pub core: &'a Core,
    pub gate: &'a Gate,
    /// When this agent started: it neither votes nor acknowledges for one lease after.
    pub started: Instant,
    pub net: Net,
    pub local: Local,
    pub counters: Counters,
}

/// The transport's counters.
#[derive(Default)]
pub struct Net {
    pub boot: u64,
    pub sent: u64,
    pub received: u64,
    pub send_errors: u64,
    /// Datagrams dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// The last round trip from a heartbeat to each node's ack, in µs (while owner).
    pub rtt_us: Vec<Option<u64>>,
}

/// What the shell knows of this node beyond the core and the gate.
#[derive(Default)]
pub struct Local {
    /// The local database's latest check.
    pub database: Option<DbStatus>,
    /// What peers are told of it.
    pub report: Option<DbReport>,
    pub ineligible_reason: Option<String>,
    pub maintenance: bool,
    pub vip: VipStatus,
    pub dns: Option<DnsStatus>,
    pub failover_block_left: Duration,
    /// Why ownership may come here only when a releasing owner names this node, if so.
    pub takeover_block: Option<String>,
}

/// The agent's counters of what it did.
#[derive(Default)]
pub struct Counters {
    pub grants_sent: u64,
    pub first_grant: Option<Duration>,
    pub transitions: BTreeMap<String, u64>,
    pub step_ms: BTreeMap<String, u64>,
    pub hook_runs: BTreeMap<String, u64>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl View<'_> {
    fn id(&self, n: NodeIdx) -> String {
        self.config.nodes[usize::from(n)].id.clone()
    }

    fn witness(&self) -> bool {
        self.config.nodes[usize::from(self.me)].witness
    }

    fn role(&self) -> &'static str {
        match self.core.role() {
            RoleKind::Follower if self.witness() => "witness",
            RoleKind::Follower => "follower",
            RoleKind::Candidate => "candidate",
            RoleKind::Owner => "owner",
            RoleKind::Releasing => "releasing",
        }
    }

    /// The agent's status as `vipgate status` and `/metrics` show it.
    pub fn status(self, now: Instant) -> Status {
        let role = self.role();
        let peers = (0..self.config.nodes.len() as NodeIdx)
            .map(|i| self.peer(now, i, role))
            .collect();
        let grant = self
            .core
            .grant()
            .filter(|g| now < g.until && g.to != self.me)
            .map(|g| GrantStatus {
                to: self.id(g.to),
                term: g.term,
                remaining_ms: ms(g.until.saturating_since(now)),
            });
        let (node, owner) = (self.id(self.me), self.core.owner(now).map(|o| self.id(o)));
        let vips = match self.witness() {
            true => Vec::new(),
            false => self
                .config
                .vips_of(self.me)
                .iter()
                .map(|v| v.to_string())
                .collect(),
        };
        let mut dropped = self.net.dropped;
        if self.net.send_errors > 0 {
            dropped.insert("send failed".into(), self.net.send_errors);
        }
        let (local, counters) = (self.local, self.counters);
        Status {
            node,
            cluster: self.config.cluster.name.clone(),
            boot: self.net.boot,
            role: role.to_string(),
            term: self.core.term(),
            owner,
            lease_remaining_ms: self
                .core
                .lease_end()
                .filter(|&end| now < end)
                .map(|end| ms(end.saturating_since(now))),
            grant,
            eligible: self.core.eligible(),
            ineligible_reason: local.ineligible_reason,
            quiet_remaining_ms: ms((self.started + self.config.cluster.lease).saturating_since(now)),
            vips,
            vip: local.vip,
            database: local.database,
            diverged: self.gate.diverged().map(str::to_string),
            maintenance: local.maintenance,
            dns: local.dns,
            failover_block_remaining_ms: Some(ms(local.failover_block_left)).filter(|&m| m > 0),
            takeover_blocked: local.takeover_block.is_some(),
            takeover_blocked_reason: local.takeover_block,
            peers,
            sent: self.net.sent,
            received: self.net.received,
            grants_sent: counters.grants_sent,
            first_grant_after_start_ms: counters.first_grant.map(ms),
            dropped,
            transitions: counters.transitions,
            step_ms: counters.step_ms,
            hook_runs: counters.hook_runs,
        }
    }

    /// One line of the peer table: this node as it knows itself, or a peer as last heard.
    fn peer(&self, now: Instant, i: NodeIdx, my_role: &str) -> PeerStatus {
        let node = &self.config.nodes[usize::from(i)];
        let mut line = PeerStatus {
            id: node.id.clone(),
            address: node.address.to_string(),
            witness: node.witness,
            last_heard_ms: Some(0),
            term: self.core.term(),
            owner: self.core.owner(now).map(|o| self.id(o)),
            role: my_role.to_string(),
            eligible: self.core.eligible(),
            position: self.local.database.as_ref().map_or(0, |db| db.position),
            priority: node.priority,
            region: node.region.clone(),
            rtt_us: None,
            database: self.local.report.as_ref().map(|r| peer_db(r, Duration::ZERO)),
        };
        if i == self.me {
            return line;
        }
        let view = self.core.peers()[usize::from(i)];
        let since = view.last_heard.map(|t| now.saturating_since(t));
        line.role = if since.is_none_or(|d| d > self.config.cluster.lease) {
            "silent"
        } else if node.witness {
            "witness"
        } else if view.lease_claim && view.owner == Some(i) {
            "owner"
        } else {
            "follower"
        }
        .to_string();
        line.last_heard_ms = since.map(ms);
        line.term = view.term;
        line.owner = view.owner.map(|o| self.id(o));
        line.eligible = view.eligible;
        line.position = view.position;
        line.priority = view.priority;
        line.rtt_us = self.net.rtt_us.get(usize::from(i)).copied().flatten();
        line.database = self
            .gate
            .peer(i)
            .map(|(at, r)| peer_db(r, now.saturating_since(*at)));
        line
    }
}

fn peer_db(report: &DbReport, age: Duration) -> PeerDb {
    PeerDb {
        healthy: report.healthy,
        writable: report.writable,
        replicating: report.replicating,
        lag_s: report.lag_s,
        gtid: report.gtid.clone(),
        age_ms: ms(age),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Event, Heartbeat, Message, PersistentState};
    use std::path::Path;

    fn at(ms: u64) -> Instant {
        Instant::from_micros(ms * 1000)
    }

    /// db1's agent at 0, its core and gate as `heard` leaves them.
    fn agent(me: NodeIdx, heard: impl FnOnce(&mut Core, &mut Gate)) -> (Config, Core, Gate) {
        let config = Config::parse(Path::new("/etc/vipgate/vipgate.toml"), crate::config::TEST_LAB).unwrap();
        let mut core = Core::new(config.core_settings(me, 1), PersistentState::default(), at(0));
        let mut gate = Gate::new(config.gate_settings(me), None, at(0));
        heard(&mut core, &mut gate);
        (config, core, gate)
    }

    fn view<'a>(config: &'a Config, core: &'a Core, gate: &'a Gate, me: NodeIdx) -> View<'a> {
        View {
            config,
            me,
            core,
            gate,
            started: at(0),
            net: Net::default(),
            local: Local::default(),
            counters: Counters::default(),
        }
    }

    fn heartbeat(term: u64, owner: Option<NodeIdx>, eligible: bool) -> Message {
        Message::Heartbeat(Heartbeat {
            term,
            seq: 1,
            owner,
            lease_claim: owner.is_some(),
            eligible,
            blocked: false,
            preferred: true,
            position: 7,
            priority: 100,
        })
    }

    #[test]
    fn peers_are_shown_as_last_heard_and_silent_after_a_lease() {
        let (config, core, gate) = agent(0, |core, gate| {
            core.handle(
                at(100),
                Event::Received {
                    from: 1,
                    message: heartbeat(3, Some(1), true),
                },
            );
            core.handle(
                at(100),
                Event::Received {
                    from: 2,
                    message: heartbeat(3, Some(1), false),
                },
            );
            let report = DbReport {
                healthy: true,
                writable: true,
                gtid: "0-2-7".into(),
                ..DbReport::default()
            };
            gate.handle(
                at(150),
                crate::gate::machine::Event::Peer {
                    from: 1,
                    report,
                    position: 7,
                },
            );
        });
        let s = view(&config, &core, &gate, 0).status(at(300));
        assert_eq!(
            (s.node.as_str(), s.role.as_str(), s.quiet_remaining_ms),
            ("db1", "follower", 700)
        );
        assert_eq!(s.vips, ["192.0.2.50/24 on eth0"]);
        let db2 = &s.peers[1];
        assert_eq!(
            (db2.role.as_str(), db2.owner.as_deref(), db2.term),
            ("owner", Some("db2"), 3)
        );
        assert_eq!(
            (db2.last_heard_ms, db2.position, db2.eligible),
            (Some(200), 7, true)
        );
        let db = db2.database.as_ref().expect("db2's report is shown");
        assert_eq!(
            (db.summary(), db.gtid.as_str(), db.age_ms),
            ("writable".into(), "0-2-7", 150)
        );
        assert_eq!(s.peers[2].role, "witness");
        assert_eq!(s.peers[0].role, "follower", "this node's own line");
        let later = view(&config, &core, &gate, 0).status(at(1200));
        assert_eq!(later.peers[1].role, "silent", "not heard within a lease");
        assert_eq!(later.quiet_remaining_ms, 0);
    }

    #[test]
    fn a_witness_shows_no_vips_and_its_local_state_and_counters_pass_through() {
        let (config, core, gate) = agent(2, |_, _| {});
        let mut v = view(&config, &core, &gate, 2);
        v.net.send_errors = 2;
        v.net.dropped.insert("bad MAC".into(), 5);
        v.local.takeover_block = Some("anti-flap window".into());
        v.local.failover_block_left = Duration::from_millis(1500);
        v.counters.first_grant = Some(Duration::from_millis(1001));
        let s = v.status(at(10));
        assert_eq!((s.role.as_str(), s.vips.len(), s.owner), ("witness", 0, None));
        assert_eq!(s.dropped.get("send failed"), Some(&2));
        assert_eq!(s.dropped.get("bad MAC"), Some(&5));
        assert!(s.takeover_blocked && s.takeover_blocked_reason.as_deref() == Some("anti-flap window"));
        assert_eq!(
            (s.failover_block_remaining_ms, s.first_grant_after_start_ms),
            (Some(1500), Some(1001))
        );
        assert_eq!(s.peers.iter().filter(|p| p.role == "silent").count(), 2);
    }
}
