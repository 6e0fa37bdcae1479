//! The journal's write-ahead log: what makes a batch of appends durable with one `fdatasync`
//! instead of one per conversation file.
//!
//! A batch is written to the conversation files (page cache only), then to `journal.wal` as one
//! entry per file (where in the file it went, and the bytes), and the log alone is synced; then
//! the appends are acknowledged. The conversation files are synced later, all at once, at a
//! checkpoint (the log past 8 MiB, a second without appends, or shutdown), after which the log
//! is emptied. After a crash, the log's entries are written again at their places before
//! anything reads a conversation, so every acknowledged append is there whole.
//!
//! An entry is a header line `{"f":PATH,"at":OFFSET,"len":N,"sum":HEX}` and then the N bytes;
//! `sum` covers the path, the offset and the bytes, so a torn or half-written entry at the end
//! of the log (a crash while writing it: never acknowledged) is recognised and ignored. The log
//! is locked (`flock`) by the edge that uses it; a second process on the same directory syncs
//! each file itself instead.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The log is emptied once it grows past this.
const CHECKPOINT_AT: u64 = 8 << 20;

#[derive(Serialize, Deserialize)]
struct Header {
    f: String,
    at: u64,
    len: u64,
    sum: String,
}

fn sum(path: &str, at: u64, bytes: &[u8]) -> String {
    let mut c = ring::digest::Context::new(&ring::digest::SHA256);
    c.update(path.as_bytes());
    c.update(&[0]);
    c.update(&at.to_le_bytes());
    c.update(bytes);
    c.finish().as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Debug)]
pub(super) struct Wal {
    root: PathBuf,
    file: std::fs::File,
    len: u64,
    /// Conversation files written since the last checkpoint (not yet synced themselves).
    dirty: HashSet<PathBuf>,
    /// Off in tests that stop as a crash would.
    checkpoint_on_drop: bool,
}

