//! Upstream connections for HTTP/1.1 clients: one dedicated upstream connection per client
//! connection, reused request after request.
//!
//! An HTTP/1.1 client connection carries one request at a time, so it needs at most one upstream
//! connection at a time. Keeping that connection beside the client's (instead of checking one out
//! of a shared pool for every request) saves the pool's lock and hashing, the boxed futures and
//! the task hyper-util spawns per request to hand the connection back; measured, it is the
//! largest single cost the gateway adds per request (docs/benchmarks.md). The number of upstream
//! connections stays bounded by the number of client connections (`limits.max_connections`).
//!
//! HTTP/2 clients (many streams at once), `h2c://` upstreams and upgrades use the shared pools.

use std::sync::Mutex;
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::body::ReqBody;

/// How long dialling an upstream may take (the pooled clients use the same).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request to an upstream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamFail {
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: Authority,
        source: std::io::Error,
    },
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error(transparent)]
    Pool(#[from] hyper_util::client::legacy::Error),
}

impl UpstreamFail {
    /// The upstream could not be reached at all (refused, unroutable, timed out dialling).
    pub(crate) fn is_connect(&self) -> bool {
        match self {
            UpstreamFail::Connect { .. } => true,
            UpstreamFail::Http(_) => false,
            UpstreamFail::Pool(e) => e.is_connect(),
        }
    }
}

/// The most an upstream connection reads ahead of the client (its read buffer, and so the
/// largest body chunk it hands on). hyper's default lets it grow to ~400 KiB, which a client
/// that never reads holds per stream; with this, and the client side's write buffer bounded the
/// same way, a stalled download costs tens of KiB, and back-pressure reaches the upstream.
pub(crate) const MAX_BUF: usize = 64 * 1024;

/// The upstream connection of one client connection.
#[derive(Debug, Default)]
pub(crate) struct Slot(Mutex<Option<Dedicated>>);

#[derive(Debug)]
struct Dedicated {
    authority: Authority,
    /// Opened through a registered project's session, not a TCP connection.
    tunnel: bool,
    tx: SendRequest<ReqBody>,
}

impl Slot {
    fn take(&self) -> Option<Dedicated> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn put(&self, d: Dedicated) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(d);
    }

    /// Takes over an idle upstream connection the fast path (`crate::fast`) opened for this
    /// client, unless the upstream has closed it or sent something unasked.
    pub(crate) async fn adopt(&self, authority: Authority, stream: tokio::net::TcpStream) {
        if !still_open(&stream) {
            return;
        }
        if let Ok(tx) = handshake(TokioIo::new(stream)).await {
            self.put(Dedicated {
                authority,
                tunnel: false,
                tx,
            });
        }
    }

    /// Sends `req` (origin-form target, Host already set) to `authority` over this client
    /// connection's upstream connection, opening one if there is none, it points elsewhere, or it
    /// has closed. A request the old connection could not take (the upstream closed it while
    /// idle) is sent again on a fresh connection; one it took is never sent twice.
    /// With `tunnel`, the connection is a stream of a registered project's session.
    pub(crate) async fn send(
        &self,
        authority: &Authority,
        req: Request<ReqBody>,
        tunnel: Option<&crate::tunnel::Dialer>,
    ) -> Result<Response<Incoming>, UpstreamFail> {
        let mut req = req;
        if let Some(mut d) = self
            .take()
            .filter(|d| &d.authority == authority && d.tunnel == tunnel.is_some())
        {
            // Ready once the previous response has been read to its end; an error here means
            // the connection is gone, and nothing has been sent.
            if d.tx.ready().await.is_ok() {
                match d.tx.try_send_request(req).await {
                    Ok(resp) => {
                        self.put(d);
                        return Ok(resp);
                    }
                    Err(mut e) => match e.take_message() {
                        Some(back) => req = back,
                        None => return Err(e.into_error().into()),
                    },
                }
            }
        }
        let mut tx = match tunnel {
            Some(dialer) => {
                let io = crate::tunnel::dial(dialer, authority)
                    .await
                    .map_err(|source| UpstreamFail::Connect {
                        authority: authority.clone(),
                        source,
                    })?;
                handshake(TokioIo::new(io)).await?
            }
            None => connect(authority).await?,
        };
        let resp = tx.send_request(req).await?;
        self.put(Dedicated {
            authority: authority.clone(),
            tunnel: tunnel.is_some(),
            tx,
        });
        Ok(resp)
    }
}

/// Whether an idle upstream connection is still open and has sent nothing unasked.
pub(crate) fn still_open(s: &tokio::net::TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

async fn connect(authority: &Authority) -> Result<SendRequest<ReqBody>, UpstreamFail> {
    handshake(TokioIo::new(dial(authority).await?)).await
}

/// A TCP connection to `authority` (within [`CONNECT_TIMEOUT`]), with no delay and keep-alive.
pub(crate) async fn dial(authority: &Authority) -> Result<tokio::net::TcpStream, UpstreamFail> {
    let fail = |source| UpstreamFail::Connect {
        authority: authority.clone(),
        source,
    };
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let stream = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    {
        Ok(r) => r.map_err(fail)?,
        Err(_) => {
            return Err(fail(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {CONNECT_TIMEOUT:?}"),
            )))
        }
    };
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(60))
            .with_interval(Duration::from_secs(10)),
    );
    Ok(stream)
}

/// HTTP/1.1 over `io`, its connection driven by a task of its own.
async fn handshake<T>(io: T) -> Result<SendRequest<ReqBody>, UpstreamFail>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (tx, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_BUF)
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(tx)
}
