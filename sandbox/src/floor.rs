//! A worker's floor: the least confinement it accepts, whatever the orchestrator sends. A worker
//! host's operator writes it (`edge worker --floor FILE`); a run frame that asks for less (a
//! layer not required, more memory, a host off the egress list, a writable path outside the
//! allowed ones, no sandbox at all) is refused before anything starts, and the refusal names
//! what and why. Paths the floor hides are hidden in every run.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::profile::{Confine, Layer};

/// What every run on a worker must have. Limits not given are not capped; `require` is every
/// layer unless the file says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Floor {
    /// Layers every run's profile must require (so a run whose host lacks one does not start).
    pub require: Vec<Layer>,
    /// The most memory a run may ask for, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size: Option<u64>,
    /// Every egress rule of a run must fall within one of these (`host:port`, `*.domain:port`,
    /// port `*`). None: not capped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<String>>,
    /// A run's workspace, home and extra writable paths must lie under one of these. None: not
    /// capped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writable: Option<Vec<PathBuf>>,
    /// A run's extra read-only paths (`read_only`) must lie under one of these. None: not
    /// capped. (The system paths every profile reads are not extra.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readable: Option<Vec<PathBuf>>,
    /// Hidden in every run, added to what the profile hides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hidden: Vec<PathBuf>,
}

impl Default for Floor {
    fn default() -> Floor {
        Floor {
            require: Layer::ALL.to_vec(),
            memory: None,
            pids: None,
            open_files: None,
            file_size: None,
            egress: None,
            writable: None,
            readable: None,
            hidden: Vec::new(),
        }
    }
}

/// Does the floor's egress rule `outer` allow everything the run's rule `inner` allows?
fn rule_covers(outer: &str, inner: &str) -> bool {
    let (Some((oh, op)), Some((ih, ip))) = (outer.rsplit_once(':'), inner.rsplit_once(':')) else {
        return false;
    };
    if op != "*" && op != ip {
        return false;
    }
    let (oh, ih) = (oh.to_ascii_lowercase(), ih.to_ascii_lowercase());
    let (oh, ih) = (oh.trim_end_matches('.'), ih.trim_end_matches('.'));
    match oh.strip_prefix("*.") {
        // `*.a.b` allows `x.a.b` and `*.x.a.b`, not `a.b` itself.
        Some(base) => ih.ends_with(&format!(".{base}")),
        None => oh == ih,
    }
}

/// `p` without `.` and `..` (a `..` that would climb above `/` is an error), symlinks resolved
/// where the path exists.
fn resolved(p: &Path) -> Result<PathBuf, String> {
    if !p.is_absolute() {
        return Err(format!("{} is not an absolute path", p.display()));
    }
    if let Ok(c) = std::fs::canonicalize(p) {
        return Ok(c);
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir => out.push("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() || out.as_os_str().is_empty() {
                    return Err(format!("{} climbs above /", p.display()));
                }
            }
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => return Err(format!("{} is not a Unix path", p.display())),
        }
    }
    // The nearest existing ancestor decides where it really is (a symlinked parent).
    let mut existing = out.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match existing.file_name() {
            Some(n) => rest.push(n.to_owned()),
            None => break,
        }
        existing.pop();
    }
    let mut real = std::fs::canonicalize(&existing).unwrap_or(existing);
    for n in rest.into_iter().rev() {
        real.push(n);
    }
    Ok(real)
}

/// Paths for a message, joined by `sep`.
fn shown(paths: &[PathBuf], sep: &str) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(sep)
}

/// Every path lies (after resolving) under one of `roots`; otherwise which one does not.
fn within<'a>(
    roots: &[PathBuf],
    paths: impl Iterator<Item = (&'a str, &'a PathBuf)>,
    verb: &str,
) -> Result<(), String> {
    let roots: Vec<PathBuf> = roots.iter().filter_map(|r| resolved(r).ok()).collect();
    for (what, path) in paths {
        let real = resolved(path).map_err(|e| format!("{what}: {e}"))?;
        if !roots.iter().any(|r| real.starts_with(r)) {
            return Err(format!(
                "{what} {} is outside the paths this worker lets agents {verb} ({})",
                path.display(),
                shown(&roots, ", ")
            ));
        }
    }
    Ok(())
}

