//! What one config version needs at request time: the route table plus, per route, the pieces
//! worked out once (the upstream's authority, the canonical static root, metric handles). A
//! reload builds a new `Runtime` and swaps it in whole; requests in flight keep the old one.

use std::path::Path;
use std::sync::Arc;

use edge_routing::{Config, ConfigError, RouteTable, RouteTarget};
use http::uri::Authority;
use http::HeaderValue;

use crate::forward_auth::AuthRt;
use crate::metrics::{Metrics, RouteMetrics};
use crate::pages::esc;

#[derive(Debug)]
pub(crate) enum Target {
    Unconfigured,
    /// edge's welcome page (`upstream = "welcome"`).
    Welcome,
    /// `tunnel`: the authority names a registered project's mount, dialled through its
    /// session (see `crate::tunnel`).
    Upstream {
        authority: Authority,
        h2c: bool,
        tunnel: bool,
    },
    Static(crate::static_files::StaticRoot),
}

#[derive(Debug)]
pub(crate) struct RouteRt {
    pub metrics: Arc<RouteMetrics>,
    pub target: Target,
    /// `/forge`, sent as `X-Forwarded-Prefix` when the prefix is stripped.
    pub prefix: Option<HeaderValue>,
    pub auth: Option<Arc<AuthRt>>,
    /// The chat mount (the only one that receives the chat's session cookie).
    pub chat: bool,
}

#[derive(Debug)]
pub struct Runtime {
    pub(crate) table: RouteTable,
    pub(crate) routes: Vec<Vec<RouteRt>>,
    /// Per project: requests that matched no mount (redirects, 404s).
    pub(crate) project_metrics: Vec<Arc<RouteMetrics>>,
    /// Requests for hosts that name no project.
    pub(crate) unrouted: Arc<RouteMetrics>,
    /// Per project: the HTML list of its mounts, for 404 pages.
    pub(crate) mount_lists: Vec<String>,
    /// `[log] access`: the running access log (kept across reloads that do not change it).
    pub(crate) access: Option<Arc<crate::access_log::AccessLog>>,
}

impl Runtime {
    /// Builds the runtime for `config`; relative static roots are resolved against `base_dir`
    /// and must exist.
    pub fn build(
        config: Config,
        base_dir: &Path,
        metrics: &Metrics,
    ) -> Result<Runtime, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut routes = Vec::new();
        let mut mount_lists = Vec::new();
        for p in &config.projects {
            let mut rts = Vec::new();
            let mut list = String::from("<ul>");
            for r in &p.routes {
                list.push_str(&format!(
                    "<li><a href=\"/{m}/\">/{m}/</a></li>",
                    m = esc(&r.mount)
                ));
                let chat_listen = config.chat.as_ref().map(|c| c.listen);
                let target = match &r.target {
                    RouteTarget::Unconfigured => Target::Unconfigured,
                    RouteTarget::Welcome => Target::Welcome,
                    RouteTarget::Chat => match chat_listen {
                        Some(a) => Target::Upstream {
                            authority: a
                                .to_string()
                                .parse()
                                .expect("a socket address is an authority"),
                            h2c: false,
                            tunnel: false,
                        },
                        None => Target::Unconfigured,
                    },
                    RouteTarget::Upstream(u) => match u.authority.parse::<Authority>() {
                        Ok(authority) => Target::Upstream {
                            authority,
                            h2c: u.scheme == edge_routing::Scheme::H2c,
                            tunnel: false,
                        },
                        Err(e) => {
                            errors.push(ConfigError {
                                key: format!("{}.upstream", r.key),
                                message: format!("{:?}: {e}", u.authority),
                            });
                            Target::Unconfigured
                        }
                    },
                    RouteTarget::Tunnel => match crate::tunnel::authority(&p.name, &r.mount) {
                        Some(authority) => Target::Upstream {
                            authority,
                            h2c: false,
                            tunnel: true,
                        },
                        None => Target::Unconfigured,
                    },
                    RouteTarget::Static(root) => {
                        let path = base_dir.join(root);
                        match std::fs::canonicalize(&path) {
                            Ok(real) if real.is_dir() => Target::Static(
                                crate::static_files::StaticRoot::new(real, r.dotfiles),
                            ),
                            Ok(_) => {
                                errors.push(ConfigError {
                                    key: format!("{}.root", r.key),
                                    message: format!("{} is not a directory", path.display()),
                                });
                                Target::Unconfigured
                            }
                            Err(e) => {
                                errors.push(ConfigError {
                                    key: format!("{}.root", r.key),
                                    message: format!("{}: {e}", path.display()),
                                });
                                Target::Unconfigured
                            }
                        }
                    }
                };
                let prefix = match r.prefix {
                    edge_routing::PrefixMode::Strip => {
                        HeaderValue::from_str(&format!("/{}", r.mount)).ok()
                    }
                    edge_routing::PrefixMode::Keep => None,
                };
                let auth = match &r.auth {
                    None => None,
                    Some(fa) => match AuthRt::build(fa, chat_listen) {
                        Ok(a) => Some(Arc::new(a)),
                        Err(message) => {
                            errors.push(ConfigError {
                                key: format!("{}.auth", r.key),
                                message,
                            });
                            None
                        }
                    },
                };
                rts.push(RouteRt {
                    metrics: metrics.route(&p.name, &r.mount),
                    target,
                    prefix,
                    auth,
                    chat: r.target == RouteTarget::Chat,
                });
            }
            list.push_str("</ul>");
            mount_lists.push(list);
            routes.push(rts);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let project_metrics = config
            .projects
            .iter()
            .map(|p| metrics.route(&p.name, ""))
            .collect();
        Ok(Runtime {
            table: RouteTable::new(config),
            routes,
            project_metrics,
            unrouted: metrics.route("", ""),
            mount_lists,
            access: None,
        })
    }

    pub fn config(&self) -> &Config {
        self.table.config()
    }
}
