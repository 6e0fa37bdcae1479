//! What a hostile client or upstream tried and must not get through, one test per class:
//! verdicts reused for requests the auth server would judge otherwise, cross-site writes on a
//! cached verdict, dot-segments past a path-scoped auth check, identity headers spelled with
//! underscores, ambiguous or malformed hosts, a TLS connection used for another project,
//! origin-wide headers from an untrusted mount, dotfiles and FIFOs in a static root, slow
//! readers, and idle connections. Each test failed before its fix.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a path-scoped auth server (Authelia's kind) was asked: `(method, uri, origin)`.
type Asked = Arc<Mutex<Vec<(String, String, String)>>>;

/// An auth server that judges by method and path as Authelia's access-control rules do: signed
/// in with `sid=alice`; `/priv/admin` is refused; `DELETE` is refused; a state-changing request
/// or a WebSocket from another origin is refused.
async fn path_scoped_auth() -> (SocketAddr, Asked) {
    let asked: Asked = Arc::default();
    let a2 = asked.clone();
    let addr = spawn_server(move |s| {
        let asked = a2.clone();
        async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let asked = asked.clone();
                async move {
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    let (method, uri, origin) =
                        (h("x-forwarded-method"), h("x-forwarded-uri"), h("origin"));
                    let own = format!("{}://{}", h("x-forwarded-proto"), h("x-forwarded-host"));
                    asked
                        .lock()
                        .unwrap()
                        .push((method.clone(), uri.clone(), origin.clone()));
                    let path = uri.split('?').next().unwrap_or("");
                    let writes = !matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS")
                        || h("sec-fetch-mode") == "websocket";
                    let status = if !h("cookie").contains("sid=alice") {
                        401
                    } else if (writes && origin != own)
                        || path.starts_with("/priv/admin")
                        || method == "DELETE"
                    {
                        403
                    } else {
                        200
                    };
                    let mut r = Response::builder().status(status);
                    if status == 200 {
                        r = r.header("x-forwarded-user", "alice");
                    }
                    Ok::<_, std::convert::Infallible>(r.body(Full::new(Bytes::new())).unwrap())
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        }
    })
    .await;
    (addr, asked)
}

async fn setup() -> (TestGw, Asked) {
    let (auth, asked) = path_scoped_auth().await;
    let echo = echo_upstream().await;
    let ws = ws_upstream().await;
    let t = start(&format!(
        r#"domain = "example.test"
{listen}
[limits]
header_read_timeout = "2s"
[[projects]]
name = "demo"
  [[projects.routes]]
  mount = "priv"
  upstream = "http://{echo}"
  auth = "forward"
  auth_url = "http://{auth}/api/verify"
  auth_headers = ["X-Forwarded-User"]
  auth_cache = "60s"
  [[projects.routes]]
  mount = "live"
  upstream = "http://{ws}"
  auth = "forward"
  auth_url = "http://{auth}/api/verify"
  auth_cache = "60s"
  [[projects.routes]]
  mount = "forge"
  upstream = "http://{echo}"
  [[projects.routes]]
  mount = "staging"
  upstream = "http://{echo}"
[[projects]]
name = "other"
  [[projects.routes]]
  mount = "forge"
  upstream = "http://{echo}"
"#,
        listen = listen(false)
    ))
    .await;
    (t, asked)
}

