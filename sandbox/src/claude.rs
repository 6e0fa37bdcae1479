//! Claude Code's `--output-format stream-json` (with `--verbose --include-partial-messages`):
//! one JSON object per line. Partial messages arrive as `stream_event` deltas, and the whole
//! `assistant` message still follows them, so a message streamed in deltas is not emitted twice
//! (de-duplicated by message id). Messages that came only whole (no deltas, as without
//! `--include-partial-messages`) are emitted as blocks with one delta each.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::events::{BlockKind, Event, ToolRef, Usage};

/// Tool results longer than this are cut (the full text stays in the agent's transcript).
pub const MAX_TOOL_RESULT: usize = 64 * 1024;

/// Turns Claude's stream-json lines into [`Event`]s. One per run.
#[derive(Debug, Default)]
pub struct ClaudeParser {
    next_block: u32,
    /// The API message being streamed, and its blocks (API index → run block).
    streaming: Option<String>,
    blocks: HashMap<u64, u32>,
    /// Messages already emitted from deltas.
    streamed: HashSet<String>,
}

fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

fn kind_of(t: &str) -> Option<BlockKind> {
    match t {
        "text" => Some(BlockKind::Text),
        "thinking" => Some(BlockKind::Thinking),
        "tool_use" | "server_tool_use" => Some(BlockKind::ToolUse),
        _ => None,
    }
}

fn truncate(mut text: String) -> (String, bool) {
    if text.len() <= MAX_TOOL_RESULT {
        return (text, false);
    }
    let mut cut = MAX_TOOL_RESULT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    (text, true)
}

