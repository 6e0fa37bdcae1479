//! `edge register` across two network namespaces the test makes: the edge here, the project
//! host in its own namespace behind a firewall that drops every inbound connection. The host
//! reaches the edge outbound only; its nginx is served through the session. The link between
//! them is cut and restored, and the host restarted: everything recovers by itself.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EDGE: &str = env!("CARGO_BIN_EXE_edge");

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {} (network namespaces need root and iproute2)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The project host: a network namespace joined to this one by a veth pair on a /30.
struct Host {
    ns: String,
    /// This side's interface (cut to cut the link) and address; the host's address.
    here: String,
    edge_addr: String,
    addr: String,
}

impl Host {
    fn new() -> Host {
        let tag = std::process::id() % 100_000;
        let ns = format!("edge-r{tag}");
        let (here, there) = (format!("vr{tag}h"), format!("vr{tag}w"));
        let net = format!("10.199.{}", tag % 250);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        let h = Host {
            ns: ns.clone(),
            here: here.clone(),
            edge_addr: format!("{net}.1"),
            addr: format!("{net}.2"),
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
        h
    }

    /// Drops every inbound connection into the host (replies to its own are let through).
    fn firewall(&self) {
        let rules = "table inet edge_test {\n chain input {\n  type filter hook input priority 0; policy drop;\n  iif lo accept\n  ct state established,related accept\n }\n}\n";
        let mut c = Command::new("ip")
            .args(["netns", "exec", &self.ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        c.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
        assert!(
            c.wait().unwrap().success(),
            "nft (apt-get install nftables)"
        );
    }

    fn spawn(&self, args: &[&str], log: &Path) -> std::process::Child {
        Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(args)
            .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    }

    /// Kills every process in the namespace whose command line contains `what`.
    fn kill(&self, what: &str) {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
            .unwrap();
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(what) {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill("");
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nginx_conf(dir: &Path, port: u16) -> PathBuf {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "nginx behind a firewall\n").unwrap();
    let d = dir.display();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/nginx-error.log error;\n\
             events {{ worker_connections 1024; }}\nhttp {{ access_log off; client_body_temp_path {d}/b; \
             proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
             server {{ listen 0.0.0.0:{port}; root {www}; }} }}\n",
            www = www.display()
        ),
    )
    .unwrap();
    conf
}

fn get(https: u16, ca: &Path) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca)
        .args([
            "--resolve",
            &format!("demo.example.test:{https}:127.0.0.1"),
            &format!("https://demo.example.test:{https}/forge/"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

async fn until(within: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "{what} after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

fn audit(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("state/register/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_behind_a_firewall_is_served_and_recovers_from_cuts_and_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let host = Host::new();
    let web = 8080;
    let hd = d.join("host");
    std::fs::create_dir_all(&hd).unwrap();
    let nginx_bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nginx is not installed");
    let conf = nginx_conf(&hd, web);
    let _nginx = Killed(host.spawn(
        &[
            nginx_bin,
            "-p",
            hd.to_str().unwrap(),
            "-c",
            conf.to_str().unwrap(),
        ],
        &hd.join("nginx.log"),
    ));
    host.firewall();
    // Nothing reaches the host from outside: not its nginx, not any port.
    std::thread::sleep(Duration::from_millis(300));
    let blocked = std::net::TcpStream::connect_timeout(
        &format!("{}:{web}", host.addr).parse().unwrap(),
        Duration::from_secs(2),
    );
    assert!(
        blocked.is_err(),
        "the host's nginx is reachable from outside"
    );

    let (https, register) = (common::free_port(), common::free_port());
    let cfg = d.join("edge.toml");
    std::fs::write(
        &cfg,
        format!(
            "domain = \"example.test\"\nstate_dir = \"state\"\n[listen]\nhttps = \"127.0.0.1:{https}\"\nhttp = \"\"\nadmin = \"\"\n\
             [register]\nlisten = \"{}:{register}\"\n[[projects]]\nname = \"main\"\n  [[projects.routes]]\n  mount = \"forge\"\n  upstream = \"http://127.0.0.1:9\"\n",
            host.edge_addr
        ),
    )
    .unwrap();
    let start_edge = |log: &str| {
        let k = Killed(
            Command::new(EDGE)
                .args(["up", "--config"])
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join(log)).unwrap())
                .spawn()
                .unwrap(),
        );
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", https)).is_ok() {
                return k;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("edge did not start");
    };
    let _edge = start_edge("edge.log");
    let ca = d.join("state/ca/example.test/ca.pem");
    let out = Command::new(EDGE)
        .args(["register", "token", "create", "demo", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let token = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();

    let state = hd.join("enrolment");
    let edge_at = format!("{}:{register}", host.edge_addr);
    let started = Instant::now();
    let _client = Killed(host.spawn(
        &[
            EDGE,
            "register",
            "demo",
            "--edge",
            &edge_at,
            "--token",
            &token,
            "--route",
            &format!("forge=http://127.0.0.1:{web}"),
            "--state",
            state.to_str().unwrap(),
        ],
        &hd.join("register.log"),
    ));
    until(
        Duration::from_secs(10),
        "not served through the session",
        || get(https, &ca).0 == 200,
    )
    .await;
    eprintln!("netns: edge register -> first 200: {:?}", started.elapsed());
    assert_eq!(get(https, &ca).1, "nginx behind a firewall\n");

    // The link is cut: within ~30 s the edge knows the host is gone (PINGs unanswered), and
    // says so; the link comes back: the host reconnects by itself.
    let cut = Instant::now();
    ip(&["link", "set", &host.here, "down"]);
    let noticed = until(
        Duration::from_secs(45),
        "the dead path was not noticed",
        || audit(d).iter().any(|e| e["event"] == "disconnect"),
    )
    .await;
    eprintln!("netns: link cut -> the edge notices: {noticed:?}");
    // Every session of the host (one per core) goes the same way.
    until(Duration::from_secs(10), "no offline page", || {
        let (code, body) = get(https, &ca);
        code == 502 && body.contains("is offline")
    })
    .await;
    ip(&["link", "set", &host.here, "up"]);
    let up = Instant::now();
    let back = until(
        Duration::from_secs(60),
        "no recovery after the link came back",
        || get(https, &ca).0 == 200,
    )
    .await;
    eprintln!(
        "netns: link up -> 200 again: {back:?} (cut for {:?})",
        up.duration_since(cut)
    );

    // The host restarts.
    host.kill("register demo");
    drop(_client);
    let _client = Killed(host.spawn(
        &[EDGE, "connect", "--state", state.to_str().unwrap()],
        &hd.join("connect.log"),
    ));
    let back = until(
        Duration::from_secs(20),
        "not back after the host restarted",
        || get(https, &ca).0 == 200,
    )
    .await;
    eprintln!("netns: host restart -> 200 again: {back:?}");
}
