//! The chat's store: one SQLite file under `state_dir` (WAL, `synchronous = FULL`, so a
//! committed write survives a crash). Sessions, sign-in flows in progress and one-time login
//! tokens. Secrets are never stored as given: session ids and tokens are kept as SHA-256
//! hashes, so a copy of the file signs nobody in.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use crate::Error;

/// Seconds since the epoch.
pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn sha256(s: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
        .as_ref()
        .to_vec()
}

/// How long a sign-in flow (from `/login` to the callback) may take.
pub const FLOW_TTL: Duration = Duration::from_secs(600);

/// A signed-in session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    /// The project whose chat it was signed in to; it is worth nothing on another's.
    pub project: String,
    /// Whether the user was on the allowlist when signing in.
    pub allowed: bool,
    pub created: i64,
    pub last_seen: i64,
}

impl Session {
    /// The key of what this user holds in this project (conversations, runs, limits, open
    /// tabs): `project/user`, so nothing is shared across projects. Users see `user` only.
    pub fn account(&self) -> String {
        account(&self.project, &self.user)
    }
}

/// `project/user`: see [`Session::account`].
pub fn account(project: &str, user: &str) -> String {
    format!("{project}/{user}")
}

/// The user's name in an account key (the whole key if it is not one).
pub fn display_user(account: &str) -> &str {
    account.split_once('/').map_or(account, |(_, u)| u)
}

/// A sign-in flow waiting for its callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub verifier: String,
    pub redirect_uri: String,
    pub rd: String,
}

