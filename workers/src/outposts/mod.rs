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
//! and a wind-down to await at the end. One module per transport ([`command`], [`http`],
//! [`nomad`]); [`config`] makes them from a config's `[[outposts]]`. The worker side of the
//! same protocol is [`crate::worker`] and [`crate::http`] (`edge worker --listen`).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::{FrameReader, FrameWriter, FromWorker, ToWorker};
use futures_util::{Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

mod command;
pub mod config;
mod http;
mod nomad;

use self::command::*;
use self::http::*;
use self::nomad::*;

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

impl Via {
    /// Whether lines can reach a running agent's stdin this way (`keep_stdin`: answers to
    /// Claude Code's permission questions). A Nomad dispatch's payload is all the input its
    /// task gets.
    pub fn carries_input(&self) -> bool {
        !matches!(self, Via::Nomad(_))
    }
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

/// An outpost: where runs go, how they get there, and how many at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Outpost {
    pub name: String,
    pub via: Via,
    pub capacity: u64,
}

impl Outpost {
    /// A local outpost: `worker` (the binary's own worker command) as a child process.
    pub fn local(worker: Vec<String>) -> Outpost {
        Outpost {
            name: "local".into(),
            via: Via::Command(worker),
            capacity: u64::MAX,
        }
    }
}
