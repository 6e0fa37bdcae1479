//! The HTTPS client edge talks to an ACME CA with: hyper-rustls, trusting the platform's roots
//! plus `ca_roots`, and noting the `Retry-After` of a refusal (a `rateLimited` 429, a 503) so
//! the order's failure can carry it to the scheduler. instant-acme keeps its problem documents
//! but drops that header, so it is read here, on the way through.

use std::cell::Cell;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

use crate::{Error, Result};

tokio::task_local! {
    /// The latest `Retry-After` a CA sent with a refusal, for the order being placed.
    static RETRY_AFTER: Cell<Option<SystemTime>>;
}

/// Runs `fut` (one order), returning with it the `Retry-After` of the last refusal it met.
pub(crate) async fn noting_retry_after<T>(fut: impl Future<Output = T>) -> (T, Option<SystemTime>) {
    RETRY_AFTER
        .scope(Cell::new(None), async move {
            let out = fut.await;
            (out, RETRY_AFTER.with(Cell::get))
        })
        .await
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<SystemTime> {
    let v = value.trim();
    match v.parse::<u64>() {
        Ok(secs) => Some(now + Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(v).ok(),
    }
}

pub(crate) struct Client {
    inner: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    timeout: Duration,
}

impl Client {
    /// The platform's roots, plus every certificate in `ca_roots` (PEM) when given; each
    /// request bounded by `timeout`.
    pub(crate) fn new(ca_roots: Option<&Path>, timeout: Duration) -> Result<Client> {
        let extra: Vec<rustls::pki_types::CertificateDer<'static>> = match ca_roots {
            None => Vec::new(),
            Some(path) => {
                use rustls::pki_types::pem::PemObject as _;
                let bad = |m: String| Error::BadFile {
                    path: path.to_path_buf(),
                    message: format!("certs.acme.ca_roots: {m}"),
                };
                let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                    .map_err(|e| bad(e.to_string()))?
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| bad(e.to_string()))?;
                if certs.is_empty() {
                    return Err(bad("no certificate in it".into()));
                }
                certs
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
                .map_err(|e| Error::Acme(format!("the system's trusted roots: {e}")))?;
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Acme(format!("TLS settings: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .build();
        Ok(Client {
            inner: HyperClient::builder(hyper_util::rt::TokioExecutor::new()).build(connector),
            timeout,
        })
    }
}

impl HttpClient for Client {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = std::result::Result<BytesResponse, instant_acme::Error>> + Send>>
    {
        let what = format!("{} {}", req.method(), req.uri());
        let fut = HttpClient::request(&self.inner, req);
        let timeout = self.timeout;
        Box::pin(async move {
            let rsp = tokio::time::timeout(timeout, fut).await.map_err(|_| {
                instant_acme::Error::Other(
                    format!("{what}: no answer within {timeout:?} (certs.acme.request_timeout)")
                        .into(),
                )
            })??;
            if rsp.parts.status.as_u16() >= 400 {
                if let Some(at) = rsp
                    .parts
                    .headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()))
                {
                    let _ = RETRY_AFTER.try_with(|c| c.set(Some(at)));
                }
            }
            Ok(rsp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(now + Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784111777))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[tokio::test]
    async fn a_refusal_s_retry_after_travels_with_its_order_only() {
        let (_, none) = noting_retry_after(async {}).await;
        assert_eq!(none, None);
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
        let (_, got) = noting_retry_after(async {
            RETRY_AFTER.with(|c| c.set(Some(at)));
        })
        .await;
        assert_eq!(got, Some(at));
    }
}
