//! The state file: the term and vote the safety argument relies on, and the boot id.
//!
//! Written atomically — a temporary file is written and fsynced, renamed over the old one, and
//! the directory fsynced — so a crash leaves either the old or the new state, never a torn one.
//! The vote is stored by node id, not index, so it survives reordering of the member list.

use crate::core::{NodeIdx, PersistentState, Term};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const FILE_NAME: &str = "state.toml";

#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}\n  fix: {fix}")]
pub struct StateError {
    pub path: PathBuf,
    pub problem: String,
    pub fix: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    term: Term,
    voted_for: Option<String>,
    /// The highest owner term acknowledged (absent in files of earlier versions: none).
    #[serde(default)]
    acked: Term,
    /// The lease (ms) the persisted grant ran for: a restart keeps quiet at least this long.
    #[serde(default)]
    lease_ms: u64,
    boot: u64,
    /// Set by `vipgate maintenance on`: the node stays ineligible, also across restarts.
    #[serde(default)]
    maintenance: bool,
    /// Promote mode: this database diverged from the primary's history (why); it stays out of
    /// ownership until it replicates cleanly again, also across restarts.
    #[serde(default)]
    diverged: Option<String>,
    /// Promote mode: no automatic failover before this wall-clock time (Unix milliseconds),
    /// the anti-flap window after the last one; also across restarts.
    #[serde(default)]
    failover_block_until_ms: Option<u64>,
    /// The newest term whose lease this node saw held, and by whom (node id).
    #[serde(default)]
    last_holder: Option<(Term, String)>,
    /// The newest owner seen with a writable database (term, node id), and its position when
    /// first seen so: eligibility is judged against it, also after a restart.
    #[serde(default)]
    last_primary: Option<(Term, String, u64)>,
}

/// The open state file of one agent.
pub struct StateFile {
    dir: PathBuf,
    /// The directory, open for the life of the agent: syncing it after a rename needs no new
    /// descriptor, whatever else holds descriptors then.
    dir_handle: File,
    path: PathBuf,
    ids: Vec<String>,
    disk: OnDisk,
}

impl StateFile {
    /// Opens (creating `dir` if needed) and reads the state; a missing file is a first start.
    pub fn open(dir: &Path, ids: Vec<String>) -> Result<StateFile, StateError> {
        let path = dir.join(FILE_NAME);
        let error = |problem: String, fix: &str| StateError {
            path: path.clone(),
            problem,
            fix: fix.to_string(),
        };
        fs::create_dir_all(dir).map_err(|e| {
            error(
                format!("cannot create the state directory: {e}"),
                "create it, or set [cluster] state_dir to a directory vipgate may write",
            )
        })?;
        let disk = match fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                error(
                    format!("the state file is damaged: {}", e.message()),
                    "restore it from a backup, or delete it (the agent then starts as new and \
                     waits one lease before voting)",
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => OnDisk::default(),
            Err(e) => {
                return Err(error(
                    format!("cannot read the state file: {e}"),
                    "check its permissions (vipgate must read and write it)",
                ));
            }
        };
        let dir_handle = File::open(dir).map_err(|e| {
            error(
                format!("cannot open the state directory: {e}"),
                "set [cluster] state_dir to a directory vipgate may read and write",
            )
        })?;
        Ok(StateFile {
            dir: dir.to_path_buf(),
            dir_handle,
            path,
            ids,
            disk,
        })
    }

    /// The term and vote as last persisted. A vote for an id that is no longer a member counts
    /// as no vote (its term is still respected).
    pub fn persistent(&self) -> PersistentState {
        PersistentState {
            term: self.disk.term,
            voted_for: self
                .disk
                .voted_for
                .as_ref()
                .and_then(|id| self.ids.iter().position(|i| i == id))
                .map(|i| i as NodeIdx),
            acked: self.disk.acked,
            lease_ms: self.disk.lease_ms,
        }
    }

    pub fn boot(&self) -> u64 {
        self.disk.boot
    }

    pub fn maintenance(&self) -> bool {
        self.disk.maintenance
    }

    /// Persists the maintenance flag (unchanged if the write fails).
    pub fn set_maintenance(&mut self, on: bool) -> Result<(), StateError> {
        let before = self.disk.maintenance;
        self.disk.maintenance = on;
        self.write().inspect_err(|_| self.disk.maintenance = before)
    }

