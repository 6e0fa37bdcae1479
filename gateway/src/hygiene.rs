//! Header rules, applied before anything else looks at a request and again on the way back.
//! Pure functions over `HeaderMap`s, tested without a server.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one hop and never cross the proxy (RFC 9110 §7.6.1, plus the
/// non-standard ones that clients still send). `TE` is handled apart: gRPC needs `TE: trailers`.
pub(crate) const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Whether a client-supplied header claims forwarding or identity facts that only the gateway
/// may state. These are dropped before routing, whether or not auth succeeds, and the
/// forwarding ones are rebuilt from what the gateway saw.
///
/// Names are compared with `_` read as `-`: CGI, WSGI and PHP upstreams fold both into the same
/// `HTTP_X_FORWARDED_USER` variable, so `X_Forwarded_User` is as much a claim as
/// `X-Forwarded-User` (CVE-2025-64484).
pub fn is_client_claim(name: &HeaderName) -> bool {
    is_claim_bytes(name.as_str().as_bytes())
}

/// [`is_client_claim`] for a header name as it came off the wire (any case; `_` read as `-`).
pub fn is_claim_bytes(n: &[u8]) -> bool {
    let fold = |c: u8| {
        if c == b'_' {
            b'-'
        } else {
            c.to_ascii_lowercase()
        }
    };
    let starts =
        |p: &str| n.len() >= p.len() && n.iter().zip(p.bytes()).all(|(a, b)| fold(*a) == b);
    let is = |p: &str| n.len() == p.len() && starts(p);
    starts("x-forwarded-")
        || is("forwarded")
        || is("x-real-ip")
        || is("x-client-ip")
        || is("true-client-ip")
        || starts("x-auth-request-")
        || starts("remote-")
        || is("x-remote-user")
        || starts("x-webauth-")
        || is("x-original-url")
        || is("x-rewrite-url")
        || is("x-original-uri")
        || starts("x-edge-")
}

/// Whether two header names are the same variable to a CGI-style upstream (`_` read as `-`).
pub fn same_cgi_name(a: &HeaderName, b: &HeaderName) -> bool {
    let (a, b) = (a.as_str().as_bytes(), b.as_str().as_bytes());
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            let fold = |c: u8| if c == b'_' { b'-' } else { c };
            fold(*x) == fold(*y)
        })
}

/// Removes every header that a CGI-style upstream would read as one of `names` (any spelling
/// with `_` for `-`).
pub fn remove_cgi_spellings(headers: &mut HeaderMap, names: &[HeaderName]) {
    if names.is_empty() {
        return;
    }
    let found: Vec<HeaderName> = headers
        .keys()
        .filter(|k| names.iter().any(|n| same_cgi_name(k, n)))
        .cloned()
        .collect();
    for n in found {
        headers.remove(n);
    }
}

/// Lists the header names in all `Connection` values.
/// The headers `Connection` names besides `keep-alive` (already hop-by-hop) and `close` (set
/// aside in the flag): nearly always none, so nothing is allocated for them.
fn connection_tokens(headers: &HeaderMap) -> (Vec<HeaderName>, bool) {
    let mut out = Vec::new();
    let mut close = false;
    for v in headers.get_all(header::CONNECTION) {
        let Ok(s) = v.to_str() else { continue };
        for token in s.split(',') {
            let t = token.trim().as_bytes();
            if t.eq_ignore_ascii_case(b"keep-alive") {
                continue;
            }
            if t.eq_ignore_ascii_case(b"close") {
                close = true;
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(t) {
                out.push(name);
            }
        }
    }
    (out, close)
}

/// Removes hop-by-hop headers, including every header the sender named in `Connection`.
/// `keep_te_trailers` keeps `TE: trailers`, which gRPC over HTTP/2 requires.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_te_trailers: bool) {
    // One pass over the names; only what is present is removed (most requests carry none, most
    // responses `Connection: keep-alive`). At most the seven fixed names: no allocation.
    let mut found: [Option<HeaderName>; 7] = Default::default();
    let mut n = 0;
    let mut connection = false;
    for name in headers.keys() {
        if is_hop_by_hop(name) && n < found.len() {
            connection |= name == header::CONNECTION;
            found[n] = Some(name.clone());
            n += 1;
        }
    }
    if connection {
        let (named, close) = connection_tokens(headers);
        for name in named {
            headers.remove(name);
        }
        if close {
            headers.remove("close");
        }
    }
    for name in found.iter().flatten() {
        headers.remove(name);
    }
    if let Some(te) = headers.get(header::TE) {
        if !(keep_te_trailers && te.as_bytes().eq_ignore_ascii_case(b"trailers")) {
            headers.remove(header::TE);
        }
    }
}