#[derive(Clone)]
pub struct Store {
    db: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    id_hash BLOB PRIMARY KEY,
    user TEXT NOT NULL,
    project TEXT NOT NULL DEFAULT '',
    allowed INTEGER NOT NULL,
    created INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS flows (
    state_hash BLOB PRIMARY KEY,
    verifier TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    rd TEXT NOT NULL,
    created INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS requests (
    user TEXT NOT NULL,
    ts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_user ON requests (user, ts);
CREATE TABLE IF NOT EXISTS tokens (
    user TEXT NOT NULL,
    day INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    PRIMARY KEY (user, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS login_tokens (
    hash BLOB PRIMARY KEY,
    user TEXT NOT NULL,
    expires INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Brings a store written by an older edge up to this schema. Sessions from before sessions
/// were per project get the empty project, which no chat accepts: their users sign in again.
fn migrate(db: &Connection) -> rusqlite::Result<()> {
    let has_project: bool = db
        .prepare("SELECT 1 FROM pragma_table_info('sessions') WHERE name = 'project'")?
        .exists([])?;
    if !has_project {
        db.execute_batch("ALTER TABLE sessions ADD COLUMN project TEXT NOT NULL DEFAULT ''")?;
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) `dir/chat.db`.
    pub fn open(dir: &Path) -> Result<Store, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Store(format!("{}: {e}", dir.display())))?;
        let path = dir.join("chat.db");
        let db = Connection::open(&path)
            .map_err(|e| Error::Store(format!("{}: {e}", path.display())))?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
        )
        .and_then(|_| db.execute_batch(SCHEMA))
        .and_then(|_| migrate(&db))
        .map_err(|e| Error::Store(format!("{}: {e}", path.display())))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(Store {
            db: Arc::new(Mutex::new(db)),
            path,
        })
    }

    /// Runs `f` on the database off the async threads (writes wait for fsync).
    async fn call<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = db.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|e| Error::Store(format!("store task: {e}")))?
        .map_err(|e| Error::Store(e.to_string()))
    }

    pub async fn create_session(
        &self,
        id: &str,
        project: &str,
        user: &str,
        allowed: bool,
    ) -> Result<(), Error> {
        let (h, project, user, t) = (sha256(id), project.to_string(), user.to_string(), now());
        self.call(move |c| {
            c.execute(
                "INSERT INTO sessions (id_hash, user, project, allowed, created, last_seen) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![h, user, project, allowed, t],
            )
            .map(|_| ())
        })
        .await
    }

    /// The session with this id if it has not expired (idle or absolute); an expired one is
    /// deleted. Refreshes `last_seen` when it is more than a minute old.
    pub async fn session(
        &self,
        id: &str,
        idle: Duration,
        max: Duration,
    ) -> Result<Option<Session>, Error> {
        let h = sha256(id);
        let (idle, max) = (idle.as_secs() as i64, max.as_secs() as i64);
        self.call(move |c| {
            let t = now();
            let s = c
                .query_row(
                    "SELECT user, project, allowed, created, last_seen FROM sessions WHERE id_hash = ?1",
                    params![h],
                    |r| {
                        Ok(Session {
                            user: r.get(0)?,
                            project: r.get(1)?,
                            allowed: r.get(2)?,
                            created: r.get(3)?,
                            last_seen: r.get(4)?,
                        })
                    },
                )
                .optional()?;
            let Some(mut s) = s else { return Ok(None) };
            if t - s.last_seen > idle || t - s.created > max {
                c.execute("DELETE FROM sessions WHERE id_hash = ?1", params![h])?;
                return Ok(None);
            }
            if t - s.last_seen > 60 {
                c.execute(
                    "UPDATE sessions SET last_seen = ?2 WHERE id_hash = ?1",
                    params![h, t],
                )?;
                s.last_seen = t;
            }
            Ok(Some(s))
        })
        .await
    }

    pub async fn delete_session(&self, id: &str) -> Result<(), Error> {
        let h = sha256(id);
        self.call(move |c| {
            c.execute("DELETE FROM sessions WHERE id_hash = ?1", params![h])
                .map(|_| ())
        })
        .await
    }

    /// Ages a session (tests and `edge chat` maintenance): moves its times `by` into the past.
    pub async fn age_session(&self, id: &str, by: Duration) -> Result<(), Error> {
        let (h, by) = (sha256(id), by.as_secs() as i64);
        self.call(move |c| {
            c.execute(
                "UPDATE sessions SET created = created - ?2, last_seen = last_seen - ?2 WHERE id_hash = ?1",
                params![h, by],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn put_flow(&self, state: &str, flow: Flow) -> Result<(), Error> {
        let h = sha256(state);
        self.call(move |c| {
            let t = now();
            c.execute(
                "DELETE FROM flows WHERE created < ?1",
                params![t - FLOW_TTL.as_secs() as i64],
            )?;
            c.execute(
                "INSERT INTO flows (state_hash, verifier, redirect_uri, rd, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![h, flow.verifier, flow.redirect_uri, flow.rd, t],
            )
            .map(|_| ())
        })
        .await
    }

    /// Takes the flow for `state` out of the store: a state is good for one callback, within
    /// [`FLOW_TTL`].
    pub async fn take_flow(&self, state: &str) -> Result<Option<Flow>, Error> {
        let h = sha256(state);
        self.call(move |c| {
            let tx = c.transaction()?;
            let f = tx
                .query_row(
                    "SELECT verifier, redirect_uri, rd, created FROM flows WHERE state_hash = ?1",
                    params![h],
                    |r| {
                        Ok((
                            Flow {
                                verifier: r.get(0)?,
                                redirect_uri: r.get(1)?,
                                rd: r.get(2)?,
                            },
                            r.get::<_, i64>(3)?,
                        ))
                    },
                )
                .optional()?;
            tx.execute("DELETE FROM flows WHERE state_hash = ?1", params![h])?;
            tx.commit()?;
            Ok(f.and_then(|(f, created)| {
                (now() - created <= FLOW_TTL.as_secs() as i64).then_some(f)
            }))
        })
        .await
    }

    pub async fn put_login_token(
        &self,
        token: &str,
        user: &str,
        ttl: Duration,
    ) -> Result<(), Error> {
        let (h, user) = (sha256(token), user.to_string());
        self.call(move |c| {
            let t = now();
            c.execute("DELETE FROM login_tokens WHERE expires < ?1", params![t])?;
            c.execute(
                "INSERT INTO login_tokens (hash, user, expires) VALUES (?1, ?2, ?3)",
                params![h, user, t + ttl.as_secs() as i64],
            )
            .map(|_| ())
        })
        .await
    }

    /// Uses up a one-time login token: the user it was for, once.
    pub async fn take_login_token(&self, token: &str) -> Result<Option<String>, Error> {
        let h = sha256(token);
        self.call(move |c| {
            let tx = c.transaction()?;
            let row = tx
                .query_row(
                    "SELECT user, expires FROM login_tokens WHERE hash = ?1",
                    params![h],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
                )
                .optional()?;
            tx.execute("DELETE FROM login_tokens WHERE hash = ?1", params![h])?;
            tx.commit()?;
            Ok(row.and_then(|(u, exp)| (exp >= now()).then_some(u)))
        })
        .await
    }
}

/// What a user has used in the current UTC windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Used {
    pub hour: u64,
    pub day: u64,
    pub tokens_day: u64,
}

/// What `user` has used in the UTC hour and day around `t`.
fn window_usage(c: &Connection, user: &str, t: i64) -> rusqlite::Result<Used> {
    let (hour, day) = (t - t.rem_euclid(3600), t - t.rem_euclid(86400));
    let n = |since: i64| -> rusqlite::Result<u64> {
        c.query_row(
            "SELECT COUNT(*) FROM requests WHERE user = ?1 AND ts >= ?2",
            params![user, since],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n as u64)
    };
    let tokens = c
        .query_row(
            "SELECT tokens FROM tokens WHERE user = ?1 AND day = ?2",
            params![user, day],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .unwrap_or(0) as u64;
    Ok(Used {
        hour: n(hour)?,
        day: n(day)?,
        tokens_day: tokens,
    })
}

impl Store {
    /// Counts a request, if the user's hourly and daily request limits allow it. `Err(secs)`:
    /// refused, retry after that many seconds (the end of the full window).
    pub async fn take_request(
        &self,
        user: &str,
        per_hour: u64,
        per_day: u64,
        tokens_per_day: u64,
    ) -> Result<Result<Used, u64>, Error> {
        let user = user.to_string();
        self.call(move |c| {
            let t = now();
            let (hour, day) = (t - t.rem_euclid(3600), t - t.rem_euclid(86400));
            let tx = c.transaction()?;
            let used = window_usage(&tx, &user, t)?;
            if used.day >= per_day || used.tokens_day >= tokens_per_day {
                return Ok(Err((day + 86400 - t) as u64));
            }
            if used.hour >= per_hour {
                return Ok(Err((hour + 3600 - t) as u64));
            }
            tx.execute(
                "DELETE FROM requests WHERE user = ?1 AND ts < ?2",
                params![user, day],
            )?;
            tx.execute(
                "INSERT INTO requests (user, ts) VALUES (?1, ?2)",
                params![user, t],
            )?;
            tx.commit()?;
            Ok(Ok(Used {
                hour: used.hour + 1,
                day: used.day + 1,
                ..used
            }))
        })
        .await
    }

    /// What the user has used in the current windows.
    pub async fn used(&self, user: &str) -> Result<Used, Error> {
        let user = user.to_string();
        self.call(move |c| window_usage(c, &user, now())).await
    }

    /// Adds a run's tokens to the user's day.
    pub async fn add_tokens(&self, user: &str, tokens: u64) -> Result<(), Error> {
        let user = user.to_string();
        self.call(move |c| {
            let t = now();
            let day = t - t.rem_euclid(86400);
            c.execute(
                "INSERT INTO tokens (user, day, tokens) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user, day) DO UPDATE SET tokens = tokens + excluded.tokens",
                params![user, day, tokens as i64],
            )
            .map(|_| ())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_expire_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86400);
        {
            let s = Store::open(dir.path()).unwrap();
            s.create_session("abc", "demo", "alice", true)
                .await
                .unwrap();
            s.create_session("old", "demo", "bob", true).await.unwrap();
            s.age_session("old", 2 * day).await.unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let got = s.session("abc", day, 30 * day).await.unwrap().unwrap();
        assert_eq!(
            (got.user.as_str(), got.project.as_str(), got.allowed),
            ("alice", "demo", true)
        );
        assert_eq!(s.session("old", day, 30 * day).await.unwrap(), None);
        assert_eq!(s.session("nope", day, 30 * day).await.unwrap(), None);
        s.delete_session("abc").await.unwrap();
        assert_eq!(s.session("abc", day, 30 * day).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_store_from_before_projects_gets_the_column_and_its_sessions_lose_their_worth() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Connection::open(dir.path().join("chat.db")).unwrap();
            db.execute_batch(
                "CREATE TABLE sessions (id_hash BLOB PRIMARY KEY, user TEXT NOT NULL, allowed INTEGER NOT NULL, created INTEGER NOT NULL, last_seen INTEGER NOT NULL) WITHOUT ROWID;",
            )
            .unwrap();
            db.execute(
                "INSERT INTO sessions VALUES (?1, 'alice', 1, ?2, ?2)",
                params![sha256("legacy"), now()],
            )
            .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let day = Duration::from_secs(86400);
        let got = s.session("legacy", day, day).await.unwrap().unwrap();
        assert_eq!(got.project, "", "an old session belongs to no project");
        s.create_session("new", "demo", "alice", true)
            .await
            .unwrap();
        assert_eq!(
            s.session("new", day, day).await.unwrap().unwrap().project,
            "demo"
        );
    }

    #[tokio::test]
    async fn request_and_token_limits_hold_per_user_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            for i in 1..=3 {
                let u = s.take_request("alice", 3, 10, 1000).await.unwrap().unwrap();
                assert_eq!(u.hour, i);
            }
        }
        let s = Store::open(dir.path()).unwrap();
        let retry = s
            .take_request("alice", 3, 10, 1000)
            .await
            .unwrap()
            .unwrap_err();
        assert!(retry > 0 && retry <= 3600, "{retry}");
        assert!(
            s.take_request("bob", 3, 10, 1000).await.unwrap().is_ok(),
            "per user"
        );
        s.add_tokens("bob", 600).await.unwrap();
        s.add_tokens("bob", 500).await.unwrap();
        assert_eq!(s.used("bob").await.unwrap().tokens_day, 1100);
        let retry = s
            .take_request("bob", 3, 10, 1000)
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            retry > 0 && retry <= 86400,
            "over the daily tokens: {retry}"
        );
    }

    #[tokio::test]
    async fn flows_and_tokens_are_single_use() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let flow = Flow {
            verifier: "v".into(),
            redirect_uri: "https://x/cb".into(),
            rd: "/".into(),
        };
        s.put_flow("st", flow.clone()).await.unwrap();
        assert_eq!(s.take_flow("st").await.unwrap(), Some(flow));
        assert_eq!(s.take_flow("st").await.unwrap(), None);
        s.put_login_token("tok", "operator", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            s.take_login_token("tok").await.unwrap().as_deref(),
            Some("operator")
        );
        assert_eq!(s.take_login_token("tok").await.unwrap(), None);
    }
}
