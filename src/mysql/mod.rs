//! The database gate: a health probe of this node's own MySQL/MariaDB, in its own task.
//!
//! Every `check_interval` it connects (or reuses its connection) and reads liveness,
//! `read_only` (and `super_read_only` where it exists), replication threads and lag, the GTID
//! position and semi-sync state. The whole check is bounded by `check_timeout`: a hung server
//! (SIGSTOP, a full disk, a lock pile-up) counts as a failed check and never blocks the agent.
//! `fall` failed checks in a row make the database failing, `rise` good ones healthy again.
//! The agent reads the latest [`DbStatus`] from a watch channel. This module never writes to
//! the database.

pub mod actions;
pub mod check;
pub mod dialect;
pub mod probe;

use crate::config::{Endpoint, Mysql, Secret};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Value};
use probe::{Gauge, REFUSING_CODES, Replication, Row};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};

/// The database as the agent sees it, for eligibility and `vipgate status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbStatus {
    /// `fall`/`rise` applied: whether the database counts as healthy.
    pub healthy: bool,
    /// What the last check found wrong, if anything ("timed out", "refusing: …", "down: …").
    pub problem: Option<String>,
    pub checks: u64,
    pub version: Option<String>,
    pub read_only: Option<bool>,
    pub super_read_only: Option<bool>,
    pub replication: Option<Replication>,
    /// Replicas: how far behind the source, in seconds — `Seconds_Behind_*` while connected,
    /// 0 once everything received is applied, else the last value known (the source may be
    /// gone, which is exactly when this matters).
    pub lag_s: Option<u64>,
    /// Replicas: how long the I/O thread has been seen not running (0 while it runs).
    pub io_stopped_ms: Option<u64>,
    /// Executed GTIDs; and the ranking position: the transactions executed or, on a replica,
    /// received (applied or not), whichever count is higher.
    pub gtid: Option<String>,
    pub position: u64,
    pub semi_sync_source: Option<bool>,
    /// How long the last successful check took.
    pub last_check_ms: Option<u64>,
}

/// One check's outcome.
enum Check {
    Ok(Observation),
    /// The server answered but will not serve us (too many connections, access denied, …).
    Refusing(String),
    Down(String),
    /// Nothing listens where the server should be (connection refused, no socket file): the
    /// server is not running. Certain at once — no need to wait for `fall` checks.
    Gone(String),
}

struct Observation {
    version: String,
    read_only: bool,
    super_read_only: Option<bool>,
    replication: Option<Replication>,
    gtid: String,
    position: u64,
    semi_sync_source: Option<bool>,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        other => Some(other.as_sql(true)),
    }
}

pub(crate) fn to_row(row: &mysql_async::Row) -> Row {
    row.columns_ref()
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name_str().into_owned(), row.as_ref(i).and_then(text)))
        .collect()
}

pub(crate) fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// Starts the probe; the receiver always holds the latest status.
/// Starts the probe; the returned sender changes its settings while it runs (a reload keeps
/// the health it has counted so far).
pub fn start(config: Mysql, password: Option<Secret>) -> (watch::Receiver<DbStatus>, watch::Sender<Mysql>) {
    let (tx, rx) = watch::channel(DbStatus::default());
    let (settings, updates) = watch::channel(config);
    tokio::spawn(run(updates, password, tx));
    (rx, settings)
}

pub(crate) fn options(config: &Mysql, password: &Option<Secret>) -> OptsBuilder {
    let pass = password
        .as_ref()
        .map(|p| String::from_utf8_lossy(p.bytes()).into_owned());
    let builder = OptsBuilder::default().user(Some(config.user.clone())).pass(pass);
    match &config.endpoint {
        Endpoint::Tcp { host, port } => builder
            .ip_or_hostname(host.clone())
            .tcp_port(*port)
            .prefer_socket(false),
        Endpoint::Socket(path) => builder.socket(Some(path.to_string_lossy().into_owned())),
    }
}

/// How soon a failed check of a healthy database is followed by the next one (counted from
/// the start of the failed one: after a check that timed out, at once).
const QUICK_RETRY: Duration = Duration::from_millis(50);

