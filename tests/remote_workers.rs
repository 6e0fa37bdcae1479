//! Runs on HTTP workers (`edge worker --listen`, the real binary, through real sockets: bearer
//! token, mTLS, busy, a dropped connection killing the agent, a worker dying mid-run, cancel)
//! and on Nomad (a fake following Nomad's HTTP API that runs each dispatched task, `edge
//! worker --oneshot`, for real).

mod common;
mod fake_nomad;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{
    delta_text, frames_until, free_port, http_worker, is_delta, outcome, run_to_end, sh_agent,
    states,
};
use edge_chat::{Conversations, Orchestrator, Outcome};
use edge_routing::{OutpostConfig, OutpostKind};
use fake_nomad::{FakeNomad, ParentJob};

const EDGE: &str = env!("CARGO_BIN_EXE_edge");

fn token_file(dir: &Path, name: &str, token: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{token}\n")).unwrap();
    p
}

fn http(name: &str, url: &str, token: Option<&Path>) -> OutpostConfig {
    OutpostConfig {
        name: name.into(),
        kind: OutpostKind::Http {
            url: url.into(),
            token_file: token.map(Path::to_path_buf),
            ca: None,
            client_cert: None,
        },
        capacity: 1,
    }
}

fn orchestrator(dir: &Path, list: &[OutpostConfig]) -> Arc<Orchestrator> {
    let o = Orchestrator::new(Vec::new(), Conversations::new(dir.join("c")));
    let local = vec![EDGE.to_string(), "worker".into(), "--stdio".into()];
    o.set_outposts(edge_chat::outposts(list, dir, &local).unwrap());
    o
}

fn local() -> OutpostConfig {
    OutpostConfig {
        name: "here".into(),
        kind: OutpostKind::Local,
        capacity: 2,
    }
}

fn pid_alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{}", pid.trim())).exists()
        && !std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .unwrap_or_default()
            .contains(") Z ")
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} within 10 s");
}

const SECRET: &str = "0123456789abcdef-worker-token";

/// `edge worker --listen` with a token and a floor.
async fn floored_worker(token: &Path, floor: &Path) -> common::HttpWorker {
    http_worker(
        &[
            "--token-file",
            token.to_str().unwrap(),
            "--floor",
            floor.to_str().unwrap(),
        ],
        false,
    )
    .await
}

