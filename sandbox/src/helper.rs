//! The helper that confines one run: `edge sandbox exec` (re-executed, as Codex does with its
//! linux-sandbox binary, rather than a `pre_exec` closure: that runs in the forked child of a
//! multi-threaded process, where Landlock's and seccomp's builders must not allocate).
//!
//! Stage 1 (outside): descriptors closed on exec, umask 077, its own session, the run's cgroup
//! joined, the uid dropped when root, parent-death signal, rlimits, a clean environment; then
//! `bwrap` re-executes the helper inside new namespaces (stage 2), or stage 2 runs in place.
//! Stage 2 (inside): the egress relay, no_new_privs, Landlock, seccomp; then `exec` the agent.
//!
//! Every failure of a required layer stops the run before the agent starts, with a line on
//! stderr naming the layer: `edge sandbox: landlock: ...`, and exit code [`REFUSED`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use landlock::{
    Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, ABI,
};
use nix::sys::resource::{setrlimit, Resource};

use crate::profile::{
    forbidden_env, Layer, RunSpec, ALWAYS_HIDDEN, DOCKER_SOCKETS, SYSTEM_READ_ONLY,
};

/// The helper's exit code when a required layer could not be applied (the agent never ran).
pub const REFUSED: i32 = 125;
/// Inside the network namespace, the relay to the egress proxy listens here.
pub const RELAY_PORT: u16 = 3128;
/// Where the egress proxy's socket appears inside the namespaces.
pub const EGRESS_SOCKET_INSIDE: &str = "/run/edge-egress.sock";

/// A layer that could not be applied.
#[derive(Debug)]
pub struct Refusal {
    pub layer: Layer,
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "edge sandbox: {}: {}", self.layer.name(), self.reason)
    }
}

fn refuse(layer: Layer, reason: impl Into<String>) -> Refusal {
    Refusal {
        layer,
        reason: reason.into(),
    }
}

/// Applies layer `l` unless the profile disables it: a failure refuses the run if the layer
/// is required, and is reported on stderr (degraded) if not.
fn layer<T>(
    spec: &RunSpec,
    l: Layer,
    f: impl FnOnce() -> Result<T, String>,
) -> Result<Option<T>, Refusal> {
    if !spec.profile.enabled(l) {
        return Ok(None);
    }
    match f() {
        Ok(v) => Ok(Some(v)),
        Err(e) if spec.profile.requires(l) => Err(refuse(l, e)),
        Err(e) => {
            eprintln!("edge sandbox: {} degraded: {e}", l.name());
            Ok(None)
        }
    }
}

fn errno(what: &str) -> impl Fn(nix::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The edge binary, for re-executing the helper and running the relay.
pub fn self_exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("finding edge's own binary: {e}"))
}

/// Stage 1. Returns only on refusal; otherwise the process becomes `bwrap` or the agent.
pub fn stage1(spec: &RunSpec) -> Refusal {
    match stage1_inner(spec) {
        Ok(never) => match never {},
        Err(r) => r,
    }
}

