//! RFC 2136 updates of an existing DNS server (`[dns.update]`), signed with TSIG HMAC-SHA256
//! (RFC 8945), for zones that cannot be delegated to the agents.
//!
//! The owner replaces the address records of `record` and the TXT record `_owner.<record>`
//! (`owner=<id> term=<term>`) in one update whose prerequisites are exactly what it read just
//! before: a compare-and-swap. A stale owner therefore cannot overwrite a newer one — its
//! prerequisite fails (NXRRSET) — and an owner never writes over a TXT record naming a newer
//! term.

use crate::config::Update;
use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::FirstAnswer;
use hickory_net::{DnsHandle, NetError};
use hickory_proto::op::{DnsRequest, Edns, Message, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::rdata::{A, AAAA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

/// Bound on one exchange with the server.
const TIMEOUT: Duration = Duration::from_secs(2);
/// TSIG time fudge, seconds (the usual 300).
const FUDGE: u16 = 300;

/// What the server holds now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Current {
    /// A and AAAA of `record`, sorted.
    pub addresses: Vec<IpAddr>,
    /// The TXT records of `_owner.<record>`, as the server holds them (the compare-and-swap
    /// repeats them exactly).
    pub txt: Vec<TXT>,
}

impl Current {
    /// The owner text, when there is exactly one TXT record.
    pub fn owner(&self) -> Option<String> {
        match self.txt.as_slice() {
            [one] => Some(
                one.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            ),
            _ => None,
        }
    }

    /// The term the TXT record names, if it names one.
    pub fn term(&self) -> Option<u64> {
        self.owner()?
            .split_whitespace()
            .find_map(|w| w.strip_prefix("term="))?
            .parse()
            .ok()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("TSIG rejected: check [dns.update] key_name and the key file against the server's key ({0})")]
    Tsig(String),
    #[error("the records changed since they were read (prerequisite failed: {0})")]
    Stale(String),
    #[error(
        "the server refused the update ({0}): check its allow-update / update-policy for this key and zone"
    )]
    Refused(String),
    #[error("no answer from the server: {0}")]
    Unreachable(String),
}

pub struct Updater {
    update: Update,
    zone: Name,
    record: Name,
    owner_txt: Name,
    signer: TSigner,
}

fn name(text: &str) -> Name {
    Name::from_str(text).expect("names are validated with the configuration")
}

impl Updater {
    pub fn new(update: &Update, key: &[u8]) -> Result<Updater, String> {
        let signer = TSigner::new(
            key.to_vec(),
            TsigAlgorithm::HmacSha256,
            name(&update.key_name),
            FUDGE,
        )
        .map_err(|e| format!("cannot use the TSIG key: {e}"))?;
        Ok(Updater {
            zone: name(&update.zone),
            record: name(&update.record),
            owner_txt: name(&format!("_owner.{}", update.record)),
            update: update.clone(),
            signer,
        })
    }

    fn client(&self) -> Client<TokioRuntimeProvider> {
        let stream = UdpClientStream::builder(self.update.server, TokioRuntimeProvider::new())
            .with_timeout(Some(TIMEOUT))
            .with_signer(Some(self.signer.clone()))
            .build();
        let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
        tokio::spawn(background);
        client
    }

    fn error(e: NetError) -> Error {
        let text = e.to_string();
        if text.contains("truncated HMAC") {
            // hickory's words for a reply with an empty MAC: what a server sends back (BADKEY,
            // BADSIG) when it does not know the key or the secret differs.
            Error::Tsig(
                "the server's reply carries no signature: it does not know this key, or the secret differs"
                    .into(),
            )
        } else if text.contains("HMAC") || text.contains("TSIG") || text.contains("tsig") {
            Error::Tsig(text)
        } else {
            Error::Unreachable(text)
        }
    }

    fn check(code: ResponseCode) -> Result<(), Error> {
        match code {
            ResponseCode::NoError => Ok(()),
            ResponseCode::NotAuth | ResponseCode::BADSIG | ResponseCode::BADKEY | ResponseCode::BADTIME => {
                Err(Error::Tsig(code.to_string()))
            }
            ResponseCode::NXRRSet
            | ResponseCode::YXRRSet
            | ResponseCode::YXDomain
            | ResponseCode::NXDomain => Err(Error::Stale(code.to_string())),
            other => Err(Error::Refused(other.to_string())),
        }
    }

