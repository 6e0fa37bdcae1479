//! The request path, in the order a request lives: hygiene, route, then a static file, an
//! upstream or the gateway's own answer; then response headers, metrics and the access log.

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use edge_routing::Decision;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::{find_body_error, BodyError, Progress, ReqBody, ResBody};
use crate::forward_auth::{self, Asked, Verdict};
use crate::hygiene::{self, Forwarded};
use crate::metrics::{RouteMetrics, UpstreamError};
use crate::pages::{self, esc};
use crate::runtime::{RouteRt, Runtime, Target};
use crate::upstream::UpstreamFail;
use crate::Shared;

/// What the gateway knows about the client's connection, rendered once per connection.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub ip: std::net::IpAddr,
    pub ip_value: HeaderValue,
    /// `Forwarded: for=...;proto=...`, rendered once per connection.
    pub forwarded: HeaderValue,
    pub tls: bool,
    /// The server name the TLS handshake asked for (lower-case), if any.
    pub sni: Option<Box<str>>,
    /// The upstream connection requests on this (HTTP/1.1) connection reuse.
    pub upstream: crate::upstream::Slot,
}

const CSP_SANDBOX: HeaderValue =
    HeaderValue::from_static("sandbox allow-scripts allow-forms allow-popups");
/// Response headers whose effect reaches past the mount to the whole origin (every project
/// mount shares it): an untrusted mount's are dropped. Cookies; HSTS (`max-age=0` would switch
/// it off); `Clear-Site-Data` (would wipe every session); a service worker's scope widened to
/// `/`; alternative services; network error logging; the origin's agent cluster; client hints.
const ORIGIN_WIDE: [&str; 10] = [
    "set-cookie",
    "strict-transport-security",
    "clear-site-data",
    "service-worker-allowed",
    "alt-svc",
    "nel",
    "report-to",
    "origin-agent-cluster",
    "accept-ch",
    "critical-ch",
];
const HSTS: HeaderValue = HeaderValue::from_static("max-age=63072000");

pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Result<Response<ResBody>, Infallible> {
    let start = Instant::now();
    let rt = shared.runtime.load_full();
    // Hygiene before anything else looks at the request.
    hygiene::strip_client_claims(req.headers_mut());
    // HTTP/2 carries the host in :authority; HTTP/1.1 in Host, or in an absolute-form target,
    // which then wins (RFC 9112 §3.2.2). Either way it is only matched against projects: edge
    // never dials a host named by the client, so it cannot be used as an open proxy.
    let host = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    };
    // Cheap clones (reference-counted bytes), so the request can move on while these are read.
    let uri = req.uri().clone();
    let raw_target = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    let method = req.method().clone();
    let checked = check_request(&shared, &conn, req.headers(), host.as_ref(), raw_target);
    let target: &str = match &checked {
        Ok(t) => t,
        Err(_) => raw_target,
    };
    let (mut resp, metrics) = match (&checked, &host) {
        (Err(r), _) => (r.answer(), rt.unrouted.clone()),
        (Ok(t), Some(_)) if !conn.tls && t.starts_with(ACME_CHALLENGE) => (
            http01(&shared, &t[ACME_CHALLENGE.len()..]),
            rt.unrouted.clone(),
        ),
        (Ok(_), Some(host)) => {
            let host_str = host.to_str().unwrap_or("");
            route(&shared, &rt, &conn, req, host.clone(), host_str, target).await
        }
        (Ok(_), None) => unreachable_host(&rt),
    };
    if conn.tls && rt.config().listen.hsts {
        // The gateway's, whatever an upstream said: HSTS is origin-wide, and one mount must not
        // switch it off (`max-age=0`) for the others.
        resp.headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, HSTS);
    }
    metrics.observe(resp.status().as_u16(), start.elapsed());
    if let Some(log) = &rt.access {
        // The path only: query strings carry tokens and OAuth codes.
        log.log(&crate::access_log::Line {
            client: conn.ip_value.to_str().unwrap_or("?"),
            method: method.as_str(),
            host: host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""),
            path: target.split('?').next().unwrap_or(""),
            status: resp.status().as_u16(),
            micros: start.elapsed().as_micros() as u64,
            project: metrics.project(),
            mount: metrics.mount(),
        });
    }
    Ok(resp)
}

