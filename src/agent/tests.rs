//! The agent's loop over fake effects: its socket is a pair of channels through which the test
//! plays the peers (each a real ownership core), its VIP task is a channel the test answers,
//! and the control socket is the request channel. No network, no root, no database.

use super::*;
use crate::config::Secret;
use crate::core::{PersistentState, Release};
use crate::net::transport::{Pipe, Socket};
use crate::net::{Codec, Receiver};
use std::path::Path;

/// db1 (this agent), db2 and the witness w1, default timings; in promote mode, or in gate mode
/// without a database.
fn config(promote: bool) -> Config {
    let lab = crate::config::TEST_LAB;
    let text = match promote {
        true => lab.split("[dns]").next(),
        false => lab.split("[mysql]").next(),
    };
    let text = text.expect("the lab config");
    Config::parse(Path::new("/etc/vipgate/vipgate.toml"), text).expect("the lab config parses")
}

const SECRET: &[u8] = b"a secret of the agent's test cluster";

fn codec(config: &Config, me: NodeIdx) -> Codec {
    let ids = config.nodes.iter().map(|n| n.id.clone()).collect();
    let timing = config.core_settings(me, 0).timing();
    Codec::new(
        &config.cluster.name,
        SECRET,
        config.fingerprint(),
        timing,
        ids,
        me,
    )
}

/// What the agent did, as the test sees it.
enum Seen {
    Sent { to: NodeIdx, datagram: Datagram },
    Vip(Command),
    Job(database::Job),
}

/// A peer played by the test: a real core, and the codec and filter of its node.
struct Peer {
    me: NodeIdx,
    core: Core,
    codec: Codec,
    receiver: Receiver,
    counter: u64,
    /// Terms in which this peer acquired ownership.
    acquired: Vec<Term>,
    /// Its database, reported with each heartbeat.
    report: Option<DbReport>,
}

/// The test's end of the agent's effects, and the peers.
struct Harness {
    config: Config,
    out: mpsc::UnboundedReceiver<(SocketAddr, Vec<u8>)>,
    inbox: mpsc::UnboundedSender<Vec<u8>>,
    vip_commands: mpsc::UnboundedReceiver<Command>,
    vip_reports: mpsc::UnboundedSender<Report>,
    control: mpsc::Sender<Request>,
    peers: Vec<Peer>,
    /// Promote mode: the local database's checks, the job queue and the jobs' outcomes.
    probe: Option<watch::Sender<DbStatus>>,
    jobs: mpsc::UnboundedReceiver<database::Job>,
    outcomes: mpsc::UnboundedSender<database::Outcome>,
}

/// Promote mode: the local database as the probe would report it, its job queue and outcomes.
fn fake_database(
    config: &Config,
    status: DbStatus,
) -> (
    start::Database,
    watch::Sender<DbStatus>,
    mpsc::UnboundedReceiver<database::Job>,
) {
    let (probe, status) = watch::channel(status);
    let (jobs, jobs_rx) = mpsc::unbounded_channel();
    let mysql = config.mysql.clone().expect("promote mode has [mysql]");
    let database = start::Database {
        status: Some(status),
        settings: None,
        mysql: Some((mysql, None)),
        jobs: Some(jobs),
    };
    (database, probe, jobs_rx)
}

/// db2 and w1, fresh.
fn peers(config: &Config) -> Vec<Peer> {
    let now = clock::now();
    (1..3)
        .map(|me| Peer {
            me,
            core: Core::new(
                config.core_settings(me, u64::from(me)),
                PersistentState::default(),
                now,
            ),
            codec: codec(config, me),
            receiver: Receiver::new(codec(config, me), 3),
            counter: 0,
            acquired: Vec::new(),
            report: None,
        })
        .collect()
}

