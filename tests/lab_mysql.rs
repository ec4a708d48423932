//! The database gate with real MariaDB replication in network namespaces: db1 the primary, db2
//! its read_only replica, witness w1, agents in `[mysql] mode = "gate"`. Needs root.

mod lab;

use lab::{Lab, Spec, VIP4, wait_for};
use nix::sys::signal::Signal;
use std::path::Path;
use std::time::{Duration, Instant};

fn gated() -> Lab {
    let mut lab = Lab::new(
        Path::new(env!("CARGO_BIN_EXE_vipgate")),
        Spec {
            mysql: Some("gate"),
            ..Spec::default()
        },
    );
    lab.start_all();
    lab.expect_sole_holder(VIP4, "db1", Duration::from_secs(6));
    lab
}

#[test]
fn gate_mode_vip_follows_the_database_an_operator_makes_writable() {
    let lab = gated();
    let db2 = lab.status("db2").unwrap();
    let reason = db2.ineligible_reason.unwrap_or_default();
    assert!(
        reason.contains("read_only"),
        "db2 should wait as a read_only replica: {reason}"
    );
    let replica = db2
        .database
        .as_ref()
        .and_then(|d| d.replication.clone())
        .expect("db2 is a replica");
    assert!(replica.io_running && replica.sql_running, "{replica:?}");
    assert_eq!(replica.source, "192.0.2.11");
    let db1 = lab.status("db1").unwrap().database.unwrap();
    assert!(db1.healthy && db1.read_only == Some(false), "{db1:?}");
    assert!(db1.version.as_deref().unwrap_or_default().contains("MariaDB"));
    // Every agent sees the whole cluster's databases: the witness hears both reports.
    let seen = |node: &str, want: fn(&vipgate::control::PeerDb) -> bool| {
        wait_for(Duration::from_secs(3), || {
            lab.status("w1").is_some_and(|s| {
                s.peers
                    .iter()
                    .any(|p| p.id == node && p.database.as_ref().is_some_and(want))
            })
        })
    };
    assert!(seen("db1", |d| d.healthy && d.writable && !d.gtid.is_empty()));
    assert!(seen("db2", |d| d.healthy
        && !d.writable
        && d.replicating
        && d.lag_s == Some(0)));

    // The operator (or another tool) moves the primary: db1 read-only, db2 promoted.
    lab.sql("db1", "SET GLOBAL read_only = ON");
    lab.sql("db2", "STOP SLAVE; SET GLOBAL read_only = OFF");
    lab.expect_sole_holder(VIP4, "db2", Duration::from_secs(6));
    lab.assert_never_two_holders(VIP4);
    assert!(lab.client_ping(VIP4));
    let s = lab.status("db1").unwrap();
    assert!(s.ineligible_reason.unwrap_or_default().contains("read_only"));
    assert_eq!(s.owner.as_deref(), Some("db2"));
    // Its position travels with its heartbeats: every agent ranks by it.
    let position = lab.status("db2").unwrap().database.unwrap().position;
    assert!(position > 0, "db2's GTID position was not read");
    assert!(wait_for(Duration::from_secs(2), || {
        lab.status("w1")
            .unwrap()
            .peers
            .iter()
            .any(|p| p.id == "db2" && p.position == position)
    }));
}

#[test]
fn a_hung_database_makes_its_owner_give_the_vip_up_without_blocking_the_agent() {
    let lab = gated();
    lab.signal_mariadb("db1", Signal::SIGSTOP);
    let frozen = Instant::now();
    // fall (3) checks of 200 ms, each bounded by 200 ms: about 0.8 s, plus the release.
    assert!(
        wait_for(Duration::from_secs(5), || lab.observer().holders(VIP4).is_empty()),
        "db1 kept the VIP over a hung database\n{}",
        lab.logs()
    );
    println!(
        "db1 gave the VIP up {} ms after its database froze",
        frozen.elapsed().as_millis()
    );
    // The agent still answers, and says why.
    let s = lab.status("db1").expect("the agent must stay responsive");
    let db = s.database.unwrap();
    assert!(!db.healthy);
    assert!(db.problem.unwrap_or_default().contains("no answer within 200 ms"));
    // db2 is a read_only replica: in gate mode no one may own.
    std::thread::sleep(Duration::from_secs(2));
    assert!(lab.observer().holders(VIP4).is_empty());
    lab.signal_mariadb("db1", Signal::SIGCONT);
    lab.expect_sole_holder(VIP4, "db1", Duration::from_secs(6));
    lab.assert_never_two_holders(VIP4);
}

#[test]
fn check_config_probe_reports_the_server_and_the_privileges_a_mode_lacks() {
    let lab = Lab::new(
        Path::new(env!("CARGO_BIN_EXE_vipgate")),
        Spec {
            mysql: Some("promote"),
            ..Spec::default()
        },
    );
    let probe = |config: &Path| {
        let args = [
            config.as_os_str(),
            "--node".as_ref(),
            "db1".as_ref(),
            "--probe".as_ref(),
        ];
        lab.vipgate_in("db1", &[&["check-config".as_ref()], &args[..]].concat())
    };
    // The documented GRANT is exactly enough.
    let (ok, text) = probe(&lab.config_path("db1"));
    assert!(ok, "{text}");
    assert!(text.contains("fence     OK: this kernel"), "{text}");
    assert!(text.contains("MariaDB 10."), "{text}");
    assert!(text.contains("privileges all that promote mode needs"), "{text}");
    assert!(text.contains("strict mode ON"), "{text}");
    assert!(text.contains("rpl_semi_sync_master_enabled=ON"), "{text}");
    // An account with only the monitoring privilege is fine for gate mode, not for promote.
    lab.sql(
        "db1",
        "CREATE USER watcher@'%' IDENTIFIED BY 'vipgate-lab-password'; GRANT SLAVE MONITOR ON *.* TO watcher@'%'",
    );
    let weak = lab.config_path("db1").with_file_name("weak.toml");
    std::fs::write(
        &weak,
        std::fs::read_to_string(lab.config_path("db1"))
            .unwrap()
            .replace("user = \"vipgate\"", "user = \"watcher\""),
    )
    .unwrap();
    let (ok, text) = probe(&weak);
    assert!(!ok, "{text}");
    assert!(
        text.contains("watcher lacks PROCESS, READ_ONLY ADMIN, CONNECTION ADMIN"),
        "{text}"
    );
    std::fs::write(
        &weak,
        std::fs::read_to_string(&weak)
            .unwrap()
            .replace("mode = \"promote\"", "mode = \"gate\""),
    )
    .unwrap();
    let (ok, text) = probe(&weak);
    assert!(ok, "{text}");
}
