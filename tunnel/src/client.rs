//! The project host's side: enrolment (`edge register`), the session (`edge connect`) that
//! joins each stream the edge opens to a local upstream, and `edge deregister`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::identity::spki_pin;
use crate::proto::{read_line, write_line, Answer, Ask, ALPN};
use crate::server::{
    CONNECTION_WINDOW, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MAX_FRAME, STREAM_WINDOW,
};
use crate::{io_err, Error, Result};

/// A mount the host serves, and the local upstream (`host:port`) behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalRoute {
    pub mount: String,
    pub upstream: String,
}

impl LocalRoute {
    /// `MOUNT=http://HOST:PORT`, as `--route` takes it.
    pub fn parse(text: &str) -> std::result::Result<LocalRoute, String> {
        let (mount, url) = text
            .split_once('=')
            .ok_or_else(|| format!("--route {text:?}: write MOUNT=http://HOST:PORT"))?;
        let upstream = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("--route {text:?}: the upstream is http://HOST:PORT"))?
            .trim_end_matches('/');
        if upstream.contains('/') || !upstream.contains(':') {
            return Err(format!(
                "--route {text:?}: the upstream is http://HOST:PORT, no path"
            ));
        }
        Ok(LocalRoute {
            mount: mount.to_string(),
            upstream: upstream.to_string(),
        })
    }
}

/// What `edge register` saved: enough for `edge connect` to hold the session again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrolment {
    pub name: String,
    /// The edge's tunnel listener, `host:port`.
    pub edge: String,
    /// The SHA-256 of the edge's public key, from the token.
    pub pin: String,
    pub routes: Vec<LocalRoute>,
    pub urls: Vec<String>,
    /// This host and state directory, as the edge tells agents apart.
    pub agent: String,
}

/// The host's state directory: `key.pem` (0600, never sent), `cert.pem`, `enrolment.json`.
#[derive(Debug, Clone)]
pub struct ClientState {
    pub dir: PathBuf,
}

impl ClientState {
    pub fn new(dir: &Path) -> ClientState {
        ClientState {
            dir: dir.to_path_buf(),
        }
    }

