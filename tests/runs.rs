//! Runs end to end with a real worker process: the orchestrator starts `edge worker --stdio`,
//! which runs a stand-in for Claude Code (`tests/fixtures/fake-claude.sh`, speaking the real
//! CLI's stream-json); events come back numbered without gaps, are on disk before anyone
//! hears of them, reach late listeners from memory, and every run ends exactly once.

use std::sync::Arc;
use std::time::Duration;

use edge_chat::{Agent, AgentSpec, Conversations, Orchestrator, Outcome, RunBody, RunFrame};
use edge_sandbox::Event;

fn orchestrator(dir: &std::path::Path) -> Arc<Orchestrator> {
    Orchestrator::new(
        vec![
            env!("CARGO_BIN_EXE_edge").into(),
            "worker".into(),
            "--stdio".into(),
        ],
        Conversations::new(dir.join("conversations")),
    )
}

fn claude(dir: &std::path::Path) -> AgentSpec {
    AgentSpec {
        agent: Agent::Claude {
            command: concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fake-claude.sh").into(),
            permission_mode: "acceptEdits".into(),
        },
        workspace: dir.to_str().unwrap().into(),
        timeout: Duration::from_secs(30),
        permission_timeout: Duration::from_secs(300),
        sandbox: None,
    }
}

async fn until_end(rx: &mut tokio::sync::broadcast::Receiver<RunFrame>) -> Vec<RunFrame> {
    let mut out = Vec::new();
    loop {
        let f = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("a frame within 15 s")
            .unwrap();
        let end = matches!(f.body, RunBody::End { .. });
        out.push(f);
        if end {
            return out;
        }
    }
}

#[tokio::test]
async fn a_run_streams_numbered_events_stores_them_first_and_ends_once() {
    let dir = tempfile::tempdir().unwrap();
    let o = orchestrator(dir.path());
    let conv = o.conversations().create("alice", "t").unwrap();
    let run = o
        .start("alice", &conv.id, "hello there", &claude(dir.path()), None)
        .unwrap();
    let (missed, mut rx) = run.subscribe(0);
    let mut frames = missed.unwrap();
    frames.extend(until_end(&mut rx).await);
    frames.dedup_by_key(|f| f.seq);
    let seqs: Vec<u64> = frames.iter().map(|f| f.seq).collect();
    assert_eq!(
        seqs,
        (1..=frames.len() as u64).collect::<Vec<_>>(),
        "gap-free from 1"
    );
    let text: String = frames
        .iter()
        .filter_map(|f| match &f.body {
            RunBody::Event {
                event: Event::Delta { text, .. },
            } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        text, "You said: hello there",
        "deltas once, not again from the whole message"
    );
    assert!(frames.iter().any(|f| matches!(&f.body, RunBody::Event { event: Event::Session { session_id, .. } } if session_id.len() == 36)));
    let ends: Vec<_> = frames
        .iter()
        .filter(|f| matches!(f.body, RunBody::End { .. }))
        .collect();
    assert_eq!(ends.len(), 1);
    match &ends[0].body {
        RunBody::End {
            outcome,
            usage,
            cost_usd,
            ..
        } => {
            assert_eq!(*outcome, Outcome::Ok);
            assert_eq!(usage.total(), 122);
            assert_eq!(*cost_usd, Some(0.01));
        }
        _ => unreachable!(),
    }
    // Everything is in the conversation file: the user's message, then every frame.
    let (_, records) = o.conversations().open("alice", &conv.id).unwrap().unwrap();
    assert_eq!(records[0].role, "user");
    assert_eq!(records[0].content, "hello there");
    let stored: Vec<u64> = records[1..].iter().filter_map(|r| r.seq).collect();
    assert_eq!(stored, seqs);
    // A listener arriving late gets what it missed from memory.
    let (missed, _) = run.subscribe(3);
    assert_eq!(missed.unwrap().first().map(|f| f.seq), Some(4));
    assert!(run.ended());
    // The conversation is free again.
    for _ in 0..100 {
        if o.active("alice", &conv.id).is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(o.active("alice", &conv.id).is_none());
}

#[tokio::test]
async fn one_run_per_conversation_and_cancel_ends_it_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let o = orchestrator(dir.path());
    let conv = o.conversations().create("alice", "t").unwrap();
    let spec = claude(dir.path());
    let run = o.start("alice", &conv.id, "go slow", &spec, None).unwrap();
    let (_, mut rx) = run.subscribe(0);
    let err = o
        .start("alice", &conv.id, "another", &spec, None)
        .unwrap_err();
    assert!(err.to_string().contains("already has a run"), "{err}");
    // Wait for it to stream, then cancel twice (idempotent).
    loop {
        let f = rx.recv().await.unwrap();
        if matches!(
            f.body,
            RunBody::Event {
                event: Event::Delta { .. }
            }
        ) {
            break;
        }
    }
    run.cancel();
    run.cancel();
    let frames = until_end(&mut rx).await;
    assert!(frames
        .iter()
        .any(|f| matches!(&f.body, RunBody::State { state, .. } if state == "cancelling")));
    let end = frames.last().unwrap();
    assert!(
        matches!(
            end.body,
            RunBody::End {
                outcome: Outcome::Cancelled,
                ..
            }
        ),
        "{end:?}"
    );
    // No second end ever comes.
    assert!(tokio::time::timeout(Duration::from_millis(300), rx.recv())
        .await
        .is_err());
}

#[tokio::test]
async fn failures_and_plain_commands() {
    let dir = tempfile::tempdir().unwrap();
    let o = orchestrator(dir.path());
    let conv = o.conversations().create("bob", "t").unwrap();
    let run = o
        .start("bob", &conv.id, "please fail", &claude(dir.path()), None)
        .unwrap();
    let (missed, mut rx) = run.subscribe(0);
    let mut frames = missed.unwrap();
    if !frames.iter().any(|f| matches!(f.body, RunBody::End { .. })) {
        frames.extend(until_end(&mut rx).await);
    }
    assert!(matches!(
        frames.last().unwrap().body,
        RunBody::End {
            outcome: Outcome::Error,
            ..
        }
    ));

    let conv = o.conversations().create("bob", "cmd").unwrap();
    let spec = AgentSpec {
        agent: Agent::Command {
            argv: vec!["echo".into(), "agent got: {message}".into()],
        },
        workspace: dir.path().to_str().unwrap().into(),
        timeout: Duration::from_secs(30),
        permission_timeout: Duration::from_secs(300),
        sandbox: None,
    };
    let run = o.start("bob", &conv.id, "$(id)", &spec, None).unwrap();
    let (missed, mut rx) = run.subscribe(0);
    let mut frames = missed.unwrap();
    if !frames.iter().any(|f| matches!(f.body, RunBody::End { .. })) {
        frames.extend(until_end(&mut rx).await);
    }
    frames.dedup_by_key(|f| f.seq);
    let text: String = frames
        .iter()
        .filter_map(|f| match &f.body {
            RunBody::Event {
                event: Event::Delta { text, .. },
            } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        text, "agent got: $(id)\n",
        "no shell: the message is not interpreted"
    );
    assert!(matches!(
        frames.last().unwrap().body,
        RunBody::End {
            outcome: Outcome::Ok,
            ..
        }
    ));
}
