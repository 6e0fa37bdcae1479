//! Certificates for edge: a local certificate authority that edge creates in its state directory
//! and the wildcard certificates it issues per project (`<project>.<domain>` and
//! `*.<project>.<domain>`: CAs do not issue `*.*.<domain>`, so each project gets its own).
//!
//! Files are written atomically (write, fsync, rename, fsync the directory); private keys are
//! created with mode 0600. ACME (DNS-01 wildcards from a public CA) will be a second issuer beside
//! [`LocalCa`], writing to the same [`Store`] layout.

mod error;
mod fsutil;
mod local_ca;
mod store;

pub use error::{Error, Result};
pub use fsutil::write_atomic;
pub use local_ca::LocalCa;
pub use store::{local_project_certs, project_names, CertFiles, Store};
