use super::*;
use edge_sandbox::{BlockKind, Event};

fn rec(role: &str, content: &str, event: Option<Event>) -> Record {
    Record {
        ts: now_rfc3339(),
        user: "alice".into(),
        role: role.into(),
        content: content.into(),
        run_id: event.as_ref().map(|_| "r1".into()),
        seq: None,
        frame: event.map(|event| crate::frames::RunBody::Event { event }),
    }
}

#[test]
fn a_transcript_leaves_out_the_current_run_and_keeps_the_newest_turns() {
    let dir = tempfile::tempdir().unwrap();
    let c = Conversations::new(dir.path().to_path_buf());
    let m = c.create("alice", "t").unwrap();
    let turn = |run: &str, text: &str| {
        vec![
            Record {
                run_id: Some(run.into()),
                ..rec("user", text, None)
            },
            Record {
                run_id: Some(run.into()),
                ..rec(
                    "assistant",
                    "",
                    Some(Event::BlockStart {
                        block: 0,
                        kind: BlockKind::Text,
                        tool: None,
                    }),
                )
            },
            Record {
                run_id: Some(run.into()),
                ..rec(
                    "assistant",
                    "",
                    Some(Event::Delta {
                        block: 0,
                        text: format!("answer to {text}"),
                    }),
                )
            },
        ]
    };
    for (run, text) in [("r1", "één"), ("r2", "two"), ("r3", "now")] {
        c.append("alice", &m.id, &turn(run, text)).unwrap();
    }
    let all = c.transcript_before("alice", &m.id, "r3", 100_000).unwrap();
    assert!(
        all.contains("één") && all.contains("answer to two"),
        "{all}"
    );
    assert!(
        !all.contains("now"),
        "the current run is not history: {all}"
    );
    // Cut to the newest part, at a line, saying so.
    let short = c.transcript_before("alice", &m.id, "r3", 60).unwrap();
    assert!(
        short.len() <= 60 + "[... earlier turns left out ...]\n".len(),
        "{short}"
    );
    assert!(
        short.starts_with("[... earlier turns left out ...]\n"),
        "{short}"
    );
    assert!(
        short.contains("answer to two") && !short.contains("één"),
        "{short}"
    );
}

#[test]
fn timestamps_are_rfc3339_utc() {
    let t = now_rfc3339();
    assert_eq!(t.len(), 24, "{t}");
    assert!(
        t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T",
        "{t}"
    );
}

#[test]
fn users_see_only_their_own_conversations() {
    let dir = tempfile::tempdir().unwrap();
    let c = Conversations::new(dir.path().to_path_buf());
    let a = c.create("alice", "first").unwrap();
    c.create("bob", "bob's").unwrap();
    assert_eq!(c.list("alice").unwrap().len(), 1);
    assert!(
        c.open("bob", &a.id).unwrap().is_none(),
        "bob cannot open alice's"
    );
    assert!(!c.delete("bob", &a.id).unwrap());
    assert!(c.open("alice", &a.id).unwrap().is_some());
    assert!(c.open("alice", "../x").is_err());
    c.rename("alice", &a.id, "renamed").unwrap();
    assert_eq!(c.list("alice").unwrap()[0].title, "renamed");
    assert!(c.delete("alice", &a.id).unwrap());
    assert!(c.list("alice").unwrap().is_empty());
}

