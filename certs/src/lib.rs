//! Certificates for edge: a local certificate authority that edge creates in its state directory
//! and the wildcard certificates it issues per project (`<project>.<domain>` and
//! `*.<project>.<domain>`: CAs do not issue `*.*.<domain>`, so each project gets its own).
//!
//! Files are written atomically (write, fsync, rename, fsync the directory); private keys are
//! created with mode 0600. Beside [`LocalCa`], an ACME CA ([`AcmeClient`], HTTP-01 for now) and
//! files the operator provides ([`ProvidedFiles`], read and watched, never written).

mod acme;
mod acme_http;
mod dns;
mod error;
mod files;
mod fsutil;
mod local_ca;
mod store;

pub use acme::{account_path, AcmeClient, Http01Answers, RenewalWindow};
pub use error::{Error, Result};
pub use files::{check_pair, ProvidedFiles};
pub use fsutil::write_atomic;
pub use local_ca::LocalCa;
pub use store::{inspect, local_project_certs, project_names, CertFiles, CertInfo, Store};
