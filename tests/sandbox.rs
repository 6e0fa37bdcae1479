//! The sandbox on this machine (root, bubblewrap, Landlock, seccomp, cgroup v1): `edge sandbox
//! verify` with every layer required, and each probe shown to depend on its layer: it holds
//! with that layer alone, and gets through when the layer is removed too.

use std::process::Command;

use serde_json::Value;

const EDGE: &str = env!("CARGO_BIN_EXE_edge");

fn need_root_and_bwrap() {
    assert!(
        nix_is_root(),
        "the sandbox tests run as root (CI does): the uid, cgroup and setuid probes need it"
    );
    assert!(
        std::path::Path::new("/usr/bin/bwrap").exists(),
        "bubblewrap is missing: apt-get install bubblewrap (bash .ci/run does)"
    );
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs `edge sandbox verify --json` with `args`; returns the exit success and the JSON.
fn verify(config: Option<&std::path::Path>, args: &[&str]) -> (bool, Value) {
    let mut cmd = Command::new(EDGE);
    cmd.args(["sandbox", "verify", "--json"]).args(args);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|_| {
        panic!(
            "verify printed: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

/// One test, so that no two verifications plant and remove the stand-in docker socket at once.
#[test]
fn verify_passes_and_each_probe_depends_on_its_layer() {
    verify_passes_with_every_layer_required();
    each_probe_holds_with_its_layer_and_fails_without_it();
}

fn verify_passes_with_every_layer_required() {
    need_root_and_bwrap();
    let (ok, v) = verify(None, &[]);
    assert!(ok, "{v:#}");
    for l in v["layers"].as_array().unwrap() {
        assert_eq!(l["state"], "enforced", "{l}");
    }
    let probes = v["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 10, "{v:#}");
    for p in probes {
        assert_eq!(p["held"], true, "{p}");
    }
}

const LAYERS: [&str; 9] = [
    "env",
    "user",
    "no_new_privs",
    "rlimits",
    "landlock",
    "seccomp",
    "namespaces",
    "cgroup",
    "egress",
];

/// A profile with only `on` applied.
fn only(name: &str, on: &[&str]) -> String {
    let off: Vec<String> = LAYERS
        .iter()
        .filter(|l| !on.contains(l))
        .map(|l| format!("{l:?}"))
        .collect();
    format!(
        "[sandbox.profiles.{name}]\nrequire = []\ndisable = [{}]\nmemory = \"64MiB\"\npids = 32\negress = [\"allowed.example:443\"]\n",
        off.join(", ")
    )
}

/// (probe, the layers that alone stop it, the layers with which it gets through)
const CASES: &[(&str, &[&str], &[&str])] = &[
    ("env", &["env"], &[]),
    ("write-outside", &["landlock"], &[]),
    ("read-secret", &["landlock"], &[]),
    ("read-shadow", &["namespaces"], &[]),
    ("docker", &["namespaces"], &[]),
    ("setuid", &["user", "no_new_privs"], &["user"]),
    ("seccomp", &["seccomp"], &[]),
    ("pids", &["cgroup"], &[]),
    ("memory", &["cgroup"], &[]),
    ("egress", &["namespaces", "egress"], &["namespaces"]),
];

fn each_probe_holds_with_its_layer_and_fails_without_it() {
    need_root_and_bwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut toml = String::from(
        "domain = \"example.test\"\n[[projects]]\nname = \"demo\"\n  [[projects.routes]]\n  mount = \"forge\"\n  upstream = \"http://127.0.0.1:3000\"\n",
    );
    for (i, (_, with, without)) in CASES.iter().enumerate() {
        toml.push_str(&only(&format!("with{i}"), with));
        toml.push_str(&only(&format!("without{i}"), without));
    }
    let cfg = dir.path().join("edge.toml");
    std::fs::write(&cfg, toml).unwrap();
    let mut wrong = Vec::new();
    for (i, (probe, with, without)) in CASES.iter().enumerate() {
        for (profile, want_held) in [(format!("with{i}"), true), (format!("without{i}"), false)] {
            let (_, v) = verify(Some(&cfg), &["--profile", &profile, "--probe", probe]);
            let p = &v["probes"][0];
            if p["held"] != want_held {
                wrong.push(format!(
                    "{probe} with only {:?}: held = {}, want {want_held}: {}",
                    if want_held { with } else { without },
                    p["held"],
                    p["detail"]
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn sandbox_run_confines_a_command_and_refuses_what_it_cannot_confine() {
    need_root_and_bwrap();
    let ws = tempfile::tempdir_in("/var/tmp").unwrap();
    // The run's uid (nobody) must be able to write the workspace.
    Command::new("chown")
        .args(["65534:65534", ws.path().to_str().unwrap()])
        .status()
        .unwrap();
    std::fs::set_permissions(
        ws.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let home = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(
        home.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = Command::new(EDGE)
        .args(["sandbox", "run", "--workspace"])
        .arg(ws.path())
        .arg("--home")
        .arg(home.path().join("agent"))
        .args([
            "--",
            "sh",
            "-c",
            "id -u; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; echo x > f && echo wrote; ls /root 2>&1; echo \"$HTTPS_PROXY\"",
        ])
        .env("GITHUB_TOKEN", "ghp_secret")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "65534", "{stdout}");
    assert!(
        stdout.contains("NoNewPrivs:\t1") && stdout.contains("Seccomp:\t2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("wrote"),
        "the workspace is writable: {stdout}"
    );
    assert!(
        stdout.contains("Permission denied"),
        "/root is out of reach: {stdout}"
    );
    assert!(stdout.contains("http://127.0.0.1:3128"), "{stdout}");
    assert!(ws.path().join("f").exists());
    // A workspace the run's uid cannot reach: refused before anything runs, with the reason.
    let private = tempfile::tempdir().unwrap();
    let inner = private.path().join("ws");
    std::fs::create_dir(&inner).unwrap();
    let out = Command::new(EDGE)
        .args(["sandbox", "run", "--workspace"])
        .arg(&inner)
        .args(["--", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // (The workspace itself belongs to root: not writable by the run's uid.)
    assert!(
        stderr.contains("edge sandbox: user: the workspace") && stderr.contains("uid 65534"),
        "{stderr}"
    );
}

fn exe(p: &std::path::Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `edge sandbox run` of `argv` with a workspace and home of its own and `PATH`.
fn sandbox_run(path: &str, argv: &[&str]) -> (bool, String) {
    let ws = tempfile::tempdir_in("/var/tmp").unwrap();
    Command::new("chown")
        .args(["65534:65534", ws.path().to_str().unwrap()])
        .status()
        .unwrap();
    let home = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(
        home.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = Command::new(EDGE)
        .args(["sandbox", "run", "--workspace"])
        .arg(ws.path())
        .arg("--home")
        .arg(home.path().join("agent"))
        .arg("--")
        .args(argv)
        .env("PATH", path)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Agents where their installers put them, under a home closed to the run's uid (0700, as
/// installers leave it): Claude Code's own installer (`~/.local/bin/claude`, a link to
/// `~/.local/share/claude/versions/X/claude`), an npm package under a user prefix whose script
/// runs `#!/usr/bin/env node` with a node under `~/.nvm`, and a program under `/tmp`. Each runs
/// inside the sandbox and sees its own files, and nothing else of the home around it.
#[test]
fn agents_installed_under_homes_and_tmp_run_inside_the_sandbox() {
    need_root_and_bwrap();
    let h = tempfile::Builder::new()
        .prefix("edge-test-home-")
        .tempdir_in("/home")
        .unwrap();
    let h = h.path();
    std::fs::write(h.join("secret.txt"), "the user's own file").unwrap();
    // Claude Code's own installer.
    let versions = h.join(".local/share/claude/versions/1.2.3");
    exe(
        &versions.join("claude"),
        "#!/bin/sh\nd=$(dirname \"$(readlink -f \"$0\")\")\necho \"native: $(cat \"$d/resources.txt\")\"\n",
    );
    std::fs::write(versions.join("resources.txt"), "resources found").unwrap();
    std::fs::create_dir_all(h.join(".local/bin")).unwrap();
    std::os::unix::fs::symlink(
        "../share/claude/versions/1.2.3/claude",
        h.join(".local/bin/claude"),
    )
    .unwrap();
    let path = format!("{}:/usr/bin:/bin", h.join(".local/bin").display());
    let (ok, out) = sandbox_run(&path, &["claude"]);
    assert!(ok, "{out}");
    assert!(out.contains("native: resources found"), "{out}");
    // Its home is not readable: only what the agent needs was brought back.
    let (ok, out) = sandbox_run(
        &path,
        &[
            "sh",
            "-c",
            &format!("ls -A {}; cat {}/secret.txt", h.display(), h.display()),
        ],
    );
    assert!(!ok, "{out}");
    assert!(!out.contains("the user's own file"), "{out}");

    // npm with a user prefix, run by a node under ~/.nvm.
    let pkg = h.join(".npm-global/lib/node_modules/agent-pkg");
    std::fs::create_dir_all(pkg.join("lib")).unwrap();
    std::fs::write(pkg.join("package.json"), "{\"name\":\"agent-pkg\"}").unwrap();
    std::fs::write(
        pkg.join("lib/helper.js"),
        "exports.hello = () => 'npm: helper loaded';",
    )
    .unwrap();
    exe(
        &pkg.join("bin/cli.js"),
        "#!/usr/bin/env node\nconsole.log(require('../lib/helper.js').hello());\nconsole.log('node: ' + process.execPath);\n",
    );
    std::fs::create_dir_all(h.join(".npm-global/bin")).unwrap();
    std::os::unix::fs::symlink(
        "../lib/node_modules/agent-pkg/bin/cli.js",
        h.join(".npm-global/bin/agent"),
    )
    .unwrap();
    let nvm = h.join(".nvm/versions/node/v20.0.0/bin");
    std::fs::create_dir_all(&nvm).unwrap();
    let node = std::fs::canonicalize("/usr/bin/node").expect("node is installed (.ci/run)");
    if std::fs::hard_link(&node, nvm.join("node")).is_err() {
        std::fs::copy(&node, nvm.join("node")).unwrap();
    }
    let path = format!(
        "{}:{}:/usr/bin:/bin",
        h.join(".npm-global/bin").display(),
        nvm.display()
    );
    let (ok, out) = sandbox_run(&path, &["agent"]);
    assert!(ok, "{out}");
    assert!(out.contains("npm: helper loaded"), "{out}");
    assert!(
        out.contains(&format!("node: {}", nvm.join("node").display())),
        "{out}"
    );

    // A program under /tmp (a private directory, as mktemp makes).
    let t = tempfile::tempdir_in("/tmp").unwrap();
    exe(&t.path().join("agent.sh"), "#!/bin/sh\necho tmp: ran\n");
    let (ok, out) = sandbox_run(
        "/usr/bin:/bin",
        &[t.path().join("agent.sh").to_str().unwrap()],
    );
    assert!(ok, "{out}");
    assert!(out.contains("tmp: ran"), "{out}");
}

/// bubblewrap's new session is a new scheduler autogroup; the run keeps the priority it was
/// started with there (`edge worker --nice`), so 100 agents do not each weigh as much as edge.
#[test]
fn a_lowered_priority_holds_inside_the_sandbox_s_own_session() {
    need_root_and_bwrap();
    let enabled = std::fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled")
        .is_ok_and(|s| s.trim() == "1");
    let ws = tempfile::tempdir_in("/var/tmp").unwrap();
    Command::new("chown")
        .args(["65534:65534", ws.path().to_str().unwrap()])
        .status()
        .unwrap();
    let out = Command::new("nice")
        .args(["-n", "7", EDGE, "sandbox", "run", "--workspace"])
        .arg(ws.path())
        .args([
            "--",
            "sh",
            "-c",
            "cut -d' ' -f19 /proc/self/stat; cat /proc/self/autogroup 2>/dev/null || echo none",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some("7"),
        "the nice value is inherited: {stdout}"
    );
    let group = lines.next().unwrap_or("");
    if enabled {
        assert!(
            group.ends_with(" nice 7"),
            "the run's autogroup has it too: {stdout}"
        );
    } else {
        eprintln!("this kernel has no autogroups: nothing more to check ({group})");
    }
}

/// All runs together weigh as one process at nice 10 where the cpu controller is there: a run
/// is in a cgroup under `edge-runs/` in the cpu hierarchy, and `edge-runs/` has that weight.
/// (Nice alone weighs each process: 100 agents then outweigh edge ten to one.)
#[test]
fn runs_share_one_cpu_weight_below_edge_s() {
    need_root_and_bwrap();
    let (procs_of, weight) = if std::path::Path::new("/sys/fs/cgroup/cpu/cpu.shares").exists() {
        ("/sys/fs/cgroup/cpu/edge-runs", ("cpu.shares", "110"))
    } else if std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .is_ok_and(|c| c.split_whitespace().any(|w| w == "cpu"))
    {
        ("/sys/fs/cgroup/edge-runs", ("cpu.weight", "10"))
    } else {
        eprintln!("no cpu controller on this host: nothing to check");
        return;
    };
    let ws = tempfile::tempdir_in("/var/tmp").unwrap();
    Command::new("chown")
        .args(["65534:65534", ws.path().to_str().unwrap()])
        .status()
        .unwrap();
    // An unusual duration, to find the process by.
    let secs = format!("2.{}", std::process::id());
    let marker = format!("sleep\0{secs}\0");
    let mut child = Command::new(EDGE)
        .args(["sandbox", "run", "--workspace"])
        .arg(ws.path())
        .args(["--", "sleep", &secs])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Find the agent's process, and the cpu cgroup it is in.
    let mut found = None;
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(30));
        for p in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            if cmd == marker.as_bytes() {
                found = std::fs::read_to_string(p.path().join("cgroup")).ok();
            }
        }
        if found.is_some() {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let cgroups = found.expect("the run's process was seen");
    let v1 = procs_of.starts_with("/sys/fs/cgroup/cpu");
    let line = cgroups
        .lines()
        .find(|l| {
            if v1 {
                l.split(':').nth(1) == Some("cpu")
            } else {
                l.starts_with("0::")
            }
        })
        .unwrap_or_default();
    assert!(
        line.contains(":/edge-runs/"),
        "the run is in a cgroup under edge-runs/ in the cpu hierarchy: {cgroups}"
    );
    let w = std::fs::read_to_string(std::path::Path::new(procs_of).join(weight.0)).unwrap();
    assert_eq!(w.trim(), weight.1, "edge-runs/{}", weight.0);
}
