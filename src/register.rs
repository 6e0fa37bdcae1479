//! `edge register` on both sides. On the edge: the tunnel listener, the registered projects
//! merged into the route table (swapped in, no reload), `edge register token create`, `list`
//! and `revoke`. On a project host: `edge register NAME ...`, `edge connect`, `edge deregister`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use edge_gateway::{Gateway, TunnelDialer, TunnelFuture, TunnelIo};
use edge_routing::{Config, RouteTarget, RoutingMode};
use edge_tunnel::{ClientState, LocalRoute, TunnelServer, TunnelSettings};
use tokio_util::sync::CancellationToken;

use crate::cli::{Failure, SessionArgs};

/// Whether a project in the route table is one `edge register` added.
fn is_registered(p: &edge_routing::Project) -> bool {
    !p.routes.is_empty() && p.routes.iter().all(|r| r.target == RouteTarget::Tunnel)
}

/// The config as the file has it: the route table without the registered projects.
fn file_part(cfg: &Config) -> Config {
    let mut c = cfg.clone();
    c.projects.retain(|p| !is_registered(p));
    c
}

/// `cfg` (from the file) with the names registered in its state directory added.
pub fn effective(cfg: &Config) -> Config {
    if cfg.register.is_none() {
        return cfg.clone();
    }
    let store = edge_tunnel::Store::new(&cfg.state_dir.join("register"));
    match store.registrations() {
        Ok(regs) => {
            let list: Vec<(String, Vec<String>)> =
                regs.into_iter().map(|(n, r)| (n, r.mounts)).collect();
            cfg.with_registered(&list)
        }
        Err(e) => {
            tracing::error!(error = %e, "the registrations could not be read; serving the file's projects only");
            cfg.clone()
        }
    }
}

/// Where `name`'s mounts are served.
fn urls(cfg: &Config, name: &str, mounts: &[String]) -> Vec<String> {
    let (scheme, port) = cfg.public_scheme_port();
    mounts
        .iter()
        .map(|m| match cfg.routing {
            RoutingMode::Subpath => format!("{scheme}://{name}.{}{port}/{m}/", cfg.domain),
            RoutingMode::Subdomain => format!("{scheme}://{m}.{name}.{}{port}/", cfg.domain),
        })
        .collect()
}

struct Dial(TunnelServer);

impl TunnelDialer for Dial {
    fn open(&self, project: &str, mount: &str) -> TunnelFuture {
        let (s, p, m) = (self.0.clone(), project.to_string(), mount.to_string());
        Box::pin(async move {
            s.open(&p, &m)
                .await
                .map(|st| Box::new(st) as Box<dyn TunnelIo>)
        })
    }
}

