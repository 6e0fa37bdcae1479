//! A fake Nomad (Nomad cannot run here) following its documented HTTP API, for the endpoints
//! edge uses, and running each dispatched task for real as a local process:
//!
//! - `GET /v1/job/:id`; `POST /v1/job/:id/dispatch` (payload required, `meta_required`, 16 KiB
//!   payload limit, `idempotency_token`: a second dispatch with the same token returns the
//!   first's job); `DELETE /v1/job/:id` (stops it);
//! - `GET /v1/job/:id/allocations` and `GET /v1/allocation/:id` as blocking queries (`index`,
//!   `wait`, `X-Nomad-Index`);
//! - `GET /v1/client/fs/logs/:alloc?task=&type=stdout&follow=true&origin=start&offset=&plain=true`;
//! - `POST /v1/allocation/:id/stop`: the task gets its kill signal (SIGINT), then SIGKILL after
//!   the kill timeout (5 s);
//! - `X-Nomad-Token`: 403 "Permission denied" when it does not match.
//!
//! The dispatch payload is written to the task's `local/run.json` (`dispatch_payload { file }`),
//! `${NOMAD_TASK_DIR}` in the args is the task's `local` directory, and the task's stdout and
//! stderr go to files the log endpoint reads. Events, states and exit codes follow Nomad's
//! (`Received`, `Task Setup`, `Started`, `Terminated` with `ExitCode`/`Signal`, `Killing`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct ParentJob {
    pub id: String,
    pub task: String,
    pub command: String,
    pub args: Vec<String>,
    pub meta_required: Vec<String>,
}

#[derive(Debug, Clone)]
struct Alloc {
    id: String,
    job_id: String,
    create_index: u64,
    modify_index: u64,
    client_status: String,
    client_description: String,
    desired_status: String,
    task_state: String,
    failed: bool,
    events: Vec<Value>,
    dir: PathBuf,
    pid: Option<u32>,
}

#[derive(Debug, Default)]
struct St {
    token: Option<String>,
    parents: HashMap<String, ParentJob>,
    /// Dispatched job id → (parent, payload, meta, status).
    children: HashMap<String, (String, Vec<u8>, Value, String)>,
    by_token: HashMap<(String, String), String>,
    allocs: HashMap<String, Alloc>,
    /// Every request: "METHOD path?query".
    requests: Vec<String>,
    /// The next this many GETs fail with 500 (no cluster leader).
    failing_gets: u32,
    seq: u64,
}

#[derive(Debug, Clone)]
pub struct FakeNomad {
    pub addr: SocketAddr,
    st: Arc<Mutex<St>>,
    index: Arc<tokio::sync::watch::Sender<u64>>,
    dir: PathBuf,
}

type S = State<FakeNomad>;

