//! Static file mounts. Written here rather than taken from tower-http's `ServeDir` because the
//! gateway needs things it does not do: strong ETags with `If-None-Match`, refusing symlinks
//! that lead out of the root (ServeDir follows them), refusing dotfiles and VCS directories
//! (`.git/config` holds remote URLs with tokens), and serving regular files only, decided
//! without blocking (a FIFO opened for reading waits for a writer forever).
//!
//! Every file system call of a lookup runs in one blocking task, and each route has a fixed
//! number of them at a time ([`StaticRoot::permits`]): a slow or hostile root can fill its own
//! permits, never the runtime's blocking pool that every other route and the chat share.

use std::io::SeekFrom;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::body::{BoxError, ResBody};
use crate::pages;

/// Lookups of one static route running at once, at most. Each holds a blocking thread for a
/// few `stat`s and an `open`.
const LOOKUPS_PER_ROUTE: usize = 32;
/// How long a request waits for one of its route's lookups before a 503.
const LOOKUP_WAIT: Duration = Duration::from_secs(5);

/// A static route's root, canonical, and what it allows.
#[derive(Debug)]
pub(crate) struct StaticRoot {
    pub root: PathBuf,
    /// Serve dotfiles (`.env`, `.git/...`) too; `/.well-known/` is always served.
    pub dotfiles: bool,
    permits: Arc<tokio::sync::Semaphore>,
}

impl StaticRoot {
    pub(crate) fn new(root: PathBuf, dotfiles: bool) -> StaticRoot {
        StaticRoot {
            root,
            dotfiles,
            permits: Arc::new(tokio::sync::Semaphore::new(LOOKUPS_PER_ROUTE)),
        }
    }
}

/// Whether a name is hidden: a dotfile or dot-directory other than `.well-known` (RFC 8615).
fn hidden(name: &str) -> bool {
    name.starts_with('.') && name != ".well-known"
}

/// The requested file, after decoding, as path segments; `None` for anything that tries to
/// climb (`..`, `%2e%2e`, an encoded `/` or `\`, a NUL) or, unless `dotfiles`, names a dotfile.
fn segments(raw_path: &str, dotfiles: bool) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for seg in raw_path.split('/') {
        if seg.is_empty() {
            continue;
        }
        let decoded = percent_encoding::percent_decode_str(seg).collect::<Vec<u8>>();
        let s = String::from_utf8(decoded).ok()?;
        if s == "." || s == ".." || s.contains(['/', '\\', '\0']) || (!dotfiles && hidden(&s)) {
            return None;
        }
        out.push(s);
    }
    Some(out)
}

/// What a lookup found.
// Returned once per lookup and matched at once: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Lookup {
    /// A regular file, open, with its metadata and its real path (for the content type).
    File(std::fs::File, std::fs::Metadata, PathBuf),
    /// A directory asked for without its trailing slash.
    Directory,
    NotFound,
}

/// Finds and opens the file `segs` names under `root`, blocking: run it on a blocking thread.
/// Symlinks are resolved and must stay under the root (and, unless `dotfiles`, out of hidden
/// directories); only a regular file is opened, with `O_NONBLOCK | O_NOCTTY`, so a FIFO or a
/// device swapped in between the `stat` and the `open` cannot hang or take a terminal.
fn lookup(root: &Path, segs: &[String], trailing_slash: bool, dotfiles: bool) -> Lookup {
    let mut file_path = root.to_path_buf();
    for s in segs {
        file_path.push(s);
    }
    let Ok(meta) = std::fs::metadata(&file_path) else {
        return Lookup::NotFound;
    };
    if meta.is_dir() {
        if !trailing_slash {
            return Lookup::Directory;
        }
        file_path.push("index.html");
    }
    let Ok(real) = std::fs::canonicalize(&file_path) else {
        return Lookup::NotFound;
    };
    let Ok(inside) = real.strip_prefix(root) else {
        tracing::warn!(path = %file_path.display(), "refused a path that leaves the static root");
        return Lookup::NotFound;
    };
    if !dotfiles
        && inside
            .components()
            .any(|c| matches!(c, Component::Normal(n) if n.to_str().is_none_or(hidden)))
    {
        return Lookup::NotFound;
    }
    // Decided on the path before opening: only a regular file is ever opened.
    match std::fs::metadata(&real) {
        Ok(m) if m.is_file() => {}
        _ => return Lookup::NotFound,
    }
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags::O_NONBLOCK | libc_flags::O_NOCTTY)
        .open(&real)
    else {
        return Lookup::NotFound;
    };
    // ...and again on what was opened, in case the path changed in between.
    match file.metadata() {
        Ok(m) if m.is_file() => Lookup::File(file, m, real),
        _ => Lookup::NotFound,
    }
}

/// The two `open(2)` flags used here, for Linux (every architecture edge builds for shares
/// these values), so the gateway needs no `libc` dependency for them.
mod libc_flags {
    pub const O_NONBLOCK: i32 = 0o4000;
    pub const O_NOCTTY: i32 = 0o400;
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

/// Serves `raw_path` (still percent-encoded, query allowed) from `root`. Directory redirects are relative, so they work under any mount.
pub(crate) async fn serve(
    root: &StaticRoot,
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
    let Some(segs) = segments(path, root.dotfiles) else {
        return not_found();
    };
    let Ok(Ok(permit)) =
        tokio::time::timeout(LOOKUP_WAIT, root.permits.clone().acquire_owned()).await
    else {
        tracing::warn!(root = %root.root.display(), "every lookup of this static route is busy; refused");
        return pages::plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "this mount's files are busy; try again\n",
        );
    };
    let (dir, trailing, dotfiles) = (root.root.clone(), path.ends_with('/'), root.dotfiles);
    let found = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        lookup(&dir, &segs, trailing, dotfiles)
    })
    .await;
    let (file, meta, real) = match found {
        Ok(Lookup::File(f, m, real)) => (f, m, real),
        Ok(Lookup::Directory) => {
            // Relative, so it works under any mount: /staging/docs -> docs/ = /staging/docs/
            let last = path.rsplit('/').next().unwrap_or("");
            let loc = match query {
                Some(q) => format!("{last}/?{q}"),
                None => format!("{last}/"),
            };
            return pages::redirect(308, &loc);
        }
        Ok(Lookup::NotFound) | Err(_) => return not_found(),
    };
    let mut file = tokio::fs::File::from_std(file);
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
    fn segments_refuse_traversal_and_dotfiles() {
        assert_eq!(
            segments("/a/b.html", false),
            Some(vec!["a".into(), "b.html".into()])
        );
        assert_eq!(segments("/a%20b/", false), Some(vec!["a b".into()]));
        assert_eq!(
            segments("/.well-known/x", false),
            Some(vec![".well-known".into(), "x".into()])
        );
        for hidden in ["/.git/config", "/a/.env", "/%2egit/HEAD", "/a/.htpasswd"] {
            assert_eq!(segments(hidden, false), None, "{hidden}");
            assert!(segments(hidden, true).is_some(), "{hidden} with dotfiles");
        }
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
            assert_eq!(segments(bad, true), None, "{bad}");
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
