//! The chat service behind `/chat/`: sign-in (OAuth2 authorization code with PKCE against
//! Forgejo or any OIDC provider, or a one-time login token), sessions in a SQLite store that
//! survives restarts, sign-out, and the verify endpoint the gateway's forward-auth asks before
//! letting a request through.
//!
//! ```text
//! /login            the signed-out page (a "Sign in with …" button), or explain the token login;
//!                   with `go=1` (the button) start a sign-in: 302 to the provider
//! /oauth/callback   finish it: check state, exchange the code, look the user up, set the cookie
//! /login/token      one-time token → session
//! /logout           end the session
//! /_auth/verify     forward-auth: 200 + X-Forwarded-User, 302 to /login, 401 or 403
//! /api/me, /ws      the signed-in user, over HTTP and WebSocket
//! ```

mod api;
mod app;
mod conversations;
mod frames;
mod hubs;
mod ids;
mod login;
pub mod metrics;
mod pages;
mod runs;
mod secret;
mod session;
mod signin;
mod state;
mod store;
mod talk;
mod ws;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use edge_routing::Config;

pub use app::{SECRET_HEADER, USER_HEADER};
pub use conversations::{now_rfc3339, Conversations, Meta, Record};
pub use runs::{
    probe_outpost, Agent, AgentSpec, Hello, Orchestrator, Outcome, Outpost, Run, RunBody, RunFrame,
    CANCEL_GRACE, RING,
};
pub use secret::{load_or_create_secret, read_secret};
pub use store::{Session, Store, FLOW_TTL};
pub use talk::agent_confine;

/// What went wrong in the chat.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("chat config: {0}")]
    Config(String),
    #[error("chat store: {0}")]
    Store(String),
    #[error("sign-in provider: {0}")]
    Provider(String),
    /// A sign-in that did not go through (rendered as a page that says so).
    #[error("{0}")]
    Refused(String),
    /// No such conversation (or run) for this user: 404.
    #[error("{0}")]
    NotFound(String),
    /// The conversation already has a run going: 409.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Internal(String),
}

/// How long a one-time login link stays usable.
pub const LOGIN_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The chat service. Cheap to clone.
#[derive(Clone)]
pub struct Chat {
    st: Arc<app::AppState>,
}

impl std::fmt::Debug for Chat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat").finish_non_exhaustive()
    }
}

/// The outposts of a config as the orchestrator runs them (see
/// [`edge_workers::outposts::config::from_config`]): `local` runs `local`, the binary's own
/// worker command; SSH outposts' pinned host keys are written under the chat's store.
pub fn outposts(
    list: &[edge_routing::OutpostConfig],
    state_dir: &Path,
    local: &[String],
) -> Result<Vec<runs::Outpost>, Error> {
    edge_workers::outposts::config::from_config(
        list,
        state_dir,
        &store_dir(state_dir).join("outposts"),
        local,
    )
    .map_err(Error::Config)
}

/// The chat's store directory under a state directory.
pub fn store_dir(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("chat")
}

impl Chat {
    /// Opens the chat for `config` with no local worker command (runs need outposts, or
    /// [`Chat::set_worker`]); see [`Chat::open_with_worker`].
    pub fn open(
        config: Config,
        state_dir: &Path,
        fa_secret: String,
        client_secret: Option<String>,
    ) -> Result<Chat, Error> {
        Chat::open_with_worker(config, state_dir, fa_secret, client_secret, Vec::new())
    }