/// An HTTP worker's `/metrics`, with the token.
async fn metrics(url: &str) -> String {
    reqwest::Client::new()
        .get(format!("{url}/metrics"))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_http_worker_runs_with_its_token_refuses_others_and_kills_the_agent_when_the_client_goes(
) {
    let dir = tempfile::tempdir().unwrap();
    let good = token_file(dir.path(), "good", SECRET);
    let bad = token_file(dir.path(), "bad", "not-the-token-at-all");
    let w = http_worker(&["--token-file", good.to_str().unwrap()], false).await;

    // Through the orchestrator: the wrong token is skipped with the worker's reason.
    let o = orchestrator(
        dir.path(),
        &[
            http("wrong", &w.url, Some(&bad)),
            http("right", &w.url, Some(&good)),
        ],
    );
    let frames = run_to_end(&o, "hello", &sh_agent("echo \"over http: $0\"")).await;
    assert_eq!(outcome(&frames).0, Outcome::Ok, "{frames:#?}");
    assert!(
        delta_text(&frames).contains("over http: hello"),
        "{frames:#?}"
    );
    let st = states(&frames);
    assert_eq!(st[1].1.as_deref(), Some("wrong"), "{st:#?}");
    assert!(
        st[1]
            .2
            .as_deref()
            .unwrap()
            .contains("refused edge's credentials (401"),
        "{st:#?}"
    );
    assert_eq!(st.last().unwrap().1.as_deref(), Some("right"), "{st:#?}");

    // Straight at the worker: one attempt at a time, and a client that goes away takes the
    // agent with it.
    let c = reqwest::Client::new();
    let pidfile = dir.path().join("agent.pid");
    let run = serde_json::json!({
        "v": 1, "t": "run", "attempt_id": "slow-1", "run_id": "slow",
        "argv": ["sh", "-c", format!("echo $$ > {}; echo started; exec sleep 60", pidfile.display())],
    });
    let mut first = c
        .post(format!("{}/work", w.url))
        .bearer_auth(SECRET)
        .json(&run)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let mut seen = String::new();
    while !seen.contains("\"line\":\"started\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), first.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    assert!(pid_alive(&pid));
    let second = c
        .post(format!("{}/work", w.url))
        .bearer_auth(SECRET)
        .json(&serde_json::json!({"v":1,"t":"run","attempt_id":"other-1","run_id":"other","argv":["true"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 409);
    assert!(second.text().await.unwrap().contains("\"t\":\"busy\""));
    assert_eq!(
        c.get(format!("{}/readyz", w.url))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    drop(first);
    wait_until("the agent is killed when its client goes", || {
        !pid_alive(&pid)
    })
    .await;
    wait_until("the worker is free again", || {
        std::process::Command::new("curl")
            .args(["-sf", &format!("{}/readyz", w.url)])
            .status()
            .is_ok_and(|s| s.success())
    })
    .await;

    // Health without a token, everything else with one.
    assert_eq!(
        c.get(format!("{}/healthz", w.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{}/metrics", w.url))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let bad_body = c
        .post(format!("{}/work", w.url))
        .bearer_auth(SECRET)
        .body("{\"v\":1,\"t\":\"ping\",\"ts\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_body.status(), 400);
    assert!(bad_body
        .text()
        .await
        .unwrap()
        .contains("must be a run frame"));
    let metrics = metrics(&w.url).await;
    for want in [
        "edge_worker_refused_total{why=\"unauthorized\"} 2",
        "edge_worker_refused_total{why=\"busy\"} 1",
        "edge_worker_refused_total{why=\"bad_request\"} 1",
        "edge_worker_attempts_started_total 2",
        "edge_worker_attempts_ended_total{reason=\"exited\"} 1",
        "edge_worker_attempts_ended_total{reason=\"lost\"} 1",
        "edge_worker_busy 0",
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }
}

#[tokio::test]
async fn an_http_worker_without_a_token_or_mtls_does_not_start() {
    let out = std::process::Command::new(EDGE)
        .args(["worker", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs --token-file"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let short = token_file(dir.path(), "short", "abc");
    let out = std::process::Command::new(EDGE)
        .args(["worker", "--listen", "127.0.0.1:0", "--token-file"])
        .arg(&short)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16 characters"));
    // A floor file with a mistake: no worker, in any mode, and the mistake named.
    let floor = dir.path().join("floor.toml");
    std::fs::write(&floor, "memory = \"lots\"\nrequire = [\"landlock\", \"magic\"]\negress = [\"no-port\"]\nwritable = \"/srv\"\nsurprise = 1\n").unwrap();
    for mode in [&["--stdio"][..], &["--listen", "127.0.0.1:0"]] {
        let out = std::process::Command::new(EDGE)
            .arg("worker")
            .args(mode)
            .arg("--floor")
            .arg(&floor)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        for want in ["memory", "\"magic\"", "egress[0]", "writable", "surprise"] {
            assert!(err.contains(want), "{want} in {err}");
        }
    }
}

/// A private CA (rcgen) issues the worker's server certificate and edge's client certificate.
fn pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "edge workers CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issue = |names: Vec<String>, cn: &str, eku: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server, server_key) = issue(
        vec!["127.0.0.1".into()],
        "worker-a",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client, client_key) = issue(
        vec![],
        "edge-orchestrator",
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let w = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    (
        w("ca.pem", &ca_cert.pem()),
        w("server.pem", &server),
        w("server.key", &server_key),
        w("client.pem", &client),
        w("client.key", &client_key),
    )
}

#[tokio::test]
async fn an_http_worker_with_mtls_takes_runs_only_from_certified_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key, client, client_key) = pki(dir.path());
    let w = http_worker(
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--client-ca",
            ca.to_str().unwrap(),
        ],
        true,
    )
    .await;
    let with_cert = |name: &str, cert: bool| OutpostConfig {
        name: name.into(),
        kind: OutpostKind::Http {
            url: w.url.clone(),
            token_file: None,
            ca: Some(ca.clone()),
            client_cert: cert.then(|| (client.clone(), client_key.clone())),
        },
        capacity: 1,
    };
    let o = orchestrator(
        dir.path(),
        &[with_cert("no-cert", false), with_cert("certified", true)],
    );
    let frames = run_to_end(&o, "hi", &sh_agent("echo \"over mtls: $0\"")).await;
    assert_eq!(outcome(&frames).0, Outcome::Ok, "{frames:#?}");
    assert!(delta_text(&frames).contains("over mtls: hi"));
    let st = states(&frames);
    assert_eq!(st[1].1.as_deref(), Some("no-cert"), "{st:#?}");
    // TLS 1.3: the worker's alert says what was missing.
    assert!(
        st[1].2.as_deref().unwrap().contains("CertificateRequired"),
        "{st:#?}"
    );
    assert_eq!(
        st.last().unwrap().1.as_deref(),
        Some("certified"),
        "{st:#?}"
    );
}

#[tokio::test]
async fn a_run_whose_http_worker_dies_is_retried_and_cancel_reaches_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let good = token_file(dir.path(), "good", SECRET);
    let mut a = http_worker(&["--token-file", good.to_str().unwrap()], false).await;
    let b = http_worker(&["--token-file", good.to_str().unwrap()], false).await;
    let o = orchestrator(
        dir.path(),
        &[
            http("host-a", &a.url, Some(&good)),
            http("host-b", &b.url, Some(&good)),
        ],
    );
    let spec =
        sh_agent("i=0; while [ $i -lt 20 ]; do echo \"$0 $i\"; i=$((i+1)); sleep 0.05; done");
    let conv = o.conversations().create("alice", "t").unwrap();
    let run = o.start("alice", &conv.id, "line", &spec, None).unwrap();
    let (mut frames, mut rx) = frames_until(&run, is_delta).await;
    a.child.start_kill().unwrap();
    frames.extend(common::until_end(&mut rx).await);
    assert_eq!(outcome(&frames).0, Outcome::Ok, "{frames:#?}");
    let st = states(&frames);
    assert!(
        st.iter().any(|(s, o, d)| s == "dispatching"
            && o.as_deref() == Some("host-a")
            && d.as_deref()
                .is_some_and(|d| d.contains("went away mid-run"))),
        "{st:#?}"
    );
    assert_eq!(st.last().unwrap().1.as_deref(), Some("host-b"), "{st:#?}");
    let text = delta_text(&frames);
    assert!(
        text.contains("line 0") && text.contains("line 19"),
        "{text}"
    );
    let seqs: Vec<u64> = frames.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());

    // Cancel goes to the worker (POST /work/{attempt}/cancel) and the agent stops.
    let pidfile = dir.path().join("agent.pid");
    let spec = sh_agent(&format!(
        "echo $$ > {}; echo going; exec sleep 60",
        pidfile.display()
    ));
    let conv = o.conversations().create("alice", "t2").unwrap();
    let run = o.start("alice", &conv.id, "x", &spec, None).unwrap();
    let (_, mut rx) = frames_until(&run, is_delta).await;
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    run.cancel();
    let frames = common::until_end(&mut rx).await;
    assert_eq!(outcome(&frames).0, Outcome::Cancelled, "{frames:#?}");
    assert!(
        !pid_alive(&pid),
        "the agent is gone once the run is cancelled"
    );
    let metrics = metrics(&b.url).await;
    assert!(
        metrics.contains("edge_worker_attempts_ended_total{reason=\"cancelled\"} 1"),
        "{metrics}"
    );
}

// ---- Nomad ----

const NOMAD_TOKEN: &str = "8c6b2a3e-nomad-acl-token";

async fn nomad(dir: &Path) -> FakeNomad {
    FakeNomad::start(
        dir.join("nomad"),
        Some(NOMAD_TOKEN.into()),
        vec![ParentJob {
            id: "edge-agent".into(),
            task: "agent".into(),
            command: EDGE.into(),
            args: vec![
                "worker".into(),
                "--oneshot".into(),
                "${NOMAD_TASK_DIR}/run.json".into(),
            ],
            meta_required: vec!["run_id".into(), "attempt_id".into()],
        }],
    )
    .await
}

fn nomad_outpost(name: &str, f: &FakeNomad, token: &Path) -> OutpostConfig {
    OutpostConfig {
        name: name.into(),
        kind: OutpostKind::Nomad {
            address: f.address(),
            token_file: Some(token.to_path_buf()),
            job: "edge-agent".into(),
            task: "agent".into(),
            namespace: None,
        },
        capacity: 4,
    }
}

#[tokio::test]
async fn a_run_on_nomad_is_a_dispatch_followed_to_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let f = nomad(dir.path()).await;
    let token = token_file(dir.path(), "nomad-token", NOMAD_TOKEN);
    let wrong = token_file(dir.path(), "wrong-token", "not-the-nomad-token");
    let o = orchestrator(
        dir.path(),
        &[
            nomad_outpost("no-acl", &f, &wrong),
            nomad_outpost("cluster", &f, &token),
        ],
    );
    let frames = run_to_end(
        &o,
        "hello",
        &sh_agent("echo \"on nomad: $0\"; echo to stderr >&2"),
    )
    .await;
    assert_eq!(outcome(&frames).0, Outcome::Ok, "{frames:#?}");
    assert!(
        delta_text(&frames).contains("on nomad: hello"),
        "{frames:#?}"
    );
    let st = states(&frames);
    assert_eq!(st[1].1.as_deref(), Some("no-acl"), "{st:#?}");
    assert!(
        st[1].2.as_deref().unwrap().contains("Permission denied"),
        "{st:#?}"
    );
    assert_eq!(
        st.last().unwrap(),
        &("running".into(), Some("cluster".into()), None)
    );

    // The dispatch: the run frame as payload, the attempt as idempotency token and meta.
    let run_id = frames[0].run_id.clone();
    let d = f.dispatched();
    assert_eq!(d.len(), 1, "{d:?}");
    let (job, payload, meta) = &d[0];
    assert!(
        job.starts_with(&format!("edge-agent/dispatch-run-{run_id}-")),
        "{job}"
    );
    let frame: serde_json::Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(frame["t"], "run");
    // Attempt 1 went to "no-acl" (refused); attempt 2 is this one.
    assert_eq!(frame["attempt_id"], format!("{run_id}-2"));
    assert_eq!(meta["run_id"], run_id.as_str());
    let reqs = f.requests();
    let has = |p: &dyn Fn(&str) -> bool| reqs.iter().any(|r| p(r));
    assert!(
        has(
            &|r| r.starts_with("POST /v1/job/edge-agent/dispatch?idempotency_token=")
                && r.ends_with(&format!("{run_id}-2"))
        ),
        "{reqs:#?}"
    );
    // Blocking queries (an index past 0), the child job's id escaped in the path.
    assert!(
        has(&|r| r.starts_with("GET /v1/job/edge-agent%2Fdispatch-")
            && r.contains("/allocations?index=")
            && !r.contains("index=0&")),
        "{reqs:#?}"
    );
    assert!(
        has(&|r| r.starts_with("GET /v1/allocation/") && r.contains("wait=30s")),
        "{reqs:#?}"
    );
    assert!(
        has(&|r| r.starts_with("GET /v1/client/fs/logs/")
            && r.contains("type=stdout")
            && r.contains("follow=true")
            && r.contains("plain=true")),
        "{reqs:#?}"
    );
    assert_eq!(f.allocs()[0].1, "complete");

    // The agent's exit code comes back, even when Nomad's servers answer 500 for a moment.
    f.fail_gets(2);
    let frames = run_to_end(&o, "x", &sh_agent("echo partial; echo broke >&2; exit 3")).await;
    let (oc, detail) = outcome(&frames);
    assert_eq!(oc, Outcome::Error, "{frames:#?}");
    let detail = detail.unwrap();
    assert!(
        detail.contains("code 3") && detail.contains("broke"),
        "{detail}"
    );
    assert_eq!(f.allocs()[1].1, "failed");

    // A payload over Nomad's 16 KiB is refused before dispatch, naming the limit.
    let big = sh_agent(&format!("echo {}", "x".repeat(17 * 1024)));
    let frames = run_to_end(&o, "big", &big).await;
    let (oc, detail) = outcome(&frames);
    assert_eq!(oc, Outcome::Error);
    assert!(detail.unwrap().contains("at most 16384"), "{frames:#?}");
}

#[tokio::test]
async fn on_nomad_cancel_stops_the_allocation_a_killed_task_ends_the_run_a_lost_one_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let f = nomad(dir.path()).await;
    let token = token_file(dir.path(), "nomad-token", NOMAD_TOKEN);
    let o = orchestrator(dir.path(), &[nomad_outpost("cluster", &f, &token), local()]);

    // Cancel: the allocation is stopped; the worker gets Nomad's kill signal and cancels the
    // agent with grace, so the run ends `cancelled` (not killed, not lost).
    let pidfile = dir.path().join("agent.pid");
    let spec = sh_agent(&format!(
        "echo $$ > {}; echo going; exec sleep 60",
        pidfile.display()
    ));
    let conv = o.conversations().create("alice", "t").unwrap();
    let run = o.start("alice", &conv.id, "x", &spec, None).unwrap();
    let (_, mut rx) = frames_until(&run, is_delta).await;
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    run.cancel();
    let frames = common::until_end(&mut rx).await;
    assert_eq!(outcome(&frames).0, Outcome::Cancelled, "{frames:#?}");
    let reqs = f.requests();
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("POST /v1/allocation/") && r.ends_with("/stop")),
        "{reqs:#?}"
    );
    assert!(!pid_alive(&pid));
    wait_until("the allocation ends", || f.allocs()[0].2 == "dead").await;

    // The task killed on its node (out of memory, say): no exit frame; Nomad keeps the log
    // open, and the end comes from the allocation's Terminated event.
    let spec = sh_agent("echo \"$0\"; exec sleep 60");
    let conv = o.conversations().create("alice", "t3").unwrap();
    let run = o.start("alice", &conv.id, "doomed", &spec, None).unwrap();
    let (mut frames, mut rx) = frames_until(&run, is_delta).await;
    let alloc = f.allocs().last().unwrap().0.clone();
    f.kill_task(&alloc);
    frames.extend(common::until_end(&mut rx).await);
    let (oc, detail) = outcome(&frames);
    assert_eq!(oc, Outcome::Error, "{frames:#?}");
    let detail = detail.unwrap();
    assert!(
        detail.contains("without the worker's exit frame") && detail.contains("Exit Code: 137"),
        "{detail}"
    );

    // Lost: the node goes away mid-run; a new attempt runs on the next outpost.
    let spec =
        sh_agent("i=0; while [ $i -lt 20 ]; do echo \"$0 $i\"; i=$((i+1)); sleep 0.05; done");
    let conv = o.conversations().create("alice", "t2").unwrap();
    let run = o.start("alice", &conv.id, "line", &spec, None).unwrap();
    let (mut frames, mut rx) = frames_until(&run, is_delta).await;
    let alloc = f.allocs().last().unwrap().0.clone();
    f.lose(&alloc);
    frames.extend(common::until_end(&mut rx).await);
    assert_eq!(outcome(&frames).0, Outcome::Ok, "{frames:#?}");
    let st = states(&frames);
    assert!(
        st.iter().any(|(_, o, d)| o.as_deref() == Some("cluster")
            && d.as_deref()
                .is_some_and(|d| d.contains("Nomad lost allocation"))),
        "{st:#?}"
    );
    assert_eq!(st.last().unwrap().1.as_deref(), Some("here"), "{st:#?}");
    let text = delta_text(&frames);
    assert!(
        text.contains("line 0") && text.contains("line 19"),
        "{text}"
    );
}

/// `edge workers --probe` says hello to HTTP and Nomad outposts too.
#[tokio::test]
async fn edge_workers_probe_reaches_http_and_nomad_outposts() {
    let dir = tempfile::tempdir().unwrap();
    let good = token_file(dir.path(), "good", SECRET);
    let w = http_worker(&["--token-file", good.to_str().unwrap()], false).await;
    // A worker whose floor the chat's profile (the default: 2 GiB) does not meet.
    let floor = dir.path().join("floor.toml");
    std::fs::write(&floor, "memory = \"1GiB\"\n").unwrap();
    let strict = floored_worker(&good, &floor).await;
    let f = nomad(dir.path()).await;
    let token = token_file(dir.path(), "nomad-token", NOMAD_TOKEN);
    let cfg = dir.path().join("edge.toml");
    std::fs::write(
        &cfg,
        format!(
            "domain = \"example.test\"\nstate_dir = \"{}\"\n[[projects]]\nname = \"demo\"\n  [[projects.routes]]\n  mount = \"chat\"\n  upstream = \"chat\"\n  auth = \"forward\"\n\
             [chat]\n[chat.agent]\nworkspace = \"/tmp\"\n\
             [[outposts]]\nname = \"box\"\nkind = \"http\"\nurl = \"{}\"\ntoken_file = \"{}\"\n\
             [[outposts]]\nname = \"strict\"\nkind = \"http\"\nurl = \"{}\"\ntoken_file = \"{}\"\n\
             [[outposts]]\nname = \"cluster\"\nkind = \"nomad\"\naddress = \"{}\"\ntoken_file = \"{}\"\n\
             [[outposts]]\nname = \"nowhere\"\nkind = \"http\"\nurl = \"http://127.0.0.1:{}\"\ntoken_file = \"{}\"\n",
            dir.path().join("state").display(),
            w.url,
            good.display(),
            strict.url,
            good.display(),
            f.address(),
            token.display(),
            free_port(),
            good.display(),
        ),
    )
    .unwrap();
    // Not std's Command: the fake Nomad answers on this test's runtime.
    let out = tokio::process::Command::new(EDGE)
        .args(["workers", "--probe", "--config"])
        .arg(&cfg)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "one outpost is down: {text}");
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name}: {text}"))
            .to_string()
    };
    assert!(line("box").contains(" ok "), "{text}");
    let after_box = text.lines().skip_while(|l| !l.starts_with("box")).nth(1);
    assert!(
        after_box.is_some_and(|l| l.starts_with("strict")),
        "box has no floor line: {text}"
    );
    // The strict worker answers, shows its floor, and says the chat's runs would be refused.
    let after_strict: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("strict"))
        .take(3)
        .collect();
    assert!(after_strict[0].contains(" ok "), "{text}");
    assert!(
        after_strict[1].contains("floor: every layer required; memory ≤ 1073741824"),
        "{text}"
    );
    assert!(
        after_strict[2].contains("REFUSE")
            && after_strict[2]
                .contains("asks for memory 2147483648; this worker allows at most 1073741824"),
        "{text}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("2 of 4 outpost(s) did not answer or would refuse"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(line("cluster").contains("nomad job edge-agent"), "{text}");
    assert!(line("nowhere").contains("FAILED"), "{text}");
}

