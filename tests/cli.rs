//! The `edge` binary end to end: `config check`, `up` with the embedded default, SIGTERM
//! drain, SIGHUP and `edge reload`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn edge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edge"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl")
}

struct Running(Child);
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// A one-thread upstream: answers every request with its request line, after `/slow` 1 s.
fn upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let first = line.trim().to_string();
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                    }
                    if first.contains("/slow") {
                        std::thread::sleep(Duration::from_millis(1000));
                    }
                    let body = format!("{first}\n");
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
        }
    });
    port
}

#[test]
fn config_check_reports_every_problem_with_its_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "routing = \"sideways\"\n[[projects]]\nname = \"demo\"\n  [[projects.routes]]\n  mount = \"forge\"\n  upstream = \"ftp://x\"\n  [[projects.routes]]\n  mount = \"ci\"\n  upstream = \"http://127.0.0.1:8000/ci\"\n  timeout = \"soon\"\n",
    )
    .unwrap();
    let out = edge().args(["config", "check"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "routing:",
        "projects[0].routes[0].upstream:",
        "projects[0].routes[1].upstream:",
        "projects[0].routes[1].timeout:",
    ] {
        assert!(err.contains(key), "missing {key} in {err}");
    }
    // Each with its place in the file.
    for at in [
        "(line 1, column 1)",
        "(line 6, column 3)",
        "(line 10, column 3)",
    ] {
        assert!(err.contains(at), "missing {at} in {err}");
    }
}

