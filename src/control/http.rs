//! `[control] http`: `GET /metrics` (Prometheus text format) and `GET /status` (the JSON of
//! `vipgate status --json`), answered by the agent loop like the control socket. A minimal
//! HTTP/1.1 server: one request per connection, bounded in size, time and concurrency (overall
//! and per source).

use super::Request;
use crate::net::admission::{Caps, serve_capped};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

const MAX_REQUEST: usize = 4096;
/// From accept to close: a slow or idle client holds its slot no longer.
const TIMEOUT: Duration = Duration::from_secs(2);
/// A few sources holding slots cannot crowd out a scraper.
pub const CAPS: Caps = Caps {
    total: 64,
    per_source: 4,
};

/// Binds `addr` and serves it until the runtime stops.
pub async fn serve(addr: SocketAddr, requests: mpsc::Sender<Request>) -> Result<(), String> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        format!(
            "cannot serve HTTP on {addr}: {e}\n  fix: check [control] http (this host's address, a free port)"
        )
    })?;
    let serve = move |stream, _peer| answer(stream, requests.clone());
    tokio::spawn(serve_capped(listener, CAPS, TIMEOUT, "HTTP", serve));
    Ok(())
}

async fn answer(mut stream: tokio::net::TcpStream, requests: mpsc::Sender<Request>) {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, kind, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => match ask(&requests, "metrics").await {
            Some(text) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text),
            None => unavailable(),
        },
        ("GET", "/status") => match ask(&requests, "status").await {
            Some(json) => ("200 OK", "application/json", json),
            None => unavailable(),
        },
        ("GET", _) => ("404 Not Found", "text/plain", "try /metrics or /status\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn unavailable() -> (&'static str, &'static str, String) {
    (
        "503 Service Unavailable",
        "text/plain",
        "the agent did not answer\n".into(),
    )
}

async fn ask(requests: &mpsc::Sender<Request>, command: &str) -> Option<String> {
    let (tx, rx) = oneshot::channel();
    requests
        .send(Request {
            command: command.into(),
            reply: tx,
        })
        .await
        .ok()?;
    rx.await.ok()
}
