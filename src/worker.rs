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
