//! The shipped systemd unit, checked with systemd's own tools: it verifies, and its exposure
//! rating stays at or below 3.0.

use std::path::PathBuf;
use std::process::Command;

fn unit_with_built_binary() -> tempfile::TempDir {
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd/vipgate.service");
    let text = std::fs::read_to_string(&shipped).expect("systemd/vipgate.service");
    assert!(
        text.contains("/usr/bin/vipgate run"),
        "the unit starts the installed binary"
    );
    // verify wants the executables to exist: point them at the one cargo built.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("vipgate.service"),
        text.replace("/usr/bin/vipgate", env!("CARGO_BIN_EXE_vipgate")),
    )
    .unwrap();
    dir
}

fn systemd_analyze(args: &[&str], unit: &std::path::Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("run systemd-analyze (package systemd; scripts/setup.sh installs it)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_unit_verifies() {
    let dir = unit_with_built_binary();
    let (ok, text) = systemd_analyze(&["verify"], &dir.path().join("vipgate.service"));
    assert!(ok && text.trim().is_empty(), "systemd-analyze verify:\n{text}");
}

#[test]
fn the_unit_is_rated_at_most_3_0_exposure() {
    let dir = unit_with_built_binary();
    let (_, text) = systemd_analyze(
        &["security", "--offline=true", "--no-pager"],
        &dir.path().join("vipgate.service"),
    );
    let level: f64 = text
        .split("Overall exposure level for vipgate.service:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    println!("exposure {level}");
    assert!(level <= 3.0, "exposure {level} above 3.0:\n{text}");
    // The capabilities are exactly what the agent needs.
    let unit = std::fs::read_to_string(dir.path().join("vipgate.service")).unwrap();
    for line in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        assert!(
            unit.contains(&format!(
                "{line}=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE\n"
            )),
            "{line}"
        );
    }
}
