//! The configuration file: TOML read with serde (unknown keys rejected), then validated into
//! typed settings. Every problem is reported at once, each naming the file, line, field and fix.
//!
//! Relative paths (`secret_file`, `state_dir`) are resolved against the configuration file's
//! directory, so `secret_file = "secret"` next to `/etc/vipgate/vipgate.toml` means
//! `/etc/vipgate/secret`.

mod dns;
mod error;
mod hooks;
mod mysql;
mod reload;
mod secret;
mod vip;

pub use dns::{Dns, Update};
pub use error::{ConfigError, ConfigErrors, Seg};
pub use hooks::Hooks;
pub use mysql::{Endpoint, Mysql, MysqlMode, ReplicationAccount};
pub use reload::restart_needed;
pub use secret::{KeyFileProblem, Secret, read_key_file};
pub use vip::{Announce, Control, DEFAULT_SOCKET, Vip};

use crate::core::{self, MAX_MEMBERS, Member, NodeIdx};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Minimum length of the cluster secret (HMAC-SHA256 key), in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// The shortest TSIG secret accepted (decoded): 128 bits.
pub const MIN_TSIG_LEN: usize = 16;
pub const DEFAULT_PORT: u16 = 6987;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: RawCluster,
    #[serde(default)]
    node: Vec<RawNode>,
    #[serde(default)]
    vip: Vec<vip::RawVip>,
    #[serde(default)]
    announce: vip::RawAnnounce,
    #[serde(default)]
    control: vip::RawControl,
    mysql: Option<mysql::RawMysql>,
    dns: Option<dns::RawDns>,
    #[serde(default)]
    hooks: hooks::RawHooks,
    #[serde(default)]
    fence: RawFence,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFence {
    #[serde(default = "default_true")]
    kernel: bool,
}

impl Default for RawFence {
    fn default() -> RawFence {
        RawFence { kernel: true }
    }
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: String,
    secret_file: PathBuf,
    #[serde(default = "default_port")]
    port: u32,
    #[serde(default = "default_interval")]
    heartbeat_interval_ms: u64,
    #[serde(default = "default_lease")]
    lease_ms: u64,
    #[serde(default = "default_drift")]
    clock_drift: f64,
    #[serde(default)]
    preempt: bool,
    #[serde(default = "default_preempt_delay")]
    preempt_delay_ms: u64,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default)]
    cross_region_failover: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
    address: String,
    #[serde(default = "default_priority")]
    priority: i64,
    #[serde(default)]
    region: String,
    #[serde(default)]
    witness: bool,
    /// With `[dns]`: the addresses this node's DNS server listens on (default: its address;
    /// `[]`: it serves no DNS).
    dns_listen: Option<Vec<String>>,
}

fn default_port() -> u32 {
    u32::from(DEFAULT_PORT)
}
fn default_interval() -> u64 {
    200
}
fn default_lease() -> u64 {
    1000
}
fn default_drift() -> f64 {
    0.01
}
fn default_preempt_delay() -> u64 {
    60_000
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/vipgate")
}
fn default_priority() -> i64 {
    100
}

#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub secret_file: PathBuf,
    pub port: u16,
    pub interval: Duration,
    pub lease: Duration,
    /// ρ as a fraction (0.01 = 1 %).
    pub clock_drift: f64,
    /// `Some(delay)` when preemption is on.
    pub preempt_delay: Option<Duration>,
    pub state_dir: PathBuf,
    /// Whether a node may take ownership automatically from an owner in another region.
    pub cross_region_failover: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub address: IpAddr,
    pub priority: u8,
    pub region: String,
    pub witness: bool,
    /// With `[dns]`: where this node serves the zone (UDP and TCP); empty: it does not.
    pub dns: Vec<IpAddr>,
}

/// A validated configuration. `nodes` are sorted by id: a node's index in this list is its
/// [`NodeIdx`] on every agent, whatever order each host's file lists them in.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub file: PathBuf,
    pub cluster: Cluster,
    pub nodes: Vec<Node>,
    pub vips: Vec<Vip>,
    pub announce: Announce,
    pub control: Control,
    /// `None`: the database is not consulted (no `[mysql]`, or `mode = "none"`).
    pub mysql: Option<Mysql>,
    /// `None`: no DNS is served.
    pub dns: Option<Dns>,
    pub hooks: Hooks,
    /// `[fence] kernel`: nftables drop the VIPs' traffic once the lease ends, agent or not.
    pub kernel_fence: bool,
}

