//! The control socket: how `vipgate status` (and later other commands) talk to a running agent.
//!
//! A Unix stream socket at `[control] socket`, owner-only. A client writes one command line
//! (`status`) and reads one JSON document back; the connection then closes. Requests are
//! bounded in size and time, and answered by the agent loop from its own state, so what the
//! CLI prints is exactly what the agent acts on.

pub mod command;
pub mod http;
pub mod metrics;
pub mod view;

pub use command::Command;

use crate::mysql::DbStatus;
use crate::vip::VipStatus;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

const MAX_REQUEST: u64 = 256;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Control clients served at once.
pub const MAX_CLIENTS: usize = 16;

/// The embedded name server of one agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsStatus {
    /// Addresses it serves on (UDP and TCP).
    pub listen: Vec<String>,
    /// The owner the primary record answers now; `None`: SERVFAIL (no quorate owner known).
    pub primary_for: Option<String>,
    /// The SOA serial published.
    pub serial: u32,
    /// Answers sent, by response code.
    pub answers: BTreeMap<String, u64>,
    /// Queries not answered in full, by why: `rate_limited` (UDP, over the source's rate),
    /// `truncated` (UDP, answer too large for the query), `malformed` (TCP, not DNS).
    #[serde(default)]
    pub limited: BTreeMap<String, u64>,
    /// `[dns.update]`: the latest result of pushing the primary record to the DNS server.
    #[serde(default)]
    pub update: Option<String>,
}

/// One agent's view of the cluster, as `vipgate status --json` prints it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub node: String,
    pub cluster: String,
    pub boot: u64,
    pub role: String,
    pub term: u64,
    /// Whom this agent considers the owner (itself, or the holder of its live grant).
    pub owner: Option<String>,
    /// While owner: time left on the lease.
    pub lease_remaining_ms: Option<u64>,
    /// The lease this agent supports: to whom, in which term, for how much longer.
    pub grant: Option<GrantStatus>,
    pub eligible: bool,
    /// Why this node may not own, when it may not.
    pub ineligible_reason: Option<String>,
    /// After a restart the agent neither votes nor acknowledges for one lease.
    pub quiet_remaining_ms: u64,
    pub vips: Vec<String>,
    pub vip: VipStatus,
    /// The local database's health, when `[mysql]` gates this node.
    pub database: Option<DbStatus>,
    /// Promote mode: this database has transactions the primary lacks, and stays out.
    pub diverged: Option<String>,
    /// `vipgate maintenance on`: this node does not own.
    pub maintenance: bool,
    /// The embedded name server, if this node serves DNS.
    #[serde(default)]
    pub dns: Option<DnsStatus>,
    /// Promote mode: what is left of the anti-flap window after the last automatic failover.
    #[serde(default)]
    pub failover_block_remaining_ms: Option<u64>,
    /// The window keeps this node from taking over unless a releasing owner names it.
    #[serde(default)]
    pub takeover_blocked: bool,
    /// Why (the anti-flap window, or another region than the last owner's).
    #[serde(default)]
    pub takeover_blocked_reason: Option<String>,
    pub peers: Vec<PeerStatus>,
    pub sent: u64,
    pub received: u64,
    /// Votes granted plus lease acknowledgements sent.
    pub grants_sent: u64,
    /// How long after start this agent first granted a vote or acknowledged a lease: never
    /// less than one lease, since it may have granted one before a restart.
    pub first_grant_after_start_ms: Option<u64>,
    /// Dropped datagrams by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Ownership transitions of this agent, by reason (`acquired`, or why it released).
    #[serde(default)]
    pub transitions: BTreeMap<String, u64>,
    /// How long the last `promotion` and the last `fence` took, in milliseconds.
    #[serde(default)]
    pub step_ms: BTreeMap<String, u64>,
    /// `[hooks]` runs by event and result (`owner ok`, `release failed`, `fence timed out`).
    #[serde(default)]
    pub hook_runs: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantStatus {
    pub to: String,
    pub term: u64,
    pub remaining_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerStatus {
    pub id: String,
    pub address: String,
    pub witness: bool,
    /// Milliseconds since its last heartbeat; `None` if never heard.
    pub last_heard_ms: Option<u64>,
    pub term: u64,
    /// Whom the peer considers the owner.
    pub owner: Option<String>,
    /// owner, follower, witness, or silent (not heard within a lease).
    pub role: String,
    pub eligible: bool,
    pub position: u64,
    pub priority: u8,
    /// Its database, as its agent last reported it.
    pub database: Option<PeerDb>,
    /// Its region ("" when regions are not used).
    #[serde(default)]
    pub region: String,
    /// While this node owns: the last round trip from a heartbeat to this peer's ack, in µs.
    #[serde(default)]
    pub rtt_us: Option<u64>,
}

/// A node's database as its own agent reports it to its peers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerDb {
    pub healthy: bool,
    pub writable: bool,
    pub replicating: bool,
    pub lag_s: Option<u32>,
    pub gtid: String,
    /// How old the report is.
    pub age_ms: u64,
}

