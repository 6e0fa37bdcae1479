//! The edge's tunnel identity and its tunnel CA, kept in `state_dir/register/`: a server key
//! and certificate that project hosts pin (the SHA-256 of its public key travels in every
//! enrolment token), and a CA that signs the hosts' short-lived client certificates, each bound
//! to one name (`URI:edge://project/<name>`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateSigningRequestParams,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::{io_err, sha256_b64, Error, Result};

const CA_LIFETIME: Duration = Duration::days(3650);

/// The URI a client certificate names its project with.
pub(crate) fn project_uri(name: &str) -> String {
    format!("edge://project/{name}")
}

pub struct Identity {
    ca_key: KeyPair,
    ca_cert: Certificate,
    ca_pem: String,
    server_chain_pem: String,
    server_key_pem: String,
    pin: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("pin", &self.pin)
            .finish_non_exhaustive()
    }
}

/// A client certificate the tunnel CA signed.
#[derive(Debug, Clone)]
pub(crate) struct Signed {
    pub cert_pem: String,
    pub key_sha256: String,
    pub serial: String,
    pub not_after: OffsetDateTime,
}

/// What a verified client certificate says.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub name: String,
    pub key_sha256: String,
    pub serial: String,
    pub not_after: OffsetDateTime,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

fn bad(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Msg(format!("{}: {e}", path.display()))
}

/// The SHA-256 (base64url) of a certificate's SubjectPublicKeyInfo.
pub(crate) fn spki_pin(cert_der: &[u8]) -> Result<String> {
    let (_, c) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| Error::Msg(format!("a certificate that does not parse: {e}")))?;
    Ok(sha256_b64(c.tbs_certificate.subject_pki.raw))
}

impl Identity {
    /// Loads the identity and CA from `dir`, creating them (keys 0600, written atomically) the
    /// first time.
    pub fn load_or_create(dir: &Path) -> Result<Identity> {
        let p = |f: &str| -> PathBuf { dir.join(f) };
        let (ca_key_p, ca_p, key_p, cert_p) = (
            p("ca-key.pem"),
            p("ca.pem"),
            p("server-key.pem"),
            p("server.pem"),
        );
        let issue = |e: rcgen::Error| Error::Msg(format!("making the tunnel identity: {e}"));
        if !(ca_key_p.exists() && ca_p.exists() && key_p.exists() && cert_p.exists()) {
            let now = OffsetDateTime::now_utc();
            let ca_key = KeyPair::generate().map_err(issue)?;
            let mut ca = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "edge tunnel CA");
            ca.distinguished_name = dn;
            ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            ca.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            ca.not_before = now - Duration::hours(1);
            ca.not_after = now + CA_LIFETIME;
            let ca_cert = ca.self_signed(&ca_key).map_err(issue)?;
            let key = KeyPair::generate().map_err(issue)?;
            let mut server =
                CertificateParams::new(vec!["edge-tunnel".to_string()]).map_err(issue)?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "edge tunnel");
            server.distinguished_name = dn;
            server.not_before = now - Duration::hours(1);
            server.not_after = now + CA_LIFETIME;
            server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let server_cert = server.self_signed(&key).map_err(issue)?;
            edge_certs::write_atomic(&ca_key_p, ca_key.serialize_pem().as_bytes(), 0o600)?;
            edge_certs::write_atomic(&ca_p, ca_cert.pem().as_bytes(), 0o644)?;
            edge_certs::write_atomic(&key_p, key.serialize_pem().as_bytes(), 0o600)?;
            edge_certs::write_atomic(&cert_p, server_cert.pem().as_bytes(), 0o644)?;
            tracing::info!(dir = %dir.display(), "created the tunnel identity and CA");
        }
        let ca_key = KeyPair::from_pem(&read(&ca_key_p)?).map_err(|e| bad(&ca_key_p, e))?;
        let ca_pem = read(&ca_p)?;
        let ca_cert = CertificateParams::from_ca_cert_pem(&ca_pem)
            .map_err(|e| bad(&ca_p, e))?
            .self_signed(&ca_key)
            .map_err(|e| bad(&ca_p, e))?;
        let server_chain_pem = read(&cert_p)?;
        let server_key_pem = read(&key_p)?;
        let der = pem_der(&server_chain_pem).ok_or_else(|| bad(&cert_p, "no certificate in it"))?;
        let pin = spki_pin(&der)?;
        Ok(Identity {
            ca_key,
            ca_cert,
            ca_pem,
            server_chain_pem,
            server_key_pem,
            pin,
        })
    }

    /// The pin project hosts check the edge with: SHA-256 of its public key, base64url.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// The TLS server config of the tunnel listener: its identity, and client certificates
    /// optional (enrolment has none yet) but verified against the tunnel CA when sent.
    pub(crate) fn server_config(&self) -> Result<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots
                .add(c.map_err(|e| Error::Msg(format!("the tunnel CA: {e}")))?)
                .map_err(|e| Error::Msg(format!("the tunnel CA: {e}")))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Msg(format!("the client verifier: {e}")))?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.server_chain_pem.as_bytes())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::Msg(format!("the tunnel certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes())
            .map_err(|e| Error::Msg(format!("the tunnel key: {e}")))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Msg(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| Error::Msg(format!("the tunnel certificate: {e}")))?;
        cfg.alpn_protocols = vec![crate::proto::ALPN.to_vec()];
        Ok(cfg)
    }

    /// Signs `csr_pem` as `name`'s client certificate for `lifetime`. Only the CSR's key is
    /// taken from it: the name, usages and validity are the edge's.
    pub(crate) fn sign_client(
        &self,
        csr_pem: &str,
        name: &str,
        lifetime: Duration,
    ) -> Result<Signed> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| Error::Msg(format!("the certificate request: {e}")))?;
        use rcgen::PublicKeyData as _;
        let key_sha256 = sha256_b64(csr.public_key.der_bytes());
        let now = OffsetDateTime::now_utc();
        let serial = crate::random_bytes(16);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(
            project_uri(name)
                .try_into()
                .map_err(|e| Error::Msg(format!("{name}: {e:?}")))?,
        )];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + lifetime;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.use_authority_key_identifier_extension = true;
        csr.params = params;
        let cert = csr
            .signed_by(&self.ca_cert, &self.ca_key)
            .map_err(|e| Error::Msg(format!("signing the client certificate: {e}")))?;
        Ok(Signed {
            cert_pem: cert.pem(),
            key_sha256,
            serial: hex(&serial),
            not_after: now + lifetime,
        })
    }
}

