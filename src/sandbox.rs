//! `edge sandbox verify | run`, and the internal helpers (`exec`, `probe`, `relay`) that edge
//! re-executes itself as.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use edge_sandbox::confine::{prepare, Request};
use edge_sandbox::{Profile, RunSpec, State};

use crate::cli::{config_path, load, Failure, SandboxCommand};

fn profile(
    config: Option<std::path::PathBuf>,
    name: &str,
) -> Result<(Profile, std::path::PathBuf), Failure> {
    let loaded = load(config_path(config).as_deref(), None)?;
    let p = loaded
        .config
        .sandbox_profiles
        .get(name)
        .cloned()
        .ok_or_else(|| {
            Failure::config(anyhow::anyhow!(
                "no sandbox profile {name:?} (the config has {})",
                loaded
                    .config
                    .sandbox_profiles
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    Ok((p, loaded.config.state_dir))
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?)
}

fn exit(code: i32) -> ! {
    std::process::exit(code)
}

pub fn run(cmd: SandboxCommand) -> Result<(), Failure> {
    match cmd {
        SandboxCommand::Exec { inner, spec } => {
            let spec: RunSpec = serde_json::from_str(&spec)
                .map_err(|e| Failure::config(anyhow::anyhow!("--spec: {e}")))?;
            let refusal = if inner {
                edge_sandbox::helper::stage2(&spec)
            } else {
                edge_sandbox::helper::stage1(&spec)
            };
            eprintln!("{refusal}");
            exit(edge_sandbox::helper::REFUSED)
        }
        SandboxCommand::Probe { name, arg } => {
            exit(edge_sandbox::verify::run_probe(&name, arg.as_deref()))
        }
        SandboxCommand::Relay { socket } => {
            edge_sandbox::helper::relay(&socket).context("relay")?;
            Ok(())
        }
        SandboxCommand::Verify {
            profile: name,
            config,
            probes,
            json,
        } => {
            let (p, _) = profile(config, &name)?;
            let (report, checks) = runtime()?
                .block_on(edge_sandbox::verify::verify(&p, &probes))
                .map_err(|e| anyhow::anyhow!(e))?;
            // A required layer must be enforced, and every probe it answers for must hold.
            let mut failed: Vec<String> = Vec::new();
            for s in &report.layers {
                if p.requires(s.layer) && s.state != State::Enforced {
                    failed.push(format!("required layer {} is not enforced", s.layer.name()));
                }
            }
            for c in &checks {
                let relevant = c
                    .layers
                    .iter()
                    .any(|l| p.enabled(*l) && report.get(*l).state == State::Enforced);
                if relevant && !c.held {
                    failed.push(format!("probe {} got through: {}", c.probe, c.detail));
                }
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({"profile": name, "layers": report.layers, "probes": checks, "ok": failed.is_empty()})
                );
            } else {
                print_table(&p, &report, &checks);
            }
            if failed.is_empty() {
                if !json {
                    println!("\nok: every required layer of profile {name:?} holds");
                }
                Ok(())
            } else {
                Err(Failure::from(anyhow::anyhow!(
                    "profile {name:?} does not hold here:\n  {}",
                    failed.join("\n  ")
                )))
            }
        }
        SandboxCommand::Run {
            profile: name,
            config,
            workspace,
            home,
            command,
        } => {
            let (p, state_dir) = profile(config, &name)?;
            let workspace = std::fs::canonicalize(&workspace)
                .with_context(|| format!("--workspace {}", workspace.display()))
                .map_err(Failure::config)?;
            let home = home.unwrap_or_else(|| p.home_for(&state_dir));
            let home = if home.is_absolute() {
                home
            } else {
                std::env::current_dir()
                    .context("the current directory")?
                    .join(home)
            };
            let mut p = p;
            p.hidden.push(absolute(&state_dir));
            let code = runtime()?.block_on(async move {
                let c = prepare(
                    Request {
                        profile: p,
                        workspace,
                        home,
                        argv: command,
                        env: Vec::new(),
                        notices: None,
                    },
                    "run",
                )
                .map_err(|e| anyhow::anyhow!(e))?;
                let mut cmd = c.command().map_err(|e| anyhow::anyhow!(e))?;
                let status = cmd
                    .process_group(0)
                    .kill_on_drop(true)
                    .status()
                    .await
                    .context("running the helper")?;
                let fin = c.finish();
                if fin.oom_killed {
                    eprintln!("edge sandbox: the run went past its memory limit and was killed");
                }
                use std::os::unix::process::ExitStatusExt;
                anyhow::Ok(
                    status
                        .code()
                        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
                )
            })?;
            let _ = ExitCode::SUCCESS;
            exit(code)
        }
    }
}

fn absolute(p: &Path) -> std::path::PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    })
}

fn print_table(p: &Profile, report: &edge_sandbox::Report, checks: &[edge_sandbox::verify::Check]) {
    let color = std::io::stdout().is_terminal();
    let paint = |s: &str, code: &str| {
        if color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    println!("profile {:?}", p.name);
    println!("{:<13} {:<9} {:<12} detail", "layer", "required", "state");
    for s in &report.layers {
        let state = match s.state {
            State::Enforced => paint("enforced", "32"),
            State::Degraded => paint("degraded", "33"),
            State::Unavailable => paint("unavailable", "31"),
        };
        // Pad by the visible width, not the escape codes.
        let pad = 12usize.saturating_sub(match s.state {
            State::Enforced => 8,
            State::Degraded => 8,
            State::Unavailable => 11,
        });
        println!(
            "{:<13} {:<9} {state}{} {}",
            s.layer.name(),
            if p.requires(s.layer) { "yes" } else { "no" },
            " ".repeat(pad),
            s.detail
        );
    }
    println!();
    println!("{:<14} {:<6} {:<26} result", "probe", "", "stopped by");
    for c in checks {
        println!(
            "{:<14} {:<6} {:<26} {}",
            c.probe,
            if c.held {
                paint("held", "32")
            } else {
                paint("FAILED", "31")
            },
            c.layers
                .iter()
                .map(|l| l.name())
                .collect::<Vec<_>>()
                .join(", "),
            c.detail
        );
    }
}
