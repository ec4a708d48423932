//! The embedded authoritative name server, asked with `dig` from the client namespace: db1,
//! db2 and the witness w1 all serve `db.example.test.`. Needs root.

mod lab;

use lab::{Lab, Spec, TSIG_KEY, VIP4, WRONG_KEY, wait_for};
use std::path::Path;
use std::time::Duration;

fn dns_lab() -> Lab {
    Lab::running(
        Path::new(env!("CARGO_BIN_EXE_vipgate")),
        Spec {
            dns: Some("ttl = 5\n".into()),
            ..Spec::default()
        },
    )
}

const AGENTS: [(&str, &str); 3] = [("db1", "192.0.2.11"), ("db2", "192.0.2.12"), ("w1", "192.0.2.13")];

/// The answer section's records as (ttl, type, data), and the header's status and flags.
fn ask(
    lab: &Lab,
    server: &str,
    name: &str,
    qtype: &str,
    extra: &[&str],
) -> (String, String, Vec<(u32, String, String)>) {
    let at = format!("@{server}");
    let mut args = vec![at.as_str(), name, qtype, "+norecurse"];
    args.extend_from_slice(extra);
    let out = lab.dig(&args);
    let status = out
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("no answer")
        .to_string();
    let flags = out
        .split("flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap_or_default()
        .to_string();
    let mut records = Vec::new();
    let mut in_answer = false;
    for line in out.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            in_answer = true;
            continue;
        }
        if in_answer {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 5 {
                break;
            }
            records.push((f[1].parse().unwrap_or(0), f[3].to_string(), f[4..].join(" ")));
        }
    }
    (status, flags, records)
}

/// The response code `server` gives for the primary record.
fn primary_status(lab: &Lab, server: &str) -> String {
    ask(lab, server, "primary.db.example.test.", "A", &[]).0
}

