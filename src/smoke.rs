//! `edge smoke`: the plan from the config (or from a URL and what the edge says of itself),
//! then the checks of `edge-smoke`, printed for a terminal or as JSON.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context as _;
use edge_routing::{Config, RouteTarget, Scheme};
use edge_smoke::{Admin, CertificateDer, Mount, Plan, Site};
use url::Url;

use crate::cli::{Failure, Loaded};

/// What `edge smoke` was given.
#[derive(Debug)]
pub struct Args {
    pub url: Option<String>,
    pub cacert: Option<PathBuf>,
    pub connect: Option<SocketAddr>,
    pub json: bool,
}

/// A listener's address as a client on this host dials it (`0.0.0.0` → `127.0.0.1`).
fn dialable(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(v) if v.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), a.port())
        }
        IpAddr::V6(v) if v.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), a.port())
        }
        _ => a,
    }
}

fn read_roots(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, Failure> {
    edge_smoke::read_pem_certs(path).map_err(|e| Failure::config(anyhow::anyhow!("{e}")))
}

/// The plan for every project of a config, dialling its own listeners.
pub fn plan_from_config(
    config: &Config,
    label: String,
    file: Option<&std::path::Path>,
) -> Result<Plan, Failure> {
    let (scheme, listener) = match (config.listen.https, config.listen.http) {
        (Some(a), _) => ("https", a),
        (None, Some(a)) => ("http", a),
        (None, None) => {
            return Err(Failure::config(anyhow::anyhow!(
                "the config has neither listen.https nor listen.http: nothing to check"
            )))
        }
    };
    let (_, port) = config.public_scheme_port();
    let mut sites = Vec::new();
    for (pi, p) in config.projects.iter().enumerate() {
        let host = config.project_host(pi);
        let base = Url::parse(&format!("{scheme}://{host}{port}/"))
            .with_context(|| format!("project {:?}: its URL", p.name))?;
        let mounts = p
            .routes
            .iter()
            .enumerate()
            .map(|(ri, r)| {
                let url = config.mount_url(pi, ri);
                let target = match &r.target {
                    RouteTarget::Upstream(u) => Some(format!(
                        "{}://{}",
                        match u.scheme {
                            Scheme::Http => "http",
                            Scheme::H2c => "h2c",
                        },
                        u.authority
                    )),
                    RouteTarget::Static(d) => Some(d.display().to_string()),
                    _ => None,
                };
                Ok(Mount {
                    name: r.mount.clone(),
                    url: Url::parse(&url).with_context(|| format!("{}: its URL", r.key))?,
                    gated: r.auth.is_some(),
                    untrusted: r.untrusted,
                    chat: r.target == RouteTarget::Chat,
                    key: Some(r.key.clone()),
                    target,
                })
            })
            .collect::<Result<Vec<_>, anyhow::Error>>()?;
        sites.push(Site {
            project: p.name.clone(),
            base,
            default_mount: p.routes.get(p.default).map(|r| r.mount.clone()),
            mounts,
        });
    }
    let ca = config
        .state_dir
        .join("ca")
        .join(&config.domain)
        .join("ca.pem");
    let (roots, roots_from) = if ca.exists() {
        (read_roots(&ca)?, Some(ca.display().to_string()))
    } else {
        (Vec::new(), None)
    };
    let login = config
        .chat
        .as_ref()
        .filter(|c| c.login == edge_routing::LoginKind::Token)
        .map(|_| {
            let config = config.clone();
            let login: edge_smoke::LoginFn = Box::new(move |project: String| {
                let config = config.clone();
                Box::pin(async move {
                    // The running edge's own link, as `edge chat login-url` gets it; else one
                    // written into this config's store.
                    let (c, p) = (config.clone(), project.clone());
                    let asked = tokio::task::spawn_blocking(move || {
                        crate::chat::ask_running_edge(&c, Some(&p))
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                    match asked.map_err(|e| e.to_string())? {
                        Some(link) => Ok(link),
                        None => crate::chat::login_link(&config, Some(&project))
                            .await
                            .map_err(|e| e.to_string()),
                    }
                })
            });
            login
        });
    Ok(Plan {
        target: label,
        sites,
        dial: Some(dialable(listener)),
        http_dial: config.listen.http.map(dialable),
        http_redirect: config
            .listen
            .https
            .and(config.listen.http)
            .map(|_| config.listen.http_redirect),
        roots,
        roots_from,
        admin: Admin::Configured(config.listen.admin),
        apply: match file {
            Some(f) => format!("then `edge reload --config {}`", f.display()),
            None => "edge runs its embedded default: `edge config default > edge.toml`, set it there, then `edge up --config edge.toml`".to_string(),
        },
        login,
    })
}

/// The plan for one URL: the mounts are those the edge's 404 page lists.
async fn plan_from_url(args: &Args, url: &str) -> Result<Plan, Failure> {
    let base = Url::parse(url)
        .map_err(|e| Failure::config(anyhow::anyhow!("--url {url:?}: {e}")))?
        .join("/")
        .map_err(|e| Failure::config(anyhow::anyhow!("--url {url:?}: {e}")))?;
    if !matches!(base.scheme(), "https" | "http") || base.host_str().is_none() {
        return Err(Failure::config(anyhow::anyhow!(
            "--url {url:?}: give the project's address, e.g. https://demo.example.com/"
        )));
    }
    let roots = match &args.cacert {
        Some(p) => read_roots(p)?,
        None => Vec::new(),
    };
    let project = base
        .host_str()
        .and_then(|h| h.split('.').next())
        .unwrap_or_default()
        .to_string();
    let mut plan = Plan {
        target: base.to_string(),
        sites: vec![Site {
            project,
            base: base.clone(),
            default_mount: None,
            mounts: Vec::new(),
        }],
        dial: args.connect,
        http_dial: None,
        http_redirect: None,
        roots,
        roots_from: args.cacert.as_ref().map(|p| p.display().to_string()),
        admin: Admin::Probe(9090),
        apply: "then `edge reload` on the edge".to_string(),
        login: None,
    };
    let mounts = edge_smoke::discover_mounts(&plan, &base)
        .await
        .map_err(|e| anyhow::anyhow!("asking {base} for its mounts: {e}"))?;
    plan.sites[0].mounts = mounts;
    Ok(plan)
}

/// `edge smoke`.
pub fn run(loaded: Option<Loaded>, args: Args) -> Result<(), Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = rt.block_on(async {
        let plan = match (&args.url, &loaded) {
            (Some(u), _) => plan_from_url(&args, u).await?,
            (None, Some(l)) => {
                let label = match &l.path {
                    Some(p) => format!("the edge of {}", p.display()),
                    None => "the edge of the embedded default config".to_string(),
                };
                let mut plan = plan_from_config(&l.config, label, l.path.as_deref())?;
                if args.connect.is_some() {
                    plan.dial = args.connect;
                }
                if let Some(p) = &args.cacert {
                    plan.roots.extend(read_roots(p)?);
                }
                plan
            }
            (None, None) => {
                return Err(Failure::config(anyhow::anyhow!(
                    "give --config FILE or --url https://..."
                )))
            }
        };
        Ok::<_, Failure>(edge_smoke::run(&plan).await)
    })?;
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.human());
    }
    if report.ok() {
        Ok(())
    } else {
        Err(Failure::from(anyhow::anyhow!(
            "{} of {} checks failed",
            report.count(edge_smoke::Status::Fail),
            report.checks.len()
        )))
    }
}
