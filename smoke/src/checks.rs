//! The checks, in the order a user meets them.

use std::net::IpAddr;

use http::Method;
use url::Url;

use crate::client::{Client, Resp};
use crate::{Admin, Check, Mount, Plan, Report, Site, Status};

/// An `Origin` no deployment serves (`.invalid` is reserved, RFC 2606).
const FOREIGN_ORIGIN: &str = "https://smoke-check.invalid";
/// What a browser sends when it opens a page.
pub(crate) const PAGE: &[(&str, &str)] = &[
    ("accept", "text/html,application/xhtml+xml"),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-dest", "document"),
];
/// What a script's `fetch()` sends.
const FETCH: &[(&str, &str)] = &[
    ("accept", "application/json"),
    ("sec-fetch-mode", "cors"),
    ("sec-fetch-dest", "empty"),
];
/// Redirects followed before calling it a loop's cousin (too many).
const MAX_HOPS: usize = 10;
/// Assets fetched per page at most.
const MAX_ASSETS: usize = 40;
/// A certificate closer than this to its end is a warning.
const EXPIRY_WARN_DAYS: i64 = 14;

struct Out(Vec<Check>);

impl Out {
    fn add(
        &mut self,
        check: &'static str,
        subject: impl Into<String>,
        status: Status,
        saw: impl Into<String>,
        fix: Option<String>,
    ) {
        self.0.push(Check {
            check,
            subject: subject.into(),
            status,
            saw: saw.into(),
            fix,
        });
    }
}

/// Runs every check of the plan.
pub async fn run(plan: &Plan) -> Report {
    let mut out = Out(Vec::new());
    let client = match Client::new(plan.roots.clone(), plan.dial, plan.http_dial) {
        Ok(c) => c,
        Err(e) => {
            out.add("tls", &plan.target, Status::Fail, e, None);
            return Report {
                target: plan.target.clone(),
                checks: out.0,
            };
        }
    };
    let hosts = plan.hosts();
    for site in &plan.sites {
        tls(&client, plan, site, &mut out).await;
        http_redirect(&client, plan, site, &mut out).await;
        root(&client, site, &hosts, &mut out).await;
        for m in &site.mounts {
            let first = mount(&client, plan, m, &hosts, &mut out).await;
            if let Some((url, resp)) = &first {
                assets(&client, site, m, url, resp, &mut out).await;
            }
            if m.gated {
                gate(&client, m, &mut out).await;
            }
            if m.untrusted {
                staging(m, first.as_ref().map(|(_, r)| r), &mut out);
            }
            if m.chat {
                chat_websocket(&client, plan, site, m, &mut out).await;
            }
        }
        admin(&client, plan, site, &mut out).await;
    }
    Report {
        target: plan.target.clone(),
        checks: out.0,
    }
}

/// The mounts of the project at `base`, as its 404 page lists them (subpath routing), each
/// asked once whether it is behind the sign-in.
pub async fn discover_mounts(plan: &Plan, base: &Url) -> Result<Vec<Mount>, String> {
    let client = Client::new(plan.roots.clone(), plan.dial, plan.http_dial)?;
    let probe = base
        .join("edge-smoke-no-such-mount/")
        .map_err(|e| e.to_string())?;
    let r = client.request(Method::GET, &probe, PAGE).await?;
    if r.status != 404 || !edge_page(&r) {
        return Err(format!(
            "{probe} answered {}, not edge's 404 page listing the mounts (is this an edge's project address?)",
            r.status
        ));
    }
    let mut mounts = Vec::new();
    for href in crate::page::links(&r.body) {
        let Some(name) = href.strip_prefix('/').and_then(|h| h.strip_suffix('/')) else {
            continue;
        };
        if name.is_empty() || name.contains('/') {
            continue;
        }
        let mut url = base.join(&href).map_err(|e| e.to_string())?;
        // Subdomain routing: the project's address sends /forge/ on to forge.<project host>.
        let sub = format!("{name}.{}", base.host_str().unwrap_or_default());
        if let Ok(r) = client.request(Method::GET, &url, FETCH).await {
            if let Some(next) = r
                .header("location")
                .filter(|_| matches!(r.status, 301 | 308))
                .and_then(|l| url.join(l).ok())
                .filter(|n| n.host_str() == Some(sub.as_str()))
            {
                url = next;
            }
        }
        let gated = client
            .request(Method::GET, &url, FETCH)
            .await
            .is_ok_and(|r| r.status == 401);
        mounts.push(Mount {
            name: name.to_string(),
            url,
            gated,
            untrusted: name == "staging",
            chat: name == "chat",
            key: None,
            target: None,
        });
    }
    if mounts.is_empty() {
        return Err(format!("{probe}: the 404 page lists no mounts"));
    }
    Ok(mounts)
}