const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// An ACME CA validating HTTP-01: the key authorization for the token, or 404. Answered on plain
/// HTTP only, before routing and before the HTTPS redirect (RFC 8555 §8.3).
fn http01(shared: &Shared, token: &str) -> Response<ResBody> {
    let answer = shared
        .http01
        .get()
        .filter(|_| !token.is_empty() && !token.contains(['/', '?']))
        .and_then(|f| f(token));
    match answer {
        Some(a) => {
            tracing::info!(%token, "answered an ACME http-01 challenge");
            let mut r = Response::new(ResBody::full(a));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        None => pages::plain(StatusCode::NOT_FOUND, "no such ACME challenge\n"),
    }
}

/// Why a request was refused before routing (the client's fault).
enum Refused {
    Host(&'static str),
    Target(edge_routing::TargetError),
    Misdirected,
}

impl Refused {
    fn answer(&self) -> Response<ResBody> {
        match self {
            Refused::Host(why) => pages::plain(StatusCode::BAD_REQUEST, why),
            Refused::Target(e) => {
                let mut r = pages::plain(StatusCode::BAD_REQUEST, "");
                *r.body_mut() = ResBody::full(format!("{e}\n"));
                r
            }
            Refused::Misdirected => pages::plain(
                StatusCode::MISDIRECTED_REQUEST,
                "this connection was opened for another site; open a new one for this host\n",
            ),
        }
    }
}

fn unreachable_host(rt: &Runtime) -> (Response<ResBody>, Arc<RouteMetrics>) {
    (
        pages::plain(StatusCode::BAD_REQUEST, "a request needs a Host header\n"),
        rt.unrouted.clone(),
    )
}

/// What routing may rely on: exactly one well-formed host, on a TLS connection whose handshake
/// named a site of the same certificate, and a target whose dot-segments are resolved (the path
/// auth judges is the path the upstream gets).
fn check_request<'t>(
    shared: &Shared,
    conn: &ConnInfo,
    headers: &http::HeaderMap,
    host: Option<&HeaderValue>,
    target: &'t str,
) -> Result<std::borrow::Cow<'t, str>, Refused> {
    // Two Host headers are ambiguous (RFC 9112 §3.2): the first routes, the second may be
    // what an upstream believes.
    let mut hosts = headers.get_all(header::HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Err(Refused::Host("a request has one Host header\n"));
    }
    let Some(host) = host else {
        return Err(Refused::Host("a request needs a Host header\n"));
    };
    let Ok(host_str) = host.to_str() else {
        return Err(Refused::Host("the Host header is not text\n"));
    };
    if edge_routing::check_host(host_str).is_err() {
        return Err(Refused::Host(
            "the Host header is not a host name with an optional numeric port\n",
        ));
    }
    if conn.tls {
        let (name, _) = edge_routing::normalize_host(host_str);
        if !shared.certs.shares_certificate(conn.sni.as_deref(), &name) {
            return Err(Refused::Misdirected);
        }
    }
    edge_routing::normalize_target(target).map_err(Refused::Target)
}

