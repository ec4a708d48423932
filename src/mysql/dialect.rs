//! What differs between MariaDB and MySQL 8.x: the SQL the agent sends, and the server error
//! codes it decides on. Everything else in `src/mysql` is written once for both.

use super::probe;

/// Server error codes the agent acts on (the same numbers on both servers).
pub mod code {
    /// `ER_PARSE_ERROR`: a statement this server version does not know (`STOP REPLICA`,
    /// `SHOW REPLICA STATUS` before MySQL 8.0.22).
    pub const PARSE_ERROR: u16 = 1064;
    /// `ER_NO_SUCH_THREAD`: the thread to kill is gone already.
    pub const NO_SUCH_THREAD: u16 = 1094;
    /// `ER_KILL_DENIED_ERROR`: a thread this account may not kill.
    pub const KILL_DENIED: u16 = 1095;
    /// `ER_UNKNOWN_SYSTEM_VARIABLE`: a plugin's variable where the plugin is not loaded.
    pub const UNKNOWN_SYSTEM_VARIABLE: u16 = 1193;
    /// `ER_MASTER_FATAL_ERROR_READING_BINLOG`, in `Last_IO_Errno`: the source refuses this
    /// replica's position (diverged, or binlogs purged).
    pub const SOURCE_REFUSES_POSITION: u32 = 1236;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    MariaDb,
    MySql,
}

impl Dialect {
    /// From `SELECT @@version`.
    pub fn of_version(version: &str) -> Dialect {
        if probe::is_mariadb(version) {
            Dialect::MariaDb
        } else {
            Dialect::MySql
        }
    }

    /// The executed GTIDs (MariaDB: `gtid_current_pos`; MySQL: `gtid_executed`).
    pub fn executed_gtids(self) -> &'static str {
        match self {
            Dialect::MariaDb => "SELECT @@global.gtid_current_pos",
            Dialect::MySql => "SELECT @@global.gtid_executed",
        }
    }

    /// Refuse writes (`super_read_only` implies `read_only` on MySQL).
    pub fn fence(self) -> &'static str {
        match self {
            Dialect::MariaDb => "SET GLOBAL read_only = ON",
            Dialect::MySql => "SET GLOBAL super_read_only = ON",
        }
    }

    /// Take writes.
    pub fn unfence(self) -> &'static str {
        match self {
            Dialect::MariaDb => "SET GLOBAL read_only = OFF",
            Dialect::MySql => "SET GLOBAL super_read_only = OFF, GLOBAL read_only = OFF",
        }
    }

    /// On a fenced server whose read_only is held back by commits waiting for semi-sync
    /// acknowledgements: the primary side off (releasing them), the replica side on.
    pub fn semi_sync_off_for_fence(self) -> &'static [&'static str] {
        match self {
            Dialect::MariaDb => &[
                "SET GLOBAL rpl_semi_sync_master_enabled = OFF",
                "SET GLOBAL rpl_semi_sync_slave_enabled = ON",
            ],
            Dialect::MySql => &[
                "SET GLOBAL rpl_semi_sync_source_enabled = OFF",
                "SET GLOBAL rpl_semi_sync_master_enabled = OFF",
                "SET GLOBAL rpl_semi_sync_replica_enabled = ON",
                "SET GLOBAL rpl_semi_sync_slave_enabled = ON",
            ],
        }
    }

    pub fn start_replica(self) -> &'static str {
        match self {
            Dialect::MariaDb => "START SLAVE",
            Dialect::MySql => "START REPLICA",
        }
    }

    /// Waits for GTIDs, with a timeout in seconds: MariaDB's `MASTER_GTID_WAIT` answers 0 when
    /// done and -1 on timeout, MySQL's `WAIT_FOR_EXECUTED_GTID_SET` 0 and 1.
    pub fn wait_for_gtids(self) -> &'static str {
        match self {
            Dialect::MariaDb => "SELECT MASTER_GTID_WAIT(?, ?)",
            Dialect::MySql => "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?)",
        }
    }

    /// Re-points replication at a source, by GTID: MariaDB from its own `current_pos` (which
    /// includes what it wrote itself, so strict mode refuses a position outside the source's
    /// history), MySQL by auto-position. Values are quoted by doubling quotes, which the
    /// caller's session must honour (`NO_BACKSLASH_ESCAPES`).
    pub fn change_source(self, host: &str, port: u16, user: &str, password: &str) -> String {
        let (host, user, password) = (quote(host), quote(user), quote(password));
        match self {
            Dialect::MariaDb => format!(
                "CHANGE MASTER TO MASTER_HOST={host}, MASTER_PORT={port}, MASTER_USER={user}, \
                 MASTER_PASSWORD={password}, MASTER_USE_GTID=current_pos"
            ),
            Dialect::MySql => format!(
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST={host}, SOURCE_PORT={port}, SOURCE_USER={user}, \
                 SOURCE_PASSWORD={password}, SOURCE_AUTO_POSITION=1, GET_SOURCE_PUBLIC_KEY=1"
            ),
        }
    }
}

/// A string literal with quotes doubled (valid whatever the backslash handling, once
/// `NO_BACKSLASH_ESCAPES` is set).
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_server_gets_its_own_sql() {
        assert_eq!(
            Dialect::of_version("10.11.19-MariaDB-0+deb12u1-log"),
            Dialect::MariaDb
        );
        assert_eq!(Dialect::of_version("8.4.3"), Dialect::MySql);
        let maria = Dialect::MariaDb.change_source("192.0.2.12", 3306, "repl", "it's");
        assert!(maria.starts_with("CHANGE MASTER TO MASTER_HOST='192.0.2.12', MASTER_PORT=3306"));
        assert!(maria.contains("MASTER_PASSWORD='it''s'") && maria.ends_with("MASTER_USE_GTID=current_pos"));
        let mysql = Dialect::MySql.change_source("db2", 3307, "r", "p");
        assert!(
            mysql.contains("SOURCE_HOST='db2', SOURCE_PORT=3307") && mysql.contains("SOURCE_AUTO_POSITION=1")
        );
        assert_eq!(Dialect::MySql.fence(), "SET GLOBAL super_read_only = ON");
        assert_eq!(Dialect::MariaDb.start_replica(), "START SLAVE");
    }
}
