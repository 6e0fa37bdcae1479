//! The outer part of a confined run, in the worker (or `edge sandbox run`): probe the host,
//! refuse if a required layer is missing, create the run's cgroup and egress proxy, and build
//! the helper's command. [`Confinement::finish`] tears it down.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cgroup::RunCgroup;
use crate::egress::Egress;
use crate::probe::{probe, Report, State};
use crate::profile::{Layer, Profile, RunSpec};

/// What to run, confined.
#[derive(Debug, Clone)]
pub struct Request {
    pub profile: Profile,
    pub workspace: PathBuf,
    /// The agent's home (created if missing; owned by the run's uid when edge is root).
    pub home: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Where the egress proxy reports what it refused (one line each), for the run's log.
    pub notices: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

#[derive(Debug)]
pub struct Confinement {
    pub spec: RunSpec,
    pub report: Report,
    cgroup: Option<RunCgroup>,
    egress: Option<Egress>,
    dir: Option<PathBuf>,
}

/// How the confinement saw the run end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// The kernel killed something in the run's cgroup for going past its memory limit.
    pub oom_killed: bool,
}

fn unique(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!(
        "{clean}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Prepares a confined run named `name` (an attempt id). Errors name the layer and why.
pub fn prepare(req: Request, name: &str) -> Result<Confinement, String> {
    let p = &req.profile;
    if req.argv.is_empty() {
        return Err("nothing to run (empty argv)".into());
    }
    let report = probe(p);
    if let Some(e) = report.refusal(p) {
        return Err(e);
    }
    let mut missing = report.missing();
    if !req.workspace.is_dir() {
        return Err(format!(
            "the workspace {} is not a directory",
            req.workspace.display()
        ));
    }
    let root = nix::unistd::geteuid().is_root();
    if root && p.enabled(Layer::User) {
        reachable(&req.workspace, "workspace", p.uid, p.gid)?;
        reachable(&req.home, "agent home", p.uid, p.gid)?;
    }
    if !req.home.exists() {
        std::fs::create_dir_all(&req.home)
            .map_err(|e| format!("creating the agent home {}: {e}", req.home.display()))?;
        std::fs::set_permissions(
            &req.home,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(|e| format!("{}: {e}", req.home.display()))?;
        if root {
            nix::unistd::chown(
                &req.home,
                Some(nix::unistd::Uid::from_raw(p.uid)),
                Some(nix::unistd::Gid::from_raw(p.gid)),
            )
            .map_err(|e| format!("giving {} to uid {}: {e}", req.home.display(), p.uid))?;
        }
    }
    let unique = unique(name);
    let mut c = Confinement {
        spec: RunSpec {
            profile: req.profile.clone(),
            workspace: req.workspace.clone(),
            home: req.home.clone(),
            cgroup_procs: Vec::new(),
            egress_socket: None,
            missing: Vec::new(),
            env: req.env.clone(),
            argv: req.argv.clone(),
        },
        report,
        cgroup: None,
        egress: None,
        dir: None,
    };
    if c.report.get(Layer::Cgroup).state == State::Enforced {
        match RunCgroup::create(&unique, p.memory, p.pids) {
            Ok(g) => {
                c.spec.cgroup_procs = g.procs_files();
                c.cgroup = Some(g);
            }
            Err(e) if p.requires(Layer::Cgroup) => {
                return Err(format!("the cgroup layer is required: {e}"))
            }
            Err(e) => missing.push((Layer::Cgroup, e)),
        }
    }
    let wants_proxy = !p.egress.is_empty();
    if wants_proxy && c.report.get(Layer::Egress).state == State::Enforced {
        let dir = std::env::temp_dir().join(format!("edge-egress-{unique}"));
        let made = std::fs::create_dir(&dir)
            .and_then(|()| {
                std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))
            })
            .map_err(|e| format!("{}: {e}", dir.display()));
        let sock = dir.join("egress.sock");
        match made.and_then(|()| crate::egress::start(&sock, p, req.notices.clone())) {
            Ok(g) => {
                c.egress = Some(g);
                c.spec.egress_socket = Some(sock);
            }
            Err(e) if p.requires(Layer::Egress) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!("the egress layer is required: {e}"));
            }
            Err(e) => missing.push((Layer::Egress, e)),
        }
        c.dir = Some(dir);
    }
    c.spec.missing = missing;
    Ok(c)
}

impl Confinement {
    /// `edge sandbox exec --spec JSON`: the helper that applies the layers and runs argv.
    pub fn command(&self) -> Result<tokio::process::Command, String> {
        let exe = crate::helper::self_exe()?;
        let json = serde_json::to_string(&self.spec).map_err(|e| e.to_string())?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(["sandbox", "exec", "--spec"])
            .arg(json)
            .current_dir(&self.spec.workspace);
        Ok(cmd)
    }

    /// Sends `sig` to the agent inside the namespaces, not to bubblewrap: bwrap does not pass
    /// signals on, and when it dies the agent is killed at once (`--die-with-parent`), so the
    /// interrupt an agent handles gracefully (Claude Code saves its session) must go to the
    /// agent itself. Those are the processes of the run's cgroup that live in the run's pid
    /// namespace (`NSpid` has more than one level), except its init (pid 1 there). Returns how
    /// many were signalled: 0 when there is no cgroup or no pid namespace, and the caller
    /// signals the process group instead.
    pub fn signal_inside(&self, sig: nix::sys::signal::Signal) -> usize {
        let Some(g) = &self.cgroup else { return 0 };
        let mut n = 0;
        for pid in g.pids() {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let Some(levels) = status.lines().find_map(|l| l.strip_prefix("NSpid:")) else {
                continue;
            };
            let levels: Vec<&str> = levels.split_whitespace().collect();
            if levels.len() < 2 || levels.last() == Some(&"1") {
                continue;
            }
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Kills what is left of the run, removes its cgroup, stops its proxy.
    pub fn finish(mut self) -> Finished {
        let oom_killed = self.cgroup.as_ref().is_some_and(RunCgroup::oom_killed);
        if let Some(g) = self.cgroup.take() {
            g.remove();
        }
        self.egress.take();
        if let Some(d) = self.dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
        Finished { oom_killed }
    }
}

impl Drop for Confinement {
    fn drop(&mut self) {
        if let Some(g) = self.cgroup.take() {
            g.remove();
        }
        if let Some(d) = self.dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// When edge is root and runs drop to another uid, every directory above `p` must let that
/// uid through, or bwrap (running as that uid) cannot mount it.
fn reachable(p: &Path, what: &str, uid: u32, gid: u32) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    for a in p.ancestors().skip(1) {
        let Ok(m) = std::fs::metadata(a) else {
            continue;
        };
        let mode = m.mode();
        let ok = mode & 0o001 != 0
            || (m.uid() == uid && mode & 0o100 != 0)
            || (m.gid() == gid && mode & 0o010 != 0);
        if !ok {
            return Err(format!(
                "the {what} {} is out of reach of uid {uid}: {} is mode {:o} (choose a {what}                  under directories others may enter)",
                p.display(),
                a.display(),
                mode & 0o7777
            ));
        }
    }
    Ok(())
}
