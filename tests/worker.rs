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
        keep_stdin: false,
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

/// `edge worker --oneshot FILE` (a Nomad task): the run frame from the file, the frames as
/// NDJSON on stdout, the agent's exit code as its own; SIGTERM (Nomad stopping the task)
/// cancels the agent with grace.
#[tokio::test]
async fn edge_worker_oneshot_runs_one_attempt_and_is_stopped_by_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run.json");
    let frame = |script: &str| {
        let mut v = serde_json::to_value(run("o1", script)).unwrap();
        v["v"] = 1.into();
        v.to_string()
    };
    std::fs::write(&file, frame("echo out; echo err >&2; exit 7")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["worker", "--oneshot"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["t"], "started");
    assert!(lines
        .iter()
        .any(|l| l["line"] == "out" && l["fd"] == "stdout"));
    assert!(lines
        .iter()
        .any(|l| l["line"] == "err" && l["fd"] == "stderr"));
    let last = lines.last().unwrap();
    assert_eq!(
        (last["t"].as_str(), last["code"].as_i64()),
        (Some("exit"), Some(7))
    );

    // The agent traps the interrupt and says so: cancel reached it first, with grace.
    std::fs::write(
        &file,
        frame("trap 'echo interrupted; exit 130' INT; echo ready; while :; do sleep 0.05; done"),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["worker", "--oneshot"])
        .arg(&file)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    while !text.contains("\"line\":\"ready\"") {
        let mut l = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut l),
        )
        .await
        .unwrap()
        .unwrap();
        text.push_str(&l);
    }
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut text)
        .await
        .unwrap();
    assert!(text.contains("\"line\":\"interrupted\""), "{text}");
    assert!(text.contains("\"reason\":\"cancelled\""), "{text}");
    assert_eq!(status.code(), Some(130));

    // With a floor (the Nomad client's own minimum), a run without a sandbox does not start:
    // the reason, then exit, and the task fails.
    let floor = dir.path().join("floor.toml");
    std::fs::write(&floor, "require = [\"all\"]\n").unwrap();
    let marker = dir.path().join("ran");
    std::fs::write(&file, frame(&format!("touch {}", marker.display()))).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["worker", "--oneshot"])
        .arg(&file)
        .arg("--floor")
        .arg(&floor)
        .output()
        .unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(out.status.code(), Some(1), "{lines:?}");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        (lines[0]["t"].as_str(), lines[0]["code"].as_str()),
        (Some("error"), Some("policy"))
    );
    assert!(lines[0]["msg"]
        .as_str()
        .unwrap()
        .contains("this worker runs only confined agents"));
    assert_eq!(lines[1]["t"], "exit");
    assert!(!marker.exists(), "a refused run must not start");
}

/// Cancel reaches a confined agent as an interrupt it can handle (Claude Code saves its session
/// on SIGINT), not as bubblewrap dying and taking it down with SIGKILL.
#[tokio::test]
async fn cancel_interrupts_a_confined_agent_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let workspace = dir.path().join("w");
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::set_permissions(
        &workspace,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let mut profile = edge_sandbox::Profile::default_named("t");
    profile.home = Some(dir.path().join("home"));
    let ToWorker::Run {
        attempt_id,
        run_id,
        argv,
        env,
        stdin,
        deadline_unix,
        ..
    } = run(
        "c1",
        "trap 'echo interrupted inside; exit 130' INT; echo ready; while :; do sleep 0.05; done",
    )
    else {
        unreachable!()
    };
    let frame = ToWorker::Run {
        attempt_id,
        run_id,
        argv,
        cwd: Some(workspace.display().to_string()),
        env,
        stdin,
        deadline_unix,
        keep_stdin: false,
        sandbox: Some(Box::new(edge_sandbox::Confine {
            home: dir.path().join("home"),
            profile,
        })),
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["worker", "--stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut tx = FrameWriter::<_, ToWorker>::new(child.stdin.take().unwrap());
    let mut rx = FrameReader::<_, FromWorker>::new(child.stdout.take().unwrap());
    tx.send(&frame).await.unwrap();
    let mut lines = Vec::new();
    loop {
        match next(&mut rx).await {
            FromWorker::Out { line, .. } if line == "ready" => break,
            FromWorker::Out { line, .. } => lines.push(line),
            FromWorker::Error { msg, .. } => panic!("the sandbox refused: {msg}"),
            _ => {}
        }
    }
    tx.send(&ToWorker::Cancel {
        attempt_id: "c1".into(),
        grace_ms: 4000,
    })
    .await
    .unwrap();
    let exit = loop {
        match next(&mut rx).await {
            FromWorker::Out { line, .. } => lines.push(line),
            e @ FromWorker::Exit { .. } => break e,
            _ => {}
        }
    };
    assert!(
        lines.iter().any(|l| l == "interrupted inside"),
        "the agent handled the interrupt: {lines:?}"
    );
    match exit {
        FromWorker::Exit { reason, code, .. } => {
            assert_eq!(reason, ExitReason::Cancelled);
            assert_eq!(code, Some(130), "the agent's own exit, not a kill");
        }
        _ => unreachable!(),
    }
}
