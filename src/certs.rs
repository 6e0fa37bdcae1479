//! `edge certs`: each project's certificate, where it comes from and when it renews; `edge
//! certs renew` asks a running edge to renew now. Also what the ACME task shares with them and
//! with `/metrics`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use edge_gateway::ProjectCert;
use edge_routing::{Config, IssuerKind};
use time::OffsetDateTime;

/// A Unix time as edge prints dates.
fn when(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| unix.to_string())
}

/// What the ACME task, the certificate refresher, `/metrics` and `POST /certs/renew` share.
#[derive(Debug, Default)]
pub struct CertState {
    /// The certificates being served, by project order.
    pub served: Mutex<Vec<ProjectCert>>,
    pub orders_ok: AtomicU64,
    pub orders_failed: AtomicU64,
    /// Projects asked to renew now (`edge certs renew`).
    pub forced: Mutex<HashSet<String>>,
    pub wake: tokio::sync::Notify,
    /// Each ACME project's renewal plan and failures.
    pub renewals: Mutex<HashMap<String, Renewal>>,
}

/// An ACME project's renewal: when, why, and how its failures stand.
#[derive(Debug, Clone, Default)]
pub struct Renewal {
    /// The certificate this plan is for.
    pub chain: Option<String>,
    pub at: Option<OffsetDateTime>,
    pub why: String,
    /// When the CA's renewal window is to be asked again.
    pub ari_next: Option<tokio::time::Instant>,
    /// Failed orders in a row; the backoff reached; when the next order may go, and why then.
    pub failures: u32,
    pub backoff: Option<std::time::Duration>,
    pub next_try: Option<OffsetDateTime>,
    pub next_try_why: String,
}

/// What `renewal.json` holds, for `edge certs`.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RenewalFile {
    pub at: Option<i64>,
    pub why: String,
    pub failures: u32,
    pub next_try: Option<i64>,
    pub next_try_why: String,
}

impl CertState {
    /// `project`'s renewal plan (a default one if none yet).
    pub fn renewal(&self, project: &str) -> Renewal {
        self.renewals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(project)
            .cloned()
            .unwrap_or_default()
    }

    /// Keeps `r` as `project`'s plan, and writes it for `edge certs` when it changed.
    pub fn set_renewal(&self, state_dir: &Path, project: &str, r: Renewal) {
        let file = RenewalFile {
            at: r.at.map(OffsetDateTime::unix_timestamp),
            why: r.why.clone(),
            failures: r.failures,
            next_try: r.next_try.map(OffsetDateTime::unix_timestamp),
            next_try_why: r.next_try_why.clone(),
        };
        let mut all = self.renewals.lock().unwrap_or_else(|e| e.into_inner());
        let changed = all.get(project).is_none_or(|old| {
            (old.at, &old.why, old.failures, old.next_try) != (r.at, &r.why, r.failures, r.next_try)
        });
        all.insert(project.to_string(), r);
        drop(all);
        if changed {
            let path = renewal_path(state_dir, project);
            let json = serde_json::to_vec_pretty(&file).unwrap_or_default();
            if let Err(e) = edge_certs::write_atomic(&path, &json, 0o644) {
                tracing::warn!(error = %e, "could not record the renewal plan for edge certs");
            }
        }
    }

    /// Prometheus text: each served certificate's expiry, and ACME orders by result.
    pub fn metrics(&self, config: &Config) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        o.push_str("# HELP edge_cert_expiry_timestamp_seconds When the certificate served for each project expires (Unix time).\n");
        o.push_str("# TYPE edge_cert_expiry_timestamp_seconds gauge\n");
        let served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        for (i, c) in served.iter().enumerate() {
            let (Some(p), Ok(info)) = (config.projects.get(i), edge_certs::inspect(&c.chain_pem))
            else {
                continue;
            };
            let _ = writeln!(
                o,
                "edge_cert_expiry_timestamp_seconds{{project=\"{}\",issuer=\"{}\"}} {}",
                p.name,
                config.issuer_of(i).as_str(),
                info.not_after.unix_timestamp()
            );
        }
        drop(served);
        let renewals = self.renewals.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<&String> = renewals.keys().collect();
        names.sort();
        o.push_str("# HELP edge_cert_renewal_timestamp_seconds When each ACME project's certificate is planned to renew (Unix time).\n");
        o.push_str("# TYPE edge_cert_renewal_timestamp_seconds gauge\n");
        for n in &names {
            if let Some(at) = renewals[*n].at {
                let _ = writeln!(
                    o,
                    "edge_cert_renewal_timestamp_seconds{{project=\"{n}\"}} {}",
                    at.unix_timestamp()
                );
            }
        }
        o.push_str("# HELP edge_cert_renewal_failures Failed ACME orders in a row, by project (0 once one succeeds).\n");
        o.push_str("# TYPE edge_cert_renewal_failures gauge\n");
        for n in &names {
            let _ = writeln!(
                o,
                "edge_cert_renewal_failures{{project=\"{n}\"}} {}",
                renewals[*n].failures
            );
        }
        o.push_str("# HELP edge_acme_orders_total ACME orders placed, by result.\n");
        o.push_str("# TYPE edge_acme_orders_total counter\n");
        let _ = writeln!(
            o,
            "edge_acme_orders_total{{result=\"ok\"}} {}",
            self.orders_ok.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "edge_acme_orders_total{{result=\"failed\"}} {}",
            self.orders_failed.load(Relaxed)
        );
        o
    }

    /// `POST /certs/renew[?project=NAME]`: marks ACME projects to renew at once.
    pub fn renew(&self, config: &Config, project: Option<&str>) -> Result<String, String> {
        let acme: Vec<&str> = (0..config.projects.len())
            .filter(|&i| config.issuer_of(i) == IssuerKind::Acme)
            .map(|i| config.projects[i].name.as_str())
            .collect();
        let chosen: Vec<&str> = match project {
            Some(p) if acme.contains(&p) => vec![p],
            Some(p) if config.projects.iter().any(|q| q.name == p) => {
                return Err(format!(
                    "project {p:?} does not take its certificate from ACME (its issuer is {})",
                    config
                        .issuer_of(
                            config
                                .projects
                                .iter()
                                .position(|q| q.name == p)
                                .unwrap_or(0)
                        )
                        .as_str()
                ))
            }
            Some(p) => return Err(format!("no project {p:?}")),
            None if acme.is_empty() => {
                return Err("no project takes its certificate from ACME".into())
            }
            None => acme,
        };
        let mut f = self.forced.lock().unwrap_or_else(|e| e.into_inner());
        for p in &chosen {
            f.insert(p.to_string());
        }
        self.wake.notify_one();
        Ok(format!(
            "renewing {}: `edge certs` shows the result\n",
            chosen.join(", ")
        ))
    }
}

