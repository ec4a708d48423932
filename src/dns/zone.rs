//! The zone's contents and the answer to one question: pure, so every rule is unit-tested.
//!
//! Static names — the apex (SOA, NS) and `<node>.<zone>` (glue A/AAAA of every agent that
//! serves DNS) — are answered by any agent. The live names — `<record>.<zone>` (the owner's
//! VIPs, or its own address) and `_owner.<zone>` (TXT: owner and term) — only by an agent that
//! knows the owner with quorum; any other gets SERVFAIL, so resolvers ask another name server
//! instead of caching a stale primary.

use crate::config::Config;
use crate::core::{NodeIdx, Term};
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::{A, AAAA, HINFO, NS, SOA, TXT};
use hickory_server::proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use std::net::IpAddr;
use std::str::FromStr;

/// The owner an agent knows with quorum, as the DNS answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub node: NodeIdx,
    pub term: Term,
}

/// One response's sections.
#[derive(Debug, Default, PartialEq)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub authoritative: bool,
    pub answers: Vec<Record>,
    pub additionals: Vec<Record>,
    /// The SOA, in the authority section of negative answers.
    pub soa: Vec<Record>,
}

pub struct Zone {
    origin: LowerName,
    origin_name: Name,
    ttl: u32,
    soa: SOA,
    minimum: u32,
    ns: Vec<Record>,
    /// `<node>.<zone>` and its addresses, for every agent that serves DNS.
    glue: Vec<(LowerName, Vec<Record>)>,
    primary: LowerName,
    primary_name: Name,
    owner_txt: LowerName,
    owner_txt_name: Name,
    /// Per node: what the primary record holds while it owns.
    addresses: Vec<Vec<IpAddr>>,
    ids: Vec<String>,
}

fn name(text: &str) -> Name {
    Name::from_str(text).expect("names are validated with the configuration")
}

fn address_record(owner: &Name, ttl: u32, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(v4) => Record::from_rdata(owner.clone(), ttl, RData::A(A(v4))),
        IpAddr::V6(v6) => Record::from_rdata(owner.clone(), ttl, RData::AAAA(AAAA(v6))),
    }
}

impl Zone {
    /// The zone of a configuration with `[dns]`.
    pub fn new(config: &Config) -> Option<Zone> {
        let dns = config.dns.as_ref()?;
        let origin_name = name(&dns.zone);
        let servers: Vec<_> = config.nodes.iter().filter(|n| !n.dns.is_empty()).collect();
        let glue: Vec<(LowerName, Vec<Record>)> = servers
            .iter()
            .map(|n| {
                let host = name(&format!("{}.{}", n.id.to_ascii_lowercase(), dns.zone));
                let records = n
                    .dns
                    .iter()
                    .map(|ip| address_record(&host, dns.ttl, *ip))
                    .collect();
                (LowerName::new(&host), records)
            })
            .collect();
        let ns = glue
            .iter()
            .map(|(host, _)| {
                Record::from_rdata(origin_name.clone(), dns.ttl, RData::NS(NS(Name::from(host))))
            })
            .collect();
        let addresses = (0..config.nodes.len())
            .map(|i| config.primary_addresses(i as NodeIdx))
            .collect();
        let primary_name = name(&format!("{}.{}", dns.record, dns.zone));
        let owner_txt_name = name(&format!("_owner.{}", dns.zone));
        Some(Zone {
            origin: LowerName::new(&origin_name),
            soa: SOA::new(
                name(&dns.mname),
                name(&dns.rname),
                0,
                dns.refresh as i32,
                dns.retry as i32,
                dns.expire as i32,
                dns.minimum,
            ),
            origin_name,
            ttl: dns.ttl,
            minimum: dns.minimum,
            ns,
            glue,
            primary: LowerName::new(&primary_name),
            primary_name,
            owner_txt: LowerName::new(&owner_txt_name),
            owner_txt_name,
            addresses,
            ids: config.nodes.iter().map(|n| n.id.clone()).collect(),
        })
    }

    /// The SOA record with `serial`; its TTL is `minimum`, which bounds negative caching.
    fn soa(&self, serial: u32) -> Record {
        let mut soa = self.soa.clone();
        soa.serial = serial;
        Record::from_rdata(self.origin_name.clone(), self.minimum, RData::SOA(soa))
    }

