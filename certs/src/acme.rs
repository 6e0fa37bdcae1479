//! The second issuer: an RFC 8555 CA, through `instant-acme` (async, maintained, rustls-based;
//! see `docs/certificates.md` for why not acme-lib). One account per CA directory, created once
//! and kept in the state directory (0600, written atomically). HTTP-01 answers are handed to the
//! gateway's plain-HTTP listener through [`Http01Answers`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use edge_routing::{AcmeConfig, ChallengeKind, DnsConfig, DnsProvider};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    ExternalAccountKey, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};

use crate::dns::{tsig_signer, txt_name, Dns01};
use crate::fsutil::write_atomic;
use crate::{Error, Result};

/// The HTTP-01 answers on offer while orders are being validated: token to key authorization.
/// The gateway answers `GET /.well-known/acme-challenge/<token>` on plain HTTP from here, before
/// any routing or redirect.
#[derive(Debug, Default)]
pub struct Http01Answers(Mutex<HashMap<String, String>>);

impl Http01Answers {
    /// The key authorization for `token`, while its challenge is pending.
    pub fn get(&self, token: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }

    fn put(&self, token: &str, key_authorization: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_string(), key_authorization.to_string());
    }

    fn remove(&self, token: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }

    /// How many answers are on offer (tests: none is left behind).
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Removes the answers it put when dropped: on success and on every failure path.
struct Offered<'a> {
    answers: &'a Http01Answers,
    tokens: Vec<String>,
}

impl Drop for Offered<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.answers.remove(t);
        }
    }
}

/// How long edge polls an order (validation, issuance) before giving up on it.
const RETRY: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .timeout(Duration::from_secs(90));

/// An account at one CA.
pub struct AcmeClient {
    account: Account,
    directory: String,
    challenge: ChallengeKind,
    dns: Option<DnsConfig>,
    /// The TSIG signer of an rfc2136 provider, made once from its secret file.
    tsig: Option<hickory_proto::dnssec::tsig::TSigner>,
}

impl std::fmt::Debug for AcmeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeClient")
            .field("directory", &self.directory)
            .finish_non_exhaustive()
    }
}

fn acme(what: &str) -> impl Fn(instant_acme::Error) -> Error + '_ {
    move |e| Error::Acme(format!("{what}: {}", describe(&e)))
}

/// An instant-acme error in words, with the CA's problem document when it sent one.
fn describe(e: &instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(p) => {
            let mut s = format!(
                "the CA answered {}: {}",
                p.r#type.as_deref().unwrap_or("a problem"),
                p.detail.as_deref().unwrap_or("(no detail)")
            );
            for sp in &p.subproblems {
                s.push_str(&format!(
                    "; {}: {}",
                    sp.identifier
                        .as_ref()
                        .map(|i| format!("{i:?}"))
                        .unwrap_or_default(),
                    sp.detail.as_deref().unwrap_or("")
                ));
            }
            s
        }
        other => {
            let mut s = other.to_string();
            let mut cur = std::error::Error::source(other);
            while let Some(c) = cur {
                s.push_str(": ");
                s.push_str(&c.to_string());
                cur = c.source();
            }
            s
        }
    }
}

/// A CA's suggested renewal window for one certificate (RFC 9773 §4.2).
#[derive(Debug, Clone)]
pub struct RenewalWindow {
    pub start: time::OffsetDateTime,
    pub end: time::OffsetDateTime,
    /// The CA's page explaining the window, when it gives one (e.g. after a mass revocation).
    pub explanation: Option<String>,
    /// When to ask again (the CA's `Retry-After`, as instant-acme reads it).
    pub check_again: Duration,
}

/// The ARI identifier of a chain's leaf: its Authority Key Identifier and serial (RFC 9773 §4.1).
fn certificate_id(chain_pem: &str) -> Result<CertificateIdentifier<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    let leaf = rustls::pki_types::CertificateDer::from_pem_slice(chain_pem.as_bytes())
        .map_err(|e| Error::Acme(format!("reading the certificate: {e}")))?;
    CertificateIdentifier::try_from(&leaf)
        .map(CertificateIdentifier::into_owned)
        .map_err(|e| Error::Acme(format!("the certificate's ARI identifier: {e}")))
}

