//! The datagram format: a versioned, compact binary envelope under HMAC-SHA256.
//!
//! ```text
//! offset  size  field
//! 0       2     magic "VG"
//! 2       1     version (3)
//! 3       1     kind: 1 heartbeat, 2 ack, 3 vote request, 4 vote, 5 release, 6 db report
//! 4       1+n   cluster name (length-prefixed, 1..=64 bytes)
//! ..      1+n   sender node id (length-prefixed, 1..=64 bytes)
//! ..      1+n   recipient node id (length-prefixed, 1..=64 bytes)
//! ..      8     membership fingerprint (both sides must have the same member list)
//! ..      4     lease_ms (both sides must count the same lease)
//! ..      4     clock drift bound, parts per million (likewise)
//! ..      8     sender boot id (grows with every start of the sender)
//! ..      8     counter (grows with every datagram within one boot)
//! ..      ..    payload, by kind (below)
//! end-32  32    HMAC-SHA256 over every byte before it, keyed with the cluster secret
//! ```
//! Integers are big-endian. A node reference is a length-prefixed id, length 0 meaning none.
//! Payloads: heartbeat `term u64, seq u64, owner ref, flags u8 (1 lease claim, 2 eligible,
//! 4 blocked, 8 preferred), position u64, priority u8`; ack `term u64, owner ref, echo_seq u64`;
//! vote request `term u64, position u64, priority u8`; vote `term u64, candidate ref, granted
//! u8`; release `term u64, to ref, has_position u8, position u64, final gtid (length-prefixed,
//! ≤ 200 bytes)`; db report `flags u8 (1 healthy, 2 writable, 4 replicating, 8 lag known, 16 follows the
//! last owner, 32 its database may own), lag_s
//! u32, failover_block_ms u32, gtid (length-prefixed, ≤ 200 bytes of UTF-8)`. Anything left
//! over, any flag outside its set, or a missing node where one is required makes the datagram
//! malformed.
//!
//! Every datagram names its recipient inside the MAC, and a receiver drops one that names
//! another node (`misaddressed`): otherwise a relay on the path could deliver one voter's vote
//! or ack to two candidates and make two owners. The first five fields (magic, version, kind,
//! cluster, sender) keep their place in every version, so a peer on another version can be
//! named in the log.
//!
//! The header is parsed (bounded, unauthenticated) only far enough to tell another cluster
//! apart; nothing else is trusted before the MAC is verified in constant time.

use crate::core::{Ack, Heartbeat, MAX_REPORT_GTID, Message, NodeIdx, Release, Timing, Vote, VoteRequest};
use crate::gate::DbReport;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

pub const MAGIC: [u8; 2] = *b"VG";
pub const VERSION: u8 = 3;
pub const MAC_LEN: usize = 32;
/// Larger datagrams are dropped unread. The largest valid one (64-byte names, a db report with
/// the longest GTID text) is 473 bytes.
pub const MAX_DATAGRAM: usize = 512;
/// Longest cluster name or node id.
pub const MAX_NAME: usize = 64;
const MIN_DATAGRAM: usize = 4 + 2 + 2 + 2 + 8 + 8 + 16 + MAC_LEN;

const KIND_HEARTBEAT: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_VOTE_REQUEST: u8 = 3;
const KIND_VOTE: u8 = 4;
const KIND_RELEASE: u8 = 5;
const KIND_DB_REPORT: u8 = 6;

/// Why a datagram was dropped. Every drop is counted under one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Shorter than the smallest valid datagram, or cut inside a field.
    Truncated,
    /// Longer than [`MAX_DATAGRAM`].
    Oversized,
    /// Does not start with the magic bytes: not a vipgate datagram.
    NotVipgate,
    UnknownVersion,
    WrongCluster,
    BadMac,
    /// Authenticated but not well-formed (unknown kind, bad flag, trailing bytes).
    Malformed,
    /// Authenticated, but the sender (or a node it names) is not in our member list, or is us.
    UnknownSender,
    /// The sender's member list differs from ours: majorities would not be comparable.
    MembershipMismatch,
    /// The sender counts another lease or clock drift bound: its leases and ours would not
    /// be comparable.
    TimingMismatch,
    /// Authentic, but addressed to another member (a copy made on the path, or a bug).
    Misaddressed,
    /// Not newer than the last datagram accepted from that sender (a replay or duplicate).
    Replayed,
}

