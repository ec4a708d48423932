//! DNS over TCP, accepted by the agent itself. hickory's own TCP listener neither caps
//! connections nor backs off when the process runs out of descriptors: one client holding a
//! thousand connections starved the agent of the descriptor a failover's persist needs. Here
//! connections are capped overall and per source ([`crate::net::admission`]), each lives at
//! most [`DEADLINE`] whatever the client does, and queries are answered by the same handler as
//! over UDP.

use super::Handler;
use crate::net::admission::{Caps, serve_capped};
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Resolvers fall back to TCP for a truncated answer and send a query or two: a connection
/// lives this long from accept to close.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// The first query must arrive this soon after the connection is accepted.
const FIRST_QUERY: Duration = Duration::from_secs(1);

/// Connections at once: overall, and from one source network (/24, /56).
pub const CAPS: Caps = Caps {
    total: 64,
    per_source: 8,
};

/// Serves `listener` until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, handler: Arc<Handler>) {
    let serve = move |stream, peer| connection(stream, peer, handler.clone());
    serve_capped(listener, CAPS, DEADLINE, "DNS over TCP", serve).await;
}

/// Answers length-prefixed queries until the client closes, sends something that is not a
/// query, or the deadline (enforced by the caller) ends the connection.
async fn connection(mut stream: tokio::net::TcpStream, peer: SocketAddr, handler: Arc<Handler>) {
    for n in 0.. {
        let mut len = [0u8; 2];
        // A client that connects and says nothing gives its slot back soon.
        let wait = if n == 0 { FIRST_QUERY } else { DEADLINE };
        if !matches!(
            tokio::time::timeout(wait, stream.read_exact(&mut len)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let len = usize::from(u16::from_be_bytes(len));
        if !(12..=super::MAX_QUERY).contains(&len) {
            handler
                .counters
                .malformed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let mut query = vec![0u8; len];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        let Some(answer) = answer(&handler, query, peer).await else {
            handler
                .counters
                .malformed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        };
        let Ok(prefix) = u16::try_from(answer.len()) else {
            return;
        };
        let mut framed = prefix.to_be_bytes().to_vec();
        framed.extend_from_slice(&answer);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// The encoded answer to one query, or `None` for bytes that are not a DNS request.
async fn answer(handler: &Handler, query: Vec<u8>, peer: SocketAddr) -> Option<Vec<u8>> {
    let request = Request::from_bytes(query, peer, Protocol::Tcp).ok()?;
    if request.metadata.message_type != hickory_server::proto::op::MessageType::Query {
        return None;
    }
    let capture = Capture::default();
    handler
        .handle_request::<_, TokioTime>(&request, capture.clone())
        .await;
    capture.0.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// Keeps the encoded response instead of sending it.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Option<Vec<u8>>>>);

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a hickory_server::proto::rr::Record> + Send + 'a,
            impl Iterator<Item = &'a hickory_server::proto::rr::Record> + Send + 'a,
            impl Iterator<Item = &'a hickory_server::proto::rr::Record> + Send + 'a,
            impl Iterator<Item = &'a hickory_server::proto::rr::Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(u16::MAX);
        let info = response.destructive_emit(&mut encoder)?;
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes);
        Ok(info)
    }
}
