//! `edge doctor`: subpath mistakes found through the gateway before users find them. For each
//! mount: redirects (loops, `Location`s to the upstream's own address or without the prefix),
//! the first page's links, forms, scripts and stylesheets (absolute paths outside the mount,
//! the upstream's own address), `url(...)` in its stylesheets, cookies scoped outside the
//! mount, and for known apps their base-URL setting as the page shows it.

use http::Method;
use serde::Serialize;
use url::Url;

use crate::checks::{edge_page, follow, PAGE};
use crate::client::{Client, Resp};
use crate::{Mount, Plan};

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

/// Examines every mount of `plan` (`info` in the same order as the plan's mounts, site by site).
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
        // Paths that are some mount's (or a root path's): links there are fine.
        let known: Vec<String> = site
            .mounts
            .iter()
            .filter(|m| m.url.host_str() == site.base.host_str())
            .map(|m| m.url.path().to_string())
            .collect();
        for (mi, m) in site.mounts.iter().enumerate() {
            if m.chat {
                continue;
            }
            let mi_info = info
                .get(si)
                .and_then(|v| v.get(mi))
                .cloned()
                .unwrap_or_default();
            examine_mount(&client, m, &mi_info, &hosts, &known, &mut out).await;
        }
    }
    out
}

async fn examine_mount(
    client: &Client,
    m: &Mount,
    info: &MountInfo,
    hosts: &[String],
    known: &[String],
    out: &mut Vec<Finding>,
) {
    let subject = m.url.as_str();
    let setting = info
        .setting
        .clone()
        .unwrap_or_else(|| format!("the app's base URL to {}", m.url));
    let walk = match follow(client, &m.url, PAGE, hosts).await {
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
        add(
            out,
            Severity::Error,
            subject,
            what.clone(),
            Some(fix.clone()),
        );
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
    }
    let Some((page_url, page)) = &walk.last else {
        return;
    };
    let html = page
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/html"));
    if !(200..300).contains(&page.status) || !html || edge_page(page) {
        return;
    }
    let body = String::from_utf8_lossy(&page.body).into_owned();
    // Absolute paths outside the mount, and the upstream's own address.
    let mut outside = Vec::new();
    let mut internal = Vec::new();
    for link in crate::page::urls(&page.body) {
        let Ok(u) = page_url.join(&link) else {
            continue;
        };
        if u.host_str() == m.url.host_str()
            && u.port_or_known_default() == m.url.port_or_known_default()
        {
            if outside_mount(m, u.path(), known) && !outside.contains(&link) {
                outside.push(link);
            }
        } else if u.host_str().is_some_and(crate::checks::internal_host)
            && !internal.contains(&link)
        {
            internal.push(link);
        }
    }
    if let Some(up) = &info.upstream {
        if body.contains(up.as_str()) && !internal.iter().any(|l| l.contains(up.as_str())) {
            internal.push(format!("{up} (in the page's text or scripts)"));
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
    for s in sheets {
        let Ok(r) = client
            .request(Method::GET, &s, &[("accept", "text/css")])
            .await
        else {
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
        app_base_url(app, m, &body, subject, out);
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

/// A known app's base URL as its page shows it, against the public URL.
fn app_base_url(app: &str, m: &Mount, body: &str, subject: &str, out: &mut Vec<Finding>) {
    let public = m.url.as_str();
    let path = m.url.path();
    let (key, seen, want, setting) = match app {
        // Forgejo: window.config = {appUrl: 'https://.../forge/', appSubUrl: '/forge', ...}
        "forgejo" => (
            "appUrl",
            quoted_after(body, "appUrl"),
            public.to_string(),
            "ROOT_URL",
        ),
        // Jupyter Server: "baseUrl": "/jupyter/" in jupyter-config-data
        "jupyter" => (
            "baseUrl",
            quoted_after(body, "\"baseUrl\""),
            path.to_string(),
            "base_url (--ServerApp.base_url)",
        ),
        // Grafana: "appSubUrl":"/grafana" in grafanaBootData
        "grafana" => (
            "appSubUrl",
            quoted_after(body, "\"appSubUrl\""),
            path.trim_end_matches('/').to_string(),
            "root_url with serve_from_sub_path = true",
        ),
        _ => return,
    };
    match seen {
        Some(s) if s == want || s.trim_end_matches('/') == want.trim_end_matches('/') => add(
            out,
            Severity::Info,
            subject,
            format!("{app}'s {key} is {s}, as edge serves it"),
            None,
        ),
        Some(s) => add(
            out,
            Severity::Error,
            subject,
            format!("{app}'s {key} is {s:?}, but edge serves it at {public}"),
            Some(format!("set {app}'s {setting} to {want}")),
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
