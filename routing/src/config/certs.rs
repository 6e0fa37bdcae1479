//! `[certs]` and a project's `[projects.certs]`: where each project's certificate comes from.

use std::path::PathBuf;

use crate::walk::{Errors, Table};

/// Who issues a project's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuerKind {
    /// edge's own CA in the state directory (trusted only where it is installed).
    Local,
    /// An RFC 8555 CA (Let's Encrypt, ZeroSSL, a private step-ca, Pebble...).
    Acme,
    /// PEM files the operator provides; edge reads and watches them and never writes them.
    Files,
}

impl IssuerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IssuerKind::Local => "local",
            IssuerKind::Acme => "acme",
            IssuerKind::Files => "files",
        }
    }
}

/// How the CA checks that edge controls a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// A TXT record at `_acme-challenge.<name>`: wildcards included.
    Dns01,
    /// A file under `http://<name>/.well-known/acme-challenge/`, served by edge's plain-HTTP
    /// listener: exact names only.
    Http01,
}

/// `[certs.acme]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The CA's directory URL.
    pub directory: String,
    pub email: Option<String>,
    /// External Account Binding, for CAs that need it: the key id and a file with the
    /// base64url HMAC key.
    pub eab_kid: Option<String>,
    pub eab_hmac_file: Option<PathBuf>,
    /// Extra roots (PEM) to trust for the CA's own API (a private or test CA).
    pub ca_roots: Option<PathBuf>,
    /// How long one request to the CA may take before the order fails (default 30 s): a CA
    /// that accepts connections and never answers does not hold an order forever.
    pub request_timeout: std::time::Duration,
    pub challenge: ChallengeKind,
    /// `[certs.acme.dns]`: how DNS-01's TXT records are set; required with dns-01.
    pub dns: Option<DnsConfig>,
}

/// `[certs.acme.dns]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    pub provider: DnsProvider,
    /// The servers (`IP:port`) asked directly until each answers the TXT record, before the CA
    /// is told to look. Empty (the default): the zone's authoritative servers, found from its NS
    /// records through `resolver`, plus the rfc2136 `server`.
    pub nameservers: Vec<std::net::SocketAddr>,
    /// The recursive resolver (`IP:port`) the zone's NS records are looked up through (default:
    /// the first `nameserver` of `/etc/resolv.conf`).
    pub resolver: Option<std::net::SocketAddr>,
    /// How long records may take to appear on every server (default 2 minutes).
    pub propagation_timeout: std::time::Duration,
}

/// Who sets and clears the TXT records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsProvider {
    /// A program run as `argv` with `{action}` (`set` or `clear`), `{fqdn}` and `{value}`
    /// replaced: for any DNS API (a script around `knsupdate`, `nsupdate`, a provider's CLI).
    Command {
        argv: Vec<String>,
        /// The zone the records go in, if known; else found from the SOA a resolver answers.
        zone: Option<String>,
    },
    /// RFC 2136 dynamic updates sent by edge itself to the zone's primary `server`, signed with
    /// TSIG (RFC 8945).
    Rfc2136 {
        server: std::net::SocketAddr,
        zone: String,
        tsig_name: String,
        /// `hmac-sha256`, `hmac-sha384` or `hmac-sha512`.
        tsig_algorithm: String,
        /// A file holding the base64 TSIG secret (as `tsig-keygen` or `keymgr` print it).
        tsig_secret_file: PathBuf,
    },
}

/// `[certs]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertsConfig {
    pub issuer: IssuerKind,
    pub acme: Option<AcmeConfig>,
}

impl Default for CertsConfig {
    fn default() -> CertsConfig {
        CertsConfig {
            issuer: IssuerKind::Local,
            acme: None,
        }
    }
}

/// `[projects.certs]`: a project's own issuer, and its files for `issuer = "files"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectCerts {
    pub issuer: Option<IssuerKind>,
    /// The PEM chain (leaf first) and its key; relative paths are under the config's directory.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

fn issuer(t: &mut Table<'_>, errs: &mut Errors) -> Option<IssuerKind> {
    match t.str(errs, "issuer")? {
        "local" => Some(IssuerKind::Local),
        "acme" => Some(IssuerKind::Acme),
        "files" => Some(IssuerKind::Files),
        other => {
            errs.push(
                t.key("issuer"),
                format!("{other:?}: use \"local\", \"acme\" or \"files\""),
            );
            None
        }
    }
}