async fn route(
    shared: &Shared,
    rt: &Runtime,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    host: HeaderValue,
    host_str: &str,
    target: &str,
) -> (Response<ResBody>, Arc<RouteMetrics>) {
    let method = req.method().clone();
    if method == Method::CONNECT {
        let r = pages::plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "edge is not a forward proxy\n",
        );
        return (r, rt.unrouted.clone());
    }
    let cfg = rt.config();
    if !conn.tls && cfg.listen.http_redirect {
        let (name, _) = edge_routing::normalize_host(host_str);
        let port = match shared.https_port {
            Some(443) | None => String::new(),
            Some(p) => format!(":{p}"),
        };
        let r = pages::redirect(308, &format!("https://{name}{port}{target}"));
        let m = rt
            .table
            .project_of_host(&name)
            .map(|p| rt.project_metrics[p].clone())
            .unwrap_or_else(|| rt.unrouted.clone());
        return (r, m);
    }
    let scheme = if conn.tls { "https" } else { "http" };
    let decision = rt.table.resolve(scheme, host_str, target);
    let (resp, m) = match decision {
        Decision::Redirect { status, location } => {
            let m = match rt
                .table
                .project_of_host(&edge_routing::normalize_host(host_str).0)
            {
                Some(p) => rt.project_metrics[p].clone(),
                None => rt.unrouted.clone(),
            };
            (pages::redirect(status, &location), m)
        }
        Decision::NotFound { project } => not_found(rt, project, host_str, target),
        Decision::Route {
            project,
            route,
            path,
        } => {
            let rrt = &rt.routes[project][route];
            let rcfg = &cfg.projects[project].routes[route];
            let mut auth_cookies = Vec::new();
            if let Some(auth) = &rrt.auth {
                // Identity comes from the auth server only, whatever the client sent.
                // In every spelling a CGI-style upstream folds together.
                hygiene::remove_cgi_spellings(req.headers_mut(), auth.identity_headers());
                if let Some(rule) = skipped_by(cfg, rcfg, method.as_str(), path) {
                    // The app authenticates these itself (git over HTTP, API tokens, webhooks).
                    tracing::debug!(route = %rcfg.key, rule = %rule.source, "forward-auth skipped");
                } else {
                    let asked = Asked {
                        method: &method,
                        proto: scheme,
                        host: &host,
                        target,
                        client_ip: &conn.ip_value,
                        headers: req.headers(),
                        upgrade: hygiene::is_upgrade_request(req.headers()),
                    };
                    match forward_auth::check(shared, auth, asked).await {
                        Verdict::Allow {
                            identity,
                            set_cookies,
                        } => {
                            for (name, value) in identity {
                                req.headers_mut().insert(name, value);
                            }
                            auth_cookies = set_cookies;
                        }
                        Verdict::Deny(resp) => return (resp, rrt.metrics.clone()),
                    }
                }
            }
            if !rrt.chat {
                forward_auth::strip_cookies(req.headers_mut(), &edge_routing::CHAT_COOKIES);
            }
            let mut resp = match &rrt.target {
                Target::Unconfigured => unconfigured(shared, rt, project, route),
                Target::Welcome => welcome(shared, rt, project, route, host.to_str().unwrap_or("")),
                Target::Static(root) => {
                    crate::static_files::serve(root, path, &method, req.headers()).await
                }
                Target::Upstream {
                    authority,
                    h2c,
                    tunnel,
                } => {
                    let path = path.to_string();
                    let via = Via {
                        h2c: *h2c,
                        tunnel: *tunnel,
                    };
                    forward(
                        shared, rt, conn, project, route, rrt, authority, via, &path, host, req,
                    )
                    .await
                }
            };
            if rcfg.untrusted {
                let h = resp.headers_mut();
                for name in ORIGIN_WIDE {
                    h.remove(name);
                }
                h.insert(header::CONTENT_SECURITY_POLICY, CSP_SANDBOX);
            }
            for c in auth_cookies {
                resp.headers_mut().append(header::SET_COOKIE, c);
            }
            (resp, rrt.metrics.clone())
        }
    };
    (resp, m)
}

fn not_found(
    rt: &Runtime,
    project: Option<usize>,
    host: &str,
    target: &str,
) -> (Response<ResBody>, Arc<RouteMetrics>) {
    match project {
        Some(p) => {
            let name = &rt.config().projects[p].name;
            let path = target.split('?').next().unwrap_or("");
            let body = format!(
                "<p>Nothing is mounted at <code>{}</code> in project <b>{}</b>. Its mounts are:</p>{}\
                 <p>Paths outside these mounts never reach an app: if an app links here, it is not \
                 configured for its subpath (its public URL should end with its mount).</p>",
                esc(path),
                esc(name),
                rt.mount_lists[p]
            );
            (
                pages::page(StatusCode::NOT_FOUND, "Not Found", &body),
                rt.project_metrics[p].clone(),
            )
        }
        None => {
            let body = format!("<p>No project is served at <code>{}</code>.</p>", esc(host));
            (
                pages::page(StatusCode::NOT_FOUND, "Not Found", &body),
                rt.unrouted.clone(),
            )
        }
    }
}