/// A tool result's content: a string, or an array of blocks whose text parts are joined.
fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl ClaudeParser {
    pub fn new() -> ClaudeParser {
        ClaudeParser::default()
    }

    fn new_block(&mut self) -> u32 {
        let b = self.next_block;
        self.next_block += 1;
        b
    }

    /// The events in one line of output. A line that is not JSON becomes a notice (the agent's
    /// output is shown, never dropped); types this parser does not know are skipped.
    pub fn line(&mut self, line: &str) -> Vec<Event> {
        let line = line.trim();
        if line.is_empty() {
            return Vec::new();
        }
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => {
                return vec![Event::Notice {
                    kind: "output".into(),
                    detail: line.to_string(),
                }]
            }
        };
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "system" => self.system(&v),
            "stream_event" => v
                .get("event")
                .map(|e| self.stream_event(e))
                .unwrap_or_default(),
            "assistant" => self.assistant(&v),
            "user" => self.user(&v),
            "result" => self.result(&v),
            "control_request" => control_request(&v),
            _ => Vec::new(),
        }
    }

    fn system(&mut self, v: &Value) -> Vec<Event> {
        match v.get("subtype").and_then(Value::as_str) {
            Some("init") => match s(v, "session_id") {
                Some(session_id) => vec![Event::Session {
                    session_id,
                    model: s(v, "model"),
                }],
                None => Vec::new(),
            },
            Some("api_retry") => vec![Event::Notice {
                kind: "api_retry".into(),
                detail: format!(
                    "attempt {} of {}, in {} ms ({})",
                    v.get("attempt").and_then(Value::as_u64).unwrap_or(0),
                    v.get("max_retries").and_then(Value::as_u64).unwrap_or(0),
                    v.get("retry_delay_ms").and_then(Value::as_u64).unwrap_or(0),
                    s(v, "error").unwrap_or_default()
                ),
            }],
            _ => Vec::new(),
        }
    }

    fn stream_event(&mut self, e: &Value) -> Vec<Event> {
        match e.get("type").and_then(Value::as_str).unwrap_or("") {
            "message_start" => {
                let id = e.get("message").and_then(|m| s(m, "id"));
                if let Some(id) = &id {
                    self.streamed.insert(id.clone());
                }
                self.streaming = id;
                self.blocks.clear();
                Vec::new()
            }
            "content_block_start" => {
                let index = e.get("index").and_then(Value::as_u64).unwrap_or(0);
                let cb = e.get("content_block").cloned().unwrap_or(Value::Null);
                let Some(kind) = cb.get("type").and_then(Value::as_str).and_then(kind_of) else {
                    return Vec::new();
                };
                let block = self.new_block();
                self.blocks.insert(index, block);
                let tool = (kind == BlockKind::ToolUse).then(|| ToolRef {
                    id: s(&cb, "id").unwrap_or_default(),
                    name: s(&cb, "name").unwrap_or_default(),
                });
                let mut out = vec![Event::BlockStart { block, kind, tool }];
                // A block may start with content already in it.
                if let Some(t) = s(&cb, "text").filter(|t| !t.is_empty()) {
                    out.push(Event::Delta { block, text: t });
                }
                out
            }
            "content_block_delta" => {
                let index = e.get("index").and_then(Value::as_u64).unwrap_or(0);
                let Some(&block) = self.blocks.get(&index) else {
                    return Vec::new();
                };
                let d = e.get("delta").cloned().unwrap_or(Value::Null);
                let text = match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => s(&d, "text"),
                    Some("thinking_delta") => s(&d, "thinking"),
                    Some("input_json_delta") => s(&d, "partial_json"),
                    _ => None,
                };
                match text {
                    Some(text) if !text.is_empty() => vec![Event::Delta { block, text }],
                    _ => Vec::new(),
                }
            }
            "content_block_stop" => {
                let index = e.get("index").and_then(Value::as_u64).unwrap_or(0);
                match self.blocks.get(&index) {
                    Some(&block) => vec![Event::BlockStop { block }],
                    None => Vec::new(),
                }
            }
            "message_stop" => {
                self.streaming = None;
                self.blocks.clear();
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn assistant(&mut self, v: &Value) -> Vec<Event> {
        let Some(m) = v.get("message") else {
            return Vec::new();
        };
        if let Some(id) = s(m, "id") {
            if self.streamed.contains(&id) {
                return Vec::new();
            }
        }
        let mut out = Vec::new();
        for cb in m
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(kind) = cb.get("type").and_then(Value::as_str).and_then(kind_of) else {
                continue;
            };
            let block = self.new_block();
            let (tool, text) = match kind {
                BlockKind::Text => (None, s(cb, "text")),
                BlockKind::Thinking => (None, s(cb, "thinking")),
                BlockKind::ToolUse => (
                    Some(ToolRef {
                        id: s(cb, "id").unwrap_or_default(),
                        name: s(cb, "name").unwrap_or_default(),
                    }),
                    cb.get("input").map(Value::to_string),
                ),
            };
            out.push(Event::BlockStart { block, kind, tool });
            if let Some(text) = text.filter(|t| !t.is_empty()) {
                out.push(Event::Delta { block, text });
            }
            out.push(Event::BlockStop { block });
        }
        out
    }

    fn user(&mut self, v: &Value) -> Vec<Event> {
        let content = v.get("message").and_then(|m| m.get("content"));
        let mut out = Vec::new();
        for cb in content.and_then(Value::as_array).into_iter().flatten() {
            if cb.get("type").and_then(Value::as_str) != Some("tool_result") {
                continue;
            }
            let (content, truncated) =
                truncate(content_text(cb.get("content").unwrap_or(&Value::Null)));
            out.push(Event::ToolResult {
                tool_use_id: s(cb, "tool_use_id").unwrap_or_default(),
                is_error: cb.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                content,
                truncated,
            });
        }
        out
    }

    fn result(&mut self, v: &Value) -> Vec<Event> {
        let u = v.get("usage").cloned().unwrap_or(Value::Null);
        let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        let subtype = s(v, "subtype").unwrap_or_default();
        vec![Event::Result {
            // A failed API call still says "success" with is_error: true.
            is_error: v.get("is_error").and_then(Value::as_bool).unwrap_or(false)
                || subtype.starts_with("error"),
            subtype,
            text: s(v, "result"),
            usage: Usage {
                input: n("input_tokens"),
                output: n("output_tokens"),
                cache_read: n("cache_read_input_tokens"),
                cache_creation: n("cache_creation_input_tokens"),
            },
            cost_usd: v.get("total_cost_usd").and_then(Value::as_f64),
        }]
    }
}

/// How a Claude Code run failed, as its own stderr says (the adapter classifies its failures;
/// the orchestrator acts on the kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaudeFailure {
    /// `--resume` named a session this host does not have (its agent home lost it).
    SessionGone,
}

/// What Claude Code's stderr (its last lines) says went wrong, if it is a failure edge acts on.
///
/// ```
/// use edge_sandbox::{classify_failure, ClaudeFailure};
/// let tail = "No conversation found with session ID: 5f0c";
/// assert_eq!(classify_failure(tail), Some(ClaudeFailure::SessionGone));
/// assert_eq!(classify_failure("API Error: 500"), None);
/// ```
pub fn classify_failure(stderr: &str) -> Option<ClaudeFailure> {
    stderr
        .contains("No conversation found with session ID")
        .then_some(ClaudeFailure::SessionGone)
}