pub(crate) fn origin(u: &Url) -> String {
    u.origin().ascii_serialization()
}

/// The edge's own error pages end with this line.
pub(crate) fn edge_page(r: &Resp) -> bool {
    r.body
        .windows(b"<p><small>edge</small></p>".len())
        .any(|w| w == b"<p><small>edge</small></p>")
}

fn key_of(m: &Mount) -> String {
    m.key
        .clone()
        .unwrap_or_else(|| format!("the `{}` route", m.name))
}

/// The certificate of each host of `site`, as checks (for `edge doctor`).
pub(crate) async fn tls_checks(client: &Client, plan: &Plan, site: &Site) -> Vec<Check> {
    let mut out = Out(Vec::new());
    tls(client, plan, site, &mut out).await;
    out.0
}

async fn tls(client: &Client, plan: &Plan, site: &Site, out: &mut Out) {
    let mut seen = Vec::new();
    for u in std::iter::once(&site.base).chain(site.mounts.iter().map(|m| &m.url)) {
        let Some(host) = u.host_str() else { continue };
        if u.scheme() != "https" || seen.contains(&host.to_string()) {
            continue;
        }
        seen.push(host.to_string());
        match client.certificates(u).await {
            Ok(chain) => {
                let trust = plan
                    .roots_from
                    .as_deref()
                    .map_or("the system's roots".to_string(), |f| {
                        format!("the system's roots and {f}")
                    });
                let left = chain.first().and_then(|c| {
                    x509_parser::parse_x509_certificate(c.as_ref())
                        .ok()
                        .map(|(_, x)| x.validity().not_after.timestamp())
                });
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                match left {
                    Some(t) => {
                        let days = (t - now) / 86400;
                        let saw = format!(
                            "the chain ({} certificates) verifies against {trust}, the name matches; {days} days left",
                            chain.len()
                        );
                        if days < EXPIRY_WARN_DAYS {
                            out.add("tls", host, Status::Warn, saw, Some("the certificate ends soon: see `edge certs` (renewal errors, next try) and `edge certs renew`".into()));
                        } else {
                            out.add("tls", host, Status::Pass, saw, None);
                        }
                    }
                    None => out.add(
                        "tls",
                        host,
                        Status::Warn,
                        "verified, but the certificate's end date could not be read",
                        None,
                    ),
                }
            }
            Err(e) => {
                let fix = if e.contains("UnknownIssuer") || e.contains("unknown issuer") {
                    match &plan.roots_from {
                        Some(f) => format!("the certificate is not from a CA trusted here (nor {f}): run `edge certs` on the edge"),
                        None => "the certificate is not from a trusted CA: for edge's local CA, pass --cacert state/ca/<domain>/ca.pem (or run `edge trust`); on a public name, set [certs] issuer = \"acme\"".to_string(),
                    }
                } else if e.contains("NotValidForName") || e.contains("not valid for name") {
                    "the certificate does not name this host: check `domain` and the routing mode, then `edge certs`".to_string()
                } else if e.contains("Expired") {
                    "the certificate has expired: `edge certs` shows why renewal failed; `edge certs renew`".to_string()
                } else {
                    "is the edge running, and is this its HTTPS listener (listen.https)?"
                        .to_string()
                };
                out.add("tls", host, Status::Fail, e, Some(fix));
            }
        }
    }
}