    /// The divergence finding in `dir`'s state file, read without creating or changing
    /// anything (for `check-config --probe`); no state file means no finding.
    pub fn peek_diverged(dir: &Path) -> Result<Option<String>, StateError> {
        let path = dir.join(FILE_NAME);
        match fs::read_to_string(&path) {
            Ok(text) => toml::from_str::<OnDisk>(&text)
                .map(|d| d.diverged)
                .map_err(|e| StateError {
                    path,
                    problem: format!("the state file is damaged: {}", e.message()),
                    fix: "restore it from a backup, or delete it".into(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StateError {
                path,
                problem: format!("cannot read the state file: {e}"),
                fix: "run check-config as the user vipgate runs as (or root)".into(),
            }),
        }
    }

    pub fn diverged(&self) -> Option<&str> {
        self.disk.diverged.as_deref()
    }

    /// Persists (or clears) the divergence finding (unchanged if the write fails).
    pub fn set_diverged(&mut self, why: Option<String>) -> Result<(), StateError> {
        let before = std::mem::replace(&mut self.disk.diverged, why);
        self.write().inspect_err(|_| self.disk.diverged = before.clone())
    }

    /// The last lease holder seen, if it is still a member.
    pub fn last_holder(&self) -> Option<(Term, NodeIdx)> {
        let (term, id) = self.disk.last_holder.as_ref()?;
        let i = self.ids.iter().position(|i| i == id)?;
        Some((*term, i as NodeIdx))
    }

    /// Persists the last lease holder (unchanged if the write fails).
    pub fn set_last_holder(&mut self, holder: Option<(Term, NodeIdx)>) -> Result<(), StateError> {
        let next = holder.map(|(t, n)| (t, self.ids[usize::from(n)].clone()));
        let before = std::mem::replace(&mut self.disk.last_holder, next);
        self.write()
            .inspect_err(|_| self.disk.last_holder = before.clone())
    }

    /// The last primary seen and its position then, if it is still a member.
    pub fn last_primary(&self) -> Option<((Term, NodeIdx), u64)> {
        let (term, id, floor) = self.disk.last_primary.as_ref()?;
        let i = self.ids.iter().position(|i| i == id)?;
        Some(((*term, i as NodeIdx), *floor))
    }

    /// Persists the last primary and its position then (unchanged if the write fails).
    pub fn set_last_primary(&mut self, (term, node): (Term, NodeIdx), floor: u64) -> Result<(), StateError> {
        let next = Some((term, self.ids[usize::from(node)].clone(), floor));
        let before = std::mem::replace(&mut self.disk.last_primary, next);
        self.write()
            .inspect_err(|_| self.disk.last_primary = before.clone())
    }

    pub fn failover_block_until_ms(&self) -> Option<u64> {
        self.disk.failover_block_until_ms
    }

    /// Persists (or clears) the end of the anti-flap window (unchanged if the write fails).
    pub fn set_failover_block_until_ms(&mut self, until: Option<u64>) -> Result<(), StateError> {
        let before = std::mem::replace(&mut self.disk.failover_block_until_ms, until);
        self.write()
            .inspect_err(|_| self.disk.failover_block_until_ms = before)
    }

    /// Takes the next boot id — greater than every earlier one, and at least the wall clock in
    /// seconds so that a lost state file still yields a fresh id — and persists it.
    pub fn next_boot(&mut self, unix_secs: u64) -> Result<u64, StateError> {
        self.disk.boot = (self.disk.boot + 1).max(unix_secs);
        self.write()?;
        Ok(self.disk.boot)
    }

    /// Persists `state` durably before returning.
    pub fn save(&mut self, state: PersistentState) -> Result<(), StateError> {
        self.disk.term = state.term;
        self.disk.voted_for = state.voted_for.map(|i| self.ids[usize::from(i)].clone());
        self.disk.acked = state.acked;
        self.disk.lease_ms = state.lease_ms;
        self.write()
    }

    fn write(&self) -> Result<(), StateError> {
        let error = |what: &str, e: std::io::Error| StateError {
            path: self.path.clone(),
            problem: format!("cannot {what}: {e}"),
            fix: "check that the state directory is writable and the disk not full; the agent \
                  must not vote or own without persisting its state"
                .to_string(),
        };
        let text = toml::to_string(&self.disk).expect("the state serialises");
        let tmp = self.dir.join(format!("{FILE_NAME}.tmp"));
        // A temporary file left by a crash mid-write goes first; the new one is created afresh,
        // owner-only, never through a link planted in its place.
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(error("remove the old temporary state file", e));
            }
            _ => {}
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&tmp)
            .map_err(|e| error("create the temporary state file", e))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| error("write the temporary state file", e))?;
        fs::rename(&tmp, &self.path).map_err(|e| error("replace the state file", e))?;
        self.dir_handle
            .sync_all()
            .map_err(|e| error("sync the state directory", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Vec<String> {
        ["db1", "db2", "w1"].map(String::from).to_vec()
    }

    #[test]
    fn state_survives_reopening_and_boot_ids_only_grow() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateFile::open(dir.path(), ids()).unwrap();
        assert_eq!(s.persistent(), PersistentState::default());
        assert_eq!(s.next_boot(1000).unwrap(), 1000);
        s.save(PersistentState {
            term: 7,
            voted_for: Some(1),
            acked: 6,
            lease_ms: 3000,
        })
        .unwrap();
        let mut s = StateFile::open(dir.path(), ids()).unwrap();
        assert_eq!(s.persistent().term, 7);
        assert_eq!(s.persistent().voted_for, Some(1));
        assert_eq!(s.persistent().lease_ms, 3000, "a restart keeps quiet this long");
        assert_eq!(s.persistent().acked, 6, "older claims stay refused");
        // A wall clock that went backwards still yields a greater boot id.
        assert_eq!(s.next_boot(10).unwrap(), 1001);
        assert_eq!(s.boot(), 1001);
        assert!(!s.maintenance());
        s.set_maintenance(true).unwrap();
        s.set_failover_block_until_ms(Some(5_000)).unwrap();
        assert_eq!(StateFile::peek_diverged(dir.path()).unwrap(), None);
        s.set_last_holder(Some((7, 2))).unwrap();
        s.set_last_primary((6, 1), 1234).unwrap();
        s.set_diverged(Some("3 transactions".into())).unwrap();
        assert_eq!(
            StateFile::peek_diverged(dir.path()).unwrap().as_deref(),
            Some("3 transactions")
        );
        assert_eq!(StateFile::peek_diverged(&dir.path().join("none")).unwrap(), None);
        let s = StateFile::open(dir.path(), ids()).unwrap();
        assert!(s.maintenance());
        assert_eq!(s.failover_block_until_ms(), Some(5_000));
        assert_eq!(s.last_holder(), Some((7, 2)));
        assert_eq!(s.last_primary(), Some(((6, 1), 1234)));
        assert_eq!(s.persistent().term, 7);
        assert!(!dir.path().join("state.toml.tmp").exists());
    }

    #[test]
    fn a_vote_is_kept_by_id_when_members_are_renumbered() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateFile::open(dir.path(), ids()).unwrap();
        s.save(PersistentState {
            term: 3,
            voted_for: Some(2),
            acked: 0,
            lease_ms: 1000,
        })
        .unwrap();
        let renumbered = ["a0", "db1", "db2", "w1"].map(String::from).to_vec();
        let s = StateFile::open(dir.path(), renumbered).unwrap();
        assert_eq!(s.persistent().voted_for, Some(3));
        let gone = ["db1", "db2"].map(String::from).to_vec();
        let s = StateFile::open(dir.path(), gone).unwrap();
        assert_eq!(
            s.persistent(),
            PersistentState {
                term: 3,
                voted_for: None,
                acked: 0,
                lease_ms: 1000,
            }
        );
    }

    #[test]
    fn a_damaged_state_file_is_refused_with_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("state.toml"), "term = \"x\"").unwrap();
        let e = StateFile::open(dir.path(), ids()).err().unwrap().to_string();
        assert!(e.contains("state.toml"), "{e}");
        assert!(e.contains("damaged") && e.contains("delete it"), "{e}");
    }

    #[test]
    fn the_state_file_is_owner_only_and_a_leftover_or_planted_temporary_file_is_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "untouched").unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join("state.toml.tmp")).unwrap();
        let mut s = StateFile::open(dir.path(), ids()).unwrap();
        s.next_boot(1000).unwrap();
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "untouched");
        let mode = std::fs::metadata(dir.path().join("state.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join("state.toml.tmp"), "left by a crash").unwrap();
        s.next_boot(1000).unwrap();
        assert_eq!(StateFile::open(dir.path(), ids()).unwrap().boot(), 1001);
    }
}