    fn key(&self) -> Result<rcgen::KeyPair> {
        let path = self.dir.join("key.pem");
        match std::fs::read_to_string(&path) {
            Ok(pem) => rcgen::KeyPair::from_pem(&pem)
                .map_err(|e| Error::Msg(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate()
                    .map_err(|e| Error::Msg(format!("making a key: {e}")))?;
                edge_certs::write_atomic(&path, key.serialize_pem().as_bytes(), 0o600)?;
                Ok(key)
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn csr(&self) -> Result<String> {
        let key = self.key()?;
        rcgen::CertificateParams::new(Vec::<String>::new())
            .and_then(|p| p.serialize_request(&key))
            .and_then(|r| r.pem())
            .map_err(|e| Error::Msg(format!("making a certificate request: {e}")))
    }

    pub fn enrolment(&self) -> Result<Enrolment> {
        let path = self.dir.join("enrolment.json");
        let b = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Msg(format!(
                    "{} is not enrolled (no {}): run `edge register NAME --edge HOST:PORT --token T --route MOUNT=URL` first",
                    self.dir.display(),
                    path.display()
                ))
            } else {
                io_err(&path)(e)
            }
        })?;
        serde_json::from_slice(&b).map_err(|e| Error::Msg(format!("{}: {e}", path.display())))
    }

    fn save_enrolment(&self, e: &Enrolment) -> Result<()> {
        let json = serde_json::to_vec_pretty(e).map_err(|e| Error::Msg(e.to_string()))?;
        edge_certs::write_atomic(&self.dir.join("enrolment.json"), &json, 0o600)?;
        Ok(())
    }

    /// TLS to the edge: its identity checked against `pin`, with the client certificate when
    /// there is one.
    fn tls(&self, pin: &str, with_cert: bool) -> Result<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Msg(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                pin: pin.to_string(),
                provider,
            }));
        let mut cfg = if with_cert {
            use rustls::pki_types::pem::PemObject as _;
            let path = self.dir.join("cert.pem");
            let pem = std::fs::read_to_string(&path).map_err(io_err(&path))?;
            let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
                rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| Error::Msg(format!("{}: {e}", path.display())))?;
            let kp = self.dir.join("key.pem");
            let key_pem = std::fs::read_to_string(&kp).map_err(io_err(&kp))?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|e| Error::Msg(format!("{}: {e}", kp.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Msg(format!("the client certificate: {e}")))?
        } else {
            builder.with_no_client_auth()
        };
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }

    async fn dial(
        &self,
        edge: &str,
        pin: &str,
        with_cert: bool,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(edge),
        )
        .await
        .map_err(|_| Error::Msg(format!("{edge}: no answer within 10 s")))?
        .map_err(|e| Error::Msg(format!("{edge}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let cfg = self.tls(pin, with_cert)?;
        let name = rustls::pki_types::ServerName::try_from("edge-tunnel")
            .map_err(|e| Error::Msg(e.to_string()))?;
        tokio::time::timeout(
            Duration::from_secs(10),
            tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
        )
        .await
        .map_err(|_| Error::Msg(format!("{edge}: the TLS handshake took over 10 s")))?
        .map_err(|e| Error::Msg(format!("{edge}: {e}")))
    }
}

/// Checks the edge by the pin the token carried: the SHA-256 of its public key.
#[derive(Debug)]
struct PinVerifier {
    pin: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match spki_pin(end_entity.as_ref()) {
            Ok(p) if p == self.pin => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            _ => Err(rustls::Error::General(
                "the edge's identity does not match the pin in the token".into(),
            )),
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// This machine's name, for telling agents apart.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

/// Enrols `name` at `edge` with `token` (from `edge register token create`), serving
/// `routes`: a key made here (0600), a client certificate from the edge. Saves the enrolment.
pub async fn enrol(
    state: &ClientState,
    edge: &str,
    token: &str,
    name: &str,
    routes: &[LocalRoute],
) -> Result<Enrolment> {
    let mut parts = token.trim().splitn(3, '.');
    let (Some("edge1"), Some(pin), Some(secret)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::Msg(
            "--token: not an enrolment token (they look like edge1.PIN.SECRET; mint one on the edge with `edge register token create NAME`)".into(),
        ));
    };
    std::fs::create_dir_all(&state.dir).map_err(io_err(&state.dir))?;
    let csr = state.csr()?;
    let mut tls = state.dial(edge, pin, false).await?;
    let ask = Ask::Enrol {
        name: name.to_string(),
        token: secret.to_string(),
        csr,
        mounts: routes.iter().map(|r| r.mount.clone()).collect(),
    };
    write_line(&mut tls, &ask)
        .await
        .map_err(|e| Error::Msg(format!("{edge}: {e}")))?;
    let line = read_line(&mut tls)
        .await
        .map_err(|e| Error::Msg(format!("{edge}: {e}")))?;
    let answer: Answer = serde_json::from_str(&line)
        .map_err(|e| Error::Msg(format!("{edge}: an answer that does not parse: {e}")))?;
    if !answer.ok {
        return Err(Error::Msg(format!(
            "the edge refused: {}",
            answer.error.unwrap_or_default()
        )));
    }
    let cert = answer
        .cert
        .ok_or_else(|| Error::Msg("the edge sent no certificate".into()))?;
    edge_certs::write_atomic(&state.dir.join("cert.pem"), cert.as_bytes(), 0o644)?;
    use base64::Engine as _;
    let e = Enrolment {
        name: name.to_string(),
        edge: edge.to_string(),
        pin: pin.to_string(),
        routes: routes.to_vec(),
        urls: answer.urls,
        agent: format!(
            "{}/{}",
            hostname(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::random_bytes(6))
        ),
    };
    state.save_enrolment(&e)?;
    Ok(e)
}

/// Gives the name up: the edge forgets it and closes its sessions. The local enrolment is
/// removed (the key stays).
pub async fn deregister(state: &ClientState) -> Result<String> {
    let e = state.enrolment()?;
    let mut tls = state.dial(&e.edge, &e.pin, true).await?;
    write_line(&mut tls, &Ask::Deregister)
        .await
        .map_err(|x| Error::Msg(format!("{}: {x}", e.edge)))?;
    let line = read_line(&mut tls)
        .await
        .map_err(|x| Error::Msg(format!("{}: {x}", e.edge)))?;
    let answer: Answer =
        serde_json::from_str(&line).map_err(|x| Error::Msg(format!("{}: {x}", e.edge)))?;
    if !answer.ok {
        return Err(Error::Msg(format!(
            "the edge refused: {}",
            answer.error.unwrap_or_default()
        )));
    }
    let _ = std::fs::remove_file(state.dir.join("enrolment.json"));
    let _ = std::fs::remove_file(state.dir.join("cert.pem"));
    Ok(e.name)
}

/// How a host reaches the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// QUIC, and TLS over TCP when QUIC cannot connect (UDP blocked on the way).
    Auto,
    Quic,
    Tcp,
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Transport, String> {
        match s {
            "auto" => Ok(Transport::Auto),
            "quic" => Ok(Transport::Quic),
            "tcp" => Ok(Transport::Tcp),
            other => Err(format!("{other:?}: use auto, quic or tcp")),
        }
    }
}

/// Why a session ended.
enum Ended {
    /// Worth trying again (network, edge restart).
    Retry(String),
    /// The edge will not take this host (revoked, deregistered): stop.
    Refused(String),
}

/// Holds the sessions (`lanes` of them, side by side) from the saved enrolment until `stop`,
/// each reconnecting with exponential backoff and full jitter (200 ms doubling to 30 s, reset after a minute connected). `online`
/// is called with the public URLs each time a session is accepted. Ends with an error when the
/// edge refuses this host for good.
pub async fn connect(
    state: &ClientState,
    lanes: u32,
    transport: Transport,
    stop: CancellationToken,
    online: impl Fn(&[String]) + Send + Sync + 'static,
) -> Result<()> {
    let lock_path = state.dir.join("connect.lock");
    std::fs::create_dir_all(&state.dir).map_err(io_err(&state.dir))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    if lock.try_lock().is_err() {
        return Err(Error::Msg(format!(
            "another `edge connect` holds {} already",
            state.dir.display()
        )));
    }
    // One session per lane, each reconnecting on its own. The first lane runs here; each other
    // lane has a thread and a single-threaded runtime of its own, so a stream's work (its
    // session, its upstream connection) stays on one thread with no cross-thread wake-ups:
    // measured, a third less CPU per request than all lanes on one shared two-thread pool.
    let lanes = lanes.clamp(1, 16);
    let online = std::sync::Arc::new(online);
    let mut threads = Vec::new();
    for lane in 1..lanes {
        let (lane_state, lane_stop, lane_online) = (state.clone(), stop.clone(), online.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("edge-lane-{lane}"))
            .spawn(move || -> Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::Msg(format!("starting lane {lane}'s runtime: {e}")))?;
                rt.block_on(hold_lane(
                    &lane_state,
                    lane,
                    transport,
                    lane_stop,
                    &*lane_online,
                ))
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                stop.cancel();
                return Err(Error::Msg(format!("starting lane {lane}'s thread: {e}")));
            }
        }
    }
    let first = hold_lane(state, 0, transport, stop.clone(), &*online).await;
    // When one lane is done (stopped, refused, or its state unreadable), so are the others.
    stop.cancel();
    let rest = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(Error::Msg("a lane's thread panicked".into())))
            })
            .collect::<Result<Vec<()>>>()
    })
    .await
    .unwrap_or_else(|e| Err(Error::Msg(format!("joining the lanes: {e}"))));
    first.and(rest).map(|_| ())
}

