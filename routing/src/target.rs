//! What a request names, checked before anything routes on it: the request-target's path with its
//! dot-segments resolved, and the `Host`'s syntax.
//!
//! A path-scoped auth check and the upstream behind it must see the same path. An upstream that
//! resolves `..` itself (most do) would otherwise serve `/priv/admin/x` for a request judged as
//! `/priv/public/../admin/x`. So dot-segments, encoded or not, are removed here (RFC 3986 §5.2.4)
//! before routing and auth, and the upstream is sent the path that was judged. Spellings that
//! only some servers read as a dot-segment (`..%2f`, `..\`, `..;`) cannot be resolved one right
//! way, so they are refused.

use std::borrow::Cow;

/// Why a request-target or `Host` was refused (the client's fault: 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the path segment {0:?} hides a dot-segment (an encoded slash or backslash, or a ';' parameter)")]
    HiddenDotSegment(String),
    #[error("the Host {0:?} is not a host name with an optional numeric port")]
    BadHost(String),
}

/// Whether a raw path segment is `.` or `..`, with any of its dots percent-encoded.
fn dot_segment(seg: &str) -> Option<bool> {
    let mut dots = 0;
    let mut rest = seg.as_bytes();
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && (rest[2] | 0x20) == b'e'
        {
            rest = &rest[3..];
        } else {
            return None;
        }
        dots += 1;
        if dots > 2 {
            return None;
        }
    }
    match dots {
        1 => Some(false),
        2 => Some(true),
        _ => None,
    }
}

/// Whether a segment contains a dot-segment once `%2F`, `%5C` and `\` are read as slashes and
/// `;` starts a parameter, as some servers read them (Tomcat's `..;`, IIS's `..\`).
fn hides_dot_segment(seg: &str) -> bool {
    // Most segments have no dot at all: decided without allocating.
    let b = seg.as_bytes();
    let has_dot = b.contains(&b'.')
        || b.windows(3)
            .any(|w| w[0] == b'%' && w[1] == b'2' && (w[2] | 0x20) == b'e');
    if !has_dot {
        return false;
    }
    let unified = seg
        .to_ascii_lowercase()
        .replace("%2f", "/")
        .replace("%5c", "/")
        .replace('\\', "/");
    unified
        .split('/')
        .map(|part| part.split(';').next().unwrap_or(""))
        .any(|part| dot_segment(part).is_some())
}

/// The request-target with its path's dot-segments resolved (`/a/./b/../c` is `/a/c`, encoded
/// dots too); the query is kept as it is. Refuses segments that hide a dot-segment from this
/// reading but not from every server's. Everything else stays byte for byte, `%2F` included.
/// Targets that are not origin-form (`*`) are returned unchanged.
///
/// ```
/// use edge_routing::normalize_target;
/// assert_eq!(normalize_target("/priv/public/../admin/x?a=../b").unwrap(), "/priv/admin/x?a=../b");
/// assert_eq!(normalize_target("/priv/%2e%2E/x").unwrap(), "/x");
/// assert_eq!(normalize_target("/forge/a%2Fb").unwrap(), "/forge/a%2Fb");
/// assert!(normalize_target("/priv/public/..%2fadmin").is_err());
/// ```
pub fn normalize_target(target: &str) -> Result<Cow<'_, str>, TargetError> {
    let (path, query) = match target.find('?') {
        Some(i) => (&target[..i], &target[i..]),
        None => (target, ""),
    };
    if !path.starts_with('/') {
        return Ok(Cow::Borrowed(target));
    }
    let mut needs = false;
    for seg in path[1..].split('/') {
        if dot_segment(seg).is_some() {
            needs = true;
        } else if hides_dot_segment(seg) {
            return Err(TargetError::HiddenDotSegment(seg.to_string()));
        }
    }
    if !needs {
        return Ok(Cow::Borrowed(target));
    }
    let segs: Vec<&str> = path[1..].split('/').collect();
    let mut out: Vec<&str> = Vec::with_capacity(segs.len());
    let last = segs.len() - 1;
    for (i, seg) in segs.iter().enumerate() {
        match dot_segment(seg) {
            Some(up) => {
                if up {
                    out.pop();
                }
                // `/a/..` and `/a/.` name the directory: keep the trailing slash.
                if i == last {
                    out.push("");
                }
            }
            None => out.push(seg),
        }
    }
    let mut s = String::with_capacity(target.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() {
        s.push('/');
    }
    s.push_str(query);
    Ok(Cow::Owned(s))
}

