//! The commands of the control socket: one line of text on the wire, typed on both ends.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// The agent's status, as JSON.
    Status,
    /// The same, in Prometheus text format.
    Metrics,
    /// `maintenance on|off`.
    Maintenance(bool),
    /// A planned hand-over, to the named node or the best candidate.
    Switchover(Option<String>),
    /// Lifts the anti-flap window (and, while no node owns, the cross-region block).
    FailoverAck,
    /// Re-reads the configuration file.
    Reload,
}

/// What the agent answers to a line it does not understand.
pub const USAGE: &str = "status, maintenance on|off, switchover [NODE], failover-ack, reload";

impl Command {
    pub fn parse(line: &str) -> Result<Command, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        Ok(match words.as_slice() {
            ["status"] => Command::Status,
            ["metrics"] => Command::Metrics,
            ["maintenance", "on"] => Command::Maintenance(true),
            ["maintenance", "off"] => Command::Maintenance(false),
            ["switchover"] => Command::Switchover(None),
            ["switchover", node] => Command::Switchover(Some((*node).to_string())),
            ["failover-ack"] => Command::FailoverAck,
            ["reload"] => Command::Reload,
            _ => return Err(format!("unknown command {line:?}; try: {USAGE}")),
        })
    }

    /// Open to the `status_group` too: it changes nothing.
    pub fn changes_nothing(&self) -> bool {
        matches!(self, Command::Status | Command::Metrics)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Status => f.write_str("status"),
            Command::Metrics => f.write_str("metrics"),
            Command::Maintenance(on) => write!(f, "maintenance {}", if *on { "on" } else { "off" }),
            Command::Switchover(None) => f.write_str("switchover"),
            Command::Switchover(Some(node)) => write!(f, "switchover {node}"),
            Command::FailoverAck => f.write_str("failover-ack"),
            Command::Reload => f.write_str("reload"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_reads_back_as_written() {
        for c in [
            Command::Status,
            Command::Metrics,
            Command::Maintenance(true),
            Command::Maintenance(false),
            Command::Switchover(None),
            Command::Switchover(Some("db2".into())),
            Command::FailoverAck,
            Command::Reload,
        ] {
            assert_eq!(Command::parse(&c.to_string()), Ok(c));
        }
    }

    #[test]
    fn anything_else_is_refused_with_the_list() {
        for line in [
            "",
            "maintenance",
            "maintenance maybe",
            "switchover a b",
            "STATUS",
            "rm -rf",
        ] {
            let e = Command::parse(line).unwrap_err();
            assert!(e.contains("unknown command") && e.contains(USAGE), "{line}: {e}");
        }
        assert!(Command::Status.changes_nothing() && Command::Metrics.changes_nothing());
        assert!(!Command::Reload.changes_nothing() && !Command::Maintenance(true).changes_nothing());
    }
}
