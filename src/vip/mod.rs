//! The VIP effect: holds this node's virtual IPs while — and only while — the agent owns a lease.
//!
//! It runs as its own task. The agent loop sends [`Command`]s (hold until a lease end, drop
//! before a deadline) and gets [`Report`]s back; nothing here knows the protocol. What the
//! host *serves* does not rest on the loop, nor on this task, nor on the process being alive:
//! - the **kernel fence** (`fence`, on by default): nftables tables of vipgate's own drop the
//!   VIPs' traffic, their ARP replies and neighbour advertisements unless a set element is
//!   live; each renewal re-adds it with the time left until the shell's deadline (`lease`:
//!   half a release budget before the lease end), and the kernel expires it by itself;
//! - the **backstop** (`backstop`), a thread of its own with its own netlink sockets, removes
//!   the VIPs at that deadline if neither a renewal nor a release came, whatever this task is
//!   waiting for;
//! - every address carries a kernel lifetime just covering the lease: the slower second line;
//! - nothing is (re-)added or announced unless the lease still runs at that moment, a term
//!   once dropped is never held again, and a removal is reported done only once the kernel
//!   confirmed every address gone ([`Report::Dropped`]; otherwise [`Report::DropFailed`]).
//!
//! It also watches the kernel: a VIP removed by someone else while owning is put back and
//! announced again (and counted), and a VIP interface going down is reported, so that the agent
//! gives ownership up. At start it installs the fence (closed) and removes VIPs a previous run
//! left behind.

pub mod announce;
mod backstop;
pub mod fence;
pub mod lease;
pub mod netlink;

use crate::clock;
use crate::config::{Announce, Vip};
use crate::core::{Instant, Term};
use fence::Fence;
use lease::{Lease, Plan};

use netlink::{Change, Netlink, NetlinkError};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

/// Longest a single netlink request may take before it counts as failed.
pub const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// Between the frames of one announcement burst.
const BURST_SPACING: Duration = Duration::from_millis(20);
/// Retry period while a removal keeps failing.
pub const RETRY: Duration = Duration::from_millis(50);
/// Timers never sleep longer than this: tokio's clock stops during suspend, `CLOCK_BOOTTIME`
/// does not, so long sleeps are re-checked against it.
pub const MAX_SLEEP: Duration = Duration::from_millis(50);
/// While an interface is missing or down (or the watch is lost), its state is re-read this often.
const LINK_POLL: Duration = Duration::from_secs(1);
/// The longest a release waits for client connections to be reset before it closes the fence.
const RESET_BUDGET: Duration = Duration::from_millis(50);
/// This many failed lifetime refreshes in a row mean the VIP cannot be kept: give it up.
pub const MAX_REFRESH_FAILURES: u32 = 3;

#[derive(Debug)]
pub enum Command {
    /// Hold the VIPs for `term` until `until` (open the fence, add them or refresh their
    /// lifetime). Ignored for a term already dropped: a late renewal must not bring a released
    /// VIP back.
    Hold { term: Term, until: Instant },
    /// Remove them before `by`, then report [`Report::Dropped`] (or [`Report::DropFailed`])
    /// with the same `seq`. The loop has marked the term dropped already ([`Vips::drop`]).
    /// `reset_clients`: first reset the TCP connections to the VIPs (see [`Vips::drop`]).
    Drop {
        term: Term,
        by: Instant,
        seq: u64,
        reset_clients: bool,
    },
    /// The agent is exiting: remove everything, then answer whether the kernel confirmed it.
    Shutdown {
        done: oneshot::Sender<Result<(), String>>,
    },
    /// A reload: announce with these settings from now on (held VIPs stay as they are).
    Announce(Announce),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// The `Drop` numbered `seq` is done: the kernel confirmed every VIP gone from this host,
    /// and no announcement can follow.
    Dropped { term: Term, seq: u64 },
    /// The `Drop` numbered `seq` could not be confirmed before its deadline (`error` says
    /// why). The release must not be announced: the lease simply runs out, the fence stops
    /// serving at its deadline, and the task keeps trying to remove the VIPs.
    DropFailed { term: Term, seq: u64, error: String },
    /// The VIPs could not be added or kept, and were removed: the node must not own what it
    /// cannot serve.
    Failed { term: Term, error: String },
    /// The shell's deadline came without renewal or release: the backstop took the VIPs down
    /// (the agent loop stalled). The owner must give the term up.
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
    /// The kernel fence is installed (`[fence] kernel`).
    #[serde(default)]
    pub fenced: bool,
    /// Times the backstop removed the VIPs at the deadline (the loop had stalled).
    #[serde(default)]
    pub backstop_fired: u64,
}