/// Starts the tunnel listener of `[register]` on `gateway`; registrations and sessions
/// change the route table through `apply` (which rebuilds it from the file's part and the
/// registry, with certificates).
pub async fn start(
    gateway: &Gateway,
    base_dir: &Path,
    stop: CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<Option<TunnelServer>, Failure> {
    let cfg = gateway.config();
    let Some(reg) = cfg.register.clone() else {
        return Ok(None);
    };
    let changed = Arc::new(tokio::sync::Notify::new());
    let gw = gateway.clone();
    let gw2 = gateway.clone();
    let ch = changed.clone();
    let hooks = edge_tunnel::Hooks {
        configured: Box::new(move |name| {
            gw.config()
                .projects
                .iter()
                .any(|p| p.name == name && !is_registered(p))
        }),
        urls: Box::new(move |name, mounts| urls(&gw2.config(), name, mounts)),
        changed: Box::new(move || ch.notify_one()),
    };
    let settings = TunnelSettings {
        reserved: reg.reserved.clone(),
        cert_lifetime: reg.cert_lifetime,
        ha: reg.ha,
        max_streams: reg.max_streams,
    };
    let server = TunnelServer::new(&cfg.state_dir, settings, hooks)
        .map_err(|e| Failure::config(anyhow::anyhow!("[register]: {e}")))?;
    gateway.set_tunnels(Arc::new(Dial(server.clone())));
    {
        let (s1, s2) = (server.clone(), server.clone());
        gateway.set_register_admin(
            Arc::new(move || status_json(&s1)),
            Arc::new(move |name| match name {
                None => Err("name the registration: ?name=NAME".into()),
                Some(n) => match s2.revoke(n) {
                    Ok(true) => Ok(format!("revoked {n}: its sessions are closed\n")),
                    Ok(false) => Err(format!("no registration {n:?}")),
                    Err(e) => Err(e.to_string()),
                },
            }),
        );
    }
    let listener = tokio::net::TcpListener::bind(reg.listen)
        .await
        .with_context(|| {
            format!(
                "binding the tunnel listener (register.listen) on {}",
                reg.listen
            )
        })?;
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), pin = %server.pin(), "serving the tunnel listener for edge register");
    let s = server.clone();
    let t = stop.clone();
    tasks.spawn(async move { s.serve(listener, t).await });
    if reg.quic {
        let (s, t, addr) = (server.clone(), stop.clone(), reg.listen);
        tasks.spawn(async move {
            if let Err(e) = s.serve_quic(addr, t).await {
                tracing::error!(error = %e, "QUIC for edge register is off; hosts use TLS over TCP");
            }
        });
    }
    // Route-table swaps, coalesced: a burst of sessions is one swap.
    let gw = gateway.clone();
    let dir = base_dir.to_path_buf();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changed.notified() => {}
            }
            let (gw, dir) = (gw.clone(), dir.clone());
            let r = tokio::task::spawn_blocking(move || apply(&gw, &dir)).await;
            if let Ok(Err(e)) = r {
                tracing::error!(error = %e, "the route table could not take the registrations; the old one stays");
            }
        }
    });
    Ok(Some(server))
}

/// Rebuilds the route table from the file's projects and the registry, with certificates for
/// every project, and swaps it in.
fn apply(gw: &Gateway, base_dir: &Path) -> anyhow::Result<()> {
    let cfg = effective(&file_part(&gw.config()));
    let (certs, _) = crate::up::project_certs(&cfg, base_dir)?;
    let n = cfg.projects.iter().filter(|p| is_registered(p)).count();
    gw.reload(cfg, base_dir, &certs)?;
    tracing::info!(registered = n, "route table swapped for registrations");
    Ok(())
}

fn status_json(s: &TunnelServer) -> String {
    let regs = s.store().registrations().unwrap_or_default();
    let sessions = s.sessions();
    serde_json::json!({
        "registrations": regs.iter().map(|(n, r)| serde_json::json!({
            "name": n, "key_sha256": r.key_sha256, "mounts": r.mounts,
            "enrolled": r.enrolled, "not_after": r.not_after,
        })).collect::<Vec<_>>(),
        "sessions": sessions,
        "handshakes_refused": s.handshakes_refused(),
    })
    .to_string()
}

/// The host's state directory: `--state`, else `$XDG_STATE_HOME/edge-register`, else
/// `~/.local/state/edge-register`.
pub fn state_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| {
        std::env::var_os("XDG_STATE_HOME").map(|d| PathBuf::from(d).join("edge-register"))
    })
    .or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/edge-register"))
    })
    .unwrap_or_else(|| PathBuf::from("edge-register"))
}

fn parse_transport(session: &SessionArgs) -> Result<edge_tunnel::Transport, Failure> {
    session
        .transport
        .parse()
        .map_err(|e: String| Failure::config(anyhow::anyhow!("--transport {e}")))
}

/// The host side's runtime: single-threaded; `edge_tunnel::connect` gives each further lane a
/// thread of its own.
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?)
}

