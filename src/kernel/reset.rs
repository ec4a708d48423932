//! Resetting TCP connections owned by other processes, as `ss -K` does: the kernel's socket
//! destroy over sock_diag (`SOCK_DESTROY`; needs `CONFIG_INET_DIAG_DESTROY` and
//! CAP_NET_ADMIN in the socket's network namespace). The owner's blocked and next calls on a
//! destroyed socket fail with ECONNABORTED — also a `connect` still waiting for an answer — and
//! the peer gets a RST.
//!
//! Two uses: a replica being promoted cuts its replication connections to the old source, so a
//! replication thread blocked on a vanished host stops at once; a host that gave the VIP up
//! resets the clients' connections to it, so they reconnect to the new primary instead of
//! waiting on a frozen server until their own timeouts.

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::{AF_INET, AF_INET6, IPPROTO_TCP, SockDiagDestroy, SockDiagMessage};
use netlink_sys::{Socket, SocketAddr as Kernel, protocols::NETLINK_SOCK_DIAG};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Bound on the whole exchange with the kernel (dumps and destroys).
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
const RECV_BUF: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error("sock_diag socket: {0}")]
    Socket(#[source] io::Error),
    #[error("the kernel did not answer within {0:?}")]
    NoReply(Duration),
    #[error("cannot decode the kernel's answer: {0}")]
    Decode(String),
    #[error("the kernel cannot destroy sockets (needs CONFIG_INET_DIAG_DESTROY)")]
    Unsupported,
    #[error("resetting connections needs CAP_NET_ADMIN")]
    Denied,
    #[error("the kernel refused to {what}: {source}")]
    Kernel {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// A TCP connection as the kernel lists it: local and remote address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tcp {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Resets every TCP connection of this network namespace (IPv4 and IPv6, every state but
/// LISTEN and TIME_WAIT) that `select` picks. Returns how many were reset; one that closed in
/// the meantime is neither counted nor an error. Blocking, bounded by [`REPLY_TIMEOUT`].
pub fn reset(select: impl Fn(&Tcp) -> bool) -> Result<usize, ResetError> {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let mut diag = Diag::open()?;
    let mut picked = Vec::new();
    for family in [AF_INET, AF_INET6] {
        picked.extend(
            diag.list(family, deadline)?
                .into_iter()
                .filter(|(_, id)| select(&tcp(id))),
        );
    }
    let mut reset = 0;
    for (family, id) in picked {
        if diag.destroy(family, id, deadline)? {
            reset += 1;
        }
    }
    Ok(reset)
}

fn tcp(id: &SocketId) -> Tcp {
    Tcp {
        local: SocketAddr::new(id.source_address.to_canonical(), id.source_port),
        remote: SocketAddr::new(id.destination_address.to_canonical(), id.destination_port),
    }
}

/// Every state a connection can be reset in.
fn live_states() -> StateFlags {
    StateFlags::all() - StateFlags::LISTEN - StateFlags::TIME_WAIT
}

struct Diag {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Diag {
    fn open() -> Result<Diag, ResetError> {
        let sock = super::netlink_socket(NETLINK_SOCK_DIAG, REPLY_TIMEOUT).map_err(ResetError::Socket)?;
        Ok(Diag {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    fn request(family: u8, socket_id: SocketId) -> SockDiagMessage {
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: live_states(),
            socket_id,
        })
    }

    fn send<T: NetlinkSerializable>(&mut self, flags: u16, inner: T) -> Result<u32, ResetError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
        msg.finalize();
        let mut bytes = vec![0; msg.buffer_len()];
        msg.serialize(&mut bytes);
        let sent = self
            .sock
            .send_to(&bytes, &Kernel::new(0, 0), 0)
            .map_err(ResetError::Socket)?;
        if sent != bytes.len() {
            return Err(ResetError::Decode(format!(
                "sent {sent} of {} bytes",
                bytes.len()
            )));
        }
        Ok(self.seq)
    }

    /// The family's TCP sockets in a resettable state.
    fn list(&mut self, family: u8, deadline: Instant) -> Result<Vec<(u8, SocketId)>, ResetError> {
        let id = if family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        let seq = self.send(NLM_F_REQUEST | NLM_F_DUMP, Self::request(family, id))?;
        let mut found = Vec::new();
        loop {
            for msg in self.receive(deadline)? {
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(found),
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        let errno = e.code.map_or(0, |c| -c.get());
                        return Err(kernel_error("list TCP sockets", errno));
                    }
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        found.push((family, r.header.socket_id));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Destroys one socket; `false` when it was already gone.
    fn destroy(&mut self, family: u8, id: SocketId, deadline: Instant) -> Result<bool, ResetError> {
        let request = SockDiagDestroy::new(Self::request(family, id));
        let seq = self.send(NLM_F_REQUEST | NLM_F_ACK, request)?;
        loop {
            for msg in self.receive(deadline)? {
                if msg.header.sequence_number != seq {
                    continue;
                }
                if let NetlinkPayload::Error(e) = msg.payload {
                    return match e.code.map_or(0, |c| -c.get()) {
                        0 => Ok(true),
                        libc::ENOENT => Ok(false),
                        errno => Err(kernel_error("destroy a TCP socket", errno)),
                    };
                }
            }
        }
    }

    /// Receives one datagram (waiting at most until `deadline`) and splits it into messages.
    fn receive(&mut self, deadline: Instant) -> Result<Vec<NetlinkMessage<SockDiagMessage>>, ResetError> {
        loop {
            if Instant::now() >= deadline {
                return Err(ResetError::NoReply(REPLY_TIMEOUT));
            }
            self.buf.clear();
            match self.sock.recv(&mut self.buf, libc::MSG_TRUNC) {
                Ok(len) if len > self.buf.capacity() => {
                    return Err(ResetError::Decode(format!(
                        "datagram of {len} bytes exceeds {RECV_BUF}"
                    )));
                }
                Ok(_) => return super::split(&self.buf).map_err(|e| ResetError::Decode(e.to_string())),
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => {}
                Err(e) => return Err(ResetError::Socket(e)),
            }
        }
    }
}

fn kernel_error(what: &'static str, errno: i32) -> ResetError {
    match errno {
        libc::EOPNOTSUPP => ResetError::Unsupported,
        libc::EPERM | libc::EACCES => ResetError::Denied,
        _ => ResetError::Kernel {
            what,
            source: io::Error::from_raw_os_error(errno),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// A real connection on loopback, reset from outside while its owner is blocked reading:
    /// the read fails at once, and another connection to the same server is untouched. Needs
    /// CAP_NET_ADMIN (the suite runs as root); without it the error must say so.
    #[test]
    fn a_reset_connection_fails_its_blocked_owner_and_others_are_untouched() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let victim = TcpStream::connect(server).unwrap();
        let (_victim_peer, _) = listener.accept().unwrap();
        let mut bystander = TcpStream::connect(server).unwrap();
        let (mut bystander_peer, _) = listener.accept().unwrap();
        let target = Tcp {
            local: victim.local_addr().unwrap(),
            remote: server,
        };
        let mut reader = victim.try_clone().unwrap();
        reader.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let blocked = std::thread::spawn(move || reader.read(&mut [0; 1]));
        std::thread::sleep(Duration::from_millis(50));
        let result = reset(|c| *c == target);
        if !nix::unistd::geteuid().is_root() {
            assert!(matches!(result, Err(ResetError::Denied)), "{result:?}");
            return;
        }
        let reset_count = result
            .expect("resetting a connection as root (needs CAP_NET_ADMIN and CONFIG_INET_DIAG_DESTROY)");
        assert_eq!(reset_count, 1);
        let err = blocked.join().unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted, "{err}");
        bystander.write_all(b"x").unwrap();
        bystander_peer
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut byte = [0; 1];
        bystander_peer.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x");
        // Gone already: nothing left to reset, and that is not an error.
        assert_eq!(reset(|c| *c == target).unwrap(), 0);
    }
}
