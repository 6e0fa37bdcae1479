//! Workers: the protocol between the chat's orchestrator and a worker, and the worker itself
//! (`edge worker --stdio`), which runs one agent attempt at a time in its own process group and
//! streams its output back as frames.
//!
//! Built so far: the frames, and the local worker over any byte stream (a pipe, and so also an
//! SSH forced command). Not yet: the orchestrator side, `--listen` (HTTP), `--oneshot` (Nomad),
//! outposts, and the sandbox around the agent.

mod protocol;
mod worker;

pub use protocol::{
    ExitReason, Fd, FrameError, FrameReader, FrameWriter, FromWorker, ToWorker, MAX_FRAME, VERSION,
};
pub use worker::{serve, EGRESS_PREFIX, MAX_LINE};
