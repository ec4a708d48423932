//! The network-namespace lab: real hosts, links, a switch and a client on one machine.
//!
//! Shared by the integration tests, the demo (`examples/demo.rs`) and the benchmark
//! (`examples/failover_bench.rs`). Everything lives in namespaces this lab creates — nothing is
//! configured in the root namespace — with names unique to the run (`vg<pid>x<n>-db1`), and only
//! documentation addresses (192.0.2.0/24, 2001:db8::/64). Dropping the [`Lab`] (also while
//! unwinding from a panic) kills the processes it started, by pid, and deletes its namespaces.
//!
//! Topology: `<p>-sw` holds bridge `br0`; each host `<p>-<name>` has `eth0` on a veth whose
//! switch end is named after the host. Ground truth comes from observers, not from the agents:
//! which hosts hold a VIP (sampled every 2 ms from each namespace), the client's neighbour
//! entry, and the gaps between the client's ping replies.

// Shared by several test binaries and the examples; each uses only part of it.
#![allow(dead_code)]

mod probes;
pub use probes::ServeProbes;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use vipgate::control::Status;

pub const VIP4: &str = "192.0.2.50";
/// The zone the agents serve when a lab has `[dns]`.
pub const DNS_ZONE: &str = "db.example.test.";
/// `[dns]` lines that make the agents push to [`Lab::start_update_server`].
pub const DNS_UPDATE: &str = "[dns.update]\nserver = \"192.0.2.20\"\nzone = \"db.example.com.\"\n\
    key_name = \"vipgate-key.\"\nkey_file = \"tsig.key\"\n";
/// A TSIG key (HMAC-SHA256), base64, as `tsig-keygen` prints it; and one the server does not know.
pub const TSIG_KEY: &str = "q5tuFZFhNvBXfSbUwjphaNJ3iIzJpV0HSnYa2x7PF+o=";
pub const WRONG_KEY: &str = "bm90IHRoZSBrZXkgb2YgdGhlIHNlcnZlciwgYXQgYWxsIQ==";
pub const VIP6: &str = "2001:db8::50";
pub const CLIENT: &str = "client";
pub const ROGUE: &str = "rogue";
const PORT: u16 = 6987;

/// Lab runs are serialised: several clusters at once on a small machine would make timing
/// noise, not findings.
static SERIAL: Mutex<()> = Mutex::new(());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One host of the lab.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip4: String,
    pub ip6: String,
    pub mac: String,
    pub priority: u8,
    pub witness: bool,
    /// "" in a one-region lab; "a" (192.0.2.0/24) or "b" (198.51.100.0/24) in a two-region one.
    pub region: &'static str,
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub interval_ms: u64,
    pub lease_ms: u64,
    pub ipv6_vip: bool,
    /// Extra lines for the `[announce]` table.
    pub announce: String,
    /// `Some(mode)`: db1 and db2 run MariaDB (db1 the primary, db2 its replica) and the agents
    /// get a `[mysql]` section with this mode.
    pub mysql: Option<&'static str>,
    /// `[mysql] max_lag_ms`.
    pub max_lag_ms: u64,
    /// Extra lines for a `[dns]` section (zone `db.example.test.`); `None`: no DNS.
    pub dns: Option<String>,
    /// `Some(cross_region_failover)`: two regions joined by a router — db1 and the client in
    /// region a (192.0.2.0/24, VIP 192.0.2.50), db2 and w1 in region b (198.51.100.0/24, VIP
    /// 198.51.100.50).
    pub regions: Option<bool>,
    /// A third database host, db3 (192.0.2.14, priority 120): with `mysql`, a second replica
    /// of db1.
    pub db3: bool,
}

impl Default for Spec {
    fn default() -> Spec {
        Spec {
            interval_ms: 200,
            lease_ms: 1000,
            ipv6_vip: false,
            announce: "delay_ms = 500\nrefresh_ms = 30000\n".into(),
            mysql: None,
            max_lag_ms: 10_000,
            dns: None,
            regions: None,
            db3: false,
        }
    }
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command for a diagnostic: its output, or why there is none. Never panics.
fn sh_out(args: &[&str]) -> String {
    match Command::new(args[0]).args(&args[1..]).output() {
        Ok(out) => format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("cannot run {args:?}: {e}\n"),
    }
}

/// Checks that the lab can run here, with a clear message when it cannot.
fn preflight(mysql: bool) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the network-namespace lab needs root (CAP_NET_ADMIN, CAP_NET_RAW): run the test suite as root, \
         e.g. `sudo bash scripts/test.sh`"
    );
    for (tool, package) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("ping", "iputils-ping"),
        ("mariadbd", "mariadb-server"),
        ("mariadb", "mariadb-client"),
    ] {
        if !mysql && tool.starts_with("mariadb") {
            continue;
        }
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "the lab needs `{tool}`: install the Debian package {package} (scripts/test.sh does)"
        );
    }
}

/// Polls `cond` every 5 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `f` on a thread inside network namespace `ns`, returning its result.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns);
        f()
    })
    .join()
    .expect("thread in namespace panicked")
}