impl Floor {
    /// Whether a run may go ahead: `Err` says the first thing that falls short, in words an
    /// operator can act on. `workspace` is the run's working directory on this host.
    pub fn check(&self, sandbox: Option<&Confine>, workspace: Option<&Path>) -> Result<(), String> {
        let Some(c) = sandbox else {
            return Err(
                "this worker runs only confined agents, and the run came without a sandbox profile"
                    .into(),
            );
        };
        let p = &c.profile;
        let missing: Vec<&str> = self
            .require
            .iter()
            .filter(|l| !p.require.contains(l) || p.disable.contains(l))
            .map(|l| l.name())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "this worker requires the sandbox layer{} {}, which profile {:?} does not require",
                if missing.len() == 1 { "" } else { "s" },
                missing.join(", "),
                p.name
            ));
        }
        // A cap means nothing without a layer that enforces it, so the profile must require
        // one (a layer only "available" may be missing on the host, and the run would go on).
        let enforced_by: [(&str, bool, &[Layer]); 8] = [
            ("memory", self.memory.is_some(), &[Layer::Cgroup]),
            (
                "pids",
                self.pids.is_some(),
                &[Layer::Cgroup, Layer::Rlimits],
            ),
            ("open_files", self.open_files.is_some(), &[Layer::Rlimits]),
            ("file_size", self.file_size.is_some(), &[Layer::Rlimits]),
            ("egress", self.egress.is_some(), &[Layer::Egress]),
            (
                "writable",
                self.writable.is_some(),
                &[Layer::Landlock, Layer::Namespaces],
            ),
            ("readable", self.readable.is_some(), &[Layer::Landlock]),
            ("hidden", !self.hidden.is_empty(), &[Layer::Namespaces]),
        ];
        for (what, set, layers) in enforced_by {
            if set && !layers.iter().any(|l| p.requires(*l) && p.enabled(*l)) {
                return Err(format!(
                    "this worker sets {what}, which only the {} layer enforces, and profile {:?} does not require it",
                    layers.iter().map(|l| l.name()).collect::<Vec<_>>().join(" or "),
                    p.name
                ));
            }
        }
        if p.uid == 0 || p.gid == 0 {
            return Err(format!(
                "profile {:?} would run the agent as root (uid {}, gid {})",
                p.name, p.uid, p.gid
            ));
        }
        for (what, asked, most) in [
            ("memory", p.memory, self.memory),
            ("pids", p.pids, self.pids),
            ("open_files", p.open_files, self.open_files),
            ("file_size", p.file_size, self.file_size),
        ] {
            if let Some(most) = most {
                if asked > most {
                    return Err(format!(
                        "profile {:?} asks for {what} {asked}; this worker allows at most {most}",
                        p.name
                    ));
                }
            }
        }
        if let Some(allowed) = &self.egress {
            if let Some(r) = p
                .egress
                .iter()
                .find(|r| !allowed.iter().any(|a| rule_covers(a, r)))
            {
                return Err(format!(
                    "profile {:?} lets the agent reach {r}, which is not on this worker's egress list ({})",
                    p.name,
                    allowed.join(", ")
                ));
            }
        }
        if let Some(roots) = &self.writable {
            let ws = workspace
                .map(Path::to_path_buf)
                .unwrap_or_else(|| ".".into());
            let ws = if ws.is_absolute() {
                ws
            } else {
                std::env::current_dir().unwrap_or_default().join(ws)
            };
            let writable = [("the workspace", &ws), ("the agent's home", &c.home)]
                .into_iter()
                .chain(p.read_write.iter().map(|d| ("read_write", d)));
            within(roots, writable, "write")?;
        }
        if let Some(roots) = &self.readable {
            within(roots, p.read_only.iter().map(|d| ("read_only", d)), "read")?;
        }
        Ok(())
    }

    /// The floor's additions to a run it accepted: its hidden paths.
    pub fn apply(&self, c: &mut Confine) {
        for h in &self.hidden {
            if !c.profile.hidden.contains(h) {
                c.profile.hidden.push(h.clone());
            }
        }
    }

    /// One line for `edge workers --probe`.
    pub fn summary(&self) -> String {
        let mut parts = vec![if self.require.len() == Layer::ALL.len() {
            "every layer required".to_string()
        } else if self.require.is_empty() {
            "no layer required".to_string()
        } else {
            format!(
                "requires {}",
                self.require
                    .iter()
                    .map(|l| l.name())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }];
        for (what, v) in [
            ("memory", self.memory),
            ("pids", self.pids),
            ("open_files", self.open_files),
            ("file_size", self.file_size),
        ] {
            if let Some(v) = v {
                parts.push(format!("{what} ≤ {v}"));
            }
        }
        if let Some(e) = &self.egress {
            parts.push(format!("egress within {}", e.join(",")));
        }
        if let Some(w) = &self.writable {
            parts.push(format!("writes under {}", shown(w, ",")));
        }
        if let Some(r) = &self.readable {
            parts.push(format!("extra reads under {}", shown(r, ",")));
        }
        if !self.hidden.is_empty() {
            parts.push(format!("hides {}", self.hidden.len()));
        }
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;

    fn confine(p: Profile, home: &str) -> Confine {
        Confine {
            profile: p,
            home: home.into(),
        }
    }

    #[test]
    fn egress_rules_cover_only_what_they_allow() {
        assert!(rule_covers(
            "api.anthropic.com:443",
            "API.anthropic.com.:443"
        ));
        assert!(!rule_covers(
            "api.anthropic.com:443",
            "api.anthropic.com:80"
        ));
        assert!(!rule_covers("api.anthropic.com:443", "api.anthropic.com:*"));
        assert!(rule_covers("api.anthropic.com:*", "api.anthropic.com:8443"));
        assert!(rule_covers("*.example.org:443", "git.example.org:443"));
        assert!(rule_covers("*.example.org:443", "*.git.example.org:443"));
        assert!(!rule_covers("*.example.org:443", "*.example.org.evil:443"));
        assert!(!rule_covers("*.example.org:443", "example.org:443"));
        assert!(!rule_covers("*.example.org:443", "badexample.org:443"));
        assert!(!rule_covers("git.example.org:443", "*.example.org:443"));
    }

    #[test]
    fn a_run_below_the_floor_is_refused_with_the_reason() {
        let f = Floor::default();
        assert!(f.check(None, None).unwrap_err().contains("only confined"));
        let p = Profile::default_named("dev");
        let ok = confine(p.clone(), "/var/lib/edge-agents/dev");
        assert_eq!(f.check(Some(&ok), Some(Path::new("/tmp"))), Ok(()));

        let mut weak = p.clone();
        weak.require
            .retain(|l| *l != Layer::Landlock && *l != Layer::Egress);
        let e = f.check(Some(&confine(weak, "/h")), None).unwrap_err();
        assert!(e.contains("layers landlock, egress"), "{e}");
        assert!(e.contains("\"dev\""), "{e}");

        let mut root = p.clone();
        root.uid = 0;
        let e = f.check(Some(&confine(root, "/h")), None).unwrap_err();
        assert!(e.contains("as root"), "{e}");

        let capped = Floor {
            memory: Some(1 << 30),
            ..Floor::default()
        };
        let e = capped.check(Some(&ok), None).unwrap_err();
        assert!(
            e.contains("memory 2147483648") && e.contains("at most 1073741824"),
            "{e}"
        );

        let listed = Floor {
            egress: Some(vec!["api.anthropic.com:443".into()]),
            ..Floor::default()
        };
        assert_eq!(listed.check(Some(&ok), None), Ok(()));
        let mut wide = p.clone();
        wide.egress.push("*.github.com:443".into());
        let e = listed.check(Some(&confine(wide, "/h")), None).unwrap_err();
        assert!(e.contains("*.github.com:443"), "{e}");
    }

    #[test]
    fn writable_paths_must_lie_under_the_floor_roots() {
        let dir = std::env::temp_dir().join(format!("edge-floor-{}", std::process::id()));
        let root = dir.join("work");
        std::fs::create_dir_all(root.join("ws")).unwrap();
        std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
        // A symlink inside the root that leads out of it does not count as inside.
        let _ = std::os::unix::fs::symlink(dir.join("elsewhere"), root.join("escape"));
        let f = Floor {
            writable: Some(vec![root.clone()]),
            ..Floor::default()
        };
        let p = Profile::default_named("dev");
        let home = root.join("home").display().to_string();
        let c = confine(p.clone(), &home);
        assert_eq!(f.check(Some(&c), Some(&root.join("ws"))), Ok(()));
        let e = f.check(Some(&c), Some(&root.join("escape"))).unwrap_err();
        assert!(e.starts_with("the workspace"), "{e}");
        let e = f
            .check(Some(&c), Some(&root.join("ws/../../elsewhere")))
            .unwrap_err();
        assert!(e.contains("outside"), "{e}");
        let e = f
            .check(Some(&confine(p.clone(), "/etc")), Some(&root.join("ws")))
            .unwrap_err();
        assert!(e.starts_with("the agent's home /etc"), "{e}");
        let mut extra = p;
        extra.read_write.push("/var/lib".into());
        let e = f
            .check(Some(&confine(extra, &home)), Some(&root.join("ws")))
            .unwrap_err();
        assert!(e.starts_with("read_write /var/lib"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_cap_needs_the_layer_that_enforces_it() {
        // The floor requires only env, so the layer check passes; each cap still needs its
        // layer required by the profile.
        let mut p = Profile::default_named("thin");
        p.require = vec![Layer::Env];
        let c = confine(p.clone(), "/h");
        for (f, want) in [
            (
                Floor {
                    require: vec![Layer::Env],
                    memory: Some(1 << 30),
                    ..Floor::default()
                },
                "this worker sets memory, which only the cgroup layer enforces, and profile \"thin\" does not require it",
            ),
            (
                Floor {
                    require: vec![Layer::Env],
                    pids: Some(64),
                    ..Floor::default()
                },
                "sets pids, which only the cgroup or rlimits layer enforces",
            ),
            (
                Floor {
                    require: vec![Layer::Env],
                    egress: Some(vec!["api.anthropic.com:443".into()]),
                    ..Floor::default()
                },
                "sets egress, which only the egress layer enforces",
            ),
            (
                Floor {
                    require: vec![Layer::Env],
                    hidden: vec!["/srv/secrets".into()],
                    ..Floor::default()
                },
                "sets hidden, which only the namespaces layer enforces",
            ),
        ] {
            let e = f.check(Some(&c), None).unwrap_err();
            assert!(e.contains(want), "{want} in {e}");
        }
        // With the layer required (and not disabled), the cap holds.
        p.require.push(Layer::Rlimits);
        let f = Floor {
            require: vec![Layer::Env],
            pids: Some(4096),
            ..Floor::default()
        };
        assert_eq!(f.check(Some(&confine(p.clone(), "/h")), None), Ok(()));
        p.disable.push(Layer::Rlimits);
        assert!(f.check(Some(&confine(p, "/h")), None).is_err());
    }

    #[test]
    fn extra_readable_paths_must_lie_under_the_floor_roots() {
        let f = Floor {
            readable: Some(vec!["/usr/share".into()]),
            ..Floor::default()
        };
        let mut p = Profile::default_named("dev");
        assert_eq!(f.check(Some(&confine(p.clone(), "/h")), None), Ok(()));
        p.read_only.push("/usr/share/doc".into());
        assert_eq!(f.check(Some(&confine(p.clone(), "/h")), None), Ok(()));
        p.read_only.push("/srv/../var/backups".into());
        let e = f.check(Some(&confine(p, "/h")), None).unwrap_err();
        assert!(
            e.starts_with("read_only /srv/../var/backups is outside the paths this worker lets agents read (/usr/share)"),
            "{e}"
        );
    }

    #[test]
    fn the_floor_hides_its_paths_in_every_run() {
        let f = Floor {
            hidden: vec!["/srv/secrets".into()],
            ..Floor::default()
        };
        let mut c = confine(Profile::default_named("dev"), "/h");
        f.apply(&mut c);
        f.apply(&mut c);
        assert_eq!(c.profile.hidden, vec![PathBuf::from("/srv/secrets")]);
    }
}
