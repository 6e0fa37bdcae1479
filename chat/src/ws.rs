//! The chat's WebSocket, subprotocol `chat.v1` (docs/chat-protocol.md): JSON text frames with
//! their type in `t`. Every socket of a user receives the same frames; a socket that falls
//! behind is told (`gap`) and catches up with `subscribe`, the run never waits for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast;

use crate::frames::{run_frame_text, AboutAgent, ActiveRun, ActiveRunSeq, ErrorKind, ServerFrame};
use crate::state::AppState;
use crate::talk;

/// Largest frame a client may send.
pub const MAX_CLIENT_FRAME: usize = 96 * 1024;
/// The largest frame the socket reads at all (see `app::ws`); held only while it is refused.
pub const READ_CAP: usize = 1024 * 1024;
/// Frames a socket writes at once when several are waiting.
const BATCH: usize = 256;
const PING_EVERY: Duration = Duration::from_secs(20);
/// A socket silent (no pong, no frame) this long is closed.
const SILENT_FOR: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum ClientFrame {
    Hello {},
    Subscribe {
        conversation_id: String,
        /// Resume a run after this frame; absent: a snapshot of the whole conversation.
        #[serde(default)]
        run_id: Option<String>,
        #[serde(default)]
        last_seq: Option<u64>,
    },
    Send {
        conversation_id: String,
        text: String,
        #[serde(default)]
        client_msg_id: Option<String>,
    },
    Cancel {
        run_id: String,
    },
    /// An answer to a run's `permission_request`: `allow` or `deny`; `always` (with allow)
    /// allows the tool for the rest of the conversation.
    PermissionResponse {
        run_id: String,
        request_id: String,
        behavior: String,
        #[serde(default)]
        always: bool,
    },
    Ping {
        #[serde(default)]
        ts: Option<u64>,
    },
}

/// One socket of `user`, an account key (`project/user`, see `Session::account`): it sees the
/// frames of that project's conversations only.
pub(crate) async fn session(socket: WebSocket, st: Arc<AppState>, user: String) {
    let (mut tx, mut rx) = socket.split();
    let mut hub = st.hubs.sender(&user).subscribe();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut heard = Instant::now();
    loop {
        let out: Vec<String> = tokio::select! {
            m = rx.next() => {
                heard = Instant::now();
                match m {
                    Some(Ok(Message::Text(t))) if t.len() > MAX_CLIENT_FRAME => {
                        let _ = tx.send(too_big()).await;
                        break;
                    }
                    Some(Ok(Message::Text(t))) => handle(&st, &user, t.as_str()).await,
                    Some(Ok(Message::Binary(_))) => vec![error(ErrorKind::Invalid, "frames are JSON text")],
                    Some(Err(e)) => {
                        // Past the reader's own cap (READ_CAP): the same answer, if the socket
                        // still takes one.
                        let text = e.to_string();
                        if text.contains("too long") || text.contains("Space limit") {
                            let _ = tx.send(too_big()).await;
                        }
                        break;
                    }
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => Vec::new(),
                }
            }
            f = hub.recv() => match f {
                Ok(text) => {
                    // Whatever else is waiting goes out with it: one write for many frames.
                    let mut out = vec![text.to_string()];
                    while out.len() < BATCH {
                        match hub.try_recv() {
                            Ok(t) => out.push(t.to_string()),
                            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                                out.push(ServerFrame::Gap { missed: n }.text())
                            }
                            Err(_) => break,
                        }
                    }
                    out
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    vec![ServerFrame::Gap { missed: n }.text()]
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = ping.tick() => {
                if heard.elapsed() > SILENT_FOR {
                    let _ = tx.send(Message::Close(Some(CloseFrame { code: 4008, reason: "no pong".into() }))).await;
                    break;
                }
                if tx.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
                Vec::new()
            }
        };
        if out.is_empty() {
            continue;
        }
        for text in out {
            if tx.feed(Message::Text(text.into())).await.is_err() {
                return;
            }
        }
        if tx.flush().await.is_err() {
            return;
        }
    }
}

/// The close frame for a client frame over [`MAX_CLIENT_FRAME`]: 1009, Message Too Big (RFC 6455
/// §7.4.1), so the client knows why (a dropped socket reads as 1006).
fn too_big() -> Message {
    Message::Close(Some(CloseFrame {
        code: 1009,
        reason: format!("frames are at most {} KiB", MAX_CLIENT_FRAME / 1024).into(),
    }))
}

fn error(code: ErrorKind, msg: &str) -> String {
    ServerFrame::Error { code, msg }.text()
}

async fn handle(st: &AppState, user: &str, text: &str) -> Vec<String> {
    let f: ClientFrame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => return vec![error(ErrorKind::Invalid, &e.to_string())],
    };
    let cfg = st.config.load_full();
    match f {
        ClientFrame::Hello {} => {
            let used = st.store.used(user).await.unwrap_or(crate::store::Used {
                hour: 0,
                day: 0,
                tokens_day: 0,
            });
            let runs = st.orch.runs_of(user);
            let active_runs = runs
                .iter()
                .map(|r| ActiveRun {
                    conversation_id: &r.conversation,
                    run_id: &r.id,
                })
                .collect();
            let chat = talk::chat_for_account(&cfg, user);
            let about = chat
                .as_ref()
                .and_then(|c| c.agent.as_ref())
                .map(|a| AboutAgent {
                    kind: match a.kind {
                        edge_routing::AgentKind::Claude { .. } => "claude",
                        edge_routing::AgentKind::Command { .. } => "command",
                    },
                    program: match &a.kind {
                        edge_routing::AgentKind::Claude { command } => command.clone(),
                        edge_routing::AgentKind::Command { argv } => {
                            argv.first().cloned().unwrap_or_default()
                        }
                    },
                    workspace: a.workspace.display().to_string(),
                    permission_mode: a.permission_mode.clone(),
                });
            let agent = about.is_some();
            vec![ServerFrame::HelloOk {
                user: crate::store::display_user(user),
                proto: 1,
                limits: talk::limits_json(&cfg, user, used),
                active_runs,
                agent,
                about,
            }
            .text()]
        }
        ClientFrame::Ping { ts } => vec![ServerFrame::Pong { ts }.text()],
        ClientFrame::Cancel { run_id } => {
            match st.orch.runs_of(user).into_iter().find(|r| r.id == run_id) {
                Some(r) => {
                    r.cancel();
                    Vec::new()
                }
                None => vec![error(ErrorKind::NotFound, "no such run going")],
            }
        }
        ClientFrame::PermissionResponse {
            run_id,
            request_id,
            behavior,
            always,
        } => {
            let allow = match behavior.as_str() {
                "allow" => true,
                "deny" => false,
                other => {
                    return vec![error(
                        ErrorKind::Invalid,
                        &format!("behavior {other:?}: use \"allow\" or \"deny\""),
                    )]
                }
            };
            match st.orch.runs_of(user).into_iter().find(|r| r.id == run_id) {
                Some(r) => {
                    let by = crate::store::display_user(user).to_string();
                    if r.answer(&request_id, allow, &by, always) {
                        Vec::new()
                    } else {
                        vec![error(
                            ErrorKind::NotFound,
                            "no such question open (answered already, timed out, or the run ended)",
                        )]
                    }
                }
                None => vec![error(ErrorKind::NotFound, "no such run going")],
            }
        }
        ClientFrame::Send {
            conversation_id,
            text,
            client_msg_id,
        } => match talk::send(st, user, &conversation_id, &text, client_msg_id.as_deref()).await {
            Ok(run_id) => vec![ServerFrame::Accepted {
                client_msg_id: client_msg_id.as_deref(),
                run_id: &run_id,
                conversation_id: &conversation_id,
            }
            .text()],
            Err(r) => vec![ServerFrame::Rejected {
                client_msg_id: client_msg_id.as_deref(),
                code: r.code,
                detail: &r.detail,
                retry_after: r.retry_after,
            }
            .text()],
        },
        ClientFrame::Subscribe {
            conversation_id,
            run_id,
            last_seq,
        } => subscribe(st, user, &conversation_id, run_id, last_seq),
    }
}

