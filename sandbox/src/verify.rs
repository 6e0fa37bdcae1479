//! `edge sandbox verify`: every layer's status, and a probe per threat that must fail inside
//! the sandbox. The probes are `edge sandbox probe NAME ...` (this file's [`run_probe`]), run
//! confined exactly as an agent would be. A probe prints one line: `held: ...` when the sandbox
//! stopped it (exit 0) or `BROKEN: ...` when it got through (exit 1).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;

use crate::confine::{prepare, Request};
use crate::probe::Report;
use crate::profile::{Layer, Profile};

/// A marker planted in the environment and in the secret file.
pub const MARKER: &str = "edge-probe-secret-6f1d";

/// One probe's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub probe: &'static str,
    /// The layers that stop it.
    pub layers: Vec<Layer>,
    pub held: bool,
    pub detail: String,
}

/// The probes: name, the layers that stop it, and what it tries.
pub const PROBES: &[(&str, &[Layer], &str)] = &[
    (
        "env",
        &[Layer::Env],
        "find a token or agent socket in the environment",
    ),
    (
        "write-outside",
        &[Layer::Landlock, Layer::Namespaces],
        "write a file outside the workspace",
    ),
    (
        "read-shadow",
        &[Layer::Namespaces, Layer::User],
        "read /etc/shadow",
    ),
    (
        "read-secret",
        &[Layer::Landlock, Layer::Namespaces],
        "read a secret planted outside the workspace",
    ),
    (
        "docker",
        &[Layer::Namespaces],
        "connect to the docker socket",
    ),
    (
        "setuid",
        &[Layer::NoNewPrivs, Layer::Namespaces],
        "gain root through a setuid binary (su)",
    ),
    (
        "seccomp",
        &[Layer::Seccomp],
        "ptrace, a netlink socket, a new user namespace",
    ),
    (
        "pids",
        &[Layer::Cgroup, Layer::Rlimits],
        "fork past the process limit",
    ),
    ("memory", &[Layer::Cgroup], "allocate past the memory limit"),
    (
        "egress",
        &[Layer::Egress],
        "reach a host off the allowlist, directly and through the proxy",
    ),
];

/// A scratch area for one verification: a workspace and home the run's uid owns, a secret
/// (world-readable, so only the sandbox stops a read), a directory anyone may write to.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(p: &Profile) -> Result<Scratch, String> {
        // Not under /tmp, which the namespaces replace: the secret and the outside directory
        // must be really there for Landlock alone to be what stops the probes.
        let base = if nix::unistd::geteuid().is_root() {
            PathBuf::from("/var/lib")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("edge-verify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mk = |d: &Path, mode: u32| -> Result<(), String> {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .map_err(|e| format!("{}: {e}", d.display()))
        };
        mk(&dir, 0o755)?;
        mk(&dir.join("workspace"), 0o755)?;
        mk(&dir.join("outside"), 0o777)?;
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(
                &dir.join("workspace"),
                Some(nix::unistd::Uid::from_raw(p.uid)),
                Some(nix::unistd::Gid::from_raw(p.gid)),
            )
            .map_err(|e| e.to_string())?;
        }
        let secret = dir.join("outside/secret");
        std::fs::write(&secret, MARKER).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .map_err(|e| e.to_string())?;
        Ok(Scratch { dir })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A listening docker socket stand-in at /run/docker.sock when the host has none (root only),
/// removed afterwards.
struct PlantedDocker(Option<PathBuf>);

impl PlantedDocker {
    fn plant() -> PlantedDocker {
        if crate::profile::DOCKER_SOCKETS
            .iter()
            .any(|p| Path::new(p).exists())
            || !nix::unistd::geteuid().is_root()
        {
            return PlantedDocker(None);
        }
        let p = PathBuf::from("/run/docker.sock");
        match std::os::unix::net::UnixListener::bind(&p) {
            Ok(l) => {
                let _ = std::fs::set_permissions(
                    &p,
                    std::os::unix::fs::PermissionsExt::from_mode(0o666),
                );
                std::mem::forget(l);
                PlantedDocker(Some(p))
            }
            Err(_) => PlantedDocker(None),
        }
    }
}

