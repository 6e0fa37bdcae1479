//! `issuer = "files"`: a chain and key the operator provides (from another ACME client, a
//! corporate CA...). edge reads them, checks them and watches them; it never writes them.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use time::OffsetDateTime;
use x509_parser::pem::Pem;

use crate::{CertFiles, Error, Result};

/// A provided pair of files, and the modification times they had when last read, so a
/// change on disk is noticed ([`ProvidedFiles::changed`]).
#[derive(Debug, Clone)]
pub struct ProvidedFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    seen: Option<(SystemTime, SystemTime)>,
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::BadFile {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn mtime(path: &Path) -> Result<SystemTime> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
}

impl ProvidedFiles {
    pub fn new(cert_file: PathBuf, key_file: PathBuf) -> ProvidedFiles {
        ProvidedFiles {
            cert_file,
            key_file,
            seen: None,
        }
    }

    /// Whether either file changed since the last [`ProvidedFiles::load`] (or was never read).
    pub fn changed(&self) -> bool {
        match (self.seen, mtime(&self.cert_file), mtime(&self.key_file)) {
            (Some((c, k)), Ok(c2), Ok(k2)) => c != c2 || k != k2,
            _ => true,
        }
    }

    /// Reads and checks the pair: the chain parses and covers `names`, has not expired, and
    /// its leaf's public key is the key's; the key file is readable by its owner only.
    pub fn load(&mut self, names: &[String]) -> Result<CertFiles> {
        let seen = (mtime(&self.cert_file)?, mtime(&self.key_file)?);
        let files = check_pair(&self.cert_file, &self.key_file, names)?;
        self.seen = Some(seen);
        Ok(files)
    }
}

/// See [`ProvidedFiles::load`].
pub fn check_pair(cert_file: &Path, key_file: &Path, names: &[String]) -> Result<CertFiles> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| Error::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key_file)
            .map_err(|source| Error::Io {
                path: key_file.to_path_buf(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(bad(
                key_file,
                format!(
                    "the private key is readable by others (mode {:o}): chmod 600 it",
                    mode & 0o777
                ),
            ));
        }
    }
    let chain_pem = read(cert_file)?;
    let key_pem = read(key_file)?;
    let first = Pem::iter_from_buffer(chain_pem.as_bytes())
        .next()
        .ok_or_else(|| bad(cert_file, "no certificate in the PEM"))?
        .map_err(|e| bad(cert_file, format!("not PEM: {e}")))?;
    let leaf = first
        .parse_x509()
        .map_err(|e| bad(cert_file, format!("not a certificate: {e}")))?;
    let key = rcgen::KeyPair::from_pem(&key_pem)
        .map_err(|e| bad(key_file, format!("not a private key edge can use: {e}")))?;
    if leaf.public_key().raw != key.public_key_der().as_slice() {
        return Err(bad(
            key_file,
            format!(
                "this key does not belong to the certificate in {}",
                cert_file.display()
            ),
        ));
    }
    let parsed = crate::store::parse_leaf(cert_file, &chain_pem)?;
    if parsed.not_after <= OffsetDateTime::now_utc() {
        return Err(bad(
            cert_file,
            format!("the certificate expired at {}", parsed.not_after),
        ));
    }
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !crate::store::covers(&parsed.names, n))
        .collect();
    if !missing.is_empty() {
        return Err(bad(
            cert_file,
            format!(
                "the certificate does not cover {missing:?} (it names {:?})",
                parsed.names
            ),
        ));
    }
    Ok(CertFiles {
        chain_pem,
        key_pem,
        chain_path: cert_file.to_path_buf(),
        not_before: parsed.not_before,
        not_after: parsed.not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalCa;

    fn write(dir: &Path, chain: &str, key: &str, mode: u32) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let (c, k) = (dir.join("fullchain.pem"), dir.join("key.pem"));
        std::fs::write(&c, chain).unwrap();
        std::fs::write(&k, key).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(mode)).unwrap();
        (c, k)
    }

    #[test]
    fn provided_files_are_checked_and_their_changes_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path(), "example.test").unwrap();
        let names = crate::project_names("demo", "example.test");
        let (chain, key) = ca.issue(&names).unwrap();
        let (c, k) = write(dir.path(), &chain, &key, 0o600);
        let mut f = ProvidedFiles::new(c.clone(), k.clone());
        assert!(f.changed());
        let got = f.load(&names).unwrap();
        assert_eq!(got.chain_pem, chain);
        assert!(!f.changed());
        // Names the certificate does not cover.
        let e = f.load(&["other.example.test".to_string()]).unwrap_err();
        assert!(e.to_string().contains("does not cover"), "{e}");
        // A key that is not the certificate's.
        let (_, other_key) = ca.issue(&names).unwrap();
        write(dir.path(), &chain, &other_key, 0o600);
        let e = f.load(&names).unwrap_err();
        assert!(e.to_string().contains("does not belong"), "{e}");
        // A key anyone can read.
        write(dir.path(), &chain, &key, 0o644);
        let e = f.load(&names).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        // Nothing here ever writes them.
        write(dir.path(), &chain, &key, 0o600);
        f.load(&names).unwrap();
        assert_eq!(std::fs::read_to_string(&c).unwrap(), chain);
    }
}