async fn run(mut updates: watch::Receiver<Mysql>, password: Option<Secret>, tx: watch::Sender<DbStatus>) {
    let mut config = updates.borrow_and_update().clone();
    let mut gauge = Gauge::new(config.rise, config.fall);
    let mut conn: Option<Conn> = None;
    let mut ticks = tokio::time::interval(config.check_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status = DbStatus::default();
    let mut io_stopped_since: Option<Instant> = None;
    let mut retry_at: Option<Instant> = None;
    loop {
        match retry_at.take() {
            Some(at) => {
                tokio::time::sleep_until(at).await;
                ticks.reset();
            }
            None => {
                ticks.tick().await;
            }
        }
        if updates.has_changed().unwrap_or(false) {
            let next = updates.borrow_and_update().clone();
            gauge.set_thresholds(next.rise, next.fall);
            if next.check_interval != config.check_interval {
                ticks = tokio::time::interval_at(Instant::now() + next.check_interval, next.check_interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            config = next;
        }
        let started = Instant::now();
        let deadline = started + config.check_timeout;
        let check = match timeout_at(deadline, check(&config, &password, &mut conn)).await {
            Ok(check) => check,
            Err(_) => Check::Down(format!(
                "no answer within {} ms",
                config.check_timeout.as_millis()
            )),
        };
        if !matches!(check, Check::Ok(_)) {
            // A connection that failed or hung mid-check is not reused.
            if let Some(c) = conn.take() {
                drop_quietly(c);
            }
        }
        let was_healthy = gauge.healthy();
        // Only a server that did not answer is re-checked soon: one that answers with a
        // refusal (too many connections, access denied during a grants reload) is alive, and
        // counts at the steady interval.
        let quick = matches!(check, Check::Down(_));
        status.checks += 1;
        record(&mut status, &mut gauge, check, started, &mut io_stopped_since);
        status.healthy = gauge.healthy();
        // A healthy database whose check found it down is checked again soon, not a whole
        // interval later: `fall` failures then take `fall` check times, not `fall` intervals.
        if quick && gauge.falling() {
            retry_at = Some(started + QUICK_RETRY.min(config.check_interval));
        }
        if status.healthy != was_healthy {
            match &status.problem {
                Some(p) => tracing::warn!("database at {} is failing: {p}", config.endpoint),
                None => tracing::info!("database at {} is healthy", config.endpoint),
            }
        }
        if tx.send(status.clone()).is_err() {
            return;
        }
    }
}

/// Takes one check's outcome into the status and the gauge.
fn record(
    status: &mut DbStatus,
    gauge: &mut Gauge,
    check: Check,
    started: Instant,
    io_stopped_since: &mut Option<Instant>,
) {
    match check {
        Check::Ok(o) => {
            gauge.record(true);
            status.problem = None;
            status.version = Some(o.version);
            status.read_only = Some(o.read_only);
            status.super_read_only = o.super_read_only;
            status.lag_s = o
                .replication
                .as_ref()
                .and_then(|r| match (r.io_running, r.seconds_behind) {
                    (true, Some(s)) => Some(s),
                    _ if r.applied_all_received => Some(0),
                    _ => status.lag_s,
                });
            *io_stopped_since = match &o.replication {
                Some(r) if !r.io_running => Some(io_stopped_since.unwrap_or(started)),
                _ => None,
            };
            status.io_stopped_ms = o.replication.as_ref().map(|_| {
                io_stopped_since.map_or(0, |t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX))
            });
            status.replication = o.replication;
            status.gtid = Some(o.gtid);
            status.position = o.position;
            status.semi_sync_source = o.semi_sync_source;
            status.last_check_ms = Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        }
        Check::Refusing(e) => {
            gauge.record(false);
            status.problem = Some(format!("refusing: {e}"));
        }
        Check::Down(e) => {
            gauge.record(false);
            status.problem = Some(format!("down: {e}"));
        }
        Check::Gone(e) => {
            gauge.record_gone();
            status.problem = Some(format!("not running: {e}"));
        }
    }
}

/// Closes a connection in the background without waiting for a server that may be hung.
fn drop_quietly(conn: Conn) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.disconnect()).await;
    });
}

async fn check(config: &Mysql, password: &Option<Secret>, conn: &mut Option<Conn>) -> Check {
    let reused = conn.is_some();
    if !reused {
        match Conn::new(options(config, password)).await {
            Ok(c) => *conn = Some(c),
            Err(e) => return classify(&e),
        }
    }
    let c = conn.as_mut().expect("connected above");
    match observe(c).await {
        Ok(o) => Check::Ok(o),
        // A connection that broke (the server died under it, say): one fresh attempt tells a
        // server that is gone from one that is merely slow, within the same check.
        Err(e) if reused && server_code(&e).is_none() => {
            if let Some(c) = conn.take() {
                drop_quietly(c);
            }
            match Conn::new(options(config, password)).await {
                Ok(c) => observe(conn.insert(c))
                    .await
                    .map_or_else(|e| classify(&e), Check::Ok),
                Err(e) => classify(&e),
            }
        }
        Err(e) => classify(&e),
    }
}

