//! `[sandbox.profiles.NAME]`: which layers an agent run requires, and their limits. A profile
//! named `default` always exists (every layer required); a file may redefine it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use edge_sandbox::{Floor, Layer, Profile};

use crate::walk::{Errors, Table};

fn layers(t: &mut Table<'_>, errs: &mut Errors, key: &'static str) -> Option<Vec<Layer>> {
    let names = t.strings(errs, key)?;
    let mut out = Vec::new();
    for (i, n) in names.iter().enumerate() {
        if *n == "all" {
            out.extend(Layer::ALL);
            continue;
        }
        match Layer::parse(n) {
            Some(l) => out.push(l),
            None => errs.push(
                format!("{}[{i}]", t.key(key)),
                format!(
                    "{n:?} is not a sandbox layer: use \"all\" or some of {}",
                    Layer::ALL.map(Layer::name).join(", ")
                ),
            ),
        }
    }
    out.sort();
    out.dedup();
    Some(out)
}

fn paths(t: &mut Table<'_>, errs: &mut Errors, key: &'static str) -> Vec<PathBuf> {
    given_paths(t, errs, key).unwrap_or_default()
}

/// Absolute paths, or None when the key is absent.
fn given_paths(t: &mut Table<'_>, errs: &mut Errors, key: &'static str) -> Option<Vec<PathBuf>> {
    let list = t.strings(errs, key)?;
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        if !p.starts_with('/') {
            errs.push(
                format!("{}[{i}]", t.key(key)),
                format!("{p:?}: use an absolute path"),
            );
        } else {
            out.push(PathBuf::from(p));
        }
    }
    Some(out)
}

/// `egress = ["host:port", ...]`, each rule checked.
fn egress(t: &mut Table<'_>, errs: &mut Errors) -> Option<Vec<String>> {
    let list = t.strings(errs, "egress")?;
    let mut out = Vec::new();
    for (i, r) in list.iter().enumerate() {
        let ok = r.rsplit_once(':').is_some_and(|(h, port)| {
            !h.is_empty() && (port == "*" || port.parse::<u16>().is_ok_and(|n| n > 0))
        });
        if ok {
            out.push(r.to_string());
        } else {
            errs.push(
                format!("{}[{i}]", t.key("egress")),
                format!(
                    "{r:?}: use host:port, e.g. \"api.anthropic.com:443\" or \"*.example.org:443\""
                ),
            );
        }
    }
    Some(out)
}

fn read_profile(name: &str, mut t: Table<'_>, errs: &mut Errors) -> Profile {
    let mut p = Profile::default_named(name);
    if let Some(r) = layers(&mut t, errs, "require") {
        p.require = r;
    }
    if let Some(d) = layers(&mut t, errs, "disable") {
        p.disable = d;
    }
    for l in &p.disable {
        if p.require.contains(l) {
            errs.push(
                t.key("disable"),
                format!("{:?} is both required and disabled", l.name()),
            );
        }
    }
    if let Some(u) = t.uint(errs, "uid") {
        if u == 0 || u > u32::MAX as u64 {
            errs.push(t.key("uid"), "use a uid other than 0 (root)");
        }
        p.uid = u as u32;
    }
    if let Some(g) = t.uint(errs, "gid") {
        if g == 0 || g > u32::MAX as u64 {
            errs.push(t.key("gid"), "use a gid other than 0 (root)");
        }
        p.gid = g as u32;
    }
    for (key, slot, min) in [
        ("memory", &mut p.memory, 16u64 << 20),
        ("file_size", &mut p.file_size, 1 << 20),
    ] {
        if let Some(v) = t.size(errs, key) {
            if v < min {
                errs.push(t.key(key), format!("at least {} MiB", min >> 20));
            }
            *slot = v;
        }
    }
    for (key, slot, min) in [
        ("pids", &mut p.pids, 8u64),
        ("open_files", &mut p.open_files, 16),
    ] {
        if let Some(v) = t.uint(errs, key) {
            if v < min {
                errs.push(t.key(key), format!("at least {min}"));
            }
            *slot = v;
        }
    }
    if let Some(list) = egress(&mut t, errs) {
        p.egress = list;
    }
    if let Some(h) = t.str(errs, "home") {
        if h.starts_with('/') {
            p.home = Some(PathBuf::from(h));
        } else {
            errs.push(t.key("home"), format!("{h:?}: use an absolute path"));
        }
    }
    p.read_only = paths(&mut t, errs, "read_only");
    p.read_write = paths(&mut t, errs, "read_write");
    p.hidden = paths(&mut t, errs, "hidden");
    if let Some(env) = t.strings(errs, "env") {
        for (i, k) in env.iter().enumerate() {
            if edge_sandbox::forbidden_env(k) {
                errs.push(
                    format!("{}[{i}]", t.key("env")),
                    format!("{k:?} looks like a credential or agent socket: it is never passed to agents"),
                );
            } else {
                p.env.push(k.to_string());
            }
        }
    }
    t.finish(errs);
    p
}

/// Reads `[sandbox]`; the result always has a `default` profile.
pub(super) fn read_sandbox(t: Option<Table<'_>>, errs: &mut Errors) -> BTreeMap<String, Profile> {
    let mut out = BTreeMap::new();
    out.insert("default".to_string(), Profile::default_named("default"));
    let Some(mut t) = t else {
        return out;
    };
    for (name, pt) in t.named_tables(errs, "profiles") {
        out.insert(name.to_string(), read_profile(name, pt, errs));
    }
    t.finish(errs);
    out
}

/// Reads a worker's floor file (`edge worker --floor FILE`): the least confinement the worker
/// accepts. Every key is optional; `require` is every layer unless given.
pub(super) fn read_floor(doc: &toml::Table, errs: &mut Errors) -> Floor {
    let mut t = Table::new("", doc);
    let mut f = Floor::default();
    if let Some(r) = layers(&mut t, errs, "require") {
        f.require = r;
    }
    f.memory = t.size(errs, "memory");
    f.file_size = t.size(errs, "file_size");
    f.pids = t.uint(errs, "pids");
    f.open_files = t.uint(errs, "open_files");
    f.egress = egress(&mut t, errs);
    f.writable = given_paths(&mut t, errs, "writable");
    f.readable = given_paths(&mut t, errs, "readable");
    f.hidden = paths(&mut t, errs, "hidden");
    t.finish(errs);
    f
}
