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
    /// The CA refused for now and said when to come back (`Retry-After`, with a `rateLimited`
    /// problem or a 503).
    #[error("acme: {message} (the CA asks to wait until {until})")]
    AcmeRetryAfter {
        message: String,
        until: time::OffsetDateTime,
    },
}

impl Error {
    /// When the CA asked edge to come back, if it did.
    pub fn retry_after(&self) -> Option<time::OffsetDateTime> {
        match self {
            Error::AcmeRetryAfter { until, .. } => Some(*until),
            _ => None,
        }
    }

    /// Whether the CA no longer knows the account (a test CA restarted, an account
    /// deactivated): a new one must be made.
    pub fn account_gone(&self) -> bool {
        let m = match self {
            Error::Acme(m) | Error::AcmeRetryAfter { message: m, .. } => m,
            _ => return false,
        };
        m.contains("accountDoesNotExist")
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
