//! `vipgate check-config` as an operator runs it: exit status, summary and located errors.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn vipgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vipgate"))
        .args(args)
        .output()
        .expect("run vipgate")
}

fn write_secret(path: &Path) {
    std::fs::write(path, "an example key of more than thirty-two bytes, for tests\n").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The shipped example, checked where it lies; its secret is created next to it (git ignores
/// it) as the example's comments tell an operator to do.
#[test]
fn the_shipped_example_config_passes_check_config() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    let secret = dir.join("secret");
    if !secret.exists() {
        write_secret(&secret);
    }
    let out = vipgate(&["check-config", "config/vipgate.toml", "--node", "db1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("config/vipgate.toml: OK"), "{stdout}");
    assert!(stdout.contains("majority 2, survives 1 failure"), "{stdout}");
    assert!(stdout.contains("this node: db1"), "{stdout}");
}

fn check(config: &str, args: &[&str]) -> (bool, String) {
    let d = tempfile::tempdir().unwrap();
    write_secret(&d.path().join("secret"));
    let file = d.path().join("vipgate.toml");
    std::fs::write(&file, config).unwrap();
    let mut all = vec!["check-config", file.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = vipgate(&all);
    let stderr = String::from_utf8_lossy(&out.stderr).replace(d.path().to_str().unwrap(), "DIR");
    (out.status.success(), stderr)
}

const TWO_NODES: &str = r#"[cluster]
name = "c"
secret_file = "secret"
[[node]]
id = "db1"
address = "192.0.2.11"
[[node]]
id = "db2"
address = "192.0.2.12"
"#;

#[test]
fn invalid_configs_exit_non_zero_with_file_line_field_and_fix() {
    let (ok, err) = check(TWO_NODES, &[]);
    assert!(!ok);
    assert!(
        err.starts_with("error: DIR/vipgate.toml:4: node: two voting members"),
        "{err}"
    );
    assert!(err.contains("fix: add a witness"), "{err}");

    let three = format!("{TWO_NODES}[[node]]\nid = \"w1\"\naddress = \"192.0.2.11\"\nwitness = true\n");
    let (ok, err) = check(&three, &[]);
    assert!(!ok);
    assert!(
        err.contains("DIR/vipgate.toml:12: node[2].address: 192.0.2.11 is also the address of node[0]"),
        "{err}"
    );

    let three = format!("{TWO_NODES}[[node]]\nid = \"w1\"\naddress = \"2001:db8::13\"\nwitness = true\n");
    let (ok, err) = check(&three, &["--node", "db7"]);
    assert!(!ok);
    assert!(
        err.contains("\"db7\", is not a member (members: db1, db2, w1)"),
        "{err}"
    );
    assert!(check(&three, &["--node", "w1"]).0);

    let (ok, err) = check(
        &three.replace("name = \"c\"", "name = \"c\"\nlease_ms = 100"),
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains(
            "vipgate.toml:3: cluster.lease_ms: the lease (100 ms) must be at least 3 heartbeat intervals"
        ),
        "{err}"
    );
}

#[test]
fn a_missing_config_file_is_reported_not_panicked_on() {
    let out = vipgate(&["check-config", "/nonexistent/vipgate.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/vipgate.toml: cannot read the configuration"),
        "{err}"
    );
}
