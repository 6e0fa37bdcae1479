//! `edge doctor`: subpath mistakes found through the gateway before users find them. For each
//! mount: redirects (loops, `Location`s to the upstream's own address or without the prefix),
//! the first page's links, forms, scripts and stylesheets (absolute paths outside the mount,
//! the upstream's own address), `url(...)` in its stylesheets, cookies scoped outside the
//! mount, and for known apps their base-URL setting as the page shows it.

use http::Method;
use serde::Serialize;
use url::Url;

use crate::checks::{edge_page, follow, sign_in, sign_out, tls_checks, SignIn, PAGE};
use crate::client::{Client, Resp};
use crate::{Mount, Plan, Status};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// One finding, in plain language.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Where: a mount's URL, or `edge` for the edge itself.
    pub subject: String,
    pub what: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// What the doctor knows of a mount besides the smoke plan: the app behind it and where the
/// upstream listens (so that its own address can be recognised in pages).
#[derive(Debug, Clone, Default)]
pub struct MountInfo {
    /// `forgejo`, `woodpecker`, `jupyter`, `grafana`.
    pub app: Option<String>,
    /// `127.0.0.1:3000`.
    pub upstream: Option<String>,
    /// The app's setting that holds its public URL, for fixes (`ROOT_URL = https://...`).
    pub setting: Option<String>,
}

/// Stylesheets read per page at most.
const MAX_STYLESHEETS: usize = 10;

fn add(
    out: &mut Vec<Finding>,
    severity: Severity,
    subject: &str,
    what: String,
    fix: Option<String>,
) {
    out.push(Finding {
        severity,
        subject: subject.to_string(),
        what,
        fix,
    });
}

/// Whether `path` (absolute, from a page of `m`) stays inside the mount, or lands on another
/// route of the site (root paths included: `known`).
fn outside_mount(m: &Mount, path: &str, known: &[String]) -> bool {
    let mp = m.url.path();
    if mp == "/" || path.starts_with(mp) || path == mp.trim_end_matches('/') {
        return false;
    }
    !known.iter().any(|k| path.starts_with(k.as_str()))
}

/// Examines every mount of `plan` (`info` in the same order as the plan's mounts, site by site):
/// the certificates first, then each mount, signed in when any is behind the sign-in.
pub async fn examine(plan: &Plan, info: &[Vec<MountInfo>]) -> Vec<Finding> {
    let mut out = Vec::new();
    let client = match Client::new(plan.roots.clone(), plan.dial, plan.http_dial) {
        Ok(c) => c,
        Err(e) => {
            add(&mut out, Severity::Error, "edge", e, None);
            return out;
        }
    };
    let hosts = plan.hosts();
    for (si, site) in plan.sites.iter().enumerate() {
        for c in tls_checks(&client, plan, site).await {
            let severity = match c.status {
                Status::Pass | Status::Skip => Severity::Info,
                Status::Warn => Severity::Warning,
                Status::Fail => Severity::Error,
            };
            add(
                &mut out,
                severity,
                &c.subject,
                format!("certificate: {}", c.saw),
                c.fix,
            );
        }
        // Paths that are some mount's (or a root path's): links there are fine.
        let known: Vec<String> = site
            .mounts
            .iter()
            .filter(|m| m.url.host_str() == site.base.host_str())
            .map(|m| m.url.path().to_string())
            .collect();
        // Behind the sign-in, the apps are seen as a signed-in user sees them.
        let chat = site.mounts.iter().find(|m| m.chat);
        let mut cookie = None;
        if site.mounts.iter().any(|m| m.gated && !m.chat) {
            match sign_in(&client, plan, site).await {
                Ok(c) => cookie = Some(c),
                Err(SignIn::Unavailable(why) | SignIn::Failed(why, _)) => add(
                    &mut out,
                    Severity::Warning,
                    site.base.as_str(),
                    format!("the mounts behind the sign-in were examined without a session, so only the sign-in was seen: {why}"),
                    None,
                ),
            }
        }
        for (mi, m) in site.mounts.iter().enumerate() {
            if m.chat {
                continue;
            }
            let mi_info = info
                .get(si)
                .and_then(|v| v.get(mi))
                .cloned()
                .unwrap_or_default();
            let at = Mountx {
                client: &client,
                m,
                info: &mi_info,
                cookie: cookie.as_deref().filter(|_| m.gated),
            };
            examine_mount(&at, &hosts, &known, &mut out).await;
        }
        if let (Some(c), Some(chat)) = (&cookie, chat) {
            sign_out(&client, &chat.url, c).await;
        }
    }
    out
}

