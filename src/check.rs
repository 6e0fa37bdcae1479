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
            if std::fs::metadata(&ws).is_ok_and(|m| m.permissions().readonly()) {
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
            Some(p) => ("chat.agent.argv", p.clone()),
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