/// The `auth_skip` rule (the app preset's or the route's own) that lets this request past the
/// route's forward-auth, if any. Rules see the path inside the mount (`/owner/repo/info/refs`
/// for `/forge/owner/repo/info/refs` whatever the prefix mode), or the whole path for a root path.
fn skipped_by<'c>(
    cfg: &edge_routing::Config,
    r: &'c edge_routing::Route,
    method: &str,
    path: &str,
) -> Option<&'c edge_routing::AuthSkip> {
    if r.auth_skip.is_empty() {
        return None;
    }
    let within = match (cfg.routing, r.prefix) {
        (edge_routing::RoutingMode::Subpath, edge_routing::PrefixMode::Keep) => path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(r.mount.as_str()))
            .filter(|rest| rest.is_empty() || rest.starts_with(['/', '?']))
            .unwrap_or(path),
        _ => path,
    };
    r.auth_skip.iter().find(|s| s.matches(method, within))
}

/// How a change to the config takes effect on this edge, as HTML.
fn how_to_apply(shared: &Shared) -> String {
    match shared.config_file.get() {
        None => "in the config, then run <code>edge reload</code>".to_string(),
        Some(Some(f)) => format!(
            "in <code>{f}</code>, then run <code>edge reload --config {f}</code>",
            f = esc(&f.display().to_string())
        ),
        Some(None) => "in a config file: this edge runs its embedded default, so first \
                 <code>edge config default &gt; edge.toml</code>, make the change there, stop this \
                 edge and start it again with <code>edge up --config edge.toml</code>"
            .to_string(),
    }
}

