//! The HTTP/1.1 fast path: plain requests are forwarded with their head bytes copied and edited,
//! not parsed into header maps and serialised again; responses come back the same way.
//!
//! An HTTP/1.x connection starts here. Each request head is parsed in place (`httparse`, the
//! parser hyper itself uses) and checked: a request the fast path takes is HTTP/1.1, has no body,
//! no `Upgrade`, `Expect` or `Transfer-Encoding`, a `Connection` that says at most `keep-alive` or
//! `close`, one well-formed `Host`, an origin-form target in plain characters without
//! dot-segments, and routes to a plain upstream (no forward-auth, not `untrusted`, not h2c, not a
//! tunnel). Anything else — and any head httparse refuses — goes to hyper with the bytes read so
//! far put back in front of the connection ([`Rewind`]); hyper serves that request and the rest
//! of the connection exactly as before, so every answer to an unusual request (400, 413, 431, a
//! redirect, a 404 page, an upgrade) is hyper's and `proxy.rs`'s. The upstream connection the fast
//! path had open is handed to hyper's path with the connection.
//!
//! What the fast path does to a request is what `proxy.rs` does: client claims (`X-Forwarded-*`,
//! identity headers in every `_`/`-` spelling) and hop-by-hop headers are dropped, the chat's
//! cookie is removed outside the chat mount, `Host` and the forwarding headers are written by the
//! gateway, and the target the upstream gets is the one routing judged. On the way back:
//! hop-by-hop headers (and those `Connection` names) are dropped, HSTS is the gateway's, the body
//! is relayed as framed (length, chunked — checked chunk by chunk so the end is known — or to the
//! upstream's close). Metrics, the access log, the route timeout (for the response head) and the
//! head-read timeout (slowloris, keep-alive idle) are the same as hyper's path.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use edge_routing::Decision;
use http::uri::Authority;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::proxy::ConnInfo;
use crate::proxy::Failed;
use crate::runtime::{Runtime, Target};
use crate::upstream::{still_open, MAX_BUF};
use crate::Shared;

mod chunked;
mod response;
mod rewind;

use response::{is_hop_by_hop, relay, response_head, take_body, write_full, Framing};
pub(crate) use rewind::Rewind;

/// Request headers the fast path looks at; a head with more goes to hyper (which applies
/// `limits.max_headers`).
const REQ_HEADERS: usize = 48;
/// Response headers an upstream may send (hyper's client allows 100 too).
const RESP_HEADERS: usize = 100;
/// The read buffers' starting size and the body chunk read at a time.
const CHUNK: usize = 16 * 1024;

/// The upstream connection of the fast path (one per client connection, as in `upstream.rs`).
struct Upstream {
    authority: Authority,
    stream: TcpStream,
    /// Bytes read from the upstream; empty between responses.
    buf: Vec<u8>,
}

/// What the fast path does with a parsed request head.
struct Plan {
    /// The head's length in the client's buffer.
    head_len: usize,
    method: Range<usize>,
    host: Range<usize>,
    /// The target as judged (no dot-segments), for the access log.
    target: Range<usize>,
    head: bool,
    /// Retrying on a fresh connection is harmless (RFC 9110 §9.2.2 safe methods).
    safe: bool,
    /// The client asked to close after this response.
    close: bool,
    project: usize,
    route: usize,
}

/// Serves `io` while its requests are plain; returns it (with what was read put back) when one
/// is not, for hyper to serve from that request on. `None`: the connection is done.
pub(crate) async fn serve<I>(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    mut io: I,
    stop: &CancellationToken,
) -> Option<Rewind<I>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut inb: Vec<u8> = Vec::with_capacity(4096);
    // The upstream request head, then the client's response head (and the body's first bytes).
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut up: Option<Upstream> = None;
    loop {
        let rt = shared.runtime.load_full();
        let limits = &rt.config().limits;
        // hyper's rule: the head-read timer runs from when the connection waits for a head,
        // so it also bounds keep-alive idle time.
        let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
        let plan = loop {
            if !inb.is_empty() {
                out.clear();
                match plan_request(shared, &rt, conn, &inb, &mut out) {
                    Step::Forward(p) => break p,
                    Step::Hyper => return Some(hand_over(conn, inb, io, up).await),
                    Step::More if inb.len() >= limits.max_header_bytes => {
                        return Some(hand_over(conn, inb, io, up).await)
                    }
                    Step::More => {}
                }
            }
            if inb.capacity() - inb.len() < 1024 {
                inb.reserve(4096);
            }
            let read = tokio::select! {
                r = tokio::time::timeout_at(deadline, io.read_buf(&mut inb)) => r,
                // Shutting down: an idle connection closes now (a half-sent head waits).
                _ = stop.cancelled(), if inb.is_empty() => return None,
            };
            match read {
                Ok(Ok(n)) if n > 0 => {}
                // Timed out (slowloris, or idle past the timeout), closed, or broken.
                _ => return None,
            }
        };
        let start = Instant::now();
        shared
            .metrics
            .fast_path_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let close = plan.close || stop.is_cancelled();
        let keep = exchange(
            &rt, conn, &mut io, &inb, &mut up, &mut out, &plan, start, close,
        )
        .await;
        // The next request's bytes, if the client pipelined, move to the front.
        inb.drain(..plan.head_len);
        if !keep || close {
            let _ = io.shutdown().await;
            return None;
        }
    }
}