async fn hold_lane(
    state: &ClientState,
    lane: u32,
    transport: Transport,
    stop: CancellationToken,
    online: &(impl Fn(&[String]) + Send + Sync),
) -> Result<()> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let e = state.enrolment()?;
        let started = tokio::time::Instant::now();
        // The session watches `stop` itself, so that it can say goodbye (a QUIC peer would
        // otherwise wait out its idle timeout).
        let ended = session_any(state, &e, lane, transport, online, &stop).await;
        if stop.is_cancelled() {
            return Ok(());
        }
        match ended {
            Ended::Refused(why) => {
                // Every lane hears the same refusal; the whole connection ends.
                stop.cancel();
                return Err(Error::Msg(format!("the edge refused: {why}")));
            }
            Ended::Retry(why) => {
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_millis(200);
                }
                let r = crate::random_bytes(4);
                let frac =
                    f64::from(u32::from_le_bytes([r[0], r[1], r[2], r[3]])) / f64::from(u32::MAX);
                let wait = backoff.mul_f64(frac);
                tracing::warn!(edge = %e.edge, lane, reason = %why, retry_in = ?wait, "the session ended; reconnecting");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// One session over the chosen transport; with `Auto`, QUIC first and TCP when QUIC does not
/// connect within 3 s.
async fn session_any(
    state: &ClientState,
    e: &Enrolment,
    lane: u32,
    transport: Transport,
    online: &(impl Fn(&[String]) + Send + Sync),
    stop: &CancellationToken,
) -> Ended {
    if transport != Transport::Tcp {
        match session_quic(state, e, lane, online, stop).await {
            Ended::Retry(why) if transport == Transport::Auto && why.starts_with("QUIC: ") => {
                tracing::info!(edge = %e.edge, lane, reason = %why, "QUIC did not connect; using TLS over TCP");
            }
            other => return other,
        }
    }
    tokio::select! {
        r = session_once(state, e, lane, online) => r,
        _ = stop.cancelled() => Ended::Retry("stopping".into()),
    }
}

/// A session over QUIC: the first line on the host's stream, then the edge's streams.
async fn session_quic(
    state: &ClientState,
    e: &Enrolment,
    lane: u32,
    online: &(impl Fn(&[String]) + Send + Sync),
    stop: &CancellationToken,
) -> Ended {
    let addr = match tokio::net::lookup_host(&e.edge).await.map(|mut a| a.next()) {
        Ok(Some(a)) => a,
        Ok(None) => return Ended::Retry(format!("QUIC: {} has no address", e.edge)),
        Err(x) => return Ended::Retry(format!("QUIC: {}: {x}", e.edge)),
    };
    let tls = match state.tls(&e.pin, true) {
        Ok(t) => t,
        Err(x) => return Ended::Retry(x.to_string()),
    };
    let ep = match crate::quic::client_endpoint(tls, addr) {
        Ok(ep) => ep,
        Err(x) => return Ended::Retry(format!("QUIC: {x}")),
    };
    let connecting = match ep.connect(addr, "edge-tunnel") {
        Ok(c) => c,
        Err(x) => return Ended::Retry(format!("QUIC: {x}")),
    };
    let conn = match tokio::time::timeout(Duration::from_secs(3), connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(x)) => return Ended::Retry(format!("QUIC: {x}")),
        Err(_) => return Ended::Retry("QUIC: no handshake within 3 s".into()),
    };
    let hello = Ask::Hello {
        agent: e.agent.clone(),
        mounts: e.routes.iter().map(|r| r.mount.clone()).collect(),
        lane,
    };
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(x) => return Ended::Retry(x.to_string()),
    };
    if let Err(x) = write_line(&mut send, &hello).await {
        return Ended::Retry(x.to_string());
    }
    let _ = send.finish();
    let answer: Answer = match read_line(&mut recv).await {
        Ok(l) => match serde_json::from_str(&l) {
            Ok(a) => a,
            Err(x) => return Ended::Retry(format!("an answer that does not parse: {x}")),
        },
        Err(x) => return Ended::Retry(x.to_string()),
    };
    if !answer.ok {
        conn.close(quinn::VarInt::from_u32(0), b"refused");
        let why = answer.error.unwrap_or_default();
        return if why.contains("another agent") {
            Ended::Retry(why)
        } else {
            Ended::Refused(why)
        };
    }
    tracing::info!(edge = %e.edge, name = %e.name, lane, transport = "quic", "session open");
    if lane == 0 {
        online(&answer.urls);
    }
    let routes = Arc::new(e.routes.clone());
    loop {
        let next = tokio::select! {
            n = conn.accept_bi() => n,
            _ = stop.cancelled() => {
                conn.close(quinn::VarInt::from_u32(0), b"host stopping");
                let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
                return Ended::Retry("stopping".into());
            }
        };
        match next {
            Ok((send, recv)) => {
                let (routes, st) = (routes.clone(), state.clone());
                tokio::spawn(async move { serve_quic_stream(send, recv, &routes, &st).await });
            }
            Err(x) => {
                ep.close(quinn::VarInt::from_u32(0), b"");
                return Ended::Retry(x.to_string());
            }
        }
    }
}

