//! The agent's socket and what goes with it: encoding with this boot's counter, the receive
//! filter, the counts of datagrams sent, accepted and failed, and each peer's round trip
//! (a lease-claiming heartbeat to the ack that echoes it).

use super::wire::Notice;
use super::{Codec, Datagram, DropCounters, Receiver};
use crate::core::{Instant, Message, NodeIdx};
use std::collections::VecDeque;
use std::net::SocketAddr;
use tokio::net::UdpSocket;

/// Heartbeats remembered for matching acks.
const RTT_WINDOW: usize = 32;

/// Where datagrams go to and come from: the node's UDP socket, or, in tests of the agent,
/// channels through which a test plays the peers.
pub enum Socket {
    Udp(UdpSocket),
    #[cfg(test)]
    Memory(Pipe),
}

/// The test's side of [`Socket::Memory`] is the other end of these channels.
#[cfg(test)]
pub struct Pipe {
    /// What the agent sent, and to which address.
    pub out: tokio::sync::mpsc::UnboundedSender<(SocketAddr, Vec<u8>)>,
    /// What it receives.
    pub inbox: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>>,
}

impl Socket {
    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Socket::Udp(socket) => socket.recv_from(buf).await.map(|(n, _)| n),
            #[cfg(test)]
            Socket::Memory(pipe) => {
                let bytes = pipe.inbox.lock().await.recv().await;
                let bytes = bytes.ok_or_else(|| std::io::Error::other("the test's end is gone"))?;
                let n = bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                Ok(n)
            }
        }
    }

    fn try_send_to(&self, bytes: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        match self {
            Socket::Udp(socket) => socket.try_send_to(bytes, to),
            #[cfg(test)]
            Socket::Memory(pipe) => (pipe.out.send((to, bytes.to_vec())))
                .map(|()| bytes.len())
                .map_err(|_| std::io::Error::other("the test's end is gone")),
        }
    }
}

pub struct Transport {
    socket: Socket,
    peers: Vec<SocketAddr>,
    codec: Codec,
    receiver: Receiver,
    me: NodeIdx,
    boot: u64,
    counter: u64,
    sent: u64,
    received: u64,
    send_errors: u64,
    heartbeat_sent: VecDeque<(u64, Instant)>,
    rtt_us: Vec<Option<u64>>,
}

impl Transport {
    /// `peers`: every member's address, this node's included (by index).
    pub fn new(socket: Socket, peers: Vec<SocketAddr>, codec: Codec, me: NodeIdx, boot: u64) -> Transport {
        let members = peers.len();
        Transport {
            socket,
            receiver: Receiver::new(codec.clone(), members),
            peers,
            codec,
            me,
            boot,
            counter: 0,
            sent: 0,
            received: 0,
            send_errors: 0,
            heartbeat_sent: VecDeque::new(),
            rtt_us: vec![None; members],
        }
    }

    pub async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.socket.recv(buf).await
    }

    /// An authentic, fresh message from a member (an ack also measures that peer's round
    /// trip), or `None` with the datagram counted as dropped; and the notices to log (a peer on
    /// another version or timing, once per reason).
    pub fn accept(&mut self, now: Instant, bytes: &[u8]) -> (Option<(NodeIdx, Datagram)>, Vec<Notice>) {
        let accepted = self.receiver.accept(bytes);
        if let Some((from, message)) = &accepted {
            self.received += 1;
            if let Datagram::Core(Message::Ack(a)) = message {
                self.note_rtt(now, *from, a.echo_seq);
            }
        }
        (accepted, self.receiver.take_notices())
    }

    fn note_rtt(&mut self, now: Instant, from: NodeIdx, echo: u64) {
        if let Some((_, sent)) = self.heartbeat_sent.iter().find(|(seq, _)| *seq == echo) {
            let us = u64::try_from(now.saturating_since(*sent).as_micros()).unwrap_or(u64::MAX);
            self.rtt_us[usize::from(from)] = Some(us);
        }
    }

    /// Sends without waiting: a full buffer or an unreachable peer is a lost datagram, which
    /// the protocol tolerates (counted, and the error returned for the log).
    pub fn send(&mut self, to: NodeIdx, message: &Datagram) -> std::io::Result<()> {
        self.counter += 1;
        let bytes = self.codec.encode(to, self.boot, self.counter, message);
        let result = self.socket.try_send_to(&bytes, self.peers[usize::from(to)]);
        match &result {
            Ok(_) => self.sent += 1,
            Err(_) => self.send_errors += 1,
        }
        result.map(|_| ())
    }

    /// Every other member; a lease-claiming heartbeat is remembered, so that the acks
    /// echoing it measure round trips.
    pub fn note_broadcast(&mut self, now: Instant, message: &Message) {
        if let Message::Heartbeat(h) = message
            && h.lease_claim
        {
            self.heartbeat_sent.push_back((h.seq, now));
            if self.heartbeat_sent.len() > RTT_WINDOW {
                self.heartbeat_sent.pop_front();
            }
        }
    }

    /// The members to broadcast to.
    pub fn others(&self) -> impl Iterator<Item = NodeIdx> + use<> {
        let me = self.me;
        (0..self.peers.len() as NodeIdx).filter(move |to| *to != me)
    }

    pub fn boot(&self) -> u64 {
        self.boot
    }

    pub fn sent(&self) -> u64 {
        self.sent
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn send_errors(&self) -> u64 {
        self.send_errors
    }

    pub fn drops(&self) -> &DropCounters {
        self.receiver.drops()
    }

    pub fn rtt_us(&self, node: NodeIdx) -> Option<u64> {
        self.rtt_us[usize::from(node)]
    }

    pub fn keyed_with(&self, secret: &[u8]) -> bool {
        self.codec.keyed_with(secret)
    }
}
