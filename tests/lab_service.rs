//! The agent as systemd runs it (systemd/vipgate.service): as an unprivileged user with only
//! CAP_NET_ADMIN, CAP_NET_RAW and CAP_NET_BIND_SERVICE (through setpriv), telling a
//! NOTIFY_SOCKET when it is ready and pinging the watchdog from its loop. Needs root.

mod lab;

use lab::{Lab, Spec, VIP4, sh, wait_for};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

const NOBODY: &str = "65534";
const CAPS: &str = "-all,+net_admin,+net_raw,+net_bind_service";

#[test]
fn an_unprivileged_agent_with_three_capabilities_owns_serves_dns_and_talks_to_systemd() {
    let mut lab = Lab::new(
        Path::new(env!("CARGO_BIN_EXE_vipgate")),
        Spec {
            dns: Some(String::new()),
            ..Spec::default()
        },
    );
    // db1's files belong to the unprivileged user, as StateDirectory= and friends arrange; its
    // copy of the key too (a key file must belong to the agent's user or root).
    let dir = lab.dir.path().to_path_buf();
    sh(&["chmod", "0755", &dir.display().to_string()]);
    std::fs::copy(dir.join("secret"), dir.join("db1").join("secret")).unwrap();
    sh(&[
        "chown",
        "-R",
        &format!("{NOBODY}:{NOBODY}"),
        &dir.join("db1").display().to_string(),
    ]);
    // A hook that records what it inherits: its capabilities and its environment.
    let seen = dir.join("db1").join("hook-saw");
    let hook = dir.join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ngrep ^Cap /proc/self/status > {seen}.tmp\nenv >> {seen}.tmp\nmv {seen}.tmp {seen}\n",
            seen = seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = lab.config_path("db1");
    let mut text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("secret_file = \"../secret\"", "secret_file = \"secret\"");
    text.push_str(&format!("\n[hooks]\nowner = [\"{}\"]\n", hook.display()));
    std::fs::write(&config, text).unwrap();
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    sh(&["chmod", "0777", &notify_path.display().to_string()]);
    notify.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let setpriv = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &format!("--inh-caps={CAPS}"),
        &format!("--ambient-caps={CAPS}"),
        &format!("--bounding-set={CAPS}"),
        "--",
    ];
    lab.start_as(
        "db1",
        &setpriv,
        &[
            ("NOTIFY_SOCKET", notify_path.display().to_string()),
            ("WATCHDOG_USEC", "1000000".into()),
        ],
        &[],
    );
    lab.start("db2");
    lab.start("w1");
    // What the process runs as, once setpriv has become the agent.
    let proc_status =
        || std::fs::read_to_string(format!("/proc/{}/status", lab.pid("db1"))).unwrap_or_default();
    assert!(wait_for(Duration::from_secs(2), || proc_status()
        .starts_with("Name:\tvipgate")));
    let status = proc_status();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(field("Uid:"), NOBODY, "{status}");
    assert_eq!(
        field("CapEff:"),
        "0000000000003400",
        "only the three capabilities"
    );

    // READY=1 once the quiet lease is over, then watchdog pings every quarter second.
    let started = Instant::now();
    let mut ready = None;
    let mut pings = 0;
    let mut buf = [0u8; 512];
    while started.elapsed() < Duration::from_secs(5) && (ready.is_none() || pings < 4) {
        if let Ok(n) = notify.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text.contains("READY=1") && ready.is_none() {
                ready = Some(started.elapsed());
                println!("notified: {}", text.replace('\n', " "));
            }
            if text.contains("WATCHDOG=1") {
                pings += 1;
            }
        }
    }
    let ready = ready.unwrap_or_else(|| panic!("no READY=1\n{}", lab.log("db1")));
    assert!(
        ready >= Duration::from_millis(900),
        "ready before its quiet lease ended: {ready:?}"
    );
    assert!(pings >= 4, "{pings} watchdog pings in 5 s");

    // With those capabilities it adds and announces the VIP, and serves DNS on port 53.
    lab.expect_sole_holder(VIP4, "db1", Duration::from_secs(8));
    assert!(
        wait_for(Duration::from_secs(3), || lab
            .status("db1")
            .is_some_and(|s| s.vip.announced > 0)),
        "no announcements"
    );
    let answer = lab.dig(&["@192.0.2.11", "primary.db.example.test.", "A", "+short"]);
    assert_eq!(answer.trim(), VIP4);
    assert_hook_inherited_nothing(&seen);
    // A graceful stop tells systemd it is stopping.
    assert_eq!(lab.stop("db1", Duration::from_secs(5)), Some(0));
    let mut stopping = false;
    while let Ok(n) = notify.recv(&mut buf) {
        stopping |= String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
    }
    assert!(stopping, "no STOPPING=1");
}

