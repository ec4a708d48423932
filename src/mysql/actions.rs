//! What promote mode does to the local database: fence it, promote it, kill its clients.
//!
//! Each function opens its own connection and is bounded by the deadline it is given; the agent
//! runs them as tasks and gets their outcome back as an event. Only this node's database is
//! ever touched.

use super::dialect::{Dialect, code};
use super::probe::{self, Row};
use super::{options, server_code};
use crate::config::{Mysql, Secret};
use crate::kernel::reset;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::{Instant, timeout_at};

/// Bound on resolving the replication source's name during a promotion.
const RESOLVE_LIMIT: Duration = Duration::from_millis(200);

/// Threads of these users or commands are never killed: replication, the server's own.
const SPARED_USERS: [&str; 2] = ["system user", "event_scheduler"];

async fn connect(config: &Mysql, password: &Option<Secret>, deadline: Instant) -> Result<Conn, String> {
    match timeout_at(deadline, Conn::new(options(config, password))).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("cannot connect to the database: {e}")),
        Err(_) => Err("the database did not accept a connection in time".into()),
    }
}

async fn bounded<T>(
    deadline: Instant,
    what: &str,
    f: impl Future<Output = Result<T, mysql_async::Error>>,
) -> Result<T, String> {
    match timeout_at(deadline, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer before the deadline")),
    }
}

async fn dialect(c: &mut Conn, deadline: Instant) -> Result<Dialect, String> {
    let v: Option<String> =
        bounded(deadline, "reading the version", c.query_first("SELECT @@version")).await?;
    Ok(Dialect::of_version(&v.unwrap_or_default()))
}

/// Why a fence did not complete.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// Nothing listens where the server should be (connection refused, no socket file). A
    /// server that is not running takes no writes; whether it comes back read_only is up to its
    /// option file (`read_only = ON`) and, failing that, to the next health check, which fences
    /// a writable database this node does not own.
    #[error("the database is not running ({0})")]
    NotRunning(String),
    #[error("{0}")]
    Failed(String),
}

/// Makes the database refuse writes: `read_only = ON` (and `super_read_only` on MySQL).
///
/// Setting read_only waits for commits in progress. A commit that cannot finish — typically one
/// waiting for a semi-sync acknowledgement from a replica that was just promoted — would hold
/// the fence back until the semi-sync timeout. So if the first half of the time passes, client
/// connections are killed first (their clients must never see those commits acknowledged),
/// then semi-sync is switched off here (it releases the waiting commits, which stay on this
/// server only: it has diverged, and rejoining will say so), then read_only is set again.
///
/// Returns the database's final position: its executed GTIDs, and their count.
pub async fn fence(
    config: &Mysql,
    password: &Option<Secret>,
    deadline: Instant,
) -> Result<(u64, String), FenceError> {
    let c = match timeout_at(deadline, Conn::new(options(config, password))).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) if super::not_running(&e) => return Err(FenceError::NotRunning(e.to_string())),
        Ok(Err(e)) => return Err(FenceError::Failed(format!("cannot connect to the database: {e}"))),
        Err(_) => {
            return Err(FenceError::Failed(
                "the database did not accept a connection in time".into(),
            ));
        }
    };
    let failed = FenceError::Failed;
    fence_on(c, config, password, deadline).await.map_err(failed)?;
    // With writes refused, this is the database's final position: a planned successor waits
    // for exactly this.
    let mut c = connect(config, password, deadline).await.map_err(failed)?;
    let dialect = dialect(&mut c, deadline).await.map_err(failed)?;
    let gtid = executed(&mut c, dialect, deadline).await.map_err(failed)?;
    let _ = timeout_at(deadline, c.disconnect()).await;
    Ok((probe::gtid_position(&gtid).map_err(failed)?, gtid))
}

/// The local executed GTIDs.
async fn executed(c: &mut Conn, dialect: Dialect, deadline: Instant) -> Result<String, String> {
    let sql = dialect.executed_gtids();
    let gtid: Option<String> = bounded(deadline, sql, c.query_first(sql)).await?;
    Ok(gtid.unwrap_or_default())
}

