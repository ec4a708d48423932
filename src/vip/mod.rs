//! The VIP effect: holds this node's virtual IPs while — and only while — the agent owns a lease.
//!
//! It runs as its own task. The agent loop sends [`Command`]s (hold until a lease end, drop
//! before a deadline) and gets [`Report`]s back; nothing here knows the protocol. Safety does
//! not rest on the loop being responsive:
//! - every VIP is added with a kernel lifetime just covering the lease and refreshed on each
//!   renewal, so a frozen or killed agent's VIP is removed by the kernel itself;
//! - a timer here removes the VIPs at the lease end if no renewal or release came in time;
//! - nothing is (re-)added or announced unless the lease is still running at that moment.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Longest a single netlink request may take before it counts as failed.
const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// Between the frames of one announcement burst.
const BURST_SPACING: Duration = Duration::from_millis(20);
/// Retry period while a removal keeps failing before its deadline.
const RETRY: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub enum Command {
    /// Hold the VIPs for `term` until `until` (add them, or refresh their lifetime).
    Hold { term: Term, until: Instant },
    /// Remove them before `by`, then report [`Report::Dropped`].
    Drop { term: Term, by: Instant },
}

#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    /// Every VIP is gone from this host (after a `Drop`, or by the lease-end timer).
    Dropped { term: Term },
    /// A VIP could not be added: the node must not own what it cannot serve.
    Failed { term: Term, error: String },
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

struct Manager {
    nl: Netlink,
    slots: Vec<Slot>,
    announce: Announce,
    /// The term and lease end while holding.
    holding: Option<(Term, Instant)>,
    /// The lease end in microseconds (0 when not holding), read by announcement threads.
    hold_until: Arc<AtomicU64>,
    /// When the next announcement is due, and whether it is the second burst.
    next_announce: Option<Instant>,
    second_burst_pending: bool,
    status: Arc<Mutex<VipStatus>>,
    reports: mpsc::UnboundedSender<Report>,
    links_ready: Option<bool>,
}

/// Seconds of kernel lifetime that cover `until` from now: at least one.
fn lifetime_secs(until: Instant) -> u32 {
    let us = clock::until(until).as_micros();
    u32::try_from(us.div_ceil(1_000_000)).unwrap_or(u32::MAX).max(1)
}

/// Starts the VIP task for `mine` (the VIPs this node holds when owning). Before returning, it
/// removes every VIP of `all` (the whole configuration) found on this host: a previous run may
/// have left one behind. Returns the command sender, the report receiver and shared status.
pub async fn start(
    mine: Vec<Vip>,
    all: &[Vip],
    announce: Announce,
) -> Result<
    (
        mpsc::UnboundedSender<Command>,
        mpsc::UnboundedReceiver<Report>,
        Arc<Mutex<VipStatus>>,
    ),
    String,
