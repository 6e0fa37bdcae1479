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
    pub frame: Option<crate::runs::RunBody>,
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

/// The one thread that appends run events for every conversation, with group commit: appends
/// that arrive while it is syncing are written together, and each file they touch is synced
/// once for all of them. A caller waits (without holding an async thread) until its lines are
/// on disk. With 100 runs streaming, this turns 100 separate `fdatasync`s per round into one
/// round of writes whose syncs share the file system's journal commit.
#[derive(Debug, Clone)]
struct Journal {
    tx: std::sync::mpsc::Sender<Append>,
}

type Waiter = tokio::sync::oneshot::Sender<Result<(), Error>>;

#[derive(Debug)]
struct Append {
    log: PathBuf,
    buf: Vec<u8>,
    done: Waiter,
}

impl Journal {
    fn start() -> Journal {
        let (tx, rx) = std::sync::mpsc::channel::<Append>();
        let spawned = std::thread::Builder::new()
            .name("edge-journal".into())
            .spawn(move || {
                // Ends when every `Conversations` is gone.
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    commit(batch);
                }
            });
        if let Err(e) = spawned {
            // Appends then fail with a clear error (the receiver is gone); nothing is lost
            // silently.
            tracing::error!(error = %e, "could not start the conversation journal thread");
        }
        Journal { tx }
    }
}

/// Writes a batch, file by file in arrival order, then syncs each file once.
fn commit(batch: Vec<Append>) {
    let mut files: Vec<(PathBuf, Vec<u8>, Vec<Waiter>)> = Vec::new();
    for a in batch {
        match files.iter_mut().find(|(p, _, _)| *p == a.log) {
            Some((_, buf, waiters)) => {
                buf.extend_from_slice(&a.buf);
                waiters.push(a.done);
            }
            None => files.push((a.log, a.buf, vec![a.done])),
        }
    }
    // Written file by file, then synced file by file: the syncs of one batch share the file
    // system's journal commit. A file whose write or sync fails is cut back to where it was, so
    // it always ends at its last complete record.
    let mut written = Vec::with_capacity(files.len());
    for (log, buf, waiters) in files {
        let r = write_whole(&log, &buf);
        written.push((log, r, waiters));
    }
    for (log, r, waiters) in written {
        let r = r.and_then(|(f, before)| {
            f.sync_data().map_err(|e| {
                roll_back(&log, &f, before);
                io(&log)(e)
            })
        });
        for w in waiters {
            let _ = w.send(r.clone());
        }
    }
}

/// Appends `buf` (whole lines) to `log`, after cutting a torn tail a crash may have left. On a
/// failed write (a full disk), the file is cut back to its length before: no partial line is
/// ever left for later appends to follow. Returns the file and that length, for a failed sync.
fn write_whole(log: &Path, buf: &[u8]) -> Result<(std::fs::File, u64), Error> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(log)
        .map_err(io(log))?;
    let before = clean_tail(log, &f)?;
    if let Err(e) = f.write_all(buf) {
        roll_back(log, &f, before);
        return Err(io(log)(e));
    }
    Ok((f, before))
}

/// Cuts `f` back to `len` and syncs, after a failed append. If even that fails the torn line
/// stays, and the next append or read cuts it ([`clean_tail`], [`read_repairing`]).
fn roll_back(log: &Path, f: &std::fs::File, len: u64) {
    match f.set_len(len).and_then(|()| f.sync_data()) {
        Ok(()) => {
            tracing::warn!(file = %log.display(), "an append failed; the file is back at its last complete record")
        }
        Err(e) => {
            tracing::error!(file = %log.display(), error = %e, "an append failed and could not be undone; the next append cuts the torn line")
        }
    }
}

