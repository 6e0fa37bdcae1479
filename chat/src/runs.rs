//! Runs: the orchestrator turns a message into a run on a worker (`edge worker --stdio`, a child
//! process speaking the worker protocol), turns the agent's output into events, numbers them
//! (per run, from 1, no gaps), appends them to the conversation durably and only then
//! broadcasts them. A run is detached from whoever asked: it goes on when every listener is
//! gone, and ends with exactly one `end` frame.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_sandbox::{ClaudeParser, CommandOutput, Event, Usage};
use edge_workers::{ExitReason, Fd, FromWorker, ToWorker};
use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use crate::conversations::{now_rfc3339, Conversations, Record};
use crate::Error;
pub use edge_workers::outposts::{Hello, Outpost};

/// Frames kept in memory per run for listeners that reconnect.
pub const RING: usize = 4096;
/// How long cancel waits between the agent's interrupt, SIGTERM and SIGKILL (in total).
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// How an agent is run.
#[derive(Debug, Clone, PartialEq)]
pub enum Agent {
    /// Claude Code: the command (path or name) and its permission mode.
    Claude {
        command: String,
        permission_mode: String,
    },
    /// Any CLI: an argv template with `{message}`.
    Command { argv: Vec<String> },
}

#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub agent: Agent,
    /// The agent's working directory.
    pub workspace: String,
    pub timeout: Duration,
    /// With `permission_mode = "ask"`: an unanswered question is denied after this.
    pub permission_timeout: Duration,
    /// The sandbox the worker confines the agent in (`None`: not confined, tests only).
    pub sandbox: Option<edge_sandbox::Confine>,
}

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

/// A run in progress (or just ended), shared by its task and its listeners.
#[derive(Debug)]
pub struct Run {
    pub id: String,
    pub user: String,
    pub conversation: String,
    tx: broadcast::Sender<RunFrame>,
    ring: Mutex<VecDeque<RunFrame>>,
    cancel: mpsc::Sender<()>,
    /// The agent's questions not answered yet (the first answer takes one out).
    open_questions: Mutex<std::collections::HashSet<String>>,
    answers: mpsc::UnboundedSender<Answer>,
}

/// One of the agent's open questions, as the run's task keeps it.
#[derive(Debug)]
struct Question {
    tool: String,
    /// Sent back unchanged with an allow.
    input: serde_json::Value,
    /// Unanswered then, it is denied.
    deadline: std::time::Instant,
}

/// An answer to one of a run's permission questions.
#[derive(Debug)]
struct Answer {
    request_id: String,
    allow: bool,
    by: String,
    always: bool,
}

impl Run {
    /// Frames after `last_seq` still in memory (None if some were dropped from the ring), and a
    /// receiver for what comes next; subscribe first, then read the ring, so nothing falls
    /// between the two (duplicates are removed by `seq`).
    pub fn subscribe(
        &self,
        last_seq: u64,
    ) -> (Option<Vec<RunFrame>>, broadcast::Receiver<RunFrame>) {
        let rx = self.tx.subscribe();
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let first = ring.front().map(|f| f.seq).unwrap_or(last_seq + 1);
        let missed = if first > last_seq + 1 {
            None
        } else {
            Some(ring.iter().filter(|f| f.seq > last_seq).cloned().collect())
        };
        (missed, rx)
    }

    /// Answers the agent's question `request_id`: true if it was open (the first answer wins;
    /// a later one, or one after a timeout, is refused).
    pub fn answer(&self, request_id: &str, allow: bool, by: &str, always: bool) -> bool {
        let open = self
            .open_questions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(request_id);
        if open {
            let _ = self.answers.send(Answer {
                request_id: request_id.to_string(),
                allow,
                by: by.to_string(),
                always,
            });
        }
        open
    }

    /// Takes a question out of the open ones (timed out, or its attempt is gone): false if an
    /// answer took it first.
    fn close_question(&self, request_id: &str) -> bool {
        self.open_questions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(request_id)
    }

    /// Asks the run to stop (idempotent).
    pub fn cancel(&self) {
        let _ = self.cancel.try_send(());
    }

