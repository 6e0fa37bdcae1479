//! How the orchestrator reaches an outpost's worker, one link per attempt:
//!
//! - a command speaking the protocol on its stdin and stdout (`edge worker --stdio` locally, or
//!   `ssh ... user@host` whose forced command is the worker);
//! - HTTP: `POST {url}/work` with the run frame; the response streams the worker's frames as
//!   NDJSON; cancel is `POST {url}/work/{attempt}/cancel`; closing the response kills the agent;
//! - Nomad: a dispatch of a parameterized batch job (the run frame as its payload, the attempt
//!   id as the idempotency token) whose task runs `edge worker --oneshot`; the allocation is
//!   followed with blocking queries, the frames read from its stdout log, the exit code from its
//!   `Terminated` event; cancel stops the allocation.
//!
//! Every link gives the same thing: a sink for frames to the worker, a stream of its frames,
//! and a wind-down to await at the end.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::process::Stdio;
use std::time::{Duration, Instant};

use edge_workers::{FrameReader, FrameWriter, FromWorker, ToWorker};
use futures_util::{Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

/// How long a worker has to answer `hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(20);
/// An HTTP worker silent this long (no frame, no heartbeat) is taken for gone.
pub const HTTP_SILENCE: Duration = Duration::from_secs(20);
/// Nomad's limit on a dispatch payload.
pub const NOMAD_PAYLOAD_MAX: usize = 16 * 1024;
/// After the task has died, its log is complete once it has been quiet this long.
const LOG_QUIET: Duration = Duration::from_secs(1);
/// Tries of a Nomad API call that failed to connect or got a 5xx.
const NOMAD_TRIES: u64 = 4;
/// How long a Nomad dispatch may wait for its task to start before the outpost is skipped.
pub const NOMAD_PLACEMENT_TIMEOUT: Duration = Duration::from_secs(120);

/// How an outpost is reached.
#[derive(Debug, Clone)]
pub enum Via {
    /// A command speaking the protocol on stdin and stdout.
    Command(Vec<String>),
    Http(HttpTarget),
    Nomad(NomadTarget),
}

impl PartialEq for Via {
    fn eq(&self, other: &Via) -> bool {
        match (self, other) {
            (Via::Command(a), Via::Command(b)) => a == b,
            (Via::Http(a), Via::Http(b)) => a.url == b.url,
            (Via::Nomad(a), Via::Nomad(b)) => a.address == b.address && a.job == b.job,
            _ => false,
        }
    }
}

/// An `edge worker --listen`.
#[derive(Clone)]
pub struct HttpTarget {
    /// `http(s)://host:port`, no trailing slash.
    pub url: String,
    pub token: Option<String>,
    pub client: reqwest::Client,
}

impl std::fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTarget")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// A parameterized batch job on Nomad.
#[derive(Clone)]
pub struct NomadTarget {
    /// The HTTP API, e.g. `http://127.0.0.1:4646`, no trailing slash.
    pub address: String,
    pub token: Option<String>,
    pub job: String,
    pub task: String,
    pub namespace: Option<String>,
    pub client: reqwest::Client,
}

impl std::fmt::Debug for NomadTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NomadTarget")
            .field("address", &self.address)
            .field("job", &self.job)
            .field("task", &self.task)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// What an outpost's worker says about itself, and how long it took to answer.
#[derive(Debug, Clone, Serialize)]
pub struct Hello {
    pub worker: String,
    pub version: String,
    pub busy: bool,
    pub millis: u64,
    /// The least confinement the worker accepts (`edge worker --floor`).
    pub floor: Option<edge_sandbox::Floor>,
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<FromWorker, String>> + Send>>;
type WindDown = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// One attempt's connection to its worker.
pub struct Link {
    /// Frames to the worker (cancel). Dropping it says the orchestrator is done.
    pub to: mpsc::UnboundedSender<ToWorker>,
    /// The worker's frames; `None` or an error before `exit` means the attempt was lost.
    pub from: FrameStream,
    /// Awaited (bounded) after the end, so the worker can clean up; dropping the link instead
    /// tears it down at once.
    pub finish: WindDown,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

/// Says hello to the outpost's worker (`edge workers --probe`).
pub async fn probe(via: &Via) -> Result<Hello, String> {
    match via {
        Via::Command(argv) => command_hello(argv).await.map(|(_, h)| h),
        Via::Http(h) => http_hello(h).await,
        Via::Nomad(n) => nomad_hello(n).await,
    }
}

/// Connects to the outpost's worker and hands it the run. An error means the attempt never
/// started there (the outpost is skipped).
pub async fn connect(via: &Via, run: &ToWorker) -> Result<Link, String> {
    match via {
        Via::Command(argv) => {
            let ((child, mut to, from), h) = command_hello(argv).await?;
            if h.busy {
                return Err("the worker is busy".into());
            }
            to.send(run)
                .await
                .map_err(|e| format!("sending the run: {e}"))?;
            Ok(command_link(child, to, from))
        }
        Via::Http(h) => http_connect(h, run).await,
        Via::Nomad(n) => nomad_connect(n, run).await,
    }
}

/// Ends what an outpost keeps open between runs: an SSH outpost's multiplexing master
/// (`ssh -O exit` with the outpost's own options). Bounded to 2 s.
pub async fn close(via: &Via) {
    let Via::Command(argv) = via else { return };
    if argv.first().map(String::as_str) != Some("ssh")
        || !argv.iter().any(|a| a.starts_with("ControlMaster="))
    {
        return;
    }
    // The outpost's argv ends with the remote command; `-O exit` goes before the destination.
    let mut a: Vec<String> = argv[1..argv.len().saturating_sub(1)].to_vec();
    a.insert(0, "exit".into());
    a.insert(0, "-O".into());
    let run = tokio::process::Command::new("ssh")
        .args(&a)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(2), run).await;
}

// ---- a command on stdin/stdout (local, ssh) ----

type CommandWorker = (
    tokio::process::Child,
    FrameWriter<tokio::process::ChildStdin, ToWorker>,
    FrameReader<tokio::process::ChildStdout, FromWorker>,
);

/// Starts the worker command and says `hello`. On failure, why, with the last line the worker
/// (or ssh: host key mismatch, refused connection...) wrote on stderr. Afterwards the worker's
/// stderr is edge's.
async fn command_hello(argv: &[String]) -> Result<(CommandWorker, Hello), String> {
    let t = Instant::now();
    let (program, args) = argv.split_first().ok_or("no worker command")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {program:?}: {e}"))?;
    let mut stderr = child.stderr.take().expect("piped");
    let mut to = FrameWriter::<_, ToWorker>::new(child.stdin.take().expect("piped"));
    let mut from = FrameReader::<_, FromWorker>::new(child.stdout.take().expect("piped"));
    let answer = async {
        to.send(&ToWorker::Hello {
            proto: edge_workers::VERSION,
        })
        .await
        .map_err(|e| e.to_string())?;
        match from.next().await {
            Some(Ok(f)) => hello_of(f, t),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("the connection closed".to_string()),
        }
    };
    let r = match tokio::time::timeout(HELLO_TIMEOUT, answer).await {
        Ok(r) => r,
        Err(_) => Err(format!("no hello within {HELLO_TIMEOUT:?}")),
    };
    match r {
        Ok(h) => {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut stderr, &mut tokio::io::stderr()).await;
            });
            Ok(((child, to, from), h))
        }
        Err(e) => {
            let _ = child.start_kill();
            let mut why = Vec::new();
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut why),
            )
            .await;
            let why = String::from_utf8_lossy(&why);
            Err(match why.trim().lines().last() {
                Some(line) => format!("{e}: {line}"),
                None => e,
            })
        }
    }
}

