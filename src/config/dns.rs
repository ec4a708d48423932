//! `[dns]`: the zone every agent serves authoritatively; its primary record follows the owner.

use super::{Problems, Seg};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    zone: String,
    #[serde(default = "default_record")]
    record: String,
    #[serde(default = "default_ttl")]
    ttl: i64,
    #[serde(default = "default_port")]
    port: i64,
    mname: Option<String>,
    rname: Option<String>,
    #[serde(default = "default_refresh")]
    refresh: i64,
    #[serde(default = "default_retry")]
    retry: i64,
    #[serde(default = "default_expire")]
    expire: i64,
    #[serde(default = "default_minimum")]
    minimum: i64,
    #[serde(default = "default_rate_limit")]
    rate_limit: i64,
    update: Option<RawUpdate>,
}

fn default_rate_limit() -> i64 {
    100
}

/// `[dns.update]`: RFC 2136 updates of an existing DNS server's zone, signed with TSIG.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpdate {
    server: String,
    zone: String,
    record: Option<String>,
    ttl: Option<i64>,
    key_name: String,
    key_file: PathBuf,
}

impl RawDns {
    /// Whether RFC 2136 updates are configured (then no agent needs to serve DNS itself).
    pub(super) fn pushes(&self) -> bool {
        self.update.is_some()
    }
}

fn default_record() -> String {
    "primary".into()
}
fn default_ttl() -> i64 {
    5
}
fn default_port() -> i64 {
    53
}
fn default_refresh() -> i64 {
    3600
}
fn default_retry() -> i64 {
    600
}
fn default_expire() -> i64 {
    86_400
}
fn default_minimum() -> i64 {
    5
}

/// Longest negative-caching time allowed: a resolver that cached "no such name" must not keep
/// clients away from the primary record for long.
const MAX_MINIMUM: i64 = 300;

/// The zone, with absolute lower-case names (ending in a dot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dns {
    pub zone: String,
    /// The primary record's own label, e.g. `primary` for `primary.<zone>`.
    pub record: String,
    /// Seconds, for every record but the SOA (which uses `minimum`).
    pub ttl: u32,
    pub port: u16,
    pub mname: String,
    pub rname: String,
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    pub minimum: u32,
    /// UDP answers per second to one source (an IPv4 /24 or IPv6 /56); 0: no limit.
    pub rate_limit: u32,
    pub update: Option<Update>,
}

/// Where and how the owner pushes its address (RFC 2136, TSIG HMAC-SHA256).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// The zone's primary server.
    pub server: SocketAddr,
    pub zone: String,
    /// The address record's name (absolute, inside `zone`); the owner TXT record is
    /// `_owner.<record>`.
    pub record: String,
    pub ttl: u32,
    pub key_name: String,
    /// The TSIG secret, base64 as BIND's `tsig-keygen` writes it; owner-only permissions.
    pub key_file: PathBuf,
}

/// `label` is one DNS label: 1–63 letters, digits, '-' or '_' (lower-cased by the caller).
pub(super) fn valid_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `name` lower-cased and made absolute, if every label is valid and it fits in 253 bytes.
pub(super) fn absolute_name(name: &str) -> Option<String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    (name.len() <= 253 && name.split('.').all(valid_label)).then(|| format!("{name}."))
}

/// Names the agents build inside `zone` (`<record>`, `_owner`, one per serving node) must fit
/// a DNS name: at most 253 characters, 255 bytes on the wire.
fn check_names_fit(raw: &RawDns, zone: &str, record: &str, servers: &[String], p: &mut Problems<'_>) {
    let room = 253usize.saturating_sub(zone.trim_end_matches('.').len() + 1);
    let mut built = vec![("record", record), ("zone", "_owner")];
    if raw.rname.is_none() {
        built.push(("zone", "hostmaster"));
    }
    for (key, label) in built {
        if label.len() > room {
            p.add(
                &[Seg::Key("dns"), Seg::Key(key)],
                format!("{label}.{zone} is longer than a DNS name may be (253 characters)"),
                "use a shorter zone or record label",
            );
        }
    }
    for id in servers.iter().filter(|id| id.len() > room) {
        p.add(
            &[Seg::Key("dns"), Seg::Key("zone")],
            format!("node {id}'s name server {id}.{zone} is longer than a DNS name may be (253 characters)"),
            "use a shorter zone, or a shorter node id",
        );
    }
}

