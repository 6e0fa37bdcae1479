//! The agent side of a run: how an agent is invoked, how its output becomes [`Event`]s, and
//! the sandbox it runs in.
//!
//! - [`ClaudeParser`]: Claude Code's `stream-json` (partial deltas and whole messages,
//!   de-duplicated by message id; tool use and results; the `result` line with usage and cost).
//! - [`CommandOutput`]: any CLI's stdout as one text block.
//! - [`claude_argv`] / [`command_argv`]: the argument vectors, never through a shell.
//! - The sandbox: [`Profile`]s say which [`Layer`]s a run requires; [`probe`] says what this
//!   host can enforce; [`confine::prepare`] sets up a run's cgroup and egress proxy and builds
//!   the helper (`edge sandbox exec`, [`helper`]) that applies the rest before it executes the
//!   agent; [`verify`] proves each layer with a probe that must fail inside.

mod cgroup;
mod claude;
mod command;
pub mod confine;
mod egress;
mod events;
mod floor;
pub mod helper;
pub mod probe;
mod profile;
pub mod program;
mod seccomp;
pub mod verify;

pub use claude::{
    classify_failure, permission_answer, ClaudeFailure, ClaudeParser, MAX_TOOL_RESULT,
};
pub use command::{
    claude_argv, claude_ask_argv, claude_user_line, command_argv, ClaudeSession, CommandOutput,
};
pub use events::{BlockKind, Event, ToolRef, Usage};
pub use floor::Floor;
pub use probe::{probe, Report, State};
pub use profile::{forbidden_env, Confine, Layer, Profile, RunSpec};