/// The length of `f` once it ends at a whole line: a tail without its newline (a crash, or a
/// roll-back that failed) is cut off first.
fn clean_tail(log: &Path, f: &std::fs::File) -> Result<u64, Error> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata().map_err(io(log))?.len();
    if len == 0 {
        return Ok(0);
    }
    let mut last = [0u8; 1];
    f.read_exact_at(&mut last, len - 1).map_err(io(log))?;
    if last[0] == b'\n' {
        return Ok(len);
    }
    // Rare: find the last newline, reading back in blocks.
    let mut end = len;
    let mut block = vec![0u8; 64 * 1024];
    let keep = loop {
        let start = end.saturating_sub(block.len() as u64);
        let n = (end - start) as usize;
        f.read_exact_at(&mut block[..n], start).map_err(io(log))?;
        if let Some(i) = block[..n].iter().rposition(|&b| b == b'\n') {
            break start + i as u64 + 1;
        }
        if start == 0 {
            break 0;
        }
        end = start;
    };
    tracing::warn!(file = %log.display(), cut = len - keep, "cut a torn last line before appending");
    f.set_len(keep).map_err(io(log))?;
    Ok(keep)
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
        Err(Error::Refused(format!("{id:?} is not a conversation id")))
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Store(format!("{}: {e}", path.display()))
}

