//! Jupyter Server (the real one, from PyPI) behind edge with `app = "jupyter"`: a kernel started
//! through a gated `/jupyter/` runs code over its WebSocket channels, the WebSocket is refused
//! without a session, and `edge doctor` and `edge smoke` pass on it. Two Jupyters set up the ways
//! users get wrong (`base_url` left at `/`; `allow_remote_access` not set, so Jupyter refuses the
//! public host name) are named by `edge doctor`, with the setting to change, and fail `edge
//! smoke`.
//!
//! Jupyter Server is found at `$EDGE_TEST_JUPYTER` or `target/jupyter-venv/bin/jupyter-server`,
//! where `bash .ci/run` installs it (a Python venv with `jupyter-server` and `ipykernel`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Killed;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const EDGE: &str = env!("CARGO_BIN_EXE_edge");
const TOKEN: &str = "jupyter-test-token";

fn jupyter_bin() -> PathBuf {
    let p = std::env::var_os("EDGE_TEST_JUPYTER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/jupyter-venv/bin/jupyter-server")
        });
    assert!(
        p.exists(),
        "Jupyter Server is not installed at {}: `bash .ci/run` installs it (python3 -m venv target/jupyter-venv; pip install jupyter-server ipykernel)",
        p.display()
    );
    p
}

/// A Jupyter Server on a loopback port with `base_url`, its token [`TOKEN`], its state in
/// `dir/name`; `allow_remote` lets it answer for names other than localhost.
fn jupyter(dir: &Path, name: &str, base_url: &str, allow_remote: bool) -> (Killed, u16) {
    let home = dir.join(name);
    std::fs::create_dir_all(home.join("work")).unwrap();
    let port = common::free_port();
    let mut cmd = Command::new(jupyter_bin());
    cmd.args([
        "--no-browser",
        "--allow-root",
        "--ip=127.0.0.1",
        &format!("--port={port}"),
        "--port-retries=0",
        &format!("--ServerApp.base_url={base_url}"),
        &format!("--IdentityProvider.token={TOKEN}"),
    ])
    .arg(format!(
        "--ServerApp.root_dir={}",
        home.join("work").display()
    ))
    .env("HOME", &home)
    .env("JUPYTER_CONFIG_DIR", home.join("config"))
    .env("JUPYTER_DATA_DIR", home.join("data"))
    .env("JUPYTER_RUNTIME_DIR", home.join("runtime"))
    .env("IPYTHONDIR", home.join("ipython"))
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap());
    if allow_remote {
        cmd.arg("--ServerApp.allow_remote_access=True");
    }
    let child = Killed(cmd.spawn().unwrap());
    // Python starts slowly on a busy machine: up to 60 s.
    for _ in 0..600 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (child, port);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "Jupyter Server ({name}) did not start: {}",
        std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
    );
}