impl FakeNomad {
    pub async fn start(dir: PathBuf, token: Option<String>, parents: Vec<ParentJob>) -> FakeNomad {
        let st = St {
            token,
            parents: parents.into_iter().map(|p| (p.id.clone(), p)).collect(),
            ..St::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, _) = tokio::sync::watch::channel(1u64);
        let fake = FakeNomad {
            addr: listener.local_addr().unwrap(),
            st: Arc::new(Mutex::new(st)),
            index: Arc::new(tx),
            dir,
        };
        let app = Router::new()
            .route("/v1/job/{id}", get(job_get).delete(job_delete))
            .route("/v1/job/{id}/dispatch", post(dispatch))
            .route("/v1/job/{id}/allocations", get(job_allocs))
            .route("/v1/allocation/{id}", get(alloc_get))
            .route("/v1/allocation/{id}/stop", post(alloc_stop))
            .route("/v1/client/fs/logs/{id}", get(logs))
            .layer(axum::middleware::from_fn_with_state(fake.clone(), record))
            .with_state(fake.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        fake
    }

    pub fn address(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, "METHOD path?query".
    pub fn requests(&self) -> Vec<String> {
        self.st.lock().unwrap().requests.clone()
    }

    /// The payload and meta of each dispatched job, in dispatch order.
    pub fn dispatched(&self) -> Vec<(String, Vec<u8>, Value)> {
        let st = self.st.lock().unwrap();
        let mut v: Vec<_> = st
            .children
            .iter()
            .map(|(id, (_, p, m, _))| (id.clone(), p.clone(), m.clone()))
            .collect();
        v.sort_by_key(|(id, _, _)| {
            st.allocs
                .values()
                .find(|a| &a.job_id == id)
                .map_or(u64::MAX, |a| a.create_index)
        });
        v
    }

    /// The allocations' (id, client status, task state), in creation order.
    pub fn allocs(&self) -> Vec<(String, String, String)> {
        let st = self.st.lock().unwrap();
        let mut v: Vec<_> = st.allocs.values().collect();
        v.sort_by_key(|a| a.create_index);
        v.iter()
            .map(|a| (a.id.clone(), a.client_status.clone(), a.task_state.clone()))
            .collect()
    }

    /// The task's processes are killed (out of memory, say): the task dies without a word.
    pub fn kill_task(&self, alloc: &str) {
        let pid = self
            .st
            .lock()
            .unwrap()
            .allocs
            .get(alloc)
            .and_then(|a| a.pid);
        if let Some(pid) = pid {
            kill_group(pid, libc_sig::KILL);
        }
    }

    /// The next `n` GETs fail with 500, as while the servers elect a leader.
    pub fn fail_gets(&self, n: u32) {
        self.st.lock().unwrap().failing_gets = n;
    }

    /// Its node goes away: the task is killed and the allocation is `lost`.
    pub fn lose(&self, alloc: &str) {
        let pid = {
            let mut st = self.st.lock().unwrap();
            let a = st.allocs.get_mut(alloc).unwrap();
            a.client_status = "lost".into();
            a.client_description = "alloc is lost since its node is down".into();
            a.pid
        };
        if let Some(pid) = pid {
            kill_group(pid, libc_sig::KILL);
        }
        self.bump(Some(alloc));
    }

    /// A new state index (allocation `alloc` modified).
    fn bump(&self, alloc: Option<&str>) -> u64 {
        let mut st = self.st.lock().unwrap();
        st.seq += 1;
        let i = *self.index.borrow() + 1;
        if let Some(a) = alloc.and_then(|id| st.allocs.get_mut(id)) {
            a.modify_index = i;
        }
        self.index.send_replace(i);
        i
    }

    /// The refusal, when the request is not authorized.
    fn unauthorized(&self, headers: &HeaderMap) -> Option<Response> {
        let st = self.st.lock().unwrap();
        match &st.token {
            None => None,
            Some(t) if headers.get("X-Nomad-Token").and_then(|v| v.to_str().ok()) == Some(t) => {
                None
            }
            Some(_) => Some((StatusCode::FORBIDDEN, "Permission denied").into_response()),
        }
    }

    /// A blocking query: waits (at most `wait`) until the index passes `index`.
    async fn block(&self, q: &HashMap<String, String>) {
        let Some(index) = q.get("index").and_then(|i| i.parse::<u64>().ok()) else {
            return;
        };
        let wait = q
            .get("wait")
            .and_then(|w| w.strip_suffix('s'))
            .and_then(|w| w.parse().ok())
            .unwrap_or(300u64);
        let mut rx = self.index.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(wait), rx.wait_for(|i| *i > index)).await;
    }

    fn with_index(&self, v: Value) -> Response {
        let i = *self.index.borrow();
        ([("X-Nomad-Index", i.to_string())], Json(v)).into_response()
    }
}

mod libc_sig {
    pub const INT: &str = "INT";
    pub const KILL: &str = "KILL";
}

/// The task's main process and, for SIGKILL, every process under it (Nomad's executor kills
/// the task's whole tree through its cgroup).
fn kill_group(pid: u32, sig: &str) {
    let mut pids = vec![pid];
    if sig == libc_sig::KILL {
        let mut i = 0;
        while i < pids.len() {
            let parent = pids[i];
            for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                // "pid (comm) state ppid ...": the comm may hold spaces, so split after ')'.
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|x| x.parse::<u32>().ok());
                if ppid == Some(parent) && !pids.contains(&p) {
                    pids.push(p);
                }
            }
            i += 1;
        }
    }
    for p in pids {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &p.to_string()])
            .status();
    }
}

async fn record(
    State(f): S,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let line = format!(
        "{} {}",
        req.method(),
        req.uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default()
    );
    let fail = {
        let mut st = f.st.lock().unwrap();
        st.requests.push(line);
        let fail = req.method() == axum::http::Method::GET && st.failing_gets > 0;
        if fail {
            st.failing_gets -= 1;
        }
        fail
    };
    if fail {
        return (StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader").into_response();
    }
    next.run(req).await
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("{what} not found")).into_response()
}

