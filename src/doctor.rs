//! `edge doctor`: the edge itself (names resolve here, listeners, the sandbox, the outposts),
//! then each mount through the gateway (`edge_smoke::doctor`), as plain-language findings with
//! a severity.

use std::net::TcpListener;
use std::process::Command;

use anyhow::Context as _;
use edge_smoke::doctor::{Finding, MountInfo, Severity};

use crate::cli::{Failure, Loaded};

fn finding(severity: Severity, subject: &str, what: String, fix: Option<String>) -> Finding {
    Finding {
        severity,
        subject: subject.to_string(),
        what,
        fix,
    }
}

/// Whether this host's clock is kept synchronised, as systemd's `timedatectl` tells.
fn clock() -> Finding {
    let now = httpdate::fmt_http_date(std::time::SystemTime::now());
    match Command::new("timedatectl")
        .args(["show", "--property=NTPSynchronized", "--value"])
        .output()
    {
        Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "yes" => finding(
            Severity::Info,
            "edge",
            format!("the clock is synchronised (timedatectl); it says {now}"),
            None,
        ),
        Ok(o) if o.status.success() => finding(
            Severity::Warning,
            "edge",
            format!("the clock is not synchronised (timedatectl: NTPSynchronized={}); it says {now}", String::from_utf8_lossy(&o.stdout).trim()),
            Some("enable time synchronisation (`timedatectl set-ntp true`, chrony): certificates, sign-in links and sessions are checked against this clock".into()),
        ),
        Ok(o) => finding(
            Severity::Info,
            "edge",
            format!(
                "whether the clock is synchronised could not be told (timedatectl: {}); it says {now}",
                String::from_utf8_lossy(&o.stderr).lines().next().unwrap_or("no answer").trim()
            ),
            None,
        ),
        Err(_) => finding(
            Severity::Info,
            "edge",
            format!("whether the clock is synchronised could not be told (no timedatectl here); it says {now}"),
            None,
        ),
    }
}