fn stage1_inner(spec: &RunSpec) -> Result<std::convert::Infallible, Refusal> {
    for (l, why) in &spec.missing {
        layer::<()>(spec, *l, || Err(why.clone()))?;
    }
    // Env layer, part 1: nothing inherited survives exec; a private umask; our own session
    // (fails harmlessly if the worker already made us a process group leader).
    layer(spec, Layer::Env, || {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let _ = nix::unistd::setsid();
        cloexec_all()
    })?;
    // Cgroup first: joining needs root's write access to cgroup.procs.
    if !spec.cgroup_procs.is_empty() {
        let me = std::process::id().to_string();
        layer(spec, Layer::Cgroup, || {
            spec.cgroup_procs.iter().try_for_each(|p| {
                std::fs::write(p, &me).map_err(|e| format!("joining {}: {e}", p.display()))
            })
        })?;
    }
    let env = environment(spec);
    // The agent's program, wherever its installer put it: what the namespaces layer would
    // empty is bound back read-only, through descriptors opened now (as root: a home closed
    // to the run's uid, as installers leave them, is still reachable).
    let namespaces = spec.profile.enabled(Layer::Namespaces)
        && !spec.missing.iter().any(|(l, _)| *l == Layer::Namespaces);
    let program_args = if namespaces {
        layer(spec, Layer::Namespaces, || {
            bring_back(spec, env.get("PATH").map(String::as_str))
        })?
        .unwrap_or_default()
    } else {
        Vec::new()
    };
    // A dedicated uid when root.
    if nix::unistd::geteuid().is_root() {
        let (uid, gid) = (spec.profile.uid, spec.profile.gid);
        layer(spec, Layer::User, || {
            if uid == 0 {
                return Err("the profile's uid is 0".to_string());
            }
            nix::unistd::setgroups(&[]).map_err(errno("setgroups"))?;
            let g = nix::unistd::Gid::from_raw(gid);
            nix::unistd::setresgid(g, g, g).map_err(errno("setresgid"))?;
            let u = nix::unistd::Uid::from_raw(uid);
            nix::unistd::setresuid(u, u, u).map_err(errno("setresuid"))
        })?;
    }
    // After the uid change, which clears it.
    layer(spec, Layer::Env, || {
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
            .map_err(errno("PR_SET_PDEATHSIG"))
    })?;
    layer(spec, Layer::Rlimits, || rlimits(spec))?;
    for (what, p) in [("workspace", &spec.workspace), ("agent home", &spec.home)] {
        if nix::unistd::access(p.as_path(), nix::unistd::AccessFlags::W_OK).is_err() {
            return Err(refuse(
                Layer::User,
                format!(
                    "the {what} {} is not writable by uid {}",
                    p.display(),
                    nix::unistd::getuid()
                ),
            ));
        }
    }
    // The namespaces, unless the outer part found them unavailable (then `missing` says so and
    // the run was refused above if they are required).
    if namespaces {
        let bwrap = crate::probe::bwrap()
            .ok_or_else(|| refuse(Layer::Namespaces, "bwrap is not installed"))?;
        let exe = self_exe().map_err(|e| refuse(Layer::Namespaces, e))?;
        let json = serde_json::to_string(spec).map_err(|e| refuse(Layer::Env, e.to_string()))?;
        let mut cmd = Command::new(bwrap);
        cmd.args(bwrap_args(spec))
            .args(program_args)
            .arg("--")
            .arg(exe)
            .args(["sandbox", "exec", "--inner", "--spec"])
            .arg(json)
            .env_clear()
            .envs(&env);
        let e = cmd.exec();
        return Err(refuse(Layer::Namespaces, format!("running bwrap: {e}")));
    }
    stage2_inner(spec, false, &env)
}

/// Stage 2, inside the namespaces (`inside = true`) or in place.
/// bubblewrap's `--new-session` puts the agent in a scheduler autogroup of its own (where the
/// kernel has them), and the scheduler shares the CPU between autogroups first: each agent's
/// then weighs as much as all of edge, and the worker's lowered priority (`edge worker --nice`)
/// counts only inside it. Giving the new autogroup the process's own nice value carries it
/// over. Raising a nice value needs no privilege; where there are no autogroups this does
/// nothing.
fn keep_nice_in_autogroup() {
    let nice = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = &s[s.rfind(')')? + 2..];
            // Fields from the state on: the nice value is the 19th field, the 17th from here.
            after.split(' ').nth(16)?.parse::<i32>().ok()
        });
    if let Some(n) = nice.filter(|n| *n > 0) {
        let _ = std::fs::write("/proc/self/autogroup", n.to_string());
    }
}

pub fn stage2(spec: &RunSpec) -> Refusal {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    match stage2_inner(spec, true, &env) {
        Ok(never) => match never {},
        Err(r) => r,
    }
}

fn stage2_inner(
    spec: &RunSpec,
    inside: bool,
    env: &BTreeMap<String, String>,
) -> Result<std::convert::Infallible, Refusal> {
    if inside {
        keep_nice_in_autogroup();
    }
    // Egress: the relay from 127.0.0.1:3128 inside the network namespace to the proxy.
    if spec.egress_socket.is_some() {
        layer(spec, Layer::Egress, || {
            if inside {
                start_relay()
            } else {
                Err("needs the network namespace (bubblewrap)".to_string())
            }
        })?;
    }
    layer(spec, Layer::NoNewPrivs, || {
        nix::sys::prctl::set_no_new_privs().map_err(errno("PR_SET_NO_NEW_PRIVS"))
    })?;
    let path = env.get("PATH").map(String::as_str);
    let program = resolve(&spec.argv[0], path).ok_or_else(|| {
        refuse(
            Layer::Env,
            format!(
                "{:?}: no such program on PATH ({}){}",
                spec.argv[0],
                path.unwrap_or("unset"),
                if inside {
                    " inside the run: give its full path in the config (`edge config check` shows what runs see)"
                } else {
                    ""
                }
            ),
        )
    })?;
    layer(spec, Layer::Landlock, || {
        landlock(spec, inside, &program, path)
    })?;
    layer(spec, Layer::Seccomp, crate::seccomp::apply)?;
    let mut cmd = Command::new(&program);
    cmd.arg0(&spec.argv[0])
        .args(&spec.argv[1..])
        .env_clear()
        .envs(env)
        .current_dir(&spec.workspace);
    let e = cmd.exec();
    Err(refuse(
        Layer::Env,
        format!("running {}: {e}", program.display()),
    ))
}

