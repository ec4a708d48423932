//! `GET /metrics`: the agent's status in the Prometheus text format (version 0.0.4), rendered
//! from the same [`Status`] that `vipgate status` prints.

use super::{DnsStatus, Status};
use crate::mysql::DbStatus;
use std::fmt::Write as _;

/// A label value, escaped as the format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", labels.join(","))
        };
        let _ = writeln!(self.0, "{name}{labels} {value}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

pub fn render(s: &Status) -> String {
    let mut o = Out(String::new());
    ownership(&mut o, s);
    counters(&mut o, s);
    peers(&mut o, s);
    vips(&mut o, s);
    if let Some(db) = &s.database {
        database(&mut o, db);
    }
    if let Some(dns) = &s.dns {
        self::dns(&mut o, dns);
    }
    o.0
}

/// Role, term, owner, lease, eligibility and the database-side flags.
fn ownership(o: &mut Out, s: &Status) {
    o.family("vipgate_info", "gauge", "This agent: node and cluster.");
    o.sample("vipgate_info", &[("node", &s.node), ("cluster", &s.cluster)], 1.0);
    o.family("vipgate_role", "gauge", "1 for this agent's current role.");
    for role in ["owner", "follower", "candidate", "releasing", "witness"] {
        o.sample("vipgate_role", &[("role", role)], flag(s.role == role));
    }
    o.one(
        "vipgate_term",
        "gauge",
        "The agent's persisted election term.",
        s.term as f64,
    );
    o.one(
        "vipgate_is_owner",
        "gauge",
        "1 while this agent owns.",
        flag(s.role == "owner"),
    );
    o.family(
        "vipgate_owner",
        "gauge",
        "1 for the owner this agent knows, if any.",
    );
    if let Some(owner) = &s.owner {
        o.sample("vipgate_owner", &[("node", owner)], 1.0);
    }
    o.one(
        "vipgate_lease_remaining_seconds",
        "gauge",
        "Time left on this agent's lease (owner), or on the lease it grants.",
        s.lease_remaining_ms
            .or(s.grant.as_ref().map(|g| g.remaining_ms))
            .unwrap_or(0) as f64
            / 1000.0,
    );
    o.one(
        "vipgate_eligible",
        "gauge",
        "1 while this agent could own.",
        flag(s.eligible),
    );
    o.one(
        "vipgate_maintenance",
        "gauge",
        "1 in maintenance mode.",
        flag(s.maintenance),
    );
    o.one(
        "vipgate_diverged",
        "gauge",
        "1 while the database has diverged.",
        flag(s.diverged.is_some()),
    );
    o.one(
        "vipgate_failover_block_remaining_seconds",
        "gauge",
        "What is left of the anti-flap window.",
        s.failover_block_remaining_ms.unwrap_or(0) as f64 / 1000.0,
    );
}

/// Transitions, hooks and datagrams.
fn counters(o: &mut Out, s: &Status) {
    o.family(
        "vipgate_transitions_total",
        "counter",
        "Ownership transitions of this agent, by reason.",
    );
    for (reason, n) in &s.transitions {
        o.sample("vipgate_transitions_total", &[("reason", reason)], *n as f64);
    }
    o.family(
        "vipgate_hook_runs_total",
        "counter",
        "[hooks] runs, by event and result.",
    );
    for (key, n) in &s.hook_runs {
        let (event, result) = key.split_once(' ').unwrap_or((key, ""));
        o.sample(
            "vipgate_hook_runs_total",
            &[("event", event), ("result", result)],
            *n as f64,
        );
    }
    o.one(
        "vipgate_datagrams_sent_total",
        "counter",
        "Datagrams sent to peers.",
        s.sent as f64,
    );
    o.one(
        "vipgate_datagrams_received_total",
        "counter",
        "Authenticated datagrams accepted from peers.",
        s.received as f64,
    );
    o.family(
        "vipgate_datagrams_dropped_total",
        "counter",
        "Datagrams dropped, by reason.",
    );
    for (reason, n) in &s.dropped {
        o.sample(
            "vipgate_datagrams_dropped_total",
            &[("reason", reason)],
            *n as f64,
        );
    }
    o.one(
        "vipgate_grants_sent_total",
        "counter",
        "Votes granted plus lease acknowledgements sent.",
        s.grants_sent as f64,
    );
}

/// Peers heard, round trips, and how long the last promotion and fence took.
fn peers(o: &mut Out, s: &Status) {
    o.family(
        "vipgate_peer_last_heard_seconds",
        "gauge",
        "Since each peer's last heartbeat.",
    );
    for p in s.peers.iter().filter(|p| p.id != s.node) {
        if let Some(ms) = p.last_heard_ms {
            o.sample(
                "vipgate_peer_last_heard_seconds",
                &[("peer", &p.id)],
                ms as f64 / 1000.0,
            );
        }
    }
    o.family(
        "vipgate_peer_rtt_seconds",
        "gauge",
        "While owning: the last round trip from a heartbeat to each peer's ack.",
    );
    for p in s.peers.iter().filter(|p| p.id != s.node) {
        if let Some(us) = p.rtt_us {
            o.sample("vipgate_peer_rtt_seconds", &[("peer", &p.id)], us as f64 / 1e6);
        }
    }
    o.family(
        "vipgate_step_duration_seconds",
        "gauge",
        "How long the last promotion and the last fence took.",
    );
    for (step, ms) in &s.step_ms {
        o.sample(
            "vipgate_step_duration_seconds",
            &[("step", step)],
            *ms as f64 / 1000.0,
        );
    }
}

fn vips(o: &mut Out, s: &Status) {
    o.one(
        "vipgate_vips_held",
        "gauge",
        "VIPs on this host.",
        s.vip.held.len() as f64,
    );
    o.one(
        "vipgate_announcements_total",
        "counter",
        "Gratuitous ARP and unsolicited NA frames sent.",
        s.vip.announced as f64,
    );
    o.one(
        "vipgate_vip_readded_total",
        "counter",
        "VIPs put back after someone else removed them.",
        s.vip.readded as f64,
    );
    o.one(
        "vipgate_vip_errors_total",
        "counter",
        "Failed VIP operations.",
        s.vip.errors as f64,
    );
    o.one(
        "vipgate_vip_fence_installed",
        "gauge",
        "1 while the kernel fence (nftables) keeps the VIPs from being served past the lease.",
        flag(s.vip.fenced),
    );
    o.one(
        "vipgate_vip_backstop_fired_total",
        "counter",
        "Times the backstop removed the VIPs at the lease deadline because no renewal or release came.",
        s.vip.backstop_fired as f64,
    );
}

fn database(o: &mut Out, db: &DbStatus) {
    o.one(
        "vipgate_db_healthy",
        "gauge",
        "1 while the database counts as healthy.",
        flag(db.healthy),
    );
    o.one(
        "vipgate_db_writable",
        "gauge",
        "1 while the database is writable (read_only OFF).",
        flag(db.read_only == Some(false)),
    );
    o.one(
        "vipgate_db_checks_total",
        "counter",
        "Health checks run.",
        db.checks as f64,
    );
    o.one(
        "vipgate_db_check_seconds",
        "gauge",
        "How long the last successful health check took.",
        db.last_check_ms.unwrap_or(0) as f64 / 1000.0,
    );
    if let Some(lag) = db.lag_s {
        o.one(
            "vipgate_db_lag_seconds",
            "gauge",
            "Replica lag behind its source.",
            lag as f64,
        );
    }
}

fn dns(o: &mut Out, dns: &DnsStatus) {
    o.family(
        "vipgate_dns_answers_total",
        "counter",
        "DNS answers sent, by response code.",
    );
    for (rcode, n) in &dns.answers {
        o.sample("vipgate_dns_answers_total", &[("rcode", rcode)], *n as f64);
    }
    o.family(
        "vipgate_dns_limited_total",
        "counter",
        "DNS queries not answered in full: over the source's rate, answer truncated (too large for the query), not DNS.",
    );
    for (reason, n) in &dns.limited {
        o.sample("vipgate_dns_limited_total", &[("reason", reason)], *n as f64);
    }
    o.one(
        "vipgate_dns_answering_primary",
        "gauge",
        "1 while this agent answers the primary record (it knows the owner with quorum).",
        flag(dns.primary_for.is_some()),
    );
    o.one(
        "vipgate_dns_serial",
        "gauge",
        "The SOA serial published.",
        f64::from(dns.serial),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_every_sample_follows_its_family() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let status: Status = serde_json::from_str(include_str!("metrics_test_status.json")).unwrap();
        let text = render(&status);
        assert!(text.contains("vipgate_role{role=\"owner\"} 1\n"), "{text}");
        assert!(
            text.contains("vipgate_transitions_total{reason=\"acquired\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("vipgate_datagrams_dropped_total{reason=\"bad MAC\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("vipgate_peer_last_heard_seconds{peer=\"db2\"} 0.15\n"),
            "{text}"
        );
        // Every sample belongs to the family declared just before it.
        let mut family = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split_whitespace().next().unwrap().to_string();
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, family, "{line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
    }
}
