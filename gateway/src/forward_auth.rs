//! Forward-auth: before a protected route's request goes upstream, a bodiless GET describing it
//! goes to an auth server (the chat's verify endpoint, oauth2-proxy, Authelia, ...). A 2xx lets
//! it through with the identity headers the server named; anything else is the answer.
//!
//! The rules come from how forward-auth setups fail in the field (docs/security.md):
//! the auth server sees the *original* target, never a stripped one; it never sees `Upgrade`,
//! so it cannot mistake the check for a WebSocket handshake; identity headers the client sent are
//! gone before the check, so an absent header in the answer cannot let a spoofed one through;
//! cookies the auth server sets reach the browser on both paths; a WebSocket upgrade is answered
//! 401, never 302, and always before any 101; an auth server that cannot be reached means no
//! entry (503), never a pass.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge_routing::{AuthServer, ForwardAuth};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};

use crate::body::ResBody;
use crate::pages;
use crate::Shared;

/// The header that carries the shared secret to the chat's verify endpoint. Clients can never
/// send it (hygiene drops every `x-edge-*` header).
pub const SECRET_HEADER: &str = "x-edge-auth-secret";

/// The largest auth-server answer relayed to the client.
const MAX_ANSWER: usize = 64 * 1024;
/// How long the auth server may take.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Cached verdicts per route, at most.
const CACHE_CAP: usize = 10_000;

/// Request headers the auth server is shown besides the `X-Forwarded-*` ones.
const PASSED: [HeaderName; 8] = [
    header::COOKIE,
    header::AUTHORIZATION,
    header::ACCEPT,
    header::ORIGIN,
    header::USER_AGENT,
    HeaderName::from_static("sec-fetch-mode"),
    HeaderName::from_static("sec-fetch-dest"),
    HeaderName::from_static("sec-fetch-site"),
];

/// Identity headers from an auth server's answer.
type Identity = Vec<(HeaderName, HeaderValue)>;
/// Authenticated verdicts by everything the auth server was shown (see [`cache_key`]), with
/// when they came.
type VerdictCache = Mutex<HashMap<Box<[u8]>, (Instant, Identity)>>;

/// A route's forward-auth, worked out once per config version.
#[derive(Debug)]
pub(crate) struct AuthRt {
    authority: http::uri::Authority,
    path: String,
    /// Whether this is the chat's verify endpoint (which is shown the shared secret).
    chat: bool,
    headers: Vec<HeaderName>,
    ttl: Duration,
    cache: VerdictCache,
}

impl AuthRt {
    /// `chat_listen` is the chat service's address, for routes that use its verify endpoint.
    pub(crate) fn build(
        fa: &ForwardAuth,
        chat_listen: Option<std::net::SocketAddr>,
    ) -> Result<AuthRt, String> {
        let (authority, path, chat) = match &fa.server {
            AuthServer::Chat => match chat_listen {
                Some(a) => (a.to_string(), VERIFY_PATH.to_string(), true),
                None => return Err("forward-auth through the chat needs a [chat] table".into()),
            },
            AuthServer::Url { authority, path } => (authority.clone(), path.clone(), false),
        };
        let authority = authority
            .parse()
            .map_err(|e| format!("{authority:?}: {e}"))?;
        let headers = fa
            .headers
            .iter()
            .map(|h| HeaderName::from_bytes(h.as_bytes()).map_err(|e| format!("{h:?}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(AuthRt {
            authority,
            path,
            chat,
            headers,
            ttl: fa.cache_ttl,
            cache: Mutex::default(),
        })
    }

    /// The identity headers this route takes from the auth server; removed from every client
    /// request first, whatever the verdict.
    pub(crate) fn identity_headers(&self) -> &[HeaderName] {
        &self.headers
    }
}

/// The chat's verify endpoint, on the chat's own listener.
pub const VERIFY_PATH: &str = "/_auth/verify";

/// What the auth server decided.
pub(crate) enum Verdict {
    /// Let the request through with these headers added, and these cookies set on the answer.
    Allow {
        identity: Vec<(HeaderName, HeaderValue)>,
        set_cookies: Vec<HeaderValue>,
    },
    /// Answer the client with this.
    Deny(Response<ResBody>),
}

/// What the auth server needs to know about the request.
pub(crate) struct Asked<'a> {
    pub method: &'a http::Method,
    pub proto: &'static str,
    pub host: &'a HeaderValue,
    /// The original request target, prefix and query included.
    pub target: &'a str,
    pub client_ip: &'a HeaderValue,
    pub headers: &'a HeaderMap,
    pub upgrade: bool,
}

