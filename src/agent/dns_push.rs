//! `[dns.update]`: while this node owns (and, in promote mode, once its database is writable)
//! it pushes its address to an existing DNS server, with retries and backoff, until the server
//! holds it, a newer owner is found there, or ownership ends.

use super::Agent;
use crate::core::Term;
use crate::dns::update::{Current, Error, Updater};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// First pause after a failed attempt; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Agent {
    /// Starts a push for `owning` (the term this node owns and answers for), or stops the one
    /// running when this node no longer does.
    pub(super) fn push_dns(&mut self, owning: Option<Term>) {
        let Some(updater) = &self.dns_push else { return };
        if let Some((running, cancel)) = &self.push_term
            && owning != Some(*running)
        {
            cancel.store(true, Ordering::SeqCst);
            self.push_term = None;
        }
        let Some(term) = owning else { return };
        if self.push_term.is_some() {
            return;
        }
        let cancel = Arc::new(AtomicBool::new(false));
        self.push_term = Some((term, cancel.clone()));
        let addresses = self.config.primary_addresses(self.me);
        let owner = format!("owner={} term={term}", self.id(self.me));
        tokio::spawn(push(
            updater.clone(),
            addresses,
            owner,
            term,
            cancel,
            self.push_status.clone(),
        ));
    }
}

enum Done {
    Written,
    Already,
    Newer(u64),
}

async fn attempt(updater: &Updater, addresses: &[IpAddr], owner: &str, term: Term) -> Result<Done, Error> {
    let current: Current = updater.read().await?;
    if current.addresses == addresses && current.owner().as_deref() == Some(owner) {
        return Ok(Done::Already);
    }
    if let Some(newer) = current.term().filter(|t| *t > term) {
        return Ok(Done::Newer(newer));
    }
    updater.replace(&current, addresses, owner).await?;
    Ok(Done::Written)
}

async fn push(
    updater: Arc<Updater>,
    mut addresses: Vec<IpAddr>,
    owner: String,
    term: Term,
    cancel: Arc<AtomicBool>,
    status: Arc<Mutex<Option<String>>>,
) {
    addresses.sort();
    let shown: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
    let shown = shown.join(", ");
    let set = |text: String| *status.lock().expect("push status") = Some(text);
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    let mut stale = 0u32;
    while !cancel.load(Ordering::SeqCst) {
        attempts += 1;
        match attempt(&updater, &addresses, &owner, term).await {
            Ok(done) => {
                let text = match done {
                    Done::Written => {
                        format!("the server holds {shown} for term {term} (written, attempt {attempts})")
                    }
                    Done::Already => format!("the server holds {shown} for term {term}"),
                    Done::Newer(t) => format!("not written: the server names a newer owner (term {t})"),
                };
                if matches!(done, Done::Newer(_)) {
                    tracing::warn!(term, "DNS update: {text}");
                } else {
                    tracing::info!(term, "DNS update: {text}");
                }
                set(text);
                return;
            }
            // Changed between reading and writing: read again at once, a few times; a
            // prerequisite that keeps failing (records the server synthesises, say) backs off.
            Err(e @ Error::Stale(_)) if stale < 3 => {
                stale += 1;
                tracing::info!(term, "DNS update: {e}; reading again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                tracing::warn!(
                    term,
                    "DNS update failed (attempt {attempts}): {e}; retrying in {} ms",
                    backoff.as_millis()
                );
                set(format!("failing (attempt {attempts}): {e}"));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
