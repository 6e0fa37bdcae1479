//! Forward-auth against a generic auth server (shaped like oauth2-proxy's `/oauth2/auth`): what
//! the auth server is shown, what comes back on each verdict, the verdict cache, and failing
//! closed.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// What the auth server saw: one header map (lower-case names) per request, plus the body size.
type Seen = Arc<Mutex<Vec<(String, Vec<(String, String)>, usize)>>>;

async fn auth_server() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    let addr = spawn_server(move |s| {
        let seen = s2.clone();
        async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let seen = seen.clone();
                async move {
                    let target = req.uri().to_string();
                    let headers: Vec<(String, String)> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect();
                    let body = req.into_body().collect().await.unwrap().to_bytes().len();
                    let cookie = headers
                        .iter()
                        .find(|(k, _)| k == "cookie")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    let mode = headers
                        .iter()
                        .find(|(k, _)| k == "sec-fetch-mode")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    seen.lock().unwrap().push((target, headers, body));
                    let b = Response::builder();
                    let r = if cookie.contains("sid=good") {
                        b.status(202)
                            .header("x-forwarded-user", "alice")
                            .header("x-auth-request-email", "alice@example.test")
                            .body(Full::new(Bytes::new()))
                    } else if cookie.contains("sid=refresh") {
                        b.status(200)
                            .header("x-forwarded-user", "alice")
                            .header("set-cookie", "sid=good; Path=/; Secure; HttpOnly")
                            .body(Full::new(Bytes::new()))
                    } else if cookie.contains("sid=anon") {
                        // Allowed, but names nobody (and must not be cached).
                        b.status(200).body(Full::new(Bytes::new()))
                    } else if cookie.contains("sid=banned") {
                        b.status(403)
                            .header("content-type", "text/plain")
                            .body(Full::new(Bytes::from_static(b"banned\n")))
                    } else if mode == "navigate" {
                        b.status(302)
                            .header("location", "/oauth2/start?rd=%2Fforge%2F")
                            .header("set-cookie", "csrf=1; Path=/")
                            .body(Full::new(Bytes::new()))
                    } else {
                        b.status(401)
                            .header("www-authenticate", "Bearer")
                            .body(Full::new(Bytes::from_static(b"who are you?\n")))
                    };
                    Ok::<_, std::convert::Infallible>(r.unwrap())
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        }
    })
    .await;
    (addr, seen)
}

async fn setup() -> (TestGw, Seen) {
    let (auth, seen) = auth_server().await;
    let echo = echo_upstream().await;
    let ws = ws_upstream().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let t = start(&format!(
        r#"domain = "example.test"
{listen}
[[projects]]
name = "demo"
  [[projects.routes]]
  mount = "forge"
  upstream = "http://{echo}"
  auth = "forward"
  auth_url = "http://{auth}/oauth2/auth"
  auth_headers = ["X-Forwarded-User", "X-Auth-Request-Email"]
  auth_cache = "0s"
  [[projects.routes]]
  mount = "cached"
  upstream = "http://{echo}"
  auth = "forward"
  auth_url = "http://{auth}/oauth2/auth"
  auth_cache = "400ms"
  [[projects.routes]]
  mount = "down"
  upstream = "http://{echo}"
  auth = "forward"
  auth_url = "http://127.0.0.1:{dead_port}/oauth2/auth"
  [[projects.routes]]
  mount = "live"
  upstream = "http://{ws}"
  auth = "forward"
  auth_url = "http://{auth}/oauth2/auth"
  auth_cache = "0s"
  [[projects.routes]]
  mount = "open"
  upstream = "http://{echo}"
"#,
        listen = listen(false)
    ))
    .await;
    // A chat secret is loaded; it must never be shown to a third-party auth server.
    t.gw.set_forward_auth_secret("chat-only-secret").unwrap();
    (t, seen)
}

