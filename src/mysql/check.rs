//! `vipgate check-config --probe`: connect to the local database once and report what the
//! chosen mode needs and does not have — before the first failover finds out.

use super::probe;
use crate::config::{Mysql, MysqlMode, Secret};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use std::time::Duration;

/// What the probe found; `problems` empty means the database is ready for the mode.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
    pub problems: Vec<String>,
}

/// Global privileges a mode needs, per flavour. Each entry lists accepted spellings.
fn needed(mariadb: bool, mode: MysqlMode) -> Vec<&'static [&'static str]> {
    match (mariadb, mode) {
        (true, MysqlMode::Gate) => vec![&["REPLICA MONITOR", "SLAVE MONITOR", "SUPER"]],
        (true, MysqlMode::Promote) => vec![
            &["PROCESS"],
            &["REPLICA MONITOR", "SLAVE MONITOR", "SUPER"],
            // Since MariaDB 10.11 SUPER no longer includes it.
            &["READ_ONLY ADMIN"],
            &["CONNECTION ADMIN", "SUPER"],
            &["REPLICATION SLAVE ADMIN", "SUPER"],
            &["REPLICATION MASTER ADMIN", "SUPER"],
        ],
        (false, MysqlMode::Gate) => vec![&["REPLICATION CLIENT"]],
        (false, MysqlMode::Promote) => vec![
            &["PROCESS"],
            &["REPLICATION CLIENT"],
            &["SYSTEM_VARIABLES_ADMIN", "SUPER"],
            &["CONNECTION_ADMIN", "SUPER"],
            &["REPLICATION_SLAVE_ADMIN", "SUPER"],
        ],
    }
}

/// The privileges granted on `*.*`, from `SHOW GRANTS` lines.
pub fn global_privileges(grants: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for g in grants {
        let Some(rest) = g.strip_prefix("GRANT ") else {
            continue;
        };
        let Some((privileges, on)) = rest.split_once(" ON ") else {
            continue;
        };
        if !on.trim_start().starts_with("*.*") {
            continue;
        }
        out.extend(privileges.split(',').map(|p| p.trim().to_ascii_uppercase()));
    }
    out
}

/// The needed privileges `granted` lacks, for `mode` on this flavour.
pub fn missing_privileges(mariadb: bool, mode: MysqlMode, granted: &[String]) -> Vec<&'static str> {
    if granted.iter().any(|g| g == "ALL PRIVILEGES" || g == "ALL") {
        return Vec::new();
    }
    needed(mariadb, mode)
        .into_iter()
        .filter(|alternatives| !alternatives.iter().any(|a| granted.iter().any(|g| g == a)))
        .map(|alternatives| alternatives[0])
        .collect()
}

async fn one(c: &mut Conn, sql: &str) -> Result<Option<String>, String> {
    let row: Option<mysql_async::Row> = c.query_first(sql).await.map_err(|e| format!("{sql}: {e}"))?;
    Ok(row.and_then(|r| super::to_row(&r).into_iter().next().and_then(|(_, v)| v)))
}

/// Connects once (bounded by `timeout`) and checks the database against `config`.
pub async fn check(config: &Mysql, password: &Option<Secret>, timeout: Duration) -> Report {
    let mut report = Report::default();
    let result = tokio::time::timeout(timeout, inspect(config, password, &mut report)).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => report.problems.push(e),
        Err(_) => report.problems.push(format!(
            "the database at {} did not answer within {timeout:?}",
            config.endpoint
        )),
    }
    report
}

async fn inspect(config: &Mysql, password: &Option<Secret>, report: &mut Report) -> Result<(), String> {
    let mut c = Conn::new(super::options(config, password))
        .await
        .map_err(|e| format!("cannot connect to {} as {}: {e}", config.endpoint, config.user))?;
    let version = one(&mut c, "SELECT @@version").await?.unwrap_or_default();
    let mariadb = probe::is_mariadb(&version);
    report.lines.push(format!(
        "server    {} {version}",
        if mariadb { "MariaDB" } else { "MySQL" }
    ));
    privileges(&mut c, config, mariadb, report).await?;
    gtid_settings(&mut c, config.mode, mariadb, report).await?;
    semi_sync(&mut c, report).await?;
    let read_only = one(&mut c, "SELECT @@global.read_only").await?;
    let on = probe::flag(read_only.as_deref()) == Some(true);
    report
        .lines
        .push(format!("read_only {}", if on { "ON" } else { "OFF" }));
    let _ = c.disconnect().await;
    Ok(())
}

