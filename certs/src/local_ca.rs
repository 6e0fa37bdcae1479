//! A local certificate authority for development and private deployments. Its certificate is
//! name-constrained to the one domain it serves, so trusting it cannot let anyone who steals its
//! key impersonate other sites.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose, NameConstraints,
};
use time::{Duration, OffsetDateTime};

use crate::fsutil::write_atomic;
use crate::{Error, Result};

/// How long issued leaf certificates live; they are renewed when less than a third is left.
pub(crate) const LEAF_LIFETIME: Duration = Duration::days(90);
const CA_LIFETIME: Duration = Duration::days(3650);

/// The CA: its key, and its certificate as trusted by browsers (`ca.pem`).
pub struct LocalCa {
    dir: PathBuf,
    key: KeyPair,
    /// Re-created from `ca.pem`'s parameters and key: same subject and key, so leaves it signs
    /// chain to the `ca.pem` users trust.
    cert: Certificate,
    cert_pem: String,
    /// Made by this call (not read from the state directory).
    created: bool,
}

fn bad(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::BadFile {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("LocalCa")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// Loads the CA for `domain` from `<state_dir>/ca/<domain>/`, creating it on first use.
    pub fn load_or_create(state_dir: &Path, domain: &str) -> Result<LocalCa> {
        let dir = state_dir.join("ca").join(domain);
        let key_path = dir.join("ca-key.pem");
        let cert_path = dir.join("ca.pem");
        if key_path.exists() && cert_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path).map_err(|source| Error::Io {
                path: key_path.clone(),
                source,
            })?;
            let cert_pem = std::fs::read_to_string(&cert_path).map_err(|source| Error::Io {
                path: cert_path.clone(),
                source,
            })?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(&key_path, e))?;
            let params =
                CertificateParams::from_ca_cert_pem(&cert_pem).map_err(|e| bad(&cert_path, e))?;
            let cert = params.self_signed(&key).map_err(|e| bad(&cert_path, e))?;
            return Ok(LocalCa {
                dir,
                key,
                cert,
                cert_pem,
                created: false,
            });
        }
        let issue_err = |source| Error::Issue {
            names: vec![format!("edge local CA for {domain}")],
            source,
        };
        let key = KeyPair::generate().map_err(issue_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("edge local CA for {domain}"));
        dn.push(DnType::OrganizationName, "edge");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName(domain.to_string())],
            excluded_subtrees: vec![],
        });
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + CA_LIFETIME;
        let cert = params.self_signed(&key).map_err(issue_err)?;
        let cert_pem = cert.pem();
        // Key first: a crash between the two writes leaves no ca.pem, so the next start makes a
        // fresh pair instead of pairing a new certificate with a lost key.
        write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)?;
        tracing::info!(path = %cert_path.display(), "created a local CA");
        Ok(LocalCa {
            dir,
            key,
            cert,
            cert_pem,
            created: true,
        })
    }

    /// Whether this CA was just made, rather than read from the state directory: browsers that
    /// trusted an earlier one (another state directory) will warn until this one is trusted.
    pub fn created(&self) -> bool {
        self.created
    }

    /// The CA certificate users add to their trust store.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a server certificate for `names`; returns (chain PEM: leaf then CA, key PEM).
    pub fn issue(&self, names: &[String]) -> Result<(String, String)> {
        self.issue_with_lifetime(names, LEAF_LIFETIME)
    }

    /// [`LocalCa::issue`] with another lifetime (tests of renewal).
    pub fn issue_with_lifetime(
        &self,
        names: &[String],
        lifetime: Duration,
    ) -> Result<(String, String)> {
        let issue_err = |source| Error::Issue {
            names: names.to_vec(),
            source,
        };
        let key = KeyPair::generate().map_err(issue_err)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(issue_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + lifetime;
        let leaf = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(issue_err)?;
        Ok((
            format!("{}{}", leaf.pem(), self.cert_pem),
            key.serialize_pem(),
        ))
    }
}
