//! Failures explained: upstream down (502), slow (504), body too large (413), a mount not
//! configured (503 naming the key); each with a log line that has the cause.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::Full;

async fn setup(echo: std::net::SocketAddr, dead: u16) -> TestGw {
    start(&format!(
        r#"domain = "example.test"
{listen}
[[projects]]
name = "demo"
  [[projects.routes]]
  mount = "forge"
  upstream = "http://127.0.0.1:{dead}"
  [[projects.routes]]
  mount = "ci"
  upstream = "http://{echo}"
  timeout = "300ms"
  max_body = "1KiB"
  [[projects.routes]]
  mount = "chat"
"#,
        listen = listen(false)
    ))
    .await
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "current_thread")]
async fn upstream_down_is_a_502_naming_project_and_mount_with_a_logged_cause() {
    let logs = Captured::default();
    let w = logs.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(sub);
    let echo = echo_upstream().await;
    let dead = closed_port();
    let t = setup(echo, dead).await;
    let r = send(t.http, get("demo.example.test", "/forge/x")).await;
    assert_eq!(r.status, 502);
    let body = r.text();
    assert!(
        body.contains("/forge/") && body.contains("<b>demo</b>"),
        "{body}"
    );
    assert!(
        !body.contains("Connection refused"),
        "causes go to the log, not to clients"
    );
    let log = logs.text();
    assert!(log.contains("upstream request failed"), "{log}");
    assert!(
        log.contains(&format!("127.0.0.1:{dead}")) && log.contains("onnection refused"),
        "{log}"
    );
    let m = t.gw.metrics().render();
    assert!(
        m.contains(
            "edge_upstream_errors_total{project=\"demo\",mount=\"forge\",kind=\"connect\"} 1"
        ),
        "{m}"
    );
    assert!(
        m.contains("edge_requests_total{project=\"demo\",mount=\"forge\",status=\"502\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn a_slow_upstream_is_a_504_after_the_route_timeout() {
    let echo = echo_upstream().await;
    let t = setup(echo, closed_port()).await;
    let start = std::time::Instant::now();
    let r = send(t.http, get("demo.example.test", "/ci/slow?ms=3000")).await;
    assert_eq!(r.status, 504);
    assert!(
        r.text().contains("projects[0].routes[1].timeout"),
        "{}",
        r.text()
    );
    let took = start.elapsed();
    assert!(
        took < std::time::Duration::from_millis(2500),
        "took {took:?}"
    );
    let r = send(t.http, get("demo.example.test", "/ci/slow?ms=10")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn bodies_over_the_route_limit_get_413_declared_or_streamed() {
    let echo = echo_upstream().await;
    let t = setup(echo, closed_port()).await;
    let req = http::Request::post("/ci/count")
        .header("host", "demo.example.test")
        .body(Full::new(Bytes::from(vec![0u8; 2048])))
        .unwrap();
    let r = send(t.http, req).await;
    assert_eq!(r.status, 413);
    assert!(r.text().contains("max_body"));
    // Chunked, so the size is only known while it streams.
    let raw_req = format!(
        "POST /ci/count HTTP/1.1\r\nHost: demo.example.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n800\r\n{}\r\n800\r\n{}\r\n0\r\n\r\n",
        "a".repeat(2048),
        "b".repeat(2048)
    );
    let out = raw(
        t.http,
        raw_req.as_bytes(),
        std::time::Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    let req = http::Request::post("/ci/count")
        .header("host", "demo.example.test")
        .body(Full::new(Bytes::from(vec![0u8; 1000])))
        .unwrap();
    let r = send(t.http, req).await;
    assert_eq!((r.status, r.text().as_str()), (200, "1000"));
}

#[tokio::test]
async fn a_mount_with_no_upstream_names_the_key_to_set() {
    let echo = echo_upstream().await;
    let t = setup(echo, closed_port()).await;
    let r = send(t.http, get("demo.example.test", "/chat/")).await;
    assert_eq!(r.status, 503);
    let body = r.text();
    assert!(body.contains("projects[0].routes[2].upstream"), "{body}");
    assert!(body.contains("edge reload"), "{body}");
}
