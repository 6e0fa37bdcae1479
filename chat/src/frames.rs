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