fn serial(lab: &Lab, server: &str) -> u32 {
    let (_, _, records) = ask(lab, server, "db.example.test.", "SOA", &[]);
    records
        .iter()
        .find(|(_, t, _)| t == "SOA")
        .and_then(|(_, _, d)| d.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or_else(|| panic!("no SOA from {server}"))
}

#[test]
fn every_quorate_agent_answers_the_owner_and_follows_a_failover() {
    let mut lab = dns_lab();
    for (name, ip) in AGENTS {
        assert!(
            wait_for(Duration::from_secs(3), || ask(
                &lab,
                ip,
                "_owner.db.example.test.",
                "TXT",
                &[]
            )
            .2
            .len()
                == 1),
            "{name} does not answer"
        );
        let (status, flags, records) = ask(&lab, ip, "primary.db.example.test.", "A", &[]);
        assert_eq!(status, "NOERROR", "{name}");
        assert!(
            flags.split_whitespace().any(|f| f == "aa"),
            "{name} is not authoritative: {flags}"
        );
        assert_eq!(records, [(5, "A".to_string(), VIP4.to_string())], "{name}");
        // The same over TCP.
        let (_, _, records) = ask(&lab, ip, "primary.db.example.test.", "A", &["+tcp"]);
        assert_eq!(records.len(), 1, "{name} over TCP");
        let (_, _, txt) = ask(&lab, ip, "_owner.db.example.test.", "TXT", &[]);
        assert!(txt[0].2.contains("owner=db1"), "{name}: {txt:?}");
    }
    // NS and glue, NXDOMAIN, REFUSED for another zone.
    let (_, _, ns) = ask(&lab, "192.0.2.12", "db.example.test.", "NS", &[]);
    assert_eq!(ns.len(), 3, "{ns:?}");
    let (_, _, glue) = ask(&lab, "192.0.2.12", "w1.db.example.test.", "A", &[]);
    assert_eq!(glue[0].2, "192.0.2.13");
    assert_eq!(
        ask(&lab, "192.0.2.12", "nothing.db.example.test.", "A", &[]).0,
        "NXDOMAIN"
    );
    assert_eq!(
        ask(&lab, "192.0.2.12", "www.example.test.", "A", &[]).0,
        "REFUSED"
    );

    let before = serial(&lab, "192.0.2.13");
    lab.kill("db1");
    lab.expect_sole_holder(VIP4, "db2", Duration::from_secs(5));
    for (name, ip) in AGENTS.iter().skip(1) {
        assert!(
            wait_for(Duration::from_secs(3), || {
                ask(&lab, ip, "_owner.db.example.test.", "TXT", &[])
                    .2
                    .first()
                    .is_some_and(|(_, _, d)| d.contains("owner=db2"))
            }),
            "{name} still answers the old owner"
        );
        let (_, _, records) = ask(&lab, ip, "primary.db.example.test.", "A", &[]);
        assert_eq!(records, [(5, "A".to_string(), VIP4.to_string())]);
        let after = serial(&lab, ip);
        assert!(after > before, "{name}: serial {after} not above {before}");
    }
}

#[test]
fn an_agent_cut_off_from_the_majority_answers_servfail() {
    let mut lab = dns_lab();
    // The witness answers once it has heard the owner claim its lease.
    assert!(
        wait_for(Duration::from_secs(3), || primary_status(&lab, "192.0.2.13")
            == "NOERROR"),
        "the witness does not answer the primary"
    );
    // w1 loses both database hosts; the client still reaches it.
    lab.cut("w1", "db1");
    lab.cut("w1", "db2");
    assert!(
        wait_for(Duration::from_secs(3), || primary_status(&lab, "192.0.2.13")
            == "SERVFAIL"),
        "the cut-off witness still answers the primary"
    );
    // It still serves the static part of the zone; the majority side still answers.
    assert_eq!(
        ask(&lab, "192.0.2.13", "db.example.test.", "SOA", &[]).0,
        "NOERROR"
    );
    let (status, _, records) = ask(&lab, "192.0.2.11", "primary.db.example.test.", "A", &[]);
    assert_eq!((status.as_str(), records.len()), ("NOERROR", 1));
    let s = lab.status("w1").unwrap().dns.unwrap();
    assert_eq!(s.primary_for, None);
    assert!(s.answers["SERVFAIL"] >= 1, "{s:?}");
    lab.heal();
    assert!(
        wait_for(Duration::from_secs(3), || primary_status(&lab, "192.0.2.13")
            == "NOERROR"),
        "w1 did not answer again after the cut healed"
    );
}

/// A DNS message: header with `id` and `qdcount`, then `questions` as (name, type, class).
fn query(id: u16, qdcount: u16, questions: &[(&str, u16, u16)]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00]); // a query, recursion desired
    m.extend_from_slice(&qdcount.to_be_bytes());
    m.extend_from_slice(&[0; 6]);
    for (name, qtype, class) in questions {
        for label in name.trim_end_matches('.').split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&class.to_be_bytes());
    }
    m
}

/// Sends `datagrams` from the client to db1's name server, one at a time; each reply's response
/// code (`None`: no reply within a second).
fn send_raw(lab: &Lab, datagrams: Vec<Vec<u8>>) -> Vec<Option<u8>> {
    lab::in_netns(&lab.client.ns, move || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        datagrams
            .iter()
            .map(|d| {
                socket.send_to(d, "192.0.2.11:53").unwrap();
                let mut buf = [0u8; 4096];
                socket
                    .recv(&mut buf)
                    .ok()
                    .filter(|n| *n >= 4)
                    .map(|_| buf[3] & 0x0f)
            })
            .collect()
    })
}

