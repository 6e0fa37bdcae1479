//! The errors of the certificate crate.

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
    /// The ACME CA, or talking to it, failed: what edge was doing, and the CA's words (its
    /// problem document) where it gave some.
    #[error("acme: {0}")]
    Acme(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
