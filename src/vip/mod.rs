//! The VIP effect: holds this node's virtual IPs while — and only while — the agent owns a lease.
//!
//! It runs as its own task. The agent loop sends [`Command`]s (hold until a lease end, drop
//! before a deadline) and gets [`Report`]s back; nothing here knows the protocol. Safety does
//! not rest on the loop being responsive:
//! - every VIP is added with a kernel lifetime just covering the lease and refreshed on each
//!   renewal, so a frozen or killed agent's VIP is removed by the kernel itself;
//! - a timer here removes the VIPs at the lease end if no renewal or release came in time (this
//!   task runs on its own worker thread, so a stalled agent loop does not stall it);
//! - nothing is (re-)added or announced unless the lease is still running at that moment, and
//!   once a removal starts no announcement for the old lease can follow;
//! - a term once dropped is never held again.
//!
//! It also watches the kernel: a VIP removed by someone else while owning is put back and
//! announced again (and counted), and a VIP interface going down is reported, so that the agent
//! gives ownership up. At start it removes VIPs a previous run left behind.

pub mod announce;
pub mod netlink;

use crate::agent::clock;
use crate::config::{Announce, Vip};
use crate::core::{Instant, Term};
use netlink::{Change, Netlink, NetlinkError};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

/// Longest a single netlink request may take before it counts as failed.
const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// Between the frames of one announcement burst.
const BURST_SPACING: Duration = Duration::from_millis(20);
/// Retry period while a removal keeps failing before its deadline.
const RETRY: Duration = Duration::from_millis(50);
/// Timers never sleep longer than this: tokio's clock stops during suspend, `CLOCK_BOOTTIME`
/// does not, so long sleeps are re-checked against it.
pub const MAX_SLEEP: Duration = Duration::from_millis(50);
/// While an interface is missing or down (or the watch is lost), its state is re-read this often.
const LINK_POLL: Duration = Duration::from_secs(1);
/// This many failed lifetime refreshes in a row mean the VIP cannot be kept: give it up.
const MAX_REFRESH_FAILURES: u32 = 3;

#[derive(Debug)]
pub enum Command {
    /// Hold the VIPs for `term` until `until` (add them, or refresh their lifetime). Ignored for
    /// a term already dropped: a late renewal must not bring a released VIP back.
    Hold { term: Term, until: Instant },
    /// Remove them before `by`, then report [`Report::Dropped`] with the same `seq`.
    Drop { term: Term, by: Instant, seq: u64 },
    /// The agent is exiting: remove everything, then answer.
    Shutdown { done: oneshot::Sender<()> },
    /// A reload: announce with these settings from now on (held VIPs stay as they are).
    Announce(Announce),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    /// The `Drop` numbered `seq` is done: no VIP is on this host and no announcement can follow.
    Dropped { term: Term, seq: u64 },
    /// The VIPs could not be added or kept, and were removed: the node must not own what it
    /// cannot serve.
    Failed { term: Term, error: String },
    /// The lease ended without renewal or release; the VIPs were removed.
    Expired { term: Term },
    /// Whether every VIP interface exists and is up; `reason` says what is missing.
    Links { ready: bool, reason: Option<String> },
}

/// What `vipgate status` shows about the VIPs.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VipStatus {
    pub held: Vec<String>,
    /// VIPs put back after someone else removed them while this node owned.
    pub readded: u64,
    /// Announcement frames sent (ARP requests and replies, neighbour advertisements).
    pub announced: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

struct Slot {
    vip: Vip,
    index: Option<u32>,
    up: bool,
}

/// The lease end while holding. Announcement threads hold this lock while they check it and
/// send a round, and the VIP task takes it to stop holding: once a removal starts, no frame
/// for the old lease can follow.
type Gate = Arc<Mutex<Option<Instant>>>;

struct Manager {
    nl: Netlink,
    slots: Vec<Slot>,
    announce: Announce,
    /// The term and lease end while holding.
    holding: Option<(Term, Instant)>,
    /// The highest term whose VIPs were removed (by any means).
    dropped: Option<Term>,
    gate: Gate,
    refresh_failures: u32,
    /// When the next announcement is due, and whether it is the second burst.
    next_announce: Option<Instant>,
    second_burst_pending: bool,
    status: Arc<Mutex<VipStatus>>,
    reports: mpsc::UnboundedSender<Report>,
    links_ready: Option<bool>,
    watch_lost: bool,
}