impl Drop for PlantedDocker {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Runs every probe (or those named in `only`) confined by `profile`.
pub async fn verify(profile: &Profile, only: &[String]) -> Result<(Report, Vec<Check>), String> {
    let report = crate::probe::probe(profile);
    let scratch = Scratch::new(profile)?;
    let _docker = PlantedDocker::plant();
    // A host-side listener the egress probe must not reach.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let accept = tokio::spawn(async move {
        loop {
            if listener.accept().await.is_err() {
                break;
            }
        }
    });
    let exe = crate::helper::self_exe()?;
    let mut checks = Vec::new();
    for (name, layers, _) in PROBES {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        let mut args: Vec<String> = vec![
            exe.display().to_string(),
            "sandbox".into(),
            "probe".into(),
            name.to_string(),
        ];
        match *name {
            "write-outside" => args.push(scratch.dir.join("outside/written").display().to_string()),
            "read-secret" => args.push(scratch.dir.join("outside/secret").display().to_string()),
            "pids" => args.push((profile.pids + 16).to_string()),
            "memory" => args.push((2 * profile.memory).to_string()),
            "egress" => args.push(port.to_string()),
            _ => {}
        }
        let mut p = profile.clone();
        // The probe program is edge itself.
        if let Some(dir) = exe.parent() {
            p.read_only.push(dir.to_path_buf());
        }
        let req = Request {
            profile: p,
            workspace: scratch.dir.join("workspace"),
            home: scratch.dir.join(format!("home-{name}")),
            argv: args,
            env: Vec::new(),
            notices: None,
        };
        let check = run_one(req, name, layers).await;
        let check = match *name {
            // Whatever the probe said, the file must not be on the host.
            "write-outside" if scratch.dir.join("outside/written").exists() => Check {
                held: false,
                detail: "the file was written outside the workspace".into(),
                ..check
            },
            _ => check,
        };
        checks.push(check);
    }
    accept.abort();
    Ok((report, checks))
}

async fn run_one(req: Request, name: &'static str, layers: &[Layer]) -> Check {
    let layers = layers.to_vec();
    let c = match prepare(req, name) {
        Ok(c) => c,
        Err(e) => {
            return Check {
                probe: name,
                layers,
                held: false,
                detail: format!("not run: {e}"),
            }
        }
    };
    let mut cmd = match c.command() {
        Ok(c) => c,
        Err(e) => {
            return Check {
                probe: name,
                layers,
                held: false,
                detail: e,
            };
        }
    };
    // Planted in the helper's environment: the env layer must keep them from the probe.
    cmd.env("EDGE_PROBE_TOKEN", MARKER)
        .env("SSH_AUTH_SOCK", format!("/tmp/{MARKER}"))
        .env("DOCKER_HOST", format!("unix:///{MARKER}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), async {
        cmd.spawn()?.wait_with_output().await
    })
    .await;
    let fin = c.finish();
    let (held, detail) = match out {
        Err(_) => (false, "the probe did not finish within 60 s".to_string()),
        Ok(Err(e)) => (false, format!("starting the probe: {e}")),
        Ok(Ok(o)) => {
            let stdout = String::from_utf8_lossy(&o.stdout);
            let stderr = String::from_utf8_lossy(&o.stderr);
            let line = stdout.lines().last().unwrap_or("").to_string();
            use std::os::unix::process::ExitStatusExt;
            if o.status.code() == Some(crate::helper::REFUSED) {
                (
                    false,
                    format!("the sandbox refused to start: {}", stderr.trim()),
                )
            } else if name == "memory" && (o.status.signal() == Some(9) || fin.oom_killed) {
                (
                    true,
                    "held: killed by the kernel at the memory limit".into(),
                )
            } else if let Some(rest) = line.strip_prefix("held: ") {
                (o.status.success(), format!("held: {rest}"))
            } else {
                (
                    false,
                    format!(
                        "{} (exit {:?}{})",
                        if line.is_empty() {
                            "no answer".to_string()
                        } else {
                            line
                        },
                        o.status.code(),
                        if stderr.trim().is_empty() {
                            String::new()
                        } else {
                            format!("; stderr: {}", stderr.trim())
                        }
                    ),
                )
            }
        }
    };
    Check {
        probe: name,
        layers,
        held,
        detail,
    }
}

fn held(msg: String) -> i32 {
    println!("held: {msg}");
    0
}

fn broken(msg: String) -> i32 {
    println!("BROKEN: {msg}");
    1
}

