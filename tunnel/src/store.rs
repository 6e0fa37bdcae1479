//! What the edge keeps of registrations in `state_dir/register/`: one-time tokens (hashed),
//! the names and the key that owns each, and an append-only audit log. Every change is a
//! read-modify-write under a lock file, written atomically.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{io_err, now_unix, sha256_b64, Error, Result};

/// Names no project host may take: the edge's own words, and common service names.
pub const BUILT_IN_RESERVED: &[&str] = &[
    "www",
    "api",
    "admin",
    "root",
    "mail",
    "smtp",
    "imap",
    "chat",
    "forge",
    "ci",
    "staging",
    "edge",
    "register",
    "tunnel",
    "token",
    "list",
    "revoke",
    "status",
    "metrics",
    "localhost",
    "autoconfig",
    "autodiscover",
    "ns",
    "ns1",
    "ns2",
    "_acme-challenge",
];

/// A registered name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// SHA-256 (base64url) of the public key that owns the name.
    pub key_sha256: String,
    /// The mounts the host serves.
    pub mounts: Vec<String>,
    /// When it enrolled (Unix seconds).
    pub enrolled: i64,
    /// The serial and expiry of the newest client certificate issued.
    pub serial: String,
    pub not_after: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Tokens {
    /// SHA-256 of the secret → the name it enrols and when it stops working.
    tokens: BTreeMap<String, TokenRec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRec {
    name: String,
    created: i64,
    expires: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Registry {
    names: BTreeMap<String, Registration>,
}

/// A name as a DNS label: 1–63 of `a-z`, `0-9` and `-`, not starting or ending with `-`.
pub fn check_name(name: &str, reserved: &[String]) -> std::result::Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty()
        || name.len() > 63
        || !ok_chars
        || name.starts_with('-')
        || name.ends_with('-')
    {
        return Err(format!(
            "{name:?} is not a name: use 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'"
        ));
    }
    if BUILT_IN_RESERVED.contains(&name) || reserved.iter().any(|r| r == name) {
        return Err(format!("{name:?} is reserved"));
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `f` holding the store's lock (an advisory lock on `lock`), across processes: the
    /// CLI minting a token and the running edge taking one never lose each other's change.
    fn locked<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let path = self.dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.lock().map_err(io_err(&path))?;
        let out = f();
        let _ = file.unlock();
        out
    }

    fn read<T: Default + for<'de> Deserialize<'de>>(&self, file: &str) -> Result<T> {
        let path = self.dir.join(file);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Msg(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn write<T: Serialize>(&self, file: &str, v: &T) -> Result<()> {
        let json = serde_json::to_vec_pretty(v).map_err(|e| Error::Msg(e.to_string()))?;
        edge_certs::write_atomic(&self.dir.join(file), &json, 0o600)?;
        Ok(())
    }

    /// Mints a one-time token enrolling `name`, valid for `ttl_secs`; the secret (only its
    /// hash is kept) and the pin of the edge's identity, as one string.
    pub fn create_token(&self, name: &str, ttl_secs: i64, pin: &str) -> Result<String> {
        use base64::Engine as _;
        let secret =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::random_bytes(32));
        let now = now_unix();
        self.locked(|| {
            let mut t: Tokens = self.read("tokens.json")?;
            t.tokens.retain(|_, r| r.expires > now);
            t.tokens.insert(
                sha256_b64(secret.as_bytes()),
                TokenRec {
                    name: name.to_string(),
                    created: now,
                    expires: now + ttl_secs,
                },
            );
            self.write("tokens.json", &t)
        })?;
        Ok(format!("edge1.{pin}.{secret}"))
    }

    /// Takes (uses up) the token `secret` for `name`. Any mismatch (unknown, used, expired,
    /// for another name) is the same refusal.
    pub(crate) fn take_token(
        &self,
        name: &str,
        secret: &str,
    ) -> Result<std::result::Result<(), String>> {
        let now = now_unix();
        self.locked(|| {
            let mut t: Tokens = self.read("tokens.json")?;
            let h = sha256_b64(secret.as_bytes());
            let verdict = match t.tokens.get(&h) {
                Some(r) if r.name == name && r.expires > now => Ok(()),
                _ => Err("the token is not valid for this name (unknown, used, or expired): mint a new one with `edge register token create`".to_string()),
            };
            if verdict.is_ok() {
                t.tokens.remove(&h);
            }
            t.tokens.retain(|_, r| r.expires > now);
            self.write("tokens.json", &t)?;
            Ok(verdict)
        })
    }

    pub fn registrations(&self) -> Result<BTreeMap<String, Registration>> {
        Ok(self.read::<Registry>("registry.json")?.names)
    }

    pub fn get(&self, name: &str) -> Result<Option<Registration>> {
        Ok(self.registrations()?.remove(name))
    }

    /// Saves `name`'s registration, unless another key owns it: then the owner's.
    pub(crate) fn put(
        &self,
        name: &str,
        reg: Registration,
    ) -> Result<std::result::Result<(), String>> {
        self.locked(|| {
            let mut r: Registry = self.read("registry.json")?;
            if let Some(old) = r.names.get(name) {
                if old.key_sha256 != reg.key_sha256 {
                    return Ok(Err(format!("{name:?} is taken")));
                }
            }
            r.names.insert(name.to_string(), reg);
            self.write("registry.json", &r)?;
            Ok(Ok(()))
        })
    }

    /// Changes `name`'s registration with `f`, if it exists.
    pub(crate) fn update(&self, name: &str, f: impl FnOnce(&mut Registration)) -> Result<()> {
        self.locked(|| {
            let mut r: Registry = self.read("registry.json")?;
            if let Some(reg) = r.names.get_mut(name) {
                f(reg);
                self.write("registry.json", &r)?;
            }
            Ok(())
        })
    }

    /// Removes `name`; whether it was there.
    pub fn remove(&self, name: &str) -> Result<bool> {
        self.locked(|| {
            let mut r: Registry = self.read("registry.json")?;
            let was = r.names.remove(name).is_some();
            if was {
                self.write("registry.json", &r)?;
            }
            Ok(was)
        })
    }

    /// Appends one JSON line to `audit.jsonl` (fsynced): `event`, `name` and more fields.
    pub fn audit(&self, event: &str, name: &str, fields: serde_json::Value) {
        let mut line = serde_json::json!({
            "time": time::OffsetDateTime::now_utc().unix_timestamp(),
            "event": event,
            "name": name,
        });
        if let (Some(l), serde_json::Value::Object(m)) = (line.as_object_mut(), fields) {
            l.extend(m);
        }
        let path = self.dir.join("audit.jsonl");
        let r = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            let mut s = line.to_string();
            s.push('\n');
            f.write_all(s.as_bytes())?;
            f.sync_data()
        })();
        if let Err(e) = r {
            tracing::error!(path = %path.display(), error = %e, "could not append to the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels_and_not_reserved() {
        assert!(check_name("demo-2", &[]).is_ok());
        for bad in ["", "-a", "a-", "Demo", "a.b", "a_b", &"x".repeat(64)] {
            assert!(check_name(bad, &[]).is_err(), "{bad:?}");
        }
        assert!(check_name("www", &[]).unwrap_err().contains("reserved"));
        assert!(check_name("shop", &["shop".into()])
            .unwrap_err()
            .contains("reserved"));
    }

    #[test]
    fn a_token_works_once_for_its_name_and_is_kept_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        let t = s.create_token("demo", 3600, "PIN").unwrap();
        let secret = t.rsplit('.').next().unwrap();
        let kept = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
        assert!(!kept.contains(secret), "the secret itself is stored");
        assert!(s.take_token("other", secret).unwrap().is_err());
        assert!(s.take_token("demo", secret).unwrap().is_ok());
        assert!(s.take_token("demo", secret).unwrap().is_err(), "used twice");
        let t = s.create_token("demo", -1, "PIN").unwrap();
        assert!(
            s.take_token("demo", t.rsplit('.').next().unwrap())
                .unwrap()
                .is_err(),
            "expired"
        );
    }

    #[test]
    fn a_name_belongs_to_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        let reg = |k: &str| Registration {
            key_sha256: k.into(),
            mounts: vec!["forge".into()],
            enrolled: 1,
            serial: "01".into(),
            not_after: 2,
        };
        assert!(s.put("demo", reg("A")).unwrap().is_ok());
        assert!(s.put("demo", reg("A")).unwrap().is_ok());
        assert!(s.put("demo", reg("B")).unwrap().is_err());
        assert!(s.remove("demo").unwrap());
        assert!(!s.remove("demo").unwrap());
        s.audit("register", "demo", serde_json::json!({"key": "A"}));
        let line = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["event"], "register");
        assert_eq!(v["key"], "A");
    }
}
