//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/outposts`, and `POST /reload`. Bind it to
//! loopback (the default): it has no authentication of its own.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::body::ResBody;
use crate::Shared;

/// Re-reads the config and applies it; `Err` carries the reason it was refused.
pub type ReloadFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The outposts' status as JSON (`GET /outposts`), from whoever runs them (the chat).
pub type StatusFn = Arc<dyn Fn() -> String + Send + Sync>;

/// A JSON body with its content type.
fn json(body: String) -> Response<ResBody> {
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The value of `key` in the request's query string, if given.
fn query_param(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    })
}

fn text(status: StatusCode, body: String) -> Response<ResBody> {
    let mut r = Response::new(ResBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(
    shared: Arc<Shared>,
    reload: Option<ReloadFn>,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        (&Method::GET, "/readyz") => {
            if shared.draining.load(Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
            } else {
                text(StatusCode::OK, "ready\n".into())
            }
        }
        (&Method::GET, "/metrics") => {
            let mut body = shared.metrics.render();
            if let Some(f) = shared.extra_metrics.get() {
                body.push_str(&f());
            }
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (&Method::POST, "/reload") => match &reload {
            None => {
                tracing::warn!("POST /reload refused: edge runs the embedded default, there is no file to re-read");
                text(
                    StatusCode::NOT_IMPLEMENTED,
                    "this edge runs its embedded default: there is no config file to re-read \
                     (`edge config default > edge.toml`, then restart with `edge up --config edge.toml`)\n"
                        .into(),
                )
            }
            Some(f) => {
                let f = f.clone();
                match tokio::task::spawn_blocking(move || f()).await {
                    Ok(Ok(())) => text(StatusCode::OK, "reloaded\n".into()),
                    Ok(Err(e)) => {
                        tracing::error!("POST /reload refused, the old config stays: {e}");
                        text(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            format!("reload refused, the old config stays:\n{e}\n"),
                        )
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "POST /reload panicked");
                        text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n".into())
                    }
                }
            }
        },
        (&Method::GET, "/outposts") => match shared.outposts.get() {
            Some(f) => json(f()),
            None => text(
                StatusCode::NOT_FOUND,
                "this edge runs no chat, so no outposts\n".into(),
            ),
        },
        (&Method::POST, "/certs/renew") => match shared.renew.get() {
            Some(f) => {
                let project = query_param(&req, "project");
                match f(project.as_deref()) {
                    Ok(m) => text(StatusCode::ACCEPTED, m),
                    Err(m) => text(StatusCode::UNPROCESSABLE_ENTITY, format!("{m}\n")),
                }
            }
            None => text(StatusCode::NOT_FOUND, "this edge serves no HTTPS\n".into()),
        },
        (&Method::POST, "/chat/login-url") => match shared.chat_login.get() {
            Some(f) => {
                let (f, project) = (f.clone(), query_param(&req, "project"));
                match tokio::task::spawn_blocking(move || f(project.as_deref())).await {
                    Ok(Ok(link)) => text(StatusCode::OK, format!("{link}\n")),
                    Ok(Err(m)) => text(StatusCode::UNPROCESSABLE_ENTITY, format!("{m}\n")),
                    Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n".into()),
                }
            }
            None => text(
                StatusCode::NOT_FOUND,
                "this edge's chat does not sign people in with links (no [chat], or login is not \"token\")\n".into(),
            ),
        },
        (&Method::GET, "/register") => match shared.register_status.get() {
            Some(f) => json(f()),
            None => text(
                StatusCode::NOT_FOUND,
                "registration is not enabled on this edge ([register])\n".into(),
            ),
        },
        (&Method::POST, "/register/revoke") => match shared.register_revoke.get() {
            Some(f) => {
                let name = query_param(&req, "name");
                match f(name.as_deref()) {
                    Ok(m) => text(StatusCode::OK, m),
                    Err(m) => text(StatusCode::NOT_FOUND, format!("{m}\n")),
                }
            }
            None => text(
                StatusCode::NOT_FOUND,
                "registration is not enabled on this edge ([register])\n".into(),
            ),
        },
        (
            _,
            "/healthz" | "/readyz" | "/metrics" | "/reload" | "/outposts" | "/certs/renew"
            | "/register" | "/register/revoke" | "/chat/login-url",
        ) => {
            text(StatusCode::METHOD_NOT_ALLOWED, "wrong method\n".into())
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "admin endpoints: /healthz /readyz /metrics /outposts /register POST /reload POST /certs/renew POST /register/revoke POST /chat/login-url\n"
                .into(),
        ),
    };
    Ok(resp)
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    reload: Option<ReloadFn>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => { tokio::time::sleep(std::time::Duration::from_millis(50)).await; continue; }
            },
        };
        let shared = shared.clone();
        let reload = reload.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(shared.clone(), reload.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
