//! The on-disk certificate store: `<state_dir>/certs/<name>/{fullchain.pem,key.pem}`.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

use crate::fsutil::write_atomic;
use crate::local_ca::{LocalCa, LEAF_LIFETIME};
use crate::{Error, Result};

/// The names a project's certificate covers: its apex and every host below it.
///
/// ```
/// assert_eq!(
///     edge_certs::project_names("demo", "example.test"),
///     ["demo.example.test", "*.demo.example.test"]
/// );
/// ```
pub fn project_names(project: &str, domain: &str) -> Vec<String> {
    vec![
        format!("{project}.{domain}"),
        format!("*.{project}.{domain}"),
    ]
}

/// Every project's certificate from the local CA for `domain` under `state_dir` (created on
/// first use), issued or renewed as [`Store::get_or_issue`] decides; with each project's host
/// (`<project>.<domain>`) and the CA.
pub fn local_project_certs<'a>(
    state_dir: &Path,
    domain: &str,
    projects: impl IntoIterator<Item = &'a str>,
) -> Result<(LocalCa, Vec<(String, CertFiles)>)> {
    let ca = LocalCa::load_or_create(state_dir, domain)?;
    let store = Store::new(state_dir);
    let mut out = Vec::new();
    for p in projects {
        let files = store.get_or_issue(p, &project_names(p, domain), &ca)?;
        out.push((format!("{p}.{domain}"), files));
    }
    Ok((ca, out))
}

/// A certificate and key as PEM text, with where they live.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub chain_pem: String,
    pub key_pem: String,
    pub chain_path: PathBuf,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl CertFiles {
    /// Whether it is time to renew: a third of its lifetime or less is left (as Let's Encrypt
    /// advises for 90-day certificates, and in proportion for short-lived ones).
    pub fn due(&self, now: OffsetDateTime) -> bool {
        let lifetime = self.not_after - self.not_before;
        self.not_after - now <= lifetime / 3
    }
}

#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
}

pub(crate) struct Parsed {
    pub(crate) names: Vec<String>,
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
}

/// What a certificate chain's leaf says, for `edge certs` and metrics.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub names: Vec<String>,
    /// The issuer's distinguished name.
    pub issuer: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// Reads the leaf of a PEM chain.
pub fn inspect(chain_pem: &str) -> Result<CertInfo> {
    let p = parse_leaf(Path::new("(chain)"), chain_pem)?;
    let issuer = parse_x509_pem(chain_pem.as_bytes())
        .ok()
        .and_then(|(_, pem)| pem.parse_x509().ok().map(|c| c.issuer().to_string()))
        .unwrap_or_default();
    Ok(CertInfo {
        names: p.names,
        issuer,
        not_before: p.not_before,
        not_after: p.not_after,
    })
}

/// Whether a certificate naming `sans` is valid for `name`: named exactly, or one label under
/// a `*.` name (RFC 6125 §6.4.3).
pub(crate) fn covers(sans: &[String], name: &str) -> bool {
    sans.iter().any(|s| {
        s.eq_ignore_ascii_case(name)
            || s.strip_prefix("*.").is_some_and(|parent| {
                !name.starts_with("*.")
                    && name
                        .split_once('.')
                        .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(parent))
            })
    })
}