/// Agent db1 assembled over fake effects, with its state in `dir`, and the harness around it;
/// in promote mode when given its database's first check.
fn agent(dir: &Path, database: Option<DbStatus>) -> (Agent, Harness) {
    let config = config(database.is_some());
    let ids: Vec<String> = config.nodes.iter().map(|n| n.id.clone()).collect();
    let (out_tx, out) = mpsc::unbounded_channel();
    let (inbox, inbox_rx) = mpsc::unbounded_channel();
    let pipe = Pipe {
        out: out_tx,
        inbox: tokio::sync::Mutex::new(inbox_rx),
    };
    let secrets = start::Secrets {
        cluster: Secret::from_bytes(SECRET.to_vec()),
        mysql: None,
        replication: None,
        update_key: None,
    };
    let net = start::transport(&config, 0, &secrets, Socket::Memory(pipe), 1);
    let (vips, vip_commands) = vip::Vips::detached(config.cluster.interval);
    let (vip_reports, vip_reports_rx) = mpsc::unbounded_channel();
    let (control, control_rx) = mpsc::channel(4);
    let (outcomes_tx, outcomes_rx) = mpsc::unbounded_channel();
    let (database, probe, jobs) = match database {
        Some(status) => {
            let (database, probe, jobs) = fake_database(&config, status);
            (database, Some(probe), jobs)
        }
        None => {
            let none = start::Database {
                status: None,
                settings: None,
                mysql: None,
                jobs: None,
            };
            (none, None, mpsc::unbounded_channel().1)
        }
    };
    let effects = Effects {
        net,
        bind: SocketAddr::new(config.nodes[0].address, config.cluster.port),
        vips: Some(vips),
        vip_reports: vip_reports_rx,
        database,
        db_outcomes: (outcomes_tx.clone(), outcomes_rx),
        dns: (None, None, None),
        dns_push: None,
        control: control_rx,
    };
    let peers = peers(&config);
    let state = StateFile::open(dir, ids).expect("a state file in the test's directory");
    let agent = Agent::assemble(config.clone(), 0, state, effects);
    let harness = Harness {
        config,
        out,
        inbox,
        vip_commands,
        vip_reports,
        control,
        peers,
        probe,
        jobs,
        outcomes: outcomes_tx,
    };
    (agent, harness)
}

impl Harness {
    fn peer_of(&self, to: SocketAddr) -> usize {
        let i = self.config.nodes.iter().position(|n| n.address == to.ip());
        i.expect("the agent sends only to members") - 1
    }

    /// Feeds peer `p` an event, and carries its actions out: messages go to the agent (encoded
    /// with the peer's keys) or straight to the other peer.
    fn feed(&mut self, p: usize, now: Instant, event: Event) {
        let actions = self.peers[p].core.handle(now, event);
        for action in actions {
            let peer = &mut self.peers[p];
            let (targets, message) = match action {
                Action::Send { to, message } => (vec![to], message),
                Action::Broadcast(message @ Message::Heartbeat(_)) => {
                    if let Some(report) = peer.report.clone() {
                        peer.counter += 1;
                        let bytes = peer.codec.encode(0, 7, peer.counter, &Datagram::Db(report));
                        let _ = self.inbox.send(bytes);
                    }
                    ((0..3).filter(|&n| n != peer.me).collect(), message)
                }
                Action::Broadcast(message) => ((0..3).filter(|&n| n != peer.me).collect(), message),
                Action::Acquire { term, .. } => {
                    peer.acquired.push(term);
                    continue;
                }
                _ => continue,
            };
            for to in targets {
                if to == 0 {
                    let peer = &mut self.peers[p];
                    peer.counter += 1;
                    let bytes = peer
                        .codec
                        .encode(0, 7, peer.counter, &Datagram::Core(message.clone()));
                    let _ = self.inbox.send(bytes);
                } else {
                    let from = self.peers[p].me;
                    let event = Event::Received {
                        from,
                        message: message.clone(),
                    };
                    self.feed(usize::from(to) - 1, now, event);
                }
            }
        }
    }

    /// Runs the peers until the agent does something `wanted` picks (given what it saw and the
    /// peers), or panics at `limit`.
    async fn until<T>(&mut self, limit: Duration, wanted: impl FnMut(&Seen, &[Peer]) -> Option<T>) -> T {
        let found = self.pump(limit, wanted).await;
        found.unwrap_or_else(|| panic!("the agent did not do what the test waited for within {limit:?}"))
    }