fn classify(e: &mysql_async::Error) -> Check {
    match server_code(e) {
        Some(code) if REFUSING_CODES.contains(&code) => Check::Refusing(e.to_string()),
        _ if not_running(e) => Check::Gone(e.to_string()),
        _ => Check::Down(e.to_string()),
    }
}

/// Nothing listens where the server should be: connection refused, or no socket file.
pub(crate) fn not_running(e: &mysql_async::Error) -> bool {
    matches!(
        e,
        mysql_async::Error::Io(mysql_async::IoError::Io(io))
            if matches!(io.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound)
    )
}

async fn observe(c: &mut Conn) -> Result<Observation, mysql_async::Error> {
    let first: Option<mysql_async::Row> = c.query_first("SELECT @@global.read_only, @@version").await?;
    let first = first.map(|r| to_row(&r)).unwrap_or_default();
    let read_only = probe::flag(first.first().and_then(|(_, v)| v.as_deref())).unwrap_or(true);
    let version = first.get(1).and_then(|(_, v)| v.clone()).unwrap_or_default();
    let mariadb = probe::is_mariadb(&version);
    let super_read_only = if mariadb {
        None
    } else {
        let row: Option<mysql_async::Row> = c.query_first("SELECT @@global.super_read_only").await?;
        row.and_then(|r| to_row(&r).first().and_then(|(_, v)| probe::flag(v.as_deref())))
    };
    let rows: Vec<mysql_async::Row> = match c.query("SHOW REPLICA STATUS").await {
        Ok(rows) => rows,
        // Before MySQL 8.0.22 / MariaDB 10.5.1.
        Err(e) if server_code(&e) == Some(dialect::code::PARSE_ERROR) => c.query("SHOW SLAVE STATUS").await?,
        Err(e) => return Err(e),
    };
    let replication = match rows.first() {
        Some(r) => Some(probe::replication(&to_row(r)).map_err(|e| mysql_async::Error::Other(e.into()))?),
        None => None,
    };
    let gtid_query = if mariadb {
        "SELECT @@global.gtid_current_pos"
    } else {
        "SELECT @@global.gtid_executed"
    };
    let gtid: Option<mysql_async::Row> = c.query_first(gtid_query).await?;
    let gtid = gtid
        .and_then(|r| to_row(&r).into_iter().next().and_then(|(_, v)| v))
        .unwrap_or_default();
    // What this server will have once it applies what it received: a replica that received a
    // transaction has it (the promotion applies it), whether or not applied yet.
    let received = replication.as_ref().map_or("", |r| r.received_gtid.as_str());
    let position = probe::union_position(&gtid, received)
        .or_else(|_| probe::gtid_position(&gtid))
        .map_err(|e| mysql_async::Error::Other(e.into()))?;
    let semi: Vec<mysql_async::Row> = c
        .query("SHOW GLOBAL STATUS WHERE Variable_name IN ('Rpl_semi_sync_master_status', 'Rpl_semi_sync_source_status')")
        .await?;
    let semi_sync_source = semi
        .first()
        .and_then(|r| to_row(r).get(1).and_then(|(_, v)| probe::flag(v.as_deref())));
    Ok(Observation {
        version,
        read_only,
        super_read_only,
        replication,
        gtid,
        position,
        semi_sync_source,
    })
}

#[cfg(test)]
mod tests {
    use super::{Check, classify};
    use std::io::{Error, ErrorKind};

    fn io(kind: ErrorKind) -> mysql_async::Error {
        mysql_async::Error::Io(mysql_async::IoError::Io(Error::from(kind)))
    }

    #[test]
    fn nothing_listening_is_certain_and_anything_else_waits_for_fall() {
        assert!(matches!(
            classify(&io(ErrorKind::ConnectionRefused)),
            Check::Gone(_)
        ));
        assert!(
            matches!(classify(&io(ErrorKind::NotFound)), Check::Gone(_)),
            "no socket file"
        );
        for kind in [
            ErrorKind::TimedOut,
            ErrorKind::ConnectionReset,
            ErrorKind::BrokenPipe,
        ] {
            assert!(matches!(classify(&io(kind)), Check::Down(_)), "{kind:?}");
        }
    }
}
