//! The response side of the fast path: the client's head written from the upstream's, the body
//! relayed as it is framed, and the gateway's own answers serialised.

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::chunked::ChunkScan;
use super::{Upstream, RESP_HEADERS};
use crate::body::ResBody;
use crate::upstream::MAX_BUF;

/// How a response body ends.
pub(super) enum Framing {
    None,
    Length(u64),
    Chunked(ChunkScan),
    /// At the upstream's close (an HTTP/1.0-style response without a length).
    Close,
}

/// Request and response headers that describe one hop (`proxy.rs` drops the same; `TE` too,
/// as no fast-path upstream is h2c).
pub(super) fn is_hop_by_hop(n: &[u8]) -> bool {
    n.eq_ignore_ascii_case(b"te")
        || crate::hygiene::HOP_BY_HOP
            .iter()
            .any(|h| n.eq_ignore_ascii_case(h.as_bytes()))
}

/// Writes the client's response head from the upstream's into `out`. Returns the status, how
/// the body is framed, and whether the upstream connection may carry another request.
pub(super) fn response_head(
    raw: &[u8],
    head_req: bool,
    hsts: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> Result<(u16, Framing, bool), String> {
    let mut headers = [httparse::EMPTY_HEADER; RESP_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(raw) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err("a malformed response head".into()),
    }
    let code = resp.code.unwrap_or(502);
    let version = resp.version.unwrap_or(1);
    // What `Connection` says, and the headers it names (nearly always none).
    let mut named: Vec<&[u8]> = Vec::new();
    let mut up_close = version == 0;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te = false;
    for h in resp.headers.iter() {
        let n = h.name.as_bytes();
        if n.eq_ignore_ascii_case(b"connection") {
            for t in h.value.split(|&c| c == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    up_close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    up_close &= version != 0;
                    if version == 0 {
                        up_close = false;
                    }
                } else if !t.is_empty() {
                    named.push(t);
                }
            }
        } else if n.eq_ignore_ascii_case(b"content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| "an unreadable Content-Length".to_string())?;
            if length.is_some_and(|l| l != v) {
                return Err("two different Content-Length values".into());
            }
            length = Some(v);
        } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
            // Chunked only when it is the last coding (RFC 9112 §6.3).
            chunked = h
                .value
                .rsplit(|&c| c == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }
    let bodiless = head_req || code == 204 || code == 304;
    let framing = if bodiless {
        Framing::None
    } else if te {
        if chunked {
            Framing::Chunked(ChunkScan::default())
        } else {
            Framing::Close
        }
    } else {
        match length {
            Some(0) => Framing::None,
            Some(l) => Framing::Length(l),
            None => Framing::Close,
        }
    };
    let reason = match resp.reason {
        Some(r) if !r.is_empty() => r,
        _ => StatusCode::from_u16(code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or(""),
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut date = false;
    for h in resp.headers.iter() {
        let n = h.name.as_bytes();
        if is_hop_by_hop(n)
            || named.iter().any(|t| n.eq_ignore_ascii_case(t))
            || (hsts && n.eq_ignore_ascii_case(b"strict-transport-security"))
            || (te && n.eq_ignore_ascii_case(b"content-length"))
        {
            continue;
        }
        date |= n.eq_ignore_ascii_case(b"date");
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if !date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if matches!(framing, Framing::Chunked(_)) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if hsts {
        out.extend_from_slice(b"strict-transport-security: max-age=63072000\r\n");
    }
    if close || matches!(framing, Framing::Close) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let keep = !up_close && !matches!(framing, Framing::Close);
    Ok((code, framing, keep))
}

/// How much of `buf` belongs to the body, and whether the body ends there.
pub(super) fn take_body(f: &mut Framing, buf: &[u8]) -> Result<(usize, bool), ()> {
    match f {
        Framing::None => Ok((0, true)),
        Framing::Length(rest) => {
            let n = (*rest).min(buf.len() as u64);
            *rest -= n;
            Ok((n as usize, *rest == 0))
        }
        Framing::Chunked(scan) => match scan.feed(buf)? {
            Some(end) => Ok((end, true)),
            None => Ok((buf.len(), false)),
        },
        Framing::Close => Ok((buf.len(), false)),
    }
}

/// Relays the rest of a body from the upstream to the client, a read at a time (back-pressure:
/// nothing is read ahead of what the client takes).
pub(super) async fn relay<I>(io: &mut I, u: &mut Upstream, f: &mut Framing) -> Result<(), ()>
where
    I: AsyncWrite + Unpin,
{
    debug_assert!(u.buf.is_empty());
    loop {
        u.buf.clear();
        // Reads of up to `MAX_BUF`, as hyper's path makes. With 16 KiB reads, a client with a
        // small receive window (the slow-reader test's 16 KiB) got data on loopback only at
        // the pace of TCP's persist timer, 32 KiB every 200 ms.
        if u.buf.capacity() < MAX_BUF {
            u.buf.reserve(MAX_BUF);
        }
        let n = u.stream.read_buf(&mut u.buf).await.map_err(|_| ())?;
        if n == 0 {
            // The upstream closed: the end of a close-framed body, else a cut-off one.
            u.buf.clear();
            return if matches!(f, Framing::Close) {
                Ok(())
            } else {
                Err(())
            };
        }
        let (take, done) = take_body(f, &u.buf)?;
        io.write_all(&u.buf[..take]).await.map_err(|_| ())?;
        io.flush().await.map_err(|_| ())?;
        if done {
            u.buf.drain(..take);
            return Ok(());
        }
    }
}

/// Serialises one of the gateway's own answers (a whole body in memory).
pub(super) fn write_full(
    resp: http::Response<ResBody>,
    head_req: bool,
    hsts: bool,
    out: &mut Vec<u8>,
) {
    let (parts, body) = resp.into_parts();
    let body = match body {
        ResBody::Full(Some(b)) => b,
        _ => bytes::Bytes::new(),
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(parts.status.as_u16()).as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (n, v) in &parts.headers {
        out.extend_from_slice(n.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    out.extend_from_slice(b"\r\n");
    if hsts {
        out.extend_from_slice(b"strict-transport-security: max-age=63072000\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_req {
        out.extend_from_slice(&body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads_lose_hop_by_hop_headers_and_get_the_gateways_hsts() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
                    Keep-Alive: timeout=5\r\nStrict-Transport-Security: max-age=0\r\n\
                    Date: Thu, 01 Jan 2026 00:00:00 GMT\r\nContent-Length: 3\r\n\r\n";
        let mut out = Vec::new();
        let (code, f, keep) = response_head(raw, false, true, false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(code, 200);
        assert!(matches!(f, Framing::Length(3)));
        assert!(keep);
        assert!(!text.to_ascii_lowercase().contains("x-secret"), "{text}");
        assert!(
            !text.contains("Keep-Alive") && !text.contains("max-age=0"),
            "{text}"
        );
        assert!(
            text.contains("strict-transport-security: max-age=63072000"),
            "{text}"
        );
        assert!(
            text.contains("Content-Length: 3") && text.ends_with("\r\n\r\n"),
            "{text}"
        );

        // Chunked wins over a length; a 1.0 response without keep-alive is not reused.
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n";
        let mut out = Vec::new();
        let (_, f, _) = response_head(raw, false, false, false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(matches!(f, Framing::Chunked(_)));
        assert!(!text.contains("Content-Length"), "{text}");
        assert!(text.contains("transfer-encoding: chunked"), "{text}");
        let raw = b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n";
        let (_, _, keep) = response_head(raw, false, false, false, &mut Vec::new()).unwrap();
        assert!(!keep);
        // No length: read to the close, and the client is told so.
        let raw = b"HTTP/1.1 200 OK\r\n\r\n";
        let mut out = Vec::new();
        let (_, f, keep) = response_head(raw, false, false, false, &mut out).unwrap();
        assert!(matches!(f, Framing::Close) && !keep);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("connection: close"));
        // Two lengths that disagree cannot be relayed.
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert!(response_head(raw, false, false, false, &mut Vec::new()).is_err());
    }
}
