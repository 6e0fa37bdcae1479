//! `edge register` end to end, on loopback: an edge with `[register]`, project hosts that
//! enrol with one-time tokens and hold their sessions (`edge register`, `edge connect`), nginx
//! and a WebSocket echo server as the hosts' upstreams, reached only through the sessions.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EDGE: &str = env!("CARGO_BIN_EXE_edge");

use common::Killed;

/// nginx on loopback serving `index.html` and an 8 MiB `big.bin` from `dir/www`.
fn nginx(dir: &Path) -> (Killed, u16) {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(
        www.join("index.html"),
        "hello from nginx on the project host\n",
    )
    .unwrap();
    let big: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(www.join("big.bin"), &big).unwrap();
    let port = common::free_port();
    let server = format!(
        "server {{ listen 127.0.0.1:{port}; root {}; }}",
        www.display()
    );
    (common::nginx(dir, port, &server), port)
}

struct Edge {
    dir: PathBuf,
    https: u16,
    register: u16,
    admin: u16,
}

impl Edge {
    /// An edge with `[register]` (plus `extra`, TOML lines for that table) and one project of
    /// its own, `main`, written to `d/edge.toml` (not started).
    fn small(d: &Path, extra: &str) -> Edge {
        let e = Edge {
            dir: d.to_path_buf(),
            https: common::free_port(),
            register: common::free_port(),
            admin: common::free_port(),
        };
        std::fs::write(
            e.cfg(),
            format!(
                "domain = \"example.test\"\nstate_dir = \"state\"\n[listen]\nhttps = \"127.0.0.1:{}\"\nhttp = \"\"\nadmin = \"127.0.0.1:{}\"\n[register]\nlisten = \"127.0.0.1:{}\"\n{extra}[[projects]]\nname = \"main\"\n  [[projects.routes]]\n  mount = \"forge\"\n  upstream = \"http://127.0.0.1:9\"\n",
                e.https, e.admin, e.register
            ),
        )
        .unwrap();
        e
    }

    fn cfg(&self) -> PathBuf {
        self.dir.join("edge.toml")
    }
    fn ca(&self) -> PathBuf {
        self.dir.join("state/ca/example.test/ca.pem")
    }
    fn start(&self, log: &str) -> Killed {
        let child = Killed(
            Command::new(EDGE)
                .args(["up", "--config"])
                .arg(self.cfg())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(self.dir.join(log)).unwrap())
                .spawn()
                .unwrap(),
        );
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.register)).is_ok() {
                return child;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("edge did not start");
    }
    /// `edge register token create NAME`: (success, stdout+stderr, the last line).
    fn token(&self, name: &str) -> (bool, String, String) {
        let out = Command::new(EDGE)
            .args(["register", "token", "create", name, "--config"])
            .arg(self.cfg())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let last = text.lines().last().unwrap_or("").to_string();
        (
            out.status.success(),
            format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
            last,
        )
    }
    /// GET `https://HOST/PATH` through the edge: (status, body).
    fn get(&self, host: &str, path: &str) -> (u16, Vec<u8>) {
        self.get_with(host, path, "--http2")
    }
    /// The same over HTTP/1.1: a connection of its own to the upstream (HTTP/2 clients'
    /// requests share pooled streams).
    fn get11(&self, host: &str, path: &str) -> (u16, Vec<u8>) {
        self.get_with(host, path, "--http1.1")
    }
    fn get_with(&self, host: &str, path: &str, version: &str) -> (u16, Vec<u8>) {
        let out = Command::new("curl")
            .args([
                "-s",
                version,
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
                "--cacert",
            ])
            .arg(self.ca())
            .args([
                "--resolve",
                &format!("{host}:{}:127.0.0.1", self.https),
                &format!("https://{host}:{}{path}", self.https),
            ])
            .output()
            .unwrap();
        let mut body = out.stdout;
        let nl = body.iter().rposition(|b| *b == b'\n').unwrap_or(0);
        let code = String::from_utf8_lossy(&body[nl..])
            .trim()
            .parse()
            .unwrap_or(0);
        body.truncate(nl);
        (code, body)
    }
    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("state/register/audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every audit line is JSON"))
            .collect()
    }
}