fn hello_of(f: FromWorker, t: Instant) -> Result<Hello, String> {
    match f {
        FromWorker::HelloOk {
            worker,
            version,
            busy,
            floor,
        } => Ok(Hello {
            worker,
            version,
            busy,
            millis: t.elapsed().as_millis() as u64,
            floor: floor.map(|f| *f),
        }),
        FromWorker::Error { msg, .. } => Err(msg),
        other => Err(format!("unexpected first frame {other:?}")),
    }
}

fn command_link(
    mut child: tokio::process::Child,
    mut w: FrameWriter<tokio::process::ChildStdin, ToWorker>,
    r: FrameReader<tokio::process::ChildStdout, FromWorker>,
) -> Link {
    let (to, mut rx) = mpsc::unbounded_channel::<ToWorker>();
    // Frames to the worker; when the orchestrator is done, its stdin closes.
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if w.send(&f).await.is_err() {
                break;
            }
        }
    });
    let from = futures_util::stream::unfold(r, |mut r| async move {
        let f = r.next().await?;
        Some((f.map_err(|e| e.to_string()), r))
    })
    .boxed();
    Link {
        to,
        from,
        finish: Box::pin(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }),
    }
}

// ---- HTTP (`edge worker --listen`) ----

fn with_token(rb: reqwest::RequestBuilder, token: &Option<String>) -> reqwest::RequestBuilder {
    match token {
        Some(t) => rb.bearer_auth(t),
        None => rb,
    }
}

