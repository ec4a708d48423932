//! A kernel-side fence for vipgate's virtual IPs.
//!
//! vipgate may serve a VIP only while it holds the lease. If the agent hangs or is killed, no
//! user-space code can be trusted to stop serving at the lease end, so this module installs
//! nftables tables of vipgate's own in which every packet to or from a VIP, every ARP packet
//! announcing an IPv4 VIP and every IPv6 neighbour advertisement for an IPv6 VIP is dropped
//! unless the VIP is an element of a set *with a timeout*. The kernel compares an element's
//! expiry with jiffies at every lookup, so the fence closes by itself at the lease end with no
//! process alive. The agent re-adds the elements with "lease time left" on every renewal
//! ([`Fence::open_for`]).
//!
//! The module speaks nf_tables netlink itself (no `nft`, no libnftnl): a renewal is one
//! `sendmsg` of a small batch plus one ACK per message, and every wait is bounded by a
//! receive timeout.
//!
//! Installed ruleset, in nft syntax (one rule per VIP):
//!
//! ```text
//! table inet vipgate {
//!   set live4 { type ipv4_addr; flags timeout; }
//!   set live6 { type ipv6_addr; flags timeout; }
//!   chain input  { type filter hook input  priority -300; policy accept;
//!     ip daddr V4 ip daddr != @live4 drop
//!     ip6 daddr V6 ip6 daddr != @live6 drop }
//!   chain output { type filter hook output priority -300; policy accept;
//!     ip saddr V4 ip saddr != @live4 drop
//!     ip6 saddr V6 ip6 saddr != @live6 drop
//!     icmpv6 type nd-neighbor-advert icmpv6 taddr V6 icmpv6 taddr != @live6 drop }
//! }
//! table arp vipgate {
//!   set live4 { type ipv4_addr; flags timeout; }
//!   chain output { type filter hook output priority 0; policy accept;
//!     arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ip V4 arp saddr ip != @live4 drop }
//! }
//! ```

use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_APPEND, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_REQUEST, NetlinkMessage, NetlinkPayload, Nla, NlasIterator, parse_string,
};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions, Hook, HookNumber,
    Immediate, ListAttribute, Lookup, Meta, MetaKey, NfTablesMessage, Operator, Payload, Register,
    RuleAttribute, RuleMessage, SetAttribute, SetElementAttribute, SetElementList, SetElementMessage,
    SetFlags, SetMessage, TableAttribute, TableMessage, Verdict, VerdictAttribute,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// Shortest timeout [`Fence::open_for`] accepts.
///
/// The kernel converts the millisecond timeout to nanoseconds and then to jiffies, rounding
/// down. Kernels without commit e0c47281723f ("elements with timeout below CONFIG_HZ never
/// expire", Oct 2024) then treat a result of 0 jiffies as "no timeout": the element never
/// expires and the fence never closes. 10 ms is at least one jiffy for every HZ the kernel
/// offers (100, 250, 300, 1000), so no requested timeout can turn into "forever".
pub const MIN_TIMEOUT: Duration = Duration::from_millis(10);

/// Bound on every wait for the kernel's answer (one `recv`, and the whole exchange).
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
const TABLE: &str = "vipgate";
/// Separate table for [`check_kernel`], so probing never touches a live fence.
const CHECK_TABLE: &str = "vipgate_check";
const RECV_BUF: usize = 64 * 1024;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_DESTROYSETELEM: u8 = 30;
const NFT_LOOKUP_F_INV: u32 = 1;
const NLMSGERR_ATTR_MSG: u16 = 1;
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_ARP_OUT: u32 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const IPPROTO_ICMPV6: u8 = 58;
const ND_NEIGHBOR_ADVERT: u8 = 136;
const BASE_NETWORK: u32 = 1;
const BASE_TRANSPORT: u32 = 2;