struct Slot {
    vip: Vip,
    index: Option<u32>,
    up: bool,
}

/// The agent's handle on its VIPs: the task's commands and the shared lease.
pub struct Vips {
    commands: mpsc::UnboundedSender<Command>,
    lease: Arc<Mutex<Lease>>,
    pub status: Arc<Mutex<VipStatus>>,
}

impl Vips {
    pub fn send(&self, command: Command) {
        // The VIP task only ends with the runtime.
        let _ = self.commands.send(command);
    }

    /// Stops holding `term` at once (no announcement or re-add follows, the backstop is
    /// disarmed), then asks the task to remove the VIPs before `by`. With `reset_clients`, the
    /// task first resets every TCP connection to a VIP, while the fence still lets the resets
    /// out: clients of a database that hangs learn at once that the connection is gone, and
    /// reconnect — to the new owner — instead of waiting for their own timeouts, which many
    /// drivers leave infinite.
    pub fn drop(&self, term: Term, by: Instant, seq: u64, reset_clients: bool) {
        self.lease.lock().expect("lease lock").give_up(term);
        self.send(Command::Drop {
            term,
            by,
            seq,
            reset_clients,
        });
    }

    /// A handle with no task behind it: a test receives the commands and answers with reports
    /// itself.
    #[cfg(test)]
    pub fn detached(release_budget: Duration) -> (Vips, mpsc::UnboundedReceiver<Command>) {
        let (commands, rx) = mpsc::unbounded_channel();
        let vips = Vips {
            commands,
            lease: Arc::new(Mutex::new(Lease::new(release_budget))),
            status: Arc::default(),
        };
        (vips, rx)
    }

    /// Removes every VIP (the agent is exiting), waiting at most `limit` for the kernel.
    pub async fn shutdown(&self, limit: Duration) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.send(Command::Shutdown { done });
        match tokio::time::timeout(limit, wait).await {
            Ok(Ok(result)) => result,
            _ => Err(format!("the VIP task did not answer within {limit:?}")),
        }
    }
}

struct Manager {
    nl: Netlink,
    slots: Vec<Slot>,
    announce: Announce,
    lease: Arc<Mutex<Lease>>,
    /// The kernel fence, if `[fence] kernel` is on; shared with blocking threads.
    fence: Option<Arc<Mutex<Fence>>>,
    refresh_failures: u32,
    /// When the next announcement is due, and whether it is the second burst.
    next_announce: Option<Instant>,
    second_burst_pending: bool,
    /// A removal failed (here or in the backstop): it is retried every [`RETRY`] until the
    /// kernel confirms it.
    unremoved: Arc<AtomicBool>,
    status: Arc<Mutex<VipStatus>>,
    reports: mpsc::UnboundedSender<Report>,
    links_ready: Option<bool>,
    watch_lost: bool,
}

/// How the VIP task is set up.
pub struct Setup {
    /// The VIPs this node holds when owning.
    pub mine: Vec<Vip>,
    /// Every VIP of the configuration: any found on this host at start is removed.
    pub all: Vec<Vip>,
    pub announce: Announce,
    /// The owner's release budget: the shell's deadline is half of it before the lease end.
    pub release_budget: Duration,
    /// Install the kernel fence.
    pub kernel_fence: bool,
}

