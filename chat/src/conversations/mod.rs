//! Conversations on disk: one NDJSON file per conversation (a line per message and per run
//! event), appended durably (write, then `fdatasync`) before anything is broadcast, and a small
//! metadata file (title, times) replaced atomically. Each user has a directory of their own,
//! named by a hash of the user name, so one user can never name another's files.
//!
//! A crash can leave a torn last line; [`Conversations::open`] finds it and cuts the file back to
//! the last whole line, so nothing written before is lost and the next append starts clean.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

mod file;
mod journal;
#[cfg(test)]
mod tests;
mod wal;

use file::*;
use journal::*;

/// One line of a conversation file. `ts`, `user`, `role` and `content` are the fields of the
/// chat edge replaces; run events add `run_id`, `seq` and the event itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339, UTC.
    pub ts: String,
    pub user: String,
    /// `user`, `assistant` or `system`.
    pub role: String,
    /// The message text (user messages; an assistant's final text), else empty.
    #[serde(default)]
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// A run's frame (its state, an event, its end), exactly as it was broadcast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<crate::frames::RunBody>,
}

/// A new conversation's title until its first message names it.
pub const UNTITLED: &str = "New chat";

/// A title from a first message: its first line with text, spaces collapsed, at most 60
/// characters (cut at a word, with an ellipsis).
pub fn title_from(message: &str) -> String {
    let line = message.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut t = String::new();
    for w in words {
        let w: String = w.chars().filter(|c| !c.is_control()).collect();
        if t.chars().count() + w.chars().count() + 1 > 60 {
            if t.is_empty() {
                t = w.chars().take(59).collect();
            }
            t.push('…');
            return t;
        }
        if !t.is_empty() {
            t.push(' ');
        }
        t.push_str(&w);
    }
    if t.is_empty() {
        UNTITLED.to_string()
    } else {
        t
    }
}

/// What the list shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub id: String,
    pub title: String,
    pub created: String,
    pub updated: String,
    /// The agent's session for this conversation (Claude's `--session-id`, then `--resume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The outpost whose host holds that session (Claude keeps it in the agent's home there).
    /// None: not known (a conversation from before outposts were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_outpost: Option<String>,
    /// Tools the person allowed for the rest of the conversation ("always allow"): their
    /// permission questions are answered at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_tools: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Conversations {
    dir: PathBuf,
    journal: Journal,
}

/// Now, RFC 3339 in UTC with milliseconds, always 24 characters (lines sort by time as text).
pub fn now_rfc3339() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

fn valid_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::NotFound(format!("{id:?} is not a conversation id")))
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Store(format!("{}: {e}", path.display()))
}

impl Conversations {
    pub fn new(dir: PathBuf) -> Conversations {
        Conversations {
            journal: Journal::start(&dir),
            dir,
        }
    }

    fn user_dir(&self, user: &str) -> PathBuf {
        let h = crate::store::sha256(user);
        let hex: String = h[..12].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(hex)
    }

    fn paths(&self, user: &str, id: &str) -> Result<(PathBuf, PathBuf), Error> {
        valid_id(id)?;
        let d = self.user_dir(user);
        Ok((
            d.join(format!("{id}.ndjson")),
            d.join(format!("{id}.meta.json")),
        ))
    }

