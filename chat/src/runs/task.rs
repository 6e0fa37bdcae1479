//! One run's task: leases an outpost, opens a link, turns the worker's frames into stored and
//! broadcast run frames, retries on the next outpost when an attempt is lost, and ends the run
//! exactly once.

use super::*;

/// What the agent's `result` line said: is_error, usage, cost.
pub(super) type AgentResult = (bool, Usage, Option<f64>);

pub(super) struct RunTask<'a> {
    pub(super) orch: &'a Orchestrator,
    pub(super) run: &'a Run,
    pub(super) seq: u64,
    /// For the end's log line and the metrics.
    pub(super) started: std::time::Instant,
    pub(super) first_output: bool,
    pub(super) outpost: Option<String>,
    pub(super) attempts: u32,
    pub(super) exit_code: Option<i32>,
    /// The agent's open questions: the tool's input (sent back unchanged with an allow) and
    /// when an unanswered one is denied.
    pub(super) questions: HashMap<String, Question>,
    /// Cancel was asked (it holds across attempts).
    pub(super) cancelled: bool,
}

pub(super) enum Parser {
    Claude(ClaudeParser),
    Command(CommandOutput),
}

impl<'a> RunTask<'a> {
    /// An attempt is over without ending the run: its lease and link go (tearing the worker
    /// down), and the run says why it is dispatching again.
    pub(super) async fn next_attempt(
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
    pub(super) async fn emit(&mut self, bodies: Vec<RunBody>) {
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
    pub(super) fn ended(&self, outcome: Outcome, usage: &Usage, detail: Option<&str>) {
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
    pub(super) async fn emit_events(
        &mut self,
        events: Vec<Event>,
        result: &mut Option<AgentResult>,
    ) {
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
            coalesce(events)
                .into_iter()
                .map(|event| RunBody::Event { event })
                .collect(),
        )
        .await;
    }

    /// The run, start to end: attempts on outposts, one after another, until one ends it (or
    /// none can take it). Each attempt ends in a typed [`AttemptEnd`]; only an `Ended` one ends
    /// the run.
    pub(super) async fn drive(
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
        let deadline = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            + spec.timeout;
        let mut d = Dispatch::default();
        let (outcome, detail, result, link) = loop {
            let Some((mut link, mut lease, attempt, this)) =
                self.dispatch(&mut plan, spec, deadline, &mut d).await
            else {
                return;
            };
            let mut result: Option<AgentResult> = None;
            let ctx = AttemptCtx {
                attempt: &attempt,
                outpost: &lease.name,
                this: &this,
                spec,
                may_renew_session: !d.lost_session,
            };
            let end = self
                .attempt(
                    ctx,
                    &mut link,
                    &mut plan,
                    &mut parser,
                    &mut cancel,
                    &mut answers,
                    &mut result,
                )
                .await;
            match end {
                AttemptEnd::Ended(outcome, detail) => break (outcome, detail, result, link),
                AttemptEnd::Lost(why) => {
                    // The host or the connection is gone: a new attempt on the next outpost
                    // (this one rests). What the lost attempt streamed stays in the
                    // conversation.
                    lease.failed = Some(why.clone());
                    d.failures.push(format!("{}: {why}", lease.name));
                    let detail = format!("{why}; attempt {} on another outpost", d.attempts + 1);
                    self.next_attempt(lease, link, detail).await;
                }
                AttemptEnd::Refused(why) => {
                    // The worker's floor asks for more confinement than the run's profile
                    // gives: the outpost is healthy (not rested); the run goes elsewhere.
                    d.failures.push(format!("{}: {why}", lease.name));
                    self.next_attempt(lease, link, format!("skipped: {why}"))
                        .await;
                }
                AttemptEnd::SessionGone => {
                    // Once: a new session told the earlier turns, on any outpost, this one too.
                    d.lost_session = true;
                    plan.forget_home();
                    let name = lease.name.clone();
                    d.tried.retain(|t| *t != name);
                    let detail = format!(
                        "outpost {name} no longer has the conversation's agent session; starting a new one, told the earlier turns"
                    );
                    self.next_attempt(lease, link, detail).await;
                }
            }
        };
        let (usage, cost_usd) = result.map(|(_, u, c)| (u, c)).unwrap_or_default();
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

    /// Leases the first outpost with capacity that takes the attempt; one that does not is
    /// skipped (and rested), and the next one is tried. None (after the run's `end`) when no
    /// outpost is left.
    async fn dispatch(
        &mut self,
        plan: &mut Plan,
        spec: &AgentSpec,
        deadline: Duration,
        d: &mut Dispatch,
    ) -> Option<(
        edge_workers::outposts::Link,
        Lease<'a>,
        String,
        plan::AttemptPlan,
    )> {
        let orch = self.orch;
        loop {
            let Some(outpost) = orch.lease(&d.tried, plan.home()) else {
                let why = if d.failures.is_empty() {
                    "every outpost is at capacity or resting after a failure".to_string()
                } else {
                    d.failures.join("; ")
                };
                self.emit(vec![RunBody::End {
                    outcome: Outcome::Error,
                    usage: Usage::default(),
                    cost_usd: None,
                    detail: Some(format!("no outpost could take the run: {why}")),
                }])
                .await;
                return None;
            };
            // Attempt ids are never reused (Nomad takes them as idempotency tokens), even when
            // an outpost is tried again.
            d.attempts += 1;
            self.attempts = d.attempts;
            let attempt = format!("{}-{}", self.run.id, d.attempts);
            d.tried.push(outpost.name.clone());
            let mut lease = Lease {
                orch,
                name: outpost.name.clone(),
                failed: None,
            };
            let (run, conversations) = (self.run, &orch.conversations);
            let this = plan.for_outpost(&outpost.name, outpost.via.keeps_sessions(), || {
                conversations
                    .transcript_before(&run.user, &run.conversation, &run.id, TRANSCRIPT_MAX)
                    .unwrap_or_default()
            });
            let frame = ToWorker::Run {
                attempt_id: attempt.clone(),
                run_id: run.id.clone(),
                argv: this.argv.clone(),
                cwd: Some(spec.workspace.clone()),
                env: Default::default(),
                stdin: this.stdin.clone(),
                keep_stdin: this.keep_stdin,
                deadline_unix: Some(deadline.as_secs()),
                sandbox: spec.sandbox.clone().map(Box::new),
            };
            // Answers to the agent's questions need a way back to it, which a Nomad dispatch
            // does not have: the run goes elsewhere, the outpost is not rested.
            let skipped = if this.keep_stdin && !outpost.via.carries_input() {
                let why = "a Nomad outpost cannot carry answers to the agent's tool permission questions (permission_mode = \"ask\"): use a local, SSH or HTTP outpost for such runs";
                why.to_string()
            } else {
                match outpost.via.open(&frame).await {
                    Ok(link) => return Some((link, lease, attempt, this)),
                    Err(e) => {
                        tracing::warn!(run = %run.id, outpost = %outpost.name, error = %e, "outpost skipped");
                        lease.failed = Some(e.clone());
                        e
                    }
                }
            };
            d.failures.push(format!("{}: {skipped}", outpost.name));
            drop(lease);
            self.emit(vec![RunBody::State {
                state: "dispatching".into(),
                outpost: Some(outpost.name.clone()),
                detail: Some(format!("skipped: {skipped}")),
            }])
            .await;
        }
    }

    /// One attempt on a worker: its frames become the run's, cancel and answers go to it, until
    /// it ends in one of the ways [`AttemptEnd`] names.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &mut self,
        ctx: AttemptCtx<'_>,
        link: &mut edge_workers::outposts::Link,
        plan: &mut Plan,
        parser: &mut Parser,
        cancel: &mut mpsc::Receiver<()>,
        answers: &mut mpsc::UnboundedReceiver<Answer>,
        result: &mut Option<AgentResult>,
    ) -> AttemptEnd {
        let AttemptCtx {
            attempt,
            outpost,
            this,
            spec,
            may_renew_session,
        } = ctx;
        let mut stderr_tail: VecDeque<String> = VecDeque::new();
        // The agent wrote something on stdout.
        let mut streamed = false;
        // Why the worker could not start the agent (the sandbox refused, say).
        let mut refused: Option<(edge_workers::ErrorCode, String)> = None;
        // A frame read while draining, handled on the next turn.
        let mut stash = None;
        loop {
            let f = match stash.take() {
                Some(f) => f,
                None => tokio::select! {
                    c = cancel.recv(), if !self.cancelled => {
                        if c.is_some() {
                            self.cancelled = true;
                            self.emit(vec![RunBody::State { state: "cancelling".into(), outpost: None, detail: None }]).await;
                            let _ = link.to.send(ToWorker::Cancel { attempt_id: attempt.to_string(), grace_ms: CANCEL_GRACE.as_millis() as u64 });
                        }
                        continue;
                    }
                    f = link.from.next() => f,
                    a = answers.recv() => {
                        if let Some(a) = a {
                            self.resolve(&link.to, attempt, &a.request_id, a.allow, &a.by, a.always).await;
                        }
                        continue;
                    }
                    _ = sleep_until_opt(self.next_question_deadline()), if !self.questions.is_empty() => {
                        self.time_out_questions(&link.to, attempt).await;
                        continue;
                    }
                },
            };
            let f = match f {
                Some(Ok(f)) => f,
                None | Some(Err(_)) => {
                    if self.cancelled {
                        return AttemptEnd::Ended(Outcome::Cancelled, None);
                    }
                    return AttemptEnd::Lost(match f {
                        Some(Err(e)) => format!("the worker went away mid-run ({e})"),
                        _ => "the worker went away mid-run".to_string(),
                    });
                }
            };
            match f {
                FromWorker::Started { .. } => {
                    self.outpost = Some(outpost.to_string());
                    if let Some(used) = &this.session {
                        if plan.started(used, outpost) {
                            if let Err(e) = self.orch.conversations.set_session(
                                &self.run.user,
                                &self.run.conversation,
                                used,
                                outpost,
                            ) {
                                tracing::warn!(run = %self.run.id, error = %e, "recording the agent session");
                            }
                        }
                    }
                    self.emit(vec![RunBody::State {
                        state: "running".into(),
                        outpost: Some(outpost.to_string()),
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
                    let mut events = parser.line(&line);
                    // What the worker has already sent joins this batch: one append, one
                    // fsync, however fast the agent writes.
                    while events.len() < 1024 {
                        match link.from.next().now_or_never() {
                            Some(Some(Ok(FromWorker::Out {
                                fd: Fd::Stdout,
                                line,
                                ..
                            }))) => events.extend(parser.line(&line)),
                            Some(other) => {
                                stash = Some(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    // Under load, deltas alone wait a tick for more (not the first: the first
                    // token shows at once).
                    let only_deltas =
                        |ev: &[Event]| ev.iter().all(|e| matches!(e, Event::Delta { .. }));
                    if stash.is_none()
                        && self.first_output
                        && !events.is_empty()
                        && only_deltas(&events)
                        && self.orch.metrics.active() >= TICK_FROM_RUNS
                    {
                        let until = tokio::time::Instant::now() + DELTA_TICK;
                        while events.len() < 1024 {
                            match tokio::time::timeout_at(until, link.from.next()).await {
                                Ok(Some(Ok(FromWorker::Out {
                                    fd: Fd::Stdout,
                                    line,
                                    ..
                                }))) => {
                                    let more = parser.line(&line);
                                    let done = !only_deltas(&more);
                                    events.extend(more);
                                    if done {
                                        break;
                                    }
                                }
                                Ok(other) => {
                                    stash = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    let ended_turn = events.iter().any(|e| matches!(e, Event::Result { .. }));
                    self.emit_agent(events, result, &link.to, attempt, spec)
                        .await;
                    // In stream-json input, the agent waits for the next message after its
                    // turn: the end of input ends it.
                    if ended_turn && this.keep_stdin {
                        let _ = link.to.send(ToWorker::StdinClose {
                            attempt_id: attempt.to_string(),
                        });
                    }
                }
                FromWorker::Out {
                    fd: Fd::Stderr,
                    line,
                    ..
                } => {
                    if stderr_tail.len() == 20 {
                        stderr_tail.pop_front();
                    }
                    stderr_tail.push_back(line);
                }
                FromWorker::Exit { code, reason, .. } => {
                    self.exit_code = code;
                    if let Parser::Command(p) = parser {
                        let events = p.finish(code);
                        self.emit_events(events, result).await;
                    }
                    let tail = stderr_tail.iter().cloned().collect::<Vec<_>>().join("\n");
                    // Claude Code could not find the session it was to resume (its host lost
                    // the agent's home, say).
                    if this.resumes
                        && may_renew_session
                        && !streamed
                        && !self.cancelled
                        && edge_sandbox::classify_failure(&tail)
                            == Some(edge_sandbox::ClaudeFailure::SessionGone)
                    {
                        return AttemptEnd::SessionGone;
                    }
                    match refused.take() {
                        Some((edge_workers::ErrorCode::Policy, why)) => {
                            return AttemptEnd::Refused(why)
                        }
                        Some((_, why)) => return AttemptEnd::Ended(Outcome::Error, Some(why)),
                        None => {}
                    }
                    let (outcome, detail) = exit_outcome(reason, code, result, &tail, spec);
                    return AttemptEnd::Ended(outcome, detail);
                }
                FromWorker::Error { code, msg, .. } => {
                    if code.refused() {
                        // The agent never started: this is the whole story.
                        refused = Some((code, msg));
                    } else {
                        stderr_tail.push_back(msg);
                    }
                }
                FromWorker::Busy { .. } => {
                    return AttemptEnd::Ended(
                        Outcome::Error,
                        Some(format!("the worker at outpost {outpost} is busy")),
                    )
                }
                // What the worker saw of the run: shown in it; a memory kill is also the
                // reason the run ends.
                FromWorker::Notice { kind, detail, .. } => {
                    let kind = match kind {
                        edge_workers::NoticeKind::EgressDenied => "egress_denied",
                        edge_workers::NoticeKind::MemoryLimit => {
                            stderr_tail.push_back(format!("edge sandbox: {detail}"));
                            "memory_limit"
                        }
                        edge_workers::NoticeKind::Other => "worker",
                    };
                    let notice = Event::Notice {
                        kind: kind.into(),
                        detail,
                    };
                    self.emit_events(vec![notice], result).await;
                }
                FromWorker::HelloOk { .. } | FromWorker::Pong { .. } => {}
            }
        }
    }
}

/// How one attempt ended.
#[derive(Debug, PartialEq)]
pub(super) enum AttemptEnd {
    /// The run is over: its outcome, and why when it is not `ok`.
    Ended(Outcome, Option<String>),
    /// The worker or the connection went away mid-run: the outpost rests, the run goes on
    /// elsewhere.
    Lost(String),
    /// The worker's floor refused the run's confinement: the run goes elsewhere, the outpost
    /// is healthy.
    Refused(String),
    /// The agent could not resume its session there: once per run, a new session.
    SessionGone,
}

/// What an attempt knows of its dispatch.
pub(super) struct AttemptCtx<'a> {
    attempt: &'a str,
    outpost: &'a str,
    this: &'a plan::AttemptPlan,
    spec: &'a AgentSpec,
    /// A lost session may still be renewed (once per run).
    may_renew_session: bool,
}

/// The dispatch's memory across attempts.
#[derive(Default)]
pub(super) struct Dispatch {
    /// Outposts tried (each once, unless a lost session frees one).
    tried: Vec<String>,
    /// Why each skipped or lost attempt failed, for the run's end.
    failures: Vec<String>,
    attempts: u32,
    lost_session: bool,
}

impl Parser {
    fn line(&mut self, line: &str) -> Vec<Event> {
        match self {
            Parser::Claude(p) => p.line(line),
            Parser::Command(p) => p.line(line),
        }
    }
}

/// The outcome of an agent that exited: by the worker's reason, its code and its `result`.
fn exit_outcome(
    reason: ExitReason,
    code: Option<i32>,
    result: &Option<AgentResult>,
    tail: &str,
    spec: &AgentSpec,
) -> (Outcome, Option<String>) {
    match reason {
        ExitReason::Cancelled => (Outcome::Cancelled, None),
        ExitReason::Timeout => (
            Outcome::Timeout,
            Some(format!("the run passed its limit of {:?}", spec.timeout)),
        ),
        ExitReason::Exited => match (code, result) {
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
                    c.map_or("a signal".to_string(), |c| format!("code {c}")),
                    if tail.is_empty() { "" } else { ": " }
                )),
            ),
        },
    }
}

/// Deltas of the same block that arrived together become one: under load (many runs, an agent
/// writing faster than edge wakes), one record, one sync share and one frame per batch instead
/// of one per line. The text is the same, in the same order; only the frame count changes.
pub(super) fn coalesce(events: Vec<Event>) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::with_capacity(events.len());
    for e in events {
        if let (Some(Event::Delta { block: b, text: t }), Event::Delta { block, text }) =
            (out.last_mut(), &e)
        {
            if *b == *block {
                t.push_str(text);
                continue;
            }
        }
        out.push(e);
    }
    out
}

/// Sleeps until `at` (forever when `None`).
async fn sleep_until_opt(at: Option<std::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
