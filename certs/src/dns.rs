//! DNS-01's DNS side: TXT records set and cleared through RFC 2136 updates signed with TSIG
//! (edge's own, on hickory-proto) or a command; the zone's authoritative servers found from its
//! NS records; and the wait until every one of them answers the record, asked directly.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::{RData, RecordType};

use edge_routing::{DnsConfig, DnsProvider};

use crate::{Error, Result};

/// Sets and clears DNS-01 TXT records through the configured provider, and waits until the
/// zone's servers answer them.
pub(crate) struct Dns01<'a> {
    pub(crate) cfg: &'a DnsConfig,
    pub(crate) tsig: Option<&'a hickory_proto::dnssec::tsig::TSigner>,
}

/// The TSIG signer for `[certs.acme.dns]`'s key: its base64 secret read from `file`.
pub(crate) fn tsig_signer(
    file: &Path,
    name: &str,
    algorithm: &str,
) -> Result<hickory_proto::dnssec::tsig::TSigner> {
    use base64::Engine as _;
    use hickory_proto::dnssec::rdata::tsig::TsigAlgorithm;
    let text = std::fs::read_to_string(file).map_err(|source| Error::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let bad = |m: String| Error::BadFile {
        path: file.to_path_buf(),
        message: m,
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| bad(format!("certs.acme.dns.tsig_secret_file: not base64: {e}")))?;
    let algorithm = match algorithm {
        "hmac-sha384" => TsigAlgorithm::HmacSha384,
        "hmac-sha512" => TsigAlgorithm::HmacSha512,
        _ => TsigAlgorithm::HmacSha256,
    };
    let name = hickory_proto::rr::Name::from_ascii(name)
        .map_err(|e| Error::Acme(format!("certs.acme.dns.tsig_name {name:?}: {e}")))?;
    hickory_proto::dnssec::tsig::TSigner::new(key, algorithm, name, 300)
        .map_err(|e| Error::Acme(format!("certs.acme.dns: the TSIG key: {e}")))
}

/// Sends one RFC 2136 update (add or delete one TXT value), signed, to `server`; the server's
/// refusal in its own terms (`NOTAUTH`, `REFUSED`...) when it does not take it.
async fn rfc2136_update(
    server: std::net::SocketAddr,
    zone: &str,
    signer: &hickory_proto::dnssec::tsig::TSigner,
    add: bool,
    fqdn: &str,
    value: &str,
) -> Result<()> {
    use hickory_proto::op::{update_message, Message, ResponseCode};
    use hickory_proto::rr::rdata::TXT;
    use hickory_proto::rr::{Name, RData, RecordSet, RecordType};
    use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};
    let fail = |m: String| Error::Acme(format!("rfc2136 update at {server}: {m}"));
    let zone_name = Name::from_ascii(format!("{zone}.")).map_err(|e| fail(e.to_string()))?;
    let name = Name::from_ascii(format!("{fqdn}.")).map_err(|e| fail(e.to_string()))?;
    if !zone_name.zone_of(&name) {
        return Err(fail(format!(
            "the zone {zone} (certs.acme.dns.zone) does not contain {fqdn}"
        )));
    }
    let mut rrset = RecordSet::with_ttl(name, RecordType::TXT, 60);
    rrset.add_rdata(RData::TXT(TXT::new(vec![value.to_string()])));
    let mut m: Message = if add {
        update_message::append(rrset, zone_name, false, false)
    } else {
        update_message::delete_by_rdata(rrset, zone_name, false)
    };
    let id = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(11)
        & 0xffff) as u16;
    m.set_id(id);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0);
    m.finalize(signer, now)
        .map_err(|e| fail(format!("signing: {e}")))?;
    let bytes = m.to_bytes().map_err(|e| fail(e.to_string()))?;
    let bind = if server.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| fail(e.to_string()))?;
    sock.connect(server)
        .await
        .map_err(|e| fail(e.to_string()))?;
    sock.send(&bytes).await.map_err(|e| fail(e.to_string()))?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .map_err(|_| fail("no answer within 5 s".into()))?
        .map_err(|e| fail(e.to_string()))?;
    let answer = Message::from_bytes(&buf[..n]).map_err(|e| fail(e.to_string()))?;
    if answer.id() != id {
        return Err(fail("an answer to another message".into()));
    }
    match answer.response_code() {
        ResponseCode::NoError => Ok(()),
        ResponseCode::NotAuth => Err(fail(
            "NOTAUTH: the server did not accept the TSIG key (certs.acme.dns.tsig_name, tsig_secret_file) or is not authoritative for the zone".into(),
        )),
        ResponseCode::Refused => Err(fail(
            "REFUSED: the server's policy does not let this key update the zone".into(),
        )),
        ResponseCode::NotZone => Err(fail(format!(
            "NOTZONE: {fqdn} is not in a zone the server has (certs.acme.dns.zone)"
        ))),
        other => Err(fail(format!("the server answered {other}"))),
    }
}

