//! Runs on SSH outposts with real OpenSSH: the test starts `sshd` on a loopback port with its
//! own host key and an `authorized_keys` line `restrict,command="edge worker --stdio"`; the
//! orchestrator connects with the system `ssh` and a pinned host key. An outpost that is down
//! and one whose host key does not match are skipped (and rested); the run goes to the next
//! and the run's frames say where.

mod common;

use common::{free_port, sh_agent, states, until_end};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use edge_chat::{Agent, AgentSpec, Conversations, Orchestrator, RunBody};
use edge_routing::{OutpostConfig, OutpostKind};

const EDGE: &str = env!("CARGO_BIN_EXE_edge");

fn keygen(path: &Path) -> String {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "edge-test", "-f"])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ssh-keygen");
    // "ssh-ed25519 AAAA... comment" → "ssh-ed25519 AAAA..."
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

struct Sshd {
    child: std::process::Child,
    port: u16,
    host_key: String,
    client_key: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sshd(dir: &Path) -> Sshd {
    sshd_at(
        dir,
        &format!("{EDGE} worker --stdio"),
        None,
        "127.0.0.1",
        free_port(),
    )
}

/// An sshd on `addr:port` (inside the network namespace `netns`, if given) whose forced command
/// is `command`, with its files in `dir`.
fn sshd_at(dir: &Path, command: &str, netns: Option<&str>, addr: &str, port: u16) -> Sshd {
    assert!(
        Path::new("/usr/sbin/sshd").exists(),
        "OpenSSH's server is missing: apt-get install openssh-server (bash .ci/run does)"
    );
    // sshd's privilege separation directory.
    std::fs::create_dir_all("/run/sshd").unwrap();
    let host_key = keygen(&dir.join("host_key"));
    let client_key = dir.join("client_key");
    let client_pub = keygen(&client_key);
    std::fs::write(
        dir.join("authorized_keys"),
        format!("restrict,command=\"{command}\" {client_pub}\n"),
    )
    .unwrap();
    let cfg = dir.join("sshd_config");
    std::fs::write(
        &cfg,
        format!(
            "Port {port}\nListenAddress {addr}\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PidFile {d}/sshd.pid\nStrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nLogLevel ERROR\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "/usr/sbin/sshd"]);
            c
        }
        None => Command::new("/usr/sbin/sshd"),
    };
    let child = cmd.args(["-D", "-e", "-f"]).arg(&cfg).spawn().unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect((addr, port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Sshd {
        child,
        port,
        host_key,
        client_key,
    }
}

fn ssh(name: &str, port: u16, key: &Path, host_key: &str) -> OutpostConfig {
    ssh_to(name, "127.0.0.1", port, key, host_key)
}

fn ssh_to(name: &str, host: &str, port: u16, key: &Path, host_key: &str) -> OutpostConfig {
    OutpostConfig {
        name: name.into(),
        kind: OutpostKind::Ssh {
            host: host.into(),
            port,
            user: "root".into(),
            key: key.to_path_buf(),
            host_key: host_key.into(),
        },
        capacity: 2,
    }
}

#[tokio::test]
async fn runs_go_over_ssh_to_the_first_outpost_that_answers() {
    let dir = tempfile::tempdir().unwrap();
    let d = sshd(dir.path());
    let other_key = keygen(&dir.path().join("other_host_key"));
    let list = vec![
        ssh("down", free_port(), &d.client_key, &d.host_key),
        ssh("wrong-key", d.port, &d.client_key, &other_key),
        ssh("good", d.port, &d.client_key, &d.host_key),
    ];
    let o = Orchestrator::new(Vec::new(), Conversations::new(dir.path().join("c")));
    o.set_outposts(edge_chat::outposts(&list, dir.path(), &[]).unwrap());
    let spec = sh_agent("echo \"over ssh: $0\"");
    let conv = o.conversations().create("alice", "t").unwrap();
    let run = o.start("alice", &conv.id, "hello", &spec, None).unwrap();
    let (missed, mut rx) = run.subscribe(0);
    let mut frames = missed.unwrap();
    frames.extend(until_end(&mut rx).await);
    let end = frames.last().unwrap();
    assert!(
        matches!(
            &end.body,
            RunBody::End {
                outcome: edge_chat::Outcome::Ok,
                ..
            }
        ),
        "{frames:#?}"
    );
    let text: String = frames
        .iter()
        .filter_map(|f| match &f.body {
            RunBody::Event {
                event: edge_sandbox::Event::Delta { text, .. },
            } => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert!(text.contains("over ssh: hello"), "{frames:#?}");
    let st = states(&frames);
    assert_eq!(st[1].1.as_deref(), Some("down"), "{st:#?}");
    assert!(
        st[1].2.as_deref().unwrap().starts_with("skipped"),
        "{st:#?}"
    );
    assert_eq!(st[2].1.as_deref(), Some("wrong-key"), "{st:#?}");
    assert!(
        st[2]
            .2
            .as_deref()
            .unwrap()
            .contains("Host key verification failed"),
        "the pinned host key is enforced: {st:#?}"
    );
    assert_eq!(
        st[3],
        ("running".into(), Some("good".into()), None),
        "{st:#?}"
    );
    // The failed outposts rest; the next run goes straight to the good one.
    let status = o.outpost_status();
    assert!(
        status[0].3.is_some() && status[1].3.is_some() && status[2].3.is_none(),
        "{status:?}"
    );
    let conv2 = o.conversations().create("alice", "t2").unwrap();
    let run = o.start("alice", &conv2.id, "again", &spec, None).unwrap();
    let (missed, mut rx) = run.subscribe(0);
    let mut frames = missed.unwrap();
    frames.extend(until_end(&mut rx).await);
    let st = states(&frames);
    assert_eq!(st.len(), 2, "no outpost skipped this time: {st:#?}");
    assert_eq!(st[1].1.as_deref(), Some("good"));
    // Capacity is given back when the worker is gone (a moment after the run's end).
    for _ in 0..100 {
        if o.outpost_status().iter().all(|s| s.1 == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = o.outpost_status();
    assert!(status.iter().all(|s| s.1 == 0), "{status:?}");
    // No SSH master left behind.
    for op in o.outposts() {
        edge_workers::outposts::close(&op.via).await;
    }
}

/// The worker host's own minimum in its forced command (`edge worker --stdio --floor F`): a
/// run without a sandbox is refused there with the reason, and with no other outpost the run
/// ends with it.
#[tokio::test]
async fn an_ssh_worker_with_a_floor_refuses_an_unconfined_run() {
    let dir = tempfile::tempdir().unwrap();
    let floor = dir.path().join("floor.toml");
    std::fs::write(&floor, "require = [\"all\"]\nmemory = \"1GiB\"\n").unwrap();
    let marker = dir.path().join("ran");
    let d = sshd_at(
        dir.path(),
        &format!("{EDGE} worker --stdio --floor {}", floor.display()),
        None,
        "127.0.0.1",
        free_port(),
    );
    let o = Orchestrator::new(Vec::new(), Conversations::new(dir.path().join("c")));
    o.set_outposts(
        edge_chat::outposts(
            &[ssh("strict", d.port, &d.client_key, &d.host_key)],
            dir.path(),
            &[],
        )
        .unwrap(),
    );
    let spec = sh_agent(&format!("touch {}", marker.display()));
    let conv = o.conversations().create("alice", "t").unwrap();
    let run = o.start("alice", &conv.id, "hello", &spec, None).unwrap();
    let (missed, mut rx) = run.subscribe(0);
    let mut frames = missed.unwrap();
    frames.extend(until_end(&mut rx).await);
    match &frames.last().unwrap().body {
        RunBody::End {
            outcome: edge_chat::Outcome::Error,
            detail: Some(d),
            ..
        } => assert!(
            d.contains(
                "strict: refused by this worker's floor: this worker runs only confined agents"
            ),
            "{d}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(!marker.exists(), "a refused run must not start");
    // Refusing is not failing: the outpost is not rested.
    assert!(
        o.outpost_status()[0].3.is_none(),
        "{:?}",
        o.outpost_status()
    );
    // No SSH master left behind.
    for op in o.outposts() {
        edge_workers::outposts::close(&op.via).await;
    }
}

/// A worker "host": a network namespace the test creates (`ip netns`), joined to this one by a
/// veth pair on a /30 of its own, with its own sshd. Dropped: every process in it killed, the
/// namespace (and so the pair) deleted.
struct NetnsHost {
    ns: String,
    /// The host's address, seen from here.
    addr: String,
    sshd: Option<Sshd>,
}

impl NetnsHost {
    fn new(dir: &Path, index: u8) -> NetnsHost {
        let tag = std::process::id() % 100_000;
        let ns = format!("edge-t{tag}-{index}");
        let (here, there) = (format!("ve{tag}h{index}"), format!("ve{tag}w{index}"));
        let net = format!("10.{}.{}", 200 + index, tag % 250);
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {}: {} (network namespaces need root and iproute2)",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        let mut host = NetnsHost {
            ns: ns.clone(),
            addr: format!("{net}.2"),
            sshd: None,
        };
        ip(&["link", "add", &here, "type", "veth", "peer", "name", &there]);
        ip(&["link", "set", &there, "netns", &ns]);
        ip(&["addr", "add", &format!("{net}.1/30"), "dev", &here]);
        ip(&["link", "set", &here, "up"]);
        ip(&[
            "netns",
            "exec",
            &ns,
            "ip",
            "addr",
            "add",
            &format!("{net}.2/30"),
            "dev",
            &there,
        ]);
        ip(&["netns", "exec", &ns, "ip", "link", "set", &there, "up"]);
        ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        let hd = dir.join(&ns);
        std::fs::create_dir_all(&hd).unwrap();
        host.sshd = Some(sshd_at(
            &hd,
            &format!("{EDGE} worker --stdio"),
            Some(&ns),
            &host.addr,
            22,
        ));
        host
    }

    /// The host dies: every process in it (sshd, the worker, the agent) is killed at once.
    /// Every process of the host dies at once, as in a power cut: all are stopped first, so
    /// none sees another die and reports it (a worker that outlived its agent for a moment
    /// would send the agent's exit, and the run would end instead of moving on), then killed.
    fn crash(&self) {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
            .unwrap();
        let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if pids.is_empty() {
            return;
        }
        for sig in ["-STOP", "-KILL"] {
            let _ = Command::new("kill").arg(sig).args(&pids).status();
        }
    }

    fn outpost(&self, name: &str) -> OutpostConfig {
        let d = self.sshd.as_ref().unwrap();
        ssh_to(name, &self.addr, 22, &d.client_key, &d.host_key)
    }
}

impl Drop for NetnsHost {
    fn drop(&mut self) {
        self.crash();
        drop(self.sshd.take());
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// Two worker hosts in network namespaces, each its own sshd and host key; the first crashes
/// mid-run (everything in it killed): the run goes on with a new attempt on the second, and
/// what the first streamed stays.
#[tokio::test]
async fn a_run_whose_host_dies_mid_run_is_retried_on_the_next_outpost() {
    let dir = tempfile::tempdir().unwrap();
    let a = NetnsHost::new(dir.path(), 1);
    let b = NetnsHost::new(dir.path(), 2);
    let list = vec![a.outpost("host-a"), b.outpost("host-b")];
    let o = Orchestrator::new(Vec::new(), Conversations::new(dir.path().join("c")));
    o.set_outposts(edge_chat::outposts(&list, dir.path(), &[]).unwrap());
    let spec =
        sh_agent("i=0; while [ $i -lt 20 ]; do echo \"$0 $i\"; i=$((i+1)); sleep 0.05; done");
    let conv = o.conversations().create("alice", "t").unwrap();
    let run = o.start("alice", &conv.id, "line", &spec, None).unwrap();
    let (missed, mut rx) = run.subscribe(0);
    let mut frames = missed.unwrap();
    // The first line from host A, then host A dies.
    while !frames.iter().any(|f| {
        matches!(
            &f.body,
            RunBody::Event {
                event: edge_sandbox::Event::Delta { .. }
            }
        )
    }) {
        frames.push(
            tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    a.crash();
    frames.extend(until_end(&mut rx).await);
    let end = frames.last().unwrap();
    assert!(
        matches!(
            &end.body,
            RunBody::End {
                outcome: edge_chat::Outcome::Ok,
                ..
            }
        ),
        "{frames:#?}"
    );
    let st = states(&frames);
    assert!(
        st.iter().any(|(s, o, d)| s == "dispatching"
            && o.as_deref() == Some("host-a")
            && d.as_deref()
                .is_some_and(|d| d.contains("went away mid-run"))),
        "{st:#?}"
    );
    assert_eq!(st.last().unwrap().1.as_deref(), Some("host-b"), "{st:#?}");
    let running: Vec<_> = st.iter().filter(|s| s.0 == "running").collect();
    assert_eq!(running.len(), 2, "two attempts: {st:#?}");
    // Gap-free numbering across the attempts, every frame on disk, the last line from host B.
    let seqs: Vec<u64> = frames.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let (_, records) = o.conversations().open("alice", &conv.id).unwrap().unwrap();
    assert_eq!(
        records.iter().filter(|r| r.seq.is_some()).count(),
        frames.len()
    );
    let text: String = frames
        .iter()
        .filter_map(|f| match &f.body {
            RunBody::Event {
                event: edge_sandbox::Event::Delta { text, .. },
            } => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert!(
        text.contains("line 0") && text.contains("line 19"),
        "{text}"
    );
}

/// `edge workers`: from the running edge (admin listener) and with `--probe`.
#[tokio::test]
async fn edge_workers_lists_outposts_and_probes_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = sshd(dir.path());
    let (http, admin, chat) = (free_port(), free_port(), free_port());
    let cfg = dir.path().join("edge.toml");
    std::fs::write(
        &cfg,
        format!(
            "domain = \"example.test\"\nstate_dir = \"state\"\n[listen]\nhttps = \"\"\nhttp = \"127.0.0.1:{http}\"\nadmin = \"127.0.0.1:{admin}\"\nhttp_redirect = false\n\
             [[projects]]\nname = \"demo\"\n  [[projects.routes]]\n  mount = \"chat\"\n  upstream = \"chat\"\n  auth = \"forward\"\n\
             [chat]\nlisten = \"127.0.0.1:{chat}\"\n\
             [[outposts]]\nname = \"here\"\nkind = \"local\"\ncapacity = 3\n\
             [[outposts]]\nname = \"far\"\nkind = \"ssh\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\nkey = \"{}\"\nhost_key = \"{}\"\n\
             [[outposts]]\nname = \"gone\"\nkind = \"ssh\"\nhost = \"127.0.0.2\"\nport = {}\nuser = \"root\"\nkey = \"{}\"\nhost_key = \"{}\"\n",
            d.port,
            d.client_key.display(),
            d.host_key,
            // On 127.0.0.2, where no other test listens: a port freed here may be taken on
            // 127.0.0.1 by a test running alongside (one was, by another test's sshd).
            free_port(),
            d.client_key.display(),
            d.host_key,
        ),
    )
    .unwrap();
    let _edge = common::edge_up(&cfg, http).await;
    let out = Command::new(EDGE)
        .args(["workers", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[1].starts_with("here") && lines[1].contains(" 3 ") && lines[1].ends_with("ok"),
        "{text}"
    );
    assert!(lines[2].starts_with("far"), "{text}");
    let out = Command::new(EDGE)
        .args(["workers", "--probe", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "one outpost is down: {text}");
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name}: {text}"))
            .to_string()
    };
    assert!(
        line("here").contains(" ok ") && line("here").contains("idle"),
        "{text}"
    );
    assert!(line("far").contains(" ok "), "{text}");
    // The probe's SSH connection does not linger (ControlPersist) after it.
    let masters = Command::new("pgrep")
        .args(["-f", "far.mux"])
        .output()
        .unwrap();
    assert!(
        masters.stdout.is_empty(),
        "an ssh master outlived the probe: {}",
        String::from_utf8_lossy(&masters.stdout)
    );
    assert!(
        line("gone").contains("FAILED") && line("gone").contains("Connection refused"),
        "{text}"
    );

    // A reload changes the outposts for the next run: "gone" removed, "here" resized.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let cut = text.find("[[outposts]]\nname = \"gone\"").unwrap();
    std::fs::write(&cfg, text[..cut].replace("capacity = 3", "capacity = 5")).unwrap();
    let out = Command::new(EDGE)
        .args(["reload", "--admin", &format!("127.0.0.1:{admin}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(EDGE)
        .args(["workers", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[1].starts_with("here") && lines[1].contains(" 5 "),
        "{text}"
    );
    // A reload whose outpost cannot be set up is refused as a whole.
    std::fs::write(
        &cfg,
        format!(
            "{}[[outposts]]\nname = \"h\"\nkind = \"http\"\nurl = \"http://127.0.0.1:1\"\ntoken_file = \"/nonexistent/token\"\n",
            std::fs::read_to_string(&cfg).unwrap()
        ),
    )
    .unwrap();
    let out = Command::new(EDGE)
        .args(["reload", "--admin", &format!("127.0.0.1:{admin}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/token"), "{err}");
}

/// The first-token wait for one outpost: `n` runs one after the other.
async fn first_tokens(o: &std::sync::Arc<Orchestrator>, spec: &AgentSpec, n: usize) -> Vec<f64> {
    let mut waits = Vec::new();
    for i in 0..n {
        let conv = o.conversations().create("bench", &format!("b{i}")).unwrap();
        let t = std::time::Instant::now();
        let run = o.start("bench", &conv.id, "hi", spec, None).unwrap();
        let (missed, mut rx) = run.subscribe(0);
        let mut frames = missed.unwrap();
        let mut first = None;
        loop {
            if first.is_none()
                && frames.iter().any(|f| {
                    matches!(
                        f.body,
                        RunBody::Event {
                            event: edge_sandbox::Event::Delta { .. }
                        }
                    )
                })
            {
                first = Some(t.elapsed());
            }
            if frames.iter().any(|f| matches!(f.body, RunBody::End { .. })) {
                break;
            }
            frames.push(rx.recv().await.unwrap());
        }
        waits.push(first.expect("a token").as_secs_f64() * 1000.0);
    }
    waits
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Benchmark (`cargo test --release --test outposts -- --ignored --nocapture`): send → first
/// token with a local worker, an SSH worker and an HTTP worker (sandboxed all, on loopback),
/// interleaved; then the runs per second the orchestrator sustains with many fast agents, and
/// with four HTTP workers against a local outpost of capacity four.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark"]
async fn bench_first_token_local_vs_ssh_and_runs_per_second() {
    let dir = tempfile::tempdir().unwrap();
    let d = sshd(dir.path());
    let local = vec![EDGE.to_string(), "worker".into(), "--stdio".into()];
    let mk = |list: Vec<OutpostConfig>| {
        let o = Orchestrator::new(local.clone(), Conversations::new(dir.path().join("c")));
        o.set_outposts(edge_chat::outposts(&list, dir.path(), &local).unwrap());
        o
    };
    let via_local = mk(vec![OutpostConfig {
        name: "local".into(),
        kind: OutpostKind::Local,
        capacity: 1000,
    }]);
    let via_ssh = mk(vec![ssh("ssh", d.port, &d.client_key, &d.host_key)]);
    let token = dir.path().join("worker-token");
    std::fs::write(&token, "bench-token-0123456789abcdef").unwrap();
    let mut workers = Vec::new();
    for _ in 0..4 {
        workers.push(common::http_worker(&["--token-file", token.to_str().unwrap()], false).await);
    }
    let http_outposts: Vec<OutpostConfig> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| OutpostConfig {
            name: format!("http-{i}"),
            kind: OutpostKind::Http {
                url: w.url.clone(),
                token_file: Some(token.clone()),
                ca: None,
                client_cert: None,
            },
            capacity: 1,
        })
        .collect();
    let via_http = mk(http_outposts[..1].to_vec());
    // The same HTTP worker with a floor (what checking it costs a run).
    let floor = dir.path().join("floor.toml");
    std::fs::write(
        &floor,
        "require = [\"all\"]\nmemory = \"4GiB\"\npids = 4096\nwritable = [\"/tmp\"]\nhidden = [\"/etc/hostname\"]\n",
    )
    .unwrap();
    let floored = common::http_worker(
        &[
            "--token-file",
            token.to_str().unwrap(),
            "--floor",
            floor.to_str().unwrap(),
        ],
        false,
    )
    .await;
    let via_floor = mk(vec![OutpostConfig {
        name: "http-floor".into(),
        kind: OutpostKind::Http {
            url: floored.url.clone(),
            token_file: Some(token.clone()),
            ca: None,
            client_cert: None,
        },
        capacity: 1,
    }]);
    let via_http4 = mk(http_outposts.clone());
    let via_local4 = mk(vec![OutpostConfig {
        name: "local".into(),
        kind: OutpostKind::Local,
        capacity: 4,
    }]);
    let mut profile = edge_sandbox::Profile::default_named("bench");
    profile.home = Some(dir.path().join("agent-home"));
    let sandboxed = AgentSpec {
        agent: Agent::Command {
            argv: vec!["echo".into(), "{message}".into()],
        },
        workspace: "/tmp".into(),
        timeout: Duration::from_secs(30),
        permission_timeout: Duration::from_secs(300),
        sandbox: Some(edge_sandbox::Confine {
            home: dir.path().join("agent-home"),
            profile,
        }),
    };
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (mut l, mut s, mut h, mut f) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        l.extend(first_tokens(&via_local, &sandboxed, 10).await);
        s.extend(first_tokens(&via_ssh, &sandboxed, 10).await);
        h.extend(first_tokens(&via_http, &sandboxed, 10).await);
        f.extend(first_tokens(&via_floor, &sandboxed, 10).await);
    }
    println!(
        "send → first token, sandboxed, http worker with a floor: p50 {:.0} ms p90 {:.0} ms ({} runs)",
        pct(&mut f.clone(), 0.5),
        pct(&mut f, 0.9),
        f.len()
    );
    println!(
        "send → first token, sandboxed: local worker p50 {:.0} ms p90 {:.0} ms; ssh worker (loopback) p50 {:.0} ms p90 {:.0} ms; http worker (loopback) p50 {:.0} ms p90 {:.0} ms; {} runs each",
        pct(&mut l.clone(), 0.5),
        pct(&mut l, 0.9),
        pct(&mut s.clone(), 0.5),
        pct(&mut s, 0.9),
        pct(&mut h.clone(), 0.5),
        pct(&mut h, 0.9),
        s.len()
    );
    // Four at a time: a local outpost of capacity 4 against four HTTP workers, no sandbox.
    let fast = AgentSpec {
        sandbox: None,
        ..sandboxed.clone()
    };
    for round in 0..2 {
        for (label, o) in [
            ("local, capacity 4", &via_local4),
            ("4 http workers", &via_http4),
        ] {
            let (n, secs) = runs_per_second(o, &fast, 200, 4).await;
            println!("round {round}: runs per second, 4 at a time, no sandbox, {label}: {:.0} ({n} runs in {secs:.1} s)", n as f64 / secs);
        }
    }
    // Runs per second: 200 runs of a fast agent, 20 at a time, local outpost, no sandbox and
    // sandboxed.
    for (label, spec) in [
        ("no sandbox", fast.clone()),
        ("sandboxed", sandboxed.clone()),
    ] {
        let (n, secs) = runs_per_second(&via_local, &spec, 200, 20).await;
        println!(
            "runs per second, local outpost, 20 at a time, {label}: {:.0} ({n} runs in {secs:.1} s)",
            n as f64 / secs
        );
    }
}

/// `total` runs, `at_once` going at a time: (runs, seconds).
async fn runs_per_second(
    o: &std::sync::Arc<Orchestrator>,
    spec: &AgentSpec,
    total: usize,
    at_once: usize,
) -> (usize, f64) {
    let t = std::time::Instant::now();
    let mut done = 0;
    let mut going = Vec::new();
    let mut i = 0;
    while done < total {
        while going.len() < at_once && i < total {
            let conv = o_conv(o, i);
            let run = o.start("bench", &conv, "hi", spec, None).unwrap();
            going.push(run.subscribe(0));
            i += 1;
        }
        let (missed, mut rx) = going.remove(0);
        let mut frames = missed.unwrap();
        if !frames.iter().any(|f| matches!(f.body, RunBody::End { .. })) {
            frames.extend(until_end(&mut rx).await);
        }
        let end = frames.last().unwrap();
        assert!(
            matches!(
                end.body,
                RunBody::End {
                    outcome: edge_chat::Outcome::Ok,
                    ..
                }
            ),
            "{end:?}"
        );
        done += 1;
    }
    (total, t.elapsed().as_secs_f64())
}

fn o_conv(o: &std::sync::Arc<Orchestrator>, i: usize) -> String {
    o.conversations()
        .create("bench", &format!("r{i}"))
        .unwrap()
        .id
}

/// Tool permission questions over SSH: the answer travels down the same connection to the
/// agent's stdin (a `stdin` frame), allowed or denied.
#[tokio::test]
async fn permission_answers_reach_the_agent_over_ssh() {
    let dir = tempfile::tempdir().unwrap();
    let d = sshd(dir.path());
    let o = Orchestrator::new(Vec::new(), Conversations::new(dir.path().join("c")));
    o.set_outposts(
        edge_chat::outposts(
            &[ssh("good", d.port, &d.client_key, &d.host_key)],
            dir.path(),
            &[],
        )
        .unwrap(),
    );
    let ws = dir.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    let spec = common::ask_agent(&ws);
    let frames = common::run_answering(&o, "over ssh", &spec, true).await;
    assert_eq!(
        common::outcome(&frames).0,
        edge_chat::Outcome::Ok,
        "{frames:#?}"
    );
    assert!(
        common::delta_text(&frames).contains("wrote a.txt"),
        "{frames:#?}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("a.txt")).unwrap(),
        "over ssh\n"
    );
    assert_eq!(states(&frames).last().unwrap().1.as_deref(), Some("good"));
    std::fs::remove_file(ws.join("a.txt")).unwrap();
    let frames = common::run_answering(&o, "no", &spec, false).await;
    assert!(
        common::delta_text(&frames).contains("denied: tester denied this in the chat"),
        "{frames:#?}"
    );
    assert!(!ws.join("a.txt").exists());
}