> {
    let changes = netlink::watch().map_err(|e| format!("cannot watch network interfaces: {e}"))?;
    let nl =
        Netlink::connect().map_err(|e| format!("cannot open a netlink socket: {e} (needs CAP_NET_ADMIN)"))?;
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
        hold_until: Arc::new(AtomicU64::new(0)),
        next_announce: None,
        second_burst_pending: false,
        status: status.clone(),
        reports: rep_tx,
        links_ready: None,
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
        loop {
            let lease_timer = self.holding.map(|(_, until)| until);
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Hold { term, until }) => self.hold(term, until).await,
                    Some(Command::Drop { term, by }) => self.drop_all(term, by).await,
                    // The agent is gone: never leave a VIP without an agent behind it.
                    None => {
                        if let Some((term, _)) = self.holding {
                            self.drop_all(term, clock::now() + OP_TIMEOUT).await;
                        }
                        return;
                    }
                },
                Some(change) = changes.recv() => self.on_change(change).await,
                () = sleep_until(lease_timer), if lease_timer.is_some() => {
                    if let Some((term, until)) = self.holding
                        && clock::now() >= until
                    {
                        tracing::error!(term, "the lease ended without renewal or release: removing the VIPs now");
                        self.drop_all(term, clock::now() + OP_TIMEOUT).await;
                    }
                }
                () = sleep_until(self.next_announce), if self.next_announce.is_some() => self.announce_now(),
            }
        }
    }

    fn set_holding(&mut self, holding: Option<(Term, Instant)>) {
        self.holding = holding;
        let until = holding.map_or(0, |(_, u)| u.as_micros());
        self.hold_until.store(until, Ordering::SeqCst);
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
        if clock::now() >= until {
            return;
        }
        let acquiring = self.holding.is_none();
        self.set_holding(Some((term, until)));
        let budget = clock::until(until).min(OP_TIMEOUT);
        let mut failed = None;
        for i in 0..self.slots.len() {
            let result = timeout(budget, self.add(i, until)).await;
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failed = Some(e.to_string()),
                Err(_) => failed = Some(format!("netlink did not answer within {budget:?}")),
            }
            if let Some(error) = &failed {
                let vip = self.slots[i].vip.to_string();
                if acquiring {
                    let error = format!("cannot add VIP {vip}: {error}");
                    self.error(error.clone());
                    self.drop_all(term, until).await;
                    let _ = self.reports.send(Report::Failed { term, error });
                    return;
                }
                // The VIP stays until its current lifetime ends; the next renewal tries again.
                self.error(format!("cannot refresh VIP {vip}: {error}"));
                failed = None;
            }
        }
        if acquiring {
            tracing::info!(term, vips = ?self.status.lock().expect("status lock").held, "VIPs added");
            self.second_burst_pending = self.announce.delay.is_some();
            self.next_announce = Some(clock::now());
        }
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

    async fn drop_all(&mut self, term: Term, by: Instant) {
        let was_holding = self.holding.is_some();
        self.set_holding(None);
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
                let _ = self.reports.send(Report::Dropped { term });
                return;
            }
            if clock::now() + RETRY >= by {
                // The kernel lifetime removes them shortly; the release is not confirmed.
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
                let Some((_, until)) = self.holding else { return };
                if clock::now() >= until {
                    return;
                }
                tracing::warn!(vip = %self.slots[i].vip, "VIP removed by someone else while owner: adding it back");
                match timeout(clock::until(until).min(OP_TIMEOUT), self.add(i, until)).await {
                    Ok(Ok(())) => {
                        self.status.lock().expect("status lock").readded += 1;
                        self.next_announce = Some(clock::now());
                    }
                    Ok(Err(e)) => self.error(format!("cannot add back VIP {}: {e}", self.slots[i].vip)),
                    Err(_) => self.error(format!(
                        "netlink did not answer adding back {}",
                        self.slots[i].vip
                    )),
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
        let down: Vec<&str> = self
            .slots
            .iter()
            .filter(|s| !s.up)
            .map(|s| s.vip.interface.as_str())
            .collect();
        let ready = down.is_empty();
        if self.links_ready == Some(ready) {
            return;
        }
        self.links_ready = Some(ready);
        let reason = (!ready).then(|| {
            let mut down = down;
            down.dedup();
            format!("VIP interface {} is down or missing", down.join(", "))
        });
        let _ = self.reports.send(Report::Links { ready, reason });
    }

    /// Sends one burst now (on blocking threads) and schedules the next one.
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
            let hold_until = self.hold_until.clone();
            let status = self.status.clone();
            let repeat = self.announce.repeat;
            tokio::task::spawn_blocking(move || {
                let still_owner = || clock::now().as_micros() < hold_until.load(Ordering::SeqCst);
                let sent = || status.lock().expect("status lock").announced += 1;
                let result =
                    announce::send_burst(&interface, &vips, repeat, BURST_SPACING, &still_owner, &sent);
                if let Err(e) = result {
                    tracing::error!("announcing on {interface}: {e}");
                    let mut s = status.lock().expect("status lock");
                    s.errors += 1;
                    s.last_error = Some(e);
                }
            });
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep(clock::until(at)).await,
        None => std::future::pending().await,
    }
}
