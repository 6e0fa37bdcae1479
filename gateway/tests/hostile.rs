//! Hostile clients: ambiguous framing, oversized heads, slow clients, connection floods, HTTP/2
//! abuse, and attempts to use edge as an open proxy.

mod common;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn setup() -> TestGw {
    let echo = echo_upstream().await;
    start(&format!(
        r#"domain = "example.test"
{listen}
[limits]
header_read_timeout = "1s"
body_idle_timeout = "1s"
max_connections_per_client = 4
max_header_bytes = "16KiB"
max_headers = 50
[[projects]]
name = "demo"
  [[projects.routes]]
  mount = "forge"
  upstream = "http://{echo}"
"#,
        listen = listen(false)
    ))
    .await
}

fn status_line(out: &str) -> &str {
    out.lines().next().unwrap_or("")
}

#[tokio::test]
async fn ambiguous_framing_is_rejected_and_never_forwarded() {
    let t = setup().await;
    let w = Duration::from_secs(5);
    let bad: [(&str, &str); 4] = [
        ("differing duplicate Content-Length", "POST /forge/x HTTP/1.1\r\nHost: demo.example.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        ("invalid Content-Length", "POST /forge/x HTTP/1.1\r\nHost: demo.example.test\r\nContent-Length: 3x\r\n\r\nabc"),
        ("obsolete line folding", "GET /forge/x HTTP/1.1\r\nHost: demo.example.test\r\nX-Folded: a\r\n b\r\n\r\n"),
        ("Transfer-Encoding other than chunked", "POST /forge/x HTTP/1.1\r\nHost: demo.example.test\r\nTransfer-Encoding: gzip\r\n\r\nabc"),
    ];
    for (what, req) in bad {
        let out = raw(t.http, req.as_bytes(), w).await;
        assert!(
            status_line(&out).starts_with("HTTP/1.1 400"),
            "{what}: {out}"
        );
        assert!(!out.contains("x-upstream"), "{what} was forwarded");
    }
}

#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_smuggle_a_request() {
    // hyper follows RFC 9112 §6.3: Transfer-Encoding wins, Content-Length is dropped, and the
    // connection is closed after the response, so the bytes after the chunked body are never
    // read as a second request.
    let t = setup().await;
    let req = "POST /forge/first HTTP/1.1\r\nHost: demo.example.test\r\nContent-Length: 60\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /forge/smuggled HTTP/1.1\r\nHost: demo.example.test\r\n\r\n";
    let out = raw(t.http, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
    assert!(!out.contains("smuggled"), "{out}");
    assert!(
        !out.to_ascii_lowercase().contains("content-length: 60"),
        "the ambiguous length was forwarded: {out}"
    );
}

#[tokio::test]
async fn oversized_heads_get_431() {
    let t = setup().await;
    let big = format!(
        "GET /forge/x HTTP/1.1\r\nHost: demo.example.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let out = raw(t.http, big.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        status_line(&out).starts_with("HTTP/1.1 431"),
        "{}",
        status_line(&out)
    );
    let mut many = String::from("GET /forge/x HTTP/1.1\r\nHost: demo.example.test\r\n");
    for i in 0..80 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let out = raw(t.http, many.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        status_line(&out).starts_with("HTTP/1.1 431"),
        "{}",
        status_line(&out)
    );
}

#[tokio::test]
async fn clients_that_dribble_headers_are_cut_off() {
    let t = setup().await;
    let mut s = tokio::net::TcpStream::connect(t.http).await.unwrap();
    s.write_all(b"GET /forge/x HTTP/1.1\r\nHost: demo.example.test\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let mut closed = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if s.write_all(b"X-Slow: a\r\n").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        // 408 or a plain close: either way the connection ends.
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a slowloris client was kept for {:?}",
        start.elapsed()
    );
    assert!(start.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn clients_that_stall_a_body_are_cut_off() {
    let t = setup().await;
    let mut s = tokio::net::TcpStream::connect(t.http).await.unwrap();
    s.write_all(b"POST /forge/count HTTP/1.1\r\nHost: demo.example.test\r\nContent-Length: 100\r\n\r\n0123456789").await.unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(status_line(&out).starts_with("HTTP/1.1 408"), "{out}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn connections_per_client_are_capped() {
    let t = setup().await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::TcpStream::connect(t.http).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fifth = tokio::net::TcpStream::connect(t.http).await.unwrap();
    let _ = fifth
        .write_all(b"GET /forge/x HTTP/1.1\r\nHost: demo.example.test\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(3), fifth.read_to_end(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "the fifth connection was served: {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(t
        .gw
        .metrics()
        .render()
        .contains("edge_connections_rejected_total 1"));
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = send(t.http, get("demo.example.test", "/forge/x")).await;
    assert_eq!(r.status, 200, "a freed slot is usable again");
}

#[tokio::test]
async fn absolute_form_and_connect_cannot_make_edge_an_open_proxy() {
    let t = setup().await;
    let w = Duration::from_secs(5);
    let out = raw(t.http, b"GET http://127.0.0.1:9/x HTTP/1.1\r\nHost: demo.example.test\r\nConnection: close\r\n\r\n", w).await;
    assert!(status_line(&out).starts_with("HTTP/1.1 404"), "{out}");
    let out = raw(
        t.http,
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
        w,
    )
    .await;
    assert!(status_line(&out).starts_with("HTTP/1.1 405"), "{out}");
    // Absolute-form naming a project goes to that project's configured upstream, nowhere else.
    let out = raw(t.http, b"GET http://demo.example.test/forge/y HTTP/1.1\r\nHost: evil.com\r\nConnection: close\r\n\r\n", w).await;
    assert!(status_line(&out).starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("GET /y\n") && out.contains("host: demo.example.test"),
        "{out}"
    );
}

#[tokio::test]
async fn http2_rapid_reset_is_bounded_and_the_server_stays_up() {
    let t = setup().await;
    let tcp = tokio::net::TcpStream::connect(t.http).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn_task = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    // One ordinary request first, so the server's SETTINGS have arrived.
    let (resp, _) = client
        .send_request(
            http::Request::get("http://demo.example.test/forge/x")
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    assert_eq!(
        client.current_max_send_streams(),
        128,
        "max concurrent streams advertised"
    );
    let mut client = client.ready().await.unwrap();
    let start = Instant::now();
    let mut sent = 0;
    for _ in 0..20_000 {
        let req = http::Request::get("http://demo.example.test/forge/slow?ms=5000")
            .body(())
            .unwrap();
        match client.send_request(req, true) {
            Ok((resp, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                drop(resp);
                sent += 1;
            }
            Err(_) => break,
        }
        match tokio::time::timeout(Duration::from_secs(2), client.clone().ready()).await {
            Ok(Ok(c)) => client = c,
            _ => break,
        }
    }
    let took = start.elapsed();
    eprintln!("{sent} streams opened and reset in {took:?}");
    // Either the server tolerated every reset cheaply or it closed the connection; both are
    // bounded. It must not take long, and it must keep serving others.
    assert!(
        took < Duration::from_secs(30),
        "{sent} resets took {took:?}"
    );
    conn_task.abort();
    let r = send(t.http, get("demo.example.test", "/forge/x")).await;
    assert_eq!(r.status, 200);
}
