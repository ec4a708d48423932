//! Benchmark (not a test): how long clients lose the VIP, and writes, when the owner's host dies.
//!
//! `scripts/bench-failover.sh [RUNS]` runs it as root. For each profile and run it builds a
//! fresh lab, lets db1 own, starts a client ping every 5 ms (and, with MariaDB, a client
//! inserting rows through the VIP), then kills db1's host — its link goes down and its agent
//! (and database) are SIGKILLed at the same moment — and measures the longest gap between ping
//! replies, or between acknowledged writes. Prints every run, then the median, minimum and
//! maximum per profile, as a Markdown table for `docs/benchmarks.md`.

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
    // (name, interval, lease, with MariaDB and writes, planned switchover instead of a crash)
    let profiles = [
        (
            "ping, default (interval 200 ms, lease 1000 ms)",
            200,
            1000,
            false,
            false,
        ),
        (
            "ping, aggressive (interval 20 ms, lease 120 ms)",
            20,
            120,
            false,
            false,
        ),
        (
            "writes, promote mode, default timings: host crash",
            200,
            1000,
            true,
            false,
        ),
        (
            "writes, promote mode, default timings: switchover",
            200,
            1000,
            true,
            true,
        ),
    ];
    let mut table = Vec::new();
    for (name, interval_ms, lease_ms, writes, switchover) in profiles {
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
            if switchover {
                let out = std::process::Command::new(&bin)
                    .args(["switchover", "--to", "db2", "--config"])
                    .arg(lab.config_path("db1"))
                    .output()
                    .expect("vipgate switchover");
                if !out.status.success() {
                    eprintln!("{name} run {run}: {}", String::from_utf8_lossy(&out.stderr));
                }
            } else {
                lab.link_down("db1");
                lab.kill("db1");
                if writes {
                    lab.kill_mariadb("db1");
                }
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
                    println!(
                        "{name} run {run}: outage {} ms, overlaps {}",
                        gap.as_millis(),
                        overlaps.len()
                    );
                    outages.push(gap);
                }
                _ => eprintln!("{name} run {run}: no takeover measured\n{}", lab.logs()),
            }
        }
        outages.sort();
        if outages.is_empty() {
            continue;
        }
        let median = outages[outages.len() / 2];
        let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1000.0);
        table.push(format!(
            "| {name} | {} | {} | {} | {} |",
            outages.len(),
            ms(median),
            ms(outages[0]),
            ms(*outages.last().unwrap())
        ));
    }
    println!("\n| profile | runs | median outage (ms) | min | max |\n|---|---|---|---|---|");
    for row in table {
        println!("{row}");
    }
}