/// Starts the VIP task and its backstop. Before returning, it installs the kernel fence
/// (closed: nothing of the VIPs passes) and removes every VIP of the configuration found on
/// this host, since a previous run may have left one behind.
pub async fn start(setup: Setup) -> Result<(Vips, mpsc::UnboundedReceiver<Report>), String> {
    let changes = netlink::watch().map_err(|e| format!("cannot watch network interfaces: {e}"))?;
    let nl = Netlink::connect().map_err(|e| format!("cannot open a netlink socket: {e}"))?;
    let fence = install_fence(&setup).await?;
    remove_stale(&nl, &setup.all).await?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (rep_tx, rep_rx) = mpsc::unbounded_channel();
    let status = Arc::new(Mutex::new(VipStatus {
        fenced: fence.is_some(),
        ..VipStatus::default()
    }));
    let lease = Arc::new(Mutex::new(Lease::new(setup.release_budget)));
    let unremoved = Arc::new(AtomicBool::new(false));
    let backstop_fence = fence.as_ref().map(Fence::handle).transpose();
    backstop::start(backstop::Backstop {
        vips: setup.mine.clone(),
        lease: lease.clone(),
        unremoved: unremoved.clone(),
        fence: backstop_fence.map_err(|e| format!("cannot open a second fence socket: {e}"))?,
        reports: rep_tx.clone(),
        status: status.clone(),
    })?;
    let mut m = Manager {
        nl,
        slots: setup
            .mine
            .into_iter()
            .map(|vip| Slot {
                vip,
                index: None,
                up: false,
            })
            .collect(),
        announce: setup.announce,
        lease: lease.clone(),
        fence: fence.map(|f| Arc::new(Mutex::new(f))),
        refresh_failures: 0,
        next_announce: None,
        second_burst_pending: false,
        unremoved,
        status: status.clone(),
        reports: rep_tx,
        links_ready: None,
        watch_lost: false,
    };
    m.refresh_links().await;
    tokio::spawn(m.run(cmd_rx, changes));
    let vips = Vips {
        commands: cmd_tx,
        lease,
        status,
    };
    Ok((vips, rep_rx))
}

/// The fence, installed afresh (replacing whatever a previous run left), or `None` if off.
async fn install_fence(setup: &Setup) -> Result<Option<Fence>, String> {
    if !setup.kernel_fence || setup.mine.is_empty() {
        return Ok(None);
    }
    let addresses: Vec<IpAddr> = setup.mine.iter().map(|v| v.address).collect();
    let installed = tokio::task::spawn_blocking(move || Fence::install(&addresses))
        .await
        .map_err(|e| format!("installing the VIP fence: {e}"))?;
    installed.map(Some).map_err(|e| {
        format!(
            "cannot install the VIP fence: {e}\n  fix: run on Linux 6.12 or later with nf_tables (or set \
             [fence] kernel = false, and a dead agent's VIP may then be served up to about two seconds \
             past its lease; docs/agent.md)"
        )
    })
}

async fn remove_stale(nl: &Netlink, all: &[Vip]) -> Result<(), String> {
    for vip in all {
        match timeout(OP_TIMEOUT, remove_vip(nl, vip)).await {
            Ok(Ok(true)) => tracing::warn!(vip = %vip, "removed a VIP left behind by an earlier run"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => return Err(format!("cannot remove stale VIP {vip}: {e}")),
            Err(_) => {
                return Err(format!(
                    "netlink did not answer within {OP_TIMEOUT:?} removing {vip}"
                ));
            }
        }
    }
    Ok(())
}

/// Removes `vip`'s address wherever it is on this host (whatever its interface is called now).
async fn remove_vip(nl: &Netlink, vip: &Vip) -> Result<bool, NetlinkError> {
    nl.remove(vip.address).await
}

/// Runs fence requests on a blocking thread, holding the fence, waiting at most `wait` for
/// them. A call that outlives the wait goes on by itself; whatever it decided, it decided with
/// the fence held and the lease read right before it sent.
async fn fence_call(
    fence: &Arc<Mutex<Fence>>,
    wait: Duration,
    call: impl FnOnce(&mut Fence) -> Result<(), String> + Send + 'static,
) -> Result<(), String> {
    let fence = fence.clone();
    let job = tokio::task::spawn_blocking(move || call(&mut fence.lock().expect("fence lock")));
    match timeout(wait, job).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(format!("fence request: {e}")),
        Err(_) => Err(format!(
            "the kernel did not answer the fence request within {wait:?}"
        )),
    }
}

mod task;
