//! The Debian package, built with `cargo deb` from the debug binary (scripts/package.sh) and
//! inspected with dpkg-deb: it holds the binary, the unit, the example configuration, the
//! manual page, completions and the documentation, and creates the service user.

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_deb_holds_everything_an_operator_installs() {
    // The integration test's binary is the one cargo just built into target/debug.
    assert!(Path::new(env!("CARGO_BIN_EXE_vipgate")).exists());
    let out = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let listed = run(Command::new("bash")
        .arg(format!("{root}/scripts/package.sh"))
        .args(["--profile", "dev", "--out"])
        .arg(out.path()));
    let deb = listed
        .lines()
        .last()
        .expect("the package's path")
        .trim()
        .to_string();
    let contents = run(Command::new("dpkg-deb").args(["--contents", &deb]));
    for path in [
        "./usr/bin/vipgate",
        "./lib/systemd/system/vipgate.service",
        "./usr/share/doc/vipgate/examples/vipgate.toml",
        "./usr/share/doc/vipgate/examples/provision/mariadb-config.sh",
        "./usr/share/doc/vipgate/examples/provision/mariadb-setup.sh",
        "./usr/share/doc/vipgate/README.md",
        "./usr/share/doc/vipgate/operations.md",
        "./usr/share/man/man8/vipgate.8.gz",
        "./usr/share/bash-completion/completions/vipgate",
        "./usr/share/zsh/vendor-completions/_vipgate",
        "./usr/share/fish/vendor_completions.d/vipgate.fish",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "{path} is not in the package:\n{contents}"
        );
    }
    let binary = contents
        .lines()
        .find(|l| l.ends_with("./usr/bin/vipgate"))
        .unwrap();
    assert!(binary.starts_with("-rwxr-xr-x 0/0"), "{binary}");
    let depends = run(Command::new("dpkg-deb").args(["--field", &deb, "Depends"]));
    assert!(depends.contains("adduser"), "{depends}");
    // The maintainer script creates the user the unit runs as.
    let control = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .args(["--control", &deb])
        .arg(control.path()));
    let postinst = std::fs::read_to_string(control.path().join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system --group") && postinst.contains("/etc/vipgate"));
    // The packaged manual page is the one the binary prints.
    let extracted = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .args(["--extract", &deb])
        .arg(extracted.path()));
    let man = run(Command::new("zcat").arg(extracted.path().join("usr/share/man/man8/vipgate.8.gz")));
    assert!(man.contains(".TH vipgate 8"), "{man}");
}
