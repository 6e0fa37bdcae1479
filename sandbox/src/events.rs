//! What a run says, whatever the agent: the normalized events the chat stores and streams.

use serde::{Deserialize, Serialize};

/// The kind of a content block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    Text,
    Thinking,
    ToolUse,
}

/// A tool call's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolRef {
    pub id: String,
    pub name: String,
}

/// Tokens a run used, as its agent reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_creation: u64,
}

impl Usage {
    /// Every token counted against a daily token limit: input, output and cache tokens.
    pub fn total(&self) -> u64 {
        self.input + self.output + self.cache_read + self.cache_creation
    }
}

/// One event of a run. Blocks are numbered from 0 across the whole run (an agent's API messages
/// each restart their own numbering; these do not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Event {
    /// The agent's session (Claude's session id, for `--resume`).
    Session {
        session_id: String,
        model: Option<String>,
    },
    BlockStart {
        block: u32,
        kind: BlockKind,
        #[serde(skip_serializing_if = "Option::is_none")]
        tool: Option<ToolRef>,
    },
    /// Text, thinking, or a piece of a tool call's input (JSON text).
    Delta {
        block: u32,
        text: String,
    },
    BlockStop {
        block: u32,
    },
    ToolResult {
        tool_use_id: String,
        is_error: bool,
        content: String,
        truncated: bool,
    },
    /// Something worth showing that is not content (an API retry, a line that was not JSON).
    Notice {
        kind: String,
        detail: String,
    },
    /// The agent asks whether it may use a tool (Claude Code's `control_request` with subtype
    /// `can_use_tool`, under `--permission-prompt-tool stdio`). Answered on its stdin; the chat
    /// turns it into a `permission_request` frame rather than storing it as is.
    PermissionRequest {
        request_id: String,
        tool: String,
        input: serde_json::Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tool_use_id: Option<String>,
    },
    /// The agent's own end of turn (Claude's `result` line).
    Result {
        is_error: bool,
        subtype: String,
        text: Option<String>,
        usage: Usage,
        cost_usd: Option<f64>,
    },
}
