//! `edge smoke`: a deployment's checklist, run from outside against a live edge as a browser
//! would. Each check names what it saw and, when it fails, the fix:
//!
//! ```text
//! tls             per host: the chain verifies, the name matches, days left
//! http-redirect   plain HTTP answers a redirect to HTTPS (when the edge is set to)
//! root            `/` leads to the default mount without a loop
//! mount           each mount answers without a redirect loop, a Location to an internal address,
//!                 or an error page (a mount with nothing configured is a warning)
//! assets          the scripts, stylesheets, icons and images of each mount's first page load
//! auth-gate       a gated mount: 302 to sign-in for pages, 401 for fetches, no 101 without a
//!                 session, a foreign Origin refused
//! staging         an untrusted mount's responses carry a sandbox CSP and set no cookies
//! chat-websocket  signed in with a one-time link: the chat's WebSocket opens (101), and not
//!                 from a foreign Origin
//! admin           the admin listener is not served on the public one, nor bound publicly
//! ```
//!
//! The plan (hosts, mounts, what each should do) comes from the edge's config or, given only a
//! URL, from what the edge says of itself (its 404 page lists the mounts).

mod checks;
mod client;
pub mod doctor;
mod page;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use rustls::pki_types::pem::PemObject;
pub use rustls::pki_types::CertificateDer;
use serde::Serialize;

pub use checks::{discover_mounts, run};

/// The certificates of a PEM file (a CA to trust).
pub fn read_pem_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
    Skip,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Which check (`tls`, `mount`, `assets`...).
    pub check: &'static str,
    /// What it looked at: a host or a URL.
    pub subject: String,
    pub status: Status,
    /// What it saw.
    pub saw: String,
    /// What to change, when it did not pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Everything one run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was checked (`https://demo.localhost:8443/, from edge.toml`).
    pub target: String,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn count(&self, s: Status) -> usize {
        self.checks.iter().filter(|c| c.status == s).count()
    }

    /// Whether every check passed, was skipped, or only warned.
    pub fn ok(&self) -> bool {
        self.count(Status::Fail) == 0
    }

    /// The report for a terminal: one line per check, the fix under a failure or warning.
    pub fn human(&self) -> String {
        let mut out = format!("edge smoke: {}\n", self.target);
        for c in &self.checks {
            let tag = match c.status {
                Status::Pass => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
                Status::Skip => "skip",
            };
            out.push_str(&format!(
                "  {tag}  {:<14} {}: {}\n",
                c.check, c.subject, c.saw
            ));
            if let Some(f) = &c.fix {
                out.push_str(&format!("        {:<14} fix: {f}\n", ""));
            }
        }
        out.push_str(&format!(
            "{} passed, {} failed, {} warnings, {} skipped\n",
            self.count(Status::Pass),
            self.count(Status::Fail),
            self.count(Status::Warn),
            self.count(Status::Skip)
        ));
        out
    }

    pub fn json(&self) -> String {
        serde_json::json!({
            "target": self.target,
            "ok": self.ok(),
            "passed": self.count(Status::Pass),
            "failed": self.count(Status::Fail),
            "warnings": self.count(Status::Warn),
            "skipped": self.count(Status::Skip),
            "checks": self.checks,
        })
        .to_string()
    }
}

/// Makes a one-time sign-in link for a project's chat (`https://.../chat/login/token?...`).
pub type LoginFn = Box<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync,
>;

/// What to check and how to reach it.
pub struct Plan {
    /// What is checked, for the report's first line.
    pub target: String,
    /// One per project.
    pub sites: Vec<Site>,
    /// Dial the HTTPS listener here, whatever the names resolve to (`None`: resolve).
    pub dial: Option<SocketAddr>,
    /// Dial plain HTTP here; `None` with `http_redirect` set: resolve, port 80.
    pub http_dial: Option<SocketAddr>,
    /// Whether plain HTTP should answer a redirect to HTTPS (`None`: not checked).
    pub http_redirect: Option<bool>,
    /// Trusted besides the platform's roots (the edge's local CA).
    pub roots: Vec<CertificateDer<'static>>,
    /// Where the roots came from, for messages (`state/ca/localhost/ca.pem`).
    pub roots_from: Option<String>,
    pub admin: Admin,
    /// How a change to the config takes effect here (`then `edge reload``), for fixes.
    pub apply: String,
    /// Signs in to the chat for the WebSocket check (`None`: skipped).
    pub login: Option<LoginFn>,
}

impl Plan {
    /// Every host name the plan's sites and mounts are served at.
    pub(crate) fn hosts(&self) -> Vec<String> {
        self.sites
            .iter()
            .flat_map(|s| {
                std::iter::once(s.base.clone())
                    .chain(s.mounts.iter().map(|m| m.url.clone()))
                    .filter_map(|u| u.host_str().map(str::to_string))
            })
            .collect()
    }
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("target", &self.target)
            .field("sites", &self.sites)
            .field("dial", &self.dial)
            .finish_non_exhaustive()
    }
}

/// What is known of the admin listener.
#[derive(Debug, Clone)]
pub enum Admin {
    /// From the config: where it listens (`None`: off).
    Configured(Option<SocketAddr>),
    /// Unknown: try this port on the site's host (the default is 9090).
    Probe(u16),
}

/// A project's public face.
#[derive(Debug, Clone)]
pub struct Site {
    pub project: String,
    /// `https://demo.example.com/` (with the port when not 443).
    pub base: url::Url,
    /// The mount `/` should lead to.
    pub default_mount: Option<String>,
    pub mounts: Vec<Mount>,
}

/// A mount and what it should do.
#[derive(Debug, Clone)]
pub struct Mount {
    pub name: String,
    /// Its public URL (`https://demo.example.com/forge/`, or `https://forge.demo.example.com/`).
    pub url: url::Url,
    /// Behind the sign-in (`auth = "forward"`).
    pub gated: bool,
    /// Untrusted content: sandbox CSP, no cookies.
    pub untrusted: bool,
    /// The chat edge runs.
    pub chat: bool,
    /// Its key in the config (`projects[0].routes[1]`), for fixes.
    pub key: Option<String>,
    /// What it points at (`http://127.0.0.1:3000`, `./site`), for fixes.
    pub target: Option<String>,
}
