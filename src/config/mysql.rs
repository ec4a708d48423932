//! `[mysql]`: how the agent reaches its own database, and what it may do with it.

use super::{Problems, Seg};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMysql {
    mode: String,
    host: Option<String>,
    port: Option<i64>,
    socket: Option<PathBuf>,
    user: String,
    password_file: Option<PathBuf>,
    #[serde(default = "default_interval")]
    check_interval_ms: u64,
    #[serde(default = "default_timeout")]
    check_timeout_ms: u64,
    #[serde(default = "default_rise")]
    rise: i64,
    #[serde(default = "default_fall")]
    fall: i64,
    #[serde(default = "default_max_lag")]
    max_lag_ms: u64,
    #[serde(default = "default_catchup")]
    catchup_timeout_ms: u64,
    #[serde(default = "default_kill_grace")]
    kill_grace_ms: u64,
    #[serde(default = "default_failover_block")]
    failover_block_ms: u64,
    replication_user: Option<String>,
    replication_password_file: Option<PathBuf>,
    replication_port: Option<i64>,
}

fn default_interval() -> u64 {
    1_000
}
fn default_timeout() -> u64 {
    1_000
}
fn default_rise() -> i64 {
    2
}
fn default_fall() -> i64 {
    3
}
fn default_max_lag() -> u64 {
    10_000
}
fn default_catchup() -> u64 {
    30_000
}
fn default_kill_grace() -> u64 {
    1_000
}
/// One hour, like orchestrator's RecoveryPeriodBlockSeconds (MHA: eight hours).
fn default_failover_block() -> u64 {
    3_600_000
}
/// Longest anti-flap window: 30 days (it travels in milliseconds as a 32-bit number).
const MAX_FAILOVER_BLOCK_MS: u64 = 30 * 24 * 3_600_000;