/// `edge sandbox probe NAME [ARG]`, run inside the sandbox. Returns the exit code.
pub fn run_probe(name: &str, arg: Option<&str>) -> i32 {
    match name {
        "env" => {
            let leaks: Vec<String> = std::env::vars()
                .filter(|(k, v)| v.contains(MARKER) || crate::profile::forbidden_env(k))
                .map(|(k, _)| k)
                .collect();
            if leaks.is_empty() {
                held("no token, agent socket or planted secret in the environment".into())
            } else {
                broken(format!("the environment has {}", leaks.join(", ")))
            }
        }
        "write-outside" => {
            let p = arg.unwrap_or("/tmp/edge-probe");
            match std::fs::write(p, "x") {
                Ok(()) => broken(format!("wrote {p}")),
                Err(e) => held(format!("writing {p}: {e}")),
            }
        }
        "read-shadow" | "read-secret" => {
            let p = if name == "read-shadow" {
                "/etc/shadow"
            } else {
                arg.unwrap_or("")
            };
            match std::fs::read(p) {
                Ok(b) if b.is_empty() => held(format!("{p} reads as empty")),
                Ok(_) => broken(format!("read {p}")),
                Err(e) => held(format!("reading {p}: {e}")),
            }
        }
        "docker" => {
            for p in crate::profile::DOCKER_SOCKETS {
                if std::os::unix::net::UnixStream::connect(p).is_ok() {
                    return broken(format!("connected to {p}"));
                }
            }
            held("no docker socket reachable".into())
        }
        "setuid" => probe_setuid(),
        "seccomp" => probe_seccomp(),
        "pids" => {
            let want: usize = arg.and_then(|a| a.parse().ok()).unwrap_or(300);
            let mut kids = Vec::new();
            let mut err = None;
            for _ in 0..want {
                match std::process::Command::new("sleep").arg("5").spawn() {
                    Ok(c) => kids.push(c),
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            let n = kids.len();
            for mut k in kids {
                let _ = k.kill();
                let _ = k.wait();
            }
            match err {
                Some(e) => held(format!("fork number {} failed: {e}", n + 1)),
                None => broken(format!("started {n} processes")),
            }
        }
        "memory" => {
            let want: usize = arg.and_then(|a| a.parse().ok()).unwrap_or(4 << 30);
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            let mut total = 0usize;
            while total < want {
                let mut v = Vec::new();
                if v.try_reserve_exact(64 << 20).is_err() {
                    return held(format!("allocation failed at {} MiB", total >> 20));
                }
                v.resize(64 << 20, 1u8);
                total += v.len();
                blocks.push(v);
            }
            broken(format!("allocated and touched {} MiB", total >> 20))
        }
        "egress" => {
            let port: u16 = arg.and_then(|a| a.parse().ok()).unwrap_or(9);
            if std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_secs(2),
            )
            .is_ok()
            {
                // Inside a network namespace, 127.0.0.1 is the sandbox's own.
                return broken(format!("connected to the host's 127.0.0.1:{port} directly"));
            }
            let proxy = std::env::var("HTTPS_PROXY").unwrap_or_default();
            let Some(addr) = proxy.strip_prefix("http://") else {
                return held(format!(
                    "no direct connection to 127.0.0.1:{port}, and no proxy"
                ));
            };
            match std::net::TcpStream::connect(addr.trim_end_matches('/')) {
                Err(e) => held(format!("no direct connection; the proxy {addr}: {e}")),
                Ok(mut s) => {
                    let _ = write!(
                        s,
                        "CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
                    );
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = [0u8; 256];
                    let n = s.read(&mut buf).unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]);
                    if head.starts_with("HTTP/1.1 200") {
                        broken(format!("the proxy let CONNECT 127.0.0.1:{port} through"))
                    } else {
                        held(format!(
                            "no direct connection; the proxy answered {}",
                            head.lines().next().unwrap_or("nothing")
                        ))
                    }
                }
            }
        }
        other => {
            eprintln!("edge sandbox probe: no probe {other:?}");
            2
        }
    }
}

/// Starts `su` (setuid root), which waits for a password, and reads its credentials from
/// /proc while it waits: with no_new_privs its effective uid stays ours.
fn probe_setuid() -> i32 {
    let su = ["/usr/bin/su", "/bin/su"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(su) = su else {
        return held("no su binary to try".into());
    };
    let me = nix::unistd::getuid().as_raw();
    if me == 0 {
        return broken(
            "the probe runs as root: there is nothing to gain, and no uid was dropped".into(),
        );
    }
    let child = std::process::Command::new(su)
        .args(["root", "-c", "true"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return held(format!("running {su}: {e}")),
    };
    let mut euid = None;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(20));
        let Ok(s) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) else {
            break;
        };
        if let Some(l) = s.lines().find(|l| l.starts_with("Uid:")) {
            euid = l
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<u32>().ok());
            if s.contains("Name:\tsu") {
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    match euid {
        Some(0) => broken(format!("{su} ran with effective uid 0")),
        Some(u) => held(format!("{su} ran with effective uid {u}, not 0")),
        None => held(format!("{su} did not run")),
    }
}

fn probe_seccomp() -> i32 {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
    let mut got = Vec::new();
    if nix::sys::ptrace::traceme().is_ok() {
        got.push("ptrace(TRACEME)");
    }
    if socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::empty(),
        SockProtocol::NetlinkRoute,
    )
    .is_ok()
    {
        got.push("a netlink socket");
    }
    if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_ok() {
        got.push("a new user namespace");
    }
    if got.is_empty() {
        held("ptrace, netlink sockets and unshare are refused".into())
    } else {
        broken(format!("got {}", got.join(", ")))
    }
}