/// One stream the edge opened over QUIC: `CONNECT <mount>`, `RENEW` or `CERT <base64>`.
async fn serve_quic_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    routes: &[LocalRoute],
    state: &ClientState,
) {
    let Ok(Ok(line)) = tokio::time::timeout(Duration::from_secs(10), read_line(&mut recv)).await
    else {
        return;
    };
    if let Some(mount) = line.strip_prefix("CONNECT ") {
        let Some(route) = routes.iter().find(|r| r.mount == mount) else {
            let _ = send
                .write_all(format!("404 this host does not serve /{mount}/\n").as_bytes())
                .await;
            let _ = send.finish();
            return;
        };
        let tcp = match tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(&route.upstream),
        )
        .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(x)) => {
                let _ = send
                    .write_all(format!("502 {}: {x}\n", route.upstream).as_bytes())
                    .await;
                let _ = send.finish();
                return;
            }
            Err(_) => {
                let _ = send
                    .write_all(
                        format!("502 {}: no answer within 10 s\n", route.upstream).as_bytes(),
                    )
                    .await;
                let _ = send.finish();
                return;
            }
        };
        let _ = tcp.set_nodelay(true);
        if send.write_all(b"200\n").await.is_err() {
            return;
        }
        let mut io = crate::quic::QuicIo { send, recv };
        let mut tcp = tcp;
        let _ = tokio::io::copy_bidirectional(&mut io, &mut tcp).await;
    } else if line == "RENEW" {
        if let Ok(csr) = state.csr() {
            let _ = send.write_all(csr.as_bytes()).await;
        }
        let _ = send.finish();
    } else if let Some(b64) = line.strip_prefix("CERT ") {
        use base64::Engine as _;
        let pem = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|p| crate::identity::pem_der(p).is_some());
        let answer = match pem {
            Some(pem) => {
                match edge_certs::write_atomic(&state.dir.join("cert.pem"), pem.as_bytes(), 0o644) {
                    Ok(()) => {
                        tracing::info!("a renewed client certificate was saved");
                        "204\n"
                    }
                    Err(_) => "500\n",
                }
            }
            None => "400\n",
        };
        let _ = send.write_all(answer.as_bytes()).await;
        let _ = send.finish();
    }
}

