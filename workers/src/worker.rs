//! The worker: one attempt at a time, the agent in its own process group, its output streamed
//! as frames; cancel is SIGINT (the agent's interrupt), then SIGTERM, then SIGKILL to the whole
//! group; a lost connection kills the group at once. The worker keeps no state of its own.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edge_sandbox::Floor;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::protocol::{
    ExitReason, Fd, FrameError, FrameReader, FrameWriter, FromWorker, ToWorker, MAX_FRAME, VERSION,
};
use crate::{ErrorCode, NoticeKind};

/// Output lines longer than this are sent in pieces (a frame holds one piece and its envelope).
pub const MAX_LINE: usize = MAX_FRAME - 4096;
/// Grace used when a deadline passes.
const DEADLINE_GRACE: Duration = Duration::from_secs(5);
/// The variables an agent gets from the worker's own environment; everything else comes from the
/// run frame. (The sandbox's full environment policy is a later layer.)
const BASE_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TERM"];

#[derive(Debug)]
enum Control {
    Cancel(Duration),
    /// A line for the agent's stdin.
    Stdin(String),
    /// End of the agent's input.
    StdinClose,
    /// Whoever asked is gone: kill at once.
    Lost,
}

/// One attempt, started: the frames it sends (ending with exactly one `exit`), and the handle
/// that stops it. Dropped before its `exit` was read, it kills the agent's process group at
/// once (the connection that asked for it is gone).
#[derive(Debug)]
pub struct Attempt {
    pub attempt_id: String,
    pub frames: mpsc::Receiver<FromWorker>,
    control: mpsc::UnboundedSender<Control>,
    task: Option<tokio::task::JoinHandle<()>>,
    ended: bool,
}

/// Cancels an attempt from elsewhere (`POST /work/{id}/cancel`, a signal).
#[derive(Debug, Clone)]
pub struct Canceller(mpsc::UnboundedSender<Control>);

impl Canceller {
    /// SIGINT, then SIGTERM, then SIGKILL to the agent's group, `grace` apart in total.
    pub fn cancel(&self, grace: Duration) {
        let _ = self.0.send(Control::Cancel(grace));
    }

    /// A line for the agent's stdin (a run started with `keep_stdin`; else dropped).
    pub fn stdin(&self, line: String) {
        let _ = self.0.send(Control::Stdin(line));
    }

    /// Closes the agent's stdin.
    pub fn stdin_close(&self) {
        let _ = self.0.send(Control::StdinClose);
    }
}

impl Attempt {
    /// Starts the attempt a `run` frame describes; `None` for any other frame. With a
    /// `floor`, a run that asks for less confinement is refused: its frames are an `error`
    /// (code `policy`, saying what falls short) and its `exit`, and nothing runs.
    pub fn start(frame: ToWorker, floor: Option<&Floor>) -> Option<Attempt> {
        let ToWorker::Run {
            attempt_id,
            argv,
            cwd,
            env,
            stdin,
            deadline_unix,
            keep_stdin,
            sandbox,
            ..
        } = frame
        else {
            return None;
        };
        let (tx, frames) = mpsc::channel(1024);
        let (control, ctl_rx) = mpsc::unbounded_channel();
        let mut sandbox = sandbox;
        let refused = floor.and_then(|f| admit(f, &mut sandbox, cwd.as_deref()).err());
        let spec = Spec {
            refused,
            attempt_id: attempt_id.clone(),
            argv,
            cwd,
            env,
            stdin,
            keep_stdin,
            deadline_unix,
            sandbox,
        };
        let task = tokio::spawn(attempt(spec, tx, ctl_rx));
        Some(Attempt {
            attempt_id,
            frames,
            control,
            task: Some(task),
            ended: false,
        })
    }

    pub fn canceller(&self) -> Canceller {
        Canceller(self.control.clone())
    }

    /// The next frame; after `exit`, `None`.
    pub async fn next(&mut self) -> Option<FromWorker> {
        if self.ended {
            return None;
        }
        let f = self.frames.recv().await;
        if matches!(f, Some(FromWorker::Exit { .. }) | None) {
            self.ended = true;
        }
        f
    }

