//! Streaming through the gateway: WebSockets that idle, SSE without buffering, a 1 GiB upload
//! in bounded memory, and gRPC over h2c with trailers.

mod common;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::tungstenite::Message;

fn config(
    echo: std::net::SocketAddr,
    ws: std::net::SocketAddr,
    grpc: std::net::SocketAddr,
) -> String {
    format!(
        r#"domain = "example.test"
{listen}
[[projects]]
name = "demo"
  [[projects.routes]]
  mount = "forge"
  upstream = "http://{echo}"
  timeout = "1s"
  [[projects.routes]]
  mount = "live"
  upstream = "http://{ws}"
  timeout = "1s"
  [[projects.routes]]
  mount = "agent"
  upstream = "h2c://{grpc}"
  timeout = "1s"
  root_paths = ["/pkg.Svc/"]
"#,
        listen = listen(false)
    )
}

async fn setup() -> TestGw {
    let echo = echo_upstream().await;
    let ws = ws_upstream().await;
    let grpc = grpc_upstream().await;
    start(&config(echo, ws, grpc)).await
}

#[tokio::test]
async fn websocket_passes_through_and_outlives_the_route_timeout_idle() {
    let t = setup().await;
    let tcp = tokio::net::TcpStream::connect(t.http).await.unwrap();
    let url = format!("ws://demo.example.test:{}/live/socket?x=1", t.http.port());
    let (mut ws, resp) = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("upgrade through the gateway");
    assert_eq!(resp.status(), 101);
    let first = ws.next().await.unwrap().unwrap();
    assert_eq!(
        first,
        Message::text("path /socket?x=1"),
        "prefix stripped for the upgrade too"
    );
    // Idle well past the route's 1 s timeout: the socket must stay open.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ws.send(Message::text("still there?")).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::text("still there?"));
    let m = t.gw.metrics().render();
    assert!(m.contains("edge_open_websockets 1"), "{m}");
}

#[tokio::test]
async fn websocket_over_tls() {
    let t = setup().await;
    let tls = tls_connect(t.https, "demo.example.test", &t.ca_pem, &[b"http/1.1"]).await;
    let url = "wss://demo.example.test/live/tls";
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("path /tls")
    );
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );
}

