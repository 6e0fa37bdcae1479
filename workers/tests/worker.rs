//! The local worker driven over an in-memory pipe with real child processes (sh): output
//! streamed in order, one attempt at a time, cancel escalating SIGINT → SIGTERM → SIGKILL to the
//! process group, deadlines, and a lost connection killing everything the agent started.

use std::time::{Duration, Instant};

use edge_workers::{serve, ExitReason, Fd, FrameReader, FrameWriter, FromWorker, ToWorker};
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

struct Orchestrator {
    tx: FrameWriter<WriteHalf<DuplexStream>, ToWorker>,
    rx: FrameReader<ReadHalf<DuplexStream>, FromWorker>,
    worker: tokio::task::JoinHandle<()>,
}

fn start() -> Orchestrator {
    start_with(None)
}

fn start_with(floor: Option<edge_sandbox::Floor>) -> Orchestrator {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let (r, w) = tokio::io::split(theirs);
    let worker = tokio::spawn(async move {
        serve(r, w, "test", floor.as_ref()).await.unwrap();
    });
    let (r, w) = tokio::io::split(ours);
    Orchestrator {
        tx: FrameWriter::new(w),
        rx: FrameReader::new(r),
        worker,
    }
}

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

impl Orchestrator {
    async fn next(&mut self) -> FromWorker {
        tokio::time::timeout(Duration::from_secs(10), self.rx.next())
            .await
            .expect("a frame within 10 s")
            .expect("the worker is still there")
            .unwrap()
    }

    /// Frames until (and including) this attempt's exit.
    async fn until_exit(&mut self) -> Vec<FromWorker> {
        let mut out = Vec::new();
        loop {
            let f = self.next().await;
            let end = matches!(f, FromWorker::Exit { .. });
            out.push(f);
            if end {
                return out;
            }
        }
    }
}