fn unconfigured(shared: &Shared, rt: &Runtime, project: usize, route: usize) -> Response<ResBody> {
    let p = &rt.config().projects[project];
    let r = &p.routes[route];
    let welcome = p
        .routes
        .iter()
        .find(|r| r.target == edge_routing::RouteTarget::Welcome)
        .map(|w| {
            format!(
                "<p><a href=\"/{m}/\">/{m}/</a> shows every mount of this project and what to run next.</p>",
                m = esc(&w.mount)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<p>The mount <code>/{m}/</code> of project <b>{pn}</b> is not pointed anywhere yet.</p>\
         <p>Set <code>{key}.upstream</code> (the app's address, e.g. \
         <code>upstream = \"http://127.0.0.1:3000\"</code>) or <code>{key}.root</code> (a \
         directory of static files, e.g. <code>root = \"./site\"</code>) {apply}.</p>{welcome}",
        m = esc(&r.mount),
        pn = esc(&p.name),
        key = esc(&r.key),
        apply = how_to_apply(shared),
    );
    pages::page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Mount not configured",
        &body,
    )
}

/// edge's welcome page: the project's mounts, what each points at, what to run next.
fn welcome(
    shared: &Shared,
    rt: &Runtime,
    project: usize,
    route: usize,
    host: &str,
) -> Response<ResBody> {
    use edge_routing::RouteTarget;
    let cfg = rt.config();
    let p = &cfg.projects[project];
    let mut rows = String::new();
    for (i, r) in p.routes.iter().enumerate() {
        let what = match &r.target {
            RouteTarget::Unconfigured => "<b>not pointed anywhere yet</b>: set <code>upstream</code> or <code>root</code>".to_string(),
            RouteTarget::Welcome if i == route => "this page".to_string(),
            RouteTarget::Welcome => "edge's welcome page".to_string(),
            RouteTarget::Chat => "the agent chat edge runs: sign in with the one-time link <code>edge up</code> printed, or a new one from <code>edge chat login-url</code>".to_string(),
            RouteTarget::Upstream(u) => format!("the app at <code>{}</code>", esc(&u.authority)),
            RouteTarget::Static(d) => format!("the files in <code>{}</code>", esc(&d.display().to_string())),
            RouteTarget::Tunnel => "a registered project host, through its session".to_string(),
        };
        let gate = if r.auth.is_some() {
            " (behind the sign-in)"
        } else {
            ""
        };
        let link = match cfg.routing {
            edge_routing::RoutingMode::Subpath => format!("/{}/", r.mount),
            edge_routing::RoutingMode::Subdomain => {
                let port = host
                    .rsplit_once(':')
                    .map(|(_, p)| format!(":{p}"))
                    .unwrap_or_default();
                format!("//{}.{}{port}/", r.mount, cfg.project_host(project))
            }
        };
        rows.push_str(&format!(
            "<li><a href=\"{link}\">/{m}/</a> — {what}{gate}</li>",
            link = esc(&link),
            m = esc(&r.mount),
        ));
    }
    let body = format!(
        "<p>This is project <b>{pn}</b> on edge. Its mounts:</p><ul>{rows}</ul>\
         <p><b>Next:</b> point each mount at its app {apply}. Forgejo wants its <code>ROOT_URL</code> \
         to end with its mount (<code>/forge/</code>), Woodpecker its <code>WOODPECKER_HOST</code>.</p>\
         <p>Then check the whole deployment from outside with <code>edge smoke</code>. \
         To have <code>edge</code> on your PATH: <code>cargo install --path .</code> in edge's source \
         directory.</p>",
        pn = esc(&p.name),
        apply = how_to_apply(shared),
    );
    pages::page(StatusCode::OK, "edge is running", &body)
}

/// How a route's upstream is reached.
#[derive(Debug, Clone, Copy)]
struct Via {
    h2c: bool,
    /// Through a registered project host's session.
    tunnel: bool,
}

/// The page for a tunnel route whose stream could not be opened: the project host is offline
/// (no session), or its session is at its stream limit. `None` for other failures.
fn tunnel_failure(
    rt: &Runtime,
    project: usize,
    route: usize,
    e: &UpstreamFail,
) -> Option<Response<ResBody>> {
    let p = &rt.config().projects[project];
    let m = esc(&p.routes[route].mount);
    let pn = esc(&p.name);
    match crate::tunnel::failure_kind(e)? {
        std::io::ErrorKind::NotConnected => {
            tracing::info!(project = %p.name, mount = %p.routes[route].mount, "project host offline");
            Some(pages::page(
                StatusCode::BAD_GATEWAY,
                "Project host offline",
                &format!(
                    "<p>The host of project <b>{pn}</b> is offline: it has no session to this \
                     edge, so <code>/{m}/</code> cannot be reached.</p>\
                     <p>On the project host, <code>edge connect</code> brings it back; it \
                     reconnects by itself after network cuts.</p>"
                ),
            ))
        }
        std::io::ErrorKind::WouldBlock => Some(pages::page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Project host busy",
            &format!(
                "<p>The session of project <b>{pn}</b> has as many streams open as it may. \
                 Try again in a moment.</p>"
            ),
        )),
        _ => Some(pages::page(
            StatusCode::BAD_GATEWAY,
            "Bad Gateway",
            &format!(
                "<p>The host of project <b>{pn}</b> could not reach the upstream of \
                 <code>/{m}/</code>.</p><p>The project host's log has the cause.</p>"
            ),
        )),
    }
}

fn upstream_failure(
    rt: &Runtime,
    project: usize,
    route: usize,
    status: StatusCode,
    what: &str,
) -> Response<ResBody> {
    let p = &rt.config().projects[project];
    let r = &p.routes[route];
    let body = format!(
        "<p>The upstream of <code>/{m}/</code> in project <b>{pn}</b> {what}.</p>\
         <p>The gateway's log has the cause.</p>",
        m = esc(&r.mount),
        pn = esc(&p.name),
    );
    pages::page(status, status.canonical_reason().unwrap_or("Error"), &body)
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    shared: &Shared,
    rt: &Runtime,
    conn: &ConnInfo,
    project: usize,
    route: usize,
    rrt: &RouteRt,
    authority: &http::uri::Authority,
    via: Via,
    path: &str,
    host: HeaderValue,
    mut req: Request<Incoming>,
) -> Response<ResBody> {
    let Via { h2c, tunnel } = via;
    let cfg = rt.config();
    let rcfg = &cfg.projects[project].routes[route];
    if let Some(max) = rcfg.max_body {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return too_large(rt, project, route, max);
        }
    }
    let upgrade = req.version() == Version::HTTP_11 && hygiene::is_upgrade_request(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let upgrade_value = if upgrade {
        parts.headers.get(header::UPGRADE).cloned()
    } else {
        None
    };

    let h = &mut parts.headers;
    hygiene::strip_hop_by_hop(h, h2c);
    if rcfg.untrusted {
        h.remove(header::COOKIE);
        h.remove(header::AUTHORIZATION);
    }
    hygiene::add_forwarded(
        h,
        &Forwarded {
            client_ip: &conn.ip_value,
            forwarded: &conn.forwarded,
            proto: if conn.tls { "https" } else { "http" },
            host: &host,
            prefix: rrt.prefix.as_ref(),
        },
    );
    // The public Host, as the app's ROOT_URL expects (HTTP/2 clients send :authority instead).
    h.insert(header::HOST, host);
    if let Some(u) = upgrade_value {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, u);
    }
    // An HTTP/1.1 client's requests go over its own upstream connection, in origin form; the
    // rest (HTTP/2 clients, h2c, upgrades) through the shared pools, which want absolute form.
    let dedicated = !h2c && !upgrade && parts.version <= Version::HTTP_11;
    let uri = if dedicated {
        Uri::try_from(path).map_err(http::Error::from)
    } else {
        Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query(path)
            .build()
    };
    parts.uri = match uri {
        Ok(u) => u,
        Err(_) => return pages::plain(StatusCode::BAD_REQUEST, "malformed request target\n"),
    };
    parts.version = if h2c {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    use http_body::Body as _;
    let progress = (!h2c && !body.is_end_stream()).then(Progress::new);
    let body = ReqBody::new(
        body,
        rcfg.max_body,
        cfg.limits.body_idle_timeout,
        progress.clone(),
    );
    let req = Request::from_parts(parts, body);

    let result = if h2c {
        // gRPC long-polls (Woodpecker's `Next`) wait as long as they like: no timeout here.
        shared.h2c.request(req).await.map_err(UpstreamFail::from)
    } else {
        let send = async {
            if dedicated {
                let dial = tunnel.then_some(&shared.tunnels);
                conn.upstream.send(authority, req, dial).await
            } else if tunnel {
                shared
                    .tunnel_client
                    .request(req)
                    .await
                    .map_err(UpstreamFail::from)
            } else {
                shared.client.request(req).await.map_err(UpstreamFail::from)
            }
        };
        match upstream_with_timeout(send, rcfg.timeout, progress.as_deref()).await {
            Some(r) => r,
            None => return upstream_failed(rt, project, route, authority, Failed::Timeout),
        }
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            match find_body_error(&e) {
                Some(BodyError::TooLarge(max)) => return too_large(rt, project, route, *max),
                Some(BodyError::Idle(d)) => {
                    tracing::info!(client = %conn.ip, idle = ?d, "cut off a request body that stalled");
                    return pages::plain(StatusCode::REQUEST_TIMEOUT, "the request body stalled\n");
                }
                Some(BodyError::Client(_)) => {
                    return pages::plain(StatusCode::BAD_REQUEST, "the request body broke off\n");
                }
                None => {}
            }
            if tunnel {
                if let Some(r) = tunnel_failure(rt, project, route, &e) {
                    rrt.metrics.upstream_error(UpstreamError::Connect);
                    return r;
                }
            }
            return upstream_failed(rt, project, route, authority, Failed::Upstream(e));
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return upstream_failed(rt, project, route, authority, Failed::SwitchedUnasked);
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let metrics = shared.metrics.clone();
        metrics.open_websockets.fetch_add(1, Relaxed);
        shared.tracker.spawn(async move {
            // No idle timeout: WebSockets idle for minutes between messages; TCP keep-alive
            // finds dead peers, and the apps ping at their own pace.
            if let (Ok(c), Ok(u)) = tokio::join!(client_upgrade, upstream_upgrade) {
                let mut c = TokioIo::new(c);
                let mut u = TokioIo::new(u);
                // 4 KiB each way (tokio's default is 8 KiB): WebSocket messages are small, and
                // thousands of idle sockets should cost little memory.
                let _ = tokio::io::copy_bidirectional_with_sizes(&mut c, &mut u, 4096, 4096).await;
            }
            metrics.open_websockets.fetch_sub(1, Relaxed);
        });
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, ResBody::Empty);
    }
    hygiene::strip_hop_by_hop(resp.headers_mut(), false);
    resp.map(ResBody::Incoming)
}

