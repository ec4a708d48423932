//! The embedded authoritative name server (hickory-server): every agent that serves DNS answers
//! the zone of `[dns]` over UDP and TCP, from memory, with no I/O per request.
//!
//! hickory's `Catalog` and in-memory zone handler serve static records; the primary record here
//! depends on live ownership state and must fail (SERVFAIL) on an agent that does not know the
//! owner with quorum. So a small [`RequestHandler`] of our own answers from [`zone::Zone`] and
//! the agent's latest [`View`]; hickory still does the UDP transport, parsing and framing. TCP
//! connections are accepted by [`tcp`], which caps them.

pub mod limit;
mod tcp;
pub mod update;
pub mod zone;

pub use tcp::CAPS as TCP_CAPS;

use crate::clock;
use crate::core::Instant;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::serialize::binary::BinEncoder;
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
    /// UDP queries over their source's rate: not answered, or answered empty and truncated.
    pub rate_limited: AtomicU64,
    /// UDP answers sent empty and truncated because they were too large for their query.
    pub truncated: AtomicU64,
}

impl Counters {
    /// Answers sent, by response code (every code shown, zeros too).
    pub fn answers(&self) -> std::collections::BTreeMap<String, u64> {
        tally(&[
            ("NOERROR", &self.noerror),
            ("NXDOMAIN", &self.nxdomain),
            ("SERVFAIL", &self.servfail),
            ("REFUSED", &self.refused),
            ("other", &self.other),
        ])
    }

    /// Queries not answered in full, by why.
    pub fn limited(&self) -> std::collections::BTreeMap<String, u64> {
        tally(&[
            ("rate_limited", &self.rate_limited),
            ("truncated", &self.truncated),
            ("malformed", &self.malformed),
        ])
    }

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

fn tally(counters: &[(&str, &AtomicU64)]) -> std::collections::BTreeMap<String, u64> {
    counters
        .iter()
        .map(|(name, c)| (name.to_string(), c.load(Ordering::Relaxed)))
        .collect()
}

struct Handler {
    /// Replaced by a reload.
    zone: watch::Receiver<Arc<Zone>>,
    view: watch::Receiver<View>,
    counters: Arc<Counters>,
    limiter: limit::RateLimiter,
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

impl Handler {
    /// The answer to `request` from the zone and the agent's view.
    fn answer_for(&self, request: &Request) -> zone::Answer {
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
        match (rcode, query) {
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
        }
    }

    /// Over UDP: whether the source is over its rate (no answer, or an empty truncated one),
    /// and whether the answer would be larger than [`limit::MAX_AMPLIFICATION`] times the
    /// query (then it goes out empty and truncated: the client asks again over TCP).
    fn bound_udp(&self, request: &Request, reply: &mut Reply) -> bool {
        if request.protocol() != Protocol::Udp {
            return true;
        }
        let truncate = match self.limiter.check(request.src().ip(), std::time::Instant::now()) {
            limit::Verdict::Drop => {
                self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            limit::Verdict::Slip => {
                self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                true
            }
            limit::Verdict::Answer => {
                let size = reply.encoded_len(request);
                let large = limit::too_large(request.as_slice().len(), size);
                if large {
                    self.counters.truncated.fetch_add(1, Ordering::Relaxed);
                }
                large
            }
        };
        if truncate {
            reply.truncate();
        }
        true
    }
}

/// A response about to be sent: its header, EDNS and records.
struct Reply {
    metadata: Metadata,
    edns: Option<Edns>,
    answer: zone::Answer,
}

impl Reply {
    fn new(request: &Request, answer: zone::Answer) -> Reply {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = answer.authoritative;
        metadata.response_code = answer.rcode;
        let edns = request.edns.as_ref().map(|e| {
            let mut ours = Edns::new();
            ours.set_max_payload(e.max_payload().max(512));
            ours.set_version(0);
            if answer.rcode.high() != 0 {
                ours.set_rcode_high(answer.rcode.high());
            }
            ours
        });
        Reply {
            metadata,
            edns,
            answer,
        }
    }

    fn message<'q>(
        &'q self,
        request: &'q Request,
    ) -> hickory_server::zone_handler::MessageResponse<
        'q,
        'q,
        impl Iterator<Item = &'q hickory_server::proto::rr::Record> + Send + 'q,
        impl Iterator<Item = &'q hickory_server::proto::rr::Record> + Send + 'q,
        impl Iterator<Item = &'q hickory_server::proto::rr::Record> + Send + 'q,
        impl Iterator<Item = &'q hickory_server::proto::rr::Record> + Send + 'q,
    > {
        MessageResponseBuilder::new(&request.queries, self.edns.as_ref()).build(
            self.metadata,
            self.answer.answers.iter(),
            std::iter::empty(),
            self.answer.soa.iter(),
            self.answer.additionals.iter(),
        )
    }

    /// The size of the response on the wire.
    fn encoded_len(&self, request: &Request) -> usize {
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        match self.message(request).destructive_emit(&mut encoder) {
            Ok(_) => bytes.len(),
            Err(_) => usize::MAX,
        }
    }

    /// No records, TC set: "ask again over TCP".
    fn truncate(&mut self) {
        self.metadata.truncation = true;
        self.answer.answers.clear();
        self.answer.soa.clear();
        self.answer.additionals.clear();
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let answer = self.answer_for(request);
        let rcode = answer.rcode;
        let mut reply = Reply::new(request, answer);
        if !self.bound_udp(request, &mut reply) {
            return fallback(request, rcode);
        }
        self.counters.count(rcode);
        match response.send_response(reply.message(request)).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!("DNS answer to {} not sent: {e}", request.src());
                fallback(request, rcode)
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
    rate_limit: u32,
    view: watch::Receiver<View>,
) -> Result<Arc<Counters>, String> {
    let counters = Arc::new(Counters::default());
    let handler = Arc::new(Handler {
        zone,
        view,
        counters: counters.clone(),
        limiter: limit::RateLimiter::new(rate_limit),
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
