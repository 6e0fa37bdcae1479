//! Test harness: a gateway on 127.0.0.1:0 listeners, upstreams (nginx, an in-process echo
//! server, a WebSocket echo, an h2c server) and clients (raw sockets, hyper over TCP and TLS).
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edge_gateway::{Gateway, ProjectCert};
use edge_routing::Config;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct TestGw {
    pub gw: Gateway,
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub ca_pem: String,
    pub dir: tempfile::TempDir,
    pub token: CancellationToken,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The `[listen]` table for a test; `@HTTPS@` etc. are replaced by [`start`].
pub fn listen(redirect: bool) -> String {
    format!("[listen]\nhttps = \"@HTTPS@\"\nhttp = \"@HTTP@\"\nadmin = \"@ADMIN@\"\nhttp_redirect = {redirect}\n")
}

pub fn certs_for(config: &Config, dir: &std::path::Path) -> (Vec<ProjectCert>, String) {
    let (ca, certs) = edge_certs::local_project_certs(
        dir,
        &config.domain,
        config.projects.iter().map(|p| p.name.as_str()),
    )
    .unwrap();
    let certs = certs
        .into_iter()
        .map(|(host, f)| ProjectCert {
            host,
            chain_pem: f.chain_pem,
            key_pem: f.key_pem,
        })
        .collect();
    (certs, ca.cert_pem().to_string())
}

/// Starts a gateway for `config` (TOML with `@HTTPS@`, `@HTTP@`, `@ADMIN@` and optionally
/// `@DIR@`, a scratch directory, in it).
pub async fn start(config: &str) -> TestGw {
    let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (ha, pa, aa) = (
        https.local_addr().unwrap(),
        http.local_addr().unwrap(),
        admin.local_addr().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let text = config
        .replace("@HTTPS@", &ha.to_string())
        .replace("@HTTP@", &pa.to_string())
        .replace("@ADMIN@", &aa.to_string())
        .replace("@DIR@", dir.path().to_str().unwrap());
    let cfg = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let (certs, ca_pem) = certs_for(&cfg, dir.path());
    let gw = Gateway::new(cfg, dir.path(), &certs).unwrap();
    let token = CancellationToken::new();
    let mut tasks = Vec::new();
    {
        let (g, t) = (gw.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            g.serve_https(https, t.cancelled_owned()).await.unwrap()
        }));
        let (g, t) = (gw.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            g.serve_http(http, t.cancelled_owned()).await
        }));
        let (g, t) = (gw.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            g.serve_admin(admin, None, t.cancelled_owned()).await
        }));
    }
    TestGw {
        gw,
        https: ha,
        http: pa,
        admin: aa,
        ca_pem,
        dir,
        token,
        tasks,
    }
}

impl TestGw {
    /// Applies a new config text (same placeholders) to the running gateway.
    pub fn reload(&self, config: &str) {
        let text = config
            .replace("@HTTPS@", &self.https.to_string())
            .replace("@HTTP@", &self.http.to_string())
            .replace("@ADMIN@", &self.admin.to_string())
            .replace("@DIR@", self.dir.path().to_str().unwrap());
        let cfg = Config::from_toml(&text).unwrap();
        let (certs, _) = certs_for(&cfg, self.dir.path());
        self.gw.reload(cfg, self.dir.path(), &certs).unwrap();
    }
}

// ------------------------------------------------------------------ clients

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn collect(resp: Response<Incoming>) -> Resp {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        version: parts.version,
    }
}

/// One HTTP/1.1 request over a new plain TCP connection.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Resp {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    collect(sender.send_request(req).await.unwrap()).await
}

/// Sends one request on a new HTTP/1.1 connection and returns as soon as the head arrives, so
/// the body can be read frame by frame.
pub async fn open<B>(addr: SocketAddr, req: Request<B>) -> Response<Incoming>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender.send_request(req).await.unwrap()
}

/// The next data frame of a body.
pub async fn next_data(body: &mut Incoming) -> Bytes {
    body.frame().await.unwrap().unwrap().into_data().unwrap()
}

pub fn get(host: &str, target: &str) -> Request<Full<Bytes>> {
    Request::get(target)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

pub fn tls_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(tls_config(ca_pem, alpn));
    let stream = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    connector.connect(name, stream).await.unwrap()
}

/// One request over TLS with SNI `sni`, HTTP/2 when `h2`.
pub async fn send_tls(
    addr: SocketAddr,
    sni: &str,
    ca_pem: &str,
    h2: bool,
    req: Request<Full<Bytes>>,
) -> Resp {
    if h2 {
        let tls = tls_connect(addr, sni, ca_pem, &[b"h2"]).await;
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "the gateway must offer h2"
        );
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        collect(sender.send_request(req).await.unwrap()).await
    } else {
        let tls = tls_connect(addr, sni, ca_pem, &[b"http/1.1"]).await;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        collect(sender.send_request(req).await.unwrap()).await
    }
}

/// Writes raw bytes and reads until the server closes or `wait` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

// ------------------------------------------------------------------ upstreams

