//! The VIP task's loop: commands from the agent, kernel notifications, announcement and
//! retry timers. Decisions about the lease go through the shared [`Lease`]; every kernel
//! request is bounded in time.

use super::*;
use std::sync::atomic::Ordering;

impl Manager {
    pub(super) async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut changes: mpsc::UnboundedReceiver<Change>,
    ) {
        let mut link_poll = tokio::time::interval(LINK_POLL);
        let mut retry = tokio::time::interval(RETRY);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Hold { term, until }) => self.hold(term, until).await,
                    Some(Command::Announce(announce)) => self.announce = announce,
                    Some(Command::Drop {
                        term,
                        by,
                        seq,
                        reset_clients,
                    }) => self.drop_all(term, by, seq, reset_clients).await,
                    Some(Command::Shutdown { done }) => {
                        let _ = done.send(self.shutdown().await);
                        return;
                    }
                    // The agent is gone: never leave a VIP without an agent behind it.
                    None => {
                        let _ = self.shutdown().await;
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
                () = sleep_until(self.next_announce), if self.next_announce.is_some() => {
                    if self.next_announce.is_some_and(|at| clock::now() >= at) {
                        self.announce_now();
                    }
                }
                _ = retry.tick(), if self.unremoved.load(Ordering::Relaxed) => self.retry_removal().await,
                _ = link_poll.tick(), if self.watch_lost || self.links_ready != Some(true) => {
                    self.refresh_links().await;
                }
            }
        }
    }

    /// Tries again to remove the VIPs a failed removal left (unless this node holds again).
    async fn retry_removal(&mut self) {
        let held = self.lease().held();
        if held.is_none() && self.remove_all(clock::now() + OP_TIMEOUT).await.is_ok() {
            tracing::info!("the VIPs a failed removal left are gone now");
            self.unremoved.store(false, Ordering::Relaxed);
        }
    }

    fn lease(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.lease.lock().expect("lease lock")
    }

    fn set_held(&self, held: bool) {
        self.status.lock().expect("status lock").held = if held {
            self.slots.iter().map(|s| s.vip.to_string()).collect()
        } else {
            Vec::new()
        };
    }

    pub(super) fn error(&self, message: String) {
        tracing::error!("{message}");
        let mut s = self.status.lock().expect("status lock");
        s.errors += 1;
        s.last_error = Some(message);
    }

    /// Opens the fence and adds (or refreshes) every VIP, if the lease allows it now.
    async fn hold(&mut self, term: Term, until: Instant) {
        let Some(plan) = self.lease().hold(clock::now(), term, until) else {
            return;
        };
        match self.apply(&plan, until).await {
            Ok(()) => self.refresh_failures = 0,
            Err(error) if plan.acquiring => return self.fail(term, error).await,
            Err(error) => {
                self.refresh_failures += 1;
                self.error(format!("cannot refresh the VIPs: {error}"));
                if self.refresh_failures >= MAX_REFRESH_FAILURES {
                    let error = format!(
                        "the VIPs could not be refreshed {MAX_REFRESH_FAILURES} times in a row: {error}"
                    );
                    self.fail(term, error).await;
                }
                return;
            }
        }
        let held = self.lease().held();
        if held != Some(term) {
            // Given up while the requests were on their way: take down what they added.
            self.take_down().await;
            return;
        }
        if plan.acquiring {
            self.set_held(true);
            tracing::info!(term, vips = ?self.status.lock().expect("status lock").held, "VIPs added");
            self.second_burst_pending = self.announce.delay.is_some();
            self.next_announce = Some(clock::now());
        }
    }

    /// The kernel side of a hold: the fence first (nothing passes before it), then addresses.
    async fn apply(&mut self, plan: &Plan, until: Instant) -> Result<(), String> {
        self.open_fence(plan.term).await?;
        for i in 0..self.slots.len() {
            // Re-checked per VIP: a slow request must not let the next one outlive the lease.
            let left = self.lease().deadline(until).saturating_since(clock::now());
            if left.is_zero() {
                return Err("the lease deadline passed while adding".into());
            }
            let budget = left.min(OP_TIMEOUT);
            let vip = self.slots[i].vip.to_string();
            match timeout(budget, self.add(i, plan.lifetime_s)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("cannot add VIP {vip}: {e}")),
                Err(_) => return Err(format!("netlink did not answer within {budget:?} adding {vip}")),
            }
        }
        Ok(())
    }

    /// Lets the VIPs' traffic pass until the deadline of the lease held for `term`. The time
    /// left is read from the shared lease on the blocking thread, with the fence held, right
    /// before the request goes out (see [`open_for_lease`]).
    async fn open_fence(&mut self, term: Term) -> Result<(), String> {
        let Some(fence) = self.fence.clone() else {
            return Ok(());
        };
        let lease = self.lease.clone();
        fence_call(&fence, OP_TIMEOUT, move |f| open_for_lease(f, &lease, term)).await
    }

    async fn close_fence(&mut self) {
        if let Some(fence) = self.fence.clone()
            && let Err(e) = fence_call(&fence, OP_TIMEOUT, |f| f.close().map_err(|e| e.to_string())).await
        {
            self.error(format!(
                "cannot close the VIP fence: {e} (its elements expire by themselves)"
            ));
        }
    }

    /// Gives the VIPs of `term` up after a failure and tells the agent why.
    async fn fail(&mut self, term: Term, error: String) {
        self.error(error.clone());
        self.lease().give_up(term);
        self.take_down().await;
        let _ = self.reports.send(Report::Failed { term, error });
    }

    /// Closes the fence and removes every VIP of a term no longer held; a removal that fails
    /// is retried every [`RETRY`].
    async fn take_down(&mut self) {
        self.next_announce = None;
        self.set_held(false);
        self.close_fence().await;
        if let Err(e) = self.remove_all(clock::now() + OP_TIMEOUT).await {
            self.error(format!("could not remove the VIPs: {e}; retrying"));
            self.unremoved.store(true, Ordering::Relaxed);
        }
    }

    async fn add(&mut self, i: usize, lifetime_s: u32) -> Result<(), NetlinkError> {
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
        self.nl.add(index, &slot.vip, lifetime_s).await
    }

    /// The `Drop` numbered `seq`: closes the fence, removes every VIP (retrying until `by`)
    /// and reports whether the kernel confirmed it. `reset_clients`: see [`super::Vips::drop`].
    async fn drop_all(&mut self, term: Term, by: Instant, seq: u64, reset_clients: bool) {
        let was_held = !self.status.lock().expect("status lock").held.is_empty();
        self.lease().give_up(term);
        self.next_announce = None;
        self.set_held(false);
        if reset_clients && was_held {
            self.reset_clients(by).await;
        }
        self.close_fence().await;
        let removal = self.remove_all(by).await;
        match &removal {
            Ok(()) if was_held => tracing::info!(term, "VIPs removed"),
            Ok(()) => {}
            Err(e) => {
                self.error(format!(
                    "could not remove the VIPs of term {term} before the lease deadline ({e}); the release is \
                     not announced, the fence stops serving them, and removal is retried"
                ));
                self.unremoved.store(true, Ordering::Relaxed);
            }
        }
        let _ = self.reports.send(lease::drop_report(term, seq, removal));
    }

    /// Resets the TCP connections to the VIPs, waiting at most [`RESET_BUDGET`] (and never past
    /// `by`, when the fence must be closed): the fence closes right after, and then no reset
    /// would leave the host.
    async fn reset_clients(&mut self, by: Instant) {
        let vips: Vec<IpAddr> = self.slots.iter().map(|s| s.vip.address.to_canonical()).collect();
        let budget = clock::until(by).saturating_sub(RETRY).min(RESET_BUDGET);
        let reset = tokio::task::spawn_blocking(move || {
            crate::kernel::reset::reset(|tcp| vips.contains(&tcp.local.ip()))
        });
        match timeout(budget, reset).await {
            Ok(Ok(Ok(0))) => {}
            Ok(Ok(Ok(n))) => tracing::info!("reset {n} client connection(s) to the VIPs"),
            Ok(Ok(Err(e))) => tracing::warn!("cannot reset the client connections to the VIPs: {e}"),
            Ok(Err(e)) => tracing::warn!("resetting the client connections to the VIPs: {e}"),
            Err(_) => {
                tracing::warn!("resetting the client connections to the VIPs took over {budget:?}; going on")
            }
        }
    }

    /// Removes every VIP, retrying until `by`; `Ok` once the kernel confirmed each gone.
    pub(super) async fn remove_all(&mut self, by: Instant) -> Result<(), String> {
        loop {
            let mut left = Vec::new();
            for slot in &self.slots {
                let budget = clock::until(by).clamp(RETRY, OP_TIMEOUT);
                match timeout(budget, remove_vip(&self.nl, &slot.vip)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => left.push(format!("{}: {e}", slot.vip)),
                    Err(_) => left.push(format!("{}: netlink did not answer", slot.vip)),
                }
            }
            if left.is_empty() {
                return Ok(());
            }
            if clock::now() + RETRY >= by {
                return Err(left.join("; "));
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// The agent is exiting: the fence closed, every VIP removed, and — once the kernel
    /// confirmed that — the fence's tables too.
    async fn shutdown(&mut self) -> Result<(), String> {
        let held = self.lease().held();
        if let Some(term) = held {
            self.lease().give_up(term);
        }
        self.next_announce = None;
        self.set_held(false);
        self.close_fence().await;
        self.remove_all(clock::now() + OP_TIMEOUT).await?;
        if let Some(fence) = self.fence.clone() {
            fence_call(&fence, OP_TIMEOUT, |f| f.remove().map_err(|e| e.to_string()))
                .await
                .map_err(|e| format!("the VIPs are gone, but the fence's tables stay: {e}"))?;
        }
        Ok(())
    }

    async fn on_change(&mut self, change: Change) {
        match change {
            Change::AddressRemoved { index, address } => self.readd(index, address).await,
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
                let held = self.lease().holding();
                if let Some((term, until)) = held {
                    self.hold(term, until).await;
                }
            }
        }
    }

    /// A VIP removed by someone else while this node serves it is put back and announced.
    async fn readd(&mut self, index: u32, address: IpAddr) {
        let Some(i) = self
            .slots
            .iter()
            .position(|s| s.index == Some(index) && s.vip.address == address)
        else {
            return;
        };
        let now = clock::now();
        let (holding, serving) = {
            let l = self.lease();
            (l.holding(), l.serving(now))
        };
        let Some((term, until)) = holding.filter(|_| serving) else {
            return;
        };
        let vip = self.slots[i].vip.to_string();
        tracing::warn!(vip = %vip, "VIP removed by someone else while owner: adding it back");
        let budget = self.lease().deadline(until).saturating_since(now).min(OP_TIMEOUT);
        match timeout(budget, self.add(i, lease::lifetime_secs(now, until))).await {
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

    pub(super) async fn refresh_links(&mut self) {
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
        let serving = self.lease().serving(now);
        if !serving {
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
            let lease = self.lease.clone();
            let status = self.status.clone();
            let repeat = self.announce.repeat;
            tokio::task::spawn_blocking(move || {
                if let Err(e) = burst(&interface, &vips, repeat, &lease, &status) {
                    tracing::error!("announcing on {interface}: {e}");
                    let mut s = status.lock().expect("status lock");
                    s.errors += 1;
                    s.last_error = Some(e);
                }
            });
        }
    }
}

/// On a blocking thread, holding the fence: opens it until the deadline of the lease held for
/// `term`, the time left read right before the request goes out (the kernel counts it from
/// when it applies the request). A term given up meanwhile, or too little time left, closes it
/// instead. An answer later than half a release budget may reach past the lease end: it is
/// corrected at once with the time left then, in this same call, so no other fence request can
/// come in between; a second late answer closes the fence. A failed opening closes it too.
fn open_for_lease(f: &mut Fence, lease: &Mutex<Lease>, term: Term) -> Result<(), String> {
    let lease = || lease.lock().expect("lease lock");
    for _ in 0..2 {
        let sent = clock::now();
        let Some(d) = lease().fence_for(term, sent) else {
            return f.close().map_err(|e| e.to_string());
        };
        if let Err(e) = open_or_reinstall(f, d) {
            let _ = f.close();
            return Err(e.to_string());
        }
        let answered = clock::now();
        if !lease().answered_late(sent, answered) {
            return Ok(());
        }
        tracing::warn!(
            "the kernel took {:?} to open the VIP fence: shortening it to the time left",
            answered.saturating_since(sent)
        );
    }
    f.close().map_err(|e| e.to_string())?;
    Err("the kernel answered the fence requests too slowly: closed it".into())
}

/// Opens the fence; if its tables were deleted meanwhile (`nft flush ruleset` in a firewall
/// reload removes them), installs them again first.
fn open_or_reinstall(f: &mut Fence, d: Duration) -> Result<(), fence::FenceError> {
    match f.open_for(d) {
        Err(e) if e.tables_missing() => {
            tracing::error!(
                "the VIP fence's tables were gone (a firewall reload with `nft flush ruleset`?): installing \
                 them again; exclude table inet vipgate and arp vipgate from such reloads"
            );
            f.reinstall()?;
            f.open_for(d)
        }
        other => other,
    }
}

/// Sends `repeat` rounds, each only while the lease is served, holding the lease lock across
/// the check and the send: once a drop starts, no frame for the old lease can follow.
fn burst(
    interface: &str,
    vips: &[IpAddr],
    repeat: u32,
    lease: &Mutex<Lease>,
    status: &Mutex<VipStatus>,
) -> Result<(), String> {
    let mut announcer = announce::Announcer::open(interface, vips)?;
    for i in 0..repeat {
        if i > 0 {
            std::thread::sleep(BURST_SPACING);
        }
        let lease = lease.lock().expect("lease lock");
        if !lease.serving(clock::now()) {
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
