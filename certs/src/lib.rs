//! Certificates for edge: a local certificate authority that edge creates in its state directory
//! and the wildcard certificates it issues per project (`<project>.<domain>` and
//! `*.<project>.<domain>`: CAs do not issue `*.*.<domain>`, so each project gets its own).
//!
//! Files are written atomically (write, fsync, rename, fsync the directory); private keys are
//! created with mode 0600. ACME (DNS-01 wildcards from a public CA) will be a second issuer beside
//! [`LocalCa`], writing to the same [`Store`] layout.

mod fsutil;
mod local_ca;
mod store;

pub use fsutil::write_atomic;
pub use local_ca::LocalCa;
pub use store::{project_names, CertFiles, Store};

/// Errors of this crate; each names the file or value involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    BadFile {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("issuing a certificate for {names:?}: {source}")]
    Issue {
        names: Vec<String>,
        source: rcgen::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
