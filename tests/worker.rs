//! `edge worker --stdio`, the real binary: the protocol on its stdin and stdout, and a closed
//! stdin (the orchestrator or the SSH connection gone) killing the agent's process group.

use std::process::Stdio;
use std::time::Duration;

use edge_workers::{ExitReason, Fd, FrameReader, FrameWriter, FromWorker, ToWorker};

fn run(id: &str, script: &str) -> ToWorker {
    ToWorker::Run {
        attempt_id: id.into(),
        run_id: "r1".into(),
        argv: vec!["sh".into(), "-c".into(), script.into()],
        cwd: None,
        env: Default::default(),
        stdin: None,
        deadline_unix: None,
        sandbox: None,
    }
}

async fn next<R: tokio::io::AsyncRead + Unpin>(rx: &mut FrameReader<R, FromWorker>) -> FromWorker {
    tokio::time::timeout(Duration::from_secs(10), rx.next())
        .await
        .expect("a frame within 10 s")
        .expect("the worker is still there")
        .unwrap()
}

#[tokio::test]
async fn edge_worker_stdio_speaks_the_protocol_and_dies_with_its_connection() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["worker", "--stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut tx = FrameWriter::<_, ToWorker>::new(child.stdin.take().unwrap());
    let mut rx = FrameReader::<_, FromWorker>::new(child.stdout.take().unwrap());
    tx.send(&ToWorker::Hello { proto: 1 }).await.unwrap();
    assert!(matches!(
        next(&mut rx).await,
        FromWorker::HelloOk { busy: false, .. }
    ));
    tx.send(&run("a1", "echo hi")).await.unwrap();
    assert!(matches!(next(&mut rx).await, FromWorker::Started { .. }));
    assert_eq!(
        next(&mut rx).await,
        FromWorker::Out {
            attempt_id: "a1".into(),
            seq: 1,
            fd: Fd::Stdout,
            line: "hi".into()
        }
    );
    assert!(matches!(
        next(&mut rx).await,
        FromWorker::Exit {
            code: Some(0),
            reason: ExitReason::Exited,
            ..
        }
    ));

    tx.send(&run("a2", "sleep 30 & echo $!; wait"))
        .await
        .unwrap();
    assert!(matches!(next(&mut rx).await, FromWorker::Started { .. }));
    let sleeper: i32 = match next(&mut rx).await {
        FromWorker::Out { line, .. } => line.parse().unwrap(),
        other => panic!("{other:?}"),
    };
    drop(tx);
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("the worker exits when its stdin closes")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let gone = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    };
    for _ in 0..50 {
        if gone(sleeper) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        gone(sleeper),
        "the agent's child {sleeper} outlived the connection"
    );
}

#[test]
fn edge_worker_says_what_is_not_built() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["worker", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not built yet"));
}
