//! How agents are started, and the plain-CLI adapter.

use crate::events::{BlockKind, Event};

/// Which Claude session a run continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaudeSession<'a> {
    /// The conversation's first run: create the session with this id (`--session-id`).
    Create(&'a str),
    /// Later runs: `--resume` it.
    Resume(&'a str),
}

/// Claude Code in print mode, streaming JSON with partial messages.
///
/// ```
/// use edge_sandbox::{claude_argv, ClaudeSession};
/// let argv = claude_argv("claude", "acceptEdits", ClaudeSession::Resume("5f0c"), "fix it");
/// assert_eq!(argv[..4], ["claude", "-p", "--output-format", "stream-json"]);
/// assert!(argv.windows(2).any(|w| w == ["--resume", "5f0c"]));
/// assert_eq!(argv.last().unwrap(), "fix it");
/// ```
pub fn claude_argv(
    command: &str,
    permission_mode: &str,
    session: ClaudeSession<'_>,
    message: &str,
) -> Vec<String> {
    let mut v = claude_print(command, &["--permission-mode", permission_mode], session);
    // After `--`, so a message that starts with `-` is not read as a flag.
    v.extend(["--".into(), message.to_string()]);
    v
}

/// Claude Code in print mode streaming JSON with partial messages, then `flags`, then the
/// session (created or resumed).
fn claude_print(command: &str, flags: &[&str], session: ClaudeSession<'_>) -> Vec<String> {
    let mut v: Vec<String> = [
        command,
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
    ]
    .iter()
    .chain(flags)
    .map(|s| s.to_string())
    .collect();
    match session {
        ClaudeSession::Create(id) => v.extend(["--session-id".into(), id.to_string()]),
        ClaudeSession::Resume(id) => v.extend(["--resume".into(), id.to_string()]),
    }
    v
}

/// Claude Code as the Agent SDK runs it, asking before each tool that needs approval: the
/// message goes on stdin as a `user` line ([`claude_user_line`]), stdin stays open, and each
/// question arrives on stdout as a `control_request` (`can_use_tool`) answered on stdin with
/// [`crate::permission_answer`]. Closing stdin after the `result` line ends it.
///
/// ```
/// use edge_sandbox::{claude_ask_argv, ClaudeSession};
/// let argv = claude_ask_argv("claude", ClaudeSession::Create("5f0c"));
/// assert!(argv.windows(2).any(|w| w == ["--input-format", "stream-json"]));
/// assert!(argv.windows(2).any(|w| w == ["--permission-prompt-tool", "stdio"]));
/// assert!(argv.windows(2).any(|w| w == ["--permission-mode", "default"]));
/// assert_eq!(argv.last().unwrap(), "5f0c");
/// ```
pub fn claude_ask_argv(command: &str, session: ClaudeSession<'_>) -> Vec<String> {
    claude_print(
        command,
        &[
            "--input-format",
            "stream-json",
            "--permission-prompt-tool",
            "stdio",
            "--permission-mode",
            "default",
        ],
        session,
    )
}

/// The message as Claude Code's stream-json input reads it: one `user` line, with its newline.
pub fn claude_user_line(message: &str) -> String {
    let mut l = serde_json::json!({
        "type": "user",
        "message": {"role": "user", "content": message}
    })
    .to_string();
    l.push('\n');
    l
}

/// A generic CLI agent: `{message}` in any argument is replaced by the message (no shell, so
/// nothing in the message is interpreted).
///
/// ```
/// let argv = edge_sandbox::command_argv(&["aider", "--message", "{message}"], "$(rm -rf /)");
/// assert_eq!(argv, ["aider", "--message", "$(rm -rf /)"]);
/// ```
pub fn command_argv(template: &[&str], message: &str) -> Vec<String> {
    template
        .iter()
        .map(|a| a.replace("{message}", message))
        .collect()
}

/// Any CLI's stdout as one text block, line by line.
#[derive(Debug, Default)]
pub struct CommandOutput {
    started: bool,
}

impl CommandOutput {
    pub fn new() -> CommandOutput {
        CommandOutput::default()
    }

    /// One line of stdout (without its newline).
    pub fn line(&mut self, line: &str) -> Vec<Event> {
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            out.push(Event::BlockStart {
                block: 0,
                kind: BlockKind::Text,
                tool: None,
            });
        }
        out.push(Event::Delta {
            block: 0,
            text: format!("{line}\n"),
        });
        out
    }

    /// The process ended with `code` (None: killed by a signal).
    pub fn finish(&mut self, code: Option<i32>) -> Vec<Event> {
        let mut out = Vec::new();
        if self.started {
            out.push(Event::BlockStop { block: 0 });
        }
        out.push(Event::Result {
            is_error: code != Some(0),
            subtype: match code {
                Some(0) => "success".into(),
                Some(c) => format!("exit_{c}"),
                None => "killed".into(),
            },
            text: None,
            usage: Default::default(),
            cost_usd: None,
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cli_becomes_one_text_block_and_a_result() {
        let mut c = CommandOutput::new();
        let mut ev = c.line("one");
        ev.extend(c.line("two"));
        ev.extend(c.finish(Some(2)));
        assert_eq!(ev.len(), 5);
        assert!(matches!(&ev[2], Event::Delta { text, .. } if text == "two\n"));
        assert!(
            matches!(&ev[4], Event::Result { is_error: true, subtype, .. } if subtype == "exit_2")
        );
        let ev = CommandOutput::new().finish(Some(0));
        assert!(matches!(
            &ev[..],
            [Event::Result {
                is_error: false,
                ..
            }]
        ));
    }

    #[test]
    fn claude_sessions_are_created_then_resumed() {
        let a = claude_argv("/opt/claude", "plan", ClaudeSession::Create("u1"), "-rf");
        assert!(a.windows(2).any(|w| w == ["--session-id", "u1"]));
        assert!(a.windows(2).any(|w| w == ["--permission-mode", "plan"]));
        assert_eq!(&a[a.len() - 2..], ["--", "-rf"]);
        assert!(
            a.contains(&"--include-partial-messages".to_string())
                && a.contains(&"--verbose".to_string())
        );
    }
}