fn req(method: &str, target: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(target)
        .header("host", "demo.example.test");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

const SIGNED_IN: (&str, &str) = ("cookie", "sid=alice");
const SAME_SITE: (&str, &str) = ("origin", "http://demo.example.test");
const SIBLING: (&str, &str) = ("origin", "http://other.example.test");

#[tokio::test]
async fn a_cached_verdict_is_reused_only_for_the_request_it_judged() {
    let (t, asked) = setup().await;
    let r = send(t.http, req("GET", "/priv/public", &[SIGNED_IN])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("x-forwarded-user: alice"), "{}", r.text());
    // The same request again: from the cache, the auth server is not asked.
    let r = send(t.http, req("GET", "/priv/public", &[SIGNED_IN])).await;
    assert_eq!(r.status, 200);
    assert_eq!(asked.lock().unwrap().len(), 1, "the verdict was not reused");
    // Another path, another method: each is judged by the auth server, which refuses them.
    for (method, target) in [
        ("GET", "/priv/admin/x"),
        ("DELETE", "/priv/public"),
        ("HEAD", "/priv/admin/"),
    ] {
        let before = asked.lock().unwrap().len();
        let r = send(t.http, req(method, target, &[SIGNED_IN, SAME_SITE])).await;
        assert_eq!(
            r.status, 403,
            "{method} {target} passed on a cached verdict"
        );
        assert_eq!(asked.lock().unwrap().len(), before + 1, "{method} {target}");
        assert!(!r.text().contains("x-upstream"), "{method} {target}");
    }
}

#[tokio::test]
async fn origin_checks_run_on_every_write_and_upgrade_whatever_is_cached() {
    let (t, asked) = setup().await;
    let r = send(t.http, req("GET", "/priv/form", &[SIGNED_IN, SAME_SITE])).await;
    assert_eq!(r.status, 200);
    // A sibling project's page posts to it (SameSite=Lax sends the cookie): refused.
    for method in ["POST", "PUT", "PATCH"] {
        let r = send(t.http, req(method, "/priv/form", &[SIGNED_IN, SIBLING])).await;
        assert_eq!(r.status, 403, "{method}: {}", r.text());
        assert!(!r.text().contains("x-upstream"), "{method} reached the app");
    }
    // The same-site write is asked about too (every write is), and allowed.
    let n = asked.lock().unwrap().len();
    let r = send(t.http, req("POST", "/priv/form", &[SIGNED_IN, SAME_SITE])).await;
    assert_eq!(r.status, 200);
    let r = send(t.http, req("POST", "/priv/form", &[SIGNED_IN, SAME_SITE])).await;
    assert_eq!(r.status, 200);
    assert_eq!(asked.lock().unwrap().len(), n + 2, "a write was not judged");

    // A WebSocket after a cached same-site GET of its path: judged, and a sibling's refused.
    let r = send(t.http, req("GET", "/live/socket", &[SIGNED_IN, SAME_SITE])).await;
    assert_ne!(r.status, 401);
    let handshake = |origin: &str| {
        format!(
            "GET /live/socket HTTP/1.1\r\nHost: demo.example.test\r\nCookie: sid=alice\r\nOrigin: {origin}\r\n\
             Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    let out = raw(
        t.http,
        handshake("http://other.example.test").as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    let out = raw(
        t.http,
        handshake("http://demo.example.test").as_bytes(),
        Duration::from_millis(500),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 101"), "{out}");
}

#[tokio::test]
async fn dot_segments_are_resolved_before_auth_and_the_upstream_gets_the_judged_path() {
    let (t, asked) = setup().await;
    for target in [
        "/priv/public/../admin/x",
        "/priv/public/%2e%2e/admin/x",
        "/priv/public/.%2E/admin/x",
        "/priv/./public/../../priv/admin/x",
    ] {
        let r = send(t.http, req("GET", target, &[SIGNED_IN])).await;
        assert_eq!(r.status, 403, "{target}: {}", r.text());
        let last = asked.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last.1, "/priv/admin/x", "{target} was judged as {}", last.1);
    }
    // Allowed after resolution: the upstream sees exactly the path that was judged.
    let r = send(
        t.http,
        req("GET", "/priv/x/../public/./y?a=../b", &[SIGNED_IN]),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.text().starts_with("GET /public/y?a=../b\n"),
        "{}",
        r.text()
    );
    assert_eq!(
        asked.lock().unwrap().last().unwrap().1,
        "/priv/public/y?a=../b"
    );
    // Spellings only some servers read as a dot-segment are refused outright.
    for target in [
        "/priv/public/..%2fadmin/x",
        "/priv/public/..%5Cadmin/x",
        "/priv/public/..;/admin/x",
    ] {
        let before = asked.lock().unwrap().len();
        let r = send(t.http, req("GET", target, &[SIGNED_IN])).await;
        assert_eq!(r.status, 400, "{target}");
        assert_eq!(asked.lock().unwrap().len(), before, "{target} reached auth");
    }
}

#[tokio::test]
async fn identity_headers_are_dropped_in_every_spelling() {
    let (t, _) = setup().await;
    let spoofs = [
        ("X_Forwarded_User", "mallory"),
        ("X_Auth_Request_User", "mallory"),
        ("Remote_User", "mallory"),
        ("X_Webauth_User", "mallory"),
        ("X-Forwarded_Email", "mallory@evil"),
        ("x_real_ip", "6.6.6.6"),
        ("X_Edge_Auth_Secret", "guess"),
    ];
    for route in ["/forge/x", "/priv/public"] {
        let r = send(
            t.http,
            req("GET", route, &[&spoofs[..], &[SIGNED_IN]].concat()),
        )
        .await;
        assert_eq!(r.status, 200, "{route}");
        let text = r.text().to_ascii_lowercase();
        assert!(!text.contains("mallory"), "{route}: {text}");
        assert!(!text.contains("6.6.6.6"), "{route}: {text}");
        assert!(!text.contains("guess"), "{route}: {text}");
        assert!(
            !text.contains('_'),
            "{route}: an underscored header passed: {text}"
        );
    }
}

#[tokio::test]
async fn ambiguous_or_malformed_hosts_are_400_and_never_reflected() {
    let (t, _) = setup().await;
    let w = Duration::from_secs(3);
    for (what, head) in [
        (
            "two Host headers",
            "Host: demo.example.test\r\nHost: other.example.test\r\n",
        ),
        (
            "two Host headers, same",
            "Host: demo.example.test\r\nHost: demo.example.test\r\n",
        ),
        (
            "a port that is not a number",
            "Host: demo.example.test:@evil.example\r\n",
        ),
        ("user info", "Host: me@demo.example.test\r\n"),
        ("a path", "Host: demo.example.test/evil\r\n"),
        ("a port out of range", "Host: demo.example.test:99999\r\n"),
    ] {
        for target in ["/", "/forge/x", "/forge"] {
            let out = raw(
                t.http,
                format!("GET {target} HTTP/1.1\r\n{head}Connection: close\r\n\r\n").as_bytes(),
                w,
            )
            .await;
            assert!(out.starts_with("HTTP/1.1 400"), "{what} {target}: {out}");
            assert!(
                !out.to_ascii_lowercase().contains("location:"),
                "{what}: {out}"
            );
            assert!(!out.contains("evil"), "{what}: {out}");
            assert!(!out.contains("x-upstream"), "{what}: {out}");
        }
    }
    // The plain-HTTP redirect is built only from a valid Host as well.
    let t2 = start(&format!(
        "domain = \"example.test\"\n{}[[projects]]\nname = \"demo\"\n[[projects.routes]]\nmount = \"forge\"\n",
        listen(true)
    ))
    .await;
    let out = raw(
        t2.http,
        b"GET / HTTP/1.1\r\nHost: demo.example.test:@evil.example\r\nConnection: close\r\n\r\n",
        w,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(!out.contains("evil"), "{out}");
}

#[tokio::test]
async fn a_tls_connection_for_one_project_cannot_ask_for_another() {
    let (t, _) = setup().await;
    for h2 in [false, true] {
        let target = |host: &str| {
            if h2 {
                Request::get(format!("https://{host}/forge/x"))
                    .body(Full::new(Bytes::new()))
                    .unwrap()
            } else {
                get(host, "/forge/x")
            }
        };
        let r = send_tls(
            t.https,
            "demo.example.test",
            &t.ca_pem,
            h2,
            target("other.example.test"),
        )
        .await;
        assert_eq!(r.status, 421, "h2={h2}: {}", r.text());
        assert!(!r.text().contains("x-upstream"));
        // Names under one certificate share a connection: the apex and its wildcard.
        let r = send_tls(
            t.https,
            "demo.example.test",
            &t.ca_pem,
            h2,
            target("demo.example.test"),
        )
        .await;
        assert_eq!(r.status, 200, "h2={h2}");
        let r = send_tls(
            t.https,
            "forge.demo.example.test",
            &t.ca_pem,
            h2,
            target("demo.example.test"),
        )
        .await;
        assert_ne!(r.status, 421, "h2={h2}");
        let r = send_tls(
            t.https,
            "other.example.test",
            &t.ca_pem,
            h2,
            target("other.example.test"),
        )
        .await;
        assert_eq!(r.status, 200, "h2={h2}");
    }
}

#[tokio::test]
async fn an_untrusted_mount_cannot_set_origin_wide_headers() {
    let (t, _) = setup().await;
    let r = send_tls(
        t.https,
        "demo.example.test",
        &t.ca_pem,
        false,
        get("demo.example.test", "/staging/origin-wide"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=63072000")
    );
    for gone in [
        "clear-site-data",
        "set-cookie",
        "service-worker-allowed",
        "alt-svc",
        "nel",
    ] {
        assert_eq!(r.header(gone), None, "{gone} from an untrusted mount");
    }
    // A trusted mount keeps its own headers, but not a weaker HSTS than the gateway's.
    let r = send_tls(
        t.https,
        "demo.example.test",
        &t.ca_pem,
        false,
        get("demo.example.test", "/forge/origin-wide"),
    )
    .await;
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=63072000")
    );
    assert!(r.header("set-cookie").is_some());
}

#[tokio::test]
async fn an_idle_plain_connection_lives_one_head_timeout() {
    let (t, _) = setup().await;
    // header_read_timeout is 2s: a connection that says nothing is closed then, not at 4s.
    let mut s = tokio::net::TcpStream::connect(t.http).await.unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an idle connection was never closed");
    let took = start.elapsed();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(took < Duration::from_millis(3500), "closed after {took:?}");
    assert!(
        took >= Duration::from_millis(1900),
        "closed early, after {took:?}"
    );
    // A connection that starts its head late still gets its request served.
    let mut s = tokio::net::TcpStream::connect(t.http).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.write_all(b"GET /forge/x HTTP/1.1\r\nHost: demo.example.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[tokio::test]
async fn property_no_request_reaches_an_upstream_with_a_dot_segment_or_a_client_identity() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let (t, _) = setup().await;
    let addr = t.http;
    let segments = prop::sample::select(vec![
        "a",
        "admin",
        "",
        ".",
        "..",
        "%2e",
        "%2E%2e",
        ".%2e",
        "..%2f",
        "%2e%2e%5c",
        "..;",
        "a%2Fb",
        "x;y",
        "...",
        ".git",
    ]);
    let names = prop::sample::select(vec![
        "X-Forwarded-User",
        "X_Forwarded_User",
        "x-FORWARDED_for",
        "Remote_User",
        "Remote-Groups",
        "X_Auth_Request_Email",
        "X-Webauth_User",
        "Forwarded",
        "X_Real_IP",
        "X-Original-URL",
        "X_Edge_Anything",
        "X-Custom",
    ]);
    let strategy = (
        prop::collection::vec(segments, 0..6),
        prop::collection::vec(names, 0..4),
        prop::sample::select(vec!["forge", "priv"]),
    );
    let handle = tokio::runtime::Handle::current();
    // The requests run on the test's runtime from a plain thread (proptest is synchronous).
    let cases = tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(Config {
            cases: 96,
            failure_persistence: None,
            ..Config::default()
        });
        let seen = AtomicUsize::new(0);
        let result = runner.run(&strategy, |(segs, names, mount)| {
            let target = format!("/{mount}/{}", segs.join("/"));
            let mut head = format!(
                "GET {target} HTTP/1.1\r\nHost: demo.example.test\r\nCookie: sid=alice\r\nConnection: close\r\n"
            );
            for n in &names {
                let v = if *n == "X-Custom" { "kept" } else { "spoofed" };
                head.push_str(&format!("{n}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let out = handle.block_on(raw(addr, head.as_bytes(), Duration::from_secs(5)));
            let status = out.get(9..12).unwrap_or("").to_string();
            if out.contains("x-upstream: echo") {
                seen.fetch_add(1, Ordering::Relaxed);
                let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
                let first = body.lines().next().unwrap_or("");
                let path = first.split(' ').nth(1).unwrap_or("");
                let path = path.split('?').next().unwrap_or("");
                for seg in path.split('/') {
                    let lower = seg.to_ascii_lowercase().replace("%2e", ".");
                    prop_assert!(lower != "." && lower != "..", "{target} reached the upstream as {path}");
                    prop_assert!(!lower.contains("..%2f") && !lower.contains("..;") && !lower.contains("..%5c"), "{target} -> {path}");
                }
                prop_assert!(!body.contains("spoofed"), "{target} {names:?}: {body}");
            } else {
                prop_assert!(
                    ["400", "404", "403", "302", "308"].contains(&status.as_str()),
                    "{target}: {out}"
                );
            }
            Ok(())
        });
        (result, seen.load(Ordering::Relaxed))
    })
    .await
    .unwrap();
    let (result, reached) = cases;
    result.unwrap();
    assert!(
        reached > 10,
        "only {reached} generated requests reached the upstream"
    );
}

fn write_hidden_site(dir: &std::path::Path) -> std::path::PathBuf {
    let site = dir.join("site");
    for d in [".git", ".well-known", "sub", ".hidden-dir"] {
        std::fs::create_dir_all(site.join(d)).unwrap();
    }
    std::fs::write(
        site.join(".git/config"),
        "[remote \"origin\"]\n  url = https://oauth2:TOKEN@forge.example/x.git\n",
    )
    .unwrap();
    std::fs::write(site.join(".env"), "SECRET=TOKEN\n").unwrap();
    std::fs::write(site.join("sub/.htpasswd"), "admin:TOKEN\n").unwrap();
    std::fs::write(site.join(".hidden-dir/index.html"), "TOKEN").unwrap();
    std::fs::write(site.join(".well-known/security.txt"), "Contact: ops\n").unwrap();
    std::fs::write(site.join("index.html"), "<h1>home</h1>").unwrap();
    // A public name that leads into a hidden directory.
    std::os::unix::fs::symlink(site.join(".git/config"), site.join("config.txt")).unwrap();
    site
}

#[tokio::test]
async fn dotfiles_and_vcs_directories_in_a_static_root_are_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let site = write_hidden_site(dir.path());
    let t = start(&format!(
        r#"domain = "example.test"
{listen}
[[projects]]
name = "demo"
  [[projects.routes]]
  mount = "staging"
  root = "{root}"
  [[projects.routes]]
  mount = "open"
  root = "{root}"
  dotfiles = true
"#,
        listen = listen(false),
        root = site.display()
    ))
    .await;
    for target in [
        "/.git/config",
        "/.git/",
        "/%2egit/config",
        "/.env",
        "/sub/.htpasswd",
        "/.hidden-dir/",
        "/config.txt",
    ] {
        let r = send(
            t.http,
            get("demo.example.test", &format!("/staging{target}")),
        )
        .await;
        assert_eq!(r.status, 404, "{target}");
        assert!(!r.text().contains("TOKEN"), "{target} leaked");
        // A route that allows dotfiles serves them.
        if !target.ends_with('/') {
            let r = send(t.http, get("demo.example.test", &format!("/open{target}"))).await;
            assert_eq!(r.status, 200, "/open{target}");
        }
    }
    let r = send(
        t.http,
        get("demo.example.test", "/staging/.well-known/security.txt"),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(t.http, get("demo.example.test", "/staging/")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn fifos_in_a_static_root_neither_hang_nor_starve_other_routes() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    let other = dir.path().join("other");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("ok.txt"), "still here").unwrap();
    const N: usize = 600;
    let names: Vec<String> = (0..N).map(|i| format!("f{i}")).collect();
    let st = std::process::Command::new("mkfifo")
        .args(&names)
        .current_dir(&site)
        .status()
        .unwrap();
    assert!(st.success());
    std::os::unix::fs::symlink(site.join("f0"), site.join("link.txt")).unwrap();
    let t = start(&format!(
        r#"domain = "example.test"
{listen}
[limits]
max_connections_per_client = 2000
[[projects]]
name = "demo"
  [[projects.routes]]
  mount = "staging"
  root = "{site}"
  [[projects.routes]]
  mount = "docs"
  root = "{other}"
"#,
        listen = listen(false),
        site = site.display(),
        other = other.display()
    ))
    .await;
    let addr = t.http;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..N {
        tasks.push(tokio::spawn(async move {
            let head = format!(
                "GET /staging/f{i} HTTP/1.1\r\nHost: demo.example.test\r\nConnection: close\r\n\r\n"
            );
            raw(addr, head.as_bytes(), Duration::from_secs(20)).await
        }));
    }
    // While they are asked for, another route answers.
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        send(addr, get("demo.example.test", "/docs/ok.txt")),
    )
    .await
    .expect("another static route starved behind the FIFOs");
    assert_eq!(r.text(), "still here");
    for t in tasks {
        let out = t.await.unwrap();
        assert!(out.starts_with("HTTP/1.1 404"), "a FIFO: {out:?}");
    }
    let r = send(addr, get("demo.example.test", "/staging/link.txt")).await;
    assert_eq!(r.status, 404);
    // Each FIFO was answered at once, not when a reader gave up.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

/// The resident set of this process, in KiB.
fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// nginx serving one large file, as a download upstream.
fn nginx_download(size: u64) -> Nginx {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let f = std::fs::File::create(files.join("big.bin")).unwrap();
    f.set_len(size).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = dir.display();
    let conf = format!(
        r#"daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log error;
events {{ worker_connections 1024; }}
http {{
  access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f;
  uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;
  server {{ listen 127.0.0.1:{port}; root {files}; }}
}}
"#,
        files = files.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = std::process::Command::new(nginx_binary())
        .args(["-p", dir.to_str().unwrap(), "-c"])
        .arg(dir.join("nginx.conf"))
        .spawn()
        .unwrap();
    Nginx {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        child,
        _dir: tmp,
    }
}

#[tokio::test]
async fn slow_readers_hold_little_memory_each() {
    let nginx = nginx_download(256 << 20);
    let up = nginx.addr;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(up).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = start(&format!(
        r#"domain = "example.test"
{listen}
[limits]
max_connections_per_client = 1000
[[projects]]
name = "demo"
  [[projects.routes]]
  mount = "dl"
  upstream = "http://{up}"
  timeout = "30s"
"#,
        listen = listen(false)
    ))
    .await;
    const N: usize = 150;
    // Warm up: pools, buffers and the allocator's arenas, with clients that read everything.
    let mut readers = Vec::new();
    for _ in 0..4 {
        readers.push(tokio::spawn(stalled_download(t.http, false)));
    }
    for r in readers {
        r.await.unwrap();
    }
    let settled = || async {
        let mut last = rss_kib();
        for _ in 0..25 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = rss_kib();
            if now.abs_diff(last) < 512 {
                return now;
            }
            last = now;
        }
        last
    };
    let before = settled().await;
    let mut clients = Vec::new();
    for _ in 0..N {
        clients.push(stalled_download(t.http, true).await);
    }
    let after = settled().await;
    let per_client = after.saturating_sub(before) / N as u64;
    eprintln!("{N} stalled downloads: RSS {before} KiB -> {after} KiB, {per_client} KiB each");
    // With hyper's defaults each stalled stream held ~1.1 MiB; bounded read-ahead and send
    // buffers brought it to ~240 KiB (234-256 measured), the fast path's reads to ~94 KiB. The threshold leaves room for the
    // allocator on a loaded machine and still fails the old behaviour by more than 2x.
    assert!(per_client < 512, "{per_client} KiB per stalled client");
    drop(clients);
    drop(nginx);
}

/// A client of `/dl/big.bin`. Stalled: it reads the head and a little of the body, then holds
/// the connection without reading (returned, to keep it open). Otherwise it reads it all.
async fn stalled_download(addr: SocketAddr, stall: bool) -> Option<tokio::net::TcpStream> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A small receive buffer, so the kernel does not soak up what the gateway would hold.
    let _ = socket2::SockRef::from(&s).set_recv_buffer_size(16 * 1024);
    s.write_all(
        b"GET /dl/big.bin HTTP/1.1\r\nHost: demo.example.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    if stall {
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        // Let the gateway fill whatever it buffers.
        tokio::time::sleep(Duration::from_millis(20)).await;
        Some(s)
    } else {
        while s.read(&mut buf).await.unwrap() > 0 {}
        None
    }
}
