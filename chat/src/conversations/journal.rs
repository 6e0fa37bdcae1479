//! The journal thread: appends of every conversation, with group commit.

use super::wal::Wal;
use super::*;
use std::time::Duration;

/// The one thread that appends run events for every conversation, with group commit: appends
/// that arrive while it is syncing are written together, and each file they touch is synced
/// once for all of them. A caller waits (without holding an async thread) until its lines are
/// on disk. With 100 runs streaming, this turns 100 separate `fdatasync`s per round into one
/// round of writes whose syncs share the file system's journal commit.
#[derive(Debug, Clone)]
pub(super) struct Journal {
    pub(super) tx: std::sync::mpsc::Sender<Append>,
}

pub(super) type Waiter = tokio::sync::oneshot::Sender<Result<(), Error>>;

#[derive(Debug)]
pub(super) struct Append {
    pub(super) log: PathBuf,
    pub(super) buf: Vec<u8>,
    pub(super) done: Waiter,
}

impl Journal {
    /// Starts the thread, with its write-ahead log in `root` (replayed first if a crash left
    /// entries in it). Without the log (another process holds it, or it cannot be opened),
    /// each batch syncs every file it touched.
    pub(super) fn start(root: &Path) -> Journal {
        let mut wal = match Wal::open(root) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "conversation journal: no write-ahead log; each append syncs its own file");
                None
            }
        };
        let (tx, rx) = std::sync::mpsc::channel::<Append>();
        let spawned = std::thread::Builder::new()
            .name("edge-journal".into())
            .spawn(move || {
                use std::sync::mpsc::RecvTimeoutError;
                // Ends when every `Conversations` is gone (the log's last checkpoint is in its
                // drop).
                loop {
                    let idle = wal.as_ref().is_none_or(|w| w.is_empty());
                    let first = if idle {
                        rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
                    } else {
                        rx.recv_timeout(Duration::from_secs(1))
                    };
                    // A second without appends: the files are synced and the log emptied.
                    let quiet = matches!(first, Err(RecvTimeoutError::Timeout));
                    match first {
                        Ok(first) => {
                            let mut batch = vec![first];
                            batch.extend(rx.try_iter());
                            commit(batch, wal.as_mut());
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                    if let Some(w) = wal.as_mut() {
                        if w.wants_checkpoint() || quiet {
                            if let Err(e) = w.checkpoint() {
                                tracing::error!(error = %e, "conversation journal: a checkpoint failed; the log keeps its entries");
                            }
                        }
                    }
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

/// Writes a batch, file by file in arrival order; then makes it durable: with the log, one
/// entry per file and one sync of the log; without, one sync per file.
pub(super) fn commit(batch: Vec<Append>, wal: Option<&mut Wal>) {
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
    // A file whose write or sync fails is cut back to where it was, so it always ends at its
    // last complete record.
    let mut written = Vec::with_capacity(files.len());
    for (log, buf, waiters) in files {
        match write_whole(&log, &buf) {
            Ok((f, before)) => written.push((log, f, before, buf, waiters)),
            Err(e) => {
                for w in waiters {
                    let _ = w.send(Err(e.clone()));
                }
            }
        }
    }
    let Some(wal) = wal else {
        for (log, f, before, _, waiters) in written {
            let r = f.sync_data().map_err(|e| {
                roll_back(&log, &f, before);
                io(&log)(e)
            });
            for w in waiters {
                let _ = w.send(r.clone());
            }
        }
        return;
    };
    let entries: Vec<(&Path, u64, &[u8])> = written
        .iter()
        .map(|(log, _, before, buf, _)| (log.as_path(), *before, buf.as_slice()))
        .collect();
    let r = wal.log(&entries);
    drop(entries);
    for (log, f, before, _, waiters) in written {
        let r = match &r {
            Ok(()) => Ok(()),
            Err(e) => {
                roll_back(&log, &f, before);
                Err(Error::Store(format!("the conversation journal's log: {e}")))
            }
        };
        for w in waiters {
            let _ = w.send(r.clone());
        }
    }
}

/// Appends `buf` (whole lines) to `log`, after cutting a torn tail a crash may have left. On a
/// failed write (a full disk), the file is cut back to its length before: no partial line is
/// ever left for later appends to follow. Returns the file and that length, for a failed sync.
pub(super) fn write_whole(log: &Path, buf: &[u8]) -> Result<(std::fs::File, u64), Error> {
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
pub(super) fn roll_back(log: &Path, f: &std::fs::File, len: u64) {
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
pub(super) fn clean_tail(log: &Path, f: &std::fs::File) -> Result<u64, Error> {
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