    /// Reads the address records and the owner TXT record.
    pub async fn read(&self) -> Result<Current, Error> {
        let mut client = self.client();
        let mut current = Current::default();
        for (owner, qtype) in [
            (&self.record, RecordType::A),
            (&self.record, RecordType::AAAA),
            (&self.owner_txt, RecordType::TXT),
        ] {
            let response = client
                .query(owner.clone(), DNSClass::IN, qtype)
                .await
                .map_err(Self::error)?;
            match response.response_code {
                ResponseCode::NoError | ResponseCode::NXDomain => {}
                code => Self::check(code)?,
            }
            for r in response.answers.iter().filter(|r| r.name == *owner) {
                match &r.data {
                    RData::A(A(v4)) => current.addresses.push(IpAddr::V4(*v4)),
                    RData::AAAA(AAAA(v6)) => current.addresses.push(IpAddr::V6(*v6)),
                    RData::TXT(txt) => current.txt.push(txt.clone()),
                    _ => {}
                }
            }
        }
        current.addresses.sort();
        Ok(current)
    }

    /// Replaces the records with `addresses` and `owner`, if the server still holds exactly
    /// `current`.
    pub async fn replace(&self, current: &Current, addresses: &[IpAddr], owner: &str) -> Result<(), Error> {
        let mut message = Message::query();
        message.metadata.op_code = OpCode::Update;
        message.metadata.recursion_desired = false;
        let mut zone = Query::query(self.zone.clone(), RecordType::SOA);
        zone.set_query_class(DNSClass::IN);
        message.add_zone(zone);
        let record = |owner: &Name, ttl: u32, data: RData| Record::from_rdata(owner.clone(), ttl, data);
        let address = |ip: &IpAddr, ttl: u32| match ip {
            IpAddr::V4(v4) => record(&self.record, ttl, RData::A(A(*v4))),
            IpAddr::V6(v6) => record(&self.record, ttl, RData::AAAA(AAAA(*v6))),
        };
        let txt = |data: TXT, ttl: u32| record(&self.owner_txt, ttl, RData::TXT(data));
        // Prerequisites (RFC 2136 2.4): each rrset holds exactly what was read (value-dependent),
        // or does not exist.
        let absent = |owner: &Name, rtype: RecordType| {
            let mut r = Record::update0(owner.clone(), 0, rtype);
            r.dns_class = DNSClass::NONE;
            r
        };
        for (rtype, v6) in [(RecordType::A, false), (RecordType::AAAA, true)] {
            let held: Vec<&IpAddr> = current.addresses.iter().filter(|ip| ip.is_ipv6() == v6).collect();
            if held.is_empty() {
                message.add_pre_requisite(absent(&self.record, rtype));
            } else {
                for ip in held {
                    message.add_pre_requisite(address(ip, 0));
                }
            }
        }
        if current.txt.is_empty() {
            message.add_pre_requisite(absent(&self.owner_txt, RecordType::TXT));
        }
        for held in &current.txt {
            message.add_pre_requisite(txt(held.clone(), 0));
        }
        // Updates (2.5): delete the rrsets, add the new records.
        for (owner, rtype) in [
            (&self.record, RecordType::A),
            (&self.record, RecordType::AAAA),
            (&self.owner_txt, RecordType::TXT),
        ] {
            let mut delete = Record::update0(owner.clone(), 0, rtype);
            delete.dns_class = DNSClass::ANY;
            message.add_update(delete);
        }
        for ip in addresses {
            message.add_update(address(ip, self.update.ttl));
        }
        message.add_update(txt(TXT::new(vec![owner.to_string()]), self.update.ttl));
        message
            .edns
            .get_or_insert_with(Edns::new)
            .set_max_payload(1232)
            .set_version(0);
        let response = self
            .client()
            .send(DnsRequest::from(message))
            .first_answer()
            .await
            .map_err(Self::error)?;
        Self::check(response.response_code)
    }
}

#[cfg(test)]
mod tests {
    use super::{Current, TXT};

    fn current(txt: &[&[&str]]) -> Current {
        Current {
            addresses: Vec::new(),
            txt: txt
                .iter()
                .map(|strings| TXT::new(strings.iter().map(|s| s.to_string()).collect()))
                .collect(),
        }
    }

    #[test]
    fn the_term_is_read_from_a_single_owner_record() {
        assert_eq!(current(&[&["owner=db2 term=17"]]).term(), Some(17));
        assert_eq!(current(&[&["owner=db2 ", "term=18"]]).term(), Some(18));
        assert_eq!(Current::default().term(), None);
        assert_eq!(current(&[&["set by hand"]]).term(), None);
        assert_eq!(current(&[&["term=1"], &["term=2"]]).owner(), None);
    }
}
