//! `edge register`: a project host that can reach the edge outbound, and nothing else, serves its
//! mounts at `https://<name>.<domain>/` through one authenticated, multiplexed session.
//!
//! - **Enrolment.** The operator mints a one-time token on the edge ([`Store::create_token`]);
//!   it carries a pin of the edge's tunnel identity (the SHA-256 of its public key), so the
//!   project host needs no CA to trust the edge. The host makes a key that never leaves it,
//!   sends a CSR with the token, and gets a short-lived client certificate bound to its name
//!   from the edge's own tunnel CA ([`Identity`]).
//! - **Session.** The host dials the edge (TLS over TCP, client certificate), says hello with
//!   its mounts, and the roles turn: the edge speaks HTTP/2 as the client, and every visitor
//!   connection is an HTTP/2 `CONNECT` stream that the host joins to its local upstream. HTTP/2
//!   brings flow control per stream and PING keepalives both ways; the edge's gateway speaks
//!   HTTP/1.1 over each stream exactly as to a local upstream, so WebSockets, SSE and uploads
//!   work unchanged.
//! - **Renewal** of the client certificate runs over the live session, asked by the edge.

mod client;
mod identity;
mod proto;
mod quic;
mod server;
mod store;

pub use client::{connect, deregister, enrol, ClientState, Enrolment, LocalRoute, Transport};
pub use identity::Identity;
pub use quic::QuicIo;
pub use server::{Hooks, SessionInfo, TunnelServer, TunnelSettings, TunnelStream};
pub use store::{check_name, Registration, Store, BUILT_IN_RESERVED};

/// Errors of this crate, each naming what it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Certs(#[from] edge_certs::Error),
    #[error("{0}")]
    Msg(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// SHA-256, base64url without padding.
pub(crate) fn sha256_b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// `n` random bytes from the system's generator.
pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    use ring::rand::SecureRandom as _;
    let mut b = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random generator");
    b
}

/// Now, as Unix seconds.
pub(crate) fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
