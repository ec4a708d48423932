//! `[[vip]]`, `[announce]` and `[control]`: what the owner holds, how it tells the LAN, and
//! where operators reach the agent.

use super::{Problems, Seg};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Linux limits interface names (and IPv4 address labels) to 15 bytes.
const IFNAMSIZ: usize = 15;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVip {
    address: String,
    interface: String,
    #[serde(default)]
    region: String,
    label: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnnounce {
    #[serde(default = "default_repeat")]
    repeat: i64,
    #[serde(default = "default_delay")]
    delay_ms: u64,
    #[serde(default = "default_refresh")]
    refresh_ms: u64,
}

/// A missing `[announce]` table means every default (derived `Default` would mean zeros).
impl Default for RawAnnounce {
    fn default() -> RawAnnounce {
        RawAnnounce {
            repeat: default_repeat(),
            delay_ms: default_delay(),
            refresh_ms: default_refresh(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControl {
    socket: Option<PathBuf>,
    http: Option<String>,
    status_group: Option<String>,
}

fn default_repeat() -> i64 {
    5
}
fn default_delay() -> u64 {
    5_000
}
fn default_refresh() -> u64 {
    30_000
}

pub const DEFAULT_SOCKET: &str = "/run/vipgate/vipgate.sock";

/// A virtual IP: added to `interface` of the owner, if the owner is in `region`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vip {
    pub address: IpAddr,
    pub prefix: u8,
    pub interface: String,
    /// Empty: held by the owner wherever it is.
    pub region: String,
    /// IPv4 only: the address label (`ip addr show` prints it), e.g. `eth0:vip`.
    pub label: Option<String>,
}

impl Vip {
    /// Whether an owner in `region` holds this VIP.
    pub fn serves(&self, region: &str) -> bool {
        self.region.is_empty() || self.region == region
    }
}

impl std::fmt::Display for Vip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} on {}", self.address, self.prefix, self.interface)
    }
}

/// Gratuitous ARP / unsolicited NA cadence while owning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announce {
    /// Frames per burst (each an ARP request and reply, or one NA).
    pub repeat: u32,
    /// A second burst this long after the first (`None`: no second burst).
    pub delay: Option<Duration>,
    /// While owner, announce again this often (`None`: never).
    pub refresh: Option<Duration>,
}