/// What vipgate does with the local database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MysqlMode {
    /// vipgate manages read_only and replication: the owner catches up and promotes its
    /// database before taking the VIP; every other node keeps its database read_only.
    Promote,
    /// Never writes to it: the node may own only while its database is healthy and writable
    /// (`read_only = OFF`), for setups where another tool promotes.
    Gate,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Socket(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
            Endpoint::Socket(path) => write!(f, "{}", path.display()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mysql {
    pub mode: MysqlMode,
    pub endpoint: Endpoint,
    pub user: String,
    /// Read when the agent starts (owner-only permissions, like the cluster secret).
    pub password_file: Option<PathBuf>,
    pub check_interval: Duration,
    /// Bound on each connect and each query: a hung server counts as a failed check.
    pub check_timeout: Duration,
    /// Consecutive good checks before a failing database counts as healthy again.
    pub rise: u32,
    /// Consecutive failed checks before a healthy database counts as failing.
    pub fall: u32,
    /// Promote mode: a replica further behind than this is not eligible.
    pub max_lag: Duration,
    /// Promote mode: how long a new owner waits for its replica to apply what it received.
    pub catchup_timeout: Duration,
    /// Promote mode: after fencing (read_only ON), client connections are killed this much later.
    pub kill_grace: Duration,
    /// Promote mode: after an automatic failover, no other automatic failover for this long
    /// (planned hand-overs are not blocked; `vipgate failover-ack` lifts it). Zero: off.
    pub failover_block: Duration,
    /// Promote mode: how a former primary (or any replica) re-points itself at the new owner's
    /// database. `None`: it is left fenced and out of replication for an operator.
    pub replication: Option<ReplicationAccount>,
}

/// The account replicas use to connect to the primary's database, on the owner node's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationAccount {
    pub user: String,
    pub password_file: Option<PathBuf>,
    pub port: u16,
}

impl Mysql {
    /// The longest a dead or hung database goes unnoticed: `fall` checks, each up to an
    /// interval apart and bounded by the timeout.
    pub fn detection_bound(&self) -> Duration {
        self.check_interval * self.fall + self.check_timeout
    }
}

pub(super) fn validate(raw: &RawMysql, base: &Path, p: &mut Problems<'_>) -> Option<Mysql> {
    let mode = mode(raw, p);
    let endpoint = endpoint(raw, base, p);
    if raw.user.is_empty() {
        p.add(
            &at("user"),
            "is empty".into(),
            "name the account vipgate uses (docs/mysql.md lists its GRANT)",
        );
    }
    check_timings(raw, p);
    let replication_port = replication_port(raw, p);
    Some(Mysql {
        mode: mode?,
        endpoint: endpoint?,
        user: raw.user.clone(),
        password_file: raw.password_file.as_ref().map(|f| base.join(f)),
        check_interval: Duration::from_millis(raw.check_interval_ms),
        check_timeout: Duration::from_millis(raw.check_timeout_ms),
        rise: raw.rise.clamp(1, 100) as u32,
        fall: raw.fall.clamp(1, 100) as u32,
        max_lag: Duration::from_millis(raw.max_lag_ms),
        catchup_timeout: Duration::from_millis(raw.catchup_timeout_ms),
        kill_grace: Duration::from_millis(raw.kill_grace_ms),
        failover_block: Duration::from_millis(raw.failover_block_ms.min(MAX_FAILOVER_BLOCK_MS)),
        replication: raw.replication_user.clone().map(|user| ReplicationAccount {
            user,
            password_file: raw.replication_password_file.as_ref().map(|f| base.join(f)),
            port: replication_port,
        }),
    })
}

/// The path of a key of `[mysql]`.
fn at(key: &'static str) -> [Seg<'static>; 2] {
    [Seg::Key("mysql"), Seg::Key(key)]
}

fn mode(raw: &RawMysql, p: &mut Problems<'_>) -> Option<MysqlMode> {
    match raw.mode.as_str() {
        "promote" => Some(MysqlMode::Promote),
        "gate" => Some(MysqlMode::Gate),
        "none" => None,
        other => {
            p.add(
                &at("mode"),
                format!("{other:?} is not a mode"),
                "use \"promote\" (vipgate promotes and fences), \"gate\" (follow the writable database) \
                 or \"none\" (ignore the database)",
            );
            None
        }
    }
}

/// A Unix socket or a TCP host and port, never both.
fn endpoint(raw: &RawMysql, base: &Path, p: &mut Problems<'_>) -> Option<Endpoint> {
    match (&raw.socket, &raw.host) {
        (Some(_), Some(_)) => {
            p.add(
                &at("socket"),
                "both socket and host are set".into(),
                "keep one: socket for a local server's Unix socket, or host (and port) for TCP",
            );
            None
        }
        (Some(socket), None) => {
            if raw.port.is_some() {
                p.add(
                    &at("port"),
                    "port is set with socket".into(),
                    "remove port, or use host instead of socket",
                );
            }
            Some(Endpoint::Socket(base.join(socket)))
        }
        (None, host) => {
            let port = raw.port.unwrap_or(3306);
            let Some(port) = u16::try_from(port).ok().filter(|p| *p > 0) else {
                p.add(
                    &at("port"),
                    format!("{port} is not a TCP port"),
                    "use 1 to 65535 (3306 is usual)",
                );
                return None;
            };
            let host = host.clone().unwrap_or_else(|| "127.0.0.1".into());
            Some(Endpoint::Tcp { host, port })
        }
    }
}

/// Check interval and timeout, catch-up, the anti-flap window, rise and fall.
fn check_timings(raw: &RawMysql, p: &mut Problems<'_>) {
    if raw.check_interval_ms < 50 {
        p.add(
            &at("check_interval_ms"),
            format!("{} ms would load the database with checks", raw.check_interval_ms),
            "use at least 50 ms (1000 ms is the default)",
        );
    }
    if raw.check_timeout_ms < 10 || raw.check_timeout_ms > raw.check_interval_ms.max(10) {
        p.add(
            &at("check_timeout_ms"),
            format!(
                "{} ms must be between 10 ms and the check interval ({} ms)",
                raw.check_timeout_ms, raw.check_interval_ms
            ),
            "a check must end before the next one starts; lower the timeout or raise the interval",
        );
    }
    if raw.catchup_timeout_ms < 100 {
        p.add(
            &at("catchup_timeout_ms"),
            format!(
                "{} ms leaves a new primary no time to apply what it received",
                raw.catchup_timeout_ms
            ),
            "use at least 100 ms (30000 ms is the default)",
        );
    }
    if raw.failover_block_ms > MAX_FAILOVER_BLOCK_MS {
        p.add(
            &at("failover_block_ms"),
            format!("{} ms is longer than 30 days", raw.failover_block_ms),
            "use at most 2592000000 (30 days); 3600000 (one hour) is the default, 0 turns the block off",
        );
    }
    for (key, value) in [("rise", raw.rise), ("fall", raw.fall)] {
        if !(1..=100).contains(&value) {
            p.add(
                &at(key),
                format!("{value} is outside 1–100"),
                "use a small count of consecutive checks, e.g. 2 or 3",
            );
        }
    }
}

/// The replication account's keys, consistent; the port replicas connect to.
fn replication_port(raw: &RawMysql, p: &mut Problems<'_>) -> u16 {
    if raw.replication_user.as_deref() == Some("") {
        p.add(
            &at("replication_user"),
            "is empty".into(),
            "name the account replicas connect with (REPLICATION SLAVE), or remove the key to leave rejoining to an operator",
        );
    }
    if raw.replication_user.is_none()
        && (raw.replication_password_file.is_some() || raw.replication_port.is_some())
    {
        p.add(
            &at("replication_user"),
            "replication_password_file or replication_port is set without replication_user".into(),
            "add replication_user, or remove the other replication_* keys",
        );
    }
    let port = u16::try_from(raw.replication_port.unwrap_or(3306)).ok();
    match port.filter(|p| *p > 0) {
        Some(port) => port,
        None => {
            p.add(
                &at("replication_port"),
                format!("{:?} is not a TCP port", raw.replication_port),
                "use the port the databases listen on (3306 is usual)",
            );
            3306
        }
    }
}