/// Marks every descriptor above stderr close-on-exec.
fn cloexec_all() -> Result<(), String> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("listing /proc/self/fd: {e}"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // The directory's own descriptor is gone by now: EBADF is fine.
        let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
    Ok(())
}

fn rlimits(spec: &RunSpec) -> Result<(), String> {
    let p = &spec.profile;
    for (r, v, what) in [
        (Resource::RLIMIT_NOFILE, p.open_files, "RLIMIT_NOFILE"),
        (Resource::RLIMIT_FSIZE, p.file_size, "RLIMIT_FSIZE"),
        (Resource::RLIMIT_CORE, 0, "RLIMIT_CORE"),
    ] {
        setrlimit(r, v, v).map_err(errno(what))?;
    }
    // RLIMIT_NPROC counts every process of the uid, across all of its runs: with a cgroup the
    // limit is per run there; without one, it is the only bound, shared by the uid's runs.
    if spec.cgroup_procs.is_empty() {
        setrlimit(Resource::RLIMIT_NPROC, p.pids, p.pids).map_err(errno("RLIMIT_NPROC"))?;
    }
    Ok(())
}

/// The agent's environment: an allowlist from edge's own, then the run's, never a credential.
/// (With the env layer disabled: everything, as it came.)
pub fn environment(spec: &RunSpec) -> BTreeMap<String, String> {
    if !spec.profile.enabled(Layer::Env) {
        let mut env: BTreeMap<String, String> = std::env::vars().collect();
        env.extend(spec.env.iter().cloned());
        return env;
    }
    let mut env = BTreeMap::new();
    let pass = ["PATH", "LANG", "LC_ALL", "TERM", "TZ"]
        .into_iter()
        .map(str::to_string)
        .chain(spec.profile.env.iter().cloned());
    for k in pass {
        if let Ok(v) = std::env::var(&k) {
            if !forbidden_env(&k) {
                env.insert(k, v);
            }
        }
    }
    env.entry("PATH".into())
        .or_insert_with(|| "/usr/local/bin:/usr/bin:/bin".into());
    for (k, v) in &spec.env {
        if !forbidden_env(k) {
            env.insert(k.clone(), v.clone());
        }
    }
    let home = spec.home.display().to_string();
    env.insert("HOME".into(), home.clone());
    env.insert("USER".into(), "agent".into());
    env.insert("LOGNAME".into(), "agent".into());
    // The agent's config (Claude Code's ~/.claude) lives in its home.
    env.insert("CLAUDE_CONFIG_DIR".into(), format!("{home}/.claude"));
    env.insert("TMPDIR".into(), "/tmp".into());
    if spec.egress_socket.is_some() {
        let proxy = format!("http://127.0.0.1:{RELAY_PORT}");
        for k in [
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "ALL_PROXY",
            "https_proxy",
            "http_proxy",
            "all_proxy",
        ] {
            env.insert(k.into(), proxy.clone());
        }
        env.insert("NO_PROXY".into(), "localhost,127.0.0.1".into());
    }
    env
}

/// The namespaces and mounts of every run (and of the probe that checks bwrap works here).
pub(crate) const BWRAP_BASE: &[&str] = &[
    "--die-with-parent",
    "--new-session",
    "--unshare-all",
    "--cap-drop",
    "ALL",
    "--hostname",
    "edge-sandbox",
    "--ro-bind",
    "/",
    "/",
    "--dev",
    "/dev",
    "--proc",
    "/proc",
    "--tmpfs",
    "/tmp",
    "--tmpfs",
    "/var/tmp",
    "--tmpfs",
    "/home",
    "--tmpfs",
    "/root",
    "--tmpfs",
    "/run",
];