/// Holds the session until Ctrl-C or SIGTERM.
async fn hold(
    state: &ClientState,
    transport: edge_tunnel::Transport,
    lanes: Option<u32>,
) -> Result<(), Failure> {
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        s.cancel();
    });
    // One session per core (up to 4): streams spread over them, and so over the cores.
    let lanes = lanes.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
            .min(4)
    });
    edge_tunnel::connect(state, lanes, transport, stop, |urls| {
        tracing::info!(?urls, "online");
    })
    .await
    .map_err(|e| Failure::from(anyhow::anyhow!("{e}")))
}

/// `edge register NAME --edge HOST:PORT --token T --route MOUNT=URL...`: enrol, print the
/// URLs, hold the session.
pub fn register_host(
    name: &str,
    edge: &str,
    token: &str,
    routes: &[String],
    state: Option<PathBuf>,
    session: &SessionArgs,
) -> Result<(), Failure> {
    let transport = parse_transport(session)?;
    crate::up::init_tracing(false);
    let routes: Vec<LocalRoute> = routes
        .iter()
        .map(|r| LocalRoute::parse(r))
        .collect::<Result<_, _>>()
        .map_err(|e| Failure::config(anyhow::anyhow!("{e}")))?;
    if routes.is_empty() {
        return Err(Failure::config(anyhow::anyhow!(
            "give at least one --route MOUNT=http://HOST:PORT (e.g. --route forge=http://127.0.0.1:3000)"
        )));
    }
    let state = ClientState::new(&state_dir(state));
    let rt = runtime()?;
    rt.block_on(async {
        let e = edge_tunnel::enrol(&state, edge, token, name, &routes)
            .await
            .map_err(|e| Failure::from(anyhow::anyhow!("{e}")))?;
        println!("registered {} at {edge}; served at:", e.name);
        for u in &e.urls {
            println!("  {u}");
        }
        println!(
            "enrolment saved in {}; `edge connect --state {}` holds the session again",
            state.dir.display(),
            state.dir.display()
        );
        hold(&state, transport, session.lanes).await
    })
}

/// `edge connect`: the session again, from the saved enrolment.
pub fn connect_host(state: Option<PathBuf>, session: &SessionArgs) -> Result<(), Failure> {
    let transport = parse_transport(session)?;
    crate::up::init_tracing(false);
    let state = ClientState::new(&state_dir(state));
    let e = state
        .enrolment()
        .map_err(|e| Failure::config(anyhow::anyhow!("{e}")))?;
    println!("connecting {} to {}", e.name, e.edge);
    runtime()?.block_on(hold(&state, transport, session.lanes))
}

/// `edge deregister`: give the name up.
pub fn deregister_host(state: Option<PathBuf>) -> Result<(), Failure> {
    let state = ClientState::new(&state_dir(state));
    let name = runtime()?
        .block_on(edge_tunnel::deregister(&state))
        .map_err(|e| Failure::from(anyhow::anyhow!("{e}")))?;
    println!("deregistered {name}: the edge no longer serves it");
    Ok(())
}

fn register_cfg(cfg: &Config) -> Result<&edge_routing::RegisterConfig, Failure> {
    cfg.register.as_ref().ok_or_else(|| {
        Failure::config(anyhow::anyhow!(
            "registration is not enabled: add a [register] table with listen = \"0.0.0.0:7443\" to the config"
        ))
    })
}

