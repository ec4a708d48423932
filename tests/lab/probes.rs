//! Who *serves* the VIP, from the client side: one probe namespace per database host, whose
//! neighbour entry for the VIP is pinned to that host's MAC, pings the VIP every 5 ms. A reply
//! proves that host answered for the VIP right then — whatever its address list or its agent
//! says. Replies are stamped by the probe's kernel on arrival (`SO_TIMESTAMPNS`), so the
//! comparison between hosts does not depend on when the probe thread got to run.

use super::{Host, enter_netns};
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, recvmsg,
    sendto, setsockopt, socket, sockopt,
};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Between two echo requests of one probe.
const PERIOD: Duration = Duration::from_millis(5);

/// The replies one probe got: kernel arrival times (Unix seconds).
type Replies = Arc<Mutex<Vec<f64>>>;

/// One pinned probe per database host, running until dropped.
pub struct ServeProbes {
    stop: Arc<AtomicBool>,
    probes: Vec<(String, Replies)>,
    threads: Vec<JoinHandle<()>>,
}

impl ServeProbes {
    /// Starts a probe in each `(host, probe namespace)` pair, pinging `vip`.
    pub(super) fn start(pairs: Vec<(Host, Host)>, vip: Ipv4Addr) -> ServeProbes {
        let stop = Arc::new(AtomicBool::new(false));
        let mut probes = Vec::new();
        let mut threads = Vec::new();
        for (i, (target, probe)) in pairs.into_iter().enumerate() {
            let replies: Replies = Arc::default();
            let (flag, sink) = (stop.clone(), replies.clone());
            let ident = 0x7600 + i as u16;
            threads.push(std::thread::spawn(move || {
                enter_netns(&probe.ns);
                ping_loop(vip, ident, &flag, &sink);
            }));
            probes.push((target.name, replies));
        }
        ServeProbes {
            stop,
            probes,
            threads,
        }
    }

    fn replies(&self, host: &str) -> Vec<f64> {
        let (_, r) = self
            .probes
            .iter()
            .find(|(h, _)| h == host)
            .unwrap_or_else(|| panic!("no probe for {host}"));
        r.lock().unwrap().clone()
    }

    /// Replies from `host` at or after `since` (Unix seconds).
    pub fn served(&self, host: &str, since: f64) -> Vec<f64> {
        self.replies(host).into_iter().filter(|t| *t >= since).collect()
    }

    /// The first reply from `host` at or after `since`.
    pub fn first_after(&self, host: &str, since: f64) -> Option<f64> {
        self.served(host, since).first().copied()
    }

    /// The last reply from `host`.
    pub fn last(&self, host: &str) -> Option<f64> {
        self.replies(host).last().copied()
    }

    /// Pairs of replies from two different hosts less than `window` apart: two hosts serving
    /// the VIP at (about) the same time. Empty when that never happened.
    pub fn both_served_within(&self, window: Duration) -> Vec<(String, f64, String, f64)> {
        let w = window.as_secs_f64();
        let mut found = Vec::new();
        for (a, ra) in &self.probes {
            for (b, rb) in &self.probes {
                if a >= b {
                    continue;
                }
                let rb = rb.lock().unwrap().clone();
                for &t in ra.lock().unwrap().iter() {
                    let i = rb.partition_point(|&u| u < t - w);
                    if let Some(&u) = rb.get(i).filter(|&&u| u < t + w) {
                        found.push((a.clone(), t, b.clone(), u));
                    }
                }
            }
        }
        found
    }
}

impl Drop for ServeProbes {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn icmp_socket() -> OwnedFd {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK,
        SockProtocol::Icmp,
    )
    .expect("a raw ICMP socket (the lab runs as root)");
    setsockopt(&fd, sockopt::ReceiveTimestampns, &true).expect("SO_TIMESTAMPNS");
    fd
}

/// An ICMP echo request: type 8, code 0, checksum, identifier, sequence.
fn echo_request(ident: u16, seq: u16) -> [u8; 8] {
    let mut p = [8, 0, 0, 0, 0, 0, 0, 0];
    p[4..6].copy_from_slice(&ident.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    let sum = p
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    p[2..4].copy_from_slice(&(!(folded as u16)).to_be_bytes());
    p
}

fn ping_loop(vip: Ipv4Addr, ident: u16, stop: &AtomicBool, replies: &Mutex<Vec<f64>>) {
    let fd = icmp_socket();
    let to = SockaddrIn::from(std::net::SocketAddrV4::new(vip, 0));
    let mut seq: u16 = 0;
    while !stop.load(Ordering::Relaxed) {
        seq = seq.wrapping_add(1);
        // A send may fail while nobody answers ARP for the VIP; the next one tries again.
        let _ = sendto(fd.as_raw_fd(), &echo_request(ident, seq), &to, MsgFlags::empty());
        let until = std::time::Instant::now() + PERIOD;
        while std::time::Instant::now() < until {
            drain(&fd, ident, replies);
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

/// Reads every queued datagram; keeps the arrival time of our echo replies.
fn drain(fd: &OwnedFd, ident: u16, replies: &Mutex<Vec<f64>>) {
    let mut buf = [0u8; 256];
    loop {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
        let Ok(msg) = recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()) else {
            return;
        };
        let stamp = msg.cmsgs().ok().and_then(|mut c| {
            c.find_map(|m| match m {
                ControlMessageOwned::ScmTimestampns(ts) => {
                    Some(ts.tv_sec() as f64 + ts.tv_nsec() as f64 / 1e9)
                }
                _ => None,
            })
        });
        let len = msg.bytes;
        // An IPv4 header (IHL words), then ICMP: type 0 is an echo reply.
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        let ours = len >= ihl + 8 && buf[ihl] == 0 && buf[ihl + 4..ihl + 6] == ident.to_be_bytes();
        if let (true, Some(t)) = (ours, stamp) {
            replies.lock().unwrap().push(t);
        }
    }
}