/// One mount being examined, and how to ask it.
struct Mountx<'a> {
    client: &'a Client,
    m: &'a Mount,
    info: &'a MountInfo,
    /// The session's cookies, for a mount behind the sign-in.
    cookie: Option<&'a str>,
}

impl Mountx<'_> {
    /// `base` plus the session's cookie.
    fn headers<'h>(&'h self, base: &[(&'h str, &'h str)]) -> Vec<(&'h str, &'h str)> {
        let mut h = base.to_vec();
        if let Some(c) = self.cookie {
            h.push(("cookie", c));
        }
        h
    }

    fn subject(&self) -> &str {
        self.m.url.as_str()
    }

    /// The app's setting that holds its public URL, for fixes.
    fn setting(&self) -> String {
        self.info
            .setting
            .clone()
            .unwrap_or_else(|| format!("the app's base URL to {}", self.m.url))
    }
}

async fn examine_mount(
    at: &Mountx<'_>,
    hosts: &[String],
    known: &[String],
    out: &mut Vec<Finding>,
) {
    let (client, m, info) = (at.client, at.m, at.info);
    let subject = at.subject();
    let setting = at.setting();
    let page_headers = at.headers(PAGE);
    let walk = match follow(client, &m.url, &page_headers, hosts).await {
        Ok(w) => w,
        Err(e) => {
            add(
                out,
                Severity::Error,
                subject,
                e,
                Some("is the edge running?".into()),
            );
            return;
        }
    };
    if let Some((what, fix)) = &walk.problem {
        // A known app: its own setting, exactly.
        let fix = match &info.setting {
            Some(set) => format!("{fix}: set {set}"),
            None => fix.clone(),
        };
        add(out, Severity::Error, subject, what.clone(), Some(fix));
        return;
    }
    // Every answer on the way: Locations without the prefix, cookies outside the mount.
    let answers: Vec<(&Url, &Resp)> = walk
        .answers
        .iter()
        .chain(walk.last.iter())
        .map(|(u, r)| (u, r))
        .collect();
    for (u, r) in &answers {
        if let Some(loc) = r.header("location") {
            if let Ok(next) = u.join(loc) {
                if next.host_str() == m.url.host_str() && outside_mount(m, next.path(), known) {
                    add(
                        out,
                        Severity::Error,
                        subject,
                        format!(
                            "{} redirects to {}, outside {}",
                            u.path(),
                            next.path(),
                            m.url.path()
                        ),
                        Some(format!(
                            "the app does not know it is served under {}: set {setting}",
                            m.url.path()
                        )),
                    );
                }
            }
        }
        for c in r
            .headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            let name = c.split('=').next().unwrap_or("").trim();
            let path = c
                .split(';')
                .skip(1)
                .filter_map(|a| a.trim().split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("path"))
                .map(|(_, v)| v.trim().to_string());
            if let Some(p) = path {
                if m.url.path() != "/" && !p.starts_with(m.url.path().trim_end_matches('/')) {
                    add(
                        out,
                        Severity::Warning,
                        subject,
                        format!("the cookie {name} is set for Path={p}: every other mount of this host receives it"),
                        Some(format!("scope it to {} (the app's cookie path setting, or its base URL: {setting})", m.url.path())),
                    );
                }
            }
        }
        clock(subject, r, out);
    }
    // The app's answers to requests it would get from browsers: %2F, and its streams.
    if info.upstream.is_some() {
        percent_round_trip(at, out).await;
    }
    if let Some(app) = &info.app {
        streams(at, app, out).await;
    }
    let Some((page_url, page)) = &walk.last else {
        return;
    };
    if edge_page(page) {
        return;
    }
    if !(200..300).contains(&page.status) {
        first_page_refused(at, page, out);
        return;
    }
    let html = page
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/html"));
    if !html {
        return;
    }
    let body = String::from_utf8_lossy(&page.body).into_owned();
    // Absolute paths outside the mount, and the upstream's own address.
    let mut outside = Vec::new();
    let mut internal = Vec::new();
    let links = crate::page::urls(&page.body);
    for link in &links {
        let Ok(u) = page_url.join(link) else {
            continue;
        };
        if u.host_str() == m.url.host_str()
            && u.port_or_known_default() == m.url.port_or_known_default()
        {
            if outside_mount(m, u.path(), known) && !outside.contains(link) {
                outside.push(link.clone());
            }
        } else if u.host_str().is_some_and(crate::checks::internal_host) && !internal.contains(link)
        {
            internal.push(link.clone());
        }
    }
    if let Some(up) = &info.upstream {
        if body.contains(up.as_str()) && !internal.iter().any(|l| l.contains(up.as_str())) {
            internal.push(format!("{up} (in the page's text or scripts)"));
        }
        // The page's own scripts (an app's bundle often carries its base URL).
        let scripts: Vec<Url> = crate::page::assets(&page.body)
            .iter()
            .filter(|a| a.split('?').next().is_some_and(|p| p.ends_with(".js")))
            .filter_map(|a| page_url.join(a).ok())
            .filter(|u| u.origin() == page_url.origin())
            .take(MAX_STYLESHEETS)
            .collect();
        let js_headers = at.headers(&[("accept", "*/*")]);
        for js in scripts {
            let Ok(r) = client.request(Method::GET, &js, &js_headers).await else {
                continue;
            };
            if r.status == 200 && String::from_utf8_lossy(&r.body).contains(up.as_str()) {
                internal.push(format!("{up} (in {})", js.path()));
            }
        }
    }
    if !outside.is_empty() {
        add(
            out,
            Severity::Error,
            subject,
            format!("the page links {} outside {}", list(&outside), m.url.path()),
            Some(format!(
                "the app emits links without its prefix: set {setting}"
            )),
        );
    }
    if !internal.is_empty() {
        add(
            out,
            Severity::Error,
            subject,
            format!(
                "the page names the upstream's own address: {}",
                list(&internal)
            ),
            Some(format!("browsers cannot reach it: set {setting}")),
        );
    }
    // The stylesheets' url(...) references.
    let sheets: Vec<Url> = crate::page::assets(&page.body)
        .iter()
        .filter(|a| a.split('?').next().is_some_and(|p| p.ends_with(".css")))
        .filter_map(|a| page_url.join(a).ok())
        .filter(|u| u.origin() == page_url.origin())
        .take(MAX_STYLESHEETS)
        .collect();
    let css_headers = at.headers(&[("accept", "text/css")]);
    for s in sheets {
        let Ok(r) = client.request(Method::GET, &s, &css_headers).await else {
            continue;
        };
        if r.status != 200 {
            continue;
        }
        let css = String::from_utf8_lossy(&r.body);
        let bad: Vec<String> = css_urls(&css)
            .into_iter()
            .filter(|u| u.starts_with('/') && !u.starts_with("//") && outside_mount(m, u, known))
            .collect();
        if !bad.is_empty() {
            add(
                out,
                Severity::Error,
                subject,
                format!("{} uses {} outside {}", s.path(), list(&bad), m.url.path()),
                Some(format!("absolute url(...) in stylesheets ignore the prefix: make them relative, or set {setting}")),
            );
        }
    }
    if let Some(app) = &info.app {
        let extra = match app.as_str() {
            // Woodpecker's root path is in the script its page loads.
            "woodpecker" => match m.url.join("web-config.js") {
                Ok(u) => match client
                    .request(Method::GET, &u, &at.headers(&[("accept", "*/*")]))
                    .await
                {
                    Ok(r) if r.status == 200 && !edge_page(&r) => {
                        Some(String::from_utf8_lossy(&r.body).into_owned())
                    }
                    _ => None,
                },
                Err(_) => None,
            },
            _ => None,
        };
        app_base_url(app, m, &body, &links, extra.as_deref(), subject, out);
    }
}