#[test]
fn malformed_queries_get_errors_and_never_stop_the_server() {
    let lab = dns_lab();
    const A: u16 = 1;
    const IN: u16 = 1;
    const CH: u16 = 3;
    const FORMERR: u8 = 1;
    const REFUSED: u8 = 5;
    let good = query(1, 1, &[("primary.db.example.test", A, IN)]);
    let mut cut = good.clone();
    cut.truncate(good.len() - 3);
    let mut huge = good.clone();
    huge.resize(4000, 0xff);
    let mut looping = query(6, 1, &[]);
    looping.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]); // a name pointing at itself
    let replies = send_raw(
        &lab,
        vec![
            good.clone(),
            good[..7].to_vec(),
            cut,
            huge,
            query(4, 1, &[("primary.db.example.test", A, CH)]),
            query(
                5,
                3,
                &[
                    ("primary.db.example.test", A, IN),
                    ("db.example.test", 6, IN),
                    ("w1.db.example.test", A, IN),
                ],
            ),
            looping,
            good,
        ],
    );
    println!("response codes: {replies:?}");
    assert_eq!(replies[0], Some(0), "a good query");
    assert_eq!(replies[1], None, "shorter than a header: nothing to answer");
    assert_eq!(replies[2], Some(FORMERR), "cut inside the question");
    assert_eq!(replies[3], Some(FORMERR), "4000 bytes, most of them garbage");
    assert_eq!(replies[4], Some(REFUSED), "class CH");
    assert_eq!(replies[5], Some(FORMERR), "three questions");
    assert_eq!(replies[6], Some(FORMERR), "a compression loop");
    assert_eq!(replies[7], Some(0), "the server still answers");
    assert!(lab.status("db1").is_some(), "the agent still runs");
}

#[test]
fn a_bind_resolver_follows_the_delegation_to_the_agents_before_and_after_a_failover() {
    let mut lab = dns_lab();
    // The parent zone on a BIND server in the client's namespace delegates db.example.test.
    // to the three agents, with glue; the same server resolves recursively for the client.
    let parent = "$TTL 300\n\
        @ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 5\n\
        @ IN NS ns.example.test.\n\
        ns IN A 192.0.2.100\n\
        db IN NS db1.db\n\
        db IN NS db2.db\n\
        db IN NS w1.db\n\
        db1.db IN A 192.0.2.11\n\
        db2.db IN A 192.0.2.12\n\
        w1.db IN A 192.0.2.13\n";
    lab.start_named(
        "recursion yes;\n  allow-recursion { any; };",
        "zone \"example.test\" { type primary; file \"example.test.zone\"; };",
        &[("example.test.zone", parent.to_string())],
    );
    let resolver = "192.0.2.100";
    let owner = |lab: &Lab| {
        ask(lab, resolver, "_owner.db.example.test.", "TXT", &["+recurse"])
            .2
            .first()
            .map(|(_, _, d)| d.clone())
            .unwrap_or_default()
    };
    let (status, flags, records) = ask(&lab, resolver, "primary.db.example.test.", "A", &["+recurse"]);
    assert_eq!(status, "NOERROR");
    assert!(flags.contains("ra"), "not a recursive answer: {flags}");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].2, VIP4);
    assert!(records[0].0 <= 5, "TTL {} above the zone's 5 s", records[0].0);
    assert!(owner(&lab).contains("owner=db1"), "{}", owner(&lab));
    // After a failover the resolver, once its 5 s cache runs out, finds the new owner.
    lab.kill("db1");
    lab.expect_sole_holder(VIP4, "db2", Duration::from_secs(5));
    assert!(
        wait_for(Duration::from_secs(10), || owner(&lab).contains("owner=db2")),
        "the resolver still names {}",
        owner(&lab)
    );
    let (_, _, records) = ask(&lab, resolver, "primary.db.example.test.", "A", &["+recurse"]);
    assert_eq!(records.first().map(|r| r.2.as_str()), Some(VIP4));
}

