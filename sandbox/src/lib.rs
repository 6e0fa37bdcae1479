//! The agent side of a run: how an agent is invoked and how its output becomes [`Event`]s.
//!
//! - [`ClaudeParser`]: Claude Code's `stream-json` (partial deltas and whole messages,
//!   de-duplicated by message id; tool use and results; the `result` line with usage and cost).
//! - [`CommandOutput`]: any CLI's stdout as one text block.
//! - [`claude_argv`] / [`command_argv`]: the argument vectors, never through a shell.
//!
//! The sandbox layers (Landlock, seccomp, namespaces, cgroups, egress) are not built yet:
//! nothing in this crate confines a process.

mod claude;
mod command;
mod events;

pub use claude::{ClaudeParser, MAX_TOOL_RESULT};
pub use command::{claude_argv, command_argv, ClaudeSession, CommandOutput};
pub use events::{BlockKind, Event, ToolRef, Usage};