#[test]
fn config_check_looks_at_what_the_file_names_on_this_host() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A program installed under /tmp (as under ~/.local/bin) is brought back into runs, unless
    // the profile hides it.
    let hidden = d.join("bin/claude");
    std::fs::create_dir_all(hidden.parent().unwrap()).unwrap();
    std::fs::write(&hidden, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&hidden, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(d.join("site")).unwrap();
    let write = |name: &str, root: &str, command: &str, workspace: &str, log: &str| {
        let f = d.join(name);
        std::fs::write(
            &f,
            format!(
                "[[projects]]\nname = \"demo\"\n  [[projects.routes]]\n  mount = \"staging\"\n  root = \"{root}\"\n\
                 [chat]\n[chat.agent]\nkind = \"claude\"\ncommand = \"{command}\"\nworkspace = \"{workspace}\"\n\
                 [sandbox.profiles.default]\nhidden = [\"{hide}\"]\n[log]\naccess_file = \"{log}\"\n",
                hide = d.join("bin").display()
            ),
        )
        .unwrap();
        f
    };
    let bad = write(
        "bad.toml",
        "./nowhere",
        &hidden.display().to_string(),
        "./no-workspace",
        "./no-dir/access.log",
    );
    let out = edge().args(["config", "check"]).arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("4 problems on this host"), "{err}");
    assert!(
        err.contains("log.access_file: ")
            && err.contains("no-dir/access.log: its directory does not exist"),
        "{err}"
    );
    assert!(
        err.contains("projects[0].routes[0].root: ") && err.contains("nowhere"),
        "{err}"
    );
    assert!(
        err.contains("chat.agent.workspace: ") && err.contains("no-workspace"),
        "{err}"
    );
    assert!(
        err.contains("chat.agent.command: ")
            && err.contains(&format!(
                "runs need {}, which sandbox profile \"default\" hides",
                d.join("bin").display()
            )),
        "{err}"
    );
    let missing = write(
        "missing.toml",
        "./site",
        "no-such-agent-program",
        ".",
        "a.log",
    );
    let out = edge()
        .args(["config", "check"])
        .arg(&missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"no-such-agent-program\" is not an executable file on PATH"),
        "{err}"
    );
    // --file-only: the file alone passes.
    let out = edge()
        .args(["config", "check", "--file-only"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Everything present: ok.
    let good = write("good.toml", "./site", "/bin/sh", ".", "./access.log");
    let out = edge()
        .args(["config", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn config_check_accepts_every_example() {
    let examples: Vec<_> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
    assert!(!examples.is_empty(), "no examples found");
    for ex in &examples {
        // Examples are written for other hosts: their paths need not exist here.
        let out = edge()
            .args(["config", "check", "--file-only"])
            .arg(ex)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            ex.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = edge().args(["config", "default"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("name = \"demo\""));
}

#[test]
fn up_with_the_embedded_default_serves_demo_localhost_over_https() {
    // The embedded default's fixed ports: this is the README's first command.
    for p in [8443, 8080, 9090, 8787] {
        assert!(
            TcpListener::bind(("127.0.0.1", p)).is_ok(),
            "port {p} is taken; the embedded default needs it"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = edge()
        .arg("up")
        .current_dir(dir.path())
        .env_remove("EDGE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let printed = printed.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                printed.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
    }
    let running = Running(child);
    wait_port(8443);
    let ca = dir.path().join("state/ca/localhost/ca.pem");
    assert!(
        ca.exists(),
        "the local CA is created in the state directory"
    );
    let ca = ca.to_str().unwrap();
    let out = curl(&[
        "--cacert",
        ca,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "https://demo.localhost:8443/",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "302 https://demo.localhost:8443/forge/"
    );
    let out = curl(&[
        "--cacert",
        ca,
        "https://demo.localhost:8443/forge/",
        "-w",
        "\n%{http_code}",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("\n503") && text.contains("projects[0].routes[0].upstream"),
        "{text}"
    );
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "http://demo.localhost:8080/ci/x?y=1",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "308 https://demo.localhost:8443/ci/x?y=1"
    );
    // No SNI (dialling an IP): the default project's certificate, valid for demo.localhost.
    let out = curl(&[
        "--cacert",
        ca,
        "--connect-to",
        "demo.localhost:8443:127.0.0.1:8443",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "https://demo.localhost:8443/",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "302");
    let sni = Command::new("openssl")
        .args(["s_client", "-connect", "127.0.0.1:8443", "-noservername"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&sni.stdout);
    assert!(text.contains("demo.localhost"), "no-SNI handshake: {text}");

    // The chat signs its operator in with the one-time link edge printed.
    let mut link = None;
    for _ in 0..100 {
        link = printed
            .lock()
            .unwrap()
            .split_whitespace()
            .find(|w| w.contains("/chat/login/token?token="))
            .map(str::to_string);
        if link.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let link = link.expect("edge prints a one-time sign-in link");
    assert!(
        link.starts_with("https://demo.localhost:8443/chat/login/token?token="),
        "{link}"
    );
    let jar = dir.path().join("jar");
    let jar = jar.to_str().unwrap();
    let nav = "Sec-Fetch-Mode: navigate";
    let status = |args: &[&str]| {
        let mut a = vec![
            "--cacert",
            ca,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
        ];
        a.extend_from_slice(args);
        String::from_utf8_lossy(&curl(&a).stdout).into_owned()
    };
    assert_eq!(
        status(&["-H", nav, "https://demo.localhost:8443/chat/"]),
        "302 https://demo.localhost:8443/chat/login?rd=%2Fchat%2F"
    );
    assert_eq!(
        status(&["-c", jar, &link]),
        "302 https://demo.localhost:8443/chat/"
    );
    let me = curl(&[
        "--cacert",
        ca,
        "-b",
        jar,
        "https://demo.localhost:8443/chat/api/me",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&me.stdout),
        r#"{"user":"operator"}"#
    );
    assert_eq!(status(&[&link]), "401 ", "the link works once");
    // `edge chat login-url` writes a new link into the store the running edge uses.
    let login_url = |from: &Path| {
        let out = edge()
            .args(["chat", "login-url"])
            .current_dir(from)
            .env_remove("EDGE_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let out = login_url(dir.path());
    let second = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_ne!(second, link);
    assert_eq!(status(&[&second]), "302 https://demo.localhost:8443/chat/");
    // ...from any directory: the running edge makes the link, in its own store.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = login_url(elsewhere.path());
    let third = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(status(&[&third]), "302 https://demo.localhost:8443/chat/");
    assert!(
        !elsewhere.path().join("state").exists(),
        "nothing written elsewhere"
    );
    // The welcome page: the first run's mounts and what to run next.
    let out = curl(&["--cacert", ca, "https://demo.localhost:8443/staging/"]);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains("<title>edge is running</title>"), "{page}");
    assert!(
        page.contains("edge config default &gt; edge.toml"),
        "{page}"
    );

    drop(running);
    // With no edge running, the link goes into this directory's store, and the command says so.
    let out = login_url(elsewhere.path());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no edge answers on the admin listener 127.0.0.1:9090"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(elsewhere.path().join("state").exists());
    let printed = printed.lock().unwrap().clone();
    assert!(
        printed.contains("https://demo.localhost:8443/forge/"),
        "{printed}"
    );
    assert!(
        printed.contains("ca.pem"),
        "says how to trust the CA: {printed}"
    );
}

fn write_config(path: &Path, up: u16, ports: (u16, u16, u16), extra_mount: bool) {
    let extra = if extra_mount {
        format!(
            "  [[projects.routes]]\n  mount = \"extra\"\n  upstream = \"http://127.0.0.1:{up}\"\n"
        )
    } else {
        String::new()
    };
    std::fs::write(
        path,
        format!(
            "domain = \"example.test\"\n[listen]\nhttps = \"127.0.0.1:{}\"\nhttp = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\nhttp_redirect = false\n[limits]\nshutdown_grace = \"10s\"\n[[projects]]\nname = \"demo\"\n  [[projects.routes]]\n  mount = \"forge\"\n  upstream = \"http://127.0.0.1:{up}\"\n{extra}",
            ports.0, ports.1, ports.2
        ),
    )
    .unwrap();
}

fn get(port: u16, path: &str) -> (String, String) {
    let out = curl(&[
        "-H",
        "Host: demo.example.test",
        "-w",
        "\n%{http_code}",
        &format!("http://127.0.0.1:{port}{path}"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_string(), body.trim_end().to_string())
}

type Ports = (u16, u16, u16);

/// `edge up` with a config file (HTTPS, HTTP, admin on free ports) and a test upstream.
fn edge_with_config() -> (Running, tempfile::TempDir, std::path::PathBuf, u16, Ports) {
    let up = upstream();
    let dir = tempfile::tempdir().unwrap();
    let ports = (free_port(), free_port(), free_port());
    let cfg = dir.path().join("edge.toml");
    write_config(&cfg, up, ports, false);
    let child = edge()
        .args(["up", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("edge.log")).unwrap())
        .spawn()
        .unwrap();
    let running = Running(child);
    wait_port(ports.1);
    (running, dir, cfg, up, ports)
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_0() {
    let (mut edge, _dir, _cfg, _up, ports) = edge_with_config();
    let inflight = std::thread::spawn(move || get(ports.1, "/forge/slow"));
    std::thread::sleep(Duration::from_millis(300));
    signal(&edge.0, "-TERM");
    let (code, body) = inflight.join().unwrap();
    assert_eq!(
        (code.as_str(), body.as_str()),
        ("200", "GET /slow HTTP/1.1"),
        "the in-flight request finished"
    );
    let status = edge.0.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        TcpStream::connect(("127.0.0.1", ports.1)).is_err(),
        "no longer listening"
    );
}

#[test]
fn sighup_and_edge_reload_reread_the_config_and_a_bad_one_is_refused() {
    let (edge_proc, _dir, cfg, up, ports) = edge_with_config();
    assert_eq!(get(ports.1, "/extra/x").0, "404");

    write_config(&cfg, up, ports, true);
    let out = edge()
        .args(["reload", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        get(ports.1, "/extra/x"),
        ("200".into(), "GET /x HTTP/1.1".into())
    );

    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("mount = \"extra\"", "mount = \"Extra!\""),
    )
    .unwrap();
    let out = edge()
        .args(["reload", "--admin", &format!("127.0.0.1:{}", ports.2)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("projects[0].routes[1].mount"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get(ports.1, "/extra/x").0, "200", "the old config stays");
    // The refusal is in edge's own log too, with the key.
    let log = std::fs::read_to_string(cfg.with_file_name("edge.log")).unwrap();
    let refused = log.find("POST /reload refused").expect(&log);
    assert!(
        log[refused..].contains("projects[0].routes[1].mount"),
        "{log}"
    );

    write_config(&cfg, up, ports, false);
    signal(&edge_proc.0, "-HUP");
    let start = Instant::now();
    while get(ports.1, "/extra/x").0 != "404" {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "SIGHUP did not reload"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigusr1_reopens_the_access_log_for_logrotate_and_sigterm_writes_what_is_pending() {
    let up = upstream();
    let dir = tempfile::tempdir().unwrap();
    let ports = (free_port(), free_port(), free_port());
    let cfg = dir.path().join("edge.toml");
    write_config(&cfg, up, ports, false);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("[log]\naccess_file = \"access.log\"\n");
    std::fs::write(&cfg, text).unwrap();
    let mut edge_proc = Running(
        edge()
            .args(["up", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("edge.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_port(ports.1);
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    assert_eq!(get(ports.1, "/forge/one?token=SECRET").0, "200");
    // logrotate: move the file, then signal; edge creates the file anew.
    std::fs::rename(&log, &rotated).unwrap();
    signal(&edge_proc.0, "-USR1");
    let start = Instant::now();
    while !log.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "SIGUSR1 did not reopen the access log"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(ports.1, "/forge/two").0, "200");
    // Stopped right away: the pending line is written before edge exits.
    signal(&edge_proc.0, "-TERM");
    assert_eq!(edge_proc.0.wait().unwrap().code(), Some(0));
    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = std::fs::read_to_string(&log).unwrap();
    assert!(
        old.contains("path=/forge/one ") && !old.contains("/forge/two"),
        "{old}"
    );
    assert!(!old.contains("SECRET"), "no query strings: {old}");
    assert!(
        new.contains("path=/forge/two ") && !new.contains("/forge/one"),
        "{new}"
    );
    let stderr = std::fs::read_to_string(dir.path().join("edge.log")).unwrap();
    assert!(
        !stderr.contains("edge::access"),
        "with a file, access lines stay out of stderr: {stderr}"
    );
}

#[test]
fn edge_trust_installs_and_removes_the_local_ca_in_a_throwaway_store_and_nss_db() {
    let t = tempfile::tempdir().unwrap();
    let (state, ca_dir, nss) = (
        t.path().join("state"),
        t.path().join("cas"),
        t.path().join("nss"),
    );
    std::fs::create_dir_all(&nss).unwrap();
    let st = Command::new("certutil")
        .args(["-N", "--empty-password", "-d"])
        .arg(format!("sql:{}", nss.display()))
        .status()
        .expect("certutil (libnss3-tools; bash .ci/run installs it)");
    assert!(st.success());
    let trust = |remove: bool| {
        let mut c = edge();
        c.arg("trust")
            .arg("--state-dir")
            .arg(&state)
            .arg("--ca-dir")
            .arg(&ca_dir);
        c.arg("--nss-db").arg(&nss);
        if remove {
            c.arg("--remove");
        }
        c.output().unwrap()
    };
    let listed = || {
        let out = Command::new("certutil")
            .args(["-L", "-d"])
            .arg(format!("sql:{}", nss.display()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = trust(false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("A new local CA was created"), "{text}");
    let ca = std::fs::read_to_string(state.join("ca/localhost/ca.pem")).unwrap();
    assert_eq!(
        std::fs::read_to_string(ca_dir.join("edge-localhost.crt")).unwrap(),
        ca
    );
    let l = listed();
    assert!(
        l.contains("edge local CA (localhost)") && l.contains("C,,"),
        "{l}"
    );
    // Again: the same CA, no second entry, no "new CA" warning.
    let out = trust(false);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("new local CA"));
    assert_eq!(listed().matches("edge local CA (localhost)").count(), 1);
    let out = trust(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!ca_dir.join("edge-localhost.crt").exists());
    assert!(!listed().contains("edge local CA"), "{}", listed());
}
