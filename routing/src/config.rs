//! The typed config. [`Config::from_toml`] turns a file's text into values that cannot be wrong:
//! every mount is a DNS label, every upstream a parsed address, every default names a real mount.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::units::parse_duration;
use crate::walk::{Errors, Table};

mod apps;
mod auth;
mod certs;
mod outposts;
mod register;
mod sandbox;

pub use apps::{App, AuthSkip};
pub use auth::{
    AgentConfig, AgentKind, AuthServer, ChatConfig, ChatLimits, ForwardAuth, LoginKind,
    ProjectChat, CHAT_COOKIES, PERMISSION_MODES,
};
pub use certs::{
    AcmeConfig, CertsConfig, ChallengeKind, DnsConfig, DnsProvider, IssuerKind, ProjectCerts,
};
pub use outposts::{OutpostConfig, OutpostKind};
pub use register::RegisterConfig;

/// The config `edge up` runs with when given no file: project `demo` at
/// `https://demo.localhost:8443/`, its mounts not yet pointed anywhere.
pub const EMBEDDED_DEFAULT: &str = r#"# edge's embedded default: project "demo" at https://demo.localhost:8443/
domain = "localhost"
routing = "subpath"
state_dir = "state"

[listen]
https = "127.0.0.1:8443"
http = "127.0.0.1:8080"
admin = "127.0.0.1:9090"
http_redirect = true

[[projects]]
name = "demo"
default = "forge"

  [[projects.routes]]
  mount = "forge"      # set upstream = "http://127.0.0.1:3000" for Forgejo (ROOT_URL ending in /forge/)
  prefix = "strip"

  [[projects.routes]]
  mount = "ci"         # set upstream = "http://127.0.0.1:8000" for Woodpecker (WOODPECKER_HOST ending in /ci)
  prefix = "keep"

  [[projects.routes]]
  mount = "staging"    # edge's welcome page; set root = "./site" for static files, or an upstream
  upstream = "welcome"

  [[projects.routes]]
  mount = "chat"       # the agent chat that edge runs; sign in with the one-time URL edge prints
  upstream = "chat"
  auth = "forward"

[chat]
login = "token"        # or "forgejo" / "oidc" with provider_url, client_id, allowed_users
"#;

/// One problem in a config file, naming its key (`projects[0].routes[1].upstream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in a config (or worker floor) file, in document order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// Each error with the line and column of its key, at the end of its message.
fn located(text: &str, errs: Vec<ConfigError>) -> Vec<ConfigError> {
    errs.into_iter()
        .map(|mut e| {
            if let Some((line, col)) = crate::locate(text, &e.key) {
                e.message = format!("{} (line {line}, column {col})", e.message);
            }
            e
        })
        .collect()
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} problem{} in the file",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingMode {
    /// `https://<project>.<domain>/<mount>/...`
    Subpath,
    /// `https://<mount>.<project>.<domain>/...`
    Subdomain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixMode {
    /// `/forge/x` reaches the upstream as `/x` (Forgejo with ROOT_URL ending in `/forge/`).
    Strip,
    /// `/ci/x` reaches the upstream as `/ci/x` (Woodpecker with WOODPECKER_HOST ending in `/ci`).
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// HTTP/1.1 to the upstream (WebSocket upgrades included).
    Http,
    /// HTTP/2 with prior knowledge, no TLS: gRPC servers such as Woodpecker's agent endpoint.
    H2c,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: Scheme,
    /// `host:port`, as dialled.
    pub authority: String,
}

impl Upstream {
    fn parse(text: &str) -> Result<Upstream, String> {
        let (scheme, rest) = if let Some(r) = text.strip_prefix("http://") {
            (Scheme::Http, r)
        } else if let Some(r) = text.strip_prefix("h2c://") {
            (Scheme::H2c, r)
        } else if text.starts_with("https://") {
            return Err(format!(
                "{text:?}: TLS to upstreams is not supported yet; use http:// (or h2c://) on loopback or a private network"
            ));
        } else {
            return Err(format!(
                "{text:?} is not an upstream; write \"http://HOST:PORT\" or \"h2c://HOST:PORT\""
            ));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('/') {
            return Err(format!(
                "{text:?}: an upstream has no path; use prefix = \"keep\" to send the mount's prefix"
            ));
        }
        if authority.contains('@') || authority.contains('?') || authority.contains('#') {
            return Err(format!("{text:?}: an upstream is only scheme://HOST:PORT"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') && h.contains(':') => {
                return Err(format!(
                    "{text:?}: write IPv6 addresses in brackets, [::1]:{p}"
                ))
            }
            Some((h, p)) => (h, p),
            None => return Err(format!("{text:?}: the port is missing (\"{text}:PORT\")")),
        };
        if host.is_empty() {
            return Err(format!("{text:?}: the host is missing"));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(format!("{text:?}: {port:?} is not a port")),
        }
        Ok(Upstream {
            scheme,
            authority: authority.to_ascii_lowercase(),
        })
    }

    /// The socket address, when the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.authority.parse().ok()
    }
}

/// Where a mount's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// Nothing configured yet: the gateway answers with a page naming the key to set.
    Unconfigured,
    Upstream(Upstream),
    /// Static files under this directory (relative paths are resolved by the caller).
    Static(PathBuf),
    /// The chat service edge runs (`[chat] listen`).
    Chat,
    /// edge's own welcome page (`upstream = "welcome"`): the project's mounts, what each points
    /// at, and what to run next. The embedded default puts it at `/staging/`.
    Welcome,
    /// A registered project's mount, reached through its host's `edge register` session. Never
    /// written in a config file: edge adds these for registered names.
    Tunnel,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub mount: String,
    pub target: RouteTarget,
    pub prefix: PrefixMode,
    /// Time allowed for the upstream's response head (504 after it). Not applied to h2c routes'
    /// streams, nor to WebSockets once upgraded.
    pub timeout: Duration,
    /// Largest request body accepted (413 above it); `None` is unlimited.
    pub max_body: Option<u64>,
    /// Content from this mount is untrusted (preview builds): responses carry
    /// `Content-Security-Policy: sandbox ...`, requests lose `Cookie` and `Authorization`, and
    /// responses lose `Set-Cookie`. Defaults to true for the `staging` mount.
    pub untrusted: bool,
    /// Root-level path prefixes also sent to this route unchanged (e.g. `/v2/` for Forgejo's
    /// container registry, `/proto.Woodpecker/` for Woodpecker's gRPC agents).
    pub root_paths: Vec<String>,
    /// Static routes: serve dotfiles and dot-directories (`.env`, `.git/`) too. Off by default;
    /// `/.well-known/` is served either way.
    pub dotfiles: bool,
    /// Forward-auth: every request is first shown to an auth server.
    pub auth: Option<ForwardAuth>,
    /// The known app behind this route (`app = "forgejo"`), whose preset filled the keys the
    /// route leaves out.
    pub app: Option<App>,
    /// Requests that skip forward-auth because they carry their own credentials (the app's
    /// preset's rules, then `auth_skip`).
    pub auth_skip: Vec<AuthSkip>,
    /// The key of this route in the file (`projects[0].routes[1]`), for messages.
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub name: String,
    /// The project's `[projects.chat]` overrides, if any (see [`Config::chat_of`]).
    pub chat: Option<ProjectChat>,
    /// The project's `[projects.certs]`, if any (see [`Config::issuer_of`]).
    pub certs: Option<ProjectCerts>,
    /// Index into `routes` of the mount that `/` redirects to.
    pub default: usize,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// true: plain HTTP answers 308 to HTTPS. false: the mounts are served over plain HTTP too
    /// (behind a TLS-terminating tunnel).
    pub http_redirect: bool,
    /// Threads serving traffic; 0 picks one per core but one (see [`Listen::proxy_workers`]).
    pub workers: usize,
    /// Send `Strict-Transport-Security` on HTTPS responses.
    pub hsts: bool,
}