/// The owner hook ran with no capability at all (the agent's three ambient ones dropped) and
/// with PATH and the documented `VIPGATE_*` variables only — not the agent's environment, which
/// holds NOTIFY_SOCKET and WATCHDOG_USEC here.
fn assert_hook_inherited_nothing(seen: &Path) {
    assert!(
        wait_for(Duration::from_secs(5), || seen.exists()),
        "the owner hook did not run"
    );
    let saw = std::fs::read_to_string(seen).unwrap();
    for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert!(
            saw.contains(&format!("{set}:\t0000000000000000")),
            "{set}:\n{saw}"
        );
    }
    let names: Vec<&str> = saw
        .lines()
        .filter(|l| !l.starts_with("Cap"))
        .filter_map(|l| l.split('=').next())
        .collect();
    let shell_own = ["PWD", "SHLVL", "_", "OLDPWD"];
    let foreign: Vec<&&str> = names
        .iter()
        .filter(|n| **n != "PATH" && !n.starts_with("VIPGATE_") && !shell_own.contains(n))
        .collect();
    assert!(foreign.is_empty(), "the hook saw {foreign:?}:\n{saw}");
    assert!(names.contains(&"VIPGATE_EVENT"), "{saw}");
}

#[test]
fn status_is_owner_exits_0_only_on_the_owner_and_watch_redraws() {
    let lab = Lab::running(Path::new(env!("CARGO_BIN_EXE_vipgate")), Spec::default());
    for (node, expected) in [("db1", Some(0)), ("db2", Some(1)), ("w1", Some(1))] {
        let code = std::process::Command::new(env!("CARGO_BIN_EXE_vipgate"))
            .args(["status", "--is-owner", "--config"])
            .arg(lab.config_path(node))
            .output()
            .unwrap()
            .status
            .code();
        assert_eq!(code, expected, "{node}");
    }
    let mut watch = std::process::Command::new(env!("CARGO_BIN_EXE_vipgate"))
        .args(["status", "--watch", "0.2", "--config"])
        .arg(lab.config_path("db2"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(900));
    let _ = watch.kill();
    let out = watch.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let frames = text.matches("NODE").count();
    assert!(frames >= 3, "{frames} frames in 0.9 s:\n{text}");
    assert!(text.contains("db1") && text.contains("owner"), "{text}");
}

fn edit_config(lab: &Lab, node: &str, from: &str, to: &str) {
    let path = lab.config_path(node);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from:?} not in {node}'s configuration");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

fn ttl(lab: &Lab) -> u32 {
    lab.dig(&[
        "@192.0.2.11",
        "primary.db.example.test.",
        "A",
        "+noall",
        "+answer",
    ])
    .split_whitespace()
    .nth(1)
    .and_then(|t| t.parse().ok())
    .unwrap_or(0)
}

#[test]
fn reload_on_the_owner_keeps_the_vip_and_refuses_what_needs_a_restart() {
    let lab = Lab::running(
        Path::new(env!("CARGO_BIN_EXE_vipgate")),
        Spec {
            dns: Some("ttl = 5\n".into()),
            ..Spec::default()
        },
    );
    let ping = lab.pinger(VIP4);
    std::thread::sleep(Duration::from_millis(500));
    let from = lab::unix_now();
    let reload = |lab: &Lab| {
        let config = lab.config_path("db1");
        lab.vipgate(&["reload".as_ref(), "--config".as_ref(), config.as_os_str()])
    };
    // Live: a priority, the announcement cadence, the DNS TTL.
    edit_config(&lab, "db1", "priority = 150", "priority = 180");
    edit_config(&lab, "db1", "refresh_ms = 30000", "refresh_ms = 20000");
    edit_config(&lab, "db1", "ttl = 5", "ttl = 9");
    let (ok, text) = reload(&lab);
    assert!(ok, "{text}");
    for what in ["priorities", "announcements", "DNS records"] {
        assert!(text.contains(what), "{text}");
    }
    assert_eq!(ttl(&lab), 9);
    assert!(
        wait_for(Duration::from_secs(2), || lab.status("db2").is_some_and(|s| s
            .peers
            .iter()
            .any(|p| p.id == "db1" && p.priority == 180))),
        "peers do not see the new priority"
    );
    // SIGHUP does the same.
    edit_config(&lab, "db1", "ttl = 9", "ttl = 11");
    lab.signal("db1", nix::sys::signal::Signal::SIGHUP);
    assert!(wait_for(Duration::from_secs(2), || ttl(&lab) == 11));
    // Needs a restart: refused, and nothing changes.
    edit_config(&lab, "db1", "lease_ms = 1000", "lease_ms = 2000");
    let (ok, text) = reload(&lab);
    assert!(!ok && text.contains("cluster.lease_ms"), "{text}");
    edit_config(&lab, "db1", "lease_ms = 2000", "lease_ms = 1000");
    // A broken file: the command says where, and a SIGHUP changes nothing either.
    edit_config(&lab, "db1", "ttl = 11", "ttl = \"eleven\"");
    let (ok, text) = reload(&lab);
    assert!(!ok && text.contains("vipgate.toml:"), "{text}");
    lab.signal("db1", nix::sys::signal::Signal::SIGHUP);
    assert!(
        wait_for(Duration::from_secs(2), || lab
            .log("db1")
            .contains("SIGHUP: not reloaded, the old configuration stays")),
        "{}",
        lab.log("db1")
    );
    assert_eq!(ttl(&lab), 11);
    std::thread::sleep(Duration::from_millis(500));
    // The VIP never moved and no reply was lost.
    assert_eq!(
        lab.observer().runs("db1", VIP4).len(),
        1,
        "the VIP was dropped and re-added"
    );
    assert!(lab.observer().sole_holder(VIP4, "db1"));
    let gap = ping.max_gap_since(from).unwrap();
    let replies = ping.replies_since(from);
    println!(
        "{replies} replies during the reloads; longest gap {} ms",
        gap.as_millis()
    );
    assert!(gap < Duration::from_millis(100), "a {gap:?} gap in ping replies");
    assert!(lab.log("db1").contains("reloaded: "), "{}", lab.log("db1"));
}

#[test]
fn metrics_and_status_are_served_over_http() {
    let mut lab = Lab::running(
        Path::new(env!("CARGO_BIN_EXE_vipgate")),
        Spec {
            dns: Some(String::new()),
            ..Spec::default()
        },
    );
    let _ = lab.dig(&["@192.0.2.11", "primary.db.example.test.", "A"]);
    let metrics = |lab: &Lab, node: &str| {
        let (status, body) = lab.http(node, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(status.contains("200"), "{status}");
        body
    };
    let value = |text: &str, sample: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {sample} in\n{text}"))
    };
    let db1 = metrics(&lab, "db1");
    assert_eq!(value(&db1, "vipgate_is_owner "), 1.0);
    assert_eq!(value(&db1, "vipgate_role{role=\"owner\"} "), 1.0);
    assert_eq!(
        value(&db1, "vipgate_transitions_total{reason=\"acquired\"} "),
        1.0
    );
    assert_eq!(value(&db1, "vipgate_vips_held "), 1.0);
    assert!(value(&db1, "vipgate_announcements_total ") > 0.0);
    assert!(value(&db1, "vipgate_datagrams_received_total ") > 0.0);
    assert!(value(&db1, "vipgate_dns_answers_total{rcode=\"NOERROR\"} ") >= 1.0);
    assert!(value(&db1, "vipgate_peer_last_heard_seconds{peer=\"w1\"} ") < 1.0);
    let rtt = value(&db1, "vipgate_peer_rtt_seconds{peer=\"w1\"} ");
    assert!(rtt > 0.0 && rtt < 0.5, "round trip {rtt} s");
    let db2 = metrics(&lab, "db2");
    assert_eq!(value(&db2, "vipgate_is_owner "), 0.0);
    assert_eq!(value(&db2, "vipgate_owner{node=\"db1\"} "), 1.0);
    // /status is the JSON of `vipgate status --json`.
    let (status, body) = lab.http("db2", "GET /status HTTP/1.1\r\n\r\n");
    assert!(status.contains("200"), "{status}");
    let s: vipgate::control::Status = serde_json::from_str(&body).unwrap();
    assert_eq!((s.node.as_str(), s.owner.as_deref()), ("db2", Some("db1")));
    assert!(lab.http("db2", "GET /nothing HTTP/1.1\r\n\r\n").0.contains("404"));
    assert!(
        lab.http("db2", "POST /metrics HTTP/1.1\r\n\r\n")
            .0
            .contains("405")
    );
    // After a failover the new owner counts its transition.
    lab.kill("db1");
    lab.expect_sole_holder(VIP4, "db2", Duration::from_secs(5));
    let db2 = metrics(&lab, "db2");
    assert_eq!(value(&db2, "vipgate_is_owner "), 1.0);
    assert_eq!(
        value(&db2, "vipgate_transitions_total{reason=\"acquired\"} "),
        1.0
    );
}

#[test]
fn logs_are_json_with_a_flag_and_carry_no_timestamps_under_journald() {
    let mut lab = Lab::new(Path::new(env!("CARGO_BIN_EXE_vipgate")), Spec::default());
    lab.start_as("db1", &[], &[], &["--log-format", "json"]);
    lab.start_as("db2", &[], &[("JOURNAL_STREAM", "8:12345".into())], &[]);
    lab.start("w1");
    lab.expect_sole_holder(VIP4, "db1", Duration::from_secs(8));
    let json = lab.log("db1");
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "{json}");
    assert!(
        lines
            .iter()
            .all(|l| l["timestamp"].is_string() && l["level"].is_string())
    );
    assert!(
        lines.iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("became owner"))),
        "{json}"
    );
    // Under journald: level and message only, the journal stamps the time.
    let plain = lab.log("db2");
    let first = plain.lines().next().unwrap_or_default();
    assert!(first.trim_start().starts_with("INFO"), "{first}");
    assert!(!first.contains("Z "), "a timestamp: {first}");
}