impl Conversations {
    pub fn new(dir: PathBuf) -> Conversations {
        Conversations {
            dir,
            journal: Journal::start(),
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
        let id = crate::app::random(12)?;
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
        use crate::runs::{Outcome, RunBody};
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

fn markdown(meta: &Meta, records: &[Record]) -> String {
    use crate::runs::RunBody;
    use edge_sandbox::{BlockKind, Event};
    use std::collections::HashMap;
    let mut out = format!("# {}\n", meta.title);
    let mut kinds: HashMap<(String, u32), BlockKind> = HashMap::new();
    let mut current: Option<(String, u32)> = None;
    for r in records {
        let run = r.run_id.clone().unwrap_or_default();
        let event = match &r.frame {
            Some(RunBody::Event { event }) => Some(event),
            _ => None,
        };
        match event {
            None if r.role == "user" => {
                out.push_str(&format!("\n## {} ({})\n\n{}\n", r.user, r.ts, r.content));
            }
            None => {}
            Some(Event::BlockStart { block, kind, tool }) => {
                kinds.insert((run.clone(), *block), *kind);
                current = Some((run.clone(), *block));
                match kind {
                    BlockKind::ToolUse => {
                        let name = tool.as_ref().map(|t| t.name.as_str()).unwrap_or("tool");
                        out.push_str(&format!("\n> **{name}** `"));
                    }
                    BlockKind::Text => {
                        if !out.ends_with("\n\n") {
                            out.push('\n');
                        }
                    }
                    BlockKind::Thinking => {}
                }
            }
            Some(Event::Delta { block, text }) => match kinds.get(&(run.clone(), *block)) {
                Some(BlockKind::Text) | Some(BlockKind::ToolUse) => out.push_str(text),
                _ => {}
            },
            Some(Event::BlockStop { block }) => {
                if kinds.get(&(run.clone(), *block)) == Some(&BlockKind::ToolUse) {
                    out.push_str("`\n");
                }
                current = None;
            }
            Some(Event::ToolResult { is_error, .. }) if *is_error => {
                out.push_str("> (the tool reported an error)\n");
            }
            Some(_) => {}
        }
    }
    let _ = current;
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// Appends whole lines and waits until they are on disk; on failure the file is as before.
fn append_to(log: &Path, records: &[Record]) -> Result<(), Error> {
    let buf = lines(records)?;
    let (f, before) = write_whole(log, &buf)?;
    f.sync_data().map_err(|e| {
        roll_back(log, &f, before);
        io(log)(e)
    })
}

fn lines(records: &[Record]) -> Result<Vec<u8>, Error> {
    let mut buf = Vec::new();
    for r in records {
        serde_json::to_writer(&mut buf, r).map_err(|e| Error::Internal(e.to_string()))?;
        buf.push(b'\n');
    }
    Ok(buf)
}

/// Every whole record of a file. A torn tail (no newline: a crash mid-append) is cut off, and
/// the cut made durable, so the next append starts on a clean line. A damaged line in the
/// middle never costs the records after it: it is skipped, and a record glued to the end of a
/// torn line (as an older edge could leave after a full disk) is read from where it starts.
fn read_repairing(log: &Path) -> Result<Vec<Record>, Error> {
    let bytes = std::fs::read(log).map_err(io(log))?;
    let mut records = Vec::new();
    let mut pos = 0usize;
    let mut damaged = 0usize;
    while pos < bytes.len() {
        let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let line = &bytes[pos..pos + nl];
        pos += nl + 1;
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Record>(line) {
            Ok(r) => records.push(r),
            Err(_) => {
                damaged += 1;
                if let Some(r) = record_within(line) {
                    records.push(r);
                }
            }
        }
    }
    if damaged > 0 {
        tracing::warn!(file = %log.display(), lines = damaged, "conversation file has damaged lines; the records around them are kept");
    }
    if pos < bytes.len() {
        tracing::warn!(
            file = %log.display(),
            cut = bytes.len() - pos,
            "conversation file ended in a torn line; cut back to the last whole line"
        );
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(log)
            .map_err(io(log))?;
        f.set_len(pos as u64).map_err(io(log))?;
        f.sync_all().map_err(io(log))?;
    }
    Ok(records)
}

/// The whole record at the end of a damaged line, if one starts there: every record is written
/// with `ts` first, so one begins at a `{"ts":` and runs to the end of the line.
fn record_within(line: &[u8]) -> Option<Record> {
    const START: &[u8] = b"{\"ts\":";
    (1..line.len().saturating_sub(START.len() - 1))
        .filter(|&i| line[i..].starts_with(START))
        .find_map(|i| serde_json::from_slice::<Record>(&line[i..]).ok())
}

/// Write to a temporary file, fsync, rename over `path`, fsync the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("meta")
    ));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_sandbox::{BlockKind, Event};

    fn rec(role: &str, content: &str, event: Option<Event>) -> Record {
        Record {
            ts: now_rfc3339(),
            user: "alice".into(),
            role: role.into(),
            content: content.into(),
            run_id: event.as_ref().map(|_| "r1".into()),
            seq: None,
            frame: event.map(|event| crate::runs::RunBody::Event { event }),
        }
    }

    #[test]
    fn a_transcript_leaves_out_the_current_run_and_keeps_the_newest_turns() {
        let dir = tempfile::tempdir().unwrap();
        let c = Conversations::new(dir.path().to_path_buf());
        let m = c.create("alice", "t").unwrap();
        let turn = |run: &str, text: &str| {
            vec![
                Record {
                    run_id: Some(run.into()),
                    ..rec("user", text, None)
                },
                Record {
                    run_id: Some(run.into()),
                    ..rec(
                        "assistant",
                        "",
                        Some(Event::BlockStart {
                            block: 0,
                            kind: BlockKind::Text,
                            tool: None,
                        }),
                    )
                },
                Record {
                    run_id: Some(run.into()),
                    ..rec(
                        "assistant",
                        "",
                        Some(Event::Delta {
                            block: 0,
                            text: format!("answer to {text}"),
                        }),
                    )
                },
            ]
        };
        for (run, text) in [("r1", "één"), ("r2", "two"), ("r3", "now")] {
            c.append("alice", &m.id, &turn(run, text)).unwrap();
        }
        let all = c.transcript_before("alice", &m.id, "r3", 100_000).unwrap();
        assert!(
            all.contains("één") && all.contains("answer to two"),
            "{all}"
        );
        assert!(
            !all.contains("now"),
            "the current run is not history: {all}"
        );
        // Cut to the newest part, at a line, saying so.
        let short = c.transcript_before("alice", &m.id, "r3", 60).unwrap();
        assert!(
            short.len() <= 60 + "[... earlier turns left out ...]\n".len(),
            "{short}"
        );
        assert!(
            short.starts_with("[... earlier turns left out ...]\n"),
            "{short}"
        );
        assert!(
            short.contains("answer to two") && !short.contains("één"),
            "{short}"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T",
            "{t}"
        );
    }

    #[test]
    fn users_see_only_their_own_conversations() {
        let dir = tempfile::tempdir().unwrap();
        let c = Conversations::new(dir.path().to_path_buf());
        let a = c.create("alice", "first").unwrap();
        c.create("bob", "bob's").unwrap();
        assert_eq!(c.list("alice").unwrap().len(), 1);
        assert!(
            c.open("bob", &a.id).unwrap().is_none(),
            "bob cannot open alice's"
        );
        assert!(!c.delete("bob", &a.id).unwrap());
        assert!(c.open("alice", &a.id).unwrap().is_some());
        assert!(c.open("alice", "../x").is_err());
        c.rename("alice", &a.id, "renamed").unwrap();
        assert_eq!(c.list("alice").unwrap()[0].title, "renamed");
        assert!(c.delete("alice", &a.id).unwrap());
        assert!(c.list("alice").unwrap().is_empty());
    }

    #[test]
    fn a_torn_last_line_is_cut_back_and_nothing_before_it_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let c = Conversations::new(dir.path().to_path_buf());
        let m = c.create("alice", "t").unwrap();
        c.append(
            "alice",
            &m.id,
            &[rec("user", "hello", None), rec("user", "again", None)],
        )
        .unwrap();
        let (log, _) = c.paths("alice", &m.id).unwrap();
        // A crash in the middle of the next append.
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(br#"{"ts":"2026-11-23T00:00:00Z","user":"alice","ro"#)
            .unwrap();
        drop(f);
        let (_, records) = c.open("alice", &m.id).unwrap().unwrap();
        assert_eq!(records.len(), 2);
        assert!(std::fs::read(&log).unwrap().ends_with(b"\n"));
        c.append("alice", &m.id, &[rec("user", "after", None)])
            .unwrap();
        let (_, records) = c.open("alice", &m.id).unwrap().unwrap();
        assert_eq!(
            records
                .iter()
                .map(|r| r.content.as_str())
                .collect::<Vec<_>>(),
            ["hello", "again", "after"]
        );
    }

    /// A tmpfs of `size` mounted on a fresh directory, unmounted on drop; `None` where this
    /// process may not mount (not root).
    struct Tmpfs(tempfile::TempDir);
    impl Tmpfs {
        fn mount(size: &str) -> Option<Tmpfs> {
            let dir = tempfile::tempdir().unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let root = std::fs::read_to_string("/proc/self/status")
                    .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")));
                assert!(!root, "root could not mount a tmpfs for the full-disk test");
                eprintln!("not root: the full-disk test needs a tmpfs and is skipped");
                return None;
            }
            Some(Tmpfs(dir))
        }
    }
    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }

    #[tokio::test]
    async fn a_disk_that_fills_mid_run_loses_no_complete_record() {
        let Some(fs) = Tmpfs::mount("256k") else {
            return;
        };
        let c = Conversations::new(fs.0.path().join("convs"));
        let m = c.create("alice", "t").unwrap();
        // Fill most of the disk, so the run's appends hit ENOSPC part-way.
        let filler = fs.0.path().join("filler");
        std::fs::write(&filler, vec![0u8; 200 * 1024]).unwrap();
        let big = "x".repeat(700);
        let (mut ok, mut failed) = (Vec::new(), 0);
        for i in 0..200 {
            let r = rec("assistant", &format!("{i} {big}"), None);
            // Both paths: the journal (runs) and the direct append.
            let res = if i % 2 == 0 {
                c.append_shared("alice", &m.id, std::slice::from_ref(&r))
                    .await
            } else {
                c.append("alice", &m.id, std::slice::from_ref(&r))
            };
            match res {
                Ok(()) => ok.push(i),
                Err(_) => failed += 1,
            }
        }
        assert!(failed > 0, "the disk never filled");
        // Every failed append left the file at a whole line.
        let (log, _) = c.paths("alice", &m.id).unwrap();
        let bytes = std::fs::read(&log).unwrap();
        assert!(
            bytes.ends_with(b"\n"),
            "a failed append left a partial line"
        );
        // Space comes back; the run goes on and ends.
        std::fs::remove_file(&filler).unwrap();
        let mut after = Vec::new();
        for i in 200..560 {
            let r = rec("assistant", &format!("{i} short"), None);
            c.append_shared("alice", &m.id, &[r]).await.unwrap();
            after.push(i);
        }
        c.append("alice", &m.id, &[rec("system", "end", None)])
            .unwrap();
        let (_, records) = c.open("alice", &m.id).unwrap().unwrap();
        let got: Vec<String> = records.iter().map(|r| r.content.clone()).collect();
        let want: Vec<String> = ok
            .iter()
            .map(|i| format!("{i} {big}"))
            .chain(after.iter().map(|i| format!("{i} short")))
            .chain(["end".to_string()])
            .collect();
        assert_eq!(got.len(), want.len(), "records were lost or invented");
        assert!(got == want, "the records differ from those acknowledged");
    }

    #[test]
    fn a_damaged_line_costs_no_record_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let c = Conversations::new(dir.path().to_path_buf());
        let m = c.create("alice", "t").unwrap();
        c.append("alice", &m.id, &[rec("user", "one", None)])
            .unwrap();
        let (log, _) = c.paths("alice", &m.id).unwrap();
        // What an older edge left after a full disk: a partial line, the next record glued to
        // it, then more records; and a line damaged some other way.
        let whole = |content: &str| {
            let mut l = serde_json::to_vec(&rec("user", content, None)).unwrap();
            l.push(b'\n');
            l
        };
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(br#"{"ts":"2026-11-23T00:00:00Z","user":"al"#)
            .unwrap();
        f.write_all(&whole("two")).unwrap();
        f.write_all(b"not json at all\n").unwrap();
        f.write_all(&whole("three")).unwrap();
        f.write_all(br#"{"ts":"torn"#).unwrap();
        drop(f);
        let (_, records) = c.open("alice", &m.id).unwrap().unwrap();
        let got: Vec<&str> = records.iter().map(|r| r.content.as_str()).collect();
        assert_eq!(got, ["one", "two", "three"]);
        c.append("alice", &m.id, &[rec("user", "four", None)])
            .unwrap();
        let (_, records) = c.open("alice", &m.id).unwrap().unwrap();
        assert_eq!(records.len(), 4);
        assert_eq!(records[3].content, "four");
    }

    #[test]
    fn export_as_markdown() {
        let dir = tempfile::tempdir().unwrap();
        let c = Conversations::new(dir.path().to_path_buf());
        let m = c.create("alice", "Fix the test").unwrap();
        c.append(
            "alice",
            &m.id,
            &[
                rec("user", "why does it fail?", None),
                rec(
                    "assistant",
                    "",
                    Some(Event::BlockStart {
                        block: 0,
                        kind: BlockKind::Text,
                        tool: None,
                    }),
                ),
                rec(
                    "assistant",
                    "",
                    Some(Event::Delta {
                        block: 0,
                        text: "Let me ".into(),
                    }),
                ),
                rec(
                    "assistant",
                    "",
                    Some(Event::Delta {
                        block: 0,
                        text: "look.".into(),
                    }),
                ),
                rec("assistant", "", Some(Event::BlockStop { block: 0 })),
                rec(
                    "assistant",
                    "",
                    Some(Event::BlockStart {
                        block: 1,
                        kind: BlockKind::ToolUse,
                        tool: Some(edge_sandbox::ToolRef {
                            id: "t".into(),
                            name: "Bash".into(),
                        }),
                    }),
                ),
                rec(
                    "assistant",
                    "",
                    Some(Event::Delta {
                        block: 1,
                        text: "{\"command\":\"ls\"}".into(),
                    }),
                ),
                rec("assistant", "", Some(Event::BlockStop { block: 1 })),
            ],
        )
        .unwrap();
        let md = c.export_markdown("alice", &m.id).unwrap().unwrap();
        assert!(md.starts_with("# Fix the test\n"), "{md}");
        assert!(md.contains("## alice ("), "{md}");
        assert!(md.contains("why does it fail?"), "{md}");
        assert!(md.contains("Let me look."), "{md}");
        assert!(md.contains("> **Bash** `{\"command\":\"ls\"}`"), "{md}");
    }
}