impl PeerDb {
    /// A few characters for the status table.
    fn summary(&self) -> String {
        match (self.healthy, self.writable, self.replicating) {
            (false, _, _) => "FAILING".into(),
            (true, true, _) => "writable".into(),
            (true, false, true) => format!("replica {}", self.lag_s.map_or("?".into(), |s| format!("{s}s"))),
            (true, false, false) => "read-only".into(),
        }
    }
}

/// A request from the socket, answered by the agent loop.
pub struct Request {
    pub command: String,
    pub reply: oneshot::Sender<String>,
}

/// Commands that change nothing, open to the `status_group` too.
fn read_only(command: &str) -> bool {
    Command::parse(command).is_ok_and(|c| c.changes_nothing())
}

/// Binds the control socket (replacing a stale one) and serves it until the runtime stops.
/// Root and the agent's own user may send every command; members of `status_group` (the
/// socket's group then) only those that change nothing.
pub fn serve(path: &Path, status_group: Option<u32>, requests: mpsc::Sender<Request>) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {} for the control socket: {e}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "{} is in use: another vipgate agent is running with this configuration",
                path.display()
            ));
        }
        let is_socket = std::fs::symlink_metadata(path)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
        if !is_socket {
            return Err(format!(
                "{} exists and is not a socket: vipgate removes only a stale socket of its own\n  \
                 fix: move that file away, or set [control] socket to another path",
                path.display()
            ));
        }
        std::fs::remove_file(path).map_err(|e| format!("cannot remove stale {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
    if let Some(gid) = status_group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| format!("cannot give {} to group {gid}: {e}", path.display()))?;
    }
    let mode = if status_group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
    tokio::spawn(accept_loop(listener, requests));
    Ok(())
}

/// Serves the control socket: at most [`MAX_CLIENTS`] at once, each within twice
/// [`CLIENT_TIMEOUT`]; out of descriptors, it waits instead of spinning.
async fn accept_loop(listener: UnixListener, requests: mpsc::Sender<Request>) {
    use std::sync::Arc;
    use tokio::sync::Semaphore;
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    // Members of the status group hold at most half: root and the agent's user always find a
    // slot, however many readers there are.
    let guest_slots = Arc::new(Semaphore::new(MAX_CLIENTS / 2));
    let me = nix::unistd::geteuid().as_raw();
    let mut errors = crate::net::admission::AcceptErrors::default();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                errors.note("control socket", &e);
                tokio::time::sleep(crate::net::admission::accept_backoff(&e)).await;
                continue;
            }
        };
        let privileged = stream.peer_cred().is_ok_and(|c| c.uid() == 0 || c.uid() == me);
        let guest = match privileged {
            true => None,
            false => match guest_slots.clone().try_acquire_owned() {
                Ok(g) => Some(g),
                Err(_) => continue,
            },
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            let served = answer(stream, privileged, requests);
            let _ = tokio::time::timeout(2 * CLIENT_TIMEOUT, served).await;
            drop((slot, guest));
        });
    }
}

async fn answer(stream: tokio::net::UnixStream, privileged: bool, requests: mpsc::Sender<Request>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let read = tokio::time::timeout(CLIENT_TIMEOUT, reader.read_line(&mut line)).await;
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        return;
    }
    if !privileged && !read_only(&line) {
        let refusal = serde_json::json!({
            "ok": false,
            "error": "only root and the agent's user may change anything; members of the status group may read status",
        });
        let _ = write.write_all(format!("{refusal}\n").as_bytes()).await;
        return;
    }
    let (tx, rx) = oneshot::channel();
    let request = Request {
        command: line.trim().to_string(),
        reply: tx,
    };
    if requests.send(request).await.is_err() {
        return;
    }
    if let Ok(Ok(answer)) = tokio::time::timeout(CLIENT_TIMEOUT, rx).await {
        let _ = write.write_all(answer.as_bytes()).await;
        let _ = write.write_all(b"\n").await;
    }
}

