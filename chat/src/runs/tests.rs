//! The orchestrator against fake workers on in-memory duplexes: each speaks the real protocol
//! (length-framed frames through `stream_link`), scripted to end an attempt one way or
//! another, so the retry loop's typed outcomes are seen without processes or sockets.

use super::*;
use edge_workers::outposts::{BoxFuture, Link, Transport};
use edge_workers::{ErrorCode, FrameReader, FrameWriter};

/// What a fake worker does with the run it is given.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Script {
    /// Starts, writes two lines, exits 0.
    Ok,
    /// Starts, writes a line, and the connection goes (a host gone).
    Drop,
    /// Its floor refuses the run's confinement.
    Policy,
    /// Starts and waits to be cancelled; then exits as cancelled.
    AwaitCancel,
    /// Starts, writes ten more lines 4 ms apart, exits 0.
    Paced,
}

#[derive(Debug)]
struct Fake {
    name: &'static str,
    script: Script,
    /// Every frame the worker received, in order.
    got: Arc<Mutex<Vec<ToWorker>>>,
}

impl Transport for Fake {
    fn hello(&self) -> BoxFuture<'_, Result<Hello, String>> {
        Box::pin(async {
            Ok(Hello {
                worker: self.name.into(),
                version: "fake".into(),
                busy: false,
                millis: 0,
                floor: None,
            })
        })
    }

    fn open<'a>(&'a self, run: &'a ToWorker) -> BoxFuture<'a, Result<Link, String>> {
        Box::pin(async move {
            let (near, far) = tokio::io::duplex(64 * 1024);
            let (nr, nw) = tokio::io::split(near);
            let link = edge_workers::outposts::stream_link(nr, nw, Box::pin(async {}));
            link.to.send(run.clone()).map_err(|e| e.to_string())?;
            tokio::spawn(worker(far, self.script, self.got.clone()));
            Ok(link)
        })
    }

    fn identity(&self) -> String {
        self.name.into()
    }
}

/// The far end of the duplex: reads frames, answers as `script` says.
async fn worker(far: tokio::io::DuplexStream, script: Script, got: Arc<Mutex<Vec<ToWorker>>>) {
    let (r, w) = tokio::io::split(far);
    let mut r = FrameReader::<_, ToWorker>::new(r);
    let mut w = FrameWriter::<_, FromWorker>::new(w);
    let Some(Ok(run)) = r.next().await else {
        return;
    };
    got.lock().unwrap().push(run.clone());
    let ToWorker::Run { attempt_id: a, .. } = run else {
        return;
    };
    let out = |seq, line: &str| FromWorker::Out {
        attempt_id: a.clone(),
        seq,
        fd: Fd::Stdout,
        line: line.into(),
    };
    let exit = |code, reason| FromWorker::Exit {
        attempt_id: a.clone(),
        code,
        signal: None,
        reason,
    };
    if script == Script::Policy {
        let _ = w
            .send(&FromWorker::Error {
                attempt_id: Some(a.clone()),
                code: ErrorCode::Policy,
                msg: "this worker's floor requires seccomp".into(),
            })
            .await;
        let _ = w.send(&exit(None, ExitReason::Exited)).await;
        return;
    }
    let _ = w
        .send(&FromWorker::Started {
            attempt_id: a.clone(),
            pid: 1,
        })
        .await;
    let _ = w.send(&out(1, "hello from the fake")).await;
    match script {
        Script::Ok => {
            let _ = w.send(&out(2, "done")).await;
            let _ = w.send(&exit(Some(0), ExitReason::Exited)).await;
        }
        Script::Paced => {
            for i in 0..10 {
                tokio::time::sleep(Duration::from_millis(4)).await;
                let _ = w.send(&out(2 + i, &format!("line {i}"))).await;
            }
            let _ = w.send(&exit(Some(0), ExitReason::Exited)).await;
        }
        Script::Drop => {} // the duplex drops with this task
        Script::AwaitCancel => {
            while let Some(Ok(f)) = r.next().await {
                got.lock().unwrap().push(f.clone());
                if let ToWorker::Cancel { .. } = f {
                    let _ = w.send(&exit(None, ExitReason::Cancelled)).await;
                    break;
                }
            }
        }
        Script::Policy => unreachable!("answered above"),
    }
}

