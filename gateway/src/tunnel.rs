//! Upstreams behind `edge register` sessions: a mount of a registered project is dialled as a
//! stream of its host's session instead of a TCP connection, and HTTP/1.1 goes over it as over
//! any upstream connection (so WebSockets, SSE and uploads work unchanged). The sessions live in
//! the tunnel server (`edge-tunnel`); the gateway only knows the [`TunnelDialer`] it is given.
//!
//! A tunnel route's authority names the stream: `<mount>.<project>.tunnel:80`. It is only ever
//! dialled through the dialer (never resolved), and pooled apart from TCP upstreams.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use http::uri::Authority;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;

/// A stream to a project host's upstream.
pub trait TunnelIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> TunnelIo for T {}

pub type TunnelFuture =
    Pin<Box<dyn Future<Output = std::io::Result<Box<dyn TunnelIo>>> + Send + 'static>>;

/// Opens streams to registered projects' mounts. Errors by kind: `NotConnected` (the project
/// host has no session: the offline page), `WouldBlock` (the session's stream limit: 503),
/// anything else (the host could not reach its upstream: 502).
pub trait TunnelDialer: Send + Sync + 'static {
    fn open(&self, project: &str, mount: &str) -> TunnelFuture;
}

pub(crate) type Dialer = Arc<OnceLock<Arc<dyn TunnelDialer>>>;

/// The authority a tunnel route's requests carry: `<mount>.<project>.tunnel:80`.
pub fn authority(project: &str, mount: &str) -> Option<Authority> {
    format!("{mount}.{project}.tunnel:80").parse().ok()
}

/// `(project, mount)` from a tunnel authority.
fn parse(authority: &Authority) -> Option<(&str, &str)> {
    let host = authority.host().strip_suffix(".tunnel")?;
    let (mount, project) = host.split_once('.')?;
    Some((project, mount))
}

/// Opens a stream for a tunnel authority.
pub(crate) async fn dial(
    dialer: &Dialer,
    authority: &Authority,
) -> std::io::Result<Box<dyn TunnelIo>> {
    let d = dialer.get().cloned().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            "registration is not enabled on this edge",
        )
    })?;
    let (project, mount) = parse(authority).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a tunnel authority")
    })?;
    d.open(project, mount).await
}

/// The pooled client's connector for tunnel routes (HTTP/2 clients' requests, upgrades).
#[derive(Clone)]
pub(crate) struct TunnelConnector(pub(crate) Dialer);

impl tower_service::Service<Uri> for TunnelConnector {
    type Response = TunnelConn;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TunnelConn>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dialer = self.0.clone();
        Box::pin(async move {
            let a = uri.authority().cloned().ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "no authority")
            })?;
            Ok(TunnelConn(TokioIo::new(dial(&dialer, &a).await?)))
        })
    }
}

/// A tunnel stream as hyper-util's pool holds connections.
pub(crate) struct TunnelConn(TokioIo<Box<dyn TunnelIo>>);

impl Connection for TunnelConn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for TunnelConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TunnelConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The kind of the I/O error under an upstream failure, if it came from a tunnel dial.
pub(crate) fn failure_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = c.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnel_authority_names_project_and_mount() {
        let a = authority("demo", "forge").unwrap();
        assert_eq!(a.as_str(), "forge.demo.tunnel:80");
        assert_eq!(parse(&a), Some(("demo", "forge")));
        assert_eq!(parse(&"127.0.0.1:80".parse().unwrap()), None);
    }
}