async fn http_redirect(client: &Client, plan: &Plan, site: &Site, out: &mut Out) {
    let Some(should) = plan.http_redirect else {
        return;
    };
    let mut u = site.base.clone();
    let _ = u.set_scheme("http");
    let _ = u.set_port(plan.http_dial.map(|a| a.port()).filter(|p| *p != 80));
    let subject = u.to_string();
    match client.request(Method::GET, &u, PAGE).await {
        Ok(r) if should => {
            let loc = r.header("location").unwrap_or("");
            if (300..400).contains(&r.status) && loc.starts_with("https://") {
                out.add("http-redirect", subject, Status::Pass, format!("{} to {loc}", r.status), None);
            } else {
                out.add("http-redirect", subject, Status::Fail, format!("{} (Location: {loc:?}), not a redirect to HTTPS", r.status), Some("set listen.http_redirect = true, or put nothing on plain HTTP".into()));
            }
        }
        Ok(r) => out.add(
            "http-redirect",
            subject,
            Status::Pass,
            format!("{}: plain HTTP serves the mounts (listen.http_redirect = false, for a TLS-terminating tunnel in front)", r.status),
            None,
        ),
        Err(e) if plan.http_dial.is_none() => out.add(
            "http-redirect",
            subject,
            Status::Skip,
            format!("no plain HTTP here ({e})"),
            None,
        ),
        Err(e) => out.add(
            "http-redirect",
            subject,
            Status::Fail,
            e,
            Some("listen.http is set but does not answer: is the edge running?".into()),
        ),
    }
}

/// A walk through redirects as a browser takes them.
pub(crate) struct Walk {
    /// Every URL asked, with its status.
    pub hops: Vec<(Url, u16)>,
    /// The redirects on the way, whole (their `Location` and `Set-Cookie`).
    pub answers: Vec<(Url, Resp)>,
    /// The last answer and its URL; `None` when the walk stopped on a problem or an error.
    pub last: Option<(Url, Resp)>,
    /// Why the walk is wrong, and the fix.
    pub problem: Option<(String, String)>,
    /// The walk left for another site (a sign-in provider): where.
    pub left_for: Option<Url>,
}

impl Walk {
    fn path(&self) -> String {
        self.hops
            .iter()
            .map(|(u, s)| format!("{} ({s})", u.path()))
            .collect::<Vec<_>>()
            .join(" -> ")
    }
}

pub(crate) fn internal_host(host: &str) -> bool {
    match host.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => {
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified()
        }
        Ok(IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xfe00) == 0xfc00
        }
        Err(_) => host == "localhost",
    }
}

pub(crate) async fn follow(
    client: &Client,
    start: &Url,
    headers: &[(&str, &str)],
    hosts: &[String],
) -> Result<Walk, String> {
    let mut walk = Walk {
        hops: Vec::new(),
        answers: Vec::new(),
        last: None,
        problem: None,
        left_for: None,
    };
    let mut url = start.clone();
    loop {
        let r = client.request(Method::GET, &url, headers).await?;
        walk.hops.push((url.clone(), r.status));
        let loc = r.header("location").map(str::to_string);
        let redirect = matches!(r.status, 301 | 302 | 303 | 307 | 308);
        let Some(loc) = loc.filter(|_| redirect) else {
            walk.last = Some((url, r));
            return Ok(walk);
        };
        let next = match url.join(&loc) {
            Ok(n) => n,
            Err(e) => {
                walk.problem = Some((
                    format!(
                        "{} redirects to {loc:?}, which is not a URL ({e})",
                        url.path()
                    ),
                    "the app's base URL setting is malformed".into(),
                ));
                return Ok(walk);
            }
        };
        let host = next.host_str().unwrap_or("").to_string();
        let ours = hosts.contains(&host);
        if !ours && internal_host(&host) && !internal_host(start.host_str().unwrap_or("")) {
            walk.problem = Some((
                format!("{} redirects to {next}: the upstream's own address, which browsers cannot reach", url.path()),
                format!("the app does not know its public URL: set its base URL to {start} (Forgejo ROOT_URL, Woodpecker WOODPECKER_HOST, Jupyter base_url...) or rewrite Location"),
            ));
            return Ok(walk);
        }
        if ours && next.scheme() == "http" && start.scheme() == "https" {
            walk.problem = Some((
                format!("{} redirects to {next}: plain HTTP", url.path()),
                "the app thinks it is served over http: give it its https:// public URL (edge sends X-Forwarded-Proto: https)".into(),
            ));
            return Ok(walk);
        }
        if !ours {
            walk.left_for = Some(next);
            return Ok(walk);
        }
        if walk.hops.iter().any(|(u, _)| *u == next) {
            walk.hops.push((next, 0));
            walk.problem = Some((
                format!("redirect loop: {}", walk.path()),
                "the app's base URL does not match where edge serves it, or the mount's prefix mode (strip/keep) is the other one".into(),
            ));
            return Ok(walk);
        }
        if walk.hops.len() >= MAX_HOPS {
            walk.problem = Some((
                format!("more than {MAX_HOPS} redirects: {}", walk.path()),
                "the app's base URL does not match where edge serves it".into(),
            ));
            return Ok(walk);
        }
        walk.answers.push((url, r));
        url = next;
    }
}