/// Sends `command` to the agent at `path` and returns its answer.
pub fn request(path: &Path, command: &str) -> Result<String, String> {
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot reach the agent at {}: {e}\n  fix: is `vipgate run` running? Pass --config (or --socket) \
             for the agent's [control] socket",
            path.display()
        )
    })?;
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(CLIENT_TIMEOUT)))
        .map_err(|e| format!("control socket: {e}"))?;
    // MSG_NOSIGNAL: an agent that closes its end mid-request is an error to report, not a
    // SIGPIPE (command-line tools run with SIGPIPE's default action).
    let line = format!("{command}\n");
    let mut rest = line.as_bytes();
    while !rest.is_empty() {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let sent = nix::sys::socket::send(fd, rest, nix::sys::socket::MsgFlags::MSG_NOSIGNAL)
            .map_err(|e| format!("sending to {}: {e}", path.display()))?;
        rest = &rest[sent..];
    }
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("reading from {}: {e}", path.display()))?;
    if answer.is_empty() {
        return Err(format!(
            "the agent at {} closed the connection without answering",
            path.display()
        ));
    }
    Ok(answer)
}

fn secs(ms: u64) -> String {
    format!("{:.2} s", ms as f64 / 1000.0)
}

/// The compact table `vipgate status` prints.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    render_head(&mut out, s);
    render_vips(&mut out, s);
    render_services(&mut out, s);
    let _ = writeln!(out);
    render_peers(&mut out, s);
    let _ = writeln!(out);
    render_datagrams(&mut out, s);
    out
}

/// Who this node is, whom it sees owning, its lease and why it may not own.
fn render_head(out: &mut String, s: &Status) {
    let lease = match (s.lease_remaining_ms, &s.grant) {
        (Some(ms), _) => format!("lease {} left", secs(ms)),
        (None, Some(g)) => format!("granting {} (term {}) for {}", g.to, g.term, secs(g.remaining_ms)),
        (None, None) => "no live lease known".to_string(),
    };
    let owner = s.owner.as_deref().unwrap_or("none");
    let _ = writeln!(
        out,
        "{} ({})  {}  term {}  owner {}  {}",
        s.node, s.cluster, s.role, s.term, owner, lease
    );
    if let Some(reason) = &s.ineligible_reason {
        let _ = writeln!(out, "not eligible: {reason}");
    }
    if s.quiet_remaining_ms > 0 {
        let _ = writeln!(
            out,
            "restarted: not voting for another {}",
            secs(s.quiet_remaining_ms)
        );
    }
}

/// The VIPs held, the kernel fence and the backstop.
fn render_vips(out: &mut String, s: &Status) {
    let held = if s.vip.held.is_empty() {
        "none".to_string()
    } else {
        s.vip.held.join(", ")
    };
    let _ = writeln!(
        out,
        "VIPs held: {held}  (announced {} frames, re-added {}, errors {})",
        s.vip.announced, s.vip.readded, s.vip.errors
    );
    if !s.vips.is_empty() {
        let fence = if s.vip.fenced {
            "kernel (nftables inet/arp vipgate): the VIPs stop being served at the lease deadline, agent or not"
        } else {
            "OFF ([fence] kernel = false): a dead agent's VIPs are served until their lifetime ends"
        };
        let _ = writeln!(out, "fence: {fence}");
    }
    if s.vip.backstop_fired > 0 {
        let _ = writeln!(
            out,
            "backstop: removed the VIPs at the lease deadline {} time(s) (the agent loop had stalled)",
            s.vip.backstop_fired
        );
    }
}

/// The database, DNS, and what blocks a takeover.
fn render_services(out: &mut String, s: &Status) {
    if let Some(db) = &s.database {
        let _ = writeln!(out, "database: {}", describe_db(db));
    }
    if let Some(d) = &s.diverged {
        let _ = writeln!(out, "DIVERGED: {d}");
    }
    if let Some(u) = s.dns.as_ref().and_then(|d| d.update.as_ref()) {
        let _ = writeln!(out, "DNS update: {u}");
    }
    if let Some(d) = s.dns.as_ref().filter(|d| !d.listen.is_empty()) {
        let answers = (d.answers.iter().chain(&d.limited))
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let primary = (d.primary_for.as_ref()).map_or("SERVFAIL (no quorate owner known)".to_string(), |o| {
            format!("→ {o}")
        });
        let _ = writeln!(
            out,
            "DNS on {}: primary record {primary} (serial {}); answers {answers}",
            d.listen.join(", "),
            d.serial,
        );
    }
    if let Some(ms) = s.failover_block_remaining_ms {
        let left = if ms >= 120_000 {
            format!("{} min", ms.div_ceil(60_000))
        } else {
            secs(ms)
        };
        let _ = writeln!(
            out,
            "failover block: {left} left after the last automatic failover; `vipgate failover-ack` lifts it"
        );
    }
    if let Some(why) = &s.takeover_blocked_reason {
        let _ = writeln!(out, "takes over only when the owner names it: {why}");
    }
}