/// Errors of the fence; each names the operation and, for kernel refusals, the errno.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// A socket call failed (opening, configuring, sending or receiving).
    #[error("{op}: netlink socket: {source}")]
    Socket {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel answered a request with an error.
    #[error("{op}: the kernel refused to {what}: errno {errno} ({detail})")]
    Kernel {
        op: &'static str,
        what: String,
        errno: i32,
        detail: String,
    },
    /// The kernel did not answer within the receive timeout.
    #[error("{op}: no answer from the kernel within {waited:?}")]
    NoReply { op: &'static str, waited: Duration },
    /// The kernel's answer could not be decoded.
    #[error("{op}: undecodable netlink answer: {detail}")]
    Decode { op: &'static str, detail: String },
    /// `open_for` was asked for a timeout the fence cannot honour safely.
    #[error("open_for: timeout {requested:?} is not allowed ({reason})")]
    BadTimeout {
        requested: Duration,
        reason: &'static str,
    },
    /// `install` was given no VIPs.
    #[error("install: no VIPs given")]
    NoVips,
    /// The running kernel lacks a feature the fence relies on.
    #[error("this kernel (uname -r {release}) {problem}; the VIP fence needs Linux 6.12 or later")]
    KernelUnsupported { release: String, problem: String },
}

impl FenceError {
    /// The fence's tables are gone (a firewall reload with `nft flush ruleset`, say): the
    /// VIPs are unfenced until [`Fence::reinstall`].
    pub fn tables_missing(&self) -> bool {
        matches!(self, FenceError::Kernel { errno, .. } if *errno == libc::ENOENT)
    }
}

/// One of the three sets of live VIPs.
#[derive(Clone, Copy)]
struct SetRef {
    family: NetfilterProtoFamily,
    family_name: &'static str,
    table: &'static str,
    name: &'static str,
    v6: bool,
    /// NFTA_SET_ID: lets rules in the same batch refer to the set before it exists.
    id: u32,
}

impl SetRef {
    fn describe(&self) -> String {
        format!("set {} {} {}", self.family_name, self.table, self.name)
    }
}

const INET4: SetRef = SetRef {
    family: NetfilterProtoFamily::Inet,
    family_name: "inet",
    table: TABLE,
    name: "live4",
    v6: false,
    id: 1,
};
const INET6: SetRef = SetRef {
    family: NetfilterProtoFamily::Inet,
    family_name: "inet",
    table: TABLE,
    name: "live6",
    v6: true,
    id: 2,
};
const ARP4: SetRef = SetRef {
    family: NetfilterProtoFamily::ARP,
    family_name: "arp",
    table: TABLE,
    name: "live4",
    v6: false,
    id: 3,
};
const SETS: [SetRef; 3] = [INET4, INET6, ARP4];
const PROBE_SET: SetRef = SetRef {
    family: NetfilterProtoFamily::Inet,
    family_name: "inet",
    table: CHECK_TABLE,
    name: "probe",
    v6: false,
    id: 1,
};

type Expr = ListAttribute<ExpressionAttribute>;
/// A dumped set element: its key and its time left in ms (`None`: it has no timeout).
type Element = (Vec<u8>, Option<u64>);

/// The VIP fence: a NETLINK_NETFILTER socket, its sequence counter and the VIPs it guards.
/// The socket belongs to the network namespace it was opened in, whichever thread uses it.
#[derive(Debug)]
pub struct Fence {
    sock: Socket,
    seq: u32,
    vips: Vec<IpAddr>,
}

/// A batch under construction, with the sequence number and description of every message
/// whose ACK must arrive before the batch counts as applied.
struct Batch {
    bytes: Vec<u8>,
    begin_seq: u32,
    acks: Vec<(u32, String)>,
}

impl Fence {
    /// Creates the two tables afresh in one atomic batch (add table; delete table; add table
    /// with sets, chains and rules), so whatever an earlier run left behind is replaced in the
    /// same transaction and there is no instant without a fence. Afterwards every VIP's traffic
    /// is dropped until [`Fence::open_for`] (an agent that restarts while holding the lease
    /// should open right after installing). Runs [`check_kernel`] first: a kernel that cannot
    /// shorten a timeout would let a fence outlive a shortened lease.
    pub fn install(vips: &[IpAddr]) -> Result<Fence, FenceError> {
        if vips.is_empty() {
            return Err(FenceError::NoVips);
        }
        check_kernel()?;
        let mut fence = Fence::with_vips("install", vips.to_vec())?;
        fence.reinstall()?;
        Ok(fence)
    }

    /// Creates the tables afresh again (closed), e.g. after someone deleted them.
    pub fn reinstall(&mut self) -> Result<(), FenceError> {
        let mut batch = self.begin();
        for table in [INET4, ARP4] {
            self.push_fresh_table(&mut batch, table);
        }
        self.push_inet_body(&mut batch);
        self.push_arp_body(&mut batch);
        self.exchange("install", batch)
    }

    /// Another socket on the same tables (e.g. for a second thread); installs nothing.
    pub fn handle(&self) -> Result<Fence, FenceError> {
        Fence::with_vips("handle", self.vips.clone())
    }

    /// A fence on tables installed earlier, possibly by another process (e.g. an operator
    /// command that removes the fence after the agent died); installs and checks nothing.
    pub fn attach(vips: &[IpAddr]) -> Result<Fence, FenceError> {
        Fence::with_vips("attach", vips.to_vec())
    }

    /// Lets every VIP pass for `timeout`, counted from when the kernel commits the request:
    /// re-adds the elements (without NLM_F_EXCL, so existing ones get the new timeout) in all
    /// three sets in one batch and waits for the kernel's ACKs. The timeout is truncated to
    /// whole milliseconds, the kernel truncates it to whole jiffies and expires the element on
    /// the jiffy tick, so the fence closes up to one jiffy early (0-4 ms at HZ=250) but never
    /// late. An ENOENT error means the tables are gone (e.g. `nft flush ruleset`): the VIPs
    /// are unfenced and must not be served until [`Fence::install`] succeeds again.
    pub fn open_for(&mut self, timeout: Duration) -> Result<(), FenceError> {
        let ms = timeout_ms(timeout)?;
        self.add_elements("open_for", ms)
    }

    /// Re-adds every VIP's element to expire (and time out) in `ms` milliseconds, unchecked.
    fn add_elements(&mut self, op: &'static str, ms: u64) -> Result<(), FenceError> {
        let mut batch = self.begin();
        for set in SETS {
            let keys = self.keys(set.v6);
            if keys.is_empty() {
                continue;
            }
            let attrs = element_list(set, &keys, Some(Life::for_ms(ms)));
            let msg = NfTablesMessage::NewSetElement(SetElementMessage { attributes: attrs });
            let what = format!("add elements with timeout {ms} ms to {}", set.describe());
            self.push(&mut batch, set.family, NLM_F_CREATE, msg, what);
        }
        self.exchange(op, batch)
    }

    /// Closes the fence at once by deleting the elements. Uses NFT_MSG_DESTROYSETELEM, which
    /// ignores elements that are already gone (expired or never added), so closing an already
    /// closed fence succeeds; [`check_kernel`] has verified that the kernel knows it.
    pub fn close(&mut self) -> Result<(), FenceError> {
        let mut batch = self.begin();
        for set in SETS {
            let keys = self.keys(set.v6);
            if keys.is_empty() {
                continue;
            }
            let what = format!("destroy elements of {}", set.describe());
            self.push(&mut batch, set.family, 0, destroy_elements(set, &keys), what);
        }
        self.exchange("close", batch)
    }

    /// Deletes both tables (graceful stop: the VIPs are unfenced). Absent tables are fine,
    /// because each delete is preceded by an add of the same table in the same batch.
    pub fn remove(&mut self) -> Result<(), FenceError> {
        let mut batch = self.begin();
        for table in [INET4, ARP4] {
            self.push_table_delete(&mut batch, table);
        }
        self.exchange("remove", batch)
    }

    /// Time left on each VIP's elements as the kernel reports it (GETSETELEM dumps). An IPv4
    /// VIP is in two sets (inet and arp); the shorter time counts, since the VIP is fenced as
    /// soon as either expires. `None` means absent or expired in at least one set. An element
    /// without any timeout (never created by this module) shows as `Duration::MAX`.
    pub fn remaining(&mut self) -> Result<Vec<(IpAddr, Option<Duration>)>, FenceError> {
        let mut left: Vec<(IpAddr, Option<Duration>)> =
            self.vips.iter().map(|vip| (*vip, Some(Duration::MAX))).collect();
        for set in SETS {
            if self.keys(set.v6).is_empty() {
                continue;
            }
            let elements = self.dump_set("remaining", set)?;
            for (vip, time) in &mut left {
                if vip.is_ipv6() != set.v6 {
                    continue;
                }
                let found = elements.iter().find(|(key, _)| *key == ip_bytes(vip));
                let here = found.map(|(_, ms)| ms.map_or(Duration::MAX, Duration::from_millis));
                *time = (*time).min(here);
            }
        }
        Ok(left)
    }

    /// Opens the socket. VIPs are made canonical and unique: a duplicate would put the same
    /// element twice into one batch.
    fn with_vips(op: &'static str, given: Vec<IpAddr>) -> Result<Fence, FenceError> {
        let mut vips: Vec<IpAddr> = Vec::with_capacity(given.len());
        for vip in given.into_iter().map(|v| v.to_canonical()) {
            if !vips.contains(&vip) {
                vips.push(vip);
            }
        }
        Ok(Fence {
            sock: open_socket(op)?,
            seq: 0,
            vips,
        })
    }

    fn keys(&self, v6: bool) -> Vec<Vec<u8>> {
        self.vips
            .iter()
            .filter(|vip| vip.is_ipv6() == v6)
            .map(ip_bytes)
            .collect()
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Starts a batch with NFNL_MSG_BATCH_BEGIN addressed to the nf_tables subsystem.
    fn begin(&mut self) -> Batch {
        let begin_seq = self.next_seq();
        let mut bytes = Vec::with_capacity(4096);
        let inner = NetfilterMessageInner::None(ControlMessage::BatchBegin);
        encode(
            &mut bytes,
            begin_seq,
            0,
            NetfilterProtoFamily::Unspec,
            NFNL_SUBSYS_NFTABLES,
            inner,
        );
        Batch {
            bytes,
            begin_seq,
            acks: Vec::new(),
        }
    }

    /// Appends one nf_tables message that asks for an ACK.
    fn push(
        &mut self,
        batch: &mut Batch,
        family: NetfilterProtoFamily,
        flags: u16,
        msg: NfTablesMessage,
        what: String,
    ) {
        let seq = self.next_seq();
        let inner = NetfilterMessageInner::NfTables(msg);
        encode(&mut batch.bytes, seq, flags | NLM_F_ACK, family, 0, inner);
        batch.acks.push((seq, what));
    }

    /// add table + delete table: afterwards the table is gone whether or not it existed.
    fn push_table_delete(&mut self, batch: &mut Batch, set: SetRef) {
        let what = format!("add table {} {}", set.family_name, set.table);
        let msg = NfTablesMessage::NewTable(table_message(set.table));
        self.push(batch, set.family, NLM_F_CREATE, msg, what);
        let what = format!("delete table {} {}", set.family_name, set.table);
        let msg = NfTablesMessage::DeleteTable(table_message(set.table));
        self.push(batch, set.family, 0, msg, what);
    }

    /// add + delete + add: a fresh, empty table (no "owner" flag, so it outlives the process).
    fn push_fresh_table(&mut self, batch: &mut Batch, set: SetRef) {
        self.push_table_delete(batch, set);
        let what = format!("create table {} {}", set.family_name, set.table);
        let msg = NfTablesMessage::NewTable(table_message(set.table));
        self.push(batch, set.family, NLM_F_CREATE, msg, what);
    }

    fn push_set(&mut self, batch: &mut Batch, set: SetRef) {
        let what = format!("create {}", set.describe());
        let msg = NfTablesMessage::NewSet(set_message(set));
        self.push(batch, set.family, NLM_F_CREATE, msg, what);
    }

    fn push_chain(&mut self, batch: &mut Batch, set: SetRef, chain: &str, hook: u32, prio: i32) {
        let what = format!("create chain {} {} {chain}", set.family_name, set.table);
        let msg = NfTablesMessage::NewChain(chain_message(set.table, chain, hook, prio));
        self.push(batch, set.family, NLM_F_CREATE, msg, what);
    }

    fn push_rule(&mut self, batch: &mut Batch, set: SetRef, chain: &str, vip: IpAddr, e: Vec<Expr>) {
        let what = format!(
            "add rule for {vip} to chain {} {} {chain}",
            set.family_name, set.table
        );
        let msg = NfTablesMessage::NewRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(set.table.to_string()),
                RuleAttribute::Chain(chain.to_string()),
                RuleAttribute::Expressions(e),
            ],
        });
        self.push(batch, set.family, NLM_F_CREATE | NLM_F_APPEND, msg, what);
    }

    /// Sets, chains and per-VIP rules of `table inet vipgate`.
    fn push_inet_body(&mut self, batch: &mut Batch) {
        self.push_set(batch, INET4);
        self.push_set(batch, INET6);
        self.push_chain(batch, INET4, "input", NF_INET_LOCAL_IN, -300);
        self.push_chain(batch, INET4, "output", NF_INET_LOCAL_OUT, -300);
        for vip in self.vips.clone() {
            let key = ip_bytes(&vip);
            let (proto, set, daddr, saddr) = match vip {
                IpAddr::V4(_) => (NFPROTO_IPV4, INET4, 16, 12),
                IpAddr::V6(_) => (NFPROTO_IPV6, INET6, 24, 8),
            };
            let mut input = meta_eq(MetaKey::Nfproto, proto);
            input.extend(guard(BASE_NETWORK, daddr, &key, set));
            self.push_rule(batch, INET4, "input", vip, input);
            let mut output = meta_eq(MetaKey::Nfproto, proto);
            output.extend(guard(BASE_NETWORK, saddr, &key, set));
            self.push_rule(batch, INET4, "output", vip, output);
            if vip.is_ipv6() {
                let mut advert = meta_eq(MetaKey::Nfproto, NFPROTO_IPV6);
                advert.extend(meta_eq(MetaKey::L4Proto, IPPROTO_ICMPV6));
                advert.extend([payload(BASE_TRANSPORT, 0, 1), cmp_eq(vec![ND_NEIGHBOR_ADVERT])]);
                advert.extend(guard(BASE_TRANSPORT, 8, &key, INET6));
                self.push_rule(batch, INET4, "output", vip, advert);
            }
        }
    }

    /// Set, chain and per-IPv4-VIP rules of `table arp vipgate`: ARP for IPv4 over Ethernet
    /// (htype 1, ptype 0x0800, hlen 6, plen 4) whose sender IP is the VIP. htype+ptype and
    /// hlen+plen are loaded as one 4-byte and one 2-byte field, as nft itself does, and `nft
    /// list` shows them as the four separate matches.
    fn push_arp_body(&mut self, batch: &mut Batch) {
        self.push_set(batch, ARP4);
        self.push_chain(batch, ARP4, "output", NF_ARP_OUT, 0);
        for vip in self.vips.clone() {
            if vip.is_ipv6() {
                continue;
            }
            let mut rule = vec![
                payload(BASE_NETWORK, 0, 4),
                cmp_eq(vec![0, 1, 8, 0]),
                payload(BASE_NETWORK, 4, 2),
                cmp_eq(vec![6, 4]),
            ];
            rule.extend(guard(BASE_NETWORK, 14, &ip_bytes(&vip), ARP4));
            self.push_rule(batch, ARP4, "output", vip, rule);
        }
    }

    /// Sends a batch and waits until the kernel has answered every message of it.
    fn exchange(&mut self, op: &'static str, mut batch: Batch) -> Result<(), FenceError> {
        let end_seq = self.next_seq();
        let inner = NetfilterMessageInner::None(ControlMessage::BatchEnd);
        let (family, res) = (NetfilterProtoFamily::Unspec, NFNL_SUBSYS_NFTABLES);
        encode(&mut batch.bytes, end_seq, 0, family, res, inner);
        self.send(op, &batch.bytes)?;
        self.await_acks(op, batch.begin_seq, batch.acks)
    }

    fn send(&self, op: &'static str, bytes: &[u8]) -> Result<(), FenceError> {
        let kernel = SocketAddr::new(0, 0);
        let sent = self
            .sock
            .send_to(bytes, &kernel, 0)
            .map_err(|source| FenceError::Socket { op, source })?;
        if sent != bytes.len() {
            let detail = format!("sent {sent} of {} bytes", bytes.len());
            return Err(FenceError::Decode { op, detail });
        }
        Ok(())
    }

    /// Collects the ACKs of a batch. nfnetlink answers every message that asked for an ACK
    /// (error or not) after processing the whole batch. An error on the BATCH_BEGIN message
    /// concerns the batch as a whole (no CAP_NET_ADMIN, failed commit, ...) and ends the wait
    /// at once, since the per-message answers may never come. Answers to other sequence
    /// numbers (left over from an earlier failed exchange) are ignored.
    fn await_acks(
        &mut self,
        op: &'static str,
        begin_seq: u32,
        mut pending: Vec<(u32, String)>,
    ) -> Result<(), FenceError> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut first_error = None;
        let mut buf = Vec::with_capacity(RECV_BUF);
        while !pending.is_empty() {
            for msg in self.receive(op, &mut buf, deadline)? {
                let NetlinkPayload::Error(err) = msg.payload else {
                    continue;
                };
                let seq = msg.header.sequence_number;
                let whole_batch = seq == begin_seq;
                let what = if whole_batch {
                    "apply the batch".to_string()
                } else if let Some(at) = pending.iter().position(|(s, _)| *s == seq) {
                    pending.swap_remove(at).1
                } else {
                    continue;
                };
                let Some(code) = err.code else { continue };
                let errno = -code.get();
                let error = kernel_error(op, what, errno, msg.header.flags, &err.header);
                if whole_batch || errno == libc::ENOMEM {
                    // The batch as a whole was refused (e.g. EPERM before any message was
                    // looked at) or nfnetlink gave up on it: no more answers will come.
                    return Err(error);
                }
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Receives one datagram (waiting at most until `deadline`) and splits it into messages.
    fn receive(
        &self,
        op: &'static str,
        buf: &mut Vec<u8>,
        deadline: Instant,
    ) -> Result<Vec<NetlinkMessage<NetfilterMessage>>, FenceError> {
        loop {
            if Instant::now() >= deadline {
                return Err(FenceError::NoReply {
                    op,
                    waited: REPLY_TIMEOUT,
                });
            }
            buf.clear();
            match self.sock.recv(buf, libc::MSG_TRUNC) {
                Ok(len) if len > buf.len() => {
                    let detail = format!("datagram of {len} bytes exceeds {RECV_BUF}");
                    return Err(FenceError::Decode { op, detail });
                }
                Ok(_) => {
                    return crate::kernel::split(buf).map_err(|e| FenceError::Decode {
                        op,
                        detail: e.to_string(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(source) => return Err(FenceError::Socket { op, source }),
            }
        }
    }

    /// Dumps one set: each element's key and its time left in ms (`None`: no timeout).
    fn dump_set(&mut self, op: &'static str, set: SetRef) -> Result<Vec<Element>, FenceError> {
        let seq = self.next_seq();
        let msg = NfTablesMessage::GetSetElement(SetElementMessage {
            attributes: vec![
                SetElementList::Table(set.table.to_string()),
                SetElementList::Set(set.name.to_string()),
            ],
        });
        let mut bytes = Vec::new();
        let inner = NetfilterMessageInner::NfTables(msg);
        encode(&mut bytes, seq, NLM_F_DUMP, set.family, 0, inner);
        self.send(op, &bytes)?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut buf = Vec::with_capacity(RECV_BUF);
        let mut found = Vec::new();
        loop {
            for msg in self.receive(op, &mut buf, deadline)? {
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(found),
                    NetlinkPayload::Error(err) if err.code.is_some() => {
                        let errno = err.code.map_or(0, |c| -c.get());
                        let what = format!("list {}", set.describe());
                        return Err(kernel_error(op, what, errno, msg.header.flags, &err.header));
                    }
                    NetlinkPayload::InnerMessage(inner) => collect_elements(inner, &mut found),
                    _ => {}
                }
            }
        }
    }
}

/// Proves that this kernel can run the fence, in a fresh table of its own (`inet
/// vipgate_check`, removed afterwards): an element added with a 60 s timeout and re-added with
/// 1 s must report at most 1 s left (older kernels, reportedly before 6.12, keep the old
/// timeout on re-add, so a shortened lease would not shorten the fence), and destroying an
/// absent element must succeed (NFT_MSG_DESTROYSETELEM, Linux 6.3+), which `close` relies on.
pub fn check_kernel() -> Result<(), FenceError> {
    let mut probe = Fence::with_vips("check_kernel", Vec::new())?;
    let outcome = probe.probe_kernel();
    let mut cleanup = probe.begin();
    probe.push_table_delete(&mut cleanup, PROBE_SET);
    let cleaned = probe.exchange("check_kernel", cleanup);
    outcome.and(cleaned)
}

impl Fence {
    fn probe_kernel(&mut self) -> Result<(), FenceError> {
        const OP: &str = "check_kernel";
        let key = vec![192, 0, 2, 0];
        let mut batch = self.begin();
        self.push_fresh_table(&mut batch, PROBE_SET);
        self.push_set(&mut batch, PROBE_SET);
        self.exchange(OP, batch)?;
        // The same timeout, a shorter expiry: exactly what every renewal relies on.
        for expires_ms in [60_000, 1_000] {
            let life = Life {
                timeout_ms: 60_000,
                expires_ms,
            };
            let mut batch = self.begin();
            let attrs = element_list(PROBE_SET, std::slice::from_ref(&key), Some(life));
            let msg = NfTablesMessage::NewSetElement(SetElementMessage { attributes: attrs });
            let what = format!("add a probe element expiring in {expires_ms} ms");
            self.push(&mut batch, PROBE_SET.family, NLM_F_CREATE, msg, what);
            self.exchange(OP, batch)?;
        }
        let left = self.dump_set(OP, PROBE_SET)?;
        match left.first().and_then(|(_, ms)| *ms) {
            Some(ms) if ms <= 1_000 => {}
            kept => {
                let kept = kept.map_or("no timeout".to_string(), |ms| format!("{ms} ms left"));
                let problem = format!(
                    "does not update a set element's expiry when it is added again \
                     (60 s, then 1 s: the kernel reports {kept})"
                );
                return Err(unsupported(problem));
            }
        }
        for _ in 0..2 {
            let mut batch = self.begin();
            let msg = destroy_elements(PROBE_SET, std::slice::from_ref(&key));
            self.push(
                &mut batch,
                PROBE_SET.family,
                0,
                msg,
                "destroy the probe element".into(),
            );
            match self.exchange(OP, batch) {
                Err(FenceError::Kernel { errno, .. })
                    if errno == libc::EINVAL || errno == libc::EOPNOTSUPP =>
                {
                    let problem = format!("does not know NFT_MSG_DESTROYSETELEM (errno {errno})");
                    return Err(unsupported(problem));
                }
                other => other?,
            }
        }
        Ok(())
    }
}

fn unsupported(problem: String) -> FenceError {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown: {e}"));
    FenceError::KernelUnsupported { release, problem }
}

/// Opens a NETLINK_NETFILTER socket whose `recv` gives up after [`REPLY_TIMEOUT`].
fn open_socket(op: &'static str) -> Result<Socket, FenceError> {
    crate::kernel::netlink_socket(NETLINK_NETFILTER, REPLY_TIMEOUT)
        .map_err(|source| FenceError::Socket { op, source })
}

fn timeout_ms(timeout: Duration) -> Result<u64, FenceError> {
    let reject = |reason| FenceError::BadTimeout {
        requested: timeout,
        reason,
    };
    if timeout < MIN_TIMEOUT {
        return Err(reject(
            "below MIN_TIMEOUT, where the kernel may round it to 0 jiffies",
        ));
    }
    // The kernel refuses (ERANGE) anything whose nanoseconds overflow a u64.
    let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    if ms >= u64::MAX / 1_000_000 {
        return Err(reject("too large for the kernel"));
    }
    Ok(ms)
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Serializes one netlink message with the given header fields onto `out`.
fn encode(
    out: &mut Vec<u8>,
    seq: u32,
    flags: u16,
    family: NetfilterProtoFamily,
    res_id: u16,
    inner: NetfilterMessageInner,
) {
    let header = NetfilterHeader::new(family, 0, res_id);
    let mut msg = NetlinkMessage::from(NetfilterMessage::new(header, inner));
    msg.header.flags = NLM_F_REQUEST | flags;
    msg.header.sequence_number = seq;
    msg.finalize();
    let start = out.len();
    out.resize(start + msg.buffer_len(), 0);
    msg.serialize(&mut out[start..]);
}

/// Turns an NLMSG_ERROR into a [`FenceError::Kernel`], adding the kernel's extended-ACK text
/// when there is one (the payload is the capped request header followed by the ACK TLVs).
fn kernel_error(op: &'static str, what: String, errno: i32, flags: u16, payload: &[u8]) -> FenceError {
    let text = io::Error::from_raw_os_error(errno).to_string();
    let mut detail = text.replace(&format!(" (os error {errno})"), "");
    let embedded = if flags & NLM_F_CAPPED != 0 {
        Some(16)
    } else {
        payload
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(|b| (u32::from_ne_bytes(b) as usize).next_multiple_of(4))
    };
    let tlvs = embedded.and_then(|at| payload.get(at..)).unwrap_or_default();
    if flags & NLM_F_ACK_TLVS != 0 {
        for nla in NlasIterator::new(tlvs).flatten() {
            if nla.kind() == NLMSGERR_ATTR_MSG
                && let Ok(text) = parse_string(nla.value())
            {
                detail = format!("{detail}: {text}");
            }
        }
    }
    FenceError::Kernel {
        op,
        what,
        errno,
        detail,
    }
}

fn collect_elements(msg: NetfilterMessage, found: &mut Vec<Element>) {
    let NetfilterMessageInner::NfTables(NfTablesMessage::NewSetElement(elems)) = msg.inner else {
        return;
    };
    for list in elems.attributes {
        let SetElementList::Elements(elements) = list else {
            continue;
        };
        for element in elements {
            let ListAttribute::Element(attrs) = element else {
                continue;
            };
            let mut key = None;
            let mut expires = None;
            for attr in attrs {
                match attr {
                    SetElementAttribute::Key(DataAttribute::Value(k)) => key = Some(k),
                    SetElementAttribute::Expiration(ms) => expires = Some(ms),
                    _ => {}
                }
            }
            if let Some(key) = key {
                found.push((key, expires));
            }
        }
    }
}

fn table_message(name: &str) -> TableMessage {
    TableMessage {
        attributes: vec![TableAttribute::Name(name.to_string())],
    }
}

fn set_message(set: SetRef) -> SetMessage {
    let (key_type, key_len) = if set.v6 {
        (TYPE_IP6ADDR, 16)
    } else {
        (TYPE_IPADDR, 4)
    };
    SetMessage {
        attributes: vec![
            SetAttribute::Table(set.table.to_string()),
            SetAttribute::Name(set.name.to_string()),
            SetAttribute::Flags(SetFlags::Timeout),
            SetAttribute::KeyType(key_type),
            SetAttribute::KeyLen(key_len),
            SetAttribute::Id(set.id),
        ],
    }
}

fn chain_message(table: &str, chain: &str, hook: u32, prio: i32) -> ChainMessage {
    ChainMessage {
        attributes: vec![
            ChainAttribute::Table(table.to_string()),
            ChainAttribute::Name(chain.to_string()),
            ChainAttribute::Hook(vec![
                Hook::Number(HookNumber::Other(hook)),
                Hook::Priority(prio as u32),
            ]),
            ChainAttribute::Policy(NF_ACCEPT),
            ChainAttribute::Type("filter".to_string()),
        ],
    }
}

/// NFTA_SET_ELEM_LIST attributes naming `keys` in `set`, each with `timeout_ms` if given.
/// The expiry is given explicitly, not only the timeout: the kernel refreshes an existing
/// element's expiry on a re-add only when asked for one, or when the timeout changes by at
/// least a jiffy — a renewal with the same time left would otherwise not extend the fence.
fn element_list(set: SetRef, keys: &[Vec<u8>], life: Option<Life>) -> Vec<SetElementList> {
    let elements = keys
        .iter()
        .map(|key| {
            let mut attrs = vec![SetElementAttribute::Key(DataAttribute::Value(key.clone()))];
            if let Some(l) = life {
                attrs.push(SetElementAttribute::Timeout(l.timeout_ms));
                attrs.push(SetElementAttribute::Expiration(l.expires_ms));
            }
            ListAttribute::Element(attrs)
        })
        .collect();
    vec![
        SetElementList::Table(set.table.to_string()),
        SetElementList::Set(set.name.to_string()),
        SetElementList::Elements(elements),
    ]
}

/// An element's timeout and the time left until it expires, in milliseconds.
#[derive(Clone, Copy)]
struct Life {
    timeout_ms: u64,
    expires_ms: u64,
}

impl Life {
    fn for_ms(ms: u64) -> Life {
        Life {
            timeout_ms: ms,
            expires_ms: ms,
        }
    }
}

/// NFT_MSG_DESTROYSETELEM is not modelled by the crate, so its attributes are passed raw.
fn destroy_elements(set: SetRef, keys: &[Vec<u8>]) -> NfTablesMessage {
    let attributes = element_list(set, keys, None)
        .iter()
        .map(|nla| {
            let mut value = vec![0; nla.value_len()];
            nla.emit_value(&mut value);
            DefaultNla::new(nla.kind(), value)
        })
        .collect();
    NfTablesMessage::Other {
        message_type: NFT_MSG_DESTROYSETELEM,
        attributes,
    }
}

fn meta_eq(key: MetaKey, value: u8) -> Vec<Expr> {
    vec![
        Expressions::Meta(vec![Meta::Key(key), Meta::DestinationRegister(Register::Reg1)]).into(),
        cmp_eq(vec![value]),
    ]
}

fn payload(base: u32, offset: u32, len: u32) -> Expr {
    Expressions::Payload(vec![
        Payload::DestinationRegister(Register::Reg1),
        Payload::Base(base),
        Payload::Offset(offset),
        Payload::Len(len),
    ])
    .into()
}

fn cmp_eq(value: Vec<u8>) -> Expr {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(Operator::Equal),
        Cmp::Data(DataAttribute::Value(value)),
    ])
    .into()
}

/// `<field> == addr <field> != @set drop`, the field being `addr.len()` bytes at `offset`.
fn guard(base: u32, offset: u32, addr: &[u8], set: SetRef) -> Vec<Expr> {
    let len = addr.len() as u32;
    let lookup = Expressions::Lookup(vec![
        Lookup::Set(set.name.to_string()),
        Lookup::SetId(set.id),
        Lookup::SourceRegister(Register::Reg1),
        Lookup::Flags(NFT_LOOKUP_F_INV),
    ]);
    let verdict = Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(
            Verdict::Other(NF_DROP),
        )])),
    ]);
    vec![
        payload(base, offset, len),
        cmp_eq(addr.to_vec()),
        payload(base, offset, len),
        lookup.into(),
        verdict.into(),
    ]
}
