//! Benchmark (not a test): how long clients lose the VIP, and writes, when the owner's host dies.
//!
//! `scripts/bench-failover.sh [RUNS]` runs it as root. For each profile and run it builds a
//! fresh lab, lets db1 own, starts a client ping every 5 ms (and, with MariaDB, a client
//! inserting rows through the VIP), then kills db1's host — its link goes down and its agent
//! (and database) are SIGKILLed at the same moment — and measures the longest gap between ping
//! replies, or between acknowledged writes. Then, with the host and its database left up, it
//! SIGKILLs only db1's agent and measures from the client side, with one probe per database
//! host pinned to that host's MAC, when db1 stopped serving the VIP and when db2 began (the gap
//! between the two, never negative if the fence holds). Prints every run, then p50, p95 and the
//! maximum per profile, as Markdown tables for `docs/benchmarks.md`.

#[path = "../tests/lab/mod.rs"]
mod lab;

use lab::{Lab, Spec, VIP4, unix_now, wait_for};
use std::path::PathBuf;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let bin = PathBuf::from(args.next().expect("usage: failover_bench PATH-TO-VIPGATE [RUNS]"));
    let runs: usize = args
        .next()
        .map_or(10, |r| r.parse().expect("RUNS must be a number"));
    // `killed`: only the killed-agent runs; any other word: only the profiles named with it.
    let only = args.next();
    if only.as_deref() == Some("killed") {
        killed_agent_runs(&bin, runs);
        return;
    }
    // (name, interval, lease, with MariaDB and writes, what happens to db1)
    use Fault::*;
    let profiles = [
        (
            "ping, default (interval 200 ms, lease 1000 ms)",
            200,
            1000,
            false,
            HostCrash,
        ),
        (
            "ping, aggressive (interval 20 ms, lease 120 ms)",
            20,
            120,
            false,
            HostCrash,
        ),
        (
            "writes, promote mode, default timings: host crash",
            200,
            1000,
            true,
            HostCrash,
        ),
        (
            "writes, promote mode, default timings: primary's mysqld killed",
            200,
            1000,
            true,
            MysqldKilled,
        ),
        (
            "writes, promote mode, default timings: primary's mysqld frozen",
            200,
            1000,
            true,
            MysqldFrozen,
        ),
        (
            "writes, promote mode, aggressive timings: host crash",
            20,
            120,
            true,
            HostCrash,
        ),
        (
            "writes, promote mode, default timings: switchover",
            200,
            1000,
            true,
            Switchover,
        ),
    ];
    let mut table = Vec::new();
    let chosen = profiles
        .into_iter()
        .filter(|p| only.as_deref().is_none_or(|w| p.0.contains(w)));
    for (name, interval_ms, lease_ms, writes, fault) in chosen {
        let mut outages = Vec::new();
        for run in 1..=runs {
            let spec = Spec {
                interval_ms,
                lease_ms,
                mysql: writes.then_some("promote"),
                ..Spec::default()
            };
            let mut lab = Lab::new(&bin, spec);
            lab.start_all();
            if !wait_for(Duration::from_secs(10), || {
                lab.observer().sole_holder(VIP4, "db1")
            }) {
                eprintln!(
                    "{name} run {run}: db1 did not take the VIP; skipped\n{}",
                    lab.logs()
                );
                continue;
            }
            assert!(lab.client_ping(VIP4));
            let ping = lab.pinger(VIP4);
            let writer = writes.then(|| lab.writer());
            std::thread::sleep(Duration::from_millis(500));
            let crash = unix_now();
            let crashed = std::time::Instant::now();
            match fault {
                Switchover => {
                    let out = std::process::Command::new(&bin)
                        .args(["switchover", "--to", "db2", "--config"])
                        .arg(lab.config_path("db1"))
                        .output()
                        .expect("vipgate switchover");
                    if !out.status.success() {
                        eprintln!("{name} run {run}: {}", String::from_utf8_lossy(&out.stderr));
                    }
                }
                HostCrash => {
                    lab.link_down("db1");
                    lab.kill("db1");
                    if writes {
                        lab.kill_mariadb("db1");
                    }
                }
                // The host and its agent stay up: only the database server dies.
                MysqldKilled => lab.kill_mariadb("db1"),
                MysqldFrozen => lab.signal_mariadb("db1", nix::sys::signal::Signal::SIGSTOP),
            }
            let took_over = wait_for(Duration::from_secs(10), || {
                lab.observer().sole_holder(VIP4, "db2")
            });
            // Let replies resume before measuring.
            wait_for(Duration::from_secs(3), || {
                ping.replies_since(unix_now() - 0.2) > 10
            });
            std::thread::sleep(Duration::from_millis(200));
            let gap = match writer {
                Some(w) => {
                    let acked = w.finish();
                    let lost = lab.missing_rows("db2", &acked).len();
                    if lost > 0 {
                        eprintln!("{name} run {run}: {lost} acknowledged rows missing on db2");
                    }
                    acked
                        .last()
                        .filter(|(_, t)| *t > crashed)
                        .map(|_| lab::longest_pause(&acked, crashed))
                }
                None => ping.max_gap_since(crash - 0.05),
            };
            let overlaps = lab.observer().overlaps(VIP4);
            match (took_over, gap) {
                (true, Some(gap)) => {
                    // The dead host keeps its VIP until the kernel lifetime ends, on a link
                    // that is down: an overlap here is not a conflict.
                    // Where a promotion's time went, from the new owner's own account.
                    let promoted = lab.log("db2");
                    let promoted = promoted
                        .lines()
                        .find_map(|l| l.split_once("database promoted ").map(|(_, r)| r))
                        .map_or(String::new(), |r| format!("; promoted {r}"));
                    println!(
                        "{name} run {run}: outage {} ms, overlaps {}{promoted}",
                        gap.as_millis(),
                        overlaps.len()
                    );
                    outages.push(gap);
                }
                _ => eprintln!("{name} run {run}: no takeover measured\n{}", lab.logs()),
            }
        }
        if let Some(row) = summary(name, outages.iter().map(|d| d.as_secs_f64() * 1000.0).collect()) {
            table.push(row);
        }
    }
    println!("\n| profile | runs | p50 (ms) | p95 | max |\n|---|---|---|---|---|");
    for row in table {
        println!("{row}");
    }
    if only.is_none() {
        killed_agent_runs(&bin, runs);
    }
}

