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

type DnsParts = (
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
