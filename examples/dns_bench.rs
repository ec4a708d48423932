//! Benchmark (not a test): DNS answers per second on one core — vipgate's embedded name server
//! against BIND serving the same zone.
//!
//! `scripts/bench-dns.sh [SECONDS]` runs it as root. It builds a lab whose agents serve
//! `db.example.test.`, lets db1 own, and starts BIND (`named -n 1`, one worker) on a host of its
//! own with the same records. Both servers are pinned to CPU 1 and `dnsperf` (pinned to CPU 0)
//! asks each, from the client's namespace, for the primary record and the zone's other names
//! for SECONDS. Prints a Markdown table for `docs/benchmarks.md`.

#[path = "../tests/lab/mod.rs"]
mod lab;

use lab::{Lab, Spec, VIP4, sh};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The queries, in the mix dnsperf cycles through.
const QUERIES: &str = "primary.db.example.test. A\n\
    primary.db.example.test. A\n\
    primary.db.example.test. A\n\
    _owner.db.example.test. TXT\n\
    db.example.test. SOA\n\
    nothing.db.example.test. A\n";

/// What the agents publish, as a BIND zone file.
const ZONE: &str = "$TTL 5\n\
    @ IN SOA db1.db.example.test. hostmaster.db.example.test. 1 3600 600 86400 5\n\
    @ IN NS db1\n\
    @ IN NS db2\n\
    @ IN NS w1\n\
    db1 IN A 192.0.2.11\n\
    db2 IN A 192.0.2.12\n\
    w1 IN A 192.0.2.13\n\
    primary IN A 192.0.2.50\n\
    _owner IN TXT \"owner=db1 term=1\"\n";

fn pin(pid: u32, cpu: &str) {
    sh(&["taskset", "-a", "-p", "-c", cpu, &pid.to_string()]);
}

/// Runs dnsperf against `server`; its queries per second.
fn dnsperf(lab: &Lab, server: &str, seconds: u64, queries: &std::path::Path) -> f64 {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client.ns,
            "taskset",
            "-c",
            "0",
            "dnsperf",
            "-s",
            server,
        ])
        .arg("-d")
        .arg(queries)
        .args(["-l", &seconds.to_string(), "-c", "8", "-q", "256"])
        .output()
        .expect("run dnsperf (package dnsperf)");
    let text = String::from_utf8_lossy(&out.stdout);
    let lost = text
        .lines()
        .find(|l| l.contains("Queries lost:"))
        .unwrap_or("")
        .trim()
        .to_string();
    println!("  {server}: {lost}");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Queries per second:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no result from dnsperf:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let bin = PathBuf::from(args.next().expect("usage: dns_bench PATH-TO-VIPGATE [SECONDS]"));
    let seconds: u64 = args
        .next()
        .map_or(10, |s| s.parse().expect("SECONDS must be a number"));
    let mut lab = Lab::new(
        &bin,
        Spec {
            dns: Some(String::new()),
            ..Spec::default()
        },
    );
    lab.start_all();
    lab.expect_sole_holder(VIP4, "db1", Duration::from_secs(8));
    let ns1 = lab.add_host("ns1", 20);
    lab.start_named_on(
        &ns1,
        "recursion no;",
        "zone \"db.example.test\" { type primary; file \"db.zone\"; };",
        &[("db.zone", ZONE.to_string())],
    );
    pin(lab.pid("db1") as u32, "1");
    pin(lab.service_pid("named-ns1"), "1");
    let queries = lab.dir.path().join("queries.txt");
    std::fs::write(&queries, QUERIES).unwrap();
    // Both answer the same records.
    for server in ["192.0.2.11", "192.0.2.20"] {
        let answer = lab.dig(&[&format!("@{server}"), "primary.db.example.test.", "A", "+short"]);
        assert_eq!(answer.trim(), VIP4, "{server}");
    }
    println!("dnsperf for {seconds} s each, servers on CPU 1, dnsperf on CPU 0:");
    let vipgate = dnsperf(&lab, "192.0.2.11", seconds, &queries);
    let bind = dnsperf(&lab, "192.0.2.20", seconds, &queries);
    println!();
    println!("| server (one core) | answers per second |");
    println!("|---|---|");
    println!("| vipgate agent (embedded, hickory-server) | {vipgate:.0} |");
    println!("| BIND 9 (`named -n 1`) | {bind:.0} |");
    println!("| ratio vipgate / BIND | {:.2} |", vipgate / bind);
}