    pub fn ended(&self) -> bool {
        self.ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .back()
            .is_some_and(|f| matches!(f.body, RunBody::End { .. }))
    }
}

/// Owns runs: at most one active run per conversation.
#[derive(Debug)]
pub struct Orchestrator {
    /// The worker command, e.g. `[/usr/bin/edge, worker, --stdio]`.
    outposts: Mutex<Vec<OutpostState>>,
    conversations: Conversations,
    active: Mutex<HashMap<(String, String), Arc<Run>>>,
    /// Runs started and ended, tokens, first output, permission answers.
    pub metrics: crate::metrics::RunMetrics,
}

impl Orchestrator {
    /// An orchestrator whose runs go to one local outpost running `worker`.
    pub fn new(worker: Vec<String>, conversations: Conversations) -> Arc<Orchestrator> {
        Arc::new(Orchestrator {
            outposts: Mutex::new(vec![OutpostState::new(Outpost::local(worker))]),
            conversations,
            active: Mutex::default(),
            metrics: Default::default(),
        })
    }

    /// Runs started from now on go to one local outpost running `worker`.
    pub fn set_worker(&self, worker: Vec<String>) {
        self.set_outposts(vec![Outpost::local(worker)]);
    }

    /// Runs started from now on go to these outposts, the first with capacity first. An
    /// outpost that keeps its name keeps its count of runs going (they give their capacity
    /// back by name), and its rest if it is reached the same way.
    pub fn set_outposts(&self, outposts: Vec<Outpost>) {
        let mut all = self.outposts.lock().unwrap_or_else(|e| e.into_inner());
        let next = outposts
            .into_iter()
            .map(|o| {
                let mut st = OutpostState::new(o);
                if let Some(old) = all.iter().find(|p| p.outpost.name == st.outpost.name) {
                    st.running = old.running;
                    if old.outpost.via == st.outpost.via {
                        st.resting_until = old.resting_until;
                        st.last_error = old.last_error.clone();
                    }
                }
                st
            })
            .collect();
        *all = next;
    }