async fn root(client: &Client, site: &Site, hosts: &[String], out: &mut Out) {
    let subject = site.base.to_string();
    let walk = match follow(client, &site.base, PAGE, hosts).await {
        Ok(w) => w,
        Err(e) => {
            out.add(
                "root",
                subject,
                Status::Fail,
                e,
                Some("is the edge running?".into()),
            );
            return;
        }
    };
    if let Some((saw, fix)) = walk.problem {
        out.add("root", subject, Status::Fail, saw, Some(fix));
        return;
    }
    let Some(default) = &site.default_mount else {
        out.add("root", subject, Status::Pass, walk.path(), None);
        return;
    };
    let want = site
        .mounts
        .iter()
        .find(|m| &m.name == default)
        .map(|m| m.url.clone());
    let reached = walk.hops.get(1).map(|(u, _)| u.clone());
    match (want, reached) {
        (Some(w), Some(r)) if r == w => out.add(
            "root",
            subject,
            Status::Pass,
            format!("leads to the default mount: {}", walk.path()),
            None,
        ),
        (Some(w), r) => out.add(
            "root",
            subject,
            Status::Fail,
            format!(
                "{} (expected a redirect to {w}; got {})",
                walk.path(),
                r.map_or("none".into(), |r| r.to_string())
            ),
            Some("set the project's `default` to the mount `/` should open".into()),
        ),
        (None, _) => out.add("root", subject, Status::Pass, walk.path(), None),
    }
}

/// The mount's first page as a browser opens it; the final URL and answer when it passed.
async fn mount(
    client: &Client,
    plan: &Plan,
    m: &Mount,
    hosts: &[String],
    out: &mut Out,
) -> Option<(Url, Resp)> {
    let subject = m.url.to_string();
    let walk = match follow(client, &m.url, PAGE, hosts).await {
        Ok(w) => w,
        Err(e) => {
            out.add(
                "mount",
                subject,
                Status::Fail,
                e,
                Some("is the edge running?".into()),
            );
            return None;
        }
    };
    if let Some((saw, fix)) = walk.problem {
        out.add("mount", subject, Status::Fail, saw, Some(fix));
        return None;
    }
    if let Some(to) = &walk.left_for {
        out.add(
            "mount",
            subject,
            Status::Pass,
            format!(
                "{} -> {} (another site: a sign-in provider?)",
                walk.path(),
                to.origin().ascii_serialization()
            ),
            None,
        );
        return None;
    }
    let path = walk.path();
    let (url, r) = walk.last?;
    let title = r.title().unwrap_or_default();
    let target = m.target.as_deref().unwrap_or("its upstream");
    let key = key_of(m);
    let (status, fix) = match r.status {
        200..=299 => (Status::Pass, None),
        503 if edge_page(&r) && title.contains("Mount not configured") => (
            Status::Warn,
            Some(format!("point the mount somewhere: `{key}.upstream = \"http://127.0.0.1:3000\"` (the app's address) or `{key}.root = \"./site\"` (static files); {}", plan.apply)),
        ),
        502 if edge_page(&r) && title.contains("Project host offline") => (
            Status::Fail,
            Some("the project host's session is down: run `edge connect` there (see `edge register list` on the edge)".into()),
        ),
        502 | 504 if edge_page(&r) => (
            Status::Fail,
            Some(format!("nothing answers at {target}: start the app, or correct `{key}.upstream`")),
        ),
        404 => (
            Status::Fail,
            Some(format!("the app has no page at {}: with prefix = \"strip\" it is asked for `/`, with \"keep\" for `/{}/`; the app's base path must match", url.path(), m.name)),
        ),
        401 | 403 if m.gated => (Status::Pass, None),
        _ => (Status::Fail, Some(format!("{target} answers {} for its first page", r.status))),
    };
    let saw = if title.is_empty() {
        path
    } else {
        format!("{path} \"{title}\"")
    };
    out.add("mount", subject, status, saw, fix);
    (status == Status::Pass).then_some((url, r))
}

