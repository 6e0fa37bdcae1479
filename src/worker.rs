//! `edge worker --stdio`: the worker protocol on stdin and stdout. Logs go to stderr, which
//! never carries frames.

use anyhow::Context as _;

use crate::cli::Failure;

pub fn stdio() -> Result<(), Failure> {
    crate::up::init_tracing(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let name = hostname();
    rt.block_on(async move {
        edge_workers::serve(tokio::io::stdin(), tokio::io::stdout(), &name)
            .await
            .context("worker protocol")
    })?;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "worker".into())
}

/// `edge workers`: the outposts as a running edge sees them, or (`--probe`) a hello from each.
pub fn workers(
    config: Option<std::path::PathBuf>,
    admin: Option<String>,
    probe: bool,
) -> Result<(), Failure> {
    if probe {
        let loaded = crate::cli::load(config.as_deref(), None)?;
        let local: Vec<String> = std::env::current_exe()
            .map(|e| vec![e.display().to_string(), "worker".into(), "--stdio".into()])
            .context("finding edge's own binary")?;
        let list = if loaded.config.outposts.is_empty() {
            vec![edge_chat::Outpost::local(local)]
        } else {
            edge_chat::outposts(&loaded.config.outposts, &loaded.config.state_dir, &local)
                .map_err(|e| anyhow::anyhow!("{e}"))?
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?;
        let mut failed = 0;
        println!("{:<16} {:<6} detail", "outpost", "health");
        for o in &list {
            match rt.block_on(edge_chat::probe_outpost(o)) {
                Ok(h) => println!(
                    "{:<16} {:<6} worker {:?} (edge {}), {}, answered in {} ms",
                    o.name,
                    "ok",
                    h.worker,
                    h.version,
                    if h.busy { "busy" } else { "idle" },
                    h.millis
                ),
                Err(e) => {
                    failed += 1;
                    println!("{:<16} {:<6} {e}", o.name, "FAILED");
                }
            }
        }
        return if failed == 0 {
            Ok(())
        } else {
            Err(Failure::from(anyhow::anyhow!(
                "{failed} of {} outpost(s) did not answer",
                list.len()
            )))
        };
    }
    let admin = match admin {
        Some(a) => a,
        None => {
            let loaded = crate::cli::load(config.as_deref(), None)?;
            match loaded.config.listen.admin {
                Some(a) => a.to_string(),
                None => {
                    return Err(Failure::config(anyhow::anyhow!(
                        "listen.admin is off in the config: give --admin, or use --probe"
                    )))
                }
            }
        }
    };
    let body = crate::up::admin_get(&admin, "/outposts")?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&body)
        .with_context(|| format!("the answer of {admin}/outposts: {body}"))?;
    println!(
        "{:<16} {:>7} {:>8}  health",
        "outpost", "running", "capacity"
    );
    for o in &list {
        println!(
            "{:<16} {:>7} {:>8}  {}",
            o["name"].as_str().unwrap_or("?"),
            o["running"],
            if o["capacity"].is_null() {
                "-".to_string()
            } else {
                o["capacity"].to_string()
            },
            match o["resting"].as_str() {
                Some(why) => format!("resting after a failure: {why}"),
                None => "ok".to_string(),
            }
        );
    }
    Ok(())
}
