use super::*;

const GOOD: &str = r#"
[cluster]
name = "prod-eu"
secret_file = "secret"

[[node]]
id = "db2"
address = "192.0.2.12"
priority = 100

[[node]]
id = "db1"
address = "192.0.2.11"
priority = 150

[[node]]
id = "w1"
address = "2001:db8::13"
witness = true
"#;

fn parse(src: &str) -> Result<Config, ConfigErrors> {
    Config::parse(Path::new("/etc/vipgate/vipgate.toml"), src)
}

/// The single error of `src`, asserting where it points.
fn only_error(src: &str) -> ConfigError {
    let errors = parse(src).unwrap_err().0;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors.into_iter().next().unwrap()
}

#[test]
fn defaults_fill_what_is_left_out_and_nodes_are_ordered_by_id() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.cluster.port, DEFAULT_PORT);
    assert_eq!(c.cluster.interval, Duration::from_millis(200));
    assert_eq!(c.cluster.lease, Duration::from_millis(1000));
    assert_eq!(c.cluster.preempt_delay, None);
    assert!(!c.cluster.cross_region_failover);
    assert_eq!(c.cluster.secret_file, Path::new("/etc/vipgate/secret"));
    let ids: Vec<_> = c.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["db1", "db2", "w1"]);
    assert_eq!(c.majority(), 2);
    assert_eq!(c.node_index("db2").unwrap(), 1);
    assert!(c.core_settings(0, 1).check().is_ok());
}

#[test]
fn the_fingerprint_ignores_file_order_but_not_membership() {
    let a = parse(GOOD).unwrap();
    let reordered = GOOD
        .replace("db2", "tmp")
        .replace("db1", "db2")
        .replace("tmp", "db1");
    let b = parse(
        &reordered
            .replace("192.0.2.12", "x")
            .replace("192.0.2.11", "192.0.2.12")
            .replace("x", "192.0.2.11"),
    )
    .unwrap();
    assert_eq!(
        a.nodes,
        b.nodes
            .iter()
            .map(|n| Node {
                priority: a.nodes[a.node_index(&n.id).unwrap() as usize].priority,
                ..n.clone()
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(a.fingerprint(), b.fingerprint());
    let c = parse(&GOOD.replace("witness = true", "witness = false")).unwrap();
    assert_ne!(a.fingerprint(), c.fingerprint());
}

#[test]
fn unknown_keys_are_rejected_with_their_line() {
    let e = only_error(&GOOD.replace("priority = 150", "priorty = 150"));
    assert_eq!(e.line, Some(14));
    assert!(e.problem.contains("unknown field `priorty`"), "{e}");
    assert!(e.fix.contains("remove or correct"), "{e}");
    let e = only_error(&GOOD.replace("[cluster]", "[cluster]\nlease = 5"));
    assert_eq!(e.line, Some(3));
}

#[test]
fn duplicate_ids_and_addresses_name_both_nodes() {
    let e = only_error(&GOOD.replace("id = \"w1\"", "id = \"db1\""));
    assert_eq!((e.field.as_str(), e.line), ("node[2].id", Some(17)));
    assert!(e.problem.contains("node[1]"), "{e}");
    let e = only_error(&GOOD.replace("192.0.2.12", "192.0.2.11"));
    assert_eq!((e.field.as_str(), e.line), ("node[1].address", Some(13)));
    assert!(
        e.problem.contains("node[0] (\"db2\")") && e.fix.contains("own address"),
        "{e}"
    );
}

#[test]
fn a_lease_shorter_than_three_intervals_is_refused_with_the_value_to_use() {
    let e = only_error(&GOOD.replace(
        "[cluster]",
        "[cluster]\nheartbeat_interval_ms = 200\nlease_ms = 500",
    ));
    assert_eq!((e.field.as_str(), e.line), ("cluster.lease_ms", Some(4)));
    assert!(e.fix.contains("600"), "{e}");
}

#[test]
fn two_voters_without_a_witness_are_refused_with_the_reason() {
    let two = GOOD.split("[[node]]\nid = \"w1\"").next().unwrap();
    let e = only_error(two);
    assert_eq!(e.field, "node");
    assert!(
        e.problem.contains("neither can tell a dead peer from a cut link"),
        "{e}"
    );
    assert!(
        e.fix.contains("add a witness") && e.fix.contains("three voters"),
        "{e}"
    );
}

#[test]
fn bad_values_are_each_reported_in_one_pass() {
    let src = GOOD
        .replace(
            "name = \"prod-eu\"",
            "name = \"prod eu\"\nport = 70000\nclock_drift = 0.5",
        )
        .replace("address = \"192.0.2.12\"", "address = \"db2.example\"")
        .replace("priority = 150", "priority = 0");
    let errors = parse(&src).unwrap_err().0;
    let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "cluster.name",
            "cluster.port",
            "cluster.clock_drift",
            "node[0].address",
            "node[1].priority"
        ]
    );
    assert!(
        errors.iter().all(|e| e.line.is_some() && !e.fix.is_empty()),
        "{errors:#?}"
    );
    let shown = ConfigErrors(errors).to_string();
    assert!(
        shown.starts_with("error: /etc/vipgate/vipgate.toml:3: cluster.name:"),
        "{shown}"
    );
}

#[test]
fn a_missing_field_and_a_wrong_type_are_located() {
    let e = only_error(&GOOD.replace("secret_file = \"secret\"", ""));
    assert!(
        e.problem.contains("missing field `secret_file`") && e.line.is_some(),
        "{e}"
    );
    let e = only_error(&GOOD.replace("priority = 100", "priority = \"high\""));
    assert_eq!(e.line, Some(9));
}

#[test]
fn a_node_that_is_not_a_member_is_told_the_members() {
    let c = parse(GOOD).unwrap();
    let e = c.node_index("db3").unwrap_err().0.remove(0);
    assert!(
        e.problem.contains("\"db3\"") && e.problem.contains("db1, db2, w1"),
        "{e}"
    );
    assert!(e.fix.contains("--node"), "{e}");
}

#[test]
fn an_unreadable_or_exposed_secret_points_at_secret_file() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("vipgate.toml");
    std::fs::write(&file, GOOD).unwrap();
    let c = Config::load(&file).unwrap();
    let e = c.read_secret().unwrap_err().0.remove(0);
    assert_eq!((e.field.as_str(), e.line), ("cluster.secret_file", Some(4)));
    let secret = d.path().join("secret");
    std::fs::write(&secret, [b'k'; 48]).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(c.read_secret().unwrap_err().to_string().contains("chmod 600"));
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    assert_eq!(c.read_secret().unwrap().bytes().len(), 48);
}