/// Moves the calling thread into network namespace `ns` (for good).
pub fn enter_netns(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap_or_else(|e| panic!("namespace {ns}: {e}"));
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Who held which VIP when: contiguous runs of samples in which a host held it.
#[derive(Default)]
struct Holdings {
    /// Per (host, vip): runs of (first seen, last seen).
    runs: BTreeMap<(String, String), Vec<(Instant, Instant)>>,
    /// Per (host, vip): whether the latest sample saw it.
    now: BTreeMap<(String, String), bool>,
}

fn record(data: &Mutex<Holdings>, name: &str, vips: &[String], seen: Vec<bool>, t: Instant) {
    let mut d = data.lock().unwrap();
    for (vip, held) in vips.iter().zip(seen) {
        let key = (name.to_string(), vip.clone());
        let was = d.now.insert(key.clone(), held).unwrap_or(false);
        if held {
            let runs = d.runs.entry(key).or_default();
            match runs.last_mut() {
                Some(run) if was => run.1 = t,
                _ => runs.push((t, t)),
            }
        }
    }
}

/// Samples every host's `eth0` for the VIPs.
pub struct VipObserver {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    data: Arc<Mutex<Holdings>>,
}

impl VipObserver {
    fn start(hosts: &[Host], vips: Vec<String>) -> VipObserver {
        let stop = Arc::new(AtomicBool::new(false));
        let data = Arc::new(Mutex::new(Holdings::default()));
        let mut threads = Vec::new();
        for h in hosts {
            let (stop, data, vips, ns, name) = (
                stop.clone(),
                data.clone(),
                vips.clone(),
                h.ns.clone(),
                h.name.clone(),
            );
            threads.push(std::thread::spawn(move || {
                enter_netns(&ns);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let nl = vipgate::vip::netlink::Netlink::connect().expect("netlink");
                    let (index, _) = nl.link("eth0").await.expect("eth0");
                    let addrs: Vec<std::net::IpAddr> = vips.iter().map(|v| v.parse().unwrap()).collect();
                    while !stop.load(Ordering::Relaxed) {
                        let mut seen = Vec::new();
                        for a in &addrs {
                            seen.push(nl.holds(index, *a).await.unwrap_or(false));
                        }
                        let t = Instant::now();
                        record(&data, &name, &vips, seen, t);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                });
            }));
        }
        VipObserver { stop, threads, data }
    }

    /// Hosts whose latest sample held `vip`.
    pub fn holders(&self, vip: &str) -> Vec<String> {
        let d = self.data.lock().unwrap();
        d.now
            .iter()
            .filter(|((_, v), held)| v == vip && **held)
            .map(|((h, _), _)| h.clone())
            .collect()
    }

    /// Whether `host` holds `vip` and no one else does.
    pub fn sole_holder(&self, vip: &str, host: &str) -> bool {
        self.holders(vip) == [host.to_string()]
    }

    /// Runs in which `host` held `vip`.
    pub fn runs(&self, host: &str, vip: &str) -> Vec<(Instant, Instant)> {
        let d = self.data.lock().unwrap();
        d.runs
            .get(&(host.to_string(), vip.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// Every time two hosts were both seen holding `vip`: (host a, host b, overlap).
    pub fn overlaps(&self, vip: &str) -> Vec<(String, String, Duration)> {
        let d = self.data.lock().unwrap();
        let hosts: Vec<&String> = d.runs.keys().filter(|(_, v)| v == vip).map(|(h, _)| h).collect();
        let mut found = Vec::new();
        for (i, a) in hosts.iter().enumerate() {
            for b in &hosts[i + 1..] {
                for ra in &d.runs[&((*a).clone(), vip.to_string())] {
                    for rb in &d.runs[&((*b).clone(), vip.to_string())] {
                        let start = ra.0.max(rb.0);
                        let end = ra.1.min(rb.1);
                        if start <= end {
                            found.push(((*a).clone(), (*b).clone(), end - start));
                        }
                    }
                }
            }
        }
        found
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A row the primary acknowledged through the VIP: its id, when, and the `server_id` of the
/// database that acknowledged it (asked once per connection: a TCP connection stays with the
/// host it reached).
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub id: u64,
    pub at: Instant,
    pub server: u32,
}

/// A connection through the VIP and the `server_id` of the database it reached.
async fn connect_to_server(opts: &mysql_async::OptsBuilder) -> Option<(mysql_async::Conn, u32)> {
    use mysql_async::prelude::Queryable;
    let mut c = mysql_async::Conn::new(opts.clone()).await.ok()?;
    let id: Option<u32> = c.query_first("SELECT @@server_id").await.ok()?;
    Some((c, id?))
}

/// Rows acknowledged by the primary through the VIP, in order, with when.
pub struct Writer {
    stop: Arc<AtomicBool>,
    /// The `server_id` of the latest acknowledgement, as it happens.
    last_server: Arc<AtomicUsize>,
    handle: Option<JoinHandle<Vec<Ack>>>,
}

impl Writer {
    /// Stops the writer; returns every acknowledged row id and when it was acknowledged.
    pub fn finish(self) -> Vec<(u64, Instant)> {
        self.finish_tagged().into_iter().map(|a| (a.id, a.at)).collect()
    }

    /// The `server_id` of the database that acknowledged the latest row (0: none yet).
    pub fn last_server(&self) -> u32 {
        self.last_server.load(Ordering::Relaxed) as u32
    }

    /// Stops the writer; returns every acknowledged row with the server that acknowledged it.
    pub fn finish_tagged(mut self) -> Vec<Ack> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().expect("writer thread")
    }
}

/// The longest pause between consecutive acknowledged writes that ended after `since`.
pub fn longest_pause(acked: &[(u64, Instant)], since: Instant) -> Duration {
    acked
        .windows(2)
        .filter(|w| w[1].1 > since)
        .map(|w| w[1].1 - w[0].1)
        .max()
        .unwrap_or_default()
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

async fn write_loop(stop: Arc<AtomicBool>, last_server: Arc<AtomicUsize>) -> Vec<Ack> {
    use mysql_async::prelude::Queryable;
    // prefer_socket(false): mysql_async would otherwise reconnect through the server's Unix
    // socket (@@socket), which the lab's shared file system lets it open — past the VIP and
    // every network fault.
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(VIP4)
        .prefer_socket(false)
        .user(Some("app"))
        .pass(Some("app-lab-password"))
        .db_name(Some("lab"));
    // A LAN connect takes well under a millisecond: retry quickly, as a pool with a short
    // connect timeout would. A statement gets longer (a commit may wait for a replica).
    let connect_limit = Duration::from_millis(100);
    let limit = Duration::from_millis(500);
    let mut acked = Vec::new();
    let mut conn: Option<mysql_async::Conn> = None;
    let mut server: u32 = 0;
    let mut next: u64 = 1;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            match tokio::time::timeout(connect_limit, connect_to_server(&opts)).await {
                Ok(Some((c, id))) => (conn, server) = (Some(c), id),
                _ => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().unwrap();
        let id = next;
        next += 1;
        match tokio::time::timeout(limit, c.exec_drop("INSERT INTO writes (id) VALUES (?)", (id,))).await {
            Ok(Ok(())) => {
                last_server.store(server as usize, Ordering::Relaxed);
                acked.push(Ack {
                    id,
                    at: Instant::now(),
                    server,
                })
            }
            // A hung or failed connection is abandoned (never closed politely: the server may
            // be gone).
            _ => {
                if let Some(c) = conn.take() {
                    std::mem::forget(c);
                }
            }
        }
    }
    acked
}

/// The client's ping to a VIP: reply timestamps, for outage measurement.
pub struct Pinger {
    child: Option<Child>,
    replies: Arc<Mutex<Vec<f64>>>,
    reader: Option<JoinHandle<()>>,
}

impl Pinger {
    /// The largest gap between consecutive replies received after `since_unix` (seconds).
    pub fn max_gap_since(&self, since_unix: f64) -> Option<Duration> {
        let r = self.replies.lock().unwrap();
        let recent: Vec<f64> = r.iter().copied().filter(|t| *t >= since_unix).collect();
        recent
            .windows(2)
            .map(|w| w[1] - w[0])
            .fold(None, |m: Option<f64>, g| Some(m.map_or(g, |m| m.max(g))))
            .map(Duration::from_secs_f64)
    }

    pub fn replies_since(&self, since_unix: f64) -> usize {
        self.replies
            .lock()
            .unwrap()
            .iter()
            .filter(|t| **t >= since_unix)
            .count()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(&c, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A script running in the client's namespace, its output going to a file; its process group
/// is killed when dropped.
pub struct ClientScript {
    child: Option<Child>,
    output: PathBuf,
}

impl ClientScript {
    /// What the script has printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Stops the script with SIGTERM to it alone, which it traps like Ctrl-C, waits at most
    /// `limit` for it to end, and returns its exit code and output. Not SIGINT: bash drops a
    /// trapped SIGINT that arrives while it waits for a command that does not itself die of it
    /// (a terminal's Ctrl-C reaches the whole group; a lone SIGINT to bash can be lost), while
    /// a trapped SIGTERM always runs once the command in progress returns.
    pub fn interrupt(mut self, limit: Duration) -> (Option<i32>, String) {
        let mut child = self.child.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let mut code = None;
        let ended = wait_for(limit, || match child.try_wait() {
            Ok(Some(status)) => {
                code = status.code();
                true
            }
            Ok(None) => false,
            Err(_) => true,
        });
        if !ended {
            kill_group(&child, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
        (code, std::fs::read_to_string(&self.output).unwrap_or_default())
    }
}

impl Drop for ClientScript {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(&c, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn kill_group(child: &Child, signal: nix::sys::signal::Signal) {
    // Each child leads its own process group (started with process_group(0)).
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::killpg(pid, signal);
}

pub struct Lab {
    pub prefix: String,
    pub spec: Spec,
    pub hosts: Vec<Host>,
    pub client: Host,
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    namespaces: Vec<String>,
    agents: BTreeMap<String, Child>,
    databases: BTreeMap<String, Child>,
    observer: Option<VipObserver>,
    extra: Vec<Host>,
    nft_ready: bool,
    _serial: MutexGuard<'static, ()>,
}

fn host(prefix: &str, name: &str, n: u8, priority: u8, witness: bool) -> Host {
    Host {
        name: name.into(),
        ns: format!("{prefix}-{name}"),
        ip4: format!("192.0.2.{n}"),
        ip6: format!("2001:db8::{n}"),
        mac: format!("02:00:00:00:00:{n:02x}"),
        priority,
        witness,
        region: "",
    }
}

/// A host of a two-region lab.
fn regional(h: Host, region: &'static str) -> Host {
    let n = h.ip4.rsplit('.').next().unwrap().to_string();
    match region {
        "b" => Host {
            ip4: format!("198.51.100.{n}"),
            ip6: format!("2001:db8:b::{n}"),
            region,
            ..h
        },
        _ => Host { region, ..h },
    }
}

/// Region b's VIP in a two-region lab.
pub const VIP_B: &str = "198.51.100.50";

impl Lab {
    /// Builds the switch, db1 (priority 150), db2 (100), witness w1 and a client, and writes
    /// each agent's configuration. Agents are not started yet.
    pub fn new(bin: &Path, spec: Spec) -> Lab {
        preflight(spec.mysql.is_some());
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        remove_abandoned_labs();
        let prefix = format!(
            "vg{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let mut hosts = vec![
            host(&prefix, "db1", 11, 150, false),
            host(&prefix, "db2", 12, 100, false),
            host(&prefix, "w1", 13, 100, true),
        ];
        if spec.db3 {
            hosts.push(host(&prefix, "db3", 14, 120, false));
        }
        let mut client = host(&prefix, CLIENT, 100, 0, false);
        if spec.regions.is_some() {
            hosts = hosts
                .into_iter()
                .map(|h| {
                    let region = if h.name == "db1" { "a" } else { "b" };
                    regional(h, region)
                })
                .collect();
            client = regional(client, "a");
        }
        let mut lab = Lab {
            dir: tempfile::Builder::new()
                .prefix(&format!("{prefix}-"))
                .tempdir()
                .expect("temp dir"),
            prefix,
            spec,
            hosts,
            client,
            bin: bin.to_path_buf(),
            namespaces: Vec::new(),
            agents: BTreeMap::new(),
            databases: BTreeMap::new(),
            observer: None,
            extra: Vec::new(),
            nft_ready: false,
            _serial: serial,
        };
        lab.build();
        lab
    }

    /// [`Lab::new`], every agent started, and db1 (the highest priority) owning.
    pub fn running(bin: &Path, spec: Spec) -> Lab {
        let mut lab = Lab::new(bin, spec);
        lab.start_all();
        lab.expect_sole_holder(VIP4, "db1", Duration::from_secs(8));
        lab.expect_followed("db1", Duration::from_secs(3));
        lab
    }

    fn add_ns(&mut self, ns: &str) {
        sh(&["ip", "netns", "add", ns]);
        self.namespaces.push(ns.to_string());
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }

    fn sw(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    /// Plugs host `h` into the switch.
    pub fn attach(&mut self, h: &Host) {
        let sw = self.sw();
        self.add_ns(&h.ns);
        sh(&[
            "ip", "-n", &sw, "link", "add", &h.name, "type", "veth", "peer", "name", "eth0", "netns", &h.ns,
        ]);
        let bridge = if h.region == "b" { "br1" } else { "br0" };
        sh(&["ip", "-n", &sw, "link", "set", &h.name, "master", bridge, "up"]);
        let ns = h.ns.as_str();
        sh(&["ip", "-n", ns, "link", "set", "eth0", "address", &h.mac]);
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", h.ip4),
            "dev",
            "eth0",
        ]);
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/64", h.ip6),
            "dev",
            "eth0",
            "nodad",
        ]);
        sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        if !h.region.is_empty() {
            let gateway = if h.region == "b" {
                "198.51.100.1"
            } else {
                "192.0.2.1"
            };
            sh(&["ip", "-n", ns, "route", "add", "default", "via", gateway]);
        }
    }

    /// Two regions: a second bridge, and a router namespace joining them.
    fn build_router(&mut self) {
        let sw = self.sw();
        sh(&["ip", "-n", &sw, "link", "add", "br1", "type", "bridge"]);
        sh(&["ip", "-n", &sw, "link", "set", "br1", "up"]);
        let router = format!("{}-rt", self.prefix);
        self.add_ns(&router);
        for (port, bridge, address) in [
            ("rt-a", "br0", "192.0.2.1/24"),
            ("rt-b", "br1", "198.51.100.1/24"),
        ] {
            sh(&[
                "ip", "-n", &sw, "link", "add", port, "type", "veth", "peer", "name", port, "netns", &router,
            ]);
            sh(&["ip", "-n", &sw, "link", "set", port, "master", bridge, "up"]);
            sh(&["ip", "-n", &router, "addr", "add", address, "dev", port]);
            sh(&["ip", "-n", &router, "link", "set", port, "up"]);
        }
        sysctl(&router, "net.ipv4.ip_forward", "1");
    }

    fn build(&mut self) {
        let sw = self.sw();
        self.add_ns(&sw);
        sh(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
        if self.spec.regions.is_some() {
            self.build_router();
        }
        for h in self.hosts.clone() {
            self.attach(&h);
        }
        let client = self.client.clone();
        self.attach(&client);
        // The client re-checks a neighbour only after a minute: a changed entry is the
        // announcement's doing, not its own probing.
        for (family, key) in [
            ("ipv4", "delay_first_probe_time"),
            ("ipv6", "delay_first_probe_time"),
        ] {
            sysctl(&client.ns, &format!("net.{family}.neigh.eth0.{key}"), "60");
        }
        for family in ["ipv4", "ipv6"] {
            sysctl(
                &client.ns,
                &format!("net.{family}.neigh.eth0.base_reachable_time_ms"),
                "60000",
            );
        }
        let secret = self.dir.path().join("secret");
        std::fs::write(&secret, "lab-secret-0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        for h in self.hosts.clone() {
            std::fs::create_dir_all(self.dir.path().join(&h.name)).unwrap();
            std::fs::write(self.config_path(&h.name), self.config_text(&h.name)).unwrap();
        }
        if self.spec.mysql.is_some() {
            self.setup_mariadb();
        }
        let mut vips = vec![VIP4.to_string()];
        if self.spec.regions.is_some() {
            vips.push(VIP_B.to_string());
        }
        if self.spec.ipv6_vip {
            vips.push(VIP6.to_string());
        }
        self.observer = Some(VipObserver::start(&self.hosts, vips));
    }

    pub fn config_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name).join("vipgate.toml")
    }

    pub fn socket_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name).join("control.sock")
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name).join("agent.log")
    }

    pub fn state_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name).join("state").join("state.toml")
    }

    /// The configuration every agent gets (the same file, written once per host directory).
    pub fn config_text(&self, name: &str) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "[cluster]\nname = \"lab\"\nsecret_file = \"../secret\"\nport = {PORT}"
        );
        let _ = writeln!(
            t,
            "heartbeat_interval_ms = {}\nlease_ms = {}\nstate_dir = \"state\"",
            self.spec.interval_ms, self.spec.lease_ms
        );
        if let Some(cross) = self.spec.regions {
            let _ = writeln!(t, "cross_region_failover = {cross}");
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "[control]\nsocket = \"control.sock\"\nhttp = \"127.0.0.1:9808\"\n"
        );
        let _ = writeln!(t, "[announce]\n{}", self.spec.announce);
        for h in &self.hosts {
            let _ = writeln!(
                t,
                "[[node]]\nid = \"{}\"\naddress = \"{}\"\npriority = {}\nwitness = {}\nregion = \"{}\"\n",
                h.name,
                h.ip4,
                h.priority.max(1),
                h.witness,
                h.region
            );
        }
        if self.spec.regions.is_some() {
            let _ = writeln!(
                t,
                "[[vip]]\naddress = \"{VIP4}/24\"\ninterface = \"eth0\"\nregion = \"a\"\n\n\
                 [[vip]]\naddress = \"{VIP_B}/24\"\ninterface = \"eth0\"\nregion = \"b\"\n"
            );
        } else {
            let _ = writeln!(
                t,
                "[[vip]]\naddress = \"{VIP4}/24\"\ninterface = \"eth0\"\nlabel = \"eth0:vip\"\n"
            );
        }
        if self.spec.ipv6_vip {
            let _ = writeln!(t, "[[vip]]\naddress = \"{VIP6}/64\"\ninterface = \"eth0\"\n");
        }
        if let Some(extra) = &self.spec.dns {
            let _ = writeln!(t, "[dns]\nzone = \"{DNS_ZONE}\"\n{extra}");
        }
        if let Some(mode) = self.spec.mysql {
            let _ = writeln!(
                t,
                "[mysql]\nmode = \"{mode}\"\nsocket = \"{}\"\nuser = \"vipgate\"\npassword_file = \"../mysql-password\"\n\
                 check_interval_ms = 200\ncheck_timeout_ms = 200\nrise = 2\nfall = 3\n\
                 max_lag_ms = {}\ncatchup_timeout_ms = 5000\nkill_grace_ms = 200\n\
                 replication_user = \"repl\"\nreplication_password_file = \"../repl-password\"\n",
                self.mysql_socket(name).display(),
                self.spec.max_lag_ms
            );
        }
        t
    }

    pub fn mysql_socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(name).join("mysql.sock")
    }

    /// Runs `sql` as root on `name`'s MariaDB; returns the tab-separated output.
    pub fn sql(&self, name: &str, sql: &str) -> String {
        sh(&[
            "mariadb",
            "--no-defaults",
            &format!("--socket={}", self.mysql_socket(name).display()),
            "-uroot",
            "-N",
            "-B",
            "-e",
            sql,
        ])
    }

    /// Like [`Lab::sql`], but `None` instead of a panic when it fails.
    pub fn try_sql(&self, name: &str, sql: &str) -> Option<String> {
        let out = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.mysql_socket(name).display()))
            .args(["-uroot", "-N", "-B", "--connect-timeout=2", "-e", sql])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until one database host owns the VIP alone (with a writable database, in a lab
    /// with MariaDB): db1 usually, but the first host whose database answers may win a fresh
    /// cluster's first election. Returns (owner, the other database host).
    pub fn wait_owner(&self, limit: Duration) -> Option<(&'static str, &'static str)> {
        let mut owner = None;
        let mysql = self.spec.mysql.is_some();
        wait_for(limit, || {
            owner = ["db1", "db2"]
                .into_iter()
                .find(|h| self.observer().sole_holder(VIP4, h));
            owner.is_some_and(|o| !mysql || self.read_only(o) == Some(false))
        })
        .then_some(())?;
        let owner = owner?;
        Some((owner, if owner == "db1" { "db2" } else { "db1" }))
    }

    /// The `server_id` of a lab database host (db1 is 1, db2 is 2).
    pub fn server_id(host: &str) -> u32 {
        host.trim_start_matches("db").parse().expect("a database host")
    }

    /// `name`'s database's `read_only`, or `None` if it does not answer.
    pub fn read_only(&self, name: &str) -> Option<bool> {
        self.try_sql(name, "SELECT @@global.read_only")
            .map(|v| v.trim() == "1")
    }

    /// Initialises and starts MariaDB in `name`'s namespace, listening on its address.
    pub fn start_mariadb(&mut self, name: &str, server_id: u32) {
        let h = self.host(name).clone();
        let dir = self.dir.path().join(name);
        let data = dir.join("mysql");
        if !data.exists() {
            sh(&[
                "mariadb-install-db",
                "--no-defaults",
                &format!("--datadir={}", data.display()),
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ]);
        }
        // The server options every vipgate host gets (shared with the Vagrant lab), then this
        // lab's own paths and a small buffer pool.
        let options = dir.join("my.cnf");
        std::fs::write(
            &options,
            sh(&["bash", &provision("mariadb-config.sh"), &server_id.to_string()]),
        )
        .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &h.ns, "mariadbd"])
            .arg(format!("--defaults-file={}", options.display()))
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", self.mysql_socket(name).display()))
            .arg(format!("--pid-file={}", dir.join("mysql.pid").display()))
            .arg(format!("--log-error={}", dir.join("mysql.err").display()))
            .args(["--user=root", "--port=3306", "--innodb-buffer-pool-size=16M"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let child = die_with_parent(&mut cmd).spawn().expect("start mariadbd");
        self.databases.insert(name.to_string(), child);
        assert!(
            wait_for(Duration::from_secs(30), || self
                .try_sql(name, "SELECT 1")
                .is_some()),
            "MariaDB on {name} did not start: {}",
            std::fs::read_to_string(dir.join("mysql.err")).unwrap_or_default()
        );
    }

    /// db1 primary, db2 its replica (read_only), both with the agent's account: set up by
    /// the provisioning script the Vagrant lab runs too.
    fn setup_mariadb(&mut self) {
        for (file, password) in [
            ("mysql-password", "vipgate-lab-password"),
            ("repl-password", "repl-lab-password"),
            ("app-password", "app-lab-password"),
        ] {
            let path = self.dir.path().join(file);
            std::fs::write(&path, format!("{password}\n")).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        }
        self.start_mariadb("db1", 1);
        self.start_mariadb("db2", 2);
        if self.spec.db3 {
            self.start_mariadb("db3", 3);
        }
        let mut db1 = vec!["primary", "--demo-schema"];
        // In gate mode making the primary writable is the operator's part, not the agent's.
        if self.spec.mysql == Some("gate") {
            db1.push("--writable");
        }
        let primary = self.host("db1").ip4.clone();
        let mut roles = vec![("db1", db1), ("db2", vec!["replica", "--primary", &primary])];
        if self.spec.db3 {
            roles.push(("db3", vec!["replica", "--primary", &primary]));
        }
        for (name, role) in roles {
            let (ok, out) = self.mariadb_setup(name, &role);
            assert!(ok, "provision/mariadb-setup.sh on {name}: {out}");
        }
    }

    /// Runs `provision/mariadb-setup.sh args…` for `name`'s MariaDB, in its namespace, with
    /// the lab's passwords; whether it succeeded, and what it printed.
    pub fn mariadb_setup(&self, name: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.host(name).ns, "bash"])
            .arg(provision("mariadb-setup.sh"))
            .args(args)
            .arg("--secrets")
            .arg(self.dir.path())
            .arg("--socket")
            .arg(self.mysql_socket(name))
            .args(["--timeout", "30"])
            .output()
            .expect("run provision/mariadb-setup.sh");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Kills `name`'s MariaDB (SIGKILL) and reaps it.
    pub fn kill_mariadb(&mut self, name: &str) {
        if let Some(mut c) = self.databases.remove(name) {
            kill_group(&c, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    /// Starts a client that inserts rows through the VIP as fast as it can, one connection,
    /// reconnecting after any error; every acknowledged row is recorded.
    pub fn writer(&self) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let last_server = Arc::new(AtomicUsize::new(0));
        let (flag, last) = (stop.clone(), last_server.clone());
        let ns = self.client.ns.clone();
        let handle = std::thread::spawn(move || {
            enter_netns(&ns);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(write_loop(flag, last))
        });
        Writer {
            stop,
            last_server,
            handle: Some(handle),
        }
    }

    /// The ids of the rows in `lab.writes` on `name`'s database.
    pub fn rows(&self, name: &str) -> std::collections::BTreeSet<u64> {
        self.sql(name, "SELECT id FROM lab.writes")
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// The acknowledged rows (from [`Writer::finish`]) missing on `name`'s database.
    pub fn missing_rows(&self, name: &str, acked: &[(u64, Instant)]) -> Vec<u64> {
        let present = self.rows(name);
        acked
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !present.contains(id))
            .collect()
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) `name`'s MariaDB.
    pub fn signal_mariadb(&self, name: &str, signal: nix::sys::signal::Signal) {
        kill_group(&self.databases[name], signal);
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .chain(std::iter::once(&self.client))
            .chain(&self.extra)
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    pub fn observer(&self) -> &VipObserver {
        self.observer.as_ref().expect("observer")
    }

    /// Starts the agent of `name` (its log goes to `log_path`).
    pub fn start(&mut self, name: &str) {
        self.start_as(name, &[], &[], &[]);
    }

    /// Starts `name`'s agent through `wrapper` (e.g. `setpriv …`, empty for none) with extra
    /// environment variables and extra `vipgate run` arguments.
    pub fn start_as(&mut self, name: &str, wrapper: &[&str], env: &[(&str, String)], args: &[&str]) {
        assert!(!self.agents.contains_key(name), "agent {name} is already running");
        let h = self.host(name).clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(name))
            .unwrap();
        let mut child = Command::new("ip");
        child
            .args(["netns", "exec", &h.ns])
            .args(wrapper)
            .arg(&self.bin)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["run", "--config"])
            .arg(self.config_path(name))
            .args(["--node", name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        let child = die_with_parent(&mut child).spawn().expect("start vipgate");
        self.agents.insert(name.to_string(), child);
    }

    pub fn start_all(&mut self) {
        let names: Vec<String> = self.hosts.iter().map(|h| h.name.clone()).collect();
        for name in names {
            self.start(&name);
        }
    }

    /// The process id of a server the lab started (`named-<host>`, or a database's host name).
    pub fn service_pid(&self, key: &str) -> u32 {
        self.databases[key].id()
    }

    pub fn pid(&self, name: &str) -> i32 {
        self.agents[name].id() as i32
    }

    pub fn signal(&self, name: &str, signal: nix::sys::signal::Signal) {
        kill_group(&self.agents[name], signal);
    }

    /// SIGKILLs the agent of `name` and reaps it.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut c) = self.agents.remove(name) {
            kill_group(&c, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits (bounded) for the agent to exit; returns its exit code.
    pub fn stop(&mut self, name: &str, limit: Duration) -> Option<i32> {
        let mut c = self.agents.remove(name)?;
        kill_group(&c, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if Instant::now() >= end {
                kill_group(&c, nix::sys::signal::Signal::SIGKILL);
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs the `vipgate` binary with `args`; returns success and its output (both streams).
    pub fn vipgate<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> (bool, String) {
        let out = Command::new(&self.bin).args(args).output().expect("run vipgate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// The agent's own status, or `None` if it does not answer.
    pub fn status(&self, name: &str) -> Option<Status> {
        let answer = vipgate::control::request(&self.socket_path(name), "status").ok()?;
        serde_json::from_str(&answer).ok()
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// All agents' logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for h in &self.hosts {
            let _ = writeln!(all, "----- {} -----\n{}", h.name, self.log(&h.name));
        }
        all
    }

    /// Waits until `name` is the only host holding `vip`; panics with the logs if it is not
    /// within `limit`. Returns how long it took.
    pub fn expect_sole_holder(&self, vip: &str, name: &str, limit: Duration) -> Duration {
        let t = Instant::now();
        assert!(
            wait_for(limit, || self.observer().sole_holder(vip, name)),
            "{name} did not become the only holder of {vip} within {limit:?}; holders: {:?}\n{}",
            self.observer().holders(vip),
            self.logs()
        );
        t.elapsed()
    }

    /// Waits until every agent names `owner` as the owner (the others acknowledge it from the
    /// first heartbeat after their post-restart quiet period); panics with the logs if not.
    pub fn expect_followed(&self, owner: &str, limit: Duration) {
        let names: Vec<String> = self.hosts.iter().map(|h| h.name.clone()).collect();
        let follows = |n: &String| self.status(n).and_then(|s| s.owner).as_deref() == Some(owner);
        assert!(
            wait_for(limit, || names.iter().all(follows)),
            "not every agent names {owner} the owner within {limit:?}\n{}",
            self.logs()
        );
    }

    /// Asserts that no two hosts were ever seen holding `vip` at once.
    pub fn assert_never_two_holders(&self, vip: &str) {
        let overlaps = self.observer().overlaps(vip);
        assert!(
            overlaps.is_empty(),
            "two hosts held {vip} at once: {overlaps:?}\n{}",
            self.logs()
        );
    }

    /// The client's neighbour entry (MAC) for `ip`, if it has one.
    pub fn client_neighbour(&self, ip: &str) -> Option<String> {
        let out = sh(&["ip", "-n", &self.client.ns, "neigh", "show", ip, "dev", "eth0"]);
        let mut words = out.split_whitespace();
        while let Some(w) = words.next() {
            if w == "lladdr" {
                return words.next().map(str::to_string);
            }
        }
        None
    }

    /// Starts BIND's `named` (one worker thread) in the client's namespace, listening on the client's address,
    /// with `zones` (`zone` statements and, per zone file, its name and text) and `options`
    /// added to its configuration; waits until it answers.
    pub fn start_named(&mut self, options: &str, zones: &str, files: &[(&str, String)]) {
        let client = self.client.clone();
        self.start_named_on(&client, options, zones, files);
    }

    /// [`Lab::start_named`] on host `h` (its namespace and address).
    pub fn start_named_on(&mut self, h: &Host, options: &str, zones: &str, files: &[(&str, String)]) {
        let dir = self.dir.path().join(format!("named-{}", h.name));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let conf = dir.join("named.conf");
        std::fs::write(
            &conf,
            format!(
                "options {{\n  directory \"{d}\";\n  pid-file \"{d}/named.pid\";\n  \
                 session-keyfile \"{d}/session.key\";\n  listen-on {{ {ip}; }};\n  listen-on-v6 {{ none; }};\n  \
                 dnssec-validation no;\n  {options}\n}};\n{zones}\n",
                d = dir.display(),
                ip = h.ip4,
            ),
        )
        .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns", "exec", &h.ns, "named", "-g",
            // One worker thread: a lab needs no more, and the DNS benchmark compares one core.
            "-n", "1", "-u", "root", "-c",
        ])
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("named.log")).unwrap())
        .process_group(0);
        let child = die_with_parent(&mut cmd)
            .spawn()
            .expect("start named (package bind9)");
        self.databases.insert(format!("named-{}", h.name), child);
        let ip = h.ip4.clone();
        assert!(
            wait_for(Duration::from_secs(10), || self
                .dig(&[&format!("@{ip}"), "version.bind", "TXT", "CH"])
                .contains("status:")),
            "named did not start:\n{}",
            std::fs::read_to_string(dir.join("named.log")).unwrap_or_default()
        );
    }

    /// Starts BIND on a host of its own (ns1, 192.0.2.20) as the primary server of
    /// `db.example.com.`, accepting updates signed with [`TSIG_KEY`]; writes each agent's key
    /// file (`keys`: node and the base64 secret it gets). Agents configured with
    /// [`DNS_UPDATE`] push to it.
    pub fn start_update_server(&mut self, keys: &[(&str, &str)]) -> Host {
        for (node, key) in keys {
            let path = self.dir.path().join(node).join("tsig.key");
            std::fs::write(&path, format!("{key}\n")).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        }
        let ns1 = self.add_host("ns1", 20);
        let zone = "$TTL 300\n\
            @ IN SOA ns1.db.example.com. hostmaster.db.example.com. 1 3600 600 86400 5\n\
            @ IN NS ns1\n\
            ns1 IN A 192.0.2.20\n\
            primary 5 IN A 192.0.2.99\n\
            _owner.primary 5 IN TXT \"owner=none term=0\"\n";
        self.start_named_on(
            &ns1,
            "recursion no;",
            &format!(
                "key \"vipgate-key\" {{ algorithm hmac-sha256; secret \"{TSIG_KEY}\"; }};\n\
                 zone \"db.example.com\" {{ type primary; file \"db.example.com.zone\"; \
                 allow-update {{ key \"vipgate-key\"; }}; }};"
            ),
            &[("db.example.com.zone", zone.to_string())],
        );
        ns1
    }

    /// What the update server (ns1) serves for the primary record and its owner TXT record.
    pub fn served_by_update_server(&self) -> (String, String) {
        let short = |name: &str, qtype: &str| {
            self.dig(&["@192.0.2.20", name, qtype, "+short"])
                .trim()
                .to_string()
        };
        (
            short("primary.db.example.com.", "A"),
            short("_owner.primary.db.example.com.", "TXT"),
        )
    }

    /// An HTTP request to `name`'s agent on its own loopback (`[control] http`): the status
    /// line and the body.
    pub fn http(&self, name: &str, request: &str) -> (String, String) {
        let request = request.to_string();
        in_netns(&self.host(name).ns.clone(), move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect("127.0.0.1:9808").expect("connect to [control] http");
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
            (head.lines().next().unwrap_or("").to_string(), body.to_string())
        })
    }

    /// `dig` from the client: `args` are dig's (server, name, type, options); its output.
    pub fn dig(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.client.ns, "dig", "+time=1", "+tries=1"])
            .args(args)
            .output()
            .expect("run dig (package bind9-dnsutils)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One ping from the client to `ip`; whether it was answered (within 1 s).
    pub fn client_ping(&self, ip: &str) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.client.ns,
                "ping",
                "-n",
                "-q",
                "-c",
                "1",
                "-W",
                "1",
                ip,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs `bash script args…` in the client's namespace with `HOME` set to the lab's
    /// directory.
    pub fn client_script(&self, script: &str, args: &[&str]) -> ClientScript {
        let output = self
            .dir
            .path()
            .join(format!("{}.out", COUNTER.fetch_add(1, Ordering::SeqCst)));
        let file = std::fs::File::create(&output).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.client.ns, "bash", script])
            .args(args)
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0);
        ClientScript {
            child: Some(die_with_parent(&mut cmd).spawn().expect("start a client script")),
            output,
        }
    }

    /// Starts a ping from the client to `ip` every 5 ms.
    pub fn pinger(&self, ip: &str) -> Pinger {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.client.ns,
            "ping",
            "-n",
            "-D",
            "-i",
            "0.005",
            ip,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
        let mut child = die_with_parent(&mut cmd).spawn().expect("start ping");
        let stdout = child.stdout.take().unwrap();
        let replies = Arc::new(Mutex::new(Vec::new()));
        let sink = replies.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // "[1700000000.123456] 64 bytes from 192.0.2.50: icmp_seq=1 ttl=64 time=0.1 ms"
                if line.contains("bytes from")
                    && let Some(ts) = line.strip_prefix('[').and_then(|l| l.split(']').next())
                    && let Ok(t) = ts.parse::<f64>()
                {
                    sink.lock().unwrap().push(t);
                }
            }
        });
        Pinger {
            child: Some(child),
            replies,
            reader: Some(reader),
        }
    }

    pub fn link_down(&self, name: &str) {
        sh(&["ip", "-n", &self.host(name).ns, "link", "set", "eth0", "down"]);
    }

    pub fn link_up(&self, name: &str) {
        let h = self.host(name);
        sh(&["ip", "-n", &h.ns, "link", "set", "eth0", "up"]);
        // The link going down took the route to the other region with it.
        if !h.region.is_empty() {
            let gateway = if h.region == "b" {
                "198.51.100.1"
            } else {
                "192.0.2.1"
            };
            sh(&["ip", "-n", &h.ns, "route", "replace", "default", "via", gateway]);
        }
    }

    fn ensure_nft(&mut self) {
        if self.nft_ready {
            return;
        }
        let sw = self.sw();
        sh(&[
            "ip", "netns", "exec", &sw, "nft", "add", "table", "bridge", "vglab",
        ]);
        let chain = [
            "ip", "netns", "exec", &sw, "nft", "add", "chain", "bridge", "vglab", "cuts",
        ];
        let hook = "{ type filter hook forward priority 0; policy accept; }";
        sh(&[&chain[..], &[hook]].concat());
        self.nft_ready = true;
    }

    /// Drops every frame between hosts `a` and `b` in the switch (both directions); both still
    /// reach everyone else.
    pub fn cut(&mut self, a: &str, b: &str) {
        self.ensure_nft();
        let sw = self.sw();
        let (ma, mb) = (self.host(a).mac.clone(), self.host(b).mac.clone());
        for (s, d) in [(&ma, &mb), (&mb, &ma)] {
            sh(&[
                "ip", "netns", "exec", &sw, "nft", "add", "rule", "bridge", "vglab", "cuts", "ether",
                "saddr", s, "ether", "daddr", d, "drop",
            ]);
        }
    }

    /// Removes every cut.
    pub fn heal(&mut self) {
        if self.nft_ready {
            let sw = self.sw();
            sh(&[
                "ip", "netns", "exec", &sw, "nft", "flush", "chain", "bridge", "vglab", "cuts",
            ]);
        }
    }

    /// Drops `percent` % of the frames from and to `name`, at random, in the switch. (Loss
    /// through nftables rather than netem: the kernels this lab runs on may lack sch_netem.)
    pub fn lossy(&mut self, name: &str, percent: u8) {
        self.ensure_nft();
        let sw = self.sw();
        let mac = self.host(name).mac.clone();
        let p = percent.to_string();
        for dir in ["saddr", "daddr"] {
            sh(&[
                "ip", "netns", "exec", &sw, "nft", "add", "rule", "bridge", "vglab", "cuts", "ether", dir,
                &mac, "numgen", "random", "mod", "100", "<", &p, "drop",
            ]);
        }
    }

    /// Adds another host (e.g. a rogue) on the switch at 192.0.2.`n`.
    pub fn add_host(&mut self, name: &str, n: u8) -> Host {
        let mut h = host(&self.prefix.clone(), name, n, 0, false);
        if self.spec.regions.is_some() {
            h = regional(h, "a");
        }
        self.attach(&h);
        self.extra.push(h.clone());
        h
    }

    /// Captures up to `count` agent datagrams that `from` sends (at its switch port), within
    /// `limit`: (destination address, UDP payload).
    pub fn capture(&self, from: &str, count: usize, limit: Duration) -> Vec<(std::net::IpAddr, Vec<u8>)> {
        use pnet::datalink::{self, Channel};
        use pnet::packet::Packet;
        use pnet::packet::ethernet::{EtherTypes, EthernetPacket};
        use pnet::packet::ipv4::Ipv4Packet;
        use pnet::packet::udp::UdpPacket;
        let port_name = from.to_string();
        let source: std::net::Ipv4Addr = self.host(from).ip4.parse().unwrap();
        in_netns(&self.sw(), move || {
            let iface = datalink::interfaces()
                .into_iter()
                .find(|i| i.name == port_name)
                .expect("switch port");
            let config = datalink::Config {
                read_timeout: Some(Duration::from_millis(20)),
                promiscuous: false,
                ..Default::default()
            };
            let Ok(Channel::Ethernet(_, mut rx)) = datalink::channel(&iface, config) else {
                panic!("cannot capture on {port_name}");
            };
            let end = Instant::now() + limit;
            let mut got = Vec::new();
            while got.len() < count && Instant::now() < end {
                let Ok(frame) = rx.next() else { continue };
                let Some(eth) = EthernetPacket::new(frame) else {
                    continue;
                };
                if eth.get_ethertype() != EtherTypes::Ipv4 {
                    continue;
                }
                let Some(ip) = Ipv4Packet::new(eth.payload()) else {
                    continue;
                };
                let Some(udp) = UdpPacket::new(ip.payload()) else {
                    continue;
                };
                if udp.get_destination() == PORT && ip.get_source() == source {
                    got.push((std::net::IpAddr::V4(ip.get_destination()), udp.payload().to_vec()));
                }
            }
            got
        })
    }

    /// A relay on the path of `via`'s datagrams, as anyone on its network (or the L2 segment,
    /// with ARP spoofing) could run without the cluster key: every agent datagram `via` sends
    /// to one of `pair` is also delivered, unchanged, to the other. Runs until dropped.
    pub fn relay(&self, via: &str, pair: [&str; 2]) -> Relay {
        let stop = Arc::new(AtomicBool::new(false));
        let copied = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel::<(std::net::Ipv4Addr, Vec<u8>)>();
        let ips: Vec<std::net::Ipv4Addr> = pair.iter().map(|h| self.host(h).ip4.parse().unwrap()).collect();
        let (source, port_name, flag) = (self.host(via).ip4.parse().unwrap(), via.to_string(), stop.clone());
        let sw = self.sw();
        let capture = std::thread::spawn(move || {
            enter_netns(&sw);
            relay_capture(&port_name, source, &ips, &flag, &tx);
        });
        let (h, count) = (self.host(via).clone(), copied.clone());
        let send = std::thread::spawn(move || {
            enter_netns(&h.ns);
            let socket = std::net::UdpSocket::bind((h.ip4.parse::<std::net::IpAddr>().unwrap(), 0)).unwrap();
            for (to, bytes) in rx {
                if socket.send_to(&bytes, (to, PORT)).is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Relay {
            stop,
            copied,
            threads: vec![capture, send],
        }
    }

    /// Sends each datagram from host `from` to its destination's agent port.
    pub fn send_from(&self, from: &str, datagrams: Vec<(std::net::IpAddr, Vec<u8>)>) {
        let h = self.host(from).clone();
        in_netns(&h.ns, move || {
            let socket = std::net::UdpSocket::bind((h.ip4.parse::<std::net::IpAddr>().unwrap(), 0)).unwrap();
            for (to, bytes) in datagrams {
                socket.send_to(&bytes, (to, PORT)).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        });
    }

    /// Starts one pinned probe per database host ([`ServeProbes`]), on the first call adding
    /// their namespaces (`p<host>`, at 192.0.2.1xx) to the switch.
    pub fn serve_probes(&mut self) -> ServeProbes {
        let mut pairs = Vec::new();
        for h in self.hosts.clone().into_iter().filter(|h| !h.witness) {
            let name = format!("p{}", h.name);
            let n: u8 = h.ip4.rsplit('.').next().unwrap().parse().unwrap();
            let probe = match self.extra.iter().find(|e| e.name == name) {
                Some(p) => p.clone(),
                None => {
                    let p = self.add_host(&name, 100 + n);
                    sh(&[
                        "ip",
                        "-n",
                        &p.ns,
                        "neigh",
                        "replace",
                        VIP4,
                        "lladdr",
                        &h.mac,
                        "dev",
                        "eth0",
                        "nud",
                        "permanent",
                    ]);
                    p
                }
            };
            pairs.push((h, probe));
        }
        ServeProbes::start(pairs, VIP4.parse().unwrap())
    }

    /// Runs `vipgate ARGS` inside host `name`'s namespace (what the kernel there can do).
    pub fn vipgate_in<S: AsRef<std::ffi::OsStr>>(&self, name: &str, args: &[S]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.host(name).ns])
            .arg(&self.bin)
            .args(args)
            .output()
            .expect("run vipgate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Reads the cluster configuration the agents use.
    pub fn config(&self) -> vipgate::config::Config {
        vipgate::config::Config::load(&self.config_path("db1")).expect("lab config")
    }
}

/// A running relay (see [`Lab::relay`]).
pub struct Relay {
    stop: Arc<AtomicBool>,
    copied: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Datagrams delivered to the host they were not sent to.
    pub fn copied(&self) -> usize {
        self.copied.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Watches switch port `port` for agent datagrams from `source` to one of `pair` and passes
/// each to `out`, addressed to the other one.
fn relay_capture(
    port: &str,
    source: std::net::Ipv4Addr,
    pair: &[std::net::Ipv4Addr],
    stop: &AtomicBool,
    out: &std::sync::mpsc::Sender<(std::net::Ipv4Addr, Vec<u8>)>,
) {
    use pnet::datalink::{self, Channel};
    use pnet::packet::Packet;
    use pnet::packet::ethernet::{EtherTypes, EthernetPacket};
    use pnet::packet::ipv4::Ipv4Packet;
    use pnet::packet::udp::UdpPacket;
    let iface = datalink::interfaces()
        .into_iter()
        .find(|i| i.name == port)
        .expect("switch port");
    let config = datalink::Config {
        read_timeout: Some(Duration::from_millis(20)),
        promiscuous: false,
        ..Default::default()
    };
    let Ok(Channel::Ethernet(_, mut rx)) = datalink::channel(&iface, config) else {
        panic!("cannot capture on {port}");
    };
    while !stop.load(Ordering::Relaxed) {
        let Ok(frame) = rx.next() else { continue };
        let Some(eth) = EthernetPacket::new(frame).filter(|e| e.get_ethertype() == EtherTypes::Ipv4) else {
            continue;
        };
        let Some(ip) = Ipv4Packet::new(eth.payload()).filter(|ip| ip.get_source() == source) else {
            continue;
        };
        // Agents send from their port; the relay's own copies do not, and are not copied again.
        let Some(udp) =
            UdpPacket::new(ip.payload()).filter(|u| u.get_destination() == PORT && u.get_source() == PORT)
        else {
            continue;
        };
        if let Some(other) = pair
            .iter()
            .find(|a| **a != ip.get_destination())
            .filter(|_| pair.contains(&ip.get_destination()))
        {
            let _ = out.send((*other, udp.payload().to_vec()));
        }
    }
}

/// Deletes the namespaces of labs whose process no longer exists (a run killed without
/// unwinding). Only names this harness makes (`vg<pid>x<n>-…`) are touched.
fn remove_abandoned_labs() {
    let list = sh(&["ip", "netns", "list"]);
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = ns.strip_prefix("vg") else {
            continue;
        };
        let Some((pid, tail)) = rest.split_once('x') else {
            continue;
        };
        let well_formed = tail
            .split_once('-')
            .is_some_and(|(n, _)| n.parse::<u32>().is_ok());
        if let (Ok(pid), true) = (pid.parse::<u32>(), well_formed)
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A script of the repository's `provision/` folder, shared with the Vagrant lab.
pub fn provision(script: &str) -> String {
    format!("{}/provision/{script}", env!("CARGO_MANIFEST_DIR"))
}

/// Children die with the thread that started them, even if the test process is killed
/// without unwinding (the setting survives the exec in `ip netns exec`).
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
        })
    }
}

fn sysctl(ns: &str, key: &str, value: &str) {
    sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "sysctl",
        "-q",
        "-w",
        &format!("{key}={value}"),
    ]);
}