/// Whether this database has applied every transaction of `target` (a GTID set as the old
/// primary's `executed` read it). `None` when that cannot be told, e.g. a set cut for the wire.
async fn has_applied(
    c: &mut Conn,
    dialect: Dialect,
    target: &str,
    deadline: Instant,
) -> Result<Option<bool>, String> {
    if target.is_empty() || target.ends_with('…') {
        return Ok(None);
    }
    if dialect == Dialect::MariaDb {
        let local = executed(c, dialect, deadline).await?;
        return Ok(mariadb_covers(&local, target));
    }
    let covered: Option<i64> = bounded(
        deadline,
        "GTID_SUBSET",
        c.exec_first("SELECT GTID_SUBSET(?, @@GLOBAL.gtid_executed)", (target,)),
    )
    .await?;
    Ok(covered.map(|v| v == 1))
}

/// What a (re)starting agent does before anything else: it holds no lease, so its database
/// must not take writes — read_only ON, then every client connection killed, so that clients
/// reconnect through the VIP to whoever owns it. Returns the number of connections killed.
pub async fn fence_at_start(
    config: &Mysql,
    password: &Option<Secret>,
    deadline: Instant,
) -> Result<u32, String> {
    // Clients first: a commit waiting for a replica that has moved on would hold read_only
    // back. Then again, for any that connected in between.
    let first = kill_clients(config, password, deadline).await?;
    fence_only(config, password, deadline).await?;
    Ok(first + kill_clients(config, password, deadline).await?)
}

async fn fence_only(config: &Mysql, password: &Option<Secret>, deadline: Instant) -> Result<(), String> {
    let c = connect(config, password, deadline).await?;
    fence_on(c, config, password, deadline).await
}

async fn fence_on(
    mut c: Conn,
    config: &Mysql,
    password: &Option<Secret>,
    deadline: Instant,
) -> Result<(), String> {
    let dialect = dialect(&mut c, deadline).await?;
    let sql = dialect.fence();
    let now = Instant::now();
    let first_try = now + deadline.saturating_duration_since(now) / 2;
    match timeout_at(first_try, c.query_drop(sql)).await {
        Ok(Ok(())) => {
            let _ = timeout_at(deadline, c.disconnect()).await;
            Ok(())
        }
        Ok(Err(e)) => Err(format!("{sql}: {e}")),
        Err(_) => {
            // The stuck connection is a client like any other: it goes too.
            drop(c);
            let killed = kill_clients(config, password, deadline).await?;
            tracing::warn!(
                "read_only was held back by commits in progress: killed {killed} connection(s), \
                 switching semi-sync off on this fenced server"
            );
            let mut c = connect(config, password, deadline).await?;
            // The replica side goes on: this server will replicate next, and a later rejoin
            // only keeps semi-sync where one of its sides is on.
            for off in dialect.semi_sync_off_for_fence() {
                match timeout_at(deadline, c.query_drop(*off)).await {
                    Ok(Ok(())) => {}
                    // Not loaded here (unknown variable): nothing to switch off.
                    Ok(Err(e)) if server_code(&e) == Some(code::UNKNOWN_SYSTEM_VARIABLE) => {}
                    Ok(Err(e)) => return Err(format!("{off}: {e}")),
                    Err(_) => return Err(format!("{off}: no answer before the deadline")),
                }
            }
            bounded(deadline, sql, c.query_drop(sql)).await?;
            let _ = timeout_at(deadline, c.disconnect()).await;
            Ok(())
        }
    }
}

/// What a promotion did, for the log.
#[derive(Debug)]
pub struct Promoted {
    /// The GTIDs the replica had received when its I/O thread stopped (empty if it was not one).
    pub applied: String,
    pub caught_up_in: Duration,
}

