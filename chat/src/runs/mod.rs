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

use tokio::sync::{broadcast, mpsc};

use crate::conversations::{now_rfc3339, Conversations, Record};
pub use crate::frames::{Outcome, RunBody, RunFrame};
use crate::Error;

mod plan;
mod questions;
mod task;

pub use edge_workers::outposts::{Hello, Outpost, Transport};
use plan::Plan;
use questions::{Answer, Question};
use task::RunTask;

/// Frames kept in memory per run for listeners that reconnect.
pub const RING: usize = 4096;
/// A run's broadcast to its listeners: small, since a listener that lags catches up from the
/// ring (`subscribe` again); the ring holds what a reconnecting tab needs. Each slot is
/// allocated when the run starts, so this is what a run costs before its first frame.
pub const LIVE: usize = 256;
/// How long cancel waits between the agent's interrupt, SIGTERM and SIGKILL (in total).
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// How long a batch of text deltas waits for more of the agent's output before it is stored
/// and sent, once [`TICK_FROM_RUNS`] runs are going: a screen frame. One record, one share of a
/// sync and one frame then carry what the agent wrote in that time instead of one per line (a
/// browser shows no more than a frame's worth anyway). Anything but a delta (a tool call, the
/// end) goes at once, with what waits. Fewer runs: each delta goes at once.
pub const DELTA_TICK: Duration = Duration::from_millis(16);
pub const TICK_FROM_RUNS: i64 = 8;

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
                    if old.outpost.via.identity() == st.outpost.via.identity() {
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
    /// when this returns. `Err(Busy)` if the conversation already has an active run, `Err(NotFound)` if there is no such conversation.
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
            return Err(Error::Busy(
                "this conversation already has a run going".into(),
            ));
        }
        if self.conversations.meta(user, conversation)?.is_none() {
            return Err(Error::NotFound(format!("no conversation {conversation:?}")));
        }
        let id = crate::ids::random(12)?;
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
        let (tx, _) = broadcast::channel(LIVE);
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
                cancelled: false,
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

#[cfg(test)]
mod tests;
