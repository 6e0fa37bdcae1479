//! `[[outposts]]`: where agent runs go. Runs go to the first outpost with capacity, in the
//! order given; with none configured, runs go to one local outpost.

use std::path::PathBuf;

use crate::walk::{Errors, Table};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutpostKind {
    /// `edge worker --stdio` as a child process of edge.
    Local,
    /// `edge worker --stdio` as the OpenSSH forced command of `user@host`, reached with the
    /// system `ssh`, the given key, and the pinned host key.
    Ssh {
        host: String,
        port: u16,
        user: String,
        key: PathBuf,
        /// The host's public key as in `known_hosts`: `ssh-ed25519 AAAA...`.
        host_key: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutpostConfig {
    pub name: String,
    pub kind: OutpostKind,
    /// Runs at once.
    pub capacity: u64,
}

fn read_outpost(mut t: Table<'_>, errs: &mut Errors) -> Option<OutpostConfig> {
    let name = t.str(errs, "name").unwrap_or("").to_string();
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        errs.push(
            t.key("name"),
            "each outpost needs a name of letters, digits, - and _",
        );
    }
    let capacity = t.uint(errs, "capacity").unwrap_or(2);
    if capacity == 0 {
        errs.push(t.key("capacity"), "at least 1");
    }
    let kind = match t.str(errs, "kind").unwrap_or("local") {
        "local" => OutpostKind::Local,
        "ssh" => {
            let mut need = |t: &mut Table<'_>, key: &'static str, what: &str| -> String {
                match t.str(errs, key) {
                    Some(v) if !v.is_empty() => v.to_string(),
                    _ => {
                        errs.push(t.key(key), format!("an ssh outpost needs {what}"));
                        String::new()
                    }
                }
            };
            let host = need(&mut t, "host", "the worker host");
            let user = need(
                &mut t,
                "user",
                "the user whose authorized_keys runs `edge worker --stdio`",
            );
            let key = need(&mut t, "key", "the private key file edge logs in with");
            let host_key = need(
                &mut t,
                "host_key",
                "the host's pinned public key (\"ssh-ed25519 AAAA...\", from `ssh-keyscan`)",
            );
            if !host_key.is_empty() && host_key.split_whitespace().count() < 2 {
                errs.push(
                    t.key("host_key"),
                    "use \"TYPE BASE64\", e.g. \"ssh-ed25519 AAAA...\"",
                );
            }
            let port = t.uint(errs, "port").unwrap_or(22);
            if port == 0 || port > 65535 {
                errs.push(t.key("port"), "a TCP port, 1 to 65535");
            }
            OutpostKind::Ssh {
                host,
                port: port as u16,
                user,
                key: PathBuf::from(key),
                host_key,
            }
        }
        k @ ("http" | "nomad") => {
            errs.push(
                t.key("kind"),
                format!("kind = {k:?} is not built yet: use \"local\" or \"ssh\""),
            );
            OutpostKind::Local
        }
        other => {
            errs.push(
                t.key("kind"),
                format!("{other:?}: use \"local\" or \"ssh\""),
            );
            OutpostKind::Local
        }
    };
    t.finish(errs);
    Some(OutpostConfig {
        name,
        kind,
        capacity,
    })
}

pub(super) fn read_outposts(tables: Vec<Table<'_>>, errs: &mut Errors) -> Vec<OutpostConfig> {
    let mut out: Vec<OutpostConfig> = Vec::new();
    for (i, t) in tables.into_iter().enumerate() {
        if let Some(o) = read_outpost(t, errs) {
            if !o.name.is_empty() && out.iter().any(|p| p.name == o.name) {
                errs.push(
                    format!("outposts[{i}].name"),
                    format!("{:?} is used twice", o.name),
                );
            }
            out.push(o);
        }
    }
    out
}
