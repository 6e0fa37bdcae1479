//! The cgroup layer: one cgroup per run with a memory and a pids limit, under
//! `edge-runs/`. cgroup v2 when its `memory` and `pids` controllers can be used, else the v1
//! `memory` and `pids` hierarchies (hybrid hosts such as this CI's). Removing a run's cgroup
//! kills whatever is left in it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::probe::{LayerStatus, State};
use crate::profile::Layer;

const ROOT: &str = "/sys/fs/cgroup";
const PARENT: &str = "edge-runs";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    V2,
    V1,
}

fn v2_controllers() -> Option<String> {
    std::fs::read_to_string(Path::new(ROOT).join("cgroup.controllers")).ok()
}

fn kind() -> Result<Kind, String> {
    if let Some(c) = v2_controllers() {
        let words: Vec<&str> = c.split_whitespace().collect();
        if words.contains(&"memory") && words.contains(&"pids") {
            return Ok(Kind::V2);
        }
    }
    let v1 = ["memory", "pids"]
        .iter()
        .all(|c| Path::new(ROOT).join(c).join("tasks").exists());
    if v1 {
        return Ok(Kind::V1);
    }
    Err(
        "neither cgroup v2 with the memory and pids controllers nor the v1 memory and pids \
         hierarchies are mounted at /sys/fs/cgroup"
            .into(),
    )
}

pub fn status() -> LayerStatus {
    let s = |state, detail: String| LayerStatus {
        layer: Layer::Cgroup,
        state,
        detail,
    };
    match kind() {
        Err(e) => s(State::Unavailable, e),
        Ok(k) => {
            // Can we create the parent?
            let dirs = parents(k);
            match dirs.iter().try_for_each(|d| ensure_parent(k, d)) {
                Ok(()) => s(
                    State::Enforced,
                    format!(
                        "cgroup {}: memory and pids limits per run",
                        if k == Kind::V2 { "v2" } else { "v1" }
                    ),
                ),
                Err(e) => s(State::Unavailable, e),
            }
        }
    }
}

fn parents(k: Kind) -> Vec<PathBuf> {
    match k {
        Kind::V2 => vec![Path::new(ROOT).join(PARENT)],
        Kind::V1 => ["memory", "pids"]
            .iter()
            .map(|c| Path::new(ROOT).join(c).join(PARENT))
            .collect(),
    }
}

fn ensure_parent(k: Kind, d: &Path) -> Result<(), String> {
    if !d.exists() {
        std::fs::create_dir(d).map_err(|e| {
            format!(
                "creating {}: {e} (edge needs root, or a delegated cgroup, for this layer)",
                d.display()
            )
        })?;
    }
    if k == Kind::V2 {
        // Controllers must be enabled for the parent's children.
        let sub = d.join("cgroup.subtree_control");
        let have = std::fs::read_to_string(&sub).unwrap_or_default();
        if !(have.contains("memory") && have.contains("pids")) {
            let top = Path::new(ROOT).join("cgroup.subtree_control");
            let _ = std::fs::write(&top, "+memory +pids");
            std::fs::write(&sub, "+memory +pids")
                .map_err(|e| format!("enabling memory and pids in {}: {e}", sub.display()))?;
        }
    }
    Ok(())
}

/// A run's cgroup (one directory per hierarchy).
#[derive(Debug)]
pub struct RunCgroup {
    dirs: Vec<PathBuf>,
}

impl RunCgroup {
    /// Creates the run's cgroup with its limits.
    pub fn create(name: &str, memory: u64, pids: u64) -> Result<RunCgroup, String> {
        let k = kind()?;
        let mut made = RunCgroup { dirs: Vec::new() };
        for p in parents(k) {
            ensure_parent(k, &p)?;
            let d = p.join(name);
            std::fs::create_dir(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
            made.dirs.push(d);
        }
        let w = |d: &Path, f: &str, v: String| {
            std::fs::write(d.join(f), v).map_err(|e| format!("{}: {e}", d.join(f).display()))
        };
        match k {
            Kind::V2 => {
                let d = &made.dirs[0];
                w(d, "memory.max", memory.to_string())?;
                // Swap would let a run go past its memory limit.
                let _ = w(d, "memory.swap.max", "0".into());
                w(d, "pids.max", pids.to_string())?;
            }
            Kind::V1 => {
                for d in &made.dirs {
                    if d.starts_with(Path::new(ROOT).join("memory")) {
                        w(d, "memory.limit_in_bytes", memory.to_string())?;
                        let _ = w(d, "memory.memsw.limit_in_bytes", memory.to_string());
                    } else {
                        w(d, "pids.max", pids.to_string())?;
                    }
                }
            }
        }
        Ok(made)
    }

    /// The files a process writes its pid into to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The processes in the run's cgroup now.
    pub fn pids(&self) -> Vec<i32> {
        self.dirs
            .first()
            .and_then(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Did the kernel kill something in this cgroup for memory?
    pub fn oom_killed(&self) -> bool {
        self.dirs.iter().any(|d| {
            ["memory.events", "memory.oom_control"].iter().any(|f| {
                std::fs::read_to_string(d.join(f))
                    .map(|s| {
                        s.lines().any(|l| {
                            l.strip_prefix("oom_kill ")
                                .and_then(|n| n.trim().parse::<u64>().ok())
                                .is_some_and(|n| n > 0)
                        })
                    })
                    .unwrap_or(false)
            })
        })
    }

    /// Kills what is left in the cgroup and removes it (bounded: gives up after 5 s).
    pub fn remove(self) {
        for _ in 0..100 {
            let mut left = false;
            for d in &self.dirs {
                let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    left = true;
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if !left {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for d in &self.dirs {
            if let Err(e) = std::fs::remove_dir(d) {
                tracing::warn!(cgroup = %d.display(), error = %e, "could not remove a run's cgroup");
            }
        }
    }
}