/// The verdict cache's key: everything the auth server is shown that can change its answer
/// (method, scheme, host, the original target, and every passed header: credentials, `Origin`,
/// `Sec-Fetch-*`), so a verdict is only reused for a request it would have judged identically.
/// `None` for requests that are never answered from the cache: state-changing methods and
/// WebSocket upgrades, whose `Origin` check runs at the auth server every time.
fn cache_key(a: &Asked<'_>) -> Option<Vec<u8>> {
    if a.upgrade || !matches!(*a.method, http::Method::GET | http::Method::HEAD) {
        return None;
    }
    let mut k = Vec::with_capacity(256);
    for part in [
        a.method.as_str().as_bytes(),
        a.proto.as_bytes(),
        a.host.as_bytes(),
        a.target.as_bytes(),
    ] {
        k.extend_from_slice(part);
        k.push(0);
    }
    for name in &PASSED {
        for v in a.headers.get_all(name) {
            k.push(0);
            k.extend_from_slice(v.as_bytes());
        }
        k.push(1);
    }
    Some(k)
}

pub(crate) async fn check(shared: &Shared, auth: &AuthRt, asked: Asked<'_>) -> Verdict {
    let key = if auth.ttl.is_zero() {
        None
    } else {
        cache_key(&asked)
    };
    if let Some(k) = &key {
        let cache = auth.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, identity)) = cache.get(k.as_slice()) {
            if at.elapsed() < auth.ttl {
                return Verdict::Allow {
                    identity: identity.clone(),
                    set_cookies: Vec::new(),
                };
            }
        }
    }
    let secret = if auth.chat {
        match shared.auth_secret.load_full() {
            Some(s) => Some(s),
            None => {
                tracing::error!(
                    "forward-auth through the chat, but no shared secret is loaded; refusing"
                );
                return Verdict::Deny(unavailable(
                    "the sign-in check is not configured (no forward-auth secret)",
                ));
            }
        }
    } else {
        None
    };
    let uri = Uri::builder()
        .scheme("http")
        .authority(auth.authority.clone())
        .path_and_query(auth.path.as_str())
        .build();
    let Ok(uri) = uri else {
        return Verdict::Deny(unavailable("the auth URL is malformed"));
    };
    let mut req = Request::get(uri)
        .body(Empty::<Bytes>::new())
        .expect("a GET with a parsed URI is a valid request");
    let h = req.headers_mut();
    h.insert(header::HOST, asked.host.clone());
    h.insert(
        HeaderName::from_static("x-forwarded-method"),
        HeaderValue::from_str(asked.method.as_str()).unwrap_or(HeaderValue::from_static("GET")),
    );
    h.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(asked.proto),
    );
    h.insert(
        HeaderName::from_static("x-forwarded-host"),
        asked.host.clone(),
    );
    if let Ok(v) = HeaderValue::from_str(asked.target) {
        h.insert(HeaderName::from_static("x-forwarded-uri"), v);
    }
    h.insert(
        HeaderName::from_static("x-forwarded-for"),
        asked.client_ip.clone(),
    );
    for name in PASSED {
        for v in asked.headers.get_all(&name) {
            h.append(name.clone(), v.clone());
        }
    }
    if asked.upgrade && !h.contains_key("sec-fetch-mode") {
        // Say it is a WebSocket without sending the handshake itself.
        h.insert("sec-fetch-mode", HeaderValue::from_static("websocket"));
    }
    if let Some(s) = secret {
        h.insert(HeaderName::from_static(SECRET_HEADER), (*s).clone());
    }

    let resp = match tokio::time::timeout(AUTH_TIMEOUT, shared.auth_client.request(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(auth = %auth.authority, error = %e, "forward-auth server failed; refusing the request");
            return Verdict::Deny(unavailable("the sign-in check could not be reached"));
        }
        Err(_) => {
            tracing::warn!(auth = %auth.authority, "forward-auth server did not answer in time; refusing the request");
            return Verdict::Deny(unavailable("the sign-in check did not answer in time"));
        }
    };
    let (parts, body) = resp.into_parts();
    let body = match Limited::new(body, MAX_ANSWER).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            tracing::warn!(auth = %auth.authority, error = %e, "forward-auth answer unreadable or too large");
            return Verdict::Deny(unavailable("the sign-in check gave an unreadable answer"));
        }
    };
    let set_cookies: Vec<HeaderValue> = parts
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();

    if parts.status.is_success() {
        let identity: Vec<(HeaderName, HeaderValue)> = auth
            .headers
            .iter()
            .filter_map(|n| parts.headers.get(n).map(|v| (n.clone(), v.clone())))
            .collect();
        // Only an authenticated verdict is reused, and only one that sets no cookie: a 2xx
        // without identity (the login page itself) says nothing about the next request.
        if let Some(k) = key {
            if !identity.is_empty() && set_cookies.is_empty() {
                let mut cache = auth.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= CACHE_CAP {
                    let ttl = auth.ttl;
                    cache.retain(|_, (at, _)| at.elapsed() < ttl);
                    if cache.len() >= CACHE_CAP {
                        cache.clear();
                    }
                }
                cache.insert(k.into_boxed_slice(), (Instant::now(), identity.clone()));
            }
        }
        return Verdict::Allow {
            identity,
            set_cookies,
        };
    }

    // Refused: the auth server's answer goes back, except that a WebSocket handshake is never
    // redirected (a browser cannot follow it) and never switched.
    let mut status = parts.status;
    if status == StatusCode::SWITCHING_PROTOCOLS || status.is_informational() {
        tracing::warn!(auth = %auth.authority, %status, "forward-auth server answered with an informational status");
        return Verdict::Deny(unavailable("the sign-in check gave an unusable answer"));
    }
    let mut out = Response::new(ResBody::full(body.clone()));
    if asked.upgrade && status.is_redirection() {
        status = StatusCode::UNAUTHORIZED;
        *out.body_mut() = ResBody::full(Bytes::from_static(b"{\"error\":\"sign-in required\"}\n"));
        out.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    } else {
        for name in [
            header::CONTENT_TYPE,
            header::LOCATION,
            header::WWW_AUTHENTICATE,
            header::CACHE_CONTROL,
            header::RETRY_AFTER,
        ] {
            if let Some(v) = parts.headers.get(&name) {
                out.headers_mut().insert(name, v.clone());
            }
        }
    }
    *out.status_mut() = status;
    for c in set_cookies {
        out.headers_mut().append(header::SET_COOKIE, c);
    }
    out.headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    Verdict::Deny(out)
}

