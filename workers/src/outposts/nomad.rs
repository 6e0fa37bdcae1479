//! A parameterized batch job on Nomad, its task `edge worker --oneshot`: dispatched, followed
//! with blocking queries, its frames read from the task's log.

use super::*;

impl NomadTarget {
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Result<url::Url, String> {
        let mut u = url::Url::parse(&self.address).map_err(|e| format!("{}: {e}", self.address))?;
        u.path_segments_mut()
            .map_err(|_| format!("{}: not a base URL", self.address))?
            .pop_if_empty()
            .extend(segments);
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
            if let Some(ns) = &self.namespace {
                q.append_pair("namespace", ns);
            }
        }
        if u.query() == Some("") {
            u.set_query(None);
        }
        Ok(u)
    }

    fn req(&self, method: reqwest::Method, u: url::Url) -> reqwest::RequestBuilder {
        let rb = self.client.request(method, u);
        match &self.token {
            Some(t) => rb.header("X-Nomad-Token", t),
            None => rb,
        }
    }

    /// A GET whose answer is JSON; with `index`, a blocking query (`wait` at most 30 s) that
    /// returns once the state is newer than `index`. Returns the answer and its `X-Nomad-Index`.
    async fn get<T: for<'de> Deserialize<'de>>(
        &self,
        segments: &[&str],
        index: Option<u64>,
    ) -> Result<(T, u64), String> {
        let mut q = Vec::new();
        if let Some(i) = index {
            q.push(("index", i.to_string()));
            q.push(("wait", "30s".to_string()));
        }
        let u = self.url(segments, &q)?;
        // A Nomad server that is briefly away (a leader election, a restart) is waited for:
        // giving up here would abandon an attempt that is still running.
        let mut tries = 0;
        let r = loop {
            tries += 1;
            let r = self
                .req(reqwest::Method::GET, u.clone())
                .timeout(Duration::from_secs(45))
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_server_error() && tries < NOMAD_TRIES => {}
                Ok(r) if !r.status().is_success() => {
                    return Err(refusal(&format!("Nomad ({})", u.path()), r).await)
                }
                Ok(r) => break r,
                Err(e) if tries >= NOMAD_TRIES => return Err(err_chain(&e)),
                Err(e) => {
                    tracing::warn!(error = %err_chain(&e), "Nomad did not answer; trying again")
                }
            }
            tokio::time::sleep(Duration::from_secs(tries)).await;
        };
        let idx = r
            .headers()
            .get("X-Nomad-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let v = r
            .json()
            .await
            .map_err(|e| format!("Nomad ({}): {}", u.path(), err_chain(&e)))?;
        Ok((v, idx))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct NomadJob {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Type")]
    kind: String,
    parameterized_job: Option<serde_json::Value>,
    #[serde(default)]
    version: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct NomadDispatch {
    #[serde(rename = "DispatchedJobID")]
    dispatched_job_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct NomadAllocStub {
    #[serde(rename = "ID")]
    id: String,
    #[serde(default)]
    create_index: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct NomadAlloc {
    client_status: String,
    #[serde(default)]
    client_description: String,
    #[serde(default)]
    task_states: Option<BTreeMap<String, NomadTaskState>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct NomadTaskState {
    state: String,
    #[serde(default)]
    failed: bool,
    #[serde(default)]
    events: Option<Vec<NomadEvent>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct NomadEvent {
    #[serde(rename = "Type")]
    kind: String,
    #[serde(default)]
    exit_code: i32,
    #[serde(default)]
    signal: i32,
    #[serde(default)]
    display_message: String,
}

pub(super) async fn nomad_hello(n: &NomadTarget) -> Result<Hello, String> {
    let t = Instant::now();
    let (job, _): (NomadJob, u64) =
        tokio::time::timeout(HELLO_TIMEOUT, n.get(&["v1", "job", &n.job], None))
            .await
            .map_err(|_| format!("Nomad did not answer within {HELLO_TIMEOUT:?}"))??;
    if job.kind != "batch" || job.parameterized_job.is_none() {
        return Err(format!(
            "Nomad job {:?} must be a parameterized batch job (it is type {:?}{})",
            job.id,
            job.kind,
            if job.parameterized_job.is_none() {
                ", not parameterized"
            } else {
                ""
            }
        ));
    }
    Ok(Hello {
        worker: format!("nomad job {} (version {})", job.id, job.version),
        version: "-".into(),
        busy: false,
        millis: t.elapsed().as_millis() as u64,
        // The floor travels with the job (its `--floor` file); Nomad does not show it.
        floor: None,
    })
}

pub(super) async fn nomad_connect(n: &NomadTarget, run: &ToWorker) -> Result<Link, String> {
    let ToWorker::Run {
        attempt_id, run_id, ..
    } = run
    else {
        return Err("only a run frame is dispatched".into());
    };
    let payload = crate::encode(run).map_err(|e| e.to_string())?;
    if payload.len() > NOMAD_PAYLOAD_MAX {
        return Err(format!(
            "the run frame is {} bytes; a Nomad dispatch payload holds at most {NOMAD_PAYLOAD_MAX}",
            payload.len()
        ));
    }
    use base64::Engine as _;
    let body = serde_json::json!({
        "Payload": base64::engine::general_purpose::STANDARD.encode(&payload),
        "Meta": { "run_id": run_id, "attempt_id": attempt_id },
        "IdPrefixTemplate": format!("run-{run_id}"),
    });
    // The attempt id is the idempotency token: a dispatch retried after a lost answer does not
    // start the attempt twice.
    let u = n.url(
        &["v1", "job", &n.job, "dispatch"],
        &[("idempotency_token", attempt_id.clone())],
    )?;
    // Sent again once if the answer was lost: the idempotency token makes that safe, and
    // gives back the job the first one may have dispatched.
    let mut r = None;
    for last in [false, true] {
        match n
            .req(reqwest::Method::POST, u.clone())
            .json(&body)
            .timeout(HELLO_TIMEOUT)
            .send()
            .await
        {
            Ok(answer) => {
                r = Some(answer);
                break;
            }
            Err(e) if last => return Err(format!("dispatching to Nomad: {}", err_chain(&e))),
            Err(e) => {
                tracing::warn!(error = %err_chain(&e), "dispatch unanswered; sending it again")
            }
        }
    }
    let r = r.ok_or("dispatching to Nomad: no answer")?;
    if !r.status().is_success() {
        return Err(refusal(&format!("Nomad (dispatch of job {:?})", n.job), r).await);
    }
    let d: NomadDispatch = r
        .json()
        .await
        .map_err(|e| format!("Nomad's dispatch answer: {}", err_chain(&e)))?;
    let (frames_tx, frames_rx) = mpsc::channel::<Result<FromWorker, String>>(1024);
    let (to, mut ctl) = mpsc::unbounded_channel::<ToWorker>();
    let alloc = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let follower = tokio::spawn(follow(
        n.clone(),
        d.dispatched_job_id.clone(),
        alloc.clone(),
        frames_tx,
    ));
    // Cancel: stop the allocation (Nomad signals the task, which cancels the agent with
    // grace); before there is one, stop the dispatched job.
    let target = n.clone();
    let job = d.dispatched_job_id;
    tokio::spawn(async move {
        while let Some(f) = ctl.recv().await {
            if let ToWorker::Cancel { .. } = f {
                stop(&target, &job, &alloc).await;
            }
        }
        // The orchestrator is done. If the follower is still going, the run was given up:
        // stop the job rather than leave it running unwatched.
        if !follower.is_finished() {
            follower.abort();
            stop(&target, &job, &alloc).await;
        }
    });
    Ok(Link {
        to,
        from: futures_util::stream::unfold(frames_rx, |mut rx| async move {
            rx.recv().await.map(|f| (f, rx))
        })
        .boxed(),
        finish: Box::pin(async {}),
    })
}

pub(super) async fn stop(n: &NomadTarget, job: &str, alloc: &std::sync::Mutex<Option<String>>) {
    let a = alloc.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (method, segments) = match &a {
        Some(id) => (
            reqwest::Method::POST,
            vec!["v1", "allocation", id.as_str(), "stop"],
        ),
        None => (reqwest::Method::DELETE, vec!["v1", "job", job]),
    };
    let Ok(u) = n.url(&segments, &[]) else { return };
    match n.req(method, u).timeout(HELLO_TIMEOUT).send().await {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => tracing::warn!(status = %r.status(), job, "Nomad did not stop the attempt"),
        Err(e) => {
            tracing::warn!(error = %err_chain(&e), job, "stopping the attempt on Nomad failed")
        }
    }
}

/// Follows a dispatched job to its end, sending the worker's frames; an `Err` (or the end
/// without `exit`) means the attempt was lost.
pub(super) async fn follow(
    n: NomadTarget,
    job: String,
    alloc_slot: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    tx: mpsc::Sender<Result<FromWorker, String>>,
) {
    if let Err(e) = follow_inner(&n, &job, &alloc_slot, &tx).await {
        // Given up on: the next outpost gets a new attempt, so this one must not go on.
        stop(&n, &job, &alloc_slot).await;
        if tx.send(Err(e)).await.is_err() {
            tracing::debug!(job, "nobody is following the attempt any more");
        }
    }
}

pub(super) async fn follow_inner(
    n: &NomadTarget,
    job: &str,
    alloc_slot: &std::sync::Mutex<Option<String>>,
    tx: &mpsc::Sender<Result<FromWorker, String>>,
) -> Result<(), String> {
    let placed_by = Instant::now() + NOMAD_PLACEMENT_TIMEOUT;
    // 1. The allocation (a blocking query until there is one).
    let mut index = 0;
    let alloc_id = loop {
        if Instant::now() > placed_by {
            stop(n, job, alloc_slot).await;
            return Err(format!(
                "Nomad placed no allocation for {job} within {NOMAD_PLACEMENT_TIMEOUT:?}"
            ));
        }
        let (list, idx): (Vec<NomadAllocStub>, u64) = n
            .get(&["v1", "job", job, "allocations"], Some(index))
            .await?;
        if let Some(a) = list.iter().max_by_key(|a| a.create_index) {
            break a.id.clone();
        }
        index = idx.max(index);
    };
    *alloc_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(alloc_id.clone());
    // 2. Until its task has started (or already ended).
    let mut index = 0;
    loop {
        let (a, idx): (NomadAlloc, u64) =
            n.get(&["v1", "allocation", &alloc_id], Some(index)).await?;
        let state = a
            .task_states
            .as_ref()
            .and_then(|t| t.get(&n.task))
            .map(|t| t.state.as_str());
        if matches!(state, Some("running" | "dead"))
            || matches!(a.client_status.as_str(), "complete" | "failed" | "lost")
        {
            break;
        }
        if Instant::now() > placed_by {
            stop(n, job, alloc_slot).await;
            return Err(format!(
                "the task of allocation {alloc_id} did not start within {NOMAD_PLACEMENT_TIMEOUT:?} ({})",
                a.client_status
            ));
        }
        index = idx.max(index);
    }
    // 3. The worker's frames, from the task's stdout; resumed at the offset reached if the log
    // stream breaks while the task still runs.
    // Nomad keeps a followed log open after the task has died, so the allocation is watched
    // alongside (blocking queries): once its task is dead, what is left of the log is read
    // until it has been quiet for a moment.
    let (dead_tx, mut dead_rx) = tokio::sync::watch::channel(false);
    let watcher = {
        let n = n.clone();
        let alloc_id = alloc_id.clone();
        tokio::spawn(async move {
            let mut index = 0;
            loop {
                match n
                    .get::<NomadAlloc>(&["v1", "allocation", &alloc_id], Some(index))
                    .await
                {
                    Ok((a, idx)) => {
                        let dead = a
                            .task_states
                            .as_ref()
                            .and_then(|t| t.get(&n.task))
                            .is_some_and(|t| t.state == "dead");
                        if dead
                            || matches!(a.client_status.as_str(), "complete" | "failed" | "lost")
                        {
                            let _ = dead_tx.send(true);
                            return;
                        }
                        index = idx.max(index);
                    }
                    // Nomad unreachable even after retries: the log stream will say more.
                    Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
                }
            }
        })
    };
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _watcher = AbortOnDrop(watcher);
    let mut offset: u64 = 0;
    let mut partial: Vec<u8> = Vec::new();
    let mut exited = false;
    for _round in 0..20 {
        let u = n.url(
            &["v1", "client", "fs", "logs", &alloc_id],
            &[
                ("task", n.task.clone()),
                ("type", "stdout".into()),
                ("follow", "true".into()),
                ("origin", "start".into()),
                ("offset", offset.to_string()),
                ("plain", "true".into()),
            ],
        )?;
        let r = n
            .req(reqwest::Method::GET, u)
            .send()
            .await
            .map_err(|e| format!("following the task's log: {}", err_chain(&e)))?;
        if !r.status().is_success() {
            return Err(refusal("Nomad (logs)", r).await);
        }
        let mut body = r.bytes_stream();
        loop {
            let dead = *dead_rx.borrow();
            let chunk = tokio::select! {
                c = body.next() => c,
                _ = dead_rx.changed(), if !dead => continue,
                _ = tokio::time::sleep(LOG_QUIET), if dead => break,
            };
            let Some(Ok(chunk)) = chunk else { break };
            offset += chunk.len() as u64;
            partial.extend_from_slice(&chunk);
            while let Some(nl) = partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = partial.drain(..=nl).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                let f = crate::decode::<FromWorker>(line).map_err(|e| e.to_string())?;
                exited |= matches!(f, FromWorker::Exit { .. });
                if tx.send(Ok(f)).await.is_err() {
                    return Ok(());
                }
            }
        }
        if exited {
            return Ok(());
        }
        // The stream ended without `exit`: has the task ended?
        let (a, _): (NomadAlloc, u64) = n.get(&["v1", "allocation", &alloc_id], None).await?;
        let task = a.task_states.as_ref().and_then(|t| t.get(&n.task));
        if a.client_status == "lost" {
            return Err(format!(
                "Nomad lost allocation {alloc_id}: {}",
                a.client_description
            ));
        }
        if let Some(t) = task.filter(|t| t.state == "dead") {
            // The worker died without its `exit` frame (killed, out of memory...): the end
            // as Nomad saw it.
            let term = t
                .events
                .iter()
                .flatten()
                .rev()
                .find(|e| e.kind == "Terminated");
            let (code, signal) = term.map_or((None, None), |e| {
                (Some(e.exit_code), (e.signal != 0).then_some(e.signal))
            });
            let why = t
                .events
                .iter()
                .flatten()
                .last()
                .map(|e| e.display_message.clone())
                .unwrap_or_default();
            let _ = tx
                .send(Ok(FromWorker::Out {
                    attempt_id: String::new(),
                    seq: 0,
                    fd: crate::Fd::Stderr,
                    line: format!(
                        "nomad: the task ended without the worker's exit frame (failed: {}): {why}",
                        t.failed
                    ),
                }))
                .await;
            let _ = tx
                .send(Ok(FromWorker::Exit {
                    attempt_id: String::new(),
                    code,
                    signal,
                    reason: crate::ExitReason::Exited,
                }))
                .await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("the log of allocation {alloc_id} kept breaking"))
}

impl Transport for NomadTarget {
    fn hello(&self) -> BoxFuture<'_, Result<Hello, String>> {
        Box::pin(nomad_hello(self))
    }

    fn open<'a>(&'a self, run: &'a ToWorker) -> BoxFuture<'a, Result<Link, String>> {
        Box::pin(nomad_connect(self, run))
    }

    /// A dispatch's payload is all the input its task gets.
    fn carries_input(&self) -> bool {
        false
    }

    /// Each dispatch runs in a fresh allocation: nothing of an earlier one is left to resume.
    fn keeps_sessions(&self) -> bool {
        false
    }

    fn identity(&self) -> String {
        format!("nomad {} {}", self.address, self.job)
    }
}