fn lines(frames: &[FromWorker], want: Fd) -> Vec<String> {
    frames
        .iter()
        .filter_map(|f| match f {
            FromWorker::Out { fd, line, .. } if *fd == want => Some(line.clone()),
            _ => None,
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for our purposes; /proc says which.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn an_attempt_streams_its_output_in_order_and_exits_once() {
    let mut o = start();
    o.tx.send(&ToWorker::Hello { proto: 1 }).await.unwrap();
    assert!(matches!(
        o.next().await,
        FromWorker::HelloOk { busy: false, .. }
    ));
    let mut r = run("a1", "echo one; echo oops >&2; printf 'two\\r\\nthree'; read x; echo \"in:$x\"; echo \"env:$SECRET_TOKEN:$EXTRA\"; exit 3");
    if let ToWorker::Run { stdin, env, .. } = &mut r {
        *stdin = Some("hello\n".into());
        env.insert("EXTRA".into(), "given".into());
    }
    std::env::set_var("SECRET_TOKEN", "must-not-leak");
    o.tx.send(&r).await.unwrap();
    let frames = o.until_exit().await;
    assert!(
        matches!(&frames[0], FromWorker::Started { attempt_id, pid } if attempt_id == "a1" && *pid > 0)
    );
    assert_eq!(
        lines(&frames, Fd::Stdout),
        ["one", "two", "threein:hello", "env::given"]
    );
    assert_eq!(lines(&frames, Fd::Stderr), ["oops"]);
    let seqs: Vec<u64> = frames
        .iter()
        .filter_map(|f| match f {
            FromWorker::Out { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gap-free"
    );
    assert_eq!(
        frames.last().unwrap(),
        &FromWorker::Exit {
            attempt_id: "a1".into(),
            code: Some(3),
            signal: None,
            reason: ExitReason::Exited
        }
    );
    // Free again: the next attempt runs.
    o.tx.send(&run("a2", "echo again")).await.unwrap();
    let frames = o.until_exit().await;
    assert_eq!(lines(&frames, Fd::Stdout), ["again"]);
}

#[tokio::test]
async fn one_attempt_at_a_time_and_cancel_interrupts_first() {
    let mut o = start();
    o.tx.send(&run(
        "a1",
        "trap 'echo interrupted; exit 130' INT; echo ready; while true; do sleep 0.05; done",
    ))
    .await
    .unwrap();
    assert!(matches!(o.next().await, FromWorker::Started { .. }));
    assert!(matches!(o.next().await, FromWorker::Out { line, .. } if line == "ready"));
    o.tx.send(&run("a2", "echo never")).await.unwrap();
    assert_eq!(
        o.next().await,
        FromWorker::Busy {
            attempt_id: "a2".into()
        }
    );
    o.tx.send(&ToWorker::Cancel {
        attempt_id: "a1".into(),
        grace_ms: 4000,
    })
    .await
    .unwrap();
    let t = Instant::now();
    let frames = o.until_exit().await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the interrupt was enough"
    );
    assert_eq!(lines(&frames, Fd::Stdout), ["interrupted"]);
    assert_eq!(
        frames.last().unwrap(),
        &FromWorker::Exit {
            attempt_id: "a1".into(),
            code: Some(130),
            signal: None,
            reason: ExitReason::Cancelled
        }
    );
}

#[tokio::test]
async fn cancel_escalates_to_sigkill_for_the_whole_group() {
    let mut o = start();
    // Ignores SIGINT and SIGTERM, and has a child of its own.
    o.tx.send(&run(
        "a1",
        "trap '' INT TERM; sleep 30 & echo $!; while true; do sleep 0.05; done",
    ))
    .await
    .unwrap();
    assert!(matches!(o.next().await, FromWorker::Started { .. }));
    let child: i32 = match o.next().await {
        FromWorker::Out { line, .. } => line.parse().unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(alive(child));
    let t = Instant::now();
    o.tx.send(&ToWorker::Cancel {
        attempt_id: "a1".into(),
        grace_ms: 600,
    })
    .await
    .unwrap();
    let frames = o.until_exit().await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(
        matches!(
            frames.last().unwrap(),
            FromWorker::Exit {
                signal: Some(9),
                reason: ExitReason::Cancelled,
                ..
            }
        ),
        "{frames:?}"
    );
    for _ in 0..50 {
        if !alive(child) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(child), "the agent's own children go too");
}

#[tokio::test]
async fn a_lost_connection_kills_the_agent_and_its_children() {
    let mut o = start();
    o.tx.send(&run("a1", "sleep 30 & echo $!; echo $$; wait"))
        .await
        .unwrap();
    assert!(matches!(o.next().await, FromWorker::Started { .. }));
    let mut pids = Vec::new();
    for _ in 0..2 {
        match o.next().await {
            FromWorker::Out { line, .. } => pids.push(line.parse::<i32>().unwrap()),
            other => panic!("{other:?}"),
        }
    }
    assert!(pids.iter().all(|p| alive(*p)));
    let Orchestrator { tx, rx, worker } = o;
    drop(tx);
    drop(rx);
    tokio::time::timeout(Duration::from_secs(5), worker)
        .await
        .expect("the worker returns once the agent is dead")
        .unwrap();
    for _ in 0..50 {
        if pids.iter().all(|p| !alive(*p)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pids.iter().all(|p| !alive(*p)), "{pids:?} still alive");
}

#[tokio::test]
async fn deadlines_are_enforced() {
    let mut o = start();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut r = run("a1", "sleep 30");
    if let ToWorker::Run { deadline_unix, .. } = &mut r {
        *deadline_unix = Some(now + 1);
    }
    o.tx.send(&r).await.unwrap();
    let frames = o.until_exit().await;
    assert!(
        matches!(
            frames.last().unwrap(),
            FromWorker::Exit {
                reason: ExitReason::Timeout,
                ..
            }
        ),
        "{frames:?}"
    );
}

#[tokio::test]
async fn spawn_failures_and_long_lines() {
    let mut o = start();
    o.tx.send(&ToWorker::Run {
        attempt_id: "a1".into(),
        run_id: "r".into(),
        argv: vec!["/nonexistent/agent".into()],
        cwd: None,
        env: Default::default(),
        stdin: None,
        deadline_unix: None,
        keep_stdin: false,
        sandbox: None,
    })
    .await
    .unwrap();
    let frames = o.until_exit().await;
    assert!(
        matches!(&frames[0], FromWorker::Error { code, msg, .. } if *code == edge_workers::ErrorCode::Spawn && msg.contains("/nonexistent/agent")),
        "{frames:?}"
    );
    // A 3 MiB line arrives in pieces that each fit a frame, and whole.
    o.tx.send(&run(
        "a2",
        "head -c 3145728 /dev/zero | tr '\\0' x; echo; echo end",
    ))
    .await
    .unwrap();
    let frames = o.until_exit().await;
    let out = lines(&frames, Fd::Stdout);
    assert!(out.len() >= 4, "{}", out.len());
    assert!(out.iter().all(|l| l.len() <= edge_workers::MAX_LINE));
    assert_eq!(
        out[..out.len() - 1].iter().map(String::len).sum::<usize>(),
        3 * 1024 * 1024
    );
    assert_eq!(out.last().unwrap(), "end");
}

#[tokio::test]
async fn a_worker_with_a_floor_refuses_what_falls_short_and_says_so() {
    let floor = edge_sandbox::Floor {
        memory: Some(1 << 30),
        ..Default::default()
    };
    let mut o = start_with(Some(floor.clone()));
    o.tx.send(&ToWorker::Hello { proto: 1 }).await.unwrap();
    match o.next().await {
        FromWorker::HelloOk { floor: Some(f), .. } => assert_eq!(*f, floor),
        other => panic!("{other:?}"),
    }
    // No sandbox at all: nothing runs.
    let marker = std::env::temp_dir().join(format!("edge-floor-ran-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    o.tx.send(&run("a1", &format!("touch {}", marker.display())))
        .await
        .unwrap();
    let frames = o.until_exit().await;
    assert!(
        matches!(&frames[0], FromWorker::Error { code, msg, .. } if *code == edge_workers::ErrorCode::Policy && msg.contains("only confined agents")),
        "{frames:?}"
    );
    assert!(!frames
        .iter()
        .any(|f| matches!(f, FromWorker::Started { .. })));
    // A profile asking for more memory than the floor allows.
    let mut frame = run("a2", &format!("touch {}", marker.display()));
    if let ToWorker::Run { sandbox, .. } = &mut frame {
        *sandbox = Some(Box::new(edge_sandbox::Confine {
            profile: edge_sandbox::Profile::default_named("big"),
            home: "/var/lib/edge-agents/big".into(),
        }));
    }
    o.tx.send(&frame).await.unwrap();
    let frames = o.until_exit().await;
    assert!(
        matches!(&frames[0], FromWorker::Error { code, msg, .. } if *code == edge_workers::ErrorCode::Policy && msg.contains("memory 2147483648")),
        "{frames:?}"
    );
    assert!(!marker.exists(), "a refused run must not start");
    // The worker is free again at once.
    o.tx.send(&ToWorker::Hello { proto: 1 }).await.unwrap();
    assert!(matches!(
        o.next().await,
        FromWorker::HelloOk { busy: false, .. }
    ));
    // Closing the connection ends the worker (both halves: a split duplex ends only then).
    drop(o.tx);
    drop(o.rx);
    tokio::time::timeout(Duration::from_secs(10), o.worker)
        .await
        .expect("the worker ends when the connection closes")
        .unwrap();
}
