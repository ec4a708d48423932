//! Pieces of the agent's start that set up one effect each: the capability check, the UDP
//! socket, the VIP task (with its fence and backstop), the name server.

use super::{CAP_NET_ADMIN, CAP_NET_RAW, has_capability};
use crate::config::Config;
use crate::core::NodeIdx;
use crate::vip::{self, Report};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

/// With VIPs to manage, the agent refuses to run without the capabilities it will need at the
/// first failover, rather than fail then.
pub(super) fn check_capabilities(config: &Config) -> Result<(), String> {
    if config.vips.is_empty() {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_NET_RAW, "CAP_NET_RAW")]
        .into_iter()
        .filter(|(cap, _)| !has_capability(*cap))
        .map(|(_, name)| name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "vipgate run lacks {}: it adds and removes VIPs and fences them (CAP_NET_ADMIN) and announces them \
         (CAP_NET_RAW)\n  fix: run it as root, or grant both (systemd: AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW)",
        missing.join(" and ")
    ))
}

/// Raises the soft descriptor limit to the hard one, and says so if it stays below what the
/// capped listeners of this node and the agent itself may hold together: clients could then
/// exhaust the descriptors a failover's persist needs.
pub(super) fn check_descriptors(config: &Config, me: NodeIdx) {
    use crate::net::admission::{Caps, descriptor_budget};
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let mut caps: Vec<Caps> = vec![crate::dns::TCP_CAPS; config.nodes[usize::from(me)].dns.len()];
    if config.control.http.is_some() {
        caps.push(crate::control::http::CAPS);
    }
    caps.push(Caps {
        total: crate::control::MAX_CLIENTS,
        per_source: crate::control::MAX_CLIENTS,
    });
    let need = descriptor_budget(&caps);
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    // Under the unit LimitNOFILE sets both limits to the same value: nothing to raise.
    let soft = match soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        true => hard,
        false => soft,
    };
    if soft < need {
        tracing::warn!(
            "the descriptor limit ({soft}) is below what this node's listeners and the agent may hold ({need}): \
             many clients could starve a failover\n  fix: raise it (systemd: LimitNOFILE=65536; shell: ulimit -n)"
        );
    }
}

/// The node's UDP socket; binding it also proves this is the one agent of the node, on its host.
pub(super) async fn bind(config: &Config, me: NodeIdx) -> Result<(UdpSocket, SocketAddr), String> {
    let node = &config.nodes[usize::from(me)];
    let bind = SocketAddr::new(node.address, config.cluster.port);
    let socket = UdpSocket::bind(bind).await.map_err(|e| {
        format!(
            "cannot listen on UDP {bind}: {e}\n  fix: node {:?} must run on the host that has address {} \
             (check [[node]] address, or --node), and only one agent may run per node",
            node.id, node.address
        )
    })?;
    Ok((socket, bind))
}

/// The VIP task, if the cluster has VIPs (a witness runs it with none of its own, to remove
/// stale ones); its reports.
pub(super) async fn vips(
    config: &Config,
    me: NodeIdx,
) -> Result<(Option<vip::Vips>, mpsc::UnboundedReceiver<Report>), String> {
    if config.vips.is_empty() {
        let (_, rx) = mpsc::unbounded_channel();
        return Ok((None, rx));
    }
    let mine = if config.nodes[usize::from(me)].witness {
        Vec::new()
    } else {
        config.vips_of(me)
    };
    let (vips, rx) = vip::start(vip::Setup {
        mine,
        all: config.vips.clone(),
        announce: config.announce,
        release_budget: config.core_settings(me, 0).release_budget,
        kernel_fence: config.kernel_fence,
    })
    .await?;
    Ok((Some(vips), rx))
}

pub(super) type DnsParts = (
    Option<watch::Sender<crate::dns::View>>,
    Option<watch::Sender<Arc<crate::dns::zone::Zone>>>,
    Option<Arc<crate::dns::Counters>>,
);

/// The name server, if this node serves the zone: its view, its zone and its answer counts.
pub(super) async fn dns(config: &Config, me: NodeIdx) -> Result<DnsParts, String> {
    let node = &config.nodes[usize::from(me)];
    match crate::dns::zone::Zone::new(config) {
        Some(zone) if !node.dns.is_empty() => {
            let (tx, rx) = watch::channel(crate::dns::View::default());
            let (zone_tx, zone_rx) = watch::channel(Arc::new(zone));
            let (port, rate) = config.dns.as_ref().map_or((53, 0), |d| (d.port, d.rate_limit));
            let counters = crate::dns::start(zone_rx, &node.dns, port, rate, rx).await?;
            Ok((Some(tx), Some(zone_tx), Some(counters)))
        }
        _ => Ok((None, None, None)),
    }
}