fn path(t: &mut Table<'_>, errs: &mut Errors, key: &'static str) -> Option<PathBuf> {
    let v = t.str(errs, key)?;
    if v.is_empty() {
        errs.push(t.key(key), "must not be empty");
        return None;
    }
    Some(PathBuf::from(v))
}

pub(super) fn read_certs(t: Option<Table<'_>>, errs: &mut Errors) -> CertsConfig {
    let Some(mut t) = t else {
        return CertsConfig::default();
    };
    let mut c = CertsConfig {
        issuer: issuer(&mut t, errs).unwrap_or(IssuerKind::Local),
        acme: None,
    };
    if let Some(mut a) = t.table(errs, "acme") {
        let directory = a.str(errs, "directory").map(str::to_string);
        match &directory {
            Some(d) if !(d.starts_with("https://") || d.starts_with("http://")) => errs.push(
                a.key("directory"),
                format!("{d:?} is not an http(s) URL of an ACME directory"),
            ),
            None => errs.push(
                a.key("directory"),
                "the CA's directory URL is needed, e.g. \"https://acme-v02.api.letsencrypt.org/directory\"",
            ),
            _ => {}
        }
        let email = a.str(errs, "email").map(str::to_string);
        if let Some(e) = &email {
            if !e.contains('@') || e.contains(char::is_whitespace) {
                errs.push(a.key("email"), format!("{e:?} is not an email address"));
            }
        }
        let eab_kid = a.str(errs, "eab_kid").map(str::to_string);
        let eab_hmac_file = path(&mut a, errs, "eab_hmac_file");
        if eab_kid.is_some() != eab_hmac_file.is_some() {
            let missing = if eab_kid.is_some() {
                "eab_hmac_file"
            } else {
                "eab_kid"
            };
            errs.push(
                a.key(missing),
                "External Account Binding needs both eab_kid and eab_hmac_file",
            );
        }
        let ca_roots = path(&mut a, errs, "ca_roots");
        let request_timeout = a
            .parsed(errs, "request_timeout", crate::units::parse_duration)
            .unwrap_or(std::time::Duration::from_secs(30));
        let has_dns = a.has("dns");
        let challenge = match a.str(errs, "challenge") {
            None if has_dns => ChallengeKind::Dns01,
            None | Some("http-01") => ChallengeKind::Http01,
            Some("dns-01") => ChallengeKind::Dns01,
            Some(other) => {
                errs.push(
                    a.key("challenge"),
                    format!("{other:?}: use \"dns-01\" (wildcards) or \"http-01\" (exact names)"),
                );
                ChallengeKind::Http01
            }
        };
        let dns = a.table(errs, "dns").and_then(|d| read_dns(d, errs));
        if challenge == ChallengeKind::Dns01 && dns.is_none() && !has_dns {
            errs.push(
                a.key("dns"),
                "challenge = \"dns-01\" needs [certs.acme.dns] (provider = \"command\" with command = [...])",
            );
        }
        a.finish(errs);
        if let Some(directory) = directory {
            c.acme = Some(AcmeConfig {
                directory,
                email,
                eab_kid,
                eab_hmac_file,
                ca_roots,
                request_timeout,
                challenge,
                dns,
            });
        }
    }
    if c.issuer == IssuerKind::Acme && c.acme.is_none() && !errs_has(errs, "certs.acme") {
        errs.push(
            t.key("acme"),
            "issuer = \"acme\" needs a [certs.acme] table with the CA's directory",
        );
    }
    t.finish(errs);
    c
}