#[test]
fn the_shipped_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/vipgate.toml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.nodes.len(), 3);
    assert!(c.nodes.iter().any(|n| n.witness));
}

const VIPS: &str = r#"
[[vip]]
address = "192.0.2.50/24"
interface = "eth0"
region = "a"
label = "eth0:vip"

[[vip]]
address = "2001:db8::50/64"
interface = "eth1"

[[vip]]
address = "198.51.100.50/24"
interface = "eth0"
region = "b"
"#;

#[test]
fn vips_announce_and_control_are_read_with_their_defaults() {
    let c = parse(&format!("{GOOD}{VIPS}")).unwrap();
    assert_eq!(c.vips.len(), 3);
    assert_eq!(c.vips[0].address, "192.0.2.50".parse::<IpAddr>().unwrap());
    assert_eq!(c.vips[0].prefix, 24);
    assert_eq!(c.vips[0].label.as_deref(), Some("eth0:vip"));
    assert_eq!(c.vips[1].to_string(), "2001:db8::50/64 on eth1");
    assert_eq!(c.announce, Announce::default());
    assert_eq!(c.announce.refresh, Some(Duration::from_secs(30)));
    assert_eq!(c.control.socket, Path::new(DEFAULT_SOCKET));
    // Nodes without a region hold the region-less VIPs only.
    let db1 = c.node_index("db1").unwrap();
    let held: Vec<String> = c.vips_of(db1).iter().map(|v| v.to_string()).collect();
    assert_eq!(held, ["2001:db8::50/64 on eth1"]);
}

#[test]
fn an_owner_holds_the_vips_of_its_region() {
    let src = format!(
        "{}{VIPS}",
        GOOD.replace("priority = 150", "priority = 150\nregion = \"b\"")
    );
    let c = parse(&src).unwrap();
    let held: Vec<String> = c
        .vips_of(c.node_index("db1").unwrap())
        .iter()
        .map(|v| v.to_string())
        .collect();
    assert_eq!(held, ["2001:db8::50/64 on eth1", "198.51.100.50/24 on eth0"]);
}