impl Wal {
    /// Opens (and locks) `root/journal.wal`, and replays what a crash left in it.
    pub(super) fn open(root: &Path) -> Result<Wal, String> {
        let path = root.join("journal.wal");
        let e = |e: std::io::Error| format!("{}: {e}", path.display());
        std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(e)?;
        file.try_lock()
            .map_err(|err| format!("{}: in use by another process ({err})", path.display()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(e)?;
        let mut wal = Wal {
            root: root.to_path_buf(),
            file,
            len: bytes.len() as u64,
            dirty: HashSet::new(),
            checkpoint_on_drop: true,
        };
        if !bytes.is_empty() {
            let applied = wal.replay(&bytes);
            tracing::info!(
                entries = applied,
                "conversation journal: appends a stop left unsynced were written again"
            );
            wal.checkpoint().map_err(e)?;
        }
        Ok(wal)
    }

    /// Writes every whole entry of `bytes` at its place; returns how many.
    fn replay(&mut self, mut bytes: &[u8]) -> usize {
        let mut applied = 0;
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            let Ok(h) = serde_json::from_slice::<Header>(&bytes[..nl]) else {
                break;
            };
            let body = &bytes[nl + 1..];
            let Some(data) = body.get(..h.len as usize) else {
                break;
            };
            if sum(&h.f, h.at, data) != h.sum {
                break;
            }
            bytes = &body[h.len as usize..];
            let rel = Path::new(&h.f);
            if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
                continue;
            }
            let path = self.root.join(rel);
            match std::fs::OpenOptions::new().write(true).open(&path) {
                // Deleted since: nothing to bring back.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "conversation journal: could not write an entry again")
                }
                Ok(f) => {
                    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                    if len < h.at {
                        // Cut back below the entry since (it was rolled back): left out, or
                        // it would leave a hole.
                        tracing::warn!(file = %path.display(), at = h.at, len, "conversation journal: an entry past the end of its file is left out");
                        continue;
                    }
                    match f.write_all_at(data, h.at) {
                        Ok(()) => {
                            applied += 1;
                            self.dirty.insert(path);
                        }
                        Err(e) => {
                            tracing::error!(file = %path.display(), error = %e, "conversation journal: could not write an entry again")
                        }
                    }
                }
            }
        }
        if !bytes.is_empty() {
            tracing::warn!(
                bytes = bytes.len(),
                "conversation journal: a torn entry at the end (never acknowledged) is left out"
            );
        }
        applied
    }

    /// Logs where each written file's bytes went, and syncs the log: once this returns, the
    /// appends are durable. On failure the log is cut back, and the caller undoes the writes.
    pub(super) fn log(&mut self, written: &[(&Path, u64, &[u8])]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(written.iter().map(|w| w.2.len() + 128).sum());
        for (path, at, data) in written {
            let f = path
                .strip_prefix(&self.root)
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned();
            let h = Header {
                sum: sum(&f, *at, data),
                f,
                at: *at,
                len: data.len() as u64,
            };
            serde_json::to_writer(&mut buf, &h).map_err(std::io::Error::other)?;
            buf.push(b'\n');
            buf.extend_from_slice(data);
        }
        let r = self
            .file
            .write_all_at(&buf, self.len)
            .and_then(|()| self.file.sync_data());
        match r {
            Ok(()) => {
                self.len += buf.len() as u64;
                for (path, _, _) in written {
                    self.dirty.insert(path.to_path_buf());
                }
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }

    pub(super) fn wants_checkpoint(&self) -> bool {
        self.len > CHECKPOINT_AT
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0 && self.dirty.is_empty()
    }

    /// Syncs every conversation file written since the last checkpoint, then empties the log.
    /// A file that cannot be synced keeps the log as it is (its entries are still needed).
    pub(super) fn checkpoint(&mut self) -> std::io::Result<()> {
        for path in std::mem::take(&mut self.dirty) {
            let synced = std::fs::File::open(&path).and_then(|f| f.sync_data());
            match synced {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.dirty.insert(path);
                    return Err(e);
                }
            }
        }
        self.file.set_len(0)?;
        self.file.sync_data()?;
        self.len = 0;
        Ok(())
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if !self.checkpoint_on_drop {
            return;
        }
        if let Err(e) = self.checkpoint() {
            tracing::error!(error = %e, "conversation journal: the last checkpoint failed; the next start writes the log's entries again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stops as a crash would: the lock goes with the process, no checkpoint.
    fn crash(mut w: Wal) {
        w.checkpoint_on_drop = false;
    }

    fn wal_bytes(root: &Path) -> Vec<u8> {
        std::fs::read(root.join("journal.wal")).unwrap()
    }

    #[test]
    fn a_crash_before_the_files_reach_the_disk_is_repaired_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let conv = root.join("u").join("c.ndjson");
        std::fs::create_dir_all(conv.parent().unwrap()).unwrap();
        std::fs::write(&conv, b"{\"a\":1}\n").unwrap();
        let logged;
        {
            let mut w = Wal::open(root).unwrap();
            w.log(&[(&conv, 8, b"{\"b\":2}\n")]).unwrap();
            w.log(&[(&conv, 16, b"{\"c\":3}\n")]).unwrap();
            logged = wal_bytes(root);
            crash(w);
        }
        // The appends never reached the file; the log has them, then a torn entry.
        let mut torn = logged.clone();
        torn.extend_from_slice(
            b"{\"f\":\"u/c.ndjson\",\"at\":24,\"len\":8,\"sum\":\"00\"}\n{\"d\"",
        );
        std::fs::write(root.join("journal.wal"), &torn).unwrap();
        let w = Wal::open(root).unwrap();
        assert_eq!(
            std::fs::read_to_string(&conv).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n"
        );
        // Emptied once the files are synced.
        assert!(w.is_empty());
        assert_eq!(wal_bytes(root), b"");
    }

    #[test]
    fn an_entry_whose_bytes_do_not_match_its_sum_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let conv = root.join("c.ndjson");
        std::fs::write(&conv, b"").unwrap();
        {
            let mut w = Wal::open(root).unwrap();
            w.log(&[(&conv, 0, b"{\"b\":2}\n")]).unwrap();
            crash(w);
        }
        let mut bytes = wal_bytes(root);
        let n = bytes.len();
        bytes[n - 3] = b'9'; // the data, half-written
        std::fs::write(root.join("journal.wal"), &bytes).unwrap();
        drop(Wal::open(root).unwrap());
        assert_eq!(std::fs::read_to_string(&conv).unwrap(), "");
    }

    #[test]
    fn a_deleted_conversation_is_not_brought_back_and_paths_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("convs");
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"x\n").unwrap();
        let conv = root.join("c.ndjson");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(&conv, b"").unwrap();
        {
            let mut w = Wal::open(&root).unwrap();
            w.log(&[(&conv, 0, b"1\n"), (&outside, 2, b"evil\n")])
                .unwrap();
            crash(w);
        }
        std::fs::remove_file(&conv).unwrap();
        drop(Wal::open(&root).unwrap());
        assert!(!conv.exists());
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "x\n");
    }

    #[test]
    fn a_second_process_on_the_same_directory_does_not_share_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Wal::open(dir.path()).unwrap();
        let e = Wal::open(dir.path()).unwrap_err();
        assert!(e.contains("journal.wal: in use"), "{e}");
    }
}