/// `curl` through the edge: status, headers and body.
fn curl(https: u16, ca: &Path, args: &[&str], path: &str) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-s", "-i", "--http1.1", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("demo.example.test:{https}:127.0.0.1")])
        .args(args)
        .arg(format!("https://demo.example.test:{https}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn edge_json(args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = Command::new(EDGE).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), v, text)
}

/// A Jupyter kernel message on the shell channel (the JSON form of the kernel WebSocket).
fn execute_request(id: &str, code: &str) -> String {
    serde_json::json!({
        "header": {"msg_id": id, "username": "edge-test", "session": "edge-test-session",
                   "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "buffers": [], "channel": "shell",
        "content": {"code": code, "silent": false, "store_history": false,
                    "user_expressions": {}, "allow_stdin": false, "stop_on_error": true}
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_runs_through_a_gated_mount_and_the_doctor_names_jupyters_own_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_good, good_port) = jupyter(d, "good", "/jupyter/", true);
    let (_root, root_port) = jupyter(d, "root", "/", true);
    let (_local, local_port) = jupyter(d, "local", "/jl/", false);
    let (https, admin, chat) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let cfg = d.join("edge.toml");
    std::fs::write(
        &cfg,
        format!(
            "domain = \"example.test\"\nstate_dir = \"state\"\n[listen]\nhttps = \"127.0.0.1:{https}\"\nhttp = \"\"\n\
             admin = \"127.0.0.1:{admin}\"\n[[projects]]\nname = \"demo\"\n\
               [[projects.routes]]\n  mount = \"jupyter\"\n  app = \"jupyter\"\n  upstream = \"http://127.0.0.1:{good_port}\"\n  auth = \"forward\"\n\
               [[projects.routes]]\n  mount = \"nb\"\n  app = \"jupyter\"\n  upstream = \"http://127.0.0.1:{root_port}\"\n\
               [[projects.routes]]\n  mount = \"jl\"\n  app = \"jupyter\"\n  upstream = \"http://127.0.0.1:{local_port}\"\n\
               [[projects.routes]]\n  mount = \"chat\"\n  upstream = \"chat\"\n  auth = \"forward\"\n\
             [chat]\nlisten = \"127.0.0.1:{chat}\"\nlogin = \"token\"\n"
        ),
    )
    .unwrap();
    // What to give Jupyter, before anything runs.
    let out = Command::new(EDGE)
        .args(["apps", "env", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let env = String::from_utf8_lossy(&out.stdout);
    assert!(
        env.contains("--ServerApp.base_url (c.ServerApp.base_url) = /jupyter/"),
        "{env}"
    );
    assert!(
        env.contains("--ServerApp.allow_remote_access (c.ServerApp.allow_remote_access) = True"),
        "{env}"
    );
    let _edge = Killed(
        Command::new(EDGE)
            .args(["up", "--config"])
            .arg(&cfg)
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("edge.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    common::wait_for("edge", || {
        std::net::TcpStream::connect(("127.0.0.1", https)).is_ok()
    });
    let ca = d.join("state/ca/example.test/ca.pem");
    let host = format!("demo.example.test:{https}");
    let own_origin = format!("https://{host}");

    // Without a session: pages go to the sign-in, the API is 401, no WebSocket opens.
    let (status, head, _) = curl(https, &ca, &["-H", "Sec-Fetch-Mode: navigate"], "/jupyter/");
    assert_eq!(status, 302, "{head}");
    assert!(
        head.contains(&format!(
            "location: https://{host}/chat/login?rd=%2Fjupyter%2F"
        )),
        "{head}"
    );
    let auth = format!("token {TOKEN}");
    match common::wss_at(
        https,
        &host,
        &ca,
        "/jupyter/api/events/subscribe",
        &[("origin", &own_origin), ("authorization", &auth)],
    )
    .await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        Err(e) => panic!("{e}"),
        Ok((_, s)) => panic!("a WebSocket without a session opened: {s}"),
    }

    // Signed in (edge's session) and with Jupyter's own token: a kernel starts, and code runs
    // in it over the kernel's WebSocket channels.
    let link = Command::new(EDGE)
        .args(["chat", "login-url", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout).trim().to_string();
    let path = &link[link.find("/chat/").expect("a login link")..];
    let (status, head, _) = curl(https, &ca, &[], path);
    assert_eq!(status, 302, "{head}");
    let cookie = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
                .map(|(_, v)| v.trim().split(';').next().unwrap().to_string())
        })
        .expect("a session cookie");
    let cookie_h = format!("Cookie: {cookie}");
    let auth_h = format!("Authorization: {auth}");
    let (status, _, body) = curl(
        https,
        &ca,
        &[
            "-H",
            &cookie_h,
            "-H",
            &auth_h,
            "-H",
            "Content-Type: application/json",
            "-H",
            &format!("Origin: {own_origin}"),
            "-X",
            "POST",
            "--data",
            "{\"name\":\"python3\"}",
        ],
        "/jupyter/api/kernels",
    );
    assert_eq!(status, 201, "{body}");
    let kernel: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = kernel["id"].as_str().unwrap().to_string();
    let (mut ws, status) = common::wss_at(
        https,
        &host,
        &ca,
        &format!("/jupyter/api/kernels/{id}/channels"),
        &[
            ("origin", &own_origin),
            ("cookie", &cookie),
            ("authorization", &auth),
        ],
    )
    .await
    .expect("the kernel's channels open through edge");
    assert_eq!(status, 101);
    ws.send(Message::text(execute_request("edge-1", "6 * 7")))
        .await
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(m) = ws.next().await {
            let Ok(Message::Text(t)) = m else { continue };
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if v["parent_header"]["msg_id"] == "edge-1" && v["msg_type"] == "execute_result" {
                return v["content"]["data"]["text/plain"]
                    .as_str()
                    .unwrap()
                    .to_string();
            }
        }
        panic!("the kernel's socket closed before the result");
    })
    .await
    .expect("the kernel answers within 60 s");
    assert_eq!(result, "42");
    // Signed in, from another site: refused before Jupyter sees it.
    match common::wss_at(
        https,
        &host,
        &ca,
        &format!("/jupyter/api/kernels/{id}/channels"),
        &[
            ("origin", "https://evil.example"),
            ("cookie", &cookie),
            ("authorization", &auth),
        ],
    )
    .await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        Err(e) => panic!("{e}"),
        Ok((_, s)) => panic!("a WebSocket from another site opened: {s}"),
    }
    ws.close(None).await.ok();

    // edge doctor: nothing wrong at /jupyter/ (seen signed in), and each mistake named with
    // the setting that fixes it.
    let cfg_s = cfg.to_str().unwrap();
    let cfg_s = cfg_s.to_string();
    let (code, r, text) =
        tokio::task::spawn_blocking(move || edge_json(&["doctor", "--json", "--config", &cfg_s]))
            .await
            .unwrap();
    assert_eq!(code, 1, "{text}");
    let about = |mount: &str| -> Vec<serde_json::Value> {
        r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["subject"].as_str().unwrap().ends_with(mount))
            .cloned()
            .collect()
    };
    let good = about("/jupyter/");
    assert!(
        good.iter().all(|f| f["severity"] == "info"),
        "/jupyter/: {good:?}\n{text}"
    );
    assert!(
        good.iter()
            .any(|f| f["what"] == "jupyter's base_url is \"/jupyter/\", as edge serves it"),
        "{text}"
    );
    // The doctor got past edge's sign-in: Jupyter itself answered the WebSocket handshake.
    assert!(
        good.iter().any(|f| f["what"].as_str().unwrap().starts_with(
            "a WebSocket at /jupyter/api/events/subscribe: the handshake reached the app"
        )),
        "{text}"
    );
    let nb = about("/nb/");
    assert!(
        nb.iter().any(|f| f["severity"] == "error"
            && f["fix"]
                .as_str()
                .is_some_and(|x| x.contains("--ServerApp.base_url (c.ServerApp.base_url) = /nb/"))),
        "/nb/: {nb:?}\n{text}"
    );
    let jl = about("/jl/");
    assert!(
        jl.iter().any(|f| f["severity"] == "error"
            && f["what"]
                .as_str()
                .unwrap()
                .starts_with("Jupyter answers 403")
            && f["fix"]
                .as_str()
                .is_some_and(|x| x.contains("--ServerApp.allow_remote_access=True"))),
        "/jl/: {jl:?}\n{text}"
    );

    // edge smoke: /jupyter/ passes, the two broken mounts fail.
    let cfg_s = cfg.to_str().unwrap().to_string();
    let (code, r, text) =
        tokio::task::spawn_blocking(move || edge_json(&["smoke", "--json", "--config", &cfg_s]))
            .await
            .unwrap();
    assert_eq!(code, 1, "{text}");
    let status = |check: &str, mount: &str| -> Vec<String> {
        r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["check"] == check && c["subject"].as_str().unwrap().ends_with(mount))
            .map(|c| c["status"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(status("mount", "/jupyter/"), ["pass"], "{text}");
    assert_eq!(status("mount", "/nb/"), ["fail"], "{text}");
    assert_eq!(status("mount", "/jl/"), ["fail"], "{text}");
}