fn req(target: &str, cookie: Option<&str>, extra: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get(target).header("host", "demo.example.test:8443");
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn the_auth_server_sees_the_original_request_without_body_or_upgrade() {
    let (t, seen) = setup().await;
    let r = send(
        t.http,
        Request::post("/forge/repo/x?tab=1")
            .header("host", "demo.example.test:8443")
            .header("cookie", "sid=good; theme=dark")
            .header("authorization", "Bearer abc")
            .header("x-forwarded-uri", "/spoofed")
            .header("x-edge-auth-secret", "guess")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let (target, h, body) = &seen[0];
    assert_eq!(target, "/oauth2/auth");
    assert_eq!(*body, 0, "no body to the auth server");
    assert_eq!(header(h, "x-forwarded-method"), Some("POST"));
    assert_eq!(header(h, "x-forwarded-proto"), Some("http"));
    assert_eq!(
        header(h, "x-forwarded-host"),
        Some("demo.example.test:8443")
    );
    assert_eq!(
        header(h, "x-forwarded-uri"),
        Some("/forge/repo/x?tab=1"),
        "the original target, not the stripped one nor the client's claim"
    );
    assert_eq!(header(h, "cookie"), Some("sid=good; theme=dark"));
    assert_eq!(header(h, "authorization"), Some("Bearer abc"));
    assert_eq!(header(h, "upgrade"), None);
    assert_eq!(
        header(h, "x-edge-auth-secret"),
        None,
        "the chat's secret stays with the chat"
    );
    assert!(header(h, "x-forwarded-for").is_some());
}

#[tokio::test]
async fn allowed_requests_carry_the_identity_and_spoofed_identity_never_passes() {
    let (t, _) = setup().await;
    // The client claims to be root in both identity headers; the auth server names alice.
    let r = send(
        t.http,
        req(
            "/forge/x",
            Some("sid=good"),
            &[
                ("x-forwarded-user", "root"),
                ("x-auth-request-email", "root@x"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let body = r.text();
    assert!(body.contains("x-forwarded-user: alice\n"), "{body}");
    assert!(
        body.contains("x-auth-request-email: alice@example.test\n"),
        "{body}"
    );
    assert!(!body.contains("root"), "{body}");
    // Allowed without a name: the client's claim is still gone.
    let r = send(
        t.http,
        req(
            "/forge/x",
            Some("sid=anon"),
            &[("x-forwarded-user", "root")],
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(!r.text().contains("x-forwarded-user"), "{}", r.text());
    // A cookie the auth server refreshes reaches the browser.
    let r = send(t.http, req("/forge/x", Some("sid=refresh"), &[])).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("set-cookie"),
        Some("sid=good; Path=/; Secure; HttpOnly")
    );
}

#[tokio::test]
async fn refusals_are_relayed_by_request_type() {
    let (t, seen) = setup().await;
    let r = send(
        t.http,
        req("/forge/x", None, &[("sec-fetch-mode", "navigate")]),
    )
    .await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("/oauth2/start?rd=%2Fforge%2F"));
    assert_eq!(r.header("set-cookie"), Some("csrf=1; Path=/"));
    let r = send(t.http, req("/forge/x", None, &[("sec-fetch-mode", "cors")])).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(r.text(), "who are you?\n");
    let r = send(t.http, req("/forge/x", Some("sid=banned"), &[])).await;
    assert_eq!((r.status, r.text().as_str()), (403, "banned\n"));
    // None of these reached the upstream: the echo would have answered 200.
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_websocket_upgrade_is_refused_with_401_before_any_101() {
    let (t, seen) = setup().await;
    // A WebSocket handshake for which the auth server would answer a redirect.
    let out = raw(
        t.http,
        b"GET /live/socket HTTP/1.1\r\nHost: demo.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-Fetch-Mode: navigate\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert!(!out.contains("101"), "{out}");
    let h = seen.lock().unwrap()[0].1.clone();
    assert_eq!(header(&h, "upgrade"), None);
    assert_eq!(header(&h, "connection"), None);
    // With a session, the same handshake goes through.
    let tcp = tokio::net::TcpStream::connect(t.http).await.unwrap();
    let r = http::Request::builder()
        .uri("ws://demo.example.test/live/socket")
        .header("host", "demo.example.test")
        .header("cookie", "sid=good")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .body(())
        .unwrap();
    let (_, resp) = tokio_tungstenite::client_async(r, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
}

#[tokio::test]
async fn verdicts_are_cached_by_credentials_for_the_ttl() {
    let (t, seen) = setup().await;
    let count = || seen.lock().unwrap().len();
    for _ in 0..3 {
        assert_eq!(
            send(t.http, req("/cached/x", Some("sid=good"), &[]))
                .await
                .status,
            200
        );
    }
    assert_eq!(count(), 1, "one check for three requests");
    // Other credentials are checked on their own.
    let r = send(t.http, req("/cached/x", Some("sid=good; other=1"), &[])).await;
    assert_eq!(r.status, 200);
    assert_eq!(count(), 2);
    // A refusal is never cached.
    for _ in 0..2 {
        assert_eq!(send(t.http, req("/cached/x", None, &[])).await.status, 401);
    }
    assert_eq!(count(), 4);
    // Nor an anonymous pass.
    for _ in 0..2 {
        send(t.http, req("/cached/x", Some("sid=anon"), &[])).await;
    }
    assert_eq!(count(), 6);
    // After the TTL, the verdict is asked again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    send(t.http, req("/cached/x", Some("sid=good"), &[])).await;
    assert_eq!(count(), 7);
}

#[tokio::test]
async fn an_unreachable_auth_server_lets_nothing_through() {
    let (t, _) = setup().await;
    let r = send(t.http, req("/down/x", Some("sid=good"), &[])).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("could not be reached"), "{}", r.text());
    // Routes without auth are not affected.
    assert_eq!(send(t.http, req("/open/x", None, &[])).await.status, 200);
}

#[tokio::test]
async fn the_chat_cookie_never_reaches_other_mounts() {
    let (t, _) = setup().await;
    let r = send(
        t.http,
        req(
            "/open/x",
            Some("a=1; __Host-edge-chat=secret; __Secure-edge-chat=secret2; b=2"),
            &[],
        ),
    )
    .await;
    let body = r.text();
    assert!(body.contains("cookie: a=1; b=2\n"), "{body}");
    assert!(!body.contains("secret"), "{body}");
}
