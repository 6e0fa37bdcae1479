//! The HTTP/1.1 fast path through real sockets: what it forwards is what hyper's path forwards,
//! every response framing arrives whole on a kept-alive connection, pipelined requests are
//! answered in order, and a connection moves to hyper for an unusual request and keeps working.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(up: SocketAddr) -> String {
    format!(
        r#"domain = "example.test"
{listen}
[[projects]]
name = "demo"
  [[projects.routes]]
  mount = "forge"
  upstream = "http://{up}"
  timeout = "2s"
"#,
        listen = listen(false)
    )
}

fn fast_count(t: &TestGw) -> u64 {
    let m = t.gw.metrics().render();
    m.lines()
        .find_map(|l| l.strip_prefix("edge_fast_path_requests_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no fast path counter in\n{m}"))
}

/// The echoed request headers, lower-case and sorted, without `content-length`.
fn echoed_headers(body: &str) -> Vec<String> {
    let mut v: Vec<String> = body
        .lines()
        .skip(1)
        .map(|l| l.to_ascii_lowercase())
        .filter(|l| !l.starts_with("content-length:"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn the_fast_path_forwards_what_hyper_forwards() {
    let echo = echo_upstream().await;
    let t = start(&config(echo)).await;
    let request = |extra: Option<(&'static str, &'static str)>| {
        let mut b = http::Request::get("/forge/a/b?q=1")
            .header("host", "demo.example.test")
            .header("x-forwarded-for", "6.6.6.6")
            .header("X_Forwarded_User", "eve")
            .header("remote-user", "eve")
            .header("forwarded", "for=6.6.6.6")
            .header("te", "trailers")
            .header("keep-alive", "timeout=5")
            .header("proxy-authorization", "Basic x")
            .header("cookie", "a=1; __Host-edge-chat=secret; b=2")
            .header("accept", "text/html");
        if let Some((k, v)) = extra {
            b = b.header(k, v);
        }
        b.body(Full::new(Bytes::new())).unwrap()
    };
    let before = fast_count(&t);
    let fast = send(t.http, request(None)).await;
    assert_eq!(
        fast_count(&t),
        before + 1,
        "a plain GET takes the fast path"
    );
    // `Connection` naming a header is one of the things the fast path leaves to hyper.
    let slow = send(t.http, request(Some(("connection", "x-dummy")))).await;
    assert_eq!(fast_count(&t), before + 1, "this one went through hyper");
    assert_eq!((fast.status, slow.status), (200, 200));
    let (f, s) = (fast.text(), slow.text());
    assert_eq!(f.lines().next(), Some("GET /a/b?q=1"), "{f}");
    assert_eq!(
        echoed_headers(&f),
        echoed_headers(&s),
        "fast:\n{f}\nhyper:\n{s}"
    );
    for gone in ["6.6.6.6", "eve", "secret", "timeout=5", "basic x", "te:"] {
        assert!(
            !f.to_ascii_lowercase().contains(gone),
            "{gone} reached the upstream:\n{f}"
        );
    }
    for kept in [
        "cookie: a=1; b=2",
        "x-forwarded-for: 127.0.0.1",
        "x-forwarded-host: demo.example.test",
        "x-forwarded-prefix: /forge",
        "forwarded: for=127.0.0.1;proto=http",
        "host: demo.example.test",
    ] {
        assert!(f.to_ascii_lowercase().contains(kept), "no {kept:?} in\n{f}");
    }
    // The response heads carry the same names (values such as the date differ).
    let names = |r: &Resp| {
        let mut v: Vec<String> = r.headers.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&fast), names(&slow));
}

/// A raw upstream that answers by path, with every framing a server may use. Counts the
/// connections it accepts.
async fn framing_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = accepted.clone();
    let addr = spawn_server(move |mut s: TcpStream| {
        n.fetch_add(1, SeqCst);
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end);
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                if head.starts_with("HEAD ") {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
                        .await;
                    continue;
                }
                let parts: Vec<&[u8]> = match path.as_str() {
                    "/len" => vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"],
                    "/chunked" => vec![
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
                        b"lo\r\n6;x=y\r\n world\r",
                        b"\n0\r\nx-trailer: 1\r\n",
                        b"\r\n",
                    ],
                    "/early" => vec![
                        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                    ],
                    "/big" => {
                        let mut v = b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n".to_vec();
                        v.extend((0..300_000u32).map(|i| b'a' + (i % 26) as u8));
                        let _ = s.write_all(&v).await;
                        continue;
                    }
                    "/nolen" => {
                        let _ = s
                            .write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close",
                            )
                            .await;
                        return;
                    }
                    "/garbage" => vec![b"SOMETHING ELSE\r\n\r\n"],
                    _ => vec![b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"],
                };
                for p in parts {
                    if s.write_all(p).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            }
        }
    })
    .await;
    (addr, accepted)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn call(c: &mut Sender, method: &str, path: &str) -> (u16, http::HeaderMap, Bytes) {
    c.ready().await.unwrap();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("/forge{path}"))
        .header("host", "demo.example.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

#[tokio::test]
async fn every_framing_arrives_whole_on_one_kept_alive_connection() {
    let (up, accepted) = framing_upstream().await;
    let t = start(&config(up)).await;
    let stream = TcpStream::connect(t.http).await.unwrap();
    let (mut c, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let before = fast_count(&t);
    let (s, h, b) = call(&mut c, "GET", "/len").await;
    assert_eq!((s, &b[..]), (200, &b"hello"[..]));
    assert!(h.contains_key("date"), "{h:?}");
    let (s, h, b) = call(&mut c, "GET", "/chunked").await;
    assert_eq!((s, &b[..]), (200, &b"hello world"[..]), "{h:?}");
    let (s, h, b) = call(&mut c, "HEAD", "/len").await;
    assert_eq!((s, b.len()), (200, 0));
    assert_eq!(h.get("content-length").unwrap(), "5");
    let (s, _, b) = call(&mut c, "GET", "/early").await;
    assert_eq!(
        (s, &b[..]),
        (200, &b"ok"[..]),
        "informational responses are dropped"
    );
    let (s, _, b) = call(&mut c, "GET", "/big").await;
    assert_eq!((s, b.len()), (200, 300_000));
    assert!(b
        .iter()
        .enumerate()
        .all(|(i, c)| *c == b'a' + (i % 26) as u8));
    let (s, _, b) = call(&mut c, "GET", "/len").await;
    assert_eq!((s, &b[..]), (200, &b"hello"[..]));
    assert_eq!(
        accepted.load(SeqCst),
        1,
        "one upstream connection for all of them"
    );
    assert_eq!(fast_count(&t), before + 6);
    // A body that ends at the upstream's close: the client is told the connection closes.
    let (s, h, b) = call(&mut c, "GET", "/nolen").await;
    assert_eq!((s, &b[..]), (200, &b"until close"[..]));
    assert_eq!(h.get("connection").unwrap(), "close");
}

#[tokio::test]
async fn a_garbled_upstream_answer_is_a_502_counted_as_other() {
    let (up, _) = framing_upstream().await;
    let t = start(&config(up)).await;
    let r = send(t.http, get("demo.example.test", "/forge/garbage")).await;
    assert_eq!(r.status, 502);
    assert!(
        r.text().contains("<b>demo</b>") && r.text().contains("/forge/"),
        "{}",
        r.text()
    );
    let m = t.gw.metrics().render();
    assert!(
        m.contains("edge_upstream_errors_total{project=\"demo\",mount=\"forge\",kind=\"other\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let echo = echo_upstream().await;
    let t = start(&config(echo)).await;
    let out = raw(
        t.http,
        b"GET /forge/one HTTP/1.1\r\nHost: demo.example.test\r\n\r\n\
          GET /forge/two HTTP/1.1\r\nHost: demo.example.test\r\n\r\n\
          POST /forge/three HTTP/1.1\r\nHost: demo.example.test\r\nContent-Length: 3\r\n\r\nabc\
          GET /forge/four HTTP/1.1\r\nHost: demo.example.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let at = |s: &str| out.find(s).unwrap_or_else(|| panic!("no {s:?} in\n{out}"));
    assert!(at("GET /one") < at("GET /two"));
    assert!(at("GET /two") < at("POST /three"));
    assert!(at("POST /three") < at("GET /four"));
    assert_eq!(out.matches("HTTP/1.1 200").count(), 4, "{out}");
}

#[tokio::test]
async fn a_client_that_closes_mid_response_costs_nothing_after() {
    let (up, _) = framing_upstream().await;
    let t = start(&config(up)).await;
    let mut s = TcpStream::connect(t.http).await.unwrap();
    s.write_all(b"GET /forge/big HTTP/1.1\r\nHost: demo.example.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let _ = s.read(&mut buf).await.unwrap();
    drop(s);
    // The gateway still serves.
    let r = send(t.http, get("demo.example.test", "/forge/len")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
}
