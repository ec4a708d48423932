//! The embedded authoritative name server (hickory-server): every agent that serves DNS answers
//! the zone of `[dns]` over UDP and TCP, from memory, with no I/O per request.
//!
//! hickory's `Catalog` and in-memory zone handler serve static records; the primary record here
//! depends on live ownership state and must fail (SERVFAIL) on an agent that does not know the
//! owner with quorum. So a small [`RequestHandler`] of our own answers from [`zone::Zone`] and
//! the agent's latest [`View`]; hickory still does the UDP transport, parsing and framing. TCP
//! connections are accepted by [`tcp`], which caps them.

mod tcp;
pub mod update;
pub mod zone;

pub use tcp::CAPS as TCP_CAPS;

use crate::agent::clock;
use crate::core::Instant;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo, Server};
use hickory_server::zone_handler::MessageResponseBuilder;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;
use zone::{Owner, Zone};

/// Longest query answered: one question (a name is at most 255 bytes) with its header and an
/// EDNS record fits well within it; anything longer carries something that is not a question.
const MAX_QUERY: usize = 512;

/// What the agent knows, as the name server needs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// The owner known with quorum, and until when that knowledge holds (the lease this agent
    /// holds or grants): past it, the answer is SERVFAIL even if the agent loop stalled.
    pub owner: Option<(Owner, Instant)>,
    /// The SOA serial: the newest term this agent knows, which only grows (it is persisted)
    /// and changes with every ownership change.
    pub serial: u32,
}

/// Answers by response code, for status and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub noerror: AtomicU64,
    pub nxdomain: AtomicU64,
    pub servfail: AtomicU64,
    pub refused: AtomicU64,
    pub other: AtomicU64,
    /// TCP queries that were not DNS requests (the connection is closed).
    pub malformed: AtomicU64,
}

impl Counters {
    fn count(&self, rcode: ResponseCode) {
        let c = match rcode {
            ResponseCode::NoError => &self.noerror,
            ResponseCode::NXDomain => &self.nxdomain,
            ResponseCode::ServFail => &self.servfail,
            ResponseCode::Refused => &self.refused,
            _ => &self.other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

struct Handler {
    /// Replaced by a reload.
    zone: watch::Receiver<Arc<Zone>>,
    view: watch::Receiver<View>,
    counters: Arc<Counters>,
}

fn fallback(request: &Request, rcode: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = rcode;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

/// The handler, shared by hickory's UDP server and the agent's own TCP listener.
struct Shared(Arc<Handler>);

#[async_trait::async_trait]
impl RequestHandler for Shared {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        self.0.handle_request::<R, T>(request, response).await
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let edns = request.edns.as_ref().map(|e| {
            let mut ours = Edns::new();
            ours.set_max_payload(e.max_payload().max(512));
            ours.set_version(0);
            ours
        });
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let rcode = if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            Some(ResponseCode::BADVERS)
        } else if request.metadata.op_code != OpCode::Query {
            Some(ResponseCode::NotImp)
        } else if request.as_slice().len() > MAX_QUERY {
            Some(ResponseCode::FormErr)
        } else {
            None
        };
        let query = request.request_info().ok().map(|info| info.query.clone());
        let answer = match (rcode, query) {
            (Some(rcode), _) => zone::Answer {
                rcode,
                ..zone::Answer::default()
            },
            // Not exactly one question.
            (None, None) => zone::Answer {
                rcode: ResponseCode::FormErr,
                ..zone::Answer::default()
            },
            (None, Some(q)) => {
                let view = *self.view.borrow();
                let owner = view
                    .owner
                    .filter(|(_, until)| clock::now() < *until)
                    .map(|(o, _)| o);
                let zone = self.zone.borrow().clone();
                zone.answer(q.name(), q.query_type(), q.query_class(), owner, view.serial)
            }
        };
        self.counters.count(answer.rcode);
        metadata.authoritative = answer.authoritative;
        metadata.response_code = answer.rcode;
        let mut edns = edns;
        if let Some(e) = &mut edns
            && answer.rcode.high() != 0
        {
            e.set_rcode_high(answer.rcode.high());
        }
        let message = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
            metadata,
            answer.answers.iter(),
            std::iter::empty(),
            answer.soa.iter(),
            answer.additionals.iter(),
        );
        match response.send_response(message).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!("DNS answer to {} not sent: {e}", request.src());
                fallback(request, answer.rcode)
            }
        }
    }
}

/// Starts the name server on `addresses` (UDP and TCP, `port`). Binding errors come back with
/// the fix; the server then runs until the process ends.
pub async fn start(
    zone: watch::Receiver<Arc<Zone>>,
    addresses: &[IpAddr],
    port: u16,
    view: watch::Receiver<View>,
) -> Result<Arc<Counters>, String> {
    let counters = Arc::new(Counters::default());
    let handler = Arc::new(Handler {
        zone,
        view,
        counters: counters.clone(),
    });
    let mut server = Server::new(Shared(handler.clone()));
    for ip in addresses {
        let at = SocketAddr::new(*ip, port);
        let fix = |e: std::io::Error| {
            format!(
                "cannot serve DNS on {at}: {e}\n  fix: the address must be this host's (check [[node]] dns_listen); \
                 port {port} below 1024 needs root or CAP_NET_BIND_SERVICE; nothing else may listen there"
            )
        };
        let udp = tokio::net::UdpSocket::bind(at).await.map_err(fix)?;
        let tcp = tokio::net::TcpListener::bind(at).await.map_err(fix)?;
        server.register_socket(udp);
        tokio::spawn(tcp::serve(tcp, handler.clone()));
    }
    tokio::spawn(async move {
        if let Err(e) = server.block_until_done().await {
            tracing::error!("the DNS server stopped: {e}");
        }
    });
    Ok(counters)
}
