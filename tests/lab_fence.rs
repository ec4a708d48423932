//! The promise at host level, judged from the client side: at every instant at most one host
//! *serves* the VIP, and no database acknowledges writes beside the owner's — also when the
//! owner's agent is killed, its VIP removal fails, or someone relays its peers' datagrams.
//! One probe per database host, its neighbour entry for the VIP pinned to that host's MAC,
//! pings the VIP every 5 ms; a client writes through the VIP and records which server
//! acknowledged each row. Needs root.

mod lab;

use lab::{Lab, ServeProbes, Spec, VIP4, unix_now, wait_for};
use std::path::Path;
use std::time::{Duration, Instant};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vipgate"))
}

/// Replies from two hosts this close together mean both served the VIP at once.
const WINDOW: Duration = Duration::from_millis(10);

fn assert_one_server(probes: &ServeProbes, lab: &Lab) {
    let both = probes.both_served_within(WINDOW);
    assert!(
        both.is_empty(),
        "two hosts served the VIP within {WINDOW:?}: {:?}\n{}",
        &both[..both.len().min(5)],
        lab.logs()
    );
}

fn ms(seconds: f64) -> String {
    format!("{:.0} ms", seconds * 1000.0)
}

/// A lab with every agent started and one database host owning (see [`Lab::wait_owner`]):
/// the lab, the owner and the other database host.
fn owned(spec: Spec) -> (Lab, &'static str, &'static str) {
    let mut lab = Lab::new(bin(), spec);
    lab.start_all();
    let (old, new) = lab
        .wait_owner(Duration::from_secs(8))
        .unwrap_or_else(|| panic!("no database host owns\n{}", lab.logs()));
    (lab, old, new)
}

fn server_id(host: &str) -> u32 {
    Lab::server_id(host)
}

/// Kills the owner's agent (host and database stay up) under pings and writes, waits for the
/// other host to serve, and checks from the client side: never two hosts serving, no write
/// acknowledged by the old primary once the new one acknowledged one, no acknowledged row lost.
/// Returns when the old owner stopped serving and the new one started, after the kill (seconds).
fn kill_owner_agent(lab: &mut Lab, probes: &ServeProbes, old: &str, new: &str) -> (f64, f64) {
    let writer = lab.writer();
    let warm = unix_now();
    assert!(
        wait_for(Duration::from_secs(3), || probes.served(old, warm).len() > 20),
        "{old} does not serve the VIP\n{}",
        lab.logs()
    );
    // Clients take a gratuitous ARP only a second (Linux `locktime`) after the last one: let
    // the owner's bursts (the second 500 ms after the first, in the lab) age first, as a
    // long-running owner's would have.
    std::thread::sleep(Duration::from_millis(1600));
    let killed = unix_now();
    lab.kill(old);
    assert!(
        wait_for(Duration::from_secs(10), || probes
            .first_after(new, killed)
            .is_some()),
        "{new} never served the VIP\n{}",
        lab.logs()
    );
    assert!(
        wait_for(Duration::from_secs(5), || writer.last_server() == server_id(new)),
        "no write went through {new}\n{}",
        lab.logs()
    );
    std::thread::sleep(Duration::from_millis(200));
    let acks = writer.finish_tagged();
    assert_one_server(probes, lab);
    let stopped = probes.last(old).expect("the owner served before") - killed;
    let started = probes.first_after(new, killed).unwrap() - killed;
    let first_by_new = acks.iter().find(|a| a.server == server_id(new)).map(|a| a.at);
    let late = first_by_new.map_or(0, |t| {
        acks.iter()
            .filter(|a| a.server == server_id(old) && a.at > t)
            .count()
    });
    assert_eq!(
        late, 0,
        "{old} acknowledged {late} writes after {new} acknowledged one"
    );
    let acked: Vec<(u64, Instant)> = acks.iter().map(|a| (a.id, a.at)).collect();
    assert_eq!(
        lab.missing_rows(new, &acked),
        Vec::<u64>::new(),
        "acknowledged rows lost"
    );
    (stopped, started)
}