#[test]
fn bad_vips_are_each_located_with_the_fix() {
    let src = format!(
        "{GOOD}{}",
        r#"
[[vip]]
address = "192.0.2.50"
interface = "eth0"

[[vip]]
address = "192.0.2.11/24"
interface = "an-interface-name-too-long"

[[vip]]
address = "2001:db8::50/64"
interface = "eth0"
label = "eth0:v6"

[[vip]]
address = "192.0.2.51/33"
interface = "eth0"
label = "vip"

[announce]
repeat = 0
refresh_ms = 10

[control]
socket = ""
"#
    );
    let errors = parse(&src).unwrap_err().0;
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "vip[0].address",
            "vip[1].address",
            "vip[1].interface",
            "vip[2].label",
            "vip[3].address",
            "announce.repeat",
            "announce.refresh_ms",
            "control.socket",
        ],
        "{errors:#?}"
    );
    assert!(errors[0].fix.contains("192.0.2.50/24"), "{:?}", errors[0]);
    assert!(
        errors[1].problem.contains("node's own address"),
        "{:?}",
        errors[1]
    );
    assert!(errors[3].problem.contains("IPv4 only"), "{:?}", errors[3]);
    assert!(errors.iter().all(|e| e.line.is_some()), "{errors:#?}");
}

#[test]
fn mysql_gate_is_read_with_defaults_and_a_socket_or_tcp_endpoint() {
    let c = parse(&format!("{GOOD}\n[mysql]\nmode = \"gate\"\nuser = \"vipgate\"\n")).unwrap();
    let m = c.mysql.unwrap();
    assert_eq!(m.mode, MysqlMode::Gate);
    assert_eq!(
        m.endpoint,
        Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port: 3306
        }
    );
    assert_eq!((m.rise, m.fall), (2, 3));
    assert_eq!(m.detection_bound(), Duration::from_millis(4000));
    assert_eq!(m.failover_block, Duration::from_secs(3600));
    let c = parse(&format!(
        "{GOOD}\n[mysql]\nmode = \"gate\"\nuser = \"v\"\nsocket = \"/run/mysqld/mysqld.sock\"\npassword_file = \"pw\"\n"
    ))
    .unwrap();
    let m = c.mysql.unwrap();
    assert_eq!(m.endpoint, Endpoint::Socket("/run/mysqld/mysqld.sock".into()));
    assert_eq!(m.password_file.as_deref(), Some(Path::new("/etc/vipgate/pw")));
    let c = parse(&format!("{GOOD}\n[mysql]\nmode = \"none\"\nuser = \"v\"\n")).unwrap();
    assert_eq!(c.mysql, None);
}

#[test]
fn bad_mysql_settings_are_each_located_with_the_fix() {
    let src = format!(
        "{GOOD}\n[mysql]\nmode = \"promot\"\nuser = \"\"\nsocket = \"s\"\nhost = \"h\"\ncheck_interval_ms = 10\ncheck_timeout_ms = 5000\nfall = 0\nfailover_block_ms = 2592000001\n"
    );
    let errors = parse(&src).unwrap_err().0;
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "mysql.mode",
            "mysql.socket",
            "mysql.user",
            "mysql.check_interval_ms",
            "mysql.check_timeout_ms",
            "mysql.failover_block_ms",
            "mysql.fall"
        ],
        "{errors:#?}"
    );
    assert!(errors[0].fix.contains("\"promote\""), "{:?}", errors[0]);
    assert!(errors.iter().all(|e| e.line.is_some()), "{errors:#?}");
    let e = only_error(&format!("{GOOD}\n[mysql]\nmode = \"fast\"\nuser = \"v\"\n"));
    assert!(e.problem.contains("\"fast\" is not a mode"), "{e}");
}

#[test]
fn an_exposed_mysql_password_file_is_refused_with_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vipgate.toml");
    std::fs::write(
        &file,
        format!("{GOOD}\n[mysql]\nmode = \"gate\"\nuser = \"v\"\npassword_file = \"pw\"\n"),
    )
    .unwrap();
    let c = Config::load(&file).unwrap();
    let e = c.read_mysql_password().unwrap_err().0.remove(0);
    assert_eq!(e.field, "mysql.password_file");
    assert!(e.fix.contains("write the password"), "{e}");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "secret\n").unwrap();
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let e = c.read_mysql_password().unwrap_err().0.remove(0);
    assert!(e.problem.contains("readable by group or others"), "{e}");
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    assert_eq!(c.read_mysql_password().unwrap().unwrap().bytes(), b"secret");
}

