//! The gateway's shared state: the route table and certificates behind `ArcSwap`s, the upstream
//! clients, counters, and the handles that serve listeners.

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use edge_routing::{Config, ConfigError};
use http::HeaderValue;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::access_log::{AccessLog, Sink};
use crate::admin::{self, ReloadFn};
use crate::body::ReqBody;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::server::{self, ConnLimiter};
use crate::tls::{CertResolver, ProjectCert};

/// Starts certificate renewals (all ACME projects, or the named one); what to tell the caller.
pub type RenewFn = Arc<dyn Fn(Option<&str>) -> Result<String, String> + Send + Sync>;

/// Looks up an ACME HTTP-01 key authorization by token.
pub type Http01Fn = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Why a config could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Config(Vec<ConfigError>),
    #[error("tls: {0}")]
    Tls(String),
    #[error("{0}")]
    Secret(String),
    #[error("{0}")]
    Log(String),
}

/// The access log `log` asks for: `current` when its target and format are the same (a reload
/// keeps the running writer), a new one otherwise, none when `access = false`.
fn access_log(
    log: &edge_routing::LogConfig,
    base_dir: &Path,
    current: Option<&Arc<AccessLog>>,
    metrics: &Metrics,
) -> Result<Option<Arc<AccessLog>>, Error> {
    if !log.access {
        return Ok(None);
    }
    let sink = match &log.access_file {
        None => Sink::Stderr,
        Some(p) => Sink::File(base_dir.join(p)),
    };
    if let Some(c) = current.filter(|c| *c.sink() == sink && c.json() == log.json) {
        return Ok(Some(c.clone()));
    }
    AccessLog::start(sink, log.json, metrics.access_log_dropped.clone())
        .map(|l| Some(Arc::new(l)))
        .map_err(Error::Log)
}

pub(crate) struct Shared {
    /// The config file `edge up` runs from (`None`: the embedded default), for the advice on
    /// edge's own pages.
    pub(crate) config_file: std::sync::OnceLock<Option<std::path::PathBuf>>,
    /// `POST /chat/login-url?project=` on the admin listener: a one-time sign-in link made by
    /// the running edge, in its own store (set by `edge up` with `login = "token"`).
    pub(crate) chat_login: std::sync::OnceLock<RenewFn>,
    /// `GET /outposts` on the admin listener.
    pub(crate) outposts: std::sync::OnceLock<crate::admin::StatusFn>,
    /// ACME HTTP-01 answers (token to key authorization), set by `edge up` when a project's
    /// certificate comes from an ACME CA.
    pub(crate) http01: std::sync::OnceLock<Http01Fn>,
    /// `POST /certs/renew` on the admin listener, and more lines for `/metrics` (set by `edge up`).
    pub(crate) renew: std::sync::OnceLock<RenewFn>,
    pub(crate) extra_metrics: std::sync::OnceLock<crate::admin::StatusFn>,
    /// `GET /register` and `POST /register/revoke?name=` (set by `edge up` with `[register]`).
    pub(crate) register_status: std::sync::OnceLock<crate::admin::StatusFn>,
    pub(crate) register_revoke: std::sync::OnceLock<RenewFn>,
    pub(crate) runtime: ArcSwap<Runtime>,
    pub(crate) client: Client<HttpConnector, ReqBody>,
    pub(crate) h2c: Client<HttpConnector, ReqBody>,
    /// Registered projects' sessions (`edge register`), and the pool of streams through them
    /// for requests that do not use a client connection's own upstream connection.
    pub(crate) tunnels: crate::tunnel::Dialer,
    pub(crate) tunnel_client: Client<crate::tunnel::TunnelConnector, ReqBody>,
    /// For forward-auth checks (bodiless GETs).
    pub(crate) auth_client: Client<HttpConnector, Empty<Bytes>>,
    /// The secret shown to the chat's verify endpoint; none: such checks fail closed.
    pub(crate) auth_secret: ArcSwapOption<HeaderValue>,
    pub(crate) metrics: Arc<Metrics>,
    /// Upgraded connections (WebSockets), which outlive hyper's view of their connection.
    pub(crate) tracker: TaskTracker,
    pub(crate) limiter: ConnLimiter,
    /// The port HTTPS is served on, for plain-HTTP redirects.
    pub(crate) https_port: Option<u16>,
    pub(crate) draining: AtomicBool,
    pub(crate) certs: Arc<CertResolver>,
}