/// Writes an executable script into the lab directory; its path.
fn script(lab: &Lab, name: &str, body: &str) -> String {
    let path = lab.dir.path().join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[test]
fn hooks_run_in_order_with_the_event_and_a_slow_one_is_killed_at_its_timeout() {
    let mut lab = Lab::new(Path::new(env!("CARGO_BIN_EXE_vipgate")), Spec::default());
    let log = lab.dir.path().join("hooks.log");
    let note = script(
        &lab,
        "note.sh",
        &format!(
            "echo \"$1 $2 $3 $VIPGATE_EVENT ${{VIPGATE_REASON:-}}\" >> {}",
            log.display()
        ),
    );
    let slow = script(&lab, "slow.sh", "sleep 10");
    for node in ["db1", "db2", "w1"] {
        let path = lab.config_path(node);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&format!(
            "\n[hooks]\nowner = [\"{note}\", \"{slow}\", \"{note}\"]\nrelease = [\"{note}\"]\ntimeout_ms = 300\n"
        ));
        std::fs::write(&path, text).unwrap();
    }
    lab.start_all();
    lab.expect_sole_holder(VIP4, "db1", Duration::from_secs(8));
    lab.link_down("db1");
    lab.expect_sole_holder(VIP4, "db2", Duration::from_secs(5));
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert!(
        wait_for(Duration::from_secs(3), || lines().len() >= 5),
        "{:?}\n{}",
        lines(),
        lab.logs()
    );
    let of = |node: &str| -> Vec<String> {
        lines()
            .into_iter()
            .filter(|l| l.split_whitespace().nth(1) == Some(node))
            .collect()
    };
    let db1 = of("db1");
    assert_eq!(db1.len(), 3, "{db1:?}");
    assert!(
        db1[0].starts_with("owner db1 1 owner") && db1[1].starts_with("owner db1 1 owner"),
        "{db1:?}"
    );
    assert!(
        db1[2].starts_with("release db1 1 release") && db1[2].contains("no longer eligible"),
        "{db1:?}"
    );
    let db2 = of("db2");
    assert_eq!(db2.len(), 2, "{db2:?}");
    assert!(db2.iter().all(|l| l.starts_with("owner db2 2 owner")), "{db2:?}");
    let runs = lab.status("db2").unwrap().hook_runs;
    assert_eq!(runs.get("owner ok"), Some(&2), "{runs:?}");
    assert_eq!(runs.get("owner timed out"), Some(&1), "{runs:?}");
    assert!(lab.log("db2").contains("timed out after 300 ms and was killed"));
}

