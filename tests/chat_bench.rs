//! The chat's benchmark (`bench/chat.sh` runs it; ignored in the test suite): against the real
//! `edge up` binary, (1) the added latency from an agent writing a line to a WebSocket client
//! receiving its frame, with 1 and 100 runs streaming at once, and the frames per second that
//! reach clients; (2) edge's memory per idle, signed-in WebSocket with many open.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

struct Edge {
    child: tokio::process::Child,
    http: u16,
    cookie: String,
    _dir: tempfile::TempDir,
}

fn free() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn edge() -> Edge {
    let dir = tempfile::tempdir().unwrap();
    let (http, chat) = (free(), free());
    let cfg = dir.path().join("edge.toml");
    std::fs::write(
        &cfg,
        format!(
            "domain = \"example.test\"\nstate_dir = \"state\"\n[listen]\nhttps = \"\"\nhttp = \"127.0.0.1:{http}\"\nadmin = \"\"\nhttp_redirect = false\nworkers = 1\n\
             [limits]\nmax_connections_per_client = 100000\nmax_connections = 100000\n[log]\naccess = false\n\
             [[projects]]\nname = \"demo\"\n  [[projects.routes]]\n  mount = \"chat\"\n  upstream = \"chat\"\n  auth = \"forward\"\n\
             [chat]\nlisten = \"127.0.0.1:{chat}\"\n[chat.limits]\nconcurrent_runs = 1000\nrequests_per_hour = 100000\nrequests_per_day = 100000\n\
             [chat.agent]\nkind = \"claude\"\ncommand = \"{}/tests/fixtures/clock-claude.sh\"\nworkspace = \"/tmp\"\n",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    let child = common::edge_up(&cfg, http).await;
    let cookie = common::sign_in_with_cli(&cfg, http, "demo.example.test").await;
    Edge {
        child,
        http,
        cookie,
        _dir: dir,
    }
}

impl Edge {
    fn rss_kib(&self) -> u64 {
        let pid = self.child.id().unwrap();
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    }

    async fn ws(&self) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
        common::chat_socket(self.http, "demo.example.test", &self.cookie).await
    }

    async fn conversation(&self) -> String {
        let v: Value = reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{}/chat/api/conversations",
                self.http
            ))
            .header("host", "demo.example.test")
            .header("cookie", &self.cookie)
            .header("origin", "http://demo.example.test")
            .json(&json!({"title": "bench"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["id"].as_str().unwrap().to_string()
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs `streams` runs at once, `deltas` lines each; one socket receives every frame.
async fn latency(e: &Edge, streams: usize, deltas: usize) {
    let mut ws = e.ws().await;
    ws.send(Message::text(r#"{"t":"hello"}"#)).await.unwrap();
    let mut convs = Vec::new();
    for _ in 0..streams {
        convs.push(e.conversation().await);
    }
    let start = std::time::Instant::now();
    for c in &convs {
        ws.send(Message::text(
            json!({"t":"send","conversation_id":c,"text":format!("bench {deltas}")}).to_string(),
        ))
        .await
        .unwrap();
    }
    let mut lat = Vec::new();
    let mut ends = 0;
    let mut frames = 0u64;
    while ends < streams {
        let m = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Message::Text(t) = m else { continue };
        let f: Value = serde_json::from_str(t.as_str()).unwrap();
        frames += 1;
        if f["t"] == "end" {
            ends += 1;
        } else if f["t"] == "rejected" {
            panic!("{f}");
        } else if let Some(text) = f["event"]["text"].as_str() {
            if let Some(ns) = text
                .strip_prefix("t=")
                .and_then(|s| s.trim().parse::<u128>().ok())
            {
                lat.push((now_ns() - ns) as f64 / 1000.0);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "streams {streams:>3}: stdout→frame p50 {:.0} µs, p99 {:.0} µs over {} deltas; {:.0} frames/s to the client; edge RSS {} KiB",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        lat.len(),
        frames as f64 / secs,
        e.rss_kib()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/chat.sh"]
async fn chat_bench() {
    let e = edge().await;
    if std::env::var_os("SKIP_LATENCY").is_none() {
        latency(&e, 1, 300).await;
        latency(&e, 100, 100).await;
    }
    // Memory per idle, signed-in WebSocket.
    let n: usize = std::env::var("IDLE_SOCKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = e.rss_kib();
    let mut socks = Vec::with_capacity(n);
    for _ in 0..n {
        let mut ws = e.ws().await;
        ws.send(Message::text(r#"{"t":"hello"}"#)).await.unwrap();
        let _ = ws.next().await;
        socks.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = e.rss_kib();
    println!(
        "{n} idle WebSockets: edge RSS {before} → {after} KiB, {:.1} KiB per socket",
        (after - before) as f64 / n as f64
    );
}