impl Listen {
    /// How many threads serve the listeners: `workers`, or for `0` one per core but one, which
    /// is left to the apps edge fronts on the same host (a forge, CI, agents): on 2 cores, one.
    pub fn proxy_workers(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .saturating_sub(1)
                .max(1),
            n => n,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// A client must send a whole request head within this (slowloris); also the keep-alive idle time.
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    /// A request body that sends nothing for this long is cut off.
    pub body_idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub h2_max_concurrent_streams: u32,
    /// How long SIGTERM waits for in-flight requests and open streams.
    pub shutdown_grace: Duration,
    pub upstream_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_connections: 20_000,
            max_connections_per_client: 256,
            h2_max_concurrent_streams: 128,
            shutdown_grace: Duration::from_secs(30),
            upstream_idle_timeout: Duration::from_secs(90),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// One structured line per request (target `edge::access`).
    pub access: bool,
    pub json: bool,
    /// `access_file`: the access log goes to this file (reopened on SIGUSR1) instead of stderr.
    /// Relative paths are against the config file's directory.
    pub access_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub domain: String,
    pub routing: RoutingMode,
    pub state_dir: PathBuf,
    /// Hosts that name no project are served as this project; `None` answers them 404.
    pub fallback_project: Option<usize>,
    /// The project whose certificate is served to clients that send no SNI (default: the first).
    pub default_project: usize,
    pub listen: Listen,
    pub limits: Limits,
    pub log: LogConfig,
    pub projects: Vec<Project>,
    /// The chat service: present when the file has a `[chat]` table or a route uses it.
    pub chat: Option<ChatConfig>,
    /// `[sandbox.profiles.NAME]`, always with `default`.
    pub sandbox_profiles: std::collections::BTreeMap<String, edge_sandbox::Profile>,
    /// `[[outposts]]`, in dispatch order; empty means one local outpost.
    pub outposts: Vec<OutpostConfig>,
    /// `[certs]`: the edge's issuer (a project's `[projects.certs]` may choose another).
    pub certs: CertsConfig,
    /// `[register]`: project hosts may join with `edge register` (absent: they may not).
    pub register: Option<RegisterConfig>,
}

/// A DNS label: lower-case letters, digits and inner hyphens, 1 to 63 characters.
fn check_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} must be a DNS label: lower-case letters, digits and inner hyphens, at most 63 characters"
        ))
    }
}

fn check_domain(s: &str) -> Result<String, String> {
    let d = s.trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() || d.len() > 200 {
        return Err(format!("{s:?} is not a domain name"));
    }
    for label in d.split('.') {
        check_label(label).map_err(|_| {
            format!("{s:?} is not a domain name (label {label:?}); wildcards are implied, do not write them")
        })?;
    }
    Ok(d)
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an address; write IP:PORT, e.g. \"127.0.0.1:8443\""))
}

fn parse_toml(text: &str) -> Result<toml::Table, ConfigErrors> {
    text.parse().map_err(|e: toml::de::Error| {
        let mut msg = e.message().to_string();
        if let Some(span) = e.span() {
            let line = text[..span.start].matches('\n').count() + 1;
            msg = format!("line {line}: {msg}");
        }
        ConfigErrors(vec![ConfigError {
            key: "(file)".into(),
            message: format!("not valid TOML: {msg}"),
        }])
    })
}

impl Config {
    /// The embedded default, which always parses.
    pub fn embedded() -> Config {
        match Config::from_toml(EMBEDDED_DEFAULT) {
            Ok(c) => c,
            Err(e) => unreachable!("the embedded default config is invalid: {e}"),
        }
    }

    /// Parses and validates a config file's text. No I/O: relative paths stay relative.
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        let doc = parse_toml(text)?;
        let mut errs = Errors(Vec::new());
        let cfg = read_config(&doc, &mut errs);
        match (cfg, errs.0.is_empty()) {
            (Some(cfg), true) => Ok(cfg),
            _ => Err(ConfigErrors(located(text, errs.0))),
        }
    }

    /// Parses a worker's floor file (`edge worker --floor FILE`), naming every mistake.
    pub fn floor_from_toml(text: &str) -> Result<edge_sandbox::Floor, ConfigErrors> {
        let doc = parse_toml(text)?;
        let mut errs = Errors(Vec::new());
        let floor = sandbox::read_floor(&doc, &mut errs);
        if errs.0.is_empty() {
            Ok(floor)
        } else {
            Err(ConfigErrors(errs.0))
        }
    }

    /// Where the chat mount of the project that `host` (as the browser sent it, port and all)
    /// belongs to lives: `https://demo.example.test:8443/chat` in subpath mode,
    /// `https://chat.demo.example.test:8443` in subdomain mode. None if `host` names no project
    /// of this config or the project has no chat mount.
    pub fn chat_base(&self, proto: &str, host: &str) -> Option<String> {
        self.chat_site(proto, host).map(|(_, base)| base)
    }

    /// The project whose chat a request to `host` reaches (an index into `projects`), with the
    /// chat's base URL: see [`Config::chat_base`].
    pub fn chat_site(&self, proto: &str, host: &str) -> Option<(usize, String)> {
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (n, Some(p)),
            _ => (host, None),
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let rest = name.strip_suffix(&format!(".{}", self.domain))?;
        let project_name = rest.rsplit('.').next()?;
        let pi = self.projects.iter().position(|p| p.name == project_name)?;
        let p = &self.projects[pi];
        if rest != p.name
            && !(self.routing == RoutingMode::Subdomain && rest.split('.').count() == 2)
        {
            return None;
        }
        let route = p.routes.iter().find(|r| r.target == RouteTarget::Chat)?;
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        let base = match self.routing {
            RoutingMode::Subpath => format!("{proto}://{}{port}/{}", name, route.mount),
            RoutingMode::Subdomain => {
                format!("{proto}://{}.{}.{}{port}", route.mount, p.name, self.domain)
            }
        };
        Some((pi, base))
    }

    /// The chat config in force for project `p`: the edge-wide `[chat]` with the project's
    /// `[projects.chat]` applied. `None` when there is no chat.
    pub fn chat_of(&self, p: usize) -> Option<std::borrow::Cow<'_, ChatConfig>> {
        let edge = self.chat.as_ref()?;
        Some(match self.projects.get(p).and_then(|p| p.chat.as_ref()) {
            Some(o) => std::borrow::Cow::Owned(edge.for_project(o)),
            None => std::borrow::Cow::Borrowed(edge),
        })
    }

    /// Who issues project `p`'s certificate: its `[projects.certs]` issuer, else the edge's.
    pub fn issuer_of(&self, p: usize) -> IssuerKind {
        self.projects[p]
            .certs
            .as_ref()
            .and_then(|c| c.issuer)
            .unwrap_or(self.certs.issuer)
    }

    /// This config with the projects `edge register` added: each `(name, mounts)` becomes a
    /// project whose mounts reach its host's session ([`RouteTarget::Tunnel`]), with the same
    /// defaults a mount of that name gets in a file (prefix, timeout, `staging` untrusted...).
    /// A name the file already serves is skipped: the file wins.
    pub fn with_registered(&self, registered: &[(String, Vec<String>)]) -> Config {
        let mut out = self.clone();
        for (name, mounts) in registered {
            if out.projects.iter().any(|p| &p.name == name) || mounts.is_empty() {
                continue;
            }
            let mut text = format!(
                "domain = \"{}\"\n[[projects]]\nname = \"{name}\"\n",
                self.domain
            );
            for m in mounts {
                text.push_str(&format!("[[projects.routes]]\nmount = \"{m}\"\n"));
            }
            let Ok(parsed) = Config::from_toml(&text) else {
                continue;
            };
            let Some(mut p) = parsed.projects.into_iter().next() else {
                continue;
            };
            for (i, r) in p.routes.iter_mut().enumerate() {
                r.target = RouteTarget::Tunnel;
                r.key = format!("registered {name}, mount {i}");
            }
            out.projects.push(p);
        }
        out
    }

    /// The public host of a project in the current mode's canonical form (`demo.example.test`).
    pub fn project_host(&self, project: usize) -> String {
        format!("{}.{}", self.projects[project].name, self.domain)
    }

    /// The scheme and port suffix browsers use: HTTPS when it is served, else plain HTTP
    /// (`("https", ":8443")`; no suffix on the scheme's own port).
    pub fn public_scheme_port(&self) -> (&'static str, String) {
        let (scheme, port, default) = match (self.listen.https, self.listen.http) {
            (Some(a), _) => ("https", a.port(), 443),
            (None, Some(a)) => ("http", a.port(), 80),
            (None, None) => ("https", 443, 443),
        };
        let port = if port == default {
            String::new()
        } else {
            format!(":{port}")
        };
        (scheme, port)
    }

    /// A mount's public URL, ending in `/` (`https://demo.example.test/forge/`, or
    /// `https://forge.demo.example.test/` in subdomain mode).
    pub fn mount_url(&self, project: usize, route: usize) -> String {
        let (scheme, port) = self.public_scheme_port();
        let host = self.project_host(project);
        let m = &self.projects[project].routes[route].mount;
        match self.routing {
            RoutingMode::Subpath => format!("{scheme}://{host}{port}/{m}/"),
            RoutingMode::Subdomain => format!("{scheme}://{m}.{host}{port}/"),
        }
    }
}