/// `_acme-challenge.<name>`, the wildcard's `*.` dropped (RFC 8555 §8.4).
pub(crate) fn txt_name(identifier: &str) -> String {
    format!("_acme-challenge.{}", identifier.trim_start_matches("*."))
}

impl Dns01<'_> {
    pub(crate) async fn run(&self, action: &str, fqdn: &str, value: &str) -> Result<()> {
        let argv = match &self.cfg.provider {
            DnsProvider::Command { argv, .. } => argv,
            DnsProvider::Rfc2136 { server, zone, .. } => {
                let Some(signer) = self.tsig else {
                    return Err(Error::Acme("rfc2136 without its TSIG key".into()));
                };
                return rfc2136_update(*server, zone, signer, action == "set", fqdn, value).await;
            }
        };
        let args: Vec<String> = argv
            .iter()
            .map(|a| {
                a.replace("{action}", action)
                    .replace("{fqdn}", fqdn)
                    .replace("{value}", value)
            })
            .collect();
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(&args[0])
                .args(&args[1..])
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| {
            Error::Acme(format!(
                "certs.acme.dns.command {action} {fqdn}: no end within 60 s"
            ))
        })?
        .map_err(|e| Error::Acme(format!("certs.acme.dns.command: {}: {e}", args[0])))?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            let said = if said.trim().is_empty() {
                String::from_utf8_lossy(&out.stdout).into_owned()
            } else {
                said.into_owned()
            };
            return Err(Error::Acme(format!(
                "certs.acme.dns.command {action} {fqdn} failed ({}): {}",
                out.status,
                said.trim()
            )));
        }
        Ok(())
    }

    /// The servers to ask for a record under `fqdn`: `nameservers` when listed; else the
    /// zone's authoritative servers from its NS records (asked through `resolver`, or the
    /// system's first nameserver), with the rfc2136 primary added (it may be hidden, absent from
    /// NS). `None` when they cannot be found and there is no primary to fall back on.
    async fn servers(&self, fqdn: &str) -> Option<Vec<SocketAddr>> {
        if !self.cfg.nameservers.is_empty() {
            return Some(self.cfg.nameservers.clone());
        }
        let primary = match &self.cfg.provider {
            DnsProvider::Rfc2136 { server, .. } => Some(*server),
            DnsProvider::Command { .. } => None,
        };
        let resolver = match self.cfg.resolver.or_else(system_resolver) {
            Some(r) => r,
            None => {
                tracing::warn!("no resolver to find the zone's nameservers with: set certs.acme.dns.resolver or nameservers");
                return primary.map(|p| vec![p]);
            }
        };
        let zone = match &self.cfg.provider {
            DnsProvider::Rfc2136 { zone, .. } => Ok(zone.clone()),
            DnsProvider::Command { zone: Some(z), .. } => Ok(z.clone()),
            DnsProvider::Command { zone: None, .. } => zone_of(resolver, fqdn).await,
        };
        let found = match zone {
            Ok(zone) => authoritative_servers(resolver, &zone)
                .await
                .map(|s| (zone, s)),
            Err(e) => Err(e),
        };
        match found {
            Ok((zone, mut servers)) => {
                if let Some(p) = primary {
                    if !servers.contains(&p) {
                        servers.push(p);
                    }
                }
                tracing::info!(%zone, %resolver, ?servers, "the zone's authoritative servers");
                Some(servers)
            }
            Err(e) => {
                tracing::warn!(%resolver, error = %e, "the zone's nameservers were not found (set certs.acme.dns.nameservers to name them)");
                primary.map(|p| vec![p])
            }
        }
    }

    /// Waits until every authoritative server (see [`Dns01::servers`]) answers `fqdn` with
    /// every value in `values`, asked directly (no cache in between), or the propagation
    /// timeout passes. Servers are asked side by side; the error names the ones that did not.
    pub(crate) async fn wait_visible(&self, fqdn: &str, values: &[String]) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.cfg.propagation_timeout;
        let Some(servers) = self.servers(fqdn).await else {
            tracing::info!(%fqdn, wait = ?self.cfg.propagation_timeout, "no nameservers to ask: waiting the propagation timeout");
            tokio::time::sleep_until(deadline).await;
            return Ok(());
        };
        // Asked again soon at first (a secondary usually follows its primary's NOTIFY within
        // a second), then less often, up to every 2 s.
        let ask = |ns: SocketAddr| async move {
            let mut pause = Duration::from_millis(100);
            loop {
                let last = match txt_values(ns, fqdn).await {
                    Ok(got) if values.iter().all(|v| got.contains(v)) => return Ok(()),
                    Ok(got) => format!("it answers {got:?}"),
                    Err(e) => e,
                };
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!("{ns}: {last}"));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 3 / 2).min(Duration::from_secs(2));
            }
        };
        let results = futures_util::future::join_all(servers.iter().map(|ns| ask(*ns))).await;
        let missing: Vec<String> = results.into_iter().filter_map(|r| r.err()).collect();
        if missing.is_empty() {
            tracing::info!(%fqdn, ?servers, "DNS-01 record visible on every authoritative server");
            return Ok(());
        }
        Err(Error::Acme(format!(
            "{fqdn} TXT was not answered with the challenge within {:?} (certs.acme.dns.propagation_timeout) by {}",
            self.cfg.propagation_timeout,
            missing.join("; ")
        )))
    }
}

