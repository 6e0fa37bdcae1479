//! The gateway: edge's reverse proxy on hyper 1.x.
//!
//! One [`Gateway`] serves any number of listeners: HTTPS (HTTP/1.1 and HTTP/2 by ALPN, the
//! certificate chosen by SNI), plain HTTP (a redirect to HTTPS, or the mounts themselves behind
//! a TLS tunnel; HTTP/2 with prior knowledge too), and the admin listener. The route table and
//! certificates live behind `ArcSwap`s: [`Gateway::reload`] swaps them whole, and connections,
//! WebSockets and downloads already open carry on.
//!
//! Each request goes through [`proxy`]'s steps in the order it lives: hygiene (client
//! forwarding and identity claims dropped), routing (`edge_routing`), then a static file, an
//! upstream (HTTP/1.1 pooled, or h2c for gRPC) or the gateway's own page.

mod access_log;
mod admin;
mod body;
mod fast;
mod forward_auth;
mod hygiene;
mod metrics;
mod pages;
mod proxy;
mod runtime;
mod server;
mod state;
mod static_files;
mod tls;
mod tunnel;
mod upstream;

pub use admin::{ReloadFn, StatusFn};
pub use forward_auth::{SECRET_HEADER, VERIFY_PATH};
pub use hygiene::{is_client_claim, strip_client_claims, strip_hop_by_hop};
pub use metrics::Metrics;
pub use runtime::Runtime;
pub use state::{Error, Gateway, Http01Fn, RenewFn};
pub use static_files::parse_range;
pub use tls::ProjectCert;
pub use tunnel::{authority as tunnel_authority, TunnelDialer, TunnelFuture, TunnelIo};

pub(crate) use state::Shared;
