//! The edge's side: the tunnel listener (enrolment, sessions, deregistration), the live
//! sessions by name, and [`TunnelServer::open`], which the gateway dials a mount through.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::identity::{peer, Identity, Peer};
use crate::proto::{read_line, write_line, Answer, Ask};
use crate::store::{check_name, Registration, Store};
use crate::{now_unix, Result};

/// How long a host has to finish the TLS handshake and say its first line.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes (TLS or QUIC, up to the first line answered) in progress at once from one
/// address (an IPv6 /64), and from everyone: past them a new connection is dropped before any
/// cryptography is done, so a flood from one place neither starves the others nor the edge.
const MAX_HANDSHAKES_PER_IP: usize = 16;
const MAX_HANDSHAKES: usize = 512;
/// HTTP/2 PINGs both ways: a dead path is noticed within interval + timeout.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2 flow control of a session: each stream may have this much in flight before the
/// receiver's window update (a download over a 50 ms path still runs at ~20 MB/s per stream),
/// and the whole session this much; frames up to `MAX_FRAME` (fewer, larger TLS records).
pub(crate) const STREAM_WINDOW: u32 = 1024 * 1024;
pub(crate) const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
pub(crate) const MAX_FRAME: u32 = 256 * 1024;

/// `[register]`, as the server needs it.
#[derive(Debug, Clone)]
pub struct TunnelSettings {
    /// Names refused beside the built-in reserved ones.
    pub reserved: Vec<String>,
    /// How long a client certificate lives; renewed over the session with a third left.
    pub cert_lifetime: Duration,
    /// Several agents may hold sessions for one name at once (requests spread over them).
    pub ha: bool,
    /// Streams open at once on one session; past it visitors get 503.
    pub max_streams: usize,
}

/// Where a name's mounts are served: `(name, mounts) -> URLs`.
pub type UrlsFn = Box<dyn Fn(&str, &[String]) -> Vec<String> + Send + Sync>;

/// What the tunnel server asks of the edge around it.
pub struct Hooks {
    /// Whether the edge's config serves this name itself (a configured project).
    pub configured: Box<dyn Fn(&str) -> bool + Send + Sync>,
    /// Where a name's mounts are served.
    pub urls: UrlsFn,
    /// The registered names or their mounts changed: rebuild the route table.
    pub changed: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").finish_non_exhaustive()
    }
}

/// A live session, as `edge register list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionInfo {
    pub name: String,
    pub agent: String,
    pub lane: u32,
    /// `tcp` (HTTP/2 over TLS) or `quic`.
    pub transport: &'static str,
    pub remote: String,
    /// Unix seconds.
    pub since: i64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub streams: usize,
}

struct Session {
    id: u64,
    name: String,
    agent: String,
    lane: u32,
    remote: SocketAddr,
    since: OffsetDateTime,
    link: Link,
    /// Bytes from the host to visitors, and from visitors to the host.
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    streams: Arc<tokio::sync::Semaphore>,
    stop: CancellationToken,
}

/// A session's connection.
enum Link {
    H2(SendRequest<Empty<Bytes>>),
    Quic(quinn::Connection),
}

impl Link {
    fn name(&self) -> &'static str {
        match self {
            Link::H2(_) => "tcp",
            Link::Quic(_) => "quic",
        }
    }
}

/// An accepted hello, before its session starts.
struct Hello {
    peer: Peer,
    agent: String,
    lane: u32,
    mounts: Vec<String>,
    stop: CancellationToken,
}

struct Inner {
    store: Store,
    identity: Identity,
    settings: TunnelSettings,
    hooks: Hooks,
    tls: tokio_rustls::TlsAcceptor,
    sessions: Mutex<HashMap<String, Vec<Arc<Session>>>>,
    next_id: AtomicU64,
    round_robin: AtomicUsize,
    handshakes: Handshakes,
}

/// The handshakes in progress, by client address.
#[derive(Default)]
struct Handshakes {
    by_ip: Mutex<HashMap<IpAddr, usize>>,
    refused: AtomicU64,
}