/// The primary record's own label: one DNS label, not one of vipgate's own names.
fn validate_record(raw: &RawDns, p: &mut Problems<'_>) -> String {
    let at = [Seg::Key("dns"), Seg::Key("record")];
    let record = raw.record.to_ascii_lowercase();
    if !valid_label(&record) {
        p.add(
            &at,
            format!("{:?} is not a single DNS label", raw.record),
            "use a label such as \"primary\": clients resolve <record>.<zone>",
        );
    }
    if record.starts_with('_') {
        p.add(
            &at,
            format!(
                "{:?} clashes with the names vipgate keeps for itself (_owner)",
                raw.record
            ),
            "use a label without a leading underscore",
        );
    }
    record
}

/// The port to serve on, and the UDP answers per second per source network.
fn validate_port_and_rate(raw: &RawDns, p: &mut Problems<'_>) -> (Option<u16>, u32) {
    let at = |k| [Seg::Key("dns"), Seg::Key(k)];
    let rate_limit = u32::try_from(raw.rate_limit).unwrap_or_else(|_| {
        p.add(
            &at("rate_limit"),
            format!("{} is not a number of answers per second", raw.rate_limit),
            "use e.g. 100 (the default; resolvers cache the records for ttl), or 0 for no limit",
        );
        0
    });
    let port = u16::try_from(raw.port).ok().filter(|p| *p > 0);
    if port.is_none() {
        p.add(
            &at("port"),
            format!("{} is not a port", raw.port),
            "use 53 (the default), or another port for a test",
        );
    }
    (port, rate_limit)
}

pub(super) fn validate(
    raw: &RawDns,
    servers: &[String],
    first_server: Option<&str>,
    base: &Path,
    p: &mut Problems<'_>,
) -> Option<Dns> {
    let at = |k| [Seg::Key("dns"), Seg::Key(k)];
    let zone = absolute_name(&raw.zone);
    if zone.is_none() {
        p.add(
            &at("zone"),
            format!("{:?} is not a domain name", raw.zone),
            "name the zone delegated to the agents, e.g. \"db.example.test.\"",
        );
    }
    let record = validate_record(raw, p);
    let [ttl, refresh, retry, expire, minimum] = soa_timers(raw, p);
    let (port, rate_limit) = validate_port_and_rate(raw, p);
    let zone = zone?;
    check_names_fit(raw, &zone, &record, servers, p);
    let mname = soa_name(
        p,
        "mname",
        &raw.mname,
        first_server.map(|id| format!("{id}.{zone}")),
    );
    let rname = soa_name(p, "rname", &raw.rname, Some(format!("hostmaster.{zone}")));
    let update = match &raw.update {
        Some(u) => Some(validate_update(u, &record, ttl, base, p)?),
        None => None,
    };
    Some(Dns {
        zone,
        record,
        ttl,
        port: port?,
        mname: mname?,
        rname: rname?,
        refresh,
        retry,
        expire,
        minimum,
        rate_limit,
        update,
    })
}

/// The record TTL and the SOA's refresh, retry, expire and minimum, in seconds.
fn soa_timers(raw: &RawDns, p: &mut Problems<'_>) -> [u32; 5] {
    let mut seconds = |key: &'static str, value: i64, max: i64, fix: &str| -> u32 {
        if (0..=max).contains(&value) {
            value as u32
        } else {
            p.add(
                &[Seg::Key("dns"), Seg::Key(key)],
                format!("{value} is outside 0–{max} seconds"),
                fix,
            );
            0
        }
    };
    let any = i64::from(i32::MAX);
    [
        seconds(
            "ttl",
            raw.ttl,
            86_400,
            "use a few seconds (5 is the default): clients follow a failover only after it",
        ),
        seconds("refresh", raw.refresh, any, "use seconds, e.g. 3600"),
        seconds("retry", raw.retry, any, "use seconds, e.g. 600"),
        seconds("expire", raw.expire, any, "use seconds, e.g. 86400"),
        seconds(
            "minimum",
            raw.minimum,
            MAX_MINIMUM,
            "keep it small (5 is the default): resolvers cache a negative answer this long",
        ),
    ]
}

