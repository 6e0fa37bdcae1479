//! Operations: admin endpoints, metrics, access logs, and reloads that swap the route table
//! while WebSockets and downloads stay open.

mod common;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn config(forge: std::net::SocketAddr, ws: std::net::SocketAddr, with_live: bool) -> String {
    let live = if with_live {
        format!("  [[projects.routes]]\n  mount = \"live\"\n  upstream = \"http://{ws}\"\n")
    } else {
        String::new()
    };
    // The second config also keeps /forge's prefix, so the swap is visible upstream.
    let prefix = if with_live { "strip" } else { "keep" };
    format!(
        "domain = \"example.test\"\n{listen}\n[[projects]]\nname = \"demo\"\n  [[projects.routes]]\n  mount = \"forge\"\n  upstream = \"http://{forge}\"\n  prefix = \"{prefix}\"\n{live}",
        listen = listen(false)
    )
}

#[tokio::test]
async fn admin_serves_health_readiness_and_prometheus_metrics() {
    let echo = echo_upstream().await;
    let ws = ws_upstream().await;
    let t = start(&config(echo, ws, true)).await;
    let _ = send(t.http, get("demo.example.test", "/forge/a")).await;
    let _ = send(t.http, get("demo.example.test", "/nope")).await;
    let r = send(t.admin, get("localhost", "/healthz")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    let r = send(t.admin, get("localhost", "/readyz")).await;
    assert_eq!(r.status, 200);
    let r = send(t.admin, get("localhost", "/metrics")).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let m = r.text();
    for want in [
        "edge_requests_total{project=\"demo\",mount=\"forge\",status=\"200\"} 1",
        "edge_requests_total{project=\"demo\",mount=\"\",status=\"404\"} 1",
        "edge_request_duration_seconds_count{project=\"demo\",mount=\"forge\"} 1",
        "# TYPE edge_open_connections gauge",
        "# TYPE edge_open_websockets gauge",
        "# TYPE edge_upstream_errors_total counter",
    ] {
        assert!(m.contains(want), "missing {want}:\n{m}");
    }
    t.gw.start_draining();
    let r = send(t.admin, get("localhost", "/readyz")).await;
    assert_eq!(r.status, 503, "a draining gateway is not ready");
    let r = send(t.admin, get("localhost", "/reload")).await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn reload_swaps_routes_while_websockets_and_downloads_continue() {
    let echo = echo_upstream().await;
    let ws = ws_upstream().await;
    let t = start(&config(echo, ws, true)).await;

    // A WebSocket and a streaming download, both open across the reload.
    let tcp = tokio::net::TcpStream::connect(t.http).await.unwrap();
    let (mut sock, _) = tokio_tungstenite::client_async("ws://demo.example.test/live/x", tcp)
        .await
        .unwrap();
    assert_eq!(
        sock.next().await.unwrap().unwrap(),
        Message::text("path /x")
    );
    let resp = open(t.http, get("demo.example.test", "/forge/sse")).await;
    let mut download = resp.into_body();
    assert_eq!(&next_data(&mut download).await[..], b"data: 1\n\n");

    // New config: /forge goes elsewhere, /live is gone.
    t.reload(&config(echo, ws, false));

    let r = send(t.http, get("demo.example.test", "/live/x")).await;
    assert_eq!(r.status, 404, "the removed mount is gone for new requests");
    let r = send(t.http, get("demo.example.test", "/forge/x")).await;
    assert_eq!(r.status, 200);
    assert!(
        r.text().starts_with("GET /forge/x\n"),
        "the new route table serves: {}",
        r.text()
    );
    // The download finishes and the socket still echoes.
    assert_eq!(&next_data(&mut download).await[..], b"data: 2\n\n");
    sock.send(Message::text("after reload")).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sock.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m, Message::text("after reload"));
    assert!(t.gw.metrics().render().contains("edge_reloads_total 1"));
}

#[tokio::test]
async fn a_bad_reload_is_refused_and_the_old_routes_stay() {
    let echo = echo_upstream().await;
    let ws = ws_upstream().await;
    let t = start(&config(echo, ws, true)).await;
    let mut cfg = edge_routing::Config::from_toml(
        &config(echo, ws, true)
            .replace("@HTTPS@", "127.0.0.1:1")
            .replace("@HTTP@", "127.0.0.1:2")
            .replace("@ADMIN@", "127.0.0.1:3"),
    )
    .unwrap();
    cfg.projects[0].routes[0].target = edge_routing::RouteTarget::Static("/nonexistent".into());
    let err = t.gw.reload(cfg, t.dir.path(), &[]).unwrap_err();
    assert!(
        err.to_string().contains("projects[0].routes[0].root"),
        "{err}"
    );
    let r = send(t.http, get("demo.example.test", "/forge/x")).await;
    assert_eq!(r.status, 200, "the old routes still serve");
    assert!(t
        .gw
        .metrics()
        .render()
        .contains("edge_reload_failures_total 1"));
}

fn with_log(config: &str, log: &str) -> String {
    config.replacen("[[projects]]", &format!("[log]\n{log}\n[[projects]]"), 1)
}

#[tokio::test]
async fn access_log_lines_are_structured_and_leave_out_query_strings() {
    let echo = echo_upstream().await;
    let ws = ws_upstream().await;
    let t = start(&with_log(
        &config(echo, ws, true),
        "format = \"json\"\naccess_file = \"access.log\"",
    ))
    .await;
    let req = http::Request::get("/forge/login?code=SECRETCODE")
        .header("host", "demo.example.test")
        .header("cookie", "session=SECRETCOOKIE")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let _ = send(t.http, req).await;
    t.gw.flush_logs(Duration::from_secs(10));
    // Relative to the config's directory.
    let text = std::fs::read_to_string(t.dir.path().join("access.log")).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("edge::access"))
        .unwrap_or_else(|| panic!("no access line in {text}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/forge/login");
    assert_eq!(v["status"], 200);
    assert_eq!(v["host"], "demo.example.test");
    assert_eq!(v["route"], "demo/forge");
    assert_eq!(v["client"], "127.0.0.1");
    assert!(v["micros"].as_u64().is_some(), "{line}");
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
    assert!(
        !text.contains("SECRETCODE") && !text.contains("SECRETCOOKIE"),
        "secrets in the log: {text}"
    );
}

#[tokio::test]
async fn the_access_log_file_is_reopened_on_request_and_follows_reloads() {
    let echo = echo_upstream().await;
    let ws = ws_upstream().await;
    let cfg = with_log(&config(echo, ws, true), "access_file = \"a.log\"");
    let t = start(&cfg).await;
    let a = t.dir.path().join("a.log");
    let _ = send(t.http, get("demo.example.test", "/forge/one")).await;
    // logrotate: rename, then SIGUSR1 (which `edge up` turns into this call).
    std::fs::rename(&a, t.dir.path().join("a.log.1")).unwrap();
    t.gw.reopen_logs();
    // Lines pending at the signal go to the old file; once it is handled, to the new one.
    t.gw.flush_logs(Duration::from_secs(10));
    let _ = send(t.http, get("demo.example.test", "/forge/two")).await;
    t.gw.flush_logs(Duration::from_secs(10));
    let old = std::fs::read_to_string(t.dir.path().join("a.log.1")).unwrap();
    let new = std::fs::read_to_string(&a).unwrap();
    assert!(
        old.contains("path=/forge/one") && !old.contains("/forge/two"),
        "{old}"
    );
    assert!(
        new.contains("path=/forge/two") && !new.contains("/forge/one"),
        "{new}"
    );
    // A reload that moves the log: the next line goes to the new file.
    let moved = with_log(&config(echo, ws, true), "access_file = \"b.log\"")
        .replace("@HTTPS@", "127.0.0.1:1")
        .replace("@HTTP@", "127.0.0.1:2")
        .replace("@ADMIN@", "127.0.0.1:3");
    t.gw.reload(
        edge_routing::Config::from_toml(&moved).unwrap(),
        t.dir.path(),
        &certs_for(&t.gw.config(), t.dir.path()).0,
    )
    .unwrap();
    let _ = send(t.http, get("demo.example.test", "/forge/three")).await;
    t.gw.flush_logs(Duration::from_secs(10));
    let b = std::fs::read_to_string(t.dir.path().join("b.log")).unwrap();
    assert!(b.contains("path=/forge/three"), "{b}");
    assert!(!std::fs::read_to_string(&a)
        .unwrap()
        .contains("/forge/three"));
    // A file that cannot be opened refuses the reload, naming the key; the old log stays.
    let bad = with_log(
        &config(echo, ws, true),
        "access_file = \"no/such/dir/c.log\"",
    )
    .replace("@HTTPS@", "127.0.0.1:1")
    .replace("@HTTP@", "127.0.0.1:2")
    .replace("@ADMIN@", "127.0.0.1:3");
    let err =
        t.gw.reload(
            edge_routing::Config::from_toml(&bad).unwrap(),
            t.dir.path(),
            &[],
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("log.access_file") && err.contains("c.log"),
        "{err}"
    );
    let r = send(t.admin, get("localhost", "/metrics")).await;
    assert!(
        r.text()
            .lines()
            .any(|l| l == "edge_access_log_dropped_total 0"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn certificates_swap_live_without_restarting_the_listener() {
    let echo = echo_upstream().await;
    let ws = ws_upstream().await;
    let t = start(&config(echo, ws, true)).await;
    let old_ca = t.ca_pem.clone();
    // A different CA (another state dir) issues the replacement.
    let other = tempfile::tempdir().unwrap();
    let cfg = t.gw.config();
    let (certs, new_ca) = certs_for(&cfg, other.path());
    assert_ne!(old_ca, new_ca);
    t.gw.set_certs(&certs).unwrap();
    let r = send_tls(
        t.https,
        "demo.example.test",
        &new_ca,
        false,
        get("demo.example.test", "/forge/x"),
    )
    .await;
    assert_eq!(r.status, 200, "new handshakes get the new certificate");
    let connector = tokio_rustls::TlsConnector::from(tls_config(&old_ca, &[b"http/1.1"]));
    let tcp = tokio::net::TcpStream::connect(t.https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("demo.example.test").unwrap();
    assert!(
        connector.connect(name, tcp).await.is_err(),
        "the old certificate is no longer served"
    );
}
