//! The egress layer's proxy: listens on a Unix socket that is bind-mounted into the run's
//! network namespace (where a relay exposes it on 127.0.0.1:3128), and lets through only
//! `CONNECT host:port` and absolute-form `http://` requests whose host and port are on the
//! profile's allowlist. Everything else gets a 403 that names the host, and a line on the
//! worker's stderr.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};

use crate::profile::Profile;

const MAX_HEAD: usize = 16 * 1024;

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct Egress {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Egress {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Notices = Option<tokio::sync::mpsc::UnboundedSender<String>>;

/// Starts the proxy on `socket` (which the sandboxed uid may connect to). What it refuses is
/// sent to `notices` (else printed on stderr).
pub fn start(socket: &Path, profile: &Profile, notices: Notices) -> Result<Egress, String> {
    let l = UnixListener::bind(socket)
        .map_err(|e| format!("listening on {}: {e}", socket.display()))?;
    std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let profile = Arc::new(profile.clone());
    let task = tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            let p = profile.clone();
            let n = notices.clone();
            tokio::spawn(async move {
                let _ = serve(c, &p, &n).await;
            });
        }
    });
    Ok(Egress { task })
}

async fn deny(c: &mut UnixStream, n: &Notices, status: &str, why: &str) -> std::io::Result<()> {
    match n {
        Some(tx) => {
            let _ = tx.send(why.to_string());
        }
        None => eprintln!("edge egress: {why}"),
    }
    let body = format!("edge egress: {why}\n");
    c.write_all(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
}

async fn serve(mut c: UnixStream, p: &Profile, notices: &Notices) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(2048);
    let head_len = loop {
        let mut chunk = [0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(30), c.read(&mut chunk))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => break len,
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            _ => {
                return deny(
                    &mut c,
                    notices,
                    "400 Bad Request",
                    "not an HTTP proxy request",
                )
                .await
            }
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let _ = req.parse(&buf[..head_len]);
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    let (host, port, tunnel) = if method == "CONNECT" {
        match target.rsplit_once(':') {
            Some((h, port)) => match port.parse::<u16>() {
                Ok(port) => (h.trim_matches(['[', ']']).to_string(), port, true),
                Err(_) => {
                    return deny(
                        &mut c,
                        notices,
                        "400 Bad Request",
                        &format!("bad CONNECT target {target:?}"),
                    )
                    .await
                }
            },
            None => {
                return deny(
                    &mut c,
                    notices,
                    "400 Bad Request",
                    &format!("bad CONNECT target {target:?}"),
                )
                .await
            }
        }
    } else if let Some(rest) = target.strip_prefix("http://") {
        let authority = rest.split('/').next().unwrap_or("");
        let (h, port) = match authority.rsplit_once(':') {
            Some((h, port)) => (h, port.parse().unwrap_or(0)),
            None => (authority, 80),
        };
        (h.to_string(), port, false)
    } else {
        return deny(
            &mut c,
            notices,
            "400 Bad Request",
            &format!("{method} {target:?}: only CONNECT and http:// requests go through"),
        )
        .await;
    };
    if !p.egress_allows(&host, port) {
        return deny(
            &mut c,
            notices,
            "403 Forbidden",
            &format!(
                "{host}:{port} is not on the allowlist of profile {:?}",
                p.name
            ),
        )
        .await;
    }
    let up = tokio::time::timeout(
        Duration::from_secs(10),
        TcpStream::connect((host.as_str(), port)),
    )
    .await;
    let mut up = match up {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return deny(
                &mut c,
                notices,
                "502 Bad Gateway",
                &format!("{host}:{port}: {e}"),
            )
            .await
        }
        Err(_) => {
            return deny(
                &mut c,
                notices,
                "504 Gateway Timeout",
                &format!("{host}:{port}: no answer in 10 s"),
            )
            .await
        }
    };
    if tunnel {
        c.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await?;
        up.write_all(&buf[head_len..]).await?;
    } else {
        up.write_all(&buf).await?;
    }
    tokio::io::copy_bidirectional(&mut c, &mut up).await?;
    Ok(())
}