async fn job_get(State(f): S, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = f.unauthorized(&headers) {
        return r;
    }
    let st = f.st.lock().unwrap();
    if let Some(p) = st.parents.get(&id) {
        return f.with_index(json!({
            "ID": p.id, "Name": p.id, "Type": "batch", "Status": "running", "Version": 0,
            "ParameterizedJob": { "Payload": "required", "MetaRequired": p.meta_required, "MetaOptional": null },
            "TaskGroups": [{ "Name": "agent", "Count": 1, "Tasks": [{
                "Name": p.task, "Driver": "raw_exec",
                "Config": { "command": p.command, "args": p.args },
                "DispatchPayload": { "File": "run.json" } }] }],
        }));
    }
    if let Some((parent, _, meta, status)) = st.children.get(&id) {
        return f.with_index(json!({
            "ID": id, "ParentID": parent, "Type": "batch", "Status": status, "Dispatched": true, "Meta": meta,
        }));
    }
    not_found("job")
}

async fn dispatch(
    State(f): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = f.unauthorized(&headers) {
        return r;
    }
    let parent = match f.st.lock().unwrap().parents.get(&id).cloned() {
        Some(p) => p,
        None => return not_found("job"),
    };
    let payload = match body.get("Payload").and_then(Value::as_str) {
        Some(p) => match base64::engine::general_purpose::STANDARD.decode(p) {
            Ok(p) => p,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("invalid payload: {e}")).into_response()
            }
        },
        None => {
            return (
                StatusCode::BAD_REQUEST,
                "Payload is not provided but required by parameterized job",
            )
                .into_response()
        }
    };
    if payload.len() > 16 * 1024 {
        return (
            StatusCode::BAD_REQUEST,
            format!("Payload exceeds maximum size; {} > 16384", payload.len()),
        )
            .into_response();
    }
    let meta = body.get("Meta").cloned().unwrap_or(json!({}));
    let missing: Vec<&String> = parent
        .meta_required
        .iter()
        .filter(|k| meta.get(k.as_str()).and_then(Value::as_str).is_none())
        .collect();
    if !missing.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            format!("Dispatch did not provide required meta keys: {missing:?}"),
        )
            .into_response();
    }
    let token = q.get("idempotency_token").cloned();
    let child_id = {
        let mut st = f.st.lock().unwrap();
        if let Some(existing) = token
            .as_ref()
            .and_then(|t| st.by_token.get(&(id.clone(), t.clone())))
        {
            // Nomad: the job already dispatched with this token is returned, none is created.
            let existing = existing.clone();
            drop(st);
            let i = *f.index.borrow();
            return f.with_index(json!({ "DispatchedJobID": existing, "EvalID": "", "EvalCreateIndex": i, "JobCreateIndex": i, "Index": i }));
        }
        st.seq += 1;
        let prefix = body
            .get("IdPrefixTemplate")
            .and_then(Value::as_str)
            .map(|p| format!("-{p}"))
            .unwrap_or_default();
        let child_id = format!(
            "{id}/dispatch{prefix}-{}-{:08x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            st.seq * 2654435761 % (1 << 32)
        );
        st.children.insert(
            child_id.clone(),
            (id.clone(), payload.clone(), meta, "pending".into()),
        );
        if let Some(t) = token {
            st.by_token.insert((id.clone(), t), child_id.clone());
        }
        child_id
    };
    let i = f.bump(None);
    tokio::spawn(schedule(f.clone(), parent, child_id.clone(), payload));
    f.with_index(json!({ "DispatchedJobID": child_id, "EvalID": format!("eval-{i}"), "EvalCreateIndex": i, "JobCreateIndex": i, "Index": i }))
}

fn event(kind: &str, msg: &str) -> Value {
    json!({ "Type": kind, "Time": 0, "DisplayMessage": msg, "ExitCode": 0, "Signal": 0 })
}