impl Default for Announce {
    fn default() -> Announce {
        Announce {
            repeat: default_repeat() as u32,
            delay: Some(Duration::from_millis(default_delay())),
            refresh: Some(Duration::from_millis(default_refresh())),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Control {
    pub socket: PathBuf,
    /// `/metrics` (Prometheus) and `/status` over HTTP, if set.
    pub http: Option<std::net::SocketAddr>,
    /// A group whose members may read status and metrics through the socket (changing
    /// anything stays with root and the agent's user).
    pub status_group: Option<(String, u32)>,
}

pub(super) fn validate_vips(raw: &[RawVip], node_addresses: &[IpAddr], p: &mut Problems<'_>) -> Vec<Vip> {
    let mut seen: BTreeMap<IpAddr, usize> = BTreeMap::new();
    let mut vips = Vec::new();
    for (i, v) in raw.iter().enumerate() {
        let at = |k| [Seg::Key("vip"), Seg::Index(i), Seg::Key(k)];
        let parsed = v.address.split_once('/').and_then(|(a, len)| {
            let a: IpAddr = a.parse().ok()?;
            let len: u8 = len.parse().ok()?;
            let max = if a.is_ipv4() { 32 } else { 128 };
            (len <= max).then_some((a, len))
        });
        let Some((address, prefix)) = parsed else {
            p.add(
                &at("address"),
                format!("{:?} is not an address with a prefix length", v.address),
                "write the VIP with its prefix, e.g. \"192.0.2.50/24\" or \"2001:db8::50/64\"",
            );
            continue;
        };
        if address.is_unspecified() || address.is_multicast() || address.is_loopback() {
            p.add(
                &at("address"),
                format!("{address} cannot be a virtual IP"),
                "use a unicast address of the clients' subnet",
            );
        }
        if let Some(first) = seen.insert(address, i) {
            p.add(
                &at("address"),
                format!("{address} is also vip[{first}]"),
                "list every VIP once",
            );
        }
        if node_addresses.contains(&address) {
            p.add(
                &at("address"),
                format!("{address} is a node's own address"),
                "a VIP must be an address no host has permanently",
            );
        }
        check_names(i, v, address, p);
        vips.push(Vip {
            address,
            prefix,
            interface: v.interface.clone(),
            region: v.region.clone(),
            label: v.label.clone(),
        });
    }
    vips
}

/// The interface and label of VIP number `i`.
fn check_names(i: usize, v: &RawVip, address: IpAddr, p: &mut Problems<'_>) {
    let at = |k| [Seg::Key("vip"), Seg::Index(i), Seg::Key(k)];
    if v.interface.is_empty() || v.interface.len() > IFNAMSIZ || v.interface.contains(['/', ' ']) {
        p.add(
            &at("interface"),
            format!("{:?} is not an interface name", v.interface),
            "name the interface the VIP goes on, e.g. \"eth0\" (at most 15 characters)",
        );
    }
    if let Some(label) = &v.label {
        if address.is_ipv6() {
            p.add(
                &at("label"),
                "address labels exist for IPv4 only".into(),
                "remove label from this IPv6 VIP",
            );
        } else if label.len() > IFNAMSIZ || !label.starts_with(&format!("{}:", v.interface)) {
            p.add(
                &at("label"),
                format!("{label:?} is not a label for {}", v.interface),
                format!(
                    "use the interface name, a colon and a suffix, at most 15 characters (e.g. \"{}:vip\")",
                    v.interface
                ),
            );
        }
    }
}

pub(super) fn validate_announce(raw: &RawAnnounce, p: &mut Problems<'_>) -> Announce {
    let at = |k| [Seg::Key("announce"), Seg::Key(k)];
    if !(1..=100).contains(&raw.repeat) {
        p.add(
            &at("repeat"),
            format!("{} frames per burst is outside 1–100", raw.repeat),
            "use 1 to 100 (5 is the default)",
        );
    }
    if raw.refresh_ms != 0 && raw.refresh_ms < 1_000 {
        p.add(
            &at("refresh_ms"),
            format!("{} ms would flood the LAN with announcements", raw.refresh_ms),
            "use at least 1000 ms, or 0 to turn the refresh off",
        );
    }
    let opt = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
    Announce {
        repeat: raw.repeat.clamp(1, 100) as u32,
        delay: opt(raw.delay_ms),
        refresh: opt(raw.refresh_ms),
    }
}

pub(super) fn validate_control(raw: &RawControl, base: &Path, p: &mut Problems<'_>) -> Control {
    let socket = match &raw.socket {
        Some(s) if s.as_os_str().is_empty() => {
            p.add(
                &[Seg::Key("control"), Seg::Key("socket")],
                "is empty".into(),
                format!("name a path for the control socket, e.g. {DEFAULT_SOCKET}"),
            );
            PathBuf::from(DEFAULT_SOCKET)
        }
        Some(s) => base.join(s),
        None => PathBuf::from(DEFAULT_SOCKET),
    };
    // A port alone means loopback only.
    let http = raw.http.as_deref().and_then(|h| {
        let h = h.trim();
        let parsed = h
            .parse::<std::net::SocketAddr>()
            .ok()
            .or_else(|| {
                h.trim_start_matches(':')
                    .parse::<u16>()
                    .ok()
                    .map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            })
            .filter(|a| a.port() != 0);
        if parsed.is_none() {
            p.add(
                &[Seg::Key("control"), Seg::Key("http")],
                format!("{h:?} is not an address and port"),
                "write e.g. \"127.0.0.1:9808\" (or \"9808\" for loopback only)",
            );
        }
        parsed
    });
    let status_group =
        raw.status_group
            .as_deref()
            .and_then(|name| match nix::unistd::Group::from_name(name) {
                Ok(Some(g)) => Some((name.to_string(), g.gid.as_raw())),
                _ => {
                    p.add(
                        &[Seg::Key("control"), Seg::Key("status_group")],
                        format!("there is no group {name:?} on this host"),
                        "create it (groupadd), or name an existing group such as \"adm\"",
                    );
                    None
                }
            });
    Control {
        socket,
        http,
        status_group,
    }
}
