//! What one health check learnt, read from result rows — pure, so that both flavours (MySQL 8.x
//! and MariaDB) are tested over recorded rows without a server.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One result row as (column name, value) pairs; `None` is SQL NULL.
pub type Row = Vec<(String, Option<String>)>;

/// Server error codes that mean "alive but refusing us" rather than "down" (MHA's list):
/// too many connections, access denied, host blocked, host not allowed, user over limits.
pub const REFUSING_CODES: [u16; 6] = [1040, 1045, 1129, 1130, 1203, 1226];

/// The replication thread state of a replica (`SHOW REPLICA STATUS`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replication {
    pub source: String,
    pub io_running: bool,
    pub sql_running: bool,
    /// `Seconds_Behind_Source` / `_Master`; `None` while not replicating.
    pub seconds_behind: Option<u64>,
    /// Received GTIDs (MySQL `Retrieved_Gtid_Set`, MariaDB `Gtid_IO_Pos`), for catch-up waits.
    pub received_gtid: String,
    /// The SQL thread has applied everything the I/O thread received (same source file and
    /// position): nothing is left to catch up on, whether or not the source is reachable.
    pub applied_all_received: bool,
    pub last_error: Option<String>,
    /// `Last_IO_Errno` when set: 1236 means the source refuses this replica's position.
    pub io_errno: Option<u32>,
}

fn column<'a>(row: &'a Row, names: &[&str]) -> Option<&'a str> {
    row.iter()
        .find(|(name, _)| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
        .and_then(|(_, v)| v.as_deref())
}

/// The replication source's host and port from a `SHOW REPLICA STATUS` row.
pub fn source_endpoint(row: &Row) -> Option<(String, u16)> {
    let host = column(row, &["Source_Host", "Master_Host"]).filter(|h| !h.is_empty())?;
    let port = column(row, &["Source_Port", "Master_Port"])?.parse().ok()?;
    Some((host.to_string(), port))
}

/// Reads a `SHOW REPLICA STATUS` row, whichever flavour's column names it has.
pub fn replication(row: &Row) -> Result<Replication, String> {
    let running = |names: &[&str]| -> Result<bool, String> {
        let v = column(row, names).ok_or_else(|| format!("no {} column in SHOW REPLICA STATUS", names[0]))?;
        // "Connecting" counts as not running: no events arrive.
        Ok(v.eq_ignore_ascii_case("Yes"))
    };
    let errors: Vec<&str> = ["Last_IO_Error", "Last_SQL_Error"]
        .iter()
        .filter_map(|c| column(row, &[c]))
        .filter(|e| !e.is_empty())
        .collect();
    Ok(Replication {
        source: column(row, &["Source_Host", "Master_Host"])
            .unwrap_or_default()
            .to_string(),
        io_running: running(&["Replica_IO_Running", "Slave_IO_Running"])?,
        sql_running: running(&["Replica_SQL_Running", "Slave_SQL_Running"])?,
        seconds_behind: column(row, &["Seconds_Behind_Source", "Seconds_Behind_Master"])
            .and_then(|v| v.parse().ok()),
        received_gtid: column(row, &["Retrieved_Gtid_Set", "Gtid_IO_Pos"])
            .unwrap_or_default()
            .to_string(),
        applied_all_received: {
            let read = (
                column(row, &["Source_Log_File", "Master_Log_File"]),
                column(row, &["Read_Source_Log_Pos", "Read_Master_Log_Pos"]),
            );
            let exec = (
                column(row, &["Relay_Source_Log_File", "Relay_Master_Log_File"]),
                column(row, &["Exec_Source_Log_Pos", "Exec_Master_Log_Pos"]),
            );
            read.0.is_some() && read.1.is_some() && read == exec
        },
        last_error: (!errors.is_empty()).then(|| errors.join("; ")),
        io_errno: column(row, &["Last_IO_Errno"])
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|e| *e != 0),
    })
}