/// A worker that hangs (SIGSTOP: the TCP connection stays up, nothing comes, not even its
/// heartbeat) is taken for gone after 20 s of silence, and the run moves on.
#[tokio::test]
async fn a_hung_http_worker_is_taken_for_gone() {
    let dir = tempfile::tempdir().unwrap();
    let good = token_file(dir.path(), "good", SECRET);
    let a = http_worker(&["--token-file", good.to_str().unwrap()], false).await;
    let b = http_worker(&["--token-file", good.to_str().unwrap()], false).await;
    let o = orchestrator(
        dir.path(),
        &[
            http("hangs", &a.url, Some(&good)),
            http("fine", &b.url, Some(&good)),
        ],
    );
    let spec = sh_agent("echo \"$0 first\"; sleep 1; echo \"$0 second\"");
    let conv = o.conversations().create("alice", "t").unwrap();
    let run = o.start("alice", &conv.id, "msg", &spec, None).unwrap();
    let (mut frames, mut rx) = frames_until(&run, is_delta).await;
    let pid = a.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let t = std::time::Instant::now();
    frames.extend(common::until_end(&mut rx).await);
    let waited = t.elapsed();
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    assert_eq!(outcome(&frames).0, Outcome::Ok, "{frames:#?}");
    let st = states(&frames);
    assert!(
        st.iter().any(|(_, o, d)| o.as_deref() == Some("hangs")
            && d.as_deref()
                .is_some_and(|d| d.contains("nothing from the worker for 20s"))),
        "{st:#?}"
    );
    assert_eq!(st.last().unwrap().1.as_deref(), Some("fine"), "{st:#?}");
    assert!(waited >= Duration::from_secs(19), "{waited:?}");
}

