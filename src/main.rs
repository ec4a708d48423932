//! The `vipgate` command line.

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use vipgate::config::{Config, ConfigErrors};

#[derive(Parser)]
#[command(
    name = "vipgate",
    version,
    about = "One virtual IP for the writable MySQL/MariaDB primary, \
owned by exactly one agent under a majority lease"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (as a service: systemd/vipgate.service).
    Run {
        /// The configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// This node's id (default: the host name).
        #[arg(long)]
        node: Option<String>,
        /// Log lines for people (under journald without their own timestamps: the journal
        /// adds them) or as JSON objects, one per line.
        #[arg(long, value_enum, default_value_t = LogFormat::Human)]
        log_format: LogFormat,
    },
    /// Show the running agent's view of the cluster.
    Status {
        /// The configuration file (its [control] socket is used).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The control socket, instead of the one the configuration names.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Redraw the table every SECONDS (default 1) until interrupted.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "1", conflicts_with = "json")]
        watch: Option<f64>,
        /// Print nothing; exit 0 if this node owns, 1 if it does not (2 if the agent cannot be asked).
        #[arg(long, conflicts_with_all = ["json", "watch"])]
        is_owner: bool,
    },
    /// Re-read the configuration on the running agent (as SIGHUP does) and say what changed;
    /// changes that need a restart are refused and nothing changes. A held VIP stays.
    Reload {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), e.g. `vipgate man > /usr/share/man/man8/vipgate.8`.
    Man,
    /// Planned hand-over: run on the owner; it fences its database, then hands ownership (and
    /// its final position) to NODE or to the best candidate, which catches up and promotes.
    Switchover {
        /// The node to hand over to (default: the best eligible candidate).
        #[arg(long)]
        to: Option<String>,
        /// How long to wait for the new owner to have promoted, in seconds (its catch-up may
        /// take up to [mysql] catchup_timeout_ms).
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Keep this node from owning (handing over if it owns), or let it own again. Persisted.
    Maintenance {
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Lift the anti-flap window after an automatic failover ([mysql] failover_block_ms): on
    /// the owner for the whole cluster; on a node when no node owns, so that it may take over
    /// (there it also lifts the cross-region block for the last owner's term).
    FailoverAck {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Validate a configuration file and print a summary of the cluster it describes.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
        /// This node's id (default: the host name, if it is a member).
        #[arg(long)]
        node: Option<String>,
        /// Also connect to the local database ([mysql]) and report its version, GTID and
        /// semi-sync settings, and the privileges the mode needs that the account lacks.
        #[arg(long)]
        probe: bool,
    },
}

const DEFAULT_CONFIG: &str = "/etc/vipgate/vipgate.toml";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        end_quietly_on_a_closed_pipe();
    }
    if let Command::Status {
        config,
        socket,
        is_owner: true,
        ..
    } = &cli.command
    {
        // Exit codes for scripts: 0 owns, 1 does not, 2 cannot tell.
        return match owns(config, socket.clone()) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        };
    }
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Command) -> Result<(), String> {
    match cli {
        Command::CheckConfig { file, node, probe } => {
            check_config(&file, node.as_deref()).map_err(|e| e.to_string())?;
            if probe {
                probe_host(&file, node.as_deref())
            } else {
                Ok(())
            }
        }
        Command::Run {
            config,
            node,
            log_format,
        } => run(&config, node.as_deref(), log_format),
        Command::Status {
            config,
            socket,
            json,
            watch,
            ..
        } => match watch {
            Some(seconds) => watch_status(&config, socket, seconds),
            None => status(&config, socket, json),
        },
        Command::Reload { config, socket } => command(&config, socket, "reload").map(|m| println!("{m}")),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "vipgate", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd)
                .section("8")
                .render(&mut std::io::stdout())
                .map_err(|e| format!("cannot write the manual page: {e}"))
        }
        Command::Switchover {
            to,
            timeout,
            config,
            socket,
        } => switchover(
            &config,
            socket,
            to.as_deref(),
            std::time::Duration::from_secs(timeout),
        ),
        Command::Maintenance {
            state,
            config,
            socket,
        } => {
            let line = vipgate::control::Command::Maintenance(state == "on").to_string();
            command(&config, socket, &line).map(|m| println!("{m}"))
        }
        Command::FailoverAck { config, socket } => {
            let line = vipgate::control::Command::FailoverAck.to_string();
            command(&config, socket, &line).map(|m| println!("{m}"))
        }
    }
}

