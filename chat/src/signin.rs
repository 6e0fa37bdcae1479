//! Signing in and out: the sign-in page (one-time links, or a provider's OAuth/OIDC flow), the
//! provider's callback, one-time link sign-in, and sign-out.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use edge_routing::LoginKind;
use serde::Deserialize;

use crate::ids::random;
use crate::login;
use crate::pages::{esc, page};
use crate::session::*;
use crate::state::St;
use crate::store::Flow;
use crate::Error;

#[derive(Deserialize)]
pub(crate) struct LoginQuery {
    rd: Option<String>,
    /// Set by the sign-in page's button: go to the provider now.
    go: Option<String>,
}

/// Who signs people in, as the button names it: Forgejo, or the OIDC provider's host.
fn provider_label(chat: &edge_routing::ChatConfig) -> String {
    match chat.login {
        LoginKind::Forgejo => "Forgejo".into(),
        _ => chat
            .provider_url
            .as_deref()
            .and_then(|u| url::Url::parse(u).ok())
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_else(|| "the sign-in provider".into()),
    }
}

/// A button (a link: a form's `form-action` would also bind the provider's redirect) that
/// starts a sign-in returning to `rd`. A GET, as before: starting a flow changes nothing until the
/// provider's callback, which `state` and PKCE guard.
pub(crate) fn sign_in_button(base: &str, rd: &str, label: &str) -> String {
    let rd: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
    format!(
        "<p><a class=\"button\" role=\"button\" href=\"{}/login?rd={}&amp;go=1\">{}</a></p>",
        esc(base),
        esc(&rd),
        esc(label)
    )
}