impl Lab {
    /// What each agent answers (or why it does not), what each host has and what each agent's
    /// threads wait in: printed when a test fails, before anything is stopped.
    fn failure_state(&self) -> String {
        let mut all = String::new();
        for h in &self.hosts {
            let status = vipgate::control::request(&self.socket_path(&h.name), "status");
            let status = status.unwrap_or_else(|e| format!("no answer: {e}"));
            let addresses = sh_out(&["ip", "-n", &h.ns, "-br", "addr"]);
            let neighbours = sh_out(&["ip", "-n", &h.ns, "neigh"]);
            let _ = writeln!(
                all,
                "----- {} -----\nstatus: {status}\n{addresses}{neighbours}",
                h.name
            );
            if let Some(c) = self.agents.get(&h.name) {
                let _ = writeln!(all, "threads: {}", thread_states(c.id()));
            }
        }
        all
    }
}

/// Each thread of `pid` as name:state:wait-channel.
fn thread_states(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "gone".into();
    };
    let read = |path: std::path::PathBuf| std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let name = read(task.path().join("comm"));
        let stat = read(task.path().join("stat"));
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("?");
        let wchan = read(task.path().join("wchan"));
        out.push(format!("{}:{state}:{wchan}", name.trim()));
    }
    out.join(" ")
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("lab {} failed; state:\n{}", self.prefix, self.failure_state());
        }
        let agents = std::mem::take(&mut self.agents);
        let databases = std::mem::take(&mut self.databases);
        for (_, mut c) in agents.into_iter().chain(databases) {
            kill_group(&c, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
        if let Some(mut o) = self.observer.take() {
            o.stop();
        }
        for ns in self.namespaces.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        if std::thread::panicking() {
            eprintln!("lab {} failed; agent logs:\n{}", self.prefix, self.logs());
        }
    }
}
