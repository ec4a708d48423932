//! Telling the LAN where the VIP now lives: gratuitous ARP (IPv4) and unsolicited neighbour
//! advertisements (IPv6), sent as raw Ethernet frames through an `AF_PACKET` socket (pnet).
//!
//! For IPv4 both a request and a reply are sent: some clients update their cache only from
//! one of the two. For IPv6 the advertisement carries the Override flag so caches replace the
//! old owner's link-layer address. Frame layouts are built here, pure and unit-tested; sending
//! needs `CAP_NET_RAW` and runs on a blocking thread, never on the agent loop.

use pnet::datalink::{self, Channel, MacAddr};
use pnet::packet::MutablePacket;
use pnet::packet::arp::{ArpHardwareTypes, ArpOperation, ArpOperations, MutableArpPacket};
use pnet::packet::ethernet::{EtherTypes, MutableEthernetPacket};
use pnet::packet::icmpv6::ndp::{MutableNeighborAdvertPacket, NdpOptionTypes};
use pnet::packet::icmpv6::{self, Icmpv6Packet, Icmpv6Types};
use pnet::packet::ip::IpNextHeaderProtocols;
use pnet::packet::ipv6::MutableIpv6Packet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ARP_FRAME_LEN: usize = 42;
pub const NA_FRAME_LEN: usize = 86;

const ETH_HEADER: usize = 14;
const IPV6_HEADER: usize = 40;
/// Neighbour advertisement (24) plus one target link-layer address option (8).
const NA_LEN: usize = 32;
/// The Override flag of a neighbour advertisement (RFC 4861 §4.4).
const NA_OVERRIDE: u8 = 0x20;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// A gratuitous ARP `operation` (request or reply) for `vip` at `mac`, broadcast.
pub fn garp_frame(mac: MacAddr, vip: Ipv4Addr, operation: ArpOperation) -> [u8; ARP_FRAME_LEN] {
    let mut buf = [0u8; ARP_FRAME_LEN];
    let mut eth = MutableEthernetPacket::new(&mut buf).expect("buffer fits an Ethernet header");
    eth.set_destination(MacAddr::broadcast());
    eth.set_source(mac);
    eth.set_ethertype(EtherTypes::Arp);
    let mut arp = MutableArpPacket::new(eth.payload_mut()).expect("buffer fits an ARP packet");
    arp.set_hardware_type(ArpHardwareTypes::Ethernet);
    arp.set_protocol_type(EtherTypes::Ipv4);
    arp.set_hw_addr_len(6);
    arp.set_proto_addr_len(4);
    arp.set_operation(operation);
    arp.set_sender_hw_addr(mac);
    arp.set_sender_proto_addr(vip);
    // Requests ask "who has VIP" of nobody in particular (ff…, as keepalived does); replies
    // answer everyone.
    arp.set_target_hw_addr(MacAddr::broadcast());
    arp.set_target_proto_addr(vip);
    buf
}