/// Places the allocation, starts the task, and records how it ends.
async fn schedule(f: FakeNomad, parent: ParentJob, job_id: String, payload: Vec<u8>) {
    // Placement takes a moment.
    tokio::time::sleep(Duration::from_millis(50)).await;
    if f.st
        .lock()
        .unwrap()
        .children
        .get(&job_id)
        .is_some_and(|c| c.3 == "dead")
    {
        return; // stopped before placement
    }
    let alloc_id = {
        let st = f.st.lock().unwrap();
        format!(
            "{:08x}-0000-4000-8000-{:012x}",
            st.seq + 0x1000,
            st.allocs.len() + 1
        )
    };
    let dir = f.dir.join(&alloc_id).join(&parent.task);
    let local = dir.join("local");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("run.json"), &payload).unwrap();
    {
        let mut st = f.st.lock().unwrap();
        let i = *f.index.borrow() + 1;
        st.allocs.insert(
            alloc_id.clone(),
            Alloc {
                id: alloc_id.clone(),
                job_id: job_id.clone(),
                create_index: i,
                modify_index: i,
                client_status: "pending".into(),
                client_description: String::new(),
                desired_status: "run".into(),
                task_state: "pending".into(),
                failed: false,
                events: vec![
                    event("Received", "Task received by client"),
                    event("Task Setup", "Building Task Directory"),
                ],
                dir: dir.clone(),
                pid: None,
            },
        );
    }
    f.bump(Some(&alloc_id));
    let args: Vec<String> = parent
        .args
        .iter()
        .map(|a| a.replace("${NOMAD_TASK_DIR}", &local.display().to_string()))
        .collect();
    let stdout = std::fs::File::create(dir.join("stdout.0")).unwrap();
    let stderr = std::fs::File::create(dir.join("stderr.0")).unwrap();
    let child = tokio::process::Command::new(&parent.command)
        .args(&args)
        .current_dir(&dir)
        .env("NOMAD_TASK_DIR", &local)
        .env("NOMAD_ALLOC_ID", &alloc_id)
        .env("NOMAD_JOB_ID", &job_id)
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let mut st = f.st.lock().unwrap();
            let a = st.allocs.get_mut(&alloc_id).unwrap();
            a.task_state = "dead".into();
            a.failed = true;
            a.client_status = "failed".into();
            a.events.push(event("Driver Failure", &e.to_string()));
            drop(st);
            f.bump(Some(&alloc_id));
            return;
        }
    };
    {
        let mut st = f.st.lock().unwrap();
        let a = st.allocs.get_mut(&alloc_id).unwrap();
        a.pid = child.id();
        a.task_state = "running".into();
        a.client_status = "running".into();
        a.events.push(event("Started", "Task started by client"));
        if let Some(c) = st.children.get_mut(&job_id) {
            c.3 = "running".into();
        }
    }
    f.bump(Some(&alloc_id));
    let status = child.wait().await.unwrap();
    {
        use std::os::unix::process::ExitStatusExt;
        let mut st = f.st.lock().unwrap();
        let a = st.allocs.get_mut(&alloc_id).unwrap();
        let code = status.code().unwrap_or(137);
        let signal = status.signal().unwrap_or(0);
        let mut ev = event(
            "Terminated",
            &format!(
                "Exit Code: {code}{}",
                if signal != 0 {
                    format!(", Signal: {signal}")
                } else {
                    String::new()
                }
            ),
        );
        ev["ExitCode"] = json!(code);
        ev["Signal"] = json!(signal);
        a.events.push(ev);
        a.task_state = "dead".into();
        a.failed = !status.success();
        if a.client_status != "lost" {
            a.client_status = if status.success() {
                "complete"
            } else {
                "failed"
            }
            .into();
        }
        if let Some(c) = st.children.get_mut(&job_id) {
            c.3 = "dead".into();
        }
    }
    f.bump(Some(&alloc_id));
}

fn alloc_json(a: &Alloc, task: &str) -> Value {
    json!({
        "ID": a.id, "JobID": a.job_id, "TaskGroup": "agent", "ClientStatus": a.client_status,
        "ClientDescription": a.client_description, "DesiredStatus": a.desired_status,
        "CreateIndex": a.create_index, "ModifyIndex": a.modify_index,
        "TaskStates": { task: { "State": a.task_state, "Failed": a.failed, "Events": a.events } },
    })
}

fn task_of(st: &St, a: &Alloc) -> String {
    st.children
        .get(&a.job_id)
        .and_then(|c| st.parents.get(&c.0))
        .map(|p| p.task.clone())
        .unwrap_or_default()
}

async fn job_allocs(
    State(f): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = f.unauthorized(&headers) {
        return r;
    }
    if !f.st.lock().unwrap().children.contains_key(&id) {
        return not_found("job");
    }
    f.block(&q).await;
    let st = f.st.lock().unwrap();
    let list: Vec<Value> = st
        .allocs
        .values()
        .filter(|a| a.job_id == id)
        .map(|a| alloc_json(a, &task_of(&st, a)))
        .collect();
    drop(st);
    f.with_index(Value::Array(list))
}