/// Gives the connection to hyper: the bytes read so far go back in front, and the idle upstream
/// connection (if any) becomes the one `upstream.rs` uses for this client.
async fn hand_over<I>(conn: &ConnInfo, inb: Vec<u8>, io: I, up: Option<Upstream>) -> Rewind<I> {
    if let Some(u) = up.filter(|u| u.buf.is_empty()) {
        conn.upstream.adopt(u.authority, u.stream).await;
    }
    Rewind::new(inb, io)
}

enum Step {
    Forward(Plan),
    Hyper,
    More,
}

/// Whether every byte of a target is one the fast path passes on as it is; anything else goes
/// to hyper, whose URI parser decides.
fn plain_target(t: &[u8]) -> bool {
    const MARKS: &[u8] = b"-._~!$&'()*+,;=:@/?%";
    t.first() == Some(&b'/')
        && t.iter()
            .all(|c| c.is_ascii_alphanumeric() || MARKS.contains(c))
}

fn offset(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.len()
}

/// Parses the head at the front of `inb` and, if the fast path takes it, writes the upstream's
/// request head into `out`.
fn plan_request(
    shared: &Shared,
    rt: &Runtime,
    conn: &ConnInfo,
    inb: &[u8],
    out: &mut Vec<u8>,
) -> Step {
    let mut headers = [httparse::EMPTY_HEADER; REQ_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(inb) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Step::More,
        Err(_) => return Step::Hyper,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Step::Hyper;
    };
    if method == "CONNECT" || !plain_target(target.as_bytes()) {
        return Step::Hyper;
    }
    let mut host: Option<&[u8]> = None;
    let mut close = false;
    for h in req.headers.iter() {
        let n = h.name.as_bytes();
        if n.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return Step::Hyper;
            }
            host = Some(h.value);
        } else if n.eq_ignore_ascii_case(b"content-length") {
            if h.value != b"0" {
                return Step::Hyper;
            }
        } else if n.eq_ignore_ascii_case(b"transfer-encoding")
            || n.eq_ignore_ascii_case(b"upgrade")
            || n.eq_ignore_ascii_case(b"expect")
        {
            return Step::Hyper;
        } else if n.eq_ignore_ascii_case(b"connection") {
            for t in h.value.split(|&c| c == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !t.eq_ignore_ascii_case(b"keep-alive") && !t.is_empty() {
                    // It names headers to drop, or asks for an upgrade: hyper's path.
                    return Step::Hyper;
                }
            }
        }
    }
    let Some(host_b) = host else {
        return Step::Hyper;
    };
    let Ok(host_str) = std::str::from_utf8(host_b) else {
        return Step::Hyper;
    };
    if edge_routing::check_host(host_str).is_err() {
        return Step::Hyper;
    }
    if conn.tls {
        let (name, _) = edge_routing::normalize_host(host_str);
        if !shared.certs.shares_certificate(conn.sni.as_deref(), &name) {
            return Step::Hyper;
        }
    }
    // A target with dot-segments (or anything routing would rewrite) takes hyper's path.
    match edge_routing::normalize_target(target) {
        Ok(std::borrow::Cow::Borrowed(_)) => {}
        _ => return Step::Hyper,
    }
    let cfg = rt.config();
    if !conn.tls && (cfg.listen.http_redirect || target.starts_with("/.well-known/acme-challenge/"))
    {
        return Step::Hyper;
    }
    let scheme = if conn.tls { "https" } else { "http" };
    let Decision::Route {
        project,
        route,
        path,
    } = rt.table.resolve(scheme, host_str, target)
    else {
        return Step::Hyper;
    };
    let rrt = &rt.routes[project][route];
    let rcfg = &cfg.projects[project].routes[route];
    let Target::Upstream {
        h2c: false,
        tunnel: false,
        ..
    } = &rrt.target
    else {
        return Step::Hyper;
    };
    if rrt.auth.is_some() || rcfg.untrusted {
        return Step::Hyper;
    }

    // The upstream's head: request line, the client's headers less what the gateway states or
    // what describes only the client's hop, then the gateway's own.
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host_b);
    out.extend_from_slice(b"\r\n");
    for h in req.headers.iter() {
        let n = h.name.as_bytes();
        if n.eq_ignore_ascii_case(b"host") || is_hop_by_hop(n) || crate::hygiene::is_claim_bytes(n)
        {
            continue;
        }
        let value = if !rrt.chat && n.eq_ignore_ascii_case(b"cookie") {
            match crate::forward_auth::clean_cookie(h.value, &edge_routing::CHAT_COOKIES) {
                Some(v) => v,
                None => continue,
            }
        } else {
            std::borrow::Cow::Borrowed(h.value)
        };
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(&value);
        out.extend_from_slice(b"\r\n");
    }
    let ip = conn.ip_value.as_bytes();
    for (name, value) in [
        (&b"x-forwarded-for: "[..], ip),
        (b"x-real-ip: ", ip),
        (
            b"x-forwarded-proto: ",
            if conn.tls { b"https" } else { b"http" },
        ),
        (b"x-forwarded-host: ", host_b),
        (b"forwarded: ", conn.forwarded.as_bytes()),
    ] {
        out.extend_from_slice(name);
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(prefix) = &rrt.prefix {
        out.extend_from_slice(b"x-forwarded-prefix: ");
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Step::Forward(Plan {
        head_len,
        method: offset(inb, method.as_bytes()),
        host: offset(inb, host_b),
        target: offset(inb, target.as_bytes()),
        head: method == "HEAD",
        safe: matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE"),
        close,
        project,
        route,
    })
}

/// Sends the planned request and relays the response. Returns whether the client connection
/// can carry another request.
#[allow(clippy::too_many_arguments)]
async fn exchange<I>(
    rt: &Runtime,
    conn: &ConnInfo,
    io: &mut I,
    inb: &[u8],
    up: &mut Option<Upstream>,
    out: &mut Vec<u8>,
    plan: &Plan,
    start: Instant,
    close: bool,
) -> bool
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let cfg = rt.config();
    let rrt = &rt.routes[plan.project][plan.route];
    let rcfg = &cfg.projects[plan.project].routes[plan.route];
    let Target::Upstream { authority, .. } = &rrt.target else {
        return false;
    };
    let hsts = conn.tls && cfg.listen.hsts;
    // Two tries at most: the second only on a fresh connection, after a reused one failed
    // before answering anything, for a safe method (the upstream may have closed it idle).
    let mut first = true;
    let head = loop {
        // A request that must not be sent twice first checks the idle connection is open.
        let reused = up
            .take()
            .filter(|u| &u.authority == authority && (plan.safe || still_open(&u.stream)));
        let was_open = reused.is_some();
        let mut u = match reused {
            Some(u) => u,
            None => match crate::upstream::dial(authority).await {
                Ok(stream) => Upstream {
                    authority: authority.clone(),
                    stream,
                    buf: Vec::with_capacity(CHUNK),
                },
                Err(e) => break Err(Failed::Upstream(e)),
            },
        };
        let r = match tokio::time::timeout(rcfg.timeout, send_and_read_head(&mut u, out)).await {
            Ok(r) => r,
            Err(_) => Err(Failed::Timeout),
        };
        let silent = matches!(r, Err(Failed::Other(_))) && u.buf.is_empty();
        if r.is_ok() {
            *up = Some(u);
        } else if silent && was_open && first && plan.safe {
            // Nothing came back on a connection the upstream had closed: dial once more.
            first = false;
            continue;
        }
        break r;
    };
    out.clear();
    // The head's length in the upstream's buffer (what follows is the body's first bytes).
    let mut head_len = 0;
    let failed = |f: Failed, out: &mut Vec<u8>| {
        let resp = crate::proxy::upstream_failed(rt, plan.project, plan.route, authority, f);
        let status = resp.status().as_u16();
        write_full(resp, plan.head, hsts, out);
        (status, Framing::None, false)
    };
    let (status, mut framing, upstream_keep) = match (head, up.as_mut()) {
        (Ok(n), Some(u)) => match response_head(&u.buf[..n], plan.head, hsts, close, out) {
            Ok(r) => {
                head_len = n;
                r
            }
            Err(why) => {
                *up = None;
                out.clear();
                failed(Failed::Other(why), out)
            }
        },
        (Ok(_), None) => return false,
        (Err(f), _) => failed(f, out),
    };
    rrt.metrics.observe(status, start.elapsed());
    if let Some(log) = &rt.access {
        let s = |r: &Range<usize>| std::str::from_utf8(&inb[r.clone()]).unwrap_or("");
        // The path only: query strings carry tokens and OAuth codes.
        log.log(&crate::access_log::Line {
            client: conn.ip_value.to_str().unwrap_or("?"),
            method: s(&plan.method),
            host: s(&plan.host),
            path: s(&plan.target).split('?').next().unwrap_or(""),
            status,
            micros: start.elapsed().as_micros() as u64,
            project: rrt.metrics.project(),
            mount: rrt.metrics.mount(),
        });
    }
    // The body's first bytes go out with the head, in one write.
    let mut client_keep = !matches!(framing, Framing::Close);
    let done = match (&mut framing, up.as_mut()) {
        (Framing::None, Some(u)) => {
            u.buf.drain(..head_len);
            true
        }
        (_, None) => true,
        (f, Some(u)) => match take_body(f, &u.buf[head_len..]) {
            Ok((n, done)) => {
                out.extend_from_slice(&u.buf[head_len..head_len + n]);
                u.buf.drain(..head_len + n);
                done
            }
            Err(()) => {
                *up = None;
                client_keep = false;
                true
            }
        },
    };
    // Flushed: over TLS, written bytes may wait in the session until then.
    if io.write_all(out).await.is_err() || io.flush().await.is_err() {
        *up = None;
        return false;
    }
    if !done {
        let Some(u) = up.as_mut() else { return false };
        if relay(io, u, &mut framing).await.is_err() {
            *up = None;
            return false;
        }
        if matches!(framing, Framing::Close) {
            *up = None;
            return false;
        }
    }
    if !upstream_keep || up.as_ref().is_some_and(|u| !u.buf.is_empty()) {
        // Said `close`, or sent more than its response: not reused.
        *up = None;
    }
    if out.capacity() > 16 * 1024 {
        *out = Vec::with_capacity(1024);
    }
    client_keep
}