impl DropReason {
    pub const ALL: [DropReason; 12] = [
        DropReason::Truncated,
        DropReason::Oversized,
        DropReason::NotVipgate,
        DropReason::UnknownVersion,
        DropReason::WrongCluster,
        DropReason::BadMac,
        DropReason::Malformed,
        DropReason::UnknownSender,
        DropReason::MembershipMismatch,
        DropReason::TimingMismatch,
        DropReason::Misaddressed,
        DropReason::Replayed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Oversized => "oversized",
            DropReason::NotVipgate => "not_vipgate",
            DropReason::UnknownVersion => "unknown_version",
            DropReason::WrongCluster => "wrong_cluster",
            DropReason::BadMac => "bad_mac",
            DropReason::Malformed => "malformed",
            DropReason::UnknownSender => "unknown_sender",
            DropReason::MembershipMismatch => "membership_mismatch",
            DropReason::TimingMismatch => "timing_mismatch",
            DropReason::Misaddressed => "misaddressed",
            DropReason::Replayed => "replayed",
        }
    }
}

/// What travels between agents: a message for the ownership core, or a database report for
/// the gate (which the core never sees).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Datagram {
    Core(Message),
    Db(DbReport),
}

impl From<Message> for Datagram {
    fn from(m: Message) -> Datagram {
        Datagram::Core(m)
    }
}

impl From<DbReport> for Datagram {
    fn from(d: DbReport) -> Datagram {
        Datagram::Db(d)
    }
}

/// A decoded, authenticated datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub sender: NodeIdx,
    /// Whom it was sent to; [`Codec::decode`] accepts only datagrams naming its own node.
    pub recipient: NodeIdx,
    pub boot: u64,
    pub counter: u64,
    pub message: Datagram,
}

/// Why a member's datagrams keep being dropped, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub peer: String,
    pub message: String,
}

/// Encodes and decodes datagrams for one cluster, seen from one member.
#[derive(Clone)]
pub struct Codec {
    cluster: Vec<u8>,
    mac: HmacSha256,
    fingerprint: u64,
    timing: Timing,
    ids: Vec<String>,
    me: NodeIdx,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Codec")
            .field("cluster", &String::from_utf8_lossy(&self.cluster))
            .finish()
    }
}

impl Codec {
    /// `ids` are the members' ids indexed by [`NodeIdx`]; names longer than [`MAX_NAME`] bytes
    /// are refused by configuration validation before this is built.
    pub fn new(
        cluster: &str,
        key: &[u8],
        fingerprint: u64,
        timing: Timing,
        ids: Vec<String>,
        me: NodeIdx,
    ) -> Codec {
        assert!(cluster.len() <= MAX_NAME && ids.iter().all(|id| id.len() <= MAX_NAME));
        assert!(usize::from(me) < ids.len());
        let mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
        Codec {
            cluster: cluster.as_bytes().to_vec(),
            mac,
            fingerprint,
            timing,
            ids,
            me,
        }
    }

    /// The lease and drift bound this codec stamps on datagrams and requires of peers.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Whether this codec authenticates with `key` (a reload checks the secret is unchanged).
    pub fn keyed_with(&self, key: &[u8]) -> bool {
        let probe = b"vipgate: is this the key?";
        let mut ours = self.mac.clone();
        ours.update(probe);
        let mut theirs =
            <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
        theirs.update(probe);
        ours.finalize().into_bytes() == theirs.finalize().into_bytes()
    }

