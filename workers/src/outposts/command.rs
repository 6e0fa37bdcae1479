//! A command speaking the worker protocol on its stdin and stdout: the local worker, or `ssh`
//! to a host whose forced command is the worker.

use super::*;

pub(super) type CommandWorker = (
    tokio::process::Child,
    FrameWriter<tokio::process::ChildStdin, ToWorker>,
    FrameReader<tokio::process::ChildStdout, FromWorker>,
);

/// Starts the worker command and says `hello`. On failure, why, with the last line the worker
/// (or ssh: host key mismatch, refused connection...) wrote on stderr. Afterwards the worker's
/// stderr is edge's.
pub(super) async fn command_hello(argv: &[String]) -> Result<(CommandWorker, Hello), String> {
    let t = Instant::now();
    let (program, args) = argv.split_first().ok_or("no worker command")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {program:?}: {e}"))?;
    let mut stderr = child.stderr.take().expect("piped");
    let mut to = FrameWriter::<_, ToWorker>::new(child.stdin.take().expect("piped"));
    let mut from = FrameReader::<_, FromWorker>::new(child.stdout.take().expect("piped"));
    let answer = async {
        to.send(&ToWorker::Hello {
            proto: crate::VERSION,
        })
        .await
        .map_err(|e| e.to_string())?;
        match from.next().await {
            Some(Ok(f)) => hello_of(f, t),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("the connection closed".to_string()),
        }
    };
    let r = match tokio::time::timeout(HELLO_TIMEOUT, answer).await {
        Ok(r) => r,
        Err(_) => Err(format!("no hello within {HELLO_TIMEOUT:?}")),
    };
    match r {
        Ok(h) => {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut stderr, &mut tokio::io::stderr()).await;
            });
            Ok(((child, to, from), h))
        }
        Err(e) => {
            let _ = child.start_kill();
            let mut why = Vec::new();
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut why),
            )
            .await;
            let why = String::from_utf8_lossy(&why);
            Err(match why.trim().lines().last() {
                Some(line) => format!("{e}: {line}"),
                None => e,
            })
        }
    }
}

pub(super) fn hello_of(f: FromWorker, t: Instant) -> Result<Hello, String> {
    match f {
        FromWorker::HelloOk {
            worker,
            version,
            busy,
            floor,
        } => Ok(Hello {
            worker,
            version,
            busy,
            millis: t.elapsed().as_millis() as u64,
            floor: floor.map(|f| *f),
        }),
        FromWorker::Error { msg, .. } => Err(msg),
        other => Err(format!("unexpected first frame {other:?}")),
    }
}

pub(super) fn command_link(
    mut child: tokio::process::Child,
    w: FrameWriter<tokio::process::ChildStdin, ToWorker>,
    r: FrameReader<tokio::process::ChildStdout, FromWorker>,
) -> Link {
    // Frames to the worker; when the orchestrator is done, its stdin closes.
    frames_link(
        r,
        w,
        Box::pin(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }),
    )
}

/// A command speaking the protocol on its stdin and stdout, one process per attempt: the
/// binary's own `edge worker --stdio`, or `ssh ... user@host` whose forced command is it.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandTarget {
    pub argv: Vec<String>,
}

impl Transport for CommandTarget {
    fn hello(&self) -> BoxFuture<'_, Result<Hello, String>> {
        Box::pin(async { command_hello(&self.argv).await.map(|(_, h)| h) })
    }

    fn open<'a>(&'a self, run: &'a ToWorker) -> BoxFuture<'a, Result<Link, String>> {
        Box::pin(async move {
            let ((child, mut to, from), h) = command_hello(&self.argv).await?;
            if h.busy {
                return Err("the worker is busy".into());
            }
            to.send(run)
                .await
                .map_err(|e| format!("sending the run: {e}"))?;
            Ok(command_link(child, to, from))
        })
    }

    /// An SSH outpost's multiplexing master: `ssh -O exit` with the outpost's own options.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let argv = &self.argv;
            if argv.first().map(String::as_str) != Some("ssh")
                || !argv.iter().any(|a| a.starts_with("ControlMaster="))
            {
                return;
            }
            // The argv ends with the remote command; `-O exit` goes before the destination.
            let mut a: Vec<String> = argv[1..argv.len().saturating_sub(1)].to_vec();
            a.insert(0, "exit".into());
            a.insert(0, "-O".into());
            let run = tokio::process::Command::new("ssh")
                .args(&a)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .status();
            let _ = tokio::time::timeout(Duration::from_secs(2), run).await;
        })
    }

    fn identity(&self) -> String {
        format!("command {:?}", self.argv)
    }
}