/// A first page the app itself refused: what known apps mean by it.
fn first_page_refused(at: &Mountx<'_>, page: &Resp, out: &mut Vec<Finding>) {
    let (m, subject) = (at.m, at.subject());
    let path = m.url.path();
    let host = m.url.host_str().unwrap_or_default();
    match (at.info.app.as_deref(), page.status) {
        // Jupyter checks the Host header against its local names unless told not to.
        (Some("jupyter"), 403) => add(
            out,
            Severity::Error,
            subject,
            format!("Jupyter answers 403 to its own first page: it refuses requests for {host}, a name it does not take for local"),
            Some("start it with --ServerApp.allow_remote_access=True (c.ServerApp.allow_remote_access = True): edge sends the public Host, and Jupyter listens on loopback behind it".into()),
        ),
        (_, 404) => add(
            out,
            Severity::Error,
            subject,
            format!("the app answers 404 at {path}: it does not serve its pages under {path}"),
            Some(format!(
                "set {}; or, for an app that serves at its own root, the route's prefix = \"strip\"",
                at.setting()
            )),
        ),
        _ => {}
    }
}

/// `%2F` and `%25` in a path reach the app as sent (edge forwards the raw path; a proxy
/// between edge and the app may decode it). Told from the answer only when the app echoes the
/// path it received (in a `Location` or its page).
async fn percent_round_trip(at: &Mountx<'_>, out: &mut Vec<Finding>) {
    const PROBE: &str = "edge-doctor-a%2Fb%25c";
    let Ok(url) = at.m.url.join(PROBE) else {
        return;
    };
    let Ok(r) = at
        .client
        .request(Method::GET, &url, &at.headers(PAGE))
        .await
    else {
        return;
    };
    let mut seen = String::from_utf8_lossy(&r.body).into_owned();
    if let Some(l) = r.header("location") {
        seen.push_str(l);
    }
    let lower = seen.to_ascii_lowercase();
    if edge_page(&r) && r.status == 400 {
        add(
            out,
            Severity::Error,
            at.subject(),
            format!("edge refused {}: a path with %2F", url.path()),
            Some("see edge's log for why".into()),
        );
    } else if lower.contains("edge-doctor-a%2fb%25c") {
        add(
            out,
            Severity::Info,
            at.subject(),
            "%2F and %25 reach the app as sent".into(),
            None,
        );
    } else if lower.contains("edge-doctor-a/b") {
        add(
            out,
            Severity::Error,
            at.subject(),
            format!("{} reaches the app decoded, as edge-doctor-a/b...: names with a slash (Forgejo branches and packages, Jupyter paths) break", url.path()),
            Some("something between edge and the app decodes the path: an nginx there must pass it raw (`proxy_pass http://app;` without a URI part); edge itself forwards it as received".into()),
        );
    }
}

