//! Helpers for the tests that drive the real `edge` binary's chat: starting `edge up`, signing
//! in with a one-time link, and opening the chat's WebSocket.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

/// `edge up --config CFG`, killed when dropped; returns once `http_port` accepts.
pub async fn edge_up(cfg: &Path, http_port: u16) -> tokio::process::Child {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["up", "--config"])
        .arg(cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", http_port))
            .await
            .is_ok()
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("edge did not start");
}

/// Signs in with a one-time link (a full URL or a path under `/chat/`) through the gateway at
/// `http_port` for `host`; the session cookie as `name=value`.
pub async fn cookie_from_link(http_port: u16, host: &str, link: &str) -> String {
    let path = &link.trim()[link.find("/chat/").expect("a chat link")..];
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{http_port}{path}"))
        .header("host", host)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "signing in with {link}");
    r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// `edge chat login-url --config CFG`, then signed in with it.
pub async fn sign_in_with_cli(cfg: &Path, http_port: u16, host: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["chat", "login-url", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    let link = String::from_utf8(out.stdout).unwrap();
    cookie_from_link(http_port, host, &link).await
}

/// Opens the chat's WebSocket (`chat.v1`) through the gateway, signed in and same-origin.
pub async fn chat_socket(
    http_port: u16,
    host: &str,
    cookie: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    socket_at(http_port, host, "/chat/ws", cookie, &[]).await
}

/// Opens a `chat.v1` WebSocket at `path` on a loopback port, with `extra` headers.
pub async fn socket_at(
    port: u16,
    host: &str,
    path: &str,
    cookie: &str,
    extra: &[(&str, &str)],
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut req = tokio_tungstenite::tungstenite::http::Request::builder()
        .uri(format!("ws://{host}{path}"))
        .header("host", host)
        .header("cookie", cookie)
        .header("origin", format!("http://{host}"))
        .header("sec-websocket-protocol", "chat.v1")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let (ws, resp) = tokio_tungstenite::client_async(req.body(()).unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A shell script as the agent (`$0` is the message), not sandboxed.
pub fn sh_agent(script: &str) -> edge_chat::AgentSpec {
    edge_chat::AgentSpec {
        agent: edge_chat::Agent::Command {
            argv: vec!["sh".into(), "-c".into(), script.into(), "{message}".into()],
        },
        workspace: "/tmp".into(),
        timeout: Duration::from_secs(30),
        permission_timeout: Duration::from_secs(300),
        sandbox: None,
    }
}

/// A run's frames from `rx` up to and including its `end` (30 s at most between two).
pub async fn until_end(
    rx: &mut tokio::sync::broadcast::Receiver<edge_chat::RunFrame>,
) -> Vec<edge_chat::RunFrame> {
    let mut out = Vec::new();
    loop {
        let f = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("a frame within 30 s")
            .unwrap();
        let end = matches!(f.body, edge_chat::RunBody::End { .. });
        out.push(f);
        if end {
            return out;
        }
    }
}

/// Frames of `run` until (and with) the first for which `stop` holds.
pub async fn frames_until(
    run: &edge_chat::Run,
    stop: impl Fn(&edge_chat::RunFrame) -> bool,
) -> (
    Vec<edge_chat::RunFrame>,
    tokio::sync::broadcast::Receiver<edge_chat::RunFrame>,
) {
    let (missed, mut rx) = run.subscribe(0);
    let mut frames = missed.unwrap();
    while !frames.iter().any(&stop) {
        frames.push(
            tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .expect("a frame within 30 s")
                .unwrap(),
        );
    }
    (frames, rx)
}

/// Starts a run of `message` in a new conversation of alice's and returns all its frames.
pub async fn run_to_end(
    o: &std::sync::Arc<edge_chat::Orchestrator>,
    message: &str,
    spec: &edge_chat::AgentSpec,
) -> Vec<edge_chat::RunFrame> {
    let conv = o.conversations().create("alice", "t").unwrap();
    let run = o.start("alice", &conv.id, message, spec, None).unwrap();
    let (mut frames, mut rx) = frames_until(&run, |_| true).await;
    if !matches!(frames.last().unwrap().body, edge_chat::RunBody::End { .. }) {
        frames.extend(until_end(&mut rx).await);
    }
    frames
}

/// The run's `state` frames: (state, outpost, detail).
pub fn states(frames: &[edge_chat::RunFrame]) -> Vec<(String, Option<String>, Option<String>)> {
    frames
        .iter()
        .filter_map(|f| match &f.body {
            edge_chat::RunBody::State {
                state,
                outpost,
                detail,
            } => Some((state.clone(), outpost.clone(), detail.clone())),
            _ => None,
        })
        .collect()
}

/// The text the agent streamed.
pub fn delta_text(frames: &[edge_chat::RunFrame]) -> String {
    frames
        .iter()
        .filter_map(|f| match &f.body {
            edge_chat::RunBody::Event {
                event: edge_sandbox::Event::Delta { text, .. },
            } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

/// Whether a frame is a delta (the agent has started streaming).
pub fn is_delta(f: &edge_chat::RunFrame) -> bool {
    matches!(
        &f.body,
        edge_chat::RunBody::Event {
            event: edge_sandbox::Event::Delta { .. }
        }
    )
}

/// The run's outcome and detail.
pub fn outcome(frames: &[edge_chat::RunFrame]) -> (edge_chat::Outcome, Option<String>) {
    match &frames.last().unwrap().body {
        edge_chat::RunBody::End {
            outcome, detail, ..
        } => (*outcome, detail.clone()),
        other => panic!("the last frame is not the end: {other:?}"),
    }
}

/// `edge worker --listen` on a free loopback port, killed when dropped.
pub struct HttpWorker {
    pub child: tokio::process::Child,
    pub url: String,
}

pub async fn http_worker(args: &[&str], https: bool) -> HttpWorker {
    http_worker_env(args, https, &[]).await
}

/// The same, with extra environment (a `HOME` of its own makes it another "host" for the
/// agent's state).
pub async fn http_worker_env(args: &[&str], https: bool, env: &[(&str, &str)]) -> HttpWorker {
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["worker", "--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stderr.take().unwrap()));
    let ready = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.starts_with("edge worker listening on") {
                return;
            }
        }
        panic!("the worker exited before listening");
    });
    ready.await.expect("the worker listens within 10 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    HttpWorker {
        child,
        url: format!(
            "{}://127.0.0.1:{port}",
            if https { "https" } else { "http" }
        ),
    }
}

/// A WebSocket echo server on loopback.
pub async fn ws_echo() -> u16 {
    use futures_util::{SinkExt, StreamExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// A WebSocket through edge on `https` to `wss://HOST/live/`, trusting `ca` (PEM).
pub async fn wss(
    https: u16,
    host: &str,
    ca: &Path,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    wss_at(https, host, ca, "/live/", &[]).await.unwrap().0
}

/// A WebSocket through edge on `https` to `wss://HOST{path}` with `headers`, trusting `ca`
/// (PEM); a refused handshake is an `Err` with the response.
pub async fn wss_at(
    https: u16,
    host: &str,
    ca: &Path,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        u16,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    use rustls::pki_types::pem::PemObject;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", https))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.split(':').next().unwrap().to_string())
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    let mut req = format!("wss://{host}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let (ws, resp) = tokio_tungstenite::client_async(req, tls).await?;
    Ok((ws, resp.status().as_u16()))
}

/// Sends `text` on `ws` and expects it echoed within 5 s.
pub async fn echo(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    >,
    text: &str,
) {
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text(text))
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an echo")
        .unwrap()
        .unwrap();
    assert_eq!(m.into_text().unwrap().as_str(), text);
}

/// A child process sent SIGTERM (and waited for) when dropped.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Waits (up to 10 s) until `ready` says so, else panics naming `what`.
pub fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    for _ in 0..400 {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{what} did not start");
}

/// Debian's nginx in `dir` (its pid, logs and temp files there), listening on `port`, with
/// `http_body` inside its `http { }` block; returns once the port accepts.
pub fn nginx(dir: &Path, port: u16, http_body: &str) -> Killed {
    let d = dir.display();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/nginx-error.log error;\n\
             events {{ worker_connections 1024; }}\nhttp {{ access_log off; client_body_temp_path {d}/b; \
             proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
             {http_body}\n}}\n"
        ),
    )
    .unwrap();
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nginx is not installed; .ci/run installs it");
    let child = Killed(
        std::process::Command::new(bin)
            .args(["-p", &d.to_string(), "-c"])
            .arg(dir.join("nginx.conf"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("nginx", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    child
}

/// The stand-in for Claude Code that asks before each tool (`tests/fixtures/fake-claude-ask.sh`),
/// with `permission_mode = "ask"`, in `workspace`, not sandboxed.
pub fn ask_agent(workspace: &Path) -> edge_chat::AgentSpec {
    edge_chat::AgentSpec {
        agent: edge_chat::Agent::Claude {
            command: concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/fake-claude-ask.sh"
            )
            .into(),
            permission_mode: "ask".into(),
        },
        workspace: workspace.display().to_string(),
        timeout: Duration::from_secs(30),
        permission_timeout: Duration::from_secs(300),
        sandbox: None,
    }
}

/// A run of `spec` whose first tool question is answered (`allow` or not) as soon as it comes:
/// all its frames.
pub async fn run_answering(
    o: &std::sync::Arc<edge_chat::Orchestrator>,
    message: &str,
    spec: &edge_chat::AgentSpec,
    allow: bool,
) -> Vec<edge_chat::RunFrame> {
    let conv = o.conversations().create("alice", "t").unwrap();
    let run = o.start("alice", &conv.id, message, spec, None).unwrap();
    let (mut frames, mut rx) = frames_until(&run, |f| {
        matches!(
            f.body,
            edge_chat::RunBody::PermissionRequest { .. } | edge_chat::RunBody::End { .. }
        )
    })
    .await;
    if let Some(id) = frames.iter().find_map(|f| match &f.body {
        edge_chat::RunBody::PermissionRequest { request_id, .. } => Some(request_id.clone()),
        _ => None,
    }) {
        assert!(run.answer(&id, allow, "tester", false));
        frames.extend(until_end(&mut rx).await);
    }
    frames
}
