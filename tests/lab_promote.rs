//! Promote mode with real MariaDB replication (semi-synchronous) in network namespaces: db1 the
//! primary, db2 its replica, witness w1, and a client writing through the VIP and recording
//! every acknowledged row. Needs root.

mod lab;

use lab::{Lab, Spec, VIP4, wait_for};
use nix::sys::signal::Signal;
use std::path::Path;
use std::time::{Duration, Instant};

fn promoting(max_lag_ms: u64) -> Lab {
    let mut lab = Lab::new(
        Path::new(env!("CARGO_BIN_EXE_vipgate")),
        Spec {
            mysql: Some("promote"),
            max_lag_ms,
            ..Spec::default()
        },
    );
    lab.start_all();
    lab.expect_sole_holder(VIP4, "db1", Duration::from_secs(8));
    lab.expect_followed("db1", Duration::from_secs(3));
    lab
}

/// Writes through the VIP, breaks db1's database with `fault`, and checks that db2 is promoted,
/// writes resume, and no acknowledged row is missing on db2. Returns the write downtime.
fn failover_under_writes(lab: &mut Lab, fault: impl FnOnce(&mut Lab)) -> Duration {
    assert_eq!(
        lab.read_only("db1"),
        Some(false),
        "the owner's database must be writable"
    );
    assert_eq!(lab.read_only("db2"), Some(true), "the replica must be fenced");
    let writer = lab.writer();
    std::thread::sleep(Duration::from_millis(800));
    let broken = Instant::now();
    fault(lab);
    lab.expect_sole_holder(VIP4, "db2", Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(800));
    let acked = writer.finish();
    let before = acked.iter().filter(|(_, t)| *t < broken).count();
    assert!(before > 5, "only {before} writes before the fault");
    assert!(
        acked.last().is_some_and(|(_, t)| *t > broken),
        "no write succeeded after the failover"
    );
    // The longest pause between acknowledged writes around the fault.
    let downtime = lab::longest_pause(&acked, broken);
    let lost = lab.missing_rows("db2", &acked);
    println!(
        "{} rows acknowledged ({before} before the fault); write downtime {} ms; lost acknowledged rows: {}",
        acked.len(),
        downtime.as_millis(),
        lost.len()
    );
    for line in lab.log("db1").lines().chain(lab.log("db2").lines()) {
        if std::env::var("LAB_VERBOSE").is_ok()
            || line.contains("promoted")
            || line.contains("releasing")
            || line.contains("failing")
        {
            println!("  {line}");
        }
    }
    assert!(
        lost.is_empty(),
        "acknowledged rows missing on the new primary: {lost:?}\n{}",
        lab.logs()
    );
    assert_eq!(lab.read_only("db2"), Some(false));
    let replica = lab.status("db2").unwrap().database.unwrap().replication.unwrap();
    assert!(
        !replica.io_running && !replica.sql_running,
        "replication still runs on the new primary"
    );
    lab.assert_never_two_holders(VIP4);
    downtime
}

#[test]
fn primary_database_killed_the_replica_is_promoted_and_no_acknowledged_write_is_lost() {
    let mut lab = promoting(10_000);
    failover_under_writes(&mut lab, |lab| lab.kill_mariadb("db1"));
    assert!(lab.log("db2").contains("database promoted"), "{}", lab.log("db2"));
    let steps = lab.status("db2").unwrap().step_ms;
    assert!(steps.contains_key("promotion"), "{steps:?}");
    assert!(
        lab.log("db1").contains("local node no longer eligible"),
        "{}",
        lab.log("db1")
    );
}

