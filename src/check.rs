//! What `edge config check` looks at beyond the file itself: what the config names on this
//! host (static roots, the agent's workspace and program, as a run would find them).

use std::path::Path;

use edge_routing::{AgentKind, Config, ConfigError, RouteTarget};
use edge_sandbox::Layer;

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
    if let (true, Some(f)) = (config.log.access, &config.log.access_file) {
        // Where `edge up` will append: an existing file it can write, or a directory it can
        // create the file in. Nothing is created here.
        let path = base.join(f);
        let problem = match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => Some(format!("{} is a directory", path.display())),
            Ok(m) if m.permissions().readonly() => Some(format!("{} is read-only", path.display())),
            Ok(_) => None,
            Err(_) => match path.parent().map(std::fs::metadata) {
                Some(Ok(d)) if d.is_dir() => None,
                _ => Some(format!(
                    "{}: its directory does not exist (a relative path is taken from the config file's directory)",
                    path.display()
                )),
            },
        };
        if let Some(m) = problem {
            push("log.access_file".into(), m);
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
    if edge_sandbox::helper::resolve(&program, path.as_deref()).is_none() {
        push(
            key.into(),
            format!(
                "{program:?} is not an executable file on PATH ({}): give its full path, or install it where runs find it (npm -g puts programs in /usr/local/bin)",
                path.as_deref().unwrap_or("/usr/local/bin:/usr/bin:/bin")
            ),
        );
        return out;
    }
    let default = edge_sandbox::Profile::default_named(&agent.sandbox);
    let profile = config
        .sandbox_profiles
        .get(&agent.sandbox)
        .unwrap_or(&default);
    let namespaces = profile.enabled(Layer::Namespaces);
    let closure = match edge_sandbox::program::closure(&program, path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            push(key.into(), format!("{program:?}: {e}"));
            return out;
        }
    };
    let shown = if closure.real != closure.program {
        format!(
            "{} (→ {})",
            closure.program.display(),
            closure.real.display()
        )
    } else {
        closure.program.display().to_string()
    };
    // What runs see of it: with the namespaces layer, what it empties is bound back (read-only)
    // unless the profile hides it; without, the run's uid must reach it by itself.
    let hidden = edge_sandbox::program::hidden_paths(profile);
    for t in closure
        .trees
        .iter()
        .chain(closure.links.iter().map(|(l, _)| l))
    {
        if let Some(h) = hidden.iter().find(|h| t.starts_with(h)) {
            push(
                key.into(),
                format!(
                    "{program:?} is {shown}; runs need {}, which sandbox profile {:?} hides ({}): install the agent elsewhere, or take that path out of the profile's hidden list",
                    t.display(),
                    agent.sandbox,
                    h.display()
                ),
            );
            return out;
        }
    }
    let uid = profile.uid;
    let reaches = |p: &Path| -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).is_ok_and(|m| {
            let bits = if m.uid() == uid { 0o100 } else { 0o001 };
            m.mode() & bits != 0
        })
    };
    if !reaches(&closure.real) {
        push(
            key.into(),
            format!(
                "{program:?} is {shown}, which uid {uid} (the runs' user) may not execute: `chmod o+rx {}`",
                closure.real.display()
            ),
        );
    }
    if !namespaces {
        // Every directory on the way must let the run's uid through.
        if let Some(d) = closure.real.ancestors().skip(1).find(|d| !reaches(d)) {
            push(
                key.into(),
                format!(
                    "{program:?} is {shown}, under {}, which uid {uid} (the runs' user) cannot enter, and profile {:?} has no namespaces layer to bring it back: install the agent under /usr/local or /opt, or enable the namespaces layer",
                    d.display(),
                    agent.sandbox
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