/// Runs a host command (`edge register ...` or `edge connect ...`) in the background.
fn host(args: &[&str], log: &Path) -> Killed {
    Killed(
        Command::new(EDGE)
            .args(args)
            .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// Waits (up to 10 s) until a host process ends; its exit status.
async fn exits(h: &mut Killed) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = h.0.try_wait().unwrap() {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the host did not stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `f` holds, up to `within`; how long it took.
async fn until(within: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "{what} after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

fn events(audit: &[serde_json::Value], name: &str) -> Vec<String> {
    audit
        .iter()
        .filter(|e| e["name"] == name)
        .map(|e| e["event"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_registers_with_a_token_and_its_mounts_go_live_through_one_session() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_nginx, web) = nginx(d);
    let echo_port = common::ws_echo().await;
    let e = Edge {
        dir: d.to_path_buf(),
        https: common::free_port(),
        register: common::free_port(),
        admin: common::free_port(),
    };
    std::fs::write(
        e.cfg(),
        format!(
            r#"domain = "example.test"
state_dir = "state"
[listen]
https = "127.0.0.1:{https}"
http = ""
admin = "127.0.0.1:{admin}"
[register]
listen = "127.0.0.1:{register}"
reserved = ["shop"]
cert_lifetime = "12s"
[[projects]]
name = "main"
  [[projects.routes]]
  mount = "forge"
  upstream = "http://127.0.0.1:9"
"#,
            https = e.https,
            admin = e.admin,
            register = e.register
        ),
    )
    .unwrap();
    let mut edge = e.start("edge.log");

    // Tokens: names are checked when minted.
    for (name, why) in [
        ("main", "is a project in the config"),
        ("www", "reserved"),
        ("shop", "reserved"),
        ("Bad_Name", "is not a name"),
    ] {
        let (ok, text, _) = e.token(name);
        assert!(!ok && text.contains(why), "{name}: {text}");
    }
    let (ok, text, token) = e.token("demo");
    assert!(ok, "{text}");
    assert!(
        token.starts_with("edge1."),
        "the token is alone on the last line: {text}"
    );

    // Register: from the command to the first 200 through the edge.
    let state_a = d.join("host-a");
    let started = Instant::now();
    let _a = host(
        &[
            "register",
            "demo",
            "--edge",
            &format!("127.0.0.1:{}", e.register),
            "--token",
            &token,
            "--route",
            &format!("forge=http://127.0.0.1:{web}"),
            "--route",
            &format!("live=http://127.0.0.1:{echo_port}"),
            "--state",
            state_a.to_str().unwrap(),
        ],
        &d.join("host-a.log"),
    );
    let first = until(Duration::from_secs(10), "no 200 through the tunnel", || {
        e.get("demo.example.test", "/forge/").0 == 200
    })
    .await;
    eprintln!("edge register -> first 200: {:?}", started.elapsed());
    let _ = first;
    let (code, body) = e.get("demo.example.test", "/forge/");
    assert_eq!(
        (code, String::from_utf8_lossy(&body).as_ref()),
        (200, "hello from nginx on the project host\n")
    );
    let printed = std::fs::read_to_string(d.join("host-a.out")).unwrap();
    assert!(
        printed.contains(&format!("https://demo.example.test:{}/forge/", e.https)),
        "{printed}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state_a.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A download streams whole.
    let t = Instant::now();
    let (code, big) = e.get("demo.example.test", "/forge/big.bin");
    assert_eq!(code, 200);
    assert_eq!(big.len(), 8 << 20);
    assert!(
        big.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8),
        "the download is corrupt"
    );
    eprintln!("8 MiB through the tunnel: {:?}", t.elapsed());

    // Another key cannot take the name; and the token is spent, even for the name's own key.
    let enrol_again = |state: &Path| {
        let out = Command::new(EDGE)
            .args([
                "register",
                "demo",
                "--edge",
                &format!("127.0.0.1:{}", e.register),
                "--token",
                &token,
                "--route",
                "forge=http://127.0.0.1:9",
                "--state",
            ])
            .arg(state)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = enrol_again(&d.join("host-x"));
    assert!(said.contains("\"demo\" is taken"), "{said}");
    std::fs::create_dir_all(d.join("host-y")).unwrap();
    std::fs::copy(state_a.join("key.pem"), d.join("host-y/key.pem")).unwrap();
    let said = enrol_again(&d.join("host-y"));
    assert!(said.contains("not valid"), "{said}");

    // A WebSocket on demo, open while another project registers and is revoked.
    let mut live = common::wss(e.https, "demo.example.test", &e.ca()).await;
    common::echo(&mut live, "before").await;
    let (_, _, token_b) = e.token("bproj");
    let state_b = d.join("host-b");
    let mut b = host(
        &[
            "register",
            "bproj",
            "--edge",
            &format!("127.0.0.1:{}", e.register),
            "--token",
            &token_b,
            "--route",
            &format!("forge=http://127.0.0.1:{web}"),
            "--state",
            state_b.to_str().unwrap(),
        ],
        &d.join("host-b.log"),
    );
    until(Duration::from_secs(10), "bproj is not served", || {
        e.get("bproj.example.test", "/forge/").0 == 200
    })
    .await;
    common::echo(&mut live, "while b registered").await;
    let revoke = Command::new(EDGE)
        .args(["register", "revoke", "bproj", "--config"])
        .arg(e.cfg())
        .output()
        .unwrap();
    assert!(
        revoke.status.success(),
        "{}",
        String::from_utf8_lossy(&revoke.stderr)
    );
    // The revoked host stops: the edge refuses its certificate.
    let status = exits(&mut b).await;
    assert!(!status.success());
    let said = std::fs::read_to_string(d.join("host-b.log")).unwrap();
    assert!(said.contains("not registered"), "{said}");
    assert_ne!(e.get("bproj.example.test", "/forge/").0, 200);
    common::echo(&mut live, "after b revoked").await;

    // A second agent for demo (the same key copied elsewhere) is refused while HA is off.
    let state_a2 = d.join("host-a2");
    std::fs::create_dir_all(&state_a2).unwrap();
    for f in ["key.pem", "cert.pem", "enrolment.json"] {
        std::fs::copy(state_a.join(f), state_a2.join(f)).unwrap();
    }
    let enr = std::fs::read_to_string(state_a2.join("enrolment.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&enr).unwrap();
    v["agent"] = "elsewhere/1".into();
    std::fs::write(state_a2.join("enrolment.json"), v.to_string()).unwrap();
    let a2 = host(
        &["connect", "--state", state_a2.to_str().unwrap()],
        &d.join("host-a2.log"),
    );
    until(
        Duration::from_secs(10),
        "the second agent was not refused",
        || {
            e.audit().iter().any(|x| {
                x["event"] == "refused"
                    && x["reason"].as_str().unwrap_or("").contains("another agent")
            })
        },
    )
    .await;
    drop(a2);

    // The client certificate (12 s) is renewed over the live session.
    let cert_before = std::fs::read_to_string(state_a.join("cert.pem")).unwrap();
    until(
        Duration::from_secs(20),
        "no renewal over the session",
        || {
            events(&e.audit(), "demo").contains(&"renew".to_string())
                && std::fs::read_to_string(state_a.join("cert.pem")).unwrap() != cert_before
        },
    )
    .await;

    // The host goes: its mounts say so. It comes back with `edge connect`.
    drop(_a);
    until(Duration::from_secs(5), "no offline page", || {
        let (code, body) = e.get("demo.example.test", "/forge/");
        code == 502 && String::from_utf8_lossy(&body).contains("is offline")
    })
    .await;
    let _a = host(
        &["connect", "--state", state_a.to_str().unwrap()],
        &d.join("host-a-again.log"),
    );
    let back = until(
        Duration::from_secs(10),
        "not back after edge connect",
        || e.get("demo.example.test", "/forge/").0 == 200,
    )
    .await;
    eprintln!("edge connect -> 200 again: {back:?}");

    // The edge restarts: the host reconnects by itself.
    drop(edge);
    edge = e.start("edge-2.log");
    let back = until(
        Duration::from_secs(40),
        "the host did not reconnect after an edge restart",
        || e.get("demo.example.test", "/forge/").0 == 200,
    )
    .await;
    eprintln!("edge restart -> 200 again: {back:?}");
    let list = Command::new(EDGE)
        .args(["register", "list", "--config"])
        .arg(e.cfg())
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.lines()
            .any(|l| l.starts_with("demo ") && l.contains("127.0.0.1:")),
        "{list}"
    );

    // The audit log, line by line.
    let audit = e.audit();
    let demo = events(&audit, "demo");
    for want in [
        "token",
        "register",
        "connect",
        "refused",
        "renew",
        "disconnect",
    ] {
        assert!(
            demo.contains(&want.to_string()),
            "{want} missing for demo: {demo:?}"
        );
    }
    // Hosts reach the edge over QUIC where UDP gets through (here).
    assert!(
        audit
            .iter()
            .any(|x| x["event"] == "connect" && x["name"] == "demo" && x["transport"] == "quic"),
        "{audit:#?}"
    );
    let first_connect = demo.iter().position(|x| x == "connect").unwrap();
    assert!(demo.iter().position(|x| x == "register").unwrap() < first_connect);
    // One line per session: a host holds one per core, so runs of the same event fold, and
    // after the revoke each lane's disconnect and refusal may interleave.
    let mut b = events(&audit, "bproj");
    b.dedup();
    assert_eq!(
        b[..4],
        ["token", "register", "connect", "revoke"],
        "{audit:#?}"
    );
    let mut tail = b[4..].to_vec();
    tail.sort();
    tail.dedup();
    assert_eq!(tail, ["disconnect", "refused"], "{audit:#?}");
    for line in &audit {
        assert!(line["time"].is_i64(), "{line}");
    }
    drop(edge);
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_on_the_tunnel_listener_is_refused_and_harms_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let e = Edge::small(d, "");
    let _edge = e.start("edge.log");
    // Not TLS at all, a thousand times over.
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let port = e.register;
        tasks.push(tokio::spawn(async move {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                let _ = s
                    .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff garbage")
                    .await;
                let mut buf = [0u8; 64];
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Silent connections from one address (a slow handshake each): 16 are let wait out the
    // handshake timeout, the rest are dropped at once, and everyone else is served meanwhile.
    let refused_so_far = || {
        let out = Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{}/register", e.admin)])
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        status["handshakes_refused"].as_u64().unwrap()
    };
    // (Some of the thousand above may have been dropped this way already.)
    let before = refused_so_far();
    let mut silent = Vec::new();
    let mut dropped = 0;
    for _ in 0..40 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.9:0".parse().unwrap()).unwrap();
        let mut s = sock
            .connect(([127, 0, 0, 1], e.register).into())
            .await
            .unwrap();
        let mut buf = [0u8; 8];
        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => dropped += 1,
            Ok(Ok(n)) => panic!("the edge said {n} bytes before the client's hello"),
            Err(_) => silent.push(s),
        }
    }
    assert_eq!((silent.len(), dropped), (16, 24));
    assert_eq!(refused_so_far() - before, 24);
    // The edge still serves, and still takes a real enrolment.
    assert_eq!(e.get("main.example.test", "/forge/").0, 502);
    let (ok, text, token) = e.token("demo");
    assert!(ok, "{text}");
    // A token for another name, and a made-up one: the same refusal, logged.
    for (name, t) in [("other", token.as_str()), ("demo", "edge1.AAAA.BBBB")] {
        let out = Command::new(EDGE)
            .args([
                "register",
                name,
                "--edge",
                &format!("127.0.0.1:{}", e.register),
                "--token",
                t,
                "--route",
                "forge=http://127.0.0.1:9",
                "--state",
            ])
            .arg(d.join(format!("h-{name}")))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{said}");
        assert!(
            said.contains("not valid") || said.contains("pin"),
            "{name}: {said}"
        );
    }
    // The token still works for its own name.
    let out = Command::new("timeout")
        .args([
            "3",
            EDGE,
            "register",
            "demo",
            "--edge",
            &format!("127.0.0.1:{}", e.register),
            "--token",
            &token,
            "--route",
            "forge=http://127.0.0.1:9",
            "--state",
        ])
        .arg(d.join("h-demo"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("registered demo"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = e.audit().iter().filter(|x| x["event"] == "refused").count();
    assert!(refused >= 1, "{:?}", e.audit());
    // The silent ones are still held (they get the 10 s handshake timeout, no more).
    drop(silent);
}

/// A keep-alive HTTP/1.1 server on loopback answering every request with `body`.
async fn answering(body: &'static str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn with_ha_two_hosts_share_a_name_and_deregistering_ends_both() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (one, two) = (answering("one").await, answering("two").await);
    let e = Edge::small(d, "ha = true\n");
    let _edge = e.start("edge.log");
    let (_, _, token) = e.token("pair");
    let s1 = d.join("h1");
    let h1 = host(
        &[
            "register",
            "pair",
            "--edge",
            &format!("127.0.0.1:{}", e.register),
            "--token",
            &token,
            "--route",
            &format!("forge=http://127.0.0.1:{one}"),
            "--state",
            s1.to_str().unwrap(),
        ],
        &d.join("h1.log"),
    );
    until(Duration::from_secs(10), "h1 not serving", || {
        e.get("pair.example.test", "/forge/").0 == 200
    })
    .await;
    // The second host: the same key (copied), another agent, its own upstream.
    let s2 = d.join("h2");
    std::fs::create_dir_all(&s2).unwrap();
    for f in ["key.pem", "cert.pem"] {
        std::fs::copy(s1.join(f), s2.join(f)).unwrap();
    }
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s1.join("enrolment.json")).unwrap()).unwrap();
    v["agent"] = "second/1".into();
    v["routes"][0]["upstream"] = format!("127.0.0.1:{two}").into();
    std::fs::write(s2.join("enrolment.json"), v.to_string()).unwrap();
    let mut h2 = host(
        &[
            "connect",
            "--transport",
            "tcp",
            "--state",
            s2.to_str().unwrap(),
        ],
        &d.join("h2.log"),
    );
    // Streams spread over both hosts' sessions (each HTTP/1.1 client connection is a stream).
    let mut seen = std::collections::BTreeSet::new();
    let start = Instant::now();
    loop {
        let (code, body) = e.get11("pair.example.test", "/forge/");
        if code == 200 {
            seen.insert(String::from_utf8_lossy(&body).into_owned());
        }
        if seen.len() == 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "requests did not reach both hosts ({seen:?}): {}\n{}",
            std::fs::read_to_string(d.join("h2.log")).unwrap_or_default(),
            std::fs::read_to_string(d.join("state/register/audit.jsonl")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first host gives the name up: both hosts' sessions end, the second is refused from
    // its next connection, and the name is no longer served.
    let _ = h1;
    let out = Command::new(EDGE)
        .args(["deregister", "--state"])
        .arg(&s1)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("deregistered pair"));
    let status = exits(&mut h2).await;
    assert!(!status.success());
    assert_ne!(e.get("pair.example.test", "/forge/").0, 200);
    // The first host's sessions ran over QUIC, the second's (asked for) over TLS + TCP.
    let audit = e.audit();
    for t in ["quic", "tcp"] {
        assert!(
            audit
                .iter()
                .any(|x| x["event"] == "connect" && x["transport"] == t),
            "no {t} session: {audit:#?}"
        );
    }
    let ev = events(&e.audit(), "pair");
    assert!(ev.contains(&"deregister".to_string()), "{ev:?}");
    // A wrong owner and a missing name get the same answer.
    let out = Command::new(EDGE)
        .args(["deregister", "--state"])
        .arg(&s2)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not registered"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_at_its_stream_limit_answers_busy_and_others_carry_on() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let echo_port = common::ws_echo().await;
    let e = Edge::small(d, "max_streams = 1\nquic = false\n");
    let _edge = e.start("edge.log");
    let (_, _, token) = e.token("demo");
    let state = d.join("h");
    let _h = host(
        &[
            "register",
            "demo",
            "--edge",
            &format!("127.0.0.1:{}", e.register),
            "--token",
            &token,
            "--route",
            &format!("live=http://127.0.0.1:{echo_port}"),
            "--state",
            state.to_str().unwrap(),
        ],
        &d.join("h.log"),
    );
    until(Duration::from_secs(10), "not registered", || {
        e.get("demo.example.test", "/live/").0 != 0
            && e.audit().iter().any(|x| x["event"] == "connect")
    })
    .await;
    // Each WebSocket holds a stream; the host's sessions (one per core) take one each.
    let lanes = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4);
    until(Duration::from_secs(10), "not every lane connected", || {
        e.audit().iter().filter(|x| x["event"] == "connect").count() >= lanes
    })
    .await;
    // No QUIC on this edge: the host fell back to TLS over TCP by itself.
    assert!(e
        .audit()
        .iter()
        .filter(|x| x["event"] == "connect")
        .all(|x| x["transport"] == "tcp"));
    let mut held = Vec::new();
    for i in 0..lanes {
        let mut ws = common::wss(e.https, "demo.example.test", &e.ca()).await;
        common::echo(&mut ws, &format!("held {i}")).await;
        held.push(ws);
    }
    let (code, body) = e.get11("demo.example.test", "/live/");
    assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("as many streams open as it may"));
    // The open ones carry on; one closes, and a new stream fits again.
    for (i, ws) in held.iter_mut().enumerate() {
        common::echo(ws, &format!("still {i}")).await;
    }
    drop(held.pop());
    until(
        Duration::from_secs(5),
        "the freed stream was not reused",
        || e.get11("demo.example.test", "/live/").0 != 503,
    )
    .await;
}
