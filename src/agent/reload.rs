//! Reload (SIGHUP, `vipgate reload`): re-read the configuration file and take on what may
//! change while running (`crate::config::restart_needed` says what may not). A refused or
//! broken file changes nothing: the agent goes on with the configuration it has. Nothing here
//! touches a held VIP.

use super::{Agent, Command};
use crate::clock;
use crate::config::{Config, restart_needed};
use std::sync::Arc;

impl Agent {
    /// Reloads; the answer says what changed, or why nothing did.
    pub(super) fn reload(&mut self) -> Result<String, String> {
        let file = self.config.file.clone();
        let new =
            Config::load(&file).map_err(|e| format!("not reloaded, the old configuration stays:\n{e}"))?;
        let blocked = restart_needed(&self.config, &new);
        if !blocked.is_empty() {
            return Err(format!(
                "not reloaded, the old configuration stays: these changes need a restart of every agent: {}",
                blocked.join("; ")
            ));
        }
        // The secret file is the same path; its contents must be the same key too.
        let secret = new.read_secret().map_err(|e| format!("not reloaded: {e}"))?;
        if !self.net.keyed_with(secret.bytes()) {
            return Err(
                "not reloaded: the cluster secret changed; every agent must restart with the new key".into(),
            );
        }
        let changed = describe(&self.config, &new);
        self.core.reconfigure(new.core_settings(self.me, 0));
        if new.announce != self.config.announce {
            self.vip(Command::Announce(new.announce));
        }
        if let (Some(tx), Some(m)) = (&self.db_settings, &new.mysql) {
            let _ = tx.send(m.clone());
        }
        if let (Some((mysql, _)), Some(m)) = (&mut self.mysql, &new.mysql) {
            *mysql = m.clone();
        }
        self.gate.configure(new.gate_settings(self.me));
        if let (Some(tx), Some(zone)) = (&self.dns_zone, crate::dns::zone::Zone::new(&new)) {
            let _ = tx.send(Arc::new(zone));
        }
        self.config = new;
        let now = clock::now();
        let health = self.health(now);
        self.step(now, health)
            .map_err(|e| format!("reloaded, then: {e}"))?;
        let summary = if changed.is_empty() {
            "reloaded: nothing changed".to_string()
        } else {
            format!("reloaded: {}", changed.join(", "))
        };
        tracing::info!("{summary}");
        Ok(summary)
    }
}

/// The live settings that differ, by name.
fn describe(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let priorities = |c: &Config| c.nodes.iter().map(|n| n.priority).collect::<Vec<_>>();
    if priorities(old) != priorities(new) {
        out.push("priorities");
    }
    if old.cluster.preempt_delay != new.cluster.preempt_delay {
        out.push("preemption");
    }
    if old.cluster.interval != new.cluster.interval {
        out.push("heartbeat interval");
    }
    if old.cluster.cross_region_failover != new.cluster.cross_region_failover {
        out.push("cross_region_failover");
    }
    if old.announce != new.announce {
        out.push("announcements");
    }
    if old.mysql != new.mysql {
        out.push("[mysql] thresholds");
    }
    if old.dns != new.dns {
        out.push("DNS records");
    }
    if old.hooks != new.hooks {
        out.push("hooks");
    }
    out
}