    /// The records of `qname`, or `None` if this agent cannot say (a live name without a
    /// quorate owner), or `Some(None)` if the name does not exist.
    fn records(&self, qname: &LowerName, owner: Option<Owner>, serial: u32) -> Option<Option<Vec<Record>>> {
        if *qname == self.origin {
            let mut all = vec![self.soa(serial)];
            all.extend(self.ns.iter().cloned());
            return Some(Some(all));
        }
        if *qname == self.primary {
            let owner = owner?;
            let records = self.addresses[usize::from(owner.node)]
                .iter()
                .map(|ip| address_record(&self.primary_name, self.ttl, *ip))
                .collect();
            return Some(Some(records));
        }
        if *qname == self.owner_txt {
            let owner = owner?;
            let text = format!("owner={} term={}", self.ids[usize::from(owner.node)], owner.term);
            let txt = Record::from_rdata(
                self.owner_txt_name.clone(),
                self.ttl,
                RData::TXT(TXT::new(vec![text])),
            );
            return Some(Some(vec![txt]));
        }
        if let Some((_, records)) = self.glue.iter().find(|(host, _)| host == qname) {
            return Some(Some(records.clone()));
        }
        // A name above others (an empty non-terminal) exists, with no records.
        let above = self
            .glue
            .iter()
            .map(|(host, _)| host)
            .chain([&self.primary, &self.owner_txt])
            .any(|n| qname.zone_of(n));
        Some(above.then(Vec::new))
    }

    /// The answer to one question. `owner`: the owner this agent knows with quorum, if any;
    /// `serial`: the SOA serial to publish.
    /// RFC 8482: an ANY query for a name that exists gets one synthesized HINFO record, not
    /// every record set — ANY serves no client and would make the agent an amplifier.
    fn minimal_any(&self, qname: &LowerName) -> Answer {
        let hinfo = RData::HINFO(HINFO::new("RFC8482".into(), String::new()));
        Answer {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers: vec![Record::from_rdata(Name::from(qname.clone()), self.ttl, hinfo)],
            ..Answer::default()
        }
    }