/// The gateway. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_keepalive(Some(Duration::from_secs(60)));
    c.set_connect_timeout(Some(Duration::from_secs(10)));
    c
}

impl Gateway {
    /// Builds a gateway for `config`. Relative static roots are resolved against `base_dir`.
    /// `certs` holds one certificate per project (see `edge_certs`); it may be empty when no
    /// HTTPS listener is served.
    pub fn new(config: Config, base_dir: &Path, certs: &[ProjectCert]) -> Result<Gateway, Error> {
        let metrics = Arc::new(Metrics::default());
        let https_port = config.listen.https.map(|a| a.port());
        let idle = config.limits.upstream_idle_timeout;
        let default_host = config.project_host(config.default_project);
        let access = access_log(&config.log, base_dir, None, &metrics)?;
        let mut runtime = Runtime::build(config, base_dir, &metrics).map_err(Error::Config)?;
        runtime.access = access;
        let certs_resolver = Arc::new(CertResolver::default());
        certs_resolver
            .set(certs, &default_host)
            .map_err(Error::Tls)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(idle)
            .pool_max_idle_per_host(1024)
            .http1_max_buf_size(crate::upstream::MAX_BUF)
            .build(connector());
        let h2c = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(idle)
            .http2_only(true)
            .build(connector());
        let tunnels: crate::tunnel::Dialer = Arc::new(std::sync::OnceLock::new());
        let tunnel_client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(idle)
            .pool_max_idle_per_host(1024)
            .http1_max_buf_size(crate::upstream::MAX_BUF)
            .build(crate::tunnel::TunnelConnector(tunnels.clone()));
        let auth_client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(idle)
            .build(connector());
        Ok(Gateway {
            shared: Arc::new(Shared {
                outposts: std::sync::OnceLock::new(),
                http01: std::sync::OnceLock::new(),
                renew: std::sync::OnceLock::new(),
                extra_metrics: std::sync::OnceLock::new(),
                register_status: std::sync::OnceLock::new(),
                config_file: std::sync::OnceLock::new(),
                chat_login: std::sync::OnceLock::new(),
                register_revoke: std::sync::OnceLock::new(),
                runtime: ArcSwap::from_pointee(runtime),
                client,
                h2c,
                tunnels,
                tunnel_client,
                auth_client,
                auth_secret: ArcSwapOption::empty(),
                metrics,
                tracker: TaskTracker::new(),
                limiter: ConnLimiter::default(),
                https_port,
                draining: AtomicBool::new(false),
                certs: certs_resolver,
            }),
        })
    }