/// The app's WebSocket and event-stream endpoints, handshaken through edge: that edge lets the
/// upgrade or the stream through (the app may still ask for its own sign-in).
async fn streams(at: &Mountx<'_>, app: &str, out: &mut Vec<Finding>) {
    // (path inside the mount, WebSocket or event stream)
    let ends: &[(&str, bool)] = match app {
        "jupyter" => &[("api/events/subscribe", true)],
        "grafana" => &[("api/live/ws", true)],
        "woodpecker" => &[("api/stream/events", false)],
        "forgejo" => &[("user/events", false)],
        _ => &[],
    };
    let own = crate::checks::origin(&at.m.url);
    for (path, ws) in ends {
        let Ok(url) = at.m.url.join(path) else {
            continue;
        };
        let kind = if *ws {
            "a WebSocket"
        } else {
            "an event stream"
        };
        let r = if *ws {
            at.client
                .websocket(&url, &at.headers(&[("origin", &own)]))
                .await
        } else {
            at.client
                .stream_start(
                    &url,
                    &at.headers(&[
                        ("accept", "text/event-stream"),
                        ("cache-control", "no-cache"),
                        // As browsers ask: a compressing proxy shows itself.
                        ("accept-encoding", "gzip, deflate, br"),
                    ]),
                    std::time::Duration::from_secs(1),
                )
                .await
        };
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                add(
                    out,
                    Severity::Error,
                    at.subject(),
                    format!("{kind} at {}: {e}", url.path()),
                    Some("edge or the app does not answer the handshake: see edge's log".into()),
                );
                continue;
            }
        };
        let what = format!("{kind} at {}", url.path());
        if edge_page(&r) {
            add(
                out,
                Severity::Error,
                at.subject(),
                format!("{what}: edge answered {} ({})", r.status, r.title().unwrap_or_default()),
                Some(match r.status {
                    401 | 403 => "the sign-in refused the handshake: with forward-auth, check the session and the Origin".to_string(),
                    502 | 503 => "the upstream refused or closed the connection: is the app running, and does it take upgrades there?".to_string(),
                    504 => "the app did not answer in time: the route's timeout".to_string(),
                    _ => "see edge's log".to_string(),
                }),
            );
        } else if *ws && r.status == 101 {
            add(
                out,
                Severity::Info,
                at.subject(),
                format!("{what}: opened (101)"),
                None,
            );
        } else if !*ws && r.status == 200 {
            let ct = r.header("content-type").unwrap_or_default();
            if !ct.starts_with("text/event-stream") {
                add(
                    out,
                    Severity::Warning,
                    at.subject(),
                    format!("{what}: 200 but {ct:?}, not text/event-stream"),
                    None,
                );
            } else if let Some(enc) = r.header("content-encoding") {
                add(out, Severity::Error, at.subject(), format!("{what}: compressed ({enc}), so events wait in a buffer"), Some("turn compression off for text/event-stream in the app or any proxy before it".into()));
            } else {
                add(
                    out,
                    Severity::Info,
                    at.subject(),
                    format!("{what}: streams (200, text/event-stream)"),
                    None,
                );
            }
        } else {
            add(
                out,
                Severity::Info,
                at.subject(),
                format!("{what}: the handshake reached the app, which answered {} (its own sign-in or rules)", r.status),
                None,
            );
        }
    }
}