/// How far a server's data has got, as one number for ranking candidates: the number of
/// transactions in its executed GTID set. MariaDB positions (`domain-server-seq,…`) count their
/// sequence numbers; MySQL sets (`uuid:1-42:50-60,…`) the transactions in their intervals. Only
/// comparable between servers replicating the same history, which is what ranking needs.
pub fn gtid_position(gtid: &str) -> Result<u64, String> {
    union_position(gtid, "")
}

/// The position of what a server has executed *or* received: the union of two GTID sets,
/// counted as [`gtid_position`] counts one. MariaDB: per domain the higher sequence number;
/// MySQL: per source (and tag) the merged intervals. A replica's received set may be partial
/// (MySQL empties it when replication is re-pointed), so the union is never below either.
pub fn union_position(a: &str, b: &str) -> Result<u64, String> {
    let mut domains: BTreeMap<String, u64> = BTreeMap::new();
    let mut sources: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for gtid in [a, b] {
        let gtid: String = gtid.chars().filter(|c| !c.is_whitespace()).collect();
        for part in gtid.split(',').filter(|p| !p.is_empty()) {
            add_part(part, &mut domains, &mut sources)
                .map_err(|()| format!("cannot read GTID position {gtid:?}"))?;
        }
    }
    let intervals = sources.into_values().map(|mut v| {
        v.sort_unstable();
        let mut count = 0;
        let mut reach = 0; // everything below is counted
        for (a, b) in v {
            let from = a.max(reach);
            if b >= from {
                count += b - from + 1;
            }
            reach = reach.max(b.saturating_add(1));
        }
        count
    });
    Ok(domains.into_values().sum::<u64>() + intervals.sum::<u64>())
}

/// One element of a GTID set: MariaDB `domain-server-seq`, or MySQL `uuid[:tag]:intervals`.
fn add_part(
    part: &str,
    domains: &mut BTreeMap<String, u64>,
    sources: &mut BTreeMap<String, Vec<(u64, u64)>>,
) -> Result<(), ()> {
    let Some((uuid, intervals)) = part.split_once(':') else {
        let fields: Vec<&str> = part.split('-').collect();
        let [domain, _server, seq] = fields[..] else {
            return Err(());
        };
        let seq: u64 = seq.parse().map_err(|_| ())?;
        let best = domains.entry(domain.to_string()).or_default();
        *best = (*best).max(seq);
        return Ok(());
    };
    let mut key = uuid.to_string();
    for interval in intervals.split(':') {
        // A tagged GTID (MySQL 8.4) "tag:1-5" puts a name where an interval would be.
        let is_tag = interval.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && interval.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if is_tag {
            key = format!("{uuid}:{interval}");
            continue;
        }
        let (a, b) = interval.split_once('-').unwrap_or((interval, interval));
        let (a, b): (u64, u64) = (a.parse().map_err(|_| ())?, b.parse().map_err(|_| ())?);
        if b < a {
            return Err(());
        }
        sources.entry(key.clone()).or_default().push((a, b));
    }
    Ok(())
}

/// Whether a server is MariaDB, from `@@version`.
pub fn is_mariadb(version: &str) -> bool {
    version.to_ascii_lowercase().contains("mariadb")
}

/// Reads a 0/1/ON/OFF variable value.
pub fn flag(value: Option<&str>) -> Option<bool> {
    match value?.to_ascii_uppercase().as_str() {
        "1" | "ON" | "YES" => Some(true),
        "0" | "OFF" | "NO" => Some(false),
        _ => None,
    }
}

/// The hysteresis of the health gate: `fall` failed checks in a row make a healthy database
/// failing, `rise` good ones make a failing database healthy. It starts failing (unknown is
/// not healthy).
#[derive(Clone, Debug)]
pub struct Gauge {
    rise: u32,
    fall: u32,
    healthy: bool,
    streak: u32,
}

impl Gauge {
    pub fn new(rise: u32, fall: u32) -> Gauge {
        Gauge {
            rise: rise.max(1),
            fall: fall.max(1),
            healthy: false,
            streak: 0,
        }
    }

