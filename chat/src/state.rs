//! What every handler shares: the config, the store, the orchestrator, the sockets' hubs, the
//! secrets, and the headers the gateway speaks in.

use std::sync::Arc;

use arc_swap::ArcSwap;
use edge_routing::Config;

use crate::login::DiscoveryCache;
use crate::store::Store;

/// The header the gateway sends the shared secret in (see `edge_gateway::SECRET_HEADER`).
pub const SECRET_HEADER: &str = "x-edge-auth-secret";
/// The header the gateway puts the signed-in user in.
pub const USER_HEADER: &str = "x-forwarded-user";

pub(crate) struct AppState {
    pub config: ArcSwap<Config>,
    pub store: Store,
    pub orch: Arc<crate::runs::Orchestrator>,
    pub hubs: Arc<crate::hubs::Hubs>,
    pub fa_secret: String,
    pub client_secret: Option<String>,
    pub http: reqwest::Client,
    pub discovery: DiscoveryCache,
    /// How a local worker is started (given by the binary).
    pub local_worker: std::sync::Mutex<Vec<String>>,
}

pub(crate) type St = Arc<AppState>;