/// A question from the agent (`--permission-prompt-tool stdio`): `can_use_tool` becomes a
/// [`Event::PermissionRequest`]; other subtypes are not asked of hosts in print mode.
fn control_request(v: &Value) -> Vec<Event> {
    let (Some(id), Some(req)) = (s(v, "request_id"), v.get("request")) else {
        return Vec::new();
    };
    if req.get("subtype").and_then(Value::as_str) != Some("can_use_tool") {
        return vec![Event::Notice {
            kind: "control_request".into(),
            detail: format!(
                "the agent asked {:?}, which edge does not answer",
                req.get("subtype").and_then(Value::as_str).unwrap_or("?")
            ),
        }];
    }
    vec![Event::PermissionRequest {
        request_id: id,
        tool: s(req, "tool_name").unwrap_or_default(),
        input: req.get("input").cloned().unwrap_or(Value::Null),
        tool_use_id: s(req, "tool_use_id"),
    }]
}

/// Claude Code's answer line to a `can_use_tool` request: allow (with the input unchanged) or
/// deny with `message`.
///
/// ```
/// let l = edge_sandbox::permission_answer("r1", true, &serde_json::json!({"command": "ls"}), "");
/// let v: serde_json::Value = serde_json::from_str(&l).unwrap();
/// assert_eq!(v["type"], "control_response");
/// assert_eq!(v["response"]["request_id"], "r1");
/// assert_eq!(v["response"]["response"]["behavior"], "allow");
/// assert_eq!(v["response"]["response"]["updatedInput"]["command"], "ls");
/// ```
pub fn permission_answer(request_id: &str, allow: bool, input: &Value, message: &str) -> String {
    let response = if allow {
        serde_json::json!({"behavior": "allow", "updatedInput": input})
    } else {
        serde_json::json!({"behavior": "deny", "message": message})
    };
    serde_json::json!({
        "type": "control_response",
        "response": {"subtype": "success", "request_id": request_id, "response": response}
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: &[&str]) -> Vec<Event> {
        let mut p = ClaudeParser::new();
        lines.iter().flat_map(|l| p.line(l)).collect()
    }

    #[test]
    fn a_permission_question_becomes_an_event() {
        let mut p = ClaudeParser::new();
        let ev = p.line(r#"{"type":"control_request","request_id":"req-1","request":{"subtype":"can_use_tool","tool_name":"Write","input":{"file_path":"a.txt","content":"hi"},"tool_use_id":"toolu_9","permission_suggestions":[]}}"#);
        assert_eq!(
            ev,
            [Event::PermissionRequest {
                request_id: "req-1".into(),
                tool: "Write".into(),
                input: serde_json::json!({"file_path": "a.txt", "content": "hi"}),
                tool_use_id: Some("toolu_9".into()),
            }]
        );
        let ev = p.line(
            r#"{"type":"control_request","request_id":"r2","request":{"subtype":"mcp_message"}}"#,
        );
        assert!(matches!(&ev[..], [Event::Notice { kind, .. }] if kind == "control_request"));
    }

    const INIT: &str = r#"{"type":"system","subtype":"init","cwd":"/repo","session_id":"5f0c","tools":["Bash"],"model":"claude-x","permissionMode":"acceptEdits"}"#;

    #[test]
    fn partial_messages_stream_and_the_whole_message_is_not_repeated() {
        let ev = run(&[
            INIT,
            r#"{"type":"stream_event","event":{"type":"message_start","message":{"id":"msg_1","role":"assistant","content":[]}}}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}}}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_stop","index":0}}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"Bash","input":{}}}}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"command\":"}}}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"ls\"}"}}}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_stop","index":1}}"#,
            r#"{"type":"stream_event","event":{"type":"message_stop"}}"#,
            r#"{"type":"assistant","message":{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"Hello"},{"type":"tool_use","id":"toolu_1","name":"Bash","input":{"command":"ls"}}]}}"#,
            r#"{"type":"user","message":{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"a\nb","is_error":false}]}}"#,
            r#"{"type":"stream_event","event":{"type":"message_start","message":{"id":"msg_2"}}}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_stop","index":0}}"#,
            r#"{"type":"result","subtype":"success","is_error":false,"result":"Hello","session_id":"5f0c","total_cost_usd":0.25,"usage":{"input_tokens":8,"cache_creation_input_tokens":192,"cache_read_input_tokens":17004,"output_tokens":32}}"#,
        ]);
        let tool = Some(ToolRef {
            id: "toolu_1".into(),
            name: "Bash".into(),
        });
        let want = vec![
            Event::Session {
                session_id: "5f0c".into(),
                model: Some("claude-x".into()),
            },
            Event::BlockStart {
                block: 0,
                kind: BlockKind::Text,
                tool: None,
            },
            Event::Delta {
                block: 0,
                text: "Hel".into(),
            },
            Event::Delta {
                block: 0,
                text: "lo".into(),
            },
            Event::BlockStop { block: 0 },
            Event::BlockStart {
                block: 1,
                kind: BlockKind::ToolUse,
                tool,
            },
            Event::Delta {
                block: 1,
                text: "{\"command\":".into(),
            },
            Event::Delta {
                block: 1,
                text: "\"ls\"}".into(),
            },
            Event::BlockStop { block: 1 },
            Event::ToolResult {
                tool_use_id: "toolu_1".into(),
                is_error: false,
                content: "a\nb".into(),
                truncated: false,
            },
            // The second API message restarts its index at 0; the run's numbering goes on.
            Event::BlockStart {
                block: 2,
                kind: BlockKind::Thinking,
                tool: None,
            },
            Event::Delta {
                block: 2,
                text: "hmm".into(),
            },
            Event::BlockStop { block: 2 },
            Event::Result {
                is_error: false,
                subtype: "success".into(),
                text: Some("Hello".into()),
                usage: Usage {
                    input: 8,
                    output: 32,
                    cache_read: 17004,
                    cache_creation: 192,
                },
                cost_usd: Some(0.25),
            },
        ];
        assert_eq!(ev, want);
    }

    #[test]
    fn whole_messages_without_partials_become_blocks() {
        let ev = run(&[
            r#"{"type":"assistant","message":{"id":"msg_9","content":[{"type":"text","text":"Done."},{"type":"tool_use","id":"t2","name":"Edit","input":{"file":"a"}}]}}"#,
        ]);
        assert_eq!(
            ev,
            vec![
                Event::BlockStart {
                    block: 0,
                    kind: BlockKind::Text,
                    tool: None
                },
                Event::Delta {
                    block: 0,
                    text: "Done.".into()
                },
                Event::BlockStop { block: 0 },
                Event::BlockStart {
                    block: 1,
                    kind: BlockKind::ToolUse,
                    tool: Some(ToolRef {
                        id: "t2".into(),
                        name: "Edit".into()
                    })
                },
                Event::Delta {
                    block: 1,
                    text: r#"{"file":"a"}"#.into()
                },
                Event::BlockStop { block: 1 },
            ]
        );
    }

    #[test]
    fn errors_retries_odd_lines_and_long_results() {
        let long = "x".repeat(MAX_TOOL_RESULT + 10);
        let tr = format!(
            r#"{{"type":"user","message":{{"content":[{{"type":"tool_result","tool_use_id":"t","is_error":true,"content":[{{"type":"text","text":"{long}"}}]}}]}}}}"#
        );
        let ev = run(&[
            r#"{"type":"system","subtype":"api_retry","attempt":1,"max_retries":5,"retry_delay_ms":2000,"error":"rate_limit"}"#,
            "not json at all",
            r#"{"type":"something_new","x":1}"#,
            &tr,
            r#"{"type":"result","subtype":"success","is_error":true,"result":"API Error: 500","usage":{"input_tokens":1,"output_tokens":0}}"#,
            r#"{"type":"result","subtype":"error_during_execution","is_error":false}"#,
        ]);
        assert_eq!(ev.len(), 5, "{ev:#?}");
        assert!(
            matches!(&ev[0], Event::Notice { kind, detail } if kind == "api_retry" && detail.contains("2000 ms"))
        );
        assert!(
            matches!(&ev[1], Event::Notice { kind, detail } if kind == "output" && detail == "not json at all")
        );
        match &ev[2] {
            Event::ToolResult {
                is_error,
                content,
                truncated,
                ..
            } => {
                assert!(*is_error && *truncated && content.len() == MAX_TOOL_RESULT);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&ev[3], Event::Result { is_error: true, .. }),
            "a failed API call says success with is_error"
        );
        assert!(
            matches!(&ev[4], Event::Result { is_error: true, .. }),
            "an error subtype is an error"
        );
    }
}
