//! Where the browser is (the public side the gateway describes) and who it is: sessions, their
//! cookies, the origin guard, and [`SignedIn`], the extractor of every route behind sign-in.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use edge_routing::{Config, LoginKind, RoutingMode, CHAT_COOKIES};

use crate::ids::random;
use crate::pages::{esc, page};
use crate::state::{AppState, St, USER_HEADER};
use crate::store::Session;
use crate::Error;

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
    pub(crate) fn base_origin(&self) -> &str {
        let after = self.base.find("://").map(|i| i + 3).unwrap_or(0);
        match self.base[after..].find('/') {
            Some(i) => &self.base[..after + i],
            None => &self.base,
        }
    }

    /// The path of the chat's base (`/chat`, or empty in subdomain mode).
    pub(crate) fn base_path(&self) -> &str {
        &self.base[self.base_origin().len()..]
    }

    /// The chat's own page as a path (`/chat/`, or `/`): where sign-ins return by default.
    pub(crate) fn root_path(&self) -> String {
        format!("{}/", self.base_path())
    }
}

pub(crate) fn hv<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
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
        return Ok(p.root_path());
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

pub(crate) fn is_safe_method(m: &str) -> bool {
    matches!(m, "GET" | "HEAD" | "OPTIONS")
}

/// The request's `Origin` is this site's. Browsers send `Origin` on every cross-origin request
/// and on every POST; its absence on a state-changing request or a WebSocket is refused.
pub(crate) fn same_origin(h: &HeaderMap, p: &Public) -> bool {
    hv(h, "origin").is_some_and(|o| o.eq_ignore_ascii_case(&p.origin))
}

/// Refuses state-changing requests and WebSocket upgrades from other origins.
pub(crate) async fn origin_guard(State(st): State<St>, req: Request, next: Next) -> Response {
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

pub(crate) fn session_ids(h: &HeaderMap) -> Vec<String> {
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
pub(crate) async fn session_of(
    st: &AppState,
    h: &HeaderMap,
) -> Result<Option<(String, Session)>, Error> {
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
pub(crate) fn still_allowed(cfg: &Config, s: &Session) -> bool {
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

pub(crate) fn session_cookie(p: &Public, value: &str, max_age: i64) -> HeaderValue {
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

pub(crate) async fn start_session(
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

/// The signed-in user of a JSON route, as an extractor: a route that takes it answers 401 JSON
/// (or 403) without a valid session, before the handler runs.
pub(crate) struct SignedIn(pub Session);

impl axum::extract::FromRequestParts<St> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &St,
    ) -> Result<Self, Response> {
        signed_in(st, &parts.headers, true).await.map(SignedIn)
    }
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

pub(crate) fn redirect(to: &str) -> Response {
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

pub(crate) fn not_allowed(user: &str) -> Response {
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