/// The first `nameserver` of `/etc/resolv.conf`, port 53.
fn system_resolver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("nameserver"))
            .then(|| w.next()?.parse::<std::net::IpAddr>().ok())
            .flatten()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// The zone `fqdn` is in: the owner of the SOA record a resolver answers for it (in the answer
/// section for an apex, else in the authority section).
async fn zone_of(resolver: SocketAddr, fqdn: &str) -> std::result::Result<String, String> {
    let m = query(resolver, fqdn, RecordType::SOA, true).await?;
    m.answers()
        .iter()
        .chain(m.name_servers())
        .find(|r| r.record_type() == RecordType::SOA)
        .map(|r| r.name().to_ascii().trim_end_matches('.').to_string())
        .ok_or_else(|| format!("{resolver} gives no SOA for {fqdn}, so its zone is unknown (set certs.acme.dns.zone)"))
}

/// The zone's authoritative servers: its NS names, asked through `resolver`, and each name's
/// addresses (A and AAAA, from the same resolver), on port 53.
async fn authoritative_servers(
    resolver: SocketAddr,
    zone: &str,
) -> std::result::Result<Vec<SocketAddr>, String> {
    let m = query(resolver, zone, RecordType::NS, true).await?;
    let names: Vec<String> = m
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::NS(ns) => Some(ns.0.to_ascii()),
            _ => None,
        })
        .collect();
    if names.is_empty() {
        return Err(format!("{resolver} answers no NS records for {zone}"));
    }
    let mut out = Vec::new();
    for name in &names {
        let mut found = false;
        for t in [RecordType::A, RecordType::AAAA] {
            let m = query(resolver, name.trim_end_matches('.'), t, true).await?;
            for r in m.answers() {
                let ip = match r.data() {
                    RData::A(a) => std::net::IpAddr::V4(a.0),
                    RData::AAAA(a) => std::net::IpAddr::V6(a.0),
                    _ => continue,
                };
                found = true;
                let a = SocketAddr::new(ip, 53);
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        if !found {
            return Err(format!(
                "{resolver} has no address for {zone}'s nameserver {name}"
            ));
        }
    }
    Ok(out)
}

/// The TXT strings `server` answers for `fqdn`, asked with recursion off.
async fn txt_values(server: SocketAddr, fqdn: &str) -> std::result::Result<Vec<String>, String> {
    let answer = query(server, fqdn, RecordType::TXT, false).await?;
    Ok(answer
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::TXT(t) => Some(
                t.txt_data()
                    .iter()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect())
}

/// One query over UDP, with recursion desired or not; the answer, or what went wrong in words.
async fn query(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    recursion: bool,
) -> std::result::Result<Message, String> {
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::Name;
    use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};
    let qname = Name::from_ascii(format!("{name}.")).map_err(|e| e.to_string())?;
    let id: u16 = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(7)
        & 0xffff) as u16;
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(recursion)
        .add_query(Query::query(qname, rtype));
    let bytes = m.to_bytes().map_err(|e| e.to_string())?;
    let bind = if server.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    sock.connect(server).await.map_err(|e| e.to_string())?;
    sock.send(&bytes).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), sock.recv(&mut buf))
        .await
        .map_err(|_| format!("{server} gave no answer to {name} {rtype} within 3 s"))?
        .map_err(|e| format!("{server}: {e}"))?;
    let answer = Message::from_bytes(&buf[..n]).map_err(|e| e.to_string())?;
    if answer.id() != id {
        return Err(format!("{server}: an answer to another query"));
    }
    Ok(answer)
}