    /// The datagram carrying `message` to member `to`.
    pub fn encode(&self, to: NodeIdx, boot: u64, counter: u64, message: &Datagram) -> Vec<u8> {
        let mut w = Vec::with_capacity(128);
        w.extend_from_slice(&MAGIC);
        w.push(VERSION);
        w.push(kind_of(message));
        put_name(&mut w, &self.cluster);
        put_name(&mut w, self.ids[usize::from(self.me)].as_bytes());
        put_name(&mut w, self.ids[usize::from(to)].as_bytes());
        w.extend_from_slice(&self.fingerprint.to_be_bytes());
        w.extend_from_slice(&self.timing.lease_ms.to_be_bytes());
        w.extend_from_slice(&self.timing.drift_ppm.to_be_bytes());
        w.extend_from_slice(&boot.to_be_bytes());
        w.extend_from_slice(&counter.to_be_bytes());
        self.put_payload(&mut w, message);
        let mut mac = self.mac.clone();
        mac.update(&w);
        w.extend_from_slice(&mac.finalize().into_bytes());
        w
    }

    pub fn decode(&self, bytes: &[u8]) -> Result<Envelope, DropReason> {
        if bytes.len() > MAX_DATAGRAM {
            return Err(DropReason::Oversized);
        }
        if bytes.len() >= 2 && bytes[..2] != MAGIC {
            return Err(DropReason::NotVipgate);
        }
        if bytes.len() >= 3 && bytes[2] != VERSION {
            return Err(DropReason::UnknownVersion);
        }
        if bytes.len() < MIN_DATAGRAM {
            return Err(DropReason::Truncated);
        }
        let (body, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        let mut r = Reader { buf: body, pos: 4 };
        if r.name()? != self.cluster.as_slice() {
            return Err(DropReason::WrongCluster);
        }
        let mut mac = self.mac.clone();
        mac.update(body);
        mac.verify_slice(tag).map_err(|_| DropReason::BadMac)?;
        // Authenticated from here on: a failure is a peer's bug or version skew, not an attack.
        let sender = self.node(r.name()?)?.ok_or(DropReason::UnknownSender)?;
        if sender == self.me {
            return Err(DropReason::UnknownSender);
        }
        let recipient = self.node(r.name()?)?.ok_or(DropReason::Malformed)?;
        if recipient != self.me {
            return Err(DropReason::Misaddressed);
        }
        if r.u64()? != self.fingerprint {
            return Err(DropReason::MembershipMismatch);
        }
        if r.timing()? != self.timing {
            return Err(DropReason::TimingMismatch);
        }
        let boot = r.u64()?;
        let counter = r.u64()?;
        let message = self.payload(body[3], &mut r)?;
        if r.pos != body.len() {
            return Err(DropReason::Malformed);
        }
        Ok(Envelope {
            sender,
            recipient,
            boot,
            counter,
            message,
        })
    }

    fn put_node(&self, w: &mut Vec<u8>, node: Option<NodeIdx>) {
        match node {
            Some(n) => put_name(w, self.ids[usize::from(n)].as_bytes()),
            None => w.push(0),
        }
    }

    fn node(&self, name: &[u8]) -> Result<Option<NodeIdx>, DropReason> {
        if name.is_empty() {
            return Ok(None);
        }
        match self.ids.iter().position(|id| id.as_bytes() == name) {
            Some(i) => Ok(Some(i as NodeIdx)),
            None => Err(DropReason::UnknownSender),
        }
    }

    /// For a datagram dropped because its sender runs another wire version or other timing
    /// (so it will keep being dropped until an operator acts): which member sent it and what to
    /// do. `None` for other reasons, other clusters and non-members.
    pub fn explain(&self, bytes: &[u8], reason: DropReason) -> Option<Notice> {
        // Magic, version, kind, cluster and sender keep their place in every version.
        let mut r = Reader {
            buf: bytes.get(..bytes.len().checked_sub(MAC_LEN)?)?,
            pos: 4,
        };
        if r.name().ok()? != self.cluster.as_slice() {
            return None;
        }
        let sender = self.node(r.name().ok()?).ok()??;
        let peer = self.ids[usize::from(sender)].clone();
        let message = match reason {
            DropReason::UnknownVersion => format!(
                "{peer} speaks wire version {}, this agent {VERSION}: their datagrams are dropped \
                 (a majority of one version owns); upgrade every agent to the same vipgate release \
                 (docs/operations.md, \"Upgrades\")",
                bytes[2]
            ),
            DropReason::TimingMismatch => {
                r.name().ok()?;
                r.u64().ok()?;
                let theirs = r.timing().ok()?;
                format!(
                    "{peer} uses lease_ms {} and clock_drift {} ppm, this agent {} and {} ppm: their \
                     datagrams are dropped, since leases counted differently could overlap; give \
                     every agent the same [cluster] lease_ms and clock_drift (docs/operations.md, \
                     \"Changing lease_ms or clock_drift\")",
                    theirs.lease_ms, theirs.drift_ppm, self.timing.lease_ms, self.timing.drift_ppm
                )
            }
            _ => return None,
        };
        Some(Notice { peer, message })
    }

    /// A node reference that must name a member.
    fn required_node(&self, r: &mut Reader<'_>) -> Result<NodeIdx, DropReason> {
        self.node(r.name()?)?.ok_or(DropReason::Malformed)
    }

    fn put_payload(&self, w: &mut Vec<u8>, datagram: &Datagram) {
        let message = match datagram {
            Datagram::Core(m) => m,
            Datagram::Db(d) => return put_db_report(w, d),
        };
        match message {
            Message::Heartbeat(h) => {
                w.extend_from_slice(&h.term.to_be_bytes());
                w.extend_from_slice(&h.seq.to_be_bytes());
                self.put_node(w, h.owner);
                w.push(
                    u8::from(h.lease_claim)
                        | (u8::from(h.eligible) << 1)
                        | (u8::from(h.blocked) << 2)
                        | (u8::from(h.preferred) << 3),
                );
                w.extend_from_slice(&h.position.to_be_bytes());
                w.push(h.priority);
            }
            Message::Ack(a) => {
                w.extend_from_slice(&a.term.to_be_bytes());
                self.put_node(w, Some(a.owner));
                w.extend_from_slice(&a.echo_seq.to_be_bytes());
            }
            Message::VoteRequest(v) => {
                w.extend_from_slice(&v.term.to_be_bytes());
                w.extend_from_slice(&v.position.to_be_bytes());
                w.push(v.priority);
            }
            Message::Vote(v) => {
                w.extend_from_slice(&v.term.to_be_bytes());
                self.put_node(w, Some(v.candidate));
                w.push(u8::from(v.granted));
            }
            Message::Release(r) => {
                w.extend_from_slice(&r.term.to_be_bytes());
                self.put_node(w, r.to);
                w.push(u8::from(r.final_position.is_some()));
                w.extend_from_slice(&r.final_position.unwrap_or(0).to_be_bytes());
                put_name(w, cut_gtid(&r.final_gtid).as_bytes());
            }
        }
    }

    fn payload(&self, kind: u8, r: &mut Reader<'_>) -> Result<Datagram, DropReason> {
        Ok(match kind {
            KIND_DB_REPORT => Datagram::Db(db_report(r)?),
            _ => Datagram::Core(self.core_payload(kind, r)?),
        })
    }

    fn core_payload(&self, kind: u8, r: &mut Reader<'_>) -> Result<Message, DropReason> {
        Ok(match kind {
            KIND_HEARTBEAT => {
                let term = r.u64()?;
                let seq = r.u64()?;
                let owner = self.node(r.name()?)?;
                let flags = r.u8()?;
                if flags & !0b1111 != 0 {
                    return Err(DropReason::Malformed);
                }
                Message::Heartbeat(Heartbeat {
                    term,
                    seq,
                    owner,
                    lease_claim: flags & 1 != 0,
                    eligible: flags & 2 != 0,
                    blocked: flags & 4 != 0,
                    preferred: flags & 8 != 0,
                    position: r.u64()?,
                    priority: r.u8()?,
                })
            }
            KIND_ACK => Message::Ack(Ack {
                term: r.u64()?,
                owner: self.required_node(r)?,
                echo_seq: r.u64()?,
            }),
            KIND_VOTE_REQUEST => Message::VoteRequest(VoteRequest {
                term: r.u64()?,
                position: r.u64()?,
                priority: r.u8()?,
            }),
            KIND_VOTE => Message::Vote(Vote {
                term: r.u64()?,
                candidate: self.required_node(r)?,
                granted: r.bool()?,
            }),
            KIND_RELEASE => {
                let term = r.u64()?;
                let to = self.node(r.name()?)?;
                let has_position = r.bool()?;
                let position = r.u64()?;
                let gtid = r.text(MAX_REPORT_GTID)?;
                Message::Release(Release {
                    term,
                    to,
                    final_position: has_position.then_some(position),
                    final_gtid: String::from_utf8(gtid.to_vec()).map_err(|_| DropReason::Malformed)?,
                })
            }
            _ => return Err(DropReason::Malformed),
        })
    }
}

/// `gtid`, cut at a character boundary to fit [`MAX_REPORT_GTID`] bytes (ending in `…`).
pub fn cut_gtid(gtid: &str) -> std::borrow::Cow<'_, str> {
    if gtid.len() <= MAX_REPORT_GTID {
        return gtid.into();
    }
    let mut end = MAX_REPORT_GTID - '…'.len_utf8();
    while !gtid.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &gtid[..end]).into()
}

