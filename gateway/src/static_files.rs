//! Static file mounts. Written here rather than taken from tower-http's `ServeDir` because the
//! gateway needs two things it does not do: strong ETags with `If-None-Match`, and refusing
//! symlinks that lead out of the root (ServeDir follows them).

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::body::{BoxError, ResBody};
use crate::pages;

/// The requested file, after decoding, as path segments; `None` for anything that tries to
/// climb (`..`, `%2e%2e`, an encoded `/` or `\`, a NUL).
fn segments(raw_path: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for seg in raw_path.split('/') {
        if seg.is_empty() {
            continue;
        }
        let decoded = percent_encoding::percent_decode_str(seg).collect::<Vec<u8>>();
        let s = String::from_utf8(decoded).ok()?;
        if s == "." || s == ".." || s.contains(['/', '\\', '\0']) {
            return None;
        }
        out.push(s);
    }
    Some(out)
}

fn not_found() -> Response<ResBody> {
    pages::page(StatusCode::NOT_FOUND, "Not Found", "<p>No such file.</p>")
}

fn etag_of(meta: &std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    format!(
        "\"{:x}-{:x}-{:x}\"",
        mtime.as_secs(),
        mtime.subsec_nanos(),
        meta.len()
    )
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison, RFC 9110 §13.1.2).
fn none_match(header_value: &str, etag: &str) -> bool {
    header_value.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag
    })
}

/// Parses a single `bytes=` range against a length; `Err(())` when unsatisfiable, `Ok(None)` when
/// the header is not one we honour (several ranges, other units): then the whole file is sent.
#[allow(clippy::result_unit_err)]
pub fn parse_range(value: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (start, end) = match (a.trim(), b.trim()) {
        ("", "") => return Ok(None),
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (len.saturating_sub(n), len.checked_sub(1).ok_or(())?)
        }
        (s, "") => (s.parse().map_err(|_| ())?, len.checked_sub(1).ok_or(())?),
        (s, e) => {
            let s: u64 = s.parse().map_err(|_| ())?;
            let e: u64 = e.parse().map_err(|_| ())?;
            if e < s {
                return Err(());
            }
            (s, e.min(len.saturating_sub(1)))
        }
    };
    if start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// Serves `raw_path` (still percent-encoded, query allowed) from `root`, which must be
/// canonical. Directory redirects are relative, so they work under any mount.
pub async fn serve(
    root: &Path,
    raw_path: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Response<ResBody> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = pages::plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "static files answer GET and HEAD only\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let (path, query) = match raw_path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw_path, None),
    };
    let Some(segs) = segments(path) else {
        return not_found();
    };
    let mut file_path: PathBuf = root.to_path_buf();
    for s in &segs {
        file_path.push(s);
    }
    let Ok(meta) = tokio::fs::metadata(&file_path).await else {
        return not_found();
    };
    if meta.is_dir() {
        if !path.ends_with('/') {
            // Relative, so it works under any mount: /staging/docs -> docs/ = /staging/docs/
            let last = path.rsplit('/').next().unwrap_or("");
            let loc = match query {
                Some(q) => format!("{last}/?{q}"),
                None => format!("{last}/"),
            };
            return pages::redirect(308, &loc);
        }
        file_path.push("index.html");
    }
    // Symlinks may point anywhere: resolve and require the result to stay under the root.
    let Ok(real) = tokio::fs::canonicalize(&file_path).await else {
        return not_found();
    };
    if !real.starts_with(root) {
        tracing::warn!(path = %file_path.display(), "refused a path that leaves the static root");
        return not_found();
    }
    let Ok(mut file) = tokio::fs::File::open(&real).await else {
        return not_found();
    };
    let Ok(meta) = file.metadata().await else {
        return not_found();
    };
    if !meta.is_file() {
        return not_found();
    }
    let len = meta.len();
    let etag = etag_of(&meta);
    let mut resp = Response::new(ResBody::Empty);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(m) = meta.modified() {
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(m)) {
            h.insert(header::LAST_MODIFIED, v);
        }
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    let mime = mime_guess::from_path(&real).first_or_octet_stream();
    let ctype = if mime.type_() == "text" || mime.essence_str() == "application/javascript" {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.essence_str().to_string()
    };
    if let Ok(v) = HeaderValue::from_str(&ctype) {
        h.insert(header::CONTENT_TYPE, v);
    }

    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        if none_match(inm, &etag) {
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            resp.headers_mut().remove(header::CONTENT_TYPE);
            return resp;
        }
    }

    let mut range = None;
    if let Some(rv) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        // If-Range with another validator means the client's copy is stale: send it all.
        let if_range_ok = headers
            .get(header::IF_RANGE)
            .map(|v| v.as_bytes() == etag.as_bytes())
            .unwrap_or(true);
        if if_range_ok {
            match parse_range(rv, len) {
                Ok(r) => range = r,
                Err(()) => {
                    *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                        resp.headers_mut().insert(header::CONTENT_RANGE, v);
                    }
                    return resp;
                }
            }
        }
    }
    let (start, count) = match range {
        Some((s, e)) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {s}-{e}/{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            (s, e - s + 1)
        }
        None => (0, len),
    };
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if method == Method::HEAD || count == 0 {
        return resp;
    }
    if start > 0 && file.seek(SeekFrom::Start(start)).await.is_err() {
        return not_found();
    }
    let stream = ReaderStream::with_capacity(file.take(count), 64 * 1024)
        .map_ok(|b: Bytes| Frame::data(b))
        .map_err(|e| -> BoxError { Box::new(e) });
    *resp.body_mut() = ResBody::Stream(StreamBody::new(stream).boxed_unsync());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_refuse_traversal() {
        assert_eq!(
            segments("/a/b.html"),
            Some(vec!["a".into(), "b.html".into()])
        );
        assert_eq!(segments("/a%20b/"), Some(vec!["a b".into()]));
        for bad in [
            "/../x",
            "/a/../../x",
            "/%2e%2e/x",
            "/%2E%2E/x",
            "/a%2F..%2Fx",
            "/a%5C..",
            "/a%00",
            "/./x",
        ] {
            assert_eq!(segments(bad), None, "{bad}");
        }
    }

    #[test]
    fn ranges_table() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=50-500", 100), Ok(Some((50, 99))));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("lines=1-2", 100), Ok(None));
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=9-1", 100), Err(()));
        assert_eq!(parse_range("bytes=-0", 100), Err(()));
        assert_eq!(parse_range("bytes=x-1", 100), Err(()));
    }

    #[test]
    fn if_none_match_table() {
        assert!(none_match("\"abc\"", "\"abc\""));
        assert!(none_match("W/\"abc\"", "\"abc\""));
        assert!(none_match("\"x\", \"abc\"", "\"abc\""));
        assert!(none_match("*", "\"abc\""));
        assert!(!none_match("\"abd\"", "\"abc\""));
    }
}