/// Checks a `Host` (or `:authority`) value: a DNS name or IPv4 address, or a bracketed IPv6
/// literal, then at most a `:` and a port of digits (RFC 9110 §7.2, RFC 3986 §3.2.2). No user
/// info, no path, nothing a redirect built from it could be turned with.
///
/// ```
/// use edge_routing::check_host;
/// assert!(check_host("demo.example.test:8443").is_ok());
/// assert!(check_host("[::1]:443").is_ok());
/// assert!(check_host("alpha.example.test:@evil.example").is_err());
/// ```
pub fn check_host(raw: &str) -> Result<(), TargetError> {
    let bad = || Err(TargetError::BadHost(raw.chars().take(100).collect()));
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return bad();
        };
        let inside = &rest[..end];
        if inside.is_empty()
            || !inside
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return bad();
        }
        match &rest[end + 1..] {
            "" => (inside, None),
            p => match p.strip_prefix(':') {
                Some(p) => (inside, Some(p)),
                None => return bad(),
            },
        }
    } else {
        let (h, p) = match raw.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (raw, None),
        };
        if h.is_empty()
            || h.len() > 253
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return bad();
        }
        (h, p)
    };
    let _ = host;
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return bad();
        }
        if p.parse::<u32>().map_or(true, |n| n > 65535) {
            return bad();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_resolved() {
        let cases = [
            ("/", "/"),
            ("/forge/x", "/forge/x"),
            ("/priv/public/../admin/x", "/priv/admin/x"),
            ("/priv/public/%2e%2e/admin/x", "/priv/admin/x"),
            ("/priv/public/.%2E/admin/x", "/priv/admin/x"),
            ("/priv/public/%2E./admin", "/priv/admin"),
            ("/priv/./public", "/priv/public"),
            ("/priv/%2e/public", "/priv/public"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/.", "/"),
            ("/a/../../b?x=/../y", "/b?x=/../y"),
            ("/a/..?q", "/?q"),
            ("/forge/a%2Fb/c", "/forge/a%2Fb/c"),
            ("/forge/...", "/forge/..."),
            ("/forge/.hidden", "/forge/.hidden"),
            ("/forge/a..b", "/forge/a..b"),
            ("/a//b/../c", "/a//c"),
            ("*", "*"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_target(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn hidden_dot_segments_are_refused() {
        for bad in [
            "/priv/public/..%2fadmin",
            "/priv/public/..%2Fadmin",
            "/priv/public/%2e%2e%2fadmin",
            "/priv/public/..%5cadmin",
            "/priv/public/..\\admin",
            "/priv/public/..;/admin",
            "/priv/public/..;x=1/admin",
            "/priv/public/a%2f..%2fadmin",
            "/priv/.;/x",
        ] {
            assert!(
                matches!(normalize_target(bad), Err(TargetError::HiddenDotSegment(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn hosts() {
        for ok in [
            "demo.example.test",
            "demo.example.test:8443",
            "DEMO.example.test.",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8443",
            "localhost",
        ] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "alpha.example.test:@evil.example",
            "alpha.example.test:80@evil.example",
            "a.test:",
            "a.test:99999",
            "a.test:8x",
            "user@a.test",
            "a.test/evil",
            "a.test\\evil",
            "[::1",
            "[::1]x",
            "[evil.test]",
            "a b",
            "a.test:80:80",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    use proptest::prelude::*;

    /// Path segments an attacker would mix: dot-segments in every spelling, hidden ones, and
    /// ordinary names with encoded slashes, parameters and dots.
    fn segment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "a",
            "b",
            "admin",
            "public",
            "",
            ".",
            "..",
            "%2e",
            "%2E",
            "%2e%2e",
            ".%2E",
            "%2e.",
            "..%2f",
            "%2e%2e%5c",
            "..;",
            ".;x",
            "a%2Fb",
            "x;y=1",
            "...",
            ".hidden",
            "a..b",
            "%00",
        ])
    }

    proptest! {
        #[test]
        fn no_normalized_path_has_a_dot_segment(
            segs in prop::collection::vec(segment(), 0..8),
            query in prop::sample::select(vec!["", "?q=../x", "?a=%2e%2e"]),
        ) {
            let target = format!("/{}{query}", segs.join("/"));
            match normalize_target(&target) {
                Ok(out) => {
                    let (path, q) = out.split_at(out.find('?').unwrap_or(out.len()));
                    prop_assert_eq!(q, query);
                    prop_assert!(path.starts_with('/'));
                    for seg in path[1..].split('/') {
                        prop_assert!(dot_segment(seg).is_none(), "{target} -> {out}");
                        prop_assert!(!hides_dot_segment(seg), "{target} -> {out}");
                    }
                    // Idempotent: the judged path is the forwarded path.
                    let again = normalize_target(&out).unwrap();
                    prop_assert_eq!(again.as_ref(), out.as_ref());
                }
                Err(TargetError::HiddenDotSegment(seg)) => {
                    prop_assert!(hides_dot_segment(&seg));
                }
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
    }
}
