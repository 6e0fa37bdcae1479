//! Subpath and subdomain routing through real sockets, with nginx as the upstream.

mod common;
use common::*;

fn subpath_config(nginx: std::net::SocketAddr) -> String {
    format!(
        r#"domain = "example.test"
routing = "subpath"
{listen}
[[projects]]
name = "demo"
default = "forge"
  [[projects.routes]]
  mount = "forge"
  upstream = "http://{nginx}"
  prefix = "strip"
  [[projects.routes]]
  mount = "ci"
  upstream = "http://{nginx}"
  prefix = "keep"
"#,
        listen = listen(false)
    )
}

#[tokio::test]
async fn subpath_strips_and_keeps_prefixes_on_raw_bytes() {
    let ng = nginx_upstream().await;
    let t = start(&subpath_config(ng.addr)).await;
    let h = "demo.example.test";
    let cases = [
        ("/forge/x?y", "/x?y"),
        ("/forge/", "/"),
        ("/forge/a%2Fb/%25zz?q=%2F", "/a%2Fb/%25zz?q=%2F"),
        (
            "/forge/user/repo/packages/a%2Fb",
            "/user/repo/packages/a%2Fb",
        ),
        ("/ci/x", "/ci/x"),
        ("/ci/api/repos?page=2", "/ci/api/repos?page=2"),
    ];
    for (target, upstream_saw) in cases {
        let r = send(t.http, get(h, target)).await;
        assert_eq!(r.status, 200, "{target}: {}", r.text());
        assert_eq!(r.header("x-uri"), Some(upstream_saw), "{target}");
    }
}

#[tokio::test]
async fn subpath_redirects_and_404s_never_reach_an_app() {
    let ng = nginx_upstream().await;
    let t = start(&subpath_config(ng.addr)).await;
    let h = "demo.example.test";
    let r = send(t.http, get(h, "/")).await;
    assert_eq!((r.status, r.header("location")), (302, Some("/forge/")));
    let r = send(t.http, get(h, "/forge?a=1&b")).await;
    assert_eq!(
        (r.status, r.header("location")),
        (308, Some("/forge/?a=1&b"))
    );
    let r = send(t.http, get(h, "/ci")).await;
    assert_eq!((r.status, r.header("location")), (308, Some("/ci/")));
    for stray in ["/assets/app.js", "/web-config.js", "/forgery", "/Forge/x"] {
        let r = send(t.http, get(h, stray)).await;
        assert_eq!(r.status, 404, "{stray}");
        assert!(r.header("x-uri").is_none(), "{stray} reached nginx");
        let body = r.text();
        assert!(
            body.contains("/forge/") && body.contains("/ci/"),
            "404 lists the mounts: {body}"
        );
    }
}

#[tokio::test]
async fn head_works_on_mounts_redirects_and_404s() {
    let ng = nginx_upstream().await;
    let t = start(&subpath_config(ng.addr)).await;
    for (target, status) in [("/forge/x", 200), ("/", 302), ("/nothing", 404)] {
        let req = http::Request::head(target)
            .header("host", "demo.example.test")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let r = send(t.http, req).await;
        assert_eq!(r.status, status, "HEAD {target}");
        assert!(r.body.is_empty(), "HEAD {target} has no body");
    }
}

#[tokio::test]
async fn subdomain_mode_routes_by_host_with_one_switch() {
    let ng = nginx_upstream().await;
    let cfg = subpath_config(ng.addr).replace("routing = \"subpath\"", "routing = \"subdomain\"");
    let t = start(&cfg).await;
    let r = send(t.http, get("forge.demo.example.test", "/x?y")).await;
    assert_eq!((r.status, r.header("x-uri")), (200, Some("/x?y")));
    let r = send(t.http, get("ci.demo.example.test", "/api/x")).await;
    assert_eq!((r.status, r.header("x-uri")), (200, Some("/api/x")));
    let port = t.http.port();
    let r = send(t.http, get(&format!("demo.example.test:{port}"), "/")).await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location").unwrap(),
        format!("http://forge.demo.example.test:{port}/")
    );
    let r = send(t.http, get("demo.example.test", "/ci/x?q")).await;
    assert_eq!(
        (r.status, r.header("location")),
        (308, Some("http://ci.demo.example.test/x?q"))
    );
}