    /// Opens the chat for `config` (which must have a `[chat]` table). `fa_secret` is the
    /// forward-auth secret the gateway will show; `client_secret` the OAuth client's; `worker`
    /// the command that starts a local worker (edge gives its own `worker --stdio`).
    pub fn open_with_worker(
        config: Config,
        state_dir: &Path,
        fa_secret: String,
        client_secret: Option<String>,
        worker: Vec<String>,
    ) -> Result<Chat, Error> {
        if config.chat.is_none() {
            return Err(Error::Config("the config has no [chat] table".into()));
        }
        if fa_secret.trim().is_empty() {
            return Err(Error::Config("the forward-auth secret is empty".into()));
        }
        let store = Store::open(&store_dir(state_dir))?;
        let conversations = Conversations::new(store_dir(state_dir).join("conversations"));
        let interrupted = match conversations.recover_interrupted() {
            Ok(0) => 0,
            Ok(n) => {
                tracing::warn!(
                    runs = n,
                    "runs cut short by a previous stop are marked interrupted"
                );
                n
            }
            Err(e) => {
                tracing::error!(error = %e, "could not check conversations for interrupted runs");
                0
            }
        };
        let orch = runs::Orchestrator::new(worker.clone(), conversations);
        orch.metrics.interrupted(interrupted as u64);
        if !config.outposts.is_empty() {
            orch.set_outposts(outposts(&config.outposts, state_dir, &worker)?);
        }
        Ok(Chat {
            st: Arc::new(app::AppState {
                config: ArcSwap::from_pointee(config),
                store,
                orch,
                hubs: Default::default(),
                fa_secret: fa_secret.trim().to_string(),
                client_secret,
                http: login::http_client(),
                discovery: Default::default(),
                local_worker: std::sync::Mutex::new(worker),
            }),
        })
    }

    /// Applies a new config (allowlists, provider, session lifetimes) to the next request, and
    /// its outposts to the next run. Refused, changing nothing, if an outpost cannot be set up
    /// (a token file missing, say).
    pub fn reload(&self, config: Config) -> Result<(), Error> {
        if config.outposts != self.st.config.load().outposts {
            let worker = self
                .st
                .local_worker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let list = if config.outposts.is_empty() {
                vec![runs::Outpost::local(worker)]
            } else {
                outposts(&config.outposts, &config.state_dir, &worker)?
            };
            self.st.orch.set_outposts(list);
            tracing::info!(outposts = config.outposts.len(), "outposts reloaded");
        }
        *self
            .st
            .discovery
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        self.st.config.store(Arc::new(config));
        Ok(())
    }

    /// The outposts as JSON: name, runs going, capacity, and why one is resting (`GET
    /// /outposts` on edge's admin listener, `edge workers`).
    pub fn outposts_json(&self) -> String {
        let list: Vec<serde_json::Value> = self
            .st
            .orch
            .outpost_status()
            .into_iter()
            .map(|(name, running, capacity, resting)| {
                serde_json::json!({
                    "name": name,
                    "running": running,
                    "capacity": if capacity == u64::MAX { serde_json::Value::Null } else { capacity.into() },
                    "resting": resting,
                })
            })
            .collect();
        serde_json::Value::Array(list).to_string()
    }

    /// On the way out: ends the SSH outposts' shared connections (`ssh -O exit`), which would
    /// otherwise outlive edge by their `ControlPersist`.
    pub async fn close_outposts(&self) {
        for o in self.st.orch.outposts() {
            edge_workers::outposts::close(&o.via).await;
        }
    }

    pub fn router(&self) -> axum::Router {
        app::router(self.st.clone())
    }

    /// The command that starts a worker (default: this executable's `worker --stdio`).
    pub fn set_worker(&self, argv: Vec<String>) {
        *self
            .st
            .local_worker
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = argv.clone();
        self.st.orch.set_worker(argv);
    }

    pub fn orchestrator(&self) -> &std::sync::Arc<Orchestrator> {
        &self.st.orch
    }

    pub fn store(&self) -> &Store {
        &self.st.store
    }

    /// Serves the chat on `listener` until `shutdown` completes.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// A one-time sign-in link for `user`, good for [`LOGIN_TOKEN_TTL`]. `base` is the chat's
    /// public base (`https://demo.example.test/chat`).
    pub async fn login_url(&self, base: &str, user: &str) -> Result<String, Error> {
        login_url(&self.st.store, base, user).await
    }
}

/// A one-time sign-in link, written straight into a store (also usable while another process
/// serves the chat: the store is one SQLite file).
pub async fn login_url(store: &Store, base: &str, user: &str) -> Result<String, Error> {
    let token = ids::random(32)?;
    store.put_login_token(&token, user, LOGIN_TOKEN_TTL).await?;
    Ok(format!("{base}/login/token?token={token}"))
}