/// Turns the local replica into a writable primary: stop receiving, apply everything received
/// (bounded by `catchup_deadline`), stop replication, `read_only = OFF`.
/// `cancelled` is checked before each step that changes the database: once ownership ends the
/// promotion stops, and never makes the database writable.
///
/// `wait_for`: in a planned switchover, the old primary's final position; replication keeps
/// running until this database has applied that much, so nothing it wrote is left behind.
pub async fn promote(
    config: &Mysql,
    password: &Option<Secret>,
    catchup_deadline: Instant,
    cancelled: &AtomicBool,
    wait_for: Option<(u64, String)>,
) -> Result<Promoted, String> {
    let started = Instant::now();
    let mut c = connect(config, password, catchup_deadline).await?;
    let dialect = dialect(&mut c, catchup_deadline).await?;
    if let Some((target, gtid)) = wait_for {
        loop {
            if cancelled.load(Ordering::SeqCst) {
                return Err("ownership ended while waiting for the old primary's final position".into());
            }
            // Exactly the old primary's GTIDs where they came along; else as many transactions.
            let now = probe::gtid_position(&executed(&mut c, dialect, catchup_deadline).await?)?;
            let done = match has_applied(&mut c, dialect, &gtid, catchup_deadline).await? {
                Some(covered) => covered,
                None => now >= target,
            };
            if done {
                break;
            }
            if Instant::now() + Duration::from_millis(20) >= catchup_deadline {
                return Err(format!(
                    "did not reach the old primary's final position ({}; {now} of {target} transactions) \
                     within the catch-up timeout",
                    if gtid.is_empty() {
                        "GTIDs unknown"
                    } else {
                        gtid.as_str()
                    }
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut stopped = false;
    let result = promote_on(&mut c, dialect, catchup_deadline, cancelled, &mut stopped).await;
    if result.is_err() && stopped {
        // Not promoted: keep receiving from the current source, or this replica would fall
        // silently behind a primary that may still be alive.
        let start = dialect.start_replica();
        let again = Instant::now() + Duration::from_secs(1);
        if let Err(e) = bounded(again, start, c.query_drop(start)).await {
            tracing::error!("after the failed promotion, replication could not be restarted: {e}");
        }
    }
    let applied = result?;
    // The connection is not waited for: the promotion is done.
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), c.disconnect()).await;
    });
    Ok(Promoted {
        applied,
        caught_up_in: started.elapsed(),
    })
}

async fn promote_on(
    c: &mut Conn,
    dialect: Dialect,
    deadline: Instant,
    cancelled: &AtomicBool,
    stopped: &mut bool,
) -> Result<String, String> {
    let check = || {
        if cancelled.load(Ordering::SeqCst) {
            Err("ownership ended during the promotion".to_string())
        } else {
            Ok(())
        }
    };
    let mut applied = String::new();
    if let Some(row) = replica_row(c, deadline).await? {
        // Freeze what was received, then wait until all of it is applied.
        check()?;
        *stopped = true;
        if let Err(e) = kill_io_thread(c, deadline).await {
            tracing::warn!("{e}; stopping it normally");
        }
        stop_io_thread(c, dialect, probe::source_endpoint(&row), deadline).await?;
        let row = replica_row(c, deadline).await?.unwrap_or_default();
        let replica = probe::replication(&row)?;
        applied = replica.received_gtid.clone();
        if !replica.applied_all_received {
            wait_applied(c, dialect, &replica.received_gtid, deadline, cancelled).await?;
        }
        check()?;
        stop(c, dialect, "", deadline).await?;
    }
    let writable = dialect.unfence();
    check()?;
    // Before the first write: this primary's commits wait for a replica's acknowledgement.
    if let Err(e) = semi_sync_for(c, Role::Primary, deadline).await {
        tracing::error!("{e}: this primary's commits are not semi-synchronous");
    }
    bounded(deadline, writable, c.query_drop(writable)).await?;
    Ok(applied)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Primary,
    Replica,
}

/// Semi-synchronous replication follows the role, on a server that uses it at all (one of its
/// `rpl_semi_sync_*_enabled` variables is ON): a primary waits for acknowledgements
/// (`…master_enabled` / `…source_enabled` ON), a replica sends them (`…slave_enabled` /
/// `…replica_enabled` ON, its primary side OFF). Without this, after the first failover the
/// new primary would acknowledge writes no replica has, and the next failover could lose them.
async fn semi_sync_for(c: &mut Conn, role: Role, deadline: Instant) -> Result<(), String> {
    let vars: Vec<(String, String)> = bounded(
        deadline,
        "reading the semi-sync settings",
        c.query("SHOW GLOBAL VARIABLES LIKE 'rpl_semi_sync_%enabled'"),
    )
    .await?;
    if !vars.iter().any(|(_, v)| v.eq_ignore_ascii_case("ON")) {
        return Ok(());
    }
    for (name, value) in &vars {
        let primary_side = name.contains("master") || name.contains("source");
        let want = match (role, primary_side) {
            (Role::Primary, true) | (Role::Replica, false) => "ON",
            (Role::Replica, true) => "OFF",
            // Matters only once this server replicates again, which sets it then.
            (Role::Primary, false) => continue,
        };
        if !value.eq_ignore_ascii_case(want) {
            let sql = format!("SET GLOBAL {name} = {want}");
            bounded(deadline, &sql, c.query_drop(sql.as_str())).await?;
        }
    }
    Ok(())
}

/// `STOP REPLICA [thread]`, or `STOP SLAVE` where the server predates the new name.
async fn stop(c: &mut Conn, dialect: Dialect, thread: &str, deadline: Instant) -> Result<(), String> {
    let old = format!("STOP SLAVE {thread}");
    if dialect == Dialect::MySql {
        let new = format!("STOP REPLICA {thread}");
        match timeout_at(deadline, c.query_drop(new.as_str())).await {
            Ok(Ok(())) => return Ok(()),
            // Before MySQL 8.0.22.
            Ok(Err(e)) if server_code(&e) == Some(code::PARSE_ERROR) => {}
            Ok(Err(e)) => return Err(format!("{new}: {e}")),
            Err(_) => return Err(format!("{new}: no answer before the deadline")),
        }
    }
    bounded(deadline, &old, c.query_drop(old.as_str())).await
}

/// `STOP SLAVE IO_THREAD`, while the host's connections to the source are reset (see
/// [`crate::kernel::reset`]) every 10 ms until it returns. After a host crash the killed I/O
/// thread may be blocked on the vanished source — reading, or connecting again — where neither
/// the kill nor the stop reaches it, and the server re-signals it only two seconds later
/// (measured: 2.0 s in most host-crash runs). A reset connection fails at once.
async fn stop_io_thread(
    c: &mut Conn,
    dialect: Dialect,
    source: Option<(String, u16)>,
    deadline: Instant,
) -> Result<(), String> {
    let targets = match &source {
        Some((host, port)) => source_addresses(host, *port, deadline).await,
        None => Vec::new(),
    };
    let stopping = stop(c, dialect, "IO_THREAD", deadline);
    tokio::pin!(stopping);
    let mut resetting = !targets.is_empty();
    loop {
        if resetting {
            let targets = targets.clone();
            let cut = tokio::task::spawn_blocking(move || reset::reset(|tcp| targets.contains(&tcp.remote)));
            if let Ok(Err(e)) = cut.await {
                tracing::warn!("cannot reset the connections to the replication source: {e}");
                resetting = false;
            }
        }
        tokio::select! {
            result = &mut stopping => return result,
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
}

/// The replication source's addresses: the host as an address, or resolved within
/// [`RESOLVE_LIMIT`] — a slow resolver must not hold a promotion up; without an answer the
/// source's connections are simply not reset.
async fn source_addresses(host: &str, port: u16, deadline: Instant) -> Vec<SocketAddr> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return vec![SocketAddr::new(ip.to_canonical(), port)];
    }
    let limit = deadline.min(Instant::now() + RESOLVE_LIMIT);
    match timeout_at(limit, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => addrs
            .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
            .collect(),
        _ => {
            tracing::warn!(
                "cannot resolve the replication source {host} in time; its connections are not reset"
            );
            Vec::new()
        }
    }
}

/// Kills the replication I/O thread. An I/O thread blocked reading from a source that froze or
/// vanished (no FIN, no RST) ignores `STOP … IO_THREAD` until the server re-signals it, two
/// seconds later on MariaDB; killing it is immediate (measured: 2009 ms against 8 ms).
async fn kill_io_thread(c: &mut Conn, deadline: Instant) -> Result<(), String> {
    let ids: Vec<u64> = bounded(
        deadline,
        "finding the replication I/O thread",
        c.query(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND = 'Slave_IO' \
             OR (USER = 'system user' AND (STATE LIKE 'Waiting for source%' OR STATE LIKE 'Waiting for master%' \
             OR STATE LIKE 'Connecting to%'))",
        ),
    )
    .await?;
    let mut failed = None;
    for id in ids {
        match timeout_at(deadline, c.query_drop(format!("KILL {id}"))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if server_code(&e) == Some(code::NO_SUCH_THREAD) => {}
            Ok(Err(e)) => failed = Some(format!("KILL {id} (replication I/O thread): {e}")),
            Err(_) => return Err("killing the replication I/O thread: no answer before the deadline".into()),
        }
    }
    failed.map_or(Ok(()), Err)
}

async fn replica_row(c: &mut Conn, deadline: Instant) -> Result<Option<Row>, String> {
    let rows: Vec<mysql_async::Row> = match timeout_at(deadline, c.query("SHOW REPLICA STATUS")).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) if server_code(&e) == Some(code::PARSE_ERROR) => {
            bounded(deadline, "SHOW SLAVE STATUS", c.query("SHOW SLAVE STATUS")).await?
        }
        Ok(Err(e)) => return Err(format!("SHOW REPLICA STATUS: {e}")),
        Err(_) => return Err("SHOW REPLICA STATUS: no answer before the deadline".into()),
    };
    Ok(rows.first().map(super::to_row))
}