/// Clock skew beyond this is reported.
const SKEW: i64 = 60;

/// The app's clock, by the `Date` of its answers (edge passes the upstream's on).
fn clock(subject: &str, r: &Resp, out: &mut Vec<Finding>) {
    if edge_page(r) {
        return;
    }
    let Some(date) = r
        .header("date")
        .and_then(|d| httpdate::parse_http_date(d).ok())
    else {
        return;
    };
    let now = std::time::SystemTime::now();
    let skew = match date.duration_since(now) {
        Ok(ahead) => ahead.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    if skew.abs() > SKEW
        && !out
            .iter()
            .any(|f| f.subject == subject && f.what.starts_with("the app's clock"))
    {
        add(
            out,
            Severity::Warning,
            subject,
            format!(
                "the app's clock is {} s {} this host's (its Date: {})",
                skew.abs(),
                if skew > 0 { "ahead of" } else { "behind" },
                r.header("date").unwrap_or_default()
            ),
            Some("synchronise the clock where the app runs (chrony, systemd-timesyncd): sign-in tokens, cookies and certificates are checked against it".into()),
        );
    }
}

fn list(v: &[String]) -> String {
    let shown: Vec<&str> = v.iter().take(5).map(String::as_str).collect();
    if v.len() > 5 {
        format!("{} (and {} more)", shown.join(", "), v.len() - 5)
    } else {
        shown.join(", ")
    }
}

/// The `url(...)` references of a stylesheet.
fn css_urls(css: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = css;
    while let Some(i) = rest.find("url(") {
        rest = &rest[i + 4..];
        let Some(end) = rest.find(')') else { break };
        let u = rest[..end]
            .trim()
            .trim_matches(['"', '\''])
            .trim()
            .to_string();
        if !u.is_empty() && !u.starts_with("data:") && !out.contains(&u) {
            out.push(u);
        }
        rest = &rest[end..];
    }
    out
}

/// The value after `key` in a page's script, between the quotes that follow it.
fn quoted_after<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    let i = body.find(key)? + key.len();
    let rest = &body[i..];
    let q = rest.find(['"', '\''])?;
    let quote = rest.as_bytes()[q] as char;
    let value = &rest[q + 1..];
    let end = value.find(quote)?;
    Some(&value[..end])
}

