//! `[register]`: project hosts joining the edge with `edge register`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::walk::{Errors, Table};

/// `[register]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterConfig {
    /// The tunnel listener: TLS over TCP, and QUIC on the same UDP port.
    pub listen: SocketAddr,
    /// Serve QUIC on `listen`'s UDP port too (hosts fall back to TCP where UDP is blocked).
    pub quic: bool,
    /// Names refused beside the built-in reserved ones.
    pub reserved: Vec<String>,
    /// How long a host's client certificate lives (renewed over its session with a third left).
    pub cert_lifetime: Duration,
    /// Several hosts may hold sessions for one name; requests spread over them.
    pub ha: bool,
    /// Streams open at once on one session.
    pub max_streams: usize,
    /// How long an enrolment token lasts when `--ttl` is not given.
    pub token_ttl: Duration,
}

pub(super) fn read_register(t: Option<Table<'_>>, errs: &mut Errors) -> Option<RegisterConfig> {
    let mut t = t?;
    let listen = match t.str(errs, "listen") {
        Some(s) => match super::parse_addr(s) {
            Ok(a) => Some(a),
            Err(m) => {
                errs.push(t.key("listen"), m);
                None
            }
        },
        None => {
            errs.push(
                t.key("listen"),
                "the tunnel listener is needed, e.g. \"0.0.0.0:7443\"",
            );
            None
        }
    };
    let mut reserved = Vec::new();
    for (i, r) in t
        .strings(errs, "reserved")
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        match super::check_label(r) {
            Ok(()) => reserved.push(r.to_string()),
            Err(m) => errs.push(t.key(&format!("reserved[{i}]")), m),
        }
    }
    let cert_lifetime = t
        .parsed(errs, "cert_lifetime", crate::units::parse_duration)
        .unwrap_or(Duration::from_secs(7 * 86400));
    if cert_lifetime < Duration::from_secs(10) {
        errs.push(t.key("cert_lifetime"), "at least 10s");
    }
    let token_ttl = t
        .parsed(errs, "token_ttl", crate::units::parse_duration)
        .unwrap_or(Duration::from_secs(3600));
    let ha = t.bool(errs, "ha").unwrap_or(false);
    let quic = t.bool(errs, "quic").unwrap_or(true);
    let max_streams = t.uint(errs, "max_streams").unwrap_or(1024);
    if !(1..=65_536).contains(&max_streams) {
        errs.push(t.key("max_streams"), "between 1 and 65536");
    }
    t.finish(errs);
    Some(RegisterConfig {
        listen: listen?,
        quic,
        reserved,
        cert_lifetime,
        ha,
        max_streams: max_streams as usize,
        token_ttl,
    })
}