    /// Waits until the attempt's clean-up (process group, cgroup) is over.
    pub fn done(&mut self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let task = self.task.take();
        async move {
            if let Some(t) = task {
                let _ = t.await;
            }
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.control.send(Control::Lost);
        }
    }
}

/// Serves one orchestrator connection until it closes. Returns after any attempt still running
/// has been killed.
pub async fn serve<R, W>(
    r: R,
    w: W,
    worker_name: &str,
    floor: Option<&Floor>,
) -> Result<(), FrameError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut rd = FrameReader::<R, ToWorker>::new(r);
    let mut wr = FrameWriter::<W, FromWorker>::new(w);
    let mut current: Option<Attempt> = None;
    let result = loop {
        tokio::select! {
            frame = rd.next() => match frame {
                None => break Ok(()),
                Some(Err(e)) => {
                    let _ = wr.send(&FromWorker::Error { attempt_id: None, code: ErrorCode::Protocol, msg: e.to_string() }).await;
                    break Err(e);
                }
                Some(Ok(f)) => match f {
                    ToWorker::Hello { proto } => {
                        wr.send(&hello_reply(proto, worker_name, current.is_some(), floor)).await?;
                    }
                    run @ ToWorker::Run { .. } => {
                        if current.is_some() {
                            if let ToWorker::Run { attempt_id, .. } = run {
                                wr.send(&FromWorker::Busy { attempt_id }).await?;
                            }
                            continue;
                        }
                        current = Attempt::start(run, floor);
                    }
                    ToWorker::Cancel { attempt_id, grace_ms } => {
                        if let Some(c) = current.as_ref().filter(|c| c.attempt_id == attempt_id) {
                            c.canceller().cancel(Duration::from_millis(grace_ms));
                        }
                    }
                    ToWorker::Stdin { attempt_id, line } => {
                        if let Some(c) = current.as_ref().filter(|c| c.attempt_id == attempt_id) {
                            c.canceller().stdin(line);
                        }
                    }
                    ToWorker::StdinClose { attempt_id } => {
                        if let Some(c) = current.as_ref().filter(|c| c.attempt_id == attempt_id) {
                            c.canceller().stdin_close();
                        }
                    }
                    ToWorker::Ping { ts } => wr.send(&FromWorker::Pong { ts }).await?,
                }
            },
            Some(ev) = next_of(&mut current) => {
                let ended = matches!(ev, FromWorker::Exit { .. });
                wr.send(&ev).await?;
                if ended {
                    if let Some(mut c) = current.take() {
                        c.done().await;
                    }
                }
            }
        }
    };
    // The orchestrator is gone (or broke the protocol): nobody will read this attempt's
    // output, so it must not go on. Dropping it kills the process group.
    if let Some(mut c) = current.take() {
        let done = c.done();
        drop(c);
        done.await;
    }
    result
}

async fn next_of(current: &mut Option<Attempt>) -> Option<FromWorker> {
    match current {
        Some(a) => a.next().await,
        None => std::future::pending().await,
    }
}