/// What a run does to db1, the owner.
#[derive(Clone, Copy)]
enum Fault {
    /// Link down, agent and database killed at once.
    HostCrash,
    /// SIGKILL to its MariaDB server only.
    MysqldKilled,
    /// SIGSTOP to its MariaDB server only (left stopped until the lab is torn down).
    MysqldFrozen,
    /// `vipgate switchover --to db2`.
    Switchover,
}

/// `| name | runs | p50 | p95 | max |` for values in ms, or `None` without any.
fn summary(name: &str, mut values: Vec<f64>) -> Option<String> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    Some(format!(
        "| {name} | {} | {:.0} | {:.0} | {:.0} |",
        values.len(),
        at(0.5),
        at(0.95),
        values[values.len() - 1]
    ))
}

/// SIGKILLs the owner's agent, host and database up: the kernel fence alone must stop the old
/// owner serving before the new one starts. Prints, per profile, when each happened after the kill and the gap
/// between them, from pinned probes (kernel-stamped replies), and the acknowledged rows lost.
fn killed_agent_runs(bin: &std::path::Path, runs: usize) {
    let mut table = Vec::new();
    for (name, interval_ms, lease_ms) in [("default", 200, 1000), ("aggressive", 20, 120)] {
        let (mut stopped, mut gap, mut both, mut lost) = (Vec::new(), Vec::new(), 0, 0);
        for run in 1..=runs {
            let spec = Spec {
                interval_ms,
                lease_ms,
                mysql: Some("promote"),
                ..Spec::default()
            };
            let (s, g, b, l) = match kill_agent_once(bin, spec) {
                Ok(measured) => measured,
                Err(why) => {
                    eprintln!("killed agent, {name}, run {run}: no takeover measured: {why}");
                    continue;
                }
            };
            println!(
                "killed agent, {name}, run {run}: db1 stopped {s:.0} ms after the kill, gap {g:.0} ms, both served {b}, lost {l}"
            );
            stopped.push(s);
            gap.push(g);
            both += b;
            lost += l;
        }
        table.extend(summary(
            &format!("{name}: db1 stops serving, after the kill"),
            stopped,
        ));
        table.extend(summary(&format!("{name}: gap until db2 serves"), gap));
        table.push(format!(
            "| {name}: replies from both within 10 ms / acknowledged rows lost | {both} / {lost} | | | |"
        ));
    }
    println!("\n| killed owner agent | runs | p50 (ms) | p95 | max |\n|---|---|---|---|---|");
    for row in table {
        println!("{row}");
    }
}

/// One run: (the owner stopped serving after the kill, gap until its successor served, pairs of
/// replies from both within 10 ms, acknowledged rows missing on the successor), or why no
/// takeover was measured, with the agents' logs.
fn kill_agent_once(bin: &std::path::Path, spec: Spec) -> Result<(f64, f64, usize, usize), String> {
    let mut lab = Lab::new(bin, spec);
    lab.start_all();
    let fail = |why: &str, lab: &Lab| Err(format!("{why}\n{}", lab.logs()));
    if !wait_for(Duration::from_secs(10), || {
        lab.observer().sole_holder(VIP4, "db1")
    }) {
        return fail("db1 never held the VIP alone", &lab);
    }
    let probes = lab.serve_probes();
    let writer = lab.writer();
    // Let db1's announcements age past the clients' ARP lock time, as a settled owner's have.
    std::thread::sleep(Duration::from_millis(1600));
    let Some(last_before) = probes.last("db1") else {
        return fail("db1 held the VIP but never answered for it", &lab);
    };
    let killed = unix_now();
    lab.kill("db1");
    if !wait_for(Duration::from_secs(10), || {
        probes.first_after("db2", killed).is_some()
    }) {
        return fail("db2 never answered for the VIP", &lab);
    }
    wait_for(Duration::from_secs(5), || writer.last_server() == 2);
    let acked = writer.finish();
    let last = probes.last("db1").unwrap_or(last_before);
    let first = probes.first_after("db2", killed).expect("seen above");
    let both = probes.both_served_within(Duration::from_millis(10)).len();
    let lost = lab.missing_rows("db2", &acked).len();
    Ok(((last - killed) * 1000.0, (first - last) * 1000.0, both, lost))
}
