//! Talking to the sign-in provider: the authorization URL (code flow, PKCE S256, `state`), the
//! code exchange at the provider's internal URL, and who the user is (Forgejo's API or OIDC
//! userinfo), with their orgs and teams when the allowlist needs them.

use std::sync::Mutex;
use std::time::Duration;

use edge_routing::{ChatConfig, LoginKind};
use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse, TokenUrl,
};
use serde::Deserialize;

use crate::Error;

/// The provider's endpoints as edge uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoints {
    /// Where the browser is sent (public).
    pub authorize: String,
    /// Where edge exchanges the code (internal when configured).
    pub token: String,
    /// OIDC userinfo (internal when configured); None for Forgejo, whose API is used instead.
    pub userinfo: Option<String>,
}

/// Who signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub user: String,
    pub orgs: Vec<String>,
    /// `org/team`.
    pub teams: Vec<String>,
}

/// Whether `id` is on the config's allowlist (names compare case-insensitively, as Forgejo's do).
pub(crate) fn allowed(cfg: &ChatConfig, id: &Identity) -> bool {
    let eq = |a: &String, b: &String| a.eq_ignore_ascii_case(b);
    cfg.allowed_users.iter().any(|u| eq(u, &id.user))
        || cfg
            .allowed_orgs
            .iter()
            .any(|o| id.orgs.iter().any(|x| eq(o, x)))
        || cfg
            .allowed_teams
            .iter()
            .any(|t| id.teams.iter().any(|x| eq(t, x)))
}

/// The provider client: HTTP without redirects (a token endpoint that redirects is refusing),
/// bounded in time.
pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .user_agent("edge-chat")
        .build()
        .unwrap_or_default()
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    userinfo_endpoint: Option<String>,
}

/// Rewrites a URL the provider published with its public base onto its internal base.
fn internal(url: &str, public: &str, backend: &str) -> String {
    match url.strip_prefix(public) {
        Some(rest) if public != backend => format!("{backend}{rest}"),
        _ => url.to_string(),
    }
}

/// Discovery results, kept per provider URL.
#[derive(Debug, Default)]
pub(crate) struct DiscoveryCache(pub(crate) Mutex<Option<(String, Endpoints)>>);

pub(crate) async fn endpoints(
    cfg: &ChatConfig,
    http: &reqwest::Client,
    cache: &DiscoveryCache,
) -> Result<Endpoints, Error> {
    let public = cfg
        .provider_url
        .as_deref()
        .ok_or_else(|| Error::Config("chat.provider_url is not set".into()))?;
    let backend = cfg.provider_backend_url().unwrap_or(public);
    match cfg.login {
        LoginKind::Token => Err(Error::Config(
            "chat.login = \"token\" has no provider".into(),
        )),
        LoginKind::Forgejo => Ok(Endpoints {
            authorize: format!("{public}/login/oauth/authorize"),
            token: format!("{backend}/login/oauth/access_token"),
            userinfo: None,
        }),
        LoginKind::Oidc => {
            if let Some((url, e)) = &*cache.0.lock().unwrap_or_else(|e| e.into_inner()) {
                if url == public {
                    return Ok(e.clone());
                }
            }
            let url = format!("{backend}/.well-known/openid-configuration");
            let d: Discovery = http
                .get(&url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| Error::Provider(format!("discovery at {url}: {e}")))?
                .json()
                .await
                .map_err(|e| Error::Provider(format!("discovery at {url}: {e}")))?;
            // Issuers are compared without a trailing slash (Gitea 1.25 dropped it: gitea#35830).
            if d.issuer.trim_end_matches('/') != public.trim_end_matches('/') {
                return Err(Error::Provider(format!(
                    "the provider says its issuer is {:?}, but chat.provider_url is {public:?}",
                    d.issuer
                )));
            }
            let e = Endpoints {
                authorize: d.authorization_endpoint,
                token: internal(&d.token_endpoint, public, backend),
                userinfo: d.userinfo_endpoint.map(|u| internal(&u, public, backend)),
            };
            *cache.0.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((public.to_string(), e.clone()));
            Ok(e)
        }
    }
}

fn oauth_client(
    cfg: &ChatConfig,
    secret: Option<&str>,
    e: &Endpoints,
    redirect_uri: &str,
) -> Result<
    oauth2::basic::BasicClient<
        oauth2::EndpointSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointSet,
    >,
    Error,
> {
    let bad = |what: &str, e: url::ParseError| Error::Config(format!("{what}: {e}"));
    let mut c = BasicClient::new(ClientId::new(cfg.client_id.clone().unwrap_or_default()))
        .set_auth_uri(AuthUrl::new(e.authorize.clone()).map_err(|x| bad("authorize URL", x))?)
        .set_token_uri(TokenUrl::new(e.token.clone()).map_err(|x| bad("token URL", x))?)
        .set_redirect_uri(
            RedirectUrl::new(redirect_uri.to_string()).map_err(|x| bad("redirect URI", x))?,
        );
    if let Some(s) = secret {
        c = c.set_client_secret(ClientSecret::new(s.to_string()));
    }
    Ok(c)
}

