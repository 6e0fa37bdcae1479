//! `edge worker --listen ADDR`: the worker protocol over HTTP/1.1, for hosts the orchestrator
//! reaches over a private network.
//!
//! - `POST /work`: the body is a `run` frame (JSON); the response streams the worker's frames
//!   as NDJSON (one JSON object per line), ending with `exit`. While the agent is quiet, a
//!   `pong` frame every [`HEARTBEAT`] keeps the connection honest. Closing the connection kills
//!   the agent's process group at once. A second run while one is going gets `409` and a
//!   `busy` frame.
//! - `POST /work/{attempt_id}/cancel?grace_ms=N`: interrupt, then SIGTERM, then SIGKILL.
//! - `POST /work/{attempt_id}/stdin`: the body is a `stdin` or `stdin_close` frame (JSON), for
//!   a run with `keep_stdin` (Claude Code's tool permission answers).
//! - `GET /hello`: the `hello_ok` frame (who, which version, busy or not).
//! - `GET /metrics`: Prometheus text.
//! - `GET /healthz` (the process answers) and `GET /readyz` (`503` while busy), without auth.
//!
//! Every other request needs `Authorization: Bearer <token>` when a token is configured, and a
//! client certificate from the configured CA when mTLS is on (the TLS handshake fails
//! without one). A worker with neither does not start: whoever can reach it could run
//! anything.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::protocol::{decode, encode, ExitReason, FromWorker, ToWorker, MAX_FRAME};
use crate::worker::{admit, hello_reply, refusal, Attempt, Canceller};

/// A `pong` frame is sent this long after the last frame, so a dead connection is found even
/// when the agent is quiet.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a client has to finish the TLS handshake, and to send a request's head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once.
const MAX_CONNECTIONS: usize = 256;

/// How the HTTP worker is reached and who may use it.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// The name `hello` answers with.
    pub name: String,
    /// The bearer token every request but `/healthz` and `/readyz` must carry.
    pub token: Option<String>,
    /// TLS (see [`tls_config`]).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The TLS config requires and verifies client certificates (mTLS).
    pub client_certs: bool,
    /// The least confinement a run must have (`--floor`).
    pub floor: Option<edge_sandbox::Floor>,
}

#[derive(Debug, Default)]
struct Metrics {
    requests: AtomicU64,
    unauthorized: AtomicU64,
    busy: AtomicU64,
    bad_request: AtomicU64,
    policy: AtomicU64,
    started: AtomicU64,
    exited: AtomicU64,
    cancelled: AtomicU64,
    timeout: AtomicU64,
    lost: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    name: String,
    token: Option<String>,
    floor: Option<edge_sandbox::Floor>,
    current: Mutex<Option<(String, Canceller)>>,
    metrics: Metrics,
}

impl Shared {
    fn current(&self) -> std::sync::MutexGuard<'_, Option<(String, Canceller)>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The attempt is over: the next run may start (only if it is still this one).
    fn free(&self, attempt_id: &str) {
        let mut c = self.current();
        if c.as_ref().is_some_and(|(id, _)| id == attempt_id) {
            *c = None;
        }
    }

    /// The refusal, when the request is not authorized.
    fn unauthorized(&self, headers: &HeaderMap) -> Option<Response> {
        let Some(token) = &self.token else {
            return None;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given
            .is_some_and(|g| subtle::ConstantTimeEq::ct_eq(g.as_bytes(), token.as_bytes()).into());
        if ok {
            return None;
        }
        self.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
        let why = if given.is_none() {
            "this worker needs Authorization: Bearer <token>\n"
        } else {
            "the bearer token does not match this worker's\n"
        };
        Some(
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                why,
            )
                .into_response(),
        )
    }
}

