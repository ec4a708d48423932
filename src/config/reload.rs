//! What a reload may change while the agent runs, and what needs a restart.
//!
//! Live: priorities and preemption, the heartbeat interval, `cross_region_failover`,
//! `[announce]`, the `[mysql]` thresholds (checks, lag, catch-up, kill grace, anti-flap window)
//! and the DNS records' contents (record name, TTL, SOA fields). Everything that defines who is
//! in the cluster, how members trust each other, what a node owns, or where it listens needs a
//! restart of every agent — the lease above all: an owner whose lease outlasts its voters'
//! grants could overlap a successor.

use super::Config;

/// The fields `new` changes that a running agent cannot take on, each with why; empty when the
/// reload may go ahead.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let rules = cluster_rules(old, new).into_iter().chain(member_rules(old, new));
    rules
        .filter(|(changed, _, _)| *changed)
        .map(|(_, field, why)| format!("{field} ({why})"))
        .collect()
}

/// (changed, field, why it needs a restart)
type Rule = (bool, &'static str, &'static str);

/// The cluster's identity, its key, its lease, and where the agent keeps its vote.
fn cluster_rules(old: &Config, new: &Config) -> Vec<Rule> {
    let (a, b) = (&old.cluster, &new.cluster);
    vec![
        (
            a.name != b.name,
            "cluster.name",
            "peers authenticate the cluster by name",
        ),
        (
            a.secret_file != b.secret_file,
            "cluster.secret_file",
            "peers must share one key",
        ),
        (a.port != b.port, "cluster.port", "peers send to it"),
        (
            a.lease != b.lease || a.clock_drift != b.clock_drift,
            "cluster.lease_ms / clock_drift",
            "owners and voters must count the same lease",
        ),
        (
            a.state_dir != b.state_dir,
            "cluster.state_dir",
            "it holds the vote and term",
        ),
        (
            old.control.socket != new.control.socket,
            "control.socket",
            "the agent listens on it",
        ),
        (
            old.control.status_group != new.control.status_group,
            "control.status_group",
            "the socket's group and mode are set when it is created",
        ),
    ]
}

/// The members, the VIPs and fence, the database and the DNS zone.
fn member_rules(old: &Config, new: &Config) -> Vec<Rule> {
    let members = |c: &Config| {
        (c.nodes.iter())
            .map(|n| {
                (
                    n.id.clone(),
                    n.address,
                    n.witness,
                    n.region.clone(),
                    n.dns.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let fixed_mysql = |c: &Config| {
        (c.mysql.as_ref()).map(|m| {
            let account = (m.user.clone(), m.password_file.clone(), m.replication.clone());
            (m.mode, m.endpoint.clone(), account)
        })
    };
    let fixed_dns = |c: &Config| c.dns.as_ref().map(|d| (d.zone.clone(), d.port, d.update.clone()));
    vec![
        (
            members(old) != members(new),
            "[[node]] id / address / witness / region / dns_listen",
            "membership and what each node owns and serves are fixed while agents run",
        ),
        (
            old.vips != new.vips,
            "[[vip]]",
            "a held VIP must not be dropped or re-added",
        ),
        (
            old.kernel_fence != new.kernel_fence,
            "fence.kernel",
            "the fence is installed at start, before the agent may own",
        ),
        (
            fixed_mysql(old) != fixed_mysql(new),
            "[mysql] mode / connection / user / password_file / replication_*",
            "the database the agent manages, and how",
        ),
        (
            fixed_dns(old) != fixed_dns(new),
            "[dns] zone / port / [dns.update]",
            "where the agent serves, and the zone and key it updates",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::config::TEST_LAB as BASE;

    fn parse(text: &str) -> Config {
        Config::parse(Path::new("/etc/vipgate/vipgate.toml"), text).unwrap()
    }

    #[test]
    fn thresholds_priorities_and_records_change_live() {
        let old = parse(BASE);
        let new = parse(
            &BASE
                .replace("priority = 150", "priority = 200")
                .replace(
                    "max_lag_ms = 10000",
                    "max_lag_ms = 2000\nfall = 5\nfailover_block_ms = 0",
                )
                .replace("ttl = 5", "ttl = 30")
                .replace(
                    "name = \"lab\"",
                    "name = \"lab\"\nheartbeat_interval_ms = 150\npreempt = true",
                ),
        );
        assert_eq!(restart_needed(&old, &new), Vec::<String>::new());
    }

    #[test]
    fn membership_lease_vips_and_the_database_need_a_restart() {
        let old = parse(BASE);
        for (from, to, field) in [
            (
                "name = \"lab\"",
                "name = \"lab\"\nlease_ms = 2000",
                "cluster.lease_ms",
            ),
            ("192.0.2.12\"", "192.0.2.22\"", "[[node]]"),
            ("192.0.2.50/24", "192.0.2.51/24", "[[vip]]"),
            ("user = \"vipgate\"", "user = \"other\"", "[mysql]"),
            (
                "zone = \"db.example.test.\"",
                "zone = \"db.example.org.\"",
                "[dns]",
            ),
            ("name = \"lab\"", "name = \"lab2\"", "cluster.name"),
            ("[dns]", "[fence]\nkernel = false\n[dns]", "fence.kernel"),
        ] {
            let changed = restart_needed(&old, &parse(&BASE.replace(from, to)));
            assert_eq!(changed.len(), 1, "{to}: {changed:?}");
            assert!(changed[0].starts_with(field), "{changed:?}");
        }
    }
}