/// A worker with a floor (`edge worker --floor FILE`, the worker host's own minimum) refuses a
/// run confined less than it demands, before anything starts, and says why; the run goes to
/// the next outpost, which is not rested for it. A run that meets the floor runs there, with
/// the floor's hidden paths hidden even inside the workspace.
#[tokio::test]
async fn a_worker_with_a_floor_refuses_runs_below_it_and_they_go_elsewhere() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let good = token_file(dir.path(), "good", SECRET);
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::set_permissions(&ws, std::fs::Permissions::from_mode(0o777)).unwrap();
    let secret = ws.join("host-secret.txt");
    std::fs::write(&secret, "the-floor-hides-this\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let floor = dir.path().join("floor.toml");
    std::fs::write(
        &floor,
        format!(
            "memory = \"1GiB\"\nwritable = [\"{}\"]\nhidden = [\"{}\"]\n",
            dir.path().display(),
            secret.display()
        ),
    )
    .unwrap();
    let strict = floored_worker(&good, &floor).await;
    let o = orchestrator(
        dir.path(),
        &[http("strict", &strict.url, Some(&good)), local()],
    );
    let agent = format!(
        "echo \"ran as $(id -u)\"; echo \"secret: $(cat {} 2>&1)\"",
        secret.display()
    );
    let confined = |memory: u64| {
        let mut profile = edge_sandbox::Profile::default_named("agents");
        profile.memory = memory;
        profile.home = Some(dir.path().join("agent-home"));
        edge_chat::AgentSpec {
            workspace: ws.display().to_string(),
            sandbox: Some(edge_sandbox::Confine {
                home: dir.path().join("agent-home"),
                profile,
            }),
            ..sh_agent(&agent)
        }
    };
    let skipped_at_strict = |frames: &[edge_chat::RunFrame], why: &str| {
        let st = states(frames);
        assert!(
            st.iter().any(|(_, o, d)| o.as_deref() == Some("strict")
                && d.as_deref().is_some_and(|d| d
                    .starts_with("skipped: refused by this worker's floor: ")
                    && d.contains(why))),
            "{why}: {st:#?}"
        );
        assert_eq!(st.last().unwrap().1.as_deref(), Some("here"), "{st:#?}");
    };

    // No sandbox at all: refused there, run here.
    let frames = run_to_end(&o, "one", &sh_agent(&agent)).await;
    assert_eq!(outcome(&frames).0, Outcome::Ok, "{frames:#?}");
    skipped_at_strict(&frames, "this worker runs only confined agents");
    // Confined, but asking for more memory than the floor allows: refused there, run here.
    let frames = run_to_end(&o, "two", &confined(2 << 30)).await;
    assert_eq!(outcome(&frames).0, Outcome::Ok, "{frames:#?}");
    skipped_at_strict(
        &frames,
        "asks for memory 2147483648; this worker allows at most 1073741824",
    );
    // Within the floor: runs at the strict worker (which was not rested for refusing), and
    // the floor's hidden file is out of reach although it lies in the workspace.
    let frames = run_to_end(&o, "three", &confined(512 << 20)).await;
    assert_eq!(outcome(&frames).0, Outcome::Ok, "{frames:#?}");
    let st = states(&frames);
    assert_eq!(st.last().unwrap().1.as_deref(), Some("strict"), "{st:#?}");
    let text = delta_text(&frames);
    assert!(text.contains("ran as 65534"), "{text}");
    assert!(text.contains("secret: "), "{text}");
    assert!(!text.contains("the-floor-hides-this"), "{text}");

    // With nowhere else to go, the run ends with the floor's reason.
    let second = dir.path().join("second");
    std::fs::create_dir(&second).unwrap();
    let only = orchestrator(&second, &[http("strict", &strict.url, Some(&good))]);
    let frames = run_to_end(&only, "four", &sh_agent(&agent)).await;
    let (how, detail) = outcome(&frames);
    assert_eq!(how, Outcome::Error, "{frames:#?}");
    let detail = detail.unwrap();
    assert!(
        detail.starts_with("no outpost could take the run: strict: refused by this worker's floor: this worker runs only confined agents"),
        "{detail}"
    );
    let metrics = metrics(&strict.url).await;
    assert!(
        metrics.contains("edge_worker_refused_total{why=\"policy\"} 3"),
        "{metrics}"
    );
}