/// Reads a refused answer: the status and the first line of its body.
async fn refusal(what: &str, r: reqwest::Response) -> String {
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    let line = body.trim().lines().next().unwrap_or("").to_string();
    match status.as_u16() {
        401 | 403 => format!("{what} refused edge's credentials ({status}): {line}"),
        _ => format!("{what} answered {status}: {line}"),
    }
}

async fn http_hello(h: &HttpTarget) -> Result<Hello, String> {
    let t = Instant::now();
    let r = with_token(h.client.get(format!("{}/hello", h.url)), &h.token)
        .timeout(HELLO_TIMEOUT)
        .send()
        .await
        .map_err(|e| err_chain(&e))?;
    if !r.status().is_success() {
        return Err(refusal("the worker", r).await);
    }
    let body = r.bytes().await.map_err(|e| err_chain(&e))?;
    let f: FromWorker = edge_workers::decode(body.trim_ascii()).map_err(|e| e.to_string())?;
    hello_of(f, t)
}

/// reqwest's errors say little at the top ("error sending request"): the causes too.
fn err_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// NDJSON lines of a streaming body, decoded as worker frames.
fn ndjson_frames(
    body: impl Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send + 'static,
) -> FrameStream {
    let reader = tokio_util::io::StreamReader::new(Box::pin(body.map_err(std::io::Error::other)));
    let lines = tokio::io::BufReader::new(reader).lines();
    futures_util::stream::unfold(lines, |mut lines| async move {
        loop {
            // The worker sends a `pong` every 5 s while the agent is quiet: silence this long
            // means the worker or the network is gone, even when TCP has not noticed.
            let next = match tokio::time::timeout(HTTP_SILENCE, lines.next_line()).await {
                Ok(n) => n,
                Err(_) => {
                    return Some((
                        Err(format!("nothing from the worker for {HTTP_SILENCE:?}")),
                        lines,
                    ))
                }
            };
            return match next {
                Ok(Some(l)) if l.trim().is_empty() => continue,
                Ok(Some(l)) => Some((
                    edge_workers::decode::<FromWorker>(l.as_bytes()).map_err(|e| e.to_string()),
                    lines,
                )),
                Ok(None) => None,
                Err(e) => Some((Err(format!("reading the stream: {e}")), lines)),
            };
        }
    })
    .boxed()
}

