//! `edge certs`: each project's certificate, where it comes from and when it renews; `edge
//! certs renew` asks a running edge to renew now. Also what the ACME task shares with them and
//! with `/metrics`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use edge_gateway::ProjectCert;
use edge_routing::{Config, IssuerKind};

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
}

impl CertState {
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
                if issuer != IssuerKind::Files {
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
            }
        }
    }
    out
}