/// Removes every client claim (see [`is_client_claim`]).
pub fn strip_client_claims(headers: &mut HeaderMap) {
    // Most requests carry none: look before allocating.
    if !headers.keys().any(is_client_claim) {
        return;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_client_claim(n))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

/// The facts the gateway states to upstreams, rebuilt for every request.
#[derive(Debug)]
pub struct Forwarded<'a> {
    /// The client's address, pre-rendered once per connection.
    pub client_ip: &'a HeaderValue,
    /// The whole `Forwarded` value (`for=...;proto=...`), rendered once per connection.
    pub forwarded: &'a HeaderValue,
    pub proto: &'static str,
    pub host: &'a HeaderValue,
    /// The mount's prefix (`/forge`) when the route strips it.
    pub prefix: Option<&'a HeaderValue>,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Adds `X-Forwarded-For/Proto/Host/Prefix`, `X-Real-IP` and `Forwarded`. Call after
/// [`strip_hop_by_hop`] and [`strip_client_claims`], so nothing the client sent survives and a
/// `Connection: X-Forwarded-For` cannot remove what is added here (CVE-2024-45410).
pub fn add_forwarded(headers: &mut HeaderMap, f: &Forwarded<'_>) {
    headers.reserve(7);
    headers.insert(X_FORWARDED_FOR, f.client_ip.clone());
    headers.insert(X_REAL_IP, f.client_ip.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(f.proto));
    headers.insert(X_FORWARDED_HOST, f.host.clone());
    if let Some(prefix) = f.prefix {
        headers.insert(X_FORWARDED_PREFIX, prefix.clone());
    }
    // RFC 7239 without `host=`: X-Forwarded-Host carries it, and this way the value is the
    // same for every request of a connection.
    headers.insert(FORWARDED, f.forwarded.clone());
}

/// The `Forwarded` value for a connection: `for=<client>;proto=<http|https>`.
pub fn forwarded_value(ip: std::net::IpAddr, tls: bool) -> HeaderValue {
    let proto = if tls { "https" } else { "http" };
    HeaderValue::from_str(&format!("for={};proto={proto}", forwarded_for(ip)))
        .unwrap_or(HeaderValue::from_static("for=unknown"))
}

/// The `for=` value of RFC 7239: IPv6 addresses are quoted and bracketed.
pub fn forwarded_for(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

/// Whether the request asks for a protocol upgrade (WebSocket): `Connection: upgrade` and an
/// `Upgrade` header.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers)
            .0
            .iter()
            .any(|t| t.as_str() == "upgrade")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn client_claims_table() {
        let claims = [
            "x-forwarded-for",
            "x-forwarded-user",
            "x-forwarded-email",
            "x-forwarded-groups",
            "x-forwarded-prefix",
            "forwarded",
            "x-real-ip",
            "x-auth-request-user",
            "x-auth-request-email",
            "remote-user",
            "remote-groups",
            "x-remote-user",
            "x-webauth-user",
            "x-original-url",
            // CGI/WSGI/PHP fold `_` into `-` (CVE-2025-64484).
            "x_forwarded_user",
            "x_auth_request_user",
            "remote_user",
            "x_webauth_user",
            "x-forwarded_for",
            "x_real_ip",
            "forwarded",
        ];
        for c in claims {
            assert!(is_client_claim(&HeaderName::from_static(c)), "{c}");
        }
        for ok in [
            "cookie",
            "authorization",
            "x-request-id",
            "user-agent",
            "forwarded-x",
        ] {
            assert!(
                !is_client_claim(&HeaderName::from_bytes(ok.as_bytes()).unwrap()),
                "{ok}"
            );
        }
    }

    #[test]
    fn every_header_connection_names_goes_even_with_close_and_in_two_lines() {
        let mut h = map(&[
            ("connection", "Close, X-One"),
            ("connection", "x-two"),
            ("close", "odd but named"),
            ("x-one", "1"),
            ("x-two", "2"),
            ("x-three", "3"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
        ]);
        strip_hop_by_hop(&mut h, false);
        for gone in [
            "connection",
            "close",
            "x-one",
            "x-two",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be gone: {h:?}");
        }
        assert_eq!(h["x-three"], "3");
    }

    #[test]
    fn connection_listed_headers_cannot_remove_rebuilt_ones() {
        // CVE-2024-45410: a client lists X-Forwarded-For in Connection so that a proxy that strips
        // Connection-listed headers *after* adding its own drops them.
        let mut h = map(&[
            (
                "connection",
                "keep-alive, X-Forwarded-For, x-real-ip, X-Custom",
            ),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-custom", "bye"),
            ("x-forwarded-user", "admin"),
            ("te", "gzip"),
            ("keep-alive", "timeout=5"),
        ]);
        strip_hop_by_hop(&mut h, true);
        strip_client_claims(&mut h);
        let ip = HeaderValue::from_static("127.0.0.1");
        let host = HeaderValue::from_static("demo.example.test");
        let prefix = HeaderValue::from_static("/forge");
        let fwd = forwarded_value("127.0.0.1".parse().unwrap(), true);
        add_forwarded(
            &mut h,
            &Forwarded {
                client_ip: &ip,
                forwarded: &fwd,
                proto: "https",
                host: &host,
                prefix: Some(&prefix),
            },
        );
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-real-ip"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "demo.example.test");
        assert_eq!(h["x-forwarded-prefix"], "/forge");
        assert_eq!(h["forwarded"], "for=127.0.0.1;proto=https");
        for gone in [
            "connection",
            "x-custom",
            "x-forwarded-user",
            "te",
            "keep-alive",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be gone: {h:?}");
        }
    }

    #[test]
    fn te_trailers_survives_only_when_asked() {
        let mut h = map(&[("te", "trailers")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["te"], "trailers");
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key("te"));
    }

    #[test]
    fn upgrade_detection() {
        assert!(is_upgrade_request(&map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(!is_upgrade_request(&map(&[("upgrade", "websocket")])));
        assert!(!is_upgrade_request(&map(&[("connection", "upgrade")])));
    }

    #[test]
    fn forwarded_for_brackets_ipv6() {
        assert_eq!(forwarded_for("::1".parse().unwrap()), "\"[::1]\"");
        assert_eq!(forwarded_for("10.1.2.3".parse().unwrap()), "10.1.2.3");
    }
}