    pub fn answer(
        &self,
        qname: &LowerName,
        qtype: RecordType,
        qclass: DNSClass,
        owner: Option<Owner>,
        serial: u32,
    ) -> Answer {
        let refused = Answer {
            rcode: ResponseCode::Refused,
            ..Answer::default()
        };
        if !matches!(qclass, DNSClass::IN | DNSClass::ANY) || !self.origin.zone_of(qname) {
            return refused;
        }
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            // No zone transfers: every agent serves the zone itself.
            return refused;
        }
        let Some(records) = self.records(qname, owner, serial) else {
            return Answer {
                rcode: ResponseCode::ServFail,
                ..Answer::default()
            };
        };
        let Some(records) = records else {
            return Answer {
                rcode: ResponseCode::NXDomain,
                authoritative: true,
                soa: vec![self.soa(serial)],
                ..Answer::default()
            };
        };
        if qtype == RecordType::ANY {
            return self.minimal_any(qname);
        }
        let answers: Vec<Record> = records.into_iter().filter(|r| r.record_type() == qtype).collect();
        if answers.is_empty() {
            return Answer {
                rcode: ResponseCode::NoError,
                authoritative: true,
                soa: vec![self.soa(serial)],
                ..Answer::default()
            };
        }
        // Name servers come with their addresses.
        let additionals = answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::NS(NS(host)) => Some(LowerName::new(host)),
                _ => None,
            })
            .flat_map(|host| {
                self.glue
                    .iter()
                    .filter(move |(h, _)| *h == host)
                    .flat_map(|(_, records)| records.iter().cloned())
            })
            .collect();
        Answer {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers,
            additionals,
            soa: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        Config::parse(
            Path::new("/etc/vipgate/vipgate.toml"),
            &format!(
                r#"
[cluster]
name = "lab"
secret_file = "secret"
[[node]]
id = "db1"
address = "192.0.2.11"
region = "a"
[[node]]
id = "db2"
address = "198.51.100.12"
region = "b"
[[node]]
id = "w1"
address = "203.0.113.13"
witness = true
[[vip]]
address = "192.0.2.50/24"
interface = "eth0"
region = "a"
[[vip]]
address = "2001:db8::50/64"
interface = "eth0"
region = "a"
[dns]
zone = "db.example.test."
ttl = 7
{extra}
"#
            ),
        )
        .unwrap()
    }

    fn q(zone: &Zone, qname: &str, qtype: RecordType, owner: Option<Owner>) -> Answer {
        zone.answer(
            &LowerName::from_str(qname).unwrap(),
            qtype,
            DNSClass::IN,
            owner,
            42,
        )
    }

    fn data(a: &Answer) -> Vec<String> {
        a.answers.iter().map(|r| r.data.to_string()).collect()
    }

    const DB1: Option<Owner> = Some(Owner { node: 0, term: 9 });
    const DB2: Option<Owner> = Some(Owner { node: 1, term: 10 });

    #[test]
    fn the_primary_record_is_the_owner_regions_vip_or_its_own_address() {
        let zone = Zone::new(&config("")).unwrap();
        let a = q(&zone, "primary.db.example.test.", RecordType::A, DB1);
        assert_eq!((a.rcode, a.authoritative), (ResponseCode::NoError, true));
        assert_eq!(data(&a), ["192.0.2.50"]);
        assert_eq!(a.answers[0].ttl, 7);
        let a = q(&zone, "PRIMARY.db.example.test.", RecordType::AAAA, DB1);
        assert_eq!(data(&a), ["2001:db8::50"]);
        // Region b has no VIP: db2's own address.
        let a = q(&zone, "primary.db.example.test.", RecordType::A, DB2);
        assert_eq!(data(&a), ["198.51.100.12"]);
        // ... and no IPv6 address: NODATA, with the SOA.
        let a = q(&zone, "primary.db.example.test.", RecordType::AAAA, DB2);
        assert_eq!(
            (a.rcode, a.answers.len(), a.soa.len()),
            (ResponseCode::NoError, 0, 1)
        );
        let a = q(&zone, "_owner.db.example.test.", RecordType::TXT, DB2);
        assert_eq!(data(&a), ["owner=db2 term=10"]);
    }

    #[test]
    fn without_a_quorate_owner_the_live_names_fail_and_the_static_ones_answer() {
        let zone = Zone::new(&config("")).unwrap();
        for (name, qtype) in [
            ("primary.db.example.test.", RecordType::A),
            ("primary.db.example.test.", RecordType::MX),
            ("_owner.db.example.test.", RecordType::TXT),
        ] {
            let a = q(&zone, name, qtype, None);
            assert_eq!((a.rcode, a.answers.len()), (ResponseCode::ServFail, 0), "{name}");
        }
        let a = q(&zone, "db.example.test.", RecordType::SOA, None);
        assert_eq!(a.answers.len(), 1);
        let RData::SOA(soa) = &a.answers[0].data else {
            panic!()
        };
        assert_eq!(soa.serial, 42);
        assert_eq!(soa.mname.to_string(), "db1.db.example.test.");
        let a = q(&zone, "db.example.test.", RecordType::NS, None);
        assert_eq!(
            data(&a),
            [
                "db1.db.example.test.",
                "db2.db.example.test.",
                "w1.db.example.test."
            ]
        );
        // Glue comes along.
        let glue: Vec<String> = a.additionals.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(glue, ["192.0.2.11", "198.51.100.12", "203.0.113.13"]);
        let a = q(&zone, "w1.db.example.test.", RecordType::A, None);
        assert_eq!(data(&a), ["203.0.113.13"]);
    }

    #[test]
    fn other_names_classes_and_zones_get_the_right_errors() {
        let zone = Zone::new(&config("")).unwrap();
        let a = q(&zone, "nothing.db.example.test.", RecordType::A, DB1);
        assert_eq!(
            (a.rcode, a.authoritative, a.soa.len()),
            (ResponseCode::NXDomain, true, 1)
        );
        assert_eq!(a.soa[0].ttl, 5, "negative answers are cached for minimum");
        let a = q(&zone, "www.example.test.", RecordType::A, DB1);
        assert_eq!((a.rcode, a.authoritative), (ResponseCode::Refused, false));
        let a = q(&zone, "db.example.test.", RecordType::AXFR, DB1);
        assert_eq!(a.rcode, ResponseCode::Refused);
        let a = zone.answer(
            &LowerName::from_str("primary.db.example.test.").unwrap(),
            RecordType::A,
            DNSClass::CH,
            DB1,
            1,
        );
        assert_eq!(a.rcode, ResponseCode::Refused);
        // ANY gets the minimal answer of RFC 8482, at the apex too; a missing name stays missing.
        for name in ["primary.db.example.test.", "db.example.test."] {
            let a = q(&zone, name, RecordType::ANY, DB1);
            assert_eq!((a.rcode, a.answers.len()), (ResponseCode::NoError, 1), "{name}");
            assert_eq!(a.answers[0].record_type(), RecordType::HINFO);
            assert!(a.additionals.is_empty() && a.soa.is_empty());
        }
        let a = q(&zone, "nothing.db.example.test.", RecordType::ANY, DB1);
        assert_eq!(a.rcode, ResponseCode::NXDomain);
    }

    #[test]
    fn a_dotted_node_id_makes_an_empty_non_terminal() {
        let c = config("").clone();
        let mut c = c;
        c.nodes[2].id = "w1.site".into();
        let zone = Zone::new(&c).unwrap();
        let a = q(&zone, "site.db.example.test.", RecordType::A, DB1);
        assert_eq!((a.rcode, a.answers.len()), (ResponseCode::NoError, 0));
        let a = q(&zone, "w1.site.db.example.test.", RecordType::A, DB1);
        assert_eq!(data(&a), ["203.0.113.13"]);
    }
}
