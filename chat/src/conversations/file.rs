//! A conversation's files: NDJSON lines appended whole, a torn last line repaired on read,
//! metadata replaced atomically, the Markdown export.

use super::*;

pub(super) fn markdown(meta: &Meta, records: &[Record]) -> String {
    use crate::frames::RunBody;
    use edge_sandbox::{BlockKind, Event};
    use std::collections::HashMap;
    let mut out = format!("# {}\n", meta.title);
    let mut kinds: HashMap<(String, u32), BlockKind> = HashMap::new();
    let mut current: Option<(String, u32)> = None;
    for r in records {
        let run = r.run_id.clone().unwrap_or_default();
        let event = match &r.frame {
            Some(RunBody::Event { event }) => Some(event),
            _ => None,
        };
        match event {
            None if r.role == "user" => {
                out.push_str(&format!("\n## {} ({})\n\n{}\n", r.user, r.ts, r.content));
            }
            None => {}
            Some(Event::BlockStart { block, kind, tool }) => {
                kinds.insert((run.clone(), *block), *kind);
                current = Some((run.clone(), *block));
                match kind {
                    BlockKind::ToolUse => {
                        let name = tool.as_ref().map(|t| t.name.as_str()).unwrap_or("tool");
                        out.push_str(&format!("\n> **{name}** `"));
                    }
                    BlockKind::Text => {
                        if !out.ends_with("\n\n") {
                            out.push('\n');
                        }
                    }
                    BlockKind::Thinking => {}
                }
            }
            Some(Event::Delta { block, text }) => match kinds.get(&(run.clone(), *block)) {
                Some(BlockKind::Text) | Some(BlockKind::ToolUse) => out.push_str(text),
                _ => {}
            },
            Some(Event::BlockStop { block }) => {
                if kinds.get(&(run.clone(), *block)) == Some(&BlockKind::ToolUse) {
                    out.push_str("`\n");
                }
                current = None;
            }
            Some(Event::ToolResult { is_error, .. }) if *is_error => {
                out.push_str("> (the tool reported an error)\n");
            }
            Some(_) => {}
        }
    }
    let _ = current;
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
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