/// What a tab needs to catch up: the frames of a run after `last_seq` (from memory, else from
/// the conversation file), or else a snapshot of the whole conversation.
fn subscribe(
    st: &AppState,
    user: &str,
    conversation: &str,
    run_id: Option<String>,
    last_seq: Option<u64>,
) -> Vec<String> {
    let active = st.orch.active(user, conversation);
    if let (Some(run_id), Some(last)) = (&run_id, last_seq) {
        if let Some(run) = active.as_ref().filter(|r| &r.id == run_id) {
            if let (Some(missed), _) = run.subscribe(last) {
                return missed
                    .iter()
                    .map(|f| run_frame_text(conversation, f))
                    .collect();
            }
        }
        // Not in memory: from disk.
        if let Ok(Some((_, records))) = st.orch.conversations().open(user, conversation) {
            let frames: Vec<String> = records
                .iter()
                .filter(|r| r.run_id.as_ref() == Some(run_id) && r.seq.is_some_and(|s| s > last))
                .filter_map(|r| {
                    let body = r.frame.clone()?;
                    let f = crate::runs::RunFrame {
                        run_id: run_id.clone(),
                        seq: r.seq?,
                        body,
                    };
                    Some(run_frame_text(conversation, &f))
                })
                .collect();
            let has_start = records
                .iter()
                .any(|r| r.run_id.as_ref() == Some(run_id) && r.seq == Some(last.max(1)));
            if has_start || !frames.is_empty() {
                return frames;
            }
        }
    }
    match st.orch.conversations().open(user, conversation) {
        Ok(Some((meta, records))) => {
            let active_run = active.as_ref().map(|r| ActiveRunSeq {
                run_id: &r.id,
                last_seq: r.subscribe(0).0.and_then(|v| v.last().map(|f| f.seq)),
            });
            vec![ServerFrame::Snapshot {
                conversation_id: conversation,
                meta: &meta,
                records: &records,
                active_run,
            }
            .text()]
        }
        Ok(None) | Err(crate::Error::NotFound(_)) => {
            vec![error(ErrorKind::NotFound, "no such conversation")]
        }
        Err(e) => vec![error(ErrorKind::Internal, &e.to_string())],
    }
}