/// The bubblewrap command line (before `--`).
pub fn bwrap_args(spec: &RunSpec) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(OsString::from));
    push(BWRAP_BASE);
    if spec.egress_socket.is_none() && !spec.profile.requires(Layer::Egress) {
        // No proxy: the agent keeps the host's network (the egress layer is off).
        push(&["--share-net"]);
    }
    let mut rw: Vec<&Path> = vec![&spec.workspace, &spec.home];
    rw.extend(spec.profile.read_write.iter().map(PathBuf::as_path));
    let inside_rw = |p: &Path| rw.iter().any(|r| p.starts_with(r));
    // Covered by the tmpfs mounts above, unless a writable bind brings them back.
    let covered = ["/tmp", "/var/tmp", "/home", "/root", "/run"];
    let mut hide: Vec<PathBuf> = ALWAYS_HIDDEN
        .iter()
        .chain(DOCKER_SOCKETS.iter())
        .map(PathBuf::from)
        .chain(spec.profile.hidden.iter().cloned())
        // Resolve symlinked parents (/var/run → /run): bwrap mounts on real paths.
        .map(|p| {
            match (
                p.parent().and_then(|d| std::fs::canonicalize(d).ok()),
                p.file_name(),
            ) {
                (Some(d), Some(n)) => d.join(n),
                _ => p,
            }
        })
        .filter(|p| inside_rw(p) || !covered.iter().any(|c| p.starts_with(c)))
        .collect();
    hide.sort();
    hide.dedup();
    let hide_args = |p: &Path| -> Vec<OsString> {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => vec!["--tmpfs".into(), p.into()],
            Ok(m) if !m.file_type().is_symlink() => {
                vec!["--ro-bind".into(), "/dev/null".into(), p.into()]
            }
            _ => Vec::new(),
        }
    };
    // A hidden path inside a writable bind (a secret in the workspace) is hidden after the
    // bind, or the bind would bring it back; any other before, so that a workspace inside a
    // hidden directory stays visible.
    let (after, before): (Vec<PathBuf>, Vec<PathBuf>) =
        hide.into_iter().partition(|p| inside_rw(p));
    for p in &before {
        a.extend(hide_args(p));
    }
    for p in &rw {
        a.extend(["--bind".into(), p.into(), p.into()]);
    }
    for p in &after {
        a.extend(hide_args(p));
    }
    if let Some(s) = &spec.egress_socket {
        a.extend(["--bind".into(), s.into(), EGRESS_SOCKET_INSIDE.into()]);
    }
    a.extend(["--chdir".into(), spec.workspace.clone().into()]);
    a
}

/// bubblewrap arguments that bring the agent's program back into a run where the namespaces
/// layer empties it (`~/.local/bin/claude` and its versions directory, an npm package under a
/// home and the `node` that runs it): each installation tree bound read-only at its own path
/// through a descriptor opened here, each symlink on the way recreated. Refused when the
/// profile hides one of them.
fn bring_back(spec: &RunSpec, path: Option<&str>) -> Result<Vec<OsString>, String> {
    let c = crate::program::closure(&spec.argv[0], path)?;
    let mut rw: Vec<&Path> = vec![&spec.workspace, &spec.home];
    rw.extend(spec.profile.read_write.iter().map(PathBuf::as_path));
    let visible = |p: &Path| rw.iter().any(|r| p.starts_with(r));
    let hidden = crate::program::hidden_paths(&spec.profile);
    for p in c.trees.iter().chain(c.links.iter().map(|(l, _)| l)) {
        if let Some(h) = hidden.iter().find(|h| p.starts_with(h)) {
            return Err(format!(
                "the agent's program {} needs {}, which profile {:?} hides ({}): install the agent elsewhere, or take that path out of the profile's hidden list",
                c.program.display(),
                p.display(),
                spec.profile.name,
                h.display()
            ));
        }
    }
    let (links, trees) = c.emptied();
    let mut a: Vec<OsString> = Vec::new();
    let mut bound: Vec<&Path> = Vec::new();
    for t in trees {
        if visible(t) {
            continue;
        }
        let fd = nix::fcntl::open(
            t.as_path(),
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| format!("opening {}: {e}", t.display()))?;
        a.extend([
            "--ro-bind-fd".into(),
            fd.to_string().into(),
            t.as_os_str().to_owned(),
        ]);
        bound.push(t);
    }
    for (link, target) in links {
        if visible(link) || bound.iter().any(|b| link.starts_with(b)) {
            continue;
        }
        a.extend([
            "--symlink".into(),
            target.as_os_str().to_owned(),
            link.as_os_str().to_owned(),
        ]);
    }
    Ok(a)
}