/// A known app's base URL as it shows it (its first page, its links, or `extra`: Woodpecker's
/// `web-config.js`), against the public URL.
fn app_base_url(
    app: &str,
    m: &Mount,
    body: &str,
    links: &[String],
    extra: Option<&str>,
    subject: &str,
    out: &mut Vec<Finding>,
) {
    let public = m.url.as_str();
    let path = m.url.path();
    let (key, seen, want, setting) = match app {
        // Forgejo: window.config = {appUrl: 'https://.../forge/', appSubUrl: '/forge', ...}
        "forgejo" => (
            "appUrl",
            quoted_after(body, "appUrl").map(str::to_string),
            public.to_string(),
            "ROOT_URL",
        ),
        // Jupyter: "baseUrl": "/jupyter/" in JupyterLab's page data; Jupyter Server's own
        // pages load <base_url>static/...
        "jupyter" => (
            "base_url",
            quoted_after(body, "\"baseUrl\"")
                .map(str::to_string)
                .or_else(|| {
                    links.iter().find_map(|l| {
                        let p = l.split('?').next()?;
                        let i = p.find("/static/")?;
                        p.starts_with('/').then(|| p[..=i].to_string())
                    })
                }),
            path.to_string(),
            "base_url (--ServerApp.base_url)",
        ),
        // Grafana: "appSubUrl":"/grafana" in grafanaBootData
        "grafana" => (
            "appSubUrl",
            quoted_after(body, "\"appSubUrl\"").map(str::to_string),
            path.trim_end_matches('/').to_string(),
            "root_url with serve_from_sub_path = true",
        ),
        // Woodpecker: window.WOODPECKER_ROOT_PATH = "/ci" in web-config.js, from the path of
        // WOODPECKER_HOST.
        "woodpecker" => (
            "root path",
            extra
                .and_then(|js| quoted_after(js, "WOODPECKER_ROOT_PATH"))
                .map(str::to_string),
            path.trim_end_matches('/').to_string(),
            "WOODPECKER_HOST",
        ),
        _ => return,
    };
    let want_shown = if app == "woodpecker" {
        public.trim_end_matches('/').to_string()
    } else {
        want.clone()
    };
    match seen {
        Some(s) if s == want || s.trim_end_matches('/') == want.trim_end_matches('/') => add(
            out,
            Severity::Info,
            subject,
            format!("{app}'s {key} is {s:?}, as edge serves it"),
            None,
        ),
        Some(s) => add(
            out,
            Severity::Error,
            subject,
            format!("{app}'s {key} is {s:?}, but edge serves it at {public}"),
            Some(format!("set {app}'s {setting} to {want_shown}")),
        ),
        None => add(
            out,
            Severity::Info,
            subject,
            format!("{app}'s {key} is not in its first page (another version, or not {app}?)"),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn css_urls_and_quoted_values_are_read() {
        assert_eq!(
            css_urls("a{background:url(/img/a.png)} b{src:url('x.woff') format('woff')} c{d:url(data:x)}"),
            ["/img/a.png", "x.woff"]
        );
        let page = "<script>window.config = {appUrl: 'https://demo.example.test/forge/', appSubUrl: '/forge'};</script>";
        assert_eq!(
            quoted_after(page, "appUrl"),
            Some("https://demo.example.test/forge/")
        );
        assert_eq!(
            quoted_after("{\"baseUrl\": \"/jupyter/\"}", "\"baseUrl\""),
            Some("/jupyter/")
        );
    }
}
