//! An `edge worker --listen` over HTTP: `POST /work` streams the frames back as NDJSON;
//! cancel and the agent's input are requests of their own.

use super::*;

pub(super) fn with_token(
    rb: reqwest::RequestBuilder,
    token: &Option<String>,
) -> reqwest::RequestBuilder {
    match token {
        Some(t) => rb.bearer_auth(t),
        None => rb,
    }
}

/// Reads a refused answer: the status and the first line of its body.
pub(super) async fn refusal(what: &str, r: reqwest::Response) -> String {
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    let line = body.trim().lines().next().unwrap_or("").to_string();
    match status.as_u16() {
        401 | 403 => format!("{what} refused edge's credentials ({status}): {line}"),
        _ => format!("{what} answered {status}: {line}"),
    }
}

pub(super) async fn http_hello(h: &HttpTarget) -> Result<Hello, String> {
    let t = Instant::now();
    let r = with_token(h.client.get(format!("{}/hello", h.url)), &h.token)
        .timeout(HELLO_TIMEOUT)
        .send()
        .await
        .map_err(|e| err_chain(&e))?;
    if !r.status().is_success() {
        return Err(refusal("the worker", r).await);
    }
    let body = r.bytes().await.map_err(|e| err_chain(&e))?;
    let f: FromWorker = crate::decode(body.trim_ascii()).map_err(|e| e.to_string())?;
    hello_of(f, t)
}

/// reqwest's errors say little at the top ("error sending request"): the causes too.
pub(super) fn err_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// NDJSON lines of a streaming body, decoded as worker frames.
pub(super) fn ndjson_frames(
    body: impl Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send + 'static,
) -> FrameStream {
    let reader = tokio_util::io::StreamReader::new(Box::pin(body.map_err(std::io::Error::other)));
    let lines = tokio::io::BufReader::new(reader).lines();
    futures_util::stream::unfold(lines, |mut lines| async move {
        loop {
            // The worker sends a `pong` every 5 s while the agent is quiet: silence this long
            // means the worker or the network is gone, even when TCP has not noticed.
            let next = match tokio::time::timeout(HTTP_SILENCE, lines.next_line()).await {
                Ok(n) => n,
                Err(_) => {
                    return Some((
                        Err(format!("nothing from the worker for {HTTP_SILENCE:?}")),
                        lines,
                    ))
                }
            };
            return match next {
                Ok(Some(l)) if l.trim().is_empty() => continue,
                Ok(Some(l)) => Some((
                    crate::decode::<FromWorker>(l.as_bytes()).map_err(|e| e.to_string()),
                    lines,
                )),
                Ok(None) => None,
                Err(e) => Some((Err(format!("reading the stream: {e}")), lines)),
            };
        }
    })
    .boxed()
}

pub(super) async fn http_connect(h: &HttpTarget, run: &ToWorker) -> Result<Link, String> {
    let body = crate::encode(run).map_err(|e| e.to_string())?;
    let r = with_token(h.client.post(format!("{}/work", h.url)), &h.token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| err_chain(&e))?;
    if r.status() == reqwest::StatusCode::CONFLICT {
        return Err("the worker is busy".into());
    }
    if !r.status().is_success() {
        return Err(refusal("the worker", r).await);
    }
    let from = ndjson_frames(r.bytes_stream());
    let (to, mut rx) = mpsc::unbounded_channel::<ToWorker>();
    let target = h.clone();
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            // The agent's input, in order (awaited one by one).
            if let ToWorker::Stdin { attempt_id, .. } | ToWorker::StdinClose { attempt_id } = &f {
                let url = format!("{}/work/{attempt_id}/stdin", target.url);
                let body = match crate::encode(&f) {
                    Ok(b) => b,
                    Err(_) => continue,
                };
                match with_token(target.client.post(url), &target.token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        tracing::warn!(status = %r.status(), "the worker did not take the agent's input")
                    }
                    Err(e) => {
                        tracing::warn!(error = %err_chain(&e), "the agent's input did not reach the worker")
                    }
                }
                continue;
            }
            if let ToWorker::Cancel {
                attempt_id,
                grace_ms,
            } = f
            {
                let url = format!(
                    "{}/work/{attempt_id}/cancel?grace_ms={grace_ms}",
                    target.url
                );
                match with_token(target.client.post(url), &target.token)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        tracing::warn!(status = %r.status(), "the worker did not take the cancel")
                    }
                    Err(e) => {
                        tracing::warn!(error = %err_chain(&e), "cancel did not reach the worker")
                    }
                }
            }
        }
    });
    Ok(Link {
        to,
        from,
        finish: Box::pin(async {}),
    })
}

impl Transport for HttpTarget {
    fn hello(&self) -> BoxFuture<'_, Result<Hello, String>> {
        Box::pin(http_hello(self))
    }

    fn open<'a>(&'a self, run: &'a ToWorker) -> BoxFuture<'a, Result<Link, String>> {
        Box::pin(http_connect(self, run))
    }

    fn identity(&self) -> String {
        format!("http {}", self.url)
    }
}