async fn assets(client: &Client, site: &Site, m: &Mount, page: &Url, r: &Resp, out: &mut Out) {
    // Only an app's HTML pages: edge's own pages load nothing.
    let html = r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/html"));
    if !html || edge_page(r) {
        return;
    }
    let found = crate::page::assets(&r.body);
    let mut checked = 0;
    let mut broken = Vec::new();
    let mut outside = Vec::new();
    for a in found.iter().take(MAX_ASSETS) {
        let Ok(u) = page.join(a) else { continue };
        if u.origin() != page.origin() {
            continue; // another site's (a CDN): not the edge's business
        }
        checked += 1;
        let same_host_mount = m.url.host_str() == site.base.host_str();
        if same_host_mount && !u.path().starts_with(m.url.path()) {
            outside.push(u.path().to_string());
        }
        match client
            .request(
                Method::GET,
                &u,
                &[("accept", "*/*"), ("sec-fetch-mode", "no-cors")],
            )
            .await
        {
            Ok(a) if (200..400).contains(&a.status) => {}
            Ok(a) => broken.push(format!("{} ({})", u.path(), a.status)),
            Err(e) => broken.push(format!("{} ({e})", u.path())),
        }
    }
    let subject = page.to_string();
    if checked == 0 {
        out.add(
            "assets",
            subject,
            Status::Pass,
            "the page loads no scripts, styles or images of its own",
            None,
        );
    } else if broken.is_empty() {
        out.add(
            "assets",
            subject,
            Status::Pass,
            format!("{checked} scripts, styles and images load"),
            None,
        );
    } else {
        let fix = if outside.is_empty() {
            "these files are missing upstream".to_string()
        } else {
            format!(
                "the page links {} outside its mount {}: the app is not configured for its subpath; set its base URL to {} (or serve the mount on its own host: routing = \"subdomain\")",
                outside.join(", "),
                m.url.path(),
                m.url
            )
        };
        out.add(
            "assets",
            subject,
            Status::Fail,
            format!(
                "{} of {checked} do not load: {}",
                broken.len(),
                broken.join(", ")
            ),
            Some(fix),
        );
    }
}

/// The sign-in gate, seen without a session.
async fn gate(client: &Client, m: &Mount, out: &mut Out) {
    let subject = m.url.to_string();
    let own = origin(&m.url);
    let key = key_of(m);
    let open_fix = Some(format!("the mount is served without a session: set `{key}.auth = \"forward\"` and check [chat] (or auth_url)"));
    // A page: a redirect to sign in.
    match client.request(Method::GET, &m.url, PAGE).await {
        Ok(r) if matches!(r.status, 302 | 303 | 307) => out.add(
            "auth-gate",
            &subject,
            Status::Pass,
            format!(
                "a page without a session: {} to {}",
                r.status,
                r.header("location").unwrap_or("?")
            ),
            None,
        ),
        Ok(r) if r.status == 200 && m.chat => {
            // The chat's own entry page may be open (it explains the sign-in).
            out.add(
                "auth-gate",
                &subject,
                Status::Pass,
                "the chat's entry page is open (it offers the sign-in)",
                None,
            )
        }
        Ok(r) if (200..300).contains(&r.status) => out.add(
            "auth-gate",
            &subject,
            Status::Fail,
            format!("a page without a session: {}", r.status),
            open_fix.clone(),
        ),
        Ok(r) => out.add(
            "auth-gate",
            &subject,
            Status::Warn,
            format!(
                "a page without a session: {}, not a redirect to sign in",
                r.status
            ),
            None,
        ),
        Err(e) => out.add("auth-gate", &subject, Status::Fail, e, None),
    }
    // A fetch: 401.
    let mut api = m.url.clone();
    if m.chat {
        api = api.join("api/me").unwrap_or(api);
    }
    match client.request(Method::GET, &api, FETCH).await {
        Ok(r) if r.status == 401 => out.add(
            "auth-gate",
            api.as_str(),
            Status::Pass,
            "a fetch without a session: 401",
            None,
        ),
        Ok(r) if (200..300).contains(&r.status) => out.add(
            "auth-gate",
            api.as_str(),
            Status::Fail,
            format!("a fetch without a session: {}", r.status),
            open_fix.clone(),
        ),
        Ok(r) => out.add(
            "auth-gate",
            api.as_str(),
            Status::Warn,
            format!(
                "a fetch without a session: {} (401 expected, so scripts can tell)",
                r.status
            ),
            None,
        ),
        Err(e) => out.add("auth-gate", api.as_str(), Status::Fail, e, None),
    }
    // A WebSocket: never 101 without a session; refused from a foreign Origin.
    let ws = if m.chat {
        m.url.join("ws").unwrap_or(m.url.clone())
    } else {
        m.url.clone()
    };
    for (from, what) in [
        (own.as_str(), "its own Origin"),
        (FOREIGN_ORIGIN, "a foreign Origin"),
    ] {
        match client.websocket(&ws, &[("origin", from)]).await {
            Ok(r) if r.status == 101 => out.add(
                "auth-gate",
                ws.as_str(),
                Status::Fail,
                format!("a WebSocket from {what} without a session: 101 (opened)"),
                open_fix.clone(),
            ),
            Ok(r) if from == FOREIGN_ORIGIN && r.status != 403 => out.add(
                "auth-gate",
                ws.as_str(),
                Status::Warn,
                format!(
                    "a WebSocket from {what}: {} (refused, but not for its Origin: 403 expected)",
                    r.status
                ),
                None,
            ),
            Ok(r) => out.add(
                "auth-gate",
                ws.as_str(),
                Status::Pass,
                format!("a WebSocket from {what} without a session: {}", r.status),
                None,
            ),
            Err(e) => out.add("auth-gate", ws.as_str(), Status::Fail, e, None),
        }
    }
}