/// A handshake's place in `Handshakes`, given back when it ends either way.
struct HandshakeGuard<'a> {
    of: &'a Handshakes,
    ip: IpAddr,
}

impl Handshakes {
    fn try_start(&self, remote: SocketAddr) -> Option<HandshakeGuard<'_>> {
        // An IPv6 client usually has a whole /64: count it as one.
        let ip = match remote.ip() {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
            IpAddr::V6(v6) => IpAddr::V4(
                v6.to_ipv4_mapped()
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            ),
            v4 => v4,
        };
        let mut m = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = m.values().sum();
        let n = m.entry(ip).or_insert(0);
        if *n >= MAX_HANDSHAKES_PER_IP || total >= MAX_HANDSHAKES {
            if *n == 0 {
                m.remove(&ip);
            }
            drop(m);
            let refused = self.refused.fetch_add(1, Relaxed) + 1;
            // One line per hundred, so that a flood does not flood the log as well.
            if refused % 100 == 1 {
                tracing::warn!(%remote, refused, "tunnel listener: too many handshakes at once; connection dropped");
            }
            return None;
        }
        *n += 1;
        Some(HandshakeGuard { of: self, ip })
    }
}

impl Drop for HandshakeGuard<'_> {
    fn drop(&mut self) {
        let mut m = self.of.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// The tunnel server. Cheap to clone.
#[derive(Clone)]
pub struct TunnelServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TunnelServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelServer").finish_non_exhaustive()
    }
}

/// One visitor connection's stream through a session: counts its bytes and holds its place
/// among the session's streams.
pub struct TunnelStream {
    io: StreamIo,
    session: Arc<Session>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream")
            .field("name", &self.session.name)
            .finish_non_exhaustive()
    }
}

enum StreamIo {
    H2(TokioIo<hyper::upgrade::Upgraded>),
    Quic(crate::quic::QuicIo),
}