    /// Runs the peers for `limit` at most, until `wanted` picks something.
    async fn pump<T>(
        &mut self,
        limit: Duration,
        mut wanted: impl FnMut(&Seen, &[Peer]) -> Option<T>,
    ) -> Option<T> {
        let end = clock::now() + limit;
        loop {
            let now = clock::now();
            if now >= end {
                return None;
            }
            let tick = self
                .peers
                .iter()
                .map(|p| p.core.next_deadline(now))
                .min()
                .expect("peers");
            let seen = tokio::select! {
                Some((to, bytes)) = self.out.recv() => {
                    let p = self.peer_of(to);
                    let Some((_, datagram)) = self.peers[p].receiver.accept(&bytes) else { continue };
                    if let Datagram::Core(message) = &datagram {
                        self.feed(p, clock::now(), Event::Received { from: 0, message: message.clone() });
                    }
                    Seen::Sent { to: self.peers[p].me, datagram }
                }
                Some(command) = self.vip_commands.recv() => Seen::Vip(command),
                Some(job) = self.jobs.recv() => Seen::Job(job),
                () = tokio::time::sleep(clock::until(tick.min(end))) => {
                    for p in 0..self.peers.len() {
                        self.feed(p, clock::now(), Event::Tick);
                    }
                    // The probe publishes every check, as the real one does.
                    if let Some(probe) = &self.probe {
                        probe.send_modify(|status| status.checks += 1);
                    }
                    continue;
                }
            };
            if let Some(found) = wanted(&seen, &self.peers) {
                return Some(found);
            }
        }
    }

    /// Peer `p` (db2 is 0, w1 is 1) tells its core how it stands.
    fn health(&mut self, p: usize, eligible: bool) {
        let event = Event::Health {
            eligible,
            position: 0,
            blocked: false,
            preferred: true,
        };
        self.feed(p, clock::now(), event);
    }

    /// The agent's status once `wanted` holds for it, polled while the peers run.
    async fn status_when(
        &mut self,
        limit: Duration,
        wanted: impl Fn(&control::Status) -> bool,
    ) -> control::Status {
        let end = clock::now() + limit;
        loop {
            let status: control::Status = serde_json::from_str(&self.command("status").await).unwrap();
            if wanted(&status) {
                return status;
            }
            assert!(
                clock::now() < end,
                "the agent's status did not become what the test waited for: {status:?}"
            );
            self.pump(Duration::from_millis(50), |_, _| None::<()>).await;
        }
    }

    async fn command(&self, line: &str) -> String {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = Request {
            command: line.into(),
            reply,
        };
        self.control
            .send(request)
            .await
            .expect("the agent takes requests");
        answer.await.expect("the agent answers")
    }
}

/// A planned hand-over: the owner removes its VIPs first, and only once the VIP task confirmed
/// them gone does it tell its peers it released. Until then the successor cannot take over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_is_announced_only_after_the_vip_task_confirms_the_vips_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, mut h) = agent(dir.path(), None);
    let script = async {
        h.health(0, false);
        h.health(1, false);
        let secs = Duration::from_secs;
        let term = h.until(secs(10), |s, _| match s {
            Seen::Vip(Command::Hold { term, .. }) => Some(*term),
            _ => None,
        });
        let term = term.await;
        h.health(0, true);
        // db1 names db2 only once it has heard that db2 could own.
        h.status_when(secs(5), |s| s.peers[1].eligible).await;
        let answer = h.command("switchover db2").await;
        assert!(answer.contains("\"ok\":true"), "{answer}");
        let seq = h.until(secs(5), |s, _| match s {
            Seen::Vip(Command::Drop { term: t, seq, .. }) if *t == term => Some(*seq),
            _ => None,
        });
        let seq = seq.await;
        // While the removal is unconfirmed, nothing announces the release, and db2 waits.
        let early = h.pump(Duration::from_millis(400), |s, _| match s {
            Seen::Sent {
                datagram: Datagram::Core(Message::Release(r)),
                ..
            } => Some(r.clone()),
            _ => None,
        });
        assert_eq!(
            early.await,
            None,
            "a release was announced before the VIPs were confirmed gone"
        );
        assert!(
            h.peers[0].acquired.is_empty(),
            "db2 took over before db1's VIPs were gone"
        );
        h.vip_reports.send(Report::Dropped { term, seq }).unwrap();
        let release = h.until(secs(5), |s, _| match s {
            Seen::Sent {
                to: 1,
                datagram: Datagram::Core(Message::Release(r)),
            } => Some(r.clone()),
            _ => None,
        });
        let Release {
            term: released, to, ..
        } = release.await;
        assert_eq!((released, to), (term, Some(1)));
        h.until(secs(5), |_, peers| (!peers[0].acquired.is_empty()).then_some(()))
            .await;
        let status = h
            .status_when(secs(5), |s| s.owner.as_deref() == Some("db2"))
            .await;
        assert_eq!(
            (status.role.as_str(), status.transitions.get("acquired")),
            ("follower", Some(&1))
        );
    };
    tokio::select! {
        result = agent.run() => panic!("the agent stopped: {result:?}"),
        () = script => {}
    }
}

