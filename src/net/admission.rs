//! Bounds on what clients of the agent's TCP and Unix listeners (DNS over TCP, HTTP, the
//! control socket) may hold: a connection count overall and per source address, and an accept
//! loop that waits instead of spinning when the process is out of descriptors. Whatever clients
//! do, the descriptors the agent needs for its own safety (the state file, netlink, the peer
//! socket) stay available: the caps keep client connections far below the descriptor limit
//! (see [`descriptor_budget`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Connection caps of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Connections open at once, from everyone.
    pub total: usize,
    /// Connections open at once from one source network ([`network`]).
    pub per_source: usize,
}

/// The descriptors every capped listener together may hold, plus the agent's own (sockets,
/// netlink, the state file, the database connections, log and hook pipes) with room to spare.
/// The agent checks its limit against this at start.
pub fn descriptor_budget(listeners: &[Caps]) -> u64 {
    const OWN: u64 = 256;
    OWN + listeners.iter().map(|c| c.total as u64 + 1).sum::<u64>()
}

/// The network a client counts as: its /24 (IPv4) or /56 (IPv6), the share one site usually
/// has; an IPv4-mapped IPv6 address counts as its IPv4 address.
pub fn network(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & 0xffff_ff00).into()),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 72) - 1)).into()),
    }
}

/// Open connections of one listener, by source network ([`network`]).
#[derive(Debug)]
pub struct Admission {
    caps: Caps,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; its slot is freed when this is dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Admission {
    pub fn new(caps: Caps) -> Arc<Admission> {
        Arc::new(Admission {
            caps,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Admits a connection from `source`, or `None` if a cap is reached (the caller closes it).
    pub fn admit(self: &Arc<Admission>, source: IpAddr) -> Option<Ticket> {
        let source = network(source);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = open.values().sum();
        let mine = open.get(&source).copied().unwrap_or(0);
        if total >= self.caps.total || mine >= self.caps.per_source {
            return None;
        }
        open.insert(source, mine + 1);
        Some(Ticket {
            admission: self.clone(),
            source,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).values().sum()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut open = self.admission.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// How long an accept loop waits after `accept` failed: out of descriptors or memory, long
/// enough for connections to finish (a loop that retried at once would spin on a full core);
/// anything else (a connection reset before it was accepted), briefly.
pub fn accept_backoff(error: &std::io::Error) -> Duration {
    use nix::errno::Errno;
    let starved = [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM];
    match error.raw_os_error() {
        Some(code) if starved.iter().any(|e| *e as i32 == code) => Duration::from_millis(100),
        _ => Duration::from_millis(5),
    }
}

/// Says a failed accept at most once per period, with how many failed since.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    since_said: u64,
    said_at: Option<std::time::Instant>,
}

impl AcceptErrors {
    const PERIOD: Duration = Duration::from_secs(10);

    /// Counts `error` on `what`; logs a summary when the last one is a period ago.
    pub fn note(&mut self, what: &str, error: &std::io::Error) {
        self.since_said += 1;
        let now = std::time::Instant::now();
        if self.said_at.is_some_and(|t| now.duration_since(t) < Self::PERIOD) {
            return;
        }
        tracing::warn!(
            "{what}: {} connection(s) could not be accepted in the last {} s, the last: {error}",
            self.since_said,
            Self::PERIOD.as_secs()
        );
        (self.since_said, self.said_at) = (0, Some(now));
    }
}

/// Accepts connections on `listener` for as long as the runtime runs, at most `caps` of them
/// at once, each served by `serve` within `deadline` (from accept to close, whatever the
/// client does). Over the overall cap the loop stops accepting (the kernel's backlog holds
/// or refuses the rest); over a source's cap the connection is closed at once.
pub async fn serve_capped<F, Fut>(
    listener: tokio::net::TcpListener,
    caps: Caps,
    deadline: Duration,
    what: &'static str,
    serve: F,
) where
    F: Fn(tokio::net::TcpStream, std::net::SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(caps.total));
    let admission = Admission::new(caps);
    let mut errors = AcceptErrors::default();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                errors.note(what, &e);
                tokio::time::sleep(accept_backoff(&e)).await;
                continue;
            }
        };
        let Some(ticket) = admission.admit(peer.ip()) else {
            continue;
        };
        let job = serve(stream, peer);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(deadline, job).await;
            drop((slot, ticket));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An address in network `net`.
    fn ip(net: u8) -> IpAddr {
        IpAddr::from([198, 51, net, 7])
    }

    #[test]
    fn caps_hold_overall_and_per_source_and_slots_come_back() {
        let a = Admission::new(Caps {
            total: 3,
            per_source: 2,
        });
        let t1 = a.admit(ip(1)).unwrap();
        let t2 = a.admit(ip(1)).unwrap();
        assert!(a.admit(ip(1)).is_none(), "per source");
        let t3 = a.admit(ip(2)).unwrap();
        assert!(a.admit(ip(3)).is_none(), "overall");
        assert_eq!(a.open(), 3);
        drop(t1);
        let t4 = a.admit(ip(1)).expect("a slot came back");
        drop((t2, t3, t4));
        assert_eq!(a.open(), 0);
        assert!(a.open.lock().unwrap().is_empty(), "no entry left behind");
    }

    #[test]
    fn addresses_of_one_network_share_its_cap() {
        let a = Admission::new(Caps {
            total: 64,
            per_source: 2,
        });
        let v6 = |last: u16| IpAddr::from([0x2001, 0xdb8, 1, 2, 0, 0, 0, last]);
        let _held = (a.admit(v6(1)).unwrap(), a.admit(v6(2)).unwrap());
        assert!(a.admit(v6(3)).is_none(), "the same /56");
        assert!(
            a.admit(IpAddr::from([0x2001, 0xdb8, 1, 0x300, 0, 0, 0, 1]))
                .is_some()
        );
        let _v4 = (
            a.admit(ip(9)).unwrap(),
            a.admit(IpAddr::from([198, 51, 9, 200])).unwrap(),
        );
        assert!(
            a.admit("::ffff:198.51.9.1".parse().unwrap()).is_none(),
            "mapped: the same /24"
        );
    }

    #[test]
    fn out_of_descriptors_waits_longer_than_a_reset() {
        let emfile = std::io::Error::from_raw_os_error(nix::errno::Errno::EMFILE as i32);
        let reset = std::io::Error::from_raw_os_error(nix::errno::Errno::ECONNABORTED as i32);
        assert!(accept_backoff(&emfile) >= Duration::from_millis(100));
        assert!(accept_backoff(&reset) < accept_backoff(&emfile));
        let caps = Caps {
            total: 64,
            per_source: 8,
        };
        assert_eq!(descriptor_budget(&[caps, caps]), 256 + 2 * 65);
    }
}