/// A lab whose agents push the primary record to a BIND primary server (ns1, 192.0.2.20) that
/// accepts updates of `db.example.com.` signed with [`TSIG_KEY`]; `keys` per node.
fn update_lab(keys: [(&str, &str); 3]) -> Lab {
    let mut lab = Lab::new(
        Path::new(env!("CARGO_BIN_EXE_vipgate")),
        Spec {
            dns: Some(lab::DNS_UPDATE.into()),
            ..Spec::default()
        },
    );
    lab.start_update_server(&keys);
    lab.start_all();
    lab.expect_sole_holder(VIP4, "db1", Duration::from_secs(8));
    lab
}

fn served(lab: &Lab) -> (String, String) {
    lab.served_by_update_server()
}

#[test]
fn the_owner_pushes_the_primary_record_to_bind_and_a_new_owner_replaces_it() {
    let mut lab = update_lab([("db1", TSIG_KEY), ("db2", TSIG_KEY), ("w1", TSIG_KEY)]);
    assert!(
        wait_for(Duration::from_secs(5), || {
            let (a, txt) = served(&lab);
            a == VIP4 && txt.contains("owner=db1")
        }),
        "BIND serves {:?}\n{}",
        served(&lab),
        lab.log("db1")
    );
    lab.kill("db1");
    lab.expect_sole_holder(VIP4, "db2", Duration::from_secs(5));
    assert!(
        wait_for(Duration::from_secs(5), || served(&lab).1.contains("owner=db2")),
        "BIND serves {:?}\n{}",
        served(&lab),
        lab.log("db2")
    );
    assert_eq!(served(&lab).0, VIP4);
    let update = lab.status("db2").unwrap().dns.unwrap().update.unwrap_or_default();
    assert!(update.contains("the server holds 192.0.2.50"), "{update}");
}

#[test]
fn a_rejected_key_is_reported_and_a_stale_compare_and_swap_is_refused() {
    let mut lab = update_lab([("db1", TSIG_KEY), ("db2", WRONG_KEY), ("w1", TSIG_KEY)]);
    assert!(wait_for(Duration::from_secs(5), || served(&lab)
        .1
        .contains("owner=db1")));
    lab.kill("db1");
    lab.expect_sole_holder(VIP4, "db2", Duration::from_secs(5));
    assert!(
        wait_for(Duration::from_secs(5), || lab
            .status("db2")
            .and_then(|s| s.dns?.update)
            .is_some_and(|u| u.contains("TSIG rejected"))),
        "db2 reports {:?}\n{}",
        lab.status("db2").and_then(|s| s.dns),
        lab.log("db2")
    );
    println!("db2 reports: {:?}", lab.status("db2").and_then(|s| s.dns?.update));
    assert!(
        served(&lab).1.contains("owner=db1"),
        "the wrong key changed the zone"
    );
    // With the right key, a swap from a value the server no longer holds is refused.
    let update = lab.config().dns.unwrap().update.unwrap();
    let key = data_encoding::BASE64.decode(TSIG_KEY.as_bytes()).unwrap();
    let result = lab::in_netns(&lab.client.ns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let updater = vipgate::dns::update::Updater::new(&update, &key).unwrap();
                let stale = vipgate::dns::update::Current {
                    addresses: vec!["192.0.2.99".parse().unwrap()],
                    txt: vec![hickory_proto::rr::rdata::TXT::new(vec![
                        "owner=none term=0".into(),
                    ])],
                };
                updater
                    .replace(&stale, &["192.0.2.66".parse().unwrap()], "owner=stale term=1")
                    .await
            })
    });
    assert!(
        matches!(result, Err(vipgate::dns::update::Error::Stale(_))),
        "{result:?}"
    );
    let (a, txt) = served(&lab);
    assert_eq!(a, VIP4);
    assert!(txt.contains("owner=db1"), "{txt}");
}

