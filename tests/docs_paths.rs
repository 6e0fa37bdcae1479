//! Every file the docs, help texts and messages point users to exists in the repository, and
//! none of them points outside it (to notes users do not have).

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The project's own text: docs, examples, scripts and sources (not `target/`, installed
/// packages, or the vendored benchmark harness).
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            if !matches!(
                name.as_str(),
                "target" | "node_modules" | ".git" | "harness"
            ) {
                files(&p, out);
            }
        } else if [".md", ".rs", ".toml", ".sh", ".hcl"]
            .iter()
            .any(|x| name.ends_with(x))
            || name == "run"
        {
            out.push(p);
        }
    }
}

/// Paths written as `docs/x.md`, `examples/x.toml`, `bench/x.sh`...: relative to the
/// repository's root, ending with a file extension.
fn mentioned_paths(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for prefix in ["docs/", "examples/", "bench/"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(prefix) {
            let start = from + i;
            from = start + prefix.len();
            // Part of a longer path (`chat/tests/js/...`, `../docs/`) or a word: not ours.
            let before = text[..start].chars().last();
            if before
                .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'))
            {
                continue;
            }
            let rest: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'))
                .collect();
            let rest = rest.trim_end_matches('.').to_string();
            let file = rest.rsplit('/').next().unwrap_or("");
            if file.contains('.') && !file.ends_with('.') && !rest.contains('*') {
                found.push(rest);
            }
        }
    }
    found
}

/// Markdown links to files: `[text](path#anchor)`, not URLs or anchors alone.
fn markdown_links(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("](") {
        let start = from + i + 2;
        from = start;
        let Some(end) = text[start..].find(')') else {
            break;
        };
        let target = &text[start..start + end];
        if target.is_empty()
            || target.starts_with('#')
            || target.contains("://")
            || target.starts_with("mailto:")
            || target.contains(' ')
        {
            continue;
        }
        found.push(target.split('#').next().unwrap_or("").to_string());
    }
    found
}

#[test]
fn every_path_the_docs_and_messages_name_exists_and_none_leaves_the_repository() {
    let root = Path::new(ROOT);
    let mut all = Vec::new();
    files(root, &mut all);
    assert!(
        all.len() > 50,
        "found only {} files under {ROOT}",
        all.len()
    );
    let mut missing = Vec::new();
    let mut outside = Vec::new();
    let mut checked = 0;
    for f in &all {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        let rel = f.strip_prefix(root).unwrap().display().to_string();
        if rel == "tests/docs_paths.rs" {
            continue;
        }
        for bad in ["../shared", "research/"] {
            if text.contains(bad) {
                outside.push(format!("{rel} mentions {bad:?}"));
            }
        }
        for p in mentioned_paths(&text) {
            checked += 1;
            if !root.join(&p).exists() {
                missing.push(format!("{rel} names {p}"));
            }
        }
        if rel.ends_with(".md") {
            for l in markdown_links(&text) {
                checked += 1;
                let target = f.parent().unwrap().join(&l);
                if !target.exists() {
                    missing.push(format!("{rel} links {l}"));
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} paths found: is the scan broken?"
    );
    assert!(
        missing.is_empty(),
        "paths that do not exist:\n{}",
        missing.join("\n")
    );
    assert!(
        outside.is_empty(),
        "pointers outside the repository:\n{}",
        outside.join("\n")
    );
}

#[test]
fn the_scan_finds_what_it_should() {
    assert_eq!(
        mentioned_paths(
            "see docs/workers.md, `examples/acme.toml`; chat/tests/js/x.json and docs/ alone"
        ),
        ["docs/workers.md", "examples/acme.toml"]
    );
    assert_eq!(
        markdown_links("[a](config.md#outposts) [b](https://x.y/) [c](#top) [d](../README.md)"),
        ["config.md", "../README.md"]
    );
}
