//! The Vagrant lab (vagrant/) and the repository's shell scripts, checked without booting a
//! machine: `vagrant validate` on the Vagrantfile, `vipgate check-config` on the configuration
//! each machine gets, and shellcheck on every script. The scripts the machines share with the
//! namespace lab (provision/, vagrant/lab-writes.sh) run for real in the lab tests.
//! Needs vagrant and shellcheck (scripts/test.sh installs them).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(cmd: &mut Command) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {program} ({e}); install it: bash scripts/setup.sh vagrant shellcheck")
    })
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Copies the files the Vagrantfile refers to into a fresh directory, so that validating it
/// leaves nothing (`.vagrant/`) in the repository, and a lab booted from this checkout (its
/// `secrets/` and `.vagrant/`) does not change the test.
fn lab_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["vagrant", "provision"] {
        let to = dir.path().join(sub);
        std::fs::create_dir(&to).unwrap();
        for entry in std::fs::read_dir(Path::new(ROOT).join(sub)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }
    let vagrant = dir.path().join("vagrant");
    (dir, vagrant)
}

fn validate(dir: &Path, home: &Path) -> Output {
    run(Command::new("vagrant")
        .args(["validate", "--ignore-provider"])
        .current_dir(dir)
        .env("VAGRANT_HOME", home)
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .env("VAGRANT_NO_COLOR", "1"))
}

#[test]
fn the_vagrantfile_validates_and_a_mistake_in_it_does_not() {
    let (dir, vagrant) = lab_copy();
    let home = dir.path().join("vagrant-home");
    let out = validate(&vagrant, &home);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    for machine in ["db1", "db2", "witness", "client"] {
        assert!(
            said.contains(&format!("{machine}: ")),
            "{machine} is not defined: {said}"
        );
    }
    assert!(said.contains("validated successfully"), "{said}");
    // Validation only touched the copy, and made no secrets (those are made before `up`).
    assert!(!vagrant.join("secrets").exists());

    // The same check refuses a misspelt setting: it is not a check that cannot fail.
    let file = vagrant.join("Vagrantfile");
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, good.replace("m.vm.hostname = name", "m.vm.hostnam = name")).unwrap();
    let out = validate(&vagrant, &home);
    assert!(
        !out.status.success() && text(&out).contains("hostnam"),
        "{}",
        text(&out)
    );
}

/// Runs the Vagrantfile's `make_secrets` (what its trigger does before `vagrant up`) with
/// `dir` as the lab directory.
fn make_secrets(dir: &Path) {
    let script = format!(
        "LAB = {dir:?}; SECRETS = File.join(LAB, 'secrets')\n\
         src = File.read({file:?})\n\
         eval(src[/^SECRET_FILES.*$/])\n\
         eval(src[/^def make_secrets.*?^end$/m])\n\
         make_secrets",
        dir = dir.display().to_string(),
        file = format!("{ROOT}/vagrant/Vagrantfile"),
    );
    let out = run(Command::new("ruby").args(["-e", &script]));
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn every_machine_gets_a_configuration_that_check_config_accepts() {
    // The secrets as the Vagrantfile makes them: owner-only, and never replaced once made.
    let lab = tempfile::tempdir().unwrap();
    make_secrets(lab.path());
    let dir = lab.path().join("secrets");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let first = read("secret");
    make_secrets(lab.path());
    assert_eq!(read("secret"), first);
    for f in ["secret", "mysql-password", "repl-password", "app-password"] {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
        assert!(read(f).trim().len() >= 32, "{f}");
    }
    for (node, kind) in [("db1", "database"), ("db2", "database"), ("witness", "witness")] {
        let out = run(Command::new("bash")
            .arg(Path::new(ROOT).join("vagrant/vipgate-config.sh"))
            .args(["eth1", kind]));
        assert!(out.status.success(), "{}", text(&out));
        let config = String::from_utf8(out.stdout).unwrap();
        assert_eq!(config.contains("[mysql]"), kind == "database", "{config}");
        let path = dir.join(format!("{node}.toml"));
        std::fs::write(&path, &config).unwrap();
        let out = run(Command::new(env!("CARGO_BIN_EXE_vipgate"))
            .arg("check-config")
            .arg(&path)
            .args(["--node", node]));
        assert!(out.status.success(), "{node}: {}\n{config}", text(&out));
        assert!(text(&out).contains("eth1"), "{node}: {}", text(&out));
        // Debian 12's kernel cannot run the fence: the lab says so rather than fail to start.
        assert!(text(&out).contains("fence     OFF"), "{node}: {}", text(&out));
    }
    // A missing or odd interface is refused by the script, not written into the file.
    let out = run(Command::new("bash").arg(Path::new(ROOT).join("vagrant/vipgate-config.sh")));
    assert!(!out.status.success() && text(&out).contains("usage: vipgate-config.sh INTERFACE"));
    let out = run(Command::new("bash")
        .arg(Path::new(ROOT).join("vagrant/vipgate-config.sh"))
        .args(["eth1", "witnes"]));
    assert!(!out.status.success() && text(&out).contains("database|witness"));
}

#[test]
fn every_shell_script_passes_shellcheck() {
    let mut scripts: Vec<PathBuf> = vec![".ci/run".into(), "debian/postinst".into(), "debian/postrm".into()];
    for sub in ["scripts", "provision", "vagrant"] {
        for entry in std::fs::read_dir(Path::new(ROOT).join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "sh") {
                scripts.push(path.strip_prefix(ROOT).unwrap().to_path_buf());
            }
        }
    }
    assert!(scripts.len() >= 12, "{scripts:?}");
    let out = run(Command::new("shellcheck").args(&scripts).current_dir(ROOT));
    assert!(out.status.success(), "{}", text(&out));
}
