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
    /// `edge worker --listen` on another host: `POST {url}/work`.
    Http {
        /// `http://host:port` or `https://host:port` (no path).
        url: String,
        /// The file holding the worker's bearer token.
        token_file: Option<PathBuf>,
        /// With https: the CA (PEM) that issued the worker's certificate, instead of the
        /// system's roots.
        ca: Option<PathBuf>,
        /// With https: the certificate and key (PEM) edge presents (mTLS).
        client_cert: Option<(PathBuf, PathBuf)>,
    },
    /// A parameterized batch job on a Nomad cluster, each attempt one dispatch whose task runs
    /// `edge worker --oneshot`.
    Nomad {
        /// The Nomad HTTP API, e.g. `http://127.0.0.1:4646`.
        address: String,
        /// The file holding the ACL token (`X-Nomad-Token`); none when ACLs are off.
        token_file: Option<PathBuf>,
        /// The parameterized job's ID.
        job: String,
        /// The task whose stdout carries the worker's frames.
        task: String,
        /// The Nomad namespace.
        namespace: Option<String>,
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
    let kind_name = t.str(errs, "kind").unwrap_or("local");
    // An HTTP worker runs one attempt at a time.
    let capacity = t
        .uint(errs, "capacity")
        .unwrap_or(if kind_name == "http" { 1 } else { 2 });
    if capacity == 0 {
        errs.push(t.key("capacity"), "at least 1");
    }
    let url_of = |t: &mut Table<'_>, errs: &mut Errors, key: &'static str, what: &str| match t
        .str(errs, key)
    {
        Some(u) => match u.strip_prefix("http://").or(u.strip_prefix("https://")) {
            Some(rest) if !rest.is_empty() && !rest.trim_end_matches('/').contains('/') => {
                u.trim_end_matches('/').to_string()
            }
            _ => {
                errs.push(
                    t.key(key),
                    format!("{u:?}: use http://HOST:PORT or https://HOST:PORT, without a path"),
                );
                String::new()
            }
        },
        None => {
            errs.push(t.key(key), format!("{what} needs {key}"));
            String::new()
        }
    };
    let path = |t: &mut Table<'_>, errs: &mut Errors, key: &'static str| {
        t.str(errs, key).map(PathBuf::from)
    };
    let kind = match kind_name {
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
        "http" => {
            let url = url_of(&mut t, errs, "url", "an http outpost");
            let token_file = path(&mut t, errs, "token_file");
            let ca = path(&mut t, errs, "ca");
            let cert = path(&mut t, errs, "client_cert");
            let key = path(&mut t, errs, "client_key");
            let client_cert = match (cert, key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                (Some(_), None) => {
                    errs.push(t.key("client_key"), "client_cert needs its client_key");
                    None
                }
                (None, Some(_)) => {
                    errs.push(t.key("client_cert"), "client_key needs its client_cert");
                    None
                }
            };
            let https = url.starts_with("https://");
            if !https && (ca.is_some() || client_cert.is_some()) {
                errs.push(
                    t.key("url"),
                    "ca, client_cert and client_key need an https:// url",
                );
            }
            if token_file.is_none() && client_cert.is_none() && !url.is_empty() {
                errs.push(
                    t.key("token_file"),
                    "an http outpost needs token_file, or client_cert and client_key (mTLS): \
                     the worker refuses runs without one",
                );
            }
            OutpostKind::Http {
                url,
                token_file,
                ca,
                client_cert,
            }
        }
        "nomad" => {
            let address = url_of(&mut t, errs, "address", "a nomad outpost");
            let token_file = path(&mut t, errs, "token_file");
            let job = t.str(errs, "job").unwrap_or("edge-agent").to_string();
            let task = t.str(errs, "task").unwrap_or("agent").to_string();
            let namespace = t.str(errs, "namespace").map(str::to_string);
            for (key, v) in [("job", &job), ("task", &task)] {
                if v.is_empty() || v.contains(['/', '?', '#', ' ']) {
                    errs.push(t.key(key), format!("{v:?} is not a Nomad {key} name"));
                }
            }
            OutpostKind::Nomad {
                address,
                token_file,
                job,
                task,
                namespace,
            }
        }
        other => {
            errs.push(
                t.key("kind"),
                format!("{other:?}: use \"local\", \"ssh\", \"http\" or \"nomad\""),
            );
            // Which other keys belong depends on the kind: with a misspelled kind they cannot
            // be judged, and one error says it all.
            return None;
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