async fn alloc_get(
    State(f): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = f.unauthorized(&headers) {
        return r;
    }
    if !f.st.lock().unwrap().allocs.contains_key(&id) {
        return not_found("alloc");
    }
    f.block(&q).await;
    let st = f.st.lock().unwrap();
    let a = &st.allocs[&id];
    let v = alloc_json(a, &task_of(&st, a));
    drop(st);
    f.with_index(v)
}

async fn stop_alloc(f: &FakeNomad, id: &str) {
    let pid = {
        let mut st = f.st.lock().unwrap();
        let Some(a) = st.allocs.get_mut(id) else {
            return;
        };
        a.desired_status = "stop".into();
        a.events.push(event(
            "Killing",
            "Sent interrupt. Waiting 5s before force killing",
        ));
        a.pid.filter(|_| a.task_state == "running")
    };
    f.bump(Some(id));
    if let Some(pid) = pid {
        // kill_signal = SIGINT to the task, SIGKILL after kill_timeout.
        kill_group(pid, libc_sig::INT);
        let f = f.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let running =
                f.st.lock()
                    .unwrap()
                    .allocs
                    .get(&id)
                    .is_some_and(|a| a.task_state == "running");
            if running {
                kill_group(pid, libc_sig::KILL);
            }
        });
    }
}

async fn alloc_stop(State(f): S, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = f.unauthorized(&headers) {
        return r;
    }
    if !f.st.lock().unwrap().allocs.contains_key(&id) {
        return not_found("alloc");
    }
    stop_alloc(&f, &id).await;
    let i = *f.index.borrow();
    f.with_index(json!({ "EvalID": format!("eval-{i}"), "Index": i }))
}

async fn job_delete(State(f): S, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = f.unauthorized(&headers) {
        return r;
    }
    let allocs: Vec<String> = {
        let mut st = f.st.lock().unwrap();
        let Some(c) = st.children.get_mut(&id) else {
            return not_found("job");
        };
        c.3 = "dead".into();
        st.allocs
            .values()
            .filter(|a| a.job_id == id)
            .map(|a| a.id.clone())
            .collect()
    };
    for a in allocs {
        stop_alloc(&f, &a).await;
    }
    let i = f.bump(None);
    f.with_index(
        json!({ "EvalID": format!("eval-{i}"), "EvalCreateIndex": i, "JobModifyIndex": i }),
    )
}

async fn logs(
    State(f): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = f.unauthorized(&headers) {
        return r;
    }
    let dir = match f.st.lock().unwrap().allocs.get(&id) {
        Some(a) => a.dir.clone(),
        None => return not_found("alloc"),
    };
    if q.get("plain").map(String::as_str) != Some("true") {
        return (StatusCode::BAD_REQUEST, "this fake serves plain=true only").into_response();
    }
    let kind = q.get("type").cloned().unwrap_or_default();
    if kind != "stdout" && kind != "stderr" {
        return (StatusCode::BAD_REQUEST, "must include type").into_response();
    }
    let follow = q.get("follow").map(String::as_str) == Some("true");
    let offset: u64 = q.get("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
    let path = dir.join(format!("{kind}.0"));
    let stream = log_stream(f.clone(), id, path, follow, offset);
    Body::from_stream(stream).into_response()
}

/// The log from `offset`; followed, it stays open like Nomad's until the client goes away (or
/// the allocation is lost: its node, which serves the log, is gone).
fn log_stream(
    f: FakeNomad,
    id: String,
    path: PathBuf,
    follow: bool,
    start: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold((start, false), move |(off, done)| {
        let f = f.clone();
        let id = id.clone();
        let path = path.clone();
        async move {
            if done {
                return None;
            }
            loop {
                let lost = f.st.lock().unwrap().allocs.get(&id)?.client_status == "lost";
                if lost {
                    return None;
                }
                let data = std::fs::read(&path).unwrap_or_default();
                if (data.len() as u64) > off {
                    let chunk = Bytes::copy_from_slice(&data[off as usize..]);
                    let n = chunk.len() as u64;
                    return Some((Ok(chunk), (off + n, false)));
                }
                // As Nomad: a followed log stays open after the task has died (until the
                // client goes away); without follow, it ends at the end of the file.
                if !follow {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    })
}