/// Waits until the GTIDs in `received` are applied, or fails at the deadline — in short slices,
/// so that a cancelled promotion stops waiting at once.
async fn wait_applied(
    c: &mut Conn,
    dialect: Dialect,
    received: &str,
    deadline: Instant,
    cancelled: &AtomicBool,
) -> Result<(), String> {
    if received.is_empty() {
        return Err(
            "the replica has unapplied events but reports no received GTIDs; catch-up needs GTIDs".into(),
        );
    }
    let sql = dialect.wait_for_gtids();
    const SLICE: f64 = 0.2;
    loop {
        if cancelled.load(Ordering::SeqCst) {
            return Err("ownership ended during the catch-up".into());
        }
        let left = deadline.saturating_duration_since(Instant::now()).as_secs_f64();
        if left <= 0.0 {
            return Err(format!(
                "the replica did not apply everything it received ({received}) within the catch-up timeout"
            ));
        }
        let result: Option<i64> = bounded(
            deadline,
            "waiting for catch-up",
            c.exec_first(sql, (received, left.min(SLICE))),
        )
        .await?;
        if result == Some(0) {
            return Ok(());
        }
    }
}

/// Kills every client connection except replication, system threads and this one.
/// Returns how many were killed.
pub async fn kill_clients(
    config: &Mysql,
    password: &Option<Secret>,
    deadline: Instant,
) -> Result<u32, String> {
    let mut c = connect(config, password, deadline).await?;
    let me: Option<u64> = bounded(
        deadline,
        "CONNECTION_ID()",
        c.query_first("SELECT CONNECTION_ID()"),
    )
    .await?;
    let rows: Vec<mysql_async::Row> =
        bounded(deadline, "SHOW PROCESSLIST", c.query("SHOW FULL PROCESSLIST")).await?;
    let mut killed = 0;
    for row in rows.iter().map(super::to_row) {
        let get = |name: &str| row.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.clone());
        let (Some(id), user, command) = (
            get("Id").and_then(|v| v.parse::<u64>().ok()),
            get("User"),
            get("Command"),
        ) else {
            continue;
        };
        let user = user.unwrap_or_default();
        let command = command.unwrap_or_default();
        let replication =
            command.starts_with("Binlog Dump") || command == "Slave_IO" || command == "Slave_SQL";
        // The agent's own sessions (its probe) are spared too.
        let own = user == config.user;
        if Some(id) == me
            || own
            || replication
            || SPARED_USERS.contains(&user.as_str())
            || command == "Daemon"
        {
            continue;
        }
        match timeout_at(deadline, c.query_drop(format!("KILL {id}"))).await {
            Ok(Ok(())) => killed += 1,
            // Gone already (1094 unknown thread) is fine; one we may not kill (1095, e.g. a
            // MySQL SYSTEM_USER session) must not stop the others being killed.
            Ok(Err(e)) if server_code(&e) == Some(code::NO_SUCH_THREAD) => {}
            Ok(Err(e)) => tracing::warn!("KILL {id} ({user}): {e}"),
            Err(_) => return Err("killing connections: no answer before the deadline".into()),
        }
    }
    let _ = timeout_at(deadline, c.disconnect()).await;
    Ok(killed)
}