fn read_dns(mut t: Table<'_>, errs: &mut Errors) -> Option<DnsConfig> {
    let provider = match t.str(errs, "provider") {
        Some("command") => {
            let argv = t.argv_template(
                errs,
                "command",
                "{value}",
                "provider = \"command\" needs command = [\"program\", \"{action}\", \"{fqdn}\", \"{value}\"]",
                "the command never receives the record: put \"{value}\" (and \"{action}\", \"{fqdn}\") in it",
            );
            let zone = t
                .str(errs, "zone")
                .map(|z| z.trim_end_matches('.').to_ascii_lowercase());
            Some(DnsProvider::Command { argv, zone })
        }
        Some("rfc2136") => {
            let server = match t.str(errs, "server") {
                Some(v) => match v.parse::<std::net::SocketAddr>() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        errs.push(
                            t.key("server"),
                            format!("{v:?} is not an IP address and port, e.g. \"192.0.2.53:53\""),
                        );
                        None
                    }
                },
                None => {
                    errs.push(
                        t.key("server"),
                        "the zone's primary server (IP:port) is needed",
                    );
                    None
                }
            };
            let zone = t
                .str(errs, "zone")
                .map(|z| z.trim_end_matches('.').to_ascii_lowercase());
            if zone.is_none() {
                errs.push(
                    t.key("zone"),
                    "the zone the records go in is needed, e.g. \"example.com\"",
                );
            }
            let tsig_name = t.str(errs, "tsig_name").map(str::to_string);
            if tsig_name.is_none() {
                errs.push(t.key("tsig_name"), "the TSIG key's name is needed");
            }
            let tsig_algorithm = t
                .str(errs, "tsig_algorithm")
                .unwrap_or("hmac-sha256")
                .to_string();
            if !["hmac-sha256", "hmac-sha384", "hmac-sha512"].contains(&tsig_algorithm.as_str()) {
                errs.push(
                    t.key("tsig_algorithm"),
                    format!("{tsig_algorithm:?}: use \"hmac-sha256\", \"hmac-sha384\" or \"hmac-sha512\""),
                );
            }
            let tsig_secret_file = path(&mut t, errs, "tsig_secret_file");
            if tsig_secret_file.is_none() && !t.has("tsig_secret_file") {
                errs.push(
                    t.key("tsig_secret_file"),
                    "the file holding the TSIG secret (base64) is needed",
                );
            }
            match (server, zone, tsig_name, tsig_secret_file) {
                (Some(server), Some(zone), Some(tsig_name), Some(tsig_secret_file)) => {
                    Some(DnsProvider::Rfc2136 {
                        server,
                        zone,
                        tsig_name,
                        tsig_algorithm,
                        tsig_secret_file,
                    })
                }
                _ => None,
            }
        }
        Some(other) => {
            errs.push(
                t.key("provider"),
                format!("{other:?}: use \"rfc2136\" or \"command\""),
            );
            None
        }
        None => {
            errs.push(
                t.key("provider"),
                "name the DNS provider: \"rfc2136\" or \"command\"",
            );
            None
        }
    };
    let mut nameservers = Vec::new();
    for (i, ns) in t
        .strings(errs, "nameservers")
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        match ns.parse::<std::net::SocketAddr>() {
            Ok(a) => nameservers.push(a),
            Err(_) => errs.push(
                t.key(&format!("nameservers[{i}]")),
                format!("{ns:?} is not an IP address and port, e.g. \"192.0.2.53:53\""),
            ),
        }
    }
    let propagation_timeout = t
        .parsed(errs, "propagation_timeout", crate::units::parse_duration)
        .unwrap_or(std::time::Duration::from_secs(120));
    let resolver = t.str(errs, "resolver").and_then(|v| match v.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(
                t.key("resolver"),
                format!("{v:?} is not an IP address and port, e.g. \"192.0.2.53:53\""),
            );
            None
        }
    });
    t.finish(errs);
    Some(DnsConfig {
        provider: provider?,
        nameservers,
        resolver,
        propagation_timeout,
    })
}

fn errs_has(errs: &Errors, prefix: &str) -> bool {
    errs.0.iter().any(|e| e.key.starts_with(prefix))
}

pub(super) fn read_project_certs(mut t: Table<'_>, errs: &mut Errors) -> ProjectCerts {
    let c = ProjectCerts {
        issuer: issuer(&mut t, errs),
        cert_file: path(&mut t, errs, "cert_file"),
        key_file: path(&mut t, errs, "key_file"),
    };
    if c.issuer == Some(IssuerKind::Files) {
        for (key, v) in [("cert_file", &c.cert_file), ("key_file", &c.key_file)] {
            if v.is_none() {
                errs.push(
                    t.key(key),
                    "issuer = \"files\" needs cert_file and key_file (PEM)",
                );
            }
        }
    } else if c.cert_file.is_some() || c.key_file.is_some() {
        errs.push(
            t.key("issuer"),
            "cert_file and key_file are read with issuer = \"files\"",
        );
    }
    t.finish(errs);
    c
}
