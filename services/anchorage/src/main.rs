//! `anchorage`: see `anchorage --help`.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: the hot paths (decoding events, building rows and frames) make and drop many small
/// values across threads, where it spends a fraction of glibc's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = anchorage::cli::Cli::parse();
    // The terminal client owns the terminal: no log lines across its screen.
    if !matches!(cli.command, anchorage::cli::Command::Chat { .. }) {
        anchorage::telemetry::init(&anchorage::telemetry::log_config(cli.config.as_deref()));
    }
    match anchorage::cli::run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