fn frame_line(f: &FromWorker) -> Bytes {
    let mut line = encode(f).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

async fn work(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    s.metrics.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(r) = s.unauthorized(&headers) {
        return r;
    }
    let bad = |msg: String| {
        s.metrics.bad_request.fetch_add(1, Ordering::Relaxed);
        (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response()
    };
    let frame: ToWorker = match decode(&body) {
        Ok(f) => f,
        Err(e) => return bad(format!("the body is not a run frame: {e}")),
    };
    let mut frame = frame;
    let ToWorker::Run {
        attempt_id,
        sandbox,
        cwd,
        ..
    } = &mut frame
    else {
        return bad("the body must be a run frame (\"t\":\"run\")".into());
    };
    let attempt_id = attempt_id.clone();
    // Below the floor: the run ends here, with the reason, as on every other worker.
    if let Some(why) = s
        .floor
        .as_ref()
        .and_then(|f| admit(f, sandbox, cwd.as_deref()).err())
    {
        s.metrics.policy.fetch_add(1, Ordering::Relaxed);
        let [e, x] = refusal(&attempt_id, &why);
        let mut body = frame_line(&e).to_vec();
        body.extend_from_slice(&frame_line(&x));
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            body,
        )
            .into_response();
    }
    let mut current = s.current();
    if current.is_some() {
        drop(current);
        s.metrics.busy.fetch_add(1, Ordering::Relaxed);
        let busy = FromWorker::Busy { attempt_id };
        return (
            StatusCode::CONFLICT,
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            frame_line(&busy),
        )
            .into_response();
    }
    // Admitted above: the floor's additions are made.
    let Some(mut attempt) = Attempt::start(frame, None) else {
        return bad("the body must be a run frame".into());
    };
    *current = Some((attempt_id.clone(), attempt.canceller()));
    drop(current);
    s.metrics.started.fetch_add(1, Ordering::Relaxed);
    // The slot is freed when the attempt's clean-up is over, however the response ends.
    let done = attempt.done();
    let s2 = s.clone();
    let id2 = attempt_id.clone();
    tokio::spawn(async move {
        done.await;
        s2.free(&id2);
    });
    // The stream owns the attempt: when the client goes away, hyper drops it, and the attempt
    // is killed (see `Attempt`'s Drop).
    struct Streaming {
        attempt: Attempt,
        shared: Arc<Shared>,
        ended: bool,
    }
    impl Drop for Streaming {
        fn drop(&mut self) {
            if !self.ended {
                self.shared.metrics.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let st = Streaming {
        attempt,
        shared: s.clone(),
        ended: false,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        if st.ended {
            return None;
        }
        let f = match tokio::time::timeout(HEARTBEAT, st.attempt.next()).await {
            Ok(Some(f)) => f,
            Ok(None) => return None,
            Err(_) => FromWorker::Pong { ts: now() },
        };
        if let FromWorker::Exit { reason, .. } = &f {
            st.ended = true;
            let m = &st.shared.metrics;
            match reason {
                ExitReason::Exited => &m.exited,
                ExitReason::Cancelled => &m.cancelled,
                ExitReason::Timeout => &m.timeout,
            }
            .fetch_add(1, Ordering::Relaxed);
            st.shared.free(&st.attempt.attempt_id);
        }
        Some((Ok::<_, std::io::Error>(frame_line(&f)), st))
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct CancelQuery {
    grace_ms: Option<u64>,
}

async fn cancel(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<CancelQuery>,
) -> Response {
    s.metrics.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(r) = s.unauthorized(&headers) {
        return r;
    }
    let grace = Duration::from_millis(q.grace_ms.unwrap_or(5000).min(60_000));
    match s.current().as_ref() {
        Some((cur, c)) if *cur == id => {
            c.cancel(grace);
            (StatusCode::ACCEPTED, "cancelling\n").into_response()
        }
        _ => (
            StatusCode::NOT_FOUND,
            format!("no attempt {id:?} is running here\n"),
        )
            .into_response(),
    }
}

async fn stdin(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    s.metrics.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(r) = s.unauthorized(&headers) {
        return r;
    }
    let frame: ToWorker = match crate::protocol::decode(&body) {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    match (s.current().as_ref(), frame) {
        (Some((cur, c)), ToWorker::Stdin { attempt_id, line })
            if *cur == id && attempt_id == id =>
        {
            c.stdin(line);
            (StatusCode::ACCEPTED, "sent\n").into_response()
        }
        (Some((cur, c)), ToWorker::StdinClose { attempt_id }) if *cur == id && attempt_id == id => {
            c.stdin_close();
            (StatusCode::ACCEPTED, "closed\n").into_response()
        }
        (Some((cur, _)), _) if *cur == id => (
            StatusCode::BAD_REQUEST,
            "the body must be a stdin or stdin_close frame for this attempt\n",
        )
            .into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            format!("no attempt {id:?} is running here\n"),
        )
            .into_response(),
    }
}

async fn hello(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    s.metrics.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(r) = s.unauthorized(&headers) {
        return r;
    }
    let busy = s.current().is_some();
    (
        [(header::CONTENT_TYPE, "application/json")],
        frame_line(&hello_reply(
            crate::VERSION,
            &s.name,
            busy,
            s.floor.as_ref(),
        )),
    )
        .into_response()
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    match s.current().as_ref() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy\n").into_response(),
    }
}

async fn metrics(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = s.unauthorized(&headers) {
        return r;
    }
    let m = &s.metrics;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let busy = u8::from(s.current().is_some());
    let body = format!(
        "# HELP edge_worker_requests_total Requests to /work, /hello and cancel.\n\
         # TYPE edge_worker_requests_total counter\n\
         edge_worker_requests_total {}\n\
         # HELP edge_worker_refused_total Requests refused, by why.\n\
         # TYPE edge_worker_refused_total counter\n\
         edge_worker_refused_total{{why=\"unauthorized\"}} {}\n\
         edge_worker_refused_total{{why=\"busy\"}} {}\n\
         edge_worker_refused_total{{why=\"bad_request\"}} {}\n\
         edge_worker_refused_total{{why=\"policy\"}} {}\n\
         # HELP edge_worker_attempts_started_total Attempts started.\n\
         # TYPE edge_worker_attempts_started_total counter\n\
         edge_worker_attempts_started_total {}\n\
         # HELP edge_worker_attempts_ended_total Attempts ended, by how.\n\
         # TYPE edge_worker_attempts_ended_total counter\n\
         edge_worker_attempts_ended_total{{reason=\"exited\"}} {}\n\
         edge_worker_attempts_ended_total{{reason=\"cancelled\"}} {}\n\
         edge_worker_attempts_ended_total{{reason=\"timeout\"}} {}\n\
         edge_worker_attempts_ended_total{{reason=\"lost\"}} {}\n\
         # HELP edge_worker_busy 1 while an attempt runs.\n\
         # TYPE edge_worker_busy gauge\n\
         edge_worker_busy {busy}\n",
        g(&m.requests),
        g(&m.unauthorized),
        g(&m.busy),
        g(&m.bad_request),
        g(&m.policy),
        g(&m.started),
        g(&m.exited),
        g(&m.cancelled),
        g(&m.timeout),
        g(&m.lost),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/work", post(work))
        .route("/work/{attempt_id}/cancel", post(cancel))
        .route("/work/{attempt_id}/stdin", post(stdin))
        .route("/hello", get(hello))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FRAME))
        .with_state(shared)
}

/// Serves the worker on `listener` until the process ends. Refuses to start without a token
/// or mTLS.
pub async fn serve_http(listener: TcpListener, opts: HttpOptions) -> std::io::Result<()> {
    let mtls = opts.tls.is_some() && opts.client_certs;
    if opts.token.is_none() && !mtls {
        return Err(std::io::Error::other(
            "an HTTP worker needs a bearer token or client certificates (mTLS): \
             whoever reaches it could run anything",
        ));
    }
    let shared = Arc::new(Shared {
        name: opts.name,
        token: opts.token,
        floor: opts.floor,
        current: Mutex::new(None),
        metrics: Metrics::default(),
    });
    let app = router(shared);
    let tls = opts.tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Bounded: whoever can reach the port, token or not, holds at most this many.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_conn(tcp, app, peer).await,
                Some(acc) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acc.accept(tcp)).await {
                    Ok(Ok(s)) => serve_conn(s, app, peer).await,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "TLS handshake refused")
                    }
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
}

async fn serve_conn<S>(io: S, app: Router, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = TowerToHyperService::new(app);
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(io), svc)
        .await
    {
        tracing::debug!(%peer, error = %e, "connection ended");
    }
}

/// A TLS config for the worker: its certificate chain and key (PEM files), and, with
/// `client_ca`, client certificates required and verified against that CA (mTLS).
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&read(ca)?) {
                let c = c.map_err(|e| format!("{}: not PEM certificates: {e}", ca.display()))?;
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