/// Collects problems while validating.
struct Problems<'a> {
    file: &'a Path,
    src: &'a str,
    list: Vec<ConfigError>,
}

impl Problems<'_> {
    fn add(&mut self, path: &[Seg<'_>], problem: String, fix: impl Into<String>) {
        let field = path
            .iter()
            .map(|s| match s {
                Seg::Key(k) => format!(".{k}"),
                Seg::Index(i) => format!("[{i}]"),
            })
            .collect::<String>();
        self.list.push(ConfigError {
            file: self.file.to_path_buf(),
            line: error::locate(self.src, path),
            field: field.trim_start_matches('.').to_string(),
            problem,
            fix: fix.into(),
        });
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= crate::net::wire::MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// A three-node lab (db1, db2 and the witness w1) in promote mode with a VIP and DNS, for tests.
#[cfg(test)]
pub(crate) const TEST_LAB: &str = r#"
[cluster]
name = "lab"
secret_file = "secret"
[[node]]
id = "db1"
address = "192.0.2.11"
priority = 150
[[node]]
id = "db2"
address = "192.0.2.12"
[[node]]
id = "w1"
address = "192.0.2.13"
witness = true
[[vip]]
address = "192.0.2.50/24"
interface = "eth0"
[mysql]
mode = "promote"
user = "vipgate"
max_lag_ms = 10000
[dns]
zone = "db.example.test."
ttl = 5
"#;

/// A file TOML cannot read into the configuration's shape, with the line and what to do.
fn syntax_error(file: &Path, src: &str, e: &toml::de::Error) -> ConfigErrors {
    let line = e.span().map(|s| error::line_of(src, s.start));
    let message = e.message().to_string();
    let fix = if message.contains("unknown field") {
        "remove or correct the key; config/vipgate.toml lists every key with its meaning"
    } else if message.contains("missing field") {
        "add the field; config/vipgate.toml shows an example"
    } else {
        "correct the value's syntax or type (see config/vipgate.toml)"
    };
    ConfigErrors::one(file, line, "", message, fix)
}

impl Config {
    /// Reads and validates `file` (the secret is checked separately by [`Config::read_secret`]).
    pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
        let src = std::fs::read_to_string(file).map_err(|e| {
            ConfigErrors::one(
                file,
                None,
                "",
                format!("cannot read the configuration: {e}"),
                "check the path given with --config, and that vipgate may read it",
            )
        })?;
        Config::parse(file, &src)
    }

    /// Validates configuration text; `file` is used for error messages and relative paths.
    pub fn parse(file: &Path, src: &str) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = toml::from_str(src).map_err(|e| syntax_error(file, src, &e))?;
        let mut p = Problems {
            file,
            src,
            list: Vec::new(),
        };
        let base = file.parent().unwrap_or(Path::new("."));
        let cluster = validate_cluster(&raw.cluster, base, &mut p);
        let mut nodes = validate_nodes(&raw.node, &mut p);
        let addresses: Vec<IpAddr> = nodes.iter().map(|n| n.address).collect();
        let vips = vip::validate_vips(&raw.vip, &addresses, &mut p);
        let announce = vip::validate_announce(&raw.announce, &mut p);
        let control = vip::validate_control(&raw.control, base, &mut p);
        let mysql = raw.mysql.as_ref().and_then(|m| mysql::validate(m, base, &mut p));
        validate_dns_listen(&raw.node, raw.dns.is_some(), &mut nodes, &mut p);
        let servers: Vec<String> = nodes
            .iter()
            .filter(|n| !n.dns.is_empty())
            .map(|n| n.id.to_ascii_lowercase())
            .collect();
        let first_server = servers.iter().min().cloned();
        let pushes = raw.dns.as_ref().is_some_and(|d| d.pushes());
        if raw.dns.is_some() && first_server.is_none() && !pushes && p.list.is_empty() {
            p.add(
                &[Seg::Key("dns")],
                "no node serves DNS (every dns_listen is empty)".into(),
                "let at least the database hosts and the witness serve it: remove dns_listen = []",
            );
        }
        let dns = raw
            .dns
            .as_ref()
            .and_then(|d| dns::validate(d, &servers, first_server.as_deref(), base, &mut p));
        let hooks = hooks::validate(&raw.hooks, base, &mut p);
        if p.list.is_empty() {
            nodes.sort_by(|a, b| a.id.cmp(&b.id));
            let config = Config {
                file: file.to_path_buf(),
                cluster,
                nodes,
                vips,
                announce,
                control,
                mysql,
                dns,
                hooks,
                kernel_fence: raw.fence.kernel,
            };
            if let Err(e) = config.core_settings(0, 0).check() {
                p.add(
                    &[Seg::Key("cluster"), Seg::Key("lease_ms")],
                    e.to_string(),
                    "raise lease_ms or lower heartbeat_interval_ms",
                );
            } else {
                return Ok(config);
            }
        }
        Err(ConfigErrors(p.list))
    }

    /// The index of node `id`, or an error listing the members.
    pub fn node_index(&self, id: &str) -> Result<NodeIdx, ConfigErrors> {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .map(|i| i as NodeIdx)
            .ok_or_else(|| {
                let ids: Vec<&str> = self.nodes.iter().map(|n| n.id.as_str()).collect();
                ConfigErrors::one(
                    &self.file,
                    None,
                    "node",
                    format!("this node, {id:?}, is not a member (members: {})", ids.join(", ")),
                    "pass --node with one of the member ids, or add a [[node]] for this host",
                )
            })
    }

    /// Reads the cluster secret, enforcing owner-only permissions and its minimum length.
    pub fn read_secret(&self) -> Result<Secret, ConfigErrors> {
        read_key_file(&self.cluster.secret_file, MIN_SECRET_LEN).map_err(|e| {
            let src = std::fs::read_to_string(&self.file).unwrap_or_default();
            let path = [Seg::Key("cluster"), Seg::Key("secret_file")];
            ConfigErrors::one(
                &self.file,
                error::locate(&src, &path),
                "cluster.secret_file",
                e.problem,
                &e.fix,
            )
        })
    }

    /// The database password, if `[mysql] password_file` is set (owner-only permissions).
    pub fn read_mysql_password(&self) -> Result<Option<Secret>, ConfigErrors> {
        let path = self.mysql.as_ref().and_then(|m| m.password_file.as_deref());
        self.read_password(path, "password_file", "the [mysql] user")
    }

    /// The replication account's password, if `[mysql] replication_password_file` is set.
    pub fn read_replication_password(&self) -> Result<Option<Secret>, ConfigErrors> {
        let path = self
            .mysql
            .as_ref()
            .and_then(|m| m.replication.as_ref())
            .and_then(|r| r.password_file.as_deref());
        self.read_password(path, "replication_password_file", "the replication user")
    }

    fn read_password(
        &self,
        path: Option<&Path>,
        key: &str,
        whose: &str,
    ) -> Result<Option<Secret>, ConfigErrors> {
        let Some(path) = path else { return Ok(None) };
        read_key_file(path, 1).map(Some).map_err(|e| {
            let src = std::fs::read_to_string(&self.file).unwrap_or_default();
            let at = [Seg::Key("mysql"), Seg::Key(key)];
            let fix = if e.fix.contains("openssl") {
                format!("write the password of {whose} to {} (mode 600)", path.display())
            } else {
                e.fix
            };
            ConfigErrors::one(
                &self.file,
                error::locate(&src, &at),
                &format!("mysql.{key}"),
                e.problem,
                &fix,
            )
        })
    }

    /// The TSIG key of `[dns.update]`, decoded from base64, if updates are configured.
    pub fn read_update_key(&self) -> Result<Option<Secret>, ConfigErrors> {
        let Some(update) = self.dns.as_ref().and_then(|d| d.update.as_ref()) else {
            return Ok(None);
        };
        let src = std::fs::read_to_string(&self.file).unwrap_or_default();
        let at = [Seg::Key("dns"), Seg::Key("update"), Seg::Key("key_file")];
        let error = |problem: String, fix: String| {
            ConfigErrors::one(
                &self.file,
                error::locate(&src, &at),
                "dns.update.key_file",
                problem,
                &fix,
            )
        };
        let shown = update.key_file.display();
        let key = read_key_file(&update.key_file, 1).map_err(|e| {
            let fix = if e.fix.contains("openssl") {
                format!(
                    "write the key's base64 secret (as `tsig-keygen -a hmac-sha256` prints it) to {shown} (mode 600)"
                )
            } else {
                e.fix
            };
            error(e.problem, fix)
        })?;
        let text = String::from_utf8_lossy(key.bytes());
        let decoded = data_encoding::BASE64
            .decode(text.trim().trim_end_matches(';').trim_matches('"').as_bytes())
            .map_err(|e| {
                error(
                    format!("{shown} does not hold a base64 TSIG secret: {e}"),
                    "copy only the secret \"…\" from the server's key statement into the file".into(),
                )
            })?;
        if decoded.len() < MIN_TSIG_LEN {
            return Err(error(
                format!(
                    "{shown} holds a TSIG secret of {} bytes; at least {MIN_TSIG_LEN} are needed",
                    decoded.len()
                ),
                "generate one with `tsig-keygen -a hmac-sha256 vipgate-key` (32 bytes) on the server and copy its secret".into(),
            ));
        }
        Ok(Some(Secret::from_bytes(decoded)))
    }

    pub fn majority(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    /// What the primary record holds while node `n` owns: the addresses of its VIPs, or, where
    /// it holds none, its own address.
    pub fn primary_addresses(&self, n: NodeIdx) -> Vec<IpAddr> {
        let vips: Vec<IpAddr> = self.vips_of(n).iter().map(|v| v.address).collect();
        if vips.is_empty() {
            vec![self.nodes[usize::from(n)].address]
        } else {
            vips
        }
    }

    /// The VIPs node `me` holds while it owns: those of its region, and those without one.
    pub fn vips_of(&self, me: NodeIdx) -> Vec<Vip> {
        let region = &self.nodes[usize::from(me)].region;
        self.vips.iter().filter(|v| v.serves(region)).cloned().collect()
    }

    /// The ownership core's settings for node `me`.
    pub fn core_settings(&self, me: NodeIdx, seed: u64) -> core::Settings {
        core::Settings {
            me,
            members: self
                .nodes
                .iter()
                .map(|n| Member {
                    witness: n.witness,
                    priority: n.priority,
                })
                .collect(),
            interval: self.cluster.interval,
            lease: self.cluster.lease,
            drift_ppm: (self.cluster.clock_drift * 1e6).round() as u32,
            release_budget: self.cluster.interval,
            preempt_delay: self.cluster.preempt_delay,
            seed,
        }
    }

    /// The database gate's settings for node `me` (again after a reload).
    pub fn gate_settings(&self, me: NodeIdx) -> crate::gate::machine::Settings {
        let mysql = self
            .mysql
            .as_ref()
            .filter(|_| !self.nodes[usize::from(me)].witness);
        crate::gate::machine::Settings {
            mode: mysql.map_or(MysqlMode::Gate, |m| m.mode),
            me,
            sources: self.nodes.iter().map(|n| n.address.to_string()).collect(),
            replication: mysql.is_some_and(|m| m.replication.is_some()),
            lease: self.cluster.lease,
            // Long enough for every peer's next check to be reported (see `fence_until`).
            fence_settle: mysql.map_or(Duration::ZERO, |m| {
                m.check_interval + m.check_timeout + self.cluster.interval
            }),
            fence_budget: mysql.map_or(Duration::from_secs(1), |m| {
                m.check_timeout.max(Duration::from_secs(1))
            }),
            kill_grace: mysql.map_or(Duration::ZERO, |m| m.kill_grace),
        }
    }

    /// Identifies the member list (ids, addresses, witness flags) on the wire: agents whose
    /// lists differ would count majorities differently, so they refuse each other's datagrams.
    pub fn fingerprint(&self) -> u64 {
        let mut h = Sha256::new();
        h.update(self.cluster.name.as_bytes());
        for n in &self.nodes {
            h.update([0]);
            h.update(n.id.as_bytes());
            h.update([0]);
            h.update(n.address.to_string().as_bytes());
            h.update([u8::from(n.witness)]);
        }
        let d = h.finalize();
        u64::from_be_bytes(d[..8].try_into().expect("sha256 has 32 bytes"))
    }
}

fn validate_cluster(c: &RawCluster, base: &Path, p: &mut Problems<'_>) -> Cluster {
    let at = |k| [Seg::Key("cluster"), Seg::Key(k)];
    if !valid_name(&c.name) {
        p.add(
            &at("name"),
            format!("{:?} is not a valid cluster name", c.name),
            "use 1 to 64 letters, digits, '-', '_' or '.', the same on every node",
        );
    }
    if c.port == 0 || c.port > 65535 {
        p.add(
            &at("port"),
            format!("{} is not a UDP port", c.port),
            "use a port between 1 and 65535",
        );
    }
    if c.heartbeat_interval_ms < 5 {
        p.add(
            &at("heartbeat_interval_ms"),
            format!("{} ms is too short to be kept reliably", c.heartbeat_interval_ms),
            "use at least 5 ms (200 ms is the default; 20 ms for an aggressive profile)",
        );
    }
    if c.lease_ms < 3 * c.heartbeat_interval_ms {
        p.add(
            &at("lease_ms"),
            format!(
                "the lease ({} ms) must be at least 3 heartbeat intervals ({} ms) so that one lost heartbeat does not end it",
                c.lease_ms,
                3 * c.heartbeat_interval_ms
            ),
            format!("set lease_ms to {} or more", 3 * c.heartbeat_interval_ms.max(5)),
        );
    }
    if c.lease_ms > 3_600_000 {
        p.add(
            &at("lease_ms"),
            format!("{} ms is over an hour", c.lease_ms),
            "use a lease of seconds, not hours",
        );
    }
    if !(0.0..0.1).contains(&c.clock_drift) || c.clock_drift.is_nan() {
        p.add(
            &at("clock_drift"),
            format!("{} is outside 0 ≤ ρ < 0.1", c.clock_drift),
            "give the bound on clock rate differences as a fraction: 0.01 means 1 % (the default)",
        );
    }
    let state_dir = base.join(&c.state_dir);
    if c.state_dir.as_os_str().is_empty() {
        p.add(
            &at("state_dir"),
            "is empty".into(),
            "name a directory, e.g. /var/lib/vipgate",
        );
    }
    Cluster {
        name: c.name.clone(),
        secret_file: base.join(&c.secret_file),
        port: u16::try_from(c.port).unwrap_or(DEFAULT_PORT),
        interval: Duration::from_millis(c.heartbeat_interval_ms),
        lease: Duration::from_millis(c.lease_ms),
        clock_drift: c.clock_drift,
        preempt_delay: c.preempt.then(|| Duration::from_millis(c.preempt_delay_ms)),
        state_dir,
        cross_region_failover: c.cross_region_failover,
    }
}

fn validate_nodes(raw: &[RawNode], p: &mut Problems<'_>) -> Vec<Node> {
    if raw.is_empty() {
        p.add(
            &[Seg::Key("node")],
            "no [[node]] is configured".into(),
            "add a [[node]] table for every member",
        );
        return Vec::new();
    }
    check_membership(raw, p);
    let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
    let mut addresses: BTreeMap<IpAddr, usize> = BTreeMap::new();
    let mut nodes = Vec::new();
    for (i, n) in raw.iter().enumerate() {
        let at = |k| [Seg::Key("node"), Seg::Index(i), Seg::Key(k)];
        if !valid_name(&n.id) {
            p.add(
                &at("id"),
                format!("{:?} is not a valid node id", n.id),
                "use 1 to 64 letters, digits, '-', '_' or '.'",
            );
        } else if let Some(first) = ids.insert(&n.id, i) {
            p.add(
                &at("id"),
                format!("{:?} is also the id of node[{first}]", n.id),
                "give every node its own id",
            );
        }
        let address = node_address(raw, i, &mut addresses, p);
        let priority = u8::try_from(n.priority).ok().filter(|&v| v >= 1);
        if priority.is_none() {
            p.add(
                &at("priority"),
                format!("{} is outside 1–255", n.priority),
                "use 1 to 255; higher is preferred",
            );
        }
        if let (Some(address), Some(priority)) = (address, priority) {
            nodes.push(Node {
                id: n.id.clone(),
                address,
                priority,
                region: n.region.clone(),
                witness: n.witness,
                dns: Vec::new(),
            });
        }
    }
    nodes
}

/// Node `i`'s address: an IP address, unicast, and no other node's.
fn node_address(
    raw: &[RawNode],
    i: usize,
    seen: &mut BTreeMap<IpAddr, usize>,
    p: &mut Problems<'_>,
) -> Option<IpAddr> {
    let at = [Seg::Key("node"), Seg::Index(i), Seg::Key("address")];
    let Ok(a) = raw[i].address.parse::<IpAddr>() else {
        p.add(
            &at,
            format!("{:?} is not an IPv4 or IPv6 address", raw[i].address),
            "write the address the node's agent listens on, e.g. \"192.0.2.11\" or \"2001:db8::11\" (no port, no host name)",
        );
        return None;
    };
    if let Some(first) = seen.insert(a, i) {
        p.add(
            &at,
            format!("{a} is also the address of node[{first}] ({:?})", raw[first].id),
            "give every node its own address",
        );
    }
    if a.is_unspecified() || a.is_multicast() {
        p.add(
            &at,
            format!("{a} cannot be a node's address"),
            "use the host's unicast address",
        );
    }
    Some(a)
}

/// How many members, and of which kind: one that can own, and enough voters to fail over.
fn check_membership(raw: &[RawNode], p: &mut Problems<'_>) {
    if raw.len() > MAX_MEMBERS {
        p.add(
            &[Seg::Key("node")],
            format!(
                "{} nodes configured; at most {MAX_MEMBERS} are supported",
                raw.len()
            ),
            "remove nodes",
        );
    }
    if raw.iter().all(|n| n.witness) {
        p.add(
            &[Seg::Key("node")],
            "every node is a witness, so none can own the VIP".into(),
            "set witness = false on the database hosts",
        );
    }
    if raw.len() == 2 {
        p.add(
            &[Seg::Key("node")],
            "two voting members cannot fail over safely: neither can tell a dead peer from a cut link, \
             so a majority (2 of 2) is lost with either node and automatic failover never happens"
                .into(),
            "add a witness ([[node]] with witness = true) on a third host: automatic failover needs three voters",
        );
    }
}

/// `[[node]] dns_listen`, with `[dns]` present: the addresses each node serves DNS on. Nodes
/// must be named by DNS labels, since each is published as `<id>.<zone>` (NS and glue).
fn validate_dns_listen(raw: &[RawNode], dns: bool, nodes: &mut [Node], p: &mut Problems<'_>) {
    for (i, n) in raw.iter().enumerate() {
        let at = |k| [Seg::Key("node"), Seg::Index(i), Seg::Key(k)];
        if !dns {
            if n.dns_listen.is_some() {
                p.add(
                    &at("dns_listen"),
                    "is set, but there is no [dns] section".into(),
                    "add [dns] (zone = …), or remove dns_listen",
                );
            }
            continue;
        }
        let addresses: Vec<IpAddr> = match &n.dns_listen {
            None => n.address.parse().ok().into_iter().collect(),
            Some(list) => list
                .iter()
                .filter_map(|a| match a.parse::<IpAddr>() {
                    Ok(ip) if !ip.is_unspecified() && !ip.is_multicast() => Some(ip),
                    _ => {
                        p.add(
                            &at("dns_listen"),
                            format!("{a:?} is not a unicast IPv4 or IPv6 address"),
                            "list the host's own addresses (they are published as glue records)",
                        );
                        None
                    }
                })
                .collect(),
        };
        if !addresses.is_empty() && !n.id.to_ascii_lowercase().split('.').all(dns::valid_label) {
            p.add(
                &at("id"),
                format!("{:?} cannot be published as a DNS name <id>.<zone>", n.id),
                "use letters, digits and '-' in node ids, or set dns_listen = [] on this node",
            );
        }
        if let Some(node) = nodes.iter_mut().find(|node| node.id == n.id) {
            node.dns = addresses;
        }
    }
}

#[cfg(test)]
mod tests;