    /// Applies a new config and certificates atomically, or neither. Listener addresses are
    /// not re-bound (that needs a restart); everything else takes effect for the next request.
    pub fn reload(
        &self,
        config: Config,
        base_dir: &Path,
        certs: &[ProjectCert],
    ) -> Result<(), Error> {
        let default_host = config.project_host(config.default_project);
        let current = self.shared.runtime.load().access.clone();
        let access = access_log(
            &config.log,
            base_dir,
            current.as_ref(),
            &self.shared.metrics,
        );
        let result = access
            .and_then(|access| {
                let mut rt = Runtime::build(config, base_dir, &self.shared.metrics)
                    .map_err(Error::Config)?;
                rt.access = access;
                Ok(rt)
            })
            .and_then(|rt| {
                // Certificates first: if they fail, the route table is not swapped either.
                self.shared
                    .certs
                    .set(certs, &default_host)
                    .map_err(Error::Tls)?;
                Ok(rt)
            });
        match result {
            Ok(rt) => {
                self.shared.runtime.store(Arc::new(rt));
                self.shared.metrics.reloads.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(e) => {
                self.shared.metrics.reload_failures.fetch_add(1, Relaxed);
                Err(e)
            }
        }
    }

    /// SIGUSR1: the access log file is opened anew (after logrotate moved it).
    pub fn reopen_logs(&self) {
        if let Some(l) = &self.shared.runtime.load().access {
            l.reopen();
        }
    }

    /// Writes the access log's pending lines (at shutdown), waiting at most `timeout`.
    pub fn flush_logs(&self, timeout: Duration) {
        if let Some(l) = &self.shared.runtime.load().access {
            l.flush(timeout);
        }
    }

    /// Sets the secret shown to the chat's verify endpoint on forward-auth checks. Without one,
    /// routes that check through the chat refuse every request (503).
    pub fn set_forward_auth_secret(&self, secret: &str) -> Result<(), Error> {
        let v = HeaderValue::from_str(secret.trim())
            .map_err(|_| Error::Secret("the forward-auth secret must be printable ASCII".into()))?;
        if v.is_empty() {
            return Err(Error::Secret("the forward-auth secret is empty".into()));
        }
        let mut v = v;
        v.set_sensitive(true);
        self.shared.auth_secret.store(Some(Arc::new(v)));
        Ok(())
    }

    /// Where the config came from (`None`: the embedded default), so that edge's pages say how to
    /// change it. Set once.
    pub fn set_config_file(&self, file: Option<std::path::PathBuf>) {
        let _ = self.shared.config_file.set(file);
    }

    /// `POST /chat/login-url?project=NAME` on the admin listener: `f` makes a one-time sign-in
    /// link for the project's chat (the default project's without a name). Set once.
    pub fn set_chat_login(&self, f: RenewFn) {
        let _ = self.shared.chat_login.set(f);
    }

    /// Gives the gateway the sessions of registered projects (`edge register`): their mounts
    /// are dialled through it. Set once.
    pub fn set_tunnels(&self, dialer: Arc<dyn crate::tunnel::TunnelDialer>) {
        let _ = self.shared.tunnels.set(dialer);
    }

    /// `GET /register` (registrations and sessions as JSON) and `POST /register/revoke?name=`
    /// on the admin listener.
    pub fn set_register_admin(&self, status: crate::admin::StatusFn, revoke: RenewFn) {
        let _ = self.shared.register_status.set(status);
        let _ = self.shared.register_revoke.set(revoke);
    }

    /// Swaps in new certificates only (renewals); the route table stays.
    pub fn set_certs(&self, certs: &[ProjectCert]) -> Result<(), Error> {
        let rt = self.shared.runtime.load();
        let cfg = rt.config();
        let default_host = cfg.project_host(cfg.default_project);
        self.shared
            .certs
            .set(certs, &default_host)
            .map_err(Error::Tls)
    }

    /// The config in force now.
    pub fn config(&self) -> Config {
        self.shared.runtime.load().config().clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    fn tls_acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, Error> {
        let cfg = self
            .shared
            .certs
            .server_config()
            .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
    }

    /// Serves HTTPS on `listener` until `shutdown` completes, then drains.
    pub async fn serve_https(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let acceptor = self.tls_acceptor()?;
        server::serve(self.shared.clone(), listener, Some(acceptor), shutdown).await;
        Ok(())
    }

    /// Serves plain HTTP on `listener`: a redirect to HTTPS, or the mounts when
    /// `listen.http_redirect = false`.
    pub async fn serve_http(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        server::serve(self.shared.clone(), listener, None, shutdown).await;
    }

    /// Serves the admin endpoints. `reload` is what `POST /reload` calls.
    pub async fn serve_admin(
        &self,
        listener: TcpListener,
        reload: Option<ReloadFn>,
        shutdown: impl Future<Output = ()>,
    ) {
        admin::serve(self.shared.clone(), listener, reload, shutdown).await;
    }

    /// Where plain HTTP's `GET /.well-known/acme-challenge/<token>` finds its answer (set
    /// once, by `edge up`). Asked before any routing or redirect, so HTTP-01 validation works
    /// whatever the mounts and `http_redirect` say.
    pub fn set_http01_answers(&self, f: Http01Fn) {
        let _ = self.shared.http01.set(f);
    }

    /// What `POST /certs/renew[?project=NAME]` on the admin listener does (set once).
    pub fn set_cert_renewal(&self, f: RenewFn) {
        let _ = self.shared.renew.set(f);
    }

    /// More Prometheus text appended to `/metrics` (set once): certificate expiry, ACME orders.
    pub fn set_extra_metrics(&self, f: crate::admin::StatusFn) {
        let _ = self.shared.extra_metrics.set(f);
    }

    /// What `GET /outposts` on the admin listener answers (set once, by `edge up`).
    pub fn set_outposts_status(&self, f: crate::admin::StatusFn) {
        let _ = self.shared.outposts.set(f);
    }

    /// Marks the gateway as going away: `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.shared.draining.store(true, Relaxed);
    }

    /// Waits (at most `grace`) for upgraded connections to close; true if they all did.
    pub async fn wait_streams(&self, grace: Duration) -> bool {
        self.shared.tracker.close();
        tokio::time::timeout(grace, self.shared.tracker.wait())
            .await
            .is_ok()
    }
}