fn unavailable(why: &str) -> Response<ResBody> {
    let mut r = pages::page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Sign-in unavailable",
        &format!(
            "<p>This page needs a sign-in, and {}. Nothing is let through until it works again.</p>",
            pages::esc(why)
        ),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Removes the named cookies from every `Cookie` header (the chat's session must not reach
/// other apps on the same host).
pub(crate) fn strip_cookies(headers: &mut HeaderMap, names: &[&str]) {
    let needs = headers.get_all(header::COOKIE).iter().any(|v| {
        let b = v.as_bytes();
        names
            .iter()
            .any(|n| b.windows(n.len()).any(|w| w == n.as_bytes()))
    });
    if !needs {
        return;
    }
    let values: Vec<HeaderValue> = headers.get_all(header::COOKIE).iter().cloned().collect();
    headers.remove(header::COOKIE);
    for v in values {
        if let Some(kept) = clean_cookie(v.as_bytes(), names) {
            if let Ok(v) = HeaderValue::from_bytes(&kept) {
                headers.append(header::COOKIE, v);
            }
        }
    }
}

/// One `Cookie` value without the named cookies: `None` when nothing is left, or when a value
/// that mentions one is not text (it cannot be parsed into pairs, so it cannot be trusted to be
/// clean).
pub(crate) fn clean_cookie<'v>(
    value: &'v [u8],
    names: &[&str],
) -> Option<std::borrow::Cow<'v, [u8]>> {
    let mentions = names
        .iter()
        .any(|n| value.windows(n.len()).any(|w| w == n.as_bytes()));
    if !mentions {
        return Some(std::borrow::Cow::Borrowed(value));
    }
    let s = std::str::from_utf8(value).ok()?;
    let kept: Vec<&str> = s
        .split(';')
        .map(str::trim)
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or("").trim();
            !pair.is_empty() && !names.contains(&name)
        })
        .collect();
    (!kept.is_empty()).then(|| std::borrow::Cow::Owned(kept.join("; ").into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_cookies_keeps_the_others() {
        let cases = [
            ("a=1; __Host-edge-chat=s; b=2", Some("a=1; b=2")),
            ("__Host-edge-chat=s", None),
            ("__Host-edge-chat=s; __Host-edge-chat=t", None),
            ("a=1", Some("a=1")),
            ("x__Host-edge-chat=1; y=2", Some("x__Host-edge-chat=1; y=2")),
            ("__Secure-edge-chat=s;c=3", Some("c=3")),
        ];
        for (input, want) in cases {
            let mut h = HeaderMap::new();
            h.insert(header::COOKIE, HeaderValue::from_str(input).unwrap());
            strip_cookies(&mut h, &["__Host-edge-chat", "__Secure-edge-chat"]);
            assert_eq!(
                h.get(header::COOKIE).map(|v| v.to_str().unwrap()),
                want,
                "{input}"
            );
        }
    }
}
