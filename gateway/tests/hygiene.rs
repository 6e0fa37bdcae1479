//! Header hygiene through real sockets: client claims dropped and rebuilt, the public Host
//! kept, X-Forwarded-Prefix on strip mounts, untrusted mounts stripped of credentials.

mod common;
use bytes::Bytes;
use common::*;
use http_body_util::Full;

fn config(echo: std::net::SocketAddr) -> String {
    format!(
        r#"domain = "example.test"
{listen}
[[projects]]
name = "demo"
  [[projects.routes]]
  mount = "forge"
  upstream = "http://{echo}"
  [[projects.routes]]
  mount = "ci"
  upstream = "http://{echo}"
  prefix = "keep"
  [[projects.routes]]
  mount = "staging"
  upstream = "http://{echo}"
"#,
        listen = listen(false)
    )
}

fn lines(body: &str) -> Vec<String> {
    body.lines().map(str::to_string).collect()
}

#[tokio::test]
async fn client_forwarding_and_identity_headers_are_dropped_and_rebuilt() {
    let echo = echo_upstream().await;
    let t = start(&config(echo)).await;
    let req = http::Request::get("/forge/x")
        .header("host", "demo.example.test")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.com")
        .header("x-forwarded-prefix", "/evil")
        .header("forwarded", "for=6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("x-forwarded-user", "admin")
        .header("x-forwarded-email", "admin@example.test")
        .header("x-auth-request-user", "admin")
        .header("remote-user", "admin")
        .header("x-webauth-user", "admin")
        .header("x-kept", "yes")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(t.http, req).await;
    let body = lines(&r.text());
    assert_eq!(body[0], "GET /x");
    let has = |l: &str| body.iter().any(|b| b == l);
    assert!(has("x-forwarded-for: 127.0.0.1"), "{body:#?}");
    assert!(has("x-real-ip: 127.0.0.1"), "{body:#?}");
    assert!(has("x-forwarded-proto: http"), "{body:#?}");
    assert!(has("x-forwarded-host: demo.example.test"), "{body:#?}");
    assert!(has("x-forwarded-prefix: /forge"), "{body:#?}");
    assert!(
        has("host: demo.example.test"),
        "the public Host is kept: {body:#?}"
    );
    assert!(has("forwarded: for=127.0.0.1;proto=http"), "{body:#?}");
    assert!(has("x-kept: yes"));
    for l in &body {
        assert!(
            !l.contains("6.6.6.6") && !l.contains("evil") && !l.contains("admin"),
            "client claim leaked: {l}"
        );
    }
}

#[tokio::test]
async fn connection_listed_headers_cannot_remove_rebuilt_ones() {
    // CVE-2024-45410: `Connection: X-Forwarded-For` must not make the gateway drop its own.
    let echo = echo_upstream().await;
    let t = start(&config(echo)).await;
    let raw_req = b"GET /forge/x HTTP/1.1\r\nHost: demo.example.test\r\nConnection: close, X-Forwarded-For, X-Forwarded-Proto, X-Real-IP, X-Forwarded-Prefix, Forwarded, X-Custom\r\nX-Custom: gone\r\nX-Forwarded-User: mallory\r\n\r\n";
    let out = raw(t.http, raw_req, std::time::Duration::from_secs(5)).await;
    let out = out.to_ascii_lowercase();
    for want in [
        "x-forwarded-for: 127.0.0.1",
        "x-forwarded-proto: http",
        "x-real-ip: 127.0.0.1",
        "x-forwarded-prefix: /forge",
        "forwarded: for=127.0.0.1",
    ] {
        assert!(out.contains(want), "missing {want} in {out}");
    }
    assert!(!out.contains("x-custom"), "{out}");
    assert!(!out.contains("mallory"), "{out}");
}

#[tokio::test]
async fn keep_mounts_get_no_forwarded_prefix_and_https_says_https() {
    let echo = echo_upstream().await;
    let t = start(&config(echo)).await;
    let r = send_tls(
        t.https,
        "demo.example.test",
        &t.ca_pem,
        true,
        get("demo.example.test", "/ci/api"),
    )
    .await;
    assert_eq!(r.version, http::Version::HTTP_2);
    let body = r.text();
    assert!(body.starts_with("GET /ci/api\n"), "{body}");
    assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
    assert!(
        body.contains("host: demo.example.test\n"),
        "HTTP/2 :authority becomes Host: {body}"
    );
    assert!(!body.contains("x-forwarded-prefix"), "{body}");
}

#[tokio::test]
async fn staging_never_receives_cookies_or_authorization_and_is_sandboxed() {
    let echo = echo_upstream().await;
    let t = start(&config(echo)).await;
    let req = http::Request::get("/staging/cookie")
        .header("host", "demo.example.test")
        .header("cookie", "session=secret")
        .header("authorization", "Bearer secret")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(t.http, req).await;
    assert_eq!(r.status, 200);
    assert!(!r.text().contains("secret"), "{}", r.text());
    assert_eq!(
        r.header("content-security-policy"),
        Some("sandbox allow-scripts allow-forms allow-popups")
    );
    assert!(
        r.header("set-cookie").is_none(),
        "staging may not set cookies on the shared origin"
    );
    // Other mounts do get them.
    let req = http::Request::get("/forge/cookie")
        .header("host", "demo.example.test")
        .header("cookie", "session=secret")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(t.http, req).await;
    assert!(r.text().contains("cookie: session=secret"));
    assert!(r.header("set-cookie").is_some());
    assert!(r.header("content-security-policy").is_none());
}
