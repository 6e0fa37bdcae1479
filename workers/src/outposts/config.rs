//! The outposts of a config (`[[outposts]]`) as links are made to them: SSH command lines, HTTP
//! clients with their CA, client certificate and token, Nomad API clients.

use std::path::Path;
use std::time::Duration;

use super::{CommandTarget, HttpTarget, NomadTarget, Outpost, Via};

/// The outposts of a config as the orchestrator runs them: `local` runs `local` (the binary's own worker command),
/// `ssh` runs the system `ssh` with the key, a known_hosts file holding only the pinned host
/// key (written into `dir`), and no fallback to anything else.
pub fn from_config(
    list: &[edge_routing::OutpostConfig],
    state_dir: &Path,
    dir: &Path,
    local: &[String],
) -> Result<Vec<Outpost>, String> {
    let mut out = Vec::new();
    for o in list {
        let via: Via = match &o.kind {
            edge_routing::OutpostKind::Local => std::sync::Arc::new(CommandTarget {
                argv: local.to_vec(),
            }),
            edge_routing::OutpostKind::Http {
                url,
                token_file,
                ca,
                client_cert,
            } => {
                let name = &o.name;
                let token = token_file
                    .as_ref()
                    .map(|f| read_token(state_dir, f, &format!("outposts {name:?} token_file")))
                    .transpose()?;
                let mut b = api_client().tcp_nodelay(true).http1_only();
                if let Some(ca) = ca {
                    let pem = std::fs::read(state_dir.join(ca))
                        .map_err(|e| format!("outposts {name:?} ca {}: {e}", ca.display()))?;
                    let certs = reqwest::Certificate::from_pem_bundle(&pem)
                        .map_err(|e| format!("outposts {name:?} ca {}: {e}", ca.display()))?;
                    b = b.tls_built_in_root_certs(false);
                    for c in certs {
                        b = b.add_root_certificate(c);
                    }
                }
                if let Some((cert, key)) = client_cert {
                    let mut pem = std::fs::read(state_dir.join(cert)).map_err(|e| {
                        format!("outposts {name:?} client_cert {}: {e}", cert.display())
                    })?;
                    pem.push(b'\n');
                    pem.extend(std::fs::read(state_dir.join(key)).map_err(|e| {
                        format!("outposts {name:?} client_key {}: {e}", key.display())
                    })?);
                    let id = reqwest::Identity::from_pem(&pem)
                        .map_err(|e| format!("outposts {name:?} client_cert/client_key: {e}"))?;
                    b = b.identity(id);
                }
                let client = b.build().map_err(|e| format!("outposts {name:?}: {e}"))?;
                std::sync::Arc::new(HttpTarget {
                    url: url.clone(),
                    token,
                    client,
                })
            }
            edge_routing::OutpostKind::Nomad {
                address,
                token_file,
                job,
                task,
                namespace,
            } => {
                let name = &o.name;
                let token = token_file
                    .as_ref()
                    .map(|f| read_token(state_dir, f, &format!("outposts {name:?} token_file")))
                    .transpose()?;
                let client = api_client()
                    .build()
                    .map_err(|e| format!("outposts {name:?}: {e}"))?;
                std::sync::Arc::new(NomadTarget {
                    address: address.clone(),
                    token,
                    job: job.clone(),
                    task: task.clone(),
                    namespace: namespace.clone(),
                    client,
                })
            }
            edge_routing::OutpostKind::Ssh {
                host,
                port,
                user,
                key,
                host_key,
            } => {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                let known = dir.join(format!("{}.known_hosts", o.name));
                let pattern = if *port == 22 {
                    host.clone()
                } else {
                    format!("[{host}]:{port}")
                };
                crate::write_private(&known, format!("{pattern} {host_key}\n").as_bytes())
                    .map_err(|e| format!("{}: {e}", known.display()))?;
                let opt = |k: &str, v: &str| ["-o".to_string(), format!("{k}={v}")];
                let mut a = vec![
                    "ssh".to_string(),
                    "-T".into(),
                    "-p".into(),
                    port.to_string(),
                    "-i".into(),
                    key.display().to_string(),
                ];
                for (k, v) in [
                    ("BatchMode", "yes"),
                    ("IdentitiesOnly", "yes"),
                    ("IdentityAgent", "none"),
                    ("StrictHostKeyChecking", "yes"),
                    ("UserKnownHostsFile", &known.display().to_string()),
                    ("GlobalKnownHostsFile", "/dev/null"),
                    ("ConnectTimeout", "10"),
                    ("ServerAliveInterval", "10"),
                    ("ServerAliveCountMax", "3"),
                    ("LogLevel", "ERROR"),
                    // One SSH connection per outpost, shared by its runs (each its own
                    // channel, so its own worker): a run skips the key exchange and login.
                    ("ControlMaster", "auto"),
                    (
                        "ControlPath",
                        &dir.join(format!("{}.mux", o.name)).display().to_string(),
                    ),
                    ("ControlPersist", "120"),
                ] {
                    a.extend(opt(k, v));
                }
                a.push(format!("{user}@{host}"));
                // What the forced command runs anyway; says what is wanted without one.
                a.push("edge worker --stdio".into());
                std::sync::Arc::new(CommandTarget { argv: a })
            }
        };
        out.push(Outpost {
            name: o.name.clone(),
            via,
            capacity: o.capacity,
        });
    }
    Ok(out)
}

/// What every outpost's HTTP client has: bounded connects, keepalive, no redirects followed
/// (a worker or Nomad that redirects is misconfigured, and a redirect could carry the token
/// elsewhere).
fn api_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .tcp_keepalive(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
}

/// A token from a file (relative paths: under the state directory), trimmed; an empty one is
/// an error, so a missing secret never means "no auth".
fn read_token(state_dir: &Path, file: &Path, what: &str) -> Result<String, String> {
    let path = state_dir.join(file);
    let t =
        std::fs::read_to_string(&path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let t = t.trim();
    if t.is_empty() {
        return Err(format!("{what} {}: the file is empty", path.display()));
    }
    Ok(t.to_string())
}
