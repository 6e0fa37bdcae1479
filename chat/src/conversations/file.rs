//! A conversation's files: NDJSON lines appended whole, a torn last line repaired on read,
//! metadata replaced atomically, the Markdown export.

use super::*;

pub(super) fn markdown(meta: &Meta, records: &[Record]) -> String {
    use crate::frames::{Outcome, RunBody};
    use edge_sandbox::Event;
    let mut out = format!("# {}\n", meta.title);
    // Each block's kind, tool, text so far and run, by run and block, in the order they started: a block without its stop (a crash, a test) is written when its
    // turn is over.
    let mut blocks: Vec<((String, u32), Block)> = Vec::new();
    // The calls whose result was an error, marked on their line.
    let failed: std::collections::HashSet<&str> = records
        .iter()
        .filter_map(|r| match &r.frame {
            Some(RunBody::Event {
                event:
                    Event::ToolResult {
                        tool_use_id,
                        is_error: true,
                        ..
                    },
            }) => Some(tool_use_id.as_str()),
            _ => None,
        })
        .collect();
    // Whether the run has its heading yet.
    let mut headed: Option<String> = None;
    for r in records {
        let run = r.run_id.clone().unwrap_or_default();
        let turn_over = (r.frame.is_none() && r.role == "user")
            || matches!(&r.frame, Some(RunBody::End { .. }));
        if turn_over {
            for (_, b) in blocks.drain(..) {
                write_block(&mut out, &mut headed, &b, &failed);
            }
        }
        match &r.frame {
            None if r.role == "user" => {
                out.push_str(&format!("\n## {} · {}\n\n{}\n", r.user, r.ts, r.content));
                headed = None;
            }
            Some(RunBody::Event { event }) => match event {
                Event::BlockStart { block, kind, tool } => {
                    let (name, id) = tool
                        .as_ref()
                        .map(|t| (t.name.clone(), t.id.clone()))
                        .unwrap_or_default();
                    blocks.push((
                        (run.clone(), *block),
                        (*kind, name, id, String::new(), run.clone()),
                    ));
                }
                Event::Delta { block, text } => {
                    let key = (run.clone(), *block);
                    if let Some((_, b)) = blocks.iter_mut().find(|(k, _)| *k == key) {
                        b.3.push_str(text);
                    }
                }
                Event::BlockStop { block } => {
                    let key = (run.clone(), *block);
                    if let Some(i) = blocks.iter().position(|(k, _)| *k == key) {
                        let (_, b) = blocks.remove(i);
                        write_block(&mut out, &mut headed, &b, &failed);
                    }
                }
                _ => {}
            },
            Some(RunBody::End {
                outcome, detail, ..
            }) if *outcome != Outcome::Ok => {
                if headed.as_deref() != Some(run.as_str()) {
                    out.push_str("\n### Agent\n\n");
                    headed = Some(run.clone());
                }
                let what = match outcome {
                    Outcome::Cancelled => "cancelled",
                    Outcome::Timeout => "stopped at its time limit",
                    Outcome::Interrupted => "interrupted (edge stopped)",
                    _ => "failed",
                };
                out.push_str(&format!("\n_This reply was {what}"));
                if let Some(d) = detail.as_deref().filter(|d| !d.is_empty()) {
                    out.push_str(&format!(": {}", d.lines().next().unwrap_or(d)));
                }
                out.push_str("._\n");
            }
            _ => {}
        }
    }
    for (_, b) in blocks.drain(..) {
        write_block(&mut out, &mut headed, &b, &failed);
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// A block of a run: kind, tool name, tool call id, text, run id.
type Block = (edge_sandbox::BlockKind, String, String, String, String);

/// Writes one finished block: text as it is, a tool call as one line (marked when it failed),
/// thinking not at all; the run's heading first.
fn write_block(
    out: &mut String,
    headed: &mut Option<String>,
    (kind, name, id, text, run): &Block,
    failed: &std::collections::HashSet<&str>,
) {
    use edge_sandbox::BlockKind;
    let line = match kind {
        BlockKind::Text if !text.trim().is_empty() => format!("{}\n\n", text.trim_end()),
        BlockKind::ToolUse => {
            let mark = if failed.contains(id.as_str()) {
                " (failed)"
            } else {
                ""
            };
            format!("- **{name}** {}{mark}\n", tool_line(name, text))
        }
        _ => return,
    };
    if headed.as_deref() != Some(run.as_str()) {
        out.push_str("\n### Agent\n\n");
        *headed = Some(run.clone());
    }
    out.push_str(&line);
}

/// One line for a tool call, as the chat's card titles it: the command, the file, the pattern.
pub(super) fn tool_line(name: &str, input: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(input) else {
        return format!("`{}`", input.trim());
    };
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let line = match name {
        "Bash" => format!("$ {}", s("command")),
        "Read" | "Edit" | "MultiEdit" | "Write" => s("file_path"),
        "Grep" | "Glob" => {
            let path = s("path");
            if path.is_empty() {
                s("pattern")
            } else {
                format!("{} in {path}", s("pattern"))
            }
        }
        "TodoWrite" => {
            let todos = v
                .get("todos")
                .and_then(|t| t.as_array())
                .cloned()
                .unwrap_or_default();
            let done = todos.iter().filter(|t| t["status"] == "completed").count();
            return format!("{done}/{} done", todos.len());
        }
        _ => v
            .as_object()
            .and_then(|o| o.values().find_map(|x| x.as_str()))
            .unwrap_or("")
            .to_string(),
    };
    format!("`{}`", line.replace('`', "'"))
}

/// Appends whole lines and waits until they are on disk; on failure the file is as before.
pub(super) fn append_to(log: &Path, records: &[Record]) -> Result<(), Error> {
    let buf = lines(records)?;
    let (f, before) = write_whole(log, &buf)?;
    f.sync_data().map_err(|e| {
        roll_back(log, &f, before);
        io(log)(e)
    })
}

pub(super) fn lines(records: &[Record]) -> Result<Vec<u8>, Error> {
    let mut buf = Vec::new();
    for r in records {
        serde_json::to_writer(&mut buf, r).map_err(|e| Error::Internal(e.to_string()))?;
        buf.push(b'\n');
    }
    Ok(buf)
}

/// Every whole record of a file. A torn tail (no newline: a crash mid-append) is cut off, and
/// the cut made durable, so the next append starts on a clean line. A damaged line in the
/// middle never costs the records after it: it is skipped, and a record glued to the end of a
/// torn line (as an older edge could leave after a full disk) is read from where it starts.
pub(super) fn read_repairing(log: &Path) -> Result<Vec<Record>, Error> {
    let bytes = std::fs::read(log).map_err(io(log))?;
    let mut records = Vec::new();
    let mut pos = 0usize;
    let mut damaged = 0usize;
    while pos < bytes.len() {
        let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let line = &bytes[pos..pos + nl];
        pos += nl + 1;
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Record>(line) {
            Ok(r) => records.push(r),
            Err(_) => {
                damaged += 1;
                if let Some(r) = record_within(line) {
                    records.push(r);
                }
            }
        }
    }
    if damaged > 0 {
        tracing::warn!(file = %log.display(), lines = damaged, "conversation file has damaged lines; the records around them are kept");
    }
    if pos < bytes.len() {
        tracing::warn!(
            file = %log.display(),
            cut = bytes.len() - pos,
            "conversation file ended in a torn line; cut back to the last whole line"
        );
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(log)
            .map_err(io(log))?;
        f.set_len(pos as u64).map_err(io(log))?;
        f.sync_all().map_err(io(log))?;
    }
    Ok(records)
}

/// The whole record at the end of a damaged line, if one starts there: every record is written
/// with `ts` first, so one begins at a `{"ts":` and runs to the end of the line.
pub(super) fn record_within(line: &[u8]) -> Option<Record> {
    const START: &[u8] = b"{\"ts\":";
    (1..line.len().saturating_sub(START.len() - 1))
        .filter(|&i| line[i..].starts_with(START))
        .find_map(|i| serde_json::from_slice::<Record>(&line[i..]).ok())
}

/// Write to a temporary file, fsync, rename over `path`, fsync the directory.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("meta")
    ));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
