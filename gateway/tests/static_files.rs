//! Static mounts: content types, index.html, 404, traversal, symlinks, ETag, Range, and the
//! sandbox policy of untrusted mounts.

mod common;
use bytes::Bytes;
use common::*;
use http_body_util::Full;

fn write_site(dir: &std::path::Path) {
    let site = dir.join("site");
    std::fs::create_dir_all(site.join("sub")).unwrap();
    std::fs::write(site.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(site.join("app.js"), "console.log(1)").unwrap();
    std::fs::write(site.join("style.css"), "body{}").unwrap();
    std::fs::write(site.join("data.json"), "{}").unwrap();
    std::fs::write(site.join("sub/index.html"), "<h1>sub</h1>").unwrap();
    std::fs::write(site.join("digits.txt"), "0123456789").unwrap();
    std::fs::write(dir.join("secret.txt"), "top secret").unwrap();
    std::os::unix::fs::symlink(dir.join("secret.txt"), site.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(dir, site.join("up")).unwrap();
    std::os::unix::fs::symlink(site.join("digits.txt"), site.join("inside.txt")).unwrap();
}

/// A gateway whose `staging` mount (untrusted) and `docs` mount (trusted) serve the site
/// written by [`write_site`].
async fn site_gateway() -> (TestGw, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    write_site(dir.path());
    let t = start(&format!(
        r#"domain = "example.test"
{listen}
[[projects]]
name = "demo"
  [[projects.routes]]
  mount = "staging"
  root = "{root}"
  [[projects.routes]]
  mount = "docs"
  root = "{root}"
  untrusted = false
"#,
        listen = listen(false),
        root = dir.path().join("site").display()
    ))
    .await;
    (t, dir)
}

fn req(target: &str, headers: &[(&str, &str)]) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::get(target).header("host", "demo.example.test");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn static_mounts_serve_files_with_types_and_indexes() {
    let (t, _site) = site_gateway().await;
    let cases = [
        (
            "/staging/",
            200,
            Some("text/html; charset=utf-8"),
            "<h1>home</h1>",
        ),
        (
            "/staging/app.js",
            200,
            Some("text/javascript; charset=utf-8"),
            "console.log(1)",
        ),
        (
            "/staging/style.css",
            200,
            Some("text/css; charset=utf-8"),
            "body{}",
        ),
        ("/staging/data.json", 200, Some("application/json"), "{}"),
        (
            "/staging/sub/",
            200,
            Some("text/html; charset=utf-8"),
            "<h1>sub</h1>",
        ),
        (
            "/staging/inside.txt",
            200,
            Some("text/plain; charset=utf-8"),
            "0123456789",
        ),
    ];
    for (target, status, ctype, body) in cases {
        let r = send(t.http, req(target, &[])).await;
        assert_eq!(r.status, status, "{target}");
        let got = r
            .header("content-type")
            .map(|c| c.replace("application/javascript", "text/javascript"));
        assert_eq!(got.as_deref(), ctype, "{target}");
        assert_eq!(r.text(), body, "{target}");
        assert_eq!(
            r.header("content-security-policy"),
            Some("sandbox allow-scripts allow-forms allow-popups"),
            "{target}"
        );
    }
    let r = send(t.http, req("/staging/sub?x=1", &[])).await;
    assert_eq!((r.status, r.header("location")), (308, Some("sub/?x=1")));
    let r = send(t.http, req("/docs/", &[])).await;
    assert!(
        r.header("content-security-policy").is_none(),
        "trusted static mounts are not sandboxed"
    );
}

#[tokio::test]
async fn static_mounts_refuse_traversal_and_symlinks_out_of_the_root() {
    let (t, _site) = site_gateway().await;
    for target in [
        "/staging/../secret.txt",
        "/staging/%2e%2e/secret.txt",
        "/staging/%2E%2E%2Fsecret.txt",
        "/staging/sub/..%2F..%2Fsecret.txt",
        "/staging/..%5Csecret.txt",
        "/staging/leak.txt",
        "/staging/up/secret.txt",
        "/staging/missing.html",
        "/staging/app.js%00.html",
    ] {
        // Raw request: a client library would normalise the dots away.
        let out = raw(
            t.http,
            format!(
                "GET {target} HTTP/1.1\r\nHost: demo.example.test\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
            std::time::Duration::from_secs(5),
        )
        .await;
        // 404, or 400 for a dot-segment hidden behind an encoded slash (refused before routing).
        assert!(
            out.starts_with("HTTP/1.1 404") || out.starts_with("HTTP/1.1 400"),
            "{target}: {}",
            out.lines().next().unwrap_or("")
        );
        assert!(!out.contains("top secret"), "{target} leaked the secret");
    }
}

#[tokio::test]
async fn static_mounts_answer_conditional_and_range_requests() {
    let (t, _site) = site_gateway().await;
    let r = send(t.http, req("/staging/digits.txt", &[])).await;
    let etag = r.header("etag").unwrap().to_string();
    assert!(r.header("last-modified").is_some());
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    let r = send(
        t.http,
        req("/staging/digits.txt", &[("if-none-match", &etag)]),
    )
    .await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let r = send(
        t.http,
        req("/staging/digits.txt", &[("if-none-match", "\"other\"")]),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(
        t.http,
        req("/staging/digits.txt", &[("range", "bytes=2-4")]),
    )
    .await;
    assert_eq!(
        (r.status, r.text().as_str(), r.header("content-range")),
        (206, "234", Some("bytes 2-4/10"))
    );
    let r = send(t.http, req("/staging/digits.txt", &[("range", "bytes=-3")])).await;
    assert_eq!((r.status, r.text().as_str()), (206, "789"));
    let r = send(
        t.http,
        req("/staging/digits.txt", &[("range", "bytes=20-")]),
    )
    .await;
    assert_eq!(
        (r.status, r.header("content-range")),
        (416, Some("bytes */10"))
    );
    // A stale If-Range means the whole, current file.
    let r = send(
        t.http,
        req(
            "/staging/digits.txt",
            &[("range", "bytes=2-4"), ("if-range", "\"stale\"")],
        ),
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "0123456789"));
    let head = http::Request::head("/staging/digits.txt")
        .header("host", "demo.example.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(t.http, head).await;
    assert_eq!(
        (r.status, r.header("content-length"), r.body.len()),
        (200, Some("10"), 0)
    );
    let post = http::Request::post("/staging/digits.txt")
        .header("host", "demo.example.test")
        .body(Full::new(Bytes::from("x")))
        .unwrap();
    let r = send(t.http, post).await;
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
}

#[tokio::test]
async fn a_missing_static_root_is_refused_naming_its_key() {
    let cfg = edge_routing::Config::from_toml(
        "[[projects]]\nname = \"demo\"\n  [[projects.routes]]\n  mount = \"staging\"\n  root = \"/nonexistent/site\"\n",
    )
    .unwrap();
    let err = edge_gateway::Gateway::new(cfg, std::path::Path::new("."), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("projects[0].routes[0].root: /nonexistent/site"),
        "{err}"
    );
}
