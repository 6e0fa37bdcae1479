//! `edge trust`: installs the local CA where a person needs it, the system store (Debian's
//! `update-ca-certificates`) and the browsers' NSS databases (`certutil`); `--remove` takes it
//! out again.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context as _;

use crate::cli::{Failure, Loaded};

/// Where Debian's `update-ca-certificates` takes local CAs from.
pub const SYSTEM_CA_DIR: &str = "/usr/local/share/ca-certificates";

/// The NSS databases of this user's browsers: Chrome/Chromium's, and each Firefox profile's.
fn default_nss_dbs() -> Vec<PathBuf> {
    let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else {
        return Vec::new();
    };
    let mut dbs = Vec::new();
    let chrome = home.join(".pki/nssdb");
    if chrome.join("cert9.db").exists() {
        dbs.push(chrome);
    }
    for profiles in [".mozilla/firefox", "snap/firefox/common/.mozilla/firefox"] {
        if let Ok(rd) = std::fs::read_dir(home.join(profiles)) {
            for e in rd.flatten() {
                if e.path().join("cert9.db").exists() {
                    dbs.push(e.path());
                }
            }
        }
    }
    dbs
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let what = format!("{:?}", cmd.get_program());
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "{what} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

pub fn run_trust(
    loaded: Loaded,
    remove: bool,
    ca_dir: Option<PathBuf>,
    nss_dbs: Vec<PathBuf>,
) -> Result<(), Failure> {
    let config = &loaded.config;
    let ca = edge_certs::LocalCa::load_or_create(&config.state_dir, &config.domain)
        .context("the local CA")?;
    if ca.created() && !remove {
        println!(
            "A new local CA was created in {}: browsers that trusted edge's CA from another state directory will warn until this one is trusted.",
            config.state_dir.display()
        );
    }
    let nickname = format!("edge local CA ({})", config.domain);
    let mut failed = Vec::new();

    // The system store.
    let default_dir = ca_dir.is_none();
    let dir = ca_dir.unwrap_or_else(|| PathBuf::from(SYSTEM_CA_DIR));
    let file = dir.join(format!("edge-{}.crt", config.domain));
    let changed = if remove {
        match std::fs::remove_file(&file) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                failed.push(format!("{}: {e}", file.display()));
                false
            }
        }
    } else {
        match edge_certs::write_atomic(&file, ca.cert_pem().as_bytes(), 0o644) {
            Ok(()) => true,
            Err(e) => {
                failed.push(format!("{e} (run as root, or pass --ca-dir)"));
                false
            }
        }
    };
    if changed {
        println!(
            "system store: {} {}",
            if remove { "removed" } else { "wrote" },
            file.display()
        );
        if default_dir {
            match run(Command::new("update-ca-certificates").arg("--fresh")) {
                Ok(()) => println!("system store: update-ca-certificates done"),
                Err(e) => failed.push(e),
            }
        }
    } else if remove {
        println!("system store: {} was not there", file.display());
    }

    // The browsers.
    let dbs = if nss_dbs.is_empty() {
        default_nss_dbs()
    } else {
        nss_dbs
    };
    if dbs.is_empty() {
        println!("browsers: no NSS database found (Chrome's ~/.pki/nssdb, Firefox profiles); pass --nss-db DIR");
    }
    for db in &dbs {
        let sql = format!("sql:{}", db.display());
        let r = if remove {
            run(Command::new("certutil").args(["-d", &sql, "-D", "-n", &nickname]))
        } else {
            // Replace rather than duplicate an older CA of the same name.
            let _ = run(Command::new("certutil").args(["-d", &sql, "-D", "-n", &nickname]));
            run(Command::new("certutil")
                .args(["-d", &sql, "-A", "-t", "C,,", "-n", &nickname, "-i"])
                .arg(ca.cert_path()))
        };
        match r {
            Ok(()) => println!(
                "browsers: {} {nickname:?} {} {}",
                if remove { "removed" } else { "added" },
                if remove { "from" } else { "to" },
                db.display()
            ),
            Err(e) if e.contains("No such file") || e.contains("certutil\"") => {
                failed.push(format!(
                    "{}: {e} (certutil comes with Debian's libnss3-tools)",
                    db.display()
                ))
            }
            Err(e) => failed.push(format!("{}: {e}", db.display())),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::from(anyhow::anyhow!(failed.join("\n"))))
    }
}
