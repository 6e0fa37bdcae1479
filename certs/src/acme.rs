//! The second issuer: an RFC 8555 CA, through `instant-acme` (async, maintained, rustls-based;
//! see `docs/certificates.md` for why not acme-lib). One account per CA directory, created once
//! and kept in the state directory (0600, written atomically). HTTP-01 answers are handed to the
//! gateway's plain-HTTP listener through [`Http01Answers`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use edge_routing::{AcmeConfig, ChallengeKind};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};

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

/// An account at one CA.
pub struct AcmeClient {
    account: Account,
    directory: String,
    challenge: ChallengeKind,
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

/// Where the account for a CA directory is kept.
pub fn account_path(state_dir: &Path, directory: &str) -> PathBuf {
    let h = ring_like_hash(directory);
    state_dir.join("acme").join(h).join("account.json")
}

/// A short stable name for a directory URL (FNV-1a, hex): accounts of different CAs never mix.
fn ring_like_hash(s: &str) -> String {
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
        let builder = || -> Result<instant_acme::AccountBuilder> {
            match &cfg.ca_roots {
                Some(roots) => Account::builder_with_root(base_dir.join(roots))
                    .map_err(acme("certs.acme.ca_roots")),
                None => Account::builder().map_err(acme("an HTTPS client for the CA")),
            }
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
        })
    }

    /// One order for `names`: every authorization answered by HTTP-01 through `answers`,
    /// validated, finalized with a fresh key. Returns the chain (PEM, leaf first) and the key.
    pub async fn issue(
        &self,
        names: &[String],
        answers: &Http01Answers,
    ) -> Result<(String, String)> {
        if self.challenge != ChallengeKind::Http01 {
            return Err(Error::Acme(
                "only http-01 is implemented in this version of edge".into(),
            ));
        }
        let identifiers: Vec<Identifier> =
            names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        tracing::info!(?names, directory = %self.directory, "placing an ACME order");
        let mut order = self
            .account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(acme(&format!("ordering {names:?}")))?;
        let mut offered = Offered {
            answers,
            tokens: Vec::new(),
        };
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
                let Some(mut ch) = a.challenge(ChallengeType::Http01) else {
                    return Err(Error::Acme(format!(
                        "the CA offers no http-01 challenge for {who} (wildcards need dns-01)"
                    )));
                };
                let token = ch.token.clone();
                answers.put(&token, ch.key_authorization().as_str());
                offered.tokens.push(token);
                tracing::info!(name = %who, "http-01 answer on offer; telling the CA it is ready");
                ch.set_ready()
                    .await
                    .map_err(acme(&format!("marking the challenge for {who} ready")))?;
            }
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(Duration::from_secs(90));
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
        drop(offered);
        let key_pem = order
            .finalize()
            .await
            .map_err(acme(&format!("finalizing the order for {names:?}")))?;
        let chain_pem = order
            .poll_certificate(&retry)
            .await
            .map_err(acme(&format!("downloading the certificate for {names:?}")))?;
        tracing::info!(?names, "ACME certificate issued");
        Ok((chain_pem, key_pem))
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
