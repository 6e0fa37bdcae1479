//! The `edge` binary: arguments, config files, the tracing subscriber, signals and exit codes.
//! The work is done by the library crates.

mod certs;
mod chat;
mod check;
mod cli;
mod doctor;
mod register;
mod sandbox;
mod smoke;
mod trust;
mod up;
mod worker;

use std::process::ExitCode;

use clap::Parser;

// mimalloc instead of glibc's allocator: per request the proxy allocates and frees small header
// maps and buffers, and glibc's malloc/free showed as ~5% of CPU under load (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(e.exit_code())
        }
    }
}