/// Seconds of kernel lifetime that cover `until` from now: at least one.
fn lifetime_secs(until: Instant) -> u32 {
    let us = clock::until(until).as_micros();
    u32::try_from(us.div_ceil(1_000_000)).unwrap_or(u32::MAX).max(1)
}

pub type Started = (
    mpsc::UnboundedSender<Command>,
    mpsc::UnboundedReceiver<Report>,
    Arc<Mutex<VipStatus>>,
);

/// Starts the VIP task for `mine` (the VIPs this node holds when owning). Before returning, it
/// removes every VIP of `all` (the whole configuration) found on this host: a previous run may
/// have left one behind. Returns the command sender, the report receiver and shared status.
pub async fn start(mine: Vec<Vip>, all: &[Vip], announce: Announce) -> Result<Started, String> {
    let changes = netlink::watch().map_err(|e| format!("cannot watch network interfaces: {e}"))?;
    let nl = Netlink::connect().map_err(|e| format!("cannot open a netlink socket: {e}"))?;
    for vip in all {
        match timeout(OP_TIMEOUT, remove_vip(&nl, vip)).await {
            Ok(Ok(true)) => tracing::warn!(vip = %vip, "removed a VIP left behind by an earlier run"),
            Ok(Ok(false)) | Ok(Err(NetlinkError::NoInterface(_))) => {}
            Ok(Err(e)) => return Err(format!("cannot remove stale VIP {vip}: {e}")),
            Err(_) => {
                return Err(format!(
                    "netlink did not answer within {OP_TIMEOUT:?} removing {vip}"
                ));
            }
        }
    }
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (rep_tx, rep_rx) = mpsc::unbounded_channel();
    let status = Arc::new(Mutex::new(VipStatus::default()));
    let mut m = Manager {
        nl,
        slots: mine
            .into_iter()
            .map(|vip| Slot {
                vip,
                index: None,
                up: false,
            })
            .collect(),
        announce,
        holding: None,
        dropped: None,
        gate: Arc::new(Mutex::new(None)),
        refresh_failures: 0,
        next_announce: None,
        second_burst_pending: false,
        status: status.clone(),
        reports: rep_tx,
        links_ready: None,
        watch_lost: false,
    };
    m.refresh_links().await;
    tokio::spawn(m.run(cmd_rx, changes));
    Ok((cmd_tx, rep_rx, status))
}

async fn remove_vip(nl: &Netlink, vip: &Vip) -> Result<bool, NetlinkError> {
    let (index, _) = nl.link(&vip.interface).await?;
    nl.remove(index, vip.address).await
}