/// Runs one attempt on its own (`edge worker --oneshot`, a Nomad task): its frames as NDJSON
/// lines on `out`, ending with `exit`. SIGINT or SIGTERM (how Nomad stops a task) cancels it
/// with `grace`. Returns the agent's exit code (128 + signal when a signal ended it, 1 when it
/// never started).
pub async fn oneshot<W: AsyncWrite + Unpin>(
    frame: ToWorker,
    mut out: W,
    grace: Duration,
    floor: Option<&Floor>,
) -> std::io::Result<i32> {
    use tokio::signal::unix::{signal, SignalKind};
    let Some(mut a) = Attempt::start(frame, floor) else {
        return Err(std::io::Error::other(
            "the file must hold a run frame (\"t\":\"run\")",
        ));
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut status = 1;
    loop {
        let f = tokio::select! {
            f = a.next() => f,
            _ = term.recv() => { a.canceller().cancel(grace); continue; }
            _ = int.recv() => { a.canceller().cancel(grace); continue; }
        };
        let Some(f) = f else { break };
        if let FromWorker::Exit { code, signal, .. } = &f {
            status = code.unwrap_or_else(|| signal.map_or(1, |s| 128 + s));
        }
        let mut line = crate::protocol::encode(&f)?;
        line.push(b'\n');
        out.write_all(&line).await?;
        out.flush().await?;
    }
    a.done().await;
    Ok(status)
}

/// Holds a run's confinement to the worker's floor: `Err` says what falls short; otherwise the
/// floor's additions (its hidden paths) are made.
pub fn admit(
    floor: &Floor,
    sandbox: &mut Option<Box<edge_sandbox::Confine>>,
    cwd: Option<&str>,
) -> Result<(), String> {
    floor.check(sandbox.as_deref(), cwd.map(std::path::Path::new))?;
    if let Some(c) = sandbox.as_deref_mut() {
        floor.apply(c);
    }
    Ok(())
}

/// What a run the worker's floor refused gets: an `error` (code `policy`) that says why, and
/// its `exit`.
pub fn refusal(attempt_id: &str, why: &str) -> [FromWorker; 2] {
    tracing::warn!(attempt = %attempt_id, %why, "run refused by the worker's floor");
    [
        FromWorker::Error {
            attempt_id: Some(attempt_id.to_string()),
            code: ErrorCode::Policy,
            msg: format!("refused by this worker's floor: {why}"),
        },
        FromWorker::Exit {
            attempt_id: attempt_id.to_string(),
            code: None,
            signal: None,
            reason: ExitReason::Exited,
        },
    ]
}

/// The answer to `hello`.
pub fn hello_reply(proto: u32, worker_name: &str, busy: bool, floor: Option<&Floor>) -> FromWorker {
    if proto == VERSION {
        FromWorker::HelloOk {
            worker: worker_name.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            busy,
            floor: floor.map(|f| Box::new(f.clone())),
        }
    } else {
        FromWorker::Error {
            attempt_id: None,
            code: ErrorCode::Protocol,
            msg: format!("protocol {proto} is not supported; this worker speaks {VERSION}"),
        }
    }
}

struct Spec {
    /// Why the worker's floor refused the run, if it did.
    refused: Option<String>,
    attempt_id: String,
    argv: Vec<String>,
    cwd: Option<String>,
    env: BTreeMap<String, String>,
    stdin: Option<String>,
    keep_stdin: bool,
    deadline_unix: Option<u64>,
    sandbox: Option<Box<edge_sandbox::Confine>>,
}

fn signal_group(pgid: i32, sig: Signal) {
    if let Err(e) = killpg(Pid::from_raw(pgid), sig) {
        if e != nix::errno::Errno::ESRCH {
            tracing::warn!(pgid, ?sig, error = %e, "signalling the agent's process group failed");
        }
    }
}

/// One step of stopping an attempt: SIGINT and SIGTERM go to the agent inside its sandbox
/// when it has one (bubblewrap would die of them and take the agent with it at once), else to
/// its process group; SIGKILL always to the whole group.
fn stop(pgid: i32, confinement: Option<&edge_sandbox::confine::Confinement>, sig: Signal) {
    if sig != Signal::SIGKILL && confinement.is_some_and(|c| c.signal_inside(sig) > 0) {
        return;
    }
    signal_group(pgid, sig);
}

/// Reads lines (pieces of at most [`MAX_LINE`] bytes) and sends them on.
async fn read_lines<R: AsyncRead + Unpin>(r: R, fd: Fd, out: mpsc::Sender<(Fd, String)>) {
    let mut r = BufReader::new(r);
    let mut buf: Vec<u8> = Vec::new();
    while let Ok(avail) = r.fill_buf().await {
        if avail.is_empty() {
            break;
        }
        let take = avail
            .iter()
            .position(|&b| b == b'\n')
            .map_or(avail.len(), |i| i + 1)
            .min(MAX_LINE - buf.len());
        let complete = avail[take - 1] == b'\n';
        buf.extend_from_slice(&avail[..take]);
        r.consume(take);
        if complete || buf.len() >= MAX_LINE {
            if complete {
                buf.pop();
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
            }
            let line = String::from_utf8_lossy(&buf).into_owned();
            buf.clear();
            if out.send((fd, line)).await.is_err() {
                return;
            }
        }
    }
    if !buf.is_empty() {
        let _ = out
            .send((fd, String::from_utf8_lossy(&buf).into_owned()))
            .await;
    }
}

async fn attempt(
    spec: Spec,
    tx: mpsc::Sender<FromWorker>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let id = spec.attempt_id.clone();
    let fail = |code: ErrorCode, msg: String| FromWorker::Error {
        attempt_id: Some(id.clone()),
        code,
        msg,
    };
    let exited = || FromWorker::Exit {
        attempt_id: id.clone(),
        code: None,
        signal: None,
        reason: ExitReason::Exited,
    };
    if let Some(why) = spec.refused {
        for f in refusal(&id, &why) {
            let _ = tx.send(f).await;
        }
        return;
    }
    let Some((program, args)) = spec.argv.split_first() else {
        let _ = tx
            .send(fail(ErrorCode::Spawn, "argv is empty".into()))
            .await;
        let _ = tx.send(exited()).await;
        return;
    };
    // Confined: the sandbox helper applies the layers, then executes argv. What the egress
    // proxy refuses comes back as stderr lines `edge egress: ...`.
    let mut confinement = None;
    let (notices_tx, mut notices) = mpsc::unbounded_channel::<String>();
    let mut cmd = match &spec.sandbox {
        None => {
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(args).env_clear();
            for k in BASE_ENV {
                if let Some(v) = std::env::var_os(k) {
                    cmd.env(k, v);
                }
            }
            cmd.envs(&spec.env);
            if let Some(dir) = &spec.cwd {
                cmd.current_dir(dir);
            }
            cmd
        }
        Some(s) => {
            let req = edge_sandbox::confine::Request {
                profile: s.profile.clone(),
                workspace: spec.cwd.clone().unwrap_or_else(|| ".".into()).into(),
                home: s.home.clone(),
                argv: spec.argv.clone(),
                env: spec
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                notices: Some(notices_tx.clone()),
            };
            let prepared = edge_sandbox::confine::prepare(req, &id)
                .and_then(|c| c.command().map(|cmd| (c, cmd)));
            match prepared {
                Ok((c, mut cmd)) => {
                    confinement = Some(c);
                    // The helper keeps what it needs from this environment and drops the rest.
                    cmd.env_clear();
                    for k in BASE_ENV
                        .into_iter()
                        .chain(s.profile.env.iter().map(String::as_str))
                    {
                        if let Some(v) = std::env::var_os(k) {
                            cmd.env(k, v);
                        }
                    }
                    cmd
                }
                Err(e) => {
                    let _ = tx.send(fail(ErrorCode::Sandbox, e)).await;
                    let _ = tx.send(exited()).await;
                    return;
                }
            }
        }
    };
    cmd.stdin(if spec.stdin.is_some() || spec.keep_stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // Its own process group: tools the agent starts are signalled with it.
    .process_group(0)
    .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = tx
                .send(fail(ErrorCode::Spawn, format!("starting {program:?}: {e}")))
                .await;
            let _ = tx.send(exited()).await;
            return;
        }
    };
    let pid = child.id().unwrap_or(0);
    let pgid = pid as i32;
    let _ = tx
        .send(FromWorker::Started {
            attempt_id: id.clone(),
            pid,
        })
        .await;

    // The agent's input: what the run frame carries, then (with keep_stdin) the lines that
    // follow, in order, until closed.
    let (stdin_tx, mut stdin_rx) = mpsc::unbounded_channel::<Option<String>>();
    if let Some(mut w) = child.stdin.take() {
        let (first, keep) = (spec.stdin, spec.keep_stdin);
        tokio::spawn(async move {
            if let Some(input) = first {
                if w.write_all(input.as_bytes()).await.is_err() {
                    return;
                }
            }
            if keep {
                while let Some(Some(line)) = stdin_rx.recv().await {
                    let mut b = line.into_bytes();
                    b.push(b'\n');
                    if w.write_all(&b).await.is_err() || w.flush().await.is_err() {
                        return;
                    }
                }
            }
            let _ = w.shutdown().await;
        });
    }
    let (lines_tx, mut lines) = mpsc::channel::<(Fd, String)>(256);
    let mut readers = Vec::new();
    if let Some(o) = child.stdout.take() {
        readers.push(tokio::spawn(read_lines(o, Fd::Stdout, lines_tx.clone())));
    }
    if let Some(e) = child.stderr.take() {
        readers.push(tokio::spawn(read_lines(e, Fd::Stderr, lines_tx.clone())));
    }
    drop(lines_tx);

    let deadline = spec.deadline_unix.map(|d| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Instant::now() + Duration::from_secs(d.saturating_sub(now))
    });
    let mut seq = 0u64;
    let mut reason = ExitReason::Exited;
    // The escalation in progress: the next signal and when.
    let mut next: Option<(Signal, Instant, Duration)> = None;
    let mut control_open = true;
    let status = loop {
        let escalate_at = next.map(|(_, at, _)| at);
        tokio::select! {
            st = child.wait() => break st.ok(),
            Some((fd, line)) = lines.recv() => {
                seq += 1;
                let _ = tx.send(FromWorker::Out { attempt_id: id.clone(), seq, fd, line }).await;
            }
            Some(why) = notices.recv() => {
                seq += 1;
                let _ = tx.send(FromWorker::Notice { attempt_id: id.clone(), seq, kind: NoticeKind::EgressDenied, detail: why }).await;
            }
            c = control.recv(), if control_open => match c {
                Some(Control::Cancel(grace)) => {
                    if reason == ExitReason::Exited {
                        reason = ExitReason::Cancelled;
                        stop(pgid, confinement.as_ref(), Signal::SIGINT);
                        next = Some((Signal::SIGTERM, Instant::now() + grace / 2, grace / 2));
                    }
                }
                Some(Control::Stdin(line)) => {
                    let _ = stdin_tx.send(Some(line));
                }
                Some(Control::StdinClose) => {
                    let _ = stdin_tx.send(None);
                }
                Some(Control::Lost) | None => {
                    // The connection is gone: no grace.
                    control_open = false;
                    signal_group(pgid, Signal::SIGKILL);
                }
            },
            _ = sleep_until_opt(deadline), if reason == ExitReason::Exited && deadline.is_some() => {
                reason = ExitReason::Timeout;
                stop(pgid, confinement.as_ref(), Signal::SIGINT);
                next = Some((Signal::SIGTERM, Instant::now() + DEADLINE_GRACE / 2, DEADLINE_GRACE / 2));
            }
            _ = sleep_until_opt(escalate_at), if escalate_at.is_some() => {
                if let Some((sig, _, step)) = next.take() {
                    stop(pgid, confinement.as_ref(), sig);
                    if sig == Signal::SIGTERM {
                        next = Some((Signal::SIGKILL, Instant::now() + step, step));
                    }
                }
            }
        }
    };
    // Whatever the agent left running in its group goes with it, and with a sandbox, whatever
    // is left in the run's cgroup (the namespaces' own session included).
    signal_group(pgid, Signal::SIGKILL);
    if let Some(c) = confinement.take() {
        if let Ok(fin) = tokio::task::spawn_blocking(move || c.finish()).await {
            if fin.oom_killed {
                seq += 1;
                let _ = tx
                    .send(FromWorker::Notice {
                        attempt_id: id.clone(),
                        seq,
                        kind: NoticeKind::MemoryLimit,
                        detail: "the run went past its memory limit and was killed".into(),
                    })
                    .await;
            }
        }
    }
    // The rest of the output, bounded: a grandchild outside the group could hold a pipe open.
    let drain = async {
        while let Some((fd, line)) = lines.recv().await {
            seq += 1;
            let _ = tx
                .send(FromWorker::Out {
                    attempt_id: id.clone(),
                    seq,
                    fd,
                    line,
                })
                .await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    for r in readers {
        r.abort();
    }
    let (code, signal) = match status {
        Some(s) => (s.code(), s.signal()),
        None => (None, None),
    };
    let _ = tx
        .send(FromWorker::Exit {
            attempt_id: id,
            code,
            signal,
            reason,
        })
        .await;
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