impl AsyncRead for StreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            StreamIo::H2(io) => Pin::new(io).poll_read(cx, buf),
            StreamIo::Quic(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for StreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            StreamIo::H2(io) => Pin::new(io).poll_write(cx, buf),
            StreamIo::Quic(io) => Pin::new(io).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            StreamIo::H2(io) => Pin::new(io).poll_flush(cx),
            StreamIo::Quic(io) => Pin::new(io).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            StreamIo::H2(io) => Pin::new(io).poll_shutdown(cx),
            StreamIo::Quic(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.session.bytes_in.fetch_add(n, Relaxed);
        r
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.session.bytes_out.fetch_add(*n as u64, Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

fn mounts_ok(mounts: &[String]) -> std::result::Result<(), String> {
    if mounts.is_empty() || mounts.len() > 32 {
        return Err("give 1 to 32 routes (--route MOUNT=URL)".into());
    }
    for m in mounts {
        let ok = !m.is_empty()
            && m.len() <= 63
            && m.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(format!("{m:?} is not a mount: use a-z, 0-9 and '-'"));
        }
    }
    let mut seen = mounts.to_vec();
    seen.sort();
    seen.dedup();
    if seen.len() != mounts.len() {
        return Err("a mount is given twice".into());
    }
    Ok(())
}

impl TunnelServer {
    /// The server for `state_dir/register/`, its identity created the first time.
    pub fn new(state_dir: &Path, settings: TunnelSettings, hooks: Hooks) -> Result<TunnelServer> {
        let dir = state_dir.join("register");
        let identity = Identity::load_or_create(&dir)?;
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(identity.server_config()?));
        Ok(TunnelServer {
            inner: Arc::new(Inner {
                store: Store::new(&dir),
                identity,
                settings,
                hooks,
                tls,
                sessions: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                round_robin: AtomicUsize::new(0),
                handshakes: Handshakes::default(),
            }),
        })
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn pin(&self) -> &str {
        self.inner.identity.pin()
    }

    /// Whether `name` has a live session.
    pub fn online(&self, name: &str) -> bool {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .is_some_and(|v| !v.is_empty())
    }

    /// Connections dropped so far because too many handshakes were in progress (from their
    /// address, or from everyone).
    pub fn handshakes_refused(&self) -> u64 {
        self.inner.handshakes.refused.load(Relaxed)
    }

    /// The live sessions.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let all = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<SessionInfo> = all
            .values()
            .flatten()
            .map(|s| SessionInfo {
                name: s.name.clone(),
                agent: s.agent.clone(),
                lane: s.lane,
                transport: s.link.name(),
                remote: s.remote.to_string(),
                since: s.since.unix_timestamp(),
                bytes_in: s.bytes_in.load(Relaxed),
                bytes_out: s.bytes_out.load(Relaxed),
                streams: self.inner.settings.max_streams - s.streams.available_permits(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The operator takes `name` away: its registration is removed, its sessions are closed at
    /// once, and its certificate is refused from now on. Whether there was such a name.
    pub fn revoke(&self, name: &str) -> Result<bool> {
        let was = self.inner.store.remove(name)?;
        if was {
            // Logged before the sessions close, so the log reads in the order things happened.
            self.inner
                .store
                .audit("revoke", name, serde_json::json!({"by": "operator"}));
        }
        self.inner.kill(name);
        if was {
            tracing::info!(%name, "registration revoked; its sessions are closed");
            (self.inner.hooks.changed)();
        }
        Ok(was)
    }

    /// A stream to `mount` on `name`'s project host. `NotConnected` when the host has no
    /// session; `NotFound` when it does not serve the mount.
    pub async fn open(&self, name: &str, mount: &str) -> std::io::Result<TunnelStream> {
        // The sessions to try, the round-robin's pick first: a session whose path just died
        // (not yet noticed) fails fast, and the next one carries the stream.
        let sessions: Vec<Arc<Session>> = {
            let all = self
                .inner
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match all.get(name) {
                Some(v) if !v.is_empty() => {
                    let i = self.inner.round_robin.fetch_add(1, Relaxed) % v.len();
                    v[i..].iter().chain(&v[..i]).cloned().collect()
                }
                _ => Vec::new(),
            }
        };
        let mut last = std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            format!("the project host of {name} is offline"),
        );
        let mut full = None;
        for session in sessions {
            match self.open_on(&session, name, mount).await {
                Ok(s) => return Ok(s),
                // This session is at its stream limit: another may not be.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => full = Some(e),
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    tracing::info!(%name, session = session.id, error = %e, "a session could not open a stream; trying the next");
                    last = std::io::Error::new(std::io::ErrorKind::NotConnected, e.to_string());
                }
                // The host answered (no such mount, its upstream refused): final.
                Err(e) => return Err(e),
            }
        }
        Err(full.unwrap_or(last))
    }

    /// A stream on one session. `BrokenPipe` when the session itself failed.
    async fn open_on(
        &self,
        session: &Arc<Session>,
        name: &str,
        mount: &str,
    ) -> std::io::Result<TunnelStream> {
        let broken = |e: hyper::Error| std::io::Error::new(std::io::ErrorKind::BrokenPipe, e);
        let permit = session.streams.clone().try_acquire_owned().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!(
                    "the session of {name} has {} streams open, its limit",
                    self.inner.settings.max_streams
                ),
            )
        })?;
        let tx = match &session.link {
            Link::H2(tx) => tx.clone(),
            Link::Quic(conn) => {
                let io = quic_connect(conn, mount).await?;
                return Ok(TunnelStream {
                    io: StreamIo::Quic(io),
                    session: session.clone(),
                    _permit: permit,
                });
            }
        };
        let mut tx = tx;
        tx.ready().await.map_err(broken)?;
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("{mount}:80"))
            .body(Empty::<Bytes>::new())
            .map_err(std::io::Error::other)?;
        let resp = tokio::time::timeout(Duration::from_secs(10), tx.send_request(req))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "no answer within 10 s")
            })?
            .map_err(broken)?;
        let status = resp.status();
        if status != http::StatusCode::OK {
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
                .unwrap_or_default();
            let kind = if status == http::StatusCode::NOT_FOUND {
                std::io::ErrorKind::NotFound
            } else {
                std::io::ErrorKind::ConnectionRefused
            };
            return Err(std::io::Error::new(
                kind,
                format!("the project host said: {body}"),
            ));
        }
        let io = hyper::upgrade::on(resp).await.map_err(broken)?;
        Ok(TunnelStream {
            io: StreamIo::H2(TokioIo::new(io)),
            session: session.clone(),
            _permit: permit,
        })
    }

    /// Serves QUIC on `addr` (UDP) until `stop`: the same sessions as over TCP.
    pub async fn serve_quic(&self, addr: SocketAddr, stop: CancellationToken) -> Result<()> {
        let endpoint = crate::quic::server_endpoint(self.inner.identity.server_config()?, addr)?;
        loop {
            let incoming = tokio::select! {
                _ = stop.cancelled() => break,
                i = endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
            };
            let inner = self.inner.clone();
            let stop = stop.clone();
            tokio::spawn(async move { inner.handle_quic(incoming, stop).await });
        }
        endpoint.close(quinn::VarInt::from_u32(0), b"edge stopping");
        Ok(())
    }

    /// Serves the tunnel listener until `stop`.
    pub async fn serve(&self, listener: TcpListener, stop: CancellationToken) {
        loop {
            let (tcp, remote) = tokio::select! {
                _ = stop.cancelled() => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "tunnel listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let inner = self.inner.clone();
            let stop = stop.clone();
            tokio::spawn(async move { inner.handle(tcp, remote, stop).await });
        }
        // Shutting down: every session ends (hosts reconnect to the next edge).
        let names: Vec<String> = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for n in names {
            self.inner.kill(&n);
        }
    }
}