/// Claude Code keeps a session in the agent's home on the host that ran it. A conversation's
/// next run goes back to that outpost and resumes it there; when that outpost cannot take
/// the run, the run starts a new session elsewhere, told the conversation so far, and later
/// runs follow it there. (The fake Claude keeps sessions as the real one does: `--resume`
/// of a session its host does not have fails.)
#[tokio::test]
async fn a_conversation_resumes_its_session_where_it_lives_and_moves_with_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let good = token_file(dir.path(), "good", SECRET);
    let mut hosts = Vec::new();
    for name in ["home-a", "home-b"] {
        let home = dir.path().join(name);
        std::fs::create_dir(&home).unwrap();
        hosts.push(
            common::http_worker_env(
                &["--token-file", good.to_str().unwrap()],
                false,
                &[("HOME", home.to_str().unwrap())],
            )
            .await,
        );
    }
    let o = orchestrator(
        dir.path(),
        &[
            http("a", &hosts[0].url, Some(&good)),
            http("b", &hosts[1].url, Some(&good)),
        ],
    );
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let spec = edge_chat::AgentSpec {
        agent: edge_chat::Agent::Claude {
            command: concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fake-claude.sh").into(),
            permission_mode: "acceptEdits".into(),
        },
        ..sh_agent("")
    };
    let spec = edge_chat::AgentSpec {
        workspace: ws.display().to_string(),
        ..spec
    };
    let c = o.conversations();
    let conv = c.create("alice", "t").unwrap();
    let send = |text: &'static str| {
        let o = o.clone();
        let spec = spec.clone();
        let id = conv.id.clone();
        async move {
            let session = o.conversations().session("alice", &id).unwrap().unwrap();
            let run = o
                .start("alice", &id, text, &spec, Some((&session.0, session.1)))
                .unwrap();
            let (missed, mut rx) = run.subscribe(0);
            let mut frames = missed.unwrap();
            if !matches!(
                frames.last().map(|f| &f.body),
                Some(edge_chat::RunBody::End { .. })
            ) {
                frames.extend(common::until_end(&mut rx).await);
            }
            frames
        }
    };
    let model = |frames: &[edge_chat::RunFrame]| {
        frames
            .iter()
            .find_map(|f| match &f.body {
                edge_chat::RunBody::Event {
                    event: edge_sandbox::Event::Session { model, .. },
                } => model.clone(),
                _ => None,
            })
            .unwrap_or_default()
    };
    let ran_on = |frames: &[edge_chat::RunFrame]| {
        states(frames)
            .into_iter()
            .rev()
            .find(|(s, ..)| s == "running")
            .unwrap()
    };
    let meta = || c.list("alice").unwrap().into_iter().next().unwrap();

    // The first run creates the session on a; the second resumes it there.
    let f1 = send("the first message").await;
    assert_eq!(outcome(&f1).0, Outcome::Ok, "{f1:#?}");
    assert_eq!(ran_on(&f1).1.as_deref(), Some("a"));
    assert_eq!(meta().session_outpost.as_deref(), Some("a"));
    let first_session = meta().session.unwrap();
    let f2 = send("the second message").await;
    assert_eq!(outcome(&f2).0, Outcome::Ok, "{f2:#?}");
    assert_eq!(
        (ran_on(&f2).1.as_deref(), model(&f2).as_str()),
        (Some("a"), "fake-resume")
    );

    // a is taken by another conversation's run: this one goes to b, as a new session that is
    // told the earlier turns.
    let other = c.create("bob", "busy").unwrap();
    let busy = o.start("bob", &other.id, "slow", &spec, None).unwrap();
    let (_, mut busy_rx) = busy.subscribe(0);
    loop {
        let f = tokio::time::timeout(Duration::from_secs(10), busy_rx.recv())
            .await
            .unwrap()
            .unwrap();
        if matches!(&f.body, edge_chat::RunBody::State { state, outpost, .. } if state == "running" && outpost.as_deref() == Some("a"))
        {
            break;
        }
    }
    let f3 = send("the third message").await;
    assert_eq!(outcome(&f3).0, Outcome::Ok, "{f3:#?}");
    let (_, on, detail) = ran_on(&f3);
    assert_eq!(on.as_deref(), Some("b"));
    assert!(
        detail
            .as_deref()
            .is_some_and(|d| d.contains("session is on outpost a, which could not take this run")),
        "{detail:?}"
    );
    assert_eq!(model(&f3), "fake-create");
    let text = delta_text(&f3);
    for want in [
        "continues on another machine",
        "the first message",
        "You said: the first message",
        "the second message",
        "the third message",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    assert_eq!(text.matches("the third message").count(), 1, "{text}");
    assert_eq!(meta().session_outpost.as_deref(), Some("b"));
    assert_ne!(meta().session.unwrap(), first_session);
    busy.cancel();

    // From now on the conversation resumes on b, although a is first in the list and free.
    tokio::time::timeout(Duration::from_secs(10), async {
        while o.outpost_status().iter().any(|s| s.1 > 0) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    let f4 = send("the fourth message").await;
    assert_eq!(outcome(&f4).0, Outcome::Ok, "{f4:#?}");
    assert_eq!(
        (ran_on(&f4).1.as_deref(), model(&f4).as_str()),
        (Some("b"), "fake-resume")
    );

    // b loses the agent's home (a reinstalled host): Claude cannot find the session there, and
    // the run starts a new one, told the earlier turns, instead of failing.
    std::fs::remove_dir_all(dir.path().join("home-b/.claude")).unwrap();
    let f5 = send("the fifth message").await;
    assert_eq!(outcome(&f5).0, Outcome::Ok, "{f5:#?}");
    let st = states(&f5);
    assert!(
        st.iter().any(|(s, o, d)| s == "dispatching"
            && o.as_deref() == Some("b")
            && d.as_deref()
                .is_some_and(|d| d.contains("no longer has the conversation's agent session"))),
        "{st:#?}"
    );
    assert_eq!(model(&f5), "fake-create");
    let text = delta_text(&f5);
    assert!(
        text.contains("continues on another machine") && text.contains("the fourth message"),
        "{text}"
    );
    let (_, on, _) = ran_on(&f5);
    assert_eq!(meta().session_outpost, on);
}

/// Tool permission questions over an HTTP outpost: the answer travels back to the agent's
/// stdin (`POST /work/{id}/stdin`), allowed or denied. A Nomad outpost cannot carry answers:
/// such a run is refused there, saying why, and goes to the next outpost.
#[tokio::test]
async fn permission_answers_reach_the_agent_over_http_and_nomad_says_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let good = token_file(dir.path(), "good", SECRET);
    let w = http_worker(&["--token-file", good.to_str().unwrap()], false).await;
    let ws = dir.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    let f = nomad(dir.path()).await;
    let nomad_token = token_file(dir.path(), "nomad-token", NOMAD_TOKEN);
    let o = orchestrator(
        dir.path(),
        &[
            nomad_outpost("cluster", &f, &nomad_token),
            http("remote", &w.url, Some(&good)),
        ],
    );
    let spec = common::ask_agent(&ws);
    let frames = common::run_answering(&o, "over http", &spec, true).await;
    assert_eq!(outcome(&frames).0, Outcome::Ok, "{frames:#?}");
    assert!(delta_text(&frames).contains("wrote a.txt"), "{frames:#?}");
    assert_eq!(
        std::fs::read_to_string(ws.join("a.txt")).unwrap(),
        "over http\n"
    );
    let st = states(&frames);
    assert!(
        st.iter().any(|(_, o, d)| o.as_deref() == Some("cluster")
            && d.as_deref().is_some_and(|d| d.contains(
                "a Nomad outpost cannot carry answers to the agent's tool permission questions"
            ))),
        "{st:#?}"
    );
    assert_eq!(st.last().unwrap().1.as_deref(), Some("remote"), "{st:#?}");
    std::fs::remove_file(ws.join("a.txt")).unwrap();
    let frames = common::run_answering(&o, "no", &spec, false).await;
    assert_eq!(outcome(&frames).0, Outcome::Ok, "{frames:#?}");
    assert!(
        delta_text(&frames).contains("denied: tester denied this in the chat"),
        "{frames:#?}"
    );
    assert!(!ws.join("a.txt").exists());
}
