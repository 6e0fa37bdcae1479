//! The model of edge: the domain, projects, their mounts, the routing mode, and the resolution of
//! a request's `(host, path)` to a [`Decision`]. Pure: no I/O, no async, so every rule here is
//! tested with tables.
//!
//! [`Config::from_toml`] parses and validates a config file's text, reporting every problem at
//! once, each naming its key (`projects[0].routes[1].upstream: ...`).

mod config;
mod resolve;
mod target;
mod units;
mod walk;

pub use config::{
    AcmeConfig, AgentConfig, AgentKind, App, AuthServer, AuthSkip, CertsConfig, ChallengeKind,
    ChatConfig, ChatLimits, Config, ConfigError, ConfigErrors, DnsConfig, DnsProvider, ForwardAuth,
    IssuerKind, Limits, Listen, LogConfig, LoginKind, OutpostConfig, OutpostKind, PrefixMode,
    Project, ProjectCerts, ProjectChat, RegisterConfig, Route, RouteTarget, RoutingMode, Scheme,
    Upstream, CHAT_COOKIES, EMBEDDED_DEFAULT, PERMISSION_MODES,
};
mod locate;
pub use locate::locate;
pub use resolve::{normalize_host, Decision, RouteTable};
pub use target::{check_host, normalize_target, TargetError};
pub use units::{parse_duration, parse_size};