impl Inner {
    fn kill(&self, name: &str) {
        let gone = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .unwrap_or_default();
        for s in gone {
            s.stop.cancel();
        }
    }

    fn refuse(&self, name: &str, remote: SocketAddr, why: &str) {
        tracing::info!(%name, %remote, reason = %why, "tunnel request refused");
        self.store.audit(
            "refused",
            name,
            serde_json::json!({"remote": remote.to_string(), "reason": why}),
        );
    }

    async fn handle(
        self: Arc<Inner>,
        tcp: tokio::net::TcpStream,
        remote: SocketAddr,
        stop: CancellationToken,
    ) {
        let Some(guard) = self.handshakes.try_start(remote) else {
            return;
        };
        let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.tls.accept(tcp)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                tracing::info!(%remote, error = %e, "tunnel handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(%remote, "tunnel handshake took too long");
                return;
            }
        };
        let peer: Option<Peer> = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| peer(c.as_ref()).ok());
        let line = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_line(&mut tls)).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                self.refuse("", remote, &format!("unreadable first line: {e}"));
                return;
            }
            Err(_) => {
                self.refuse("", remote, "no first line within 10 s");
                return;
            }
        };
        let hello = self.dispatch(&line, peer, remote, &mut tls).await;
        drop(guard);
        let Some(mut hello) = hello else {
            return;
        };
        // The edge's shutdown ends the session too.
        hello.stop = stop.child_token();
        // HTTP/2 with the edge as the client.
        let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .handshake::<_, Empty<Bytes>>(TokioIo::new(Killable::new(tls, hello.stop.clone())));
        let (tx, conn) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                self.refuse(&hello.peer.name, remote, &format!("HTTP/2 handshake: {e}"));
                return;
            }
            Err(_) => {
                self.refuse(&hello.peer.name, remote, "HTTP/2 handshake took too long");
                return;
            }
        };
        let ended = Box::pin(async move {
            match conn.await {
                Ok(()) => "the host closed the session".to_string(),
                Err(e) => e.to_string(),
            }
        });
        self.session(Link::H2(tx), hello, remote, ended).await;
    }

    /// A QUIC connection: the host's first stream carries the first line.
    async fn handle_quic(self: Arc<Inner>, incoming: quinn::Incoming, stop: CancellationToken) {
        let remote = incoming.remote_address();
        let Some(guard) = self.handshakes.try_start(remote) else {
            incoming.refuse();
            return;
        };
        let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::info!(%remote, error = %e, "tunnel handshake failed (QUIC)");
                return;
            }
            Err(_) => {
                tracing::info!(%remote, "tunnel handshake took too long (QUIC)");
                return;
            }
        };
        let peer: Option<Peer> = conn
            .peer_identity()
            .and_then(|a| {
                a.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|v| v.first().and_then(|c| peer(c.as_ref()).ok()));
        let (mut send, mut recv) =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.accept_bi()).await {
                Ok(Ok(s)) => s,
                _ => {
                    self.refuse("", remote, "no first stream within 10 s (QUIC)");
                    return;
                }
            };
        let line = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_line(&mut recv)).await {
            Ok(Ok(l)) => l,
            _ => {
                self.refuse("", remote, "no first line within 10 s (QUIC)");
                return;
            }
        };
        let hello = self.dispatch(&line, peer, remote, &mut send).await;
        drop(guard);
        let _ = send.finish();
        let Some(mut hello) = hello else {
            // Enrolment and refusals: the host closes once it has read the answer.
            let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.closed()).await;
            return;
        };
        hello.stop = stop.child_token();
        let c = conn.clone();
        let ended = Box::pin(async move { c.closed().await.to_string() });
        self.session(Link::Quic(conn), hello, remote, ended).await;
    }

    /// The first line's request, answered on `w`: enrolment and deregistration end here; an
    /// accepted hello is returned for its session to start.
    async fn dispatch<W: AsyncWrite + Unpin>(
        &self,
        line: &str,
        peer: Option<Peer>,
        remote: SocketAddr,
        w: &mut W,
    ) -> Option<Hello> {
        let ask: Ask = match serde_json::from_str(line) {
            Ok(a) => a,
            Err(e) => {
                self.refuse("", remote, &format!("not a tunnel request: {e}"));
                let _ = write_line(w, &Answer::refused("not a tunnel request")).await;
                return None;
            }
        };
        match ask {
            Ask::Enrol {
                name,
                token,
                csr,
                mounts,
            } => {
                let answer = match self.enrol(&name, &token, &csr, &mounts, remote) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::error!(%name, error = %e, "enrolment failed");
                        Answer::refused(format!("the edge could not enrol {name}: {e}"))
                    }
                };
                let _ = write_line(w, &answer).await;
                None
            }
            Ask::Deregister => {
                let answer = match &peer {
                    Some(p) if self.owns(p) => {
                        let _ = self.store.remove(&p.name);
                        self.store.audit(
                            "deregister",
                            &p.name,
                            serde_json::json!({"remote": remote.to_string(), "key": p.key_sha256}),
                        );
                        self.kill(&p.name);
                        tracing::info!(name = %p.name, %remote, "deregistered by its host");
                        (self.hooks.changed)();
                        Answer {
                            ok: true,
                            ..Answer::default()
                        }
                    }
                    other => {
                        let name = other.as_ref().map(|p| p.name.as_str()).unwrap_or("");
                        self.refuse(name, remote, "deregister: not registered to this key");
                        Answer::refused("not registered")
                    }
                };
                let _ = write_line(w, &answer).await;
                None
            }
            Ask::Hello {
                agent,
                mounts,
                lane,
            } => {
                let Some(p) = peer else {
                    self.refuse("", remote, "hello without a client certificate");
                    let _ = write_line(
                        w,
                        &Answer::refused(
                            "a client certificate is needed: enrol with `edge register` first",
                        ),
                    )
                    .await;
                    return None;
                };
                if !self.owns(&p) {
                    self.refuse(
                        &p.name,
                        remote,
                        "not registered to this key (revoked, or deregistered)",
                    );
                    let _ = write_line(w, &Answer::refused("not registered")).await;
                    return None;
                }
                if let Err(why) = mounts_ok(&mounts) {
                    self.refuse(&p.name, remote, &why);
                    let _ = write_line(w, &Answer::refused(why)).await;
                    return None;
                }
                let held_by_another = !self.settings.ha
                    && self
                        .sessions
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&p.name)
                        .is_some_and(|v| v.iter().any(|s| s.agent != agent));
                if held_by_another {
                    let why = "another agent holds this name's session (HA is off)";
                    self.refuse(&p.name, remote, why);
                    let _ = write_line(w, &Answer::refused(why)).await;
                    return None;
                }
                let urls = (self.hooks.urls)(&p.name, &mounts);
                let answer = Answer {
                    ok: true,
                    urls,
                    ..Answer::default()
                };
                if write_line(w, &answer).await.is_err() {
                    return None;
                }
                Some(Hello {
                    peer: p,
                    agent,
                    lane: lane.min(63),
                    mounts,
                    stop: CancellationToken::new(),
                })
            }
        }
    }

    /// Whether `p`'s key owns its name.
    fn owns(&self, p: &Peer) -> bool {
        matches!(self.store.get(&p.name), Ok(Some(r)) if r.key_sha256 == p.key_sha256)
    }

    fn enrol(
        &self,
        name: &str,
        token: &str,
        csr: &str,
        mounts: &[String],
        remote: SocketAddr,
    ) -> Result<Answer> {
        let refuse = |why: String| {
            self.refuse(name, remote, &why);
            Ok(Answer::refused(why))
        };
        if let Err(why) = check_name(name, &self.settings.reserved) {
            return refuse(why);
        }
        if (self.hooks.configured)(name) {
            return refuse(format!("{name:?} is a project the edge's config serves"));
        }
        if let Err(why) = mounts_ok(mounts) {
            return refuse(why);
        }
        // The key first, from the request: a name another key owns is refused before the
        // token is spent.
        let key = match rcgen::CertificateSigningRequestParams::from_pem(csr) {
            Ok(c) => {
                use rcgen::PublicKeyData as _;
                crate::sha256_b64(c.public_key.der_bytes())
            }
            Err(e) => return refuse(format!("the certificate request does not parse: {e}")),
        };
        if let Ok(Some(r)) = self.store.get(name) {
            if r.key_sha256 != key {
                return refuse(format!("{name:?} is taken"));
            }
        }
        if let Err(why) = self.store.take_token(name, token)? {
            return refuse(why);
        }
        let lifetime = time::Duration::try_from(self.settings.cert_lifetime)
            .unwrap_or(time::Duration::days(7));
        let signed = self.identity.sign_client(csr, name, lifetime)?;
        let reg = Registration {
            key_sha256: signed.key_sha256.clone(),
            mounts: mounts.to_vec(),
            enrolled: now_unix(),
            serial: signed.serial.clone(),
            not_after: signed.not_after.unix_timestamp(),
        };
        if let Err(why) = self.store.put(name, reg)? {
            return refuse(why);
        }
        self.store.audit(
            "register",
            name,
            serde_json::json!({"remote": remote.to_string(), "key": signed.key_sha256, "serial": signed.serial, "mounts": mounts}),
        );
        tracing::info!(%name, %remote, ?mounts, "registered");
        (self.hooks.changed)();
        Ok(Answer {
            ok: true,
            cert: Some(signed.cert_pem),
            urls: (self.hooks.urls)(name, mounts),
            ..Answer::default()
        })
    }

    /// Holds one session (HTTP/2 over TLS, or QUIC) until the host goes, the path dies
    /// (keepalives unanswered), or the name is revoked; `ended` resolves with why it ended.
    async fn session(
        self: &Arc<Inner>,
        link: Link,
        hello: Hello,
        remote: SocketAddr,
        ended: Pin<Box<dyn std::future::Future<Output = String> + Send>>,
    ) {
        let Hello {
            peer: p,
            agent,
            lane,
            mounts,
            stop,
        } = hello;
        let transport = link.name();
        let id = self.next_id.fetch_add(1, Relaxed);
        let session = Arc::new(Session {
            id,
            name: p.name.clone(),
            agent: agent.clone(),
            lane,
            remote,
            since: OffsetDateTime::now_utc(),
            link,
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            streams: Arc::new(tokio::sync::Semaphore::new(self.settings.max_streams)),
            stop,
        });
        // The same agent's lane reconnecting replaces its old session at once (which drains:
        // its open streams carry on, no new ones go to it).
        let replaced = {
            let mut all = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let v = all.entry(p.name.clone()).or_default();
            let same = |s: &Arc<Session>| s.agent == agent && s.lane == lane;
            let old: Vec<Arc<Session>> = v.iter().filter(|s| same(s)).cloned().collect();
            v.retain(|s| !same(s));
            v.push(session.clone());
            old
        };
        for o in &replaced {
            tracing::info!(name = %p.name, old = o.id, new = id, "a new session replaces the old one, which drains");
        }
        let mounts_changed = matches!(self.store.get(&p.name), Ok(Some(r)) if r.mounts != mounts);
        if mounts_changed {
            let _ = self.store.update(&p.name, |r| r.mounts = mounts.clone());
        }
        self.store.audit(
            "connect",
            &p.name,
            serde_json::json!({"remote": remote.to_string(), "agent": agent, "lane": lane, "transport": transport, "session": id, "mounts": mounts, "serial": p.serial}),
        );
        tracing::info!(name = %p.name, %remote, %agent, lane, transport, session = id, "project host connected");
        if mounts_changed {
            (self.hooks.changed)();
        }
        let renewals = tokio::spawn(renew_loop(self.clone(), session.clone(), p.clone()));
        let reason = tokio::select! {
            r = ended => r,
            _ = session.stop.cancelled() => {
                if let Link::Quic(c) = &session.link {
                    c.close(quinn::VarInt::from_u32(1), b"closed by the edge");
                }
                "closed by the edge".to_string()
            }
        };
        renewals.abort();
        {
            let mut all = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = all.get_mut(&p.name) {
                v.retain(|s| s.id != id);
                if v.is_empty() {
                    all.remove(&p.name);
                }
            }
        }
        self.store.audit(
            "disconnect",
            &p.name,
            serde_json::json!({"remote": remote.to_string(), "session": id, "reason": reason,
                "bytes_in": session.bytes_in.load(Relaxed), "bytes_out": session.bytes_out.load(Relaxed)}),
        );
        tracing::info!(name = %p.name, session = id, %reason, "project host disconnected");
    }
}