/// The first certificate of a PEM text, as DER.
pub(crate) fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|x| **x == 0).count();
    &b[n.min(b.len().saturating_sub(1))..]
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a client certificate (already verified against the tunnel CA by rustls) says.
pub(crate) fn peer(cert_der: &[u8]) -> Result<Peer> {
    let (_, c) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| Error::Msg(format!("a client certificate that does not parse: {e}")))?;
    let name = c
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|g| match g {
                x509_parser::extensions::GeneralName::URI(u) => {
                    u.strip_prefix("edge://project/").map(str::to_string)
                }
                _ => None,
            })
        })
        .ok_or_else(|| Error::Msg("the client certificate names no project".into()))?;
    let ts = |t: x509_parser::time::ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    };
    Ok(Peer {
        name,
        key_sha256: sha256_b64(&c.tbs_certificate.subject_pki.subject_public_key.data),
        // DER writes a positive serial with a leading zero byte when its top bit is set.
        serial: hex(strip_zeros(c.tbs_certificate.raw_serial())),
        not_after: ts(c.validity().not_after),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_client_certificate_names_its_project_and_keeps_the_hosts_key() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(dir.path()).unwrap();
        let again = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(id.pin(), again.pin(), "the identity is kept");
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(vec!["ignored.example".into()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let s = id.sign_client(&csr, "demo", Duration::days(7)).unwrap();
        let p = peer(&pem_der(&s.cert_pem).unwrap()).unwrap();
        assert_eq!(p.name, "demo");
        assert_eq!(p.key_sha256, s.key_sha256);
        assert_eq!(p.serial, s.serial);
        use std::os::unix::fs::PermissionsExt;
        for f in ["ca-key.pem", "server-key.pem"] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
}
