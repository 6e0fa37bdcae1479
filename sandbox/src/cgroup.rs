//! The cgroup layer: one cgroup per run with a memory and a pids limit, under
//! `edge-runs/`. cgroup v2 when its `memory` and `pids` controllers can be used, else the v1
//! `memory` and `pids` hierarchies (hybrid hosts such as this CI's). Removing a run's cgroup
//! kills whatever is left in it.
//!
//! Where the `cpu` controller is there too, `edge-runs/` weighs as one process at nice 10
//! against everything else on the host (edge itself weighs as one at nice 0: ten times more),
//! however many runs it holds, and the runs share that equally. Nice alone (`edge worker
//! --nice`) cannot do this: it weighs each process, so 100 agents at nice 10 outweigh edge ten
//! to one, and when they all want the CPU at once (100 agents exiting together) edge's own work
//! waits behind them. The weight only matters when the CPU is short: idle CPU is anyone's.

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
                        "cgroup {}: memory and pids limits per run; {}",
                        if k == Kind::V2 { "v2" } else { "v1" },
                        match weigh_parent(k) {
                            Ok(w) => format!("the runs together weigh as one process ({w})"),
                            Err(e) => format!("no CPU weight for the runs ({e})"),
                        }
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

/// The v1 `cpu` hierarchy's `edge-runs/` (`cpu` is, where it is mounted with cpuacct, a link
/// to `cpu,cpuacct`); v2 has the cpu controller in the one tree.
fn v1_cpu_parent(k: Kind) -> Option<PathBuf> {
    let cpu = Path::new(ROOT).join("cpu");
    (k == Kind::V1 && cpu.join("cpu.shares").exists()).then(|| cpu.join(PARENT))
}

/// The CPU weight of all runs together: the kernel's weight for nice 10 (nice 0 is 1024).
pub const RUNS_CPU_SHARES: u64 = 110;

/// Gives `edge-runs/` the CPU weight of one process at nice 10: v1 `cpu.shares` is that
/// weight; v2 `cpu.weight` is it scaled to 100 for nice 0 (as systemd maps the two). Returns
/// what was set, or why not.
fn weigh_parent(k: Kind) -> Result<String, String> {
    let w = RUNS_CPU_SHARES;
    let (file, value) = match k {
        Kind::V1 => ("cpu.shares", w),
        Kind::V2 => ("cpu.weight", (w * 100 / 1024).clamp(1, 10_000)),
    };
    let dir = match k {
        Kind::V1 => {
            let d = v1_cpu_parent(k).ok_or("no v1 cpu hierarchy is mounted")?;
            if !d.exists() {
                std::fs::create_dir(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
            }
            d
        }
        Kind::V2 => {
            let d = Path::new(ROOT).join(PARENT);
            if !d.join(file).exists() {
                return Err("the cpu controller is not enabled for edge-runs".into());
            }
            d
        }
    };
    let f = dir.join(file);
    let now = std::fs::read_to_string(&f).unwrap_or_default();
    if now.trim() != value.to_string() {
        std::fs::write(&f, value.to_string()).map_err(|e| format!("{}: {e}", f.display()))?;
    }
    Ok(format!("{file} {value}"))
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
        let top = Path::new(ROOT).join("cgroup.subtree_control");
        if !(have.contains("memory") && have.contains("pids")) {
            let _ = std::fs::write(&top, "+memory +pids");
            std::fs::write(&sub, "+memory +pids")
                .map_err(|e| format!("enabling memory and pids in {}: {e}", sub.display()))?;
        }
        // The CPU weight is a plus, not required: without it the runs still have their limits.
        let offered = v2_controllers().unwrap_or_default();
        if offered.split_whitespace().any(|c| c == "cpu")
            && !have.split_whitespace().any(|c| c == "cpu")
        {
            let _ = std::fs::write(&top, "+cpu");
            let _ = std::fs::write(&sub, "+cpu");
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
        // What was made before a failure is removed, not left behind.
        match made.fill(k, name, memory, pids) {
            Ok(()) => Ok(made),
            Err(e) => {
                made.remove();
                Err(e)
            }
        }
    }

    fn fill(&mut self, k: Kind, name: &str, memory: u64, pids: u64) -> Result<(), String> {
        let made = self;
        for p in parents(k) {
            ensure_parent(k, &p)?;
            let d = p.join(name);
            std::fs::create_dir(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
            made.dirs.push(d);
        }
        // The CPU weight is a plus: a run without it still has its limits.
        match weigh_parent(k) {
            Ok(_) => {
                if let Some(p) = v1_cpu_parent(k) {
                    let d = p.join(name);
                    match std::fs::create_dir(&d) {
                        Ok(()) => made.dirs.push(d),
                        Err(e) => {
                            tracing::debug!(cgroup = %d.display(), error = %e, "no CPU weight for this run")
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "no CPU weight for the runs"),
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
                    } else if d.starts_with(Path::new(ROOT).join("pids")) {
                        w(d, "pids.max", pids.to_string())?;
                    }
                }
            }
        }
        Ok(())
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
