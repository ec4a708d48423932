//! `[hooks]`: operators' scripts, run on transitions one at a time in the order the
//! transitions happened (keepalived runs its notify scripts unordered), each bounded by
//! `timeout_ms` and then killed, never blocking the agent loop. Failures are logged and counted.

use super::Agent;
use crate::core::Term;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// One transition, with the scripts to run (as configured when it happened).
pub(super) struct Event {
    name: &'static str,
    term: Term,
    scripts: Vec<PathBuf>,
    timeout: Duration,
    env: Vec<(String, String)>,
}

/// Runs by (event, result): `ok`, `failed`, `timed out`.
pub(super) type Counts = Arc<Mutex<BTreeMap<String, u64>>>;

/// Starts the runner; events sent to it run in order.
pub(super) fn start(counts: Counts) -> mpsc::UnboundedSender<Event> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            for script in &event.scripts {
                let result = run(script, event.name, event.term, &event.env, event.timeout).await;
                let key = format!(
                    "{} {}",
                    event.name,
                    match &result {
                        Ok(()) => "ok",
                        Err(HookError::TimedOut { .. }) => "timed out",
                        Err(_) => "failed",
                    }
                );
                *counts.lock().expect("hook counts").entry(key).or_default() += 1;
                match result {
                    Ok(()) => tracing::info!("hook {} ({}) done", script.display(), event.name),
                    Err(e) => tracing::warn!("hook {} ({}): {e}", script.display(), event.name),
                }
            }
        }
    });
    tx
}

/// The search path hooks run with.
const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// In the hook's process, before exec: the agent's capabilities (NET_ADMIN, NET_RAW,
/// NET_BIND_SERVICE under the unit) are not passed on — a hook needs none of them. The ambient
/// set is cleared, and the inheritable one too, so that not even a program with file
/// capabilities regains them. Raw system calls only: this runs between fork and exec.
fn drop_capabilities() -> std::io::Result<()> {
    const VERSION_3: u32 = 0x2008_0522;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let check = |rc: libc::c_long| match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    };
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: prctl with constant arguments; capget/capset with the version-3 header and the
    // two data words that version defines.
    unsafe {
        let none = 0 as libc::c_ulong;
        let clear = libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong;
        check(libc::prctl(libc::PR_CAP_AMBIENT, clear, none, none, none).into())?;
        check(libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()))?;
        data.iter_mut().for_each(|d| d.inheritable = 0);
        let cleared = check(libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()));
        let no_new_privs = libc::prctl(libc::PR_GET_NO_NEW_PRIVS, none, none, none, none) == 1;
        inheritable_handled(cleared, no_new_privs)
    }
}

/// The unit's system call filter refuses `capset`; its NoNewPrivileges makes the inheritable
/// set inert anyway (exec grants no file capabilities), so only then may clearing it fail.
fn inheritable_handled(cleared: std::io::Result<()>, no_new_privs: bool) -> std::io::Result<()> {
    match cleared {
        Err(_) if no_new_privs => Ok(()),
        other => other,
    }
}

/// Runs `script EVENT NODE TERM` with the event's variables (and PATH, nothing else of the
/// agent's environment, and none of its capabilities); the whole process group is killed at
/// the timeout.
/// Why a hook did not succeed.
#[derive(Debug, thiserror::Error)]
pub(super) enum HookError {
    #[error("cannot start it: {0}")]
    Start(#[source] std::io::Error),
    #[error("exited with {0}")]
    Exited(std::process::ExitStatus),
    #[error("cannot wait for it: {0}")]
    Wait(#[source] std::io::Error),
    #[error("timed out after {} ms and was killed", .after.as_millis())]
    TimedOut { after: Duration },
}

pub(super) async fn run(
    script: &Path,
    event: &str,
    term: Term,
    env: &[(String, String)],
    timeout: Duration,
) -> Result<(), HookError> {
    let node = env
        .iter()
        .find(|(k, _)| k == "VIPGATE_NODE")
        .map_or("", |(_, v)| v.as_str());
    let mut command = tokio::process::Command::new(script);
    command
        .args([event, node, &term.to_string()])
        // Only what a hook is documented to get: not the agent's environment.
        .env_clear()
        .env("PATH", HOOK_PATH)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("VIPGATE_EVENT", event)
        .env("VIPGATE_TERM", term.to_string())
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: raw system calls only (async-signal-safe) between fork and exec.
    unsafe {
        command.pre_exec(drop_capabilities);
    }
    let mut child = command.spawn().map_err(HookError::Start)?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(HookError::Exited(status)),
        Ok(Err(e)) => Err(HookError::Wait(e)),
        Err(_) => {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait().await;
            Err(HookError::TimedOut { after: timeout })
        }
    }
}

impl Agent {
    /// The variables every hook gets, describing this node and the cluster now.
    pub(super) fn hook_env(&self, reason: Option<&str>) -> Vec<(String, String)> {
        let now = crate::clock::now();
        let mut env = vec![
            ("VIPGATE_NODE".to_string(), self.id(self.me).to_string()),
            ("VIPGATE_CLUSTER".to_string(), self.config.cluster.name.clone()),
            (
                "VIPGATE_OWNER".to_string(),
                self.core
                    .owner(now)
                    .map(|o| self.id(o).to_string())
                    .unwrap_or_default(),
            ),
            (
                "VIPGATE_VIPS".to_string(),
                self.config
                    .vips_of(self.me)
                    .iter()
                    .map(|v| v.address.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        ];
        if let Some(r) = reason {
            env.push(("VIPGATE_REASON".to_string(), r.to_string()));
        }
        env
    }

    /// Queues the hooks of `event` (none configured: nothing happens).
    pub(super) fn hook(&self, event: &'static str, term: Term, reason: Option<&str>) {
        let scripts = self.config.hooks.of(event).to_vec();
        if scripts.is_empty() {
            return;
        }
        let _ = self.hooks.send(Event {
            name: event,
            term,
            scripts,
            timeout: self.config.hooks.timeout,
            env: self.hook_env(reason),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::inheritable_handled;

    #[test]
    fn a_refused_capset_is_fine_only_where_exec_grants_no_file_capabilities() {
        let refused = || Err(std::io::Error::from_raw_os_error(libc::EPERM));
        assert!(inheritable_handled(refused(), true).is_ok());
        assert!(inheritable_handled(refused(), false).is_err());
        assert!(inheritable_handled(Ok(()), false).is_ok());
    }
}