/// Writes the request and reads until a whole final (non-1xx) response head is in `u.buf`;
/// returns its length.
/// Failures are `Failed::Other`; with `u.buf` empty, nothing came back at all.
async fn send_and_read_head(u: &mut Upstream, req: &[u8]) -> Result<usize, Failed> {
    u.stream
        .write_all(req)
        .await
        .map_err(|e| Failed::Other(format!("sending the request: {e}")))?;
    loop {
        if !u.buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; RESP_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&u.buf) {
                Ok(httparse::Status::Complete(n)) => match resp.code {
                    Some(101) => return Err(Failed::SwitchedUnasked),
                    // Informational (103 Early Hints...): dropped, as hyper's client does.
                    Some(c) if c < 200 => {
                        u.buf.drain(..n);
                        continue;
                    }
                    _ => return Ok(n),
                },
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(Failed::Other(format!("a malformed response head: {e}"))),
            }
            if u.buf.len() >= MAX_BUF {
                return Err(Failed::Other(format!(
                    "a response head over {MAX_BUF} bytes"
                )));
            }
        }
        if u.buf.capacity() - u.buf.len() < 1024 {
            u.buf.reserve(CHUNK);
        }
        match u.stream.read_buf(&mut u.buf).await {
            Ok(0) => {
                return Err(Failed::Other(
                    "the connection closed before a whole response head".into(),
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(Failed::Other(format!("reading the response: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_targets_take_the_fast_path() {
        assert!(plain_target(b"/forge/a-b_c.d~e?x=1&y=%20"));
        for t in [
            &b"*"[..],
            b"http://a/b",
            b"/a b",
            b"/a#b",
            b"/a\"b",
            b"/a{b",
            b"",
        ] {
            assert!(!plain_target(t), "{t:?}");
        }
    }
}