#[test]
fn primary_database_frozen_the_replica_takes_over_and_the_old_one_is_fenced_when_it_thaws() {
    let mut lab = promoting(10_000);
    // A client connected through the VIP, waiting on the primary with no timeout of its own
    // (the server's greeting read, then silence once it freezes).
    let script = lab.dir.path().join("idle-client.sh");
    std::fs::write(
        &script,
        "exec 3<>/dev/tcp/$1/3306 || exit 2\necho connected\nstart=$(date +%s%N)\n\
         timeout 60 cat <&3 >/dev/null\necho \"ended rc=$? after $(( ($(date +%s%N) - start) / 1000000 )) ms\"\n",
    )
    .unwrap();
    let idle = lab.client_script(script.to_str().unwrap(), &[VIP4]);
    assert!(
        wait_for(Duration::from_secs(5), || idle.output().contains("connected")),
        "the idle client did not connect: {}",
        idle.output()
    );
    failover_under_writes(&mut lab, |lab| lab.signal_mariadb("db1", Signal::SIGSTOP));
    // Judged from the client: the old owner reset its connection when it released, so it
    // learns at once (`cat` fails on the reset) instead of hanging on the frozen server.
    assert!(
        wait_for(Duration::from_secs(5), || idle.output().contains("ended")),
        "the client stuck on the frozen primary was not reset\n{}",
        lab.log("db1")
    );
    assert!(idle.output().contains("ended rc=1 "), "{}", idle.output());
    lab.signal_mariadb("db1", Signal::SIGCONT);
    // db1's database comes back writable; its agent does not own and fences it.
    assert!(
        wait_for(Duration::from_secs(5), || lab.read_only("db1") == Some(true)),
        "the thawed old primary stayed writable\n{}\nprocesslist:\n{}",
        lab.log("db1"),
        lab.try_sql("db1", "SHOW FULL PROCESSLIST").unwrap_or_default()
    );
    assert!(lab.observer().sole_holder(VIP4, "db2"));
}