/// A replica that has everything: the agent db1's database in the promote-mode tests, and
/// db2's report of its own.
fn replica() -> (DbStatus, DbReport) {
    let status = DbStatus {
        healthy: true,
        checks: 3,
        read_only: Some(true),
        super_read_only: Some(true),
        gtid: Some("0-1-5".into()),
        position: 5,
        ..DbStatus::default()
    };
    let report = DbReport {
        healthy: true,
        gtid: "0-1-5".into(),
        ..DbReport::default()
    };
    (status, report)
}

impl Harness {
    /// Runs until db1 has acquired the lease and asked for its database's promotion (db2 and
    /// the witness cannot own); the VIP must not be held before. The term and its cancel flag.
    async fn until_promotion(&mut self) -> (Term, Arc<std::sync::atomic::AtomicBool>) {
        self.health(0, false);
        self.health(1, false);
        let promote = self.until(Duration::from_secs(10), |s, _| match s {
            Seen::Job(database::Job::Promote { term, cancelled, .. }) => Some((*term, cancelled.clone())),
            Seen::Vip(Command::Hold { .. }) => panic!("the VIP was held before the promotion began"),
            _ => None,
        });
        let (term, cancelled) = promote.await;
        let early = self.pump(Duration::from_millis(400), |s, _| match s {
            Seen::Vip(Command::Hold { term, .. }) => Some(*term),
            _ => None,
        });
        let early = early.await;
        assert_eq!(
            early, None,
            "the VIP was held while the database was still read-only"
        );
        (term, cancelled)
    }
}

/// Promote mode: the VIP follows the promotion. db1 acquires the lease, but holds the VIP only
/// once its database job reports the promotion done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_promote_mode_the_vip_is_held_only_after_the_promotion_is_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let (status, report) = replica();
    let (mut agent, mut h) = agent(dir.path(), Some(status));
    h.peers[0].report = Some(report);
    let script = async {
        let (term, cancelled) = h.until_promotion().await;
        assert!(!cancelled.load(std::sync::atomic::Ordering::SeqCst));
        let promoted = crate::mysql::actions::Promoted {
            applied: "0-1-5".into(),
            caught_up_in: Duration::ZERO,
        };
        let outcome = database::Outcome::Promoted {
            term,
            result: Ok(promoted),
        };
        h.outcomes.send(outcome).unwrap();
        let probe = h.probe.as_ref().expect("promote mode");
        probe.send_modify(|s| (s.read_only, s.super_read_only) = (Some(false), Some(false)));
        let held = h.until(Duration::from_secs(5), |s, _| match s {
            Seen::Vip(Command::Hold { term, .. }) => Some(*term),
            _ => None,
        });
        assert_eq!(held.await, term);
        let status = h.status_when(Duration::from_secs(5), |s| s.role == "owner").await;
        assert_eq!(status.transitions.get("acquired"), Some(&1));
    };
    tokio::select! {
        result = agent.run() => panic!("the agent stopped: {result:?}"),
        () = script => {}
    }
}