/// An unsolicited neighbour advertisement for `vip` at `mac`, to all nodes, with Override.
pub fn na_frame(mac: MacAddr, vip: Ipv6Addr) -> [u8; NA_FRAME_LEN] {
    let mut buf = [0u8; NA_FRAME_LEN];
    {
        let mut na = MutableNeighborAdvertPacket::new(&mut buf[ETH_HEADER + IPV6_HEADER..])
            .expect("buffer fits a neighbour advertisement");
        na.set_icmpv6_type(Icmpv6Types::NeighborAdvert);
        na.set_flags(NA_OVERRIDE);
        na.set_target_addr(vip);
    }
    let option = &mut buf[ETH_HEADER + IPV6_HEADER + 24..];
    option[0] = NdpOptionTypes::TargetLLAddr.0;
    option[1] = 1; // length in units of 8 bytes
    option[2..8].copy_from_slice(&mac.octets());
    let checksum = {
        let icmp = Icmpv6Packet::new(&buf[ETH_HEADER + IPV6_HEADER..]).expect("buffer fits ICMPv6");
        icmpv6::checksum(&icmp, &vip, &ALL_NODES)
    };
    buf[ETH_HEADER + IPV6_HEADER + 2..][..2].copy_from_slice(&checksum.to_be_bytes());
    {
        let mut ip = MutableIpv6Packet::new(&mut buf[ETH_HEADER..]).expect("buffer fits IPv6");
        ip.set_version(6);
        ip.set_payload_length(NA_LEN as u16);
        ip.set_next_header(IpNextHeaderProtocols::Icmpv6);
        // Receivers drop neighbour discovery that could have crossed a router.
        ip.set_hop_limit(255);
        ip.set_source(vip);
        ip.set_destination(ALL_NODES);
    }
    let mut eth = MutableEthernetPacket::new(&mut buf).expect("buffer fits an Ethernet header");
    // The all-nodes group's multicast MAC (RFC 2464 §7).
    eth.set_destination(MacAddr::new(0x33, 0x33, 0, 0, 0, 1));
    eth.set_source(mac);
    eth.set_ethertype(EtherTypes::Ipv6);
    buf
}

/// The frames announcing `vip` from `mac`, one round.
pub fn frames(mac: MacAddr, vip: IpAddr) -> Vec<Vec<u8>> {
    match vip {
        IpAddr::V4(v4) => vec![
            garp_frame(mac, v4, ArpOperations::Request).to_vec(),
            garp_frame(mac, v4, ArpOperations::Reply).to_vec(),
        ],
        IpAddr::V6(v6) => vec![na_frame(mac, v6).to_vec()],
    }
}

/// An open raw socket on one interface, ready to announce a set of VIPs.
pub struct Announcer {
    interface: String,
    tx: Box<dyn datalink::DataLinkSender>,
    frames: Vec<Vec<u8>>,
}

impl Announcer {
    /// Opens `interface` for announcing `vips` from its own MAC. Needs `CAP_NET_RAW`.
    pub fn open(interface: &str, vips: &[IpAddr]) -> Result<Announcer, String> {
        let iface = datalink::interfaces()
            .into_iter()
            .find(|i| i.name == interface)
            .ok_or_else(|| format!("interface {interface} does not exist"))?;
        let mac = iface
            .mac
            .filter(|m| *m != MacAddr::zero())
            .ok_or_else(|| format!("interface {interface} has no Ethernet address"))?;
        let config = datalink::Config {
            // pnet's default is promiscuous; announcing must not change what the NIC accepts.
            promiscuous: false,
            read_timeout: Some(std::time::Duration::from_millis(1)),
            // A round is sent holding the lease lock, which the backstop also takes: a send
            // must not block for long.
            write_timeout: Some(std::time::Duration::from_millis(100)),
            ..Default::default()
        };
        let tx = match datalink::channel(&iface, config) {
            Ok(Channel::Ethernet(tx, _rx)) => tx,
            Ok(_) => return Err(format!("interface {interface}: not an Ethernet channel")),
            Err(e) => {
                return Err(format!(
                    "cannot open a raw socket on {interface}: {e} (vipgate needs CAP_NET_RAW)"
                ));
            }
        };
        Ok(Announcer {
            interface: interface.to_string(),
            tx,
            frames: vips.iter().flat_map(|v| frames(mac, *v)).collect(),
        })
    }

