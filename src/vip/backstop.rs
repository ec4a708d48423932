//! The backstop: a thread of its own that removes the VIPs at the shell's deadline (half a
//! release budget before the lease end) when neither a renewal nor a release came in time —
//! the agent loop stalled on a slow fsync, say, or the VIP task is waiting on a hung request.
//!
//! It shares nothing with the VIP task but the [`Lease`] (one short lock) and the report
//! channel: it has its own thread, its own tokio runtime for its own rtnetlink socket, and its
//! own fence socket, so no other effect can hold it up.

use super::{Fence, Lease, MAX_SLEEP, OP_TIMEOUT, Report, VipStatus, remove_vip};
use crate::clock;
use crate::config::Vip;
use std::sync::{Arc, Mutex};

pub(super) struct Backstop {
    pub vips: Vec<Vip>,
    pub lease: Arc<Mutex<Lease>>,
    /// Set when a removal failed: the VIP task retries it until the kernel confirms it.
    pub unremoved: Arc<std::sync::atomic::AtomicBool>,
    pub fence: Option<Fence>,
    pub reports: tokio::sync::mpsc::UnboundedSender<Report>,
    pub status: Arc<Mutex<VipStatus>>,
}

/// Starts the backstop thread; it ends when the agent stops listening to reports.
pub(super) fn start(backstop: Backstop) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the backstop's runtime: {e}"))?;
    std::thread::Builder::new()
        .name("vipgate-backstop".into())
        .spawn(move || runtime.block_on(backstop.run()))
        .map_err(|e| format!("cannot start the backstop thread: {e}"))?;
    Ok(())
}

impl Backstop {
    async fn run(mut self) {
        let nl = match super::Netlink::connect() {
            Ok(nl) => nl,
            Err(e) => {
                tracing::error!("the backstop cannot open a netlink socket: {e}");
                return;
            }
        };
        while !self.reports.is_closed() {
            let at = self.lease.lock().expect("lease lock").backstop_at();
            // Short sleeps, re-checked against CLOCK_BOOTTIME (tokio's clock stops in suspend).
            let nap = at.map_or(MAX_SLEEP, |at| clock::until(at).min(MAX_SLEEP));
            tokio::time::sleep(nap).await;
            let expired = self.lease.lock().expect("lease lock").expire(clock::now());
            if let Some(term) = expired {
                self.fire(&nl, term).await;
            }
        }
    }

    /// The deadline came: close the fence, remove every VIP, tell the agent.
    async fn fire(&mut self, nl: &super::Netlink, term: crate::core::Term) {
        tracing::error!(
            term,
            "the lease deadline came without renewal or release (the agent loop is stalled?): \
             removing the VIPs now"
        );
        if let Some(fence) = &mut self.fence
            && let Err(e) = fence.close()
        {
            tracing::error!(
                "the backstop could not close the VIP fence: {e} (its elements expire by themselves)"
            );
        }
        for vip in &self.vips {
            let failed = match tokio::time::timeout(OP_TIMEOUT, remove_vip(nl, vip)).await {
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => format!("{e}"),
                Err(_) => "no answer".into(),
            };
            tracing::error!(vip = %vip, "the backstop could not remove the VIP ({failed}); the VIP task retries");
            self.unremoved.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        {
            let mut s = self.status.lock().expect("status lock");
            s.backstop_fired += 1;
            s.held.clear();
        }
        let _ = self.reports.send(Report::Expired { term });
    }
}
