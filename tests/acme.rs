//! Certificates from an ACME CA, end to end against real peers the test starts itself: Pebble
//! (Let's Encrypt's test CA, Debian's `pebble`) validating HTTP-01 through `edge up`'s own
//! plain-HTTP listener, with Knot (Debian's `knot`) as the DNS server Pebble resolves the
//! project's names with. And `issuer = "files"`: a chain swapped on disk is served without a
//! restart and never rewritten.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Killed;

fn need(bin: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(bin);
        if p.exists() {
            return p;
        }
    }
    panic!("{bin} is not installed; bash .ci/run installs it (apt-get install pebble knot knot-dnsutils)");
}

/// The TSIG key Knot accepts updates signed with, as `knsupdate -y` takes it.
const TSIG: &str = "hmac-sha256:edge.:c2VjcmV0LWtleS1mb3ItdGhlLWFjbWUtdGVzdHMtb25seS0xMjM0NTY=";

/// Knot serving `example.test` (every name at 127.0.0.1) on a loopback port, taking RFC 2136
/// updates signed with [`TSIG`].
fn knot(dir: &Path) -> (Killed, u16) {
    let port = common::free_port();
    let d = dir.display();
    let secret = TSIG.rsplit(':').next().unwrap();
    // Knot keeps its journal there, and refuses updates (SERVFAIL) without it.
    std::fs::create_dir_all(dir.join("db")).unwrap();
    std::fs::write(
        dir.join("knot.conf"),
        format!(
            "server:\n    listen: 127.0.0.1@{port}\n    rundir: {d}\ndatabase:\n    storage: {d}/db\n\
             control:\n    listen: {d}/knot.sock\nlog:\n  - target: stderr\n    any: warning\n\
             key:\n  - id: edge.\n    algorithm: hmac-sha256\n    secret: {secret}\n\
             acl:\n  - id: update\n    address: 127.0.0.1\n    key: edge.\n    action: update\n\
             zone:\n  - domain: example.test\n    storage: {d}\n    file: example.test.zone\n    acl: update\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("example.test.zone"),
        "$ORIGIN example.test.\n$TTL 60\n@ SOA ns.example.test. admin.example.test. 1 60 60 3600 60\n\
         @ NS ns.example.test.\nns A 127.0.0.1\n@ A 127.0.0.1\n* A 127.0.0.1\n",
    )
    .unwrap();
    let child = Command::new(need("knotd"))
        .arg("-c")
        .arg(dir.join("knot.conf"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("knot.log")).unwrap())
        .spawn()
        .unwrap();
    let k = Killed(child);
    for _ in 0..100 {
        let out = Command::new(need("kdig"))
            .args([
                "@127.0.0.1",
                "-p",
                &port.to_string(),
                "demo.example.test",
                "A",
                "+short",
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("127.0.0.1") {
            return (k, port);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("knot did not answer on {port}");
}

/// Pebble on loopback, its API served with a certificate from a CA the test makes (written to
/// `api-ca.pem`), validating HTTP-01 on `http_port`, resolving names through `dns_port`, and
/// rejecting `nonce_reject` percent of good nonces (`badNonce`).
fn pebble(dir: &Path, http_port: u16, dns_port: u16, nonce_reject: u8) -> (Killed, u16, u16) {
    pebble_with_dns(
        dir,
        http_port,
        &format!("127.0.0.1:{dns_port}"),
        nonce_reject,
    )
}

/// [`pebble`], resolving names through the DNS server at `dns` (`IP:port`).
fn pebble_with_dns(dir: &Path, http_port: u16, dns: &str, nonce_reject: u8) -> (Killed, u16, u16) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "edge test: Pebble API CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    leaf.distinguished_name = rcgen::DistinguishedName::new();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let leaf = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::write(dir.join("api-ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("api.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("api.key"), key.serialize_pem()).unwrap();
    let (port, mgmt, tls) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let d = dir.display();
    std::fs::write(
        dir.join("pebble.json"),
        format!(
            r#"{{"pebble": {{"listenAddress": "127.0.0.1:{port}", "managementListenAddress": "127.0.0.1:{mgmt}",
               "certificate": "{d}/api.pem", "privateKey": "{d}/api.key", "httpPort": {http_port},
               "tlsPort": {tls}, "ocspResponderURL": "", "externalAccountBindingRequired": false}}}}"#
        ),
    )
    .unwrap();
    (start_pebble(dir, dns, nonce_reject, port), port, mgmt)
}

/// Starts Pebble from the `pebble.json` in `dir` (again, after a stop: same ports, same API
/// certificate, but a new root and none of its accounts or orders), waiting for `port`.
fn start_pebble(dir: &Path, dns: &str, nonce_reject: u8, port: u16) -> Killed {
    let child = Command::new(need("pebble"))
        .arg("-config")
        .arg(dir.join("pebble.json"))
        .args(["-dnsserver", dns])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", nonce_reject.to_string())
        .stdout(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("pebble.log"))
                .unwrap(),
        )
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let k = Killed(child);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return k;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("pebble did not start on {port}");
}

