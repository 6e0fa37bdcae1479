//! The worker protocol: JSON frames, each prefixed by its length (4 bytes, big-endian), at most
//! [`MAX_FRAME`] bytes. The same frames travel over a pipe to `edge worker --stdio`, over SSH
//! (the worker as an OpenSSH forced command) and, later, over HTTP. Every frame carries
//! `"v":1` and its type in `"t"`.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

/// The largest frame either side accepts (a longer output line is sent in pieces).
pub const MAX_FRAME: usize = 1024 * 1024;
/// The protocol version.
pub const VERSION: u32 = 1;

/// Orchestrator → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ToWorker {
    Hello {
        proto: u32,
    },
    /// Start one attempt: run `argv` (no shell) in `cwd`, in its own process group.
    Run {
        attempt_id: String,
        run_id: String,
        argv: Vec<String>,
        #[serde(default)]
        cwd: Option<String>,
        /// Added to the worker's small base environment (PATH, HOME, LANG).
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// Written to the agent's stdin, which is then closed.
        #[serde(default)]
        stdin: Option<String>,
        /// Wall-clock limit (seconds since the epoch); the worker enforces it.
        #[serde(default)]
        deadline_unix: Option<u64>,
        /// Keep the agent's stdin open after `stdin` (lines follow as `stdin` frames, until
        /// `stdin_close`): Claude Code's `--input-format stream-json`, whose tool permission
        /// questions are answered there.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keep_stdin: bool,
        /// Confine the agent with this sandbox profile (`edge sandbox exec`); a run whose
        /// required layer the worker's host cannot enforce does not start.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sandbox: Option<Box<edge_sandbox::Confine>>,
    },
    /// Stop the attempt: SIGINT (the agent's interrupt), then SIGTERM, then SIGKILL to its
    /// process group, `grace_ms` apart in total.
    Cancel {
        attempt_id: String,
        grace_ms: u64,
    },
    /// A line for the agent's stdin (a newline is added), for a run with `keep_stdin`.
    Stdin {
        attempt_id: String,
        line: String,
    },
    /// Closes the agent's stdin (end of input: Claude Code then ends after its turn).
    StdinClose {
        attempt_id: String,
    },
    Ping {
        ts: u64,
    },
}

/// Why an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    Exited,
    Cancelled,
    Timeout,
}

/// Worker → orchestrator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum FromWorker {
    HelloOk {
        worker: String,
        version: String,
        busy: bool,
        /// The least confinement this worker accepts (`edge worker --floor`), if it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        floor: Option<Box<edge_sandbox::Floor>>,
    },
    /// One attempt at a time: this one was not started.
    Busy {
        attempt_id: String,
    },
    Started {
        attempt_id: String,
        pid: u32,
    },
    /// A line of the agent's output (without its newline), numbered from 1 per attempt.
    Out {
        attempt_id: String,
        seq: u64,
        fd: Fd,
        line: String,
    },
    /// Exactly once per started attempt.
    /// Numbered with the output (`seq`), so it stays in order with it.
    Notice {
        attempt_id: String,
        seq: u64,
        kind: NoticeKind,
        detail: String,
    },
    Exit {
        attempt_id: String,
        code: Option<i32>,
        signal: Option<i32>,
        reason: ExitReason,
    },
    /// `code`: `protocol` (a bad frame or version), `spawn` (the agent could not start),
    /// `sandbox` (a required layer is unavailable, or the run cannot be set up), `policy`
    /// (the worker's floor refused the run). For the last three, nothing ran and `exit`
    /// follows.
    Error {
        attempt_id: Option<String>,
        code: ErrorCode,
        msg: String,
    },
    Pong {
        ts: u64,
    },
}

/// What the worker saw of a run that is not the agent's output (`notice` frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// The sandbox's egress proxy refused a connection (`detail`: which, and why).
    EgressDenied,
    /// The kernel killed the run for going past its memory limit.
    MemoryLimit,
    /// A kind this side does not know (a newer worker).
    #[serde(other)]
    Other,
}

