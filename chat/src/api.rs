//! `/chat/api/...`: conversations (list, create, open, rename, delete, export as Markdown),
//! sending a message over HTTP, and the user's limits. JSON in and out; every route needs a
//! session and sees only the user's own conversations.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::session::{json_error, SignedIn};
use crate::state::St;
use crate::talk;

fn internal(e: crate::Error) -> Response {
    e.into_response()
}

fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "no such conversation")
}

pub(crate) async fn list(State(st): State<St>, SignedIn(s): SignedIn) -> Response {
    let cfg = st.config.load();
    if cfg.projects.get(cfg.default_project).map(|p| &p.name) == Some(&s.project) {
        if let Err(e) = st.orch.conversations().adopt_legacy(&s.user, &s.account()) {
            tracing::warn!(error = %e, "could not move conversations from before per-project chats");
        }
    }
    match st.orch.conversations().list(&s.account()) {
        Ok(v) => Json(v).into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
pub(crate) struct Title {
    #[serde(default)]
    title: Option<String>,
}

fn clean_title(t: Option<String>) -> Option<String> {
    let t = t.unwrap_or_else(|| crate::conversations::UNTITLED.into());
    let t = t.trim();
    (!t.is_empty() && t.len() <= 200 && !t.chars().any(char::is_control)).then(|| t.to_string())
}

fn bad_title() -> Response {
    json_error(
        StatusCode::BAD_REQUEST,
        "title: 1 to 200 characters, no control characters",
    )
}

pub(crate) async fn create(
    State(st): State<St>,
    SignedIn(s): SignedIn,
    Json(b): Json<Title>,
) -> Response {
    let Some(title) = clean_title(b.title) else {
        return bad_title();
    };
    match st.orch.conversations().create(&s.account(), &title) {
        Ok(m) => (StatusCode::CREATED, Json(m)).into_response(),
        Err(e) => internal(e),
    }
}

pub(crate) async fn open(
    State(st): State<St>,
    SignedIn(s): SignedIn,
    Path(id): Path<String>,
) -> Response {
    match st.orch.conversations().open(&s.account(), &id) {
        Ok(Some((meta, records))) => {
            let active = st.orch.active(&s.account(), &id).map(|r| r.id.clone());
            Json(serde_json::json!({"meta": meta, "records": records, "active_run": active}))
                .into_response()
        }
        Ok(None) | Err(crate::Error::NotFound(_)) => not_found(),
        Err(e) => internal(e),
    }
}

pub(crate) async fn rename(
    State(st): State<St>,
    SignedIn(s): SignedIn,
    Path(id): Path<String>,
    Json(b): Json<Title>,
) -> Response {
    let Some(title) = clean_title(b.title) else {
        return bad_title();
    };
    match st.orch.conversations().rename(&s.account(), &id, &title) {
        Ok(Some(m)) => Json(m).into_response(),
        Ok(None) | Err(crate::Error::NotFound(_)) => not_found(),
        Err(e) => internal(e),
    }
}

pub(crate) async fn delete(
    State(st): State<St>,
    SignedIn(s): SignedIn,
    Path(id): Path<String>,
) -> Response {
    if st.orch.active(&s.account(), &id).is_some() {
        return json_error(
            StatusCode::CONFLICT,
            "a run is going in this conversation; cancel it first",
        );
    }
    match st.orch.conversations().delete(&s.account(), &id) {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) | Err(crate::Error::NotFound(_)) => not_found(),
        Err(e) => internal(e),
    }
}

pub(crate) async fn export(
    State(st): State<St>,
    SignedIn(s): SignedIn,
    Path(id): Path<String>,
) -> Response {
    let title = st
        .orch
        .conversations()
        .meta(&s.account(), &id)
        .ok()
        .flatten()
        .map(|m| m.title)
        .unwrap_or_default();
    match st.orch.conversations().export_markdown(&s.account(), &id) {
        Ok(Some(md)) => {
            let mut r = md.into_response();
            let hs = r.headers_mut();
            hs.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/markdown; charset=utf-8"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!(
                "attachment; filename=\"{}.md\"",
                file_name(&title, &id)
            )) {
                hs.insert(header::CONTENT_DISPOSITION, v);
            }
            r
        }
        Ok(None) | Err(crate::Error::NotFound(_)) => not_found(),
        Err(e) => internal(e),
    }
}

/// A download's name after the conversation's title: letters, digits and dashes (a header
/// value takes nothing else safely), at most 60; the id when nothing is left.
pub(crate) fn file_name(title: &str, id: &str) -> String {
    let mut s = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
        if s.len() >= 60 {
            break;
        }
    }
    let s = s.trim_end_matches('-');
    if s.is_empty() {
        format!("chat-{id}")
    } else {
        s.to_string()
    }
}

#[derive(Deserialize)]
pub(crate) struct Message {
    text: String,
}

/// Sends a message over HTTP: 202 with the run id; 429 with `Retry-After` over a limit.
pub(crate) async fn send(
    State(st): State<St>,
    SignedIn(s): SignedIn,
    Path(id): Path<String>,
    Json(b): Json<Message>,
) -> Response {
    match talk::send(&st, &s.account(), &id, &b.text, None).await {
        Ok(run_id) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"run_id": run_id})),
        )
            .into_response(),
        Err(r) => {
            use crate::frames::Reject;
            let status = match r.code {
                Reject::RateLimited => StatusCode::TOO_MANY_REQUESTS,
                Reject::Busy => StatusCode::CONFLICT,
                Reject::NotFound => StatusCode::NOT_FOUND,
                Reject::Invalid => StatusCode::BAD_REQUEST,
                Reject::NoAgent | Reject::AgentMissing | Reject::Sandbox => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                Reject::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let mut resp = (status, Json(&r)).into_response();
            if let Some(secs) = r.retry_after {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            resp
        }
    }
}

pub(crate) async fn limits(State(st): State<St>, SignedIn(s): SignedIn) -> Response {
    match st.store.used(&s.account()).await {
        Ok(u) => Json(talk::limits_json(&st.config.load(), &s.account(), u)).into_response(),
        Err(e) => internal(e),
    }
}
