//! The chat's HTTP side: sign-in, sign-out, the forward-auth verify endpoint, and the
//! signed-in endpoints. Paths are the chat's own (the gateway strips `/chat`); every URL the
//! chat hands out is built from the public base the gateway describes in `X-Forwarded-*`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use edge_routing::{Config, LoginKind, RoutingMode, CHAT_COOKIES};
use serde::Deserialize;

use crate::login::{self, DiscoveryCache};
use crate::pages::{esc, page};
use crate::store::{Flow, Session, Store};
use crate::Error;

/// The header the gateway sends the shared secret in (see `edge_gateway::SECRET_HEADER`).
pub const SECRET_HEADER: &str = "x-edge-auth-secret";
/// The header the gateway puts the signed-in user in.
pub const USER_HEADER: &str = "x-forwarded-user";

/// Paths of the chat that need no session: the way in and out.
const OPEN_PATHS: [&str; 4] = ["/login", "/login/token", "/oauth/callback", "/logout"];

pub(crate) struct AppState {
    pub config: ArcSwap<Config>,
    pub store: Store,
    pub orch: Arc<crate::runs::Orchestrator>,
    pub hubs: Arc<crate::talk::Hubs>,
    pub fa_secret: String,
    pub client_secret: Option<String>,
    pub http: reqwest::Client,
    pub discovery: DiscoveryCache,
    /// How a local worker is started (given by the binary).
    pub local_worker: std::sync::Mutex<Vec<String>>,
}

pub(crate) type St = Arc<AppState>;

pub(crate) fn router(st: St) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(asset))
        .route("/app.css", get(asset))
        .route("/login", get(login))
        .route("/login/token", get(token_login))
        .route("/oauth/callback", get(callback))
        .route("/logout", get(logout_page).post(logout))
        .route("/_auth/verify", get(verify))
        .route("/api/me", get(me))
        .route("/api/limits", get(crate::api::limits))
        .route(
            "/api/conversations",
            get(crate::api::list).post(crate::api::create),
        )
        .route(
            "/api/conversations/{id}",
            get(crate::api::open).delete(crate::api::delete),
        )
        .route("/api/conversations/{id}/rename", post(crate::api::rename))
        .route("/api/conversations/{id}/export", get(crate::api::export))
        .route("/api/conversations/{id}/messages", post(crate::api::send))
        .route("/ws", get(ws))
        .layer(axum::middleware::from_fn_with_state(
            st.clone(),
            origin_guard,
        ))
        .with_state(st)
}

