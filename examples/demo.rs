//! The demo: a three-agent cluster with real MariaDB replication in network namespaces, an
//! automatic failover under a write load, and clean-up.
//!
//! Run through `scripts/demo.sh` (as root): it builds, installs what the lab needs and runs
//! this with the path of the `vipgate` binary. Everything it creates is removed at the end,
//! also when interrupted by a failure.

#[path = "../tests/lab/mod.rs"]
mod lab;

use lab::{Lab, Spec, VIP4, unix_now, wait_for};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn lab_bin() -> PathBuf {
    std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .expect("usage: demo PATH-TO-VIPGATE")
}

fn show_status(lab: &Lab, node: &str) {
    println!("\n$ vipgate status        # on {node}");
    let out = Command::new(lab_bin())
        .args(["status", "--config"])
        .arg(lab.config_path(node))
        .output()
        .expect("run vipgate status");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn main() {
    let bin = lab_bin();
    step(
        "building a lab: switch, db1 (priority 150), db2 (100), witness w1, client — each its own network namespace",
    );
    println!(
        "MariaDB on db1 (primary) and db2 (its semi-synchronous replica); agents in [mysql] mode = \"promote\""
    );
    let mut lab = Lab::new(
        &bin,
        Spec {
            mysql: Some("promote"),
            ..Spec::default()
        },
    );
    println!(
        "namespaces {}-*, agent files in {}",
        lab.prefix,
        lab.dir.path().display()
    );
    println!("VIP {VIP4}/24; heartbeat every 200 ms, lease 1000 ms; database checked every 200 ms");

    step("starting the three agents");
    lab.start_all();
    let t = Instant::now();
    assert!(
        wait_for(Duration::from_secs(8), || lab.observer().sole_holder(VIP4, "db1")),
        "db1 did not take the VIP:\n{}",
        lab.logs()
    );
    println!(
        "db1 holds the VIP after {} ms (agents stay quiet for one lease, then db1 — most data, highest \
         priority — wins, fences every other database and promotes its own)",
        t.elapsed().as_millis()
    );
    assert!(lab.client_ping(VIP4), "the client cannot reach the VIP");
    // Let the next health checks see the promoted database.
    std::thread::sleep(Duration::from_millis(500));
    show_status(&lab, "db1");

    step(
        "the client inserts rows through the VIP as fast as it can, and pings it every 5 ms; now db1's link goes down",
    );
    let writer = lab.writer();
    let ping = lab.pinger(VIP4);
    std::thread::sleep(Duration::from_millis(1000));
    let cut = unix_now();
    let crashed = Instant::now();
    lab.link_down("db1");
    assert!(
        wait_for(Duration::from_secs(10), || lab
            .observer()
            .sole_holder(VIP4, "db2")),
        "db2 did not take over:\n{}",
        lab.logs()
    );
    println!(
        "db1 fenced its own database and dropped the VIP; db2 waited out db1's lease, caught up, promoted its \
         database and holds the VIP {} ms after the cut",
        crashed.elapsed().as_millis()
    );
    std::thread::sleep(Duration::from_millis(1000));
    let acked = writer.finish();
    std::thread::sleep(Duration::from_millis(300));
    let pause = lab::longest_pause(&acked, crashed);
    let lost = lab.missing_rows("db2", &acked).len();
    println!(
        "writes: {} acknowledged; longest pause {} ms; acknowledged rows missing on the new primary: {lost}",
        acked.len(),
        pause.as_millis()
    );
    if let Some(gap) = ping.max_gap_since(cut - 0.2) {
        println!("ping: longest gap between replies {} ms", gap.as_millis());
    }
    println!(
        "client: {VIP4} is now at {} (db2's MAC, learnt from its gratuitous ARP)",
        lab.client_neighbour(VIP4).unwrap_or_default()
    );
    let overlaps = lab.observer().overlaps(VIP4);
    println!(
        "hosts seen holding the VIP at the same time (sampled every 2 ms): {}",
        if overlaps.is_empty() {
            "never".to_string()
        } else {
            format!("{overlaps:?}")
        }
    );
    show_status(&lab, "db2");

    step("cleaning up: agents and databases stopped, namespaces deleted");
    drop(ping);
    drop(lab);
    println!("done");
}
