//! The agent's tool permission questions (`permission_mode = "ask"`): asked of every tab,
//! answered once (by a person, by an earlier "always", or by the timeout), written back on the
//! agent's stdin.

use super::task::{AgentResult, RunTask};
use super::*;

/// One of the agent's open questions, as the run's task keeps it.
#[derive(Debug)]
pub(super) struct Question {
    pub(super) tool: String,
    /// Sent back unchanged with an allow.
    pub(super) input: serde_json::Value,
    /// Unanswered then, it is denied.
    pub(super) deadline: std::time::Instant,
}

/// An answer to one of a run's permission questions.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) request_id: String,
    pub(super) allow: bool,
    pub(super) by: String,
    pub(super) always: bool,
}

impl RunTask<'_> {
    /// The agent's events: its questions become `permission_request` frames (stored before
    /// anyone can answer them), answered at once for tools the conversation always allows;
    /// the rest are stored and sent as they are.
    pub(super) async fn emit_agent(
        &mut self,
        events: Vec<Event>,
        result: &mut Option<AgentResult>,
        to: &mpsc::UnboundedSender<ToWorker>,
        attempt: &str,
        spec: &AgentSpec,
    ) {
        if !events
            .iter()
            .any(|e| matches!(e, Event::PermissionRequest { .. }))
        {
            return self.emit_events(events, result).await;
        }
        let allowed = self
            .orch
            .conversations
            .meta(&self.run.user, &self.run.conversation)
            .ok()
            .flatten()
            .map(|m| m.allowed_tools)
            .unwrap_or_default();
        let mut plain = Vec::new();
        let mut bodies = Vec::new();
        let mut at_once = Vec::new();
        for e in events {
            match e {
                Event::PermissionRequest {
                    request_id,
                    tool,
                    input,
                    ..
                } => {
                    if !plain.is_empty() {
                        self.emit_events(std::mem::take(&mut plain), result).await;
                    }
                    if allowed.contains(&tool) {
                        at_once.push(request_id.clone());
                    }
                    self.run
                        .open_questions
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(request_id.clone());
                    bodies.push(RunBody::PermissionRequest {
                        request_id: request_id.clone(),
                        summary: summarize(&tool, &input),
                        tool: tool.clone(),
                        input: input.clone(),
                    });
                    self.questions.insert(
                        request_id,
                        Question {
                            tool,
                            input,
                            deadline: std::time::Instant::now() + spec.permission_timeout,
                        },
                    );
                    self.emit(std::mem::take(&mut bodies)).await;
                }
                other => plain.push(other),
            }
        }
        self.emit_events(plain, result).await;
        for id in at_once {
            if self.run.close_question(&id) {
                self.resolve(to, attempt, &id, true, "always", false).await;
            }
        }
    }

    /// Answers question `id` on the agent's stdin, and says so to every tab (and the
    /// conversation file). `by`: who answered, `always`, `timeout` or `ended`.
    pub(super) async fn resolve(
        &mut self,
        to: &mpsc::UnboundedSender<ToWorker>,
        attempt: &str,
        id: &str,
        allow: bool,
        by: &str,
        always: bool,
    ) {
        let Some(q) = self.questions.remove(id) else {
            return;
        };
        let why = match by {
            "timeout" => "nobody answered in time, so it was denied".to_string(),
            "ended" => "the run ended before an answer".to_string(),
            who => format!("{who} denied this in the chat"),
        };
        let line = edge_sandbox::permission_answer(id, allow, &q.input, &why);
        let _ = to.send(ToWorker::Stdin {
            attempt_id: attempt.to_string(),
            line,
        });
        if allow && always {
            if let Err(e) =
                self.orch
                    .conversations
                    .allow_tool(&self.run.user, &self.run.conversation, &q.tool)
            {
                tracing::warn!(run = %self.run.id, error = %e, "recording an always-allowed tool");
            }
        }
        if by != "ended" {
            self.orch.metrics.permission(match (allow, by) {
                (_, "timeout") => "timeout",
                (true, _) => "allow",
                (false, _) => "deny",
            });
        }
        self.emit(vec![RunBody::PermissionResolved {
            request_id: id.to_string(),
            behavior: if allow { "allow" } else { "deny" }.into(),
            by: by.to_string(),
        }])
        .await;
    }

    /// When the first open question goes unanswered.
    pub(super) fn next_question_deadline(&self) -> Option<std::time::Instant> {
        self.questions.values().map(|q| q.deadline).min()
    }

    /// Denies the questions whose time is up (unless an answer took them first).
    pub(super) async fn time_out_questions(
        &mut self,
        to: &mpsc::UnboundedSender<ToWorker>,
        attempt: &str,
    ) {
        let now = std::time::Instant::now();
        let due: Vec<String> = self
            .questions
            .iter()
            .filter(|(_, q)| q.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if self.run.close_question(&id) {
                self.resolve(to, attempt, &id, false, "timeout", false)
                    .await;
            }
        }
    }

    /// The attempt that asked is gone (or the run ends): its questions close unanswered.
    pub(super) async fn drop_questions(&mut self) {
        let ids: Vec<String> = self.questions.drain().map(|(id, _)| id).collect();
        let mut bodies = Vec::new();
        for id in ids {
            self.run.close_question(&id);
            bodies.push(RunBody::PermissionResolved {
                request_id: id,
                behavior: "deny".into(),
                by: "ended".into(),
            });
        }
        self.emit(bodies).await;
    }
}

/// A permission question in one line for people: the command, the file, the URL, else the
/// input itself (cut at 200 characters).
pub fn summarize(tool: &str, input: &serde_json::Value) -> String {
    let field = |k: &str| input.get(k).and_then(serde_json::Value::as_str);
    let said = match tool {
        "Bash" => field("command"),
        "Write" | "Edit" | "MultiEdit" | "Read" => field("file_path"),
        "NotebookEdit" => field("notebook_path"),
        "WebFetch" => field("url"),
        "WebSearch" => field("query"),
        "Glob" | "Grep" => field("pattern"),
        _ => None,
    };
    let text = match said {
        Some(s) => s.to_string(),
        None => input.to_string(),
    };
    let mut short: String = text.chars().take(200).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    format!("{tool}: {short}")
}
