//! `edge worker`: the worker protocol on stdin and stdout (`--stdio`), over HTTP (`--listen`),
//! or for one attempt described in a file (`--oneshot`, a Nomad task). Logs go to stderr, which
//! never carries frames.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::cli::Failure;

/// Lowers this process's CPU priority by `by` (nice, up to 19), before any thread or agent
/// starts, so all of them inherit it. A failure is logged, not fatal: the agent still runs.
pub fn lower_priority(by: i32) {
    if by == 0 {
        return;
    }
    let now = rustix::process::getpriority_process(None).unwrap_or(0);
    let to = (now + by).min(19);
    if let Err(e) = rustix::process::setpriority_process(None, to) {
        eprintln!("edge worker: could not lower its priority to nice {to}: {e}");
    }
}

pub fn stdio(name: Option<String>, floor: Option<edge_sandbox::Floor>) -> Result<(), Failure> {
    crate::up::init_tracing(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let name = name.unwrap_or_else(hostname);
    rt.block_on(async move {
        let (r, w) = stdio_streams();
        edge_workers::serve(r, w, &name, floor.as_ref())
            .await
            .context("worker protocol")
    })?;
    Ok(())
}

type Reader = std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>;
type Writer = std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

/// The worker's stdin and stdout, as the reactor's own pipes when they are pipes (a local
/// worker's are): tokio's `stdin()` and `stdout()` hand every read and write to a blocking
/// thread, two thread switches for each line of the agent's output, where a pipe registered
/// with the reactor costs one syscall. Anything else (a socket, a terminal) keeps tokio's.
fn stdio_streams() -> (Reader, Writer) {
    use std::os::fd::AsFd as _;
    use tokio::net::unix::pipe;
    let r: Reader = match std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .and_then(pipe::Receiver::from_owned_fd)
    {
        Ok(p) => Box::pin(p),
        Err(_) => Box::pin(tokio::io::stdin()),
    };
    let w: Writer = match std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .and_then(pipe::Sender::from_owned_fd)
    {
        Ok(p) => Box::pin(p),
        Err(_) => Box::pin(tokio::io::stdout()),
    };
    (r, w)
}

/// `edge worker --listen ADDR`: `POST /work` and friends, with a bearer token, mTLS or both.
pub fn listen(
    addr: &str,
    token_file: Option<PathBuf>,
    tls: Option<(PathBuf, PathBuf)>,
    client_ca: Option<PathBuf>,
    name: Option<String>,
    floor: Option<edge_sandbox::Floor>,
) -> Result<(), Failure> {
    crate::up::init_tracing(false);
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| Failure::config(anyhow::anyhow!("--listen {addr:?}: {e} (use IP:PORT)")))?;
    let token = match &token_file {
        None => None,
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("--token-file {}", f.display()))
                .map_err(Failure::config)?;
            let t = t.trim().to_string();
            if t.len() < 16 {
                return Err(Failure::config(anyhow::anyhow!(
                    "--token-file {}: the token must be at least 16 characters",
                    f.display()
                )));
            }
            Some(t)
        }
    };
    let tls_config = match &tls {
        None => None,
        Some((cert, key)) => Some(
            edge_workers::http::tls_config(cert, key, client_ca.as_deref())
                .map_err(|e| Failure::config(anyhow::anyhow!("{e}")))?,
        ),
    };
    if token.is_none() && client_ca.is_none() {
        return Err(Failure::config(anyhow::anyhow!(
            "edge worker --listen needs --token-file, or --tls-cert/--tls-key with --client-ca (mTLS): \
             whoever reaches the worker could run anything"
        )));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let opts = edge_workers::http::HttpOptions {
        name: name.unwrap_or_else(hostname),
        token,
        client_certs: client_ca.is_some(),
        tls: tls_config,
        floor,
    };
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        tracing::info!(
            listen = %listener.local_addr()?,
            tls = tls.is_some(),
            mtls = opts.client_certs,
            "edge worker serving POST /work"
        );
        // Tests and scripts wait for this line.
        eprintln!("edge worker listening on {}", listener.local_addr()?);
        edge_workers::http::serve_http(listener, opts)
            .await
            .context("serving the worker")
    })?;
    Ok(())
}

