//! TLS: one wildcard certificate per project, chosen by SNI through a resolver over an
//! `ArcSwap`, so a renewal or a new project swaps in without touching the listener.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// One project's certificate as PEM text; `host` is the project's apex
/// (`demo.example.test`), the certificate covers it and `*.demo.example.test`.
#[derive(Clone)]
pub struct ProjectCert {
    pub host: String,
    pub chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ProjectCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectCert")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct CertSet {
    by_host: HashMap<String, Arc<CertifiedKey>>,
    /// For clients that send no SNI (dialling an IP address) or an unknown name.
    default: Option<Arc<CertifiedKey>>,
}

/// Picks the certificate for a TLS handshake.
#[derive(Debug, Default)]
pub struct CertResolver {
    set: ArcSwap<CertSet>,
}

fn certified_key(c: &ProjectCert) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(c.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("certificate for {}: {e}", c.host))?;
    if chain.is_empty() {
        return Err(format!(
            "certificate for {}: no certificate in the PEM",
            c.host
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())
        .map_err(|e| format!("key for {}: {e}", c.host))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("key for {}: {e}", c.host))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

impl CertResolver {
    /// Replaces every certificate at once. `default_host` names the one served without SNI.
    pub fn set(&self, certs: &[ProjectCert], default_host: &str) -> Result<(), String> {
        let mut set = CertSet::default();
        for c in certs {
            let key = certified_key(c)?;
            if c.host == default_host {
                set.default = Some(key.clone());
            }
            set.by_host.insert(c.host.to_ascii_lowercase(), key);
        }
        if set.default.is_none() {
            set.default = set.by_host.values().next().cloned();
        }
        self.set.store(Arc::new(set));
        Ok(())
    }

    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(cfg)
    }
}

impl CertSet {
    /// The certificate served for `name` (`None`: a client that sent no SNI).
    fn pick(&self, name: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        if let Some(name) = name {
            let name = name.to_ascii_lowercase();
            // The project's apex, or one label below it (its wildcard).
            if let Some(k) = self.by_host.get(&name) {
                return Some(k);
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(k) = self.by_host.get(parent) {
                    return Some(k);
                }
            }
        }
        self.default.as_ref()
    }
}

impl CertResolver {
    /// Whether a request for `host` may be answered on a connection whose handshake named
    /// `sni`: the same certificate serves both. Otherwise a browser that coalesced connections
    /// (or a client that lied in one of the two) is talking to the wrong project (421).
    pub(crate) fn shares_certificate(&self, sni: Option<&str>, host: &str) -> bool {
        if sni.is_some_and(|s| s.eq_ignore_ascii_case(host)) {
            return true;
        }
        let set = self.set.load();
        match (set.pick(sni), set.pick(Some(host))) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.set.load().pick(hello.server_name()).cloned()
    }
}