#[test]
fn dns_is_read_with_defaults_and_every_node_serves_on_its_address() {
    let c = parse(&format!("{GOOD}\n[dns]\nzone = \"DB.Example.test\"\n")).unwrap();
    let d = c.dns.unwrap();
    assert_eq!(d.zone, "db.example.test.");
    assert_eq!(
        (d.record.as_str(), d.ttl, d.port, d.minimum),
        ("primary", 5, 53, 5)
    );
    assert_eq!(d.mname, "db1.db.example.test.");
    assert_eq!(d.rname, "hostmaster.db.example.test.");
    let w1 = &c.nodes[2];
    assert_eq!(w1.dns, vec!["2001:db8::13".parse::<IpAddr>().unwrap()]);
    // Without [dns], nobody serves.
    assert!(parse(GOOD).unwrap().nodes.iter().all(|n| n.dns.is_empty()));
    // A node may opt out, or listen elsewhere.
    let c = parse(&format!(
        "{}\n[dns]\nzone = \"db.example.test.\"\n",
        GOOD.replace("priority = 150", "priority = 150\ndns_listen = []")
            .replace(
                "priority = 100",
                "priority = 100\ndns_listen = [\"198.51.100.12\"]"
            )
    ))
    .unwrap();
    assert!(c.nodes[0].dns.is_empty());
    assert_eq!(c.nodes[1].dns, vec!["198.51.100.12".parse::<IpAddr>().unwrap()]);
    assert_eq!(c.dns.unwrap().mname, "db2.db.example.test.");
}

#[test]
fn bad_dns_settings_are_each_located_with_the_fix() {
    let src = format!(
        "{}\n[dns]\nzone = \"bad zone\"\nrecord = \"a.b\"\nttl = -1\nminimum = 3600\nport = 0\n",
        GOOD.replace("priority = 100", "priority = 100\ndns_listen = [\"0.0.0.0\"]")
    );
    let errors = parse(&src).unwrap_err().0;
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "node[0].dns_listen",
            "dns.zone",
            "dns.record",
            "dns.ttl",
            "dns.minimum",
            "dns.port"
        ],
        "{errors:#?}"
    );
    let e = only_error(&GOOD.replace("priority = 100", "priority = 100\ndns_listen = []"));
    assert!(e.problem.contains("no [dns] section"), "{e}");
    let e = only_error(&format!(
        "{}\n[dns]\nzone = \"db.example.test\"\n",
        GOOD.replace("\"db2\"", "\"db2.\"")
    ));
    assert!(e.field == "node[0].id", "{e}");
}

#[test]
fn dns_update_is_read_with_defaults_and_its_key_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vipgate.toml");
    let src = format!(
        "{GOOD}\n[dns]\nzone = \"db.example.test.\"\nttl = 7\n[dns.update]\nserver = \"198.51.100.53\"\n\
         zone = \"db.example.com\"\nkey_name = \"vipgate-key\"\nkey_file = \"tsig.key\"\n"
    );
    std::fs::write(&file, &src).unwrap();
    let c = Config::load(&file).unwrap();
    let u = c.dns.as_ref().unwrap().update.clone().unwrap();
    assert_eq!(u.server, "198.51.100.53:53".parse().unwrap());
    assert_eq!(
        (u.zone.as_str(), u.record.as_str(), u.key_name.as_str(), u.ttl),
        ("db.example.com.", "primary.db.example.com.", "vipgate-key.", 7)
    );
    let key = dir.path().join("tsig.key");
    std::fs::write(&key, "secret \"q5tuFZFhNvBXfSbUwjphaNJ3iIzJpV0HSnYa2x7PF+o=\";\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let e = c.read_update_key().unwrap_err().0.remove(0);
    assert!(e.problem.contains("base64"), "{e}");
    std::fs::write(&key, "\"q5tuFZFhNvBXfSbUwjphaNJ3iIzJpV0HSnYa2x7PF+o=\";\n").unwrap();
    assert_eq!(c.read_update_key().unwrap().unwrap().bytes().len(), 32);
    // One byte of secret ("AA==") is no key.
    std::fs::write(&key, "AA==\n").unwrap();
    let e = c.read_update_key().unwrap_err().0.remove(0);
    assert!(
        e.problem.contains("1 bytes") && e.fix.contains("tsig-keygen"),
        "{e}"
    );
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let e = c.read_update_key().unwrap_err().0.remove(0);
    assert_eq!(e.field, "dns.update.key_file");

    let errors = parse(&format!(
        "{GOOD}\n[dns]\nzone = \"db.example.test.\"\n[dns.update]\nserver = \"ns1\"\n\
         zone = \"db.example.com.\"\nrecord = \"primary.elsewhere.org.\"\nkey_name = \"k\"\nkey_file = \"k\"\n"
    ))
    .unwrap_err()
    .0;
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["dns.update.server", "dns.update.record"], "{errors:#?}");
}