/// A promotion that fails (say the replica cannot catch up in time) gives the lease up: the
/// VIP is never held for that term, and the node stays out for the promotion's back-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_promotion_releases_without_ever_holding_the_vip() {
    let dir = tempfile::tempdir().unwrap();
    let (status, report) = replica();
    let (mut agent, mut h) = agent(dir.path(), Some(status));
    h.peers[0].report = Some(report);
    let script = async {
        let (term, _) = h.until_promotion().await;
        let outcome = database::Outcome::Promoted {
            term,
            result: Err("did not catch up within catchup_timeout_ms".into()),
        };
        h.outcomes.send(outcome).unwrap();
        let dropped = h.until(Duration::from_secs(5), |s, _| match s {
            Seen::Vip(Command::Hold { .. }) => panic!("the VIP was held after the promotion failed"),
            Seen::Vip(Command::Drop { term, seq, .. }) => Some((*term, *seq)),
            _ => None,
        });
        let (dropped, seq) = dropped.await;
        assert_eq!(dropped, term);
        h.vip_reports.send(Report::Dropped { term, seq }).unwrap();
        let status = h
            .status_when(Duration::from_secs(5), |s| s.role == "follower")
            .await;
        let reason = status.ineligible_reason.unwrap_or_default();
        assert!(reason.contains("promot"), "{reason}");
    };
    tokio::select! {
        result = agent.run() => panic!("the agent stopped: {result:?}"),
        () = script => {}
    }
}

/// db1 was the last primary it knows of (term 3), but db2 owned term 4 and db1 never saw its
/// database writable: db2 may have written what db1 lacks, so db1 waits — until db2 is heard
/// saying it is a read_only replica of db1's history (its promotion never took).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_primary_waits_for_a_newer_owner_it_never_saw_writable() {
    let dir = tempfile::tempdir().unwrap();
    let ids = vec!["db1".into(), "db2".into(), "w1".into()];
    let mut state = StateFile::open(dir.path(), ids).unwrap();
    state.set_last_primary((3, 0), 5).unwrap();
    state.set_last_holder(Some((4, 1))).unwrap();
    drop(state);
    let (status, mut report) = replica();
    let (mut agent, mut h) = agent(dir.path(), Some(status));
    let script = async {
        h.health(0, false);
        h.health(1, false);
        let secs = Duration::from_secs;
        let waiting = h
            .status_when(secs(5), |s| s.database.as_ref().is_some_and(|d| d.checks > 3))
            .await;
        let why = waiting.ineligible_reason.unwrap_or_default();
        assert!(!waiting.eligible && why.contains("db2 owned term 4"), "{why}");
        report.follows_owner = true;
        h.peers[0].report = Some(report);
        h.status_when(secs(5), |s| s.eligible).await;
    };
    tokio::select! {
        result = agent.run() => panic!("the agent stopped: {result:?}"),
        () = script => {}
    }
}

/// db1 is a replica of the last primary db2, below where db2 was when it became primary (it did
/// not follow it), and db2 is gone: db1 stays out — what db2 had may be nowhere else — until an
/// operator accepts the loss with `failover-ack`, for this history only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_caught_up_stands_only_after_failover_ack() {
    let dir = tempfile::tempdir().unwrap();
    let ids = vec!["db1".into(), "db2".into(), "w1".into()];
    let mut state = StateFile::open(dir.path(), ids).unwrap();
    state.set_last_primary((3, 1), 40).unwrap();
    state.set_last_holder(Some((3, 1))).unwrap();
    drop(state);
    let (mut status, _) = replica();
    status.replication = Some(crate::mysql::probe::Replication {
        source: "192.0.2.12".into(),
        sql_running: true,
        applied_all_received: true,
        ..Default::default()
    });
    status.lag_s = Some(0);
    let (mut agent, mut h) = agent(dir.path(), Some(status));
    let script = async {
        h.health(0, false);
        h.health(1, false);
        let secs = Duration::from_secs;
        let waiting = h
            .status_when(secs(5), |s| s.database.as_ref().is_some_and(|d| d.checks > 3))
            .await;
        let why = waiting.ineligible_reason.unwrap_or_default();
        assert!(
            !waiting.eligible && why.contains("below the last owner's 40"),
            "{why}"
        );
        let answer = h.command("failover-ack").await;
        assert!(answer.contains("\"ok\":true"), "{answer}");
        h.status_when(secs(5), |s| s.eligible).await;
    };
    tokio::select! {
        result = agent.run() => panic!("the agent stopped: {result:?}"),
        () = script => {}
    }
}
