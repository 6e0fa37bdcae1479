//! The gateway's own answers: small HTML pages that say what happened and what to change.

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::ResBody;

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page with a title and an HTML body (already escaped by the caller). The status code leads
/// the title unless it is 200.
pub fn page(status: StatusCode, title: &str, body_html: &str) -> Response<ResBody> {
    let title = if status == StatusCode::OK {
        esc(title)
    } else {
        format!("{} {}", status.as_u16(), esc(title))
    };
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <link rel=\"icon\" href=\"data:,\"><title>{title}</title><style>body{{font:16px/1.5 system-ui,sans-serif;max-width:44em;margin:3em auto;padding:0 1em;color:#222}}\
         code{{background:#f3f3f3;padding:0 .25em}}h1{{font-size:1.4em}}small{{color:#777}}</style></head>\
         <body><h1>{title}</h1>\n{body_html}\n<p><small>edge</small></p></body></html>\n",
    );
    let mut r = Response::new(ResBody::full(html));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

pub fn redirect(status: u16, location: &str) -> Response<ResBody> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
    let mut r = Response::new(ResBody::Empty);
    *r.status_mut() = status;
    match HeaderValue::from_str(location) {
        Ok(v) => {
            r.headers_mut().insert(header::LOCATION, v);
        }
        Err(_) => *r.status_mut() = StatusCode::BAD_REQUEST,
    }
    r
}

pub fn plain(status: StatusCode, text: &'static str) -> Response<ResBody> {
    let mut r = Response::new(ResBody::full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
