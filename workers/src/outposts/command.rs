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
    mut w: FrameWriter<tokio::process::ChildStdin, ToWorker>,
    r: FrameReader<tokio::process::ChildStdout, FromWorker>,
) -> Link {
    let (to, mut rx) = mpsc::unbounded_channel::<ToWorker>();
    // Frames to the worker; when the orchestrator is done, its stdin closes.
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if w.send(&f).await.is_err() {
                break;
            }
        }
    });
    let from = futures_util::stream::unfold(r, |mut r| async move {
        let f = r.next().await?;
        Some((f.map_err(|e| e.to_string()), r))
    })
    .boxed();
    Link {
        to,
        from,
        finish: Box::pin(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }),
    }
}
