//! Listeners: accept, connection caps, TLS, then hyper's HTTP/1.1 + HTTP/2 server on the same
//! socket; graceful drain when the shutdown future completes.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hygiene::forwarded_value;
use crate::proxy::{handle, ConnInfo};
use crate::Shared;

/// The key the per-client caps count by: the address, or for IPv6 its /64 (one subscriber's
/// network: a client given a /64 has 2^64 addresses to spread its connections over).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// Whether a worker holding `mine` of `total` open connections holds more than its share
/// among `workers` (with one connection of slack each).
fn over_share(mine: usize, total: usize, workers: usize) -> bool {
    mine * workers > total + workers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_over_its_share_lets_the_others_accept() {
        // Two workers, 64 connections: 33 each is within the slack, 34 is over.
        assert!(!over_share(33, 64, 2));
        assert!(over_share(34, 64, 2));
        // Nothing open yet: every worker accepts.
        assert!(!over_share(0, 0, 4));
        // One worker holding everything while the other is idle.
        assert!(over_share(10, 10, 2));
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(client_key(v4), v4);
    }
}

/// Counts connections per client (see [`client_key`]) and in total.
#[derive(Debug, Default)]
pub(crate) struct ConnLimiter {
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's place in the counters (total and per client), released when it closes.
pub(crate) struct ConnGuard {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl ConnLimiter {
    fn try_acquire(
        shared: &Arc<Shared>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Option<ConnGuard> {
        let open = shared.metrics.open_connections.load(Relaxed).max(0) as usize;
        if open >= max_total {
            return None;
        }
        let mut m = shared
            .limiter
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max_per_ip {
            return None;
        }
        *n += 1;
        shared.metrics.open_connections.fetch_add(1, Relaxed);
        Some(ConnGuard {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.metrics.open_connections.fetch_sub(1, Relaxed);
        let mut m = self
            .shared
            .limiter
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// hyper's HTTP/1.1 and HTTP/2 servers, configured from the limits. The protocol is picked per
/// connection (ALPN over TLS, the HTTP/2 preface on plain TCP) and the matching server is used
/// directly: hyper-util's `auto` builder does the same detection but adds a layer to every read.
struct Builders {
    h1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

fn builders(shared: &Shared) -> Builders {
    let rt = shared.runtime.load();
    let l = &rt.config().limits;
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(l.header_read_timeout)
        // hyper answers 431 when a head exceeds this buffer or the header count.
        .max_buf_size(l.max_header_bytes.max(8192))
        .max_headers(l.max_headers)
        .keep_alive(true);
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(l.h2_max_concurrent_streams)
        // What a stream buffers for a client that does not read (hyper's default is ~400 KiB).
        .max_send_buf_size(crate::upstream::MAX_BUF)
        .max_header_list_size(l.max_header_bytes as u32)
        // Rapid reset (CVE-2023-44487) and streams the client makes us reset: both bounded,
        // the connection is closed with GOAWAY past them.
        .max_pending_accept_reset_streams(Some(50))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    // No RFC 8441 (WebSockets over HTTP/2): edge proxies WebSockets as HTTP/1.1 upgrades, and a
    // browser that is not offered extended CONNECT opens an HTTP/1.1 connection for them.
    Builders { h1, h2 }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a plain-TCP client opened with.
enum Preface {
    /// The HTTP/2 preface (h2c with prior knowledge).
    H2,
    /// Anything else: HTTP/1.
    Http1,
    /// Nothing within the wait.
    Silent,
}

/// Whether a plain-TCP client opens with the HTTP/2 preface (h2c with prior knowledge). Peeks,
/// so nothing is consumed; gives up (as HTTP/1) once the bytes differ or `wait` passes after
/// the first byte, and reports a client that sent nothing within `wait`.
async fn peek_h2_preface(stream: &tokio::net::TcpStream, wait: Duration) -> Preface {
    let mut buf = [0u8; 24];
    let deadline = tokio::time::Instant::now() + wait;
    let mut seen = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return Preface::Http1,
            Err(_) if seen == 0 => return Preface::Silent,
            Err(_) => return Preface::Http1,
        };
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return Preface::Http1;
        }
        if n == H2_PREFACE.len() {
            return Preface::H2;
        }
        seen = n;
        // A prefix of the preface so far: wait for more bytes.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn serve_io<I, S>(b: &Builders, io: I, h2: bool, svc: S, stop: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = crate::body::ResBody>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // On shutdown: let the request in flight finish, then close (HTTP/2: GOAWAY).
    if h2 {
        let conn = b.h2.serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
        }
        let _ = conn.await;
    } else {
        let conn = b.h1.serve_connection(TokioIo::new(io), svc).with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
        }
        let _ = conn.await;
    }
}

/// Serves one listener until `shutdown` completes, then stops accepting and waits (at most
/// `limits.shutdown_grace`) for its connections to finish.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let stop = CancellationToken::new();
    let conns = TaskTracker::new();
    let builders = Arc::new(builders(&shared));
    tokio::pin!(shutdown);
    // With several workers (each a runtime accepting from this listener), one that holds more
    // than its share of the connections lets the others take the next one first.
    let workers = shared.runtime.load().config().listen.proxy_workers();
    loop {
        if workers > 1 {
            let total = shared.metrics.open_connections.load(Relaxed).max(0) as usize;
            if over_share(conns.len(), total, workers) {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                }
            }
        }
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let rt = shared.runtime.load();
        let limits = &rt.config().limits;
        let ip = peer.ip().to_canonical();
        let client_key = client_key(ip);
        let Some(guard) = ConnLimiter::try_acquire(
            &shared,
            client_key,
            limits.max_connections,
            limits.max_connections_per_client,
        ) else {
            shared.metrics.connections_rejected.fetch_add(1, Relaxed);
            tracing::debug!(client = %ip, "connection refused by the connection caps");
            drop(stream);
            continue;
        };
        let handshake_timeout = limits.tls_handshake_timeout;
        let header_timeout = limits.header_read_timeout;
        drop(rt);
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(60))
                .with_interval(Duration::from_secs(10)),
        );
        let shared2 = shared.clone();
        let builders = builders.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let shared = shared2;
            let _guard = guard;
            let info = |sni: Option<&str>| {
                Arc::new(ConnInfo {
                    ip,
                    ip_value: http::HeaderValue::from_str(&ip.to_string())
                        .unwrap_or(http::HeaderValue::from_static("unknown")),
                    forwarded: forwarded_value(ip, tls.is_some()),
                    tls: tls.is_some(),
                    sni: sni.map(|s| s.to_ascii_lowercase().into_boxed_str()),
                    upstream: Default::default(),
                })
            };
            let svc = |conn: Arc<ConnInfo>| {
                let shared = shared.clone();
                service_fn(move |req| handle(shared.clone(), conn.clone(), req))
            };
            match tls.clone() {
                None => {
                    let h2 = match peek_h2_preface(&stream, header_timeout).await {
                        Preface::H2 => true,
                        Preface::Http1 => false,
                        // Nothing at all within the head timeout: an idle connection ends
                        // now, not after a second timeout in hyper.
                        Preface::Silent => return,
                    };
                    let conn = info(None);
                    if h2 {
                        serve_io(&builders, stream, true, svc(conn), stop).await;
                    } else if let Some(io) = crate::fast::serve(&shared, &conn, stream, &stop).await
                    {
                        serve_io(&builders, io, false, svc(conn), stop).await;
                    }
                }
                Some(acceptor) => {
                    let tls_stream = match tokio::time::timeout(
                        handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    };
                    let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    let conn = info(tls_stream.get_ref().1.server_name());
                    if h2 {
                        serve_io(&builders, tls_stream, true, svc(conn), stop).await;
                    } else if let Some(io) =
                        crate::fast::serve(&shared, &conn, tls_stream, &stop).await
                    {
                        serve_io(&builders, io, false, svc(conn), stop).await;
                    }
                }
            }
        });
    }
    drop(listener);
    let grace = shared.runtime.load().config().limits.shutdown_grace;
    stop.cancel();
    conns.close();
    if tokio::time::timeout(grace, conns.wait()).await.is_err() {
        tracing::warn!(
            ?grace,
            "connections still open after the shutdown grace; closing them"
        );
    }
}