/// Pebble's root for this run (it makes a new one at every start), from its management API,
/// written to `pebble-root.pem`.
fn pebble_root(d: &Path, mgmt: u16) -> PathBuf {
    let (ok, pem) = curl(&[
        "--cacert",
        d.join("api-ca.pem").to_str().unwrap(),
        &format!("https://127.0.0.1:{mgmt}/roots/0"),
    ]);
    assert!(ok && pem.contains("BEGIN CERTIFICATE"), "{pem}");
    let root = d.join("pebble-root.pem");
    std::fs::write(&root, pem).unwrap();
    root
}

/// `edge config check CFG` passes.
fn config_ok(cfg: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["config", "check"])
        .arg(cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
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

/// What `openssl s_client` makes of the certificate edge serves for `name`, verified against
/// `root` (exit status, output).
fn s_client(port: u16, name: &str, root: &Path) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args([
            "-servername",
            name,
            "-verify_return_error",
            "-verify_hostname",
            name,
        ])
        .arg("-CAfile")
        .arg(root)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success() && text.contains("Verify return code: 0 (ok)"),
        text,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn edge_gets_a_certificate_from_an_acme_ca_over_http_01_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (http, https, admin) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let (_knot, dns) = knot(d);
    // Pebble rejects 15% of good nonces, as a loaded CA may: edge must get through anyway.
    let (_pebble, acme_port, mgmt) = pebble(d, http, dns, 15);
    std::fs::create_dir_all(d.join("site")).unwrap();
    std::fs::write(d.join("site/index.html"), "hello from staging").unwrap();
    let echo = common::ws_echo().await;
    let cfg = d.join("edge.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"domain = "example.test"
state_dir = "{d}/state"
[listen]
https = "127.0.0.1:{https}"
http = "127.0.0.1:{http}"
admin = "127.0.0.1:{admin}"
[certs]
issuer = "acme"
[certs.acme]
directory = "https://127.0.0.1:{acme_port}/dir"
email = "ops@example.test"
ca_roots = "api-ca.pem"
challenge = "http-01"
[[projects]]
name = "demo"
  [[projects.routes]]
  mount = "staging"
  root = "site"
  [[projects.routes]]
  mount = "live"
  upstream = "http://127.0.0.1:{echo}"
"#,
            d = d.display()
        ),
    )
    .unwrap();
    config_ok(&cfg);
    let started = Instant::now();
    let mut edge = common::edge_up(&cfg, https).await;
    // A WebSocket opened on the local CA's certificate, before the ACME one arrives.
    let mut live = common::wss(
        https,
        "demo.example.test",
        &d.join("state/ca/example.test/ca.pem"),
    )
    .await;
    let root = pebble_root(d, mgmt);
    // Until the order completes edge serves its local CA's certificate; then Pebble's.
    let served = loop {
        let (ok, text) = s_client(https, "demo.example.test", &root);
        if ok {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no ACME certificate served after 90 s: {text}\npebble: {}",
            std::fs::read_to_string(d.join("pebble.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("edge up -> a Pebble certificate served (http-01): {served:?}");
    // The swap left the WebSocket open on the old certificate's connection.
    common::echo(&mut live, "still here").await;
    // Served through it: the site, over a connection that trusts only Pebble's root.
    let (ok, body) = curl(&[
        "--cacert",
        root.to_str().unwrap(),
        "--resolve",
        &format!("demo.example.test:{https}:127.0.0.1"),
        &format!("https://demo.example.test:{https}/staging/"),
    ]);
    assert!(ok && body.contains("hello from staging"), "{body}");
    // The account key and the certificate's key are the owner's only.
    use std::os::unix::fs::PermissionsExt;
    let state = d.join("state");
    let account = edge_certs::account_path(&state, &format!("https://127.0.0.1:{acme_port}/dir"));
    for f in [account.clone(), state.join("certs/acme/demo/key.pem")] {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    // No challenge answer is left on offer, and unknown tokens are 404 (before any redirect).
    let (_, out) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Host: demo.example.test",
        &format!("http://127.0.0.1:{http}/.well-known/acme-challenge/nope"),
    ]);
    assert_eq!(out, "404");
    // `edge certs` says where it came from and when it renews; /metrics has its expiry.
    let certs = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["certs", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&certs.stdout);
    assert!(
        certs.status.success(),
        "{}",
        String::from_utf8_lossy(&certs.stderr)
    );
    for want in [
        "demo  issuer: acme",
        "names:     demo.example.test",
        "Pebble Intermediate",
        "renews:    at",
        "(a third of its lifetime left)",
    ] {
        assert!(listing.contains(want), "{want:?} not in:\n{listing}");
    }
    let (_, metrics) = curl(&[&format!("http://127.0.0.1:{admin}/metrics")]);
    assert!(
        metrics.contains("edge_cert_expiry_timestamp_seconds{project=\"demo\",issuer=\"acme\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("edge_acme_orders_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    // `edge certs renew`: a new order now, and the new certificate served.
    let before = std::fs::read_to_string(state.join("certs/acme/demo/fullchain.pem")).unwrap();
    let renew = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["certs", "renew", "demo", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        renew.status.success(),
        "{}",
        String::from_utf8_lossy(&renew.stderr)
    );
    let start = Instant::now();
    while std::fs::read_to_string(state.join("certs/acme/demo/fullchain.pem")).unwrap() == before {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no renewal after edge certs renew"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, metrics) = curl(&[&format!("http://127.0.0.1:{admin}/metrics")]);
    assert!(
        metrics.contains("edge_acme_orders_total{result=\"ok\"} 2"),
        "{metrics}"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["certs", "renew", "nosuch", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no project \"nosuch\""));
    // A restart serves the stored certificate at once, with the same account.
    edge.kill().await.unwrap();
    let account_before = std::fs::read(&account).unwrap();
    let stored = std::fs::read_to_string(state.join("certs/acme/demo/fullchain.pem")).unwrap();
    let _edge = common::edge_up(&cfg, https).await;
    let (ok, text) = s_client(https, "demo.example.test", &root);
    assert!(
        ok,
        "the stored ACME certificate was not served after a restart: {text}"
    );
    assert_eq!(std::fs::read(&account).unwrap(), account_before);
    assert_eq!(
        std::fs::read_to_string(state.join("certs/acme/demo/fullchain.pem")).unwrap(),
        stored,
        "a fresh certificate was ordered again"
    );
}

/// The TXT values the DNS server at `ip`:`port` answers for `name`.
fn txt(ip: &str, port: u16, name: &str) -> String {
    let out = Command::new(need("kdig"))
        .args([
            &format!("@{ip}"),
            "-p",
            &port.to_string(),
            name,
            "TXT",
            "+short",
            "+norecurse",
            "+time=2",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits until `edge up` with `cfg` serves a Pebble certificate for the wildcard and the apex;
/// how long it took. `log` gets edge's output.
async fn wildcard_served(cfg: &Path, https: u16, root: &Path, log: &Path, d: &Path) -> Duration {
    let started = Instant::now();
    let mut edge = tokio::process::Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["up", "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let served = loop {
        if s_client(https, "forge.demo.example.test", root).0 {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no wildcard certificate after 60 s:\nedge: {}\npebble: {}",
            std::fs::read_to_string(log).unwrap_or_default(),
            std::fs::read_to_string(d.join("pebble.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (ok, text) = s_client(https, "demo.example.test", root);
    assert!(ok, "the apex: {text}");
    edge.kill().await.unwrap();
    served
}

/// Two Knot servers for `example.test` on port 53, as the zone's NS records name them: a
/// primary taking RFC 2136 updates signed with [`TSIG`], and a secondary that follows it by
/// zone transfer (NOTIFY, IXFR). They listen on two loopback addresses of their own (binding
/// port 53 needs root, as `.ci/run` has). Returns the servers and their addresses.
fn knot_pair(dir: &Path) -> (Killed, Killed, [String; 2]) {
    let n = std::process::id();
    let ips = [
        format!("127.53.{}.{}", (n >> 8) % 250 + 1, (n % 120) * 2 + 1),
        format!("127.53.{}.{}", (n >> 8) % 250 + 1, (n % 120) * 2 + 2),
    ];
    let secret = TSIG.rsplit(':').next().unwrap();
    let zone = format!(
        "$ORIGIN example.test.\n$TTL 60\n@ SOA ns1.example.test. admin.example.test. 1 60 60 3600 60\n\
         @ NS ns1.example.test.\n@ NS ns2.example.test.\nns1 A {}\nns2 A {}\n\
         @ A 127.0.0.1\n* A 127.0.0.1\n",
        ips[0], ips[1]
    );
    let mut servers = Vec::new();
    for (i, role) in ["primary", "secondary"].iter().enumerate() {
        let d = dir.join(role);
        std::fs::create_dir_all(d.join("db")).unwrap();
        let dd = d.display();
        let zone_conf = if i == 0 {
            std::fs::write(d.join("example.test.zone"), &zone).unwrap();
            format!(
                "remote:\n  - id: secondary\n    address: {}@53\n\
                 acl:\n  - id: update\n    address: 127.0.0.0/8\n    key: edge.\n    action: update\n  - id: transfer\n    address: 127.0.0.0/8\n    action: transfer\n\
                 zone:\n  - domain: example.test\n    storage: {dd}\n    file: example.test.zone\n    notify: secondary\n    acl: [update, transfer]\n",
                ips[1]
            )
        } else {
            format!(
                "remote:\n  - id: primary\n    address: {}@53\n\
                 acl:\n  - id: notify\n    address: 127.0.0.0/8\n    action: notify\n\
                 zone:\n  - domain: example.test\n    storage: {dd}\n    file: example.test.zone\n    master: primary\n    acl: notify\n",
                ips[0]
            )
        };
        std::fs::write(
            d.join("knot.conf"),
            format!(
                "server:\n    listen: {}@53\n    rundir: {dd}\ndatabase:\n    storage: {dd}/db\n\
                 control:\n    listen: {dd}/knot.sock\nlog:\n  - target: stderr\n    any: info\n\
                 key:\n  - id: edge.\n    algorithm: hmac-sha256\n    secret: {secret}\n{zone_conf}",
                ips[i]
            ),
        )
        .unwrap();
        let child = Command::new(need("knotd"))
            .arg("-c")
            .arg(d.join("knot.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("knot.log")).unwrap())
            .spawn()
            .unwrap();
        servers.push(Killed(child));
    }
    for ip in &ips {
        let mut up = false;
        for _ in 0..200 {
            let out = Command::new(need("kdig"))
                .args([
                    &format!("@{ip}"),
                    "demo.example.test",
                    "A",
                    "+short",
                    "+time=1",
                    "+retry=0",
                ])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains("127.0.0.1") {
                up = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            up,
            "knot did not answer on {ip}:53 (binding port 53 needs root):\nprimary: {}\nsecondary: {}",
            std::fs::read_to_string(dir.join("primary/knot.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("secondary/knot.log")).unwrap_or_default()
        );
    }
    let secondary = servers.pop().unwrap();
    let primary = servers.pop().unwrap();
    (primary, secondary, ips)
}

/// Waits until `log` shows a failed order; its text.
async fn failure_logged(log: &Path, within: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("ACME order failed") {
            return text;
        }
        assert!(start.elapsed() < within, "no failure logged: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wildcard_comes_over_dns_01_and_its_records_are_gone_after_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let https = common::free_port();
    let (_primary, secondary, [ns1, ns2]) = knot_pair(d);
    let (_pebble, acme_port, mgmt) =
        pebble_with_dns(d, common::free_port(), &format!("{ns1}:53"), 0);
    let hook = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/knot-txt.sh");
    std::fs::write(d.join("tsig.key"), TSIG.rsplit(':').next().unwrap()).unwrap();
    std::fs::write(
        d.join("wrong.key"),
        "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktMTIzNA==",
    )
    .unwrap();
    // `provider` is the [certs.acme.dns] table's body; each config gets its own state.
    let config = |state: &str, provider: &str, timeout: &str| {
        format!(
            r#"domain = "example.test"
state_dir = "{d}/{state}"
[listen]
https = "127.0.0.1:{https}"
http = ""
admin = ""
[certs]
issuer = "acme"
[certs.acme]
directory = "https://127.0.0.1:{acme_port}/dir"
ca_roots = "api-ca.pem"
challenge = "dns-01"
[certs.acme.dns]
{provider}
propagation_timeout = "{timeout}"
[[projects]]
name = "demo"
  [[projects.routes]]
  mount = "forge"
"#,
            d = d.display()
        )
    };
    // No `nameservers`: edge finds the zone's servers from its NS records, through the
    // primary acting as the resolver (the machine's own resolver knows nothing of the zone).
    let rfc2136 = |key: &str| {
        format!(
            "provider = \"rfc2136\"\nserver = \"{ns1}:53\"\nresolver = \"{ns1}:53\"\nzone = \"example.test\"\ntsig_name = \"edge.\"\ntsig_algorithm = \"hmac-sha256\"\ntsig_secret_file = \"{key}\""
        )
    };
    let cfg = d.join("edge.toml");
    let root = pebble_root(d, mgmt);
    // The deletion reaches the secondary by zone transfer, a moment after the primary.
    let no_records = |when: &str| {
        for ip in [&ns1, &ns2] {
            let start = Instant::now();
            loop {
                let left = txt(ip, 53, "_acme-challenge.demo.example.test");
                if left.is_empty() {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "a record was left on {ip} {when}: {left}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };

    // A wrong TSIG key: Knot's refusal is quoted, no certificate, no record left.
    std::fs::write(&cfg, config("state-wrong", &rfc2136("wrong.key"), "20s")).unwrap();
    config_ok(&cfg);
    let log = d.join("edge-wrong.log");
    let mut wrong = tokio::process::Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["up", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let text = failure_logged(&log, Duration::from_secs(60)).await;
    assert!(
        text.contains("NOTAUTH"),
        "Knot's refusal is not quoted: {text}"
    );
    wrong.kill().await.unwrap();
    no_records("after a refused update");
    assert!(!s_client(https, "demo.example.test", &root).0);

    // The right key, edge's own signed updates: apex and wildcard in one order, the record
    // seen on both servers the NS records name before Pebble is told to look.
    std::fs::write(&cfg, config("state-rfc2136", &rfc2136("tsig.key"), "20s")).unwrap();
    config_ok(&cfg);
    let log = d.join("edge-rfc2136.log");
    let served = wildcard_served(&cfg, https, &root, &log, d).await;
    eprintln!("edge up -> a Pebble wildcard served (dns-01, rfc2136): {served:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    let found = text
        .lines()
        .find(|l| l.contains("the zone's authoritative servers"))
        .unwrap_or_else(|| panic!("no servers found from NS: {text}"));
    assert!(
        found.contains(&format!("{ns1}:53")) && found.contains(&format!("{ns2}:53")),
        "{found}"
    );
    let seen = text
        .lines()
        .find(|l| l.contains("visible on every authoritative server"))
        .unwrap_or_else(|| panic!("no visibility check: {text}"));
    assert!(seen.contains(&format!("{ns2}:53")), "{seen}");
    no_records("after an issued order");

    // The same through a command (a knsupdate script) and servers listed by hand.
    let command = format!(
        "provider = \"command\"\ncommand = [\"{hook}\", \"{{action}}\", \"{{fqdn}}\", \"{{value}}\", \"{ns1}\", \"53\", \"{TSIG}\"]\nnameservers = [\"{ns1}:53\", \"{ns2}:53\"]"
    );
    std::fs::write(&cfg, config("state-command", &command, "20s")).unwrap();
    config_ok(&cfg);
    let served = wildcard_served(&cfg, https, &root, &d.join("edge-command.log"), d).await;
    eprintln!("edge up -> a Pebble wildcard served (dns-01, command): {served:?}");
    no_records("after an issued order (command)");

    // The secondary down: the record never shows there, so Pebble is never told to look; the
    // failure names the server, and the record is cleared from the primary.
    drop(secondary);
    std::fs::write(&cfg, config("state-down", &rfc2136("tsig.key"), "3s")).unwrap();
    let log = d.join("edge-down.log");
    let mut down = tokio::process::Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["up", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let text = failure_logged(&log, Duration::from_secs(60)).await;
    let failed = text
        .lines()
        .find(|l| l.contains("ACME order failed"))
        .unwrap();
    assert!(
        failed.contains(&format!("{ns2}:53")) && failed.contains("propagation_timeout"),
        "the failure does not name the silent server: {failed}"
    );
    assert!(
        !text.contains("telling the CA it is ready"),
        "Pebble was told to look: {text}"
    );
    down.kill().await.unwrap();
    assert_eq!(
        txt(&ns1, 53, "_acme-challenge.demo.example.test"),
        "",
        "a record was left on the primary after the propagation check failed"
    );
}

/// `edge certs` with `cfg`: its listing.
fn edge_certs_listing(cfg: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["certs", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `edge certs renew PROJECT` with `cfg` succeeds.
fn edge_certs_renew(cfg: &Path, project: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["certs", "renew", project, "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until edge serves `name` on `https` with a chain `root` verifies.
async fn served_by(https: u16, name: &str, root: &Path, within: Duration, log: &Path) {
    let start = Instant::now();
    loop {
        let (ok, text) = s_client(https, name, root);
        if ok {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{name} not served with a chain from {}: {text}\nedge: {}",
            root.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_that_stops_mid_order_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (http, https, admin) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let (_knot, dns) = knot(d);
    // Pebble validates HTTP-01 through a relay to edge's plain-HTTP listener, which says when
    // Pebble is in the middle of validating: the moment the test stops it.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_port = relay.local_addr().unwrap().port();
    let validating = std::sync::Arc::new(tokio::sync::Notify::new());
    let v = validating.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = relay.accept().await {
            v.notify_one();
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", http)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    let (mut pebble, acme_port, mgmt) = pebble(d, relay_port, dns, 0);
    let cfg = d.join("edge.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"domain = "example.test"
state_dir = "{d}/state"
[listen]
https = "127.0.0.1:{https}"
http = "127.0.0.1:{http}"
admin = "127.0.0.1:{admin}"
[certs]
issuer = "acme"
[certs.acme]
directory = "https://127.0.0.1:{acme_port}/dir"
ca_roots = "api-ca.pem"
challenge = "http-01"
request_timeout = "3s"
[[projects]]
name = "demo"
  [[projects.routes]]
  mount = "forge"
  upstream = "http://127.0.0.1:9"
"#,
            d = d.display()
        ),
    )
    .unwrap();
    config_ok(&cfg);
    let log = d.join("edge.log");
    let _edge = tokio::process::Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["up", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), validating.notified())
        .await
        .expect("Pebble never came to validate");
    // Stopped mid-order: it holds its connections and answers nothing.
    let pid = pebble.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let text = failure_logged(&log, Duration::from_secs(60)).await;
    let failed = text
        .lines()
        .find(|l| l.contains("ACME order failed"))
        .unwrap();
    eprintln!("{failed}");
    assert!(
        failed.contains("no answer within 3s (certs.acme.request_timeout)"),
        "{failed}"
    );
    // Nothing serving is lost: the local CA's certificate stands in; the failure is visible.
    let local = d.join("state/ca/example.test/ca.pem");
    assert!(s_client(https, "demo.example.test", &local).0);
    let listing = edge_certs_listing(&cfg);
    for want in [
        "last error:",
        "no answer within 3s",
        "next try:",
        "backoff after 1 failed orders",
    ] {
        assert!(listing.contains(want), "{want:?} not in:\n{listing}");
    }
    let (_, metrics) = curl(&[&format!("http://127.0.0.1:{admin}/metrics")]);
    assert!(
        metrics.contains("edge_cert_renewal_failures{project=\"demo\"} 1"),
        "{metrics}"
    );
    // Back: the next order (asked for now rather than after the backoff) goes through.
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    edge_certs_renew(&cfg, "demo");
    let root = pebble_root(d, mgmt);
    served_by(
        https,
        "demo.example.test",
        &root,
        Duration::from_secs(60),
        &log,
    )
    .await;
    let (_, metrics) = curl(&[&format!("http://127.0.0.1:{admin}/metrics")]);
    assert!(
        metrics.contains("edge_cert_renewal_failures{project=\"demo\"} 0"),
        "{metrics}"
    );
    assert!(!edge_certs_listing(&cfg).contains("last error:"));

    // Restarted: a new Pebble on the same address that has forgotten every account. edge makes
    // a new account and gets a certificate from the new root, the old one serving meanwhile.
    drop(pebble);
    pebble = start_pebble(d, &format!("127.0.0.1:{dns}"), 0, acme_port);
    let new_root = d.join("pebble-root-2.pem");
    std::fs::copy(pebble_root(d, mgmt), &new_root).unwrap();
    edge_certs_renew(&cfg, "demo");
    served_by(
        https,
        "demo.example.test",
        &new_root,
        Duration::from_secs(60),
        &log,
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("the CA no longer knows edge's account"),
        "{text}"
    );
    drop(pebble);
}

/// What the ACME front saw, and what it is to refuse.
#[derive(Default)]
struct FrontState {
    /// New orders still to refuse with `rateLimited`.
    refuse_orders: u32,
    /// The certificate identifiers asked at `renewalInfo`, in order.
    ari_asked: Vec<String>,
    /// Each new order's `replaces`, in order (refused ones included).
    replaces: Vec<Option<String>>,
}

/// RFC 3339, UTC, whole seconds.
fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// An HTTPS front for Pebble (on Pebble's API certificate) that adds what Debian's Pebble 2.4
/// lacks, as the RFCs describe it: ACME Renewal Information (RFC 9773: a `renewalInfo` URL in
/// the directory; for the first certificate asked about a window already past, for any other
/// a window 30 to 31 days out, with `Retry-After: 21600`), and new orders refused with a
/// `rateLimited` problem and `Retry-After: 7200` (RFC 8555 §6.6) while `refuse_orders` lasts;
/// an order placed with `replaces` says so in its order object, as an ARI CA's does.
/// Everything else goes through to Pebble unchanged, Host included, so the URLs Pebble hands
/// out and checks in each JWS name the front. Returns the front's port.
async fn acme_front(
    d: &Path,
    pebble_port: u16,
    state: std::sync::Arc<std::sync::Mutex<FrontState>>,
) -> u16 {
    use http_body_util::{BodyExt, Full};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(d.join("api.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(d.join("api.key")).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(d.join("api-ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let client = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    type Reply = hyper::Response<Full<bytes::Bytes>>;
    let reply = |status: u16, headers: &[(&str, &str)], body: Vec<u8>| -> Reply {
        let mut r = hyper::Response::builder().status(status);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(Full::new(bytes::Bytes::from(body))).unwrap()
    };
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (acceptor, client, state) = (acceptor.clone(), client.clone(), state.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (client, state) = (client.clone(), state.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let path = parts.uri.path().to_string();
                            let mut replaces: Option<String> = None;
                            if let Some(id) = path.strip_prefix("/renewal-info/") {
                                let mut st = state.lock().unwrap();
                                let first = st.ari_asked.first().is_none_or(|f| f == id);
                                st.ari_asked.push(id.to_string());
                                let now = time::OffsetDateTime::now_utc();
                                let (start, end) = if first {
                                    (
                                        now - time::Duration::hours(2),
                                        now - time::Duration::hours(1),
                                    )
                                } else {
                                    (
                                        now + time::Duration::days(30),
                                        now + time::Duration::days(31),
                                    )
                                };
                                let json = format!(
                                    r#"{{"suggestedWindow": {{"start": "{}", "end": "{}"}}}}"#,
                                    rfc3339(start),
                                    rfc3339(end)
                                );
                                return Ok::<Reply, std::convert::Infallible>(reply(
                                    200,
                                    &[
                                        ("content-type", "application/json"),
                                        ("retry-after", "21600"),
                                    ],
                                    json.into_bytes(),
                                ));
                            }
                            if parts.method == hyper::Method::POST && path == "/order-plz" {
                                use base64::Engine as _;
                                let jws: serde_json::Value =
                                    serde_json::from_slice(&body).unwrap_or_default();
                                let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
                                    .decode(jws["payload"].as_str().unwrap_or_default())
                                    .unwrap_or_default();
                                let payload: serde_json::Value =
                                    serde_json::from_slice(&payload).unwrap_or_default();
                                replaces = payload["replaces"].as_str().map(str::to_string);
                                let mut st = state.lock().unwrap();
                                st.replaces.push(replaces.clone());
                                if st.refuse_orders > 0 {
                                    st.refuse_orders -= 1;
                                    return Ok(reply(
                                    429,
                                    &[("content-type", "application/problem+json"), ("retry-after", "7200")],
                                    br#"{"type": "urn:ietf:params:acme:error:rateLimited", "detail": "too many new orders recently (the test's front)", "status": 429}"#.to_vec(),
                                ));
                                }
                            }
                            // Through to Pebble.
                            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", pebble_port))
                                .await
                                .unwrap();
                            let name =
                                rustls::pki_types::ServerName::try_from("localhost").unwrap();
                            let tls = tokio_rustls::TlsConnector::from(client)
                                .connect(name, tcp)
                                .await
                                .unwrap();
                            let (mut send, conn) = hyper::client::conn::http1::handshake(
                                hyper_util::rt::TokioIo::new(tls),
                            )
                            .await
                            .unwrap();
                            tokio::spawn(conn);
                            let mut up =
                                hyper::Request::builder().method(parts.method.clone()).uri(
                                    parts
                                        .uri
                                        .path_and_query()
                                        .map(|p| p.as_str())
                                        .unwrap_or("/"),
                                );
                            for (k, v) in &parts.headers {
                                up = up.header(k, v);
                            }
                            let rsp = send
                                .send_request(up.body(Full::new(body)).unwrap())
                                .await
                                .unwrap();
                            let (rparts, rbody) = rsp.into_parts();
                            let mut rbody = rbody.collect().await.unwrap().to_bytes().to_vec();
                            if path == "/dir" {
                                let mut dir: serde_json::Value =
                                    serde_json::from_slice(&rbody).unwrap();
                                dir["renewalInfo"] = serde_json::Value::String(format!(
                                    "https://127.0.0.1:{port}/renewal-info"
                                ));
                                rbody = serde_json::to_vec(&dir).unwrap();
                            }
                            // An ARI CA's order object names the certificate it replaces.
                            if let (Some(r), true) = (&replaces, rparts.status.is_success()) {
                                let mut order: serde_json::Value =
                                    serde_json::from_slice(&rbody).unwrap();
                                order["replaces"] = serde_json::Value::String(r.clone());
                                rbody = serde_json::to_vec(&order).unwrap();
                            }
                            let mut out = hyper::Response::builder().status(rparts.status);
                            for (k, v) in &rparts.headers {
                                if k != hyper::header::CONTENT_LENGTH {
                                    out = out.header(k, v);
                                }
                            }
                            Ok(out.body(Full::new(bytes::Bytes::from(rbody))).unwrap())
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn renewal_follows_the_cas_window_and_waits_out_its_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (http, https, admin) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let (_knot, dns) = knot(d);
    let (_pebble, acme_port, mgmt) = pebble(d, http, dns, 0);
    let front_state = std::sync::Arc::new(std::sync::Mutex::new(FrontState {
        refuse_orders: 1,
        ..Default::default()
    }));
    let front = acme_front(d, acme_port, front_state.clone()).await;
    let cfg = d.join("edge.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"domain = "example.test"
state_dir = "{d}/state"
[listen]
https = "127.0.0.1:{https}"
http = "127.0.0.1:{http}"
admin = "127.0.0.1:{admin}"
[certs]
issuer = "acme"
[certs.acme]
directory = "https://127.0.0.1:{front}/dir"
ca_roots = "api-ca.pem"
challenge = "http-01"
[[projects]]
name = "demo"
  [[projects.routes]]
  mount = "forge"
  upstream = "http://127.0.0.1:9"
"#,
            d = d.display()
        ),
    )
    .unwrap();
    config_ok(&cfg);
    let log = d.join("edge.log");
    let _edge = tokio::process::Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["up", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Refused as rate limited: the next try waits for the CA's two hours, not the 1-minute
    // backoff.
    let text = failure_logged(&log, Duration::from_secs(60)).await;
    let failed = text
        .lines()
        .find(|l| l.contains("ACME order failed"))
        .unwrap();
    eprintln!("{failed}");
    assert!(
        failed.contains("rateLimited") && failed.contains("retry_after_honoured=true"),
        "{failed}"
    );
    let retry_in: f64 = failed
        .split("retry_in=")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no retry_in: {failed}"));
    assert!((7000.0..=7200.0).contains(&retry_in), "{failed}");
    let listing = edge_certs_listing(&cfg);
    assert!(listing.contains("(the CA's Retry-After)"), "{listing}");
    // The operator asks for it now: issued; then the CA's window for that certificate has
    // already begun, so edge renews it at once, saying which one it replaces (RFC 9773 §5);
    // the new one's window is a month out, and there it stays.
    edge_certs_renew(&cfg, "demo");
    let start = Instant::now();
    loop {
        {
            let st = front_state.lock().unwrap();
            if st.replaces.len() >= 3
                && st.ari_asked.len() >= 2
                && st.ari_asked.last() != st.ari_asked.first()
            {
                assert_eq!(
                    st.replaces[2].as_ref(),
                    st.ari_asked.first(),
                    "the renewal names the certificate it replaces"
                );
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no ARI-driven renewal: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let root = pebble_root(d, mgmt);
    served_by(
        https,
        "demo.example.test",
        &root,
        Duration::from_secs(30),
        &log,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        front_state.lock().unwrap().replaces.len(),
        3,
        "edge ordered again inside a month-away window: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let listing = edge_certs_listing(&cfg);
    assert!(
        listing.contains("inside the CA's renewal window (ARI)"),
        "{listing}"
    );
    let (_, metrics) = curl(&[&format!("http://127.0.0.1:{admin}/metrics")]);
    let at: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("edge_cert_renewal_timestamp_seconds{project=\"demo\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (now + 30 * 86400 - 60..=now + 31 * 86400).contains(&at),
        "renewal planned at {at}, not inside the window: {metrics}"
    );
}

fn openssl_pair(dir: &Path, cn: &str, out: &str) -> (PathBuf, PathBuf) {
    let (crt, key) = (
        dir.join(format!("{out}.pem")),
        dir.join(format!("{out}.key")),
    );
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", "30", "-subj", &format!("/CN={cn}")])
        .args(["-addext", &format!("subjectAltName=DNS:{cn},DNS:*.{cn}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (crt, key)
}

#[tokio::test(flavor = "multi_thread")]
async fn provided_files_are_served_watched_and_never_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (crt1, key1) = openssl_pair(d, "demo.example.test", "one");
    let (crt2, key2) = openssl_pair(d, "demo.example.test", "two");
    let (crt, key) = (d.join("live.pem"), d.join("live.key"));
    std::fs::copy(&crt1, &crt).unwrap();
    std::fs::copy(&key1, &key).unwrap();
    let https = common::free_port();
    let cfg = d.join("edge.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"domain = "example.test"
state_dir = "{d}/state"
[listen]
https = "127.0.0.1:{https}"
http = ""
admin = ""
[[projects]]
name = "demo"
  [projects.certs]
  issuer = "files"
  cert_file = "live.pem"
  key_file = "live.key"
  [[projects.routes]]
  mount = "forge"
"#,
            d = d.display()
        ),
    )
    .unwrap();
    let _edge = common::edge_up(&cfg, https).await;
    let (ok, text) = s_client(https, "demo.example.test", &crt1);
    assert!(ok, "{text}");
    // Replaced on disk (key first, then the chain, as certbot's deploy hooks do): picked up
    // without a restart.
    std::fs::copy(&key2, &key).unwrap();
    std::fs::copy(&crt2, &crt).unwrap();
    let start = Instant::now();
    loop {
        let (ok, _) = s_client(https, "demo.example.test", &crt2);
        if ok {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the new files were not picked up"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        std::fs::read(&crt).unwrap(),
        std::fs::read(&crt2).unwrap(),
        "edge rewrote the chain"
    );
    // A key that does not match, or that others can read, stops `edge config`-time loading with
    // the reason; the running edge keeps serving the last good pair.
    std::fs::copy(&key1, &key).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["up", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("does not belong to the certificate"), "{err}");
    let (ok, _) = s_client(https, "demo.example.test", &crt2);
    assert!(ok, "the last good pair stopped serving");
}

/// Measured, not asserted (`cargo test --release --test acme -- --ignored --nocapture`): 100
/// projects on one edge, each getting its certificate from Pebble over HTTP-01, orders a few at
/// a time.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn measure_a_hundred_projects_issued() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (http, https) = (common::free_port(), common::free_port());
    let (_knot, dns) = knot(d);
    let (_pebble, acme_port, mgmt) = pebble(d, http, dns, 0);
    std::fs::create_dir_all(d.join("site")).unwrap();
    let mut text = format!(
        "domain = \"example.test\"\nstate_dir = \"{}/state\"\n[listen]\nhttps = \"127.0.0.1:{https}\"\nhttp = \"127.0.0.1:{http}\"\nadmin = \"\"\n\
         [certs]\nissuer = \"acme\"\n[certs.acme]\ndirectory = \"https://127.0.0.1:{acme_port}/dir\"\nca_roots = \"api-ca.pem\"\nchallenge = \"http-01\"\n",
        d.display()
    );
    for i in 0..100 {
        text.push_str(&format!(
            "[[projects]]\nname = \"p{i:03}\"\n  [[projects.routes]]\n  mount = \"staging\"\n  root = \"site\"\n"
        ));
    }
    let cfg = d.join("edge.toml");
    std::fs::write(&cfg, text).unwrap();
    config_ok(&cfg);
    let started = Instant::now();
    let _edge = common::edge_up(&cfg, https).await;
    let root = pebble_root(d, mgmt);
    let acme = d.join("state/certs/acme");
    loop {
        let n = (0..100)
            .filter(|i| acme.join(format!("p{i:03}/fullchain.pem")).exists())
            .count();
        if n == 100 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{n} of 100 after 10 min"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored = started.elapsed();
    // Every certificate is then served (the last swap within the refresh that followed it).
    for i in [0, 37, 99] {
        let name = format!("p{i:03}.example.test");
        let start = Instant::now();
        while !s_client(https, &name, &root).0 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{name} not served"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "100 projects: all stored after {stored:?}, served (checked p000, p037, p099) after {:?}",
        started.elapsed()
    );
}