#[test]
fn control_http_takes_an_address_or_a_loopback_port() {
    let c = parse(&format!("{GOOD}\n[control]\nhttp = \"9808\"\n")).unwrap();
    assert_eq!(c.control.http, Some("127.0.0.1:9808".parse().unwrap()));
    let c = parse(&format!("{GOOD}\n[control]\nhttp = \"[2001:db8::1]:9100\"\n")).unwrap();
    assert_eq!(c.control.http, Some("[2001:db8::1]:9100".parse().unwrap()));
    assert_eq!(parse(GOOD).unwrap().control.http, None);
    let e = only_error(&format!("{GOOD}\n[control]\nhttp = \"localhost:80\"\n"));
    assert_eq!(e.field, "control.http");
}

#[test]
fn hooks_are_optional_and_resolved_against_the_file() {
    let c = parse(GOOD).unwrap();
    assert_eq!(
        c.hooks,
        Hooks {
            timeout: Duration::from_secs(10),
            ..Hooks::default()
        }
    );
    let c = parse(&format!(
        "{GOOD}\n[hooks]\nowner = [\"hooks/owner.sh\", \"/usr/local/bin/page\"]\npre_promote = \"check.sh\"\ntimeout_ms = 500\n"
    ))
    .unwrap();
    assert_eq!(
        c.hooks.of("owner"),
        [
            PathBuf::from("/etc/vipgate/hooks/owner.sh"),
            PathBuf::from("/usr/local/bin/page")
        ]
    );
    assert_eq!(c.hooks.pre_promote, Some(PathBuf::from("/etc/vipgate/check.sh")));
    assert_eq!(c.hooks.timeout, Duration::from_millis(500));
    let e = only_error(&format!("{GOOD}\n[hooks]\ntimeout_ms = 5\n"));
    assert_eq!(e.field, "hooks.timeout_ms");
    let e = only_error(&format!("{GOOD}\n[hooks]\nfence = [\"\"]\n"));
    assert_eq!(e.field, "hooks.fence[0]");
}

#[test]
fn names_built_inside_a_long_zone_must_fit_a_dns_name() {
    let label = "z".repeat(62);
    let zone = [label.as_str(); 4].join(".");
    let errors = parse(&format!("{GOOD}\n[dns]\nzone = \"{zone}\"\n"))
        .unwrap_err()
        .0;
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(
        text.iter()
            .any(|e| e.contains("node db1's name server") && e.contains("253 characters")),
        "{text:#?}"
    );
    assert!(text.iter().any(|e| e.contains("_owner.")), "{text:#?}");
    // Short enough for every name built in it: accepted.
    let zone = [label.as_str(); 3].join(".");
    assert!(parse(&format!("{GOOD}\n[dns]\nzone = \"{zone}\"\n")).is_ok());
}

#[test]
fn an_update_record_too_long_for_its_owner_record_is_refused() {
    let label = "r".repeat(60);
    let record = format!("{label}.{label}.{label}.{}.db.example.com.", "r".repeat(50));
    let e = only_error(&format!(
        "{GOOD}\n[dns]\nzone = \"db.example.test.\"\n[dns.update]\nserver = \"198.51.100.53\"\n\
         zone = \"db.example.com.\"\nrecord = \"{record}\"\nkey_name = \"k\"\nkey_file = \"k\"\n"
    ));
    assert_eq!(e.field, "dns.update.record");
    assert!(e.problem.contains("_owner."), "{e}");
}