/// Where an ACME project's renewal plan is kept for `edge certs`.
pub fn renewal_path(state_dir: &Path, project: &str) -> PathBuf {
    state_dir
        .join("certs")
        .join("acme")
        .join(project)
        .join("renewal.json")
}

/// Where the last ACME failure of a project is kept (cleared by a success).
pub fn last_error_path(state_dir: &Path, project: &str) -> PathBuf {
    state_dir
        .join("certs")
        .join("acme")
        .join(project)
        .join("last-error.txt")
}

/// `edge certs`: one block per project, read from the config and the state directory (no
/// running edge needed).
pub fn list(config: &Config, base_dir: &Path) -> String {
    let mut out = String::new();
    let now = time::OffsetDateTime::now_utc();
    for (i, p) in config.projects.iter().enumerate() {
        let issuer = config.issuer_of(i);
        let path = match issuer {
            IssuerKind::Local => config
                .state_dir
                .join("certs")
                .join(&p.name)
                .join("fullchain.pem"),
            IssuerKind::Acme => config
                .state_dir
                .join("certs")
                .join("acme")
                .join(&p.name)
                .join("fullchain.pem"),
            IssuerKind::Files => p
                .certs
                .as_ref()
                .and_then(|c| c.cert_file.as_ref())
                .map(|f| base_dir.join(f))
                .unwrap_or_default(),
        };
        out.push_str(&format!("{}  issuer: {}\n", p.name, issuer.as_str()));
        match std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|pem| edge_certs::inspect(&pem).map_err(|e| e.to_string()))
        {
            Ok(info) => {
                out.push_str(&format!("  file:      {}\n", path.display()));
                out.push_str(&format!("  names:     {}\n", info.names.join(", ")));
                out.push_str(&format!("  issued by: {}\n", info.issuer));
                let left = info.not_after - now;
                out.push_str(&format!(
                    "  not after: {} ({})\n",
                    info.not_after,
                    if left.is_negative() { "EXPIRED".to_string() } else { format!("{} days left", left.whole_days()) }
                ));
                let plan = (issuer == IssuerKind::Acme)
                    .then(|| std::fs::read(renewal_path(&config.state_dir, &p.name)).ok())
                    .flatten()
                    .and_then(|b| serde_json::from_slice::<RenewalFile>(&b).ok());
                if let Some(at) = plan.as_ref().and_then(|r| r.at) {
                    let why = plan.as_ref().map(|r| r.why.as_str()).unwrap_or("");
                    out.push_str(&format!("  renews:    at {} ({why})\n", when(at)));
                } else if issuer != IssuerKind::Files {
                    let renew = info.not_after - (info.not_after - info.not_before) / 3;
                    out.push_str(&format!("  renews:    from {renew}\n"));
                } else {
                    out.push_str("  renews:    yours to replace; edge re-reads the files\n");
                }
            }
            Err(e) if issuer == IssuerKind::Acme => out.push_str(&format!(
                "  none yet ({e}): the local CA's certificate stands in until the first order succeeds\n"
            )),
            Err(e) => out.push_str(&format!("  {}: {e}\n", path.display())),
        }
        if issuer == IssuerKind::Acme {
            if let Ok(e) = std::fs::read_to_string(last_error_path(&config.state_dir, &p.name)) {
                out.push_str(&format!("  last error: {}\n", e.trim()));
                let plan = std::fs::read(renewal_path(&config.state_dir, &p.name))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<RenewalFile>(&b).ok());
                if let Some((n, why)) = plan.and_then(|r| Some((r.next_try?, r.next_try_why))) {
                    out.push_str(&format!("  next try:  {} ({why})\n", when(n)));
                }
            }
        }
    }
    out
}
