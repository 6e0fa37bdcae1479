//! Sign-in through Forgejo. Forgejo itself cannot run here, so an in-process fake stands in;
//! it follows Forgejo's documented OAuth2 provider and API behaviour: the authorize endpoint
//! checks the client and the exact redirect URI, the token endpoint wants the client secret,
//! the same redirect URI and the PKCE verifier (S256) and takes each code once, and
//! `/api/v1/user`, `/api/v1/user/orgs`, `/api/v1/user/teams` answer for the token's user. The
//! fake signs in whoever the test says is at the browser, and grants at once (real Forgejo
//! shows its sign-in and grant pages there).
//!
//! The fake is mounted at `/forge/` like the real one, so the browser reaches it through the
//! gateway (`provider_url`), while edge exchanges the code at its internal address
//! (`provider_internal_url`).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use common::*;
use serde_json::json;

#[derive(Default)]
struct Fake {
    redirect_uris: Vec<String>,
    /// Who is signed in at the browser.
    browser_user: String,
    /// code -> (user, redirect_uri, code_challenge)
    codes: HashMap<String, (String, String, String)>,
    /// access token -> user
    tokens: HashMap<String, String>,
    orgs: HashMap<String, Vec<&'static str>>,
    teams: HashMap<String, Vec<(&'static str, &'static str)>>,
    /// Host header of every token request (where edge exchanged codes).
    token_hosts: Vec<String>,
    authorize_hosts: Vec<String>,
    n: u32,
}

type F = Arc<Mutex<Fake>>;

async fn authorize(
    State(f): State<F>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut f = f.lock().unwrap();
    f.authorize_hosts
        .push(h["host"].to_str().unwrap().to_string());
    let redirect = q.get("redirect_uri").cloned().unwrap_or_default();
    if q.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || !f.redirect_uris.contains(&redirect)
    {
        return (StatusCode::BAD_REQUEST, "invalid client or redirect_uri").into_response();
    }
    if q.get("code_challenge_method").map(String::as_str) != Some("S256") {
        return (StatusCode::BAD_REQUEST, "PKCE S256 expected").into_response();
    }
    f.n += 1;
    let code = format!("code{}", f.n);
    let user = f.browser_user.clone();
    let challenge = q.get("code_challenge").cloned().unwrap_or_default();
    f.codes
        .insert(code.clone(), (user, redirect.clone(), challenge));
    let state = q.get("state").cloned().unwrap_or_default();
    Redirect::to(&format!("{redirect}?code={code}&state={state}")).into_response()
}

async fn token(
    State(f): State<F>,
    h: HeaderMap,
    Form(p): Form<HashMap<String, String>>,
) -> Response {
    let mut f = f.lock().unwrap();
    f.token_hosts.push(h["host"].to_str().unwrap().to_string());
    let basic = h
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .map(|b| String::from_utf8(b).unwrap());
    let (id, secret) = match basic {
        Some(b) => {
            let (i, s) = b.split_once(':').unwrap();
            (i.to_string(), s.to_string())
        }
        None => (
            p.get("client_id").cloned().unwrap_or_default(),
            p.get("client_secret").cloned().unwrap_or_default(),
        ),
    };
    let err = |e: &str| (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response();
    if id != CLIENT_ID || secret != CLIENT_SECRET {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "invalid_client" })),
        )
            .into_response();
    }
    let Some((user, redirect, challenge)) = p.get("code").and_then(|c| f.codes.remove(c)) else {
        return err("invalid_grant");
    };
    if p.get("redirect_uri") != Some(&redirect) {
        return err("invalid_grant");
    }
    let verifier = p.get("code_verifier").cloned().unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    if base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest) != challenge {
        return err("invalid_grant");
    }
    f.n += 1;
    let token = format!("tok{}", f.n);
    f.tokens.insert(token.clone(), user);
    Json(json!({ "access_token": token, "token_type": "bearer", "expires_in": 3600 }))
        .into_response()
}

fn user_of(f: &Fake, h: &HeaderMap) -> Option<String> {
    let t = h.get("authorization")?.to_str().ok()?;
    let t = t
        .strip_prefix("Bearer ")
        .or_else(|| t.strip_prefix("token "))?;
    f.tokens.get(t).cloned()
}

