//! The access log: one line per request, off the request path.
//!
//! A request formats its line into a buffer of its thread (reused, so nothing is allocated per
//! request), then appends it to a shared batch under a short lock. One writer thread takes the
//! batch whole every 100 ms, or sooner when it passes 64 KiB, and writes it with one system call
//! (to stderr in pieces of whole lines that fit a pipe's atomic write). A request never waits on
//! the disk: when the batch is full (4 MiB: the writer is stuck, the disk is full) its line is
//! dropped and counted (`edge_access_log_dropped_total`). A file target is reopened on
//! [`AccessLog::reopen`] (SIGUSR1, for logrotate); lines already taken go to the old file.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A batch is written when it reaches this size, or after [`FLUSH_EVERY`].
const FLUSH_AT: usize = 64 * 1024;
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Lines beyond this many pending bytes are dropped (and counted).
const CAP: usize = 4 * 1024 * 1024;
/// Writes to stderr stay within a pipe's atomic write (`PIPE_BUF`), so the process' other log
/// lines never land inside an access line.
const PIPE_BUF: usize = 4096;

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sink {
    Stderr,
    File(PathBuf),
}

/// What one request's line says.
pub(crate) struct Line<'a> {
    /// The client's address, as text (rendered once per connection).
    pub client: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub micros: u64,
    pub project: &'a str,
    pub mount: &'a str,
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// The writer waits with no timeout (nothing pending); the next line wakes it.
    writer_idle: bool,
    stop: bool,
    reopen: bool,
    /// Someone waits in [`AccessLog::flush`]: write now, even a small batch.
    flush: bool,
    /// Batches taken so far (the writer numbers them as it takes them).
    taken: u64,
    /// The number of the last batch written.
    done: u64,
}

struct Inner {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// The writer finished a batch (for [`AccessLog::flush`]).
    written: Condvar,
    dropped: Arc<AtomicU64>,
    json: bool,
    sink: Sink,
}

/// A running access log (a writer thread). Dropping it writes what is pending and stops the
/// thread.
pub(crate) struct AccessLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("sink", &self.inner.sink)
            .field("json", &self.inner.json)
            .finish_non_exhaustive()
    }
}

impl Drop for AccessLog {
    /// The writer writes what is pending and ends; nobody waits for it (a reload must not hang
    /// on a stuck disk).
    fn drop(&mut self) {
        let mut p = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.stop = true;
        drop(p);
        self.inner.wake.notify_one();
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

impl AccessLog {
    /// Starts the writer. A file target is opened (created, appended to) now, so a path that
    /// cannot be written is an error at start or reload, not a silent loss later.
    /// `dropped` counts lines lost (shared with the metrics, so it outlives a reload).
    pub fn start(sink: Sink, json: bool, dropped: Arc<AtomicU64>) -> Result<AccessLog, String> {
        let file = match &sink {
            Sink::Stderr => None,
            Sink::File(p) => {
                Some(open(p).map_err(|e| format!("log.access_file {}: {e}", p.display()))?)
            }
        };
        let inner = Arc::new(Inner {
            pending: Mutex::new(Pending {
                buf: Vec::with_capacity(FLUSH_AT * 2),
                ..Pending::default()
            }),
            wake: Condvar::new(),
            written: Condvar::new(),
            dropped,
            json,
            sink,
        });
        let w = inner.clone();
        std::thread::Builder::new()
            .name("edge-access-log".into())
            .spawn(move || writer(&w, file))
            .map_err(|e| format!("the access log's writer thread: {e}"))?;
        Ok(AccessLog { inner })
    }

    pub fn sink(&self) -> &Sink {
        &self.inner.sink
    }

    pub fn json(&self) -> bool {
        self.inner.json
    }

    /// Logs one request.
    pub(crate) fn log(&self, l: &Line<'_>) {
        thread_local! {
            static SCRATCH: RefCell<(Vec<u8>, Stamp)> = RefCell::new((Vec::with_capacity(512), Stamp::default()));
        }
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let (buf, stamp) = &mut *s;
            buf.clear();
            format_line(buf, stamp, l, self.inner.json);
            self.push(buf);
        });
    }

