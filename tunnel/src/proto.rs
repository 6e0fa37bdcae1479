//! The words on the wire before HTTP/2 starts: one JSON line from the host, one from the edge.

use serde::{Deserialize, Serialize};

/// The ALPN protocol of a tunnel connection.
pub(crate) const ALPN: &[u8] = b"edge-tunnel/1";

/// The longest first line either side accepts.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// What a host asks, in its first line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Ask {
    /// Enrol `name` with a one-time token; `csr` is the host's key's certificate request.
    Enrol {
        name: String,
        token: String,
        csr: String,
        mounts: Vec<String>,
    },
    /// Open the session (with a client certificate): the mounts the host serves, and which
    /// agent it is (a host and state directory; the same agent reconnecting replaces itself).
    /// A host holds several sessions at once (`lane` 0, 1, ...), so that its streams spread
    /// over several connections and cores; a lane reconnecting replaces only itself.
    Hello {
        agent: String,
        mounts: Vec<String>,
        #[serde(default)]
        lane: u32,
    },
    /// Give the name up (with its client certificate).
    Deregister,
}

/// The edge's answer.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Answer {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Enrolment: the client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// Where the project is served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

impl Answer {
    pub(crate) fn refused(why: impl Into<String>) -> Answer {
        Answer {
            ok: false,
            error: Some(why.into()),
            ..Answer::default()
        }
    }
}

/// Reads one line (without its `\n`) of at most [`MAX_LINE`] bytes, a byte at a time so that
/// nothing after it is consumed (HTTP/2 follows on the same stream).
pub(crate) async fn read_line<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt as _;
    let mut line = Vec::with_capacity(512);
    let mut b = [0u8; 1];
    loop {
        let n = r.read(&mut b).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the connection closed before a whole line",
            ));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > MAX_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a first line longer than {MAX_LINE} bytes"),
            ));
        }
    }
    String::from_utf8(line).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "a line that is not UTF-8")
    })
}

/// Writes `v` as one JSON line.
pub(crate) async fn write_line<W: tokio::io::AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    v: &T,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let mut s = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    s.push(b'\n');
    w.write_all(&s).await?;
    w.flush().await
}