pub(crate) fn parse_leaf(path: &Path, pem_text: &str) -> Result<Parsed> {
    let bad = |m: String| Error::BadFile {
        path: path.to_path_buf(),
        message: m,
    };
    let (_, pem) = parse_x509_pem(pem_text.as_bytes()).map_err(|e| bad(format!("not PEM: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| bad(format!("not a certificate: {e}")))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
        .map_err(|e| bad(format!("bad expiry: {e}")))?;
    let not_before = OffsetDateTime::from_unix_timestamp(cert.validity().not_before.timestamp())
        .map_err(|e| bad(format!("bad start: {e}")))?;
    Ok(Parsed {
        names,
        not_before,
        not_after,
    })
}

impl Store {
    pub fn new(state_dir: &Path) -> Store {
        Store {
            dir: state_dir.join("certs"),
        }
    }

    /// The store of certificates from an ACME CA: `<state_dir>/certs/acme/<name>/`, apart from
    /// the local CA's, so neither issuer ever replaces the other's files.
    pub fn acme(state_dir: &Path) -> Store {
        Store {
            dir: state_dir.join("certs").join("acme"),
        }
    }

    /// The certificate stored under `name`, if it parses and covers `names` (expired or not:
    /// see [`CertFiles::due`]).
    pub fn load(&self, name: &str, names: &[String]) -> Option<CertFiles> {
        let dir = self.dir.join(name);
        let chain_path = dir.join("fullchain.pem");
        let chain_pem = std::fs::read_to_string(&chain_path).ok()?;
        let key_pem = std::fs::read_to_string(dir.join("key.pem")).ok()?;
        let p = match parse_leaf(&chain_path, &chain_pem) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable stored certificate");
                return None;
            }
        };
        if !names.iter().all(|n| covers(&p.names, n)) {
            return None;
        }
        Some(CertFiles {
            chain_pem,
            key_pem,
            chain_path,
            not_before: p.not_before,
            not_after: p.not_after,
        })
    }

    /// Stores a chain and its key under `name`, atomically (key first: the chain is what marks
    /// the pair usable).
    pub fn save(&self, name: &str, chain_pem: &str, key_pem: &str) -> Result<CertFiles> {
        let dir = self.dir.join(name);
        let chain_path = dir.join("fullchain.pem");
        let p = parse_leaf(&chain_path, chain_pem)?;
        write_atomic(&dir.join("key.pem"), key_pem.as_bytes(), 0o600)?;
        write_atomic(&chain_path, chain_pem.as_bytes(), 0o644)?;
        Ok(CertFiles {
            chain_pem: chain_pem.to_string(),
            key_pem: key_pem.to_string(),
            chain_path,
            not_before: p.not_before,
            not_after: p.not_after,
        })
    }

    /// The certificate stored under `name` if it covers `names` and has more than a third of a
    /// leaf's lifetime left; otherwise a new one from `ca`, stored before it is returned.
    pub fn get_or_issue(&self, name: &str, names: &[String], ca: &LocalCa) -> Result<CertFiles> {
        let dir = self.dir.join(name);
        let chain_path = dir.join("fullchain.pem");
        let key_path = dir.join("key.pem");
        if let (Ok(chain_pem), Ok(key_pem)) = (
            std::fs::read_to_string(&chain_path),
            std::fs::read_to_string(&key_path),
        ) {
            match parse_leaf(&chain_path, &chain_pem) {
                Ok(p) => {
                    let fresh = p.not_after - OffsetDateTime::now_utc() > LEAF_LIFETIME / 3;
                    let covers = names.iter().all(|n| p.names.contains(n));
                    // Issued by this CA? The chain we wrote ends with the CA's certificate.
                    let ours = chain_pem.ends_with(ca.cert_pem());
                    if fresh && covers && ours {
                        return Ok(CertFiles {
                            chain_pem,
                            key_pem,
                            chain_path,
                            not_before: p.not_before,
                            not_after: p.not_after,
                        });
                    }
                    tracing::info!(cert = name, fresh, covers, ours, "re-issuing certificate");
                }
                Err(e) => tracing::warn!(error = %e, "re-issuing an unreadable certificate"),
            }
        }
        let (chain_pem, key_pem) = ca.issue(names)?;
        // Key first, then the chain that refers to it: the chain is what marks the pair usable.
        write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
        write_atomic(&chain_path, chain_pem.as_bytes(), 0o644)?;
        let p = parse_leaf(&chain_path, &chain_pem)?;
        tracing::info!(cert = name, ?names, "issued certificate from the local CA");
        Ok(CertFiles {
            chain_pem,
            key_pem,
            chain_path,
            not_before: p.not_before,
            not_after: p.not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_once_then_reuses_and_reissues_when_names_change() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path(), "example.test").unwrap();
        let store = Store::new(dir.path());
        let names = project_names("demo", "example.test");
        let a = store.get_or_issue("demo", &names, &ca).unwrap();
        let b = store.get_or_issue("demo", &names, &ca).unwrap();
        assert_eq!(a.chain_pem, b.chain_pem, "a fresh certificate is reused");
        let more = vec![
            names[0].clone(),
            names[1].clone(),
            "extra.example.test".into(),
        ];
        let c = store.get_or_issue("demo", &more, &ca).unwrap();
        assert_ne!(
            a.chain_pem, c.chain_pem,
            "a certificate missing a name is re-issued"
        );
        let p = parse_leaf(&c.chain_path, &c.chain_pem).unwrap();
        assert_eq!(p.names, more);
        assert!(p.not_after > OffsetDateTime::now_utc() + time::Duration::days(80));
    }

    #[test]
    fn a_certificate_near_its_expiry_is_reissued() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path(), "example.test").unwrap();
        let store = Store::new(dir.path());
        let names = project_names("demo", "example.test");
        // Plant a leaf from the same CA that expires in 10 days (under a third of 90).
        let (chain, key) = ca
            .issue_with_lifetime(&names, time::Duration::days(10))
            .unwrap();
        let d = dir.path().join("certs/demo");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("fullchain.pem"), &chain).unwrap();
        std::fs::write(d.join("key.pem"), &key).unwrap();
        let got = store.get_or_issue("demo", &names, &ca).unwrap();
        assert_ne!(
            got.chain_pem, chain,
            "an expiring certificate must be replaced"
        );
        assert!(got.not_after > OffsetDateTime::now_utc() + time::Duration::days(80));
    }

    #[test]
    fn ca_survives_restart_and_a_new_ca_means_new_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let ca1 = LocalCa::load_or_create(dir.path(), "example.test").unwrap();
        let ca2 = LocalCa::load_or_create(dir.path(), "example.test").unwrap();
        assert_eq!(ca1.cert_pem(), ca2.cert_pem());
        let store = Store::new(dir.path());
        let names = project_names("demo", "example.test");
        let a = store.get_or_issue("demo", &names, &ca1).unwrap();
        std::fs::remove_dir_all(dir.path().join("ca")).unwrap();
        let ca3 = LocalCa::load_or_create(dir.path(), "example.test").unwrap();
        assert_ne!(ca1.cert_pem(), ca3.cert_pem());
        let b = store.get_or_issue("demo", &names, &ca3).unwrap();
        assert_ne!(
            a.chain_pem, b.chain_pem,
            "leaves of a replaced CA are re-issued"
        );
    }
}
