//! The demo: a three-agent cluster in network namespaces, a failover, and clean-up.
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

fn lab_bin() -> PathBuf {
    std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .expect("usage: demo PATH-TO-VIPGATE")
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn main() {
    let bin = lab_bin();
    step(
        "building a lab: switch, db1 (priority 150), db2 (100), witness w1, client — each its own network namespace",
    );
    println!("MariaDB on db1 (primary) and db2 (its read_only replica); agents in [mysql] mode = \"gate\"");
    let mut lab = Lab::new(
        &bin,
        Spec {
            mysql: Some("gate"),
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
        wait_for(Duration::from_secs(6), || lab.observer().sole_holder(VIP4, "db1")),
        "db1 did not take the VIP:\n{}",
        lab.logs()
    );
    println!(
        "db1 holds the VIP after {} ms (each agent first stays quiet for one lease)",
        t.elapsed().as_millis()
    );
    assert!(lab.client_ping(VIP4), "the client cannot reach the VIP");
    println!(
        "client: {VIP4} is at {} (db1's MAC)",
        lab.client_neighbour(VIP4).unwrap_or_default()
    );
    show_status(&lab, "db1");

    step("client pings the VIP every 5 ms; now db1's link goes down");
    let ping = lab.pinger(VIP4);
    std::thread::sleep(Duration::from_millis(500));
    let cut = unix_now();
    lab.link_down("db1");
    std::thread::sleep(Duration::from_millis(1500));
    println!(
        "after 1.5 s nobody holds the VIP: holders {:?} — db2's database is a read_only replica, and in gate mode \
         only a writable database may own",
        lab.observer().holders(VIP4)
    );
    println!(
        "promoting db2's database as an operator (or another tool) would: STOP SLAVE; SET GLOBAL read_only = OFF"
    );
    lab.sql("db2", "STOP SLAVE; SET GLOBAL read_only = OFF");
    let t = Instant::now();
    assert!(
        wait_for(Duration::from_secs(6), || lab.observer().sole_holder(VIP4, "db2")),
        "db2 did not take over:\n{}",
        lab.logs()
    );
    println!(
        "db2 holds the VIP {} ms after its database became writable",
        t.elapsed().as_millis()
    );
    wait_for(Duration::from_secs(2), || {
        ping.replies_since(unix_now() - 0.3) > 10
    });
    std::thread::sleep(Duration::from_millis(300));
    match ping.max_gap_since(cut - 0.2) {
        Some(gap) => println!(
            "measured outage, including the manual promotion (longest gap between ping replies): {} ms",
            gap.as_millis()
        ),
        None => println!("no ping replies seen"),
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

    step("cleaning up: agents stopped, namespaces deleted");
    drop(ping);
    drop(lab);
    println!("done");
}