#[test]
fn a_torn_last_line_is_cut_back_and_nothing_before_it_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let c = Conversations::new(dir.path().to_path_buf());
    let m = c.create("alice", "t").unwrap();
    c.append(
        "alice",
        &m.id,
        &[rec("user", "hello", None), rec("user", "again", None)],
    )
    .unwrap();
    let (log, _) = c.paths("alice", &m.id).unwrap();
    // A crash in the middle of the next append.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(br#"{"ts":"2026-11-23T00:00:00Z","user":"alice","ro"#)
        .unwrap();
    drop(f);
    let (_, records) = c.open("alice", &m.id).unwrap().unwrap();
    assert_eq!(records.len(), 2);
    assert!(std::fs::read(&log).unwrap().ends_with(b"\n"));
    c.append("alice", &m.id, &[rec("user", "after", None)])
        .unwrap();
    let (_, records) = c.open("alice", &m.id).unwrap().unwrap();
    assert_eq!(
        records
            .iter()
            .map(|r| r.content.as_str())
            .collect::<Vec<_>>(),
        ["hello", "again", "after"]
    );
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop; `None` where this
/// process may not mount (not root).
struct Tmpfs(tempfile::TempDir);
impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let root = std::fs::read_to_string("/proc/self/status")
                .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")));
            assert!(!root, "root could not mount a tmpfs for the full-disk test");
            eprintln!("not root: the full-disk test needs a tmpfs and is skipped");
            return None;
        }
        Some(Tmpfs(dir))
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test]
async fn a_disk_that_fills_mid_run_loses_no_complete_record() {
    let Some(fs) = Tmpfs::mount("256k") else {
        return;
    };
    let c = Conversations::new(fs.0.path().join("convs"));
    let m = c.create("alice", "t").unwrap();
    // Fill most of the disk, so the run's appends hit ENOSPC part-way.
    let filler = fs.0.path().join("filler");
    std::fs::write(&filler, vec![0u8; 200 * 1024]).unwrap();
    let big = "x".repeat(700);
    let (mut ok, mut failed) = (Vec::new(), 0);
    for i in 0..200 {
        let r = rec("assistant", &format!("{i} {big}"), None);
        // Both paths: the journal (runs) and the direct append.
        let res = if i % 2 == 0 {
            c.append_shared("alice", &m.id, std::slice::from_ref(&r))
                .await
        } else {
            c.append("alice", &m.id, std::slice::from_ref(&r))
        };
        match res {
            Ok(()) => ok.push(i),
            Err(_) => failed += 1,
        }
    }
    assert!(failed > 0, "the disk never filled");
    // Every failed append left the file at a whole line.
    let (log, _) = c.paths("alice", &m.id).unwrap();
    let bytes = std::fs::read(&log).unwrap();
    assert!(
        bytes.ends_with(b"\n"),
        "a failed append left a partial line"
    );
    // Space comes back; the run goes on and ends.
    std::fs::remove_file(&filler).unwrap();
    let mut after = Vec::new();
    for i in 200..560 {
        let r = rec("assistant", &format!("{i} short"), None);
        c.append_shared("alice", &m.id, &[r]).await.unwrap();
        after.push(i);
    }
    c.append("alice", &m.id, &[rec("system", "end", None)])
        .unwrap();
    let (_, records) = c.open("alice", &m.id).unwrap().unwrap();
    let got: Vec<String> = records.iter().map(|r| r.content.clone()).collect();
    let want: Vec<String> = ok
        .iter()
        .map(|i| format!("{i} {big}"))
        .chain(after.iter().map(|i| format!("{i} short")))
        .chain(["end".to_string()])
        .collect();
    assert_eq!(got.len(), want.len(), "records were lost or invented");
    assert!(got == want, "the records differ from those acknowledged");
}

