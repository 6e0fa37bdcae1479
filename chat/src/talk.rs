//! Talking to the agent, the part HTTP and the WebSocket share: checks before a run (an agent
//! configured and installed, the conversation the user's, no run going, the user's limits),
//! then the run, and the fan-out of its frames to every socket of the user.

use std::path::Path;

use edge_routing::{AgentKind, Config};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::frames::{run_frame_text, Reject, ServerFrame};
use crate::runs::{Agent, AgentSpec, RunBody};
use crate::store::Used;

/// Why a message did not start a run.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    pub code: Reject,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

fn reject(code: Reject, detail: impl Into<String>) -> Rejection {
    Rejection {
        code,
        detail: detail.into(),
        retry_after: None,
    }
}

/// The longest message accepted.
pub const MAX_MESSAGE: usize = 64 * 1024;

fn on_path(cmd: &str) -> bool {
    if cmd.contains('/') {
        return Path::new(cmd).is_file();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

/// The chat config in force for an account's project (`project/user`).
pub(crate) fn chat_for_account<'c>(
    cfg: &'c Config,
    account: &str,
) -> Option<std::borrow::Cow<'c, edge_routing::ChatConfig>> {
    let project = account.split_once('/').map_or("", |(p, _)| p);
    let p = cfg.projects.iter().position(|q| q.name == project)?;
    cfg.chat_of(p)
}

/// The account's limits (its project's) and what is used of them.
pub fn limits_json(cfg: &Config, account: &str, used: Used) -> serde_json::Value {
    let l = chat_for_account(cfg, account)
        .map(|c| c.limits)
        .unwrap_or_default();
    serde_json::json!({
        "hour": { "used": used.hour, "max": l.requests_per_hour },
        "day": { "used": used.day, "max": l.requests_per_day },
        "tokens_day": { "used": used.tokens_day, "max": l.tokens_per_day },
        "concurrent_runs": l.concurrent_runs,
    })
}