/// `vipgate ARGS` run as nobody (group nogroup), with db2's socket.
fn as_nobody(lab: &Lab, args: &[&str]) -> (bool, String) {
    let socket = lab.dir.path().join("db2").join("control.sock");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_vipgate"))
        .args(args)
        .arg("--socket")
        .arg(&socket)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn members_of_the_status_group_read_status_but_change_nothing() {
    let mut lab = Lab::new(Path::new(env!("CARGO_BIN_EXE_vipgate")), Spec::default());
    let config = lab.config_path("db2");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[control]\n", "[control]\nstatus_group = \"nogroup\"\n");
    std::fs::write(&config, text).unwrap();
    lab.start_all();
    lab.expect_sole_holder(VIP4, "db1", Duration::from_secs(8));
    for dir in [lab.dir.path().to_path_buf(), lab.dir.path().join("db2")] {
        sh(&["chmod", "0755", &dir.display().to_string()]);
    }
    let socket = lab.dir.path().join("db2").join("control.sock");
    let meta = std::fs::metadata(&socket).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!((meta.gid(), meta.permissions().mode() & 0o777), (65534, 0o660));
    let (ok, out) = as_nobody(&lab, &["status", "--json"]);
    assert!(ok && out.contains("\"node\":\"db2\""), "{out}");
    let (ok, out) = as_nobody(&lab, &["maintenance", "on"]);
    assert!(!ok && out.contains("only root and the agent's user"), "{out}");
    assert!(!lab.status("db2").unwrap().maintenance, "nothing changed");
    // Without the group, a socket only root and the agent's user may open.
    let (ok, out) = {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=1", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_vipgate"))
            .args(["status", "--socket"])
            .arg(&socket)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(!ok && out.to_lowercase().contains("permission denied"), "{out}");
}