async fn session_once(
    state: &ClientState,
    e: &Enrolment,
    lane: u32,
    online: &(impl Fn(&[String]) + Send + Sync),
) -> Ended {
    let mut tls = match state.dial(&e.edge, &e.pin, true).await {
        Ok(t) => t,
        Err(x) => return Ended::Retry(x.to_string()),
    };
    let hello = Ask::Hello {
        agent: e.agent.clone(),
        mounts: e.routes.iter().map(|r| r.mount.clone()).collect(),
        lane,
    };
    if let Err(x) = write_line(&mut tls, &hello).await {
        return Ended::Retry(x.to_string());
    }
    let answer: Answer = match read_line(&mut tls).await {
        Ok(l) => match serde_json::from_str(&l) {
            Ok(a) => a,
            Err(x) => return Ended::Retry(format!("an answer that does not parse: {x}")),
        },
        // A certificate the edge refuses ends the handshake here.
        Err(x) => return Ended::Retry(x.to_string()),
    };
    if !answer.ok {
        let why = answer.error.unwrap_or_default();
        return if why.contains("another agent") {
            Ended::Retry(why)
        } else {
            Ended::Refused(why)
        };
    }
    tracing::info!(edge = %e.edge, name = %e.name, lane, transport = "tcp", "session open");
    if lane == 0 {
        online(&answer.urls);
    }
    let routes = Arc::new(e.routes.clone());
    let st = state.clone();
    let service = hyper::service::service_fn(move |req| {
        let (routes, st) = (routes.clone(), st.clone());
        async move { Ok::<_, std::convert::Infallible>(serve(req, &routes, &st).await) }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(4096)
        .serve_connection(TokioIo::new(tls), service);
    match conn.await {
        Ok(()) => Ended::Retry("the edge closed the session".into()),
        Err(x) => Ended::Retry(x.to_string()),
    }
}

fn text(status: u16, body: String) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    r
}

/// One stream the edge opened: a `CONNECT` to a mount, joined to its local upstream; or the
/// certificate renewal the edge runs over the session.
async fn serve(
    mut req: hyper::Request<hyper::body::Incoming>,
    routes: &[LocalRoute],
    state: &ClientState,
) -> hyper::Response<Full<Bytes>> {
    if req.method() == hyper::Method::CONNECT {
        let mount = req
            .uri()
            .authority()
            .map(|a| a.host().to_string())
            .unwrap_or_default();
        let Some(route) = routes.iter().find(|r| r.mount == mount) else {
            return text(404, format!("this host does not serve /{mount}/"));
        };
        let tcp = match tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(&route.upstream),
        )
        .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(x)) => return text(502, format!("{}: {x}", route.upstream)),
            Err(_) => return text(502, format!("{}: no answer within 10 s", route.upstream)),
        };
        let _ = tcp.set_nodelay(true);
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let mut tcp = tcp;
            if let Ok(up) = upgrade.await {
                let mut up = TokioIo::new(up);
                let _ = tokio::io::copy_bidirectional(&mut up, &mut tcp).await;
            }
        });
        return text(200, String::new());
    }
    match (req.method().as_str(), req.uri().path()) {
        ("POST", "/_edge/renew") => match state.csr() {
            Ok(csr) => text(200, csr),
            Err(x) => text(500, x.to_string()),
        },
        ("POST", "/_edge/certificate") => {
            use base64::Engine as _;
            let pem = req
                .headers()
                .get("edge-certificate")
                .and_then(|v| {
                    base64::engine::general_purpose::STANDARD
                        .decode(v.as_bytes())
                        .ok()
                })
                .and_then(|b| String::from_utf8(b).ok());
            let Some(pem) = pem.filter(|p| crate::identity::pem_der(p).is_some()) else {
                return text(400, "no certificate".into());
            };
            match edge_certs::write_atomic(&state.dir.join("cert.pem"), pem.as_bytes(), 0o644) {
                Ok(()) => {
                    tracing::info!("a renewed client certificate was saved");
                    text(204, String::new())
                }
                Err(x) => text(500, x.to_string()),
            }
        }
        _ => text(404, "not a tunnel request".into()),
    }
}