#[tokio::test]
async fn server_sent_events_are_not_buffered() {
    let t = setup().await;
    let resp = open(t.http, get("demo.example.test", "/forge/sse")).await;
    assert_eq!(resp.status(), 200);
    let start = Instant::now();
    let mut body = resp.into_body();
    let first = next_data(&mut body).await;
    let first_at = start.elapsed();
    assert_eq!(&first[..], b"data: 1\n\n");
    let second = next_data(&mut body).await;
    assert_eq!(&second[..], b"data: 2\n\n");
    // The upstream waits 300 ms between the events; a buffering proxy delivers both together.
    assert!(
        first_at < Duration::from_millis(200),
        "first event held back for {first_at:?}"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "events arrived together"
    );
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_one_gib_upload_streams_through_in_bounded_memory() {
    let t = setup().await;
    const CHUNK: usize = 256 * 1024;
    const TOTAL: u64 = 1 << 30;
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let n = (TOTAL / CHUNK as u64) as usize;
    let stream = futures_util::stream::iter(
        (0..n).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
    );
    let req = http::Request::post("/forge/count")
        .header("host", "demo.example.test")
        .body(StreamBody::new(stream))
        .unwrap();
    let before = rss_kib();
    let tcp = tokio::net::TcpStream::connect(t.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    // Sample memory while the upload runs.
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let p2 = peak.clone();
    let sampler = tokio::spawn(async move {
        loop {
            p2.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let resp = tokio::time::timeout(Duration::from_secs(120), sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    sampler.abort();
    assert_eq!(status, 200);
    assert_eq!(body, TOTAL.to_string(), "the upstream received every byte");
    let grew = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(before);
    // Client, gateway and upstream share this process; buffering the body anywhere would add
    // a GiB.
    assert!(
        grew < 64 * 1024,
        "memory grew by {grew} KiB during a 1 GiB upload"
    );
}

// ------------------------------------------------------------------ gRPC over h2c

/// A gRPC-shaped h2c server: `/pkg.Svc/Unary` answers one message, `/pkg.Svc/Stream` three
/// (the first after 1.5 s, past the route timeout), `/pkg.Svc/Fail` a trailers-only error.
/// Status always travels in trailers, as gRPC does.
async fn grpc_upstream() -> std::net::SocketAddr {
    spawn_server(|s| async move {
        let svc =
            hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let te = req
                    .headers()
                    .get("te")
                    .map(|v| v.to_str().unwrap_or("").to_string());
                let path = req.uri().path().to_string();
                let (tx, rx) = tokio::sync::mpsc::channel::<Frame<Bytes>>(8);
                tokio::spawn(async move {
                    let msg = |s: &str| {
                        let mut b = vec![0u8];
                        b.extend_from_slice(&(s.len() as u32).to_be_bytes());
                        b.extend_from_slice(s.as_bytes());
                        Frame::data(Bytes::from(b))
                    };
                    let mut trailers = http::HeaderMap::new();
                    match path.as_str() {
                        "/pkg.Svc/Unary" => {
                            let _ = tx.send(msg("hello")).await;
                            trailers.insert("grpc-status", "0".parse().unwrap());
                        }
                        "/pkg.Svc/Stream" => {
                            tokio::time::sleep(Duration::from_millis(1500)).await;
                            for m in ["one", "two", "three"] {
                                let _ = tx.send(msg(m)).await;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            trailers.insert("grpc-status", "0".parse().unwrap());
                        }
                        _ => {
                            trailers.insert("grpc-status", "5".parse().unwrap());
                            trailers.insert("grpc-message", "not found".parse().unwrap());
                        }
                    }
                    let _ = tx.send(Frame::trailers(trailers)).await;
                });
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|f| (Ok::<_, Infallible>(f), rx))
                });
                let mut r = http::Response::new(StreamBody::new(stream));
                r.headers_mut()
                    .insert("content-type", "application/grpc".parse().unwrap());
                if let Some(te) = te {
                    r.headers_mut().insert("x-saw-te", te.parse().unwrap());
                }
                Ok::<_, Infallible>(r)
            });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(s), svc)
            .await;
    })
    .await
}

fn grpc_request(path: &str) -> http::Request<Full<Bytes>> {
    let mut body = vec![0u8, 0, 0, 0, 2];
    body.extend_from_slice(b"hi");
    http::Request::post(format!("https://demo.example.test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

#[tokio::test]
async fn grpc_over_h2c_carries_messages_and_trailers_end_to_end() {
    let t = setup().await;
    let tls = tls_connect(t.https, "demo.example.test", &t.ca_pem, &[b"h2"]).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);

    let resp = sender
        .send_request(grpc_request("/pkg.Svc/Unary"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-saw-te"],
        "trailers",
        "TE: trailers reaches gRPC servers"
    );
    let c = resp.into_body().collect().await.unwrap();
    assert_eq!(c.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(&c.to_bytes()[5..], b"hello");

    // Server streaming, first message after 1.5 s: past the route timeout, which h2c routes ignore.
    let resp = sender
        .send_request(grpc_request("/pkg.Svc/Stream"))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut msgs = Vec::new();
    let mut trailers = None;
    while let Some(f) = body.frame().await {
        let f = f.unwrap();
        match f.into_data() {
            Ok(d) => msgs.push(String::from_utf8_lossy(&d[5..]).into_owned()),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    assert_eq!(msgs, ["one", "two", "three"]);
    assert_eq!(trailers.unwrap()["grpc-status"], "0");

    let resp = sender
        .send_request(grpc_request("/pkg.Svc/Fail"))
        .await
        .unwrap();
    let c = resp.into_body().collect().await.unwrap();
    let tr = c.trailers().unwrap();
    assert_eq!(
        (
            tr["grpc-status"].to_str().unwrap(),
            tr["grpc-message"].to_str().unwrap()
        ),
        ("5", "not found")
    );
}