/// A command whose output is cut short (`vipgate check-config … | head`) ends as other
/// command-line tools do, by SIGPIPE, instead of panicking in `println!`. Not for the agent,
/// which must outlive any client that closes its end of a socket.
fn end_quietly_on_a_closed_pipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: the default action, set before any other thread exists.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// This node: `--node`, or the host name, which must then be a member.
fn this_node(config: &Config, node: Option<&str>) -> Result<vipgate::core::NodeIdx, ConfigErrors> {
    match node {
        Some(id) => config.node_index(id),
        None => config.node_index(&host_name().unwrap_or_default()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn run(file: &Path, node: Option<&str>, format: LogFormat) -> Result<(), String> {
    let config = Config::load(file).map_err(|e| e.to_string())?;
    let me = this_node(&config, node).map_err(|e| e.to_string())?;
    let level = match std::env::var("VIPGATE_LOG").as_deref() {
        Ok("debug") => tracing::Level::DEBUG,
        Ok("warn") => tracing::Level::WARN,
        _ => tracing::Level::INFO,
    };
    let logs = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false);
    // The DNS library logs every query at INFO, and each query from an unusable source at
    // WARN: a flood would bury the agent's own messages (and journald's rate limit drop them).
    let quiet = tracing::Level::ERROR;
    let targets = tracing_subscriber::filter::Targets::new()
        .with_default(level)
        .with_target("hickory_server", quiet)
        .with_target("hickory_proto", quiet)
        .with_target("hickory_net", quiet);
    // systemd sets JOURNAL_STREAM when stderr goes to the journal, which stamps every line.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    match format {
        LogFormat::Json => logs.json().with_current_span(false).finish().with(targets).init(),
        LogFormat::Human if journald => logs.without_time().with_ansi(false).finish().with(targets).init(),
        LogFormat::Human => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .finish()
            .with(targets)
            .init(),
    }
    abort_on_panic();
    vipgate::agent::run(config, me)
}

/// A panic anywhere in the agent ends the process at once instead of unwinding past the VIP
/// clean-up or leaving a task dead inside a live process: the kernel fence stops serving the
/// VIPs at the lease end, `Restart=on-failure` brings the agent back, and it fences its
/// database and removes stale VIPs first.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!("panic: aborting; the kernel fence stops serving the VIPs at the lease end");
        std::process::abort();
    }));
}

/// `check-config --probe`: what this host's kernel and database will do for the agent.
fn probe_host(file: &Path, node: Option<&str>) -> Result<(), String> {
    let config = Config::load(file).map_err(|e| e.to_string())?;
    let me = match node {
        Some(id) => Some(config.node_index(id).map_err(|e| e.to_string())?),
        None => host_name().and_then(|h| config.node_index(&h).ok()),
    };
    let witness = me.is_some_and(|i| config.nodes[usize::from(i)].witness);
    let fenced = !witness && config.kernel_fence && !config.vips.is_empty();
    if fenced {
        probe_fence()?;
    }
    match config.mysql.clone() {
        Some(mysql) if !witness => probe_database(&config, &mysql),
        _ if fenced => Ok(()),
        _ => Err(format!(
            "{}: there is nothing to probe on this node (no [mysql], or mode = \"none\", and no fenced VIP)",
            file.display()
        )),
    }
}

