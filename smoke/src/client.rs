//! A small HTTP/1.1 client for the checks: a new connection per request (so nothing carries
//! over between checks), TLS verified against the given roots, dialled at a fixed address when
//! the plan says so (the edge's listener, whatever the names resolve to), bodies capped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use url::Url;

/// The most of a body a check reads.
const BODY_CAP: usize = 4 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How much of an answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The whole body (up to the cap).
    Full,
    /// A WebSocket handshake: no body after a 101.
    Upgrade,
    /// What arrives within the time given (an event stream that never ends).
    Start(Duration),
}

/// A response: status, headers, body (capped).
#[derive(Debug)]
pub(crate) struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The `<title>` of an HTML body, if any.
    pub fn title(&self) -> Option<String> {
        let text = String::from_utf8_lossy(&self.body);
        let start = text.find("<title>")? + "<title>".len();
        let end = text[start..].find("</title>")?;
        Some(text[start..start + end].trim().to_string())
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Clone)]
pub(crate) struct Client {
    tls: tokio_rustls::TlsConnector,
    /// Dial here for HTTPS (and `http_dial` for HTTP), whatever the host resolves to.
    dial: Option<SocketAddr>,
    http_dial: Option<SocketAddr>,
}

impl Client {
    pub fn new(
        roots: Vec<CertificateDer<'static>>,
        dial: Option<SocketAddr>,
        http_dial: Option<SocketAddr>,
    ) -> Result<Client, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls_platform_verifier::Verifier::new_with_extra_roots(roots, provider.clone())
                .map_err(|e| format!("the platform's trusted roots: {e}"))?;
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        // HTTP/1.1 only: the checks read raw statuses and upgrade to WebSocket.
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Client {
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            dial,
            http_dial,
        })
    }

    async fn tcp(&self, url: &Url) -> Result<TcpStream, String> {
        let host = url.host_str().ok_or("no host in the URL")?;
        let port = url.port_or_known_default().unwrap_or(443);
        let fixed = if url.scheme() == "https" {
            self.dial
        } else {
            self.http_dial
        };
        let connect = async {
            match fixed {
                Some(a) => TcpStream::connect(a).await,
                None => TcpStream::connect((host, port)).await,
            }
        };
        let where_ = fixed.map_or_else(|| format!("{host}:{port}"), |a| a.to_string());
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("connecting to {where_}: {e}")),
            Err(_) => Err(format!("connecting to {where_}: no answer within 5 s")),
        }
    }

    /// A TLS connection to `url`'s host: the stream and the server's certificates.
    async fn tls_stream(
        &self,
        url: &Url,
    ) -> Result<
        (
            tokio_rustls::client::TlsStream<TcpStream>,
            Vec<CertificateDer<'static>>,
        ),
        String,
    > {
        let tcp = self.tcp(url).await?;
        let host = url.host_str().ok_or("no host in the URL")?.to_string();
        let name = ServerName::try_from(host.clone()).map_err(|e| format!("{host}: {e}"))?;
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, self.tls.connect(name, tcp))
            .await
            .map_err(|_| format!("TLS with {host}: no handshake within 5 s"))?
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        let certs = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.to_vec())
            .unwrap_or_default();
        Ok((tls, certs))
    }

    /// The server's certificate chain for `url`'s host, verified.
    pub async fn certificates(&self, url: &Url) -> Result<Vec<CertificateDer<'static>>, String> {
        self.tls_stream(url).await.map(|(_, c)| c)
    }

    async fn stream(&self, url: &Url) -> Result<Box<dyn Io>, String> {
        match url.scheme() {
            "https" => Ok(Box::new(self.tls_stream(url).await?.0)),
            "http" => Ok(Box::new(self.tcp(url).await?)),
            s => Err(format!("{s}: not an http(s) URL")),
        }
    }

    /// One request on a connection of its own; `headers` are added to `Host`.
    pub async fn request(
        &self,
        method: Method,
        url: &Url,
        headers: &[(&str, &str)],
    ) -> Result<Resp, String> {
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.request_inner(method, url, headers, Mode::Full),
        )
        .await
        .map_err(|_| format!("{url}: no answer within 15 s"))?
    }

    /// A WebSocket opening handshake (the response only: 101 means the server switched).
    pub async fn websocket(&self, url: &Url, headers: &[(&str, &str)]) -> Result<Resp, String> {
        let mut h = vec![
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-fetch-mode", "websocket"),
        ];
        h.extend_from_slice(headers);
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.request_inner(Method::GET, url, &h, Mode::Upgrade),
        )
        .await
        .map_err(|_| format!("{url}: no answer within 15 s"))?
    }

    /// A request whose answer may never end (an event stream): the status, the headers and
    /// what of the body arrives within `wait`.
    pub async fn stream_start(
        &self,
        url: &Url,
        headers: &[(&str, &str)],
        wait: Duration,
    ) -> Result<Resp, String> {
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.request_inner(Method::GET, url, headers, Mode::Start(wait)),
        )
        .await
        .map_err(|_| format!("{url}: no answer within 15 s"))?
    }

    async fn request_inner(
        &self,
        method: Method,
        url: &Url,
        headers: &[(&str, &str)],
        mode: Mode,
    ) -> Result<Resp, String> {
        let io = self.stream(url).await?;
        let (mut tx, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut authority = url.host_str().unwrap_or_default().to_string();
        if let Some(p) = url.port() {
            authority = format!("{authority}:{p}");
        }
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(target)
            .header("host", authority)
            .header(
                "user-agent",
                concat!("edge-smoke/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::new()).map_err(|e| format!("{url}: {e}"))?;
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| format!("{url}: {e}"));
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                driver.abort();
                return Err(e);
            }
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = if mode == Mode::Upgrade && status == 101 {
            Bytes::new()
        } else if let Mode::Start(wait) = mode {
            let mut body = resp.into_body();
            let mut got = Vec::new();
            let until = tokio::time::Instant::now() + wait;
            while got.len() < BODY_CAP {
                match tokio::time::timeout_at(until, body.frame()).await {
                    Ok(Some(Ok(f))) => {
                        if let Some(d) = f.data_ref() {
                            got.extend_from_slice(d);
                        }
                    }
                    _ => break,
                }
            }
            Bytes::from(got)
        } else {
            match Limited::new(resp.into_body(), BODY_CAP).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    driver.abort();
                    return Err(format!("{url}: reading the body: {e}"));
                }
            }
        };
        driver.abort();
        Ok(Resp {
            status,
            headers,
            body,
        })
    }
}