/// Why an upstream gave no usable response head.
pub(crate) enum Failed {
    /// Nothing within the route's `timeout`.
    Timeout,
    Upstream(UpstreamFail),
    /// A response the gateway could not read (the fast path's parser said why).
    Other(String),
    /// `101 Switching Protocols` to a request that asked for no upgrade.
    SwitchedUnasked,
}

/// The answer when a route's upstream failed: counted by kind, logged with its cause (which the
/// client never sees), and a page naming the project and mount.
pub(crate) fn upstream_failed(
    rt: &Runtime,
    project: usize,
    route: usize,
    authority: &http::uri::Authority,
    f: Failed,
) -> Response<ResBody> {
    let cfg = rt.config();
    let rcfg = &cfg.projects[project].routes[route];
    let metrics = &rt.routes[project][route].metrics;
    let pname = &cfg.projects[project].name;
    let (kind, status, what) = match f {
        Failed::Timeout => {
            tracing::warn!(
                project = %pname, mount = %rcfg.mount,
                upstream = %authority, timeout = ?rcfg.timeout,
                "upstream did not answer in time"
            );
            let what = format!(
                "did not answer within {:?} (<code>{}.timeout</code>)",
                rcfg.timeout,
                esc(&rcfg.key)
            );
            (UpstreamError::Timeout, StatusCode::GATEWAY_TIMEOUT, what)
        }
        Failed::SwitchedUnasked => (
            UpstreamError::Other,
            StatusCode::BAD_GATEWAY,
            "switched protocols unasked".to_string(),
        ),
        Failed::Upstream(e) => {
            tracing::warn!(
                project = %pname, mount = %rcfg.mount,
                upstream = %authority, error = %error_chain(&e),
                "upstream request failed"
            );
            if e.is_connect() {
                let what = format!(
                    "at <code>{authority}</code> refused the connection or could not be reached"
                );
                (UpstreamError::Connect, StatusCode::BAD_GATEWAY, what)
            } else {
                let what = format!("at <code>{authority}</code> failed to answer");
                (UpstreamError::Other, StatusCode::BAD_GATEWAY, what)
            }
        }
        Failed::Other(why) => {
            tracing::warn!(
                project = %pname, mount = %rcfg.mount,
                upstream = %authority, error = %why,
                "upstream request failed"
            );
            let what = format!("at <code>{authority}</code> failed to answer");
            (UpstreamError::Other, StatusCode::BAD_GATEWAY, what)
        }
    };
    metrics.upstream_error(kind);
    upstream_failure(rt, project, route, status, &what)
}

/// Waits for the upstream's response head, giving up after `timeout` of silence counted from
/// the later of the request's start and the last movement of its body.
async fn upstream_with_timeout<F: std::future::Future>(
    fut: F,
    timeout: std::time::Duration,
    progress: Option<&Progress>,
) -> Option<F::Output> {
    let Some(progress) = progress else {
        return tokio::time::timeout(timeout, fut).await.ok();
    };
    tokio::pin!(fut);
    let mut deadline = tokio::time::Instant::now() + timeout;
    loop {
        tokio::select! {
            r = &mut fut => return Some(r),
            _ = tokio::time::sleep_until(deadline) => {
                let next = tokio::time::Instant::from_std(progress.last()) + timeout;
                if next <= tokio::time::Instant::now() {
                    return None;
                }
                deadline = next;
            }
        }
    }
}

fn too_large(rt: &Runtime, project: usize, route: usize, max: u64) -> Response<ResBody> {
    let r = &rt.config().projects[project].routes[route];
    let body = format!(
        "<p>This mount accepts request bodies up to {max} bytes (<code>{}.max_body</code>).</p>",
        esc(&r.key)
    );
    let mut resp = pages::page(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large", &body);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