/// The URL that starts a sign-in, and the PKCE verifier to keep for the callback.
pub(crate) fn authorize_url(
    cfg: &ChatConfig,
    secret: Option<&str>,
    e: &Endpoints,
    redirect_uri: &str,
    state: &str,
) -> Result<(String, String), Error> {
    let client = oauth_client(cfg, secret, e, redirect_uri)?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let state = state.to_string();
    let mut req = client
        .authorize_url(move || CsrfToken::new(state))
        .set_pkce_challenge(challenge);
    let scopes: &[&str] = match cfg.login {
        LoginKind::Oidc => &["openid", "profile"],
        _ => &["read:user", "read:organization"],
    };
    for s in scopes {
        req = req.add_scope(Scope::new((*s).to_string()));
    }
    let (url, _) = req.url();
    Ok((url.to_string(), verifier.secret().clone()))
}

/// Exchanges the code, then asks who the user is.
pub(crate) async fn finish(
    cfg: &ChatConfig,
    secret: Option<&str>,
    e: &Endpoints,
    http: &reqwest::Client,
    redirect_uri: &str,
    code: &str,
    verifier: &str,
) -> Result<Identity, Error> {
    let client = oauth_client(cfg, secret, e, redirect_uri)?;
    let token = client
        .exchange_code(AuthorizationCode::new(code.to_string()))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()))
        .request_async(http)
        .await
        .map_err(|err| {
            let detail = match &err {
                oauth2::RequestTokenError::ServerResponse(r) => format!("{}", r.error()),
                other => other.to_string(),
            };
            Error::Refused(format!("the provider refused the sign-in code ({detail})"))
        })?;
    let access = token.access_token().secret().clone();
    match cfg.login {
        LoginKind::Oidc => {
            let url = e.userinfo.as_deref().ok_or_else(|| {
                Error::Provider("the provider publishes no userinfo endpoint".into())
            })?;
            let v: serde_json::Value = get_json(http, url, &access).await?;
            let user = v
                .get("preferred_username")
                .and_then(|u| u.as_str())
                .or_else(|| v.get("sub").and_then(|u| u.as_str()))
                .ok_or_else(|| {
                    Error::Provider("userinfo has neither preferred_username nor sub".into())
                })?;
            Ok(Identity {
                user: user.to_string(),
                orgs: Vec::new(),
                teams: Vec::new(),
            })
        }
        _ => {
            let backend = cfg
                .provider_backend_url()
                .ok_or_else(|| Error::Config("chat.provider_url is not set".into()))?;
            #[derive(Deserialize)]
            struct User {
                login: String,
            }
            #[derive(Deserialize)]
            struct Org {
                username: String,
            }
            #[derive(Deserialize)]
            struct Team {
                name: String,
                organization: Option<Org>,
            }
            let u: User = get_json(http, &format!("{backend}/api/v1/user"), &access).await?;
            let mut id = Identity {
                user: u.login,
                orgs: Vec::new(),
                teams: Vec::new(),
            };
            if !cfg.allowed_orgs.is_empty() {
                let orgs: Vec<Org> =
                    get_json(http, &format!("{backend}/api/v1/user/orgs"), &access).await?;
                id.orgs = orgs.into_iter().map(|o| o.username).collect();
            }
            if !cfg.allowed_teams.is_empty() {
                let teams: Vec<Team> =
                    get_json(http, &format!("{backend}/api/v1/user/teams"), &access).await?;
                id.teams = teams
                    .into_iter()
                    .filter_map(|t| t.organization.map(|o| format!("{}/{}", o.username, t.name)))
                    .collect();
            }
            Ok(id)
        }
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> Result<T, Error> {
    http.get(url)
        .bearer_auth(token)
        .header("accept", "application/json")
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| Error::Provider(format!("{url}: {e}")))?
        .json()
        .await
        .map_err(|e| Error::Provider(format!("{url}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_by_user_org_and_team() {
        let mut cfg = edge_routing::Config::from_toml(
            "[chat]\nlogin = \"forgejo\"\nprovider_url = \"https://f.test\"\nclient_id = \"c\"\nallowed_users = [\"Alice\"]\nallowed_orgs = [\"ops\"]\nallowed_teams = [\"dev/core\"]\n[[projects]]\nname = \"p\"\n[[projects.routes]]\nmount = \"chat\"\nupstream = \"chat\"\n",
        )
        .unwrap()
        .chat
        .unwrap();
        let id = |u: &str, orgs: &[&str], teams: &[&str]| Identity {
            user: u.into(),
            orgs: orgs.iter().map(|s| s.to_string()).collect(),
            teams: teams.iter().map(|s| s.to_string()).collect(),
        };
        assert!(allowed(&cfg, &id("alice", &[], &[])));
        assert!(allowed(&cfg, &id("bob", &["OPS"], &[])));
        assert!(allowed(&cfg, &id("carol", &[], &["dev/core"])));
        assert!(!allowed(&cfg, &id("mallory", &["dev"], &["dev/other"])));
        cfg.allowed_users.clear();
        assert!(!allowed(&cfg, &id("alice", &[], &[])));
    }

    #[test]
    fn published_urls_move_to_the_internal_base() {
        assert_eq!(
            internal(
                "https://d.test/forge/login/oauth/access_token",
                "https://d.test/forge",
                "http://127.0.0.1:3000"
            ),
            "http://127.0.0.1:3000/login/oauth/access_token"
        );
        assert_eq!(
            internal("https://other/t", "https://d.test", "http://i"),
            "https://other/t"
        );
    }
}
