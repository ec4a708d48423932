//! The agent in a real network: three `vipgate run` processes in network namespaces (db1
//! priority 150, db2 100, witness w1), a client that pings the VIP and watches its neighbour
//! cache, and observers that sample which host holds the VIP every few milliseconds. Needs root.

mod lab;

use lab::{Lab, Spec, VIP4, VIP6, unix_now, wait_for};
use nix::sys::signal::Signal;
use std::path::Path;
use std::time::{Duration, Instant};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vipgate"))
}

const LEASE: Duration = Duration::from_millis(1000);

/// A lab with all three agents running and db1 owning.
fn running(spec: Spec) -> Lab {
    let mut lab = Lab::new(bin(), spec);
    lab.start_all();
    lab.expect_sole_holder(VIP4, "db1", 2 * LEASE + Duration::from_secs(3));
    lab
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

#[test]
fn db1_owns_after_start_and_the_client_learns_its_mac_and_a_stale_vip_is_cleaned() {
    let mut lab = Lab::new(bin(), Spec::default());
    // A VIP left behind on db2 by an earlier run (as a crash would leave it).
    let db2 = lab.host("db2").ns.clone();
    lab::sh(&[
        "ip",
        "-n",
        &db2,
        "addr",
        "add",
        &format!("{VIP4}/24"),
        "dev",
        "eth0",
    ]);
    assert!(wait_for(Duration::from_secs(1), || lab.observer().holders(VIP4) == ["db2"]));
    let t0 = Instant::now();
    lab.start_all();
    // Quiet for one lease after start, then an election: within two leases (plus slack for a
    // loaded machine).
    let took = lab.expect_sole_holder(VIP4, "db1", 2 * LEASE + Duration::from_secs(3));
    println!(
        "db1 owned {} after the agents started",
        ms(t0.elapsed().max(took))
    );
    assert!(lab.client_ping(VIP4), "the client cannot ping the VIP");
    assert_eq!(
        lab.client_neighbour(VIP4).as_deref(),
        Some(lab.host("db1").mac.as_str())
    );
    // The first burst of gratuitous ARP (request and reply per round) goes out at once.
    assert!(wait_for(Duration::from_secs(1), || lab
        .status("db1")
        .is_some_and(|s| s.vip.announced >= 2)));
    let s = lab.status("db1").expect("db1 answers status");
    assert_eq!(s.role, "owner");
    assert_eq!(s.owner.as_deref(), Some("db1"));
    assert!(s.lease_remaining_ms.is_some_and(|ms| ms > 0));
    assert_eq!(s.vip.held, [format!("{VIP4}/24 on eth0")]);
    lab.expect_followed("db1", Duration::from_secs(3));
    for other in ["db2", "w1"] {
        let s = lab.status(other).expect("status");
        assert_eq!(s.owner.as_deref(), Some("db1"), "{other} sees {:?}", s.owner);
        assert!(s.vip.held.is_empty());
    }
    assert!(
        lab.log("db2").contains("removed a VIP left behind"),
        "{}",
        lab.log("db2")
    );
    // The stale VIP on db2 ended before db1 took it.
    lab.assert_never_two_holders(VIP4);
}

#[test]
fn owner_link_down_moves_the_vip_to_db2_and_the_client_follows_the_gratuitous_arp() {
    let lab = running(Spec::default());
    assert!(lab.client_ping(VIP4));
    assert_eq!(
        lab.client_neighbour(VIP4).as_deref(),
        Some(lab.host("db1").mac.as_str())
    );
    let ping = lab.pinger(VIP4);
    std::thread::sleep(Duration::from_millis(300));
    let cut_at = unix_now();
    lab.link_down("db1");
    lab.expect_sole_holder(VIP4, "db2", 3 * LEASE + Duration::from_secs(3));
    // The client never asks again (its neighbour probing is slowed to a minute): only db2's
    // gratuitous ARP can have changed its entry.
    let db2_mac = lab.host("db2").mac.clone();
    assert!(
        wait_for(Duration::from_secs(2), || lab.client_neighbour(VIP4).as_deref()
            == Some(db2_mac.as_str())),
        "the client's entry for the VIP is still {:?}",
        lab.client_neighbour(VIP4)
    );
    assert!(wait_for(Duration::from_secs(2), || ping
        .replies_since(unix_now() - 0.2)
        > 5));
    let outage = ping.max_gap_since(cut_at - 0.1).expect("replies");
    println!(
        "outage seen by the client after db1's link went down: {}",
        ms(outage)
    );
    assert!(
        lab.log("db1").contains("VIP interface eth0 is down"),
        "{}",
        lab.log("db1")
    );
    lab.assert_never_two_holders(VIP4);
}

#[test]
fn owner_cut_from_the_majority_drops_the_vip_before_db2_adds_it() {
    let mut lab = running(Spec::default());
    assert!(lab.client_ping(VIP4));
    lab.cut("db1", "db2");
    lab.cut("db1", "w1");
    lab.expect_sole_holder(VIP4, "db2", 3 * LEASE + Duration::from_secs(3));
    // db1 still reaches the client, so only its own lease accounting made it let go.
    assert!(lab.client_ping(&lab.host("db1").ip4.clone()));
    lab.assert_never_two_holders(VIP4);
    let db1_end = lab
        .observer()
        .runs("db1", VIP4)
        .last()
        .expect("db1 held the VIP")
        .1;
    let db2_start = lab
        .observer()
        .runs("db2", VIP4)
        .first()
        .expect("db2 holds the VIP")
        .0;
    println!(
        "db1 last seen holding the VIP {} before db2 was first seen holding it",
        ms(db2_start.duration_since(db1_end))
    );
    assert!(
        lab.log("db1").contains("lease not renewed by a majority"),
        "{}",
        lab.log("db1")
    );
}

#[test]
fn db1_and_db2_cut_from_each_other_but_both_reaching_the_witness_move_nothing() {
    let mut lab = running(Spec::default());
    let term = lab.status("db1").unwrap().term;
    lab.cut("db1", "db2");
    std::thread::sleep(4 * LEASE);
    let runs = lab.observer().runs("db1", VIP4);
    assert_eq!(
        runs.len(),
        1,
        "db1's hold of the VIP was interrupted: {runs:?}\n{}",
        lab.logs()
    );
    assert!(
        lab.observer().runs("db2", VIP4).is_empty(),
        "db2 took the VIP\n{}",
        lab.logs()
    );
    let s = lab.status("db1").unwrap();
    assert_eq!((s.role.as_str(), s.term), ("owner", term));
    assert_eq!(lab.status("w1").unwrap().owner.as_deref(), Some("db1"));
}

#[test]
fn graceful_stop_of_the_owner_hands_over_within_a_few_intervals() {
    let mut lab = running(Spec::default());
    let t = Instant::now();
    let code = lab.stop("db1", Duration::from_secs(5));
    assert_eq!(code, Some(0), "db1 did not exit cleanly\n{}", lab.logs());
    let took = lab.expect_sole_holder(VIP4, "db2", 3 * LEASE) + Duration::ZERO;
    let total = t.elapsed().max(took);
    println!("db2 held the VIP {} after SIGTERM to db1", ms(total));
    // A handed-over lease does not wait for grants to expire: well under one lease.
    assert!(
        total < LEASE,
        "hand-over took {total:?}, as long as a lease expiry\n{}",
        lab.logs()
    );
    lab.assert_never_two_holders(VIP4);
    assert!(lab.log("db1").contains("release requested"), "{}", lab.log("db1"));
}

#[test]
fn frozen_owner_stops_serving_at_its_lease_end_and_stays_silent_after_sigcont() {
    let mut lab = running(Spec::default());
    assert!(lab.client_ping(VIP4));
    let probes = lab.serve_probes();
    // Let the first and second announcement bursts finish before freezing.
    std::thread::sleep(Duration::from_millis(800));
    let before = lab.status("db1").unwrap().vip.announced;
    lab.signal("db1", Signal::SIGSTOP);
    let (frozen, frozen_unix) = (Instant::now(), unix_now());
    lab.expect_sole_holder(VIP4, "db2", 3 * LEASE + Duration::from_secs(3));
    // The agent is stopped: only the kernel can have stopped db1 — the fence at the lease
    // deadline, the address lifetime (whole seconds, checked late) some time after.
    // The address list can show db2 a probe period before db2's first reply arrives.
    assert!(
        wait_for(Duration::from_secs(2), || probes
            .first_after("db2", frozen_unix)
            .is_some()),
        "db2 holds the VIP but never answered for it\n{}",
        lab.logs()
    );
    let stopped = probes.last("db1").expect("db1 served before the freeze") - frozen_unix;
    let started = probes.first_after("db2", frozen_unix).unwrap() - frozen_unix;
    let db1_end = lab.observer().runs("db1", VIP4).last().unwrap().1;
    let db2_start = lab.observer().runs("db2", VIP4).first().unwrap().0;
    println!(
        "frozen owner: db1 stopped serving {:.0} ms after SIGSTOP, db2 served {:.0} ms after; the kernel removed \
         db1's address {} after SIGSTOP (db2 added it {} after; addresses overlapped {})",
        stopped * 1000.0,
        started * 1000.0,
        ms(db1_end.duration_since(frozen)),
        ms(db2_start.duration_since(frozen)),
        ms(db1_end.saturating_duration_since(db2_start))
    );
    let both = probes.both_served_within(Duration::from_millis(10));
    assert!(
        both.is_empty(),
        "two hosts served the VIP: {:?}\n{}",
        &both[..both.len().min(5)],
        lab.logs()
    );
    let db2_mac = lab.host("db2").mac.clone();
    assert!(wait_for(Duration::from_secs(2), || lab
        .client_neighbour(VIP4)
        .as_deref()
        == Some(db2_mac.as_str())));
    lab.signal("db1", Signal::SIGCONT);
    std::thread::sleep(2 * LEASE);
    assert_eq!(
        lab.observer().runs("db1", VIP4).len(),
        1,
        "db1 re-added the VIP\n{}",
        lab.logs()
    );
    assert_eq!(
        lab.client_neighbour(VIP4).as_deref(),
        Some(db2_mac.as_str()),
        "db1 announced after SIGCONT"
    );
    let s = lab.status("db1").unwrap();
    assert_eq!(s.vip.announced, before, "db1 announced after SIGCONT");
    assert_ne!(s.role, "owner");
    assert_eq!(s.owner.as_deref(), Some("db2"));
    assert!(probes.both_served_within(Duration::from_millis(10)).is_empty());
}

#[test]
fn killed_owner_restarted_at_once_overlaps_nothing_and_grants_nothing_for_a_lease() {
    let mut lab = running(Spec::default());
    lab.kill("db1");
    lab.start("db1");
    let restarted = Instant::now();
    // The restarted agent removes the VIP its predecessor left, at once (not the kernel
    // lifetime, which would take up to a second): it says so only if it found it.
    assert!(
        wait_for(Duration::from_secs(2), || lab
            .log("db1")
            .contains("removed a VIP left behind")),
        "{}",
        lab.logs()
    );
    // The observer samples every few milliseconds: give it one more round.
    assert!(wait_for(Duration::from_millis(200), || !lab
        .observer()
        .holders(VIP4)
        .contains(&"db1".to_string())));
    // Throughout its first lease it neither votes nor acknowledges: it may have granted a
    // lease just before the crash that it no longer remembers.
    let mut samples = 0;
    while restarted.elapsed() < LEASE * 9 / 10 {
        if let Some(s) = lab.status("db1") {
            assert_eq!(s.grants_sent, 0, "db1 granted during its first lease: {s:?}");
            samples += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        samples > 5,
        "db1 answered status only {samples} times in its first lease"
    );
    // Someone owns again (db2, or db1 after its quiet lease), and never two at once.
    assert!(
        wait_for(3 * LEASE + Duration::from_secs(3), || lab
            .observer()
            .holders(VIP4)
            .len()
            == 1),
        "{}",
        lab.logs()
    );
    let owner = lab.observer().holders(VIP4)[0].clone();
    println!("after the restart {owner} owns");
    if let Some(first) = lab.status("db1").unwrap().first_grant_after_start_ms {
        assert!(
            first >= LEASE.as_millis() as u64,
            "db1 granted {first} ms after restart"
        );
    }
    lab.assert_never_two_holders(VIP4);
}

#[test]
fn forged_and_replayed_datagrams_from_a_rogue_host_change_nothing_and_are_counted() {
    let mut lab = running(Spec::default());
    lab.add_host(lab::ROGUE, 66);
    let genuine = lab.capture("db1", 10, Duration::from_secs(3));
    assert!(genuine.len() >= 5, "captured only {} datagrams", genuine.len());
    let term = lab.status("db1").unwrap().term;
    // Forged: well-formed, claiming db2 owns a much later term, under the wrong key.
    let config = lab.config();
    let ids: Vec<String> = config.nodes.iter().map(|n| n.id.clone()).collect();
    let timing = config.core_settings(1, 0).timing();
    let forger = vipgate::net::Codec::new("lab", &[7u8; 32], config.fingerprint(), timing, ids, 1);
    let claim = vipgate::net::Datagram::Core(vipgate::core::Message::Heartbeat(vipgate::core::Heartbeat {
        term: term + 100,
        seq: 1,
        owner: Some(1),
        lease_claim: true,
        eligible: true,
        blocked: false,
        preferred: false,
        position: u64::MAX,
        priority: 255,
    }));
    let mut forged = Vec::new();
    for (i, n) in config.nodes.iter().enumerate() {
        if n.id != "db2" {
            forged.push((n.address, forger.encode(i as u8, u64::MAX, i as u64 + 1, &claim)));
        }
    }
    lab.send_from(lab::ROGUE, forged);
    lab.send_from(lab::ROGUE, genuine);
    std::thread::sleep(LEASE);
    let s = lab.status("db1").unwrap();
    assert_eq!((s.role.as_str(), s.term), ("owner", term), "{}", lab.logs());
    assert!(lab.observer().sole_holder(VIP4, "db1"));
    let dropped = |name: &str, reason: &str| {
        lab.status(name)
            .unwrap()
            .dropped
            .get(reason)
            .copied()
            .unwrap_or(0)
    };
    assert!(
        dropped("db1", "bad_mac") >= 1,
        "{:?}",
        lab.status("db1").unwrap().dropped
    );
    let replayed: u64 = ["db2", "w1"].iter().map(|n| dropped(n, "replayed")).sum();
    assert!(
        replayed >= 5,
        "replays counted: {replayed}; {:?}",
        lab.status("w1").unwrap().dropped
    );
    assert_eq!(lab.observer().runs("db1", VIP4).len(), 1);
}

#[test]
fn vip_removed_by_someone_else_while_owner_is_put_back_and_counted() {
    let lab = running(Spec::default());
    let term = lab.status("db1").unwrap().term;
    let db1 = lab.host("db1").ns.clone();
    lab::sh(&[
        "ip",
        "-n",
        &db1,
        "addr",
        "del",
        &format!("{VIP4}/24"),
        "dev",
        "eth0",
    ]);
    assert!(
        wait_for(Duration::from_secs(2), || lab
            .status("db1")
            .is_some_and(|s| s.vip.readded >= 1)),
        "{}",
        lab.logs()
    );
    assert!(wait_for(Duration::from_secs(1), || lab
        .observer()
        .sole_holder(VIP4, "db1")));
    // No election happened: db2 follows db1's term (it learns it from db1's heartbeats, which a
    // loaded machine may deliver a little late).
    let same_term = || lab.status("db1").unwrap().term == lab.status("db2").unwrap().term;
    assert!(
        wait_for(Duration::from_secs(2), same_term),
        "{:?} {:?}",
        lab.status("db1").map(|s| s.term),
        lab.status("db2").map(|s| s.term)
    );
    assert_eq!(
        lab.status("db1").unwrap().term,
        term,
        "the VIP put back without a new term"
    );
}

#[test]
fn ipv6_vip_moves_too_and_the_client_follows_the_unsolicited_na() {
    let lab = running(Spec {
        ipv6_vip: true,
        ..Spec::default()
    });
    lab.expect_sole_holder(VIP6, "db1", Duration::from_secs(2));
    assert!(lab.client_ping(VIP6), "the client cannot ping {VIP6}");
    assert_eq!(
        lab.client_neighbour(VIP6).as_deref(),
        Some(lab.host("db1").mac.as_str())
    );
    lab.link_down("db1");
    lab.expect_sole_holder(VIP6, "db2", 3 * LEASE + Duration::from_secs(3));
    lab.expect_sole_holder(VIP4, "db2", Duration::from_secs(1));
    let db2_mac = lab.host("db2").mac.clone();
    assert!(
        wait_for(Duration::from_secs(2), || lab.client_neighbour(VIP6).as_deref()
            == Some(db2_mac.as_str())),
        "the client's entry for {VIP6} is still {:?}",
        lab.client_neighbour(VIP6)
    );
    assert!(lab.client_ping(VIP6));
    lab.assert_never_two_holders(VIP6);
    lab.assert_never_two_holders(VIP4);
}

#[test]
fn status_prints_a_table_and_json() {
    let lab = running(Spec::default());
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .arg("status")
            .arg("--config")
            .arg(lab.config_path("db2"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    // db2 learns the owner from db1's first renewal after the election, and
    // grants from then on: wait for that before reading the table.
    let learned = |json: &serde_json::Value| json["owner"] == "db1" && json["grant"].is_object();
    assert!(
        wait_for(Duration::from_secs(3), || {
            serde_json::from_str(&run(&["--json"])).is_ok_and(|j| learned(&j))
        }),
        "db2 never saw db1 as owner with a grant:\n{}",
        run(&["--json"])
    );
    let table = run(&[]);
    assert!(table.starts_with("db2 (lab)  follower"), "{table}");
    assert!(table.contains("owner db1"), "{table}");
    for row in ["db1 ", "db2*", "w1 "] {
        assert!(
            table.lines().any(|l| l.starts_with(row)),
            "no row {row:?}:\n{table}"
        );
    }
    let json: serde_json::Value = serde_json::from_str(&run(&["--json"])).unwrap();
    assert_eq!(json["owner"], "db1");
    assert_eq!(json["peers"].as_array().unwrap().len(), 3);
    assert!(json["grant"]["remaining_ms"].as_u64().is_some());
    // The owner measures each voter's round trip: its heartbeat to the ack echoing it.
    let timed = || {
        let owner = lab.status("db1").expect("db1 answers");
        let peers = owner.peers.iter().filter(|p| p.id != "db1" && p.rtt_us.is_some());
        peers.count() == 2 && owner.sent > 0 && owner.received > 0
    };
    assert!(wait_for(Duration::from_secs(2), timed), "{:?}", lab.status("db1"));
}

#[test]
fn lossy_links_never_put_the_vip_on_two_hosts() {
    let mut lab = running(Spec::default());
    // Both database hosts lose 30 % of their frames, each way.
    for host in ["db1", "db2"] {
        lab.lossy(host, 30);
    }
    std::thread::sleep(6 * LEASE);
    lab.assert_never_two_holders(VIP4);
    assert!(
        wait_for(3 * LEASE, || lab.observer().holders(VIP4).len() == 1),
        "no one holds the VIP\n{}",
        lab.logs()
    );
    let moves = lab.observer().runs("db1", VIP4).len() + lab.observer().runs("db2", VIP4).len() - 1;
    println!(
        "under 30 % loss the VIP moved {moves} time(s) in {} s",
        6 * LEASE.as_secs()
    );
}