#[tokio::test]
async fn subdomain_mode_gives_each_project_its_own_wildcard_certificate() {
    let ng = nginx_upstream().await;
    let cfg = subpath_config(ng.addr).replace("routing = \"subpath\"", "routing = \"subdomain\"")
        + &format!("[[projects]]\nname = \"other\"\n  [[projects.routes]]\n  mount = \"wiki\"\n  upstream = \"http://{}\"\n", ng.addr);
    let t = start(&cfg).await;
    for (sni, path) in [
        ("forge.demo.example.test", "/a"),
        ("wiki.other.example.test", "/b"),
        ("demo.example.test", "/"),
    ] {
        // The handshake verifies the chain against the local CA and the name against the SAN
        // (*.demo.example.test, *.other.example.test): a wrong certificate fails here.
        let r = send_tls(t.https, sni, &t.ca_pem, false, get(sni, path)).await;
        assert!(r.status == 200 || r.status == 302, "{sni}: {}", r.status);
    }
    let tls = tls_connect(
        t.https,
        "wiki.other.example.test",
        &t.ca_pem,
        &[b"http/1.1"],
    )
    .await;
    let certs = tls.get_ref().1.peer_certificates().unwrap();
    let der = certs[0].as_ref();
    assert!(der
        .windows(b"*.other.example.test".len())
        .any(|w| w == b"*.other.example.test"));
    assert!(!der
        .windows(b"*.demo.example.test".len())
        .any(|w| w == b"*.demo.example.test"));
}

#[tokio::test]
async fn unknown_hosts_get_404_never_another_projects_upstream() {
    let ng = nginx_upstream().await;
    let t = start(&subpath_config(ng.addr)).await;
    for host in [
        "evil.com",
        "127.0.0.1",
        "example.test",
        "x.demo.example.test",
        "demo.example.test.evil.com",
    ] {
        let r = send(t.http, get(host, "/forge/x")).await;
        assert_eq!(r.status, 404, "{host}");
        assert!(r.header("x-uri").is_none(), "{host} reached an upstream");
    }
    // A configured fallback serves unknown hosts as that project.
    let cfg = format!("fallback_project = \"demo\"\n{}", subpath_config(ng.addr));
    t.reload(&cfg);
    let r = send(t.http, get("127.0.0.1", "/forge/x")).await;
    assert_eq!((r.status, r.header("x-uri")), (200, Some("/x")));
}

#[tokio::test]
async fn http_redirects_to_https_keeping_host_and_target() {
    let ng = nginx_upstream().await;
    let cfg = subpath_config(ng.addr).replace("http_redirect = false", "http_redirect = true");
    let t = start(&cfg).await;
    let r = send(t.http, get("demo.example.test:80", "/forge/a%2Fb?x=1")).await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location").unwrap(),
        format!(
            "https://demo.example.test:{}/forge/a%2Fb?x=1",
            t.https.port()
        )
    );
    // Over TLS, the same request is served.
    let r = send_tls(
        t.https,
        "demo.example.test",
        &t.ca_pem,
        false,
        get("demo.example.test", "/forge/a%2Fb?x=1"),
    )
    .await;
    assert_eq!((r.status, r.header("x-uri")), (200, Some("/a%2Fb?x=1")));
    assert!(r.header("strict-transport-security").is_some());
}

#[tokio::test]
async fn a_tls_handshake_without_sni_gets_the_default_projects_certificate() {
    let ng = nginx_upstream().await;
    let t = start(&subpath_config(ng.addr)).await;
    // rustls sends no SNI for an IP address; the CA-verified handshake must still succeed
    // against the default project's name, which we check by verifying as that name.
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(t.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.enable_sni = false;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(t.https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("demo.example.test").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .expect("handshake without SNI");
    assert!(tls.get_ref().1.peer_certificates().is_some());
}