fn put_db_report(w: &mut Vec<u8>, d: &DbReport) {
    let flags = u8::from(d.healthy)
        | (u8::from(d.writable) << 1)
        | (u8::from(d.replicating) << 2)
        | (u8::from(d.lag_s.is_some()) << 3)
        | (u8::from(d.follows_owner) << 4)
        | (u8::from(d.database_eligible) << 5);
    w.push(flags);
    w.extend_from_slice(&d.lag_s.unwrap_or(0).to_be_bytes());
    w.extend_from_slice(&d.failover_block_ms.to_be_bytes());
    put_name(w, cut_gtid(&d.gtid).as_bytes());
}

fn db_report(r: &mut Reader<'_>) -> Result<DbReport, DropReason> {
    let flags = r.u8()?;
    if flags & !0b11_1111 != 0 {
        return Err(DropReason::Malformed);
    }
    let lag = r.u32()?;
    let failover_block_ms = r.u32()?;
    let gtid = r.text(MAX_REPORT_GTID)?;
    Ok(DbReport {
        healthy: flags & 1 != 0,
        writable: flags & 2 != 0,
        replicating: flags & 4 != 0,
        lag_s: (flags & 8 != 0).then_some(lag),
        follows_owner: flags & 16 != 0,
        database_eligible: flags & 32 != 0,
        failover_block_ms,
        gtid: String::from_utf8(gtid.to_vec()).map_err(|_| DropReason::Malformed)?,
    })
}

