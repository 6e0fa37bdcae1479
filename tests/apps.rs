//! App presets through a live edge: `git http-backend` (Debian's git, behind nginx and
//! fcgiwrap) as the forge, behind `auth = "forward"`. With `app = "forgejo"` a git client clones
//! and pushes through the gated mount (its requests carry their own credentials, so they skip
//! the sign-in) while pages stay gated; without the preset, the same clone gets edge's 401.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

const EDGE: &str = env!("CARGO_BIN_EXE_edge");

use common::{wait_for, Killed};

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A bare repository `alice/app.git` with one commit, served by git http-backend through
/// fcgiwrap and nginx (pushes allowed: the forge's own authentication is not what is tested).
fn git_server(dir: &Path) -> (Vec<Killed>, u16) {
    let repos = dir.join("repos");
    let bare = repos.join("alice/app.git");
    std::fs::create_dir_all(&bare).unwrap();
    assert!(
        run(Command::new("git")
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(&bare))
        .0
    );
    assert!(
        run(Command::new("git")
            .arg("-C")
            .arg(&bare)
            .args(["config", "http.receivepack", "true"]))
        .0
    );
    let seed = dir.join("seed");
    assert!(
        run(Command::new("git")
            .args(["init", "-q", "-b", "main"])
            .arg(&seed))
        .0
    );
    std::fs::write(seed.join("README"), "hello\n").unwrap();
    let git = |args: &[&str]| {
        let (ok, out) = run(Command::new("git")
            .arg("-C")
            .arg(&seed)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.test"])
            .args(args));
        assert!(ok, "git {args:?}: {out}");
    };
    git(&["add", "README"]);
    git(&["commit", "-q", "-m", "first"]);
    git(&["push", "-q", bare.to_str().unwrap(), "main"]);

    let sock = dir.join("fcgi.sock");
    let fcgi = ["/usr/sbin/fcgiwrap", "/usr/bin/fcgiwrap"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("fcgiwrap is not installed; .ci/run installs it");
    let fcgi = Killed(
        Command::new(fcgi)
            .arg("-s")
            .arg(format!("unix:{}", sock.display()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("fcgiwrap", || sock.exists());
    // nginx's workers are not root: they need to reach the socket.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    let port = common::free_port();
    let http = format!(
        "client_max_body_size 0;\n\
         server {{ listen 127.0.0.1:{port};\n\
           location / {{ include /etc/nginx/fastcgi_params;\n\
             fastcgi_param SCRIPT_FILENAME /usr/lib/git-core/git-http-backend;\n\
             fastcgi_param GIT_PROJECT_ROOT {repos};\n\
             fastcgi_param GIT_HTTP_EXPORT_ALL \"\";\n\
             fastcgi_param PATH_INFO $uri;\n\
             fastcgi_pass unix:{sock}; }}\n\
         }}",
        repos = repos.display(),
        sock = sock.display(),
    );
    let nginx = common::nginx(dir, port, &http);
    (vec![nginx, fcgi], port)
}

#[test]
fn git_clones_and_pushes_through_a_gated_forge_with_the_preset_and_not_without() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_servers, git_port) = git_server(d);
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
               [[projects.routes]]\n  mount = \"forge\"\n  app = \"forgejo\"\n  upstream = \"http://127.0.0.1:{git_port}\"\n  auth = \"forward\"\n\
               [[projects.routes]]\n  mount = \"plain\"\n  upstream = \"http://127.0.0.1:{git_port}\"\n  auth = \"forward\"\n\
               [[projects.routes]]\n  mount = \"chat\"\n  upstream = \"chat\"\n  auth = \"forward\"\n\
             [chat]\nlisten = \"127.0.0.1:{chat}\"\nlogin = \"token\"\n"
        ),
    )
    .unwrap();
    // What the preset sets, and every skip, before anything runs.
    let (ok, explained) = run(Command::new(EDGE)
        .args(["config", "check", "--explain"])
        .arg(&cfg));
    assert!(ok, "{explained}");
    for line in [
        "projects[0].routes[0] /forge/: app = \"forgejo\"",
        "prefix = \"strip\"",
        "max_body = unlimited",
        "root_paths = [\"/v2/\"]",
        "skips the sign-in: POST /*/*/git-receive-pack (app = \"forgejo\": git over HTTP (push))",
        "projects[0].routes[1] /plain/: every request asks the sign-in",
    ] {
        assert!(explained.contains(line), "{line:?} in:\n{explained}");
    }
    let (ok, env) = run(Command::new(EDGE)
        .args(["apps", "env", "--config"])
        .arg(&cfg));
    assert!(ok, "{env}");
    assert!(
        env.contains(&format!(
            "ROOT_URL ([server] in app.ini; FORGEJO__server__ROOT_URL) = https://demo.example.test:{https}/forge/"
        )),
        "{env}"
    );
    let _edge = Killed(
        Command::new(EDGE)
            .args(["up", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("edge.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("edge", || {
        std::net::TcpStream::connect(("127.0.0.1", https)).is_ok()
    });
    let ca = d.join("state/ca/example.test/ca.pem");
    let git = |args: &[&str]| {
        run(Command::new("git")
            .current_dir(d)
            .env("GIT_TERMINAL_PROMPT", "0")
            // (The environment's own CA bundle setting would win over http.sslCAInfo.)
            .env("GIT_SSL_CAINFO", &ca)
            .args([
                "-c",
                &format!("http.curloptResolve=demo.example.test:{https}:127.0.0.1"),
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.test",
            ])
            .args(args))
    };
    let url = |mount: &str| format!("https://demo.example.test:{https}/{mount}/alice/app.git");
    // With the preset: clone, commit, push, and the push is in the repository.
    let (ok, out) = git(&["clone", "-q", &url("forge"), "work"]);
    assert!(
        ok,
        "clone through the preset: {out}\nnginx: {}\nedge: {}",
        std::fs::read_to_string(d.join("nginx-error.log")).unwrap_or_default(),
        std::fs::read_to_string(d.join("edge.log")).unwrap_or_default()
    );
    assert_eq!(
        std::fs::read_to_string(d.join("work/README")).unwrap(),
        "hello\n"
    );
    std::fs::write(d.join("work/NEW"), "pushed through edge\n").unwrap();
    let work = d.join("work");
    let w = work.to_str().unwrap();
    assert!(git(&["-C", w, "add", "NEW"]).0);
    assert!(git(&["-C", w, "commit", "-q", "-m", "second"]).0);
    let (ok, out) = git(&["-C", w, "push", "-q", "origin", "main"]);
    assert!(ok, "push through the preset: {out}");
    let (ok, log) = run(Command::new("git")
        .arg("-C")
        .arg(d.join("repos/alice/app.git"))
        .args(["log", "--format=%s", "main"]));
    assert!(ok);
    assert_eq!(log, "second\nfirst\n");
    // Pages of the same mount are still behind the sign-in.
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&ca)
        .args([
            "--resolve",
            &format!("demo.example.test:{https}:127.0.0.1"),
            "-H",
            "Sec-Fetch-Mode: navigate",
            &format!("https://demo.example.test:{https}/forge/alice/app.git/"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "302");
    // A path that tries to walk out of a skip rule is gated too.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--path-as-is",
            "--cacert",
        ])
        .arg(&ca)
        .args([
            "--resolve",
            &format!("demo.example.test:{https}:127.0.0.1"),
            &format!("https://demo.example.test:{https}/forge/api/../alice/app.git/HEAD"),
        ])
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&out.stdout), "200");
    // Without the preset: the git client meets edge's sign-in.
    let (ok, out) = git(&["clone", "-q", &url("plain"), "nope"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("401")
            || out.contains("Authentication failed")
            || out.contains("could not read Username"),
        "{out}"
    );
}
