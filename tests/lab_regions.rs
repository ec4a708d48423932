//! Two regions joined by a router: db1 and the client in region a (192.0.2.0/24, VIP
//! 192.0.2.50), db2 and the witness w1 in region b (198.51.100.0/24, VIP 198.51.100.50). Every
//! agent serves DNS. Needs root.

mod lab;

use lab::{Lab, Spec, TSIG_KEY, VIP_B, VIP4, wait_for};
use std::path::Path;
use std::time::{Duration, Instant};

/// Every agent serves DNS and pushes the primary record to a BIND server in region a (ns1).
fn two_regions(cross_region_failover: bool) -> Lab {
    let mut lab = Lab::new(
        Path::new(env!("CARGO_BIN_EXE_vipgate")),
        Spec {
            regions: Some(cross_region_failover),
            dns: Some(lab::DNS_UPDATE.into()),
            ..Spec::default()
        },
    );
    lab.start_update_server(&[("db1", TSIG_KEY), ("db2", TSIG_KEY), ("w1", TSIG_KEY)]);
    lab.start_all();
    lab.expect_sole_holder(VIP4, "db1", Duration::from_secs(8));
    lab
}

/// The primary record's addresses as `server` answers them.
fn primary(lab: &Lab, server: &str) -> Vec<String> {
    lab.dig(&[&format!("@{server}"), "primary.db.example.test.", "A", "+short"])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn with_cross_region_failover_region_b_takes_over_with_its_own_vip_and_dns_follows() {
    let lab = two_regions(true);
    // Region b's agents answer region a's VIP, across the router; so does BIND.
    for server in ["192.0.2.11", "198.51.100.12", "198.51.100.13"] {
        assert!(
            wait_for(Duration::from_secs(3), || primary(&lab, server) == [VIP4]),
            "{server}: {:?}",
            primary(&lab, server)
        );
    }
    assert!(wait_for(Duration::from_secs(5), || lab
        .served_by_update_server()
        .0
        == VIP4));
    // Region a loses its database host.
    lab.link_down("db1");
    lab.expect_sole_holder(VIP_B, "db2", Duration::from_secs(10));
    assert!(
        lab.observer().holders(VIP4).is_empty(),
        "region a's VIP moved to region b"
    );
    for server in ["198.51.100.12", "198.51.100.13"] {
        assert!(
            wait_for(Duration::from_secs(3), || primary(&lab, server) == [VIP_B]),
            "{server} answers {:?}",
            primary(&lab, server)
        );
    }
    // The existing DNS server, updated over RFC 2136, serves the new address too.
    assert!(
        wait_for(Duration::from_secs(5), || lab.served_by_update_server().0
            == VIP_B),
        "BIND serves {:?}\n{}",
        lab.served_by_update_server(),
        lab.log("db2")
    );
    assert!(lab.served_by_update_server().1.contains("owner=db2"));
    lab.assert_never_two_holders(VIP4);
    lab.assert_never_two_holders(VIP_B);
}

#[test]
fn without_cross_region_failover_another_region_takes_over_only_by_switchover() {
    let lab = two_regions(false);
    // While db1 (region a) owns, db2 (region b) may take over only when named.
    assert!(
        wait_for(Duration::from_secs(3), || lab
            .status("db2")
            .and_then(|s| s.takeover_blocked_reason)
            .is_some_and(|r| r.contains("cross_region_failover is off"))),
        "db2 does not say why it waits: {:?}",
        lab.status("db2").map(|s| s.takeover_blocked_reason)
    );
    lab.link_down("db1");
    assert!(wait_for(Duration::from_secs(2), || lab
        .observer()
        .holders(VIP4)
        .is_empty()));
    let lost = Instant::now();
    while lost.elapsed() < Duration::from_secs(4) {
        assert!(
            lab.observer().holders(VIP_B).is_empty() && lab.observer().holders(VIP4).is_empty(),
            "an automatic failover into another region: {:?} {:?}\n{}",
            lab.observer().holders(VIP4),
            lab.observer().holders(VIP_B),
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nobody owns, so nobody answers the primary record.
    assert!(primary(&lab, "198.51.100.13").is_empty());
    // db1 comes back and owns again; an operator then moves ownership to region b.
    lab.link_up("db1");
    lab.expect_sole_holder(VIP4, "db1", Duration::from_secs(10));
    assert!(
        wait_for(Duration::from_secs(3), || lab.status("db1").is_some_and(|s| s
            .peers
            .iter()
            .any(|p| p.id == "db2" && p.eligible && p.role != "silent"))),
        "db1 does not see db2 eligible"
    );
    let config = lab.config_path("db1");
    let (ok, text) = lab.vipgate(&[
        "switchover".as_ref(),
        "--to".as_ref(),
        "db2".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert!(ok, "{text}");
    lab.expect_sole_holder(VIP_B, "db2", Duration::from_secs(5));
    assert!(lab.observer().holders(VIP4).is_empty());
    assert!(wait_for(Duration::from_secs(3), || primary(&lab, "192.0.2.11") == [VIP_B]));
    lab.assert_never_two_holders(VIP4);
    lab.assert_never_two_holders(VIP_B);
}

#[test]
fn an_operator_lets_another_region_take_over_when_the_owners_region_is_gone() {
    let lab = two_regions(false);
    lab.link_down("db1");
    assert!(wait_for(Duration::from_secs(2), || lab
        .observer()
        .holders(VIP4)
        .is_empty()));
    std::thread::sleep(Duration::from_secs(2));
    assert!(lab.observer().holders(VIP_B).is_empty());
    let config = lab.config_path("db2");
    let (ok, text) = lab.vipgate(&["failover-ack".as_ref(), "--config".as_ref(), config.as_os_str()]);
    assert!(
        ok && text.contains("may take over from the last owner's region"),
        "{text}"
    );
    lab.expect_sole_holder(VIP_B, "db2", Duration::from_secs(5));
    assert!(wait_for(Duration::from_secs(3), || primary(
        &lab,
        "198.51.100.13"
    ) == [VIP_B]));
    lab.assert_never_two_holders(VIP_B);
}