    /// New thresholds (a reload); the health and the streak counted so far stay.
    pub fn set_thresholds(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Records one check; returns whether the database now counts as healthy.
    pub fn record(&mut self, ok: bool) -> bool {
        if ok == self.healthy {
            self.streak = 0;
        } else {
            self.streak += 1;
            let needed = if ok { self.rise } else { self.fall };
            if self.streak >= needed {
                self.healthy = ok;
                self.streak = 0;
            }
        }
        self.healthy
    }

    /// A check that proved the server is not running: failing at once, whatever the streak.
    pub fn record_gone(&mut self) -> bool {
        self.healthy = false;
        self.streak = 0;
        false
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Healthy, but with failed checks counted towards `fall`: the next check should not wait
    /// for the steady interval.
    pub fn falling(&self) -> bool {
        self.healthy && self.streak > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, Option<&str>)]) -> Row {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    }

    /// Columns of `SHOW REPLICA STATUS` as MySQL 8.4 returns them (abridged, order kept).
    fn mysql_84_replica() -> Row {
        row(&[
            ("Replica_IO_State", Some("Waiting for source to send event")),
            ("Source_Host", Some("192.0.2.11")),
            ("Source_User", Some("repl")),
            ("Source_Port", Some("3306")),
            ("Source_Log_File", Some("binlog.000003")),
            ("Read_Source_Log_Pos", Some("1563")),
            ("Relay_Log_File", Some("relay.000002")),
            ("Relay_Source_Log_File", Some("binlog.000003")),
            ("Replica_IO_Running", Some("Yes")),
            ("Replica_SQL_Running", Some("Yes")),
            ("Last_IO_Error", Some("")),
            ("Last_SQL_Error", Some("")),
            ("Exec_Source_Log_Pos", Some("1563")),
            ("Seconds_Behind_Source", Some("0")),
            (
                "Retrieved_Gtid_Set",
                Some("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5"),
            ),
            (
                "Executed_Gtid_Set",
                Some("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5"),
            ),
            ("Auto_Position", Some("1")),
        ])
    }

    /// The same from MariaDB 10.11 (old column names, GTID columns of its own).
    fn mariadb_replica() -> Row {
        row(&[
            ("Slave_IO_State", Some("Waiting for master to send event")),
            ("Master_Host", Some("192.0.2.11")),
            ("Master_User", Some("repl")),
            ("Master_Port", Some("3306")),
            ("Master_Log_File", Some("binlog.000002")),
            ("Read_Master_Log_Pos", Some("2208")),
            ("Relay_Master_Log_File", Some("binlog.000002")),
            ("Slave_IO_Running", Some("Yes")),
            ("Slave_SQL_Running", Some("No")),
            ("Last_IO_Error", Some("")),
            ("Last_SQL_Error", Some("Duplicate entry '1' for key 'PRIMARY'")),
            ("Exec_Master_Log_Pos", Some("1900")),
            ("Seconds_Behind_Master", None),
            ("Using_Gtid", Some("Slave_Pos")),
            ("Gtid_IO_Pos", Some("0-1-42")),
        ])
    }

    #[test]
    fn mysql_84_replica_columns_are_read() {
        let r = replication(&mysql_84_replica()).unwrap();
        assert_eq!(r.source, "192.0.2.11");
        assert!(r.io_running && r.sql_running);
        assert_eq!(r.seconds_behind, Some(0));
        assert_eq!(r.received_gtid, "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5");
        assert!(r.applied_all_received);
        assert_eq!(r.last_error, None);
    }

    #[test]
    fn mariadb_replica_columns_are_read_with_a_stopped_sql_thread() {
        let r = replication(&mariadb_replica()).unwrap();
        assert!(r.io_running && !r.sql_running);
        assert_eq!(r.seconds_behind, None);
        assert_eq!(r.received_gtid, "0-1-42");
        assert!(!r.applied_all_received, "1900 of 2208 applied");
        assert_eq!(
            r.last_error.as_deref(),
            Some("Duplicate entry '1' for key 'PRIMARY'")
        );
    }