/// One row per member.
fn render_peers(out: &mut String, s: &Status) {
    let _ = writeln!(
        out,
        "{:<12} {:<8} {:<10} {:<8} {:>6}  {:<10} {:>8}  {:<12} LAST HEARD",
        "NODE", "REGION", "ROLE", "ELIGIBLE", "TERM", "SEES OWNER", "PRIORITY", "DATABASE"
    );
    for p in &s.peers {
        let me = p.id == s.node;
        let name = if me { format!("{}*", p.id) } else { p.id.clone() };
        let heard = match (me, p.last_heard_ms) {
            (true, _) => "(this node)".to_string(),
            (false, Some(ms)) => format!("{} ago", secs(ms)),
            (false, None) => "never".to_string(),
        };
        // What a silent node said last may no longer hold.
        let silent = p.role == "silent";
        let eligible = match (p.witness, silent, p.eligible) {
            (true, _, _) => "-",
            (false, true, _) => "?",
            (false, false, true) => "yes",
            (false, false, false) => "no",
        };
        let priority = if p.witness {
            "-".to_string()
        } else {
            p.priority.to_string()
        };
        let database = match &p.database {
            None => "-".to_string(),
            Some(_) if silent => "?".to_string(),
            Some(db) => db.summary(),
        };
        let region = if p.region.is_empty() { "-" } else { &p.region };
        let owner = p.owner.as_deref().unwrap_or("-");
        let _ = writeln!(
            out,
            "{name:<12} {region:<8} {:<10} {eligible:<8} {:>6}  {owner:<10} {priority:>8}  {database:<12} {heard}",
            p.role, p.term,
        );
    }
}

fn render_datagrams(out: &mut String, s: &Status) {
    let dropped: Vec<String> = (s.dropped.iter())
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    let dropped = if dropped.is_empty() {
        "none".to_string()
    } else {
        dropped.join(", ")
    };
    let _ = writeln!(
        out,
        "datagrams: sent {}, accepted {}, dropped {dropped}",
        s.sent, s.received
    );
}

/// One line about the local database for the status table.
fn describe_db(db: &DbStatus) -> String {
    let mut parts = vec![if db.healthy {
        "healthy".to_string()
    } else {
        "NOT healthy".to_string()
    }];
    if let Some(p) = &db.problem {
        parts.push(p.clone());
    }
    match db.read_only {
        Some(true) => parts.push("read_only ON".into()),
        Some(false) => parts.push("writable".into()),
        None => {}
    }
    if let Some(r) = &db.replication {
        let lag = r
            .seconds_behind
            .map_or("lag unknown".to_string(), |s| format!("{s} s behind"));
        let threads = if r.io_running && r.sql_running {
            "running"
        } else {
            "STOPPED"
        };
        parts.push(format!("replica of {} ({threads}, {lag})", r.source));
    }
    if let Some(gtid) = &db.gtid {
        parts.push(format!("GTID {gtid}"));
    }
    if let Some(v) = &db.version {
        parts.push(v.clone());
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_table_says_who_owns_what_each_peer_sees_and_what_blocks() {
        let mut status: Status = serde_json::from_str(include_str!("metrics_test_status.json")).unwrap();
        status.failover_block_remaining_ms = Some(3_600_000);
        status.peers[1].role = "silent".into();
        let text = render(&status);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("db1 (lab)  owner  term 4  owner db1  lease 0.85 s left"),
            "{text}"
        );
        assert!(
            text.contains("VIPs held: 192.0.2.50/24 on eth0  (announced 10 frames"),
            "{text}"
        );
        assert!(text.contains("failover block: 60 min left"), "{text}");
        let row = |id: &str| {
            lines
                .iter()
                .find(|l| l.starts_with(id))
                .copied()
                .unwrap_or_default()
        };
        assert!(
            row("db1*").contains("owner") && row("db1*").contains("(this node)"),
            "{text}"
        );
        let db2: Vec<&str> = row("db2 ").split_whitespace().collect();
        assert_eq!(db2[..4], ["db2", "-", "silent", "?"], "{text}");
        assert!(
            text.ends_with("datagrams: sent 100, accepted 90, dropped bad MAC 3\n"),
            "{text}"
        );
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_left_alone_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        std::fs::write(&path, "an operator's notes").unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let err = serve(&path, None, tx).unwrap_err();
        assert!(err.contains("is not a socket") && err.contains("fix:"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "an operator's notes");
    }
}