#[test]
fn a_damaged_line_costs_no_record_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = Conversations::new(dir.path().to_path_buf());
    let m = c.create("alice", "t").unwrap();
    c.append("alice", &m.id, &[rec("user", "one", None)])
        .unwrap();
    let (log, _) = c.paths("alice", &m.id).unwrap();
    // What an older edge left after a full disk: a partial line, the next record glued to
    // it, then more records; and a line damaged some other way.
    let whole = |content: &str| {
        let mut l = serde_json::to_vec(&rec("user", content, None)).unwrap();
        l.push(b'\n');
        l
    };
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(br#"{"ts":"2026-11-23T00:00:00Z","user":"al"#)
        .unwrap();
    f.write_all(&whole("two")).unwrap();
    f.write_all(b"not json at all\n").unwrap();
    f.write_all(&whole("three")).unwrap();
    f.write_all(br#"{"ts":"torn"#).unwrap();
    drop(f);
    let (_, records) = c.open("alice", &m.id).unwrap().unwrap();
    let got: Vec<&str> = records.iter().map(|r| r.content.as_str()).collect();
    assert_eq!(got, ["one", "two", "three"]);
    c.append("alice", &m.id, &[rec("user", "four", None)])
        .unwrap();
    let (_, records) = c.open("alice", &m.id).unwrap().unwrap();
    assert_eq!(records.len(), 4);
    assert_eq!(records[3].content, "four");
}

#[test]
fn export_as_markdown() {
    let dir = tempfile::tempdir().unwrap();
    let c = Conversations::new(dir.path().to_path_buf());
    let m = c.create("alice", "Fix the test").unwrap();
    c.append(
        "alice",
        &m.id,
        &[
            rec("user", "why does it fail?", None),
            rec(
                "assistant",
                "",
                Some(Event::BlockStart {
                    block: 0,
                    kind: BlockKind::Text,
                    tool: None,
                }),
            ),
            rec(
                "assistant",
                "",
                Some(Event::Delta {
                    block: 0,
                    text: "Let me ".into(),
                }),
            ),
            rec(
                "assistant",
                "",
                Some(Event::Delta {
                    block: 0,
                    text: "look.".into(),
                }),
            ),
            rec("assistant", "", Some(Event::BlockStop { block: 0 })),
            rec(
                "assistant",
                "",
                Some(Event::BlockStart {
                    block: 1,
                    kind: BlockKind::ToolUse,
                    tool: Some(edge_sandbox::ToolRef {
                        id: "t".into(),
                        name: "Bash".into(),
                    }),
                }),
            ),
            rec(
                "assistant",
                "",
                Some(Event::Delta {
                    block: 1,
                    text: "{\"command\":\"ls\"}".into(),
                }),
            ),
            rec("assistant", "", Some(Event::BlockStop { block: 1 })),
        ],
    )
    .unwrap();
    let md = c.export_markdown("alice", &m.id).unwrap().unwrap();
    assert!(md.starts_with("# Fix the test\n"), "{md}");
    assert!(md.contains("\n## alice · "), "a heading per turn: {md}");
    assert!(md.contains("why does it fail?"), "{md}");
    assert!(md.contains("\n### Agent\n\nLet me look.\n"), "{md}");
    assert!(
        md.contains("- **Bash** `$ ls`\n"),
        "tool calls summarised: {md}"
    );
}

#[test]
fn a_title_from_a_first_message() {
    assert_eq!(
        title_from("  \n  Fix   the flaky\ttest \nmore"),
        "Fix the flaky test"
    );
    let long = "word ".repeat(30);
    let t = title_from(&long);
    assert!(t.ends_with('…') && t.chars().count() <= 61, "{t}");
    assert_eq!(title_from(&"x".repeat(100)).chars().count(), 60);
    assert_eq!(title_from("\n\n"), UNTITLED);
}

#[tokio::test]
async fn journal_appends_go_through_the_log_which_empties_when_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let c = Conversations::new(dir.path().to_path_buf());
    let m = c.create("alice", "t").unwrap();
    let wal = dir.path().join("journal.wal");
    for i in 0..20 {
        c.append_shared("alice", &m.id, &[rec("assistant", &i.to_string(), None)])
            .await
            .unwrap();
    }
    // Acknowledged: in the log (synced) until the files are synced at a checkpoint.
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    // A second edge on the same directory cannot share the log: it syncs each file itself.
    let other = Conversations::new(dir.path().to_path_buf());
    other
        .append_shared("alice", &m.id, &[rec("assistant", "other", None)])
        .await
        .unwrap();
    let mut emptied = false;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if std::fs::metadata(&wal).unwrap().len() == 0 {
            emptied = true;
            break;
        }
    }
    assert!(emptied, "a quiet second did not empty the log");
    let (_, records) = c.open("alice", &m.id).unwrap().unwrap();
    let got: Vec<&str> = records.iter().map(|r| r.content.as_str()).collect();
    let want: Vec<String> = (0..20)
        .map(|i| i.to_string())
        .chain(["other".into()])
        .collect();
    assert_eq!(got, want);
}