    /// The outposts, in dispatch order.
    pub fn outposts(&self) -> Vec<Outpost> {
        self.outposts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|o| o.outpost.clone())
            .collect()
    }

    /// Each outpost: its name, runs going, capacity, and why it is resting, if it is.
    pub fn outpost_status(&self) -> Vec<(String, u64, u64, Option<String>)> {
        let now = std::time::Instant::now();
        self.outposts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|o| {
                let resting = o
                    .resting_until
                    .filter(|t| *t > now)
                    .and(o.last_error.clone());
                (
                    o.outpost.name.clone(),
                    o.running,
                    o.outpost.capacity,
                    resting,
                )
            })
            .collect()
    }

    /// The first outpost (`preferred` first, if given) not yet tried that has capacity and is
    /// not resting; counts the run.
    fn lease(&self, tried: &[String], preferred: Option<&str>) -> Option<Outpost> {
        let now = std::time::Instant::now();
        let mut all = self.outposts.lock().unwrap_or_else(|e| e.into_inner());
        let free = |o: &OutpostState| {
            !tried.contains(&o.outpost.name)
                && o.running < o.outpost.capacity
                && o.resting_until.is_none_or(|t| t <= now)
        };
        let i = preferred
            .and_then(|p| all.iter().position(|o| o.outpost.name == p && free(o)))
            .or_else(|| all.iter().position(free))?;
        let o = &mut all[i];
        o.running += 1;
        Some(o.outpost.clone())
    }

    fn release_outpost(&self, name: &str, failed: Option<String>) {
        let mut all = self.outposts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = all.iter_mut().find(|o| o.outpost.name == name) {
            o.running = o.running.saturating_sub(1);
            if let Some(e) = failed {
                o.resting_until = Some(std::time::Instant::now() + OUTPOST_REST);
                o.last_error = Some(e);
            }
        }
    }

    /// The user's active runs.
    pub fn runs_of(&self, user: &str) -> Vec<Arc<Run>> {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|((u, _), _)| u == user)
            .map(|(_, r)| r.clone())
            .collect()
    }

    pub fn conversations(&self) -> &Conversations {
        &self.conversations
    }

    /// The active (not yet ended) run of a conversation.
    pub fn active(&self, user: &str, conversation: &str) -> Option<Arc<Run>> {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(user.to_string(), conversation.to_string()))
            .cloned()
    }

    /// Starts a run for `message` in the user's conversation. The user's message is on disk
    /// when this returns. `Err(Refused)` if the conversation already has an active run.
    pub fn start(
        self: &Arc<Self>,
        user: &str,
        conversation: &str,
        message: &str,
        spec: &AgentSpec,
        session: Option<(&str, bool)>,
    ) -> Result<Arc<Run>, Error> {
        let key = (user.to_string(), conversation.to_string());
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if active.contains_key(&key) {
            return Err(Error::Refused(
                "this conversation already has a run going".into(),
            ));
        }
        if self.conversations.open(user, conversation)?.is_none() {
            return Err(Error::Refused(format!("no conversation {conversation:?}")));
        }
        let id = crate::app::random(12)?;
        self.conversations.append(
            user,
            conversation,
            &[Record {
                ts: now_rfc3339(),
                user: crate::store::display_user(user).to_string(),
                role: "user".into(),
                content: message.to_string(),
                run_id: Some(id.clone()),
                seq: None,
                frame: None,
            }],
        )?;
        let (tx, _) = broadcast::channel(RING);
        let (cancel, cancel_rx) = mpsc::channel(1);
        let (answers, answers_rx) = mpsc::unbounded_channel();
        let run = Arc::new(Run {
            id,
            user: user.to_string(),
            conversation: conversation.to_string(),
            tx,
            ring: Mutex::new(VecDeque::new()),
            cancel,
            open_questions: Mutex::default(),
            answers,
        });
        active.insert(key.clone(), run.clone());
        drop(active);
        let plan = match &spec.agent {
            Agent::Claude {
                command,
                permission_mode,
            } => {
                let (session, exists, record) = match session {
                    Some((id, resume)) => (id.to_string(), resume, true),
                    None => (uuid::Uuid::new_v4().to_string(), false, false),
                };
                let home = if exists {
                    self.conversations
                        .session_outpost(user, conversation)
                        .ok()
                        .flatten()
                } else {
                    None
                };
                Plan::Claude {
                    command: command.clone(),
                    permission_mode: permission_mode.clone(),
                    session,
                    exists,
                    home,
                    record,
                    message: message.to_string(),
                }
            }
            Agent::Command { argv } => {
                let t: Vec<&str> = argv.iter().map(String::as_str).collect();
                Plan::Fixed(edge_sandbox::command_argv(&t, message))
            }
        };
        let me = self.clone();
        let r = run.clone();
        let spec = spec.clone();
        self.metrics.started();
        tracing::info!(run = %run.id, user = %run.user, conversation = %run.conversation, "run started");
        tokio::spawn(async move {
            let mut task = RunTask {
                orch: &me,
                run: &r,
                seq: 0,
                started: std::time::Instant::now(),
                first_output: false,
                outpost: None,
                attempts: 0,
                exit_code: None,
                questions: HashMap::new(),
            };
            task.drive(plan, &spec, cancel_rx, answers_rx).await;
            me.release(&r);
        });
        Ok(run)
    }

    /// The run has ended: its conversation may start another. (Only this run's entry goes; a
    /// newer run of the conversation stays.)
    fn release(&self, run: &Run) {
        let key = (run.user.clone(), run.conversation.clone());
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if active
            .get(&key)
            .is_some_and(|r| std::ptr::eq(r.as_ref(), run))
        {
            active.remove(&key);
        }
    }
}

/// How long an outpost that failed is skipped before it is tried again.
pub const OUTPOST_REST: Duration = Duration::from_secs(30);

/// The most of a conversation's earlier turns given to an agent that starts a new session on
/// another host (its newest part; it travels in the run frame, so it stays well under
/// Nomad's 16 KiB dispatch payload).
pub const TRANSCRIPT_MAX: usize = 10 * 1024;

