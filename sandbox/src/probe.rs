//! What this host can enforce: each layer is enforced, degraded or unavailable, with the
//! reason. Runs before every confined run (it costs one `bwrap` start, about 10 ms) and in
//! `edge sandbox verify`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::Serialize;

use crate::profile::{Layer, Profile};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Enforced,
    Degraded,
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerStatus {
    pub layer: Layer,
    pub state: State,
    /// How it is enforced, or why not.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub layers: Vec<LayerStatus>,
}

impl Report {
    pub fn get(&self, l: Layer) -> &LayerStatus {
        self.layers
            .iter()
            .find(|s| s.layer == l)
            .expect("every layer is probed")
    }

    /// Layers that cannot be enforced, with why (what the helper gets as `missing`).
    pub fn missing(&self) -> Vec<(Layer, String)> {
        self.layers
            .iter()
            .filter(|s| s.state == State::Unavailable)
            .map(|s| (s.layer, s.detail.clone()))
            .collect()
    }

    /// The first required layer that is not enforced, as an error a user can act on.
    pub fn refusal(&self, p: &Profile) -> Option<String> {
        self.layers
            .iter()
            .find(|s| p.requires(s.layer) && s.state != State::Enforced)
            .map(|s| {
                format!(
                    "the sandbox profile {:?} requires the {} layer, which is {} here: {} \
                     (run `edge sandbox verify --profile {}`; to run without it, remove it from \
                     sandbox.profiles.{}.require)",
                    p.name,
                    s.layer.name(),
                    match s.state {
                        State::Degraded => "degraded",
                        _ => "unavailable",
                    },
                    s.detail,
                    p.name,
                    p.name
                )
            })
    }
}

/// `bwrap` on PATH (or the usual place).
pub fn bwrap() -> Option<PathBuf> {
    crate::helper::resolve("bwrap", std::env::var("PATH").ok().as_deref())
        .or_else(|| Some(PathBuf::from("/usr/bin/bwrap")).filter(|p| p.exists()))
}

fn status(layer: Layer, state: State, detail: impl Into<String>) -> LayerStatus {
    LayerStatus {
        layer,
        state,
        detail: detail.into(),
    }
}

/// Probes every layer for `p` on this host.
pub fn probe(p: &Profile) -> Report {
    use State::*;
    let root = nix::unistd::geteuid().is_root();
    let mut layers = vec![
        status(
            Layer::Env,
            Enforced,
            "environment allowlist, descriptors closed, own session, parent-death signal",
        ),
        if root {
            status(
                Layer::User,
                Enforced,
                format!("edge runs as root: runs use uid {} gid {}", p.uid, p.gid),
            )
        } else {
            status(
                Layer::User,
                Enforced,
                format!("edge runs as uid {}, not root", nix::unistd::geteuid()),
            )
        },
        status(Layer::NoNewPrivs, Enforced, "PR_SET_NO_NEW_PRIVS"),
        status(
            Layer::Rlimits,
            Enforced,
            format!(
                "nofile {}, fsize {}, core 0 (nproc {} for the uid when there is no cgroup)",
                p.open_files, p.file_size, p.pids
            ),
        ),
        landlock_status(),
        seccomp_status(),
    ];
    let ns = if p.enabled(Layer::Namespaces) {
        namespaces_status(p, root)
    } else {
        status(Layer::Namespaces, Unavailable, "disabled in the profile")
    };
    let ns_ok = ns.state == Enforced;
    layers.push(ns);
    layers.push(crate::cgroup::status());
    layers.push(if !ns_ok {
        status(
            Layer::Egress,
            Unavailable,
            "the egress proxy needs the network namespace (the namespaces layer)",
        )
    } else if p.egress.is_empty() {
        status(
            Layer::Egress,
            Enforced,
            "no network at all (empty allowlist)",
        )
    } else {
        status(
            Layer::Egress,
            Enforced,
            format!("only through the allowlist proxy: {}", p.egress.join(", ")),
        )
    });
    for s in &mut layers {
        if !p.enabled(s.layer) {
            s.state = Unavailable;
            s.detail = "disabled in the profile".into();
        }
    }
    Report { layers }
}

fn landlock_status() -> LayerStatus {
    use landlock::{Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, ABI};
    // The newest ABI whose ruleset the kernel accepts.
    for (abi, n) in [
        (ABI::V5, 5),
        (ABI::V4, 4),
        (ABI::V3, 3),
        (ABI::V2, 2),
        (ABI::V1, 1),
    ] {
        let ok = Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_all(abi))
            .and_then(|r| r.create())
            .is_ok();
        if ok {
            return status(
                Layer::Landlock,
                if n >= 3 {
                    State::Enforced
                } else {
                    State::Degraded
                },
                format!(
                    "Landlock ABI {n}{}",
                    if n >= 3 { "" } else { " (no truncate control)" }
                ),
            );
        }
    }
    status(
        Layer::Landlock,
        State::Unavailable,
        "the kernel has no Landlock (needs Linux 5.13 with landlock in the LSM list)",
    )
}

fn seccomp_status() -> LayerStatus {
    let has = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Seccomp_filters:") || l.starts_with("Seccomp:"))
        })
        .unwrap_or(false);
    if !has {
        return status(
            Layer::Seccomp,
            State::Unavailable,
            "the kernel has no seccomp",
        );
    }
    match crate::seccomp::filters() {
        Ok(_) => status(
            Layer::Seccomp,
            State::Enforced,
            format!(
                "deny-list of {} calls, namespace clones, raw/netlink/packet sockets",
                crate::seccomp::denied_names().count()
            ),
        ),
        Err(e) => status(Layer::Seccomp, State::Unavailable, e),
    }
}

fn namespaces_status(p: &Profile, root: bool) -> LayerStatus {
    let Some(bwrap) = bwrap() else {
        return status(
            Layer::Namespaces,
            State::Unavailable,
            "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)",
        );
    };
    // The same kind of sandbox a run gets, as the uid runs use.
    let mut cmd = Command::new(&bwrap);
    cmd.args(crate::helper::BWRAP_BASE)
        .args(["--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if root {
        std::os::unix::process::CommandExt::uid(&mut cmd, p.uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, p.gid);
    }
    match cmd.output() {
        Ok(o) if o.status.success() => status(
            Layer::Namespaces,
            State::Enforced,
            format!(
                "{}: user, pid, mount, network, ipc, uts namespaces",
                bwrap.display()
            ),
        ),
        Ok(o) => status(
            Layer::Namespaces,
            State::Unavailable,
            format!(
                "{} fails here: {} (unprivileged user namespaces may be off: \
                 kernel.apparmor_restrict_unprivileged_userns, or a container's seccomp profile)",
                bwrap.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ),
        Err(e) => status(
            Layer::Namespaces,
            State::Unavailable,
            format!("running {}: {e}", bwrap.display()),
        ),
    }
}
