//! Route resolution: `(scheme, host, request-target)` to a [`Decision`]. Paths are matched and
//! stripped on the raw bytes of the request target, never decoded, so `%2F` and `%25` reach the
//! upstream exactly as the client sent them.

use std::borrow::Cow;

use rustc_hash::FxHashMap;

use crate::config::{Config, PrefixMode, RoutingMode};

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Answer with a redirect (302 for `/`, which browsers must not cache; 308 otherwise, which
    /// keeps the method and body).
    Redirect { status: u16, location: String },
    /// Serve the request from `projects[project].routes[route]`; `path` is the request target the
    /// upstream sees (or, for static routes, the path looked up under the root).
    Route {
        project: usize,
        route: usize,
        path: &'a str,
    },
    /// Nothing is mounted there. `project` is known when the host named one, so the answer can
    /// list its mounts.
    NotFound { project: Option<usize> },
}

#[derive(Debug, Clone, Copy)]
enum HostTarget {
    /// `<project>.<domain>`
    Apex(usize),
    /// `<mount>.<project>.<domain>`
    Mount(usize, usize),
}

/// The routing table built from a [`Config`]: immutable, swapped whole on reload.
#[derive(Debug)]
pub struct RouteTable {
    config: Config,
    // Fx, not SipHash: the keys come from the config, so a client cannot flood one bucket, and
    // this lookup runs on every request.
    hosts: FxHashMap<String, HostTarget>,
}

/// Lower-cases a `Host` value and splits off its port and any trailing dot.
///
/// ```
/// use edge_routing::normalize_host;
/// assert_eq!(normalize_host("Demo.Example.TEST.:8443"), ("demo.example.test".into(), Some("8443")));
/// assert_eq!(normalize_host("[::1]:80"), ("[::1]".into(), Some("80")));
/// ```
pub fn normalize_host(raw: &str) -> (Cow<'_, str>, Option<&str>) {
    let (host, port) = if raw.starts_with('[') {
        match raw.find(']') {
            Some(end) => (&raw[..=end], raw[end + 1..].strip_prefix(':')),
            None => (raw, None),
        }
    } else {
        match raw.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (raw, None),
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        (Cow::Owned(host.to_ascii_lowercase()), port)
    } else {
        (Cow::Borrowed(host), port)
    }
}

/// Splits `/seg/rest?q` into `("seg", "/rest?q")`; the rest is empty for `/seg` and starts with
/// `?` for `/seg?q`.
fn first_segment(target: &str) -> Option<(&str, &str)> {
    let rest = target.strip_prefix('/')?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    Some((&rest[..end], &rest[end..]))
}

fn port_suffix(port: Option<&str>) -> String {
    port.map(|p| format!(":{p}")).unwrap_or_default()
}

