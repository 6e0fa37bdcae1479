//! Command-line interface. Precedence is flag > environment > config file > built-in default.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use edge_routing::{Config, EMBEDDED_DEFAULT};

#[derive(Debug, Parser)]
#[command(
    name = "edge",
    version,
    about = "One address for a whole software project: forge, CI, staging and agent chat behind one gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (with the embedded default config when no file is given).
    Up {
        /// Config file [env: EDGE_CONFIG]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Overrides `state_dir` [env: EDGE_STATE_DIR]
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Run the chat service alone, or print a one-time sign-in link.
    Chat {
        #[command(subcommand)]
        command: Option<ChatCommand>,
        /// Config file [env: EDGE_CONFIG]
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Overrides `state_dir` [env: EDGE_STATE_DIR]
        #[arg(long, global = true)]
        state_dir: Option<PathBuf>,
    },
    /// Run one agent attempt at a time for an orchestrator, speaking the worker protocol on
    /// stdin/stdout (a local pipe, or SSH with the worker as a forced command).
    Worker {
        /// Speak the protocol on stdin and stdout
        #[arg(long)]
        stdio: bool,
        /// Serve the protocol over HTTP (`POST /work`, `/healthz`, `/readyz`, `/metrics`) on
        /// this address
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// With --listen: the file holding the bearer token clients must send
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// With --listen: serve TLS with this certificate chain (PEM)
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// With --listen: the TLS certificate's private key (PEM)
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// With --listen and TLS: require client certificates issued by this CA (mTLS)
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        client_ca: Option<PathBuf>,
        /// The name the worker gives in `hello` (default: the host name)
        #[arg(long)]
        name: Option<String>,
        /// Run the single attempt whose run frame is in this file, print its frames as NDJSON on
        /// stdout and exit with the agent's code (a Nomad task)
        #[arg(long, value_name = "FILE")]
        oneshot: Option<PathBuf>,
        /// The least confinement this worker accepts, whatever the orchestrator sends (a TOML
        /// file: require, memory, pids, open_files, file_size, egress, writable, hidden; see
        /// docs/sandbox.md, "A worker's floor"). Runs below it are refused and say why.
        #[arg(long, value_name = "FILE")]
        floor: Option<PathBuf>,
        /// Lower the CPU priority of the worker and its agents by this much (0 to 19), so that
        /// edge's gateway and chat on the same host stay responsive while agents keep every
        /// core busy
        #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
        nice: i32,
    },
    /// The outposts: runs going, capacity and health from a running edge, or (--probe) a hello
    /// from each one's worker.
    Workers {
        /// Config file [env: EDGE_CONFIG]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The running edge's admin address, instead of reading it from the config
        #[arg(long)]
        admin: Option<String>,
        /// Connect to each outpost's worker and say hello (needs no running edge)
        #[arg(long)]
        probe: bool,
    },
    /// Check a live deployment from outside, as a browser would: TLS, redirects, each mount and
    /// its assets, the sign-in gate, staging's sandbox, the chat's WebSocket, the admin
    /// listener. Exits 1 when a check fails.
    Smoke {
        /// The edge's config (default: $EDGE_CONFIG, else the embedded default): every project
        /// and mount, its CA, its listeners, a one-time sign-in for the chat
        #[arg(long, value_name = "FILE", conflicts_with = "url")]
        config: Option<PathBuf>,
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Check this address instead, from what the edge says of itself (subpath routing)
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Trust this CA too (PEM), e.g. an edge's local CA with --url
        #[arg(long, value_name = "FILE")]
        cacert: Option<PathBuf>,
        /// Dial this address for HTTPS whatever the names resolve to (like curl --resolve)
        #[arg(long, value_name = "ADDR:PORT")]
        connect: Option<std::net::SocketAddr>,
        /// One JSON object on stdout (for CI)
        #[arg(long)]
        json: bool,
    },
    /// Find subpath and setup mistakes before users do: names that do not resolve, listeners,
    /// the sandbox and outposts, then each mount through the gateway (links and redirects
    /// without the prefix or to the upstream's own address, cookies outside the mount, redirect
    /// loops, known apps' base-URL settings). Exits 1 when it finds an error.
    Doctor {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// One JSON object on stdout
        #[arg(long)]
        json: bool,
    },
    /// The apps behind the routes (`app = "..."`).
    Apps {
        #[command(subcommand)]
        command: AppsCommand,
    },
    /// Confine agent runs: check which layers this host enforces, try a profile.
    Sandbox {
        #[command(subcommand)]
        command: SandboxCommand,
    },
    /// Work with config files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Each project's certificate: issuer, names, expiry, next renewal, last error.
    Certs {
        #[command(subcommand)]
        command: Option<CertsCommand>,
        /// Config file [env: EDGE_CONFIG]
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// The running edge's admin address, instead of reading it from the config
        #[arg(long, global = true)]
        admin: Option<String>,
    },
    /// Install the local CA in this machine's trust store and its browsers' NSS databases
    /// (or take it out with --remove).
    Trust {
        /// Config file [env: EDGE_CONFIG]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Overrides `state_dir` [env: EDGE_STATE_DIR]
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Take the CA out instead
        #[arg(long)]
        remove: bool,
        /// The system store's directory (default /usr/local/share/ca-certificates, then
        /// update-ca-certificates runs)
        #[arg(long, value_name = "DIR")]
        ca_dir: Option<PathBuf>,
        /// An NSS database (repeatable; default: Chrome's ~/.pki/nssdb and every Firefox profile)
        #[arg(long, value_name = "DIR")]
        nss_db: Vec<PathBuf>,
    },
    /// On a project host: put this host's project on an edge and hold its session
    /// (`edge register NAME --edge HOST:PORT --token T --route forge=http://127.0.0.1:3000`).
    /// On the edge: `edge register token create NAME`, `edge register list`, `edge register
    /// revoke NAME`.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Register {
        #[command(subcommand)]
        command: Option<RegisterCommand>,
        /// The name to take: served at https://NAME.<domain>/
        #[arg(required = true)]
        name: Option<String>,
        /// The edge's tunnel listener (its [register] listen)
        #[arg(long, value_name = "HOST:PORT", required = true)]
        edge: Option<String>,
        /// The one-time token from `edge register token create NAME` on the edge
        #[arg(long, required = true)]
        token: Option<String>,
        /// A mount and the local upstream behind it (repeatable)
        #[arg(long = "route", value_name = "MOUNT=URL", required = true)]
        routes: Vec<String>,
        /// Where the key, certificate and enrolment are kept (default
        /// ~/.local/state/edge-register)
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
        #[command(flatten)]
        session: SessionArgs,
    },
    /// On a project host: hold the session to the edge again, from the saved enrolment
    /// (reconnecting by itself after network cuts and edge restarts).
    Connect {
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
        #[command(flatten)]
        session: SessionArgs,
    },
    /// On a project host: give the name up; the edge stops serving it.
    Deregister {
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
    },
    /// Ask a running edge to re-read its config (same as sending it SIGHUP).
    Reload {
        /// The config file of the running edge, to find its admin address [env: EDGE_CONFIG]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The admin address, instead of reading it from the config
        #[arg(long)]
        admin: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Renew ACME certificates now, through the running edge (all, or one project's).
    Renew {
        /// The project (default: every project whose issuer is ACME)
        project: Option<String>,
    },
}

/// How a project host holds its sessions (`edge register`, `edge connect`).
#[derive(Debug, clap::Args)]
pub struct SessionArgs {
    /// How to reach the edge: auto (QUIC, else TLS over TCP), quic, tcp
    #[arg(long, default_value = "auto")]
    pub transport: String,
    /// Sessions held side by side, each on a thread of its own (default: one per core, up to 4)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=16))]
    pub lanes: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum RegisterCommand {
    /// Enrolment tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Registered names: key, connected since, remote address, bytes (from the running edge).
    List {
        /// Config file [env: EDGE_CONFIG]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The running edge's admin address, instead of reading it from the config
        #[arg(long)]
        admin: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Take a name away: its sessions close at once and its certificate is refused.
    Revoke {
        name: String,
        /// Config file [env: EDGE_CONFIG]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The running edge's admin address, instead of reading it from the config
        #[arg(long)]
        admin: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a one-time enrolment token for NAME; it is printed alone on the last line.
    Create {
        name: String,
        /// How long it stays valid (default: [register] token_ttl, 1h)
        #[arg(long)]
        ttl: Option<String>,
        /// Config file [env: EDGE_CONFIG]
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ChatCommand {
    /// Print a new one-time sign-in link (login = "token"), valid for 24 hours.
    LoginUrl {
        /// The project whose chat the link opens (default: the default project)
        #[arg(long)]
        project: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Print each layer (enforced / degraded / unavailable, and why) and prove each enforced
    /// one with a probe that must fail inside. Exit 0 only when every required layer holds.
    Verify {
        /// The profile to verify (`[sandbox.profiles.NAME]`)
        #[arg(long, default_value = "default")]
        profile: String,
        /// Config file with the profiles [env: EDGE_CONFIG]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Only these probes (repeatable)
        #[arg(long = "probe", value_name = "NAME")]
        probes: Vec<String>,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Run a command confined exactly as an agent would be.
    Run {
        #[arg(long, default_value = "default")]
        profile: String,
        /// Config file with the profiles [env: EDGE_CONFIG]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The working tree (read-write)
        #[arg(long)]
        workspace: PathBuf,
        /// The agent's home (read-write; default: a fresh one under the state directory)
        #[arg(long)]
        home: Option<PathBuf>,
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// (internal) The helper that applies the layers and executes the command.
    #[command(hide = true)]
    Exec {
        #[arg(long)]
        inner: bool,
        #[arg(long)]
        spec: String,
    },
    /// (internal) One probe of `verify`, run inside the sandbox.
    #[command(hide = true)]
    Probe { name: String, arg: Option<String> },
    /// (internal) The relay to the egress proxy, inside the network namespace.
    #[command(hide = true)]
    Relay { socket: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// The settings to give each app for where edge serves it now (base URLs, OAuth redirect
    /// URIs), from the routes' `app` keys.
    Env {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate config files without starting anything; every problem is listed with its key.
    /// Also checks what each file names on this host (static roots, the agent's workspace and
    /// program as a run finds them) unless --file-only.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The files alone (configs meant for another host)
        #[arg(long)]
        file_only: bool,
        /// Also print, per route, what its app preset set and every request that skips its
        /// sign-in (and which rule lets it)
        #[arg(long)]
        explain: bool,
    },
    /// Print the embedded default config, a starting point for your own.
    Default,
}

/// An error and the exit code it maps to: 2 for bad arguments or config, 1 for the rest.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    err: anyhow::Error,
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        self.code
    }
    pub fn config(err: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: 2,
            err: err.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if f.alternate() {
            write!(f, "{:#}", self.err)
        } else {
            write!(f, "{}", self.err)
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Failure {
        Failure { code: 1, err }
    }
}

/// A config as loaded: the parsed value and the directory its relative paths start from.
pub struct Loaded {
    pub config: Config,
    pub path: Option<PathBuf>,
    pub base_dir: PathBuf,
}

pub fn config_path(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("EDGE_CONFIG").map(PathBuf::from))
}

/// Reads and validates a config file, or the embedded default when `path` is `None`.
pub fn load(path: Option<&Path>, state_dir_flag: Option<&Path>) -> Result<Loaded, Failure> {
    let (text, base_dir) = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))
                .map_err(Failure::config)?;
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            (text, dir.to_path_buf())
        }
        None => (EMBEDDED_DEFAULT.to_string(), PathBuf::from(".")),
    };
    let name = path
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "embedded default".into());
    let mut config =
        Config::from_toml(&text).map_err(|e| Failure::config(anyhow::anyhow!("{name}: {e}")))?;
    let state = state_dir_flag
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("EDGE_STATE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| base_dir.join(&config.state_dir));
    config.state_dir = state;
    Ok(Loaded {
        config,
        path: path.map(Path::to_path_buf),
        base_dir,
    })
}

pub fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Up { config, state_dir } => {
            let path = config_path(config);
            let loaded = load(path.as_deref(), state_dir.as_deref())?;
            crate::up::run(loaded, state_dir)
        }
        Command::Chat {
            command,
            config,
            state_dir,
        } => {
            let loaded = load(config_path(config).as_deref(), state_dir.as_deref())?;
            match command {
                None => crate::chat::run_alone(loaded),
                Some(ChatCommand::LoginUrl { project }) => crate::chat::login_url(loaded, project),
            }
        }
        Command::Worker {
            stdio,
            listen,
            token_file,
            tls_cert,
            tls_key,
            client_ca,
            name,
            oneshot,
            floor,
            nice,
        } => {
            let floor = crate::worker::read_floor(floor.as_deref())?;
            crate::worker::lower_priority(nice);
            let modes =
                usize::from(stdio) + usize::from(listen.is_some()) + usize::from(oneshot.is_some());
            if modes != 1 {
                return Err(Failure::config(anyhow::anyhow!(
                    "say how to reach the worker, once: --stdio, --listen ADDR or --oneshot FILE"
                )));
            }
            if let Some(addr) = listen {
                let tls = tls_cert.zip(tls_key);
                return crate::worker::listen(&addr, token_file, tls, client_ca, name, floor);
            }
            if token_file.is_some() || tls_cert.is_some() || client_ca.is_some() {
                return Err(Failure::config(anyhow::anyhow!(
                    "--token-file, --tls-cert, --tls-key and --client-ca go with --listen"
                )));
            }
            match oneshot {
                Some(file) => crate::worker::oneshot(&file, floor),
                None => crate::worker::stdio(name, floor),
            }
        }
        Command::Smoke {
            config,
            state_dir,
            url,
            cacert,
            connect,
            json,
        } => {
            let loaded = match url {
                Some(_) => None,
                None => Some(load(config_path(config).as_deref(), state_dir.as_deref())?),
            };
            crate::smoke::run(
                loaded,
                crate::smoke::Args {
                    url,
                    cacert,
                    connect,
                    json,
                },
            )
        }
        Command::Doctor {
            config,
            state_dir,
            json,
        } => {
            let loaded = load(config_path(config).as_deref(), state_dir.as_deref())?;
            crate::doctor::run(loaded, json)
        }
        Command::Apps {
            command: AppsCommand::Env { config },
        } => {
            let loaded = load(config_path(config).as_deref(), None)?;
            print!("{}", crate::check::apps_env(&loaded.config));
            Ok(())
        }
        Command::Sandbox { command } => crate::sandbox::run(command),
        Command::Workers {
            config,
            admin,
            probe,
        } => crate::worker::workers(config_path(config), admin, probe),
        Command::Config {
            command:
                ConfigCommand::Check {
                    files,
                    file_only,
                    explain,
                },
        } => {
            let mut bad = 0;
            for f in &files {
                let text = match std::fs::read_to_string(f) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("{}: {e}", f.display());
                        bad += 1;
                        continue;
                    }
                };
                match Config::from_toml(&text) {
                    Ok(c) => {
                        let base = f
                            .parent()
                            .filter(|d| !d.as_os_str().is_empty())
                            .unwrap_or(Path::new("."));
                        if explain {
                            print!("{}", crate::check::explain(&c));
                        }
                        let problems = if file_only {
                            Vec::new()
                        } else {
                            crate::check::on_disk(&c, base)
                        };
                        if problems.is_empty() {
                            println!(
                                "{}: ok ({} project{}, {} routing)",
                                f.display(),
                                c.projects.len(),
                                if c.projects.len() == 1 { "" } else { "s" },
                                match c.routing {
                                    edge_routing::RoutingMode::Subpath => "subpath",
                                    edge_routing::RoutingMode::Subdomain => "subdomain",
                                }
                            );
                        } else {
                            eprintln!(
                                "{}: {} problem{} on this host:",
                                f.display(),
                                problems.len(),
                                if problems.len() == 1 { "" } else { "s" }
                            );
                            for p in &problems {
                                eprintln!("  {p}");
                            }
                            bad += 1;
                        }
                    }
                    Err(e) => {
                        eprintln!("{}: {e}", f.display());
                        bad += 1;
                    }
                }
            }
            if bad > 0 {
                return Err(Failure::config(anyhow::anyhow!(
                    "{bad} of {} file(s) failed the check",
                    files.len()
                )));
            }
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{EMBEDDED_DEFAULT}");
            Ok(())
        }
        Command::Certs {
            command,
            config,
            admin,
        } => {
            let loaded = load(config_path(config).as_deref(), None)?;
            match command {
                None => {
                    print!("{}", crate::certs::list(&loaded.config, &loaded.base_dir));
                    Ok(())
                }
                Some(CertsCommand::Renew { project }) => {
                    let admin = match admin.or(loaded.config.listen.admin.map(|a| a.to_string())) {
                        Some(a) => a,
                        None => {
                            return Err(Failure::config(anyhow::anyhow!(
                                "listen.admin is off in the config: edge certs renew needs the admin listener (or --admin)"
                            )))
                        }
                    };
                    let path = match &project {
                        Some(p) => format!("/certs/renew?project={p}"),
                        None => "/certs/renew".to_string(),
                    };
                    crate::up::post_admin(&admin, &path)
                }
            }
        }
        Command::Trust {
            config,
            state_dir,
            remove,
            ca_dir,
            nss_db,
        } => {
            let loaded = load(config_path(config).as_deref(), state_dir.as_deref())?;
            crate::trust::run_trust(loaded, remove, ca_dir, nss_db)
        }
        Command::Register {
            command,
            name,
            edge,
            token,
            routes,
            state,
            session,
        } => match command {
            None => crate::register::register_host(
                name.as_deref().unwrap_or_default(),
                edge.as_deref().unwrap_or_default(),
                token.as_deref().unwrap_or_default(),
                &routes,
                state,
                &session,
            ),
            Some(RegisterCommand::Token {
                command: TokenCommand::Create { name, ttl, config },
            }) => {
                let loaded = load(config_path(config).as_deref(), None)?;
                crate::register::token_create(&loaded.config, &name, ttl.as_deref())
            }
            Some(RegisterCommand::List {
                config,
                admin,
                json,
            }) => {
                let admin = match admin {
                    Some(a) => a,
                    None => {
                        let loaded = load(config_path(config).as_deref(), None)?;
                        loaded.config.listen.admin.map(|a| a.to_string()).ok_or_else(|| {
                            Failure::config(anyhow::anyhow!(
                                "listen.admin is off in the config: edge register list needs the admin listener (or --admin)"
                            ))
                        })?
                    }
                };
                crate::register::list(&admin, json)
            }
            Some(RegisterCommand::Revoke {
                name,
                config,
                admin,
            }) => {
                let loaded = load(config_path(config).as_deref(), None)?;
                let admin = admin.or(loaded.config.listen.admin.map(|a| a.to_string()));
                crate::register::revoke(&loaded.config, admin.as_deref(), &name)
            }
        },
        Command::Connect { state, session } => crate::register::connect_host(state, &session),
        Command::Deregister { state } => crate::register::deregister_host(state),
        Command::Reload { config, admin } => {
            let admin = match admin {
                Some(a) => a,
                None => {
                    let loaded = load(config_path(config).as_deref(), None)?;
                    match loaded.config.listen.admin {
                        Some(a) => a.to_string(),
                        None => {
                            return Err(Failure::config(anyhow::anyhow!(
                                "listen.admin is off in the config; send SIGHUP to the edge process instead"
                            )))
                        }
                    }
                }
            };
            crate::up::post_reload(&admin)
        }
    }
}