struct Bed {
    orch: Arc<Orchestrator>,
    got: Vec<Arc<Mutex<Vec<ToWorker>>>>,
    conv: String,
    _dir: tempfile::TempDir,
}

fn bed(scripts: &[(&'static str, Script)]) -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let conversations = Conversations::new(dir.path().to_path_buf());
    let conv = conversations.create("alice", "t").unwrap().id;
    let orch = Orchestrator::new(vec![], conversations);
    let mut got = Vec::new();
    let mut list = Vec::new();
    for (name, script) in scripts {
        let g = Arc::new(Mutex::new(Vec::new()));
        got.push(g.clone());
        list.push(Outpost {
            name: name.to_string(),
            via: Arc::new(Fake {
                name,
                script: *script,
                got: g,
            }),
            capacity: 1,
        });
    }
    orch.set_outposts(list);
    Bed {
        orch,
        got,
        conv,
        _dir: dir,
    }
}

fn spec() -> AgentSpec {
    AgentSpec {
        agent: Agent::Command {
            argv: vec!["fake".into(), "{message}".into()],
        },
        workspace: "/tmp".into(),
        timeout: Duration::from_secs(60),
        permission_timeout: Duration::from_secs(60),
        sandbox: None,
    }
}

/// Every frame of the run to its end (bounded: 10 s).
async fn frames(run: &Run) -> Vec<RunBody> {
    let (past, mut rx) = run.subscribe(0);
    let mut out: Vec<RunFrame> = past.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !matches!(out.last().map(|f| &f.body), Some(RunBody::End { .. })) {
        let f = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("the run ended within 10 s")
            .unwrap();
        if out.last().is_none_or(|l| f.seq > l.seq) {
            out.push(f);
        }
    }
    for (i, f) in out.iter().enumerate() {
        assert_eq!(f.seq, i as u64 + 1, "numbered from 1 without gaps");
    }
    out.into_iter().map(|f| f.body).collect()
}

fn end(bodies: &[RunBody]) -> (Outcome, Option<String>) {
    match bodies.last() {
        Some(RunBody::End {
            outcome, detail, ..
        }) => (*outcome, detail.clone()),
        other => panic!("no end: {other:?}"),
    }
}

fn details(bodies: &[RunBody]) -> Vec<String> {
    bodies
        .iter()
        .filter_map(|b| match b {
            RunBody::State { detail, .. } => detail.clone(),
            _ => None,
        })
        .collect()
}

/// The text of every delta frame, one string per frame.
fn delta_frames(bodies: &[RunBody]) -> Vec<String> {
    bodies
        .iter()
        .filter_map(|b| match b {
            RunBody::Event {
                event: Event::Delta { text, .. },
            } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

/// With a few runs, each line is its own frame at once; with [`TICK_FROM_RUNS`] going, the
/// deltas of a tick share a frame (the same text, in order, fewer frames).
#[tokio::test]
async fn under_load_deltas_of_a_tick_share_a_frame() {
    let b = bed(&[("a", Script::Paced)]);
    let run = b.orch.start("alice", &b.conv, "hi", &spec(), None).unwrap();
    let alone = delta_frames(&frames(&run).await);
    assert_eq!(alone.len(), 11, "{alone:?}");

    let b = bed(&[("a", Script::Paced)]);
    for _ in 0..TICK_FROM_RUNS {
        b.orch.metrics.started();
    }
    let run = b.orch.start("alice", &b.conv, "hi", &spec(), None).unwrap();
    let loaded = delta_frames(&frames(&run).await);
    assert_eq!(loaded.concat(), alone.concat(), "the same text");
    assert!(
        loaded.len() <= 6,
        "10 lines 4 ms apart in 16 ms ticks share frames: {loaded:?}"
    );
}

#[tokio::test]
async fn a_lost_attempt_moves_to_the_next_outpost_and_rests_the_first() {
    let b = bed(&[("a", Script::Drop), ("b", Script::Ok)]);
    let run = b.orch.start("alice", &b.conv, "hi", &spec(), None).unwrap();
    let bodies = frames(&run).await;
    assert_eq!(end(&bodies), (Outcome::Ok, None), "{bodies:?}");
    let d = details(&bodies);
    assert!(
        d.iter()
            .any(|d| d.contains("the worker went away mid-run") && d.contains("attempt 2")),
        "{d:?}"
    );
    // What the lost attempt streamed stays; the second attempt's output follows.
    let texts = delta_frames(&bodies);
    assert_eq!(
        texts
            .iter()
            .filter(|t| t.contains("hello from the fake"))
            .count(),
        2,
        "{texts:?}"
    );
    // Attempt ids are never reused.
    let ids: Vec<String> = b
        .got
        .iter()
        .flat_map(|g| g.lock().unwrap().clone())
        .filter_map(|f| match f {
            ToWorker::Run { attempt_id, .. } => Some(attempt_id),
            _ => None,
        })
        .collect();
    assert_eq!(ids, [format!("{}-1", run.id), format!("{}-2", run.id)]);
    let status = b.orch.outpost_status();
    let a = status.iter().find(|s| s.0 == "a").unwrap();
    assert!(
        a.3.as_deref().is_some_and(|w| w.contains("went away")),
        "{status:?}"
    );
    let bb = status.iter().find(|s| s.0 == "b").unwrap();
    assert_eq!((bb.1, bb.3.as_deref()), (0, None), "{status:?}");
}

#[tokio::test]
async fn a_floor_that_refuses_sends_the_run_on_without_resting_the_outpost() {
    let b = bed(&[("strict", Script::Policy), ("b", Script::Ok)]);
    let run = b.orch.start("alice", &b.conv, "hi", &spec(), None).unwrap();
    let bodies = frames(&run).await;
    assert_eq!(end(&bodies).0, Outcome::Ok, "{bodies:?}");
    assert!(details(&bodies)
        .iter()
        .any(|d| d == "skipped: this worker's floor requires seccomp"));
    let status = b.orch.outpost_status();
    assert!(
        status.iter().all(|s| s.3.is_none()),
        "nothing rests: {status:?}"
    );
}

#[tokio::test]
async fn when_every_outpost_fails_the_end_says_why_for_each() {
    let b = bed(&[("a", Script::Drop), ("strict", Script::Policy)]);
    let run = b.orch.start("alice", &b.conv, "hi", &spec(), None).unwrap();
    let (outcome, detail) = end(&frames(&run).await);
    assert_eq!(outcome, Outcome::Error);
    let detail = detail.unwrap();
    assert!(
        detail.starts_with("no outpost could take the run: "),
        "{detail}"
    );
    assert!(
        detail.contains("a: the worker went away mid-run"),
        "{detail}"
    );
    assert!(
        detail.contains("strict: this worker's floor requires seccomp"),
        "{detail}"
    );
}

#[tokio::test]
async fn cancel_reaches_the_worker_and_ends_the_run_cancelled() {
    let b = bed(&[("a", Script::AwaitCancel)]);
    let run = b.orch.start("alice", &b.conv, "hi", &spec(), None).unwrap();
    // Once the agent has started, cancel.
    let (_, mut rx) = run.subscribe(0);
    loop {
        let f = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        if matches!(&f.body, RunBody::State { state, .. } if state == "running") {
            break;
        }
    }
    run.cancel();
    let bodies = frames(&run).await;
    assert_eq!(end(&bodies), (Outcome::Cancelled, None), "{bodies:?}");
    let got = b.got[0].lock().unwrap().clone();
    assert!(
        got.iter()
            .any(|f| matches!(f, ToWorker::Cancel { grace_ms, .. } if *grace_ms == CANCEL_GRACE.as_millis() as u64)),
        "{got:?}"
    );
    // Every frame is in the conversation, the end last.
    let (_, records) = b
        .orch
        .conversations()
        .open("alice", &b.conv)
        .unwrap()
        .unwrap();
    assert!(matches!(
        records.last().and_then(|r| r.frame.as_ref()),
        Some(RunBody::End {
            outcome: Outcome::Cancelled,
            ..
        })
    ));
}

#[test]
fn deltas_of_one_block_that_arrive_together_become_one() {
    let d = |block, text: &str| Event::Delta {
        block,
        text: text.into(),
    };
    let stop = Event::BlockStop { block: 0 };
    let got = task::coalesce(vec![
        d(0, "a"),
        d(0, "b"),
        d(0, "c"),
        d(1, "x"),
        stop.clone(),
        d(0, "d"),
        d(0, "e"),
    ]);
    assert_eq!(got, vec![d(0, "abc"), d(1, "x"), stop, d(0, "de")]);
}