pub(crate) async fn login(
    State(st): State<St>,
    h: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    let cfg = st.config.load_full();
    let p = public(&cfg, &h);
    let rd = match safe_rd(&cfg, &p, q.rd.as_deref().unwrap_or("")) {
        Ok(rd) => rd,
        Err(why) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Bad return address",
                &format!(
                "<p>The sign-in was asked to return to <code>{}</code>, which is refused: {}.</p>",
                esc(q.rd.as_deref().unwrap_or("")),
                esc(&why)
            ),
            )
        }
    };
    let Some(chat) = cfg.chat.as_ref() else {
        return Error::Config("no [chat] table".into()).into_response();
    };
    if chat.login == LoginKind::Token {
        return page(
            StatusCode::UNAUTHORIZED,
            "Sign in",
            "<p>This chat signs people in with a one-time link. <code>edge up</code> prints one \
             when it starts; <code>edge chat login-url</code> prints a new one.</p>",
        );
    }
    if q.go.is_none() {
        // The signed-out page: what this is, where the sign-in returns to, and one button.
        let back = if rd == p.root_path() {
            String::new()
        } else {
            format!("<p>You will return to <code>{}</code>.</p>", esc(&rd))
        };
        let what = if p.project_name.is_empty() {
            "this site".to_string()
        } else {
            format!("the <b>{}</b> project", esc(&p.project_name))
        };
        return page(
            StatusCode::OK,
            "Sign in",
            &format!(
                "<p>The chat, CI, staging and other pages of {what} are for signed-in people.</p>{back}{}",
                sign_in_button(&p.base, &rd, &format!("Sign in with {}", provider_label(chat)))
            ),
        );
    }
    let result = async {
        let e = login::endpoints(chat, &st.http, &st.discovery).await?;
        let state = random(32)?;
        let redirect_uri = format!("{}/oauth/callback", p.base);
        let (url, verifier) =
            login::authorize_url(chat, st.client_secret.as_deref(), &e, &redirect_uri, &state)?;
        st.store
            .put_flow(
                &state,
                Flow {
                    verifier,
                    redirect_uri,
                    rd,
                },
            )
            .await?;
        Ok::<_, Error>(url)
    }
    .await;
    match result {
        Ok(url) => redirect(&url),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
pub(crate) struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

pub(crate) async fn callback(
    State(st): State<St>,
    h: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let cfg = st.config.load_full();
    let p = public(&cfg, &h);
    let again = sign_in_button(&p.base, &p.root_path(), "Sign in again");
    if let Some(err) = q.error {
        return page(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            &format!(
                "<p>The provider said: <code>{}</code> {}</p>{again}",
                esc(&err),
                esc(q.error_description.as_deref().unwrap_or(""))
            ),
        );
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            &format!("<p>The callback needs <code>code</code> and <code>state</code>.</p>{again}"),
        );
    };
    let Some(chat) = cfg.chat.as_ref() else {
        return Error::Config("no [chat] table".into()).into_response();
    };
    let flow = match st.store.take_flow(&state).await {
        Ok(Some(f)) => f,
        Ok(None) => {
            tracing::info!("sign-in callback with an unknown, used or expired state");
            return page(
                StatusCode::BAD_REQUEST,
                "Sign-in failed",
                &format!("<p>This sign-in is unknown, already used or expired (sign-ins last 10 minutes).</p>{again}"),
            );
        }
        Err(e) => return e.into_response(),
    };
    let result = async {
        let e = login::endpoints(chat, &st.http, &st.discovery).await?;
        login::finish(
            chat,
            st.client_secret.as_deref(),
            &e,
            &st.http,
            &flow.redirect_uri,
            &code,
            &flow.verifier,
        )
        .await
    }
    .await;
    let id = match result {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    // Who may use this project's chat: its own allowlist, where it has one.
    let Some(project_chat) = p.project.and_then(|i| cfg.chat_of(i)) else {
        return page(
            StatusCode::NOT_FOUND,
            "No chat here",
            "<p>This host serves no project's chat.</p>",
        );
    };
    let allowed = login::allowed(&project_chat, &id);
    let cookie = match start_session(&st, &p, &id.user, allowed).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let mut r = if allowed {
        redirect(&flow.rd)
    } else {
        tracing::info!(user = %id.user, "signed in, but not on the allowlist");
        not_allowed(&id.user)
    };
    r.headers_mut().append(header::SET_COOKIE, cookie);
    r
}

#[derive(Deserialize)]
pub(crate) struct TokenQuery {
    token: Option<String>,
}

pub(crate) async fn token_login(
    State(st): State<St>,
    h: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Response {
    let cfg = st.config.load_full();
    let p = public(&cfg, &h);
    let user = match q.token.as_deref() {
        Some(t) if !t.is_empty() && t.len() <= 128 => match st.store.take_login_token(t).await {
            Ok(u) => u,
            Err(e) => return e.into_response(),
        },
        _ => None,
    };
    let Some(user) = user else {
        return page(
            StatusCode::UNAUTHORIZED,
            "Link used or expired",
            "<p>This sign-in link was already used or has expired. Run \
             <code>edge chat login-url</code> on the server for a new one.</p>",
        );
    };
    match start_session(&st, &p, &user, true).await {
        Ok(cookie) => {
            let mut r = redirect(&p.root_path());
            r.headers_mut().append(header::SET_COOKIE, cookie);
            r
        }
        Err(e) => e.into_response(),
    }
}

/// Sign-out is a same-origin POST (the origin guard checks it): a GET, which any site can make
/// a browser send with `SameSite=Lax` cookies, only shows the button.
pub(crate) async fn logout_page() -> Response {
    let mut r = page(
        StatusCode::OK,
        "Sign out",
        "<form method=\"post\" action=\"logout\"><button>Sign out</button></form>",
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(crate) async fn logout(State(st): State<St>, h: HeaderMap) -> Response {
    let cfg = st.config.load_full();
    let p = public(&cfg, &h);
    for id in session_ids(&h) {
        if let Err(e) = st.store.delete_session(&id).await {
            return e.into_response();
        }
    }
    let mut r = page(
        StatusCode::OK,
        "Signed out",
        &format!(
            "<p>You are signed out.</p>{}",
            sign_in_button(&p.base, &p.root_path(), "Sign in again")
        ),
    );
    r.headers_mut()
        .append(header::SET_COOKIE, session_cookie(&p, "", 0));
    r
}
