//! `edge smoke` against live edges: a correct deployment passes; one whose apps make the known
//! subpath mistakes (links without the prefix, a `Location` to the upstream's own address, a
//! redirect loop, an upstream that is down, an admin listener on every interface) fails, and
//! each check names what it saw and the fix. nginx plays the apps.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

const EDGE: &str = env!("CARGO_BIN_EXE_edge");

use common::Killed;

fn wait_port(port: u16, what: &str) {
    common::wait_for(what, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// nginx as the apps: `/good/` a page whose scripts, styles and images are under `/good/`;
/// `/links/` a page that links its script without the prefix; `/internal/` a redirect to its
/// own loopback address; `/loop/` a redirect loop; `/downgrade/` a redirect to plain HTTP (an
/// app that does not know it is behind TLS); `/staging/` a preview that sets a cookie.
fn nginx(dir: &Path) -> (Killed, u16) {
    let www = dir.join("www");
    for d in [
        "good", "links", "staging", "cookie", "css", "fj", "wp", "bundle",
    ] {
        std::fs::create_dir_all(www.join(d)).unwrap();
    }
    std::fs::write(
        www.join("good/index.html"),
        "<!doctype html><html><head><title>Good app</title>\
         <link rel=\"stylesheet\" href=\"/good/app.css\"><script src=\"app.js\"></script></head>\
         <body><img src=\"/good/logo.svg\"><a href=\"/good/other/\">not loaded</a></body></html>",
    )
    .unwrap();
    for f in ["app.css", "app.js", "logo.svg"] {
        std::fs::write(www.join("good").join(f), "/* ok */").unwrap();
    }
    std::fs::write(
        www.join("links/index.html"),
        "<!doctype html><html><head><title>Links app</title><script src=\"/assets/app.js\"></script>\
         <link rel=\"stylesheet\" href=\"/links/app.css\"></head><body></body></html>",
    )
    .unwrap();
    std::fs::write(www.join("links/app.css"), "/* ok */").unwrap();
    std::fs::write(
        www.join("cookie/index.html"),
        "<!doctype html><title>Cookie app</title><p>sets a cookie for the whole host</p>",
    )
    .unwrap();
    std::fs::write(
        www.join("css/index.html"),
        "<!doctype html><title>CSS app</title><link rel=\"stylesheet\" href=\"style.css\">",
    )
    .unwrap();
    std::fs::write(
        www.join("css/style.css"),
        "body{background:url(/img/bg.png)}",
    )
    .unwrap();
    std::fs::write(
        www.join("fj/index.html"),
        "<!doctype html><title>Forgejo</title><script>window.config = {appUrl: 'http://127.0.0.1:3000/', appSubUrl: ''};</script>",
    )
    .unwrap();
    // A bundle that calls its API at the address it was built for.
    std::fs::write(
        www.join("bundle/index.html"),
        "<!doctype html><title>Bundle</title><script src=\"app.js\"></script>",
    )
    .unwrap();
    // Woodpecker started without the path in WOODPECKER_HOST: its config script says root "".
    std::fs::write(
        www.join("wp/index.html"),
        "<!doctype html><title>Woodpecker</title><script src=\"/wp/web-config.js\"></script>",
    )
    .unwrap();
    std::fs::write(
        www.join("wp/web-config.js"),
        "window.WOODPECKER_VERSION = \"3.0.0\";\nwindow.WOODPECKER_ROOT_PATH = \"\";\n",
    )
    .unwrap();
    std::fs::write(
        www.join("staging/index.html"),
        "<!doctype html><title>Preview</title><p>a preview build</p>",
    )
    .unwrap();
    let port = common::free_port();
    std::fs::write(
        www.join("bundle/app.js"),
        format!("const api = 'http://127.0.0.1:{port}/api';"),
    )
    .unwrap();
    let http = format!(
        "types {{ text/html html; text/css css; application/javascript js; image/svg+xml svg; }}\n\
             server {{ listen 127.0.0.1:{port}; root {www}; absolute_redirect off;\n\
               location /internal/ {{ return 302 http://127.0.0.1:{port}/internal/login; }}\n\
               location = /loop/ {{ return 302 /loop/again/; }}\n\
               location = /loop/again/ {{ return 302 /loop/; }}\n\
               location = /downgrade/ {{ return 302 http://$host/downgrade/in; }}\n\
               location /cookie/ {{ add_header Set-Cookie \"sid=1; Path=/; HttpOnly\"; }}\n\
               location /raw/ {{ default_type text/plain; return 200 \"$request_uri\"; }}\n\
               location /dec/ {{ proxy_pass http://127.0.0.1:{port}/raw/; }}\n\
               location = /wp/api/stream/events {{ default_type text/event-stream; gzip on; gzip_types text/event-stream; gzip_min_length 0; return 200 \"data: hello\\n\\n\"; }}\n\
               location /staging/ {{ add_header Set-Cookie \"tracker=1; Path=/\"; }}\n\
             }}",
        www = www.display()
    );
    (common::nginx(dir, port, &http), port)
}

/// An app whose clock is an hour behind: a loopback server answering every request (up to 64
/// connections) with a page dated an hour ago.
fn skewed_app() -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().take(64) {
            let Ok(mut c) = c else { continue };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let date = httpdate::fmt_http_date(
                std::time::SystemTime::now() - std::time::Duration::from_secs(3600),
            );
            let body = "<!doctype html><title>Late app</title><p>an hour behind</p>";
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nDate: {date}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

struct Edge {
    cfg: std::path::PathBuf,
    https: u16,
    _child: Killed,
}

/// An edge on free ports with `routes` (TOML of `[[projects.routes]]` tables) and a chat.
fn edge(dir: &Path, name: &str, routes: &str, admin_ip: &str) -> Edge {
    let (https, http, admin, chat) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "domain = \"example.test\"\nstate_dir = \"state-{name}\"\n[listen]\nhttps = \"127.0.0.1:{https}\"\n\
             http = \"127.0.0.1:{http}\"\nadmin = \"{admin_ip}:{admin}\"\n[[projects]]\nname = \"demo\"\n{routes}\
             [chat]\nlisten = \"127.0.0.1:{chat}\"\nlogin = \"token\"\n"
        ),
    )
    .unwrap();
    let child = Killed(
        Command::new(EDGE)
            .args(["up", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_port(https, "edge");
    wait_port(chat, "the chat");
    Edge {
        cfg,
        https,
        _child: child,
    }
}

/// `edge ARGS...` whose stdout is JSON: (exit code, the JSON, stdout and stderr).
fn edge_json(args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = Command::new(EDGE).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.code().unwrap_or(-1),
        v,
        format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

fn smoke(args: &[&str]) -> (i32, serde_json::Value, String) {
    edge_json(&[&["smoke"], args].concat())
}

/// The checks named `check` whose subject ends with `subject`.
fn find<'a>(r: &'a serde_json::Value, check: &str, subject: &str) -> Vec<&'a serde_json::Value> {
    r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["check"] == check && c["subject"].as_str().unwrap().ends_with(subject))
        .collect()
}

#[test]
fn a_correct_deployment_passes_and_a_broken_one_fails_naming_each_mistake() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_nginx, app) = nginx(d);
    let good = edge(
        d,
        "good",
        &format!(
            "  [[projects.routes]]\n  mount = \"good\"\n  upstream = \"http://127.0.0.1:{app}\"\n  prefix = \"keep\"\n\
               [[projects.routes]]\n  mount = \"staging\"\n  upstream = \"http://127.0.0.1:{app}\"\n  prefix = \"keep\"\n\
               [[projects.routes]]\n  mount = \"chat\"\n  upstream = \"chat\"\n  auth = \"forward\"\n"
        ),
        "127.0.0.1",
    );
    let (code, r, text) = smoke(&["--config", good.cfg.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(r["ok"], true, "{text}");
    assert_eq!(r["failed"], 0, "{text}");
    let assets = find(&r, "assets", "/good/");
    assert_eq!(assets.len(), 1, "{text}");
    assert_eq!(
        assets[0]["saw"], "3 scripts, styles and images load",
        "{text}"
    );
    assert_eq!(find(&r, "root", "/")[0]["status"], "pass", "{text}");
    let staging = find(&r, "staging", "/staging/");
    assert_eq!(staging[0]["status"], "pass", "{text}");
    assert!(
        staging[0]["saw"].as_str().unwrap().contains("sandbox"),
        "{text}"
    );
    let ws = find(&r, "chat-websocket", "/chat/ws");
    assert_eq!(ws.len(), 2, "{text}");
    assert!(ws.iter().all(|c| c["status"] == "pass"), "{text}");
    assert!(ws[0]["saw"].as_str().unwrap().contains("101"), "{text}");
    let gate = find(&r, "auth-gate", "/chat/api/me");
    assert_eq!(gate[0]["saw"], "a fetch without a session: 401", "{text}");
    assert_eq!(
        find(&r, "tls", "demo.example.test")[0]["status"],
        "pass",
        "{text}"
    );
    assert_eq!(
        find(&r, "http-redirect", "/")[0]["status"],
        "pass",
        "{text}"
    );

    // The same deployment seen from a URL alone: the mounts come from edge's 404 page.
    let ca = d.join("state-good/ca/example.test/ca.pem");
    let (code, r, text) = smoke(&[
        "--url",
        "https://demo.example.test/",
        "--cacert",
        ca.to_str().unwrap(),
        "--connect",
        &format!("127.0.0.1:{}", good.https),
        "--json",
    ]);
    assert_eq!(code, 0, "{text}");
    let mounts: Vec<&str> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["check"] == "mount")
        .map(|c| c["subject"].as_str().unwrap())
        .collect();
    assert_eq!(
        mounts,
        [
            "https://demo.example.test/good/",
            "https://demo.example.test/staging/",
            "https://demo.example.test/chat/"
        ],
        "{text}"
    );
    assert_eq!(
        find(&r, "chat-websocket", "/chat/ws")[0]["status"],
        "skip",
        "{text}"
    );
    drop(good);

    // The broken one.
    let bad = edge(
        d,
        "bad",
        &format!(
            "  [[projects.routes]]\n  mount = \"links\"\n  upstream = \"http://127.0.0.1:{app}\"\n  prefix = \"keep\"\n\
               [[projects.routes]]\n  mount = \"internal\"\n  upstream = \"http://127.0.0.1:{app}\"\n  prefix = \"keep\"\n\
               [[projects.routes]]\n  mount = \"loop\"\n  upstream = \"http://127.0.0.1:{app}\"\n  prefix = \"keep\"\n\
               [[projects.routes]]\n  mount = \"downgrade\"\n  upstream = \"http://127.0.0.1:{app}\"\n  prefix = \"keep\"\n\
               [[projects.routes]]\n  mount = \"down\"\n  upstream = \"http://127.0.0.1:9\"\n"
        ),
        "0.0.0.0",
    );
    let (code, r, text) = smoke(&["--config", bad.cfg.to_str().unwrap(), "--json"]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(r["ok"], false, "{text}");
    let links = find(&r, "assets", "/links/");
    assert_eq!(links[0]["status"], "fail", "{text}");
    assert_eq!(
        links[0]["saw"], "1 of 2 do not load: /assets/app.js (404)",
        "{text}"
    );
    assert!(
        links[0]["fix"]
            .as_str()
            .unwrap()
            .contains("links /assets/app.js outside its mount /links/"),
        "{text}"
    );
    let internal = find(&r, "mount", "/internal/");
    assert_eq!(internal[0]["status"], "fail", "{text}");
    assert!(
        internal[0]["saw"]
            .as_str()
            .unwrap()
            .contains("the upstream's own address"),
        "{text}"
    );
    let looped = find(&r, "mount", "/loop/");
    assert_eq!(looped[0]["status"], "fail", "{text}");
    assert_eq!(
        looped[0]["saw"], "redirect loop: /loop/ (302) -> /loop/again/ (302) -> /loop/ (0)",
        "{text}"
    );
    let downgrade = find(&r, "mount", "/downgrade/");
    assert_eq!(downgrade[0]["status"], "fail", "{text}");
    assert_eq!(
        downgrade[0]["saw"],
        "/downgrade/ redirects to http://demo.example.test/downgrade/in: plain HTTP",
        "{text}"
    );
    let down = find(&r, "mount", "/down/");
    assert_eq!(down[0]["status"], "fail", "{text}");
    assert!(
        down[0]["fix"]
            .as_str()
            .unwrap()
            .contains("nothing answers at http://127.0.0.1:9"),
        "{text}"
    );
    let admin: Vec<_> = find(&r, "admin", "")
        .into_iter()
        .filter(|c| c["status"] == "warn")
        .collect();
    assert_eq!(admin.len(), 1, "{text}");
    assert!(
        admin[0]["saw"].as_str().unwrap().contains("0.0.0.0"),
        "{text}"
    );
    // The terminal report names the failures too.
    let (code, _, human) = smoke(&["--config", bad.cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(human.contains("FAIL  mount"), "{human}");
    let failed = r["failed"].as_u64().unwrap();
    assert!(failed >= 4, "{text}");
    assert!(human.contains(&format!(", {failed} failed,")), "{human}");
}

fn curl(e: &Edge, dir: &Path, name: &str, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}", "--cacert"])
        .arg(dir.join(format!("state-{name}/ca/example.test/ca.pem")))
        .args([
            "--resolve",
            &format!("demo.example.test:{}:127.0.0.1", e.https),
            &format!("https://demo.example.test:{}{path}", e.https),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `edge smoke --url` against an edge in subdomain routing: the project's address lists the
/// mounts, each found at its own host name, and checked there.
#[test]
fn smoke_from_a_url_alone_finds_the_mounts_of_subdomain_routing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_nginx, app) = nginx(d);
    let (https, admin) = (common::free_port(), common::free_port());
    let cfg = d.join("sub.toml");
    std::fs::write(
        &cfg,
        format!(
            "domain = \"example.test\"\nrouting = \"subdomain\"\nstate_dir = \"state\"\n[listen]\nhttps = \"127.0.0.1:{https}\"\n\
             http = \"\"\nadmin = \"127.0.0.1:{admin}\"\n[[projects]]\nname = \"demo\"\n\
               [[projects.routes]]\n  mount = \"good\"\n  upstream = \"http://127.0.0.1:{app}\"\n\
               [[projects.routes]]\n  mount = \"links\"\n  upstream = \"http://127.0.0.1:{app}\"\n"
        ),
    )
    .unwrap();
    let _edge = Killed(
        Command::new(EDGE)
            .args(["up", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("sub.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_port(https, "edge");
    let ca = d.join("state/ca/example.test/ca.pem");
    let (_, r, text) = smoke(&[
        "--url",
        "https://demo.example.test/",
        "--cacert",
        ca.to_str().unwrap(),
        "--connect",
        &format!("127.0.0.1:{https}"),
        "--json",
    ]);
    // (nginx has no page at its root: the mounts answer 403, which is the app's.)
    let mounts: Vec<(&str, &str)> = r["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("{text}"))
        .iter()
        .filter(|c| c["check"] == "mount")
        .map(|c| (c["subject"].as_str().unwrap(), c["saw"].as_str().unwrap()))
        .collect();
    assert_eq!(
        mounts,
        [
            (
                "https://good.demo.example.test/",
                "/ (403) \"403 Forbidden\""
            ),
            (
                "https://links.demo.example.test/",
                "/ (403) \"403 Forbidden\""
            )
        ],
        "{text}"
    );
    // Each host's certificate was checked (the wildcard covers them).
    assert_eq!(
        find(&r, "tls", "good.demo.example.test")[0]["status"],
        "pass",
        "{text}"
    );
}

#[test]
fn the_welcome_page_lists_the_mounts_and_unset_mounts_say_how_to_set_them() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let e = edge(
        d,
        "first",
        "  [[projects.routes]]\n  mount = \"forge\"\n\
           [[projects.routes]]\n  mount = \"staging\"\n  upstream = \"welcome\"\n\
           [[projects.routes]]\n  mount = \"chat\"\n  upstream = \"chat\"\n  auth = \"forward\"\n",
        "127.0.0.1",
    );
    let file = e.cfg.display().to_string();
    let (code, page) = curl(&e, d, "first", "/staging/");
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("<title>edge is running</title>"), "{page}");
    assert!(
        page.contains("<a href=\"/forge/\">/forge/</a> — <b>not pointed anywhere yet</b>"),
        "{page}"
    );
    assert!(
        page.contains("/chat/</a> — the agent chat edge runs"),
        "{page}"
    );
    assert!(
        page.contains(&format!("edge reload --config {file}")),
        "{page}"
    );
    assert!(page.contains("cargo install --path ."), "{page}");
    let (code, page) = curl(&e, d, "first", "/forge/");
    assert_eq!(code, 503, "{page}");
    assert!(
        page.contains("Set <code>projects[0].routes[0].upstream</code>"),
        "{page}"
    );
    assert!(
        page.contains(&format!("edge reload --config {file}")),
        "{page}"
    );
    assert!(
        page.contains("<a href=\"/staging/\">/staging/</a> shows every mount"),
        "{page}"
    );
    // The smoke run: the welcome page passes as staging (sandboxed, no cookies), the unset
    // mount is a warning, nothing fails.
    let (code, r, text) = smoke(&["--config", &file, "--json"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        find(&r, "staging", "/staging/")[0]["status"],
        "pass",
        "{text}"
    );
    assert_eq!(find(&r, "mount", "/forge/")[0]["status"], "warn", "{text}");
}

fn doctor(cfg: &Path) -> (i32, serde_json::Value, String) {
    edge_json(&["doctor", "--json", "--config", cfg.to_str().unwrap()])
}

/// The findings about the mount whose URL ends with `mount`.
fn about<'a>(r: &'a serde_json::Value, mount: &str) -> Vec<&'a serde_json::Value> {
    r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["subject"].as_str().unwrap().ends_with(mount))
        .collect()
}

#[test]
fn doctor_names_each_subpath_mistake_and_nothing_on_a_correct_setup() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_nginx, app) = nginx(d);
    let good = edge(
        d,
        "good",
        &format!(
            "  [[projects.routes]]\n  mount = \"good\"\n  upstream = \"http://127.0.0.1:{app}\"\n  prefix = \"keep\"\n\
               [[projects.routes]]\n  mount = \"staging\"\n  upstream = \"http://127.0.0.1:{app}\"\n  prefix = \"keep\"\n\
               [[projects.routes]]\n  mount = \"raw\"\n  upstream = \"http://127.0.0.1:{app}\"\n  prefix = \"keep\"\n"
        ),
        "127.0.0.1",
    );
    let (code, r, text) = doctor(&good.cfg);
    assert_eq!(code, 0, "{text}");
    assert_eq!(r["errors"], 0, "{text}");
    // Nothing about the mounts (the test domain does not resolve here: that is the edge's).
    assert!(about(&r, "/good/").is_empty(), "{text}");
    assert!(about(&r, "/staging/").is_empty(), "{text}");
    // An app that shows the path it got: %2F arrived as sent.
    let raw = about(&r, "/raw/");
    assert!(
        raw.iter().all(|f| f["severity"] == "info")
            && raw
                .iter()
                .any(|f| f["what"] == "%2F and %25 reach the app as sent"),
        "{text}"
    );
    drop(good);
    let late = skewed_app();

    let bad = edge(
        d,
        "bad",
        &format!(
            "  [[projects.routes]]\n  mount = \"links\"\n  upstream = \"http://127.0.0.1:{app}\"\n  prefix = \"keep\"\n\
               [[projects.routes]]\n  mount = \"internal\"\n  upstream = \"http://127.0.0.1:{app}\"\n  prefix = \"keep\"\n\
               [[projects.routes]]\n  mount = \"loop\"\n  upstream = \"http://127.0.0.1:{app}\"\n  prefix = \"keep\"\n\
               [[projects.routes]]\n  mount = \"cookie\"\n  upstream = \"http://127.0.0.1:{app}\"\n  prefix = \"keep\"\n\
               [[projects.routes]]\n  mount = \"css\"\n  upstream = \"http://127.0.0.1:{app}\"\n  prefix = \"keep\"\n\
               [[projects.routes]]\n  mount = \"fj\"\n  app = \"forgejo\"\n  upstream = \"http://127.0.0.1:{app}\"\n  prefix = \"keep\"\n\
               [[projects.routes]]\n  mount = \"dec\"\n  upstream = \"http://127.0.0.1:{app}\"\n  prefix = \"keep\"\n\
               [[projects.routes]]\n  mount = \"bundle\"\n  upstream = \"http://127.0.0.1:{app}\"\n  prefix = \"keep\"\n\
               [[projects.routes]]\n  mount = \"gone\"\n  upstream = \"http://127.0.0.1:{app}\"\n  prefix = \"keep\"\n\
               [[projects.routes]]\n  mount = \"wp\"\n  app = \"woodpecker\"\n  upstream = \"http://127.0.0.1:{app}\"\n\
               [[projects.routes]]\n  mount = \"late\"\n  upstream = \"http://127.0.0.1:{late}\"\n"
        ),
        "127.0.0.1",
    );
    let (code, r, text) = doctor(&bad.cfg);
    assert_eq!(code, 1, "{text}");
    let one = |mount: &str, severity: &str, says: &str| {
        let f = about(&r, mount);
        assert!(
            f.iter()
                .any(|f| f["severity"] == severity && f["what"].as_str().unwrap().contains(says)),
            "{mount}: {severity} {says:?} in\n{text}"
        );
    };
    one(
        "/links/",
        "error",
        "the page links /assets/app.js outside /links/",
    );
    one("/internal/", "error", "the upstream's own address");
    one("/loop/", "error", "redirect loop");
    one("/cookie/", "warning", "the cookie sid is set for Path=/");
    one(
        "/css/",
        "error",
        "/css/style.css uses /img/bg.png outside /css/",
    );
    one(
        "/fj/",
        "error",
        "forgejo's appUrl is \"http://127.0.0.1:3000/\"",
    );
    // A proxy between edge and the app that decodes the path (nginx's proxy_pass with a URI).
    one("/dec/", "error", "reaches the app decoded");
    // An app that serves nothing under the mount (nginx's own 404).
    one("/gone/", "error", "the app answers 404 at /gone/");
    one(
        "/bundle/",
        "error",
        &format!("the page names the upstream's own address: 127.0.0.1:{app} (in /bundle/app.js)"),
    );
    // Woodpecker told its host without the path; its event stream compressed.
    one("/wp/", "error", "woodpecker's root path is \"\"");
    assert!(
        about(&r, "/wp/")
            .iter()
            .any(|f| f["fix"].as_str().is_some_and(|x| x.ends_with(&format!(
                "WOODPECKER_HOST to https://demo.example.test:{}/wp",
                bad.https
            )))),
        "{text}"
    );
    one(
        "/wp/",
        "error",
        "an event stream at /wp/api/stream/events: compressed (gzip)",
    );
    // (3599 to 3601 s, as the seconds fall.)
    one("/late/", "warning", "the app's clock is 3");
    one("/late/", "warning", " s behind this host's");
    let fj = about(&r, "/fj/");
    assert!(
        fj.iter()
            .any(|f| f["fix"].as_str().is_some_and(|x| x.contains("ROOT_URL"))),
        "{text}"
    );
}

#[test]
fn doctor_without_a_running_edge_checks_the_host_and_says_the_mounts_were_not_examined() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (https, admin) = (common::free_port(), common::free_port());
    let cfg = d.join("edge.toml");
    std::fs::write(
        &cfg,
        format!(
            "domain = \"example.test\"\nstate_dir = \"state\"\n[listen]\nhttps = \"127.0.0.1:{https}\"\nhttp = \"\"\n\
             admin = \"127.0.0.1:{admin}\"\n[[projects]]\nname = \"demo\"\n  [[projects.routes]]\n  mount = \"forge\"\n\
             [chat]\nlogin = \"token\"\n[chat.agent]\nkind = \"command\"\ncommand = [\"/bin/echo\", \"{{message}}\"]\nworkspace = \".\"\n"
        ),
    )
    .unwrap();
    let (code, r, text) = doctor(&cfg);
    assert_eq!(code, 0, "{text}");
    let what: Vec<&str> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["what"].as_str().unwrap())
        .collect();
    assert!(
        what.contains(&"edge sandbox verify: every required layer holds"),
        "{text}"
    );
    assert!(
        what.contains(
            &"the edge is not answering on its HTTPS listener: the mounts were not examined"
        ),
        "{text}"
    );
    // A listener whose port another program holds is an error.
    let _held = std::net::TcpListener::bind(("127.0.0.1", https)).unwrap();
    let (code, r, text) = doctor(&cfg);
    assert_eq!(code, 1, "{text}");
    assert!(
        r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["severity"] == "error"
                && f["what"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("listen.https 127.0.0.1:{https} cannot be bound"))),
        "{text}"
    );
}