/// Starts a run for `text` in the conversation of `user`, an account (`project/user`), with
/// that project's agent, sandbox and limits; its frames go to every socket of the account. The
/// run id, or why not.
pub(crate) async fn send(
    st: &crate::state::AppState,
    user: &str,
    conversation: &str,
    text: &str,
    client_msg_id: Option<&str>,
) -> Result<String, Rejection> {
    let cfg = st.config.load_full();
    let (store, orch, hubs) = (&st.store, &st.orch, &st.hubs);
    let Some(chat) = chat_for_account(&cfg, user) else {
        return Err(reject(Reject::NoAgent, "the chat is not configured"));
    };
    let Some(agent) = chat.agent.as_ref() else {
        return Err(reject(
            Reject::NoAgent,
            "no agent is configured: set chat.agent.kind (\"claude\" or \"command\") and chat.agent.workspace in edge's config",
        ));
    };
    if text.trim().is_empty() || text.len() > MAX_MESSAGE {
        return Err(reject(
            Reject::Invalid,
            format!("a message has 1 to {MAX_MESSAGE} bytes"),
        ));
    }
    let program = match &agent.kind {
        AgentKind::Claude { command } => command.clone(),
        AgentKind::Command { argv } => argv.first().cloned().unwrap_or_default(),
    };
    if !on_path(&program) {
        return Err(reject(
            Reject::AgentMissing,
            format!("the agent {program:?} is not installed on this host (chat.agent.command)"),
        ));
    }
    let Some(profile) = cfg.sandbox_profiles.get(&agent.sandbox) else {
        return Err(reject(
            Reject::Sandbox,
            format!(
                "no sandbox profile {:?}: define [sandbox.profiles.{}] or set chat.agent.sandbox",
                agent.sandbox, agent.sandbox
            ),
        ));
    };
    let confine = agent_confine(profile, &cfg.state_dir);
    // Its meta only: the records are not needed to start a run.
    let meta = match orch.conversations().meta(user, conversation) {
        Ok(Some(m)) => m,
        Ok(None) | Err(crate::Error::NotFound(_)) => {
            return Err(reject(Reject::NotFound, "no such conversation"))
        }
        Err(e) => return Err(reject(Reject::Internal, e.to_string())),
    };
    if orch.active(user, conversation).is_some() {
        return Err(reject(
            Reject::Busy,
            "this conversation already has a run going",
        ));
    }
    if orch.runs_of(user).len() as u64 >= chat.limits.concurrent_runs {
        return Err(reject(
            Reject::Busy,
            format!(
                "you have {} runs going, the most at once (chat.limits.concurrent_runs)",
                chat.limits.concurrent_runs
            ),
        ));
    }
    match store
        .take_request(
            user,
            chat.limits.requests_per_hour,
            chat.limits.requests_per_day,
            chat.limits.tokens_per_day,
        )
        .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(secs)) => {
            return Err(Rejection {
                code: Reject::RateLimited,
                detail: "over your request or token limit for now".into(),
                retry_after: Some(secs),
            })
        }
        Err(e) => return Err(reject(Reject::Internal, e.to_string())),
    }
    let session = match &agent.kind {
        AgentKind::Claude { .. } => match orch.conversations().session(user, conversation) {
            Ok(s) => s,
            Err(e) => return Err(reject(Reject::Internal, e.to_string())),
        },
        AgentKind::Command { .. } => None,
    };
    let spec = AgentSpec {
        agent: match &agent.kind {
            AgentKind::Claude { command } => Agent::Claude {
                command: command.clone(),
                permission_mode: agent.permission_mode.clone(),
            },
            AgentKind::Command { argv } => Agent::Command { argv: argv.clone() },
        },
        workspace: agent.workspace.to_string_lossy().into_owned(),
        timeout: agent.timeout,
        permission_timeout: agent.permission_timeout,
        sandbox: Some(confine),
    };
    let run = orch
        .start(
            user,
            conversation,
            text,
            &spec,
            session.as_ref().map(|(s, resume)| (s.as_str(), *resume)),
        )
        .map_err(|e| match e {
            crate::Error::Busy(m) => reject(Reject::Busy, m),
            crate::Error::NotFound(m) => reject(Reject::NotFound, m),
            other => reject(Reject::Internal, other.to_string()),
        })?;
    let _ = orch.conversations().touch(user, conversation);
    // The first message names a conversation nobody has named.
    if meta.title == crate::conversations::UNTITLED {
        let title = crate::conversations::title_from(text);
        if let Err(e) = orch.conversations().rename(user, conversation, &title) {
            tracing::warn!(error = %e, "naming a conversation after its first message");
        }
    }
    hubs.publish(
        user,
        ServerFrame::UserMessage {
            conversation_id: conversation,
            run_id: &run.id,
            client_msg_id,
            text,
            user,
        }
        .text(),
    );
    // Every frame of the run to every socket of the user; the tokens to the user's day.
    let (missed, mut rx) = run.subscribe(0);
    let (hubs, store, user, conv, live) = (
        hubs.clone(),
        store.clone(),
        user.to_string(),
        conversation.to_string(),
        run.clone(),
    );
    tokio::spawn(async move {
        let mut last = 0;
        let mut usage = None;
        let mut frames = missed.unwrap_or_default();
        while usage.is_none() {
            for f in &frames {
                if f.seq <= last {
                    continue;
                }
                last = f.seq;
                hubs.publish(&user, run_frame_text(&conv, f));
                if let RunBody::End { usage: u, .. } = &f.body {
                    usage = Some(*u);
                }
            }
            if usage.is_some() {
                break;
            }
            frames = match rx.recv().await {
                Ok(f) => vec![f],
                // Fell behind the live channel: the rest from the run's ring, in order (the
                // receiver then goes on from its oldest frame; duplicates are skipped by seq).
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    live.subscribe(last).0.unwrap_or_default()
                }
                Err(broadcast::error::RecvError::Closed) => break,
            };
        }
        if let Some(u) = usage.filter(|u| u.total() > 0) {
            if let Err(e) = store.add_tokens(&user, u.total()).await {
                tracing::error!(error = %e, "could not count a run's tokens");
            }
        }
    });
    Ok(run.id.clone())
}

/// How a chat run with `profile` is confined: the profile, plus edge's own state hidden (the
/// agent never sees sessions, secrets or conversations), and the agents' home.
pub fn agent_confine(
    profile: &edge_sandbox::Profile,
    state_dir: &std::path::Path,
) -> edge_sandbox::Confine {
    let state_dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let mut profile = profile.clone();
    profile.hidden.push(state_dir.clone());
    edge_sandbox::Confine {
        home: profile.home_for(&state_dir),
        profile,
    }
}