fn staging(m: &Mount, r: Option<&Resp>, out: &mut Out) {
    let subject = m.url.to_string();
    let Some(r) = r else {
        out.add(
            "staging",
            subject,
            Status::Skip,
            "no page from the app to look at (see the mount check)",
            None,
        );
        return;
    };
    let csp = r.header("content-security-policy").unwrap_or("");
    let sandboxed = csp.split(';').any(|d| d.trim().starts_with("sandbox"));
    let cookies = r.headers.get_all("set-cookie").iter().count();
    if sandboxed && cookies == 0 {
        out.add(
            "staging",
            subject,
            Status::Pass,
            format!("Content-Security-Policy: {csp}; no cookies set"),
            None,
        );
    } else {
        out.add(
            "staging",
            subject,
            Status::Fail,
            format!("CSP {csp:?}, {cookies} Set-Cookie"),
            Some(format!(
                "untrusted previews must be sandboxed: `{}.untrusted = true`",
                key_of(m)
            )),
        );
    }
}

/// Why no session could be had.
pub(crate) enum SignIn {
    /// Signing in is not possible from here (no config, no link): the check is skipped.
    Unavailable(String),
    /// It was tried and failed: what was seen, and the fix.
    Failed(String, Option<String>),
}

/// Signs in to `site` with a one-time link: the session's cookies, as one `Cookie` value.
pub(crate) async fn sign_in(client: &Client, plan: &Plan, site: &Site) -> Result<String, SignIn> {
    let Some(login) = &plan.login else {
        return Err(SignIn::Unavailable(
            "signing in needs the edge's config (--config): the check makes a one-time link in the chat's store".into(),
        ));
    };
    let link = login(site.project.clone())
        .await
        .map_err(|e| SignIn::Unavailable(format!("no one-time link: {e}")))?;
    let url = Url::parse(&link)
        .map_err(|_| SignIn::Failed(format!("the one-time link is not a URL: {link}"), None))?;
    let r = client
        .request(Method::GET, &url, PAGE)
        .await
        .map_err(|e| SignIn::Failed(e, None))?;
    let cookies: Vec<String> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next().map(str::to_string))
        .collect();
    if cookies.is_empty() {
        return Err(SignIn::Failed(
            format!("signing in with a one-time link answered {} and set no cookie", r.status),
            Some("the running edge does not share this config's state_dir (the link was made in another store): pass the same --config and --state-dir as `edge up`".into()),
        ));
    }
    Ok(cookies.join("; "))
}

/// Signs a session made by [`sign_in`] out again (through the chat mount `chat`).
pub(crate) async fn sign_out(client: &Client, chat: &Url, cookie: &str) {
    if let Ok(out_url) = chat.join("logout") {
        let _ = client
            .request(
                Method::POST,
                &out_url,
                &[("origin", &origin(chat)), ("cookie", cookie)],
            )
            .await;
    }
}

