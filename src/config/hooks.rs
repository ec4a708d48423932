//! `[hooks]`: scripts run on transitions, in the order the transitions happen.

use super::{Problems, Seg};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHooks {
    #[serde(default)]
    owner: Vec<PathBuf>,
    #[serde(default)]
    release: Vec<PathBuf>,
    #[serde(default)]
    fence: Vec<PathBuf>,
    #[serde(default)]
    diverged: Vec<PathBuf>,
    #[serde(default)]
    db_unhealthy: Vec<PathBuf>,
    #[serde(default)]
    db_healthy: Vec<PathBuf>,
    pre_promote: Option<PathBuf>,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
}

fn default_timeout() -> u64 {
    10_000
}

/// No `[hooks]` table: no scripts, and the default timeout (a derived `Default` would be 0).
impl Default for RawHooks {
    fn default() -> RawHooks {
        RawHooks {
            owner: Vec::new(),
            release: Vec::new(),
            fence: Vec::new(),
            diverged: Vec::new(),
            db_unhealthy: Vec::new(),
            db_healthy: Vec::new(),
            pre_promote: None,
            timeout_ms: default_timeout(),
        }
    }
}

/// The scripts for each event, absolute; a script gets the event, the node and the term as
/// arguments and `VIPGATE_*` variables describing the event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    pub owner: Vec<PathBuf>,
    pub release: Vec<PathBuf>,
    pub fence: Vec<PathBuf>,
    pub diverged: Vec<PathBuf>,
    pub db_unhealthy: Vec<PathBuf>,
    pub db_healthy: Vec<PathBuf>,
    /// Promote mode: run before a promotion; a non-zero exit (or the timeout) vetoes it.
    pub pre_promote: Option<PathBuf>,
    /// Bound on each script: it is killed after this.
    pub timeout: Duration,
}

impl Hooks {
    /// The scripts of `event`.
    pub fn of(&self, event: &str) -> &[PathBuf] {
        match event {
            "owner" => &self.owner,
            "release" => &self.release,
            "fence" => &self.fence,
            "diverged" => &self.diverged,
            "db_unhealthy" => &self.db_unhealthy,
            "db_healthy" => &self.db_healthy,
            _ => &[],
        }
    }
}

pub(super) fn validate(raw: &RawHooks, base: &Path, p: &mut Problems<'_>) -> Hooks {
    let mut resolve = |key: &'static str, list: &[PathBuf]| -> Vec<PathBuf> {
        list.iter()
            .enumerate()
            .filter_map(|(i, path)| {
                let full = base.join(path);
                if path.as_os_str().is_empty() {
                    p.add(
                        &[Seg::Key("hooks"), Seg::Key(key), Seg::Index(i)],
                        "is empty".into(),
                        "give the path of an executable script",
                    );
                    return None;
                }
                Some(full)
            })
            .collect()
    };
    let hooks = Hooks {
        owner: resolve("owner", &raw.owner),
        release: resolve("release", &raw.release),
        fence: resolve("fence", &raw.fence),
        diverged: resolve("diverged", &raw.diverged),
        db_unhealthy: resolve("db_unhealthy", &raw.db_unhealthy),
        db_healthy: resolve("db_healthy", &raw.db_healthy),
        pre_promote: raw.pre_promote.as_ref().map(|path| base.join(path)),
        timeout: Duration::from_millis(raw.timeout_ms),
    };
    if !(100..=600_000).contains(&raw.timeout_ms) {
        p.add(
            &[Seg::Key("hooks"), Seg::Key("timeout_ms")],
            format!("{} ms is outside 100 ms – 10 min", raw.timeout_ms),
            "give scripts a few seconds (10000 is the default)",
        );
    }
    hooks
}
