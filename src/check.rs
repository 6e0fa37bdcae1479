//! What `edge config check` looks at beyond the file itself: what the config names on this
//! host (static roots, the agent's workspace and program, as a run would find them).

use std::path::{Path, PathBuf};

use edge_routing::{AgentKind, Config, ConfigError, RouteTarget};
use edge_sandbox::Layer;

/// Paths the sandbox's namespaces layer covers with empty directories inside a run.
const HIDDEN_IN_RUNS: [&str; 4] = ["/home", "/root", "/tmp", "/run"];

/// Problems with what the config names on this host, each with its key. Relative paths are
/// taken from `base` (the config file's directory), as `edge up` takes them.
pub fn on_disk(config: &Config, base: &Path) -> Vec<ConfigError> {
    let mut out = Vec::new();
    let mut push = |key: String, message: String| out.push(ConfigError { key, message });
    for p in &config.projects {
        for r in &p.routes {
            if let RouteTarget::Static(root) = &r.target {
                let path = base.join(root);
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => push(
                        format!("{}.root", r.key),
                        format!("{} is not a directory", path.display()),
                    ),
                    Err(e) => push(
                        format!("{}.root", r.key),
                        format!(
                            "{}: {e} (a relative root is taken from the config file's directory)",
                            path.display()
                        ),
                    ),
                }
            }
        }
    }
    let Some(agent) = config.chat.as_ref().and_then(|c| c.agent.as_ref()) else {
        return out;
    };
    let ws = base.join(&agent.workspace);
    match std::fs::metadata(&ws) {
        Ok(m) if m.is_dir() => {
            if m.permissions().readonly() {
                push(
                    "chat.agent.workspace".into(),
                    format!(
                        "{} is read-only: the agent's runs write there",
                        ws.display()
                    ),
                );
            }
        }
        Ok(_) => push(
            "chat.agent.workspace".into(),
            format!("{} is not a directory", ws.display()),
        ),
        Err(e) => push(
            "chat.agent.workspace".into(),
            format!("{}: {e}", ws.display()),
        ),
    }
    let (key, program) = match &agent.kind {
        AgentKind::Claude { command } => ("chat.agent.command", command.clone()),
        AgentKind::Command { argv } => match argv.first() {
            Some(p) => ("chat.agent.command", p.clone()),
            None => return out,
        },
    };
    // Runs get edge's own PATH (or the sandbox's default when it has none).
    let path = std::env::var("PATH").ok();
    let Some(found) = edge_sandbox::helper::resolve(&program, path.as_deref()) else {
        push(
            key.into(),
            format!(
                "{program:?} is not an executable file on PATH ({}): give its full path, or install it where runs find it (npm -g puts programs in /usr/local/bin)",
                path.as_deref().unwrap_or("/usr/local/bin:/usr/bin:/bin")
            ),
        );
        return out;
    };
    let real: PathBuf = std::fs::canonicalize(&found).unwrap_or(found.clone());
    let namespaces = config
        .sandbox_profiles
        .get(&agent.sandbox)
        .is_none_or(|p| p.requires(Layer::Namespaces));
    if let Some(h) = HIDDEN_IN_RUNS.iter().find(|h| real.starts_with(h)) {
        if namespaces {
            push(
                key.into(),
                format!(
                    "{program:?} is {}{}, under {h}, which the sandbox empties inside every run (its namespaces layer), so runs cannot start it: install it under /usr/local or /opt (Claude Code: `npm install -g @anthropic-ai/claude-code`), or give that path",
                    found.display(),
                    if real != found {
                        format!(" (→ {})", real.display())
                    } else {
                        String::new()
                    }
                ),
            );
        }
    }
    out
}

/// `edge config check --explain`: for each route, what its app preset set and every request
/// class that skips its sign-in, with where the rule comes from.
pub fn explain(config: &Config) -> String {
    let mut out = String::new();
    for p in &config.projects {
        for r in &p.routes {
            let head = format!("{} /{}/", r.key, r.mount);
            let prefix = match r.prefix {
                edge_routing::PrefixMode::Strip => "strip",
                edge_routing::PrefixMode::Keep => "keep",
            };
            let body = r
                .max_body
                .map_or("unlimited".to_string(), |b| format!("{b} bytes"));
            let settings = format!(
                "prefix = \"{prefix}\", timeout = {}s, max_body = {body}, root_paths = {:?}",
                r.timeout.as_secs(),
                r.root_paths
            );
            match r.app {
                Some(a) => out.push_str(&format!(
                    "{head}: app = \"{}\" ({settings}; keys the route sets itself win)\n",
                    a.name()
                )),
                None => out.push_str(&format!("{head}: {settings}\n")),
            }
            match (&r.auth, r.auth_skip.is_empty()) {
                (None, _) => out.push_str("  no sign-in (auth = \"none\")\n"),
                (Some(_), true) => {
                    out.push_str(&format!("{head}: every request asks the sign-in\n"))
                }
                (Some(_), false) => {
                    for s in &r.auth_skip {
                        let methods = s.methods.as_ref().map_or("*".to_string(), |m| m.join(","));
                        out.push_str(&format!(
                            "  skips the sign-in: {methods} {} ({})\n",
                            s.pattern, s.source
                        ));
                    }
                }
            }
        }
    }
    out
}

/// `edge apps env`: for each route with an `app`, the settings to give the app for where edge
/// serves it now (routing mode, host, port), and the sign-in redirect URIs to register.
pub fn apps_env(config: &Config) -> String {
    let mut out = String::new();
    for (pi, p) in config.projects.iter().enumerate() {
        for (ri, r) in p.routes.iter().enumerate() {
            let url = config.mount_url(pi, ri);
            let Some(app) = r.app else {
                continue;
            };
            let path = match config.routing {
                edge_routing::RoutingMode::Subpath => format!("/{}/", r.mount),
                edge_routing::RoutingMode::Subdomain => "/".to_string(),
            };
            out.push_str(&format!("# {} {url} ({}, {})\n", p.name, app.name(), r.key));
            for (setting, value) in app.settings(&url, &path) {
                out.push_str(&format!("{setting} = {value}\n"));
            }
            if app == edge_routing::App::Woodpecker {
                out.push_str(&format!(
                    "OAuth redirect URI to register in the forge for Woodpecker = {}/authorize\n",
                    url.trim_end_matches('/')
                ));
            }
            out.push('\n');
        }
        if let Some(ri) = p.routes.iter().position(|r| r.target == RouteTarget::Chat) {
            let login = config.chat.as_ref().map(|c| c.login);
            if matches!(
                login,
                Some(edge_routing::LoginKind::Forgejo | edge_routing::LoginKind::Oidc)
            ) {
                out.push_str(&format!(
                    "# {} chat sign-in\nOAuth redirect URI to register at the provider = {}oauth/callback\n\n",
                    p.name,
                    config.mount_url(pi, ri)
                ));
            }
        }
    }
    if out.is_empty() {
        out.push_str("no route names an app (app = \"forgejo\", \"woodpecker\", \"jupyter\" or \"grafana\")\n");
    }
    out
}
