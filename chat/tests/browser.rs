//! A real browser (Debian's chromium, headless, driven by playwright-core) signs in through the
//! provider's form and lands on the chat, through the gateway over TLS.

mod common;

use common::*;

#[tokio::test]
async fn chromium_signs_in_through_the_provider_and_lands_on_the_chat() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's chromium (bash .ci/run does) or set CHROMIUM"
    );
    let e = Env::start(Options {
        routing: "subpath",
        chat: "login = \"oidc\"\nprovider_url = \"@ISSUER@\"\nclient_id = \"edge-chat\"\nallowed_users = [\"alice\"]\n",
        extra_routes: "",
        oidc: true,
        forge: None,
    })
    .await;
    let url = e.url("demo.example.test", "/chat/");
    let shots =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots/signin");
    std::fs::create_dir_all(&shots).unwrap();
    let out = tokio::process::Command::new("node")
        .arg(js_dir().join("browser.mjs"))
        .args([url.as_str(), "alice", "Signed in as alice"])
        .env("CHROMIUM", &chromium)
        .env("SHOTS", &shots)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(90), out)
        .await
        .expect("the browser finished within 90 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|_| {
            panic!(
                "browser output: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert_eq!(result["ok"], true, "{result:#}");
    // The app may already have put the open conversation in the fragment.
    let landed = result["url"].as_str().unwrap().split('#').next().unwrap();
    assert_eq!(landed, url.as_str(), "{result:#}");
    assert!(result["text"]
        .as_str()
        .unwrap()
        .contains("Signed in as alice"));
    let steps = result["steps"].as_array().unwrap();
    assert!(
        steps[0]
            .as_str()
            .unwrap()
            .contains("/chat/login?rd=%2Fchat%2F"),
        "signed out, the chat shows its sign-in page first: {result:#}"
    );
    assert!(
        steps[1]
            .as_str()
            .unwrap()
            .starts_with(&e.provider.as_ref().unwrap().issuer),
        "its button goes to the provider: {result:#}"
    );
    let cookie = result["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "__Host-edge-chat")
        .unwrap_or_else(|| panic!("no session cookie: {result:#}"));
    assert_eq!(cookie["secure"], true);
    assert_eq!(cookie["httpOnly"], true);
    assert_eq!(cookie["sameSite"], "Lax");
}