/// Where and how to replicate from the new primary.
pub struct Source<'a> {
    pub host: String,
    pub port: u16,
    pub user: &'a str,
    pub password: &'a str,
    /// The new primary's executed GTIDs as it last reported them.
    pub gtid: &'a str,
}

/// How a rejoin went.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejoin {
    /// Replicating from the new primary.
    Replicating,
    /// This database has transactions the new primary lacks: it must not replicate (its extra
    /// transactions would be silently kept, the seed's MMM replication break). `count` when the
    /// server can tell.
    Diverged { detail: String, count: Option<u64> },
}

/// MariaDB: the transactions in `local` (a `gtid_binlog_state`: the last GTID of every
/// domain and server) that `remote` (the new primary's) lacks, as (domain-server, first
/// missing, last) ranges with their count. `None` when `remote` has never seen a server whose
/// transactions `local` has: then nothing can be said from the states alone.
///
/// Within a domain a server's sequence numbers grow by one per transaction it writes while it
/// is the only writer — which a primary that went on writing while cut off was — so the gap
/// between the two states' last numbers for that server is the count.
pub fn mariadb_extra(local: &str, remote: &str) -> Option<(Vec<String>, u64)> {
    let (local, remote) = (parse_gtids(local)?, parse_gtids(remote)?);
    let mut ranges = Vec::new();
    let mut count = 0;
    for (domain, server, seq) in local {
        let theirs = remote
            .iter()
            .find(|(d, s, _)| *d == domain && *s == server)
            .map(|(_, _, n)| *n);
        match theirs {
            Some(n) if n >= seq => {}
            Some(n) => {
                ranges.push(if n + 1 == seq {
                    format!("{domain}-{server}-{seq}")
                } else {
                    format!("{domain}-{server}-{}..{domain}-{server}-{seq}", n + 1)
                });
                count += seq - n;
            }
            None => return None,
        }
    }
    Some((ranges, count))
}