/// Why a worker could not do what it was asked (`error` frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The sandbox could not confine the agent (a required layer missing): nothing ran.
    Sandbox,
    /// The agent's program could not be started.
    Spawn,
    /// The worker's floor refused the run's profile: nothing ran; another outpost may take it.
    Policy,
    /// A frame the worker could not read.
    Protocol,
    /// A code this side does not know (a newer worker).
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// The agent never started: the error is the attempt's whole story.
    pub fn refused(self) -> bool {
        matches!(
            self,
            ErrorCode::Sandbox | ErrorCode::Spawn | ErrorCode::Policy
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fd {
    Stdout,
    Stderr,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("reading a frame: {0}")]
    Io(#[from] std::io::Error),
    #[error("a frame is not valid JSON of this protocol: {0}")]
    Json(#[from] serde_json::Error),
    #[error("protocol version {0} is not supported (this worker speaks {VERSION})")]
    Version(u64),
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// Reads frames of type `T`.
#[derive(Debug)]
pub struct FrameReader<R, T> {
    inner: FramedRead<R, LengthDelimitedCodec>,
    _t: std::marker::PhantomData<T>,
}

impl<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>> FrameReader<R, T> {
    pub fn new(r: R) -> Self {
        FrameReader {
            inner: FramedRead::new(r, codec()),
            _t: std::marker::PhantomData,
        }
    }

    /// The next frame; `None` when the other side closed.
    pub async fn next(&mut self) -> Option<Result<T, FrameError>> {
        let bytes = match self.inner.next().await? {
            Ok(b) => b,
            Err(e) => return Some(Err(e.into())),
        };
        Some(decode(&bytes))
    }
}

/// Decodes one frame (JSON with `"v":1`), without the length prefix.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, FrameError> {
    let v: serde_json::Value = serde_json::from_slice(bytes)?;
    match v.get("v").and_then(|v| v.as_u64()) {
        Some(1) => {}
        Some(other) => return Err(FrameError::Version(other)),
        None => return Err(FrameError::Version(0)),
    }
    Ok(serde_json::from_value(v)?)
}

/// Encodes one frame as JSON with its version (`"v":1`), without the length prefix.
pub fn encode<T: Serialize>(frame: &T) -> std::io::Result<Vec<u8>> {
    let mut v = serde_json::to_value(frame).map_err(std::io::Error::other)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("v".into(), VERSION.into());
    }
    serde_json::to_vec(&v).map_err(std::io::Error::other)
}

/// Writes frames of type `T`.
#[derive(Debug)]
pub struct FrameWriter<W, T> {
    inner: FramedWrite<W, LengthDelimitedCodec>,
    _t: std::marker::PhantomData<T>,
}

impl<W: AsyncWrite + Unpin, T: Serialize> FrameWriter<W, T> {
    pub fn new(w: W) -> Self {
        FrameWriter {
            inner: FramedWrite::new(w, codec()),
            _t: std::marker::PhantomData,
        }
    }

    pub async fn send(&mut self, frame: &T) -> std::io::Result<()> {
        self.inner.send(Bytes::from(encode(frame)?)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_with_their_version() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut w = FrameWriter::<_, ToWorker>::new(a);
        let mut r = FrameReader::<_, ToWorker>::new(b);
        let f = ToWorker::Cancel {
            attempt_id: "a1".into(),
            grace_ms: 10,
        };
        w.send(&f).await.unwrap();
        assert_eq!(r.next().await.unwrap().unwrap(), f);
        drop(w);
        assert!(r.next().await.is_none());
    }

    #[test]
    fn bad_frames_say_why() {
        let e = decode::<ToWorker>(br#"{"v":2,"t":"ping","ts":1}"#).unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
        let e = decode::<ToWorker>(br#"{"t":"ping","ts":1}"#).unwrap_err();
        assert!(e.to_string().contains("version 0"), "{e}");
        let e = decode::<ToWorker>(br#"{"v":1,"t":"launch"}"#).unwrap_err();
        assert!(e.to_string().contains("launch"), "{e}");
        assert!(decode::<ToWorker>(br#"{"v":1,"t":"ping","ts":7}"#).is_ok());
    }
}