/// A stream to `mount` on a QUIC session: `CONNECT <mount>`, then the host's `200` (or `404`
/// / `502` and why).
async fn quic_connect(
    conn: &quinn::Connection,
    mount: &str,
) -> std::io::Result<crate::quic::QuicIo> {
    let broken = |e: String| std::io::Error::new(std::io::ErrorKind::BrokenPipe, e);
    let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(10), conn.open_bi())
        .await
        .map_err(|_| broken("no stream within 10 s".into()))?
        .map_err(|e| broken(e.to_string()))?;
    send.write_all(format!("CONNECT {mount}\n").as_bytes())
        .await
        .map_err(|e| broken(e.to_string()))?;
    let line = tokio::time::timeout(Duration::from_secs(10), read_line(&mut recv))
        .await
        .map_err(|_| broken("no answer within 10 s".into()))?
        .map_err(|e| broken(e.to_string()))?;
    match line
        .split_once(' ')
        .map(|(a, b)| (a, b.to_string()))
        .unwrap_or((line.as_str(), String::new()))
    {
        ("200", _) => Ok(crate::quic::QuicIo { send, recv }),
        ("404", why) => Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("the project host said: {why}"),
        )),
        (_, why) => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("the project host said: {why}"),
        )),
    }
}

/// Renews the session's client certificate over the session itself when a third of its life
/// is left: the edge asks the host for a request from its key, signs it, and hands the
/// certificate back; the host uses it from its next connection.
async fn renew_loop(inner: Arc<Inner>, session: Arc<Session>, p: Peer) {
    let lifetime =
        time::Duration::try_from(inner.settings.cert_lifetime).unwrap_or(time::Duration::days(7));
    let mut not_after = p.not_after;
    loop {
        let at: OffsetDateTime = not_after - lifetime / 3;
        let left: time::Duration = at - OffsetDateTime::now_utc();
        let wait = left.max(time::Duration::ZERO);
        tokio::time::sleep(Duration::try_from(wait).unwrap_or_default()).await;
        match renew_once(&inner, &session, &p).await {
            Ok(na) => not_after = na,
            Err(e) => {
                tracing::warn!(name = %p.name, error = %e, "renewing the host's certificate failed; trying again in a minute");
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    }
}

async fn renew_once(
    inner: &Inner,
    session: &Session,
    p: &Peer,
) -> std::result::Result<OffsetDateTime, String> {
    let csr = match &session.link {
        Link::H2(tx) => {
            let mut tx = tx.clone();
            tx.ready().await.map_err(|e| e.to_string())?;
            let ask = http::Request::builder()
                .method(http::Method::POST)
                .uri("http://edge/_edge/renew")
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let resp = tx.send_request(ask).await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("the host answered {}", resp.status()));
            }
            let b = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            String::from_utf8_lossy(&b).into_owned()
        }
        Link::Quic(conn) => {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(b"RENEW\n")
                .await
                .map_err(|e| e.to_string())?;
            let _ = send.finish();
            let b = recv
                .read_to_end(crate::proto::MAX_LINE)
                .await
                .map_err(|e| e.to_string())?;
            String::from_utf8_lossy(&b).into_owned()
        }
    };
    let lifetime =
        time::Duration::try_from(inner.settings.cert_lifetime).unwrap_or(time::Duration::days(7));
    let signed = inner
        .identity
        .sign_client(&csr, &p.name, lifetime)
        .map_err(|e| e.to_string())?;
    if signed.key_sha256 != p.key_sha256 {
        return Err("the host's request is for another key".into());
    }
    // The certificate goes back on a stream of its own.
    use base64::Engine as _;
    let cert_b64 = base64::engine::general_purpose::STANDARD.encode(signed.cert_pem.as_bytes());
    let mut sender = match &session.link {
        Link::H2(tx) => tx.clone(),
        Link::Quic(conn) => {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(format!("CERT {cert_b64}\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let _ = send.finish();
            let answer = read_line(&mut recv).await.map_err(|e| e.to_string())?;
            if answer.trim() != "204" {
                return Err(format!("the host refused the certificate: {answer}"));
            }
            return finish_renewal(inner, session, p, &signed);
        }
    };
    sender.ready().await.map_err(|e| e.to_string())?;
    let put = http::Request::builder()
        .method(http::Method::POST)
        .uri("http://edge/_edge/certificate")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    // The certificate rides in a header: the session's request bodies are empty by type.
    let (mut parts, body) = put.into_parts();
    parts.headers.insert(
        "edge-certificate",
        http::HeaderValue::from_str(&cert_b64).map_err(|e| e.to_string())?,
    );
    let resp = sender
        .send_request(http::Request::from_parts(parts, body))
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!(
            "the host refused the certificate: {}",
            resp.status()
        ));
    }
    finish_renewal(inner, session, p, &signed)
}

