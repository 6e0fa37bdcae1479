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
    chat: u16,
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

/// The real edge, its runs confined by sandbox profile `sandbox` (`default`: every layer;
/// `open`: none).
async fn edge_with(sandbox: &str) -> Edge {
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
             [chat.agent]\nkind = \"claude\"\ncommand = \"{}/tests/fixtures/{agent}\"\nworkspace = \"/tmp\"\nsandbox = \"{sandbox}\"\n\
             [sandbox.profiles.open]\nrequire = []\ndisable = [{open}]\n",
            env!("CARGO_MANIFEST_DIR"),
            open = open_layers(),
            agent = clock_agent()
        ),
    )
    .unwrap();
    let child = common::edge_up(&cfg, http).await;
    let cookie = common::sign_in_with_cli(&cfg, http, "demo.example.test").await;
    Edge {
        child,
        http,
        chat,
        cookie,
        _dir: dir,
    }
}

impl Edge {
    /// edge's CPU time so far (user + system, all threads), in seconds.
    fn cpu_secs(&self) -> f64 {
        let pid = self.child.id().unwrap();
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        ticks as f64 / 100.0
    }

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

    /// A WebSocket straight to the chat's own listener, as the gateway would open it (the
    /// gateway strips `/chat`): what one socket costs the chat alone.
    async fn ws_direct(&self) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
        let extra = [
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "demo.example.test"),
            ("x-forwarded-prefix", "/chat"),
        ];
        common::socket_at(self.chat, "demo.example.test", "/ws", &self.cookie, &extra).await
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