#[test]
fn a_replica_lagging_beyond_max_lag_is_not_promoted_until_it_catches_up() {
    let mut lab = promoting(2_000);
    // db2 applies events 8 s late; a write makes it fall behind.
    lab.sql(
        "db2",
        "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 8; START SLAVE",
    );
    lab.sql("db1", "INSERT INTO lab.writes (id) VALUES (1000000)");
    let written = Instant::now();
    assert!(
        wait_for(Duration::from_secs(7), || {
            lab.status("db2")
                .and_then(|s| s.ineligible_reason)
                .is_some_and(|r| r.contains("behind its source"))
        }),
        "db2 never reported its lag: {:?}",
        lab.status("db2").map(|s| s.database)
    );
    lab.kill_mariadb("db1");
    assert!(wait_for(Duration::from_secs(5), || lab
        .observer()
        .holders(VIP4)
        .is_empty()));
    // Until the delayed row is applied db2 must not own. MariaDB delays by whole seconds of
    // the event's timestamp, corrected by its clock difference with the source (also whole
    // seconds), so the row may be applied up to 2 s before 8 s have passed: it is certainly
    // unapplied for the first 6 s; after that, whenever db2 owns, it must have the row.
    while written.elapsed() < Duration::from_millis(6_000) {
        assert!(
            lab.observer().holders(VIP4).is_empty(),
            "a lagging replica took the VIP\n{}",
            lab.logs()
        );
        assert_eq!(lab.read_only("db2"), Some(true));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Once it has applied everything it received, it is promoted.
    lab.expect_sole_holder(VIP4, "db2", Duration::from_secs(10));
    assert!(
        lab.rows("db2").contains(&1_000_000),
        "promoted before applying what it received"
    );
    assert_eq!(lab.read_only("db2"), Some(false));
    lab.assert_never_two_holders(VIP4);
}

/// Cuts db1 off, lets db2 take over, runs `while_isolated` on db1's database, and brings db1
/// back.
fn isolate_and_return(lab: &mut Lab, while_isolated: impl FnOnce(&mut Lab)) {
    lab.link_down("db1");
    // db1's database stays up: it must be fenced before db2's becomes writable. Both are read
    // through their local sockets, whatever the network does.
    let end = Instant::now() + Duration::from_secs(10);
    let mut samples = 0;
    while !lab.observer().sole_holder(VIP4, "db2") && Instant::now() < end {
        let (a, b) = (lab.read_only("db1"), lab.read_only("db2"));
        assert!(
            !(a == Some(false) && b == Some(false)),
            "both databases writable at once\n{}",
            lab.logs()
        );
        samples += 1;
    }
    println!("{samples} samples of both databases' read_only during the failover");
    lab.expect_sole_holder(VIP4, "db2", Duration::from_secs(10));
    assert!(
        wait_for(Duration::from_secs(3), || lab.read_only("db1") == Some(true)),
        "db1 did not fence itself"
    );
    while_isolated(lab);
    lab.link_up("db1");
}

#[test]
fn a_former_primary_rejoins_as_a_replica_of_the_new_owner() {
    let mut lab = promoting(10_000);
    lab.sql("db1", "INSERT INTO lab.writes (id) VALUES (1)");
    isolate_and_return(&mut lab, |_| {});
    assert!(
        wait_for(Duration::from_secs(15), || {
            lab.status("db1")
                .and_then(|s| s.database)
                .and_then(|d| d.replication)
                .is_some_and(|r| r.source == "192.0.2.12" && r.io_running && r.sql_running)
        }),
        "db1 did not start replicating from db2\n{}",
        lab.log("db1")
    );
    lab.sql("db2", "INSERT INTO lab.writes (id) VALUES (2)");
    assert!(
        wait_for(Duration::from_secs(5), || lab.rows("db1").contains(&2)),
        "db1 does not receive db2's writes"
    );
    let s = lab.status("db1").unwrap();
    assert_eq!(s.diverged, None);
    assert_eq!(lab.read_only("db1"), Some(true));
    // Semi-sync followed the roles: db2's commits now wait for db1's acknowledgement.
    let status = |name: &str| {
        lab.sql("db2", &format!("SHOW GLOBAL STATUS LIKE '{name}'"))
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(status("Rpl_semi_sync_master_clients"), "1");
    let acked_before: u64 = status("Rpl_semi_sync_master_yes_tx").parse().unwrap();
    lab.sql("db2", "INSERT INTO lab.writes (id) VALUES (3)");
    let acked_after: u64 = status("Rpl_semi_sync_master_yes_tx").parse().unwrap();
    assert_eq!(
        acked_after,
        acked_before + 1,
        "db2's write was not acknowledged by db1"
    );
    assert!(lab.observer().sole_holder(VIP4, "db2"));

    // Provisioning again (as `vagrant provision` does) changes nothing on either server: the
    // former primary is not written to, the new one is not turned into a replica.
    let gtid = |name: &str| lab.sql(name, "SELECT @@global.gtid_binlog_pos");
    let before = (gtid("db1"), gtid("db2"));
    let (ok, out) = lab.mariadb_setup("db1", &["primary", "--demo-schema"]);
    assert!(ok && out.contains("nothing to do"), "{out}");
    let (ok, out) = lab.mariadb_setup("db2", &["replica", "--primary", "192.0.2.11"]);
    assert!(ok && out.contains("is writable (a primary"), "{out}");
    let (ok, out) = lab.mariadb_setup("db1", &["replica", "--primary", "192.0.2.12"]);
    assert!(ok && out.contains("already replicating from 192.0.2.12"), "{out}");
    assert_eq!((gtid("db1"), gtid("db2")), before);
    assert_eq!(lab.read_only("db1"), Some(true));
    assert_eq!(lab.read_only("db2"), Some(false));
    // But a server that replicates and lacks the accounts is refused as a primary.
    lab.sql("db1", "SET sql_log_bin = 0; DROP USER app@'%'");
    let (ok, out) = lab.mariadb_setup("db1", &["primary", "--demo-schema"]);
    assert!(
        !ok && out.contains("this server replicates from 192.0.2.12"),
        "{out}"
    );
    assert_eq!(gtid("db1"), before.0);
    lab.assert_never_two_holders(VIP4);
}

#[test]
fn a_diverged_former_primary_refuses_to_rejoin_and_reports_it() {
    let mut lab = promoting(10_000);
    isolate_and_return(&mut lab, |lab| {
        // Written to the old primary after it lost ownership (root bypasses read_only): the new
        // primary will never have it.
        lab.sql("db1", "INSERT INTO lab.writes (id) VALUES (666)");
    });
    assert!(
        wait_for(Duration::from_secs(15), || lab
            .status("db1")
            .is_some_and(|s| s.diverged.is_some())),
        "db1 did not report its divergence\n{}",
        lab.log("db1")
    );
    let s = lab.status("db1").unwrap();
    let diverged = s.diverged.clone().unwrap();
    println!("db1 reports: {diverged}");
    // MariaDB's binlog states give the count: the one row written while cut off.
    assert!(
        diverged.starts_with("1 transaction(s) that db2 lacks"),
        "{diverged}"
    );
    assert!(s.ineligible_reason.unwrap_or_default().contains("diverged"));
    let replica = s.database.and_then(|d| d.replication);
    assert!(
        replica.is_none_or(|r| !r.io_running),
        "db1 replicates despite diverging"
    );
    assert_eq!(lab.read_only("db1"), Some(true));
    assert!(!lab.rows("db2").contains(&666));
    // The status table makes it impossible to miss.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vipgate"))
        .args(["status", "--config"])
        .arg(lab.config_path("db1"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("DIVERGED:"));
    // And check-config --probe fails on it.
    let config = lab.config_path("db1");
    let (ok, text) = lab.vipgate_in(
        "db1",
        &[
            "check-config".as_ref(),
            "--node".as_ref(),
            "db1".as_ref(),
            "--probe".as_ref(),
            config.as_os_str(),
        ],
    );
    assert!(!ok && text.contains("DIVERGED: 1 transaction(s)"), "{text}");
    lab.assert_never_two_holders(VIP4);
}

fn vipgate(lab: &Lab, node: &str, args: &[&str]) -> (bool, String) {
    let config = lab.config_path(node);
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    all.push("--config".as_ref());
    all.push(config.as_os_str());
    lab.vipgate(&all)
}

#[test]
fn switchover_under_writes_loses_no_acknowledged_row_and_the_old_primary_follows() {
    let lab = promoting(10_000);
    // Not on a node that does not own.
    let (ok, text) = vipgate(&lab, "db2", &["switchover", "--to", "db2"]);
    assert!(!ok && text.contains("the owner is db1"), "{text}");
    let writer = lab.writer();
    std::thread::sleep(Duration::from_millis(800));
    let asked = Instant::now();
    let (ok, text) = vipgate(&lab, "db1", &["switchover", "--to", "db2"]);
    assert!(ok, "{text}\n{}", lab.logs());
    println!("{}", text.trim());
    lab.expect_sole_holder(VIP4, "db2", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(800));
    let acked = writer.finish();
    let pause = lab::longest_pause(&acked, asked);
    let lost = lab.missing_rows("db2", &acked);
    println!(
        "switchover: {} rows acknowledged; write pause {} ms; lost: {}",
        acked.len(),
        pause.as_millis(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged rows missing after the switchover: {lost:?}"
    );
    assert!(
        acked.last().is_some_and(|(_, t)| *t > asked + pause),
        "writes did not resume"
    );
    assert!(
        lab.log("db2")
            .lines()
            .any(|l| l.contains("waiting until this database has the old primary's") && l.contains("(0-1-")),
        "{}",
        lab.log("db2")
    );
    // The old primary was fenced, and follows the new one.
    assert_eq!(lab.read_only("db1"), Some(true));
    assert!(
        wait_for(Duration::from_secs(10), || {
            lab.status("db1")
                .and_then(|s| s.database)
                .and_then(|d| d.replication)
                .is_some_and(|r| r.source == "192.0.2.12" && r.io_running && r.sql_running)
        }),
        "db1 does not replicate from db2\n{}",
        lab.log("db1")
    );
    lab.assert_never_two_holders(VIP4);
}

#[test]
fn maintenance_hands_ownership_over_and_keeps_the_node_out_until_ended() {
    let lab = promoting(10_000);
    let (ok, text) = vipgate(&lab, "db1", &["maintenance", "on"]);
    assert!(ok && text.contains("handing ownership over"), "{text}");
    lab.expect_sole_holder(VIP4, "db2", Duration::from_secs(5));
    let s = lab.status("db1").unwrap();
    assert!(s.maintenance);
    assert!(s.ineligible_reason.unwrap_or_default().contains("maintenance"));
    let (_, table) = vipgate(&lab, "db1", &["status"]);
    assert!(table.contains("maintenance mode"), "{table}");
    // Off again: eligible once it has caught up (it rejoins db2 as a replica); no preemption,
    // so db2 keeps the VIP.
    let (ok, _) = vipgate(&lab, "db1", &["maintenance", "off"]);
    assert!(ok);
    assert!(
        wait_for(Duration::from_secs(10), || lab
            .status("db1")
            .is_some_and(|s| s.eligible)),
        "db1 did not become eligible again: {:?}",
        lab.status("db1").map(|s| s.ineligible_reason)
    );
    assert!(lab.observer().sole_holder(VIP4, "db2"));
    lab.assert_never_two_holders(VIP4);
}

#[test]
fn a_former_primary_that_has_not_rejoined_is_never_handed_ownership() {
    let mut lab = promoting(10_000);
    isolate_and_return(&mut lab, |lab| {
        // db1 comes back without a replication account: it cannot rejoin on its own. Its
        // agent is stopped while still cut off, since the running one still holds the account
        // and could rejoin in the moment between the link coming up and a restart.
        lab.kill("db1");
        let config = lab.config_path("db1");
        let text = std::fs::read_to_string(&config).unwrap();
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with("replication_"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&config, text).unwrap();
    });
    lab.start("db1");
    assert!(
        wait_for(Duration::from_secs(5), || {
            lab.status("db1")
                .and_then(|s| s.ineligible_reason)
                .is_some_and(|r| r.contains("must rejoin first"))
        }),
        "db1 should wait to rejoin: {:?}",
        lab.status("db1").map(|s| s.ineligible_reason)
    );
    // The owner stops gracefully and hands over to the best candidate: there is none, since
    // db1's database lacks db2's writes. Nobody owns rather than rolling back.
    assert_eq!(lab.stop("db2", Duration::from_secs(5)), Some(0));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        lab.observer().runs("db1", VIP4).len() <= 1,
        "db1 took the VIP back\n{}",
        lab.logs()
    );
    assert!(!lab.observer().holders(VIP4).contains(&"db1".to_string()));
    assert_eq!(lab.read_only("db1"), Some(true));
    lab.assert_never_two_holders(VIP4);
}

#[test]
fn after_an_automatic_failover_the_next_one_waits_for_an_operator_but_planned_moves_do_not() {
    // The shipped default window: one hour.
    let mut lab = promoting(10_000);
    lab.kill_mariadb("db1");
    lab.expect_sole_holder(VIP4, "db2", Duration::from_secs(15));
    let s = lab.status("db2").unwrap();
    let left = s.failover_block_remaining_ms.unwrap_or_default();
    assert!(left > 3_500_000, "db2 opened no window: {left} ms");
    assert!(!s.takeover_blocked, "the owner itself is not blocked");
    // db1's database comes back, is fenced and rejoins db2; it learns the window from db2.
    lab.start_mariadb("db1", 1);
    assert!(
        wait_for(Duration::from_secs(20), || lab
            .status("db1")
            .is_some_and(|s| s.eligible && s.takeover_blocked)),
        "db1 did not become an eligible, blocked replica: {:?}\n{}",
        lab.status("db1")
            .map(|s| (s.ineligible_reason, s.failover_block_remaining_ms)),
        lab.log("db1")
    );
    // Only the owner can lift the cluster's window.
    let (ok, text) = vipgate(&lab, "db1", &["failover-ack"]);
    assert!(
        !ok && text.contains("run `vipgate failover-ack` on db2"),
        "{text}"
    );
    lab.sql("db2", "INSERT INTO lab.writes (id) VALUES (7)");
    assert!(wait_for(Duration::from_secs(5), || lab.rows("db1").contains(&7)));

    // The new primary's database dies too: no second automatic failover.
    lab.kill_mariadb("db2");
    assert!(
        wait_for(Duration::from_secs(5), || lab.observer().holders(VIP4).is_empty()),
        "db2 kept the VIP without a database"
    );
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(4) {
        assert!(
            lab.observer().holders(VIP4).is_empty(),
            "a second automatic failover inside the window\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, table) = vipgate(&lab, "db1", &["status"]);
    assert!(table.contains("failover block: 60 min left"), "{table}");
    // The operator decides: db1 takes over, with every row db2 had acknowledged.
    let (ok, text) = vipgate(&lab, "db1", &["failover-ack"]);
    assert!(ok, "{text}");
    lab.expect_sole_holder(VIP4, "db1", Duration::from_secs(10));
    assert!(lab.rows("db1").contains(&7));
    assert_eq!(lab.read_only("db1"), Some(false));
    // It was a failover too: the window opens again.
    assert!(
        lab.status("db1")
            .and_then(|s| s.failover_block_remaining_ms)
            .is_some_and(|ms| ms > 3_500_000)
    );

    // A planned switchover inside the window is not blocked.
    lab.start_mariadb("db2", 2);
    assert!(
        wait_for(Duration::from_secs(20), || lab
            .status("db2")
            .is_some_and(|s| s.eligible && s.takeover_blocked)),
        "db2 did not become an eligible, blocked replica: {:?}",
        lab.status("db2").map(|s| s.ineligible_reason)
    );
    assert!(
        wait_for(Duration::from_secs(2), || lab.status("db1").is_some_and(|s| s
            .peers
            .iter()
            .any(|p| p.id == "db2" && p.eligible && p.role != "silent"))),
        "db1 does not see db2 eligible"
    );
    let (ok, text) = vipgate(&lab, "db1", &["switchover", "--to", "db2"]);
    assert!(ok, "{text}\n{}", lab.logs());
    lab.expect_sole_holder(VIP4, "db2", Duration::from_secs(5));
    // On the owner, an ack lifts the window for everyone.
    let (ok, text) = vipgate(&lab, "db2", &["failover-ack"]);
    assert!(ok && text.contains("for the cluster"), "{text}");
    assert!(
        wait_for(Duration::from_secs(5), || lab
            .status("db1")
            .is_some_and(
                |s| s.failover_block_remaining_ms.is_none() && !s.takeover_blocked
            )),
        "db1 still follows a window: {:?}",
        lab.status("db1").map(|s| s.failover_block_remaining_ms)
    );
    lab.assert_never_two_holders(VIP4);
}

#[test]
fn the_vagrant_labs_client_writes_through_a_failover_and_checks_its_acknowledged_rows() {
    let mut lab = promoting(10_000);
    // As the Vagrant lab's client provisioning puts it, for the app account.
    let password = lab.dir.path().join(".lab-app-password");
    std::fs::copy(lab.dir.path().join("app-password"), &password).unwrap();
    let script = format!("{}/vagrant/lab-writes.sh", env!("CARGO_MANIFEST_DIR"));
    let writes = lab.client_script(&script, &[lab::VIP4]);
    std::thread::sleep(Duration::from_secs(3));
    lab.kill_mariadb("db1");
    lab.expect_sole_holder(VIP4, "db2", Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(3));
    // One acknowledged row goes missing behind the script's back (the first one, written
    // seconds before the fault): its check must see exactly that one.
    lab.sql(
        "db2",
        "DELETE FROM lab.writes WHERE id = (SELECT MIN(id) FROM lab.writes WHERE id > 1000000000)",
    );
    // The script may be in a statement (at most 5 s) when interrupted, and its check makes two
    // more (5 s each): give it all that before judging.
    let (code, out) = writes.interrupt(Duration::from_secs(20));
    println!("{out}");
    // "14:02:11  9 acknowledged by <host> (server 1)", then the check: "<n> rows
    // acknowledged, 1 of them missing on <host> (server 2)".
    let summary = out.lines().last().unwrap_or_default();
    let acknowledged: usize = summary
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        code == Some(1)
            && summary.contains(" rows acknowledged, 1 of them missing on ")
            && summary.ends_with("(server 2)"),
        "exit {code:?}: {out}"
    );
    assert!(acknowledged > 20, "only {acknowledged} rows: {out}");
    for server in ["(server 1)", "(server 2)"] {
        assert!(
            out.lines()
                .filter(|l| l.contains(" acknowledged by ") && l.ends_with(server))
                .count()
                >= 2,
            "{out}"
        );
    }
    lab.assert_never_two_holders(VIP4);
}

#[test]
fn a_pre_promote_hook_can_veto_a_promotion_until_it_agrees() {
    let mut lab = Lab::new(
        Path::new(env!("CARGO_BIN_EXE_vipgate")),
        Spec {
            mysql: Some("promote"),
            ..Spec::default()
        },
    );
    // db2's check refuses while a flag file exists.
    let flag = lab.dir.path().join("hold-promotion");
    std::fs::write(&flag, "").unwrap();
    let veto = lab.dir.path().join("veto.sh");
    std::fs::write(
        &veto,
        format!(
            "#!/bin/sh\n[ \"$VIPGATE_EVENT\" = pre_promote ] || exit 3\n[ ! -e {} ]\n",
            flag.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&veto, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = lab.config_path("db2");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("\n[hooks]\npre_promote = \"{}\"\n", veto.display()));
    std::fs::write(&config, text).unwrap();
    lab.start_all();
    lab.expect_sole_holder(VIP4, "db1", Duration::from_secs(8));
    lab.kill_mariadb("db1");
    assert!(
        wait_for(Duration::from_secs(10), || lab
            .log("db2")
            .contains("vetoed by the pre_promote hook")),
        "{}",
        lab.log("db2")
    );
    assert!(
        lab.observer().holders(VIP4).is_empty(),
        "promoted despite the veto"
    );
    assert_eq!(lab.read_only("db2"), Some(true));
    // The check agrees: the next attempt promotes.
    std::fs::remove_file(&flag).unwrap();
    lab.expect_sole_holder(VIP4, "db2", Duration::from_secs(20));
    assert_eq!(lab.read_only("db2"), Some(false));
    lab.assert_never_two_holders(VIP4);
}

/// The seed's multi-replica case. Semi-sync needs one replica's acknowledgement, so replicas
/// differ: here db3 (priority 120) stops receiving, and only db2 (priority 100) holds every
/// write db1 acknowledges. When db1's host dies, db2 is promoted — data before priority, or
/// acknowledged rows would be lost — db3 re-points at it and catches up, and no acknowledged
/// row is missing on either.
#[test]
fn with_two_replicas_the_one_holding_every_acknowledged_write_is_promoted_and_the_other_follows_it() {
    let mut lab = Lab::new(
        Path::new(env!("CARGO_BIN_EXE_vipgate")),
        Spec {
            mysql: Some("promote"),
            db3: true,
            ..Spec::default()
        },
    );
    lab.start_all();
    lab.expect_sole_holder(VIP4, "db1", Duration::from_secs(8));
    lab.expect_followed("db1", Duration::from_secs(3));
    lab.sql("db3", "STOP SLAVE IO_THREAD");
    let writer = lab.writer();
    std::thread::sleep(Duration::from_millis(1500));
    let db3_rows = lab.rows("db3").len();
    assert!(
        lab.rows("db2").len() > db3_rows,
        "db3 should have missed writes that db2 has"
    );
    let crashed = Instant::now();
    lab.link_down("db1");
    lab.kill("db1");
    lab.kill_mariadb("db1");
    lab.expect_sole_holder(VIP4, "db2", Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(800));
    let acked = writer.finish();
    assert!(
        acked.last().is_some_and(|(_, t)| *t > crashed),
        "no write succeeded after the failover\n{}",
        lab.logs()
    );
    let lost = lab.missing_rows("db2", &acked);
    assert!(lost.is_empty(), "acknowledged rows missing on db2: {lost:?}");
    // db3 follows the new primary and gets everything it missed.
    let db2 = lab.host("db2").ip4.clone();
    let caught_up = wait_for(Duration::from_secs(20), || {
        lab.status("db3")
            .and_then(|s| s.database)
            .and_then(|d| d.replication)
            .is_some_and(|r| r.source == db2 && r.io_running && r.sql_running)
            && lab.missing_rows("db3", &acked).is_empty()
    });
    assert!(
        caught_up,
        "db3 did not catch up from db2: {:?}\n{}",
        lab.status("db3")
            .and_then(|s| s.database)
            .and_then(|d| d.replication),
        lab.log("db3")
    );
    assert_eq!(lab.read_only("db3"), Some(true));
    assert!(lab.observer().sole_holder(VIP4, "db2"));
}