fn finish_renewal(
    inner: &Inner,
    session: &Session,
    p: &Peer,
    signed: &crate::identity::Signed,
) -> std::result::Result<OffsetDateTime, String> {
    let _ = inner.store.update(&p.name, |r| {
        r.serial = signed.serial.clone();
        r.not_after = signed.not_after.unix_timestamp();
    });
    inner.store.audit(
        "renew",
        &p.name,
        serde_json::json!({"session": session.id, "serial": signed.serial, "not_after": signed.not_after.unix_timestamp()}),
    );
    tracing::info!(name = %p.name, not_after = %signed.not_after, "the host's client certificate was renewed over its session");
    Ok(signed.not_after)
}

/// The session's connection, closed from the edge's side when `stop` is cancelled: reads and
/// writes fail from then on, which ends hyper's connection task and every stream on it.
struct Killable<T> {
    io: T,
    stop: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl<T> Killable<T> {
    fn new(io: T, stop: CancellationToken) -> Killable<T> {
        Killable {
            io,
            stop: Box::pin(stop.cancelled_owned()),
        }
    }

    fn stopped(&mut self, cx: &mut Context<'_>) -> bool {
        std::future::Future::poll(self.stop.as_mut(), cx).is_ready()
    }
}

fn aborted() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "the session was closed by the edge",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for Killable<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.stopped(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Killable<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.stopped(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.stopped(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