/// The account's global privileges against what the mode needs.
async fn privileges(c: &mut Conn, config: &Mysql, mariadb: bool, report: &mut Report) -> Result<(), String> {
    let grants: Vec<String> = c
        .query("SHOW GRANTS FOR CURRENT_USER()")
        .await
        .map_err(|e| format!("SHOW GRANTS: {e}"))?;
    let granted = global_privileges(&grants);
    let mode_name = match config.mode {
        MysqlMode::Promote => "promote",
        MysqlMode::Gate => "gate",
    };
    let missing = missing_privileges(mariadb, config.mode, &granted);
    if missing.is_empty() {
        report
            .lines
            .push(format!("privileges all that {mode_name} mode needs"));
    } else {
        report.problems.push(format!(
            "{} lacks {} for {mode_name} mode: GRANT {} ON *.* TO … (docs/mysql.md)",
            config.user,
            missing.join(", "),
            missing.join(", ")
        ));
    }
    Ok(())
}

/// MariaDB's strict GTID mode, MySQL's `gtid_mode`: promote mode relies on them.
async fn gtid_settings(
    c: &mut Conn,
    mode: MysqlMode,
    mariadb: bool,
    report: &mut Report,
) -> Result<(), String> {
    if mariadb {
        let strict = one(c, "SELECT @@global.gtid_strict_mode").await?;
        let pos = one(c, "SELECT @@global.gtid_current_pos")
            .await?
            .unwrap_or_default();
        let strict = probe::flag(strict.as_deref()) == Some(true);
        report.lines.push(format!(
            "gtid      strict mode {}, position {pos}",
            if strict { "ON" } else { "OFF" }
        ));
        if mode == MysqlMode::Promote && !strict {
            report.problems.push(
                "gtid_strict_mode is OFF: a diverged former primary could not be told apart; set gtid_strict_mode = ON"
                    .into(),
            );
        }
        return Ok(());
    }
    let gtid_mode = one(c, "SELECT @@global.gtid_mode").await?.unwrap_or_default();
    report.lines.push(format!("gtid      gtid_mode {gtid_mode}"));
    if mode == MysqlMode::Promote && !gtid_mode.eq_ignore_ascii_case("ON") {
        report.problems.push(format!(
            "gtid_mode is {gtid_mode}: promote mode needs GTIDs; set gtid_mode = ON"
        ));
    }
    Ok(())
}

/// The semi-sync plugins' switches, as they are.
async fn semi_sync(c: &mut Conn, report: &mut Report) -> Result<(), String> {
    let rows: Vec<mysql_async::Row> = c
        .query("SHOW GLOBAL VARIABLES WHERE Variable_name LIKE 'rpl_semi_sync_%enabled'")
        .await
        .map_err(|e| format!("reading semi-sync settings: {e}"))?;
    let semi: Vec<String> = rows
        .iter()
        .map(|r| {
            let row = super::to_row(r);
            let name = row.first().and_then(|(_, v)| v.clone()).unwrap_or_default();
            let value = row.get(1).and_then(|(_, v)| v.clone()).unwrap_or_default();
            format!("{name}={value}")
        })
        .collect();
    let semi = if semi.is_empty() {
        "not available".to_string()
    } else {
        semi.join(", ")
    };
    report.lines.push(format!("semi-sync {semi}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn global_grants_are_read_and_other_scopes_ignored() {
        let g = global_privileges(&lines(&[
            "GRANT PROCESS, SLAVE MONITOR, READ_ONLY ADMIN ON *.* TO `vipgate`@`%` IDENTIFIED BY PASSWORD '*X'",
            "GRANT SELECT, INSERT ON `lab`.* TO `vipgate`@`%`",
        ]));
        assert_eq!(g, ["PROCESS", "SLAVE MONITOR", "READ_ONLY ADMIN"]);
    }

    #[test]
    fn missing_privileges_follow_mode_and_flavour() {
        let mariadb_full = global_privileges(&lines(&[
            "GRANT PROCESS, SLAVE MONITOR, READ_ONLY ADMIN, CONNECTION ADMIN, REPLICATION SLAVE ADMIN, \
             REPLICATION MASTER ADMIN ON *.* TO `v`@`%`",
        ]));
        assert!(missing_privileges(true, MysqlMode::Promote, &mariadb_full).is_empty());
        let monitor_only = lines(&["REPLICA MONITOR"]);
        assert!(missing_privileges(true, MysqlMode::Gate, &monitor_only).is_empty());
        assert_eq!(
            missing_privileges(true, MysqlMode::Promote, &monitor_only),
            [
                "PROCESS",
                "READ_ONLY ADMIN",
                "CONNECTION ADMIN",
                "REPLICATION SLAVE ADMIN",
                "REPLICATION MASTER ADMIN"
            ]
        );
        assert_eq!(
            missing_privileges(false, MysqlMode::Gate, &[]),
            ["REPLICATION CLIENT"]
        );
        assert!(missing_privileges(false, MysqlMode::Promote, &lines(&["ALL PRIVILEGES"])).is_empty());
        let super_user = lines(&["SUPER", "PROCESS", "REPLICATION CLIENT"]);
        assert!(missing_privileges(false, MysqlMode::Promote, &super_user).is_empty());
    }
}