/// `edge doctor [--config FILE] [--json]`.
pub fn run(loaded: Loaded, json: bool) -> Result<(), Failure> {
    let config = &loaded.config;
    let config_arg = loaded
        .path
        .as_ref()
        .map(|p| format!(" --config {}", p.display()))
        .unwrap_or_default();
    let plan = crate::smoke::plan_from_config(config, String::new(), loaded.path.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut findings = Vec::new();

    // Names: browsers on this host reach the projects only if their names resolve.
    for site in &plan.sites {
        let mut names: Vec<String> = std::iter::once(&site.base)
            .chain(site.mounts.iter().map(|m| &m.url))
            .filter_map(|u| u.host_str().map(str::to_string))
            .collect();
        names.dedup();
        for n in names {
            let resolves = rt
                .block_on(tokio::net::lookup_host((n.as_str(), 443)))
                .is_ok_and(|mut a| a.next().is_some());
            let localhost = n == "localhost" || n.ends_with(".localhost");
            match resolves {
                true => {}
                // Browsers take every *.localhost name for loopback themselves (RFC 6761).
                false if localhost => findings.push(finding(
                    Severity::Info,
                    "edge",
                    format!("{n} does not resolve here, but browsers send every *.localhost name to this host themselves"),
                    Some(format!("for curl and other tools: --resolve {n}:<port>:127.0.0.1, or an /etc/hosts line")),
                )),
                false => findings.push(finding(
                    Severity::Warning,
                    "edge",
                    format!("{n} does not resolve on this host"),
                    Some(format!(
                        "add DNS records for {n} (and *.{n} for subdomain routing) pointing at the edge, or an /etc/hosts line for a local test"
                    )),
                )),
            }
        }
    }

    // The clock: certificates, sign-in tokens and cookies are all checked against it (the
    // apps' clocks are compared with this one through the gateway, below).
    findings.push(clock());

    // Listeners: the edge answering (its admin listener's /healthz when it has one: something
    // else may hold the HTTPS port), or its ports free for it.
    let running = match config.listen.admin {
        Some(a) => crate::up::admin_get(&a.to_string(), "/healthz").is_ok(),
        None => plan.dial.is_some_and(|a| {
            std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)).is_ok()
        }),
    };
    if !running {
        for (what, addr) in [
            ("listen.https", config.listen.https),
            ("listen.http", config.listen.http),
            ("listen.admin", config.listen.admin),
        ] {
            let Some(a) = addr else { continue };
            if let Err(e) = TcpListener::bind(a) {
                findings.push(finding(
                    Severity::Error,
                    "edge",
                    format!("{what} {a} cannot be bound: {e}"),
                    Some(
                        "another program holds the port: stop it, or choose another address".into(),
                    ),
                ));
            }
        }
        findings.push(finding(
            Severity::Warning,
            "edge",
            "the edge is not answering on its HTTPS listener: the mounts were not examined".into(),
            Some(format!(
                "start it with `edge up{config_arg}`, then run `edge doctor{config_arg}` again"
            )),
        ));
    }

    // The sandbox and the outposts, when the chat runs agents.
    let exe = std::env::current_exe().context("finding edge's own program")?;
    if config.chat.as_ref().is_some_and(|c| c.agent.is_some()) {
        let mut cmd = Command::new(&exe);
        cmd.args(["sandbox", "verify", "--json"]);
        if let Some(p) = &loaded.path {
            cmd.arg("--config").arg(p);
        }
        if let Some(a) = config.chat.as_ref().and_then(|c| c.agent.as_ref()) {
            cmd.args(["--profile", &a.sandbox]);
        }
        let out = cmd.output().context("running edge sandbox verify")?;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        // The layers not enforced and the probes that got through, each with why.
        let mut failing: Vec<String> = Vec::new();
        for l in report["layers"].as_array().into_iter().flatten() {
            if l["state"] != "enforced" {
                failing.push(format!(
                    "{} {} ({})",
                    l["layer"].as_str().unwrap_or("?"),
                    l["state"].as_str().unwrap_or("?"),
                    l["detail"].as_str().unwrap_or("")
                ));
            }
        }
        for p in report["probes"].as_array().into_iter().flatten() {
            if p["held"] == false {
                failing.push(format!(
                    "probe {} got through ({})",
                    p["probe"].as_str().unwrap_or("?"),
                    p["detail"].as_str().unwrap_or("")
                ));
            }
        }
        if out.status.success() {
            findings.push(finding(
                Severity::Info,
                "edge",
                "edge sandbox verify: every required layer holds".into(),
                None,
            ));
        } else {
            findings.push(finding(
                Severity::Error,
                "edge",
                format!(
                    "edge sandbox verify fails: {}",
                    if failing.is_empty() { String::from_utf8_lossy(&out.stderr).trim().to_string() } else { failing.join("; ") }
                ),
                Some("runs will be refused: `edge sandbox verify` says which layer and why (install bubblewrap, enable cgroups...)".into()),
            ));
        }
        for issue in crate::check::on_disk(config, &loaded.base_dir) {
            findings.push(finding(Severity::Error, "edge", issue.to_string(), None));
        }
    }
    if !config.outposts.is_empty() {
        let mut cmd = Command::new(&exe);
        cmd.args(["workers", "--probe"]);
        if let Some(p) = &loaded.path {
            cmd.arg("--config").arg(p);
        }
        let out = cmd.output().context("running edge workers --probe")?;
        if out.status.success() {
            findings.push(finding(
                Severity::Info,
                "edge",
                "edge workers --probe: every outpost answered".into(),
                None,
            ));
        } else {
            findings.push(finding(
                Severity::Error,
                "edge",
                format!(
                    "edge workers --probe: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Some("runs sent there will fail: see `edge workers --probe`".into()),
            ));
        }
    }

    // Each mount, through the gateway.
    if running {
        let info: Vec<Vec<MountInfo>> = config
            .projects
            .iter()
            .enumerate()
            .map(|(pi, p)| {
                p.routes
                    .iter()
                    .enumerate()
                    .map(|(ri, r)| {
                        let url = config.mount_url(pi, ri);
                        let path = match config.routing {
                            edge_routing::RoutingMode::Subpath => format!("/{}/", r.mount),
                            edge_routing::RoutingMode::Subdomain => "/".to_string(),
                        };
                        MountInfo {
                            app: r.app.map(|a| a.name().to_string()),
                            upstream: match &r.target {
                                edge_routing::RouteTarget::Upstream(u) => Some(u.authority.clone()),
                                _ => None,
                            },
                            setting: r.app.map(|a| {
                                a.settings(&url, &path)
                                    .into_iter()
                                    .map(|(k, v)| format!("{k} = {v}"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            }),
                        }
                    })
                    .collect()
            })
            .collect();
        findings.extend(rt.block_on(edge_smoke::doctor::examine(&plan, &info)));
    }

    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    if json {
        println!(
            "{}",
            serde_json::json!({"ok": errors == 0, "errors": errors, "warnings": warnings, "findings": findings})
        );
    } else {
        for f in &findings {
            let tag = match f.severity {
                Severity::Error => "error  ",
                Severity::Warning => "warning",
                Severity::Info => "ok     ",
            };
            println!("{tag} {}: {}", f.subject, f.what);
            if let Some(fix) = &f.fix {
                println!("        fix: {fix}");
            }
        }
        println!("{errors} errors, {warnings} warnings");
    }
    if errors > 0 {
        return Err(Failure::from(anyhow::anyhow!("{errors} problems found")));
    }
    Ok(())
}
