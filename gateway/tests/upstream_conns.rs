//! Upstream connections: an HTTP/1.1 client connection reuses one upstream connection for all
//! its requests; an upstream that closed an idle connection costs the next request nothing; the
//! number of upstream connections follows the number of client connections.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A keep-alive upstream on raw sockets that counts the connections it accepts. After each
/// response it waits `close_after` for the next request and closes the connection silently
/// (no `Connection: close`), as a server does when its keep-alive timeout passes.
async fn counting_upstream(close_after: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let (addr, accepted, _) = counting_upstream_open(close_after).await;
    (addr, accepted)
}

/// The same, also counting the connections still open.
async fn counting_upstream_open(
    close_after: Duration,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (n, o) = (accepted.clone(), open.clone());
    let addr = spawn_server(move |s: TcpStream| {
        let id = n.fetch_add(1, SeqCst) + 1;
        o.fetch_add(1, SeqCst);
        let o = o.clone();
        async move {
            serve_counted(s, id, close_after).await;
            o.fetch_sub(1, SeqCst);
        }
    })
    .await;
    (addr, accepted, open)
}

async fn serve_counted(mut s: TcpStream, id: usize, close_after: Duration) {
    {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            // Read one request head (and a Content-Length body, if any).
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let read = if buf.is_empty() {
                    tokio::time::timeout(close_after, s.read(&mut chunk)).await
                } else {
                    Ok(s.read(&mut chunk).await)
                };
                match read {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                    Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
            }
            let body = format!("conn {id} body {len}");
            buf.drain(..head_end + len);
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

async fn gateway(up: SocketAddr) -> TestGw {
    start(&format!(
        r#"domain = "example.test"
{listen}
[[projects]]
name = "demo"
  [[projects.routes]]
  mount = "forge"
  upstream = "http://{up}"
"#,
        listen = listen(false)
    ))
    .await
}

/// One client connection to the gateway, for several requests.
async fn client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn call(
    c: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    body: &'static str,
) -> (u16, String) {
    c.ready().await.unwrap();
    let req = Request::builder()
        .method(method)
        .uri("/forge/x")
        .header("host", "demo.example.test")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let text =
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    (status, text)
}

#[tokio::test]
async fn one_client_connection_reuses_one_upstream_connection() {
    let (up, accepted) = counting_upstream(Duration::from_secs(30)).await;
    let gw = gateway(up).await;
    let mut c = client(gw.http).await;
    for _ in 0..5 {
        let (status, text) = call(&mut c, "GET", "").await;
        assert_eq!(status, 200);
        assert_eq!(text, "conn 1 body 0");
    }
    let (status, text) = call(&mut c, "POST", "hello").await;
    assert_eq!((status, text.as_str()), (200, "conn 1 body 5"));
    assert_eq!(accepted.load(SeqCst), 1);

    // A second client connection gets its own upstream connection.
    let mut c2 = client(gw.http).await;
    let (_, text) = call(&mut c2, "GET", "").await;
    assert_eq!(text, "conn 2 body 0");
    let (_, text) = call(&mut c, "GET", "").await;
    assert_eq!(text, "conn 1 body 0");
    assert_eq!(accepted.load(SeqCst), 2);
}

#[tokio::test]
async fn an_upstream_that_closed_an_idle_connection_costs_nothing() {
    // The upstream drops idle connections after 100 ms without saying so.
    let (up, accepted) = counting_upstream(Duration::from_millis(100)).await;
    let gw = gateway(up).await;
    let mut c = client(gw.http).await;
    assert_eq!(call(&mut c, "GET", "").await, (200, "conn 1 body 0".into()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The gateway notices the closed connection and dials again; the client sees no error,
    // with or without a request body.
    assert_eq!(call(&mut c, "GET", "").await, (200, "conn 2 body 0".into()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        call(&mut c, "POST", "abc").await,
        (200, "conn 3 body 3".into())
    );
    assert_eq!(accepted.load(SeqCst), 3);
}

#[tokio::test]
async fn upstream_connections_close_with_their_client_connection() {
    let (up, accepted, open) = counting_upstream_open(Duration::from_secs(30)).await;
    let gw = gateway(up).await;
    for i in 1..=3 {
        let mut c = client(gw.http).await;
        assert_eq!(call(&mut c, "GET", "").await.1, format!("conn {i} body 0"));
        drop(c);
    }
    assert_eq!(accepted.load(SeqCst), 3);
    // Each upstream connection is closed once its client's is: the upstream reads EOF on all.
    for _ in 0..100 {
        if open.load(SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open.load(SeqCst), 0, "upstream connections left open");
}
