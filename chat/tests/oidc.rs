//! Sign-in through the gateway over TLS against a real OpenID Connect provider
//! (`oidc-provider`), in subpath and subdomain mode, and the attacks that must fail.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};

const OIDC: &str = r#"login = "oidc"
provider_url = "@ISSUER@"
client_id = "edge-chat"
allowed_users = ["alice"]
"#;

async fn env(routing: &str) -> Env {
    Env::start(Options {
        routing,
        chat: OIDC,
        extra_routes: "",
        oidc: true,
        forge: None,
    })
    .await
}

const NAV: [(&str, &str); 2] = [("sec-fetch-mode", "navigate"), ("accept", "text/html")];

/// Opens `start` as a navigation, follows the chat's redirects to the provider, signs in
/// there as `login`, and returns the callback URL (not yet visited) and the state.
async fn to_callback(c: &Client, start: &str, login: &str) -> (String, String) {
    let a = c.get(start, &NAV).await;
    assert_eq!(a.status, 302, "{start}: {}", a.text);
    let login_url = url::Url::parse(start)
        .unwrap()
        .join(a.location.as_deref().unwrap())
        .unwrap()
        .to_string();
    assert!(login_url.contains("/login?rd="), "{login_url}");
    // The signed-out page: one button that starts the sign-in.
    let a = c.get(&login_url, &NAV).await;
    assert_eq!(a.status, 200, "{login_url}: {}", a.text);
    assert!(
        a.text.contains("&amp;go=1\"") && a.text.contains("Sign in with 127.0.0.1"),
        "{}",
        a.text
    );
    let login_url = format!("{login_url}&go=1");
    let a = c.get(&login_url, &NAV).await;
    assert_eq!(a.status, 302, "{login_url}: {}", a.text);
    let authorize = a.location.unwrap();
    assert_eq!(
        query(&authorize, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert!(query(&authorize, "code_challenge").is_some());
    let state = query(&authorize, "state").unwrap();
    assert!(state.len() >= 43, "256-bit state: {state}");
    let cb = c.provider_sign_in(&authorize, login).await;
    assert_eq!(query(&cb, "state").as_deref(), Some(state.as_str()));
    (cb, state)
}

async fn sign_in(e: &Env, c: &Client, host: &str, start_path: &str, login: &str) -> Answer {
    let (cb, _) = to_callback(c, &e.url(host, start_path), login).await;
    c.get(&cb, &NAV).await
}

#[tokio::test]
async fn oidc_sign_in_end_to_end_in_subpath_mode() {
    let mut e = env("subpath").await;
    let c = e.client();
    let home = e.url("demo.example.test", "/chat/");
    let a = sign_in(&e, &c, "demo.example.test", "/chat/", "alice").await;
    assert_eq!(a.status, 302, "{}", a.text);
    assert_eq!(
        a.location.as_deref(),
        Some("/chat/"),
        "back where the user started"
    );
    let cookie = &a.set_cookies[0];
    assert!(cookie.starts_with("__Host-edge-chat="), "{cookie}");
    for attr in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attr), "{attr} in {cookie}");
    }
    let id = c.session_cookie(&home).unwrap();
    assert!(id.len() >= 43, "a 256-bit session id");

    let a = c.get(&home, &NAV).await;
    assert_eq!(a.status, 200);
    assert!(a.text.contains("Signed in as <b>alice</b>"), "{}", a.text);
    let a = c
        .get(&e.url("demo.example.test", "/chat/api/me"), &[])
        .await;
    assert_eq!(a.text, r#"{"user":"alice"}"#);

    // Another mount of the project is protected by the same sign-in, and gets the identity
    // but never the chat's cookie.
    let a = c
        .get(&e.url("demo.example.test", "/staging/page"), &NAV)
        .await;
    assert_eq!(a.status, 200);
    assert!(a.text.contains("x-forwarded-user: alice\n"), "{}", a.text);
    assert!(!a.text.contains("edge-chat"), "{}", a.text);
    let a = c.get(&e.url("demo.example.test", "/forge/"), &NAV).await;
    assert!(!a.text.contains("edge-chat"), "{}", a.text);

    // The session lives in the store: it survives a restart of the chat.
    e.restart_chat().await;
    let a = c
        .get(&e.url("demo.example.test", "/chat/api/me"), &[])
        .await;
    assert_eq!(a.text, r#"{"user":"alice"}"#);

    // Sign-out ends it (same-origin POST, as the page's button sends it).
    let origin = e.url("demo.example.test", "");
    let a = c
        .post(
            &e.url("demo.example.test", "/chat/logout"),
            &[("origin", &origin)],
            &[],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(
        a.set_cookies[0].contains("Max-Age=0"),
        "{:?}",
        a.set_cookies
    );
    let a = c
        .get(&e.url("demo.example.test", "/chat/api/me"), &[])
        .await;
    assert_eq!(a.status, 401);
    // The old id is dead, even if a client kept it.
    assert!(e
        .chat
        .store()
        .session(&id, Duration::from_secs(3600), Duration::from_secs(3600))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn oidc_sign_in_in_subdomain_mode_covers_the_project() {
    let e = env("subdomain").await;
    let c = e.client();
    let a = sign_in(&e, &c, "chat.demo.example.test", "/", "alice").await;
    assert_eq!(a.status, 302, "{}", a.text);
    assert_eq!(a.location.as_deref(), Some("/"));
    let cookie = &a.set_cookies[0];
    assert!(
        cookie.starts_with("__Secure-edge-chat=") && cookie.contains("Domain=demo.example.test"),
        "{cookie}"
    );
    let a = c
        .get(&e.url("chat.demo.example.test", "/api/me"), &[])
        .await;
    assert_eq!(a.text, r#"{"user":"alice"}"#);
    // One sign-in covers the project's other hosts; the cookie stays with the chat.
    let a = c.get(&e.url("staging.demo.example.test", "/x"), &NAV).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.text.contains("x-forwarded-user: alice\n"), "{}", a.text);
    assert!(!a.text.contains("edge-chat"), "{}", a.text);

    // Signed out, another mount's page sends the browser to the chat's sign-in and back.
    let c2 = e.client();
    let a = c2
        .get(&e.url("staging.demo.example.test", "/x?y=1"), &NAV)
        .await;
    assert_eq!(a.status, 302);
    let loc = a.location.unwrap();
    assert!(
        loc.starts_with(&e.url("chat.demo.example.test", "/login?rd=")),
        "{loc}"
    );
    let (cb, _) = to_callback(&c2, &e.url("staging.demo.example.test", "/x?y=1"), "alice").await;
    let a = c2.get(&cb, &NAV).await;
    assert_eq!(
        a.location.as_deref(),
        Some(e.url("staging.demo.example.test", "/x?y=1").as_str())
    );
}

#[tokio::test]
async fn forged_and_replayed_states_and_codes_fail() {
    let e = env("subpath").await;
    let c = e.client();
    let cb_base = e.url("demo.example.test", "/chat/oauth/callback");
    // A state edge never issued.
    let a = c
        .get(&format!("{cb_base}?code=abc&state=forged"), &NAV)
        .await;
    assert_eq!(a.status, 400);
    assert!(
        a.text.contains("unknown, already used or expired"),
        "{}",
        a.text
    );

    let (cb, _) = to_callback(&c, &e.url("demo.example.test", "/chat/"), "alice").await;
    assert_eq!(c.get(&cb, &NAV).await.status, 302);
    // The same callback again: the state is spent.
    let a = c.get(&cb, &NAV).await;
    assert_eq!(a.status, 400, "{}", a.text);
    // The used code under a fresh, genuine state: the provider refuses it.
    let code = query(&cb, "code").unwrap();
    let a = c
        .get(&e.url("demo.example.test", "/chat/login?go=1"), &NAV)
        .await;
    let fresh = query(a.location.as_deref().unwrap(), "state").unwrap();
    let a = c
        .get(&format!("{cb_base}?code={code}&state={fresh}"), &NAV)
        .await;
    assert_eq!(a.status, 400);
    assert!(a.text.contains("refused the sign-in code"), "{}", a.text);
}

#[tokio::test]
async fn a_code_from_another_flow_fails_the_pkce_check() {
    let e = env("subpath").await;
    let victim = e.client();
    let attacker = e.client();
    let cb_base = e.url("demo.example.test", "/chat/oauth/callback");
    // The victim starts a sign-in (state A, verifier A kept by edge).
    let a = victim
        .get(&e.url("demo.example.test", "/chat/login?go=1"), &NAV)
        .await;
    let state_a = query(a.location.as_deref().unwrap(), "state").unwrap();
    // The attacker completes their own flow (state B) and injects their code into the
    // victim's: the code is bound to challenge B, edge holds verifier A.
    let (cb_b, state_b) =
        to_callback(&attacker, &e.url("demo.example.test", "/chat/"), "mallory").await;
    let code_b = query(&cb_b, "code").unwrap();
    let a = victim
        .get(&format!("{cb_base}?code={code_b}&state={state_a}"), &NAV)
        .await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert!(a.text.contains("refused the sign-in code"), "{}", a.text);
    assert!(victim
        .session_cookie(&e.url("demo.example.test", "/chat/"))
        .is_none());
    // The code itself is good: with its own flow's state (and so its own verifier) it works.
    assert_eq!(query(&cb_b, "state").as_deref(), Some(state_b.as_str()));
    let a = attacker.get(&cb_b, &NAV).await;
    assert_eq!(
        a.status, 403,
        "mallory signs in (and is not allowed): {}",
        a.text
    );
}

#[tokio::test]
async fn return_addresses_off_the_site_are_refused() {
    let e = env("subpath").await;
    let c = e.client();
    for rd in [
        "https://evil.test/",
        "//evil.test/x",
        "/\\evil.test",
        "https%3A%2F%2Fevil.test",
    ] {
        let a = c
            .get(
                &format!("{}?rd={rd}", e.url("demo.example.test", "/chat/login")),
                &NAV,
            )
            .await;
        assert_eq!(a.status, 400, "{rd}: {}", a.text);
        assert!(a.location.is_none());
    }
    let a = c
        .get(
            &format!("{}?rd=/forge/x", e.url("demo.example.test", "/chat/login")),
            &NAV,
        )
        .await;
    assert_eq!(a.status, 200, "a path on the site is fine: {}", a.text);
    assert!(
        a.text.contains("You will return to <code>/forge/x</code>")
            && a.text.contains("login?rd=%2Fforge%2Fx&amp;go=1"),
        "the page says where the sign-in returns to: {}",
        a.text
    );
    let a = c
        .get(
            &format!(
                "{}?rd=/forge/x&go=1",
                e.url("demo.example.test", "/chat/login")
            ),
            &NAV,
        )
        .await;
    assert_eq!(a.status, 302, "the button goes to the provider");
}

#[tokio::test]
async fn spoofed_identity_headers_fail_with_and_without_a_session() {
    let e = env("subpath").await;
    let anon = e.client();
    let me = e.url("demo.example.test", "/chat/api/me");
    let a = anon.get(&me, &[("x-forwarded-user", "alice")]).await;
    assert_eq!(a.status, 401, "{}", a.text);
    let a = anon
        .get(
            &e.url("demo.example.test", "/staging/x"),
            &[("x-forwarded-user", "alice")],
        )
        .await;
    assert_eq!(a.status, 401);

    let c = e.client();
    sign_in(&e, &c, "demo.example.test", "/chat/", "alice").await;
    let a = c.get(&me, &[("x-forwarded-user", "root")]).await;
    assert_eq!(a.text, r#"{"user":"alice"}"#, "the gateway's identity wins");
    // Straight to the chat (a local process skipping the gateway): the claim must match the
    // session.
    let id = c
        .session_cookie(&e.url("demo.example.test", "/chat/"))
        .unwrap();
    let direct = reqwest::Client::new();
    let r = direct
        .get(format!("http://{}/api/me", e.chat_addr))
        .header("cookie", format!("__Host-edge-chat={id}"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "demo.example.test")
        .header("x-forwarded-user", "root")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Without a project's host, a session is no session at all.
    let r = direct
        .get(format!("http://{}/api/me", e.chat_addr))
        .header("cookie", format!("__Host-edge-chat={id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn the_verify_endpoint_needs_the_secret() {
    let e = env("subpath").await;
    let c = e.client();
    sign_in(&e, &c, "demo.example.test", "/chat/", "alice").await;
    let id = c
        .session_cookie(&e.url("demo.example.test", "/chat/"))
        .unwrap();
    let direct = reqwest::Client::new();
    let verify = format!("http://{}/_auth/verify", e.chat_addr);
    for secret in [None, Some("wrong"), Some("")] {
        let mut r = direct
            .get(&verify)
            .header("cookie", format!("__Host-edge-chat={id}"))
            .header("x-forwarded-host", "demo.example.test")
            .header("x-forwarded-uri", "/chat/");
        if let Some(s) = secret {
            r = r.header("x-edge-auth-secret", s);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 401, "{secret:?}");
        assert!(r.headers().get("x-forwarded-user").is_none());
    }
    let r = direct
        .get(&verify)
        .header("cookie", format!("__Host-edge-chat={id}"))
        .header("x-forwarded-proto", "https")
        .header(
            "x-forwarded-host",
            format!("demo.example.test:{}", e.https.port()),
        )
        .header("x-forwarded-uri", "/chat/")
        .header("x-edge-auth-secret", &e.fa_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-forwarded-user"], "alice");
    // Through the gateway, a client cannot supply the secret.
    let a = c
        .get(
            &e.url("demo.example.test", "/chat/_auth/verify"),
            &[("x-edge-auth-secret", &e.fa_secret)],
        )
        .await;
    assert_eq!(a.status, 401);
}

#[tokio::test]
async fn expired_sessions_sign_nobody_in() {
    let e = env("subpath").await;
    let c = e.client();
    sign_in(&e, &c, "demo.example.test", "/chat/", "alice").await;
    let me = e.url("demo.example.test", "/chat/api/me");
    assert_eq!(c.get(&me, &[]).await.status, 200);
    let id = c
        .session_cookie(&e.url("demo.example.test", "/chat/"))
        .unwrap();
    // Idle for longer than session_idle (7 days by default).
    e.chat
        .store()
        .age_session(&id, Duration::from_secs(8 * 86400))
        .await
        .unwrap();
    let a = c.get(&me, &[]).await;
    assert_eq!(a.status, 401, "{}", a.text);
    let a = c.get(&e.url("demo.example.test", "/chat/"), &NAV).await;
    assert_eq!(a.status, 302);
}

#[tokio::test]
async fn a_user_not_allowed_gets_403_naming_them() {
    let e = env("subpath").await;
    let c = e.client();
    let a = sign_in(&e, &c, "demo.example.test", "/chat/", "mallory").await;
    assert_eq!(a.status, 403);
    assert!(a.text.contains("<b>mallory</b>"), "{}", a.text);
    // Signed in but not allowed: 403 everywhere, never a redirect loop to sign-in.
    let a = c.get(&e.url("demo.example.test", "/chat/"), &NAV).await;
    assert_eq!(a.status, 403);
    let a = c.get(&e.url("demo.example.test", "/staging/x"), &NAV).await;
    assert_eq!(a.status, 403);
}

fn ws_request(url: &str, origin: &str, cookie: Option<&str>) -> http::Request<()> {
    let mut b = http::Request::builder()
        .uri(url)
        .header("host", url.split('/').nth(2).unwrap())
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "chat.v1")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("origin", origin);
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    b.body(()).unwrap()
}

async fn tls(e: &Env) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(e.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(e.https).await.unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("demo.example.test").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn websockets_need_a_session_and_this_origin() {
    let e = env("subpath").await;
    let url = format!("wss://demo.example.test:{}/chat/ws", e.https.port());
    let origin = e.url("demo.example.test", "");
    // No session: 401 before any 101.
    let err = tokio_tungstenite::client_async(ws_request(&url, &origin, None), tls(&e).await)
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(r) => assert_eq!(r.status(), 401),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
    let c = e.client();
    sign_in(&e, &c, "demo.example.test", "/chat/", "alice").await;
    let id = c
        .session_cookie(&e.url("demo.example.test", "/chat/"))
        .unwrap();
    let cookie = format!("__Host-edge-chat={id}");
    // A session, but another site's page: 403 before any 101 (cross-site WebSocket hijacking).
    let err = tokio_tungstenite::client_async(
        ws_request(&url, "https://evil.test", Some(&cookie)),
        tls(&e).await,
    )
    .await
    .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(r) => assert_eq!(r.status(), 403),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
    // Both right: the socket opens and knows who it serves.
    let (mut ws, resp) =
        tokio_tungstenite::client_async(ws_request(&url, &origin, Some(&cookie)), tls(&e).await)
            .await
            .unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat.v1");
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"t":"hello"}"#,
    ))
    .await
    .unwrap();
    let hello = ws.next().await.unwrap().unwrap();
    let hello: serde_json::Value =
        serde_json::from_str(hello.into_text().unwrap().as_str()).unwrap();
    assert_eq!(hello["t"], "hello_ok");
    assert_eq!(hello["user"], "alice");
    ws.close(None).await.unwrap();
}

/// A second project with its own chat and its own allowlist.
const OTHER_PROJECT: &str = r#"
[[projects]]
name = "other"
default = "chat"
  [[projects.routes]]
  mount = "chat"
  upstream = "chat"
  auth = "forward"
  auth_cache = "0s"
  [projects.chat]
  allowed_users = ["alice", "bob"]
"#;

#[tokio::test]
async fn a_project_is_a_trust_boundary_for_sessions_allowlists_and_conversations() {
    let e = Env::start(Options {
        routing: "subpath",
        chat: OIDC,
        extra_routes: OTHER_PROJECT,
        oidc: true,
        forge: None,
    })
    .await;
    let demo = |p: &str| e.url("demo.example.test", p);
    let other = |p: &str| e.url("other.example.test", p);
    let alice = e.client();
    assert_eq!(
        sign_in(&e, &alice, "demo.example.test", "/chat/", "alice")
            .await
            .status,
        302
    );
    // Alice's session for demo, carried to the other project's chat by hand: no session there.
    let id = alice.session_cookie(&demo("/chat/")).unwrap();
    let cookie = format!("__Host-edge-chat={id}");
    let thief = e.client();
    let a = thief
        .get(&other("/chat/api/me"), &[("cookie", &cookie)])
        .await;
    assert_eq!(a.status, 401, "{}", a.text);
    let a = thief
        .get(
            &other("/chat/"),
            &[&NAV[..], &[("cookie", cookie.as_str())]].concat(),
        )
        .await;
    assert_eq!(a.status, 302, "{}", a.text);
    assert!(a.location.unwrap().contains("/chat/login"));
    // Each project's allowlist: bob is allowed on `other` ([projects.chat]) and not on demo.
    let bob = e.client();
    let a = sign_in(&e, &bob, "demo.example.test", "/chat/", "bob").await;
    assert_eq!(a.status, 403, "{}", a.text);
    let a = sign_in(&e, &bob, "other.example.test", "/chat/", "bob").await;
    assert_eq!(a.status, 302, "{}", a.text);
    assert_eq!(
        bob.get(&other("/chat/api/me"), &[]).await.text,
        r#"{"user":"bob"}"#
    );
    // Conversations: alice's on demo are not on other, where she signs in separately.
    let origin = demo("");
    let a = alice
        .post_json(
            &demo("/chat/api/conversations"),
            &[("origin", &origin)],
            &serde_json::json!({"title": "demo plans"}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let conv: serde_json::Value = serde_json::from_str(&a.text).unwrap();
    let conv_id = conv["id"].as_str().unwrap().to_string();
    assert_eq!(
        sign_in(&e, &alice, "other.example.test", "/chat/", "alice")
            .await
            .status,
        302
    );
    let a = alice.get(&other("/chat/api/conversations"), &[]).await;
    assert_eq!(a.status, 200);
    assert!(!a.text.contains(&conv_id), "{}", a.text);
    let a = alice
        .get(&other(&format!("/chat/api/conversations/{conv_id}")), &[])
        .await;
    assert_eq!(a.status, 404, "{}", a.text);
    let a = alice.get(&demo("/chat/api/conversations"), &[]).await;
    assert!(a.text.contains(&conv_id), "{}", a.text);
}

#[tokio::test]
async fn a_cached_verdict_never_lets_a_cross_site_write_through() {
    let echo = echo().await;
    let extra = format!(
        "  [[projects.routes]]\n  mount = \"notes\"\n  upstream = \"http://{echo}\"\n  auth = \"forward\"\n  auth_cache = \"60s\"\n"
    );
    let e = Env::start(Options {
        routing: "subpath",
        chat: OIDC,
        extra_routes: &extra,
        oidc: true,
        forge: None,
    })
    .await;
    let c = e.client();
    sign_in(&e, &c, "demo.example.test", "/chat/", "alice").await;
    let notes = e.url("demo.example.test", "/notes/x");
    let own = e.url("demo.example.test", "");
    // A same-site GET: allowed, and its verdict cached for a minute.
    let a = c.get(&notes, &[("origin", own.as_str())]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    // A sibling project's page posts to it right after (SameSite=Lax lets the cookie along).
    let sibling = e.url("other.example.test", "");
    for origin in [Some(sibling.as_str()), Some("https://evil.test"), None] {
        let h: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
        let a = c.post(&notes, &h, &[]).await;
        assert_eq!(a.status, 403, "{origin:?}: {}", a.text);
        assert!(
            !a.text.contains("alice"),
            "{origin:?} reached the app as alice"
        );
    }
    let a = c.post(&notes, &[("origin", own.as_str())], &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
}

#[tokio::test]
async fn sign_out_is_a_same_origin_post_and_a_get_only_shows_the_button() {
    let e = env("subpath").await;
    let c = e.client();
    sign_in(&e, &c, "demo.example.test", "/chat/", "alice").await;
    let logout = e.url("demo.example.test", "/chat/logout");
    // A cross-site link or image: the browser sends the Lax cookie with a top-level GET.
    let a = c
        .get(
            &logout,
            &[&NAV[..], &[("sec-fetch-site", "cross-site")]].concat(),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.text.contains("<form method=\"post\""), "{}", a.text);
    assert!(a.set_cookies.is_empty(), "{:?}", a.set_cookies);
    let a = c
        .get(&e.url("demo.example.test", "/chat/api/me"), &[])
        .await;
    assert_eq!(a.status, 200, "a GET signed the user out");
}

#[tokio::test]
async fn cross_origin_posts_are_refused() {
    let e = env("subpath").await;
    let c = e.client();
    sign_in(&e, &c, "demo.example.test", "/chat/", "alice").await;
    let logout = e.url("demo.example.test", "/chat/logout");
    for origin in [Some("https://evil.test"), None] {
        let h: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
        let a = c.post(&logout, &h, &[]).await;
        assert_eq!(a.status, 403, "{origin:?}: {}", a.text);
    }
    // Still signed in: the forged sign-out did nothing.
    let a = c
        .get(&e.url("demo.example.test", "/chat/api/me"), &[])
        .await;
    assert_eq!(a.status, 200);
}
