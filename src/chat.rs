//! The chat service as the binary runs it: its secrets read from files (or created), its
//! listener, and `edge chat` (the chat alone) and `edge chat login-url`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use edge_chat::Chat;
use edge_routing::{Config, LoginKind};
use tokio::net::TcpListener;

use crate::cli::{Failure, Loaded};

/// A secret file's path: relative paths are under `state_dir`.
fn under_state(config: &Config, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config.state_dir.join(p)
    }
}

/// The chat for `config` and the forward-auth secret, or None when the config has no chat.
pub fn open(config: &Config) -> Result<Option<(Chat, String)>, Failure> {
    let Some(c) = &config.chat else {
        return Ok(None);
    };
    let fa_path = under_state(config, &c.forward_auth_secret_file);
    let fa = edge_chat::load_or_create_secret(&fa_path)
        .context("chat.forward_auth_secret_file")
        .map_err(Failure::config)?;
    let client_secret = match &c.client_secret_file {
        Some(p) => Some(
            edge_chat::read_secret(&under_state(config, p))
                .context("chat.client_secret_file")
                .map_err(Failure::config)?,
        ),
        None => None,
    };
    // The local outpost's worker: this binary's own `worker --stdio`.
    let worker = std::env::current_exe()
        .map(|e| {
            vec![
                e.to_string_lossy().into_owned(),
                "worker".into(),
                "--stdio".into(),
            ]
        })
        .context("finding edge's own program for the local worker")?;
    let chat = Chat::open_with_worker(
        config.clone(),
        &config.state_dir,
        fa.clone(),
        client_secret,
        worker,
    )
    .context("opening the chat")
    .map_err(Failure::config)?;
    Ok(Some((chat, fa)))
}

pub async fn bind(config: &Config) -> Result<Option<TcpListener>, Failure> {
    let Some(c) = &config.chat else {
        return Ok(None);
    };
    let l = TcpListener::bind(c.listen)
        .await
        .with_context(|| format!("binding chat.listen {}", c.listen))?;
    Ok(Some(l))
}

/// The chat's public base for the default project as `edge up` serves it.
pub fn default_base(config: &Config, https_port: Option<u16>) -> Option<String> {
    let host = config.project_host(config.default_project);
    let (proto, host) = match (https_port, config.listen.http) {
        (Some(443), _) => ("https", host),
        (Some(p), _) => ("https", format!("{host}:{p}")),
        (None, Some(a)) if a.port() == 80 => ("http", host),
        (None, Some(a)) => ("http", format!("{host}:{}", a.port())),
        (None, None) => ("https", host),
    };
    config.chat_base(proto, &host)
}

/// Prints a fresh one-time sign-in link when the chat signs people in by token.
pub async fn print_login_url(chat: &Chat, config: &Config, https_port: Option<u16>) {
    let Some(c) = &config.chat else { return };
    if c.login != LoginKind::Token {
        return;
    }
    let Some(base) = default_base(config, https_port) else {
        return;
    };
    match chat.login_url(&base, &c.token_user).await {
        Ok(url) => {
            println!(
                "  Chat sign-in (one-time link, valid 24 h; `edge chat login-url` prints another):"
            );
            println!("    {url}");
            println!();
        }
        Err(e) => tracing::error!(error = %e, "could not create a sign-in link"),
    }
}

/// `edge chat login-url`: a new one-time link. The running edge makes it (`POST
/// /chat/login-url` on its admin listener), in its own store, whatever config this command was
/// given; with no edge answering there, it is written into the store of this config's
/// `state_dir`, and the command says so.
pub fn login_url(loaded: Loaded, project: Option<String>) -> Result<(), Failure> {
    if let Some(url) = ask_running_edge(&loaded.config, project.as_deref())? {
        println!("{url}");
        return Ok(());
    }
    if let Some(a) = loaded.config.listen.admin {
        eprintln!(
            "no edge answers on the admin listener {a}: the link is written to the chat's store in {} and works once an edge using that state directory runs",
            loaded.config.state_dir.display()
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let url = rt.block_on(login_link(&loaded.config, project.as_deref()))?;
    println!("{url}");
    Ok(())
}

/// A one-time link made by the edge answering on the config's admin listener (`None`: no edge
/// answers there). Blocking.
pub fn ask_running_edge(config: &Config, project: Option<&str>) -> Result<Option<String>, Failure> {
    let Some(admin) = config.listen.admin else {
        return Ok(None);
    };
    let Ok(s) = std::net::TcpStream::connect_timeout(&admin, std::time::Duration::from_secs(2))
    else {
        return Ok(None);
    };
    let path = match project {
        Some(p) => format!(
            "/chat/login-url?project={}",
            url::form_urlencoded::byte_serialize(p.as_bytes()).collect::<String>()
        ),
        None => "/chat/login-url".to_string(),
    };
    let a = admin.to_string();
    match crate::up::admin_post_on(s, &a, &path)? {
        (true, body) => Ok(Some(body)),
        (false, body) => Err(Failure::config(anyhow::anyhow!(
            "the edge answering on its admin listener {a}: {body}"
        ))),
    }
}

/// Where a one-time link for `project` (else the default one) leads, and whom it signs in:
/// `(the chat's base URL, the user)`.
pub fn login_target(config: &Config, project: Option<&str>) -> Result<(String, String), Failure> {
    let Some(c) = &config.chat else {
        return Err(Failure::config(anyhow::anyhow!(
            "the config has no [chat] table"
        )));
    };
    if c.login != LoginKind::Token {
        return Err(Failure::config(anyhow::anyhow!(
            "chat.login is {:?}: people sign in through the provider, not with links",
            c.login.as_str()
        )));
    }
    let mut config = config.clone();
    if let Some(name) = project {
        match config.projects.iter().position(|p| p.name == name) {
            Some(i) => config.default_project = i,
            None => {
                return Err(Failure::config(anyhow::anyhow!(
                    "{name:?} names no project"
                )))
            }
        }
    }
    let base = default_base(&config, config.listen.https.map(|a| a.port())).ok_or_else(|| {
        Failure::config(anyhow::anyhow!(
            "project {:?} has no route with upstream = \"chat\"",
            config.projects[config.default_project].name
        ))
    })?;
    Ok((base, c.token_user.clone()))
}

/// A new one-time sign-in link written straight into the chat's store under the config's
/// `state_dir` (for when no edge runs; a running edge makes its own, `ask_running_edge`).
pub async fn login_link(config: &Config, project: Option<&str>) -> Result<String, Failure> {
    let (base, user) = login_target(config, project)?;
    let store = edge_chat::Store::open(&edge_chat::store_dir(&config.state_dir))
        .context("opening the chat store")?;
    Ok(edge_chat::login_url(&store, &base, &user)
        .await
        .context("creating the link")?)
}

/// `edge chat`: the chat service alone (the gateway runs elsewhere and forwards to it).
pub fn run_alone(loaded: Loaded) -> Result<(), Failure> {
    crate::up::init_tracing(loaded.config.log.json);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let config = loaded.config;
        let (chat, _) = open(&config)?.ok_or_else(|| {
            Failure::config(anyhow::anyhow!("the config has no [chat] table"))
        })?;
        let l = bind(&config).await?.expect("a config with a chat has chat.listen");
        let addr = l.local_addr().context("listener address")?;
        tracing::info!(%addr, "serving the chat");
        print_login_url(&chat, &config, config.listen.https.map(|a| a.port())).await;
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        chat.serve(l, shutdown).await.context("serving the chat")?;
        Ok(())
    })
}