/// Landlock: system paths, the program and the extra read-only paths readable; the
/// workspace, home, extra read-write paths (and /tmp inside the namespaces) writable; device
/// files usable. Nothing else.
fn landlock(
    spec: &RunSpec,
    inside: bool,
    program: &Path,
    path: Option<&str>,
) -> Result<(), String> {
    let abi = ABI::V5;
    let read = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    let mut ro: Vec<PathBuf> = SYSTEM_READ_ONLY.iter().map(PathBuf::from).collect();
    ro.extend(spec.profile.read_only.iter().cloned());
    // The program's installation trees (its package, for npm installs; its interpreter's).
    match crate::program::closure(&program.to_string_lossy(), path) {
        Ok(c) => ro.extend(c.trees),
        Err(_) => {
            if let Some(dir) = std::fs::canonicalize(program)
                .ok()
                .and_then(|r| r.parent().map(Path::to_path_buf))
            {
                ro.push(dir);
            }
        }
    }
    let mut rw: Vec<PathBuf> = vec![spec.workspace.clone(), spec.home.clone()];
    rw.extend(spec.profile.read_write.iter().cloned());
    if inside {
        rw.push("/tmp".into());
        rw.push("/var/tmp".into());
    }
    let dev = read | AccessFs::WriteFile | AccessFs::IoctlDev;
    let rules = |paths: Vec<PathBuf>, access| {
        paths
            .into_iter()
            .filter_map(move |p| PathFd::new(&p).ok().map(|fd| PathBeneath::new(fd, access)))
    };
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(rules(ro, read).map(Ok::<_, landlock::RulesetError>)))
        .and_then(|r| r.add_rules(rules(rw, all).map(Ok::<_, landlock::RulesetError>)))
        .and_then(|r| {
            r.add_rules(rules(vec!["/dev".into()], dev).map(Ok::<_, landlock::RulesetError>))
        })
        .and_then(|r| r.restrict_self())
        .map_err(|e| e.to_string())?;
    match status.ruleset {
        RulesetStatus::NotEnforced => Err("the kernel does not enforce Landlock".into()),
        RulesetStatus::PartiallyEnforced | RulesetStatus::FullyEnforced => Ok(()),
    }
}

/// `argv[0]` as a path: as given if it has a slash, else the first match on PATH.
pub fn resolve(program: &str, path: Option<&str>) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    path.unwrap_or("/usr/local/bin:/usr/bin:/bin")
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| {
                    m.is_file()
                        && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                })
                .unwrap_or(false)
        })
}

/// Starts `edge sandbox relay` in the background, and waits until it listens.
fn start_relay() -> Result<(), String> {
    let exe = self_exe()?;
    Command::new(exe)
        .args(["sandbox", "relay", EGRESS_SOCKET_INSIDE])
        .env_clear()
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the relay: {e}"))?;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", RELAY_PORT)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err("the relay did not start listening within 2 s".into())
}

/// The relay, inside the network namespace: 127.0.0.1:3128 → the egress proxy's socket.
/// Runs until its parent (the agent) is gone.
pub fn relay(socket: &Path) -> std::io::Result<()> {
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let l = std::net::TcpListener::bind(("127.0.0.1", RELAY_PORT))?;
    for c in l.incoming() {
        let Ok(c) = c else { continue };
        let socket = socket.to_path_buf();
        std::thread::spawn(move || {
            let Ok(u) = std::os::unix::net::UnixStream::connect(&socket) else {
                return;
            };
            let (Ok(mut c2), Ok(mut u2)) = (c.try_clone(), u.try_clone()) else {
                return;
            };
            let up = std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut u2);
                let _ = u2.shutdown(std::net::Shutdown::Write);
            });
            let (mut c, mut u) = (c, u);
            let _ = std::io::copy(&mut u, &mut c);
            let _ = c.shutdown(std::net::Shutdown::Write);
            let _ = up.join();
        });
    }
    Ok(())
}