/// `edge worker --oneshot FILE`: the run frame in FILE (Nomad writes the dispatch payload
/// there), its frames on stdout as NDJSON, and the agent's exit code as edge's.
pub fn oneshot(file: &Path, floor: Option<edge_sandbox::Floor>) -> Result<(), Failure> {
    crate::up::init_tracing(false);
    let bytes = std::fs::read(file)
        .with_context(|| format!("--oneshot {}", file.display()))
        .map_err(Failure::config)?;
    let frame: edge_workers::ToWorker = edge_workers::decode(&bytes)
        .with_context(|| format!("--oneshot {}: not a run frame", file.display()))
        .map_err(Failure::config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // Nomad's default kill_timeout is 5 s: the agent gets 4 of them.
    let code = rt
        .block_on(edge_workers::oneshot(
            frame,
            tokio::io::stdout(),
            std::time::Duration::from_secs(4),
            floor.as_ref(),
        ))
        .context("running the attempt")?;
    std::process::exit(code);
}

/// The chat agent's sandbox profile and workspace, when the config has both.
fn chat_profile(c: &edge_routing::Config) -> Option<(&edge_sandbox::Profile, &Path)> {
    let agent = c.chat.as_ref()?.agent.as_ref()?;
    Some((c.sandbox_profiles.get(&agent.sandbox)?, &agent.workspace))
}

/// `--floor FILE`: the least confinement the worker accepts.
pub fn read_floor(file: Option<&Path>) -> Result<Option<edge_sandbox::Floor>, Failure> {
    let Some(file) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--floor {}", file.display()))
        .map_err(Failure::config)?;
    edge_routing::Config::floor_from_toml(&text)
        .map(Some)
        .map_err(|e| Failure::config(anyhow::anyhow!("--floor {}:\n{e}", file.display())))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "worker".into())
}

/// `edge workers`: the outposts as a running edge sees them, or (`--probe`) a hello from each.
pub fn workers(
    config: Option<std::path::PathBuf>,
    admin: Option<String>,
    probe: bool,
) -> Result<(), Failure> {
    if probe {
        let loaded = crate::cli::load(config.as_deref(), None)?;
        let local: Vec<String> = std::env::current_exe()
            .map(|e| vec![e.display().to_string(), "worker".into(), "--stdio".into()])
            .context("finding edge's own binary")?;
        let list = if loaded.config.outposts.is_empty() {
            vec![edge_chat::Outpost::local(local)]
        } else {
            edge_chat::outposts(&loaded.config.outposts, &loaded.config.state_dir, &local)
                .map_err(|e| anyhow::anyhow!("{e}"))?
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?;
        let mut failed = 0;
        println!("{:<16} {:<6} detail", "outpost", "health");
        for o in &list {
            match rt.block_on(edge_chat::probe_outpost(o)) {
                Ok(h) => {
                    println!(
                        "{:<16} {:<6} worker {:?} (edge {}), {}, answered in {} ms",
                        o.name,
                        "ok",
                        h.worker,
                        h.version,
                        if h.busy { "busy" } else { "idle" },
                        h.millis
                    );
                    if let Some(f) = &h.floor {
                        println!("{:<16} {:<6} floor: {}", "", "", f.summary());
                        // Would the chat's runs pass it? Better known now than at a user's run.
                        if let Some((profile, workspace)) = chat_profile(&loaded.config) {
                            let confine =
                                edge_chat::agent_confine(profile, &loaded.config.state_dir);
                            if let Err(why) = f.check(Some(&confine), Some(workspace)) {
                                failed += 1;
                                println!(
                                    "{:<16} {:<6} the chat's runs would be refused: {why}",
                                    "", "REFUSE"
                                );
                            }
                        }
                    }
                }
                Err(e) => {
                    failed += 1;
                    println!("{:<16} {:<6} {e}", o.name, "FAILED");
                }
            }
            // No SSH master left behind for ControlPersist.
            rt.block_on(edge_workers::outposts::close(&o.via));
        }
        return if failed == 0 {
            Ok(())
        } else {
            Err(Failure::from(anyhow::anyhow!(
                "{failed} of {} outpost(s) did not answer or would refuse the chat's runs",
                list.len()
            )))
        };
    }
    let admin = match admin {
        Some(a) => a,
        None => {
            let loaded = crate::cli::load(config.as_deref(), None)?;
            match loaded.config.listen.admin {
                Some(a) => a.to_string(),
                None => {
                    return Err(Failure::config(anyhow::anyhow!(
                        "listen.admin is off in the config: give --admin, or use --probe"
                    )))
                }
            }
        }
    };
    let body = crate::up::admin_get(&admin, "/outposts")?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&body)
        .with_context(|| format!("the answer of {admin}/outposts: {body}"))?;
    println!(
        "{:<16} {:>7} {:>8}  health",
        "outpost", "running", "capacity"
    );
    for o in &list {
        println!(
            "{:<16} {:>7} {:>8}  {}",
            o["name"].as_str().unwrap_or("?"),
            o["running"],
            if o["capacity"].is_null() {
                "-".to_string()
            } else {
                o["capacity"].to_string()
            },
            match o["resting"].as_str() {
                Some(why) => format!("resting after a failure: {why}"),
                None => "ok".to_string(),
            }
        );
    }
    Ok(())
}