    /// A new, empty conversation.
    pub fn create(&self, user: &str, title: &str) -> Result<Meta, Error> {
        let id = crate::ids::random(12)?;
        let (log, _) = self.paths(user, &id)?;
        let d = self.user_dir(user);
        std::fs::create_dir_all(&d).map_err(io(&d))?;
        std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&log)
            .map_err(io(&log))?;
        let now = now_rfc3339();
        let meta = Meta {
            id,
            title: title.to_string(),
            created: now.clone(),
            updated: now,
            session: None,
            session_outpost: None,
            allowed_tools: Vec::new(),
        };
        self.write_meta(user, &meta)?;
        Ok(meta)
    }

    fn write_meta(&self, user: &str, meta: &Meta) -> Result<(), Error> {
        let (_, path) = self.paths(user, &meta.id)?;
        let text = serde_json::to_vec(meta).map_err(|e| Error::Internal(e.to_string()))?;
        write_atomic(&path, &text)
    }

    pub fn meta(&self, user: &str, id: &str) -> Result<Option<Meta>, Error> {
        let (_, path) = self.paths(user, id)?;
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Store(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Moves the conversations an older edge kept under the bare user name to `account`
    /// (`project/user`), once: called for the default project, where they were made. Nothing
    /// happens when the account already has conversations or there is nothing to move.
    pub fn adopt_legacy(&self, user: &str, account: &str) -> Result<bool, Error> {
        let (old, new) = (self.user_dir(user), self.user_dir(account));
        if new.exists() || !old.is_dir() {
            return Ok(false);
        }
        std::fs::rename(&old, &new).map_err(io(&new))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        tracing::info!(%user, %account, "moved conversations from before per-project chats");
        Ok(true)
    }

    /// The user's conversations, most recently updated first.
    pub fn list(&self, user: &str) -> Result<Vec<Meta>, Error> {
        let d = self.user_dir(user);
        let rd = match std::fs::read_dir(&d) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&d)(e)),
        };
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".meta.json")) else {
                continue;
            };
            if let Some(m) = self.meta(user, id)? {
                out.push(m);
            }
        }
        out.sort_by(|a, b| b.updated.cmp(&a.updated));
        Ok(out)
    }

    /// Appends records durably: they are on disk when this returns.
    pub fn append(&self, user: &str, id: &str, records: &[Record]) -> Result<(), Error> {
        let (log, _) = self.paths(user, id)?;
        append_to(&log, records)
    }

    /// Appends records durably through the journal thread (group commit): they are on disk
    /// when this resolves. Appends to one conversation land in the order they were made.
    pub async fn append_shared(
        &self,
        user: &str,
        id: &str,
        records: &[Record],
    ) -> Result<(), Error> {
        let (log, _) = self.paths(user, id)?;
        let buf = lines(records)?;
        let (done, wait) = tokio::sync::oneshot::channel();
        self.journal
            .tx
            .send(Append { log, buf, done })
            .map_err(|_| Error::Store("the conversation journal thread is gone".into()))?;
        wait.await
            .map_err(|_| Error::Store("the conversation journal thread stopped".into()))?
    }

    /// Every record of a conversation, after repairing a torn last line if a crash left one.
    /// `None` if the user has no such conversation.
    pub fn open(&self, user: &str, id: &str) -> Result<Option<(Meta, Vec<Record>)>, Error> {
        let Some(meta) = self.meta(user, id)? else {
            return Ok(None);
        };
        let (log, _) = self.paths(user, id)?;
        let records = read_repairing(&log)?;
        Ok(Some((meta, records)))
    }

    /// After a crash: every run that has frames but no end gets an `end` with outcome
    /// `interrupted`, so no conversation shows a run going forever. Torn lines are repaired on
    /// the way. Returns how many runs were closed.
    pub fn recover_interrupted(&self) -> Result<usize, Error> {
        use crate::frames::{Outcome, RunBody};
        let mut closed = 0;
        let Ok(users) = std::fs::read_dir(&self.dir) else {
            return Ok(0);
        };
        for u in users.flatten() {
            let Ok(files) = std::fs::read_dir(u.path()) else {
                continue;
            };
            for f in files.flatten() {
                let path = f.path();
                if path.extension().and_then(|e| e.to_str()) != Some("ndjson") {
                    continue;
                }
                let records = read_repairing(&path)?;
                let mut last: Vec<(String, u64, String)> = Vec::new();
                for r in &records {
                    let (Some(run), Some(seq)) = (&r.run_id, r.seq) else {
                        continue;
                    };
                    last.retain(|(id, _, _)| id != run);
                    if !matches!(r.frame, Some(RunBody::End { .. })) {
                        last.push((run.clone(), seq, r.user.clone()));
                    }
                }
                let mut out = Vec::new();
                for (run, seq, user) in last {
                    tracing::warn!(
                        run = %run,
                        user = %user,
                        conversation = %path.file_stem().unwrap_or_default().to_string_lossy(),
                        outcome = "interrupted",
                        "run ended: edge stopped during it"
                    );
                    out.push(Record {
                        ts: now_rfc3339(),
                        user,
                        role: "assistant".into(),
                        content: "edge stopped during this run".into(),
                        run_id: Some(run),
                        seq: Some(seq + 1),
                        frame: Some(RunBody::End {
                            outcome: Outcome::Interrupted,
                            usage: Default::default(),
                            cost_usd: None,
                            detail: Some("edge stopped during this run".into()),
                        }),
                    });
                }
                if !out.is_empty() {
                    closed += out.len();
                    append_to(&path, &out)?;
                }
            }
        }
        Ok(closed)
    }

    pub fn rename(&self, user: &str, id: &str, title: &str) -> Result<Option<Meta>, Error> {
        let Some(mut m) = self.meta(user, id)? else {
            return Ok(None);
        };
        m.title = title.to_string();
        m.updated = now_rfc3339();
        self.write_meta(user, &m)?;
        Ok(Some(m))
    }

    /// The agent session of a conversation: `(id, true)` to resume it, or a new one `(id, false)`
    /// recorded for the next run.
    pub fn session(&self, user: &str, id: &str) -> Result<Option<(String, bool)>, Error> {
        let Some(mut m) = self.meta(user, id)? else {
            return Ok(None);
        };
        if let Some(s) = &m.session {
            return Ok(Some((s.clone(), true)));
        }
        let s = uuid::Uuid::new_v4().to_string();
        m.session = Some(s.clone());
        self.write_meta(user, &m)?;
        Ok(Some((s, false)))
    }

    /// The outpost whose host holds the conversation's agent session, if known.
    pub fn session_outpost(&self, user: &str, id: &str) -> Result<Option<String>, Error> {
        Ok(self.meta(user, id)?.and_then(|m| m.session_outpost))
    }

    /// Records that the conversation's agent session is now `session`, held on `outpost`.
    pub fn set_session(
        &self,
        user: &str,
        id: &str,
        session: &str,
        outpost: &str,
    ) -> Result<(), Error> {
        if let Some(mut m) = self.meta(user, id)? {
            if m.session.as_deref() != Some(session)
                || m.session_outpost.as_deref() != Some(outpost)
            {
                m.session = Some(session.to_string());
                m.session_outpost = Some(outpost.to_string());
                self.write_meta(user, &m)?;
            }
        }
        Ok(())
    }

    /// Allows `tool` for the rest of the conversation (written atomically with its metadata).
    pub fn allow_tool(&self, user: &str, id: &str, tool: &str) -> Result<(), Error> {
        if let Some(mut m) = self.meta(user, id)? {
            if !m.allowed_tools.iter().any(|t| t == tool) {
                m.allowed_tools.push(tool.to_string());
                self.write_meta(user, &m)?;
            }
        }
        Ok(())
    }

    /// The conversation before `run` (that run's records left out) as Markdown, at most the
    /// last `max` bytes of it (cut at a line): what an agent starting a new session on
    /// another host is told of the turns it cannot resume.
    pub fn transcript_before(
        &self,
        user: &str,
        id: &str,
        run: &str,
        max: usize,
    ) -> Result<String, Error> {
        let Some((meta, records)) = self.open(user, id)? else {
            return Ok(String::new());
        };
        let earlier: Vec<Record> = records
            .into_iter()
            .filter(|r| r.run_id.as_deref() != Some(run))
            .collect();
        let text = markdown(&meta, &earlier);
        if text.len() <= max {
            return Ok(text);
        }
        let mut cut = text.len() - max;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        let tail = &text[cut..];
        Ok(match tail.find('\n') {
            Some(i) => format!("[... earlier turns left out ...]\n{}", &tail[i + 1..]),
            None => tail.to_string(),
        })
    }

    /// Marks a conversation as just used (for the list's order).
    pub fn touch(&self, user: &str, id: &str) -> Result<(), Error> {
        if let Some(mut m) = self.meta(user, id)? {
            m.updated = now_rfc3339();
            self.write_meta(user, &m)?;
        }
        Ok(())
    }

    /// Deletes a conversation; false if there was none.
    pub fn delete(&self, user: &str, id: &str) -> Result<bool, Error> {
        let (log, meta) = self.paths(user, id)?;
        let existed = meta.exists();
        for p in [&meta, &log] {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(p)(e)),
            }
        }
        Ok(existed)
    }

    /// The conversation as Markdown: messages, the agent's text, and its tool calls.
    pub fn export_markdown(&self, user: &str, id: &str) -> Result<Option<String>, Error> {
        let Some((meta, records)) = self.open(user, id)? else {
            return Ok(None);
        };
        Ok(Some(markdown(&meta, &records)))
    }
}
