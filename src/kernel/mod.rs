//! Small Linux facilities the agent uses directly: netlink sockets with a bounded wait, and
//! resetting TCP connections it does not own ([`reset`]).

pub mod reset;

use netlink_packet_core::{DecodeError, NetlinkBuffer, NetlinkDeserializable, NetlinkMessage};
use netlink_sys::Socket;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Opens and binds a netlink socket of `protocol` whose `recv` gives up after `timeout`, so a
/// kernel that never answers cannot hang the caller.
pub fn netlink_socket(protocol: isize, timeout: Duration) -> io::Result<Socket> {
    let mut sock = Socket::new(protocol)?;
    sock.bind_auto()?;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: valid socket fd; `tv` is a live timeval and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // Best effort: they only make errors shorter (CAP_ACK) and more telling (EXT_ACK).
    let _ = sock.set_cap_ack(true);
    let _ = sock.set_ext_ack(true);
    Ok(sock)
}

/// Splits a netlink datagram into its messages.
pub fn split<T: NetlinkDeserializable>(datagram: &[u8]) -> Result<Vec<NetlinkMessage<T>>, DecodeError> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let len = NetlinkBuffer::new_checked(rest)?.length() as usize;
        let message = NetlinkMessage::deserialize(&rest[..len])
            .map_err(|e| DecodeError::from(format!("netlink message: {e}")))?;
        out.push(message);
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(out)
}
