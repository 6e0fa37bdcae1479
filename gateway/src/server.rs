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
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::hygiene::forwarded_value;
use crate::proxy::{handle, ConnInfo};
use crate::Shared;

/// Counts connections per client address and in total.
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

fn builder(shared: &Shared) -> auto::Builder<TokioExecutor> {
    let rt = shared.runtime.load();
    let l = &rt.config().limits;
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(l.header_read_timeout)
        // hyper answers 431 when a head exceeds this buffer or the header count.
        .max_buf_size(l.max_header_bytes.max(8192))
        .max_headers(l.max_headers)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(l.h2_max_concurrent_streams)
        .max_header_list_size(l.max_header_bytes as u32)
        // Rapid reset (CVE-2023-44487) and streams the client makes us reset: both bounded,
        // the connection is closed with GOAWAY past them.
        .max_pending_accept_reset_streams(Some(50))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        .enable_connect_protocol();
    b
}

/// Serves one listener until `shutdown` completes, then stops accepting and waits (at most
/// `limits.shutdown_grace`) for its connections to finish.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(builder(&shared));
    tokio::pin!(shutdown);
    loop {
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
        let Some(guard) = ConnLimiter::try_acquire(
            &shared,
            ip,
            limits.max_connections,
            limits.max_connections_per_client,
        ) else {
            shared.metrics.connections_rejected.fetch_add(1, Relaxed);
            tracing::debug!(client = %ip, "connection refused by the connection caps");
            drop(stream);
            continue;
        };
        let handshake_timeout = limits.tls_handshake_timeout;
        drop(rt);
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(60))
                .with_interval(Duration::from_secs(10)),
        );
        let conn = Arc::new(ConnInfo {
            ip,
            ip_value: http::HeaderValue::from_str(&ip.to_string())
                .unwrap_or(http::HeaderValue::from_static("unknown")),
            forwarded: forwarded_value(ip, tls.is_some()),
            tls: tls.is_some(),
        });
        let shared2 = shared.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let shared = shared2;
            let _guard = guard;
            let svc = {
                let shared = shared.clone();
                service_fn(move |req| handle(shared.clone(), conn.clone(), req))
            };
            match tls {
                None => {
                    let c = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    let _ = watcher.watch(c.into_owned()).await;
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
                    let c = builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), svc);
                    let _ = watcher.watch(c.into_owned()).await;
                }
            }
        });
    }
    drop(listener);
    let grace = shared.runtime.load().config().limits.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open after the shutdown grace; closing them"
        );
    }
}