/// Proves, in a table of its own that it removes again, that this kernel can run the fence.
fn probe_fence() -> Result<(), String> {
    if !vipgate::agent::has_capability(vipgate::agent::CAP_NET_ADMIN) {
        println!(
            "fence     not probed: checking the kernel needs CAP_NET_ADMIN (run as root, or as the unit runs \
             the agent); the agent checks it at start"
        );
        return Ok(());
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    match vipgate::vip::fence::check_kernel() {
        Ok(()) => {
            println!(
                "fence     OK: this kernel ({}) shortens and removes set elements as the fence needs",
                release.trim()
            );
            Ok(())
        }
        Err(e) => Err(format!(
            "fence problem: {e}\n  fix: run Linux 6.12 or later with nf_tables, or set [fence] kernel = false \
             (a dead agent's VIPs are then served until their address lifetime ends, up to about two seconds \
             past the lease)"
        )),
    }
}

/// One bounded connection to the local database: version, account, settings.
fn probe_database(config: &Config, mysql: &vipgate::config::Mysql) -> Result<(), String> {
    let mysql = mysql.clone();
    let password = config.read_mysql_password().map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let timeout = std::time::Duration::from_secs(5).max(mysql.check_timeout);
    let mut report = runtime.block_on(vipgate::mysql::check::check(&mysql, &password, timeout));
    println!("database  probed at {} as {}", mysql.endpoint, mysql.user);
    for line in &report.lines {
        println!("          {line}");
    }
    // The agent's own finding, which the database cannot show: it refused to rejoin.
    match vipgate::agent::state::StateFile::peek_diverged(&config.cluster.state_dir) {
        Ok(Some(why)) => report.problems.push(format!(
            "DIVERGED: {why} — this database has transactions the primary lacks and stays out of \
             replication and ownership; see \"diverged\" in docs/mysql.md"
        )),
        Ok(None) => {}
        Err(e) => report.problems.push(e.to_string()),
    }
    if report.problems.is_empty() {
        println!("database: OK");
        Ok(())
    } else {
        Err(report
            .problems
            .iter()
            .map(|p| format!("database problem: {p}"))
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

fn socket_of(file: &Path, socket: Option<PathBuf>) -> Result<PathBuf, String> {
    match socket {
        Some(s) => Ok(s),
        None => Ok(Config::load(file).map_err(|e| e.to_string())?.control.socket),
    }
}

/// Sends a command that answers `{"ok": …, "message"|"error": …}`.
fn command(file: &Path, socket: Option<PathBuf>, line: &str) -> Result<String, String> {
    let socket = socket_of(file, socket)?;
    let answer = vipgate::control::request(&socket, line)?;
    let v: serde_json::Value = serde_json::from_str(&answer)
        .map_err(|_| format!("the agent at {} answered: {}", socket.display(), answer.trim()))?;
    match (v["ok"].as_bool(), v["message"].as_str(), v["error"].as_str()) {
        (Some(true), Some(m), _) => Ok(m.to_string()),
        (_, _, Some(e)) => Err(format!("refused: {e}")),
        _ => Err(format!("unexpected answer: {}", answer.trim())),
    }
}

fn switchover(
    file: &Path,
    socket: Option<PathBuf>,
    to: Option<&str>,
    timeout: std::time::Duration,
) -> Result<(), String> {
    let socket = socket_of(file, socket)?;
    let line = vipgate::control::Command::Switchover(to.map(str::to_string)).to_string();
    let started = std::time::Instant::now();
    println!("{}", command(file, Some(socket.clone()), &line)?);
    loop {
        let answer = vipgate::control::request(&socket, "status")?;
        // Done when another node claims the lease with a writable database (it has promoted).
        if let Ok(s) = serde_json::from_str::<vipgate::control::Status>(&answer)
            && let Some(p) = s.peers.iter().find(|p| {
                p.id != s.node && p.role == "owner" && p.database.as_ref().is_none_or(|d| d.writable)
            })
        {
            println!(
                "{} owns (term {}) after {} ms",
                p.id,
                p.term,
                started.elapsed().as_millis()
            );
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(format!(
                "no new owner within {} s; this node does not compete for one lease, then may own again \
                 (see vipgate status and the agents' logs)",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn status(file: &Path, socket: Option<PathBuf>, json: bool) -> Result<(), String> {
    let socket = socket_of(file, socket)?;
    let answer = vipgate::control::request(&socket, "status")?;
    let status: vipgate::control::Status = serde_json::from_str(&answer)
        .map_err(|_| format!("the agent at {} answered: {}", socket.display(), answer.trim()))?;
    if json {
        println!("{}", answer.trim());
    } else {
        print!("{}", vipgate::control::render(&status));
    }
    Ok(())
}

/// Whether this node's agent owns.
fn owns(file: &Path, socket: Option<PathBuf>) -> Result<bool, String> {
    let socket = socket_of(file, socket)?;
    let answer = vipgate::control::request(&socket, "status")?;
    let status: vipgate::control::Status = serde_json::from_str(&answer)
        .map_err(|_| format!("the agent at {} answered: {}", socket.display(), answer.trim()))?;
    Ok(status.role == "owner")
}

/// The status table, redrawn every `seconds` until interrupted; an agent that stops answering
/// is shown as such, and the watch goes on.
fn watch_status(file: &Path, socket: Option<PathBuf>, seconds: f64) -> Result<(), String> {
    if !(0.1..=3600.0).contains(&seconds) {
        return Err(format!("--watch {seconds}: give 0.1 to 3600 seconds"));
    }
    let socket = socket_of(file, socket)?;
    loop {
        let text = match vipgate::control::request(&socket, "status") {
            Ok(answer) => match serde_json::from_str::<vipgate::control::Status>(&answer) {
                Ok(s) => vipgate::control::render(&s),
                Err(_) => format!("the agent answered: {}\n", answer.trim()),
            },
            Err(e) => format!("{e}\n"),
        };
        // Clear the screen and home the cursor, then draw.
        print!("\x1b[2J\x1b[H{text}");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
    }
}

fn host_name() -> Option<String> {
    nix::unistd::gethostname().ok()?.into_string().ok()
}

fn ms(d: std::time::Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn check_config(file: &Path, node: Option<&str>) -> Result<(), ConfigErrors> {
    let config = Config::load(file)?;
    let me = match node {
        Some(id) => Some(config.node_index(id)?),
        // Without --node, the host name selects this node if it is a member.
        None => host_name().and_then(|h| config.node_index(&h).ok()),
    };
    let secret = config.read_secret()?;
    let c = &config.cluster;
    println!("{}: OK", file.display());
    println!(
        "cluster   {} — UDP port {}, secret {} ({} bytes)",
        c.name,
        c.port,
        c.secret_file.display(),
        secret.bytes().len()
    );
    print_timing(&config, me);
    print_members(&config, me);
    print_vips(&config, me);
    print_database(&config);
    print_dns(&config);
    println!(
        "regions   {}",
        if config.cluster.cross_region_failover {
            "automatic failover into another region allowed (cross_region_failover)"
        } else {
            "no automatic failover into another region (cross_region_failover off)"
        }
    );
    println!("control   {}", config.control.socket.display());
    match me {
        Some(i) => println!("this node: {}", config.nodes[usize::from(i)].id),
        None => println!(
            "this node: not chosen (host name {:?} is not a member; pass --node ID to check one)",
            host_name().unwrap_or_default()
        ),
    }
    if config.nodes.len() == 1 {
        println!("note: a single member owns whenever its database is healthy; there is no failover");
    }
    Ok(())
}

fn print_timing(config: &Config, me: Option<u8>) {
    let c = &config.cluster;
    let settings = config.core_settings(me.unwrap_or(0), 0);
    println!(
        "timing    heartbeat {}, lease {}, clock drift {:.1} % (lease and drift must be the same on every agent)",
        ms(c.interval),
        ms(c.lease),
        c.clock_drift * 100.0
    );
    println!(
        "          owner renews within {}, starts releasing {} before; a crashed owner is replaced after ≈ {}",
        ms(settings.owner_lease()),
        ms(settings.release_budget),
        ms(c.lease + c.interval)
    );
    match c.preempt_delay {
        Some(d) => println!(
            "preempt   on, after a higher-priority node has been eligible for {}",
            ms(d)
        ),
        None => println!("preempt   off (a healthy owner keeps the VIP)"),
    }
    println!("state     {}", c.state_dir.display());
}

fn print_members(config: &Config, me: Option<u8>) {
    let n = config.nodes.len();
    let majority = config.majority();
    let witnesses = config.nodes.iter().filter(|n| n.witness).count();
    println!(
        "members   {n} ({} database, {witnesses} witness); majority {majority}, survives {} failure(s)",
        n - witnesses,
        n - majority
    );
    println!(
        "   {:<16} {:<40} {:>8}  {:<10} role",
        "id", "address", "priority", "region"
    );
    for (i, node) in config.nodes.iter().enumerate() {
        let mark = if me == Some(i as u8) { "*" } else { " " };
        let (priority, role) = if node.witness {
            ("-".to_string(), "witness")
        } else {
            (node.priority.to_string(), "database")
        };
        println!(
            "{mark}  {:<16} {:<40} {:>8}  {:<10} {role}",
            node.id,
            node.address.to_string(),
            priority,
            node.region
        );
    }
}

fn print_vips(config: &Config, me: Option<u8>) {
    for vip in &config.vips {
        let region = if vip.region.is_empty() { "any" } else { &vip.region };
        let label = vip
            .label
            .as_deref()
            .map(|l| format!(", label {l}"))
            .unwrap_or_default();
        println!("vip       {vip} (region {region}{label})");
    }
    if config.vips.is_empty() {
        println!("vip       none configured (ownership is still elected and shown by status)");
        return;
    }
    let a = &config.announce;
    let opt = |d: Option<std::time::Duration>| d.map_or("never".to_string(), ms);
    println!(
        "announce  {} frames per burst; second burst after {}; refresh every {}",
        a.repeat,
        opt(a.delay),
        opt(a.refresh)
    );
    let settings = config.core_settings(me.unwrap_or(0), 0);
    // The kernel lifetime is whole seconds, set at each renewal to cover the lease left; the
    // kernel's lifetime check may run up to about a second late.
    let lease = settings.owner_lease();
    let lifetime = std::time::Duration::from_secs(lease.as_secs() + u64::from(lease.subsec_nanos() > 0));
    let linger = ms(lifetime - lease + std::time::Duration::from_secs(1));
    if config.kernel_fence {
        println!(
            "fence     kernel (nftables tables inet/arp vipgate; Linux 6.12+, checked at start and by --probe): a \
             frozen or killed owner stops serving its VIPs {} before its lease ends; the addresses \
             themselves linger up to ≈ {linger} longer, dropped",
            ms(settings.release_budget / 2)
        );
    } else {
        println!(
            "fence     OFF: a frozen or killed owner's VIPs are served until the kernel removes them, up to \
             ≈ {linger} after the lease ends (set [fence] kernel = true on Linux 6.12+)"
        );
    }
}

fn print_database(config: &Config) {
    let Some(m) = &config.mysql else {
        println!("database  not consulted (no [mysql], or mode = \"none\")");
        return;
    };
    let mode = match m.mode {
        vipgate::config::MysqlMode::Promote => format!(
            "promote (replicas at most {} behind; catch-up within {}; clients killed {} after fencing; {}; fenced \
             at every agent start)",
            ms(m.max_lag),
            ms(m.catchup_timeout),
            ms(m.kill_grace),
            if m.failover_block.is_zero() {
                "no anti-flap window".to_string()
            } else {
                format!(
                    "no second automatic failover within {} s",
                    m.failover_block.as_secs()
                )
            }
        ),
        vipgate::config::MysqlMode::Gate => "gate".to_string(),
    };
    println!(
        "database  {mode}: {} as {}; checks every {} (timeout {}), failing after {} in a row, healthy after {}; \
         a dead or hung database is noticed within {}",
        m.endpoint,
        m.user,
        ms(m.check_interval),
        ms(m.check_timeout),
        m.fall,
        m.rise,
        ms(m.detection_bound())
    );
}

fn print_dns(config: &Config) {
    let Some(dns) = &config.dns else { return };
    let servers: Vec<String> = config
        .nodes
        .iter()
        .filter(|n| !n.dns.is_empty())
        .map(|n| n.id.clone())
        .collect();
    println!(
        "dns       zone {} (primary record {}.{}, TTL {} s) served by {}",
        dns.zone,
        dns.record,
        dns.zone,
        dns.ttl,
        if servers.is_empty() {
            "no agent".to_string()
        } else {
            servers.join(", ")
        }
    );
    if let Some(u) = &dns.update {
        println!(
            "dns       the owner updates {} on {} (zone {}, TSIG key {})",
            u.record, u.server, u.zone, u.key_name
        );
    }
}