/// Binds 127.0.0.1:0 and runs `serve` on every accepted connection, each in its own task.
pub async fn spawn_server<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s));
        }
    });
    addr
}

/// An in-process HTTP/1.1 upstream. Paths:
/// - anything: `200`, body `METHOD TARGET\n` then `name: value\n` per header, then the body;
/// - `/slow?ms=N`: the same after N ms;
/// - `/count`: reads the body, answers its length;
/// - `/sse`: `data: 1`, then after 300 ms `data: 2`;
/// - `/cookie`: answers with a Set-Cookie;
/// - `/origin-wide`: answers with headers that act on the whole origin (HSTS off,
///   `Clear-Site-Data`, a cookie, a widened service worker scope, `Alt-Svc`).
pub async fn echo_upstream() -> SocketAddr {
    spawn_server(|s| async move {
        let svc = hyper::service::service_fn(echo);
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(s), svc)
            .await;
    })
    .await
}

type EchoBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn echo(req: Request<Incoming>) -> Result<Response<EchoBody>, Infallible> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let path = req.uri().path().to_string();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if path.ends_with("/slow") {
        let ms = query.get("ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if path.ends_with("/count") {
        let mut body = req.into_body();
        let mut n: u64 = 0;
        while let Some(f) = body.frame().await {
            match f {
                Ok(f) => n += f.data_ref().map(|d| d.len() as u64).unwrap_or(0),
                Err(_) => break,
            }
        }
        return Ok(Response::new(Full::new(Bytes::from(n.to_string())).boxed()));
    }
    if path.ends_with("/sse") {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from_static(b"data: 1\n\n")).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = tx.send(Bytes::from_static(b"data: 2\n\n")).await;
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(hyper::body::Frame::data(b)), rx))
        });
        let mut r = Response::new(http_body_util::StreamBody::new(stream).boxed());
        r.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        return Ok(r);
    }
    let mut text = format!("{} {}\n", req.method(), target);
    for (k, v) in req.headers() {
        text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
    }
    let mut r = Response::new(Full::new(Bytes::from(text)).boxed());
    if path.ends_with("/cookie") {
        r.headers_mut()
            .insert("set-cookie", "track=1; Path=/".parse().unwrap());
    }
    if path.ends_with("/origin-wide") {
        let h = r.headers_mut();
        h.insert("strict-transport-security", "max-age=0".parse().unwrap());
        h.insert("clear-site-data", "\"*\"".parse().unwrap());
        h.insert(
            "set-cookie",
            "__Host-edge-chat=evil; Path=/".parse().unwrap(),
        );
        h.insert("service-worker-allowed", "/".parse().unwrap());
        h.insert("alt-svc", "h3=\":443\"".parse().unwrap());
        h.insert(
            "nel",
            "{\"report_to\":\"x\",\"max_age\":86400}".parse().unwrap(),
        );
    }
    r.headers_mut()
        .insert("x-upstream", "echo".parse().unwrap());
    Ok(r)
}

/// A WebSocket echo server (tokio-tungstenite); it also reports the request path it saw.
pub async fn ws_upstream() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    spawn_server(|s| async move {
        let mut seen = String::new();
        #[allow(clippy::result_large_err)] // the callback's signature is tungstenite's
        let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
            seen = req.uri().to_string();
            Ok(resp)
        };
        let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, cb).await else {
            return;
        };
        let greeting = tokio_tungstenite::tungstenite::Message::text(format!("path {seen}"));
        let _ = ws.send(greeting).await;
        while let Some(Ok(m)) = ws.next().await {
            if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                break;
            }
        }
    })
    .await
}

/// nginx as a third-party upstream: every request answers 200 with the raw request target it
/// saw in `X-Uri` and the body.
pub struct Nginx {
    pub addr: SocketAddr,
    pub child: Child,
    pub _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM, not KILL: the master then stops its worker instead of orphaning it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

pub fn nginx_binary() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("nginx is not installed; .ci/run installs it (apt-get install nginx)");
}

pub async fn nginx_upstream() -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let d = dir.path().display();
    let conf = format!(
        r#"daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log error;
events {{ worker_connections 256; }}
http {{
  access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f;
  uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      default_type text/plain;
      add_header X-Uri $request_uri always;
      return 200 "uri=$request_uri host=$http_host xff=$http_x_forwarded_for xfp=$http_x_forwarded_proto prefix=$http_x_forwarded_prefix user=$http_x_forwarded_user\n";
    }}
  }}
}}
"#
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    #[allow(clippy::zombie_processes)] // waited for in `Drop for Nginx`
    let child = Command::new(nginx_binary())
        .args([
            "-p",
            dir.path().to_str().unwrap(),
            "-c",
            path.to_str().unwrap(),
        ])
        .spawn()
        .expect("starting nginx");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            return Nginx {
                addr,
                child,
                _dir: dir,
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nginx did not start on {addr}");
}

/// A log sink for `tracing_subscriber::fmt().with_writer(...)`, to assert on what was logged.
#[derive(Clone, Default)]
pub struct Captured(pub Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