    fn push(&self, line: &[u8]) {
        let mut p = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.buf.len() + line.len() > CAP {
            drop(p);
            self.inner.dropped.fetch_add(1, Relaxed);
            return;
        }
        p.buf.extend_from_slice(line);
        let wake = if p.writer_idle {
            p.writer_idle = false;
            true
        } else {
            p.buf.len() >= FLUSH_AT && p.buf.len() - line.len() < FLUSH_AT
        };
        drop(p);
        if wake {
            self.inner.wake.notify_one();
        }
    }

    /// Reopens a file target (after logrotate moved it); what is pending goes to the old file.
    pub fn reopen(&self) {
        let mut p = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.reopen = true;
        p.writer_idle = false;
        drop(p);
        self.inner.wake.notify_one();
    }

    /// Writes what is pending now and waits (at most `timeout`) until it is written; false if
    /// it was not written in time.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut p = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        // What is pending now goes out in the next batch taken.
        let want = p.taken + 1;
        p.flush = true;
        p.writer_idle = false;
        self.inner.wake.notify_one();
        while p.done < want {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            p = self
                .inner
                .written
                .wait_timeout(p, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

fn writer(inner: &Inner, mut file: Option<File>) {
    let mut out: Vec<u8> = Vec::with_capacity(FLUSH_AT * 2);
    let mut failing = false;
    loop {
        let (batch, stop, reopen) = {
            let mut p = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            let mut since: Option<std::time::Instant> = None;
            loop {
                if p.stop || p.reopen || p.flush || p.buf.len() >= FLUSH_AT {
                    break;
                }
                if p.buf.is_empty() {
                    // Nothing to write: sleep until a line (or a flush, a reopen, a stop) comes.
                    p.writer_idle = true;
                    p = inner.wake.wait(p).unwrap_or_else(|e| e.into_inner());
                    since = None;
                    continue;
                }
                let started = *since.get_or_insert_with(std::time::Instant::now);
                let left = FLUSH_EVERY.saturating_sub(started.elapsed());
                if left.is_zero() {
                    break;
                }
                p = inner
                    .wake
                    .wait_timeout(p, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            p.writer_idle = false;
            p.flush = false;
            p.taken += 1;
            std::mem::swap(&mut p.buf, &mut out);
            (p.taken, p.stop, std::mem::take(&mut p.reopen))
        };
        if !out.is_empty() {
            let r = match file.as_mut() {
                Some(f) => f.write_all(&out),
                None => write_stderr(&out),
            };
            match r {
                Ok(()) => failing = false,
                Err(e) => {
                    let lost = out.iter().filter(|b| **b == b'\n').count() as u64;
                    inner.dropped.fetch_add(lost, Relaxed);
                    if !failing {
                        tracing::error!(error = %e, sink = ?inner.sink, "the access log cannot be written; lines are dropped and counted until it can");
                        failing = true;
                    }
                }
            }
            out.clear();
            if out.capacity() > CAP {
                out.shrink_to(FLUSH_AT * 2);
            }
        }
        if reopen {
            if let Sink::File(path) = &inner.sink {
                match open(path) {
                    Ok(f) => {
                        file = Some(f);
                        tracing::info!(path = %path.display(), "reopened the access log");
                    }
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e, "could not reopen the access log; writing on to the old file")
                    }
                }
            }
        }
        inner.pending.lock().unwrap_or_else(|e| e.into_inner()).done = batch;
        inner.written.notify_all();
        if stop {
            return;
        }
    }
}

/// stderr in pieces of whole lines of at most `PIPE_BUF` bytes (a longer line goes alone).
fn write_stderr(mut out: &[u8]) -> std::io::Result<()> {
    let mut err = std::io::stderr().lock();
    while !out.is_empty() {
        let mut end = out.len().min(PIPE_BUF);
        if end < out.len() {
            end = match out[..end].iter().rposition(|b| *b == b'\n') {
                Some(i) => i + 1,
                None => out
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(out.len(), |i| i + 1),
            };
        }
        err.write_all(&out[..end])?;
        out = &out[end..];
    }
    err.flush()
}

/// The current second, formatted once per second per thread.
#[derive(Default)]
struct Stamp {
    secs: u64,
    text: [u8; 19],
}

impl Stamp {
    /// `2026-12-04T21:05:08.123Z`.
    fn write(&mut self, buf: &mut Vec<u8>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let secs = now.as_secs();
        if secs != self.secs || self.text[0] == 0 {
            self.secs = secs;
            let t = time::OffsetDateTime::from_unix_timestamp(secs as i64)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let mut c = std::io::Cursor::new(&mut self.text[..]);
            let _ = write!(
                c,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
        }
        buf.extend_from_slice(&self.text);
        let ms = now.subsec_millis();
        buf.extend_from_slice(&[
            b'.',
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
            b'Z',
        ]);
    }
}

/// A field's value.
enum Val<'a> {
    Str(&'a str),
    Num(u64),
}

fn format_line(buf: &mut Vec<u8>, stamp: &mut Stamp, l: &Line<'_>, json: bool) {
    let fields = [
        ("client", Val::Str(l.client)),
        ("method", Val::Str(l.method)),
        ("host", Val::Str(l.host)),
        ("path", Val::Str(l.path)),
        ("status", Val::Num(l.status.into())),
        ("micros", Val::Num(l.micros)),
    ];
    let mut n = itoa::Buffer::new();
    if json {
        buf.extend_from_slice(b"{\"timestamp\":\"");
        stamp.write(buf);
        buf.extend_from_slice(b"\",\"target\":\"edge::access\"");
    } else {
        stamp.write(buf);
        buf.extend_from_slice(b" edge::access");
    }
    for (key, v) in &fields {
        buf.extend_from_slice(if json { b",\"" } else { b" " });
        buf.extend_from_slice(key.as_bytes());
        buf.extend_from_slice(if json { b"\":" } else { b"=" });
        match v {
            Val::Num(x) => buf.extend_from_slice(n.format(*x).as_bytes()),
            Val::Str(s) if json => json_str(buf, s),
            Val::Str(s) => text_val(buf, s),
        }
    }
    // `route=project/mount`: both parts are config names, escaped all the same.
    if json {
        buf.extend_from_slice(b",\"route\":\"");
        json_body(buf, l.project);
        buf.push(b'/');
        json_body(buf, l.mount);
        buf.extend_from_slice(b"\"}\n");
    } else {
        buf.extend_from_slice(b" route=");
        text_val(buf, l.project);
        buf.push(b'/');
        text_val(buf, l.mount);
        buf.push(b'\n');
    }
}

fn json_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    json_body(buf, s);
    buf.push(b'"');
}

fn json_body(buf: &mut Vec<u8>, s: &str) {
    escape(buf, s, true);
}

/// `"` and `\` backslashed; control bytes as `\u00XX` (JSON) or `\xXX` (text).
fn escape(buf: &mut Vec<u8>, s: &str, json: bool) {
    for &b in s.as_bytes() {
        match b {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            0..=0x1f | 0x7f if json => {
                let _ = write!(buf, "\\u{b:04x}");
            }
            0..=0x1f | 0x7f => {
                let _ = write!(buf, "\\x{b:02x}");
            }
            _ => buf.push(b),
        }
    }
}

/// Bytes a logfmt value may hold unquoted: printable ASCII but `"`, `\` and `=`.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x21;
    while b < 0x7f {
        t[b] = !matches!(b as u8, b'"' | b'\\' | b'=');
        b += 1;
    }
    t
};

/// A logfmt value: bare when it is plain, else quoted with `"`, `\` and control bytes escaped
/// (so a crafted path cannot start a line of its own or forge a field).
fn text_val(buf: &mut Vec<u8>, s: &str) {
    if !s.is_empty() && s.bytes().all(|b| PLAIN[b as usize]) {
        buf.extend_from_slice(s.as_bytes());
        return;
    }
    buf.push(b'"');
    escape(buf, s, false);
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(path: &str) -> Line<'_> {
        Line {
            client: "127.0.0.1",
            method: "GET",
            host: "demo.example.test",
            path,
            status: 200,
            micros: 42,
            project: "demo",
            mount: "forge",
        }
    }

    fn text(l: &Line<'_>, json: bool) -> String {
        let mut b = Vec::new();
        format_line(&mut b, &mut Stamp::default(), l, json);
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn text_lines_are_logfmt_and_escape_what_could_forge_a_field() {
        let t = text(&line("/forge/x"), false);
        assert!(t.ends_with(" edge::access client=127.0.0.1 method=GET host=demo.example.test path=/forge/x status=200 micros=42 route=demo/forge\n"), "{t}");
        assert_eq!(t.as_bytes()[10], b'T', "{t}");
        let t = text(&line("/a\" status=500\nfake"), false);
        assert!(t.contains(r#"path="/a\" status=500\x0afake""#), "{t}");
        assert_eq!(t.matches('\n').count(), 1);
    }

    #[test]
    fn json_lines_parse_and_escape() {
        let t = text(&line("/a\"b\\c\u{1}é"), true);
        assert!(t.ends_with("}\n"));
        assert!(t.contains(r#""path":"/a\"b\\c\u0001é""#), "{t}");
        assert!(
            t.contains(r#""status":200,"micros":42,"route":"demo/forge""#),
            "{t}"
        );
    }

    #[test]
    fn a_file_gets_every_line_and_reopen_follows_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::start(Sink::File(path.clone()), false, Arc::default()).unwrap();
        for _ in 0..1000 {
            log.log(&line("/one"));
        }
        assert!(log.flush(Duration::from_secs(5)));
        let first = std::fs::read_to_string(&path).unwrap();
        assert_eq!(first.lines().count(), 1000);
        assert!(first.lines().all(|l| l.contains("path=/one")));
        // logrotate: move the file away, then signal.
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.log(&line("/still-old"));
        log.reopen();
        assert!(log.flush(Duration::from_secs(5)));
        log.log(&line("/two"));
        assert!(log.flush(Duration::from_secs(5)));
        let old = std::fs::read_to_string(&rotated).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            old.lines().count(),
            1001,
            "pending lines went to the old file"
        );
        assert_eq!(new.lines().count(), 1, "{new}");
        assert!(new.contains("path=/two"));
        assert_eq!(log.inner.dropped.load(Relaxed), 0);
    }

    #[test]
    fn a_writer_that_falls_behind_drops_and_counts_instead_of_blocking() {
        // A FIFO nobody reads: the writer blocks on its first large write, and requests go on.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        let st = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success());
        // Opening a FIFO for writing blocks until a reader comes: hold one open, never read.
        let reader = OpenOptions::new()
            .read(true)
            .custom_flags_nonblock()
            .open(&path)
            .unwrap();
        let log = Arc::new(AccessLog::start(Sink::File(path), false, Arc::default()).unwrap());
        let n = 200_000;
        let (tx, rx) = std::sync::mpsc::channel();
        let l = log.clone();
        std::thread::spawn(move || {
            for _ in 0..n {
                l.log(&line(
                    "/a-path-long-enough-to-fill-the-pipe-and-the-cap-soon",
                ));
            }
            let _ = tx.send(());
        });
        // A bound, not a speed test: with a blocking log this would never return.
        rx.recv_timeout(Duration::from_secs(120))
            .expect("logging went on while the writer was stuck");
        let dropped = log.inner.dropped.load(Relaxed);
        assert!(
            dropped > 0 && dropped < n,
            "lines beyond the cap are counted ({dropped} of {n})"
        );
        // The reader goes: the stuck write fails (EPIPE) and the writer can end.
        drop(reader);
    }

    trait NonBlock {
        fn custom_flags_nonblock(&mut self) -> &mut Self;
    }
    impl NonBlock for OpenOptions {
        fn custom_flags_nonblock(&mut self) -> &mut Self {
            use std::os::unix::fs::OpenOptionsExt as _;
            self.custom_flags(0o4000) // O_NONBLOCK
        }
    }
}