async fn chat_websocket(client: &Client, plan: &Plan, site: &Site, m: &Mount, out: &mut Out) {
    let ws = m.url.join("ws").unwrap_or(m.url.clone());
    let subject = ws.to_string();
    let cookie = match sign_in(client, plan, site).await {
        Ok(c) => c,
        Err(SignIn::Unavailable(why)) => {
            out.add("chat-websocket", subject, Status::Skip, why, None);
            return;
        }
        Err(SignIn::Failed(what, fix)) => {
            out.add("chat-websocket", subject, Status::Fail, what, fix);
            return;
        }
    };
    let own = origin(&m.url);
    let opened = client
        .websocket(
            &ws,
            &[
                ("origin", &own),
                ("cookie", &cookie),
                ("sec-websocket-protocol", "chat.v1"),
            ],
        )
        .await;
    match opened {
        Ok(r) if r.status == 101 => out.add("chat-websocket", &subject, Status::Pass, format!("signed in: 101, protocol {}", r.header("sec-websocket-protocol").unwrap_or("none")), None),
        Ok(r) => out.add("chat-websocket", &subject, Status::Fail, format!("signed in, the handshake answered {}", r.status), Some("the chat's WebSocket does not open: see edge's log (the chat service, forward-auth)".into())),
        Err(e) => out.add("chat-websocket", &subject, Status::Fail, e, None),
    }
    match client
        .websocket(
            &ws,
            &[
                ("origin", FOREIGN_ORIGIN),
                ("cookie", &cookie),
                ("sec-websocket-protocol", "chat.v1"),
            ],
        )
        .await
    {
        Ok(r) if r.status == 403 => out.add(
            "chat-websocket",
            &subject,
            Status::Pass,
            "signed in, from a foreign Origin: 403",
            None,
        ),
        Ok(r) => out.add(
            "chat-websocket",
            &subject,
            Status::Fail,
            format!(
                "signed in, from a foreign Origin: {} (403 expected)",
                r.status
            ),
            Some(
                "the Origin check is not enforced: a page on another site could drive the agent"
                    .into(),
            ),
        ),
        Err(e) => out.add("chat-websocket", &subject, Status::Fail, e, None),
    }
    // Sign the check's session out again.
    sign_out(client, &m.url, &cookie).await;
}

async fn admin(client: &Client, plan: &Plan, site: &Site, out: &mut Out) {
    // The public listener must not serve the admin endpoints.
    let metrics = site.base.join("metrics").unwrap_or(site.base.clone());
    match client.request(Method::GET, &metrics, FETCH).await {
        Ok(r) if String::from_utf8_lossy(&r.body).contains("# HELP edge_") => out.add(
            "admin",
            metrics.as_str(),
            Status::Fail,
            "the public listener serves edge's metrics",
            Some("listen.admin must not be the public address".into()),
        ),
        Ok(r) => out.add(
            "admin",
            metrics.as_str(),
            Status::Pass,
            format!("not served publicly ({})", r.status),
            None,
        ),
        Err(e) => out.add("admin", metrics.as_str(), Status::Fail, e, None),
    }
    match &plan.admin {
        Admin::Configured(None) => {}
        Admin::Configured(Some(a)) if a.ip().is_loopback() => {
            out.add("admin", a.to_string(), Status::Pass, "the admin listener is on loopback only", None)
        }
        Admin::Configured(Some(a)) => out.add(
            "admin",
            a.to_string(),
            Status::Warn,
            format!("the admin listener is bound to {}, reachable from the network (reload, revoke, metrics)", a.ip()),
            Some("set listen.admin = \"127.0.0.1:9090\", or firewall the port".into()),
        ),
        Admin::Probe(port) => {
            let mut u = site.base.clone();
            let _ = u.set_scheme("http");
            let _ = u.set_port(Some(*port));
            let u = u.join("/healthz").unwrap_or(u);
            match client.request(Method::GET, &u, FETCH).await {
                Ok(r) if r.status == 200 => out.add(
                    "admin",
                    u.as_str(),
                    Status::Fail,
                    "the admin listener answers from here",
                    Some("set listen.admin = \"127.0.0.1:9090\", or firewall the port".into()),
                ),
                Ok(r) => out.add("admin", u.as_str(), Status::Pass, format!("port {port} answers {}, not the admin listener", r.status), None),
                Err(_) => out.add("admin", u.as_str(), Status::Pass, format!("nothing answers on port {port}"), None),
            }
        }
    }
}
