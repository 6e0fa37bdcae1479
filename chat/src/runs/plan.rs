//! How a run's agent is invoked for the outpost an attempt lands on: Claude Code's session
//! created, resumed where it lives, or started anew elsewhere told the earlier turns.

/// How a run's agent command is made for the outpost an attempt lands on.
#[derive(Debug)]
pub(super) enum Plan {
    /// The same everywhere (a generic CLI agent).
    Fixed(Vec<String>),
    /// Claude Code, whose session lives in the agent's home on the host that ran it: resumed
    /// there, and replaced by a new session (told the earlier turns) anywhere else.
    Claude {
        command: String,
        permission_mode: String,
        session: String,
        /// The session exists (it ran before): resume it where it is.
        exists: bool,
        /// The outpost holding it; None: not known, so not resumable (a new session, told the
        /// earlier turns).
        home: Option<String>,
        /// Record the session in the conversation (false for runs started without one).
        record: bool,
        message: String,
    },
}

/// Claude Code's command line for a session and message, and what goes on its stdin: with
/// `ask`, the message as a stream-json `user` line, stdin kept open for the answers.
pub(super) fn claude_invocation(
    command: &str,
    permission_mode: &str,
    session: edge_sandbox::ClaudeSession<'_>,
    message: &str,
) -> (Vec<String>, Option<String>, bool) {
    if permission_mode == "ask" {
        (
            edge_sandbox::claude_ask_argv(command, session),
            Some(edge_sandbox::claude_user_line(message)),
            true,
        )
    } else {
        (
            edge_sandbox::claude_argv(command, permission_mode, session, message),
            None,
            false,
        )
    }
}

/// The command for one attempt.
pub(super) struct AttemptPlan {
    /// Written to the agent's stdin first.
    pub(super) stdin: Option<String>,
    /// Stdin stays open: the agent's permission questions are answered there.
    pub(super) keep_stdin: bool,
    pub(super) argv: Vec<String>,
    /// The session this attempt creates or resumes.
    pub(super) session: Option<String>,
    /// Why it is a new session although the conversation has one.
    pub(super) moved: Option<String>,
    /// It resumes the conversation's session (`--resume`).
    pub(super) resumes: bool,
}

impl Plan {
    /// Where the conversation's session is, to try first.
    pub(super) fn home(&self) -> Option<&str> {
        match self {
            Plan::Claude {
                exists: true,
                home: Some(h),
                ..
            } => Some(h),
            _ => None,
        }
    }

    /// The command for an attempt on `outpost`. `resumable`: a session started there can be
    /// resumed there (one host; not a Nomad cluster, whose next allocation may land on another
    /// client).
    pub(super) fn for_outpost(
        &self,
        outpost: &str,
        resumable: bool,
        transcript: impl FnOnce() -> String,
    ) -> AttemptPlan {
        let (command, permission_mode, session, exists, home, message) = match self {
            Plan::Fixed(argv) => {
                return AttemptPlan {
                    stdin: None,
                    keep_stdin: false,
                    argv: argv.clone(),
                    session: None,
                    moved: None,
                    resumes: false,
                }
            }
            Plan::Claude {
                command,
                permission_mode,
                session,
                exists,
                home,
                message,
                ..
            } => (command, permission_mode, session, *exists, home, message),
        };
        let plain = |s| {
            let (argv, stdin, keep_stdin) = claude_invocation(command, permission_mode, s, message);
            AttemptPlan {
                resumes: matches!(s, edge_sandbox::ClaudeSession::Resume(_)),
                argv,
                stdin,
                keep_stdin,
                session: Some(session.clone()),
                moved: None,
            }
        };
        if !exists {
            return plain(edge_sandbox::ClaudeSession::Create(session));
        }
        if resumable && home.as_deref() == Some(outpost) {
            return plain(edge_sandbox::ClaudeSession::Resume(session));
        }
        // The session is on another host (or nowhere known): a new one here, told the
        // conversation so far.
        let fresh = uuid::Uuid::new_v4().to_string();
        let prompt = format!(
            "(This conversation continues on another machine, where its earlier turns cannot \
             be resumed. They were, oldest first:)\n\n{}\n\n---\n\n{message}",
            transcript().trim_end()
        );
        let why = match home {
            Some(h) if h != outpost => format!(
                "the conversation's agent session is on outpost {h}, which could not take this run"
            ),
            Some(_) => format!(
                "a session on outpost {outpost} (a Nomad cluster) cannot be resumed: the next allocation may land on another client"
            ),
            None => "the conversation's agent session cannot be resumed (where it is was not recorded, or its host no longer has it)".to_string(),
        };
        let (argv, stdin, keep_stdin) = claude_invocation(
            command,
            permission_mode,
            edge_sandbox::ClaudeSession::Create(&fresh),
            &prompt,
        );
        AttemptPlan {
            argv,
            stdin,
            keep_stdin,
            session: Some(fresh),
            moved: Some(format!(
                "a new agent session, told the earlier turns: {why}"
            )),
            resumes: false,
        }
    }

    /// The session could not be resumed where it was recorded (its files are gone there):
    /// the next attempt starts a new one, told the earlier turns.
    pub(super) fn forget_home(&mut self) {
        if let Plan::Claude { home, .. } = self {
            *home = None;
        }
    }

    /// An attempt started on `outpost` with `session`: later attempts and runs resume it there.
    /// True when the conversation should record it.
    pub(super) fn started(&mut self, used: &str, outpost: &str) -> bool {
        match self {
            Plan::Claude {
                session,
                exists,
                home,
                record,
                ..
            } => {
                *session = used.to_string();
                *exists = true;
                *home = Some(outpost.to_string());
                *record
            }
            Plan::Fixed(_) => false,
        }
    }
}
