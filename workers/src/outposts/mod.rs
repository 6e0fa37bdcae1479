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
//! Each is a [`Transport`] (hello; open an attempt → a [`Link`]; whether it carries the agent's
//! input; whether it keeps sessions; close), and every link gives the same thing: a sink for
//! frames to the worker (the run, cancel, the agent's input), a stream of its frames, and a
//! wind-down to await at the end. One module per transport ([`command`], [`http`],
//! [`nomad`]); [`config`] makes them from a config's `[[outposts]]`; [`stream_link`] makes a
//! link over any byte stream (a test's in-memory worker). The worker side of the
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

pub use self::command::CommandTarget;
use self::command::*;
use self::http::*;

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

/// How an outpost is reached: one implementation per transport ([`CommandTarget`]: a local
/// worker or SSH; [`HttpTarget`]; [`NomadTarget`]), or any other (a test's in-memory worker,
/// see [`stream_link`]). Every one gives the same [`Link`] per attempt.
pub trait Transport: std::fmt::Debug + Send + Sync {
    /// Says hello to the worker (`edge workers --probe`): who it is, whether it is busy.
    fn hello(&self) -> BoxFuture<'_, Result<Hello, String>>;
    /// Hands the worker one attempt (a `run` frame). An error means the attempt never started
    /// there (the outpost is skipped).
    fn open<'a>(&'a self, run: &'a ToWorker) -> BoxFuture<'a, Result<Link, String>>;
    /// Whether lines can reach a running agent's stdin this way (`keep_stdin`: answers to
    /// Claude Code's permission questions).
    fn carries_input(&self) -> bool {
        true
    }
    /// Whether the host keeps the agent's home between attempts, so a session can be resumed
    /// there.
    fn keeps_sessions(&self) -> bool {
        true
    }
    /// Ends what the transport keeps open between runs (an SSH multiplexing master).
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// What makes two outposts the same one (a config reload keeps an unchanged outpost).
    fn identity(&self) -> String;
}

/// A boxed future, as [`Transport`]'s methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// How an outpost is reached (shared by its runs).
pub type Via = std::sync::Arc<dyn Transport>;

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
pub type WindDown = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

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
    via.hello().await
}

/// Ends what an outpost keeps open between runs. Bounded to 2 s.
pub async fn close(via: &Via) {
    let _ = tokio::time::timeout(Duration::from_secs(2), via.close()).await;
}

/// A link over any byte stream speaking the protocol (length-prefixed frames: a worker's stdin and
/// stdout, an in-memory duplex): frames to the worker go through a task that writes them in
/// order, and dropping the link's sender closes the writer. `finish` is the link's wind-down.
pub fn stream_link<R, W>(r: R, w: W, finish: WindDown) -> Link
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    frames_link(FrameReader::new(r), FrameWriter::new(w), finish)
}

/// [`stream_link`] with the reader and writer already made (what was read into the reader's
/// buffer after the hello stays there).
pub(super) fn frames_link<R, W>(
    r: FrameReader<R, FromWorker>,
    mut w: FrameWriter<W, ToWorker>,
    finish: WindDown,
) -> Link
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (to, mut rx) = mpsc::unbounded_channel::<ToWorker>();
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
    Link { to, from, finish }
}

/// An outpost: where runs go, how they get there, and how many at once.
#[derive(Debug, Clone)]
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
            via: std::sync::Arc::new(CommandTarget { argv: worker }),
            capacity: u64::MAX,
        }
    }
}

impl PartialEq for Outpost {
    fn eq(&self, o: &Outpost) -> bool {
        self.name == o.name
            && self.capacity == o.capacity
            && self.via.identity() == o.via.identity()
    }
}