/// The first-run pages as a browser shows them (Debian's chromium, headless): the welcome page
/// and an unset mount's page, at desktop and phone sizes, load without console errors (a CSP
/// violation is one), fit the screen, and link nowhere that is missing. The screenshots are
/// kept in `target/screenshots/first-run/` for a person to look at.
#[test]
fn the_first_run_pages_in_a_browser_at_desktop_and_phone_sizes() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's chromium (bash .ci/run does) or set CHROMIUM"
    );
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let e = edge(
        d,
        "first",
        "  [[projects.routes]]\n  mount = \"forge\"\n\
           [[projects.routes]]\n  mount = \"staging\"\n  upstream = \"welcome\"\n\
           [[projects.routes]]\n  mount = \"chat\"\n  upstream = \"chat\"\n  auth = \"forward\"\n",
        "127.0.0.1",
    );
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots/first-run");
    std::fs::create_dir_all(&shots).unwrap();
    let base = format!("https://demo.example.test:{}", e.https);
    let out = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("chat/tests/js/page.mjs"))
        .arg(&shots)
        .arg(format!("{base}/staging/"))
        .arg(format!("{base}/forge/"))
        .env("CHROMIUM", &chromium)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|_| {
            panic!(
                "browser output: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert_eq!(r["ok"], true, "{r:#}");
    let pages = r["pages"].as_array().unwrap();
    assert_eq!(pages.len(), 4, "{r:#}");
    for p in pages {
        let at = format!("{} ({})", p["url"], p["size"]);
        assert_eq!(p["errors"], serde_json::json!([]), "{at}: {p:#}");
        assert_eq!(p["failed"], serde_json::json!([]), "{at}: {p:#}");
        assert_eq!(p["overflows"], false, "{at} is wider than the screen");
        for l in p["links"].as_array().unwrap() {
            let status = l["status"].as_u64().unwrap();
            let href = l["href"].as_str().unwrap();
            if href.ends_with("/forge/") {
                // The unset mount: its page says what to set.
                assert_eq!(status, 503, "{at}: {l}");
            } else if l["landed"].as_str().unwrap().contains("/chat/login") {
                // The chat, behind the sign-in: its page says how to get a link.
                assert_eq!(status, 401, "{at}: {l}");
            } else {
                assert!(status < 400, "{at}: a link that does not load: {l}");
            }
        }
        let text = p["text"].as_str().unwrap();
        if p["url"].as_str().unwrap().ends_with("/staging/") {
            assert_eq!(p["status"], 200, "{at}");
            assert_eq!(p["title"], "edge is running", "{at}");
            assert!(text.contains("not pointed anywhere yet"), "{at}: {text}");
            assert!(text.contains("cargo install --path ."), "{at}: {text}");
        } else {
            assert_eq!(p["status"], 503, "{at}");
            assert!(
                text.contains("Set projects[0].routes[0].upstream"),
                "{at}: {text}"
            );
        }
    }
}