/// How a run's agent command is made for the outpost an attempt lands on.
#[derive(Debug)]
enum Plan {
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
fn claude_invocation(
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
struct AttemptPlan {
    /// Written to the agent's stdin first.
    stdin: Option<String>,
    /// Stdin stays open: the agent's permission questions are answered there.
    keep_stdin: bool,
    argv: Vec<String>,
    /// The session this attempt creates or resumes.
    session: Option<String>,
    /// Why it is a new session although the conversation has one.
    moved: Option<String>,
    /// It resumes the conversation's session (`--resume`).
    resumes: bool,
}

impl Plan {
    /// Where the conversation's session is, to try first.
    fn home(&self) -> Option<&str> {
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
    fn for_outpost(
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
    fn forget_home(&mut self) {
        if let Plan::Claude { home, .. } = self {
            *home = None;
        }
    }

    /// An attempt started on `outpost` with `session`: later attempts and runs resume it there.
    /// True when the conversation should record it.
    fn started(&mut self, used: &str, outpost: &str) -> bool {
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

#[derive(Debug)]
struct OutpostState {
    outpost: Outpost,
    running: u64,
    resting_until: Option<std::time::Instant>,
    last_error: Option<String>,
}

impl OutpostState {
    fn new(outpost: Outpost) -> OutpostState {
        OutpostState {
            outpost,
            running: 0,
            resting_until: None,
            last_error: None,
        }
    }
}

/// A run's hold on an outpost's capacity; given back when dropped (resting the outpost if the
/// attempt failed there).
struct Lease<'a> {
    orch: &'a Orchestrator,
    name: String,
    failed: Option<String>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.orch.release_outpost(&self.name, self.failed.take());
    }
}

/// Connects to an outpost's worker and says `hello` (`edge workers --probe`).
pub async fn probe_outpost(o: &Outpost) -> Result<Hello, String> {
    edge_workers::outposts::probe(&o.via).await
}

/// What the agent's `result` line said: is_error, usage, cost.
type AgentResult = (bool, Usage, Option<f64>);

struct RunTask<'a> {
    orch: &'a Orchestrator,
    run: &'a Run,
    seq: u64,
    /// For the end's log line and the metrics.
    started: std::time::Instant,
    first_output: bool,
    outpost: Option<String>,
    attempts: u32,
    exit_code: Option<i32>,
    /// The agent's open questions: the tool's input (sent back unchanged with an allow) and
    /// when an unanswered one is denied.
    questions: HashMap<String, Question>,
}

enum Parser {
    Claude(ClaudeParser),
    Command(CommandOutput),
}

impl RunTask<'_> {
    /// The agent's events: its questions become `permission_request` frames (stored before
    /// anyone can answer them), answered at once for tools the conversation always allows;
    /// the rest are stored and sent as they are.
    async fn emit_agent(
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
    async fn resolve(
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
    fn next_question_deadline(&self) -> Option<std::time::Instant> {
        self.questions.values().map(|q| q.deadline).min()
    }

    /// Denies the questions whose time is up (unless an answer took them first).
    async fn time_out_questions(&mut self, to: &mpsc::UnboundedSender<ToWorker>, attempt: &str) {
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
    async fn drop_questions(&mut self) {
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

    /// An attempt is over without ending the run: its lease and link go (tearing the worker
    /// down), and the run says why it is dispatching again.
    async fn next_attempt(
        &mut self,
        lease: Lease<'_>,
        link: edge_workers::outposts::Link,
        detail: String,
    ) {
        self.drop_questions().await;
        let name = lease.name.clone();
        drop(lease);
        drop(link);
        self.emit(vec![RunBody::State {
            state: "dispatching".into(),
            outpost: Some(name),
            detail: Some(detail),
        }])
        .await;
    }

    /// Stores, then publishes, frames: one durable append per batch, through the journal
    /// thread, so the sync holds up no async thread and concurrent runs share commits.
    async fn emit(&mut self, bodies: Vec<RunBody>) {
        if bodies.is_empty() {
            return;
        }
        let mut frames = Vec::with_capacity(bodies.len());
        let mut records = Vec::with_capacity(bodies.len());
        for body in &bodies {
            if let RunBody::End {
                outcome,
                usage,
                detail,
                ..
            } = body
            {
                self.ended(*outcome, usage, detail.as_deref());
            }
        }
        for body in bodies {
            self.seq += 1;
            let f = RunFrame {
                run_id: self.run.id.clone(),
                seq: self.seq,
                body,
            };
            records.push(Record {
                ts: now_rfc3339(),
                user: crate::store::display_user(&self.run.user).to_string(),
                role: "assistant".into(),
                content: match &f.body {
                    RunBody::End { detail, .. } => detail.clone().unwrap_or_default(),
                    _ => String::new(),
                },
                run_id: Some(self.run.id.clone()),
                seq: Some(f.seq),
                frame: Some(f.body.clone()),
            });
            frames.push(f);
        }
        if let Err(e) = self
            .orch
            .conversations
            .append_shared(&self.run.user, &self.run.conversation, &records)
            .await
        {
            tracing::error!(run = %self.run.id, error = %e, "could not store run events");
        }
        let mut ring = self.run.ring.lock().unwrap_or_else(|e| e.into_inner());
        for f in frames {
            if ring.len() == RING {
                ring.pop_front();
            }
            ring.push_back(f.clone());
            // No listener is fine: runs do not need one.
            let _ = self.run.tx.send(f);
        }
    }

    /// The run's end: one log line (user, conversation, outpost, attempts, outcome, duration,
    /// tokens, exit code; why, on failure) and the metrics.
    fn ended(&self, outcome: Outcome, usage: &Usage, detail: Option<&str>) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.orch.metrics.ended(outcome, usage.input, usage.output);
        let outpost = self.outpost.as_deref().unwrap_or("-");
        let code = self
            .exit_code
            .map_or_else(|| "-".to_string(), |c| c.to_string());
        match outcome {
            Outcome::Ok | Outcome::Cancelled => tracing::info!(
                run = %self.run.id, user = %self.run.user, conversation = %self.run.conversation,
                outpost = %outpost, attempts = self.attempts, outcome = ?outcome, duration_ms = ms,
                tokens_in = usage.input, tokens_out = usage.output, exit_code = %code,
                "run ended"
            ),
            _ => {
                // The agent's own words (its stderr's last lines), bounded.
                let why: String = detail.unwrap_or("").chars().take(2000).collect();
                tracing::warn!(
                    run = %self.run.id, user = %self.run.user, conversation = %self.run.conversation,
                    outpost = %outpost, attempts = self.attempts, outcome = ?outcome, duration_ms = ms,
                    tokens_in = usage.input, tokens_out = usage.output, exit_code = %code,
                    detail = %why, "run ended"
                )
            }
        }
    }

    /// Emits agent events, remembering what the agent's `result` said.
    async fn emit_events(&mut self, events: Vec<Event>, result: &mut Option<AgentResult>) {
        // The first token: the first text or tool input the agent streams.
        if !self.first_output && events.iter().any(|e| matches!(e, Event::Delta { .. })) {
            self.first_output = true;
            self.orch.metrics.first_output(self.started.elapsed());
        }
        for e in &events {
            if let Event::Result {
                is_error,
                usage,
                cost_usd,
                ..
            } = e
            {
                *result = Some((*is_error, *usage, *cost_usd));
            }
        }
        self.emit(
            events
                .into_iter()
                .map(|event| RunBody::Event { event })
                .collect(),
        )
        .await;
    }

    async fn drive(
        &mut self,
        mut plan: Plan,
        spec: &AgentSpec,
        mut cancel: mpsc::Receiver<()>,
        mut answers: mpsc::UnboundedReceiver<Answer>,
    ) {
        self.emit(vec![RunBody::State {
            state: "dispatching".into(),
            outpost: None,
            detail: None,
        }])
        .await;
        let mut parser = match spec.agent {
            Agent::Claude { .. } => Parser::Claude(ClaudeParser::new()),
            Agent::Command { .. } => Parser::Command(CommandOutput::new()),
        };
        let end = |outcome, detail: Option<String>| RunBody::End {
            outcome,
            usage: Usage::default(),
            cost_usd: None,
            detail,
        };
        let deadline = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            + spec.timeout;
        // The first outpost with capacity that answers; one that does not is skipped (and
        // rested), and the next one gets a new attempt.
        let mut tried: Vec<String> = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        let mut cancelled = false;
        // Attempt ids are never reused (Nomad takes them as idempotency tokens), even when an
        // outpost is tried again.
        let mut attempts = 0;
        // A resume whose session its host no longer has is tried once more as a new session.
        let mut lost_session = false;
        let ((outcome, detail, usage, cost_usd), link) = 'attempts: loop {
            let (mut link, mut lease, attempt, this) = loop {
                let Some(outpost) = self.orch.lease(&tried, plan.home()) else {
                    let why = if failures.is_empty() {
                        "every outpost is at capacity or resting after a failure".to_string()
                    } else {
                        failures.join("; ")
                    };
                    self.emit(vec![end(
                        Outcome::Error,
                        Some(format!("no outpost could take the run: {why}")),
                    )])
                    .await;
                    return;
                };
                attempts += 1;
                self.attempts = attempts;
                let attempt = format!("{}-{}", self.run.id, attempts);
                tried.push(outpost.name.clone());
                let mut lease = Lease {
                    orch: self.orch,
                    name: outpost.name.clone(),
                    failed: None,
                };
                let resumable = !matches!(outpost.via, edge_workers::outposts::Via::Nomad(_));
                let this = plan.for_outpost(&outpost.name, resumable, || {
                    self.orch
                        .conversations
                        .transcript_before(
                            &self.run.user,
                            &self.run.conversation,
                            &self.run.id,
                            TRANSCRIPT_MAX,
                        )
                        .unwrap_or_default()
                });
                let run = ToWorker::Run {
                    attempt_id: attempt.clone(),
                    run_id: self.run.id.clone(),
                    argv: this.argv.clone(),
                    cwd: Some(spec.workspace.clone()),
                    env: Default::default(),
                    stdin: this.stdin.clone(),
                    keep_stdin: this.keep_stdin,
                    deadline_unix: Some(deadline.as_secs()),
                    sandbox: spec.sandbox.clone().map(Box::new),
                };
                // Answers to the agent's questions need a way back to it, which a Nomad
                // dispatch does not have: the run goes elsewhere, the outpost is not rested.
                if this.keep_stdin && matches!(outpost.via, edge_workers::outposts::Via::Nomad(_)) {
                    let why = "a Nomad outpost cannot carry answers to the agent's tool permission questions (permission_mode = \"ask\"): use a local, SSH or HTTP outpost for such runs";
                    failures.push(format!("{}: {why}", outpost.name));
                    drop(lease);
                    self.emit(vec![RunBody::State {
                        state: "dispatching".into(),
                        outpost: Some(outpost.name.clone()),
                        detail: Some(format!("skipped: {why}")),
                    }])
                    .await;
                    continue;
                }
                match edge_workers::outposts::connect(&outpost.via, &run).await {
                    Ok(link) => break (link, lease, attempt, this),
                    Err(e) => {
                        tracing::warn!(run = %self.run.id, outpost = %outpost.name, error = %e, "outpost skipped");
                        failures.push(format!("{}: {e}", outpost.name));
                        lease.failed = Some(e.clone());
                        drop(lease);
                        self.emit(vec![RunBody::State {
                            state: "dispatching".into(),
                            outpost: Some(outpost.name.clone()),
                            detail: Some(format!("skipped: {e}")),
                        }])
                        .await;
                    }
                }
            };
            let mut result: Option<AgentResult> = None;
            let mut stderr_tail: VecDeque<String> = VecDeque::new();
            // The agent wrote something on stdout.
            let mut streamed = false;
            // Why the worker could not start the agent (the sandbox refused, say).
            let mut refused: Option<(String, String)> = None;
            // A frame read while draining, handled on the next turn.
            let mut stash = None;
            let outcome = loop {
                let f = match stash.take() {
                    Some(f) => f,
                    None => tokio::select! {
                        c = cancel.recv(), if !cancelled => {
                            if c.is_some() {
                                cancelled = true;
                                self.emit(vec![RunBody::State { state: "cancelling".into(), outpost: None, detail: None }]).await;
                                let _ = link.to.send(ToWorker::Cancel { attempt_id: attempt.clone(), grace_ms: CANCEL_GRACE.as_millis() as u64 });
                            }
                            continue;
                        }
                        f = link.from.next() => f,
                        a = answers.recv() => {
                            if let Some(a) = a {
                                self.resolve(&link.to, &attempt, &a.request_id, a.allow, &a.by, a.always).await;
                            }
                            continue;
                        }
                        _ = sleep_until_opt(self.next_question_deadline()), if !self.questions.is_empty() => {
                            self.time_out_questions(&link.to, &attempt).await;
                            continue;
                        }
                    },
                };
                {
                    match f {
                        None | Some(Err(_)) => {
                            let why = match &f {
                                Some(Err(e)) => format!("the worker went away mid-run ({e})"),
                                _ => "the worker went away mid-run".to_string(),
                            };
                            lease.failed = Some(why.clone());
                            if cancelled {
                                break (Outcome::Cancelled, None);
                            }
                            // The host or the connection is gone: a new attempt on the next
                            // outpost. What the lost attempt streamed stays in the conversation.
                            failures.push(format!("{}: {why}", lease.name));
                            // Tearing the link down kills the local child, closes the stream,
                            // stops the Nomad job.
                            let detail =
                                format!("{why}; attempt {} on another outpost", attempts + 1);
                            self.next_attempt(lease, link, detail).await;
                            continue 'attempts;
                        }
                        Some(Ok(f)) => match f {
                            FromWorker::Started { .. } => {
                                self.outpost = Some(lease.name.clone());
                                if let Some(used) = &this.session {
                                    if plan.started(used, &lease.name) {
                                        if let Err(e) = self.orch.conversations.set_session(
                                            &self.run.user,
                                            &self.run.conversation,
                                            used,
                                            &lease.name,
                                        ) {
                                            tracing::warn!(run = %self.run.id, error = %e, "recording the agent session");
                                        }
                                    }
                                }
                                self.emit(vec![RunBody::State {
                                    state: "running".into(),
                                    outpost: Some(lease.name.clone()),
                                    detail: this.moved.clone(),
                                }])
                                .await
                            }
                            FromWorker::Out {
                                fd: Fd::Stdout,
                                line,
                                ..
                            } => {
                                streamed = true;
                                let parse = |parser: &mut Parser, line: &str| match parser {
                                    Parser::Claude(p) => p.line(line),
                                    Parser::Command(p) => p.line(line),
                                };
                                let mut events = parse(&mut parser, &line);
                                // What the worker has already sent joins this batch: one append,
                                // one fsync, however fast the agent writes.
                                while events.len() < 1024 {
                                    match link.from.next().now_or_never() {
                                        Some(Some(Ok(FromWorker::Out {
                                            fd: Fd::Stdout,
                                            line,
                                            ..
                                        }))) => {
                                            events.extend(parse(&mut parser, &line));
                                        }
                                        Some(other) => {
                                            stash = Some(other);
                                            break;
                                        }
                                        None => break,
                                    }
                                }
                                let ended_turn =
                                    events.iter().any(|e| matches!(e, Event::Result { .. }));
                                self.emit_agent(events, &mut result, &link.to, &attempt, spec)
                                    .await;
                                // In stream-json input, the agent waits for the next message
                                // after its turn: the end of input ends it.
                                if ended_turn && this.keep_stdin {
                                    let _ = link.to.send(ToWorker::StdinClose {
                                        attempt_id: attempt.clone(),
                                    });
                                }
                            }
                            FromWorker::Out {
                                fd: Fd::Stderr,
                                line,
                                ..
                            } => {
                                // What the sandbox's egress proxy refused: shown in the run.
                                if let Some(why) = line.strip_prefix(edge_workers::EGRESS_PREFIX) {
                                    let notice = Event::Notice {
                                        kind: "egress_denied".into(),
                                        detail: why.to_string(),
                                    };
                                    self.emit_events(vec![notice], &mut result).await;
                                    continue;
                                }
                                if stderr_tail.len() == 20 {
                                    stderr_tail.pop_front();
                                }
                                stderr_tail.push_back(line);
                            }
                            FromWorker::Exit { code, reason, .. } => {
                                self.exit_code = code;
                                if let Parser::Command(p) = &mut parser {
                                    let events = p.finish(code);
                                    self.emit_events(events, &mut result).await;
                                }
                                let tail =
                                    stderr_tail.iter().cloned().collect::<Vec<_>>().join("\n");
                                // Claude Code could not find the session it was to resume (its
                                // host lost the agent's home, say): once, a new session told
                                // the earlier turns, on any outpost, this one included.
                                if this.resumes
                                    && !streamed
                                    && !cancelled
                                    && !lost_session
                                    && tail.contains("No conversation found with session ID")
                                {
                                    lost_session = true;
                                    plan.forget_home();
                                    let name = lease.name.clone();
                                    tried.retain(|t| *t != name);
                                    let detail = format!(
                                        "outpost {name} no longer has the conversation's agent session; starting a new one, told the earlier turns"
                                    );
                                    self.next_attempt(lease, link, detail).await;
                                    continue 'attempts;
                                }
                                match refused.take() {
                                    // This worker's floor asks for more confinement than the
                                    // run's profile gives: the outpost is healthy (not rested),
                                    // but the run goes to the next one.
                                    Some((code, why)) if code == "policy" => {
                                        failures.push(format!("{}: {why}", lease.name));
                                        self.next_attempt(lease, link, format!("skipped: {why}"))
                                            .await;
                                        continue 'attempts;
                                    }
                                    Some((_, why)) => break (Outcome::Error, Some(why)),
                                    None => {}
                                }
                                break match reason {
                                    ExitReason::Cancelled => (Outcome::Cancelled, None),
                                    ExitReason::Timeout => (
                                        Outcome::Timeout,
                                        Some(format!(
                                            "the run passed its limit of {:?}",
                                            spec.timeout
                                        )),
                                    ),
                                    ExitReason::Exited => match (code, &result) {
                                        (Some(0), Some((false, _, _))) => (Outcome::Ok, None),
                                        (Some(0), Some((true, _, _))) => (
                                            Outcome::Error,
                                            Some("the agent reported an error".to_string()),
                                        ),
                                        (Some(0), None) => (
                                            Outcome::Error,
                                            Some("the agent ended without a result".to_string()),
                                        ),
                                        (c, _) => (
                                            Outcome::Error,
                                            Some(format!(
                                                "the agent exited with {}{}{tail}",
                                                c.map_or("a signal".to_string(), |c| format!(
                                                    "code {c}"
                                                )),
                                                if tail.is_empty() { "" } else { ": " }
                                            )),
                                        ),
                                    },
                                };
                            }
                            FromWorker::Error { code, msg, .. } => {
                                if code == "sandbox" || code == "spawn" || code == "policy" {
                                    // The agent never started: this is the whole story.
                                    refused = Some((code, msg));
                                } else {
                                    stderr_tail.push_back(msg);
                                }
                            }
                            FromWorker::Busy { .. } => {
                                break (
                                    Outcome::Error,
                                    Some(format!("the worker at outpost {} is busy", lease.name)),
                                )
                            }
                            FromWorker::HelloOk { .. } | FromWorker::Pong { .. } => {}
                        },
                    }
                }
            };
            let (usage, cost_usd) = result.map(|(_, u, c)| (u, c)).unwrap_or_default();
            break 'attempts ((outcome.0, outcome.1, usage, cost_usd), link);
        };
        self.drop_questions().await;
        self.emit(vec![RunBody::End {
            outcome,
            usage,
            cost_usd,
            detail,
        }])
        .await;
        // Ended: a new message may start the next run at once, while the worker cleans up.
        self.orch.release(self.run);
        let edge_workers::outposts::Link { to, finish, .. } = link;
        drop(to);
        finish.await;
    }
}

/// Sleeps until `at` (forever when `None`).
async fn sleep_until_opt(at: Option<std::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
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