impl Manager {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut changes: mpsc::UnboundedReceiver<Change>,
    ) {
        let mut link_poll = tokio::time::interval(LINK_POLL);
        loop {
            let lease_timer = self.holding.map(|(_, until)| until);
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Hold { term, until }) => self.hold(term, until).await,
                    Some(Command::Announce(announce)) => self.announce = announce,
                    Some(Command::Drop { term, by, seq }) => {
                        self.drop_all(term, by).await;
                        let _ = self.reports.send(Report::Dropped { term, seq });
                    }
                    Some(Command::Shutdown { done }) => {
                        if let Some((term, _)) = self.holding {
                            self.drop_all(term, clock::now() + OP_TIMEOUT).await;
                        }
                        let _ = done.send(());
                        return;
                    }
                    // The agent is gone: never leave a VIP without an agent behind it.
                    None => {
                        if let Some((term, _)) = self.holding {
                            self.drop_all(term, clock::now() + OP_TIMEOUT).await;
                        }
                        return;
                    }
                },
                change = changes.recv(), if !self.watch_lost => match change {
                    Some(change) => self.on_change(change).await,
                    None => {
                        self.watch_lost = true;
                        self.error("the netlink watch ended; polling interfaces instead".into());
                    }
                },
                () = sleep_until(lease_timer), if lease_timer.is_some() => {
                    if let Some((term, until)) = self.holding
                        && clock::now() >= until
                    {
                        tracing::error!(term, "the lease ended without renewal or release: removing the VIPs now");
                        self.drop_all(term, clock::now() + OP_TIMEOUT).await;
                        let _ = self.reports.send(Report::Expired { term });
                    }
                }
                () = sleep_until(self.next_announce), if self.next_announce.is_some() => {
                    if self.next_announce.is_some_and(|at| clock::now() >= at) {
                        self.announce_now();
                    }
                }
                _ = link_poll.tick(), if self.watch_lost || self.links_ready != Some(true) => {
                    self.refresh_links().await;
                }
            }
        }
    }

    fn set_holding(&mut self, holding: Option<(Term, Instant)>) {
        self.holding = holding;
        *self.gate.lock().expect("gate lock") = holding.map(|(_, until)| until);
        let held = match holding {
            Some(_) => self.slots.iter().map(|s| s.vip.to_string()).collect(),
            None => Vec::new(),
        };
        self.status.lock().expect("status lock").held = held;
    }

    fn error(&self, message: String) {
        tracing::error!("{message}");
        let mut s = self.status.lock().expect("status lock");
        s.errors += 1;
        s.last_error = Some(message);
    }

    async fn hold(&mut self, term: Term, until: Instant) {
        if clock::now() >= until || self.dropped.is_some_and(|d| term <= d) {
            return;
        }
        let acquiring = self.holding.is_none();
        self.set_holding(Some((term, until)));
        for i in 0..self.slots.len() {
            // Re-checked per VIP: a slow request must not let the next one outlive the lease.
            if clock::now() >= until {
                break;
            }
            let budget = clock::until(until).min(OP_TIMEOUT);
            let error = match timeout(budget, self.add(i, until)).await {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("netlink did not answer within {budget:?}"),
            };
            let vip = self.slots[i].vip.to_string();
            if acquiring {
                return self.fail(term, format!("cannot add VIP {vip}: {error}")).await;
            }
            self.refresh_failures += 1;
            self.error(format!("cannot refresh VIP {vip}: {error}"));
            if self.refresh_failures >= MAX_REFRESH_FAILURES {
                let error = format!(
                    "VIP {vip} could not be refreshed {MAX_REFRESH_FAILURES} times in a row: {error}"
                );
                return self.fail(term, error).await;
            }
            return;
        }
        self.refresh_failures = 0;
        if acquiring {
            tracing::info!(term, vips = ?self.status.lock().expect("status lock").held, "VIPs added");
            self.second_burst_pending = self.announce.delay.is_some();
            self.next_announce = Some(clock::now());
        }
    }

    /// Gives the VIPs of `term` up after a failure and tells the agent why.
    async fn fail(&mut self, term: Term, error: String) {
        self.error(error.clone());
        let by = self
            .holding
            .map_or(clock::now(), |(_, until)| until)
            .max(clock::now() + RETRY);
        self.drop_all(term, by).await;
        let _ = self.reports.send(Report::Failed { term, error });
    }

    async fn add(&mut self, i: usize, until: Instant) -> Result<(), NetlinkError> {
        let slot = &mut self.slots[i];
        let index = match slot.index {
            Some(index) => index,
            None => {
                let (index, up) = self.nl.link(&slot.vip.interface).await?;
                slot.index = Some(index);
                slot.up = up;
                index
            }
        };
        self.nl.add(index, &slot.vip, lifetime_secs(until)).await
    }

    /// Stops holding (no announcement can follow) and removes every VIP, retrying until `by`.
    async fn drop_all(&mut self, term: Term, by: Instant) {
        let was_holding = self.holding.is_some();
        self.set_holding(None);
        self.dropped = Some(self.dropped.map_or(term, |d| d.max(term)));
        self.next_announce = None;
        loop {
            let mut left = Vec::new();
            for slot in &self.slots {
                let budget = clock::until(by).clamp(RETRY, OP_TIMEOUT);
                match timeout(budget, remove_vip(&self.nl, &slot.vip)).await {
                    Ok(Ok(_)) | Ok(Err(NetlinkError::NoInterface(_))) => {}
                    Ok(Err(e)) => left.push(format!("{}: {e}", slot.vip)),
                    Err(_) => left.push(format!("{}: netlink did not answer", slot.vip)),
                }
            }
            if left.is_empty() {
                if was_holding {
                    tracing::info!(term, "VIPs removed");
                }
                return;
            }
            if clock::now() + RETRY >= by {
                // The kernel lifetime removes them shortly.
                self.error(format!(
                    "could not remove VIPs before the lease deadline ({}); their kernel lifetime ends them",
                    left.join("; ")
                ));
                return;
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    async fn on_change(&mut self, change: Change) {
        match change {
            Change::AddressRemoved { index, address } => {
                let Some(i) = self
                    .slots
                    .iter()
                    .position(|s| s.index == Some(index) && s.vip.address == address)
                else {
                    return;
                };
                let Some((term, until)) = self.holding else { return };
                if clock::now() >= until {
                    return;
                }
                let vip = self.slots[i].vip.to_string();
                tracing::warn!(vip = %vip, "VIP removed by someone else while owner: adding it back");
                match timeout(clock::until(until).min(OP_TIMEOUT), self.add(i, until)).await {
                    Ok(Ok(())) => {
                        self.status.lock().expect("status lock").readded += 1;
                        self.next_announce = Some(clock::now());
                    }
                    Ok(Err(e)) => self.fail(term, format!("cannot add back VIP {vip}: {e}")).await,
                    Err(_) => {
                        self.fail(term, format!("netlink did not answer adding back {vip}"))
                            .await
                    }
                }
            }
            Change::Link { index, name, up } => {
                let mut relevant = false;
                for slot in self.slots.iter_mut().filter(|s| s.vip.interface == name) {
                    slot.index = Some(index);
                    slot.up = up;
                    relevant = true;
                }
                if relevant {
                    self.report_links();
                }
            }
            Change::Resync => {
                self.refresh_links().await;
                if let Some((term, until)) = self.holding {
                    self.hold(term, until).await;
                }
            }
        }
    }

    async fn refresh_links(&mut self) {
        for slot in &mut self.slots {
            match timeout(OP_TIMEOUT, self.nl.link(&slot.vip.interface)).await {
                Ok(Ok((index, up))) => {
                    slot.index = Some(index);
                    slot.up = up;
                }
                _ => {
                    slot.index = None;
                    slot.up = false;
                }
            }
        }
        self.report_links();
    }

    fn report_links(&mut self) {
        let mut down: Vec<&str> = self
            .slots
            .iter()
            .filter(|s| !s.up)
            .map(|s| s.vip.interface.as_str())
            .collect();
        down.dedup();
        let ready = down.is_empty();
        if self.links_ready == Some(ready) {
            return;
        }
        self.links_ready = Some(ready);
        let reason = (!ready).then(|| format!("VIP interface {} is down or missing", down.join(", ")));
        let _ = self.reports.send(Report::Links { ready, reason });
    }

    /// Starts one burst (on blocking threads) and schedules the next one.
    fn announce_now(&mut self) {
        let now = clock::now();
        self.next_announce = if self.second_burst_pending {
            self.second_burst_pending = false;
            self.announce.delay.map(|d| now + d)
        } else {
            self.announce.refresh.map(|d| now + d)
        };
        if self.holding.is_none() {
            self.next_announce = None;
            return;
        }
        let mut by_interface: Vec<(String, Vec<IpAddr>)> = Vec::new();
        for slot in &self.slots {
            match by_interface.iter_mut().find(|(i, _)| *i == slot.vip.interface) {
                Some((_, list)) => list.push(slot.vip.address),
                None => by_interface.push((slot.vip.interface.clone(), vec![slot.vip.address])),
            }
        }
        for (interface, vips) in by_interface {
            let gate = self.gate.clone();
            let status = self.status.clone();
            let repeat = self.announce.repeat;
            tokio::task::spawn_blocking(move || {
                if let Err(e) = burst(&interface, &vips, repeat, &gate, &status) {
                    tracing::error!("announcing on {interface}: {e}");
                    let mut s = status.lock().expect("status lock");
                    s.errors += 1;
                    s.last_error = Some(e);
                }
            });
        }
    }
}

/// Sends `repeat` rounds, each only while the lease in `gate` runs, holding the gate lock
/// across the check and the send.
fn burst(
    interface: &str,
    vips: &[IpAddr],
    repeat: u32,
    gate: &Mutex<Option<Instant>>,
    status: &Mutex<VipStatus>,
) -> Result<(), String> {
    let mut announcer = announce::Announcer::open(interface, vips)?;
    for i in 0..repeat {
        if i > 0 {
            std::thread::sleep(BURST_SPACING);
        }
        let lease = gate.lock().expect("gate lock");
        if !lease.is_some_and(|until| clock::now() < until) {
            break;
        }
        let sent = announcer.send_round()?;
        drop(lease);
        status.lock().expect("status lock").announced += sent;
    }
    Ok(())
}

/// Sleeps until `at` (forever if `None`), at most [`MAX_SLEEP`] at a time: the caller re-checks.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep(clock::until(at).min(MAX_SLEEP)).await,
        None => std::future::pending().await,
    }
}
