//! The whole sign-in path on loopback: a gateway over TLS (local CA), the chat behind
//! `/chat/` with forward-auth, an echo upstream on other mounts, and a real OpenID Connect
//! provider (panva's `oidc-provider`, run with node from `chat/tests/js`). The client is an
//! HTTP client with a cookie jar that follows the provider's forms as a person would.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use edge_chat::Chat;
use edge_gateway::{Gateway, ProjectCert};
use edge_routing::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const CLIENT_ID: &str = "edge-chat";
pub const CLIENT_SECRET: &str = "test-client-secret";

pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// The node modules `.ci/run` installs; a clear failure when they are missing.
pub fn need_node_modules() {
    let m = js_dir().join("node_modules/oidc-provider");
    assert!(
        m.exists(),
        "{} is missing: run `npm ci --prefix chat/tests/js` (bash .ci/run does)",
        m.display()
    );
}

/// A running oidc-provider; killed on drop.
pub struct Provider {
    child: Child,
    pub issuer: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_provider(redirect_uris: &[String]) -> Provider {
    need_node_modules();
    let mut child = Command::new("node")
        .arg(js_dir().join("provider.mjs"))
        .env("CLIENT_ID", CLIENT_ID)
        .env("CLIENT_SECRET", CLIENT_SECRET)
        .env("REDIRECT_URIS", redirect_uris.join(","))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node must be installed (bash .ci/run installs it)");
    let out = child.stdout.take().unwrap();
    let mut out = BufReader::new(out);
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    // Keep reading: the provider logs to stdout, and a closed pipe would kill it (EPIPE).
    std::thread::spawn(move || {
        let mut sink = String::new();
        while out.read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    });
    let issuer = line
        .trim()
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("provider did not start: {line:?}"))
        .to_string();
    Provider { child, issuer }
}

fn certs_for(config: &Config, dir: &Path) -> (Vec<ProjectCert>, String) {
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

/// An upstream that answers with the request's headers, one `name: value` line each.
pub async fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = axum::Router::new().fallback(|req: Request| async move {
        let mut s = format!("{} {}\n", req.method(), req.uri());
        for (k, v) in req.headers() {
            s.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
        }
        s
    });
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

pub struct Env {
    pub gw: Gateway,
    pub chat: Chat,
    pub https: SocketAddr,
    pub chat_addr: SocketAddr,
    pub provider: Option<Provider>,
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub config: Config,
    pub stop_chat: CancellationToken,
    pub stop: CancellationToken,
    pub fa_secret: String,
}

pub struct Options<'a> {
    pub routing: &'a str,
    /// The `[chat]` table's login keys (provider, allowlist); `@ISSUER@` is replaced.
    pub chat: &'a str,
    /// Extra routes (TOML) after the standard ones.
    pub extra_routes: &'a str,
    /// Start the OIDC provider.
    pub oidc: bool,
    /// The forge mount's upstream (default: the echo upstream).
    pub forge: Option<SocketAddr>,
}