/// The layers profile `open` turns off: all, or (`FANOUT_DISABLE=egress,namespaces`) some, to
/// see what each costs 100 runs at once.
fn open_layers() -> String {
    std::env::var("FANOUT_DISABLE")
        .unwrap_or_else(|_| "all".into())
        .split(',')
        .map(|l| format!("\"{}\"", l.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The stand-in agent: Python (`clock-claude.sh`, the default), or with `CLOCK_AGENT=perl` the
/// same protocol in Perl, which costs the machine about half the CPU per delta (on two cores,
/// 100 Python agents plus edge and its workers leave the agents short of CPU to write at the
/// pace asked).
fn clock_agent() -> &'static str {
    match std::env::var("CLOCK_AGENT").as_deref() {
        Ok("perl") => "clock-claude-perl.sh",
        _ => "clock-claude.sh",
    }
}

async fn edge() -> Edge {
    edge_with("default").await
}

/// Time from sending a message to the first token on the client, over `n` runs one after the
/// other: what a user waits for before anything appears (worker start, sandbox, agent start).
async fn first_token(e: &Edge, label: &str, n: usize) {
    let mut ws = e.ws().await;
    ws.send(Message::text(r#"{"t":"hello"}"#)).await.unwrap();
    let conv = e.conversation().await;
    let mut waits = Vec::new();
    for _ in 0..n {
        let start = std::time::Instant::now();
        ws.send(Message::text(
            json!({"t":"send","conversation_id":conv,"text":"bench 1 0"}).to_string(),
        ))
        .await
        .unwrap();
        let mut first = None;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
                .await
                .expect("the run answered within 30 s")
                .unwrap()
                .unwrap();
            let Message::Text(t) = m else { continue };
            let f: Value = serde_json::from_str(t.as_str()).unwrap();
            if f["t"] == "event" && f["event"]["t"] == "delta" && first.is_none() {
                first = Some(start.elapsed());
            }
            if f["t"] == "end" {
                assert_eq!(f["outcome"], "ok", "{f}");
                break;
            }
            assert_ne!(f["t"], "rejected", "{f}");
        }
        waits.push(first.expect("a token").as_secs_f64() * 1000.0);
    }
    println!(
        "send → first token, {label}: p50 {:.0} ms, p90 {:.0} ms over {n} runs",
        pct(&mut waits.clone(), 0.5),
        pct(&mut waits, 0.9)
    );
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

/// Runs `streams` runs at once, `deltas` lines each, `gap_ms` apart (0: as fast as they go);
/// one socket receives every frame. The agents start streaming together, once every agent
/// process is up (starting 100 Python processes keeps this machine's two cores busy for
/// seconds), so that start-up is not what is measured. Reports the stdout→frame latency and the deltas per second that reach the client
/// while they stream.
async fn latency(e: &Edge, streams: usize, deltas: usize, gap_ms: u64) {
    let mut ws = e.ws().await;
    ws.send(Message::text(r#"{"t":"hello"}"#)).await.unwrap();
    let mut convs = Vec::new();
    for _ in 0..streams {
        convs.push(e.conversation().await);
    }
    let lead = Duration::from_secs(if streams > 1 { 12 } else { 1 });
    let at = now_ns() + lead.as_nanos();
    let cpu = e.cpu_secs();
    for c in &convs {
        ws.send(Message::text(
            json!({"t":"send","conversation_id":c,"text":format!("bench {deltas} {gap_ms} {at}")})
                .to_string(),
        ))
        .await
        .unwrap();
    }
    let mut lat = Vec::new();
    // (written at, latency) of each delta: when the slow ones were written.
    let mut when = Vec::new();
    // The first and last delta's stamps: how fast the agents wrote (the most that can reach
    // the client).
    let mut written = (u128::MAX, 0u128);
    let (mut ends, mut ups) = (0, 0);
    let (mut first, mut last) = (None, std::time::Instant::now());
    let deadline = tokio::time::Instant::now() + lead + Duration::from_secs(120);
    while ends < streams {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("every run ended within 2 minutes")
            .unwrap()
            .unwrap();
        let Message::Text(t) = m else { continue };
        let f: Value = serde_json::from_str(t.as_str()).unwrap();
        if f["t"] == "event" && f["event"]["t"] == "block_start" {
            // Written by the agent just before it waits for the common start.
            ups += 1;
            if ups == streams {
                assert!(now_ns() < at, "the agents were not all up within {lead:?}");
            }
        } else if f["t"] == "end" {
            assert_eq!(f["outcome"], "ok", "{f}");
            ends += 1;
        } else if f["t"] == "rejected" || f["t"] == "gap" {
            // A gap: this client fell so far behind that frames were dropped for it (the run
            // itself never waits for a slow socket).
            panic!("{f}");
        } else if let Some(text) = f["event"]["text"].as_str() {
            // One frame may carry several deltas (edge joins those of a run that arrive
            // together): each stamp is one delta.
            let now = now_ns();
            for ns in text
                .split_whitespace()
                .filter_map(|w| w.strip_prefix("t=")?.parse::<u128>().ok())
            {
                lat.push((now - ns) as f64 / 1000.0);
                when.push((ns, (now - ns) as f64 / 1000.0));
                written.0 = written.0.min(ns);
                written.1 = written.1.max(ns);
                last = std::time::Instant::now();
                first.get_or_insert(last);
            }
        }
    }
    assert_eq!(lat.len(), streams * deltas, "every delta arrived");
    let secs = (last - first.unwrap()).as_secs_f64();
    let cpu = e.cpu_secs() - cpu;
    println!(
        "streams {streams:>3} x {deltas} deltas {gap_ms} ms apart: stdout→frame p50 {:.0} µs, p99 {:.0} µs; {:.0} deltas/s reached the client ({:.0}/s written); edge (gateway + chat) CPU {:.0} µs per delta; edge RSS {} KiB",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        lat.len() as f64 / secs,
        lat.len() as f64 / ((written.1 - written.0) as f64 / 1e9),
        cpu * 1e6 / lat.len() as f64,
        e.rss_kib()
    );
    if streams > 1 && std::env::var_os("FANOUT_WHEN").is_some() {
        // p99 of the deltas written in each 100 ms of the streaming.
        let mut bins: std::collections::BTreeMap<u128, Vec<f64>> = Default::default();
        for (ns, l) in when {
            bins.entry((ns.saturating_sub(at)) / 100_000_000)
                .or_default()
                .push(l);
        }
        let line: Vec<String> = bins
            .iter_mut()
            .map(|(b, v)| format!("{}:{:.0}", b, pct(v, 0.99) / 1000.0))
            .collect();
        println!("  p99 ms by 100 ms of writing: {}", line.join(" "));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/chat.sh"]
async fn chat_bench() {
    if std::env::var_os("SKIP_LATENCY").is_none() {
        // Interleaved, so the machine's noise falls on both.
        let (sandboxed, open) = (edge().await, edge_with("open").await);
        for _ in 0..3 {
            first_token(&sandboxed, "local worker, sandboxed (every layer)", 10).await;
            first_token(&open, "local worker, no sandbox", 10).await;
        }
    }
    if std::env::var_os("FIRST_TOKEN_ONLY").is_some() {
        return;
    }
    let e = edge().await;
    if std::env::var_os("FANOUT_ONLY").is_some() {
        // The 100-run figure alone, three times, sandboxed and not, interleaved (the machine's
        // noise shows as the spread; the difference is what 100 sandboxes cost the machine).
        let open = edge_with("open").await;
        for _ in 0..3 {
            print!("every sandbox layer: ");
            latency(&e, 100, 100, 10).await;
            print!("layers off: {:<9}", open_layers());
            latency(&open, 100, 100, 10).await;
        }
        return;
    }
    if std::env::var_os("SKIP_LATENCY").is_none() {
        latency(&e, 1, 300, 10).await;
        latency(&e, 100, 100, 10).await;
        // Sustained: an agent writing as fast as it can.
        latency(&e, 1, 20_000, 0).await;
    }
    // Memory per idle, signed-in WebSocket: straight to the chat (one file descriptor each),
    // then through the gateway (three: the client's, the gateway's to the chat, the chat's),
    // which is why only the first fits 10,000 under this machine's hard limit of 20,000 descriptors
    // per process.
    let n: usize = std::env::var("IDLE_SOCKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let direct: usize = std::env::var("IDLE_DIRECT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    drop(e);
    for (n, through_gateway) in [(direct, false), (n, true)] {
        // A fresh edge for each, so memory freed by earlier phases does not hide the cost.
        let e = edge().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = e.rss_kib();
        let mut socks = Vec::with_capacity(n);
        for _ in 0..n {
            let mut ws = if through_gateway {
                e.ws().await
            } else {
                e.ws_direct().await
            };
            ws.send(Message::text(r#"{"t":"hello"}"#)).await.unwrap();
            let _ = ws.next().await;
            socks.push(ws);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = e.rss_kib();
        println!(
            "{n} idle WebSockets {}: edge RSS {before} → {after} KiB, {:.1} KiB per socket",
            if through_gateway {
                "through the gateway"
            } else {
                "straight to the chat"
            },
            (after as f64 - before as f64) / n as f64
        );
        drop(socks);
    }
}