#[test]
fn a_killed_owner_agent_stops_serving_at_its_lease_end_and_its_restart_fences_its_database() {
    let (mut lab, old, new) = owned(Spec {
        mysql: Some("promote"),
        ..Spec::default()
    });
    let probes = lab.serve_probes();
    let (stopped, started) = kill_owner_agent(&mut lab, &probes, old, new);
    // The database outlives its agent, writable; the VIP no longer reaches it.
    assert_eq!(lab.read_only(old), Some(false));
    // systemd restarts it (Restart=on-failure); before anything else it fences its database.
    let restarted = Instant::now();
    lab.start(old);
    assert!(
        wait_for(Duration::from_secs(10), || lab.read_only(old) == Some(true)),
        "the restarted agent did not fence its database\n{}",
        lab.logs()
    );
    let fenced = restarted.elapsed();
    assert!(
        lab.log(old).contains("database fenced at start"),
        "{}",
        lab.log(old)
    );
    println!(
        "killed owner agent (lease 1000 ms): {old} stopped serving {} after the kill, {new} served {} after; \
         restart → read_only ON in {} ms",
        ms(stopped),
        ms(started),
        fenced.as_millis()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_one_server(&probes, &lab);
}

#[test]
fn a_killed_owner_agent_at_aggressive_timings_never_serves_beside_its_successor() {
    let (mut lab, old, new) = owned(Spec {
        interval_ms: 20,
        lease_ms: 120,
        mysql: Some("promote"),
        ..Spec::default()
    });
    let probes = lab.serve_probes();
    let (stopped, started) = kill_owner_agent(&mut lab, &probes, old, new);
    println!(
        "killed owner agent (lease 120 ms): {old} stopped serving {} after the kill, {new} served {} after",
        ms(stopped),
        ms(started)
    );
    // The address itself lingers up to its lifetime (≥ 1 s): only the fence stopped the owner.
    assert!(stopped < 0.5, "{old} served {} after its agent died", ms(stopped));
}

#[test]
fn a_failed_vip_removal_never_lets_a_successor_take_over_before_the_lease_ends() {
    let mut lab = Lab::new(bin(), Spec::default());
    // Removals by db1's agent are refused from when this file exists (debug builds only).
    let deny = lab.dir.path().join("deny-removal");
    lab.start_as(
        "db1",
        &[],
        &[("VIPGATE_LAB_DENY_REMOVAL", deny.display().to_string())],
        &[],
    );
    lab.start("db2");
    lab.start("w1");
    lab.expect_sole_holder(VIP4, "db1", Duration::from_secs(8));
    let probes = lab.serve_probes();
    assert!(wait_for(Duration::from_secs(2), || probes
        .served("db1", unix_now() - 0.1)
        .len()
        > 3));
    std::fs::write(&deny, "").unwrap();
    let left = lab
        .status("db1")
        .unwrap()
        .lease_remaining_ms
        .expect("db1 holds a lease");
    let (asked, held_at) = (unix_now(), Instant::now());
    // Maintenance, not a switchover: db1 must not win again once its lease has run out.
    let (ok, out) = lab.vipgate(&[
        "maintenance".as_ref(),
        "on".as_ref(),
        "--config".as_ref(),
        lab.config_path("db1").as_os_str(),
    ]);
    assert!(ok, "{out}");
    assert!(
        wait_for(Duration::from_secs(10), || probes
            .first_after("db2", asked)
            .is_some()),
        "db2 never took over\n{}",
        lab.logs()
    );
    let took_over = probes.first_after("db2", asked).unwrap() - asked;
    // The removal failed, so the release was never announced: db2 waited for db1's lease.
    assert!(
        took_over * 1000.0 >= left as f64 - 20.0,
        "db2 served {} after the release began, before db1's lease ({left} ms left) ended\n{}",
        ms(took_over),
        lab.logs()
    );
    assert!(
        lab.log("db1").contains("release is not announced"),
        "{}",
        lab.log("db1")
    );
    // While db1 waited for its lease to end, its address stayed (the removal kept failing)
    // but the fence had closed: it served nothing after the switchover began.
    let runs = lab.observer().runs("db1", VIP4);
    assert!(
        runs.last().unwrap().1 > held_at + Duration::from_millis(200),
        "{runs:?}"
    );
    assert!(
        probes.first_after("db1", asked + 0.05).is_none(),
        "db1 served after its release"
    );
    assert_one_server(&probes, &lab);
    // Once removals work again, the task's retries finish the job.
    std::fs::remove_file(&deny).unwrap();
    assert!(
        wait_for(Duration::from_secs(3), || lab
            .log("db1")
            .contains("a failed removal left are gone")),
        "{}",
        lab.logs()
    );
    println!(
        "failed removal: db2 served {} after db1 began to release (db1's lease had {left} ms left)",
        ms(took_over)
    );
}

#[test]
fn a_relay_copying_the_witness_datagrams_to_both_database_hosts_makes_no_second_owner() {
    let mut lab = Lab::running(bin(), Spec::default());
    let probes = lab.serve_probes();
    lab.cut("db1", "db2");
    let relay = lab.relay("w1", ["db1", "db2"]);
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        relay.copied() > 20,
        "the relay copied only {} datagrams",
        relay.copied()
    );
    let (db1, db2) = (lab.status("db1").unwrap(), lab.status("db2").unwrap());
    assert_eq!(db1.role, "owner", "{}", lab.logs());
    assert_ne!(db2.role, "owner", "{}", lab.logs());
    let misaddressed = db2.dropped.get("misaddressed").copied().unwrap_or(0);
    assert!(
        misaddressed > 20,
        "db2 dropped {misaddressed} misaddressed datagrams: {:?}",
        db2.dropped
    );
    assert!(lab.observer().sole_holder(VIP4, "db1"));
    lab.assert_never_two_holders(VIP4);
    assert_one_server(&probes, &lab);
    println!(
        "relay: {} datagrams copied to the other database host; db2 dropped {misaddressed} as misaddressed",
        relay.copied()
    );
}