async fn http_connect(h: &HttpTarget, run: &ToWorker) -> Result<Link, String> {
    let body = edge_workers::encode(run).map_err(|e| e.to_string())?;
    let r = with_token(h.client.post(format!("{}/work", h.url)), &h.token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| err_chain(&e))?;
    if r.status() == reqwest::StatusCode::CONFLICT {
        return Err("the worker is busy".into());
    }
    if !r.status().is_success() {
        return Err(refusal("the worker", r).await);
    }
    let from = ndjson_frames(r.bytes_stream());
    let (to, mut rx) = mpsc::unbounded_channel::<ToWorker>();
    let target = h.clone();
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            // The agent's input, in order (awaited one by one).
            if let ToWorker::Stdin { attempt_id, .. } | ToWorker::StdinClose { attempt_id } = &f {
                let url = format!("{}/work/{attempt_id}/stdin", target.url);
                let body = match edge_workers::encode(&f) {
                    Ok(b) => b,
                    Err(_) => continue,
                };
                match with_token(target.client.post(url), &target.token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        tracing::warn!(status = %r.status(), "the worker did not take the agent's input")
                    }
                    Err(e) => {
                        tracing::warn!(error = %err_chain(&e), "the agent's input did not reach the worker")
                    }
                }
                continue;
            }
            if let ToWorker::Cancel {
                attempt_id,
                grace_ms,
            } = f
            {
                let url = format!(
                    "{}/work/{attempt_id}/cancel?grace_ms={grace_ms}",
                    target.url
                );
                match with_token(target.client.post(url), &target.token)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        tracing::warn!(status = %r.status(), "the worker did not take the cancel")
                    }
                    Err(e) => {
                        tracing::warn!(error = %err_chain(&e), "cancel did not reach the worker")
                    }
                }
            }
        }
    });
    Ok(Link {
        to,
        from,
        finish: Box::pin(async {}),
    })
}

// ---- Nomad ----

