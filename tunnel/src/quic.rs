//! Sessions over QUIC (quinn), on the same UDP port as the TCP listener: the same TLS 1.3
//! identities and first line (on the first stream, which the host opens), then the edge opens one
//! bidirectional stream per visitor connection, says `CONNECT <mount>` on it, and the host
//! answers `200` (then bytes both ways) or `404`/`502` and why. QUIC's streams have no
//! head-of-line blocking between them even when packets are lost; its keepalives and idle
//! timeout match the HTTP/2 sessions'. Hosts that cannot reach UDP fall back to TCP.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::server::{CONNECTION_WINDOW, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, STREAM_WINDOW};
use crate::{Error, Result};

fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEPALIVE_INTERVAL));
    // Keepalives every 10 s; a path silent for 20 s is dead (noticed ~30 s after a cut, as
    // over HTTP/2, which allows 20 s for a PING's answer).
    if let Ok(idle) = quinn::IdleTimeout::try_from(KEEPALIVE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(quinn::VarInt::from_u32(CONNECTION_WINDOW));
    t.send_window(u64::from(CONNECTION_WINDOW));
    t
}

/// The edge's QUIC endpoint: the tunnel identity, client certificates as over TCP. A host may
/// open one stream (its first line); every other stream is the edge's.
pub(crate) fn server_endpoint(
    tls: rustls::ServerConfig,
    addr: SocketAddr,
) -> Result<quinn::Endpoint> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| Error::Msg(format!("QUIC: {e}")))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut t = transport();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    sc.transport_config(Arc::new(t));
    quinn::Endpoint::server(sc, addr)
        .map_err(|e| Error::Msg(format!("QUIC on udp {addr} (register.listen): {e}")))
}

/// A host's QUIC endpoint towards `edge`, with its TLS client config (pin, certificate).
pub(crate) fn client_endpoint(
    tls: rustls::ClientConfig,
    edge: SocketAddr,
) -> Result<quinn::Endpoint> {
    let bind: SocketAddr = if edge.is_ipv6() {
        "[::]:0".parse().expect("an address")
    } else {
        "0.0.0.0:0".parse().expect("an address")
    };
    let mut ep = quinn::Endpoint::client(bind).map_err(|e| Error::Msg(format!("QUIC: {e}")))?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| Error::Msg(format!("QUIC: {e}")))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
    let mut t = transport();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(4096));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    cc.transport_config(Arc::new(t));
    ep.set_default_client_config(cc);
    Ok(ep)
}

/// One QUIC bidirectional stream as a single I/O object.
pub struct QuicIo {
    pub(crate) send: quinn::SendStream,
    pub(crate) recv: quinn::RecvStream,
}

impl std::fmt::Debug for QuicIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicIo").finish_non_exhaustive()
    }
}

impl AsyncRead for QuicIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}
