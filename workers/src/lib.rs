//! Workers: the protocol between the chat's orchestrator and a worker, and the worker itself
//! (`edge worker --stdio`), which runs one agent attempt at a time in its own process group and
//! streams its output back as frames.
//!
//! The same frames travel over a pipe (`--stdio`: local, and SSH as a forced command), over
//! HTTP (`--listen`: `POST /work` streams them as NDJSON, see [`http`]) and out of a Nomad task
//! (`--oneshot FILE`: NDJSON on stdout). The orchestrator's side of every transport is
//! [`outposts`]: both ends of the protocol live in this crate.

mod files;
pub mod http;
pub mod outposts;
mod protocol;
mod worker;

pub use files::write_private;
pub use protocol::{
    decode, encode, ErrorCode, ExitReason, Fd, FrameError, FrameReader, FrameWriter, FromWorker,
    NoticeKind, ToWorker, MAX_FRAME, VERSION,
};
pub use worker::{hello_reply, oneshot, refusal, serve, Attempt, Canceller, MAX_LINE};