    /// Sends one round (every frame once); returns how many frames went out.
    pub fn send_round(&mut self) -> Result<u64, String> {
        let mut sent = 0;
        for frame in &self.frames {
            match self.tx.send_to(frame, None) {
                Some(Ok(())) => sent += 1,
                Some(Err(e)) => return Err(format!("sending on {}: {e}", self.interface)),
                None => return Err(format!("sending on {}: channel closed", self.interface)),
            }
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pnet::packet::Packet;
    use pnet::packet::arp::ArpPacket;
    use pnet::packet::ethernet::EthernetPacket;
    use pnet::packet::icmpv6::ndp::NeighborAdvertPacket;
    use pnet::packet::ipv6::Ipv6Packet;

    const MAC: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x11);

    #[test]
    fn gratuitous_arp_names_the_vip_as_sender_and_target() {
        let vip = Ipv4Addr::new(192, 0, 2, 50);
        for op in [ArpOperations::Request, ArpOperations::Reply] {
            let f = garp_frame(MAC, vip, op);
            assert_eq!(f.len(), 42);
            let eth = EthernetPacket::new(&f).unwrap();
            assert_eq!(eth.get_destination(), MacAddr::broadcast());
            assert_eq!(eth.get_source(), MAC);
            assert_eq!(eth.get_ethertype(), EtherTypes::Arp);
            let arp = ArpPacket::new(eth.payload()).unwrap();
            assert_eq!(arp.get_operation(), op);
            assert_eq!(arp.get_sender_hw_addr(), MAC);
            assert_eq!(arp.get_sender_proto_addr(), vip);
            assert_eq!(arp.get_target_proto_addr(), vip);
        }
        // Fixed bytes: hardware type 1, protocol 0x0800, lengths 6 and 4, op 2.
        let reply = garp_frame(MAC, vip, ArpOperations::Reply);
        assert_eq!(&reply[14..22], &[0, 1, 8, 0, 6, 4, 0, 2]);
        assert_eq!(&reply[28..32], &[192, 0, 2, 50]);
    }

    #[test]
    fn unsolicited_na_overrides_and_carries_a_valid_checksum() {
        let vip: Ipv6Addr = "2001:db8::50".parse().unwrap();
        let f = na_frame(MAC, vip);
        let eth = EthernetPacket::new(&f).unwrap();
        assert_eq!(eth.get_destination(), MacAddr::new(0x33, 0x33, 0, 0, 0, 1));
        assert_eq!(eth.get_ethertype(), EtherTypes::Ipv6);
        let ip = Ipv6Packet::new(eth.payload()).unwrap();
        assert_eq!(ip.get_hop_limit(), 255);
        assert_eq!(ip.get_source(), vip);
        assert_eq!(ip.get_destination(), ALL_NODES);
        assert_eq!(usize::from(ip.get_payload_length()), NA_LEN);
        let na = NeighborAdvertPacket::new(ip.payload()).unwrap();
        assert_eq!(na.get_icmpv6_type(), Icmpv6Types::NeighborAdvert);
        assert_eq!(na.get_flags(), NA_OVERRIDE);
        assert_eq!(na.get_target_addr(), vip);
        let opts = na.get_options();
        assert_eq!(opts.len(), 1);
        assert_eq!(opts[0].option_type, NdpOptionTypes::TargetLLAddr);
        assert_eq!(opts[0].data, MAC.octets());
        // The one's-complement sum over pseudo-header and message, checksum included, is 0xffff:
        // recomputing with the checksum field zeroed must give the stored value.
        let icmp = Icmpv6Packet::new(ip.payload()).unwrap();
        assert_ne!(icmp.get_checksum(), 0);
        assert_eq!(icmpv6::checksum(&icmp, &vip, &ALL_NODES), icmp.get_checksum());
        // A different source address would not verify.
        let other: Ipv6Addr = "2001:db8::51".parse().unwrap();
        assert_ne!(icmpv6::checksum(&icmp, &other, &ALL_NODES), icmp.get_checksum());
    }

    #[test]
    fn one_round_is_request_and_reply_for_ipv4_and_one_na_for_ipv6() {
        assert_eq!(frames(MAC, "192.0.2.50".parse().unwrap()).len(), 2);
        let v6 = frames(MAC, "2001:db8::50".parse().unwrap());
        assert_eq!(v6.len(), 1);
        assert_eq!(v6[0].len(), NA_FRAME_LEN);
    }
}