/// An SOA name (`mname`, `rname`): as configured, or the default.
fn soa_name(
    p: &mut Problems<'_>,
    key: &'static str,
    value: &Option<String>,
    default: Option<String>,
) -> Option<String> {
    let Some(v) = value else { return default };
    let name = absolute_name(v);
    if name.is_none() {
        p.add(
            &[Seg::Key("dns"), Seg::Key(key)],
            format!("{v:?} is not a domain name"),
            "write an absolute name, e.g. \"hostmaster.example.test.\"",
        );
    }
    name
}

fn validate_update(
    raw: &RawUpdate,
    record: &str,
    ttl: u32,
    base: &Path,
    p: &mut Problems<'_>,
) -> Option<Update> {
    let at = |k| [Seg::Key("dns"), Seg::Key("update"), Seg::Key(k)];
    let server = raw.server.parse::<SocketAddr>().ok().or_else(|| {
        raw.server
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    });
    if server.is_none() {
        p.add(
            &at("server"),
            format!("{:?} is not an address (with an optional port)", raw.server),
            "give the zone's primary server, e.g. \"198.51.100.53\" or \"[2001:db8::53]:5353\"",
        );
    }
    let zone = absolute_name(&raw.zone);
    if zone.is_none() {
        p.add(
            &at("zone"),
            format!("{:?} is not a domain name", raw.zone),
            "name the zone the server lets vipgate update, e.g. \"db.example.com.\"",
        );
    }
    let zone = zone?;
    let name = update_record(raw, record, &zone, p);
    let key_name = absolute_name(&raw.key_name);
    if key_name.is_none() {
        p.add(
            &at("key_name"),
            format!("{:?} is not a key name", raw.key_name),
            "use the name of the TSIG key in the server's configuration, e.g. \"vipgate-key.\"",
        );
    }
    let ttl = match raw.ttl {
        None => ttl,
        Some(t) if (0..=86_400).contains(&t) => t as u32,
        Some(t) => {
            p.add(
                &at("ttl"),
                format!("{t} is outside 0–86400 seconds"),
                "use a few seconds: clients follow a failover only after it",
            );
            ttl
        }
    };
    Some(Update {
        server: server?,
        zone,
        record: name?,
        ttl,
        key_name: key_name?,
        key_file: base.join(&raw.key_file),
    })
}

/// The record to update: a name inside `zone` (by default `<record>.<zone>`), short enough
/// for the owner record beside it.
fn update_record(raw: &RawUpdate, record: &str, zone: &str, p: &mut Problems<'_>) -> Option<String> {
    let at = [Seg::Key("dns"), Seg::Key("update"), Seg::Key("record")];
    let name = match &raw.record {
        Some(r) => absolute_name(r),
        None => absolute_name(&format!("{record}.{zone}")),
    };
    let name = name.filter(|n| n.ends_with(&format!(".{zone}")));
    // The owner's TXT record is `_owner.<record>`: it must fit a DNS name too.
    if let Some(n) = name.as_ref().filter(|n| n.trim_end_matches('.').len() + 7 > 253) {
        p.add(
            &at,
            format!(
                "_owner.{n} (the owner record beside it) is longer than a DNS name may be (253 characters)"
            ),
            "use a shorter record name",
        );
    }
    if name.is_none() {
        p.add(
            &at,
            format!(
                "{:?} is not a name inside {zone}",
                raw.record.as_deref().unwrap_or(record)
            ),
            "give an absolute name in the zone, e.g. \"primary.db.example.com.\"",
        );
    }
    name
}