impl NomadTarget {
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Result<url::Url, String> {
        let mut u = url::Url::parse(&self.address).map_err(|e| format!("{}: {e}", self.address))?;
        u.path_segments_mut()
            .map_err(|_| format!("{}: not a base URL", self.address))?
            .pop_if_empty()
            .extend(segments);
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
            if let Some(ns) = &self.namespace {
                q.append_pair("namespace", ns);
            }
        }
        if u.query() == Some("") {
            u.set_query(None);
        }
        Ok(u)
    }

    fn req(&self, method: reqwest::Method, u: url::Url) -> reqwest::RequestBuilder {
        let rb = self.client.request(method, u);
        match &self.token {
            Some(t) => rb.header("X-Nomad-Token", t),
            None => rb,
        }
    }

    /// A GET whose answer is JSON; with `index`, a blocking query (`wait` at most 30 s) that
    /// returns once the state is newer than `index`. Returns the answer and its `X-Nomad-Index`.
    async fn get<T: for<'de> Deserialize<'de>>(
        &self,
        segments: &[&str],
        index: Option<u64>,
    ) -> Result<(T, u64), String> {
        let mut q = Vec::new();
        if let Some(i) = index {
            q.push(("index", i.to_string()));
            q.push(("wait", "30s".to_string()));
        }
        let u = self.url(segments, &q)?;
        // A Nomad server that is briefly away (a leader election, a restart) is waited for:
        // giving up here would abandon an attempt that is still running.
        let mut tries = 0;
        let r = loop {
            tries += 1;
            let r = self
                .req(reqwest::Method::GET, u.clone())
                .timeout(Duration::from_secs(45))
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_server_error() && tries < NOMAD_TRIES => {}
                Ok(r) if !r.status().is_success() => {
                    return Err(refusal(&format!("Nomad ({})", u.path()), r).await)
                }
                Ok(r) => break r,
                Err(e) if tries >= NOMAD_TRIES => return Err(err_chain(&e)),
                Err(e) => {
                    tracing::warn!(error = %err_chain(&e), "Nomad did not answer; trying again")
                }
            }
            tokio::time::sleep(Duration::from_secs(tries)).await;
        };
        let idx = r
            .headers()
            .get("X-Nomad-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let v = r
            .json()
            .await
            .map_err(|e| format!("Nomad ({}): {}", u.path(), err_chain(&e)))?;
        Ok((v, idx))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NomadJob {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Type")]
    kind: String,
    parameterized_job: Option<serde_json::Value>,
    #[serde(default)]
    version: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NomadDispatch {
    #[serde(rename = "DispatchedJobID")]
    dispatched_job_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NomadAllocStub {
    #[serde(rename = "ID")]
    id: String,
    #[serde(default)]
    create_index: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NomadAlloc {
    client_status: String,
    #[serde(default)]
    client_description: String,
    #[serde(default)]
    task_states: Option<BTreeMap<String, NomadTaskState>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NomadTaskState {
    state: String,
    #[serde(default)]
    failed: bool,
    #[serde(default)]
    events: Option<Vec<NomadEvent>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NomadEvent {
    #[serde(rename = "Type")]
    kind: String,
    #[serde(default)]
    exit_code: i32,
    #[serde(default)]
    signal: i32,
    #[serde(default)]
    display_message: String,
}

async fn nomad_hello(n: &NomadTarget) -> Result<Hello, String> {
    let t = Instant::now();
    let (job, _): (NomadJob, u64) =
        tokio::time::timeout(HELLO_TIMEOUT, n.get(&["v1", "job", &n.job], None))
            .await
            .map_err(|_| format!("Nomad did not answer within {HELLO_TIMEOUT:?}"))??;
    if job.kind != "batch" || job.parameterized_job.is_none() {
        return Err(format!(
            "Nomad job {:?} must be a parameterized batch job (it is type {:?}{})",
            job.id,
            job.kind,
            if job.parameterized_job.is_none() {
                ", not parameterized"
            } else {
                ""
            }
        ));
    }
    Ok(Hello {
        worker: format!("nomad job {} (version {})", job.id, job.version),
        version: "-".into(),
        busy: false,
        millis: t.elapsed().as_millis() as u64,
        // The floor travels with the job (its `--floor` file); Nomad does not show it.
        floor: None,
    })
}

async fn nomad_connect(n: &NomadTarget, run: &ToWorker) -> Result<Link, String> {
    let ToWorker::Run {
        attempt_id,
        run_id,
        keep_stdin,
        ..
    } = run
    else {
        return Err("only a run frame is dispatched".into());
    };
    if *keep_stdin {
        // A dispatched job has no way back in: its payload is all the input it gets.
        return Err("a Nomad outpost cannot carry answers to the agent's tool permission questions (permission_mode = \"ask\"): use a local, SSH or HTTP outpost for such runs".into());
    }
    let payload = edge_workers::encode(run).map_err(|e| e.to_string())?;
    if payload.len() > NOMAD_PAYLOAD_MAX {
        return Err(format!(
            "the run frame is {} bytes; a Nomad dispatch payload holds at most {NOMAD_PAYLOAD_MAX}",
            payload.len()
        ));
    }
    use base64::Engine as _;
    let body = serde_json::json!({
        "Payload": base64::engine::general_purpose::STANDARD.encode(&payload),
        "Meta": { "run_id": run_id, "attempt_id": attempt_id },
        "IdPrefixTemplate": format!("run-{run_id}"),
    });
    // The attempt id is the idempotency token: a dispatch retried after a lost answer does not
    // start the attempt twice.
    let u = n.url(
        &["v1", "job", &n.job, "dispatch"],
        &[("idempotency_token", attempt_id.clone())],
    )?;
    // Sent again once if the answer was lost: the idempotency token makes that safe, and
    // gives back the job the first one may have dispatched.
    let mut r = None;
    for last in [false, true] {
        match n
            .req(reqwest::Method::POST, u.clone())
            .json(&body)
            .timeout(HELLO_TIMEOUT)
            .send()
            .await
        {
            Ok(answer) => {
                r = Some(answer);
                break;
            }
            Err(e) if last => return Err(format!("dispatching to Nomad: {}", err_chain(&e))),
            Err(e) => {
                tracing::warn!(error = %err_chain(&e), "dispatch unanswered; sending it again")
            }
        }
    }
    let r = r.ok_or("dispatching to Nomad: no answer")?;
    if !r.status().is_success() {
        return Err(refusal(&format!("Nomad (dispatch of job {:?})", n.job), r).await);
    }
    let d: NomadDispatch = r
        .json()
        .await
        .map_err(|e| format!("Nomad's dispatch answer: {}", err_chain(&e)))?;
    let (frames_tx, frames_rx) = mpsc::channel::<Result<FromWorker, String>>(1024);
    let (to, mut ctl) = mpsc::unbounded_channel::<ToWorker>();
    let alloc = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let follower = tokio::spawn(follow(
        n.clone(),
        d.dispatched_job_id.clone(),
        alloc.clone(),
        frames_tx,
    ));
    // Cancel: stop the allocation (Nomad signals the task, which cancels the agent with
    // grace); before there is one, stop the dispatched job.
    let target = n.clone();
    let job = d.dispatched_job_id;
    tokio::spawn(async move {
        while let Some(f) = ctl.recv().await {
            if let ToWorker::Cancel { .. } = f {
                stop(&target, &job, &alloc).await;
            }
        }
        // The orchestrator is done. If the follower is still going, the run was given up:
        // stop the job rather than leave it running unwatched.
        if !follower.is_finished() {
            follower.abort();
            stop(&target, &job, &alloc).await;
        }
    });
    Ok(Link {
        to,
        from: futures_util::stream::unfold(frames_rx, |mut rx| async move {
            rx.recv().await.map(|f| (f, rx))
        })
        .boxed(),
        finish: Box::pin(async {}),
    })
}

async fn stop(n: &NomadTarget, job: &str, alloc: &std::sync::Mutex<Option<String>>) {
    let a = alloc.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (method, segments) = match &a {
        Some(id) => (
            reqwest::Method::POST,
            vec!["v1", "allocation", id.as_str(), "stop"],
        ),
        None => (reqwest::Method::DELETE, vec!["v1", "job", job]),
    };
    let Ok(u) = n.url(&segments, &[]) else { return };
    match n.req(method, u).timeout(HELLO_TIMEOUT).send().await {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => tracing::warn!(status = %r.status(), job, "Nomad did not stop the attempt"),
        Err(e) => {
            tracing::warn!(error = %err_chain(&e), job, "stopping the attempt on Nomad failed")
        }
    }
}

/// Follows a dispatched job to its end, sending the worker's frames; an `Err` (or the end
/// without `exit`) means the attempt was lost.
async fn follow(
    n: NomadTarget,
    job: String,
    alloc_slot: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    tx: mpsc::Sender<Result<FromWorker, String>>,
) {
    if let Err(e) = follow_inner(&n, &job, &alloc_slot, &tx).await {
        // Given up on: the next outpost gets a new attempt, so this one must not go on.
        stop(&n, &job, &alloc_slot).await;
        if tx.send(Err(e)).await.is_err() {
            tracing::debug!(job, "nobody is following the attempt any more");
        }
    }
}

async fn follow_inner(
    n: &NomadTarget,
    job: &str,
    alloc_slot: &std::sync::Mutex<Option<String>>,
    tx: &mpsc::Sender<Result<FromWorker, String>>,
) -> Result<(), String> {
    let placed_by = Instant::now() + NOMAD_PLACEMENT_TIMEOUT;
    // 1. The allocation (a blocking query until there is one).
    let mut index = 0;
    let alloc_id = loop {
        if Instant::now() > placed_by {
            stop(n, job, alloc_slot).await;
            return Err(format!(
                "Nomad placed no allocation for {job} within {NOMAD_PLACEMENT_TIMEOUT:?}"
            ));
        }
        let (list, idx): (Vec<NomadAllocStub>, u64) = n
            .get(&["v1", "job", job, "allocations"], Some(index))
            .await?;
        if let Some(a) = list.iter().max_by_key(|a| a.create_index) {
            break a.id.clone();
        }
        index = idx.max(index);
    };
    *alloc_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(alloc_id.clone());
    // 2. Until its task has started (or already ended).
    let mut index = 0;
    loop {
        let (a, idx): (NomadAlloc, u64) =
            n.get(&["v1", "allocation", &alloc_id], Some(index)).await?;
        let state = a
            .task_states
            .as_ref()
            .and_then(|t| t.get(&n.task))
            .map(|t| t.state.as_str());
        if matches!(state, Some("running" | "dead"))
            || matches!(a.client_status.as_str(), "complete" | "failed" | "lost")
        {
            break;
        }
        if Instant::now() > placed_by {
            stop(n, job, alloc_slot).await;
            return Err(format!(
                "the task of allocation {alloc_id} did not start within {NOMAD_PLACEMENT_TIMEOUT:?} ({})",
                a.client_status
            ));
        }
        index = idx.max(index);
    }
    // 3. The worker's frames, from the task's stdout; resumed at the offset reached if the log
    // stream breaks while the task still runs.
    // Nomad keeps a followed log open after the task has died, so the allocation is watched
    // alongside (blocking queries): once its task is dead, what is left of the log is read
    // until it has been quiet for a moment.
    let (dead_tx, mut dead_rx) = tokio::sync::watch::channel(false);
    let watcher = {
        let n = n.clone();
        let alloc_id = alloc_id.clone();
        tokio::spawn(async move {
            let mut index = 0;
            loop {
                match n
                    .get::<NomadAlloc>(&["v1", "allocation", &alloc_id], Some(index))
                    .await
                {
                    Ok((a, idx)) => {
                        let dead = a
                            .task_states
                            .as_ref()
                            .and_then(|t| t.get(&n.task))
                            .is_some_and(|t| t.state == "dead");
                        if dead
                            || matches!(a.client_status.as_str(), "complete" | "failed" | "lost")
                        {
                            let _ = dead_tx.send(true);
                            return;
                        }
                        index = idx.max(index);
                    }
                    // Nomad unreachable even after retries: the log stream will say more.
                    Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
                }
            }
        })
    };
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _watcher = AbortOnDrop(watcher);
    let mut offset: u64 = 0;
    let mut partial: Vec<u8> = Vec::new();
    let mut exited = false;
    for _round in 0..20 {
        let u = n.url(
            &["v1", "client", "fs", "logs", &alloc_id],
            &[
                ("task", n.task.clone()),
                ("type", "stdout".into()),
                ("follow", "true".into()),
                ("origin", "start".into()),
                ("offset", offset.to_string()),
                ("plain", "true".into()),
            ],
        )?;
        let r = n
            .req(reqwest::Method::GET, u)
            .send()
            .await
            .map_err(|e| format!("following the task's log: {}", err_chain(&e)))?;
        if !r.status().is_success() {
            return Err(refusal("Nomad (logs)", r).await);
        }
        let mut body = r.bytes_stream();
        loop {
            let dead = *dead_rx.borrow();
            let chunk = tokio::select! {
                c = body.next() => c,
                _ = dead_rx.changed(), if !dead => continue,
                _ = tokio::time::sleep(LOG_QUIET), if dead => break,
            };
            let Some(Ok(chunk)) = chunk else { break };
            offset += chunk.len() as u64;
            partial.extend_from_slice(&chunk);
            while let Some(nl) = partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = partial.drain(..=nl).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                let f = edge_workers::decode::<FromWorker>(line).map_err(|e| e.to_string())?;
                exited |= matches!(f, FromWorker::Exit { .. });
                if tx.send(Ok(f)).await.is_err() {
                    return Ok(());
                }
            }
        }
        if exited {
            return Ok(());
        }
        // The stream ended without `exit`: has the task ended?
        let (a, _): (NomadAlloc, u64) = n.get(&["v1", "allocation", &alloc_id], None).await?;
        let task = a.task_states.as_ref().and_then(|t| t.get(&n.task));
        if a.client_status == "lost" {
            return Err(format!(
                "Nomad lost allocation {alloc_id}: {}",
                a.client_description
            ));
        }
        if let Some(t) = task.filter(|t| t.state == "dead") {
            // The worker died without its `exit` frame (killed, out of memory...): the end
            // as Nomad saw it.
            let term = t
                .events
                .iter()
                .flatten()
                .rev()
                .find(|e| e.kind == "Terminated");
            let (code, signal) = term.map_or((None, None), |e| {
                (Some(e.exit_code), (e.signal != 0).then_some(e.signal))
            });
            let why = t
                .events
                .iter()
                .flatten()
                .last()
                .map(|e| e.display_message.clone())
                .unwrap_or_default();
            let _ = tx
                .send(Ok(FromWorker::Out {
                    attempt_id: String::new(),
                    seq: 0,
                    fd: edge_workers::Fd::Stderr,
                    line: format!(
                        "nomad: the task ended without the worker's exit frame (failed: {}): {why}",
                        t.failed
                    ),
                }))
                .await;
            let _ = tx
                .send(Ok(FromWorker::Exit {
                    attempt_id: String::new(),
                    code,
                    signal,
                    reason: edge_workers::ExitReason::Exited,
                }))
                .await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("the log of allocation {alloc_id} kept breaking"))
}