/// Random URL-safe text from `n` bytes of the system's CSPRNG.
pub(crate) fn random(n: usize) -> Result<String, Error> {
    let mut b = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| Error::Internal("the system random generator failed".into()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

// ------------------------------------------------------------------ where the browser is

/// The request's public side, as the gateway described it.
#[derive(Debug, Clone)]
pub(crate) struct Public {
    pub proto: String,
    /// `scheme://host[:port]` of the request.
    pub origin: String,
    /// The chat's base URL for this project (`https://demo.example.test/chat`).
    pub base: String,
    /// Subdomain mode: the project's domain, for the session cookie.
    pub cookie_domain: Option<String>,
    /// The project whose chat this is (index into the config's projects, and its name; the
    /// name is empty for a host that names no project's chat).
    pub project: Option<usize>,
    pub project_name: String,
}

impl Public {
    fn base_origin(&self) -> &str {
        let after = self.base.find("://").map(|i| i + 3).unwrap_or(0);
        match self.base[after..].find('/') {
            Some(i) => &self.base[..after + i],
            None => &self.base,
        }
    }

    /// The path of the chat's base (`/chat`, or empty in subdomain mode).
    fn base_path(&self) -> &str {
        &self.base[self.base_origin().len()..]
    }
}

fn hv<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn public(cfg: &Config, h: &HeaderMap) -> Public {
    let proto = match hv(h, "x-forwarded-proto") {
        Some("https") => "https",
        _ => "http",
    };
    let host = hv(h, "x-forwarded-host")
        .or_else(|| hv(h, "host"))
        .unwrap_or("localhost");
    let origin = format!("{proto}://{host}");
    let site = cfg.chat_site(proto, host);
    let project = site.as_ref().map(|(p, _)| *p);
    let base = site.map(|(_, b)| b);
    let cookie_domain = match (&base, cfg.routing) {
        (Some(b), RoutingMode::Subdomain) => {
            let host = b.split("://").nth(1).unwrap_or("");
            let host = host.split([':', '/']).next().unwrap_or("");
            host.split_once('.').map(|(_, d)| d.to_string())
        }
        _ => None,
    };
    Public {
        proto: proto.to_string(),
        base: base.unwrap_or_else(|| origin.clone()),
        origin,
        cookie_domain,
        project,
        project_name: project
            .map(|p| cfg.projects[p].name.clone())
            .unwrap_or_default(),
    }
}

/// Where a sign-in may return to: a path on the chat's own origin, or a URL on a host of the
/// same project (subdomain mode). Anything else is an open redirect.
pub(crate) fn safe_rd(cfg: &Config, p: &Public, rd: &str) -> Result<String, String> {
    if rd.is_empty() {
        return Ok(format!("{}/", p.base_path()));
    }
    if rd.chars().any(|c| c.is_control() || c == '\\') {
        return Err("it contains control characters or a backslash".into());
    }
    if rd.starts_with('/') {
        if rd.starts_with("//") {
            return Err("it names another host".into());
        }
        return Ok(rd.to_string());
    }
    let url = url::Url::parse(rd).map_err(|_| "it is neither a path nor a URL".to_string())?;
    let host = url.host_str().ok_or("it has no host")?;
    let hostport = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    if url.scheme() != p.proto || !url.username().is_empty() || url.password().is_some() {
        return Err("it is not on this site".into());
    }
    match cfg.chat_base(&p.proto, &hostport) {
        Some(b) if b == p.base => Ok(url.to_string()),
        _ => Err(format!("{host} is not a host of this project")),
    }
}

fn is_safe_method(m: &str) -> bool {
    matches!(m, "GET" | "HEAD" | "OPTIONS")
}

/// The request's `Origin` is this site's. Browsers send `Origin` on every cross-origin request
/// and on every POST; its absence on a state-changing request or a WebSocket is refused.
fn same_origin(h: &HeaderMap, p: &Public) -> bool {
    hv(h, "origin").is_some_and(|o| o.eq_ignore_ascii_case(&p.origin))
}

/// Refuses state-changing requests and WebSocket upgrades from other origins.
async fn origin_guard(State(st): State<St>, req: Request, next: Next) -> Response {
    let ws = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if (ws || !is_safe_method(req.method().as_str())) && req.uri().path() != "/_auth/verify" {
        let cfg = st.config.load();
        let p = public(&cfg, req.headers());
        if !same_origin(req.headers(), &p) {
            tracing::info!(origin = ?hv(req.headers(), "origin"), expected = %p.origin, path = %req.uri().path(), "refused a cross-origin request");
            return page(
                StatusCode::FORBIDDEN,
                "Cross-origin request refused",
                "<p>This request came from another site (its <code>Origin</code> is not this one).</p>",
            );
        }
    }
    next.run(req).await
}

// ------------------------------------------------------------------ sessions

fn session_ids(h: &HeaderMap) -> Vec<String> {
    let mut ids = Vec::new();
    for v in h.get_all(header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for pair in s.split(';') {
            if let Some((n, val)) = pair.trim().split_once('=') {
                let val = val.trim().trim_matches('"');
                if CHAT_COOKIES.contains(&n.trim()) && !val.is_empty() && val.len() <= 128 {
                    ids.push(val.to_string());
                }
            }
        }
    }
    ids.truncate(8);
    ids
}

/// The first valid session among the request's chat cookies (stale duplicates are tolerated)
/// that was signed in to this project's chat: a project is a trust boundary, and a session of
/// another project's chat is no session here, wherever its cookie came from.
async fn session_of(st: &AppState, h: &HeaderMap) -> Result<Option<(String, Session)>, Error> {
    let cfg = st.config.load();
    let Some(chat) = cfg.chat.as_ref() else {
        return Ok(None);
    };
    let p = public(&cfg, h);
    if p.project.is_none() {
        return Ok(None);
    }
    for id in session_ids(h) {
        if let Some(s) = st
            .store
            .session(&id, chat.session_idle, chat.session_max)
            .await?
        {
            if s.project == p.project_name {
                return Ok(Some((id, s)));
            }
            tracing::info!(session_project = %s.project, project = %p.project_name, "refused a session of another project's chat");
        }
    }
    Ok(None)
}

/// Whether a session's user may use the chat now: allowed at sign-in, and, when the allowlist
/// is a list of users, still on it (removing a name from the config revokes its sessions).
fn still_allowed(cfg: &Config, s: &Session) -> bool {
    let Some(chat) = cfg
        .projects
        .iter()
        .position(|p| p.name == s.project)
        .and_then(|p| cfg.chat_of(p))
    else {
        return false;
    };
    if !s.allowed {
        return false;
    }
    if chat.login != LoginKind::Token
        && chat.allowed_orgs.is_empty()
        && chat.allowed_teams.is_empty()
    {
        return chat
            .allowed_users
            .iter()
            .any(|u| u.eq_ignore_ascii_case(&s.user));
    }
    true
}

fn session_cookie(p: &Public, value: &str, max_age: i64) -> HeaderValue {
    let name = if p.cookie_domain.is_some() {
        CHAT_COOKIES[1]
    } else {
        CHAT_COOKIES[0]
    };
    let mut c = cookie::Cookie::build((name, value.to_string()))
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(cookie::SameSite::Lax)
        .max_age(cookie::time::Duration::seconds(max_age));
    if let Some(d) = &p.cookie_domain {
        c = c.domain(d.clone());
    }
    HeaderValue::from_str(&c.build().to_string()).unwrap_or(HeaderValue::from_static(""))
}

async fn start_session(
    st: &AppState,
    p: &Public,
    user: &str,
    allowed: bool,
) -> Result<HeaderValue, Error> {
    let cfg = st.config.load();
    let max = cfg
        .chat
        .as_ref()
        .map(|c| c.session_max.as_secs() as i64)
        .unwrap_or(86400);
    if p.project.is_none() {
        return Err(Error::Refused("this host serves no project's chat".into()));
    }
    let id = random(32)?;
    st.store
        .create_session(&id, &p.project_name, user, allowed)
        .await?;
    tracing::info!(%user, project = %p.project_name, allowed, "signed in");
    Ok(session_cookie(p, &id, max))
}

/// What a handler behind sign-in needs: the session, checked against the gateway's identity
/// header.
pub(crate) async fn signed_in(
    st: &AppState,
    h: &HeaderMap,
    json: bool,
) -> Result<Session, Response> {
    let cfg = st.config.load();
    let p = public(&cfg, h);
    let s = match session_of(st, h).await {
        Ok(Some((_, s))) => s,
        Ok(None) => {
            return Err(if json {
                json_error(StatusCode::UNAUTHORIZED, "sign-in required")
            } else {
                redirect(&format!("{}/login", p.base))
            })
        }
        Err(e) => return Err(e.into_response()),
    };
    if let Some(claimed) = hv(h, USER_HEADER) {
        if claimed != s.user {
            tracing::warn!(claimed, session = %s.user, "identity header does not match the session");
            return Err(json_error(
                StatusCode::FORBIDDEN,
                "the identity header does not match the session",
            ));
        }
    }
    if !still_allowed(&cfg, &s) {
        return Err(not_allowed(&s.user));
    }
    Ok(s)
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(crate) fn json_error(status: StatusCode, msg: &str) -> Response {
    let mut r = (status, Json(serde_json::json!({ "error": msg }))).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn not_allowed(user: &str) -> Response {
    page(
        StatusCode::FORBIDDEN,
        "Not allowed",
        &format!(
            "<p>You are signed in as <b>{}</b>, but this chat is not open to you. \
             Ask its operator to add you to <code>chat.allowed_users</code> (or an allowed org or team).</p>\
             <form method=\"post\" action=\"logout\"><button>Sign out</button></form>",
            esc(user)
        ),
    )
}

// ------------------------------------------------------------------ handlers

/// The chat's page: the app (`app.js`, `app.css`, embedded in the binary) around the user's
/// name. Everything it loads is relative to the page, from this origin only.
async fn index(State(st): State<St>, h: HeaderMap) -> Response {
    let s = match signed_in(&st, &h, false).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>edge chat</title>\
         <link rel=\"stylesheet\" href=\"app.css\"><script src=\"app.js\" defer></script></head><body>\
         <aside><button id=\"new\">New chat</button><ul id=\"convs\"></ul></aside>\
         <main><header><span id=\"signed-in\">Signed in as <b>{}</b></span>\
         <form method=\"post\" action=\"logout\"><button>Sign out</button></form>\
         <span id=\"conn\"></span><span class=\"limits\" id=\"limits\"></span></header>\
         <div id=\"banner\"></div><div id=\"log\" aria-live=\"polite\"></div>\
         <form id=\"send\"><textarea id=\"text\" placeholder=\"Message the agent (Enter sends, Shift+Enter: new line)\"></textarea>\
         <button type=\"submit\">Send</button><button type=\"button\" id=\"cancel\" hidden>Cancel</button></form>\
         </main></body></html>",
        esc(&s.user)
    );
    let mut r = (StatusCode::OK, html).into_response();
    let hs = r.headers_mut();
    hs.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    hs.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    r
}

/// The UI's script and styles, compiled into the binary (no CDN).
async fn asset(uri: axum::http::Uri) -> Response {
    let (body, ctype) = match uri.path() {
        "/app.js" => (
            include_str!("../ui/app.js"),
            "text/javascript; charset=utf-8",
        ),
        "/app.css" => (include_str!("../ui/app.css"), "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn me(State(st): State<St>, h: HeaderMap) -> Response {
    match signed_in(&st, &h, true).await {
        Ok(s) => Json(serde_json::json!({ "user": s.user })).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    rd: Option<String>,
}

async fn login(State(st): State<St>, h: HeaderMap, Query(q): Query<LoginQuery>) -> Response {
    let cfg = st.config.load_full();
    let p = public(&cfg, &h);
    let rd = match safe_rd(&cfg, &p, q.rd.as_deref().unwrap_or("")) {
        Ok(rd) => rd,
        Err(why) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Bad return address",
                &format!(
                "<p>The sign-in was asked to return to <code>{}</code>, which is refused: {}.</p>",
                esc(q.rd.as_deref().unwrap_or("")),
                esc(&why)
            ),
            )
        }
    };
    let Some(chat) = cfg.chat.as_ref() else {
        return Error::Config("no [chat] table".into()).into_response();
    };
    if chat.login == LoginKind::Token {
        return page(
            StatusCode::UNAUTHORIZED,
            "Sign in",
            "<p>This chat signs people in with a one-time link. <code>edge up</code> prints one \
             when it starts; <code>edge chat login-url</code> prints a new one.</p>",
        );
    }
    let result = async {
        let e = login::endpoints(chat, &st.http, &st.discovery).await?;
        let state = random(32)?;
        let redirect_uri = format!("{}/oauth/callback", p.base);
        let (url, verifier) =
            login::authorize_url(chat, st.client_secret.as_deref(), &e, &redirect_uri, &state)?;
        st.store
            .put_flow(
                &state,
                Flow {
                    verifier,
                    redirect_uri,
                    rd,
                },
            )
            .await?;
        Ok::<_, Error>(url)
    }
    .await;
    match result {
        Ok(url) => redirect(&url),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(State(st): State<St>, h: HeaderMap, Query(q): Query<CallbackQuery>) -> Response {
    let cfg = st.config.load_full();
    let p = public(&cfg, &h);
    let again = format!(
        "<p><a href=\"{}/login\">Sign in again</a></p>",
        esc(&p.base)
    );
    if let Some(err) = q.error {
        return page(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            &format!(
                "<p>The provider said: <code>{}</code> {}</p>{again}",
                esc(&err),
                esc(q.error_description.as_deref().unwrap_or(""))
            ),
        );
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            &format!("<p>The callback needs <code>code</code> and <code>state</code>.</p>{again}"),
        );
    };
    let Some(chat) = cfg.chat.as_ref() else {
        return Error::Config("no [chat] table".into()).into_response();
    };
    let flow = match st.store.take_flow(&state).await {
        Ok(Some(f)) => f,
        Ok(None) => {
            tracing::info!("sign-in callback with an unknown, used or expired state");
            return page(
                StatusCode::BAD_REQUEST,
                "Sign-in failed",
                &format!("<p>This sign-in is unknown, already used or expired (sign-ins last 10 minutes).</p>{again}"),
            );
        }
        Err(e) => return e.into_response(),
    };
    let result = async {
        let e = login::endpoints(chat, &st.http, &st.discovery).await?;
        login::finish(
            chat,
            st.client_secret.as_deref(),
            &e,
            &st.http,
            &flow.redirect_uri,
            &code,
            &flow.verifier,
        )
        .await
    }
    .await;
    let id = match result {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    // Who may use this project's chat: its own allowlist, where it has one.
    let Some(project_chat) = p.project.and_then(|i| cfg.chat_of(i)) else {
        return page(
            StatusCode::NOT_FOUND,
            "No chat here",
            "<p>This host serves no project's chat.</p>",
        );
    };
    let allowed = login::allowed(&project_chat, &id);
    let cookie = match start_session(&st, &p, &id.user, allowed).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let mut r = if allowed {
        redirect(&flow.rd)
    } else {
        tracing::info!(user = %id.user, "signed in, but not on the allowlist");
        not_allowed(&id.user)
    };
    r.headers_mut().append(header::SET_COOKIE, cookie);
    r
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn token_login(State(st): State<St>, h: HeaderMap, Query(q): Query<TokenQuery>) -> Response {
    let cfg = st.config.load_full();
    let p = public(&cfg, &h);
    let user = match q.token.as_deref() {
        Some(t) if !t.is_empty() && t.len() <= 128 => match st.store.take_login_token(t).await {
            Ok(u) => u,
            Err(e) => return e.into_response(),
        },
        _ => None,
    };
    let Some(user) = user else {
        return page(
            StatusCode::UNAUTHORIZED,
            "Link used or expired",
            "<p>This sign-in link was already used or has expired. Run \
             <code>edge chat login-url</code> on the server for a new one.</p>",
        );
    };
    match start_session(&st, &p, &user, true).await {
        Ok(cookie) => {
            let mut r = redirect(&format!("{}/", p.base_path()));
            r.headers_mut().append(header::SET_COOKIE, cookie);
            r
        }
        Err(e) => e.into_response(),
    }
}

/// Sign-out is a same-origin POST (the origin guard checks it): a GET, which any site can make
/// a browser send with `SameSite=Lax` cookies, only shows the button.
async fn logout_page() -> Response {
    let mut r = page(
        StatusCode::OK,
        "Sign out",
        "<form method=\"post\" action=\"logout\"><button>Sign out</button></form>",
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn logout(State(st): State<St>, h: HeaderMap) -> Response {
    let cfg = st.config.load_full();
    let p = public(&cfg, &h);
    for id in session_ids(&h) {
        if let Err(e) = st.store.delete_session(&id).await {
            return e.into_response();
        }
    }
    let mut r = page(
        StatusCode::OK,
        "Signed out",
        &format!(
            "<p>You are signed out.</p><p><a href=\"{}/login\">Sign in again</a></p>",
            esc(&p.base)
        ),
    );
    r.headers_mut()
        .append(header::SET_COOKIE, session_cookie(&p, "", 0));
    r
}

/// The forward-auth verify endpoint: the gateway asks, before a protected request goes
/// upstream, whether it may. Never reachable without the shared secret.
async fn verify(State(st): State<St>, h: HeaderMap) -> Response {
    let given = hv(&h, SECRET_HEADER).unwrap_or("");
    if !constant_time_eq(given.as_bytes(), st.fa_secret.as_bytes()) {
        tracing::warn!("verify called without the forward-auth secret; refused");
        return json_error(
            StatusCode::UNAUTHORIZED,
            "forward-auth secret missing or wrong",
        );
    }
    let cfg = st.config.load_full();
    let p = public(&cfg, &h);
    let uri = hv(&h, "x-forwarded-uri").unwrap_or("/");
    let path = uri.split('?').next().unwrap_or("/");
    // The chat's own way in and out is open.
    if p.origin == p.base_origin() {
        if let Some(rel) = path.strip_prefix(p.base_path()) {
            if OPEN_PATHS.contains(&rel) {
                return StatusCode::OK.into_response();
            }
        }
    }
    let method = hv(&h, "x-forwarded-method").unwrap_or("GET");
    let mode = hv(&h, "sec-fetch-mode").unwrap_or("");
    let websocket = mode.eq_ignore_ascii_case("websocket");
    if (websocket || !is_safe_method(method)) && !same_origin(&h, &p) {
        tracing::info!(origin = ?hv(&h, "origin"), expected = %p.origin, "refused a cross-origin request");
        return json_error(StatusCode::FORBIDDEN, "cross-origin request refused");
    }
    match session_of(&st, &h).await {
        Ok(Some((_, s))) if still_allowed(&cfg, &s) => {
            let mut r = StatusCode::OK.into_response();
            if let Ok(v) = HeaderValue::from_str(&s.user) {
                r.headers_mut().insert(USER_HEADER, v);
            }
            r
        }
        Ok(Some((_, s))) => not_allowed(&s.user),
        Ok(None) => {
            let navigation = mode.eq_ignore_ascii_case("navigate")
                || (mode.is_empty()
                    && method == "GET"
                    && hv(&h, "accept").is_some_and(|a| a.contains("text/html")));
            if navigation && !websocket {
                let rd = if p.origin == p.base_origin() {
                    uri.to_string()
                } else {
                    format!("{}{uri}", p.origin)
                };
                let rd: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
                redirect(&format!("{}/login?rd={rd}", p.base))
            } else {
                json_error(StatusCode::UNAUTHORIZED, "sign-in required")
            }
        }
        Err(e) => e.into_response(),
    }
}

async fn ws(State(st): State<St>, h: HeaderMap, upgrade: WebSocketUpgrade) -> Response {
    let s = match signed_in(&st, &h, true).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let st = st.clone();
    upgrade
        .protocols(["chat.v1"])
        // tungstenite's default buffers are 128 KiB each per socket; chat frames are small, and
        // thousands of idle tabs must stay cheap.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        // The reader takes frames up to READ_CAP, so that one over the chat's own cap is read
        // whole and answered 1009 (Message Too Big) by the session. Past READ_CAP the reader
        // gives up mid-frame; the close then races the unread bytes (a reset, in practice).
        .max_message_size(crate::ws::READ_CAP)
        .max_frame_size(crate::ws::READ_CAP)
        .on_upgrade(move |socket| crate::ws::session(socket, st, s.account()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() || b.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match &self {
            Error::Refused(m) => page(
                StatusCode::BAD_REQUEST,
                "Sign-in failed",
                &format!(
                    "<p>{}.</p><p><a href=\"login\">Sign in again</a></p>",
                    esc(m)
                ),
            ),
            Error::Provider(m) => {
                tracing::warn!(error = %m, "sign-in provider failed");
                page(
                    StatusCode::BAD_GATEWAY,
                    "Sign-in provider unavailable",
                    "<p>The sign-in provider could not be used; the server log has the cause.</p>",
                )
            }
            _ => {
                tracing::error!(error = %self, "chat internal error");
                page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal error",
                    "<p>internal error</p>",
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(mode: &str) -> Config {
        Config::from_toml(&format!(
            "domain = \"example.test\"\nrouting = \"{mode}\"\n[[projects]]\nname = \"demo\"\n[[projects.routes]]\nmount = \"forge\"\n[[projects.routes]]\nmount = \"chat\"\nupstream = \"chat\"\nauth = \"forward\"\n[[projects]]\nname = \"other\"\n[[projects.routes]]\nmount = \"chat\"\nupstream = \"chat\"\n"
        ))
        .unwrap()
    }

    fn headers(host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-host", HeaderValue::from_str(host).unwrap());
        h
    }

    #[test]
    fn return_addresses_stay_on_the_site() {
        let c = cfg("subpath");
        let p = public(&c, &headers("demo.example.test:8443"));
        assert_eq!(p.base, "https://demo.example.test:8443/chat");
        let ok = ["", "/chat/", "/forge/x?y=1", "/chat/%2F%2Fevil"];
        for rd in ok {
            assert!(safe_rd(&c, &p, rd).is_ok(), "{rd}");
        }
        let bad = [
            "//evil.test/",
            "/\\evil.test",
            "https://evil.test/",
            "http://demo.example.test:8443/",
            "https://other.example.test:8443/chat/",
            "https://user@demo.example.test:8443/",
            "javascript:alert(1)",
            "evil.test",
            "/x\r\nSet-Cookie: a=b",
        ];
        for rd in bad {
            assert!(safe_rd(&c, &p, rd).is_err(), "{rd}");
        }
        assert_eq!(safe_rd(&c, &p, "").unwrap(), "/chat/");
    }

    #[test]
    fn subdomain_mode_returns_across_the_project_and_scopes_the_cookie() {
        let c = cfg("subdomain");
        let p = public(&c, &headers("chat.demo.example.test:8443"));
        assert_eq!(p.base, "https://chat.demo.example.test:8443");
        assert_eq!(p.cookie_domain.as_deref(), Some("demo.example.test"));
        assert!(safe_rd(&c, &p, "https://forge.demo.example.test:8443/x").is_ok());
        assert!(safe_rd(&c, &p, "https://forge.other.example.test:8443/x").is_err());
        let cookie = session_cookie(&p, "abc", 60);
        let s = cookie.to_str().unwrap();
        assert!(s.starts_with("__Secure-edge-chat=abc"), "{s}");
        assert!(
            s.contains("Domain=demo.example.test")
                && s.contains("Secure")
                && s.contains("HttpOnly")
                && s.contains("SameSite=Lax"),
            "{s}"
        );
        let sub = public(&cfg("subpath"), &headers("demo.example.test"));
        let s = session_cookie(&sub, "abc", 60)
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            s.starts_with("__Host-edge-chat=abc") && s.contains("Path=/") && !s.contains("Domain"),
            "{s}"
        );
    }

    #[test]
    fn duplicate_cookies_are_all_candidates() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("__Host-edge-chat=old; x=1"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("__Host-edge-chat=new"),
        );
        assert_eq!(session_ids(&h), ["old", "new"]);
    }
}
