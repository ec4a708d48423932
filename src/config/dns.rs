//! `[dns]`: the zone every agent serves authoritatively; its primary record follows the owner.

use super::{Problems, Seg};
use serde::Deserialize;

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

pub(super) fn validate(raw: &RawDns, first_server: Option<&str>, p: &mut Problems<'_>) -> Option<Dns> {
    let at = |k| [Seg::Key("dns"), Seg::Key(k)];
    let zone = absolute_name(&raw.zone);
    if zone.is_none() {
        p.add(
            &at("zone"),
            format!("{:?} is not a domain name", raw.zone),
            "name the zone delegated to the agents, e.g. \"db.example.test.\"",
        );
    }
    let record = raw.record.to_ascii_lowercase();
    if !valid_label(&record) {
        p.add(
            &at("record"),
            format!("{:?} is not a single DNS label", raw.record),
            "use a label such as \"primary\": clients resolve <record>.<zone>",
        );
    }
    if record.starts_with('_') {
        p.add(
            &at("record"),
            format!(
                "{:?} clashes with the names vipgate keeps for itself (_owner)",
                raw.record
            ),
            "use a label without a leading underscore",
        );
    }
    let mut seconds = |key: &'static str, value: i64, max: i64, fix: &str| -> u32 {
        if (0..=max).contains(&value) {
            value as u32
        } else {
            p.add(&at(key), format!("{value} is outside 0–{max} seconds"), fix);
            0
        }
    };
    let ttl = seconds(
        "ttl",
        raw.ttl,
        86_400,
        "use a few seconds (5 is the default): clients follow a failover only after it",
    );
    let refresh = seconds("refresh", raw.refresh, i32::MAX.into(), "use seconds, e.g. 3600");
    let retry = seconds("retry", raw.retry, i32::MAX.into(), "use seconds, e.g. 600");
    let expire = seconds("expire", raw.expire, i32::MAX.into(), "use seconds, e.g. 86400");
    let minimum = seconds(
        "minimum",
        raw.minimum,
        MAX_MINIMUM,
        "keep it small (5 is the default): resolvers cache a negative answer this long",
    );
    let port = u16::try_from(raw.port).ok().filter(|p| *p > 0);
    if port.is_none() {
        p.add(
            &at("port"),
            format!("{} is not a port", raw.port),
            "use 53 (the default), or another port for a test",
        );
    }
    let zone = zone?;
    let name = |key: &'static str, value: &Option<String>, default: Option<String>, p: &mut Problems<'_>| {
        match value {
            Some(v) => absolute_name(v).or_else(|| {
                p.add(
                    &at(key),
                    format!("{v:?} is not a domain name"),
                    "write an absolute name, e.g. \"hostmaster.example.test.\"",
                );
                None
            }),
            None => default,
        }
    };
    let mname = name(
        "mname",
        &raw.mname,
        first_server.map(|id| format!("{id}.{zone}")),
        p,
    );
    let rname = name("rname", &raw.rname, Some(format!("hostmaster.{zone}")), p);
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
    })
}