/// MariaDB: whether `local` (a `gtid_current_pos`: the last GTID of each domain) includes every
/// GTID of `target`. Within a domain one history numbers its transactions in order, so a
/// domain is covered once its last sequence number has reached the target's. `None` when
/// either is not a GTID list.
pub fn mariadb_covers(local: &str, target: &str) -> Option<bool> {
    let (local, target) = (parse_gtids(local)?, parse_gtids(target)?);
    Some(
        target
            .iter()
            .all(|(domain, _, seq)| local.iter().any(|(d, _, n)| d == domain && n >= seq)),
    )
}

/// `domain-server-sequence` GTIDs, comma-separated; `None` if anything else is in the list.
fn parse_gtids(text: &str) -> Option<Vec<(u32, u32, u64)>> {
    text.split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(|g| {
            let mut parts = g.split('-');
            let domain = parts.next()?.parse().ok()?;
            let server = parts.next()?.parse().ok()?;
            let seq = parts.next()?.parse().ok()?;
            parts.next().is_none().then_some((domain, server, seq))
        })
        .collect()
}

/// The new primary's `gtid_binlog_state`, read with the replication account (reading a system
/// variable needs no privilege).
async fn source_binlog_state(source: &Source<'_>, deadline: Instant) -> Result<String, String> {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(source.host.clone())
        .tcp_port(source.port)
        .prefer_socket(false)
        .user(Some(source.user.to_string()))
        .pass(Some(source.password.to_string()));
    let mut c = match timeout_at(deadline, Conn::new(opts)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(format!("cannot connect to the new primary: {e}")),
        Err(_) => return Err("the new primary did not accept a connection in time".into()),
    };
    let state: Option<String> = bounded(
        deadline,
        "reading the new primary's gtid_binlog_state",
        c.query_first("SELECT @@GLOBAL.gtid_binlog_state"),
    )
    .await?;
    let _ = timeout_at(deadline, c.disconnect()).await;
    Ok(state.unwrap_or_default())
}