/// The socket with the codec keyed with the cluster secret.
pub(super) fn transport(
    config: &Config,
    me: NodeIdx,
    secrets: &Secrets,
    socket: crate::net::transport::Socket,
    boot: u64,
) -> crate::net::Transport {
    let ids: Vec<String> = config.nodes.iter().map(|n| n.id.clone()).collect();
    let peers = (config.nodes.iter())
        .map(|n| SocketAddr::new(n.address, config.cluster.port))
        .collect();
    let codec = crate::net::Codec::new(
        &config.cluster.name,
        secrets.cluster.bytes(),
        config.fingerprint(),
        config.core_settings(me, 0).timing(),
        ids,
        me,
    );
    crate::net::Transport::new(socket, peers, codec, me, boot)
}

/// Every secret the agent needs, read once before it starts (a file that cannot be read stops
/// the start with the file's name and the fix, instead of a failure at the first failover).
pub(super) struct Secrets {
    pub cluster: crate::config::Secret,
    pub mysql: Option<crate::config::Secret>,
    pub replication: Option<crate::config::Secret>,
    pub update_key: Option<crate::config::Secret>,
}

impl Secrets {
    pub(super) fn read(config: &Config, me: NodeIdx) -> Result<Secrets, String> {
        let database = !config.nodes[usize::from(me)].witness;
        let text = |e: crate::config::ConfigErrors| e.to_string();
        Ok(Secrets {
            cluster: config.read_secret().map_err(text)?,
            mysql: if database && config.mysql.is_some() {
                config.read_mysql_password().map_err(text)?
            } else {
                None
            },
            replication: config.read_replication_password().map_err(text)?,
            update_key: if database {
                config.read_update_key().map_err(text)?
            } else {
                None
            },
        })
    }
}

/// The local database's probe, its settings channel, the settings with the password, and (in
/// promote mode) the queue of database jobs; nothing on a witness or without `[mysql]`.
pub(super) struct Database {
    pub status: Option<watch::Receiver<crate::mysql::DbStatus>>,
    pub settings: Option<watch::Sender<crate::config::Mysql>>,
    pub mysql: Option<(crate::config::Mysql, Option<crate::config::Secret>)>,
    pub jobs: Option<mpsc::UnboundedSender<super::database::Job>>,
}

pub(super) fn database(
    config: &Config,
    me: NodeIdx,
    secrets: &Secrets,
    outcomes: &mpsc::UnboundedSender<super::database::Outcome>,
) -> Database {
    let mysql = config
        .mysql
        .as_ref()
        .filter(|_| !config.nodes[usize::from(me)].witness);
    let Some(mysql) = mysql else {
        return Database {
            status: None,
            settings: None,
            mysql: None,
            jobs: None,
        };
    };
    let (status, settings) = crate::mysql::start(mysql.clone(), secrets.mysql.clone());
    let jobs = (mysql.mode == crate::config::MysqlMode::Promote).then(|| {
        let (replication, outcomes) = (secrets.replication.clone(), outcomes.clone());
        super::database::start_worker(mysql.clone(), secrets.mysql.clone(), replication, outcomes)
    });
    Database {
        status: Some(status),
        settings: Some(settings),
        mysql: Some((mysql.clone(), secrets.mysql.clone())),
        jobs,
    }
}

/// The `[dns.update]` pusher, on a database node that has one.
pub(super) fn dns_push(
    config: &Config,
    me: NodeIdx,
    secrets: &Secrets,
) -> Result<Option<Arc<crate::dns::update::Updater>>, String> {
    let update = config.dns.as_ref().and_then(|d| d.update.as_ref());
    match (update, config.nodes[usize::from(me)].witness) {
        (Some(update), false) => {
            let key = secrets.update_key.as_ref().map(|k| k.bytes()).unwrap_or_default();
            Ok(Some(Arc::new(crate::dns::update::Updater::new(update, key)?)))
        }
        _ => Ok(None),
    }
}
