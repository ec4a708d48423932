//! What an operator gets without a running agent: the manual page, shell completions, and the
//! exit codes of `status --is-owner`.

use std::process::Command;

fn vipgate(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vipgate"))
        .args(args)
        .output()
        .expect("run vipgate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_manual_page_and_completions_cover_every_command() {
    let (code, man, _) = vipgate(&["man"]);
    assert_eq!(code, Some(0));
    // roff escapes hyphens.
    let man = man.replace("\\-", "-");
    assert!(man.contains(".TH vipgate 8"), "{man}");
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, err) = vipgate(&["completions", shell]);
        assert_eq!(code, Some(0), "{shell}: {err}");
        for command in [
            "status",
            "switchover",
            "maintenance",
            "failover-ack",
            "check-config",
        ] {
            assert!(script.contains(command), "{shell} completion lacks {command}");
            assert!(man.contains(command), "the manual page lacks {command}");
        }
    }
    let (code, _, err) = vipgate(&["completions", "tcsh"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("possible values"), "{err}");
}

#[test]
fn status_exit_codes_tell_scripts_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let socket = socket.to_str().unwrap();
    // No agent to ask: 2, with the reason.
    let (code, out, err) = vipgate(&["status", "--is-owner", "--socket", socket]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(out.is_empty() && err.contains("none.sock"), "{err}");
    let (code, _, err) = vipgate(&["status", "--watch", "0", "--socket", socket]);
    assert_eq!(code, Some(1));
    assert!(err.contains("0.1 to 3600"), "{err}");
    let (code, _, err) = vipgate(&["status", "--json", "--watch", "--socket", socket]);
    assert_eq!(code, Some(2), "--json and --watch conflict: {err}");
}

#[test]
fn output_to_a_closed_pipe_ends_the_command_without_a_panic() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    for args in [&["completions", "bash"][..], &["man"][..]] {
        // Like `| head` that has already exited: the reading end is closed before the command
        // writes anything.
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let mut child = Command::new(env!("CARGO_BIN_EXE_vipgate"))
            .args(args)
            .stdout(std::process::Stdio::from(write))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run vipgate");
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let status = child.wait().unwrap();
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(
            status.signal(),
            Some(nix::sys::signal::Signal::SIGPIPE as i32),
            "{args:?}: {status:?} {err}"
        );
    }
}