/// A SQL string literal, for a session with `NO_BACKSLASH_ESCAPES`.
/// Re-points this (fenced) database's replication at `source`, but only if it has no
/// transactions `source` lacks. MySQL compares GTID sets first; MariaDB asks the source to
/// stream from this server's own position (`current_pos`), which in strict mode the source
/// refuses (error 1236) if that position is not in its history.
pub async fn rejoin(
    config: &Mysql,
    password: &Option<Secret>,
    source: &Source<'_>,
    deadline: Instant,
    cancelled: &AtomicBool,
) -> Result<Rejoin, String> {
    let mut c = connect(config, password, deadline).await?;
    let dialect = dialect(&mut c, deadline).await?;
    if let Some(diverged) = divergence(&mut c, dialect, source, deadline).await? {
        return Ok(diverged);
    }
    let check = || {
        if cancelled.load(Ordering::SeqCst) {
            Err("this node became owner".to_string())
        } else {
            Ok(())
        }
    };
    check()?;
    repoint(&mut c, dialect, source, deadline, &check).await?;
    let result = await_replicating(&mut c, dialect, deadline, cancelled).await;
    if matches!(result, Ok(Rejoin::Replicating)) {
        let _ = timeout_at(deadline, c.disconnect()).await;
    }
    result
}

/// Transactions this database has that `source` lacks, when that can be told before
/// connecting. MariaDB compares binlog states; without an answer, connecting decides (the new
/// primary refuses a position it lacks with error 1236), only without a count. MySQL subtracts
/// the source's GTID set from its own.
async fn divergence(
    c: &mut Conn,
    dialect: Dialect,
    source: &Source<'_>,
    deadline: Instant,
) -> Result<Option<Rejoin>, String> {
    let lacking = |detail: &str, count| Rejoin::Diverged {
        detail: format!("transactions the new primary lacks: {detail}"),
        count,
    };
    if dialect == Dialect::MariaDb {
        let local: Option<String> = bounded(
            deadline,
            "reading gtid_binlog_state",
            c.query_first("SELECT @@GLOBAL.gtid_binlog_state"),
        )
        .await?;
        return Ok(match source_binlog_state(source, deadline).await {
            Ok(remote) => mariadb_extra(&local.unwrap_or_default(), &remote)
                .filter(|(_, count)| *count > 0)
                .map(|(ranges, count)| lacking(&ranges.join(", "), Some(count))),
            Err(e) => {
                tracing::warn!("{e}; comparing positions by connecting instead");
                None
            }
        });
    }
    if source.gtid.ends_with('…') {
        return Err("the new primary's GTID set is too long to compare from its report".into());
    }
    let extra: Option<String> = bounded(
        deadline,
        "comparing GTID sets",
        c.exec_first("SELECT GTID_SUBTRACT(@@GLOBAL.gtid_executed, ?)", (source.gtid,)),
    )
    .await?;
    let extra = extra.unwrap_or_default();
    Ok((!extra.trim().is_empty()).then(|| lacking(extra.trim(), probe::gtid_position(&extra).ok())))
}

/// Stops replication, points it at `source` and starts it; `check` before each change.
async fn repoint(
    c: &mut Conn,
    dialect: Dialect,
    source: &Source<'_>,
    deadline: Instant,
    check: &(impl Fn() -> Result<(), String> + Sync),
) -> Result<(), String> {
    if let Err(e) = kill_io_thread(c, deadline).await {
        tracing::warn!("{e}; stopping it normally");
    }
    stop(c, dialect, "", deadline).await?;
    check()?;
    // Quotes are doubled rather than backslash-escaped, which holds whatever the sql_mode.
    bounded(
        deadline,
        "sql_mode",
        c.query_drop("SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',NO_BACKSLASH_ESCAPES')"),
    )
    .await?;
    let change = dialect.change_source(&source.host, source.port, source.user, source.password);
    bounded(deadline, "CHANGE MASTER", c.query_drop(change)).await?;
    check()?;
    // Before the I/O thread connects: only then does it offer acknowledgements.
    if let Err(e) = semi_sync_for(c, Role::Replica, deadline).await {
        tracing::error!("{e}: this replica does not acknowledge semi-synchronously");
    }
    let start = dialect.start_replica();
    bounded(deadline, start, c.query_drop(start)).await
}