/// Where the account for a CA directory is kept.
pub fn account_path(state_dir: &Path, directory: &str) -> PathBuf {
    let h = fnv_hex(directory);
    state_dir.join("acme").join(h).join("account.json")
}

/// A short stable name for a directory URL (FNV-1a, hex): accounts of different CAs never mix.
fn fnv_hex(s: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

impl AcmeClient {
    /// The account at `cfg.directory`: loaded from the state directory, or created (with the
    /// contact email and External Account Binding, if given) and saved there. Relative paths in
    /// `cfg` are under `base_dir`.
    pub async fn connect(
        state_dir: &Path,
        base_dir: &Path,
        cfg: &AcmeConfig,
    ) -> Result<AcmeClient> {
        let roots = cfg.ca_roots.as_ref().map(|r| base_dir.join(r));
        let builder = || -> Result<instant_acme::AccountBuilder> {
            Ok(Account::builder_with_http(Box::new(
                crate::acme_http::Client::new(roots.as_deref(), cfg.request_timeout)?,
            )))
        };
        let path = account_path(state_dir, &cfg.directory);
        let account = match std::fs::read(&path) {
            Ok(bytes) => {
                let creds: AccountCredentials =
                    serde_json::from_slice(&bytes).map_err(|e| Error::BadFile {
                        path: path.clone(),
                        message: format!("not an ACME account: {e}"),
                    })?;
                builder()?
                    .from_credentials(creds)
                    .await
                    .map_err(acme(&format!(
                        "loading the account from {}",
                        path.display()
                    )))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let eab = match (&cfg.eab_kid, &cfg.eab_hmac_file) {
                    (Some(kid), Some(file)) => {
                        let file = base_dir.join(file);
                        let text = std::fs::read_to_string(&file).map_err(|source| Error::Io {
                            path: file.clone(),
                            source,
                        })?;
                        use base64::Engine as _;
                        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                            .decode(text.trim().trim_end_matches('='))
                            .map_err(|e| Error::BadFile {
                                path: file.clone(),
                                message: format!("the EAB HMAC key is not base64url: {e}"),
                            })?;
                        Some(ExternalAccountKey::new(kid.clone(), &key))
                    }
                    _ => None,
                };
                let contact = cfg.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, creds) = builder()?
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        cfg.directory.clone(),
                        eab.as_ref(),
                    )
                    .await
                    .map_err(acme(&format!("creating an account at {}", cfg.directory)))?;
                let json = serde_json::to_vec(&creds)
                    .map_err(|e| Error::Acme(format!("saving the account: {e}")))?;
                write_atomic(&path, &json, 0o600)?;
                tracing::info!(directory = %cfg.directory, account = %account.id(), "created an ACME account");
                account
            }
            Err(source) => return Err(Error::Io { path, source }),
        };
        Ok(AcmeClient {
            account,
            directory: cfg.directory.clone(),
            challenge: cfg.challenge,
            dns: cfg.dns.clone(),
            tsig: match cfg.dns.as_ref().map(|d| &d.provider) {
                Some(DnsProvider::Rfc2136 {
                    tsig_name,
                    tsig_algorithm,
                    tsig_secret_file,
                    ..
                }) => Some(tsig_signer(
                    &base_dir.join(tsig_secret_file),
                    tsig_name,
                    tsig_algorithm,
                )?),
                _ => None,
            },
        })
    }

    /// One order for `names`: every authorization answered by the configured challenge
    /// (HTTP-01 through `answers`, or DNS-01 through `[certs.acme.dns]`), validated, finalized
    /// with a fresh key. Returns the chain (PEM, leaf first) and the key. Challenge answers and
    /// TXT records are withdrawn on success and on every failure.
    pub async fn issue(
        &self,
        names: &[String],
        answers: &Http01Answers,
        replaces: Option<&str>,
    ) -> Result<(String, String)> {
        let (result, retry_after) =
            crate::acme_http::noting_retry_after(self.issue_retrying(names, answers, replaces))
                .await;
        match (result, retry_after) {
            (Err(Error::Acme(message)), Some(at)) => Err(Error::AcmeRetryAfter {
                message,
                until: time::OffsetDateTime::from(at),
            }),
            (other, _) => other,
        }
    }

    async fn issue_retrying(
        &self,
        names: &[String],
        answers: &Http01Answers,
        replaces: Option<&str>,
    ) -> Result<(String, String)> {
        // The certificate this order replaces (RFC 9773 §5), when the CA takes ARI: it may
        // treat the renewal kindly under rate limits.
        let mut replaces = replaces.and_then(|pem| match certificate_id(pem) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(error = %e, "the current certificate has no ARI identifier; ordering without `replaces`");
                None
            }
        });
        // instant-acme retries a rejected nonce twice per request; a CA that rejects more (as
        // CAs may, under load) fails the order, and it is placed again at once, up to 3 times,
        // rather than after the long backoff meant for real failures.
        let mut tries = 0;
        loop {
            tries += 1;
            match self.issue_once(names, answers, replaces.clone()).await {
                Err(Error::Acme(m)) if m.contains("badNonce") && tries < 3 => {
                    tracing::info!(?names, "the CA rejected a nonce again; ordering again");
                }
                // A CA without ARI, or one that will not take this `replaces` (already
                // replaced, or not its certificate): a plain order.
                Err(Error::Acme(m))
                    if replaces.is_some()
                        && (m.contains("alreadyReplaced")
                            || m.contains("renewal information")
                            || m.contains("replaces")) =>
                {
                    tracing::info!(?names, reason = %m, "ordering again without `replaces`");
                    replaces = None;
                }
                other => return other,
            }
        }
    }

    /// The CA's suggested renewal window for the certificate `chain_pem` (RFC 9773), or `None`
    /// when the CA does not offer ACME Renewal Information.
    pub async fn renewal_window(&self, chain_pem: &str) -> Option<Result<RenewalWindow>> {
        let id = match certificate_id(chain_pem) {
            Ok(id) => id,
            Err(e) => return Some(Err(e)),
        };
        match self.account.renewal_info(&id).await {
            Ok((info, check_again)) => Some(Ok(RenewalWindow {
                start: info.suggested_window.start,
                end: info.suggested_window.end,
                explanation: info.explanation_url,
                check_again,
            })),
            Err(instant_acme::Error::Unsupported(_)) => None,
            Err(e) => Some(Err(Error::Acme(format!(
                "asking the CA for the renewal window of {id}: {}",
                describe(&e)
            )))),
        }
    }

    async fn issue_once(
        &self,
        names: &[String],
        answers: &Http01Answers,
        replaces: Option<CertificateIdentifier<'static>>,
    ) -> Result<(String, String)> {
        let identifiers: Vec<Identifier> =
            names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        tracing::info!(?names, directory = %self.directory, challenge = ?self.challenge, replaces = ?replaces.as_ref().map(|r| r.to_string()), "placing an ACME order");
        let mut new = NewOrder::new(&identifiers);
        if let Some(r) = replaces {
            new = new.replaces(r);
        }
        let mut order = self
            .account
            .new_order(&new)
            .await
            .map_err(acme(&format!("ordering {names:?}")))?;
        let mut offered = Offered {
            answers,
            tokens: Vec::new(),
        };
        let mut records: Vec<(String, String)> = Vec::new();
        let validated = self
            .validate(&mut order, names, &mut offered, &mut records)
            .await;
        drop(offered);
        if let Some(dns) = &self.dns {
            for (fqdn, value) in &records {
                match (Dns01 {
                    cfg: dns,
                    tsig: self.tsig.as_ref(),
                })
                .run("clear", fqdn, value)
                .await
                {
                    Ok(()) => tracing::info!(%fqdn, "DNS-01 record cleared"),
                    Err(e) => {
                        tracing::error!(%fqdn, error = %e, "a DNS-01 record could not be cleared; remove it by hand")
                    }
                }
            }
        }
        validated?;
        let key_pem = order
            .finalize()
            .await
            .map_err(acme(&format!("finalizing the order for {names:?}")))?;
        let retry = RETRY;
        let chain_pem = order
            .poll_certificate(&retry)
            .await
            .map_err(acme(&format!("downloading the certificate for {names:?}")))?;
        tracing::info!(?names, "ACME certificate issued");
        Ok((chain_pem, key_pem))
    }

    async fn validate(
        &self,
        order: &mut instant_acme::Order,
        names: &[String],
        offered: &mut Offered<'_>,
        records: &mut Vec<(String, String)>,
    ) -> Result<()> {
        let kind = match self.challenge {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::Dns01 => ChallengeType::Dns01,
        };
        let dns = match (self.challenge, &self.dns) {
            (ChallengeKind::Dns01, Some(d)) => Some(Dns01 {
                cfg: d,
                tsig: self.tsig.as_ref(),
            }),
            (ChallengeKind::Dns01, None) => {
                return Err(Error::Acme("dns-01 needs [certs.acme.dns]".into()))
            }
            _ => None,
        };
        // First pass: put every answer in place (HTTP-01 answers can be marked ready at once;
        // TXT records must first be visible on every server).
        {
            let mut authzs = order.authorizations();
            while let Some(a) = authzs.next().await {
                let mut a = a.map_err(acme("reading an authorization"))?;
                match a.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    other => {
                        return Err(Error::Acme(format!(
                            "an authorization for {} is {other:?}",
                            a.identifier()
                        )))
                    }
                }
                let who = a.identifier().to_string();
                let Some(mut ch) = a.challenge(kind.clone()) else {
                    return Err(Error::Acme(format!(
                        "the CA offers no {kind:?} challenge for {who}{}",
                        if who.starts_with("*.") {
                            " (wildcards need dns-01)"
                        } else {
                            ""
                        }
                    )));
                };
                match &dns {
                    None => {
                        let token = ch.token.clone();
                        offered.answers.put(&token, ch.key_authorization().as_str());
                        offered.tokens.push(token);
                        tracing::info!(name = %who, "http-01 answer on offer; telling the CA it is ready");
                        ch.set_ready()
                            .await
                            .map_err(acme(&format!("marking the challenge for {who} ready")))?;
                    }
                    Some(d) => {
                        let fqdn = txt_name(&who);
                        let value = ch.key_authorization().dns_value();
                        d.run("set", &fqdn, &value).await?;
                        tracing::info!(name = %who, %fqdn, "DNS-01 record set");
                        records.push((fqdn, value));
                    }
                }
            }
        }
        if let Some(d) = &dns {
            let mut by_name: Vec<(&str, Vec<String>)> = Vec::new();
            for (fqdn, value) in records.iter() {
                match by_name.iter_mut().find(|(f, _)| f == fqdn) {
                    Some((_, v)) => v.push(value.clone()),
                    None => by_name.push((fqdn, vec![value.clone()])),
                }
            }
            for (fqdn, values) in &by_name {
                d.wait_visible(fqdn, values).await?;
                tracing::info!(%fqdn, "DNS-01 record visible on every server");
            }
            let mut authzs = order.authorizations();
            while let Some(a) = authzs.next().await {
                let mut a = a.map_err(acme("reading an authorization"))?;
                if a.status != AuthorizationStatus::Pending {
                    continue;
                }
                let who = a.identifier().to_string();
                if let Some(mut ch) = a.challenge(ChallengeType::Dns01) {
                    tracing::info!(name = %who, "DNS-01 record in place; telling the CA it is ready");
                    ch.set_ready()
                        .await
                        .map_err(acme(&format!("marking the challenge for {who} ready")))?;
                }
            }
        }
        let retry = RETRY;
        let status = order
            .poll_ready(&retry)
            .await
            .map_err(acme(&format!("waiting for {names:?} to be validated")))?;
        if status != OrderStatus::Ready {
            let problem = order
                .state()
                .error
                .as_ref()
                .map(|p| format!(": {}", p.detail.as_deref().unwrap_or("")))
                .unwrap_or_default();
            return Err(Error::Acme(format!(
                "the order for {names:?} is {status:?}{problem}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_of_different_cas_are_kept_apart() {
        let a = account_path(Path::new("/s"), "https://ca.one/directory");
        let b = account_path(Path::new("/s"), "https://ca.two/directory");
        assert_ne!(a, b);
        assert_eq!(a, account_path(Path::new("/s"), "https://ca.one/directory"));
        assert!(a.starts_with("/s/acme"));
    }

    #[test]
    fn offered_answers_are_withdrawn_on_drop() {
        let answers = Http01Answers::default();
        {
            answers.put("t1", "t1.thumb");
            let _o = Offered {
                answers: &answers,
                tokens: vec!["t1".into()],
            };
            assert_eq!(answers.get("t1").as_deref(), Some("t1.thumb"));
        }
        assert!(answers.is_empty());
    }
}
