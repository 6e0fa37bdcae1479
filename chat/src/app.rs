//! The chat's HTTP side: sign-in, sign-out, the forward-auth verify endpoint, and the
//! signed-in endpoints. Paths are the chat's own (the gateway strips `/chat`); every URL the
//! chat hands out is built from the public base the gateway describes in `X-Forwarded-*`.

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::pages::{esc, page};
pub(crate) use crate::session::*;
use crate::signin::*;
pub(crate) use crate::state::{AppState, St};
pub use crate::state::{SECRET_HEADER, USER_HEADER};
use crate::Error;

/// Paths of the chat that need no session: the way in and out.
const OPEN_PATHS: [&str; 4] = ["/login", "/login/token", "/oauth/callback", "/logout"];

pub(crate) fn router(st: St) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(asset))
        .route("/app.css", get(asset))
        .route("/favicon.svg", get(asset))
        .route("/vendor/{file}", get(asset))
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
         <link rel=\"icon\" href=\"favicon.svg\" type=\"image/svg+xml\">\
         <link rel=\"stylesheet\" href=\"vendor/hljs.css\"><link rel=\"stylesheet\" href=\"app.css\">\
         <script src=\"vendor/purify.js\" defer></script><script src=\"vendor/marked.js\" defer></script>\
         <script src=\"vendor/highlight.js\" defer></script><script src=\"app.js\" defer></script></head><body>\
         <aside id=\"side\"><button id=\"new\" title=\"New chat (Ctrl+Shift+O)\">New chat</button><input id=\"search\" type=\"search\" placeholder=\"Search\" aria-label=\"Search conversations\" autocomplete=\"off\"><ul id=\"convs\"></ul></aside>\
         <main><header><button id=\"menu\" type=\"button\" aria-label=\"Conversations\" aria-controls=\"side\">☰</button>\
         <span id=\"signed-in\">Signed in as <b>{}</b></span>\
         <form method=\"post\" action=\"logout\"><button>Sign out</button></form>\
         <button id=\"changes-btn\" type=\"button\" aria-controls=\"changes\" hidden>Changes</button><span id=\"conn\"></span><span class=\"limits\" id=\"limits\"></span></header>\
         <div id=\"banner\"></div><div id=\"log\" aria-live=\"polite\"></div>\
         <button id=\"jump\" type=\"button\" hidden>↓ Jump to latest</button>\
         <section id=\"changes\" aria-label=\"Workspace changes\" hidden><header><b>Files changed in this conversation</b>\
         <button class=\"close\" type=\"button\" aria-label=\"Close\">✕</button></header><div class=\"files\"></div></section>\
         <form id=\"send\"><textarea id=\"text\" aria-label=\"Message\" placeholder=\"Message the agent (Enter sends, Shift+Enter: new line)\"></textarea>\
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
        "/favicon.svg" => (include_str!("../ui/favicon.svg"), "image/svg+xml"),
        // Pinned builds of marked, DOMPurify and highlight.js (chat/ui/vendor/update.sh).
        "/vendor/marked.js" => (
            include_str!("../ui/vendor/marked.js"),
            "text/javascript; charset=utf-8",
        ),
        "/vendor/purify.js" => (
            include_str!("../ui/vendor/purify.js"),
            "text/javascript; charset=utf-8",
        ),
        "/vendor/highlight.js" => (
            include_str!("../ui/vendor/highlight.js"),
            "text/javascript; charset=utf-8",
        ),
        "/vendor/hljs.css" => (
            include_str!("../ui/vendor/hljs.css"),
            "text/css; charset=utf-8",
        ),
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
            Error::NotFound(m) => json_error(StatusCode::NOT_FOUND, m),
            Error::Busy(m) => json_error(StatusCode::CONFLICT, m),
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
    use edge_routing::Config;

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