fn read_config(doc: &toml::Table, errs: &mut Errors) -> Option<Config> {
    let mut top = Table::new("", doc);
    let domain = match top.str(errs, "domain") {
        Some(d) => match check_domain(d) {
            Ok(d) => Some(d),
            Err(e) => {
                errs.push("domain", e);
                None
            }
        },
        None => Some("localhost".to_string()),
    };
    let routing = match top.str(errs, "routing") {
        None | Some("subpath") => RoutingMode::Subpath,
        Some("subdomain") => RoutingMode::Subdomain,
        Some(other) => {
            errs.push(
                "routing",
                format!("{other:?} is not a routing mode; use \"subpath\" or \"subdomain\""),
            );
            RoutingMode::Subpath
        }
    };
    let state_dir = PathBuf::from(top.str(errs, "state_dir").unwrap_or("state"));
    if state_dir.as_os_str().is_empty() {
        errs.push("state_dir", "must not be empty");
    }
    let fallback = top.str(errs, "fallback_project");
    let default_project = top.str(errs, "default_project");

    let listen = read_listen(top.table(errs, "listen"), errs);
    let limits = read_limits(top.table(errs, "limits"), errs);
    let certs = certs::read_certs(top.table(errs, "certs"), errs);
    let register = register::read_register(top.table(errs, "register"), errs);
    let log = read_log(top.table(errs, "log"), errs);
    let sandbox_profiles = sandbox::read_sandbox(top.table(errs, "sandbox"), errs);
    let outpost_tables = top.tables(errs, "outposts");
    let outposts = outposts::read_outposts(outpost_tables, errs);
    let chat_table = top.table(errs, "chat");
    let chat_given = chat_table.is_some();
    let mut chat = auth::read_chat(chat_table, errs);

    let project_tables = top.tables(errs, "projects");
    if project_tables.is_empty() && doc.get("projects").is_none() {
        errs.push("projects", "at least one [[projects]] entry is needed");
    }
    let mut projects: Vec<Project> = Vec::new();
    for pt in project_tables {
        let key = pt.key("");
        let key = key.trim_end_matches('.').to_string();
        if let Some(p) = read_project(pt, &listen, errs) {
            if projects.iter().any(|q| q.name == p.name) {
                errs.push(
                    format!("{key}.name"),
                    format!("project {:?} is defined twice", p.name),
                );
            }
            projects.push(p);
        }
    }
    let find = |errs: &mut Errors, key: &str, name: Option<&str>| -> Option<usize> {
        let name = name?;
        match projects.iter().position(|p| p.name == name) {
            Some(i) => Some(i),
            None => {
                errs.push(key, format!("{name:?} names no project"));
                None
            }
        }
    };
    let uses_chat = projects.iter().flat_map(|p| &p.routes).any(|r| {
        r.target == RouteTarget::Chat
            || r.auth
                .as_ref()
                .is_some_and(|a| a.server == AuthServer::Chat)
    });
    if uses_chat && chat.is_none() {
        chat = auth::read_chat(Some(Table::new("chat", &toml::Table::new())), errs);
    }
    if let Some(a) = chat.as_ref().and_then(|c| c.agent.as_ref()) {
        if !sandbox_profiles.contains_key(&a.sandbox) {
            errs.push(
                "chat.agent.sandbox",
                format!(
                    "no profile {:?}: define [sandbox.profiles.{}] (profiles here: {})",
                    a.sandbox,
                    a.sandbox,
                    sandbox_profiles
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }
    for (i, p) in projects.iter().enumerate() {
        let Some(o) = &p.chat else { continue };
        let Some(edge) = &chat else {
            errs.push(
                format!("projects[{i}].chat"),
                "a project's chat overrides the edge's: add a [chat] table (and a chat mount)",
            );
            continue;
        };
        let c = edge.for_project(o);
        if !c.someone_allowed() {
            errs.push(
                format!("projects[{i}].chat.allowed_users"),
                "nobody could sign in to this project's chat: list allowed_users, allowed_orgs or allowed_teams",
            );
        }
        if let Some(a) = &o.agent {
            if !sandbox_profiles.contains_key(&a.sandbox) {
                errs.push(
                    format!("projects[{i}].chat.agent.sandbox"),
                    format!(
                        "no profile {:?}: define [sandbox.profiles.{}]",
                        a.sandbox, a.sandbox
                    ),
                );
            }
        }
    }
    if let Some(c) = &chat {
        if [listen.https, listen.http, listen.admin].contains(&Some(c.listen)) {
            let key = if chat_given { "chat.listen" } else { "chat" };
            errs.push(
                key,
                format!("{} is also a gateway listen address", c.listen),
            );
        }
    }
    for (i, p) in projects.iter().enumerate() {
        let own = p.certs.as_ref().and_then(|c| c.issuer);
        match own.unwrap_or(certs.issuer) {
            IssuerKind::Acme if certs.acme.is_none() && own.is_some() => errs.push(
                format!("projects[{i}].certs.issuer"),
                "issuer = \"acme\" needs the edge's [certs.acme] table (the CA's directory)",
            ),
            IssuerKind::Files if own.is_none() => errs.push(
                format!("projects[{i}].certs"),
                "[certs] issuer = \"files\": each project names its files in [projects.certs] (issuer = \"files\", cert_file, key_file)",
            ),
            _ => {}
        }
    }
    let fallback_project = find(errs, "fallback_project", fallback);
    let default_project = find(errs, "default_project", default_project).unwrap_or(0);
    top.finish(errs);
    Some(Config {
        domain: domain?,
        routing,
        state_dir,
        fallback_project,
        default_project,
        listen,
        limits,
        log,
        projects,
        chat,
        sandbox_profiles,
        outposts,
        certs,
        register,
    })
}

fn read_listen(t: Option<Table<'_>>, errs: &mut Errors) -> Listen {
    let mut l = Listen {
        https: Some(SocketAddr::from(([127, 0, 0, 1], 8443))),
        http: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
        admin: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
        http_redirect: true,
        workers: 0,
        hsts: true,
    };
    let Some(mut t) = t else { return l };
    // An empty string switches a listener off.
    let addr =
        |t: &mut Table<'_>, errs: &mut Errors, key: &'static str, slot: &mut Option<SocketAddr>| {
            if let Some(s) = t.str(errs, key) {
                *slot = if s.is_empty() {
                    None
                } else {
                    match parse_addr(s) {
                        Ok(a) => Some(a),
                        Err(e) => {
                            errs.push(t.key(key), e);
                            None
                        }
                    }
                };
            }
        };
    let before = errs.0.len();
    addr(&mut t, errs, "https", &mut l.https);
    addr(&mut t, errs, "http", &mut l.http);
    addr(&mut t, errs, "admin", &mut l.admin);
    if let Some(b) = t.bool(errs, "http_redirect") {
        l.http_redirect = b;
    }
    if let Some(b) = t.bool(errs, "hsts") {
        l.hsts = b;
    }
    if let Some(w) = t.uint(errs, "workers") {
        if w > 256 {
            errs.push(
                t.key("workers"),
                format!("{w} is too many; use 0 (one per core) to 256"),
            );
        } else {
            l.workers = w as usize;
        }
    }
    let addrs_ok = errs.0.len() == before;
    if addrs_ok && l.https.is_none() && l.http.is_none() {
        errs.push(
            t.key("https"),
            "neither listen.https nor listen.http is set: nothing would serve",
        );
    }
    if addrs_ok && l.https.is_none() && l.http_redirect && l.http.is_some() {
        errs.push(
            t.key("http_redirect"),
            "true redirects to HTTPS, but listen.https is off; set http_redirect = false",
        );
    }
    let addrs = [("https", l.https), ("http", l.http), ("admin", l.admin)];
    for (i, (ka, a)) in addrs.iter().enumerate() {
        for (kb, b) in &addrs[i + 1..] {
            if let (Some(a), Some(b)) = (a, b) {
                if a == b {
                    errs.push(t.key(kb), format!("{b} is also listen.{ka}"));
                }
            }
        }
    }
    t.finish(errs);
    l
}

fn read_limits(t: Option<Table<'_>>, errs: &mut Errors) -> Limits {
    let mut l = Limits::default();
    let Some(mut t) = t else { return l };
    let mut dur = |t: &mut Table<'_>, key: &'static str, slot: &mut Duration| {
        if let Some(d) = t.parsed(errs, key, parse_duration) {
            *slot = d;
        }
    };
    dur(&mut t, "header_read_timeout", &mut l.header_read_timeout);
    dur(
        &mut t,
        "tls_handshake_timeout",
        &mut l.tls_handshake_timeout,
    );
    dur(&mut t, "body_idle_timeout", &mut l.body_idle_timeout);
    dur(&mut t, "shutdown_grace", &mut l.shutdown_grace);
    dur(
        &mut t,
        "upstream_idle_timeout",
        &mut l.upstream_idle_timeout,
    );
    for (key, d) in [
        ("header_read_timeout", l.header_read_timeout),
        ("tls_handshake_timeout", l.tls_handshake_timeout),
        ("body_idle_timeout", l.body_idle_timeout),
    ] {
        if d.is_zero() {
            errs.push(t.key(key), "must be more than 0s");
        }
    }
    if let Some(n) = t.size(errs, "max_header_bytes") {
        if !(1024..=1 << 20).contains(&n) {
            errs.push(
                t.key("max_header_bytes"),
                format!("{n} is outside 1KiB..1MiB"),
            );
        } else {
            l.max_header_bytes = n as usize;
        }
    }
    let count =
        |t: &mut Table<'_>, errs: &mut Errors, key: &'static str, max: u64, slot: &mut usize| {
            if let Some(n) = t.uint(errs, key) {
                if n == 0 || n > max {
                    errs.push(t.key(key), format!("{n} is outside 1..{max}"));
                } else {
                    *slot = n as usize;
                }
            }
        };
    count(&mut t, errs, "max_headers", 1000, &mut l.max_headers);
    count(
        &mut t,
        errs,
        "max_connections",
        1_000_000,
        &mut l.max_connections,
    );
    count(
        &mut t,
        errs,
        "max_connections_per_client",
        1_000_000,
        &mut l.max_connections_per_client,
    );
    let mut streams = l.h2_max_concurrent_streams as usize;
    count(
        &mut t,
        errs,
        "h2_max_concurrent_streams",
        10_000,
        &mut streams,
    );
    l.h2_max_concurrent_streams = streams as u32;
    t.finish(errs);
    l
}

fn read_log(t: Option<Table<'_>>, errs: &mut Errors) -> LogConfig {
    let mut l = LogConfig {
        access: true,
        json: false,
        access_file: None,
    };
    let Some(mut t) = t else { return l };
    if let Some(b) = t.bool(errs, "access") {
        l.access = b;
    }
    if let Some(f) = t.str(errs, "access_file") {
        if f.is_empty() {
            errs.push(
                t.key("access_file"),
                "an empty path: leave the key out to log to stderr",
            );
        } else {
            l.access_file = Some(PathBuf::from(f));
        }
    }
    match t.str(errs, "format") {
        None | Some("text") => {}
        Some("json") => l.json = true,
        Some(other) => errs.push(
            t.key("format"),
            format!("{other:?}: use \"text\" or \"json\""),
        ),
    }
    t.finish(errs);
    l
}

fn read_project(mut t: Table<'_>, listen: &Listen, errs: &mut Errors) -> Option<Project> {
    let name = t.str(errs, "name");
    if !t.has("name") {
        errs.push(t.key("name"), "every project needs a name");
    }
    let name_ok = match name {
        Some(n) => match check_label(n) {
            Ok(()) => true,
            Err(e) => {
                errs.push(t.key("name"), e);
                false
            }
        },
        None => false,
    };
    let default = t.str(errs, "default");
    let chat = t
        .table(errs, "chat")
        .map(|c| auth::read_project_chat(c, errs));
    let certs = t
        .table(errs, "certs")
        .map(|c| certs::read_project_certs(c, errs));
    let mut routes: Vec<Route> = Vec::new();
    for rt in t.tables(errs, "routes") {
        if let Some(r) = read_route(rt, listen, errs) {
            if routes.iter().any(|q| q.mount == r.mount) {
                errs.push(
                    format!("{}.mount", r.key),
                    format!("mount {:?} is defined twice in this project", r.mount),
                );
            }
            routes.push(r);
        }
    }
    if routes.is_empty() {
        errs.push(
            t.key("routes"),
            "a project needs at least one [[projects.routes]] entry",
        );
    }
    // Root paths may not shadow mounts nor each other.
    for (i, r) in routes.iter().enumerate() {
        for (j, p) in r.root_paths.iter().enumerate() {
            let first = p.trim_start_matches('/').split('/').next().unwrap_or("");
            if routes.iter().any(|m| m.mount == first) {
                errs.push(
                    format!("{}.root_paths[{j}]", r.key),
                    format!("{p:?} lies under the mount /{first}/"),
                );
            }
            for other in &routes[i + 1..] {
                for q in &other.root_paths {
                    if p.starts_with(q.as_str()) || q.starts_with(p.as_str()) {
                        errs.push(
                            format!("{}.root_paths[{j}]", r.key),
                            format!("{p:?} overlaps {q:?} of {}", other.key),
                        );
                    }
                }
            }
        }
    }
    let default_idx = match default {
        Some(d) => match routes.iter().position(|r| r.mount == d) {
            Some(i) => i,
            None => {
                errs.push(
                    t.key("default"),
                    format!(
                        "{d:?} is not a mount of this project (mounts: {})",
                        routes
                            .iter()
                            .map(|r| r.mount.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                0
            }
        },
        None => 0,
    };
    t.finish(errs);
    if !name_ok || routes.is_empty() {
        return None;
    }
    Some(Project {
        name: name?.to_string(),
        chat,
        certs,
        default: default_idx,
        routes,
    })
}

fn read_route(mut t: Table<'_>, listen: &Listen, errs: &mut Errors) -> Option<Route> {
    let key = t.key("");
    let key = key.trim_end_matches('.').to_string();
    let mount = t.str(errs, "mount");
    let mount_ok = match mount {
        Some(m) => match check_label(m) {
            Ok(()) => true,
            Err(e) => {
                errs.push(t.key("mount"), e);
                false
            }
        },
        None => {
            if !t.has("mount") {
                errs.push(
                    t.key("mount"),
                    "every route needs a mount (the path segment, e.g. \"forge\")",
                );
            }
            false
        }
    };
    let app = match t.str(errs, "app") {
        None => None,
        Some(a) => match App::parse(a) {
            Some(app) => Some(app),
            None => {
                errs.push(
                    t.key("app"),
                    format!(
                        "{a:?} is not a known app: {}",
                        App::ALL.map(App::name).join(", ")
                    ),
                );
                None
            }
        },
    };
    let preset = app.map(App::preset);
    let upstream = t.str(errs, "upstream");
    let root = t.str(errs, "root");
    let target = match (upstream, root) {
        (Some("chat"), None) => RouteTarget::Chat,
        (Some("welcome"), None) => RouteTarget::Welcome,
        (Some(_), Some(_)) => {
            errs.push(
                t.key("root"),
                "a route has either an upstream or a root, not both",
            );
            RouteTarget::Unconfigured
        }
        (Some(u), None) => match Upstream::parse(u) {
            Ok(up) => {
                let own = [listen.https, listen.http, listen.admin];
                if let Some(addr) = up.socket_addr() {
                    if own.contains(&Some(addr)) {
                        errs.push(
                            t.key("upstream"),
                            format!("{addr} is the gateway's own listen address"),
                        );
                    }
                }
                RouteTarget::Upstream(up)
            }
            Err(e) => {
                errs.push(t.key("upstream"), e);
                RouteTarget::Unconfigured
            }
        },
        (None, Some("")) => {
            errs.push(t.key("root"), "must not be empty");
            RouteTarget::Unconfigured
        }
        (None, Some(r)) => RouteTarget::Static(PathBuf::from(r)),
        (None, None) => RouteTarget::Unconfigured,
    };
    let prefix = match t.str(errs, "prefix") {
        None if preset.as_ref().is_some_and(|p| p.prefix_keep) => PrefixMode::Keep,
        None | Some("strip") => PrefixMode::Strip,
        Some("keep") => PrefixMode::Keep,
        Some(other) => {
            errs.push(
                t.key("prefix"),
                format!("{other:?}: use \"strip\" or \"keep\""),
            );
            PrefixMode::Strip
        }
    };
    let timeout = t
        .parsed(errs, "timeout", parse_duration)
        .or(preset.as_ref().map(|p| p.timeout))
        .unwrap_or(Duration::from_secs(60));
    if timeout.is_zero() {
        errs.push(t.key("timeout"), "must be more than 0s");
    }
    let max_body = if t.has("max_body") {
        t.size(errs, "max_body")
    } else {
        preset.as_ref().and_then(|p| p.max_body)
    };
    let auth = auth::read_forward_auth(&mut t, errs);
    if target == RouteTarget::Chat && prefix == PrefixMode::Keep {
        errs.push(
            t.key("prefix"),
            "the chat is mounted with its prefix stripped; remove prefix = \"keep\"",
        );
    }
    let untrusted = t
        .bool(errs, "untrusted")
        .unwrap_or(mount == Some("staging"));
    let dotfiles = t.bool(errs, "dotfiles").unwrap_or(false);
    let mut root_paths = Vec::new();
    for (i, p) in t
        .strings(errs, "root_paths")
        .unwrap_or_else(|| {
            preset
                .as_ref()
                .map(|p| p.root_paths.to_vec())
                .unwrap_or_default()
        })
        .into_iter()
        .enumerate()
    {
        if !p.starts_with('/') || p == "/" || p.contains(['?', '#', ' ']) || p.contains("..") {
            errs.push(
                t.key(&format!("root_paths[{i}]")),
                format!("{p:?} must be a path prefix such as \"/v2/\" (not \"/\")"),
            );
        } else {
            root_paths.push(p.to_string());
        }
    }
    let mut auth_skip: Vec<AuthSkip> = match (app, &preset) {
        (Some(a), Some(p)) => p
            .skips
            .iter()
            .filter_map(|(rule, why)| {
                AuthSkip::parse(rule, format!("app = \"{}\": {why}", a.name())).ok()
            })
            .collect(),
        _ => Vec::new(),
    };
    let user_skips = t.strings(errs, "auth_skip").unwrap_or_default();
    if !user_skips.is_empty() && auth.is_none() {
        errs.push(
            t.key("auth_skip"),
            "only routes with auth = \"forward\" have a sign-in to skip",
        );
    }
    for (i, rule) in user_skips.into_iter().enumerate() {
        match AuthSkip::parse(rule, format!("auth_skip[{i}]")) {
            Ok(s) => auth_skip.push(s),
            Err(e) => errs.push(t.key(&format!("auth_skip[{i}]")), e),
        }
    }
    t.finish(errs);
    if !mount_ok {
        return None;
    }
    Some(Route {
        mount: mount?.to_string(),
        target,
        prefix,
        timeout,
        max_body,
        untrusted,
        root_paths,
        dotfiles,
        auth,
        app,
        auth_skip,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match Config::from_toml(text) {
            Ok(_) => panic!("expected errors for:\n{text}"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    const BASE: &str = "domain = \"example.test\"\n[[projects]]\nname = \"demo\"\n  [[projects.routes]]\n  mount = \"forge\"\n  upstream = \"http://127.0.0.1:3000\"\n";

    #[test]
    fn a_worker_floor_parses_and_names_its_mistakes() {
        let f = Config::floor_from_toml("").unwrap();
        assert_eq!(
            f.require,
            edge_sandbox::Layer::ALL.to_vec(),
            "every layer unless told"
        );
        assert_eq!(
            (f.memory, f.egress.as_ref(), f.writable.as_ref()),
            (None, None, None)
        );
        let f = Config::floor_from_toml(
            "require = [\"env\", \"landlock\"]\nmemory = \"1GiB\"\npids = 64\negress = [\"api.anthropic.com:443\"]\nwritable = [\"/srv/edge\"]\nreadable = [\"/srv/docs\"]\nhidden = [\"/srv/secrets\"]\n",
        )
        .unwrap();
        assert_eq!(f.require.len(), 2);
        assert_eq!((f.memory, f.pids), (Some(1 << 30), Some(64)));
        assert_eq!(f.writable, Some(vec![PathBuf::from("/srv/edge")]));
        assert_eq!(f.readable, Some(vec![PathBuf::from("/srv/docs")]));
        let e = Config::floor_from_toml(
            "require = [\"apparmor\"]\nmemory = \"lots\"\negress = [\"nohost\"]\nwritable = [\"srv\"]\nmax_memory = 1\n",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "require[0]",
            "memory",
            "egress[0]",
            "writable[0]",
            "max_memory: unknown key",
        ] {
            assert!(e.contains(key), "{key} in {e}");
        }
        assert!(Config::floor_from_toml("require = [")
            .unwrap_err()
            .to_string()
            .contains("not valid TOML"));
    }

    #[test]
    fn a_misspelled_kind_is_one_error_not_two() {
        let e = errors(&format!(
            "{BASE}[[outposts]]\nname = \"x\"\nkind = \"shh\"\nhost = \"h\"\nuser = \"u\"\n"
        ));
        assert_eq!(
            e,
            ["outposts[0].kind: \"shh\": use \"local\", \"ssh\", \"http\" or \"nomad\" (line 9, column 1)"]
        );
    }

    #[test]
    fn sandbox_profiles_and_outposts_parse_and_explain_mistakes() {
        let c = Config::from_toml(&format!(
            "{BASE}[sandbox.profiles.laptop]\nrequire = [\"env\", \"landlock\"]\ndisable = [\"cgroup\"]\nmemory = \"4GiB\"\negress = [\"api.anthropic.com:443\", \"*.example.org:*\"]\n\
             [[outposts]]\nname = \"here\"\nkind = \"local\"\ncapacity = 3\n\
             [[outposts]]\nname = \"b1\"\nkind = \"ssh\"\nhost = \"10.0.0.5\"\nuser = \"edge\"\nkey = \"/etc/edge/key\"\nhost_key = \"ssh-ed25519 AAAAC3Nza\"\n\
             [[outposts]]\nname = \"h1\"\nkind = \"http\"\nurl = \"https://10.0.0.6:7900/\"\nca = \"/etc/edge/ca.pem\"\nclient_cert = \"c.pem\"\nclient_key = \"k.pem\"\n\
             [[outposts]]\nname = \"cluster\"\nkind = \"nomad\"\naddress = \"http://nomad.internal:4646\"\n"
        ))
        .unwrap();
        let p = &c.sandbox_profiles["laptop"];
        assert_eq!(
            p.require,
            vec![edge_sandbox::Layer::Env, edge_sandbox::Layer::Landlock]
        );
        assert_eq!(p.memory, 4 << 30);
        assert!(c.sandbox_profiles.contains_key("default"));
        assert_eq!(c.outposts.len(), 4);
        assert_eq!(c.outposts[0].capacity, 3);
        assert!(matches!(
            &c.outposts[1].kind,
            OutpostKind::Ssh { port: 22, .. }
        ));
        assert_eq!(c.outposts[2].capacity, 1, "an http worker runs one attempt");
        assert!(
            matches!(&c.outposts[2].kind, OutpostKind::Http { url, client_cert: Some(_), .. } if url == "https://10.0.0.6:7900")
        );
        assert!(
            matches!(&c.outposts[3].kind, OutpostKind::Nomad { job, task, token_file: None, .. } if job == "edge-agent" && task == "agent")
        );

        let errs = errors(&format!(
            "{BASE}[sandbox.profiles.x]\nrequire = [\"landlock\", \"apparmor\"]\ndisable = [\"landlock\"]\nuid = 0\negress = [\"nohost\"]\nenv = [\"GITHUB_TOKEN\"]\nread_only = [\"rel/path\"]\n\
             [[outposts]]\nname = \"n\"\nkind = \"nomad\"\n[[outposts]]\nname = \"s\"\nkind = \"ssh\"\n[[outposts]]\nname = \"s\"\n\
             [[outposts]]\nname = \"h\"\nkind = \"http\"\nurl = \"http://10.0.0.7:7900/work\"\n[[outposts]]\nname = \"h2\"\nkind = \"http\"\nurl = \"http://10.0.0.7:7900\"\nclient_key = \"k.pem\"\n\
             [[outposts]]\nname = \"q\"\nkind = \"queue\"\n\
             [chat]\n[chat.agent]\nworkspace = \"/srv\"\nsandbox = \"missing\"\n"
        ));
        let all = errs.join("\n");
        for want in [
            "sandbox.profiles.x.require[1]",
            "is both required and disabled",
            "sandbox.profiles.x.uid",
            "sandbox.profiles.x.egress[0]",
            "sandbox.profiles.x.env[0]",
            "sandbox.profiles.x.read_only[0]",
            "outposts[0].address: a nomad outpost needs address",
            "outposts[3].url: \"http://10.0.0.7:7900/work\": use http://HOST:PORT",
            "outposts[4].client_cert: client_key needs its client_cert",
            "outposts[4].token_file: an http outpost needs token_file, or client_cert",
            "outposts[5].kind: \"queue\": use \"local\", \"ssh\", \"http\" or \"nomad\"",
            "outposts[1].host",
            "outposts[1].host_key",
            "outposts[2].name: \"s\" is used twice",
            "chat.agent.sandbox: no profile \"missing\"",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
    }

    #[test]
    fn embedded_default_parses() {
        let c = Config::embedded();
        assert_eq!(c.domain, "localhost");
        assert_eq!(c.projects[0].name, "demo");
        assert_eq!(c.projects[0].routes.len(), 4);
        assert!(
            c.projects[0].routes[2].untrusted,
            "staging is untrusted by default"
        );
        assert_eq!(c.projects[0].routes[0].target, RouteTarget::Unconfigured);
    }

    #[test]
    fn contract_example_parses() {
        let c = Config::from_toml(
            r#"
            domain = "example.test"
            routing = "subpath"
            state_dir = "state"
            [listen]
            https = "127.0.0.1:8443"
            http = "127.0.0.1:8080"
            admin = "127.0.0.1:9090"
            http_redirect = true
            [[projects]]
            name = "demo"
            default = "forge"
              [[projects.routes]]
              mount = "forge"
              upstream = "http://127.0.0.1:3000"
              prefix = "strip"
              [[projects.routes]]
              mount = "ci"
              upstream = "http://127.0.0.1:8000"
              prefix = "keep"
              [[projects.routes]]
              mount = "staging"
              root = "./site"
            "#,
        )
        .unwrap();
        let r = &c.projects[0].routes;
        assert_eq!(
            r[0].target,
            RouteTarget::Upstream(Upstream {
                scheme: Scheme::Http,
                authority: "127.0.0.1:3000".into()
            })
        );
        assert_eq!(r[1].prefix, PrefixMode::Keep);
        assert_eq!(r[2].target, RouteTarget::Static(PathBuf::from("./site")));
    }

    #[test]
    fn chat_and_forward_auth_problems_name_their_keys() {
        let errs = errors(
            r#"
            [listen]
            admin = "127.0.0.1:9090"
            [[projects]]
            name = "demo"
              [[projects.routes]]
              mount = "chat"
              upstream = "chat"
              prefix = "keep"
              auth = "forward"
              auth_url = "https://auth.test/check"
              auth_headers = ["X-User", "bad header"]
              [[projects.routes]]
              mount = "forge"
              upstream = "http://127.0.0.1:3000"
              auth_cache = "1s"
              [[projects.routes]]
              mount = "ci"
              auth = "maybe"
            [chat]
            listen = "127.0.0.1:9090"
            login = "forgejo"
            allowed_teams = ["justateam"]
            session_idle = "5s"
            colour = "red"
            "#,
        );
        let want = [
            "projects[0].routes[0].prefix: the chat is mounted with its prefix stripped",
            "projects[0].routes[0].auth_url: \"https://auth.test/check\"",
            "projects[0].routes[0].auth_headers[1]: \"bad header\" is not a header name",
            "projects[0].routes[1].auth_cache: only used with auth = \"forward\"",
            "projects[0].routes[2].auth: \"maybe\"",
            "chat.listen: 127.0.0.1:9090 is also a gateway listen address",
            "chat.provider_url: login = \"forgejo\" needs",
            "chat.client_id: login = \"forgejo\" needs",
            "chat.allowed_teams[0]: \"justateam\": write teams as \"org/team\"",
            "chat.session_idle: must be at least 1m",
            "chat.colour: unknown key",
        ];
        for w in want {
            assert!(
                errs.iter().any(|e| e.starts_with(w)),
                "missing {w:?} in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
        // An empty allowlist is refused rather than run open.
        let errs = errors(
            "[chat]\nlogin = \"oidc\"\nprovider_url = \"https://id.test\"\nclient_id = \"c\"\n[[projects]]\nname = \"p\"\n[[projects.routes]]\nmount = \"chat\"\nupstream = \"chat\"\n",
        );
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].starts_with("chat.allowed_users: nobody could sign in"),
            "{errs:#?}"
        );
    }

    #[test]
    fn certs_choose_an_issuer_per_edge_and_per_project() {
        let c = Config::from_toml(
            r#"
            [certs]
            issuer = "acme"
            [certs.acme]
            directory = "https://ca.test/dir"
            email = "ops@example.test"
            [[projects]]
            name = "demo"
            [[projects.routes]]
            mount = "forge"
            [[projects]]
            name = "own"
            [projects.certs]
            issuer = "files"
            cert_file = "own.pem"
            key_file = "own.key"
            [[projects.routes]]
            mount = "forge"
            [[projects]]
            name = "lab"
            [projects.certs]
            issuer = "local"
            [[projects.routes]]
            mount = "forge"
        "#,
        )
        .unwrap();
        assert_eq!(c.issuer_of(0), IssuerKind::Acme);
        assert_eq!(c.issuer_of(1), IssuerKind::Files);
        assert_eq!(c.issuer_of(2), IssuerKind::Local);
        let a = c.certs.acme.as_ref().unwrap();
        assert_eq!(a.challenge, ChallengeKind::Http01);
        assert_eq!(a.email.as_deref(), Some("ops@example.test"));
        // Every mistake at once, each with its key; dns-01 is refused as not implemented yet.
        let errs = errors(
            r#"
            [certs]
            issuer = "acmee"
            [certs.acme]
            directory = "ftp://ca.test"
            email = "nobody"
            eab_kid = "kid"
            challenge = "dns-01"
            colour = 1
            [[projects]]
            name = "demo"
            [projects.certs]
            issuer = "files"
            cert_file = "x.pem"
            [[projects.routes]]
            mount = "forge"
        "#,
        );
        for w in [
            "certs.issuer: \"acmee\"",
            "certs.acme.directory: \"ftp://ca.test\" is not an http(s) URL",
            "certs.acme.email: \"nobody\" is not an email address",
            "certs.acme.eab_hmac_file: External Account Binding needs both",
            "certs.acme.dns: challenge = \"dns-01\" needs [certs.acme.dns]",
            "certs.acme.colour: unknown key",
            "projects[0].certs.key_file: issuer = \"files\" needs cert_file and key_file",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(w)),
                "missing {w:?} in {errs:#?}"
            );
        }
        // DNS-01 through a command or RFC 2136.
        let dns = |table: &str| {
            format!("[certs]\nissuer = \"acme\"\n[certs.acme]\ndirectory = \"https://ca.test/d\"\n[certs.acme.dns]\n{table}\n[[projects]]\nname = \"p\"\n[[projects.routes]]\nmount = \"forge\"\n")
        };
        let c = Config::from_toml(&dns(
            "provider = \"command\"\ncommand = [\"txt.sh\", \"{action}\", \"{fqdn}\", \"{value}\"]\nnameservers = [\"192.0.2.53:53\"]\nresolver = \"192.0.2.1:5353\"\nzone = \"Example.test.\"\npropagation_timeout = \"30s\"",
        ))
        .unwrap();
        let a = c.certs.acme.unwrap();
        assert_eq!(
            a.challenge,
            ChallengeKind::Dns01,
            "a dns table means dns-01"
        );
        let d = a.dns.unwrap();
        assert_eq!(d.nameservers, ["192.0.2.53:53".parse().unwrap()]);
        assert_eq!(d.propagation_timeout, Duration::from_secs(30));
        assert_eq!(d.resolver, Some("192.0.2.1:5353".parse().unwrap()));
        assert!(
            matches!(&d.provider, DnsProvider::Command { zone: Some(z), .. } if z == "example.test")
        );
        for (table, want) in [
            (
                "provider = \"command\"\ncommand = [\"t\", \"{value}\"]\nresolver = \"dns.google\"",
                "certs.acme.dns.resolver: \"dns.google\" is not an IP address",
            ),
            (
                "provider = \"rfc2136\"\nserver = \"ns:53\"",
                "certs.acme.dns.server: \"ns:53\" is not an IP address",
            ),
            (
                "provider = \"rfc2136\"\nserver = \"192.0.2.1:53\"",
                "certs.acme.dns.zone: the zone",
            ),
            (
                "provider = \"rfc2136\"\nserver = \"192.0.2.1:53\"\nzone = \"example.test\"\ntsig_name = \"edge.\"\ntsig_algorithm = \"hmac-md5\"\ntsig_secret_file = \"k\"",
                "certs.acme.dns.tsig_algorithm: \"hmac-md5\"",
            ),
            (
                "provider = \"command\"\ncommand = [\"txt.sh\"]",
                "certs.acme.dns.command: the command never receives the record",
            ),
            (
                "provider = \"command\"\ncommand = [\"t\", \"{value}\"]\nnameservers = [\"ns1\"]",
                "certs.acme.dns.nameservers[0]: \"ns1\" is not an IP address",
            ),
            (
                "provider = \"route53\"",
                "certs.acme.dns.provider: \"route53\"",
            ),
        ] {
            let errs = errors(&dns(table));
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "missing {want:?} in {errs:#?}"
            );
        }
        let errs = errors("[certs]\nissuer = \"acme\"\n[[projects]]\nname = \"p\"\n[[projects.routes]]\nmount = \"forge\"\n");
        assert!(
            errs.iter()
                .any(|e| e.starts_with("certs.acme: issuer = \"acme\" needs")),
            "{errs:#?}"
        );
    }

    #[test]
    fn a_projects_chat_overrides_the_edge_wide_one() {
        let text = r#"
            [chat]
            login = "oidc"
            provider_url = "https://id.test"
            client_id = "c"
            allowed_users = ["alice"]
            [chat.agent]
            kind = "command"
            command = ["cat", "{message}"]
            workspace = "/srv/shared"
            [[projects]]
            name = "demo"
            [[projects.routes]]
            mount = "chat"
            upstream = "chat"
            [[projects]]
            name = "other"
            [[projects.routes]]
            mount = "chat"
            upstream = "chat"
            [projects.chat]
            allowed_users = ["bob"]
            [projects.chat.agent]
            kind = "command"
            command = ["cat", "{message}"]
            workspace = "/srv/other"
            [projects.chat.limits]
            requests_per_hour = 3
        "#;
        let c = Config::from_toml(text).unwrap();
        let demo = c.chat_of(0).unwrap();
        let other = c.chat_of(1).unwrap();
        assert_eq!(demo.allowed_users, ["alice"]);
        assert_eq!(other.allowed_users, ["bob"]);
        let ws = |c: &ChatConfig| c.agent.as_ref().unwrap().workspace.clone();
        assert_eq!(ws(&demo), PathBuf::from("/srv/shared"));
        assert_eq!(ws(&other), PathBuf::from("/srv/other"));
        assert_eq!(other.limits.requests_per_hour, 3);
        assert_eq!(other.login, LoginKind::Oidc, "sign-in stays edge-wide");
        assert_eq!(
            c.chat_site("https", &format!("other.{}:8443", c.domain))
                .map(|(p, _)| p),
            Some(1)
        );
        // Edge-wide keys, an empty allowlist and unknown keys are named.
        let errs = errors(
            &text
                .replace(
                    "requests_per_hour = 3",
                    "requests_per_hour = 3\n[projects.chat.extra]\n",
                )
                .replace(
                    "allowed_users = [\"bob\"]",
                    "allowed_users = []\nclient_id = \"x\"\ncolour = 1",
                ),
        );
        for w in [
            "projects[1].chat.client_id: is edge-wide",
            "projects[1].chat.colour: unknown key",
            "projects[1].chat.extra: unknown key",
            "projects[1].chat.allowed_users: nobody could sign in",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(w)),
                "missing {w:?} in {errs:#?}"
            );
        }
    }

    #[test]
    fn a_chat_route_brings_the_chat_with_its_defaults() {
        let c = Config::from_toml(
            "[[projects]]\nname = \"p\"\n[[projects.routes]]\nmount = \"chat\"\nupstream = \"chat\"\nauth = \"forward\"\n",
        )
        .unwrap();
        let chat = c.chat.as_ref().unwrap();
        assert_eq!(chat.login, LoginKind::Token);
        assert_eq!(chat.listen, "127.0.0.1:8787".parse().unwrap());
        let r = &c.projects[0].routes[0];
        assert_eq!(r.target, RouteTarget::Chat);
        let auth = r.auth.as_ref().unwrap();
        assert_eq!(auth.server, AuthServer::Chat);
        assert_eq!(auth.headers, ["x-forwarded-user"]);
        assert_eq!(auth.cache_ttl, Duration::from_secs(5));
        assert!(
            Config::embedded().chat.is_some(),
            "the embedded default runs the chat"
        );
        assert_eq!(
            c.chat_base("https", "p.localhost:8443").as_deref(),
            Some("https://p.localhost:8443/chat")
        );
        assert_eq!(c.chat_base("https", "other.localhost"), None);
        assert_eq!(
            c.chat_base("https", "x.p.localhost"),
            None,
            "subpath mode has no mount hosts"
        );
        let sub = Config::from_toml(
            "routing = \"subdomain\"\n[[projects]]\nname = \"p\"\n[[projects.routes]]\nmount = \"talk\"\nupstream = \"chat\"\n",
        )
        .unwrap();
        assert_eq!(
            sub.chat_base("https", "staging.p.localhost:8443")
                .as_deref(),
            Some("https://talk.p.localhost:8443")
        );
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_key() {
        let errs = errors(
            r#"
            domain = "Exa mple"
            routing = "sideways"
            colour = "blue"
            [listen]
            https = "nowhere"
            [[projects]]
            name = "demo"
            default = "wiki"
              [[projects.routes]]
              mount = "forge"
              upstream = "ftp://x"
              [[projects.routes]]
              mount = "ci"
              upstream = "http://127.0.0.1:8000/ci"
              timeout = "soon"
              prefix = "maybe"
              [[projects.routes]]
              mount = "forge"
              root = "site"
              upstream = "http://127.0.0.1:1"
            "#,
        );
        let want = [
            "domain:",
            "routing:",
            "colour: unknown key",
            "listen.https:",
            "projects[0].default: \"wiki\" is not a mount",
            "projects[0].routes[0].upstream: \"ftp://x\"",
            "projects[0].routes[1].upstream:",
            "projects[0].routes[1].timeout:",
            "projects[0].routes[1].prefix:",
            "projects[0].routes[2].root: a route has either",
            "projects[0].routes[2].mount: mount \"forge\" is defined twice",
        ];
        for w in want {
            assert!(
                errs.iter().any(|e| e.starts_with(w)),
                "missing {w:?} in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
    }

    #[test]
    fn upstream_forms() {
        let ok = [
            ("http://127.0.0.1:3000", Scheme::Http, "127.0.0.1:3000"),
            ("http://127.0.0.1:3000/", Scheme::Http, "127.0.0.1:3000"),
            ("h2c://[::1]:9000", Scheme::H2c, "[::1]:9000"),
            (
                "http://Forgejo.internal:3000",
                Scheme::Http,
                "forgejo.internal:3000",
            ),
        ];
        for (text, scheme, auth) in ok {
            let u = Upstream::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((u.scheme, u.authority.as_str()), (scheme, auth));
        }
        for bad in [
            "127.0.0.1:3000",
            "http://127.0.0.1",
            "http://127.0.0.1:0",
            "http://127.0.0.1:99999",
            "http://:80",
            "http://a@b:80",
            "https://x:443",
            "http://::1:80",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn upstream_pointing_at_the_gateway_itself_is_rejected() {
        let errs = errors(
            r#"
            [[projects]]
            name = "demo"
              [[projects.routes]]
              mount = "forge"
              upstream = "http://127.0.0.1:8443"
            "#,
        );
        assert_eq!(
            errs,
            ["projects[0].routes[0].upstream: 127.0.0.1:8443 is the gateway's own listen address (line 6, column 15)"]
        );
    }

    #[test]
    fn root_paths_may_not_shadow_mounts_or_overlap() {
        let errs = errors(
            r#"
            [[projects]]
            name = "demo"
              [[projects.routes]]
              mount = "forge"
              root_paths = ["/v2/", "/ci/x", "relative"]
              [[projects.routes]]
              mount = "ci"
              root_paths = ["/v2/blobs/"]
            "#,
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("projects[0].routes[0].root_paths[2]:")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.contains("lies under the mount /ci/")),
            "{errs:?}"
        );
        assert!(errs.iter().any(|e| e.contains("overlaps")), "{errs:?}");
    }

    #[test]
    fn listeners_are_checked() {
        let errs = errors(
            r#"
            [listen]
            https = ""
            http = "127.0.0.1:8080"
            admin = "127.0.0.1:8080"
            [[projects]]
            name = "demo"
              [[projects.routes]]
              mount = "forge"
            "#,
        );
        assert!(
            errs.iter().any(|e| e.starts_with("listen.http_redirect:")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("listen.admin: 127.0.0.1:8080 is also listen.http")),
            "{errs:?}"
        );
    }

    #[test]
    fn toml_syntax_errors_name_the_line() {
        let errs = errors("domain = \"x\"\n[listen\n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].contains("line 2"), "{errs:?}");
    }

    #[test]
    fn wrong_types_name_the_expected_type() {
        let errs = errors(
            r#"
            [listen]
            http_redirect = "yes"
            [[projects]]
            name = 7
              [[projects.routes]]
              mount = "forge"
            "#,
        );
        assert!(
            errs.contains(
                &"listen.http_redirect: expected true or false, found a string (line 3, column 13)"
                    .to_string()
            ),
            "{errs:?}"
        );
        assert!(
            errs.contains(
                &"projects[0].name: expected a string, found an integer (line 5, column 13)"
                    .to_string()
            ),
            "{errs:?}"
        );
    }
}