async fn api_user(State(f): State<F>, h: HeaderMap) -> Response {
    let f = f.lock().unwrap();
    match user_of(&f, &h) {
        Some(u) => Json(json!({ "id": 1, "login": u, "email": format!("{u}@example.test") }))
            .into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn api_orgs(State(f): State<F>, h: HeaderMap) -> Response {
    let f = f.lock().unwrap();
    match user_of(&f, &h) {
        Some(u) => Json(
            f.orgs
                .get(&u)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|o| json!({ "id": 7, "username": o, "full_name": o }))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn api_teams(State(f): State<F>, h: HeaderMap) -> Response {
    let f = f.lock().unwrap();
    match user_of(&f, &h) {
        Some(u) => Json(
            f.teams
                .get(&u)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|(o, t)| json!({ "id": 9, "name": t, "organization": { "id": 7, "username": o } }))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn fake_forgejo(f: F) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = Router::new()
        .route("/login/oauth/authorize", get(authorize))
        .route("/login/oauth/access_token", post(token))
        .route("/api/v1/user", get(api_user))
        .route("/api/v1/user/orgs", get(api_orgs))
        .route("/api/v1/user/teams", get(api_teams))
        .with_state(f);
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn forgejo_sign_in_by_org_and_team_with_the_exchange_on_the_internal_url() {
    let f: F = Arc::default();
    let forge = fake_forgejo(f.clone()).await;
    let e = Env::start(Options {
        routing: "subpath",
        chat: &format!(
            "login = \"forgejo\"\nprovider_url = \"https://demo.example.test:@PORT@/forge\"\n\
             provider_internal_url = \"http://{forge}\"\nclient_id = \"edge-chat\"\n\
             allowed_orgs = [\"ops\"]\nallowed_teams = [\"dev/core\"]\n"
        ),
        extra_routes: "",
        oidc: false,
        forge: Some(forge),
    })
    .await;
    {
        let mut g = f.lock().unwrap();
        g.redirect_uris = vec![e.url("demo.example.test", "/chat/oauth/callback")];
        g.orgs.insert("bob".into(), vec!["ops"]);
        g.teams
            .insert("carol".into(), vec![("dev", "core"), ("dev", "docs")]);
        g.teams.insert("dave".into(), vec![("dev", "docs")]);
    }
    let nav = [("sec-fetch-mode", "navigate")];
    for (user, allowed) in [("bob", true), ("carol", true), ("dave", false)] {
        f.lock().unwrap().browser_user = user.into();
        let c = e.client();
        let a = c
            .get(&e.url("demo.example.test", "/chat/login?go=1"), &nav)
            .await;
        assert_eq!(a.status, 302, "{}", a.text);
        let authorize = a.location.unwrap();
        assert!(
            authorize.starts_with(&e.url("demo.example.test", "/forge/login/oauth/authorize?")),
            "the browser goes to the public URL: {authorize}"
        );
        // The browser follows: authorize (through the gateway), then back to the callback.
        let a = c.get(&authorize, &nav).await;
        assert_eq!(a.status, 303, "{}", a.text);
        let cb = a.location.unwrap();
        let a = c.get(&cb, &nav).await;
        if allowed {
            assert_eq!(a.status, 302, "{user}: {}", a.text);
            let me = c
                .get(&e.url("demo.example.test", "/chat/api/me"), &[])
                .await;
            assert_eq!(me.text, format!(r#"{{"user":"{user}"}}"#));
        } else {
            assert_eq!(a.status, 403, "{user}: {}", a.text);
            assert!(a.text.contains("<b>dave</b>"));
        }
    }
    let g = f.lock().unwrap();
    assert!(
        g.authorize_hosts
            .iter()
            .all(|h| h.starts_with("demo.example.test")),
        "{:?}",
        g.authorize_hosts
    );
    assert_eq!(g.token_hosts.len(), 3);
    assert!(
        g.token_hosts.iter().all(|h| *h == forge.to_string()),
        "codes are exchanged at the internal URL: {:?}",
        g.token_hosts
    );
}
