//! App presets (`app = "forgejo"` on a route) and `auth_skip` rules: what users get wrong when
//! they put a known app behind a subpath and a sign-in, set for them.

use std::time::Duration;

/// A known app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    Forgejo,
    Woodpecker,
    Jupyter,
    Grafana,
}

/// What a preset sets (each only where the route does not say otherwise).
#[derive(Debug, Clone)]
pub struct Preset {
    pub prefix_keep: bool,
    pub timeout: Duration,
    /// `None`: unlimited.
    pub max_body: Option<u64>,
    pub root_paths: &'static [&'static str],
    /// `METHODS PATTERN` rules, and why each request carries its own credentials.
    pub skips: &'static [(&'static str, &'static str)],
}

impl App {
    pub const ALL: [App; 4] = [App::Forgejo, App::Woodpecker, App::Jupyter, App::Grafana];

    pub fn parse(s: &str) -> Option<App> {
        App::ALL.into_iter().find(|a| a.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            App::Forgejo => "forgejo",
            App::Woodpecker => "woodpecker",
            App::Jupyter => "jupyter",
            App::Grafana => "grafana",
        }
    }

    pub fn preset(self) -> Preset {
        match self {
            // Forgejo (and Gitea) with ROOT_URL ending in the mount: it is asked for `/x`.
            // Git pushes and LFS objects are large and slow; the container registry must be at
            // the host's root (`/v2/`).
            App::Forgejo => Preset {
                prefix_keep: false,
                timeout: Duration::from_secs(600),
                max_body: None,
                root_paths: &["/v2/"],
                skips: &[
                    (
                        "GET /*/*/info/refs",
                        "git over HTTP: Forgejo asks git clients for their own credentials",
                    ),
                    ("POST /*/*/git-upload-pack", "git over HTTP (fetch)"),
                    ("POST /*/*/git-receive-pack", "git over HTTP (push)"),
                    (
                        "* /*/*/info/lfs/**",
                        "Git LFS: the client authenticates to Forgejo",
                    ),
                    (
                        "* /api/**",
                        "Forgejo's API: access tokens, checked by Forgejo",
                    ),
                    (
                        "* /v2/**",
                        "the container registry: docker login against Forgejo",
                    ),
                ],
            },
            // Woodpecker with WOODPECKER_HOST ending in the mount: it is asked for `/ci/x`.
            App::Woodpecker => Preset {
                prefix_keep: true,
                timeout: Duration::from_secs(120),
                max_body: Some(64 << 20),
                root_paths: &[],
                skips: &[
                    (
                        "POST /api/hook",
                        "the forge's webhooks, signed for Woodpecker",
                    ),
                    (
                        "* /api/**",
                        "Woodpecker's API: personal tokens, checked by Woodpecker",
                    ),
                ],
            },
            // Jupyter Server with base_url ending in the mount: it is asked for `/lab/x`.
            App::Jupyter => Preset {
                prefix_keep: true,
                timeout: Duration::from_secs(600),
                max_body: Some(512 << 20),
                root_paths: &[],
                skips: &[],
            },
            // Grafana with root_url ending in the mount and serve_from_sub_path = true.
            App::Grafana => Preset {
                prefix_keep: true,
                timeout: Duration::from_secs(300),
                max_body: Some(64 << 20),
                root_paths: &[],
                skips: &[(
                    "* /api/**",
                    "Grafana's HTTP API: service-account tokens, checked by Grafana",
                )],
            },
        }
    }

    /// The app's own base-URL setting for a public URL (`https://demo.example.com/forge/`), as
    /// `(setting, value)` pairs to give the app.
    pub fn settings(self, public: &str, mount_path: &str) -> Vec<(&'static str, String)> {
        let trimmed = public.trim_end_matches('/');
        match self {
            App::Forgejo => vec![(
                "ROOT_URL ([server] in app.ini; FORGEJO__server__ROOT_URL)",
                format!("{trimmed}/"),
            )],
            // Woodpecker takes its root path from WOODPECKER_HOST's path (2.x dropped
            // WOODPECKER_ROOT_PATH; setting both broke its OAuth callback).
            App::Woodpecker => vec![("WOODPECKER_HOST", trimmed.to_string())],
            // Jupyter refuses a Host that is not a local name unless told: edge sends the
            // public one.
            App::Jupyter => vec![
                (
                    "--ServerApp.base_url (c.ServerApp.base_url)",
                    mount_path.to_string(),
                ),
                (
                    "--ServerApp.allow_remote_access (c.ServerApp.allow_remote_access)",
                    "True".to_string(),
                ),
            ],
            App::Grafana => vec![
                (
                    "GF_SERVER_ROOT_URL ([server] root_url)",
                    format!("{trimmed}/"),
                ),
                (
                    "GF_SERVER_SERVE_FROM_SUB_PATH ([server] serve_from_sub_path)",
                    (mount_path != "/").to_string(),
                ),
            ],
        }
    }
}