    #[test]
    fn a_row_without_thread_columns_is_an_error_not_a_guess() {
        let e = replication(&row(&[("Source_Host", Some("x"))])).unwrap_err();
        assert!(e.contains("Replica_IO_Running"), "{e}");
        // "Connecting" is not running.
        let mut r = mysql_84_replica();
        r[8].1 = Some("Connecting".into());
        assert!(!replication(&r).unwrap().io_running);
    }

    #[test]
    fn positions_count_what_was_executed_or_received_once() {
        // MariaDB: per domain the higher sequence number.
        assert_eq!(union_position("0-1-40,1-2-7", "0-1-45").unwrap(), 52);
        assert_eq!(union_position("0-1-40", "").unwrap(), 40);
        // MySQL: a re-pointed replica's received set holds only the new source's part.
        let executed =
            "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-1000,aaaaaaaa-0000-0000-0000-000000000001:1-20";
        let received = "3e11fa47-71ca-11e1-9e33-c80aa9429562:995-1010";
        assert_eq!(union_position(executed, received).unwrap(), 1030);
        assert_eq!(union_position(received, "").unwrap(), 16);
        // Tags are sources of their own.
        assert_eq!(
            union_position(
                "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:etl:1-2",
                "3e11fa47-71ca-11e1-9e33-c80aa9429562:etl:2-4"
            )
            .unwrap(),
            9
        );
        assert!(union_position("0-1-40", "nonsense").is_err());
    }

    #[test]
    fn gtid_positions_count_transactions_in_both_flavours() {
        assert_eq!(gtid_position("").unwrap(), 0);
        assert_eq!(gtid_position("0-1-42").unwrap(), 42);
        assert_eq!(gtid_position("0-1-42,1-2-7").unwrap(), 49);
        assert_eq!(
            gtid_position("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5").unwrap(),
            5
        );
        assert_eq!(
            gtid_position(
                "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:11-18,\n2174b383-5441-11e8-b90a-c80aa9429562:1-3"
            )
            .unwrap(),
            16
        );
        assert_eq!(
            gtid_position("3e11fa47-71ca-11e1-9e33-c80aa9429562:7").unwrap(),
            1
        );
        assert_eq!(
            gtid_position("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:etl:1-2").unwrap(),
            7
        );
        for bad in ["0-1", "0-1-x", "u:5-1", "u:a-b"] {
            assert!(gtid_position(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flavour_and_flags_are_recognised() {
        assert!(is_mariadb("10.11.19-MariaDB-0+deb12u1-log"));
        assert!(!is_mariadb("8.4.3"));
        assert_eq!(flag(Some("ON")), Some(true));
        assert_eq!(flag(Some("0")), Some(false));
        assert_eq!(flag(Some("maybe")), None);
        assert_eq!(flag(None), None);
    }

    #[test]
    fn the_gauge_needs_fall_failures_and_rise_successes_in_a_row() {
        let mut g = Gauge::new(2, 3);
        assert!(!g.healthy(), "unknown is not healthy");
        assert!(!g.record(true));
        assert!(g.record(true));
        // Two failures, a success: the streak restarts.
        assert!(g.record(false) && g.record(false) && g.record(true));
        assert!(g.record(false) && g.record(false));
        assert!(!g.record(false));
        assert!(!g.record(true));
        assert!(!g.record(false), "a failure resets the rise streak");
        assert!(!g.record(true));
        assert!(g.record(true));
        // A server proven not running fails at once; recovering still takes `rise`.
        assert!(g.record(false), "one failure of three");
        assert!(!g.record_gone());
        assert!(!g.record(true) && g.record(true));
    }

    #[test]
    fn only_a_healthy_database_with_failures_counted_is_falling() {
        let mut g = Gauge::new(2, 3);
        assert!(!g.falling(), "unknown");
        g.record(false);
        assert!(!g.falling(), "failing already: the steady interval");
        g.record(true);
        assert!(!g.falling(), "rising");
        g.record(true);
        assert!(!g.falling(), "healthy, nothing counted");
        g.record(false);
        assert!(g.falling());
        g.record(false);
        assert!(g.falling());
        g.record(false);
        assert!(
            !g.healthy() && !g.falling(),
            "failed: back to the steady interval"
        );
    }
}
