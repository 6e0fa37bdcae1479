//! Where a config key is in the file: `projects[0].routes[1].mount` → line and column, so that
//! every error can point at its place (toml_edit keeps each key's and value's span).

use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

/// One step of a key path: a name, maybe with an index (`routes[1]`).
fn steps(key: &str) -> Vec<(&str, Option<usize>)> {
    key.split('.')
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse().ok()),
            None => (s, None),
        })
        .collect()
}

/// The span of `key` in `doc`: the key itself where it is written, else the nearest table
/// that holds it (a missing key is reported at its table's header).
fn span_of(doc: &ImDocument<&str>, key: &str) -> Option<Range<usize>> {
    let mut table: &Table = doc.as_table();
    let mut best = None;
    let steps = steps(key);
    for (i, (name, index)) in steps.iter().enumerate() {
        let last = i + 1 == steps.len();
        let Some(item) = table.get(name) else {
            return best;
        };
        let key_span = table.key(name).and_then(|k| k.span());
        match (item, index) {
            (Item::ArrayOfTables(a), Some(n)) => {
                let t = a.get(*n)?;
                best = t.span().or(key_span).or(best);
                table = t;
            }
            (Item::Table(t), None) => {
                best = t.span().or(key_span).or(best);
                table = t;
            }
            (Item::Value(Value::Array(a)), Some(n)) => {
                return a.get(*n).and_then(|v| v.span()).or(key_span).or(best);
            }
            _ => {
                return if last { key_span.or(best) } else { best };
            }
        }
    }
    best
}

/// `(line, column)`, both from 1, of `key` in the TOML `text`.
pub fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    let doc = ImDocument::parse(text).ok()?;
    let span = span_of(&doc, key)?;
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, col))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "domain = \"x\"\n\n[[projects]]\nname = \"demo\"\n  [[projects.routes]]\n  mount = \"forge\"\n  [[projects.routes]]\n  mount = \"Bad!\"\n  root_paths = [\"/a/\", \"b\"]\n[chat]\nlogin = \"tokn\"\n";

    #[test]
    fn keys_values_and_missing_keys_are_found() {
        assert_eq!(locate(TEXT, "domain"), Some((1, 1)));
        assert_eq!(locate(TEXT, "projects[0].routes[1].mount"), Some((8, 3)));
        assert_eq!(
            locate(TEXT, "projects[0].routes[1].root_paths[1]"),
            Some((9, 24))
        );
        assert_eq!(locate(TEXT, "chat.login"), Some((11, 1)));
        // A key that is not written: its table.
        assert_eq!(locate(TEXT, "projects[0].routes[0].upstream"), Some((5, 3)));
        assert_eq!(locate("not toml [", "x"), None);
    }
}