/// One request class that skips the route's forward-auth: its methods (`None`: any) and a
/// path pattern where `*` is any run of characters but `/`, and `**` any run at all. Matched
/// against the path inside the mount (`/owner/repo/info/refs` for `/forge/owner/repo/...`), or
/// the whole path for a root path (`/v2/...`); the query is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSkip {
    pub methods: Option<Vec<String>>,
    pub pattern: String,
    /// Where the rule comes from (`app "forgejo": git over HTTP`, `auth_skip[0]`).
    pub source: String,
}

impl AuthSkip {
    /// `"GET,POST /pattern"` or `"* /pattern"`.
    pub fn parse(rule: &str, source: String) -> Result<AuthSkip, String> {
        let (m, p) = rule
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("{rule:?}: write \"METHODS /path/pattern\", e.g. \"POST /api/hook\" or \"* /api/**\""))?;
        let p = p.trim();
        if !p.starts_with('/') || p.contains(['?', '#', ' ', '%']) {
            return Err(format!(
                "{rule:?}: the pattern must be a path starting with / (no query, no %-escapes)"
            ));
        }
        let methods = if m == "*" {
            None
        } else {
            let ms: Vec<String> = m
                .split(',')
                .map(|x| x.trim().to_ascii_uppercase())
                .collect();
            if ms
                .iter()
                .any(|x| x.is_empty() || !x.bytes().all(|b| b.is_ascii_uppercase()))
            {
                return Err(format!(
                    "{rule:?}: methods are names such as GET,POST, or *"
                ));
            }
            Some(ms)
        };
        Ok(AuthSkip {
            methods,
            pattern: p.to_string(),
            source,
        })
    }

    /// Whether a request (`method`, raw `path` inside the mount) is one this rule lets through.
    /// Paths with dot segments or escaped `/`, `.` or `\` never match: the app could read them as
    /// another path than the one matched.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        let path = path.split('?').next().unwrap_or("");
        if let Some(ms) = &self.methods {
            if !ms.iter().any(|m| m == method) {
                return false;
            }
        }
        let lower = path.to_ascii_lowercase();
        if ["%2f", "%2e", "%5c", "\\"]
            .iter()
            .any(|x| lower.contains(x))
            || path.split('/').any(|s| s == "." || s == "..")
        {
            return false;
        }
        glob(self.pattern.as_bytes(), path.as_bytes())
    }
}

/// `*` matches within a segment, `**` across segments.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        [b'*', rest @ ..] => {
            let seg = s.iter().position(|b| *b == b'/').unwrap_or(s.len());
            (0..=seg).any(|i| glob(rest, &s[i..]))
        }
        [c, rest @ ..] => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(r: &str) -> AuthSkip {
        AuthSkip::parse(r, "test".into()).unwrap()
    }

    #[test]
    fn patterns_match_segments_and_refuse_tricks() {
        let refs = rule("GET /*/*/info/refs");
        assert!(refs.matches("GET", "/alice/app.git/info/refs?service=git-upload-pack"));
        assert!(refs.matches("GET", "/alice/app/info/refs"));
        assert!(!refs.matches("POST", "/alice/app.git/info/refs"));
        assert!(!refs.matches("GET", "/alice/info/refs"));
        assert!(!refs.matches("GET", "/a/b/c/info/refs"));
        let api = rule("* /api/**");
        assert!(api.matches("DELETE", "/api/v1/repos/a/b"));
        assert!(!api.matches("GET", "/apix/v1"));
        for trick in [
            "/api/../admin",
            "/api/%2e%2e/admin",
            "/api/..%2Fadmin",
            "/api/.%2e/admin",
            "/api/x\\..\\admin",
            "/api/./x",
        ] {
            assert!(!api.matches("GET", trick), "{trick}");
        }
        let hook = rule("post /api/hook");
        assert!(hook.matches("POST", "/api/hook"));
        assert!(!hook.matches("POST", "/api/hook/x"));
    }

    #[test]
    fn bad_rules_say_how_to_write_them() {
        for (r, says) in [
            ("/api/**", "METHODS /path/pattern"),
            ("GET api/**", "must be a path"),
            ("GET /a%2Fb", "no %-escapes"),
            ("G-T /a", "methods are names"),
        ] {
            let e = AuthSkip::parse(r, "x".into()).unwrap_err();
            assert!(e.contains(says), "{r}: {e}");
        }
    }
}