fn kind_of(datagram: &Datagram) -> u8 {
    let message = match datagram {
        Datagram::Core(m) => m,
        Datagram::Db(_) => return KIND_DB_REPORT,
    };
    match message {
        Message::Heartbeat(_) => KIND_HEARTBEAT,
        Message::Ack(_) => KIND_ACK,
        Message::VoteRequest(_) => KIND_VOTE_REQUEST,
        Message::Vote(_) => KIND_VOTE,
        Message::Release(_) => KIND_RELEASE,
    }
}

fn put_name(w: &mut Vec<u8>, name: &[u8]) {
    w.push(name.len() as u8);
    w.extend_from_slice(name);
}

/// A bounds-checked cursor: every read either succeeds or reports truncation.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DropReason> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DropReason::Truncated)?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DropReason> {
        Ok(self.take(1)?[0])
    }

    fn bool(&mut self) -> Result<bool, DropReason> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DropReason::Malformed),
        }
    }

    fn u64(&mut self) -> Result<u64, DropReason> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b.try_into().expect("took 8 bytes")))
    }

    fn u32(&mut self) -> Result<u32, DropReason> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes(b.try_into().expect("took 4 bytes")))
    }

    fn timing(&mut self) -> Result<Timing, DropReason> {
        Ok(Timing {
            lease_ms: self.u32()?,
            drift_ppm: self.u32()?,
        })
    }

    fn name(&mut self) -> Result<&'a [u8], DropReason> {
        self.text(MAX_NAME)
    }

    /// A length-prefixed byte string of at most `max` bytes.
    fn text(&mut self, max: usize) -> Result<&'a [u8], DropReason> {
        let n = usize::from(self.u8()?);
        if n > max {
            return Err(DropReason::Malformed);
        }
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    const TIMING: Timing = Timing {
        lease_ms: 1000,
        drift_ppm: 10_000,
    };

    fn codec(me: NodeIdx) -> Codec {
        Codec::new(
            "prod-eu",
            KEY,
            0x1122_3344_5566_7788,
            TIMING,
            vec!["db1".into(), "db2".into(), "w1".into()],
            me,
        )
    }

    fn heartbeat() -> Datagram {
        Datagram::Core(Message::Heartbeat(Heartbeat {
            term: 7,
            seq: 42,
            owner: Some(0),
            lease_claim: true,
            eligible: true,
            blocked: false,
            preferred: false,
            position: 1000,
            priority: 150,
        }))
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn hmac_sha256_matches_rfc4231_case_2() {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn heartbeat_encodes_to_the_documented_layout() {
        let bytes = codec(0).encode(1, 3, 9, &heartbeat());
        let body = &bytes[..bytes.len() - MAC_LEN];
        let expected = concat!(
            "5647",
            "03",
            "01", // magic, version, kind
            "07",
            "70726f642d6575", // cluster "prod-eu"
            "03",
            "646231", // sender "db1"
            "03",
            "646232",           // recipient "db2"
            "1122334455667788", // membership fingerprint
            "000003e8",         // lease_ms 1000
            "00002710",         // clock drift 10000 ppm
            "0000000000000003", // boot id
            "0000000000000009", // counter
            "0000000000000007", // term
            "000000000000002a", // seq
            "03",
            "646231",           // owner "db1"
            "03",               // lease claim | eligible
            "00000000000003e8", // position
            "96",               // priority 150
        );
        assert_eq!(hex(body), expected);
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(KEY).unwrap();
        mac.update(body);
        assert_eq!(&bytes[body.len()..], mac.finalize().into_bytes().as_slice());
        assert_eq!(bytes.len(), 114);
    }

    #[test]
    fn every_kind_round_trips_between_members() {
        let Datagram::Core(heartbeat) = heartbeat() else {
            unreachable!()
        };
        let msgs = [
            heartbeat,
            Message::Ack(Ack {
                term: 1,
                owner: 0,
                echo_seq: 2,
            }),
            Message::VoteRequest(VoteRequest {
                term: 3,
                position: 4,
                priority: 5,
            }),
            Message::Vote(Vote {
                term: 6,
                candidate: 0,
                granted: true,
            }),
            Message::Release(Release {
                term: 8,
                to: Some(1),
                final_position: Some(9),
                final_gtid: "0-1-9".into(),
            }),
            Message::Release(Release {
                term: 8,
                to: None,
                final_position: None,
                final_gtid: String::new(),
            }),
        ];
        for (i, m) in msgs.iter().enumerate() {
            let m = Datagram::Core(m.clone());
            let env = codec(1).decode(&codec(0).encode(1, 11, i as u64, &m)).unwrap();
            assert_eq!(
                env,
                Envelope {
                    sender: 0,
                    recipient: 1,
                    boot: 11,
                    counter: i as u64,
                    message: m
                }
            );
        }
    }

    #[test]
    fn each_kind_of_bad_datagram_is_dropped_with_its_reason() {
        let good = codec(0).encode(1, 1, 1, &heartbeat());
        let rx = codec(1);
        assert_eq!(rx.decode(&good[..20]), Err(DropReason::Truncated));
        assert_eq!(codec(2).decode(&good), Err(DropReason::Misaddressed));
        assert_eq!(rx.decode(&[0u8; MAX_DATAGRAM + 1]), Err(DropReason::Oversized));
        assert_eq!(rx.decode(b"GET / HTTP/1.1\r\n\r\n"), Err(DropReason::NotVipgate));

        for version in [2, 4] {
            let mut v = good.clone();
            v[2] = version;
            assert_eq!(rx.decode(&v), Err(DropReason::UnknownVersion));
            assert_eq!(
                rx.decode(&v[..10]),
                Err(DropReason::UnknownVersion),
                "a short old datagram"
            );
        }

        let other = Codec::new(
            "prod-us",
            KEY,
            0x1122_3344_5566_7788,
            TIMING,
            vec!["db1".into(), "db2".into()],
            0,
        );
        assert_eq!(
            rx.decode(&other.encode(1, 1, 1, &heartbeat())),
            Err(DropReason::WrongCluster)
        );

        let forged = Codec::new(
            "prod-eu",
            b"not the cluster key, but long enough",
            0x1122_3344_5566_7788,
            TIMING,
            vec!["db1".into(), "db2".into(), "w1".into()],
            0,
        );
        assert_eq!(
            rx.decode(&forged.encode(1, 1, 1, &heartbeat())),
            Err(DropReason::BadMac)
        );

        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(rx.decode(&flipped), Err(DropReason::BadMac));
        let mut flipped = good.clone();
        flipped[30] ^= 1;
        assert_eq!(rx.decode(&flipped), Err(DropReason::BadMac));

        let mismatched = Codec::new(
            "prod-eu",
            KEY,
            1,
            TIMING,
            vec!["db1".into(), "db2".into(), "w1".into()],
            0,
        );
        assert_eq!(
            rx.decode(&mismatched.encode(1, 1, 1, &heartbeat())),
            Err(DropReason::MembershipMismatch)
        );
        for timing in [
            Timing {
                lease_ms: 3000,
                ..TIMING
            },
            Timing {
                drift_ppm: 1,
                ..TIMING
            },
        ] {
            let mixed = Codec::new(
                "prod-eu",
                KEY,
                0x1122_3344_5566_7788,
                timing,
                vec!["db1".into(), "db2".into(), "w1".into()],
                0,
            );
            assert_eq!(
                rx.decode(&mixed.encode(1, 1, 1, &heartbeat())),
                Err(DropReason::TimingMismatch)
            );
        }

        let stranger = Codec::new(
            "prod-eu",
            KEY,
            0x1122_3344_5566_7788,
            TIMING,
            vec!["db9".into(), "db2".into()],
            0,
        );
        assert_eq!(
            rx.decode(&stranger.encode(1, 1, 1, &heartbeat())),
            Err(DropReason::UnknownSender)
        );
        assert_eq!(
            codec(0).decode(&good),
            Err(DropReason::UnknownSender),
            "own datagrams looped back"
        );
    }

    #[test]
    fn authenticated_garbage_is_malformed_not_a_panic() {
        let tx = codec(0);
        let mut body = tx.encode(
            1,
            1,
            1,
            &Datagram::Core(Message::Vote(Vote {
                term: 1,
                candidate: 1,
                granted: true,
            })),
        );
        body.truncate(body.len() - MAC_LEN);
        let seal = |mut b: Vec<u8>| {
            let mut mac = tx.mac.clone();
            mac.update(&b);
            b.extend_from_slice(&mac.finalize().into_bytes());
            b
        };
        let mut bad_bool = body.clone();
        *bad_bool.last_mut().unwrap() = 2;
        assert_eq!(codec(1).decode(&seal(bad_bool)), Err(DropReason::Malformed));
        let mut trailing = body.clone();
        trailing.push(0);
        assert_eq!(codec(1).decode(&seal(trailing)), Err(DropReason::Malformed));
        let mut bad_kind = body.clone();
        bad_kind[3] = 99;
        assert_eq!(codec(1).decode(&seal(bad_kind)), Err(DropReason::Malformed));
        let mut short = body.clone();
        short.pop();
        assert_eq!(codec(1).decode(&seal(short)), Err(DropReason::Truncated));
    }

    #[test]
    fn the_largest_datagram_fits_and_long_gtids_are_cut() {
        let long = "x".repeat(MAX_NAME);
        let ids = vec![format!("a{}", &long[1..]), format!("b{}", &long[1..])];
        let tx = Codec::new(&long, b"k", 7, TIMING, ids.clone(), 0);
        let gtid = "0-1-1,".repeat(100);
        let report = Datagram::Db(DbReport {
            healthy: true,
            writable: false,
            replicating: true,
            lag_s: Some(3),
            follows_owner: true,
            database_eligible: true,
            failover_block_ms: 1,
            gtid: gtid.clone(),
        });
        let bytes = tx.encode(1, u64::MAX, u64::MAX, &report);
        assert_eq!(bytes.len(), 4 + 3 * 65 + 32 + 10 + MAX_REPORT_GTID + MAC_LEN);
        assert!(bytes.len() <= MAX_DATAGRAM);
        let rx = Codec::new(&long, b"k", 7, TIMING, ids, 1);
        let Datagram::Db(got) = rx.decode(&bytes).unwrap().message else {
            panic!("not a db report")
        };
        assert_eq!(got.gtid.len(), MAX_REPORT_GTID);
        assert!(got.gtid.ends_with('…') && gtid.starts_with(got.gtid.trim_end_matches('…')));
        assert_eq!(cut_gtid("0-1-5"), "0-1-5");
    }

    fn node() -> impl Strategy<Value = Option<NodeIdx>> {
        proptest::option::of(0u8..3)
    }

    fn message() -> impl Strategy<Value = Datagram> {
        let core = prop_oneof![
            (
                any::<u64>(),
                any::<u64>(),
                node(),
                any::<[bool; 4]>(),
                any::<u64>(),
                any::<u8>()
            )
                .prop_map(
                    |(term, seq, owner, [lease_claim, eligible, blocked, preferred], position, priority)| {
                        Message::Heartbeat(Heartbeat {
                            term,
                            seq,
                            owner,
                            lease_claim,
                            eligible,
                            blocked,
                            preferred,
                            position,
                            priority,
                        })
                    }
                ),
            (any::<u64>(), 0u8..3, any::<u64>()).prop_map(|(term, owner, echo_seq)| Message::Ack(Ack {
                term,
                owner,
                echo_seq
            })),
            (any::<u64>(), any::<u64>(), any::<u8>()).prop_map(|(term, position, priority)| {
                Message::VoteRequest(VoteRequest {
                    term,
                    position,
                    priority,
                })
            }),
            (any::<u64>(), 0u8..3, any::<bool>()).prop_map(|(term, candidate, granted)| Message::Vote(
                Vote {
                    term,
                    candidate,
                    granted
                }
            )),
            (
                any::<u64>(),
                node(),
                proptest::option::of(any::<u64>()),
                "[0-9a-f:,-]{0,200}"
            )
                .prop_map(
                    |(term, to, final_position, final_gtid)| Message::Release(Release {
                        term,
                        to,
                        final_position,
                        final_gtid
                    })
                ),
        ];
        let db = (
            any::<[bool; 5]>(),
            proptest::option::of(any::<u32>()),
            any::<u32>(),
            "[0-9a-f:,-]{0,200}",
        )
            .prop_map(
                |(
                    [healthy, writable, replicating, follows_owner, database_eligible],
                    lag_s,
                    failover_block_ms,
                    gtid,
                )| {
                    DbReport {
                        healthy,
                        writable,
                        replicating,
                        lag_s,
                        follows_owner,
                        database_eligible,
                        failover_block_ms,
                        gtid,
                    }
                },
            );
        prop_oneof![core.prop_map(Datagram::Core), db.prop_map(Datagram::Db)]
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(m in message(), boot: u64, counter: u64, from in 0u8..3, to in 0u8..3) {
            prop_assume!(from != to);
            let env = codec(to).decode(&codec(from).encode(to, boot, counter, &m)).unwrap();
            prop_assert_eq!(env, Envelope { sender: from, recipient: to, boot, counter, message: m });
        }

        #[test]
        fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = codec(1).decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_authenticated_arbitrary_payloads(
            kind: u8, payload in proptest::collection::vec(any::<u8>(), 0..120)
        ) {
            let tx = codec(0);
            let mut b = tx.encode(1, 1, 1, &Datagram::Core(Message::Ack(Ack { term: 0, owner: 1, echo_seq: 0 })));
            b.truncate(4 + 8 + 4 + 4 + 8 + 8 + 16);
            b[3] = kind;
            b.extend_from_slice(&payload);
            let mut mac = tx.mac.clone();
            mac.update(&b);
            b.extend_from_slice(&mac.finalize().into_bytes());
            let _ = codec(1).decode(&b);
        }
    }
}
