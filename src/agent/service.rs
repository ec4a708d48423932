//! systemd integration (`Type=notify`): READY=1 once the agent has cleaned stale VIPs, started
//! its servers and waited out its quiet lease (it then knows the cluster), and WATCHDOG=1 from
//! the agent loop itself, so that systemd restarts an agent whose loop is stuck. Outside
//! systemd (no NOTIFY_SOCKET) nothing is sent.

use super::Agent;
use crate::core::{Instant, RoleKind};
use sd_notify::NotifyState;
use std::time::Duration;

/// The watchdog is pinged this many times per `WatchdogSec`.
const PINGS_PER_PERIOD: u32 = 4;

pub(super) struct Service {
    ready: bool,
    /// Between watchdog pings, and when the next is due.
    watchdog: Option<(Duration, Instant)>,
}

impl Service {
    pub(super) fn new(now: Instant) -> Service {
        Service {
            ready: false,
            watchdog: sd_notify::watchdog_enabled().map(|period| (period / PINGS_PER_PERIOD, now)),
        }
    }

    /// When the loop must wake next for the service manager.
    pub(super) fn next_due(&self, ready_at: Instant) -> Option<Instant> {
        let ready = (!self.ready).then_some(ready_at);
        let ping = self.watchdog.map(|(_, at)| at);
        match (ready, ping) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

fn send(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!("telling the service manager: {e}");
    }
}

impl Agent {
    /// When the agent counts as ready: its quiet lease over.
    pub(super) fn ready_at(&self) -> Instant {
        self.started + self.config.cluster.lease
    }

    /// Tells systemd what is due: readiness once, a watchdog ping every period.
    pub(super) fn notify_service(&mut self, now: Instant) {
        if !self.service.ready && now >= self.ready_at() {
            self.service.ready = true;
            let status = match (self.core.role(), self.core.owner(now)) {
                (RoleKind::Owner, _) => "owner".to_string(),
                (_, Some(o)) => format!("following owner {}", self.id(o)),
                (_, None) => "no owner known yet".to_string(),
            };
            send(&[NotifyState::Ready, NotifyState::Status(&status)]);
            tracing::info!("ready ({status})");
        }
        if let Some((every, due)) = &mut self.service.watchdog
            && now >= *due
        {
            send(&[NotifyState::Watchdog]);
            *due = now + *every;
        }
    }

    pub(super) fn notify_stopping() {
        send(&[NotifyState::Stopping]);
    }
}
