//! A run's frames, as stored in the conversation file and sent to every tab.

use edge_sandbox::{Event, Usage};
use serde::{Deserialize, Serialize};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Error,
    Cancelled,
    Timeout,
    /// edge stopped (crashed, was killed) while the run was going.
    Interrupted,
}

/// One frame of a run, as stored and as sent to listeners.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFrame {
    pub run_id: String,
    pub seq: u64,
    #[serde(flatten)]
    pub body: RunBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum RunBody {
    /// The run's state: `dispatching`, `running`, `cancelling`. `outpost` says where the
    /// attempt runs (or which outpost failed, with `detail`, before the next is tried).
    State {
        state: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outpost: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    Event {
        event: Event,
    },
    /// The agent asks whether it may use a tool (`permission_mode = "ask"`); every tab shows
    /// it until a `permission_resolved` for the same `request_id`.
    PermissionRequest {
        request_id: String,
        tool: String,
        input: serde_json::Value,
        /// One line for people: the command, the file, the URL.
        summary: String,
    },
    /// How a question was answered: `behavior` `allow` or `deny`, `by` the user who answered,
    /// `always` (allowed for the conversation earlier), `timeout`, or `ended` (the attempt
    /// that asked is gone).
    PermissionResolved {
        request_id: String,
        behavior: String,
        by: String,
    },
    /// Exactly once per run, last.
    End {
        outcome: Outcome,
        usage: Usage,
        cost_usd: Option<f64>,
        detail: Option<String>,
    },
}

/// Every frame the server sends on the chat's WebSocket (docs/chat-protocol.md), its type in
/// `t`. Serialized straight to text, once per frame, whatever the number of tabs.
#[derive(Debug, Serialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    HelloOk {
        user: &'a str,
        proto: u32,
        limits: serde_json::Value,
        active_runs: Vec<ActiveRun<'a>>,
        /// The account's project has an agent configured.
        agent: bool,
        /// What that agent is, for the empty conversation's page.
        about: Option<AboutAgent>,
    },
    Pong {
        ts: Option<u64>,
    },
    /// A client frame could not be done.
    Error {
        code: ErrorKind,
        msg: &'a str,
    },
    /// This socket fell behind and `missed` frames were dropped for it: subscribe again.
    Gap {
        missed: u64,
    },
    /// A `send` became a run.
    Accepted {
        client_msg_id: Option<&'a str>,
        run_id: &'a str,
        conversation_id: &'a str,
    },
    /// A `send` did not.
    Rejected {
        client_msg_id: Option<&'a str>,
        code: Reject,
        detail: &'a str,
        retry_after: Option<u64>,
    },
    /// The message that started a run, to every tab of the account.
    UserMessage {
        conversation_id: &'a str,
        run_id: &'a str,
        client_msg_id: Option<&'a str>,
        text: &'a str,
        user: &'a str,
    },
    /// A whole conversation, for a tab that subscribes without a place to resume from.
    Snapshot {
        conversation_id: &'a str,
        meta: &'a crate::conversations::Meta,
        records: &'a [crate::conversations::Record],
        active_run: Option<ActiveRunSeq<'a>>,
    },
}

/// The agent, as a new conversation introduces it.
#[derive(Debug, Serialize)]
pub struct AboutAgent {
    /// `claude` or `command`.
    pub kind: &'static str,
    /// The program (Claude Code's command, or the CLI's first word).
    pub program: String,
    pub workspace: String,
    pub permission_mode: String,
}

/// A run going, as `hello_ok` lists them.
#[derive(Debug, Serialize)]
pub struct ActiveRun<'a> {
    pub conversation_id: &'a str,
    pub run_id: &'a str,
}

/// A snapshot's run going, and the last frame it has sent.
#[derive(Debug, Serialize)]
pub struct ActiveRunSeq<'a> {
    pub run_id: &'a str,
    pub last_seq: Option<u64>,
}

/// What an `error` frame is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not a frame of the protocol (bad JSON, a binary frame, a bad value).
    Invalid,
    /// No such run, question or conversation (for this account).
    NotFound,
    /// edge could not read its own store.
    Internal,
}

/// Why a message did not become a run (`rejected` frames; the API's error statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reject {
    /// The chat has no agent configured.
    NoAgent,
    /// The agent's program is not installed where the config says.
    AgentMissing,
    /// The agent's sandbox profile is not defined.
    Sandbox,
    NotFound,
    /// The conversation already has a run going, or the account is at its concurrent runs.
    Busy,
    /// Past the hourly, daily or token limit (`retry_after` says when).
    RateLimited,
    Invalid,
    Internal,
}

impl ServerFrame<'_> {
    pub fn text(&self) -> String {
        // Serializing these types cannot fail (string keys, no maps of other keys).
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A run's frame as a tab receives it: the run frame's fields and its conversation.
#[derive(Serialize)]
struct RunFrameOut<'a> {
    conversation_id: &'a str,
    #[serde(flatten)]
    frame: &'a RunFrame,
}

/// A run's frame as every tab receives it (`t` is the run body's type).
pub fn run_frame_text(conversation: &str, f: &RunFrame) -> String {
    serde_json::to_string(&RunFrameOut {
        conversation_id: conversation,
        frame: f,
    })
    .unwrap_or_default()
}