impl RouteTable {
    pub fn new(config: Config) -> RouteTable {
        let mut hosts = FxHashMap::default();
        for (pi, p) in config.projects.iter().enumerate() {
            let apex = format!("{}.{}", p.name, config.domain);
            for (ri, r) in p.routes.iter().enumerate() {
                hosts.insert(format!("{}.{apex}", r.mount), HostTarget::Mount(pi, ri));
            }
            hosts.insert(apex, HostTarget::Apex(pi));
        }
        RouteTable { config, hosts }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The project a (normalized) host belongs to, if any: its apex or one of its mount hosts.
    pub fn project_of_host(&self, host: &str) -> Option<usize> {
        match self.hosts.get(host)? {
            HostTarget::Apex(p) | HostTarget::Mount(p, _) => Some(*p),
        }
    }

    /// Resolves one request. `scheme` is the public scheme (`https`, or `http` when plain HTTP
    /// serves the mounts), `host` the raw `Host` (or `:authority`), `target` the raw
    /// request-target (path and query).
    pub fn resolve<'a>(&self, scheme: &str, host: &str, target: &'a str) -> Decision<'a> {
        let (name, port) = normalize_host(host);
        let subdomain = self.config.routing == RoutingMode::Subdomain;
        match self.hosts.get(name.as_ref()) {
            Some(HostTarget::Apex(p)) if subdomain => {
                self.apex_redirect(*p, scheme, &name, port, target)
            }
            Some(HostTarget::Apex(p)) => self.subpath(*p, target),
            Some(HostTarget::Mount(p, r)) if subdomain => Decision::Route {
                project: *p,
                route: *r,
                path: target,
            },
            Some(HostTarget::Mount(p, r)) => {
                // Subpath is canonical: send the mount's host to its path on the apex.
                let apex = name.split_once('.').map(|(_, a)| a).unwrap_or(&name);
                let mount = &self.config.projects[*p].routes[*r].mount;
                let path = if target.starts_with('/') { target } else { "/" };
                Decision::Redirect {
                    status: 308,
                    location: format!("{scheme}://{apex}{}/{mount}{path}", port_suffix(port)),
                }
            }
            None => match self.config.fallback_project {
                Some(p) => self.subpath(p, target),
                None => Decision::NotFound { project: None },
            },
        }
    }

    fn subpath<'a>(&self, p: usize, target: &'a str) -> Decision<'a> {
        let project = &self.config.projects[p];
        let Some((seg, rest)) = first_segment(target) else {
            return Decision::NotFound { project: Some(p) };
        };
        if seg.is_empty() && (rest.is_empty() || rest.starts_with('?')) {
            return Decision::Redirect {
                status: 302,
                location: format!("/{}/{rest}", project.routes[project.default].mount),
            };
        }
        if let Some(ri) = project.routes.iter().position(|r| r.mount == seg) {
            if !rest.starts_with('/') {
                return Decision::Redirect {
                    status: 308,
                    location: format!("/{seg}/{rest}"),
                };
            }
            let path = match project.routes[ri].prefix {
                PrefixMode::Strip => rest,
                PrefixMode::Keep => target,
            };
            return Decision::Route {
                project: p,
                route: ri,
                path,
            };
        }
        for (ri, r) in project.routes.iter().enumerate() {
            if r.root_paths
                .iter()
                .any(|rp| target.starts_with(rp.as_str()))
            {
                return Decision::Route {
                    project: p,
                    route: ri,
                    path: target,
                };
            }
        }
        Decision::NotFound { project: Some(p) }
    }

    fn apex_redirect<'a>(
        &self,
        p: usize,
        scheme: &str,
        apex: &str,
        port: Option<&str>,
        target: &'a str,
    ) -> Decision<'a> {
        let project = &self.config.projects[p];
        let port = port_suffix(port);
        let Some((seg, rest)) = first_segment(target) else {
            return Decision::NotFound { project: Some(p) };
        };
        if seg.is_empty() && (rest.is_empty() || rest.starts_with('?')) {
            let mount = &project.routes[project.default].mount;
            return Decision::Redirect {
                status: 302,
                location: format!("{scheme}://{mount}.{apex}{port}/{rest}"),
            };
        }
        // Old subpath links keep working: /forge/x -> forge.<apex>/x.
        if project.routes.iter().any(|r| r.mount == seg) {
            let rest = if rest.starts_with('/') {
                rest.to_string()
            } else {
                format!("/{rest}")
            };
            return Decision::Redirect {
                status: 308,
                location: format!("{scheme}://{seg}.{apex}{port}{rest}"),
            };
        }
        for r in &project.routes {
            if r.root_paths
                .iter()
                .any(|rp| target.starts_with(rp.as_str()))
            {
                return Decision::Redirect {
                    status: 308,
                    location: format!("{scheme}://{}.{apex}{port}{target}", r.mount),
                };
            }
        }
        Decision::NotFound { project: Some(p) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
        domain = "example.test"
        [[projects]]
        name = "demo"
        default = "forge"
          [[projects.routes]]
          mount = "forge"
          upstream = "http://127.0.0.1:3000"
          root_paths = ["/v2/"]
          [[projects.routes]]
          mount = "ci"
          upstream = "http://127.0.0.1:8000"
          prefix = "keep"
          [[projects.routes]]
          mount = "staging"
          root = "site"
        [[projects]]
        name = "other"
          [[projects.routes]]
          mount = "wiki"
          upstream = "http://127.0.0.1:4000"
    "#;

    fn table(mode: &str, extra: &str) -> RouteTable {
        let text = format!("routing = \"{mode}\"\n{extra}\n{CONFIG}");
        RouteTable::new(Config::from_toml(&text).unwrap())
    }

    fn route(p: usize, r: usize, path: &str) -> Decision<'_> {
        Decision::Route {
            project: p,
            route: r,
            path,
        }
    }

    fn redirect(status: u16, location: &str) -> Decision<'static> {
        Decision::Redirect {
            status,
            location: location.to_string(),
        }
    }

    #[test]
    fn subpath_mode_table() {
        let t = table("subpath", "");
        let h = "demo.example.test";
        let cases: &[(&str, &str, Decision<'_>)] = &[
            (h, "/", redirect(302, "/forge/")),
            (h, "/?x=1", redirect(302, "/forge/?x=1")),
            (h, "/forge", redirect(308, "/forge/")),
            (h, "/forge?a=b&c", redirect(308, "/forge/?a=b&c")),
            (h, "/forge/", route(0, 0, "/")),
            (h, "/forge/x?y", route(0, 0, "/x?y")),
            (
                h,
                "/forge/a%2Fb/%25zz?q=%2F",
                route(0, 0, "/a%2Fb/%25zz?q=%2F"),
            ),
            (h, "/forge/..%2F..%2Fetc", route(0, 0, "/..%2F..%2Fetc")),
            (h, "/forge//double", route(0, 0, "//double")),
            (h, "/ci/x", route(0, 1, "/ci/x")),
            (h, "/ci/", route(0, 1, "/ci/")),
            (h, "/staging/a/b.html", route(0, 2, "/a/b.html")),
            (h, "/v2/", route(0, 0, "/v2/")),
            (
                h,
                "/v2/library/x/manifests/1",
                route(0, 0, "/v2/library/x/manifests/1"),
            ),
            (h, "/v2", Decision::NotFound { project: Some(0) }),
            (h, "/assets/app.js", Decision::NotFound { project: Some(0) }),
            (h, "/forgery/x", Decision::NotFound { project: Some(0) }),
            (h, "/Forge/x", Decision::NotFound { project: Some(0) }),
            (h, "/%66orge/x", Decision::NotFound { project: Some(0) }),
            (h, "*", Decision::NotFound { project: Some(0) }),
            ("DEMO.Example.Test.:8443", "/forge/x", route(0, 0, "/x")),
            ("other.example.test", "/", redirect(302, "/wiki/")),
            (
                "other.example.test",
                "/forge/x",
                Decision::NotFound { project: Some(1) },
            ),
            (
                "nobody.example.test",
                "/forge/x",
                Decision::NotFound { project: None },
            ),
            (
                "example.test",
                "/forge/x",
                Decision::NotFound { project: None },
            ),
            (
                "127.0.0.1:8443",
                "/forge/x",
                Decision::NotFound { project: None },
            ),
            ("evil.com", "/", Decision::NotFound { project: None }),
            // The subdomain form redirects to the canonical subpath form.
            (
                "ci.demo.example.test:8443",
                "/ci/x?y",
                redirect(308, "https://demo.example.test:8443/ci/ci/x?y"),
            ),
            (
                "forge.demo.example.test",
                "/x?y",
                redirect(308, "https://demo.example.test/forge/x?y"),
            ),
        ];
        for (host, target, want) in cases {
            assert_eq!(&t.resolve("https", host, target), want, "{host} {target}");
        }
    }

    #[test]
    fn subdomain_mode_table() {
        let t = table("subdomain", "");
        let cases: &[(&str, &str, Decision<'_>)] = &[
            ("forge.demo.example.test", "/x?y", route(0, 0, "/x?y")),
            ("forge.demo.example.test", "/", route(0, 0, "/")),
            ("forge.demo.example.test", "/a%2Fb", route(0, 0, "/a%2Fb")),
            ("ci.demo.example.test", "/api/x", route(0, 1, "/api/x")),
            (
                "staging.demo.example.test:8443",
                "/i.html",
                route(0, 2, "/i.html"),
            ),
            (
                "demo.example.test",
                "/",
                redirect(302, "https://forge.demo.example.test/"),
            ),
            (
                "demo.example.test:8443",
                "/?q",
                redirect(302, "https://forge.demo.example.test:8443/?q"),
            ),
            (
                "demo.example.test",
                "/ci/x?y",
                redirect(308, "https://ci.demo.example.test/x?y"),
            ),
            (
                "demo.example.test",
                "/ci",
                redirect(308, "https://ci.demo.example.test/"),
            ),
            (
                "demo.example.test",
                "/v2/x",
                redirect(308, "https://forge.demo.example.test/v2/x"),
            ),
            (
                "demo.example.test",
                "/nothing",
                Decision::NotFound { project: Some(0) },
            ),
            ("wiki.other.example.test", "/p", route(1, 0, "/p")),
            (
                "forge.other.example.test",
                "/p",
                Decision::NotFound { project: None },
            ),
            (
                "x.forge.demo.example.test",
                "/p",
                Decision::NotFound { project: None },
            ),
        ];
        for (host, target, want) in cases {
            assert_eq!(&t.resolve("https", host, target), want, "{host} {target}");
        }
    }

    #[test]
    fn fallback_project_serves_unknown_hosts_in_subpath_form() {
        let t = table("subpath", "fallback_project = \"demo\"");
        assert_eq!(
            t.resolve("http", "127.0.0.1:8080", "/forge/x"),
            route(0, 0, "/x")
        );
        assert_eq!(
            t.resolve("http", "other.example.test", "/wiki/x"),
            route(1, 0, "/x")
        );
        let t = table("subdomain", "fallback_project = \"demo\"");
        assert_eq!(t.resolve("http", "10.0.0.1", "/ci/x"), route(0, 1, "/ci/x"));
    }

    #[test]
    fn project_of_host_covers_apex_and_mount_hosts() {
        let t = table("subdomain", "");
        assert_eq!(t.project_of_host("demo.example.test"), Some(0));
        assert_eq!(t.project_of_host("ci.demo.example.test"), Some(0));
        assert_eq!(t.project_of_host("wiki.other.example.test"), Some(1));
        assert_eq!(t.project_of_host("example.test"), None);
    }
}