impl Env {
    pub async fn start(o: Options<'_>) -> Env {
        let https_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let chat_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let https = https_l.local_addr().unwrap();
        let chat_addr = chat_l.local_addr().unwrap();
        let port = https.port();
        let provider = o.oidc.then(|| {
            start_provider(&[
                format!("https://demo.example.test:{port}/chat/oauth/callback"),
                format!("https://chat.demo.example.test:{port}/oauth/callback"),
                format!("https://other.example.test:{port}/chat/oauth/callback"),
            ])
        });
        let echo = echo().await;
        let forge = o.forge.unwrap_or(echo);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("client-secret"),
            format!("{CLIENT_SECRET}\n"),
        )
        .unwrap();
        let issuer = provider
            .as_ref()
            .map(|p| p.issuer.clone())
            .unwrap_or_default();
        let text = format!(
            r#"domain = "example.test"
routing = "{routing}"
state_dir = "{dir}"
[listen]
https = "{https}"
http = ""
admin = ""
[[projects]]
name = "demo"
default = "chat"
  [[projects.routes]]
  mount = "forge"
  upstream = "http://{forge}"
  [[projects.routes]]
  mount = "staging"
  upstream = "http://{echo}"
  untrusted = false
  auth = "forward"
  auth_cache = "0s"
  [[projects.routes]]
  mount = "chat"
  upstream = "chat"
  auth = "forward"
  auth_cache = "0s"
{extra}
[chat]
listen = "{chat_addr}"
client_secret_file = "client-secret"
{chat}
"#,
            routing = o.routing,
            dir = dir.path().display(),
            extra = o.extra_routes,
            chat = o
                .chat
                .replace("@ISSUER@", &issuer)
                .replace("@PORT@", &port.to_string()),
        );
        let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let (certs, ca_pem) = certs_for(&config, dir.path());
        let fa_secret = edge_chat::load_or_create_secret(&dir.path().join("fa-secret")).unwrap();
        let client_secret = config
            .chat
            .as_ref()
            .unwrap()
            .client_secret_file
            .as_ref()
            .map(|p| edge_chat::read_secret(&dir.path().join(p)).unwrap());
        let chat =
            Chat::open(config.clone(), dir.path(), fa_secret.clone(), client_secret).unwrap();
        let gw = Gateway::new(config.clone(), dir.path(), &certs).unwrap();
        gw.set_forward_auth_secret(&fa_secret).unwrap();
        let stop = CancellationToken::new();
        let stop_chat = CancellationToken::new();
        {
            let (c, t) = (chat.clone(), stop_chat.clone());
            tokio::spawn(async move { c.serve(chat_l, t.cancelled_owned()).await.unwrap() });
            let (g, t) = (gw.clone(), stop.clone());
            tokio::spawn(async move { g.serve_https(https_l, t.cancelled_owned()).await.unwrap() });
        }
        Env {
            gw,
            chat,
            https,
            chat_addr,
            provider,
            dir,
            ca_pem,
            config,
            stop_chat,
            stop,
            fa_secret,
        }
    }

    /// `https://demo.example.test:PORT` (or another host of the project).
    pub fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.https.port())
    }

    /// A browser-like client: a cookie jar, no automatic redirects, the test CA trusted, every
    /// `*.example.test` name at the gateway.
    pub fn client(&self) -> Client {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let mut b = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .timeout(Duration::from_secs(20));
        for h in [
            "demo.example.test",
            "chat.demo.example.test",
            "forge.demo.example.test",
            "staging.demo.example.test",
            "other.example.test",
        ] {
            b = b.resolve(h, self.https);
        }
        Client {
            http: b.build().unwrap(),
            jar,
        }
    }

    /// Restarts the chat service on the same address and state (sessions must survive).
    pub async fn restart_chat(&mut self) {
        self.stop_chat.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut l = None;
        for _ in 0..50 {
            match TcpListener::bind(self.chat_addr).await {
                Ok(x) => {
                    l = Some(x);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let l = l.expect("rebinding the chat's address");
        let client_secret = Some(CLIENT_SECRET.to_string());
        self.chat = Chat::open(
            self.config.clone(),
            self.dir.path(),
            self.fa_secret.clone(),
            client_secret,
        )
        .unwrap();
        self.stop_chat = CancellationToken::new();
        let (c, t) = (self.chat.clone(), self.stop_chat.clone());
        tokio::spawn(async move { c.serve(l, t.cancelled_owned()).await.unwrap() });
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop.cancel();
        self.stop_chat.cancel();
    }
}

pub struct Client {
    pub http: reqwest::Client,
    pub jar: Arc<reqwest::cookie::Jar>,
}

pub struct Answer {
    pub status: u16,
    pub location: Option<String>,
    pub set_cookies: Vec<String>,
    pub text: String,
}

impl Client {
    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Answer {
        let mut r = self.http.get(url);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        answer(r.send().await.unwrap()).await
    }

    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        form: &[(String, String)],
    ) -> Answer {
        let mut r = self.http.post(url).form(form);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        answer(r.send().await.unwrap()).await
    }

    /// The chat cookie's value in the jar for `url`.
    /// A POST with a JSON body.
    pub async fn post_json(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
    ) -> Answer {
        let mut r = self.http.post(url).json(body);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        answer(r.send().await.unwrap()).await
    }

    pub fn session_cookie(&self, url: &str) -> Option<String> {
        use reqwest::cookie::CookieStore;
        let v = self.jar.cookies(&url.parse().unwrap())?;
        v.to_str()
            .unwrap()
            .split("; ")
            .find_map(|p| {
                p.strip_prefix("__Host-edge-chat=")
                    .or_else(|| p.strip_prefix("__Secure-edge-chat="))
            })
            .map(str::to_string)
    }

    /// From an authorize URL at the provider, signs in as `login` through the provider's
    /// forms (login, then consent) and returns the callback URL the provider sends the
    /// browser to (not yet visited).
    pub async fn provider_sign_in(&self, authorize: &str, login: &str) -> String {
        let mut next = Some((authorize.to_string(), None::<Vec<(String, String)>>));
        for _ in 0..20 {
            let (url, form) = next.take().expect("the provider flow ended early");
            let a = match &form {
                None => self.get(&url, &[]).await,
                Some(f) => self.post(&url, &[], f).await,
            };
            if let Some(loc) = a.location {
                let to = url::Url::parse(&url)
                    .unwrap()
                    .join(&loc)
                    .unwrap()
                    .to_string();
                if to.contains("example.test") {
                    return to;
                }
                next = Some((to, None));
                continue;
            }
            assert_eq!(a.status, 200, "provider page {url}: {}", a.text);
            let (action, mut fields) = parse_form(&a.text)
                .unwrap_or_else(|| panic!("no form on the provider page {url}: {}", a.text));
            if a.text.contains("name=\"login\"") {
                fields.push(("login".into(), login.into()));
                fields.push(("password".into(), "any password".into()));
            }
            let to = url::Url::parse(&url)
                .unwrap()
                .join(&action)
                .unwrap()
                .to_string();
            next = Some((to, Some(fields)));
        }
        panic!("the provider flow did not end in 20 steps");
    }
}

async fn answer(r: reqwest::Response) -> Answer {
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    let set_cookies = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let text = r.text().await.unwrap_or_default();
    Answer {
        status,
        location,
        set_cookies,
        text,
    }
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let i = tag.find(&key)? + key.len();
    let j = tag[i..].find('"')? + i;
    Some(tag[i..j].replace("&amp;", "&"))
}

/// The first form's action and its hidden inputs.
fn parse_form(html: &str) -> Option<(String, Vec<(String, String)>)> {
    let start = html.find("<form")?;
    let end = html[start..].find("</form>")? + start;
    let form = &html[start..end];
    let action = attr(&form[..form.find('>')?], "action")?;
    let mut fields = Vec::new();
    let mut rest = form;
    while let Some(i) = rest.find("<input") {
        let tag_end = rest[i..].find('>').map(|j| i + j).unwrap_or(rest.len());
        let tag = &rest[i..tag_end];
        if tag.contains("type=\"hidden\"") {
            if let (Some(n), Some(v)) = (attr(tag, "name"), attr(tag, "value")) {
                fields.push((n, v));
            }
        }
        rest = &rest[tag_end..];
    }
    Some((action, fields))
}

/// Query parameter `name` of `url`.
pub fn query(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
