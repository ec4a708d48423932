//! `vipgate run` and `vipgate status` refusing clearly when they cannot work.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_vipgate");

/// A cluster configuration in `dir`, with its secret and a VIP.
fn config(dir: &Path) -> std::path::PathBuf {
    let secret = dir.join("secret");
    std::fs::write(
        &secret,
        "an example key of more than thirty-two bytes, for tests\n",
    )
    .unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file = dir.join("vipgate.toml");
    std::fs::write(
        &file,
        r#"
[cluster]
name = "t"
secret_file = "secret"
state_dir = "state"

[control]
socket = "control.sock"

[[node]]
id = "db1"
address = "192.0.2.11"

[[node]]
id = "db2"
address = "192.0.2.12"

[[node]]
id = "w1"
address = "192.0.2.13"
witness = true

[[vip]]
address = "192.0.2.50/24"
interface = "eth0"
"#,
    )
    .unwrap();
    file
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn run_without_network_capabilities_refuses_at_start_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path());
    // As root, drop the two capabilities for the child; as another user it has none anyway.
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--inh-caps=-net_admin,-net_raw",
            "--bounding-set=-net_admin,-net_raw",
            "--",
            BIN,
        ]);
        c
    } else {
        Command::new(BIN)
    };
    let out = cmd
        .args(["run", "--config"])
        .arg(&file)
        .args(["--node", "db1"])
        .output()
        .unwrap();
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("lacks CAP_NET_ADMIN and CAP_NET_RAW"), "{all}");
    assert!(all.contains("fix: run it as root"), "{all}");
    // It stopped before touching anything.
    assert!(!dir.path().join("state").exists());
}

#[test]
fn run_for_a_node_that_is_not_a_member_names_the_members() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path());
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&file)
        .args(["--node", "db9"])
        .output()
        .unwrap();
    let all = text(&out);
    assert!(!out.status.success());
    assert!(
        all.contains("\"db9\", is not a member (members: db1, db2, w1)"),
        "{all}"
    );
}

#[test]
fn status_without_a_running_agent_says_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path());
    let out = Command::new(BIN)
        .args(["status", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let all = text(&out);
    assert!(!out.status.success());
    assert!(all.contains("control.sock"), "{all}");
    assert!(all.contains("is `vipgate run` running?"), "{all}");
}