/// Opens up to `n` TCP connections to every agent's DNS port from the client namespace and
/// keeps them open until `stop`; returns how many were established.
fn hold_dns_connections(
    lab: &Lab,
    n: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    let ns = lab.client.ns.clone();
    std::thread::spawn(move || {
        lab::enter_netns(&ns);
        // The attacker's own descriptors: as many as its hard limit allows.
        let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
        let mut held = Vec::new();
        for _ in 0..n {
            for (_, ip) in AGENTS {
                let at: std::net::SocketAddr = format!("{ip}:53").parse().unwrap();
                if let Ok(s) = std::net::TcpStream::connect_timeout(&at, Duration::from_millis(200)) {
                    held.push(s);
                }
            }
        }
        let count = held.len();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        count
    })
}

fn open_descriptors(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn a_client_holding_a_thousand_dns_connections_starves_no_agent_and_stops_no_failover() {
    let bin = Path::new(env!("CARGO_BIN_EXE_vipgate"));
    let spec = Spec {
        dns: Some("ttl = 5\n".into()),
        ..Spec::default()
    };
    let mut lab = Lab::new(bin, spec);
    // The soft limit the reported attack exhausted, made the hard one too.
    for (name, _) in AGENTS {
        lab.start_as(name, &["prlimit", "--nofile=1024:1024", "--"], &[], &[]);
    }
    lab.expect_sole_holder(VIP4, "db1", Duration::from_secs(8));
    lab.expect_followed("db1", Duration::from_secs(3));
    let (status, _, records) = ask(&lab, "192.0.2.12", "primary.db.example.test.", "A", &["+tcp"]);
    assert_eq!(
        (status.as_str(), records.len()),
        ("NOERROR", 1),
        "over TCP before the attack"
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attack = hold_dns_connections(&lab, 1100, stop.clone());
    std::thread::sleep(Duration::from_secs(4));
    for (name, _) in AGENTS {
        let fds = open_descriptors(lab.pid(name));
        println!("{name} holds {fds} descriptors under attack");
        assert!(fds < 300, "{name} holds {fds} descriptors\n{}", lab.logs());
        assert!(
            lab.status(name).is_some(),
            "{name}'s control socket does not answer"
        );
    }
    // A client of another network is still answered over TCP: the caps are per network too.
    let answer = dig_from_another_network(&lab, &["+tcp", "+tries=2"]);
    assert_eq!(
        answer, VIP4,
        "a TCP query from another network is answered beside the attack"
    );
    lab.kill("db1");
    let killed = std::time::Instant::now();
    assert!(
        wait_for(Duration::from_secs(5), || lab
            .status("db2")
            .is_some_and(|s| s.role == "owner")),
        "db2 did not take over under the attack\n{}",
        lab.logs()
    );
    println!(
        "db2 owned {:?} after db1's agent was killed, under the attack",
        killed.elapsed()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let held = attack.join().unwrap();
    println!("the client had {held} connections established");
    assert!(held > 24, "the attack never got going: {held} connections");
    assert!(!lab.logs().contains("Too many open files"), "{}", lab.logs());
}

/// (query size, answer size, flags) of one UDP query, as dig reports them; `+ignore` keeps dig
/// from retrying a truncated answer over TCP.
fn sizes(lab: &Lab, name: &str, qtype: &str) -> (usize, usize, String) {
    // Without EDNS the query is smallest: the worst ratio an amplifier would look for.
    let out = lab.dig(&[
        "@192.0.2.12",
        name,
        qtype,
        "+norecurse",
        "+qr",
        "+ignore",
        "+noedns",
    ]);
    let number = |key: &str| {
        out.split(key)
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in\n{out}"))
    };
    let flags = out
        .split("flags: ")
        .nth(2)
        .and_then(|s| s.split(';').next())
        .unwrap_or_default()
        .to_string();
    (number("QUERY SIZE:"), number("MSG SIZE  rcvd:"), flags)
}

#[test]
fn no_udp_answer_is_more_than_three_times_its_query_and_any_is_minimal() {
    let lab = dns_lab();
    let zone = "db.example.test.";
    for (name, qtype) in [
        (zone, "NS"),
        (zone, "ANY"),
        (zone, "SOA"),
        ("primary.db.example.test.", "ANY"),
        ("primary.db.example.test.", "A"),
        ("_owner.db.example.test.", "TXT"),
        ("db1.db.example.test.", "A"),
        ("missing.db.example.test.", "A"),
    ] {
        let (query, answer, flags) = sizes(&lab, name, qtype);
        println!("{name} {qtype}: {query} → {answer} bytes ({flags})");
        assert!(answer <= 3 * query, "{name} {qtype}: {query} → {answer} bytes");
    }
    // NS with its glue would be about 4× the query: sent truncated, and whole over TCP.
    assert!(sizes(&lab, zone, "NS").2.contains("tc"));
    let (status, _, records) = ask(&lab, "192.0.2.12", zone, "NS", &["+tcp"]);
    assert_eq!((status.as_str(), records.len()), ("NOERROR", 3));
    let (_, _, records) = ask(&lab, "192.0.2.12", zone, "ANY", &[]);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].1, "HINFO", "RFC 8482 answer: {records:?}");
    let limited = lab.status("db2").unwrap().dns.unwrap().limited;
    assert!(limited["truncated"] >= 2, "{limited:?}");
}

/// A DNS query for `primary.db.example.test.` A with id `id`.
fn primary_query(id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in ["primary", "db", "example", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

#[test]
fn a_query_flood_from_one_source_is_answered_at_its_rate_and_the_rest_slipped_or_dropped() {
    let lab = dns_lab();
    let ns = lab.client.ns.clone();
    // 1,000 queries as fast as one socket sends them, then a second to collect the answers.
    let (full, truncated) = lab::in_netns(&ns, || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(1000)))
            .unwrap();
        for id in 0..1000u16 {
            let _ = socket.send_to(&primary_query(id), "192.0.2.12:53");
        }
        let (mut full, mut truncated) = (0, 0);
        let mut buf = [0u8; 512];
        while let Ok(n) = socket.recv(&mut buf) {
            match n >= 3 && buf[2] & 0x02 != 0 {
                true => truncated += 1,
                false => full += 1,
            }
        }
        (full, truncated)
    });
    println!("1000 queries: {full} full answers, {truncated} truncated");
    // The default rate: 100 per second, with a burst of 100.
    assert!(full <= 150, "{full} full answers");
    assert!(
        full >= 50,
        "{full} full answers: the flood starved the source's own allowance"
    );
    assert!(
        truncated > 20,
        "{truncated} truncated answers (every other limited query)"
    );
    // (Not every query reaches the agent: the sockets' buffers drop some of the burst.)
    let limited = lab.status("db2").unwrap().dns.unwrap().limited;
    assert!(limited["rate_limited"] >= 2 * truncated - 1, "{limited:?}");
    // A client of another network is answered at once.
    assert_eq!(dig_from_another_network(&lab, &[]), VIP4);
}

/// `dig +short @db2 primary… A` from w1, as a client of another network (203.0.113.0/24, on
/// the same link): limits per source network do not lump it with the client's 192.0.2.0/24.
fn dig_from_another_network(lab: &Lab, extra: &[&str]) -> String {
    let (w1, db2) = (lab.host("w1").ns.clone(), lab.host("db2").ns.clone());
    // Idempotent: `replace` succeeds again if a test asks twice.
    lab::sh(&[
        "ip",
        "-n",
        &w1,
        "addr",
        "replace",
        "203.0.113.13/24",
        "dev",
        "eth0",
    ]);
    lab::sh(&[
        "ip",
        "-n",
        &db2,
        "route",
        "replace",
        "203.0.113.0/24",
        "dev",
        "eth0",
    ]);
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &w1,
            "dig",
            "-b",
            "203.0.113.13",
            "+short",
            "+time=2",
        ])
        .args(extra)
        .args(["@192.0.2.12", "primary.db.example.test.", "A"])
        .output()
        .expect("dig");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