/// Waits for the I/O thread to connect and stay connected for three polls (the source may
/// refuse a moment after it starts), or to be refused (error 1236: divergence).
async fn await_replicating(
    c: &mut Conn,
    dialect: Dialect,
    deadline: Instant,
    cancelled: &AtomicBool,
) -> Result<Rejoin, String> {
    let mut running_polls = 0;
    loop {
        let row = replica_row(c, deadline).await?.unwrap_or_default();
        let replica = probe::replication(&row)?;
        if replica.io_errno == Some(code::SOURCE_REFUSES_POSITION) {
            stop(c, dialect, "", deadline).await?;
            return Ok(Rejoin::Diverged {
                detail: replica
                    .last_error
                    .unwrap_or_else(|| "the new primary refused this server's position".into()),
                count: None,
            });
        }
        if replica.io_running && replica.sql_running && replica.io_errno.is_none() {
            running_polls += 1;
            if running_polls >= 3 {
                return Ok(Rejoin::Replicating);
            }
        } else {
            running_polls = 0;
        }
        // Replication stays configured: it connects on its own once it can. Only the wait ends.
        if cancelled.load(Ordering::SeqCst) {
            return Err("this node became owner".into());
        }
        if Instant::now() + Duration::from_millis(100) >= deadline {
            let _ = stop(c, dialect, "", deadline).await;
            return Err(format!(
                "replication did not start: {}",
                replica
                    .last_error
                    .unwrap_or_else(|| "the I/O thread is still connecting".into())
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{mariadb_covers, mariadb_extra};

    #[test]
    fn mariadb_coverage_is_decided_per_domain() {
        assert_eq!(mariadb_covers("0-2-120", "0-1-120"), Some(true));
        assert_eq!(mariadb_covers("0-1-119", "0-1-120"), Some(false));
        assert_eq!(mariadb_covers("0-1-200,1-1-4", "0-1-120,1-1-5"), Some(false));
        assert_eq!(mariadb_covers("0-1-200,1-1-5", "0-1-120,1-1-5"), Some(true));
        assert_eq!(
            mariadb_covers("1-1-500", "0-1-1"),
            Some(false),
            "a domain it never saw"
        );
        assert_eq!(mariadb_covers("", ""), Some(true));
        assert_eq!(mariadb_covers("0-1-5", "0-1-5…"), None);
    }

    #[test]
    fn mariadb_divergence_is_counted_from_binlog_states() {
        // db1 (server 1) wrote 101..103 while cut off; db2 took over at 100 and wrote on.
        let extra = mariadb_extra("0-2-40,0-1-103", "0-1-100,0-2-150").unwrap();
        assert_eq!(extra, (vec!["0-1-101..0-1-103".to_string()], 3));
        // Nothing the new primary lacks, in several domains.
        assert_eq!(
            mariadb_extra("0-1-101", "0-1-100"),
            Some((vec!["0-1-101".to_string()], 1))
        );
        assert_eq!(
            mariadb_extra("0-1-100, 1-1-7", "0-1-100,0-2-150,1-1-9"),
            Some((vec![], 0))
        );
        assert_eq!(mariadb_extra("", "0-2-5"), Some((vec![], 0)));
        // A server the new primary never saw (no log_slave_updates there?): cannot tell.
        assert_eq!(mariadb_extra("0-3-5", "0-1-100"), None);
        // Not a GTID list: cannot tell either.
        assert_eq!(mariadb_extra("0-1", "0-1-100"), None);
        assert_eq!(mariadb_extra("0-1-2-3", "0-1-100"), None);
    }
}