/// `edge register token create NAME [--ttl D]`, on the edge: the token alone on the last line.
pub fn token_create(cfg: &Config, name: &str, ttl: Option<&str>) -> Result<(), Failure> {
    let reg = register_cfg(cfg)?;
    edge_tunnel::check_name(name, &reg.reserved)
        .map_err(|e| Failure::config(anyhow::anyhow!("{e}")))?;
    if cfg.projects.iter().any(|p| p.name == name) {
        return Err(Failure::config(anyhow::anyhow!(
            "{name:?} is a project in the config: it is served by the edge itself"
        )));
    }
    let ttl = match ttl {
        Some(t) => edge_routing::parse_duration(t)
            .map_err(|e| Failure::config(anyhow::anyhow!("--ttl: {e}")))?,
        None => reg.token_ttl,
    };
    let dir = cfg.state_dir.join("register");
    let id = edge_tunnel::Identity::load_or_create(&dir)
        .map_err(|e| Failure::from(anyhow::anyhow!("{e}")))?;
    let store = edge_tunnel::Store::new(&dir);
    let token = store
        .create_token(name, ttl.as_secs() as i64, id.pin())
        .map_err(|e| Failure::from(anyhow::anyhow!("{e}")))?;
    store.audit(
        "token",
        name,
        serde_json::json!({"ttl_secs": ttl.as_secs()}),
    );
    println!(
        "a one-time token for {name}, valid for {}; on the project host run:\n  edge register {name} --edge THIS_EDGE:{} --token TOKEN --route forge=http://127.0.0.1:3000\n{token}",
        humanize(ttl),
        reg.listen.port()
    );
    Ok(())
}

fn humanize(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `edge register list`, from the running edge's admin listener.
pub fn list(admin: &str, json: bool) -> Result<(), Failure> {
    let body = crate::up::admin_get(admin, "/register")?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(&body).context("the edge's answer")?;
    let sessions = v["sessions"].as_array().cloned().unwrap_or_default();
    println!(
        "{:<20} {:<14} {:<22} {:<22} {:>12} {:>12}",
        "NAME", "KEY", "CONNECTED SINCE", "REMOTE", "BYTES IN", "BYTES OUT"
    );
    for r in v["registrations"].as_array().cloned().unwrap_or_default() {
        let name = r["name"].as_str().unwrap_or("");
        let key = r["key_sha256"].as_str().unwrap_or("");
        let mine: Vec<&serde_json::Value> = sessions.iter().filter(|s| s["name"] == name).collect();
        if mine.is_empty() {
            println!(
                "{name:<20} {:<14} {:<22} {:<22} {:>12} {:>12}",
                &key[..key.len().min(12)],
                "offline",
                "-",
                "-",
                "-"
            );
        }
        for s in mine {
            let since = s["since"]
                .as_i64()
                .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
                .map(|t| {
                    format!(
                        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                        t.year(),
                        u8::from(t.month()),
                        t.day(),
                        t.hour(),
                        t.minute(),
                        t.second()
                    )
                })
                .unwrap_or_default();
            println!(
                "{name:<20} {:<14} {since:<22} {:<22} {:>12} {:>12}",
                &key[..key.len().min(12)],
                s["remote"].as_str().unwrap_or(""),
                s["bytes_in"].as_u64().unwrap_or(0),
                s["bytes_out"].as_u64().unwrap_or(0)
            );
        }
    }
    Ok(())
}

/// `edge register revoke NAME`: through the running edge (its sessions close at once), or,
/// when no edge runs, in the state directory.
pub fn revoke(cfg: &Config, admin: Option<&str>, name: &str) -> Result<(), Failure> {
    register_cfg(cfg)?;
    if let Some(a) = admin {
        if std::net::TcpStream::connect(a).is_ok() {
            return crate::up::post_admin(a, &format!("/register/revoke?name={name}"));
        }
    }
    let store = edge_tunnel::Store::new(&cfg.state_dir.join("register"));
    match store.remove(name) {
        Ok(true) => {
            store.audit(
                "revoke",
                name,
                serde_json::json!({"by": "operator", "edge": "not running"}),
            );
            println!(
                "revoked {name} (no edge was running; it is refused from its next connection)"
            );
            Ok(())
        }
        Ok(false) => Err(Failure::config(anyhow::anyhow!("no registration {name:?}"))),
        Err(e) => Err(Failure::from(anyhow::anyhow!("{e}"))),
    }
}
