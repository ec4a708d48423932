//! The VIP as an interface address, through rtnetlink: add with a lifetime, refresh, remove,
//! look up, and watch for changes made by others (or by the kernel when the lifetime ends).

use crate::config::Vip;
use futures_util::{StreamExt, TryStreamExt};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, CacheInfo};
use netlink_packet_route::link::{LinkAttribute, LinkMessage, State};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::{Handle, MulticastGroup};
use std::net::IpAddr;

const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const EADDRNOTAVAIL: i32 = 99;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("netlink: {0}")]
    Failed(String),
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// A route-netlink connection in the current network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

/// What happened to a link or address, as the kernel announced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    AddressRemoved {
        index: u32,
        address: IpAddr,
    },
    Link {
        index: u32,
        name: String,
        up: bool,
    },
    /// Notifications were lost; re-read the state of interest.
    Resync,
}

/// Whether a link can carry the VIP: administratively and operationally up. `Unknown` counts
/// as up (drivers without carrier reporting say so).
fn link_up(m: &LinkMessage) -> bool {
    m.attributes.iter().any(|a| {
        matches!(
            a,
            LinkAttribute::OperState(State::Up) | LinkAttribute::OperState(State::Unknown)
        )
    })
}

fn link_name(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn address_of(m: &AddressMessage) -> Option<IpAddr> {
    // For IPv4 `Local` is the interface's own address (`Address` is the peer on point-to-point
    // links); IPv6 only has `Address`.
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

impl Netlink {
    /// Opens a connection; its driver task runs on the current tokio runtime.
    pub fn connect() -> std::io::Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The index of `name` and whether it is up.
    pub async fn link(&self, name: &str) -> Result<(u32, bool), NetlinkError> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(Some(m)) => Ok((m.header.index, link_up(&m))),
            Ok(None) => Err(NetlinkError::NoInterface(name.to_string())),
            Err(e) if errno(&e) == Some(ENODEV) => Err(NetlinkError::NoInterface(name.to_string())),
            Err(e) => Err(NetlinkError::Failed(format!("looking up {name}: {e}"))),
        }
    }

    /// Adds `vip` on link `index` (or refreshes it) valid for `valid_secs` seconds and never
    /// preferred, so the kernel removes it by itself unless refreshed again, and never picks it
    /// as a source address. IPv6 VIPs skip duplicate address detection to be usable at once.
    pub async fn add(&self, index: u32, vip: &Vip, valid_secs: u32) -> Result<(), NetlinkError> {
        let mut req = self
            .handle
            .address()
            .add(index, vip.address, vip.prefix)
            .replace();
        let msg = req.message_mut();
        let mut cache = CacheInfo::default();
        cache.ifa_preferred = 0;
        cache.ifa_valid = valid_secs.max(1);
        msg.attributes.push(AddressAttribute::CacheInfo(cache));
        if vip.address.is_ipv6() {
            msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        if let Some(label) = &vip.label {
            msg.attributes.push(AddressAttribute::Label(label.clone()));
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) if errno(&e) == Some(ENODEV) => Err(NetlinkError::NoInterface(vip.interface.clone())),
            Err(e) => Err(NetlinkError::Failed(format!("adding {vip}: {e}"))),
        }
    }

    /// Whether `address` is on link `index` (the lab's observers ask this).
    pub async fn holds(&self, index: u32, address: IpAddr) -> Result<bool, NetlinkError> {
        let mut list = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(address)
            .execute();
        let mut found = false;
        loop {
            match list.try_next().await {
                Ok(Some(m)) => found |= m.header.index == index && address_of(&m) == Some(address),
                Ok(None) => return Ok(found),
                Err(e) => return Err(NetlinkError::Failed(format!("listing addresses: {e}"))),
            }
        }
    }

    /// Removes `address` from every link it is on — found by address, not by an interface
    /// name that may have changed since it was added; `Ok(false)` if it was nowhere. `Ok` means
    /// the kernel confirmed every instance gone.
    pub async fn remove(&self, address: IpAddr) -> Result<bool, NetlinkError> {
        #[cfg(debug_assertions)]
        if removal_denied() {
            return Err(NetlinkError::Failed(format!(
                "removing {address}: Operation not permitted (lab fault: VIPGATE_LAB_DENY_REMOVAL)"
            )));
        }
        let mut list = self.handle.address().get().set_address_filter(address).execute();
        let mut found = Vec::new();
        loop {
            match list.try_next().await {
                Ok(Some(m)) if address_of(&m) == Some(address) => found.push(m),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => return Err(NetlinkError::Failed(format!("listing addresses: {e}"))),
            }
        }
        let removed = !found.is_empty();
        for msg in found {
            match self.handle.address().del(msg).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(EADDRNOTAVAIL) => {}
                Err(e) => return Err(NetlinkError::Failed(format!("removing {address}: {e}"))),
            }
        }
        Ok(removed)
    }
}

/// Lab fault, compiled into debug builds only (the tests' and the demo's, never a package):
/// while the file named by `VIPGATE_LAB_DENY_REMOVAL` exists, every address removal fails as
/// if netlink refused it, so a test can show what a failed removal does.
#[cfg(debug_assertions)]
fn removal_denied() -> bool {
    std::env::var_os("VIPGATE_LAB_DENY_REMOVAL").is_some_and(|f| std::path::Path::new(&f).exists())
}

/// Subscribes to link and address changes. The returned receiver yields them as they come.
pub fn watch() -> std::io::Result<tokio::sync::mpsc::UnboundedReceiver<Change>> {
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
    ];
    let (conn, _handle, mut messages) = rtnetlink::new_multicast_connection(&groups)?;
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let change = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(m)) => {
                    address_of(&m).map(|address| Change::AddressRemoved {
                        index: m.header.index,
                        address,
                    })
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                    link_name(&m).map(|name| Change::Link {
                        index: m.header.index,
                        name,
                        up: link_up(&m),
                    })
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                    link_name(&m).map(|name| Change::Link {
                        index: m.header.index,
                        name,
                        up: false,
                    })
                }
                // The kernel dropped notifications: whoever listens must look again.
                NetlinkPayload::Overrun(_) => Some(Change::Resync),
                _ => None,
            };
            if let Some(change) = change
                && tx.send(change).is_err()
            {
                break;
            }
        }
    });
    Ok(rx)
}
